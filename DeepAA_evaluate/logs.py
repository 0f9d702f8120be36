"""Run logs: TensorBoard scalars under ``logs/<tag>/{train,test}`` (as the released trainer),
a JSON-lines file ``logs/<tag>/metrics.jsonl`` when TensorBoard is not installed, and atomic
JSON results files."""
from __future__ import annotations

import json
import os
import shutil

from augmentation.files import atomic_write, summary_writer


def write_json(path: str, obj) -> None:
    """Write ``obj`` as indented JSON atomically (temporary file + ``os.replace``)."""
    atomic_write(path, json.dumps(obj, indent=1, default=float) + "\n")


class MetricWriter:
    """Per-epoch scalars of the main process; no-op without a tag (as the released trainer).

    The folders it makes are removed again by :meth:`discard` when the run fails before its
    first epoch is logged (a full disk, a bad image, Ctrl-C), so such a run leaves no empty
    ``logs/<tag>/`` behind."""

    def __init__(self, tag: str, enabled: bool = True, root: str = "logs"):
        self.writers, self.jsonl, self.made, self.logged = {}, None, None, False
        if not tag or not enabled:
            return
        base = os.path.join(root, tag)
        self.made = next((p for p in _ancestors(os.path.abspath(base)) if not os.path.exists(p)),
                         None)
        try:
            self._open(base)
        except BaseException:
            self.discard()
            raise

    def _open(self, base: str) -> None:
        """TensorBoard writers without TensorFlow (``augmentation.files.summary_writer``), or
        JSON lines when tensorboard is not installed."""
        for name in ("train", "test"):
            writer = summary_writer(os.path.join(base, name))
            if writer is None:
                os.makedirs(base, exist_ok=True)
                self.jsonl = open(os.path.join(base, "metrics.jsonl"), "a", encoding="utf-8")
                return
            self.writers[name] = writer

    def epoch(self, entry: dict) -> None:
        self.logged = True
        if self.jsonl is not None:
            self.jsonl.write(json.dumps(entry, default=float) + "\n")
            self.jsonl.flush()
        if not self.writers:
            return
        e = entry["epoch"]
        self.writers["train"].add_scalar("lr", entry["lr_start"], e)
        for split in ("train", "test"):
            for key in ("loss", "top1", "top5"):
                if split in entry:
                    self.writers[split].add_scalar(key, entry[split][key], e)
            self.writers[split].flush()

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
        for w in self.writers.values():
            w.close()

    def discard(self) -> None:
        """Close, and remove the folders this writer made if it logged nothing."""
        self.close()
        if self.made is not None and not self.logged:
            shutil.rmtree(self.made, ignore_errors=True)


def _ancestors(path: str) -> list[str]:
    """``path`` and the folders above it, outermost first."""
    out = [path]
    while os.path.dirname(out[-1]) != out[-1]:
        out.append(os.path.dirname(out[-1]))
    return out[::-1]

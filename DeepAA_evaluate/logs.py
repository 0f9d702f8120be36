"""Run logs: TensorBoard scalars under ``logs/<tag>/{train,test}`` (as the released trainer),
a JSON-lines file ``logs/<tag>/metrics.jsonl`` when TensorBoard is not installed, and atomic
JSON results files."""
from __future__ import annotations

import json
import os

from augmentation.files import atomic_write, summary_writer


def write_json(path: str, obj) -> None:
    """Write ``obj`` as indented JSON atomically (temporary file + ``os.replace``)."""
    atomic_write(path, json.dumps(obj, indent=1, default=float) + "\n")


class MetricWriter:
    """Per-epoch scalars of the main process; no-op without a tag (as the released trainer)."""

    def __init__(self, tag: str, enabled: bool = True, root: str = "logs"):
        self.writers, self.jsonl = {}, None
        if not tag or not enabled:
            return
        base = os.path.join(root, tag)
        writers = {name: summary_writer(os.path.join(base, name)) for name in ("train", "test")}
        if None in writers.values():  # tensorboard is not installed
            os.makedirs(base, exist_ok=True)
            self.jsonl = open(os.path.join(base, "metrics.jsonl"), "a", encoding="utf-8")
            return
        self.writers = writers

    def epoch(self, entry: dict) -> None:
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

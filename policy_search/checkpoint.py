"""Search checkpoints (``RESULTS_DIR/checkpoint.npz``): writing, reading, the checks that
decide whether a run may continue one, and the lock that keeps one search per folder.

A checkpoint holds the logits and every layer's Adam state (``PolicyLogits.get_state``), the
position (next layer, next step), the per-step records (``policy_search.trace``) and a meta record: the flags, the path of
the pretrained weights and the sizes of the data splits. All randomness of a step is derived
from (seed, layer, step), so the position is the random state and a resumed run ends with the
policy of an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np

from augmentation.files import atomic_write, exclusive
from policy_search.config import UsageError
from policy_search.trace import SearchTrace

CHECKPOINT = "checkpoint.npz"
# Flags that must be equal to resume a run (the others, e.g. --checkpoint_every, may change).
# --aug_backend is one of them: the tensor ops draw their random ops from another generator.
RESUME_KEYS = ("dataset", "n_classes", "use_model", "n_policies", "search_bno", "seed", "l_mags",
               "policy_lr", "EXP_G", "EXP_gT_factor", "train_same_labels", "repeat_random_ops",
               "N_repeat_random", "n_val_per_point", "policy_bn_training", "pretrain_size",
               "aug_backend", "backend", "precision")
# Values of resume keys added after checkpoints were first written: a checkpoint without the
# key was made with this value.
RESUME_KEY_DEFAULTS = {"backend": "tf", "precision": "fp32"}


def save_checkpoint(path, policy_state: dict, layer: int, step: int, trace: SearchTrace,
                    meta: dict):
    arrays = {f"policy/{k}": np.asarray(v) for k, v in policy_state.items()}
    arrays["position"] = np.array([layer, step], np.int64)
    arrays.update(trace.arrays())
    arrays["meta_json"] = np.array(json.dumps(meta))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(path, buffer.getvalue())


def load_checkpoint(path):
    """(policy state, layer, step, SearchTrace, meta) of a checkpoint."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    state = {k[len("policy/"):]: v for k, v in arrays.items() if k.startswith("policy/")}
    layer, step = (int(v) for v in arrays["position"])
    meta = json.loads(str(arrays["meta_json"]))
    return state, layer, step, SearchTrace.from_arrays(arrays), meta


def occupied(results_dir: str, ckpt_path: str) -> str:
    """Why a new search may not start in ``results_dir``: the finished or unfinished search
    whose checkpoint is there (one line)."""
    try:
        _, layer, _, _, meta = load_checkpoint(ckpt_path)
        finished = layer >= meta["flags"]["n_policies"]
    except Exception:  # unreadable: still not ours to overwrite
        finished = False
    if finished:
        return (f"{results_dir} holds a finished search; remove that folder or choose another "
                "--results_dir")
    return (f"{results_dir} holds a search checkpoint; pass --resume to continue it or choose "
            "another --results_dir")


def check_resume(args, meta) -> None:
    """Refuse (UsageError) to resume a checkpoint made with other flags or other weights."""
    for key in RESUME_KEYS:
        saved = meta["flags"].get(key, RESUME_KEY_DEFAULTS.get(key))
        if saved != getattr(args, key):
            raise UsageError("--resume", f"the checkpoint was made with --{key} "
                             f"{saved!r}, not {getattr(args, key)!r}")
    saved = meta.get("weights")
    if args.pretrained is not None and saved is not None and \
            os.path.abspath(args.pretrained) != os.path.abspath(saved):
        raise UsageError("--pretrained", f"the checkpoint searches with the weights {saved!r}; "
                         "leave --pretrained out to resume it")


def roll_back(in_flight, logits, trace: SearchTrace) -> tuple[int, int]:
    """After a Ctrl-C inside a step: the logits go back to their state before the step and its
    records, if already made, are dropped, so a resume repeats the step exactly once.
    ``in_flight`` is (layer, step, logits state before the step); returns (layer, step)."""
    layer, step, state = in_flight
    logits.set_state(state)
    trace.truncate(layer, step)
    return layer, step


def writes_results(environ=os.environ, backend: str = "tf") -> bool:
    """Whether this process writes the results folder, read from the environment before the
    framework starts. PyTorch: rank 0 of a torchrun job (``RANK``), or a lone process.
    TensorFlow, from ``TF_CONFIG`` by the rule devices.is_chief applies once it has: every
    process of a one-machine run; in a multi-worker one the chief where the cluster names one,
    else worker 0."""
    if backend == "torch":
        try:
            return int(environ.get("RANK", "0") or 0) == 0
        except ValueError:
            return True  # backend_torch reports a malformed RANK
    try:
        config = json.loads(environ.get("TF_CONFIG", "").strip() or "{}")
        cluster, task = config.get("cluster") or {}, config.get("task") or {}
        if len(cluster.get("worker") or []) + len(cluster.get("chief") or []) <= 1:
            return True
        kind = task.get("type")
        if cluster.get("chief"):
            return kind == "chief"
        return kind is None or (kind == "worker" and int(task.get("index", 0)) == 0)
    except (ValueError, AttributeError, TypeError):
        return True  # devices.make_strategy reports a malformed TF_CONFIG


def results_lock(args):
    """Held for the whole run by the process that writes ``--results_dir``: a second search
    there (say a --resume started twice) would overwrite the first one's checkpoints, so it
    is refused (augmentation.files.InUse) before it reads anything."""
    if not writes_results(backend=args.backend):
        return contextlib.nullcontext()
    return exclusive(os.path.join(args.results_dir, ".search.lock"), args.results_dir)


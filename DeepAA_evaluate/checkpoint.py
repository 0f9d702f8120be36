"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint holds the model, optimiser, scheduler and gradient-scaler states, the last
finished epoch, the RNG states (torch, CUDA, numpy, python), the validated config, the
per-epoch history and the results so far. Everything is stored as tensors and plain Python
values so the safe loader accepts it.
"""
from __future__ import annotations

import io
import random

import numpy as np
import torch

from augmentation.files import atomic_write


def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available():  # this process's GPU only: a resume may see fewer GPUs
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, (list, tuple)):  # checkpoints that stored every visible GPU's
            cuda = cuda[torch.cuda.current_device()] if torch.cuda.current_device() < len(
                cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)


def atomic_torch_save(obj, path: str) -> None:
    """``torch.save`` into memory, then written atomically (temporary file + ``os.replace``)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getbuffer())


def save_checkpoint(path, *, model, optimizer, scheduler, scaler, epoch, config, history,
                    result) -> None:
    atomic_torch_save({
        "format": "deepaa-trainer-checkpoint/1",
        "epoch": int(epoch),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng_state(),
        "config": config,
        "history": history,
        "result": result,
    }, path)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; the message is one line."""


# What a checkpoint holds, and the types a resume needs; --only-eval needs the first two.
FIELDS = {"model": dict, "epoch": int, "optimizer": dict, "scheduler": dict, "scaler": dict,
          "rng": dict, "config": dict, "history": list, "result": (dict, type(None))}


def load_checkpoint(path: str, full: bool = True) -> dict:
    """Read a checkpoint safely onto the CPU and check the type of every field a resume
    (``full``) or an evaluation uses; raises :class:`CheckpointError` naming the field."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise CheckpointError(f"cannot read checkpoint {path!r}: {type(exc).__name__}") from None
    if not isinstance(data, dict) or "model" not in data or "epoch" not in data:
        raise CheckpointError(f"{path!r} is not a trainer checkpoint (no model/epoch)")
    for key, kind in list(FIELDS.items())[:None if full else 2]:
        if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
            raise CheckpointError(f"checkpoint {path!r}: field {key!r} is missing or of the "
                                  f"wrong type ({type(data.get(key)).__name__})")
    if data["epoch"] < 0 or not all(isinstance(v, torch.Tensor) for v in data["model"].values()):
        raise CheckpointError(f"checkpoint {path!r}: a negative epoch or weights that are not "
                              "tensors")
    if full:
        history_ok = all(isinstance(h, dict) and isinstance(h.get("epoch"), int)
                         and isinstance(h.get("train"), dict) for h in data["history"])
        result = data["result"] or {}
        if not history_ok or not isinstance(result.get("test") or {}, dict) \
                or not isinstance(result.get("wall_time_s") or 0.0, (int, float)):
            raise CheckpointError(f"checkpoint {path!r}: its history or results are malformed")
    return data

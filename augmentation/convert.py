"""Policy files: conversion between the released npz format and YAML (the YAML format itself
is augmentation.policy's).

The released search saved ``policy_DeepAA_<time>.npz`` (SPEC §2 "Output") with
``policy_probs`` (layers x D float32), ``l_ops``, ``l_mags``, ``ops`` and ``mags`` (D x 1: the
op index and level of each candidate) and ``op_names`` (``"ShearX:(-0.3,,0.3)"``; ops without a
magnitude carry the dummy range ``(0.0,,1.0)``). The ImageNet files name two ops differently
from us (``space.RELEASED_NAMES``); their presence is how the space is recognised.

Usage::

    python -m augmentation.convert IN.npz OUT.yaml [--meta key=value ...]
    python -m augmentation.convert IN.yaml OUT.npz

Bad input prints one line on stderr, exits with status 2 and writes nothing.
"""
from __future__ import annotations

import argparse
import io
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import yaml

from .cli import command_name
from .files import Unwritable, atomic_write, check_writable
from .policy import Policy, PolicyError, _plain, load_policy, save_policy
from .space import OP_TABLE, RELEASED_NAMES

_NAME_RE = re.compile(r"^([A-Za-z0-9_]+):\((-?[0-9.eE+-]+),,(-?[0-9.eE+-]+)\)$")
# The released files store float32 probabilities; 9 significant digits reproduce a float32
# exactly, so the YAML equals the npz to float32 precision while staying readable.
NPZ_DIGITS = 9
# The largest npz policy read (uncompressed): see policy.MAX_FILE_BYTES.
MAX_NPZ_BYTES = 64 * 2**20


def _parse_op_names(raw, path) -> list[tuple[str, float, float]]:
    out = []
    for s in raw:
        m = _NAME_RE.match(str(s))
        if not m:
            raise PolicyError(f"{path}: op name {str(s)!r} is not of the form 'Name:(low,,high)'")
        out.append((m.group(1), float(m.group(2)), float(m.group(3))))
    return out


def _detect_space(names: list[str]) -> str:
    """ImageNet if any name belongs only to the ImageNet table (ours or the released one)."""
    cifar = {op.name for op in OP_TABLE["cifar"]}
    imagenet_names = {op.name for op in OP_TABLE["imagenet"]} | set(RELEASED_NAMES["imagenet"])
    imagenet_only = imagenet_names - cifar
    return "imagenet" if imagenet_only & set(names) else "cifar"


def _scalar_int(arr, key, path) -> int:
    a = np.asarray(arr)
    if a.size != 1 or not np.issubdtype(a.dtype, np.integer):
        raise PolicyError(f"{path}: '{key}' must be one integer, got {a.dtype} of shape {a.shape}")
    return int(a.reshape(()))


def npz_to_policy(path) -> Policy:
    """Read a released-format npz policy; raises PolicyError (one line) on anything unexpected,
    including an op table or candidate list that differs from this code's."""
    return _read_npz(path)[0]


def _read_npz(path) -> tuple[Policy, np.ndarray]:
    """The policy (rows renormalised in float64) and the file's probabilities as stored."""
    path = Path(path)
    if not path.is_file():
        raise PolicyError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    try:
        with zipfile.ZipFile(path) as z:  # sizes first: a small file may unpack to gigabytes
            unpacked = sum(info.file_size for info in z.infolist())
        if unpacked > MAX_NPZ_BYTES:
            raise PolicyError(f"{path}: its arrays take {unpacked} bytes, more than a policy "
                              f"holds ({MAX_NPZ_BYTES})")
        with np.load(path, allow_pickle=False) as d:
            data = {k: d[k] for k in d.files}
    except PolicyError:
        raise
    except Exception as e:  # a damaged zip fails in many ways (BadZipFile, zlib.error, ...)
        raise PolicyError(f"{path}: not a readable npz file ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else 'unreadable'})") from None
    missing = [k for k in ("policy_probs", "l_mags", "ops", "mags", "op_names") if k not in data]
    if missing:
        raise PolicyError(f"{path}: missing array(s) {', '.join(missing)}")
    l_mags = _scalar_int(data["l_mags"], "l_mags", path)
    if data["op_names"].dtype.kind not in "US":
        raise PolicyError(f"{path}: 'op_names' must be strings, got {data['op_names'].dtype}")
    parsed = _parse_op_names(data["op_names"].reshape(-1), path)
    released = [n for n, _, _ in parsed]
    space = _detect_space(released)
    rename = RELEASED_NAMES[space]
    names = [rename.get(n, n) for n in released]
    table = OP_TABLE[space]
    if names != [op.name for op in table]:
        raise PolicyError(
            f"{path}: op list {released} does not match the {space} table {[op.name for op in table]}"
        )
    for (name, lo, hi), op in zip(parsed, table):
        if op.has_magnitude and not (np.isclose(lo, op.low) and np.isclose(hi, op.high)):
            raise PolicyError(f"{path}: {name} range ({lo}, {hi}) differs from ({op.low}, {op.high})")
    if "l_ops" in data and _scalar_int(data["l_ops"], "l_ops", path) != len(names):
        raise PolicyError(f"{path}: l_ops = {int(data['l_ops'])} but {len(names)} op names")
    ops, mags = np.asarray(data["ops"]).reshape(-1), np.asarray(data["mags"]).reshape(-1)
    if not (np.issubdtype(ops.dtype, np.integer) and np.issubdtype(mags.dtype, np.integer)):
        raise PolicyError(f"{path}: 'ops' and 'mags' must be integer arrays")
    if ops.shape != mags.shape:
        raise PolicyError(f"{path}: 'ops' has {ops.size} entries but 'mags' {mags.size}")
    if ops.size and (ops.min() < 0 or ops.max() >= len(names)):
        raise PolicyError(f"{path}: 'ops' holds an index outside 0..{len(names) - 1}")
    cands = [(names[o], int(m)) for o, m in zip(ops, mags)]
    probs = np.asarray(data["policy_probs"])
    if probs.dtype.kind not in "fiu":
        raise PolicyError(f"{path}: 'policy_probs' must be numbers, got {probs.dtype}")
    meta = {
        "source": path.name,
        "note": f"converted from the released npz format; probabilities as stored there "
        f"({probs.dtype}), each row renormalised to sum to 1 on loading",
    }
    try:
        return Policy(probs.astype(np.float64), cands, l_mags, space, meta), probs
    except PolicyError as e:
        raise PolicyError(f"{path}: {e}") from None


def policy_to_npz(policy: Policy, path) -> Path:
    """Write ``policy`` in the released npz format (atomically), with the released op names."""
    table = OP_TABLE[policy.space]
    back = {ours: theirs for theirs, ours in RELEASED_NAMES[policy.space].items()}
    index = {op.name: i for i, op in enumerate(table)}
    op_names = [
        f"{back.get(op.name, op.name)}:({float(op.low) if op.has_magnitude else 0.0},,"
        f"{float(op.high) if op.has_magnitude else 1.0})"
        for op in table
    ]
    buf = io.BytesIO()
    np.savez(
        buf,
        policy_probs=policy.probs.astype(np.float32),
        l_ops=np.int64(len(table)),
        l_mags=np.int64(policy.l_mags),
        ops=np.array([[index[n]] for n, _ in policy.candidates], dtype=np.int32),
        mags=np.array([[lv] for _, lv in policy.candidates], dtype=np.int32),
        op_names=np.array(op_names),
    )
    atomic_write(path, buf.getvalue())
    return Path(path)


def _parse_meta(items: list[str]) -> dict:
    meta = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise PolicyError(f"--meta expects key=value, got {item!r}")
        try:
            meta[key] = _plain(yaml.safe_load(value))
        except (yaml.YAMLError, ValueError):
            meta[key] = value
        except RecursionError:  # a value that contains itself (an alias of its own anchor)
            raise PolicyError(f"--meta {key}: the value refers to itself") from None
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=command_name("python -m augmentation.convert"),
        description="Convert a DeepAA policy between the released npz format and YAML.",
    )
    parser.add_argument("src", help="input policy: .npz (released format) or .yaml/.yml")
    parser.add_argument("dst", help="output policy: .yaml/.yml or .npz")
    parser.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                        help="add an entry to the policy's meta (repeatable)")
    args = parser.parse_args(argv)
    src, dst = Path(args.src), Path(args.dst)
    yaml_ext = {".yaml", ".yml"}
    to_yaml = src.suffix == ".npz" and dst.suffix in yaml_ext
    try:
        if not to_yaml and not (src.suffix in yaml_ext and dst.suffix == ".npz"):
            raise PolicyError(
                f"cannot convert {src.name} to {dst.name}: expected IN.npz OUT.yaml or IN.yaml OUT.npz"
            )
        extra = _parse_meta(args.meta)
        check_writable(dst)  # before reading: a file that cannot be written is known now
        if to_yaml:
            policy, stored = _read_npz(src)
            policy.meta.update(extra)
            # Float inputs are written as stored (9 digits reproduce a float32 exactly).
            digits = NPZ_DIGITS if stored.dtype == np.float32 else None
            save_policy(policy, dst, digits=digits, probs=stored)
        else:
            policy = load_policy(src)
            policy_to_npz(policy, dst)
    except Unwritable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except PolicyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the disk filled up while writing: the old file, if any, is intact
        print(f"error: cannot write {args.dst}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(f"wrote {dst} ({policy.space}, {policy.n_layers} layers x {policy.n_candidates} candidates)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

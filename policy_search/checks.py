"""The search's input checks that need no TensorFlow, in one place: every number, every output,
and the memory a step of the requested size needs.

Each check raises ``config.UsageError`` (one line naming the flag, exit code 2) before
anything is written. ``numbers``, ``outputs`` and ``environment`` (TF_CONFIG or torchrun's
variables) run on the flags alone (``config.validate``); ``memory`` once the data's image size
is known (``run.Prepared``); ``out_is_free`` once it is known whether the run continues a
checkpoint.

Bounds are generous: they refuse what cannot be meant (a seed numpy and TensorFlow cannot
take, a NaN learning rate, a hundred thousand policy layers), not unusual settings. Step
sizes (points, copies, validation images) are bounded by memory instead of by a constant.
"""
from __future__ import annotations

import json
import math
import os

from augmentation.files import Unwritable, check_writable
from augmentation.space import l_mags_problem, n_candidates

MAX_SEED = 2**32 - 1  # numpy's legacy and TensorFlow's global seeds are 32-bit
BIG = 10**6  # upper bound of the batch and step sizes before the memory check sees them

# flag -> (smallest, largest) for the integer flags.
INTS = {
    "n_classes": (1, 100000), "n_policies": (1, 100), "search_bno": (1, 10**7),
    "train_same_labels": (1, BIG), "EXP_G": (1, BIG), "EXP_gT_factor": (1, BIG),
    "N_repeat_random": (1, BIG), "n_val_per_point": (1, BIG), "batch_size": (1, BIG),
    "val_batch_size": (1, BIG), "test_batch_size": (1, BIG), "checkpoint_every": (1, 10**9),
    "nb_epochs": (0, 100000), "pretrain_size": (0, 10**9), "cpu_replicas": (0, 256),
    "stop_after_steps": (0, 10**9), "seed": (0, MAX_SEED),
}
# flag -> (smallest, largest, whether the smallest is allowed) for the float flags; NaN and
# infinity never pass. A learning rate above 10 diverges for any of the search's models.
FLOATS = {"policy_lr": (0.0, 10.0, False), "pretrain_lr": (0.0, 10.0, False),
          "clip_policy_gradient_norm": (0.0, 1e6, True)}


def _error(flag: str, message: str):
    from policy_search.config import UsageError  # config imports this module

    return UsageError(flag, message)


def _shown(value) -> str:
    """An integer as typed, or its length when it has too many digits to print."""
    return str(value) if abs(value) < 10**18 else f"an integer of {len(str(abs(value)))} digits"


def numbers(args) -> None:
    """Every number flag finite and within its bounds (INTS, FLOATS, --l_mags)."""
    problem = l_mags_problem(args.l_mags)
    if problem:
        raise _error("--l_mags", problem)
    for name, (low, high) in INTS.items():
        value = getattr(args, name)
        if not low <= value <= high:
            raise _error(f"--{name}", f"must be from {low} to {high}, got {_shown(value)}")
    if args.chunk_size is not None and not 1 <= args.chunk_size <= BIG:
        raise _error("--chunk_size", f"must be from 1 to {BIG}, got {_shown(args.chunk_size)}")
    for name, (low, high, closed) in FLOATS.items():
        value = getattr(args, name)
        above = value >= low if closed else value > low
        if not (math.isfinite(value) and above and value <= high):
            bound = "[" if closed else "("
            raise _error(f"--{name}", f"must be a number in {bound}{low:g}, {high:g}], got {value}")


def outputs(args) -> None:
    """--results_dir, --out (and its .npz with --export_npz) writable, before any work."""
    wanted = [("--results_dir", args.results_dir, True), ("--out", args.out, False)]
    if args.export_npz:
        wanted.append(("--out", os.path.splitext(args.out)[0] + ".npz", False))
    for flag, path, folder in wanted:
        try:
            check_writable(path, folder=folder)
        except Unwritable as err:
            raise _error(flag, str(err)) from None


def out_is_free(args, recorded_out: str | None) -> None:
    """A new search never overwrites a policy file it did not write: an existing --out is
    refused unless the checkpoint being resumed names it (the same search, finishing)."""
    outs = [args.out] + ([os.path.splitext(args.out)[0] + ".npz"] if args.export_npz else [])
    mine = recorded_out is not None and os.path.abspath(recorded_out) == os.path.abspath(args.out)
    for path in outs:
        if os.path.exists(path) and not mine:
            raise _error("--out", f"{path} exists (another search's policy?); remove it or "
                                  "choose another --out")


def environment(environ=os.environ, backend: str = "tf") -> None:
    """The variables that spread a search over processes, when set: for TensorFlow
    ``TF_CONFIG`` (several machines, see devices.py), a JSON object whose cluster lists
    host:port strings and whose task names one of them; for PyTorch torchrun's ``WORLD_SIZE``,
    ``RANK`` and ``LOCAL_RANK``, whole numbers with the rank below the world size."""
    if backend == "torch":
        values = {}
        for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
            raw = environ.get(name, "").strip()
            if raw:
                try:
                    values[name] = int(raw)
                except ValueError:
                    raise _error(name, f"must be a whole number, got {raw[:40]!r}") from None
        world = values.get("WORLD_SIZE", 1)
        if world < 1 or not all(0 <= values.get(n, 0) < world for n in ("RANK", "LOCAL_RANK")):
            raise _error("RANK", f"RANK {values.get('RANK', 0)} and LOCAL_RANK "
                                 f"{values.get('LOCAL_RANK', 0)} must lie in 0..WORLD_SIZE-1 "
                                 f"(WORLD_SIZE {world})")
        return
    raw = environ.get("TF_CONFIG", "").strip()
    if not raw:
        return
    try:
        config = json.loads(raw)
    except ValueError as err:
        raise _error("TF_CONFIG", f"not valid JSON ({err})") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task", {}) if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict) or not all(
            isinstance(hosts, list) and all(isinstance(h, str) for h in hosts)
            for hosts in cluster.values()):
        raise _error("TF_CONFIG", "must be {\"cluster\": {\"worker\": [\"host:port\", ...]}, "
                                  "\"task\": {\"type\": \"worker\", \"index\": i}}")
    kind, index = task.get("type", "worker"), task.get("index", 0)
    if kind not in cluster or not isinstance(index, int) or isinstance(index, bool) \
            or not 0 <= index < len(cluster[kind]):
        raise _error("TF_CONFIG", f"task {kind!r} {index!r} is not in the cluster")


def physical_memory() -> int | None:
    """Bytes of memory of this machine, or None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def step_images(args, n_random: int) -> int:
    """Images one search step holds (uint8, on the host): per point the dense set (every
    candidate, random ones ``N_repeat_random`` times with --repeat_random_ops; EXP_G copies
    after the first layer), the M = D * EXP_gT_factor g_tr copies and the validation batch."""
    d = n_candidates(args.l_mags)
    dense = d + (args.N_repeat_random - 1) * n_random if args.repeat_random_ops else d
    per_point = dense + args.n_val_per_point
    if args.n_policies > 1:
        per_point = args.EXP_G * dense + d * args.EXP_gT_factor + args.n_val_per_point
    return args.train_same_labels * per_point


def memory(args, size: int, n_random: int, split_sizes: dict,
           available: int | None = None) -> None:
    """Refuse sizes whose images alone exceed this machine's memory: a step is built while
    two more wait in the prefetcher and one is being computed (4 steps), and a batch is
    normalised to float32 (``split_sizes``: the images each batch flag draws from, which
    cap it). The model's activations come on top, so what passes may still be too much;
    what is refused surely is."""
    available = physical_memory() if available is None else available
    if not available:
        return
    image = size * size * 3
    step = 4 * step_images(args, n_random) * image
    if step > available:
        sizes = ("train_same_labels", "EXP_G", "EXP_gT_factor", "n_val_per_point")
        given = [name for name in sizes if name in getattr(args, "explicit", ())]
        raise _error(f"--{(given or sizes)[0]}", f"a search step of this size holds "
                     f"{step / 2**30:.1f} GiB of {size}x{size} images (4 steps in flight), more "
                     f"than this machine's {available / 2**30:.1f} GiB: lower --train_same_labels, "
                     "--EXP_G, --EXP_gT_factor or --n_val_per_point")
    for flag, images in split_sizes.items():
        batch = 4 * min(getattr(args, flag), images) * image * 4  # float32, a few copies
        if batch > available:
            raise _error(f"--{flag}", f"a batch of {getattr(args, flag)} images of "
                         f"{size}x{size} takes {batch / 2**30:.1f} GiB, more than this "
                         f"machine's {available / 2**30:.1f} GiB")

"""Search checkpoints (``RESULTS_DIR/checkpoint.npz``): writing, reading, the checks that
decide whether a run may continue one, and the lock that keeps one search per folder.

A checkpoint holds the logits and every layer's Adam state (``PolicyLogits.get_state``), the
position (next layer, next step), the per-step records (``policy_search.trace``) and a meta
record: the flags, the path of the pretrained weights and the sizes of the data splits. All randomness of a step is derived
from (seed, layer, step), so the position is the random state and a resumed run ends with the
policy of an uninterrupted one.

Pretraining has a checkpoint of its own (``pretrain_checkpoint.npz``): the model's weights and
the optimiser's variables after each epoch, so a pretraining cut short continues with
``--resume`` from its last finished epoch and ends with the weights of an uninterrupted one
(its batches are derived from (seed, epoch) too). It is removed once the search's first
checkpoint exists.

Reading a checkpoint checks everything in it before anything is used: a file that is not a
readable npz, lacks a field, holds a field of the wrong shape or type, or a position that does
not fit the flags or its own traces raises UsageError naming --resume. Per-step matrices
absent from a checkpoint written before they were kept load as NaN rows; present, they must
fit their cosine trace.
"""
from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np

from augmentation.files import InUse, atomic_write, exclusive
from augmentation.space import candidates
from policy_search.config import UsageError
from policy_search.trace import SearchTrace

CHECKPOINT = "checkpoint.npz"
PRETRAIN_CHECKPOINT = "pretrain_checkpoint.npz"
# Flags that must be equal to resume a run (the others, e.g. --checkpoint_every, may change).
# --aug_backend is one of them: the tensor ops draw their random ops from another generator.
RESUME_KEYS = ("dataset", "n_classes", "use_model", "n_policies", "search_bno", "seed", "l_mags",
               "policy_lr", "EXP_G", "EXP_gT_factor", "train_same_labels", "repeat_random_ops",
               "N_repeat_random", "n_val_per_point", "policy_bn_training", "pretrain_size",
               "aug_backend", "backend", "precision")
# Values of resume keys added after checkpoints were first written: a checkpoint without the
# key was made with this value.
RESUME_KEY_DEFAULTS = {"backend": "tf", "precision": "fp32"}
# Pretraining continues only with the flags that shaped it (and then searches with the rest);
# --precision is the search model's alone (pretraining is float32).
PRETRAIN_KEYS = tuple(k for k in RESUME_KEYS if k != "precision") + (
    "nb_epochs", "pretrain_lr", "batch_size")
POLICY_STATE = ("logits", "adam_iterations", "adam_momentum", "adam_velocity")


def save_checkpoint(path, policy_state: dict, layer: int, step: int, trace: SearchTrace,
                    meta: dict):
    arrays = {f"policy/{k}": np.asarray(v) for k, v in policy_state.items()}
    arrays["position"] = np.array([layer, step], np.int64)
    arrays.update(trace.arrays())
    _write_npz(path, arrays, meta)


def _write_npz(path, arrays: dict, meta: dict) -> None:
    """``arrays`` and the meta record (as JSON) in one npz, written atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, meta_json=np.array(json.dumps(meta)))
    atomic_write(path, buffer.getvalue())


def _unreadable(path, why: str):
    return UsageError("--resume", f"{path} is not a usable checkpoint: {why}")


def _open_npz(path) -> dict:
    """All arrays of an npz file, or UsageError (never a traceback) for anything else."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("not an npz archive")
            return {k: z[k] for k in z.files}
    except Exception as err:  # truncated, empty, a pickle, a flipped byte: many types
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise _unreadable(path, f"{type(err).__name__}{': ' + first if first else ''}") from None


def _meta(arrays: dict, path) -> dict:
    try:
        meta = json.loads(str(arrays["meta_json"]))
    except (KeyError, ValueError):
        raise _unreadable(path, "no readable meta record") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("flags"), dict):
        raise _unreadable(path, "its meta record has no flags")
    if not isinstance(meta.get("weights", ""), (str, type(None))) or not isinstance(
            meta.get("elapsed_s", 0.0), (int, float)):
        raise _unreadable(path, "its meta record has ill-typed fields")
    return meta


def _int_array(arrays: dict, key: str, shape, path) -> np.ndarray:
    a = arrays.get(key)
    if a is None or a.dtype.kind not in "iu" or (shape is not None and a.shape != shape):
        raise _unreadable(path, f"'{key}' must be integers of shape {shape}, got "
                                f"{'nothing' if a is None else f'{a.dtype} {a.shape}'}")
    return a


def load_checkpoint(path):
    """(policy state, layer, step, SearchTrace, meta) of a search checkpoint, each field
    checked for presence, type and shape (check_progress then checks them against the flags).
    A checkpoint from before the per-step matrices were kept has only the cosine traces: its
    matrices load as NaN rows (``SearchTrace.from_arrays``)."""
    arrays = _open_npz(path)
    meta = _meta(arrays, path)
    layer, step = (int(v) for v in _int_array(arrays, "position", (2,), path))
    state = {}
    for key in POLICY_STATE:
        a = arrays.get(f"policy/{key}")
        if a is None or a.dtype.kind not in "fiu" or not np.all(np.isfinite(a)):
            raise _unreadable(path, f"'policy/{key}' is missing or not finite numbers")
        state[key] = a
    if state["logits"].ndim != 2:
        raise _unreadable(path, f"'policy/logits' has shape {state['logits'].shape}, not "
                                "(layers, candidates)")
    n = len([k for k in arrays if k.startswith("cos_trace/")])
    for k in range(n):
        t = arrays.get(f"cos_trace/{k}")
        if t is None or t.ndim != 1 or t.dtype.kind != "f" or not np.all(np.isfinite(t)):
            raise _unreadable(path, f"'cos_trace/{k}' is missing or not finite numbers")
    try:
        trace = SearchTrace.from_arrays(arrays)
    except ValueError as err:  # a matrix of another type or shape than its cosine trace's
        raise _unreadable(path, str(err)) from None
    return state, layer, step, trace, meta


def check_progress(args, checkpoint, n_candidates: int) -> None:
    """The state's shapes fit --n_policies and the candidates of --l_mags, and the position
    is one the run can reach: layers before it complete, its own layer ``step`` steps in
    (the cosine traces say how many steps each layer has done)."""
    state, layer, step, trace, _ = checkpoint
    k, d = args.n_policies, n_candidates
    path = os.path.join(args.results_dir, CHECKPOINT)
    shapes = {"logits": (k, d), "adam_iterations": (k,), "adam_momentum": (k, d),
              "adam_velocity": (k, d)}
    for key, shape in shapes.items():
        if state[key].shape != shape:
            raise _unreadable(path, f"'policy/{key}' has shape {state[key].shape}, "
                                          f"the flags need {shape}")
    if not (0 <= layer < k and 0 <= step < args.search_bno) and (layer, step) != (k, 0):
        raise _unreadable(path, f"position layer {layer + 1} step {step} lies outside "
                                      f"{k} layers of {args.search_bno} steps")
    done = [trace.steps_done(j) for j in range(trace.n_layers)] + [0] * (k - trace.n_layers)
    expected = [args.search_bno] * layer + [step] * (layer < k) + [0] * (k - layer - 1)
    if trace.n_layers > k or done != expected:
        raise _unreadable(path, f"its traces ({done} steps per layer) do not end at its "
                                      f"position (layer {layer + 1}, step {step})")


def save_pretraining(path, weights: list, optimizer: list, epoch: int, meta: dict) -> None:
    """The pretraining after ``epoch`` epochs: the model's weights and the optimiser's
    variables (in their Keras orders), atomically."""
    arrays = {f"weights/{i}": np.asarray(w) for i, w in enumerate(weights)}
    arrays.update({f"optimizer/{i}": np.asarray(v) for i, v in enumerate(optimizer)})
    arrays["epoch"] = np.array(epoch, np.int64)
    _write_npz(path, arrays, meta)


def load_pretraining(path, nb_epochs: int):
    """(weights, optimizer variables, epochs done, meta) of a pretraining checkpoint; the
    arrays are checked against the model by ``check_shapes`` once it is built."""
    arrays = _open_npz(path)
    meta = _meta(arrays, path)
    epoch = int(_int_array(arrays, "epoch", (), path))
    if not 1 <= epoch <= nb_epochs:
        raise _unreadable(path, f"epoch {epoch} is outside 1..{nb_epochs} (--nb_epochs)")
    out = []
    for prefix in ("weights", "optimizer"):
        n = len([k for k in arrays if k.startswith(prefix + "/")])
        if any(f"{prefix}/{i}" not in arrays for i in range(n)):
            raise _unreadable(path, f"its {prefix} arrays are not numbered 0..n-1")
        values = [arrays[f"{prefix}/{i}"] for i in range(n)]
        if any(a.dtype.kind not in "fiu" or not np.all(np.isfinite(a)) for a in values):
            raise _unreadable(path, f"its {prefix} hold values that are not finite numbers")
        out.append(values)
    return out[0], out[1], epoch, meta


def check_shapes(path, what: str, values: list, shapes: list) -> None:
    """``values`` (from load_pretraining) fit the variables of the model or optimiser."""
    got = [tuple(np.shape(v)) for v in values]
    want = [tuple(s) for s in shapes]
    if got != want:
        i = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        raise _unreadable(path, f"{len(got)} {what} arrays where the model has {len(want)}, "
                                f"first difference at {i}")


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


def check_resume(args, meta, keys=RESUME_KEYS) -> None:
    """Refuse (UsageError) to resume a checkpoint made with other flags or other weights."""
    for key in keys:
        saved = meta["flags"].get(key, RESUME_KEY_DEFAULTS.get(key))
        if saved != getattr(args, key):
            raise UsageError("--resume", f"the checkpoint was made with --{key} "
                             f"{saved!r}, not {getattr(args, key)!r}")
    saved = meta.get("weights")
    if args.pretrained is not None and saved is not None and \
            os.path.abspath(args.pretrained) != os.path.abspath(saved):
        raise UsageError("--pretrained", f"the checkpoint searches with the weights {saved!r}; "
                         "leave --pretrained out to resume it")


def starting_point(args):
    """Where this run starts, decided from the flags and the results folder alone: the search
    checkpoint it continues (load_checkpoint's tuple, checked against the flags), or None for
    a new search or a pretraining that ``--resume`` continues (PRETRAIN_CHECKPOINT). A new run
    in a folder that holds either checkpoint is refused, and so is an --out it would overwrite."""
    from policy_search import checks

    ckpt = os.path.join(args.results_dir, CHECKPOINT)
    pre = os.path.join(args.results_dir, PRETRAIN_CHECKPOINT)
    resume = None
    if args.resume and os.path.exists(ckpt):
        resume = load_checkpoint(ckpt)
        check_resume(args, resume[4])
        space = "imagenet" if args.dataset == "imagenet" else "cifar"
        check_progress(args, resume, len(candidates(space, args.l_mags)))
    elif args.resume:
        if args.pretrained is not None:
            raise UsageError("--pretrained", f"{args.results_dir} holds a pretraining to "
                             "continue; leave --pretrained out")
        check_resume(args, load_pretraining(pre, args.nb_epochs)[3], PRETRAIN_KEYS)
    elif os.path.exists(ckpt) or os.path.exists(pre):
        raise UsageError("--results_dir", occupied(args.results_dir, ckpt))
    checks.out_is_free(args, resume[4]["flags"].get("out") if resume else None)
    return resume


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


@contextlib.contextmanager
def results_lock(args):
    """Held for the whole run by the process that writes ``--results_dir``: a second search
    there (say a --resume started twice) would overwrite the first one's checkpoints, so it
    is refused (augmentation.files.InUse) before it reads anything. ``--out`` is held too:
    two searches in different folders writing one policy file would overwrite each other."""
    if not writes_results(backend=args.backend):
        yield
        return
    locks = (("--results_dir", os.path.join(args.results_dir, ".search.lock"), args.results_dir),
             ("--out", os.path.abspath(args.out) + ".lock", args.out))
    with contextlib.ExitStack() as held:
        for flag, lock, what in locks:
            try:
                held.enter_context(exclusive(lock, what))
            except InUse as err:
                raise UsageError(flag, f"{err}, another search") from None
        yield

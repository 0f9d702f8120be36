"""The search run: data and checks, model, the loop over layers and steps, checkpoints, output.

Order matters for bad input (SPEC-independent project rule): every check that can fail on the
user's input (flags, data, ``--n_classes``, replicas, weights file) runs before the results
folder is created, so a failed start writes nothing.

Resuming: see ``policy_search.checkpoint``. All randomness of a step is derived from (seed,
layer, step) (see ``policy_search.data``), so the checkpoint's position *is* the random state:
a resumed run draws exactly what the uninterrupted run drew and ends with the same policy.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time

import numpy as np

from augmentation.files import atomic_write
from augmentation.space import candidates as space_candidates, identity_index
from deepaa_data import DatasetError, has_split, load_dataset
from policy_search import checks, data
from policy_search.augment import Augmenter, make_executor
from policy_search.checkpoint import (CHECKPOINT, PRETRAIN_CHECKPOINT, results_lock, roll_back,
                                      save_checkpoint, starting_point)
from policy_search.config import UsageError
from policy_search.trace import SearchTrace

log = logging.getLogger("deepaa.search")


class Prepared:
    """What the search needs from the data, gathered before anything is written."""

    def __init__(self, args):
        try:
            self.train = load_dataset(args.dataset, args.dataroot, "train", download=True)
        except DatasetError as err:
            raise UsageError("--dataset", str(err)) from None
        if self.train.n_classes != args.n_classes:
            raise UsageError("--n_classes", f"{args.n_classes} does not match the "
                             f"{self.train.n_classes} classes of {args.dataset}")
        self.test = None  # a split that is absent is fine; one that does not load is not
        if has_split(args.dataset, args.dataroot, "test"):
            try:
                self.test = load_dataset(args.dataset, args.dataroot, "test")
            except DatasetError as err:
                raise UsageError("--dataset", f"test split: {err}") from None
        self.space = "imagenet" if args.dataset == "imagenet" else "cifar"
        if self.space == "imagenet":
            self.size = 224
        elif hasattr(self.train, "images"):
            self.size = int(self.train.images.shape[1])
            if self.train.images.shape[1] != self.train.images.shape[2]:
                raise UsageError("--dataset", f"the search model takes square images; "
                                 f"{args.dataset} holds {self.train.images.shape[1]}x"
                                 f"{self.train.images.shape[2]} (height x width)")
        else:
            self.size = int(min(self.train.image(0).size))
        self.input_shape = (self.size, self.size, 3)
        self.candidates = space_candidates(self.space, args.l_mags)
        self.splits = data.make_splits(len(self.train), args.pretrain_size, args.seed,
                                       self.space)
        if len(self.splits.val) == 0 or len(self.splits.search) == 0:
            raise UsageError("--dataset", f"{args.dataset} has too few images "
                             f"({len(self.train)}) for validation and search splits")
        needs_pretrain = args.pretrained is None and not args.resume
        if needs_pretrain and len(self.splits.pretrain) < args.batch_size and args.nb_epochs:
            raise UsageError("--pretrain_size", f"{len(self.splits.pretrain)} pretraining "
                             f"images are fewer than one batch (--batch_size {args.batch_size})")
        self.sampler = data.PointSampler(self.train.labels, self.splits, args.n_val_per_point)
        checks.memory(args, self.size, sum(name.startswith("Rand") for name, _ in self.candidates),
                      {"batch_size": len(self.splits.pretrain), "val_batch_size":
                       len(self.splits.val), "test_batch_size": len(self.test or ())})

    def split_sizes(self) -> list[int]:
        return [len(self.splits.val), len(self.splits.pretrain), len(self.splits.search)]

    def provenance(self, args) -> dict:
        """Which images a model pretrained here has seen (kept beside its weights)."""
        return {"dataset": args.dataset, "seed": args.seed, "splits": self.split_sizes()}


def _setup_logging(results_dir: str, debug: bool):
    from tqdm import tqdm

    class TqdmHandler(logging.Handler):
        def emit(self, record):
            tqdm.write(self.format(record))

    log.handlers.clear()
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    log.propagate = False
    fh = logging.FileHandler(os.path.join(results_dir, "search.log"))
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    th = TqdmHandler()
    th.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(fh)
    log.addHandler(th)


def _flags(args) -> dict:
    return {k: v for k, v in sorted(vars(args).items()) if k not in ("explicit",)}


def _entropy(p) -> float:
    p = np.asarray(p, np.float64)
    return float(-np.sum(p[p > 0] * np.log(p[p > 0])))


# ------------------------------------------------------------------ the run
def main(args) -> int:
    """Run the search described by ``args`` (parsed and validated by ``config``), holding
    ``--results_dir`` and ``--out`` for the whole run (checkpoint.results_lock)."""
    with results_lock(args):
        return _main(args)


def _main(args) -> int:
    started = time.time()
    resume = starting_point(args)  # flags first: refusing needs no dataset
    prep = Prepared(args)
    if resume is not None and resume[4].get("splits") not in (None, prep.split_sizes()):
        raise UsageError("--resume", f"the checkpoint's val/pretrain/search split "
                         f"{resume[4]['splits']} differs from this run's "
                         f"{prep.split_sizes()}: the dataset changed")

    from policy_search.backend import create

    backend = create(args)
    try:
        if args.train_same_labels % backend.replicas:
            raise UsageError("--train_same_labels", f"{args.train_same_labels} points cannot "
                             f"be split over {backend.replicas} replicas")
        if not backend.writes_results:
            # Every process runs the whole search in lockstep; only one writes the results
            # (TensorFlow's chief, PyTorch's rank 0): the others write to a scratch folder
            # that is removed when they finish.
            scratch = tempfile.mkdtemp(prefix="deepaa-worker-")
            try:
                return _run(worker_args(args, scratch), backend, prep, resume, started)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        return _run(args, backend, prep, resume, started)
    finally:
        backend.close()


def worker_args(args, scratch: str):
    """``args`` for a non-chief worker: results and policy under ``scratch`` (a pretraining
    it continues is read from the chief's folder, ``shared_dir``)."""
    redirected = argparse.Namespace(**vars(args))
    redirected.shared_dir = args.results_dir
    redirected.results_dir = scratch
    redirected.out = os.path.join(scratch, os.path.basename(args.out))
    return redirected


def _run(args, backend, prep, resume, started) -> int:
    """main's work once the devices are known: pretraining (or weights), the search, output."""
    search_model = None
    known = resume[4]["weights"] if resume is not None else args.pretrained
    if known is not None and not args.pretrain_only:
        search_model = _search_model(args, backend, prep, known)

    # Past this point files are written.
    os.makedirs(args.results_dir, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    _setup_logging(args.results_dir, args.debug)
    from tqdm import tqdm

    from policy_search import pretrain as pre

    log.info("DeepAA search: %s, %s on %dx%d images, %d classes, %d candidates, %d replica(s) "
             "(%s); split val/pretrain/search = %d/%d/%d", args.dataset, args.use_model,
             prep.size, prep.size, args.n_classes, len(prep.candidates), backend.replicas,
             backend.device, *prep.split_sizes())
    short = prep.sampler.short_classes()
    if short:
        log.warning("%d of %d classes have fewer than %d validation images (--n_val_per_point); "
                    "their validation batches repeat images", len(short),
                    len(prep.sampler.classes), args.n_val_per_point)
    augmenter = Augmenter(prep.candidates, args.l_mags, prep.size)
    executor = make_executor(augmenter, args.use_pool, args.aug_backend)
    try:
        if resume is not None:
            weights = resume[4]["weights"]
        elif args.pretrained is not None:
            weights = args.pretrained
            problem = pre.trained_on_search_images(pre.read_provenance(weights),
                                                   prep.provenance(args), prep.splits, prep.space)
            if problem:
                log.warning("%s", problem)
        else:
            weights = os.path.join(args.results_dir,
                                   f"pretrained_{args.use_model}{backend.weights_suffix}")
            state = os.path.join(args.results_dir, PRETRAIN_CHECKPOINT)
            shared = os.path.join(getattr(args, "shared_dir", args.results_dir),
                                  PRETRAIN_CHECKPOINT)
            model = pre.pretrain(args, backend, prep.train, prep.splits.pretrain, executor,
                                 prep.space, prep.input_shape, weights, progress=tqdm,
                                 state_path=state,
                                 meta={"flags": _flags(args), "splits": prep.split_sizes()},
                                 resume_from=shared if args.resume else None)
            pre.write_provenance(weights, prep.provenance(args))
            _score(pre, backend, model, prep, args, executor)
        if args.pretrain_only:
            _remove(os.path.join(args.results_dir, PRETRAIN_CHECKPOINT))
            log.info("--pretrain_only: weights in %s", weights)
            return 0
        if search_model is None:
            search_model = _search_model(args, backend, prep, weights)
        return _search(args, backend, search_model, prep, executor, weights, resume, started)
    finally:
        executor.close()


def _score(pre, backend, model, prep, args, executor):
    val_acc = pre.evaluate(backend, model, pre.eval_batches(prep.train, prep.splits.val,
                                                   args.val_batch_size, executor, prep.space))
    log.info("pretrained model: validation accuracy %.4f", val_acc)
    chance = 1.0 / max(1, args.n_classes)
    if val_acc < 1.5 * chance:
        # Gradient matching needs a model that has learnt something: at chance level the
        # gradients are noise and so are the importances (more data or --nb_epochs helps).
        log.warning("the pretrained model is near chance on validation (%.3f vs %.3f): the "
                    "search's importances will be noise; pretrain longer (--nb_epochs) or on "
                    "more images (--pretrain_size)", val_acc, chance)
    if prep.test is not None and len(prep.test):
        test_acc = pre.evaluate(backend, model, pre.eval_batches(
            prep.test, np.arange(len(prep.test)), args.test_batch_size, executor, prep.space))
        log.info("pretrained model: test accuracy %.4f", test_acc)


def _search_model(args, backend, prep, weights):
    """The search model on the backend's devices, restored from ``weights``, batch norm
    frozen; weights that do not fit are a --pretrained error."""
    try:
        return backend.search_model(args, prep.input_shape, weights)
    except ValueError as err:
        raise UsageError("--pretrained", str(err)) from None


def _search(args, backend, model, prep, executor, weights, resume, started) -> int:
    from tqdm import tqdm

    from policy_search.layers import PolicyLogits, Searcher

    logits = PolicyLogits(args.n_policies, len(prep.candidates),
                          identity_index(prep.space, args.l_mags), args.policy_lr)
    searcher = Searcher(backend.matcher(model, args), logits, prep.space)
    columns, groups = data.dense_columns(prep.candidates, args.repeat_random_ops,
                                         args.N_repeat_random)
    builder = data.StepBuilder(prep.train, prep.sampler, executor, prep.space,
                               args.train_same_labels, args.EXP_G, args.EXP_gT_factor, columns,
                               groups, args.seed)
    trace = SearchTrace(args.n_policies, len(prep.candidates))
    layer0, step0, elapsed0 = 0, 0, 0.0
    if resume is not None:
        state, layer0, step0, old, meta = resume
        logits.set_state(state)
        trace = old
        elapsed0 = float(meta.get("elapsed_s", 0.0))
        log.info("resumed at layer %d, step %d", layer0 + 1, step0)
    ckpt_path = os.path.join(args.results_dir, CHECKPOINT)
    writer = backend.scalar_writer(os.path.join(args.results_dir, "tensorboard"))
    run_start = time.time()

    def checkpoint(layer, step):
        meta = {"flags": _flags(args), "weights": os.path.abspath(weights),
                "splits": prep.split_sizes(), "elapsed_s": elapsed0 + time.time() - run_start}
        save_checkpoint(ckpt_path, logits.get_state(), layer, step, trace, meta)
        # What python -m augmentation.visualize draws from a results folder, even mid-search.
        atomic_write(os.path.join(args.results_dir, "trace.json"),
                     json.dumps(trace.op_summary(prep.candidates)))
        log.debug("checkpoint at layer %d step %d", layer + 1, step)

    if resume is None:  # from now on the search, not the pretraining, is what --resume continues
        checkpoint(0, 0)
    _remove(os.path.join(args.results_dir, PRETRAIN_CHECKPOINT))
    done_here = 0
    in_flight = None  # (layer, step, policy state before its update) while a step runs
    try:
        for layer in range(layer0, args.n_policies):
            first = step0 if layer == layer0 else 0
            frozen = [logits.probs(j) for j in range(layer)]
            prefetch = data.Prefetcher(builder, layer, first, args.search_bno, frozen)
            bar = tqdm(total=args.search_bno, initial=first,
                       desc=f"layer {layer + 1}/{args.n_policies}")
            try:
                for step in range(first, args.search_bno):
                    t0 = time.time()
                    batch = builder.finish(prefetch.get(step), layer, step, logits.probs(layer))
                    t1 = time.time()
                    in_flight = (layer, step, logits.get_state())
                    out = (searcher.stage1_step(batch) if layer == 0
                           else searcher.stagek_step(layer, batch))
                    t2 = time.time()
                    trace.record(layer, out["cos_sim"], logits.probs(layer), out["importance"])
                    in_flight = None
                    ent = _entropy(logits.probs(layer))
                    gstep = layer * args.search_bno + step
                    writer.scalar("cos_sim", out["cos_sim"], gstep)
                    writer.scalar(f"entropy/layer{layer + 1}", ent, gstep)
                    bar.update(1)
                    bar.set_postfix(cos=f"{out['cos_sim']:.4f}", H=f"{ent:.2f}",
                                    s_step=f"{t2 - t0:.2f}")
                    log.debug("layer %d step %d: cos %.5f entropy %.4f data %.2fs compute %.2fs",
                              layer + 1, step, out["cos_sim"], ent, t1 - t0, t2 - t1)
                    done_here += 1
                    nxt = (layer, step + 1) if step + 1 < args.search_bno else (layer + 1, 0)
                    if (step + 1) % args.checkpoint_every == 0:
                        checkpoint(*nxt)
                    if args.stop_after_steps and done_here >= args.stop_after_steps:
                        checkpoint(*nxt)
                        log.info("stopped after %d steps; continue with --resume", done_here)
                        return 0
            finally:
                prefetch.close()
                bar.close()
            log.info("layer %d done: entropy %.4f, last cos_sim %.5f", layer + 1,
                     _entropy(logits.probs(layer)),
                     trace.cos[layer][-1] if trace.cos[layer] else float("nan"))
    except KeyboardInterrupt:
        # A step cut short may already have applied its Adam update: the logits go back to
        # their state before it, and the checkpoint points at it, so a resume repeats it
        # exactly once. Between steps, the position is what the traces say is done.
        if in_flight is not None:
            checkpoint(*roll_back(in_flight, logits, trace))
        else:
            checkpoint(*_position(trace, args.search_bno))
        log.info("interrupted: checkpoint written; continue with --resume")
        return 130
    except (FloatingPointError, DatasetError) as err:  # an image that does not decode, or
        # gradients that are not finite: the step is undone and the checkpoint kept
        layer, step = roll_back(in_flight, logits, trace) if in_flight else \
            _position(trace, args.search_bno)
        checkpoint(layer, step)
        flag = "--dataset" if isinstance(err, DatasetError) else "--pretrained"
        why = "" if flag == "--dataset" else f" (with the weights {weights})"
        raise UsageError(flag, f"layer {layer + 1} step {step}: {err}{why}; the checkpoint "
                         "holds the policy before this step") from None
    finally:
        writer.close()
    checkpoint(args.n_policies, 0)
    _write_policy(args, prep, logits, trace, weights, elapsed0 + time.time() - run_start,
                  started)
    return 0


def _remove(path: str) -> None:
    if os.path.exists(path):
        os.remove(path)


def _position(trace, steps_per_layer: int) -> tuple[int, int]:
    """(layer, step) of the first step not done, from the records; (layers, 0) when all are
    done."""
    for layer in range(trace.n_layers):
        if trace.steps_done(layer) < steps_per_layer:
            return layer, trace.steps_done(layer)
    return trace.n_layers, 0


def _write_policy(args, prep, logits, trace, weights, search_s, started):
    from augmentation.convert import policy_to_npz
    from augmentation.policy import Policy, save_policy

    probs = logits.all_probs()
    meta = {
        "generator": "DeepAA_search.py", "backend": args.backend,
        "dataset": args.dataset, "model": args.use_model, "seed": args.seed,
        "flags": _flags(args),
        "pretrained_weights": os.path.abspath(weights),
        "wall_time_s": round(time.time() - started, 2),
        "search_time_s": round(search_s, 2),
        "entropy": [round(_entropy(p), 6) for p in probs],
        "cos_sim_trace": [[round(c, 6) for c in t] for t in trace.cos],
        "op_prob_trace": trace.op_summary(prep.candidates),
    }
    policy = Policy(probs=probs, candidates=list(prep.candidates), l_mags=args.l_mags,
                    space=prep.space, meta=meta)
    save_policy(policy, args.out)
    log.info("policy written to %s (entropy per layer: %s)", args.out,
             ", ".join(f"{e:.3f}" for e in meta["entropy"]))
    if args.export_npz:
        npz = os.path.splitext(args.out)[0] + ".npz"
        policy_to_npz(policy, npz)
        log.info("npz export written to %s", npz)
    atomic_write(os.path.join(args.results_dir, "summary.json"), json.dumps(
        {k: meta[k] for k in ("dataset", "model", "seed", "wall_time_s", "search_time_s",
                              "entropy")} | {"policy": os.path.abspath(args.out)}, indent=1))

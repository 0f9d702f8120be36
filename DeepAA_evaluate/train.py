"""Train and evaluate a model with a DeepAA policy or a baseline augmentation (SPEC §0, §3).

    python -m DeepAA_evaluate.train -c confs/wresnet28x10_cifar10_DeepAA_1.yaml \
        --dataroot ./data --save ckpt/DeepAA_cifar10.pth --tag Exp_DeepAA_cifar10

Any config key can be overridden with its dotted name (``--epoch 2 --lr_schedule.warmup.epoch 0
--batch 64``). ``--only-eval`` evaluates the checkpoint at ``--save`` (into ``<stem>_eval.json``);
``--resume`` continues it exactly; ``--overwrite`` starts over, deleting the old ``<stem>.json``
and ``<stem>_eval.json`` as the new run starts, and cannot be combined with the other two. An
existing ``--save`` file is never resumed silently: without one of those flags the run stops
(the released trainer resumed without saying so).

Runs on the CPU when there is no GPU, and on N GPUs or nodes under ``torchrun`` (DDP; gloo on
CPUs). The global step of the released run (``batch`` x ``gpus`` images, or ``batch`` images x
``gpus`` copies with ``all_workers_use_the_same_batches``) is the same on any number of
processes; see ``data.py`` and ``engine.py``.

Outputs: tqdm progress, TensorBoard logs under ``logs/<tag>/`` (a JSON-lines file there when
TensorBoard is missing), the checkpoint at ``--save`` after every epoch, and at the end a JSON
beside it (same stem) with top-1/top-5 train and test, per-epoch history, config and wall time.
Every output is checked writable before the work starts. Python API: :func:`main` takes the
argument list and returns that results dict.

Failures end with one line on stderr: bad input before anything is written (exit code 2);
later, an image that does not decode, a loss that is no longer finite or a disk that fills up
(exit code 2), or Ctrl-C (exit code 130), the checkpoint of the last finished epoch kept for
``--resume``. Ctrl-C works also in a trainer started in the background, where the shell
ignores SIGINT.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time

import torch
import torch.distributed as dist

from augmentation.files import InUse, Unwritable, check_writable, exclusive
from DeepAA_evaluate import data as D
from DeepAA_evaluate.checkpoint import (CheckpointError, load_checkpoint, save_checkpoint,
                                        set_rng_state)
from DeepAA_evaluate.config import (RESUME_FREE_KEYS, ConfigError, build_parser, config_diff,
                                    load_config, parse_overrides)
from DeepAA_evaluate.engine import Normalizer, Runtime, evaluate, train_epoch
from DeepAA_evaluate.logs import MetricWriter, write_json
from DeepAA_evaluate.schedules import build_optimizer, build_scheduler
from networks.torch_models import get_model


def parse_args(argv):
    args, rest = build_parser().parse_known_args(argv)
    cfg = load_config(args.config, parse_overrides(rest))
    if args.overwrite and (args.resume or args.only_eval):
        raise ConfigError("--overwrite excludes --resume and --only-eval")
    if (args.resume or args.only_eval) and not args.save:
        raise ConfigError("--resume and --only-eval need --save CHECKPOINT")
    exists = bool(args.save) and os.path.exists(args.save)
    if (args.resume or args.only_eval) and not exists:
        raise ConfigError(f"no checkpoint at {args.save!r} to resume or evaluate")
    if args.save and os.path.isdir(args.save):
        raise ConfigError(f"--save {args.save!r} is a directory")
    if exists and not (args.resume or args.overwrite or args.only_eval):
        raise ConfigError(f"{args.save!r} exists; pass --resume to continue it or --overwrite "
                          "to start over")
    _check_outputs(args)
    return args, cfg


def _check_outputs(args) -> None:
    """Every file and folder the run will write, writable now (not after the first epoch)."""
    stem = os.path.splitext(args.save)[0]
    wanted = [("--save", stem + "_eval.json", False)] if args.only_eval else \
        [("--save", args.save, False)] if args.save else []
    if args.tag and not args.only_eval:
        wanted.append(("--tag", os.path.join("logs", args.tag), True))
    for flag, path, folder in wanted:
        try:
            check_writable(path, folder=folder)
        except Unwritable as exc:
            raise ConfigError(f"{flag}: {exc}") from None


def _dist_env():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _shared_seed(rt: Runtime, seed):
    """The run seed: the config's, or one drawn on rank 0 and shared with all processes."""
    if seed is not None:
        return int(seed)
    t = torch.tensor([int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF])
    if rt.world_size > 1:
        t = t.to(rt.device)
        dist.broadcast(t, 0)
    return int(t.item())


class Experiment:
    """Everything one run needs, built from the config (datasets, loaders, model, optimiser)."""

    def __init__(self, cfg: dict, args, rt: Runtime):
        self.cfg, self.args, self.rt = cfg, args, rt
        self.policy = None
        if cfg["aug"] == "DeepAA":
            from augmentation import DeepAAPolicy

            self.policy = DeepAAPolicy.from_yaml(cfg["deepaa"]["EXP"], mirror=True)
        self.train_set, self.test_set = D.load_splits(cfg, args.dataroot)
        self.kind = D.pipeline_kind(cfg, self.policy)
        self.n_classes = self.train_set.n_classes
        # The global step (see data.py): unique images x copies, split over the processes.
        batch, gpus, world = cfg["batch"], cfg["gpus"], rt.world_size
        same = cfg["all_workers_use_the_same_batches"]
        unique, copies = (batch, gpus) if same else (batch * gpus, 1)
        if (unique * copies) % world:
            raise ConfigError(f"a step of {unique * copies} images (batch x gpus) cannot be split "
                              f"over {world} processes")
        if unique > len(self.train_set):
            raise ConfigError(f"a step needs {unique} distinct images but the training set has "
                              f"{len(self.train_set)}; lower 'batch' or raise 'train_size'")
        share = unique * copies // world
        self.micro = batch if share % batch == 0 else share
        self.unique, self.copies = unique, copies
        self.device_aug = None
        if cfg["aug_backend"] == "tensor":
            self.device_aug = self._device_aug(first_batch=rt.rank * (share // self.micro))
        self.sampler = D.StepSampler(len(self.train_set), unique, copies, cfg["seed"], world,
                                     rt.rank)
        workers = D.default_workers() if cfg["num_workers"] is None else cfg["num_workers"]
        pin = rt.device.type == "cuda"
        train_data = D.train_dataset(cfg, self.train_set, self.kind, self.policy, self.micro)
        self.train_loader = D.make_loader(train_data, batch_sampler=self.sampler,
                                          num_workers=workers, pin=pin)
        shard = range(rt.rank, len(self.test_set), world)
        self.test_loader = D.make_loader(
            D.TestSet(self.test_set, D.build_test_transform(self.kind), list(shard)),
            batch_size=batch, num_workers=workers, pin=pin)
        mean, std = D.normalization(self.kind)
        self.normalize = Normalizer(mean, std, rt.device, cfg["channels_last"])

        torch.manual_seed(cfg["seed"])
        self.net = get_model(cfg["model"]["type"], self.n_classes, cfg["model"]["dropout"])
        self.net.to(rt.device)
        if cfg["channels_last"]:
            self.net.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(self.net, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, len(self.sampler))
        self.scaler = torch.amp.GradScaler(rt.device.type, enabled=cfg["amp"] == "fp16")

    def _device_aug(self, first_batch: int):
        if self.kind == "imagenet":
            raise ConfigError("aug_backend 'tensor' supports CIFAR-like datasets only")
        try:
            return D.DeviceAugment(self.policy.policy, self.cfg["seed"], self.micro, first_batch)
        except ImportError as exc:
            raise ConfigError(f"aug_backend 'tensor' needs augmentation.batched ({exc})") from None

    def model_for_training(self):
        model = self.net
        if self.rt.world_size > 1:
            ids = [self.rt.device.index] if self.rt.device.type == "cuda" else None
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if self.cfg["compile"]:
            model = torch.compile(model)
        return model

    def load(self, ckpt: dict, full: bool) -> None:
        try:
            self.net.load_state_dict(ckpt["model"])
        except RuntimeError:
            raise CheckpointError(f"the checkpoint's weights do not fit model "
                                  f"{self.cfg['model']['type']} with {self.n_classes} classes") from None
        if not full:
            return
        for name, restore in (("optimizer", self.optimizer.load_state_dict),
                              ("scheduler", self.scheduler.load_state_dict),
                              ("scaler", self.scaler.load_state_dict), ("rng", set_rng_state)):
            try:
                restore(ckpt[name])
            except Exception as exc:  # a state of another shape or type fails in many ways
                raise CheckpointError(f"the checkpoint's {name} state does not fit this run "
                                      f"({type(exc).__name__})") from None


def _resume_config(cfg: dict, ckpt: dict) -> dict:
    saved = ckpt.get("config") or {}
    if cfg["seed"] is None:
        cfg = {**cfg, "seed": saved.get("seed")}
    changed = [k for k in config_diff(saved, cfg) if k.split(".")[0] not in RESUME_FREE_KEYS]
    if changed:
        raise ConfigError(f"cannot resume: config differs from the checkpoint's in {', '.join(changed)}")
    return cfg


def evaluates_at(epoch: int, cfg: dict) -> bool:
    """Test accuracy is computed every ``test_interval`` epochs, in the last 5 epochs and at
    an early finish (SPEC §3; the last one is the reported result)."""
    stop = cfg["early_finish_epoch"]
    return (epoch % cfg["test_interval"] == 0 or epoch > cfg["epoch"] - 5
            or (stop is not None and epoch >= stop))


def _results(cfg, history, last_test, exp, wall, finished) -> dict:
    train = history[-1]["train"] if history else {}
    return {
        "top1_test": last_test.get("top1"), "top5_test": last_test.get("top5"),
        "loss_test": last_test.get("loss"),
        "top1_train": train.get("top1"), "top5_train": train.get("top5"),
        "loss_train": train.get("loss"),
        "epoch": history[-1]["epoch"] if history else 0, "finished": finished,
        "history": history, "config": cfg, "wall_time_s": wall,
        "world_size": exp.rt.world_size, "device": str(exp.rt.device),
        "n_train": len(exp.train_set), "n_test": len(exp.test_set),
        "steps_per_epoch": len(exp.sampler),
        "global_batch": {"unique_images": exp.unique, "copies": exp.copies,
                         "per_process": exp.unique * exp.copies // exp.rt.world_size,
                         "virtual_worker_batch": exp.micro},
    }


def run(cfg: dict, args, rt: Runtime) -> dict:
    t_start = time.time()
    ckpt = load_checkpoint(args.save, full=args.resume) if (args.resume or args.only_eval) \
        else None
    if ckpt is not None and args.resume:
        cfg = _resume_config(cfg, ckpt)
    cfg = {**cfg, "seed": _shared_seed(rt, cfg["seed"])}
    exp = Experiment(cfg, args, rt)
    stem = os.path.splitext(args.save)[0] if args.save else ""
    if args.overwrite and stem and rt.is_main:
        # Starting over: the previous run's results must not outlive it beside the new
        # checkpoint (a crash of the new run would leave them looking current).
        for old in (stem + ".json", stem + "_eval.json"):
            if os.path.isfile(old):
                os.remove(old)

    if args.only_eval:
        exp.load(ckpt, full=False)
        model = exp.model_for_training()
        test = evaluate(rt, model, exp.test_loader, exp.normalize, "test")
        clean_train = D.make_loader(D.TestSet(exp.train_set, D.build_test_transform(exp.kind),
                                              list(range(rt.rank, len(exp.train_set), rt.world_size))),
                                    batch_size=cfg["batch"])
        train = evaluate(rt, model, clean_train, exp.normalize, "train")
        result = {"top1_test": test["top1"], "top5_test": test["top5"], "loss_test": test["loss"],
                  "top1_train": train["top1"], "top5_train": train["top5"],
                  "loss_train": train["loss"], "epoch": ckpt["epoch"], "config": cfg,
                  "wall_time_s": time.time() - t_start}
        if rt.is_main:
            write_json(stem + "_eval.json", result)
            print(json.dumps({k: v for k, v in result.items() if k != "config"}), flush=True)
        return result

    history, last_test, start, wall_before = [], {}, 1, 0.0
    if ckpt is not None:
        exp.load(ckpt, full=True)
        history, start = list(ckpt["history"]), int(ckpt["epoch"]) + 1
        last_test = dict((ckpt.get("result") or {}).get("test") or {})
        wall_before = float((ckpt.get("result") or {}).get("wall_time_s") or 0.0)
    model = exp.model_for_training()
    writer = MetricWriter(args.tag, rt.is_main)
    epochs, stop = cfg["epoch"], cfg["early_finish_epoch"]
    try:
        for epoch in range(start, epochs + 1):
            t0 = time.time()
            exp.sampler.set_epoch(epoch)
            lr = exp.optimizer.param_groups[1]["lr"]
            train = train_epoch(rt, model, exp.train_loader, exp.optimizer, exp.scheduler,
                                exp.scaler, exp.normalize, cfg, epoch, exp.micro, exp.device_aug)
            entry = {"epoch": epoch, "lr_start": lr, "train": train}
            if evaluates_at(epoch, cfg):
                last_test = evaluate(rt, model, exp.test_loader, exp.normalize)
                entry["test"] = last_test
            entry["time_s"] = time.time() - t0
            history.append(entry)
            writer.epoch(entry)
            if rt.is_main:
                test_txt = f" test top1 {last_test['top1']:.4f}" if "test" in entry else ""
                print(f"epoch {epoch}/{epochs} train loss {train['loss']:.4f} top1 "
                      f"{train['top1']:.4f} lr {lr:.5g}{test_txt} ({entry['time_s']:.1f}s)",
                      file=sys.stderr, flush=True)
            if args.save and cfg["save_model"] and rt.is_main:
                save_checkpoint(args.save, model=exp.net, optimizer=exp.optimizer,
                                scheduler=exp.scheduler, scaler=exp.scaler, epoch=epoch,
                                config=cfg, history=history,
                                result={"test": last_test,
                                        "wall_time_s": wall_before + time.time() - t_start})
            if stop is not None and epoch >= stop:
                break
    except BaseException:
        writer.discard()
        raise
    writer.close()
    result = _results(cfg, history, last_test, exp,
                      wall_before + time.time() - t_start,
                      bool(history) and history[-1]["epoch"] == epochs)
    if rt.is_main and args.save:
        write_json(stem + ".json", result)
    return result


def main(argv: list[str] | None = None) -> dict:
    """Run the trainer with command-line arguments ``argv``; returns the results dict.

    Bad arguments, configs, datasets or policies print one line on stderr and raise
    ``SystemExit(2)`` before anything is written; Ctrl-C prints one line and raises
    ``SystemExit(130)`` (see the module docstring for failures found later).
    """
    if threading.current_thread() is threading.main_thread():
        # A job started in the background by a shell inherits SIGINT ignored; Ctrl-C (or
        # kill -INT) must still stop it as it stops the search.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    rank, world, local = _dist_env()
    try:
        args, cfg = parse_args(sys.argv[1:] if argv is None else list(argv))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    # One trainer at a time per checkpoint (the main process holds the lock): a second run
    # on the same --save, say a --resume started twice, would overwrite the first one's epochs.
    writes = bool(args.save) and not args.only_eval and rank == 0
    try:
        with exclusive(args.save + ".lock", args.save) if writes else contextlib.nullcontext():
            return _run_in_group(cfg, args, rank, world, local)
    except InUse as exc:
        print(f"error: --save: {exc}, another run", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        kept = f"; {args.save} holds the last finished epoch: continue with --resume" \
            if args.save and os.path.exists(args.save) and not args.only_eval else ""
        print(f"interrupted{kept}", file=sys.stderr)
        raise SystemExit(130) from None
    except OSError as exc:  # a full disk: the last checkpoint stays, whole
        where = f" {exc.filename}" if exc.filename else ""
        print(f"error: cannot read or write{where}: {exc.strerror or one_line(exc)}",
              file=sys.stderr)
        raise SystemExit(2) from None


def _run_in_group(cfg, args, rank, world, local) -> dict:
    """main's work inside the process group (when there are several processes)."""
    from augmentation import PolicyError
    from deepaa_data import DatasetError

    rt = Runtime(cfg, rank, world, local)  # picks this process's GPU before NCCL starts
    started = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        started = True
    try:
        result = run(cfg, args, rt)
        if started:
            # Every rank finishes (rank 0 writes the results last) before any tears the group
            # down: a rank that left while its peer still held the connection could abort
            # in gloo's teardown at exit.
            dist.barrier()
        return result
    except (ConfigError, PolicyError, DatasetError, CheckpointError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    except FloatingPointError as exc:
        print(f"error: config key 'lr': training diverged ({exc}); the checkpoint keeps the "
              "last finished epoch", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        if started:
            dist.destroy_process_group()


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line. An error raised in a DataLoader worker comes back
    with the worker's traceback in its message; its last line is the original message."""
    text = str(exc)
    if "Original Traceback" in text:
        text = text.strip().splitlines()[-1]
        text = text.split(": ", 1)[1] if ": " in text else text  # "module.Error: message"
    return " ".join(text.split()) or type(exc).__name__


def cli() -> int:
    """The ``deepaa-train`` command: :func:`main` on the process's arguments, exit status 0
    (main returns the results dict, which is no exit status)."""
    main()
    return 0


if __name__ == "__main__":
    main()

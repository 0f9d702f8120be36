"""Throughput of a training epoch with the DeepAA policy, against the same epoch on images
that need no augmentation (``aug: none``: the loader only turns stored images into tensors, as
for pre-augmented data), and of the training loader alone. It trains on the device the trainer
picks (a GPU where there is one).

    python benchmarks/train_epoch.py [--dataset npz:DIR] [--n 512] [--model wresnet10_1]
        [--batch 64] [--workers 1] [--threads 0] [--backends pil,batch,tensor,tensor_inline]
        [--epochs 1] [--amp bf16] [--channels_last] [--deterministic] [--loader_sizes 32,224]

Without ``--dataset`` it generates ``--n`` random 32x32 images. Prints images/s of each and
the ratio epoch(policy) / epoch(no augmentation) in time (goal: <= 1.1, i.e. the policy
hidden behind the model's compute) for each placement of the policy asked for: ``pil``
(Pillow per image in the loader workers), ``batch`` (``aug_backend: batch``, the batched
path's C kernels per batch in the loader workers) and ``tensor`` (``aug_backend: tensor``,
per batch on the training device; on a GPU the next batch's policy is prepared by a helper
thread on a side stream while a step trains, and ``tensor_inline`` times it without that
helper, ``DEEPAA_AUG_AHEAD=0``). With ``--epochs`` above 1 the rate is the last epoch's, so
start-up (cuDNN autotuning, the first allocations) is left out.

The loader alone is measured per worker: the training loader of each CPU placement run in
this process (no worker processes) on one torch thread, images per second of this process's
CPU time, i.e. what one loader worker delivers on one core, side by side for ``pil`` and
``batch`` at each of ``--loader_sizes`` (32: ``cifar_1`` on 32x32 images; 224: ``imagenet_1``
on 224x224 images, centre-cropped to 224 as the trainer does), in batches of
``--loader_batch`` (128, the released CIFAR configs' batch); goal: batch >= 20x pil at 32,
>= 10x at 224.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from DeepAA_evaluate import data as D  # noqa: E402
from DeepAA_evaluate.config import validate  # noqa: E402
from DeepAA_evaluate.train import main  # noqa: E402


def _dataset(tmp: str, n: int, size: int = 32) -> str:
    rng = np.random.default_rng(0)
    y = np.arange(n) % 10
    np.savez(os.path.join(tmp, "train_00.npz"),
             x=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), y=y)
    np.savez(os.path.join(tmp, "test_00.npz"),
             x=rng.integers(0, 256, (16, size, size, 3), dtype=np.uint8), y=y[:16])
    return f"npz:{tmp}"


def _config(args, dataset: str, aug: str, backend: str = "pil") -> dict:
    return {"model": {"type": args.model}, "dataset": dataset, "aug": aug,
            "deepaa": {"EXP": args.policy}, "batch": args.batch, "epoch": args.epochs,
            "lr": 0.05, "optimizer": {"type": "sgd", "nesterov": True, "decay": 5e-4},
            "seed": 0, "num_workers": args.workers, "train_size": args.n,
            "aug_backend": backend, "amp": args.amp, "channels_last": args.channels_last,
            "deterministic": args.deterministic,
            "test_interval": 10 ** 6, "save_model": False}


def loader_rate(cfg: dict, repeats: int = 5, min_time: float = 0.5) -> float:
    """Images per CPU second of the training loader alone (policy + tensor conversion) in
    this process, on one torch thread: what one loader worker delivers per core. Each
    measurement runs whole epochs for at least ``min_time`` CPU seconds; the best of
    ``repeats`` is kept (other jobs on a shared machine only ever slow one down)."""
    from augmentation import DeepAAPolicy

    cfg = validate(dict(cfg, num_workers=0))
    train, _ = D.load_splits(cfg, ".")
    policy = DeepAAPolicy.from_yaml(cfg["deepaa"]["EXP"])
    kind = D.pipeline_kind(cfg, policy)
    data = D.train_dataset(cfg, train, kind, policy, micro=cfg["batch"])
    sampler = D.StepSampler(len(train), cfg["batch"], 1, 0)
    loader = D.make_loader(data, batch_sampler=sampler, num_workers=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for x, _ in loader:  # warm-up: caches, the C kernels' build
            pass
        best = 0.0
        for _ in range(repeats):
            t0, n = time.process_time(), 0
            while n == 0 or time.process_time() - t0 < min_time:
                for x, _ in loader:
                    n += len(x)
            best = max(best, n / (time.process_time() - t0))
    finally:
        torch.set_num_threads(threads)
    return best


def loader_rates(args, tmp: str) -> dict:
    """{size: {backend: images/s}} of the loader alone for pil and batch, side by side."""
    out = {}
    for size in args.loader_sizes:
        n, policy = (args.n, "cifar_1") if size == 32 else (args.n_224, "imagenet_1")
        folder = os.path.join(tmp, f"loader{size}")
        os.makedirs(folder, exist_ok=True)
        dataset = _dataset(folder, n, size)
        base = dict(_config(args, dataset, "DeepAA"), deepaa={"EXP": policy},
                    batch=min(args.loader_batch, n))
        out[size] = {backend: loader_rate(dict(base, aug_backend=backend))
                     for backend in ("pil", "batch")}
    return out


def epoch_rate(cfg: dict, tmp: str, ahead: bool = True) -> float:
    path = os.path.join(tmp, f"{cfg['aug']}_{cfg['aug_backend']}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    saved = os.environ.get("DEEPAA_AUG_AHEAD")
    os.environ["DEEPAA_AUG_AHEAD"] = "1" if ahead else "0"
    try:
        res = main(["-c", path])
    finally:
        if saved is None:
            del os.environ["DEEPAA_AUG_AHEAD"]
        else:
            os.environ["DEEPAA_AUG_AHEAD"] = saved
    return res["history"][-1]["train"]["images_per_s"]


def run(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default=None)
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--n_224", type=int, default=128, help="images of the 224x224 loader run")
    p.add_argument("--model", default="wresnet10_1")
    p.add_argument("--policy", default="cifar_1")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--backends", default="pil,batch",
                   help="comma-separated placements of the policy to time: pil, batch, tensor, "
                        "tensor_inline")
    p.add_argument("--epochs", type=int, default=1, help="epochs per run; the last is timed")
    p.add_argument("--amp", choices=("bf16", "fp16"), default=None)
    p.add_argument("--channels_last", action="store_true")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic GPU kernels (the trainer's deterministic: true)")
    p.add_argument("--loader_batch", type=int, default=128,
                   help="batch of the loader-alone comparison (the released CIFAR configs')")
    p.add_argument("--loader_sizes", default="32,224",
                   help="image sizes of the loader-alone comparison (32, 224; empty: none)")
    args = p.parse_args(argv)
    backends = args.backends.split(",") if args.backends else []
    if not set(backends) <= {"pil", "batch", "tensor", "tensor_inline"}:
        p.error(f"--backends must name pil, batch, tensor and/or tensor_inline, got "
                f"{args.backends!r}")
    try:
        args.loader_sizes = [int(v) for v in args.loader_sizes.split(",") if v]
    except ValueError:
        args.loader_sizes = None
    if args.loader_sizes is None or not set(args.loader_sizes) <= {32, 224}:
        p.error("--loader_sizes must name 32 and/or 224")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        out["loader_per_worker"] = loader_rates(args, tmp)
        dataset = args.dataset or _dataset(tmp, args.n)
        if backends:
            # Warm-up run so both timed epochs start with the same caches.
            epoch_rate(dict(_config(args, dataset, "none"), train_size=2 * args.batch), tmp)
            out["epoch_none"] = epoch_rate(_config(args, dataset, "none"), tmp)
        for backend in backends:
            out[f"epoch_policy_{backend}"] = epoch_rate(
                _config(args, dataset, "DeepAA", backend.split("_")[0]), tmp,
                ahead=backend != "tensor_inline")
    device = (torch.cuda.get_device_name() if torch.cuda.is_available()
              else f"CPU, {torch.get_num_threads()} torch threads")
    print(f"device: {device}; {os.cpu_count()} CPU cores; {args.workers} loader worker(s), "
          f"{args.model}, batch {args.batch}, {args.n} images 32x32, amp {args.amp}, "
          f"channels_last {args.channels_last}, deterministic {args.deterministic}, "
          f"epoch {args.epochs} of {args.epochs} timed")
    for size, rates in out["loader_per_worker"].items():
        ratio = rates["batch"] / rates["pil"]
        print(f"loader alone per worker, {size}x{size}, batch {args.loader_batch}: "
              f"Pillow {rates['pil']:9.1f} images/s, "
              f"batch {rates['batch']:9.1f} images/s, {ratio:.1f}x "
              f"(goal >= {20 if size == 32 else 10}x)")
        rates["ratio"] = ratio
    if backends:
        print(f"epoch, no augmentation                   : {out['epoch_none']:9.1f} images/s")
    for backend in backends:
        rate = out[f"epoch_policy_{backend}"]
        out[f"time_ratio_{backend}_over_none"] = out["epoch_none"] / rate
        label = f"epoch, DeepAA policy ({backend})".ljust(41)
        print(f"{label}: {rate:9.1f} images/s, time "
              f"ratio over none {out[f'time_ratio_{backend}_over_none']:.3f} (goal <= 1.1)")
    return out


if __name__ == "__main__":
    run()

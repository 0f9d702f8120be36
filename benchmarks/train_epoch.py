"""Throughput of a training epoch with the DeepAA policy, against the same epoch on images
that need no augmentation (``aug: none``: the loader only turns stored images into tensors, as
for pre-augmented data), and of the data loader alone. It trains on the device the trainer
picks (a GPU where there is one).

    python benchmarks/train_epoch.py [--dataset npz:DIR] [--n 512] [--model wresnet10_1]
        [--batch 64] [--workers 1] [--threads 0] [--backends pil,tensor] [--epochs 1]
        [--amp bf16] [--channels_last] [--deterministic]

Without ``--dataset`` it generates ``--n`` random 32x32 images. Prints images/s of each and
the ratio epoch(policy) / epoch(no augmentation) in time (goal: <= 1.1, i.e. the policy
hidden behind the model's compute) for each augmentation backend asked for: ``pil`` (Pillow
in the loader workers) and ``tensor`` (``aug_backend: tensor``, the policy applied to uint8
batches on the training device). With ``--epochs`` above 1 the rate is the last epoch's, so
start-up (cuDNN autotuning, the first allocations) is left out.
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


def _dataset(tmp: str, n: int) -> str:
    rng = np.random.default_rng(0)
    y = np.arange(n) % 10
    np.savez(os.path.join(tmp, "train_00.npz"),
             x=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), y=y)
    np.savez(os.path.join(tmp, "test_00.npz"),
             x=rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8), y=y[:16])
    return f"npz:{tmp}"


def _config(args, dataset: str, aug: str, backend: str = "pil") -> dict:
    return {"model": {"type": args.model}, "dataset": dataset, "aug": aug,
            "deepaa": {"EXP": args.policy}, "batch": args.batch, "epoch": args.epochs,
            "lr": 0.05, "optimizer": {"type": "sgd", "nesterov": True, "decay": 5e-4},
            "seed": 0, "num_workers": args.workers, "train_size": args.n,
            "aug_backend": backend, "amp": args.amp, "channels_last": args.channels_last,
            "deterministic": args.deterministic,
            "test_interval": 10 ** 6, "save_model": False}


def loader_rate(cfg: dict) -> float:
    """Images/s of the training loader alone (policy + tensor conversion), one epoch."""
    from augmentation import DeepAAPolicy

    cfg = validate(cfg)
    train, _ = D.load_splits(cfg, ".")
    policy = DeepAAPolicy.from_yaml(cfg["deepaa"]["EXP"])
    sampler = D.StepSampler(len(train), cfg["batch"], 1, 0)
    loader = D.make_loader(D.TrainSet(train, D.build_train_transform(cfg, "cifar", policy)),
                           batch_sampler=sampler, num_workers=cfg["num_workers"])
    t0, n = time.perf_counter(), 0
    for x, _ in loader:
        n += len(x)
    return n / (time.perf_counter() - t0)


def epoch_rate(cfg: dict, tmp: str) -> float:
    path = os.path.join(tmp, f"{cfg['aug']}_{cfg['aug_backend']}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    res = main(["-c", path])
    return res["history"][-1]["train"]["images_per_s"]


def run(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default=None)
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--model", default="wresnet10_1")
    p.add_argument("--policy", default="cifar_1")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--backends", default="pil",
                   help="comma-separated augmentation backends to time: pil, tensor")
    p.add_argument("--epochs", type=int, default=1, help="epochs per run; the last is timed")
    p.add_argument("--amp", choices=("bf16", "fp16"), default=None)
    p.add_argument("--channels_last", action="store_true")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic GPU kernels (the trainer's deterministic: true)")
    args = p.parse_args(argv)
    backends = args.backends.split(",")
    if not set(backends) <= {"pil", "tensor"} or not backends:
        p.error(f"--backends must name pil and/or tensor, got {args.backends!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        dataset = args.dataset or _dataset(tmp, args.n)
        out = {"loader_policy": loader_rate(_config(args, dataset, "DeepAA"))}
        # Warm-up run so both timed epochs start with the same caches.
        epoch_rate(dict(_config(args, dataset, "none"), train_size=2 * args.batch), tmp)
        out["epoch_none"] = epoch_rate(_config(args, dataset, "none"), tmp)
        for backend in backends:
            out[f"epoch_policy_{backend}"] = epoch_rate(
                _config(args, dataset, "DeepAA", backend), tmp)
    device = (torch.cuda.get_device_name() if torch.cuda.is_available()
              else f"CPU, {torch.get_num_threads()} torch threads")
    print(f"device: {device}; {args.workers} loader worker(s), {args.model}, batch "
          f"{args.batch}, {args.n} images 32x32, amp {args.amp}, channels_last "
          f"{args.channels_last}, deterministic {args.deterministic}, epoch {args.epochs} "
          f"of {args.epochs} timed")
    print(f"data loader alone (DeepAA policy, Pillow): {out['loader_policy']:9.1f} images/s")
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

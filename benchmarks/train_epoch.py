"""Throughput of one CPU training epoch with the DeepAA policy, against the same epoch on images
that need no augmentation (``aug: none``: the loader only turns stored images into tensors, as
for pre-augmented data), and of the data loader alone.

    python benchmarks/train_epoch.py [--dataset npz:DIR] [--n 512] [--model wresnet10_1]
        [--batch 64] [--workers 1] [--threads 0]

Without ``--dataset`` it generates ``--n`` random 32x32 images. Prints images/s of each and
the ratio epoch(policy) / epoch(no augmentation) in time (goal: <= 1.1, i.e. the policy
hidden behind the model's compute by the loader workers).
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


def _config(args, dataset: str, aug: str) -> dict:
    return {"model": {"type": args.model}, "dataset": dataset, "aug": aug,
            "deepaa": {"EXP": args.policy}, "batch": args.batch, "epoch": 1, "lr": 0.05,
            "optimizer": {"type": "sgd", "nesterov": True, "decay": 5e-4}, "seed": 0,
            "num_workers": args.workers, "train_size": args.n}


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
    path = os.path.join(tmp, f"{cfg['aug']}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    res = main(["-c", path])
    return res["history"][0]["train"]["images_per_s"]


def run(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default=None)
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--model", default="wresnet10_1")
    p.add_argument("--policy", default="cifar_1")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        dataset = args.dataset or _dataset(tmp, args.n)
        out = {"loader_policy": loader_rate(_config(args, dataset, "DeepAA"))}
        # Warm-up run so both timed epochs start with the same caches.
        epoch_rate(dict(_config(args, dataset, "none"), train_size=2 * args.batch), tmp)
        out["epoch_none"] = epoch_rate(_config(args, dataset, "none"), tmp)
        out["epoch_policy"] = epoch_rate(_config(args, dataset, "DeepAA"), tmp)
    out["time_ratio_policy_over_none"] = out["epoch_none"] / out["epoch_policy"]
    print(f"device: CPU, {torch.get_num_threads()} torch threads, {args.workers} loader "
          f"worker(s), {args.model}, batch {args.batch}, {args.n} images 32x32")
    print(f"data loader alone (DeepAA policy): {out['loader_policy']:8.1f} images/s")
    print(f"epoch, no augmentation           : {out['epoch_none']:8.1f} images/s")
    print(f"epoch, DeepAA policy             : {out['epoch_policy']:8.1f} images/s")
    print(f"time ratio policy / none         : {out['time_ratio_policy_over_none']:8.3f} "
          "(goal <= 1.1)")
    return out


if __name__ == "__main__":
    run()

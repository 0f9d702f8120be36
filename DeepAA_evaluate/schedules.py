"""Optimiser and learning-rate schedules of the trainer (SPEC §3).

The schedule is a function of the fractional epoch t = (iterations done) / (iterations per epoch),
evaluated before every iteration, as the released trainer did by stepping its scheduler with
``epoch - 1 + step / steps`` after each iteration:

- warm-up, t < w (``lr_schedule.warmup.epoch``): multiplier m = 1 ramps linearly from 0 to lr,
  m > 1 from lr to m * lr (the "gradual warm-up" scheduler the released code used);
- then, with peak = m * lr and s = t - w:
  ``cosine``: peak * (1 + cos(pi * s / (E - w))) / 2, reaching 0 at the last epoch E;
  ``resnet``: peak * 0.1 ** (number of milestones <= s), milestones at E/3, 2E/3 and 8E/9
  (= 30/60/80 of 90, 60/120/160 of 180, 90/180/240 of 270, the released table; other epoch
  counts keep the same fractions); as in the released code the milestones count from the end
  of the warm-up;
  ``constant``: peak.

It is run by PyTorch's own ``LambdaLR`` stepped once per iteration, so its state (the
iteration count) is saved and restored with the checkpoint.
"""
from __future__ import annotations

import bisect
import math

import torch

from networks.torch_models import batchnorm_parameters


def resnet_milestones(epochs: int) -> list[int]:
    return [round(epochs / 3), round(2 * epochs / 3), round(8 * epochs / 9)]


def lr_factor(t: float, kind: str, epochs: int, warmup_epochs: int = 0,
              multiplier: float = 1.0) -> float:
    """Learning rate / base lr at fractional epoch ``t`` (see the module docstring)."""
    w, m = warmup_epochs, multiplier
    if w > 0 and t < w:
        return t / w if m == 1.0 else (m - 1.0) * t / w + 1.0
    s = t - w
    if kind == "cosine":
        return m * (1.0 + math.cos(math.pi * min(s, epochs - w) / (epochs - w))) / 2.0
    if kind == "resnet":
        return m * 0.1 ** bisect.bisect_right(resnet_milestones(epochs), s)
    if kind == "constant":
        return m
    raise ValueError(f"unknown lr schedule {kind!r}")


class EpochSchedule:
    """Picklable ``lr_lambda`` for ``LambdaLR``: iteration count -> factor of the base lr."""

    def __init__(self, kind: str, epochs: int, steps_per_epoch: int, warmup_epochs: int = 0,
                 multiplier: float = 1.0):
        self.kind, self.epochs, self.steps_per_epoch = kind, epochs, steps_per_epoch
        self.warmup_epochs, self.multiplier = warmup_epochs, multiplier

    def __call__(self, step: int) -> float:
        return lr_factor(step / self.steps_per_epoch, self.kind, self.epochs,
                         self.warmup_epochs, self.multiplier)


def build_optimizer(model: torch.nn.Module, cfg: dict) -> torch.optim.SGD:
    """SGD with Nesterov momentum; weight decay on every parameter except batch-norm ones."""
    bn = batchnorm_parameters(model)
    bn_ids = {id(p) for p in bn}
    other = [p for p in model.parameters() if id(p) not in bn_ids]
    opt = cfg["optimizer"]
    return torch.optim.SGD(
        [{"params": bn, "weight_decay": 0.0}, {"params": other}],
        lr=cfg["lr"], momentum=opt["momentum"], weight_decay=opt["decay"],
        nesterov=opt["nesterov"],
    )


def build_scheduler(optimizer, cfg: dict, steps_per_epoch: int):
    sched = cfg["lr_schedule"]
    fn = EpochSchedule(sched["type"], cfg["epoch"], steps_per_epoch,
                       sched["warmup"]["epoch"], sched["warmup"]["multiplier"])
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [fn, fn])

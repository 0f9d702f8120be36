"""Learning-rate schedules against their closed forms, and the optimiser's parameter groups."""
import math

import pytest
import torch

from DeepAA_evaluate.schedules import build_optimizer, build_scheduler, lr_factor
from networks.torch_models import get_model


def _cfg(kind, epochs, warm, mult, lr=0.1, clip=5.0):
    return {"lr": lr, "epoch": epochs,
            "lr_schedule": {"type": kind, "warmup": {"epoch": warm, "multiplier": mult}},
            "optimizer": {"momentum": 0.9, "decay": 5e-4, "nesterov": True, "clip": clip}}


@pytest.mark.parametrize("t, expected", [
    (0.0, 0.0), (2.5, 0.05), (5.0, 0.1),                        # warm-up from 0 (multiplier 1)
    (5.0 + 97.5, 0.05),                                          # half-way through the cosine
    (5.0 + 195 / 4, 0.1 * (1 + math.cos(math.pi / 4)) / 2),
    (200.0, 0.0),
])
def test_cosine_with_warmup_closed_form(t, expected):
    assert lr_factor(t, "cosine", 200, 5, 1.0) * 0.1 == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("epochs, milestones", [(90, (30, 60, 80)), (180, (60, 120, 160)),
                                                (270, (90, 180, 240))])
def test_resnet_schedule_steps_after_warmup(epochs, milestones):
    base, m, w = 0.1, 8.0, 5
    assert lr_factor(0.0, "resnet", epochs, w, m) * base == pytest.approx(base)
    assert lr_factor(2.5, "resnet", epochs, w, m) * base == pytest.approx(base * (1 + 7 * 0.5))
    assert lr_factor(w, "resnet", epochs, w, m) * base == pytest.approx(0.8)
    for k, ms in enumerate(milestones, start=1):
        # The released scheduler counts milestones from the end of the warm-up.
        assert lr_factor(w + ms - 1e-6, "resnet", epochs, w, m) * base == pytest.approx(0.8 * 0.1 ** (k - 1))
        assert lr_factor(w + ms, "resnet", epochs, w, m) * base == pytest.approx(0.8 * 0.1 ** k)


def test_scheduler_steps_every_iteration():
    model = torch.nn.Linear(2, 2)
    cfg = _cfg("cosine", 4, 1, 1.0)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch=10)
    seen = []
    for _ in range(40):
        seen.append(opt.param_groups[1]["lr"])
        opt.step()
        sched.step()
    for k, lr in enumerate(seen):
        t = k / 10
        want = 0.1 * t if t < 1 else 0.05 * (1 + math.cos(math.pi * (t - 1) / 3))
        assert lr == pytest.approx(want, abs=1e-12)
    assert opt.param_groups[0]["lr"] == opt.param_groups[1]["lr"]


def test_batchnorm_parameters_have_no_weight_decay():
    model = get_model("wresnet10_1", 10)
    opt = build_optimizer(model, _cfg("cosine", 10, 0, 1.0))
    bn_group, other = opt.param_groups
    bn_ids = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)
              for p in m.parameters()}
    assert {id(p) for p in bn_group["params"]} == bn_ids and bn_group["weight_decay"] == 0.0
    assert other["weight_decay"] == 5e-4 and not bn_ids & {id(p) for p in other["params"]}
    assert len(bn_group["params"]) + len(other["params"]) == len(list(model.parameters()))
    assert other["nesterov"] and other["momentum"] == 0.9

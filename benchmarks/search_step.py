"""Time split of stage-2 search steps (SPEC §2): data and augmentation, gradients, JVPs, other.

    python benchmarks/search_step.py                 # the cpu preset and a scaled WRN-40-2
    python benchmarks/search_step.py --config cpu --steps 6 --use_pool

For each configuration, on random data and an untrained model (the cost does not depend on the
weights):

* ``data``: building one step's batch alone (prefetchable part + the layer-k finish);
* ``val grad`` / ``train grad`` / ``JVP``: the three model passes, timed one by one through
  ``GradientMatcher`` on the same batch;
* ``compute``: ``Searcher.stagek_step`` on a ready batch (the fused model work per step);
* ``wall``: the real loop (prefetch thread + finish + step) per step.

The goal is wall <= 1.15 x compute: augmentation hidden behind the model.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

CONFIGS = {
    # The cpu preset's sizes (policy_search/config.py).
    "cpu": dict(model="WRN_10_1", points=2, exp_g=2, factor=1, n_val=16, chunk=128),
    # WRN-40-2 with EXP_G / EXP_gT_factor / train_same_labels scaled down to fit a CPU.
    "wrn40": dict(model="WRN_40_2", points=2, exp_g=1, factor=1, n_val=64, chunk=256),
}


def _timed(fn, *a):
    t = time.perf_counter()
    out = fn(*a)
    return out, time.perf_counter() - t


def bench(name, cfg, steps, l_mags, use_pool, backend):
    import tensorflow as tf

    from augmentation.space import candidates, identity_index
    from deepaa_data import ArrayDataset
    from networks.tf_models import build_model
    from policy_search import data, devices
    from policy_search.augment import Augmenter, make_executor
    from policy_search.importance import GradientMatcher
    from policy_search.layers import PolicyLogits, Searcher
    from policy_search.pretrain import freeze_batch_norm

    rng = np.random.default_rng(0)
    ds = ArrayDataset(rng.integers(0, 256, (2000, 32, 32, 3), dtype=np.uint8),
                      np.arange(2000) % 10, [str(i) for i in range(10)])
    cands = candidates("cifar", l_mags)
    splits = data.make_splits(len(ds), 500, seed=0)
    executor = make_executor(Augmenter(cands, l_mags, 32), use_pool, backend)
    strategy = devices.make_strategy(0)
    with strategy.scope():
        model = build_model(cfg["model"], 10, (32, 32, 3))
    freeze_batch_norm(model)
    matcher = GradientMatcher(model, strategy, cfg["chunk"])
    logits = PolicyLogits(3, len(cands), identity_index("cifar", l_mags), 0.025, strategy)
    searcher = Searcher(matcher, logits, "cifar")
    cols, groups = data.dense_columns(cands, False, 1)
    builder = data.StepBuilder(ds, data.PointSampler(ds.labels, splits, cfg["n_val"]), executor,
                               "cifar", cfg["points"], cfg["exp_g"], cfg["factor"], cols, groups,
                               seed=0)
    k = 1
    frozen = [logits.probs(0)]
    try:
        batch = builder.finish(builder.part(k, 0, frozen), k, 0, logits.probs(k))
        searcher.stagek_step(k, batch)  # trace once
        t_data, t_val, t_tr, t_jvp, t_step = [], [], [], [], []
        for s in range(steps + 1):  # s = 0 warms up (traces) the separate passes
            part, a = _timed(builder.part, k, s, frozen)
            batch, b = _timed(builder.finish, part, k, s, logits.probs(k))
            t_data.append(a + b)
            p = cfg["points"]
            tv = tt = tj = 0.0
            for i in range(p):  # the batch is uint8; the separate passes take normalised
                val = data.normalize(batch["val"][i], "cifar")
                g_val, dt = _timed(matcher.val_grad, val, batch["val_labels"][i])
                tv += dt
                m = batch["gtr"].shape[1]
                g_tr, dt = _timed(matcher.weighted_grad, data.normalize(batch["gtr"][i], "cifar"),
                                  np.full(m, batch["labels"][i]), np.full(m, 1.0 / m))
                tt += dt
                dense = data.normalize(batch["dense"][i].reshape(-1, 32, 32, 3), "cifar")
                r, dt = _timed(lambda: matcher.importance(
                    dense, np.full(len(dense), batch["labels"][i]), g_val, g_tr).numpy())
                tj += dt
            t_val.append(tv)
            t_tr.append(tt)
            t_jvp.append(tj)
            _, dt = _timed(searcher.stagek_step, k, batch)
            t_step.append(dt)
            if s == 0:
                for t in (t_data, t_val, t_tr, t_jvp, t_step):
                    t.pop()
        # The real loop: prefetch thread + finish + step.
        pre = data.Prefetcher(builder, k, 100, 100 + steps, frozen)
        start = time.perf_counter()
        for s in range(100, 100 + steps):
            searcher.stagek_step(k, builder.finish(pre.get(s), k, s, logits.probs(k)))
        wall = (time.perf_counter() - start) / steps
        pre.close()
    finally:
        executor.close()
    compute = float(np.mean(t_step))
    n_dense = cfg["points"] * cfg["exp_g"] * len(cands)
    n_gtr = cfg["points"] * cfg["factor"] * len(cands)
    parts = dict(data=np.mean(t_data), val_grad=np.mean(t_val), train_grad=np.mean(t_tr),
                 jvp=np.mean(t_jvp))
    other = compute - parts["val_grad"] - parts["train_grad"] - parts["jvp"]
    print(f"\n[{name}] {cfg['model']}, {len(cands)} candidates, {cfg['points']} points, "
          f"EXP_G {cfg['exp_g']}, EXP_gT_factor {cfg['factor']}: {n_dense} JVP images, "
          f"{n_gtr} g_tr images, {cfg['points'] * cfg['n_val']} validation images per step; "
          f"pool={use_pool}, backend={backend}, {steps} steps")
    for key, val in parts.items():
        print(f"  {key:<11} {val:7.3f} s/step")
    print(f"  {'other':<11} {other:7.3f} s/step (step compute minus the three passes)")
    print(f"  compute     {compute:7.3f} s/step (Searcher.stagek_step on a ready batch)")
    print(f"  wall        {wall:7.3f} s/step (prefetch + finish + step)")
    print(f"  wall / compute = {wall / compute:.3f}")
    return wall / compute


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=[*CONFIGS, "all"], default="all")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--l_mags", type=int, default=13)
    p.add_argument("--use_pool", action="store_true")
    p.add_argument("--aug_backend", choices=("pil", "tensor"), default="tensor")
    args = p.parse_args(argv)
    if args.aug_backend == "tensor":
        import torch  # noqa: F401  (before TensorFlow)
        import torch._dynamo  # noqa: F401
    names = list(CONFIGS) if args.config == "all" else [args.config]
    for name in names:
        bench(name, CONFIGS[name], args.steps, args.l_mags, args.use_pool, args.aug_backend)


if __name__ == "__main__":
    main()

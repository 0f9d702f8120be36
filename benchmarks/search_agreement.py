"""How far the search's variants agree: the backends, --precision bf16 and --compile (SPEC §2).

    python benchmarks/search_agreement.py --weights W.weights.h5 --dataset npz:DIR \
        --n_classes 10 --model WRN_10_1 --variants "tf fp32,tf bf16" [--search_steps 200]
    python benchmarks/search_agreement.py --weights W.pt --dataset npz:DIR --n_classes 10 \
        --model WRN_40_2 --variants "torch fp32,torch bf16,torch compile" --points 8

Variants are ``search_step.py``'s (``tf fp32``, ``tf bf16``, ``torch fp32``, ``torch bf16``,
``torch compile``, ``torch bf16+compile``); the first is the reference. All restore the same
weights (the other framework's file converted with ``networks.convert_weights``) and take the
same search batches (the search's StepBuilder on ``--dataset``, random images without it).
Printed against the reference, for a stage-1 and a stage-k step:

* the time of a step (``Searcher`` on a ready batch; the first step of each variant, which
  traces or compiles, is not timed) and its ratio to the reference;
* the importances: per point, their correlation over the candidates (Pearson and Spearman)
  and the relative error ‖r − r_ref‖ / ‖r_ref‖; per step, max |Δr| / max |r_ref| and how often
  a point's most important candidate is the reference's;
* the policy update: per step, the correlation of the policy gradients (what Adam follows,
  ``PolicyLogits.gradient``) and how many of the ten candidates with the highest r̄ are the
  reference's;
* with ``--search_steps N``: one CLI search per variant from the same weights (2 layers × N
  steps, the cpu preset's sizes unless given) and the policies compared (total-variation
  distance per layer, entropies, leading ops).

Stage k is layer 2 with layer 1 frozen at the released ``cifar_1`` layer 1 (``--l_mags 13``;
uniform otherwise) and layer 2 at the Identity prior.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]

import numpy as np  # noqa: E402

from search_step import Variant, convert, make_builder, setup, timed  # noqa: E402


def _corr(a, b):
    return float(np.corrcoef(a, b)[0, 1])


def _rank(x):
    ranks = np.empty(len(x))
    ranks[np.argsort(x, kind="stable")] = np.arange(len(x))
    return ranks


def compare_steps(args, labels):
    """Stage-1 and stage-k steps of every variant on the same batches, against the first."""
    from augmentation.policy import load_policy
    from augmentation.space import identity_index
    from deepaa_data import load_dataset
    from policy_search.layers import PolicyLogits, Searcher

    dataset = load_dataset(args.dataset, args.dataroot, "train") if args.dataset else None
    cfg = dict(points=args.points, exp_g=args.exp_g, factor=args.factor, n_val=args.n_val)
    builder, d = make_builder(cfg, args.l_mags, dataset, args.pretrain_size, args.seed)
    searchers = {}
    for label in labels:
        variant = Variant(label, args.model, args.n_classes, args.chunk, args.weights)
        logits = PolicyLogits(2, d, identity_index("cifar", args.l_mags), args.policy_lr)
        searchers[label] = Searcher(variant.matcher, logits, "cifar")
    initial = searchers[labels[0]].policy.get_state()
    frozen = [load_policy("cifar_1").probs[0] if args.l_mags == 13 else np.full(d, 1.0 / d)]
    prior = searchers[labels[0]].policy.probs(1)
    try:
        for stage, k in (("stage 1", 0), ("stage k", 1)):
            times = {label: [] for label in labels}
            r = {label: [] for label in labels}
            for s in range(args.steps + 1):
                batch = builder.finish(builder.part(k, s, frozen[:k]), k, s, prior)
                for label, searcher in searchers.items():
                    searcher.policy.set_state(initial)
                    out, t = timed(lambda: searcher.stage1_step(batch) if k == 0
                                   else searcher.stagek_step(k, batch))
                    if s:
                        times[label].append(t)
                    r[label].append(out["importance"])
            print(f"\n[{stage}] {args.model}, {args.points} points"
                  + ("" if k == 0 else f", EXP_G {args.exp_g}, EXP_gT_factor {args.factor}")
                  + f", {args.steps} timed steps; against {labels[0]}")
            policy = searchers[labels[0]].policy
            for label in labels:
                _report(label, times, r, labels[0], policy, k)
    finally:
        builder.executor.close()


def _report(label, times, r, ref, policy, k):
    """One variant's line: step time and agreement with ``ref`` (see the module docstring)."""
    pearson, spearman, rel, top_r, argmax, grad_corr, top10 = ([] for _ in range(7))
    for a, b in zip(r[ref], r[label]):  # steps: [points, candidates]
        for i in range(len(a)):
            pearson.append(_corr(a[i], b[i]))
            spearman.append(_corr(_rank(a[i]), _rank(b[i])))
            rel.append(float(np.linalg.norm(b[i] - a[i]) / np.linalg.norm(a[i])))
        top_r.append(float(np.abs(b - a).max() / np.abs(a).max()))
        argmax.append(float(np.mean(a.argmax(1) == b.argmax(1))))
        ga, gb = (policy.gradient(k, x, stage_one=k == 0)[1] for x in (a, b))
        grad_corr.append(_corr(ga, gb))
        rbar = [x.mean(0) - (0 if k == 0 else x.std(0)) for x in (a, b)]
        top10.append(len(set(np.argsort(-rbar[0])[:10]) & set(np.argsort(-rbar[1])[:10])))
    t, t_ref = np.mean(times[label]), np.mean(times[ref])
    print(f"  {label:<20} step {t:7.3f} s ({t_ref / t:.2f}x the reference's speed); "
          f"r per point: Pearson {np.mean(pearson):.4f} (min {np.min(pearson):.4f}), "
          f"Spearman {np.mean(spearman):.4f}, relative error {np.mean(rel):.2g} "
          f"(max {np.max(rel):.2g}); max|dr|/max|r| {np.max(top_r):.2g}; same argmax "
          f"{np.mean(argmax):.2f}; policy gradient correlation {np.mean(grad_corr):.4f} "
          f"(min {np.min(grad_corr):.4f}); top-10 of r-bar shared {np.mean(top10):.1f}/10")


def compare_searches(args, labels):
    """One CLI search per variant from the same weights; their policies against the first."""
    from augmentation.policy import load_policy

    policies = {}
    with contextlib.ExitStack() as stack:
        tmp = args.keep or stack.enter_context(tempfile.TemporaryDirectory())
        os.makedirs(tmp, exist_ok=True)
        weights = {os.path.splitext(args.weights)[1]: os.path.abspath(args.weights)}
        for label in labels:
            backend, _, opts = label.partition(" ")
            suffix = ".pt" if backend == "torch" else ".h5"
            if suffix not in weights:  # the other framework's file, converted once
                weights[suffix] = os.path.join(tmp, "weights" + (
                    ".pt" if suffix == ".pt" else ".weights.h5"))
                if not os.path.isfile(weights[suffix]):
                    convert(args.weights, weights[suffix], args.model, args.n_classes)
            folder = os.path.join(tmp, label.replace(" ", "_").replace("+", "_"))
            cmd = [sys.executable, os.path.join(ROOT, "DeepAA_search.py"), "--backend", backend,
                   "--precision", "bf16" if "bf16" in opts else "fp32", "--dataset",
                   args.dataset, "--n_classes", str(args.n_classes), "--preset", "cpu",
                   "--use_model", args.model, "--pretrained", weights[suffix],
                   "--pretrain_size", str(args.pretrain_size), "--n_policies", "2",
                   "--search_bno", str(args.search_steps), "--train_same_labels",
                   str(args.points), "--EXP_G", str(args.exp_g), "--EXP_gT_factor",
                   str(args.factor), "--n_val_per_point", str(args.n_val), "--seed",
                   str(args.seed), "--dataroot", args.dataroot, "--results_dir", folder]
            cmd += ["--compile"] if "compile" in opts else []
            policy_file = os.path.join(folder, "policy.yaml")
            start = time.perf_counter()
            if not os.path.isfile(policy_file):  # a kept search left unfinished continues
                cmd += ["--resume"] if os.path.isdir(folder) and any(
                    f.endswith("checkpoint.npz") for f in os.listdir(folder)) else []
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
            policy = load_policy(policy_file)
            policies[label] = (policy, policy.meta.get("search_time_s",
                                                       time.perf_counter() - start))
    ref = policies[labels[0]][0]
    print(f"\n[policies after 2 layers x {args.search_steps} steps] search time: "
          + ", ".join(f"{label} {t:.0f} s" for label, (_, t) in policies.items()))
    for k in range(ref.n_layers):
        print(f"  layer {k + 1}:")
        for label, (policy, _) in policies.items():
            tv = 0.5 * float(np.abs(policy.probs[k] - ref.probs[k]).sum())
            ops = {op: float(p[k]) for op, p in policy.op_probs().items()}
            lead = sorted(ops.items(), key=lambda kv: -kv[1])[:5]
            print(f"    {label:<20} total variation {tv:.4f}, entropy "
                  f"{policy.entropy()[k]:.3f}; " + ", ".join(f"{op} {p:.3f}" for op, p in lead))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="tf fp32,tf bf16",
                   help="comma-separated variants, the first the reference")
    p.add_argument("--weights", required=True, help="search weights (.weights.h5 or .pt)")
    p.add_argument("--dataset", help="npz:DIR or another search dataset of 32x32 images "
                                     "(required with --search_steps)")
    p.add_argument("--dataroot", default="./data")
    p.add_argument("--n_classes", type=int, default=10)
    p.add_argument("--model", default="WRN_10_1")
    p.add_argument("--pretrain_size", type=int, default=5000,
                   help="as pretrained (the splits depend on it)")
    p.add_argument("--points", type=int, default=2)
    p.add_argument("--exp_g", type=int, default=4)
    p.add_argument("--factor", type=int, default=1)
    p.add_argument("--n_val", type=int, default=64)
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--l_mags", type=int, default=13)
    p.add_argument("--policy_lr", type=float, default=0.025)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--steps", type=int, default=6, help="compared steps per stage")
    p.add_argument("--search_steps", type=int, default=0,
                   help="also run a 2-layer search of N steps per layer for each variant")
    p.add_argument("--keep", help="with --search_steps: keep each variant's search in "
                   "KEEP/<variant> (policy, trace, log) and continue an unfinished one")
    p.add_argument("--threads", type=int, default=0, help="as search_step.py's")
    args = p.parse_args(argv)
    labels = [v.strip() for v in args.variants.split(",") if v.strip()]
    labels = [f"{v} fp32" if v in ("tf", "torch") else v for v in labels]
    if args.search_steps and not args.dataset:
        p.error("--search_steps needs --dataset")
    print(setup(args.threads, any(v.startswith("tf") for v in labels)))
    if args.steps > 0:
        compare_steps(args, labels)
    if args.search_steps > 0:
        compare_searches(args, labels)


if __name__ == "__main__":
    main()

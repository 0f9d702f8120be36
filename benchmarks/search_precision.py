"""--precision bf16 against fp32 in the search: step time, importances, and the policy after N steps.

    python benchmarks/search_precision.py --dataset npz:DIR --n_classes 10 \
        --pretrained results/.../pretrained_WRN_10_1.weights.h5 [--steps 6] [--search_steps 200]

Both precisions restore the same weights and see the same batches (real data, the search's
own StepBuilder). Printed side by side:

* time of a stage-1 and a stage-k step (``Searcher`` on a ready batch) in each precision, and
  their ratio;
* how far bf16 moves the importances: per point, the correlation over the candidates of r in
  bf16 and in fp32 (Pearson and Spearman) and the relative error ‖r_bf16 − r_fp32‖ / ‖r_fp32‖;
  per step, the correlation of the policy gradients (the logits' update direction from r̄) and
  the overlap of the ten candidates with the highest r̄;
* with ``--search_steps N``: two searches by the CLI from the same weights (2 layers × N
  steps, the cpu preset's sizes unless given), one per precision, and their policies compared
  (total-variation distance per layer, entropies, leading ops).

Stage k is layer 2 with layer 1 frozen at the released ``cifar_1`` layer 1 (so the g_tr copies
and the dense copies are augmented as in a real search) and layer 2 at the Identity prior.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

PRECISIONS = ("fp32", "bf16")


def _rank(x):
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    return ranks


def _corr(a, b):
    return float(np.corrcoef(a, b)[0, 1])


def _policy_gradient(rbar, probs, scale):
    """d loss / d logits of loss = −scale Σ r̄_i p_i (the direction Adam follows)."""
    return -scale * probs * (rbar - np.dot(probs, rbar))


def compare_steps(args):
    import torch  # noqa: F401  (torch before TensorFlow: the tensor augmentation backend)
    import torch._dynamo  # noqa: F401

    from augmentation.policy import load_policy
    from augmentation.space import identity_index
    from policy_search import config, data, devices
    from policy_search.augment import Augmenter, make_executor
    from policy_search.importance import GradientMatcher
    from policy_search.layers import PolicyLogits, Searcher
    from policy_search.run import Prepared, _search_model

    search_args = config.parse_args([
        "--dataset", args.dataset, "--n_classes", str(args.n_classes), "--preset", "cpu",
        "--use_model", args.use_model, "--pretrained", args.pretrained,
        "--pretrain_size", str(args.pretrain_size),
        "--train_same_labels", str(args.points), "--EXP_G", str(args.exp_g),
        "--EXP_gT_factor", str(args.factor), "--n_val_per_point", str(args.n_val)])
    prep = Prepared(search_args)
    strategy = devices.make_strategy(0)
    executor = make_executor(Augmenter(prep.candidates, 13, prep.size), False, "tensor")
    searchers, initial = {}, None
    for precision in PRECISIONS:
        search_args.precision = precision
        model = _search_model(search_args, strategy, prep, args.pretrained)
        matcher = GradientMatcher(model, strategy, search_args.chunk_size or 128)
        logits = PolicyLogits(2, len(prep.candidates), identity_index("cifar", 13), 0.025,
                              strategy)
        initial = logits.get_state()
        searchers[precision] = Searcher(matcher, logits, "cifar")
    cols, groups = data.dense_columns(prep.candidates, False, 1)
    builder = data.StepBuilder(prep.train, prep.sampler, executor, "cifar", args.points,
                               args.exp_g, args.factor, cols, groups, seed=args.seed)
    frozen = [load_policy("cifar_1").probs[0]]
    prior = searchers["fp32"].policy.probs(1)
    report = {}
    try:
        for stage, k in (("stage 1", 0), ("stage k", 1)):
            times = {p: [] for p in PRECISIONS}
            corr, spear, rel, grad_corr, top10 = [], [], [], [], []
            for s in range(args.steps + 1):
                batch = builder.finish(builder.part(k, s, frozen[:k]), k, s, prior)
                got = {}
                for precision in PRECISIONS:
                    searcher = searchers[precision]
                    searcher.policy.set_state(initial)
                    t0 = time.perf_counter()
                    out = (searcher.stage1_step(batch) if k == 0
                           else searcher.stagek_step(k, batch))
                    if s:  # step 0 traces the functions
                        times[precision].append(time.perf_counter() - t0)
                    got[precision] = out["importance"]
                a, b = got["fp32"], got["bf16"]
                for i in range(len(a)):
                    corr.append(_corr(a[i], b[i]))
                    spear.append(_corr(_rank(a[i]), _rank(b[i])))
                    rel.append(float(np.linalg.norm(b[i] - a[i]) / np.linalg.norm(a[i])))
                if k == 0:
                    rbar = {p: got[p].mean(0) for p in PRECISIONS}
                    scale, probs = 0.25, initial_probs(initial, 0)
                else:
                    rbar = {p: got[p].mean(0) - got[p].std(0) for p in PRECISIONS}
                    scale, probs = float(args.points), prior
                g = {p: _policy_gradient(rbar[p], probs, scale) for p in PRECISIONS}
                grad_corr.append(_corr(g["fp32"], g["bf16"]))
                top = {p: set(np.argsort(-rbar[p])[:10]) for p in PRECISIONS}
                top10.append(len(top["fp32"] & top["bf16"]))
            t32, t16 = np.mean(times["fp32"]), np.mean(times["bf16"])
            report[stage] = (t32, t16)
            print(f"\n[{stage}] {args.use_model}, {args.points} points"
                  + ("" if k == 0 else f", EXP_G {args.exp_g}, EXP_gT_factor {args.factor}")
                  + f", {args.steps} steps")
            print(f"  step time   fp32 {t32:7.3f} s   bf16 {t16:7.3f} s   "
                  f"fp32 / bf16 = {t32 / t16:.2f}x")
            print(f"  importances per point: Pearson {np.mean(corr):.4f} "
                  f"(min {np.min(corr):.4f}), Spearman {np.mean(spear):.4f}, "
                  f"relative error {np.mean(rel):.4f} (max {np.max(rel):.4f})")
            print(f"  policy gradient per step: correlation {np.mean(grad_corr):.4f} "
                  f"(min {np.min(grad_corr):.4f}); top-10 of r-bar shared "
                  f"{np.mean(top10):.1f} of 10")
    finally:
        executor.close()
    return report


def initial_probs(state, k):
    z = np.asarray(state["logits"][k], np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def compare_searches(args):
    """Two CLI searches from the same weights, one per precision; their policies compared."""
    import yaml

    from augmentation.policy import load_policy

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in PRECISIONS:
            folder = os.path.join(tmp, precision)
            cmd = [sys.executable, os.path.join(ROOT, "DeepAA_search.py"), "--dataset",
                   args.dataset, "--n_classes", str(args.n_classes), "--preset", "cpu",
                   "--use_model", args.use_model, "--pretrained", args.pretrained,
                   "--pretrain_size", str(args.pretrain_size), "--n_policies", "2",
                   "--search_bno", str(args.search_steps), "--train_same_labels",
                   str(args.points), "--EXP_G", str(args.exp_g), "--EXP_gT_factor",
                   str(args.factor), "--n_val_per_point", str(args.n_val), "--seed",
                   str(args.seed), "--precision", precision, "--results_dir", folder]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
            policy = load_policy(os.path.join(folder, "policy.yaml"))
            out[precision] = (policy, time.perf_counter() - t0)
            with open(os.path.join(folder, "policy.yaml"), encoding="utf-8") as f:
                yaml.safe_load(f)
    a, b = out["fp32"][0], out["bf16"][0]
    print(f"\n[policy after 2 layers x {args.search_steps} steps] wall fp32 "
          f"{out['fp32'][1]:.0f} s, bf16 {out['bf16'][1]:.0f} s")
    for k in range(a.n_layers):
        tv = 0.5 * float(np.abs(a.probs[k] - b.probs[k]).sum())
        print(f"  layer {k + 1}: total variation {tv:.4f}; entropy fp32 "
              f"{a.entropy()[k]:.3f}, bf16 {b.entropy()[k]:.3f}")
        for name, pol in (("fp32", a), ("bf16", b)):
            ops = {op: float(p[k]) for op, p in pol.op_probs().items()}
            lead = sorted(ops.items(), key=lambda kv: -kv[1])[:5]
            print(f"    {name}: " + ", ".join(f"{op} {p:.3f}" for op, p in lead))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, help="npz:DIR or another search dataset")
    p.add_argument("--n_classes", type=int, required=True)
    p.add_argument("--pretrained", required=True, help="search weights (.weights.h5)")
    p.add_argument("--use_model", default="WRN_10_1")
    p.add_argument("--pretrain_size", type=int, default=5000,
                   help="as pretrained (the splits depend on it)")
    p.add_argument("--points", type=int, default=2)
    p.add_argument("--exp_g", type=int, default=4)
    p.add_argument("--factor", type=int, default=1)
    p.add_argument("--n_val", type=int, default=64)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--steps", type=int, default=6, help="timed and compared steps per stage")
    p.add_argument("--search_steps", type=int, default=0,
                   help="also run two 2-layer searches of N steps per layer and compare them")
    args = p.parse_args(argv)
    if args.steps > 0:
        compare_steps(args)
    if args.search_steps > 0:
        compare_searches(args)


if __name__ == "__main__":
    main()

"""Search steps on both backends, side by side on one machine (SPEC §2).

    python benchmarks/search_step.py                          # split + paper, tf and torch
    python benchmarks/search_step.py --backend torch --variants fp32,bf16,compile

``--mode split`` (configs ``cpu``, ``wrn40``): a stage-2 step split into data (building the
step's batch), the three model passes (val grad, train grad, JVP, each timed on its own),
``compute`` (``Searcher.stagek_step`` on a ready batch) and ``wall`` (the real loop with the
prefetch thread); the goal is wall <= 1.15 x compute.

``--mode paper``: the full-size paper step (WRN-40-2, 16 points, EXP_G 16, EXP_gT_factor 4,
chunks of 256): the images/s of each pass (validation gradient over 64 images, g_tr gradient
over 556, JVPs over 2,224 per point; ``--max_images`` caps the images timed per pass) and of
a pretraining step (batch 128), the data time of one paper step, and the projected time of
the whole ``--preset paper`` and ``--preset fast`` searches on this device (pretraining plus
search; "with data" takes each step as the slower of its compute and its prefetched data).
``--full_step`` also times one real paper stage-k step end to end.

A variant is a backend in a setting: ``tf fp32``, ``tf bf16``, ``torch fp32``, ``torch bf16``,
``torch compile``, ``torch bf16+compile`` (``--precision`` and ``--compile``). How far the
variants' importances and policies agree is ``benchmarks/search_agreement.py``, which builds
its variants here (``Variant``).

Random data and untrained models: the cost does not depend on the weights.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

SPLIT_CONFIGS = {
    "cpu": dict(model="WRN_10_1", points=2, exp_g=2, factor=1, n_val=16, chunk=128),
    "wrn40": dict(model="WRN_40_2", points=2, exp_g=1, factor=1, n_val=64, chunk=256),
}
PAPER = dict(model="WRN_40_2", points=16, exp_g=16, factor=4, n_val=64, chunk=256)
PRESETS = {"paper": dict(points=16, exp_g=16, factor=4, bno=1024),
           "fast": dict(points=8, exp_g=8, factor=2, bno=512)}
LAYERS, EPOCHS, PRETRAIN_SIZE, BATCH = 6, 45, 5000, 128  # SPEC §0


def variant_labels(backends, settings: str) -> list[str]:
    """``backends`` × the comma-separated ``settings`` (fp32, bf16, compile, bf16+compile) as
    variant labels; compile is PyTorch's only."""
    labels = []
    for backend in backends:
        for setting in settings.split(","):
            if setting.strip() and not (backend == "tf" and "compile" in setting):
                labels.append(f"{backend} {setting.strip()}")
    return labels


class Variant:
    """One backend in one setting ("tf fp32", "tf bf16", "torch bf16+compile", ...; see the
    module docstring): its search model (from ``weights``, converted when they are the other
    framework's, or a fresh one), matcher and pretraining step."""

    def __init__(self, label, model, n_classes, chunk, weights=None):
        from policy_search.backend import create

        backend, _, opts = label.partition(" ")
        opts = set((opts or "fp32").split("+"))
        if backend not in ("tf", "torch") or not opts <= {"fp32", "bf16", "compile"} \
                or (backend == "tf" and "compile" in opts):
            raise ValueError(f"unknown variant {label!r}: expected tf or torch followed by "
                             "fp32, bf16, compile (torch) or bf16+compile (torch)")
        self.label = label
        self.args = argparse.Namespace(
            backend=backend, precision="bf16" if "bf16" in opts else "fp32",
            compile="compile" in opts, use_model=model, n_classes=n_classes, seed=0,
            cpu_replicas=0, chunk_size=chunk, policy_bn_training=False, pretrain_lr=0.1)
        self.backend = create(self.args)
        shape = (32, 32, 3)
        with tempfile.TemporaryDirectory() as tmp:
            fresh = self.backend.new_model(self.args, shape)
            if weights is None or not weights.endswith(self.backend.weights_suffix):
                path = os.path.join(tmp, "w" + self.backend.weights_suffix)
                self.backend.save_weights(fresh, path)
                if weights is not None:  # the other framework's file: convert
                    convert(weights, path, model, n_classes)
                weights = path
            self.model = self.backend.search_model(self.args, shape, weights)
        self.matcher = self.backend.matcher(self.model, self.args)
        self.train_model = fresh

    def grad(self, images, labels):
        """One gradient pass (the mean over ``images``), timed to completion."""
        x = self._device(images)
        w = np.full(len(labels), 1.0 / len(labels), np.float32)
        return timed(lambda: self._sync(self.matcher.weighted_grad(x, labels, w)))

    def jvp(self, images, labels, g_val, g_tr):
        x = self._device(images)
        return timed(lambda: _numpy(self.matcher.importance(x, labels, g_val, g_tr)))

    def _device(self, images):
        from policy_search import data

        if self.args.backend == "tf":
            return data.normalize(images, "cifar")
        self._sync()
        return self.matcher.device_images(images, [np.asarray(s) for s in
                                                   data.statistics("cifar")])

    def _sync(self, value=None):
        if self.args.backend == "torch":
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()
        elif value is not None:
            float(np.asarray(value[0]).ravel()[0])
        return value


def _numpy(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def convert(src, dst, model, n_classes):
    """WRN weights ``src`` of one framework as ``dst`` of the other (networks.convert_weights)."""
    from networks.convert_weights import main

    main([src, dst, "--model", model, "--n_classes", str(n_classes)])


def timed(fn):
    """(fn(), seconds it took)."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _rand_images(rng, n):
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


# ----- split ----------------------------------------------------------------------------------
def make_builder(cfg, l_mags, dataset=None, pretrain_size=500, seed=0):
    """The search's StepBuilder for ``cfg``'s points on ``dataset`` (32x32 images; 2,000
    random ones by default), split as a search with ``pretrain_size`` and ``seed`` splits it;
    and the number of candidates."""
    from augmentation.space import candidates
    from deepaa_data import ArrayDataset
    from policy_search import data
    from policy_search.augment import Augmenter, make_executor

    rng = np.random.default_rng(0)
    ds = dataset or ArrayDataset(_rand_images(rng, 2000), np.arange(2000) % 10,
                                 [str(i) for i in range(10)])
    cands = candidates("cifar", l_mags)
    splits = data.make_splits(len(ds), pretrain_size, seed=seed)
    executor = make_executor(Augmenter(cands, l_mags, 32), False, "tensor")
    cols, groups = data.dense_columns(cands, False, 1)
    return data.StepBuilder(ds, data.PointSampler(ds.labels, splits, cfg["n_val"]), executor,
                            "cifar", cfg["points"], cfg["exp_g"], cfg["factor"], cols, groups,
                            seed=seed), len(cands)


def split(variants, steps, l_mags, configs):
    from augmentation.space import identity_index
    from policy_search import data
    from policy_search.layers import PolicyLogits, Searcher

    for name in configs:
        cfg = SPLIT_CONFIGS[name]
        builder, n_cands = make_builder(cfg, l_mags)
        rows = {}
        for label in variants:
            v = Variant(label, cfg["model"], 10, cfg["chunk"])
            logits = PolicyLogits(3, n_cands, identity_index("cifar", l_mags), 0.025)
            searcher = Searcher(v.matcher, logits, "cifar")
            frozen, k = [logits.probs(0)], 1
            times = {key: [] for key in ("data", "val grad", "train grad", "JVP", "compute")}
            for s in range(steps + 1):  # s = 0 warms up (traces, compiles)
                batch, t_data = timed(lambda: builder.finish(builder.part(k, s, frozen), k, s,
                                                              logits.probs(k)))
                tv = tt = tj = 0.0
                for i in range(cfg["points"]):
                    g_val, dt = v.grad(batch["val"][i], batch["val_labels"][i])
                    tv += dt
                    m = batch["gtr"].shape[1]
                    g_tr, dt = v.grad(batch["gtr"][i], np.full(m, batch["labels"][i]))
                    tt += dt
                    dense = batch["dense"][i].reshape(-1, 32, 32, 3)
                    tj += v.jvp(dense, np.full(len(dense), batch["labels"][i]), g_val, g_tr)[1]
                _, t_step = timed(lambda: searcher.stagek_step(k, batch))
                if s:
                    for key, val in zip(times, (t_data, tv, tt, tj, t_step)):
                        times[key].append(val)
            pre = data.Prefetcher(builder, k, 100, 100 + steps, frozen)
            start = time.perf_counter()
            for s in range(100, 100 + steps):
                searcher.stagek_step(k, builder.finish(pre.get(s), k, s, logits.probs(k)))
            wall = (time.perf_counter() - start) / steps
            pre.close()
            rows[label] = {key: float(np.mean(t)) for key, t in times.items()} | {"wall": wall}
        print(f"\n[split: {name}] {cfg['model']}, {n_cands} candidates, {cfg['points']} points, "
              f"EXP_G {cfg['exp_g']}, EXP_gT_factor {cfg['factor']}, {steps} steps; s/step")
        _table(rows, ["data", "val grad", "train grad", "JVP", "compute", "wall"],
               extra=lambda r: r["wall"] / r["compute"], extra_name="wall / compute")
        builder.executor.close()


# ----- paper ----------------------------------------------------------------------------------
def paper(variants, max_images, l_mags, full_step, chunk, repeats):
    rng = np.random.default_rng(0)
    cfg = dict(PAPER, chunk=chunk or PAPER["chunk"])
    d = 11 * (l_mags - 1) + 7
    sizes = {"val grad": cfg["n_val"], "g_tr grad": d * cfg["factor"],
             "JVP": d * cfg["exp_g"]}
    builder, _ = make_builder(cfg, l_mags)
    probs = np.full(d, 1.0 / d)
    (part1, t1), (partk, tk) = (timed(lambda k=k: builder.part(k, 0, [probs] * k))
                                for k in (0, 1))
    batch_k, t_finish = timed(lambda: builder.finish(partk, 1, 0, probs))
    data_s = {"stage 1": t1, "stage k": tk + t_finish}
    builder.executor.close()
    n = {k: min(s, max_images) for k, s in sizes.items()}
    images = {k: _rand_images(rng, n[k]) for k in sizes}
    labels = {k: np.full(n[k], 3) for k in sizes}
    runs = {}
    for label in variants:  # build and warm up (trace, compile) every variant first
        v = Variant(label, cfg["model"], 10, cfg["chunk"])
        g = (v.grad(images["val grad"], labels["val grad"])[0],
             v.grad(images["g_tr grad"], labels["g_tr grad"])[0])
        v.jvp(images["JVP"], labels["JVP"], *g)
        runs[label] = (v, g, v.backend.trainer(v.train_model, v.args, 100))
    # Then each pass of each variant in turn, `repeats` rounds, the best round kept: the
    # variants meet the same background load.
    best = {label: {} for label in variants}
    batch = rng.normal(size=(BATCH, 32, 32, 3)).astype(np.float32)
    batch_labels = rng.integers(0, 10, BATCH).astype(np.int32)
    for _ in range(repeats):
        for label, (v, g, train_step) in runs.items():
            times = {"val grad": v.grad(images["val grad"], labels["val grad"])[1],
                     "g_tr grad": v.grad(images["g_tr grad"], labels["g_tr grad"])[1],
                     "JVP": v.jvp(images["JVP"], labels["JVP"], *g)[1],
                     "pretrain": timed(lambda: train_step(batch, batch_labels))[1]}
            for key, t in times.items():
                best[label][key] = min(best[label].get(key, np.inf), t)
    rates, projections = {}, {}
    for label in variants:
        r = {k: (BATCH if k == "pretrain" else n[k]) / t for k, t in best[label].items()}
        rates[label] = r
        projections[label] = {p: _project(r, d, **PRESETS[p], data_s=data_s)
                              for p in PRESETS}
        if full_step:
            from augmentation.space import identity_index
            from policy_search.layers import PolicyLogits, Searcher

            logits = PolicyLogits(2, d, identity_index("cifar", l_mags), 0.025)
            searcher = Searcher(runs[label][0].matcher, logits, "cifar")
            searcher.stagek_step(1, batch_k)  # warm-up: the step's own shapes
            r["full step s"] = timed(lambda: searcher.stagek_step(1, batch_k))[1]
    print(f"\n[paper step] {cfg['model']}, {cfg['points']} points, EXP_G {cfg['exp_g']}, "
          f"EXP_gT_factor {cfg['factor']}, chunk {cfg['chunk']}; images per point: "
          + ", ".join(f"{k} {s}" for k, s in sizes.items())
          + f" (timed: up to {max_images} per pass, best of {repeats}); images/s")
    _table(rates, list(next(iter(rates.values()))))
    print(f"data of one paper step (one prefetch thread): stage 1 {data_s['stage 1']:.2f} s, "
          f"stage k {data_s['stage k']:.2f} s")
    for p in PRESETS:
        print(f"\nprojected --preset {p} (hours): pretrain, search, total, total with data")
        _table({label: projections[label][p] for label in variants},
               ["pretrain h", "search h", "total h", "with data h"])


def _project(r, d, points, exp_g, factor, bno, data_s):
    """Hours of a whole search: pretraining + layer 1 (stage 1) + the other layers."""
    stage1 = points * (PAPER["n_val"] / r["val grad"] + d / r["g_tr grad"] + d / r["JVP"])
    stagek = points * (PAPER["n_val"] / r["val grad"] + d * factor / r["g_tr grad"]
                       + d * exp_g / r["JVP"])
    scale_k = (points * exp_g) / (PAPER["points"] * PAPER["exp_g"])  # data of this preset
    data1 = data_s["stage 1"] * points / PAPER["points"]
    datak = data_s["stage k"] * scale_k
    pretrain = EPOCHS * (PRETRAIN_SIZE // BATCH) * BATCH / r["pretrain"]
    search = bno * (stage1 + (LAYERS - 1) * stagek)
    with_data = bno * (max(stage1, data1) + (LAYERS - 1) * max(stagek, datak))
    return {"pretrain h": pretrain / 3600, "search h": search / 3600,
            "total h": (pretrain + search) / 3600, "with data h": (pretrain + with_data) / 3600}


def _table(rows, keys, extra=None, extra_name="", fmt="{:>14.4g}", ratios=True):
    labels = list(rows)
    print(f"{'':<22}" + "".join(f"{label:>20}" for label in labels))
    for key in keys:
        print(f"{key:<22}" + "".join(f"{fmt.format(rows[label][key]):>20}" for label in labels))
    if extra:
        print(f"{extra_name:<22}" + "".join(f"{fmt.format(extra(rows[label])):>20}"
                                             for label in labels))
    base = next((label for label in labels if label.startswith("tf")), None)
    if ratios and base is not None and len(labels) > 1:
        for key in keys:
            ratios = "".join(f"{rows[label][key] / rows[base][key]:>20.3f}" for label in labels)
            print(f"{key + ' / ' + base:<22}" + ratios)


def setup(threads: int, tensorflow: bool) -> str:
    """Import torch before TensorFlow, set each framework's CPU threads (0: their defaults),
    and describe the device and versions in one line."""
    import torch
    import torch._dynamo  # noqa: F401

    if threads:
        torch.set_num_threads(threads)
    versions = f"torch {torch.__version__}"
    if tensorflow:
        import tensorflow as tf

        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        versions += f"; tensorflow {tf.__version__}"
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else \
        f"CPU ({os.cpu_count()} cores)"
    return f"device: {device}{f', {threads} thread(s)' if threads else ''}; {versions}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=("split", "paper", "all"), default="all",
                   help="all: split and paper")
    p.add_argument("--backend", choices=("tf", "torch", "both"), default="both")
    p.add_argument("--variants", default="fp32",
                   help="settings of each backend, comma-separated: fp32, bf16, compile and "
                        "bf16+compile (the last two PyTorch's)")
    p.add_argument("--config", choices=[*SPLIT_CONFIGS, "all"], default="all",
                   help="split mode: the configuration")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--l_mags", type=int, default=13)
    p.add_argument("--max_images", type=int, default=2224,
                   help="paper mode: images timed per pass at most (the paper's 2,224 JVPs)")
    p.add_argument("--full_step", action="store_true", help="paper mode: time one full step")
    p.add_argument("--repeats", type=int, default=3,
                   help="paper mode: rounds over the variants; the best is kept")
    p.add_argument("--chunk", type=int, default=0,
                   help="paper mode: images per chunk (default: the paper's 256)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads of each framework (0: their defaults); on a CPU shared "
                        "with other jobs one thread avoids OpenMP's collapse under load")
    args = p.parse_args(argv)
    backends = ["tf", "torch"] if args.backend == "both" else [args.backend]
    variants = variant_labels(backends, args.variants)
    print(setup(args.threads, "tf" in backends))
    if args.mode in ("split", "all"):
        split(variants, args.steps, args.l_mags,
              list(SPLIT_CONFIGS) if args.config == "all" else [args.config])
    if args.mode in ("paper", "all"):
        paper(variants, args.max_images, args.l_mags, args.full_step, args.chunk,
              args.repeats)


if __name__ == "__main__":
    main()

"""A tiny search model and seeded search batches for the policy-search tests.

Imported by the tests, and run as a script so that a fresh process can configure its devices
(logical CPUs, TF_CONFIG workers) before TensorFlow starts:

    python policy_search_helper.py OUT.npz [--cpu_replicas N]

runs one stage-1 and one stage-k step and saves the cosines, importances and logits.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SIZE, CHANNELS, N_CLASSES = 8, 3, 5
ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def keras_float64():
    """Keras' default dtype set to float64, and put back afterwards.

    Keras 3 caches its global dtype policy the first time any layer is built, after which
    ``set_floatx`` alone no longer changes the dtype of new layers: the policy is set too.
    """
    import keras

    old_floatx, old_policy = keras.backend.floatx(), keras.config.dtype_policy()
    keras.backend.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        yield
    finally:
        keras.backend.set_floatx(old_floatx)
        keras.config.set_dtype_policy(old_policy)


@pytest.fixture
def float64():
    """Run a test with Keras' float64 default dtype (exact comparisons of the maths)."""
    with keras_float64():
        yield


def tiny_model(keras, seed: int = 0):
    """conv(4) + frozen BN + ReLU + GAP + dense, weights drawn from a seeded numpy RNG."""
    inp = keras.Input((SIZE, SIZE, CHANNELS))
    x = keras.layers.Conv2D(4, 3, padding="same")(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(N_CLASSES)(x)
    model = keras.Model(inp, out)
    random_weights(model, seed, 0.5)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False  # the search freezes batch norm (SPEC §2)
    return model


def random_weights(model, seed: int = 0, scale: float = 0.3):
    """Every weight of a Keras model from a seeded N(0, scale²); batch-norm variances kept
    positive (0.5 + |draw|)."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        values = rng.normal(0.0, scale, size=tuple(w.shape))
        if "variance" in w.path:
            values = 0.5 + np.abs(values)
        w.assign(values.astype(w.dtype))


def rel_err(a, b):
    """max |a − b| / max |b| (numpy arrays or either framework's tensors)."""
    a, b = (np.asarray(_numpy(v), np.float64) for v in (a, b))
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


def flat(grads):
    """A gradient (a list of either framework's tensors) as one float64 vector."""
    return np.concatenate([np.ravel(_numpy(g)).astype(np.float64) for g in grads])


def importance_setup(model, images=np.asarray):
    """(model, aug, labels, val, val_labels, p) of the matcher tests: one point of 7 training
    and 6 validation images (``images`` puts them in the framework's layout) and a random
    policy ``p`` over the 7."""
    batch = search_batch(1, 7, 6)
    labels = np.full(7, batch["labels"][0])
    p = np.random.default_rng(3).dirichlet(np.ones(7))
    return (model, images(batch["aug"][0]), labels, images(batch["val"][0]),
            batch["val_labels"][0], p)


def _numpy(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def check_importance_maths(matcher, setup, per_example_grads):
    """The finite-difference check of SPEC §2's importance, for either backend's matcher
    (float64), on ``setup`` = (model, aug, labels, val, val_labels, p): g_val and g_tr equal
    the references from ``per_example_grads(model, images, labels)`` ([N, params], one
    gradient per image); r equals the central difference in p of cos(g_val, Σ_i p_i ∇ℓ_i); the
    cosine is that cosine at p; and Σ p_i r_i = 0, since the tangent is orthogonal to g_tr."""
    model, aug, labels, val, val_labels, p = setup
    g_val = matcher.val_grad(val, val_labels)
    g_tr_parts = matcher.weighted_grad(aug, labels, p)
    r = _numpy(matcher.importance(aug, labels, g_val, g_tr_parts))
    cos = float(_numpy(type(matcher).cosine(g_val, g_tr_parts)))
    g_val, g_tr = (np.concatenate([np.ravel(_numpy(g)) for g in grads])
                   for grads in (g_val, g_tr_parts))
    G = per_example_grads(model, aug, labels)
    g_val_ref = per_example_grads(model, val, val_labels).mean(axis=0)

    def cosine_of(q):
        g = q @ G
        return g_val_ref @ g / (np.linalg.norm(g_val_ref) * np.linalg.norm(g))

    assert rel_err(g_val, g_val_ref) < 1e-10
    assert rel_err(g_tr, p @ G) < 1e-10
    h = 1e-5
    fd = np.array([(cosine_of(p + h * e) - cosine_of(p - h * e)) / (2 * h)
                   for e in np.eye(len(p))])
    assert rel_err(r, fd) <= 1e-6
    assert abs(cos - cosine_of(p)) < 1e-12
    assert abs(p @ r) < 1e-12 * np.max(np.abs(r)) * len(r)


def check_chunking_changes_nothing(make_matcher, setup, chunk_size):
    """Chunks of ``chunk_size`` images give one pass's g_val, g_tr and importances, to
    rounding (either backend's matcher, float64)."""
    model, aug, labels, val, val_labels, p = setup
    one_shot, chunked = make_matcher(model, 10_000), make_matcher(model, chunk_size)
    for fn in ("val_grad", "mean_grad"):
        assert rel_err(flat(getattr(chunked, fn)(val, val_labels)),
                       flat(getattr(one_shot, fn)(val, val_labels))) < 1e-12
    g_tr = chunked.weighted_grad(aug, labels, p)
    assert rel_err(flat(g_tr), flat(one_shot.weighted_grad(aug, labels, p))) < 1e-12
    g_val = one_shot.val_grad(val, val_labels)
    assert rel_err(chunked.importance(aug, labels, g_val, g_tr),
                   one_shot.importance(aug, labels, g_val, g_tr)) < 1e-12


def stop_and_resume(tmp, common, weights):
    """A search stopped in the middle of layer 2 (4 steps of layer 1 + 1 of layer 2) and
    resumed ends with the policy of the uninterrupted search in ``tmp/full``."""
    from augmentation import load_policy

    part = tmp / "part"
    args = common + ["--pretrained", weights, "--results_dir", str(part)]
    search(args + ["--stop_after_steps", "5"], tmp)
    assert (part / "checkpoint.npz").is_file() and not (part / "policy.yaml").exists()
    res = search(args + ["--resume"], tmp)
    assert "resumed at layer 2, step 1" in (part / "search.log").read_text(), res.stderr[-500:]
    full, resumed = load_policy(tmp / "full" / "policy.yaml"), load_policy(part / "policy.yaml")
    np.testing.assert_allclose(resumed.probs, full.probs, rtol=0, atol=1e-9)
    assert resumed.meta["cos_sim_trace"] == full.meta["cos_sim_trace"]
    # The records of the steps before the stop came back from the checkpoint.
    n_layers, n_candidates = full.probs.shape
    steps = len(full.meta["cos_sim_trace"][0])
    a = check_trace(tmp / "full", n_layers, steps, n_candidates)
    b = check_trace(part, n_layers, steps, n_candidates)
    for k in range(n_layers):
        for name in ("probs", "importance_mean", "importance_std"):
            np.testing.assert_allclose(b.matrix(name, k), a.matrix(name, k), rtol=1e-5,
                                       atol=1e-7, err_msg=name)


def check_trace(results_dir, n_layers, steps, n_candidates):
    """A finished search in ``results_dir`` recorded every step of every layer: the
    checkpoint's per-step probabilities and importance mean/std (finite, [steps, candidates],
    the last probabilities the policy's), and ``trace.json`` equal to the policy's
    ``meta.op_prob_trace``, with finite per-op probabilities summing to 1 at every step."""
    import json

    from augmentation import load_policy
    from policy_search.checkpoint import load_checkpoint

    policy = load_policy(results_dir / "policy.yaml")
    summary = json.loads((results_dir / "trace.json").read_text())
    assert summary == policy.meta["op_prob_trace"]
    assert summary["steps"] == [list(range(1, steps + 1))] * n_layers
    for k in range(n_layers):
        probs = np.array(summary["probs"][k])
        assert probs.shape == (steps, len(summary["ops"])) and np.isfinite(probs).all()
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
        assert np.isfinite(summary["entropy"][k]).all()
    trace = load_checkpoint(results_dir / "checkpoint.npz")[3]
    for k in range(n_layers):
        for name in ("probs", "importance_mean", "importance_std"):
            matrix = trace.matrix(name, k)
            assert matrix.shape == (steps, n_candidates) and np.isfinite(matrix).all(), name
        assert (trace.matrix("importance_std", k) >= 0).all()
        assert np.abs(trace.matrix("importance_mean", k)).max() > 0
        np.testing.assert_allclose(trace.matrix("probs", k)[-1], policy.probs[k], atol=1e-6)
    return trace


def search_batch(n_points, n_dense, n_val, n_gtr=0, n_copies=0, seed=1):
    """Random normalised images standing in for the augmented search points."""
    rng = np.random.default_rng(seed)
    img = (SIZE, SIZE, CHANNELS)
    batch = {"aug": rng.normal(size=(n_points, n_dense, *img)),
             "labels": rng.integers(0, N_CLASSES, n_points),
             "val": rng.normal(size=(n_points, n_val, *img)),
             "val_labels": rng.integers(0, N_CLASSES, (n_points, n_val))}
    if n_gtr:
        batch["gtr"] = rng.normal(size=(n_points, n_gtr, *img))
        batch["dense"] = rng.normal(size=(n_points, n_copies, n_dense, *img))
    return batch


def run_steps(strategy, chunk_size=3):
    """One stage-1 and one stage-k step of a 2-layer policy over 4 points; a dict of arrays."""
    import keras
    from policy_search.importance import GradientMatcher
    from policy_search.layers import PolicyLogits, Searcher

    with strategy.scope():
        model = tiny_model(keras)
    matcher = GradientMatcher(model, strategy, chunk_size=chunk_size)
    policy = PolicyLogits(2, 6, 0, 0.025)
    searcher = Searcher(matcher, policy, "cifar")
    batch = search_batch(4, 6, 5, n_gtr=7, n_copies=2)
    s1 = searcher.stage1_step(batch)
    s2 = searcher.stagek_step(1, batch)
    return {"cos1": s1["cos_sim"], "imp1": s1["importance"], "loss1": s1["loss"],
            "cos2": s2["cos_sim"], "imp2": s2["importance"], "loss2": s2["loss"],
            "logits": policy.get_state()["logits"]}


def make_data(directory, n=480, classes=4, size=16, seed=0):
    """An ``npz:`` dataset of colour-coded classes with noise: learnable in one epoch, so
    gradients are meaningful."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    for split, m in (("train", n), ("test", 64)):
        y = rng.integers(0, classes, m)
        x = rng.integers(0, 80, (m, size, size, 3))
        x[np.arange(m), :, :, y % 3] += 140
        x[y >= 3, : size // 2] += 30
        np.savez(directory / f"{split}_0.npz", x=np.clip(x, 0, 255).astype(np.uint8), y=y)
    return directory


def search_env(**extra) -> dict:
    """The environment of a search process: this checkout's packages, the CPU."""
    return dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="",
                TF_CPP_MIN_LOG_LEVEL="2", **extra)


def search(args, tmp, expect=0, command=None, **kwargs):
    """``DeepAA_search.py ARGS`` (or ``command + ARGS``, e.g. torchrun) in ``tmp`` in a fresh
    process; fails with its stderr unless it exits with ``expect``."""
    command = command or [sys.executable, str(ROOT / "DeepAA_search.py")]
    res = subprocess.run([*command, *args], cwd=tmp, capture_output=True, text=True,
                         timeout=300, env=search_env(), **kwargs)
    assert res.returncode == expect, res.stderr[-3000:]
    return res


def common_flags(data) -> list:
    """A small search on ``make_data``'s dataset: WRN-10-1, 29 candidates, 2 layers x 4
    steps, seed 3 (with the cpu preset's sizes otherwise)."""
    return ["--dataset", f"npz:{data}", "--n_classes", "4", "--use_model", "WRN_10_1",
            "--preset", "cpu", "--l_mags", "3", "--n_policies", "2", "--search_bno", "4",
            "--seed", "3"]


def stop_when_logged(proc, log, line, sig, timeout=240):
    """Send ``sig`` to the search ``proc`` once its ``log`` file holds ``line``; returns
    (exit code, stderr)."""
    import time

    try:
        deadline = time.time() + timeout
        while time.time() < deadline and not (log.exists() and line in log.read_text()):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.02)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err.decode()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_workers(commands, env, timeout=300):
    """Run one process per command as MultiWorker workers 0..n-1 on loopback ports (TF_CONFIG
    added to ``env``) and wait for all; fails with a worker's stderr if one exits non-zero."""
    import json

    workers = [f"127.0.0.1:{free_port()}" for _ in commands]
    procs = []
    for index, command in enumerate(commands):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        procs.append(subprocess.Popen(command, env=dict(env, TF_CONFIG=json.dumps(config)),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, err.decode()[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--cpu_replicas", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
    from policy_search.devices import make_strategy, n_replicas
    strategy = make_strategy(cpu_replicas=args.cpu_replicas)
    with keras_float64():
        result = run_steps(strategy)
    result["replicas"] = n_replicas(strategy)
    tmp = args.out + ".tmp.npz"
    np.savez(tmp, **result)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()

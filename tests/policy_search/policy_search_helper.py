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
    """max |a − b| / max |b|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


def check_importance_maths(r, g_val, g_tr, cos, G, g_val_ref, p):
    """The finite-difference check of SPEC §2's importance, for either backend (float64):
    g_val and g_tr (flattened) equal the per-example references (G: [N, params] per-example
    gradients of the training images, g_val_ref: the mean validation gradient); r equals the
    central difference in p of cos(g_val, Σ_i p_i ∇ℓ_i); the cosine is that cosine at p; and
    Σ p_i r_i = 0, since the tangent is orthogonal to g_tr."""
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


def stop_and_resume(tmp, common, weights):
    """A search stopped in the middle of layer 2 (4 steps of layer 1 + 1 of layer 2) and
    resumed ends with the policy of the uninterrupted search in ``tmp/full``."""
    from augmentation import load_policy

    part = tmp / "part"
    args = common + ["--pretrained", weights, "--results_dir", str(part)]
    run_search(args + ["--stop_after_steps", "5"], tmp)
    assert (part / "checkpoint.npz").is_file() and not (part / "policy.yaml").exists()
    res = run_search(args + ["--resume"], tmp)
    assert "resumed at layer 2, step 1" in (part / "search.log").read_text(), res.stderr[-500:]
    full, resumed = load_policy(tmp / "full" / "policy.yaml"), load_policy(part / "policy.yaml")
    np.testing.assert_allclose(resumed.probs, full.probs, rtol=0, atol=1e-9)
    assert resumed.meta["cos_sim_trace"] == full.meta["cos_sim_trace"]


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


def make_search_data(directory, n=480, classes=4, size=16, seed=0):
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


def run_search(args, cwd, command=None, timeout=300):
    """``DeepAA_search.py ARGS`` (or ``command + ARGS``) in a fresh process on the CPU; fails
    with its stderr unless it exits 0."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="",
               TF_CPP_MIN_LOG_LEVEL="2")
    command = command or [sys.executable, str(ROOT / "DeepAA_search.py")]
    res = subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True,
                         timeout=timeout, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


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

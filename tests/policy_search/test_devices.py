"""Strategies: two CPU replicas and two local workers give the one-replica importances."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import keras

from policy_search.devices import is_chief, make_strategy, n_replicas
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helper, in any import mode
import policy_search_helper  # noqa: E402

HELPER = Path(policy_search_helper.__file__).resolve()
KEYS = ("cos1", "imp1", "loss1", "cos2", "imp2", "loss2", "logits")


@pytest.fixture(scope="module")
def one_replica():
    """The reference: the helper's steps under the default strategy, in this process."""
    with policy_search_helper.keras_float64():
        return policy_search_helper.run_steps(tf.distribute.get_strategy())


def child_env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def assert_same(result, reference):
    for key in KEYS:
        np.testing.assert_allclose(result[key], reference[key], rtol=1e-9, atol=1e-13,
                                   err_msg=key)
    assert np.abs(reference["imp2"]).max() > 1e-4  # the comparison is not between zeros


def test_default_strategy_without_gpu_or_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    strategy = make_strategy()
    assert n_replicas(strategy) == 1 and is_chief(strategy)
    with pytest.raises(ValueError, match="cpu_replicas"):
        make_strategy(-1)
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG"):
        make_strategy()


def test_cpu_split_after_initialisation_is_refused(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    tf.constant(1.0) + 1.0  # devices are initialised from here on
    if len(tf.config.list_logical_devices("CPU")) == 3:
        pytest.skip("this process already has exactly three logical CPUs")
    with pytest.raises(RuntimeError, match="already initialised"):
        make_strategy(cpu_replicas=3)


def test_two_cpu_replicas_match_one(tmp_path, one_replica):
    out = tmp_path / "two.npz"
    subprocess.run([sys.executable, str(HELPER), str(out), "--cpu_replicas", "2"],
                   env=child_env(), check=True, timeout=120, capture_output=True)
    result = np.load(out)
    assert int(result["replicas"]) == 2
    assert_same(result, one_replica)


def test_two_workers_match_one_process(tmp_path, one_replica):
    policy_search_helper.run_workers(
        [[sys.executable, str(HELPER), str(tmp_path / f"worker{index}.npz")] for index in range(2)],
        child_env(), timeout=120)
    for index in range(2):
        result = np.load(tmp_path / f"worker{index}.npz")
        assert int(result["replicas"]) == 2
        assert_same(result, one_replica)


def test_is_chief_agrees_with_the_rule_read_before_tensorflow_starts():
    """The process that writes files, once the strategy exists (is_chief) and before
    (checkpoint.writes_results from TF_CONFIG), for clusters with and without a chief."""
    import json
    from types import SimpleNamespace

    from policy_search.checkpoint import writes_results

    clusters = ({"worker": ["a:1", "b:2"]}, {"chief": ["c:0"], "worker": ["a:1"]})
    tasks = ({"type": "worker", "index": 0}, {"type": "worker", "index": 1}, {"type": "chief"})
    chiefs = 0
    for cluster in clusters:
        for task in tasks:
            if task["type"] not in cluster or task.get("index", 0) >= len(cluster[task["type"]]):
                continue
            resolver = SimpleNamespace(cluster_spec=lambda c=cluster: SimpleNamespace(
                as_dict=lambda: c), task_type=task["type"], task_id=task.get("index", 0))
            strategy = SimpleNamespace(cluster_resolver=resolver)
            env = {"TF_CONFIG": json.dumps({"cluster": cluster, "task": task})}
            assert is_chief(strategy) == writes_results(env), (cluster, task)
            chiefs += is_chief(strategy)
    assert chiefs == 2  # one writer per cluster

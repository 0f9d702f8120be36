"""The search's per-step records and the policy file's summary of them."""
import numpy as np

from augmentation.space import candidates
from policy_search.trace import SearchTrace


def test_records_mean_and_std_of_the_importances_over_points():
    trace = SearchTrace(2, 3)
    importance = np.array([[1.0, 2.0, 0.0], [3.0, 2.0, -4.0]])
    trace.record(1, 0.25, [0.5, 0.25, 0.25], importance)
    assert trace.steps_done(0) == 0 and trace.steps_done(1) == 1
    assert np.allclose(trace.matrix("importance_mean", 1), [[2.0, 2.0, -2.0]])
    assert np.allclose(trace.matrix("importance_std", 1), [[1.0, 0.0, 2.0]])  # ddof = 0
    assert np.allclose(trace.matrix("probs", 1), [[0.5, 0.25, 0.25]])


def test_op_summary_sums_levels_and_keeps_the_last_step():
    cands = candidates("cifar", 3)  # 11 * 2 + 7 = 29 candidates
    names = [n for n, _ in cands]
    trace = SearchTrace(1, len(cands))
    rng = np.random.default_rng(1)
    for _ in range(300):
        trace.record(0, 0.1, rng.dirichlet(np.ones(len(cands))), rng.normal(size=(2, len(cands))))
    summary = trace.op_summary(cands, max_points=50)
    assert summary["ops"][:3] == ["Identity", "ShearX", "ShearY"] and len(summary["ops"]) == 18
    steps, probs = summary["steps"][0], np.array(summary["probs"][0])
    assert len(steps) == 50 and steps[0] == 1 and steps[-1] == 300
    assert probs.shape == (50, 18) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    last = trace.matrix("probs", 0)[-1]
    shear_x = sum(p for p, n in zip(last, names) if n == "ShearX")
    assert abs(probs[-1][1] - shear_x) < 1e-5
    h = -np.sum(last * np.log(last))
    assert len(summary["entropy"][0]) == 50 and abs(summary["entropy"][0][-1] - h) < 1e-4


def test_an_empty_layer_summarises_to_nothing():
    cands = candidates("cifar", 3)
    summary = SearchTrace(2, len(cands)).op_summary(cands)
    assert summary["steps"] == [[], []] and summary["probs"] == [[], []]
    assert summary["entropy"] == [[], []]

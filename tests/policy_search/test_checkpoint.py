"""Search checkpoints: round trip, the message that keeps a fresh run out of a used folder,
and the roll-back after a Ctrl-C inside a step."""
import json

import numpy as np

from policy_search import checkpoint
from policy_search.trace import SearchTrace


def _trace(cos, n_candidates=3, seed=0):
    """A SearchTrace with the given cosines per layer and random other records."""
    rng = np.random.default_rng(seed)
    trace = SearchTrace(len(cos), n_candidates)
    for k, layer in enumerate(cos):
        for c in layer:
            trace.record(k, c, rng.dirichlet(np.ones(n_candidates)),
                         rng.normal(size=(2, n_candidates)))
    return trace


def _meta(n_policies=2):
    return {"flags": {"n_policies": n_policies}, "weights": "w.weights.h5", "splits": [2, 3, 4]}


def test_round_trip(tmp_path):
    path = tmp_path / "checkpoint.npz"
    state = {"logits": np.arange(6.0).reshape(2, 3), "adam_iterations": np.array([4, 0])}
    trace = _trace([[0.1, 0.2], [0.3]])
    checkpoint.save_checkpoint(path, state, 1, 3, trace, _meta())
    got, layer, step, loaded, meta = checkpoint.load_checkpoint(path)
    assert (layer, step) == (1, 3) and loaded.cos == [[0.1, 0.2], [0.3]] and meta == _meta()
    assert all(np.array_equal(got[k], v) for k, v in state.items())
    for name in ("probs", "importance_mean", "importance_std"):
        for k in range(2):
            assert np.array_equal(loaded.matrix(name, k), trace.matrix(name, k))


def test_a_checkpoint_with_cosines_only_loads_with_nan_records(tmp_path):
    """Checkpoints written before the per-step probabilities and importances were kept still
    resume: their steps get NaN rows, one per recorded cosine."""
    path = tmp_path / "checkpoint.npz"
    np.savez(path, **{"policy/logits": np.zeros((2, 3)), "position": np.array([1, 1]),
                      "cos_trace/0": np.array([0.1, 0.2]), "cos_trace/1": np.array([0.3]),
                      "meta_json": np.array(json.dumps(_meta()))})
    _, _, _, loaded, _ = checkpoint.load_checkpoint(path)
    assert loaded.cos == [[0.1, 0.2], [0.3]]
    assert loaded.matrix("probs", 0).shape == (2, 3) and np.isnan(loaded.matrix("probs", 0)).all()
    loaded.record(1, 0.4, np.full(3, 1 / 3), np.zeros((2, 3)))
    assert loaded.matrix("probs", 1).shape == (2, 3) and not np.isnan(loaded.matrix("probs", 1)[1]).any()


def test_a_used_results_folder_is_named_finished_or_not(tmp_path):
    path = tmp_path / "checkpoint.npz"
    checkpoint.save_checkpoint(path, {}, 1, 3, _trace([[0.1], []]), _meta())
    assert "pass --resume" in checkpoint.occupied(str(tmp_path), str(path))
    checkpoint.save_checkpoint(path, {}, 2, 0, _trace([[0.1], [0.2]]), _meta())  # finished
    assert "finished search" in checkpoint.occupied(str(tmp_path), str(path))
    path.write_bytes(b"not a checkpoint")
    assert "pass --resume" in checkpoint.occupied(str(tmp_path), str(path))


class _Logits:
    def __init__(self):
        self.state = {"logits": np.ones(3)}

    def set_state(self, state):
        self.state = state


def test_roll_back_drops_the_cut_steps_update_and_cosine():
    """Ctrl-C after step 2 of layer 1 recorded its cosine: the logits return to their state
    before the step and the trace to its two finished steps, so a resume repeats step 2 once."""
    logits, before = _Logits(), {"logits": np.zeros(3)}
    trace = _trace([[0.5, 0.4, 0.3], [0.2, 0.1, 0.9]])
    assert checkpoint.roll_back((1, 2, before), logits, trace) == (1, 2)
    assert logits.state is before and trace.cos == [[0.5, 0.4, 0.3], [0.2, 0.1]]
    assert all(len(trace.matrix(name, 1)) == 2 for name in ("probs", "importance_mean"))
    trace = _trace([[0.5, 0.4, 0.3], [0.2, 0.1]])  # cut before the step was recorded
    assert checkpoint.roll_back((1, 2, before), logits, trace) == (1, 2)
    assert trace.cos == [[0.5, 0.4, 0.3], [0.2, 0.1]]


def test_only_the_process_that_writes_the_results_takes_the_lock():
    """TensorFlow's rule, read before TensorFlow starts: one machine, worker 0 or the chief."""
    from policy_search.checkpoint import writes_results

    two = {"cluster": {"worker": ["a:1", "b:2"]}}
    assert writes_results({})
    assert writes_results({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1"]},
                                                    "task": {"type": "worker", "index": 0}})})
    assert writes_results({"TF_CONFIG": json.dumps({**two, "task": {"type": "worker",
                                                                    "index": 0}})})
    assert not writes_results({"TF_CONFIG": json.dumps({**two, "task": {"type": "worker",
                                                                        "index": 1}})})
    chief = {"cluster": {"chief": ["c:0"], "worker": ["a:1"]}}
    assert writes_results({"TF_CONFIG": json.dumps({**chief, "task": {"type": "chief"}})})
    assert not writes_results({"TF_CONFIG": json.dumps({**chief, "task": {"type": "worker",
                                                                          "index": 0}})})
    assert writes_results({"TF_CONFIG": "{not json"})  # make_strategy reports it


def test_torchrun_rank_zero_writes_the_results():
    from policy_search.checkpoint import writes_results

    assert writes_results({}, backend="torch")
    assert writes_results({"RANK": "0", "WORLD_SIZE": "2"}, backend="torch")
    assert not writes_results({"RANK": "1", "WORLD_SIZE": "2"}, backend="torch")
    two = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}
    assert writes_results({"TF_CONFIG": json.dumps(two)}, backend="torch")  # not torch's

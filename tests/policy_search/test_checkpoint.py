"""Search checkpoints: round trip, what a damaged or foreign checkpoint gives (one line naming
--resume), the message that keeps a fresh run out of a used folder, the roll-back after a
Ctrl-C inside a step, and the pretraining checkpoint."""
import argparse
import io
import json
import pickle

import numpy as np
import pytest

from policy_search import checkpoint
from policy_search.config import UsageError
from policy_search.trace import MATRICES, SearchTrace

K, D, STEPS = 2, 29, 4  # layers, candidates (l_mags 3), steps per layer


def _trace(cos, n_candidates=D, seed=0):
    """A SearchTrace with the given cosines per layer and random other records."""
    rng = np.random.default_rng(seed)
    trace = SearchTrace(len(cos), n_candidates)
    for k, layer in enumerate(cos):
        for c in layer:
            trace.record(k, c, rng.dirichlet(np.ones(n_candidates)),
                         rng.normal(size=(2, n_candidates)))
    return trace


def _meta(n_policies=K):
    return {"flags": {"n_policies": n_policies}, "weights": "w.weights.h5", "splits": [2, 3, 4]}


def _state(k=K, d=D):
    rng = np.random.default_rng(0)
    return {"logits": rng.normal(size=(k, d)).astype(np.float32),
            "adam_iterations": np.array([STEPS, 1], np.int64),
            "adam_momentum": rng.normal(size=(k, d)).astype(np.float32),
            "adam_velocity": rng.random((k, d)).astype(np.float32)}


def _args(tmp_path):
    return argparse.Namespace(n_policies=K, search_bno=STEPS, results_dir=str(tmp_path))


def test_round_trip(tmp_path):
    path = tmp_path / "checkpoint.npz"
    state, trace = _state(), _trace([[0.1, 0.2, 0.3, 0.4], [0.3]])
    checkpoint.save_checkpoint(path, state, 1, 1, trace, _meta())
    got = checkpoint.load_checkpoint(path)
    _, layer, step, loaded, meta = got
    assert (layer, step) == (1, 1) and loaded.cos == trace.cos and meta == _meta()
    assert all(np.array_equal(got[0][k], v) for k, v in state.items())
    for name in MATRICES:
        for k in range(K):
            assert np.array_equal(loaded.matrix(name, k), trace.matrix(name, k))
    checkpoint.check_progress(_args(tmp_path), got, D)


def test_a_checkpoint_with_cosines_only_loads_with_nan_records(tmp_path):
    """Checkpoints written before the per-step probabilities and importances were kept still
    resume: their steps get NaN rows, one per recorded cosine."""
    path = tmp_path / "checkpoint.npz"
    np.savez(path, **{f"policy/{k}": v for k, v in _state().items()},
             **{"position": np.array([1, 1]), "cos_trace/0": np.array([0.1, 0.2, 0.3, 0.4]),
                "cos_trace/1": np.array([0.3]), "meta_json": np.array(json.dumps(_meta()))})
    got = checkpoint.load_checkpoint(path)
    loaded = got[3]
    assert loaded.cos == [[0.1, 0.2, 0.3, 0.4], [0.3]]
    assert loaded.matrix("probs", 0).shape == (4, D) and np.isnan(loaded.matrix("probs", 0)).all()
    checkpoint.check_progress(_args(tmp_path), got, D)
    loaded.record(1, 0.4, np.full(D, 1 / D), np.zeros((2, D)))
    assert loaded.matrix("probs", 1).shape == (2, D)
    assert not np.isnan(loaded.matrix("probs", 1)[1]).any()


def test_a_checkpoint_without_precision_resumes_as_fp32():
    """--precision came after the first checkpoints: one without it was made in float32."""
    meta = {"flags": {key: 1 for key in checkpoint.RESUME_KEYS if key != "precision"}}
    args = argparse.Namespace(**meta["flags"], precision="fp32", pretrained=None)
    checkpoint.check_resume(args, meta)
    args.precision = "bf16"
    with pytest.raises(UsageError, match="made with --precision 'fp32', not 'bf16'"):
        checkpoint.check_resume(args, meta)


def _npz(**arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _good(tmp_path):
    path = tmp_path / "good.npz"
    checkpoint.save_checkpoint(path, _state(), 1, 1, _trace([[0.1] * STEPS, [0.3]]), _meta())
    return dict(np.load(path))


def _without(arrays, key):
    return {k: v for k, v in arrays.items() if k != key}


# Each case: the checkpoint's bytes, made from a good one.
DAMAGED = {
    "truncated": lambda g, raw: raw[:len(raw) // 2],
    "empty": lambda g, raw: b"",
    "not an npz": lambda g, raw: b"a search's progress",
    "a pickle": lambda g, raw: pickle.dumps({"position": [0, 0]}),
    "a flipped byte": lambda g, raw: raw[:200] + bytes([raw[200] ^ 0xFF]) + raw[201:],
    "no position": lambda g, raw: _npz(**_without(g, "position")),
    "a float position": lambda g, raw: _npz(**dict(g, position=np.array([1.0, 1.0]))),
    "a position of 3 numbers": lambda g, raw: _npz(**dict(g, position=np.array([1, 1, 0]))),
    "no logits": lambda g, raw: _npz(**_without(g, "policy/logits")),
    "NaN logits": lambda g, raw: _npz(**{**g, "policy/logits": g["policy/logits"] * np.nan}),
    "text logits": lambda g, raw: _npz(**{**g, "policy/logits": np.array(["a", "b"])}),
    "a NaN cosine": lambda g, raw: _npz(**{**g, "cos_trace/1": np.array([np.nan])}),
    "no meta": lambda g, raw: _npz(**_without(g, "meta_json")),
    "meta not JSON": lambda g, raw: _npz(**dict(g, meta_json=np.array("{flags"))),
    "meta a list": lambda g, raw: _npz(**dict(g, meta_json=np.array("[1, 2]"))),
    "weights a number": lambda g, raw: _npz(**dict(g, meta_json=np.array(json.dumps(
        {"flags": {}, "weights": 3})))),
    "probs of another width": lambda g, raw: _npz(**{**g, "prob_trace/0":
                                                      g["prob_trace/0"][:, 1:]}),
    "a probability row too many": lambda g, raw: _npz(**{**g, "prob_trace/1": np.concatenate(
        [g["prob_trace/1"]] * 2)}),
    "text importances": lambda g, raw: _npz(**{**g, "importance_mean/0": np.array(
        [["a"] * D] * STEPS)}),
    "a cosine trace missing": lambda g, raw: _npz(**_without(g, "cos_trace/0")),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_a_damaged_checkpoint_is_one_line_naming_resume(tmp_path, case):
    good = _good(tmp_path)
    raw = (tmp_path / "good.npz").read_bytes()
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(DAMAGED[case](good, raw))
    with pytest.raises(UsageError) as err:
        checkpoint.load_checkpoint(path)
    assert err.value.flag == "--resume" and "\n" not in str(err.value)
    assert "checkpoint.npz is not a usable checkpoint" in str(err.value)


# Each case: (layer, step, traces) or a state of the wrong shape, for 2 layers of 4 steps.
OUT_OF_PLACE = {
    "a layer beyond the last": (3, 0, [[0.1] * 4, [0.1] * 4]),
    "a negative step": (1, -1, [[0.1] * 4, []]),
    "a step beyond the layer": (1, 4, [[0.1] * 4, [0.1] * 4]),
    "a finished run with a step": (2, 1, [[0.1] * 4, [0.1] * 4]),
    "a position ahead of its traces": (1, 2, [[0.1] * 4, [0.1]]),
    "a layer cut short": (1, 0, [[0.1] * 3, []]),
    "traces of three layers": (2, 0, [[0.1] * 4, [0.1] * 4, [0.1]]),
}


@pytest.mark.parametrize("case", sorted(OUT_OF_PLACE) + ["logits of another shape"])
def test_a_position_or_shape_the_flags_cannot_reach_is_refused(tmp_path, case):
    """A position out of range used to be accepted and silently cut the layer short."""
    path = tmp_path / "checkpoint.npz"
    layer, step, cos = OUT_OF_PLACE.get(case, (1, 1, [[0.1] * 4, [0.1]]))
    state = _state(k=3) if case == "logits of another shape" else _state()
    checkpoint.save_checkpoint(path, state, layer, step, _trace(cos), _meta())
    with pytest.raises(UsageError, match="--resume: .*checkpoint.npz is not a usable"):
        checkpoint.check_progress(_args(tmp_path), checkpoint.load_checkpoint(path), D)


def test_the_positions_a_run_writes_are_accepted(tmp_path):
    """Start (before any step), mid-layer, a layer boundary and the end of the search."""
    path = tmp_path / "checkpoint.npz"
    for layer, step, cos in ((0, 0, [[], []]), (0, 3, [[0.1] * 3, []]),
                             (1, 0, [[0.1] * 4, []]), (2, 0, [[0.1] * 4, [0.2] * 4]),
                             (1, 0, [[0.1] * 4])):  # traces of layers not begun may lack
        checkpoint.save_checkpoint(path, _state(), layer, step, _trace(cos), _meta())
        checkpoint.check_progress(_args(tmp_path), checkpoint.load_checkpoint(path), D)


def test_a_used_results_folder_is_named_finished_or_not(tmp_path):
    path = tmp_path / "checkpoint.npz"
    checkpoint.save_checkpoint(path, _state(), 1, 3, _trace([[0.1] * 4, [0.1] * 3]), _meta())
    assert "pass --resume" in checkpoint.occupied(str(tmp_path), str(path))
    checkpoint.save_checkpoint(path, _state(), 2, 0, _trace([[0.1] * 4, [0.2] * 4]), _meta())
    assert "finished search" in checkpoint.occupied(str(tmp_path), str(path))
    path.write_bytes(b"not a checkpoint")
    assert "pass --resume" in checkpoint.occupied(str(tmp_path), str(path))


def test_pretraining_round_trip_and_damage(tmp_path):
    path = tmp_path / "pretrain_checkpoint.npz"
    weights = [np.ones((3, 3, 3, 4), np.float32), np.zeros(4, np.float32)]
    variables = [np.array(12, np.int64), np.full((3, 3, 3, 4), 0.5, np.float32)]
    checkpoint.save_pretraining(path, weights, variables, 2, _meta())
    w, v, epoch, meta = checkpoint.load_pretraining(path, nb_epochs=4)
    assert epoch == 2 and meta == _meta()
    assert all(np.array_equal(a, b) for a, b in zip(w + v, weights + variables))
    checkpoint.check_shapes(path, "weights", w, [a.shape for a in weights])
    with pytest.raises(UsageError, match="2 weights arrays where the model has 3"):
        checkpoint.check_shapes(path, "weights", w, [(3, 3, 3, 4), (4,), (4,)])
    with pytest.raises(UsageError, match="epoch 2 is outside 1..1"):
        checkpoint.load_pretraining(path, nb_epochs=1)  # a checkpoint of a longer pretraining
    checkpoint.save_pretraining(path, [np.full(3, np.nan)], variables, 2, _meta())
    with pytest.raises(UsageError, match="not finite"):
        checkpoint.load_pretraining(path, nb_epochs=4)
    path.write_bytes(b"")
    with pytest.raises(UsageError, match="^--resume: .*not a usable checkpoint"):
        checkpoint.load_pretraining(path, nb_epochs=4)


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

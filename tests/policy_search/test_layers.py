"""Policy logits, Adam updates and the stage-1 / stage-k search steps (SPEC §2)."""
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import keras

from policy_search.importance import GradientMatcher
from policy_search.layers import PolicyLogits, Searcher
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helper, in any import mode
from policy_search_helper import float64, search_batch, tiny_model  # noqa: E402,F401


def test_logits_start_at_identity():
    d, identity = 7, 2
    policy = PolicyLogits(3, d, identity, 0.025)
    expected = np.full(d, 1.0) / (np.exp(8.0) + d - 1)
    expected[identity] = np.exp(8.0) / (np.exp(8.0) + d - 1)
    np.testing.assert_allclose(policy.all_probs(), np.tile(expected, (3, 1)), rtol=1e-6)
    np.testing.assert_allclose(policy.all_logits().mean(axis=1), 0.0, atol=1e-6)
    assert policy.all_logits()[0, identity] == pytest.approx(8.0 - 8.0 / d, rel=1e-6)
    assert policy.probs(1).dtype == np.float64 and policy.probs(1).shape == (d,)


def hand_adam(z, grads, lr=0.025, b1=0.9, b2=0.999, eps=1e-7):
    """Keras' Adam in numpy: ε added to √v, bias correction folded into the step size."""
    m = np.zeros_like(z)
    v = np.zeros_like(z)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        z = z - lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (np.sqrt(v) + eps)
    return z


def loss_grad(z, rbar, scale):
    """∂/∂z of −scale Σ rbar_i softmax(z)_i."""
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    return -scale * p * (rbar - rbar @ p)


@pytest.mark.parametrize("stage_one", [True, False])
def test_adam_steps_match_hand_computation(stage_one):
    d, n_points = 5, 4
    rng = np.random.default_rng(0)
    policy = PolicyLogits(2, d, 0, 0.025)
    z0 = np.full(d, -8.0 / d)
    z0[0] += 8.0
    z, grads = z0, []
    for _ in range(3):
        r = rng.normal(size=(n_points, d))
        if stage_one:
            rbar, scale = r.mean(axis=0), 0.25
        else:  # mean − population std over points
            rbar = r.mean(axis=0) - np.sqrt(((r - r.mean(axis=0)) ** 2).mean(axis=0))
            scale = float(n_points)
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        before = policy.get_state()["logits"]
        _, gradient = policy.gradient(1, r, stage_one=stage_one)  # what the step follows
        expected = loss_grad(z, rbar, scale)  # at float64 logits; the policy's are float32
        np.testing.assert_allclose(gradient, expected, rtol=0, atol=1e-3 * np.abs(expected).max())
        assert np.array_equal(policy.get_state()["logits"], before)
        loss = policy.apply_importance(1, r, stage_one=stage_one)
        assert loss == pytest.approx(-scale * rbar @ p, rel=1e-5, abs=1e-9)
        grads.append(loss_grad(z, rbar, scale))
        z = hand_adam(z0, grads)
        np.testing.assert_allclose(policy.all_logits()[1], z, atol=1e-5)  # float32 logits
    np.testing.assert_allclose(policy.all_logits()[0], PolicyLogits(1, d, 0, 1.0).all_logits()[0])
    assert policy.get_state()["adam_iterations"].tolist() == [0, 3]


def test_adam_is_keras_adam_to_the_bit():
    """The numpy Adam of every layer equals keras.optimizers.Adam(lr, 0.9, 0.999) on float32
    logits over 300 steps of gradients spanning eight orders of magnitude (ε = 1e-7 matters
    for the small ones)."""
    from policy_search.layers import Adam

    rng = np.random.default_rng(0)
    z0 = rng.normal(size=139).astype(np.float32)
    var = keras.Variable(z0.copy(), dtype="float32")
    keras_adam = keras.optimizers.Adam(learning_rate=0.025, beta_1=0.9, beta_2=0.999)
    keras_adam.build([var])
    ours, z = Adam(0.025, 139), z0.copy()
    for _ in range(300):
        g = (rng.normal(size=139) * 10.0 ** rng.uniform(-8, 0)).astype(np.float32)
        keras_adam.apply([tf.constant(g)], [var])
        z = ours.apply(g, z)
        assert z.dtype == np.float32
    np.testing.assert_array_equal(z, var.numpy())
    slots = {v.path.rsplit("_", 1)[-1]: v.numpy() for v in keras_adam.variables}
    np.testing.assert_array_equal(ours.momentum, slots["momentum"])
    np.testing.assert_array_equal(ours.velocity, slots["velocity"])
    assert ours.iterations == keras_adam.iterations.numpy() == 300


def test_update_equals_the_keras_update_of_the_released_search():
    """One apply_importance step equals the former Keras form: the float32 loss
    −scale Σ r̄ softmax(z) differentiated by a tape, then keras' Adam; a state saved from
    Keras' slots (the checkpoint format) continues identically."""
    rng = np.random.default_rng(2)
    d = 139
    policy = PolicyLogits(2, d, 0, 0.025)
    var = keras.Variable(policy.logits[1].copy(), dtype="float32")
    keras_adam = keras.optimizers.Adam(learning_rate=0.025, beta_1=0.9, beta_2=0.999)
    keras_adam.build([var])
    for step in range(6):
        r = rng.normal(size=(4, d)) * 1e-3
        rbar = r.mean(axis=0) - r.std(axis=0)
        with tf.GradientTape() as tape:
            tape.watch(var.value)
            loss = -4.0 * tf.reduce_sum(tf.constant(rbar, tf.float32) * tf.nn.softmax(var.value))
        keras_adam.apply([tape.gradient(loss, var.value)], [var])
        if step == 3:  # a checkpoint of the Keras state, restored into a fresh policy
            slots = {v.path.rsplit("_", 1)[-1]: v.numpy() for v in keras_adam.variables}
            state = policy.get_state()
            state["logits"][1] = var.numpy()
            state["adam_iterations"][1] = keras_adam.iterations.numpy()
            state["adam_momentum"][1] = slots["momentum"]
            state["adam_velocity"][1] = slots["velocity"]
            policy = PolicyLogits(2, d, 0, 0.025)
            policy.set_state(state)
            continue
        assert policy.apply_importance(1, r, stage_one=False) == pytest.approx(
            float(loss), rel=1e-6)
    np.testing.assert_allclose(policy.logits[1], var.numpy(), rtol=1e-6, atol=1e-7)


def test_state_round_trip_gives_identical_next_steps():
    rng = np.random.default_rng(1)
    first = PolicyLogits(2, 6, 3, 0.05)
    for _ in range(2):
        first.apply_importance(0, rng.normal(size=(4, 6)), stage_one=True)
        first.apply_importance(1, rng.normal(size=(4, 6)), stage_one=False)
    second = PolicyLogits(2, 6, 3, 0.05)
    second.set_state(first.get_state())
    for _ in range(2):
        r = rng.normal(size=(4, 6))
        for policy in (first, second):
            policy.apply_importance(1, r, stage_one=False)
    for key, value in first.get_state().items():
        np.testing.assert_array_equal(value, second.get_state()[key], err_msg=key)
    with pytest.raises(ValueError, match="adam_velocity"):
        state = first.get_state()
        state["adam_velocity"] = state["adam_velocity"][:1]
        second.set_state(state)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="identity_index"):
        PolicyLogits(2, 5, 5, 0.1)
    policy = PolicyLogits(2, 5, 0, 0.1)
    with pytest.raises(ValueError, match=r"\[P, 5\]"):
        policy.apply_importance(0, np.zeros((3, 4)), stage_one=True)
    with pytest.raises(IndexError):
        policy.probs(2)


@pytest.fixture
def searcher_parts(float64):
    model = tiny_model(keras)
    return model, GradientMatcher(model, chunk_size=4)


def manual_point(matcher, train, train_labels, weights, val, val_labels, dense, dense_labels):
    g_val = matcher.val_grad(val, val_labels)
    g_tr = matcher.weighted_grad(train, train_labels, weights)
    r = matcher.importance(dense, dense_labels, g_val, g_tr).numpy()
    return GradientMatcher.cosine(g_val, g_tr).numpy(), r


def test_stage1_step_matches_manual_computation(searcher_parts):
    model, matcher = searcher_parts
    policy = PolicyLogits(2, 6, 0, 0.025)
    reference = PolicyLogits(2, 6, 0, 0.025)
    batch = search_batch(2, 6, 5)
    p = policy.probs(0)
    out = Searcher(matcher, policy, "cifar").stage1_step(batch)
    rows, cosines = [], []
    for i in range(2):
        labels = np.full(6, batch["labels"][i])
        cos, r = manual_point(matcher, batch["aug"][i], labels, p, batch["val"][i],
                              batch["val_labels"][i], batch["aug"][i], labels)
        rows.append(r)
        cosines.append(cos)
    np.testing.assert_allclose(out["importance"], np.stack(rows), rtol=1e-10, atol=1e-14)
    assert out["cos_sim"] == pytest.approx(np.mean(cosines), rel=1e-10)
    assert out["loss"] == pytest.approx(reference.apply_importance(0, np.stack(rows), True))
    np.testing.assert_array_equal(policy.all_logits(), reference.all_logits())


def test_stagek_step_matches_manual_computation(searcher_parts):
    model, matcher = searcher_parts
    policy = PolicyLogits(3, 6, 0, 0.025)
    reference = PolicyLogits(3, 6, 0, 0.025)
    batch = search_batch(2, 6, 5, n_gtr=5, n_copies=3)
    out = Searcher(matcher, policy, "cifar").stagek_step(2, batch)
    rows = []
    for i in range(2):
        label = batch["labels"][i]
        per_copy = [manual_point(matcher, batch["gtr"][i], np.full(5, label), np.full(5, 0.2),
                                 batch["val"][i], batch["val_labels"][i], batch["dense"][i, g],
                                 np.full(6, label))[1] for g in range(3)]
        rows.append(np.mean(per_copy, axis=0))
    np.testing.assert_allclose(out["importance"], np.stack(rows), rtol=1e-10, atol=1e-14)
    reference.apply_importance(2, np.stack(rows), stage_one=False)
    np.testing.assert_array_equal(policy.all_logits(), reference.all_logits())
    assert policy.get_state()["adam_iterations"].tolist() == [0, 0, 1]


@pytest.mark.parametrize("stage", [1, 2])
def test_repeated_random_candidates_average_their_copies(searcher_parts, stage):
    """Identical copies of a repeated candidate must give the unrepeated result."""
    model, matcher = searcher_parts
    groups = np.array([0, 1, 1, 2, 3, 3, 3])
    plain = search_batch(2, 4, 5, n_gtr=5, n_copies=2)
    repeated = dict(plain, aug=plain["aug"][:, groups], dense=plain["dense"][:, :, groups],
                    dense_groups=groups)
    results = []
    for batch in (plain, repeated):
        searcher = Searcher(matcher, PolicyLogits(2, 4, 0, 0.025), "cifar")
        out = searcher.stage1_step(batch) if stage == 1 else searcher.stagek_step(1, batch)
        results.append((out["importance"], out["cos_sim"], searcher.policy.all_logits()))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-9, atol=1e-14)
    assert results[0][1] == pytest.approx(results[1][1], rel=1e-10)
    np.testing.assert_allclose(results[0][2], results[1][2], atol=1e-6)


@pytest.mark.parametrize("space", ["cifar", "imagenet"])
def test_uint8_batches_are_normalised_on_the_device(searcher_parts, space):
    """data.StepBuilder's uint8 batches give the steps of the same batches normalised on the
    host (data.normalize) with the space's statistics."""
    from policy_search import data

    model, matcher = searcher_parts
    rng = np.random.default_rng(4)
    shape = search_batch(2, 4, 3, n_gtr=3, n_copies=2)
    raw = {k: rng.integers(0, 256, v.shape, dtype=np.uint8) if v.dtype == np.float64 else v
           for k, v in shape.items()}
    floats = {k: data.normalize(v, space).astype(np.float64) if v.dtype == np.uint8 else v
              for k, v in raw.items()}
    outs = []
    for batch in (raw, floats):
        searcher = Searcher(matcher, PolicyLogits(2, 4, 0, 0.025), space)
        outs.append((searcher.stage1_step(batch)["importance"],
                     searcher.stagek_step(1, batch)["importance"]))
    for got, want in zip(*outs):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-14)
    other = "imagenet" if space == "cifar" else "cifar"
    wrong = Searcher(matcher, PolicyLogits(2, 4, 0, 0.025), other).stage1_step(raw)
    assert not np.allclose(wrong["importance"], outs[1][0], rtol=1e-3)


def test_searcher_refuses_bad_batches(searcher_parts):
    model, matcher = searcher_parts
    searcher = Searcher(matcher, PolicyLogits(2, 4, 0, 0.025), "cifar")
    batch = search_batch(2, 4, 3, n_gtr=3, n_copies=2)
    with pytest.raises(ValueError, match="dense_groups"):
        searcher.stage1_step(dict(batch, dense_groups=np.array([0, 1, 1, 2])))
    with pytest.raises(ValueError, match="lacks 'gtr'"):
        searcher.stagek_step(1, {k: v for k, v in batch.items() if k != "gtr"})
    with pytest.raises(ValueError, match="1 <= k"):
        searcher.stagek_step(0, batch)
    with pytest.raises(ValueError, match="uint8 or normalised floats"):
        searcher.stage1_step(dict(batch, aug=batch["aug"].astype(np.int64)))
    with pytest.raises(ValueError, match="space"):
        Searcher(matcher, PolicyLogits(2, 4, 0, 0.025), "svhn")

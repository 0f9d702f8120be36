"""Gradient matching (SPEC §2): importances against explicit per-example gradients."""
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import keras

from policy_search.importance import GradientMatcher
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helper, in any import mode
from policy_search_helper import (N_CLASSES, check_chunking_changes_nothing,  # noqa: E402,F401
                                  check_importance_maths, flat, float64, importance_setup,
                                  rel_err, search_batch, tiny_model)


def per_example_grads(model, images, labels):
    """[N, n_params] flattened ∇θ ℓ(x_i), one tape per image (independent of the matcher)."""
    rows = []
    for x, y in zip(images, labels):
        with tf.GradientTape() as tape:
            logits = model(x[None], training=False)
            loss = keras.losses.sparse_categorical_crossentropy(
                np.array([y]), logits, from_logits=True)[0]
        grads = tape.gradient(loss, model.trainable_variables)
        rows.append(np.concatenate([np.ravel(g) for g in grads]))
    return np.stack(rows)


@pytest.fixture
def setup(float64):
    return importance_setup(tiny_model(keras))


def test_importance_is_derivative_of_cosine(setup):
    check_importance_maths(GradientMatcher(setup[0], chunk_size=3), setup, per_example_grads)


def test_jvp_equals_per_example_gradient_dot_tangent(setup):
    model, aug, labels, *_ = setup
    matcher = GradientMatcher(model, chunk_size=2)
    rng = np.random.default_rng(5)
    tangent = [rng.normal(size=tuple(v.shape)) for v in matcher.variables]
    jvp = matcher.jvp(aug, labels, tangent).numpy()
    G = per_example_grads(model, aug, labels)
    assert rel_err(jvp, G @ flat(tangent)) < 1e-10


@pytest.mark.parametrize("chunk_size", [1, 3, 7])
def test_chunked_passes_equal_one_shot(setup, chunk_size):
    check_chunking_changes_nothing(lambda m, c: GradientMatcher(m, chunk_size=c), setup,
                                   chunk_size)


def test_gradient_is_of_the_data_loss_only(float64):
    """The released search differentiated the cross-entropy alone, not model.losses (L2)."""
    inp = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(inp)
    out = keras.layers.Dense(N_CLASSES, kernel_regularizer=keras.regularizers.L2(0.5))(x)
    model = keras.Model(inp, out)
    batch = search_batch(1, 4, 4)
    model(batch["val"][0])
    assert model.losses, "the model must carry a regulariser for this check"
    matcher = GradientMatcher(model)
    g = matcher.mean_grad(batch["val"][0], batch["val_labels"][0])
    ref = per_example_grads(model, batch["val"][0], batch["val_labels"][0]).mean(axis=0)
    assert rel_err(flat(g), ref) < 1e-10


def test_frozen_batch_norm_weights_are_not_matched(float64):
    model = tiny_model(keras)
    matcher = GradientMatcher(model)
    assert not any("gamma" in v.path or "beta" in v.path for v in matcher.variables)
    assert len(matcher.variables) == 4  # conv kernel/bias, dense kernel/bias


def test_bad_input_is_refused(setup):
    model, aug, labels, *_ = setup
    with pytest.raises(ValueError, match="chunk_size"):
        GradientMatcher(model, chunk_size=0)
    with pytest.raises(ValueError, match="same length"):
        GradientMatcher(model).weighted_grad(aug, labels, np.ones(3))


def test_bn_training_uses_chunk_statistics_and_leaves_the_model_unchanged(setup):
    model, aug, labels, val, val_labels, p = setup
    for layer in model.layers:
        layer.trainable = True  # training-mode batch norm needs a trainable layer in Keras 3
    before = [v.numpy() for v in model.weights]
    inference = GradientMatcher(model, chunk_size=7)
    training = GradientMatcher(model, chunk_size=7, bn_training=True)
    # θ is the same in both modes: γ and β stay out although batch norm is trainable here.
    assert len(model.trainable_variables) == 6
    assert [v.path for v in training.variables] == [v.path for v in inference.variables]
    assert len(training.variables) == 4 and not any(
        "batch_normalization" in v.path for v in training.variables)
    g_val = training.val_grad(val, val_labels)
    g_tr = training.weighted_grad(aug, labels, p)
    r = training.importance(aug, labels, g_val, g_tr).numpy()
    # reference: batch statistics of the whole (single) chunk, via training-mode calls
    with tf.GradientTape() as tape:
        logits = model(aug, training=True)
        loss = tf.reduce_sum(p * keras.losses.sparse_categorical_crossentropy(
            labels, logits, from_logits=True))
    ref = tape.gradient(loss, training.variables)
    for var, value in zip(model.weights, before):
        var.assign(value)
    assert rel_err(flat(g_tr), flat(ref)) < 1e-10
    r_inf = inference.importance(aug, labels, inference.val_grad(val, val_labels),
                                 inference.weighted_grad(aug, labels, p)).numpy()
    assert rel_err(r, r_inf) > 1e-3  # batch statistics change the importances
    for var, value in zip(model.weights, before):
        np.testing.assert_array_equal(var.numpy(), value, err_msg=var.path)


def test_tiny_float32_gradients_do_not_underflow():
    """A well-fitted model has gradients whose float32 squares underflow. The cosine is
    scale-free and r = (∇ℓ(a)·t)/(‖g_tr‖‖g_val‖) scales as 1/s when g_val and g_tr scale by s:
    both must hold at s = 1e-24 in float32."""
    model = tiny_model(keras)  # float32
    batch = search_batch(1, 7, 6)
    aug, val = batch["aug"][0], batch["val"][0]
    labels = np.full(7, batch["labels"][0])
    matcher = GradientMatcher(model, chunk_size=4)
    g_val = matcher.val_grad(val, batch["val_labels"][0])
    g_tr = matcher.weighted_grad(aug, labels, np.full(7, 1 / 7, np.float32))
    tiny_val = [g * 1e-24 for g in g_val]
    tiny_tr = [g * 1e-24 for g in g_tr]
    cos = float(GradientMatcher.cosine(g_val, g_tr))
    cos_tiny = float(GradientMatcher.cosine(tiny_val, tiny_tr))
    assert abs(cos_tiny - cos) < 1e-6 and cos_tiny <= 1.0
    r = matcher.importance(aug, labels, g_val, g_tr).numpy()
    r_tiny = matcher.importance(aug, labels, tiny_val, tiny_tr).numpy()
    assert np.all(np.isfinite(r_tiny))
    assert rel_err(r_tiny * 1e-24, r) < 1e-4


def test_bf16_importances_follow_fp32():
    """--precision bf16 computes the same importances as float32 up to bfloat16 rounding:
    the same weights, the same images, importances correlated over the images and the
    gradients float32 (measured on a pretrained WRN-10-1: benchmarks/search_agreement.py)."""
    from networks.tf_models import build_model

    rng = np.random.default_rng(0)
    images = rng.normal(size=(24, 16, 16, 3)).astype(np.float32)
    labels = rng.integers(0, 4, 24)
    val = rng.normal(size=(16, 16, 16, 3)).astype(np.float32)
    val_labels = rng.integers(0, 4, 16)
    models = {p: build_model("WRN_10_1", 4, (16, 16, 3), precision=p) for p in ("fp32", "bf16")}
    models["bf16"].set_weights(models["fp32"].get_weights())
    r = {}
    for precision, model in models.items():
        matcher = GradientMatcher(model, chunk_size=8)
        g_val = matcher.val_grad(val, val_labels)
        g_tr = matcher.mean_grad(images, labels)
        assert all(g.dtype == tf.float32 for g in g_tr)
        r[precision] = matcher.importance(images, labels, g_val, g_tr).numpy()
    assert not np.array_equal(r["fp32"], r["bf16"])  # bf16 really ran
    assert np.corrcoef(r["fp32"], r["bf16"])[0, 1] > 0.995
    assert rel_err(r["bf16"], r["fp32"]) < 0.1

"""The Keras search models: structure, parameter counts and output shapes."""
import numpy as np
import pytest
import tensorflow as tf

from networks import tf_models


def _n_params(model):
    return int(sum(np.prod(v.shape) for v in model.weights if "moving" not in v.path))


def test_wrn_40_2_param_count():
    model = tf_models.build_model("WRN_40_2", 10, (32, 32, 3))
    assert abs(_n_params(model) - 2.2e6) < 0.05e6


def test_wrn_28_10_param_count():
    # Built, never run: the full model is too slow for the test budget.
    model = tf_models.build_model("WRN_28_10", 10, (32, 32, 3))
    assert abs(_n_params(model) - 36.5e6) < 0.2e6


def test_wrn_output_shape_and_l2_terms():
    model = tf_models.build_model("WRN_10_1", 7, (32, 32, 3))
    out = model(np.zeros((3, 32, 32, 3), np.float32), training=False)
    assert tuple(out.shape) == (3, 7)
    convs = [l for l in model.layers if isinstance(l, tf.keras.layers.Conv2D)]
    # Each convolution penalises kernel and bias, the classifier its kernel only.
    assert len(model.losses) == 2 * len(convs) + 1
    bns = [l for l in model.layers if isinstance(l, tf.keras.layers.BatchNormalization)]
    assert all(l.momentum == pytest.approx(0.9) for l in bns)


def test_wrn_other_input_size():
    model = tf_models.build_model("WRN_16_1", 4, (24, 24, 3))
    assert tuple(model(np.zeros((2, 24, 24, 3), np.float32)).shape) == (2, 4)


def test_resnet50_param_count_and_shape():
    model = tf_models.build_model("resnet50", 1000, (224, 224, 3))
    assert abs(_n_params(model) - 25.6e6) < 0.1e6
    small = tf_models.build_model("resnet50", 5, (64, 64, 3))
    assert tuple(small(np.zeros((1, 64, 64, 3), np.float32)).shape) == (1, 5)


@pytest.mark.parametrize("name", ["WRN_41_2", "WRN_4_1", "WRN_40_0", "resnet18", "wrn_40_2"])
def test_unknown_models_rejected(name):
    assert not tf_models.is_known_model(name)
    with pytest.raises(ValueError, match="unknown model"):
        tf_models.build_model(name, 10, (32, 32, 3))


def test_bf16_model_keeps_float32_weights_and_logits():
    """--precision bf16: weights float32 (one weights file serves both), layers compute in
    bfloat16, the classifier in float32; the global dtype policy is left as it was."""
    import keras

    before = keras.config.dtype_policy().name
    model = tf_models.build_model("WRN_10_1", 5, (16, 16, 3), precision="bf16")
    assert keras.config.dtype_policy().name == before
    assert all(v.dtype == "float32" for v in model.weights)
    convs = [l for l in model.layers if isinstance(l, tf.keras.layers.Conv2D)]
    assert convs and all(l.compute_dtype == "bfloat16" for l in convs)
    out = model(np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32))
    assert out.dtype == tf.float32
    fp32 = tf_models.build_model("WRN_10_1", 5, (16, 16, 3))
    assert all(l.compute_dtype == "float32" for l in fp32.layers if l.weights)
    with pytest.raises(ValueError, match="precision"):
        tf_models.build_model("WRN_10_1", 5, (16, 16, 3), precision="fp16")

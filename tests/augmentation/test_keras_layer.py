"""DeepAAPolicyLayer, the policy as a Keras 3 preprocessing layer: Pillow's pixels, in tf.data
and in a model (augmenting in fit, the identity in predict), shapes, errors and saving."""
import re

import numpy as np
import pytest
import tensorflow as tf
import keras

from augmentation import ops, space
from augmentation.keras_layer import DeepAAPolicyLayer
from augmentation.policy import Policy, PolicyError, load_policy, save_policy
from augmentation.transform import DeepAAPolicy


def one_candidate(name: str, level: int, sp: str = "cifar") -> Policy:
    cands = space.candidates(sp, 13)
    probs = np.zeros((1, len(cands)))
    probs[0, cands.index((name, level))] = 1.0
    return Policy(probs, cands, 13, sp)


def photo_batch(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """uint8 N x H x W x 3: smooth gradients with noise, so every op changes something."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], axis=-1)
    return np.clip(base[None] * rng.uniform(0.5, 1, (n, 1, 1, 3))
                   + rng.normal(0, 20, (n, h, w, 3)), 0, 255).astype(np.uint8)


def test_deterministic_ops_give_the_pillow_pixels_with_the_mirror():
    """Ops 0-14 at their lowest, middle and highest candidate levels: every image equals the Pillow op at the level's value or,
    for the signed ops, at its mirror, and both signs occur (evaluation semantics)."""
    from PIL import Image

    x = photo_batch(16, 32, 32, seed=3)
    for name, op in space.OPS.items():
        if op.random:
            continue
        levels = [m for n, m in space.candidates("cifar", 13) if n == name]
        for level in sorted({levels[0], levels[len(levels) // 2], levels[-1]}):
            got = DeepAAPolicyLayer(one_candidate(name, level), seed=1)(x).numpy()
            value = space.level_to_value(name, level, 13) if op.has_magnitude else None
            signs = (1, -1) if op.signed else (1,)
            seen = set()
            for i, img in enumerate(x):
                match = {s for s in signs if np.array_equal(got[i], np.asarray(
                    ops.OP_FUNCTIONS[name](Image.fromarray(img), value and s * value, None)))}
                assert match, (name, level, i)
                seen |= match
            assert seen == set(signs), (name, level)


def test_in_tf_data_the_pixels_are_the_transforms_for_the_same_seed():
    """A whole policy (cifar_1: crops, flips, cutouts too) mapped over a tf.data pipeline of
    batches gives what DeepAAPolicy.apply_numpy gives with the same seed, batch after batch."""
    x = photo_batch(24, 32, 32, seed=5)
    layer = DeepAAPolicyLayer("cifar_1", seed=7)
    ds = tf.data.Dataset.from_tensor_slices(x).batch(8).map(layer)
    got = np.concatenate([b.numpy() for b in ds])
    t = DeepAAPolicy(load_policy("cifar_1"), seed=7)
    want = np.concatenate([t.apply_numpy(x[k:k + 8]) for k in range(0, 24, 8)])
    assert got.dtype == np.uint8 and np.array_equal(got, want)
    assert (got != x).any(axis=(1, 2, 3)).sum() >= 20
    single = tf.data.Dataset.from_tensor_slices(x[:3]).map(DeepAAPolicyLayer("cifar_1", seed=7))
    assert np.array_equal(np.stack([b.numpy() for b in single]),
                          DeepAAPolicy(load_policy("cifar_1"), seed=7).apply_numpy(x[:3]))


def test_in_a_model_it_augments_in_fit_and_is_the_identity_in_predict():
    x = photo_batch(16, 32, 32, seed=6)
    y = np.arange(16) % 10
    layer = DeepAAPolicyLayer("cifar_1", seed=0)
    calls = []
    real = layer.transform.apply_numpy
    layer.transform.apply_numpy = lambda images, rng=None: calls.append(images.shape) or real(
        images, rng)
    model = keras.Sequential([keras.Input((32, 32, 3), dtype="uint8"), layer,
                              keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                              keras.layers.Dense(10)])
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(True))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert calls == [(8, 32, 32, 3)] * 2
    augment = keras.Sequential([keras.Input((32, 32, 3), dtype="uint8"), layer])
    assert np.array_equal(augment.predict(x, verbose=0), x)
    model.predict(x, verbose=0)
    model.evaluate(x, y, verbose=0)
    assert len(calls) == 2
    assert not np.array_equal(augment(x, training=True).numpy(), x)
    symbolic = layer(keras.Input((32, 32, 3), dtype="uint8"))
    assert symbolic.dtype == "uint8" and symbolic.shape == (None, 32, 32, 3)


def test_shapes_single_images_and_the_imagenet_resize():
    small = photo_batch(1, 40, 48, seed=2)[0]
    layer = DeepAAPolicyLayer("imagenet_1", seed=0)
    sizes = {layer(small).shape for _ in range(12)}
    assert sizes <= {(40, 48, 3), (224, 224, 3)} and (224, 224, 3) in sizes
    big = photo_batch(2, 224, 224, seed=1)
    assert layer(big).shape == (2, 224, 224, 3)
    with pytest.raises(ValueError, match="a batch of 40 x 48 images cannot take"):
        layer(np.stack([small, small]))
    spec = layer.compute_output_spec(keras.KerasTensor((40, 48, 3), dtype="uint8"))
    assert spec.shape == (None, None, 3) and spec.dtype == "uint8"
    with pytest.raises(ValueError, match="a batch of 40 x 48 images cannot take"):
        layer(keras.Input((40, 48, 3), dtype="uint8"))  # a batch of a size not known yet
    assert layer(keras.Input((224, 224, 3), dtype="uint8")).shape == (None, 224, 224, 3)


def test_bad_input_and_bad_policies_are_refused_with_one_line_errors(tmp_path):
    layer = DeepAAPolicyLayer("cifar_1")
    for bad, shown in ((np.zeros((2, 8, 8, 3), np.float32), "float32 (2, 8, 8, 3)"),
                       (np.zeros((2, 8, 8, 1), np.uint8), "uint8 (2, 8, 8, 1)"),
                       (np.zeros((8, 8), np.uint8), "uint8 (8, 8)")):
        with pytest.raises(ValueError, match=f"takes uint8 images .*, got {re.escape(shown)}"):
            layer(bad)
    with pytest.raises(TypeError, match="expects a Policy, a shipped policy name or a path"):
        DeepAAPolicyLayer(3)
    with pytest.raises(PolicyError, match="no policy file or shipped policy named 'nope'"):
        DeepAAPolicyLayer("nope")
    path = save_policy(load_policy("cifar_2"), tmp_path / "searched.yaml")
    assert DeepAAPolicyLayer(path).policy == DeepAAPolicyLayer(str(path)).policy == \
        load_policy("cifar_2")


def test_config_and_saved_models_carry_the_whole_policy(tmp_path):
    policy = Policy.from_logits(np.random.default_rng(0).normal(0, 2, (2, 139)),
                                meta={"dataset": "mine"})
    layer = DeepAAPolicyLayer(policy, seed=4)
    again = DeepAAPolicyLayer.from_config(layer.get_config())
    assert again.policy == policy and again.seed == 4
    model = keras.Sequential([keras.Input((32, 32, 3), dtype="uint8"), layer])
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.layers[0].policy == policy
    x = photo_batch(4, 32, 32, seed=9)
    assert np.array_equal(loaded(x, training=True).numpy(),
                          DeepAAPolicy(policy, seed=4).apply_numpy(x))

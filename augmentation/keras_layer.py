"""DeepAAPolicyLayer: a policy as a Keras 3 preprocessing layer, for training a Keras model
with a searched policy (SPEC §3).

The search is TensorFlow; this layer is how a TensorFlow / Keras user trains with what it
found. It applies the policy per image, with the evaluation semantics (each image draws one
candidate per layer, signed ops mirrored with p = 0.5), to uint8 batches N x H x W x 3 or
single images H x W x 3, in a ``tf.data`` pipeline (``ds.map(lambda x, y: (layer(x), y))``)
or as the first layer of a model, where it acts in ``fit`` and leaves the input unchanged in
``predict`` and ``evaluate`` (``training=False``).

The images go through :class:`augmentation.transform.DeepAAPolicy`, that is through the
Pillow ops themselves (``tf.numpy_function`` inside a TensorFlow graph), so the pixels are
Pillow's: the one op table, never a second copy of an op. The layer therefore runs on the
host, is not compiled by XLA (``supports_jit = False``) and needs Keras's TensorFlow backend
inside graphs; eager calls on another backend's tensors work too. A model saved with the
layer keeps the whole policy document in its config.
"""
from __future__ import annotations

import os
import sys

import keras
import yaml

from .ops import IMAGENET_SIZE
from .policy import Policy, load_policy, policy_from_dict, policy_to_yaml
from .transform import DeepAAPolicy


def _as_policy(policy) -> Policy:
    """A Policy from a Policy, a shipped name or a path, or a parsed policy document (a dict,
    as ``get_config`` stores it)."""
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, dict):
        return policy_from_dict(policy)
    if isinstance(policy, (str, os.PathLike)):
        return load_policy(policy)
    raise TypeError(f"DeepAAPolicyLayer expects a Policy, a shipped policy name or a path, "
                    f"got {type(policy).__name__}")


@keras.saving.register_keras_serializable(package="deepaa")
class DeepAAPolicyLayer(keras.layers.Layer):
    """Applies a DeepAA policy to uint8 images N x H x W x 3 (or H x W x 3) while training.

    ``policy``: a :class:`Policy`, a shipped name (``"cifar_1"``) or a policy YAML path (what
    the search writes). ``seed``: None draws fresh entropy on every call; an int makes the
    stream reproducible (in a parallel ``tf.data`` map the order of the calls is not).
    """

    def __init__(self, policy, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.policy = _as_policy(policy)
        self.seed = seed
        self.transform = DeepAAPolicy(self.policy, mirror=True, seed=seed)
        self.supports_jit = False

    def call(self, inputs, training=True):
        if not training:
            return inputs
        self._check(inputs.shape, inputs.dtype)
        tf = sys.modules.get("tensorflow")
        if tf is not None and tf.is_tensor(inputs):
            out = tf.numpy_function(self.transform.apply_numpy, [inputs], tf.uint8,
                                    stateful=True, name="deepaa_policy")
            out.set_shape(self._output_shape(tuple(inputs.shape)))
            return out
        out = self.transform.apply_numpy(keras.ops.convert_to_numpy(inputs))
        return keras.ops.convert_to_tensor(out)

    def _check(self, shape, dtype) -> None:
        """A one-line error at the call (not deep inside the graph) for what the policy cannot
        take; what is known only when the images arrive is checked by ``apply_numpy``."""
        dtype = keras.backend.standardize_dtype(dtype)
        shape = tuple(shape)
        if dtype != "uint8" or len(shape) not in (3, 4) or shape[-1] not in (3, None):
            raise ValueError(f"DeepAAPolicyLayer takes uint8 images N x H x W x 3 or H x W x 3, "
                             f"got {dtype} {shape}")
        if len(shape) == 4 and None not in shape[1:3]:
            self.transform.check_batch_size(*shape[:3])

    def _output_shape(self, shape: tuple) -> tuple:
        """The input's shape, except that a policy that can pick RandResizeCrop makes the
        images it picks 224 x 224, so any other size is unknown until run time."""
        size = tuple(shape[-3:-1])
        if self.transform.resizes and size != (IMAGENET_SIZE, IMAGENET_SIZE):
            return shape[:-3] + (None, None) + shape[-1:]
        return shape

    def compute_output_spec(self, inputs, training=None):
        self._check(inputs.shape, inputs.dtype)
        return keras.KerasTensor(self._output_shape(tuple(inputs.shape)), dtype=inputs.dtype)

    def get_config(self) -> dict:
        """The whole policy document (exact floats), so a saved model carries its policy."""
        return {**super().get_config(), "seed": self.seed,
                "policy": yaml.safe_load(policy_to_yaml(self.policy))}


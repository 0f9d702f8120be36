"""Keras models of the policy search: Wide ResNets for CIFAR-like data and ResNet-50 for ImageNet.

The search differentiates the per-example loss of these models with respect to their weights
(SPEC §2), so the weight layout matters more than raw accuracy. The Wide ResNet follows the
structure of the released search model:

* a 3x3 stem convolution with 16 filters;
* three groups of (depth - 4) / 6 pre-activation blocks with 16k, 32k, 64k filters and strides
  1, 2, 2; a block is BN-ReLU -> 3x3 conv -> (dropout) -> BN-ReLU -> 3x3 conv, the stride sits
  on the block's *second* convolution, and the shortcut is the identity when the channel count
  is unchanged, otherwise a 1x1 convolution (with the stride) of the block's raw input;
* BN-ReLU, global average pooling and a dense classifier.

Convolutions carry a bias and an L2 penalty (2.5e-4, Keras' ``l2 * sum(w**2)``) on kernel and
bias; the classifier has L2 on its kernel only; batch norm (momentum 0.9) has no penalty.
Dropout is 0 in the search (SPEC §2). Keras adds the penalties to ``model.losses``; pretraining
adds them to the loss, the gradient matching leaves them out.

ResNet-50 is the standard bottleneck network (stride on the 3x3 convolution, projection
shortcuts with batch norm, zero-initialised last BN scale of each block). The released code used
a variant with batch norm before each convolution; its checkpoint is not distributed, so we
build the common layout instead and document it in ``pretrained_imagenet/README.md``.
"""
from __future__ import annotations

import keras
from keras import layers

from .names import RESNET50_L2, WRN_L2, is_search_model, search_wrn

BN_MOMENTUM = 0.9
MODEL_NAMES = "WRN_<depth>_<width> (depth = 6n + 4, e.g. WRN_40_2, WRN_28_10, WRN_10_1) or resnet50"



def parse_wrn_name(name: str) -> tuple[int, int] | None:
    """(depth, width) of a name like ``WRN_40_2``, or None when the name is not a valid WRN."""
    return search_wrn(name)


def is_known_model(name: str) -> bool:
    return is_search_model(name)


def _classifier_dtype():
    """float32 for the classifier under a mixed policy (logits and their softmax in float32,
    the usual mixed-precision rule); the global policy otherwise."""
    policy = keras.config.dtype_policy()
    return "float32" if policy.compute_dtype != policy.variable_dtype else None


def _bn_relu(x, name):
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _wrn_conv(filters, kernel, stride, l2, name):
    reg = keras.regularizers.L2(l2)
    return layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=True,
                         kernel_initializer="he_normal", kernel_regularizer=reg,
                         bias_regularizer=reg, name=name)


def _wrn_block(x, filters, stride, l2, dropout, name):
    out = _wrn_conv(filters, 3, 1, l2, f"{name}_conv1")(_bn_relu(x, f"{name}_pre1"))
    if dropout:
        out = layers.Dropout(dropout, name=f"{name}_drop")(out)
    out = _wrn_conv(filters, 3, stride, l2, f"{name}_conv2")(_bn_relu(out, f"{name}_pre2"))
    if x.shape[-1] != filters:
        x = _wrn_conv(filters, 1, stride, l2, f"{name}_proj")(x)
    return layers.Add(name=f"{name}_add")([x, out])


def wide_resnet(depth: int, width: int, n_classes: int, input_shape=(32, 32, 3),
                l2: float = WRN_L2, dropout: float = 0.0, name: str | None = None) -> keras.Model:
    """WRN-depth-width for ``input_shape`` images; outputs logits (see the module docstring)."""
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ValueError(f"WRN depth must be 6n + 4 with n >= 1, got {depth}")
    if width < 1:
        raise ValueError(f"WRN width must be >= 1, got {width}")
    per_group = (depth - 4) // 6
    inputs = keras.Input(shape=tuple(input_shape), name="images")
    x = _wrn_conv(16, 3, 1, l2, "stem_conv")(inputs)
    for g, (filters, stride) in enumerate(zip((16 * width, 32 * width, 64 * width), (1, 2, 2))):
        for b in range(per_group):
            x = _wrn_block(x, filters, stride if b == 0 else 1, l2, dropout, f"g{g}b{b}")
    x = _bn_relu(x, "head")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(n_classes, kernel_regularizer=keras.regularizers.L2(l2),
                           dtype=_classifier_dtype(), name="logits")(x)
    return keras.Model(inputs, outputs, name=name or f"WRN_{depth}_{width}")


def _rn_conv(filters, kernel, stride, l2, name):
    return layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                         kernel_initializer="he_normal",
                         kernel_regularizer=keras.regularizers.L2(l2), name=name)


def _rn_bn(name, zero=False):
    return layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=1e-5, name=name,
                                     gamma_initializer="zeros" if zero else "ones")


def _bottleneck(x, filters, stride, l2, name):
    out = layers.ReLU()(_rn_bn(f"{name}_bn1")(_rn_conv(filters, 1, 1, l2, f"{name}_conv1")(x)))
    out = layers.ReLU()(_rn_bn(f"{name}_bn2")(_rn_conv(filters, 3, stride, l2,
                                                       f"{name}_conv2")(out)))
    out = _rn_bn(f"{name}_bn3", zero=True)(_rn_conv(4 * filters, 1, 1, l2, f"{name}_conv3")(out))
    if stride != 1 or x.shape[-1] != 4 * filters:
        x = _rn_bn(f"{name}_proj_bn")(_rn_conv(4 * filters, 1, stride, l2, f"{name}_proj")(x))
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([x, out]))


def resnet50(n_classes: int = 1000, input_shape=(224, 224, 3), l2: float = RESNET50_L2
             ) -> keras.Model:
    """ResNet-50 (bottleneck blocks 3-4-6-3) producing logits."""
    inputs = keras.Input(shape=tuple(input_shape), name="images")
    x = _rn_conv(64, 7, 2, l2, "stem_conv")(inputs)
    x = layers.ReLU()(_rn_bn("stem_bn")(x))
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for s, (blocks, filters) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
        for b in range(blocks):
            x = _bottleneck(x, filters, 2 if (b == 0 and s > 0) else 1, l2, f"s{s}b{b}")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    reg = keras.regularizers.L2(l2)
    outputs = layers.Dense(n_classes, kernel_regularizer=reg, bias_regularizer=reg,
                           dtype=_classifier_dtype(), name="logits")(x)
    return keras.Model(inputs, outputs, name="resnet50")


PRECISIONS = {"fp32": "float32", "bf16": "mixed_bfloat16"}


def build_model(name: str, n_classes: int, input_shape, precision: str = "fp32") -> keras.Model:
    """The search model called ``name`` (``--use_model``), with dropout 0.

    ``precision`` ``"bf16"`` (``--precision bf16``) builds it under Keras' ``mixed_bfloat16``
    policy: the weights stay float32 (so the same ``.weights.h5`` file loads either way and
    the matched gradients, tangents and inner products stay float32/float64), the layers
    compute in bfloat16, and the classifier computes in float32 so the cross-entropy sees
    float32 logits. A project choice for speed on CPUs with AMX/AVX-512 bf16 and on GPUs; the
    paper's search is float32 (``"fp32"``, the default).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(PRECISIONS[precision])
    try:
        if name == "resnet50":
            model = resnet50(n_classes, input_shape)
        else:
            wrn = parse_wrn_name(name)
            if wrn is None:
                raise ValueError(f"unknown model {name!r}; expected {MODEL_NAMES}")
            model = wide_resnet(wrn[0], wrn[1], n_classes, input_shape, dropout=0.0, name=name)
    finally:
        keras.config.set_dtype_policy(previous)
    return model


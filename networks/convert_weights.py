"""Wide ResNet weights between the TensorFlow and the PyTorch search models.

``networks.tf_models.build_model("WRN_d_k", ...)`` (Keras) and
``networks.torch_models.search_model("WRN_d_k", ...)`` (PyTorch) compute the same function;
this module copies the weights of one into the other, layer by layer (Keras layer names on one
side, module attributes on the other): convolution kernels HWIO <-> OIHW, the dense kernel
transposed, batch norm (γ, β, moving mean, moving variance) <-> (weight, bias, running_mean,
running_var). A layer left over on either side is an error, so a wrong depth, width or class
count never converts silently. ResNet-50 is not converted: the PyTorch search uses
torchvision's ResNet-50, whose padding differs from the Keras one.

Command line (needs both TensorFlow and PyTorch; the direction follows the file names)::

    python -m networks.convert_weights pretrained_WRN_40_2.weights.h5 WRN_40_2.pt \\
        --model WRN_40_2 --n_classes 10
    python -m networks.convert_weights WRN_40_2.pt WRN_40_2.weights.h5 --model WRN_40_2 \\
        --n_classes 10

The provenance record ``IN.json`` of search weights (the split they were pretrained on) is
copied to ``OUT.json``.
"""
from __future__ import annotations

import argparse
import io
import os
import sys

import numpy as np


def layer_pairs(torch_model) -> list[tuple[str, object]]:
    """(Keras layer name, torch module) of every layer with weights of a search WRN."""
    pairs = [("stem_conv", torch_model.conv1)]
    for g, group in enumerate((torch_model.layer1, torch_model.layer2, torch_model.layer3)):
        for b, block in enumerate(group):
            name = f"g{g}b{b}"
            pairs += [(f"{name}_pre1_bn", block.bn1), (f"{name}_conv1", block.conv1),
                      (f"{name}_pre2_bn", block.bn2), (f"{name}_conv2", block.conv2)]
            if len(block.shortcut):
                pairs.append((f"{name}_proj", block.shortcut[0]))
    return pairs + [("head_bn", torch_model.bn1), ("logits", torch_model.linear)]


def _torch_tensors(module) -> list:
    """The module's tensors in the order of its Keras layer's weights."""
    if hasattr(module, "running_mean"):
        return [module.weight, module.bias, module.running_mean, module.running_var]
    return [module.weight, module.bias]


def _to_torch_layout(array: np.ndarray) -> np.ndarray:
    if array.ndim == 4:  # convolution kernel HWIO -> OIHW
        return array.transpose(3, 2, 0, 1)
    if array.ndim == 2:  # dense kernel (in, out) -> (out, in)
        return array.T
    return array


def _to_keras_layout(array: np.ndarray) -> np.ndarray:
    if array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    if array.ndim == 2:
        return array.T
    return array


def _check_cover(keras_model, pairs) -> None:
    weighted = {layer.name for layer in keras_model.layers if layer.weights}
    named = {name for name, _ in pairs}
    if weighted != named:
        extra = sorted(weighted - named) or sorted(named - weighted)
        raise ValueError(f"the two models do not match: layer {extra[0]!r} has no counterpart")


def keras_to_torch(keras_model, torch_model) -> None:
    """Copy a Keras search WRN's weights into the PyTorch search WRN ``torch_model``."""
    import torch

    pairs = layer_pairs(torch_model)
    _check_cover(keras_model, pairs)
    with torch.no_grad():
        for name, module in pairs:
            values = keras_model.get_layer(name).get_weights()
            tensors = _torch_tensors(module)
            if len(values) != len(tensors):
                raise ValueError(f"layer {name!r}: {len(values)} Keras weights, "
                                 f"{len(tensors)} PyTorch tensors")
            for tensor, value in zip(tensors, values):
                value = _to_torch_layout(np.asarray(value))
                if tuple(value.shape) != tuple(tensor.shape):
                    raise ValueError(f"layer {name!r}: shape {tuple(value.shape)} does not fit "
                                     f"{tuple(tensor.shape)}")
                tensor.copy_(torch.from_numpy(np.ascontiguousarray(value)))


def torch_to_keras(torch_model, keras_model) -> None:
    """Copy the PyTorch search WRN's weights into the Keras search WRN ``keras_model``."""
    pairs = layer_pairs(torch_model)
    _check_cover(keras_model, pairs)
    for name, module in pairs:
        layer = keras_model.get_layer(name)
        values = [_to_keras_layout(t.detach().cpu().numpy()) for t in _torch_tensors(module)]
        shapes = [tuple(w.shape) for w in layer.weights]
        if [tuple(v.shape) for v in values] != shapes:
            raise ValueError(f"layer {name!r}: shapes {[v.shape for v in values]} do not fit "
                             f"{shapes}")
        layer.set_weights(values)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m networks.convert_weights",
                                description="Convert search WRN weights between Keras "
                                "(.weights.h5) and PyTorch (.pt state_dict).")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--model", required=True, help="WRN_<depth>_<width>, e.g. WRN_40_2")
    p.add_argument("--n_classes", type=int, required=True)
    args = p.parse_args(argv)
    from augmentation.files import atomic_write
    from networks.names import search_wrn

    to_torch = args.src.endswith(".weights.h5") and args.dst.endswith(".pt")
    if not (to_torch or (args.src.endswith(".pt") and args.dst.endswith(".weights.h5"))):
        p.exit(2, f"{p.prog}: error: convert X.weights.h5 to Y.pt or X.pt to Y.weights.h5\n")
    if search_wrn(args.model) is None:
        p.exit(2, f"{p.prog}: error: --model: expected WRN_<depth>_<width>, got {args.model!r}\n")
    if not os.path.isfile(args.src):
        p.exit(2, f"{p.prog}: error: cannot read {args.src!r}\n")
    import torch  # before TensorFlow

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from networks.tf_models import build_model
    from networks.torch_models import search_model

    keras_model = build_model(args.model, args.n_classes, (32, 32, 3))
    torch_model = search_model(args.model, args.n_classes)
    try:
        if to_torch:
            keras_model.load_weights(args.src)
            keras_to_torch(keras_model, torch_model)
            buffer = io.BytesIO()
            torch.save(torch_model.state_dict(), buffer)
            atomic_write(args.dst, buffer.getvalue())
        else:
            torch_model.load_state_dict(torch.load(args.src, map_location="cpu",
                                                   weights_only=True))
            torch_to_keras(torch_model, keras_model)
            folder, name = os.path.split(os.path.abspath(args.dst))
            tmp = os.path.join(folder, f".{os.getpid()}.tmp.{name}")
            keras_model.save_weights(tmp)
            os.replace(tmp, args.dst)
    except Exception as err:  # a file of another model: one line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        p.exit(2, f"{p.prog}: error: {args.src!r} does not fit {args.model} with "
               f"{args.n_classes} classes: {first}\n")
    if os.path.isfile(args.src + ".json"):
        with open(args.src + ".json", "rb") as f:
            atomic_write(args.dst + ".json", f.read())
    print(f"{args.src} -> {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

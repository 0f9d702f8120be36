"""Search WRN weights between Keras and PyTorch: the same function, a lossless round trip, a
refused mismatch and the command line."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from networks.convert_weights import keras_to_torch, torch_to_keras
from networks.tf_models import build_model
from networks.torch_models import search_model

ROOT = Path(__file__).resolve().parents[2]


def _random(model, seed=0):
    rng = np.random.default_rng(seed)
    for w in model.weights:
        values = rng.normal(0.0, 0.3, size=tuple(w.shape))
        w.assign((0.5 + np.abs(values) if "variance" in w.path else values).astype(w.dtype))


@pytest.mark.parametrize("name, size", [("WRN_10_2", 8), ("WRN_10_2", 9), ("WRN_16_1", 32)])
def test_converted_models_give_the_same_logits(name, size):
    """Even sizes exercise TensorFlow's one-sided "same" padding of the strided convolutions,
    odd sizes its two-sided one; batch norm in inference mode with ε = 1e-3 on both sides."""
    keras_model = build_model(name, 5, (size, size, 3))
    _random(keras_model)
    torch_model = search_model(name, 5).eval()
    keras_to_torch(keras_model, torch_model)
    x = np.random.default_rng(1).normal(size=(4, size, size, 3)).astype(np.float32)
    want = keras_model(x, training=False).numpy()
    with torch.no_grad():
        got = torch_model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    # Symmetric padding (the trainer's WRN) would not be the same function:
    plain = search_model(name, 5).eval()
    plain.load_state_dict(torch_model.state_dict())
    for m in plain.modules():
        if getattr(m, "same_pad", False):
            m.same_pad, m.conv2.padding = False, (1, 1)
    with torch.no_grad():
        other = plain(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    assert (np.abs(other - want).max() > 1e-3 * np.abs(want).max()) == (size % 2 == 0)


def test_round_trip_is_exact_and_mismatches_are_refused():
    keras_model = build_model("WRN_10_1", 3, (8, 8, 3))
    _random(keras_model, seed=2)
    torch_model = search_model("WRN_10_1", 3)
    keras_to_torch(keras_model, torch_model)
    back = build_model("WRN_10_1", 3, (8, 8, 3))
    torch_to_keras(torch_model, back)
    for a, b in zip(keras_model.weights, back.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    with pytest.raises(ValueError, match="counterpart"):
        keras_to_torch(keras_model, search_model("WRN_16_1", 3))
    with pytest.raises(ValueError, match="counterpart"):  # a projection in group 0
        keras_to_torch(keras_model, search_model("WRN_10_2", 3))
    with pytest.raises(ValueError, match="shape"):
        keras_to_torch(keras_model, search_model("WRN_10_1", 4))
    with pytest.raises(ValueError, match="shape"):
        torch_to_keras(search_model("WRN_10_1", 4), back)


def _cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "networks.convert_weights", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=env)


def test_command_line_both_directions(tmp_path):
    keras_model = build_model("WRN_10_1", 4, (32, 32, 3))
    _random(keras_model, seed=3)
    src = tmp_path / "pretrained_WRN_10_1.weights.h5"
    keras_model.save_weights(src)
    (tmp_path / (src.name + ".json")).write_text('{"seed": 3}\n')
    flags = ["--model", "WRN_10_1", "--n_classes", "4"]
    res = _cli(str(src), str(tmp_path / "w.pt"), *flags, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "w.pt.json").read_text() == '{"seed": 3}\n'
    res = _cli(str(tmp_path / "w.pt"), str(tmp_path / "back.weights.h5"), *flags, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    back = build_model("WRN_10_1", 4, (32, 32, 3))
    back.load_weights(tmp_path / "back.weights.h5")
    for a, b in zip(keras_model.weights, back.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, needle in (([str(src), str(tmp_path / "x.h5")], "convert"),
                         ([str(src), str(tmp_path / "x.pt"), "--model", "resnet50",
                           "--n_classes", "4"], "--model"),
                         ([str(src), str(tmp_path / "x.pt"), "--model", "WRN_16_1",
                           "--n_classes", "4"], "does not fit")):
        res = _cli(*args, *([] if "--model" in args else flags), cwd=tmp_path)
        ours = [line for line in res.stderr.splitlines() if "convert_weights: error" in line]
        assert res.returncode == 2 and len(ours) == 1 and needle in ours[0], res.stderr[-2000:]
        assert res.stderr.strip().splitlines()[-1] == ours[0]  # TensorFlow's start-up log aside
    assert sorted(p.name for p in tmp_path.iterdir()) == before

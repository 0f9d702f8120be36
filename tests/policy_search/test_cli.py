"""DeepAA_search.py flags: presets, help, and bad input (one line, exit 2, nothing written)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from policy_search import config

ROOT = Path(__file__).resolve().parents[2]
RELEASED = ["--dataset", "--n_classes", "--use_model", "--n_policies", "--search_bno",
            "--pretrain_lr", "--seed", "--batch_size", "--val_batch_size", "--test_batch_size",
            "--policy_lr", "--l_mags", "--use_pool", "--chunk_size", "--pretrain_size",
            "--nb_epochs", "--EXP_G", "--EXP_gT_factor", "--train_same_labels",
            "--repeat_random_ops", "--N_repeat_random", "--clip_policy_gradient_norm",
            "--policy_bn_training", "--debug"]


def _npz_data(directory, classes=4, n=120, size=8):
    rng = np.random.default_rng(0)
    os.makedirs(directory, exist_ok=True)
    np.savez(os.path.join(directory, "train_0.npz"),
             x=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
             y=np.arange(n) % classes)
    return str(directory)


def _cli(args, cwd, **extra_env):
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="", **extra_env)
    return subprocess.run([sys.executable, str(ROOT / "DeepAA_search.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, env=env)


def test_paper_command_parses_with_its_values():
    cmd = ("--dataset cifar10 --n_classes 10 --use_model WRN_40_2 --n_policies 6 --search_bno "
           "1024 --pretrain_lr 0.1 --seed 1 --batch_size 128 --test_batch_size 512 --policy_lr "
           "0.025 --l_mags 13 --use_pool --pretrain_size 5000 --nb_epochs 45 --EXP_G 16 "
           "--EXP_gT_factor=4 --train_same_labels 16").split()
    args = config.parse_args(cmd)
    preset = config.parse_args(["--preset", "paper", "--dataset", "cifar10", "--n_classes", "10"])
    for key, value in config.PAPER.items():
        assert getattr(args, key) == value == getattr(preset, key)
    assert preset.use_model == args.use_model == "WRN_40_2"
    config.validate(args)


def test_defaults_are_the_released_ones_and_flags_override_presets():
    d = config.parse_args([])
    assert (d.use_model, d.n_classes, d.n_policies, d.search_bno, d.EXP_G, d.chunk_size,
            d.val_batch_size, d.clip_policy_gradient_norm) == ("WRN_28_10", 100, 4, 256, 16,
                                                               None, 1024, 5.0)
    fast = config.parse_args(["--preset", "fast", "--EXP_G", "3"])
    assert (fast.EXP_G, fast.search_bno, fast.train_same_labels, fast.EXP_gT_factor,
            fast.test_batch_size) == (3, 512, 8, 2, 256)
    cpu = config.parse_args(["--preset", "cpu", "--use_model", "WRN_16_1"])
    assert cpu.use_model == "WRN_16_1" and cpu.l_mags == 13 and cpu.EXP_G == 4
    assert (cpu.search_bno, cpu.policy_lr, cpu.n_val_per_point) == (256, 0.025, 64)
    dummies = config.parse_args(["--port", "1234", "--mode", "server"])
    assert (dummies.port, dummies.mode, d.port) == (1234, "server", 38277)  # released types


def test_resume_refuses_a_checkpoint_of_other_search_flags():
    from policy_search import checkpoint

    args = config.parse_args(["--preset", "cpu"])
    meta = {"flags": {key: getattr(args, key) for key in checkpoint.RESUME_KEYS}}
    checkpoint.check_resume(args, meta)  # the same flags resume
    weights = dict(meta, weights="results/pretrained_WRN_10_1.weights.h5")
    checkpoint.check_resume(args, weights)
    with_same = config.parse_args(["--preset", "cpu", "--pretrained", weights["weights"]])
    checkpoint.check_resume(with_same, weights)
    other = config.parse_args(["--preset", "cpu", "--pretrained", "other.weights.h5"])
    with pytest.raises(config.UsageError, match="--pretrained.*leave --pretrained out"):
        checkpoint.check_resume(other, weights)
    # ImageNet's default weights are filled in for a new search, not for a resumed one.
    assert config.parse_args(["--dataset", "imagenet"]).pretrained.endswith(
        "imagenet_resnet50.weights.h5")
    assert config.parse_args(["--dataset", "imagenet", "--resume"]).pretrained is None
    for key, other in (("aug_backend", "pil"), ("EXP_G", 5), ("seed", 2), ("backend", "torch"),
                       ("precision", "bf16")):
        changed = {"flags": dict(meta["flags"], **{key: other})}
        with pytest.raises(config.UsageError, match=f"--{key}"):
            checkpoint.check_resume(args, changed)
    # A checkpoint written before --backend and --precision existed is a fp32 TensorFlow one.
    older = {"flags": {k: v for k, v in meta["flags"].items() if k not in ("backend",
                                                                              "precision")}}
    checkpoint.check_resume(args, older)
    with pytest.raises(config.UsageError, match="--backend 'tf', not 'torch'"):
        checkpoint.check_resume(config.parse_args(["--preset", "cpu", "--backend", "torch"]),
                                older)
    with pytest.raises(config.UsageError, match="--precision 'fp32', not 'bf16'"):
        checkpoint.check_resume(config.parse_args(["--preset", "cpu", "--precision", "bf16"]),
                                older)
    assert config.parse_args(["--dataset", "imagenet", "--backend", "torch"]).pretrained.endswith(
        "imagenet_resnet50.pt")


def test_help_lists_every_released_flag(tmp_path):
    res = _cli(["--help"], tmp_path)
    assert res.returncode == 0
    for flag in RELEASED + ["--preset", "--resume", "--pretrained", "--export_npz", "--out"]:
        assert flag in res.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return _npz_data(tmp_path_factory.mktemp("data") / "tiny")


def _bad_cases(dataset, tmp):
    garbage = tmp / "garbage.weights.h5"
    garbage.write_bytes(b"not a weights file")
    keras_file = tmp / "keras.weights.h5"  # the HDF5 signature of Keras weights
    keras_file.write_bytes(config.HDF5_SIGNATURE + b"\0" * 64)
    earlier = tmp / "earlier_search"  # a fresh run must not overwrite its checkpoint
    earlier.mkdir()
    (earlier / "checkpoint.npz").write_bytes(b"a search's progress")
    base = ["--dataset", f"npz:{dataset}", "--n_classes", "4", "--use_model", "WRN_10_1",
            "--preset", "cpu"]
    return [
        (["--use_model", "WRN_11_2"], "--use_model"),
        (["--use_model", "vgg16"], "--use_model"),
        (["--dataset", "mnist"], "--dataset"),
        (["--n_classes", "10"], "--n_classes"),
        (["--l_mags", "4"], "--l_mags"),
        (["--l_mags", "1"], "--l_mags"),
        (["--train_same_labels", "3", "--cpu_replicas", "2"], "--train_same_labels"),
        (["--dataset", f"npz:{tmp / 'missing'}"], "--dataset"),
        (["--pretrained", str(tmp / "nope.weights.h5")], "--pretrained"),
        (["--pretrained", str(garbage)], "--pretrained"),
        (["--resume"], "--resume"),
        (["--n_classes", "x"], "--n_classes"),
        (["--precision", "fp16"], "--precision"),
        (["--results_dir", str(earlier)], "--results_dir"),
        (["--compile"], "--compile"),
        (["--backend", "jax"], "--backend"),
        (["--backend", "torch", "--cpu_replicas", "2"], "--cpu_replicas"),
        (["--backend", "torch", "--pretrained", str(garbage)], "--pretrained"),
        (["--backend", "torch", "--pretrained", str(keras_file)], "networks.convert_weights"),
    ], base


def test_bad_input_one_line_exit_2_nothing_written(dataset, tmp_path):
    cases, base = _bad_cases(dataset, tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    for extra, flag in cases:
        res = _cli(base + extra, tmp_path)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2, (extra, res.stderr)
        assert len(lines) == 1 and flag in lines[0], (extra, res.stderr)
        assert sorted(p.name for p in tmp_path.iterdir()) == before, extra
    assert os.listdir(tmp_path / "earlier_search") == ["checkpoint.npz"]
    assert (tmp_path / "earlier_search" / "checkpoint.npz").read_bytes() == b"a search's progress"


def test_a_results_dir_in_use_is_refused(dataset, tmp_path):
    """A second search in a folder where one runs (say a --resume started twice) would
    overwrite its checkpoints: exit 2, one line naming the holder's pid."""
    from augmentation.files import exclusive

    _, base = _bad_cases(dataset, tmp_path)
    busy = tmp_path / "busy"
    with exclusive(busy / ".search.lock", "x"):  # this process stands in for the live search
        res = _cli(base + ["--batch_size", "16", "--results_dir", str(busy)], tmp_path)
        assert os.listdir(busy) == [".search.lock"]  # the refused search wrote nothing
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert f"in use by pid {os.getpid()}" in res.stderr and "--results_dir" in res.stderr


def test_missing_cifar_while_offline(tmp_path):
    # No cifar-10-batches-py/ under the root and no network (every proxy points at a closed
    # local port, so the test never downloads even where a network exists): a clean failure.
    root = tmp_path / "empty"
    root.mkdir()
    closed = "http://127.0.0.1:9"
    res = _cli(["--dataset", "cifar10", "--n_classes", "10", "--dataroot", str(root),
                "--preset", "cpu"], tmp_path, http_proxy=closed, https_proxy=closed,
               HTTP_PROXY=closed, HTTPS_PROXY=closed, no_proxy="", NO_PROXY="")
    assert res.returncode == 2 and "--dataset" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()


def _damaged_npz(directory, case):
    """The tiny npz dataset with one kind of damage (generated; the readers' tests try many
    more kinds, without the command line)."""
    data = Path(_npz_data(directory / case.replace(" ", "_")))
    if case == "flipped byte":
        good = (data / "train_0.npz").read_bytes()
        (data / "train_0.npz").write_bytes(good[:300] + bytes([good[300] ^ 0xFF]) + good[301:])
    elif case == "unreadable test split":  # it used to be dropped without a word
        (data / "test_0.npz").write_bytes(b"garbage")
    elif case == "non-square images":  # the search used to crash after pretraining
        np.savez(data / "train_0.npz", x=np.zeros((120, 8, 12, 3), np.uint8),
                 y=np.arange(120) % 4)
    return data


@pytest.mark.parametrize("case", ["flipped byte", "unreadable test split", "non-square images"])
def test_a_damaged_dataset_is_one_line_naming_it(tmp_path, case):
    data = _damaged_npz(tmp_path, case)
    before = sorted(p.name for p in tmp_path.iterdir())
    res = _cli(["--dataset", f"npz:{data}", "--n_classes", "4", "--use_model", "WRN_10_1",
                "--preset", "cpu", "--batch_size", "8", "--aug_backend", "pil"], tmp_path)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr[-2000:]
    assert lines[0].startswith("DeepAA_search.py: error: --dataset: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no results folder


def _search_folder(root, bad_every=0):
    """An ImageFolder of 4 classes x 30 8x8 PNGs; with ``bad_every``, every bad_every-th
    file of each class does not decode."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(4):
        folder = root / "train" / f"c{c}"
        folder.mkdir(parents=True)
        for i in range(30):
            path = folder / f"{i}.png"
            if bad_every and i % bad_every == 1:
                path.write_bytes(b"\x89PNG\r\n\x1a\n and then garbage")
            else:
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
    return root


def test_an_image_that_does_not_decode_mid_run_is_one_line(tmp_path):
    """A folder dataset's images are decoded when used: a damaged one stops the run with one
    line naming the file (after the progress bar), exit 2, no traceback."""
    data = _search_folder(tmp_path / "images", bad_every=3)
    res = _cli(["--dataset", f"folder:{data}", "--n_classes", "4", "--use_model", "WRN_10_1",
                "--preset", "cpu", "--batch_size", "16", "--nb_epochs", "1",
                "--results_dir", str(tmp_path / "r")], tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("DeepAA_search.py: error: --dataset: cannot read image ")
    assert ".png" in last


def test_a_damaged_checkpoint_on_resume_is_one_line(dataset, tmp_path):
    results = tmp_path / "r"
    results.mkdir()
    (results / "checkpoint.npz").write_bytes(b"PK\x03\x04 truncated")
    res = _cli(["--dataset", f"npz:{dataset}", "--n_classes", "4", "--use_model", "WRN_10_1",
                "--preset", "cpu", "--results_dir", str(results), "--resume",
                "--aug_backend", "pil"], tmp_path)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert res.stderr.startswith("DeepAA_search.py: error: --resume: ")
    assert os.listdir(results) == ["checkpoint.npz"]


def test_out_is_held_and_never_overwritten(dataset, tmp_path):
    """Two searches in different folders with one --out: the second is refused while the
    first runs (the lock) and after it has written its policy (an existing --out)."""
    from augmentation.files import exclusive

    out = tmp_path / "shared.yaml"
    base = ["--dataset", f"npz:{dataset}", "--n_classes", "4", "--use_model", "WRN_10_1",
            "--preset", "cpu", "--out", str(out), "--aug_backend", "pil"]  # no torch: faster
    with exclusive(str(out) + ".lock", "x"):  # this process stands in for the first search
        res = _cli(base + ["--results_dir", str(tmp_path / "second")], tmp_path)
    assert res.returncode == 2 and f"--out: {out} is in use by pid {os.getpid()}" in res.stderr
    out.write_text("the first search's policy")
    res = _cli(base + ["--results_dir", str(tmp_path / "third")], tmp_path)
    assert res.returncode == 2 and "--out: " in res.stderr and "exists" in res.stderr
    assert out.read_text() == "the first search's policy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.yaml"]


@pytest.mark.parametrize("flags, flag", [  # test_checks.py tries the others in-process
    (["--policy_lr", "nan"], "--policy_lr"), (["--seed", str(2**64 + 1)], "--seed"),
    (["--out", "/proc/none/p.yaml"], "--out"), (["--pretrained", "/dev/zero"], "--pretrained"),
])
def test_bad_numbers_and_outputs_through_the_command_line(dataset, tmp_path, flags, flag):
    res = _cli(["--dataset", f"npz:{dataset}", "--n_classes", "4", "--use_model", "WRN_10_1",
                "--preset", "cpu", *flags], tmp_path)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert res.stderr.startswith(f"DeepAA_search.py: error: {flag}: ")
    assert list(tmp_path.iterdir()) == []

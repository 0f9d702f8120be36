"""The embedded demo data set: deterministic, well-formed, and shifted between splits."""
import json
import subprocess
import sys

import numpy as np
import pytest

from deepaa_data import load_dataset
from deepaa_data.synthetic import CLASSES, NARROW, SPLIT_RANGES, generate, main, make_synthetic


def test_same_seed_same_images_other_seed_other_images():
    x1, y1 = generate(30, "train", seed=3)
    x2, y2 = generate(30, "train", seed=3)
    x3, _ = generate(30, "train", seed=4)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(x1, x3)
    # Train and test streams never coincide for a seed.
    xt, _ = generate(30, "test", seed=3)
    assert not np.array_equal(x1, xt)


def test_files_shapes_dtypes_and_balanced_classes(tmp_path):
    info = make_synthetic(str(tmp_path), n_train=50, n_test=30, seed=0)
    assert info["classes"] == list(CLASSES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.json", "test_00.npz",
                                                        "train_00.npz"]
    assert json.loads((tmp_path / "classes.json").read_text()) == list(CLASSES)
    with np.load(tmp_path / "train_00.npz") as d:
        assert d["x"].dtype == np.uint8 and d["x"].shape == (50, 32, 32, 3)
        assert d["y"].dtype == np.int64
    train = load_dataset(f"npz:{tmp_path}", split="train")
    test = load_dataset(f"npz:{tmp_path}", split="test")
    assert len(train) == 50 and len(test) == 30 and train.n_classes == 10
    assert np.bincount(train.labels, minlength=10).tolist() == [5] * 10
    assert np.bincount(test.labels, minlength=10).tolist() == [3] * 10
    assert train.image(0).size == (32, 32) and train.image(0).mode == "RGB"
    # Images are not blank: every one has real contrast.
    assert (train.images.reshape(50, -1).std(axis=1) > 5).all()


def test_test_split_is_wider_than_training_split():
    """Narrow training images (half of them) sit left, are barely rotated, never mirrored and
    never occluded; test images go anywhere, are rotated by up to 40 degrees, all mirrored and
    occluded half the time. Scale and photometry vary alike in both."""
    n = 300
    _, _, p_tr = generate(n, "train", seed=1, return_params=True)
    _, _, p_te = generate(n, "test", seed=1, return_params=True)
    narrow = ~p_tr["wide"]
    assert 0.4 < p_tr["wide"].mean() < 0.6 and p_te["wide"].all()
    assert p_tr["cx"][narrow].max() <= SPLIT_RANGES["train"]["cx"][1]
    assert not p_tr["mirror"][narrow].any() and not p_tr["occluder"][narrow].any()
    assert p_te["cx"].max() > 22 and p_te["cx"].min() < 10
    assert p_te["mirror"].all() and 0.35 < p_te["occluder"].mean() < 0.65
    assert 0.3 < p_tr["mirror"][~narrow].mean() < 0.7  # the wide training images
    assert p_tr["mirror"].mean() < 0.4  # so most training images face right, every test one left
    assert p_te["n_clutter"].mean() > p_tr["n_clutter"][narrow].mean() + 1
    # Rotation: at most 5 degrees in narrow images, up to 40 in wide training and test images
    # (beyond what the search model's pretraining covers, SPEC §2).
    assert np.abs(p_tr["angle"][narrow]).max() <= SPLIT_RANGES["train"]["angle"] == 5.0
    assert np.abs(p_tr["angle"][~narrow]).max() > 30 and np.abs(p_te["angle"]).max() > 30
    assert np.abs(p_te["angle"]).max() <= 40.0
    assert np.abs(p_te["angle"]).mean() > 3 * np.abs(p_tr["angle"][narrow]).mean()
    for key in ("brightness", "radius"):
        assert abs(np.abs(p_tr[key]).mean() - np.abs(p_te[key]).mean()) < 0.15 * np.abs(
            p_te[key]).mean()


def test_mirror_asymmetric_classes_differ_from_their_mirror_image():
    """Six classes change under a mirror: a flipped narrow image is not a narrow image."""
    from deepaa_data.synthetic import _shape_mask

    u, v = np.meshgrid(np.linspace(-1, 1, 41), np.linspace(-1, 1, 41))
    changed = [c for c in range(len(CLASSES))
               if (_shape_mask(c, u, v) != _shape_mask(c, -u, v)).mean() > 0.05]
    assert [CLASSES[c] for c in changed] == ["ell", "semi", "flag", "arrow", "crescent", "key"]


def test_bad_sizes_raise_and_write_nothing(tmp_path):
    out = tmp_path / "nope"
    with pytest.raises(ValueError):
        make_synthetic(str(out), n_train=5, n_test=30)
    assert not out.exists()
    with pytest.raises(ValueError):
        generate(10, "validation")


def test_cli_writes_and_bad_input_exits_2(tmp_path, capsys):
    assert main([str(tmp_path / "d"), "--n_train", "20", "--n_test", "10"]) == 0
    assert (tmp_path / "d" / "train_00.npz").is_file()
    res = subprocess.run([sys.executable, "-m", "deepaa_data.synthetic", str(tmp_path / "e"),
                          "--n_train", "3"], capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "at least" in res.stderr
    assert not (tmp_path / "e").exists()


def test_each_drawn_parameter_changes_the_pixels():
    """The renderer uses what it draws: with every other draw the same (one seed, one stream),
    forcing the mirror, a rotation or the occluder on changes the images. The object sits in
    the middle (cx = 16), where a mirror keeps its place: only the shape and its shading flip."""
    n = 20
    base = dict(NARROW, p_wide=0.0, cx=(16.0, 16.0), n_clutter=(0, 0))
    plain = generate(n, "train", seed=3, ranges=base)[0].astype(int)
    assert np.array_equal(generate(n, "train", seed=3, ranges=base)[0], plain)
    for change in (dict(p_mirror=1.0), dict(angle=40.0), dict(p_occluder=1.0)):
        other = generate(n, "train", seed=3, ranges={**base, **change})[0].astype(int)
        differs = np.abs(other - plain).reshape(n, -1).max(axis=1) > 40
        assert differs.mean() > 0.7, change

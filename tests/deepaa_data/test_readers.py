"""The dataset readers on small data written by the tests (torchvision's CIFAR layout, npz
chunks, image folders)."""
import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from deepaa_data import ArrayDataset, DatasetError, load_dataset


def _write_cifar10(root, n_per_batch=6, seed=0):
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    expected = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3 * 32 * 32), dtype=np.uint8)
        labels = rng.integers(0, 10, n_per_batch).tolist()
        with open(base / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels}, f)
        expected[name] = (data, labels)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return expected


def test_cifar10_layout_is_read_as_hwc(tmp_path):
    expected = _write_cifar10(tmp_path)
    train = load_dataset("cifar10", str(tmp_path), "train")
    test = load_dataset("cifar10", str(tmp_path), "test")
    assert len(train) == 30 and len(test) == 6
    assert train.classes == [f"c{i}" for i in range(10)]
    data, labels = expected["data_batch_2"]
    # Image 0 of batch 2 is image 6 of the joined training set; CHW rows become HWC pixels.
    chw = data[0].reshape(3, 32, 32)
    np.testing.assert_array_equal(train.images[6], chw.transpose(1, 2, 0))
    assert train.labels[6] == labels[0]
    assert train.image(6).size == (32, 32) and train.image(6).mode == "RGB"


def test_cifar100_layout_reads_the_fine_labels(tmp_path):
    """torchvision's cifar-100-python: files train/test, 100 fine labels (the 20 coarse ones
    must not be taken), class names from meta's fine_label_names."""
    rng = np.random.default_rng(2)
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    written = {}
    for name, n in (("train", 7), ("test", 3)):
        data = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        fine = rng.integers(20, 100, n).tolist()  # outside the coarse range 0..19
        with open(base / name, "wb") as f:
            pickle.dump({b"data": data, b"fine_labels": fine,
                         b"coarse_labels": [f % 20 for f in fine]}, f)
        written[name] = (data, fine)
    with open(base / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                     b"coarse_label_names": [f"c{i}".encode() for i in range(20)]}, f)
    for split in ("train", "test"):
        ds = load_dataset("cifar100", str(tmp_path), split, download=False)
        data, fine = written[split]
        assert ds.n_classes == 100 and ds.classes[42] == "f42"
        np.testing.assert_array_equal(ds.labels, fine)
        np.testing.assert_array_equal(ds.images[-1], data[-1].reshape(3, 32, 32).transpose(1, 2, 0))


def test_missing_cifar_offline_is_one_line_error(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar100", str(tmp_path), "train", download=False)
    assert "cifar-100-python" in str(err.value) and "\n" not in str(err.value)


def test_npz_dir_concatenates_chunks_and_reads_classes(tmp_path):
    rng = np.random.default_rng(1)
    xs = [rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8) for _ in range(2)]
    ys = [np.arange(5) % 3, (np.arange(5) + 1) % 3]
    for i, (x, y) in enumerate(zip(xs, ys)):
        np.savez(tmp_path / f"train_{i:02d}.npz", x=x, y=y)
    np.savez(tmp_path / "test_00.npz", x=xs[0][:2], y=ys[0][:2])
    (tmp_path / "classes.json").write_text(json.dumps(["a", "b", "c"]))
    train = load_dataset(f"npz:{tmp_path}", split="train")
    np.testing.assert_array_equal(train.images, np.concatenate(xs))
    np.testing.assert_array_equal(train.labels, np.concatenate(ys))
    assert train.classes == ["a", "b", "c"]
    assert len(load_dataset(f"npz:{tmp_path}", split="test")) == 2
    sub = train.subset([9, 0])
    assert isinstance(sub, ArrayDataset) and sub.labels.tolist() == [ys[1][4], ys[0][0]]


def test_npz_without_classes_counts_labels_of_both_splits(tmp_path):
    x = np.zeros((3, 4, 4, 3), np.uint8)
    np.savez(tmp_path / "train_00.npz", x=x, y=np.array([0, 1, 1]))
    np.savez(tmp_path / "test_00.npz", x=x, y=np.array([0, 4, 1]))
    assert load_dataset(f"npz:{tmp_path}", split="train").n_classes == 5


def test_folder_dataset_labels_follow_sorted_class_names(tmp_path):
    for split, n in (("train", 2), ("test", 1)):
        for cls, colour in (("zebra", (255, 0, 0)), ("ant", (0, 255, 0))):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (10, 7), colour).save(d / f"{i}.png")
    train = load_dataset(f"folder:{tmp_path}", split="train")
    assert train.classes == ["ant", "zebra"] and len(train) == 4
    img, label = train[0]
    assert label == 0 and img.getpixel((0, 0)) == (0, 255, 0) and img.size == (10, 7)
    assert len(load_dataset(f"folder:{tmp_path}", split="test")) == 2


@pytest.mark.parametrize(
    "name, message",
    [("mnist", "unknown dataset"), ("npz:/nonexistent-dir", "no train_"),
     ("folder:/nonexistent-dir", "not found")],
)
def test_bad_dataset_names(name, message):
    with pytest.raises(DatasetError) as err:
        load_dataset(name, split="train")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_npz_with_wrong_arrays_is_rejected(tmp_path):
    np.savez(tmp_path / "train_00.npz", images=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(DatasetError, match="needs arrays x and y"):
        load_dataset(f"npz:{tmp_path}")
    os.remove(tmp_path / "train_00.npz")
    np.savez(tmp_path / "train_00.npz", x=np.zeros((2, 4, 4), np.float32), y=np.zeros(2))
    with pytest.raises(DatasetError, match="uint8"):
        load_dataset(f"npz:{tmp_path}")


def _good_npz(directory, n=12):
    x = np.random.default_rng(0).integers(0, 256, (n, 6, 6, 3), dtype=np.uint8)
    np.savez(directory / "train_0.npz", x=x, y=np.arange(n) % 3)
    return (directory / "train_0.npz").read_bytes()


def _save(path, **arrays):
    np.savez(path, **arrays)
    return path


# Each case damages a good npz dataset in ``d``; the error must name the file (or the folder).
def _damage(d, case):
    good = (d / "train_0.npz").read_bytes()
    x = np.zeros((4, 6, 6, 3), np.uint8)
    if case == "truncated":
        (d / "train_0.npz").write_bytes(good[:len(good) // 2])
    elif case == "flipped byte in the zip data":
        (d / "train_0.npz").write_bytes(good[:200] + bytes([good[200] ^ 0xFF]) + good[201:])
    elif case == "empty file":
        (d / "train_0.npz").write_bytes(b"")
    elif case == ".npy named .npz":
        with open(d / "train_0.npz", "wb") as f:
            np.save(f, x)
    elif case == "a pickle":
        (d / "train_0.npz").write_bytes(pickle.dumps({"x": x}))
    elif case == "object arrays":
        _save(d / "train_0.npz", x=np.array([x, "a"], dtype=object), y=np.arange(2))
    elif case == "mixed image sizes":
        _save(d / "train_1.npz", x=np.zeros((4, 7, 7, 3), np.uint8), y=np.arange(4) % 3)
    elif case == "NaN label":
        _save(d / "train_0.npz", x=x, y=np.array([0.0, np.nan, 1.0, 2.0]))
    elif case == "fractional label":
        _save(d / "train_0.npz", x=x, y=np.array([0.0, 0.5, 1.0, 2.0]))
    elif case == "string labels":
        _save(d / "train_0.npz", x=x, y=np.array(["a", "b", "c", "d"]))
    elif case == "more labels than images":
        _save(d / "train_0.npz", x=x, y=np.arange(5) % 3)
    elif case == "bad classes.json":
        (d / "classes.json").write_text("{not json")
    elif case == "classes.json a string":
        (d / "classes.json").write_text(json.dumps("abc"))
    elif case == "classes.json too short":
        (d / "classes.json").write_text(json.dumps(["a", "b"]))
    elif case == "unreadable test split":
        (d / "test_0.npz").write_bytes(b"garbage")


DAMAGE = ["truncated", "flipped byte in the zip data", "empty file", ".npy named .npz",
          "a pickle", "object arrays", "mixed image sizes", "NaN label", "fractional label",
          "string labels", "more labels than images", "bad classes.json",
          "classes.json a string", "classes.json too short", "unreadable test split"]


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_npz_dataset_is_one_line_naming_the_file(tmp_path, case):
    _good_npz(tmp_path)
    _damage(tmp_path, case)
    with pytest.raises(DatasetError) as err:
        load_dataset(f"npz:{tmp_path}", split="train")
    message = str(err.value)
    assert "\n" not in message and len(message) < 300
    assert str(tmp_path) in message


def test_an_image_that_does_not_decode_is_named_when_it_is_used(tmp_path):
    d = tmp_path / "train" / "a"
    d.mkdir(parents=True)
    Image.new("RGB", (5, 5)).save(d / "good.png")
    (d / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n then garbage")
    good = (d / "good.png").read_bytes()
    (d / "cut.png").write_bytes(good[:len(good) // 2])
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.image(ds.paths.index(str(d / "good.png"))).size == (5, 5)
    for name in ("bad.png", "cut.png"):
        with pytest.raises(DatasetError, match=rf"^cannot read image .*{name}: "):
            ds.image(ds.paths.index(str(d / name)))


def test_cifar_pickles_cannot_run_code(tmp_path):
    """A planted data_batch whose pickle calls a function (here: creating a file) is refused
    by name and the function never runs."""
    _write_cifar10(tmp_path)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(tmp_path / "cifar-10-batches-py" / "data_batch_2", "wb") as f:
        pickle.dump({b"data": Payload(), b"labels": [0]}, f)
    with pytest.raises(DatasetError, match="data_batch_2: not a CIFAR batch .*refusing to build"):
        load_dataset("cifar10", str(tmp_path), "train")
    assert not marker.exists()


def test_has_split_tells_absent_from_unreadable(tmp_path):
    from deepaa_data import has_split

    _good_npz(tmp_path)
    assert not has_split(f"npz:{tmp_path}", ".", "test")
    (tmp_path / "test_0.npz").write_bytes(b"garbage")
    assert has_split(f"npz:{tmp_path}", ".", "test")
    assert has_split("cifar10", ".", "test") and not has_split(f"folder:{tmp_path}", ".", "test")

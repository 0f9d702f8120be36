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

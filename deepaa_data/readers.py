"""Raw dataset readers shared by the search and the trainer: uint8 RGB images and int labels.

Framework-free (numpy, Pillow, pickle); torchvision is imported only to download CIFAR when it
is missing. Dataset names:

- ``cifar10`` / ``cifar100``: torchvision's layout under ``root`` (``cifar-10-batches-py/``,
  ``cifar-100-python/``), downloaded through torchvision when missing and ``download`` is set;
- ``imagenet``: ImageFolder layout ``root/train/<wnid>/*``, ``root/val/<wnid>/*``;
- ``npz:DIR``: files ``train_*.npz`` / ``test_*.npz`` with arrays ``x`` (uint8 N x H x W x 3)
  and ``y`` (int), an optional ``classes.json``;
- ``folder:DIR``: ImageFolder ``DIR/train/<class>/*`` and optional ``DIR/test/<class>/*``.
"""
from __future__ import annotations

import glob
import json
import os
import pickle

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")
SPLITS = ("train", "test")


class DatasetError(ValueError):
    """A dataset that cannot be found or read; the message is one line naming the problem."""


class ImageDataset:
    """Images with integer labels; ``image(i)`` returns an RGB ``PIL.Image``."""

    classes: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def image(self, i: int) -> Image.Image:
        raise NotImplementedError

    def __getitem__(self, i: int):
        return self.image(i), int(self.labels[i])

    def subset(self, indices) -> "ImageDataset":
        raise NotImplementedError


class ArrayDataset(ImageDataset):
    """All images in memory as one uint8 array N x H x W x 3 (CIFAR, npz)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: list[str]):
        images = np.asarray(images)
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise DatasetError(
                f"images must be uint8 N x H x W x 3, got {images.dtype} {images.shape}"
            )
        if len(images) != len(labels):
            raise DatasetError(f"{len(images)} images but {len(labels)} labels")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise DatasetError(f"labels outside 0..{len(classes) - 1}")
        self.images, self.labels, self.classes = images, labels, list(classes)

    def image(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i])

    def subset(self, indices) -> "ArrayDataset":
        indices = np.asarray(indices, dtype=np.int64)
        return ArrayDataset(self.images[indices], self.labels[indices], self.classes)


class FileDataset(ImageDataset):
    """Images decoded from files on demand (ImageNet, ``folder:``)."""

    def __init__(self, paths: list[str], labels: np.ndarray, classes: list[str]):
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self.classes = list(classes)

    def image(self, i: int) -> Image.Image:
        with Image.open(self.paths[i]) as img:
            return img.convert("RGB")

    def subset(self, indices) -> "FileDataset":
        indices = np.asarray(indices, dtype=np.int64)
        return FileDataset([self.paths[i] for i in indices], self.labels[indices], self.classes)


# ----------------------------------------------------------------------------- CIFAR
_CIFAR = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                b"labels", "batches.meta", b"label_names"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", "meta",
                 b"fine_label_names"),
}


def _unpickle(path: str) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def _download_cifar(name: str, root: str) -> None:
    try:
        import torchvision.datasets as tvd

        cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
        cls(root, train=True, download=True)
        cls(root, train=False, download=True)
    except Exception as exc:  # network errors come in many types
        raise DatasetError(
            f"{name} not found under {root!r} and the download failed "
            f"({type(exc).__name__}); put torchvision's {_CIFAR[name][0]}/ there"
        ) from None


def load_cifar(name: str, root: str, split: str, download: bool = False) -> ArrayDataset:
    folder, train_files, test_files, label_key, meta_file, names_key = _CIFAR[name]
    base = os.path.join(root, folder)
    if not os.path.isdir(base):
        if not download:
            raise DatasetError(f"{name} not found: no {folder}/ under {root!r}")
        _download_cifar(name, root)
    files = train_files if split == "train" else test_files
    xs, ys = [], []
    for fname in files:
        path = os.path.join(base, fname)
        try:
            batch = _unpickle(path)
        except (OSError, pickle.UnpicklingError, EOFError) as exc:
            raise DatasetError(f"cannot read {path}: {exc}") from None
        xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[label_key], dtype=np.int64))
    try:
        meta = _unpickle(os.path.join(base, meta_file))
        classes = [c.decode() for c in meta[names_key]]
    except (OSError, KeyError, pickle.UnpicklingError, EOFError):
        classes = [str(i) for i in range(10 if name == "cifar10" else 100)]
    images = np.concatenate(xs).transpose(0, 2, 3, 1).copy()
    return ArrayDataset(images, np.concatenate(ys), classes)


# ----------------------------------------------------------------------------- npz
def load_npz_dir(directory: str, split: str) -> ArrayDataset:
    files = sorted(glob.glob(os.path.join(directory, f"{split}_*.npz")))
    if not files:
        raise DatasetError(f"no {split}_*.npz files in {directory!r}")
    xs, ys = [], []
    for path in files:
        try:
            with np.load(path, allow_pickle=False) as data:
                xs.append(data["x"])
                ys.append(data["y"])
        except (OSError, KeyError, ValueError) as exc:
            raise DatasetError(f"cannot read {path}: needs arrays x and y ({exc})") from None
    labels = np.concatenate(ys).astype(np.int64)
    classes_file = os.path.join(directory, "classes.json")
    if os.path.exists(classes_file):
        with open(classes_file) as f:
            classes = [str(c) for c in json.load(f)]
    else:
        n = int(labels.max()) + 1 if len(labels) else 0
        # Take the test split's labels into account too so train and test agree on n_classes.
        for other in glob.glob(os.path.join(directory, "*_*.npz")):
            with np.load(other, allow_pickle=False) as data:
                if "y" in data and len(data["y"]):
                    n = max(n, int(np.max(data["y"])) + 1)
        classes = [str(i) for i in range(n)]
    return ArrayDataset(np.concatenate(xs), labels, classes)


# ----------------------------------------------------------------------------- folders
def load_image_folder(directory: str, classes: list[str] | None = None) -> FileDataset:
    """ImageFolder: one sub-folder per class, sorted names give the label order."""
    if not os.path.isdir(directory):
        raise DatasetError(f"image folder not found: {directory!r}")
    if classes is None:
        classes = sorted(e.name for e in os.scandir(directory) if e.is_dir())
    if not classes:
        raise DatasetError(f"no class sub-folders in {directory!r}")
    paths, labels = [], []
    for label, cls in enumerate(classes):
        cdir = os.path.join(directory, cls)
        if not os.path.isdir(cdir):
            continue
        for root, _, files in sorted(os.walk(cdir)):
            for fname in sorted(files):
                if fname.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.join(root, fname))
                    labels.append(label)
    if not paths:
        raise DatasetError(f"no images under {directory!r}")
    return FileDataset(paths, np.asarray(labels, dtype=np.int64), classes)


def _folder_split(directory: str, split: str, test_name: str) -> FileDataset:
    train_dir = os.path.join(directory, "train")
    classes = sorted(e.name for e in os.scandir(train_dir) if e.is_dir()) if os.path.isdir(
        train_dir) else None
    if split == "train":
        return load_image_folder(train_dir, classes)
    return load_image_folder(os.path.join(directory, test_name), classes)


# ----------------------------------------------------------------------------- entry point
def load_dataset(name: str, root: str = "./data", split: str = "train",
                 download: bool = False) -> ImageDataset:
    """Load split ``train`` or ``test`` of dataset ``name`` (see the module docstring).

    Raises :class:`DatasetError` with a one-line message when the data cannot be found or read.
    """
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; expected train or test")
    if name in _CIFAR:
        return load_cifar(name, root, split, download)
    if name == "imagenet":
        return _folder_split(root, split, "val")
    if name.startswith("npz:"):
        return load_npz_dir(name[4:], split)
    if name.startswith("folder:"):
        directory = name[7:]
        if split == "test" and not os.path.isdir(os.path.join(directory, "test")):
            raise DatasetError(f"folder dataset {directory!r} has no test/ folder")
        return _folder_split(directory, split, "test")
    raise DatasetError(
        f"unknown dataset {name!r}; expected cifar10, cifar100, imagenet, npz:DIR or folder:DIR"
    )


def dataset_classes(name: str, root: str = "./data") -> int:
    """Number of classes of a dataset without keeping its images (for --n_classes checks)."""
    if name == "cifar10":
        return 10
    if name == "cifar100":
        return 100
    return load_dataset(name, root, "train").n_classes

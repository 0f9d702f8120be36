"""Raw dataset readers shared by the search and the trainer: uint8 RGB images and int labels.

Framework-free (numpy, Pillow, pickle); torchvision is imported only to download CIFAR when it
is missing. Dataset names:

- ``cifar10`` / ``cifar100``: torchvision's layout under ``root`` (``cifar-10-batches-py/``,
  ``cifar-100-python/``), downloaded through torchvision when missing and ``download`` is set;
- ``imagenet``: ImageFolder layout ``root/train/<wnid>/*``, ``root/val/<wnid>/*``;
- ``npz:DIR``: files ``train_*.npz`` / ``test_*.npz`` with arrays ``x`` (uint8 N x H x W x 3)
  and ``y`` (int), an optional ``classes.json``;
- ``folder:DIR``: ImageFolder ``DIR/train/<class>/*`` and optional ``DIR/test/<class>/*``.

Everything read is checked: a damaged or odd file (a truncated or corrupted npz, a ``.npy``
named ``.npz``, images of several sizes, labels that are not integers, a ``classes.json``
that is not a list of names, an image file that does not decode) raises
:class:`DatasetError` naming the file, never a traceback from numpy or Pillow. An image file
is decoded when it is used, so a damaged one in a ``folder:`` or ImageNet tree is reported
then. CIFAR's pickles are read by an unpickler that builds only lists, bytes and numpy
arrays, so a planted file cannot run code.
"""
from __future__ import annotations

import glob
import json
import os
import pickle
import zipfile

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
        return read_image(self.paths[i])

    def subset(self, indices) -> "FileDataset":
        indices = np.asarray(indices, dtype=np.int64)
        return FileDataset([self.paths[i] for i in indices], self.labels[indices], self.classes)


def read_image(path: str) -> Image.Image:
    """The RGB image in file ``path``; a file that does not decode raises DatasetError."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # Pillow reports damaged files as OSError, SyntaxError or ValueError by format
        raise DatasetError(f"cannot read image {path}: {_why(exc)}") from None


# ----------------------------------------------------------------------------- CIFAR
_CIFAR = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                b"labels", "batches.meta", b"label_names"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", "meta",
                 b"fine_label_names"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Builds the plain containers, bytes and numpy arrays of CIFAR's files and nothing
    else: a pickle that names any other callable is refused instead of run."""

    _ALLOWED = {(core, name) for core in ("numpy.core.multiarray", "numpy._core.multiarray")
                for name in ("_reconstruct", "scalar")}
    _ALLOWED |= {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to build {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: str) -> dict:
    with open(path, "rb") as f:
        data = _ArrayUnpickler(f, encoding="bytes").load()
    if not isinstance(data, dict):
        raise pickle.UnpicklingError(f"a {type(data).__name__}, not a dict")
    return data


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
            xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(_labels(batch[label_key], path))
        except DatasetError:
            raise
        except Exception as exc:  # damaged pickles fail in many ways
            raise DatasetError(f"cannot read {path}: not a CIFAR batch ({_why(exc)})") from None
        if len(xs[-1]) != len(ys[-1]):
            raise DatasetError(f"{path} holds {len(xs[-1])} images but {len(ys[-1])} labels")
    try:
        meta = _unpickle(os.path.join(base, meta_file))
        classes = [c.decode() for c in meta[names_key]]
    except Exception:  # the class names are only names: numbered ones do
        classes = [str(i) for i in range(10 if name == "cifar10" else 100)]
    images = np.concatenate(xs).transpose(0, 2, 3, 1).copy()
    return ArrayDataset(images, np.concatenate(ys), classes)


# ----------------------------------------------------------------------------- npz
def _why(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _labels(y, path: str) -> np.ndarray:
    """Labels as int64: integers, or floats that are whole numbers (NaN is not)."""
    y = np.asarray(y)
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise DatasetError(f"{path}: labels must be whole numbers, found "
                               f"{float(y[~np.isfinite(y) | (y != np.round(y))].flat[0])}")
    elif y.dtype.kind not in "iu":
        raise DatasetError(f"{path}: labels must be integers, got {y.dtype}")
    return y.astype(np.int64).reshape(-1)


def _read_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of one npz file; anything unexpected raises DatasetError naming it."""
    try:
        with zipfile.ZipFile(path) as z:  # np.load would take a .npy named .npz
            damaged = z.testzip()  # every member's CRC: a flipped byte is found here
        if damaged is not None:
            raise DatasetError(f"cannot read {path}: its array {damaged} is damaged (bad CRC)")
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data or "y" not in data:
                raise DatasetError(f"cannot read {path}: needs arrays x and y, has "
                                   f"{', '.join(data.files) or 'none'}")
            x, y = data["x"], data["y"]
    except DatasetError:
        raise
    except MemoryError:
        raise DatasetError(f"{path} does not fit in memory") from None
    except Exception as exc:  # a damaged zip fails in many ways (BadZipFile, zlib.error, ...)
        raise DatasetError(f"cannot read {path}: not a readable npz file ({_why(exc)})") from None
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise DatasetError(f"{path}: x must be uint8 N x H x W x 3, got {x.dtype} {x.shape}")
    y = _labels(y, path)
    if len(x) != len(y):
        raise DatasetError(f"{path}: {len(x)} images in x but {len(y)} labels in y")
    return x, y


def _class_names(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            names = json.load(f)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {path}: {_why(exc)}") from None
    if not isinstance(names, list) or not all(isinstance(c, (str, int)) for c in names):
        raise DatasetError(f"{path} must be a JSON list of class names")
    return [str(c) for c in names]


def load_npz_dir(directory: str, split: str) -> ArrayDataset:
    files = sorted(glob.glob(os.path.join(directory, f"{split}_*.npz")))
    if not files:
        raise DatasetError(f"no {split}_*.npz files in {directory!r}")
    xs, ys = [], []
    for path in files:
        x, y = _read_npz(path)
        if xs and x.shape[1:] != xs[0].shape[1:]:
            raise DatasetError(f"{path} holds {x.shape[1]}x{x.shape[2]} images but {files[0]} "
                               f"{xs[0].shape[1]}x{xs[0].shape[2]}: the images of a split "
                               "must have one size")
        xs.append(x)
        ys.append(y)
    labels = np.concatenate(ys)
    classes_file = os.path.join(directory, "classes.json")
    if os.path.exists(classes_file):
        classes = _class_names(classes_file)
        if len(labels) and labels.max() >= len(classes):
            raise DatasetError(f"{classes_file} names {len(classes)} classes but "
                               f"{split} holds label {int(labels.max())}")
    else:
        n = int(labels.max()) + 1 if len(labels) else 0
        # Take the other split's labels into account too so train and test agree on n_classes.
        for other in sorted(glob.glob(os.path.join(directory, "*_*.npz"))):
            if other not in files and os.path.basename(other).startswith(SPLITS):
                y = _read_npz(other)[1]
                if len(y):
                    n = max(n, int(np.max(y)) + 1)
        classes = [str(i) for i in range(n)]
    try:
        images = np.concatenate(xs)
    except MemoryError:
        raise DatasetError(f"the {split} split of {directory!r} does not fit in memory") from None
    return ArrayDataset(images, labels, classes)


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


def has_split(name: str, root: str, split: str) -> bool:
    """Whether dataset ``name`` has files for ``split`` (CIFAR always has both; a folder
    dataset may lack test/, an npz one its test_*.npz): a split that is there but does not
    load is an error, one that is absent is not."""
    if name in _CIFAR:
        return True
    if name == "imagenet":
        return os.path.isdir(os.path.join(root, "train" if split == "train" else "val"))
    if name.startswith("npz:"):
        return bool(glob.glob(os.path.join(name[4:], f"{split}_*.npz")))
    if name.startswith("folder:"):
        return os.path.isdir(os.path.join(name[7:], split))
    return False


def dataset_classes(name: str, root: str = "./data") -> int:
    """Number of classes of a dataset without keeping its images (for --n_classes checks)."""
    if name == "cifar10":
        return 10
    if name == "cifar100":
        return 100
    return load_dataset(name, root, "train").n_classes

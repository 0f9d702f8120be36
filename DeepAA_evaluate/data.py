"""Data for the trainer: datasets, per-image transforms and the step sampler (SPEC §3).

Images come from :func:`deepaa_data.load_dataset` (CIFAR in torchvision's layout, downloaded
when missing; ImageNet as ImageFolder; ``npz:DIR``; ``folder:DIR``). Transforms turn a PIL image
into a uint8 C x H x W tensor; ToTensor's division by 255 and Normalize run on the device in
the trainer (same arithmetic, a quarter of the bytes through the loader).

**Per-image seeds.** The sampler hands the dataset ``(index, seed)`` pairs; every random draw
for that image comes from that seed, itself a function of (run seed, epoch, step, position in
the step). The augmented images therefore do not depend on the number of loader workers or of
devices, and a resumed run sees exactly the images the uninterrupted one would have seen.

**Steps and Batch Augmentation.** The released trainer ran ``gpus`` workers with ``batch``
images each. Normally each worker drew different images (``batch * gpus`` unique images per
step). With ``all_workers_use_the_same_batches`` every worker drew the same ``batch`` images and
augmented them independently, so each image appears ``gpus`` times in the step (Batch
Augmentation: 128 images x 8 copies = 1,024 per step for the BatchAug8x configs, with the
steps per epoch of a 128-image batch). :class:`StepSampler` builds that global step and gives
each of the ``world_size`` real processes a contiguous ``1 / world_size`` of it; the trainer
splits a process's share back into the released per-worker batches of ``batch`` images for
batch norm (see ``engine.py``), so 1 CPU, 1 GPU or N GPUs compute the same update.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, ImageDraw

from augmentation import center_crop
from augmentation.ops import IMAGENET_SIZE, cutout_box, cutout_center
from augmentation.space import FILL_GREY
from deepaa_data import load_dataset

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def pipeline_kind(cfg: dict, policy=None) -> str:
    """``imagenet`` (224 crops, ImageNet statistics) or ``cifar`` (images kept at their size)."""
    if cfg["dataset"] == "imagenet" or (policy is not None and policy.policy.space == "imagenet"):
        return "imagenet"
    return "cifar"


def normalization(kind: str):
    return (IMAGENET_MEAN, IMAGENET_STD) if kind == "imagenet" else (CIFAR_MEAN, CIFAR_STD)


def balanced_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` indices, as equal per class as possible, drawn with a seeded permutation."""
    labels = np.asarray(labels)
    if size >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng([int(seed), 7])
    classes = np.unique(labels)
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    take = np.zeros(len(classes), dtype=np.int64)
    remaining = size
    while remaining > 0:  # round-robin so small classes give their share to large ones
        open_ = [i for i in range(len(classes)) if take[i] < len(pools[i])]
        share = max(1, remaining // len(open_))
        for i in open_:
            add = min(share, len(pools[i]) - take[i], remaining)
            take[i] += add
            remaining -= add
            if remaining == 0:
                break
    return np.sort(np.concatenate([p[:t] for p, t in zip(pools, take)]))


def load_splits(cfg: dict, dataroot: str):
    """Train and test datasets (``deepaa_data`` datasets), subset by train_size / test_size."""
    name = cfg["dataset"]
    download = name in ("cifar10", "cifar100")
    train = load_dataset(name, dataroot, "train", download=download)
    test = load_dataset(name, dataroot, "test", download=False)
    seed = cfg["seed"] or 0
    if cfg["train_size"] is not None:
        train = train.subset(balanced_subset(train.labels, cfg["train_size"], seed))
    if cfg["test_size"] is not None:
        test = test.subset(balanced_subset(test.labels, cfg["test_size"], seed + 1))
    return train, test


# ----------------------------------------------------------------------------- transforms
def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class Cutout:
    """A grey square of ``side`` px at a uniform random centre (the baseline's cutout; the
    same box and fill as the policy's RandCutout, SPEC §1)."""

    def __init__(self, side: int):
        self.side = side

    def __call__(self, img, rng):
        w, h = img.size
        x, y = cutout_center(w, h, self.side, rng)
        out = img.copy()
        ImageDraw.Draw(out).rectangle(cutout_box(w, h, self.side, x, y), fill=FILL_GREY)
        return out


class TorchvisionStep:
    """A torchvision transform (global torch RNG) run under a torch seed drawn from ``rng``,
    without disturbing the caller's torch RNG."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, img, rng):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2**63)))
            return self.transform(img)


class PolicyStep:
    """The DeepAA policy (evaluation semantics), then on ImageNet a centre crop to 224."""

    def __init__(self, policy, crop: bool):
        self.policy, self.crop = policy, crop

    def __call__(self, img, rng):
        img = self.policy(img, rng=rng)
        if self.crop and img.size != (IMAGENET_SIZE, IMAGENET_SIZE):
            img = center_crop(img, IMAGENET_SIZE)
        return img


class TrainTransform:
    """A chain of steps ``f(img, rng)`` ending in a uint8 tensor."""

    def __init__(self, steps):
        self.steps = list(steps)

    def __call__(self, img, rng):
        for step in self.steps:
            img = step(img, rng)
        return to_uint8_tensor(img)


def build_train_transform(cfg: dict, kind: str, policy=None, image_size: int = 32):
    """SPEC §3 for ``aug: DeepAA``; the baselines (``default``, ``randaugment``,
    ``trivialaugment``: crop and flip, the op, cutout 16 on CIFAR-like data; random-resized crop
    and flip on ImageNet) and ``none``. ``cutout > 0`` adds a cutout of that side after any aug
    (the released key; for ``default`` it sets the side instead)."""
    import torchvision.transforms as T

    aug, steps = cfg["aug"], []
    if cfg["aug_backend"] == "tensor":
        return TrainTransform([])  # the policy runs on the device
    if aug == "DeepAA":
        steps.append(PolicyStep(policy, crop=kind == "imagenet"))
    elif aug == "none":
        if kind == "imagenet":
            steps.append(TorchvisionStep(T.Compose([
                T.Resize(256, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224)])))
    else:
        if kind == "imagenet":
            base = [T.RandomResizedCrop(224, interpolation=T.InterpolationMode.BICUBIC),
                    T.RandomHorizontalFlip()]
        else:
            base = [T.RandomCrop(image_size, padding=4), T.RandomHorizontalFlip()]
        if aug == "randaugment":
            base.append(T.RandAugment(num_ops=cfg["randaug"]["N"], magnitude=cfg["randaug"]["M"]))
        elif aug == "trivialaugment":
            base.append(T.TrivialAugmentWide())
        steps.append(TorchvisionStep(T.Compose(base)))
        if kind == "cifar" and cfg["cutout"] <= 0:
            steps.append(Cutout(16))
    if cfg["cutout"] > 0:
        steps.append(Cutout(cfg["cutout"]))
    return TrainTransform(steps)


def build_test_transform(kind: str):
    """Test images: unchanged (CIFAR), or resize 256 bicubic + centre crop 224 (ImageNet)."""
    if kind != "imagenet":
        return to_uint8_tensor
    import torchvision.transforms as T

    resize = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BICUBIC),
                        T.CenterCrop(224)])
    return lambda img: to_uint8_tensor(resize(img))


class TrainSet(torch.utils.data.Dataset):
    """Indexed by ``(index, seed)`` pairs from :class:`StepSampler`."""

    def __init__(self, base, transform):
        self.base, self.transform = base, transform

    def __len__(self):
        return len(self.base)

    def __getitem__(self, key):
        index, seed = key
        img, label = self.base[int(index)]
        return self.transform(img, np.random.default_rng(int(seed))), label


class TestSet(torch.utils.data.Dataset):
    def __init__(self, base, transform, indices=None):
        self.base, self.transform = base, transform
        self.indices = np.arange(len(base)) if indices is None else np.asarray(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        img, label = self.base[int(self.indices[i])]
        return self.transform(img), label


# ----------------------------------------------------------------------------- sampling
class StepSampler(torch.utils.data.Sampler):
    """Yields, for each step of an epoch, this process's list of ``(index, seed)`` pairs.

    A step draws ``unique`` images from a seeded per-epoch permutation (the last incomplete
    step is dropped, as the released loader did) and repeats the list ``copies`` times (Batch
    Augmentation); process ``rank`` of ``world_size`` takes the ``rank``-th contiguous share.
    """

    def __init__(self, n: int, unique: int, copies: int, seed: int, world_size: int = 1,
                 rank: int = 0):
        if (unique * copies) % world_size:
            raise ValueError(f"a step of {unique * copies} images cannot be split over "
                             f"{world_size} processes")
        self.n, self.unique, self.copies = n, unique, copies
        self.seed, self.world_size, self.rank = int(seed), world_size, rank
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.unique

    def step(self, epoch: int, step: int) -> list[tuple[int, int]]:
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._step(perm, epoch, step)

    def _step(self, perm, epoch, step):
        idx = np.tile(perm[step * self.unique:(step + 1) * self.unique], self.copies)
        seeds = np.random.default_rng([self.seed, epoch, step, 1]).integers(2**63, size=len(idx))
        share = len(idx) // self.world_size
        lo = self.rank * share
        return list(zip(idx[lo:lo + share].tolist(), seeds[lo:lo + share].tolist()))

    def __iter__(self):
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        for step in range(len(self)):
            yield self._step(perm, self.epoch, step)


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


def make_loader(dataset, batch_sampler=None, batch_size=None, num_workers=0, pin=False):
    kwargs = dict(num_workers=num_workers, pin_memory=pin)
    if num_workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=4)
    if batch_sampler is not None:
        return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, **kwargs)

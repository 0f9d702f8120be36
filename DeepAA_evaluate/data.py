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
batch norm (see ``engine.py``), so 1 CPU, 1 GPU or N GPUs compute the same update: the same
images, augmented the same way (the on-device augmentation draws on the CPU for this reason),
through the same arithmetic up to floating-point order. On a GPU, cuDNN's choice of
convolution kernels makes two runs differ in the last bits, so a resumed GPU run matches the
uninterrupted one in its data but not bit for bit in its weights, unless the config sets
``deterministic: true`` (``engine.Runtime``); TF32 convolutions, PyTorch's default, are
deterministic but round differently from a CPU.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from augmentation import center_crop
from augmentation.ops import IMAGENET_SIZE
from DeepAA_evaluate.batch_policy import BatchTrainSet, collated, seeded_generator
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
    """The baselines' cutout (the released trainer's ``CutoutDefault``, SPEC §3 ``cutout``).

    It differs from the policy's RandCutout (SPEC §1) on purpose, as the released code did: the
    centre (x, y) is a uniform *integer* pixel, the square covers columns x - s//2 .. x + s//2 - 1
    and rows likewise (16 x 16 inside the image, clipped at its borders), and it is filled with
    the dataset mean, i.e. 0 after Normalize, where the released code multiplied the normalised
    tensor by a 0/1 mask. The loader hands uint8 images on, so the mean is rounded to integers:
    (125, 123, 114) on CIFAR, less than 0.5/255 from the exact mean.
    """

    def __init__(self, side: int, mean):
        self.side = side
        self.fill = np.array([round(255 * m) for m in mean], dtype=np.uint8)

    def __call__(self, img, rng):
        arr = np.array(img.convert("RGB"), dtype=np.uint8)
        h, w = arr.shape[:2]
        y, x, half = int(rng.integers(h)), int(rng.integers(w)), self.side // 2
        arr[max(0, y - half):min(h, y + half), max(0, x - half):min(w, x + half)] = self.fill
        return Image.fromarray(arr)


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


def build_train_transform(cfg: dict, kind: str, policy=None, image_size=32):
    """The training transform of ``cfg["aug"]`` (``image_size``: int or (h, w) of the images).

    ``DeepAA``: the policy alone (SPEC §3; crop, flip and cutout are in the policy), then on
    ImageNet a centre crop to 224. The baselines follow the released/TrivialAugment trainer:
    the op first (``randaugment``: torchvision's RandAugment(N, M); ``trivialaugment``:
    torchvision's TrivialAugmentWide), then a random crop after padding 4 black pixels and a
    horizontal flip (ImageNet: bicubic random-resized crop 224 and flip), then on CIFAR-like
    data the 16-px :class:`Cutout` (the released baseline configs set ``cutout: 16``);
    ``default`` is crop, flip and cutout. ``none``: nothing (ImageNet: the test transform).
    ``cutout > 0`` appends a :class:`Cutout` of that side after any aug, as the released key
    did (for the baselines it replaces the 16-px one). With ``aug_backend: tensor`` the policy
    runs on the device instead (:class:`DeviceAugment`) and this transform is empty.
    """
    import torchvision.transforms as T

    aug, steps = cfg["aug"], []
    if cfg["aug_backend"] == "tensor":
        return TrainTransform([])
    if aug == "DeepAA":
        steps.append(PolicyStep(policy, crop=kind == "imagenet"))
    elif aug == "none":
        if kind == "imagenet":
            steps.append(TorchvisionStep(T.Compose([
                T.Resize(256, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224)])))
    else:
        base = []
        if aug == "randaugment":
            base.append(T.RandAugment(num_ops=cfg["randaug"]["N"], magnitude=cfg["randaug"]["M"]))
        elif aug == "trivialaugment":
            base.append(T.TrivialAugmentWide())
        if kind == "imagenet":
            base += [T.RandomResizedCrop(224, interpolation=T.InterpolationMode.BICUBIC),
                     T.RandomHorizontalFlip()]
        else:
            base += [T.RandomCrop(image_size, padding=4), T.RandomHorizontalFlip()]
        steps.append(TorchvisionStep(T.Compose(base)))
        if kind == "cifar" and cfg["cutout"] <= 0:
            steps.append(Cutout(16, normalization(kind)[0]))
    if cfg["cutout"] > 0:
        steps.append(Cutout(cfg["cutout"], normalization(kind)[0]))
    return TrainTransform(steps)


def build_test_transform(kind: str):
    """Test images: unchanged (CIFAR), or resize 256 bicubic + centre crop 224 (ImageNet)."""
    if kind != "imagenet":
        return to_uint8_tensor
    import torchvision.transforms as T

    resize = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BICUBIC),
                        T.CenterCrop(224)])
    return lambda img: to_uint8_tensor(resize(img))


class DeviceAugment:
    """``aug_backend: tensor``: the policy applied on the device to uint8 batches by
    ``augmentation.batched.apply_policy_batch`` (SPEC §3 evaluation semantics, mirror on).

    Each virtual-worker batch of ``micro`` images (see ``engine.py``) draws from its own
    generator, seeded by (run seed, epoch, step, the batch's index in the global step); as with
    the PIL path's per-image seeds, the augmented images then depend neither on the number of
    processes (when a process's share is whole batches) nor on an interruption and resume.
    """

    def __init__(self, policy, seed: int, micro: int, first_batch: int = 0):
        from augmentation.batched import apply_policy_batch

        self.apply = apply_policy_batch
        self.policy, self.seed, self.micro, self.first_batch = policy, int(seed), micro, first_batch

    def __call__(self, x: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        out = []
        for j, chunk in enumerate(x.split(self.micro)):
            # a CPU generator on any device: the draws are used on the CPU anyway (no copies
            # back from the GPU), and a GPU run gets the images a CPU run gets
            gen = seeded_generator([self.seed, epoch, step, self.first_batch + j, 2])
            out.append(self.apply(self.policy, chunk, mirror=True, generator=gen))
        return torch.cat(out)


def train_dataset(cfg: dict, base, kind: str, policy=None, micro: int = 1):
    """The training Dataset for ``cfg["aug_backend"]``: per-image transforms
    (:class:`TrainSet`), or the policy per batch in the loader (:class:`BatchTrainSet`, batches
    of ``micro`` images drawing together)."""
    if cfg["aug_backend"] == "batch":
        return BatchTrainSet(base, policy.policy, micro, crop=kind == "imagenet")
    width, height = base.image(0).size  # the baselines' crop size
    return TrainSet(base, build_train_transform(cfg, kind, policy, (height, width)))


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
    if hasattr(dataset, "__getitems__"):  # it builds whole batches itself
        kwargs["collate_fn"] = collated
    if num_workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=4)
    if batch_sampler is not None:
        return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, **kwargs)

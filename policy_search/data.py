"""The search's data: splits, class-conditional search points and the batches of each step.

SPEC §2 "Data": the training split is shuffled (seeded) and cut into a validation set, a
pretraining set of ``--pretrain_size`` images and a search set (the rest).

Validation size rule (our choice): ``min(10000, N // 5)`` images for a training split of N
images, i.e. the paper's 10,000 for CIFAR's 50,000 and 20 % of smaller sets; ImageNet holds out
the released 400,000 (at most half of N). The pretraining
set is capped at half of the remaining images so that small datasets keep a search set.

Randomness is derived, never carried: every step's draws come from
``SeedSequence([seed, stream, layer, step, ...])``. A run resumed at (layer, step) therefore
draws exactly what the uninterrupted run drew there, and the pool cannot change the draws.

A step's batch is built in two parts (see ``StepBuilder``): everything that depends only on the
frozen earlier layers is built ahead of time by a background thread (``Prefetcher``); the last
op of the g_tr copies, sampled from the layer being searched, is applied when the step starts,
from the probabilities after the previous step, exactly as an unprefetched search would.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import numpy as np

from augmentation.space import OPS

CIFAR_MEAN = np.array([0.49139968, 0.48215841, 0.44653091], np.float32)  # SPEC §2
CIFAR_STD = np.array([0.2023, 0.1994, 0.2010], np.float32)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
MAX_VALIDATION = 10000  # CIFAR: 10,000 of the 50,000 training images (SPEC §2 "Data")
# ImageNet: SPEC §2 holds out "a part of the training set"; the released search held out
# 400,000 images (about 400 a class), so that the 64 validation images of a point are distinct.
IMAGENET_VALIDATION = 400000
# Stream identifiers of the derived random generators.
SPLIT, POINTS, DENSE, GTR_PREFIX, GTR_LAST, VAL, PRETRAIN = range(7)


def derive_rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, keys)]))


def derive_seed(seed: int, *keys: int) -> int:
    return int(np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(1)[0])


def statistics(space: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of the normalisation after augmentation (SPEC §2 "Normalisation")."""
    return (IMAGENET_MEAN, IMAGENET_STD) if space == "imagenet" else (CIFAR_MEAN, CIFAR_STD)


def normalize(images_u8: np.ndarray, space: str) -> np.ndarray:
    """uint8 [..., H, W, 3] -> float32 (x / 255 - mean) / std (SPEC §2 "Normalisation")."""
    mean, std = statistics(space)
    out = images_u8.astype(np.float32)
    out *= np.float32(1.0 / 255.0)
    out -= mean
    out /= std
    return out


@dataclass
class Splits:
    """Indices into the training split; disjoint, together all of it."""
    val: np.ndarray
    pretrain: np.ndarray
    search: np.ndarray


def validation_size(n: int, space: str = "cifar") -> int:
    """Validation images out of ``n`` training images: 20 % up to 10,000 (CIFAR and custom
    data), or the released 400,000 for ImageNet (at most half of ``n``)."""
    if space == "imagenet":
        return min(IMAGENET_VALIDATION, n // 2)
    return min(MAX_VALIDATION, n // 5)


def make_splits(n: int, pretrain_size: int, seed: int, space: str = "cifar") -> Splits:
    perm = derive_rng(seed, SPLIT).permutation(n)
    n_val = validation_size(n, space)
    rest = perm[n_val:]
    n_pre = min(int(pretrain_size), len(rest) // 2)
    return Splits(val=np.sort(perm[:n_val]), pretrain=np.sort(rest[:n_pre]),
                  search=np.sort(rest[n_pre:]))


def trained_overlap(n: int, space: str, made_seed: int, made_pretrain: int,
                    splits: Splits) -> tuple[int, int]:
    """How many of ``splits``' validation and search images were among the pretraining
    images of a run on the same ``n`` images with seed ``made_seed`` whose pretraining split
    held ``made_pretrain`` images: the split is a function of those numbers, so the count is
    exact."""
    trained = np.zeros(n, bool)
    trained[make_splits(n, made_pretrain, made_seed, space).pretrain] = True
    return int(trained[splits.val].sum()), int(trained[splits.search].sum())


def source_of(dataset, i: int):
    """What a task needs to load image ``i``: the array itself, or the file path."""
    if hasattr(dataset, "images"):
        return dataset.images[i]
    if hasattr(dataset, "paths"):
        return dataset.paths[i]
    return np.asarray(dataset.image(i), dtype=np.uint8)


class PointSampler:
    """Search points (SPEC §2): a random class c, one search image of class c and
    ``n_val`` validation images of class c (without replacement when the class has enough,
    otherwise with replacement)."""

    def __init__(self, labels: np.ndarray, splits: Splits, n_val: int):
        self.n_val = int(n_val)
        self.search_by_class = _by_class(labels, splits.search)
        self.val_by_class = _by_class(labels, splits.val)
        self.classes = np.array(sorted(set(self.search_by_class) & set(self.val_by_class)))
        if len(self.classes) == 0:
            raise ValueError("no class has images in both the search and the validation split")

    def short_classes(self) -> list[int]:
        """Classes whose validation images are fewer than a point's batch (drawn with
        replacement, so a batch repeats images)."""
        return [int(c) for c in self.classes if len(self.val_by_class[c]) < self.n_val]

    def sample(self, rng: np.random.Generator, n_points: int):
        """(classes [P], search indices [P], validation indices [P, V]) into the train split."""
        classes = rng.choice(self.classes, size=n_points)
        x_idx = np.array([rng.choice(self.search_by_class[c]) for c in classes], np.int64)
        val_idx = np.stack([self._val(rng, c) for c in classes]).astype(np.int64)
        return classes.astype(np.int64), x_idx, val_idx

    def _val(self, rng, c):
        pool = self.val_by_class[c]
        return rng.choice(pool, size=self.n_val, replace=len(pool) < self.n_val)


def _by_class(labels, indices):
    out: dict[int, np.ndarray] = {}
    sub = labels[indices]
    for c in np.unique(sub):
        out[int(c)] = indices[sub == c]
    return out


def dense_columns(candidates, repeat_random: bool, n_repeat: int):
    """Candidate index of each dense column; random ops repeated ``n_repeat`` times when
    ``--repeat_random_ops`` (SPEC §2). Returns (columns, groups or None)."""
    cols = []
    for i, (name, _) in enumerate(candidates):
        cols.extend([i] * (n_repeat if repeat_random and OPS[name].random else 1))
    cols = np.array(cols, np.int64)
    return cols, (cols.copy() if repeat_random and len(cols) != len(candidates) else None)


class StepBuilder:
    """Builds the batch of step (layer k, step s) for ``layers.Searcher`` (SPEC §2).

    ``part(k, s, frozen)`` (heavy, prefetchable; ``frozen`` = probabilities of layers < k) and
    ``finish(part, k, s, probs_k)`` (the layer-k op of the g_tr copies) together give
    stage 1: "aug" [P, D', H, W, C]; stage k: "gtr" [P, M, ...] (M = D * EXP_gT_factor) and
    "dense" [P, G, D', ...]; always "labels" [P], "val" [P, V, ...], "val_labels" [P, V] and,
    with repeated random ops, "dense_groups" [D']. Images stay uint8: the Searcher normalises
    them on the device one point at a time, so a step holds a quarter of the float32 memory
    on the host and on the device (ImageNet steps are tens of gigabytes otherwise).
    """

    def __init__(self, dataset, sampler: PointSampler, executor, space: str, n_points: int,
                 exp_g: int, exp_gt_factor: int, columns, groups, seed: int):
        self.dataset, self.sampler, self.executor = dataset, sampler, executor
        self.space, self.n_points, self.seed = space, int(n_points), int(seed)
        self.exp_g, self.columns, self.groups = int(exp_g), columns, groups
        self.n_cands = len(executor.augmenter.candidates)
        self.n_gtr = self.n_cands * int(exp_gt_factor)

    def _sample_seq(self, rng, probs_list, n):
        if not probs_list:
            return np.zeros((n, 0), np.int64)
        return np.stack([rng.choice(len(p), size=n, p=p) for p in probs_list], axis=1)

    def _val_images(self, k, s, val_idx):
        if hasattr(self.dataset, "images") and \
                self.dataset.images.shape[1] == self.executor.augmenter.out_size:
            return self.dataset.images[val_idx]
        tasks = [([source_of(self.dataset, i) for i in row], [[]] * len(row), None,
                  derive_seed(self.seed, VAL, k, s, p), True) for p, row in enumerate(val_idx)]
        return np.stack(self.executor.map(tasks))

    def part(self, k: int, s: int, frozen: list) -> dict:
        rng = derive_rng(self.seed, POINTS, k, s)
        classes, x_idx, val_idx = self.sampler.sample(rng, self.n_points)
        xs = [source_of(self.dataset, i) for i in x_idx]
        out = {"labels": classes.astype(np.int32),
               "val_labels": np.repeat(classes[:, None], val_idx.shape[1], 1).astype(np.int32),
               "val": self._val_images(k, s, val_idx)}
        if self.groups is not None:
            out["dense_groups"] = self.groups
        if k == 0:
            tasks = [([x], [[]], self.columns, derive_seed(self.seed, DENSE, k, s, p), True)
                     for p, x in enumerate(xs)]
            out["aug"] = np.stack(self.executor.map(tasks))
            return out
        seq_rng = derive_rng(self.seed, DENSE, k, s)
        tasks = []
        for p, x in enumerate(xs):
            seqs = self._sample_seq(seq_rng, frozen, self.exp_g)
            tasks += [([x], [seqs[g]], self.columns, derive_seed(self.seed, DENSE, k, s, p, g),
                       True) for g in range(self.exp_g)]
        dense = np.stack(self.executor.map(tasks))  # [P*G, D', H, W, C]
        out["dense"] = dense.reshape(self.n_points, self.exp_g, *dense.shape[1:])
        pre_rng = derive_rng(self.seed, GTR_PREFIX, k, s)
        tasks = [([x] * self.n_gtr, self._sample_seq(pre_rng, frozen, self.n_gtr), None,
                  derive_seed(self.seed, GTR_PREFIX, k, s, p), False) for p, x in enumerate(xs)]
        out["gtr_prefix"] = self.executor.map(tasks)  # per point: M images, own size
        return out

    def finish(self, part: dict, k: int, s: int, probs_k: np.ndarray) -> dict:
        batch = dict(part)
        if k == 0:
            return batch
        prefix = batch.pop("gtr_prefix")
        rng = derive_rng(self.seed, GTR_LAST, k, s)
        tasks = [(imgs, rng.choice(len(probs_k), size=(len(imgs), 1), p=probs_k), None,
                  derive_seed(self.seed, GTR_LAST, k, s, p), True) for p, imgs in enumerate(prefix)]
        batch["gtr"] = np.stack(self.executor.map(tasks))
        return batch


class Background:
    """Iterates ``iterable`` in a daemon thread, at most ``depth`` items ahead, while the
    consumer computes; an exception in the thread is raised in the consumer.

    ``close()`` (or leaving the ``with`` block) stops the thread and waits for it. A thread
    still inside TensorFlow or torch while the interpreter exits can abort the exit ("terminate
    called without an active exception", status 134 instead of Ctrl-C's 130), so an
    interrupted run closes its background threads before it returns."""

    def __init__(self, iterable, depth: int = 2, name: str = "background"):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(iterable,), daemon=True,
                                        name=name)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, iterable):
        try:
            for item in iterable:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as err:  # handed to the consumer
            self._put(_Raised(err))

    def __iter__(self):
        return self

    def __next__(self):
        item = self._queue.get()
        if item is _END:
            raise StopIteration
        if isinstance(item, _Raised):
            raise item.error
        return item

    def close(self, timeout: float = 30.0):
        self._stop.set()
        self._thread.join(timeout=timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_END = object()


@dataclass
class _Raised:
    error: BaseException


class Prefetcher(Background):
    """Builds ``builder.part(k, s, frozen)`` for s = start .. stop - 1 in a background thread,
    at most ``depth`` steps ahead, while the current step computes."""

    def __init__(self, builder: StepBuilder, k: int, start: int, stop: int, frozen: list,
                 depth: int = 2):
        super().__init__(((s, builder.part(k, s, frozen)) for s in range(start, stop)),
                         depth, name=f"prefetch-{k}")

    def get(self, s: int) -> dict:
        got, item = next(self)
        if got != s:
            raise RuntimeError(f"prefetcher out of order: wanted step {s}, got {got}")
        return item


def pretrain_batches(dataset, indices: np.ndarray, batch_size: int, epoch: int, seed: int,
                     executor, aug_seq: list, space: str, task_size: int = 32):
    """Yield normalised (images, labels) batches of one pretraining epoch: a seeded shuffle,
    ``batch_size`` images per batch, the last partial batch dropped (SPEC §2), each image
    augmented by the candidate sequence ``aug_seq`` (RandCrop, RandFlip, RandCutout on CIFAR)."""
    perm = derive_rng(seed, PRETRAIN, epoch).permutation(indices)
    labels = dataset.labels
    for b in range(len(perm) // batch_size):
        idx = perm[b * batch_size:(b + 1) * batch_size]
        tasks = [([source_of(dataset, i) for i in idx[j:j + task_size]],
                  [aug_seq] * len(idx[j:j + task_size]), None,
                  derive_seed(seed, PRETRAIN, epoch, b, j), True)
                 for j in range(0, len(idx), task_size)]
        images = np.concatenate(executor.map(tasks))
        yield normalize(images, space), labels[idx].astype(np.int32)

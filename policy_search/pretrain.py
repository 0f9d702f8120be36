"""Pretraining the search model, and what its weights file says about it (SPEC §2).

Pretraining (CIFAR-like data): ``--nb_epochs`` epochs over the pretraining split, batches of
``--batch_size`` with the last partial batch dropped, SGD with momentum 0.9 (Nesterov), a
cosine learning rate from ``--pretrain_lr`` to 0 over all steps, gradients clipped to global
norm 5, the L2 penalties of the model added to the loss, and RandCrop, RandFlip, RandCutout
applied to every image (ImageNet: RandResizeCrop, RandFlip). The loop, the data and the log
are shared; the backend (``policy_search.backend``) makes the model and its training step. It
runs on one device in a model of its own; the weights go to a file (``.weights.h5`` or
``.pt``) that the search model (built for the search's devices) then loads, as the released
code did to synchronise replicas. That file is what ``--pretrained`` and ``--resume`` reuse,
with its ``<weights>.json`` provenance record (``write_provenance``: the dataset, seed and split
it was trained on).
"""
from __future__ import annotations

import json
import logging
import time

import numpy as np

from policy_search import data

log = logging.getLogger("deepaa.search")
PRETRAIN_OPS = {"cifar": ("RandCrop", "RandFlip", "RandCutout"),
                "imagenet": ("RandResizeCrop", "RandFlip")}


def pretrain_sequence(candidates, space: str) -> list[int]:
    """Candidate indices of the pretraining augmentation of ``space``."""
    names = [name for name, _ in candidates]
    return [names.index(op) for op in PRETRAIN_OPS[space]]


def write_provenance(weights: str, info: dict) -> None:
    """``<weights>.json``: the dataset, seed and split the weights were pretrained on, so that
    a search reusing them (``--pretrained``) can tell whether its validation images were
    among the pretraining images."""
    from augmentation.files import atomic_write

    atomic_write(weights + ".json", json.dumps(info, indent=1) + "\n")


def read_provenance(weights: str) -> dict | None:
    """The ``write_provenance`` record of ``weights``, or None (absent or unreadable)."""
    try:
        with open(weights + ".json", encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def same_validation(made: dict, mine: dict) -> bool:
    """Whether two runs hold out the same validation images: the split is one seeded
    permutation of the N training images, cut at the validation size first, so the dataset,
    the seed, N and the validation size decide it (the pretraining size does not)."""
    try:
        return (made["dataset"], made["seed"], made["splits"][0], sum(made["splits"])) == \
            (mine["dataset"], mine["seed"], mine["splits"][0], sum(mine["splits"]))
    except (KeyError, TypeError, IndexError):
        return False


def evaluate(backend, model, batches) -> float:
    """Top-1 accuracy of ``model`` (inference mode) over (images, labels) batches."""
    correct = total = 0
    for images, labels in batches:
        pred = np.argmax(backend.predict(model, images), axis=1)
        correct += int(np.sum(pred == labels))
        total += len(labels)
    return correct / max(total, 1)


def eval_batches(dataset, indices, batch_size, executor, space):
    """Normalised, unaugmented (centre-cropped where needed) batches for :func:`evaluate`."""
    size = executor.augmenter.out_size
    for start in range(0, len(indices), batch_size):
        idx = indices[start:start + batch_size]
        if hasattr(dataset, "images") and dataset.images.shape[1] == size:
            images = dataset.images[idx]
        else:
            tasks = [([data.source_of(dataset, i) for i in idx[j:j + 32]],
                      [[]] * len(idx[j:j + 32]), None, 0, True) for j in range(0, len(idx), 32)]
            images = np.concatenate(executor.map(tasks))
        yield data.normalize(images, space), dataset.labels[idx]


def pretrain(args, backend, dataset, indices, executor, space: str, input_shape,
             out_path: str, progress=None):
    """Train a fresh ``args.use_model`` on ``dataset[indices]`` and save it to ``out_path``."""
    model = backend.new_model(args, input_shape)
    steps_per_epoch = len(indices) // args.batch_size
    total = steps_per_epoch * args.nb_epochs
    if total == 0:
        log.warning("no pretraining steps (%d images, batch %d, %d epochs): the search starts "
                    "from random weights", len(indices), args.batch_size, args.nb_epochs)
        backend.save_weights(model, out_path)
        return model
    train_step = backend.trainer(model, args, total)
    seq = pretrain_sequence(executor.augmenter.candidates, space)
    log.info("pretraining %s on %d images: %d epochs x %d steps", args.use_model, len(indices),
             args.nb_epochs, steps_per_epoch)
    bar = progress(total=total, desc="pretrain") if progress else None
    start = time.time()
    for epoch in range(args.nb_epochs):
        losses, hits = [], 0.0
        for images, labels in data.background(data.pretrain_batches(
                dataset, indices, args.batch_size, epoch, args.seed, executor, seq, space)):
            loss, hit = train_step(images, labels)
            losses.append(loss)
            hits += hit
            if bar:
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.3f}")
        log.info("pretrain epoch %d/%d: loss %.4f, train acc %.4f, %.0f s", epoch + 1,
                 args.nb_epochs, np.mean(losses), hits / (steps_per_epoch * args.batch_size),
                 time.time() - start)
    if bar:
        bar.close()
    backend.save_weights(model, out_path)
    log.info("pretrained weights saved to %s", out_path)
    return model

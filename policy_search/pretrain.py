"""Pretraining the search model, and what its weights file says about it (SPEC §2).

Pretraining (CIFAR-like data): ``--nb_epochs`` epochs over the pretraining split, batches of
``--batch_size`` with the last partial batch dropped, SGD with momentum 0.9 (Nesterov), a
cosine learning rate from ``--pretrain_lr`` to 0 over all steps, gradients clipped to global
norm 5, the L2 penalties of the model added to the loss, and RandCrop, RandFlip, RandCutout
applied to every image (ImageNet: RandResizeCrop, RandFlip). The loop, the data, the log and
the checkpoints are shared; the backend (``policy_search.backend``) makes the model and its
training step. It runs on one device in a model of its own; the weights go to a file
(``.weights.h5`` or ``.pt``) that the search model (built for the search's devices) then
loads, as the released code did to synchronise replicas. That file is what ``--pretrained``
and ``--resume`` reuse, with its ``<weights>.json`` provenance record (``write_provenance``:
the dataset, seed and split it was trained on).

Every epoch ends with a checkpoint (``checkpoint.save_pretraining``: the weights and the
optimiser's variables, as the backend's trainer gives them), from which ``--resume``
continues: the batches and their augmentation are derived from (seed, epoch, batch), so the
resumed pretraining ends with the uninterrupted one's weights, bit for bit, on either
backend. A loss that is not finite stops the pretraining at once (the learning rate is too
high for the model and data) with the last good epoch kept.
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


def trained_on_search_images(made: dict | None, mine: dict, splits, space: str) -> str | None:
    """Why weights pretrained as ``made`` (their ``write_provenance`` record) do not suit a
    search whose record is ``mine`` and whose split is ``splits``, with the numbers, or None.
    Validation images the model was trained on make g_val a training gradient; search images
    it was trained on are points whose loss it has already fitted. Where the two runs split the
    same images, the images trained on are counted exactly (``data.trained_overlap``)."""
    if made is None:
        return None
    try:
        n_made, n = int(sum(made["splits"])), int(sum(mine["splits"]))
        seed, pretrained = int(made["seed"]), int(made["splits"][1])
        same_data = made["dataset"] == mine["dataset"] and n_made == n
    except (KeyError, TypeError, ValueError, IndexError):
        return "the weights' provenance record is unreadable: this search cannot tell which " \
               "of its images the model was trained on"
    if not same_data:
        return (f"the weights were pretrained on {made['dataset']} ({n_made} images), this "
                f"search uses {mine['dataset']} ({n} images): its validation and search "
                "images may include images the model was trained on")
    val, search = data.trained_overlap(n, space, seed, pretrained, splits)
    if not val and not search:
        return None
    return (f"the weights were pretrained on {pretrained} images (seed {seed}); {val} of this "
            f"search's {len(splits.val)} validation images and {search} of its "
            f"{len(splits.search)} search images were among them (seed {mine['seed']}, "
            f"--pretrain_size {len(splits.pretrain)}), so the model was trained on them")


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


def _epoch(args, dataset, indices, executor, seq, space, epoch, train_step, bar):
    """One pretraining epoch: (mean loss, training accuracy); a loss that is not finite
    stops it (UsageError)."""
    from policy_search.config import UsageError

    losses, hits = [], 0.0
    with data.Background(data.pretrain_batches(dataset, indices, args.batch_size, epoch,
                                               args.seed, executor, seq, space)) as batches:
        for images, labels in batches:
            loss, hit = train_step(images, labels)
            losses.append(float(loss))
            if not np.isfinite(losses[-1]):
                raise UsageError("--pretrain_lr", f"pretraining diverged in epoch {epoch + 1} "
                                 f"(loss {losses[-1]}); the epochs before it are kept, but start "
                                 "again with a lower --pretrain_lr in a new --results_dir")
            hits += float(hit)
            if bar:
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.3f}")
    return float(np.mean(losses)), hits / (len(losses) * args.batch_size)


def pretrain(args, backend, dataset, indices, executor, space: str, input_shape,
             out_path: str, progress=None, state_path: str | None = None,
             meta: dict | None = None, resume_from: str | None = None):
    """Train a fresh ``args.use_model`` on ``dataset[indices]`` and save it to ``out_path``;
    with ``state_path`` a checkpoint is written there after every epoch (``meta`` its record);
    with ``resume_from`` the pretraining continues after that checkpoint's last epoch."""
    from policy_search.checkpoint import check_shapes, load_pretraining, save_pretraining

    model = backend.new_model(args, input_shape)
    steps_per_epoch = len(indices) // args.batch_size
    total = steps_per_epoch * args.nb_epochs
    if total == 0:
        log.warning("no pretraining steps (%d images, batch %d, %d epochs): the search starts "
                    "from random weights", len(indices), args.batch_size, args.nb_epochs)
        backend.save_weights(model, out_path)
        return model
    train_step = backend.trainer(model, args, total)
    first = 0
    if resume_from:
        weights, variables, first, _ = load_pretraining(resume_from, args.nb_epochs)
        now = train_step.state()
        check_shapes(resume_from, "weights", weights, [np.shape(w) for w in now[0]])
        check_shapes(resume_from, "optimizer", variables, [np.shape(v) for v in now[1]])
        train_step.load(weights, variables)
        log.info("pretraining resumed after epoch %d of %d", first, args.nb_epochs)
    seq = pretrain_sequence(executor.augmenter.candidates, space)
    log.info("pretraining %s on %d images: %d epochs x %d steps", args.use_model, len(indices),
             args.nb_epochs, steps_per_epoch)
    bar = progress(total=total, initial=first * steps_per_epoch, desc="pretrain") \
        if progress else None
    start = time.time()
    try:
        for epoch in range(first, args.nb_epochs):
            loss, acc = _epoch(args, dataset, indices, executor, seq, space, epoch,
                               train_step, bar)
            if state_path:
                save_pretraining(state_path, *train_step.state(), epoch + 1, meta or {})
            log.info("pretrain epoch %d/%d: loss %.4f, train acc %.4f, %.0f s", epoch + 1,
                     args.nb_epochs, loss, acc, time.time() - start)
    finally:  # an error's one line comes after the bar, not before its last redraw
        if bar:
            bar.close()
    backend.save_weights(model, out_path)
    log.info("pretrained weights saved to %s", out_path)
    return model

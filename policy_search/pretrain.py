"""Pretraining, saving and restoring the search model; freezing its batch norm (SPEC §2).

Pretraining (CIFAR-like data): ``--nb_epochs`` epochs over the pretraining split, batches of
``--batch_size`` with the last partial batch dropped, SGD with momentum 0.9 (Nesterov), a
cosine learning rate from ``--pretrain_lr`` to 0 over all steps, gradients clipped to global
norm 5, the L2 penalties of the model added to the loss, and RandCrop, RandFlip, RandCutout
applied to every image (ImageNet: RandResizeCrop, RandFlip). It runs on one device in a model
of its own; the weights go to a ``.weights.h5`` file that the search model (built under the
search's distribution strategy) then loads, as the released code did to synchronise replicas.
That file is what ``--pretrained`` and ``--resume`` reuse, with its ``<weights>.json``
provenance record (``write_provenance``: the dataset, seed and split it was trained on).
"""
from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
import tensorflow as tf
import keras

from networks.tf_models import build_model
from policy_search import data

log = logging.getLogger("deepaa.search")
CLIP_NORM = 5.0  # SPEC §2
PRETRAIN_OPS = {"cifar": ("RandCrop", "RandFlip", "RandCutout"),
                "imagenet": ("RandResizeCrop", "RandFlip")}


def pretrain_sequence(candidates, space: str) -> list[int]:
    """Candidate indices of the pretraining augmentation of ``space``."""
    names = [name for name, _ in candidates]
    return [names.index(op) for op in PRETRAIN_OPS[space]]


def save_weights(model, path: str) -> None:
    """Atomic ``model.save_weights``: a temporary file in the same folder, then a rename."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.getpid()}.tmp.{name}")
    model.save_weights(tmp)
    os.replace(tmp, path)


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


def load_weights(model, path: str) -> None:
    """Restore ``path`` into ``model``; a mismatch raises ValueError with one line."""
    try:
        model.load_weights(path)
    except Exception as err:  # Keras raises several types for a wrong file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot load {path!r} into {model.name}: {first}") from None


def freeze_batch_norm(model, keep_training: bool = False) -> int:
    """Make every batch-norm layer non-trainable, which in Keras 3 also runs it in inference
    mode, so the search uses the pretraining statistics and γ/β are not part of θ (SPEC §2).
    With ``keep_training`` (``--policy_bn_training``) nothing is frozen. Returns the count."""
    bns = [l for l in model._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
    if not keep_training:
        for layer in bns:
            layer.trainable = False
    return len(bns)


def evaluate(model, batches) -> float:
    """Top-1 accuracy of ``model`` (inference mode) over (images, labels) batches."""
    correct = total = 0
    for images, labels in batches:
        pred = np.argmax(model(images, training=False).numpy(), axis=1)
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


def pretrain(args, dataset, indices, executor, space: str, input_shape, out_path: str,
             progress=None) -> keras.Model:
    """Train a fresh ``args.use_model`` on ``dataset[indices]`` and save it to ``out_path``."""
    keras.utils.set_random_seed(args.seed)
    model = build_model(args.use_model, args.n_classes, input_shape)
    steps_per_epoch = len(indices) // args.batch_size
    total = steps_per_epoch * args.nb_epochs
    if total == 0:
        log.warning("no pretraining steps (%d images, batch %d, %d epochs): the search starts "
                    "from random weights", len(indices), args.batch_size, args.nb_epochs)
        save_weights(model, out_path)
        return model
    schedule = keras.optimizers.schedules.CosineDecay(args.pretrain_lr, total, alpha=0.0)
    opt = keras.optimizers.SGD(learning_rate=schedule, momentum=0.9, nesterov=True,
                               global_clipnorm=CLIP_NORM)
    opt.build(model.trainable_variables)

    @tf.function(input_signature=[tf.TensorSpec((None, *input_shape), tf.float32),
                                  tf.TensorSpec((None,), tf.int32)])
    def train_step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=labels, logits=logits))
            loss += tf.add_n(model.losses)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        hits = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, 1, output_type=tf.int32),
                                              labels), tf.float32))
        return loss, hits

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
            losses.append(float(loss))
            hits += float(hit)
            if bar:
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.3f}")
        log.info("pretrain epoch %d/%d: loss %.4f, train acc %.4f, %.0f s", epoch + 1,
                 args.nb_epochs, np.mean(losses), hits / (steps_per_epoch * args.batch_size),
                 time.time() - start)
    if bar:
        bar.close()
    save_weights(model, out_path)
    log.info("pretrained weights saved to %s", out_path)
    return model

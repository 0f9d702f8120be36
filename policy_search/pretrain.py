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

Every epoch ends with a checkpoint (``checkpoint.save_pretraining``: weights and optimiser
variables), from which ``--resume`` continues: the batches and their augmentation are derived
from (seed, epoch, batch), so the resumed pretraining ends with the uninterrupted one's
weights, bit for bit. A loss that is not finite stops the pretraining at once (the learning
rate is too high for the model and data) with the last good epoch kept.
"""
from __future__ import annotations

import json
import logging
import os
import time
import warnings

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
    """Atomic ``model.save_weights``: a temporary file in the same folder, then a rename; a
    failed write (a full disk) removes the temporary file and raises OSError."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.getpid()}.tmp.{name}")
    try:
        model.save_weights(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, Exception):  # h5py's errors: no file name, a paragraph of detail
            code = getattr(err, "errno", None)
            why = os.strerror(code) if code else (str(err).strip().splitlines() or ["?"])[0]
            raise OSError(code, why, path) from None
        raise


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


def load_weights(model, path: str) -> None:
    """Restore ``path`` into ``model``; a mismatch, or weights that are not finite (from a
    pretraining that diverged), raise ValueError with one line."""
    try:
        with warnings.catch_warnings():  # a file of another model: one warning per layer
            warnings.simplefilter("ignore")
            model.load_weights(path)
    except Exception as err:  # Keras raises several types for a wrong file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        first = first.split(". Example error message")[0]  # the example runs over lines
        raise ValueError(f"cannot load {path!r} into {model.name}: {first} (weights of "
                         "another model?)") from None
    if not all(np.all(np.isfinite(w)) for w in model.get_weights()):
        raise ValueError(f"{path!r} holds weights that are not finite (NaN or infinity)")


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


def _epoch(args, dataset, indices, executor, seq, space, epoch, train_step, bar):
    """One pretraining epoch: (mean loss, training accuracy); a loss that is not finite
    stops it (UsageError)."""
    from policy_search.config import UsageError

    losses, hits = [], 0.0
    for images, labels in data.background(data.pretrain_batches(
            dataset, indices, args.batch_size, epoch, args.seed, executor, seq, space)):
        loss, hit = train_step(images, labels)
        losses.append(float(loss))
        if not np.isfinite(losses[-1]):
            raise UsageError("--pretrain_lr", f"pretraining diverged in epoch {epoch + 1} (loss "
                             f"{losses[-1]}); the epochs before it are kept, but start again with "
                             "a lower --pretrain_lr in a new --results_dir")
        hits += float(hit)
        if bar:
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.3f}")
    return float(np.mean(losses)), hits / (len(losses) * args.batch_size)


def pretrain(args, dataset, indices, executor, space: str, input_shape, out_path: str,
             progress=None, state_path: str | None = None, meta: dict | None = None,
             resume_from: str | None = None) -> keras.Model:
    """Train a fresh ``args.use_model`` on ``dataset[indices]`` and save it to ``out_path``;
    with ``state_path`` a checkpoint is written there after every epoch (``meta`` its record);
    with ``resume_from`` the pretraining continues after that checkpoint's last epoch."""
    from policy_search.checkpoint import check_shapes, load_pretraining, save_pretraining

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
    first = 0
    if resume_from:
        weights, variables, first, _ = load_pretraining(resume_from, args.nb_epochs)
        check_shapes(resume_from, "weights", weights, [w.shape for w in model.weights])
        check_shapes(resume_from, "optimizer", variables, [v.shape for v in opt.variables])
        model.set_weights(weights)
        for var, value in zip(opt.variables, variables):
            var.assign(value)
        log.info("pretraining resumed after epoch %d of %d", first, args.nb_epochs)

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
    bar = progress(total=total, initial=first * steps_per_epoch, desc="pretrain") \
        if progress else None
    start = time.time()
    try:
        for epoch in range(first, args.nb_epochs):
            loss, acc = _epoch(args, dataset, indices, executor, seq, space, epoch,
                               train_step, bar)
            if state_path:
                save_pretraining(state_path, model.get_weights(),
                                 [v.numpy() for v in opt.variables], epoch + 1, meta or {})
            log.info("pretrain epoch %d/%d: loss %.4f, train acc %.4f, %.0f s", epoch + 1,
                     args.nb_epochs, loss, acc, time.time() - start)
    finally:  # an error's one line comes after the bar, not before its last redraw
        if bar:
            bar.close()
    save_weights(model, out_path)
    log.info("pretrained weights saved to %s", out_path)
    return model

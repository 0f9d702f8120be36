"""The TensorFlow backend of the search (``--backend tf``, the default and the reference).

Keras models (``networks.tf_models``), the pretraining step of SPEC §2 (SGD with Nesterov
momentum 0.9, cosine learning rate, global norm clipped at 5, the models' L2 penalties),
gradients and forward-mode JVPs in ``importance.GradientMatcher``, and the devices of
``devices``: all visible GPUs, logical CPU replicas, or several machines through
``TF_CONFIG``. See ``policy_search.backend`` for the interface.
"""
from __future__ import annotations

import logging
import os
import warnings

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402

from networks.names import default_chunk_size  # noqa: E402
from networks.tf_models import build_model  # noqa: E402
from policy_search import devices  # noqa: E402

CLIP_NORM = 5.0  # SPEC §2


class TFBackend:
    name = "tf"
    weights_suffix = ".weights.h5"

    def __init__(self, args):
        tf.get_logger().setLevel(logging.ERROR)
        self.strategy = devices.make_strategy(args.cpu_replicas)
        self.replicas = devices.n_replicas(self.strategy)
        self.writes_results = devices.is_chief(self.strategy)
        gpus = len(tf.config.list_physical_devices("GPU"))
        where = f"{gpus} GPU(s)" if gpus else "the CPU"
        self.device = f"TensorFlow on {where}, {args.precision}"

    def new_model(self, args, input_shape):
        keras.utils.set_random_seed(args.seed)
        return build_model(args.use_model, args.n_classes, input_shape)

    def trainer(self, model, args, total_steps: int):
        return _Trainer(model, args, total_steps)

    def save_weights(self, model, path: str) -> None:
        """Atomic ``model.save_weights``: a temporary file in the same folder, then a rename;
        a failed write (a full disk) removes the temporary file and raises OSError."""
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

    def search_model(self, args, input_shape, path: str):
        """The search model under the strategy, restored from ``path``, batch norm frozen,
        computing in ``args.precision`` (``networks.tf_models.build_model``)."""
        with self.strategy.scope():
            model = build_model(args.use_model, args.n_classes, input_shape, args.precision)
        load_weights(model, path)
        freeze_batch_norm(model, keep_training=args.policy_bn_training)
        return model

    def predict(self, model, images) -> np.ndarray:
        return model(images, training=False).numpy()

    def matcher(self, model, args):
        from policy_search.importance import GradientMatcher

        return GradientMatcher(model, self.strategy,
                               args.chunk_size or default_chunk_size(args.use_model),
                               bn_training=args.policy_bn_training)

    def scalar_writer(self, folder: str):
        return _ScalarWriter(folder)

    def close(self) -> None:
        pass


class _Trainer:
    """The pretraining step of SPEC §2 (SGD with Nesterov momentum 0.9, cosine learning rate,
    global norm clipped at 5, the models' L2 penalties) and its state for the checkpoint."""

    def __init__(self, model, args, total_steps: int):
        schedule = keras.optimizers.schedules.CosineDecay(args.pretrain_lr, total_steps,
                                                          alpha=0.0)
        self.model = model
        self.opt = keras.optimizers.SGD(learning_rate=schedule, momentum=0.9, nesterov=True,
                                        global_clipnorm=CLIP_NORM)
        self.opt.build(model.trainable_variables)
        shape = tuple(model.input_shape[1:])

        @tf.function(input_signature=[tf.TensorSpec((None, *shape), tf.float32),
                                      tf.TensorSpec((None,), tf.int32)])
        def train_step(images, labels):
            with tf.GradientTape() as tape:
                logits = model(images, training=True)
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                    labels=labels, logits=logits))
                loss += tf.add_n(model.losses)
            grads = tape.gradient(loss, model.trainable_variables)
            self.opt.apply_gradients(zip(grads, model.trainable_variables))
            hits = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, 1, output_type=tf.int32),
                                                  labels), tf.float32))
            return loss, hits

        self._step = train_step

    def __call__(self, images, labels):
        loss, hits = self._step(images, labels)
        return float(loss), float(hits)

    def state(self):
        """(the model's weights, the optimiser's variables), in Keras' orders."""
        return self.model.get_weights(), [v.numpy() for v in self.opt.variables]

    def load(self, weights, variables) -> None:
        self.model.set_weights(weights)
        for var, value in zip(self.opt.variables, variables):
            var.assign(value)


class _ScalarWriter:
    def __init__(self, folder):
        self.writer = tf.summary.create_file_writer(folder)

    def scalar(self, tag, value, step):
        with self.writer.as_default():
            tf.summary.scalar(tag, value, step=step)

    def close(self):
        self.writer.flush()


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

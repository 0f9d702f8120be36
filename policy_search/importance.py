"""Gradient matching: validation gradient, training gradient, tangent and importances (SPEC §2).

With θ the model weights, ℓ the per-example cross-entropy (the model outputs logits), g_val the
gradient of the mean validation loss and g_tr a training gradient, the importance of an augmented
image a is

    r(a) = (∇θ ℓ(a) · t) / (‖g_tr‖ ‖g_val‖),    t = g_val − g_tr (g_val·g_tr) / ‖g_tr‖²   (tangent)

which is ∂ cos(g_val, g_tr) / ∂p_i when g_tr = Σ_i p_i ∇θ ℓ(aug_i(x)). r is computed as a
forward-mode Jacobian-vector product of ℓ along t, so no per-example gradient is ever formed.

Choices, all following the released search code:

* Only the data loss is differentiated: the model's regularisation terms (``model.losses``, the
  L2 weight decay used in pretraining) are left out of every gradient and JVP.
* θ is the model's trainable variables outside batch normalisation. The search freezes batch
  normalisation by making those layers non-trainable (SPEC §2 "Pretraining"), and their γ/β
  take no part in the matching in either mode: ``--policy_bn_training`` changes how batch
  norm normalises, not the space of gradients that are matched (the released θ never held
  γ/β).
* The model runs in inference mode unless ``bn_training`` (``--policy_bn_training``) is set.
  Then batch norm normalises with the statistics of each chunk (so importances depend on the
  chunking), and the moving statistics, which Keras updates in training mode, are put back
  after every pass so the search leaves the model as it found it. A Keras 3 batch-norm layer
  that is not trainable stays in inference mode whatever the flag.

Every pass over many images goes through bounded chunks of ``chunk_size`` images inside a
``tf.while_loop`` with one iteration in flight, so memory is bounded by one chunk whatever the
number of images (the released code used 256 images for WRN-40-2, 128 for WRN-28-10, 16 for
ResNet-50). The loops are plain TensorFlow ops, so the same code runs eagerly, inside a
``tf.function`` and inside ``strategy.run`` on each replica (``points``, which
``layers.Searcher`` calls: the TensorFlow side of the backend interface, see
``policy_search.backend``).
"""
from __future__ import annotations

import contextlib

import keras
import numpy as np
import tensorflow as tf


def theta(model) -> list:
    """θ: the model's trainable variables, less those of its batch-norm layers."""
    norm = {id(v) for layer in model._flatten_layers()
            if isinstance(layer, keras.layers.BatchNormalization) for v in layer.weights}
    return [v for v in model.trainable_variables if id(v) not in norm]


class GradientMatcher:
    """Gradients and importances of one Keras model (the search model, batch norm frozen).

    Inputs are normalised float NHWC tensors; they are cast to the dtype of the model's
    weights. Gradients are lists of tensors aligned with ``self.variables`` (θ), which are the
    model's trainable variables outside batch normalisation when the matcher is built: build
    it after pretraining.
    """

    def __init__(self, model, strategy=None, chunk_size: int = 256, bn_training: bool = False):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.model = model
        self.strategy = strategy if strategy is not None else tf.distribute.get_strategy()
        self.replicas = int(self.strategy.num_replicas_in_sync)
        self.chunk_size = int(chunk_size)
        self.bn_training = bool(bn_training)
        self.variables = theta(model)
        if not self.variables:
            raise ValueError("the model has no trainable variables to match gradients on")
        self.dtype = tf.as_dtype(self.variables[0].dtype)
        # Host-side entry points; shapes vary between callers so retracing is kept down by
        # relaxing the shapes instead of fixing one signature.
        self._weighted_grad_fn = tf.function(self.weighted_grad_ops, reduce_retracing=True)
        self._importance_fn = tf.function(self.importance_ops, reduce_retracing=True)
        self._dist_fns = {}

    # ----- per-chunk primitives -------------------------------------------------------------
    def per_example_loss(self, images, labels):
        """ℓ(x_i): sparse cross-entropy of the model's logits, one value per image."""
        logits = self.model(images, training=self.bn_training)
        logits = tf.cast(logits, self.dtype)
        return tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.cast(labels, tf.int32), logits=logits)

    def _chunk_grad(self, images, labels, weights):
        """Σ_i w_i ∇θ ℓ(x_i) over one chunk."""
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(weights * self.per_example_loss(images, labels))
        grads = tape.gradient(loss, self.variables,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return [tf.convert_to_tensor(g) for g in grads]

    def _chunk_jvp(self, images, labels, tangent):
        """∇θ ℓ(x_i) · tangent for every image of one chunk, in forward mode."""
        primals = [v.value for v in self.variables]
        with tf.autodiff.ForwardAccumulator(primals=primals, tangents=list(tangent)) as acc:
            loss = self.per_example_loss(images, labels)
        jvp = acc.jvp(loss, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return tf.convert_to_tensor(jvp)

    # ----- chunked passes (plain ops: usable eagerly, in tf.function and per replica) --------
    def _prepare(self, images, labels):
        images = tf.cast(tf.convert_to_tensor(images), self.dtype)
        labels = tf.cast(tf.convert_to_tensor(labels), tf.int32)
        return images, labels

    def _n_chunks(self, n):
        return (n + self.chunk_size - 1) // self.chunk_size

    def weighted_grad_ops(self, images, labels, weights):
        """Σ_i w_i ∇θ ℓ(x_i), accumulated over chunks of ``chunk_size`` images."""
        images, labels = self._prepare(images, labels)
        weights = tf.cast(tf.convert_to_tensor(weights), self.dtype)
        n = tf.shape(images)[0]
        size = self.chunk_size

        def body(k, acc):
            start = k * size
            end = tf.minimum(start + size, n)
            chunk = self._chunk_grad(images[start:end], labels[start:end], weights[start:end])
            return k + 1, [a + g for a, g in zip(acc, chunk)]

        zeros = [tf.zeros(v.shape, self.dtype) for v in self.variables]
        _, grads = tf.while_loop(lambda k, acc: k < self._n_chunks(n), body,
                                 (tf.constant(0), zeros), parallel_iterations=1)
        return list(grads)

    def tangent_ops(self, g_val, g_tr):
        """(t̂, cos(g_val, g_tr), ‖g_tr‖) for the importances.

        t = g_val − g_tr (g_val·g_tr)/‖g_tr‖² is returned scaled by 1/‖g_val‖ (t̂), so that
        r(a) = (∇θ ℓ(a) · t̂) / ‖g_tr‖ — the same value as (∇θ ℓ(a) · t)/(‖g_tr‖ ‖g_val‖)
        without ever forming products of two tiny gradients. Inner products and norms are
        accumulated in float64: with a well-fitted model the gradients can be so small that
        their float32 squares underflow (which once gave a cosine above 1).
        """
        dot = _dot(g_val, g_tr)
        norm_tr = tf.sqrt(_dot(g_tr, g_tr))
        norm_val = tf.sqrt(_dot(g_val, g_val))
        along = dot / tf.square(norm_tr)
        tangent = [(tf.cast(gv, tf.float64) - tf.cast(gt, tf.float64) * along) / norm_val
                   for gv, gt in zip(g_val, g_tr)]
        tangent = [tf.cast(t, gv.dtype) for t, gv in zip(tangent, g_val)]
        return tangent, dot / (norm_tr * norm_val), norm_tr

    def match_ops(self, images, labels, g_val, g_tr):
        """(cos(g_val, g_tr), r over ``images``): the cosine similarity of a point and the
        importances r(x_i) = (∇θ ℓ(x_i) · t) / (‖g_tr‖ ‖g_val‖) of its augmented images."""
        tangent, cos, norm_tr = self.tangent_ops(g_val, g_tr)
        jvp = tf.cast(self.jvp_ops(images, labels, tangent), tf.float64)
        return tf.cast(cos, self.dtype), tf.cast(jvp / norm_tr, self.dtype)

    def jvp_ops(self, images, labels, tangent):
        """∇θ ℓ(x_i) · tangent for all images, chunked; shape [N]."""
        images, labels = self._prepare(images, labels)
        n = tf.shape(images)[0]
        size = self.chunk_size
        tangent = [tf.cast(t, self.dtype) for t in tangent]

        def body(k, out):
            start = k * size
            end = tf.minimum(start + size, n)
            return k + 1, out.write(k, self._chunk_jvp(images[start:end], labels[start:end],
                                                       tangent))

        out = tf.TensorArray(self.dtype, size=self._n_chunks(n), infer_shape=False,
                             element_shape=tf.TensorShape([None]))
        _, out = tf.while_loop(lambda k, o: k < self._n_chunks(n), body, (tf.constant(0), out),
                               parallel_iterations=1)
        return tf.reshape(out.concat(), [n])

    def importance_ops(self, images, labels, g_val, g_tr):
        """r(x_i) = (∇θ ℓ(x_i) · t) / (‖g_tr‖ ‖g_val‖) for every image; shape [N]."""
        g_val = [tf.cast(g, self.dtype) for g in g_val]
        g_tr = [tf.cast(g, self.dtype) for g in g_tr]
        return self.match_ops(images, labels, g_val, g_tr)[1]

    @contextlib.contextmanager
    def keep_statistics(self):
        """Put back, on exit, the moving statistics that training-mode batch norm moves."""
        saved = ([(v, v.numpy()) for v in self.model.non_trainable_variables]
                 if self.bn_training else [])
        try:
            yield
        finally:
            for var, value in saved:
                var.assign(value)

    # ----- host-side API (compiled) --------------------------------------------------------
    def weighted_grad(self, images, labels, weights) -> list:
        """Σ_i w_i ∇θ ℓ(x_i): the training gradient of a weighted set of augmented images."""
        images, labels = self._prepare(images, labels)
        weights = tf.cast(tf.convert_to_tensor(weights), self.dtype)
        if images.shape[0] != weights.shape[0] or images.shape[0] != labels.shape[0]:
            raise ValueError("images, labels and weights must have the same length")
        with self.keep_statistics():
            return list(self._weighted_grad_fn(images, labels, weights))

    def mean_grad(self, images, labels) -> list:
        """∇θ of the mean loss, accumulated over chunks."""
        images, labels = self._prepare(images, labels)
        n = int(images.shape[0])
        if n == 0:
            raise ValueError("mean_grad needs at least one image")
        return self.weighted_grad(images, labels, tf.fill([n], tf.constant(1.0 / n, self.dtype)))

    def val_grad(self, images, labels) -> list:
        """g_val: ∇θ of the mean loss over a validation batch (chunked like every pass)."""
        return self.mean_grad(images, labels)

    def importance(self, images, labels, g_val, g_tr) -> tf.Tensor:
        """r(x_i) for every image ([N]), by JVP along the tangent of (g_val, g_tr)."""
        images, labels = self._prepare(images, labels)
        g_val = [tf.cast(g, self.dtype) for g in g_val]
        g_tr = [tf.cast(g, self.dtype) for g in g_tr]
        with self.keep_statistics():
            return self._importance_fn(images, labels, g_val, g_tr)

    def jvp(self, images, labels, tangent) -> tf.Tensor:
        """∇θ ℓ(x_i) · tangent for every image ([N]), chunked (eager; for checks)."""
        with self.keep_statistics():
            return self.jvp_ops(images, labels, tangent)

    # ----- the search step's points, spread over the replicas -------------------------------
    def points(self, weights, labels, val, val_labels, dense, gtr, statistics):
        """(cos [P], r [P, N]) of a step's search points, gathered in point order (across
        workers too); ``gtr=None`` trains on ``dense`` (stage 1), weighted by ``weights``.

        Points are spread over replicas in contiguous blocks (replica j gets points
        j·P/R … (j+1)·P/R − 1) and each replica loops over its points one at a time. uint8
        images go to the device as they are and are normalised there with ``statistics``
        (mean, std), one point at a time; float images are taken as normalised. Every worker
        must be given the same batch.
        """
        per = len(labels) // self.replicas

        def image_dtype(a):
            return tf.uint8 if a.dtype == np.uint8 else self.dtype

        arrays = [(labels, tf.int32), (val, image_dtype(val)), (val_labels, tf.int32),
                  (dense, image_dtype(dense))]
        if gtr is not None:
            arrays.append((gtr, image_dtype(gtr)))

        def value_fn(ctx):
            block = slice(ctx.replica_id_in_sync_group * per,
                          (ctx.replica_id_in_sync_group + 1) * per)
            values = [tf.constant(np.asarray(weights), self.dtype)]
            values += [tf.constant(a[block], dt) for a, dt in arrays]
            return tuple(values)

        values = self.strategy.experimental_distribute_values_from_function(value_fn)
        key = (gtr is None, tuple(np.asarray(s, np.float32).tobytes() for s in statistics))
        with self.keep_statistics():
            cos, r = self._dist_fn(key, statistics)(*values)
        return np.asarray(cos, np.float64), np.asarray(r, np.float64)

    def _dist_fn(self, key, statistics):
        if key not in self._dist_fns:
            replica_fn = self._replica_fn(key[0], statistics)

            def dist(*values):
                cos, r = self.strategy.run(replica_fn, args=values)
                return self.strategy.gather(cos, axis=0), self.strategy.gather(r, axis=0)

            self._dist_fns[key] = tf.function(dist, reduce_retracing=True)
        return self._dist_fns[key]

    def _replica_fn(self, shared, statistics):
        """Per-replica work on its block of points, one point at a time (bounded memory)."""
        mean, std = (tf.constant(v, tf.float32) for v in statistics)

        def normalize(x):
            """uint8 -> (x / 255 - mean) / std in float32, the ops of data.normalize."""
            if x.dtype != tf.uint8:
                return x
            y = tf.cast(x, tf.float32) * np.float32(1.0 / 255.0)
            return tf.cast((y - mean) / std, self.dtype)

        def fn(weights, labels, val, val_labels, dense, gtr=None):
            train = dense if shared else gtr
            n = tf.shape(labels)[0]

            def point(i, cos_out, r_out):
                n_val = tf.shape(val_labels[i])[0]
                g_val = self.weighted_grad_ops(
                    normalize(val[i]), val_labels[i],
                    tf.fill([n_val], 1.0 / tf.cast(n_val, self.dtype)))
                dense_i = normalize(dense[i])
                train_i = dense_i if shared else normalize(train[i])
                g_tr = self.weighted_grad_ops(
                    train_i, tf.fill([tf.shape(train_i)[0]], labels[i]), weights)
                cos, r = self.match_ops(dense_i, tf.fill([tf.shape(dense_i)[0]], labels[i]),
                                        g_val, g_tr)
                return i + 1, cos_out.write(i, cos), r_out.write(i, r)

            cos_out = tf.TensorArray(self.dtype, size=n)
            r_out = tf.TensorArray(self.dtype, size=n, element_shape=[dense.shape[1]])
            _, cos_out, r_out = tf.while_loop(lambda i, c, r: i < n, point,
                                              (tf.constant(0), cos_out, r_out),
                                              parallel_iterations=1)
            return cos_out.stack(), r_out.stack()

        return fn

    @staticmethod
    def cosine(g_a, g_b) -> tf.Tensor:
        """cos(g_a, g_b) of two gradients given as lists of tensors."""
        return _dot(g_a, g_b) / (tf.sqrt(_dot(g_a, g_a)) * tf.sqrt(_dot(g_b, g_b)))


def _dot(g_a, g_b):
    """Inner product of two gradients (lists of same-shaped tensors), in float64."""
    return tf.add_n([tf.reduce_sum(tf.cast(a, tf.float64) * tf.cast(b, tf.float64))
                     for a, b in zip(g_a, g_b)])

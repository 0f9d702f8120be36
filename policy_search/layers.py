"""Policy layers and the search step of each stage (SPEC §2 "Policy", "Stage 1", "Stage k ≥ 2").

`PolicyLogits` holds the K layers' logits and one Adam per layer; it is host state, identical on
every worker because every worker applies the same update to the same gathered importances.
`Searcher` computes the importances of one step's search points, spread over the replicas of the
matcher's strategy, and hands them to `PolicyLogits.apply_importance`.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
import keras

from policy_search import data
from policy_search.devices import n_replicas
from policy_search.importance import GradientMatcher

IDENTITY_LOGIT = 8.0  # SPEC §2: logits start at 8 on Identity, 0 elsewhere, minus their mean
STAGE1_LOSS_SCALE = 0.25  # SPEC §2 stage 1: loss = −0.25 · Σ r̄_i p_i


def _softmax64(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class PolicyLogits:
    """K layers × D logits, each layer with its own ``keras.optimizers.Adam(lr, 0.9, 0.999)``.

    The logits are float32 as in the released search; probabilities are reported in float64.
    The variables are plain (not mirrored): the update runs on the host after the importances
    of all replicas have been gathered.
    """

    def __init__(self, n_layers: int, n_candidates: int, identity_index: int,
                 policy_lr: float, strategy=None):
        if n_layers < 1 or n_candidates < 2:
            raise ValueError(f"need n_layers >= 1 and n_candidates >= 2, got "
                             f"{n_layers} and {n_candidates}")
        if not 0 <= identity_index < n_candidates:
            raise ValueError(f"identity_index {identity_index} is outside 0..{n_candidates - 1}")
        if not policy_lr > 0:
            raise ValueError(f"policy_lr must be > 0, got {policy_lr}")
        self.n_layers, self.n_candidates = int(n_layers), int(n_candidates)
        self.identity_index = int(identity_index)
        self.policy_lr = float(policy_lr)
        self.strategy = strategy
        init = np.zeros(self.n_candidates, np.float32)
        init[self.identity_index] = IDENTITY_LOGIT
        init -= init.mean()
        self.logits, self.optimizers = [], []
        for k in range(self.n_layers):
            var = keras.Variable(init.copy(), dtype="float32", name=f"policy_logits_{k}")
            opt = keras.optimizers.Adam(learning_rate=self.policy_lr, beta_1=0.9, beta_2=0.999)
            opt.build([var])
            self.logits.append(var)
            self.optimizers.append(opt)

    # ----- probabilities ----------------------------------------------------------------------
    def probs(self, k: int) -> np.ndarray:
        """softmax(logits_k) in float64, shape (D,)."""
        return _softmax64(self.logits[self._layer(k)].numpy())

    def all_probs(self) -> np.ndarray:
        """(K, D) float64: the policy the search has found so far."""
        return _softmax64(self.all_logits())

    def all_logits(self) -> np.ndarray:
        """(K, D) float64 copy of the logits (for ``Policy.from_logits``)."""
        return np.stack([v.numpy() for v in self.logits]).astype(np.float64)

    def _layer(self, k: int) -> int:
        if not 0 <= k < self.n_layers:
            raise IndexError(f"layer {k} is outside 0..{self.n_layers - 1}")
        return k

    # ----- the update -------------------------------------------------------------------------
    def apply_importance(self, k: int, r_points: np.ndarray, stage_one: bool) -> float:
        """One Adam step on layer k from the importances of P points, shape [P, D].

        Stage 1: r̄ = mean over points, loss = −0.25 Σ_i r̄_i p_i. Stage k: r̄ = mean − std over
        points (population std, ddof=0, as ``tf.math.reduce_std`` in the released code),
        loss = −P Σ_i r̄_i p_i. Returns the loss at the logits before the step.
        """
        k = self._layer(k)
        r = np.asarray(r_points, dtype=np.float64)
        if r.ndim != 2 or r.shape[1] != self.n_candidates or r.shape[0] < 1:
            raise ValueError(f"importances must have shape [P, {self.n_candidates}], "
                             f"got {r.shape}")
        if not np.all(np.isfinite(r)):
            raise FloatingPointError("importances contain NaN or infinity")
        if stage_one:
            rbar, scale = r.mean(axis=0), STAGE1_LOSS_SCALE
        else:
            rbar, scale = r.mean(axis=0) - r.std(axis=0, ddof=0), float(r.shape[0])
        var = self.logits[k]
        rbar_t = tf.constant(rbar, tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(var.value)
            loss = -scale * tf.reduce_sum(rbar_t * tf.nn.softmax(var.value))
        grad = tape.gradient(loss, var.value)
        self.optimizers[k].apply([grad], [var])
        return float(loss.numpy())

    # ----- checkpointing ----------------------------------------------------------------------
    def get_state(self) -> dict:
        """Logits and every Adam's iteration count and moment estimates, as numpy arrays."""
        state = {"logits": np.stack([v.numpy() for v in self.logits])}
        for name in ("iterations", "momentum", "velocity"):
            state[f"adam_{name}"] = np.stack([self._adam_var(k, name).numpy()
                                              for k in range(self.n_layers)])
        return state

    def set_state(self, state: dict) -> None:
        """Restore what `get_state` returned; shapes are checked first, then assigned."""
        expected = {"logits": (self.n_layers, self.n_candidates),
                    "adam_iterations": (self.n_layers,),
                    "adam_momentum": (self.n_layers, self.n_candidates),
                    "adam_velocity": (self.n_layers, self.n_candidates)}
        for key, shape in expected.items():
            if key not in state:
                raise ValueError(f"policy state lacks '{key}'")
            if tuple(np.shape(state[key])) != shape:
                raise ValueError(f"policy state '{key}' has shape {np.shape(state[key])}, "
                                 f"expected {shape}")
        for k in range(self.n_layers):
            self.logits[k].assign(np.asarray(state["logits"][k], np.float32))
            for name in ("iterations", "momentum", "velocity"):
                var = self._adam_var(k, name)
                var.assign(np.asarray(state[f"adam_{name}"][k]).astype(var.dtype))

    def _adam_var(self, k: int, name: str):
        opt = self.optimizers[k]
        if name == "iterations":
            return opt.iterations
        found = [v for v in opt.variables if v.path.endswith(f"_{name}")]
        if len(found) != 1:
            raise RuntimeError(f"cannot find the Adam '{name}' slot of layer {k}")
        return found[0]


class Searcher:
    """One search step: importances of the step's points over the replicas, then the update.

    Points are spread over replicas in contiguous blocks (replica j gets points
    j·P/R … (j+1)·P/R − 1), each replica loops over its points one at a time, and the per-point
    results are all-gathered (across workers too) in point order. Every worker must be given
    the same batch.
    """

    def __init__(self, matcher: GradientMatcher, logits: PolicyLogits, space: str):
        """``space`` ("cifar" or "imagenet") picks the normalisation of uint8 batches
        (data.StepBuilder's); float batches are taken as normalised already."""
        if space not in ("cifar", "imagenet"):
            raise ValueError(f"space must be 'cifar' or 'imagenet', got {space!r}")
        self.matcher = matcher
        self.policy = logits
        self.strategy = matcher.strategy
        self.replicas = n_replicas(self.strategy)
        self.mean, self.std = (tf.constant(v, tf.float32) for v in data.statistics(space))
        self._dist_fns = {}

    # ----- public steps -----------------------------------------------------------------------
    def stage1_step(self, batch: dict) -> dict:
        """Layer 0: g_tr = Σ_i p_i ∇ℓ(aug_i(x)), r̄ = mean over points (SPEC §2 stage 1)."""
        aug = self._images(batch, "aug", 5)
        n_points, n_dense = aug.shape[:2]
        groups, reduce = self._groups(batch, n_dense)
        p = self.policy.probs(0)
        counts = np.bincount(groups, minlength=len(p))
        weights = (p / counts)[groups]  # each copy of candidate c carries p_c / n_c
        cos, r = self._run(None, weights, batch, aug)
        importance = r @ reduce
        loss = self.policy.apply_importance(0, importance, stage_one=True)
        return {"loss": loss, "cos_sim": float(np.mean(cos)), "importance": importance}

    def stagek_step(self, k: int, batch: dict) -> dict:
        """Layer k ≥ 1: g_tr = mean over M sampled copies, r = mean over G dense copies,
        r̄ = mean − std over points (SPEC §2 stage k ≥ 2)."""
        if not 1 <= k < self.policy.n_layers:
            raise ValueError(f"stagek_step needs 1 <= k < {self.policy.n_layers}, got {k}")
        gtr = self._images(batch, "gtr", 5)
        dense = self._images(batch, "dense", 6)
        n_points, n_copies, n_dense = dense.shape[:3]
        if gtr.shape[0] != n_points:
            raise ValueError("batch 'gtr' and 'dense' must have the same number of points")
        groups, reduce = self._groups(batch, n_dense)
        weights = np.full(gtr.shape[1], 1.0 / gtr.shape[1])
        flat = dense.reshape(n_points, n_copies * n_dense, *dense.shape[3:])
        cos, r = self._run(gtr, weights, batch, flat)
        importance = r.reshape(n_points, n_copies, n_dense).mean(axis=1) @ reduce
        loss = self.policy.apply_importance(k, importance, stage_one=False)
        return {"loss": loss, "cos_sim": float(np.mean(cos)), "importance": importance}

    # ----- input checks -----------------------------------------------------------------------
    def _images(self, batch, key, ndim):
        if key not in batch:
            raise ValueError(f"search batch lacks '{key}'")
        arr = np.asarray(batch[key])
        if arr.ndim != ndim:
            raise ValueError(f"search batch '{key}' must have {ndim} dimensions, got {arr.ndim}")
        n_points = arr.shape[0]
        if n_points % self.replicas:
            raise ValueError(f"{n_points} search points are not a multiple of "
                             f"{self.replicas} replicas")
        return arr

    def _groups(self, batch, n_dense):
        """Dense-axis → candidate map and the [D', D] averaging matrix over copies."""
        d = self.policy.n_candidates
        groups = batch.get("dense_groups")
        groups = np.arange(d) if groups is None else np.asarray(groups, dtype=np.int64)
        if groups.shape != (n_dense,):
            raise ValueError(f"dense_groups must have shape ({n_dense},), got {groups.shape}")
        counts = np.bincount(groups, minlength=d) if groups.min() >= 0 else None
        if counts is None or len(counts) != d or np.any(counts == 0):
            raise ValueError(f"dense_groups must map the dense axis onto every candidate 0..{d - 1}")
        reduce = np.zeros((n_dense, d))
        reduce[np.arange(n_dense), groups] = 1.0 / counts[groups]
        return groups, reduce

    # ----- distributed computation ------------------------------------------------------------
    def _run(self, gtr, weights, batch, dense):
        """cos [P] and importances [P, N] of the points; ``gtr=None`` trains on ``dense``."""
        labels = np.asarray(batch["labels"]).astype(np.int32)
        val = self._images(batch, "val", 5)
        val_labels = np.asarray(batch["val_labels"]).astype(np.int32)
        n_points = dense.shape[0]
        if labels.shape != (n_points,) or val.shape[0] != n_points \
                or val_labels.shape != val.shape[:2]:
            raise ValueError("labels [P], val [P, V, H, W, C] and val_labels [P, V] must match "
                             "the points of the batch")
        dtype = self.matcher.dtype
        per = n_points // self.replicas

        def image_dtype(a):  # uint8 goes to the device as it is (normalised there per point)
            if a.dtype == np.uint8:
                return tf.uint8
            if not np.issubdtype(a.dtype, np.floating):
                raise ValueError(f"search images must be uint8 or normalised floats, got {a.dtype}")
            return dtype

        arrays = [(labels, tf.int32), (val, image_dtype(val)), (val_labels, tf.int32),
                  (dense, image_dtype(dense))]
        if gtr is not None:
            arrays.append((gtr, image_dtype(gtr)))

        def value_fn(ctx):
            block = slice(ctx.replica_id_in_sync_group * per,
                          (ctx.replica_id_in_sync_group + 1) * per)
            values = [tf.constant(np.asarray(weights), dtype)]
            values += [tf.constant(a[block], dt) for a, dt in arrays]
            return tuple(values)

        values = self.strategy.experimental_distribute_values_from_function(value_fn)
        with self.matcher.keep_statistics():
            cos, r = self._dist_fn(gtr is None)(*values)
        return np.asarray(cos, np.float64), np.asarray(r, np.float64)

    def _dist_fn(self, shared):
        if shared not in self._dist_fns:
            replica_fn = self._replica_fn(shared)

            def dist(*values):
                cos, r = self.strategy.run(replica_fn, args=values)
                return self.strategy.gather(cos, axis=0), self.strategy.gather(r, axis=0)

            self._dist_fns[shared] = tf.function(dist, reduce_retracing=True)
        return self._dist_fns[shared]

    def _replica_fn(self, shared):
        """Per-replica work on its block of points, one point at a time (bounded memory)."""
        m = self.matcher

        def normalize(x):
            """uint8 -> (x / 255 - mean) / std in float32, the ops of data.normalize."""
            if x.dtype != tf.uint8:
                return x
            y = tf.cast(x, tf.float32) * np.float32(1.0 / 255.0)
            return tf.cast((y - self.mean) / self.std, m.dtype)

        def fn(weights, labels, val, val_labels, dense, gtr=None):
            train = dense if shared else gtr
            n = tf.shape(labels)[0]

            def point(i, cos_out, r_out):
                n_val = tf.shape(val_labels[i])[0]
                g_val = m.weighted_grad_ops(
                    normalize(val[i]), val_labels[i],
                    tf.fill([n_val], 1.0 / tf.cast(n_val, m.dtype)))
                dense_i = normalize(dense[i])
                train_i = dense_i if shared else normalize(train[i])
                g_tr = m.weighted_grad_ops(
                    train_i, tf.fill([tf.shape(train_i)[0]], labels[i]), weights)
                cos, r = m.match_ops(dense_i, tf.fill([tf.shape(dense_i)[0]], labels[i]),
                                     g_val, g_tr)
                return i + 1, cos_out.write(i, cos), r_out.write(i, r)

            cos_out = tf.TensorArray(m.dtype, size=n)
            r_out = tf.TensorArray(m.dtype, size=n, element_shape=[dense.shape[1]])
            _, cos_out, r_out = tf.while_loop(lambda i, c, r: i < n, point,
                                              (tf.constant(0), cos_out, r_out),
                                              parallel_iterations=1)
            return cos_out.stack(), r_out.stack()

        return fn

"""Policy layers and the search step of each stage (SPEC §2 "Policy", "Stage 1", "Stage k ≥ 2").

Framework-free (numpy only), shared by both backends. `PolicyLogits` holds the K layers'
logits and one Adam per layer; it is host state, identical on every process because every
process applies the same update to the same gathered importances. `Searcher` turns one step's
batch into the per-point importances through a backend's matcher (``matcher.points``, which
spreads the points over the devices and gathers the results in point order) and hands them to
`PolicyLogits.apply_importance`.
"""
from __future__ import annotations

import numpy as np

from policy_search import data

IDENTITY_LOGIT = 8.0  # SPEC §2: logits start at 8 on Identity, 0 elsewhere, minus their mean
STAGE1_LOSS_SCALE = 0.25  # SPEC §2 stage 1: loss = −0.25 · Σ r̄_i p_i
F32 = np.float32


def _softmax64(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class Adam:
    """Keras 3's ``Adam(learning_rate, beta_1=0.9, beta_2=0.999, epsilon=1e-7)`` on one float32
    vector, in numpy, operation for operation (SPEC §2: each layer has its own Adam):

        m ← m + (g − m)(1 − β₁),  v ← v + (g² − v)(1 − β₂),
        z ← z − m α / (√v + ε),   α = lr √(1 − β₂ᵗ) / (1 − β₁ᵗ)

    with t the step count after this step, every operation in float32, the constants
    (1 − β) rounded from double as Keras does and β^t the float32 rounding of the double power
    of float32 β (TensorFlow's float32 pow); the result equals Keras' to the bit
    (tests/policy_search/test_layers.py). The state is what Keras keeps: ``iterations``
    (int64), ``momentum`` and ``velocity`` (float32).
    """

    BETA_1, BETA_2, EPSILON = 0.9, 0.999, 1e-7

    def __init__(self, learning_rate: float, size: int):
        self.learning_rate = F32(learning_rate)
        self.iterations = np.int64(0)
        self.momentum = np.zeros(size, F32)
        self.velocity = np.zeros(size, F32)

    def apply(self, gradient: np.ndarray, variable: np.ndarray) -> np.ndarray:
        """The updated ``variable`` (a new float32 array) after one step along ``gradient``."""
        g = np.asarray(gradient, F32)
        t = float(self.iterations + 1)
        beta_1_power = F32(float(F32(self.BETA_1)) ** t)
        beta_2_power = F32(float(F32(self.BETA_2)) ** t)
        alpha = self.learning_rate * np.sqrt(F32(1) - beta_2_power) / (F32(1) - beta_1_power)
        self.momentum = self.momentum + (g - self.momentum) * F32(1 - self.BETA_1)
        self.velocity = self.velocity + (np.square(g) - self.velocity) * F32(1 - self.BETA_2)
        self.iterations = np.int64(self.iterations + 1)
        step = (self.momentum * alpha) / (np.sqrt(self.velocity) + F32(self.EPSILON))
        return (np.asarray(variable, F32) - step).astype(F32)


class PolicyLogits:
    """K layers × D logits, each layer with its own Adam (lr ``policy_lr``, β = 0.9, 0.999).

    The logits are float32 as in the released search; probabilities are reported in float64.
    """

    def __init__(self, n_layers: int, n_candidates: int, identity_index: int,
                 policy_lr: float):
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
        init = np.zeros(self.n_candidates, F32)
        init[self.identity_index] = IDENTITY_LOGIT
        init -= init.mean()
        self.logits = [init.copy() for _ in range(self.n_layers)]
        self.optimizers = [Adam(self.policy_lr, self.n_candidates) for _ in range(self.n_layers)]

    # ----- probabilities ----------------------------------------------------------------------
    def probs(self, k: int) -> np.ndarray:
        """softmax(logits_k) in float64, shape (D,)."""
        return _softmax64(self.logits[self._layer(k)])

    def all_probs(self) -> np.ndarray:
        """(K, D) float64: the policy the search has found so far."""
        return _softmax64(self.all_logits())

    def all_logits(self) -> np.ndarray:
        """(K, D) float64 copy of the logits (for ``Policy.from_logits``)."""
        return np.stack(self.logits).astype(np.float64)

    def _layer(self, k: int) -> int:
        if not 0 <= k < self.n_layers:
            raise IndexError(f"layer {k} is outside 0..{self.n_layers - 1}")
        return k

    # ----- the update -------------------------------------------------------------------------
    def apply_importance(self, k: int, r_points: np.ndarray, stage_one: bool) -> float:
        """One Adam step on layer k from the importances of P points, shape [P, D], along
        ``gradient``. Returns the loss at the logits before the step."""
        loss, grad = self.gradient(k, r_points, stage_one)
        self.logits[k] = self.optimizers[k].apply(grad, self.logits[k])
        return float(loss)

    def gradient(self, k: int, r_points: np.ndarray, stage_one: bool):
        """The loss of layer k at its logits and its gradient from the importances of P
        points, shape [P, D].

        Stage 1: r̄ = mean over points, loss = −0.25 Σ_i r̄_i p_i. Stage k: r̄ = mean − std over
        points (population std, ddof=0, as ``tf.math.reduce_std`` in the released code),
        loss = −P Σ_i r̄_i p_i. The loss and its gradient are float32, as the released search
        computed them.
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
        return _loss_and_gradient(self.logits[k], rbar.astype(F32), F32(scale))

    # ----- checkpointing ----------------------------------------------------------------------
    def get_state(self) -> dict:
        """Logits and every Adam's iteration count and moment estimates, as numpy arrays (the
        keys and dtypes of the checkpoints written when the Adam was Keras')."""
        return {"logits": np.stack(self.logits),
                "adam_iterations": np.array([o.iterations for o in self.optimizers], np.int64),
                "adam_momentum": np.stack([o.momentum for o in self.optimizers]),
                "adam_velocity": np.stack([o.velocity for o in self.optimizers])}

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
        for k, opt in enumerate(self.optimizers):
            self.logits[k] = np.array(state["logits"][k], F32)
            opt.iterations = np.int64(state["adam_iterations"][k])
            opt.momentum = np.array(state["adam_momentum"][k], F32)
            opt.velocity = np.array(state["adam_velocity"][k], F32)


def _loss_and_gradient(z, rbar, scale):
    """L = −scale Σ_i r̄_i softmax(z)_i and ∂L/∂z in float32, by the chain rule as
    TensorFlow's tape takes it (softmax's gradient (g − Σ g p) p with g = ∂L/∂p)."""
    e = np.exp(z - z.max())
    p = e / e.sum()
    loss = -scale * np.sum(rbar * p)
    g = -scale * rbar
    return loss, ((g - np.sum(g * p)) * p).astype(F32)


class Searcher:
    """One search step: the importances of the step's points, then the policy update.

    ``matcher`` is a backend's gradient matcher (``importance.GradientMatcher`` for
    TensorFlow, ``torch_importance.TorchMatcher`` for PyTorch): ``matcher.replicas`` devices
    share the points, and ``matcher.points(...)`` returns every point's cosine and importances
    in point order, on every process.
    """

    def __init__(self, matcher, logits: PolicyLogits, space: str):
        """``space`` ("cifar" or "imagenet") picks the normalisation of uint8 batches
        (data.StepBuilder's); float batches are taken as normalised already."""
        if space not in ("cifar", "imagenet"):
            raise ValueError(f"space must be 'cifar' or 'imagenet', got {space!r}")
        self.matcher = matcher
        self.policy = logits
        self.replicas = int(matcher.replicas)
        self.statistics = data.statistics(space)

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
        if arr.dtype != np.uint8 and not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"search images must be uint8 or normalised floats, got {arr.dtype}")
        if arr.shape[0] % self.replicas:
            raise ValueError(f"{arr.shape[0]} search points are not a multiple of "
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
        cos, r = self.matcher.points(np.asarray(weights, np.float64), labels, val, val_labels,
                                     dense, gtr, self.statistics)
        return np.asarray(cos, np.float64), np.asarray(r, np.float64)

"""What the search records at every step of every layer, for resuming, figures and analysis.

Per layer and step: the cosine similarity of g_val and g_tr (averaged over the step's points,
as the released search logged it), the layer's probabilities after the step's update, and the
mean and the standard deviation over the step's points of every candidate's importance r
(SPEC §2: stage 1 climbs the mean, stage k the mean − std). The probabilities show where the
search went and how fast; the importances show why (which candidates the matching favoured and
how much the mean − std penalty took away).

The full record travels in the search checkpoint (float32, about 1.7 MB per 1,024-step layer of
139 candidates), so a resumed search keeps it and a running one can be drawn at any time
(``python -m augmentation.visualize RESULTS_DIR``). The policy file gets a compact summary
(``op_summary``): each op's probability, summed over its levels, at most ``max_points`` times
per layer.
"""
from __future__ import annotations

import numpy as np

MATRICES = ("probs", "importance_mean", "importance_std")
_PREFIX = {"probs": "prob_trace", "importance_mean": "importance_mean",
           "importance_std": "importance_std"}


class SearchTrace:
    """Per-layer, per-step records of a search (see the module docstring)."""

    def __init__(self, n_layers: int, n_candidates: int):
        self.n_candidates = int(n_candidates)
        self.cos: list[list[float]] = [[] for _ in range(int(n_layers))]
        self.rows: dict[str, list[list[np.ndarray]]] = {
            name: [[] for _ in range(int(n_layers))] for name in MATRICES}

    @property
    def n_layers(self) -> int:
        return len(self.cos)

    def steps_done(self, layer: int) -> int:
        return len(self.cos[layer])

    def record(self, layer: int, cos: float, probs, importance) -> None:
        """One step of ``layer``: its cosine, the probabilities after its update and its
        importances [points, candidates]."""
        importance = np.asarray(importance, np.float64)
        self.cos[layer].append(float(cos))
        values = {"probs": np.asarray(probs, np.float64), "importance_mean":
                  importance.mean(axis=0), "importance_std": importance.std(axis=0)}
        for name in MATRICES:
            self.rows[name][layer].append(values[name].astype(np.float32))

    def truncate(self, layer: int, step: int) -> None:
        """Forget the steps of ``layer`` from ``step`` on (a step cut short by Ctrl-C)."""
        del self.cos[layer][step:]
        for name in MATRICES:
            del self.rows[name][layer][step:]

    def matrix(self, name: str, layer: int) -> np.ndarray:
        """[steps, candidates] float32 record ``name`` of ``layer`` (NaN rows where a
        checkpoint from before these records were kept had none)."""
        rows = self.rows[name][layer]
        if not rows:
            return np.zeros((0, self.n_candidates), np.float32)
        return np.stack(rows)

    # ----- checkpoint arrays ----------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        out = {f"cos_trace/{k}": np.asarray(c, np.float64) for k, c in enumerate(self.cos)}
        for name in MATRICES:
            for k in range(self.n_layers):
                out[f"{_PREFIX[name]}/{k}"] = self.matrix(name, k)
        return out

    @classmethod
    def from_arrays(cls, arrays) -> "SearchTrace":
        """Inverse of ``arrays`` (``arrays`` maps names to arrays, e.g. a checkpoint's, with
        the policy logits as ``policy/logits``). Layers recorded before the matrices were kept
        get NaN rows, one per recorded cosine; a matrix that is not floats or does not have
        one row per cosine raises ValueError."""
        n_layers = len([k for k in arrays if k.startswith("cos_trace/")])
        sized = [np.shape(arrays[k])[-1] for k in ("policy/logits", "prob_trace/0")
                 if k in arrays]
        n_candidates = int(sized[0]) if sized else 0
        trace = cls(n_layers, n_candidates)
        for k in range(n_layers):
            trace.cos[k] = [float(c) for c in arrays[f"cos_trace/{k}"]]
            for name in MATRICES:
                key = f"{_PREFIX[name]}/{k}"
                shape = (len(trace.cos[k]), n_candidates)
                matrix = np.asarray(arrays[key]) if key in arrays else \
                    np.full(shape, np.nan, np.float32)
                if matrix.dtype.kind != "f" or matrix.shape != shape:  # NaN itself is legal
                    raise ValueError(f"'{key}' holds {matrix.dtype} of shape {matrix.shape}, "
                                     f"expected floats of shape {shape}")
                trace.rows[name][k] = list(matrix.astype(np.float32))
        return trace

    # ----- the policy file's summary --------------------------------------------------------
    def op_summary(self, candidates, max_points: int = 128) -> dict:
        """Each op's probability (summed over its levels) and the layer's entropy (nats, over
        the candidates) after the recorded steps, at most ``max_points`` steps per layer
        (evenly spaced, the first and last always kept), rounded to 5 decimals: ``{"ops":
        [...], "steps": [[...] per layer], "probs": [[[...] per op] per step] per layer,
        "entropy": [[...] per layer]}``. Steps count from 1. This is what the policy file's
        ``meta.op_prob_trace`` and a results folder's ``trace.json`` hold, and what
        ``python -m augmentation.visualize`` draws."""
        ops = list(dict.fromkeys(name for name, _ in candidates))
        column = np.array([ops.index(name) for name, _ in candidates])
        steps, probs, entropy = [], [], []
        for k in range(self.n_layers):
            matrix = self.matrix("probs", k).astype(np.float64)
            n = len(matrix)
            chosen = sorted(set(np.linspace(0, n - 1, min(n, max_points)).round().astype(int)))
            per_op = np.zeros((len(chosen), len(ops)))
            for j, c in enumerate(column):
                per_op[:, c] += matrix[chosen, j]
            steps.append([int(s) + 1 for s in chosen])
            probs.append([[round(float(v), 5) for v in row] for row in per_op])
            p = matrix[chosen]
            with np.errstate(divide="ignore", invalid="ignore"):
                h = -np.sum(np.where(p > 0, p * np.log(p), 0.0), axis=1)
            entropy.append([round(float(v), 5) for v in h])
        return {"ops": ops, "steps": steps, "probs": probs, "entropy": entropy}

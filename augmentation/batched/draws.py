"""The random draws of the batched path (SPEC §1, §3): which candidate each image gets per
layer, the per-image uniforms of the mirror and the random ops, and the random ops' parameters
made from them.

Both executors of ``augmentation.batched`` (the compiled kernels and the torch executor) take
their parameters from here, in the same order from one ``torch.Generator`` (on the CPU or on
the images' device; without one, torch's global generator), so they give the same pixels. The
rules are the Pillow path's: candidates by each layer's inverse CDF (``policy.pick_candidates``,
as ``DeepAAPolicy`` samples), the cutout centre and box of ``ops.cutout_center`` /
``ops.cutout_box``, RandCrop's offsets and RandResizeCrop's box (``ops.resized_crop_box``) from
uniforms exactly as ``ops`` turns a numpy Generator's draws into them: the same pixels for
the same draws (tests/augmentation/batched/test_apply.py feeds the Pillow ops those draws).
"""
from __future__ import annotations

import numpy as np
import torch

from ..ops import CROP_PAD, CUTOUT_SIDE
from ..policy import pick_candidates
from ..space import OPS
from . import geometry, resize


def uniform(shape, generator, device) -> torch.Tensor:
    """float64 uniforms in [0, 1) drawn on the generator's device, moved to ``device``."""
    where = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=where, dtype=torch.float64).to(device)


# Per-image uniforms of one call (of every layer of a policy, drawn before any layer runs),
# in image order: column 0 decides the sign of a signed op under the mirror, columns 1 and 2
# the parameters of a random op (the flip; the cutout centre x, y; the crop's top, left).
# Parameters therefore do not depend on how images are grouped, and the torch and C
# executors use the same numbers.
N_UNIFORMS = 3


def draw_uniforms(shape, names, mirror: bool, generator) -> torch.Tensor | None:
    """float64 (*shape, 3) on the CPU (shape: (n,) or (layers, n)), or None when no op in
    ``names`` needs them (nothing is drawn then; RandResizeCrop draws its own boxes, layer
    by layer, after these)."""
    if not any((mirror and OPS[name].signed) or (OPS[name].random and name != "RandResizeCrop")
               for name in names):
        return None
    return uniform((*shape, N_UNIFORMS), generator, torch.device("cpu"))


def random_params(name: str, u, shape, generator):
    """The draws of random op ``name`` (SPEC §1) for images whose uniforms are ``u`` (float64
    numpy (N, 3), see draw_uniforms), as numpy arrays: RandFlip's flags, the cutout boxes
    (x0, y0, x1, y1), RandCrop's (top, left), RandResizeCrop's (left, top, w, h) boxes from
    its own draws. numpy, not torch: a few small arrays, where torch's per-call cost would
    dominate."""
    n, _, h, w = shape
    if name == "RandFlip":
        return u[:, 1] < 0.5
    if name in CUTOUT_SIDE:
        side = CUTOUT_SIDE[name]
        (x_lo, x_hi), (y_lo, y_hi) = geometry.cutout_centre_bounds(w, h, side)
        cx, cy = x_lo + (x_hi - x_lo) * u[:, 1], y_lo + (y_hi - y_lo) * u[:, 2]
        return geometry.cutout_boxes(w, h, side, cx, cy)
    if name == "RandCrop":
        offsets = np.floor(u[:, 1:3] * (2 * CROP_PAD + 1)).astype(np.int64)
        return offsets[:, 0], offsets[:, 1]
    tries = uniform((4, n, 10), generator, torch.device("cpu")).numpy()
    return resize.resized_crop_boxes(w, h, *tries)


def sample_candidates(policy, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """int64 (n, layers) on the CPU: one candidate index per image per layer, by each layer's
    inverse CDF (policy.pick_candidates, the Pillow transform's rule) at uniforms (n, layers)
    drawn in one call."""
    probs = np.asarray(policy.probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(policy.candidates):
        raise ValueError(f"policy probs of shape {tuple(probs.shape)} do not match "
                         f"{len(policy.candidates)} candidates")
    if n == 0:
        return torch.zeros(0, probs.shape[0], dtype=torch.long)
    u = uniform((n, probs.shape[0]), generator, torch.device("cpu")).numpy()
    return torch.from_numpy(pick_candidates(np.cumsum(probs, axis=1), u))

"""Per-sample augmentation of uint8 image batches (N x 3 x H x W) on any torch device.

Every image gets its own op, level, mirror sign and random parameters, which is what a
DeepAA policy needs (SPEC §1, §3) and what torchvision (one op per batch) and Kornia (one
sub-policy per call) do not offer. The op names, ranges, identity levels and signedness come
from ``augmentation.space``; the Pillow ops in ``augmentation.ops`` are the ground truth:

* ops 1-14 (ShearX/Y, TranslateX/Y, Rotate, AutoContrast, Invert, Equalize, Solarize,
  Posterize, Contrast, Color, Brightness, Sharpness) give the same pixels as ``apply_op``,
  bit for bit (batched_geometry / batched_color say how);
* RandFlip, RandCutout(60) and RandCrop draw their parameters from the same distributions as
  the Pillow path and move pixels exactly as it does for given parameters;
* RandResizeCrop draws its box by the same rule (ops.resized_crop_box) and resizes with a
  bit-exact port of Pillow's fixed-point BICUBIC resampling.

Randomness comes from an optional ``torch.Generator`` (on the CPU or on the images' device);
without one, torch's global generator is used.
"""
from __future__ import annotations

import torch

from . import batched_color as colour
from . import batched_geometry as geometry
from .ops import CROP_PAD, CUTOUT_SIDE, IMAGENET_SIZE, cutout_center
from .space import OPS, check_l_mags, level_to_value

_AFFINE = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
_COLOUR = {
    "AutoContrast": lambda x, v: colour.auto_contrast(x),
    "Invert": lambda x, v: colour.invert(x),
    "Equalize": lambda x, v: colour.equalize(x),
    "Solarize": colour.solarize,
    "Posterize": colour.posterize,
    "Contrast": colour.contrast,
    "Color": colour.color,
    "Brightness": colour.brightness,
    "Sharpness": colour.sharpness,
}


def _check_images(x) -> None:
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() != 4 \
            or x.shape[1] != 3:
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected a torch.uint8 tensor N x 3 x H x W, got {got}")


def _check_name(name: str) -> None:
    if name not in OPS:
        raise ValueError(f"unknown op {name!r}")


def _uniform(shape, generator, device) -> torch.Tensor:
    """float64 uniforms in [0, 1) drawn on the generator's device, moved to ``device``."""
    where = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=where, dtype=torch.float64).to(device)


def _randint(high: int, shape, generator, device) -> torch.Tensor:
    where = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(0, high, shape, generator=generator, device=where).to(device)


class _BoundsProbe:
    """Stands in for a numpy Generator to read the uniform ranges ops.cutout_center uses, so
    the centre rule lives in one place."""

    def __init__(self):
        self.bounds = []

    def uniform(self, lo, hi):
        self.bounds.append((float(lo), float(hi)))
        return lo


def cutout_centre_bounds(width: int, height: int, side: int):
    """((x_lo, x_hi), (y_lo, y_hi)) of the uniform cutout centre (ops.cutout_center)."""
    probe = _BoundsProbe()
    cutout_center(width, height, side, probe)
    return probe.bounds[0], probe.bounds[1]


def _random_op(x: torch.Tensor, name: str, generator) -> torch.Tensor:
    """RandFlip, RandCutout(60), RandCrop, RandResizeCrop with per-image draws (SPEC §1)."""
    n, _, h, w = x.shape
    if name == "RandFlip":
        return geometry.flip(x, _uniform(n, generator, x.device) < 0.5)
    if name in CUTOUT_SIDE:
        side = CUTOUT_SIDE[name]
        (x_lo, x_hi), (y_lo, y_hi) = cutout_centre_bounds(w, h, side)
        u = _uniform((2, n), generator, x.device)
        cx, cy = x_lo + (x_hi - x_lo) * u[0], y_lo + (y_hi - y_lo) * u[1]
        return geometry.cutout(x, geometry.cutout_boxes(w, h, side, cx, cy))
    if name == "RandCrop":
        offsets = _randint(2 * CROP_PAD + 1, (2, n), generator, x.device)
        return geometry.padded_crop(x, offsets[0], offsets[1], CROP_PAD)
    if name == "RandResizeCrop":
        u = _uniform((4, n, 10), generator, torch.device("cpu"))
        boxes = geometry.resized_crop_boxes(w, h, *u)
        return geometry.resized_crop(x, boxes, IMAGENET_SIZE)
    raise ValueError(f"unknown random op {name!r}")


def _apply_one_op(x, name, values, mirror, generator) -> torch.Tensor:
    """One op on every image of ``x``; ``values`` float64 (N,) on the CPU (ignored for ops
    without a magnitude). Mirror flips signed values with p = 0.5 per image."""
    spec = OPS[name]
    if x.shape[0] == 0:
        return x
    if spec.random:
        return _random_op(x, name, generator)
    if name == "Identity":
        return x.clone()
    if mirror and spec.signed:
        flips = _uniform(values.shape[0], generator, torch.device("cpu")) < 0.5
        values = torch.where(flips, -values, values)
    if name in _AFFINE:
        return geometry.affine(x, name, values.tolist())
    return _COLOUR[name](x, values.to(x.device))


def _values(name: str, levels: torch.Tensor, l_mags: int) -> torch.Tensor:
    """float64 values of ``levels`` for op ``name`` (level_to_value, checked)."""
    if not OPS[name].has_magnitude:
        return torch.zeros(levels.shape[0], dtype=torch.float64)
    table = torch.tensor([level_to_value(name, m, l_mags) for m in range(l_mags)],
                         dtype=torch.float64)
    if levels.numel() and (levels.min() < 0 or levels.max() >= l_mags):
        raise ValueError(f"level out of range 0..{l_mags - 1} for {name}")
    return table[levels]


def apply_candidate(x, name: str, level: int, l_mags: int = 13, mirror: bool = False,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply candidate (name, level) to every image of ``x``; random ops and the mirror draw
    per image. Same shape, dtype and device (RandResizeCrop: N x 3 x 224 x 224)."""
    _check_images(x)
    _check_name(name)
    check_l_mags(l_mags)
    levels = torch.full((x.shape[0],), int(level), dtype=torch.long)
    return _apply_one_op(x, name, _values(name, levels, l_mags), mirror, generator)


def _grouped(x, names, levels, l_mags, mirror, generator):
    """Group images by op (in op-table order, so draws are reproducible), apply, and return
    {(h, w): (indices, images)}: RandResizeCrop changes the size of the images it touches."""
    present = set(names)
    order = [name for name in OPS if name in present]
    parts = {}
    for name in order:
        sel = [i for i, nm in enumerate(names) if nm == name]
        sel_t = torch.tensor(sel, dtype=torch.long)
        out = _apply_one_op(x[sel_t.to(x.device)], name, _values(name, levels[sel_t], l_mags),
                            mirror, generator)
        parts.setdefault(tuple(out.shape[2:]), []).append((sel_t, out))
    result = {}
    for size, chunks in parts.items():
        idx = torch.cat([c[0] for c in chunks])
        result[size] = (idx, torch.cat([c[1] for c in chunks]))
    return result


def _merge(groups, n: int, like: torch.Tensor, crop: bool) -> torch.Tensor:
    """Scatter {(h, w): (indices, images)} back into one batch in the original order;
    centre-crop to 224 (ops.center_crop) when ``crop`` or when the sizes differ."""
    square = (IMAGENET_SIZE, IMAGENET_SIZE)
    if crop or len(groups) > 1:
        parts = [(idx, imgs if size == square else geometry.center_crop(imgs, IMAGENET_SIZE))
                 for size, (idx, imgs) in groups.items()]
        size = square
    else:
        size, parts = next(iter(groups)), list(groups.values())
    out = like.new_empty((n, like.shape[1], *size))
    for idx, images in parts:
        out[idx.to(like.device)] = images
    return out


def apply_ops(x, names, levels, l_mags: int = 13, mirror: bool = False,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply op ``names[i]`` at ``levels[i]`` to image i. Images are grouped by op internally
    and scattered back in place. If some images go through RandResizeCrop and the input is
    not 224 x 224, the others are centre-cropped to 224 (ops.center_crop) so that the batch
    keeps one shape; apply_policy_batch instead crops only after the last layer (SPEC §2)."""
    _check_images(x)
    check_l_mags(l_mags)
    names = list(names)
    levels = torch.as_tensor(levels, dtype=torch.long).reshape(-1).cpu()
    if len(names) != x.shape[0] or levels.shape[0] != x.shape[0]:
        raise ValueError(f"need one op and one level per image: {x.shape[0]} images, "
                         f"{len(names)} names, {levels.shape[0]} levels")
    for name in set(names):
        _check_name(name)
    if x.shape[0] == 0:
        return x.clone()
    groups = _grouped(x, names, levels, l_mags, mirror, generator)
    return _merge(groups, x.shape[0], x, crop=False)


def sample_candidates(policy, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """int64 (n, layers): one candidate index per image per layer, drawn with
    torch.multinomial from each layer's probabilities."""
    where = generator.device if generator is not None else torch.device("cpu")
    probs = torch.as_tensor(policy.probs, dtype=torch.float64, device=where)
    if probs.dim() != 2 or probs.shape[1] != len(policy.candidates):
        raise ValueError(f"policy probs of shape {tuple(probs.shape)} do not match "
                         f"{len(policy.candidates)} candidates")
    if n == 0:
        return torch.zeros(0, probs.shape[0], dtype=torch.long)
    draws = [torch.multinomial(row, n, replacement=True, generator=generator) for row in probs]
    return torch.stack(draws, dim=1).cpu()


def apply_policy_batch(policy, x, mirror: bool = True,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply a DeepAA policy per image: for each layer in order, each image draws its own
    candidate from that layer's distribution (SPEC §3; ``mirror=True`` is the evaluation
    semantics). Images that RandResizeCrop brings to 224 x 224 continue at that size; in the
    ImageNet space every image is centre-cropped to 224 after the last layer (SPEC §2, §3).
    A batch with no image can be given; it comes back unchanged."""
    _check_images(x)
    n = x.shape[0]
    if n == 0:
        return x.clone()
    choice = sample_candidates(policy, n, generator)
    names_all = [name for name, _ in policy.candidates]
    levels_all = torch.tensor([level for _, level in policy.candidates], dtype=torch.long)
    groups = {tuple(x.shape[2:]): (torch.arange(n), x)}
    for layer in range(choice.shape[1]):
        new_groups = {}
        for idx, images in groups.values():
            picked = choice[idx, layer]
            names = [names_all[i] for i in picked.tolist()]
            for size, (sub, out) in _grouped(images, names, levels_all[picked], policy.l_mags,
                                             mirror, generator).items():
                new_groups.setdefault(size, []).append((idx[sub], out))
        groups = {size: (torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks]))
                  for size, chunks in new_groups.items()}
    return _merge(groups, n, x, crop=policy.space == "imagenet")

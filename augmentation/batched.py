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

Speed: pixels stay uint8 from end to end. Geometry is cached source maps (block copies or one
gather), colour is cached lookup tables (batched_lut); a mixed batch is grouped by one sort, and
the affine ops, like the point ops, that meet in one call run as one gather / one lookup.
benchmarks/README.md has the numbers.
"""
from __future__ import annotations

from functools import lru_cache

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
    return _COLOUR[name](x, values)


_OP_NAMES = tuple(OPS)  # op ids index this (op-table order)
_OP_ID = {name: k for k, name in enumerate(_OP_NAMES)}


@lru_cache(maxsize=256)
def _value_table(name: str, l_mags: int) -> torch.Tensor:
    return torch.tensor([level_to_value(name, m, l_mags) if OPS[name].has_magnitude else 0.0
                         for m in range(l_mags)], dtype=torch.float64)


def _values(name: str, levels: torch.Tensor, l_mags: int) -> torch.Tensor:
    """float64 values of ``levels`` for op ``name`` (level_to_value, checked)."""
    if not OPS[name].has_magnitude:
        return torch.zeros(levels.shape[0], dtype=torch.float64)
    if levels.numel() and (levels.min() < 0 or levels.max() >= l_mags):
        raise ValueError(f"level out of range 0..{l_mags - 1} for {name}")
    return _value_table(name, l_mags)[levels]


def apply_candidate(x, name: str, level: int, l_mags: int = 13, mirror: bool = False,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply candidate (name, level) to every image of ``x``; random ops and the mirror draw
    per image. Same shape, dtype and device (RandResizeCrop: N x 3 x 224 x 224)."""
    _check_images(x)
    _check_name(name)
    check_l_mags(l_mags)
    levels = torch.full((x.shape[0],), int(level), dtype=torch.long)
    return _apply_one_op(x, name, _values(name, levels, l_mags), mirror, generator)


# Ops applied together when two or more of them meet in one call: the affine ops as one
# gather with per-image maps, the point ops as one lookup with per-image LUTs.
_FAMILIES = (_AFFINE, tuple(colour.LUT_BUILDERS))


def _apply_family(x, present, slices, levels, l_mags, mirror, generator):
    """Apply several ops of one family to their images (``slices[name]``) in one pass."""
    sel = torch.cat([slices[name] for name in present])
    values = torch.cat([_values(name, levels[slices[name]], l_mags) for name in present])
    sub = x.index_select(0, sel.to(x.device))
    if present[0] in _AFFINE:
        if mirror:  # every affine op is signed
            flips = _uniform(values.shape[0], generator, torch.device("cpu")) < 0.5
            values = torch.where(flips, -values, values)
        names = [name for name in present for _ in range(slices[name].shape[0])]
        return sel, geometry.affine(sub, names, values.tolist())
    luts, start = [], 0
    for name in present:
        end = start + slices[name].shape[0]
        luts.append(colour.LUT_BUILDERS[name](sub[start:end], values[start:end]))
        start = end
    return sel, colour.apply_lut(sub, torch.cat(luts))


def _grouped(x, op_ids, levels, l_mags, mirror, generator):
    """Group images by op (in op-table order, so draws are reproducible), apply, and return
    {(h, w): (indices, images)}: RandResizeCrop changes the size of the images it touches.
    ``op_ids`` int64 (N,) indexes _OP_NAMES; grouping is one stable sort, no Python loop over
    images. Families of ops (_FAMILIES) present together are applied in one pass."""
    order = torch.argsort(op_ids, stable=True)
    slices, start = {}, 0
    for op, count in enumerate(torch.bincount(op_ids, minlength=len(_OP_NAMES)).tolist()):
        if count:
            slices[_OP_NAMES[op]] = order[start:start + count]
            start += count
    parts, done = {}, set()
    for family in _FAMILIES:
        present = [name for name in family if name in slices]
        if len(present) >= 2:
            sel, out = _apply_family(x, present, slices, levels, l_mags, mirror, generator)
            parts.setdefault(tuple(out.shape[2:]), []).append((sel, out))
            done.update(present)
    for name, sel in slices.items():
        if name in done:
            continue
        whole = sel.shape[0] == x.shape[0]
        out = _apply_one_op(x if whole else x.index_select(0, sel.to(x.device)), name,
                            _values(name, levels[sel], l_mags), mirror, generator)
        parts.setdefault(tuple(out.shape[2:]), []).append((sel, out))
    result = {}
    for size, chunks in parts.items():
        if len(chunks) == 1:
            result[size] = chunks[0]
        else:
            result[size] = (torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks]))
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
    idx = torch.cat([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    images = torch.cat([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    # A gather of whole images by the inverse permutation: index_select along dim 0 copies
    # contiguous images, much faster on the CPU than index_copy_ / index_put.
    return images.index_select(0, torch.argsort(idx).to(like.device))


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
    op_ids = torch.tensor([_OP_ID[name] for name in names], dtype=torch.long)
    groups = _grouped(x, op_ids, levels, l_mags, mirror, generator)
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
    for name, _ in policy.candidates:
        _check_name(name)
    ops_all = torch.tensor([_OP_ID[name] for name, _ in policy.candidates], dtype=torch.long)
    levels_all = torch.tensor([level for _, level in policy.candidates], dtype=torch.long)
    groups = {tuple(x.shape[2:]): (torch.arange(n), x)}
    for layer in range(choice.shape[1]):
        new_groups = {}
        for idx, images in groups.values():
            picked = choice[idx, layer]
            for size, (sub, out) in _grouped(images, ops_all[picked], levels_all[picked],
                                             policy.l_mags, mirror, generator).items():
                new_groups.setdefault(size, []).append((idx[sub], out))
        groups = {size: chunks[0] if len(chunks) == 1 else
                  (torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks]))
                  for size, chunks in new_groups.items()}
    return _merge(groups, n, x, crop=policy.space == "imagenet")

"""Per-sample augmentation of uint8 image batches (N x 3 x H x W) on any torch device.

Every image gets its own op, level, mirror sign and random parameters, which is what a
DeepAA policy needs (SPEC §1, §3) and what torchvision (one op per batch) and Kornia (one
sub-policy per call) do not offer. The op names, ranges, identity levels and signedness come
from ``augmentation.space``; the Pillow ops in ``augmentation.ops`` are the ground truth:

* ops 1-14 (ShearX/Y, TranslateX/Y, Rotate, AutoContrast, Invert, Equalize, Solarize,
  Posterize, Contrast, Color, Brightness, Sharpness) give the same pixels as ``apply_op``,
  bit for bit (batched.geometry / batched.color say how);
* RandFlip, RandCutout(60) and RandCrop draw their parameters from the same distributions as
  the Pillow path and move pixels exactly as it does for given parameters;
* RandResizeCrop draws its box by the same rule (ops.resized_crop_box) and resizes with a
  bit-exact port of Pillow's fixed-point BICUBIC resampling, passes in Pillow's order
  (batched.resize).

Randomness comes from an optional ``torch.Generator`` (on the CPU or on the images' device);
without one, torch's global generator is used; ``batched.draws`` makes the draws.

Two executors apply the ops, with the same parameters (one set of per-image draws), so they
give the same pixels:

* on CPU tensors, the compiled kernels of ``batched.native`` (C, built on first use): one
  pass over the batch (a whole policy in one call), each image with its own op, no grouping;
  23-53x Pillow at 32x32 and about 10x for ImageNet policies at 224x224 on
  one core (benchmarks/README.md); results come back NCHW-contiguous whatever the input's
  memory format. RandResizeCrop is one more op of that pass on 224 x 224 images; on images
  of another size it changes their size, so they are resized by a C call of their own
  (batched.native.resized_crop) and rejoin the rest afterwards. Any device other than the
  CPU, and a CPU without a C compiler, use:
* the torch executor (any device): cached source maps (block copies or one gather) for the
  geometry, cached lookup tables (batched.lut) for the colour ops; a mixed batch is grouped by
  one sort, and the affine ops, like the point ops, that meet in one call run as one pass.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from ..ops import CROP_PAD, CUTOUT_SIDE, IMAGENET_SIZE
from ..space import OPS, check_l_mags, level_to_value
from . import color as colour
from . import draws, geometry, native, resize
from .device import to_device
from .draws import sample_candidates  # noqa: F401  (part of this module's API)

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


def _params(name: str, values, u, shape, mirror: bool, generator):
    """The per-image parameters of op ``name`` for the torch executor, for images whose
    uniforms are ``u``: the values (float64 (N,), CPU) of a magnitude op after the mirror
    (SPEC §3: signed values flip with p = 0.5 per image), or the draws of a random op
    (_random_params), all CPU tensors."""
    if OPS[name].random:
        drawn = draws.random_params(name, None if u is None else u.numpy(), shape, generator)
        if isinstance(drawn, tuple):
            return tuple(torch.from_numpy(part) for part in drawn)
        return torch.from_numpy(drawn)
    if mirror and OPS[name].signed:
        values = torch.where(u[:, 0] < 0.5, -values, values)
    return values


def _execute(x: torch.Tensor, name: str, params) -> torch.Tensor:
    """The torch executor: op ``name`` on every image of ``x`` with its ``params``."""
    if name == "Identity":
        return x.clone()
    if name == "RandFlip":
        return geometry.flip(x, params)
    if name in CUTOUT_SIDE:
        return geometry.cutout(x, params)
    if name == "RandCrop":
        return geometry.padded_crop(x, params[0], params[1], CROP_PAD)
    if name == "RandResizeCrop":
        if native.usable(x, ()):  # the C resize: the same pixels, several times faster
            return native.resized_crop(x, params, IMAGENET_SIZE)
        return resize.resized_crop(x, params, IMAGENET_SIZE)
    if name in _AFFINE:
        return geometry.affine(x, name, params.tolist())
    return _COLOUR[name](x, params)


_OP_NAMES = tuple(OPS)  # op ids index this (op-table order)
_OP_ID = {name: k for k, name in enumerate(_OP_NAMES)}
_HAS_MAGNITUDE = torch.tensor([OPS[name].has_magnitude for name in _OP_NAMES])
_SIGNED_NP = np.array([OPS[name].signed for name in _OP_NAMES])


@lru_cache(maxsize=256)
def _value_table(name: str, l_mags: int) -> torch.Tensor:
    return torch.tensor([level_to_value(name, m, l_mags) if OPS[name].has_magnitude else 0.0
                         for m in range(l_mags)], dtype=torch.float64)


def _values(name: str, levels: torch.Tensor, l_mags: int) -> torch.Tensor:
    """float64 values of ``levels`` for op ``name`` (level_to_value)."""
    if not OPS[name].has_magnitude:
        return torch.zeros(levels.shape[0], dtype=torch.float64)
    return _value_table(name, l_mags)[levels]


def _check_levels(op_ids: torch.Tensor, levels: torch.Tensor, l_mags: int) -> torch.Tensor:
    """Raise on a level outside 0..l_mags-1 for a magnitude op; return the levels with those
    of ops without a magnitude set to 0 (they are ignored)."""
    magnitude = _HAS_MAGNITUDE[op_ids]
    bad = magnitude & ((levels < 0) | (levels >= l_mags))
    if bool(bad.any()):
        name = _OP_NAMES[int(op_ids[bad][0])]
        raise ValueError(f"level out of range 0..{l_mags - 1} for {name}")
    return torch.where(magnitude, levels, torch.zeros_like(levels))


_NATIVE_RANDOM = ("RandFlip", "RandCrop", *CUTOUT_SIDE, "RandResizeCrop")


def _native_rows(shape, ids, levels, u, l_mags, mirror, generator):
    """The C kernels' parameters of op ``ids[l, i]`` at ``levels[l, i]`` (int64 arrays
    (layers, n)) for layer l of image i of a batch of ``shape``, whose uniforms are ``u``
    (float64 (layers, n, 3) or None): the rows of a cached candidate table (batched.native),
    plus the random ops' draws, every layer at once except RandResizeCrop's boxes (drawn
    layer by layer, as on the torch path). All numpy: a few small arrays, where torch's
    per-call cost would dominate. Returns (table, code, ip, fp), (layers, n, ...) each."""
    table = native.candidate_table(_OP_NAMES, l_mags, *shape[2:])
    layers, n = ids.shape
    flat = ids.reshape(-1)
    present = np.unique(flat).tolist()
    table.ensure(present)
    flat_u = None if u is None else u.reshape(-1, draws.N_UNIFORMS)
    negative = np.zeros_like(flat)
    if mirror and u is not None:
        negative = (_SIGNED_NP[flat] & (flat_u[:, 0] < 0.5)).astype(flat.dtype)
    code, ip, fp = table.rows(flat, levels.reshape(-1), negative)
    for name in _NATIVE_RANDOM:
        if _OP_ID[name] not in present:
            continue
        # RandResizeCrop's boxes are drawn per layer; the others come from the uniforms
        parts = [flat] if name != "RandResizeCrop" else [ids[layer] for layer in range(layers)]
        for k, part in enumerate(parts):
            rows = np.flatnonzero(part == _OP_ID[name])
            if rows.size:
                rows = rows + k * n
                native.fill_random(ip, rows, name, draws.random_params(
                    name, None if u is None else flat_u[rows], (rows.size,) + tuple(shape[1:]),
                    generator))
    return table, code.reshape(layers, n), ip.reshape(layers, n, 4), fp.reshape(layers, n)


def _native(x, op_ids, levels, u, l_mags, mirror, generator) -> torch.Tensor:
    """All images of ``x`` through the C kernels in one call, one op per image."""
    table, code, ip, fp = _native_rows(x.shape, op_ids.numpy()[None], levels.numpy()[None],
                                       None if u is None else u.numpy()[None], l_mags, mirror,
                                       generator)
    return table.run(x, code, ip, fp)


def _apply_one_op(x, name, values, u, mirror, generator) -> torch.Tensor:
    """One op on every image of ``x`` with the torch executor; ``values`` float64 (N,) on the
    CPU (ignored for ops without a magnitude), ``u`` the images' uniforms."""
    if x.shape[0] == 0:
        return x
    return _execute(x, name, _params(name, values, u, x.shape, mirror, generator))


def apply_candidate(x, name: str, level: int, l_mags: int = 13, mirror: bool = False,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply candidate (name, level) to every image of ``x``; random ops and the mirror draw
    per image. Same shape, dtype and device (RandResizeCrop: N x 3 x 224 x 224)."""
    _check_images(x)
    _check_name(name)
    check_l_mags(l_mags)
    n = x.shape[0]
    op_ids = torch.full((n,), _OP_ID[name], dtype=torch.long)
    levels = _check_levels(op_ids, torch.full((n,), int(level), dtype=torch.long), l_mags)
    u = draws.draw_uniforms((n,), (name,), mirror, generator)
    if n and native.usable(x, (name,)):
        return _native(x, op_ids, levels, u, l_mags, mirror, generator)
    return _apply_one_op(x, name, _values(name, levels, l_mags), u, mirror, generator)


# Ops applied together when two or more of them meet in one call: the affine ops as one
# gather with per-image maps, the point ops as one lookup with per-image LUTs.
_FAMILIES = (_AFFINE, tuple(colour.LUT_BUILDERS))


def _apply_family(x, present, slices, levels, u, l_mags, mirror):
    """Apply several ops of one family to their images (``slices[name]``) in one pass."""
    sel = torch.cat([slices[name] for name in present])
    values = torch.cat([_values(name, levels[slices[name]], l_mags) for name in present])
    sub = x.index_select(0, to_device(sel, x.device))
    if present[0] in _AFFINE:
        if mirror:  # every affine op is signed
            values = torch.where(u[sel, 0] < 0.5, -values, values)
        names = [name for name in present for _ in range(slices[name].shape[0])]
        return sel, geometry.affine(sub, names, values.tolist())
    luts, start = [], 0
    for name in present:
        end = start + slices[name].shape[0]
        luts.append(colour.LUT_BUILDERS[name](sub[start:end], values[start:end]))
        start = end
    return sel, colour.apply_lut(sub, torch.cat(luts))


def _grouped(x, op_ids, levels, u, l_mags, mirror, generator):
    """Group images by op (one stable sort, no Python loop over images), apply with the torch
    executor, and return {(h, w): (indices, images)}: RandResizeCrop changes the size of the
    images it touches. Families of ops (_FAMILIES) present together run in one pass."""
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
            sel, out = _apply_family(x, present, slices, levels, u, l_mags, mirror)
            parts.setdefault(tuple(out.shape[2:]), []).append((sel, out))
            done.update(present)
    for name, sel in slices.items():
        if name in done:
            continue
        whole = sel.shape[0] == x.shape[0]
        out = _apply_one_op(x if whole else x.index_select(0, to_device(sel, x.device)), name,
                            _values(name, levels[sel], l_mags),
                            None if u is None else u[sel], mirror, generator)
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
        parts = [(idx, imgs if size == square else resize.center_crop(imgs, IMAGENET_SIZE))
                 for size, (idx, imgs) in groups.items()]
        size = square
    else:
        size, parts = next(iter(groups)), list(groups.values())
    idx = torch.cat([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    images = torch.cat([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    shares_input = images.untyped_storage().data_ptr() == like.untyped_storage().data_ptr()
    if not shares_input and torch.equal(idx.cpu(), torch.arange(n)):  # in order: no gather
        return images.contiguous()
    # A gather of whole images by the inverse permutation: index_select along dim 0 copies
    # contiguous images, much faster on the CPU than index_copy_ / index_put.
    return images.index_select(0, to_device(torch.argsort(idx), like.device))


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
    levels = _check_levels(op_ids, levels, l_mags)
    u = draws.draw_uniforms((x.shape[0],), set(names), mirror, generator)
    return _merge(_dispatch(x, op_ids, levels, u, l_mags, mirror, generator), x.shape[0], x,
                  crop=False)


def _dispatch(x, op_ids, levels, u, l_mags, mirror, generator) -> dict:
    """Apply op_ids[i] at levels[i] to image i with the fastest executor that has every op:
    the C kernels on a CPU (RandResizeCrop images that change size through their own C
    resize, _split), else
    the torch executor. Returns {(h, w): (indices, images)} as _grouped does; the generator
    is consumed in the same order on every path, so the pixels do not depend on the path."""
    names = {_OP_NAMES[k] for k in torch.unique(op_ids).tolist()}
    if native.usable(x, names):
        return {tuple(x.shape[2:]): (torch.arange(x.shape[0]),
                                     _native(x, op_ids, levels, u, l_mags, mirror, generator))}
    if "RandResizeCrop" in names and native.usable(x, names - {"RandResizeCrop"}):
        return _split(x, op_ids, levels, u, l_mags, mirror, generator)
    return _grouped(x, op_ids, levels, u, l_mags, mirror, generator)


def _split(x, op_ids, levels, u, l_mags, mirror, generator) -> dict:
    """A CPU batch whose RandResizeCrop images change size (an input other than 224 x 224):
    the other images through one C call, and the RandResizeCrop images resized apart
    (_execute sends them to the C resize); {(h, w): (indices, images)} as _grouped returns.
    The generator is consumed as on the torch path (the uniforms, then the crops' boxes), so
    the pixels are the same."""
    resizing = op_ids == _OP_ID["RandResizeCrop"]
    rows, others = resizing.nonzero().view(-1), (~resizing).nonzero().view(-1)
    groups = {}
    if others.numel():
        groups[tuple(x.shape[2:])] = (others, _native(
            x.index_select(0, others), op_ids[others], levels[others],
            None if u is None else u[others], l_mags, mirror, generator))
    resized = _apply_one_op(x.index_select(0, rows), "RandResizeCrop", _values(
        "RandResizeCrop", levels[rows], l_mags), None if u is None else u[rows], mirror,
        generator)
    groups[tuple(resized.shape[2:])] = (rows, resized)
    return groups


_IDS: dict = {}  # id(candidates) -> (candidates, l_mags, result): the list is kept alive


def _candidate_ids(candidates, l_mags: int):
    """Op ids and checked levels of a policy's candidates, and its op names; cached per
    candidate list (checking them costs more than a small batch's augmentation)."""
    cached = _IDS.get(id(candidates))
    if cached is not None and cached[0] is candidates and cached[1] == l_mags:
        return cached[2]
    for name, _ in candidates:
        _check_name(name)
    ops_all = torch.tensor([_OP_ID[name] for name, _ in candidates], dtype=torch.long)
    levels_all = torch.tensor([level for _, level in candidates], dtype=torch.long)
    result = (ops_all.numpy(), _check_levels(ops_all, levels_all, l_mags).numpy(),
              {name for name, _ in candidates})
    if len(_IDS) >= 64:
        _IDS.clear()
    _IDS[id(candidates)] = (candidates, l_mags, result)
    return result


def apply_policy_batch(policy, x, mirror: bool = True,
                       generator: torch.Generator | None = None, index=None) -> torch.Tensor:
    """Apply a DeepAA policy per image: for each layer in order, each image draws its own
    candidate from that layer's distribution (SPEC §3; ``mirror=True`` is the evaluation
    semantics). Images that RandResizeCrop brings to 224 x 224 continue at that size; in the
    ImageNet space every image is centre-cropped to 224 after the last layer (SPEC §2, §3).
    With ``index`` (integers), the batch is ``x[index]``: the compiled kernels read those
    images where they are (a loader's stored array) instead of a gathered copy; the pixels are
    those of ``apply_policy_batch(policy, x[index])``.
    A batch with no image can be given; it comes back unchanged."""
    _check_images(x)
    if index is not None:
        index = np.asarray(index, dtype=np.int64).reshape(-1)
    n = x.shape[0] if index is None else index.shape[0]
    if n == 0:
        return x.clone() if index is None else x[:0].clone()
    choice = draws.sample_candidates(policy, n, generator).numpy().T  # (layers, n)
    ops_all, levels_all, names = _candidate_ids(policy.candidates, policy.l_mags)
    u_all = draws.draw_uniforms(choice.shape, names, mirror, generator)
    if native.usable(x, names):  # all layers in one C call, each image through all of them
        table, *rows = _native_rows((n, *x.shape[1:]), ops_all[choice], levels_all[choice],
                                    None if u_all is None else u_all.numpy(), policy.l_mags,
                                    mirror, generator)
        x = table.run(x, *rows, take=index)
        return resize.center_crop(x, IMAGENET_SIZE) if policy.space == "imagenet" else x
    if index is not None:
        x = x.index_select(0, to_device(torch.from_numpy(index), x.device))
    choice = torch.from_numpy(np.ascontiguousarray(choice.T))
    ops_all, levels_all = torch.from_numpy(ops_all), torch.from_numpy(levels_all)
    groups = {tuple(x.shape[2:]): (torch.arange(n), x)}
    for layer in range(choice.shape[1]):
        u = None if u_all is None else u_all[layer]
        new_groups = {}
        for size in sorted(groups):
            idx, images = groups[size]
            picked = choice[idx, layer]
            for out_size, (sub, out) in _dispatch(images, ops_all[picked], levels_all[picked],
                                                  None if u is None else u[idx],
                                                  policy.l_mags, mirror, generator).items():
                new_groups.setdefault(out_size, []).append((idx[sub], out))
        groups = {size: _in_order(chunks) for size, chunks in new_groups.items()}
    return _merge(groups, n, x, crop=policy.space == "imagenet")


def _in_order(chunks):
    """One (indices, images) from chunks of one size, sorted by image index: the next layer
    then meets every group's images in the same order whichever executor made them, which
    keeps the draws of RandResizeCrop (made per group, in order) path-independent."""
    if len(chunks) == 1 and bool((chunks[0][0][1:] >= chunks[0][0][:-1]).all()):
        return chunks[0]
    idx = torch.cat([c[0] for c in chunks])
    images = torch.cat([c[1] for c in chunks])
    order = torch.argsort(idx)
    return idx[order], images.index_select(0, to_device(order, images.device))

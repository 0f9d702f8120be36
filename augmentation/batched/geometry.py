"""Geometric ops of the batched path: Pillow's nearest-neighbour affine maps as gather indices,
plus the pixel moves of the random ops (flip, cutout, padded crop; the resized crop is in
batched.resize).

Pillow (src/libImaging/Geometry.c) resamples an affine transform with nearest neighbour along
one of two integer-exact routes, and this module reproduces each one per (op, value, size):

* translation only (``a1 == a3 == 0``, TranslateX/Y): ``ImagingScaleAffine`` tabulates the
  source column of every output column by adding ``a0`` to ``a2 + a0 * 0.5`` one column at a
  time in double precision and truncating (negative -> outside); rows likewise.
* anything else (ShearX/Y, Rotate): ``affine_fixed`` rounds the six coefficients to 16.16
  fixed point (the offsets after adding the half-pixel shift) and steps through the image in
  integers; the source index is the fixed-point value shifted right by 16.

Both are computed once per distinct (op, value, width, height) on the host with numpy (the
same IEEE double arithmetic as the C code, and exact integer arithmetic for the fixed-point
route) and cached. A map that is a few wide shifted blocks (TranslateX/Y, ShearX) is applied as
block copies of the uint8 data; any other map, and any mix of values, as one ``torch.gather``
(per-image maps for a mix). No pixel is ever converted to float. The result is therefore
bit-exact with ``Image.transform``/``Image.rotate`` (SPEC §1, ops 1-5); the tests check it.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from ..ops import cutout_center
from ..space import FILL_GREY
from .device import to_device

# Pillow's affine_fixed is used while every corner maps inside +-32768 (check_fixed).
_FIXED_LIMIT = 32768.0


def affine_coefficients(name: str, value: float, width: int, height: int):
    """The inverse-affine coefficients (a0..a5) Pillow receives for one op, or ``None`` when
    Pillow returns the image unchanged (Rotate by a multiple of 360 degrees).

    Mirrors ``ops.py`` (Image.transform data) and ``Image.rotate`` (matrix about (w/2, h/2),
    entries rounded to 15 decimals, angle first reduced modulo 360)."""
    if name == "ShearX":
        return (1.0, value, 0.0, 0.0, 1.0, 0.0)
    if name == "ShearY":
        return (1.0, 0.0, 0.0, value, 1.0, 0.0)
    if name == "TranslateX":
        return (1.0, 0.0, value * width, 0.0, 1.0, 0.0)
    if name == "TranslateY":
        return (1.0, 0.0, 0.0, 0.0, 1.0, value * height)
    if name != "Rotate":
        raise ValueError(f"{name!r} is not an affine op")
    angle = value % 360.0
    if angle == 0:
        return None
    if angle == 180 or (angle in (90, 270) and width == height):
        # Pillow transposes instead; no level of the search space reaches these angles.
        raise ValueError(f"Rotate by {value} degrees is outside the batched path's range")
    cx, cy = width / 2, height / 2
    rad = -math.radians(angle)
    a, b = round(math.cos(rad), 15), round(math.sin(rad), 15)
    d, e = round(-math.sin(rad), 15), round(math.cos(rad), 15)
    c = a * -cx + b * -cy + 0.0 + cx
    f = d * -cx + e * -cy + 0.0 + cy
    return (a, b, c, d, e, f)


def _coord(v: np.ndarray) -> np.ndarray:
    """Geometry.c COORD: negative -> -1, else truncate."""
    return np.where(v < 0.0, -1, np.trunc(v)).astype(np.int64)


def _scale_map(a, width, height) -> np.ndarray:
    """ImagingScaleAffine: positions accumulated by repeated double additions (np.cumsum is a
    sequential accumulate, so the rounding sequence is the C loop's)."""
    xs = np.cumsum(np.concatenate(([a[2] + a[0] * 0.5], np.full(width - 1, a[0]))))
    ys = np.cumsum(np.concatenate(([a[5] + a[4] * 0.5], np.full(height - 1, a[4]))))
    xin, yin = _coord(xs), _coord(ys)
    src = yin[:, None] * width + xin[None, :]
    ok = ((xin >= 0) & (xin < width))[None, :] & ((yin >= 0) & (yin < height))[:, None]
    return np.where(ok, src, -1)


def _fix(v: float) -> int:
    """16.16 fixed point as Geometry.c FIX: floor(v * 65536 + 0.5)."""
    return int(math.floor(v * 65536.0 + 0.5))


def _fixed_map(a, width, height) -> np.ndarray:
    """affine_fixed: integer stepping, so the closed form equals the C loop exactly."""
    a0, a1, a3, a4 = _fix(a[0]), _fix(a[1]), _fix(a[3]), _fix(a[4])
    a2 = _fix(a[2] + a[0] * 0.5 + a[1] * 0.5)
    a5 = _fix(a[5] + a[3] * 0.5 + a[4] * 0.5)
    y = np.arange(height, dtype=np.int64)[:, None]
    x = np.arange(width, dtype=np.int64)[None, :]
    xin = (a2 + y * a1 + x * a0) >> 16
    yin = (a5 + y * a4 + x * a3) >> 16
    ok = (xin >= 0) & (xin < width) & (yin >= 0) & (yin < height)
    return np.where(ok, yin * width + xin, -1)


def _float_map(a, width, height) -> np.ndarray:
    """ImagingTransformAffine's double-precision loop (used beyond the fixed-point range):
    row starts accumulate a1/a4, positions along a row accumulate a0/a3."""
    def accumulate(start, row_step, col_step):
        starts = np.cumsum(np.concatenate(([start], np.full(height - 1, row_step))))
        steps = np.full((height, width - 1), col_step)
        return np.cumsum(np.concatenate((starts[:, None], steps), axis=1), axis=1)

    xin = _coord(accumulate(a[2] + a[1] * 0.5 + a[0] * 0.5, a[1], a[0]))
    yin = _coord(accumulate(a[5] + a[4] * 0.5 + a[3] * 0.5, a[4], a[3]))
    ok = (xin >= 0) & (xin < width) & (yin >= 0) & (yin < height)
    return np.where(ok, yin * width + xin, -1)


@lru_cache(maxsize=4096)
def source_index(name: str, value: float, width: int, height: int) -> np.ndarray:
    """Flat source index (h*w,) of every output pixel of op ``name`` at ``value``; -1 = fill
    black. Follows ImagingTransformAffine's choice of route."""
    a = affine_coefficients(name, value, width, height)
    if a is None:
        out = np.arange(width * height, dtype=np.int64)
    elif a[1] == 0 and a[3] == 0:
        out = _scale_map(a, width, height)
    else:
        corners = [(0, 0), (width, height), (0, height), (width, 0)]
        if all(abs(x * a[0] + y * a[1] + a[2]) < _FIXED_LIMIT
               and abs(x * a[3] + y * a[4] + a[5]) < _FIXED_LIMIT for x, y in corners):
            out = _fixed_map(a, width, height)
        else:
            out = _float_map(a, width, height)
    out = out.reshape(-1).astype(np.int64)
    out.setflags(write=False)
    return out


@lru_cache(maxsize=1024)
def _device_index(name: str, value: float, width: int, height: int, device: str):
    """source_index as a device tensor, with 'outside' pointing at an appended zero pixel."""
    idx = source_index(name, value, width, height)
    return to_device(torch.from_numpy(np.where(idx < 0, width * height, idx)), device)


# A map is copied as rectangles when it is a few wide shifted blocks (TranslateX/Y, ShearX);
# narrow or many blocks (ShearY, Rotate) are cheaper as one gather.
_MAX_BLOCKS, _MIN_BLOCK_WIDTH = 16, 8


@lru_cache(maxsize=4096)
def block_plan(name: str, value: float, width: int, height: int):
    """The map of source_index as rectangles (r0, r1, c0, c1, dr, dc): output rows r0..r1-1,
    columns c0..c1-1 copy the source shifted by (dr, dc); everything else is black. ``None``
    when the map is not a few wide blocks."""
    src = source_index(name, value, width, height).reshape(height, width)
    cols = np.arange(width)
    runs_per_row = []
    for r in range(height):
        ok = src[r] >= 0
        dr = np.where(ok, src[r] // width - r, 0)
        dc = np.where(ok, src[r] % width - cols, 0)
        key = np.stack([ok, dr, dc], axis=1)
        cut = np.flatnonzero((key[1:] != key[:-1]).any(axis=1)) + 1
        starts, ends = np.concatenate(([0], cut)), np.concatenate((cut, [width]))
        runs_per_row.append(tuple((int(a), int(b), int(dr[a]), int(dc[a]))
                                  for a, b in zip(starts, ends) if ok[a]))
    blocks = []
    r = 0
    while r < height:
        end = r + 1
        while end < height and runs_per_row[end] == runs_per_row[r]:
            end += 1
        blocks.extend((r, end, c0, c1, dr, dc) for c0, c1, dr, dc in runs_per_row[r])
        r = end
    narrow = any(c1 - c0 < _MIN_BLOCK_WIDTH for _, _, c0, c1, _, _ in blocks)
    if len(blocks) > _MAX_BLOCKS or narrow:
        return None
    return tuple(blocks)


def _copy_blocks(x: torch.Tensor, blocks) -> torch.Tensor:
    out = torch.zeros_like(x)
    for r0, r1, c0, c1, dr, dc in blocks:
        out[:, :, r0:r1, c0:c1] = x[:, :, r0 + dr:r1 + dr, c0 + dc:c1 + dc]
    return out


def _with_black(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H*W + 1): the pixels and one black pixel that 'outside' indices point at."""
    n, c, h, w = x.shape
    flat = x.new_empty(n, c, h * w + 1)
    flat[:, :, :h * w] = x.reshape(n, c, h * w)
    flat[:, :, h * w] = 0
    return flat


def affine(x: torch.Tensor, name, values: list[float]) -> torch.Tensor:
    """Apply op ``name`` (one name, or one per image) with one value per image. One (op,
    value): a few block copies or one gather on the uint8 data; a mix: one gather with each
    image's cached map. Pixels whose source is outside become black."""
    n, c, h, w = x.shape
    dev = str(x.device)
    names = [name] * n if isinstance(name, str) else list(name)
    keys = list(zip(names, values))
    distinct = sorted(set(keys))
    if len(distinct) == 1:
        blocks = block_plan(*distinct[0], w, h)
        if blocks is not None:
            return _copy_blocks(x, blocks)
        idx = _device_index(*distinct[0], w, h, dev).view(1, 1, -1).expand(n, c, h * w)
    else:
        table = torch.stack([_device_index(op, v, w, h, dev) for op, v in distinct])
        where = {key: k for k, key in enumerate(distinct)}
        ids = to_device(torch.tensor([where[key] for key in keys]), x.device)
        idx = table.index_select(0, ids).unsqueeze(1).expand(n, c, h * w)
    return _with_black(x).gather(2, idx).reshape(n, c, h, w)


def flip(x: torch.Tensor, do_flip: torch.Tensor) -> torch.Tensor:
    """Horizontal mirror (ImageOps.mirror) of the images where ``do_flip`` is true."""
    n = x.shape[0]
    pick = torch.arange(n, device=x.device) + n * to_device(do_flip.long(), x.device)
    return torch.cat([x, x.flip(-1)]).index_select(0, pick)


@lru_cache(maxsize=16)
def _grey_on(dtype: torch.dtype, device: str) -> torch.Tensor:
    return to_device(torch.tensor(FILL_GREY, dtype=dtype), device).view(1, -1, 1, 1)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """FILL_GREY as a (1, 3, 1, 1) tensor like ``x``, made once per dtype and device (a new
    one per call would be a host-to-device copy, a sync, per call on a GPU). Read-only."""
    return _grey_on(x.dtype, str(x.device))


class _BoundsProbe:
    """Stands in for a numpy Generator to read the uniform ranges ops.cutout_center uses, so
    the centre rule lives in one place."""

    def __init__(self):
        self.bounds = []

    def uniform(self, lo, hi):
        self.bounds.append((float(lo), float(hi)))
        return lo


@lru_cache(maxsize=256)
def cutout_centre_bounds(width: int, height: int, side: int):
    """((x_lo, x_hi), (y_lo, y_hi)) of the uniform cutout centre (ops.cutout_center)."""
    probe = _BoundsProbe()
    cutout_center(width, height, side, probe)
    return probe.bounds[0], probe.bounds[1]


def cutout_boxes(width: int, height: int, side: int, cx, cy):
    """ops.cutout_box for a batch of float64 centres (arrays or CPU tensors): corners
    (inclusive) clipped to the image, then truncated. Returns int64 arrays x0, y0, x1, y1."""
    half = side // 2
    centre = np.stack([np.asarray(cx, dtype=np.float64), np.asarray(cy, dtype=np.float64)])
    limit = np.array([[width], [height]], dtype=np.float64)
    lo = np.floor(np.minimum(np.maximum(centre - half, 0), limit)).astype(np.int64)
    hi = np.floor(np.minimum(np.maximum(centre + half, 0), limit)).astype(np.int64)
    return lo[0], lo[1], hi[0], hi[1]


def cutout(x: torch.Tensor, boxes) -> torch.Tensor:
    """Fill each image's inclusive box (x0, y0, x1, y1) with FILL_GREY (ImageDraw.rectangle):
    x * (1 - inside) + grey * inside in uint8, with no select or float pass."""
    n, c, h, w = x.shape
    x0, y0, x1, y1 = (to_device(torch.as_tensor(b), x.device).view(-1, 1) for b in boxes)
    cols = torch.arange(w, device=x.device).view(1, w)
    rows = torch.arange(h, device=x.device).view(1, h)
    in_cols = ((cols >= x0) & (cols <= x1)).to(torch.uint8).view(n, 1, 1, w)
    in_rows = ((rows >= y0) & (rows <= y1)).to(torch.uint8).view(n, 1, h, 1)
    inside = in_rows * in_cols  # (N, 1, H, W), 0 or 1
    return (x * (1 - inside)).add_(_grey(x) * inside)


def padded_crop(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad ``pad`` px of FILL_GREY on each side and crop the original size at (top, left) per
    image (ops.rand_crop): one gather of the source pixels (clamped into the image), then the
    pixels that fall in the padding set to grey with uint8 arithmetic."""
    n, c, h, w = x.shape
    rows = to_device(top, x.device).view(-1, 1) - pad + torch.arange(h, device=x.device).view(1, h)
    cols = to_device(left, x.device).view(-1, 1) - pad + torch.arange(w, device=x.device).view(1, w)
    idx = rows.clamp(0, h - 1).view(n, h, 1) * w + cols.clamp(0, w - 1).view(n, 1, w)
    out = x.reshape(n, c, h * w).gather(2, idx.view(n, 1, h * w).expand(n, c, h * w))
    in_rows = ((rows >= 0) & (rows < h)).to(torch.uint8).view(n, 1, h, 1)
    in_cols = ((cols >= 0) & (cols < w)).to(torch.uint8).view(n, 1, 1, w)
    inside = in_rows * in_cols
    return out.view(n, c, h, w).mul_(inside).add_(_grey(x) * (1 - inside))

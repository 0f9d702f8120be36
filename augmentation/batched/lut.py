"""Lookup tables for the batched colour ops: exact, cached, applied with one indexing pass.

On a CPU core a float32 pass over a batch costs about as much as an integer table lookup, and
the Pillow colour ops need several such passes each (convert, blend, clip, convert back). Every
colour op of SPEC §1 (ops 6-14) is a function of at most two uint8 numbers per pixel and a
per-image constant, so it can be tabulated once and looked up:

* ``Image.blend(degenerate, image, factor)`` (the four ImageEnhance ops) depends only on the
  pair (image pixel, degenerate pixel) for a given factor: a 256 x 256 table per factor. The
  table is produced by Pillow's own ``Image.blend`` on a grid holding every pair, so it is the
  ground truth by construction, whatever float32 arithmetic Blend.c uses.
* Brightness (degenerate black) and Contrast (a flat degenerate of the image's mean grey) use
  one column of that table: a 256-entry LUT per image.
* Solarize, Posterize, Invert, AutoContrast and Equalize are 256-entry LUTs already.

A LUT shared by the whole batch is applied two bytes at a time: the batch is read as int16
and looked up in a 65536-entry table of byte pairs, which halves the number of lookups.
Tables are cached per (value, device); the caches are bounded (functools.lru_cache).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from .device import to_device


@lru_cache(maxsize=64)
def _blend_table_cpu(factor: float) -> torch.Tensor:
    """uint8 (65536,): entry x * 256 + d is Image.blend(d, x, factor) for pixels d, x."""
    x_grid, d_grid = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8),
                                 indexing="ij")
    out = Image.blend(Image.fromarray(d_grid, "L"), Image.fromarray(x_grid, "L"), factor)
    table = torch.from_numpy(np.asarray(out).copy()).reshape(-1)
    return table


@lru_cache(maxsize=64)
def _blend_table(factor: float, device: str) -> torch.Tensor:
    return to_device(_blend_table_cpu(factor), device)


def blend_tables(factors: tuple, device: str) -> torch.Tensor:
    """The blend tables of ``factors`` concatenated: uint8 (len(factors) * 65536,) on
    ``device``; table k starts at k * 65536. Only single tables are cached (a policy meets
    many combinations); joining a few 64 KiB tables is cheap."""
    tables = [_blend_table(float(f), device) for f in factors]
    return tables[0] if len(tables) == 1 else torch.cat(tables)


def factor_ids(factors: torch.Tensor):
    """(distinct factors as a tuple, int64 (N,) index of each image's factor in it)."""
    values = factors.double().cpu().tolist()
    distinct = tuple(sorted(set(values)))
    where = {v: k for k, v in enumerate(distinct)}
    return distinct, torch.tensor([where[v] for v in values], dtype=torch.int64)


# SMOOTH's weighted sum S (box 3x3 + 4 x centre) lies in 0..13 * 255.
SMOOTH_SUMS = 13 * 255 + 1


@lru_cache(maxsize=32)
def sharpness_table(factor: float, device: str) -> torch.Tensor:
    """A blend table indexed by (pixel, SMOOTH sum) rather than (pixel, smoothed pixel): entry
    x * SMOOTH_SUMS + S is Image.blend(smooth, x, factor) with smooth = floor((2 S + 13) / 26)
    (batched.color), so the division is tabulated too. uint8, 830 KiB."""
    smooth = (2 * torch.arange(SMOOTH_SUMS) + 13) // 26
    return to_device(_blend_table_cpu(factor).view(256, 256)[:, smooth].reshape(-1), device)


@lru_cache(maxsize=256)
def _pair_table(lut_bytes: bytes, device: str) -> torch.Tensor:
    """int16 (65536,): entry p holds the byte pair whose int16 value is p - 32768, each byte
    mapped through the LUT (native byte order, so it works on either endianness)."""
    lut = torch.frombuffer(bytearray(lut_bytes), dtype=torch.uint8)
    pairs = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    mapped = lut[pairs.view(torch.uint8).long()]
    return to_device(mapped.view(torch.int16), device)


def apply_global_lut(x: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """The same uint8 LUT (256,) on every pixel of ``x``; same shape and dtype."""
    flat = x.contiguous().reshape(-1)
    if flat.numel() % 2 == 0 and flat.storage_offset() % 2 == 0:
        table = _pair_table(bytes(lut.cpu().numpy().tobytes()), str(x.device))
        idx = flat.view(torch.int16).to(torch.int32).add_(32768)
        return table.index_select(0, idx).view(torch.uint8).view(x.shape)
    return to_device(lut, x.device).index_select(0, flat.to(torch.int32)).view(x.shape)


def apply_lut(x: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Per image and band LUT: ``lut`` uint8 (N, C, 256); one lookup over the batch with
    int32 indices offset by 256 per (image, band)."""
    n, c, h, w = x.shape
    offset = torch.arange(0, n * c * 256, 256, dtype=torch.int32, device=x.device).view(n * c, 1)
    idx = x.reshape(n * c, h * w).to(torch.int32).add_(offset)
    return lut.reshape(-1).index_select(0, idx.view(-1)).view(n, c, h, w)


def blend_lookup(x: torch.Tensor, degenerate: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Image.blend(degenerate, x, factor_i) per image i through the blend tables.

    ``x`` uint8 (N, C, ...); ``degenerate`` an integer tensor broadcastable to ``x`` with
    values 0..255; ``factors`` float (N,)."""
    distinct, ids = factor_ids(factors)
    table = blend_tables(distinct, str(x.device))
    idx = x.to(torch.int32).bitwise_left_shift_(8).add_(degenerate)
    if len(distinct) > 1:
        shape = (-1,) + (1,) * (x.dim() - 1)
        idx.add_(to_device(ids.to(torch.int32) * 65536, x.device).view(shape))
    return table.index_select(0, idx.reshape(-1)).view(x.shape)


def blend_column_luts(levels: torch.Tensor, factors: torch.Tensor, bands: int) -> torch.Tensor:
    """uint8 (N, bands, 256) LUTs of Image.blend(flat level_i, x, factor_i): column level_i of
    image i's blend table (Brightness: level 0; Contrast: the mean grey)."""
    distinct, ids = factor_ids(factors)
    device = levels.device
    table = blend_tables(distinct, str(device)).view(-1, 256, 256)
    luts = table[to_device(ids, device), :, levels.long().view(-1)]
    return luts.unsqueeze(1).expand(-1, bands, -1)

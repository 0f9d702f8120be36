"""Colour ops of the batched path, per image, bit-exact with Pillow's ``augmentation.ops``
(SPEC §1, ops 6-14), written as integer work and table lookups on uint8 data.

Each function takes a uint8 tensor N x 3 x H x W and, where the op has a magnitude, one value
per image as a float64 tensor (N,). The Pillow facts reproduced here:

* ``ImageOps`` LUT ops (Invert, Solarize ``i < v``, Posterize ``i & ~(2**(8-bits)-1)``) are
  integer maps; AutoContrast and Equalize build one LUT per image and band from its histogram
  exactly as ImageOps.autocontrast/equalize do (Python float64 / integer steps), and
  ``Image.point`` clips LUT entries to 0..255.
* ``ImageEnhance`` ops are ``Image.blend(degenerate, image, factor)``, looked up in tables that
  Pillow's Image.blend filled (batched.lut). The degenerate images: black (Brightness); the L
  image replicated to RGB (Color), L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16
  (Convert.c); a flat image of int(mean(L) + 0.5) (Contrast); the SMOOTH-filtered image
  (Sharpness).
* SMOOTH (Filter.c ImagingFilter3x3, kernel (1 1 1 / 1 5 1 / 1 1 1) / 13, accumulator from 0.5,
  truncated, outer rows and columns kept; images under 3 x 3 copied). With S the integer
  weighted sum (0..3315) the exact value S / 13 + 0.5 is never closer than 1/26 to an integer,
  while Pillow's float32 sum is off by under 1e-3, so its result is floor((2 S + 13) / 26):
  integer arithmetic gives the same pixels (the tests check every S).
"""
from __future__ import annotations

import torch

from . import lut as lut_ops
from .device import to_device
from .lut import apply_lut


def _per_image(v: torch.Tensor, x: torch.Tensor, dtype) -> torch.Tensor:
    return to_device(v.to(dtype), x.device).view(-1, 1, 1, 1)


def _single(values: torch.Tensor):
    """The value shared by every image, or None when they differ."""
    first = values[:1]
    return float(first) if bool((values == first).all()) else None


def invert(x: torch.Tensor) -> torch.Tensor:
    return 255 - x


def solarize_threshold(threshold: torch.Tensor) -> torch.Tensor:
    """int32 (N,): Solarize inverts i >= v; for integer i, i < v exactly when i < ceil(v)."""
    return torch.ceil(threshold.double()).clamp(0, 256).to(torch.int32)


def _solarize_lut_here(threshold: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 1, 256) LUTs of Solarize, on the thresholds' device."""
    t = solarize_threshold(threshold).view(-1, 1, 1)
    ramp = torch.arange(256, dtype=torch.int32, device=t.device).view(1, 1, 256)
    return torch.where(ramp < t, ramp, 255 - ramp).to(torch.uint8)


def solarize_lut(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Per-image LUTs (N, C, 256) of Solarize."""
    return to_device(_solarize_lut_here(threshold), x.device).expand(-1, x.shape[1], -1)


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    single = _single(threshold)
    if single is not None:
        return lut_ops.apply_global_lut(x, _solarize_lut_here(threshold[:1].cpu())[0, 0])
    return apply_lut(x, solarize_lut(x, threshold))


def posterize_mask(bits: torch.Tensor) -> torch.Tensor:
    """Keep int(v) high bits (ImageOps.posterize receives int(v)): uint8 masks (N,)."""
    keep = bits.double().trunc().long()
    return (255 - (torch.bitwise_left_shift(torch.ones_like(keep), 8 - keep) - 1)).to(torch.uint8)


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    return x & _per_image(posterize_mask(bits), x, torch.uint8)


def posterize_lut(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    mask = posterize_mask(bits)
    ramp = torch.arange(256, dtype=torch.uint8, device=mask.device).view(1, 1, 256)
    lut = ramp & mask.view(-1, 1, 1)
    return to_device(lut, x.device).expand(-1, x.shape[1], -1)


def invert_lut(x: torch.Tensor, values=None) -> torch.Tensor:
    ramp = torch.arange(255, -1, -1, dtype=torch.uint8, device=x.device)
    return ramp.view(1, 1, 256).expand(x.shape[0], x.shape[1], 256)


def _histogram(x: torch.Tensor) -> torch.Tensor:
    """int64 (N, C, 256) histograms of every image band, one bincount for the batch (on a
    CPU; elsewhere _histogram_by_sorting)."""
    n, c, h, w = x.shape
    if x.device.type != "cpu":
        return _histogram_by_sorting(x)
    offset = torch.arange(0, n * c * 256, 256, device=x.device, dtype=torch.int32).view(n, c, 1)
    flat = x.reshape(n, c, h * w).to(torch.int32).add_(offset).reshape(-1)
    return torch.bincount(flat, minlength=n * c * 256).view(n, c, 256)


def _histogram_by_sorting(x: torch.Tensor) -> torch.Tensor:
    """The same histograms from each band's sorted pixels: the count of level v is where
    v + 1 would be inserted minus where v would. On a GPU this keeps the host free: bincount
    there first reads the largest value back to the host (a synchronisation), and scatter
    adds are atomics."""
    n, c, h, w = x.shape
    ordered = torch.sort(x.reshape(n * c, h * w), dim=1).values
    levels = torch.arange(256, dtype=torch.uint8, device=x.device).expand(n * c, 256)
    starts = torch.searchsorted(ordered, levels.contiguous())
    ends = torch.cat([starts[:, 1:], starts.new_full((n * c, 1), h * w)], dim=1)
    return (ends - starts).view(n, c, 256)


def auto_contrast_lut(x: torch.Tensor, values=None) -> torch.Tensor:
    """ImageOps.autocontrast (cutoff 0): per band, lut[i] = int(i * scale + offset) clipped,
    scale = 255 / (hi - lo), offset = -lo * scale; identity where hi <= lo."""
    n, c = x.shape[:2]
    lo, hi = torch.aminmax(x.reshape(n, c, -1), dim=2)
    lo, hi = lo.double(), hi.double()
    flat_band = hi <= lo
    # tensor / tensor: torch's scalar / tensor is not correctly rounded, Python's is.
    scale = torch.full_like(hi, 255.0) / torch.where(flat_band, torch.ones_like(hi), hi - lo)
    offset = -lo * scale
    ramp = torch.arange(256, device=x.device, dtype=torch.float64)
    lut = (ramp * scale[..., None] + offset[..., None]).trunc().clamp(0, 255)
    lut = torch.where(flat_band[..., None], ramp, lut)
    return lut.to(torch.uint8)


def equalize_lut(x: torch.Tensor, values=None) -> torch.Tensor:
    """ImageOps.equalize: per band, with the histogram's non-zero bins, step = (sum - last
    non-zero count) // 255; identity if at most one non-zero bin or step == 0; otherwise
    lut[i] = (step // 2 + count of pixels below i) // step, clipped to 255 by Image.point."""
    hist = _histogram(x)
    nonzero = hist > 0
    levels = torch.arange(256, device=x.device)
    last = torch.where(nonzero, levels, torch.full_like(levels, -1)).amax(dim=2, keepdim=True)
    last_count = hist.gather(2, last.clamp(min=0))
    step = (hist.sum(dim=2, keepdim=True) - last_count) // 255
    identity = (nonzero.sum(dim=2, keepdim=True) <= 1) | (step == 0)
    below = torch.cumsum(hist, dim=2) - hist
    lut = (step // 2 + below) // step.clamp(min=1)
    lut = torch.where(identity, levels.expand_as(lut), lut.clamp(max=255))
    return lut.to(torch.uint8)


def auto_contrast(x: torch.Tensor) -> torch.Tensor:
    return apply_lut(x, auto_contrast_lut(x))


def equalize(x: torch.Tensor) -> torch.Tensor:
    return apply_lut(x, equalize_lut(x))


def luminance(x: torch.Tensor) -> torch.Tensor:
    """Convert.c rgb2l, exact integers: int32 (N, 1, H, W)."""
    grey = x[:, 0:1].to(torch.int32).mul_(19595)
    grey.add_(x[:, 1:2].to(torch.int32).mul_(38470))
    grey.add_(x[:, 2:3].to(torch.int32).mul_(7471))
    return grey.add_(0x8000).bitwise_right_shift_(16)


def brightness_lut(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with black: column 0 of each image's blend table is its LUT."""
    levels = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
    return lut_ops.blend_column_luts(levels, factor, x.shape[1])


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    single = _single(factor)
    if single is not None:
        table = lut_ops.blend_tables((single,), "cpu").view(256, 256)
        return lut_ops.apply_global_lut(x, table[:, 0].contiguous())
    return apply_lut(x, brightness_lut(x, factor))


def color(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the L image: one lookup of (pixel, L) per pixel."""
    return lut_ops.blend_lookup(x, luminance(x), factor)


def contrast_lut(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with a flat image of the rounded mean L: column mean of the blend table."""
    grey = luminance(x)
    n = grey.shape[0]
    count = torch.full((n,), float(grey[0].numel()), dtype=torch.float64, device=x.device)
    mean = grey.reshape(n, -1).sum(dim=1, dtype=torch.int64).double() / count
    level = torch.floor(mean + 0.5).long()
    return lut_ops.blend_column_luts(level, factor, x.shape[1])


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return apply_lut(x, contrast_lut(x, factor))


# Per-image LUT builders (N, C, 256) of the point ops, for applying several ops in one lookup.
LUT_BUILDERS = {
    "AutoContrast": auto_contrast_lut,
    "Invert": invert_lut,
    "Equalize": equalize_lut,
    "Solarize": solarize_lut,
    "Posterize": posterize_lut,
    "Contrast": contrast_lut,
    "Brightness": brightness_lut,
}


# floor(t / 26) == (t * 40330) >> 20 for 0 <= t <= 2 * 3315 + 13 (checked by the tests).
_DIV26_MUL, _DIV26_SHIFT = 40330, 20


def smooth_interior(x: torch.Tensor) -> torch.Tensor:
    """ImageFilter.SMOOTH of the interior pixels (rows and columns 1..-2) as int32
    (N, C, H - 2, W - 2); needs H, W >= 3."""
    xi = x.to(torch.int32)
    rows = xi[..., :-2] + xi[..., 1:-1]
    rows.add_(xi[..., 2:])
    total = rows[:, :, :-2] + rows[:, :, 1:-1]
    total.add_(rows[:, :, 2:]).add_(xi[:, :, 1:-1, 1:-1], alpha=4)  # S = box 3x3 + 4 centre
    total.mul_(2).add_(13).mul_(_DIV26_MUL).bitwise_right_shift_(_DIV26_SHIFT)
    return total


def smooth(x: torch.Tensor) -> torch.Tensor:
    """ImageFilter.SMOOTH as uint8 (N, C, H, W), borders kept."""
    out = x.clone()
    if x.shape[2] >= 3 and x.shape[3] >= 3:
        out[:, :, 1:-1, 1:-1] = smooth_interior(x).to(torch.uint8)
    return out


# Sharpness runs this many elements at a time: its seven passes then stay in the CPU caches.
_SHARPNESS_CHUNK = 1 << 19


def _sharpness_sums(x: torch.Tensor) -> torch.Tensor:
    """SMOOTH's weighted sum S (box 3x3 + 4 x centre) of every pixel that has all eight
    neighbours, computed on the flat batch with contiguous shifted adds: entry k is the sum
    centred on flat pixel k + W + 1 (entries that straddle rows or images are in range
    0..3315 too, and are dropped by the caller). int16, length N*C*H*W - 2*W - 2."""
    w = x.shape[3]
    flat = x.reshape(-1).to(torch.int16)
    rows = flat[:-2] + flat[1:-1]
    rows.add_(flat[2:])
    total = rows[:-2 * w] + rows[w:-w]
    total.add_(rows[2 * w:]).add_(flat[w + 1:w + 1 + total.numel()], alpha=4)
    return total


def sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the SMOOTH image. On the borders the degenerate equals the image and the
    blend returns it unchanged, so only the interior is looked up. One factor: by (pixel,
    SMOOTH sum S), one lookup doing the division and the blend (batched.lut), the batch in
    chunks of whole images on the CPU so the passes stay in cache. Several factors: the
    smoothed interior, then the per-image blend tables."""
    n, c, h, w = x.shape
    out = x.clone()
    if h < 3 or w < 3 or n == 0:
        return out
    single = _single(factor)
    if single is None:
        inner = x[:, :, 1:-1, 1:-1]
        out[:, :, 1:-1, 1:-1] = lut_ops.blend_lookup(inner, smooth_interior(x), factor)
        return out
    table = lut_ops.sharpness_table(single, str(x.device))
    per_chunk = n if x.device.type != "cpu" else max(1, _SHARPNESS_CHUNK // (c * h * w))
    for start in range(0, n, per_chunk):
        part = x[start:start + per_chunk]
        m = part.shape[0]
        sums = _sharpness_sums(part)
        # idx at flat pixel p: x * SMOOTH_SUMS + S(p); border pixels get S = 0, an in-range
        # entry whose result is not used.
        idx = part.reshape(-1).to(torch.int32).mul_(lut_ops.SMOOTH_SUMS)
        idx[w + 1:w + 1 + sums.numel()].add_(sums)
        looked = table.index_select(0, idx).view(m, c, h, w)
        out[start:start + m, :, 1:-1, 1:-1] = looked[:, :, 1:-1, 1:-1]
    return out

"""Colour ops of the batched path, per image, reproducing Pillow's integer and float32
arithmetic so the results are bit-exact with ``augmentation.ops`` (SPEC §1, ops 6-14).

Each function takes a uint8 tensor N x 3 x H x W and, where the op has a magnitude, one value
per image as a float64 tensor (N,). The Pillow facts reproduced here:

* ``ImageOps`` LUT ops (Invert, Solarize ``i < v``, Posterize ``i & ~(2**(8-bits)-1)``) are
  integer maps; AutoContrast and Equalize build one LUT per image and band from its histogram
  exactly as ImageOps.autocontrast/equalize do (Python float64 / integer steps), and
  ``Image.point`` clips LUT entries to 0..255.
* ``ImageEnhance`` ops are ``Image.blend(degenerate, image, factor)``; Blend.c computes
  ``in1 + alpha * (in2 - in1)`` in float32 (alpha rounded to float32) and truncates after
  clipping to 0..255. The degenerate images: black (Brightness); the L image replicated to
  RGB (Color), L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16 (Convert.c); a flat image of
  int(mean(L) + 0.5) (Contrast); the SMOOTH-filtered image (Sharpness).
* SMOOTH (Filter.c ImagingFilter3x3) uses the float32 kernel k / 13, sums each row left to
  right, rows in the order y+1, y, y-1 onto an accumulator that starts at 0.5, truncates, and
  keeps the outer rows and columns; images under 3 x 3 are copied.
"""
from __future__ import annotations

import torch


def _per_image(v: torch.Tensor, x: torch.Tensor, dtype) -> torch.Tensor:
    return v.to(device=x.device, dtype=dtype).view(-1, 1, 1, 1)


def invert(x: torch.Tensor) -> torch.Tensor:
    return 255 - x


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Invert pixels i >= v; for integer i, i < v exactly when i < ceil(v)."""
    t = _per_image(torch.ceil(threshold.double()).clamp(0, 256), x, torch.int16)
    return torch.where(x.to(torch.int16) < t, x, 255 - x)


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep int(v) high bits (ImageOps.posterize receives int(v))."""
    keep = bits.double().trunc().long()
    mask = 255 - (torch.bitwise_left_shift(torch.ones_like(keep), 8 - keep) - 1)
    return x & _per_image(mask, x, torch.uint8)


def apply_lut(x: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Per image, per band LUT: lut is uint8 (N, C, 256)."""
    n, c, h, w = x.shape
    return lut.gather(2, x.reshape(n, c, h * w).long()).reshape(n, c, h, w)


def _histogram(x: torch.Tensor) -> torch.Tensor:
    """int64 (N, C, 256) histograms of every image band, one bincount for the batch."""
    n, c, h, w = x.shape
    offset = torch.arange(n * c, device=x.device).view(n, c, 1) * 256
    flat = (x.reshape(n, c, h * w).long() + offset).reshape(-1)
    return torch.bincount(flat, minlength=n * c * 256).view(n, c, 256)


def auto_contrast(x: torch.Tensor) -> torch.Tensor:
    """ImageOps.autocontrast (cutoff 0): per band, lut[i] = int(i * scale + offset) clipped,
    scale = 255 / (hi - lo), offset = -lo * scale; identity where hi <= lo."""
    n, c = x.shape[:2]
    lo = x.reshape(n, c, -1).amin(dim=2).double()
    hi = x.reshape(n, c, -1).amax(dim=2).double()
    flat_band = hi <= lo
    # tensor / tensor: torch's scalar / tensor is not correctly rounded, Python's is.
    scale = torch.full_like(hi, 255.0) / torch.where(flat_band, torch.ones_like(hi), hi - lo)
    offset = -lo * scale
    ramp = torch.arange(256, device=x.device, dtype=torch.float64)
    lut = (ramp * scale[..., None] + offset[..., None]).trunc().clamp(0, 255)
    lut = torch.where(flat_band[..., None], ramp, lut)
    return apply_lut(x, lut.to(torch.uint8))


def equalize(x: torch.Tensor) -> torch.Tensor:
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
    return apply_lut(x, lut.to(torch.uint8))


def blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Image.blend(degenerate, x, factor) as Blend.c: float32 in1 + alpha * (in2 - in1),
    clipped to 0..255 and truncated (the interpolation branch never leaves 0..255, so one
    formula covers both of Blend.c's branches). ``degenerate`` is float32, broadcastable."""
    alpha = _per_image(factor.to(torch.float32), x, torch.float32)
    img = x.to(torch.float32)
    out = degenerate + alpha * (img - degenerate)
    return out.clamp_(0, 255).to(torch.uint8)


def luminance(x: torch.Tensor) -> torch.Tensor:
    """Convert.c rgb2l, exact integers: int32 (N, 1, H, W)."""
    r, g, b = (x[:, i:i + 1].to(torch.int32) for i in range(3))
    return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with black: 0 + alpha * (x - 0) is alpha * x exactly, so skip the no-op terms."""
    alpha = _per_image(factor.to(torch.float32), x, torch.float32)
    return (x.to(torch.float32) * alpha).clamp_(0, 255).to(torch.uint8)


def color(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return blend(luminance(x).to(torch.float32), x, factor)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    grey = luminance(x)
    n = grey.shape[0]
    count = torch.full((n,), float(grey[0].numel()), dtype=torch.float64, device=x.device)
    mean = grey.reshape(n, -1).sum(dim=1).double() / count
    level = torch.floor(mean + 0.5).to(torch.float32).view(n, 1, 1, 1)
    return blend(level, x, factor)


# SMOOTH's kernel rows after _imaging.c divides the float32 kernel by the float32 divisor.
def _smooth_weights(device):
    k = torch.tensor([1.0, 5.0], dtype=torch.float32, device=device) / torch.tensor(
        13.0, dtype=torch.float32, device=device)
    return k[0], k[1]


def smooth(x: torch.Tensor) -> torch.Tensor:
    """ImageFilter.SMOOTH as float32 (N, C, H, W), borders kept."""
    out = x.to(torch.float32)
    n, c, h, w = x.shape
    if h < 3 or w < 3:
        return out
    k1, k5 = _smooth_weights(x.device)
    p = out

    def row(r, centre):
        left, mid, right = p[:, :, r, 0:w - 2], p[:, :, r, 1:w - 1], p[:, :, r, 2:w]
        return (left * k1 + mid * centre) + right * k1

    below, here, above = slice(2, h), slice(1, h - 1), slice(0, h - 2)
    acc = torch.full((n, c, h - 2, w - 2), 0.5, dtype=torch.float32, device=x.device)
    acc = acc + row(below, k1)
    acc = acc + row(here, k5)
    acc = acc + row(above, k1)
    out = out.clone()
    out[:, :, 1:h - 1, 1:w - 1] = acc.clamp_(0, 255).trunc_()
    return out


def sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return blend(smooth(x), x, factor)

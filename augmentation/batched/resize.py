"""RandResizeCrop and the ImageNet centre crop of the batched path (SPEC §1, §3).

The box of every image is drawn by the rule of ``ops.resized_crop_box`` (resized_crop_boxes),
and the box is resized to size x size with a bit-exact port of Pillow's fixed-point BICUBIC
resampling (src/libImaging/Resample.c): the same taps and 22-bit fixed-point weights, int32
accumulation, rounding and clipping to 8 bits after each of the two passes, in the pass
order of the installed Pillow. The torch port here runs on any device; ``batched.native``
runs the same two passes in C on a CPU, from the same cached taps.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from .device import to_device


# Resample.c: 8-bit resampling keeps coefficients in fixed point with 22 fractional bits.
_PRECISION_BITS = 22


def _bicubic(x: np.ndarray) -> np.ndarray:
    """Resample.c bicubic_filter (a = -0.5), same operation order."""
    x = np.abs(x)
    near = ((1.5 * x - 2.5) * x) * x + 1
    far = (((x - 5) * x + 8) * x - 4) * -0.5
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@lru_cache(maxsize=4096)
def bicubic_taps(in_size: int, in0: int, in1: int, out_size: int):
    """Resample.c precompute_coeffs + normalize_coeffs_8bpc for BICUBIC over the box
    [in0, in1) of an axis of length ``in_size``: the first source index of every output
    sample (N_out,) and its fixed-point weights (N_out, ksize) as int64. The filter reaches
    past the box into the rest of the image, as Pillow's does."""
    scale = float(in1 - in0) / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = in0 + (np.arange(out_size) + 0.5) * scale
    xmin = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin
    j = np.arange(ksize)
    w = _bicubic(((j[None, :] + xmin[:, None]) - center[:, None] + 0.5) * (1.0 / filterscale))
    w = np.where(j[None, :] < xmax[:, None], w, 0.0)
    ww = np.zeros(out_size)
    for col in range(ksize):  # sequential sum, as the C loop
        ww = ww + w[:, col]
    w = np.where(ww[:, None] != 0.0, w / np.where(ww == 0.0, 1.0, ww)[:, None], w)
    scaled = w * float(1 << _PRECISION_BITS)
    fixed = np.where(w < 0, np.trunc(-0.5 + scaled), np.trunc(0.5 + scaled)).astype(np.int64)
    fixed.setflags(write=False)
    xmin.setflags(write=False)
    return xmin, fixed


def _padded_taps(in_size: int, boxes, size: int):
    """bicubic_taps of every image's box along one axis, as tensors padded to the widest
    kernel: source indices (N, size, K), clamped into the axis, and int32 weights (N, size, K),
    zero in the padding (a zero weight adds nothing to the sum, wherever its index points)."""
    taps = [bicubic_taps(in_size, lo, lo + extent, size) for lo, extent in boxes]
    k = max(weights.shape[1] for _, weights in taps)
    index = np.empty((len(taps), size, k), dtype=np.int64)
    kernel = np.zeros((len(taps), size, k), dtype=np.int32)
    for i, (start, weights) in enumerate(taps):
        index[i] = np.minimum(start[:, None] + np.arange(k), in_size - 1)
        kernel[i, :, :weights.shape[1]] = weights
    return torch.from_numpy(index), torch.from_numpy(kernel)


def _resample(img: torch.Tensor, index: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """One pass of Resample.c along dim 1 of an int32 (N, S, M) batch, giving (N, out, M):
    per output sample the sum of source * weight (int32, as the C accumulator; integer sums
    do not depend on their order), plus 2**21, arithmetic shift by 22, clip to 0..255.
    ``index`` and ``kernel`` are (N, out, K) from _padded_taps. Each tap selects whole
    contiguous rows of the flattened (N * S, M) batch, which is what makes it fast."""
    n, s, m = img.shape
    out = index.shape[1]
    flat = img.reshape(n * s, m)
    index = to_device(index + (torch.arange(n) * s).view(n, 1, 1), img.device)
    kernel = to_device(kernel, img.device)
    acc = None
    for j in range(index.shape[2]):
        term = flat.index_select(0, index[:, :, j].reshape(-1)) * kernel[:, :, j].reshape(-1, 1)
        acc = term if acc is None else acc.add_(term)
    acc = ((acc + (1 << (_PRECISION_BITS - 1))) >> _PRECISION_BITS).clamp_(0, 255)
    return acc.view(n, out, m)


def _resize_chunk(device: torch.device) -> int:
    """Images the torch port resizes together. On a GPU, 64: each tap is then one kernel
    launch for all of them, and the int32 intermediates stay bounded (a few times 4 bytes x
    C x rows x width per image, rows and width those of the input). On a CPU, one: an
    image's intermediates stay in cache, and 64 at once measured 13x slower than one by
    one."""
    return 1 if device.type == "cpu" else 64


def _resize_horizontal_first(x: torch.Tensor, boxes, size: int) -> torch.Tensor:
    """Resample.c's two passes, horizontal first, then vertical, each rounded to 8 bits, for
    a chunk of images at once (_resize_chunk): each image's kernels are padded to the
    chunk's widest, and the horizontal pass runs over a window of R rows per image
    (R: the most rows any image's vertical pass reads), as Pillow's runs only over the rows
    its vertical pass reads."""
    n, c, h, w = x.shape
    out = x.new_empty(n, c, size, size)
    left, top, cw, ch = (b.tolist() for b in boxes)
    chunk = _resize_chunk(x.device)
    for lo in range(0, n, chunk):
        part = range(lo, min(n, lo + chunk))
        col_index, col_kernel = _padded_taps(w, [(left[i], cw[i]) for i in part], size)
        row_index, row_kernel = _padded_taps(h, [(top[i], ch[i]) for i in part], size)
        # the rows each image's vertical pass reads: a window of R rows from `first`
        first = row_index[:, :, 0].amin(dim=1)
        rows = int((row_index[:, :, -1].amax(dim=1) + 1 - first).max())
        first = first.clamp(max=h - rows)
        src = torch.stack([x[i, :, f:f + rows] for i, f in zip(part, first.tolist())])
        src = src.permute(0, 3, 1, 2).to(torch.int32).contiguous()  # (k, W, C, R)
        k = len(part)
        tmp = _resample(src.view(k, w, c * rows), col_index, col_kernel)  # (k, size, C * R)
        tmp = tmp.view(k, size, c, rows).permute(0, 3, 2, 1).contiguous()  # (k, R, C, size)
        row_index = (row_index - first.view(-1, 1, 1)).clamp_(0, rows - 1)
        res = _resample(tmp.view(k, rows, c * size), row_index, row_kernel)  # (k, size, C * size)
        out[lo:lo + k] = res.view(k, size, c, size).permute(0, 2, 1, 3).to(x.dtype)
    return out


@lru_cache(maxsize=1)
def pillow_goes_vertical_first() -> bool:
    """Whether the installed Pillow resamples vertically first when the height shrinks much
    more than the width (Pillow 13 does, for an image of H x W to S x S with H > S and
    H - S > 2 (W - S); earlier versions always go horizontal first). Asked once of Pillow
    itself, on a tall probe image whose two pass orders give different pixels."""
    probe = np.random.default_rng(0).integers(0, 256, (40, 9, 3), dtype=np.uint8)
    ref = torch.from_numpy(np.array(Image.fromarray(probe).resize((8, 8), Image.BICUBIC)))
    transposed = torch.from_numpy(probe).permute(2, 1, 0)[None]  # 1 x C x W x H
    whole = (torch.tensor([0]), torch.tensor([0]), torch.tensor([40]), torch.tensor([9]))
    vertical_first = _resize_horizontal_first(transposed, whole, 8)[0].permute(2, 1, 0)
    return torch.equal(vertical_first, ref)


def resized_crop(x: torch.Tensor, boxes, size: int, resample=None) -> torch.Tensor:
    """Pillow's ``img.resize((size, size), BICUBIC, box=(left, top, left + w, top + h))`` per
    image, bit-exact: Resample.c's fixed-point bicubic, in the installed Pillow's pass order
    (pillow_goes_vertical_first: then the images are transposed and resampled horizontally
    first). ``resample`` does the horizontal-first resize (default the torch port; the C
    kernel passes its own)."""
    resample = resample or _resize_horizontal_first
    n, c, h, w = x.shape
    if h > size and h - size > 2 * (w - size) and pillow_goes_vertical_first():
        left, top, cw, ch = boxes
        return resample(x.transpose(2, 3), (top, left, ch, cw), size).transpose(2, 3).contiguous()
    return resample(x, boxes, size)


def resized_crop_boxes(width: int, height: int, u_area, u_aspect, u_top, u_left,
                       scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """ops.resized_crop_box for N images from uniform draws: ``u_*`` are float64 (N, 10) in
    [0, 1) (arrays or CPU tensors), one column per try. The first try whose box fits wins;
    with none, the central crop of the clamped aspect. Returns int64 arrays (left, top, w, h),
    each (N,). The tries run in order over the images still without a box (most have one
    after the first), in numpy, with ``math.exp``, the Pillow path's own function."""
    u_area, u_aspect, u_top, u_left = (np.asarray(u, dtype=np.float64)
                                       for u in (u_area, u_aspect, u_top, u_left))
    area = float(width * height)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(height * ratio[1]), height
    else:
        fw, fh = width, height
    boxes = np.empty((4, u_area.shape[0]), dtype=np.int64)
    boxes[:] = np.array([(width - fw) // 2, (height - fh) // 2, fw, fh])[:, None]  # fallback
    todo = np.arange(u_area.shape[0])
    for t in range(u_area.shape[1]):
        if todo.size == 0:
            break
        target = area * (scale[0] + (scale[1] - scale[0]) * u_area[todo, t])
        exponent = log_lo + (log_hi - log_lo) * u_aspect[todo, t]
        aspect = np.array([math.exp(v) for v in exponent.tolist()])
        cw = np.round(np.sqrt(target * aspect))  # round half to even, as Python's round
        ch = np.round(np.sqrt(target / aspect))
        fits = (cw > 0) & (cw <= width) & (ch > 0) & (ch <= height)
        done, cw, ch = todo[fits], cw[fits], ch[fits]
        boxes[0, done] = np.floor(u_left[done, t] * (width - cw + 1))
        boxes[1, done] = np.floor(u_top[done, t] * (height - ch + 1))
        boxes[2, done], boxes[3, done] = cw, ch
        todo = todo[~fits]
    return tuple(boxes)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """ops.center_crop for a batch: pad with black (centred) when smaller, then crop the
    size x size centre at (round((h - size) / 2), round((w - size) / 2))."""
    n, c, h, w = x.shape
    if w < size or h < size:
        pad_l, pad_t = max(0, (size - w) // 2), max(0, (size - h) // 2)
        canvas = x.new_zeros(n, c, max(h, size), max(w, size))
        canvas[:, :, pad_t:pad_t + h, pad_l:pad_l + w] = x
        x, (h, w) = canvas, canvas.shape[2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return x[:, :, top:top + size, left:left + size]

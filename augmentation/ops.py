"""The Pillow operations of the search space: the ground truth for every other path.

One function per op, all with the signature ``fn(img, value, rng) -> PIL.Image``, and one
dispatch function, :func:`apply_op`, that maps a (name, level) candidate to its value, applies
the evaluation-time mirror when asked, and calls the op. SPEC §1 defines each op.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from .space import FILL_GREY, OPS, level_to_value

IMAGENET_SIZE = 224
CUTOUT_SIDE = {"RandCutout": 16, "RandCutout60": 60}
CROP_PAD = 4


def _rng(rng):
    """A numpy Generator: the one given, or a fresh one seeded from the OS (so DataLoader
    workers never share a stream)."""
    return rng if rng is not None else np.random.default_rng()


def _affine(img, coeffs):
    # Pillow's defaults are the ones SPEC §1 asks for: nearest neighbour, fill black.
    return img.transform(img.size, Image.AFFINE, coeffs)


def shear_x(img, v, rng=None):
    return _affine(img, (1, v, 0, 0, 1, 0))


def shear_y(img, v, rng=None):
    return _affine(img, (1, 0, 0, v, 1, 0))


def translate_x(img, v, rng=None):
    return _affine(img, (1, 0, v * img.size[0], 0, 1, 0))


def translate_y(img, v, rng=None):
    return _affine(img, (1, 0, 0, 0, 1, v * img.size[1]))


def rotate(img, v, rng=None):
    return img.rotate(v)


def identity(img, v=None, rng=None):
    return img


def auto_contrast(img, v=None, rng=None):
    return ImageOps.autocontrast(img)


def invert(img, v=None, rng=None):
    return ImageOps.invert(img)


def equalize(img, v=None, rng=None):
    return ImageOps.equalize(img)


def solarize(img, v, rng=None):
    return ImageOps.solarize(img, v)


def posterize(img, v, rng=None):
    return ImageOps.posterize(img, int(v))


def contrast(img, v, rng=None):
    return ImageEnhance.Contrast(img).enhance(v)


def color(img, v, rng=None):
    return ImageEnhance.Color(img).enhance(v)


def brightness(img, v, rng=None):
    return ImageEnhance.Brightness(img).enhance(v)


def sharpness(img, v, rng=None):
    return ImageEnhance.Sharpness(img).enhance(v)


def rand_flip(img, v=None, rng=None):
    return ImageOps.mirror(img) if _rng(rng).random() < 0.5 else img


def cutout_box(w: int, h: int, side: int, x: float, y: float) -> tuple[int, int, int, int]:
    """The rectangle (x0, y0, x1, y1), both corners inclusive as ImageDraw draws it, of a
    cutout of ``side`` centred at (x, y): each corner is clipped to the image, then truncated."""
    half = side // 2
    return (
        int(min(w, max(0, x - half))),
        int(min(h, max(0, y - half))),
        int(min(w, max(0, x + half))),
        int(min(h, max(0, y + half))),
    )


def cutout_center(w: int, h: int, side: int, rng) -> tuple[float, float]:
    """Draw the centre of a cutout: uniform over the image for CIFAR's 16-px cutout, over the
    central 256x256 region for ImageNet's 60-px one (SPEC §1)."""
    if side == CUTOUT_SIDE["RandCutout60"]:
        x_lo, x_hi = max(0, w // 2 - 128), min(w, w // 2 + 128)
        y_lo, y_hi = max(0, h // 2 - 128), min(h, h // 2 + 128)
    else:
        x_lo, x_hi, y_lo, y_hi = 0, w, 0, h
    return float(rng.uniform(x_lo, x_hi)), float(rng.uniform(y_lo, y_hi))


def _cutout(img, side, rng):
    rng = _rng(rng)
    w, h = img.size
    x, y = cutout_center(w, h, side, rng)
    out = img.copy()
    ImageDraw.Draw(out).rectangle(cutout_box(w, h, side, x, y), fill=FILL_GREY)
    return out


def rand_cutout(img, v=None, rng=None):
    return _cutout(img, CUTOUT_SIDE["RandCutout"], rng)


def rand_cutout60(img, v=None, rng=None):
    return _cutout(img, CUTOUT_SIDE["RandCutout60"], rng)


def rand_crop(img, v=None, rng=None):
    """Pad CROP_PAD px on each side with the fill grey, then take a random crop of the original
    size (offsets uniform over 0..2*pad inclusive, top first)."""
    rng = _rng(rng)
    w, h = img.size
    padded = Image.new("RGB", (w + 2 * CROP_PAD, h + 2 * CROP_PAD), FILL_GREY)
    padded.paste(img, (CROP_PAD, CROP_PAD))
    top = int(rng.integers(0, 2 * CROP_PAD + 1))
    left = int(rng.integers(0, 2 * CROP_PAD + 1))
    return padded.crop((left, top, left + w, top + h))


def resized_crop_box(w: int, h: int, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """Box (left, top, width, height) of a random-resized crop: up to 10 tries at a random area
    fraction and log-uniform aspect, then the central crop of the clamped aspect.

    Choice: SPEC §1 ("10 tries then centre fallback"). The released code fell back after the
    first failed try (its fallback sat inside the loop); we follow the stated intent, which is
    also torchvision's RandomResizedCrop.
    """
    area = float(w * h)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        cw = round(math.sqrt(target * aspect))
        ch = round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            return left, top, cw, ch
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif in_ratio > ratio[1]:
        ch, cw = h, round(h * ratio[1])
    else:
        cw, ch = w, h
    return (w - cw) // 2, (h - ch) // 2, cw, ch


def rand_resize_crop(img, v=None, rng=None):
    left, top, cw, ch = resized_crop_box(*img.size, _rng(rng))
    return img.resize(
        (IMAGENET_SIZE, IMAGENET_SIZE), Image.BICUBIC, box=(left, top, left + cw, top + ch)
    )


def center_crop(img, size: int = IMAGENET_SIZE):
    """Centre crop to size x size, padding with black first if the image is smaller (SPEC §2
    validation images, SPEC §3 after the policy on ImageNet)."""
    w, h = img.size
    if w < size or h < size:
        pad_l, pad_t = max(0, (size - w) // 2), max(0, (size - h) // 2)
        canvas = Image.new(img.mode, (max(w, size), max(h, size)), 0)
        canvas.paste(img, (pad_l, pad_t))
        img, (w, h) = canvas, canvas.size
        if (w, h) == (size, size):
            return img
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


# The one dispatch table: op name -> Pillow function.
OP_FUNCTIONS = {
    "Identity": identity,
    "ShearX": shear_x,
    "ShearY": shear_y,
    "TranslateX": translate_x,
    "TranslateY": translate_y,
    "Rotate": rotate,
    "AutoContrast": auto_contrast,
    "Invert": invert,
    "Equalize": equalize,
    "Solarize": solarize,
    "Posterize": posterize,
    "Contrast": contrast,
    "Color": color,
    "Brightness": brightness,
    "Sharpness": sharpness,
    "RandFlip": rand_flip,
    "RandCutout": rand_cutout,
    "RandCutout60": rand_cutout60,
    "RandCrop": rand_crop,
    "RandResizeCrop": rand_resize_crop,
}
assert set(OP_FUNCTIONS) == set(OPS), "op table and dispatch table disagree"


def apply_op(img, name: str, level: int, l_mags: int = 13, mirror: bool = False, rng=None):
    """Apply candidate (name, level) to a PIL image.

    ``mirror=False`` is the search semantics (the level's sign as given); ``mirror=True`` is
    the evaluation semantics: ShearX/Y, TranslateX/Y and Rotate flip their sign with p = 0.5
    (SPEC §1). ``rng`` is a ``numpy.random.Generator`` used by the mirror and the random ops.
    """
    if name not in OP_FUNCTIONS:
        raise ValueError(f"unknown op {name!r}")
    spec = OPS[name]
    value = level_to_value(name, level, l_mags) if spec.has_magnitude else None
    if mirror and spec.signed:
        rng = _rng(rng)
        if rng.random() < 0.5:
            value = -value
    return OP_FUNCTIONS[name](img, value, rng)

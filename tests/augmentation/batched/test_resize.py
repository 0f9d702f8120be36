"""RandResizeCrop's resize and box rule (augmentation/batched/resize.py) against Pillow
(SPEC §1): the boxes ops.resized_crop_box draws from the same uniforms, and the pixels of
Pillow's BICUBIC resize of each box, bit for bit, for the torch port (one image at a time and
in chunks) and the C kernel, in the installed Pillow's pass order."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from augmentation import ops
from augmentation.batched import native, resize

from .test_apply import DEVICES, _BoxScript, photo_like, to_numpy, to_tensor


def test_resized_crop_box_rule_matches_pillow_path():
    gen = torch.Generator().manual_seed(5)
    for w, h in [(300, 240), (500, 120), (400, 50), (64, 64)]:
        u = torch.rand(4, 200, 10, generator=gen, dtype=torch.float64)
        if (w, h) == (400, 50):
            u[0] = 0.99  # huge areas: every try fails, the centre fallback is used
        boxes = resize.resized_crop_boxes(w, h, *u)
        for i in range(200):
            ref = ops.resized_crop_box(w, h, _BoxScript(u, i))
            assert tuple(int(b[i]) for b in boxes) == ref, (w, h, i)
        if (w, h) == (400, 50):
            assert (boxes[2] == 67).all() and (boxes[3] == 50).all()


@pytest.mark.parametrize("resized_crop", [resize.resized_crop, native.resized_crop])
@pytest.mark.parametrize("h, w, boxes", [
    (180, 150, ([0, 10, 33, 5], [0, 20, 7, 60], [150, 100, 64, 145], [180, 120, 171, 40])),
    # a portrait photo: the height shrinks much more than the width, where Pillow 13
    # resamples vertically first; boxes that shrink, enlarge, or touch the borders
    (500, 333, ([0, 10, 0, 200, 332], [50, 0, 100, 7, 499], [300, 323, 333, 90, 1],
                [400, 500, 224, 480, 1])),
    (460, 60, ([0, 5], [0, 30], [60, 40], [460, 300])),
    # a wide strip shrunk 4.5x: a block of 16 outputs reads more than 64 source bytes
    (40, 1000, ([0, 100, 3], [0, 5, 0], [1000, 700, 997], [40, 30, 40])),
])
def test_resized_crop_pixels_are_bit_exact_with_pillow_bicubic(resized_crop, h, w, boxes):
    arr = photo_like(len(boxes[0]), h, w, seed=h + w)
    boxes = tuple(torch.tensor(b) for b in boxes)
    got = to_numpy(resized_crop(to_tensor(arr), boxes, 224))
    for i in range(len(arr)):
        l, t, cw, ch = (int(b[i]) for b in boxes)
        ref = Image.fromarray(arr[i]).resize((224, 224), Image.BICUBIC, box=(l, t, l + cw, t + ch))
        assert np.array_equal(got[i], np.asarray(ref)), i


@pytest.mark.parametrize("resized_crop", [resize.resized_crop, native.resized_crop])
def test_random_boxes_of_224_images_are_bit_exact_with_pillow_bicubic(resized_crop):
    """RandResizeCrop's own case, the one the ImageNet policies meet most: boxes drawn by the
    box rule from 224 x 224 images, enlarged back to 224 (the C kernel computes the taps of
    eight outputs at a time and the horizontal pass from byte permutes)."""
    arr = photo_like(40, 224, 224, seed=8)
    u = torch.rand(4, 40, 10, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    boxes = resize.resized_crop_boxes(224, 224, *u)
    got = to_numpy(resized_crop(to_tensor(arr), tuple(torch.from_numpy(b) for b in boxes), 224))
    for i in range(len(arr)):
        l, t, cw, ch = (int(b[i]) for b in boxes)
        ref = Image.fromarray(arr[i]).resize((224, 224), Image.BICUBIC, box=(l, t, l + cw, t + ch))
        assert np.array_equal(got[i], np.asarray(ref)), i


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("chunk", [2, 64])
def test_resized_crop_in_chunks_is_bit_exact_with_pillow_bicubic(monkeypatch, chunk, device):
    """The torch port resizes a GPU batch in chunks, each image's kernels padded to the
    chunk's widest and its rows read through a shared window; run that path on the CPU over
    boxes whose kernels and row spans differ (shrink, enlarge, borders, a thin strip), for a
    landscape and a portrait (vertical-first) image, with a chunk that splits the batch (on a
    GPU too, where available: the same integer arithmetic must give the same pixels)."""
    monkeypatch.setattr(resize, "_resize_chunk", lambda device: chunk)
    # no box spans the whole height, so the row windows start at different rows
    for h, w, boxes in ((180, 150, ([0, 10, 33, 5, 149], [0, 20, 7, 60, 100],
                                    [150, 100, 64, 145, 1], [120, 120, 100, 40, 80])),
                        (500, 333, ([0, 10, 0, 200, 332], [50, 0, 100, 7, 400],
                                    [300, 323, 333, 90, 1], [300, 250, 224, 380, 100]))):
        arr = photo_like(len(boxes[0]), h, w, seed=h * w)
        got = to_numpy(resize.resized_crop(
            to_tensor(arr, device), tuple(torch.tensor(b, device=device) for b in boxes), 224))
        for i in range(len(arr)):
            l, t, cw, ch = (b[i] for b in boxes)
            ref = Image.fromarray(arr[i]).resize((224, 224), Image.BICUBIC,
                                                 box=(l, t, l + cw, t + ch))
            assert np.array_equal(got[i], np.asarray(ref)), (h, w, i)


def test_resized_crop_follows_pillow_at_the_pass_order_boundary():
    """Images on either side of Pillow 13's switch to vertical-first (H - S = 2 (W - S)):
    the rule's threshold, not just the probe's answer, must agree with Pillow."""
    rng = np.random.default_rng(3)
    for size, w in ((8, 9), (8, 13), (12, 12), (12, 20)):
        for h in range(size + 2 * (w - size) - 1, size + 2 * (w - size) + 3):
            arr = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
            boxes = (torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([w, w - 1]),
                     torch.tensor([h, h - 2]))
            for resized_crop in (resize.resized_crop, native.resized_crop):
                got = to_numpy(resized_crop(to_tensor(arr), boxes, size))
                for i in range(2):
                    l, t, cw, ch = (int(b[i]) for b in boxes)
                    ref = Image.fromarray(arr[i]).resize((size, size), Image.BICUBIC,
                                                         box=(l, t, l + cw, t + ch))
                    assert np.array_equal(got[i], np.asarray(ref)), (size, h, w, i)


def test_the_pillow_pass_order_probe_tells_the_orders_apart():
    """pillow_goes_vertical_first asks Pillow on a probe whose two pass orders give different
    pixels; were they equal, its answer would mean nothing."""
    probe = to_tensor(np.random.default_rng(0).integers(0, 256, (1, 40, 9, 3), dtype=np.uint8))
    whole = (torch.tensor([0]), torch.tensor([0]), torch.tensor([9]), torch.tensor([40]))
    horizontal_first = resize._resize_horizontal_first(probe, whole, 8)
    vertical_first = resize._resize_horizontal_first(
        probe.transpose(2, 3), (whole[1], whole[0], whole[3], whole[2]), 8).transpose(2, 3)
    assert not torch.equal(vertical_first, horizontal_first)
    expected = vertical_first if resize.pillow_goes_vertical_first() else horizontal_first
    assert torch.equal(resize.resized_crop(probe, whole, 8), expected)

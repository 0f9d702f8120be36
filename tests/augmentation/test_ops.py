"""The Pillow ops (SPEC §1): each deterministic candidate against Pillow calls written out here,
and the random ops' geometry, fill and statistics (seeded)."""
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from augmentation import ops, space

GREY = (125, 123, 114)
L = 13


def photo(w, h, seed):
    """A photo-like RGB image: smooth gradients, a few shapes and noise, never pure grey."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    base = np.stack(
        [
            120 + 90 * np.sin(xx / w * 3.1 + seed),
            100 + 80 * np.cos(yy / h * 2.3 - seed),
            60 + 50 * (xx + yy) / (w + h),
        ],
        axis=-1,
    )
    img = Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    draw.ellipse((w // 5, h // 4, w // 2, h // 2 + 3), fill=(230, 40, 30))
    draw.rectangle((w // 2, h // 2, w - 3, h - 2), fill=(20, 200, 90))
    draw.line((0, h - 1, w - 1, 0), fill=(250, 250, 10), width=2)
    return img


IMAGES = [photo(32, 32, 0), photo(32, 32, 1), photo(32, 32, 2), photo(40, 28, 3)]

RANGES = {
    "ShearX": (-0.3, 0.3), "ShearY": (-0.3, 0.3), "TranslateX": (-0.45, 0.45),
    "TranslateY": (-0.45, 0.45), "Rotate": (-30.0, 30.0), "Solarize": (0.0, 256.0),
    "Posterize": (4.0, 8.0), "Contrast": (0.1, 1.9), "Color": (0.1, 1.9),
    "Brightness": (0.1, 1.9), "Sharpness": (0.1, 1.9),
}


def pillow(img, name, v):
    """The reference: the Pillow call SPEC §1 names for each op, parameters spelled out."""
    w, h = img.size
    affine = dict(resample=Image.NEAREST, fillcolor=(0, 0, 0))
    if name == "Identity":
        return img
    if name == "ShearX":
        return img.transform((w, h), Image.AFFINE, (1, v, 0, 0, 1, 0), **affine)
    if name == "ShearY":
        return img.transform((w, h), Image.AFFINE, (1, 0, 0, v, 1, 0), **affine)
    if name == "TranslateX":
        return img.transform((w, h), Image.AFFINE, (1, 0, v * w, 0, 1, 0), **affine)
    if name == "TranslateY":
        return img.transform((w, h), Image.AFFINE, (1, 0, 0, 0, 1, v * h), **affine)
    if name == "Rotate":
        return img.rotate(v, resample=Image.NEAREST, fillcolor=(0, 0, 0))
    if name == "AutoContrast":
        return ImageOps.autocontrast(img)
    if name == "Invert":
        return ImageOps.invert(img)
    if name == "Equalize":
        return ImageOps.equalize(img)
    if name == "Solarize":
        return ImageOps.solarize(img, v)
    if name == "Posterize":
        return ImageOps.posterize(img, int(v))
    enhancer = {"Contrast": ImageEnhance.Contrast, "Color": ImageEnhance.Color,
                "Brightness": ImageEnhance.Brightness, "Sharpness": ImageEnhance.Sharpness}[name]
    return enhancer(img).enhance(v)


def value(name, level):
    """SPEC §1's formula in its order of operations: low + m/(L-1) * (high - low). (The order
    matters at half-pixel shifts, e.g. TranslateY 0.375 * 28 = 10.5.)"""
    low, high = RANGES[name]
    return low + level / (L - 1) * (high - low)


DETERMINISTIC = [(n, m) for n, m in space.candidates("cifar", L) if n in
                 ("Identity", "AutoContrast", "Invert", "Equalize") or n in RANGES]


def arr(img):
    return np.asarray(img)


def test_deterministic_candidates_cover_ops_0_to_14():
    assert len(DETERMINISTIC) == 139 - 3 and {n for n, _ in DETERMINISTIC} == set(space.op_names("cifar")[:15])


@pytest.mark.parametrize("name", space.op_names("cifar")[:15])
def test_deterministic_ops_equal_pillow(name):
    levels = [m for n, m in DETERMINISTIC if n == name]
    for img in IMAGES:
        for level in levels:
            v = value(name, level) if name in RANGES else None
            got = ops.apply_op(img, name, level, L, mirror=False)
            want = pillow(img, name, v)
            assert got.size == img.size and got.mode == "RGB"
            assert np.array_equal(arr(got), arr(want)), (name, level, img.size)
            if name != "Identity":
                # a non-identity level really changes these images
                assert not np.array_equal(arr(got), arr(img)), (name, level)


@pytest.mark.parametrize("name", ["ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"])
def test_mirror_flips_sign_about_half_the_time(name):
    img, level, n = IMAGES[3], 1, 400
    plus, minus = arr(pillow(img, name, value(name, level))), arr(pillow(img, name, -value(name, level)))
    assert not np.array_equal(plus, minus)
    rng = np.random.default_rng(7)
    flipped = 0
    for _ in range(n):
        out = arr(ops.apply_op(img, name, level, L, mirror=True, rng=rng))
        is_plus, is_minus = np.array_equal(out, plus), np.array_equal(out, minus)
        assert is_plus != is_minus
        flipped += is_minus
    assert abs(flipped - n / 2) < 4 * np.sqrt(n / 4), flipped
    # search semantics: never flipped
    rng = np.random.default_rng(7)
    for _ in range(50):
        assert np.array_equal(arr(ops.apply_op(img, name, level, L, mirror=False, rng=rng)), plus)


@pytest.mark.parametrize("name", ["Contrast", "Solarize", "Equalize"])
def test_mirror_leaves_unsigned_ops_alone(name):
    level = 2 if name != "Equalize" else 6
    v = value(name, level) if name in RANGES else None
    want = arr(pillow(IMAGES[0], name, v))
    rng = np.random.default_rng(3)
    for _ in range(30):
        assert np.array_equal(arr(ops.apply_op(IMAGES[0], name, level, L, mirror=True, rng=rng)), want)


@pytest.mark.parametrize("sp", ["cifar", "imagenet"])
@pytest.mark.parametrize("size", [(32, 32), (40, 28)])
def test_random_ops_shape_and_mode(sp, size):
    img = photo(*size, seed=5)
    rng = np.random.default_rng(0)
    for name in space.op_names(sp)[15:]:
        out = ops.apply_op(img, name, 6, L, mirror=True, rng=rng)
        assert out.mode == "RGB"
        assert out.size == ((224, 224) if name == "RandResizeCrop" else size), name


def cutout_rect(before, after):
    """The (x0, y0, x1, y1) inclusive box of pixels a cutout changed, checking they form a
    filled rectangle of the fill grey."""
    changed = np.any(before != after, axis=-1)
    ys, xs = np.nonzero(changed)
    assert len(xs) > 0
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    assert changed.sum() == (x1 - x0 + 1) * (y1 - y0 + 1)  # one solid rectangle
    assert np.all(after[y0:y1 + 1, x0:x1 + 1] == GREY)
    return x0, y0, x1, y1


def test_cutout_16_geometry_and_fill():
    img = IMAGES[1]
    before = arr(img)
    assert not np.any(np.all(before == GREY, axis=-1))
    rng = np.random.default_rng(11)
    full = 0
    for _ in range(300):
        x0, y0, x1, y1 = cutout_rect(before, arr(ops.apply_op(img, "RandCutout", 6, L, rng=rng)))
        for lo, hi, n in ((x0, x1, 32), (y0, y1, 32)):
            side = hi - lo + 1
            assert 1 <= side <= 17  # 16 + 1: ImageDraw includes both corners
            if side < 17:
                assert lo == 0 or hi == n - 1  # only clipping shrinks it
        full += (x1 - x0 + 1, y1 - y0 + 1) == (17, 17)
    assert 50 < full < 250  # centres uniform over the image: both cases common


def test_cutout60_centre_in_central_256_region():
    img = photo(300, 280, seed=9)
    before = arr(img)
    rng = np.random.default_rng(12)
    cx, cy = [], []
    for _ in range(150):
        x0, y0, x1, y1 = cutout_rect(before, arr(ops.apply_op(img, "RandCutout60", 6, L, rng=rng)))
        assert x1 - x0 + 1 <= 61 and y1 - y0 + 1 <= 61
        # the unclipped side tells the integer centre: corners are int(c -/+ 30)
        cx.append(x0 + 30 if x0 > 0 else x1 - 30)
        cy.append(y0 + 30 if y0 > 0 else y1 - 30)
    cx, cy = np.array(cx), np.array(cy)
    assert cx.min() >= 150 - 128 and cx.max() <= 150 + 127
    assert cy.min() >= 140 - 128 and cy.max() <= 140 + 127
    assert cx.min() < 45 and cx.max() > 255 and cy.min() < 35 and cy.max() > 245


def test_rand_crop_offsets_uniform_and_padding_grey():
    img = IMAGES[2].copy()
    img.putpixel((16, 16), (255, 0, 255))  # a marker, unique in the image
    assert (np.all(arr(img) == (255, 0, 255), axis=-1)).sum() == 1
    padded = np.full((40, 40, 3), GREY, np.uint8)
    padded[4:36, 4:36] = arr(img)
    rng = np.random.default_rng(5)
    n = 900
    counts = np.zeros((2, 9), int)
    for _ in range(n):
        out = arr(ops.apply_op(img, "RandCrop", 6, L, rng=rng))
        ys, xs = np.nonzero(np.all(out == (255, 0, 255), axis=-1))
        left, top = 20 - xs[0], 20 - ys[0]
        assert np.array_equal(out, padded[top:top + 32, left:left + 32])
        counts[0, left] += 1
        counts[1, top] += 1
    expected = n / 9
    chi2 = ((counts - expected) ** 2 / expected).sum(axis=1)
    assert np.all(counts > 0)
    assert np.all(chi2 < 26.12), chi2  # chi-square, 8 dof, p = 0.001


def test_rand_flip_probability_half():
    img, n = IMAGES[3], 1000
    mirrored = arr(ImageOps.mirror(img))
    rng = np.random.default_rng(2)
    flips = 0
    for _ in range(n):
        out = arr(ops.apply_op(img, "RandFlip", 6, L, rng=rng))
        assert np.array_equal(out, mirrored) or np.array_equal(out, arr(img))
        flips += np.array_equal(out, mirrored)
    assert abs(flips - n / 2) < 4 * np.sqrt(n / 4), flips


@pytest.mark.parametrize("size", [(300, 280), (500, 120), (90, 400)])
def test_resized_crop_box_inside_image(size):
    w, h = size
    rng = np.random.default_rng(4)
    for _ in range(300):
        left, top, cw, ch = ops.resized_crop_box(w, h, rng)
        assert 0 <= left and 0 <= top and cw > 0 and ch > 0
        assert left + cw <= w and top + ch <= h


def test_resized_crop_box_follows_torchvisions_distribution():
    """The box rule checked against an independent implementation: torchvision's
    RandomResizedCrop.get_params (same scale 0.08-1, aspect 3/4-4/3, 10 tries, centred
    fallback). Seeded draws; the means and spreads of area and aspect agree."""
    import torch
    from torchvision.transforms import RandomResizedCrop

    w, h, n = 500, 400, 6000
    rng = np.random.default_rng(9)
    ours = np.array([ops.resized_crop_box(w, h, rng) for _ in range(n)], float)
    torch.manual_seed(9)
    img = torch.zeros(3, h, w)
    theirs = np.array([RandomResizedCrop.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3))
                       for _ in range(n)], float)[:, [1, 0, 3, 2]]  # (top, left, h, w)
    for boxes in (ours, theirs):
        boxes[:, 0] = boxes[:, 2] * boxes[:, 3] / (w * h)  # area fraction
        boxes[:, 1] = boxes[:, 2] / boxes[:, 3]  # aspect
    assert ours[:, 0].min() >= 0.075 and ours[:, 0].max() <= 1.0
    assert ours[:, 1].min() >= 0.74 and ours[:, 1].max() <= 1.35
    for col in (0, 1):
        assert abs(ours[:, col].mean() - theirs[:, col].mean()) < 0.02, col
        assert abs(ours[:, col].std() - theirs[:, col].std()) < 0.02, col
    # A strip no try can fit: the centred crop of aspect 4/3, as torchvision.
    assert ops.resized_crop_box(1000, 10, rng) == (493, 0, 13, 10)
    left_top = RandomResizedCrop.get_params(torch.zeros(3, 10, 1000), (0.08, 1.0),
                                            (3 / 4, 4 / 3))
    assert (left_top[1], left_top[0], left_top[3], left_top[2]) == (493, 0, 13, 10)


def test_rand_resize_crop_is_bicubic_resize_of_box():
    img = photo(300, 280, seed=1)
    out = ops.apply_op(img, "RandResizeCrop", 6, L, rng=np.random.default_rng(8))
    left, top, cw, ch = ops.resized_crop_box(300, 280, np.random.default_rng(8))
    want = img.resize((224, 224), Image.BICUBIC, box=(left, top, left + cw, top + ch))
    assert out.size == (224, 224) and np.array_equal(arr(out), arr(want))


def test_center_crop_pads_small_images_with_black():
    img = photo(100, 300, seed=2)
    out = arr(ops.center_crop(img, 224))
    assert out.shape == (224, 224, 3)
    assert np.all(out[:, :62] == 0) and np.all(out[:, 162:] == 0)
    assert np.array_equal(out[:, 62:162], arr(img)[38:262])
    small = arr(ops.center_crop(IMAGES[0], 224))
    assert np.array_equal(small[96:128, 96:128], arr(IMAGES[0])) and small.sum() == arr(IMAGES[0]).sum()


def test_center_crop_large_and_exact():
    img = photo(300, 280, seed=3)
    assert np.array_equal(arr(ops.center_crop(img, 224)), arr(img)[28:252, 38:262])
    exact = photo(224, 224, seed=4)
    assert np.array_equal(arr(ops.center_crop(exact)), arr(exact))


def test_unknown_op_raises():
    with pytest.raises(ValueError):
        ops.apply_op(IMAGES[0], "Blur", 3, L)

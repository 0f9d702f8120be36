"""The batched tensor path against the Pillow ops (SPEC §1): exact pixels for ops 0-14 at
every level, the same parameter distributions and geometry for the random ops, per-image
sampling of policies. Every test runs twice on the CPU: with the compiled kernels
(batched.native) and with the torch executor."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from augmentation import ops, space
from augmentation.batched import apply as batched
from augmentation.batched import apply_candidate, apply_ops, apply_policy_batch, geometry, native
from augmentation.policy import Policy

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True, params=["native", "torch"])
def executor(request):
    """Run each test with the C kernels on (the default where they build) and off."""
    native.set_enabled(request.param == "native")
    yield request.param
    native.set_enabled(True)


def photo_like(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """uint8 (n, h, w, 3) images with smooth colour fields, hard-edged blobs, sensor noise and
    some low-contrast ones: histograms and edges like photographs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = []
    for i in range(n):
        img = np.zeros((h, w, 3))
        for c in range(3):
            a, b, f = rng.uniform(-2, 2, 3)
            img[..., c] = rng.uniform(80, 170) + 90 * np.sin(3 * f * xx + a) * np.cos(2 * b * yy + f)
        for _ in range(rng.integers(1, 5)):
            cy, cx, r = rng.uniform(0, 1, 3)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < (0.3 * r) ** 2] = rng.uniform(0, 255, 3)
        img += rng.normal(0, rng.uniform(2, 12), img.shape)
        if i % 4 == 1:
            img = img * rng.uniform(0.2, 0.5) + rng.uniform(20, 120)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


def edge_cases(h: int, w: int) -> np.ndarray:
    """Degenerate histograms: constant, two-valued, one value per band, few levels."""
    rng = np.random.default_rng(7)
    const = np.full((h, w, 3), 93, np.uint8)
    two = np.where(rng.random((h, w, 1)) < 0.3, 250, 3).repeat(3, axis=2).astype(np.uint8)
    bands = np.broadcast_to(np.array([0, 128, 255], np.uint8), (h, w, 3)).copy()
    few = (rng.integers(0, 4, (h, w, 3)) * 60 + 10).astype(np.uint8)
    one_odd = const.copy()
    one_odd[0, 0] = (94, 200, 0)
    return np.stack([const, two, bands, few, one_odd])


def to_tensor(arr: np.ndarray, device="cpu") -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).contiguous().to(device)


def to_numpy(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).cpu().numpy()


def pillow(arr, name, level, l_mags=13, rng=None):
    return np.stack([np.asarray(ops.apply_op(Image.fromarray(a), name, level, l_mags, rng=rng))
                     for a in arr])


DETERMINISTIC = [op.name for op in space.OP_TABLE["cifar"] if not op.random]


def _levels(name, l_mags):
    """Every level of a magnitude op (the identity level too); one for the others."""
    spec = space.OPS[name]
    return range(l_mags) if spec.has_magnitude else [(l_mags - 1) // 2]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("h,w", [(32, 32), (29, 37)])
def test_every_deterministic_candidate_is_bit_exact(h, w, device):
    arr = np.concatenate([photo_like(16, h, w, seed=h * w), edge_cases(h, w)])
    x = to_tensor(arr, device)
    report = []
    for name in DETERMINISTIC:
        worst, frac = 0, 0.0
        for level in _levels(name, 13):
            got = apply_candidate(x, name, level)
            assert got.dtype == torch.uint8 and got.device == x.device and got.shape == x.shape
            diff = np.abs(to_numpy(got).astype(int) - pillow(arr, name, level).astype(int))
            worst, frac = max(worst, int(diff.max())), max(frac, float((diff > 0).mean()))
        report.append(f"{name}: max {worst}, differing {frac:.4%}")
    print(f"\n{h}x{w} on {device}: " + "; ".join(report))
    assert all(r.endswith("max 0, differing 0.0000%") for r in report), report


def test_other_l_mags_and_tiny_images_are_bit_exact():
    arr = photo_like(6, 9, 11, seed=3)
    tiny = photo_like(3, 2, 2, seed=4)
    for name in DETERMINISTIC:
        for level in _levels(name, 5):
            got = apply_candidate(to_tensor(arr), name, level, l_mags=5)
            assert np.array_equal(to_numpy(got), pillow(arr, name, level, 5)), (name, level)
            got = apply_candidate(to_tensor(tiny), name, level, l_mags=5)
            assert np.array_equal(to_numpy(got), pillow(tiny, name, level, 5)), (name, level)


def test_apply_ops_one_op_per_image_matches_pillow():
    arr = photo_like(40, 32, 32, seed=11)
    rng = np.random.default_rng(0)
    cands = [c for c in space.candidates("cifar", 13) if not space.OPS[c[0]].random]
    pick = [cands[i] for i in rng.integers(0, len(cands), len(arr))]
    got = to_numpy(apply_ops(to_tensor(arr), [p[0] for p in pick], [p[1] for p in pick]))
    for i, (name, level) in enumerate(pick):
        assert np.array_equal(got[i], pillow(arr[i:i + 1], name, level)[0]), (name, level)


class _Scripted:
    """A numpy-Generator stand-in that returns prescribed draws, to feed the Pillow path the
    parameters the batched path used."""

    def __init__(self, values):
        self.values = list(values)

    def random(self):
        return self.values.pop(0)

    def uniform(self, lo, hi):
        return lo + (hi - lo) * self.values.pop(0)

    def integers(self, lo, hi):
        return lo + int(math.floor(self.values.pop(0) * (hi - lo)))


def test_mirror_flips_signed_ops_per_image_like_pillow():
    arr = np.repeat(photo_like(1, 32, 32, seed=5), 400, axis=0)
    x = to_tensor(arr)
    for name in ("ShearX", "TranslateY", "Rotate"):
        plus = pillow(arr[:1], name, 10)[0]
        minus = np.asarray(ops.apply_op(Image.fromarray(arr[0]), name, 10, mirror=True,
                                        rng=_Scripted([0.1])))
        assert not np.array_equal(plus, minus)
        got = to_numpy(apply_candidate(x, name, 10, mirror=True,
                                       generator=torch.Generator().manual_seed(1)))
        is_plus = (got == plus).all(axis=(1, 2, 3))
        is_minus = (got == minus).all(axis=(1, 2, 3))
        assert (is_plus | is_minus).all()
        assert 0.42 < is_minus.mean() < 0.58
        no_mirror = to_numpy(apply_candidate(x[:8], name, 10, mirror=False))
        assert (no_mirror == plus).all()
    # unsigned ops ignore the mirror
    got = apply_candidate(x[:4], "Solarize", 3, mirror=True)
    assert np.array_equal(to_numpy(got), pillow(arr[:4], "Solarize", 3))


def _tv(a: np.ndarray, b: np.ndarray) -> float:
    return 0.5 * float(np.abs(a - b).sum())


def _ks(sample: np.ndarray, reference: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance between two empirical distributions of integers."""
    grid = np.union1d(sample, reference)
    cdf = lambda v: np.searchsorted(np.sort(v), grid, side="right") / len(v)  # noqa: E731
    return float(np.abs(cdf(sample) - cdf(reference)).max())


@pytest.mark.parametrize("name,h,w,n", [("RandCutout", 32, 32, 4000),
                                        ("RandCutout60", 300, 280, 400)])
def test_cutout_distribution_and_geometry(name, h, w, n):
    """The grey box is a filled FILL_GREY rectangle whose corners follow the Pillow rule
    (ops.cutout_box of a uniform centre from ops.cutout_center)."""
    side = ops.CUTOUT_SIDE[name]
    x = torch.zeros(n, 3, h, w, dtype=torch.uint8)
    out = apply_candidate(x, name, 6, generator=torch.Generator().manual_seed(2))
    grey = (out != 0).all(dim=1)
    area = grey.reshape(n, -1).sum(1).numpy()
    assert area.min() > 0
    cols, rows = grey.any(dim=1).numpy(), grey.any(dim=2).numpy()
    x0, x1 = cols.argmax(1), w - 1 - cols[:, ::-1].argmax(1)
    y0, y1 = rows.argmax(1), h - 1 - rows[:, ::-1].argmax(1)
    assert ((x1 - x0 + 1) * (y1 - y0 + 1) == area).all()
    assert (out.permute(0, 2, 3, 1)[grey] == torch.tensor(space.FILL_GREY, dtype=torch.uint8)).all()
    # reference: the Pillow rule on the lead's own centre sampler, many draws
    rng = np.random.default_rng(0)
    ref = np.array([ops.cutout_box(w, h, side, *ops.cutout_center(w, h, side, rng))
                    for _ in range(20000)])
    ref[:, 2] = np.minimum(ref[:, 2], w - 1)  # ImageDraw clips the inclusive corner
    ref[:, 3] = np.minimum(ref[:, 3], h - 1)
    bound = 1.95 * math.sqrt(1 / n + 1 / len(ref))  # KS at p ~ 0.001
    for got, col in ((x0, 0), (y0, 1), (x1, 2), (y1, 3)):
        assert _ks(got, ref[:, col]) < bound, col


def test_cutout_pixels_equal_pillow_for_given_centres():
    arr = photo_like(6, 32, 32, seed=8)
    centres = [(0.0, 0.0), (31.99, 31.99), (7.5, 20.2), (8.0, 8.0), (15.4, 0.7), (24.0, 30.5)]
    cx = torch.tensor([c[0] for c in centres], dtype=torch.float64)
    cy = torch.tensor([c[1] for c in centres], dtype=torch.float64)
    got = geometry.cutout(to_tensor(arr), geometry.cutout_boxes(32, 32, 16, cx, cy))
    for i, (a, b) in enumerate(centres):
        ref = ops.rand_cutout(Image.fromarray(arr[i]), rng=_Scripted([a / 32, b / 32]))
        assert np.array_equal(to_numpy(got)[i], np.asarray(ref)), centres[i]


def test_rand_crop_offsets_uniform_and_pixels_equal_pillow():
    arr = photo_like(1, 32, 32, seed=9)
    refs = {(t, l): np.asarray(ops.rand_crop(Image.fromarray(arr[0]), rng=_Scripted([t / 9 + 1e-3,
                                                                                    l / 9 + 1e-3])))
            for t in range(9) for l in range(9)}
    n = 3000
    got = to_numpy(apply_candidate(to_tensor(np.repeat(arr, n, 0)), "RandCrop", 6,
                                   generator=torch.Generator().manual_seed(3)))
    flat = {k: v.tobytes() for k, v in refs.items()}
    lookup = {v: k for k, v in flat.items()}
    assert len(lookup) == 81  # every offset gives a distinct image
    found = [lookup.get(g.tobytes()) for g in got]
    assert None not in found  # every output is exactly one Pillow crop
    counts = np.bincount([t * 9 + l for t, l in found], minlength=81)
    chi2 = (((counts - n / 81) ** 2) / (n / 81)).sum()
    assert chi2 < 130  # 80 degrees of freedom; p ~ 0.0004 at 130


def test_rand_flip_is_per_image_with_half_probability():
    arr = np.repeat(photo_like(1, 16, 20, seed=10), 2000, axis=0)
    got = to_numpy(apply_candidate(to_tensor(arr), "RandFlip", 6,
                                   generator=torch.Generator().manual_seed(4)))
    flipped = (got == np.asarray(ImageOps.mirror(Image.fromarray(arr[0])))).all(axis=(1, 2, 3))
    same = (got == arr[0]).all(axis=(1, 2, 3))
    assert (flipped ^ same).all()
    assert 0.46 < flipped.mean() < 0.54


class _BoxScript:
    """Feeds ops.resized_crop_box the batched path's draws for image i: try t reads area
    u[0, i, t] and aspect u[1, i, t], and, when its box fits, top u[2, i, t], left u[3, i, t]."""

    def __init__(self, u, i):
        self.u, self.i, self.n_uniform, self.n_int = u, i, 0, 0

    def uniform(self, lo, hi):
        t, j = divmod(self.n_uniform, 2)
        self.n_uniform += 1
        return lo + (hi - lo) * self.u[j, self.i, t].item()

    def integers(self, lo, hi):
        t, j = (self.n_uniform - 1) // 2, 2 + self.n_int % 2
        self.n_int += 1
        return lo + int(math.floor(self.u[j, self.i, t].item() * (hi - lo)))


@pytest.mark.parametrize("h, w", [(260, 300), (500, 333)])
def test_rand_resize_crop_matches_pillow_given_the_same_draws(h, w):
    arr = photo_like(3, h, w, seed=17)
    out = to_numpy(apply_candidate(to_tensor(arr), "RandResizeCrop", 6,
                                   generator=torch.Generator().manual_seed(6)))
    u = torch.rand(4, 3, 10, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    assert out.shape == (3, 224, 224, 3)
    for i in range(3):
        ref = ops.rand_resize_crop(Image.fromarray(arr[i]), rng=_BoxScript(u, i))
        assert np.array_equal(out[i], np.asarray(ref)), i


def test_rand_resize_crop_output_and_mixed_batches():
    arr = photo_like(6, 240, 250, seed=13)
    x = to_tensor(arr)
    names = ["RandResizeCrop", "Invert", "RandResizeCrop", "Solarize", "Identity", "Rotate"]
    mixed = to_numpy(apply_ops(x, names, [6, 6, 6, 2, 6, 9]))
    for i in (1, 3, 4, 5):
        ref = ops.center_crop(ops.apply_op(Image.fromarray(arr[i]), names[i], [6, 6, 6, 2, 6, 9][i]))
        assert np.array_equal(mixed[i], np.asarray(ref))


def _policy(weights: dict, n_layers, space_name="cifar", l_mags=13):
    """A policy whose layer k puts weights[(name, level)][k] on those candidates, 0 elsewhere."""
    cands = space.candidates(space_name, l_mags)
    probs = np.zeros((n_layers, len(cands)))
    for cand, per_layer in weights.items():
        probs[:, cands.index(cand)] = per_layer
    return Policy(probs=probs, candidates=cands, l_mags=l_mags, space=space_name, meta={})


def test_policy_sampling_frequencies_follow_probs():
    cands = space.candidates("cifar", 13)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(len(cands), 0.3), size=2)
    pol = Policy(probs=probs, candidates=cands, l_mags=13, space="cifar", meta={})
    draws = batched.sample_candidates(pol, 20000, torch.Generator().manual_seed(7))
    for k in range(2):
        freq = np.bincount(draws[:, k].numpy(), minlength=len(cands)) / 20000
        assert _tv(freq, probs[k]) < 0.04


def test_policy_batch_applies_each_images_own_layers():
    chosen = {("Invert", 6): (0.2, 0.1, 0.25), ("Solarize", 4): (0.2, 0.3, 0.0),
              ("Posterize", 0): (0.2, 0.1, 0.25), ("Rotate", 2): (0.2, 0.2, 0.25),
              ("Equalize", 6): (0.1, 0.2, 0.25), ("Identity", 6): (0.1, 0.1, 0.0)}
    pol = _policy(chosen, 3)
    cands = pol.candidates
    arr = photo_like(48, 32, 32, seed=14)
    got = to_numpy(apply_policy_batch(pol, to_tensor(arr), mirror=False,
                                      generator=torch.Generator().manual_seed(8)))
    choice = batched.sample_candidates(pol, 48, torch.Generator().manual_seed(8)).numpy()
    for i in range(48):
        img = Image.fromarray(arr[i])
        for k in range(3):
            img = ops.apply_op(img, *cands[choice[i, k]])
        assert np.array_equal(got[i], np.asarray(img)), i
    assert len({tuple(c) for c in choice}) > 20  # images really draw separately


def test_global_generator_and_empty_batches():
    """Without a generator the draws come from torch's global one (seeded by
    torch.manual_seed); a batch of no image comes back empty."""
    pol = _policy({("RandCutout", 6): (0.5,), ("Invert", 6): (0.5,)}, 1)
    x = to_tensor(photo_like(16, 32, 32, seed=3))
    torch.manual_seed(21)
    a = apply_policy_batch(pol, x)
    torch.manual_seed(21)
    assert torch.equal(a, apply_policy_batch(pol, x))
    assert not torch.equal(a, apply_policy_batch(pol, x))  # the global stream moved on
    assert apply_policy_batch(pol, x[:0]).shape == (0, 3, 32, 32)
    assert batched.sample_candidates(pol, 0).shape == (0, 1)


def test_policy_batch_of_indexed_images_equals_the_gathered_batch():
    """index= (a loader's stored array, read in place by the C kernels) gives the pixels of
    the gathered batch x[index] for the same generator: repeated and unordered indices, a
    CIFAR policy and an ImageNet one with RandResizeCrop at 224 x 224; an index outside the
    stored images is refused, and no index gives an empty batch."""
    from augmentation.policy import load_policy

    for name, side in (("deepaa_cifar_1", 32), ("deepaa_imagenet_1", 224)):
        x = to_tensor(photo_like(7, side, side, seed=side))
        index = np.array([5, 0, 5, 6, 2, 3, 1, 4])
        got = apply_policy_batch(load_policy(name), x, index=index,
                                 generator=torch.Generator().manual_seed(4))
        want = apply_policy_batch(load_policy(name), x[torch.from_numpy(index)],
                                  generator=torch.Generator().manual_seed(4))
        assert got.shape == (8, 3, side, side) and torch.equal(got, want), name
        assert not torch.equal(got[0], got[2])  # the same image drew its own ops
    with pytest.raises(IndexError):
        apply_policy_batch(load_policy("deepaa_cifar_1"), x[:, :, :32, :32], index=[0, 7])
    assert apply_policy_batch(load_policy("deepaa_cifar_1"), x, index=[]).shape == (0, 3, 224,
                                                                                     224)


def test_policy_batch_mirrors_each_layer_per_image():
    """The trainer's semantics (mirror=True): each layer's signed op acts at +v or -v per
    image, each image's result is one of Pillow's four sign combinations, and both signs occur
    in both layers."""
    pol = _policy({("Rotate", 2): (0.5, 0.0), ("ShearX", 3): (0.5, 0.0),
                   ("TranslateY", 1): (0.0, 1.0)}, 2)
    arr = np.repeat(photo_like(1, 32, 32, seed=17), 40, axis=0)
    got = to_numpy(apply_policy_batch(pol, to_tensor(arr), mirror=True,
                                      generator=torch.Generator().manual_seed(12)))
    first = {}
    for name, level in (("Rotate", 2), ("ShearX", 3)):
        for sign, lv in ((1, level), (-1, 12 - level)):  # level 12 - l mirrors level l
            once = ops.apply_op(Image.fromarray(arr[0]), name, lv)
            for sign2, lv2 in ((1, 1), (-1, 11)):
                first[(name, sign, sign2)] = np.asarray(ops.apply_op(once, "TranslateY", lv2))
    seen = []
    for i in range(40):
        match = [key for key, img in first.items() if np.array_equal(got[i], img)]
        assert match, i
        seen.append(match[0])
    assert {s[0] for s in seen} == {"Rotate", "ShearX"}
    assert {s[1] for s in seen} == {1, -1} and {s[2] for s in seen} == {1, -1}


def test_policy_batch_imagenet_ends_at_224():
    """Images keep their size until RandResizeCrop (then 224) and are centre-cropped to 224
    after the last layer (SPEC §2, §3); the later layers act on each image's current size."""
    pol = _policy({("RandResizeCrop", 2): (0.5, 0.0), ("TranslateX", 0): (0.5, 0.0),
                   ("Invert", 2): (0.0, 1.0)}, 2, "imagenet", 5)
    arr = photo_like(10, 250, 260, seed=15)
    out = to_numpy(apply_policy_batch(pol, to_tensor(arr), mirror=False,
                                      generator=torch.Generator().manual_seed(9)))
    choice = batched.sample_candidates(pol, 10, torch.Generator().manual_seed(9)).numpy()
    assert out.shape == (10, 224, 224, 3)
    translated = [i for i in range(10) if pol.candidates[choice[i, 0]][0] == "TranslateX"]
    assert 0 < len(translated) < 10
    for i in translated:
        img = ops.apply_op(ops.apply_op(Image.fromarray(arr[i]), "TranslateX", 0, 5), "Invert", 2, 5)
        assert np.array_equal(out[i], np.asarray(ops.center_crop(img))), i


@pytest.mark.parametrize("device", DEVICES)
def test_random_ops_independent_per_image_and_reproducible(device):
    x = to_tensor(np.repeat(photo_like(1, 32, 32, seed=16), 64, axis=0), device)
    for name in ("RandCutout", "RandCrop", "RandFlip"):
        a = apply_candidate(x, name, 6, generator=torch.Generator().manual_seed(10))
        b = apply_candidate(x, name, 6, generator=torch.Generator().manual_seed(10))
        assert a.device == x.device and a.dtype == torch.uint8 and torch.equal(a, b)
        distinct = {bytes(img.cpu().numpy().tobytes()) for img in a}
        assert len(distinct) >= 2 if name == "RandFlip" else len(distinct) > 20


def test_histogram_by_sorting_equals_bincount():
    """The GPU's histogram (sorted pixels and searchsorted, no read-back) counts as the CPU's
    bincount does, for flat bands, the extreme levels and noise."""
    from augmentation.batched import color

    x = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (6, 3, 11, 13),
                                                           dtype=np.uint8))
    x[0] = 0
    x[1] = 255
    x[2, 1] = 128
    got = color._histogram_by_sorting(x)
    assert torch.equal(got, color._histogram(x))
    assert got[0, 0, 0] == got[1, 2, 255] == 11 * 13 and got[2, 1, 128] == 11 * 13


def test_bad_input_is_rejected_with_one_line_errors():
    x = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8"):
        apply_candidate(x.float(), "Invert", 6)
    with pytest.raises(ValueError, match="N x 3"):
        apply_candidate(x[:, :1], "Invert", 6)
    with pytest.raises(ValueError, match="unknown op"):
        apply_candidate(x, "Blur", 6)
    with pytest.raises(ValueError, match="level"):
        apply_candidate(x, "Solarize", 13)
    with pytest.raises(ValueError, match="one op and one level per image"):
        apply_ops(x, ["Invert"], [6])
    assert apply_ops(x[:0], [], []).shape == (0, 3, 8, 8)


def test_smooth_integer_rule_equals_pillow_smooth():
    """SMOOTH as floor((2 S + 13) / 26) (batched.color) is Pillow's float32 filter: the
    multiply-shift division holds for every reachable S, and noise images with extreme values
    (every S from 0 to 3315 is reachable) give Pillow's pixels."""
    from PIL import ImageFilter

    from augmentation.batched import color
    t = torch.arange(0, 2 * 3315 + 14, dtype=torch.int32)
    assert torch.equal((t * color._DIV26_MUL) >> color._DIV26_SHIFT, t // 26)
    rng = np.random.default_rng(21)
    noise = rng.integers(0, 256, (4, 23, 19, 3)).astype(np.uint8)
    noise[0] = np.where(rng.random((23, 19, 1)) < 0.5, 0, 255)  # extreme sums
    got = to_numpy(color.smooth(to_tensor(noise)))
    for i in range(4):
        ref = np.asarray(Image.fromarray(noise[i]).filter(ImageFilter.SMOOTH))
        assert np.array_equal(got[i], ref), i


@pytest.mark.parametrize("name", [n for n in DETERMINISTIC if space.OPS[n].has_magnitude])
def test_per_image_levels_in_one_call_are_bit_exact(name):
    """Mixed values in one call go through the per-image tables and per-image maps (not the
    one-value fast paths); each image must still equal Pillow at its own level."""
    arr = np.concatenate([photo_like(13, 32, 32, seed=30), edge_cases(32, 32)])
    levels = [i % 13 for i in range(len(arr))]
    got = to_numpy(apply_ops(to_tensor(arr), [name] * len(arr), levels))
    for i, level in enumerate(levels):
        assert np.array_equal(got[i], pillow(arr[i:i + 1], name, level)[0]), (name, level)


def test_caches_follow_size_and_layout():
    """The cached maps, block plans and LUTs are keyed by size: one op at several sizes in a
    row, an odd number of bytes (no byte-pair lookup) and a non-contiguous view all match
    Pillow."""
    shapes = [(32, 32), (17, 31), (3, 5), (32, 32)]
    for name, level in [("TranslateX", 2), ("ShearX", 11), ("ShearY", 1), ("Rotate", 3),
                        ("Brightness", 4), ("Solarize", 5), ("Contrast", 9), ("Sharpness", 0),
                        ("Color", 12)]:
        for k, (h, w) in enumerate(shapes):
            arr = photo_like(1 if (h, w) == (3, 5) else 3, h, w, seed=40 + k)
            got = to_numpy(apply_candidate(to_tensor(arr), name, level))
            assert np.array_equal(got, pillow(arr, name, level)), (name, level, h, w)
        wide = photo_like(2, 16, 21, seed=50)
        view = to_tensor(wide)[:, :, :, 1:]  # odd offset, not contiguous
        assert np.array_equal(to_numpy(apply_candidate(view, name, level)),
                              pillow(wide[:, :, 1:], name, level)), name


def test_block_plans_and_gather_agree():
    """TranslateX/Y and ShearX are copied as shifted blocks; the same map as a gather gives
    the same pixels."""
    x = to_tensor(photo_like(4, 29, 37, seed=60))
    planned = 0
    for name in ("TranslateX", "TranslateY", "ShearX", "ShearY", "Rotate"):
        for level in range(13):
            value = space.level_to_value(name, level, 13)
            blocks = geometry.block_plan(name, value, 37, 29)
            if blocks is None:
                continue
            planned += 1
            idx = geometry._device_index(name, value, 37, 29, "cpu")
            flat = geometry._with_black(x)
            ref = flat.gather(2, idx.view(1, 1, -1).expand(4, 3, -1)).view(x.shape)
            assert torch.equal(geometry._copy_blocks(x, blocks), ref), (name, level)
    assert planned >= 3 * 13


def test_mixed_affine_ops_mirror_per_image():
    """Several affine ops in one call share one gather; under the mirror each image still gets
    its op at +v or -v (Pillow's pixels), and both signs occur."""
    arr = np.repeat(photo_like(1, 32, 32, seed=70), 60, axis=0)
    names = ["ShearY", "Rotate", "TranslateX"] * 20
    got = to_numpy(apply_ops(to_tensor(arr), names, [1] * 60, mirror=True,
                             generator=torch.Generator().manual_seed(11)))
    signs = []
    for i, name in enumerate(names):
        plus = pillow(arr[:1], name, 1)[0]
        minus = pillow(arr[:1], name, 11)[0]  # level 11 is the mirror of level 1
        assert np.array_equal(got[i], plus) or np.array_equal(got[i], minus), (i, name)
        signs.append(np.array_equal(got[i], minus))
    assert 10 < sum(signs) < 50

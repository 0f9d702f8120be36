"""The compiled CPU kernels (augmentation/batched/native.c) against the torch executor: the
same pixels for every candidate, mixed batches and whole policies given the same generator,
also when built without the CPU-specific instructions; and the fallbacks."""
from __future__ import annotations

import ctypes
import os

import numpy as np
import pytest
import torch

from augmentation import space
from augmentation.batched import apply as batched
from augmentation.batched import native, resize
from augmentation.policy import Policy, load_policy

from .test_apply import edge_cases, photo_like, to_tensor


@pytest.fixture(scope="module")
def images():
    return to_tensor(np.concatenate([photo_like(27, 32, 32, seed=41), edge_cases(32, 32)]))


def both(fn):
    """fn() with the kernels on and off; the torch executor's result second. The C kernels (the
    candidate table or the resize) must really run with the kernels on, else the comparison
    would be torch against torch."""
    outs = []
    real_run, real_resize, calls = (native.CandidateTable.run,
                                    native.resized_crop, [])

    def counted(real):
        def call(*args, **kwargs):
            calls.append(1)
            return real(*args, **kwargs)
        return call

    for flag in (True, False):
        native.set_enabled(flag)
        native.CandidateTable.run = counted(real_run)
        native.resized_crop = counted(real_resize)
        try:
            outs.append(fn())
        finally:
            native.CandidateTable.run = real_run
            native.resized_crop = real_resize
            native.set_enabled(True)
        if flag:
            assert calls, "the C kernels did not run"
            ran = len(calls)
    assert len(calls) == ran, "the C kernels ran with the kernels off"
    return outs


def test_the_kernels_build_here():
    # The development and CI machines have a C compiler: the fast path must be in use there.
    assert native.available()


@pytest.mark.parametrize("mirror", [False, True])
def test_every_candidate_equals_the_torch_executor(images, mirror):
    for name, level in space.candidates("cifar", 13):
        compiled, reference = both(lambda: batched.apply_candidate(
            images, name, level, mirror=mirror, generator=torch.Generator().manual_seed(3)))
        assert torch.equal(compiled, reference), (name, level)


def test_mixed_batches_and_policies_equal_the_torch_executor(images):
    rng = np.random.default_rng(5)
    cands = space.candidates("cifar", 13)
    picks = rng.integers(0, len(cands), 4 * len(images))
    x = images.repeat(4, 1, 1, 1)
    names, levels = [cands[k][0] for k in picks], [cands[k][1] for k in picks]
    compiled, reference = both(lambda: batched.apply_ops(
        x, names, levels, mirror=True, generator=torch.Generator().manual_seed(6)))
    assert torch.equal(compiled, reference)
    uniform = Policy(probs=np.full((6, len(cands)), 1 / len(cands)), candidates=cands,
                     l_mags=13, space="cifar", meta={})
    for policy in (uniform, load_policy("deepaa_cifar_1")):
        compiled, reference = both(lambda: batched.apply_policy_batch(
            policy, x, generator=torch.Generator().manual_seed(7)))
        assert torch.equal(compiled, reference)
        assert not torch.equal(compiled, x)


def test_random_crop_and_cutout_on_tiny_images():
    """RandCrop's 4-px padding and the cutout box on images narrower or lower than the
    padding: every offset, many draws, the same pixels as the torch executor."""
    for h, w in ((1, 1), (2, 1), (1, 3), (2, 2), (3, 3), (5, 2), (4, 9)):
        x = to_tensor(photo_like(400, h, w, seed=h * 10 + w))
        for name in ("RandCrop", "RandCutout", "RandFlip"):
            compiled, reference = both(lambda: batched.apply_candidate(
                x, name, 0, generator=torch.Generator().manual_seed(h + w)))
            assert torch.equal(compiled, reference), (h, w, name)


def test_imagenet_policy_without_resize_crop_is_centre_cropped():
    """Whatever executor runs an ImageNet-space policy, the batch ends at 224 x 224 (a
    policy-like object: a validated ImageNet policy always has RandResizeCrop candidates)."""
    from types import SimpleNamespace

    policy = SimpleNamespace(probs=np.full((1, 2), 0.5), candidates=[("Identity", 0),
                             ("Invert", 0)], l_mags=13, space="imagenet")
    x = to_tensor(photo_like(4, 240, 240, seed=3))
    compiled, reference = both(lambda: batched.apply_policy_batch(
        policy, x, generator=torch.Generator().manual_seed(0)))
    assert compiled.shape == (4, 3, 224, 224) and torch.equal(compiled, reference)


def test_odd_sizes_and_views(images):
    """Tiny and non-square images, and a non-contiguous input."""
    for x in (to_tensor(photo_like(6, 2, 2, seed=1)), to_tensor(photo_like(6, 9, 11, seed=2)),
              images[:, :, 3:30, 1:31], images.flip(0)):
        for name, level in space.candidates("cifar", 5):
            compiled, reference = both(lambda: batched.apply_candidate(
                x, name, level, l_mags=5, mirror=True, generator=torch.Generator().manual_seed(8)))
            assert torch.equal(compiled, reference), (tuple(x.shape), name, level)


def test_a_build_without_cpu_specific_instructions_gives_the_same_pixels(images, monkeypatch,
                                                                         tmp_path):
    """The scalar fallbacks of the C files (no AVX-512 LUT, resize passes or byte permutes;
    no -march=native) agree too: every candidate, a policy of several layers in one call, and
    resize crops from 224 x 224 and from a larger image."""
    monkeypatch.setenv("DEEPAA_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_NATIVE_ARCH", "-O3")  # a harmless stand-in flag
    plain = ctypes.CDLL(native.build())
    for fn in ("dx_apply", "dx_resize"):
        getattr(plain, fn).argtypes = getattr(native._library(), fn).argtypes
        getattr(plain, fn).restype = ctypes.c_int
    big = to_tensor(photo_like(6, 224, 224, seed=3))
    wide = to_tensor(photo_like(4, 60, 300, seed=4))
    boxes = (np.array([0, 7, 100, 299]), np.array([0, 3, 10, 59]), np.array([300, 200, 120, 1]),
             np.array([60, 40, 30, 1]))

    def runs():
        out = [batched.apply_candidate(images, n, lv, generator=torch.Generator().manual_seed(9))
               for n, lv in space.candidates("cifar", 13)]
        out.append(batched.apply_policy_batch(load_policy("deepaa_cifar_1"), images,
                                              generator=torch.Generator().manual_seed(9)))
        out.append(batched.apply_policy_batch(load_policy("deepaa_imagenet_1"), big,
                                              generator=torch.Generator().manual_seed(9)))
        out.append(native.resized_crop(wide, boxes, 224))
        return out

    fast = runs()
    monkeypatch.setattr(native, "_library", lambda: plain)
    for k, (got, expected) in enumerate(zip(runs(), fast)):
        assert torch.equal(got, expected), k


def test_blend_formula_is_checked_against_pillow_and_tables_take_over(images, monkeypatch):
    """A factor whose C formula differed from Pillow's Image.blend would be looked up in
    Pillow's table instead: forcing that path gives the same pixels."""
    assert native.formula_matches(1.3)
    expected = [batched.apply_candidate(images, name, 2) for name in
                ("Contrast", "Color", "Brightness", "Sharpness")]
    native.candidate_table.cache_clear()
    monkeypatch.setattr(native, "formula_matches", lambda factor: False)
    try:
        for name, want in zip(("Contrast", "Color", "Brightness", "Sharpness"), expected):
            assert torch.equal(batched.apply_candidate(images, name, 2), want), name
        table = native.candidate_table(batched._OP_NAMES, 13, 32, 32)
        assert (table.ip[:, 1] >= 0).sum() >= 4 * 12 * 2 and table.tables.shape[0] >= 12
    finally:
        native.candidate_table.cache_clear()


def test_no_compiler_or_disabled_means_the_torch_path(monkeypatch, tmp_path, images):
    monkeypatch.setenv("DEEPAA_CACHE", str(tmp_path))
    with pytest.raises(Exception):
        native.build(compiler=str(tmp_path / "no-such-cc"))
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left
    native.set_enabled(False)
    try:
        assert not native.usable(images, ("Invert",))
        out = batched.apply_candidate(images, "Invert", 0)
        assert torch.equal(out, 255 - images)
    finally:
        native.set_enabled(True)
    assert not native.usable(images, ("RandResizeCrop",))  # resized apart (_split)


def test_an_unwritable_cache_folder_falls_back_to_the_temp_dir(monkeypatch, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.delenv("DEEPAA_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))  # makedirs under a file fails
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    path = native.build()
    assert path.startswith(str(tmp_path / "tmp")) and os.path.exists(path)


def test_a_shared_temp_cache_folder_is_refused(monkeypatch, tmp_path):
    """A library is loaded from the cache: a temp folder others can write is not used."""
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.delenv("DEEPAA_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(tmp_path))
    shared = tmp_path / f"deepaa-{os.getuid()}"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(OSError, match="private"):
        native.build()
    assert list(shared.iterdir()) == []


def test_imagenet_batches_with_resize_crops_split_between_executors():
    """RandResizeCrop changes the size: in a mixed call its images are resized apart and the
    others go through one C call, with the same pixels as the torch executor alone (input 224
    and larger, where the others are centre-cropped; a batch of resize crops alone)."""
    cands = space.candidates("imagenet", 13)
    rng = np.random.default_rng(9)
    for size in (224, 240):
        x = to_tensor(photo_like(24, size, size, seed=size))
        picks = rng.integers(0, len(cands), 24)
        names = [cands[k][0] for k in picks[:-3]] + ["RandResizeCrop"] * 3
        levels = [cands[k][1] for k in picks[:-3]] + [0] * 3
        compiled, reference = both(lambda: batched.apply_ops(
            x, names, levels, mirror=True, generator=torch.Generator().manual_seed(size)))
        assert compiled.shape == (24, 3, 224, 224) and torch.equal(compiled, reference), size
    x = to_tensor(photo_like(5, 240, 250, seed=3))  # only resize crops: no C call for others
    compiled, reference = both(lambda: batched.apply_ops(
        x, ["RandResizeCrop"] * 5, [0] * 5, generator=torch.Generator().manual_seed(5)))
    assert compiled.shape == (5, 3, 224, 224) and torch.equal(compiled, reference)
    # Resized images that change size never pass through the candidate table as Identity.
    sizes, real_run = [], native.CandidateTable.run

    def spy(self, images, *args):
        sizes.append(images.shape[0])
        return real_run(self, images, *args)

    native.CandidateTable.run = spy
    try:
        batched.apply_ops(x, ["RandResizeCrop"] * 5, [0] * 5)
        batched.apply_ops(x, ["RandResizeCrop", "Invert"] * 2 + ["Invert"], [0] * 5)
    finally:
        native.CandidateTable.run = real_run
    assert sizes == [3]


def test_the_c_resize_on_tiny_images_views_and_empty_batches():
    """The C resize against Pillow on a 5 x 7 image (an enlarged 1-px box, the whole image)
    and against the torch port on a strided view; larger images and Pillow's pass orders are
    in batched/test_resize."""
    from PIL import Image

    arr = photo_like(3, 5, 7, seed=4)
    box = (torch.tensor([0, 3, 6]), torch.tensor([0, 1, 4]), torch.tensor([7, 4, 1]),
           torch.tensor([5, 2, 1]))
    got = native.resized_crop(to_tensor(arr), box, 224)
    for i in range(len(arr)):
        l, t, cw, ch = (int(b[i]) for b in box)
        ref = Image.fromarray(arr[i]).resize((224, 224), Image.BICUBIC,
                                             box=(l, t, l + cw, t + ch))
        assert np.array_equal(got[i].permute(1, 2, 0).numpy(), np.asarray(ref)), i
    wide = to_tensor(photo_like(3, 64, 96, seed=5))[:, :, :, 10:90]  # a strided view
    box = (torch.tensor([0, 5, 40]), torch.tensor([0, 9, 30]), torch.tensor([80, 30, 40]),
           torch.tensor([64, 20, 34]))
    assert torch.equal(native.resized_crop(wide, box, 224),
                       resize.resized_crop(wide, box, 224))
    assert native.resized_crop(wide[:0], tuple(b[:0] for b in box), 224).shape == \
        (0, 3, 224, 224)


def test_imagenet_policies_equal_the_torch_executor():
    """Whole ImageNet-space policies, where images change size mid-policy after a
    RandResizeCrop: the same pixels on both paths, from 224 x 224 (resized images go back in
    place), from larger and from portrait images (Pillow's vertical-first order), for a
    policy with RandResizeCrop at p = 0.3 per layer and for a released one."""
    cands = space.candidates("imagenet", 13)
    resizes = [k for k, (name, _) in enumerate(cands) if name == "RandResizeCrop"]
    probs = np.full((4, len(cands)), 0.7 / (len(cands) - len(resizes)))
    probs[:, resizes] = 0.3 / len(resizes)
    heavy = Policy(probs=probs, candidates=cands, l_mags=13, space="imagenet", meta={})
    for x, policy in ((to_tensor(photo_like(40, 236, 250, seed=21)), heavy),
                      (to_tensor(photo_like(40, 224, 224, seed=22)), heavy),
                      (to_tensor(photo_like(24, 400, 260, seed=24)), heavy),
                      (to_tensor(photo_like(40, 236, 250, seed=23)),
                       load_policy("deepaa_imagenet_1"))):
        compiled, reference = both(lambda: batched.apply_policy_batch(
            policy, x, generator=torch.Generator().manual_seed(11)))
        assert compiled.shape == (len(x), 3, 224, 224) and torch.equal(compiled, reference)
        assert compiled.is_contiguous()


def test_resize_crops_run_in_c_and_outputs_never_alias_the_input(monkeypatch):
    """With the kernels on, RandResizeCrop never reaches the torch port; no result shares
    memory with its input, also when nothing changes the pixels."""
    x = to_tensor(photo_like(6, 224, 224, seed=2))

    def torch_port(*args):
        raise AssertionError("the torch resize ran")

    with monkeypatch.context() as patch:
        patch.setattr(resize, "_resize_horizontal_first", torch_port)
        out = batched.apply_ops(x, ["RandResizeCrop", "Identity"] * 3, [0] * 6)
    assert out.shape == x.shape
    from types import SimpleNamespace

    identity = SimpleNamespace(probs=np.ones((2, 1)), candidates=[("Identity", 0)], l_mags=13,
                               space="cifar")
    for result in both(lambda: batched.apply_ops(x, ["Identity"] * 6, [0] * 6)) + \
            both(lambda: batched.apply_policy_batch(identity, x)):
        assert torch.equal(result, x)
        assert result.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()

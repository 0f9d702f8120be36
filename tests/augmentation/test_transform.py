"""The DeepAAPolicy transform (SPEC §3): sampling frequencies, seeding, torchvision
composition, pickling, DataLoader workers, and its tensor entry points."""
import pickle
import sys
import types

import numpy as np
import pytest
import torch
from torchvision import transforms as T
from torchvision.transforms import v2

from augmentation.policy import Policy
from augmentation.transform import DeepAAPolicy

from .test_policy import image, small_policy


def test_sample_frequencies_match_probabilities():
    pol = small_policy(n_layers=2, seed=3)
    t = DeepAAPolicy(pol)
    n = 40000
    idx = t.sample(n, rng=np.random.default_rng(0))
    assert idx.shape == (n, 2) and idx.dtype.kind == "i"
    for k in range(2):
        counts = np.bincount(idx[:, k], minlength=29)
        expected = n * pol.probs[k]
        keep = expected >= 5  # chi-square over the well-populated cells, the rest pooled
        obs = np.append(counts[keep], counts[~keep].sum())
        exp = np.append(expected[keep], expected[~keep].sum())
        chi2 = ((obs - exp) ** 2 / np.maximum(exp, 1e-12)).sum()
        dof = len(obs) - 1
        assert chi2 < dof + 5 * np.sqrt(2 * dof), (k, chi2, dof)


def test_sample_never_picks_zero_probability_candidates():
    probs = np.zeros((1, 29))
    probs[0, [0, 28]] = 0.5
    t = DeepAAPolicy(Policy(probs, None, 3, "cifar"))
    assert set(np.unique(t.sample(2000, np.random.default_rng(1)))) == {0, 28}


def test_identity_policy_leaves_images_unchanged():
    img = image(1)
    t = DeepAAPolicy(Policy.identity(3, "cifar", 13))
    assert np.array_equal(np.asarray(t(img)), np.asarray(img))


def test_seeded_transform_is_reproducible_and_unseeded_is_not():
    pol = Policy.uniform(3, "cifar", 3)
    imgs = [image(s) for s in range(6)]
    a, b = DeepAAPolicy(pol, seed=3), DeepAAPolicy(pol, seed=3)
    out_a = [np.asarray(a(i)) for i in imgs]
    out_b = [np.asarray(b(i)) for i in imgs]
    assert all(np.array_equal(x, y) for x, y in zip(out_a, out_b))
    c = DeepAAPolicy(pol, seed=4)
    assert not all(np.array_equal(x, np.asarray(c(i))) for x, i in zip(out_a, imgs))
    free = DeepAAPolicy(pol)
    assert not np.array_equal(free.sample(50), free.sample(50))


def test_grey_input_is_converted_and_repr():
    t = DeepAAPolicy.from_yaml("cifar_1", seed=0)
    out = t(image(2).convert("L"))
    assert out.mode == "RGB" and out.size == (32, 32)
    with pytest.raises(TypeError):
        t(np.zeros((32, 32, 3), np.uint8))
    r = repr(t)
    assert r.startswith("DeepAAPolicy(") and "cifar" in r and "layers=6" in r and "mirror=True" in r


def test_composes_with_torchvision_v1_and_v2():
    t = DeepAAPolicy.from_yaml("cifar_1", seed=1)
    x = T.Compose([t, T.ToTensor()])(image(3))
    assert isinstance(x, torch.Tensor) and x.shape == (3, 32, 32) and x.dtype == torch.float32
    y = v2.Compose([t, v2.PILToTensor()])(image(4))
    assert y.shape == (3, 32, 32) and y.dtype == torch.uint8


def test_picklable_and_state_preserved():
    t = DeepAAPolicy(small_policy(), seed=5)
    t(image(0))
    u = pickle.loads(pickle.dumps(t))
    assert u.policy == t.policy and u.mirror and u.seed == 5
    img = image(9)
    assert np.array_equal(np.asarray(u(img)), np.asarray(t(img)))


class _Images(torch.utils.data.Dataset):
    def __init__(self, transform, n=8):
        self.img, self.transform, self.n = image(7), transform, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.transform(self.img)


def _load(transform):
    loader = torch.utils.data.DataLoader(_Images(transform), batch_size=1, num_workers=2)
    return [b[0] for b in loader]


def test_dataloader_workers_draw_different_augmentations():
    pol = Policy.uniform(2, "cifar", 3)
    for seed in (None, 11):
        tf = T.Compose([DeepAAPolicy(pol, seed=seed), T.PILToTensor()])
        outs = _load(tf)
        assert len(outs) == 8 and outs[0].shape == (3, 32, 32)
        w0, w1 = torch.stack(outs[0::2]), torch.stack(outs[1::2])  # workers alternate
        assert not torch.equal(w0, w1), seed
    # seeded: each worker's stream comes from (seed, the worker's torch seed), so a run is
    # reproducible under torch.manual_seed and a new epoch (new worker seeds) differs
    tf = T.Compose([DeepAAPolicy(pol, seed=11), T.PILToTensor()])
    runs = []
    for torch_seed in (0, 0, 1):
        torch.manual_seed(torch_seed)
        runs.append(torch.stack(_load(tf)))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_batch_delegates_lazily(monkeypatch):
    calls = []
    fake = types.ModuleType("augmentation.batched")
    fake.apply_policy_batch = lambda policy, x, mirror=True, generator=None: calls.append(
        (policy, x, mirror, generator)) or x
    monkeypatch.setitem(sys.modules, "augmentation.batched", fake)
    pol = small_policy()
    t = DeepAAPolicy(pol, mirror=False)
    x = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    assert t.batch(x, g) is x
    assert calls == [(pol, x, False, g)]
    monkeypatch.undo()  # the real module: the same call as apply_policy_batch itself
    from augmentation.batched import apply_policy_batch

    x = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (4, 3, 32, 32), np.uint8))
    for mirror in (False, True):
        got = DeepAAPolicy(pol, mirror=mirror).batch(x, torch.Generator().manual_seed(5))
        assert torch.equal(got, apply_policy_batch(pol, x, mirror=mirror,
                                                   generator=torch.Generator().manual_seed(5)))


def test_apply_candidate_by_index_is_the_dense_augmentation_of_that_candidate():
    from augmentation import batched

    t = DeepAAPolicy.from_yaml("cifar_1")
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (6, 3, 32, 32),
                                                           dtype=np.uint8))
    for index in (0, 5, 40, len(t.policy.candidates) - 1):
        name, level = t.policy.candidates[index]
        got = t.apply_candidate(x, index, rng=torch.Generator().manual_seed(1))
        want = batched.apply_candidate(x, name, level, t.policy.l_mags,
                                       generator=torch.Generator().manual_seed(1))
        assert torch.equal(got, want), (index, name, level)
    with pytest.raises(IndexError, match="candidate index"):
        t.apply_candidate(x, len(t.policy.candidates))


# --- the input types torchvision's transforms take ----------------------------------------------

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _chw(img, device="cpu"):
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous().to(device)


def _hwc(x):
    return x.as_subclass(torch.Tensor).permute(1, 2, 0).cpu().numpy()


@pytest.mark.parametrize("device", DEVICES)
def test_every_input_type_gives_the_pixels_of_the_pil_path(device):
    """The same draws give the same pixels for a PIL image, a uint8 tensor 3 x H x W, a
    tv_tensors.Image and a batch N x 3 x H x W (image i as the i-th single call), each returned
    as its own type on its own device; views and channels-last batches too. cifar_1 has flips,
    crops and cutouts, so the random ops' draws are covered."""
    from torchvision import tv_tensors

    t = DeepAAPolicy.from_yaml("cifar_1")
    imgs = [image(s) for s in range(6)]
    rng = np.random.default_rng(5)
    want = [np.asarray(t(img, rng=rng)) for img in imgs]
    assert sum(not np.array_equal(w, np.asarray(i)) for w, i in zip(want, imgs)) >= 4

    rng = np.random.default_rng(5)
    singles = [t(_chw(img, device), rng=rng) for img in imgs]
    assert all(type(s) is torch.Tensor and s.device.type == device and s.dtype == torch.uint8
               for s in singles)
    assert all(np.array_equal(_hwc(s), w) for s, w in zip(singles, want))

    rng = np.random.default_rng(5)
    wrapped = [t(tv_tensors.Image(_chw(img, device)), rng=rng) for img in imgs]
    assert all(type(s) is tv_tensors.Image and s.device.type == device for s in wrapped)
    assert all(np.array_equal(_hwc(s), w) for s, w in zip(wrapped, want))

    batch = torch.stack([_chw(img, device) for img in imgs])
    for x in (batch, tv_tensors.Image(batch), batch.contiguous(memory_format=torch.channels_last),
              torch.cat([batch, batch], dim=3)[..., :32]):
        out = t(x, rng=np.random.default_rng(5))
        assert type(out) is type(x) and out.shape == x.shape and out.device == x.device
        assert all(np.array_equal(_hwc(out[i]), w) for i, w in enumerate(want)), type(x)
    assert torch.equal(batch, torch.stack([_chw(img, device) for img in imgs]))  # input kept
    arrays = np.stack([np.asarray(img) for img in imgs])  # channels last, as Keras holds them
    assert np.array_equal(t.apply_numpy(arrays, rng=np.random.default_rng(5)), np.stack(want))
    assert np.array_equal(t.apply_numpy(arrays[0], rng=np.random.default_rng(5)), want[0])


def test_tensor_images_change_size_as_pil_ones_do_and_batches_that_cannot_stack_are_refused():
    """RandResizeCrop makes an image 224 x 224 on every input type; a batch of another size
    with a policy that can pick it is refused before anything is drawn."""
    t = DeepAAPolicy.from_yaml("imagenet_1")
    img = image(3, size=(48, 40))
    for seed in range(30):
        want = t(img, rng=np.random.default_rng(seed))
        if want.size == (224, 224):
            break
    assert want.size == (224, 224)
    got = t(_chw(img), rng=np.random.default_rng(seed))
    assert got.shape == (3, 224, 224) and np.array_equal(_hwc(got), np.asarray(want))
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="40 x 48 images cannot take this policy's RandResize"):
        t(torch.stack([_chw(img)] * 2), rng=rng)
    assert rng.random() == np.random.default_rng(0).random()
    big = torch.stack([_chw(image(s, size=(224, 224))) for s in range(2)])
    out = t(big, rng=np.random.default_rng(1))
    rng = np.random.default_rng(1)
    for i in range(2):
        assert np.array_equal(_hwc(out[i]), np.asarray(t(image(i, size=(224, 224)), rng=rng)))


def test_bad_tensors_and_samples_are_refused_with_one_line_errors():
    from torchvision import tv_tensors

    t = DeepAAPolicy.from_yaml("cifar_1")
    for bad, match in ((torch.zeros(3, 8, 8), "uint8 tensor 3 x H x W or N x 3 x H x W, got "
                                              "torch.float32 \\(3, 8, 8\\)"),
                       (torch.zeros(1, 8, 8, dtype=torch.uint8), "got torch.uint8 \\(1, 8, 8\\)"),
                       (torch.zeros(8, 8, dtype=torch.uint8), "got torch.uint8 \\(8, 8\\)")):
        with pytest.raises(ValueError, match=match):
            t(bad)
    with pytest.raises(TypeError, match="transforms images, not Mask"):
        t(tv_tensors.Mask(torch.zeros(8, 8, dtype=torch.uint8)))
    boxes = tv_tensors.BoundingBoxes([[0, 0, 4, 4]], format="XYXY", canvas_size=(32, 32))
    with pytest.raises(TypeError, match="sample with BoundingBoxes is not supported"):
        t(image(0), boxes)
    with pytest.raises(TypeError, match="one image in a sample, found 2"):
        t(image(0), image(1))
    with pytest.raises(TypeError, match="got str, int"):
        t("a", 3)
    with pytest.raises(TypeError, match="got nothing"):
        t()


def test_works_in_transforms_v2_pipelines_in_either_position():
    """Before or after v2.ToImage (the order v2's docs recommend), alone or with a label, in a
    tuple or dict sample: the image gets the Pillow path's pixels, the rest passes through."""
    from torchvision import tv_tensors

    img, to_float = image(4), v2.ToDtype(torch.float32, scale=True)
    want = {seed: to_float(_chw(DeepAAPolicy.from_yaml("cifar_1", seed=seed)(img)))
            for seed in (0, 1)}

    def pipeline(seed, after):  # a fresh seeded transform: its stream starts anew
        t = DeepAAPolicy.from_yaml("cifar_1", seed=seed)
        return v2.Compose([v2.ToImage(), t, to_float] if after else [t, v2.ToImage(), to_float])

    for seed in (0, 1):
        for after in (True, False):
            out = pipeline(seed, after)(img)
            assert type(out) is tv_tensors.Image and torch.equal(out, want[seed])
            out, label = pipeline(seed, after)(img, 7)
            assert label == 7 and torch.equal(out, want[seed])
    sample = v2.Compose([v2.ToImage(), DeepAAPolicy.from_yaml("cifar_1", seed=1)])(
        {"image": img, "label": torch.tensor(3)})
    assert torch.equal(sample["label"], torch.tensor(3))
    assert torch.equal(to_float(sample["image"]), want[1])
    assert not torch.equal(want[0], want[1])


def test_importable_and_usable_on_pil_images_without_torch(tmp_path):
    import os
    import subprocess

    code = ("import sys; sys.modules['torch'] = None\n"
            "import numpy as np\nfrom PIL import Image\nfrom augmentation import DeepAAPolicy\n"
            "img = Image.fromarray(np.full((32, 32, 3), 90, np.uint8))\n"
            "out = DeepAAPolicy.from_yaml('cifar_1', seed=0)(img)\n"
            "assert out.mode == 'RGB' and out.size == (32, 32)\n"
            "print(sorted(m for m in ('torch', 'torchvision') if sys.modules.get(m)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

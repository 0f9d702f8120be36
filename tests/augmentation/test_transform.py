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

"""The step sampler (Batch Augmentation, splitting over processes), subsets and transforms."""
import collections

import numpy as np
import pytest
import torch

from DeepAA_evaluate import data as D
from DeepAA_evaluate.config import validate
from deepaa_data import ArrayDataset


def _steps(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_batch_augmentation_repeats_each_image_with_independent_seeds():
    s = D.StepSampler(n=40, unique=8, copies=4, seed=0)
    steps = _steps(s, 1)
    assert len(steps) == 5
    seen = []
    for step in steps:
        idx = [i for i, _ in step]
        assert len(step) == 32
        assert collections.Counter(idx) == {i: 4 for i in set(idx)} and len(set(idx)) == 8
        assert len({seed for _, seed in step}) == 32  # every copy has its own randomness
        seen += sorted(set(idx))
    assert sorted(seen) == list(range(40))  # each image once per epoch, in 8-image steps


def test_batch_augmentation_copies_are_augmented_differently():
    rng = np.random.default_rng(0)
    ds = ArrayDataset(rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), np.arange(8) % 2,
                      ["a", "b"])
    from augmentation import DeepAAPolicy

    cfg = validate({"model": {"type": "wresnet10_1"}, "dataset": "npz:x", "aug": "DeepAA",
                    "deepaa": {"EXP": "cifar_1"}, "batch": 4, "epoch": 1, "lr": 0.1,
                    "optimizer": {"decay": 0.0}})
    policy = DeepAAPolicy.from_yaml("cifar_1")
    train = D.TrainSet(ds, D.build_train_transform(cfg, "cifar", policy))
    step = D.StepSampler(8, unique=4, copies=8, seed=1).step(1, 0)
    images = collections.defaultdict(list)
    for key in step:
        x, _ = train[key]
        images[key[0]].append(x.numpy().tobytes())
    assert len(images) == 4
    for copies in images.values():
        assert len(copies) == 8 and len(set(copies)) >= 6  # independent augmentations
    # The same (index, seed) always gives the same image: resumable, worker-independent.
    assert torch.equal(train[step[0]][0], train[step[0]][0])


@pytest.mark.parametrize("unique, copies, world", [(8, 1, 2), (4, 4, 2), (4, 2, 4)])
def test_process_shares_concatenate_to_the_single_process_step(unique, copies, world):
    whole = D.StepSampler(32, unique, copies, seed=5)
    shares = [D.StepSampler(32, unique, copies, seed=5, world_size=world, rank=r)
              for r in range(world)]
    for epoch in (1, 2):
        joined = zip(*[_steps(s, epoch) for s in shares])
        assert [sum(parts, []) for parts in joined] == _steps(whole, epoch)
    assert _steps(whole, 1) != _steps(whole, 2)


def test_balanced_subset_is_seeded_and_class_balanced():
    labels = np.repeat(np.arange(5), [30, 30, 30, 30, 3])
    a = D.balanced_subset(labels, 40, seed=1)
    assert len(a) == 40 and len(set(a)) == 40
    counts = np.bincount(labels[a], minlength=5)
    assert counts[4] == 3 and sorted(counts[:4]) == [9, 9, 9, 10]
    assert np.array_equal(a, D.balanced_subset(labels, 40, seed=1))
    assert not np.array_equal(a, D.balanced_subset(labels, 40, seed=2))


def test_imagenet_policy_output_is_centre_cropped_and_test_resized():
    from PIL import Image

    img = Image.fromarray(np.zeros((300, 400, 3), np.uint8))

    class Ident:
        def __call__(self, im, rng=None):
            return im

    step = D.PolicyStep(Ident(), crop=True)
    assert step(img, np.random.default_rng(0)).size == (224, 224)
    assert tuple(D.build_test_transform("imagenet")(img).shape) == (3, 224, 224)
    assert tuple(D.build_test_transform("cifar")(img).shape) == (3, 300, 400)


def _cfg(**over):
    raw = {"model": {"type": "wresnet10_1"}, "dataset": "npz:x", "aug": "default", "batch": 4,
           "epoch": 1, "lr": 0.1, "optimizer": {"decay": 0.0}}
    return validate({**raw, **over})


def test_baseline_cutout_is_the_released_16px_square_of_mean_colour():
    from PIL import Image

    cut = D.Cutout(16, D.CIFAR_MEAN)
    black = Image.fromarray(np.zeros((32, 32, 3), np.uint8))
    sizes = set()
    for seed in range(200):
        out = np.asarray(cut(black, np.random.default_rng(seed)))
        rng = np.random.default_rng(seed)  # the same draws, in the same order
        y, x = int(rng.integers(32)), int(rng.integers(32))
        want = np.zeros((32, 32), bool)
        want[max(0, y - 8):y + 8, max(0, x - 8):x + 8] = True
        hit = out.any(axis=2)
        assert np.array_equal(hit, want), seed  # a half-open [c - 8, c + 8) box, clipped
        assert (out[hit] == (125, 123, 114)).all()  # the mean, i.e. 0 after Normalize
        sizes.add(int(hit.sum()))
    assert max(sizes) == 256 and min(sizes) < 256  # 16 x 16 inside, smaller at the borders


@pytest.mark.parametrize("aug, op", [("trivialaugment", "TrivialAugmentWide"),
                                     ("randaugment", "RandAugment"), ("default", None)])
def test_baselines_apply_the_op_then_crop_flip_then_cutout(aug, op):
    steps = D.build_train_transform(_cfg(aug=aug), "cifar", image_size=(32, 32)).steps
    names = [type(t).__name__ for t in steps[0].transform.transforms]
    assert names == ([op] if op else []) + ["RandomCrop", "RandomHorizontalFlip"]
    assert steps[0].transform.transforms[-2].padding == 4
    assert steps[0].transform.transforms[-2].fill == 0  # the released baseline pads black
    assert isinstance(steps[-1], D.Cutout) and steps[-1].side == 16 and len(steps) == 2
    steps = D.build_train_transform(_cfg(aug=aug, cutout=8), "cifar", image_size=32).steps
    assert [s.side for s in steps if isinstance(s, D.Cutout)] == [8]


def test_deepaa_transform_is_the_policy_alone():
    cfg = _cfg(aug="DeepAA", deepaa={"EXP": "cifar_1"})
    steps = D.build_train_transform(cfg, "cifar", policy=object()).steps
    assert len(steps) == 1 and isinstance(steps[0], D.PolicyStep) and not steps[0].crop


def test_device_augment_does_not_depend_on_the_number_of_processes():
    from augmentation import load_policy

    policy = load_policy("cifar_1")
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (8, 3, 16, 16),
                                                           dtype=np.uint8))
    whole = D.DeviceAugment(policy, seed=4, micro=4)(x, 2, 5)
    halves = [D.DeviceAugment(policy, seed=4, micro=4, first_batch=r)(x[4 * r:4 * r + 4], 2, 5)
              for r in (0, 1)]
    assert whole.dtype == torch.uint8 and whole.shape == x.shape
    assert torch.equal(whole, torch.cat(halves))
    assert not torch.equal(whole, D.DeviceAugment(policy, seed=4, micro=4)(x, 2, 6))


# ----------------------------------------------------------------- aug_backend: batch
def _pillow_replay(policy, images, gen):
    """The Pillow path's images for the batched path's draws: the generator is read as
    apply_policy_batch reads it (the candidates of every layer, the uniforms of every layer,
    then each layer's RandResizeCrop boxes) and every op runs in Pillow (ops.apply_op, mirror
    on) with those numbers; images of several sizes one size at a time, in order of size."""
    from PIL import Image

    from augmentation import batched, ops
    from augmentation.space import OPS

    from ..augmentation.test_batched import _BoxScript, _Scripted

    out = [None] * len(images)
    groups = {}
    for k, img in enumerate(images):
        groups.setdefault(img.shape, []).append(k)
    for shape in sorted(groups):
        members = groups[shape]
        n = len(members)
        choice = batched.sample_candidates(policy, n, gen).numpy()
        u = torch.rand((choice.shape[1], n, 3), generator=gen, dtype=torch.float64).numpy()
        pils = [Image.fromarray(images[k]) for k in members]
        for layer in range(choice.shape[1]):
            names = [policy.candidates[c][0] for c in choice[:, layer]]
            resized = [i for i in range(n) if names[i] == "RandResizeCrop"]
            boxes = (torch.rand((4, len(resized), 10), generator=gen, dtype=torch.float64)
                     if resized else None)
            for i in range(n):
                name, level = policy.candidates[choice[i, layer]]
                spec = OPS[name]
                if name == "RandResizeCrop":
                    rng = _BoxScript(boxes, resized.index(i))
                else:
                    rng = _Scripted(([u[layer, i, 0]] if spec.signed else [])
                                  + (list(u[layer, i, 1:]) if spec.random else []))
                pils[i] = ops.apply_op(pils[i], name, level, policy.l_mags, mirror=True, rng=rng)
        for k, img in zip(members, pils):
            out[k] = np.asarray(ops.center_crop(img) if policy.space == "imagenet" else img)
    return out


def _batch_set(images, policy, micro, crop=False):
    ds = ArrayDataset(images, np.arange(len(images)) % 2, ["a", "b"])
    return D.BatchTrainSet(ds, policy, micro, crop)


def test_batch_backend_gives_pillows_pixels_for_the_same_draws():
    """aug_backend batch: each virtual-worker batch draws from a generator seeded by its first
    image's seed, and every image is what the Pillow ops give for those draws, bit for bit:
    a policy uniform over all 139 CIFAR candidates (every op, levels, mirror, flip, cutout,
    crop) for three layers, at 32 x 32 and at 29 x 37."""
    from augmentation import Policy, space

    cands = space.candidates("cifar", 13)
    policy = Policy(probs=np.full((3, len(cands)), 1 / len(cands)), candidates=cands, l_mags=13,
                    space="cifar", meta={})
    rng = np.random.default_rng(3)
    for h, w in ((32, 32), (29, 37)):
        images = rng.integers(0, 256, (24, h, w, 3), dtype=np.uint8)
        images[:, h // 3:, :w // 2] //= 3  # some structure: histograms and edges vary
        keys = D.StepSampler(24, 24, 1, seed=7).step(1, 0)
        x, y = _batch_set(images, policy, micro=8).__getitems__(keys)
        assert x.dtype == torch.uint8 and x.shape == (24, 3, h, w) and y.tolist() == [
            int(i) % 2 for i, _ in keys]
        order = [int(i) for i, _ in keys]
        for lo in range(0, 24, 8):
            gen = D._generator([keys[lo][1], 3])
            want = _pillow_replay(policy, [images[i] for i in order[lo:lo + 8]], gen)
            for k in range(8):
                assert np.array_equal(x[lo + k].permute(1, 2, 0).numpy(), want[k]), (h, lo, k)


def test_batch_backend_imagenet_resize_crops_and_mixed_sizes_give_pillows_pixels():
    """ImageNet-space policy with RandResizeCrop, RandCutout60 and geometry from 224 x 224
    stored images, and from decoded images of two sizes (an ImageFolder): the same pixels as
    Pillow for the same draws, every image centre-cropped to 224."""
    from augmentation import Policy, space
    from PIL import Image

    cands = space.candidates("imagenet", 13)
    probs = np.zeros((3, len(cands)))
    for (name, level), p in ((("RandResizeCrop", 6), 0.4), (("RandCutout60", 6), 0.2),
                             (("Rotate", 2), 0.2), (("RandFlip", 6), 0.1), (("Equalize", 6), 0.1)):
        probs[:, cands.index((name, level))] = p
    policy = Policy(probs=probs, candidates=cands, l_mags=13, space="imagenet", meta={})
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (6, 224, 224, 3), dtype=np.uint8)
    keys = D.StepSampler(6, 6, 1, seed=2).step(1, 0)
    x, _ = _batch_set(images, policy, micro=6, crop=True).__getitems__(keys)
    want = _pillow_replay(policy, [images[int(i)] for i, _ in keys],
                          D._generator([keys[0][1], 3]))
    for k in range(6):
        assert np.array_equal(x[k].permute(1, 2, 0).numpy(), want[k]), k

    class Folder:  # decoded images of two sizes, as deepaa_data.FileDataset gives them
        arrays = [rng.integers(0, 256, (240 if k % 2 else 230, 250, 3), dtype=np.uint8)
                  for k in range(5)]
        labels = np.zeros(5, dtype=np.int64)

        def image(self, i):
            return Image.fromarray(self.arrays[i])

        def __len__(self):
            return 5

    keys = [(k, 100 + k) for k in range(5)]
    x, _ = D.BatchTrainSet(Folder(), policy, 5, crop=True).__getitems__(keys)
    assert x.shape == (5, 3, 224, 224)
    want = _pillow_replay(policy, Folder.arrays, D._generator([100, 3]))
    for k in range(5):
        assert np.array_equal(x[k].permute(1, 2, 0).numpy(), want[k]), k


def test_batch_backend_is_independent_of_workers_and_processes():
    """The same images whatever the number of loader workers, and a step split over two
    processes (each a whole virtual-worker batch) gives the single process's images; another
    step gives others."""
    from augmentation import load_policy

    images = np.random.default_rng(5).integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
    data = _batch_set(images, load_policy("cifar_1"), micro=4)
    whole = D.StepSampler(16, 8, 1, seed=3)
    halves = [D.StepSampler(16, 8, 1, seed=3, world_size=2, rank=r) for r in (0, 1)]
    for step in range(2):
        full, _ = data.__getitems__(whole.step(1, step))
        parts = [data.__getitems__(s.step(1, step))[0] for s in halves]
        assert torch.equal(full, torch.cat(parts))
    assert not torch.equal(data.__getitems__(whole.step(1, 0))[0],
                           data.__getitems__(whole.step(1, 1))[0])
    batches = []
    for workers in (0, 2):
        loader = D.make_loader(data, batch_sampler=whole, num_workers=workers)
        batches.append([x for x, _ in loader])
    assert len(batches[0]) == 2 and all(torch.equal(a, b) for a, b in zip(*batches))

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

"""aug_backend batch (DeepAA_evaluate/batch_policy.py): the policy per batch in the loader gives
Pillow's pixels for the same draws, the same images for any number of workers and processes."""
import numpy as np
import torch

from DeepAA_evaluate import data as D
from deepaa_data import ArrayDataset


def _pillow_replay(policy, images, gen):
    """The Pillow path's images for the batched path's draws: the generator is read as
    apply_policy_batch reads it (the candidates of every layer, the uniforms of every layer,
    then each layer's RandResizeCrop boxes) and every op runs in Pillow (ops.apply_op, mirror
    on) with those numbers; images of several sizes one size at a time, in order of size."""
    from PIL import Image

    from augmentation import batched, ops
    from augmentation.space import OPS

    from ..augmentation.batched.test_apply import _BoxScript, _Scripted

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
            gen = D.seeded_generator([keys[lo][1], 3])
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
                          D.seeded_generator([keys[0][1], 3]))
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
    want = _pillow_replay(policy, Folder.arrays, D.seeded_generator([100, 3]))
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

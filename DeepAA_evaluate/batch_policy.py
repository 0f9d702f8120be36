"""The DeepAA policy per batch inside the trainer's loader workers (``aug_backend: batch``).

The loader hands a whole step share to :class:`BatchTrainSet`, which stacks its images as
uint8 and applies the policy with ``augmentation.batched.apply_policy_batch`` on the CPU
tensor (its compiled kernels): one worker then does what a dozen or more Pillow workers do
(benchmarks/README.md). SPEC §3 evaluation semantics; the deterministic ops give Pillow's
pixels and the random ops Pillow's distributions, the same pixels for the same draws
(tests/DeepAA_evaluate/test_data.py replays the draws through Pillow).
"""
from __future__ import annotations

import numpy as np
import torch

from augmentation.ops import IMAGENET_SIZE

_CHW_COPY_LIMIT = 2 ** 30  # bytes of stored images that BatchTrainSet copies channels-first


def seeded_generator(key) -> torch.Generator:
    """A torch generator seeded from a SeedSequence key (the per-batch draws of the batched
    policy, wherever it runs)."""
    gen = torch.Generator()
    gen.manual_seed(int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] >> 1))
    return gen


class BatchTrainSet(torch.utils.data.Dataset):
    """The training Dataset of ``aug_backend: batch`` (see the module's docstring).

    The DataLoader hands the whole step share to ``__getitems__`` (``(index, seed)`` pairs from
    ``data.StepSampler``). Its images are stacked as uint8 (images of different sizes, as in
    an ImageFolder, are grouped by size) and each virtual-worker batch of ``micro`` images
    draws from a generator seeded by the per-image seed of its first image, itself a function
    of (run seed, epoch, step, position): the images then depend neither on the number of
    loader workers nor on that of processes (when a process's share is whole batches), and a
    resumed run sees the images of the uninterrupted one. With ``crop`` (ImageNet) the images
    end centre-cropped to 224, as with ``data.PolicyStep``.
    """

    def __init__(self, base, policy, micro: int, crop: bool):
        from augmentation.batched import apply_policy_batch
        from augmentation.batched import center_crop as crop_batch

        self.apply, self.crop_batch = apply_policy_batch, crop_batch
        self.base, self.policy, self.micro, self.crop = base, policy, micro, crop
        # Stored images (N x H x W x 3) are kept channels-first too, up to a size: the policy
        # then reads a batch's images where they are, by index (a transpose per batch costs
        # as much as the kernels at 32 x 32; a gathered copy of a 224 x 224 batch, a tenth of
        # the policy). Made before the workers fork, so they share it.
        images = getattr(base, "images", None)
        self.chw = None
        if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[3] == 3 \
                and images.nbytes <= _CHW_COPY_LIMIT:
            self.chw = np.ascontiguousarray(images.transpose(0, 3, 1, 2))

    def __len__(self):
        return len(self.base)

    def __getitem__(self, key):
        x, y = self.__getitems__([key])
        return x[0], y[0]

    def __getitems__(self, keys):
        index = np.array([int(i) for i, _ in keys], dtype=np.int64)
        seeds = [int(s) for _, s in keys]
        labels = torch.as_tensor(np.asarray(self.base.labels)[index], dtype=torch.long)
        chunks = [self._augment(index[lo:lo + self.micro], seeded_generator([seeds[lo], 3]))
                  for lo in range(0, len(keys), self.micro)]
        return (chunks[0] if len(chunks) == 1 else torch.cat(chunks)), labels

    def _images(self, index):
        """The images as uint8: one N x C x H x W slice of a stored array, or a list of
        decoded C x H x W tensors."""
        images = getattr(self.base, "images", None)
        if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[3] == 3:
            return torch.from_numpy(np.ascontiguousarray(images[index].transpose(0, 3, 1, 2)))
        from DeepAA_evaluate.data import to_uint8_tensor  # data imports this module

        return [to_uint8_tensor(self.base.image(int(i))) for i in index]

    def _augment(self, index, gen) -> torch.Tensor:
        """The policy on one virtual-worker batch: images kept channels-first are read in
        place (the C kernels take the indices, no copy is gathered); a stacked batch in one
        call; a list of images of several sizes one size at a time, in order of size, then
        back in order."""
        if self.chw is not None:
            return self._policy(torch.from_numpy(self.chw), gen, index)
        images = self._images(index)
        if isinstance(images, torch.Tensor):
            return self._policy(images, gen)
        groups = {}
        for k, img in enumerate(images):
            groups.setdefault(tuple(img.shape), []).append(k)
        order, parts = [], []
        for shape in sorted(groups):
            order += groups[shape]
            parts.append(self._policy(torch.stack([images[k] for k in groups[shape]]), gen))
        out = torch.cat(parts)
        return out.index_select(0, torch.from_numpy(np.argsort(order))) if len(parts) > 1 else out

    def _policy(self, batch, gen, index=None):
        done = self.apply(self.policy, batch, mirror=True, generator=gen, index=index)
        if self.crop and tuple(done.shape[2:]) != (IMAGENET_SIZE, IMAGENET_SIZE):
            done = self.crop_batch(done, IMAGENET_SIZE)
        return done.contiguous()


def collated(batch):
    """The collate step of a dataset whose ``__getitems__`` returns the whole batch."""
    return batch

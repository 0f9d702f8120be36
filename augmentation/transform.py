"""DeepAAPolicy: the one-line transform that applies a policy to an image (SPEC §3).

``DeepAAPolicy.from_yaml("cifar_1")`` takes what torchvision's AutoAugment takes: a PIL image, a
uint8 tensor 3 x H x W or N x 3 x H x W on any device, or a ``tv_tensors.Image`` (the same type
comes back), alone or inside a ``transforms.v2`` sample, before or after ``v2.ToImage()``.
Every input type goes through the same Pillow ops with the same draws, so the pixels do not
depend on the type. ``.batch(x)`` applies the same policy per sample to a uint8 tensor batch on
its device (augmentation.batched, its own torch draws), and ``.apply_candidate`` is the
search's dense augmentation of one candidate. Importing this module does not import torch.
"""
from __future__ import annotations

import os
import sys

import numpy as np
from PIL import Image

from .ops import IMAGENET_SIZE, apply_op
from .policy import Policy, load_policy, pick_candidates


def _is_image(x) -> bool:
    """A PIL image or a torch tensor (torch is only looked at if it is already loaded: a
    tensor cannot exist without it)."""
    torch = sys.modules.get("torch")
    return isinstance(x, Image.Image) or (torch is not None and isinstance(x, torch.Tensor))


def _what_it_takes(got) -> str:
    names = ", ".join(type(a).__name__ for a in got) or "nothing"
    return ("DeepAAPolicy takes a PIL image, a uint8 tensor or a tv_tensors.Image (alone or in "
            f"a sample), got {names}")


def _worker_seed():
    """The DataLoader worker's per-epoch seed if we run in one (torch only if already loaded)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        info = torch.utils.data.get_worker_info()
    except Exception:  # noqa: BLE001 - torch half-imported or without the data package
        return None
    return None if info is None else int(info.seed)


class DeepAAPolicy:
    """Callable transform applying a policy (SPEC §3) to a PIL image, a uint8 tensor or a
    ``tv_tensors.Image``: for each layer, sample one candidate from the layer's distribution
    and apply it with :func:`augmentation.ops.apply_op`.

    ``mirror=True`` (default) is the evaluation semantics: signed ops flip sign with p = 0.5.
    ``seed=None`` draws fresh OS entropy on every call, so DataLoader workers never repeat one
    another. With a seed the stream is reproducible; a process other than the one that made the
    transform (a DataLoader worker) derives its own stream from (seed, the worker's seed), so
    workers and epochs still differ while a seeded run stays reproducible.

    On ImageNet the transform does not centre-crop; the trainer does (SPEC §3).
    """

    def __init__(self, policy: Policy, mirror: bool = True, seed: int | None = None):
        if not isinstance(policy, Policy):
            raise TypeError(f"DeepAAPolicy expects a Policy, got {type(policy).__name__}")
        self.policy = policy
        self.mirror = bool(mirror)
        self.seed = seed
        self._cdf = np.cumsum(policy.probs, axis=1)
        self._rng = np.random.default_rng(seed) if seed is not None else None
        self._pid = os.getpid()
        self._stream_key = None

    @classmethod
    def from_yaml(cls, path_or_name, mirror: bool = True, seed: int | None = None) -> "DeepAAPolicy":
        return cls(load_policy(path_or_name), mirror=mirror, seed=seed)

    def _generator(self) -> np.random.Generator:
        if self.seed is None:
            return np.random.default_rng()
        if os.getpid() != self._pid:
            key = (os.getpid(), _worker_seed())
            if key != self._stream_key:
                wseed = key[1] if key[1] is not None else key[0]
                self._rng = np.random.default_rng([int(self.seed), wseed % (2**63)])
                self._stream_key = key
        return self._rng

    def sample(self, n: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """Candidate indices (n, n_layers): row j is the candidate of each layer for image j."""
        rng = self._generator() if rng is None else rng
        return pick_candidates(self._cdf, rng.random((n, self.policy.n_layers)))

    def __call__(self, *inputs, rng: np.random.Generator | None = None):
        """Apply the policy to one image: PIL (returned in RGB), a uint8 tensor 3 x H x W or
        N x 3 x H x W on any device, or a ``tv_tensors.Image``; the same type comes back (a
        tensor on its device). Each image of a batch draws its own candidates, one after
        another from the same stream, so image i of a batch is what the i-th call on single
        images would give. Several inputs, or a tuple / dict sample, are handled as
        ``transforms.v2`` handles them: the one image is transformed, the rest (labels) passed
        through."""
        rng = self._generator() if rng is None else rng
        if len(inputs) == 1 and _is_image(inputs[0]):
            return self._apply(inputs[0], rng)
        return self._apply_in_sample(inputs, rng)

    def _apply(self, img, rng):
        if isinstance(img, Image.Image):
            return self._apply_pil(img, rng)
        return self._apply_tensor(img, rng)

    def _apply_pil(self, img: Image.Image, rng) -> Image.Image:
        if img.mode != "RGB":
            img = img.convert("RGB")
        for i in self.sample(1, rng)[0]:
            name, level = self.policy.candidates[i]
            img = apply_op(img, name, level, self.policy.l_mags, mirror=self.mirror, rng=rng)
        return img

    def _apply_tensor(self, x, rng):
        """The Pillow ops on each image of a uint8 tensor (moved to the host and back)."""
        torch = sys.modules["torch"]
        tv_tensors = sys.modules.get("torchvision.tv_tensors")
        wrap = tv_tensors is not None and isinstance(x, tv_tensors.TVTensor)
        if wrap and not isinstance(x, tv_tensors.Image):
            raise TypeError(f"DeepAAPolicy transforms images, not {type(x).__name__}")
        plain = x.as_subclass(torch.Tensor)
        if plain.dtype != torch.uint8 or plain.dim() not in (3, 4) or plain.shape[-3] != 3:
            raise ValueError(f"DeepAAPolicy takes a uint8 tensor 3 x H x W or N x 3 x H x W, "
                             f"got {plain.dtype} {tuple(plain.shape)}")
        out = self.apply_numpy(plain.movedim(-3, -1).cpu().numpy(), rng=rng)
        out = torch.from_numpy(out).movedim(-1, -3).contiguous().to(plain.device)
        return tv_tensors.wrap(out, like=x) if wrap else out

    def apply_numpy(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """The policy on a uint8 array H x W x 3 or N x H x W x 3 (channels last, as Keras and
        tf.data hold images), each image through the Pillow ops in turn, drawing from the same
        stream as single calls; a new array comes back (the input is not changed)."""
        x = np.asarray(x)
        if x.dtype != np.uint8 or x.ndim not in (3, 4) or x.shape[-1] != 3:
            raise ValueError(f"DeepAAPolicy takes a uint8 array H x W x 3 or N x H x W x 3, "
                             f"got {x.dtype} {x.shape}")
        rng = self._generator() if rng is None else rng
        batch = x if x.ndim == 4 else x[None]
        self.check_batch_size(*batch.shape[:3])
        if not len(batch):
            return x.copy()
        out = np.stack([np.asarray(self._apply_pil(Image.fromarray(np.ascontiguousarray(a)),
                                                   rng)) for a in batch])
        return out if x.ndim == 4 else out[0]

    @property
    def resizes(self) -> bool:
        """Whether the policy can pick RandResizeCrop, which makes an image 224 x 224 (SPEC §1)."""
        picks = [i for i, (name, _) in enumerate(self.policy.candidates)
                 if name == "RandResizeCrop"]
        return bool(picks) and bool(self.policy.probs[:, picks].any())

    def check_batch_size(self, n, h: int, w: int) -> None:
        """Refuse a batch of n images of h x w (n None: not known yet) that this policy cannot
        take: images that RandResizeCrop brings to 224 x 224 would no longer stack with the
        rest of a batch of another size. Called before anything is drawn."""
        if (n is None or n >= 2) and (h, w) != (IMAGENET_SIZE, IMAGENET_SIZE) and self.resizes:
            raise ValueError(f"a batch of {h} x {w} images cannot take this policy's "
                             f"RandResizeCrop (it makes them {IMAGENET_SIZE} x {IMAGENET_SIZE}); "
                             f"give {IMAGENET_SIZE} x {IMAGENET_SIZE} images or one image at a "
                             "time")

    def _apply_in_sample(self, inputs, rng):
        """A ``transforms.v2`` sample (several inputs, or a tuple / list / dict): transform its
        one image, as v2's AutoAugment picks it (a PIL image or ``tv_tensors.Image``; else the
        first plain tensor), and return the sample's structure with the rest unchanged."""
        torch = sys.modules.get("torch")
        if torch is None or not inputs:
            raise TypeError(_what_it_takes(inputs))
        from torch.utils._pytree import tree_flatten, tree_unflatten

        flat, spec = tree_flatten(inputs if len(inputs) > 1 else inputs[0])
        tv_tensors = sys.modules.get("torchvision.tv_tensors")
        tv_image = tv_tensors.Image if tv_tensors is not None else ()
        images = [i for i, a in enumerate(flat) if isinstance(a, (Image.Image, tv_image))]
        for a in flat:
            if tv_tensors is not None and isinstance(a, tv_tensors.TVTensor) \
                    and not isinstance(a, tv_tensors.Image):
                raise TypeError(f"DeepAAPolicy moves pixels only; a sample with "
                                f"{type(a).__name__} is not supported")
        if not images:
            images = [i for i, a in enumerate(flat) if type(a) is torch.Tensor][:1]
        if not images:
            raise TypeError(_what_it_takes(flat))
        if len(images) > 1:
            raise TypeError(f"DeepAAPolicy needs one image in a sample, found {len(images)}")
        flat[images[0]] = self._apply(flat[images[0]], rng)
        return tree_unflatten(flat, spec)

    def batch(self, x, rng=None):
        """Apply the policy to a uint8 N x C x H x W tensor on its device (one candidate per
        image per layer); ``rng`` is a ``torch.Generator``. Imports torch lazily."""
        from .batched import apply_policy_batch

        return apply_policy_batch(self.policy, x, mirror=self.mirror, generator=rng)

    def apply_candidate(self, x, index: int, rng=None, mirror: bool = False):
        """Candidate ``index`` of the policy's candidate list applied to every image of a uint8
        N x C x H x W tensor (what the search's dense augmentation does: search semantics, the
        level's sign as given, unless ``mirror``); ``rng`` is a ``torch.Generator``."""
        from .batched import apply_candidate

        if not 0 <= int(index) < self.policy.n_candidates:
            raise IndexError(f"candidate index {index} outside 0..{self.policy.n_candidates - 1}")
        name, level = self.policy.candidates[int(index)]
        return apply_candidate(x, name, level, self.policy.l_mags, mirror=mirror, generator=rng)

    def __repr__(self) -> str:
        src = self.policy.meta.get("source") or self.policy.meta.get("name")
        src = f", source={src!r}" if src else ""
        return (
            f"{type(self).__name__}(space={self.policy.space!r}, l_mags={self.policy.l_mags}, "
            f"layers={self.policy.n_layers}, candidates={self.policy.n_candidates}, "
            f"mirror={self.mirror}, seed={self.seed}{src})"
        )

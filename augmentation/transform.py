"""DeepAAPolicy: the one-line transform that applies a policy to an image (SPEC §3).

``DeepAAPolicy.from_yaml("cifar_1")`` is a callable PIL transform that composes with
torchvision's; ``.batch(x)`` applies the same policy per sample to a uint8 tensor batch on its
device (augmentation.batched), and ``.apply_candidate`` is the search's dense augmentation of
one candidate.
"""
from __future__ import annotations

import os
import sys

import numpy as np
from PIL import Image

from .ops import apply_op
from .policy import Policy, load_policy, pick_candidates


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
    """Callable PIL transform applying a policy (SPEC §3): for each layer, sample one
    candidate from the layer's distribution and apply it with :func:`augmentation.ops.apply_op`.

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

    def __call__(self, img, rng: np.random.Generator | None = None):
        if not isinstance(img, Image.Image):
            raise TypeError(f"DeepAAPolicy takes a PIL image, got {type(img).__name__}; "
                            "use .batch() for tensors")
        rng = self._generator() if rng is None else rng
        if img.mode != "RGB":
            img = img.convert("RGB")
        for i in self.sample(1, rng)[0]:
            name, level = self.policy.candidates[i]
            img = apply_op(img, name, level, self.policy.l_mags, mirror=self.mirror, rng=rng)
        return img

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

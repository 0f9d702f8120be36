"""The batched path's draws (augmentation/batched/draws.py): candidates by the Pillow
transform's own sampling rule, the random ops' parameters as the Pillow ops make them."""
import numpy as np
import torch

from augmentation import DeepAAPolicy, load_policy
from augmentation.batched.draws import random_params, sample_candidates


class _Uniforms:
    """A numpy-Generator stand-in whose ``random(shape)`` returns given uniforms."""

    def __init__(self, u):
        self.u = u

    def random(self, shape):
        assert shape == self.u.shape
        return self.u


def test_candidates_follow_the_pillow_transforms_rule_for_the_same_uniforms():
    policy = load_policy("cifar_1")
    got = sample_candidates(policy, 500, torch.Generator().manual_seed(4)).numpy()
    u = torch.rand((500, policy.n_layers), generator=torch.Generator().manual_seed(4),
                   dtype=torch.float64).numpy()
    want = DeepAAPolicy(policy).sample(500, _Uniforms(u))
    assert got.shape == (500, 6) and np.array_equal(got, want)
    assert len({tuple(row) for row in got}) > 50  # the images really draw apart


def test_random_params_follow_the_uniforms():
    u = np.array([[0.3, 0.2, 0.9], [0.7, 0.6, 0.0], [0.1, 0.999, 0.5]])
    assert random_params("RandFlip", u, (3, 3, 32, 32), None).tolist() == [True, False, False]
    top, left = random_params("RandCrop", u, (3, 3, 32, 32), None)
    assert top.tolist() == [1, 5, 8] and left.tolist() == [8, 0, 4]  # floor(u * 9)
    x0, y0, x1, y1 = random_params("RandCutout", u, (3, 3, 32, 32), None)
    assert x0.tolist() == [0, 11, 23] and x1.tolist() == [14, 27, 32]  # centre u * 32, +-8
    assert y0.tolist() == [20, 0, 8] and y1.tolist() == [32, 8, 24]

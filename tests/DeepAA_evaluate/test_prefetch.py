"""AugmentAhead: the on-device policy one batch ahead gives the batches of the plain loop."""
import numpy as np
import pytest
import torch

from DeepAA_evaluate import data as D
from DeepAA_evaluate.prefetch import AugmentAhead


def _loader(n=24, batch=8):
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (n, 3, 16, 16),
                                                           dtype=np.uint8))
    return [(x[i:i + batch], torch.arange(i, i + batch)) for i in range(0, n, batch)]


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_ahead_gives_the_batches_of_the_plain_loop_in_order(device):
    """On a GPU the helper thread's side stream prepares each batch; the loop's stream must
    see it finished (the same pixels as the plain loop, also while the GPU is busy)."""
    from augmentation import load_policy

    augment = D.DeviceAugment(load_policy("cifar_1"), seed=5, micro=4)
    plain = [(x.cpu(), y.cpu()) for x, y in
             AugmentAhead(_loader(), device, augment, epoch=3, ahead=False)]
    ahead = []
    for x, y in AugmentAhead(_loader(), device, augment, epoch=3, ahead=True):
        if device == "cuda":  # keep the loop's stream busy while the next batch is prepared
            busy = torch.randn(2048, 2048, device=device)
            for _ in range(20):
                busy = busy @ busy / 2048
        ahead.append((x.cpu(), y.cpu()))
    assert len(plain) == len(ahead) == 3
    for (xa, ya), (xb, yb) in zip(plain, ahead):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    raw = _loader()
    assert not torch.equal(plain[0][0], raw[0][0])  # the policy ran
    assert torch.equal(plain[1][0], augment(raw[1][0], 3, 1))  # keyed by the batch's step
    assert all(torch.equal(a[0], b[0]) for a, b in zip(AugmentAhead(raw, "cpu"), raw))


def test_ahead_on_a_cpu_only_when_asked_and_errors_reach_the_loop(monkeypatch):
    assert not AugmentAhead([], "cpu", lambda x, e, s: x).ahead
    monkeypatch.setenv("DEEPAA_AUG_AHEAD", "0")
    assert not AugmentAhead([], "cuda", lambda x, e, s: x).ahead

    def broken(x, epoch, step):
        if step == 1:
            raise RuntimeError("policy failed on batch 1")
        return x

    seen = []
    with pytest.raises(RuntimeError, match="batch 1"):
        for x, _ in AugmentAhead(_loader(), "cpu", broken, ahead=True):
            seen.append(x)
    assert len(seen) == 1

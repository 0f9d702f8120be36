"""The batched path on the images' device (augmentation/batched/device.py): host tensors
reach a GPU as queued copies, and a whole policy on GPU images gives the pixels it gives on
the CPU and never makes the host wait for the GPU (checked where a GPU is visible)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from augmentation.batched import apply_policy_batch
from augmentation.batched.device import to_device
from augmentation.policy import Policy, load_policy

from .test_apply import photo_like, to_tensor

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_to_device_keeps_values_and_leaves_cpu_tensors_alone():
    t = torch.arange(12).view(3, 4)[:, 1:]  # not contiguous
    assert to_device(t, "cpu") is t
    assert torch.equal(to_device(t.double(), torch.device("cpu")), t.double())


@needs_gpu
def test_to_device_copies_are_private_to_the_call():
    """The queued copy reads a staging copy of its own: changing the source right after the
    call (a pinned source too) does not change what lands on the GPU."""
    for source in (torch.arange(1000), torch.arange(1000).pin_memory()):
        torch.cuda._sleep(100_000_000)  # the copy waits behind this
        out = to_device(source, "cuda")
        source.fill_(-1)
        assert torch.equal(out.cpu(), torch.arange(1000))


def _policies():
    return [("cifar_1", load_policy("cifar_1"), 32),
            ("uniform cifar x4", Policy.uniform(4, "cifar", 13), 29),
            ("deepaa_imagenet_1", load_policy("deepaa_imagenet_1"), 96)]


@needs_gpu
@pytest.mark.parametrize("label, policy, size", _policies(), ids=lambda v: str(v)[:20])
def test_policy_on_the_gpu_gives_the_cpu_pixels(label, policy, size):
    """The same CPU generator, the same images: the GPU's torch executor and the CPU's (C
    kernels where built) agree bit for bit, RandResizeCrop's chunked resize included. The
    GPU is kept busy first, so the policy's queued copies run long after the host has moved
    on: a staging buffer reused too early would show as wrong pixels."""
    arr = photo_like(80, size, size, seed=size)
    cpu = apply_policy_batch(policy, to_tensor(arr), generator=torch.Generator().manual_seed(4))
    x = to_tensor(arr, "cuda")
    torch.cuda._sleep(200_000_000)  # a few tenths of a second of GPU work ahead of the policy
    gpu = apply_policy_batch(policy, x, generator=torch.Generator().manual_seed(4))
    assert gpu.device.type == "cuda"
    assert np.array_equal(gpu.cpu().numpy(), cpu.numpy()), label


@needs_gpu
@pytest.mark.parametrize("label, policy, size", _policies(), ids=lambda v: str(v)[:20])
def test_policy_on_the_gpu_never_waits_for_the_gpu(label, policy, size):
    """With CUDA's sync debug mode set to error, any host-device synchronisation (a blocking
    copy, a value read back) raises: a policy batch must queue all its work."""
    x = to_tensor(photo_like(64, size, size, seed=1), "cuda")
    for seed in range(3):  # fill the per-device caches first (tables, maps)
        apply_policy_batch(policy, x, generator=torch.Generator().manual_seed(seed))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for seed in range(3, 6):
            out = apply_policy_batch(policy, x, generator=torch.Generator().manual_seed(seed))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.device.type == "cuda"

"""Moving the batched path's small host tensors to the images' device without a wait.

The batched ops work out their parameters on the host (indices, per-image values, lookup
tables, resize taps) and send them to the images' device. A plain ``tensor.to("cuda")`` from
ordinary host memory synchronises the GPU stream: the host then waits for every queued kernel,
the previous training step's included, before each of a policy's few dozen small copies, and
the GPU idles while the host prepares the next ones. Staged through page-locked memory the
copy is queued like a kernel instead (PyTorch's caching host allocator keeps the staging
block until the copy has run), so the host prepares the augmentation while the GPU is still
busy with the model.
"""
from __future__ import annotations

import torch


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """``t`` on ``device``; a host tensor goes to a GPU as a queued, non-blocking copy."""
    device = torch.device(device)
    if t.device == device or device.type == "cpu" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)

"""Moving the batched path's small host tensors to the images' device without a wait.

The batched ops work out their parameters on the host (indices, per-image values, lookup
tables, resize taps) and send them to the images' device. A plain ``tensor.to("cuda")`` from
ordinary host memory synchronises the GPU stream: the host then waits for every queued kernel,
the previous training step's included, before each of a policy's few dozen small copies, and
the GPU idles while the host prepares the next ones. Staged through page-locked memory the
copy is queued like a kernel instead (PyTorch's caching host allocator keeps the staging
block until the copy has run), so the host prepares the augmentation while the GPU is still
busy with the model.

The copies are queued on the current stream. The per-device tables the batched modules cache
(blend tables, geometry maps) are filled that way too; everything here runs on one stream, so
a later kernel that reads them is ordered after their copy.
"""
from __future__ import annotations

import torch


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """``t`` on ``device``; a host tensor goes to a CUDA GPU as a queued, non-blocking copy
    of a private staging copy (so the caller may change ``t`` at once)."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    staged = torch.empty_like(t, pin_memory=True).copy_(t) if t.is_pinned() else t.pin_memory()
    return staged.to(device, non_blocking=True)

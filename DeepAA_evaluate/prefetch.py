"""Training batches on the device, with the on-device policy one batch ahead (SPEC §3).

With ``aug_backend: tensor`` the policy of a batch is host work (planning in numpy, a few
hundred small kernel launches) followed by GPU work. Done in the training loop, the host's
part of batch k + 1 waits until batch k's step has been issued, and at bf16, where a step is
short, the GPU then idles while the host prepares the next policy. :class:`AugmentAhead`
prepares batch k + 1 (its copy to the device and its policy) in a helper thread, on a CUDA
side stream, while the loop issues batch k's step; the loop's stream waits for that batch's
event before using it. The images are the same either way: the policy's draws depend only on
(run seed, epoch, step, batch) (``data.DeviceAugment``).

On a CPU there is nothing to overlap (no queue of asynchronous work), so batches are prepared
in the loop, one after the other, unless ``ahead=True`` is asked for (the tests do, to check
that both ways give the same batches). ``DEEPAA_AUG_AHEAD=0`` turns the helper thread off
on a GPU too (to measure what it gains).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import torch


class AugmentAhead:
    """Iterate (x, y) of ``loader`` on ``device``, with ``augment(x, epoch, step)`` applied to
    x when given; with ``ahead``, batch k + 1 is prepared in a helper thread (and, on CUDA, a
    side stream) while batch k is used. ``len`` is the loader's."""

    def __init__(self, loader, device, augment=None, epoch: int = 1, ahead: bool | None = None):
        self.loader, self.device, self.augment, self.epoch = loader, torch.device(device), \
            augment, epoch
        if ahead is None:
            ahead = (self.device.type == "cuda" and augment is not None
                     and os.environ.get("DEEPAA_AUG_AHEAD", "1") != "0")
        self.ahead = bool(ahead)

    def __len__(self):
        return len(self.loader)

    def _prepare(self, step: int, x, y, stream):
        """Batch ``step`` on the device and augmented; the event marks the end of its work on
        ``stream`` (None without CUDA)."""
        if stream is None:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            return (x if self.augment is None else self.augment(x, self.epoch, step)), y, None
        torch.cuda.set_device(self.device)  # the current device is per thread
        with torch.cuda.stream(stream):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.augment is not None:
                x = self.augment(x, self.epoch, step)
            done = torch.cuda.Event()
            done.record(stream)
        return x, y, done

    def _use(self, x, y, done):
        """Order the loop's stream after the batch's preparation, and tell the caching
        allocator that x and y are used on it (so their memory is not reused by the side
        stream too early)."""
        if done is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(done)
            x.record_stream(current)
            y.record_stream(current)
        return x, y

    def __iter__(self):
        if not self.ahead:
            for step, (x, y) in enumerate(self.loader):
                yield self._use(*self._prepare(step, x, y, None))
            return
        stream = None
        if self.device.type == "cuda":
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))  # after all work so far
        batches = enumerate(self.loader)

        def next_batch():
            item = next(batches, None)
            return None if item is None else self._prepare(item[0], *item[1], stream)

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="augment-ahead") as helper:
            pending = helper.submit(next_batch)
            while True:
                ready = pending.result()  # re-raises the helper's exception
                if ready is None:
                    return
                pending = helper.submit(next_batch)
                yield self._use(*ready)

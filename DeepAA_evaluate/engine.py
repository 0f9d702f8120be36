"""One training epoch and one evaluation pass (SPEC §3), on CPU, one GPU or under DDP.

A process receives its share of the global step (see ``data.StepSampler``) and splits it into
the released per-worker batches of ``batch`` images ("virtual workers"). Each virtual worker's
batch goes through the model on its own, so batch norm normalises over exactly the images one
released worker saw; its loss, weighted by its share of the global step, is back-propagated
and the gradients add up (DDP averages the processes' sums), giving the gradient of the mean
loss over the global step. Then the gradient is clipped (``optimizer.clip``, 0 = off), SGD
steps and the schedule advances by one iteration. Batch-norm running statistics are updated
once per virtual worker (the released DDP run kept rank 0's), a difference that only touches
evaluation-mode statistics.
"""
from __future__ import annotations

import contextlib
import math
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from DeepAA_evaluate.prefetch import AugmentAhead


class Runtime:
    """Device, process-group and precision settings of a run."""

    def __init__(self, cfg: dict, rank: int = 0, world_size: int = 1, local_rank: int = 0):
        self.rank, self.world_size = rank, world_size
        if torch.cuda.is_available():
            # modulo: a launcher may show each process only its own GPU
            self.device = torch.device("cuda", local_rank % torch.cuda.device_count())
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg["amp"])
        if cfg.get("deterministic"):
            self._make_deterministic()

    @staticmethod
    def _make_deterministic():
        """``deterministic: true``: a GPU run that repeats itself bit for bit, so a resumed run
        equals an uninterrupted one there too. A CPU run already does; on a GPU, cuDNN and
        cuBLAS otherwise pick kernels (atomics in convolution backward, split reductions) whose
        float sums change order from run to run. Costs some GPU speed. Ops without a
        deterministic version only warn: none is on the trainer's path except the 1x1
        adaptive average pool, whose backward spreads each gradient without sums."""
        # read when cuBLAS first makes a workspace in this process: the Runtime is built
        # before the run's first CUDA work (in a process that used cuBLAS before, set it there)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(t)
        return t


class Normalizer:
    """uint8 N x C x H x W -> float, /255 then (x - mean) / std, on the device."""

    def __init__(self, mean, std, device, channels_last=False):
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.channels_last = channels_last

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() / 255.0 - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def _topk_correct(logits, y):
    top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
    hit = top5.eq(y[:, None])
    return hit[:, 0].sum(), hit.any(dim=1).sum()


def _summary(sums: torch.Tensor) -> dict:
    loss, c1, c5, n = sums.tolist()
    n = max(n, 1.0)
    return {"loss": loss / n, "top1": c1 / n, "top5": c5 / n, "n": int(n)}


def train_epoch(rt: Runtime, model, loader, optimizer, scheduler, scaler, normalize, cfg,
                epoch: int, micro: int, device_aug=None) -> dict:
    """Train one epoch; returns the epoch's mean loss / top-1 / top-5 over all processes.

    ``micro`` is the virtual-worker batch size; ``device_aug(x_uint8, epoch, step) -> x_uint8``
    is the on-device policy (``aug_backend: tensor``, ``data.DeviceAugment``), applied one
    batch ahead on a GPU (``prefetch.AugmentAhead``).
    """
    model.train()
    clip = cfg["optimizer"]["clip"]
    params = list(model.parameters())
    sums = torch.zeros(4, dtype=torch.float64, device=rt.device)
    # on a GPU, the on-device policy of the next batch is prepared while this one trains
    batches = AugmentAhead(loader, rt.device, device_aug, epoch)
    bar = tqdm(batches, desc=f"[train {epoch:04d}/{cfg['epoch']:04d}]", disable=not rt.is_main,
               mininterval=1.0, leave=False, dynamic_ncols=True)
    t0, n_seen = time.time(), 0
    for step, (x, y) in enumerate(bar):
        x = normalize(x)
        optimizer.zero_grad(set_to_none=True)
        chunks = list(zip(x.split(micro), y.split(micro)))
        for i, (xc, yc) in enumerate(chunks):
            last = i == len(chunks) - 1
            sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") \
                else model.no_sync()
            with sync:
                with rt.autocast():
                    logits = model(xc)
                    loss = F.cross_entropy(logits.float(), yc)
                scaler.scale(loss * (len(xc) / len(x))).backward()
            with torch.no_grad():
                c1, c5 = _topk_correct(logits.detach(), yc)
                # torch.full fills on the device: no host-to-device copy, so no sync
                sums += torch.stack([loss.detach().double() * len(xc), c1.double(),
                                     c5.double(), torch.full((), float(len(xc)), device=rt.device,
                                                             dtype=torch.float64)])
        if clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        n_seen += len(x)
        if rt.is_main and step % 20 == 0:
            s = _summary(sums.detach().cpu())
            bar.set_postfix(loss=f"{s['loss']:.3f}", top1=f"{s['top1']:.3f}",
                            lr=f"{optimizer.param_groups[0]['lr']:.4g}")
    bar.close()
    out = _summary(rt.all_reduce(sums).cpu())
    if not math.isfinite(out["loss"]):
        raise FloatingPointError(f"the training loss is {out['loss']} in epoch {epoch}")
    out["images_per_s"] = n_seen * rt.world_size / max(time.time() - t0, 1e-9)
    return out


@torch.no_grad()
def evaluate(rt: Runtime, model, loader, normalize, desc: str = "test") -> dict:
    """Mean loss / top-1 / top-5 over this process's shard, summed over all processes."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=rt.device)
    for x, y in tqdm(loader, desc=f"[{desc}]", disable=not rt.is_main, leave=False,
                     mininterval=1.0, dynamic_ncols=True):
        x, y = normalize(x.to(rt.device, non_blocking=True)), y.to(rt.device, non_blocking=True)
        with rt.autocast():
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, reduction="sum")
        c1, c5 = _topk_correct(logits, y)
        sums += torch.stack([loss.double(), c1.double(), c5.double(),
                             torch.full((), float(len(y)), device=rt.device, dtype=torch.float64)])
    return _summary(rt.all_reduce(sums).cpu())

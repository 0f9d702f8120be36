"""The PyTorch backend of the search (``--backend torch``): the TensorFlow search's maths on
one GPU, the CPU, or several processes started by ``torchrun``, without TensorFlow.

* Models: ``networks.torch_models.search_model`` (the Keras search WRN as the same function,
  so weights convert with ``networks.convert_weights``; torchvision's ResNet-50). Weights are a
  ``state_dict`` saved with ``torch.save`` (``.pt``), loaded with ``weights_only=True``.
* Pretraining (SPEC §2): Keras' update, written out so that both backends train alike: the
  L2 penalty c · Σ w² of the weights Keras regularises added to the mean cross-entropy, the
  gradient clipped to global norm 5, then SGD with Nesterov momentum 0.9 in Keras' form
  (m ← 0.9 m − lr g; w ← w + 0.9 m − lr g) and the cosine learning rate lr₀ · ½(1 + cos(π s/S))
  at step s of S. (PyTorch's running variance is the unbiased one, Keras' the biased one: a
  difference of one part in the pixels of a batch.)
* Gradients and JVPs: ``torch_importance.TorchMatcher``.
* Devices: a GPU when one is visible (else the CPU); under ``torchrun`` (``WORLD_SIZE`` > 1)
  one process per GPU (``LOCAL_RANK``) with NCCL, or CPU processes with gloo. Every process
  runs the whole search in lockstep, as the TensorFlow workers do, and takes rank 0's weights
  (a broadcast) before searching; the points of a step are spread over the ranks and only
  rank 0 writes files.
* ``--precision bf16``: the search model's passes in bfloat16 autocast; pretraining and its
  evaluation stay float32, as in the TensorFlow backend. fp32 is float32 throughout (TF32 off
  on GPUs). ``--compile``: ``torch.compile`` of the per-chunk passes.
* Tensorboard scalars through ``torch.utils.tensorboard`` when the ``tensorboard`` package is
  installed (told not to load TensorFlow), else as JSON lines in ``tensorboard/scalars.jsonl``.
"""
from __future__ import annotations

import datetime
import io
import json
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from augmentation.files import atomic_write, summary_writer
from networks.names import default_chunk_size
from networks.torch_models import search_l2, search_model

CLIP_NORM = 5.0  # SPEC §2
MOMENTUM = 0.9


class TorchBackend:
    name = "torch"
    weights_suffix = ".pt"

    def __init__(self, args):
        self.precision, self.compile = args.precision, args.compile
        world = _env_int("WORLD_SIZE", 1)
        cuda = torch.cuda.is_available()
        if cuda:
            self.torch_device = torch.device("cuda", _env_int("LOCAL_RANK", 0) if world > 1
                                             else torch.cuda.current_device())
            torch.cuda.set_device(self.torch_device)
            # --precision fp32 means float32 arithmetic: no TF32 convolutions or matmuls.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        else:
            self.torch_device = torch.device("cpu")
        self.distributed = world > 1
        if self.distributed:
            # Ranks meet only in the search steps; pretraining and evaluation run in lockstep
            # without collectives, so the default timeout is ample.
            torch.distributed.init_process_group("nccl" if cuda else "gloo",
                                                 timeout=datetime.timedelta(hours=2))
        self.rank = torch.distributed.get_rank() if self.distributed else 0
        self.replicas = torch.distributed.get_world_size() if self.distributed else 1
        self.writes_results = self.rank == 0
        where = (torch.cuda.get_device_name(self.torch_device) if cuda else "CPU")
        self.device = (f"PyTorch {torch.__version__} on {where}, {self.precision}"
                       + (", compiled" if self.compile else "")
                       + (f", {self.replicas} processes" if self.distributed else ""))

    # ----- models -------------------------------------------------------------------------------
    def new_model(self, args, input_shape):
        torch.manual_seed(args.seed)
        return self._placed(search_model(args.use_model, args.n_classes))

    def _placed(self, model):
        model = model.to(self.torch_device)
        if self.torch_device.type == "cuda":  # NHWC batches meet NHWC kernels
            model = model.to(memory_format=torch.channels_last)
        return model

    def save_weights(self, model, path: str) -> None:
        buffer = io.BytesIO()
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, buffer)
        atomic_write(path, buffer.getvalue())

    def search_model(self, args, input_shape, path: str):
        """The search model restored from ``path`` (rank 0's copy on every rank), in inference
        mode; the matcher freezes batch norm's parameters out of θ."""
        model = search_model(args.use_model, args.n_classes)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as err:  # several types for a wrong file; one line
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ValueError(f"cannot load {path!r} into {args.use_model}: {first} (weights of "
                             "another model?)") from None
        if not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
            raise ValueError(f"{path!r} holds weights that are not finite (NaN or infinity)")
        model = self._placed(model).eval()
        if self.distributed:
            for tensor in model.state_dict().values():
                torch.distributed.broadcast(tensor, src=0)
        return model

    def predict(self, model, images) -> np.ndarray:
        model.eval()
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.torch_device)
        with torch.no_grad():
            logits = model(x.permute(0, 3, 1, 2))
        return logits.cpu().numpy()

    # ----- pretraining --------------------------------------------------------------------------
    def trainer(self, model, args, total_steps: int):
        return _Trainer(model, args, total_steps, self.torch_device)

    # ----- the search ---------------------------------------------------------------------------
    def matcher(self, model, args):
        from policy_search.torch_importance import TorchMatcher

        return TorchMatcher(model, args.chunk_size or default_chunk_size(args.use_model),
                            bn_training=args.policy_bn_training, precision=self.precision,
                            compile=self.compile)

    def scalar_writer(self, folder: str):
        return ScalarWriter(folder)

    def close(self) -> None:
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.barrier()  # no rank leaves while another still talks to it
            torch.distributed.destroy_process_group()


class _Trainer:
    """One pretraining step of SPEC §2 in Keras' form (see the module docstring), float32
    whatever ``--precision``, and its state for the checkpoint."""

    def __init__(self, model, args, total_steps: int, device):
        self.model, self.device = model, device
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.l2, self.penalised = search_l2(args.use_model, model)
        self.momenta = [torch.zeros_like(p) for p in self.params]
        self.iteration, self.total, self.lr0 = 0, total_steps, args.pretrain_lr

    def __call__(self, images, labels):
        model = self.model
        model.train()
        x = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2)
        y = torch.from_numpy(labels).to(self.device).long()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss = loss + self.l2 * sum(torch.sum(p * p) for p in self.penalised)
        grads = torch.autograd.grad(loss, self.params)
        norm = torch.sqrt(sum(torch.sum(g * g) for g in grads))
        clip = CLIP_NORM * torch.clamp(1.0 / norm, max=1.0 / CLIP_NORM)  # Keras' form
        fraction = min(self.iteration, self.total) / self.total
        lr = self.lr0 * 0.5 * (1.0 + math.cos(math.pi * fraction))
        with torch.no_grad():
            for p, g, m in zip(self.params, grads, self.momenta):
                g = g * clip
                m.mul_(MOMENTUM).sub_(g * lr)
                p.add_(m * MOMENTUM - g * lr)
        self.iteration += 1
        hits = (logits.argmax(1) == y).sum()
        return float(loss.detach()), float(hits)

    def state(self):
        """(the ``state_dict``'s tensors in its order, the momenta and the step count)."""
        weights = [v.detach().cpu().numpy() for v in self.model.state_dict().values()]
        return weights, [m.cpu().numpy() for m in self.momenta] + [
            np.array(self.iteration, np.int64)]

    def load(self, weights, variables) -> None:
        with torch.no_grad():
            for tensor, value in zip(self.model.state_dict().values(), weights):
                tensor.copy_(torch.from_numpy(np.asarray(value)))
            for m, value in zip(self.momenta, variables[:-1]):
                m.copy_(torch.from_numpy(np.asarray(value)))
        self.iteration = int(variables[-1])


class ScalarWriter:
    """Tensorboard scalars without TensorFlow (``augmentation.files.summary_writer``) when
    tensorboard is installed, else JSON lines ``{"tag", "value", "step"}`` in
    ``folder/scalars.jsonl``."""

    def __init__(self, folder: str):
        self.writer, self.lines = summary_writer(folder), None
        if self.writer is None:
            os.makedirs(folder, exist_ok=True)
            self.lines = open(os.path.join(folder, "scalars.jsonl"), "a", encoding="utf-8")

    def scalar(self, tag, value, step):
        if self.writer is not None:
            self.writer.add_scalar(tag, float(value), int(step))
        else:
            self.lines.write(json.dumps({"tag": tag, "value": float(value),
                                         "step": int(step)}) + "\n")

    def close(self):
        if self.writer is not None:
            self.writer.close()
        else:
            self.lines.close()


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, "") or default)
    except ValueError:
        raise ValueError(f"{name}={os.environ[name]!r} is not an integer") from None

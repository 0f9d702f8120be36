"""Gradient matching in PyTorch (SPEC §2): the PyTorch side of ``importance.GradientMatcher``.

The same maths as the TensorFlow matcher (see its module docstring for the choices, which are
the released search's): θ is the model's parameters outside batch norm; only the data loss
(per-example cross-entropy of the logits) is differentiated; g_val and g_tr are gradients of
weighted sums of it, accumulated over chunks of ``chunk_size`` images; the tangent
t = g_val − g_tr (g_val·g_tr)/‖g_tr‖² is formed with inner products and norms in float64 and
scaled by 1/‖g_val‖; the importance r(a) = (∇θ ℓ(a) · t) / (‖g_tr‖ ‖g_val‖) of every
augmented image is a forward-mode Jacobian-vector product of ℓ along t
(``torch.func.jvp``, chunked), so no per-example gradient is ever formed.

Batch norm: the search model's batch-norm layers run in inference mode (frozen, SPEC §2), as
the affine map they then are (see ``TorchMatcher.__init__``). With ``bn_training``
(``--policy_bn_training``) they normalise with each chunk's statistics and, as on the
TensorFlow side, leave the running statistics as they were.

Options of the PyTorch search: ``precision="bf16"`` runs the model's passes under bfloat16
autocast (weights, gradients and tangents stay float32, batch norm and the loss run in float32,
inner products are float64);
``compile=True`` compiles the per-chunk gradient and JVP functions with ``torch.compile``.

Devices: ``points`` spreads a step's points over the ranks of ``torch.distributed`` (rank j
takes the contiguous block j·P/R … (j+1)·P/R − 1) and all-gathers every point's cosine and
importances in point order, so every rank applies the same policy update.
"""
from __future__ import annotations

import contextlib
import types

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp


def theta_names(model) -> list[str]:
    """Names of θ: the model's parameters, less those of its batch-norm layers."""
    norm = {f"{prefix}.{name}" if prefix else name
            for prefix, m in model.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            for name, _ in m.named_parameters(recurse=False)}
    return [name for name, _ in model.named_parameters() if name not in norm]


class TorchMatcher:
    """Gradients and importances of one PyTorch model (the search model, batch norm frozen).

    Images are normalised float NCHW tensors (``points`` takes the search's NHWC uint8 or
    float arrays). Gradients and tangents are lists of tensors aligned with ``self.names``.
    """

    def __init__(self, model, chunk_size: int = 256, bn_training: bool = False,
                 precision: str = "fp32", compile: bool | str = False):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
        self.model = model
        self.chunk_size = int(chunk_size)
        self.bn_training = bool(bn_training)
        self.names = theta_names(model)
        if not self.names:
            raise ValueError("the model has no parameters to match gradients on")
        params = dict(model.named_parameters())
        self.theta = [params[n] for n in self.names]
        for name, p in params.items():  # batch norm takes no part in the matching
            p.requires_grad_(name in self.names)
        self.device = self.theta[0].device
        self.dtype = self.theta[0].dtype
        self.autocast = precision == "bf16"
        for m in model.modules():
            if not isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                continue
            # Frozen batch norm (inference mode) is the affine map x·s + t (s = γ/√(σ² + ε),
            # t = β − μ·s, float32): F.batch_norm's function to rounding, which torch.compile
            # traces through a JVP (it fails on F.batch_norm there) and whose derivative
            # keeps one dtype under bfloat16 autocast. In training mode the layer's own.
            m.forward = types.MethodType(_batch_norm, m)
            if self.bn_training and self.autocast:
                # Training-mode batch norm on float32 inputs: autocast leaves it in the
                # input's dtype, and its forward-mode derivative would then come out in
                # float32 beside a bfloat16 value, which the next convolution refuses.
                m.register_forward_pre_hook(_float32_input)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = torch.distributed.get_rank() if distributed else 0
        self.replicas = torch.distributed.get_world_size() if distributed else 1
        self._grad_fn, self._jvp_fn = self._eager_grad, self._chunk_jvp
        if compile:  # True: inductor; a string names another torch.compile backend
            # One static graph per chunk size (a full chunk and the few remainders of a
            # search): dynamic shapes fail in the JVP's tangents and would fall back to eager.
            backend = compile if isinstance(compile, str) else "inductor"
            self._grad_fn = torch.compile(self._chunk_grad, backend=backend, dynamic=False)
            self._jvp_fn = torch.compile(self._chunk_jvp, backend=backend, dynamic=False)

    # ----- per-chunk primitives -------------------------------------------------------------
    def _loss(self, theta, images, labels):
        """ℓ(x_i): cross-entropy of the model's logits (in the weights' dtype), per image. θ
        comes in as arguments, the rest of the model's state (batch norm's parameters and
        statistics) as constants read at each call."""
        state = {name: t.detach() for name, t in self.model.named_buffers()}
        state.update((name, p.detach()) for name, p in self.model.named_parameters()
                     if not p.requires_grad)
        state.update(zip(self.names, theta))
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
            logits = functional_call(self.model, state, (images,))
        return F.cross_entropy(logits.to(self.dtype), labels, reduction="none")

    def _chunk_grad(self, images, labels, weights, *theta):
        """Σ_i w_i ∇θ ℓ(x_i) over one chunk (``torch.func.grad``: one graph to compile)."""
        def weighted_loss(*th):
            return torch.sum(weights * self._loss(th, images, labels))

        return grad(weighted_loss, argnums=tuple(range(len(theta))))(*theta)

    def _eager_grad(self, images, labels, weights, *theta):
        """The same sum by plain autograd on the model's own parameters (θ are they), the
        uncompiled pass: bit for bit ``_chunk_grad``'s result, and 1.2-1.45x faster on a CPU
        (WRN-40-2, chunks of 256), where ``torch.func.grad``'s functional call costs time."""
        with torch.enable_grad():  # the loss too: a caller may hold torch.no_grad()
            with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
                logits = self.model(images)
            losses = F.cross_entropy(logits.to(self.dtype), labels, reduction="none")
            return torch.autograd.grad(torch.sum(weights * losses), self.theta)

    def _chunk_jvp(self, images, labels, *theta_and_tangent):
        """∇θ ℓ(x_i) · tangent for every image of one chunk, in forward mode."""
        n = len(theta_and_tangent) // 2
        return jvp(lambda *theta: self._loss(theta, images, labels),
                   theta_and_tangent[:n], theta_and_tangent[n:])[1]

    # ----- chunked passes ---------------------------------------------------------------------
    def weighted_grad(self, images, labels, weights) -> list:
        """Σ_i w_i ∇θ ℓ(x_i), accumulated over chunks of ``chunk_size`` images."""
        images, labels, weights = self._prepare(images, labels, weights)
        if not len(images) == len(labels) == len(weights):
            raise ValueError("images, labels and weights must have the same length")
        total = [torch.zeros_like(t) for t in self.theta]
        theta = [t.detach() for t in self.theta]
        with self._batch_norm_mode():
            for start in range(0, len(images), self.chunk_size):
                end = start + self.chunk_size
                chunk = self._grad_fn(images[start:end], labels[start:end], weights[start:end],
                                      *theta)
                for acc, g in zip(total, chunk):
                    acc += g
        return total

    def mean_grad(self, images, labels) -> list:
        """∇θ of the mean loss (g_val for a validation batch), accumulated over chunks."""
        n = len(labels)
        if n == 0:
            raise ValueError("mean_grad needs at least one image")
        return self.weighted_grad(images, labels, torch.full((n,), 1.0 / n, dtype=self.dtype))

    val_grad = mean_grad

    def jvp(self, images, labels, tangent) -> torch.Tensor:
        """∇θ ℓ(x_i) · tangent for every image ([N]), chunked."""
        images, labels, _ = self._prepare(images, labels, None)
        tangent = tuple(torch.as_tensor(t, dtype=self.dtype, device=self.device)
                        for t in tangent)
        theta = tuple(t.detach() for t in self.theta)
        out = []
        with torch.no_grad(), self._batch_norm_mode():
            for start in range(0, len(images), self.chunk_size):
                end = start + self.chunk_size
                out.append(self._jvp_fn(images[start:end], labels[start:end], *theta, *tangent))
        return torch.cat(out) if out else torch.zeros(0, dtype=self.dtype, device=self.device)

    def tangent(self, g_val, g_tr):
        """(t̂, cos(g_val, g_tr), ‖g_tr‖): the tangent scaled by 1/‖g_val‖, with inner
        products and norms in float64 (see importance.GradientMatcher.tangent_ops)."""
        dot = _dot(g_val, g_tr)
        norm_tr = torch.sqrt(_dot(g_tr, g_tr))
        norm_val = torch.sqrt(_dot(g_val, g_val))
        along = dot / norm_tr ** 2
        tangent = [((gv.double() - gt.double() * along) / norm_val).to(gv.dtype)
                    for gv, gt in zip(g_val, g_tr)]
        return tangent, dot / (norm_tr * norm_val), norm_tr

    def match(self, images, labels, g_val, g_tr):
        """(cos(g_val, g_tr), r over ``images``) of one point, float64."""
        tangent, cos, norm_tr = self.tangent(g_val, g_tr)
        return cos, self.jvp(images, labels, tangent).double() / norm_tr

    def importance(self, images, labels, g_val, g_tr) -> torch.Tensor:
        """r(x_i) = (∇θ ℓ(x_i) · t) / (‖g_tr‖ ‖g_val‖) for every image; shape [N]."""
        return self.match(images, labels, g_val, g_tr)[1]

    @staticmethod
    def cosine(g_a, g_b) -> torch.Tensor:
        """cos(g_a, g_b) of two gradients given as lists of tensors (float64)."""
        return _dot(g_a, g_b) / (torch.sqrt(_dot(g_a, g_a)) * torch.sqrt(_dot(g_b, g_b)))

    # ----- the search step's points -----------------------------------------------------------
    def points(self, weights, labels, val, val_labels, dense, gtr, statistics):
        """(cos [P], r [P, N]) of a step's search points, gathered from all ranks in point
        order; ``gtr=None`` trains on ``dense`` (stage 1), weighted by ``weights``. uint8
        NHWC images are normalised on the device with ``statistics`` (mean, std), one point at
        a time; float images are taken as normalised."""
        n_points = len(labels)
        per = n_points // self.replicas
        mine = range(self.rank * per, (self.rank + 1) * per)
        weights = torch.as_tensor(weights, dtype=self.dtype)
        stats = [torch.as_tensor(s, dtype=torch.float32, device=self.device)
                 for s in statistics]
        cos = torch.zeros(per, dtype=torch.float64, device=self.device)
        r = torch.zeros(per, dense.shape[1], dtype=torch.float64, device=self.device)
        for j, i in enumerate(mine):
            g_val = self.mean_grad(self.device_images(val[i], stats), val_labels[i])
            dense_i = self.device_images(dense[i], stats)
            train_i = dense_i if gtr is None else self.device_images(gtr[i], stats)
            g_tr = self.weighted_grad(train_i, np.full(len(train_i), labels[i]), weights)
            cos[j], r[j] = self.match(dense_i, np.full(len(dense_i), labels[i]), g_val, g_tr)
        if self.replicas > 1:
            cos, r = _all_gather(cos), _all_gather(r)
        return cos.cpu().numpy(), r.cpu().numpy()

    # ----- helpers ----------------------------------------------------------------------------
    def device_images(self, images, stats):
        """NHWC numpy images -> NCHW tensor on the device; uint8 normalised there as
        data.normalize does, (x / 255 − mean) / std in float32."""
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = (x.to(torch.float32) * np.float32(1.0 / 255.0) - stats[0]) / stats[1]
        return x.to(self.dtype).permute(0, 3, 1, 2)

    def _prepare(self, images, labels, weights):
        images = torch.as_tensor(images, device=self.device).to(self.dtype)
        labels = torch.as_tensor(np.asarray(labels), device=self.device).long()
        if weights is not None:
            weights = torch.as_tensor(weights, device=self.device).to(self.dtype)
        return images, labels, weights

    @contextlib.contextmanager
    def _batch_norm_mode(self):
        """Frozen batch norm: inference mode. With ``bn_training``: each chunk's statistics,
        the running statistics neither used nor moved (not tracked while the pass runs)."""
        norms = [m for m in self.model.modules()
                 if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        saved = [(m.training, m.track_running_stats) for m in norms]
        for m in norms:
            m.train(self.bn_training)
            m.track_running_stats = m.track_running_stats and not self.bn_training
        try:
            yield
        finally:
            for m, (training, tracking) in zip(norms, saved):
                m.train(training)
                m.track_running_stats = tracking


def _batch_norm(module, x):
    if module.training:
        return type(module).forward(module, x)
    scale = module.weight * torch.rsqrt(module.running_var + module.eps)
    shift = module.bias - module.running_mean * scale
    return x * scale[:, None, None] + shift[:, None, None]


def _float32_input(module, args):
    return (args[0].float(),) + tuple(args[1:])


def _dot(g_a, g_b) -> torch.Tensor:
    """Inner product of two gradients (lists of same-shaped tensors), in float64."""
    return sum(torch.sum(a.double() * b.double()) for a, b in zip(g_a, g_b))


def _all_gather(t: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, t.contiguous())
    return torch.cat(parts)

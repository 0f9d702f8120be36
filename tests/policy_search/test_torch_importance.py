"""Gradient matching in PyTorch (SPEC §2): importances against explicit per-example gradients,
the finite-difference derivative of the cosine, chunking, batch-norm modes and options."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from networks.torch_models import search_model
from policy_search.torch_importance import TorchMatcher, theta_names
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helper, in any import mode
from policy_search_helper import (N_CLASSES, check_chunking_changes_nothing,  # noqa: E402
                                  check_importance_maths, flat, importance_setup, rel_err,
                                  search_batch)


def tiny_wrn(dtype=torch.float64, seed=0):
    """The search WRN-10-1 with random weights and batch-norm statistics, in inference mode."""
    torch.manual_seed(seed)
    model = search_model("WRN_10_1", N_CLASSES).to(dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                values = torch.randn(tensor.shape, generator=gen, dtype=dtype) * 0.3
                tensor.copy_(0.5 + values.abs() if "running_var" in name else values)
    return model.eval()


def nchw(images, dtype=torch.float64):
    return torch.as_tensor(np.asarray(images)).to(dtype).permute(0, 3, 1, 2)


def per_example_grads(model, images, labels):
    """[N, n_params] flattened ∇θ ℓ(x_i), one backward pass per image."""
    theta = dict(model.named_parameters())
    theta = [theta[n] for n in theta_names(model)]
    rows = []
    for x, y in zip(images, labels):
        loss = F.cross_entropy(model(x[None]), torch.tensor([int(y)]))
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, theta)]))
    return torch.stack(rows).detach().numpy()


@pytest.fixture
def setup():
    return importance_setup(tiny_wrn(), nchw)


def test_importance_is_derivative_of_cosine(setup):
    """The finite-difference check of the TensorFlow side (test_importance.py), in PyTorch."""
    check_importance_maths(TorchMatcher(setup[0], chunk_size=3), setup, per_example_grads)


def test_jvp_equals_per_example_gradient_dot_tangent(setup):
    model, aug, labels, *_ = setup
    matcher = TorchMatcher(model, chunk_size=2)
    gen = torch.Generator().manual_seed(5)
    tangent = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in matcher.theta]
    jvp = matcher.jvp(aug, labels, tangent)
    assert rel_err(jvp, per_example_grads(model, aug, labels) @ flat(tangent)) < 1e-10


@pytest.mark.parametrize("chunk_size", [1, 3, 7])
def test_chunked_passes_equal_one_shot(setup, chunk_size):
    check_chunking_changes_nothing(lambda m, c: TorchMatcher(m, chunk_size=c), setup, chunk_size)


def test_theta_leaves_batch_norm_out_and_bad_input_is_refused(setup):
    model, aug, labels, *_ = setup
    matcher = TorchMatcher(model)
    assert not any("bn" in name for name in matcher.names)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert len(matcher.names) == 2 * convs + 2  # kernels and biases, classifier weight/bias
    assert not any(p.requires_grad for n, p in model.named_parameters() if "bn" in n)
    with pytest.raises(ValueError, match="chunk_size"):
        TorchMatcher(model, chunk_size=0)
    with pytest.raises(ValueError, match="precision"):
        TorchMatcher(model, precision="fp16")
    with pytest.raises(ValueError, match="same length"):
        matcher.weighted_grad(aug, labels, np.ones(3))


def test_bn_training_uses_chunk_statistics_and_leaves_the_model_unchanged(setup):
    model, aug, labels, val, val_labels, p = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    training = TorchMatcher(model, chunk_size=7, bn_training=True)
    inference = TorchMatcher(model, chunk_size=7)
    g_val = training.val_grad(val, val_labels)
    g_tr = training.weighted_grad(aug, labels, p)
    r = training.importance(aug, labels, g_val, g_tr)
    # reference: batch statistics of the whole (single) chunk, via a training-mode copy
    import copy

    ref_model = copy.deepcopy(model).train()
    loss = torch.sum(torch.as_tensor(p) * F.cross_entropy(ref_model(aug), torch.as_tensor(
        labels).long(), reduction="none"))
    names = theta_names(ref_model)
    params = dict(ref_model.named_parameters())
    ref = torch.autograd.grad(loss, [params[n] for n in names])
    assert rel_err(flat(g_tr), flat(ref)) < 1e-10
    r_inf = inference.importance(aug, labels, inference.val_grad(val, val_labels),
                                 inference.weighted_grad(aug, labels, p))
    assert rel_err(r, r_inf) > 1e-3  # batch statistics change the importances
    assert not model.training and all(not m.training for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_tiny_float32_gradients_do_not_underflow():
    """As on the TensorFlow side: at gradient scale 1e-24 in float32, the cosine and
    r · scale are unchanged (inner products in float64, tangent scaled by 1/‖g_val‖)."""
    model = tiny_wrn(torch.float32)
    batch = search_batch(1, 7, 6)
    aug, val = nchw(batch["aug"][0], torch.float32), nchw(batch["val"][0], torch.float32)
    labels = np.full(7, batch["labels"][0])
    matcher = TorchMatcher(model, chunk_size=4)
    g_val = matcher.val_grad(val, batch["val_labels"][0])
    g_tr = matcher.weighted_grad(aug, labels, np.full(7, 1 / 7))
    tiny_val = [g * 1e-24 for g in g_val]
    tiny_tr = [g * 1e-24 for g in g_tr]
    cos = TorchMatcher.cosine(g_val, g_tr).item()
    cos_tiny = TorchMatcher.cosine(tiny_val, tiny_tr).item()
    assert abs(cos_tiny - cos) < 1e-6 and cos_tiny <= 1.0
    r = matcher.importance(aug, labels, g_val, g_tr).numpy()
    r_tiny = matcher.importance(aug, labels, tiny_val, tiny_tr).numpy()
    assert np.all(np.isfinite(r_tiny))
    assert rel_err(r_tiny * 1e-24, r) < 1e-4


def _float32_importances(matcher, setup):
    _, aug, labels, val, val_labels, p = setup
    aug, val = aug.float(), val.float()
    g_val = matcher.val_grad(val, val_labels)
    g_tr = matcher.weighted_grad(aug, labels, p)
    return matcher.importance(aug, labels, g_val, g_tr).numpy()


def test_bf16_autocast_agrees_with_float32_to_its_precision(setup):
    """--precision bf16 runs the passes in bfloat16 (the importances change) and stays close
    to float32: bfloat16 keeps 8 bits of mantissa."""
    model = tiny_wrn(torch.float32)
    fp32 = _float32_importances(TorchMatcher(model, chunk_size=4), setup)
    bf16 = _float32_importances(TorchMatcher(model, chunk_size=4, precision="bf16"), setup)
    err = rel_err(bf16, fp32)
    assert 1e-5 < err < 0.1, err
    assert np.corrcoef(bf16, fp32)[0, 1] > 0.99


def test_compiled_passes_agree_with_eager(setup):
    """--compile: the per-chunk passes captured by torch.compile (functional_call, the JVP,
    the gradient) give eager's importances. The test compiles with the aot_eager backend,
    which captures the same graphs without generating code (inductor takes minutes on a
    small CPU; benchmarks/search_step.py --compile measures it)."""
    torch._dynamo.reset()
    model = tiny_wrn(torch.float32)
    eager = _float32_importances(TorchMatcher(model, chunk_size=4), setup)
    matcher = TorchMatcher(model, chunk_size=4, compile="aot_eager")
    compiled = _float32_importances(matcher, setup)
    assert rel_err(compiled, eager) < 1e-5
    assert matcher._jvp_fn is not matcher._chunk_jvp


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_eager_gradient_is_the_functional_one(precision):
    """The uncompiled weighted gradient (plain autograd on the model's parameters) gives what
    the compiled one's function (torch.func.grad over θ as arguments) gives, bit for bit."""
    model = tiny_wrn(torch.float32)
    batch = search_batch(1, 9, 1)
    images, labels = nchw(batch["aug"][0], torch.float32), torch.arange(9) % N_CLASSES
    weights = torch.from_numpy(np.random.default_rng(0).dirichlet(np.ones(9))).float()
    matcher = TorchMatcher(model, precision=precision)
    theta = [t.detach() for t in matcher.theta]
    with matcher._batch_norm_mode():
        eager = matcher._eager_grad(images, labels, weights, *theta)
        functional = matcher._chunk_grad(images, labels, weights, *theta)
        with torch.no_grad():  # a caller's no_grad does not reach the gradient's graph
            under_no_grad = matcher._eager_grad(images, labels, weights, *theta)
    assert len(eager) == len(functional) == len(under_no_grad) == len(matcher.names)
    for a, b, c in zip(eager, functional, under_no_grad):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert any(float(g.abs().max()) > 0 for g in eager)

"""The PyTorch search against the TensorFlow one (SPEC §2): with the same weights (converted by
networks.convert_weights) and the same batch, the two backends give the same g_val, g_tr,
importances and cosines (float32, <= 1e-5 relative), the same policy logits after stage-1
and stage-k steps, and the same weights after pretraining steps."""
import argparse
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import tensorflow as tf
import keras

from networks.convert_weights import _to_torch_layout, _torch_tensors, keras_to_torch, layer_pairs
from networks.tf_models import build_model
from networks.torch_models import search_model
from policy_search.importance import GradientMatcher
from policy_search.layers import PolicyLogits, Searcher
from policy_search.torch_importance import TorchMatcher
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helper, in any import mode
from policy_search_helper import (CHANNELS, N_CLASSES, SIZE, flat,  # noqa: E402
                                  random_weights, rel_err, search_batch)

TOL = 1e-5


def pair(seed=0, name="WRN_10_1"):
    """(Keras, PyTorch) search models holding the same weights, batch norm frozen."""
    keras_model = build_model(name, N_CLASSES, (SIZE, SIZE, CHANNELS))
    random_weights(keras_model, seed)
    torch_model = search_model(name, N_CLASSES)
    keras_to_torch(keras_model, torch_model)
    for layer in keras_model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    return keras_model, torch_model.eval()


def in_torch_order(tf_grads, matcher_tf, torch_model, torch_names):
    """TensorFlow gradients (aligned with matcher_tf.variables) rearranged as the PyTorch
    matcher's θ: same order, PyTorch layouts."""
    by_path = {v.path: np.asarray(g) for v, g in zip(matcher_tf.variables, tf_grads)}
    names = {id(p): n for n, p in torch_model.named_parameters()}
    out = {}
    for layer_name, module in layer_pairs(torch_model):
        layer = matcher_tf.model.get_layer(layer_name)
        for var, tensor in zip(layer.weights, _torch_tensors(module)):
            if var.path in by_path:
                out[names[id(tensor)]] = _to_torch_layout(by_path[var.path])
    assert sorted(out) == sorted(torch_names)
    return np.concatenate([out[n].ravel() for n in torch_names])


@pytest.fixture(scope="module")
def models():
    return pair()


def test_gradients_importances_and_cosine_agree(models):
    keras_model, torch_model = models
    tf_m = GradientMatcher(keras_model, chunk_size=4)
    pt_m = TorchMatcher(torch_model, chunk_size=4)
    batch = search_batch(1, 9, 6)
    aug, val = batch["aug"][0].astype(np.float32), batch["val"][0].astype(np.float32)
    labels = np.full(9, batch["labels"][0])
    weights = np.random.default_rng(3).dirichlet(np.ones(9)).astype(np.float32)
    nchw = [torch.from_numpy(a).permute(0, 3, 1, 2) for a in (aug, val)]

    g_val_tf = tf_m.val_grad(val, batch["val_labels"][0])
    g_tr_tf = tf_m.weighted_grad(aug, labels, weights)
    g_val_pt = pt_m.val_grad(nchw[1], batch["val_labels"][0])
    g_tr_pt = pt_m.weighted_grad(nchw[0], labels, weights)
    assert rel_err(flat(g_val_pt), in_torch_order(g_val_tf, tf_m, torch_model, pt_m.names)) < TOL
    assert rel_err(flat(g_tr_pt), in_torch_order(g_tr_tf, tf_m, torch_model, pt_m.names)) < TOL
    r_tf = tf_m.importance(aug, labels, g_val_tf, g_tr_tf).numpy()
    r_pt = pt_m.importance(nchw[0], labels, g_val_pt, g_tr_pt).numpy()
    assert rel_err(r_pt, r_tf) < TOL and np.abs(r_tf).max() > 1e-3
    cos_tf = float(GradientMatcher.cosine(g_val_tf, g_tr_tf))
    assert abs(TorchMatcher.cosine(g_val_pt, g_tr_pt).item() - cos_tf) < TOL


def test_search_steps_give_the_same_logits(models):
    """Two stage-1 and two stage-k steps of a 2-layer policy on uint8 batches (normalised on
    each backend's device), 2 points: the same importances, cosines and logits."""
    keras_model, torch_model = models
    rng = np.random.default_rng(7)
    searchers = [Searcher(m, PolicyLogits(2, 6, 0, 0.025), "cifar")
                 for m in (GradientMatcher(keras_model, chunk_size=5),
                           TorchMatcher(torch_model, chunk_size=5))]
    for step in range(4):
        shapes = search_batch(2, 6, 5, n_gtr=7, n_copies=2, seed=step)
        batch = {k: rng.integers(0, 256, v.shape, dtype=np.uint8) if v.dtype == np.float64
                 else v for k, v in shapes.items()}
        outs = [s.stage1_step(batch) if step < 2 else s.stagek_step(1, batch)
                for s in searchers]
        assert rel_err(outs[1]["importance"], outs[0]["importance"]) < TOL
        assert abs(outs[1]["cos_sim"] - outs[0]["cos_sim"]) < TOL
    logits = [s.policy.all_logits() for s in searchers]
    assert rel_err(logits[1], logits[0]) < TOL
    moved = logits[0] - PolicyLogits(2, 6, 0, 0.025).all_logits()
    assert np.abs(moved).min() > 1e-3 and np.abs(moved).max() > 0.03  # both layers moved


def test_pretraining_steps_agree():
    """Three pretraining steps (SPEC §2: SGD Nesterov in Keras' form, cosine learning rate,
    global norm 5, L2 on the weights Keras penalises) on the same batches from the same
    weights leave the same weights in both backends."""
    from policy_search.backend_tf import TFBackend
    from policy_search.backend_torch import TorchBackend

    args = argparse.Namespace(use_model="WRN_10_1", n_classes=N_CLASSES, seed=0,
                              pretrain_lr=0.5, cpu_replicas=0, precision="fp32",
                              compile=False)
    tf_backend, pt_backend = TFBackend(args), TorchBackend(args)
    keras_model = tf_backend.new_model(args, (SIZE, SIZE, CHANNELS))
    random_weights(keras_model, seed=1)
    torch_model = pt_backend.new_model(args, (SIZE, SIZE, CHANNELS))
    keras_to_torch(keras_model, torch_model)
    steps = [b.trainer(m, args, 3) for b, m in ((tf_backend, keras_model),
                                                (pt_backend, torch_model))]
    rng = np.random.default_rng(5)
    for _ in range(3):
        images = rng.normal(size=(16, SIZE, SIZE, CHANNELS)).astype(np.float32)
        labels = rng.integers(0, N_CLASSES, 16).astype(np.int32)
        (loss_tf, hits_tf), (loss_pt, hits_pt) = (step(images, labels) for step in steps)
        assert loss_pt == pytest.approx(loss_tf, rel=TOL) and hits_pt == hits_tf
    converted = search_model("WRN_10_1", N_CLASSES)
    keras_to_torch(keras_model, converted)
    start = search_model("WRN_10_1", N_CLASSES)
    random_weights_model = build_model("WRN_10_1", N_CLASSES, (SIZE, SIZE, CHANNELS))
    random_weights(random_weights_model, seed=1)
    keras_to_torch(random_weights_model, start)
    for (name, got), want, before in zip(torch_model.named_parameters(),
                                         converted.parameters(), start.parameters()):
        got, want = got.detach().numpy(), want.detach().numpy()
        change = want - before.detach().numpy()
        assert np.abs(change).max() > 1e-4, name  # the steps moved every weight
        assert np.abs(got - want).max() <= TOL * np.abs(change).max() * 10 + 1e-7, name
    tf.keras.backend.clear_session()

"""Search data: splits, class-conditional points, step batches, pool and prefetch (SPEC §2)."""
import numpy as np
import pytest

from augmentation.ops import center_crop
from augmentation.space import candidates
from deepaa_data import ArrayDataset
from policy_search import data
from policy_search.augment import Augmenter, Executor

L_MAGS = 3
CANDS = candidates("cifar", L_MAGS)  # 29 candidates


def _dataset(n=240, classes=4, size=8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, classes, n)
    return ArrayDataset(images, labels, [str(c) for c in range(classes)])


def test_splits_disjoint_complete_and_seeded():
    s = data.make_splits(600, 200, seed=5)
    parts = [s.val, s.pretrain, s.search]
    assert [len(p) for p in parts] == [120, 200, 280]  # validation: 20 % below 50,000 images
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == 600 and joined.min() == 0 and joined.max() == 599
    again = data.make_splits(600, 200, seed=5)
    other = data.make_splits(600, 200, seed=6)
    assert all(np.array_equal(a, b) for a, b in zip(parts, [again.val, again.pretrain,
                                                             again.search]))
    assert not np.array_equal(s.val, other.val)


def test_split_sizes_of_cifar_and_pretrain_cap():
    s = data.make_splits(50000, 5000, seed=1)
    assert (len(s.val), len(s.pretrain), len(s.search)) == (10000, 5000, 35000)
    small = data.make_splits(100, 5000, seed=1)  # pretraining capped at half of the rest
    assert (len(small.val), len(small.pretrain), len(small.search)) == (20, 40, 40)


def test_imagenet_holds_out_the_released_validation_split():
    """400,000 of ImageNet's 1,281,167 training images (about 310 a class, so a point's 64
    validation images are distinct); at most half of a smaller ImageNet-space dataset."""
    s = data.make_splits(1281167, 5000, seed=1, space="imagenet")
    assert (len(s.val), len(s.pretrain), len(s.search)) == (400000, 5000, 876167)
    assert len(data.make_splits(1000, 100, seed=1, space="imagenet").val) == 500


def test_classes_with_too_few_validation_images_are_named():
    labels = np.repeat(np.arange(4), [50, 50, 50, 400])
    splits = data.make_splits(len(labels), 60, seed=0)
    sampler = data.PointSampler(labels, splits, n_val=16)
    counts = [np.sum(labels[splits.val] == c) for c in range(4)]
    assert sampler.short_classes() == [c for c in range(4) if counts[c] < 16] != []


def test_points_are_class_conditional():
    ds = _dataset()
    splits = data.make_splits(len(ds), 60, seed=0)
    sampler = data.PointSampler(ds.labels, splits, n_val=16)
    classes, x_idx, val_idx = sampler.sample(np.random.default_rng(0), 32)
    assert val_idx.shape == (32, 16)
    assert np.array_equal(ds.labels[x_idx], classes)
    assert np.all(ds.labels[val_idx] == classes[:, None])
    assert np.isin(x_idx, splits.search).all() and np.isin(val_idx, splits.val).all()
    assert len(set(classes.tolist())) > 1


def _builder(ds, executor, n_points=2, exp_g=2, factor=2, repeat=False, n_rep=1):
    splits = data.make_splits(len(ds), 60, seed=0)
    cols, groups = data.dense_columns(CANDS, repeat, n_rep)
    return data.StepBuilder(ds, data.PointSampler(ds.labels, splits, 4), executor, "cifar",
                            n_points, exp_g, factor, cols, groups, seed=11)


def test_stage_batch_shapes():
    ds = _dataset()
    ex = Executor(Augmenter(CANDS, L_MAGS, 8))
    b = _builder(ds, ex)
    stage1 = b.finish(b.part(0, 0, []), 0, 0, None)
    assert stage1["aug"].shape == (2, 29, 8, 8, 3) and stage1["aug"].dtype == np.uint8
    assert stage1["val"].shape == (2, 4, 8, 8, 3) and stage1["val_labels"].shape == (2, 4)
    assert np.all(stage1["val_labels"] == stage1["labels"][:, None])
    uniform = np.full(29, 1 / 29)
    stage2 = b.finish(b.part(1, 3, [uniform]), 1, 3, uniform)
    assert stage2["gtr"].shape == (2, 29 * 2, 8, 8, 3)
    assert stage2["dense"].shape == (2, 2, 29, 8, 8, 3)
    assert "dense_groups" not in stage2 and "gtr_prefix" not in stage2
    rep = _builder(ds, ex, repeat=True, n_rep=3)
    batch = rep.finish(rep.part(1, 0, [uniform]), 1, 0, uniform)
    assert batch["dense"].shape[2] == 29 + 3 * 2  # three random ops, each 3 times
    assert np.array_equal(np.bincount(batch["dense_groups"]), [1] * 26 + [3, 3, 3])


def test_stage1_dense_is_each_candidate_of_x():
    ds = _dataset()
    b = _builder(ds, Executor(Augmenter(CANDS, L_MAGS, 8)))
    part = b.part(0, 0, [])
    ident = [n for n, _ in CANDS].index("Identity")
    invert = [n for n, _ in CANDS].index("Invert")
    x = part["aug"][:, ident]  # uint8: the Searcher normalises on the device
    np.testing.assert_array_equal(part["aug"][:, invert], 255 - x)


def test_gtr_last_op_follows_current_layer_probs():
    ds = _dataset()
    b = _builder(ds, Executor(Augmenter(CANDS, L_MAGS, 8)))
    names = [n for n, _ in CANDS]
    ident, invert = np.eye(29)[names.index("Identity")], np.eye(29)[names.index("Invert")]
    part = b.part(1, 0, [ident])
    plain = b.finish(part, 1, 0, ident)["gtr"]
    inverted = b.finish(part, 1, 0, invert)["gtr"]
    assert plain.dtype == np.uint8
    np.testing.assert_array_equal(inverted, 255 - plain)


def test_stage_k_images_go_through_the_frozen_layers_first():
    """Layer k's dense set and g_tr copies start from x passed through layers 1..k-1 (drawn
    from their probabilities ``frozen``): with Invert frozen they are the inverted images,
    with Invert twice the plain ones again."""
    ds = _dataset()
    b = _builder(ds, Executor(Augmenter(CANDS, L_MAGS, 8)))
    names = [n for n, _ in CANDS]
    ident, invert = np.eye(29)[names.index("Identity")], np.eye(29)[names.index("Invert")]
    col = names.index("Identity")  # the dense column of the Identity candidate
    plain = b.finish(b.part(1, 2, [ident]), 1, 2, ident)
    inverted = b.finish(b.part(1, 2, [invert]), 1, 2, ident)
    np.testing.assert_array_equal(inverted["dense"][:, :, col], 255 - plain["dense"][:, :, col])
    np.testing.assert_array_equal(inverted["gtr"], 255 - plain["gtr"])
    np.testing.assert_array_equal(inverted["val"], plain["val"])  # validation: never augmented
    twice = b.finish(b.part(2, 2, [invert, invert]), 2, 2, ident)
    once = b.finish(b.part(2, 2, [ident, ident]), 2, 2, ident)
    np.testing.assert_array_equal(twice["dense"][:, :, col], once["dense"][:, :, col])


def test_pool_and_prefetch_give_the_same_augmentations():
    ds = _dataset()
    uniform = np.full(29, 1 / 29)
    local = _builder(ds, Executor(Augmenter(CANDS, L_MAGS, 8)))
    pooled_ex = Executor(Augmenter(CANDS, L_MAGS, 8), processes=2)
    try:
        pooled = _builder(ds, pooled_ex)
        a = local.finish(local.part(2, 1, [uniform, uniform]), 2, 1, uniform)
        b = pooled.finish(pooled.part(2, 1, [uniform, uniform]), 2, 1, uniform)
    finally:
        pooled_ex.close()
    for key in ("gtr", "dense", "val", "labels"):
        np.testing.assert_array_equal(a[key], b[key])
    pre = data.Prefetcher(local, 2, 0, 3, [uniform, uniform])
    try:
        for s in range(3):
            got, want = pre.get(s), local.part(2, s, [uniform, uniform])
            np.testing.assert_array_equal(got["dense"], want["dense"])
    finally:
        pre.close()
    other = local.part(2, 2, [uniform, uniform])["dense"]
    assert not np.array_equal(other, local.part(2, 1, [uniform, uniform])["dense"])


def test_imagenet_sized_images_are_cropped_after_the_last_op():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (260, 300, 3), dtype=np.uint8)
    cands = candidates("imagenet", 3)
    names = [n for n, _ in cands]
    aug = Augmenter(cands, 3, 224)
    out = aug(([img], [[names.index("Invert")]], [names.index("Identity"),
                                                  names.index("RandResizeCrop")], 0, True))
    assert out.shape == (2, 224, 224, 3)
    from PIL import Image
    want = np.asarray(center_crop(Image.fromarray(255 - img), 224))
    np.testing.assert_array_equal(out[0], want)
    kept = aug(([img], [[names.index("Invert")]], None, 0, False))
    assert kept[0].shape == (260, 300, 3)  # prefixes keep their own size


def test_pretrain_batches_drop_last_and_augment():
    ds = _dataset(n=100)
    ex = Executor(Augmenter(CANDS, L_MAGS, 8))
    seq = [[n for n, _ in CANDS].index(op) for op in ("RandCrop", "RandFlip", "RandCutout")]
    batches = list(data.pretrain_batches(ds, np.arange(100), 32, 0, 1, ex, seq, "cifar"))
    assert len(batches) == 3 and all(x.shape == (32, 8, 8, 3) for x, _ in batches)
    again = list(data.pretrain_batches(ds, np.arange(100), 32, 0, 1, ex, seq, "cifar"))
    np.testing.assert_array_equal(batches[0][0], again[0][0])
    raw = data.normalize(ds.images, "cifar")
    first_idx = [np.where((raw == x).all(axis=(1, 2, 3)))[0] for x in batches[0][0]]
    assert sum(len(i) for i in first_idx) < 32  # augmented, not the raw images


@pytest.mark.parametrize("space,mean", [("cifar", data.CIFAR_MEAN), ("imagenet",
                                                                     data.IMAGENET_MEAN)])
def test_normalize(space, mean):
    x = np.full((1, 2, 2, 3), 255, np.uint8)
    std = data.CIFAR_STD if space == "cifar" else data.IMAGENET_STD
    np.testing.assert_allclose(data.normalize(x, space)[0, 0, 0], (1 - mean) / std, rtol=1e-6)


def test_tensor_backend_equals_pillow_on_deterministic_ops():
    """The tensor executor (--aug_backend tensor) regroups tasks by layer: with sequences of
    different lengths and dense finals it must give the Pillow executor's pixels."""
    from policy_search.augment import TensorExecutor

    names = [n for n, _ in CANDS]
    pick = {n: names.index(n) for n in ("Invert", "Equalize", "AutoContrast", "Identity")}
    shear = CANDS.index(("ShearX", 0))
    post = CANDS.index(("Posterize", 0))
    images = _dataset(n=6).images
    tasks = [([images[0], images[1]], [[pick["Invert"], shear], []], None, 1, True),
             ([images[2]], [[post]], [pick["Identity"], pick["Equalize"], shear], 2, True),
             ([images[3], images[4], images[5]],
              [[shear, pick["AutoContrast"], pick["Invert"]], [pick["Equalize"]], [post, shear]],
              None, 3, False)]
    aug = Augmenter(CANDS, L_MAGS, 8)
    want, got = Executor(aug).map(tasks), TensorExecutor(aug).map(tasks)
    assert len(got) == len(want) == 3
    for w, g in zip(want, got):
        np.testing.assert_array_equal(np.stack(g), np.stack(w))
    assert not np.array_equal(want[0][1], want[0][0])  # the rows really differ


def test_the_pool_starts_only_when_the_pillow_path_needs_it():
    """--use_pool with the tensor backend: CIFAR-sized tasks never reach the Pillow path, so no
    worker process starts; other sizes fall back to Pillow in the pool."""
    from policy_search.augment import TensorExecutor

    ex = TensorExecutor(Augmenter(CANDS, L_MAGS, 8), processes=2)
    try:
        images = _dataset(n=2).images
        ex.map([([images[0], images[1]], [[1], [2]], None, 1, True)])
        assert ex.pool is None
        big = np.zeros((10, 12, 3), np.uint8)
        out = ex.map([([big], [[0]], None, 2, True)])
        assert ex.pool is not None and out[0].shape == (1, 8, 8, 3)
    finally:
        ex.close()
    assert ex.pool is None


def test_background_thread_stops_when_closed_and_hands_errors_on():
    """An interrupted epoch closes its background thread (no thread may be left inside
    TensorFlow or torch when the process exits); an error in the thread reaches the consumer."""
    import itertools
    import threading

    started = threading.active_count()
    with data.Background(itertools.count(), depth=2, name="endless") as items:
        assert [next(items) for _ in range(5)] == [0, 1, 2, 3, 4]
        thread = items._thread
        assert thread.is_alive()
    assert not thread.is_alive() and threading.active_count() == started

    def failing():
        yield 1
        raise ValueError("broken batch")

    with data.Background(failing()) as items:
        assert next(items) == 1
        with pytest.raises(ValueError, match="broken batch"):
            next(items)
    assert list(data.Background(iter(range(3)))) == [0, 1, 2]

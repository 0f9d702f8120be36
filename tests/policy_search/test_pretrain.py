"""Pretraining (policy_search/pretrain.py): checkpointed every epoch and resumed bit for bit,
weights that are not finite refused, a loss that is not finite stops it, a full disk ends in
one line, and the provenance of reused weights counted exactly."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helper, in any import mode
from policy_search_helper import (ROOT, common_flags, make_data, search,  # noqa: E402
                                  search_env, stop_when_logged)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny generated dataset and the flags of a small search on it."""
    tmp = tmp_path_factory.mktemp("pretrain")
    return tmp, common_flags(make_data(tmp / "data"))


def test_provenance_counts_the_images_trained_on_exactly():
    """The README's ImageNet recipe: weights pretrained on all 881,167 images not held out,
    reused by a search with --pretrain_size 5000: the same 400,000 validation images, so none
    of them was trained on, but 435,583 of the 876,167 search images were (all of the other
    run's pretraining images past this run's first 5000)."""
    from policy_search.data import make_splits
    from policy_search.pretrain import trained_on_search_images

    n = 1281167
    made = {"dataset": "imagenet", "seed": 1, "splits": [400000, 440583, 440584]}
    mine = {"dataset": "imagenet", "seed": 1, "splits": [400000, 5000, 876167]}
    splits = make_splits(n, 5000, 1, "imagenet")
    message = trained_on_search_images(made, mine, splits, "imagenet")
    assert "0 of this search's 400000 validation images and 435583 of its 876167 search" \
        in message
    same = dict(made, splits=[400000, 5000, 876167])
    assert trained_on_search_images(same, mine, splits, "imagenet") is None
    other_seed = trained_on_search_images(dict(made, seed=2), mine, splits, "imagenet")
    assert "0 of this search" not in other_seed and "validation images" in other_seed
    assert "may include" in trained_on_search_images(dict(made, dataset="cifar10"), mine,
                                                     splits, "imagenet")
    assert "unreadable" in trained_on_search_images({"dataset": "imagenet"}, mine, splits,
                                                    "imagenet")
    assert trained_on_search_images(None, mine, splits, "imagenet") is None


def _weights_of(path):
    """Every array of a Keras .weights.h5 file, by its path in the file."""
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return out


def _start(flags, tmp):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "DeepAA_search.py"), *flags],
                            cwd=tmp, env=search_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def test_pretraining_cut_short_resumes_to_the_uninterrupted_weights(run):
    """Pretraining is checkpointed after every epoch: a Ctrl-C in epoch 2 of 4 (exit 130, one
    line, no traceback), then a SIGKILL in epoch 3 of the resumed run: two --resume later the
    weights equal those of an uninterrupted pretraining, bit for bit."""
    tmp, common = run
    flags = common + ["--nb_epochs", "4", "--batch_size", "32", "--pretrain_only"]
    search(flags + ["--results_dir", str(tmp / "pre_full")], tmp)
    cut = tmp / "pre_cut"
    log = cut / "search.log"
    code, err = stop_when_logged(_start(flags + ["--results_dir", str(cut)], tmp), log,
                                  "pretrain epoch 1/4", signal.SIGINT)
    assert code == 130 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1].endswith(
        "pretrain_checkpoint.npz is kept: continue with --resume")
    refused = search(flags + ["--results_dir", str(cut)], tmp, expect=2)
    assert "pass --resume" in refused.stderr  # a new run there would start over
    code, err = stop_when_logged(_start(flags + ["--results_dir", str(cut), "--resume"], tmp),
                                  log, "pretrain epoch 3/4", signal.SIGKILL)
    assert code == -signal.SIGKILL
    search(flags + ["--results_dir", str(cut), "--resume"], tmp)
    text = log.read_text()
    assert "pretraining resumed after epoch 1 of 4" in text
    assert "pretraining resumed after epoch 3 of 4" in text
    full = _weights_of(tmp / "pre_full" / "pretrained_WRN_10_1.weights.h5")
    resumed = _weights_of(cut / "pretrained_WRN_10_1.weights.h5")
    assert full.keys() == resumed.keys() and len(full) > 10
    for name in full:
        assert np.array_equal(full[name], resumed[name]), name
    assert not (cut / "pretrain_checkpoint.npz").exists()  # done: the weights are the product


@pytest.mark.parametrize("case, words", [("a NaN", "not finite"),
                                         ("another model", "weights of another model")])
def test_weights_that_do_not_fit_are_refused_before_anything_is_written(run, case, words):
    """A .weights.h5 with a NaN in one kernel (from a pretraining that diverged elsewhere), or
    the weights of WRN-10-1 given to a WRN-16-1 search (Keras used to warn once per layer):
    one line naming --pretrained, exit 2, no results folder."""
    from networks.tf_models import build_model

    tmp, common = run
    model = build_model("WRN_10_1", 4, (16, 16, 3))
    if case == "a NaN":
        kernel = next(w for w in model.weights if len(w.shape) == 4)
        value = kernel.numpy()
        value[0, 0, 0, 0] = np.nan
        kernel.assign(value)
    bad = tmp / f"{case.replace(' ', '_')}.weights.h5"
    model.save_weights(bad)
    flags = common + (["--use_model", "WRN_16_1"] if case == "another model" else [])
    out = tmp / f"refused_{case.replace(' ', '_')}"
    res = search(flags + ["--pretrained", str(bad), "--results_dir", str(out)], tmp, expect=2)
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr  # TensorFlow's start-up too
    assert res.stderr.startswith("DeepAA_search.py: error: --pretrained: ") and words in res.stderr
    assert not out.exists()


@pytest.mark.parametrize("epochs, fails", [("1", "pretrain_checkpoint.npz"),
                                            ("0", "pretrained_WRN_10_1.weights.h5")])
def test_a_disk_that_fills_up_ends_in_one_line_and_leaves_no_temporary_file(run, epochs, fails):
    """Files of at most 200 kB (RLIMIT_FSIZE, as a full disk: writes beyond fail): the first
    pretraining checkpoint, or without pretraining epochs the weights file (written by h5py
    through a temporary file), cannot be written; one line naming it, exit 2, no temporary
    file left."""
    import resource

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    tmp, common = run
    out = tmp / f"full_disk{epochs}"
    res = search(common + ["--nb_epochs", epochs, "--batch_size", "32", "--results_dir",
                           str(out)], tmp, expect=2, preexec_fn=small_files)
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("DeepAA_search.py: error: cannot read or write") and fails in last
    assert not [p for p in out.iterdir() if ".tmp" in p.name] and not (out / fails).exists()


def test_a_loss_that_is_not_finite_stops_the_epoch_with_one_line(tmp_path):
    """An epoch whose loss turns NaN (a learning rate too high) stops at that step with a
    UsageError naming --pretrain_lr; the epochs before it stay checkpointed."""
    from augmentation.space import candidates
    from deepaa_data import ArrayDataset
    from policy_search import config, pretrain
    from policy_search.augment import Augmenter, Executor

    data = ArrayDataset(np.zeros((64, 8, 8, 3), np.uint8), np.arange(64) % 4, list("abcd"))
    executor = Executor(Augmenter(candidates("cifar", 3), 3, 8))
    seq = pretrain.pretrain_sequence(executor.augmenter.candidates, "cifar")
    args = config.parse_args(["--batch_size", "16", "--seed", "1"])
    losses = iter([1.0, 0.5, float("nan"), 0.1])
    calls = []

    def train_step(images, labels):
        calls.append(len(labels))
        return next(losses), 1.0

    assert pretrain._epoch(args, data, np.arange(32), executor, seq, "cifar", 0, train_step,
                           None) == (0.75, 1 / 16)
    with pytest.raises(config.UsageError, match="^--pretrain_lr: pretraining diverged in epoch "
                                                "2 \\(loss nan\\)"):
        pretrain._epoch(args, data, np.arange(64), executor, seq, "cifar", 1, train_step, None)
    assert calls == [16, 16, 16]  # stopped at the NaN, not at the end of the epoch

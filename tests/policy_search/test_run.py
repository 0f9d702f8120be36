"""End-to-end searches through the CLI on a tiny generated dataset: output, resume, export."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from augmentation import load_policy
from augmentation.convert import npz_to_policy
from augmentation.space import candidates
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helper, in any import mode
from policy_search_helper import (ROOT, common_flags, make_data as _make_data,  # noqa: E402
                                  search as _search, search_env, stop_and_resume,
                                  stop_when_logged)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One uninterrupted search with pretraining (2 layers x 4 steps, 29 candidates)."""
    tmp = tmp_path_factory.mktemp("search")
    common = common_flags(_make_data(tmp / "data")) + ["--checkpoint_every", "2"]
    _search(common + ["--nb_epochs", "1", "--batch_size", "32", "--results_dir",
                      str(tmp / "full"), "--export_npz"], tmp)
    return tmp, common


def test_end_to_end_writes_a_policy_that_moved(run):
    tmp, _ = run
    out = tmp / "full"
    policy = load_policy(out / "policy.yaml")
    assert policy.n_layers == 2 and policy.n_candidates == 29 and policy.l_mags == 3
    init = np.zeros(29)
    init[0] = 8.0
    log_init = init - np.log(np.exp(init).sum())
    # Adam moves each logit by about policy_lr (0.025) per step: 4 steps give ~0.1.
    for layer in range(2):
        moved = np.log(policy.probs[layer]) - log_init
        assert np.abs(moved - moved.mean()).max() > 0.05
    meta = policy.meta
    assert meta["seed"] == 3 and meta["model"] == "WRN_10_1"
    assert [len(t) for t in meta["cos_sim_trace"]] == [4, 4]
    assert all(-1.0 - 1e-9 <= c <= 1.0 + 1e-9 for t in meta["cos_sim_trace"] for c in t)
    assert len(meta["entropy"]) == 2 and meta["flags"]["search_bno"] == 4
    assert (out / "pretrained_WRN_10_1.weights.h5").is_file()
    made = json.loads((out / "pretrained_WRN_10_1.weights.h5.json").read_text())
    assert made["seed"] == 3 and sum(made["splits"]) == 480  # the images it was trained on
    log = (out / "search.log").read_text()
    assert "pretrain epoch 1/1" in log
    # The pretraining taught the model something: well above chance (0.25) on validation.
    accuracy = float(log.split("pretrained model: validation accuracy ")[1].split()[0])
    assert accuracy > 0.5 and "near chance" not in log
    assert any((out / "tensorboard").iterdir())
    assert json.loads((out / "summary.json").read_text())["entropy"] == meta["entropy"]
    np.testing.assert_allclose(npz_to_policy(out / "policy.npz").probs, policy.probs, atol=1e-6)
    assert not [p for p in out.iterdir() if ".tmp." in p.name]  # atomic writes left no temp


def test_pretrain_only_writes_weights_and_no_policy(run):
    tmp, common = run
    out = tmp / "pretrain_only"
    _search(common + ["--nb_epochs", "1", "--batch_size", "32", "--pretrain_only",
                      "--results_dir", str(out)], tmp)
    assert (out / "pretrained_WRN_10_1.weights.h5").is_file()
    made = json.loads((out / "pretrained_WRN_10_1.weights.h5.json").read_text())
    assert made["seed"] == 3 and sum(made["splits"]) == 480  # the images it was trained on
    assert not (out / "policy.yaml").exists() and not (out / "checkpoint.npz").exists()


def _trained(n, made_seed, made_pretrain, seed, pretrain_size):
    """(validation, search) images of a split that the other split's pretraining set holds,
    counted with numpy's set operations from the two splits."""
    from policy_search.data import make_splits

    made, mine = make_splits(n, made_pretrain, made_seed), make_splits(n, pretrain_size, seed)
    return (len(np.intersect1d(made.pretrain, mine.val)),
            len(np.intersect1d(made.pretrain, mine.search)))


@pytest.mark.parametrize("change", [("--seed", "4"), ("--pretrain_size", "64")])
def test_weights_trained_on_this_searchs_images_are_flagged_with_the_numbers(run, change):
    """Weights pretrained with seed 3 on 192 images, reused by a search with seed 4 (other
    validation images) or with --pretrain_size 64 (the same validation images, but 128 of the
    search images were trained on): the log says how many of each were trained on."""
    tmp, common = run
    weights = str(tmp / "full" / "pretrained_WRN_10_1.weights.h5")
    out = tmp / f"other{change[0]}"
    flags = list(common)
    if change[0] in flags:
        flags[flags.index(change[0]) + 1] = change[1]
    else:
        flags += list(change)
    _search(flags + ["--pretrained", weights, "--results_dir", str(out),
                     "--stop_after_steps", "1"], tmp)
    seed, size = (4, 1500) if change[0] == "--seed" else (3, 64)
    val, search = _trained(480, 3, 192, seed, size)
    assert (val > 0) == (change[0] == "--seed") and search > 0
    assert f"{val} of this search's 96 validation images and {search} of its " in \
        (out / "search.log").read_text()


def test_two_workers_write_one_set_of_outputs(run):
    """MultiWorker (TF_CONFIG, two processes on loopback): both run the search, only the chief
    (worker 0) writes the results folder and the policy; the other's scratch folder is gone."""
    import policy_search_helper

    tmp, common = run
    weights = str(tmp / "full" / "pretrained_WRN_10_1.weights.h5")
    scratch_root = tmp / "worker_tmp"
    scratch_root.mkdir()
    out = tmp / "workers"
    command = [sys.executable, str(ROOT / "DeepAA_search.py"), *common, "--pretrained", weights,
               "--results_dir", str(out), "--aug_backend", "pil"]  # the Pillow path end to end
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="",
               TF_CPP_MIN_LOG_LEVEL="2", TMPDIR=str(scratch_root))
    policy_search_helper.run_workers([command, command], env)
    policy = load_policy(out / "policy.yaml")
    assert policy.n_layers == 2
    log = (out / "search.log").read_text()
    assert log.count("DeepAA search:") == 1  # one writer
    assert "2 replica(s)" in log and policy.meta["flags"]["aug_backend"] == "pil"
    assert "may include images" not in log  # the weights come from this seed's split
    assert not any(p.name.startswith("deepaa-worker-") for p in scratch_root.iterdir())


def test_stop_and_resume_gives_the_same_policy(run):
    tmp, common = run
    stop_and_resume(tmp, common, str(tmp / "full" / "pretrained_WRN_10_1.weights.h5"))


def test_importances_that_are_not_finite_stop_with_one_line_and_resume(run):
    """The 6th step finds importances that are not finite: one line naming the step, exit 2,
    the checkpoint at that step; --resume then ends with the uninterrupted policy."""
    tmp, common = run
    out = tmp / "not_finite"
    args = common + ["--pretrained", str(tmp / "full" / "pretrained_WRN_10_1.weights.h5"),
                     "--results_dir", str(out)]
    res = subprocess.run([sys.executable, str(Path(__file__).parent / "interrupt_search.py"),
                          "nan", "6", *args], cwd=tmp, capture_output=True, text=True,
                         timeout=300, env=search_env())
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert last.startswith("DeepAA_search.py: error: --pretrained: layer 2 step 1: importances")
    _search(args + ["--resume"], tmp)
    assert "resumed at layer 2, step 1" in (out / "search.log").read_text()
    full = load_policy(tmp / "full" / "policy.yaml")
    np.testing.assert_allclose(load_policy(out / "policy.yaml").probs, full.probs, atol=1e-9)


@pytest.fixture(scope="module")
def longer(run):
    """An uninterrupted search of 2 layers x 12 steps from the module run's weights."""
    tmp, common = run
    weights = str(tmp / "full" / "pretrained_WRN_10_1.weights.h5")
    flags = [a if common[i - 1] != "--search_bno" else "12" for i, a in enumerate(common)]
    flags += ["--pretrained", weights]
    _search(flags + ["--results_dir", str(tmp / "ref12")], tmp)
    return tmp, flags, load_policy(tmp / "ref12" / "policy.yaml")


def _assert_same_policy(a, b):
    np.testing.assert_allclose(a.probs, b.probs, rtol=0, atol=1e-9)
    assert a.meta["cos_sim_trace"] == b.meta["cos_sim_trace"]


@pytest.mark.parametrize("where", ["between", "inside"])
def test_interrupt_then_resume_gives_the_uninterrupted_policy(longer, where):
    """A Ctrl-C between two steps, or inside a step after its update: the checkpoint points at
    the first step not completed, with the policy as it was before that step."""
    tmp, flags, full = longer
    out = tmp / f"cut_{where}"
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="",
               TF_CPP_MIN_LOG_LEVEL="2")
    res = subprocess.run([sys.executable, str(Path(__file__).parent / "interrupt_search.py"),
                          where, "15", *flags, "--results_dir", str(out),
                          "--checkpoint_every", "100"],
                         cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 130, res.stderr[-2000:]
    assert "resumed" not in (out / "search.log").read_text()
    _search(flags + ["--results_dir", str(out), "--resume"], tmp)
    assert "resumed at layer 2, step 2" in (out / "search.log").read_text()  # 12 + 3rd
    _assert_same_policy(load_policy(out / "policy.yaml"), full)


def test_ctrl_c_signal_mid_search_then_resume(longer):
    """A real SIGINT at some moment of layer 2: exit 130 with a checkpoint; --resume ends with
    the uninterrupted run's policy."""
    import signal

    tmp, flags, full = longer
    cut = tmp / "cut_signal"
    proc = subprocess.Popen([sys.executable, str(ROOT / "DeepAA_search.py"), *flags,
                             "--results_dir", str(cut), "--debug", "--checkpoint_every", "100"],
                            cwd=tmp, env=search_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    # once layer 2 is under way
    code, err = stop_when_logged(proc, cut / "search.log", "layer 2 step 2:", signal.SIGINT)
    assert code == 130, err[-2000:]
    assert (cut / "checkpoint.npz").is_file() and not (cut / "policy.yaml").exists()
    _search(flags + ["--results_dir", str(cut), "--resume"], tmp)
    _assert_same_policy(load_policy(cut / "policy.yaml"), full)


def _make_imagenet_folder(root, classes=4, per_class=24, seed=0):
    """An ImageFolder tree ``root/train/<wnid>/*.JPEG`` of small non-square colour-coded
    photos: the ImageNet path reads, crops and resizes them like the real thing."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / "train" / f"n{c:08d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            h, w = rng.integers(36, 60, 2)
            x = rng.integers(0, 80, (h, w, 3))
            x[..., c % 3] += 140
            x[: h // 2] += 30 * (c >= 3)
            Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(folder / f"{i}.JPEG")
    return root


def test_imagenet_search_end_to_end(tmp_path):
    """The ImageNet space end to end on a tiny ImageFolder tree: pretrain-only weights, then a
    search that restores them (as the ImageNet search always does), on 224 x 224 crops of the
    ImageNet candidates; half the images are held out for validation (at most 400,000)."""
    data = _make_imagenet_folder(tmp_path / "imagenet")
    common = ["--dataset", "imagenet", "--dataroot", str(data), "--n_classes", "4",
              "--use_model", "WRN_10_1", "--preset", "cpu", "--l_mags", "3", "--seed", "2",
              "--pretrain_size", "24"]
    _search(common + ["--pretrain_only", "--nb_epochs", "1", "--batch_size", "8",
                      "--results_dir", str(tmp_path / "pre")], tmp_path)
    weights = tmp_path / "pre" / "pretrained_WRN_10_1.weights.h5"
    assert json.loads(weights.with_name(weights.name + ".json").read_text())["splits"] == \
        [48, 24, 24]
    out = tmp_path / "search"
    _search(common + ["--pretrained", str(weights), "--n_policies", "1", "--search_bno", "2",
                      "--EXP_G", "1", "--EXP_gT_factor", "1", "--train_same_labels", "1",
                      "--n_val_per_point", "4", "--results_dir", str(out)], tmp_path)
    policy = load_policy(out / "policy.yaml")
    assert policy.space == "imagenet" and policy.n_layers == 1
    assert policy.candidates == candidates("imagenet", 3)
    assert len(policy.meta["cos_sim_trace"][0]) == 2
    assert abs(policy.probs.sum() - 1) < 1e-6
    log = (out / "search.log").read_text()
    assert "on 224x224 images" in log and "may include images" not in log

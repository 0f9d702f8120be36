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
from policy_search_helper import ROOT, make_search_data as _make_data  # noqa: E402
from policy_search_helper import run_search as _search, stop_and_resume  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One uninterrupted search with pretraining (2 layers x 4 steps, 29 candidates)."""
    tmp = tmp_path_factory.mktemp("search")
    data = _make_data(tmp / "data")
    common = ["--dataset", f"npz:{data}", "--n_classes", "4", "--use_model", "WRN_10_1",
              "--preset", "cpu", "--l_mags", "3", "--n_policies", "2", "--search_bno", "4",
              "--seed", "3", "--checkpoint_every", "2"]
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


def test_weights_of_another_split_are_flagged(run):
    """Weights pretrained with seed 3 reused by a search with seed 4: its validation split
    differs, so the log warns that validation images may have been trained on."""
    tmp, common = run
    weights = str(tmp / "full" / "pretrained_WRN_10_1.weights.h5")
    out = tmp / "other_seed"
    flags = list(common)
    flags[flags.index("--seed") + 1] = "4"
    _search(flags + ["--pretrained", weights, "--results_dir", str(out),
                     "--stop_after_steps", "1"], tmp)
    assert "may include images the model was trained on" in (out / "search.log").read_text()


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
    import time

    tmp, flags, full = longer
    cut = tmp / "cut_signal"
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="",
               TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen([sys.executable, str(ROOT / "DeepAA_search.py"), *flags,
                             "--results_dir", str(cut), "--debug", "--checkpoint_every", "100"],
                            cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        log = cut / "search.log"
        while time.time() < deadline:  # wait until layer 2 is under way
            if log.exists() and "layer 2 step 2:" in log.read_text():
                break
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err.decode()[-2000:]
    assert (cut / "checkpoint.npz").is_file() and not (cut / "policy.yaml").exists()
    _search(flags + ["--results_dir", str(cut), "--resume"], tmp)
    _assert_same_policy(load_policy(cut / "policy.yaml"), full)


def test_same_validation_ignores_the_pretraining_size():
    """Weights pretrained on all non-validation images (as pretrained_imagenet/README.md does)
    suit a search with the default --pretrain_size: the same seed and validation size hold out
    the same images."""
    from policy_search.pretrain import same_validation

    made = {"dataset": "imagenet", "seed": 1, "splits": [400000, 440583, 440584]}
    mine = {"dataset": "imagenet", "seed": 1, "splits": [400000, 5000, 876167]}
    assert same_validation(made, mine)
    assert not same_validation(dict(made, seed=2), mine)
    assert not same_validation(dict(made, splits=[10000, 5000, 1266167]), mine)
    assert not same_validation({"dataset": "imagenet"}, mine)


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

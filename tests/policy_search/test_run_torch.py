"""End-to-end PyTorch searches (--backend torch) through the CLI on a tiny generated dataset:
output without TensorFlow, resume, and torchrun processes on the CPU (gloo)."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from augmentation import load_policy
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helper, in any import mode
from policy_search_helper import (check_trace, common_flags, make_data,  # noqa: E402
                                  search, search_env, stop_and_resume, stop_when_logged)

NO_TF = [sys.executable, str(Path(__file__).resolve().parent / "search_without_tf.py")]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One uninterrupted PyTorch search with pretraining (2 layers x 4 steps, 29 candidates),
    in a process that must not import TensorFlow."""
    tmp = tmp_path_factory.mktemp("search_torch")
    data = make_data(tmp / "data")
    common = ["--backend", "torch", *common_flags(data), "--checkpoint_every", "2"]
    search(common + ["--nb_epochs", "1", "--batch_size", "32", "--results_dir",
                     str(tmp / "full"), "--export_npz"], tmp, command=NO_TF)
    return tmp, common


def test_torch_search_writes_the_same_files_without_tensorflow(run):
    tmp, _ = run
    out = tmp / "full"
    policy = load_policy(out / "policy.yaml")
    assert policy.n_layers == 2 and policy.n_candidates == 29
    assert policy.meta["backend"] == "torch" and policy.meta["flags"]["backend"] == "torch"
    init = np.zeros(29)
    init[0] = 8.0
    log_init = init - np.log(np.exp(init).sum())
    for layer in range(2):  # Adam moves each logit by about policy_lr per step
        moved = np.log(policy.probs[layer]) - log_init
        assert np.abs(moved - moved.mean()).max() > 0.05
    assert [len(t) for t in policy.meta["cos_sim_trace"]] == [4, 4]
    assert all(-1.0 - 1e-9 <= c <= 1.0 + 1e-9 for t in policy.meta["cos_sim_trace"] for c in t)
    made = json.loads((out / "pretrained_WRN_10_1.pt.json").read_text())
    assert made["seed"] == 3 and sum(made["splits"]) == 480
    log = (out / "search.log").read_text()
    assert "pretrain epoch 1/1" in log and "PyTorch" in log and "1 replica(s)" in log
    accuracy = float(log.split("pretrained model: validation accuracy ")[1].split()[0])
    assert accuracy > 0.5
    assert any((out / "tensorboard").iterdir())
    assert (out / "policy.npz").is_file() and (out / "checkpoint.npz").is_file()
    assert not [p for p in out.iterdir() if ".tmp." in p.name]


def test_torch_search_records_the_trace(run):
    """The shared run loop records every step's probabilities and importances for the PyTorch
    backend too: checkpoint, trace.json and meta.op_prob_trace."""
    tmp, _ = run
    check_trace(tmp / "full", n_layers=2, steps=4, n_candidates=29)


def test_stop_and_resume_gives_the_same_policy(run):
    tmp, common = run
    stop_and_resume(tmp, common, str(tmp / "full" / "pretrained_WRN_10_1.pt"))


def test_torchrun_two_processes_give_the_one_process_policy(run):
    """torchrun with two CPU processes (gloo): each rank takes half the points of a step, the
    importances are gathered, both update the policy alike and only rank 0 writes; the
    policy is the one-process search's (same weights, same points)."""
    tmp, common = run
    weights = str(tmp / "full" / "pretrained_WRN_10_1.pt")
    one, two = tmp / "one_process", tmp / "two_processes"
    flags = common + ["--pretrained", weights, "--search_bno", "2", "--aug_backend", "pil"]
    search(flags + ["--results_dir", str(one)], tmp)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2", NO_TF[1]]
    search(flags + ["--results_dir", str(two)], tmp, command=torchrun)
    log = (two / "search.log").read_text()
    assert log.count("DeepAA search:") == 1 and "2 replica(s)" in log and "2 processes" in log
    a, b = load_policy(one / "policy.yaml"), load_policy(two / "policy.yaml")
    np.testing.assert_allclose(b.probs, a.probs, rtol=0, atol=1e-7)
    np.testing.assert_allclose(np.array(b.meta["cos_sim_trace"]),
                               np.array(a.meta["cos_sim_trace"]), rtol=0, atol=1e-6)
    # Rank 0 records the importances of every rank's points.
    traces = [check_trace(folder, n_layers=2, steps=2, n_candidates=29) for folder in (one, two)]
    for k in range(2):
        np.testing.assert_allclose(traces[1].matrix("importance_std", k),
                                   traces[0].matrix("importance_std", k), rtol=1e-4, atol=1e-7)


def test_scalars_without_tensorboard_are_json_lines(tmp_path, monkeypatch):
    from policy_search.backend_torch import ScalarWriter

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not installed
    writer = ScalarWriter(str(tmp_path / "tensorboard"))
    writer.scalar("cos_sim", np.float64(0.5), 3)
    writer.scalar("entropy/layer1", 1.25, 4)
    writer.close()
    lines = (tmp_path / "tensorboard" / "scalars.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"tag": "cos_sim", "value": 0.5, "step": 3},
        {"tag": "entropy/layer1", "value": 1.25, "step": 4}]


def _state_dict(path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def test_pretraining_cut_short_resumes_to_the_uninterrupted_weights(run):
    """The pretraining checkpoint of every epoch holds for --backend torch too: a SIGKILL in
    epoch 3 of 3, then --resume: the weights equal those of an uninterrupted pretraining, bit
    for bit."""
    import signal
    import subprocess

    tmp, common = run
    flags = common + ["--nb_epochs", "3", "--batch_size", "32", "--pretrain_only"]
    search(flags + ["--results_dir", str(tmp / "pre_full")], tmp, command=NO_TF)
    cut = tmp / "pre_cut"
    proc = subprocess.Popen([*NO_TF, *flags, "--results_dir", str(cut)], cwd=tmp,
                            env=search_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    code, _ = stop_when_logged(proc, cut / "search.log", "pretrain epoch 2/3", signal.SIGKILL)
    assert code == -signal.SIGKILL and (cut / "pretrain_checkpoint.npz").is_file()
    search(flags + ["--results_dir", str(cut), "--resume"], tmp, command=NO_TF)
    assert "pretraining resumed after epoch 2 of 3" in (cut / "search.log").read_text()
    full = _state_dict(tmp / "pre_full" / "pretrained_WRN_10_1.pt")
    resumed = _state_dict(cut / "pretrained_WRN_10_1.pt")
    assert full.keys() == resumed.keys() and len(full) > 10
    for name in full:
        assert full[name].equal(resumed[name]), name
    assert not (cut / "pretrain_checkpoint.npz").exists()


@pytest.mark.parametrize("case, words", [("a NaN", "not finite"),
                                         ("another model", "weights of another model")])
def test_weights_that_do_not_fit_are_refused_before_anything_is_written(run, case, words):
    """A .pt with a NaN in one kernel, or WRN-10-1 weights given to a WRN-16-1 search: one
    line naming --pretrained, exit 2, no results folder."""
    import torch

    tmp, common = run
    state = _state_dict(tmp / "full" / "pretrained_WRN_10_1.pt")
    if case == "a NaN":
        kernel = next(v for v in state.values() if v.dim() == 4)
        kernel[0, 0, 0, 0] = float("nan")
    bad = tmp / f"{case.replace(' ', '_')}.pt"
    torch.save(state, bad)
    flags = common + (["--use_model", "WRN_16_1"] if case == "another model" else [])
    out = tmp / f"refused_{case.replace(' ', '_')}"
    res = search(flags + ["--pretrained", str(bad), "--results_dir", str(out)], tmp, expect=2,
                 command=NO_TF)
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert res.stderr.startswith("DeepAA_search.py: error: --pretrained: ") and words in res.stderr
    assert not out.exists()

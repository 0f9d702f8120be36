"""End-to-end PyTorch searches (--backend torch) through the CLI on a tiny generated dataset:
output without TensorFlow, resume, and torchrun processes on the CPU (gloo)."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from augmentation import load_policy
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helper, in any import mode
from policy_search_helper import (check_trace, make_search_data, run_search,  # noqa: E402
                                  stop_and_resume)

NO_TF = [sys.executable, str(Path(__file__).resolve().parent / "search_without_tf.py")]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One uninterrupted PyTorch search with pretraining (2 layers x 4 steps, 29 candidates),
    in a process that must not import TensorFlow."""
    tmp = tmp_path_factory.mktemp("search_torch")
    data = make_search_data(tmp / "data")
    common = ["--backend", "torch", "--dataset", f"npz:{data}", "--n_classes", "4",
              "--use_model", "WRN_10_1", "--preset", "cpu", "--l_mags", "3", "--n_policies",
              "2", "--search_bno", "4", "--seed", "3", "--checkpoint_every", "2"]
    run_search(common + ["--nb_epochs", "1", "--batch_size", "32", "--results_dir",
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
    run_search(flags + ["--results_dir", str(one)], tmp)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2", NO_TF[1]]
    run_search(flags + ["--results_dir", str(two)], tmp, command=torchrun)
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

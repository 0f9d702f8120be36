"""The demo: its search command is valid for the search CLI, and a smoke run goes end to end."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # demo.py is a top-level script of the repository, not installed
    sys.path.insert(0, ROOT)

import demo  # noqa: E402


@pytest.mark.parametrize("profile", ["full", "smoke"])
def test_search_flags_are_accepted_by_the_search_cli(profile, tmp_path):
    """The flags the demo passes parse and validate in the search's own config module (no
    TensorFlow needed), with the cpu preset and three layers in the full demo."""
    from deepaa_data.synthetic import make_synthetic
    from policy_search import config

    make_synthetic(str(tmp_path / "data"), n_train=60, n_test=20)
    argv = ["--dataset", f"npz:{tmp_path / 'data'}", "--n_classes", "10", "--use_model",
            "WRN_10_1", *demo.PROFILES[profile]["search"], "--out", str(tmp_path / "p.yaml")]
    args = config.parse_args(argv)
    config.validate(args)
    assert args.preset == "cpu" and args.use_model == "WRN_10_1"
    if profile == "full":
        from policy_search.config import CPU

        # The demo's search is the cpu preset itself, not a hand-tuned variant: every preset
        # value stands, and the preset pretrains for hundreds of SGD steps on the demo's data
        # (a model at chance gives noise for importances).
        assert demo.PROFILES["full"]["search"] == ["--preset", "cpu"]
        assert all(getattr(args, key) == value for key, value in CPU.items())
        from policy_search.data import make_splits

        prof = demo.PROFILES["full"]
        splits = make_splits(prof["n_train"], args.pretrain_size, args.seed)
        assert len(splits.pretrain) // args.batch_size * args.nb_epochs >= 400
        # The trainer sees a subset of what the search sees (same training time as before).
        assert prof["train_size"] < prof["n_train"]


def test_table_shows_mean_spread_and_seeds():
    text = demo.table({"DeepAA": [80.0, 84.0], "default": [70.0], "none": []}, "t")
    rows = [r for r in text.splitlines() if r.startswith("| ") and "---" not in r]
    assert rows[1] == "| DeepAA (searched policy) | 2 | 82.0 ± 2.0 | 80.0, 84.0 |"
    assert rows[2].startswith("| default (crop, flip, cutout) | 1 | 70.0 ± 0.0 |")
    assert len(rows) == 3  # augmentations without results are left out


def test_smoke_run_end_to_end(tmp_path):
    """Data -> training with a policy and both baselines -> table -> pictures, at tiny sizes.
    The search is replaced by a given one-layer policy here (the search has its own end-to-end
    test; its flags are checked above)."""
    from augmentation.policy import Policy, save_policy

    policy = tmp_path / "tiny_policy.yaml"
    save_policy(Policy.uniform(1, "cifar", 3, {"name": "tiny"}), policy)
    out = tmp_path / "demo_out"
    env = dict(os.environ, PYTHONPATH=ROOT, CUDA_VISIBLE_DEVICES="")
    res = subprocess.run([sys.executable, "-m", "demo", "--smoke", "--policy", str(policy),
                          "--out", str(out)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "| none | 1 |" in res.stdout and "| default (crop, flip, cutout) | 1 |" in res.stdout
    results = json.loads((out / "results.json").read_text())
    assert sorted(results["top1_test"]) == ["DeepAA", "default", "none"]
    assert all(len(v) == 1 and 0 <= v[0] <= 100 for v in results["top1_test"].values())
    for aug in ("DeepAA", "default", "none"):
        assert (out / "runs_synthetic_smoke" / aug / "seed1.json").is_file()
    pictures = sorted(p.name for p in (out / "pictures").iterdir())
    assert "operations.png" in pictures and "examples.png" in pictures
    assert pictures == ["examples.png", "magnitudes_layer1.png", "operations.png"]
    # A second run finds every output and trains nothing.
    again = subprocess.run([sys.executable, "-m", "demo", "--smoke", "--policy", str(policy),
                            "--out", str(out)], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0 and "--- run" not in again.stdout
    assert "synthetic shapes already in" in again.stdout
    # Another budget reuses nothing trained with the old one: every run trains again.
    third = subprocess.run([sys.executable, "-m", "demo", "--smoke", "--policy", str(policy),
                            "--out", str(out), "--epochs", "2"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr[-3000:]
    assert third.stdout.count("--- run") == 3
    assert json.loads((out / "runs_synthetic_smoke" / "none" / "seed1.json").read_text())[
        "config"]["epoch"] == 2

"""Policy pictures: the README's two figure kinds plus examples, for shipped and custom policies."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from augmentation.policy import Policy, load_policy, save_policy
from augmentation.space import OP_TABLE
from augmentation.visualize import level_table, main


def _pngs(folder):
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".png")


def _check_png(path, min_side=200):
    with Image.open(path) as img:
        img.load()
        assert img.format == "PNG" and min(img.size) >= min_side
        # A real drawing, not a blank canvas.
        assert np.asarray(img.convert("L")).std() > 5


def test_released_policy_by_name(tmp_path):
    out = tmp_path / "cifar_1"
    assert main(["cifar_1", "--out", str(out), "--n_images", "3", "--n_samples", "3"]) == 0
    layers = load_policy("cifar_1").n_layers
    expected = ["examples.png", "operations.png"] + [f"magnitudes_layer{k}.png"
                                                      for k in range(1, layers + 1)]
    assert _pngs(out) == sorted(expected)
    for name in expected:
        _check_png(out / name)
    assert not [p for p in out.iterdir() if p.suffix != ".png"]  # no temp files left


def test_examples_follow_the_seed_and_the_number_of_images(tmp_path):
    """The examples grid is seeded (same seed, same pixels; another seed, other draws) and has
    one row per image (--n_images)."""
    policy = tmp_path / "one_layer.yaml"
    save_policy(Policy.uniform(1, "cifar", 3, {"name": "one layer"}), policy)

    def examples(name, *args):
        out = tmp_path / name
        assert main([str(policy), "--out", str(out), "--n_samples", "3", *args]) == 0
        with Image.open(out / "examples.png") as img:
            return np.asarray(img.convert("RGB"))

    a = examples("a", "--n_images", "2", "--seed", "4")
    assert np.array_equal(a, examples("b", "--n_images", "2", "--seed", "4"))
    assert not np.array_equal(a, examples("c", "--n_images", "2", "--seed", "5"))
    taller = examples("d", "--n_images", "4", "--seed", "4")
    assert taller.shape[1] == a.shape[1] and taller.shape[0] > 1.6 * a.shape[0]


def test_small_custom_policy_with_npz_images(tmp_path):
    from deepaa_data.synthetic import make_synthetic

    rng = np.random.default_rng(0)
    base = Policy.uniform(2, "cifar", 3)
    probs = rng.dirichlet(np.ones(base.n_candidates), size=2)
    policy = Policy(probs, None, 3, "cifar", {"name": "custom"})
    path = tmp_path / "custom.yaml"
    save_policy(policy, path)
    make_synthetic(str(tmp_path / "data"), n_train=20, n_test=20)
    out = tmp_path / "pics"
    assert main([str(path), "--out", str(out), "--images", f"npz:{tmp_path / 'data'}",
                 "--n_images", "2", "--n_samples", "2"]) == 0
    assert _pngs(out) == ["examples.png", "magnitudes_layer1.png", "magnitudes_layer2.png",
                          "operations.png"]
    # The level tables hold exactly the magnitude ops' share of each layer.
    for layer in range(2):
        table = level_table(policy, layer)
        assert set(table) == {op.name for op in OP_TABLE["cifar"] if op.has_magnitude}
        op_probs = policy.op_probs()
        for name, row in table.items():
            assert row.shape == (3,)
            assert row.sum() == pytest.approx(op_probs[name][layer])
            assert row[1] == 0.0 or name in ("Solarize", "Posterize")  # identity level skipped


@pytest.mark.parametrize("args, message", [
    (["no_such_policy"], "no_such_policy"),
    (["cifar_1", "--images", "npz:/nonexistent_dir_xyz"], "nonexistent_dir_xyz"),
    (["cifar_1", "--n_samples", "0"], "--n_samples"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "augmentation.visualize", *args,
                          "--out", str(out)], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and message in res.stderr
    assert not out.exists()


def test_out_that_is_a_file_exits_2(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("x")
    assert main(["cifar_1", "--out", str(target)]) == 2
    assert target.read_text() == "x"


def _trace_summary(n_layers=2, n_steps=40):
    """A search trace as the search writes it: per layer, op probabilities over the steps
    (Identity fading, RandCutout rising in the last layer) and the entropy."""
    ops = [op.name for op in OP_TABLE["cifar"]]
    steps, probs, entropy = [], [], []
    for k in range(n_layers):
        t = np.linspace(0, 1, n_steps)
        rows = np.full((n_steps, len(ops)), 0.02)
        rows[:, 0] = 0.9 - 0.6 * t
        rows[:, ops.index("RandCutout")] = 0.05 + 0.5 * t * k
        rows /= rows.sum(axis=1, keepdims=True)
        steps.append(list(range(1, n_steps + 1)))
        probs.append(rows.round(5).tolist())
        entropy.append((-(rows * np.log(rows)).sum(axis=1)).tolist())
    return {"ops": ops, "steps": steps, "probs": probs, "entropy": entropy}


def test_search_trace_is_drawn_from_a_searched_policy(tmp_path):
    """A policy whose meta holds the search's trace gets search_trace.png beside the other
    figures; the released policies (no trace) do not."""
    from augmentation.visualize import leading_ops

    summary = _trace_summary()
    policy = load_policy("cifar_1")
    searched = Policy(policy.probs[:2], policy.candidates, policy.l_mags, policy.space,
                      {"op_prob_trace": summary})
    path = tmp_path / "searched.yaml"
    save_policy(searched, path)
    out = tmp_path / "pictures"
    assert main([str(path), "--out", str(out), "--n_images", "2", "--n_samples", "2"]) == 0
    assert "search_trace.png" in _pngs(out)
    _check_png(out / "search_trace.png")
    probs = np.asarray(summary["probs"][1])
    lead = leading_ops(probs, summary["ops"], 3)
    assert lead[0] == summary["ops"].index("RandCutout") and 0 in lead  # Identity was high


def test_a_running_search_folder_draws_its_trace(tmp_path):
    """A results folder without policy.yaml: search_trace.png from its trace.json; a folder
    with neither, or a trace.json that is not a trace, is a one-line error."""
    import json

    folder = tmp_path / "search"
    folder.mkdir()
    out = tmp_path / "pictures"
    assert main([str(folder), "--out", str(out)]) == 2 and not out.exists()
    (folder / "trace.json").write_text("[1, 2")
    assert main([str(folder), "--out", str(out)]) == 2 and not out.exists()
    (folder / "trace.json").write_text(json.dumps(_trace_summary(3, 25)))
    assert main([str(folder), "--out", str(out)]) == 0
    assert _pngs(out) == ["search_trace.png"]
    _check_png(out / "search_trace.png")

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


def _damaged_folder(root):
    """An ImageFolder ``root/train/<class>/*.png`` whose every image but one does not decode,
    so that any pick of examples meets a damaged one."""
    for c in ("a", "b"):
        folder = root / "train" / c
        folder.mkdir(parents=True)
        for i in range(4):
            (folder / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n then garbage")
    Image.new("RGB", (8, 8)).save(root / "train" / "a" / "0.png")
    return root


@pytest.mark.parametrize("case", ["seed -1", "seed 2**32", "10,000 rows", "1,000 columns",
                                  "out under a file", "out on /proc", "damaged image",
                                  "101 layers"])
def test_more_bad_input_is_one_line_and_draws_nothing(tmp_path, capsys, case):
    (tmp_path / "a_file").write_text("x")
    out = tmp_path / "out"
    args = {"seed -1": ["cifar_1", "--seed", "-1"],
            "seed 2**32": ["cifar_1", "--seed", str(2**32)],
            "10,000 rows": ["cifar_1", "--n_images", "10000"],
            "1,000 columns": ["cifar_1", "--n_samples", "1000"],
            "out under a file": ["cifar_1"], "out on /proc": ["cifar_1"],
            "damaged image": ["cifar_1", "--images", f"folder:{tmp_path / 'imgs'}",
                              "--n_images", "8"],
            "101 layers": [str(tmp_path / "deep.yaml")]}[case]
    if case == "out under a file":
        out = tmp_path / "a_file" / "out"
    elif case == "out on /proc":
        out = "/proc/deepaa/out"
    elif case == "damaged image":
        _damaged_folder(tmp_path / "imgs")
    elif case == "101 layers":
        save_policy(Policy.uniform(101, "cifar", 3), tmp_path / "deep.yaml")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(args + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_disk_that_fills_up_is_one_line(tmp_path):
    """Files of at most 8 kB (RLIMIT_FSIZE, as a full disk): the probe of --out passes, the
    first picture does not: one line, exit 2, no temporary file."""
    import resource
    import signal

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))

    out = tmp_path / "pics"
    res = subprocess.run([sys.executable, "-m", "augmentation.visualize", "cifar_1", "--out",
                          str(out), "--n_images", "1", "--n_samples", "1"],
                         capture_output=True, text=True, preexec_fn=limited)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith(f"error: cannot write in {out}: File too large")
    assert not [p for p in out.iterdir() if not p.name.endswith(".png")]


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


def _bad_trace(case):
    summary = _trace_summary(2, 10)
    if case == "not a mapping":
        return [1, 2]
    if case == "probs of another shape":
        summary["probs"][1] = summary["probs"][1][:-1]
    elif case == "an infinite probability":
        summary["probs"][0][3][0] = float("inf")
    elif case == "steps that are not numbers":
        summary["steps"][0][0] = "one"
    elif case == "101 layers":
        for key in ("steps", "probs", "entropy"):
            summary[key] = summary[key][:1] * 101
    elif case == "entropy of another length":
        summary["entropy"] = summary["entropy"][:1]
    return summary


TRACE_CASES = ["not a mapping", "probs of another shape", "an infinite probability",
               "steps that are not numbers", "101 layers", "entropy of another length"]


@pytest.mark.parametrize("case", TRACE_CASES)
def test_a_damaged_trace_in_a_policy_is_one_line_and_draws_nothing(tmp_path, capsys, case):
    """meta.op_prob_trace of a policy file someone edited: one line naming it, exit 2, no
    output folder (the policy itself is fine)."""
    policy = load_policy("cifar_1")
    path = tmp_path / "edited.yaml"
    save_policy(Policy(policy.probs, policy.candidates, policy.l_mags, policy.space,
                       {"op_prob_trace": _bad_trace(case)}), path)
    out = tmp_path / "pictures"
    assert main([str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "meta.op_prob_trace" in err[0], err
    assert not out.exists()


def _running_search(tmp_path, text):
    """A results folder whose trace.json holds ``text``, and the folder its picture goes to."""
    folder = tmp_path / "search"
    folder.mkdir()
    (folder / "trace.json").write_text(text)
    return folder, tmp_path / "pictures"


@pytest.mark.parametrize("case", TRACE_CASES + ["nested 100,000 deep"])
def test_a_damaged_trace_json_is_one_line_and_draws_nothing(tmp_path, capsys, case):
    import json

    text = "[" * 100000 if case == "nested 100,000 deep" else json.dumps(_bad_trace(case))
    folder, out = _running_search(tmp_path, text)
    assert main([str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trace.json" in err[0], err
    assert not out.exists()


def test_a_trace_with_steps_not_kept_is_drawn(tmp_path):
    """NaN probabilities (the steps of a search resumed from a checkpoint that did not keep
    them) are gaps in the lines, not an error."""
    import json

    summary = _trace_summary(2, 10)
    for row in summary["probs"][0][:4]:
        row[:] = [float("nan")] * len(row)
    folder, out = _running_search(tmp_path, json.dumps(summary))
    assert main([str(folder), "--out", str(out)]) == 0
    _check_png(out / "search_trace.png")

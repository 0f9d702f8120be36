"""The harness's table: Student-t intervals, rows from result files, paired differences."""
import math

import pytest

from DeepAA_evaluate import results_table as T

from .test_reproduce import _fake_result


def test_t_quantiles_match_closed_forms():
    p = 0.975
    # df = 1 (Cauchy): tan(pi (p - 1/2)); df = 2: (2p - 1) / sqrt(2 p (1 - p)).
    assert T.t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)
    assert T.t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)
    # df = 4: t = 2 sqrt(q - 1), q = cos(arccos(sqrt(a)) / 3) / sqrt(a), a = 4 p (1 - p).
    a = 4 * p * (1 - p)
    q = math.cos(math.acos(math.sqrt(a)) / 3) / math.sqrt(a)
    assert T.t_quantile(p, 4) == pytest.approx(2 * math.sqrt(q - 1), rel=1e-9)
    # Large df tends to the normal quantile 1.959964.
    assert T.t_quantile(p, 100000) == pytest.approx(1.959964, abs=1e-4)
    for df in (3, 7, 30):
        assert T.t_cdf(T.t_quantile(0.9, df), df) == pytest.approx(0.9, abs=1e-12)
        assert T.t_cdf(-1.5, df) == pytest.approx(1 - T.t_cdf(1.5, df), abs=1e-14)


def test_mean_ci_on_known_data():
    mean, half = T.mean_ci([90.0, 92.0])  # sd = sqrt(2): half = t_1 * sqrt(2) / sqrt(2)
    assert mean == 91.0 and half == pytest.approx(math.tan(math.pi * 0.475), rel=1e-9)
    mean, half = T.mean_ci([1.0, 2.0, 3.0])  # sd = 1: half = t_2 / sqrt(3)
    t2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)
    assert mean == 2.0 and half == pytest.approx(t2 / math.sqrt(3), rel=1e-9)
    assert T.mean_ci([5.0]) == (5.0, None)
    assert T.mean_ci([3.0, 3.0, 3.0])[1] == 0.0


def test_table_from_result_files(tmp_path):
    runs = tmp_path / "runs"
    for seed, top1 in enumerate([0.80, 0.82, 0.84], 1):
        _fake_result(runs, "cpu_none", seed, top1, wall=600.0)
    paper_cfg = {"dataset": "cifar10", "epoch": 200, "aug": "DeepAA",
                 "model": {"type": "wresnet28_10"}}
    _fake_result(runs, "wresnet28x10_cifar10_DeepAA_1", 1, 0.975, cfg=paper_cfg, wall=7200.0)
    _fake_result(runs, "cpu_none", 4, 0.10, finished=False)  # unfinished: left out
    (runs / "broken").mkdir()
    (runs / "broken" / "seed1.json").write_text("{not json")
    table = T.build_table(str(runs), order=["wresnet28x10_cifar10_DeepAA_1"])
    table = table.split("Paired differences")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1].startswith("| wresnet28x10_cifar10_DeepAA_1 | 1 | 97.50 (one run) | ?: 97.50 "
                              "| 97.56")
    assert rows[1].endswith("| 2.0 h |")
    half = T.t_quantile(0.975, 2) * 2.0 / math.sqrt(3)  # values 80, 82, 84: sd 2
    assert rows[2] == f"| cpu_none | 3 | 82.00 ± {half:.2f} | ?: 80.00, ?: 82.00, ?: 84.00 | — | 10.0 min |"
    assert "broken" not in table and len(rows) == 3


def _differences(table: str) -> dict:
    """{(row, column): cell} of the paired-differences matrix in a table."""
    lines = table.split("Paired differences")[1].strip().splitlines()[2:]
    head = [h.strip() for h in lines[0].split("|")[2:-1]]
    cells = {}
    for line in lines[2:]:
        parts = [p.strip() for p in line.split("|")[1:-1]]
        cells.update({(parts[0], h): c for h, c in zip(head, parts[1:])})
    return cells


def test_paired_differences_are_over_shared_seeds(tmp_path):
    """Cell (A, B) is A - B per shared seed, mean +- t half-width, * when 0 is outside; the
    seed-to-seed variation both configs share cancels out."""
    runs = tmp_path / "runs"

    def result(stem, seed, top1, epoch=100):
        _fake_result(runs, stem, seed, top1, cfg={"dataset": "cifar10", "epoch": epoch,
                                                  "seed": seed})

    for seed, top1 in ((1, 0.70), (2, 0.76), (3, 0.77)):  # +0, +2, -1 against proto_none
        result("proto_close", seed, top1)
    for seed in (1, 2, 3):  # another budget: not compared
        result("proto_short", seed, 0.5, epoch=10)

    base = {1: 0.70, 2: 0.74, 3: 0.78}  # a large seed effect shared by both configs
    for seed, top1 in base.items():
        result("proto_none", seed, top1)
        result("proto_strong", seed, top1 + 0.02 + 0.001 * seed)
    result("proto_strong", 4, 0.99)  # no partner: left out of the differences
    result("proto_other", 5, 0.50)  # no shared seed at all
    result("proto_none", 4, 0.10, epoch=2)  # a smoke run: a row of its own, not paired
    cells = _differences(T.build_table(str(runs), order=["proto_none", "proto_strong"]))
    diffs = [2.1, 2.2, 2.3]
    half = T.t_quantile(0.975, 2) * 0.1 / math.sqrt(3)  # sd of the differences: 0.1
    assert cells[("strong", "none")] == f"+2.20 ± {half:.2f} *"
    assert cells[("none", "strong")] == f"-2.20 ± {half:.2f} *"
    # unpaired, the seed effect (sd 4 points) would swamp a 2.2-point difference
    assert T.mean_ci([70.0, 74.0, 78.0])[1] > 2.2 and sum(diffs) / 3 == pytest.approx(2.2)
    assert cells[("none", "none")] == "—" and cells[("other", "none")] == "—"
    half = T.t_quantile(0.975, 2) * math.sqrt(7 / 3) / math.sqrt(3)  # diffs 0, 2, -1
    assert cells[("close", "none")] == f"+0.33 ± {half:.2f}"  # 0 inside: no star
    assert cells[("short", "none")] == "—" and cells[("none", "short")] == "—"
    assert set(h for _, h in cells) == {"none", "strong", "close", "other", "short"}
    result("proto_other", 1, 0.75)
    cells = _differences(T.build_table(str(runs)))
    assert cells[("other", "none")] == "+5.00 (1 seed)"


def test_no_differences_for_a_single_config(tmp_path):
    runs = tmp_path / "runs"
    _fake_result(runs, "only", 1, 0.5, cfg={"epoch": 100, "seed": 1})
    _fake_result(runs, "only", 2, 0.6, cfg={"epoch": 100, "seed": 2})
    assert "Paired differences" not in T.build_table(str(runs))


def test_the_summary_json_holds_the_tables_numbers(tmp_path):
    import json

    from DeepAA_evaluate import reproduce as R

    runs = tmp_path / "runs"
    for seed, (a, b) in enumerate(((0.70, 0.72), (0.74, 0.77), (0.78, 0.80)), 1):
        _fake_result(runs, "exp_a", seed, a, cfg={"epoch": 100, "seed": seed}, wall=60.0)
        _fake_result(runs, "exp_b", seed, b, cfg={"epoch": 100, "seed": seed}, wall=120.0)
    out = tmp_path / "results.md"
    assert R.main(["--table_only", "--runs_dir", str(runs), "--out", str(out)]) == 0
    summary = json.loads((tmp_path / "results.json").read_text())
    assert out.read_text() == T.render(summary)  # the Markdown is drawn from these numbers
    b = next(r for r in summary["rows"] if r["config"] == "exp_b")
    assert b["runs"] == 3 and b["seeds"] == [1, 2, 3] and b["time_s"] == 120.0
    assert b["top1"] == pytest.approx([72.0, 77.0, 80.0]) and b["mean"] == pytest.approx(76.333333)
    assert b["ci95"] == pytest.approx(T.mean_ci([72.0, 77.0, 80.0])[1])
    pair = next(p for p in summary["paired_differences"]
                if (p["row"], p["column"]) == ("exp_b", "exp_a"))
    assert pair["seeds"] == [1, 2, 3] and pair["mean"] == pytest.approx(2.333333)
    assert pair["excludes_0"] == (abs(pair["mean"]) > pair["ci95"])
    for bad in ("t.json", "t.png"):  # the table cannot be its own summary or plot
        assert R.main(["--table_only", "--runs_dir", str(runs), "--out",
                       str(tmp_path / bad)]) == 2
        assert not (tmp_path / bad).exists()


def test_the_plot_shows_each_row(tmp_path):
    """The PNG beside the table: one row of dots per config, each seed at its top-1."""
    pytest.importorskip("matplotlib")
    from PIL import Image

    runs = tmp_path / "runs"
    for seed in (1, 2):
        _fake_result(runs, "exp_a", seed, 0.70 + 0.01 * seed, cfg={"epoch": 100, "seed": seed})
        _fake_result(runs, "exp_b", seed, 0.80 + 0.01 * seed, cfg={"epoch": 100, "seed": seed})
    T.write_results(str(tmp_path / "results.md"), str(runs))
    few = Image.open(tmp_path / "results.png")
    _fake_result(runs, "exp_c", 1, 0.9, cfg={"epoch": 100, "seed": 1})
    T.write_results(str(tmp_path / "results.md"), str(runs))
    more = Image.open(tmp_path / "results.png")
    assert few.format == "PNG" and more.size[1] > few.size[1]  # a row more, a taller figure
    T.write_results(str(tmp_path / "empty.md"), str(tmp_path / "none"))
    assert not (tmp_path / "empty.png").exists()  # nothing to draw

"""The reproduction harness's table: finished result files -> Markdown (SPEC §4).

Per config, the number of finished runs, mean top-1 (%) +- the half-width of the 95 % Student-t
interval, each seed's top-1, the paper's number where one exists for that setting (only for
full-scale configs: no ``train_size`` and at least 100 epochs) and the mean run time. Runs in
one folder that were trained with different configs (a smoke run beside full runs) get rows
of their own. Below it, with two configs or more, the paired differences between configs:
row minus column over the seeds both have, mean +- 95 % interval, so that "is A better than
B" is read off with the seed-to-seed variation that A and B share taken out.

``write_results`` writes the Markdown and, beside it, the same numbers as JSON (``summarize``):
per row the config, runs, seeds, top-1 per seed, mean, 95 % half-width (null for one run),
the paper's number and the mean run time; per ordered pair of configs the shared seeds, the
mean difference, its half-width and whether the interval excludes 0.

The Student-t quantiles are computed here (regularised incomplete beta function), so the
harness needs no scipy.
"""
from __future__ import annotations

import glob
import json
import math
import os
import re

from augmentation.files import atomic_write
from DeepAA_evaluate.config import config_diff

# SPEC §4: (dataset, model, aug, batch augmentation) -> paper top-1 (%), and a note.
PAPER = {
    ("cifar10", "wresnet28_10", "DeepAA", False): (97.56, "97.56 ± 0.14"),
    ("cifar100", "wresnet28_10", "DeepAA", False): (84.02, "84.02 ± 0.18 (unverified)"),
    ("cifar10", "wresnet40_2", "DeepAA", False): (96.3, "about 96.3 (unverified)"),
    ("cifar100", "wresnet40_2", "DeepAA", False): (79.4, "about 79.4 (unverified)"),
    ("imagenet", "resnet50", "DeepAA", False): (78.30, "78.30 ± 0.14 (unverified)"),
    ("cifar10", "wresnet28_10", "DeepAA", True): (98.2, "about 98.2 (unverified)"),
    ("cifar100", "wresnet28_10", "DeepAA", True): (84.6, "about 84.6 (unverified)"),
    ("cifar10", "wresnet28_10", "trivialaugment", False): (97.46, "97.46 (TA)"),
    ("cifar100", "wresnet28_10", "trivialaugment", False): (84.33, "84.33 (TA)"),
    ("cifar10", "wresnet40_2", "trivialaugment", False): (96.32, "96.32 (TA)"),
    ("cifar100", "wresnet40_2", "trivialaugment", False): (79.76, "79.76 (TA)"),
    ("imagenet", "resnet50", "trivialaugment", False): (78.07, "78.07 (TA)"),
}


# ----------------------------------------------------------------------------- statistics
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: int) -> float:
    """Student-t cumulative distribution function."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: int) -> float:
    """Inverse of :func:`t_cdf` for 0.5 < p < 1, by bisection (no scipy needed)."""
    if not 0.5 < p < 1.0 or df < 1:
        raise ValueError(f"need 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return 0.5 * (lo + hi)


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float | None]:
    """Mean and the half-width of its two-sided Student-t interval (None for one value)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = sum(values) / n
    if n == 1:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t_quantile(0.5 + confidence / 2.0, n - 1) * sd / math.sqrt(n)


# Config keys that change how a run executes but not what it computes: runs that differ only
# in these fill the same cell. (The trainer's RESUME_FREE_KEYS also hold early_finish_epoch,
# which changes the result.)
RESULT_FREE_KEYS = ("num_workers", "save_model", "compile", "channels_last", "test_interval",
                    "deterministic")


def config_changes(trained: dict | None, wanted: dict) -> list[str]:
    """Dotted keys, outside RESULT_FREE_KEYS, in which two configs differ."""
    return [k for k in config_diff(trained or {}, wanted)
            if k.split(".")[0] not in RESULT_FREE_KEYS]


def _dotted(cfg: dict, key: str):
    for part in key.split("."):
        cfg = cfg.get(part) if isinstance(cfg, dict) else None
    return cfg


def _variants(results: list[dict]) -> list[tuple[str, list[dict]]]:
    """One folder's results split by config (seed aside): [(row label suffix, results)]. The
    variant with most runs keeps the plain label; the others name the keys that differ, so
    that a smoke run never averages into a full run's cell."""
    groups: list[list[dict]] = []
    for r in results:
        cfg = {**(r.get("config") or {}), "seed": None}
        for group in groups:
            if not config_changes({**(group[0].get("config") or {}), "seed": None}, cfg):
                group.append(r)
                break
        else:
            groups.append([r])
    groups.sort(key=len, reverse=True)
    base = groups[0][0].get("config") or {}
    out = [("", groups[0])]
    for group in groups[1:]:
        cfg = group[0].get("config") or {}
        keys = [k for k in config_changes(base, cfg) if k != "seed"]
        out.append((" (" + ", ".join(f"{k}={_dotted(cfg, k)}" for k in keys) + ")", group))
    return out


def read_result(path: str) -> dict | None:
    """A finished run's results dict, or None (missing, unreadable, malformed or unfinished):
    top-1 a number in [0, 1], the config a mapping, the wall time a number."""
    try:
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(result, dict):
        return None
    top1, wall = result.get("top1_test"), result.get("wall_time_s") or 0.0
    if not (_number(top1) and 0.0 <= top1 <= 1.0 and _number(wall)
            and isinstance(result.get("config") or {}, dict)):
        return None
    return result if result.get("finished", True) else None


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def paper_number(cfg: dict) -> tuple[float, str] | None:
    """The SPEC §4 number for a config, if it is a full-scale paper setting."""
    if not isinstance(cfg, dict) or cfg.get("train_size") or int(cfg.get("epoch") or 0) < 100:
        return None
    model = (cfg.get("model") or {}).get("type")
    batch_aug = bool(cfg.get("all_workers_use_the_same_batches"))
    return PAPER.get((cfg.get("dataset"), model, cfg.get("aug"), batch_aug))


def collect(runs_dir: str) -> dict[str, list[dict]]:
    """Finished results under ``runs_dir``, grouped by config stem (seed order)."""
    groups: dict[str, list[dict]] = {}
    pattern = os.path.join(runs_dir, "*", "seed*.json")
    paths = [p for p in glob.glob(pattern) if _seed_of(p) >= 0]  # not seed<S>_eval.json
    for path in sorted(paths, key=lambda p: (os.path.dirname(p), _seed_of(p))):
        result = read_result(path)
        if result is not None:
            groups.setdefault(os.path.basename(os.path.dirname(path)), []).append(result)
    return groups


def _seed_of(path: str) -> int:
    m = re.fullmatch(r"seed(\d+)\.json", os.path.basename(path))
    return int(m.group(1)) if m else -1


def _fmt_time(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _top1_by_seed(results: list[dict]) -> dict:
    """{seed: top-1 %}; a result that does not name its seed cannot be paired."""
    by_seed = {}
    for r in results:
        seed = (r.get("config") or {}).get("seed")
        if seed is not None:
            by_seed[seed] = 100.0 * float(r["top1_test"])
    return by_seed


def _short_names(names: list[str]) -> list[str]:
    """The names without the prefix they all share (up to an underscore), for column heads."""
    prefix = os.path.commonprefix(names) if len(names) > 1 else ""
    prefix = prefix[:prefix.rfind("_") + 1]
    return [n[len(prefix):] or n for n in names]


# What makes two runs comparable in the paired differences: the same data, model and budget
# (an augmentation, policy or learning rate may differ: that is what is compared).
BUDGET_KEYS = ("dataset", "model", "epoch", "train_size", "test_size", "batch")


def _budget(results: list[dict]) -> tuple:
    cfg = results[0].get("config") or {}
    return tuple(repr(cfg.get(k)) for k in BUDGET_KEYS)


def _row(name: str, suffix: str, results: list[dict]) -> dict:
    top1 = [100.0 * float(r["top1_test"]) for r in results]
    mean, half = mean_ci(top1)
    paper = paper_number(results[0].get("config"))
    return {"config": name + suffix, "main": not suffix, "runs": len(results), "mean": mean,
            "ci95": half,
            "seeds": [(r.get("config") or {}).get("seed") for r in results], "top1": top1,
            "paper": paper[0] if paper else None, "paper_note": paper[1] if paper else None,
            "time_s": sum(float(r.get("wall_time_s") or 0.0) for r in results) / len(results)}


def _pairs(rows: list[tuple[str, list[dict]]]) -> list[dict]:
    """Paired differences between ``rows`` (name, results): for each ordered pair of the
    same budget (BUDGET_KEYS) with a seed in common, top-1 of the first minus the second
    over their shared seeds, as mean and 95 % Student-t half-width (None for one seed)."""
    by_seed = [_top1_by_seed(results) for _, results in rows]
    budgets = [_budget(results) for _, results in rows]
    pairs = []
    for i, (row, _) in enumerate(rows):
        for j, (column, _) in enumerate(rows):
            shared = [s for s in by_seed[i] if s in by_seed[j]]
            if i == j or not shared or budgets[i] != budgets[j]:
                continue
            mean, half = mean_ci([by_seed[i][s] - by_seed[j][s] for s in shared])
            pairs.append({"row": row, "column": column, "seeds": shared, "mean": mean,
                          "ci95": half, "excludes_0": half is not None and abs(mean) > half})
    return pairs


def summarize(runs_dir: str, order: list[str] | None = None) -> dict:
    """Every finished run under ``runs_dir``, summarised: one row per config variant
    (``_variants``; configs in ``order`` first) and the paired differences between the
    configs' main rows. What the Markdown table shows, as data (written as JSON beside it)."""
    groups = collect(runs_dir)
    names = [n for n in (order or []) if n in groups] + sorted(n for n in groups
                                                               if n not in (order or []))
    rows, main_rows = [], []
    for name in names:
        for suffix, results in _variants(groups[name]):
            rows.append(_row(name, suffix, results))
            if not suffix:
                main_rows.append((name, results))
    return {"rows": rows, "paired_differences": _pairs(main_rows)}


def paired_matrix(summary: dict) -> str:
    """The Markdown matrix of the paired differences: cell (A, B) is A minus B, mean ± the
    95 % half-width, * where that interval excludes 0, the difference alone for one shared
    seed, — where there is no pair (no shared seed, or another data set, model or budget)."""
    names = _main_names(summary)
    cells = {(p["row"], p["column"]): p for p in summary["paired_differences"]}
    labels = _short_names(names)
    lines = ["| row − column | " + " | ".join(labels) + " |",
             "|---|" + "---|" * len(labels)]
    for name, label in zip(names, labels):
        out = []
        for column in names:
            p = cells.get((name, column))
            if p is None:
                out.append("—")
            elif p["ci95"] is None:
                out.append(f"{p['mean']:+.2f} (1 seed)")
            else:
                out.append(f"{p['mean']:+.2f} ± {p['ci95']:.2f}{' *' if p['excludes_0'] else ''}")
        lines.append(f"| {label} | " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def _main_names(summary: dict) -> list[str]:
    """The configs' main rows (not a minority variant such as a smoke run), in table order."""
    return [r["config"] for r in summary["rows"] if r["main"]]


def render(summary: dict) -> str:
    """The Markdown of a summary: the table and, with two main rows or more, the matrix."""
    lines = ["| config | runs | top-1 % (mean ± 95 % CI) | seed: top-1 % | paper (SPEC §4) "
             "| time / run |",
             "|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        ci = (f"{r['mean']:.2f} ± {r['ci95']:.2f}" if r["ci95"] is not None
              else f"{r['mean']:.2f} (one run)")
        seeds = ", ".join(f"{'?' if s is None else s}: {v:.2f}"
                          for s, v in zip(r["seeds"], r["top1"]))
        lines.append(f"| {r['config']} | {r['runs']} | {ci} | {seeds} | "
                     f"{r['paper_note'] or '—'} | {_fmt_time(r['time_s'])} |")
    if not summary["rows"]:
        lines.append("| (no finished runs yet) | 0 | — | — | — | — |")
    table = "\n".join(lines) + "\n"
    if len(_main_names(summary)) < 2:
        return table
    return (table + "\nPaired differences in top-1 points (row − column, over the seeds both "
            "configs have, for configs of the same data, model and budget; mean ± 95 % CI, * "
            "where the interval excludes 0):\n\n" + paired_matrix(summary))


def build_table(runs_dir: str, order: list[str] | None = None) -> str:
    """The Markdown table of every finished run under ``runs_dir`` (render of summarize)."""
    return render(summarize(runs_dir, order))


def plot(summary: dict, path: str) -> bool:
    """A PNG of the table: per row each seed's top-1 (dots), the mean and its 95 % interval
    (bar), and the paper's number where there is one (cross). False without matplotlib."""
    try:
        from augmentation.visualize import pyplot, save_figure

        plt = pyplot()
    except ImportError:
        return False
    rows = summary["rows"][::-1]  # the first config on top
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(rows) + 1.2))
    labels = _short_names([r["config"] for r in rows])
    for y, r in enumerate(rows):
        ax.plot(r["top1"], [y + 0.2] * len(r["top1"]), "o", color="0.45", ms=4, zorder=2)
        half = r["ci95"] or 0.0
        ax.errorbar(r["mean"], y, xerr=half, fmt="s", color="C0", ms=6, capsize=4, zorder=3)
        if r["paper"] is not None:
            ax.plot(r["paper"], y, "x", color="C3", ms=8, zorder=4)
    ax.set_yticks(range(len(rows)), labels)
    paper = "; x: paper" if any(r["paper"] is not None for r in rows) else ""
    ax.set_xlabel(f"top-1 % (dots: seeds; square and bar: mean ± 95 % CI{paper})")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return True


def output_paths(out: str) -> tuple[str, str]:
    """Where the summary (JSON) and the plot (PNG) of the table ``out`` go: beside it."""
    stem = os.path.splitext(out)[0]
    return stem + ".json", stem + ".png"


def write_results(out: str, runs_dir: str, order: list[str] | None = None) -> str:
    """Write the Markdown table to ``out``, its summary (summarize) as JSON beside it and,
    with matplotlib and at least one row, its plot as PNG (output_paths), each atomically;
    returns the Markdown."""
    summary = summarize(runs_dir, order)
    table = render(summary)
    summary_path, plot_path = output_paths(out)
    atomic_write(summary_path, json.dumps(summary, indent=1) + "\n")
    if summary["rows"]:
        plot(summary, plot_path)
    atomic_write(out, table)
    return table


"""Run trainer configs over seeds and tabulate mean +- 95 % confidence interval of top-1.

    python -m DeepAA_evaluate.reproduce --confs confs/cpu/wresnet10x2_*.yaml --seeds 4 \
        --out results.md [--runs_dir reproduce_runs] [--gpus 0,1,2,3 | --jobs 2] [-- --epoch 2]

Every (config, seed) run is one trainer process (``python -m DeepAA_evaluate.train``) writing
``RUNS_DIR/<config stem>/seed<S>.pth`` and, when it finishes, the results JSON beside it. Long
experiments get interrupted, so the harness

- skips a run whose finished results JSON exists, after checking that it was trained with the
  config this call would use (the file, the overrides after ``--``, the seed; keys that only
  change how a run executes, RESULT_FREE_KEYS, may differ); another config is an error,
- resumes (``--resume``) a run that left a checkpoint but no finished JSON; a checkpoint the
  trainer refuses (another config) is reported and kept, never overwritten,
- builds the table from *all* results files present under RUNS_DIR, so the table grows run by
  run and can be rebuilt any time with ``--table_only``.

Runs go one after another, or with ``--gpus 0,1,..`` one per GPU at a time
(``CUDA_VISIBLE_DEVICES``). Arguments after ``--`` go to every trainer run unchanged.

The table gives, per config, the number of finished runs, mean top-1 (%) +- the half-width of
the 95 % Student-t interval, each seed's top-1, the paper's number where one exists for that
setting (SPEC §4; only for full-scale configs: no ``train_size`` and at least 100 epochs) and
the mean run time.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import subprocess
import sys
import time

from augmentation.policy import atomic_write
from DeepAA_evaluate.config import (ConfigError, build_parser, config_diff, load_config,
                                    parse_overrides)

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
RESULT_FREE_KEYS = ("num_workers", "save_model", "compile", "channels_last", "test_interval")


# ----------------------------------------------------------------------------- configs
def expected_config(conf: str, seed: int, extra: list[str]) -> dict:
    """The validated config a harness run of ``conf`` trains with: the trainer's own reading
    of the file, ``--seed`` and the arguments after ``--`` (raises ConfigError)."""
    _, rest = build_parser().parse_known_args(["-c", conf, "--seed", str(seed), *extra])
    return load_config(conf, parse_overrides(rest))


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


# ----------------------------------------------------------------------------- result files
def run_paths(runs_dir: str, conf: str, seed: int) -> tuple[str, str, str]:
    """(checkpoint, results JSON, log) of one (config, seed) run."""
    stem = os.path.splitext(os.path.basename(conf))[0]
    base = os.path.join(runs_dir, stem, f"seed{seed}")
    return base + ".pth", base + ".json", base + ".log"


def read_result(path: str) -> dict | None:
    """A finished run's results dict, or None (missing, unreadable or unfinished)."""
    try:
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(result, dict) or result.get("top1_test") is None:
        return None
    return result if result.get("finished", True) else None


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


def build_table(runs_dir: str, order: list[str] | None = None) -> str:
    """The Markdown table of every finished run under ``runs_dir``."""
    groups = collect(runs_dir)
    names = [n for n in (order or []) if n in groups] + sorted(n for n in groups
                                                               if n not in (order or []))
    lines = ["| config | runs | top-1 % (mean ± 95 % CI) | seed: top-1 % | paper (SPEC §4) "
             "| time / run |",
             "|---|---|---|---|---|---|"]
    for name in names:
        for suffix, results in _variants(groups[name]):
            top1 = [100.0 * float(r["top1_test"]) for r in results]
            mean, half = mean_ci(top1)
            ci = f"{mean:.2f} ± {half:.2f}" if half is not None else f"{mean:.2f} (one run)"
            seeds = ", ".join(f"{(r.get('config') or {}).get('seed', '?')}: {v:.2f}"
                              for r, v in zip(results, top1))
            paper = paper_number(results[0].get("config"))
            wall = sum(float(r.get("wall_time_s") or 0.0) for r in results) / len(results)
            lines.append(f"| {name}{suffix} | {len(results)} | {ci} | {seeds} | "
                         f"{paper[1] if paper else '—'} | {_fmt_time(wall)} |")
    if not names:
        lines.append("| (no finished runs yet) | 0 | — | — | — | — |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- running
def trainer_command(conf: str, seed: int, runs_dir: str, dataroot: str, extra: list[str],
                    resume: bool) -> list[str]:
    ckpt, _, _ = run_paths(runs_dir, conf, seed)
    stem = os.path.splitext(os.path.basename(conf))[0]
    return [sys.executable, "-m", "DeepAA_evaluate.train", "-c", conf, "--dataroot", dataroot,
            "--save", ckpt, "--tag", f"{stem}_seed{seed}", "--seed", str(seed),
            "--resume" if resume else "--overwrite", *extra]


def plan(confs: list[str], seeds: list[int], runs_dir: str,
         extra: list[str] = ()) -> tuple[list, int]:
    """The (conf, seed, resume) runs still to do, and how many were skipped as done.

    Seed-major order (every config's seed 1, then every config's seed 2, ...), so that an
    interrupted campaign leaves a table whose cells have equal numbers of runs. A finished
    result trained with another config than ``conf`` + ``extra`` raises ConfigError.
    """
    todo, done = [], 0
    for seed in seeds:
        for conf in confs:
            ckpt, path, _ = run_paths(runs_dir, conf, seed)
            result = read_result(path)
            if result is None:
                todo.append((conf, seed, os.path.exists(ckpt)))
                continue
            changed = config_changes(result.get("config"), expected_config(conf, seed, extra))
            if changed:
                raise ConfigError(f"{path} was trained with another config (differs in "
                                  f"{', '.join(changed)}); move it away or use another "
                                  "--runs_dir")
            done += 1
    return todo, done


def _start(job, runs_dir, dataroot, extra, gpu, threads=None):
    conf, seed, resume = job
    _, _, log = run_paths(runs_dir, conf, seed)
    os.makedirs(os.path.dirname(log), exist_ok=True)
    env = dict(os.environ)
    if gpu is not None and not gpu.startswith("cpu"):
        env["CUDA_VISIBLE_DEVICES"] = gpu
    if threads is not None:  # CPU runs side by side: split the cores instead of oversubscribing
        env["OMP_NUM_THREADS"] = str(threads)
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} "
                f"{'resume' if resume else 'start'} seed {seed} slot {gpu}\n")
        return subprocess.Popen(trainer_command(conf, seed, runs_dir, dataroot, extra, resume),
                                stdout=f, stderr=subprocess.STDOUT, env=env)


def _refused_resume(log: str) -> bool:
    """Whether the run's log ends with the trainer refusing its checkpoint's config."""
    try:
        with open(log, encoding="utf-8", errors="replace") as f:
            f.seek(max(0, os.path.getsize(log) - 4096))
            return "cannot resume" in f.read()
    except OSError:
        return False


def run_all(confs, seeds, runs_dir, dataroot, extra, gpus, out, progress=True, jobs=1) -> int:
    """Run what is missing, rewriting ``out`` after each finished run; returns failures.

    One run per GPU in ``gpus``; without GPUs, ``jobs`` CPU runs at a time, each with
    ``cpu_count // jobs`` threads (small models train faster as several single-thread runs than
    as one run over all cores).
    """
    from tqdm import tqdm

    order = [os.path.splitext(os.path.basename(c))[0] for c in confs]
    todo, done = plan(confs, seeds, runs_dir, extra)
    print(f"{done} run(s) already finished, {len(todo)} to run", file=sys.stderr)
    slots = gpus or ([None] if jobs <= 1 else [f"cpu{i}" for i in range(jobs)])
    threads = max(1, (os.cpu_count() or 1) // jobs) if not gpus and jobs > 1 else None
    running: dict = {}
    failures = 0
    bar = tqdm(total=len(todo), desc="runs", unit="run", disable=not progress)
    queue = list(todo)
    while queue or running:
        for gpu in slots:
            if gpu not in running and queue:
                job = queue.pop(0)
                running[gpu] = (job, _start(job, runs_dir, dataroot, extra, gpu, threads))
        time.sleep(0.2)
        for gpu, (job, proc) in list(running.items()):
            rc = proc.poll()
            if rc is None:
                continue
            del running[gpu]
            conf, seed, resume = job
            if rc != 0:  # the checkpoint stays: the next call resumes it
                failures += 1
                ckpt, _, log = run_paths(runs_dir, conf, seed)
                hint = (f"; {ckpt} is kept (move it away to start over)"
                        if resume and rc == 2 and _refused_resume(log) else "")
                print(f"{conf} seed {seed}: failed (exit {rc}); see {log}{hint}",
                      file=sys.stderr)
            bar.update(1)
            atomic_write(out, build_table(runs_dir, order))
    bar.close()
    atomic_write(out, build_table(runs_dir, order))
    return failures


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    parser = argparse.ArgumentParser(prog="python -m DeepAA_evaluate.reproduce",
                                     description="Run configs x seeds; write a Markdown table.")
    parser.add_argument("--confs", nargs="+", default=[], help="trainer config YAMLs")
    parser.add_argument("--seeds", type=int, default=4,
                        help="number of seeds (first_seed .. first_seed + N - 1)")
    parser.add_argument("--first_seed", type=int, default=1,
                        help="first seed: runs seeds first_seed .. first_seed + seeds - 1")
    parser.add_argument("--out", default="results.md", help="Markdown table to write")
    parser.add_argument("--runs_dir", default="reproduce_runs",
                        help="one folder per config with seed<S>.pth/.json/.log")
    parser.add_argument("--dataroot", default="./data", help="passed to every trainer run")
    parser.add_argument("--gpus", default="", help="comma-separated GPU ids: one run per GPU")
    parser.add_argument("--jobs", type=int, default=1,
                        help="without --gpus: CPU runs side by side, sharing the cores")
    parser.add_argument("--table_only", action="store_true",
                        help="only rebuild the table from the results present")
    parser.add_argument("--no_progress", action="store_true",
                        help="no progress bar over the runs (for logs)")
    args = parser.parse_args(argv)

    def fail(msg: str) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return 2

    if args.seeds < 1:
        return fail(f"--seeds must be >= 1, got {args.seeds}")
    if args.jobs < 1:
        return fail(f"--jobs must be >= 1, got {args.jobs}")
    if os.path.isdir(args.out):
        return fail(f"--out {args.out!r} is a folder")
    if not args.table_only:
        if not args.confs:
            return fail("--confs needs at least one config (or pass --table_only)")
        missing = [c for c in args.confs if not os.path.isfile(c)]
        if missing:
            return fail(f"config not found: {missing[0]}")
        stems = [os.path.splitext(os.path.basename(c))[0] for c in args.confs]
        if len(set(stems)) != len(stems):
            return fail("two configs share a file name; their runs would share a folder")
    order = [os.path.splitext(os.path.basename(c))[0] for c in args.confs]
    if args.table_only:
        table = build_table(args.runs_dir, order)
        atomic_write(args.out, table)
        print(table)
        return 0
    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    try:  # every config and override is checked before anything runs or is written
        for conf in args.confs:
            expected_config(conf, seeds[0], extra)
        failures = run_all(args.confs, seeds, args.runs_dir, args.dataroot, extra, gpus,
                           args.out, progress=not args.no_progress, jobs=args.jobs)
    except ConfigError as exc:
        return fail(" ".join(str(exc).split()))
    print(open(args.out, encoding="utf-8").read())
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

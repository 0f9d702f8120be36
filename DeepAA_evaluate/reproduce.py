"""Run trainer configs over seeds and tabulate mean +- 95 % confidence interval of top-1.

    python -m DeepAA_evaluate.reproduce --confs confs/cpu/wresnet10x2_*.yaml --seeds 4 \
        --out results.md [--runs_dir reproduce_runs] [--gpus 0,1,2,3 | --jobs 2] [-- --epoch 2]

Every (config, seed) run is one trainer process (``python -m DeepAA_evaluate.train``) writing
``RUNS_DIR/<config stem>/seed<S>.pth`` and, when it finishes, the results JSON beside it. Long
experiments get interrupted, so the harness

- skips a run whose finished results JSON exists, after checking that it was trained with the
  config this call would use (the file, the overrides after ``--``, the seed; keys that only
  change how a run executes, results_table.RESULT_FREE_KEYS, may differ); another config is
  an error,
- resumes (``--resume``) a run that left a checkpoint but no finished JSON; a checkpoint the
  trainer refuses (another config) is reported and kept, never overwritten,
- builds the table from *all* results files present under RUNS_DIR, so the table grows run by
  run and can be rebuilt any time with ``--table_only``; the same numbers go to a JSON file
  beside the table (``results.md`` -> ``results.json``) for scripts, and a plot to
  ``results.png``.

Runs go one after another, with ``--gpus 0,1,..`` one per GPU at a time
(``CUDA_VISIBLE_DEVICES``), or with ``--jobs N`` N CPU runs side by side. Arguments after
``--`` go to every trainer run unchanged. What the table shows is in ``results_table``.

Bad input (numbers out of LIMITS, a config that does not load, an output that cannot be
written) prints one line and exits with code 2 before any run starts. Ctrl-C stops the runs
(each keeps its last finished epoch) and the harness with one line and exit code 130; the same
command continues.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from augmentation.cli import command_name
from augmentation.files import InUse, Unwritable, check_writable, exclusive
from DeepAA_evaluate.config import (MAX_SEED, ConfigError, build_parser, load_config,
                                    parse_overrides)
from DeepAA_evaluate.results_table import (config_changes, output_paths, read_result,
                                           write_results)

# Bounds of the command line's numbers (the seeds must also be seeds the trainer takes).
LIMITS = {"seeds": (1, 1000), "first_seed": (0, MAX_SEED), "jobs": (1, 256)}


# ----------------------------------------------------------------------------- configs
def expected_config(conf: str, seed: int, extra: list[str]) -> dict:
    """The validated config a harness run of ``conf`` trains with: the trainer's own reading
    of the file, ``--seed`` and the arguments after ``--`` (raises ConfigError)."""
    _, rest = build_parser().parse_known_args(["-c", conf, "--seed", str(seed), *extra])
    return load_config(conf, parse_overrides(rest))


# ----------------------------------------------------------------------------- result files
def run_paths(runs_dir: str, conf: str, seed: int) -> tuple[str, str, str]:
    """(checkpoint, results JSON, log) of one (config, seed) run."""
    stem = os.path.splitext(os.path.basename(conf))[0]
    base = os.path.join(runs_dir, stem, f"seed{seed}")
    return base + ".pth", base + ".json", base + ".log"


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
    bar = tqdm(total=len(todo), desc="runs", unit="run", disable=not progress)
    queue = list(todo)
    try:
        failures = _run_queue(queue, running, slots, runs_dir, dataroot, extra, threads, out,
                              order, bar)
    finally:  # Ctrl-C, or a failure of the harness: the runs stop at their last epoch too
        _stop(running)
    bar.close()
    write_results(out, runs_dir, order)
    return failures


def _stop(running: dict) -> None:
    for _, proc in running.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for _, proc in running.values():
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _run_queue(queue, running, slots, runs_dir, dataroot, extra, threads, out, order, bar):
    failures = 0
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
            write_results(out, runs_dir, order)
    return failures


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    parser = argparse.ArgumentParser(prog=command_name("python -m DeepAA_evaluate.reproduce"),
                                     description="Run configs x seeds; write a Markdown table.")
    parser.add_argument("--confs", nargs="+", default=[], help="trainer config YAMLs")
    parser.add_argument("--seeds", type=int, default=4,
                        help="number of seeds (first_seed .. first_seed + N - 1)")
    parser.add_argument("--first_seed", type=int, default=1,
                        help="first seed: runs seeds first_seed .. first_seed + seeds - 1")
    parser.add_argument("--out", default="results.md",
                        help="Markdown table to write (its summary and plot go beside it as .json "
                        "and .png)")
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

    for name, (low, high) in LIMITS.items():
        if not low <= getattr(args, name) <= high:
            return fail(f"--{name} must be from {low} to {high}, got {getattr(args, name)}")
    if args.first_seed + args.seeds - 1 > MAX_SEED:
        return fail(f"--first_seed + --seeds - 1 must be <= {MAX_SEED}")
    if os.path.isdir(args.out):
        return fail(f"--out {args.out!r} is a folder")
    if os.path.abspath(args.out) in map(os.path.abspath, output_paths(args.out)):
        return fail(f"--out {args.out!r} ends in .json or .png, where the summary and the plot "
                    "go; use .md")
    if not args.table_only:
        if not args.confs:
            return fail("--confs needs at least one config (or pass --table_only)")
        missing = [c for c in args.confs if not os.path.isfile(c)]
        if missing:
            return fail(f"config not found: {missing[0]}")
        stems = [os.path.splitext(os.path.basename(c))[0] for c in args.confs]
        if len(set(stems)) != len(stems):
            return fail("two configs share a file name; their runs would share a folder")
    outputs = [("--out", path, False) for path in (args.out, *output_paths(args.out))]
    if not args.table_only:
        outputs.append(("--runs_dir", args.runs_dir, True))
    for flag, path, folder in outputs:  # every output writable before any run starts
        try:
            check_writable(path, folder=folder)
        except Unwritable as exc:
            return fail(f"{flag}: {exc}")
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in background
    order = [os.path.splitext(os.path.basename(c))[0] for c in args.confs]
    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    try:
        if args.table_only:
            print(write_results(args.out, args.runs_dir, order))
            return 0
        for conf in args.confs:  # every config and override is checked before anything runs
            expected_config(conf, seeds[0], extra)
        # one harness per runs folder: a second would start the same runs a second time
        with exclusive(os.path.join(args.runs_dir, ".harness.lock"), args.runs_dir):
            failures = run_all(args.confs, seeds, args.runs_dir, args.dataroot, extra, gpus,
                               args.out, progress=not args.no_progress, jobs=args.jobs)
    except ConfigError as exc:
        return fail(" ".join(str(exc).split()))
    except InUse as exc:
        return fail(f"--runs_dir: {exc}, another harness")
    except OSError as exc:  # a full disk: the results written so far are whole
        return fail(f"cannot write {exc.filename or args.out}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        print("interrupted: the runs keep their last finished epoch; the same command "
              "continues", file=sys.stderr)
        return 130
    print(open(args.out, encoding="utf-8").read())
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""The reproduction harness: skipping finished runs, resuming, refusing other configs, slots."""
import json
import math
import os
import re
import subprocess
import sys

import pytest

from DeepAA_evaluate import reproduce as R
from DeepAA_evaluate.results_table import build_table

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _fake_result(runs, stem, seed, top1, cfg=None, finished=True, wall=120.0):
    path = runs / stem / f"seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"top1_test": top1, "finished": finished, "wall_time_s": wall,
                                "config": cfg or {"dataset": "cifar10", "epoch": 100,
                                                  "train_size": 4000, "aug": "none",
                                                  "model": {"type": "wresnet10_2"}}}))
    return path


TINY_CONF = ("model: {type: wresnet10_1}\ndataset: cifar10\naug: none\nbatch: 20\nepoch: 100\n"
             "lr: 0.05\nlr_schedule: {type: cosine}\n"
             "optimizer: {type: sgd, nesterov: true, decay: 0.0005}\n")


def _conf(tmp_path, name="a"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(TINY_CONF)
    return str(path)


def test_plan_skips_finished_and_resumes_interrupted(tmp_path):
    runs = tmp_path / "runs"
    conf = _conf(tmp_path)
    _fake_result(runs, "a", 1, 0.5, cfg=R.expected_config(conf, 1, []))
    _fake_result(runs, "a", 2, 0.5, finished=False)  # interrupted: checkpoint left behind
    (runs / "a" / "seed2.pth").write_bytes(b"x")
    todo, done = R.plan([conf], [1, 2, 3], str(runs))
    assert done == 1
    assert todo == [(conf, 2, True), (conf, 3, False)]
    cmd = R.trainer_command(conf, 2, str(runs), "data", ["--epoch", "3"], resume=True)
    assert "--resume" in cmd and "--overwrite" not in cmd and cmd[-2:] == ["--epoch", "3"]
    assert cmd[cmd.index("--save") + 1] == str(runs / "a" / "seed2.pth")


def test_a_result_of_another_config_is_refused_not_counted(tmp_path):
    """A finished smoke run (-- --epoch 2) left in the runs folder must not count as a seed of
    the full config; keys that only change execution (num_workers) may differ."""
    runs = tmp_path / "runs"
    conf = _conf(tmp_path)
    _fake_result(runs, "a", 1, 0.3, cfg=R.expected_config(conf, 1, ["--epoch", "2"]))
    _fake_result(runs, "a", 2, 0.5, cfg=R.expected_config(conf, 2, ["--num_workers", "3"]))
    with pytest.raises(R.ConfigError, match=r"seed1\.json was trained with another config "
                                            r"\(differs in epoch\)"):
        R.plan([conf], [1, 2], str(runs))
    assert R.plan([conf], [1], str(runs), ["--epoch", "2"]) == ([], 1)
    assert R.plan([conf], [2], str(runs)) == ([], 1)
    _fake_result(runs, "a", 3, 0.5, cfg=R.expected_config(conf, 4, []))  # filed as seed 3
    with pytest.raises(R.ConfigError, match=r"differs in seed\)"):
        R.plan([conf], [3], str(runs))
    out = tmp_path / "out.md"
    res = subprocess.run([sys.executable, "-m", "DeepAA_evaluate.reproduce", "--confs", conf,
                          "--seeds", "2", "--runs_dir", str(runs), "--out", str(out)],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "epoch" in res.stderr
    assert not out.exists() and sorted(os.listdir(runs / "a")) == [
        "seed1.json", "seed2.json", "seed3.json"]


def test_table_keeps_runs_of_other_configs_apart(tmp_path):
    runs = tmp_path / "runs"
    conf = _conf(tmp_path)
    for seed, top1 in ((10, 0.74), (1, 0.70), (2, 0.72)):
        _fake_result(runs, "a", seed, top1, cfg=R.expected_config(conf, seed, []))
    _fake_result(runs, "a", 3, 0.20, cfg=R.expected_config(conf, 3, ["--epoch", "2"]))
    # an --only-eval file beside a run is no run of its own
    (runs / "a" / "seed1_eval.json").write_text(json.dumps({"top1_test": 0.99}))
    rows = [line for line in build_table(str(runs)).splitlines()[2:]]
    assert rows[0].startswith("| a | 3 | 72.00 ± ") and len(rows) == 2
    assert "| 1: 70.00, 2: 72.00, 10: 74.00 |" in rows[0]  # in seed order, not file-name order
    assert rows[1].startswith("| a (epoch=2) | 1 | 20.00 (one run) | 3: 20.00 |")


def test_a_resume_the_trainer_refuses_keeps_its_checkpoint(tmp_path, monkeypatch, capsys):
    """Exit 2 on --resume (the checkpoint's config differs) is reported; the run is not
    started over with --overwrite, which would lose the checkpoint's epochs."""
    started, message = [], ["error: cannot resume: config differs from the checkpoint's in lr"]

    class Proc:
        def __init__(self, cmd, stdout, **kw):
            started.append(cmd)
            stdout.write(message[0] + "\n")

        def poll(self):
            return 2

    monkeypatch.setattr(R.subprocess, "Popen", Proc)
    runs = tmp_path / "runs"
    conf = _conf(tmp_path)
    (runs / "a").mkdir(parents=True)
    (runs / "a" / "seed1.pth").write_bytes(b"checkpoint")
    assert R.run_all([conf], [1], str(runs), "data", [], [], str(tmp_path / "out.md"),
                     progress=False) == 1
    assert len(started) == 1 and "--resume" in started[0]
    assert (runs / "a" / "seed1.pth").read_bytes() == b"checkpoint"
    assert "seed1.pth is kept" in capsys.readouterr().err
    # Exit 2 for another reason (the dataset is missing): no advice to drop the checkpoint.
    message[0] = "error: no dataset at data/cifar10"
    (runs / "a" / "seed1.log").write_text("")
    assert R.run_all([conf], [1], str(runs), "data", [], [], str(tmp_path / "out.md"),
                     progress=False) == 1
    err = capsys.readouterr().err
    assert "failed (exit 2)" in err and "is kept" not in err


def test_plan_is_seed_major_so_cells_fill_evenly(tmp_path):
    runs = tmp_path / "runs"
    a, b = _conf(tmp_path, "a"), _conf(tmp_path, "b")
    _fake_result(runs, "a", 1, 0.5, cfg=R.expected_config(a, 1, []))
    todo, done = R.plan([a, b], [1, 2], str(runs))
    assert done == 1 and [(c, s) for c, s, _ in todo] == [(b, 1), (a, 2), (b, 2)]


def test_cpu_jobs_run_side_by_side_with_split_threads(tmp_path, monkeypatch):
    """--jobs 2 without GPUs keeps two runs going at once, each told to use half the cores."""
    started, running, most = [], set(), [0]

    class Proc:
        def __init__(self, cmd, env, **kw):
            started.append((cmd, env))
            running.add(id(self))
            most[0] = max(most[0], len(running))
            self.polls = 0

        def poll(self):  # each run lasts a few polls, long enough for a second to start
            self.polls += 1
            if self.polls < 3:
                return None
            running.discard(id(self))
            return 0

    monkeypatch.setattr(R.subprocess, "Popen", Proc)
    monkeypatch.setattr(R.os, "cpu_count", lambda: 8)
    confs = [str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")]
    assert R.run_all(confs, [1], str(tmp_path / "runs"), "data", [], [],
                     str(tmp_path / "out.md"), progress=False, jobs=2) == 0
    assert len(started) == 2 and most[0] == 2  # both ran at once
    assert all(env["OMP_NUM_THREADS"] == "4" for _, env in started)
    assert all("CUDA_VISIBLE_DEVICES" not in env or env["CUDA_VISIBLE_DEVICES"] ==
               os.environ.get("CUDA_VISIBLE_DEVICES") for _, env in started)


def test_one_run_per_gpu_and_seeds_from_first_seed(tmp_path, monkeypatch):
    """--gpus 0,1: each run sees its own GPU (CUDA_VISIBLE_DEVICES) and all cores; --first_seed
    3 --seeds 2 runs seeds 3 and 4."""
    started = []

    class Proc:
        def __init__(self, cmd, env, **kw):
            started.append((cmd, env))

        def poll(self):
            return 0

    monkeypatch.setattr(R.subprocess, "Popen", Proc)
    conf = _conf(tmp_path)
    out = tmp_path / "out.md"
    assert R.main(["--confs", conf, "--seeds", "2", "--first_seed", "3", "--gpus", "0,1",
                   "--runs_dir", str(tmp_path / "runs"), "--out", str(out),
                   "--no_progress"]) == 0
    seeds = sorted(int(cmd[cmd.index("--seed") + 1]) for cmd, _ in started)
    assert seeds == [3, 4]
    assert sorted(env["CUDA_VISIBLE_DEVICES"] for _, env in started) == ["0", "1"]
    assert all("OMP_NUM_THREADS" not in env or env["OMP_NUM_THREADS"] ==
               os.environ.get("OMP_NUM_THREADS") for _, env in started)


def test_cli_table_only_and_bad_input(tmp_path):
    runs = tmp_path / "runs"
    _fake_result(runs, "x", 1, 0.5)
    out = tmp_path / "results.md"
    assert R.main(["--table_only", "--runs_dir", str(runs), "--out", str(out)]) == 0
    assert re.search(r"\| x \| 1 \| 50\.00 \(one run\)", out.read_text())
    conf = _conf(tmp_path)  # a valid config: each case fails for its own reason
    for args, words in ((["--confs", str(tmp_path / "missing.yaml")], "config not found"),
                        (["--confs", conf, "--seeds", "0"], "--seeds"),
                        ([], "--confs"),
                        (["--confs", conf, "--jobs", "0"], "--jobs"),
                        (["--confs", conf, "--", "--no_such_key", "1"], "no_such_key")):
        res = subprocess.run([sys.executable, "-m", "DeepAA_evaluate.reproduce", *args, "--out",
                              str(tmp_path / "bad.md"), "--runs_dir", str(tmp_path / "r2")],
                             capture_output=True, text=True, cwd=ROOT)
        assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
        assert words in res.stderr, (args, res.stderr)
        assert not (tmp_path / "bad.md").exists() and not (tmp_path / "r2").exists()


def test_one_real_tiny_run_then_skip(tmp_path, monkeypatch):
    """A real trainer run (WRN-10-1, 1 epoch, 40 images) through the harness; a second call
    finds the result file and starts nothing."""
    from deepaa_data.synthetic import make_synthetic

    monkeypatch.chdir(tmp_path)  # the trainer writes logs/<tag>/ under the working folder
    monkeypatch.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    make_synthetic(str(tmp_path / "data"), n_train=40, n_test=20)
    conf = tmp_path / "tiny.yaml"
    conf.write_text(
        f"model: {{type: wresnet10_1}}\ndataset: npz:{tmp_path / 'data'}\naug: none\n"
        "batch: 20\nepoch: 1\nlr: 0.05\nlr_schedule: {type: cosine}\n"
        "optimizer: {type: sgd, nesterov: true, decay: 0.0005}\ntest_interval: 1\nnum_workers: 0\n")
    runs, out = tmp_path / "runs", tmp_path / "results.md"
    argv = ["--confs", str(conf), "--seeds", "1", "--runs_dir", str(runs), "--out", str(out),
            "--no_progress"]
    assert R.main(argv) == 0, (runs / "tiny" / "seed1.log").read_text()[-2000:]
    result = json.loads((runs / "tiny" / "seed1.json").read_text())
    assert result["finished"] and 0.0 <= result["top1_test"] <= 1.0
    assert re.search(r"\| tiny \| 1 \| \d+\.\d\d \(one run\) \| 1: \d+\.\d\d \| — \|",
                     out.read_text())
    log_size = (runs / "tiny" / "seed1.log").stat().st_size
    assert R.main(argv) == 0
    assert (runs / "tiny" / "seed1.log").stat().st_size == log_size  # skipped: nothing ran


def test_a_runs_dir_in_use_by_another_harness_is_refused(tmp_path, capsys):
    from augmentation.files import exclusive

    runs = tmp_path / "runs"
    conf = _conf(tmp_path)
    with exclusive(runs / ".harness.lock", "x"):
        code = R.main(["--confs", conf, "--seeds", "1", "--runs_dir", str(runs), "--out",
                       str(tmp_path / "out.md"), "--no_progress"])
        assert os.listdir(runs) == [".harness.lock"]  # the refused harness started nothing
    err = capsys.readouterr().err
    assert code == 2 and f"in use by pid {os.getpid()}, another harness" in err
    assert not (tmp_path / "out.md").exists()


@pytest.mark.parametrize("case", ["seeds 10**6", "first_seed -1", "last seed past 2**32",
                                  "jobs 10**9", "out under a file", "out on /proc",
                                  "runs_dir under a file"])
def test_more_bad_input_is_one_line_before_any_run(tmp_path, capsys, case):
    conf = _conf(tmp_path)
    (tmp_path / "a_file").write_text("x")
    out, runs = tmp_path / "out.md", tmp_path / "runs"
    extra = {"seeds 10**6": ["--seeds", str(10**6)], "first_seed -1": ["--first_seed", "-1"],
             "last seed past 2**32": ["--first_seed", str(2**32 - 1), "--seeds", "2"],
             "jobs 10**9": ["--jobs", str(10**9)]}.get(case, [])
    if case == "out under a file":
        out = tmp_path / "a_file" / "out.md"
    elif case == "out on /proc":
        out = "/proc/deepaa/out.md"
    elif case == "runs_dir under a file":
        runs = tmp_path / "a_file" / "runs"
    before = sorted(p.name for p in tmp_path.iterdir())
    code = R.main(["--confs", conf, "--runs_dir", str(runs), "--out", str(out),
                   "--no_progress", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_malformed_result_files_are_left_out_of_the_table(tmp_path):
    """Result files that parse as JSON but hold no usable top-1 (text, NaN, outside [0, 1],
    a list), an ill-typed config or wall time: left out, as unreadable ones are."""
    runs = tmp_path / "runs"
    good = _fake_result(runs, "x", 1, 0.5)
    for seed, change in enumerate([{"top1_test": "abc"}, {"top1_test": float("nan")},
                                   {"top1_test": 1.5}, {"top1_test": [0.5]},
                                   {"config": [1]}, {"wall_time_s": "long"}], start=2):
        path = _fake_result(runs, "x", seed, 0.5)
        path.write_text(json.dumps(dict(json.loads(path.read_text()), **change)))
    (runs / "x" / "seed9.json").write_text("[" * 100000)  # deeper than the parser goes
    out = tmp_path / "t.md"
    assert R.main(["--table_only", "--runs_dir", str(runs), "--out", str(out)]) == 0
    assert re.search(r"\| x \| 1 \| 50\.00 \(one run\) \|", out.read_text())
    assert good.exists()


def test_ctrl_c_stops_the_runs_and_the_harness(tmp_path, monkeypatch, capsys):
    """Ctrl-C while runs are under way: each run is sent SIGINT (it keeps its last epoch)
    and waited for, and the harness ends with one line and exit code 130."""
    import signal

    signals = []

    class Proc:
        def __init__(self, *args, **kwargs):
            self.stopped = False

        def poll(self):
            return 130 if self.stopped else None

        def send_signal(self, sig):
            signals.append(sig)
            self.stopped = True

        def wait(self, timeout=None):
            return 130

    def interrupted(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(R.subprocess, "Popen", Proc)
    monkeypatch.setattr(R.time, "sleep", interrupted)
    confs = [_conf(tmp_path, "a"), _conf(tmp_path, "b")]
    code = R.main(["--confs", *confs, "--seeds", "1", "--jobs", "2", "--runs_dir",
                   str(tmp_path / "runs"), "--out", str(tmp_path / "out.md"), "--no_progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and err[-1].startswith("interrupted: the runs keep their last")
    assert signals == [signal.SIGINT, signal.SIGINT]  # both runs, once each


def test_a_full_disk_while_writing_the_table_is_one_line(tmp_path, monkeypatch, capsys):
    import errno

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    runs = tmp_path / "runs"
    _fake_result(runs, "x", 1, 0.5)
    monkeypatch.setattr("DeepAA_evaluate.results_table.atomic_write", full)
    out = tmp_path / "t.md"
    assert R.main(["--table_only", "--runs_dir", str(runs), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: cannot write {tmp_path / 't.json'}: No space left on device"]

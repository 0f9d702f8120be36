"""End-to-end CPU runs of the trainer on a generated npz dataset (tiny WRN-10-1)."""
import json
import os

import numpy as np
import pytest
import torch

from DeepAA_evaluate.train import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_one_epoch_writes_checkpoint_results_and_logs(tiny, capsys, monkeypatch):
    path, work = tiny
    save = work / "ck" / "run.pth"
    one = ["--epoch", "1", "--lr_schedule.warmup.epoch", "0"]
    res = main(["-c", str(path), "--save", str(save), "--tag", "exp"] + one)
    on_disk = json.loads((work / "ck" / "run.json").read_text())
    for key in ("top1_test", "top5_test", "top1_train", "top5_train", "history", "config",
                "wall_time_s"):
        assert key in on_disk
    assert on_disk["top1_test"] == res["top1_test"] and 0.0 <= res["top1_test"] <= 1.0
    assert res["history"][0]["train"]["n"] == 24 and res["history"][0]["test"]["n"] == 8
    assert res["config"]["epoch"] == 1 and res["finished"] and res["steps_per_epoch"] == 6
    ckpt = torch.load(save, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1 and {"optimizer", "scheduler", "rng", "config"} <= set(ckpt)
    assert os.listdir(work / "logs" / "exp")
    assert not [f for f in os.listdir(work / "ck") if f.endswith(".tmp")]
    umask = os.umask(0o022)
    os.umask(umask)
    for out in (save, work / "ck" / "run.json"):  # usual file modes, not mkstemp's 0600
        assert os.stat(out).st_mode & 0o777 == 0o666 & ~umask

    # An existing --save is never resumed silently.
    stored = save.read_bytes()
    with pytest.raises(SystemExit) as exc:
        main(["-c", str(path), "--save", str(save)] + one)
    assert exc.value.code == 2 and "--resume" in capsys.readouterr().err
    assert save.read_bytes() == stored

    # --only-eval evaluates the stored weights (the loss, unlike top-1 on 8 images, tells
    # them from any other weights).
    ev = main(["-c", str(path), "--save", str(save), "--only-eval"] + one)
    assert ev["top1_test"] == pytest.approx(res["top1_test"])
    assert ev["loss_test"] == pytest.approx(res["loss_test"], rel=1e-6)
    assert (work / "ck" / "run_eval.json").exists()

    # --overwrite with --only-eval is refused (it would delete the run's results).
    with pytest.raises(SystemExit):
        main(["-c", str(path), "--save", str(save), "--only-eval", "--overwrite"] + one)
    assert (work / "ck" / "run.json").exists()

    # --overwrite starts over: a bad config changes nothing; once the new run starts, the old
    # run's results are gone even if it then fails.
    with pytest.raises(SystemExit):
        main(["-c", str(path), "--save", str(save), "--overwrite", "--lr", "-1"] + one)
    assert (work / "ck" / "run.json").exists() and (work / "ck" / "run_eval.json").exists()

    def crash(*args, **kwargs):
        raise RuntimeError("crashed in epoch 1")

    monkeypatch.setattr("DeepAA_evaluate.train.train_epoch", crash)
    with pytest.raises(RuntimeError, match="crashed"):
        main(["-c", str(path), "--save", str(save), "--overwrite"] + one)
    assert not (work / "ck" / "run.json").exists()
    assert not (work / "ck" / "run_eval.json").exists()
    assert _weights_epoch(save) == 1  # the old checkpoint stays until an epoch replaces it


def _weights_epoch(path):
    return torch.load(path, map_location="cpu", weights_only=True)["epoch"]


@pytest.fixture
def restore_determinism(monkeypatch):
    """``deterministic: true`` sets process-wide torch flags and CUBLAS_WORKSPACE_CONFIG; put
    them back after the test."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2:]


def test_deterministic_sets_the_torch_flags(restore_determinism):
    from DeepAA_evaluate.engine import Runtime

    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = True, False
    Runtime({"amp": None, "deterministic": False})
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
    Runtime({"amp": None, "deterministic": True})
    # warn only: the 1x1 adaptive average pool's backward has no deterministic CUDA version
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic


@pytest.mark.parametrize("backend", ["pil", "batch"])
def test_resume_equals_uninterrupted_run(tiny, restore_determinism, backend):
    """Bit for bit: on a CPU as configured; on a GPU with ``deterministic: true`` (without it,
    cuDNN's kernels may sum in another order in every run); with the policy per image or per
    batch in the loader."""
    path, work = tiny
    full, part = work / "full.pth", work / "part.pth"
    small = ["--train_size", "12", "--aug_backend", backend]  # 3 steps per epoch
    if torch.cuda.is_available():
        small += ["--deterministic", "true"]
    a = main(["-c", str(path), "--save", str(full)] + small)
    main(["-c", str(path), "--save", str(part), "--early_finish_epoch", "1"] + small)
    assert _weights_epoch(part) == 1
    with pytest.raises(SystemExit):  # a changed config cannot be resumed
        main(["-c", str(path), "--save", str(part), "--resume", "--lr", "0.2"] + small)
    b = main(["-c", str(path), "--save", str(part), "--resume"] + small)
    wa, wb = _weights(full), _weights(part)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert a["top1_test"] == b["top1_test"] and len(b["history"]) == 2
    assert [h["train"]["loss"] for h in a["history"]] == [h["train"]["loss"] for h in b["history"]]


def test_resume_may_change_the_memory_layout(tiny):
    """channels_last changes how a run executes, not what it computes: a run started without it
    resumes with it (and the resumed epoch happens in NHWC)."""
    path, work = tiny
    part = work / "layout.pth"
    small = ["--train_size", "12"]
    main(["-c", str(path), "--save", str(part), "--early_finish_epoch", "1"] + small)
    res = main(["-c", str(path), "--save", str(part), "--resume", "--channels_last", "true"]
               + small)
    assert len(res["history"]) == 2 and res["config"]["channels_last"] is True


def test_gradient_is_clipped_to_the_configured_norm(tiny):
    """optimizer.clip bounds the global gradient norm: with plain SGD (no momentum, no decay)
    one step moves the weights by lr x min(clip, |g|) along the same direction, so two clips
    below |g| end lr x (c2 - c1) apart; without clipping the step is far longer."""
    path, work = tiny
    lr, weights = 0.05, {}
    for clip in (1e-4, 3e-4, 0.0):
        save = work / f"clip{clip}.pth"
        main(["-c", str(path), "--save", str(save), "--aug", "none", "--epoch", "1",
              "--train_size", "8", "--batch", "8", "--lr", str(lr),
              "--lr_schedule.type", "constant", "--lr_schedule.warmup.epoch", "0",
              "--optimizer.momentum", "0.0", "--optimizer.nesterov", "false",
              "--optimizer.decay", "0.0", "--optimizer.clip", str(clip)])
        state = _weights(save)
        weights[clip] = torch.cat([v.flatten().double() for k, v in state.items()
                                   if "running" not in k and "num_batches" not in k])
    gap = (weights[3e-4] - weights[1e-4]).norm().item()
    assert gap == pytest.approx(lr * 2e-4, rel=1e-2)  # float32 weights round the steps
    assert (weights[0.0] - weights[1e-4]).norm().item() > 100 * gap


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_runs_the_model_in_half_precision(tiny, amp):
    """amp: the forward pass runs under autocast in that dtype (checked on a linear layer of
    the trainer's Runtime) and a training epoch ends with a finite loss."""
    from DeepAA_evaluate.engine import Runtime

    rt = Runtime({"amp": amp})
    with rt.autocast():
        out = torch.nn.functional.linear(torch.ones(2, 4, device=rt.device),
                                         torch.ones(3, 4, device=rt.device))
    assert out.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    path, work = tiny
    res = main(["-c", str(path), "--aug", "none", "--epoch", "1", "--amp", amp,
                "--lr_schedule.warmup.epoch", "0", "--train_size", "8", "--batch", "8"])
    assert res["finished"] and np.isfinite(res["history"][0]["train"]["loss"])


def test_save_model_false_writes_results_but_no_checkpoint(tiny):
    path, work = tiny
    save = work / "nock" / "run.pth"
    main(["-c", str(path), "--save", str(save), "--save_model", "false", "--epoch", "1",
          "--lr_schedule.warmup.epoch", "0"])
    assert (work / "nock" / "run.json").exists() and not save.exists()


@pytest.mark.parametrize("aug", ["default", "trivialaugment", "randaugment", "none"])
def test_baselines_run_in_the_same_trainer(tiny, aug):
    path, work = tiny
    res = main(["-c", str(path), "--aug", aug, "--epoch", "1", "--lr_schedule.warmup.epoch", "0",
                "--train_size", "8", "--batch", "8"])
    assert res["n_train"] == 8 and res["history"][0]["train"]["n"] == 8
    assert res["config"]["aug"] == aug


def test_batch_augmentation_on_one_process(tiny):
    path, work = tiny
    res = main(["-c", str(path), "--epoch", "1", "--lr_schedule.warmup.epoch", "0",
                "--all_workers_use_the_same_batches", "true", "--gpus", "3", "--batch", "4",
                "--train_size", "8"])
    assert res["steps_per_epoch"] == 2  # 8 images / 4 unique per step
    assert res["global_batch"] == {"unique_images": 4, "copies": 3, "per_process": 12,
                                   "virtual_worker_batch": 4}
    assert res["history"][0]["train"]["n"] == 24  # each image 3 times


@pytest.mark.parametrize("backend", ["tensor", "batch"])
def test_batched_backends_apply_the_policy_per_batch(tiny, monkeypatch, backend):
    """aug_backend tensor (on the device) and batch (in the loader) run the policy on whole
    uint8 batches of the virtual-worker size, mirror on."""
    import augmentation.batched as batched

    calls = []
    real = batched.apply_policy_batch

    def spy(policy, x, mirror=True, generator=None, index=None):
        out = real(policy, x, mirror=mirror, generator=generator, index=index)
        batch = x if index is None else x[torch.as_tensor(index)]  # stored images, by index
        calls.append((batch.dtype, tuple(batch.shape), out.dtype, tuple(out.shape), mirror))
        return out

    monkeypatch.setattr(batched, "apply_policy_batch", spy)
    path, work = tiny
    res = main(["-c", str(path), "--aug_backend", backend, "--epoch", "1",
                "--lr_schedule.warmup.epoch", "0", "--batch", "8"])
    assert res["history"][0]["train"]["n"] == 24
    assert calls == [(torch.uint8, (8, 3, 16, 16), torch.uint8, (8, 3, 16, 16), True)] * 3


def test_test_accuracy_every_interval_and_in_the_last_five_epochs():
    from DeepAA_evaluate.train import evaluates_at

    cfg = {"epoch": 200, "test_interval": 20, "early_finish_epoch": None}
    want = set(range(20, 201, 20)) | {196, 197, 198, 199, 200}
    assert {e for e in range(1, 201) if evaluates_at(e, cfg)} == want
    cfg["early_finish_epoch"] = 33
    assert evaluates_at(33, cfg) and not evaluates_at(32, cfg)


def test_a_checkpoint_in_use_is_refused_and_a_refused_run_leaves_no_folder(tiny, capsys):
    """A second trainer on a --save that a live run holds stops with exit 2 (it would
    overwrite the other run's epochs); a run refused for bad input leaves no folder behind."""
    from augmentation.files import exclusive

    path, work = tiny
    save = work / "ck" / "run.pth"
    with exclusive(str(save) + ".lock", str(save)):  # this process stands in for the live run
        with pytest.raises(SystemExit) as exc:
            main(["-c", str(path), "--save", str(save)])
        assert os.listdir(work / "ck") == ["run.pth.lock"]  # the refused run wrote nothing
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.count("\n") == 0
    assert f"is in use by pid {os.getpid()}" in err
    assert not (work / "ck").exists()
    with pytest.raises(SystemExit):
        main(["-c", str(path), "--save", str(work / "new" / "run.pth"), "--deepaa.EXP", "nope"])
    assert not (work / "new").exists()


@pytest.mark.parametrize("flags, words", [
    (lambda w: ["--save", str(w / "tiny.yaml" / "run.pth")], "--save: "),
    (lambda w: ["--save", "/proc/deepaa/run.pth"], "--save: cannot write in '/proc'"),
    (lambda w: ["--save", str(w / "run.pth"), "--tag", "../tiny.yaml/x"], "--tag: "),
    (lambda w: ["--save", str(w / "data")], "is a directory"),
])
def test_outputs_that_cannot_be_written_are_refused_before_the_first_epoch(tiny, capsys, flags,
                                                                          words):
    path, work = tiny
    before = sorted(p.name for p in work.iterdir())
    with pytest.raises(SystemExit) as exc:
        main(["-c", str(path), "--epoch", "1", "--lr_schedule.warmup.epoch", "0"] + flags(work))
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and words in err[0], err
    assert sorted(p.name for p in work.iterdir()) == before


def _folder_dataset(root, bad):
    """An ImageFolder of 2 classes x 8 PNGs 16x16; the files named in ``bad`` do not decode."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(2):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(8):
                path = folder / f"{i}.png"
                if f"{split}/c{c}/{i}" in bad:
                    path.write_bytes(b"\x89PNG\r\n\x1a\n then garbage")
                else:
                    Image.fromarray(rng.integers(0, 256, (16, 16, 3), np.uint8)).save(path)
    return root


@pytest.mark.parametrize("workers, aug", [(0, ["--aug", "none"]), (1, ["--aug", "none"]),
                                          (1, ["--aug_backend", "batch"])])
def test_an_image_that_does_not_decode_is_one_line_and_leaves_no_logs(tiny, capsys, workers,
                                                                       aug):
    """A damaged file of a folder dataset is found in the epoch that reads it, in the main
    process or in a loader worker (whose error carries the worker's traceback), also where the
    worker builds whole batches (aug_backend batch): one line naming the file, exit 2, and the
    logs/<tag>/ folder the run had made is gone."""
    path, work = tiny
    data = _folder_dataset(work / "folder", bad={"train/c1/3"})
    with pytest.raises(SystemExit) as exc:
        main(["-c", str(path), "--dataset", f"folder:{data}", *aug, "--epoch", "1",
              "--lr_schedule.warmup.epoch", "0", "--num_workers", str(workers), "--tag", "t",
              "--save", str(work / "run.pth")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and "Traceback" not in "\n".join(err)
    assert err[-1].startswith("error: cannot read image ") and "c1/3.png" in err[-1], err[-1]
    assert not (work / "logs").exists() and not (work / "run.pth").exists()


def test_a_loss_that_is_not_finite_is_one_line_naming_lr(tiny, capsys, monkeypatch):
    def diverged(*args, **kwargs):
        raise FloatingPointError("the training loss is nan in epoch 1")

    monkeypatch.setattr("DeepAA_evaluate.train.train_epoch", diverged)
    path, work = tiny
    with pytest.raises(SystemExit) as exc:
        main(["-c", str(path), "--epoch", "1", "--lr_schedule.warmup.epoch", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error: config key 'lr'")


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(tiny):
    """The checkpoint of epoch 1 is written; the resumed run may write files of half its size
    only (RLIMIT_FSIZE, as a disk that fills up), so the checkpoint of epoch 2 fails: one
    line naming it, exit 2, no temporary file, and the checkpoint of epoch 1 as it was."""
    import resource
    import signal
    import subprocess
    import sys

    path, work = tiny
    save = work / "run.pth"
    main(["-c", str(path), "--save", str(save), "--early_finish_epoch", "1", "--train_size", "8"])
    size = save.stat().st_size
    stored = save.read_bytes()

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))

    res = subprocess.run([sys.executable, "-m", "DeepAA_evaluate.train", "-c", str(path),
                          "--save", str(save), "--resume", "--train_size", "8"], cwd=work,
                         capture_output=True, text=True, preexec_fn=limited,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert last.startswith(f"error: cannot read or write {save}") and "large" in last, last
    assert save.read_bytes() == stored and not [p for p in work.iterdir() if ".tmp" in p.name]


def test_ctrl_c_in_a_background_trainer_is_one_line_and_resumes(tiny):
    """A trainer started as a background job inherits SIGINT ignored; it must still stop on
    kill -INT, with one line (no traceback), exit 130 and the last epoch kept."""
    import signal
    import subprocess
    import sys
    import time

    path, work = tiny
    save = work / "bg.pth"
    proc = subprocess.Popen([sys.executable, "-m", "DeepAA_evaluate.train", "-c", str(path),
                             "--save", str(save), "--epoch", "50", "--train_size", "8"],
                            cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=ROOT),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.time() + 240
        while not save.exists() and time.time() < deadline:  # epoch 1 is saved
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = err.decode()
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1] == (f"interrupted; {save} holds the last finished "
                                            "epoch: continue with --resume")
    epoch = _weights_epoch(save)
    res = main(["-c", str(path), "--save", str(save), "--resume", "--train_size", "8",
                "--epoch", "50", "--early_finish_epoch", str(epoch + 1)])
    assert res["history"][-1]["epoch"] == epoch + 1

"""DDP (gloo, 2 CPU processes under torchrun) computes the same update as one process that
runs the two workers' batches itself."""
import os
import socket
import subprocess
import sys

import torch

from DeepAA_evaluate.train import main
from networks.torch_models import get_model

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_one_process(tiny, monkeypatch):
    path, work = tiny
    flags = ["--epoch", "1", "--lr_schedule.warmup.epoch", "0", "--gpus", "2", "--lr", "0.2",
             "--train_size", "16"]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "DeepAA_evaluate.train", "-c", str(path), "--save", str(work / "ddp.pth")] + flags
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-6000:]
    # the single process on the CPU too, where a GPU is visible to the tests
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    single = main(["-c", str(path), "--save", str(work / "one.pth")] + flags)
    assert single["global_batch"]["per_process"] == 8 and single["global_batch"]["virtual_worker_batch"] == 4
    a = torch.load(work / "ddp.pth", map_location="cpu", weights_only=True)
    b = torch.load(work / "one.pth", map_location="cpu", weights_only=True)
    params = [k for k in a["model"] if not k.endswith(("running_mean", "running_var",
                                                       "num_batches_tracked"))]
    assert params
    torch.manual_seed(3)  # the seed of the tiny config: the models' common initial weights
    init = get_model("wresnet10_1", 4).state_dict()
    assert any(not torch.allclose(init[k], b["model"][k]) for k in params)  # an update happened
    for k in params:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6)
    # The training statistics agree too (summed over both processes).
    ha, hb = a["history"][0]["train"], b["history"][0]["train"]
    assert ha["n"] == hb["n"] == 16
    assert abs(ha["loss"] - hb["loss"]) < 1e-5 and ha["top1"] == hb["top1"]

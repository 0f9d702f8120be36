"""Fixtures for the trainer tests: a tiny generated npz dataset and a tiny config."""
import json

import numpy as np
import pytest
import yaml


def write_npz_dataset(directory, n_train=24, n_test=8, size=16, n_classes=4, seed=0):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        y = np.arange(n) % n_classes
        # Class-dependent mean colour so a few steps can learn something.
        x = rng.integers(0, 80, (n, size, size, 3)) + (y * 40)[:, None, None, None]
        np.savez(directory / f"{split}_00.npz", x=x.clip(0, 255).astype(np.uint8), y=y)
    (directory / "classes.json").write_text(json.dumps([f"c{i}" for i in range(n_classes)]))
    return directory


TINY = {
    "model": {"type": "wresnet10_1"},
    "aug": "DeepAA",
    "deepaa": {"EXP": "cifar_1"},
    "batch": 4,
    "epoch": 2,
    "lr": 0.05,
    "lr_schedule": {"type": "cosine", "warmup": {"multiplier": 1, "epoch": 1}},
    "optimizer": {"type": "sgd", "nesterov": True, "decay": 0.0005},
    "seed": 3,
    "num_workers": 0,
}


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """(config path, work dir) for a 2-epoch WRN-10-1 run on 24 generated 16x16 images."""
    monkeypatch.chdir(tmp_path)
    data = write_npz_dataset(tmp_path / "data")
    cfg = dict(TINY, dataset=f"npz:{data}")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, tmp_path


@pytest.fixture(scope="module")
def tiny_shared(tmp_path_factory):
    """(config path, work dir) like ``tiny``, made once per test module (no chdir: runs
    without --tag write only beside --save)."""
    work = tmp_path_factory.mktemp("tiny")
    data = write_npz_dataset(work / "data")
    path = work / "tiny.yaml"
    path.write_text(yaml.safe_dump(dict(TINY, dataset=f"npz:{data}")))
    return path, work

"""Trainer checkpoints (DeepAA_evaluate/checkpoint.py): a checkpoint that loads but holds a
missing or ill-typed field, or one that does not load, is one line and exit code 2 on
--resume, and the file is left as it was."""
import pytest
import torch

from DeepAA_evaluate.train import main

@pytest.fixture(scope="module")
def saved(tiny_shared):
    """A checkpoint after epoch 1 of 2 (the run stopped early) and its config, made once."""
    path, work = tiny_shared
    main(["-c", str(path), "--save", str(work / "run.pth"), "--early_finish_epoch", "1",
          "--train_size", "8"])
    return torch.load(work / "run.pth", map_location="cpu", weights_only=True), path


def _drop(key):
    return lambda ck: {k: v for k, v in ck.items() if k != key}


def _set(key, value):
    return lambda ck: dict(ck, **{key: value(ck) if callable(value) else value})


# Each case turns the good checkpoint into a damaged one (or into other bytes).
DAMAGED = {
    "no history": _drop("history"),
    "no optimizer": _drop("optimizer"),
    "epoch a string": _set("epoch", "1"),
    "epoch negative": _set("epoch", -3),
    "epoch a bool": _set("epoch", True),
    "history of numbers": _set("history", [1, 2]),
    "results a list": _set("result", [0.5]),
    "config a list": _set("config", ["lr"]),
    "weights not tensors": _set("model", lambda ck: {k: 1.0 for k in ck["model"]}),
    "optimizer of another model": _set("optimizer", lambda ck: {
        "state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}),
    "rng state cut": _set("rng", {"torch": torch.zeros(3, dtype=torch.uint8)}),
    "scheduler state of another kind": _set("scheduler", {"x": 1}),
    "a tensor, not a dict": lambda ck: torch.zeros(3),
    "truncated": "truncated",
    "empty": "empty",
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_a_damaged_checkpoint_is_one_line_on_resume(saved, capsys, case, tmp_path):
    ck, path = saved
    save = tmp_path / "run.pth"
    damage = DAMAGED[case]
    if damage == "truncated":
        torch.save(ck, save)
        save.write_bytes(save.read_bytes()[:2000])
    elif damage == "empty":
        save.write_bytes(b"")
    else:
        torch.save(damage(ck), save)
    before = save.read_bytes()
    with pytest.raises(SystemExit) as exc:
        main(["-c", str(path), "--save", str(save), "--resume", "--train_size", "8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert "checkpoint" in err[0]
    assert save.read_bytes() == before  # nothing written over it
    assert [p.name for p in tmp_path.iterdir()] == ["run.pth"]


def test_only_eval_needs_only_the_weights(saved, capsys, tmp_path):
    """--only-eval reads the model and the epoch; a checkpoint without optimiser state (say
    one made for sharing) evaluates, one without weights does not."""
    ck, path = saved
    save = tmp_path / "run.pth"
    torch.save({"model": ck["model"], "epoch": 1}, save)
    res = main(["-c", str(path), "--save", str(save), "--only-eval", "--train_size", "8"])
    assert res["epoch"] == 1
    torch.save({"model": [1, 2], "epoch": 1}, save)
    with pytest.raises(SystemExit):
        main(["-c", str(path), "--save", str(save), "--only-eval", "--train_size", "8"])
    assert "field 'model'" in capsys.readouterr().err

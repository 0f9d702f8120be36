"""The search's checks in one place (policy_search/checks.py): every number flag finite and
bounded, every output writable, the memory of a step, an --out that is not another search's."""
import os

import pytest

from policy_search import checks, config

BASE = ["--dataset", "npz:data", "--n_classes", "4", "--use_model", "WRN_10_1", "--preset", "cpu"]


def _validate(tmp_path, *flags):
    args = config.parse_args(BASE + ["--results_dir", str(tmp_path / "r"), *flags])
    config.validate(args)
    return args


HUGE = str(10**40)
BAD_NUMBERS = [
    ("--policy_lr", "nan"), ("--policy_lr", "inf"), ("--policy_lr", "-0.1"), ("--policy_lr", "0"),
    ("--policy_lr", "1e400"), ("--pretrain_lr", "-1"), ("--pretrain_lr", "nan"),
    ("--pretrain_lr", "0"), ("--pretrain_lr", "1e3"), ("--clip_policy_gradient_norm", "nan"),
    ("--seed", "-1"), ("--seed", str(2**32)), ("--seed", HUGE), ("--l_mags", "1999999999"),
    ("--l_mags", "4"), ("--l_mags", "257"), ("--n_policies", "1000000000"), ("--n_policies", "0"),
    ("--search_bno", HUGE), ("--EXP_G", "0"), ("--EXP_G", HUGE), ("--nb_epochs", "-1"),
    ("--nb_epochs", HUGE), ("--cpu_replicas", "100000"), ("--chunk_size", "0"),
    ("--chunk_size", HUGE), ("--batch_size", HUGE), ("--n_classes", "0"),
    ("--n_val_per_point", "-3"), ("--checkpoint_every", "0"), ("--stop_after_steps", "-1"),
]


@pytest.mark.parametrize("flag, value", BAD_NUMBERS)
def test_numbers_that_are_not_finite_or_out_of_bounds_name_their_flag(tmp_path, flag, value):
    with pytest.raises(config.UsageError) as err:
        _validate(tmp_path, flag, value)
    assert err.value.flag == flag and "\n" not in str(err.value)
    assert len(str(err.value)) < 200  # a number of forty digits is not printed whole
    assert not os.listdir(tmp_path)


def test_every_number_flag_has_bounds():
    """A number flag added later without bounds would escape the checks."""
    numbers = {a.dest for a in config.build_parser()._actions if a.type in (int, float)}
    assert numbers - {"port"} == set(checks.INTS) | set(checks.FLOATS) | {"l_mags", "chunk_size"}


def test_the_paper_settings_pass(tmp_path):
    args = _validate(tmp_path, "--preset", "paper", "--seed", str(2**32 - 1), "--l_mags", "255")
    assert args.EXP_G == 16


def _unwritable(tmp_path, kind):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    return {"under a file": str(a_file / "sub"), "pseudo file system": "/proc/deepaa/none",
            "empty": ""}[kind]


@pytest.mark.parametrize("kind", ["under a file", "pseudo file system", "empty"])
def test_outputs_that_cannot_be_written_are_refused_before_any_work(tmp_path, kind):
    bad = _unwritable(tmp_path, kind)
    out = os.path.join(bad, "p.yaml") if bad else ""
    for flags, flag in ((["--results_dir", bad], "--results_dir"), (["--out", out], "--out")):
        args = config.parse_args(BASE + ["--results_dir", str(tmp_path / "r")] + flags)
        with pytest.raises(config.UsageError) as err:
            config.validate(args)
        assert err.value.flag == flag, str(err.value)
    assert sorted(os.listdir(tmp_path)) == ["a_file"]


def test_the_npz_export_is_checked_too(tmp_path):
    (tmp_path / "p.npz").mkdir()  # where --export_npz would write its file
    args = config.parse_args(BASE + ["--results_dir", str(tmp_path / "r"), "--out",
                                     str(tmp_path / "p.yaml"), "--export_npz"])
    with pytest.raises(config.UsageError, match="--out.*is a folder"):
        config.validate(args)


def test_a_step_larger_than_memory_is_refused_naming_the_flag_given():
    args = config.parse_args(BASE + ["--EXP_G", "1000"])
    assert checks.step_images(args, 3) == 2 * (1000 * 139 + 139 + 64)  # cpu: 2 points, 2 layers
    sizes = {"batch_size": 100, "val_batch_size": 100, "test_batch_size": 100}
    checks.memory(args, 32, 3, sizes, available=2**40)  # fits in a terabyte
    with pytest.raises(config.UsageError, match=r"^--EXP_G: a search step .* GiB of 32x32"):
        checks.memory(args, 32, 3, sizes, available=2**30)
    big_batch = config.parse_args(BASE + ["--val_batch_size", "100000"])
    checks.memory(big_batch, 224, 3, dict(sizes, val_batch_size=10), available=2**31)
    with pytest.raises(config.UsageError, match="^--val_batch_size"):  # capped by the split
        checks.memory(big_batch, 224, 3, dict(sizes, val_batch_size=100000), available=2**31)


def test_an_existing_out_is_another_searchs_unless_the_checkpoint_wrote_it(tmp_path):
    out = tmp_path / "p.yaml"
    args = config.parse_args(BASE + ["--out", str(out), "--export_npz"])
    checks.out_is_free(args, None)
    (tmp_path / "p.npz").write_text("x")
    with pytest.raises(config.UsageError, match="^--out: .*p.npz exists"):
        checks.out_is_free(args, None)
    out.write_text("x")
    checks.out_is_free(args, str(out))  # the checkpoint being resumed wrote it
    with pytest.raises(config.UsageError, match="p.yaml exists"):
        checks.out_is_free(args, str(tmp_path / "other.yaml"))


@pytest.mark.parametrize("value", ["{not json", "[1, 2]", '{"cluster": ["a:1"]}',
                                   '{"cluster": {"worker": "a:1"}}',
                                   '{"cluster": {"worker": ["a:1"]}, "task": {"index": 3}}',
                                   '{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps"}}'])
def test_a_malformed_tf_config_is_one_line(value):
    with pytest.raises(config.UsageError) as err:
        checks.environment({"TF_CONFIG": value})
    assert err.value.flag == "TF_CONFIG" and "\n" not in str(err.value)


def test_tf_config_of_a_cluster_passes():
    cluster = '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}'
    checks.environment({"TF_CONFIG": cluster})
    checks.environment({})


@pytest.mark.parametrize("environ, flag", [({"RANK": "x"}, "RANK"),
                                           ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK"),
                                           ({"WORLD_SIZE": "0"}, "RANK"),
                                           ({"WORLD_SIZE": "2", "LOCAL_RANK": "-1"}, "RANK"),
                                           ({"WORLD_SIZE": "two"}, "WORLD_SIZE")])
def test_torchrun_variables_that_do_not_fit_are_one_line(environ, flag):
    """--backend torch checks torchrun's variables instead of TF_CONFIG."""
    with pytest.raises(config.UsageError) as err:
        checks.environment(environ, backend="torch")
    assert err.value.flag == flag and "\n" not in str(err.value)
    checks.environment({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}, backend="torch")
    checks.environment({"TF_CONFIG": "{not json"}, backend="torch")  # not torch's

"""The npz <-> YAML converter (SPEC §2 "Output"), on small released-format files built here."""
import subprocess
import sys

import numpy as np
import pytest
import yaml

from augmentation import space
from augmentation.convert import main, npz_to_policy, policy_to_npz
from augmentation.policy import Policy, PolicyError, load_policy

# The op_names arrays as the released search wrote them (ImageNet: its own two names).
RELEASED_OP_NAMES = [
    "Identity:(0.0,,1.0)", "ShearX:(-0.3,,0.3)", "ShearY:(-0.3,,0.3)",
    "TranslateX:(-0.45,,0.45)", "TranslateY:(-0.45,,0.45)", "Rotate:(-30.0,,30.0)",
    "AutoContrast:(0.0,,1.0)", "Invert:(0.0,,1.0)", "Equalize:(0.0,,1.0)",
    "Solarize:(0.0,,256.0)", "Posterize:(4.0,,8.0)", "Contrast:(0.1,,1.9)", "Color:(0.1,,1.9)",
    "Brightness:(0.1,,1.9)", "Sharpness:(0.1,,1.9)", "RandFlip:(0.0,,1.0)",
]
TAIL = {"cifar": ["RandCutout:(0.0,,1.0)", "RandCrop:(0.0,,1.0)"],
        "imagenet": ["RandCutout:(0.0,,1.0)", "RandResizeCrop_imagenet:(0.0,,1.0)"]}


def released_arrays(sp="cifar", l_mags=3, n_layers=2, seed=0):
    """ops/mags written from the rules of SPEC §1 (not from the code's table)."""
    mid, top = (l_mags - 1) // 2, l_mags - 1
    ops, mags = [], []
    for j, entry in enumerate(RELEASED_OP_NAMES + TAIL[sp]):
        name = entry.split(":")[0]
        if name in ("Solarize", "Posterize"):
            levels = list(range(top))
        elif entry.endswith("(0.0,,1.0)"):
            levels = [mid]
        else:
            levels = [m for m in range(l_mags) if m != mid]
        ops += [j] * len(levels)
        mags += levels
    d = len(ops)
    probs = np.random.default_rng(seed).dirichlet(np.ones(d), n_layers).astype(np.float32)
    return dict(policy_probs=probs, l_ops=np.int64(18), l_mags=np.int64(l_mags),
                ops=np.array(ops, np.int32)[:, None], mags=np.array(mags, np.int32)[:, None],
                op_names=np.array(RELEASED_OP_NAMES + TAIL[sp]))


def write_npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


@pytest.mark.parametrize("sp", ["cifar", "imagenet"])
def test_npz_to_policy_maps_released_names(tmp_path, sp):
    arrays = released_arrays(sp, l_mags=3)
    pol = npz_to_policy(write_npz(tmp_path / "p.npz", **arrays))
    assert pol.space == sp and pol.l_mags == 3
    assert pol.candidates == space.candidates(sp, 3)
    assert pol.candidates[-2:] == ([("RandCutout60", 1), ("RandResizeCrop", 1)] if sp == "imagenet"
                                   else [("RandCutout", 1), ("RandCrop", 1)])
    assert np.allclose(pol.probs, arrays["policy_probs"], atol=1e-7)
    assert pol.meta["source"] == "p.npz"


@pytest.mark.parametrize("sp", ["cifar", "imagenet"])
def test_policy_to_npz_writes_released_format(tmp_path, sp):
    pol = Policy.uniform(2, sp, 3)
    out = policy_to_npz(pol, tmp_path / "out.npz")
    with np.load(out) as d:
        assert list(d["op_names"]) == RELEASED_OP_NAMES + TAIL[sp]
        assert d["policy_probs"].dtype == np.float32 and d["policy_probs"].shape == (2, 29)
        assert int(d["l_ops"]) == 18 and int(d["l_mags"]) == 3
        ref = released_arrays(sp, 3)
        assert np.array_equal(d["ops"], ref["ops"]) and np.array_equal(d["mags"], ref["mags"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npz"]


@pytest.mark.parametrize("sp", ["cifar", "imagenet"])
def test_cli_round_trip_npz_yaml_npz(tmp_path, sp, capsys):
    arrays = released_arrays(sp, l_mags=5, n_layers=3, seed=2)
    src = write_npz(tmp_path / "in.npz", **arrays)
    assert main([str(src), str(tmp_path / "p.yaml"), "--meta", "dataset=cifar10", "--meta", "seed=1"]) == 0
    doc = yaml.safe_load((tmp_path / "p.yaml").read_text())
    # the YAML stores the file's float32 values exactly
    assert np.array_equal(np.array(doc["layers"], np.float32), arrays["policy_probs"])
    assert doc["meta"]["dataset"] == "cifar10" and doc["meta"]["seed"] == 1
    assert doc["meta"]["source"] == "in.npz"
    pol = load_policy(tmp_path / "p.yaml")
    assert np.allclose(pol.probs, arrays["policy_probs"], atol=1e-7)
    assert main([str(tmp_path / "p.yaml"), str(tmp_path / "back.npz")]) == 0
    with np.load(tmp_path / "back.npz") as back:
        for key in ("l_ops", "l_mags", "ops", "mags", "op_names"):
            assert np.array_equal(back[key], arrays[key]), key
        assert np.allclose(back["policy_probs"], arrays["policy_probs"], atol=1e-7)
    assert "wrote" in capsys.readouterr().out


def _bad(arrays_fn):
    def make(tmp_path):
        a = released_arrays("cifar", 3)
        arrays_fn(a)
        return write_npz(tmp_path / "in.npz", **a)
    return make


BAD_INPUTS = {
    "missing file": (lambda t: t / "absent.npz", "no such file"),
    "directory": (lambda t: (t / "d.npz").mkdir() or t / "d.npz", "not a file"),
    "not an npz": (lambda t: (t / "in.npz").write_text("hello") and t / "in.npz", "not a readable npz"),
    "missing array": (_bad(lambda a: a.pop("mags")), "missing array(s) mags"),
    "bad op name form": (_bad(lambda a: a.__setitem__("op_names", np.array(["ShearX"] * 18))),
                         "not of the form"),
    "unknown op": (_bad(lambda a: a["op_names"].__setitem__(7, "Blur:(0.0,,1.0)")), "does not match"),
    "range differs": (_bad(lambda a: a["op_names"].__setitem__(1, "ShearX:(-0.4,,0.4)")),
                      "differs from"),
    "l_ops wrong": (_bad(lambda a: a.__setitem__("l_ops", np.int64(17))), "l_ops"),
    "op index out of range": (_bad(lambda a: a["ops"].__setitem__((0, 0), 40)), "outside"),
    "wrong candidate order": (_bad(lambda a: a["mags"].__setitem__(slice(1, 3), [[2], [0]])), "candidate 1"),
    "even l_mags": (_bad(lambda a: a.__setitem__("l_mags", np.int64(4))), "odd integer"),
    "negative prob": (_bad(lambda a: a["policy_probs"].__setitem__((0, 0), -0.5)), "negative"),
    "not normalised": (_bad(lambda a: a["policy_probs"].__imul__(2)), "sum to"),
    "wrong width": (_bad(lambda a: a.__setitem__("policy_probs", a["policy_probs"][:, :-1])), "probabilities"),
    # damaged files (they used to end in a zlib or zipfile traceback)
    "truncated": (lambda t: _damaged(t, lambda raw: raw[:len(raw) // 2]), "not a readable npz"),
    "flipped byte": (lambda t: _damaged(t, lambda raw: raw[:300] + bytes([raw[300] ^ 0xFF])
                                        + raw[301:]), "not a readable npz"),
    "npy named npz": (lambda t: np.save(open(t / "in.npz", "wb"), np.zeros(3)) or t / "in.npz",
                      "not a readable npz"),
    "huge l_mags": (_bad(lambda a: a.__setitem__("l_mags", np.int64(1999999999))), "to 255"),
    "unpacks to gigabytes": (lambda t: _zip_bomb(t), "more than a policy holds"),
}


def _damaged(tmp_path, damage):
    path = write_npz(tmp_path / "in.npz", **released_arrays("cifar", 3))
    path.write_bytes(damage(path.read_bytes()))
    return path


def _zip_bomb(tmp_path):
    """An npz of a hundred kilobytes whose array unpacks to 128 MiB (a policy takes kB)."""
    import zipfile

    path = tmp_path / "in.npz"
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.float32))
    header["shape"] = (2**25,)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("policy_probs.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, header)
            block = bytes(2**20)
            for _ in range(2**7):
                f.write(block)
    return path


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, case, capsys):
    make, words = BAD_INPUTS[case]
    src = make(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main([str(src), str(tmp_path / "out.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and words in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_cli_bad_yaml_and_bad_direction(tmp_path, capsys):
    (tmp_path / "p.yaml").write_text("format: deepaa-policy/9\n")
    assert main([str(tmp_path / "p.yaml"), str(tmp_path / "o.npz")]) == 2
    src = write_npz(tmp_path / "in.npz", **released_arrays())
    assert main([str(src), str(tmp_path / "good.yaml")]) == 0  # a valid policy: only the
    good = tmp_path / "good.yaml"                              # direction is wrong below
    assert main([str(good), str(tmp_path / "o.txt")]) == 2
    assert main([str(good), str(tmp_path / "o.yaml")]) == 2
    assert main([str(src), str(tmp_path / "o.yaml"), "--meta", "novalue"]) == 2
    errs = capsys.readouterr().err.strip().split("\n")
    errs = [e for e in errs if e.startswith("error:")]
    assert len(errs) == 4
    assert "cannot convert" in errs[1] and "cannot convert" in errs[2], errs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.yaml", "in.npz", "p.yaml"]


def test_an_output_that_cannot_be_written_is_found_before_reading(tmp_path, capsys):
    src = write_npz(tmp_path / "in.npz", **released_arrays())
    (tmp_path / "a_file").write_text("x")
    for dst, words in ((tmp_path / "a_file" / "o.yaml", "not a folder"),
                       ("/proc/deepaa/o.yaml", "cannot write in '/proc'"),
                       (tmp_path / "dir.yaml", "is a folder")):
        if str(dst).endswith("dir.yaml"):
            dst.mkdir()
        assert main([str(src), str(dst)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and words in err and "\n" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "dir.yaml", "in.npz"]


def test_meta_that_refers_to_itself_is_refused(tmp_path, capsys):
    src = write_npz(tmp_path / "in.npz", **released_arrays())
    assert main([str(src), str(tmp_path / "o.yaml"), "--meta", "x=&a [*a]"]) == 2
    assert "refers to itself" in capsys.readouterr().err
    assert not (tmp_path / "o.yaml").exists()


def test_module_entry_point(tmp_path):
    src = write_npz(tmp_path / "in.npz", **released_arrays("imagenet"))
    ok = subprocess.run([sys.executable, "-m", "augmentation.convert", str(src), str(tmp_path / "o.yaml")],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and load_policy(tmp_path / "o.yaml").space == "imagenet"
    bad = subprocess.run([sys.executable, "-m", "augmentation.convert", str(tmp_path / "x.npz"),
                          str(tmp_path / "x.yaml")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and not (tmp_path / "x.yaml").exists()


def test_npz_to_policy_raises_policy_error(tmp_path):
    with pytest.raises(PolicyError):
        npz_to_policy(tmp_path / "nothing.npz")


def test_a_disk_that_fills_up_is_one_line_and_leaves_no_temporary_file(tmp_path):
    """Files of at most 8 kB (RLIMIT_FSIZE, as a full disk): the probe of the output passes,
    the 20 kB YAML does not: one line, exit 2, no temporary file."""
    import resource
    import signal

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))

    src = write_npz(tmp_path / "in.npz", **released_arrays("cifar", 13, n_layers=6))
    res = subprocess.run([sys.executable, "-m", "augmentation.convert", str(src),
                          str(tmp_path / "o.yaml")], capture_output=True, text=True,
                         preexec_fn=limited)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith(f"error: cannot write {tmp_path / 'o.yaml'}: File too large")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npz"]

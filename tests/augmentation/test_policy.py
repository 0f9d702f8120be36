"""Policy objects, the YAML format and its validation."""
import os
import re

import numpy as np
import pytest
import yaml
from PIL import Image

from augmentation import space
from augmentation.policy import (
    FORMAT, Policy, PolicyError, load_policy, policy_to_yaml, save_policy,
)


def small_policy(l_mags=3, n_layers=2, seed=0, sp="cifar"):
    d = space.n_candidates(l_mags)
    logits = np.random.default_rng(seed).normal(0, 2, (n_layers, d))
    return Policy.from_logits(logits, sp, l_mags, meta={"seed": seed})


def image(seed=0, size=(32, 32)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


# --- Policy -------------------------------------------------------------------------------------

def test_the_yaml_format_needs_no_converter(tmp_path):
    """policy.py reads and writes its format itself: saving does not import augmentation.convert
    (which imports policy.py; the import cycle is gone)."""
    import subprocess
    import sys

    code = ("import sys; from augmentation.policy import Policy, save_policy; "
            f"save_policy(Policy.uniform(1), {str(tmp_path / 'u.yaml')!r}); "
            "print('augmentation.convert' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False" and (tmp_path / "u.yaml").is_file()


def test_round_trip_is_exact(tmp_path):
    d = space.n_candidates(5)
    logits = np.random.default_rng(1).normal(0, 3, (3, d))
    logits[1, :5] = -720.0  # probabilities near 1e-310: denormals survive too
    pol = Policy.from_logits(logits, "imagenet", 5,
                             meta={"dataset": "cifar10", "seed": 1, "nested": {"a": [1, 2.5]}})
    path = save_policy(pol, tmp_path / "p.yaml")
    back = load_policy(path)
    assert back == pol
    assert np.array_equal(back.probs, pol.probs) and back.probs.dtype == np.float64
    assert back.candidates == space.candidates("imagenet", 5)
    assert [p for p in tmp_path.iterdir()] == [path]  # no temporary file left


def test_yaml_is_self_describing():
    doc = yaml.safe_load(policy_to_yaml(small_policy()))
    assert doc["format"] == FORMAT and doc["space"] == "cifar" and doc["l_mags"] == 3
    assert doc["ops"]["ShearX"] == [-0.3, 0.3] and doc["ops"]["RandCrop"] is None
    assert [tuple(c) for c in doc["candidates"]] == space.candidates("cifar", 3)
    assert len(doc["layers"]) == 2 and doc["meta"] == {"seed": 0}


def test_constructors():
    pol = small_policy(n_layers=3)
    assert pol.n_layers == 3 and pol.n_candidates == 29
    assert np.allclose(pol.probs.sum(axis=1), 1, atol=1e-15)
    ident = Policy.identity(4, "cifar", 13)
    assert ident.probs.shape == (4, 139)
    assert np.all(ident.probs[:, space.identity_index("cifar", 13)] == 1)
    uni = Policy.uniform(2, "imagenet", 3)
    assert np.allclose(uni.probs, 1 / 29)
    z = np.array([[0.0, 1.0, 2.0] + [-np.inf] * 26])
    soft = Policy.from_logits(np.where(np.isinf(z), -1e3, z), "cifar", 3)
    assert np.allclose(soft.probs[0, :3], np.exp([0, 1, 2]) / np.exp([0, 1, 2]).sum())
    with pytest.raises(PolicyError):
        Policy(np.ones((1, 29)) / 29, space.candidates("cifar", 3)[::-1], 3, "cifar")


def test_renormalises_rows_within_tolerance(tmp_path):
    doc = yaml.safe_load(policy_to_yaml(small_policy()))
    doc["layers"][0] = [p * (1 + 5e-5) for p in doc["layers"][0]]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc))
    pol = load_policy(tmp_path / "p.yaml")
    assert abs(pol.probs[0].sum() - 1) < 1e-15


def _mutate(doc, key, fn):
    doc = yaml.safe_load(yaml.safe_dump(doc))
    fn(doc)
    return doc


def _set(key, val):
    return lambda d: d.__setitem__(key, val)


def _layer(fn):
    def f(d):
        fn(d["layers"][0])
    return f


MALFORMED = {
    "missing key": (lambda d: d.pop("layers"), "missing key"),
    "unknown key": (_set("extra", 1), "unknown key"),
    "bad version": (_set("format", "deepaa-policy/2"), "unsupported format"),
    "unknown space": (_set("space", "svhn"), "unknown space"),
    "even l_mags": (_set("l_mags", 4), "odd integer"),
    "l_mags 1": (_set("l_mags", 1), "odd integer"),
    "l_mags string": (_set("l_mags", "3"), "integer"),
    "ops not mapping": (_set("ops", [1, 2]), "'ops' must be a mapping"),
    "unknown op in ops": (lambda d: d["ops"].__setitem__("Blur", None), "unknown op 'Blur'"),
    "op range differs": (lambda d: d["ops"].__setitem__("ShearX", [-0.4, 0.4]), "disagrees"),
    "op missing": (lambda d: d["ops"].pop("Equalize"), "lacks Equalize"),
    "candidates not list": (_set("candidates", "Identity"), "'candidates' must be a list"),
    "unknown op candidate": (lambda d: d["candidates"].__setitem__(3, ["Blur", 0]), "unknown op 'Blur'"),
    "candidate level type": (lambda d: d["candidates"].__setitem__(1, ["ShearX", "0"]), "integer level"),
    "wrong candidate": (lambda d: d["candidates"].__setitem__(1, ["ShearX", 1]), "candidate 1 is"),
    "swapped candidates": (lambda d: d["candidates"].reverse(), "candidate 0 is"),
    "too few candidates": (lambda d: d["candidates"].pop(), "28 candidates, but space 'cifar'"),
    "layers empty": (_set("layers", []), "non-empty list"),
    "layer not list": (lambda d: d["layers"].__setitem__(0, 0.5), "must be a list"),
    "short layer": (_layer(lambda r: r.pop()), "28 probabilities for 29 candidates"),
    "string prob": (_layer(lambda r: r.__setitem__(2, "x")), "non-number"),
    "bool prob": (_layer(lambda r: r.__setitem__(2, True)), "non-number"),
    "negative prob": (_layer(lambda r: r.__setitem__(2, -0.01)), "negative probability"),
    "nan prob": (_layer(lambda r: r.__setitem__(2, float("nan"))), "non-finite"),
    "inf prob": (_layer(lambda r: r.__setitem__(2, float("inf"))), "non-finite"),
    "not summing to 1": (_layer(lambda r: r.__setitem__(0, r[0] + 0.01)), "sum to"),
    "meta not mapping": (_set("meta", [1]), "meta must be a mapping"),
    # sizes and numbers a file can hold but no policy has (they used to hang or overflow)
    "l_mags huge": (_set("l_mags", 1999999999), "from 3 to 255"),
    "l_mags 300 digits": (_set("l_mags", 10**300 + 1), "integer of 301 digits"),
    "prob 400 digits": (_layer(lambda r: r.__setitem__(2, 10**400)), "about 401 digits"),
    "op range 400 digits": (lambda d: d["ops"].__setitem__("ShearX", [-10**400, 0.3]),
                            "ops.ShearX must be [low, high]"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_documents_raise_one_line(tmp_path, case):
    fn, words = MALFORMED[case]
    doc = _mutate(yaml.safe_load(policy_to_yaml(small_policy())), None, fn)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    msg = str(err.value)
    assert "\n" not in msg and words in msg and "bad.yaml" in msg, msg


@pytest.mark.parametrize("case,text,words", [
    ("bad yaml", "format: [deepaa\nspace: : :\n", "not valid YAML"),
    ("top-level list", "- 1\n- 2\n", "mapping at the top level"),
    ("empty file", "", "mapping at the top level"),
    ("binary", b"\xff\xfe\x00garbage", "cannot read"),
])
def test_unparseable_files_raise_one_line(tmp_path, case, text, words):
    path = tmp_path / "bad.yaml"
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert "\n" not in str(err.value) and words in str(err.value), str(err.value)


def _alias_bomb(depth=9):
    """YAML whose aliases expand to 9**depth items (a few lines of text)."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, depth)]
    return "\n".join(lines) + "\n"


def _with(text_fn):
    def make():
        return text_fn(policy_to_yaml(small_policy()))
    return make


# Whole files that no YAML reader should spend more than a moment on.
HOSTILE = {
    "alias bomb in layers": (_with(lambda t: _alias_bomb() + t.replace(
        "layers:", "layers: *a8\nold_layers:")), "unknown key"),
    "alias bomb as a layer": (_with(lambda t: _alias_bomb() .replace("a0:", "meta_a0:", 0)
                                    + t.split("layers:")[0] + "layers: [*a8]\nmeta: {}\n"),
                              "unknown key"),
    "integer of 5000 digits": (_with(lambda t: t.replace("l_mags: 3", "l_mags: " + "9" * 5000)),
                               "not a readable YAML document"),
    "20,000 nested lists": (lambda: "[" * 20000 + "]" * 20000, "not a readable YAML"),
    "probability 1e+400": (_with(lambda t: re.sub(r"- \[[0-9.e-]+,", "- [1.0e+400,", t, 1)),
                           "non-finite"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_files_raise_one_line_at_once(tmp_path, case):
    import time

    make, words = HOSTILE[case]
    path = tmp_path / "bad.yaml"
    path.write_text(make())
    start = time.time()
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert time.time() - start < 60 and "\n" not in str(err.value) and len(str(err.value)) < 400
    assert words in str(err.value), str(err.value)


def test_alias_bomb_values_are_shown_bounded():
    """A value made of nested aliases (9**8 leaves) is named in the message without its full
    repr, which would take minutes and gigabytes."""
    from augmentation.policy import policy_from_dict

    data = yaml.safe_load(_alias_bomb() + "b: 1\n")
    doc = yaml.safe_load(policy_to_yaml(small_policy()))
    doc["space"] = data["a8"]
    with pytest.raises(PolicyError, match=r"unknown space \[\[\[\.\.\.\], ") as err:
        policy_from_dict(doc)
    assert len(str(err.value)) < 200


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_devices_and_pipes_are_not_read(device):
    with pytest.raises(PolicyError, match="not a regular file"):
        load_policy(device)


def test_missing_file_directory_and_unknown_name(tmp_path):
    for target, words in [(tmp_path / "nope.yaml", "no such file"), (tmp_path, "directory"),
                          ("cifar_9", "no policy file or shipped policy named 'cifar_9'")]:
        with pytest.raises(PolicyError) as err:
            load_policy(target)
        assert words in str(err.value) and "\n" not in str(err.value)
    assert issubclass(PolicyError, ValueError)


# --- the shipped policies -------------------------------------------------------------------------

@pytest.mark.parametrize("name,sp,layers", [
    ("cifar_1", "cifar", 6), ("deepaa_cifar_2", "cifar", 6),
    ("imagenet_1", "imagenet", 5), ("deepaa_imagenet_2", "imagenet", 5)])
def test_shipped_policies_load_by_name(name, sp, layers):
    pol = load_policy(name)
    assert pol.space == sp and pol.l_mags == 13 and pol.probs.shape == (layers, 139)
    assert np.allclose(pol.probs.sum(axis=1), 1, atol=1e-12)
    assert pol.meta["source"] == f"policy_DeepAA_{name.replace('deepaa_', '')}.npz"


def test_cifar_1_matches_its_published_description():
    """SPEC §5: layer entropies and the near-deterministic layers of the released cifar_1."""
    pol = load_policy("cifar_1")
    assert np.allclose(pol.entropy(), [3.64, 0.42, 0.54, 0.98, 1.48, 0.21], atol=0.006)
    top = [pol.candidates[i][0] for i in pol.probs.argmax(axis=1)]
    assert top[1:4] == ["RandCutout", "RandCrop", "RandFlip"] and top[5] == "Identity"
    per_op = pol.op_probs()
    assert per_op["RandCutout"][1] == pytest.approx(0.92, abs=0.006)
    assert per_op["Identity"][5] == pytest.approx(0.97, abs=0.006)

"""The op table and the candidate list (SPEC §1), checked against an expectation written out
here independently of the code, and against the shipped (converted released) policies."""
import math

import pytest
import yaml

from augmentation import space
from augmentation.policy import policies_dir

ALL13 = list(range(13))
MID13 = [m for m in ALL13 if m != 6]  # identity at the middle level 6
TOP13 = ALL13[:-1]  # identity at the top level 12

# (op, levels) for L = 13 in the order of SPEC §1, written out literally.
EXPECTED_13 = {
    "cifar": [
        ("Identity", [6]),
        ("ShearX", MID13),
        ("ShearY", MID13),
        ("TranslateX", MID13),
        ("TranslateY", MID13),
        ("Rotate", MID13),
        ("AutoContrast", [6]),
        ("Invert", [6]),
        ("Equalize", [6]),
        ("Solarize", TOP13),
        ("Posterize", TOP13),
        ("Contrast", MID13),
        ("Color", MID13),
        ("Brightness", MID13),
        ("Sharpness", MID13),
        ("RandFlip", [6]),
        ("RandCutout", [6]),
        ("RandCrop", [6]),
    ]
}
EXPECTED_13["imagenet"] = EXPECTED_13["cifar"][:16] + [("RandCutout60", [6]), ("RandResizeCrop", [6])]

RANGES = {
    "ShearX": (-0.3, 0.3), "ShearY": (-0.3, 0.3), "TranslateX": (-0.45, 0.45),
    "TranslateY": (-0.45, 0.45), "Rotate": (-30, 30), "Solarize": (0, 256), "Posterize": (4, 8),
    "Contrast": (0.1, 1.9), "Color": (0.1, 1.9), "Brightness": (0.1, 1.9), "Sharpness": (0.1, 1.9),
}


def _flatten(expected):
    return [(name, m) for name, levels in expected for m in levels]


@pytest.mark.parametrize("sp", ["cifar", "imagenet"])
def test_candidates_l13_match_literal_expectation(sp):
    cands = space.candidates(sp, 13)
    assert cands == _flatten(EXPECTED_13[sp])
    assert len(cands) == 139


@pytest.mark.parametrize("sp", ["cifar", "imagenet"])
def test_candidates_match_shipped_policies(sp):
    """The converted released files keep the released candidate order (ops/mags arrays)."""
    for path in sorted(policies_dir().glob(f"deepaa_{sp}_*.yaml")):
        doc = yaml.safe_load(path.read_text())
        assert [tuple(c) for c in doc["candidates"]] == space.candidates(sp, 13), path.name
    assert len(list(policies_dir().glob(f"deepaa_{sp}_*.yaml"))) == 2


@pytest.mark.parametrize("l_mags", [3, 5, 7, 13, 21])
@pytest.mark.parametrize("sp", ["cifar", "imagenet"])
def test_candidate_count_and_identity_levels(sp, l_mags):
    cands = space.candidates(sp, l_mags)
    assert len(cands) == 11 * (l_mags - 1) + 7 == space.n_candidates(l_mags)
    assert len(set(cands)) == len(cands)
    mid, top = (l_mags - 1) // 2, l_mags - 1
    by_op = {}
    for name, level in cands:
        by_op.setdefault(name, []).append(level)
    assert list(by_op) == space.op_names(sp)
    for name, levels in by_op.items():
        if name in ("Solarize", "Posterize"):
            assert levels == list(range(top))  # the top level (256 / 8 bits) is the identity
        elif name in RANGES:
            assert levels == [m for m in range(l_mags) if m != mid]
            assert space.level_to_value(name, mid, l_mags) == pytest.approx(
                1.0 if name in ("Contrast", "Color", "Brightness", "Sharpness") else 0.0, abs=1e-12
            )
        else:
            assert levels == [mid]
    assert cands[space.identity_index(sp, l_mags)] == ("Identity", mid)


@pytest.mark.parametrize("name", sorted(RANGES))
@pytest.mark.parametrize("l_mags", [3, 13])
def test_level_to_value_endpoints_and_linearity(name, l_mags):
    low, high = RANGES[name]
    assert space.level_to_value(name, 0, l_mags) == pytest.approx(low)
    assert space.level_to_value(name, l_mags - 1, l_mags) == pytest.approx(high)
    for m in range(l_mags):
        assert space.level_to_value(name, m, l_mags) == pytest.approx(low + m * (high - low) / (l_mags - 1))
    with pytest.raises(ValueError):
        space.level_to_value(name, l_mags, l_mags)
    with pytest.raises(ValueError):
        space.level_to_value(name, -1, l_mags)


def test_identity_values_at_top_level():
    assert space.level_to_value("Solarize", 12, 13) == 256
    assert space.level_to_value("Posterize", 12, 13) == 8
    assert math.isclose(space.level_to_value("Rotate", 3, 13), -15.0)


@pytest.mark.parametrize("bad", [2, 4, 12, 1, 0, -3, 3.0, "13", True, None])
def test_bad_l_mags_raise(bad):
    with pytest.raises(ValueError):
        space.candidates("cifar", bad)


def test_unknown_space_raises():
    with pytest.raises(ValueError):
        space.candidates("svhn", 13)


def test_op_table_flags():
    signed = {op.name for op in space.OP_TABLE["cifar"] if op.signed}
    assert signed == {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"}
    rnd = {op.name for op in space.OP_TABLE["imagenet"] if op.random}
    assert rnd == {"RandFlip", "RandCutout60", "RandResizeCrop"}
    assert space.FILL_GREY == (125, 123, 114)
    assert space.RELEASED_NAMES["imagenet"] == {
        "RandCutout": "RandCutout60", "RandResizeCrop_imagenet": "RandResizeCrop"}

"""The search space of DeepAA: one table of operations and the candidate list built from it.

Every consumer (the TensorFlow search, the PyTorch trainer, the batched tensor path, the
visualiser and the npz converter) reads this table; nothing else in the project lists ops.
See SPEC §1 for the ops, their ranges, the level -> value mapping and the identity levels.
"""
from __future__ import annotations

from dataclasses import dataclass

SPACES = ("cifar", "imagenet")

# The most magnitude levels a policy may have. Levels are quantised values of 8-bit image
# operations: past a few hundred, neighbouring levels give the same pixels, while the number
# of candidates (11 * (L - 1) + 7) and the search's memory grow with L (SPEC §1 uses 13).
MAX_L_MAGS = 255

# Grey used to fill cutouts and the padding of RandCrop (SPEC §1), the CIFAR mean in 0..255.
FILL_GREY = (125, 123, 114)


@dataclass(frozen=True)
class OpSpec:
    """One row of the op table.

    ``low``/``high`` is the value range for magnitude ops (``None`` for ops without a
    magnitude). ``identity`` says which level leaves the image unchanged and is therefore
    left out of the candidates: ``"middle"`` (level (L-1)//2, value 0 or 1.0) or ``"top"``
    (level L-1: Solarize at 256, Posterize at 8 bits). ``signed`` ops are mirrored with
    p = 0.5 under evaluation semantics. ``random`` ops draw their own parameters.
    """

    name: str
    low: float | None = None
    high: float | None = None
    identity: str | None = None
    signed: bool = False
    random: bool = False

    @property
    def has_magnitude(self) -> bool:
        return self.low is not None


_COMMON = (
    OpSpec("Identity"),
    OpSpec("ShearX", -0.3, 0.3, "middle", signed=True),
    OpSpec("ShearY", -0.3, 0.3, "middle", signed=True),
    OpSpec("TranslateX", -0.45, 0.45, "middle", signed=True),
    OpSpec("TranslateY", -0.45, 0.45, "middle", signed=True),
    OpSpec("Rotate", -30.0, 30.0, "middle", signed=True),
    OpSpec("AutoContrast"),
    OpSpec("Invert"),
    OpSpec("Equalize"),
    OpSpec("Solarize", 0.0, 256.0, "top"),
    OpSpec("Posterize", 4.0, 8.0, "top"),
    OpSpec("Contrast", 0.1, 1.9, "middle"),
    OpSpec("Color", 0.1, 1.9, "middle"),
    OpSpec("Brightness", 0.1, 1.9, "middle"),
    OpSpec("Sharpness", 0.1, 1.9, "middle"),
    OpSpec("RandFlip", random=True),
)

# The op table per space, in SPEC §1 order (the order of the released npz files).
OP_TABLE: dict[str, tuple[OpSpec, ...]] = {
    "cifar": _COMMON + (OpSpec("RandCutout", random=True), OpSpec("RandCrop", random=True)),
    "imagenet": _COMMON
    + (OpSpec("RandCutout60", random=True), OpSpec("RandResizeCrop", random=True)),
}

# Every op name known to any space, with its spec.
OPS: dict[str, OpSpec] = {op.name: op for table in OP_TABLE.values() for op in table}

# Names used by the released npz files that differ from ours (SPEC §1: the ImageNet files call
# op 16 "RandCutout" and op 17 "RandResizeCrop_imagenet").
RELEASED_NAMES = {
    "imagenet": {"RandCutout": "RandCutout60", "RandResizeCrop_imagenet": "RandResizeCrop"},
    "cifar": {},
}


def check_space(space: str) -> None:
    if space not in OP_TABLE:
        raise ValueError(f"unknown search space {space!r}; expected one of {', '.join(SPACES)}")


def l_mags_problem(l_mags) -> str | None:
    """Why ``l_mags`` is not a valid number of levels (an odd integer in 3..MAX_L_MAGS), or
    None; the one rule the policy files and the search's --l_mags share."""
    if not isinstance(l_mags, int) or isinstance(l_mags, bool):
        return f"must be an integer, got {type(l_mags).__name__}"
    if l_mags < 3 or l_mags % 2 == 0 or l_mags > MAX_L_MAGS:
        shown = l_mags if abs(l_mags) < 10**12 else f"an integer of {len(str(abs(l_mags)))} digits"
        return f"must be an odd integer from 3 to {MAX_L_MAGS}, got {shown}"
    return None


def check_l_mags(l_mags: int) -> None:
    problem = l_mags_problem(l_mags)
    if problem:
        raise ValueError(f"l_mags {problem}")


def op_names(space: str = "cifar") -> list[str]:
    check_space(space)
    return [op.name for op in OP_TABLE[space]]


def identity_level(op: OpSpec, l_mags: int) -> int:
    """The level at which ``op`` leaves the image unchanged; also the level recorded for ops
    without a magnitude (SPEC §1: (L-1)//2)."""
    return l_mags - 1 if op.identity == "top" else (l_mags - 1) // 2


def level_to_value(name: str, level: int, l_mags: int = 13) -> float:
    """Map a level m in 0..L-1 to low + m/(L-1) * (high - low) (SPEC §1)."""
    op = OPS[name]
    if not op.has_magnitude:
        return 0.0
    if not 0 <= level < l_mags:
        raise ValueError(f"level {level} out of range 0..{l_mags - 1} for {name}")
    return op.low + level / (l_mags - 1) * (op.high - op.low)


def candidates(space: str = "cifar", l_mags: int = 13) -> list[tuple[str, int]]:
    """The (op name, level) candidates of one policy layer, in SPEC order.

    Magnitude ops contribute every level but their identity level, ascending; other ops one
    candidate at level (L-1)//2. 11*(L-1)+7 candidates: 139 at L = 13.
    """
    check_space(space)
    check_l_mags(l_mags)
    out: list[tuple[str, int]] = []
    for op in OP_TABLE[space]:
        if op.has_magnitude:
            skip = identity_level(op, l_mags)
            out.extend((op.name, m) for m in range(l_mags) if m != skip)
        else:
            out.append((op.name, identity_level(op, l_mags)))
    return out


def n_candidates(l_mags: int = 13) -> int:
    return 11 * (l_mags - 1) + 7


def identity_index(space: str = "cifar", l_mags: int = 13) -> int:
    """Index of the Identity candidate (the search's logits start there, SPEC §2)."""
    return [name for name, _ in candidates(space, l_mags)].index("Identity")

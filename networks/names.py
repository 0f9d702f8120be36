"""Model names of both frameworks, parsed without importing either.

The search CLI names Wide ResNets ``WRN_<depth>_<width>`` (the released ``--use_model``
flag) and the trainer's configs ``wresnet<depth>_<width>`` (the released ``model.type``);
both also know ``resnet50``. Flags and configs are checked before TensorFlow or PyTorch
loads, and the model builders read the same parse, so the rule lives here once: a Wide ResNet
has depth 6n + 4 with n >= 1 (SPEC §2, §3) and width >= 1. The search models' constants that
both frameworks' builders use (L2 coefficients, chunk sizes) live here too.
"""
from __future__ import annotations

import re

# SPEC §2: the search model's L2 penalty (the released WRN's 2.5e-4; ResNet-50's 5e-5).
WRN_L2 = 2.5e-4
RESNET50_L2 = 5e-5

_SEARCH_WRN = re.compile(r"^WRN_(\d+)_(\d+)$")
_TRAIN_WRN = re.compile(r"^wresnet(\d+)_(\d+)$")


def _depth_width(match) -> tuple[int, int] | None:
    if not match:
        return None
    depth, width = int(match.group(1)), int(match.group(2))
    if depth < 10 or (depth - 4) % 6 != 0 or width < 1:
        return None
    return depth, width


def search_wrn(name: str) -> tuple[int, int] | None:
    """(depth, width) of a search model name like ``WRN_40_2``, else None."""
    return _depth_width(_SEARCH_WRN.match(str(name)))


def train_wrn(name: str) -> tuple[int, int] | None:
    """(depth, width) of a trainer model name like ``wresnet28_10``, else None."""
    return _depth_width(_TRAIN_WRN.match(str(name)))


def is_search_model(name: str) -> bool:
    return name == "resnet50" or search_wrn(name) is not None


def is_train_model(name: str) -> bool:
    return name == "resnet50" or train_wrn(name) is not None


def default_chunk_size(name: str) -> int:
    """Images per gradient/JVP chunk of the search when ``--chunk_size`` is not given: the
    released values (256 for WRN-40-2, 128 for WRN-28-10, 16 for ResNet-50; SPEC §2), scaled by
    width for other Wide ResNets so memory stays about that of the released models."""
    if name == "resnet50":
        return 16
    depth, width = search_wrn(name) or (40, 2)
    return 256 if width <= 2 else (128 if width <= 10 else 64)

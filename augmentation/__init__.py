"""DeepAA's augmentation core: the op table, the Pillow ops, candidates and policies.

Framework-free at import time (Pillow and numpy only); the batched tensor path in
``augmentation.batched`` imports torch when used.
"""
from .ops import apply_op, center_crop
from .policy import Policy, PolicyError, load_policy, save_policy
from .space import OP_TABLE, OPS, candidates, identity_index, level_to_value, op_names
from .transform import DeepAAPolicy

__all__ = [
    "apply_op",
    "center_crop",
    "candidates",
    "identity_index",
    "level_to_value",
    "op_names",
    "OP_TABLE",
    "OPS",
    "DeepAAPolicy",
    "Policy",
    "PolicyError",
    "load_policy",
    "save_policy",
]

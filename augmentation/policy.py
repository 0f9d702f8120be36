"""Augmentation policies: the data structure and its YAML file format (the transform that
applies one is augmentation.transform.DeepAAPolicy).

A DeepAA policy is a stack of layers; each layer is a categorical distribution over the D
candidates ``(op name, level)`` of the search space (SPEC §1). Applying it to an image means,
for each layer in order, sampling one candidate and applying it (SPEC §3).

The YAML format (``format: deepaa-policy/1``) is self-describing: it carries the op table and
the candidate list it was made with, and loading checks both against the code's table so a
policy can never be silently applied to a different space. See docs/policy_format.md.
"""
from __future__ import annotations

import math
import os
import reprlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from .files import atomic_write
from .space import (OP_TABLE, SPACES, candidates as space_candidates, identity_index,
                    l_mags_problem)

FORMAT = "deepaa-policy/1"
# How far a layer's probabilities may sum from 1 before the file is rejected; the released
# policies were stored in float32 and miss 1 by up to ~1e-7.
SUM_TOLERANCE = 1e-4
# The largest policy file read: 100 layers of the 2,801 candidates of l_mags 255 take about
# 4 MB, so anything far beyond is not a policy (and would be parsed for minutes).
MAX_FILE_BYTES = 64 * 2**20
_KEYS = ("format", "space", "l_mags", "ops", "candidates", "layers")
_OPTIONAL_KEYS = ("meta",)


class PolicyError(ValueError):
    """A policy file or object is malformed; the message is one line naming the problem."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def policies_dir() -> Path:
    """Where the shipped policies live: ``augmentation/policies``, inside the package, so an
    installed copy has them too."""
    return Path(__file__).resolve().parent / "policies"


def available_policies() -> list[str]:
    """Names of the shipped policies, e.g. ``deepaa_cifar_1``."""
    d = policies_dir()
    return sorted(p.stem for p in d.glob("deepaa_*.yaml")) if d.is_dir() else []


def _is_number(x) -> bool:
    """A YAML number that fits a float64 (an integer of hundreds of digits does not)."""
    if not isinstance(x, (int, float, np.integer, np.floating)) or isinstance(x, bool):
        return False
    return not isinstance(x, int) or abs(x) <= _FLOAT64_MAX


_FLOAT64_MAX = int(np.finfo(np.float64).max)
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60
_SHORT.maxlong = 40
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict = 2, 4, 4, 4


def short_repr(value) -> str:
    """A bounded repr for messages: a file's value may be a huge number, a long string or a
    nest of YAML aliases whose full repr would take hours."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        return f"an integer of about {int(abs(value).bit_length() * 0.30103) + 1} digits"
    try:
        text = _SHORT.repr(value)
    except ValueError:  # a value too large to print even in part
        return f"a {type(value).__name__}"
    return text if len(text) <= 80 else text[:76] + " ..."


def pick_candidates(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Candidate indices (n, layers) at uniforms ``u`` (n, layers) in [0, 1): each layer's
    inverse CDF (``cdf``: the cumulative sums of its probabilities, (layers, candidates)),
    clipped to the last candidate for a u beyond a last cumulative value of 1 - ulp. The one
    sampling rule of the Pillow transform and the batched path (SPEC §3)."""
    idx = np.empty(u.shape, dtype=np.int64)
    for k in range(cdf.shape[0]):
        idx[:, k] = np.searchsorted(cdf[k], u[:, k], side="right")
    return np.minimum(idx, cdf.shape[1] - 1)


def _normalise_rows(probs: np.ndarray) -> np.ndarray:
    """Divide each row by its sum unless it already sums to 1 at float64 precision; skipping
    those rows makes save -> load bit-exact for policies that were normalised before."""
    sums = probs.sum(axis=1, keepdims=True)
    needs = np.abs(sums - 1.0) > 1e-12
    return np.where(needs, probs / sums, probs)


@dataclass(eq=False)
class Policy:
    """A policy: ``probs[k, i]`` is the probability that layer k applies ``candidates[i]``.

    Constructing one validates it (raising :class:`PolicyError`) and renormalises every row to
    sum to 1 in float64. ``candidates`` must be exactly ``space.candidates(space, l_mags)``:
    the order is what gives each column its meaning.
    """

    probs: np.ndarray
    candidates: list = None
    l_mags: int = 13
    space: str = "cifar"
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.space not in SPACES:
            raise PolicyError(f"unknown space {short_repr(self.space)}; expected one of {', '.join(SPACES)}")
        if not isinstance(self.l_mags, (int, np.integer)) or isinstance(self.l_mags, bool):
            raise PolicyError(f"l_mags must be an integer, got {short_repr(self.l_mags)}")
        self.l_mags = int(self.l_mags)
        problem = l_mags_problem(self.l_mags)
        if problem:
            raise PolicyError(f"l_mags {problem}")
        expected = space_candidates(self.space, self.l_mags)
        if self.candidates is None:
            self.candidates = list(expected)
        self.candidates = [tuple(c) if isinstance(c, (list, tuple)) else c for c in self.candidates]
        _check_candidates(self.candidates, expected, self.space, self.l_mags)
        try:
            probs = np.array(self.probs, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise PolicyError(f"probabilities are not numbers ({e})") from None
        if probs.ndim != 2 or probs.shape[0] < 1:
            raise PolicyError(f"probabilities must be a non-empty layers x D table, got shape {probs.shape}")
        if probs.shape[1] != len(expected):
            raise PolicyError(
                f"each layer needs {len(expected)} probabilities (one per candidate), got {probs.shape[1]}"
            )
        for k, row in enumerate(probs):
            if not np.all(np.isfinite(row)):
                raise PolicyError(f"layer {k + 1} has a non-finite probability")
            if np.any(row < 0):
                i = int(np.argmax(row < 0))
                raise PolicyError(f"layer {k + 1} has a negative probability {row[i]!r} at candidate {i}")
            if abs(row.sum() - 1.0) > SUM_TOLERANCE:
                raise PolicyError(f"layer {k + 1} probabilities sum to {row.sum():.6g}, not 1")
        self.probs = _normalise_rows(probs)
        if self.meta is None:
            self.meta = {}
        if not isinstance(self.meta, dict):
            raise PolicyError(f"meta must be a mapping, got {type(self.meta).__name__}")

    # -- shape -----------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return int(self.probs.shape[0])

    @property
    def n_candidates(self) -> int:
        return int(self.probs.shape[1])

    def __eq__(self, other):
        if not isinstance(other, Policy):
            return NotImplemented
        return (
            self.space == other.space
            and self.l_mags == other.l_mags
            and self.candidates == other.candidates
            and np.array_equal(self.probs, other.probs)
            and self.meta == other.meta
        )

    # -- constructors for the search -------------------------------------------------------
    @classmethod
    def from_logits(cls, logits, space: str = "cifar", l_mags: int = 13, meta=None) -> "Policy":
        """Softmax (float64, max-shifted) of a layers x D logit table (SPEC §2 "Policy")."""
        z = np.asarray(logits, dtype=np.float64)
        if z.ndim == 1:
            z = z[None]
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return cls(e / e.sum(axis=1, keepdims=True), None, l_mags, space, dict(meta or {}))

    @classmethod
    def uniform(cls, n_layers: int, space: str = "cifar", l_mags: int = 13, meta=None) -> "Policy":
        d = len(space_candidates(space, l_mags))
        return cls(np.full((n_layers, d), 1.0 / d), None, l_mags, space, dict(meta or {}))

    @classmethod
    def identity(cls, n_layers: int, space: str = "cifar", l_mags: int = 13, meta=None) -> "Policy":
        """Every layer applies Identity with probability 1."""
        d = len(space_candidates(space, l_mags))
        probs = np.zeros((n_layers, d))
        probs[:, identity_index(space, l_mags)] = 1.0
        return cls(probs, None, l_mags, space, dict(meta or {}))

    # -- summaries (the README figures, SPEC §0/§5) -----------------------------------------
    def op_probs(self) -> dict[str, np.ndarray]:
        """Per op, its probability in each layer summed over its levels (n_layers,)."""
        out = {op.name: np.zeros(self.n_layers) for op in OP_TABLE[self.space]}
        for i, (name, _) in enumerate(self.candidates):
            out[name] += self.probs[:, i]
        return out

    def entropy(self) -> np.ndarray:
        """Entropy of each layer in nats (SPEC §5)."""
        p = self.probs
        with np.errstate(divide="ignore", invalid="ignore"):
            return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)


def _check_candidates(cands, expected, space, l_mags):
    known = {op.name for op in OP_TABLE[space]}
    for i, c in enumerate(cands):
        if not (isinstance(c, tuple) and len(c) == 2 and isinstance(c[0], str)
                and isinstance(c[1], (int, np.integer)) and not isinstance(c[1], bool)):
            raise PolicyError(f"candidate {i} must be [op name, integer level], got {short_repr(list(c) if isinstance(c, tuple) else c)}")
        if c[0] not in known:
            raise PolicyError(f"candidate {i}: unknown op {short_repr(c[0])} for space {space!r}")
    if len(cands) != len(expected):
        raise PolicyError(
            f"{len(cands)} candidates, but space {space!r} with l_mags={l_mags} has {len(expected)}"
        )
    for i, (c, e) in enumerate(zip(cands, expected)):
        if (c[0], int(c[1])) != e:
            raise PolicyError(
                f"candidate {i} is [{c[0]}, {short_repr(c[1])}] but the {space} table with l_mags={l_mags} "
                f"has [{e[0]}, {e[1]}] there"
            )


# ---------------------------------------------------------------------------------------------
# YAML reading and writing
# ---------------------------------------------------------------------------------------------

def _resolve(path_or_name) -> Path:
    p = Path(path_or_name)
    if p.exists() or not isinstance(path_or_name, str):
        return p
    looks_like_name = os.sep not in path_or_name and "/" not in path_or_name and p.suffix == ""
    if not looks_like_name:
        return p
    stem = path_or_name if path_or_name.startswith("deepaa_") else f"deepaa_{path_or_name}"
    candidate = policies_dir() / f"{stem}.yaml"
    if candidate.is_file():
        return candidate
    names = ", ".join(n[len("deepaa_"):] for n in available_policies()) or "none shipped"
    raise PolicyError(f"no policy file or shipped policy named {path_or_name!r} (shipped: {names})")


def _check_ops(ops, space: str) -> None:
    if not isinstance(ops, dict):
        raise PolicyError(f"'ops' must be a mapping of op name -> [low, high] or null, got {type(ops).__name__}")
    table = {op.name: op for op in OP_TABLE[space]}
    for name, rng in ops.items():
        if name not in table:
            raise PolicyError(f"unknown op {short_repr(name)} in 'ops' for space {space!r}")
        spec = table[name]
        if spec.has_magnitude:
            if not (isinstance(rng, list) and len(rng) == 2 and all(_is_number(v) for v in rng)):
                raise PolicyError(f"ops.{name} must be [low, high], got {short_repr(rng)}")
            if not (math.isclose(rng[0], spec.low, abs_tol=1e-9) and math.isclose(rng[1], spec.high, abs_tol=1e-9)):
                raise PolicyError(
                    f"ops.{name} range {rng} disagrees with this code's table [{spec.low}, {spec.high}]"
                )
        elif rng is not None:
            raise PolicyError(f"ops.{name} has no magnitude and must be null, got {short_repr(rng)}")
    missing = [n for n in table if n not in ops]
    if missing:
        raise PolicyError(f"'ops' lacks {', '.join(missing)} of the {space} table")


def policy_from_dict(data) -> Policy:
    """Validate a parsed policy document and build the Policy (raises PolicyError)."""
    if not isinstance(data, dict):
        raise PolicyError(f"a policy file must be a mapping at the top level, got {type(data).__name__}")
    missing = [k for k in _KEYS if k not in data]
    if missing:
        raise PolicyError(f"missing key(s): {', '.join(missing)}")
    extra = [str(k) for k in data if k not in _KEYS + _OPTIONAL_KEYS]
    if extra:
        raise PolicyError(f"unknown key(s): {', '.join(extra)}")
    if data["format"] != FORMAT:
        raise PolicyError(f"unsupported format {short_repr(data['format'])}; this code reads {FORMAT!r}")
    space, l_mags = data["space"], data["l_mags"]
    if not isinstance(space, str) or space not in SPACES:
        raise PolicyError(f"unknown space {short_repr(space)}; expected one of {', '.join(SPACES)}")
    problem = l_mags_problem(l_mags)
    if problem:
        raise PolicyError(f"l_mags {problem}")
    _check_ops(data["ops"], space)
    cands = data["candidates"]
    if not isinstance(cands, list):
        raise PolicyError(f"'candidates' must be a list of [op name, level], got {type(cands).__name__}")
    cands = [tuple(c) if isinstance(c, list) else c for c in cands]
    _check_candidates(cands, space_candidates(space, l_mags), space, l_mags)
    layers = data["layers"]
    if not isinstance(layers, list) or not layers:
        raise PolicyError("'layers' must be a non-empty list of probability lists")
    for k, row in enumerate(layers):
        if not isinstance(row, list):
            raise PolicyError(f"layer {k + 1} must be a list of probabilities, got {type(row).__name__}")
        bad = [v for v in row if not _is_number(v)]
        if bad:
            raise PolicyError(f"layer {k + 1} has a non-number entry: {short_repr(bad[0])} "
                              "(probabilities are float64 numbers)")
        if len(row) != len(cands):
            raise PolicyError(f"layer {k + 1} has {len(row)} probabilities for {len(cands)} candidates")
    meta = data.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise PolicyError(f"meta must be a mapping, got {type(meta).__name__}")
    return Policy(np.array(layers, dtype=np.float64), cands, l_mags, space, dict(meta or {}))


def _fmt(x: float, digits: int | None) -> str:
    """A float as YAML 1.1 reads it back: PyYAML needs a '.' in the mantissa of an exponent
    form ('1e-05' would load as a string)."""
    s = repr(float(x)) if digits is None else f"{x:.{digits}g}"
    mant, e, exp = s.partition("e")
    if e and "." not in mant:
        s = f"{mant}.0e{exp}"
    return s


def _plain(x):
    """meta values as plain Python for yaml.safe_dump."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return x


def policy_to_yaml(policy: Policy, digits: int | None = None, probs=None) -> str:
    """The policy as YAML text: one block line per op and candidate, each layer a flow list
    wrapped one op per line with a comment naming the op (readable and diff-friendly).
    ``digits=None`` writes each float64 exactly (shortest repr); an int writes that many
    significant digits. ``probs`` overrides the table written (the npz converter writes the
    file's own float32 values, which loading renormalises)."""
    table = policy.probs if probs is None else np.asarray(probs, dtype=np.float64)
    if table.shape != policy.probs.shape:
        raise ValueError(f"probs shape {table.shape} != policy shape {policy.probs.shape}")
    out = [
        f"format: {FORMAT}",
        f"space: {policy.space}",
        f"l_mags: {policy.l_mags}",
        "ops:             # the op table used: name -> [low, high], or null without a magnitude",
    ]
    for op in OP_TABLE[policy.space]:
        out.append(f"  {op.name}: " + (f"[{op.low!r}, {op.high!r}]" if op.has_magnitude else "null"))
    out.append(f"candidates:      # {policy.n_candidates} entries, in order: [op name, level]")
    out += [f"  - [{name}, {level}]" for name, level in policy.candidates]
    out.append(f"layers:          # {policy.n_layers} layers; column i is candidate i")
    groups: list[tuple[str, list[int]]] = []
    for i, (name, _) in enumerate(policy.candidates):
        if groups and groups[-1][0] == name:
            groups[-1][1].append(i)
        else:
            groups.append((name, [i]))
    for row in table:
        for g, (name, idx) in enumerate(groups):
            lead = "  - [" if g == 0 else "     "
            body = ", ".join(_fmt(row[i], digits) for i in idx)
            tail = "]" if g == len(groups) - 1 else ","
            out.append(f"{lead}{body}{tail}  # {name}")
    meta = _plain(policy.meta)
    if meta:
        try:
            dumped = yaml.safe_dump(meta, sort_keys=False, default_flow_style=False, width=4096)
        except yaml.YAMLError as e:
            raise PolicyError(f"meta cannot be written as YAML ({e})") from None
        out.append("meta:")
        out += ["  " + line for line in dumped.rstrip("\n").split("\n")]
    else:
        out.append("meta: {}")
    return "\n".join(out) + "\n"


def load_policy(path_or_name) -> Policy:
    """Read and validate a policy YAML, by path or by shipped name (``cifar_1``,
    ``deepaa_imagenet_2``). Raises :class:`PolicyError` with a one-line message."""
    path = _resolve(path_or_name)
    if not path.exists():
        raise PolicyError(f"{path}: no such file")
    if path.is_dir():
        raise PolicyError(f"{path}: is a directory, not a policy file")
    if not path.is_file():  # a device or a pipe (/dev/zero, /dev/stdin) would be read forever
        raise PolicyError(f"{path}: not a regular file")
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise PolicyError(f"{path}: {path.stat().st_size} bytes, more than a policy file "
                              f"holds ({MAX_FILE_BYTES})")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError(f"{path}: cannot read ({e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise PolicyError(f"{path}: not valid YAML{line} ({getattr(e, 'problem', None) or e})") from None
    except (ValueError, RecursionError) as e:  # an integer of thousands of digits, deep nesting
        raise PolicyError(f"{path}: not a readable YAML document ({type(e).__name__})") from None
    try:
        return policy_from_dict(data)
    except PolicyError as e:
        raise PolicyError(f"{path}: {e}") from None


def save_policy(policy: Policy, path, digits: int | None = None, probs=None) -> Path:
    """Write ``policy`` as YAML atomically (see :func:`policy_to_yaml`); returns the path."""
    if not isinstance(policy, Policy):
        raise TypeError(f"save_policy expects a Policy, got {type(policy).__name__}")
    atomic_write(path, policy_to_yaml(policy, digits, probs))
    return Path(path)

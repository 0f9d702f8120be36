"""Trainer configuration: the released YAML keys (SPEC §3) plus ours, validated on load.

A config is a plain nested dict. :func:`load_config` reads a YAML file with ``yaml.safe_load``,
applies command-line overrides given with dotted names (``--lr_schedule.warmup.epoch 0``),
fills defaults and checks every key against :data:`SCHEMA`: an unknown key, a value of the
wrong type or a missing required key raises :class:`ConfigError` with a one-line message that
names the key. Defaults are those of the released trainer (gradient clip 5, momentum 0.9,
test every 20 epochs, cosine schedule), so the released files mean what they meant. Every
number is then checked against :data:`RANGES`, the one table of bounds (NaN and infinity never
pass), and the few rules between keys in :func:`_check_values`.

Keys of ours (not in the released files): ``train_size``/``test_size`` (seeded class-balanced subsets),
``seed``, ``num_workers``, ``aug_backend``, ``amp``, ``channels_last``, ``compile``,
``deterministic``,
``randaug.{N,M}`` for the RandAugment baseline and ``early_finish_epoch`` (the released
trainer's key: stop after that epoch, keeping the schedule of the full run).
"""
from __future__ import annotations

import argparse
import copy
import math
import os

import yaml

from augmentation.cli import command_name
from augmentation.policy import short_repr
from networks.names import is_train_model

AUGS = ("DeepAA", "default", "randaugment", "trivialaugment", "none")
SCHEDULES = ("cosine", "resnet", "constant")
REQUIRED = object()  # marks a key without a default
MAX_CONFIG_BYTES = 2**20

# key -> (types, default, allowed values or None). A nested dict is a sub-schema; its default is
# built from its own defaults. ``None`` in types means the key may be null.
SCHEMA = {
    "model": {
        "type": ((str,), REQUIRED, None),
        "dropout": ((float,), 0.0, None),
    },
    "dataset": ((str,), REQUIRED, None),
    "aug": ((str,), REQUIRED, AUGS),
    "deepaa": {"EXP": ((str, None), None, None)},
    "randaug": {"N": ((int,), 2, None), "M": ((int,), 9, None)},
    "cutout": ((int,), -1, None),
    "batch": ((int,), REQUIRED, None),
    "gpus": ((int,), 1, None),
    "augmentation_search_space": ((str, None), None, None),  # released key, not used
    "epoch": ((int,), REQUIRED, None),
    "lr": ((float,), REQUIRED, None),
    "lr_schedule": {
        "type": ((str,), "cosine", SCHEDULES),
        "warmup": {"multiplier": ((float,), 1.0, None), "epoch": ((int,), 0, None)},
    },
    "optimizer": {
        "type": ((str,), "sgd", ("sgd",)),
        "nesterov": ((bool,), True, None),
        "momentum": ((float,), 0.9, None),
        "decay": ((float,), REQUIRED, None),
        "clip": ((float,), 5.0, None),
    },
    "test_interval": ((int,), 20, None),
    "all_workers_use_the_same_batches": ((bool,), False, None),
    "save_model": ((bool,), True, None),
    "early_finish_epoch": ((int, None), None, None),
    # ours
    "seed": ((int, None), None, None),
    "num_workers": ((int, None), None, None),
    "train_size": ((int, None), None, None),
    "test_size": ((int, None), None, None),
    # where the DeepAA policy runs: "pil" per image in the loader workers (Pillow), "batch"
    # per batch in the loader workers (the batched path's C kernels), "tensor" per batch on
    # the training device
    "aug_backend": ((str,), "pil", ("pil", "batch", "tensor")),
    "amp": ((str, None), None, ("bf16", "fp16", None)),
    "channels_last": ((bool,), False, None),
    "compile": ((bool,), False, None),
    "deterministic": ((bool,), False, None),
}

# Keys that may differ between a checkpoint's config and the resuming run's: they change how
# the run is executed (workers, memory layout, compilation, the choice of GPU kernels), not
# what it computes.
RESUME_FREE_KEYS = ("early_finish_epoch", "num_workers", "test_interval", "save_model", "compile",
                    "channels_last", "deterministic")


MAX_SEED = 2**32 - 1  # numpy's legacy seeds are 32-bit; the harness and the search agree
# key -> (smallest, largest, whether the smallest itself is allowed); None: no bound. Keys
# that may be null are checked when set. Learning rates above 10 and momenta of 1 or more
# diverge; torchvision's RandAugment has magnitudes 0..30 (31 bins).
RANGES = {
    "batch": (1, 10**6, True), "gpus": (1, 4096, True), "epoch": (1, 10**6, True),
    "test_interval": (1, 10**6, True), "train_size": (1, None, True),
    "test_size": (1, None, True), "num_workers": (0, 256, True), "seed": (0, MAX_SEED, True),
    "early_finish_epoch": (1, None, True), "cutout": (None, 10**5, True),
    "randaug.N": (0, 100, True), "randaug.M": (0, 30, True),
    "lr": (0.0, 10.0, False), "model.dropout": (0.0, 1.0, True),
    "optimizer.decay": (0.0, 1.0, True), "optimizer.clip": (0.0, 1e6, True),
    "optimizer.momentum": (0.0, 1.0, True), "lr_schedule.warmup.multiplier": (1.0, 1e3, True),
    "lr_schedule.warmup.epoch": (0, None, True),
}
# Upper bounds that are excluded rather than allowed.
_OPEN_ABOVE = {"model.dropout", "optimizer.momentum"}


class ConfigError(ValueError):
    """A bad config or override; the message is one line naming the key."""


def _type_name(types) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true/false"}
    out = [names[t] for t in types if t is not None]
    if None in types:
        out.append("null")
    return " or ".join(out)


def _as_float(key: str, value: int) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer of hundreds of digits
        raise ConfigError(f"config key {key!r} must be a finite number, got "
                          f"{short_repr(value)}") from None


def _coerce(key: str, value, spec):
    types, _, choices = spec
    if value is None:
        if None not in types:
            raise ConfigError(f"config key {key!r} must be {_type_name(types)}, got null")
        return None
    ok = None
    if isinstance(value, bool):
        ok = value if bool in types else None
    elif isinstance(value, int):
        ok = value if int in types else _as_float(key, value) if float in types else None
    elif isinstance(value, float):
        ok = value if float in types else None
    elif isinstance(value, str):
        ok = value if str in types else None
    if ok is None:
        raise ConfigError(f"config key {key!r} must be {_type_name(types)}, "
                          f"got {short_repr(value)}")
    if choices is not None and ok not in choices:
        allowed = ", ".join(str(c) for c in choices if c is not None)
        raise ConfigError(f"config key {key!r} must be one of {allowed}, got {short_repr(ok)}")
    return ok


def _validate(data, schema, prefix="") -> dict:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config key {prefix.rstrip('.') or '<top>'!r} must be a mapping")
    for k in data:
        if k not in schema:
            raise ConfigError(f"unknown config key {prefix + str(k)!r}")
    out = {}
    for k, spec in schema.items():
        key = prefix + k
        if isinstance(spec, dict):
            out[k] = _validate(data.get(k), spec, key + ".")
        elif k in data:
            out[k] = _coerce(key, data[k], spec)
        elif spec[1] is REQUIRED:
            raise ConfigError(f"missing required config key {key!r}")
        else:
            out[k] = spec[1]
    return out


def _get(cfg: dict, dotted: str):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def _check_range(key: str, value) -> None:
    low, high, closed = RANGES[key]
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key {key!r} must be a finite number, got {value}")
    above = low is None or (value >= low if closed else value > low)
    below = high is None or (value < high if key in _OPEN_ABOVE else value <= high)
    if not (above and below):
        lo = "" if low is None else f"{'>=' if closed else '>'} {low}"
        hi = "" if high is None else f"{'<' if key in _OPEN_ABOVE else '<='} {high}"
        raise ConfigError(f"config key {key!r} must be {' and '.join(b for b in (lo, hi) if b)}"
                          f", got {short_repr(value)}")


def _check_values(cfg: dict) -> None:
    for key in RANGES:
        value = _get(cfg, key)
        if value is not None:
            _check_range(key, value)
    warm = cfg["lr_schedule"]["warmup"]
    if warm["epoch"] >= cfg["epoch"]:
        raise ConfigError(f"config key 'lr_schedule.warmup.epoch' must be in [0, epoch), got {warm['epoch']}")
    opt = cfg["optimizer"]
    if opt["nesterov"] and opt["momentum"] == 0:
        raise ConfigError("config key 'optimizer.momentum' must be > 0 with nesterov true")
    if cfg["aug"] == "DeepAA" and not cfg["deepaa"]["EXP"]:
        raise ConfigError("missing required config key 'deepaa.EXP' (aug is DeepAA)")
    if cfg["aug_backend"] != "pil" and cfg["aug"] != "DeepAA":
        raise ConfigError(f"config key 'aug_backend' may be {cfg['aug_backend']!r} only with "
                          "aug DeepAA")
    if cfg["aug_backend"] != "pil" and cfg["cutout"] > 0:
        # The cutout comes after the policy, which then runs on whole batches: not supported.
        raise ConfigError(f"config key 'cutout' must be <= 0 with aug_backend "
                          f"{cfg['aug_backend']!r}")
    if not is_train_model(cfg["model"]["type"]):
        raise ConfigError(f"config key 'model.type': unknown model {cfg['model']['type']!r}; "
                          "expected wresnet<depth>_<width> with depth = 6n + 4 or resnet50")


def parse_overrides(tokens: list[str]) -> dict:
    """``['--a.b', '1', '--c=x']`` -> ``{'a.b': 1, 'c': 'x'}`` (values parsed as YAML scalars)."""
    out, i = {}, 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or len(tok) <= 2:
            raise ConfigError(f"unexpected argument {tok!r}; overrides look like --key.sub value")
        name, eq, value = tok[2:].partition("=")
        if not eq:
            if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
                raise ConfigError(f"override --{name} needs a value")
            value = tokens[i + 1]
            i += 1
        try:
            out[name] = yaml.safe_load(value) if value.strip() else ""
        except (yaml.YAMLError, ValueError, RecursionError):  # a huge integer: kept as text
            out[name] = value
        i += 1
    return out


def apply_overrides(raw: dict, overrides: dict) -> dict:
    """Set dotted keys in a copy of the raw config; a key must exist in the schema."""
    raw = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        spec, node = SCHEMA, raw
        for j, part in enumerate(parts):
            if not isinstance(spec, dict) or part not in spec:
                raise ConfigError(f"unknown config key {dotted!r}")
            spec = spec[part]
            if j == len(parts) - 1:
                if isinstance(spec, dict):
                    raise ConfigError(f"config key {dotted!r} is a section; set one of its keys")
                if isinstance(spec[0], tuple) and str in spec[0] and value is not None \
                        and not isinstance(value, (str, bool)):
                    value = str(value)  # --deepaa.EXP 1 means the string "1"
                node[part] = value
            else:
                if not isinstance(node.get(part), dict):
                    node[part] = {}
                node = node[part]
    return raw


def validate(raw: dict) -> dict:
    cfg = _validate(raw, SCHEMA)
    _check_values(cfg)
    return cfg


def load_config(path: str, overrides: dict | None = None) -> dict:
    """Read, override and validate a config file (raises :class:`ConfigError`)."""
    if os.path.exists(path) and not os.path.isfile(path):  # a folder, a pipe, a device
        raise ConfigError(f"config {path!r} is not a regular file")
    try:
        if os.path.getsize(path) > MAX_CONFIG_BYTES:
            raise ConfigError(f"config {path!r} is {os.path.getsize(path)} bytes; a config is "
                              f"a few hundred")
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path!r}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config {path!r} is not valid YAML{where}") from None
    except (ValueError, RecursionError) as exc:  # not UTF-8, a huge integer, deep nesting
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"config {path!r} is not a readable YAML document "
                          f"({type(exc).__name__})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path!r} must be a mapping at the top level")
    return validate(apply_overrides(raw, overrides or {}))


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two validated configs."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, prefix + k + ".")
        elif va != vb:
            out.append(prefix + k)
    return out


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=command_name("python -m DeepAA_evaluate.train"), allow_abbrev=False,
                description="Train a model with a DeepAA policy (SPEC §3). Any config key can "
                            "be overridden: --key.sub value.")
    p.add_argument("-c", "--config", required=True, help="trainer config YAML (confs/)")
    p.add_argument("--dataroot", default="./data", help="folder with the datasets")
    p.add_argument("--save", default="", help="checkpoint path; results JSON beside it")
    p.add_argument("--tag", default="", help="TensorBoard run name: logs/<tag>/")
    p.add_argument("--only-eval", action="store_true", help="evaluate the --save checkpoint")
    p.add_argument("--resume", action="store_true", help="continue the --save checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start over if --save exists")
    return p

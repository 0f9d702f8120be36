"""Compiled CPU kernels for the batched path: one C pass per image, any op per image.

On a CPU core the torch path (batched.color / batched.geometry) pays for every torch call:
a 32x32 op costs 2-6 µs per image there, while the work itself is a few hundred nanoseconds.
``batched/native.c`` does the same ops in one loop over the batch, each image with its own op
and parameters, so a mixed batch needs no grouping, no gather of index tensors and no merge;
a policy's layers are one call too, each image through all of them while it is in the cache.

* The parameters come from the same code as the torch executor's (geometry maps from
  ``batched.geometry.source_index``, Solarize thresholds and Posterize masks from
  ``batched.color``, the random draws of ``batched.draws``), tabulated once per (op, level,
  sign) in a ``CandidateTable``, so a call is a few numpy lookups and one C call; both
  executors give the same pixels for the same generator
  (tests/augmentation/batched/test_native.py).
* The ImageEnhance blend is evaluated as Blend.c does, in float32 without fused multiply-add.
  Before a factor is used its whole 256 x 256 table is compared once with Pillow's own
  ``Image.blend`` table (batched.lut); if they differ anywhere (a Pillow built with FMA, say),
  that factor is looked up in Pillow's table instead, so the result is exact either way.
* RandResizeCrop (``batched/native_resize.c``): Pillow's fixed-point BICUBIC, taps included,
  bit-exact. On 224 x 224 images it is one more op of the one pass (its output has the input's
  size); images of other sizes are resized by a call of their own (``resized_crop``).
* The library is compiled on first use with the system C compiler (``$CC``, else ``cc``) into
  a cache folder (``$DEEPAA_CACHE``, else ``$XDG_CACHE_HOME/deepaa`` or ``~/.cache/deepaa``,
  else a private temp folder; see _cache_dir), named by a hash of the sources, flags,
  compiler version and CPU features and written atomically, so concurrent processes share one
  build. Without a compiler, or with ``DEEPAA_NATIVE=0``, ``available()`` is False and the
  torch path runs.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
import threading
from functools import lru_cache

import numpy as np
import torch

from ..ops import CROP_PAD, IMAGENET_SIZE
from ..space import FILL_GREY, OPS, level_to_value
from . import color as colour
from . import lut as lut_ops
from . import geometry
from .geometry import source_index
from .resize import resized_crop as _resized_crop

_SOURCES = tuple(os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
                 for name in ("native.c", "native_resize.c"))
_FLAGS = ("-O3", "-ffp-contract=off", "-fno-fast-math", "-fPIC", "-shared")
# Tuned for the CPU it is built on (AVX2 / AVX-512 make the blends about 3x faster); the
# cache key then includes the CPU's feature flags so a shared cache never serves another CPU.
_NATIVE_ARCH = "-march=native"


# Op codes of batched/native.c, by op name.
CODES = {
    "Identity": 0, "ShearX": 1, "ShearY": 1, "TranslateX": 1, "TranslateY": 1, "Rotate": 1,
    "AutoContrast": 2, "Invert": 3, "Equalize": 4, "Solarize": 5, "Posterize": 6,
    "Contrast": 7, "Color": 8, "Brightness": 9, "Sharpness": 10, "RandFlip": 11,
    "RandCutout": 12, "RandCutout60": 12, "RandCrop": 13, "RandResizeCrop": 14,
}
_BLENDS = ("Contrast", "Color", "Brightness", "Sharpness")

_state = {"enabled": os.environ.get("DEEPAA_NATIVE", "1") != "0"}


def _cache_dir() -> str:
    """$DEEPAA_CACHE if set; else ~/.cache/deepaa (XDG); else, when the home folder cannot be
    written, a private folder in the temp dir (created 0700, and used only when this user owns
    it and nobody else can write it: a library is loaded from here)."""
    if os.environ.get("DEEPAA_CACHE"):
        os.makedirs(os.environ["DEEPAA_CACHE"], exist_ok=True)
        return os.environ["DEEPAA_CACHE"]
    root = os.path.join(os.environ.get("XDG_CACHE_HOME")
                        or os.path.join(os.path.expanduser("~"), ".cache"), "deepaa")
    try:
        os.makedirs(root, exist_ok=True)
        if os.access(root, os.W_OK):
            return root
    except OSError:
        pass
    user = os.getuid() if hasattr(os, "getuid") else 0
    fallback = os.path.join(tempfile.gettempdir(), f"deepaa-{user}")
    os.makedirs(fallback, mode=0o700, exist_ok=True)
    info = os.stat(fallback)
    if hasattr(os, "getuid") and (info.st_uid != user or info.st_mode & 0o022):
        raise OSError(f"{fallback} is not a private folder of this user")
    return fallback


def _cpu_fingerprint() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def build(compiler: str | None = None) -> str:
    """Compile the C sources (if their build is not cached yet); return the library path.
    Tries ``-march=native`` first and plain flags if that fails. Raises OSError /
    subprocess.CalledProcessError when no build works."""
    compiler = compiler or os.environ.get("CC") or "cc"
    source = b""
    for path in _SOURCES:
        with open(path, "rb") as f:
            source += f.read()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    setup = (_FLAGS, _NATIVE_ARCH, compiler, version, platform.machine(), sys.platform,
             _cpu_fingerprint())
    key = hashlib.sha256(source + repr(setup).encode()).hexdigest()[:16]
    folder = _cache_dir()
    target = os.path.join(folder, f"batched_native-{key}.so")
    if os.path.exists(target):
        return target
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
    os.close(fd)
    try:
        for extra in ((_NATIVE_ARCH,), ()):
            result = subprocess.run([compiler, *_FLAGS, *extra, *_SOURCES, "-o", tmp, "-lm"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if result.returncode == 0:
                break
        result.check_returncode()
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@lru_cache(maxsize=1)
def _library():
    """The loaded library, or None when it cannot be built."""
    try:
        lib = ctypes.CDLL(build())
    except (OSError, subprocess.CalledProcessError):
        return None
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32
    lib.dx_apply.argtypes = [p, p, p, i64, i64, i64, i64, i64, p, p, p, p, p, p, p, i32]
    lib.dx_apply.restype = ctypes.c_int
    lib.dx_blend_table.argtypes = [ctypes.c_float, p]
    lib.dx_blend_table.restype = None
    lib.dx_resize.argtypes = [p, p, i64, i64, i64, i64, i64, p]
    lib.dx_resize.restype = ctypes.c_int
    return lib


def set_enabled(flag: bool) -> None:
    """Switch the compiled kernels on or off for this process (the torch path runs when off)."""
    _state["enabled"] = bool(flag)


def available() -> bool:
    return _state["enabled"] and _library() is not None


def usable(x: torch.Tensor, names) -> bool:
    """True when the kernels can apply ops ``names`` to ``x`` in one pass: a CPU tensor of
    non-empty images whose pixel indices fit the kernels' int32 maps; RandResizeCrop only on
    224 x 224 images (its output size: the pass keeps the size)."""
    h, w = x.shape[2:]
    same_size = h == w == IMAGENET_SIZE or "RandResizeCrop" not in names
    return (x.device.type == "cpu" and 0 < h * w < 2 ** 31 and same_size
            and all(name in CODES for name in names) and available())


@lru_cache(maxsize=256)
def formula_matches(factor: float) -> bool:
    """Whether the C blend equals Pillow's Image.blend for every pixel pair at ``factor``."""
    mine = torch.empty(65536, dtype=torch.uint8)
    _library().dx_blend_table(float(factor), mine.data_ptr())
    return bool(torch.equal(mine, lut_ops._blend_table_cpu(float(factor))))


# A map is copied as runs when its runs average at least this many pixels; shorter runs cost
# more in memcpy calls than the per-pixel gather (measured at 32 x 32 and 224 x 224).
_MIN_RUN = 24


@lru_cache(maxsize=4096)
def map_runs(name: str, value: float, width: int, height: int):
    """source_index as runs: int32 (R, 3) rows (dst, src or -1 for black, length) of
    consecutive output pixels read from consecutive source pixels, or None when the runs are
    short (ShearY, Rotate, a small shift on a large image), where a per-pixel gather is
    faster."""
    m = source_index(name, value, width, height)
    same = ((m[1:] == m[:-1] + 1) & (m[:-1] >= 0)) | ((m[1:] < 0) & (m[:-1] < 0))
    starts = np.concatenate(([0], np.flatnonzero(~same) + 1))
    if len(starts) * _MIN_RUN > m.size:
        return None
    lengths = np.diff(np.concatenate((starts, [m.size])))
    src = np.where(m[starts] < 0, -1, m[starts])
    return np.stack([starts, src, lengths], axis=1).astype(np.int32)


class CandidateTable:
    """The C parameters of every (op, level, sign) of an op list at one image size: a call
    looks its images' rows up with numpy instead of looping over ops in Python. Row
    (op * l_mags + level) * 2 + negative. An op's rows are filled the first time a call uses
    it (``ensure``), so a size that meets few ops builds few source maps; rows of ops without
    a C kernel keep code -1. Random ops get their per-image draws afterwards (``fill_random``;
    RandResizeCrop its box).
    Filled rows never change and the stacked arrays only grow, so calls in several threads
    see consistent tables."""

    def __init__(self, names: tuple, l_mags: int, height: int, width: int):
        rows = len(names) * l_mags * 2
        self.names, self.l_mags, self.height, self.width = names, l_mags, height, width
        self.code = np.full(rows, -1, dtype=np.int32)
        self.ip = np.zeros((rows, 4), dtype=np.int32)
        self.ip[:, 1] = -1
        self.fp = np.zeros(rows, dtype=np.float32)
        self.built: set = set()
        self._maps, self._runs, self._first = [], [np.zeros((1, 3), dtype=np.int32)], 1
        self._tables: dict = {}  # blend factor -> table id, for factors the formula misses
        self.maps = np.zeros((1, height * width), dtype=np.int32)
        self.runs = self._runs[0]
        self.tables = np.zeros((1, 65536), dtype=np.uint8)
        self._lock = threading.Lock()

    def ensure(self, op_indices) -> None:
        """Fill the rows of the ops ``op_indices`` (indices into ``names``) not filled yet."""
        if all(k in self.built for k in op_indices):
            return
        with self._lock:
            for k in op_indices:
                if k not in self.built:
                    self._fill(k)
                    self.built.add(k)
            if self._maps:
                self.maps = np.stack(self._maps)
            self.runs = np.concatenate(self._runs)
            if self._tables:
                self.tables = np.stack([lut_ops._blend_table_cpu(f).numpy()
                                        for f in self._tables])

    def _fill(self, k: int) -> None:
        name = self.names[k]
        if name not in CODES:
            return
        spec = OPS[name]
        for level in range(self.l_mags):
            value = level_to_value(name, level, self.l_mags) if spec.has_magnitude else 0.0
            for negative in (0, 1):
                row = (k * self.l_mags + level) * 2 + negative
                v = -value if negative and spec.signed else value
                self.code[row] = CODES[name]
                if CODES[name] == 1:
                    self._add_map(row, name, v)
                elif name in ("Solarize", "Posterize"):
                    rule = (colour.solarize_threshold if name == "Solarize"
                            else colour.posterize_mask)
                    self.ip[row, 0] = int(rule(torch.tensor([v], dtype=torch.float64))[0])
                elif name in _BLENDS:
                    self.fp[row] = np.float32(v)
                    if not formula_matches(v):
                        self.ip[row, 1] = self._tables.setdefault(float(v), len(self._tables))

    def _add_map(self, row: int, name: str, value: float) -> None:
        """Row ``row`` gets a new source map (map id, and its runs when map_runs gives any)."""
        self.ip[row, 0] = len(self._maps)
        m = source_index(name, value, self.width, self.height).astype(np.int32)
        self._maps.append(np.where(m < 0, np.int32(m.size), m))  # the C code's black: h * w
        plan = map_runs(name, value, self.width, self.height)
        if plan is not None:
            self.ip[row, 2], self.ip[row, 3] = len(plan), self._first
            self._runs.append(plan)
            self._first += len(plan)

    def rows(self, op_ids: np.ndarray, levels: np.ndarray, negative: np.ndarray):
        """(code, ip, fp) of every image: fresh arrays the caller may change."""
        row = (op_ids * self.l_mags + levels) * 2 + negative
        return self.code[row], self.ip[row], self.fp[row]

    def run(self, x: torch.Tensor, code: np.ndarray, ip: np.ndarray, fp: np.ndarray,
            take: np.ndarray | None = None):
        """Apply the ops to ``x`` (uint8 N x C x H x W on the CPU) with one C call: ``code``,
        ``ip``, ``fp`` as ``rows`` gives them for one op per image, or stacked (layers, N, ...)
        for several ops per image, applied in order (each image through all its layers while
        it is in the cache). With ``take`` (int64 indices into ``x``), the batch is
        ``x[take]``, read in place: no gathered copy of the images is made."""
        x = x.contiguous()
        n, c, h, w = x.shape
        if take is not None:
            take = np.ascontiguousarray(take, dtype=np.int64)
            if take.ndim != 1 or (take.size and not 0 <= take.min() <= take.max() < n):
                raise IndexError(f"batched.native: indices outside 0..{n - 1}")
            n = take.shape[0]
        out = x.new_empty((n, c, h, w))
        if n == 0:
            return out
        code = np.ascontiguousarray(code, dtype=np.int32).reshape(-1, n)
        fill = np.array(FILL_GREY, dtype=np.uint8)  # one grey per band of the RGB images
        arrays = (code, np.ascontiguousarray(ip, dtype=np.int32),
                  np.ascontiguousarray(fp, dtype=np.float32),
                  self.maps, self.runs, self.tables, fill)
        status = _library().dx_apply(x.data_ptr(), None if take is None else take.ctypes.data,
                                     out.data_ptr(), n, code.shape[0], c, h, w,
                                     *(a.ctypes.data for a in arrays), CROP_PAD)
        if status < 0:
            raise MemoryError("batched.native: out of memory")
        if status:
            raise RuntimeError(f"batched.native: no kernel for image {(status - 1) % n}")
        return out


@lru_cache(maxsize=64)
def candidate_table(names: tuple, l_mags: int, height: int, width: int) -> CandidateTable:
    return CandidateTable(names, l_mags, height, width)


def fill_random(ip: np.ndarray, rows: np.ndarray, name: str, params) -> None:
    """Write the draws of random op ``name`` (numpy arrays, as ``batched`` makes them) into
    ``ip[rows]``: RandFlip's flags, the cutout boxes (x0, y0, x1, y1), RandCrop's (top, left),
    RandResizeCrop's box (left, top, width, height)."""
    if name == "RandFlip":
        ip[rows, 0] = params
    else:
        for k, part in enumerate(params):
            ip[rows, k] = part


def resized_crop(x: torch.Tensor, boxes, size: int) -> torch.Tensor:
    """batched.resize.resized_crop (Pillow's BICUBIC resize of each image's box to size x
    size, bit-exact, in Pillow's pass order) with the taps and both passes in one C call."""
    return _resized_crop(x, boxes, size, resample=_resize_horizontal_first)


def _resize_horizontal_first(x: torch.Tensor, boxes, size: int) -> torch.Tensor:
    """Resample.c's two passes, horizontal first, in C (batched/native_resize.c)."""
    x = x.contiguous()
    n, c, h, w = x.shape
    out = x.new_empty(n, c, size, size)
    if n == 0:
        return out
    box = np.ascontiguousarray(np.stack([np.asarray(b) for b in boxes], axis=1), dtype=np.int32)
    if _library().dx_resize(x.data_ptr(), out.data_ptr(), n, c, h, w, size, box.ctypes.data):
        raise MemoryError("batched.native: out of memory")
    return out

"""Applying candidates to the search's images: Pillow tasks, a process pool, a tensor path.

The search augments many copies of few images (SPEC §2: every point's image by every candidate,
and sampled sequences through the searched layers). Work is cut into *tasks*:

    task = (sources, seqs, finals, seed, crop)

``sources`` are images (uint8 H x W x 3 arrays, or file paths decoded in the worker);
``seqs[i]`` is the list of candidate indices applied to ``sources[i]`` in order; then, when
``finals`` is given, the result is augmented by each candidate of ``finals`` (the "dense" set),
otherwise kept as is. With ``crop`` every output is centre-cropped (padded if smaller) to the
model's input size unless it has that size already (SPEC §2: ImageNet images are searched at
their own size and cropped to 224 after the last layer). Random ops draw from
``numpy.random.default_rng(seed)`` in a fixed order, so a task gives the same pixels in the
main process and in any pool worker: the pool never changes the result.

This module imports neither TensorFlow nor torch at load time; the pool workers only run
Pillow and numpy.
"""
from __future__ import annotations

import multiprocessing
import os
import threading

import numpy as np
from PIL import Image

from augmentation.ops import apply_op, center_crop
from deepaa_data import read_image


class Augmenter:
    """Runs tasks with the Pillow ops (search semantics: no mirroring, SPEC §1)."""

    def __init__(self, candidates, l_mags: int, out_size: int):
        self.candidates = [tuple(c) for c in candidates]
        self.l_mags = int(l_mags)
        self.out_size = int(out_size)

    def _load(self, src) -> Image.Image:
        if isinstance(src, np.ndarray):
            return Image.fromarray(src)
        return read_image(src)  # a damaged file: DatasetError naming it

    def _apply(self, img, index, rng):
        name, level = self.candidates[int(index)]
        return apply_op(img, name, level, self.l_mags, mirror=False, rng=rng)

    def _finish(self, img, crop):
        if crop and img.size != (self.out_size, self.out_size):
            img = center_crop(img, self.out_size)
        return np.asarray(img, dtype=np.uint8)

    def __call__(self, task):
        sources, seqs, finals, seed, crop = task
        rng = np.random.default_rng(seed)
        out = []
        for src, seq in zip(sources, seqs):
            img = self._load(src)
            for index in seq:
                img = self._apply(img, index, rng)
            if finals is None:
                out.append(self._finish(img, crop))
            else:
                out.extend(self._finish(self._apply(img, f, rng), crop) for f in finals)
        if crop:
            return np.stack(out) if out else np.zeros((0, self.out_size, self.out_size, 3),
                                                       np.uint8)
        return out


_WORKER_AUGMENTER = None  # set once per pool process by _init_worker


def _init_worker(candidates, l_mags, out_size):
    global _WORKER_AUGMENTER
    # Leave the cores' threads to the model: one thread of native work per worker.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _WORKER_AUGMENTER = Augmenter(candidates, l_mags, out_size)


def _run_in_worker(task):
    return _WORKER_AUGMENTER(task)


class Executor:
    """Maps tasks to results, in order, in this process or in a pool (``--use_pool``).

    The pool uses the ``spawn`` start method: forking a process that runs TensorFlow threads is
    unsafe. The workers import this module (Pillow and numpy), never TensorFlow. The pool starts
    with the first tasks that need it, so an executor whose work never reaches the Pillow path
    (TensorExecutor on CIFAR-sized data) starts no idle processes.
    """

    def __init__(self, augmenter: Augmenter, processes: int = 0):
        self.augmenter = augmenter
        self.processes = int(processes)
        self.pool = None
        self._starting = threading.Lock()  # map runs in the prefetch thread and the main one

    def map(self, tasks: list) -> list:
        if self.processes <= 0:
            return [self.augmenter(t) for t in tasks]
        with self._starting:
            if self.pool is None:
                ctx = multiprocessing.get_context("spawn")
                self.pool = ctx.Pool(self.processes, initializer=_init_worker,
                                     initargs=(self.augmenter.candidates, self.augmenter.l_mags,
                                               self.augmenter.out_size))
        chunk = max(1, len(tasks) // (4 * self.processes))
        return self.pool.map(_run_in_worker, tasks, chunksize=chunk)

    def close(self):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None
        self.processes = 0  # later tasks, if any, run in this process


class TensorExecutor(Executor):
    """``--aug_backend tensor``: the batched torch ops of ``augmentation.batched``.

    Tasks are regrouped so that each candidate is applied once to every image that needs it.
    The random ops draw from a torch generator seeded from the task seeds, so results are
    reproducible but not pixel-identical to the Pillow path. Images must all have the model's
    input size (CIFAR-like data); other data falls back to Pillow.
    """

    def __init__(self, augmenter: Augmenter, processes: int = 0):
        super().__init__(augmenter, processes)
        import torch  # noqa: F401  (imported before TensorFlow by the CLI)
        from augmentation import batched

        self.torch, self.batched = torch, batched

    def map(self, tasks: list) -> list:
        if any(not isinstance(s, np.ndarray) or s.shape[:2] != (self.augmenter.out_size,) * 2
               for t in tasks for s in t[0]):
            return super().map(tasks)
        torch = self.torch
        gen = torch.Generator().manual_seed(int(tasks[0][3]) % (2 ** 63) if tasks else 0)
        imgs = np.stack([s for t in tasks for s in t[0]])
        seqs = [list(q) for t in tasks for q in t[1]]
        x = torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()
        depth = max((len(q) for q in seqs), default=0)
        for layer in range(depth):  # sequences: one op per image, grouped by the batched path
            x = self._apply_layer(x, seqs, layer, gen)
        results, start = [], 0
        for sources, _, finals, _, crop in tasks:
            block = x[start:start + len(sources)]
            start += len(sources)
            if finals is None:
                arr = block.permute(0, 2, 3, 1).numpy()
                results.append(arr if crop else list(arr))
                continue
            results.append(self._dense(block, finals, gen).permute(0, 2, 3, 1).numpy())
        return results

    def _dense(self, block, finals, gen):
        """Every candidate of ``finals`` applied to every image of ``block``, in one call:
        the block is repeated once per candidate (image-major, the order of the Pillow path)
        and each copy gets its candidate, so the compiled kernels run them as one batch."""
        n, k = block.shape[0], len(finals)
        names = [self.augmenter.candidates[f][0] for f in finals] * n
        levels = [self.augmenter.candidates[f][1] for f in finals] * n
        copies = block.repeat_interleave(k, dim=0)
        return self.batched.apply_ops(copies, names, levels, self.augmenter.l_mags,
                                      mirror=False, generator=gen)

    def _apply_layer(self, x, seqs, layer, gen):
        """Op ``layer`` of every sequence long enough, applied to its image. When every
        sequence has the op (the search's tasks always do) the batch goes through whole;
        otherwise it is rebuilt by gathers (index_select, cat): an indexed assignment
        (``x[rows] = ...``, index_put) is several times slower on the CPU."""
        torch = self.torch
        rows = [i for i, q in enumerate(seqs) if len(q) > layer]
        cands = [self.augmenter.candidates[seqs[i][layer]] for i in rows]
        names, levels = [c[0] for c in cands], [c[1] for c in cands]
        if len(rows) == len(seqs):
            return self.batched.apply_ops(x, names, levels, self.augmenter.l_mags,
                                          mirror=False, generator=gen)
        idx = torch.tensor(rows, dtype=torch.long)
        done = self.batched.apply_ops(x.index_select(0, idx), names, levels,
                                      self.augmenter.l_mags, mirror=False, generator=gen)
        where = torch.arange(len(seqs))  # row of each image in cat([x, done])
        where[idx] = len(seqs) + torch.arange(len(rows))
        return torch.cat([x, done]).index_select(0, where)


def make_executor(augmenter: Augmenter, use_pool: bool, backend: str = "pil") -> Executor:
    processes = (os.cpu_count() or 1) if use_pool else 0
    if backend == "tensor":
        return TensorExecutor(augmenter, processes)
    return Executor(augmenter, processes)

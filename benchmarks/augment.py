"""Images per second of the augmentation paths, measured side by side in one run.

Pillow per image on one core (``augmentation.ops.apply_op``) against the batched tensor path
(``augmentation.batched``) on the CPU, with its compiled kernels (``cpu C``, when they build)
and with its torch executor (``cpu torch``), and, when there is one, on the GPU; at 32x32 (CIFAR
space) and 224x224 (ImageNet space); one candidate at a time (every candidate of the space in
turn, as the search's dense augmentation does) and full policies (6 layers uniform over the
candidates, the hardest mix; the released CIFAR policy 1 at 32x32 and ImageNet policies 1 and
2 at 224x224), Pillow through the trainer's transform (DeepAAPolicy).

    python benchmarks/augment.py [--n32 1024] [--n224 64] [--threads 1] [--json out.json]

The images are generated (smooth colour fields with edges and noise), so the run needs no
dataset. Ratios are against the Pillow column of the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch  # before anything that might load TensorFlow

import numpy as np
from PIL import Image

# this checkout's packages, not an installed copy
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from augmentation import DeepAAPolicy, batched, ops, space  # noqa: E402
from augmentation.batched import native  # noqa: E402
from augmentation.policy import Policy, load_policy  # noqa: E402


def photo_like(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.zeros((n, h, w, 3))
    for c in range(3):
        a, b, f = rng.uniform(-2, 2, (3, n, 1, 1))
        base[..., c] = 128 + 90 * np.sin(3 * f * xx + a) * np.cos(2 * b * yy + f)
    base += rng.normal(0, 8, base.shape)
    return np.clip(base, 0, 255).astype(np.uint8)


def _timed(fn, min_time: float = 0.3):
    """Seconds per call of fn(), repeated until min_time has passed (after one warm-up)."""
    fn()
    calls, start = 0, CLOCK()
    while True:
        fn()
        calls += 1
        elapsed = CLOCK() - start
        if elapsed >= min_time:
            return elapsed / calls


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


# Every rate is the best of REPEATS measurements: on a shared machine other jobs only ever
# slow a measurement down, so the fastest repeat is the least disturbed one (set by --repeats).
REPEATS = 3
# The clock (--clock): wall time, or the CPU time of this process, which leaves out the time
# other jobs hold the core; both paths run on one core, so CPU time is their cost on one core.
CLOCK = time.perf_counter


def _best(rate_fn):
    return max(rate_fn() for _ in range(REPEATS))


def pillow_candidates(pils, cands, l_mags, rng):
    def rate():
        start = CLOCK()
        for name, level in cands:
            for img in pils:
                ops.apply_op(img, name, level, l_mags, rng=rng)
        return len(cands) * len(pils) / (CLOCK() - start)
    return _best(rate)


def pillow_policy(pils, policy, rng):
    """The trainer's Pillow transform (DeepAAPolicy: inverse-CDF sampling, then apply_op per
    layer, mirror on) per image. Runs before this version drew each layer's candidate with
    ``rng.choice(p=...)``, about 10 µs per layer more, which made Pillow look slower."""
    transform = DeepAAPolicy(policy, mirror=True)

    def rate():
        start = CLOCK()
        for img in pils:
            transform(img, rng=rng)
        return len(pils) / (CLOCK() - start)
    return _best(rate)


def batched_candidates(x, cands, l_mags, gen):
    def run():
        for name, level in cands:
            batched.apply_candidate(x, name, level, l_mags, generator=gen)
        _sync(x.device)
    return _best(lambda: len(cands) * x.shape[0] / _timed(run, 0.0))


def batched_policy(x, policy, gen):
    def run():
        batched.apply_policy_batch(policy, x, mirror=True, generator=gen)
        _sync(x.device)
    return _best(lambda: x.shape[0] / _timed(run))


def per_op(pils, x, cands, l_mags, gen):
    """images/s of Pillow and the batched path per op (all its candidate levels)."""
    rows = []
    for op in dict.fromkeys(name for name, _ in cands):
        mine = [c for c in cands if c[0] == op]
        rows.append((op, pillow_candidates(pils, mine, l_mags, np.random.default_rng(0)),
                     batched_candidates(x, mine, l_mags, gen)))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n32", type=int, default=1024, help="batch size at 32x32")
    p.add_argument("--n224", type=int, default=64, help="batch size at 224x224")
    p.add_argument("--pil32", type=int, default=100, help="Pillow images per candidate, 32x32")
    p.add_argument("--pil224", type=int, default=8, help="Pillow images per candidate, 224")
    p.add_argument("--gpu-factor", type=int, default=8,
                   help="the GPU gets batches this many times larger")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (Pillow uses one)")
    p.add_argument("--repeats", type=int, default=3,
                   help="report the best of this many measurements of every rate")
    p.add_argument("--clock", choices=("wall", "cpu"), default=None,
                   help="time with the wall clock or this process's CPU time (default: cpu "
                        "without a GPU, wall with one)")
    p.add_argument("--per-op", action="store_true", help="also print a per-op table at 32x32")
    p.add_argument("--json", help="write the measurements to this JSON file")
    args = p.parse_args(argv)
    if min(args.n32, args.n224, args.pil32, args.pil224, args.threads, args.gpu_factor,
           args.repeats) < 1:
        print("augment.py: sizes and thread counts must be positive", file=sys.stderr)
        return 2
    if args.clock is None:
        args.clock = "wall" if torch.cuda.is_available() else "cpu"
    if args.clock == "cpu" and torch.cuda.is_available():
        print("augment.py: --clock cpu does not count GPU time; use --clock wall",
              file=sys.stderr)
        return 2
    global REPEATS, CLOCK
    REPEATS = args.repeats
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    # (column, device, compiled CPU kernels on): the C kernels and the torch executor on the
    # CPU, the torch executor on the GPU.
    columns = ([("cpu C", devices[0], True)] if native.available() else []) + [
        ("cpu torch", devices[0], False)] + [("cuda", d, False) for d in devices[1:]]
    print(f"torch {torch.__version__}, CPU threads {args.threads}, best of {args.repeats}, "
          f"{args.clock} clock, devices "
          f"{', '.join(str(d) for d in devices)}"
          + (f" ({torch.cuda.get_device_name()})" if len(devices) > 1 else ""))
    results = []
    header = f"{'size':>7} {'workload':<22} {'Pillow 1 core':>14}" + "".join(
        f" {('batched ' + label):>17} {'ratio':>7}" for label, _, _ in columns)
    print(header)
    for size, sp, n_batch, n_pil in ((32, "cifar", args.n32, args.pil32),
                                     (224, "imagenet", args.n224, args.pil224)):
        n_gpu = n_batch * args.gpu_factor if len(devices) > 1 else n_batch
        arr = photo_like(max(n_gpu, n_pil), size, size, seed=size)
        pils = [Image.fromarray(a) for a in arr[:n_pil]]
        cands = space.candidates(sp, 13)
        policies = [("policy uniform x6", Policy.uniform(6, sp, 13))]
        for name in (("cifar_1",) if sp == "cifar" else ("imagenet_1", "imagenet_2")):
            try:
                policies.append((f"policy {name}", load_policy(name)))
            except (OSError, ValueError):
                pass
        workloads = [(f"{len(cands)} candidates", lambda: pillow_candidates(
            pils, cands, 13, np.random.default_rng(0)),
            lambda x, g: batched_candidates(x, cands, 13, g))]
        for label, pol in policies:
            workloads.append((label, lambda pol=pol: pillow_policy(pils * 4, pol,
                                                                   np.random.default_rng(0)),
                              lambda x, g, pol=pol: batched_policy(x, pol, g)))
        for label, pil_fn, batch_fn in workloads:
            pil_rate = pil_fn()
            row = {"size": size, "workload": label, "pillow": pil_rate}
            line = f"{size:>4}px  {label:<22} {pil_rate:>14.0f}"
            for label, dev, compiled in columns:
                n_dev = n_gpu if dev.type == "cuda" else n_batch
                x = torch.from_numpy(arr[:n_dev]).permute(0, 3, 1, 2).contiguous().to(dev)
                gen = torch.Generator(device=dev).manual_seed(0)
                native.set_enabled(compiled)
                rate = batch_fn(x, gen)
                native.set_enabled(True)
                row[f"batched_{label.replace(' ', '_')}"] = rate
                line += f" {rate:>17.0f} {rate / pil_rate:>6.1f}x"
            print(line, flush=True)
            results.append(row)
        if args.per_op and size == 32:
            x = torch.from_numpy(arr[:n_batch]).permute(0, 3, 1, 2).contiguous()
            print(f"  per op at 32x32 (CPU, batch {n_batch}): Pillow img/s, batched img/s "
                  f"({'C kernels' if native.available() else 'torch executor'}), ratio")
            for op, pil_rate, rate in per_op(pils, x, cands, 13, torch.Generator()):
                print(f"    {op:<14} {pil_rate:>9.0f} {rate:>10.0f} {rate / pil_rate:>6.1f}x")
                results.append({"size": 32, "workload": f"op {op}", "pillow": pil_rate,
                                "batched_cpu": rate})
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

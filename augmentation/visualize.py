"""Pictures of a policy: the two kinds of figure of the released README, plus examples.

``python -m augmentation.visualize POLICY --out DIR [--images DATASET] [--dataroot ROOT]``
draws, for any policy (a shipped name such as ``cifar_1`` or a path to a policy YAML):

- ``operations.png``: per layer, the probability of each operation summed over its levels
  (SPEC §0, the README's first figure), with the layer's entropy (SPEC §5);
- ``magnitudes_layer{k}.png``: for layer k, the distribution over levels of each magnitude op
  (SPEC §0, the README's second figure; ops without a magnitude left out). Each panel shows
  P(level | op) so the shape is readable for rare ops too; the title gives P(op) in the layer.
  The op's identity level is never a candidate (SPEC §1) and is drawn as an empty slot;
- ``examples.png``: a grid of images, the original in the first column and independent draws
  of the policy (evaluation semantics, mirrored signed ops) in the others. Without ``--images``
  the built-in synthetic shapes (:mod:`deepaa_data.synthetic`) are used;
- ``search_trace.png``, for a policy searched by this project (its ``meta.op_prob_trace``): per
  layer, the probabilities of the leading ops over the search's steps, and the entropy.

``POLICY`` may also be a search's results folder: its ``policy.yaml`` when the search has
finished, otherwise its ``trace.json`` (written at every checkpoint), so a running search can
be watched with ``search_trace.png`` alone.

matplotlib runs on the Agg backend (no display needed). Every PNG is written atomically.
Bad input (a policy or data set that does not load, an image that does not decode, an output
folder that cannot be written, numbers out of LIMITS) prints one line and exits with code 2
before anything is written.
"""
from __future__ import annotations

import argparse
import io
import os
import sys

import numpy as np
from PIL import Image

from .cli import command_name
from .files import Unwritable, atomic_write, check_writable
from .policy import MAX_FILE_BYTES, Policy, PolicyError, load_policy
from .space import OP_TABLE, identity_level
from .transform import DeepAAPolicy

DISPLAY = 64  # pixels per example tile (32x32 CIFAR images are upscaled, 224 ones downscaled)
# Bounds of the command line's numbers; matplotlib cannot make a figure wider or taller than
# 2**16 pixels (a grid of 100 x 100 tiles is 10,000, the operations panel of 100 layers 23,000).
LIMITS = {"n_images": (1, 100), "n_samples": (1, 100), "seed": (0, 2**32 - 1)}
MAX_LAYERS = 100
MAX_TRACE_POINTS = 100000  # steps drawn per layer of search_trace.png (a search writes 128)


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str) -> None:
    """Write the figure atomically (rendered in memory, then written by ``atomic_write``)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write(path, buffer.getvalue())


def _title(policy: Policy) -> str:
    src = policy.meta.get("name") or policy.meta.get("source") or "policy"
    return f"{src} ({policy.space} space, {policy.n_layers} layers, L = {policy.l_mags})"


def plot_operations(policy: Policy, path: str) -> None:
    """One panel per layer: horizontal bars of P(op) summed over levels."""
    plt = pyplot()
    names = [op.name for op in OP_TABLE[policy.space]]
    op_probs = policy.op_probs()
    entropy = policy.entropy()
    k = policy.n_layers
    fig, axes = plt.subplots(1, k, figsize=(2.3 * k + 1.2, 5.2), sharey=True, squeeze=False)
    ypos = np.arange(len(names))
    for layer, ax in enumerate(axes[0]):
        vals = np.array([op_probs[n][layer] for n in names])
        ax.barh(ypos, vals, color="tab:blue")
        top = int(np.argmax(vals))
        ax.barh(ypos[top], vals[top], color="tab:orange")
        ax.set_xlim(0, 1)
        ax.set_title(f"layer {layer + 1}\nH = {entropy[layer]:.2f} nats", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(ypos)
    axes[0][0].set_yticklabels(names)
    axes[0][0].invert_yaxis()
    fig.suptitle(f"Probability of each operation per layer (summed over levels)\n{_title(policy)}",
                 fontsize=10)
    fig.supxlabel("probability", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    save_figure(fig, path)
    plt.close(fig)


def level_table(policy: Policy, layer: int) -> dict[str, np.ndarray]:
    """Per magnitude op, P(op, level) for each level 0..L-1 in ``layer`` (identity level 0)."""
    out = {op.name: np.zeros(policy.l_mags) for op in OP_TABLE[policy.space] if op.has_magnitude}
    for i, (name, level) in enumerate(policy.candidates):
        if name in out:
            out[name][level] += policy.probs[layer, i]
    return out


def plot_magnitudes(policy: Policy, layer: int, path: str) -> None:
    """Panels per magnitude op: P(level | op) over the levels of ``layer`` (0-based)."""
    plt = pyplot()
    table = level_table(policy, layer)
    specs = {op.name: op for op in OP_TABLE[policy.space]}
    n = len(table)
    cols = 4
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.2 * rows), squeeze=False)
    levels = np.arange(policy.l_mags)
    for ax, (name, joint) in zip(axes.flat, table.items()):
        total = joint.sum()
        cond = joint / total if total > 0 else joint
        # Ops the layer almost never picks are greyed: their level shape carries little weight.
        ax.bar(levels, cond, color="tab:green" if total >= 0.01 else "lightgrey", width=0.8)
        skip = identity_level(specs[name], policy.l_mags)
        ax.axvline(skip, color="grey", lw=0.8, ls=":")
        ax.set_title(f"{name}  (P = {total:.3f})", fontsize=9)
        ax.set_xticks(levels[:: max(1, policy.l_mags // 7)])
        ax.set_ylim(0, max(0.05, float(cond.max()) * 1.15))
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"Layer {layer + 1}: distribution of levels of each magnitude op "
                 f"(P(level | op); dotted: identity level, not a candidate; grey: P(op) < 0.01)\n{_title(policy)}", fontsize=10)
    fig.supxlabel("level", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def builtin_images(n: int = 8, seed: int = 0) -> list[Image.Image]:
    """``n`` synthetic training images (uncluttered ones), when no data set is given."""
    from deepaa_data.synthetic import generate

    x, _ = generate(max(n, 1), "train", seed)
    return [Image.fromarray(a) for a in x[:n]]


def dataset_images(spec: str, root: str, n: int, seed: int = 0) -> list[Image.Image]:
    """``n`` images spread over a data set (``npz:DIR``, ``folder:DIR``, ``cifar10`` ...)."""
    from deepaa_data import load_dataset

    ds = load_dataset(spec, root, "test" if spec.startswith("npz:") else "train")
    if len(ds) == 0:
        raise ValueError(f"data set {spec!r} has no images")
    idx = np.random.default_rng(seed).choice(len(ds), size=min(n, len(ds)), replace=False)
    return [ds.image(int(i)) for i in sorted(idx)]


def plot_examples(policy: Policy, images: list[Image.Image], path: str, n_samples: int = 7,
                  seed: int = 0) -> None:
    """Rows: images; column 0 the original, then ``n_samples`` independent policy draws."""
    plt = pyplot()
    transform = DeepAAPolicy(policy, mirror=True, seed=seed)
    rng = np.random.default_rng(seed)

    def tile(img):
        return np.asarray(img.convert("RGB").resize((DISPLAY, DISPLAY), Image.NEAREST))

    rows = len(images)
    fig, axes = plt.subplots(rows, n_samples + 1, figsize=(1.0 * (n_samples + 1), 1.0 * rows + 0.6),
                             squeeze=False)
    for r, img in enumerate(images):
        axes[r][0].imshow(tile(img))
        for c in range(1, n_samples + 1):
            axes[r][c].imshow(tile(transform(img.copy(), rng=rng)))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].set_title("original", fontsize=8)
    for c in range(1, n_samples + 1):
        axes[0][c].set_title(f"draw {c}", fontsize=8)
    fig.suptitle(f"Images augmented by {_title(policy)}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


TRACE_LINES = 6  # ops drawn per layer in search_trace.png


def leading_ops(probs: np.ndarray, ops: list[str], n: int = TRACE_LINES) -> list[int]:
    """Columns of the ``n`` ops with the highest probability at any recorded step of a layer
    (``probs`` is [steps, ops]), highest final probability first."""
    if len(probs) == 0:
        return []
    chosen = np.argsort(-probs.max(axis=0), kind="stable")[:n]
    return sorted(chosen.tolist(), key=lambda j: -probs[-1, j])


def plot_trace(summary: dict, path: str, title: str = "") -> None:
    """One panel per layer: the leading ops' probabilities (summed over levels) against the
    search step, and the layer's entropy on a second axis. ``summary`` is a search's
    ``op_prob_trace`` (policy_search.trace.SearchTrace.op_summary)."""
    plt = pyplot()
    ops, layers = summary["ops"], len(summary["steps"])
    cols = min(3, max(1, layers))
    rows = int(np.ceil(layers / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.3 * rows), squeeze=False)
    # One colour per op, the same in every panel: tab20's ten strong colours, then Dark2's.
    palette = [plt.get_cmap("tab20")(2 * i) for i in range(10)] + \
        [plt.get_cmap("Dark2")(i) for i in range(8)]
    colours = {name: palette[i % len(palette)] for i, name in enumerate(ops)}
    # One entropy scale for every panel, from the trace itself (the number of candidates, and
    # so the largest entropy, depends on --l_mags).
    recorded = [np.asarray(layer, np.float64) for layer in summary.get("entropy", [])]
    entropy_top = max([float(np.nanmax(h)) for h in recorded if np.isfinite(h).any()] + [1.0])
    entropy_top *= 1.05
    for k, ax in enumerate(axes.flat):
        if k >= layers:
            ax.axis("off")
            continue
        steps = np.asarray(summary["steps"][k])
        probs = np.asarray(summary["probs"][k], np.float64).reshape(len(steps), len(ops))
        for j in leading_ops(probs, ops):
            ax.plot(steps, probs[:, j], color=colours[ops[j]], lw=1.4,
                    label=f"{ops[j]} {probs[-1, j]:.2f}")
        entropy = summary.get("entropy", [[]] * layers)[k]
        if len(entropy) == len(steps) and len(steps):
            twin = ax.twinx()
            twin.plot(steps, entropy, color="black", lw=0.8, ls="--")
            twin.set_ylim(0, entropy_top)
            twin.tick_params(labelsize=7)
            if k % cols == cols - 1 or k == layers - 1:
                twin.set_ylabel("entropy (nats, dashed)", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(f"layer {k + 1}: " + (f"{steps[-1]} steps" if len(steps) else
                                            "not searched yet"), fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(steps):
            ax.legend(fontsize=7, loc="upper right", framealpha=0.8)
    fig.suptitle("Search trace: probability of the leading operations per layer (summed over "
                 f"levels)\n{title}", fontsize=10)
    fig.supxlabel("search step", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    save_figure(fig, path)
    plt.close(fig)


def check_trace(summary) -> dict:
    """``summary`` if it has the shape ``SearchTrace.op_summary`` gives it, else ValueError
    (one line): it comes from files a user may have edited. Probabilities may be NaN (the
    steps of a search resumed from a checkpoint that did not keep them), never infinite."""
    if not isinstance(summary, dict):
        raise ValueError("not a search trace (a mapping of ops, steps and probs)")
    ops, steps, probs = (summary.get(key) for key in ("ops", "steps", "probs"))
    if not (isinstance(ops, list) and ops and all(isinstance(op, str) for op in ops)):
        raise ValueError("'ops' is not a list of op names")
    if not (isinstance(steps, list) and isinstance(probs, list) and len(steps) == len(probs)):
        raise ValueError("'steps' and 'probs' are not lists of one entry per layer")
    if len(steps) > MAX_LAYERS:
        raise ValueError(f"{len(steps)} layers; at most {MAX_LAYERS} are drawn")
    entropy = summary.get("entropy", [[]] * len(steps))
    if not (isinstance(entropy, list) and len(entropy) == len(steps)):
        raise ValueError("'entropy' is not a list of one entry per layer")
    for k in range(len(steps)):
        try:
            s, p, h = (np.asarray(v[k], np.float64) for v in (steps, probs, entropy))
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"layer {k + 1}: steps, probs or entropy are not numbers") from None
        if s.ndim != 1 or len(s) > MAX_TRACE_POINTS or p.shape != (len(s), len(ops)) or \
                h.ndim != 1 or not np.all(np.isfinite(s)) or np.any(np.isinf(p)) or \
                np.any(np.isinf(h)):
            raise ValueError(f"layer {k + 1}: {s.shape} steps with probs of shape {p.shape}; "
                             f"expected at most {MAX_TRACE_POINTS} finite steps, probs of "
                             f"shape (steps, {len(ops)})")
    return summary


def trace_of(policy: Policy) -> dict | None:
    """The search trace a policy's meta holds (``op_prob_trace``, checked by check_trace), or
    None when it has none."""
    summary = policy.meta.get("op_prob_trace")
    if summary is None:
        return None
    return summary if check_trace(summary)["steps"] else None


def draw_policy(policy: Policy | str, out_dir: str, images: list[Image.Image] | None = None,
                n_samples: int = 7, seed: int = 0) -> list[str]:
    """Draw every figure of ``policy`` (a Policy, a path or a shipped name) into ``out_dir``;
    returns the paths written."""
    if not isinstance(policy, Policy):
        policy = load_policy(policy)
    os.makedirs(out_dir, exist_ok=True)
    written = [os.path.join(out_dir, "operations.png")]
    plot_operations(policy, written[0])
    summary = trace_of(policy)
    if summary is not None:
        written.append(os.path.join(out_dir, "search_trace.png"))
        plot_trace(summary, written[-1], _title(policy))
    for layer in range(policy.n_layers):
        path = os.path.join(out_dir, f"magnitudes_layer{layer + 1}.png")
        plot_magnitudes(policy, layer, path)
        written.append(path)
    images = images if images is not None else builtin_images(8, seed)
    path = os.path.join(out_dir, "examples.png")
    plot_examples(policy, images, path, n_samples, seed)
    written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=command_name("python -m augmentation.visualize"),
        description="Draw a policy: op probabilities per layer, level distributions, examples.")
    parser.add_argument("policy", help="policy YAML path, shipped name (cifar_1, imagenet_2, ...) "
                        "or a search's results folder")
    parser.add_argument("--out", required=True, help="output folder for the PNGs")
    parser.add_argument("--images", default=None,
                        help="data set for the examples (npz:DIR, folder:DIR, cifar10, ...); "
                             "default: built-in synthetic shapes")
    parser.add_argument("--dataroot", default="./data", help="root for cifar10/cifar100/imagenet")
    parser.add_argument("--n_images", type=int, default=8, help="rows of the example grid")
    parser.add_argument("--n_samples", type=int, default=7,
                        help="policy draws per image (columns after the original)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the example images and the policy draws")
    args = parser.parse_args(argv)

    def fail(msg: str) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return 2

    for name, (low, high) in LIMITS.items():
        if not low <= getattr(args, name) <= high:
            return fail(f"--{name} must be from {low} to {high}, got {getattr(args, name)}")
    try:
        check_writable(args.out, folder=True)
    except Unwritable as exc:
        return fail(f"--out: {exc}")
    source = args.policy
    if os.path.isdir(source):  # a search's results folder
        if not os.path.isfile(os.path.join(source, "policy.yaml")):
            return _draw_running_search(source, args.out, fail)
        source = os.path.join(source, "policy.yaml")
    try:
        policy = load_policy(source)
    except PolicyError as exc:
        return fail(str(exc))
    if policy.n_layers > MAX_LAYERS:
        return fail(f"{source}: {policy.n_layers} layers; at most {MAX_LAYERS} are drawn")
    try:
        trace_of(policy)
    except ValueError as exc:
        return fail(f"{source}: meta.op_prob_trace: {exc}")
    try:
        if args.images:
            images = dataset_images(args.images, args.dataroot, args.n_images, args.seed)
        else:
            images = builtin_images(args.n_images, args.seed)
    except ValueError as exc:  # DatasetError is a ValueError
        return fail(str(exc))
    try:
        written = draw_policy(policy, args.out, images, args.n_samples, args.seed)
    except OSError as exc:  # the disk filled up: the pictures written so far are whole
        return fail(f"cannot write in {args.out}: {exc.strerror or exc}")
    for path in written:
        print(path)
    return 0


def _draw_running_search(folder: str, out_dir: str, fail) -> int:
    """search_trace.png of a search that has not written its policy yet (its trace.json)."""
    import json

    path = os.path.join(folder, "trace.json")
    try:
        if os.path.getsize(path) > MAX_FILE_BYTES:
            raise ValueError(f"larger than a search trace can be ({MAX_FILE_BYTES} bytes)")
        with open(path, encoding="utf-8") as f:
            summary = check_trace(json.load(f))
    except FileNotFoundError:
        return fail(f"{folder!r} holds neither a policy.yaml nor a search's trace.json")
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: deep nesting
        return fail(f"cannot read {path!r}: {str(exc).splitlines()[0] if str(exc) else exc!r}")
    out = os.path.join(out_dir, "search_trace.png")
    try:
        os.makedirs(out_dir, exist_ok=True)
        plot_trace(summary, out, f"running search in {os.path.basename(os.path.abspath(folder))}")
    except OSError as exc:  # the disk filled up
        return fail(f"cannot write in {out_dir}: {exc.strerror or exc}")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

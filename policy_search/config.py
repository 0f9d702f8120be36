"""Command-line flags, presets and input checks of the search (SPEC §0, §2).

Every flag of the released README commands is accepted verbatim with the released default, so
those commands run unchanged. New flags are documented in ``--help``. Presets fill in values
that the user did not pass explicitly. This module imports neither TensorFlow nor the data, so
bad flags are reported in a fraction of a second and before anything is written.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

from augmentation.cli import command_name
from networks.names import is_search_model
from policy_search import checks

DATASET_HELP = "cifar10, cifar100, imagenet, npz:DIR or folder:DIR"

# SPEC §0: the README's CIFAR command. `use_model` is filled in per dataset (below).
PAPER = dict(n_policies=6, search_bno=1024, pretrain_lr=0.1, seed=1, batch_size=128,
             test_batch_size=512, policy_lr=0.025, l_mags=13, use_pool=True, pretrain_size=5000,
             nb_epochs=45, EXP_G=16, EXP_gT_factor=4, train_same_labels=16)
# SPEC §2 "Cost": the author's advice, halving five flags (about 1 hour on 8 GPUs).
FAST = dict(PAPER, search_bno=512, test_batch_size=256, EXP_G=8, EXP_gT_factor=2,
            train_same_labels=8)
# A laptop search that leaves the Identity start (docs/reproduction.md "The cpu preset"): the
# paper's policy_lr and 64 validation images per point, WRN_10_1, 2 points and EXP_G 4 (the
# long CIFAR-10 search's step: about 0.8 s at stage 1 and 1.5 s at stage k on 2 cores), 2
# layers of 256 steps. The logits start 8 apart and Adam moves one by about policy_lr per step,
# so a layer needs 150-250 steps to leave Identity (measured on CIFAR-10: Identity below 0.5
# after 100-200 steps); with EXP_G 2 layer 2 was still 89 % Identity after 200 steps. About
# 10 minutes of search plus the pretraining (30 epochs of at most 5,000 images). l_mags stays
# 13 (139 candidates) unless given.
CPU = dict(n_policies=2, search_bno=256, pretrain_lr=0.1, batch_size=64, test_batch_size=256,
           val_batch_size=256, policy_lr=0.025, use_pool=False, pretrain_size=5000, nb_epochs=30,
           EXP_G=4, EXP_gT_factor=1, train_same_labels=2, chunk_size=128, n_val_per_point=64,
           checkpoint_every=16)
PRESETS = {"paper": PAPER, "fast": FAST, "cpu": CPU}
PRESET_MODELS = {"paper": ("WRN_40_2", "resnet50"), "fast": ("WRN_40_2", "resnet50"),
                 "cpu": ("WRN_10_1", "resnet50")}

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"  # torch.save's format
WEIGHTS_SUFFIX = {"tf": ".weights.h5", "torch": ".pt"}  # of backend.TFBackend, TorchBackend


class UsageError(ValueError):
    """Bad input: reported as one line naming the flag, exit code 2, nothing written."""

    def __init__(self, flag: str, message: str):
        super().__init__(f"{flag}: {message}")
        self.flag = flag


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of argparse's usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """The flag parser. With ``suppress_defaults`` the namespace holds only the flags given on
    the command line (used to let explicit flags override a preset)."""
    kw = {"argument_default": argparse.SUPPRESS} if suppress_defaults else {}
    p = _Parser(prog=command_name("DeepAA_search.py"), description="Deep AutoAugment policy search "
                "(gradient matching, layer by layer). Writes a policy YAML.", **kw)

    r = p.add_argument_group("released flags (SPEC §0)")
    r.add_argument("--use_model", **_d(suppress_defaults, "WRN_28_10"), help="search model: "
                   "WRN_<depth>_<width> (e.g. WRN_40_2, WRN_28_10, WRN_10_1) or resnet50")
    r.add_argument("--dataset", **_d(suppress_defaults, "cifar10"), help=DATASET_HELP)
    r.add_argument("--n_classes", type=int, **_d(suppress_defaults, 100),
                   help="number of classes; must match the data")
    r.add_argument("--nb_epochs", type=int, **_d(suppress_defaults, 45),
                   help="pretraining epochs")
    r.add_argument("--pretrain_size", type=int, **_d(suppress_defaults, 5000),
                   help="images of the pretraining split (capped at half of the images not "
                   "held out for validation)")
    r.add_argument("--l_mags", type=int, **_d(suppress_defaults, 13),
                   help="magnitude levels per op, odd and >= 3 (13 gives 139 candidates)")
    r.add_argument("--policy_lr", type=float, **_d(suppress_defaults, 0.025),
                   help="Adam learning rate of each layer's logits")
    r.add_argument("--pretrain_lr", type=float, **_d(suppress_defaults, 0.1),
                   help="initial pretraining learning rate (cosine to 0)")
    r.add_argument("--batch_size", type=int, **_d(suppress_defaults, 128),
                   help="pretraining batch size (last partial batch dropped)")
    r.add_argument("--val_batch_size", type=int, **_d(suppress_defaults, 1024),
                   help="batch size when the pretrained model is scored on the validation split")
    r.add_argument("--test_batch_size", type=int, **_d(suppress_defaults, 512),
                   help="batch size when the pretrained model is scored on the test split")
    r.add_argument("--clip_policy_gradient_norm", type=float, **_d(suppress_defaults, 5.0),
                   help="parsed for compatibility; unused, as in the released code (SPEC §2)")
    r.add_argument("--debug", action="store_true", **_d(suppress_defaults, False),
                   help="log every step's cos similarity, entropy and timings at debug level")
    r.add_argument("--seed", type=int, **_d(suppress_defaults, 1), help="random seed")
    r.add_argument("--policy_bn_training", action="store_true", **_d(suppress_defaults, False),
                   help="run batch norm in training mode during the search (default: frozen)")
    r.add_argument("--n_policies", type=int, **_d(suppress_defaults, 4),
                   help="policy layers to search")
    r.add_argument("--search_bno", type=int, **_d(suppress_defaults, 256),
                   help="search steps per layer")
    r.add_argument("--repeat_random_ops", action="store_true", **_d(suppress_defaults, False),
                   help="apply each random candidate (flip, cutout, crop) N_repeat_random times "
                   "in the dense set and average its importance")
    r.add_argument("--N_repeat_random", type=int, **_d(suppress_defaults, 1),
                   help="copies of each random candidate with --repeat_random_ops")
    r.add_argument("--use_pool", action="store_true", **_d(suppress_defaults, False),
                   help="augment in a process pool (one process per CPU core); with "
                        "--aug_backend tensor only images the batched path cannot take "
                        "(ImageNet sizes) go to the pool")
    r.add_argument("--chunk_size", type=int, **_d(suppress_defaults, None),
                   help="images per gradient/JVP chunk (default: 256 for WRN-40-2, 128 for "
                   "WRN-28-10, 16 for ResNet-50); the released flag of this name set the "
                   "augmentation pool's chunk size, which is automatic here")
    r.add_argument("--EXP_gT_factor", type=int, **_d(suppress_defaults, 4),
                   help="stage k: g_tr averages D * EXP_gT_factor sampled copies of each point")
    r.add_argument("--EXP_G", type=int, **_d(suppress_defaults, 16),
                   help="stage k: sampled copies per point, each augmented by every candidate")
    r.add_argument("--train_same_labels", type=int, **_d(suppress_defaults, 16),
                   help="search points per step (a multiple of the number of replicas)")
    for dummy, kind, val in (("--mode", str, "client"), ("--port", int, 38277)):
        r.add_argument(dummy, type=kind, **_d(suppress_defaults, val), help=argparse.SUPPRESS)

    n = p.add_argument_group("new flags")
    n.add_argument("--preset", choices=sorted(PRESETS), **_d(suppress_defaults, None),
                   help="paper: SPEC §0's command; fast: its halved variant; cpu: a laptop search "
                   "(WRN_10_1, 2 layers x 256 steps at the paper's policy_lr, 2 points, EXP_G "
                   "4; about 10 minutes of search on 2 cores plus 30 epochs of pretraining on "
                   "at most 5,000 images; it leaves the Identity start). Flags given "
                   "explicitly override the preset")
    n.add_argument("--dataroot", **_d(suppress_defaults, "./data"),
                   help="dataset root (cifar downloads here, imagenet is read from here)")
    n.add_argument("--results_dir", **_d(suppress_defaults, None),
                   help="folder for weights, checkpoint, log, tensorboard and the policy "
                   "(default: results/search_<dataset>_<model>_seed<seed>)")
    n.add_argument("--out", **_d(suppress_defaults, None),
                   help="policy YAML to write (default: <results_dir>/policy.yaml)")
    n.add_argument("--pretrained", **_d(suppress_defaults, None),
                   help="restore the search model from this .weights.h5 instead of pretraining "
                   "(imagenet default: pretrained_imagenet/imagenet_resnet50.weights.h5)")
    n.add_argument("--pretrain_only", action="store_true", **_d(suppress_defaults, False),
                   help="pretrain, save the weights in the results folder and stop")
    n.add_argument("--resume", action="store_true", **_d(suppress_defaults, False),
                   help="continue from <results_dir>/checkpoint.npz")
    n.add_argument("--checkpoint_every", type=int, **_d(suppress_defaults, 50),
                   help="write a checkpoint every N search steps (and on Ctrl-C)")
    n.add_argument("--export_npz", action="store_true", **_d(suppress_defaults, False),
                   help="also write the policy in the released npz format next to the YAML")
    n.add_argument("--cpu_replicas", type=int, **_d(suppress_defaults, 0),
                   help="without GPUs, spread the points over N logical CPU devices")
    n.add_argument("--aug_backend", choices=("pil", "tensor"), **_d(suppress_defaults, "tensor"),
                   help="tensor (default): the batched path (C kernels on a CPU, bit-exact with "
                        "Pillow for the deterministic ops, about 4x faster data); pil: the "
                        "Pillow ops one image at a time (the reference)")
    n.add_argument("--backend", choices=("tf", "torch"), **_d(suppress_defaults, "tf"),
                   help="tf (default): the TensorFlow search, the reference; torch: the same "
                        "search in PyTorch (one GPU, the CPU, or torchrun processes), which "
                        "needs no TensorFlow")
    n.add_argument("--precision", choices=("fp32", "bf16"), **_d(suppress_defaults, "fp32"),
                   help="fp32 (default, the paper's): the search passes in float32; bf16: the "
                        "search model computes in bfloat16 (--backend tf: Keras "
                        "mixed_bfloat16 with a float32 classifier; --backend torch: bfloat16 "
                        "autocast); weights, gradients and inner products stay float32/float64 "
                        "and pretraining stays float32. Speed and agreement with fp32: "
                        "benchmarks/README.md")
    n.add_argument("--compile", action="store_true", **_d(suppress_defaults, False),
                   help="--backend torch: compile the gradient and JVP passes (torch.compile)")
    n.add_argument("--n_val_per_point", type=int, **_d(suppress_defaults, 64),
                   help="validation images per search point (64 in SPEC §2)")
    n.add_argument("--stop_after_steps", type=int, **_d(suppress_defaults, 0),
                   help=argparse.SUPPRESS)  # testing: checkpoint and stop after N steps
    return p


def _d(suppress: bool, value) -> dict:
    return {} if suppress else {"default": value}


def parse_args(argv=None) -> argparse.Namespace:
    """Parse flags, then fill in the preset's values for the flags not given explicitly."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    explicit = set(vars(build_parser(suppress_defaults=True).parse_args(argv)))
    if args.preset:
        for key, value in PRESETS[args.preset].items():
            if key not in explicit:
                setattr(args, key, value)
        if "use_model" not in explicit:
            cifar_model, imagenet_model = PRESET_MODELS[args.preset]
            args.use_model = imagenet_model if args.dataset == "imagenet" else cifar_model
    args.explicit = sorted(explicit)
    if args.results_dir is None:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(
            args.dataset.split(":", 1)[-1].rstrip("/")) or args.dataset)
        args.results_dir = os.path.join("results", f"search_{slug}_{args.use_model}_seed{args.seed}")
    if args.out is None:
        args.out = os.path.join(args.results_dir, "policy.yaml")
    if args.pretrained is None and args.dataset == "imagenet" and not args.pretrain_only \
            and not args.resume:  # a resumed search takes the weights its checkpoint names
        args.pretrained = os.path.join("pretrained_imagenet", "imagenet_resnet50"
                                       + WEIGHTS_SUFFIX[args.backend])
    return args


def validate(args) -> None:
    """Checks that need neither the data nor TensorFlow; raises UsageError."""
    if not is_search_model(args.use_model):
        raise UsageError("--use_model", f"unknown model {args.use_model!r}; expected "
                         "WRN_<depth>_<width> with depth = 6n + 4 (e.g. WRN_40_2) or resnet50")
    ds = args.dataset
    if not (ds in ("cifar10", "cifar100", "imagenet")
            or (ds.startswith(("npz:", "folder:")) and ds.split(":", 1)[1])):
        raise UsageError("--dataset", f"unknown dataset {ds!r}; expected {DATASET_HELP}")
    checks.numbers(args)
    checks.environment(backend=args.backend)
    if args.cpu_replicas > 1 and args.train_same_labels % args.cpu_replicas:
        raise UsageError("--train_same_labels", f"{args.train_same_labels} points cannot be "
                         f"split over {args.cpu_replicas} replicas (--cpu_replicas)")
    if args.backend == "tf" and args.compile:
        raise UsageError("--compile", "needs --backend torch")
    if args.backend == "torch" and args.cpu_replicas > 1:
        raise UsageError("--cpu_replicas", "is for --backend tf; with --backend torch start "
                         "several processes with torchrun --nproc_per_node N")
    if args.pretrained is not None:
        check_weights_file(args.pretrained, args.backend)
    if not args.out.endswith((".yaml", ".yml")):
        raise UsageError("--out", f"the policy file must end in .yaml, got {args.out!r}")
    checks.outputs(args)
    if args.resume and not any(os.path.isfile(os.path.join(args.results_dir, name))
                               for name in ("checkpoint.npz", "pretrain_checkpoint.npz")):
        raise UsageError("--resume", f"no checkpoint.npz or pretrain_checkpoint.npz in "
                                     f"{args.results_dir!r}")


def check_weights_file(path: str, backend: str = "tf") -> None:
    """A readable weights file of ``backend``: HDF5 (Keras' ``.weights.h5``) for tf, a
    ``torch.save`` file for torch; raises UsageError naming --pretrained."""
    if os.path.exists(path) and not os.path.isfile(path):  # a folder, a pipe, a device
        raise UsageError("--pretrained", f"{path!r} is not a regular file")
    try:
        with open(path, "rb") as f:
            head = f.read(len(HDF5_SIGNATURE))
    except OSError as err:
        hint = " (see pretrained_imagenet/README.md)" if "pretrained_imagenet" in path else ""
        raise UsageError("--pretrained", f"cannot read {path!r}: "
                         f"{err.strerror or err}{hint}") from None
    if backend == "torch":
        if head.startswith(ZIP_SIGNATURE):
            return
        hint = (": convert Keras weights with python -m networks.convert_weights"
                if head == HDF5_SIGNATURE else "")
        raise UsageError("--pretrained", f"{path!r} is not a PyTorch weights file{hint}")
    if head != HDF5_SIGNATURE:
        raise UsageError("--pretrained", f"{path!r} is not a Keras .weights.h5 file")

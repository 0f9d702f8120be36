"""The whole pipeline in one command (``make demo`` runs ``python -m demo``).

1. data: the embedded synthetic shapes (:mod:`deepaa_data.synthetic`, generated in seconds, no
   download), or CIFAR-10 with ``--dataset cifar10`` (torchvision layout under ``--dataroot``,
   downloaded when missing and online, or ``--dataroot npz:DIR``);
2. search: ``DeepAA_search.py --preset cpu`` in its own process (TensorFlow), writing a policy;
3. training: a small WRN with the searched policy and with the baselines ``none`` and
   ``default``, each over a few seeds, one trainer process (PyTorch) per run;
4. a table of final test top-1 per augmentation, mean and seed spread (printed and written to
   ``OUT/results.md``);
5. pictures of the searched policy (``OUT/pictures/``, :mod:`augmentation.visualize`).

The budget (about 16 minutes on 2 CPU cores) is about 9 minutes of search and 7 of training.
The synthetic training split has 3,000 images: the search uses all of them (600 validation,
1,200 pretraining, 1,200 search, SPEC §2), each trainer run a seeded class-balanced subset of
1,000 (``train_size``), so training costs what it did with 1,000 images. The search is the bare
``--preset cpu`` (its flags and what it finds on CIFAR-10: docs/reproduction.md "The cpu
preset"): 30 pretraining epochs on the 1,200 images, then 2 layers of 256 steps at the paper's
policy_lr. On the synthetic data its first layer moved about 40 % of its probability from
Identity (AutoContrast, Rotate, the shears and translations) and its second stayed at Identity
(docs/reproduction.md "The demo").

TensorFlow and PyTorch never share a process here: the search and every training run are
subprocesses; this process imports neither. ``--smoke`` shrinks everything to seconds (tests).
Every stage skips work whose output exists (rerunning after an interruption continues): the
search and the runs of each dataset and profile live in their own folders
(``OUT/search_<dataset>``, ``OUT/runs_<dataset>``, ``_smoke`` for the smoke profile), and a
run's result is reused only if it was trained with the config the demo would use now. Pass
``--fresh`` to start over.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import yaml

ROOT = os.path.dirname(os.path.abspath(__file__))
AUGS = ("DeepAA", "default", "none")

# name -> sizes. "full" takes about 16 min on 2 cores; "smoke" runs in seconds. n_train is what the
# search sees, train_size what each trainer run sees (see the module docstring). A small training
# set trained long enough to overfit without augmentation (640 steps of 64 images): with fewer
# steps an under-trained model cannot profit from augmentation and the baselines look harmful.
PROFILES = {
    "full": dict(n_train=3000, n_test=1000, train_size=1000, model="wresnet10_1", epochs=40,
                 batch=64, seeds=2, num_workers=None,
                 search=["--preset", "cpu"]),
    "smoke": dict(n_train=60, n_test=40, train_size=None, model="wresnet10_1", epochs=1,
                  batch=16, seeds=1, num_workers=0,
                  search=["--preset", "cpu", "--n_policies", "1", "--l_mags", "3",
                          "--search_bno", "2", "--nb_epochs", "1", "--batch_size", "16",
                          "--pretrain_size", "20", "--n_val_per_point", "4",
                          "--policy_lr", "0.2"]),
}
# CIFAR-10 in the demo: a class-balanced 2,000-image subset (twice the synthetic training set,
# so about twice the training time; 40 epochs keep the unaugmented model overfitting).
CIFAR_TRAIN_SIZE = 2000


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="synthetic", choices=("synthetic", "cifar10"))
    p.add_argument("--dataroot", default="./data",
                   help="for --dataset cifar10: torchvision's layout here, or npz:DIR")
    p.add_argument("--out", default="demo_out", help="folder for everything the demo writes")
    p.add_argument("--seeds", type=int, default=None, help="training seeds per augmentation")
    p.add_argument("--epochs", type=int, default=None, help="training epochs per run")
    p.add_argument("--policy", default=None,
                   help="skip the search and use this policy (path or shipped name)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: a check that runs in seconds")
    p.add_argument("--fresh", action="store_true", help="delete OUT first and start over")
    args = p.parse_args(argv)
    if args.seeds is not None and args.seeds < 1:
        p.error("--seeds must be >= 1")
    if args.epochs is not None and args.epochs < 1:
        p.error("--epochs must be >= 1")
    return args


def _env() -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _stage(n: int, total: int, text: str) -> None:
    print(f"\n=== [{n}/{total}] {text}", flush=True)


def prepare_data(args, prof, out) -> tuple[str, str]:
    """Returns (dataset spec, dataroot) for the search and the trainer."""
    if args.dataset == "cifar10":
        if args.dataroot.startswith("npz:"):  # absolute: the search and trainers run in OUT
            return "npz:" + os.path.abspath(args.dataroot[4:]), os.path.abspath(".")
        return "cifar10", os.path.abspath(args.dataroot)
    from deepaa_data.synthetic import make_synthetic

    data = os.path.join(out, "data")
    stamp = os.path.join(data, "params.json")
    want = {"n_train": prof["n_train"], "n_test": prof["n_test"], "seed": 0}
    try:
        with open(stamp) as f:
            have = json.load(f)
    except (OSError, ValueError):
        have = None
    if have != want:
        t0 = time.time()
        make_synthetic(data, prof["n_train"], prof["n_test"], seed=0)
        with open(stamp, "w") as f:
            json.dump(want, f)
        print(f"synthetic shapes: {prof['n_train']} training / {prof['n_test']} test images "
              f"in {time.time() - t0:.1f}s -> {data}")
    else:
        print(f"synthetic shapes already in {data}")
    return "npz:" + data, out


def _work(args, out: str, stage: str) -> str:
    """OUT/<stage>_<dataset>[_smoke]: each dataset and profile keeps its own search and runs, so
    a rerun with other ones never picks up (or resumes) the wrong work."""
    return os.path.join(out, f"{stage}_{args.dataset}{'_smoke' if args.smoke else ''}")


def run_search(args, prof, spec, dataroot, out) -> str:
    folder = _work(args, out, "search")
    policy = os.path.join(folder, "policy.yaml")
    if os.path.exists(policy):
        print(f"search already done: {policy}")
        return policy
    cmd = [sys.executable, os.path.join(ROOT, "DeepAA_search.py"), "--dataset", spec,
           "--dataroot", dataroot, "--n_classes", "10", "--use_model", "WRN_10_1",
           *prof["search"], "--seed", "1", "--out", policy, "--results_dir", folder]
    if any(os.path.exists(os.path.join(folder, name))
           for name in ("checkpoint.npz", "pretrain_checkpoint.npz")):
        cmd.append("--resume")  # an interrupted demo search continues where it stopped
    print(" ".join(cmd[1:]), flush=True)
    rc = subprocess.call(cmd, cwd=out, env=_env())
    if rc != 0 or not os.path.exists(policy):
        raise SystemExit(f"error: the search failed (exit {rc}); see {folder}/")
    return policy


def train_config(aug, prof, spec, policy, epochs) -> dict:
    cfg = {"model": {"type": prof["model"]}, "dataset": spec, "aug": aug, "cutout": -1,
           "batch": prof["batch"], "gpus": 1, "epoch": epochs, "lr": 0.1,
           "lr_schedule": {"type": "cosine",
                           "warmup": {"multiplier": 1, "epoch": min(1, epochs - 1)}},
           "optimizer": {"type": "sgd", "nesterov": True, "decay": 0.0005},
           "test_interval": epochs, "save_model": True}
    if aug == "DeepAA":
        # A path is made absolute (the trainer runs in OUT); a shipped name stays a name.
        cfg["deepaa"] = {"EXP": os.path.abspath(policy) if os.path.exists(policy) else policy}
    if prof["train_size"]:
        cfg["train_size"] = prof["train_size"]
    if prof["num_workers"] is not None:
        cfg["num_workers"] = prof["num_workers"]
    return cfg


def train_all(args, prof, spec, dataroot, policy, out) -> dict[str, list[float]]:
    seeds = args.seeds or prof["seeds"]
    epochs = args.epochs or prof["epochs"]
    jobs = [(aug, s) for s in range(1, seeds + 1) for aug in AUGS]
    from DeepAA_evaluate.reproduce import expected_config
    from DeepAA_evaluate.results_table import config_changes, read_result

    work = _work(args, out, "runs")
    os.makedirs(os.path.join(work, "confs"), exist_ok=True)
    results: dict[str, list[float]] = {aug: [] for aug in AUGS}
    for i, (aug, seed) in enumerate(jobs, 1):
        conf = os.path.join(work, "confs", f"demo_{aug}.yaml")
        with open(conf, "w") as f:
            yaml.safe_dump(train_config(aug, prof, spec, policy, epochs), f, sort_keys=False)
        save = os.path.join(work, aug, f"seed{seed}.pth")
        result_file = save[:-4] + ".json"
        done = read_result(result_file)  # reused only if trained with this very config
        if done is None or config_changes(done.get("config"), expected_config(conf, seed, [])):
            print(f"--- run {i}/{len(jobs)}: aug={aug} seed={seed} "
                  f"({prof['model']}, {epochs} epochs)", flush=True)
            cmd = [sys.executable, "-m", "DeepAA_evaluate.train", "-c", conf, "--dataroot",
                   dataroot, "--save", save, "--tag", f"demo_{aug}_seed{seed}",
                   "--seed", str(seed), "--overwrite"]
            rc = subprocess.call(cmd, cwd=out, env=_env())
            if rc != 0:
                raise SystemExit(f"error: training aug={aug} seed={seed} failed (exit {rc})")
        with open(result_file) as f:
            results[aug].append(100.0 * float(json.load(f)["top1_test"]))
    return results


def table(results: dict[str, list[float]], title: str) -> str:
    """Markdown: mean top-1 and the seed spread (half the range) per augmentation."""
    names = {"DeepAA": "DeepAA (searched policy)", "default": "default (crop, flip, cutout)",
             "none": "none"}
    lines = [f"### {title}", "",
             "| augmentation | seeds | test top-1 % (mean ± half range) | per seed |",
             "|---|---|---|---|"]
    for aug, vals in results.items():
        if not vals:
            continue
        mean = sum(vals) / len(vals)
        spread = (max(vals) - min(vals)) / 2
        lines.append(f"| {names.get(aug, aug)} | {len(vals)} | {mean:.1f} ± {spread:.1f} | "
                     f"{', '.join(f'{v:.1f}' for v in vals)} |")
    return "\n".join(lines) + "\n"


def draw(policy, spec, dataroot, out) -> list[str]:
    from augmentation.visualize import dataset_images, draw_policy

    images = dataset_images(spec, dataroot, 8, seed=0)
    return draw_policy(policy, os.path.join(out, "pictures"), images)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    prof = dict(PROFILES["smoke" if args.smoke else "full"])
    if args.dataset == "cifar10" and not args.smoke:
        prof["train_size"] = CIFAR_TRAIN_SIZE
    out = os.path.abspath(args.out)
    if args.fresh and os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    t_start, times = time.time(), {}
    total = 5

    _stage(1, total, f"data ({args.dataset})")
    spec, dataroot = prepare_data(args, prof, out)
    times["data"] = time.time() - t_start

    t0 = time.time()
    if args.policy:
        _stage(2, total, f"search skipped: using policy {args.policy}")
        policy = args.policy
    else:
        _stage(2, total, "policy search (TensorFlow, --preset cpu)")
        policy = run_search(args, prof, spec, dataroot, out)
    times["search"] = time.time() - t0

    t0 = time.time()
    _stage(3, total, f"training {prof['model']} with {', '.join(AUGS)} (PyTorch)")
    results = train_all(args, prof, spec, dataroot, policy, out)
    times["training"] = time.time() - t0

    _stage(4, total, "results")
    title = (f"{'synthetic shapes' if args.dataset == 'synthetic' else 'CIFAR-10'}: "
             f"{prof['model']}, {args.epochs or prof['epochs']} epochs")
    text = table(results, title)
    print(text)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"top1_test": results, "policy": str(policy), "times_s": times}, f, indent=1)

    t0 = time.time()
    _stage(5, total, "policy pictures")
    for path in draw(policy, spec, dataroot, out):
        print(path)
    times["pictures"] = time.time() - t0
    print("\ntime: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items())
          + f"; total {time.time() - t_start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Deep AutoAugment policy search: ``python DeepAA_search.py --help``.

A thin entry point: flags, presets and checks live in ``policy_search.config``, the run in
``policy_search.run``. Bad input ends with one line on stderr and exit code 2, before anything
is written; an image that does not decode, a full disk or a Ctrl-C found later end with one
line too (exit code 2, or 130 for Ctrl-C), the last checkpoint kept for ``--resume``. Only the
standard library is imported at module level, because the augmentation pool's worker
processes re-import this file.
"""
from __future__ import annotations

import os
import signal
import sys


def main(argv=None) -> int:
    from deepaa_data import DatasetError
    from policy_search import config

    args = config.parse_args(argv)
    try:
        config.validate(args)
        if args.aug_backend == "tensor" or args.backend == "torch":
            # torch (and its compiler stack) must be loaded before TensorFlow in one process.
            try:
                import torch  # noqa: F401
                import torch._dynamo  # noqa: F401
            except ImportError:
                flag, need = (("--backend", "torch") if args.backend == "torch" else
                              ("--aug_backend", "tensor (the default)"))
                raise config.UsageError(flag, f"{need} needs PyTorch; install it"
                                        + (" or pass --aug_backend pil"
                                           if flag == "--aug_backend" else "")) from None
        if args.backend == "tf":
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # Ctrl-C checkpoints the search, also when started with SIGINT ignored (a background job).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from policy_search import run

        return run.main(args)
    except config.UsageError as err:
        return _fail(str(err))
    except DatasetError as err:  # an image that does not decode, found when it is used
        return _fail(f"--dataset: {err}")
    except OSError as err:  # a full disk or a failing one: the last checkpoint stays
        return _fail(f"cannot read or write {err.filename or 'a file'}: {err.strerror or err}"
                     if err.filename else f"input/output error: {err}")
    except KeyboardInterrupt:  # the search loop checkpoints and returns 130 itself
        progress = [name for name in ("checkpoint.npz", "pretrain_checkpoint.npz")
                    if os.path.exists(os.path.join(args.results_dir, name))]
        sys.stderr.write("DeepAA_search.py: interrupted" + (
            f"; {progress[0]} is kept: continue with --resume\n" if progress else "\n"))
        return 130


def _fail(message: str) -> int:
    sys.stderr.write(f"DeepAA_search.py: error: {' '.join(message.split())}\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())

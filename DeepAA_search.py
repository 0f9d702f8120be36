"""Deep AutoAugment policy search: ``python DeepAA_search.py --help``.

A thin entry point: flags, presets and checks live in ``policy_search.config``, the run in
``policy_search.run``. Bad input ends with one line on stderr and exit code 2, before anything
is written. Only the standard library is imported at module level, because the augmentation
pool's worker processes re-import this file.
"""
from __future__ import annotations

import os
import signal
import sys


def main(argv=None) -> int:
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
        sys.stderr.write(f"DeepAA_search.py: error: {err}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())

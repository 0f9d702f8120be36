"""What a command calls itself in its ``--help`` and its one-line errors.

Each command can be started three ways: as an installed console script (``deepaa-train``),
as a module (``python -m DeepAA_evaluate.train``) or, for the search, as a script
(``python DeepAA_search.py``). The usage line should show the form the user typed, so that
it can be copied back; argparse's own guess (``sys.argv[0]``) gives ``__main__.py`` for the
module form.
"""
from __future__ import annotations

import os
import sys

CONSOLE_PREFIX = "deepaa-"


def command_name(started_as: str) -> str:
    """The console script's name when the process runs one (``deepaa-search``, also with
    Windows' ``.exe``), else ``started_as`` (``python -m augmentation.visualize``)."""
    argv0 = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if argv0.lower().endswith(".exe"):
        argv0 = argv0[:-4]
    return argv0 if argv0.startswith(CONSOLE_PREFIX) else started_as

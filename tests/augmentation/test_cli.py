"""The name a command shows in its usage line: the form the user started it in."""
import subprocess
import sys
from pathlib import Path

from augmentation.cli import command_name

ROOT = Path(__file__).resolve().parents[2]


def test_console_script_name_wins(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/somewhere/bin/deepaa-train", "-c", "x.yaml"])
    assert command_name("python -m DeepAA_evaluate.train") == "deepaa-train"
    monkeypatch.setattr(sys, "argv", ["/env/Scripts/deepaa-search.exe"])  # Windows' launcher
    assert command_name("DeepAA_search.py") == "deepaa-search"


def test_module_and_script_forms_keep_their_name(monkeypatch):
    for argv0 in ("/repo/augmentation/visualize.py", "-m", "", "/usr/bin/python3"):
        monkeypatch.setattr(sys, "argv", [argv0])
        assert command_name("python -m augmentation.visualize") == \
            "python -m augmentation.visualize"


def test_help_of_the_module_form_shows_the_module():
    out = subprocess.run([sys.executable, "-m", "augmentation.convert", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    assert out.stdout.startswith("usage: python -m augmentation.convert ")

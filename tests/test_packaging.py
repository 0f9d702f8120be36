"""The project as a user installs it: a wheel built from the sources (no deprecation warning
from the packaging), installed (not editable) into a fresh virtual environment, gives the five
commands, the shipped policies and the C sources of the batched engine. Offline: the wheel is
built with this environment's setuptools and installed without dependencies; the new
environment sees this one's packages (numpy, torch, ...) after its own."""
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ("deepaa-search", "deepaa-train", "deepaa-reproduce", "deepaa-visualize",
            "deepaa-convert")


def _sources(dst: Path) -> Path:
    """What an sdist holds: the packaging files, the top-level modules and every package."""
    dst.mkdir()
    for entry in ROOT.iterdir():
        if entry.name in ("pyproject.toml", "README.md", "LICENSE") or (
                entry.suffix == ".py" and entry.is_file()):
            shutil.copy2(entry, dst / entry.name)
        elif entry.is_dir() and (entry / "__init__.py").is_file() and entry.name != "tests":
            shutil.copytree(entry, dst / entry.name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
    return dst


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    work = tmp_path_factory.mktemp("packaging")
    src = _sources(work / "src")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps",
                            "--no-build-isolation", "--no-index", "-w", str(work / "dist"),
                            f".{os.sep}src"], cwd=work, capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    wheels = list((work / "dist").glob("deepaa-*.whl"))
    assert len(wheels) == 1
    env_dir = work / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / ("python.exe" if os.name == "nt" else "python")
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True)
    parent = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site.stdout.strip(), "parent_environment.pth").write_text("\n".join(sorted(parent)))
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                              "--no-deps", "--no-index", str(wheels[0])],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    shutil.rmtree(src)  # nothing may come from the sources any more
    return {"build_log": build.stdout + build.stderr, "python": python, "bin": bin_dir,
            "work": work}


def _run(installed, *cmd):
    return subprocess.run([str(c) for c in cmd], cwd=installed["work"], capture_output=True,
                          text=True, timeout=300)


def test_the_build_has_no_deprecation_warnings(installed):
    log = installed["build_log"]
    assert "Successfully built deepaa" in log or "Saved" in log
    assert not re.search(r"deprecat", log, re.IGNORECASE), \
        [line for line in log.splitlines() if "eprecat" in line]


def test_the_wheel_carries_the_license(installed):
    wheel, = (installed["work"] / "dist").glob("deepaa-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if n.endswith("/LICENSE")]
        assert len(names) == 1 and ".dist-info/" in names[0], z.namelist()
        assert z.read(names[0]) == (ROOT / "LICENSE").read_bytes()
        metadata = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA")))
    assert b"License-Expression: MIT" in metadata


def test_the_installed_copy_has_the_policies_and_the_c_sources(installed):
    code = ("import augmentation, os\n"
            "from augmentation import load_policy\n"
            "from augmentation.policy import available_policies\n"
            "from augmentation.batched import native\n"
            "print(os.path.dirname(augmentation.__file__))\n"
            "print(' '.join(available_policies()), load_policy('imagenet_2').n_layers)\n"
            "print(all(os.path.dirname(p) == os.path.dirname(native.__file__) "
            "and os.path.isfile(p) for p in native._SOURCES), native.available())\n")
    out = _run(installed, installed["python"], "-c", code)
    assert out.returncode == 0, out.stderr[-3000:]
    where, policies, native = out.stdout.split("\n")[:3]
    assert Path(where).is_relative_to(installed["work"] / "venv")
    assert policies == "deepaa_cifar_1 deepaa_cifar_2 deepaa_imagenet_1 deepaa_imagenet_2 5"
    assert native == "True True"


def test_the_five_commands_run(installed):
    for command in COMMANDS:
        out = _run(installed, installed["bin"] / command, "--help")
        assert out.returncode == 0, (command, out.stderr[-2000:])
        assert out.stdout.startswith(f"usage: {command} "), (command, out.stdout[:200])
    policy = installed["work"] / "cifar_1.npz"
    shipped = _run(installed, installed["python"], "-c",
                   "from augmentation.policy import policies_dir; print(policies_dir())")
    out = _run(installed, installed["bin"] / "deepaa-convert",
               Path(shipped.stdout.strip(), "deepaa_cifar_1.yaml"), policy)
    assert out.returncode == 0 and policy.is_file(), out.stderr
    out = _run(installed, installed["bin"] / "deepaa-convert", policy,
               installed["work"] / "back.yaml")
    assert out.returncode == 0 and "6 layers x 139 candidates" in out.stdout, out.stderr
    # bad input: one line, exit status 2, nothing written
    out = _run(installed, installed["bin"] / "deepaa-convert", "missing.npz", "out.yaml")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert not (installed["work"] / "out.yaml").exists()
    out = _run(installed, installed["bin"] / "deepaa-train", "-c", "missing.yaml")
    assert out.returncode == 2 and "missing.yaml" in out.stderr

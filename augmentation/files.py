"""Writing outputs safely, shared by the search, the trainer and the harness.

* :func:`atomic_write`: a policy, checkpoint or result file is replaced whole or not at all.
* :func:`exclusive`: one process at a time per output. Two searches resuming the same
  folder, two trainers on the same checkpoint, or two harnesses on the same runs folder
  would each overwrite the other's progress; the second one is refused with a one-line
  error instead. The lock is an advisory ``flock`` on a ``<name>.lock`` file, so the operating
  system releases it when its process dies, however it dies; a lock file left behind by a
  killed process does not block anyone. Where ``fcntl`` does not exist (Windows) there is no
  lock.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path, data: bytes | str) -> None:
    """Write via a temporary file in the same directory and os.replace (no half-written file
    is ever visible under ``path``). The data reach the disk (fsync) before the rename, so a
    power loss cannot leave an empty file in place of a good checkpoint or result."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class InUse(RuntimeError):
    """Another live process holds the lock (the message names it and its pid)."""


def _holder(lock_path: Path) -> str:
    try:
        pid = lock_path.read_text(encoding="utf-8").strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "another process"


@contextlib.contextmanager
def exclusive(lock_path, what: str):
    """Hold ``lock_path`` (created if missing) for the ``with`` block, or raise
    :class:`InUse` ("<what> is in use by pid N") at once if a live process holds it. The file
    holds the holder's pid and is removed on the way out, and so are the folders made for it
    if they are still empty (a run refused for bad input leaves nothing behind)."""
    lock_path = Path(lock_path)
    if fcntl is None:
        yield
        return
    made = [p for p in lock_path.parents if not p.exists()]  # deepest first
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _flock(lock_path, what):
            yield
    finally:
        for folder in made:
            with contextlib.suppress(OSError):  # not empty: the run wrote something
                folder.rmdir()


@contextlib.contextmanager
def _flock(lock_path: Path, what: str):
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InUse(f"{what} is in use by {_holder(lock_path)}") from None
        try:  # the holder before us may have removed the file after we opened it: retry
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        os.close(fd)  # closing releases the lock

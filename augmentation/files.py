"""Writing outputs safely, shared by the search, the trainer and the harness.

* :func:`atomic_write`: a policy, checkpoint or result file is replaced whole or not at all.
* :func:`check_writable`: an output that cannot be written is found before the work starts
  (a read-only folder or file system, a path under a file, an empty path, a full disk), not
  after an hour of search or training.
* :func:`exclusive`: one process at a time per output. Two searches resuming the same
  folder, two trainers on the same checkpoint, or two harnesses on the same runs folder
  would each overwrite the other's progress; the second one is refused with a one-line
  error instead. The lock is an advisory ``flock`` on a ``<name>.lock`` file, so the operating
  system releases it when its process dies, however it dies; a lock file left behind by a
  killed process does not block anyone. Where ``fcntl`` does not exist (Windows) there is no
  lock.
* :func:`summary_writer`: TensorBoard scalars from PyTorch without loading TensorFlow.
"""
from __future__ import annotations

import contextlib
import errno
import os
import sys
import tempfile
import types
import warnings
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
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.filename is None:  # a full disk: say which file
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise


class Unwritable(ValueError):
    """An output that cannot be written; the message is one line naming it and why."""


# Bytes the probe of check_writable writes: a full disk refuses them (creating an empty file
# needs no data block, so an empty probe would pass on a full disk).
_PROBE_BYTES = 4096


def check_writable(path, folder: bool = False) -> None:
    """Raise :class:`Unwritable` unless ``path`` (a file, or with ``folder`` a folder) can be
    written: the nearest existing folder on its way is probed with a small temporary file,
    removed at once, so what the operating system would refuse later (permissions, a
    read-only file system, a full disk, a path under a file) is refused now. Folders that do
    not exist yet are not made."""
    text = os.fspath(path)
    if not text.strip():
        raise Unwritable("empty path")
    target = Path(os.path.abspath(text))  # ".." resolved as makedirs will resolve it
    if folder and target.exists() and not target.is_dir():
        raise Unwritable(f"{text!r} exists and is not a folder")
    if not folder and target.is_dir():
        raise Unwritable(f"{text!r} is a folder")
    if not folder and target.exists() and not target.is_file():  # a device: never replaced
        raise Unwritable(f"{text!r} is not a regular file")
    start = target if folder else target.parent
    existing = next((p for p in (start, *start.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise Unwritable(f"{text!r} lies under {str(existing)!r}, which is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".deepaa-probe.", dir=existing)
    except OSError as err:
        raise Unwritable(f"cannot write in {str(existing)!r}: {err.strerror or err}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"\0" * _PROBE_BYTES)
            f.flush()
    except OSError as err:
        raise Unwritable(f"cannot write in {str(existing)!r}: {err.strerror or err}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)


class InUse(RuntimeError):
    """Another live process holds the lock (the message names it and its pid)."""


# File systems that do not lock (NFS without a lock daemon, some FUSE and Lustre mounts)
# answer flock with one of these: the run then goes on without a lock, with a warning.
_NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}
# Lock descriptors this process holds; a forked child (a DataLoader worker) closes its copies,
# so that a killed trainer's workers do not keep its lock while they notice and exit.
_held: set[int] = set()


def _close_inherited() -> None:
    for fd in _held:
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited)


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
    lock_path = Path(lock_path).absolute()
    if fcntl is None:
        yield
        return
    made = [p for p in lock_path.parents if not p.exists()]  # deepest first
    try:
        fd = _acquire(lock_path, what)
        try:
            if fd is not None:
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
            yield
        finally:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.unlink(lock_path)
                _held.discard(fd)
                os.close(fd)  # closing releases the lock
    finally:
        for folder in made:
            with contextlib.suppress(OSError):  # not empty: the run wrote something
                folder.rmdir()


def _acquire(lock_path: Path, what: str) -> int | None:
    """The locked descriptor of ``lock_path``, or None where the file system cannot lock."""
    while True:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        except FileNotFoundError:  # its folder was removed meanwhile: make it again
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InUse(f"{what} is in use by {_holder(lock_path)}") from None
        except OSError as err:
            os.close(fd)
            if err.errno not in _NO_LOCKS:
                raise
            with contextlib.suppress(OSError):
                os.unlink(lock_path)
            warnings.warn(f"{what}: the file system does not lock files ({err.strerror}); "
                          "running without a lock", stacklevel=3)
            return None
        try:  # the holder before us may have removed the file after we opened it: retry
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            _held.add(fd)
            return fd
        os.close(fd)


def summary_writer(log_dir: str):
    """A ``torch.utils.tensorboard.SummaryWriter`` on ``log_dir``, or None when the
    ``tensorboard`` package is not installed (the caller then writes JSON lines).

    TensorBoard's writer loads TensorFlow when it is installed (seconds of start-up, and the
    trainer and the PyTorch search must not load it): unless TensorFlow is loaded already, a
    marker module makes TensorBoard use its own stub instead.
    """
    if "tensorflow" not in sys.modules:
        sys.modules.setdefault("tensorboard.compat.notf",
                               types.ModuleType("tensorboard.compat.notf"))
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=log_dir)

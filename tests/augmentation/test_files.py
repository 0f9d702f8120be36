"""Atomic writes and the one-process-per-output lock (augmentation/files.py)."""
import errno
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from augmentation import files
from augmentation.files import InUse, atomic_write, exclusive

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_atomic_write_reaches_the_disk_before_the_rename(tmp_path, monkeypatch):
    """The data are fsynced in the temporary file, then renamed over the target: a crash
    leaves the old file or the new one, never an empty one."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(files.os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(files.os, "replace",
                        lambda a, b: events.append("replace") or real_replace(a, b))
    target = tmp_path / "out.json"
    target.write_text("old")
    atomic_write(target, "new")
    assert events == ["fsync", "replace"] and target.read_text() == "new"


def _holder(lock, marker):
    """A child process that takes the lock, says so in ``marker``, and waits on stdin."""
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from augmentation.files import exclusive
        with exclusive({str(lock)!r}, "thing"):
            Path({str(marker)!r}).write_text("held")
            sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    for _ in range(600):
        if marker.exists() or proc.poll() is not None:
            break
        time.sleep(0.05)
    assert marker.exists(), "the child never took the lock"
    return proc


@pytest.mark.skipif(files.fcntl is None, reason="no advisory locks on this platform")
def test_a_second_process_is_refused_while_the_first_holds_the_lock(tmp_path):
    lock = tmp_path / "out" / "run.lock"
    proc = _holder(lock, tmp_path / "held")
    try:
        with pytest.raises(InUse, match=rf"^thing is in use by pid {proc.pid}$"):
            with exclusive(lock, "thing"):
                pass
    finally:
        proc.communicate(b"", timeout=30)
    assert not lock.exists()  # released and removed on the way out
    with exclusive(lock, "thing"):  # free again
        assert lock.read_text() == str(os.getpid())
    assert not lock.exists()


@pytest.mark.skipif(files.fcntl is None, reason="no advisory locks on this platform")
def test_a_killed_holder_leaves_a_file_that_blocks_no_one(tmp_path):
    lock = tmp_path / "run.lock"
    proc = _holder(lock, tmp_path / "held")
    proc.kill()
    proc.wait(timeout=30)
    assert lock.exists()  # the file stays behind, the lock does not
    with exclusive(lock, "thing"):
        assert lock.read_text() == str(os.getpid())


@pytest.mark.skipif(files.fcntl is None, reason="no advisory locks on this platform")
def test_the_lock_is_released_when_the_block_raises(tmp_path):
    lock = tmp_path / "run.lock"
    with pytest.raises(ValueError):
        with exclusive(lock, "thing"):
            raise ValueError("boom")
    assert not lock.exists() and not files._held
    with exclusive(lock, "thing"):
        assert lock.exists()


@pytest.mark.skipif(files.fcntl is None, reason="no advisory locks on this platform")
def test_a_lock_file_removed_under_us_is_made_again(tmp_path, monkeypatch):
    """The holder before us unlinks its file between our open and our flock: we locked an
    orphaned inode, must notice, and lock a fresh file instead."""
    lock = tmp_path / "run.lock"
    real_flock, calls = files.fcntl.flock, []

    def flock(fd, op):
        calls.append(fd)
        if len(calls) == 1:
            os.unlink(lock)  # the previous holder leaves just now
        return real_flock(fd, op)

    monkeypatch.setattr(files.fcntl, "flock", flock)
    with exclusive(lock, "thing"):
        assert len(calls) == 2 and lock.read_text() == str(os.getpid())
        assert os.fstat(next(iter(files._held))).st_ino == os.stat(lock).st_ino
    assert not lock.exists() and not files._held


@pytest.mark.skipif(files.fcntl is None, reason="no advisory locks on this platform")
def test_a_file_system_that_cannot_lock_runs_without_a_lock(tmp_path, monkeypatch):
    def flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(files.fcntl, "flock", flock)
    lock = tmp_path / "out" / "run.lock"
    with pytest.warns(UserWarning, match="does not lock files"):
        with exclusive(lock, "thing"):
            assert not lock.exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not hasattr(os, "fork") or files.fcntl is None,
                    reason="needs fork and advisory locks")
def test_forked_children_do_not_keep_the_lock(tmp_path):
    """A DataLoader worker forked while the trainer holds its lock closes its copy, so the
    lock dies with the trainer, not with the last of its workers."""
    with exclusive(tmp_path / "run.lock", "thing"):
        (fd,) = files._held
        pid = os.fork()
        if pid == 0:  # the child: its copy of the descriptor must be closed
            try:
                os.fstat(fd)
                os._exit(1)
            except OSError:
                os._exit(0 if not files._held else 2)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
        os.fstat(fd)  # the parent's stays open


def test_summary_writer_never_loads_tensorflow(tmp_path):
    """TensorBoard's writer from PyTorch, in a process without TensorFlow: event files are
    written and TensorFlow stays unloaded (it is installed beside, in the test environment)."""
    from pathlib import Path

    code = ("import sys; from augmentation.files import summary_writer; "
            f"w = summary_writer({str(tmp_path / 'tb')!r}); w.add_scalar('x', 1.0, 0); "
            "w.close(); print(any(m.split('.')[0] == 'tensorflow' for m in sys.modules))")
    root = Path(__file__).resolve().parents[2]
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "False"
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


def _unwritable(tmp_path, kind):
    """An output path of one kind that cannot be written, generated under ``tmp_path``."""
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    return {"under a file": a_file / "sub" / "out.json",
            "pseudo file system": Path("/proc/deepaa-none/out.json"),
            "a folder as a file": tmp_path, "a device": Path("/dev/null")}[kind]


@pytest.mark.parametrize("kind", ["under a file", "pseudo file system", "a folder as a file",
                                  "a device"])
def test_check_writable_refuses_with_one_line_and_leaves_nothing(tmp_path, kind):
    path = _unwritable(tmp_path, kind)
    with pytest.raises(files.Unwritable) as err:
        files.check_writable(path)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_check_writable_accepts_new_folders_and_makes_none(tmp_path):
    files.check_writable(tmp_path / "new" / "deeper" / "out.json")
    files.check_writable(tmp_path / "new" / "run", folder=True)
    files.check_writable(tmp_path / ".." / tmp_path.name / "out.json")
    assert list(tmp_path.iterdir()) == []  # the probe is gone, no folder was made
    (tmp_path / "f").write_text("x")
    with pytest.raises(files.Unwritable, match="exists and is not a folder"):
        files.check_writable(tmp_path / "f", folder=True)
    for empty in ("", "  "):
        with pytest.raises(files.Unwritable, match="empty path"):
            files.check_writable(empty)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in a read-only folder")
def test_check_writable_refuses_a_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    with pytest.raises(files.Unwritable, match="Permission denied"):
        files.check_writable(ro / "out.json")


def test_check_writable_finds_a_full_disk(tmp_path):
    """Files of at most 1 kB (RLIMIT_FSIZE stands in for a full disk): an empty file can be
    made, but the probe's bytes cannot be written, so the output is refused."""
    code = textwrap.dedent(f"""
        import resource, signal, sys
        from augmentation import files
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))
        try:
            files.check_writable({str(tmp_path / "out.json")!r})
        except files.Unwritable as err:
            sys.exit(str(err))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert res.returncode == 1 and "cannot write in" in res.stderr and "large" in res.stderr
    assert list(tmp_path.iterdir()) == []

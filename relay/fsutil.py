"""Small filesystem helpers shared by the queue, the file sink and the pull sources."""
from __future__ import annotations

import os


def fsync_dir(directory) -> None:
    """fsync a directory so a file created or renamed in it survives a crash (best effort:
    errors are ignored, e.g. on filesystems that do not support it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def private_dir(directory) -> None:
    """Create ``directory`` (and its parents) with mode 0700; an existing one of ours that
    group or others can enter is narrowed to 0700 (it holds queued events and secrets'
    effects: dedup keys, cursors).  Best effort on a directory owned by someone else."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    _narrow(directory, 0o700)


def private_file(path) -> None:
    """Make sure ``path`` exists with mode 0600 (created so, or narrowed when group or others
    had any access), before SQLite opens it: SQLite gives its -wal and -shm files the
    database file's mode."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return          # the caller's open reports it
    os.close(fd)
    _narrow(path, 0o600)
    for suffix in ("-wal", "-shm"):
        _narrow(f"{os.fspath(path)}{suffix}", 0o600)


def _narrow(path, mode: int) -> None:
    try:
        st = os.stat(path)
    except OSError:
        return
    if st.st_mode & 0o077 and st.st_uid == os.geteuid():
        try:
            os.chmod(path, mode)
        except OSError:
            pass

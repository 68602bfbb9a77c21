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

"""Queue exceptions, and the SQLite result codes that decide which one is raised."""
from __future__ import annotations

__all__ = ["QueueError", "QueueFull", "QueueDiskFull", "QueueCorrupt"]

# SQLite primary result codes (Python 3.11 exposes them as exc.sqlite_errorcode)
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_NOTADB = 26
_CORRUPTION_CODES = {_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_NOTADB}


class QueueError(Exception):
    """Base class for queue errors (also: locked, permission denied, cannot open)."""


class QueueFull(QueueError):
    """The queue is at ``max_rows``/``max_bytes`` (``full_policy="block"``).  Nothing of the
    group was stored: stop reading sources and offer the same group again later."""


class QueueDiskFull(QueueFull):
    """SQLite reported "database or disk is full".  Nothing of the group was stored; handle
    like :class:`QueueFull` (stop reading, alert, retry later)."""


class QueueCorrupt(QueueError):
    """Corruption or an I/O error found after open; reopen the queue to quarantine and
    salvage the file."""


class _BadFile(Exception):
    """Internal: the file at open is corrupt or has the wrong schema."""


def _code(exc: BaseException) -> int:
    return (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF

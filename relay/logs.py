"""Logging setup shared by the main process and the ingest workers."""
from __future__ import annotations

import logging
import sys
import time
from typing import Any

__all__ = ["setup_logging", "LogLimiter"]


class RedactingFormatter(logging.Formatter):
    """The line as formatted (message, arguments, traceback), with every credential the
    process has read replaced by ``<redacted>`` (relay/secrets.py)."""

    def format(self, record: logging.LogRecord) -> str:
        from .secrets import redact
        return redact(super().format(record))


def setup_logging(level: str = "info") -> None:
    """One stderr handler on the root logger (journald adds the time when run by systemd,
    but a terminal needs it: ``TIME LEVEL LOGGER: message``).  Secrets never reach it:
    :class:`RedactingFormatter`."""
    root = logging.getLogger()
    if not any(getattr(h, "_relay", False) for h in root.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        h._relay = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


class LogLimiter:
    """At most one log line per key every ``interval`` seconds; the next line that
    gets through says how many were suppressed."""

    __slots__ = ("interval", "_next", "_suppressed", "_log")

    def __init__(self, interval: float = 10.0, logger: logging.Logger | None = None) -> None:
        self.interval = interval
        self._next: dict[Any, float] = {}
        self._suppressed: dict[Any, int] = {}
        self._log = logger or logging.getLogger("relay.sources")

    def log(self, level: int, key: Any, msg: str, *args: Any, exc_info=None) -> bool:
        now = time.monotonic()
        if now < self._next.get(key, 0.0):
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._next[key] = now + self.interval
        n = self._suppressed.pop(key, 0)
        if n:
            msg += " (%d more like this in the last %.0f s)"
            args = (*args, n, self.interval)
        self._log.log(level, msg, *args, exc_info=exc_info)
        return True

    def warning(self, key: Any, msg: str, *args: Any, exc_info=None) -> bool:
        return self.log(logging.WARNING, key, msg, *args, exc_info=exc_info)

    def error(self, key: Any, msg: str, *args: Any, exc_info=None) -> bool:
        return self.log(logging.ERROR, key, msg, *args, exc_info=exc_info)

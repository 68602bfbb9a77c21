"""Logging setup shared by the main process and the ingest workers."""
from __future__ import annotations

import logging
import sys

__all__ = ["setup_logging"]


def setup_logging(level: str = "info") -> None:
    """One stderr handler on the root logger (journald adds the time when run by systemd,
    but a terminal needs it: ``TIME LEVEL LOGGER: message``)."""
    root = logging.getLogger()
    if not any(getattr(h, "_relay", False) for h in root.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        h._relay = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))

"""Where a sink's queue lives, and opening it from the sink's configuration.

Copies of ``relay.server.queue_path`` and ``relay.server.open_queue``.  ``open_queue``
logs under ``relay`` and counts ``relay_queue_recovered_total`` exactly as the server's
does when a corrupted file was moved aside at open.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..fsutil import private_dir
from ..metrics import REGISTRY
from .disk import DiskQueue
from .items import RetryPolicy

if TYPE_CHECKING:  # annotations only: relay.config is not needed to open a queue
    from ..config import SinkConfig

log = logging.getLogger("relay")   # the logger relay/server.py's open_queue uses

__all__ = ["queue_path", "open_queue"]


def queue_path(state_dir: Path, sink: str) -> Path:
    return state_dir / f"queue-{sink}.db"


def open_queue(state_dir: Path, sink: SinkConfig) -> DiskQueue:
    q = sink.queue
    r = sink.retry
    private_dir(state_dir)
    dq = DiskQueue(queue_path(state_dir, sink.name), synchronous=q.synchronous, max_rows=q.max_rows,
                   max_bytes=q.max_bytes, full_policy=q.full_policy,
                   retry=RetryPolicy(base=r.base, factor=r.factor, cap=r.cap, max_attempts=r.max_attempts))
    if dq.recovered_from:
        log.error("sink %s: queue file was corrupted (%s); moved aside to %s and started a fresh queue "
                  "(salvaged rows were copied)", sink.name, dq.recovered_reason if hasattr(dq, "recovered_reason")
                  else "see above", dq.recovered_from)
        REGISTRY.inc("relay_queue_recovered_total", sink=sink.name)
    return dq

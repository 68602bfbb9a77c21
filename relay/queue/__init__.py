"""Disk-backed per-sink queue (moved from relay/queue.py; see relay/queue/disk.py)."""
from .disk import (  # noqa: F401
    APPLICATION_ID,
    PACK_BYTES,
    PACK_EVENTS,
    REASON_MAX,
    SCHEMA_VERSION,
    DeadItem,
    DiskQueue,
    Item,
    QueueCorrupt,
    QueueDiskFull,
    QueueError,
    QueueFull,
    RetryPolicy,
    __all__,
    pack_rows,
    unpack_rows,
)

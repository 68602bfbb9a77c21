"""Disk-backed per-sink queue: the relay's promise "never lose an accepted event".

One SQLite database (standard library, WAL mode) per sink, e.g.
``<state_dir>/queue-<sink>.db``.  An event holds the sink's already *rendered* payload
(bytes, rendered once at enqueue so the sender never parses or renders again), a small
metadata dict (dedup key, event time, source, route ...), ``enqueued_at``, ``attempts``,
``next_attempt_at``, ``last_attempt_at`` and ``last_error``.  Events that exhaust their
retries or fail permanently move to the ``dead`` table (the dead-letter queue, DLQ, one row
per event) together with the reason (status code / error excerpt), the attempt count and
timestamps.

Packed rows (schema 2).  SQLite's cost is per row (~4 us to insert, ~3 us to lease and
delete one, measured in bench/bench_queue.py), which alone would be a third of the relay's
budget per message.  So a group from :meth:`DiskQueue.put_many` is stored as few rows as
possible: up to ``PACK_EVENTS`` events / ``PACK_BYTES`` bytes per row, payloads and
metadata concatenated, their lengths in ``lens``.  Every event still has its own id: a row
with id ``R`` and ``n`` events holds ids ``R - n + 1 .. R`` (ids come from the
AUTOINCREMENT sequence, never reused, increasing across processes sharing the file).  The
API is per event as before; :meth:`DiskQueue.lease_packed` hands the usual lease (fresh runs
of packed rows) out as a :class:`Leased`, which bulk senders read (``spans``,
:func:`payloads_of`, :func:`ids_of`) without an object per event (its Items are made if it is
iterated).  Settling part of a row (ack, dead letter) records the
offsets in the small ``partial`` table (the row itself is not rewritten) and the row is
deleted when its last event is settled; retrying part of a row cuts the row into runs so
that every event keeps its id and its place in the order.  The price: disk space comes
back a row at a time, and a damaged page in a packed row's blob loses that row's events
at salvage.  A schema-1 file (one row per event) is upgraded in place at open.

Every public method is **one SQLite transaction** (or none, for the read-only ones), except
:meth:`DiskQueue.replay_dlq`, which is one transaction per ``batch`` rows so that a large
DLQ is never one giant transaction.  All methods are synchronous and thread-safe (one
connection guarded by a lock); the asyncio appliance calls them from a worker thread
(``asyncio.to_thread``) or directly.

Delivery model (at-least-once)
------------------------------
``put_many`` -> ``lease`` -> send -> ``ack`` | ``retry`` | ``dead_letter`` | ``release``.
Leases live in memory only: after a restart every row that was not acknowledged is simply
available again, so a crash between a successful send and its ``ack`` produces a duplicate,
never a loss.  Carry a dedup key in the metadata so that the receiver can drop duplicates.
Exactly one process should consume (lease) a given queue; other processes (the
``relay queue`` CLI) may read it, replay its DLQ or purge it concurrently (SQLite locking,
``busy_timeout``).

Crash semantics (what is guaranteed once ``put_many`` returns)
--------------------------------------------------------------
* ``synchronous="FULL"`` (default): the group's rows were committed to the WAL and the WAL
  was fsync()ed before ``put_many`` returned.  They survive a process crash (SIGKILL, OOM
  kill), an OS crash and a power cut, provided the storage honours fsync/flush.
* ``synchronous="NORMAL"``: the rows were committed to the WAL, which is in the OS page
  cache but not yet fsync()ed (SQLite syncs the WAL at checkpoints).  They survive a
  process crash (SIGKILL) but an OS crash or power cut may lose the most recently
  committed groups.  The database stays consistent either way.
* Always: a group is atomic.  After any crash either the whole group is in the queue or
  none of it is (a killed ``put_many`` that did not return stored nothing, or everything;
  the caller did not get an acknowledgement, so it must still hold the events).
* ``ack``/``retry``/``dead_letter`` have the same durability as ``put_many``.  Losing an
  ``ack`` (crash before it was durable) means a redelivery; losing a ``retry`` update means
  an earlier retry with one attempt less counted.  Neither loses an event.
* Disk full (``SQLITE_FULL``): ``put_many`` raises :class:`QueueDiskFull` (a subclass of
  :class:`QueueFull`) after rolling back; nothing of that group is stored and the process
  does not exit.  Treat it like ``block``: stop reading sources, alert, retry later.  Other
  write methods raise it too (deletions also need WAL space); the in-memory state is left
  as it was, so the caller can simply try again.  Set ``max_bytes`` well below the free
  space so the configured limit is reached before the disk is.
* Corruption: at open the file is checked (``PRAGMA quick_check`` plus a schema check).  A
  file that is not a database, is truncated/malformed, has a foreign or unknown schema or
  gives an I/O error is *moved aside* to ``<name>.corrupt-<UTC timestamp>`` (with its
  ``-wal``/``-shm`` files), logged, counted (``stats["corrupt_recovered"]``), recorded in
  :attr:`DiskQueue.recovered_from`, and a fresh queue is created so the relay starts anyway.
  Salvage is best effort: rows that can still be read from the quarantined file (queue and
  DLQ, original ids kept) are copied into the fresh queue; rows on unreadable pages are not
  (the quarantined file is kept for forensics).  Permission problems, a locked database or a
  path that cannot be opened (e.g. a directory) are *not* treated as corruption: they raise
  :class:`QueueError`.  A missing state directory is created.
  Corruption found after open raises :class:`QueueCorrupt`; reopening the queue repairs it.
  Checked and moved aside as found: the check runs on a read-only connection, so the
  quarantined file and its ``-wal`` are not modified (salvage reads both).
  Limit: damage confined to the ``-wal`` file is invisible.  SQLite checksums WAL frames
  and silently ignores everything from the first bad frame on, so the groups committed in
  those frames (not yet checkpointed into the main file) are lost without an error.  A
  damaged main-file page that the WAL holds a newer copy of is harmless (SQLite reads
  the WAL copy).

Retry schedule
--------------
``retry`` counts one attempt and schedules the next one ``delay`` seconds later, where
``delay`` is the server's ``retry_after`` (seconds from now) when given, else
``random.uniform(0, min(cap, base * factor ** (attempts - 1)))`` (exponential backoff with
full jitter).  One jitter draw is made per ``retry`` call (per attempt count), so the rows
of one failed batch stay together and are retried as one batch again.  When ``attempts``
reaches ``max_attempts`` the row moves to the DLQ instead; ``max_attempts=0`` retries
forever.

Where the code lives
--------------------
``relay/queue/`` is a package; this docstring is the format and crash-semantics reference.

* ``disk.py``      :class:`DiskQueue`: open, enqueue (``put_many``/``put_rows``/``put_dead``),
                   the transaction plumbing, depth and size, close;
* ``delivery.py``  the consumer side: ``lease``/``ack``/``retry``/``dead_letter``/``release``,
                   ``next_due``, and settling events of packed rows (``partial`` table);
* ``packing.py``   the packed-row format (``pack_rows``/``unpack_rows``, ``PACK_*``), pure;
* ``schema.py``    the SQL layout (tables, ``SCHEMA_VERSION``, ``APPLICATION_ID``) and SQLite
                   helpers;
* ``recovery.py``  open-time checks: schema verify, schema 1 -> 2 upgrade, totals repair,
                   quarantine of a bad file and salvage;
* ``reserve.py``   the disk-full reserve and free-space checks;
* ``admin.py``     operator commands (``list``, ``replay_dlq``, ``purge``: ``relay queue ...``);
* ``items.py``     :class:`RetryPolicy`, :class:`Item`, :class:`DeadItem`;
* ``errors.py``    the exceptions;
* ``commit.py``    :class:`GroupCommitter`: group commit of everything submitted meanwhile,
                   on a thread per queue;
* ``paths.py``     ``queue_path`` and ``open_queue`` (a sink's queue from its config).
"""
from __future__ import annotations

from .commit import GroupCommitter
from .disk import DiskQueue
from .errors import QueueCorrupt, QueueDiskFull, QueueError, QueueFull
from .items import REASON_MAX, DeadItem, Item, Leased, RetryPolicy, ids_of, payloads_of
from .packing import PACK_BYTES, PACK_EVENTS, pack_rows, unpack_rows
from .paths import open_queue, queue_path
from .schema import APPLICATION_ID, SCHEMA_VERSION

__all__ = [
    "DiskQueue",
    "pack_rows",
    "unpack_rows",
    "RetryPolicy",
    "Item",
    "Leased",
    "ids_of",
    "payloads_of",
    "DeadItem",
    "QueueError",
    "QueueFull",
    "QueueDiskFull",
    "QueueCorrupt",
    "SCHEMA_VERSION",
    "APPLICATION_ID",
    "REASON_MAX",
    "PACK_EVENTS",
    "PACK_BYTES",
    "GroupCommitter",
    "open_queue",
    "queue_path",
]

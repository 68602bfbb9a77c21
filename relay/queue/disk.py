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
API is per event as before.  Settling part of a row (ack, dead letter) records the
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
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import random
import sqlite3
import threading
import time
from array import array
from itertools import accumulate
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from ..fsutil import fsync_dir as _fsync_dir

try:  # orjson is a project dependency; fall back to json so this module stands alone
    import orjson as _orjson

    _dumps = _orjson.dumps
    _loads = _orjson.loads
except ImportError:  # pragma: no cover
    import json as _json

    def _dumps(obj: dict) -> bytes:
        return _json.dumps(obj, separators=(",", ":")).encode()

    def _loads(raw: bytes):
        return _json.loads(raw)


__all__ = [
    "DiskQueue",
    "pack_rows",
    "unpack_rows",
    "RetryPolicy",
    "Item",
    "DeadItem",
    "QueueError",
    "QueueFull",
    "QueueDiskFull",
    "QueueCorrupt",
    "SCHEMA_VERSION",
]

log = logging.getLogger("relay.queue")

SCHEMA_VERSION = 2
APPLICATION_ID = 0x524C5951  # "RLYQ": marks our files; anything else is a foreign database
REASON_MAX = 2000  # characters of error text / reason kept per row

# SQLite primary result codes (Python 3.11 exposes them as exc.sqlite_errorcode)
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_NOTADB = 26
_CORRUPTION_CODES = {_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_NOTADB}

_IN_CHUNK = 500  # ids per "IN (...)" list
PACK_EVENTS = 256          # events per packed row (at most)
PACK_BYTES = 256 << 10     # payload bytes per packed row (soft limit: one event may exceed it)
_RUN_GAP = 256             # ids further apart than this are looked up separately

_SCHEMA = f"""
CREATE TABLE queue (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    payload         BLOB    NOT NULL,
    meta            BLOB,
    enqueued_at     REAL    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL    NOT NULL DEFAULT 0,
    last_attempt_at REAL,
    last_error      TEXT,
    n               INTEGER NOT NULL DEFAULT 1,
    lens            BLOB
);
CREATE TABLE partial (
    id   INTEGER PRIMARY KEY,
    done BLOB NOT NULL
);
CREATE INDEX queue_retry_due ON queue(next_attempt_at) WHERE attempts > 0;
CREATE TABLE dead (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    queue_id        INTEGER NOT NULL,
    payload         BLOB    NOT NULL,
    meta            BLOB,
    enqueued_at     REAL    NOT NULL,
    attempts        INTEGER NOT NULL,
    last_attempt_at REAL,
    last_error      TEXT,
    reason          TEXT    NOT NULL,
    dead_at         REAL    NOT NULL
);
CREATE TABLE totals (
    k          INTEGER PRIMARY KEY CHECK (k = 0),
    rows       INTEGER NOT NULL,
    bytes      INTEGER NOT NULL,
    dead_rows  INTEGER NOT NULL,
    dead_bytes INTEGER NOT NULL
);
INSERT INTO totals VALUES (0, 0, 0, 0, 0);
PRAGMA application_id = {APPLICATION_ID};
PRAGMA user_version = {SCHEMA_VERSION};
"""

_V1_QUEUE_COLUMNS = ["id", "payload", "meta", "enqueued_at", "attempts", "next_attempt_at",
                     "last_attempt_at", "last_error"]
_EXPECTED_COLUMNS = {
    "queue": _V1_QUEUE_COLUMNS + ["n", "lens"],
    "partial": ["id", "done"],
    "dead": ["id", "queue_id", "payload", "meta", "enqueued_at", "attempts",
             "last_attempt_at", "last_error", "reason", "dead_at"],
    "totals": ["k", "rows", "bytes", "dead_rows", "dead_bytes"],
}

# a queue row with its settled offsets (``done``, from the small ``partial`` table, so
# that settling part of a packed row never rewrites the row itself)
_Q_COLS = ("q.id, q.payload, q.meta, q.enqueued_at, q.attempts, q.next_attempt_at, "
           "q.last_attempt_at, q.last_error, q.n, q.lens, p.done")
_Q_FROM = "queue q LEFT JOIN partial p ON p.id = q.id"
_Q_DUE = "queue q INDEXED BY queue_retry_due LEFT JOIN partial p ON p.id = q.id"
_D_COLS = ("id, queue_id, payload, meta, enqueued_at, attempts, last_attempt_at, last_error, "
           "reason, dead_at")


# --------------------------------------------------------------------------- exceptions
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


# --------------------------------------------------------------------------- data classes
@dataclass(frozen=True)
class RetryPolicy:
    """Retry schedule.  Defaults follow the RhythmX integration guide: 60 s base, doubling,
    1 h cap, 5 attempts.  ``max_attempts=0`` means retry forever."""

    base: float = 60.0
    factor: float = 2.0
    cap: float = 3600.0
    max_attempts: int = 5

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0:
            raise ValueError("RetryPolicy: base and cap must be >= 0")
        if self.factor < 1:
            raise ValueError("RetryPolicy: factor must be >= 1")
        if self.max_attempts < 0:
            raise ValueError("RetryPolicy: max_attempts must be >= 0 (0 = forever)")

    def ceiling(self, attempts: int) -> float:
        """Upper bound of the delay after the ``attempts``-th failure (attempts >= 1)."""
        n = max(1, attempts) - 1
        try:
            raw = self.base * self.factor ** n
        except OverflowError:
            raw = float("inf")
        return min(self.cap, raw)

    def delay(self, attempts: int, rng: random.Random | None = None) -> float:
        """Full-jitter delay: uniform(0, min(cap, base * factor ** (attempts - 1)))."""
        return (rng or random).uniform(0.0, self.ceiling(attempts))


class Item:
    """A queued row as returned by :meth:`DiskQueue.lease` and :meth:`DiskQueue.list`.
    ``meta`` is decoded lazily."""

    __slots__ = ("id", "payload", "_meta_raw", "_meta", "enqueued_at", "attempts",
                 "next_attempt_at", "last_attempt_at", "last_error")

    def __init__(self, id: int, payload: bytes, meta_raw: bytes | None, enqueued_at: float,
                 attempts: int, next_attempt_at: float, last_attempt_at: float | None,
                 last_error: str | None) -> None:
        self.id = id
        self.payload = payload
        self._meta_raw = meta_raw
        self._meta = None
        self.enqueued_at = enqueued_at
        self.attempts = attempts
        self.next_attempt_at = next_attempt_at
        self.last_attempt_at = last_attempt_at
        self.last_error = last_error

    @property
    def meta(self) -> dict:
        if self._meta is None:
            self._meta = _loads(self._meta_raw) if self._meta_raw else {}
        return self._meta

    def __repr__(self) -> str:
        return (f"Item(id={self.id}, attempts={self.attempts}, "
                f"next_attempt_at={self.next_attempt_at}, payload={self.payload[:40]!r})")


@dataclass
class DeadItem:
    """A dead-lettered row (:meth:`DiskQueue.list` with ``dlq=True``)."""

    id: int
    queue_id: int
    payload: bytes
    meta: dict
    enqueued_at: float
    attempts: int
    last_attempt_at: float | None
    last_error: str | None
    reason: str
    dead_at: float


def _excerpt(text: str | None) -> str | None:
    if text is None:
        return None
    text = str(text)
    return text if len(text) <= REASON_MAX else text[:REASON_MAX] + "...[truncated]"


def _chunks(seq: Sequence, size: int = _IN_CHUNK):
    for i in range(0, len(seq), size):
        yield seq[i:i + size]


def _code(exc: BaseException) -> int:
    return (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF


# --------------------------------------------------------------------------- the queue
class DiskQueue:
    """A durable FIFO queue for one sink.  See the module docstring for the semantics.

    :param path: database file (its directory is created if missing).
    :param synchronous: ``"FULL"`` (fsync per commit) or ``"NORMAL"``.
    :param max_rows: limit on queued rows (DLQ not counted); ``None`` = unlimited.
    :param max_bytes: limit on the summed payload bytes of queued rows; ``None`` = unlimited.
    :param full_policy: ``"block"`` (raise :class:`QueueFull`, store nothing of the group) or
        ``"drop_newest"`` (store what fits, drop and count the rest).
    :param retry: the :class:`RetryPolicy`.
    :param busy_timeout: seconds to wait for a lock held by another connection.
    :param check: run ``PRAGMA quick_check`` at open (reads the whole file).
    :param rng: random source for the jitter (tests pass a seeded one).
    """

    def __init__(self, path: str | os.PathLike, *, synchronous: str = "FULL",
                 max_rows: int | None = None, max_bytes: int | None = None,
                 full_policy: str = "block", retry: RetryPolicy | None = None,
                 busy_timeout: float = 5.0, check: bool = True,
                 rng: random.Random | None = None, reserve_bytes: int | None = None) -> None:
        synchronous = synchronous.upper()
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        if full_policy not in ("block", "drop_newest"):
            raise ValueError(f"full_policy must be 'block' or 'drop_newest', not {full_policy!r}")
        if max_rows is not None and max_rows < 1:
            raise ValueError("max_rows must be >= 1 or None")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1 or None")
        self.path = os.fspath(path)
        self.synchronous = synchronous
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.full_policy = full_policy
        self.retry_policy = retry or RetryPolicy()
        self.busy_timeout = busy_timeout
        self._rng = rng or random.Random()
        self._lock = threading.RLock()
        # in-flight leases: id -> attempts at lease time (0 = fresh row)
        self._inflight: dict[int, int] = {}
        # every row with attempts == 0 and id <= _fresh_hwm is leased or gone (see lease())
        self._fresh_hwm = 0
        self._hwm_lowered = False  # leased fresh rows may lie above _fresh_hwm
        self._inflight_retried = 0  # leased rows with attempts > 0
        self.stats: dict[str, int] = dict.fromkeys(
            ("enqueued", "acked", "retried", "dead_lettered", "dropped_full", "blocked_full",
             "disk_full", "released", "replayed", "purged", "corrupt_recovered", "salvaged",
             "totals_repaired"), 0)
        #: path of the quarantined file when the queue was recovered at open, else None
        self.recovered_from: str | None = None
        #: why the file was quarantined (text), else None
        self.recovery_reason: str | None = None
        self._conn: sqlite3.Connection | None = None
        # Disk-full insurance: a file of ``reserve_bytes`` beside the queue.  Acknowledging
        # (deleting) rows needs WAL space too; on a full disk the reserve is given up so
        # acks can still be recorded and the queue can drain, and while it cannot be
        # recreated put_many refuses with QueueDiskFull (sources pause, nothing is lost).
        self._reserve_path = self.path + ".reserve"
        self._reserve_bytes = reserve_bytes
        self._reserve_checked = 0.0
        self._lock_fd: int | None = None
        self._open(check)
        try:
            self._lock_fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:   # read-only directory...: SQLite's own locking still applies
            log.warning("queue %s: no writer lock file (%s); concurrent writers fall back to "
                        "SQLite's busy polling", self.path, exc)
        self._ensure_reserve()

    @property
    def recovered_reason(self) -> str | None:
        """Alias of :attr:`recovery_reason` (the name relay/server.py looks for)."""
        return self.recovery_reason

    # ------------------------------------------------------------------ open / recovery
    def _connect(self, path: str) -> sqlite3.Connection:
        new = not os.path.exists(path) or os.path.getsize(path) == 0
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                               timeout=self.busy_timeout)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            # only takes effect on a new file, before WAL mode writes its header: freed pages
            # can then be handed back to the filesystem (incremental_vacuum) when disk is short
            if new:
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise QueueError(f"{path}: could not switch to WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            # Debian's SQLite is built with SECURE_DELETE on: every deleted row would be
            # overwritten with zeros, i.e. an ack would write each delivered payload again
            # (and need that much WAL space on a full disk).  FAST zeroes deleted cells only
            # on pages that are written anyway; freed overflow pages are not rewritten.
            conn.execute("PRAGMA secure_delete = FAST")
            # checkpoint often enough, and truncate the WAL after checkpoints, so that the
            # WAL never holds more than ~1/16 of the filesystem (matters on small disks)
            try:
                st = os.statvfs(os.path.dirname(os.path.abspath(path)))
                fs = st.f_blocks * st.f_frsize
            except OSError:
                fs = 1 << 40
            pages = max(16, min(1000, fs // 4096 // 16))
            conn.execute(f"PRAGMA journal_size_limit = {max(64 << 10, min(64 << 20, fs // 16))}")
            conn.execute(f"PRAGMA wal_autocheckpoint = {pages}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _verify(self, conn: sqlite3.Connection, check: bool) -> bool:
        """Check integrity and schema.  Returns True when the file is new (empty)."""
        if check:
            rows = conn.execute("PRAGMA quick_check").fetchall()
            if rows != [("ok",)]:
                raise _BadFile("quick_check: " + "; ".join(str(r[0]) for r in rows[:5]))
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
        if app_id == 0 and version == 0 and not tables:
            return True
        if app_id != APPLICATION_ID:
            raise _BadFile(f"not a relay queue (application_id={app_id:#x}, tables={sorted(tables)})")
        if version not in (1, SCHEMA_VERSION):
            raise _BadFile(f"schema version {version}, expected {SCHEMA_VERSION}")
        for table, cols in _EXPECTED_COLUMNS.items():
            if version == 1 and table == "queue":
                cols = _V1_QUEUE_COLUMNS
            elif version == 1 and table == "partial":
                continue
            have = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            if have != cols:
                raise _BadFile(f"table {table}: columns {have}, expected {cols}")
        if conn.execute("SELECT count(*) FROM totals").fetchone()[0] != 1:
            raise _BadFile("table totals: expected exactly one row")
        return False

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Schema 1 (one event per row) -> 2 (packed rows): add the columns; old rows are
        rows of one event, which is what the defaults say."""
        if conn.execute("PRAGMA user_version").fetchone()[0] != 1:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("ALTER TABLE queue ADD COLUMN n INTEGER NOT NULL DEFAULT 1")
            conn.execute("ALTER TABLE queue ADD COLUMN lens BLOB")
            conn.execute("CREATE TABLE partial (id INTEGER PRIMARY KEY, done BLOB NOT NULL)")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        log.info("queue %s: schema upgraded from 1 to %d", self.path, SCHEMA_VERSION)

    def _open(self, check: bool) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        # Check through a read-only connection first: closing it never checkpoints, so a
        # bad file is moved aside exactly as found, its -wal intact (a read-write
        # connection would fold the WAL into the damaged file when it closes).
        verified = False
        if os.path.isfile(self.path) and os.path.getsize(self.path) > 0:
            ro = None
            try:
                ro = sqlite3.connect(f"file:{_uri_path(self.path)}?mode=ro", uri=True,
                                     isolation_level=None, timeout=self.busy_timeout)
                self._verify(ro, check)
                verified = True
            except _BadFile as exc:
                ro.close()
                ro = None
                self._recover(str(exc))
                return
            except sqlite3.Error as exc:
                if ro is not None:
                    ro.close()
                    ro = None
                if _code(exc) in _CORRUPTION_CODES:
                    self._recover(f"{getattr(exc, 'sqlite_errorname', 'error')}: {exc}")
                    return
                # anything else (cannot open read-only, busy ...): the read-write path decides
            finally:
                if ro is not None:
                    ro.close()
        conn = None
        try:
            conn = self._connect(self.path)
            fresh = self._verify(conn, check and not verified)
            if fresh:
                self._create_schema(conn)
                _fsync_dir(directory)
            else:
                self._migrate(conn)
                if check:
                    self._repair_totals(conn)
        except _BadFile as exc:
            if conn is not None:
                conn.close()
            self._recover(str(exc))
            return
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            code = _code(exc)
            if code in _CORRUPTION_CODES:
                self._recover(f"{getattr(exc, 'sqlite_errorname', 'error')}: {exc}")
                return
            if code == _SQLITE_FULL:
                raise QueueDiskFull(f"{self.path}: {exc}") from exc
            raise QueueError(f"{self.path}: cannot open queue: {exc}") from exc
        except QueueError:
            if conn is not None:
                conn.close()
            raise
        self._conn = conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    def _repair_totals(self, conn: sqlite3.Connection) -> None:
        """Recount rows and bytes (cheap next to quick_check); fix the totals row if off."""
        rows, nbytes = _count_queue(conn)
        drows, dbytes = conn.execute(
            "SELECT count(*), coalesce(sum(length(payload)), 0) FROM dead").fetchone()
        have = conn.execute("SELECT rows, bytes, dead_rows, dead_bytes FROM totals").fetchone()
        if tuple(have) != (rows, nbytes, drows, dbytes):
            log.warning("queue %s: totals %s did not match the rows %s; repaired",
                        self.path, tuple(have), (rows, nbytes, drows, dbytes))
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE totals SET rows=?, bytes=?, dead_rows=?, dead_bytes=?",
                         (rows, nbytes, drows, dbytes))
            conn.execute("COMMIT")
            self.stats["totals_repaired"] += 1

    def _recover(self, reason: str) -> None:
        """Move the bad file aside, create a fresh queue, salvage what is readable."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = f"{self.path}.corrupt-{stamp}"
        n = 1
        while os.path.exists(aside):
            aside = f"{self.path}.corrupt-{stamp}.{n}"
            n += 1
        try:
            for suffix in ("", "-wal", "-shm", "-journal"):
                src = self.path + suffix
                if os.path.exists(src):
                    os.replace(src, aside + suffix)
        except OSError as exc:
            raise QueueError(f"{self.path} is unusable ({reason}) and could not be moved "
                             f"aside: {exc}") from exc
        _fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        self.recovered_from = aside
        self.recovery_reason = reason
        self.stats["corrupt_recovered"] += 1
        log.error("queue %s is unusable (%s); moved aside to %s, starting a fresh queue",
                  self.path, reason, aside)
        try:
            conn = self._connect(self.path)
            self._verify(conn, False)
            self._create_schema(conn)
        except (sqlite3.Error, _BadFile) as exc:
            raise QueueError(f"{self.path}: cannot create a fresh queue: {exc}") from exc
        self._conn = conn
        _fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        try:
            saved = self._salvage(aside)
        except Exception as exc:  # best effort, never blocks start-up
            log.warning("queue %s: salvage from %s failed: %s", self.path, aside, exc)
            saved = 0
        self.stats["salvaged"] += saved
        if saved:
            log.warning("queue %s: salvaged %d rows from %s", self.path, saved, aside)

    def _salvage(self, aside: str, time_budget: float = 30.0) -> int:
        """Copy readable rows of the quarantined file into the fresh queue (best effort).

        Rows are read in id order; when a read fails the scan tries to jump past the bad
        region (ids +1, +10, ... +10^6).  Original ids, attempts and schedule are kept."""
        src = None
        tables: set = set()
        # read-only first (sees the WAL); immutable=1 if that fails (ignores WAL and locks)
        for opts in ("mode=ro", "immutable=1"):
            try:
                src = sqlite3.connect(f"file:{_uri_path(aside)}?{opts}", uri=True,
                                      isolation_level=None, timeout=0.1)
                src.execute("PRAGMA query_only = 1")
                tables = {r[0] for r in src.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'")}
                break
            except sqlite3.Error:
                if src is not None:
                    src.close()
                src = None
        if src is None:
            return 0
        deadline = time.monotonic() + time_budget
        total = 0
        try:
            plan = (("partial", (_EXPECTED_COLUMNS["partial"],)),
                    ("queue", (_EXPECTED_COLUMNS["queue"], _V1_QUEUE_COLUMNS)),
                    ("dead", (_EXPECTED_COLUMNS["dead"],)))
            for table, known in plan:
                if table not in tables:
                    continue
                try:
                    have = [r[1] for r in src.execute(f"PRAGMA table_info({table})")]
                except sqlite3.Error:
                    continue
                if have not in known:
                    continue
                cols = have
                # packed queue rows are up to PACK_BYTES each: read few at a time
                step = 16 if table == "queue" else 2000
                collist = ", ".join(cols)
                marks = ", ".join("?" * len(cols))
                pay = cols.index("payload" if "payload" in cols else "done")
                last = 0
                failures = 0
                while time.monotonic() < deadline:
                    try:
                        batch = src.execute(
                            f"SELECT {collist} FROM {table} WHERE id > ? ORDER BY id LIMIT {step}",
                            (last,)).fetchall()
                    except sqlite3.Error:
                        batch = None
                    if batch is None:
                        failures += 1
                        if failures > 7:
                            break
                        last += 10 ** (failures - 1)
                        continue
                    if not batch:
                        break
                    failures = 0
                    good = [r for r in batch if isinstance(r[pay], bytes)]  # type-checked

                    last = batch[-1][0]
                    with self._lock:
                        conn = self._conn
                        conn.execute("BEGIN IMMEDIATE")
                        try:
                            conn.executemany(
                                f"INSERT OR IGNORE INTO {table} ({collist}) VALUES ({marks})", good)
                            conn.execute("COMMIT")
                        except BaseException:
                            _rollback(conn)
                            raise
        finally:
            src.close()
        with self._lock:   # count what arrived; drop settled-offset lists of rows not salvaged
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                before = conn.execute("SELECT rows + dead_rows FROM totals").fetchone()[0]
                conn.execute("DELETE FROM partial WHERE id NOT IN (SELECT id FROM queue)")
                _recount(conn)
                total = conn.execute("SELECT rows + dead_rows FROM totals").fetchone()[0] - before
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        return total

    # ------------------------------------------------------------------ helpers
    # ------------------------------------------------------------------ disk-full reserve
    def _reserve_size(self) -> int:
        if self._reserve_bytes is not None:
            return self._reserve_bytes
        try:
            st = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
            total = st.f_blocks * st.f_frsize
        except OSError:
            total = 1 << 30
        return max(128 << 10, min(4 << 20, total // 16))   # 4 MiB, less on tiny filesystems

    def _ensure_reserve(self) -> bool:
        """Create the reserve file if it is missing; False when the disk has no room."""
        size = self._reserve_size()
        try:
            if os.path.getsize(self._reserve_path) >= size:
                return True
        except OSError:
            pass
        try:
            fd = os.open(self._reserve_path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                try:
                    os.posix_fallocate(fd, 0, size)
                except (AttributeError, OSError) as e:
                    if getattr(e, "errno", None) == errno.ENOSPC:
                        raise
                    os.pwrite(fd, b"\0" * size, 0)
                os.fsync(fd)
            finally:
                os.close(fd)
            return True
        except OSError as e:
            try:
                os.unlink(self._reserve_path)
            except OSError:
                pass
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                log.warning("queue %s: cannot create the disk reserve %s: %s", self.path, self._reserve_path, e)
                return True   # not a space problem: do not block enqueueing over it
            return False

    def _release_reserve(self) -> bool:
        try:
            os.unlink(self._reserve_path)
        except FileNotFoundError:
            return False
        except OSError as e:
            log.error("queue %s: cannot release the disk reserve: %s", self.path, e)
            return False
        log.warning("queue %s: disk full: released the %s reserve so acknowledgements can be recorded",
                    self.path, self._reserve_path)
        return True

    def _tight(self) -> bool:
        """Is the filesystem short of space (less than 8x the reserve free)?"""
        try:
            st = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < 8 * self._reserve_size()

    def _reclaim(self) -> None:
        """Hand free pages back to the filesystem and shrink the WAL (short on disk)."""
        with self._lock:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._conn.execute("PRAGMA incremental_vacuum")
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except (sqlite3.Error, AttributeError):
                pass

    def _free_pages_bytes(self) -> int:
        try:
            n = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
            size = self._conn.execute("PRAGMA page_size").fetchone()[0]
            return n * size
        except (sqlite3.Error, AttributeError):
            return 0

    def _check_space(self, nbytes: int) -> None:
        """Refuse a group that would leave too little room to checkpoint the WAL and to
        record acknowledgements (both need free space on a WAL database).  New rows go to
        the WAL first, which needs filesystem space; at checkpoint they move into the main
        file, where free pages are reused.  When short, reclaim first (checkpoint, hand
        free pages back to the filesystem, truncate the WAL)."""
        d = os.path.dirname(os.path.abspath(self.path))
        reserve = self._reserve_size()

        def room() -> tuple[int, int]:
            try:
                st = os.statvfs(d)
            except OSError:
                return 1 << 62, 0
            fs = st.f_bavail * st.f_frsize
            return fs, (self._free_pages_bytes() if fs < (64 << 20) else 0)

        fs, pages = room()
        if fs >= 2 * nbytes + reserve and fs + pages >= 4 * nbytes + reserve:
            return
        self._reclaim()
        fs, pages = room()
        if fs >= 2 * nbytes + reserve and fs + pages >= 4 * nbytes + reserve:
            return
        self.stats["disk_full"] += 1
        raise QueueDiskFull(f"{self.path}: disk is full: only {fs} bytes free on {d}, not enough to queue "
                            f"{nbytes} more bytes and still checkpoint and record acknowledgements")

    def _write_ack(self, fn):
        """Like :meth:`_write`, for writes that make room (ack, retry, dead letter,
        release...): on a full disk, give up the reserve, retry once, and checkpoint so
        the WAL shrinks."""
        try:
            result = self._write(fn)
        except QueueDiskFull:
            pass
        else:
            if self._tight():  # keep the WAL small while the disk is short of space
                self._reclaim()
            return result
        try:  # first make room by checkpointing the WAL into the main file
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return self._write(fn)
        except (QueueDiskFull, sqlite3.Error):
            pass
        if not self._release_reserve():
            raise QueueDiskFull(f"{self.path}: disk full, and the reserve for acknowledgements is used up")
        result = self._write(fn)
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        return result

    def _write(self, fn):
        """Run ``fn(conn)`` in one IMMEDIATE transaction; map SQLite errors.

        Writers of the same file (ingest workers committing, the main process acking, the
        ``relay queue`` CLI) first take an exclusive ``flock`` on ``<file>.lock``: a waiting
        writer then wakes the moment the lock is free, where SQLite's own busy handler
        polls with sleeps of 1, 2, 5, 10 ... ms (milliseconds per commit on a busy queue)."""
        conn = self._conn
        if conn is None:
            raise QueueError(f"{self.path}: queue is closed")
        fd = self._lock_fd
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc
        finally:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
        return result

    def _read(self, sql: str, params=()) -> list:
        conn = self._conn
        if conn is None:
            raise QueueError(f"{self.path}: queue is closed")
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: sqlite3.Error) -> QueueError:
        code = _code(exc)
        if code == _SQLITE_FULL:
            self.stats["disk_full"] += 1
            log.error("queue %s: disk full: %s", self.path, exc)
            return QueueDiskFull(f"{self.path}: {exc}")
        if code in _CORRUPTION_CODES:
            log.error("queue %s: corruption or I/O error: %s", self.path, exc)
            return QueueCorrupt(f"{self.path}: {exc}")
        return QueueError(f"{self.path}: {exc}")

    @staticmethod
    def _ids(ids_or_items: Iterable) -> list[int]:
        seq = ids_or_items if isinstance(ids_or_items, (list, tuple)) else list(ids_or_items)
        if seq and type(seq[0]) is Item:
            try:
                return [x.id for x in seq]
            except AttributeError:
                pass
        elif seq and type(seq[0]) is int:
            if all(type(x) is int for x in seq):
                return list(seq)
        out = []
        for x in seq:
            out.append(x.id if isinstance(x, (Item, DeadItem)) else int(x))
        return out

    @staticmethod
    def _overlapping(conn: sqlite3.Connection, eids: list[int], cols: str) -> list:
        """Inside a transaction: the queue rows (``id, n, <cols>``) holding any of the sorted,
        distinct event ids ``eids``.  Rows are disjoint id ranges ``id - n + 1 .. id``, so
        for a run of ids from lo to hi they are the rows from the first with id >= lo up
        to the first that starts after hi."""
        out = []
        i, m = 0, len(eids)
        while i < m:
            j = i
            while j + 1 < m and eids[j + 1] - eids[j] <= _RUN_GAP:
                j += 1
            hi = eids[j]
            for row in conn.execute(f"SELECT q.id, q.n, {cols} FROM {_Q_FROM} WHERE q.id >= ? ORDER BY q.id",
                                    (eids[i],)):
                if row[0] - row[1] + 1 > hi:
                    break
                out.append(row)
            i = j + 1
        return out

    def _settle(self, conn: sqlite3.Connection, eids: list[int], data: bool = False):
        """Inside a transaction: take the events ``eids`` (sorted, distinct) out of the queue:
        a row whose events are all settled is deleted, otherwise its ``done`` list grows.
        Returns ``(events, bytes, taken)``; with ``data`` ``taken`` lists
        ``(row in _Q_COLS order, [offsets])`` for the caller to move the events elsewhere."""
        cols = "length(q.payload), q.lens, p.done" + (f", {_Q_COLS}" if data else "")
        deletes: list = []
        updates: list = []
        taken: list = []
        events = nbytes = 0
        for row in self._overlapping(conn, eids, cols):
            rid, n, plen, lens, done = row[:5]
            first = rid - n + 1
            a = bisect_left(eids, first)
            b = bisect_right(eids, rid)
            if a == b:
                continue
            offs = [e - first for e in eids[a:b]]
            if done:
                skip = set(_arr(done))
                offs = [o for o in offs if o not in skip]
                if not offs:
                    continue
            else:
                skip = set()
            if n == 1:
                nbytes += plen
            else:
                ln = _arr(lens)
                nbytes += sum([ln[o] for o in offs])
            events += len(offs)
            if len(offs) + len(skip) >= n:
                deletes.append(rid)
            else:
                skip.update(offs)
                updates.append((array("I", sorted(skip)).tobytes(), rid))
            if data:
                taken.append((row[5:], offs))
        for chunk in _chunks(deletes):
            marks = ",".join("?" * len(chunk))
            conn.execute(f"DELETE FROM queue WHERE id IN ({marks})", chunk)
            conn.execute(f"DELETE FROM partial WHERE id IN ({marks})", chunk)
        if updates:
            conn.executemany("INSERT OR REPLACE INTO partial (done, id) VALUES (?, ?)", updates)
        if events:
            conn.execute("UPDATE totals SET rows = rows - ?, bytes = bytes - ?", (events, nbytes))
        return events, nbytes, taken

    @staticmethod
    def _resplit(conn: sqlite3.Connection, row, offs: set, attrs: tuple) -> None:
        """Inside a transaction: give the events at offsets ``offs`` of ``row`` (``_Q_COLS``
        order) new ``(attempts, next_attempt_at, last_attempt_at, last_error)`` by cutting
        the row into runs of consecutive events; every event keeps its id (and so its
        place in the queue order).  Totals do not change."""
        rid, n = row[0], row[8]
        first = rid - n + 1
        parts = _split(row)
        skip = set(_arr(row[10])) if row[10] else set()
        runs: list[list] = []
        for k in range(n):
            flag = k in offs
            if runs and runs[-1][2] == flag:
                runs[-1][1] = k
            else:
                runs.append([k, k, flag])
        conn.execute("DELETE FROM queue WHERE id = ?", (rid,))
        conn.execute("DELETE FROM partial WHERE id = ?", (rid,))
        out = []
        partial = []
        for start, end, flag in runs:
            dn = [k - start for k in range(start, end + 1) if k in skip]
            if len(dn) == end - start + 1:
                continue
            payload, meta, lens = _pack(parts[start:end + 1])
            a = attrs if flag else (row[4], row[5], row[6], row[7])
            out.append((first + end, payload, meta, row[3], *a, end - start + 1, lens))
            if dn:
                partial.append((first + end, array("I", dn).tobytes()))
        conn.executemany(
            "INSERT INTO queue (id, payload, meta, enqueued_at, attempts, next_attempt_at, "
            "last_attempt_at, last_error, n, lens) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", out)
        if partial:
            conn.executemany("INSERT INTO partial (id, done) VALUES (?, ?)", partial)

    def _to_dead(self, conn: sqlite3.Connection, taken: list, reason: str, now: float,
                 attempts_add: int = 0, last_error: str | None = None) -> int:
        """Inside a transaction: insert settled events (``_settle(..., data=True)``) into the
        DLQ with ``reason``; returns the number."""
        rows = []
        nbytes = 0
        for row, offs in taken:
            rid, n = row[0], row[8]
            first = rid - n + 1
            parts = _split(row)
            attempts = row[4] + attempts_add
            lat = now if attempts_add else row[6]
            lerr = last_error if last_error is not None else row[7]
            for o in offs:
                payload, meta = parts[o]
                nbytes += len(payload)
                rows.append((first + o, payload, meta, row[3], attempts, lat, lerr, reason, now))
        if rows:
            conn.executemany(
                "INSERT INTO dead (queue_id, payload, meta, enqueued_at, attempts, "
                "last_attempt_at, last_error, reason, dead_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows)
            conn.execute("UPDATE totals SET dead_rows = dead_rows + ?, dead_bytes = dead_bytes + ?",
                         (len(rows), nbytes))
        return len(rows)

    # ------------------------------------------------------------------ producer side
    def put_many(self, items: list[tuple[bytes, dict | None]], now: float | None = None) -> int:
        """Enqueue a group of ``(payload, meta)`` in ONE transaction (group commit).  ``meta``
        is a dict, None, or the dict already encoded as JSON bytes.

        Returns the number of rows stored.  Durable per the ``synchronous`` mode when it
        returns.  When the queue is full: ``block`` raises :class:`QueueFull` and stores
        nothing; ``drop_newest`` stores the leading rows that fit and counts the rest in
        ``stats["dropped_full"]``.  Disk full raises :class:`QueueDiskFull`, nothing stored.
        Under ``block`` a group larger than ``max_rows``/``max_bytes`` itself raises
        ``ValueError`` (it could never fit).  A payload that is not bytes-like or a meta
        that orjson cannot encode raises ``TypeError`` before anything is written."""
        if not items:
            return 0
        ts = time.time() if now is None else now
        payloads = [p for p, _ in items]
        metas = [m for _, m in items]
        if not all([type(m) is bytes or m is None for m in metas]):
            dumps = _dumps
            metas = [(m if type(m) is bytes else dumps(m)) if m else None for m in metas]
        if not all([type(p) is bytes for p in payloads]):
            payloads = [_as_bytes(p) for p in payloads]
        sizes = list(map(len, payloads))
        nbytes = sum(sizes)

        def insert(conn: sqlite3.Connection, k: int) -> None:
            if k == len(payloads):
                self._insert_packed(conn, payloads, metas, sizes, ts)
            else:
                self._insert_packed(conn, payloads[:k], metas[:k], sizes[:k], ts)
        return self._enqueue(None, sizes, insert)

    def _enqueue(self, unit_events: list | None, unit_bytes: list, insert) -> int:
        """What :meth:`put_many` and :meth:`put_rows` share: the caps and the full policy,
        the disk reserve and space checks, one transaction, the stats.  The group is a list
        of units (events, or packed rows of ``unit_events[k]`` events; None = one each) of
        ``unit_bytes[k]`` payload bytes; ``insert(conn, k)`` stores the first k units.
        ``drop_newest`` keeps the leading units that fit."""
        count = len(unit_bytes) if unit_events is None else sum(unit_events)
        nbytes = sum(unit_bytes)
        if self.full_policy == "block" and (
                (self.max_rows is not None and count > self.max_rows)
                or (self.max_bytes is not None and nbytes > self.max_bytes)):
            # would block forever: a programming/configuration error, not back-pressure
            raise ValueError(
                f"group of {count} rows / {nbytes} bytes can never fit the queue "
                f"(max_rows={self.max_rows}, max_bytes={self.max_bytes}); send smaller groups")
        self._check_reserve()
        self._check_space(nbytes)
        with self._lock:
            result: list = []

            def txn(conn: sqlite3.Connection) -> int:
                k, events, size = len(unit_bytes), count, nbytes
                if self.max_rows is not None or self.max_bytes is not None:
                    have_rows, have_bytes = conn.execute(
                        "SELECT rows, bytes FROM totals").fetchone()
                    room_rows = (self.max_rows - have_rows) if self.max_rows is not None else None
                    room_bytes = (self.max_bytes - have_bytes) if self.max_bytes is not None else None
                    if not ((room_rows is None or count <= room_rows)
                            and (room_bytes is None or nbytes <= room_bytes)):
                        if self.full_policy == "block":
                            result.append(("full", have_rows, have_bytes))
                            return 0
                        # drop_newest: keep the leading units that fit
                        k = events = size = 0
                        while k < len(unit_bytes):
                            n = 1 if unit_events is None else unit_events[k]
                            b = unit_bytes[k]
                            if ((room_rows is not None and events + n > room_rows)
                                    or (room_bytes is not None and size + b > room_bytes)):
                                break
                            events += n
                            size += b
                            k += 1
                        result.append(("dropped", count - events))
                if k:
                    insert(conn, k)
                    conn.execute("UPDATE totals SET rows = rows + ?, bytes = bytes + ?",
                                 (events, size))
                return events

            stored = self._write(txn)
            if result and result[0][0] == "full":
                self.stats["blocked_full"] += 1
                _, have_rows, have_bytes = result[0]
                raise QueueFull(
                    f"{self.path}: queue full ({have_rows} rows, {have_bytes} bytes; "
                    f"max_rows={self.max_rows}, max_bytes={self.max_bytes}); "
                    f"group of {count} not stored")
            if result and result[0][0] == "dropped":
                self.stats["dropped_full"] += result[0][1]
                log.warning("queue %s full: dropped %d newest rows", self.path, result[0][1])
            self.stats["enqueued"] += stored
            return stored

    @staticmethod
    def _insert_packed(conn: sqlite3.Connection, payloads: list, metas: list, sizes: list,
                       ts: float) -> None:
        """Inside a transaction: store fresh events (parallel lists of payload bytes, meta
        bytes or None, payload sizes) as packed rows (:func:`pack_rows`)."""
        DiskQueue._insert_rows(conn, pack_rows(payloads, metas, sizes), ts)

    @staticmethod
    def _insert_rows(conn: sqlite3.Connection, rows: list, ts: float) -> None:
        """Inside a transaction: store packed rows (:func:`pack_rows`).  A row holds the
        events with ids ``id - n + 1 .. id``: ids are taken from the AUTOINCREMENT
        sequence, so they are never reused and keep increasing across processes writing
        the same file."""
        got = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'queue'").fetchone()
        last = got[0] if got else 0
        out = []
        for n, payload, meta, lens, _ in rows:
            last += n
            out.append((last, payload, meta, ts, n, lens))
        conn.executemany(
            "INSERT INTO queue (id, payload, meta, enqueued_at, n, lens) VALUES (?, ?, ?, ?, ?, ?)", out)

    def put_rows(self, rows: list, now: float | None = None) -> int:
        """Enqueue events already packed by :func:`pack_rows` (the ingest workers pack what
        they render, so the committing process does no per-event work), in ONE
        transaction.  Same contract as :meth:`put_many`, except that ``drop_newest`` keeps
        or drops whole packed rows.  Returns the number of events stored."""
        if not rows:
            return 0
        ts = time.time() if now is None else now
        for r in rows:
            if type(r[1]) is not bytes or (r[2] is not None and type(r[2]) is not bytes):
                raise TypeError("packed rows hold bytes (see pack_rows)")
        return self._enqueue([r[0] for r in rows], [r[4] for r in rows],
                             lambda conn, k: self._insert_rows(conn, rows if k == len(rows) else rows[:k], ts))

    def _check_reserve(self) -> None:
        if not os.path.exists(self._reserve_path):
            now_m = time.monotonic()   # best effort: recreate the reserve when there is room again
            if now_m - self._reserve_checked >= 0.5:
                self._reserve_checked = now_m
                if not self._ensure_reserve():
                    self._reclaim()
                    self._ensure_reserve()

    def put(self, payload: bytes, meta: dict | None = None) -> int:
        """Enqueue one row (one transaction: ~30x the cost per row of a group)."""
        return self.put_many([(payload, meta)])

    # ------------------------------------------------------------------ consumer side
    def lease(self, n: int, now: float | None = None) -> list[Item]:
        """Up to ``n`` events with ``next_attempt_at <= now``, oldest (lowest id) first, that are
        not already leased; they are marked in-flight in memory until ``ack``/``retry``/
        ``dead_letter``/``release``.  Read-only (no write transaction)."""
        if n <= 0:
            return []
        now = time.time() if now is None else now
        with self._lock:
            inflight = self._inflight
            hwm = self._fresh_hwm
            # fresh events (attempts = 0) above the high-water mark, in id order.  A row's id
            # is its last event's id, so every row with id > hwm holds such events; leased
            # fresh events lie above the mark only after release() lowered it.
            fresh = self._collect(
                f"SELECT {_Q_COLS} FROM {_Q_FROM} WHERE q.id > ? AND q.attempts = 0 "
                "ORDER BY q.id LIMIT ?",
                (), hwm, hwm + 1, n, self._hwm_lowered)
            # retried rows that are due (partial index), lowest id first
            due = self._collect(
                f"SELECT {_Q_COLS} FROM {_Q_DUE} "
                "WHERE q.attempts > 0 AND q.next_attempt_at <= ? AND q.id > ? ORDER BY q.id LIMIT ?",
                (now,), 0, 0, n, self._inflight_retried > 0)
            if due:
                out = sorted(fresh + due, key=_item_id)[:n] if fresh else due
            else:
                out = fresh
            for item in out:
                a = item.attempts
                inflight[item.id] = a
                if a:
                    self._inflight_retried += 1
                elif item.id > hwm:
                    hwm = item.id
            self._fresh_hwm = hwm
            if self._hwm_lowered and not any(
                    a == 0 and i > hwm for i, a in inflight.items()):
                self._hwm_lowered = False
            return out

    def _collect(self, sql: str, params: tuple, after: int, lo: int, n: int,
                 check_inflight: bool = True) -> list[Item]:
        """Events of the rows ``sql`` selects (in id order; its last two parameters are "id >
        ?" and the LIMIT), id >= ``lo``, not settled and not in flight, up to ``n``; reads
        rows a few at a time.  ``check_inflight=False``: the caller knows none of them can
        be in flight."""
        inflight = self._inflight if check_inflight else {}
        out: list[Item] = []
        want = max(4, n // 64)
        while len(out) < n:
            rows = self._read(sql, (*params, after, want))
            for row in rows:
                rid, payload, meta, enq, att, nxt, lat, lerr, cnt, lens, done = row
                if cnt == 1:
                    if rid >= lo and rid not in inflight:
                        out.append(Item(rid, payload, meta, enq, att, nxt, lat, lerr))
                        if len(out) >= n:
                            return out
                    continue
                first = rid - cnt + 1
                ln = _arr(lens)
                pofs = list(accumulate(ln[:cnt], initial=0))
                mofs = list(accumulate(ln[cnt:], initial=0)) if meta else None
                k0 = lo - first if lo > first else 0
                k1 = min(cnt, k0 + n - len(out))
                if not done and not inflight:   # the usual case: a plain run of fresh events
                    if meta:
                        out += [Item(first + k, payload[pofs[k]:pofs[k + 1]],
                                     meta[mofs[k]:mofs[k + 1]] or None, enq, att, nxt, lat, lerr)
                                for k in range(k0, k1)]
                    else:
                        out += [Item(first + k, payload[pofs[k]:pofs[k + 1]], None, enq, att, nxt,
                                     lat, lerr) for k in range(k0, k1)]
                    if len(out) >= n:
                        return out
                    continue
                skip = set(_arr(done)) if done else ()
                for k in range(k0, cnt):
                    eid = first + k
                    if k not in skip and eid not in inflight:
                        ml = meta[mofs[k]:mofs[k + 1]] if meta else None
                        out.append(Item(eid, payload[pofs[k]:pofs[k + 1]], ml or None,
                                        enq, att, nxt, lat, lerr))
                        if len(out) >= n:
                            return out
            if len(rows) < want:
                break
            after = rows[-1][0]
            want *= 2
        return out

    def _forget(self, ids: Iterable[int]) -> None:
        pop = self._inflight.pop
        retried = 0
        for i in ids:
            if pop(i, 0):
                retried += 1
        self._inflight_retried -= retried

    def ack(self, ids_or_items: Iterable) -> int:
        """Delete delivered rows (one transaction).  Returns the number deleted; unknown ids
        (already acked, purged) are ignored.  On a full disk a large ack is split into
        smaller transactions (each needs only a little WAL space), checkpointing between
        them, so a full queue can always drain."""
        ids = self._ids(ids_or_items)
        if not ids:
            return 0
        try:
            return self._ack(ids)
        except QueueDiskFull:
            if len(ids) < 2:
                raise
            ids = sorted(ids)
            half = len(ids) // 2
            return self.ack(ids[:half]) + self.ack(ids[half:])

    def _ack(self, ids: list[int]) -> int:
        with self._lock:
            eids = sorted(set(ids))

            def txn(conn):
                return self._settle(conn, eids)[0]

            done = self._write_ack(txn)
            self._forget(ids)
            self.stats["acked"] += done
            return done

    def retry(self, ids_or_items: Iterable, error: str, now: float | None = None,
              retry_after: float | None = None) -> int:
        """Count one failed attempt for each row and schedule the next one (one transaction).

        ``next_attempt_at = now + delay``: ``retry_after`` seconds when given (the server's
        Retry-After, relative; negative counts as 0), else full-jitter exponential backoff
        (:meth:`RetryPolicy.delay`, one draw per attempt count per call).  Rows whose
        ``attempts`` reach ``max_attempts`` (unless 0) move to the DLQ with the reason.
        Returns the number of rows moved to the DLQ."""
        ids = self._ids(ids_or_items)
        if not ids:
            return 0
        now = time.time() if now is None else now
        err = _excerpt(error)
        policy = self.retry_policy
        eids = sorted(set(ids))
        with self._lock:
            def txn(conn):
                delays: dict[int, float] = {}
                in_place = []
                split = []     # (row, offsets) moving to a new row
                dead = []      # event ids giving up
                retried = 0
                for row in self._overlapping(conn, eids, _Q_COLS):
                    rid, n = row[0], row[1]
                    row = row[2:]
                    first = rid - n + 1
                    a = bisect_left(eids, first)
                    b = bisect_right(eids, rid)
                    if a == b:
                        continue
                    skip = set(_arr(row[10])) if row[10] else set()
                    offs = [e - first for e in eids[a:b] if e - first not in skip]
                    if not offs:
                        continue
                    retried += len(offs)
                    na = row[4] + 1
                    if policy.max_attempts and na >= policy.max_attempts:
                        dead.extend(first + o for o in offs)
                        continue
                    if na not in delays:
                        if retry_after is not None:
                            delays[na] = max(0.0, float(retry_after))
                        else:
                            delays[na] = policy.delay(na, self._rng)
                    if len(offs) + len(skip) >= n:   # the whole rest of the row: in place
                        in_place.append((na, now + delays[na], now, err, rid))
                    else:
                        split.append((row, offs, na, now + delays[na]))
                if in_place:
                    conn.executemany(
                        "UPDATE queue SET attempts = ?, next_attempt_at = ?, last_attempt_at = ?, "
                        "last_error = ? WHERE id = ?", in_place)
                for row, offs, na, at in split:
                    self._resplit(conn, row, set(offs), (na, at, now, err))
                moved = 0
                if dead:
                    reason = _excerpt(f"gave up after {policy.max_attempts} attempts: {error}")
                    _, _, taken = self._settle(conn, sorted(dead), data=True)
                    moved = self._to_dead(conn, taken, reason, now, attempts_add=1, last_error=err)
                return retried, moved

            retried, moved = self._write_ack(txn)
            self._forget(ids)
            self.stats["retried"] += retried - moved
            self.stats["dead_lettered"] += moved
            if moved:
                log.warning("queue %s: %d rows dead-lettered after %d attempts: %s",
                            self.path, moved, policy.max_attempts, err)
            return moved

    def dead_letter(self, ids_or_items: Iterable, reason: str, now: float | None = None) -> int:
        """Permanent failure: move rows straight to the DLQ with ``reason`` (e.g. the HTTP
        status and a response excerpt); the failed attempt is counted.  One transaction.
        Returns the number moved."""
        ids = self._ids(ids_or_items)
        if not ids:
            return 0
        now = time.time() if now is None else now
        why = _excerpt(reason) or "dead-lettered"
        eids = sorted(set(ids))
        with self._lock:
            def txn(conn):
                _, _, taken = self._settle(conn, eids, data=True)
                return self._to_dead(conn, taken, why, now, attempts_add=1, last_error=why)

            moved = self._write_ack(txn)
            self._forget(ids)
            self.stats["dead_lettered"] += moved
            if moved:
                log.warning("queue %s: %d rows dead-lettered: %s", self.path, moved, why)
            return moved

    def put_dead(self, items: list[tuple[bytes, dict | None, str]], now: float | None = None) -> int:
        """Store ``(payload, meta, reason)`` rows straight in the DLQ (events accepted but
        never deliverable as they are, e.g. a sink could not render them).  One
        transaction; durable like :meth:`put_many`.  Not subject to the queue caps: these
        are accepted events and must not be lost.  Returns the number stored."""
        if not items:
            return 0
        ts = time.time() if now is None else now
        rows = [(_as_bytes(p), (m if type(m) is bytes else _dumps(m)) if m else None, ts,
                 _excerpt(r) or "dead-lettered", ts) for p, m, r in items]
        nbytes = sum(len(r[0]) for r in rows)
        with self._lock:
            def txn(conn):
                conn.executemany("INSERT INTO dead (queue_id, payload, meta, enqueued_at, attempts, "
                                 "last_attempt_at, last_error, reason, dead_at) "
                                 "VALUES (0, ?, ?, ?, 0, NULL, NULL, ?, ?)", rows)  # queue_id 0: never queued
                conn.execute("UPDATE totals SET dead_rows = dead_rows + ?, dead_bytes = dead_bytes + ?",
                             (len(rows), nbytes))
                return len(rows)
            n = self._write_ack(txn)
            self.stats["dead_lettered"] += n
            log.warning("queue %s: %d event(s) stored as dead letters: %s", self.path, n, rows[0][3])
            return n

    def release(self, ids_or_items: Iterable) -> int:
        """Give leased rows back without counting an attempt (e.g. at shutdown).  They are
        available to the next ``lease`` at once, in their original order.  No I/O."""
        ids = self._ids(ids_or_items)
        with self._lock:
            released = 0
            for i in ids:
                attempts = self._inflight.pop(i, None)
                if attempts is None:
                    continue
                released += 1
                if attempts:
                    self._inflight_retried -= 1
                elif i <= self._fresh_hwm:
                    self._fresh_hwm = i - 1
                    self._hwm_lowered = True
            self.stats["released"] += released
            return released

    def release_all(self) -> int:
        """Release every in-flight row (shutdown)."""
        with self._lock:
            return self.release(list(self._inflight))

    # ------------------------------------------------------------------ introspection
    def depth(self) -> int:
        """Rows in the queue (including leased ones; DLQ not counted)."""
        with self._lock:
            return self._read("SELECT rows FROM totals")[0][0]

    def size_bytes(self) -> int:
        """Summed payload bytes of the queued rows."""
        with self._lock:
            return self._read("SELECT bytes FROM totals")[0][0]

    def dlq_depth(self) -> int:
        with self._lock:
            return self._read("SELECT dead_rows FROM totals")[0][0]

    def inflight(self) -> int:
        """Rows leased by this process and not yet settled."""
        with self._lock:
            return len(self._inflight)

    def oldest_age(self, now: float | None = None) -> float | None:
        """Seconds since the head row (lowest id) was enqueued; None when empty.  Rows
        replayed from the DLQ keep their original ``enqueued_at`` but join at the tail."""
        now = time.time() if now is None else now
        with self._lock:
            rows = self._read("SELECT enqueued_at FROM queue ORDER BY id LIMIT 1")
        return max(0.0, now - rows[0][0]) if rows else None

    def next_due(self, now: float | None = None) -> float | None:
        """Seconds until some row not leased by us becomes eligible (0.0 = now); None
        when there is none.  Lets a sender sleep instead of polling."""
        now = time.time() if now is None else now
        with self._lock:
            inflight = self._inflight
            hwm = self._fresh_hwm
            limit = len(inflight) + 1   # rows whose every event is in flight are at most that many
            for rid, n, done in self._read(
                    f"SELECT q.id, q.n, p.done FROM {_Q_FROM} WHERE q.id > ? AND q.attempts = 0 "
                    "ORDER BY q.id LIMIT ?",
                    (hwm, limit)):
                if self._has_free(rid, n, done, hwm + 1):
                    return 0.0
            for rid, n, done, at in self._read(
                    f"SELECT q.id, q.n, p.done, q.next_attempt_at FROM {_Q_DUE} "
                    "WHERE q.attempts > 0 ORDER BY q.next_attempt_at LIMIT ?", (limit,)):
                if self._has_free(rid, n, done, 0):
                    return max(0.0, at - now)
            return None

    def _has_free(self, rid: int, n: int, done: bytes | None, lo: int) -> bool:
        """Does row ``rid`` hold an event with id >= lo that is neither settled nor leased?"""
        inflight = self._inflight
        if n == 1:
            return rid >= lo and rid not in inflight
        first = rid - n + 1
        skip = set(_arr(done)) if done else ()
        return any(e not in inflight and e - first not in skip
                   for e in range(max(first, lo), rid + 1))

    def list(self, limit: int = 100, offset: int = 0, dlq: bool = False):
        """Rows in id order without leasing them: :class:`Item` (queue) or
        :class:`DeadItem` (``dlq=True``)."""
        with self._lock:
            if dlq:
                rows = self._read(f"SELECT {_D_COLS} FROM dead ORDER BY id LIMIT ? OFFSET ?",
                                  (limit, offset))
                return [DeadItem(r[0], r[1], r[2], _loads(r[3]) if r[3] else {}, *r[4:])
                        for r in rows]
            out: list[Item] = []
            after = 0
            while len(out) < limit:
                rows = self._read(f"SELECT {_Q_COLS} FROM {_Q_FROM} WHERE q.id > ? ORDER BY q.id LIMIT 64",
                                  (after,))
                if not rows:
                    break
                after = rows[-1][0]
                for row in rows:
                    rid, n, done = row[0], row[8], row[10]
                    live = n - (len(done) // 4 if done else 0)
                    if offset >= live:
                        offset -= live
                        continue
                    first = rid - n + 1
                    skip = set(_arr(done)) if done else ()
                    for k, (payload, meta) in enumerate(_split(row)):
                        if k in skip:
                            continue
                        if offset:
                            offset -= 1
                            continue
                        out.append(Item(first + k, payload, meta, *row[3:8]))
                        if len(out) >= limit:
                            break
                    if len(out) >= limit:
                        break
            return out

    # ------------------------------------------------------------------ operator actions
    def replay_dlq(self, ids: Iterable[int] | None = None,
                   progress: Callable[[int, int], None] | None = None,
                   batch: int = 1000, include_unrendered: bool = False) -> int:
        """Move DLQ rows (all, or the given DLQ ids) back to the tail of the queue with
        ``attempts`` reset, in transactions of ``batch`` rows, calling
        ``progress(done, total)`` after each.  Respects ``max_rows``/``max_bytes``: stops
        when the queue is full (the rest stays in the DLQ).  Returns the number moved.

        Rows stored by :meth:`put_dead` (``queue_id`` 0: the raw event, never rendered for
        this sink) are skipped unless ``include_unrendered``: sending them would deliver
        raw bytes where the sink expects its own format."""
        rendered = "" if include_unrendered else " AND queue_id != 0"
        if batch < 1:
            raise ValueError("batch must be >= 1")
        wanted = None if ids is None else sorted(set(self._ids(ids)))
        with self._lock:
            # rows dead-lettered while the replay runs are not part of it
            max_id = self._read("SELECT coalesce(max(id), 0) FROM dead")[0][0]
            if wanted is None:
                total = self._read(f"SELECT count(*) FROM dead WHERE id <= ?{rendered}", (max_id,))[0][0]
            else:
                total = 0
                for chunk in _chunks(wanted):
                    marks = ",".join("?" * len(chunk))
                    total += self._read(f"SELECT count(*) FROM dead WHERE id IN ({marks}){rendered}",
                                        chunk)[0][0]
        done = 0
        cursor = 0  # position in `wanted`
        last_id = 0
        while True:
            with self._lock:
                def txn(conn):
                    nonlocal cursor, last_id
                    if wanted is None:
                        sel = conn.execute(
                            f"SELECT id, length(payload) FROM dead WHERE id > ? AND id <= ?{rendered} "
                            "ORDER BY id LIMIT ?", (last_id, max_id, batch)).fetchall()
                        more = len(sel) == batch
                    else:
                        part = wanted[cursor:cursor + batch]
                        sel = []
                        for chunk in _chunks(part):
                            marks = ",".join("?" * len(chunk))
                            sel.extend(conn.execute(
                                f"SELECT id, length(payload) FROM dead WHERE id IN ({marks}){rendered} "
                                f"ORDER BY id", chunk))
                        cursor += len(part)
                        more = cursor < len(wanted)
                        if not sel:
                            return 0, False, more
                    if not sel:
                        return 0, False, False
                    # respect the capacity limits
                    if self.max_rows is not None or self.max_bytes is not None:
                        have_rows, have_bytes = conn.execute(
                            "SELECT rows, bytes FROM totals").fetchone()
                        k = 0
                        size = 0
                        while k < len(sel):
                            if self.max_rows is not None and have_rows + k + 1 > self.max_rows:
                                break
                            if (self.max_bytes is not None
                                    and have_bytes + size + sel[k][1] > self.max_bytes):
                                break
                            size += sel[k][1]
                            k += 1
                        full = k < len(sel)
                        sel = sel[:k]
                    else:
                        full = False
                    if sel:
                        last_id = sel[-1][0]
                    moved = nbytes = 0
                    for chunk in _chunks([r[0] for r in sel]):
                        marks = ",".join("?" * len(chunk))
                        conn.execute(
                            f"INSERT INTO queue (payload, meta, enqueued_at, attempts, "
                            f"next_attempt_at, last_attempt_at, last_error) "
                            f"SELECT payload, meta, enqueued_at, 0, 0, last_attempt_at, "
                            f"'replayed from DLQ: ' || reason FROM dead WHERE id IN ({marks}) "
                            f"ORDER BY id", chunk)
                        for (size_,) in conn.execute(
                                f"DELETE FROM dead WHERE id IN ({marks}) "
                                f"RETURNING length(payload)", chunk):
                            moved += 1
                            nbytes += size_
                    conn.execute("UPDATE totals SET rows = rows + ?, bytes = bytes + ?, "
                                 "dead_rows = dead_rows - ?, dead_bytes = dead_bytes - ?",
                                 (moved, nbytes, moved, nbytes))
                    return moved, full, more

                moved, full, more = self._write(txn)
            done += moved
            self.stats["replayed"] += moved
            if progress is not None:
                progress(done, total)
            if full:
                log.warning("queue %s: full while replaying the DLQ; %d of %d replayed",
                            self.path, done, total)
                break
            if not more:
                break
        return done

    def purge(self, dlq: bool = False) -> int:
        """Delete every row of the queue (``dlq=False``) or of the DLQ (``dlq=True``).
        One transaction.  Returns the number deleted.  Purging the queue drops leases."""
        with self._lock:
            table, rcol, bcol = ("dead", "dead_rows", "dead_bytes") if dlq else ("queue", "rows", "bytes")

            def txn(conn):
                n = conn.execute(f"SELECT {rcol} FROM totals").fetchone()[0]
                conn.execute(f"DELETE FROM {table}")
                if not dlq:
                    conn.execute("DELETE FROM partial")
                conn.execute(f"UPDATE totals SET {rcol} = 0, {bcol} = 0")
                return n

            n = self._write_ack(txn)
            if not dlq:
                self._inflight.clear()
                self._inflight_retried = 0
                self._hwm_lowered = False
            self.stats["purged"] += n
            log.warning("queue %s: purged %d rows from the %s", self.path, n,
                        "DLQ" if dlq else "queue")
            return n

    # ------------------------------------------------------------------ lifecycle
    def checkpoint(self) -> None:
        """Fold the WAL into the database file and truncate it."""
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error as exc:
                    raise self._translate(exc) from exc

    def close(self) -> None:
        """Checkpoint (best effort) and close.  Leases are dropped (rows stay queued)."""
        with self._lock:
            conn, self._conn = self._conn, None
            self._inflight.clear()
            self._inflight_retried = 0
            if conn is not None:
                try:
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error:
                    pass
                conn.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> "DiskQueue":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DiskQueue({self.path!r}, synchronous={self.synchronous!r})"


def _item_id(item: "Item") -> int:
    return item.id


def _arr(blob: bytes | None) -> array:
    a = array("I")
    if blob:
        a.frombytes(blob)
    return a


def _row_live(n: int, payload_len: int, lens: bytes | None, done: bytes | None) -> tuple[int, int]:
    """(events, payload bytes) of a queue row that are not settled yet."""
    if not done:
        return n, payload_len
    d = _arr(done)
    if n == 1:
        return 0, 0
    ln = _arr(lens)
    return n - len(d), payload_len - sum(ln[o] for o in d)


def _count_queue(conn: sqlite3.Connection) -> tuple[int, int]:
    """Count the unsettled events and their payload bytes (scans the table)."""
    rows, nbytes = conn.execute(
        "SELECT coalesce(sum(n), 0), coalesce(sum(length(payload)), 0) FROM queue q "
        "WHERE NOT EXISTS (SELECT 1 FROM partial p WHERE p.id = q.id)").fetchone()
    for n, plen, lens, done in conn.execute(
            "SELECT q.n, length(q.payload), q.lens, p.done FROM queue q JOIN partial p ON p.id = q.id"):
        e, b = _row_live(n, plen, lens, done)
        rows += e
        nbytes += b
    return rows, nbytes


def _recount(conn: sqlite3.Connection) -> None:
    rows, nbytes = _count_queue(conn)
    conn.execute("UPDATE totals SET rows = ?, bytes = ?, "
                 "dead_rows = (SELECT count(*) FROM dead), "
                 "dead_bytes = (SELECT coalesce(sum(length(payload)), 0) FROM dead)", (rows, nbytes))


def _split(row) -> list[tuple[bytes, bytes | None]]:
    """A queue row (``_Q_COLS`` order) -> [(payload, meta_raw)] for each of its n events."""
    payload, meta, n, lens = row[1], row[2], row[8], row[9]
    if n == 1:
        return [(payload, meta)]
    ln = _arr(lens)
    out = []
    p = m = 0
    for k in range(n):
        pl = ln[k]
        ml = ln[n + k]
        out.append((payload[p:p + pl], meta[m:m + ml] if ml else None))
        p += pl
        m += ml
    return out


def pack_rows(payloads: list, metas: list, sizes: list | None = None) -> list[tuple]:
    """Pack events (parallel lists: payload bytes, metadata as JSON bytes or None) into queue
    rows of up to PACK_EVENTS events / PACK_BYTES bytes (an event larger than that gets a row
    of its own): ``[(n, payload, meta, lens, payload_bytes)]`` for :meth:`DiskQueue.put_rows`.
    Pure (no I/O): the ingest workers call it."""
    if sizes is None:
        sizes = list(map(len, payloads))
    total = len(payloads)
    cum = list(accumulate(sizes))
    out = []
    i = 0
    while i < total:
        base = cum[i - 1] if i else 0
        j = min(total, i + PACK_EVENTS)
        if cum[j - 1] - base > PACK_BYTES:
            j = max(i + 1, bisect_right(cum, base + PACK_BYTES, i, j))
        n = j - i
        if n == 1:
            out.append((1, payloads[i], metas[i], None, sizes[i]))
        else:
            ms = metas[i:j]
            lens = array("I", sizes[i:j])
            lens.extend([len(m) if m else 0 for m in ms])
            meta = b"".join([m for m in ms if m])
            out.append((n, b"".join(payloads[i:j]), meta or None, lens.tobytes(), cum[j - 1] - base))
        i = j
    return out


def unpack_rows(rows: list) -> list[tuple[bytes, bytes | None]]:
    """The inverse of :func:`pack_rows`: ``[(payload, meta)]``."""
    out = []
    for n, payload, meta, lens, _ in rows:
        out += _split((0, payload, meta, 0, 0, 0, 0, 0, n, lens))
    return out


def _pack(items: list[tuple[bytes, bytes | None]]) -> tuple[bytes, bytes | None, bytes | None]:
    """[(payload, meta_raw)] -> (payload, meta, lens) columns of one row."""
    if len(items) == 1:
        return items[0][0], items[0][1], None
    plens = [len(p) for p, _ in items]
    mlens = [len(m) if m else 0 for _, m in items]
    metas = b"".join([m for _, m in items if m])
    return b"".join([p for p, _ in items]), metas or None, array("I", plens + mlens).tobytes()


def _as_bytes(payload) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, (bytearray, memoryview)):
        return bytes(payload)
    raise TypeError(f"payload must be bytes, not {type(payload).__name__}")


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass


def _uri_path(path: str) -> str:
    from urllib.parse import quote

    return quote(os.path.abspath(path))

"""The disk API: :class:`DiskQueue` (see the package docstring, relay/queue/__init__.py, for
the file format, the delivery model and the crash semantics).  This module holds the
constructor, the enqueue side (``put_many``, ``put_rows``, ``put_dead``), the transaction
plumbing, introspection and the lifecycle; the other concerns are mixins:
:mod:`.delivery` (lease/ack/retry/dead_letter/release), :mod:`.recovery` (open, verify,
upgrade, quarantine, salvage), :mod:`.reserve` (disk-full reserve, space checks) and
:mod:`.admin` (list, replay, purge)."""
from __future__ import annotations

import fcntl
import logging
import os
import random
import sqlite3
import threading
import time

from ..logs import LogLimiter
from .admin import _AdminMixin
from .delivery import _DeliveryMixin
from .errors import _CORRUPTION_CODES, _SQLITE_FULL, QueueCorrupt, QueueDiskFull, QueueError, QueueFull, _code
from .items import RetryPolicy, _dumps, _excerpt
from .packing import _as_bytes, encode_metas, pack_rows
from .recovery import _RecoveryMixin
from .reserve import _ReserveMixin
from .schema import _rollback

__all__ = ["DiskQueue"]

log = logging.getLogger("relay.queue")
#: disk-full and dead-letter lines: at most one per queue and kind every 10 s (a full disk
#: fails every group commit and every ack until space comes back)
LIMITER = LogLimiter(10.0, log)


class DiskQueue(_DeliveryMixin, _AdminMixin, _RecoveryMixin, _ReserveMixin):
    """A durable FIFO queue for one sink.  See the package docstring (relay/queue/__init__.py)
    for the semantics.

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
        self._full_handled = 0          # stats["disk_full"] when the space was last given back
        self._reclaim_at = 0.0          # monotonic time of the last reclaim after a disk-full episode
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

    # ------------------------------------------------------------------ transactions
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
            LIMITER.error((self.path, "disk_full"), "queue %s: disk full: %s", self.path, exc)
            return QueueDiskFull(f"{self.path}: {exc}")
        if code in _CORRUPTION_CODES:
            log.error("queue %s: corruption or I/O error: %s", self.path, exc)
            return QueueCorrupt(f"{self.path}: {exc}")
        return QueueError(f"{self.path}: {exc}")

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
            metas = encode_metas(metas)
        if not all([type(p) is bytes for p in payloads]):
            payloads = [_as_bytes(p) for p in payloads]
        sizes = list(map(len, payloads))

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

    def put(self, payload: bytes, meta: dict | None = None) -> int:
        """Enqueue one row (one transaction: ~30x the cost per row of a group)."""
        return self.put_many([(payload, meta)])

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
            LIMITER.warning((self.path, "dead"), "queue %s: %d event(s) stored as dead letters: %s",
                            self.path, n, rows[0][3])
            return n

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

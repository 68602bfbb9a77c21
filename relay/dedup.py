"""The dedup store shared by the sinks that must never create a record twice (the XSOAR REST and
webhook sinks, the ``http`` sink's ticket presets ServiceNow and Jira).

Promise of those sinks: one remote record (incident, ticket) per dedup key, across retries,
restarts and dropped connections.  Per queued row they

1. look the key up here (a hit: the record exists; its id, version, closed flag and the digest
   of the last body sent decide between skip, update and close);
2. on a miss, search the remote system by the key (XSOAR: the ``relaydedupkey`` field,
   ServiceNow: ``correlation_id``, Jira: a label or a custom field) and keep what they find;
3. create only when both miss, and record the new id here *before* the row is acked.

A create whose answer was lost is found by the search of the retry, so the store is an
accelerator (no search per event, no search at all for a key seen before) and the search is
the safety net.  The store survives restarts (SQLite WAL, ``synchronous = NORMAL``: it
survives a crash of the relay, not necessarily of the OS; the search covers the rest), is
FIFO-capped at ``cap`` keys, and a file that is not our database is moved aside.

Synchronous and thread-safe: the sinks call it through ``asyncio.to_thread``.  A cluster-wide
claim (several relays sharing one destination) goes in front of :meth:`DedupStore.get` /
:meth:`DedupStore.put`; this module knows nothing of the remote APIs.
"""
from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .fsutil import private_dir, private_file
from .queue.errors import _SQLITE_FULL, _code

__all__ = ["DedupRecord", "DedupStore", "DedupStoreError", "store_path"]

log = logging.getLogger("relay.dedup")


class DedupStoreError(Exception):
    """The store could not be read or written (SQLite's error in the message);
    ``disk_full``: its filesystem is full.  The sinks give the batch back and try again
    later (relay/sinks/_http.py): nothing is lost, and a record created meanwhile is found by
    the search before create."""

    def __init__(self, msg: str, disk_full: bool = False) -> None:
        super().__init__(msg)
        self.disk_full = disk_full


@dataclass
class DedupRecord:
    """One key: ``incident_id`` is the remote record's id (an XSOAR incident id, a ServiceNow
    ``sys_id``, a Jira issue key; None when the remote side gave none, e.g. the XSOAR webhook)."""

    key: str
    incident_id: str | None
    version: int | None = None
    closed: bool = False
    digest: str | None = None


class DedupStore:
    """dedup_key -> (remote record id, version, closed, digest of the last body sent), in SQLite.

    FIFO-capped at ``cap`` keys (the oldest inserted go first; updates keep their place).
    Synchronous and thread-safe; the sinks call it through ``asyncio.to_thread``.  A file that
    cannot be opened as our database is moved aside and a fresh store is started: the store
    is an accelerator, the search before create is the safety net.
    """

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS dedup (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        key         TEXT NOT NULL UNIQUE,
        incident_id TEXT,
        version     INTEGER,
        closed      INTEGER NOT NULL DEFAULT 0,
        digest      TEXT,
        updated_at  REAL NOT NULL
    );
    """

    def __init__(self, path: str | os.PathLike, cap: int = 100_000) -> None:
        self.path = os.fspath(path)
        self.cap = max(1, int(cap))
        self._lock = threading.Lock()
        private_dir(Path(self.path).parent)
        try:
            self._conn = self._open()
        except sqlite3.DatabaseError as e:
            aside = f"{self.path}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
            log.error("dedup store %s is unreadable (%s); moved aside to %s, starting empty "
                      "(the search before create still prevents duplicates)", self.path, e, aside)
            for suffix in ("", "-wal", "-shm"):
                try:
                    os.replace(self.path + suffix, aside + suffix)
                except FileNotFoundError:
                    pass
            self._conn = self._open()
        self._count = self._conn.execute("SELECT count(*) FROM dedup").fetchone()[0]
        self._trim()

    def _open(self) -> sqlite3.Connection:
        private_file(self.path)     # 0600 before SQLite creates it (its -wal/-shm take its mode)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # survives a process crash; see module doc
            conn.executescript(self.SCHEMA)
            conn.execute("SELECT seq, key, incident_id, version, closed, digest FROM dedup LIMIT 1").fetchall()
        except BaseException:
            conn.close()
            raise
        return conn

    def __len__(self) -> int:
        return self._count

    @contextmanager
    def _errors(self, what: str):
        """SQLite's errors as :class:`DedupStoreError` (a full disk says so)."""
        try:
            yield
        except sqlite3.Error as e:
            raise DedupStoreError(f"dedup store {self.path}: {what} failed: {e}",
                                  disk_full=_code(e) == _SQLITE_FULL) from e

    def get(self, key: str) -> DedupRecord | None:
        with self._lock, self._errors("lookup"):
            row = self._conn.execute(
                "SELECT incident_id, version, closed, digest FROM dedup WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return DedupRecord(key, row[0], row[1], bool(row[2]), row[3])

    def put(self, rec: DedupRecord) -> None:
        with self._lock, self._errors("write"):
            conn = self._conn
            exists = conn.execute("SELECT 1 FROM dedup WHERE key = ?", (rec.key,)).fetchone() is not None
            conn.execute(
                "INSERT INTO dedup (key, incident_id, version, closed, digest, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET incident_id = excluded.incident_id, "
                "version = excluded.version, closed = excluded.closed, digest = excluded.digest, "
                "updated_at = excluded.updated_at",
                (rec.key, rec.incident_id, rec.version, int(rec.closed), rec.digest, time.time()))
            if not exists:
                self._count += 1
                self._trim()

    def delete(self, key: str) -> None:
        """Forget ``key`` (its remote record is gone)."""
        with self._lock, self._errors("delete"):
            cur = self._conn.execute("DELETE FROM dedup WHERE key = ?", (key,))
            self._count -= cur.rowcount

    def _trim(self) -> None:
        if self._count <= self.cap:
            return
        excess = self._count - self.cap
        self._conn.execute("DELETE FROM dedup WHERE seq IN (SELECT seq FROM dedup ORDER BY seq LIMIT ?)",
                           (excess,))
        self._count = self._conn.execute("SELECT count(*) FROM dedup").fetchone()[0]

    def keys(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT key FROM dedup ORDER BY seq")]

    @property
    def closed(self) -> bool:
        return self._conn is None

    def reopen(self) -> None:
        with self._lock:
            if self._conn is None:
                self._conn = self._open()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                except sqlite3.Error:
                    pass
                self._conn = None


def store_path(queue, sink_name: str, prefix: str) -> Path:
    """Next to the sink's queue file: ``<state_dir>/<prefix>-dedup-<sink>.db`` (the XSOAR sinks:
    ``xsoar-dedup-NAME.db``, the http sink: ``http-dedup-NAME.db``)."""
    qp = getattr(queue, "path", None)
    base = Path(qp).parent if qp else Path("state")
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", sink_name)
    return base / f"{prefix}-dedup-{safe}.db"

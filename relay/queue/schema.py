"""The SQL layout of a queue file (schema 2; the format is described in the package
docstring, relay/queue/__init__.py) and the small SQLite helpers every part shares.
Changing anything here changes the file format."""
from __future__ import annotations

import os
import sqlite3
from typing import Sequence

__all__ = ["SCHEMA_VERSION", "APPLICATION_ID"]

SCHEMA_VERSION = 2
APPLICATION_ID = 0x524C5951  # "RLYQ": marks our files; anything else is a foreign database

_IN_CHUNK = 500  # ids per "IN (...)" list

#: Page size of a new queue file (SQLite's default is 4096; an existing file keeps its own).  A
#: packed row is ~150 KB of overflow pages, and each page is a frame SQLite writes to the WAL
#: and copies at checkpoints: at 8 KiB a commit costs 2.9 -> 2.0 us per event and an ack
#: 1.4 -> 1.5 (bench/bench_delivery.py; 16 and 32 KiB cut commits further but cost acks more).
PAGE_SIZE = 8192

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


def _chunks(seq: Sequence, size: int = _IN_CHUNK):
    for i in range(0, len(seq), size):
        yield seq[i:i + size]


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass


def _uri_path(path: str) -> str:
    from urllib.parse import quote

    return quote(os.path.abspath(path))

"""relay.queue.open_queue / queue_path; the file the package writes is the format of
schema 2 byte for byte; relay.queue imports none of pipeline, server, sinks."""
from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
from array import array
from pathlib import Path

from relay.config import loads
from relay.metrics import REGISTRY
from relay.queue import DiskQueue, open_queue, queue_path

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- paths
CFG = '''
[relay]
state_dir = "{state}"
[sources.tcp]
type = "tcp"
address = "127.0.0.1:5514"
[routes.all]
match = 'format exists'
sinks = ["out"]
[sinks.out]
type = "file"
path = "/dev/null"
format = "json"
'''


def test_open_queue_and_queue_path(tmp_path, caplog):
    state = tmp_path / "state"
    cfg = loads(CFG.format(state=state))
    assert queue_path(state, "out") == state / "queue-out.db"
    q = open_queue(state, cfg.sinks["out"])
    try:
        assert q.path == str(state / "queue-out.db") and q.recovered_from is None
        assert q.max_rows == cfg.sinks["out"].queue.max_rows
        assert q.retry_policy.max_attempts == cfg.sinks["out"].retry.max_attempts
    finally:
        q.close()
    # a corrupted file: moved aside, logged under "relay" and counted, as relay.server does
    for suffix in ("", "-wal", "-shm"):
        Path(str(state / "queue-out.db") + suffix).unlink(missing_ok=True)
    (state / "queue-out.db").write_bytes(b"this is not a database" * 200)
    before = REGISTRY.value("relay_queue_recovered_total", sink="out")
    with caplog.at_level(logging.ERROR, logger="relay"):
        q = open_queue(state, cfg.sinks["out"])
    try:
        assert q.recovered_from and Path(q.recovered_from).exists()
        assert REGISTRY.value("relay_queue_recovered_total", sink="out") == before + 1
        assert any(r.name == "relay" and "sink out: queue file was corrupted" in r.getMessage()
                   for r in caplog.records)
    finally:
        q.close()


# --------------------------------------------------------------------------- file format
# the schema-2 file as relay/queue.py wrote it before the package (commit 4bb437b)
SCHEMA_2 = {
    ("table", "queue"): "CREATE TABLE queue (\n    id              INTEGER PRIMARY KEY AUTOINCREMENT,\n"
                        "    payload         BLOB    NOT NULL,\n    meta            BLOB,\n"
                        "    enqueued_at     REAL    NOT NULL,\n    attempts        INTEGER NOT NULL DEFAULT 0,\n"
                        "    next_attempt_at REAL    NOT NULL DEFAULT 0,\n    last_attempt_at REAL,\n"
                        "    last_error      TEXT,\n    n               INTEGER NOT NULL DEFAULT 1,\n"
                        "    lens            BLOB\n)",
    ("table", "partial"): "CREATE TABLE partial (\n    id   INTEGER PRIMARY KEY,\n    done BLOB NOT NULL\n)",
    ("index", "queue_retry_due"): "CREATE INDEX queue_retry_due ON queue(next_attempt_at) WHERE attempts > 0",
    ("table", "dead"): "CREATE TABLE dead (\n    id              INTEGER PRIMARY KEY AUTOINCREMENT,\n"
                       "    queue_id        INTEGER NOT NULL,\n    payload         BLOB    NOT NULL,\n"
                       "    meta            BLOB,\n    enqueued_at     REAL    NOT NULL,\n"
                       "    attempts        INTEGER NOT NULL,\n    last_attempt_at REAL,\n"
                       "    last_error      TEXT,\n    reason          TEXT    NOT NULL,\n"
                       "    dead_at         REAL    NOT NULL\n)",
    ("table", "totals"): "CREATE TABLE totals (\n    k          INTEGER PRIMARY KEY CHECK (k = 0),\n"
                         "    rows       INTEGER NOT NULL,\n    bytes      INTEGER NOT NULL,\n"
                         "    dead_rows  INTEGER NOT NULL,\n    dead_bytes INTEGER NOT NULL\n)",
    ("table", "sqlite_sequence"): "CREATE TABLE sqlite_sequence(name,seq)",
}


def test_file_written_by_the_package_is_schema_2_byte_for_byte(tmp_path):
    path = tmp_path / "q.db"
    q = DiskQueue(path)
    q.put_many([(b"aa", {"k": 1}), (b"bbb", None), (b"c", b'{"k":3}')], now=100.0)
    q.dead_letter(q.lease(1), "HTTP 400", now=200.0)
    q.close()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == 0x524C5951
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2       # incremental
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        master = {(t, n): s for t, n, s in conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL")}
        assert master == SCHEMA_2
        # one packed row of three events: ids 1..3, the row's id is its last event's
        lens = array("I", [2, 3, 1, 7, 0, 7]).tobytes()
        assert conn.execute("SELECT * FROM queue").fetchall() == [
            (3, b"aabbbc", b'{"k":1}{"k":3}', 100.0, 0, 0.0, None, None, 3, lens)]
        assert conn.execute("SELECT * FROM partial").fetchall() == [(3, array("I", [0]).tobytes())]
        assert conn.execute("SELECT * FROM dead").fetchall() == [
            (1, 1, b"aa", b'{"k":1}', 100.0, 1, 200.0, "HTTP 400", "HTTP 400", 200.0)]
        assert conn.execute("SELECT * FROM totals").fetchall() == [(0, 2, 4, 1, 2)]
    finally:
        conn.close()
    # and the schema check at open takes it as it is (no quarantine, no repair)
    q = DiskQueue(path)
    try:
        assert q.recovered_from is None and q.stats["totals_repaired"] == 0
        assert [i.payload for i in q.lease(10)] == [b"bbb", b"c"]
    finally:
        q.close()


def test_the_package_imports_none_of_pipeline_server_sinks():
    code = ("import sys, relay.queue; "
            "print(sorted(m for m in sys.modules if m.startswith(('relay.pipeline', 'relay.server', 'relay.sinks'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

"""relay.queue.GroupCommitter (relay/queue/commit.py) commits in submission order, plain
items and packed rows alike; relay.queue.open_queue / queue_path; the file the package
writes is the format of schema 2 byte for byte; relay.queue imports none of pipeline,
server, sinks."""
from __future__ import annotations

import asyncio
import logging
import sqlite3
import subprocess
import sys
from array import array
from pathlib import Path

import orjson
import pytest

from relay.config import loads
from relay.metrics import REGISTRY
from relay.queue import PACK_EVENTS, DiskQueue, GroupCommitter, open_queue, pack_rows, queue_path

ROOT = Path(__file__).resolve().parents[1]


def plain(tag: str, n: int) -> list[tuple[bytes, dict]]:
    return [(f"{tag}-{i:04d}".encode(), {"tag": tag, "i": i}) for i in range(n)]


def packed(tag: str, n: int) -> list[tuple]:
    """The same events as ``plain(tag, n)``, packed the way the ingest workers send them."""
    items = plain(tag, n)
    return pack_rows([p for p, _ in items], [orjson.dumps(m) for _, m in items])


ROWS_N = PACK_EVENTS + 5        # two packed rows per submission
ITEMS_N = 7


@pytest.mark.parametrize("max_rows", [None, 1000])   # 1000: caps too small for whole rows
@pytest.mark.parametrize("order", [
    ("rows", "items"),
    ("items", "rows"),
    ("rows", "items", "rows", "items"),
    ("items", "items", "rows", "rows", "items"),
])
def test_one_wake_up_commits_in_submission_order(tmp_path, order, max_rows):
    """Everything submitted before the committer wakes up is committed in the order it was
    submitted: what is submitted first gets the lower ids and is leased first.  Consecutive
    submissions of the same kind share one transaction."""
    sink = f"order-{'-'.join(order)}-{max_rows}"
    commits = REGISTRY.counter("relay_queue_commits_total", sink=sink)
    before = commits.value

    async def main():
        loop = asyncio.get_running_loop()
        q = DiskQueue(tmp_path / "q.db", max_rows=max_rows)
        c = GroupCommitter(sink, q, loop)
        try:
            # hold the committer's condition: every submission lands in the same wake-up
            with c._cv:
                futs = [c.submit_rows(packed(f"{k}{kind}", ROWS_N)) if kind == "rows"
                        else c.submit(plain(f"{k}{kind}", ITEMS_N))
                        for k, kind in enumerate(order)]
            await asyncio.wait_for(asyncio.gather(*futs), 20)
            return q.lease(10 ** 6)
        finally:
            c.close()
            q.close()

    got = asyncio.run(main())
    want = [p for k, kind in enumerate(order)
            for p, _ in plain(f"{k}{kind}", ROWS_N if kind == "rows" else ITEMS_N)]
    assert [i.payload for i in got] == want
    assert [i.meta["tag"] for i in got] == [m["tag"] for k, kind in enumerate(order)
                                            for _, m in plain(f"{k}{kind}", ROWS_N if kind == "rows" else ITEMS_N)]
    ids = [i.id for i in got]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    if max_rows is None:
        # one transaction per run of consecutive submissions of the same kind
        runs = 1 + sum(1 for a, b in zip(order, order[1:]) if a != b)
        assert commits.value - before == runs
    else:
        # packed rows were unpacked (caps too small for whole rows): one run of plain items,
        # in groups of at most max_rows // 2
        assert commits.value - before == -(-len(want) // (max_rows // 2))


def test_submission_order_holds_while_the_queue_is_full(tmp_path):
    """``block``: the committer waits for room and keeps the order (rows then items)."""
    async def main():
        loop = asyncio.get_running_loop()
        q = DiskQueue(tmp_path / "q.db", max_rows=4 * PACK_EVENTS + 20, full_policy="block")
        c = GroupCommitter("order-full", q, loop, retry_interval=0.02)
        try:
            q.put_many(plain("fill", 4 * PACK_EVENTS))
            with c._cv:
                f1 = c.submit_rows(packed("a", ROWS_N))
                f2 = c.submit(plain("b", ITEMS_N))
            got = []
            deadline = loop.time() + 20
            while not (f1.done() and f2.done() and q.depth() == 0) and loop.time() < deadline:
                items = q.lease(100)      # a consumer drains the queue: room comes in steps
                got += [i.payload for i in items]
                q.ack(items)
                await asyncio.sleep(0.01)
            await asyncio.gather(f1, f2)
            return got
        finally:
            c.close()
            q.close()

    got = asyncio.run(main())
    tail = [p for p in got if not p.startswith(b"fill-")]
    assert tail == [p for p, _ in plain("a", ROWS_N)] + [p for p, _ in plain("b", ITEMS_N)]


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

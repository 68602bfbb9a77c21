#!/usr/bin/env python3
"""Benchmark relay.queue.DiskQueue: enqueue and lease+ack with 250-byte rows.

Prints, for synchronous FULL and NORMAL and groups of 1, 100 and 1000 rows:
enqueue rows/s (wall) and CPU microseconds per row (process time), then
lease+ack rows/s and CPU us/row (lease n, ack the same n: one read and one
write transaction per group), and a baseline: bare sqlite3 inserts of the same
rows measured alternately in the same sitting (the host is shared and drifts,
so compare the queue with the baseline as a ratio).  Each row carries a small metadata dict like the
pipeline's (dedup key, event time, source, route).

    .venv/bin/python bench/bench_queue.py [--rows N] [--dir DIR] [--repeat R]

The state directory defaults to a temporary directory under /tmp (same disk as
the state directory of a real install on this machine).  Medians of --repeat runs.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from relay.queue import DiskQueue, RetryPolicy  # noqa: E402

PAYLOAD = (b"LEEF:2.0|RhythmX|SigmaIncident|1.0|created|^|src=10.1.2.3^dst=10.9.8.7^"
           b"usrName=jdoe^sev=8^cat=incident^risk_score=82^alarm_count=12^"
           b"incident_id=INC-7601d999^devTime=2026-03-13T04:30:00.123Z^entity=Primary Site^")
PAYLOAD = (PAYLOAD * 2)[:250]
assert len(PAYLOAD) == 250


def meta(i: int) -> dict:
    return {"dedup": f"INC-{i:08x}", "time": 1773376200.123, "source": "tcp:10.1.2.3",
            "route": "qradar"}


def run_enqueue(directory: str, sync: str, group: int, rows: int) -> tuple[float, float]:
    path = os.path.join(directory, f"enq-{sync}-{group}.db")
    q = DiskQueue(path, synchronous=sync, retry=RetryPolicy())
    groups = [[(PAYLOAD, meta(g * group + i)) for i in range(group)]
              for g in range(rows // group)]
    c0, w0 = time.process_time(), time.perf_counter()
    for g in groups:
        q.put_many(g)
    c1, w1 = time.process_time(), time.perf_counter()
    n = len(groups) * group
    assert q.depth() == n, (q.depth(), n)
    q.close()
    for suffix in ("", "-wal", "-shm"):
        try:
            os.remove(path + suffix)
        except FileNotFoundError:
            pass
    return n / (w1 - w0), (c1 - c0) / n * 1e6


def run_raw(directory: str, sync: str, group: int, rows: int) -> tuple[float, float]:
    """Baseline measured in the same sitting: bare sqlite3 executemany INSERT of the same
    rows (payload, orjson meta, time) into a plain WAL table, one transaction per group."""
    import orjson
    import sqlite3

    path = os.path.join(directory, f"raw-{sync}-{group}.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {sync}")
    conn.execute("CREATE TABLE q (id INTEGER PRIMARY KEY AUTOINCREMENT, payload BLOB NOT NULL, "
                 "meta BLOB, enqueued_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, "
                 "next_attempt_at REAL NOT NULL DEFAULT 0, last_attempt_at REAL, last_error TEXT)")
    groups = [[(PAYLOAD, meta(g * group + i)) for i in range(group)]
              for g in range(rows // group)]
    c0, w0 = time.process_time(), time.perf_counter()
    for g in groups:
        ts = time.time()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO q (payload, meta, enqueued_at) VALUES (?, ?, ?)",
                         [(p, orjson.dumps(m), ts) for p, m in g])
        conn.execute("COMMIT")
    c1, w1 = time.process_time(), time.perf_counter()
    conn.close()
    for suffix in ("", "-wal", "-shm"):
        try:
            os.remove(path + suffix)
        except FileNotFoundError:
            pass
    n = len(groups) * group
    return n / (w1 - w0), (c1 - c0) / n * 1e6


def run_drain(directory: str, sync: str, group: int, rows: int) -> tuple[float, float]:
    path = os.path.join(directory, f"drain-{sync}-{group}.db")
    q = DiskQueue(path, synchronous=sync)
    batch = [(PAYLOAD, meta(i)) for i in range(1000)]
    for _ in range(max(1, rows // 1000)):
        q.put_many(batch)
    total = q.depth()
    c0, w0 = time.process_time(), time.perf_counter()
    done = 0
    while True:
        items = q.lease(group)
        if not items:
            break
        q.ack(items)
        done += len(items)
    c1, w1 = time.process_time(), time.perf_counter()
    assert done == total and q.depth() == 0, (done, total, q.depth())
    q.close()
    for suffix in ("", "-wal", "-shm"):
        try:
            os.remove(path + suffix)
        except FileNotFoundError:
            pass
    return done / (w1 - w0), (c1 - c0) / done * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000, help="rows per run for groups >= 100")
    ap.add_argument("--rows1", type=int, default=2_000, help="rows per run for groups of 1")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="directory for the databases")
    args = ap.parse_args()
    directory = tempfile.mkdtemp(prefix="bench-queue-", dir=args.dir)
    try:
        print(f"# relay.queue benchmark: 250-byte rows, medians of {args.repeat} runs, dir {directory}")
        print(f"{'synchronous':<11} {'group':>5} | {'enqueue rows/s':>14} {'CPU us/row':>10} | "
              f"{'lease+ack rows/s':>16} {'CPU us/row':>10} | "
              f"{'raw sqlite insert rows/s':>24} {'CPU us/row':>10}")
        for sync in ("FULL", "NORMAL"):
            for group in (1, 100, 1000):
                rows = args.rows1 if group == 1 else args.rows
                enq, drn, raw = [], [], []
                for _ in range(args.repeat):  # alternate A B A B: the host drifts
                    enq.append(run_enqueue(directory, sync, group, rows))
                    raw.append(run_raw(directory, sync, group, rows))
                    drn.append(run_drain(directory, sync, group, rows))
                print(f"{sync:<11} {group:>5} | "
                      f"{statistics.median(r for r, _ in enq):>14,.0f} "
                      f"{statistics.median(c for _, c in enq):>10.1f} | "
                      f"{statistics.median(r for r, _ in drn):>16,.0f} "
                      f"{statistics.median(c for _, c in drn):>10.1f} | "
                      f"{statistics.median(r for r, _ in raw):>24,.0f} "
                      f"{statistics.median(c for _, c in raw):>10.1f}", flush=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()

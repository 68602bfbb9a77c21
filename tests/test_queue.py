"""Tests for relay.queue.DiskQueue: order, group commit, leases, retry schedule, DLQ,
replay, purge, full policies, crash safety (SIGKILL), corruption quarantine, disk full."""
from __future__ import annotations

import glob
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from relay.queue import (
    REASON_MAX,
    DeadItem,
    DiskQueue,
    Item,
    QueueCorrupt,
    QueueDiskFull,
    QueueError,
    QueueFull,
    RetryPolicy,
)
from tests.harness import seq_of

ROOT = Path(__file__).resolve().parents[1]


def rows(n: int, start: int = 0, size: int = 0) -> list[tuple[bytes, dict]]:
    out = []
    for i in range(start, start + n):
        payload = (b"row-%06d " % i).ljust(size, b"x") if size else b"row-%06d" % i
        out.append((payload, {"dedup": f"k{i}", "seq": i, "route": "qradar"}))
    return out


@pytest.fixture
def qpath(tmp_path) -> str:
    return str(tmp_path / "state" / "queue-qradar.db")


@pytest.fixture
def q(qpath):
    queue = DiskQueue(qpath, retry=RetryPolicy(base=10, factor=2, cap=100, max_attempts=5),
                      rng=random.Random(1))
    yield queue
    queue.close()


def count_statements(queue: DiskQueue) -> list[str]:
    seen: list[str] = []
    queue._conn.set_trace_callback(seen.append)
    return seen


# --------------------------------------------------------------------------- basics
def test_fifo_order_and_roundtrip(q):
    assert q.put_many(rows(3)) == 3
    assert q.put_many(rows(4, start=3)) == 4
    assert q.depth() == 7
    items = q.lease(100)
    assert [seq_of(i) for i in items] == list(range(7))
    assert items[0].payload == b"row-000000"
    assert items[0].meta == {"dedup": "k0", "seq": 0, "route": "qradar"}
    assert all(i.attempts == 0 for i in items)
    assert [i.id for i in items] == sorted(i.id for i in items)


def test_lease_limits_and_does_not_hand_out_twice(q):
    q.put_many(rows(10))
    a = q.lease(4)
    b = q.lease(4)
    c = q.lease(4)
    assert [seq_of(i) for i in a] == [0, 1, 2, 3]
    assert [seq_of(i) for i in b] == [4, 5, 6, 7]
    assert [seq_of(i) for i in c] == [8, 9]
    assert q.lease(4) == []
    assert q.inflight() == 10
    assert q.lease(0) == []


def test_group_commit_is_one_transaction(q):
    stmts = count_statements(q)
    assert q.put_many(rows(500)) == 500
    commits = [s for s in stmts if s.strip().upper() == "COMMIT"]
    begins = [s for s in stmts if s.strip().upper().startswith("BEGIN")]
    assert len(commits) == 1 and len(begins) == 1
    stmts.clear()
    q.ack(q.lease(500))
    assert len([s for s in stmts if s.strip().upper() == "COMMIT"]) == 1
    assert q.depth() == 0


def test_bad_payload_stores_nothing(q):
    batch = rows(5)
    batch[3] = ("a str is not bytes", {})
    with pytest.raises(TypeError):
        q.put_many(batch)
    assert q.depth() == 0
    assert q.put_many([(bytearray(b"ba"), None), (memoryview(b"mv"), {})]) == 2
    assert [i.payload for i in q.lease(5)] == [b"ba", b"mv"]


def test_ack_deletes_and_ignores_unknown(q):
    q.put_many(rows(5))
    items = q.lease(5)
    assert q.ack(items[:2]) == 2
    assert q.ack([items[0].id, 999999]) == 0
    assert q.depth() == 3
    assert q.size_bytes() == sum(len(i.payload) for i in items[2:])
    assert q.stats["acked"] == 2
    # acked rows never come back, unacked rows stay leased
    assert q.lease(10) == []


def test_ack_non_contiguous_and_duplicate_ids(q):
    q.put_many(rows(6, size=100))
    items = q.lease(6)
    assert q.ack([items[0].id, items[2].id, items[4].id, items[4].id]) == 3
    assert q.depth() == 3 and q.size_bytes() == 300
    q.release_all()
    assert [seq_of(i) for i in q.lease(10)] == [1, 3, 5]
    assert q.ack([items[1].id, items[1].id, items[3].id]) == 2  # duplicates: not a range
    assert [seq_of(i) for i in q.list()] == [5]


def test_release_gives_back_without_attempt_in_order(q):
    q.put_many(rows(8))
    first = q.lease(5)
    assert q.release([first[1], first[2].id]) == 2
    nxt = q.lease(4)
    assert [seq_of(i) for i in nxt] == [1, 2, 5, 6]
    assert all(i.attempts == 0 for i in nxt)
    assert q.stats["released"] == 2
    assert q.release_all() == 7
    assert [seq_of(i) for i in q.lease(100)] == list(range(8))


def test_reopen_makes_unacked_leases_available_again(qpath):
    q1 = DiskQueue(qpath)
    q1.put_many(rows(6))
    leased = q1.lease(4)
    q1.ack(leased[:1])
    q1.retry(leased[3:4], "503", now=1000.0, retry_after=50)
    q1.close()
    q2 = DiskQueue(qpath)
    try:
        assert q2.depth() == 5
        assert [seq_of(i) for i in q2.lease(10, now=1049.0)] == [1, 2, 4, 5]
        again = q2.lease(10, now=1050.0)
        assert [seq_of(i) for i in again] == [3]
        assert again[0].attempts == 1 and again[0].next_attempt_at == 1050.0
        assert again[0].last_error == "503"
    finally:
        q2.close()


# --------------------------------------------------------------------------- retry schedule
def test_retry_policy_defaults_and_bounds():
    p = RetryPolicy()
    assert (p.base, p.factor, p.cap, p.max_attempts) == (60.0, 2.0, 3600.0, 5)
    assert [p.ceiling(n) for n in range(1, 9)] == [60, 120, 240, 480, 960, 1920, 3600, 3600]
    rng = random.Random(7)
    for n in range(1, 12):
        draws = [p.delay(n, rng) for _ in range(400)]
        assert all(0.0 <= d <= min(3600.0, 60.0 * 2 ** (n - 1)) for d in draws)
        # full jitter: spread over the whole range, not a constant
        assert min(draws) < 0.25 * p.ceiling(n) and max(draws) > 0.75 * p.ceiling(n)
    assert RetryPolicy(base=1, factor=2, cap=1e9).ceiling(5000) == 1e9  # no overflow
    with pytest.raises(ValueError):
        RetryPolicy(factor=0.5)
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=-1)


def test_retry_backoff_within_full_jitter_bounds(qpath):
    policy = RetryPolicy(base=10, factor=2, cap=100, max_attempts=0)
    q = DiskQueue(qpath, retry=policy, rng=random.Random(3))
    try:
        q.put_many(rows(1))
        now = 1_000_000.0
        seen_delays = []
        for attempt in range(1, 12):
            items = q.lease(1, now=now)
            assert len(items) == 1 and items[0].attempts == attempt - 1
            assert q.retry(items, f"fail {attempt}", now=now) == 0
            row = q.list()[0]
            delay = row.next_attempt_at - now
            assert row.attempts == attempt
            assert 0.0 <= delay <= min(100.0, 10.0 * 2 ** (attempt - 1))
            seen_delays.append(delay)
            # not eligible before its time (unless the draw was ~0)
            if delay > 1e-6:
                assert q.lease(1, now=now + delay - 1e-6) == []
            now = row.next_attempt_at
        assert q.dlq_depth() == 0  # max_attempts=0: retry forever
        assert len(set(seen_delays)) == len(seen_delays)  # jitter really draws
        assert q.stats["retried"] == 11
    finally:
        q.close()


def test_retry_jitter_draw_is_shared_by_a_batch(q):
    q.put_many(rows(20))
    items = q.lease(20, now=0.0)
    q.retry(items, "timeout", now=0.0)
    ats = {i.next_attempt_at for i in q.list(limit=100)}
    assert len(ats) == 1 and 0.0 <= ats.pop() <= 10.0


def test_retry_after_is_honoured(q):
    q.put_many(rows(2))
    items = q.lease(2, now=1000.0)
    q.retry(items[:1], "429 Too Many Requests", now=1000.0, retry_after=42.0)
    q.retry(items[1:], "429", now=1000.0, retry_after=-5)  # in the past: now
    listed = {seq_of(i): i for i in q.list()}
    assert listed[0].next_attempt_at == 1042.0
    assert listed[1].next_attempt_at == 1000.0
    assert [seq_of(i) for i in q.lease(5, now=1041.9)] == [1]
    assert [seq_of(i) for i in q.lease(5, now=1042.0)] == [0]


def test_max_attempts_moves_to_dlq_with_reason(q):
    q.put_many(rows(3))
    enq = q.list()[0].enqueued_at
    now = 5000.0
    for attempt in range(1, 6):
        items = q.lease(1, now=now)
        assert [seq_of(i) for i in items] == [0]
        moved = q.retry(items, f"HTTP 503 upstream down #{attempt}", now=now)
        assert moved == (1 if attempt == 5 else 0)
        now += 1000.0
    assert q.depth() == 2 and q.dlq_depth() == 1
    dead = q.list(dlq=True)
    assert len(dead) == 1 and isinstance(dead[0], DeadItem)
    d = dead[0]
    assert d.attempts == 5
    assert "5 attempts" in d.reason and "HTTP 503 upstream down #5" in d.reason
    assert d.last_error == "HTTP 503 upstream down #5"
    assert d.dead_at == 9000.0 and d.last_attempt_at == 9000.0
    assert d.enqueued_at == enq
    assert d.payload == b"row-000000" and d.meta["seq"] == 0
    assert q.stats["dead_lettered"] == 1 and q.stats["retried"] == 4
    assert [seq_of(i) for i in q.lease(10, now=now)] == [1, 2]


def test_dead_letter_permanent_failure(q):
    q.put_many(rows(3))
    items = q.lease(3)
    body = "400 Bad Request: " + "x" * (REASON_MAX * 2)
    assert q.dead_letter(items[1:2], body, now=7.0) == 1
    d = q.list(dlq=True)[0]
    assert d.reason.startswith("400 Bad Request: xxx")
    assert len(d.reason) < REASON_MAX + 50  # excerpt, not the whole body
    assert d.attempts == 1 and d.dead_at == 7.0 and d.queue_id == items[1].id
    assert q.depth() == 2 and q.dlq_depth() == 1
    assert q.inflight() == 2


def test_retried_rows_keep_fifo_among_eligible(q):
    q.put_many(rows(6))
    items = q.lease(3, now=0.0)
    q.retry(items[1:2], "x", now=0.0, retry_after=10)
    q.ack([items[0], items[2]])
    assert [seq_of(i) for i in q.lease(10, now=100.0)] == [1, 3, 4, 5]


def test_next_due(q):
    assert q.next_due(now=0.0) is None
    q.put_many(rows(1))
    assert q.next_due(now=0.0) == 0.0
    q.retry(q.lease(1, now=0.0), "x", now=0.0, retry_after=30)
    assert q.next_due(now=10.0) == pytest.approx(20.0)
    q.lease(1, now=40.0)
    assert q.next_due(now=40.0) is None  # only row is leased


# --------------------------------------------------------------------------- DLQ operations
def _fill_dlq(q: DiskQueue, n: int) -> None:
    q.put_many(rows(n))
    q.dead_letter(q.lease(n), "422 unprocessable")


def test_replay_dlq_in_batches_with_progress(q):
    _fill_dlq(q, 2500)
    assert q.depth() == 0 and q.dlq_depth() == 2500
    calls = []
    stmts = count_statements(q)
    moved = q.replay_dlq(progress=lambda done, total: calls.append((done, total)), batch=1000)
    assert moved == 2500
    assert calls == [(1000, 2500), (2000, 2500), (2500, 2500)]
    assert len([s for s in stmts if s.strip().upper() == "COMMIT"]) == 3
    assert q.dlq_depth() == 0 and q.depth() == 2500
    items = q.lease(3000)
    assert [seq_of(i) for i in items] == list(range(2500))
    assert all(i.attempts == 0 for i in items)
    assert items[0].last_error.startswith("replayed from DLQ: 422")
    assert q.stats["replayed"] == 2500


def test_replay_selected_ids_and_capacity(qpath):
    q = DiskQueue(qpath, max_rows=5)
    try:
        _fill_dlq(q, 5)
        dead = q.list(dlq=True)
        assert q.replay_dlq(ids=[dead[3].id, dead[1].id, 424242]) == 2
        assert sorted(seq_of(i) for i in q.list()) == [1, 3]
        assert q.dlq_depth() == 3
        q.put_many(rows(2, start=100))
        # room for one more row: the replay stops there, the rest stays in the DLQ
        assert q.replay_dlq() == 1
        assert q.depth() == 5 and q.dlq_depth() == 2
    finally:
        q.close()


def test_purge(q):
    q.put_many(rows(10))
    q.dead_letter(q.lease(3), "gone")
    q.lease(2)
    assert q.purge() == 7
    assert q.depth() == 0 and q.inflight() == 0 and q.size_bytes() == 0
    assert q.dlq_depth() == 3
    assert q.purge(dlq=True) == 3
    assert q.dlq_depth() == 0
    q.put_many(rows(1, start=50))
    assert [seq_of(i) for i in q.lease(5)] == [50]


def test_list_and_ages(q):
    q.put_many(rows(5), now=100.0)
    q.put_many(rows(5, start=5), now=200.0)
    assert [seq_of(i) for i in q.list(limit=3, offset=4)] == [4, 5, 6]
    assert q.oldest_age(now=150.0) == 50.0
    q.ack(q.lease(5))
    assert q.oldest_age(now=250.0) == 50.0
    q.purge()
    assert q.oldest_age() is None
    assert q.list() == [] and q.list(dlq=True) == []


# --------------------------------------------------------------------------- full policies
def test_block_policy_raises_and_stores_nothing_of_the_batch(qpath):
    q = DiskQueue(qpath, max_rows=10, full_policy="block")
    try:
        assert q.put_many(rows(8)) == 8
        with pytest.raises(QueueFull) as ei:
            q.put_many(rows(5, start=8))
        assert not isinstance(ei.value, QueueDiskFull)
        assert q.depth() == 8
        assert q.stats["blocked_full"] == 1 and q.stats["dropped_full"] == 0
        assert q.put_many(rows(2, start=8)) == 2
        with pytest.raises(QueueFull):
            q.put_many(rows(1, start=10))
        q.ack(q.lease(3))
        assert q.put_many(rows(3, start=10)) == 3
        assert [seq_of(i) for i in q.lease(100)] == list(range(3, 13))
        with pytest.raises(ValueError):  # could never fit: would block forever
            q.put_many(rows(11))
    finally:
        q.close()


def test_block_policy_max_bytes(qpath):
    q = DiskQueue(qpath, max_bytes=1000, full_policy="block")
    try:
        assert q.put_many(rows(3, size=300)) == 3
        with pytest.raises(QueueFull):
            q.put_many(rows(1, start=3, size=101))
        assert q.depth() == 3 and q.size_bytes() == 900
        assert q.put_many(rows(1, start=3, size=100)) == 1
    finally:
        q.close()


def test_drop_newest_counts(qpath):
    q = DiskQueue(qpath, max_rows=10, max_bytes=10_000, full_policy="drop_newest")
    try:
        assert q.put_many(rows(8)) == 8
        assert q.put_many(rows(5, start=8)) == 2
        assert q.stats["dropped_full"] == 3
        assert q.put_many(rows(4, start=13)) == 0
        assert q.stats["dropped_full"] == 7
        assert [seq_of(i) for i in q.lease(100)] == list(range(10))
        assert q.stats["enqueued"] == 10
    finally:
        q.close()


# --------------------------------------------------------------------------- concurrency
def test_threads_put_and_consume_without_loss_or_duplicates(q):
    producers, groups, per = 4, 25, 40
    total = producers * groups * per
    got: list[int] = []
    errors: list[BaseException] = []

    def produce(p: int) -> None:
        try:
            for g in range(groups):
                start = (p * groups + g) * per
                q.put_many(rows(per, start=start))
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    def consume() -> None:
        deadline = time.monotonic() + 30
        try:
            while len(got) < total and time.monotonic() < deadline:
                items = q.lease(64)
                if not items:
                    time.sleep(0.001)
                    continue
                half = len(items) // 2
                q.release(items[half:])  # some go back and must come out again
                got.extend(seq_of(i) for i in items[:half] or items)
                q.ack(items[:half] or items)
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    threads.append(threading.Thread(target=consume))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(got) == list(range(total))
    assert q.depth() == 0


# --------------------------------------------------------------------------- crash safety
CHILD = textwrap.dedent("""
    import sys
    from relay.queue import DiskQueue
    path, sync = sys.argv[1], sys.argv[2]
    q = DiskQueue(path, synchronous=sync)
    seq = int(sys.argv[3])
    while True:
        q.put_many([(b"%d" % i, {"seq": i}) for i in range(seq, seq + 50)])
        seq += 50
        sys.stdout.write("%d\\n" % seq)   # everything below seq was acknowledged
        sys.stdout.flush()
""")


@pytest.mark.parametrize("sync", ["FULL", "NORMAL"])
def test_sigkill_after_put_many_returns_loses_nothing(qpath, sync):
    os.makedirs(os.path.dirname(qpath), exist_ok=True)
    rng = random.Random(sync)
    acked = 0
    for round_ in range(3):
        target = acked + rng.randrange(300, 2000)
        proc = subprocess.Popen([sys.executable, "-c", CHILD, qpath, sync, str(acked)],
                                stdout=subprocess.PIPE, cwd=str(ROOT), text=True)
        try:
            while True:
                line = proc.stdout.readline()
                assert line, f"child died early (rc={proc.poll()})"
                acked = int(line)
                if acked >= target:
                    proc.send_signal(signal.SIGKILL)  # right after a put returned
                    break
        finally:
            proc.kill()
            proc.wait(10)
            proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        q = DiskQueue(qpath, synchronous=sync)
        try:
            assert q.recovered_from is None
            stored = [int(i.payload) for i in q.list(limit=10**7)]
            # every acknowledged row is there, in order, and groups are all-or-nothing
            assert stored[:acked] == list(range(acked))
            assert stored == list(range(len(stored)))
            assert len(stored) % 50 == 0
            assert q.depth() == len(stored)
            acked = len(stored)  # the next child continues after what is stored
        finally:
            q.close()


# --------------------------------------------------------------------------- corruption
def _make_queue_file(path: str, n: int, size: int = 250) -> None:
    q = DiskQueue(path)
    q.put_many(rows(n, size=size))
    q.close()  # checkpoints: everything is in the main file
    assert not os.path.exists(path + "-wal") or os.path.getsize(path + "-wal") == 0


def _assert_fresh_queue_works(q: DiskQueue) -> None:
    before = q.depth()
    assert q.put_many(rows(3, start=900_000)) == 3
    items = q.lease(10 ** 6)
    assert [seq_of(i) for i in items][-3:] == [900_000, 900_001, 900_002]
    q.ack(items)
    assert q.depth() == 0 and before + 3 == len(items)


def test_garbage_header_is_moved_aside(qpath, caplog):
    _make_queue_file(qpath, 100)
    with open(qpath, "r+b") as f:
        f.write(b"this is not an sqlite file" * 4)
    q = DiskQueue(qpath)
    try:
        assert q.stats["corrupt_recovered"] == 1
        assert q.recovered_from and os.path.exists(q.recovered_from)
        assert ".corrupt-" in q.recovered_from
        assert glob.glob(qpath + ".corrupt-*")
        assert "not a database" in q.recovery_reason.lower() or "notadb" in q.recovery_reason.lower()
        assert q.recovered_reason == q.recovery_reason
        assert any("moved aside" in r.getMessage() for r in caplog.records)
        assert q.depth() == 0
        _assert_fresh_queue_works(q)
    finally:
        q.close()


def test_truncated_file_is_moved_aside_and_salvaged(qpath):
    _make_queue_file(qpath, 3000)
    full = os.path.getsize(qpath)
    os.truncate(qpath, full // 2)
    q = DiskQueue(qpath)
    try:
        assert q.stats["corrupt_recovered"] == 1
        assert os.path.getsize(q.recovered_from) == full // 2  # evidence kept as it was
        n = q.depth()
        assert n == q.stats["salvaged"] < 3000
        seqs = [seq_of(i) for i in q.list(limit=10 ** 6)]
        assert seqs == sorted(seqs) and set(seqs) <= set(range(3000))
        _assert_fresh_queue_works(q)
    finally:
        q.close()


def test_garbage_pages_in_the_middle_salvage_the_readable_rows(qpath):
    _make_queue_file(qpath, 3000)
    page = 4096
    with open(qpath, "r+b") as f:
        f.seek(page * 40)
        f.write(random.Random(5).randbytes(page * 3))
    q = DiskQueue(qpath)
    try:
        assert q.stats["corrupt_recovered"] == 1
        assert q.recovered_from is not None
        got = q.list(limit=10 ** 6)
        assert 0 < len(got) <= 3000
        assert q.stats["salvaged"] == len(got)
        for item in got:  # salvaged rows are intact originals
            assert item.payload == (b"row-%06d " % seq_of(item)).ljust(250, b"x")
        _assert_fresh_queue_works(q)
    finally:
        q.close()


def test_truncated_to_a_few_bytes(qpath):
    _make_queue_file(qpath, 10)
    os.truncate(qpath, 50)
    q = DiskQueue(qpath)
    try:
        assert q.stats["corrupt_recovered"] == 1
        _assert_fresh_queue_works(q)
    finally:
        q.close()


def test_foreign_schema_is_moved_aside_intact(qpath):
    os.makedirs(os.path.dirname(qpath))
    conn = sqlite3.connect(qpath)
    conn.execute("CREATE TABLE customers (name TEXT)")
    conn.execute("INSERT INTO customers VALUES ('precious')")
    conn.commit()
    conn.close()
    q = DiskQueue(qpath)
    try:
        assert q.stats["corrupt_recovered"] == 1
        assert "not a relay queue" in q.recovery_reason
        _assert_fresh_queue_works(q)
    finally:
        q.close()
    kept = sqlite3.connect(q.recovered_from)
    assert kept.execute("SELECT name FROM customers").fetchall() == [("precious",)]
    kept.close()


def test_wrong_schema_version_is_moved_aside_and_rows_salvaged(qpath):
    _make_queue_file(qpath, 20)
    conn = sqlite3.connect(qpath)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    q = DiskQueue(qpath)
    try:
        assert q.stats["corrupt_recovered"] == 1 and "schema version 99" in q.recovery_reason
        assert [seq_of(i) for i in q.lease(100)] == list(range(20))  # same columns: salvaged
    finally:
        q.close()


def test_wrong_totals_are_repaired_at_open(qpath):
    _make_queue_file(qpath, 7)
    conn = sqlite3.connect(qpath)
    conn.execute("UPDATE totals SET rows = 12345")
    conn.commit()
    conn.close()
    q = DiskQueue(qpath)
    try:
        assert q.depth() == 7 and q.stats["totals_repaired"] == 1
        assert q.recovered_from is None
    finally:
        q.close()


def test_locked_database_is_not_treated_as_corrupt(qpath):
    _make_queue_file(qpath, 5)
    other = sqlite3.connect(qpath, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("DELETE FROM queue WHERE id = 1")
    try:
        q = DiskQueue(qpath, busy_timeout=0.2)
        try:
            with pytest.raises(QueueError) as ei:
                q.put_many(rows(1))
            assert not isinstance(ei.value, (QueueCorrupt, QueueFull))
            assert q.recovered_from is None
        finally:
            other.execute("ROLLBACK")
        assert q.put_many(rows(1, start=5)) == 1
        assert q.depth() == 6
        q.close()
    finally:
        other.close()
    assert not glob.glob(qpath + ".corrupt-*")


def test_unopenable_path_raises_instead_of_quarantine(tmp_path):
    target = tmp_path / "dir-not-file.db"
    target.mkdir()
    with pytest.raises(QueueError):
        DiskQueue(str(target))
    assert target.is_dir() and not glob.glob(str(target) + ".corrupt-*")


# --------------------------------------------------------------------------- disk full
def test_disk_full_raises_and_recovers_after_space_is_freed(q):
    q.put_many(rows(200, size=250))
    pages = q._conn.execute("PRAGMA page_count").fetchone()[0]
    q._conn.execute(f"PRAGMA max_page_count = {pages + 20}")
    stored = 200
    with pytest.raises(QueueDiskFull) as ei:
        for g in range(1000):
            stored += q.put_many(rows(50, start=stored, size=250))
    assert isinstance(ei.value, QueueFull)  # callers may treat it like "block"
    assert q.depth() == stored  # the failing group stored nothing, earlier ones all
    assert q.stats["disk_full"] >= 1
    assert q.stats["enqueued"] == stored
    # the queue still works: delivering frees space (ack works while full).  Space comes
    # back a packed row (one put_many group) at a time: settling part of a row frees none.
    items = q.lease(150)
    assert [seq_of(i) for i in items] == list(range(150))
    assert q.ack(items) == 150
    with pytest.raises(QueueDiskFull):   # 50 events of the first group are still queued
        q.put_many(rows(50, start=stored, size=250))
    items = q.lease(50)
    assert [seq_of(i) for i in items] == list(range(150, 200))
    assert q.ack(items) == 50
    assert q.put_many(rows(50, start=stored, size=250)) == 50
    rest = q.lease(10 ** 6)
    assert [seq_of(i) for i in rest] == list(range(200, stored + 50))
    q.ack(rest)
    assert q.depth() == 0


def test_disk_full_on_retry_keeps_lease_state(q):
    q.put_many(rows(300, size=250))
    items = q.lease(10)
    pages = q._conn.execute("PRAGMA page_count").fetchone()[0]
    q._conn.execute(f"PRAGMA max_page_count = {pages}")
    long_error = "E" * 200_000  # the update needs new pages
    try:
        q.retry(items, long_error)
    except QueueDiskFull:
        assert q.inflight() == 10  # nothing changed in memory: caller may try again
        assert all(i.attempts == 0 for i in q.list(limit=10))
    q._conn.execute("PRAGMA max_page_count = 1073741823")
    q.retry(items, "short")
    assert q.inflight() == 0


# --------------------------------------------------------------------------- misc
def test_bad_arguments(qpath):
    with pytest.raises(ValueError):
        DiskQueue(qpath, synchronous="OFF")
    with pytest.raises(ValueError):
        DiskQueue(qpath, full_policy="drop_oldest")
    with pytest.raises(ValueError):
        DiskQueue(qpath, max_rows=0)


def test_closed_queue_raises(qpath):
    q = DiskQueue(qpath)
    q.close()
    with pytest.raises(QueueError):
        q.put_many(rows(1))
    q.close()  # idempotent


def test_item_repr_and_lazy_meta(q):
    q.put_many([(b"p", None)])
    item = q.lease(1)[0]
    assert isinstance(item, Item) and item.meta == {} and "id=1" in repr(item)


def test_quarantine_moves_the_wal_along_and_salvages_from_it(qpath):
    _make_queue_file(qpath, 3000)  # checkpointed into the main file
    proc = subprocess.Popen([sys.executable, "-c", CHILD, qpath, "NORMAL", "3000"],
                            stdout=subprocess.PIPE, cwd=str(ROOT), text=True)
    try:
        assert int(proc.stdout.readline()) == 3050
        proc.send_signal(signal.SIGKILL)  # no checkpoint: the new group is only in the -wal
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
    assert os.path.getsize(qpath + "-wal") > 0
    with open(qpath, "r+b") as f:  # damage pages of the main file that the WAL does not hold
        f.seek(4096 * 40)
        f.write(random.Random(9).randbytes(4096 * 3))
    q = DiskQueue(qpath)
    try:
        assert q.stats["corrupt_recovered"] == 1
        assert os.path.getsize(q.recovered_from + "-wal") > 0  # evidence kept together
        seqs = [seq_of(i) for i in q.list(limit=10 ** 6)]
        # the acknowledged group lives only in the WAL (the child may have put more
        # groups before the kill landed): all of it is back, in order
        tail = [x for x in seqs if x >= 3000]
        assert tail == list(range(3000, 3000 + len(tail))) and len(tail) >= 50
        assert 50 < len(seqs) < 3000 + len(tail)
        _assert_fresh_queue_works(q)
    finally:
        q.close()


def test_put_dead_stores_unrenderable_events_with_reason(tmp_path):
    q = DiskQueue(tmp_path / "q.db", max_rows=1)
    q.put_many([(b"fills the queue", None)])
    assert q.put_dead([(b"raw 1", {"k": 1}, "render failed: ValueError: sev"), (b"raw 2", None, "x")]) == 2
    assert q.depth() == 1 and q.dlq_depth() == 2          # not subject to the queue cap
    d = q.list(dlq=True)
    assert [x.payload for x in d] == [b"raw 1", b"raw 2"] and d[0].reason.startswith("render failed")
    q.close()
    q = DiskQueue(tmp_path / "q.db")                       # durable
    assert q.dlq_depth() == 2


def test_replay_skips_unrendered_dead_letters(tmp_path):
    q = DiskQueue(tmp_path / "q.db")
    q.put_many([(b"rendered", None)])
    q.dead_letter(q.lease(10), "HTTP 400")
    q.put_dead([(b"raw event", None, "render failed")])
    assert q.replay_dlq() == 1
    assert [i.payload for i in q.lease(10)] == [b"rendered"]
    assert q.dlq_depth() == 1
    assert q.replay_dlq(include_unrendered=True) == 1


# --------------------------------------------------------------------------- packed rows
def test_a_group_is_packed_into_few_rows_and_ids_stay_per_event(q):
    from relay.queue import PACK_EVENTS
    q.put_many(rows(PACK_EVENTS * 2 + 10))
    assert q._conn.execute("SELECT count(*) FROM queue").fetchone()[0] == 3
    items = q.lease(10 ** 6)
    assert [seq_of(i) for i in items] == list(range(PACK_EVENTS * 2 + 10))
    ids = [i.id for i in items]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # one id per event, consecutive
    assert all(i.payload == b"row-%06d" % seq_of(i) for i in items)
    assert q.depth() == len(items) and q.size_bytes() == sum(len(i.payload) for i in items)


def test_partial_settlement_of_a_packed_row_survives_a_restart(qpath):
    q = DiskQueue(qpath)
    q.put_many(rows(10))
    items = q.lease(10)
    assert q.ack(items[0:3]) == 3
    assert q.dead_letter(items[5:6], "HTTP 400") == 1
    assert q.retry(items[8:9], "HTTP 503") == 0
    assert q.depth() == 6 and q.dlq_depth() == 1
    assert q.ack(items[0:3]) == 0            # already settled: ignored
    q.close()                               # the rest is still leased: dropped with the process
    q = DiskQueue(qpath)
    try:
        assert q.depth() == 6 and q.stats["totals_repaired"] == 0
        again = q.lease(10, now=time.time() + 10 ** 5)
        assert [seq_of(i) for i in again] == [3, 4, 6, 7, 8, 9]   # order kept, retried one too
        assert [i.attempts for i in again] == [0, 0, 0, 0, 1, 0]
        assert [i.id for i in again] == [items[k].id for k in (3, 4, 6, 7, 8, 9)]
        assert [seq_of(i) for i in q.list()] == [3, 4, 6, 7, 8, 9]
        assert [seq_of(i) for i in q.list(limit=2, offset=3)] == [7, 8]
        assert q.list(dlq=True)[0].queue_id == items[5].id
        assert q.ack(again) == 6 and q.depth() == 0 and q.size_bytes() == 0
        assert q._conn.execute("SELECT count(*) FROM queue").fetchone()[0] == 0
        assert q._conn.execute("SELECT count(*) FROM partial").fetchone()[0] == 0
    finally:
        q.close()


def test_leases_cut_across_packed_rows(q):
    q.put_many(rows(7))
    q.put_many(rows(5, start=7))
    a = q.lease(4)
    b = q.lease(4)
    c = q.lease(10)
    assert [seq_of(i) for i in a + b + c] == list(range(12))
    q.release(b)
    assert [seq_of(i) for i in q.lease(2)] == [4, 5]
    assert q.next_due() == 0.0
    q.ack(a + c)
    assert [seq_of(i) for i in q.lease(10)] == [6, 7]
    assert q.next_due() is None


def test_schema_1_file_is_upgraded_in_place(qpath):
    os.makedirs(os.path.dirname(qpath))
    conn = sqlite3.connect(qpath, isolation_level=None)
    conn.executescript("""
        CREATE TABLE queue (id INTEGER PRIMARY KEY AUTOINCREMENT, payload BLOB NOT NULL, meta BLOB,
            enqueued_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL DEFAULT 0, last_attempt_at REAL, last_error TEXT);
        CREATE INDEX queue_retry_due ON queue(next_attempt_at) WHERE attempts > 0;
        CREATE TABLE dead (id INTEGER PRIMARY KEY AUTOINCREMENT, queue_id INTEGER NOT NULL,
            payload BLOB NOT NULL, meta BLOB, enqueued_at REAL NOT NULL, attempts INTEGER NOT NULL,
            last_attempt_at REAL, last_error TEXT, reason TEXT NOT NULL, dead_at REAL NOT NULL);
        CREATE TABLE totals (k INTEGER PRIMARY KEY CHECK (k = 0), rows INTEGER NOT NULL,
            bytes INTEGER NOT NULL, dead_rows INTEGER NOT NULL, dead_bytes INTEGER NOT NULL);
        INSERT INTO totals VALUES (0, 3, 24, 0, 0);
        PRAGMA application_id = 1380735313;
        PRAGMA user_version = 1;
    """)
    for i in range(3):
        conn.execute("INSERT INTO queue (payload, meta, enqueued_at) VALUES (?, ?, 1.0)",
                     (b"row-%06d" % i, b'{"seq": %d}' % i))
    conn.close()
    q = DiskQueue(qpath)
    try:
        assert q.recovered_from is None and q.depth() == 3
        q.put_many(rows(3, start=3))
        items = q.lease(10)
        assert [seq_of(i) for i in items] == list(range(6))
        assert [i.id for i in items] == list(range(1, 7))
        assert q.ack(items) == 6 and q.depth() == 0
        assert q._conn.execute("PRAGMA user_version").fetchone()[0] == 2
    finally:
        q.close()


def test_two_writers_on_one_file_never_reuse_ids(qpath):
    a = DiskQueue(qpath)
    b = DiskQueue(qpath)
    try:
        for k in range(5):
            a.put_many(rows(3, start=k * 6))
            b.put_many(rows(3, start=k * 6 + 3))
        items = a.lease(100)
        assert [seq_of(i) for i in items] == list(range(30))
        assert len({i.id for i in items}) == 30
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("seed", range(12))
def test_packed_rows_behave_like_a_simple_model(tmp_path, seed):
    """Random put / lease / ack / retry / dead letter / release / reopen against a plain
    per-event model: packing must be invisible through the API."""
    rng = random.Random(seed)
    path = str(tmp_path / "q.db")
    policy = RetryPolicy(base=1, factor=2, cap=8, max_attempts=3)
    q = DiskQueue(path, retry=policy, rng=random.Random(seed))
    model: dict[int, list] = {}     # seq -> [attempts, next_at]
    dead: list[int] = []
    leased: dict[int, object] = {}  # seq -> Item
    now = 1000.0
    seq = 0
    try:
        for _ in range(120):
            op = rng.random()
            if op < 0.2:
                k = rng.choice([1, 2, 5, 40, 300])
                q.put_many(rows(k, start=seq), now=now)
                for s in range(seq, seq + k):
                    model[s] = [0, 0.0]
                seq += k
            elif op < 0.45:
                n = rng.choice([1, 3, 50, 500])
                got = q.lease(n, now=now)
                want = sorted(s for s, (a, at) in model.items() if s not in leased and at <= now)[:n]
                assert [seq_of(i) for i in got] == want
                for i in got:
                    assert i.attempts == model[seq_of(i)][0]
                    assert i.payload == b"row-%06d" % seq_of(i)
                    leased[seq_of(i)] = i
            elif leased and op < 0.85:
                pick = rng.sample(sorted(leased), rng.randint(1, len(leased)))
                items = [leased.pop(s) for s in pick]
                action = rng.choice(["ack", "ack", "retry", "dead", "release"])
                if action == "ack":
                    assert q.ack(items) == len(items)
                    for s in pick:
                        del model[s]
                elif action == "retry":
                    moved = q.retry(items, "boom", now=now, retry_after=rng.choice([0, 5]))
                    gone = 0
                    for s in pick:
                        model[s][0] += 1
                        if model[s][0] >= policy.max_attempts:
                            del model[s]
                            dead.append(s)
                            gone += 1
                    assert moved == gone
                    # the schedule (retry_after, or jitter for the first attempts): read it back
                    for i in q.list(limit=10 ** 6):
                        if seq_of(i) in model:
                            model[seq_of(i)][1] = i.next_attempt_at
                elif action == "dead":
                    assert q.dead_letter(items, "400") == len(items)
                    for s in pick:
                        del model[s]
                        dead.append(s)
                else:
                    assert q.release(items) == len(items)
            elif op < 0.9:
                now += rng.choice([1, 6, 20])
            else:
                q.close()
                q = DiskQueue(path, retry=policy, rng=random.Random(seed))
                leased.clear()
            assert q.depth() == len(model)
            free = [at for s, (a, at) in model.items() if s not in leased]
            due = q.next_due(now=now)
            assert (due is None) == (not free)
            if free:
                assert due == pytest.approx(max(0.0, min(free) - now))
            assert q.size_bytes() == sum(len(b"row-%06d" % s) for s in model)
            assert q.dlq_depth() == len(dead)
        assert sorted(seq_of(i) for i in q.list(limit=10 ** 6)) == sorted(model)
        assert sorted(d.meta["seq"] for d in q.list(limit=10 ** 6, dlq=True)) == sorted(dead)
    finally:
        q.close()


def test_packed_rows_respect_the_byte_limit_and_keep_big_events_whole(q):
    from relay.queue import PACK_BYTES
    big = PACK_BYTES * 3 // 4
    items = [(b"a" * big, {"seq": 0}), (b"b" * 10, {"seq": 1}), (b"c" * big, {"seq": 2}),
             (b"d" * (PACK_BYTES + 5), {"seq": 3}), (b"e" * 10, None), (b"f" * 10, {"seq": 5})]
    assert q.put_many(items) == 6
    sizes = [r[0] for r in q._conn.execute("SELECT length(payload) FROM queue ORDER BY id")]
    assert all(s <= PACK_BYTES for s in sizes if s != PACK_BYTES + 5) and len(sizes) == 4
    got = q.lease(10)
    assert [i.payload for i in got] == [p for p, _ in items]
    assert [i.meta for i in got] == [m or {} for _, m in items]
    assert q.size_bytes() == sum(len(p) for p, _ in items)


def test_rows_packed_elsewhere_go_in_as_they_are(qpath):
    from relay.queue import PACK_EVENTS, pack_rows, unpack_rows
    items = rows(PACK_EVENTS + 7)
    payloads = [p for p, _ in items]
    metas = [orjson_dumps(m) for _, m in items]
    packed = pack_rows(payloads, metas)
    assert [r[0] for r in packed] == [PACK_EVENTS, 7]
    assert unpack_rows(packed) == list(zip(payloads, metas))
    q = DiskQueue(qpath)
    try:
        assert q.put_rows(packed) == PACK_EVENTS + 7
        assert q._conn.execute("SELECT count(*) FROM queue").fetchone()[0] == 2
        got = q.lease(10 ** 6)
        assert [seq_of(i) for i in got] == list(range(PACK_EVENTS + 7))
        assert q.size_bytes() == sum(map(len, payloads))
    finally:
        q.close()
    # drop_newest keeps whole rows; block stores nothing
    small = DiskQueue(str(Path(qpath).parent / "small.db"), max_rows=PACK_EVENTS + 3,
                      full_policy="drop_newest")
    try:
        assert small.put_rows(packed) == PACK_EVENTS and small.stats["dropped_full"] == 7
    finally:
        small.close()
    blocked = DiskQueue(str(Path(qpath).parent / "blocked.db"), max_rows=3 * PACK_EVENTS)
    try:
        assert blocked.put_rows(packed + packed) == 2 * (PACK_EVENTS + 7)
        with pytest.raises(QueueFull):
            blocked.put_rows(packed)
        assert blocked.depth() == 2 * (PACK_EVENTS + 7)
    finally:
        blocked.close()


def orjson_dumps(obj) -> bytes:
    import orjson
    return orjson.dumps(obj)


# ---------------------------------------------------------------------------- lease_packed
def _lease_row(it) -> tuple:
    return (it.id, it.payload, it._meta_raw or None, it.meta, it.enqueued_at, it.attempts, it.next_attempt_at,
            it.last_attempt_at, it.last_error)


def test_lease_packed_leases_what_lease_does(tmp_path):
    """Two queues given the same random operations (packed and single puts, leases of every
    size, acks, retries, releases and dead letters of whole leases and of their parts, time
    moving on), one leasing with ``lease`` and one with ``lease_packed``: every lease hands
    out the same events, in the same order, with the same payload, metadata, times, attempts
    and error, read through iteration, ``ids_of``, ``payloads_of`` and slices; settling a
    Leased or its slices leaves the same queue as settling the Items.  Both of
    ``lease_packed``'s paths run (a Leased, and the list when a retried row is due, an event
    was given back or a row is partly settled)."""
    from relay.queue import Leased, ids_of, pack_rows, payloads_of
    from relay.queue.packing import encode_metas
    rng = random.Random(19)
    policy = RetryPolicy(base=1, factor=2, cap=8, max_attempts=3)
    qa = DiskQueue(str(tmp_path / "a.db"), retry=policy, rng=random.Random(1))
    qb = DiskQueue(str(tmp_path / "b.db"), retry=policy, rng=random.Random(1))
    now = 1000.0
    outstanding: list = []
    kinds = {"leased": 0, "list": 0, "empty": 0}

    def settle(a, b, how: str) -> None:
        if how == "ack":
            assert qa.ack(a) == qb.ack(b)
        elif how == "retry":
            after = rng.choice([0, 1, 5])
            assert qa.retry(a, "boom", now=now, retry_after=after) == qb.retry(b, "boom", now=now, retry_after=after)
        elif how == "release":
            assert qa.release(a) == qb.release(b)
        else:
            assert qa.dead_letter(a, "bad", now=now) == qb.dead_letter(b, "bad", now=now)

    for step in range(700):
        now += rng.choice([0.0, 0.0, 0.5, 2.0, 7.0])
        op = rng.random()
        if op < 0.3 or not outstanding and op >= 0.6:
            n = rng.choice([1, 3, 50, 256, 300, 700])
            size = rng.choice([10, 600, 3000, 300_000])      # 300 KB: over PACK_BYTES, rows of one
            if size == 300_000:
                n = min(n, 3)
            evs = [(b"%d:" % i + bytes([65 + i % 26]) * rng.randint(0, size),
                    {"k": i, "step": step} if rng.random() < 0.8 else None) for i in range(n)]
            if rng.random() < 0.6:
                packed = pack_rows([p for p, _ in evs], encode_metas([m for _, m in evs]))
                assert qa.put_rows(packed, now=now) == qb.put_rows(packed, now=now) == n
            else:
                assert qa.put_many(evs, now=now) == qb.put_many(evs, now=now) == n
        elif op < 0.6:
            n = rng.choice([1, 5, 100, 257, 2000])
            a = qa.lease(n, now=now)
            b = qb.lease_packed(n, now=now)
            kinds["empty" if not b else "leased" if type(b) is Leased else "list"] += 1
            assert len(b) == len(a)
            want = [_lease_row(x) for x in a]
            # the bulk readers and slices first, while the Leased has made no Item
            assert ids_of(b) == [x.id for x in a]
            assert payloads_of(b) == [x.payload for x in a]
            if a:
                i = rng.randrange(len(a))
                j = rng.randrange(i, len(a) + 1)
                assert ids_of(b[i:j]) == [x.id for x in a[i:j]]
                assert payloads_of(b[i:j]) == [x.payload for x in a[i:j]]
                assert [_lease_row(x) for x in b[i:j]] == want[i:j]
                assert _lease_row(b[-1]) == want[-1]
            assert [_lease_row(x) for x in b[0:len(b)]] == want
            if a:
                outstanding.append((a, b))
        else:
            a, b = outstanding.pop(rng.randrange(len(outstanding)))
            k = rng.randint(0, len(a))
            first, rest = rng.choice(["ack", "ack", "retry", "release", "dead"]), rng.choice(["ack", "release"])
            if k:
                settle(a[:k], b[:k], first)
            if k < len(a):
                settle(a[k:], b[k:], rest)
        assert qa.depth() == qb.depth()
    for a, b in outstanding:
        settle(a, b, "ack")
    assert qa.depth() == qb.depth() and qa.dlq_depth() == qb.dlq_depth()
    last = qa.lease(10**6, now=now + 100)
    assert [_lease_row(x) for x in last] == [_lease_row(x) for x in qb.lease(10**6, now=now + 100)]
    assert qa.size_bytes() == qb.size_bytes() == sum(len(x.payload) for x in last)     # the totals kept
    assert qa.depth() == len(last)
    assert kinds["leased"] > 30 and kinds["list"] > 10, kinds
    qa.close()
    qb.close()


def test_leased_is_a_sequence_of_the_same_items(q):
    """A Leased as a sequence: indexing, negative indexes, steps, iteration, ``in``; its
    Items are made once (the same objects every time); a slice of a slice; settling it."""
    from relay.queue import Leased, ids_of, pack_rows, payloads_of
    from relay.queue.packing import encode_metas
    evs = rows(600, size=700)
    q.put_rows(pack_rows([p for p, _ in evs], encode_metas([m for _, m in evs])))
    b = q.lease_packed(520)
    assert type(b) is Leased and len(b) == 520 and "520 events" in repr(b)
    s = b[100:400]
    assert type(s) is Leased and len(s) == 300
    assert ids_of(s[10:20]) == ids_of(b)[110:120]
    assert payloads_of(s[-5:]) == [p for p, _ in evs[395:400]]
    assert len(b[600:700]) == 0 and ids_of(b[600:700]) == []
    assert [it.payload for it in b[::100]] == [evs[i][0] for i in range(0, 520, 100)]
    items = list(b)
    assert b[0] is items[0] and b[-1] is items[-1] and items[5] in b
    assert [it.meta for it in items] == [m for _, m in evs[:520]]
    assert b[10:20] == items[10:20]      # once made, a slice is a list of the same Items
    assert q.ack(s) == 300 and q.release(b[:100]) == 100 and q.ack(b[400:]) == 120
    assert ids_of(q.lease(1000)) == ids_of(b)[:100] + list(range(ids_of(b)[-1] + 1, ids_of(b)[-1] + 81))


def test_new_files_get_8k_pages_and_old_files_keep_theirs(tmp_path, monkeypatch):
    """A new queue file has PAGE_SIZE pages; a file made with SQLite's 4 KiB keeps them (and its
    events) when the relay opens it; the WAL checkpoint threshold is ~4 MB either way."""
    from relay.queue import recovery
    from relay.queue.schema import PAGE_SIZE
    assert PAGE_SIZE == 8192
    q = DiskQueue(str(tmp_path / "new.db"))
    assert q._conn.execute("PRAGMA page_size").fetchone()[0] == 8192
    assert q._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == (4000 << 10) // 8192
    q.close()
    monkeypatch.setattr(recovery, "PAGE_SIZE", 4096)
    q = DiskQueue(str(tmp_path / "old.db"))
    q.put_many(rows(300, size=2000))
    q.close()
    monkeypatch.undo()
    q = DiskQueue(str(tmp_path / "old.db"))
    assert q._conn.execute("PRAGMA page_size").fetchone()[0] == 4096
    assert q._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    assert [it.payload for it in q.lease(1000)] == [p for p, _ in rows(300, size=2000)]
    q.close()

"""Operator commands of :class:`relay.queue.DiskQueue` (``relay queue list/replay/purge``;
``relay queue status`` reads ``depth``/``size_bytes``/``dlq_depth``/``oldest_age``).  They
may run from another process while the relay consumes the queue (SQLite locking)."""
from __future__ import annotations

import logging
from typing import Callable, Iterable

from .items import DeadItem, Item, _loads
from .packing import _arr, _split
from .schema import _D_COLS, _Q_COLS, _Q_FROM, _chunks

log = logging.getLogger("relay.queue")


class _AdminMixin:
    """list, replay_dlq, purge (uses ``path``, ``stats``, ``max_rows``, ``max_bytes``,
    ``_lock``, ``_inflight``, ``_read``, ``_write``, ``_write_ack``, ``_ids``)."""

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

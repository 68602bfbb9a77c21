"""The consumer side of :class:`relay.queue.DiskQueue`: lease, ack, retry, dead letter,
release, next_due, and settling events of packed rows inside a transaction (the
``partial`` table; retrying part of a row cuts it into runs).  Leases live in memory."""
from __future__ import annotations

import logging
import sqlite3
import time
from array import array
from bisect import bisect_left, bisect_right
from itertools import accumulate, repeat
from typing import Iterable

from .errors import QueueDiskFull
from .items import DeadItem, Item, Leased, _excerpt, _item_id
from .packing import PACK_EVENTS, _arr, _pack, _split
from .schema import _Q_COLS, _Q_DUE, _Q_FROM, _chunks

log = logging.getLogger("relay.queue")

_RUN_GAP = 256             # ids further apart than this are looked up separately


class _DeliveryMixin:
    """Lease and settle (uses ``path``, ``stats``, ``retry_policy``, ``_rng``, ``_lock``,
    ``_inflight``, ``_fresh_hwm``, ``_hwm_lowered``, ``_inflight_retried``, ``_read``,
    ``_write_ack`` of the :class:`DiskQueue`)."""

    @staticmethod
    def _ids(ids_or_items: Iterable) -> list[int]:
        if type(ids_or_items) is Leased:
            return ids_or_items.ids()
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

    # ------------------------------------------------------------------ leases
    def lease(self, n: int, now: float | None = None) -> list[Item]:
        """Up to ``n`` events with ``next_attempt_at <= now``, oldest (lowest id) first, that are
        not already leased; they are marked in-flight in memory until ``ack``/``retry``/
        ``dead_letter``/``release``.  Read-only (no write transaction)."""
        return self._lease(n, now, False)

    def lease_packed(self, n: int, now: float | None = None) -> "Leased | list[Item]":
        """:meth:`lease`, the same events, as a :class:`Leased` when they all lie in fresh runs
        of packed rows (no retried row due, nothing given back below the high-water mark, no
        row partly settled: the usual case), so that no object is made per event; else the
        list :meth:`lease` returns.  For senders that take the batch in bulk
        (:meth:`Leased.spans`, :func:`relay.queue.ids_of`)."""
        return self._lease(n, now, True)

    def _lease(self, n: int, now: float | None, packed: bool):
        if n <= 0:
            return []
        now = time.time() if now is None else now
        with self._lock:
            inflight = self._inflight
            hwm = self._fresh_hwm
            if packed and not self._hwm_lowered:
                runs = self._runs(hwm, n, now)
                if runs is not None:
                    got = 0
                    for run in runs:
                        first = run[0]
                        k = len(run[2]) - 1
                        inflight.update(zip(range(first, first + k), repeat(0, k)))
                        got += k
                        hwm = first + k - 1
                    self._fresh_hwm = hwm
                    return Leased(runs, got)
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

    def _runs(self, hwm: int, n: int, now: float) -> list | None:
        """The fresh events :meth:`lease` would take, up to ``n``, as runs of packed rows
        (:class:`Leased`), or None when a retried row is due or a row is partly settled (the
        caller then leases event by event).  Rows above the high-water mark hold no leased
        event unless :meth:`release` lowered it (the caller checks)."""
        if self._inflight_retried or self._read(
                f"SELECT q.id FROM {_Q_DUE} WHERE q.attempts > 0 AND q.next_attempt_at <= ? LIMIT 1", (now,)):
            return None
        runs: list = []
        got = 0
        sql = (f"SELECT {_Q_COLS} FROM {_Q_FROM} WHERE q.id > ? AND q.attempts = 0 "
               "ORDER BY q.id LIMIT ?")
        for rid, payload, meta, enq, att, nxt, lat, lerr, cnt, lens, done in \
                self._rows(sql, (), hwm, max(2, n // PACK_EVENTS + 1)):
            first = rid - cnt + 1
            # a row the last lease cut: its events up to the mark are leased or settled
            k0 = hwm + 1 - first if hwm >= first else 0
            if done and max(_arr(done)) >= k0:
                return None
            if cnt == 1:
                po = [0, len(payload)]
                mo = [0, len(meta)] if meta else None
            else:
                ln = _arr(lens)
                po = list(accumulate(ln[:cnt], initial=0))
                mo = list(accumulate(ln[cnt:], initial=0)) if meta else None
            k = min(cnt - k0, n - got)
            if k0 or k < cnt:
                po = po[k0:k0 + k + 1]
                if mo is not None:
                    mo = mo[k0:k0 + k + 1]
            runs.append((first + k0, payload, po, meta, mo, enq, att, nxt, lat, lerr))
            got += k
            if got >= n:
                break
        return runs

    def _rows(self, sql: str, params: tuple, after: int, want: int):
        """The rows ``sql`` selects (in id order; its last two parameters are "id > ?" and the
        LIMIT), read ``want`` at a time, then twice as many each time, as the caller iterates."""
        while True:
            rows = self._read(sql, (*params, after, want))
            yield from rows
            if len(rows) < want:
                return
            after = rows[-1][0]
            want *= 2

    def _collect(self, sql: str, params: tuple, after: int, lo: int, n: int,
                 check_inflight: bool = True) -> list[Item]:
        """Events of the rows ``sql`` selects (in id order; its last two parameters are "id >
        ?" and the LIMIT), id >= ``lo``, not settled and not in flight, up to ``n``; reads
        rows a few at a time.  ``check_inflight=False``: the caller knows none of them can
        be in flight."""
        inflight = self._inflight if check_inflight else {}
        out: list[Item] = []
        for rid, payload, meta, enq, att, nxt, lat, lerr, cnt, lens, done in \
                self._rows(sql, params, after, max(4, n // 64)):
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
        return out

    def _forget(self, ids: list[int]) -> None:
        attempts = list(map(self._inflight.pop, ids, repeat(0, len(ids))))
        self._inflight_retried -= len(attempts) - attempts.count(0)

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

    # ------------------------------------------------------------------ settling
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

    # ------------------------------------------------------------------ packed rows, inside a transaction
    @staticmethod
    def _overlapping(conn: sqlite3.Connection, eids: list[int], cols: str) -> list:
        """Inside a transaction: the queue rows (``id, n, <cols>``) holding any of the sorted,
        distinct event ids ``eids``.  Rows are disjoint id ranges ``id - n + 1 .. id``, so
        for a run of ids from lo to hi they are the rows from the first with id >= lo up
        to the first that starts after hi."""
        out = []
        i, m = 0, len(eids)
        while i < m:
            if eids[-1] - eids[i] == m - 1 - i:     # the rest is one run of consecutive ids
                j = m - 1
            else:
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
            if not done and b - a == n:         # the whole row (the usual ack)
                nbytes += plen
                events += n
                deletes.append(rid)
                if data:
                    taken.append((row[5:], list(range(n))))
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

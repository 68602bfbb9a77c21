"""Group commit: :class:`GroupCommitter` collects the batches submitted for one queue (from
the event loop, or packed rows from the ingest workers) and writes everything submitted
meanwhile in one SQLite transaction, on its own thread.

A committer is the only writer of its sink's queue file: the pipeline (its listeners' and
pull sources' events) and the ingest workers' rows all go through it.  It commits in
submission order, so what was submitted first is committed first.  It logs under
``relay.pipeline``, where it lived before, so log filters and alerts keep matching.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Callable

from ..logs import LogLimiter
from ..metrics import REGISTRY
from .disk import DiskQueue
from .errors import QueueDiskFull, QueueFull
from .packing import PACK_BYTES, PACK_EVENTS, unpack_rows

log = logging.getLogger("relay.pipeline")   # the name it logged under in relay/pipeline.py
_LIMITER = LogLimiter(10.0, log)

__all__ = ["GroupCommitter"]


class GroupCommitter:
    """Collects batches for one queue and commits them together on a dedicated thread.

    ``submit(items)`` returns an asyncio future resolved (on the loop) once the items are
    durable.  A full queue with policy ``block`` (or a full disk) keeps the futures
    pending and retries every ``retry_interval`` seconds: the sources stay paused, which
    is the backpressure.  ``drop_newest`` is applied by the queue and counted there.
    What is pending at a wake-up is committed in submission order; consecutive
    submissions of the same kind (``submit``, ``submit_rows``) share a transaction.
    """

    def __init__(self, name: str, queue: DiskQueue, loop: asyncio.AbstractEventLoop,
                 on_commit: Callable[[], None] | None = None, retry_interval: float = 0.5) -> None:
        self.name = name
        self.queue = queue
        self.loop = loop
        self.on_commit = on_commit
        self.retry_interval = retry_interval
        self._cv = threading.Condition()
        self._pending: list = []       # [(items, future)]
        self._dead: list = []          # [(payload, meta, reason)]
        self._pending_n = 0
        self._closed = False
        self.blocked_reason: str | None = None
        self._enq = REGISTRY.counter("relay_enqueued_total", sink=name)
        self._dropped = REGISTRY.counter("relay_queue_dropped_total", sink=name)
        self._commits = REGISTRY.counter("relay_queue_commits_total", sink=name)
        self._dead_n = REGISTRY.counter("relay_dead_lettered_total", sink=name)
        self._thread = threading.Thread(target=self._run, name=f"commit-{name}", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return self._pending_n

    def submit(self, items: list) -> asyncio.Future:
        """``[(payload, meta)]`` -> a future resolved once they are durable."""
        return self._submit(0, items, len(items))

    def submit_rows(self, rows: list) -> asyncio.Future:
        """Events already packed by :func:`relay.queue.pack_rows` (from the ingest workers)."""
        return self._submit(1, rows, sum(r[0] for r in rows))

    def _submit(self, kind: int, items: list, n: int) -> asyncio.Future:
        fut = self.loop.create_future()
        with self._cv:
            if self._closed:
                fut.set_exception(RuntimeError(f"sink {self.name}: queue closed"))
                return fut
            self._pending.append((kind, items, fut))
            self._pending_n += n
            self._cv.notify()
        return fut

    def submit_dead(self, payload: bytes, meta: dict, reason: str) -> None:
        with self._cv:
            self._dead.append((payload, meta, reason))
            self._cv.notify()

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is pending, then stop the thread."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout)

    def _resolve(self, futs, exc: BaseException | None = None) -> None:
        def done():
            for f in futs:
                if not f.done():
                    if exc is None:
                        f.set_result(None)
                    else:
                        f.set_exception(exc)
        try:
            self.loop.call_soon_threadsafe(done)
        except RuntimeError:  # loop closed during shutdown
            pass

    def _run(self) -> None:
        warned = 0.0
        while True:
            with self._cv:
                while not self._pending and not self._dead and not self._closed:
                    self._cv.wait()
                if not self._pending and not self._dead and self._closed:
                    return
                batch, self._pending = self._pending, []
                dead, self._dead = self._dead, []
            # commit in submission order: runs of consecutive submissions of one kind (plain
            # items, packed rows) in the order they came, so what was submitted first is
            # committed first; each run is merged and cut into groups that fit the caps
            runs: list = []                        # [(kind, [submitted lists])]
            small = None
            for kind, b, _ in batch:
                if kind:
                    if small is None:
                        small = _small_caps(self.queue)
                    if small:                      # caps too small for whole packed rows
                        kind, b = 0, unpack_rows(b)
                if runs and runs[-1][0] == kind:
                    runs[-1][1].append(b)
                else:
                    runs.append((kind, [b]))
            futs = [f for _, _, f in batch]
            groups = []
            for kind, parts in runs:
                merged = [x for b in parts for x in b]
                if merged:
                    groups += [(kind, g) for g in (_row_groups(merged, self.queue) if kind
                                                   else _groups(merged, self.queue))]
            if dead:
                try:
                    self.queue.put_dead([(p, m, r) for p, m, r in dead])
                except Exception as e:  # keep trying: these are accepted events too
                    _LIMITER.error((self.name, "dead"), "sink %s: cannot store %d unrenderable event(s) in the "
                                   "dead-letter table: %s", self.name, len(dead), e)
                    with self._cv:
                        self._dead[:0] = dead
                    if not self._closed:
                        time.sleep(min(self.retry_interval, 0.5))   # not a hot loop on a full disk
                else:   # render failures are dead letters like any other: counted where stored
                    self._dead_n.value += len(dead)
            self._commit_groups(groups, futs, warned)

    def _commit_groups(self, groups: list, futs: list, warned: float = 0.0) -> None:
        """``groups``: [(kind, items)], kind 0 = [(payload, meta)], 1 = packed rows."""
        from collections import deque
        total = sum(_events(kind, g) for kind, g in groups)
        committed = 0
        todo = deque((kind, g) for kind, g in groups if g)
        while todo:
            kind, items = todo.popleft()
            try:
                n = self.queue.put_rows(items) if kind else self.queue.put_many(items)
            except (QueueFull, QueueDiskFull) as e:
                if isinstance(e, QueueDiskFull) and len(items) > 1:
                    # a group too big for the space left: commit it in smaller pieces
                    half = len(items) // 2
                    todo.appendleft((kind, items[half:]))
                    todo.appendleft((kind, items[:half]))
                    continue
                self.blocked_reason = str(e)
                now = time.monotonic()
                if now - warned > 10:
                    log.warning("sink %s: queue cannot take more events (%s); sources paused until it drains",
                                self.name, e)
                    warned = now
                with self._cv:
                    if self._closed:
                        self._resolve(futs, RuntimeError(f"sink {self.name}: shutting down with a full queue"))
                        self._pending_n -= total - committed
                        return
                    self._cv.wait(self.retry_interval)
                todo.appendleft((kind, items))
                continue
            except Exception as e:
                log.error("sink %s: enqueue failed: %s", self.name, e)
                self._resolve(futs, e)
                with self._cv:
                    self._pending_n -= total - committed
                return
            self.blocked_reason = None
            self._commits.value += 1
            self._enq.value += n
            size = _events(kind, items)
            if n < size:
                self._dropped.value += size - n
            committed += size
            if self.on_commit is not None and todo:
                try:  # let the sink start draining while the rest waits for room
                    self.loop.call_soon_threadsafe(self.on_commit)
                except RuntimeError:
                    pass
        with self._cv:
            self._pending_n -= total
        self._resolve(futs)
        if self.on_commit is not None:
            try:
                self.loop.call_soon_threadsafe(self.on_commit)
            except RuntimeError:
                pass


def _small_caps(queue) -> bool:
    mr, mb = getattr(queue, "max_rows", None), getattr(queue, "max_bytes", None)
    return bool((mr and mr < 4 * PACK_EVENTS) or (mb and mb < 4 * PACK_BYTES))


def _events(kind: int, items: list) -> int:
    return sum(r[0] for r in items) if kind else len(items)


def _row_groups(rows: list, queue) -> list[list]:
    """Like :func:`_groups` for packed rows (whole rows; a row alone may exceed the caps'
    half, never the caps: rows hold at most relay.queue.PACK_EVENTS events)."""
    limit = 5000
    if getattr(queue, "max_rows", None):
        limit = max(1, min(limit, queue.max_rows // 2 or 1))
    max_bytes = getattr(queue, "max_bytes", None)
    byte_limit = max(1, max_bytes // 2) if max_bytes else None
    out, cur, n, size = [], [], 0, 0
    for r in rows:
        if cur and (n + r[0] > limit or (byte_limit is not None and size + r[4] > byte_limit)):
            out.append(cur)
            cur, n, size = [], 0, 0
        cur.append(r)
        n += r[0]
        size += r[4]
    if cur:
        out.append(cur)
    return out


def _groups(items: list, queue) -> list[list]:
    """Split a merged batch into groups that can each fit the queue's caps (a group
    larger than the caps would never fit under the ``block`` policy)."""
    limit = 5000
    if getattr(queue, "max_rows", None):
        limit = max(1, min(limit, queue.max_rows // 2 or 1))
    max_bytes = getattr(queue, "max_bytes", None)
    byte_limit = max(1, max_bytes // 2) if max_bytes else None
    if len(items) <= limit and byte_limit is None:
        return [items]
    out, cur, size = [], [], 0
    for it in items:
        n = len(it[0])
        if cur and (len(cur) >= limit or (byte_limit is not None and size + n > byte_limit)):
            out.append(cur)
            cur, size = [], 0
        cur.append(it)
        size += n
    if cur:
        out.append(cur)
    return out

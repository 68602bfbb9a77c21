"""The delivery loop shared by every sink: queue -> ``send`` -> ack | retry | dead-letter.

A :class:`Sink` owns one :class:`~relay.queue.DiskQueue` and runs one asyncio task
(:meth:`Sink.run`).  Sinks never share a task, a queue or a connection, so one sink's failure
(dead peer, blocked credentials, slow disk) never stalls another.

Loop
----
``lease(batch_size)`` -> ``await send(items)`` -> settle the batch::

    success                       ack            relay_sent_total
    RetryableError(retry_after)   retry()        relay_retried_total  (counts an attempt;
                                                 rows that exhaust max_attempts -> DLQ)
    UnavailableError(retry_after) release()      the destination is unreachable or the
                                                 connection broke: the rows are not at fault,
                                                 no attempt is counted, the sink pauses for
                                                 retry_after (its reconnect backoff).  With
                                                 ``count_attempt=True`` (a batch that keeps
                                                 breaking the connection) it is retry()ed.
    PermanentError                dead_letter()  relay_dead_lettered_total, with the reason
    AuthError                     release()      the sink BLOCKS: nothing is sent, every event
                                                 stays queued, relay_sink_blocked=1, an alert
                                                 is logged; a probe batch is tried every
                                                 ``auth_recheck`` seconds (60 s)
    any other exception           retry()        logged with its traceback (reason=internal)

Every error also counts ``relay_send_errors_total{sink, reason}`` (once per failed batch) and
sets ``relay_sink_up`` to 0; a success sets it to 1.  ``send`` may also return an iterable of
``(item, exception)`` pairs for rows that failed on their own (e.g. an oversize datagram);
those are settled per their exception and every other row of the batch is acked.

Several batches may be in flight at once (``max_inflight``, 1 by default; the syslog stream
sink pipelines).  When several slots are free, one ``lease`` (one worker-thread hop) takes up
to ``lease_max_rows`` (2000) rows, at least one batch, and splits them into batches of
``batch_size``, each delivered and settled on its own.  The queue's methods are synchronous SQLite (``ack`` fsyncs): they run in a
worker thread (``asyncio.to_thread``) so the event loop never waits on the disk.  Acks are
group-committed: batches that succeed while an ack transaction runs are acked together in
the next one (at most ``ack_group_max`` = 5000 rows per transaction).

Idle: when nothing is due the loop sleeps until ``next_due()`` or until :meth:`Sink.notify`
(the pipeline calls it after enqueueing), at most ``idle_recheck`` seconds (5 s, so rows put
by another process, e.g. ``relay queue replay``, are noticed).  It never busy-loops.

Stop: when ``stop`` is set no new batch is leased; the batches in flight get
``drain_timeout`` seconds to finish, then they are cancelled; every row still leased is
released (available again at once, no attempt counted) and :meth:`Sink.close` is called.

Gauges ``relay_queue_depth``, ``relay_queue_oldest_age_seconds`` and ``relay_dlq_depth`` read
a cache that the loop refreshes (in a worker thread) at most once per ``stats_interval``
(1 s) while it runs, so a scrape never touches SQLite.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Iterable, Sequence

from ..logs import LogLimiter
from ..metrics import REGISTRY, Registry
from ..queue.items import ids_of

__all__ = ["Sink", "SinkError", "RetryableError", "UnavailableError", "PermanentError",
           "AuthError"]

log = logging.getLogger("relay.sinks")
_LIMITER = LogLimiter(10.0, log)   # queue errors repeat while the disk is full: one line per 10 s


# --------------------------------------------------------------------------- errors
class SinkError(Exception):
    """Base of the delivery errors.  ``reason`` is a short label for
    ``relay_send_errors_total{reason=...}``; the message is stored with the rows."""

    default_reason = "error"

    def __init__(self, msg: str, *, reason: str | None = None) -> None:
        super().__init__(msg)
        self.reason = reason or self.default_reason


class RetryableError(SinkError):
    """A transient failure of this batch: count an attempt and retry it ``retry_after``
    seconds from now (None: the queue's exponential backoff with full jitter)."""

    default_reason = "retryable"

    def __init__(self, msg: str, retry_after: float | None = None, *,
                 reason: str | None = None) -> None:
        super().__init__(msg, reason=reason)
        self.retry_after = retry_after


class UnavailableError(RetryableError):
    """The destination cannot be reached (connect refused/timed out, TLS handshake or
    verification failure) or the connection broke with this batch in flight.  The rows are
    released without counting an attempt and the sink pauses ``retry_after`` seconds.
    ``count_attempt=True`` turns it into an ordinary retry (used for a batch that keeps
    breaking connections, so a poison message eventually reaches the DLQ)."""

    default_reason = "unavailable"

    def __init__(self, msg: str, retry_after: float | None = None, *,
                 reason: str | None = None, count_attempt: bool = False) -> None:
        super().__init__(msg, retry_after, reason=reason)
        self.count_attempt = count_attempt


class PermanentError(SinkError):
    """The destination rejected the rows for good: dead-letter them with the message."""

    default_reason = "permanent"


class AuthError(SinkError):
    """Credentials or authorisation rejected: stop sending, keep everything queued, alert."""

    default_reason = "auth"


# --------------------------------------------------------------------------- sink
class Sink:
    """Base class.  Subclasses implement :meth:`send` (and optionally :meth:`close`).

    :param cfg: the :class:`~relay.config.SinkConfig` (``name``, ``batch_size`` are used here).
    :param queue: this sink's :class:`~relay.queue.DiskQueue`.
    :param registry: metrics registry (tests pass their own).
    :param drain_timeout: seconds a graceful stop waits for the batches in flight.
    :param auth_recheck: seconds between probes while blocked by an :class:`AuthError`.
    """

    type = "base"
    #: batches in flight at once (pipelining); subclasses may raise it
    max_inflight = 1
    #: most rows acked in one transaction (group commit of completed batches)
    ack_group_max = 5000
    #: rows leased in one worker-thread hop when several batches are free to go (backlog):
    #: the lease is split into batches of ``batch_size``; at least one batch per hop
    lease_max_rows = 2000
    #: True: batches come from ``queue.lease_packed`` (a :class:`relay.queue.Leased` in the
    #: usual case, else a list): for senders that frame them in bulk (relay/sinks/_lines.py
    #: ``frame_items``) or iterate them (the same Items, made on first use)
    packed_lease = False

    def __init__(self, cfg, queue, *, registry: Registry | None = None,
                 drain_timeout: float = 10.0, auth_recheck: float = 60.0,
                 idle_recheck: float = 5.0, stats_interval: float = 1.0) -> None:
        self.cfg = cfg
        self.name: str = cfg.name
        self.queue = queue
        self.batch_size = max(1, int(getattr(cfg, "batch_size", 500) or 500))
        self.drain_timeout = drain_timeout
        self.auth_recheck = auth_recheck
        self.idle_recheck = idle_recheck
        self.stats_interval = stats_interval
        self.registry = reg = registry if registry is not None else REGISTRY
        n = self.name
        self.m_sent = reg.counter("relay_sent_total", sink=n)
        self.m_retried = reg.counter("relay_retried_total", sink=n)
        self.m_dead = reg.counter("relay_dead_lettered_total", sink=n)
        self.m_up = reg.gauge("relay_sink_up", sink=n)
        self.m_blocked = reg.gauge("relay_sink_blocked", sink=n)
        self._cache: dict[str, Any] = {"depth": None, "oldest": None, "dlq": None, "at": 0.0}
        self._cache_at_mono = 0.0
        reg.gauge("relay_queue_depth", lambda: self._cache["depth"], sink=n)
        reg.gauge("relay_queue_oldest_age_seconds", self._oldest_age, sink=n)
        reg.gauge("relay_dlq_depth", lambda: self._cache["dlq"], sink=n)
        #: per-instance totals (tests, diagnostics): rows sent/retried/dead_lettered/released,
        #: failed batches
        self.stats = dict.fromkeys(("sent", "retried", "dead_lettered", "released", "errors"), 0)
        self.blocked = False
        self.blocked_reason: str | None = None
        self._pause_until = 0.0          # monotonic: no lease before this
        self._notified = False           # notify() seen since the last lease
        self._waiter: asyncio.Future | None = None   # the loop's current sleep
        self._kicked = False             # _kick() came while the loop was not asleep
        self._waiter_on_notify = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task] = set()
        self._ack_buf: list = []
        self._ack_task: asyncio.Task | None = None
        self._running = False

    # ------------------------------------------------------------------ to override
    async def send(self, items: Sequence) -> Iterable | None:
        """Deliver ``items`` (``Item.payload`` is the rendered bytes).  Return normally when
        every row is delivered (or an iterable of ``(item, exception)`` for rows that failed
        individually); raise a :class:`SinkError` when the batch failed."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release connections/files (called once when :meth:`run` ends)."""

    # ------------------------------------------------------------------ public
    def notify(self) -> None:
        """Wake the loop: new rows were queued.  Safe from any thread; cheap when idle."""
        loop = self._loop
        if loop is None or self._notified:
            # already notified and not yet consumed: the loop leases after clearing the
            # flag, so it sees every row committed before this call
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._on_notify()
        else:
            try:
                loop.call_soon_threadsafe(self._on_notify)
            except RuntimeError:  # loop closed
                pass

    def _on_notify(self) -> None:
        self._notified = True
        w = self._waiter
        if w is not None and self._waiter_on_notify and not w.done():
            w.set_result(None)

    def _kick(self, *_) -> None:
        """Wake the loop from its current sleep (a batch finished, stop was set).  A kick that
        comes while the loop is awake (in a lease or ``next_due`` on the worker thread) is
        kept for its next sleep, which then returns at once: without it, a stop set during
        ``next_due`` slept the idle recheck (5 s) before the loop saw it, and rows a batch
        gave back then waited as long."""
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)
        else:
            self._kicked = True

    def count_error(self, reason: str, n: int = 1) -> None:
        self.registry.counter("relay_send_errors_total", sink=self.name, reason=reason).value += n

    async def run(self, stop: asyncio.Event) -> None:
        """The delivery loop; returns after ``stop`` is set (see the module docstring)."""
        if self._running:
            raise RuntimeError(f"sink {self.name}: run() is already running")
        self._running = True
        self._loop = asyncio.get_running_loop()
        stop_wait = asyncio.ensure_future(stop.wait())
        stop_wait.add_done_callback(self._kick)
        stats_task = asyncio.create_task(self._stats_loop(stop))
        try:
            await self._loop_body(stop, stop_wait)
        finally:
            try:
                await self._drain()
            finally:
                stats_task.cancel()
                stop_wait.cancel()
                try:
                    await self.close()
                except Exception:  # pragma: no cover - best effort
                    log.exception("sink %s: close failed", self.name)
                try:
                    await asyncio.to_thread(self._refresh_stats)
                except Exception:
                    pass
                self._running = False

    # ------------------------------------------------------------------ internals
    async def _loop_body(self, stop: asyncio.Event, stop_wait: asyncio.Future) -> None:
        bs = self.batch_size
        while not stop.is_set():
            now = time.monotonic()
            if now < self._pause_until:
                await self._sleep(self._pause_until - now, False)
                continue
            free = self.max_inflight - len(self._tasks)
            if free <= 0:
                # woken when a batch finishes (done callback) or at stop; O(1) per wakeup
                await self._sleep(None, False)
                continue
            self._notified = False
            # several batches per worker-thread hop when there are free slots (backlog);
            # split below into batches of batch_size, each delivered on its own
            n = bs if self.blocked else bs * max(1, min(free, self.lease_max_rows // bs))
            try:
                items = await asyncio.to_thread(self.queue.lease_packed if self.packed_lease else self.queue.lease, n)
            except Exception:
                _LIMITER.error((self.name, "lease"), "sink %s: lease failed; trying again in 1 s", self.name,
                               exc_info=True)
                self.count_error("queue")
                self._pause(1.0)
                continue
            if stop.is_set():
                self.queue.release(items)
                break
            if items:
                for i in range(0, len(items), bs):
                    task = asyncio.create_task(self._deliver(items[i:i + bs] if i or len(items) > bs
                                                             else items))
                    self._tasks.add(task)
                    task.add_done_callback(self._task_done)
                if self.blocked:
                    # one probe batch at a time while blocked
                    await self._wait([stop_wait, task], None)
                continue
            if self._notified:
                continue
            if self._tasks:
                # rows in flight may be given back (connection break): look again soon
                await self._sleep(1.0, True)
                continue
            try:
                due = await asyncio.to_thread(self.queue.next_due)
            except Exception:
                log.exception("sink %s: next_due failed", self.name)
                due = None
            if due == 0.0 or self._notified:
                continue
            timeout = self.idle_recheck if due is None else min(due + 0.001, self.idle_recheck)
            await self._sleep(timeout, True)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._kick()

    async def _sleep(self, timeout: float | None, on_notify: bool) -> None:
        """Sleep until ``timeout``, :meth:`_kick` (a batch finished, stop) or, with
        ``on_notify``, :meth:`notify`.  One future, no per-task callbacks."""
        if self._kicked or (on_notify and self._notified):
            self._kicked = False
            return
        loop = self._loop
        fut = self._waiter = loop.create_future()
        self._waiter_on_notify = on_notify
        h = loop.call_later(timeout, self._kick) if timeout is not None else None
        try:
            await fut
        finally:
            self._waiter = None
            if h is not None:
                h.cancel()

    @staticmethod
    async def _wait(aws: list, timeout: float | None, cancel: Sequence = ()) -> None:
        try:
            await asyncio.wait(aws, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in cancel:
                f.cancel()

    async def _deliver(self, items: list) -> None:
        try:
            result = await self.send(items)
        except asyncio.CancelledError:
            self.queue.release(items)
            raise
        except SinkError as exc:
            await self._settle_failed(items, exc)
            return
        except Exception as exc:  # a bug in a sink must not kill the loop or lose rows
            log.exception("sink %s: unexpected error in send()", self.name)
            err = RetryableError(f"internal error: {type(exc).__name__}: {exc}",
                                 reason="internal")
            await self._settle_failed(items, err)
            return
        failed: dict[int, tuple[Any, SinkError]] = {}
        if result:
            for item, exc in result:
                if not isinstance(exc, SinkError):
                    exc = PermanentError(str(exc))
                failed[item.id] = (item, exc)
        ok = [it for it in items if it.id not in failed] if failed else items
        if ok:
            try:
                await self._ack(ok)
            except asyncio.CancelledError:
                raise
            except Exception:
                # not acked -> released: redelivered later (a duplicate, never a loss)
                _LIMITER.error((self.name, "ack"), "sink %s: ack failed; %d rows will be sent again",
                               self.name, len(ok), exc_info=True)
                self.queue.release(ok)
                self.count_error("queue")
                # a queue that cannot record acks (e.g. a full disk) must not turn into a
                # full-speed resend loop: back off, growing while acks keep failing
                self._ack_failures = getattr(self, "_ack_failures", 0) + 1
                self._pause(min(30.0, 0.5 * 2 ** min(self._ack_failures, 6)))
                return
            self._ack_failures = 0
            self.m_sent.value += len(ok)
            self.stats["sent"] += len(ok)
            self.m_up.value = 1
            if self.blocked:
                self._unblock()
        if failed:
            groups: dict[int, tuple[SinkError, list]] = {}
            for item, exc in failed.values():
                groups.setdefault(id(exc), (exc, []))[1].append(item)
            for exc, group in groups.values():
                await self._settle_failed(group, exc)

    async def _ack(self, items: list) -> None:
        """Group commit: batches that complete while an ack transaction runs are acked
        together in the next one (one fsync for many batches when pipelining)."""
        fut = self._loop.create_future()
        self._ack_buf.append((items, fut))
        if self._ack_task is None:
            self._ack_task = asyncio.create_task(self._ack_flush())
        # no shield needed: a cancelled waiter leaves its rows in the group (the flush
        # acks them anyway and skips the done future)
        await fut

    async def _ack_flush(self) -> None:
        try:
            while self._ack_buf:
                # at most ~ack_group_max rows per transaction: the queue lock is held
                # for the whole commit and lease() must not wait long behind it
                k, rows = 0, 0
                while k < len(self._ack_buf) and (k == 0 or rows < self.ack_group_max):
                    rows += len(self._ack_buf[k][0])
                    k += 1
                buf, self._ack_buf = self._ack_buf[:k], self._ack_buf[k:]
                ids: list[int] = []
                for items, _ in buf:
                    ids += ids_of(items)
                try:
                    await asyncio.to_thread(self.queue.ack, ids)
                except Exception as exc:
                    for _, f in buf:
                        if not f.done():
                            f.set_exception(exc)
                    continue
                for _, f in buf:
                    if not f.done():
                        f.set_result(None)
        finally:
            self._ack_task = None

    async def _settle_failed(self, items: list, exc: SinkError) -> None:
        q = self.queue
        n = len(items)
        self.count_error(exc.reason)
        self.stats["errors"] += 1
        self.m_up.value = 0
        msg = str(exc) or type(exc).__name__
        try:
            if isinstance(exc, AuthError):
                q.release(items)
                self.stats["released"] += n
                self._block(msg)
            elif isinstance(exc, PermanentError):
                moved = await asyncio.to_thread(q.dead_letter, items, msg)
                self.m_dead.value += moved
                self.stats["dead_lettered"] += moved
                log.warning("sink %s: %d events dead-lettered: %s", self.name, moved, msg)
            elif isinstance(exc, UnavailableError) and not exc.count_attempt:
                q.release(items)
                self.stats["released"] += n
                if exc.retry_after:
                    self._pause(exc.retry_after)
                log.debug("sink %s: %d events released (%s)", self.name, n, msg)
            elif isinstance(exc, RetryableError):
                moved = await asyncio.to_thread(q.retry, items, msg,
                                                retry_after=exc.retry_after)
                self.m_retried.value += n - moved
                self.m_dead.value += moved
                self.stats["retried"] += n - moved
                self.stats["dead_lettered"] += moved
                if isinstance(exc, UnavailableError) and exc.retry_after:
                    self._pause(exc.retry_after)
                log.info("sink %s: %d events scheduled for retry: %s", self.name, n, msg)
            else:
                moved = await asyncio.to_thread(q.retry, items, msg)
                self.m_retried.value += n - moved
                self.m_dead.value += moved
                self.stats["retried"] += n - moved
                self.stats["dead_lettered"] += moved
        except asyncio.CancelledError:
            q.release(items)
            raise
        except Exception:
            log.exception("sink %s: could not record the failure; rows released", self.name)
            q.release(items)

    def _pause(self, seconds: float) -> None:
        self._pause_until = max(self._pause_until, time.monotonic() + max(0.0, seconds))

    def _block(self, msg: str) -> None:
        if not self.blocked:
            log.error("ALERT sink %s: authorisation rejected (%s); delivery STOPPED, events "
                      "stay queued; re-checking every %g s. Fix the credentials.",
                      self.name, msg, self.auth_recheck)
        self.blocked = True
        self.blocked_reason = msg
        self.m_blocked.value = 1
        self._pause(self.auth_recheck)

    def _unblock(self) -> None:
        log.warning("sink %s: authorisation accepted again; delivery resumed", self.name)
        self.blocked = False
        self.blocked_reason = None
        self.m_blocked.value = 0

    async def _drain(self) -> None:
        tasks = set(self._tasks)
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=self.drain_timeout)
            if pending:
                log.warning("sink %s: %d batches still in flight after %g s; giving them "
                            "back to the queue", self.name, len(pending), self.drain_timeout)
                for t in pending:
                    t.cancel()
                await asyncio.wait(pending, timeout=5.0)
        if self._ack_task is not None:  # let the last group commit finish
            await asyncio.wait([self._ack_task], timeout=30.0)
        self.queue.release_all()

    # ------------------------------------------------------------------ cached gauges
    def _refresh_stats(self) -> None:
        q = self.queue
        self._cache = {"depth": q.depth(), "dlq": q.dlq_depth(), "oldest": q.oldest_age(),
                       "at": time.time()}

    def _oldest_age(self) -> float | None:
        c = self._cache
        if c["oldest"] is None:
            return None if c["depth"] is None else 0.0
        return c["oldest"] + max(0.0, time.time() - c["at"])

    async def _stats_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.to_thread(self._refresh_stats)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.debug("sink %s: stats refresh failed", self.name, exc_info=True)
            try:
                await asyncio.wait_for(stop.wait(), self.stats_interval)
            except asyncio.TimeoutError:
                pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

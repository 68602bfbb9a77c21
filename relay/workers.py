"""Ingest worker processes: parsing, normalising, routing and rendering on every core.

With ``[relay] workers = N`` (N > 1) the main process keeps the sockets, the framing,
the queues' group commits, the sinks' delivery loops and the metrics; N worker processes
run the one stage (:meth:`relay.pipeline.Pipeline.stage_rows`: ``parse_batch`` and ``stage_into``) on the listeners' raw
messages
and send back each sink's rendered rows.  CPython runs one thread at a time per process, so
this is what puts the second core to work.  The main process commits what the workers
return through the same :class:`relay.queue.GroupCommitter` as the in-process pipeline
(the only writer of each queue file): one transaction and one fsync for everything that
arrived meanwhile.  Events the pull sources have already normalised are staged by the main
process's own :class:`relay.pipeline.Pipeline` (:meth:`WorkerPool.submit`), through the same
committers.

:class:`WorkerPool` has the same ``handle`` / ``backlog`` contract as the in-process
pipeline: ``handle(items, source, received)`` returns a future that completes once the
batch is durably queued (the workers' replies, then the commit), so TCP sources keep pausing
until their data is safe.  A large batch is cut into parts for every live worker; the parts'
rows go to the committers in the order the parts were sent, whatever order the workers
answer in, so whatever one connection sent is committed in order and a crash can only lose a
suffix that was never accepted.  A worker that dies fails its in-flight parts (their hand-overs
fail, their TCP connections are closed, so senders retransmit; the parts after a failed one
in the same hand-over are dropped, never committed after a gap) and is restarted.
Counters from the workers are merged into the main registry, so /metrics shows totals.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import multiprocessing as mp
import os
import queue as queue_mod
import pickle
import signal
import struct
import threading
import time

import orjson

from parsers.httpbody import BodyError

from .queue import pack_rows
from .queue.packing import encode_metas

from .metrics import REGISTRY
from .pipeline import OneSender

log = logging.getLogger("relay.workers")

__all__ = ["WorkerPool", "worker_main"]

_CTX = mp.get_context("spawn")


#: Most messages in one part handed to a worker (a large read is cut into parts).
PART_MAX = 2000


def _read_into(fd: int, view: memoryview) -> None:
    """Fill ``view`` from the blocking descriptor ``fd``; EOFError at end of file."""
    off, n = 0, len(view)
    while off < n:
        k = os.readv(fd, [view[off:]])
        if k == 0:
            raise EOFError if off == 0 else OSError("got end of file during message")
        off += k


def recv_object(conn):
    """``conn.recv()`` (a :func:`multiprocessing.Pipe` end, same wire format) with fewer
    copies.  Connection.recv reads a message in socket-buffer-sized chunks, each a new bytes
    object, appends them to a BytesIO that grows by reallocation, then unpickles from it: a
    worker's reply (~600 bytes a message, ~1.2 MB a part) was copied three to four times in
    the main process's event loop.  Here the kernel copies it once, straight into one buffer of
    the announced size, and unpickling copies the rows out of it.  The workers read their
    hand-overs (the frames of a read) with it too."""
    fd = conn.fileno()
    head = bytearray(4)
    _read_into(fd, memoryview(head))
    n, = struct.unpack("!i", head)
    if n == -1:
        big = bytearray(8)
        _read_into(fd, memoryview(big))
        n, = struct.unpack("!Q", big)
    buf = bytearray(n)
    _read_into(fd, memoryview(buf))
    return pickle.loads(buf)


class _Worker:
    def __init__(self, wid: int) -> None:
        self.wid = wid
        self.proc = None
        self.conn = None
        self.inflight: dict[int, "_Part"] = {}   # batch id -> part sent to this worker
        self.pending_items = 0
        self.ready = False


class _Group:
    """One ``handle()`` call: its future, and its parts in order."""

    __slots__ = ("fut", "parts", "left", "commits", "failed", "body", "count")

    def __init__(self, fut, body: bool = False) -> None:
        self.fut = fut
        self.parts: list = []
        self.left = 0            # parts not yet taken from the order queue
        self.commits: list = []  # commit futures of the parts handed to the committers
        self.failed = False
        self.body = body         # a request body (submit_body): all or nothing, refused when full
        self.count = 0           # events of a body, once decoded


class _Part:
    """Some messages of one ``handle()`` call, processed by one worker."""

    __slots__ = ("bid", "group", "worker", "n", "done", "rows", "dead", "error", "count")

    def __init__(self, bid: int, group: _Group, worker: _Worker, n: int) -> None:
        self.bid, self.group, self.worker, self.n = bid, group, worker, n
        self.done = False
        self.rows: dict = {}     # sink -> packed rows
        self.dead: dict = {}     # sink -> [(payload, meta, reason)]
        self.error = None        # str, or for a body a tuple (see _WorkerState.process)
        self.count = 0           # events decoded from a body


class WorkerPool:
    """See the module docstring.  ``pipeline`` is the main process's
    :class:`relay.pipeline.Pipeline`: its committers take what the workers render (they are
    replaced on reload), and pre-normalised events (:meth:`submit`) are staged by it."""

    def __init__(self, config_path: str, n: int, pipeline, max_backlog: int = 200_000,
                 log_level: str = "info") -> None:
        self.config_path = config_path
        self.n = n
        self.pipeline = pipeline
        self.max_backlog = max_backlog
        self.log_level = log_level
        self.workers = [_Worker(i) for i in range(n)]
        self.min_split = 32          # smallest part worth sending to another worker
        self._next_batch = 0
        self._rr = 0
        self._order: collections.deque = collections.deque()   # every part, in the order sent
        self._stopping = False
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def config(self):
        return self.pipeline.config

    # ------------------------------------------------------------------ lifecycle
    async def start(self, timeout: float = 30.0) -> None:
        self.loop = asyncio.get_running_loop()
        for w in self.workers:
            self._spawn(w)
        deadline = time.monotonic() + timeout
        while not all(w.ready for w in self.workers):
            if time.monotonic() > deadline:
                raise RuntimeError("ingest workers did not start in time (see the log above)")
            for w in self.workers:
                if w.proc is not None and not w.proc.is_alive() and not w.ready:
                    raise RuntimeError(f"ingest worker {w.wid} exited with {w.proc.exitcode} while starting")
            await asyncio.sleep(0.02)
        log.info("%d ingest worker process(es) running", self.n)

    def _spawn(self, w: _Worker) -> None:
        parent, child = _CTX.Pipe(duplex=True)
        p = _CTX.Process(target=worker_main, args=(child, self.config_path, w.wid, self.log_level),
                         name=f"relay-worker-{w.wid}", daemon=True)
        p.start()
        child.close()
        w.proc, w.conn, w.ready = p, parent, False
        self.loop.add_reader(parent.fileno(), self._on_readable, w)

    def _on_readable(self, w: _Worker) -> None:
        conn = w.conn
        try:
            while conn.poll():
                self._dispatch(w, recv_object(conn))
        except (EOFError, OSError):
            self._lost(w)

    def _dispatch(self, w: _Worker, msg) -> None:
        kind = msg[0]
        if kind == "done":
            _, results, counters = msg
            if counters:
                REGISTRY.set_external(w.wid, counters)
            for bid, rows, dead, error, count in results:
                part = w.inflight.pop(bid, None)
                if part is None:
                    continue
                part.rows, part.dead, part.error, part.count, part.done = rows, dead, error, count, True
            self._flush()
        elif kind == "ready":
            w.ready = True
        elif kind == "counters":
            REGISTRY.set_external(w.wid, msg[1])

    # ------------------------------------------------------------------ in-order commits
    def _flush(self) -> None:
        """Hand the processed parts to the committers in the order they were sent, so that
        whatever one connection sent is committed in order: a crash can lose only a suffix of
        it.  A part that failed fails its hand-over, and the parts after it in the same
        hand-over are dropped, never committed after a gap."""
        order = self._order
        committers = self.pipeline.committers
        while order and order[0].done:
            part = order.popleft()
            g = part.group
            g.left -= 1
            if g.body and not g.failed:
                self._body_checks(g, part)
                if g.failed:      # refused whole: no rows, no dead letters
                    if g.left == 0:
                        self._settle(g)
                    continue
            if not g.failed:
                if part.error is not None:
                    self._fail(g, RuntimeError(part.error))
                else:
                    for sink, rows in part.rows.items():
                        c = committers.get(sink)
                        if c is None:   # removed by a reload while the part was out
                            log.error("sink %s is gone (reload); %d event(s) of this batch refused", sink,
                                      sum(r[0] for r in rows))
                            self._fail(g, RuntimeError(f"sink {sink} no longer configured"))
                            break
                        g.commits.append(c.submit_rows(rows))
            for sink, items in part.dead.items():
                c = committers.get(sink)
                if c is not None:
                    for payload, meta, reason in items:
                        c.submit_dead(payload, meta, reason)
            part.rows = part.dead = None    # the committers hold them now (see _settle)
            if g.left == 0:
                self._settle(g)

    def _body_checks(self, g: _Group, part: _Part) -> None:
        """A decoded body: fail its group with the body's error, or with Backpressure when a
        matched sink cannot take events now (then nothing of it is queued)."""
        from .pipeline import Backpressure, DecodeFailed
        err = part.error
        if err is not None:
            if isinstance(err, tuple) and err[0] == "body":
                _, message, reason, line, column, offset, item = err
                exc: BaseException = BodyError(message, reason=reason, line=line, column=column, offset=offset,
                                               item=item)
            elif isinstance(err, tuple):
                exc = DecodeFailed(err[1])
            else:
                exc = RuntimeError(err)
            part.error = None
            self._fail(g, exc)
            return
        why = self.pipeline.full(list(part.rows) + list(part.dead))
        if why is not None:
            self._fail(g, Backpressure(why))
            return
        g.count += part.count

    def _fail(self, g: _Group, exc: BaseException) -> None:
        g.failed = True
        if not g.fut.done():
            g.fut.set_exception(exc)

    def _settle(self, g: _Group) -> None:
        """Every part of ``g`` is handed over (or dropped): resolve its future once committed."""
        def release(exc: BaseException | None) -> None:
            for p in g.parts:
                p.worker.pending_items -= p.n
            # a part and its group refer to each other: break the cycle now, or every settled
            # hand-over waits for a full collection of the cyclic GC (rarer here, relay/gctune.py)
            g.parts.clear()
            if exc is not None:
                self._fail(g, exc)
            elif not g.fut.done():
                g.fut.set_result(g.count if g.body else None)
        if g.failed or not g.commits:
            release(None)
            return
        c = g.commits[0] if len(g.commits) == 1 else asyncio.gather(*g.commits)
        c.add_done_callback(lambda f: release(RuntimeError("cancelled") if f.cancelled() else f.exception()))

    def _lost(self, w: _Worker) -> None:
        try:
            self.loop.remove_reader(w.conn.fileno())
        except (ValueError, OSError):
            pass
        for part in w.inflight.values():
            part.error = f"ingest worker {w.wid} died"
            part.done = True
        w.inflight.clear()
        w.ready = False
        try:
            w.conn.close()
        except OSError:
            pass
        self._flush()
        if self._stopping:
            return
        code = w.proc.exitcode if w.proc is not None else None
        log.error("ingest worker %d died (exit %s); its in-flight batches were refused (senders retransmit); "
                  "restarting it", w.wid, code)
        REGISTRY.inc("relay_worker_restarts_total")
        self._spawn(w)

    # ------------------------------------------------------------------ ingest contract
    def backlog(self) -> int:
        return sum(w.pending_items for w in self.workers)  # until committed, not just processed

    def handle(self, items: list, source, received: float | None = None):
        """Hand a batch to the workers.  A large batch (one read from one connection) is
        split across every live worker so that a single busy connection uses every core;
        the returned future completes when all parts are durable, and the parts are committed
        in order."""
        if received is None:
            received = time.time()
        fut = self.loop.create_future()
        live = [w for w in self.workers if w.ready]
        if not live:
            fut.set_exception(RuntimeError("no ingest worker is running"))
            return fut
        n = len(items)
        k = 1
        if len(live) > 1 and n >= 2 * self.min_split:
            k = min(len(live), n // self.min_split)
        k = max(k, -(-n // PART_MAX))
        step = -(-n // k)
        g = _Group(fut)
        for i in range(0, n, step):
            self._send(items[i:i + step] if k > 1 else items, source, received, live, g)
        return fut

    def _send(self, items, source, received: float, live: list, g: _Group, tag: str = "batch",
              n: int | None = None) -> None:
        # least loaded, round robin among equals
        self._rr = (self._rr + 1) % len(live)
        w = min(live[self._rr:] + live[:self._rr], key=lambda x: x.pending_items)
        self._next_batch += 1
        part = _Part(self._next_batch, g, w, len(items) if n is None else n)
        g.parts.append(part)
        g.left += 1
        self._order.append(part)
        w.pending_items += len(items)
        if not w.ready:         # it died during this hand-over
            part.error, part.done = f"ingest worker {w.wid} is not running", True
            return
        w.inflight[part.bid] = part
        if tag == "batch" and type(items) is list and items:
            # pairs from one sender (most UDP reads) go as a OneSender, as a TCP read comes: the
            # frames and their peer once; splitting and pickling them takes 0.14 us per message
            # here, pickling the (frame, peer) pairs 0.38
            frames, peers = zip(*items)
            if len(set(peers)) == 1:
                items = OneSender(peers[0], list(frames))
        try:
            w.conn.send((tag, part.bid, source.name, received, items))
        except (OSError, EOFError, BrokenPipeError):
            self._lost(w)

    async def submit(self, events, source, **kw) -> int:
        """Pre-normalised events (pull sources) are staged in this process, by the pipeline the
        workers' rows are committed through."""
        return await self.pipeline.submit(events, source, **kw)

    async def submit_body(self, body: bytes, source, *, received: float, peer: str | None = None,
                          path: str | None = None, hec_raw: bool = False, query: dict | None = None,
                          refuse_when_full: bool = False) -> int:
        """:meth:`relay.pipeline.Pipeline.submit_body` in a worker: the body goes to one worker,
        which decodes it and stages every event (the same code), and its rows come back to be
        committed in order with everything else.  All or nothing: a BodyError, a decoder bug
        (DecodeFailed) or, with ``refuse_when_full``, a matched sink that cannot take events
        (Backpressure) queues nothing.  With no worker running (one is restarting), this
        process does it.  Returns the number of events once durable."""
        live = [w for w in self.workers if w.ready]
        if not live:
            return await self.pipeline.submit_body(body, source, received=received, peer=peer, path=path,
                                                   hec_raw=hec_raw, query=query, refuse_when_full=refuse_when_full)
        fut = self.loop.create_future()
        g = _Group(fut, body=True)
        # its weight in the backlog until committed: about one event per line (NDJSON) or per KiB
        n = max(body.count(b"\n"), len(body) >> 10) + 1
        self._send((body, peer, path, hec_raw, query), source, received, live, g, tag="body", n=n)
        self._flush()          # a part that failed at once (its worker died) settles now
        return await fut

    def full(self, sinks=None) -> str | None:
        """:meth:`relay.pipeline.Pipeline.full`, counting the workers' backlog too."""
        why = self.pipeline.full(sinks)
        if why is None and self.backlog() > self.max_backlog:
            why = f"{self.backlog()} events wait in the ingest workers (max_backlog {self.max_backlog})"
        return why

    async def reload(self) -> None:
        for w in self.workers:
            if w.ready:
                try:
                    w.conn.send(("reload",))
                except OSError:
                    pass

    async def stop(self, timeout: float = 10.0) -> None:
        """Wait for in-flight batches, then stop the workers."""
        deadline = time.monotonic() + timeout
        while (self._order or any(w.inflight for w in self.workers)) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self._stopping = True
        for w in self.workers:
            try:
                w.conn.send(("stop",))
            except OSError:
                pass
        for w in self.workers:
            while w.proc is not None and w.proc.is_alive() and time.monotonic() < deadline + 5:
                await asyncio.sleep(0.02)
            if w.proc is not None and w.proc.is_alive():
                w.proc.kill()
            # final counters arrive before the worker exits
            try:
                while w.conn.poll():
                    self._dispatch(w, recv_object(w.conn))
            except (EOFError, OSError):
                pass
            try:
                self.loop.remove_reader(w.conn.fileno())
            except (ValueError, OSError):
                pass
            w.conn.close()


# ---------------------------------------------------------------------- the worker process

def worker_main(conn, config_path: str, wid: int, log_level: str) -> None:
    """Entry point of an ingest worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the main process decides when we stop
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from .config import load
    from .logs import setup_logging
    setup_logging(log_level)
    wlog = logging.getLogger(f"relay.worker{wid}")
    state = _WorkerState(config_path, wlog)

    state.configure(load(config_path))
    from .gctune import tune
    tune()          # the program out of the collector's sight, rarer collections (relay/gctune.py)
    inbox: queue_mod.Queue = queue_mod.Queue()

    def reader():
        while True:
            try:
                inbox.put(recv_object(conn))
            except (EOFError, OSError):
                inbox.put(("stop",))
                return
    threading.Thread(target=reader, name="reader", daemon=True).start()
    conn.send(("ready", wid, os.getpid()))
    last_counters = 0.0
    dirty = False
    while True:
        try:
            msgs = [inbox.get(timeout=0.25)]
        except queue_mod.Empty:  # idle: push counters changed since the last reply
            if dirty:
                try:
                    conn.send(("counters", REGISTRY.counters_snapshot()))
                except OSError:
                    return
                dirty = False
                last_counters = time.monotonic()
            continue
        while True:
            try:
                msgs.append(inbox.get_nowait())
            except queue_mod.Empty:
                break
        stop = False
        batches = []
        for m in msgs:
            if m[0] == "batch" or m[0] == "body":
                batches.append(m)
            elif m[0] == "reload":
                try:
                    state.configure(load(config_path))
                except Exception as e:  # the main process validated it first; keep the old one
                    wlog.error("reload failed in worker %d, keeping the old configuration: %s", wid, e)
            elif m[0] == "stop":
                stop = True
        if batches:
            results = state.process(batches)
            now = time.monotonic()
            counters = None
            if now - last_counters > 0.25 or stop:
                counters = REGISTRY.counters_snapshot()
                last_counters = now
                dirty = False
            else:
                dirty = True
            try:
                conn.send(("done", results, counters))
            except OSError:
                return
        if stop:
            try:
                conn.send(("counters", REGISTRY.counters_snapshot()))
            except OSError:
                pass
            state.close()
            return


class _WorkerState:
    """A worker's pipeline: processes batches, returns the rendered rows per sink (the main
    process commits them)."""

    def __init__(self, config_path: str, wlog) -> None:
        self.config_path = config_path
        self.log = wlog
        self.pipeline = None
        self.config = None

    def configure(self, cfg) -> None:
        from .pipeline import Pipeline
        if self.pipeline is None:
            self.pipeline = Pipeline(cfg)
        else:
            self.pipeline.configure(cfg)
        self.config = cfg

    def process(self, batches: list) -> list:
        """-> [(batch id, {sink: packed rows (relay.queue.pack_rows)}, {sink: [(payload, meta,
        reason)]}, error or None)], one per batch, in order.  The rows go back packed as the
        queue stores them, metadata encoded (orjson): the main process only inserts them."""
        results = []
        sources = self.config.sources
        stage_rows = self.pipeline.stage_rows
        for tag, bid, source_name, received, items in batches:
            src = sources.get(source_name)
            if src is None:
                results.append((bid, {}, {}, f"unknown source {source_name!r} (config changed?)", 0))
                continue
            rows: dict[str, tuple] = {}
            dead: dict[str, list] = {}
            error = None
            count = 0
            if tag == "body":
                error, count = self._body(items, src, received, rows, dead)
            else:
                try:
                    stage_rows(items, src, received, rows, dead)
                except Exception as e:  # a bug must not take the batch down silently
                    self.log.exception("processing a batch failed: %s", e)
                    error = f"processing failed: {e}"
            results.append((bid, {s: pack_rows(p, encode_metas(m)) for s, (p, m) in rows.items()},
                            {s: [(p, orjson.dumps(m), r) for p, m, r in d] for s, d in dead.items()}, error, count))
        return results

    def _body(self, item: tuple, src, received: float, rows: dict, dead: dict):
        """A request body (WorkerPool.submit_body) -> (error or None, events): decoded by the
        source kind and each event staged, rows collected into ``rows``/``dead``."""
        from .pipeline import DecodeFailed, decode_body
        body, peer, path, hec_raw, query = item
        try:
            events = decode_body(body, src, received, peer, path, hec_raw, query)
        except BodyError as e:
            return ("body", e.message, e.reason, e.line, e.column, e.offset, e.item), 0
        except DecodeFailed as e:
            self.log.error("%s", e)
            return ("decode", str(e)), 0
        try:
            self.pipeline.stage_into(events, rows, dead)
        except Exception as e:  # a bug: the request is refused whole (500), never half queued
            self.log.exception("staging an event failed: %s", e)
            rows.clear()
            dead.clear()
            return ("decode", f"staging failed: {type(e).__name__}: {e}"), 0
        return None, len(events)

    def close(self) -> None:
        pass

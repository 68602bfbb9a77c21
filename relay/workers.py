"""Ingest worker processes: parsing, normalising, routing and rendering on every core.

With ``[relay] workers = N`` (N > 1) the main process keeps the sockets, the framing,
the queues' group commits, the sinks' delivery loops and the metrics; N worker processes
do the per-message work (:meth:`relay.pipeline.Pipeline.process`) and send back each
sink's rendered rows.  CPython runs one thread at a time per process, so this is what puts
the second core to work.  The main process commits what the workers return through the
same :class:`relay.pipeline.GroupCommitter` as the in-process pipeline: one transaction and
one fsync for everything that arrived meanwhile, where workers committing their own parts
paid an fsync each and waited for each other's write lock.

:class:`WorkerPool` has the same ``handle`` / ``backlog`` contract as the in-process
pipeline: ``handle(items, source, received)`` returns a future that completes once the
batch is durably queued (the worker's reply, then the commit), so TCP sources keep pausing
until their data is safe.  A worker that dies fails its in-flight batches (their TCP connections are
closed, so senders retransmit; nothing acknowledged is lost) and is restarted.
Counters from the workers are merged into the main registry, so /metrics shows totals.
"""
from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import queue as queue_mod
import signal
import threading
import time

import orjson

from .queue import pack_rows

from .metrics import REGISTRY

log = logging.getLogger("relay.workers")

__all__ = ["WorkerPool", "worker_main"]

_CTX = mp.get_context("spawn")


class _Worker:
    def __init__(self, wid: int) -> None:
        self.wid = wid
        self.proc = None
        self.conn = None
        self.inflight: dict[int, tuple] = {}   # batch id -> (future, n items)
        self.pending_items = 0
        self.ready = False


class WorkerPool:
    """See the module docstring."""

    def __init__(self, config_path: str, n: int, committers: dict,
                 max_backlog: int = 200_000, log_level: str = "info") -> None:
        self.config_path = config_path
        self.n = n
        self.committers = committers   # sink name -> GroupCommitter (replaced on reload)
        self.max_backlog = max_backlog
        self.log_level = log_level
        self.workers = [_Worker(i) for i in range(n)]
        self.min_split = 32          # smallest part worth sending to another worker
        self._next_batch = 0
        self._rr = 0
        self._stopping = False
        self.loop: asyncio.AbstractEventLoop | None = None

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
                msg = conn.recv()
                self._dispatch(w, msg)
        except (EOFError, OSError):
            self._lost(w)

    def _dispatch(self, w: _Worker, msg) -> None:
        kind = msg[0]
        if kind == "done":
            _, batch_ids, errors, rows, dead, counters = msg
            if counters:
                REGISTRY.set_external(w.wid, counters)
            done = [(bid, *w.inflight.pop(bid, (None, 0))) for bid in batch_ids]
            commits = []
            for sink, items in rows.items():
                c = self.committers.get(sink)
                if c is None:   # removed by a reload while the batch was out
                    log.error("sink %s is gone (reload); %d event(s) of this batch refused", sink, len(items))
                    for bid, _, _ in done:
                        errors.setdefault(bid, f"sink {sink} no longer configured")
                    continue
                commits.append(c.submit_rows(items))
            for sink, items in dead.items():
                c = self.committers.get(sink)
                if c is not None:
                    for payload, meta, reason in items:
                        c.submit_dead(payload, meta, reason)
            if not commits:
                self._settle(w, done, errors, None)
            else:
                g = commits[0] if len(commits) == 1 else asyncio.gather(*commits)
                g.add_done_callback(lambda f, w=w, done=done, errors=errors: self._settle(
                    w, done, errors, f.exception() if not f.cancelled() else RuntimeError("cancelled")))
        elif kind == "ready":
            w.ready = True
        elif kind == "counters":
            REGISTRY.set_external(w.wid, msg[1])
        elif kind == "log":
            pass

    @staticmethod
    def _settle(w: _Worker, done: list, errors: dict, exc: BaseException | None) -> None:
        """The batches of one reply are committed (or failed): resolve their futures."""
        for bid, fut, n in done:
            w.pending_items -= n
            if fut is not None and not fut.done():
                err = errors.get(bid)
                if exc is not None:
                    fut.set_exception(exc)
                elif err is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(RuntimeError(err))

    def _lost(self, w: _Worker) -> None:
        try:
            self.loop.remove_reader(w.conn.fileno())
        except (ValueError, OSError):
            pass
        for bid, (fut, _) in w.inflight.items():
            if not fut.done():
                fut.set_exception(RuntimeError(f"ingest worker {w.wid} died"))
        w.inflight.clear()
        w.pending_items = 0
        w.ready = False
        try:
            w.conn.close()
        except OSError:
            pass
        if self._stopping:
            return
        code = w.proc.exitcode if w.proc is not None else None
        log.error("ingest worker %d died (exit %s); its in-flight batches were refused (senders retransmit); "
                  "restarting it", w.wid, code)
        REGISTRY.inc("relay_worker_restarts_total")
        self._spawn(w)

    # ------------------------------------------------------------------ pipeline contract
    def backlog(self) -> int:
        return sum(w.pending_items for w in self.workers)  # until committed, not just processed

    def handle(self, items: list, source, received: float | None = None):
        """Hand a batch to the workers.  A large batch (one read from one connection) is
        split across every live worker so that a single busy connection uses every core;
        the returned future completes when all parts are durable."""
        if received is None:
            received = time.time()
        live = [w for w in self.workers if w.ready]
        if len(live) > 1 and len(items) >= 2 * self.min_split:
            k = min(len(live), len(items) // self.min_split)
            step = -(-len(items) // k)
            futs = [self._handle_one(items[i:i + step], source, received, live) for i in range(0, len(items), step)]
            return asyncio.gather(*futs)
        return self._handle_one(items, source, received, live)

    def _handle_one(self, items: list, source, received: float, live: list):
        fut = self.loop.create_future()
        if not live:
            fut.set_exception(RuntimeError("no ingest worker is running"))
            return fut
        # least loaded, round robin among equals
        self._rr = (self._rr + 1) % len(live)
        w = min(live[self._rr:] + live[:self._rr], key=lambda x: x.pending_items)
        self._next_batch += 1
        bid = self._next_batch
        w.inflight[bid] = (fut, len(items))
        w.pending_items += len(items)
        try:
            w.conn.send(("batch", bid, source.name, received, items))
        except (OSError, EOFError, BrokenPipeError):
            self._lost(w)
        return fut

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
        while any(w.inflight for w in self.workers) and time.monotonic() < deadline:
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
                    self._dispatch(w, w.conn.recv())
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
    from .server import setup_logging
    setup_logging(log_level)
    wlog = logging.getLogger(f"relay.worker{wid}")
    state = _WorkerState(config_path, wlog)

    state.configure(load(config_path))
    inbox: queue_mod.Queue = queue_mod.Queue()

    def reader():
        while True:
            try:
                inbox.put(conn.recv())
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
            if m[0] == "batch":
                batches.append(m)
            elif m[0] == "reload":
                try:
                    state.configure(load(config_path))
                except Exception as e:  # the main process validated it first; keep the old one
                    wlog.error("reload failed in worker %d, keeping the old configuration: %s", wid, e)
            elif m[0] == "stop":
                stop = True
        if batches:
            ids, errors, rows, dead = state.process(batches)
            now = time.monotonic()
            counters = None
            if now - last_counters > 0.25 or stop:
                counters = REGISTRY.counters_snapshot()
                last_counters = now
                dirty = False
            else:
                dirty = True
            try:
                conn.send(("done", ids, errors, rows, dead, counters))
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
            self.pipeline = Pipeline(cfg, committers={})
        else:
            self.pipeline.configure(cfg)
        self.config = cfg

    def process(self, batches: list) -> tuple[list, dict, dict, dict]:
        """-> (batch ids, {batch id: error}, {sink: packed rows (relay.queue.pack_rows)},
        {sink: [(payload, meta, reason)]}).  The rows go back packed as the queue stores
        them, metadata encoded (orjson): the main process only inserts them."""
        per_sink: dict[str, list] = {}
        dead: dict[str, list] = {}
        ids = []
        errors: dict = {}
        sources = self.config.sources
        process = self.pipeline.process
        dumps = orjson.dumps
        for _, bid, source_name, received, items in batches:
            ids.append(bid)
            src = sources.get(source_name)
            if src is None:
                errors[bid] = f"unknown source {source_name!r} (config changed?)"
                continue
            for raw, peer in items:
                try:
                    _, _, out = process(raw, src, peer, received)
                except Exception as e:  # a bug must not take the batch down silently
                    self.log.exception("processing a message failed: %s", e)
                    errors[bid] = f"processing failed: {e}"
                    continue
                if not out:
                    continue
                last = enc = None
                for sink, payload, meta, err in out:
                    if meta is not last:   # sinks of one event mostly share one meta dict
                        last, enc = meta, dumps(meta)
                    if err is not None:
                        dead.setdefault(sink, []).append((payload, enc, err))
                        continue
                    b = per_sink.get(sink)
                    if b is None:
                        per_sink[sink] = ([payload], [enc])
                    else:
                        b[0].append(payload)
                        b[1].append(enc)
        return ids, errors, {s: pack_rows(p, m) for s, (p, m) in per_sink.items()}, dead

    def close(self) -> None:
        pass

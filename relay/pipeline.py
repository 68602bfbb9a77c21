"""The hot path: frame -> parse -> normalise -> route -> render -> durable per-sink queue.

Sources call :meth:`Pipeline.handle` with a batch of ``(message bytes, peer)`` pairs.
Each message is parsed (RFC 5424 / 3164 / raw, per source strict or lenient),
normalised (docs/schema.md), matched against the routes in order (a ``final`` route
stops the search), and rendered once per matched sink.  The rendered payloads go to
each sink's :class:`GroupCommitter`, which writes everything submitted meanwhile, from
every connection, in one SQLite transaction (group commit) on its own thread.

``handle`` returns ``None`` when nothing was queued, else a future that completes when
every message of the batch is durably queued in every matched sink.  TCP/TLS sources
pause reading until then (durability and backpressure); UDP sources don't wait but stop
handing over while :meth:`backlog` exceeds ``max_backlog``.

Events that match no route are counted (``relay_unrouted_total``) and not queued: add
a catch-all route (``match = 'format exists'``) to keep everything.  An event a sink
cannot render goes straight to that sink's dead-letter table with the reason.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Callable

from formats import xsoar as xsoar_fmt
from formats.render import Renderer, RenderOptions
from parsers import detect
from parsers.event import FORMAT_RAW
from parsers.normalise import normalise

_parse = detect.parse
_normalise = normalise

from .config import Config, SinkConfig, SourceConfig
from .metrics import REGISTRY
from .queue import PACK_BYTES, PACK_EVENTS, DiskQueue, QueueDiskFull, QueueFull, unpack_rows

log = logging.getLogger("relay.pipeline")

__all__ = ["Pipeline", "GroupCommitter", "make_renderer"]


def make_renderer(cfg: SinkConfig) -> Callable:
    """sink config -> ``render(event, routes) -> bytes`` (what goes into its queue)."""
    if cfg.type in ("xsoar", "xsoar_webhook"):
        import orjson
        opts = cfg.options.get("xsoar_options") or xsoar_fmt.XsoarOptions()
        fn = xsoar_fmt.incident if cfg.type == "xsoar" else xsoar_fmt.webhook_item

        def render_xsoar(ev, routes):
            return orjson.dumps(fn(ev, opts, routes))
        return render_xsoar
    r = Renderer(RenderOptions(format=cfg.format, leef_vendor=cfg.leef_vendor, leef_product=cfg.leef_product,
                               leef_version=cfg.leef_version, leef_delimiter=cfg.leef_delimiter,
                               cef_vendor=cfg.cef_vendor, cef_product=cfg.cef_product, cef_version=cfg.cef_version,
                               hostname=cfg.hostname))
    # the renderer counts its sanitised characters into relay_sanitised_total{sink} itself
    # and takes (event, routes): its render method is the sink's render function, no wrapper
    r.sanitised_counter = REGISTRY.counter("relay_sanitised_total", sink=cfg.name)
    return r.render


class GroupCommitter:
    """Collects batches for one queue and commits them together on a dedicated thread.

    ``submit(items)`` returns an asyncio future resolved (on the loop) once the items are
    durable.  A full queue with policy ``block`` (or a full disk) keeps the futures
    pending and retries every ``retry_interval`` seconds: the sources stay paused, which
    is the backpressure.  ``drop_newest`` is applied by the queue and counted there.
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
            items = [it for kind, b, _ in batch if not kind for it in b]
            rows = [r for kind, b, _ in batch if kind for r in b]
            if rows and _small_caps(self.queue):   # caps too small for whole packed rows
                items += unpack_rows(rows)
                rows = []
            futs = [f for _, _, f in batch]
            groups = [(0, g) for g in _groups(items, self.queue)] if items else []
            if rows:
                groups += [(1, g) for g in _row_groups(rows, self.queue)]
            if dead:
                try:
                    self.queue.put_dead([(p, m, r) for p, m, r in dead])
                except Exception as e:  # keep trying: these are accepted events too
                    log.error("sink %s: cannot store %d unrenderable event(s) in the dead-letter table: %s",
                              self.name, len(dead), e)
                    with self._cv:
                        self._dead[:0] = dead
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


class Pipeline:
    """See the module docstring."""

    def __init__(self, config: Config, committers: dict[str, GroupCommitter], max_backlog: int = 200_000) -> None:
        self.committers = committers
        self.max_backlog = max_backlog
        self._source_counters: dict[str, tuple] = {}
        self.configure(config)

    def configure(self, config: Config) -> None:
        """(Re)build routes and renderers; called at start and on reload."""
        self.config = config
        # (name, match, sinks (each once, in order), final, counter); match is the compiled
        # rule's function without the Rule.__call__ layer
        self.routes = [(r.name, getattr(r.rule, "match", r.rule), tuple(dict.fromkeys(r.sinks)), r.final,
                        REGISTRY.counter("relay_routed_total", route=r.name))
                       for r in config.routes.values()]
        self.renderers = {name: make_renderer(s) for name, s in config.sinks.items()}
        self._full_meta_sinks = frozenset(name for name, s in config.sinks.items()
                                          if s.type in ("xsoar", "xsoar_webhook"))
        self._triage_counters: dict = {}
        self._last_counter: tuple = (None, None, None)   # (source, format, counter): see process
        self.enricher = None  # callable(event) filling event.enrich / triage; see relay/enrich
        if config.enrich is not None:
            from .enrich import build_enricher
            self.enricher = build_enricher(config)
        self._unrouted = REGISTRY.counter("relay_unrouted_total")
        self._render_err = {name: REGISTRY.counter("relay_render_errors_total", sink=name) for name in config.sinks}

    def _counters(self, source: SourceConfig):
        c = self._source_counters.get(source.name)
        if c is None:  # (parsed by format, failed by reason); sources count relay_received_total
            c = self._source_counters[source.name] = ({}, {})
        return c

    def backlog(self) -> int:
        return sum(c.pending for c in self.committers.values())

    def route(self, ev) -> tuple[list[str], list[str]]:
        """-> (matched route names, sink names in order, each once)."""
        names: list[str] = []
        sinks: list[str] = []
        for name, match, rsinks, final, counter in self.routes:
            if match(ev):
                counter.value += 1
                names.append(name)
                if sinks:
                    for s in rsinks:
                        if s not in sinks:
                            sinks.append(s)
                else:
                    sinks += rsinks
                if final:
                    break
        if ev.meta is not None:
            self._triage(ev.meta, names, sinks)
        return names, sinks

    def _triage(self, meta: dict, names: list, sinks: list) -> None:
        """Triage mode auto: an escalation adds sinks (relay/enrich)."""
        extra = meta.get("triage_sinks")
        if extra:
            rname = meta.get("triage_route") or "triage"
            c = self._triage_counters.get(rname)
            if c is None:
                c = self._triage_counters[rname] = REGISTRY.counter("relay_routed_total", route=rname)
            c.value += 1
            names.append(rname)
            for s in extra:
                if s not in sinks and s in self.renderers:
                    sinks.append(s)

    def _parsed_counter(self, source: SourceConfig, ev):
        """The counter this event adds to: relay_parsed_total{source, format}, or
        relay_parse_failed_total{source, reason} for a raw event."""
        c = self._source_counters.get(source.name)
        parsed_c, failed_c = c if c is not None else self._counters(source)
        if ev.format == FORMAT_RAW:
            kind = ev.error.kind if ev.error is not None else "unknown"
            c = failed_c.get(kind)
            if c is None:
                c = failed_c[kind] = REGISTRY.counter("relay_parse_failed_total", source=source.name, reason=kind)
        else:
            c = parsed_c.get(ev.format)
            if c is None:
                c = parsed_c[ev.format] = REGISTRY.counter("relay_parsed_total", source=source.name, format=ev.format)
        return c

    def process(self, raw: bytes, source: SourceConfig, peer: str | None, received: float):
        """One message -> (event, route names, [(sink, payload | None, meta, error)])."""
        name = source.name
        ev = _parse(raw, lenient=source.lenient, received=received, peer=peer, source=name)
        # the counter of the last (source, format) seen, else the per-source tables
        last = self._last_counter
        if last[0] is source and last[1] == ev.format:
            last[2].value += 1
        else:
            c = self._parsed_counter(source, ev)
            c.value += 1
            if ev.format != FORMAT_RAW:
                self._last_counter = (source, ev.format, c)
        _normalise(ev)
        if self.enricher is not None:
            self.enricher(ev)
        routes, sinks = self.route(ev)
        if not sinks:
            self._unrouted.value += 1
            return ev, routes, []
        # queue metadata: where the event came from and why it is there; the XSOAR sinks
        # also need the dedup key, event and status (the syslog and file sinks' payload
        # already carries those: keeping their rows small is bytes written twice saved)
        meta = {"source": name, "routes": routes, "received": received}
        renderers = self.renderers
        if len(sinks) == 1 and sinks[0] not in self._full_meta_sinks:
            s = sinks[0]
            try:
                return ev, routes, [(s, renderers[s](ev, routes), meta, None)]
            except Exception as e:  # an encoder refusing this event: keep it, dead-lettered with the reason
                self._render_err[s].value += 1
                return ev, routes, [(s, raw, self._full_meta(meta, ev.fields),
                                     f"render failed: {type(e).__name__}: {e}")]
        full = None
        out = []
        full_sinks = self._full_meta_sinks
        for s in sinks:
            m = meta
            if s in full_sinks:
                if full is None:
                    full = self._full_meta(meta, ev.fields)
                m = full
            try:
                out.append((s, renderers[s](ev, routes), m, None))
            except Exception as e:  # an encoder refusing this event: keep it, dead-lettered with the reason
                self._render_err[s].value += 1
                out.append((s, raw, self._full_meta(meta, ev.fields),
                             f"render failed: {type(e).__name__}: {e}"))
        return ev, routes, out

    @staticmethod
    def _full_meta(meta: dict, f: dict | None) -> dict:
        full = dict(meta)
        if f is not None:
            v = f.get("dedup_key")
            if v:
                full["dedup_key"] = v
            v = f.get("event")
            if v:
                full["event"] = v
            v = f.get("status")
            if v:
                full["status"] = v
        return full

    def handle(self, items: list, source: SourceConfig, received: float | None = None):
        if received is None:
            received = time.time()
        per_sink: dict[str, list] = {}
        for raw, peer in items:
            _, _, out = self.process(raw, source, peer, received)
            for sink, payload, meta, err in out:
                if err is not None:
                    self.committers[sink].submit_dead(payload, meta, err)
                    continue
                b = per_sink.get(sink)
                if b is None:
                    per_sink[sink] = [(payload, meta)]
                else:
                    b.append((payload, meta))
        if not per_sink:
            return None
        futs = [self.committers[s].submit(b) for s, b in per_sink.items()]
        if len(futs) == 1:
            return futs[0]
        return asyncio.gather(*futs)

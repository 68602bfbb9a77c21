"""The one stage: every event, from any source, is enriched, routed, rendered and queued here.

::

    raw bytes --parse()--> Event --stage()--> [(sink, payload, queue meta, dead-letter reason)]
               detect.parse        enrich (relay/enrich), triage
               normalise           route (rules, in order; ``final`` stops)
                                   render per matched sink (the sink kind's renderer)
                                   queue metadata per sink (the sink kind's ``meta`` fields)

:meth:`Pipeline.stage_into` is the only code that enriches, routes, renders and builds queue
metadata, for a list of events at a time (:meth:`Pipeline.stage` is it for one event, with the
per-event result).  :meth:`Pipeline.process` is ``parse`` then ``stage`` for one raw message;
:meth:`Pipeline.parse_batch` parses a listener batch in one call (parsers/native.py: the native
accelerator when it is active, the same Events either way).  Everything goes through them: the
listeners' batches (:meth:`handle`, in this process or in the ingest workers, relay/workers.py,
which run this same class), the pull sources' events
(:meth:`submit`), ``relay test-parse --config`` and the golden cases (relay/tools), so what a
case tests is what the daemon runs.

Hand-over.  :meth:`handle` takes a batch of ``(message bytes, peer)`` pairs from a listener and
returns ``None`` when nothing was queued, else a future that completes when every message of
the batch is durably queued in every matched sink.  TCP/TLS sources pause reading until then
(durability and backpressure); UDP sources don't wait but stop handing over while
:meth:`backlog` exceeds ``max_backlog``.  :meth:`submit` does the same for events a source has
already normalised and returns once they are durable.  The payloads go to each sink's
:class:`GroupCommitter`, the only writer of that sink's queue file, which writes everything
submitted meanwhile, from every source and worker, in one SQLite transaction, in the order it
was submitted.

Events that match no route are counted (``relay_unrouted_total``) and not queued: add a
catch-all route (``match = 'true'``) to keep everything.  An event a sink cannot render goes
straight to that sink's dead-letter table with the reason (``relay_render_errors_total``).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from parsers import detect, native
from parsers.rhythmx import DEFAULT_CONFIG as _RX_DEFAULT
from parsers.event import FORMAT_RAW
from parsers.httpbody import BodyError
from parsers.normalise import normalise

from . import kinds
from .config import Config, SourceConfig
from .metrics import REGISTRY
from .queue import GroupCommitter

_parse = detect.parse
_parse_items = native.parse_items     # the C accelerator when built, else detect.parse per message
_stage_batch = native.stage_batch     # the C stage of a listener batch (None on the pure path)
_normalise = normalise
_detect_parse = detect.parse
_RX_APP = _RX_DEFAULT.app_name       # parsers.normalise's first test (the C normaliser's shape)

log = logging.getLogger("relay.pipeline")


class OneSender:
    """A listener batch whose messages all come from one peer (a TCP connection's read): the
    frames and the peer once, where a list of ``(frame, peer)`` pairs would make a pair per
    message.  It counts, slices and iterates as those pairs; the native stage and the ingest
    workers' hand-over take it as it is."""
    __slots__ = ("peer", "frames")

    def __init__(self, peer, frames: list) -> None:
        self.peer = peer
        self.frames = frames

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self):
        peer = self.peer
        return ((f, peer) for f in self.frames)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return OneSender(self.peer, self.frames[k])
        return self.frames[k], self.peer

    def __reduce__(self):
        return OneSender, (self.peer, self.frames)

    def __repr__(self) -> str:
        return f"OneSender({self.peer!r}, {len(self.frames)} frames)"


def as_pairs(items) -> list:
    """A listener batch as a list of ``(frame, peer)`` pairs."""
    return list(items) if type(items) is OneSender else items

__all__ = ["Pipeline", "GroupCommitter", "DEAD_META", "Backpressure", "DecodeFailed", "decode_body", "STAGE_SLICE"]

#: :meth:`Pipeline.submit` yields to the event loop after staging this many events.
STAGE_SLICE = 128
#: Messages of a listener batch parsed and staged at a time (:meth:`Pipeline.stage_rows`).
STAGE_CHUNK = 256


class Backpressure(Exception):
    """A matched sink cannot take events now (:meth:`Pipeline.full` says why)."""


class DecodeFailed(Exception):
    """Decoding a request body failed with something else than a
    :class:`parsers.httpbody.BodyError` (a bug in a decoder or a map): the request is answered
    500 and nothing of it is queued."""


def decode_body(body: bytes, source: SourceConfig, received: float, peer: str | None = None,
                path: str | None = None, hec_raw: bool = False, query: dict | None = None) -> list:
    """A request body -> normalised events, by the source kind's ``decode``
    (:class:`relay.kinds.SourceKind`); raises BodyError (the body is wrong) or DecodeFailed."""
    decode = kinds.source(source.type).decode
    try:
        return decode(body, source, received, peer, path, hec_raw=hec_raw, query=query) or []
    except BodyError:
        raise
    except Exception as e:
        raise DecodeFailed(f"decoding the body failed: {type(e).__name__}: {e}") from e

#: Canonical fields a dead-lettered event's metadata carries, whatever its sink: what
#: identifies it when an operator looks at the dead letters or replays them.
DEAD_META = ("dedup_key", "event", "status")


class Pipeline:
    """See the module docstring.  ``committers``: sink name -> :class:`GroupCommitter` (none:
    nothing can be handed over, e.g. the tools and the ingest workers, which return their rows).
    ``dry_run``: enrichment makes no HTTP calls and writes no audit lines (relay/tools).
    ``lazy_enrich``: build the enrichment tables on the first event (the main process of a relay
    with ingest workers, which enriches only what the pull sources submit)."""

    def __init__(self, config: Config, committers: dict | None = None, *, max_backlog: int = 200_000,
                 dry_run: bool = False, lazy_enrich: bool = False) -> None:
        self.committers = committers if committers is not None else {}
        self.max_backlog = max_backlog
        self.dry_run = dry_run
        self.lazy_enrich = lazy_enrich
        self._source_counters: dict[str, tuple] = {}
        #: the live taps (relay/tap.py TapHub) while one is attached, else None: the hot path
        #: checks this attribute once per batch and pays nothing more without a tap
        self.tap = None
        self.configure(config)

    # ------------------------------------------------------------------ configuration
    def configure(self, config: Config) -> None:
        """(Re)build routes, renderers and enrichment; called at start and on reload."""
        self.config = config
        # (name, match, sinks (each once, in order), final, counter); match is the compiled
        # rule's function without the Rule.__call__ layer
        self.routes = [(r.name, getattr(r.rule, "match", r.rule), tuple(dict.fromkeys(r.sinks)), r.final,
                        REGISTRY.counter("relay_routed_total", route=r.name))
                       for r in config.routes.values()]
        self.renderers: dict[str, Callable] = {}
        self._meta_fields: dict[str, tuple] = {}
        for name, sc in config.sinks.items():
            kind = kinds.sink(sc.type)
            self.renderers[name] = kind.renderer(sc)
            if kind.meta:
                self._meta_fields[name] = kind.meta
        self._triage_counters: dict = {}
        self._last_counter: tuple = (None, None, None)   # (source, format, counter): see parse
        self._last_meta: dict = {"source": None, "routes": None, "received": None}   # see stage_into
        self.enricher = None  # callable(event) filling event.enrich / triage; see relay/enrich
        self._enrich_pending = config.enrich is not None and self.lazy_enrich
        if config.enrich is not None and not self.lazy_enrich:
            self.enricher = self._build_enricher(config)
        self._unrouted = REGISTRY.counter("relay_unrouted_total")
        self._enrich_err = REGISTRY.counter("relay_enrich_errors_total")
        self._render_err = {name: REGISTRY.counter("relay_render_errors_total", sink=name) for name in config.sinks}
        # the native stage (stage_rows): routes as (match, final, rule program), each LEEF sink's
        # inline spec
        self._native_routes = None
        if _stage_batch is None:
            self._native_why = native.WHY
        elif len(self.routes) > 62:
            self._native_why = f"more than 62 routes: {len(self.routes)}"
        elif config.enrich is not None:
            self._native_why = "enrichment is configured"
        else:
            self._native_why = None
            self._native_routes = tuple((match, bool(final), getattr(r.rule, "program", None))
                                        for (_, match, _, final, _), r in zip(self.routes, config.routes.values()))
        self._leef_specs = {}
        for name, r in self.renderers.items():
            spec_of = getattr(getattr(r, "__self__", None), "native_leef_spec", None)
            if spec_of is not None:
                self._leef_specs[name] = spec_of()

    def stage_path(self) -> str:
        """Which stage the listeners' batches take, and why (the start and reload log lines):
        ``native`` (``parsers._speedups.stage_batch``) or ``python (<why>)``."""
        return "native" if self._native_why is None else f"python ({self._native_why})"

    def _build_enricher(self, config: Config):
        from .enrich import build_enricher, dry_run
        if self.dry_run:  # no audit lines, no HTTP calls
            with dry_run():
                return build_enricher(config)
        return build_enricher(config)

    # ------------------------------------------------------------------ the stage
    def parse(self, raw: bytes, source: SourceConfig, peer: str | None, received: float):
        """One raw message -> a normalised Event, counted in relay_parsed_total{source, format}
        or relay_parse_failed_total{source, reason}."""
        ev = _parse(raw, lenient=source.lenient, received=received, peer=peer, source=source.name)
        self._count(source, ev)
        _normalise(ev)
        return ev

    def parse_batch(self, items: list, source: SourceConfig, received: float) -> list:
        """A listener batch of ``(raw, peer)`` pairs -> normalised Events, in order: what
        :meth:`parse` does for each, with the parse of the whole batch in one call
        (:func:`parsers.native.parse_items`: the native accelerator when it is active)."""
        evs = _parse_items(as_pairs(items), source.lenient, received, source.name)
        count = self._count
        for ev in evs:
            count(source, ev)
            _normalise(ev)
        return evs

    def stage_rows(self, items: list, source: SourceConfig, received: float, rows: dict, dead: dict,
                   observe=None) -> None:
        """A listener batch of ``(raw, peer)`` pairs -> :meth:`parse_batch` then
        :meth:`stage_into`, :data:`STAGE_CHUNK` messages at a time, so the Events of a large read
        die before the next ones are made (a small working set: with a whole 4,000-message read
        alive the collector's scans cost ~20% more per message).  The in-process ingest
        (:meth:`handle`) and the workers both go through it."""
        if self._native_routes is not None and observe is None:     # None with enrichment (configure)
            self._stage_native(items, source, received, rows, dead)
            return
        n = len(items)
        if n <= STAGE_CHUNK:
            self.stage_into(self.parse_batch(items, source, received), rows, dead, observe)
            return
        for k in range(0, n, STAGE_CHUNK):
            self.stage_into(self.parse_batch(items[k:k + STAGE_CHUNK], source, received), rows, dead, observe)

    def _stage_native(self, items: list, source: SourceConfig, received: float, rows: dict, dead: dict) -> None:
        """:meth:`stage_rows` through ``parsers._speedups.stage_batch``: the C code parses,
        normalises (the covered shapes), counts, runs the compiled rules, renders LEEF inline
        and appends to ``rows``, with no Python frame per event; the callables below are the
        Python stage's own code for the rest (the other normalisers and renderers, several
        sinks, metadata fields, dead letters, triage).  Same rows, dead letters and counters
        as :meth:`parse_batch` + :meth:`stage_into` (tests/test_native.py compares them)."""
        name = source.name
        entries: dict = {}      # route mask -> (names, meta, single), with its sinks

        def for_mask(mask):
            e = entries.get(mask)
            if e is None:
                names, sinks = self._routed(mask)
                meta = {"source": name, "routes": names, "received": received}
                single = None
                if len(sinks) == 1 and sinks[0] not in self._meta_fields:
                    s = sinks[0]
                    b = rows.get(s)
                    if b is None:
                        b = rows[s] = ([], [])
                    single = (s, b[0], b[1], self.renderers[s], self._leef_specs.get(s))
                e = entries[mask] = (names, meta, single, sinks)
            return e[:3]

        def multi(ev, names, meta, mask):
            sinks = entries[mask][3]
            if not sinks:       # routes without sinks: unrouted, as in stage_into
                self._unrouted.value += 1
                return
            _collect(self._render_sinks(ev, names, sinks, meta), rows, dead)

        def dead_letter(s, ev, meta, e):
            _, raw, m, err = self._dead(s, ev, meta, e)
            dead.setdefault(s, []).append((raw, m, err))

        def count_run(ev, n):
            self._parsed_counter(source, ev).value += n

        def done(counts, unrouted):
            for c, r in zip(counts, self.routes):
                if c:
                    r[4].value += c
            if unrouted:
                self._unrouted.value += unrouted

        lenient = source.lenient

        def fallback(raw, peer):
            return _detect_parse(raw, lenient=lenient, received=received, peer=peer, source=name)

        plan = (_normalise, _RX_APP, FORMAT_RAW, count_run, lambda ev: self.stage_into((ev,), rows, dead),
                self._native_routes, for_mask, multi, dead_letter, done)
        try:
            _stage_batch((items.peer, items.frames) if type(items) is OneSender else items, received, name, fallback,
                         lenient, plan)
        finally:
            for s in [s for s, b in rows.items() if not b[0]]:    # a sink whose only events were refused
                del rows[s]

    def _routed(self, mask: int) -> tuple[list, list]:
        """The route names and sinks (each once, in order) of a route mask (bit i: route i), as
        :meth:`route` makes them."""
        names: list[str] = []
        sinks: list[str] = []
        for i, (rname, _, rsinks, _, _) in enumerate(self.routes):
            if mask >> i & 1:
                names.append(rname)
                for s in rsinks:
                    if s not in sinks:
                        sinks.append(s)
        return names, sinks

    def _count(self, source: SourceConfig, ev) -> None:
        # the counter of the last (source, format) seen, else the per-source tables
        last = self._last_counter
        if last[0] is source and last[1] == ev.format:
            last[2].value += 1
        else:
            c = self._parsed_counter(source, ev)
            c.value += 1
            if ev.format != FORMAT_RAW:
                self._last_counter = (source, ev.format, c)

    def process(self, raw: bytes, source: SourceConfig, peer: str | None, received: float):
        """One raw message -> (event, route names, [(sink, payload, meta, error)]): parse, then stage."""
        ev = self.parse(raw, source, peer, received)
        routes, out = self.stage(ev)
        return ev, routes, out

    def stage(self, ev):
        """A normalised event -> (route names, [(sink, payload, queue meta, error)]): what
        :meth:`stage_into` does for it, as its own result (relay test-parse, the golden cases,
        :meth:`process`).

        ``payload`` is what goes into the sink's queue, ``error`` None; or, when the sink's
        renderer refused the event, ``payload`` is the event's raw bytes and ``error`` the
        dead-letter reason."""
        res: list = []
        self.stage_into((ev,), {}, {}, lambda _ev, routes, out: res.append((routes, out)))
        return res[0]

    def stage_into(self, evs, rows: dict, dead: dict, observe=None) -> None:
        """The stage, for normalised events in order: enrich, route, render for each matched
        sink, queue metadata.  Appends each rendered payload and its metadata to ``rows[sink]``
        (``([payload], [meta])``) and each event a sink's renderer refused to ``dead[sink]``
        (``[(raw, meta, reason)]``).  ``observe(event, route names, [(sink, payload, meta,
        error)])`` is called for every event when given (the taps, :meth:`stage`).

        The queue metadata is ``{source, routes, received}`` plus the canonical fields the
        sink kind asks for (``SinkKind.meta``).  Consecutive events with the same source,
        routes and receive time (a listener batch, mostly) share one metadata dict, which is
        never mutated, so encoders that cache by identity (the workers,
        ``DiskQueue.put_many``) encode it once."""
        enricher = self.enricher
        if enricher is None and self._enrich_pending:
            self._enrich_pending = False
            enricher = self.enricher = self._build_enricher(self.config)
        route = self.route
        renderers = self.renderers
        meta_fields = self._meta_fields
        meta = self._last_meta
        for ev in evs:
            if enricher is not None:
                try:
                    enricher(ev)
                except Exception as e:  # a lookup bug must not lose the event: routed unenriched
                    self._enrich_failed(ev, e)
            routes, sinks = route(ev)
            if not sinks:
                self._unrouted.value += 1
                if observe is not None:
                    observe(ev, routes, [])
                continue
            if meta["routes"] != routes or meta["received"] != ev.received or meta["source"] != ev.source:
                meta = self._last_meta = {"source": ev.source, "routes": routes, "received": ev.received}
            if len(sinks) == 1 and sinks[0] not in meta_fields:    # the usual case, inline
                s = sinks[0]
                try:
                    payload = renderers[s](ev, routes)
                except Exception as e:  # an encoder refusing this event: kept, dead-lettered with the reason
                    out = [self._dead(s, ev, meta, e)]
                else:
                    b = rows.get(s)
                    if b is None:
                        rows[s] = ([payload], [meta])
                    else:
                        b[0].append(payload)
                        b[1].append(meta)
                    if observe is not None:
                        observe(ev, routes, [(s, payload, meta, None)])
                    continue
            else:
                out = self._render_sinks(ev, routes, sinks, meta)
            _collect(out, rows, dead)
            if observe is not None:
                observe(ev, routes, out)

    def _render_sinks(self, ev, routes: list, sinks: list, meta: dict) -> list:
        """:meth:`stage_into` for an event with several sinks, or sinks that want canonical
        fields in their metadata -> [(sink, payload, meta, error)] in sink order."""
        renderers = self.renderers
        meta_fields = self._meta_fields
        out = []
        metas = None   # fields tuple -> meta dict, shared by the sinks that ask for the same fields
        for s in sinks:
            m = meta
            want = meta_fields.get(s)
            if want is not None:
                if metas is None:
                    metas = {}
                m = metas.get(want)
                if m is None:
                    m = metas[want] = _with_fields(meta, ev.fields, want)
                    if ev.meta is not None and "summary" in ev.meta:   # a summary to wait for (relay/enrich)
                        m["summary"] = ev.meta["summary"]
            try:
                out.append((s, renderers[s](ev, routes), m, None))
            except Exception as e:  # an encoder refusing this event: keep it, dead-lettered with the reason
                out.append(self._dead(s, ev, meta, e))
        return out

    def _enrich_failed(self, ev, e: Exception) -> None:
        self._enrich_err.value += 1
        ev.note(f"enrichment failed ({type(e).__name__}: {e}); routed without it")
        if self._enrich_err.value <= 10 or self._enrich_err.value % 10000 == 0:
            log.error("enrichment failed for an event from %s (%s: %s); it is routed without enrichment "
                      "(%d so far)", ev.source, type(e).__name__, e, self._enrich_err.value)

    def _dead(self, sink: str, ev, meta: dict, e: Exception) -> tuple:
        self._render_err[sink].value += 1
        return sink, ev.raw, _with_fields(meta, ev.fields, DEAD_META), f"render failed: {type(e).__name__}: {e}"

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

    def _counters(self, source: SourceConfig):
        c = self._source_counters.get(source.name)
        if c is None:  # (parsed by format, failed by reason); sources count relay_received_total
            c = self._source_counters[source.name] = ({}, {})
        return c

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

    # ------------------------------------------------------------------ hand-over
    def backlog(self) -> int:
        return sum(c.pending for c in self.committers.values())

    def handle(self, items: list, source: SourceConfig, received: float | None = None):
        """Raw messages from a listener: see the module docstring."""
        if received is None:
            received = time.time()
        rows: dict[str, tuple] = {}
        dead: dict[str, list] = {}
        tap = self.tap
        self.stage_rows(items, source, received, rows, dead, None if tap is None else tap.offer)
        self._submit_dead(dead)
        return self._commit(rows)

    def full(self, sinks=None) -> str | None:
        """Why events for ``sinks`` (sink names; default every sink) cannot be taken now, or None:
        a sink's committer is blocked (its queue or the disk is full, policy ``block``), or more
        than ``max_backlog`` events wait for their commit.  The http source answers 503 then."""
        committers = self.committers
        for s in (committers if sinks is None else sinks):
            c = committers.get(s)
            if c is not None and c.blocked_reason:
                return f"sink {s}: {c.blocked_reason}"
        if self.backlog() > self.max_backlog:
            return f"{self.backlog()} events wait for their queue commit (max_backlog {self.max_backlog})"
        return None

    async def submit(self, events, source: SourceConfig, *, refuse_when_full: bool = False) -> int:
        """Events a source has already normalised (``Event.fields`` set; ``source`` and
        ``received`` set on each): staged like every other event and durably queued; returns
        the number of queue rows written once all are committed (raises if a commit failed).

        Staging yields to the loop every :data:`STAGE_SLICE` events, so a large request never
        holds the loop for long.  ``refuse_when_full``: once staged, if a matched sink cannot
        take events now (:meth:`full`), raise :class:`Backpressure` and queue nothing (not even
        dead letters): the sender is told to retry later."""
        rows: dict[str, tuple] = {}
        dead: dict[str, list] = {}
        if not isinstance(events, list):
            events = list(events)
        for i in range(0, len(events), STAGE_SLICE):
            if i:
                await asyncio.sleep(0)
            tap = self.tap
            self.stage_into(events[i:i + STAGE_SLICE], rows, dead, None if tap is None else tap.offer)
        if refuse_when_full:
            why = self.full(list(rows) + list(dead))
            if why is not None:
                raise Backpressure(why)
        self._submit_dead(dead)
        fut = self._commit(rows)
        if fut is not None:
            await fut
        return sum(len(r[0]) for r in rows.values())

    async def submit_body(self, body: bytes, source: SourceConfig, *, received: float, peer: str | None = None,
                          path: str | None = None, hec_raw: bool = False, query: dict | None = None,
                          refuse_when_full: bool = False) -> int:
        """A request body of a source that takes whole bodies (the http source): decoded by the
        source kind (:func:`decode_body`), then :meth:`submit`; all or nothing.  Returns the
        number of events once all are durable.  With ingest workers,
        :meth:`relay.workers.WorkerPool.submit_body` runs this same decode and stage in a
        worker."""
        events = decode_body(body, source, received, peer, path, hec_raw, query)
        if events:
            await self.submit(events, source, refuse_when_full=refuse_when_full)
        return len(events)

    def _submit_dead(self, dead: dict) -> None:
        committers = self.committers
        for sink, items in dead.items():
            c = committers[sink]
            for payload, meta, err in items:
                c.submit_dead(payload, meta, err)

    def _commit(self, rows: dict):
        """``rows`` (sink -> ([payload], [meta]), :meth:`stage_into`) to the committers: None
        when there is nothing, else a future done once all are durable."""
        if not rows:
            return None
        committers = self.committers
        futs = [committers[s].submit(list(zip(p, m))) for s, (p, m) in rows.items()]
        if len(futs) == 1:
            return futs[0]
        return asyncio.gather(*futs)


def _collect(out: list, rows: dict, dead: dict) -> None:
    """[(sink, payload, meta, error)] of one event -> each payload and its metadata appended to
    ``rows[sink]``, each refused one (``error`` set) to ``dead[sink]``."""
    for s, payload, m, err in out:
        if err is not None:
            d = dead.get(s)
            if d is None:
                dead[s] = [(payload, m, err)]
            else:
                d.append((payload, m, err))
            continue
        b = rows.get(s)
        if b is None:
            rows[s] = ([payload], [m])
        else:
            b[0].append(payload)
            b[1].append(m)


def _with_fields(meta: dict, f: dict | None, keys: tuple) -> dict:
    """``meta`` plus the canonical fields ``keys`` that the event has (non-empty), in order."""
    out = dict(meta)
    if f is not None:
        for k in keys:
            v = f.get(k)
            if v:
                out[k] = v
    return out

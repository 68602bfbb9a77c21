"""Live taps: a sample of what flows through the one stage now (``relay tap``, ``GET /tap``).

A tap session watches one point, a source, a route or a sink, and shows each event it
samples in one view:

* ``raw``: the bytes as received;
* ``parsed``: the syslog fields (the ``test-parse --json`` schema), or the parse error;
* ``canonical``: the canonical event (``Event.fields``), its enrichment and triage;
* ``rendered``: what each matched sink queues (the exact bytes, or the JSON request), or the
  dead-letter reason; at a sink, only that sink's.

An optional rule (relay/rules.py, the routes' language) filters the sample; a rate limit (a
token bucket, ``rate`` events per second) thins it.

Cost and isolation.  :class:`relay.pipeline.Pipeline` holds ``tap = None`` while no session is
attached: the hot path pays one attribute check per message.  With sessions, the pipeline
calls :meth:`TapHub.offer` with the staged event; a session keeps a *reference* (no copy, no
formatting) in a bounded deque and wakes its reader.  Formatting and sending happen in the
reader's coroutine.  Nothing a tap does can block or fail the pipeline: a full deque (a slow
client) or the rate limit skips the event *for the tap*, counted by reason in
``relay_tap_skipped_total{point, reason}`` and in the session's status lines; an exception in
a session is logged and detaches it.

Where it sees events.  Everything the main process stages: the listeners' messages (with
``workers = 1``), the pull sources' and the http source's events.  With ``workers > 1`` the
listeners' messages are staged in the ingest worker processes, which the tap does not reach:
``GET /tap`` refuses a listener source then (409) and says so in the first line at a route
or a sink.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time

import orjson

from .metrics import REGISTRY

log = logging.getLogger("relay.tap")

__all__ = ["TapHub", "TapSession", "VIEWS", "POINTS", "TapError"]

VIEWS = ("raw", "parsed", "canonical", "rendered")
POINTS = ("source", "route", "sink")

#: sessions attached at once (``GET /tap`` answers 503 beyond)
MAX_SESSIONS = 8
#: events a session keeps for its reader; beyond, events are skipped (reason ``full``)
DEFAULT_BUFFER = 256
MAX_RATE = 10_000.0


class TapError(ValueError):
    """A tap request that cannot be served: ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class TapSession:
    """One client's tap.  :meth:`offer` runs on the pipeline's path (cheap, never raises on its
    own account); :meth:`records` is read by the client's coroutine."""

    def __init__(self, point: str, name: str, view: str, *, rule=None, filter_text: str | None = None,
                 rate: float = 10.0, buffer: int = DEFAULT_BUFFER, structured: dict | None = None) -> None:
        if point not in POINTS:
            raise TapError(400, f"point must be one of {', '.join(POINTS)}")
        if view not in VIEWS:
            raise TapError(400, f"view must be one of {', '.join(VIEWS)}")
        if not (0 < rate <= MAX_RATE):
            raise TapError(400, f"rate must be > 0 and <= {MAX_RATE:g} events per second")
        self.point, self.name, self.view = point, name, view
        self.rule = rule
        self.filter_text = filter_text
        self.rate = float(rate)
        self.capacity = max(1.0, self.rate)      # burst: one second's worth
        self.tokens = self.capacity
        self.last = time.monotonic()
        self.buffer = buffer
        self.q: collections.deque = collections.deque()
        self.structured = structured or {}
        self.wake = asyncio.Event()
        self.seen = 0          # events at the point that passed the filter
        self.sent = 0
        self.skipped_rate = 0
        self.skipped_full = 0
        label = f"{point}:{name}"
        self._c_rate = REGISTRY.counter("relay_tap_skipped_total", point=label, reason="rate")
        self._c_full = REGISTRY.counter("relay_tap_skipped_total", point=label, reason="full")
        self._c_sent = REGISTRY.counter("relay_tap_sent_total", point=label)

    # ------------------------------------------------------------------ the pipeline's side
    def offer(self, ev, routes, out) -> None:
        p = self.point
        if p == "source":
            if ev.source != self.name:
                return
        elif p == "route":
            if self.name not in routes:
                return
        else:
            for entry in out:
                if entry[0] == self.name:
                    break
            else:
                return
        rule = self.rule
        if rule is not None and not rule(ev):
            return
        self.seen += 1
        now = time.monotonic()
        tokens = self.tokens + (now - self.last) * self.rate
        self.last = now
        if tokens > self.capacity:
            tokens = self.capacity
        if tokens < 1.0:
            self.tokens = tokens
            self.skipped_rate += 1
            self._c_rate.value += 1
            return
        if len(self.q) >= self.buffer:
            self.tokens = tokens
            self.skipped_full += 1
            self._c_full.value += 1
            return
        self.tokens = tokens - 1.0
        self.q.append((time.time(), ev, routes, out))
        if not self.wake.is_set():
            self.wake.set()

    # ------------------------------------------------------------------ the reader's side
    def drain(self) -> list[dict]:
        """The records waiting, formatted in this session's view."""
        out = []
        q = self.q
        while q:
            t, ev, routes, staged = q.popleft()
            out.append(self.record(t, ev, routes, staged))
        self.sent += len(out)
        self._c_sent.value += len(out)
        return out

    def record(self, t: float, ev, routes, staged) -> dict:
        rec: dict = {"type": "event", "time": round(t, 6), "source": ev.source, "peer": ev.peer,
                     "routes": list(routes)}
        view = self.view
        if view == "raw":
            rec["raw"] = ev.raw.decode("utf-8", "backslashreplace")
        elif view == "parsed":
            err = ev.error
            rec["ok"] = err is None
            rec["error"] = None if err is None else {"offset": err.offset, "reason": err.reason}
            rec["syslog"] = None if err is not None or ev.format in ("json", "api") else ev.syslog_dict()
            if ev.notes:
                rec["notes"] = list(ev.notes)
        elif view == "canonical":
            rec["event"] = ev.fields
            if ev.enrich is not None:
                rec["enrich"] = ev.enrich
            if ev.meta is not None and ev.meta.get("triage") is not None:
                rec["triage"] = ev.meta.get("triage")
        else:
            sinks = {}
            for s, payload, _meta, err in staged:
                if self.point == "sink" and s != self.name:
                    continue
                if err is not None:
                    sinks[s] = {"dead_letter": err}
                elif self.structured.get(s):
                    try:
                        sinks[s] = orjson.loads(payload)
                    except orjson.JSONDecodeError:
                        sinks[s] = payload.decode("utf-8", "backslashreplace")
                else:
                    sinks[s] = payload.decode("utf-8", "backslashreplace") if isinstance(payload, bytes) else payload
            rec["sinks"] = sinks
        return rec

    def status(self) -> dict:
        return {"type": "status", "seen": self.seen, "sent": self.sent,
                "skipped": {"rate": self.skipped_rate, "full": self.skipped_full},
                "skipped_total": self.skipped_rate + self.skipped_full}


class TapHub:
    """The sessions attached to one pipeline.  The pipeline's ``tap`` attribute is this hub
    while a session is attached, else None."""

    def __init__(self, pipeline) -> None:
        self.pipeline = pipeline
        self.sessions: list[TapSession] = []
        self._gauge = REGISTRY.gauge("relay_tap_sessions")

    def attach(self, s: TapSession) -> None:
        if len(self.sessions) >= MAX_SESSIONS:
            raise TapError(503, f"{MAX_SESSIONS} tap sessions are attached already; try again later")
        self.sessions.append(s)
        self._gauge.value = len(self.sessions)
        self.pipeline.tap = self

    def detach(self, s: TapSession) -> None:
        if s in self.sessions:
            self.sessions.remove(s)
        self._gauge.value = len(self.sessions)
        if not self.sessions:
            self.pipeline.tap = None

    def offer(self, ev, routes, out) -> None:
        for s in self.sessions:
            try:
                s.offer(ev, routes, out)
            except Exception:   # a tap must never fail the pipeline: drop the session
                log.exception("tap on %s %s failed; detached", s.point, s.name)
                self.detach(s)


def endpoint(hub: TapHub, config_fn, workers: int):
    """The ``GET /tap`` handler for :class:`relay.metrics.MetricsServer` (its token check has
    run): loopback only unless tokens are set."""
    from urllib.parse import parse_qs

    from .httpserver import is_loopback, respond
    text = b"text/plain; charset=utf-8"

    async def handle(server, scope, receive, send) -> int:
        if not server.tokens and not is_loopback(server.host):
            await respond(send, 403, b"tap refused: the metrics address is not loopback and no token is set "
                                     b"([relay] metrics_token_env / metrics_token_file)\n", text)
            return 403
        query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode("utf-8", "replace"),
                                                  keep_blank_values=True).items()}
        try:
            await serve(hub, query, receive, send, config=config_fn(), workers=workers)
        except TapError as e:
            await respond(send, e.status, (str(e) + "\n").encode(), text)
            return e.status
        return 200
    return handle


def dumps(rec: dict) -> bytes:
    return orjson.dumps(rec, default=str, option=orjson.OPT_NON_STR_KEYS) + b"\n"


async def serve(hub: TapHub, query: dict, receive, send, *, config, workers: int) -> None:
    """``GET /tap?source=NAME|route=NAME|sink=NAME&view=&filter=&rate=&count=&duration=``:
    NDJSON lines (``hello``, ``event``s, ``status`` every second while something changed, a
    last ``status``).  Raises :class:`TapError` before the response starts."""
    from . import kinds
    points = [p for p in POINTS if query.get(p)]
    if len(points) != 1:
        raise TapError(400, "name exactly one point: source=NAME, route=NAME or sink=NAME")
    point = points[0]
    name = query[point]
    known = {"source": config.sources, "route": config.routes, "sink": config.sinks}[point]
    if name not in known:
        raise TapError(404, f"no {point} named {name!r} (configured: {', '.join(sorted(known)) or 'none'})")
    note = None
    if workers > 1:
        if point == "source" and kinds.source(config.sources[name].type).transport is not None:
            raise TapError(409, f"source {name!r} is a listener and workers = {workers}: its messages are staged "
                                f"in the ingest worker processes, which the tap does not reach (tap a route or a "
                                f"sink to see pulled and http events, or run with workers = 1)")
        note = (f"workers = {workers}: listener messages are staged in the ingest workers and are not seen "
                f"here; pulled and http events are")
    view = query.get("view") or ("rendered" if point == "sink" else "parsed")
    try:
        rate = float(query.get("rate") or 10)
        count = int(query["count"]) if query.get("count") else None
        duration = float(query["duration"]) if query.get("duration") else None
        buffer = int(query.get("buffer") or DEFAULT_BUFFER)
    except ValueError as e:
        raise TapError(400, f"bad number: {e}") from None
    if count is not None and count < 1 or duration is not None and duration <= 0 or not 1 <= buffer <= 100_000:
        raise TapError(400, "count must be >= 1, duration > 0, buffer 1..100000")
    rule = None
    ftext = query.get("filter") or None
    if ftext:
        from .rules import RuleSyntaxError, compile_rule
        try:
            rule = compile_rule(ftext)
        except RuleSyntaxError as e:
            raise TapError(400, f"filter: {e}") from None
    structured = {n: kinds.sink(sc.type).structured for n, sc in config.sinks.items()}
    session = TapSession(point, name, view, rule=rule, filter_text=ftext, rate=rate, buffer=buffer,
                         structured=structured)
    hub.attach(session)
    gone = asyncio.Event()

    async def watch():
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                gone.set()
                return
    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/x-ndjson"), (b"cache-control", b"no-store")]})
        hello = {"type": "hello", "point": point, "name": name, "view": view, "rate": rate, "filter": ftext,
                 "count": count, "duration": duration}
        if note:
            hello["note"] = note
        await send({"type": "http.response.body", "body": dumps(hello), "more_body": True})
        deadline = None if duration is None else time.monotonic() + duration
        last_status = None
        next_status = time.monotonic() + 1.0
        while not gone.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            timeout = next_status - now
            if deadline is not None:
                timeout = min(timeout, deadline - now)
            if not session.q:
                session.wake.clear()
                try:
                    await asyncio.wait_for(session.wake.wait(), max(0.0, timeout))
                except asyncio.TimeoutError:
                    pass
            recs = session.drain()
            if count is not None and session.sent >= count:
                extra = session.sent - count
                if extra:
                    recs = recs[:len(recs) - extra]
                    session.sent = count
            if recs:
                await send({"type": "http.response.body", "body": b"".join(dumps(r) for r in recs), "more_body": True})
            if count is not None and session.sent >= count:
                break
            if time.monotonic() >= next_status:
                next_status = time.monotonic() + 1.0
                st = session.status()
                key = (st["seen"], st["sent"], st["skipped_total"])
                if key != last_status:
                    last_status = key
                    await send({"type": "http.response.body", "body": dumps(st), "more_body": True})
        hub.detach(session)
        final = session.status()
        final["final"] = True
        if not gone.is_set():
            await send({"type": "http.response.body", "body": dumps(final), "more_body": False})
    finally:
        hub.detach(session)
        watcher.cancel()

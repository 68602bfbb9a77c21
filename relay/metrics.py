"""Counters and gauges, Prometheus text exposition, and the /metrics /health /ready server.

Hot-path use: get a bound metric once (``c = REGISTRY.counter("relay_received_total",
source="tcp")``) and do ``c.value += 1`` per event: no dict lookups per message.

Metric names are documented in docs/operations.md.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Callable

log = logging.getLogger("relay.metrics")

__all__ = ["Counter", "Gauge", "Histogram", "Registry", "REGISTRY", "MetricsServer"]

HELP = {
    "relay_info": "Always 1: the relay's version and its hot path (native: the C accelerator parses; python: RELAY_PURE=1 or not built).",
    "relay_received_total": "Messages received, by source.",
    "relay_parsed_total": "Messages parsed, by source and format.",
    "relay_parse_failed_total": "Messages that failed to parse (kept as raw events), by source and reason.",
    "relay_dropped_total": "Messages dropped before queueing, by source and reason.",
    "relay_udp_kernel_drops_total": "Datagrams the kernel dropped on a UDP source socket (receive buffer full).",
    "relay_connections": "Open TCP/TLS connections, by source.",
    "relay_routed_total": "Events matched by a route, by route.",
    "relay_unrouted_total": "Events that matched no route.",
    "relay_enqueued_total": "Events durably queued, by sink.",
    "relay_sent_total": "Events delivered and acknowledged, by sink.",
    "relay_retried_total": "Delivery attempts that failed and were scheduled again, by sink.",
    "relay_dead_lettered_total": "Events moved to the dead-letter table, by sink.",
    "relay_send_errors_total": "Delivery errors, by sink and reason.",
    "relay_render_errors_total": "Events a sink could not render (dead-lettered with the reason), by sink.",
    "relay_sanitised_total": "Values changed by an encoder's documented sanitising rule, by sink.",
    "relay_queue_commits_total": "Group commits (transactions) into a sink's queue; enqueued / commits = rows per commit.",
    "relay_queue_dropped_total": "Events dropped because a sink's queue was full (policy drop_newest), by sink.",
    "relay_queue_depth": "Events waiting in a sink's queue.",
    "relay_queue_oldest_age_seconds": "Age of the oldest event in a sink's queue.",
    "relay_dlq_depth": "Events in a sink's dead-letter table.",
    "relay_queue_recovered_total": "Corrupted queue files moved aside at start-up, by sink.",
    "relay_sink_up": "1 when the sink's last delivery succeeded, 0 after a failure.",
    "relay_sink_blocked": "1 when the sink stopped on an authorisation error (events stay queued).",
    "relay_config_reloads_total": "Configuration reloads, by result.",
    "relay_xsoar_incidents_total": "XSOAR outcomes per event (created, found, dedup_hit, skipped, updated, unchanged, closed, version_conflicts), by sink.",
    "relay_xsoar_requests_total": "XSOAR HTTP requests, by sink, operation and status.",
    "relay_xsoar_dedup_entries": "Keys in the XSOAR sink's dedup store.",
    "relay_worker_restarts_total": "Ingest worker processes that died and were restarted.",
    "relay_udp_receive_buffer_bytes": "The receive buffer the kernel granted a UDP source socket.",
    "relay_rule_errors_total": "Rule evaluations that failed (counted as no match), by route.",
    "relay_metrics_requests_total": "Requests to /metrics, /health and /ready, by status.",
    "relay_http_requests_total": "Requests to an http source, by source, status and reason.",
    "relay_http_request_seconds": "Time an http source took from reading a request's body to its 200 (durably queued), histogram, by source.",
    "relay_xsoar_request_seconds": "Time XSOAR took to answer a request (histogram), by sink and operation (search, create, update, ...).",
    "relay_http_sink_request_seconds": "Time an http sink's server took to answer a request (histogram), by sink and operation.",
    "relay_lookup_cache_total": "HTTP lookup cache probes on the hot path, by table and result (hit, miss).",
    "relay_pull_last_success_timestamp_seconds": "Unix time of a pull source's last completed poll (its start time until the first one).",
    "relay_pull_interval_seconds": "A pull source's configured poll interval.",
    "relay_tap_sessions": "Tap sessions attached now.",
    "relay_tap_sent_total": "Events a tap sent to its client, by point.",
    "relay_tap_skipped_total": "Events a tap skipped (never the pipeline), by point and reason (rate, full).",
    "relay_pull_incident_events_total": "RhythmX incidents a rhythmx_api source queued, by source and event (created, updated, closed).",
    "relay_mirror_events_total": "Closure and assignment events the XSOAR mirror queued, by source, event and origin.",
    "relay_mirror_skipped_total": "XSOAR changes the mirror did not emit, by source and reason (own_close: the relay's own close, the loop guard; not_an_origin).",
    "relay_writeback_total": "Write-back outcomes, by sink and action (patched, closed, already_closed, duplicate, note_added, note_present, assigned, assign_present).",
    "relay_writeback_requests_total": "Write-back HTTP requests, by sink, operation and status.",
    "relay_writeback_dedup_entries": "Writes remembered in a write-back sink's dedup store.",
}

#: counters other threads increment (the group-commit threads, the lookup fetchers): code that
#: sets counters back after a dry run (the golden cases, the web console) leaves these alone, so
#: an increment made meanwhile by another thread is never lost (a dry run never touches them)
OFF_LOOP_COUNTERS = frozenset(("relay_enqueued_total", "relay_queue_commits_total", "relay_dead_lettered_total",
                               "relay_queue_dropped_total", "relay_lookup_requests_total",
                               "relay_lookup_circuit_opened_total", "relay_lookup_queue_full_total"))

#: default histogram buckets (seconds): request latencies from 5 ms to 30 s
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Counter:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class Gauge:
    __slots__ = ("value", "fn")

    def __init__(self, fn: Callable[[], float] | None = None) -> None:
        self.value = 0.0
        self.fn = fn

    def get(self) -> float:
        if self.fn is not None:
            try:
                v = self.fn()
            except Exception:  # a gauge must never break the exposition
                return math.nan
            return math.nan if v is None else v
        return self.value


class Histogram:
    """Cumulative buckets, sum and count (Prometheus ``histogram``); ``observe`` per request."""
    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.sum += v
        self.count += 1
        for i, b in enumerate(self.bounds):
            if v <= b:
                self.counts[i] += 1
                break

    def buckets(self) -> list[tuple[str, int]]:
        """``[(le, cumulative count)]`` ending with ``+Inf``."""
        out, acc = [], 0
        for b, n in zip(self.bounds, self.counts):
            acc += n
            out.append((repr(float(b)), acc))
        out.append(("+Inf", self.count))
        return out


def _labels(labels: dict) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Registry:
    def __init__(self) -> None:
        self._counters: dict[tuple, Counter] = {}
        self._gauges: dict[tuple, Gauge] = {}
        self._external: dict[object, dict[tuple, float]] = {}  # worker id -> counter snapshot
        self._hists: dict[tuple, Histogram] = {}

    def counters_snapshot(self) -> dict[tuple, float]:
        """``{(name, labels): value}`` of every counter (sent by ingest workers)."""
        return {k: c.value for k, c in self._counters.items()}

    def set_external(self, origin, snapshot: dict[tuple, float]) -> None:
        """Counters from another process (an ingest worker); added to ours when read."""
        self._external[origin] = snapshot

    def _merged_counters(self) -> dict[tuple, float]:
        out = {k: c.value for k, c in self._counters.items()}
        for snap in self._external.values():
            for k, v in snap.items():
                out[k] = out.get(k, 0) + v
        return out

    def counter(self, name: str, **labels) -> Counter:
        key = (name, _labels(labels))
        c = self._counters.get(key)
        if c is None:
            c = self._counters[key] = Counter()
        return c

    def inc(self, name: str, n: int = 1, **labels) -> None:
        self.counter(name, **labels).value += n

    def gauge(self, name: str, fn: Callable[[], float] | None = None, **labels) -> Gauge:
        key = (name, _labels(labels))
        g = self._gauges.get(key)
        if g is None:
            g = self._gauges[key] = Gauge(fn)
        elif fn is not None:
            g.fn = fn
        return g

    def histogram(self, name: str, bounds: tuple = LATENCY_BUCKETS, **labels) -> Histogram:
        key = (name, _labels(labels))
        h = self._hists.get(key)
        if h is None:
            h = self._hists[key] = Histogram(bounds)
        return h

    def remove_gauges(self, **labels) -> None:
        want = set(_labels(labels))
        for key in [k for k in self._gauges if want <= set(k[1])]:
            del self._gauges[key]

    def value(self, name: str, **labels) -> float:
        """For tests and the CLI: the current value (0 when never set)."""
        key = (name, _labels(labels))
        merged = self._merged_counters()
        if key in merged:
            return merged[key]
        if key in self._gauges:
            return self._gauges[key].get()
        return 0

    def total(self, name: str, **labels) -> float:
        """Sum over every label set that includes ``labels``."""
        want = set(_labels(labels))
        return sum(v for (n, lab), v in self._merged_counters().items() if n == name and want <= set(lab))

    def render(self) -> str:
        by_name: dict[str, list] = {}
        for (name, lab), v in self._merged_counters().items():
            by_name.setdefault(name, []).append(("counter", lab, v))
        for (name, lab), g in self._gauges.items():
            by_name.setdefault(name, []).append(("gauge", lab, g.get()))
        for (name, lab), h in self._hists.items():
            by_name.setdefault(name, []).append(("histogram", lab, h))
        out = []
        for name in sorted(by_name):
            rows = by_name[name]
            out.append(f"# HELP {name} {HELP.get(name, name)}")
            kind = rows[0][0]
            if kind == "gauge" and name.endswith("_total"):
                kind = "counter"     # a counter read from elsewhere (the kernel's drops): still a counter
            out.append(f"# TYPE {name} {kind}")
            if rows[0][0] == "histogram":
                for _, lab, h in sorted(rows, key=lambda r: r[1]):
                    ls = ",".join(f'{k}="{_esc(val)}"' for k, val in lab)
                    sep = "," if ls else ""
                    for le, n in h.buckets():
                        out.append(f'{name}_bucket{{{ls}{sep}le="{le}"}} {n}')
                    out.append(f"{name}_sum{{{ls}}} {h.sum!r}" if ls else f"{name}_sum {h.sum!r}")
                    out.append(f"{name}_count{{{ls}}} {h.count}" if ls else f"{name}_count {h.count}")
                continue
            for _, lab, v in sorted(rows, key=lambda r: r[1]):
                ls = ",".join(f'{k}="{_esc(val)}"' for k, val in lab)
                if isinstance(v, float):
                    vs = "NaN" if math.isnan(v) else repr(v)
                else:
                    vs = str(v)
                out.append(f"{name}{{{ls}}} {vs}" if ls else f"{name} {vs}")
        return "\n".join(out) + "\n"

    def clear(self) -> None:
        self._counters.clear()
        self._gauges.clear()
        self._external.clear()
        self._hists.clear()


REGISTRY = Registry()


class MetricsServer:
    """``GET /metrics``, ``/health`` and ``/ready`` on the relay's HTTP server
    (relay/httpserver.py, the same one as the http source).

    ``/health`` is 200 while the process runs its loop; ``/ready`` is 200 once the sources
    listen and the queues are open (``ready_fn`` returns (ok, detail)), else 503.  With
    ``tokens`` (bearer tokens, :class:`relay.secrets.Secret`), every path needs
    ``Authorization: Bearer <token>`` (401 otherwise, counted in
    ``relay_metrics_requests_total{status="401"}``); :meth:`start` logs a warning when the
    address is not loopback and no token is set.
    """

    def __init__(self, host: str, port: int, registry: Registry = REGISTRY,
                 ready_fn: Callable[[], tuple[bool, str]] | None = None, tokens: tuple = (),
                 routes: dict | None = None, prefixes: dict | None = None) -> None:
        self.host, self.port = host, port
        #: paths under a prefix served by a handler that checks its own credentials (the web
        #: console, relay/console: a browser cannot send the metrics bearer token):
        #: ``prefix -> async handler(server, scope, receive, send) -> status``
        self.prefixes = dict(prefixes or {})
        #: more GET paths: ``path -> async handler(server, scope, receive, send) -> status`` (the
        #: tap, relay/tap.py); the token check above applies to them too
        self.routes = dict(routes or {})
        self.registry = registry
        self.ready_fn = ready_fn or (lambda: (True, "ready"))
        self.tokens = tuple(tokens)
        self._server = None
        self.started = time.time()
        self._requests: dict = {}

    async def start(self) -> None:
        from .httpserver import HttpServer, is_loopback
        self._server = HttpServer(self._app, self.host, self.port, max_connections=64, keep_alive=30.0,
                                  name="metrics")
        await self._server.start()
        self.port = self._server.port
        if not is_loopback(self.host) and not self.tokens:
            log.warning("metrics on %s:%d are reachable from other hosts without authentication: set "
                        "[relay] metrics_token_env or metrics_token_file, or bind 127.0.0.1", self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            await self._server.close(1.0)
            self._server = None

    def _count(self, status: int) -> None:
        c = self._requests.get(status)
        if c is None:
            c = self._requests[status] = self.registry.counter("relay_metrics_requests_total", status=str(status))
        c.value += 1

    def _authorized(self, scope) -> bool:
        if not self.tokens:
            return True
        import hmac
        from .httpserver import header
        got = header(scope, b"authorization") or b""
        if got[:7].lower() != b"bearer ":
            return False
        given = got[7:].strip()
        ok = False
        for t in self.tokens:   # constant time per token, every token compared
            ok |= hmac.compare_digest(given, t.reveal().encode())
        return ok

    async def _app(self, scope, receive, send) -> None:
        from .httpserver import respond
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        text = b"text/plain; charset=utf-8"
        for prefix, handler in self.prefixes.items():
            if path == prefix.rstrip("/") or path.startswith(prefix):
                self._count(await handler(self, scope, receive, send))
                return
        if not self._authorized(scope):
            self._count(401)
            await respond(send, 401, b"unauthorized: send Authorization: Bearer <token>\n", text,
                          [(b"www-authenticate", b'Bearer realm="relay metrics"')])
            return
        extra = self.routes.get(path)
        if extra is not None and method == "GET":
            self._count(await extra(self, scope, receive, send))
            return
        if method not in ("GET", "HEAD"):
            status, body, ctype = 405, b"method not allowed\n", text
        elif path == "/metrics":
            status, body = 200, self.registry.render().encode()
            ctype = b"text/plain; version=0.0.4; charset=utf-8"
        elif path == "/health":
            status, body, ctype = 200, b"ok\n", text
        elif path == "/ready":
            ok, detail = self.ready_fn()
            status, body, ctype = (200 if ok else 503), (detail.rstrip("\n") + "\n").encode(), text
        else:
            status, body, ctype = 404, b"not found: try /metrics, /health or /ready\n", text
        self._count(status)
        await respond(send, status, body, ctype, head=method == "HEAD")

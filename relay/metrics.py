"""Counters and gauges, Prometheus text exposition, and the /metrics /health /ready server.

Hot-path use: get a bound metric once (``c = REGISTRY.counter("relay_received_total",
source="tcp")``) and do ``c.value += 1`` per event: no dict lookups per message.

Metric names are documented in docs/operations.md.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Callable

log = logging.getLogger("relay.metrics")

__all__ = ["Counter", "Gauge", "Registry", "REGISTRY", "MetricsServer"]

HELP = {
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
}


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


def _labels(labels: dict) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Registry:
    def __init__(self) -> None:
        self._counters: dict[tuple, Counter] = {}
        self._gauges: dict[tuple, Gauge] = {}
        self._external: dict[object, dict[tuple, float]] = {}  # worker id -> counter snapshot

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
        out = []
        for name in sorted(by_name):
            rows = by_name[name]
            out.append(f"# HELP {name} {HELP.get(name, name)}")
            out.append(f"# TYPE {name} {rows[0][0]}")
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


REGISTRY = Registry()


class MetricsServer:
    """A minimal HTTP/1.1 server on asyncio for ``GET /metrics``, ``/health`` and ``/ready``.

    ``/health`` is 200 while the process runs its loop; ``/ready`` is 200 once the sources
    listen and the queues are open (``ready_fn`` returns (ok, detail)), else 503.
    """

    def __init__(self, host: str, port: int, registry: Registry = REGISTRY,
                 ready_fn: Callable[[], tuple[bool, str]] | None = None) -> None:
        self.host, self.port = host, port
        self.registry = registry
        self.ready_fn = ready_fn or (lambda: (True, "ready"))
        self._server: asyncio.base_events.Server | None = None
        self.started = time.time()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError):
                return
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = line.split()
            if len(parts) < 2:
                await self._reply(writer, 400, "bad request\n")
                return
            method, path = parts[0], parts[1].split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                await self._reply(writer, 405, "method not allowed\n")
            elif path == "/metrics":
                await self._reply(writer, 200, self.registry.render(),
                                  "text/plain; version=0.0.4; charset=utf-8", head_only=method == "HEAD")
            elif path == "/health":
                await self._reply(writer, 200, "ok\n")
            elif path == "/ready":
                ok, detail = self.ready_fn()
                await self._reply(writer, 200 if ok else 503, detail.rstrip("\n") + "\n")
            else:
                await self._reply(writer, 404, "not found: try /metrics, /health or /ready\n")
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _reply(writer, status: int, body: str, ctype: str = "text/plain; charset=utf-8",
                     head_only: bool = False) -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  503: "Service Unavailable"}[status]
        data = body.encode()
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\n"
                     f"Connection: close\r\n\r\n".encode() + (b"" if head_only else data))
        await writer.drain()

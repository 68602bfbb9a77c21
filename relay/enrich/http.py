"""HTTP lookups (a CMDB REST API, a scanner, a TI service) that never stall the pipeline.

The hot path only reads the cache (:meth:`HttpLookup.get`, a dict probe).  A miss (or an
expired entry) queues the value for a background fetcher thread and the event goes on
without that context; ``get`` then answers :data:`PENDING` (or :data:`UNAVAILABLE` while the
circuit breaker is open, or when the queue is full) so the enricher can say which context
is missing.  An expired entry is still served while its refresh is in flight
(stale-while-revalidate).

Circuit breaker: ``failures`` consecutive errors or timeouts open the circuit for
``cooldown`` seconds (nothing is fetched, queued misses are dropped); then one request is let
through (half-open): success closes the circuit, failure opens it again.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
import urllib.parse

import orjson

from ..metrics import REGISTRY
from .tables import Opts, RowError, _asset_attrs, _float, _int, _str, _tags, _ti_attrs

log = logging.getLogger("relay.enrich")

__all__ = ["HttpLookup", "PENDING", "UNAVAILABLE"]


class _Flag(str):
    pass


PENDING = _Flag("pending")          # not cached yet: being fetched in the background
UNAVAILABLE = _Flag("unavailable")  # circuit open or fetch queue full: not even being fetched
_NOT_FOUND = object()


class HttpLookup:
    def __init__(self, name: str, kind: str, url: str, *, opts: Opts, timeout: float = 1.0, ttl: float = 300.0,
                 negative_ttl: float = 60.0, failures: int = 3, cooldown: float = 30.0, headers: dict | None = None,
                 result: str | None = None, max_entries: int = 100_000, max_pending: int = 1000,
                 concurrency: int = 2, live: bool = True, transport=None) -> None:
        """``transport``: an httpx transport to send through instead of the network (tests:
        ``httpx.MockTransport``)."""
        self.name, self.kind, self.url = name, kind, url
        self.transport = transport
        self.opts = opts
        self.timeout, self.ttl, self.negative_ttl = timeout, ttl, negative_ttl
        self.failures, self.cooldown = failures, cooldown
        self.headers = dict(headers or {})
        self.result_path = tuple(result.split(".")) if result else ()
        self.max_entries = max_entries
        self.live = live
        self.cache: dict = {}       # value -> (expires monotonic, (key, attrs) | _NOT_FOUND)
        self.pending: set = set()
        self.q: queue.Queue = queue.Queue(max_pending)
        self.consecutive = 0
        self.open_until = 0.0       # circuit open while monotonic() < open_until
        self.half_open = False
        self._trial = False
        self.last_error: str | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._client = None
        self._c = {r: REGISTRY.counter("relay_lookup_requests_total", table=name, result=r)
                   for r in ("ok", "not_found", "error", "timeout")}
        self._opened = REGISTRY.counter("relay_lookup_circuit_opened_total", table=name)
        self._dropped = REGISTRY.counter("relay_lookup_queue_full_total", table=name)
        self._hit = REGISTRY.counter("relay_lookup_cache_total", table=name, result="hit")
        self._miss = REGISTRY.counter("relay_lookup_cache_total", table=name, result="miss")
        REGISTRY.gauge("relay_lookup_circuit_open", fn=lambda: 1.0 if self.circuit_open() else 0.0, table=name)
        self.threads = []
        if live:
            import httpx  # noqa: F401  (imported here, not in a fetcher thread while events flow)
            for i in range(max(1, concurrency)):
                t = threading.Thread(target=self._run, name=f"lookup-{name}-{i}", daemon=True)
                t.start()
                self.threads.append(t)

    # ------------------------------------------------------------------ hot path
    def circuit_open(self) -> bool:
        return time.monotonic() < self.open_until

    def get(self, value: str):
        """-> (key, attrs) | None (known: not found) | PENDING | UNAVAILABLE.  Never blocks."""
        hit = self.cache.get(value)
        now = time.monotonic()
        if hit is not None:
            self._hit.value += 1
            if hit[0] < now:
                self._want(value, now)       # refresh in the background, serve the stale answer
            v = hit[1]
            return None if v is _NOT_FOUND else v
        self._miss.value += 1
        return self._want(value, now)

    def _want(self, value: str, now: float):
        if not self.live:
            return UNAVAILABLE
        if now < self.open_until:
            return UNAVAILABLE
        if value in self.pending:
            return PENDING
        try:
            self.q.put_nowait(value)
        except queue.Full:
            self._dropped.value += 1
            return UNAVAILABLE
        self.pending.add(value)
        return PENDING

    def status(self) -> str:
        if self.circuit_open():
            return f"circuit open ({self.last_error})"
        return "fetching"

    # ------------------------------------------------------------------ background
    def _http(self):
        if self._client is None:
            import httpx
            self._client = httpx.Client(timeout=httpx.Timeout(self.timeout), headers=self.headers,
                                        follow_redirects=False, trust_env=False, transport=self.transport)
        return self._client

    def _run(self) -> None:
        while not self._closed:
            try:
                value = self.q.get(timeout=0.5)
            except queue.Empty:
                continue
            if value is None:
                return
            try:
                now = time.monotonic()
                with self._lock:
                    if now < self.open_until:
                        continue           # dropped: the next event asks again after the cooldown
                    if self.half_open:
                        # after the cooldown only one trial request at a time
                        if self._trial:
                            continue
                        self._trial = True
                try:
                    entry = self.fetch(value)
                except Exception as e:   # timeouts, refused connections, bad answers
                    self._failure(value, e)
                    continue
                self._success()
                if len(self.cache) >= self.max_entries:
                    self._evict()
                ttl = self.negative_ttl if entry is _NOT_FOUND else self.ttl
                self.cache[value] = (time.monotonic() + ttl, entry)
            finally:
                self.pending.discard(value)

    def _evict(self) -> None:
        now = time.monotonic()
        expired = [k for k, (exp, _) in list(self.cache.items()) if exp < now]
        for k in expired[: max(1, self.max_entries // 10)]:
            self.cache.pop(k, None)
        if len(self.cache) >= self.max_entries:
            for k in list(self.cache)[: max(1, self.max_entries // 10)]:
                self.cache.pop(k, None)

    def _success(self) -> None:
        with self._lock:
            if self.half_open or self.consecutive:
                if self.half_open:
                    log.info("lookups.%s: %s answers again; circuit closed", self.name, _host(self.url))
                self.half_open = False
            self.consecutive = 0
            self._trial = False

    def _failure(self, value: str, e: Exception) -> None:
        import httpx
        timeout = isinstance(e, httpx.TimeoutException)
        self._c["timeout" if timeout else "error"].value += 1
        msg = f"timeout after {self.timeout:g} s" if timeout else f"{type(e).__name__}: {e}"
        with self._lock:
            self.last_error = msg
            self.consecutive += 1
            self._trial = False
            if time.monotonic() < self.open_until:
                pass                           # a request that was already in flight when it opened
            elif self.half_open or self.consecutive >= self.failures:
                self.open_until = time.monotonic() + self.cooldown
                self.half_open = True          # the first request after the cooldown is the trial
                self._opened.value += 1
                log.warning("lookups.%s: %s failing (%s); circuit open for %g s, events go on without this "
                            "context", self.name, _host(self.url), msg, self.cooldown)
        # drain what queued meanwhile: it would only time out too
        if self.circuit_open():
            while True:
                try:
                    v = self.q.get_nowait()
                except queue.Empty:
                    break
                if v is None:
                    self.q.put_nowait(None)
                    break
                self.pending.discard(v)

    def fetch(self, value: str):
        """One request (background thread) -> (key, attrs) or _NOT_FOUND; raises on failure."""
        url = self.url.replace("{value}", urllib.parse.quote(value, safe=""))
        r = self._http().get(url)
        if r.status_code == 404:
            self._c["not_found"].value += 1
            return _NOT_FOUND
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}")
        try:
            obj = orjson.loads(r.content)
        except orjson.JSONDecodeError as e:
            raise RuntimeError(f"answer is not JSON: {e}") from None
        for p in self.result_path:
            obj = obj.get(p) if isinstance(obj, dict) else None
        entry = self.to_entry(value, obj)
        self._c["ok" if entry is not _NOT_FOUND else "not_found"].value += 1
        return entry

    def to_entry(self, value: str, obj):
        rows = obj if isinstance(obj, list) else [obj] if isinstance(obj, dict) else []
        rows = [{str(k).lower(): v for k, v in r.items()} for r in rows if isinstance(r, dict)]
        if not rows:
            return _NOT_FOUND
        o = self.opts
        try:
            if self.kind == "asset":
                return value, _asset_attrs(o, rows[0], lambda d: d)
            if self.kind == "vuln":
                from .tables import _col
                cves = {}
                for r in rows:
                    cve = _str(_col(o, r, "cve"))
                    if cve:
                        cves[cve] = _float(_col(o, r, "cvss"), 0.0, 10.0, "cvss")
                if not cves:
                    return _NOT_FOUND
                ranked = sorted(cves.items(), key=lambda t: -(t[1] or 0))
                return value, {"max_cvss": ranked[0][1], "cves": [c for c, _ in ranked[:o.max_cves]],
                               "cvss": [s for _, s in ranked[:o.max_cves]], "count": len(ranked), "table": self.name}
            from .tables import _col
            r = rows[0]
            conf = _int(_col(o, r, "confidence"), 0, 100, "confidence")
            return value, _ti_attrs(o, value, _str(_col(o, r, "type")), _str(_col(o, r, "source")), conf,
                                    _tags(_col(o, r, "tags")))
        except RowError as e:
            raise RuntimeError(f"unusable answer: {e}") from None

    def close(self) -> None:
        self._closed = True
        for _ in self.threads:
            try:
                self.q.put_nowait(None)
            except queue.Full:
                pass
        for t in self.threads:
            t.join(self.timeout + 1.0)
        if self._client is not None:
            try:
                self._client.close()
            except Exception:
                pass


def _host(url: str) -> str:
    try:
        return urllib.parse.urlsplit(url).netloc or url
    except ValueError:
        return url

"""CrowdStrike Falcon Event Streams source (``type = "falcon_stream"``; apis.md section 2.7,
seed 001's ``FALCON_TRANSPORT=streaming``).

The OAuth2 client, the region autodiscovery, the 401-then-one-retry rule and the 429/5xx
backoff are the ``falcon`` source's (relay/sources/falcon.py, reused by subclassing).  Then:

1. **Discover**: ``GET /sensors/entities/datafeed/v2?appId=<app_id>&format=json`` (Bearer) ->
   one resource per *partition*: ``dataFeedURL``, ``sessionToken {token, expiration}``,
   ``refreshActiveSessionURL``, ``refreshActiveSessionInterval`` (seconds, typically 1800).
2. **Read** each partition in its own task: ``GET <dataFeedURL>&offset=<n>`` with
   ``Authorization: Token <session token>`` (not Bearer), a long-lived chunked response of JSON
   lines ``{"metadata": {"offset", "eventType", ...}, "event": {...}}``.  ``n`` is the stored
   offset of the partition plus one (the first event not yet durably queued); an event at or
   below the stored offset (a replay) is dropped and counted.
3. **Queue, then store**: events are normalised (:func:`parsers.falcon.normalise_dict`; the
   DetectionSummaryEvent and EppDetectionSummaryEvent as the detections of today's sources) and
   handed to the pipeline in batches (``batch_size`` events, or what came within
   ``batch_linger`` seconds); ONLY once the pipeline says they are durable is the partition's
   offset written to ``<state_dir>/falcon-stream-<source>.json`` (atomically, all partitions in
   one file).  A crash in between re-reads that batch (at least once; the XSOAR sink and the
   dedup keys absorb it), never skips it.
4. **Keep the session alive**: ``POST <refreshActiveSessionURL>`` (Bearer, ``{}`` body) at
   ``refresh_fraction`` (0.9, as gofalcon and FIG) of ``refreshActiveSessionInterval`` after
   the discovery or the last refresh, well before the session's 30-minute expiry.  A refused
   refresh makes the partition rediscover (a fresh session) and reconnect.
5. **Reconnect with backoff**: a stream that ends, breaks mid-chunk, times out
   (``read_timeout`` without a byte) or is refused is reconnected after an exponential backoff
   with full jitter (``retry_base`` .. ``retry_cap``; reset once events flow again), from the
   stored offset.  A connect answered 401/403 (an expired session token) rediscovers first; a
   discovery answered 401 mints a new OAuth token once (the ``falcon`` rule); refused
   credentials block the source with an ALERT, as for every pull source.

Every event carries the source's syslog HOSTNAME (``hostname``, default the source name: one
QRadar log source) and the endpoint in its ``host``.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .. import kinds
from .falcon import FalconSettings, FalconSource
from .falcon import read_config as _falcon_read_config
from .pull import AuthFailure, Backoff, ConfigFailure, TransientFailure, make_event

log = logging.getLogger("relay.sources.falcon_stream")

__all__ = ["FalconStreamSource", "FalconStreamSettings", "read_config", "DISCOVER"]

DISCOVER = "/sensors/entities/datafeed/v2"


@dataclass(frozen=True)
class FalconStreamSettings(FalconSettings):
    app_id: str = "relay"
    batch_size: int = 500
    batch_linger: float = 0.5
    refresh_fraction: float = 0.9
    read_timeout: float = 600.0


def read_config(table, sc, base_dir: Path) -> None:
    """``[sources.<name>]`` of a ``falcon_stream`` source: the ``falcon`` keys that apply, plus
    its own."""
    app = table.get("app_id", str, "relay")
    if not (1 <= len(app) <= 32 and app.isascii() and app.isalnum()):
        raise table.err("app_id", f"{app!r} must be 1-32 letters and digits (the stream's appId)")

    def frac(v):
        if not 0.1 <= v <= 0.95:
            raise ValueError(f"must be 0.1..0.95, not {v}")

    def pos(v):
        if v <= 0:
            raise ValueError(f"must be greater than 0, not {v}")
    batch = table.get("batch_size", int, 500, check=lambda v: None if 1 <= v <= 10000 else
                      (_ for _ in ()).throw(ValueError(f"must be 1..10000, not {v}")))
    linger = table.get("batch_linger", float, 0.5, check=pos)
    fraction = table.get("refresh_fraction", float, 0.9, check=frac)
    read_timeout = table.get("read_timeout", float, 600.0, check=pos)
    for k in _NOT_HERE:
        if k in table.data:
            raise table.err(k, "does not apply to a falcon_stream source (it streams; it does not poll)")
    _falcon_read_config(table, sc, base_dir)
    st: FalconSettings = sc.options["pull"]
    fields = {k: getattr(st, k) for k in st.__dataclass_fields__}
    sc.options["pull"] = FalconStreamSettings(**fields, app_id=app, batch_size=batch, batch_linger=linger,
                                              refresh_fraction=fraction, read_timeout=read_timeout)


#: keys of the ``falcon`` (polling) source that a stream has no use for: refused, not ignored
_NOT_HERE = ("api", "filter", "entities_chunk", "max_per_poll", "include_hidden", "missing_retries", "poll_interval",
             "page_size", "first_fetch", "overlap", "resolve_users", "users_ttl", "users_timeout", "lenient")


def _with_offset(url: str, offset: int) -> str:
    u = urlsplit(url)
    q = [(k, v) for k, v in parse_qsl(u.query, keep_blank_values=True) if k != "offset"]
    q.append(("offset", str(offset)))
    return urlunsplit((u.scheme, u.netloc, u.path, urlencode(q), u.fragment))


def _partition(url: str) -> str:
    return urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1] or "0"


class _Feed:
    """One partition's feed as the last discovery gave it."""

    def __init__(self, res: dict, generation: int) -> None:
        self.url = str(res["dataFeedURL"])
        self.partition = _partition(self.url)
        tok = res.get("sessionToken") or {}
        self.token = str(tok.get("token") or "")
        self.refresh_url = res.get("refreshActiveSessionURL")
        try:
            self.interval = float(res.get("refreshActiveSessionInterval") or 1800)
        except (TypeError, ValueError):
            self.interval = 1800.0
        self.generation = generation


class _Rediscover(Exception):
    """The partition's session is gone: discover again, then reconnect."""


class FalconStreamSource(FalconSource):
    kind = "Falcon Event Streams"
    state_name = "falcon-stream"

    def __init__(self, cfg, pipeline, registry=None, *, transport=None) -> None:
        super().__init__(cfg, pipeline, registry, transport=transport)
        self.settings: FalconStreamSettings
        self.offsets: dict[str, int] = {}
        self.feeds: dict[str, _Feed] = {}
        self.generation = 0
        self.discoveries = 0
        self.refreshes = 0
        self.connects = 0
        self._discover_lock = asyncio.Lock()
        self._commit_lock = asyncio.Lock()
        self._tasks: dict[str, asyncio.Task] = {}
        reg = self.registry
        self._replay_c = reg.counter("relay_stream_replayed_total", source=cfg.name)
        self._reconnect_c = reg.counter("relay_stream_reconnects_total", source=cfg.name)
        self._refresh_c = reg.counter("relay_stream_refreshes_total", source=cfg.name)
        self._bad_c = reg.counter("relay_stream_bad_lines_total", source=cfg.name)

    # ------------------------------------------------------------ state
    def _load_offsets(self) -> dict[str, int]:
        st = self.state.load()
        if st.get("app_id") not in (None, self.settings.app_id):
            log.warning("source %s: app_id changed from %s to %s; the stored offsets are kept (they belong to "
                        "the CID's partitions, not to the app)", self.cfg.name, st.get("app_id"),
                        self.settings.app_id)
        offs = st.get("offsets")
        out = {}
        if isinstance(offs, dict):
            for k, v in offs.items():
                if isinstance(v, int) and not isinstance(v, bool):
                    out[str(k)] = v
        return out

    async def start(self) -> None:
        self.offsets = await asyncio.to_thread(self._load_offsets)
        self.cursor = {"offsets": self.offsets}
        await super(FalconSource, self).start()   # PullSource.start: client + _run (the falcon loader is not ours)

    # ------------------------------------------------------------ discovery
    async def discover(self, seen_generation: int | None = None) -> None:
        """Discover the partitions (once for every caller that saw ``seen_generation``)."""
        async with self._discover_lock:
            if seen_generation is not None and self.generation != seen_generation:
                return          # another partition rediscovered meanwhile
            body = await self.call("discover", "GET", DISCOVER,
                                   params={"appId": self.settings.app_id, "format": "json"})
            res = [r for r in (body.get("resources") or ()) if isinstance(r, dict) and r.get("dataFeedURL")]
            if not res:
                raise TransientFailure("discovery answered no stream (no partition for this CID/appId)")
            self.generation += 1
            self.discoveries += 1
            self.feeds = {f.partition: f for f in (_Feed(r, self.generation) for r in res)}
            log.info("source %s: Falcon stream discovered, %d partition(s): %s", self.cfg.name, len(self.feeds),
                     ", ".join(sorted(self.feeds)))

    # ------------------------------------------------------------ the loop
    async def _run(self) -> None:
        s = self.settings
        backoff = Backoff(max(0.05, s.retry_base), max(s.retry_cap, 1.0))
        failures = 0
        log.info("source %s: Falcon Event Streams via %s (appId %s, state %s)", self.cfg.name, self.base,
                 s.app_id, self.state.path)
        while not self._stop.is_set():
            try:
                if not self.feeds:
                    await self.discover()
                failures = 0
                if self.blocked:
                    log.warning("source %s: %s answers again; streaming resumed", self.cfg.name, self.kind)
                    self._set_blocked(None)
                for p in self.feeds:
                    if p not in self._tasks or self._tasks[p].done():
                        self._tasks[p] = asyncio.create_task(self._partition_loop(p), name=f"{self.cfg.name}-{p}")
                stop_w = asyncio.ensure_future(self._stop.wait())
                try:
                    done, _ = await asyncio.wait(list(self._tasks.values()) + [stop_w],
                                                 return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stop_w.cancel()
                for t in done:
                    if t in self._tasks.values() and t.exception() is not None:
                        raise t.exception()
                for p in [p for p, t in self._tasks.items() if t.done()]:
                    del self._tasks[p]
            except asyncio.CancelledError:
                raise
            except (AuthFailure, ConfigFailure) as e:
                await self._cancel_partitions()
                self.feeds = {}
                self.count_error("auth" if isinstance(e, AuthFailure) else "config")
                self.last_error = str(e)
                self._set_blocked(str(e))
                again = (f"trying again in {s.auth_retry_interval:g} s" if s.auth_retry_interval
                         else "not trying again until the relay is restarted or reloaded")
                log.error("ALERT source %s: %s refused: %s; streaming stopped, %s", self.cfg.name, self.kind, e, again)
                if not s.auth_retry_interval:
                    await self._stop.wait()
                    break
                if await self.sleep(s.auth_retry_interval):
                    break
            except Exception as e:   # discovery failed (network, 5xx storm): back off, try again
                if self._stop.is_set():
                    break
                failures += 1
                self.count_error("transient" if isinstance(e, TransientFailure) else "internal")
                self.last_error = f"{type(e).__name__}: {e}"
                wait = backoff.delay(min(failures, 16))
                log.warning("source %s: stream discovery failed (%s); next try in %.1f s", self.cfg.name,
                            self.last_error, wait)
                if await self.sleep(wait):
                    break
        await self._cancel_partitions(grace=2.0)

    async def _cancel_partitions(self, grace: float = 0.0) -> None:
        """End the partition tasks: on stop they end by themselves at their next batch (a batch
        being committed is finished first); those still connecting after ``grace`` s are cancelled
        (nothing of theirs is half-committed: the commit is shielded)."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        if grace and tasks:
            await asyncio.wait(tasks, timeout=grace)
        for t in tasks:
            if not t.done():
                t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    async def stop(self, drain_timeout: float = 10.0) -> None:
        self._stop.set()
        await super().stop(drain_timeout)

    # ------------------------------------------------------------ one partition
    async def _partition_loop(self, p: str) -> None:
        """Read partition ``p`` until stopped: reconnects, refreshes, rediscovers.  Raises only
        AuthFailure/ConfigFailure (the source blocks)."""
        s = self.settings
        backoff = Backoff(max(0.05, s.retry_base), max(s.retry_cap, 1.0))
        attempt = 0
        refresher = asyncio.create_task(self._refresh_loop(p), name=f"{self.cfg.name}-{p}-refresh")
        try:
            while not self._stop.is_set():
                feed = self.feeds.get(p)
                if feed is None:
                    return          # the partition is gone from the discovery
                try:
                    got = await self._read(feed)
                    if got:
                        attempt = 0
                    reason = "the stream ended"
                except _Rediscover as e:
                    reason = str(e)
                    try:
                        await self.discover(feed.generation)
                    except (AuthFailure, ConfigFailure):
                        raise
                    except Exception as de:
                        reason = f"{reason}; rediscovery failed ({type(de).__name__}: {de})"
                except (AuthFailure, ConfigFailure):
                    raise
                except asyncio.CancelledError:
                    raise
                except Exception as e:    # broken chunk, reset, timeout, refused, commit failure
                    reason = f"{type(e).__name__}: {str(e)[:200]}"
                if self._stop.is_set():
                    return
                self._reconnect_c.value += 1
                wait = backoff.delay(min(attempt, 16))
                attempt += 1
                log.warning("source %s: partition %s: %s; reconnecting from offset %s in %.2f s", self.cfg.name, p,
                            reason, self.offsets.get(p, 0) + 1 if p in self.offsets else "start", wait)
                if await self.sleep(wait):
                    return
        finally:
            refresher.cancel()

    async def _refresh_loop(self, p: str) -> None:
        s = self.settings
        last = time.monotonic()
        gen = None
        while not self._stop.is_set():
            feed = self.feeds.get(p)
            if feed is None:
                return
            if feed.generation != gen:     # a new session: its clock starts now
                gen, last = feed.generation, time.monotonic()
            due = last + feed.interval * s.refresh_fraction
            if await self.sleep(max(0.0, due - time.monotonic())):
                return
            feed = self.feeds.get(p)
            if feed is None or feed.generation != gen or not feed.refresh_url:
                continue
            try:
                await self.call("refresh", "POST", _path(feed.refresh_url, self.base), json={})
                self.refreshes += 1
                self._refresh_c.value += 1
                last = time.monotonic()
                log.debug("source %s: partition %s: stream session refreshed", self.cfg.name, p)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("source %s: partition %s: session refresh failed (%s: %s); rediscovering",
                            self.cfg.name, p, type(e).__name__, e)
                try:
                    await self.discover(gen)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    last = time.monotonic() - feed.interval * s.refresh_fraction + min(30.0, s.retry_cap)

    async def _read(self, feed: _Feed) -> int:
        """One connection: stream, batch, queue, store.  -> events queued.  Raises _Rediscover
        when the session token is refused."""
        import httpx
        s = self.settings
        p = feed.partition
        start = self.offsets[p] + 1 if p in self.offsets else 0
        url = _with_offset(feed.url, start) if start else feed.url
        headers = {"Authorization": f"Token {feed.token}", "Accept": "application/json",
                   "Connection": "Keep-Alive", "Date": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())}
        timeout = httpx.Timeout(s.timeout, connect=s.connect_timeout, read=s.read_timeout)
        queued = 0
        self.connects += 1
        async with self.client.stream("GET", url, headers=headers, timeout=timeout) as resp:
            st = resp.status_code
            self.count_request("stream", st)
            if st in (401, 403):
                await resp.aread()
                raise _Rediscover(f"stream connect answered {st} (session expired)")
            if st != 200:
                await resp.aread()
                raise TransientFailure(f"stream connect answered {st}: {resp.text[:160]}")
            q: asyncio.Queue = asyncio.Queue(maxsize=max(2 * s.batch_size, 64))
            reader = asyncio.create_task(self._pump(resp, q))
            try:
                while True:
                    batch, ended = await self._collect(q)
                    if batch:
                        queued += await self._queue_batch(p, batch)
                    if ended is not None:
                        if isinstance(ended, BaseException):
                            raise ended
                        return queued
                    if self._stop.is_set():
                        return queued
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)

    async def _pump(self, resp, q: asyncio.Queue) -> None:
        try:
            async for line in resp.aiter_lines():
                if line.strip():
                    await q.put(line)
            await q.put(_END)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            await q.put(e)

    async def _collect(self, q: asyncio.Queue):
        """Up to batch_size lines, waiting at most batch_linger once the first came; -> (lines,
        None | _END | exception)."""
        s = self.settings
        out: list[str] = []
        deadline = None
        stop_w = asyncio.ensure_future(self._stop.wait())
        try:
            while len(out) < s.batch_size:
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not q.empty():
                    item = q.get_nowait()
                else:
                    get = asyncio.ensure_future(q.get())
                    done, _ = await asyncio.wait([get, stop_w], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                    if get not in done:
                        get.cancel()
                        return out, None      # lingered long enough, or stopping
                    item = get.result()
                if item is _END or isinstance(item, BaseException):
                    return out, item
                out.append(item)
                if deadline is None:
                    deadline = time.monotonic() + s.batch_linger
            return out, None
        finally:
            stop_w.cancel()

    async def _queue_batch(self, p: str, lines: list[str]) -> int:
        import orjson
        received = time.time()
        last = self.offsets.get(p)
        events = []
        top = last
        for line in lines:
            try:
                obj = orjson.loads(line)
                off = obj["metadata"]["offset"]
                if not isinstance(off, int) or isinstance(off, bool):
                    raise TypeError("offset is not an integer")
            except Exception as e:
                self._bad_c.value += 1
                log.warning("source %s: partition %s: a stream line that is not an event (%s: %s): %r",
                            self.cfg.name, p, type(e).__name__, e, line[:200])
                continue
            if (last is not None and off <= last) or (top is not None and off <= top):
                self._replay_c.value += 1   # already queued (a replay after a reconnect)
                continue
            top = off
            events.append(self._stream_event(obj, received, line))
        if top is None or top == last:
            return 0
        async with self._commit_lock:
            async def both():
                await self.deliver(events)
                self.offsets[p] = top
                state = {"app_id": self.settings.app_id, "offsets": dict(self.offsets), "updated": received}
                await asyncio.to_thread(self.state.save, state)
            await asyncio.shield(asyncio.ensure_future(both()))
        self.polls += 1
        self._polls_c.value += 1
        return len(events)

    def _stream_event(self, obj: dict, received: float, line: str):
        from parsers import falcon as falcon_parser
        notes: list = []
        try:
            fields = falcon_parser.normalise_dict(obj, shape="stream", notes=notes)
        except Exception as e:   # a normaliser bug must not lose the event
            meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
            fields = {"kind": "log", "vendor": falcon_parser.VENDOR, "product": falcon_parser.PRODUCT, "id": None,
                      "dedup_key": f"falcon:stream:{meta.get('customerIDString') or '-'}:"
                                   f"{meta.get('eventType') or '-'}:{meta.get('offset')}",
                      "event": meta.get("eventType"), "name": meta.get("eventType") or "falcon stream event",
                      "severity": "informational", "status": None, "occurred": None, "occurred_unix": None,
                      "extra": {}}
            notes.append(f"normaliser failed ({type(e).__name__}: {e})")
        ev = make_event(fields, obj, self.cfg.name, received, raw=line.encode("utf-8", "surrogateescape"))
        for n in notes:
            ev.note(n)
        return ev

    async def poll_once(self) -> bool:   # pragma: no cover - a stream is not polled
        raise NotImplementedError


_END = object()


def _path(url: str, base: str) -> str:
    """The refresh URL as a path on the API base (the discovery gives an absolute URL on it)."""
    u = urlsplit(url)
    b = urlsplit(base)
    if u.scheme and (u.scheme, u.netloc) != (b.scheme, b.netloc):
        log.warning("refresh URL %s is not on the API base %s; using its path there", url, base)
    return u.path + (f"?{u.query}" if u.query else "")


KIND = kinds.register_source(kinds.SourceKind(
    type="falcon_stream", read_config=read_config, factory=FalconStreamSource,
    keys=("base_url", "cloud", "client_id", "client_secret_env", "client_secret_file", "member_cid", "app_id",
          "batch_size", "batch_linger", "refresh_fraction", "read_timeout", "renew_window", "timeout",
          "connect_timeout", "tls_verify", "tls_ca", "retry_base", "retry_cap", "max_retries", "auth_retry_interval",
          "state_dir", "hostname"),
    doc="reads the CrowdStrike Falcon Event Streams API (discover, stream, refresh, offsets)"))

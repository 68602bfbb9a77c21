"""Pull sources: the machinery shared by the API pollers (``falcon``, ``qradar_offenses``).

A pull source does not receive syslog bytes: it polls a vendor REST API, turns every
vendor object into a :class:`parsers.event.Event` that is *already normalised*
(``format = "api"``, ``fields`` from the vendor normaliser, ``body`` = the vendor JSON,
``raw`` = that JSON as bytes) and submits the events to the pipeline
(:meth:`relay.pipeline.Pipeline.submit`): the one stage enriches, triages, routes, renders
and durably queues them exactly as it does syslog events, through the server's committers
(one writer per queue file, with ``workers = 1`` or N), and returns once every row is
committed.  Only then does the source persist its cursor (:class:`StateFile`, atomic
write): a crash before that re-reads the same objects (at-least-once; the per-source
dedup set is saved with the cursor, and the XSOAR sink dedups by ``dedup_key``), never
skips them.

Failures: :class:`AuthFailure` (credentials/scope refused even with a fresh token) and
:class:`ConfigFailure` (the API refuses the request itself, e.g. a bad filter) *block* the
source: an ``ALERT`` log line, ``relay_source_blocked{source}=1``, no requests until
``auth_retry_interval`` seconds passed (0: until restart or reload).  :class:`TransientFailure`
(network errors, 5xx and 429 storms that outlast ``max_retries``) is logged and the next
poll comes after a growing pause.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from parsers.event import Event

from ..fsutil import private_dir
from ..checks import non_negative as _nonneg, positive as _pos
from ..fsutil import fsync_dir
from ..secrets import Secret
from ..secrets import read_secret as _read_secret
from .base import Source

log = logging.getLogger("relay.sources.pull")
# httpx logs every request at INFO (URLs with FQL filters): far too chatty for an appliance
logging.getLogger("httpx").setLevel(logging.WARNING)
logging.getLogger("httpcore").setLevel(logging.WARNING)

__all__ = ["FORMAT_API", "make_event", "StateFile", "PullSource", "PullSettings",
           "Secret", "read_secret", "read_common", "AuthFailure", "ConfigFailure", "TransientFailure",
           "retry_after_epoch", "Backoff"]

#: ``Event.format`` of events built from API objects (proposed as parsers.event.FORMAT_API).
FORMAT_API = "api"
#: Longest wait honoured from a server's retry-after.
MAX_RETRY_AFTER = 300.0


# =========================================================================== failures
class PullFailure(Exception):
    pass


class AuthFailure(PullFailure):
    """Credentials or scope refused (also with a fresh token): the source blocks."""


class ConfigFailure(PullFailure):
    """The API refuses the request itself (4xx other than auth/429): fix the config."""


class TransientFailure(PullFailure):
    """Network error, 5xx or 429 that outlasted the retries: try again later."""


# =========================================================================== secrets
def read_secret(table, env_key: str, file_key: str, what: str, base_dir: Path, literal: str) -> Secret:
    """A required secret (see relay/secrets.py); the literal key is refused."""
    return _read_secret(table, env_key, file_key, what, base_dir, required=True, literal=literal)


# =========================================================================== config
@dataclass(frozen=True)
class PullSettings:
    """Keys every pull source has (``options["pull"]``); the vendor modules subclass it."""

    base_url: str = ""
    poll_interval: float = 30.0
    page_size: int = 100
    first_fetch: float = 3600.0          # seconds back on the very first poll
    overlap: float = 300.0               # seconds re-read behind the cursor (late arrivals)
    timeout: float = 30.0
    connect_timeout: float = 10.0
    tls_verify: bool = True
    tls_ca: Path | None = None
    retry_base: float = 1.0              # backoff base for 429 without a usable header, 5xx, network
    retry_cap: float = 60.0
    max_retries: int = 8                 # per request, before the poll gives up (TransientFailure)
    auth_retry_interval: float = 600.0   # blocked source tries again after this long (0: never)
    state_dir: Path | None = None        # default: [relay] state_dir
    hostname: str | None = None          # syslog HOSTNAME of the pulled events (default: the source name)








#: The keys :func:`read_common` reads (every pull source has them).
COMMON_KEYS = ("poll_interval", "page_size", "first_fetch", "overlap", "timeout", "connect_timeout", "tls_verify",
               "tls_ca", "retry_base", "retry_cap", "max_retries", "auth_retry_interval", "state_dir", "hostname")


def read_common(table, base_dir: Path, *, poll_interval: float, page_size: int, max_page: int,
                first_fetch: float, overlap: float) -> dict:
    """The common keys as ``PullSettings`` keyword arguments (``base_url`` excluded)."""
    def path(v: str) -> Path:
        p = Path(os.path.expandvars(v)).expanduser()
        return p if p.is_absolute() else base_dir / p

    def page(v):
        if not 1 <= v <= max_page:
            raise ValueError(f"must be 1..{max_page}, not {v}")

    table.get("lenient", bool, False)   # accepted for old configs; pulled events are not parsed
    out: dict[str, Any] = dict(
        poll_interval=table.get("poll_interval", float, poll_interval, check=_pos),
        page_size=table.get("page_size", int, page_size, check=page),
        first_fetch=table.get("first_fetch", float, first_fetch, check=_nonneg),
        overlap=table.get("overlap", float, overlap, check=_nonneg),
        timeout=table.get("timeout", float, 30.0, check=_pos),
        connect_timeout=table.get("connect_timeout", float, 10.0, check=_pos),
        tls_verify=table.get("tls_verify", bool, True),
        retry_base=table.get("retry_base", float, 1.0, check=_pos),
        retry_cap=table.get("retry_cap", float, 60.0, check=_pos),
        max_retries=table.get("max_retries", int, 8, check=_nonneg),
        auth_retry_interval=table.get("auth_retry_interval", float, 600.0, check=_nonneg),
    )
    ca = table.get("tls_ca", str, None)
    if ca is not None:
        p = path(ca)
        if not p.is_file():
            raise table.err("tls_ca", f"file {str(p)!r} does not exist")
        from ..checks import pem_certificates
        try:
            pem_certificates(p.parent)(str(p))
        except ValueError as e:
            raise table.err("tls_ca", str(e)) from None
        out["tls_ca"] = p
    host = table.get("hostname", str, None)
    if host is not None:
        host = host.strip()
        if not host or len(host) > 255 or not host.isascii() or any(c <= " " or c == "\x7f" for c in host):
            raise table.err("hostname", f"{host!r} is not a syslog HOSTNAME (1-255 printable ASCII, no blanks)")
        out["hostname"] = host
    sd = table.get("state_dir", str, None)
    if sd is not None:
        if not sd:
            raise table.err("state_dir", "must not be empty")
        out["state_dir"] = path(sd)
    return out


# =========================================================================== events
def make_event(fields: dict, body: Any, source: str, received: float, raw: bytes | None = None) -> Event:
    """An already-normalised event for the pipeline (``format = "api"``)."""
    if raw is None:
        raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")
    ev = Event(raw, FORMAT_API)
    ev.fields = fields
    ev.body = body
    ev.received = received
    ev.source = source
    ev.time_unix = fields.get("occurred_unix")
    return ev


# =========================================================================== state
class StateFile:
    """A JSON document written atomically (temp file in the same directory, fsync,
    ``os.replace``, directory fsync): after a crash it is the old or the new version,
    never a mix."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> dict:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            aside = self.path.with_name(self.path.name + f".bad-{int(time.time())}")
            try:
                os.replace(self.path, aside)
            except OSError:
                aside = None
            log.error("pull state %s is unreadable (%s); moved aside to %s and starting from the first-fetch "
                      "window", self.path, e, aside)
            return {}
        return data if isinstance(data, dict) else {}

    def save(self, data: dict) -> None:
        private_dir(self.path.parent)
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, separators=(",", ":"), sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        fsync_dir(self.path.parent)


# =========================================================================== retries
def retry_after_epoch(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait for an ``X-RateLimit-RetryAfter`` header (a Unix epoch in seconds,
    the moment one may retry).  A value in the past -> 0; milliseconds (a value beyond
    year 33658) are divided by 1000; missing, garbage, NaN -> None (caller backs off)."""
    if value is None:
        return None
    try:
        t = float(str(value).strip())
    except ValueError:
        return None
    if not math.isfinite(t) or t < 0:
        return None
    if t > 1e12:
        t /= 1000.0
    now = time.time() if now is None else now
    return min(max(0.0, t - now), MAX_RETRY_AFTER)


class Backoff:
    """Exponential backoff with full jitter: attempt n waits U(0, min(cap, base * 2**n))."""

    def __init__(self, base: float, cap: float) -> None:
        self.base, self.cap = base, cap

    def delay(self, attempt: int) -> float:
        return random.uniform(0.5, 1.0) * min(self.cap, self.base * (2 ** attempt))


def jitter(wait: float) -> float:
    """A wait plus up to 10 % (at least up to 50 ms) so many clients do not retry in step."""
    return wait + random.uniform(0, max(0.05, wait * 0.1))


# =========================================================================== base source
class PullSource(Source):
    """A polling loop: ``poll_once()`` (subclass) until stopped, with blocking on
    auth/config failures and growing pauses after transient ones.  ``bound_address`` is
    the API's (host, port), for the server's start-up log line."""

    kind = "pull"
    state_name = "pull"

    def __init__(self, cfg, pipeline, registry=None, *, transport=None) -> None:
        """``transport``: an httpx transport to send through instead of the network (tests:
        ``httpx.MockTransport``)."""
        super().__init__(cfg, pipeline, registry)
        self.transport = transport
        self.settings: PullSettings = cfg.options["pull"]
        self.state = StateFile(self.state_dir() / f"{self.state_name}-{cfg.name}.json")
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.client = None
        self.polls = 0                   # completed polls (tests, diagnostics)
        self.last_error: str | None = None
        self.blocked: str | None = None
        reg = self.registry
        self._blocked_g = reg.gauge("relay_source_blocked", source=cfg.name) if hasattr(reg, "gauge") else None
        self._polls_c = reg.counter("relay_pull_polls_total", source=cfg.name)
        # "stalled" = no completed poll for a while: the start time until the first one
        self._last_ok_g = reg.gauge("relay_pull_last_success_timestamp_seconds", source=cfg.name) \
            if hasattr(reg, "gauge") else None
        if self._last_ok_g is not None:
            self._last_ok_g.value = time.time()
            reg.gauge("relay_pull_interval_seconds", source=cfg.name).value = float(self.settings.poll_interval)
        self._errors: dict = {}
        self._requests: dict = {}
        self._wake = asyncio.Event()

    # ------------------------------------------------------------ helpers
    def state_dir(self) -> Path:
        """``state_dir`` of the source, else ``options["relay_state_dir"]``, else ``[relay]
        state_dir`` of the running config."""
        s = self.settings.state_dir or self.cfg.options.get("relay_state_dir")
        if s is None:
            conf = getattr(self.pipeline, "config", None)
            s = getattr(getattr(conf, "relay", None), "state_dir", None)
        return Path(s or "state")

    def count_request(self, op: str, status) -> None:
        key = (op, str(status))
        c = self._requests.get(key)
        if c is None:
            c = self._requests[key] = self.registry.counter("relay_pull_requests_total", source=self.cfg.name,
                                                           op=op, status=str(status))
        c.value += 1

    def count_error(self, kind: str) -> None:
        c = self._errors.get(kind)
        if c is None:
            c = self._errors[kind] = self.registry.counter("relay_pull_errors_total", source=self.cfg.name,
                                                          kind=kind)
        c.value += 1

    def _set_blocked(self, reason: str | None) -> None:
        self.blocked = reason
        if self._blocked_g is not None:
            self._blocked_g.value = 1 if reason else 0

    def make_client(self):
        import httpx
        s = self.settings
        verify: Any = s.tls_verify
        if s.tls_verify and s.tls_ca is not None:
            import ssl
            verify = ssl.create_default_context(cafile=str(s.tls_ca))
        return httpx.AsyncClient(timeout=httpx.Timeout(s.timeout, connect=s.connect_timeout), verify=verify,
                                 follow_redirects=False, trust_env=False, transport=self.transport)

    async def sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; True when stopping."""
        if self._stop.is_set():
            return True
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=max(0.0, seconds))
        except asyncio.TimeoutError:
            return False
        return True

    @property
    def identity(self) -> str:
        """The syslog HOSTNAME the pulled events carry: ``hostname``, else the source name.  One
        name per source, so QRadar makes one log source for it; the endpoint stays in the event's
        ``host`` (LEEF ``identHostName``, CEF ``dhost``)."""
        return self.settings.hostname or self.cfg.name

    async def deliver(self, events: list[Event]) -> int:
        """Queue durably (raises if that failed); counts relay_received_total.  Every event gets
        the source's :attr:`identity` as its syslog HOSTNAME."""
        if not events:
            return 0
        ident = self.identity
        for ev in events:
            ev.hostname = ident
        self._received.value += len(events)
        return await self.pipeline.submit(events, self.cfg)

    async def commit(self, events: list[Event], new_state: dict) -> None:
        """Queue the events, then save the state: shielded, so a stop that lands in the
        middle cannot separate the two (the committers are closed after the sources)."""
        async def both():
            await self.deliver(events)
            await asyncio.to_thread(self.state.save, new_state)
        await asyncio.shield(asyncio.ensure_future(both()))

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError(f"{self!r} already started")
        u = urlsplit(self.settings.base_url)
        self.bound_address = (u.hostname or "?", u.port or (443 if u.scheme == "https" else 80))
        self.client = self.make_client()
        self._task = asyncio.create_task(self._run(), name=f"source-{self.cfg.name}")

    async def stop(self, drain_timeout: float = 10.0) -> None:
        self._stop.set()
        if self._task is not None:
            done, _ = await asyncio.wait([self._task], timeout=max(0.1, drain_timeout))
            if not done:
                self._task.cancel()
                await asyncio.wait([self._task], timeout=5)
            self._task = None
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    def poll_now(self) -> None:
        """Tests/diagnostics: end the current pause and poll again."""
        self._wake.set()

    async def _pause(self, seconds: float) -> bool:
        self._wake.clear()
        stop_w = asyncio.ensure_future(self._stop.wait())
        wake_w = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait([stop_w, wake_w], timeout=max(0.0, seconds), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_w.cancel()
            wake_w.cancel()
        return self._stop.is_set()

    async def _run(self) -> None:
        s = self.settings
        failures = 0
        backoff = Backoff(max(1.0, s.retry_base), max(s.poll_interval, 300.0))
        log.info("source %s: polling %s every %g s (state %s)", self.cfg.name, s.base_url, s.poll_interval,
                 self.state.path)
        while not self._stop.is_set():
            more = False
            try:
                more = await self.poll_once()
                self.polls += 1
                self._polls_c.value += 1
                if self._last_ok_g is not None:
                    self._last_ok_g.value = time.time()
                failures = 0
                self.last_error = None
                if self.blocked:
                    log.warning("source %s: %s answers again; polling resumed", self.cfg.name, self.kind)
                    self._set_blocked(None)
            except asyncio.CancelledError:
                raise
            except (AuthFailure, ConfigFailure) as e:
                what = "credentials/permissions" if isinstance(e, AuthFailure) else "request"
                self.count_error("auth" if isinstance(e, AuthFailure) else "config")
                self.last_error = str(e)
                self._set_blocked(str(e))
                again = (f"trying again in {s.auth_retry_interval:g} s" if s.auth_retry_interval
                         else "not trying again until the relay is restarted or reloaded")
                log.error("ALERT source %s: %s refused (%s): %s; polling stopped, %s", self.cfg.name, self.kind,
                          what, e, again)
                if not s.auth_retry_interval:
                    await self._stop.wait()
                    break
                if await self.sleep(s.auth_retry_interval):
                    break
                continue
            except Exception as e:   # TransientFailure, enqueue failures, bugs: never kill the loop
                if self._stop.is_set():
                    break            # interrupted by stop(): nothing was committed, nothing to report
                failures += 1
                self.count_error("transient" if isinstance(e, TransientFailure) else "internal")
                self.last_error = f"{type(e).__name__}: {e}"
                wait = backoff.delay(min(failures, 16))
                log.warning("source %s: poll failed (%s); next try in %.1f s; the cursor was not advanced",
                            self.cfg.name, self.last_error, wait)
                if await self._pause(min(wait, s.poll_interval * (2 ** min(failures, 8)))):
                    break
                continue
            if more:
                continue         # a capped poll: go on at once
            if await self._pause(s.poll_interval):
                break

    async def poll_once(self) -> bool:  # pragma: no cover - interface
        """One poll; True when more is waiting (poll again at once)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.cfg.name!r} {self.settings.base_url}>"


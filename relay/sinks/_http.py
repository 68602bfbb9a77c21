"""HTTP delivery machinery shared by the sinks that speak HTTP (the XSOAR sinks, the ``http`` sink
and its presets; the write-back sinks are meant to use it too).  Small pieces, each usable alone:

* :class:`HttpOptions` / :func:`read_http` - timeouts, concurrency, TLS (CA, client certificate),
  proxy: the keys :data:`HTTP_KEYS`.
* :class:`AuthConfig` / :func:`read_auth` / :class:`Auth` - the auth modes ``none``, ``bearer``
  (``Authorization: <scheme> <token>``), ``basic``, ``header`` (a named header and its secret
  value) and ``oauth2`` (client credentials: the token is fetched, cached, renewed before it
  expires and fetched again once when the API answers 401).  Secrets come from an environment
  variable or a file (relay/secrets.py), never from the config text.
* :func:`classify` - an HTTP answer -> ``None`` (2xx) or the delivery error class of
  relay/sinks/base.py, with :func:`retry_after` (seconds or an HTTP date, capped) and an
  :func:`excerpt` of the answer with every secret redacted:

  =================================================  ============================================
  429 (``Retry-After`` honoured), 408, 5xx           :class:`RetryableError` (backoff + jitter)
  read/write timeout, connection dropped mid-request :class:`RetryableError` (the outcome is
                                                     unknown: the sink's dedup covers a create)
  connect refused / connect timeout / TLS / proxy    :class:`UnavailableError` (rows given back,
                                                     no attempt counted, the sink pauses 1..60 s)
  401, 403                                           :class:`AuthError` (the sink blocks, nothing
                                                     is lost, an ALERT line says why)
  other 3xx/4xx                                      :class:`PermanentError` (dead letter, with
                                                     the status and an excerpt of the answer)
  =================================================  ============================================

* :class:`HttpSink` - a :class:`~relay.sinks.base.Sink` with one ``httpx.AsyncClient`` (an
  injected ``transport`` replaces the network: tests pass ``httpx.MockTransport``),
  :meth:`HttpSink.request` (transport failures mapped as above, every request counted in
  ``<requests_metric>{sink, op, status}``) and :meth:`HttpSink.run_groups` (rows with the same
  key in order, different keys concurrently, at most ``concurrency`` requests in flight; a
  retryable or auth failure stops the batch and gives the rows not yet tried back).
* :class:`Redactor` - removes every secret (and its Basic-auth and URL-encoded forms) from any
  text before it reaches a log line, a metric label or a dead-letter reason.
"""
from __future__ import annotations

import asyncio
import base64
import email.utils
import logging
import os
import random
import re
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence
from urllib.parse import quote, urlsplit

import httpx

from ..checks import positive as _pos
from ..dedup import DedupStoreError
from ..logs import LogLimiter
from ..secrets import Secret, read_secret, register
from .base import AuthError, PermanentError, RetryableError, Sink, SinkError, UnavailableError

__all__ = ["HttpOptions", "HTTP_KEYS", "read_http", "AuthConfig", "AUTH_MODES", "AUTH_KEYS", "read_auth", "Auth",
           "classify", "retry_after", "excerpt", "Redactor", "HttpSink", "EXCERPT", "MAX_RETRY_AFTER"]

log = logging.getLogger("relay.sinks.http")
_LIMITER = LogLimiter(10.0, log)
# httpx logs every request at INFO: far too chatty for an appliance (and URLs may be secrets)
logging.getLogger("httpx").setLevel(logging.WARNING)
logging.getLogger("httpcore").setLevel(logging.WARNING)

EXCERPT = 300
MAX_RETRY_AFTER = 3600.0
REDACTED = "<redacted>"


# =========================================================================== redaction
class Redactor:
    """Replaces every known secret in a text by ``<redacted>``: the values themselves, their
    URL-encoded form and, for a username/password pair, the Basic-auth token."""

    def __init__(self, values=()) -> None:
        self._values: list[str] = []
        for v in values:
            self.add(v)

    def add(self, value: str | None) -> None:
        if not value or len(value) < 4:
            return
        for form in (value, quote(value, safe=""), quote(value, safe="/:")):
            if form not in self._values:
                self._values.append(form)
            register(form)      # and out of every log line (relay/secrets.py, relay/logs.py)
        self._values.sort(key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for v in self._values:
            if v in text:
                text = text.replace(v, REDACTED)
        return text


# =========================================================================== transport options
@dataclass(frozen=True)
class HttpOptions:
    concurrency: int = 4
    timeout: float = 30.0
    connect_timeout: float = 10.0
    tls_verify: bool = True
    tls_ca: Path | None = None
    tls_cert: Path | None = None          # client certificate (mutual TLS)
    tls_key: Path | None = None
    proxy: str | None = None


#: The keys :func:`read_http` reads (``client_cert=True`` adds tls_cert and tls_key).
HTTP_KEYS = ("concurrency", "timeout", "connect_timeout", "tls_verify", "tls_ca", "proxy")


def _file(base_dir: Path, table, key: str) -> Path | None:
    v = table.get(key, str, None)
    if v is None:
        return None
    p = Path(os.path.expandvars(v)).expanduser()
    p = p if p.is_absolute() else base_dir / p
    if not p.is_file():
        raise table.err(key, f"file {str(p)!r} does not exist")
    return p


def _proxy(v: str):
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{v!r} is not an http(s) proxy URL")
    return None


def read_http(table, base_dir: Path, *, concurrency: int = 4, timeout: float = 30.0,
              client_cert: bool = False) -> HttpOptions:
    """The transport keys of an HTTP sink (``table.get``: unknown keys are refused after)."""
    cert = key = None
    if client_cert:
        cert, key = _file(base_dir, table, "tls_cert"), _file(base_dir, table, "tls_key")
        if (cert is None) != (key is None):
            raise table.err("tls_cert" if cert is None else "tls_key", "tls_cert and tls_key go together")
    return HttpOptions(
        concurrency=table.get("concurrency", int, concurrency, check=_pos),
        timeout=table.get("timeout", float, timeout, check=_pos),
        connect_timeout=table.get("connect_timeout", float, 10.0, check=_pos),
        tls_verify=table.get("tls_verify", bool, True),
        tls_ca=_file(base_dir, table, "tls_ca"),
        tls_cert=cert, tls_key=key,
        proxy=table.get("proxy", str, None, check=_proxy),
    )


# =========================================================================== auth
AUTH_MODES = ("none", "bearer", "basic", "header", "oauth2")
#: The keys :func:`read_auth` reads.
AUTH_KEYS = ("auth", "auth_scheme", "token_env", "token_file", "username", "password_env", "password_file",
             "auth_header", "auth_value_env", "auth_value_file", "token_url", "client_id", "client_secret_env",
             "client_secret_file", "scope")
_HEADER = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+\Z")


@dataclass(frozen=True)
class AuthConfig:
    mode: str = "none"
    scheme: str = "Bearer"                # bearer: Authorization: <scheme> <token>
    header: str | None = None             # header mode: the header's name
    username: str | None = None
    secret: Secret | None = None          # the token, password, header value or client secret
    token_url: str | None = None          # oauth2
    client_id: str | None = None
    scope: str | None = None

    def describe(self) -> str:
        if self.mode == "header":
            return f"header {self.header}"
        if self.mode == "basic":
            return f"basic ({self.username})"
        if self.mode == "oauth2":
            return f"oauth2 client credentials ({self.client_id} at {self.token_url})"
        if self.mode == "bearer":
            return f"bearer ({self.scheme})"
        return "none"


def read_auth(table, base_dir: Path, *, default: str = "none", modes: tuple = AUTH_MODES,
              scheme: str = "Bearer") -> AuthConfig:
    """``auth = "none" | "bearer" | "basic" | "header" | "oauth2"`` and the keys of that mode;
    a key of another mode is an error (it would be silently ignored)."""
    for literal in ("token", "password", "auth_value", "client_secret", "api_key"):
        if literal in table.data:
            raise table.err(literal, "secrets are never written in the config: use "
                                     f"{literal}_env (an environment variable) or {literal}_file")
    mode = table.get("auth", str, default, choices=modes)
    own = {"none": (), "bearer": ("auth_scheme", "token_env", "token_file"),
           "basic": ("username", "password_env", "password_file"),
           "header": ("auth_header", "auth_value_env", "auth_value_file"),
           "oauth2": ("token_url", "client_id", "client_secret_env", "client_secret_file", "scope")}[mode]
    for k in AUTH_KEYS[1:]:
        if k in table.data and k not in own:
            raise table.err(k, f"is not a key of auth = {mode!r} (its keys: {', '.join(own) or 'none'})")
    if mode == "bearer":
        sch = table.get("auth_scheme", str, scheme)
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]*", sch):
            raise table.err("auth_scheme", f"{sch!r} is not an authorization scheme (e.g. Bearer, Splunk)")
        tok = read_secret(table, "token_env", "token_file", "token", base_dir)
        return AuthConfig("bearer", scheme=sch, secret=tok)
    if mode == "basic":
        user = table.get("username", str, None, required=True)
        if ":" in user:
            raise table.err("username", "must not contain ':' (Basic auth)")
        pw = read_secret(table, "password_env", "password_file", "password", base_dir)
        return AuthConfig("basic", username=user, secret=pw)
    if mode == "header":
        name = table.get("auth_header", str, None, required=True)
        if not _HEADER.match(name):
            raise table.err("auth_header", f"{name!r} is not an HTTP header name")
        val = read_secret(table, "auth_value_env", "auth_value_file", "header value", base_dir)
        return AuthConfig("header", header=name, secret=val)
    if mode == "oauth2":
        url = table.get("token_url", str, None, required=True, check=_token_url)
        cid = table.get("client_id", str, None, required=True)
        sec = read_secret(table, "client_secret_env", "client_secret_file", "OAuth2 client secret", base_dir)
        return AuthConfig("oauth2", token_url=url, client_id=cid, secret=sec, scope=table.get("scope", str, None))
    return AuthConfig("none")


def _token_url(v: str):
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{v!r} is not an http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain credentials")
    return None


class Auth:
    """The runtime side of an :class:`AuthConfig`: request headers (``await headers()``), the
    secrets to redact, and the headers as ``test-parse`` shows them (``shown()``)."""

    RENEW_BEFORE = 60.0

    def __init__(self, cfg: AuthConfig) -> None:
        self.cfg = cfg
        self.redact = Redactor()
        self._static: dict[str, str] = {}
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock = asyncio.Lock()
        self.tokens_fetched = 0
        s = cfg.secret.reveal() if cfg.secret is not None else None
        self.redact.add(s)
        if cfg.mode == "bearer":
            self._static = {"Authorization": f"{cfg.scheme} {s}"}
        elif cfg.mode == "basic":
            tok = base64.b64encode(f"{cfg.username}:{s}".encode()).decode()
            self.redact.add(tok)
            self._static = {"Authorization": f"Basic {tok}"}
        elif cfg.mode == "header":
            self._static = {cfg.header: s}

    def shown(self) -> dict[str, str]:
        """The auth header without its secret (``test-parse``, logs)."""
        c = self.cfg
        if c.mode == "bearer":
            return {"Authorization": f"{c.scheme} {REDACTED}"}
        if c.mode == "basic":
            return {"Authorization": f"Basic {REDACTED}"}
        if c.mode == "header":
            return {c.header: REDACTED}
        if c.mode == "oauth2":
            return {"Authorization": f"Bearer {REDACTED}"}
        return {}

    def invalidate(self) -> None:
        """Drop the cached OAuth2 token (the API refused it)."""
        self._token = None
        self._renew_at = 0.0

    async def headers(self, sink: "HttpSink") -> dict[str, str]:
        if self.cfg.mode != "oauth2":
            return self._static
        async with self._lock:
            if self._token is None or time.monotonic() >= self._renew_at:
                await self._fetch(sink)
            return {"Authorization": f"Bearer {self._token}"}

    async def _fetch(self, sink: "HttpSink") -> None:
        c = self.cfg
        form = {"grant_type": "client_credentials", "client_id": c.client_id,
                "client_secret": c.secret.reveal() if c.secret else ""}
        if c.scope:
            form["scope"] = c.scope
        resp = await sink.request("POST", c.token_url, "token", data=form, headers={"Accept": "application/json"})
        st = resp.status_code
        if st in (400, 401, 403):
            raise AuthError(f"the OAuth2 token endpoint refused the client credentials (HTTP {st}): "
                            f"{excerpt(resp, self.redact)}", reason="auth")
        err = classify(resp, "token", service="OAuth2 token endpoint", redact=self.redact)
        if err is not None:
            raise err
        try:
            body = resp.json()
            token = str(body["access_token"])
            life = float(body.get("expires_in") or 3600)
        except (ValueError, KeyError, TypeError):
            raise RetryableError(f"the OAuth2 token endpoint answered without access_token: "
                                 f"{excerpt(resp, self.redact)}", reason="bad_answer") from None
        self.redact.add(token)
        self._token = token
        self._renew_at = time.monotonic() + max(life / 2, life - self.RENEW_BEFORE)
        self.tokens_fetched += 1


# =========================================================================== answers
def excerpt(resp: httpx.Response, redact: Callable[[str], str] | None = None, n: int = EXCERPT) -> str:
    """The answer's body on one line, at most ``n`` characters, secrets redacted."""
    try:
        t = resp.text
    except Exception:  # pragma: no cover - undecodable
        t = repr(resp.content[:n])
    t = " ".join(t.split())
    if redact is not None:
        t = redact(t)
    return t if len(t) <= n else t[:n] + "..."


def retry_after(resp: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (a number or an HTTP date), capped at an hour; None if absent."""
    v = resp.headers.get("Retry-After")
    if not v:
        return None
    v = v.strip()
    try:
        secs = float(v)
    except ValueError:
        try:
            dt = email.utils.parsedate_to_datetime(v)
        except (TypeError, ValueError):
            return None
        if dt is None:
            return None
        secs = dt.timestamp() - time.time()
    if secs != secs:  # NaN
        return None
    return min(MAX_RETRY_AFTER, max(0.0, secs))


def classify(resp: httpx.Response, what: str, *, service: str = "the server", auth_hint: str = "",
             redact: Callable[[str], str] | None = None) -> SinkError | None:
    """An HTTP answer -> None (2xx) or the error to raise (see the module docstring)."""
    st = resp.status_code
    if 200 <= st < 300:
        return None
    ex = excerpt(resp, redact)
    if st in (401, 403):
        hint = f"{auth_hint}; " if auth_hint else ""
        return AuthError(f"{service} answered HTTP {st} to {what}: {hint}answer: {ex}", reason="auth")
    if st == 429:
        ra = retry_after(resp)
        return RetryableError(f"{service} throttled {what} (HTTP 429, Retry-After {ra})", retry_after=ra,
                              reason="throttled")
    if st == 408 or st >= 500:
        return RetryableError(f"{service} answered HTTP {st} to {what}: {ex}", retry_after=retry_after(resp),
                              reason="server_error")
    if 300 <= st < 400:
        return PermanentError(f"{service} answered HTTP {st} (redirect to {resp.headers.get('Location', '?')}) to "
                              f"{what}: check the url", reason="rejected")
    return PermanentError(f"{service} rejected {what}: HTTP {st}: {ex}", reason="rejected")


# =========================================================================== the sink base
class HttpSink(Sink):
    """A sink with one ``httpx.AsyncClient``; see the module docstring."""

    #: how messages name the other side ("XSOAR", "ServiceNow", ...)
    service = "the server"
    #: the per-request counter: ``<requests_metric>{sink, op, status}``
    requests_metric = "relay_http_requests_total"
    #: the per-request latency histogram (answered requests): ``<latency_metric>{sink, op}``
    latency_metric = "relay_http_sink_request_seconds"

    def __init__(self, cfg, queue, *, transport: httpx.AsyncBaseTransport | None = None,
                 http: HttpOptions | Any = None, redact: Redactor | None = None, **kw) -> None:
        """``transport``: an httpx transport to send through instead of the network (tests:
        ``httpx.MockTransport``).  ``http``: the :class:`HttpOptions` (or any object with the
        same attributes)."""
        super().__init__(cfg, queue, **kw)
        self.transport = transport
        self.http = http if http is not None else HttpOptions()
        self.redact = redact if redact is not None else Redactor()
        self._backoff = 0
        self._store_fails = 0            # dedup store failures in a row (the pause grows with them)
        self._unreachable_logged = -1e9
        self._client: httpx.AsyncClient | None = None
        if not self.http.tls_verify:
            log.warning("sink %s: tls_verify = false: the %s certificate is NOT checked", self.name, self.service)

    # ------------------------------------------------------------------ client
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            h = self.http
            if not h.tls_verify:
                verify: Any = False
            else:
                verify = ssl.create_default_context(cafile=str(h.tls_ca) if h.tls_ca else None)
                if getattr(h, "tls_cert", None) is not None:
                    verify.load_cert_chain(str(h.tls_cert), str(h.tls_key))
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(h.timeout, connect=min(h.connect_timeout, h.timeout)),
                limits=httpx.Limits(max_connections=h.concurrency, max_keepalive_connections=h.concurrency),
                verify=verify, trust_env=False, proxy=h.proxy if self.transport is None else None,
                follow_redirects=False, transport=self.transport)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            try:
                await self._client.aclose()
            finally:
                self._client = None

    def _req_counter(self, op: str, status) -> None:
        self.registry.counter(self.requests_metric, sink=self.name, op=op, status=str(status)).value += 1

    def _unavailable(self, msg: str, reason: str) -> UnavailableError:
        self._backoff = min(self._backoff + 1, 7)
        delay = min(60.0, 2 ** (self._backoff - 1)) * random.uniform(0.5, 1.0)
        now = time.monotonic()
        if self._backoff == 1 or now - self._unreachable_logged >= 60.0:
            # the base loop logs released rows at debug only: say it here, at most once a minute
            self._unreachable_logged = now
            log.warning("sink %s: %s unreachable: %s; events stay queued, retrying", self.name, self.service, msg)
        return UnavailableError(f"{msg}; pausing {delay:.1f} s", retry_after=delay, reason=reason)

    async def request(self, method: str, url: str, op: str, *, content: bytes | None = None,
                      headers: dict[str, str] | None = None, data: dict | None = None,
                      params: dict | None = None) -> httpx.Response:
        """One request; transport failures -> Unavailable/RetryableError (never with a secret:
        messages name the path only, and go through :attr:`redact`)."""
        path = urlsplit(url).path or "/"
        what = self.redact(f"{op} ({method} {path})")
        t0 = time.monotonic()
        try:
            resp = await self.client().request(method, url, content=content, data=data, params=params,
                                               headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            self._req_counter(op, "connect_error")
            raise self._unavailable(self.redact(f"cannot connect to {self.service} for {what}: "
                                                f"{type(e).__name__}: {e}"), "connect") from None
        except httpx.TimeoutException as e:
            self._req_counter(op, "timeout")
            raise RetryableError(f"{self.service} did not answer {what} within {self.http.timeout:g} s "
                                 f"({type(e).__name__})", reason="timeout") from None
        except httpx.ProxyError as e:
            self._req_counter(op, "connect_error")
            raise self._unavailable(self.redact(f"proxy failed for {what}: {e}"), "connect") from None
        except (httpx.TransportError, OSError) as e:
            self._req_counter(op, "connection_error")
            raise RetryableError(self.redact(f"connection to {self.service} broke during {what} "
                                             f"({type(e).__name__}: {e}); its outcome is unknown"),
                                 reason="connection") from None
        self._backoff = 0
        self._req_counter(op, resp.status_code)
        self.registry.histogram(self.latency_metric, sink=self.name, op=op).observe(time.monotonic() - t0)
        return resp

    # ------------------------------------------------------------------ batch runner
    async def run_groups(self, groups: list[list], handler: Callable[[Any], Awaitable[None]],
                         concurrency: int | None = None) -> list:
        """Run ``handler(item)`` for each group in order, groups concurrently (at most
        ``concurrency``, default ``http.concurrency``).  A retryable or auth failure stops the
        batch: the rows not yet tried are given back without counting an attempt (and the sink
        pauses).  Returns ``[(item, error)]`` for ``send``; raises the AuthError if one
        happened (the whole batch goes back: rows done in it are known and skipped next time)."""
        failed: list[tuple[Any, SinkError]] = []
        sem = asyncio.Semaphore(concurrency or self.http.concurrency)
        state: dict[str, Any] = {"stop": None, "untried": None}

        def untried_error() -> SinkError:
            if state["untried"] is None:
                cause = state["stop"]
                if isinstance(cause, (AuthError, UnavailableError)):
                    state["untried"] = cause
                else:
                    ra = getattr(cause, "retry_after", None)
                    self._backoff = min(self._backoff + 1, 7)
                    pause = ra if ra is not None else min(30.0, 0.5 * 2 ** (self._backoff - 1)) * \
                        random.uniform(0.5, 1.0)
                    state["untried"] = UnavailableError(f"not tried: {cause}", retry_after=pause, reason="deferred")
            return state["untried"]

        async def run_group(group: list) -> None:
            async with sem:
                for item in group:
                    if state["stop"] is not None:
                        failed.append((item, untried_error()))
                        continue
                    try:
                        await handler(item)
                    except DedupStoreError as e:
                        # the local dedup store cannot be read or written (a full disk): the
                        # rest of the batch would fail the same way; all of it goes back
                        err = self._store_failed(e)
                        failed.append((item, err))
                        if state["stop"] is None:
                            state["stop"] = err
                    except (AuthError, RetryableError) as e:
                        failed.append((item, e))
                        if state["stop"] is None:
                            state["stop"] = e
                    except PermanentError as e:
                        failed.append((item, e))
                    except asyncio.CancelledError:
                        raise
                    except Exception as e:  # a bug must not lose the row: retry it, say why
                        log.exception("sink %s: unexpected error handling row %s", self.name, item.id)
                        failed.append((item, RetryableError(f"internal error: {type(e).__name__}: {e}",
                                                            reason="internal")))
                    else:
                        self._store_fails = 0

        await asyncio.gather(*(run_group(g) for g in groups))
        auth = next((e for _, e in failed if isinstance(e, AuthError)), None)
        if auth is not None:
            raise auth
        return failed

    def _store_failed(self, e: DedupStoreError) -> UnavailableError:
        """A dedup store failure -> the batch given back without an attempt counted (the
        destination is not at fault: a row must not reach the DLQ because this host's disk is
        full), the sink pausing 0.5 s, doubling up to 30 s while it lasts; one log line per
        10 s, no traceback (``relay_send_errors_total{reason="disk_full"|"dedup_store"}``)."""
        self._store_fails = n = min(self._store_fails + 1, 7)
        pause = min(30.0, 0.5 * 2 ** (n - 1))
        _LIMITER.error((self.name, "dedup_store"), "sink %s: %s; the batch stays queued, trying again in %g s",
                       self.name, e, pause)
        return UnavailableError(f"{e}; pausing {pause:g} s", retry_after=pause,
                                reason="disk_full" if e.disk_full else "dedup_store")

    def _store_not_recorded(self, e: DedupStoreError, n: int) -> None:
        """Records already created whose keys the store could not take: the rows are acked
        (sending them again would create them twice now); counted and logged (once per 10 s)."""
        self.count_error("disk_full" if e.disk_full else "dedup_store")
        _LIMITER.error((self.name, "dedup_store_put"), "sink %s: %s; %d records were created but their dedup keys "
                       "are not recorded: an event with one of those keys may create a second one", self.name, e, n)

    @staticmethod
    def groups(items: Sequence, key_of) -> list[list]:
        """Rows grouped by ``key_of(item)`` (None: a group of its own), in first-seen order."""
        groups: OrderedDict = OrderedDict()
        for it in items:
            k = key_of(it)
            groups.setdefault(k if k else ("", it.id), []).append(it)
        return list(groups.values())

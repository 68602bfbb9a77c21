"""The ``http`` source: webhooks and JSON alerts in, answered 200 only once durable.

::

    [sources.alerts]
    type = "http"
    address = "0.0.0.0:8443"
    paths = ["/ingest"]              # the path is kept on the event (extra.http_path)
    format = "json"                  # json | ndjson | syslog | hec
    auth = "bearer"                  # none | bearer | basic | hmac-sha256
    token_env = "RELAY_ALERTS_TOKEN" # or token_file; lists allowed (rotation)
    tls_cert = "..."  tls_key = "..."  tls_client_ca = "..."   # TLS 1.2+, optional mTLS
    max_body = 1048576
    map = "sekoia"                   # a preset, or a [sources.alerts.map] table

One request, in order (each refusal counted in ``relay_http_requests_total{source, status,
reason}``, the reason also in the JSON answer):

1. allowlist (403 ``forbidden``), path (404), method (405, ``Allow: POST``);
2. auth (401 ``auth_missing`` / ``auth_invalid``, ``WWW-Authenticate``; HEC: 401 code 2/3,
   403 code 4);
3. ``Content-Type`` (415 ``content_type``), ``Content-Encoding`` (gzip or none, else 415
   ``content_encoding``), ``Content-Length`` over ``max_body`` (413 ``too_large`` at once: the
   body is never read, no ``100 Continue`` is sent, the connection is closed);
4. backpressure before the body is read: more than ``max_backlog`` events waiting for their
   commit gives 503 ``queue_full`` with ``Retry-After``;
5. the body, at most ``max_body`` bytes (over: 413 and the connection closed: the rest is never
   read) in ``body_timeout`` seconds (408); the HMAC signature (401); gzip decoded, at most
   ``max_body`` bytes decoded (413 ``too_large_decoded``);
6. ``ingest.submit_body(body)``: decoded (parsers/httpbody.py) and mapped (parsers/jsonmap.py):
   any error gives 400 with the line, column, byte offset or item number, and nothing of the
   request is queued; a decoder bug gives 500, nothing queued.  With ``workers`` > 1 the decode
   and the stage run in an ingest worker (relay/workers.py), the whole body in one, so a batch
   of alerts uses another core while this process reads the next request;
7. the one stage (relay/pipeline.py): staged, then, if a matched
   sink's queue is full (policy ``block``) or the disk is full, 503 ``queue_full`` with
   ``Retry-After`` and nothing queued; else committed, and only then 200 ``{"accepted": N}``.
   A commit that takes longer than ``accept_timeout`` gives 503 ``commit_timeout`` (the events
   may still be committed: a retry may duplicate them, which the XSOAR sinks' dedup keys
   absorb).  Format ``syslog`` hands the lines to ``ingest.handle`` like a listener (the workers
   parse them when ``workers`` > 1); its backpressure check is every sink's.

The HTTP server is relay/httpserver.py (uvicorn's protocol on the relay's loop); keep-alive,
pipelining and many requests in flight work.  Tokens are :class:`relay.secrets.Secret` and never
logged; token comparisons are constant-time and try every configured token.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from parsers.httpbody import BodyError, decode as decode_body, lines as body_lines
from parsers.jsonmap import MapError, compile_map

from .. import kinds
from ..httpserver import BodyTimeout, BodyTooLarge, HttpServer, read_body, respond, server_tls
from ..checks import within
from .base import MESSAGE_SIZE, Source, bind_error

log = logging.getLogger("relay.sources.http")

__all__ = ["HttpSource", "HttpSettings", "read_config", "decode"]

FORMATS = ("json", "ndjson", "syslog", "hec")
AUTHS = ("none", "bearer", "basic", "hmac-sha256")
HEC_BASE = "/services/collector"

_CTYPES = {
    "json": (b"application/json", b"text/json"),
    "ndjson": (b"application/x-ndjson", b"application/ndjson", b"application/jsonl", b"application/x-jsonlines",
               b"application/jsonlines", b"application/json", b"text/plain"),
    "syslog": (b"text/plain", b"application/octet-stream", b"application/syslog"),
}
_CHARSETS = (b"utf-8", b"utf8", b"us-ascii")


@dataclass(frozen=True)
class HttpSettings:
    paths: tuple = ("/ingest",)
    format: str = "json"
    auth: str = "bearer"
    tokens: tuple = ()
    username: str | None = None
    hmac_header: str = "x-hub-signature-256"
    hmac_timestamp_header: str | None = None
    hmac_max_skew: float = 300.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    max_body: int = 1 << 20
    max_connections: int = 1000
    idle_timeout: float = 30.0
    body_timeout: float = 30.0
    accept_timeout: float = 30.0
    retry_after: int = 5
    map_spec: Any = "generic"
    mapper: Any = field(default=None, compare=False, repr=False)


# ------------------------------------------------------------------------------ config

def _paths(v):
    if not v or not all(isinstance(p, str) and p.startswith("/") and " " not in p for p in v):
        raise ValueError("must be a non-empty list of paths starting with '/'")
    return tuple(p.rstrip("/") or "/" for p in v)


_size = within(1024, 256 << 20, "bytes")


def _pos(v):
    if v <= 0:
        raise ValueError(f"must be greater than 0, not {v}")


def read_config(t, sc, base_dir: Path) -> None:
    from ..checks import existing_file, networks, parse_address
    from ..secrets import read_tokens
    sc.address = t.get("address", str, required=True, check=parse_address)
    sc.allow = t.get("allow", list, [], check=networks)
    sc.lenient = t.get("lenient", bool, False)
    sc.max_message_size = t.get("max_message_size", int, 65536, check=MESSAGE_SIZE)
    fmt = t.get("format", str, "json", choices=FORMATS)
    paths = t.get("paths", list, [HEC_BASE] if fmt == "hec" else ["/ingest"], check=_paths)
    auth = t.get("auth", str, "bearer", choices=AUTHS)
    if fmt == "hec" and auth not in ("none", "bearer"):
        raise t.err("auth", "with format = \"hec\" use \"bearer\" (Authorization: Splunk <token>) or \"none\"")
    tokens = read_tokens(t, "token_env", "token_file", "intake token", base_dir, required=False)
    if auth != "none" and not tokens:
        raise t.err("token_env", f"auth = {auth!r} needs a token: token_env (an environment variable) or "
                                 f"token_file; or set auth = \"none\" explicitly")
    if auth == "none" and tokens:
        raise t.err("auth", "tokens are set but auth = \"none\": set auth (bearer, basic, hmac-sha256)")
    username = t.get("username", str, None)
    if username is not None and auth != "basic":
        raise t.err("username", "only with auth = \"basic\"")
    hh = t.get("hmac_header", str, "X-Hub-Signature-256")
    ht = t.get("hmac_timestamp_header", str, None)
    skew = t.get("hmac_max_skew", float, 300.0, check=_pos)
    if auth != "hmac-sha256" and ("hmac_header" in t.data or ht is not None or "hmac_max_skew" in t.data):
        raise t.err("hmac_header" if "hmac_header" in t.data else "hmac_timestamp_header",
                    "only with auth = \"hmac-sha256\"")
    fileconv = existing_file(base_dir)
    cert = t.get("tls_cert", str, None, check=fileconv)
    key = t.get("tls_key", str, None, check=fileconv)
    ca = t.get("tls_client_ca", str, None, check=fileconv)
    if (cert is None) != (key is None):
        raise t.err("tls_key" if key is None else "tls_cert", "tls_cert and tls_key go together")
    if ca is not None and cert is None:
        raise t.err("tls_client_ca", "client certificates need TLS: set tls_cert and tls_key")
    raw_map = t.data.get("map", "generic")
    t.used.add("map")
    if fmt == "syslog" and "map" in t.data:
        raise t.err("map", "format = \"syslog\" parses syslog lines (no JSON map)")
    try:
        mapper = compile_map(raw_map, "map")
    except MapError as e:
        raise t.err(e.where, e.message) from None
    sc.options["http"] = HttpSettings(
        paths=paths, format=fmt, auth=auth, tokens=tokens, username=username,
        hmac_header=hh.lower(), hmac_timestamp_header=ht.lower() if ht else None, hmac_max_skew=skew,
        tls_cert=cert, tls_key=key, tls_client_ca=ca,
        max_body=t.get("max_body", int, 1 << 20, check=_size),
        max_connections=t.get("max_connections", int, 1000, check=_pos),
        idle_timeout=t.get("idle_timeout", float, 30.0, check=_pos),
        body_timeout=t.get("body_timeout", float, 30.0, check=_pos),
        accept_timeout=t.get("accept_timeout", float, 30.0, check=_pos),
        retry_after=t.get("retry_after", int, 5, check=_pos),
        map_spec=_freeze(raw_map), mapper=mapper)


def _freeze(v):
    """The map table as a hashable, comparable value (reload compares configs)."""
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    return v


def decode(body: bytes, sc, received: float, peer: str | None = None, path: str | None = None, *,
           hec_raw: bool = False, query: dict | None = None):
    """One request body as this source decodes and maps it -> events (raises
    parsers.httpbody.BodyError), or None when the source takes syslog lines (they are parsed
    like any syslog message).  The source itself (through :meth:`Pipeline.submit_body`, in the
    ingest workers when there are), ``relay test-parse --source NAME`` and the golden cases call
    it.  ``hec_raw``/``query``: HEC's ``/raw`` endpoint and its query parameters."""
    st: HttpSettings = sc.options["http"]
    if st.format == "syslog":
        return None
    return decode_body(body, st.format, st.mapper, source=sc.name, received=received, peer=peer,
                       path=path or st.paths[0], hec_raw=hec_raw, query=query)


# ------------------------------------------------------------------------------ the source

_JSON = b"application/json"


class HttpSource(Source):
    """See the module docstring."""

    def __init__(self, cfg, ingest, registry=None) -> None:
        super().__init__(cfg, ingest, registry)
        self.settings: HttpSettings = cfg.options["http"]
        st = self.settings
        self.server: HttpServer | None = None
        self.mapper = st.mapper if st.mapper is not None else compile_map(st.map_spec)
        self.hec = st.format == "hec"
        self.endpoints: dict[str, str] = {}
        for p in st.paths:
            if self.hec:
                base = p.rstrip("/") if p != "/" else ""
                for suffix, ep in (("", "event"), ("/event", "event"), ("/event/1.0", "event"), ("/raw", "raw"),
                                   ("/raw/1.0", "raw"), ("/health", "health"), ("/health/1.0", "health"),
                                   ("/ack", "ack")):
                    self.endpoints[(base + suffix) or "/"] = ep
            else:
                self.endpoints[p] = "ingest"
        self._tokens = tuple(t.reveal().encode() for t in st.tokens)
        self._hmac_keys = self._tokens
        self._statuses: dict = {}
        self._latency = None          # relay_http_request_seconds, made at the first 200
        self._retry_after = [(b"retry-after", str(st.retry_after).encode())]
        self._ctypes = _CTYPES.get(st.format)
        self._full = getattr(ingest, "full", None)

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        st = self.settings
        ctx = None
        if st.tls_cert is not None:
            ctx = server_tls(st.tls_cert, st.tls_key, st.tls_client_ca)
        host, port = self.cfg.address
        self.server = HttpServer(self._app, host, port, ssl_context=ctx, max_connections=st.max_connections,
                                 keep_alive=st.idle_timeout, name=f"source {self.cfg.name}")
        try:
            await self.server.start()
        except OSError as e:
            self.server = None
            raise bind_error(self.cfg, e) from None
        self.bound_address = (host, self.server.port)
        self.registry.gauge("relay_connections", fn=lambda: self.server.connections if self.server else 0,
                            source=self.cfg.name)

    async def stop(self, drain_timeout: float = 10.0) -> None:
        if self.server is not None:
            await self.server.close(min(drain_timeout, self.settings.accept_timeout))
            self.server = None
        self.registry.remove_gauges(source=self.cfg.name)

    # ---------------------------------------------------------------- answers
    def _count(self, status: int, reason: str) -> None:
        key = (status, reason)
        c = self._statuses.get(key)
        if c is None:
            c = self._statuses[key] = self.registry.counter("relay_http_requests_total", source=self.cfg.name,
                                                            status=str(status), reason=reason)
        c.value += 1

    def _accepted(self, n: int, received: float) -> None:
        self._received.value += n
        self._count(200, "accepted")
        h = self._latency
        if h is None:
            h = self._latency = self.registry.histogram("relay_http_request_seconds", source=self.cfg.name)
        h.observe(max(0.0, time.time() - received))

    async def _refuse(self, send, status: int, reason: str, message: str, *, headers=None, close=False,
                      hec_code: int | None = None, extra: dict | None = None) -> None:
        self._count(status, reason)
        if self.hec and hec_code is not None:
            body = {"text": message, "code": hec_code}
            if extra and "item" in extra:
                body["invalid-event-number"] = extra["item"] - 1
        else:
            body = {"error": message, "reason": reason}
            if extra:
                body.update(extra)
        try:
            await respond(send, status, orjson.dumps(body), _JSON, headers, close=close)
        except (OSError, RuntimeError):   # the client went away
            pass

    # ---------------------------------------------------------------- auth
    def _check_token(self, given: bytes) -> bool:
        ok = False
        for t in self._tokens:              # every token compared, in constant time each
            ok |= hmac.compare_digest(given, t)
        return ok

    def _auth(self, scope) -> tuple | None:
        """None when authorised, else (status, reason, message, hec_code)."""
        st = self.settings
        if st.auth == "none" or st.auth == "hmac-sha256":      # HMAC is checked on the body
            return None
        got = None
        for k, v in scope["headers"]:
            if k == b"authorization":
                got = v
                break
        if self.hec and got is None:
            q = scope.get("query_string") or b""
            if b"token=" in q:
                return 400, "auth_query", "Query string authorization is not enabled", 16
        if got is None:
            return 401, "auth_missing", "authorization required", 2
        scheme, _, cred = got.partition(b" ")
        scheme = scheme.lower()
        cred = cred.strip()
        if st.auth == "basic" or scheme == b"basic":
            if scheme != b"basic":
                return 401, "auth_invalid", "expected Authorization: Basic", 3
            try:
                user, sep, pw = base64.b64decode(cred, validate=True).partition(b":")
            except (binascii.Error, ValueError):
                return 401, "auth_invalid", "malformed Basic credentials", 3
            if not sep:
                return 401, "auth_invalid", "malformed Basic credentials", 3
            ok = self._check_token(pw)
            if st.username is not None:
                ok &= hmac.compare_digest(user, st.username.encode())
            return None if ok else (401 if not self.hec else 403, "auth_invalid", "invalid credentials", 4)
        if scheme not in ((b"splunk", b"bearer") if self.hec else (b"bearer",)):
            return 401, "auth_invalid", "Invalid authorization" if self.hec else "expected Authorization: Bearer", 3
        if self._check_token(cred):
            return None
        return (403, "auth_invalid", "Invalid token", 4) if self.hec else \
            (401, "auth_invalid", "invalid token", None)

    def _hmac_ok(self, scope, body: bytes) -> tuple | None:
        st = self.settings
        sig = ts = None
        for k, v in scope["headers"]:
            if k == st.hmac_header.encode():
                sig = v
            elif st.hmac_timestamp_header is not None and k == st.hmac_timestamp_header.encode():
                ts = v
        if sig is None:
            return 401, "auth_missing", f"signature header {st.hmac_header} required"
        msg = body
        if st.hmac_timestamp_header is not None:
            if ts is None:
                return 401, "auth_missing", f"timestamp header {st.hmac_timestamp_header} required"
            try:
                t = float(ts)
            except ValueError:
                return 401, "auth_invalid", "timestamp is not a number"
            if abs(time.time() - t) > st.hmac_max_skew:
                return 401, "auth_stale", f"timestamp more than {st.hmac_max_skew:g} s away from now"
            msg = ts + b"." + body
        s = sig.strip()
        if s[:7].lower() == b"sha256=":
            s = s[7:]
        try:
            given = bytes.fromhex(s.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            try:
                given = base64.b64decode(s, validate=True)
            except (binascii.Error, ValueError):
                return 401, "auth_invalid", "signature is neither hex nor base64"
        ok = False
        for key in self._hmac_keys:
            ok |= hmac.compare_digest(given, hmac.new(key, msg, hashlib.sha256).digest())
        return None if ok else (401, "auth_invalid", "signature does not match")

    # ---------------------------------------------------------------- the application
    async def _app(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        try:
            await self._serve(scope, receive, send)
        except (ConnectionError, OSError):      # the client went away: nothing was acknowledged
            self._count(499, "client_closed")
        except Exception as e:                  # a bug: answer 500, never lose the process
            log.exception("source %s: request failed: %s", self.cfg.name, e)
            await self._refuse(send, 500, "internal", f"internal error ({type(e).__name__}); nothing accepted",
                               hec_code=8, close=True)

    async def _serve(self, scope, receive, send) -> None:
        st = self.settings
        cfg = self.cfg
        client = scope.get("client")
        ip = client[0] if client else "?"
        if cfg.allow and not cfg.allowed(ip):
            if self.limiter.warning(("forbidden", ip), "source %s: refused a request from %s (not in allow)",
                                    cfg.name, ip):
                pass
            await self._refuse(send, 403, "forbidden", "your address is not allowed", close=True)
            return
        path = scope["path"]
        if len(path) > 1 and path.endswith("/"):
            path = path.rstrip("/")
        ep = self.endpoints.get(path)
        if ep is None:
            await self._refuse(send, 404, "not_found", f"no intake at {path[:100]}; try {', '.join(st.paths)}",
                               hec_code=404)
            return
        method = scope["method"]
        if ep == "health":
            if method not in ("GET", "HEAD"):
                await self._refuse(send, 405, "method", "use GET", headers=[(b"allow", b"GET")])
                return
            why = self._full(()) if self._full is not None else None
            status, body = (200, {"text": "HEC is healthy", "code": 17}) if why is None else \
                (503, {"text": "HEC is unhealthy, queues are full", "code": 18})
            self._count(status, "health")
            await respond(send, status, orjson.dumps(body), _JSON, head=method == "HEAD")
            return
        if method != "POST":
            await self._refuse(send, 405, "method", "use POST", headers=[(b"allow", b"POST")], hec_code=405)
            return
        if ep == "ack":
            await self._refuse(send, 400, "hec_ack", "ACK is disabled", hec_code=14)
            return
        bad = self._auth(scope)
        if bad is not None:
            status, reason, message, code = bad
            hdr = None if self.hec else [(b"www-authenticate", b'Bearer realm="relay"' if st.auth == "bearer"
                                          else b'Basic realm="relay"')] if st.auth in ("bearer", "basic") else None
            await self._refuse(send, status, reason, message, headers=hdr, hec_code=code)
            return
        # headers: type, encoding, length
        ctype = enc = clen = None
        for k, v in scope["headers"]:
            if k == b"content-type":
                ctype = v
            elif k == b"content-encoding":
                enc = v
            elif k == b"content-length":
                clen = v
        if ctype is not None and self._ctypes is not None:
            mt, _, params = ctype.partition(b";")
            mt = mt.strip().lower()
            okt = mt in self._ctypes or (st.format == "json" and mt.startswith(b"application/") and
                                         mt.endswith(b"+json"))
            cs = params.lower().partition(b"charset=")[2].strip().strip(b'"') if b"charset=" in params.lower() \
                else None
            if not okt or (cs is not None and cs.split(b";")[0] not in _CHARSETS):
                await self._refuse(send, 415, "content_type",
                                   f"Content-Type {ctype.decode('latin-1')[:80]!r} is not accepted here; send "
                                   f"{self._ctypes[0].decode()} (UTF-8)", close=True)
                return
        gz = False
        if enc is not None:
            e = enc.strip().lower()
            if e in (b"gzip", b"x-gzip"):
                gz = True
            elif e not in (b"identity", b""):
                await self._refuse(send, 415, "content_encoding",
                                   f"Content-Encoding {enc.decode('latin-1')[:40]!r} is not accepted (gzip or none)",
                                   close=True)
                return
        if clen is not None:
            try:
                n = int(clen)
            except ValueError:
                n = -1
            if n > st.max_body:
                await self._refuse(send, 413, "too_large", f"the body is {n} bytes; max_body is {st.max_body}",
                                   close=True)
                return
        # backpressure before reading: events waiting for their commit (bounded memory)
        full = self._full
        if full is not None:
            why = full(()) if st.format != "syslog" else full()
            if why is not None:
                await self._busy(send, why)
                return
        received = time.time()
        try:
            body = await read_body(receive, st.max_body, st.body_timeout)
        except BodyTooLarge:
            await self._refuse(send, 413, "too_large", f"the body is over max_body ({st.max_body} bytes)",
                               close=True)
            return
        except BodyTimeout:
            await self._refuse(send, 408, "body_timeout",
                               f"the body did not arrive within {st.body_timeout:g} s", close=True)
            return
        if st.auth == "hmac-sha256":
            bad = self._hmac_ok(scope, body)
            if bad is not None:
                await self._refuse(send, bad[0], bad[1], bad[2])
                return
        if gz:
            try:
                body = _gunzip(body, st.max_body)
            except BodyTooLarge:
                await self._refuse(send, 413, "too_large_decoded",
                                   f"the body is over max_body ({st.max_body} bytes) once decompressed", close=True)
                return
            except (zlib.error, EOFError) as e:
                await self._refuse(send, 400, "gzip", f"the gzip body cannot be decoded: {e}", hec_code=6)
                return
        peer = f"{ip}:{client[1]}" if client else None
        if st.format == "syslog":
            await self._syslog(send, body, peer, received)
            return
        from ..pipeline import Backpressure, DecodeFailed
        try:
            q = _query(scope.get("query_string")) if ep == "raw" else None
            async with asyncio.timeout(st.accept_timeout):
                n = await self.pipeline.submit_body(body, cfg, received=received, peer=peer, path=path,
                                                    hec_raw=ep == "raw", query=q, refuse_when_full=True)
        except BodyError as e:
            code = {"hec_no_data": 5, "hec_event_missing": 12, "hec_event_blank": 13, "hec_fields": 15}.get(e.reason, 6)
            await self._refuse(send, 400, e.reason, str(e) if not self.hec else
                               {5: "No data", 12: "Event field is required", 13: "Event field cannot be blank",
                                15: "Error in handling indexed fields"}.get(code, "Invalid data format"),
                               hec_code=code, extra=e.to_dict() | {"error": str(e)})
            return
        except Backpressure as e:
            await self._busy(send, str(e))
            return
        except DecodeFailed:      # a bug in a decoder or map: 500 (see _app), nothing accepted
            raise
        except TimeoutError:
            await self._refuse(send, 503, "commit_timeout",
                               f"the events were not durable within {st.accept_timeout:g} s; retry later",
                               headers=self._retry_after, hec_code=9)
            return
        except Exception as e:    # a commit failed (disk error): nothing is acknowledged
            self.limiter.warning("commit", "source %s: could not queue a request's events: %s", cfg.name, e)
            await self._refuse(send, 503, "commit_failed", f"the events could not be queued ({e}); retry later",
                               headers=self._retry_after, hec_code=8)
            return
        self._accepted(n, received)
        await respond(send, 200, b'{"accepted":%d}' % n if not self.hec else
                      b'{"text":"Success","code":0}', _JSON)

    async def _busy(self, send, why: str) -> None:
        self.limiter.warning("busy", "source %s: answering 503 (%s)", self.cfg.name, why)
        await self._refuse(send, 503, "queue_full", "the relay's queues are full; retry later",
                           headers=self._retry_after, hec_code=9)

    async def _syslog(self, send, body: bytes, peer: str | None, received: float) -> None:
        st = self.settings
        items = []
        limit = self.cfg.max_message_size
        for line, no, off in body_lines(body):
            if len(line) > limit:
                await self._refuse(send, 400, "too_long", f"line {no} is {len(line)} bytes, over max_message_size "
                                                          f"({limit})", extra={"line": no, "offset": off})
                return
            items.append((line, peer))
        if not items:
            await self._refuse(send, 400, "empty", "empty body")
            return
        try:
            async with asyncio.timeout(st.accept_timeout):
                fut = self.pipeline.handle(items, self.cfg, received)
                if fut is not None:
                    await fut
        except TimeoutError:
            await self._refuse(send, 503, "commit_timeout",
                               f"the events were not durable within {st.accept_timeout:g} s; retry later",
                               headers=self._retry_after)
            return
        except Exception as e:
            self.limiter.warning("commit", "source %s: could not queue a request's events: %s", self.cfg.name, e)
            await self._refuse(send, 503, "commit_failed", f"the events could not be queued ({e}); retry later",
                               headers=self._retry_after)
            return
        self._accepted(len(items), received)
        await respond(send, 200, b'{"accepted":%d}' % len(items), _JSON)


def _gunzip(data: bytes, limit: int) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = d.decompress(data, limit + 1)
    if len(out) > limit or d.unconsumed_tail:
        raise BodyTooLarge()
    if not d.eof:
        raise EOFError("the gzip stream is cut short")
    return out


def _query(qs: bytes | None) -> dict:
    from urllib.parse import parse_qsl
    if not qs:
        return {}
    return {k: v for k, v in parse_qsl(qs.decode("latin-1"))[:20]}


KIND = kinds.register_source(kinds.SourceKind(
    type="http", read_config=read_config, factory=HttpSource, transport="tcp",
    keys=("address", "allow", "lenient", "max_message_size", "paths", "format", "auth", "token_env",
          "token_file", "username", "hmac_header", "hmac_timestamp_header", "hmac_max_skew", "tls_cert", "tls_key",
          "tls_client_ca", "max_body", "max_connections", "idle_timeout", "body_timeout", "accept_timeout",
          "retry_after", "map"),
    decode=decode,
    doc="HTTP(S) intake: JSON, NDJSON, syslog lines or Splunk HEC, mapped to canonical events; "
        "200 only once durable"))

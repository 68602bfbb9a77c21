"""Cortex XSOAR delivery: REST incidents (``type = "xsoar"``) and the Generic Webhook
(``type = "xsoar_webhook"``).  The API facts are in the reference notes (apis.md section 1).

Promise: a matched event becomes exactly ONE XSOAR incident, across retries, restarts,
XSOAR outages and re-sent messages.  The queue row (rendered by formats/xsoar.py) carries
the event's ``dedup_key`` in its meta and in the custom field ``dedup_field``
(``relaydedupkey``); for every row the REST sink

1. looks the key up in its **dedup store** (SQLite, ``<state_dir>/xsoar-dedup-<sink>.db``,
   key -> incident id, version, closed flag, digest of the last body sent; FIFO-capped at
   ``dedup_store_size`` keys, kept across restarts);
2. on a miss, **searches** XSOAR: ``POST /incidents/search`` with
   ``query: <dedup_field>:"<key>"`` and an explicit ``size`` (XSOAR returns *nothing* when
   ``size`` is omitted) and reads ``data`` defensively (it is ``null`` when nothing matches);
3. creates the incident (``POST /incident``, one call per incident: there is no
   multi-create) only when both miss, and records it in the store before the row is acked.

A create whose answer was lost (connection dropped after XSOAR processed it, timeout, relay
killed) is retried later; the retry finds the incident by the search and does not create a
second one.  ``mode = "create"``: an event for a known incident is skipped (acked, counted
``relay_xsoar_incidents_total{action="skipped"}``).  ``mode = "sync"``: it updates the
incident by id with its current ``version`` (optimistic locking); on a version conflict the
incident is re-read and the update retried (3 times).  An update whose body equals the last
one sent is skipped (``unchanged``).  ``close_on_source_close = true`` closes the incident
(``/incident/batchClose`` or ``/incident/close``) when the event says closed.

Failures (per request):

=================================================  ============================================
429 (``Retry-After`` honoured), 408, 5xx,           :class:`RetryableError`: this row is retried
read/write timeout, connection dropped              by the queue (backoff with jitter); rows of
                                                    the batch not yet tried are given back
                                                    (no attempt counted) and the sink pauses
connect refused / connect timeout / TLS failure     :class:`UnavailableError`: rows given back,
                                                    sink pauses (growing backoff, 1..60 s)
401, 403                                            :class:`AuthError`: the sink blocks, every
                                                    event stays queued, ``relay_sink_blocked=1``
                                                    and an ALERT log line say why
other 3xx/4xx                                       :class:`PermanentError`: dead letter, with
                                                    the status and an excerpt of the answer
=================================================  ============================================

Within a leased batch, rows with the same dedup key are handled in order, one after the
other; different keys run concurrently, at most ``concurrency`` requests in flight (one
``httpx.AsyncClient`` per sink).  A row leaves the queue only after XSOAR acknowledged it.

The webhook sink posts one object (``batch_size = 1``) or an array of items, waits up to
``linger`` seconds to fill a batch, authenticates with a header or Basic auth, classifies
answers the same way and keeps its own dedup store (the webhook has no search).  Its window:
a crash between XSOAR's 200 and the store write re-sends those items once; set the Generic
Webhook instance's ``duplication_key`` to ``relay.dedup_key`` to close it on the XSOAR side.

Secrets come from an environment variable or a file, never from the config text or the
command line; they are held in :class:`Secret` (redacted ``repr``) and never logged.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import re
import secrets as _secrets
import string
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import httpx
import orjson

from formats import xsoar as xsoar_fmt
from formats.template import TemplateError, compile_template
from formats.xsoar import XsoarOptions

from ..secrets import Secret, read_secret, register
from ..checks import http_url as _url, non_negative as _nonneg, positive as _pos  # noqa: E402
from .. import kinds
from ..dedup import DedupRecord, DedupStore, DedupStoreError, store_path as _store_path
from . import _claims
from . import _http
from ._http import HttpSink, Redactor, excerpt as _http_excerpt, retry_after  # noqa: F401 (re-exported)
from .base import PermanentError, RetryableError, SinkError

__all__ = ["read_config", "XsoarSink", "XsoarWebhookSink", "XsoarSettings", "Secret",
           "DedupStore", "DedupRecord", "classify", "auth_headers", "search_query"]

log = logging.getLogger("relay.sinks.xsoar")

STATUS_CLOSED = 2               # XSOAR IncidentStatus DONE
SEARCH_SIZE = 10                # explicit: XSOAR's default size is 0 (no results)
CONFLICT_RETRIES = 3
EXCERPT = _http.EXCERPT


# =========================================================================== secrets
# Secret and read_secret live in relay/secrets.py (shared with the pull sources).
_read_secret = read_secret


# =========================================================================== config
@dataclass(frozen=True)
class XsoarSettings:
    """What ``read_config`` stores in ``sink_config.options["xsoar"]``."""

    url: str
    kind: str = "xsoar"                      # "xsoar" | "xsoar_webhook"
    # REST
    api_key: Secret | None = None
    auth_id: str | None = None
    key_type: str = "standard"               # standard | advanced (XSOAR 8)
    api_prefix: str = ""
    mode: str = "create"                     # create | sync
    close_on_source_close: bool = False
    close_endpoint: str = "batchClose"       # batchClose | close
    close_reason: str = "Resolved"
    close_notes: str = "Closed at the source (relay)"
    dedup_field: str = "relaydedupkey"
    # webhook
    auth_header: str | None = None
    auth_value: Secret | None = None
    username: str | None = None
    password: Secret | None = None
    linger: float = 0.2
    # both
    batch_size: int = 50
    concurrency: int = 4
    timeout: float = 30.0
    connect_timeout: float = 10.0
    tls_verify: bool = True
    tls_ca: Path | None = None
    proxy: str | None = None
    dedup_store_size: int = 100_000

    @property
    def version(self) -> str:
        return "8" if self.auth_id else "6"




def _prefix(v: str):
    v = v.strip()
    if v in ("", "/"):
        return ""
    if not v.startswith("/") or " " in v or "?" in v:
        raise ValueError(f"{v!r} must be a path like /xsoar/public/v1 (or empty)")
    return v.rstrip("/")






def _field_key(v: str):
    if not re.fullmatch(r"[a-z0-9_]+", v):
        raise ValueError(f"{v!r} is not an XSOAR field machine key (lower case, no spaces, e.g. relaydedupkey)")


def read_config(table, sk, base_dir: Path) -> None:
    """Read the ``[sinks.<name>]`` keys of an ``xsoar`` / ``xsoar_webhook`` sink (see
    docs in the module docstring).  Stores ``options["xsoar"]`` (:class:`XsoarSettings`) and
    ``options["xsoar_options"]`` (:class:`formats.xsoar.XsoarOptions`, used by the renderer)."""
    kind = sk.type
    for literal in ("api_key", "password", "auth_value", "token"):
        if literal in table.data:
            raise table.err(literal, "secrets are never written in the config: use "
                                     f"{literal}_env (an environment variable) or {literal}_file")
    url = table.get("url", str, required=True, check=_url)
    common: dict[str, Any] = dict(
        url=url, kind=kind,
        batch_size=table.get("batch_size", int, 50, check=_pos),
        concurrency=table.get("concurrency", int, 4, check=_pos),
        timeout=table.get("timeout", float, 30.0, check=_pos),
        connect_timeout=table.get("connect_timeout", float, 10.0, check=_pos),
        tls_verify=table.get("tls_verify", bool, True),
        proxy=table.get("proxy", str, None, check=_url),
        dedup_store_size=table.get("dedup_store_size", int, 100_000, check=_pos),
    )
    ca = table.get("tls_ca", str, None)
    if ca is not None:
        p = Path(os.path.expandvars(ca)).expanduser()
        p = p if p.is_absolute() else base_dir / p
        if not p.is_file():
            raise table.err("tls_ca", f"file {str(p)!r} does not exist")
        from ..checks import pem_certificates
        try:
            pem_certificates(base_dir)(str(p))
        except ValueError as e:
            raise table.err("tls_ca", str(e)) from None
        common["tls_ca"] = p
    if kind == "xsoar":
        key = _read_secret(table, "api_key_env", "api_key_file", "XSOAR API key", base_dir, required=True)
        auth_id = table.get("auth_id", (str, int), None)
        if auth_id is not None:
            auth_id = str(auth_id).strip()
            if not auth_id:
                raise table.err("auth_id", "must not be empty (the XSOAR 8 API key ID)")
        key_type = table.get("key_type", str, "standard", choices=("standard", "advanced"))
        if key_type == "advanced" and auth_id is None:
            raise table.err("key_type", "advanced keys are XSOAR 8 keys: set auth_id (the key's ID) too")
        prefix = table.get("api_prefix", str, None, check=_prefix)
        if prefix is None:
            prefix = "/xsoar/public/v1" if auth_id else ""
        settings = XsoarSettings(
            **common, api_key=key, auth_id=auth_id, key_type=key_type, api_prefix=prefix,
            mode=table.get("mode", str, "create", choices=("create", "sync")),
            close_on_source_close=table.get("close_on_source_close", bool, False),
            close_endpoint=table.get("close_endpoint", str, "batchClose", choices=("batchClose", "close")),
            close_reason=table.get("close_reason", str, "Resolved"),
            close_notes=table.get("close_notes", str, "Closed at the source (relay)"),
            dedup_field=table.get("dedup_field", str, "relaydedupkey", check=_field_key),
        )
    else:
        header = table.get("auth_header", str, None)
        value = _read_secret(table, "auth_value_env", "auth_value_file", "webhook header value", base_dir,
                             required=header is not None)
        if value is not None and header is None:
            raise table.err("auth_header", "is required with auth_value_env/auth_value_file "
                                           "(the header name, e.g. Authorization)")
        if header is not None and not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", header):
            raise table.err("auth_header", f"{header!r} is not an HTTP header name")
        user = table.get("username", str, None)
        if user is not None and user.startswith("_header:"):
            raise table.err("username", "'_header:<Name>' is the XSOAR-side setting; here use "
                                        f"auth_header = {user[8:].strip()!r} and auth_value_env/auth_value_file")
        pw = _read_secret(table, "password_env", "password_file", "webhook password", base_dir,
                          required=user is not None)
        if pw is not None and user is None:
            raise table.err("username", "is required with password_env/password_file")
        if header is not None and user is not None:
            raise table.err("username", "use either auth_header or username/password, not both")
        settings = XsoarSettings(
            **common, auth_header=header, auth_value=value, username=user, password=pw,
            linger=table.get("linger", float, 0.2, check=_nonneg),
        )
        src = table.get("template", str, None)
        if src is not None:   # the webhook item from a sandboxed JSON template (formats/template.py)
            try:
                sk.options["template"] = compile_template(src, expect=dict)
            except TemplateError as e:
                raise table.err("template", f"template {e}") from None
    # the incident body (formats/xsoar.py)
    th = table.table("severity_thresholds")
    thresholds = tuple((th.get(band, (int, float), default, check=_nonneg), sev)
                       for band, default, sev in (("critical", 85, 4), ("high", 70, 3), ("medium", 40, 2)))
    th.finish()
    if not thresholds[0][0] >= thresholds[1][0] >= thresholds[2][0]:
        raise th.err(None, "must be critical >= high >= medium")
    cf = table.table("custom_fields")
    custom: dict[str, str] = {}
    for k in list(cf.data):
        try:
            _field_key(k)
        except ValueError as e:
            raise cf.err(k, str(e)) from None
        custom[k] = cf.get(k, str)
    cf.finish()
    opts = XsoarOptions(
        incident_type=table.get("incident_type", str, "Unclassified"),
        dedup_field=settings.dedup_field,
        thresholds=thresholds,
        instance=table.get("instance", str, "relay"),
        create_investigation=table.get("create_investigation", bool, True),
        custom_fields=custom,
    )
    sk.options["xsoar"] = settings
    sk.options["xsoar_options"] = opts
    sk.format = "json"
    sk.batch_size = settings.batch_size
    if ca is not None:
        sk.tls_ca = common["tls_ca"]
    sk.tls_verify = settings.tls_verify


def store_path(queue, sink_name: str) -> Path:
    """The XSOAR sinks' dedup store: ``<state_dir>/xsoar-dedup-<sink>.db`` (relay/dedup.py)."""
    return _store_path(queue, sink_name, "xsoar")


# =========================================================================== HTTP helpers
_ALNUM = string.ascii_letters + string.digits


def auth_headers(s: XsoarSettings, now: float | None = None) -> dict[str, str]:
    """Request headers for the REST API: XSOAR 6 (raw key), XSOAR 8 standard (key + key id)
    or XSOAR 8 advanced (sha256(key + nonce + timestamp), nonce, timestamp, key id)."""
    h = {"Accept": "application/json", "Content-Type": "application/json"}
    key = s.api_key.reveal() if s.api_key is not None else ""
    if s.auth_id is None:
        h["Authorization"] = key
        return h
    h["x-xdr-auth-id"] = s.auth_id
    if s.key_type == "advanced":
        nonce = "".join(_secrets.choice(_ALNUM) for _ in range(64))
        ts = str(int(time.time() if now is None else now) * 1000)
        h["x-xdr-timestamp"] = ts
        h["x-xdr-nonce"] = nonce
        h["Authorization"] = hashlib.sha256(f"{key}{nonce}{ts}".encode()).hexdigest()
    else:
        h["Authorization"] = key
    return h


def webhook_headers(s: XsoarSettings) -> dict[str, str]:
    h = {"Accept": "application/json", "Content-Type": "application/json"}
    if s.auth_header and s.auth_value is not None:
        h[s.auth_header] = s.auth_value.reveal()
    elif s.username is not None and s.password is not None:
        tok = base64.b64encode(f"{s.username}:{s.password.reveal()}".encode()).decode()
        register(tok)       # an echoed Authorization header is redacted too
        h["Authorization"] = f"Basic {tok}"
    return h


def search_query(field_name: str, key: str) -> str:
    """``field:"value"`` with backslash and quote escaped."""
    return f'{field_name}:"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _excerpt(resp: httpx.Response) -> str:
    return _http_excerpt(resp)


def classify(resp: httpx.Response, what: str, version: str = "6") -> SinkError | None:
    """HTTP answer -> None (2xx) or the error to raise (relay/sinks/_http.py, with XSOAR's hints)."""
    if what == "webhook":
        hint = "check the webhook credentials (auth_header + value, or username/password)"
    elif version == "6":
        hint = ("the API key is wrong, revoked or lacks the permission (an XSOAR 8 server also needs "
                "auth_id, the key's ID)")
    else:
        hint = "check the API key, its ID (auth_id) and key_type (standard/advanced)"
    err = _http.classify(resp, what, service="XSOAR", auth_hint=hint)
    if err is not None and resp.status_code in range(300, 400):
        err.args = (f"XSOAR answered HTTP {resp.status_code} (redirect to {resp.headers.get('Location', '?')}) to "
                    f"{what}: check url/api_prefix",)
    return err


class _Conflict(Exception):
    """An update was refused because of a stale version."""


def _is_conflict(resp: httpx.Response) -> bool:
    if resp.status_code not in (400, 409, 412):
        return False
    return "version" in resp.text.lower()


# =========================================================================== common base
class _XsoarBase(HttpSink):
    type = "xsoar"
    service = "XSOAR"
    requests_metric = "relay_xsoar_requests_total"
    latency_metric = "relay_xsoar_request_seconds"

    def __init__(self, cfg, queue, *, transport: httpx.AsyncBaseTransport | None = None, **kw) -> None:
        """``transport``: an httpx transport to send through instead of the network (tests:
        ``httpx.MockTransport``)."""
        s: XsoarSettings = cfg.options.get("xsoar")
        if s is None:
            raise ValueError(f"sink {cfg.name}: no xsoar settings (the config reader did not run)")
        secrets = [x.reveal() for x in (s.api_key, s.auth_value, s.password) if x is not None]
        super().__init__(cfg, queue, transport=transport, http=s, redact=Redactor(secrets), **kw)
        self.settings = s
        self.batch_size = max(1, s.batch_size)
        self.store = DedupStore(store_path(queue, self.name), s.dedup_store_size)
        reg = self.registry
        reg.gauge("relay_xsoar_dedup_entries", lambda: len(self.store), sink=self.name)

    async def run(self, stop: asyncio.Event) -> None:
        if self.store.closed:   # run again after a previous run closed it
            await asyncio.to_thread(self.store.reopen)
        await super().run(stop)

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            await asyncio.to_thread(self.store.close)

    def count(self, action: str, n: int = 1) -> None:
        self.registry.counter("relay_xsoar_incidents_total", sink=self.name, action=action).value += n

    async def _post(self, url: str, op: str, body, headers: dict[str, str]) -> httpx.Response:
        """POST JSON (relay/sinks/_http.py maps transport failures; never with secrets)."""
        content = body if isinstance(body, (bytes, bytearray)) else orjson.dumps(body)
        return await self.request("POST", url, op, content=content, headers=headers)

    @staticmethod
    def _json(resp: httpx.Response, what: str):
        try:
            return orjson.loads(resp.content) if resp.content else None
        except orjson.JSONDecodeError:
            raise RetryableError(f"XSOAR answered {what} with HTTP {resp.status_code} but not JSON: "
                                 f"{_excerpt(resp)}", reason="bad_answer") from None

    async def _run_groups(self, groups: list[list], handler) -> list:
        return await self.run_groups(groups, handler, self.settings.concurrency)

    _groups = staticmethod(HttpSink.groups)


# =========================================================================== REST sink
class XsoarSink(_XsoarBase):
    """``POST /incident`` with search-before-create and a persistent dedup store."""

    type = "xsoar"

    def __init__(self, cfg, queue, **kw) -> None:
        super().__init__(cfg, queue, **kw)
        s = self.settings
        self.base = s.url + s.api_prefix
        self._field_warned = False
        log.info("sink %s: XSOAR %s REST API at %s (mode %s, close_on_source_close=%s, dedup field %s)",
                 self.name, s.version, self.base, s.mode, s.close_on_source_close, s.dedup_field)

    # ------------------------------------------------------------------ requests
    async def _call(self, op: str, path: str, body) -> Any:
        resp = await self._post(self.base + path, op, body, auth_headers(self.settings))
        err = classify(resp, f"{op} (POST {path})", self.settings.version)
        if err is not None:
            raise err
        return self._json(resp, f"{op} (POST {path})")

    async def search_key(self, key: str) -> dict | None:
        """The oldest incident carrying ``key`` in the dedup field, or None."""
        s = self.settings
        body = {"filter": {"query": search_query(s.dedup_field, key), "page": 0, "size": SEARCH_SIZE,
                           "sort": [{"field": "created", "asc": True}]}}
        res = await self._call("search", "/incidents/search", body)
        data = (res or {}).get("data") if isinstance(res, dict) else None
        if data is None:
            data = []
        if not isinstance(data, list):
            raise RetryableError(f"XSOAR search answered an unexpected shape: {str(res)[:EXCERPT]}",
                                 reason="bad_answer")
        hits = [inc for inc in data if isinstance(inc, dict) and _custom(inc).get(s.dedup_field) == key]
        if not hits:
            return None
        if len(hits) > 1:
            log.warning("sink %s: %d XSOAR incidents carry %s=%r (ids %s); using the oldest", self.name,
                        len(hits), s.dedup_field, key, ", ".join(str(h.get("id")) for h in hits))
        return min(hits, key=lambda h: (str(h.get("created") or ""), _id_order(h.get("id"))))

    async def get_by_id(self, inc_id: str) -> dict | None:
        body = {"filter": {"id": [inc_id], "page": 0, "size": 1}}
        res = await self._call("search", "/incidents/search", body)
        data = (res or {}).get("data") if isinstance(res, dict) else None
        for inc in data or ():
            if isinstance(inc, dict) and str(inc.get("id")) == str(inc_id):
                return inc
        return None

    async def create(self, body: dict) -> dict:
        res = await self._call("create", "/incident", body)
        if not isinstance(res, dict) or res.get("id") in (None, ""):
            # XSOAR answers 200 without an incident when e.g. a pre-process rule dropped it
            log.warning("sink %s: XSOAR accepted the incident but returned no id (dropped by a pre-process "
                        "rule?): %s", self.name, str(res)[:EXCERPT])
            return {}
        if not self._field_warned and self.settings.dedup_field not in _custom(res):
            self._field_warned = True
            log.warning("sink %s: XSOAR did not keep the custom field %r on incident %s: create that incident "
                        "field (Short text) and add it to the incident type, otherwise a create whose answer "
                        "was lost cannot be found again and may be duplicated", self.name,
                        self.settings.dedup_field, res.get("id"))
        return res

    async def update(self, rec: DedupRecord, body: dict) -> dict:
        """Update by id with the current version; on a stale version re-read and retry."""
        upd = {k: v for k, v in body.items() if k != "createInvestigation"}
        version = rec.version
        for attempt in range(CONFLICT_RETRIES + 1):
            if version is None:
                cur = await self.get_by_id(rec.incident_id)
                if cur is None:
                    raise PermanentError(f"XSOAR incident {rec.incident_id} ({rec.key}) no longer exists",
                                         reason="rejected")
                version = cur.get("version")
            upd["id"] = rec.incident_id
            upd["version"] = version
            path = "/incident"
            resp = await self._post(self.base + path, "update", upd, auth_headers(self.settings))
            if _is_conflict(resp):
                self.count("version_conflicts")
                log.info("sink %s: version conflict updating incident %s (version %s); re-reading it",
                         self.name, rec.incident_id, version)
                version = None
                continue
            err = classify(resp, f"update (POST {path})", self.settings.version)
            if err is not None:
                raise err
            res = self._json(resp, "update")
            return res if isinstance(res, dict) else {}
        raise RetryableError(f"incident {rec.incident_id}: version conflict {CONFLICT_RETRIES + 1} times in a row",
                             reason="conflict")

    async def close_incident(self, rec: DedupRecord) -> None:
        s = self.settings
        if s.close_endpoint == "close":
            body = {"id": rec.incident_id, "CustomFields": {}, "closeReason": s.close_reason,
                    "closeNotes": s.close_notes}
            await self._call("close", "/incident/close", body)
            return
        body = {"ids": [rec.incident_id], "all": False, "closeReason": s.close_reason,
                "closeNotes": s.close_notes,
                "filter": {"page": 0, "size": 50, "sort": [{"field": "id", "asc": False}]}}
        res = await self._call("close", "/incident/batchClose", body)
        if isinstance(res, dict) and res.get("notUpdated"):
            cur = await self.get_by_id(rec.incident_id)
            if cur is None or cur.get("status") != STATUS_CLOSED:
                raise PermanentError(f"XSOAR did not close incident {rec.incident_id} (notUpdated="
                                     f"{res.get('notUpdated')})", reason="rejected")

    # ------------------------------------------------------------------ per row
    def _key(self, item) -> str | None:
        k = item.meta.get("dedup_key")
        return str(k) if k else None

    async def _handle(self, item) -> None:
        s = self.settings
        try:
            body = orjson.loads(item.payload)
            if not isinstance(body, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            raise PermanentError(f"queued payload is not an incident body: {e}", reason="bad_payload") from None
        meta = item.meta
        key = self._key(item) or (_custom(body).get(s.dedup_field) or None)
        closing = s.close_on_source_close and (meta.get("event") == "closed" or meta.get("status") == "closed")
        digest = hashlib.blake2b(item.payload, digest_size=16).hexdigest()

        rec = await asyncio.to_thread(self.store.get, key) if key else None
        claim = None
        if rec is not None:
            self.count("dedup_hit")
        elif key:
            claim = await _claims.guard(self, key)      # [relay.claims]: one relay per key creates
            if claim is not None and not claim.owner:
                rec = DedupRecord(key, claim.incident, None, False, None)
                self.count("claimed_elsewhere")
                await asyncio.to_thread(self.store.put, rec)
            else:
                found = await self.search_key(key)
                if found is not None:
                    rec = DedupRecord(key, str(found.get("id")), _int(found.get("version")),
                                      found.get("status") == STATUS_CLOSED, None)
                    self.count("found")
                    log.info("sink %s: %s already is XSOAR incident %s (found by search)", self.name, key,
                             rec.incident_id)
                    await asyncio.to_thread(self.store.put, rec)
                    await _claims.won(self, claim, rec.incident_id)
        if rec is None or rec.incident_id is None:
            if not key:
                log.warning("sink %s: row %s has no dedup key: creating without duplicate protection",
                            self.name, item.id)
            sq = meta.get("summary")
            if isinstance(sq, dict) and sq.get("key") and not _custom(body).get("relaytriagesummary"):
                await self._add_summary(body, str(sq["key"]), float(sq.get("wait") or 0))
            try:
                inc = await self.create(body)
            except Exception as e:
                await _claims.failed(self, claim, e)
                raise
            self.count("created")
            if not inc:
                return
            rec = DedupRecord(key or "", str(inc["id"]), _int(inc.get("version")),
                              inc.get("status") == STATUS_CLOSED, digest)
            if key:
                await asyncio.to_thread(self.store.put, rec)
                await _claims.won(self, claim, rec.incident_id)
        elif s.mode == "sync":
            if rec.digest == digest:
                self.count("unchanged")
            else:
                res = await self.update(rec, body)
                rec.version = _int(res.get("version")) if res.get("version") is not None else None
                rec.digest = digest
                await asyncio.to_thread(self.store.put, rec)
                self.count("updated")
        elif not closing:
            self.count("skipped")
        if closing and not rec.closed and rec.incident_id:
            await self.close_incident(rec)
            rec.closed = True
            rec.version = None   # closing bumped it; re-read before any later update
            if key:
                await asyncio.to_thread(self.store.put, rec)
            self.count("closed")

    async def _add_summary(self, body: dict, key: str, wait: float) -> None:
        """A one-shot incident (``[summary] wait``): wait, bounded, for the narrative summary the
        stage asked for, and create the incident with it (``relaytriagesummary``); without it when
        the answer fails or is late (counted: ``summary_added`` / ``summary_missed``)."""
        from ..enrich.stage import summary_for
        text = await summary_for(key, wait)
        if text:
            body.setdefault("CustomFields", {})["relaytriagesummary"] = text
            self.count("summary_added")
        else:
            self.count("summary_missed")

    async def send(self, items: Sequence):
        groups = self._groups(items, self._key)
        return await self._run_groups(groups, self._handle)


# =========================================================================== webhook sink
class XsoarWebhookSink(_XsoarBase):
    """Generic Webhook: ``POST <url>`` with one object or an array; local dedup store only."""

    type = "xsoar_webhook"

    def __init__(self, cfg, queue, **kw) -> None:
        super().__init__(cfg, queue, **kw)
        s = self.settings
        self.linger = s.linger
        auth = "header " + s.auth_header if s.auth_header else ("basic" if s.username else "none")
        log.info("sink %s: XSOAR Generic Webhook at %s (auth %s, batch %d, linger %g s)", self.name, s.url,
                 auth, self.batch_size, self.linger)

    @staticmethod
    def _key(item) -> str | None:
        k = item.meta.get("dedup_key")
        if k:
            return str(k)
        try:
            raw = orjson.loads(item.payload).get("rawJson") or {}
            k = (raw.get("relay") or {}).get("dedup_key")
        except (ValueError, AttributeError):
            return None
        return str(k) if k else None

    async def _linger(self, items: list) -> None:
        """Wait up to ``linger`` s (from the oldest row's arrival) for a fuller batch; the extra
        rows are leased here and appended to ``items`` (the base loop settles that same list)."""
        if self.linger <= 0 or len(items) >= self.batch_size:
            return
        deadline = time.monotonic() + max(0.0, min(self.linger, self.linger - (time.time() - items[0].enqueued_at)))
        while len(items) < self.batch_size:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await asyncio.sleep(min(left, 0.05))
            more = await asyncio.to_thread(self.queue.lease, self.batch_size - len(items))
            items.extend(more)

    async def send(self, items: list):
        await self._linger(items)
        s = self.settings
        to_send: list = []
        bodies: list[bytes] = []
        seen: set[str] = set()
        failed: list = []
        for it in items:
            key = self._key(it)
            try:
                known = bool(key) and (key in seen or await asyncio.to_thread(self.store.get, key) is not None)
            except DedupStoreError as e:
                raise self._store_failed(e) from None      # the whole batch stays queued
            if known:
                self.count("skipped")
                continue
            try:
                obj = orjson.loads(it.payload)
                if not isinstance(obj, dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:
                failed.append((it, PermanentError(f"queued payload is not a webhook item: {e}",
                                                  reason="bad_payload")))
                continue
            if key:
                seen.add(key)
            to_send.append((it, key))
            bodies.append(bytes(it.payload))
        if not to_send:
            return failed
        if s.batch_size == 1 and len(bodies) == 1:
            content = bodies[0]
        else:
            content = b"[" + b",".join(bodies) + b"]"
        resp = await self._post(s.url, "webhook", content, webhook_headers(s))
        err = classify(resp, "webhook", "webhook")
        if err is not None:
            return failed + [(it, err) for it, _ in to_send]
        res = None
        try:
            res = orjson.loads(resp.content) if resp.content else None
        except orjson.JSONDecodeError:
            pass
        ids: list = []
        if isinstance(res, list) and len(res) == len(to_send):
            ids = [str(r.get("id")) if isinstance(r, dict) and r.get("id") is not None else None for r in res]
        recs = [DedupRecord(key, ids[i] if ids else None) for i, (_, key) in enumerate(to_send) if key]
        if recs:
            try:
                await asyncio.to_thread(lambda: [self.store.put(r) for r in recs])
            except DedupStoreError as e:
                self._store_not_recorded(e, len(recs))      # delivered: acked, not sent twice now
        self.count("created", len(to_send))
        return failed


# =========================================================================== helpers
def _custom(inc: dict) -> dict:
    cf = inc.get("CustomFields")
    if not isinstance(cf, dict):
        cf = inc.get("customFields")
    return cf if isinstance(cf, dict) else {}


def _int(v) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _id_order(v):
    s = str(v)
    return (0, int(s)) if s.isdigit() else (1, s)


# =========================================================================== kinds
def _renderer(fn):
    """The queue payload: the incident body (formats/xsoar.py) as JSON bytes."""
    def make(sk):
        tpl = sk.options.get("template")
        if tpl is not None:           # xsoar_webhook with a template: the item is the template's object
            return tpl.render
        opts = sk.options.get("xsoar_options") or XsoarOptions()

        def render(ev, routes):
            return orjson.dumps(fn(ev, opts, routes))
        return render
    return make


def _preview(fn):
    return lambda: (lambda ev, o=XsoarOptions(): fn(ev, o))


_KEYS = ("url", "concurrency", "timeout", "connect_timeout", "tls_verify", "tls_ca", "proxy",
         "dedup_store_size", "severity_thresholds", "custom_fields", "incident_type", "instance",
         "create_investigation")
#: what the delivery needs from each queue row: the dedup key (idempotent create), and the
#: vendor event and status (close_on_source_close)
_META = ("dedup_key", "event", "status")

XSOAR = kinds.register_sink(kinds.SinkKind(
    type="xsoar", read_config=read_config, factory=XsoarSink, renderer=_renderer(xsoar_fmt.incident),
    keys=_KEYS + ("api_key_env", "api_key_file", "auth_id", "key_type", "api_prefix", "mode", "close_on_source_close",
                  "close_endpoint", "close_reason", "close_notes", "dedup_field"),
    meta=_META, structured=True, incidents=True, batch_size=50, preview=_preview(xsoar_fmt.incident),
    doc="Cortex XSOAR incidents over the REST API (search before create: one incident per dedup key)"))
XSOAR_WEBHOOK = kinds.register_sink(kinds.SinkKind(
    type="xsoar_webhook", read_config=read_config, factory=XsoarWebhookSink,
    renderer=_renderer(xsoar_fmt.webhook_item),
    keys=_KEYS + ("auth_header", "auth_value_env", "auth_value_file", "username", "password_env", "password_file",
                  "linger", "template"),
    meta=_META, structured=True, incidents=True, batch_size=50, preview=_preview(xsoar_fmt.webhook_item),
    doc="Cortex XSOAR Generic Webhook (one object, or an array of items per request)"))

"""RhythmX write-back (``type = "rhythmx_api"`` sink): a ``closure`` event (the ``xsoar_mirror``
source) becomes ``PATCH <url>/api/incidents/{id}/status`` ``{"status": "CLOSED", "notes": ...}``
(seed 004; apis-wave2.md section 7).

Auth: a JWT (``POST /api/login``; the API key is read-only and cannot PATCH), renewed before it
expires; an answer 401 logs in again ONCE and retries, a second 401 or a refused login blocks
the sink (every write stays queued, ``relay_sink_blocked=1``, an ALERT line).

The queued row (formats/writeback.py, rendered once by the pipeline) is the write:
``{"op": "status", "id", "status", "notes", "key"}``; ``status`` is ``FALSE_POSITIVE`` for the
XSOAR close reasons in ``false_positive_reasons``, else ``CLOSED``.  A write is idempotent:

1. its ``key`` (origin key + XSOAR incident + close time) in the sink's dedup store
   (``<state_dir>/rhythmx-dedup-<sink>.db``, relay/dedup.py): a write done before is skipped;
2. ``check_status`` (default on): ``GET /api/incidents/{id}`` first; an incident already
   ``CLOSED``/``FALSE_POSITIVE`` in RhythmX is not PATCHed again (``already_closed``): that is
   also the loop guard for a close that started in RhythmX;
3. the PATCH, then the key is stored before the row is acked.

A PATCH whose answer was lost is retried, finds the incident closed and stops there, so the
incident is PATCHed once.  Failures (relay/sinks/_http.py): 429/5xx/timeouts retried with
backoff, 404 (no such incident) and other 4xx dead-lettered with the answer, connect errors
pause the sink.  Counted in ``relay_writeback_total{sink, action}`` (``patched``,
``already_closed``, ``duplicate``) and ``relay_writeback_requests_total{sink, op, status}``.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence
from urllib.parse import quote

import orjson

from formats.writeback import RhythmxOptions, rhythmx_status

from .. import kinds
from ..checks import http_url
from ..dedup import DedupRecord, DedupStore, store_path
from ..sources.rhythmx_api import (CLOSED_STATUSES, LOGIN, JwtToken, RhythmxAuth, login_answer,
                                   read_rhythmx_auth)
from ._writeback import AuditedWrites, audit_path, configured_path
from ._http import HTTP_KEYS, HttpOptions, HttpSink, Redactor, classify, excerpt, read_http
from .base import AuthError, PermanentError, RetryableError

__all__ = ["RhythmxSinkSettings", "RhythmxSink", "read_config"]

log = logging.getLogger("relay.sinks.rhythmx")


@dataclass(frozen=True)
class RhythmxSinkSettings:
    url: str
    auth: RhythmxAuth
    http: HttpOptions
    opts: RhythmxOptions = RhythmxOptions()
    check_status: bool = True
    dedup_store_size: int = 100_000
    audit_file: Path | None = None       # None: <state_dir>/audit/writeback-<sink>.jsonl


def read_config(table, sk, base_dir: Path) -> None:
    url = table.get("url", str, required=True, check=http_url).rstrip("/")
    if table.get("auth", str, "jwt") != "jwt":
        raise table.err("auth", "the write-back needs auth = \"jwt\": the RhythmX API key is read-only "
                                "(it cannot PATCH an incident's status)")
    auth = read_rhythmx_auth(table, base_dir, modes=("jwt",), default="jwt")
    fp = table.get("false_positive_reasons", list, ["False Positive"])
    if not all(isinstance(x, str) and x.strip() for x in fp):
        raise table.err("false_positive_reasons", "must be a list of XSOAR close reasons (strings)")
    sk.options["rhythmx"] = RhythmxSinkSettings(
        url=url, auth=auth, http=read_http(table, base_dir, concurrency=4),
        opts=RhythmxOptions(false_positive_reasons=tuple(x.strip() for x in fp),
                            note_prefix=table.get("note_prefix", str, "Closed in XSOAR")),
        check_status=table.get("check_status", bool, True),
        dedup_store_size=table.get("dedup_store_size", int, 100_000,
                                   check=lambda v: None if v > 0 else
                                   (_ for _ in ()).throw(ValueError(f"must be greater than 0, not {v}"))),
        audit_file=configured_path(table.get("audit_file", str, None), base_dir),
    )
    sk.format = "json"


def renderer(sk):
    opts = sk.options["rhythmx"].opts if "rhythmx" in sk.options else RhythmxOptions()

    def render(ev, routes):
        return orjson.dumps(rhythmx_status(ev.fields or {}, opts))
    return render


class RhythmxSink(AuditedWrites, HttpSink):
    audit_target = "RhythmX"
    service = "RhythmX"
    requests_metric = "relay_writeback_requests_total"

    def __init__(self, cfg, queue, *, transport=None, **kw) -> None:
        s: RhythmxSinkSettings | None = cfg.options.get("rhythmx")
        if s is None:
            raise ValueError(f"sink {cfg.name}: no rhythmx settings (the config reader did not run)")
        super().__init__(cfg, queue, transport=transport, http=s.http, redact=Redactor(s.auth.secrets()), **kw)
        self.settings = s
        self.jwt = JwtToken(s.auth.renew_before)
        self.store = DedupStore(store_path(queue, self.name, "rhythmx"), s.dedup_store_size)
        self.audit_path = audit_path(queue, self.name, s.audit_file)
        self.registry.gauge("relay_writeback_dedup_entries", lambda: len(self.store), sink=self.name)
        log.info("sink %s: RhythmX write-back at %s (check_status=%s)", self.name, s.url, s.check_status)

    async def run(self, stop: asyncio.Event) -> None:
        if self.store.closed:
            await asyncio.to_thread(self.store.reopen)
        self.audit_open()
        await super().run(stop)

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            await asyncio.to_thread(self.store.close)
            await asyncio.to_thread(self.audit_close)

    def count(self, action: str) -> None:
        self.registry.counter("relay_writeback_total", sink=self.name, action=action).value += 1

    # ------------------------------------------------------------------ requests
    async def _login(self) -> tuple[str, float | None]:
        a = self.settings.auth
        resp = await self.request("POST", self.settings.url + LOGIN, "login",
                                  content=orjson.dumps({"username": a.username, "password": a.password.reveal()}),
                                  headers={"Content-Type": "application/json", "Accept": "application/json"})
        if resp.status_code in (400, 401, 403):
            raise AuthError(f"RhythmX refused the login of {a.username!r} (HTTP {resp.status_code}): "
                            f"{excerpt(resp, self.redact)}", reason="auth")
        err = classify(resp, f"login (POST {LOGIN})", service="RhythmX", redact=self.redact)
        if err is not None:
            raise err
        try:
            got = login_answer(resp.json())
        except ValueError:
            got = None
        if got is None:
            raise RetryableError(f"RhythmX answered the login without a token: {excerpt(resp, self.redact)}",
                                 reason="bad_answer")
        self.redact.add(got[0])
        return got

    async def call(self, method: str, path: str, op: str, body: dict | None = None):
        relogged = False
        while True:
            tok = await self.jwt.get(self._login)
            headers = {"Authorization": f"Bearer {tok}", "Accept": "application/json"}
            if body is not None:
                headers["Content-Type"] = "application/json"
            resp = await self.request(method, self.settings.url + path, op, headers=headers,
                                      content=orjson.dumps(body) if body is not None else None)
            if resp.status_code == 401 and not relogged:
                log.info("sink %s: RhythmX answered 401 to %s; logging in again and retrying once", self.name, op)
                self.jwt.invalidate()
                relogged = True
                continue
            return resp

    # ------------------------------------------------------------------ per row
    @staticmethod
    def _key(item) -> str | None:
        k = item.meta.get("dedup_key")
        return str(k) if k else None

    async def _handle(self, item) -> None:
        try:
            w = orjson.loads(item.payload)
            if not isinstance(w, dict) or w.get("op") != "status" or not w.get("id") or not w.get("key"):
                raise ValueError("not a RhythmX status write")
        except ValueError as e:
            raise PermanentError(f"queued payload is not a RhythmX write-back: {e}", reason="bad_payload") from None
        key, inc_id = str(w["key"]), str(w["id"])
        if await asyncio.to_thread(self.store.get, key) is not None:
            self.count("duplicate")
            return
        path = f"/api/incidents/{quote(inc_id, safe='')}"
        if self.settings.check_status:
            resp = await self.call("GET", path, "get")
            if resp.status_code == 404:
                raise PermanentError(f"RhythmX has no incident {inc_id} (GET {path} answered 404)", reason="rejected")
            err = classify(resp, f"get (GET {path})", service="RhythmX", redact=self.redact)
            if err is not None:
                raise err
            try:
                cur = resp.json()
            except ValueError:
                cur = None
            status = str((cur or {}).get("status") or "").upper() if isinstance(cur, dict) else ""
            if status in CLOSED_STATUSES:
                await asyncio.to_thread(self.store.put, DedupRecord(key, inc_id, closed=True))
                self.count("already_closed")
                self.log_write(w, "none", f"the incident is {status} in RhythmX already (loop guard)")
                log.info("sink %s: RhythmX incident %s is %s already: nothing to write", self.name, inc_id, status)
                return
        resp = await self.call("PATCH", path + "/status", "patch", {"status": w["status"], "notes": w.get("notes")})
        if resp.status_code == 404:
            raise PermanentError(f"RhythmX has no incident {inc_id} (PATCH answered 404)", reason="rejected")
        err = classify(resp, f"patch (PATCH {path}/status)", service="RhythmX", redact=self.redact)
        if err is not None:
            raise err
        await asyncio.to_thread(self.store.put, DedupRecord(key, inc_id, closed=True))
        self.count("patched")
        self.log_write(w, "patched", "closed in XSOAR")
        log.info("sink %s: RhythmX incident %s set to %s", self.name, inc_id, w["status"])

    async def send(self, items: Sequence):
        return await self.run_groups(self.groups(items, self._key), self._handle)


KIND = kinds.register_sink(kinds.SinkKind(
    type="rhythmx_api", read_config=read_config, factory=RhythmxSink, renderer=renderer,
    keys=("url", "auth", "username", "username_env", "password_env", "password_file", "renew_before",
          "false_positive_reasons", "note_prefix", "check_status", "dedup_store_size", "audit_file") + HTTP_KEYS,
    meta=("dedup_key", "event", "status"), structured=True, batch_size=20,
    doc="RhythmX write-back: a closure event PATCHes /api/incidents/{id}/status (CLOSED or FALSE_POSITIVE, "
        "with notes), once"))

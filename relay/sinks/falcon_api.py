"""Falcon write-back (``type = "falcon_api"`` sink): a ``closure`` event of the ``xsoar_mirror``
source for a Falcon alert (``origin == "falcon"``) closes the alert with a comment (apis.md 2):

    PATCH /alerts/entities/alerts/v3
    {"composite_ids": ["<composite id>"],
     "action_parameters": [{"name": "update_status", "value": "closed"},
                           {"name": "append_comment", "value": "Closed in XSOAR (incident 12) by ..."}]}

An ``assignment`` event (the XSOAR owner changed) assigns the alert (``assign_to_name``, the
user mapped by the ``owners`` table), unless it is assigned to that user already or closed
(nothing written, an audit line says why).

Auth: OAuth2 client credentials (``POST <url>/oauth2/token``, relay/sinks/_http.py ``Auth``:
the token is cached, renewed before it expires, and fetched again once when the API answers
401); refused credentials block the sink, the writes stay queued.

Idempotent: the write's key (alert key, XSOAR incident, close time) in the sink's dedup store
(``<state_dir>/falcon_api-dedup-<sink>.db``); ``check_status`` (default on) reads the alert first
(``POST /alerts/entities/alerts/v2``) and leaves an alert already ``closed`` alone: a retried
write whose answer was lost, or a close that started in Falcon, writes nothing (and the
comment, sent with the status in one request, is not added twice).  An alert Falcon does not
know (404 / only ``errors``) is dead-lettered.  Counted in ``relay_writeback_total{sink, action}``
(``closed``, ``already_closed``, ``duplicate``, ``assigned``, ``assign_present``, ``assign_skipped``).
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import orjson

from formats.writeback import FalconOptions, falcon_assign, falcon_close

from .. import kinds
from ..checks import http_url
from ..dedup import DedupRecord, DedupStore, store_path
from ..secrets import read_secret
from ._writeback import AuditedWrites, audit_path, configured_path, read_owners
from ._http import HTTP_KEYS, Auth, AuthConfig, HttpOptions, HttpSink, classify, read_http
from .base import PermanentError, RetryableError

__all__ = ["FalconSinkSettings", "FalconWritebackSink", "read_config"]

log = logging.getLogger("relay.sinks.falcon_api")
UPDATE = "/alerts/entities/alerts/v3"
ENTITIES = "/alerts/entities/alerts/v2"


@dataclass(frozen=True)
class FalconSinkSettings:
    url: str
    auth: AuthConfig
    http: HttpOptions
    opts: FalconOptions = FalconOptions()
    check_status: bool = True
    dedup_store_size: int = 100_000
    audit_file: Path | None = None       # None: <state_dir>/audit/writeback-<sink>.jsonl


def read_config(table, sk, base_dir: Path) -> None:
    url = table.get("url", str, required=True, check=http_url).rstrip("/")
    cid = table.get("client_id", str, None, required=True)
    secret = read_secret(table, "client_secret_env", "client_secret_file", "Falcon API client secret", base_dir,
                         literal="client_secret")
    sk.options["falcon_api"] = FalconSinkSettings(
        url=url, auth=AuthConfig("oauth2", token_url=url + "/oauth2/token", client_id=cid, secret=secret),
        http=read_http(table, base_dir, concurrency=4),
        opts=FalconOptions(note_prefix=table.get("note_prefix", str, "Closed in XSOAR"), owners=read_owners(table)),
        check_status=table.get("check_status", bool, True),
        dedup_store_size=table.get("dedup_store_size", int, 100_000,
                                   check=lambda v: None if v > 0 else
                                   (_ for _ in ()).throw(ValueError(f"must be greater than 0, not {v}"))),
        audit_file=configured_path(table.get("audit_file", str, None), base_dir),
    )
    sk.format = "json"


def renderer(sk):
    opts = sk.options["falcon_api"].opts if "falcon_api" in sk.options else FalconOptions()

    def render(ev, routes):
        f = ev.fields or {}
        if f.get("kind") == "assignment":
            return orjson.dumps(falcon_assign(f, opts))
        return orjson.dumps(falcon_close(f, opts))
    return render


class FalconWritebackSink(AuditedWrites, HttpSink):
    audit_target = "Falcon"
    service = "Falcon"
    requests_metric = "relay_writeback_requests_total"

    def __init__(self, cfg, queue, *, transport=None, **kw) -> None:
        s: FalconSinkSettings | None = cfg.options.get("falcon_api")
        if s is None:
            raise ValueError(f"sink {cfg.name}: no Falcon settings (the config reader did not run)")
        self.auth = Auth(s.auth)
        super().__init__(cfg, queue, transport=transport, http=s.http, redact=self.auth.redact, **kw)
        self.settings = s
        self.store = DedupStore(store_path(queue, self.name, "falcon_api"), s.dedup_store_size)
        self.audit_path = audit_path(queue, self.name, s.audit_file)
        self.registry.gauge("relay_writeback_dedup_entries", lambda: len(self.store), sink=self.name)
        log.info("sink %s: Falcon write-back at %s (%s)", self.name, s.url, s.auth.describe())

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

    async def call(self, method: str, path: str, op: str, body: dict):
        """One request with the bearer token; a 401 fetches a new token once and retries."""
        for attempt in (0, 1):
            h = {**await self.auth.headers(self), "Content-Type": "application/json", "Accept": "application/json"}
            resp = await self.request(method, self.settings.url + path, op, content=orjson.dumps(body), headers=h)
            if resp.status_code == 401 and attempt == 0:
                log.info("sink %s: Falcon answered 401 to %s; fetching a new token and retrying once", self.name, op)
                self.auth.invalidate()
                continue
            return resp
        return resp  # pragma: no cover

    @staticmethod
    def _resources(resp) -> tuple[list, list]:
        try:
            b = resp.json()
        except ValueError:
            raise RetryableError(f"Falcon answered HTTP {resp.status_code} but not JSON", reason="bad_answer") from None
        if not isinstance(b, dict):
            return [], []
        return list(b.get("resources") or []), list(b.get("errors") or [])

    async def alert_status(self, cid: str) -> str | None:
        a = await self.alert(cid)
        return None if a is None else str(a.get("status") or "")

    async def alert(self, cid: str) -> dict | None:
        resp = await self.call("POST", ENTITIES, "get", {"composite_ids": [cid]})
        err = classify(resp, f"get (POST {ENTITIES})", service="Falcon", redact=self.redact,
                       auth_hint="check client_id/secret and the Alerts read+write scope")
        if err is not None:
            raise err
        res, _ = self._resources(resp)
        for a in res:
            if isinstance(a, dict) and a.get("composite_id") == cid:
                return a
        return None

    @staticmethod
    def _key(item) -> str | None:
        k = item.meta.get("dedup_key")
        return str(k) if k else None

    async def _handle(self, item) -> None:
        try:
            w = orjson.loads(item.payload)
            if not isinstance(w, dict) or w.get("op") not in ("close", "assign") or not w.get("id") \
                    or not w.get("key") \
                    or not isinstance(w.get("body"), dict):
                raise ValueError("not a Falcon close or assign")
        except ValueError as e:
            raise PermanentError(f"queued payload is not a Falcon write-back: {e}", reason="bad_payload") from None
        key, cid = str(w["key"]), str(w["id"])
        if await asyncio.to_thread(self.store.get, key) is not None:
            self.count("duplicate")
            return
        if w["op"] == "assign":
            return await self._assignment(w, key, cid)
        if self.settings.check_status:
            st = await self.alert_status(cid)
            if st is None:
                raise PermanentError(f"Falcon has no alert {cid}", reason="rejected")
            if st == "closed":
                await asyncio.to_thread(self.store.put, DedupRecord(key, cid, closed=True))
                self.count("already_closed")
                self.log_write(w, "none", "the alert is closed in Falcon already (loop guard)")
                log.info("sink %s: Falcon alert %s is closed already: nothing to write", self.name, cid)
                return
        await self._update(cid, w["body"])
        await asyncio.to_thread(self.store.put, DedupRecord(key, cid, closed=True))
        self.count("closed")
        self.log_write({**w, "note": w["body"]["action_parameters"][-1].get("value")}, "closed", "closed in XSOAR")
        log.info("sink %s: Falcon alert %s closed", self.name, cid)

    async def _update(self, cid: str, body: dict) -> None:
        resp = await self.call("PATCH", UPDATE, "update", body)
        if resp.status_code == 404:
            raise PermanentError(f"Falcon has no alert {cid} (PATCH answered 404)", reason="rejected")
        err = classify(resp, f"update (PATCH {UPDATE})", service="Falcon", redact=self.redact,
                       auth_hint="check client_id/secret and the Alerts write scope")
        if err is not None:
            raise err
        res, errors = self._resources(resp)
        if cid not in res:
            raise PermanentError(f"Falcon did not update alert {cid}: {errors}"[:300], reason="rejected")

    async def _assignment(self, w: dict, key: str, cid: str) -> None:
        """An XSOAR reassignment: ``assign_to_name``, unless the alert has that owner already or
        is closed (read first when ``check_status``)."""
        name = str(w.get("assigned_to") or "")
        if not name:
            raise PermanentError("the queued assignment names no owner", reason="bad_payload")
        skip = None
        if self.settings.check_status:
            a = await self.alert(cid)
            if a is None:
                raise PermanentError(f"Falcon has no alert {cid}", reason="rejected")
            if str(a.get("status") or "") == "closed":
                skip = ("assign_skipped", "the alert is closed in Falcon: its owner is not changed")
            elif a.get("assigned_to_name") == name:
                skip = ("assign_present", f"the alert is assigned to {name} already")
        if skip is None:
            await self._update(cid, w["body"])
        await asyncio.to_thread(self.store.put, DedupRecord(key, cid))
        if skip is not None:
            self.count(skip[0])
            self.log_write(w, "none", skip[1])
            return
        self.count("assigned")
        self.log_write(w, "assigned", w.get("reason") or "assigned in XSOAR")
        log.info("sink %s: Falcon alert %s assigned to %s", self.name, cid, name)

    async def send(self, items: Sequence):
        return await self.run_groups(self.groups(items, self._key), self._handle)


KIND = kinds.register_sink(kinds.SinkKind(
    type="falcon_api", read_config=read_config, factory=FalconWritebackSink, renderer=renderer,
    keys=("url", "client_id", "client_secret_env", "client_secret_file", "note_prefix", "check_status",
          "dedup_store_size", "owners", "audit_file") + HTTP_KEYS,
    meta=("dedup_key", "event", "status"), structured=True, batch_size=20,
    doc="Falcon write-back: a closure event sets the alert's status to closed with a comment, once; an "
        "assignment event assigns it (assign_to_name; owners maps XSOAR users)"))

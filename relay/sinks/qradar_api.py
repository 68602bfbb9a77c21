"""QRadar write-back (``type = "qradar_api"`` sink): a ``closure`` event of the ``xsoar_mirror``
source for a QRadar offense closes the offense, with a note (apis.md 3.5):

1. ``POST /api/siem/offenses/{id}/notes?note_text=<note>`` (``Closed in XSOAR (incident 12) by
   alice: False Positive. <close notes>``), unless the offense already carries that note;
2. ``POST /api/siem/offenses/{id}?status=CLOSED&closing_reason_id=<id>``, the id mapped from
   XSOAR's close reason by the ``closing_reasons`` table (``default_closing_reason_id`` for the
   rest; QRadar refuses reserved and deleted reasons).

Idempotent: the write's key (offense key, XSOAR incident, close time) in the sink's dedup store
(``<state_dir>/qradar-dedup-<sink>.db``); ``check_status`` (default on) reads the offense first
and an offense already CLOSED is left alone, which is also the loop guard: an offense closed in
QRadar closes its XSOAR incident (``qradar_offenses`` source, ``xsoar`` sink with
``close_on_source_close``), the mirror sees that close (and, by its close notes, does not
emit it), and were it emitted, this sink would find the offense closed and write nothing.  A
409 to the close (closed meanwhile) is re-read: closed is success, anything else (a protected
offense) a dead letter.  The note is looked up before it is added, so a retried write adds it
once.

An ``assignment`` event (the XSOAR owner changed) sets the offense's ``assigned_to``
(``POST /api/siem/offenses/{id}?assigned_to=<user>``, the user mapped by the ``owners`` table),
unless the offense is assigned to that user already or is closed (nothing written, an audit
line says why); a user QRadar refuses (422) is a dead letter naming it.

Auth: ``SEC: <authorized service token>`` (env or file), ``Version: <api_version>``; 401/403
block the sink (writes stay queued), 429/5xx retried, other 4xx dead-lettered with QRadar's
message.  Counted in ``relay_writeback_total{sink, action}`` (``closed``, ``already_closed``,
``duplicate``, ``note_added``, ``note_present``, ``assigned``, ``assign_present``,
``assign_skipped``).
"""
from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import orjson

from formats.writeback import QradarOptions, qradar_assign, qradar_close, qradar_triage

from .. import kinds
from ..checks import http_url
from ..dedup import DedupRecord, DedupStore, store_path
from ..secrets import Secret, read_secret
from ._http import HTTP_KEYS, HttpOptions, HttpSink, Redactor, classify, read_http
from ._writeback import AuditedWrites, audit_path, configured_path, read_owners
from .base import PermanentError

__all__ = ["QradarSinkSettings", "QradarWritebackSink", "read_config"]

log = logging.getLogger("relay.sinks.qradar_api")
OFFENSES = "/api/siem/offenses"


@dataclass(frozen=True)
class QradarSinkSettings:
    url: str
    token: Secret
    http: HttpOptions
    api_version: str = "20.0"
    opts: QradarOptions = QradarOptions()
    check_status: bool = True
    dedup_store_size: int = 100_000
    audit_file: Path | None = None       # None: <state_dir>/audit/writeback-<sink>.jsonl


def _reason_id(v):
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError(f"must be a QRadar closing_reason_id (a positive integer), not {v!r}")


def read_config(table, sk, base_dir: Path) -> None:
    url = table.get("url", str, required=True, check=http_url).rstrip("/")
    if url.endswith("/api"):
        url = url[:-4]
    token = read_secret(table, "token_env", "token_file", "QRadar authorized service token (SEC)", base_dir,
                        literal="token")
    version = str(table.get("api_version", (str, float, int), "20.0")).strip()
    if not re.fullmatch(r"\d+(\.\d+)?", version):
        raise table.err("api_version", f"{version!r} is not an API version like 20.0")
    cr = table.table("closing_reasons")
    reasons = dict(QradarOptions().closing_reasons) if not cr.data else {}
    for k in list(cr.data):
        reasons[k.strip().lower()] = cr.get(k, int, check=_reason_id)
    cr.finish()
    sk.options["qradar_api"] = QradarSinkSettings(
        url=url, token=token, http=read_http(table, base_dir, concurrency=4), api_version=version,
        opts=QradarOptions(closing_reasons=tuple(reasons.items()),
                           default_closing_reason_id=table.get("default_closing_reason_id", int, 1,
                                                               check=_reason_id),
                           note_prefix=table.get("note_prefix", str, "Closed in XSOAR"),
                           triage_notes=table.get("triage_notes", bool, False),
                           triage_prefix=table.get("triage_prefix", str, "Relay triage",
                                                   check=lambda v: None if v.strip() else
                                                   (_ for _ in ()).throw(ValueError("must not be empty"))),
                           triage_assign=table.get("triage_assign", bool, True),
                           owners=read_owners(table)),
        audit_file=configured_path(table.get("audit_file", str, None), base_dir),
        check_status=table.get("check_status", bool, True),
        dedup_store_size=table.get("dedup_store_size", int, 100_000,
                                   check=lambda v: None if v > 0 else
                                   (_ for _ in ()).throw(ValueError(f"must be greater than 0, not {v}"))),
    )
    sk.format = "json"


def renderer(sk):
    opts = sk.options["qradar_api"].opts if "qradar_api" in sk.options else QradarOptions()

    def render(ev, routes):
        f = ev.fields or {}
        if f.get("kind") == "closure":
            return orjson.dumps(qradar_close(f, opts))
        if f.get("kind") == "assignment":
            return orjson.dumps(qradar_assign(f, opts))
        return orjson.dumps(qradar_triage(f, opts))
    return render


class QradarWritebackSink(AuditedWrites, HttpSink):
    service = "QRadar"
    audit_target = "QRadar"
    requests_metric = "relay_writeback_requests_total"

    def __init__(self, cfg, queue, *, transport=None, **kw) -> None:
        s: QradarSinkSettings | None = cfg.options.get("qradar_api")
        if s is None:
            raise ValueError(f"sink {cfg.name}: no QRadar settings (the config reader did not run)")
        super().__init__(cfg, queue, transport=transport, http=s.http, redact=Redactor([s.token.reveal()]), **kw)
        self.settings = s
        self.store = DedupStore(store_path(queue, self.name, "qradar"), s.dedup_store_size)
        self.audit_path = audit_path(queue, self.name, s.audit_file)
        self.registry.gauge("relay_writeback_dedup_entries", lambda: len(self.store), sink=self.name)
        log.info("sink %s: QRadar write-back at %s (closing reasons %s, default %d)", self.name, s.url,
                 dict(s.opts.closing_reasons), s.opts.default_closing_reason_id)

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

    async def call(self, method: str, path: str, op: str, params: dict | None = None, headers: dict | None = None):
        s = self.settings
        h = {"SEC": s.token.reveal(), "Version": s.api_version, "Accept": "application/json", **(headers or {})}
        return await self.request(method, s.url + path, op, params=params, headers=h)

    def _check(self, resp, what: str) -> None:
        err = classify(resp, what, service="QRadar", redact=self.redact,
                       auth_hint="check the SEC token and its capabilities (offenses: maintain)")
        if err is not None:
            raise err

    async def offense(self, oid: int) -> dict:
        resp = await self.call("GET", f"{OFFENSES}/{oid}", "get", params={"fields": "id,status,closing_reason_id,assigned_to"})
        if resp.status_code == 404:
            raise PermanentError(f"QRadar has no offense {oid} (GET answered 404)", reason="rejected")
        self._check(resp, f"get (GET {OFFENSES}/{oid})")
        try:
            o = resp.json()
        except ValueError:
            o = None
        return o if isinstance(o, dict) else {}

    async def add_note(self, oid: int, text: str, same=None) -> bool:
        """The note, unless the offense carries it already (a retried write; ``same(note_text)``:
        what counts as the same note, default equal text) -> whether it was added."""
        same = same or (lambda t: t == text)
        path = f"{OFFENSES}/{oid}/notes"
        resp = await self.call("GET", path, "notes", params={"fields": "note_text"},
                               headers={"Range": "items=0-499"})
        self._check(resp, f"notes (GET {path})")
        try:
            have = resp.json()
        except ValueError:
            have = []
        if any(isinstance(n, dict) and same(str(n.get("note_text") or "")) for n in have or ()):
            self.count("note_present")
            return False
        resp = await self.call("POST", path, "note", params={"note_text": text})
        if resp.status_code == 404:
            raise PermanentError(f"QRadar has no offense {oid} (note answered 404)", reason="rejected")
        self._check(resp, f"note (POST {path})")
        self.count("note_added")
        return True

    @staticmethod
    def _key(item) -> str | None:
        k = item.meta.get("dedup_key")
        return str(k) if k else None

    async def _handle(self, item) -> None:
        try:
            w = orjson.loads(item.payload)
            if not isinstance(w, dict) or w.get("op") not in ("close", "triage", "assign") \
                    or not isinstance(w.get("id"), int) \
                    or not w.get("key"):
                raise ValueError("not a QRadar close, triage or assign")
        except ValueError as e:
            raise PermanentError(f"queued payload is not a QRadar write-back: {e}", reason="bad_payload") from None
        key, oid = str(w["key"]), w["id"]
        if await asyncio.to_thread(self.store.get, key) is not None:
            self.count("duplicate")
            return
        if w["op"] == "triage":
            return await self._triage(w, key, oid)
        if w["op"] == "assign":
            return await self._assignment(w, key, oid)
        if self.settings.check_status:
            o = await self.offense(oid)
            if str(o.get("status") or "").upper() == "CLOSED":
                await asyncio.to_thread(self.store.put, DedupRecord(key, str(oid), closed=True))
                self.count("already_closed")
                self.log_write(w, "none", "the offense is closed in QRadar already (loop guard)")
                log.info("sink %s: offense %s is closed in QRadar already: nothing to write", self.name, oid)
                return
        if w.get("note"):
            if await self.add_note(oid, str(w["note"])):
                self.log_write(w, "note_added", "closed in XSOAR")
        path = f"{OFFENSES}/{oid}"
        resp = await self.call("POST", path, "close", params={"status": "CLOSED",
                                                               "closing_reason_id": str(w["closing_reason_id"]),
                                                               "fields": "id,status"})
        if resp.status_code == 409:
            o = await self.offense(oid)
            if str(o.get("status") or "").upper() != "CLOSED":
                raise PermanentError(f"QRadar refused to close offense {oid} (409: the offense's state, e.g. "
                                     f"protected)", reason="rejected")
            self.count("already_closed")
            self.log_write(w, "none", "the offense was closed meanwhile")
        elif resp.status_code == 404:
            raise PermanentError(f"QRadar has no offense {oid} (close answered 404)", reason="rejected")
        else:
            self._check(resp, f"close (POST {path})")
            self.count("closed")
            self.log_write(w, "closed", f"closed in XSOAR; closing_reason_id {w['closing_reason_id']}")
            log.info("sink %s: offense %s closed (closing_reason_id %s)", self.name, oid, w["closing_reason_id"])
        await asyncio.to_thread(self.store.put, DedupRecord(key, str(oid), closed=True))

    async def _triage(self, w: dict, key: str, oid: int) -> None:
        """The triage note (once per offense: an offense note starting with ``triage_prefix`` is
        ours already) and, in mode auto, ``assigned_to`` (unless it is that already)."""
        prefix = self.settings.opts.triage_prefix
        o = await self.offense(oid)
        if await self.add_note(oid, str(w["note"]), same=lambda t: t.startswith(prefix + ":")):
            self.log_write(w, "note_added", w.get("reason") or "triage")
        else:
            self.log_write(w, "note_present", "the offense carries a triage note already")
        owner = w.get("assigned_to")
        if owner:
            await self._set_owner(oid, str(owner), o, w, w.get("reason") or "triage mode auto")
        await asyncio.to_thread(self.store.put, DedupRecord(key, str(oid)))

    async def _set_owner(self, oid: int, owner: str, o: dict, w: dict, reason: str) -> bool:
        """``assigned_to = owner`` unless the offense ``o`` (as read) has it already -> whether
        it was written."""
        if o.get("assigned_to") == owner:
            self.count("assign_present")
            return False
        path = f"{OFFENSES}/{oid}"
        resp = await self.call("POST", path, "assign", params={"assigned_to": owner, "fields": "id"})
        if resp.status_code == 404:
            raise PermanentError(f"QRadar has no offense {oid} (assign answered 404)", reason="rejected")
        if resp.status_code == 422:
            raise PermanentError(f"QRadar refused assigned_to={owner!r} for offense {oid} (422: not a "
                                 f"QRadar user? map XSOAR users in [sinks.{self.name}.owners])", reason="rejected")
        self._check(resp, f"assign (POST {path})")
        self.count("assigned")
        self.log_write(w, "assigned", reason)
        log.info("sink %s: offense %s assigned to %s", self.name, oid, owner)
        return True

    async def _assignment(self, w: dict, key: str, oid: int) -> None:
        """An XSOAR reassignment: ``assigned_to`` on the offense, unless it has that owner already
        or is closed."""
        owner = str(w.get("assigned_to") or "")
        if not owner:
            raise PermanentError("the queued assignment names no owner", reason="bad_payload")
        o = await self.offense(oid)
        if str(o.get("status") or "").upper() == "CLOSED":
            self.count("assign_skipped")
            self.log_write(w, "none", "the offense is closed in QRadar: its owner is not changed")
        elif not await self._set_owner(oid, owner, o, w, w.get("reason") or "assigned in XSOAR"):
            self.log_write(w, "none", f"the offense is assigned to {owner} already")
        await asyncio.to_thread(self.store.put, DedupRecord(key, str(oid)))

    async def send(self, items: Sequence):
        return await self.run_groups(self.groups(items, self._key), self._handle)


KIND = kinds.register_sink(kinds.SinkKind(
    type="qradar_api", read_config=read_config, factory=QradarWritebackSink, renderer=renderer,
    keys=("url", "token_env", "token_file", "api_version", "closing_reasons", "default_closing_reason_id",
          "note_prefix", "check_status", "dedup_store_size", "triage_notes", "triage_prefix", "triage_assign",
          "owners", "audit_file") + HTTP_KEYS,
    meta=("dedup_key", "event", "status"), structured=True, batch_size=20,
    doc="QRadar write-back: a closure event closes the offense (mapped closing_reason_id) with a note, once; "
        "an assignment event sets assigned_to (owners maps XSOAR users); "
        "triage_notes: a triaged offense gets its explanation as a note (and, in mode auto, assigned_to)"))

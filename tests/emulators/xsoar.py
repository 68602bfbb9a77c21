"""A Cortex XSOAR emulator: a real HTTP server (stdlib ``ThreadingHTTPServer``, no extra
dependencies) with the endpoints and shapes of the reference notes (apis.md section 1).

REST API, XSOAR 6 paths at the root and XSOAR 8 paths under ``/xsoar`` or ``/xsoar/public/v1``:

* ``POST /incident`` creates (or, with ``id`` + ``version``, updates) one incident.  ``rawJSON``
  must be a string, ``CustomFields``/``customFields`` an object with machine keys (lower case,
  no spaces), ``severity`` a number 0..4 (0.5 allowed), ``occurred`` ISO 8601, ``labels`` a list
  of ``{type, value}``.  Updates use optimistic locking: a stale ``version`` -> HTTP 400 (or
  ``conflict_status``) ``DB version error``; ``version: -1`` forces.
* ``POST /incidents/search``: ``{"filter": {query, id[], status[], notStatus[], type[], name[],
  page, size, sort}}``.  ``size`` defaults to **0** (no results), capped at 1000; an empty page
  answers ``"data": null`` (``empty_search="list"`` answers ``[]``).  The query language is the
  subset ``[-]field:"value"`` / ``[-]field:value`` (``*`` wildcards) joined by spaces or ``and``;
  fields are incident fields or custom field keys; ``status:closed|active|pending``.
  Range clauses ``field:>="<ISO date>"`` (also ``>``, ``<=``, ``<``; dates or numbers) select by
  time, e.g. ``modified:>="2026-03-13T04:30:00.000Z"`` (the mirror's query); ``field:*`` = set.
* SOC actions from Python (what an analyst does in the UI; each bumps ``version`` and
  ``modified``): :meth:`XsoarEmulator.close_incident` (reason, notes, owner),
  :meth:`XsoarEmulator.reassign`, :meth:`XsoarEmulator.reopen`.
* ``POST /incident/close`` ``{"id"}`` and ``POST /incident/batchClose`` ``{"ids", "all",
  "filter", "closeReason", "closeNotes"}`` (-> ``{"data", "total", "notUpdated"}``).
* ``POST /entry`` (412 on a closed investigation), ``GET /about``.

Auth: XSOAR 6 ``Authorization: <key>`` (wrong key -> 403 with the CSRF-style JSON body);
XSOAR 8 ``x-xdr-auth-id`` + ``Authorization: <key>`` (standard) or the advanced form
(``sha256(key + nonce + timestamp)`` with ``x-xdr-nonce``/``x-xdr-timestamp``); failure -> 401.

Generic Webhook at ``POST /``, ``/instance/execute/<name>`` and ``/xsoar/instance/execute/<name>``:
an object or an array of objects (``name``, ``type``, ``occurred``, ``rawJson``/``raw_json``);
401 text ``Authorization failed.`` (``_header:<Name>`` or Basic credentials); 400 on bad
JSON; optional ``duplication_key`` (comma-separated paths into rawJson, 5000 keys remembered;
all filtered -> 200 ``null``).

Fault injection (Python methods, or ``POST /_emulator/fault`` with the same arguments as JSON):
``fail(status, count=, seconds=, op=, retry_after=)`` (401/403/429/5xx storms),
``slow(delay, when="before"|"after")``, ``drop_after_processing(count=)`` (the request is
processed, then the connection is closed without an answer), ``reset_before(count=)``,
``conflict_next(count=)`` (the next updates meet a concurrent edit), ``set_api_key(key)``.
``op`` limits a fault to one operation: create, update, search, close, webhook, entry, about.

Standalone::

    python -m tests.emulators.xsoar --port 8443 --api-key KEY [--auth-id 7]
        [--webhook-header "Authorization: Bearer s3cret"] [--duplication-key relay.dedup_key]

prints every request and what it did.  ``GET /_emulator/incidents`` lists the incidents.
Binds 127.0.0.1 by default.
"""
from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import ssl
import struct
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable

from ._server import LoopbackServer

__all__ = ["XsoarEmulator", "Fault"]

STATUS_NAMES = {"pending": 0, "active": 1, "closed": 2, "done": 2, "archive": 3}
WEBHOOK_BAD_JSON = "Request, and rawJson field if exists must be in JSON format"
CSRF_BODY = {"id": "forbidden", "status": 403, "title": "Forbidden", "detail": "Issue with CSRF code",
             "error": "http: named cookie not present", "encrypted": False, "multires": None}
_FIELD_KEY = re.compile(r"[a-z0-9_]+\Z")
_CLAUSE = re.compile(r'\s*(-?)([A-Za-z0-9_.]+):(>=|<=|>|<)?("(?:[^"\\]|\\.)*"|[^\s"()]+)\s*')
# fields changed outside create and update (close, reassign, reopen, conflicts, war-room entries):
# searched by scan
_UNINDEXED = frozenset({"status", "owner", "closed", "closeReason", "closeNotes", "modified", "version", "entries"})
TOP_FIELDS = ("id", "name", "type", "status", "severity", "owner", "sourceBrand", "sourceInstance",
              "category", "phase", "details", "closeReason")


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Fault:
    kind: str                         # status | slow | drop | reset
    status: int = 0
    count: int | None = None          # remaining matches (None: unlimited)
    until: float | None = None        # monotonic deadline (None: none)
    op: str | None = None             # create/update/search/close/webhook/entry/about, or None = all
    retry_after: str | None = None
    body: Any = None
    delay: float = 0.0
    when: str = "before"              # slow: before or after processing
    hits: int = 0

    def live(self) -> bool:
        if self.count is not None and self.count <= 0:
            return False
        return self.until is None or time.monotonic() < self.until


class _Reply:
    def __init__(self, status: int, body: Any = None, *, text: str | None = None,
                 headers: dict | None = None, note: str = "") -> None:
        self.status, self.body, self.text, self.headers, self.note = status, body, text, headers or {}, note


class _QueryError(ValueError):
    pass


class XsoarEmulator(LoopbackServer):
    """See the module docstring.  ``start()`` / ``close()`` (or a ``with`` block);
    :attr:`url` is ``http://127.0.0.1:<port>``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, api_key: str = "test-api-key",
                 auth_id: str | None = "7", accept: tuple = ("6", "8"), key_type: str = "any",
                 webhook_auth: tuple[str, str] | None = None, webhook_incident_type: str = "Generic Webhook",
                 duplication_key: str | None = None, empty_search: str = "null", conflict_status: int = 400,
                 custom_fields: str = "keep", known_custom_fields: set | None = None,
                 ssl_context: ssl.SSLContext | None = None, out: Callable[[str], None] | None = None) -> None:
        self.host, self.port = host, port
        self.api_key = api_key
        self.auth_id = auth_id
        self.accept = tuple(accept)
        self.key_type = key_type
        self.webhook_auth = webhook_auth
        self.webhook_incident_type = webhook_incident_type
        self.duplication_key = duplication_key
        self.empty_search = empty_search
        self.conflict_status = conflict_status
        self.custom_fields_policy = custom_fields      # keep | drop | error (unknown keys)
        self.known_custom_fields = known_custom_fields
        self.ssl_context = ssl_context
        self.out = out
        self.lock = threading.RLock()
        self._incidents: dict[str, dict] = {}
        # field -> lowered str(value) -> ids of incidents that held it when created or updated:
        # candidates for a one-clause exact search (the sink's dedup lookup), checked again by
        # the full filter, so a stale entry is never a hit. Real XSOAR's search is indexed; a
        # scan here made the emulator's CPU per search grow with every incident it holds
        # (~15 ms at 12,000: the chaos soak's drain waited on it, not on the relay).
        self._index: dict[str, dict[str, set[str]]] = {}
        self._next_id = 1
        self._faults: list[Fault] = []
        self._conflicts = 0
        self._dup_seen: list[str] = []
        self.stats: Counter = Counter()
        self.log: list[dict] = []          # one entry per request: method, path, op, status, note
        self._closing = threading.Event()
        self._conns: set[socket.socket] = set()

    # ------------------------------------------------------------------ lifecycle
    thread_name = "xsoar-emulator"

    def _handler_class(self) -> type:
        return type("Handler", (_Handler,), {"emulator": self})

    def _wrap(self, srv) -> None:
        if self.ssl_context is not None:
            srv.socket = self.ssl_context.wrap_socket(srv.socket, server_side=True)

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def _before_close(self) -> None:
        self._closing.set()

    def _after_shutdown(self) -> None:
        with self.lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # ------------------------------------------------------------------ faults & control
    def _add(self, f: Fault, seconds: float | None) -> Fault:
        if seconds is not None:
            f.until = time.monotonic() + seconds
        with self.lock:
            self._faults.append(f)
        self._say(f"fault armed: {f.kind} status={f.status or '-'} count={f.count} seconds={seconds} op={f.op}")
        return f

    def fail(self, status: int, *, count: int | None = None, seconds: float | None = None, op: str | None = None,
             retry_after: float | str | None = None, body: Any = None) -> Fault:
        """Answer ``status`` (before processing) to the matching requests: ``count`` of them,
        for ``seconds``, or until :meth:`clear_faults`."""
        return self._add(Fault("status", status=status, count=count, op=op, body=body,
                               retry_after=None if retry_after is None else str(retry_after)), seconds)

    def slow(self, delay: float, *, count: int | None = None, seconds: float | None = None, op: str | None = None,
             when: str = "before") -> Fault:
        return self._add(Fault("slow", delay=delay, count=count, op=op, when=when), seconds)

    def drop_after_processing(self, *, count: int | None = 1, seconds: float | None = None,
                              op: str | None = None) -> Fault:
        """Process the request (the incident exists), then close the connection unanswered."""
        return self._add(Fault("drop", count=count, op=op), seconds)

    def reset_before(self, *, count: int | None = 1, seconds: float | None = None, op: str | None = None) -> Fault:
        """Reset the connection (RST) before processing."""
        return self._add(Fault("reset", count=count, op=op), seconds)

    def conflict_next(self, count: int = 1) -> None:
        """The next ``count`` updates meet a concurrent edit (the incident's version moves on)."""
        with self.lock:
            self._conflicts += count

    def clear_faults(self) -> None:
        with self.lock:
            self._faults.clear()
            self._conflicts = 0

    def set_api_key(self, key: str) -> None:
        with self.lock:
            self.api_key = key

    def reset(self) -> None:
        with self.lock:
            self._incidents.clear()
            self._next_id = 1
            self._dup_seen.clear()
            self.stats.clear()
            self.log.clear()
            self._faults.clear()
            self._conflicts = 0

    def _take(self, op: str, kinds: tuple[str, ...], when: str | None = None) -> Fault | None:
        with self.lock:
            for f in self._faults:
                if f.kind in kinds and (f.op is None or f.op == op) and f.live() and \
                        (when is None or f.when == when):
                    if f.count is not None:
                        f.count -= 1
                    f.hits += 1
                    self.stats["faults"] += 1
                    return f
            self._faults = [f for f in self._faults if f.live()]
        return None

    # ------------------------------------------------------------------ observation
    def incidents(self) -> list[dict]:
        with self.lock:
            return [json.loads(json.dumps(i)) for i in self._incidents.values()]

    def incident(self, inc_id: str) -> dict | None:
        with self.lock:
            i = self._incidents.get(str(inc_id))
            return json.loads(json.dumps(i)) if i else None

    def by_field(self, field: str) -> dict[str, list[dict]]:
        """custom field value -> incidents carrying it (for the webhook: the rawJSON path
        ``relay.dedup_key`` is looked at when ``field`` is ``"rawJSON:relay.dedup_key"``)."""
        out: dict[str, list[dict]] = {}
        for inc in self.incidents():
            if field.startswith("rawJSON:"):
                try:
                    v = _walk(json.loads(inc.get("rawJSON") or "{}"), field[8:])
                except ValueError:
                    v = None
            else:
                v = (inc.get("CustomFields") or {}).get(field)
            if v is not None:
                out.setdefault(str(v), []).append(inc)
        return out

    def wait(self, predicate: Callable[["XsoarEmulator"], Any], timeout: float, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while True:
            v = predicate(self)
            if v:
                return v
            if time.monotonic() >= deadline:
                raise TimeoutError(f"emulator: timed out after {timeout} s waiting for {what}; stats {dict(self.stats)}")
            time.sleep(0.05)

    def _say(self, msg: str) -> None:
        if self.out is not None:
            self.out(time.strftime("%H:%M:%S ") + msg)

    # ------------------------------------------------------------------ request entry
    def route(self, method: str, raw_path: str) -> tuple[str, str, str]:
        """-> (family, api version, path): family api | webhook | control | unknown."""
        path = raw_path.split("?", 1)[0] or "/"
        if path.startswith("/_emulator/"):
            return "control", "", path
        for pre in ("/xsoar/instance/execute/", "/instance/execute/"):
            if path.startswith(pre) and len(path) > len(pre):
                return "webhook", "", path
        if path == "/" and method == "POST":
            return "webhook", "", path
        if path.startswith("/xsoar/public/v1/"):
            return "api", "8", path[len("/xsoar/public/v1"):]
        if path.startswith("/xsoar/"):
            return "api", "8", path[len("/xsoar"):]
        return "api", "6", path

    def api_op(self, method: str, path: str, body: Any) -> str:
        if path == "/incident" and method == "POST":
            return "update" if isinstance(body, dict) and body.get("id") not in (None, "") else "create"
        return {"/incidents/search": "search", "/incident/close": "close", "/incident/batchClose": "close",
                "/entry": "entry", "/about": "about"}.get(path, "other")

    def check_api_auth(self, version: str, headers) -> _Reply | None:
        if version not in self.accept:
            return _Reply(404, {"error": f"no such path on this XSOAR {'/'.join(self.accept)} emulator"},
                          note=f"v{version} paths not served")
        key = headers.get("Authorization")
        with self.lock:
            api_key = self.api_key
        if version == "6":
            if key is None or not hmac.compare_digest(key.encode(), api_key.encode()):
                return _Reply(403, CSRF_BODY, note="bad v6 key")
            return None
        auth_id = headers.get("x-xdr-auth-id")
        if not auth_id or self.auth_id is None or auth_id != str(self.auth_id):
            return _Reply(401, {"reply": {"err_code": 401, "err_msg": "Public API request unauthorized",
                                          "err_extra": "missing or wrong x-xdr-auth-id"}}, note="bad auth id")
        nonce, ts = headers.get("x-xdr-nonce"), headers.get("x-xdr-timestamp")
        if nonce is not None or ts is not None:
            if self.key_type == "standard":
                return _Reply(401, {"reply": {"err_code": 401, "err_msg": "Public API request unauthorized"}},
                              note="advanced auth for a standard key")
            try:
                ts_ok = abs(int(ts) / 1000 - time.time()) < 300
            except (TypeError, ValueError):
                ts_ok = False
            want = hashlib.sha256(f"{api_key}{nonce}{ts}".encode()).hexdigest()
            if not ts_ok or not nonce or len(nonce) != 64 or key is None or \
                    not hmac.compare_digest(key.encode(), want.encode()):
                return _Reply(401, {"reply": {"err_code": 401, "err_msg": "Public API request unauthorized"}},
                              note="bad advanced signature")
            return None
        if self.key_type == "advanced":
            return _Reply(401, {"reply": {"err_code": 401, "err_msg": "Public API request unauthorized"}},
                          note="standard auth for an advanced key")
        if key is None or not hmac.compare_digest(key.encode(), api_key.encode()):
            return _Reply(401, {"reply": {"err_code": 401, "err_msg": "Public API request unauthorized"}},
                          note="bad v8 key")
        return None

    # ------------------------------------------------------------------ API handlers
    def api(self, method: str, path: str, raw: bytes) -> _Reply:
        if method == "GET" and path == "/about":
            return _Reply(200, {"demistoVersion": "6.99.0-emulator", "buildNum": "1"})
        if method != "POST":
            return _Reply(405, _err(405, f"{method} not allowed on {path}"))
        try:
            body = json.loads(raw) if raw else None
        except ValueError as e:
            return _Reply(400, _err(400, f"request body is not JSON: {e}"))
        if path == "/incident":
            return self.h_incident(body)
        if path == "/incidents/search":
            return self.h_search(body)
        if path == "/incident/close":
            return self.h_close(body)
        if path == "/incident/batchClose":
            return self.h_batch_close(body)
        if path == "/entry":
            return self.h_entry(body)
        return _Reply(404, _err(404, f"no route {path}"))

    def _validate(self, body: dict, *, partial: bool) -> str | None:
        if "rawJSON" in body and not isinstance(body["rawJSON"], str):
            return "rawJSON must be a string (the JSON-encoded original event)"
        for k in ("CustomFields", "customFields"):
            if k in body and body[k] is not None and not isinstance(body[k], dict):
                return f"{k} must be an object"
        sev = body.get("severity")
        if sev is not None and (isinstance(sev, bool) or not isinstance(sev, (int, float)) or not 0 <= sev <= 4):
            return f"severity must be a number 0..4 (0.5 = informational), not {sev!r}"
        occ = body.get("occurred")
        if occ is not None:
            if not isinstance(occ, str):
                return "occurred must be an ISO 8601 date-time string"
            try:
                datetime.fromisoformat(occ.replace("Z", "+00:00"))
            except ValueError:
                return f"occurred {occ!r} is not an ISO 8601 date-time"
        labels = body.get("labels")
        if labels is not None:
            if not isinstance(labels, list) or not all(
                    isinstance(x, dict) and isinstance(x.get("type"), str) and isinstance(x.get("value"), str)
                    for x in labels):
                return "labels must be a list of {\"type\": string, \"value\": string}"
        for k in ("name", "type", "details"):
            if k in body and body[k] is not None and not isinstance(body[k], str):
                return f"{k} must be a string"
        if "createInvestigation" in body and not isinstance(body["createInvestigation"], bool):
            return "createInvestigation must be a boolean"
        if not partial and not body.get("name"):
            pass  # XSOAR accepts an unnamed incident
        return None

    def _custom(self, body: dict) -> tuple[dict | None, str | None]:
        merged: dict = {}
        for k in ("CustomFields", "customFields"):
            if isinstance(body.get(k), dict):
                merged.update(body[k])
        out = {}
        for k, v in merged.items():
            if not _FIELD_KEY.match(k):
                return None, f"custom field key {k!r} must be the machine key (lower case, no spaces)"
            if self.known_custom_fields is not None and k not in self.known_custom_fields:
                if self.custom_fields_policy == "error":
                    return None, f"unknown incident field {k!r}"
                if self.custom_fields_policy == "drop":
                    continue
            out[k] = v
        return out, None

    def h_incident(self, body) -> _Reply:
        if not isinstance(body, dict):
            return _Reply(400, _err(400, "body must be a JSON object (one incident)"))
        problem = self._validate(body, partial=False)
        if problem:
            return _Reply(400, _err(400, problem), note=problem)
        custom, problem = self._custom(body)
        if problem:
            return _Reply(400, _err(400, problem), note=problem)
        now = _now_iso()
        with self.lock:
            if body.get("id") not in (None, ""):
                return self._update(body, custom)
            inc_id = str(self._next_id)
            self._next_id += 1
            inv = bool(body.get("createInvestigation", False))
            inc = {k: v for k, v in body.items() if k not in ("CustomFields", "customFields", "id", "version",
                                                                "createInvestigation")}
            inc.update(id=inc_id, version=1, status=1 if inv else 0, created=now, modified=now,
                       investigationId=inc_id if inv else "", CustomFields=custom,
                       closed="0001-01-01T00:00:00Z")
            inc.setdefault("occurred", now)
            inc.setdefault("severity", 0)
            inc.setdefault("type", "Unclassified")
            inc.setdefault("labels", [])
            inc.setdefault("owner", "")
            self._incidents[inc_id] = inc
            self._reindex(inc)
            self.stats["created"] += 1
            keyinfo = ", ".join(f"{k}={v}" for k, v in list(custom.items())[:1])
            return _Reply(200, json.loads(json.dumps(inc)),
                          note=f"created incident {inc_id} [{keyinfo}] sev={inc['severity']} {inc.get('name', '')!r}")

    def _update(self, body: dict, custom: dict) -> _Reply:
        inc_id = str(body["id"])
        inc = self._incidents.get(inc_id)
        if inc is None:
            return _Reply(400, _err(400, f"incident {inc_id} not found"), note=f"update of unknown {inc_id}")
        if self._conflicts > 0:
            self._conflicts -= 1
            inc["version"] += 1
            inc["modified"] = _now_iso()
        version = body.get("version")
        if version != -1 and version != inc["version"]:
            self.stats["conflicts"] += 1
            msg = (f"DB version error: incident {inc_id} is at version {inc['version']}, "
                   f"the update was based on version {version}")
            return _Reply(self.conflict_status, _err(self.conflict_status, msg, "dbVersionError"), note=msg)
        for k, v in body.items():
            if k not in ("id", "version", "CustomFields", "customFields", "createInvestigation"):
                inc[k] = v
        inc["CustomFields"] = {**inc.get("CustomFields", {}), **custom}
        inc["version"] += 1
        inc["modified"] = _now_iso()
        self._reindex(inc)
        self.stats["updated"] += 1
        return _Reply(200, json.loads(json.dumps(inc)), note=f"updated incident {inc_id} -> version {inc['version']}")

    def h_search(self, body) -> _Reply:
        if not isinstance(body, dict):
            return _Reply(400, _err(400, "body must be {\"filter\": {...}}"))
        flt = body.get("filter") or {}
        if not isinstance(flt, dict):
            return _Reply(400, _err(400, "filter must be an object"))
        size = flt.get("size", 0)
        page = flt.get("page", 0)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or \
                not isinstance(page, int) or isinstance(page, bool) or page < 0:
            return _Reply(400, _err(400, "page and size must be non-negative integers"))
        size = min(size, 1000)
        try:
            preds = _compile_query(flt.get("query") or "")
        except _QueryError as e:
            return _Reply(400, _err(400, f"invalid query: {e}"), note=f"bad query {flt.get('query')!r}")
        ids = {str(x) for x in flt.get("id") or ()}
        statuses = set(flt.get("status") or ())
        not_status = set(flt.get("notStatus") or ())
        types = set(flt.get("type") or ())
        names = set(flt.get("name") or ())
        with self.lock:
            pool = self._candidates(flt.get("query") or "")
            hits = [i for i in pool
                    if (not ids or i["id"] in ids) and (not statuses or i["status"] in statuses)
                    and i["status"] not in not_status and (not types or i.get("type") in types)
                    and (not names or i.get("name") in names) and all(p(i) for p in preds)]
            sort = flt.get("sort") or [{"field": "created", "asc": False}]
            for s in reversed(sort if isinstance(sort, list) else []):
                fld = s.get("field", "created") if isinstance(s, dict) else "created"
                hits.sort(key=lambda i, f=fld: _sort_key(_value(i, f)), reverse=not s.get("asc", False))
            total = len(hits)
            page_hits = json.loads(json.dumps(hits[page * size:(page + 1) * size]))
        self.stats["searches"] += 1
        if page_hits:
            self.stats["search_hits"] += 1
        data: Any = page_hits if page_hits else (None if self.empty_search == "null" else [])
        return _Reply(200, {"data": data, "total": total},
                      note=f"search {flt.get('query') or dict(id=list(ids))!r} size={size} -> {len(page_hits)}/{total}")

    def _reindex(self, inc: dict) -> None:
        """Under the lock, after ``inc`` was created or updated (every write that can change a
        field the index serves; the others are in :data:`_UNINDEXED`)."""
        for fld, by in self._index.items():
            _index_add(by, fld, inc)

    def _candidates(self, query: str):
        """Under the lock: the incidents a search must look at, in creation order. All of them,
        unless the query is one exact ``field:"value"`` clause on an indexed field."""
        m = _CLAUSE.fullmatch(query)
        if m is None:
            return self._incidents.values()
        neg, fld, cmp, val = m.groups()
        if neg or cmp or not val.startswith('"') or fld in _UNINDEXED:
            return self._incidents.values()
        by = self._index.get(fld)
        if by is None:
            by = self._index[fld] = {}
            for inc in self._incidents.values():
                _index_add(by, fld, inc)
        ids = by.get(_unquote(val).lower(), ())
        incs = self._incidents
        return [incs[i] for i in sorted(ids, key=int) if i in incs]

    def _close_one(self, inc: dict, reason: Any, notes: Any) -> None:
        if inc["status"] != 2:
            inc["status"] = 2
            inc["closed"] = _now_iso()
            inc["closeReason"] = reason or ""
            inc["closeNotes"] = notes or ""
            inc["version"] += 1
            inc["modified"] = inc["closed"]
            self.stats["closed"] += 1

    # ------------------------------------------------------------------ SOC actions (tests)
    def close_incident(self, inc_id, reason: str = "Resolved", notes: str = "", owner: str | None = None) -> dict:
        """An analyst closes the incident in the UI (bumps version and ``modified``)."""
        with self.lock:
            inc = self._incidents[str(inc_id)]
            if owner is not None:
                inc["owner"] = owner
            self._close_one(inc, reason, notes)
            return json.loads(json.dumps(inc))

    def reassign(self, inc_id, owner: str) -> dict:
        """An analyst assigns the incident to ``owner``."""
        with self.lock:
            inc = self._incidents[str(inc_id)]
            inc["owner"] = owner
            inc["version"] += 1
            inc["modified"] = _now_iso()
            self.stats["reassigned"] += 1
            return json.loads(json.dumps(inc))

    def reopen(self, inc_id) -> dict:
        with self.lock:
            inc = self._incidents[str(inc_id)]
            inc["status"] = 1
            inc["closed"] = "0001-01-01T00:00:00Z"
            inc["version"] += 1
            inc["modified"] = _now_iso()
            return json.loads(json.dumps(inc))

    def h_close(self, body) -> _Reply:
        if not isinstance(body, dict) or body.get("id") in (None, ""):
            return _Reply(400, _err(400, "body must be {\"id\": <incident id>, ...}"))
        with self.lock:
            inc = self._incidents.get(str(body["id"]))
            if inc is None:
                return _Reply(400, _err(400, f"incident {body['id']} not found"))
            self._close_one(inc, body.get("closeReason"), body.get("closeNotes"))
            return _Reply(200, json.loads(json.dumps(inc)), note=f"closed incident {inc['id']}")

    def h_batch_close(self, body) -> _Reply:
        if not isinstance(body, dict):
            return _Reply(400, _err(400, "body must be an UpdateDataBatch object"))
        ids = body.get("ids") or []
        if not isinstance(ids, list):
            return _Reply(400, _err(400, "ids must be a list"))
        with self.lock:
            if body.get("all") is True:
                try:
                    preds = _compile_query(((body.get("filter") or {}).get("query")) or "")
                except _QueryError as e:
                    return _Reply(400, _err(400, f"invalid query: {e}"))
                targets = [i for i in self._incidents.values() if all(p(i) for p in preds)]
                missing = 0
            else:
                targets = [self._incidents[str(i)] for i in ids if str(i) in self._incidents]
                missing = len(ids) - len(targets)
            for inc in targets:
                self._close_one(inc, body.get("closeReason"), body.get("closeNotes"))
            data = json.loads(json.dumps(targets))
        return _Reply(200, {"data": data, "total": len(data), "notUpdated": missing},
                      note=f"batchClose {ids} -> closed {len(data)}, notUpdated {missing}")

    def h_entry(self, body) -> _Reply:
        if not isinstance(body, dict) or not body.get("investigationId"):
            return _Reply(400, _err(400, "investigationId is required"))
        with self.lock:
            inc = self._incidents.get(str(body["investigationId"]))
            if inc is None:
                return _Reply(400, _err(400, "investigation not found"))
            if inc["status"] == 2:
                return _Reply(412, _err(412, "investigation is closed"))
            inc.setdefault("entries", []).append(body.get("data"))
        return _Reply(200, {"id": f"{body['investigationId']}@{len(inc['entries'])}", "contents": body.get("data")})

    # ------------------------------------------------------------------ webhook
    def webhook(self, headers, raw: bytes) -> _Reply:
        secret_header = None
        if self.webhook_auth is not None:
            user, pw = self.webhook_auth
            ok = False
            if user.startswith("_header:"):
                secret_header = user[8:].strip()
                got = headers.get(secret_header)
                ok = got is not None and hmac.compare_digest(got.encode(), pw.encode())
            else:
                got = headers.get("Authorization") or ""
                if got.startswith("Basic "):
                    try:
                        u, _, p = base64.b64decode(got[6:]).decode().partition(":")
                        ok = hmac.compare_digest(u.encode(), user.encode()) and hmac.compare_digest(p.encode(), pw.encode())
                    except (ValueError, UnicodeDecodeError):
                        ok = False
                secret_header = "Authorization"
            if not ok:
                return _Reply(401, text="Authorization failed.", note="webhook auth failed")
        try:
            body = json.loads(raw)
        except ValueError:
            return _Reply(400, text=WEBHOOK_BAD_JSON, note="webhook bad JSON")
        items = body if isinstance(body, list) else [body]
        if not all(isinstance(i, dict) for i in items):
            return _Reply(400, text=WEBHOOK_BAD_JSON, note="webhook item not an object")
        hdrs = {k: v for k, v in headers.items() if secret_header is None or k.lower() != secret_header.lower()}
        created = []
        skipped = 0
        with self.lock:
            for item in items:
                raw_json = item.get("rawJson", item.get("raw_json"))
                if raw_json is None:
                    raw_json = dict(item)
                elif isinstance(raw_json, str):
                    try:
                        raw_json = json.loads(raw_json)
                    except ValueError:
                        return _Reply(400, text=WEBHOOK_BAD_JSON, note="webhook rawJson not JSON")
                if not isinstance(raw_json, dict):
                    return _Reply(400, text=WEBHOOK_BAD_JSON, note="webhook rawJson not an object")
                raw_json = dict(raw_json, headers=hdrs)
                if self.duplication_key:
                    dkey = None
                    for path in self.duplication_key.split(","):
                        v = _walk(raw_json, path.strip())
                        if v is not None:
                            dkey = f"{path.strip()}:{v}"
                            break
                    if dkey is not None:
                        if dkey in self._dup_seen:
                            skipped += 1
                            self.stats["webhook_duplicates"] += 1
                            continue
                        self._dup_seen.insert(0, dkey)
                        del self._dup_seen[5000:]
                inc_id = str(self._next_id)
                self._next_id += 1
                now = _now_iso()
                rj = json.dumps(raw_json)
                inc = {"id": inc_id, "version": 1, "name": item.get("name") or "Generic webhook triggered incident",
                       "type": item.get("type") or self.webhook_incident_type,
                       "occurred": item.get("occurred") or now, "created": now, "modified": now,
                       "status": 1, "severity": 0, "rawJSON": rj, "details": rj, "CustomFields": {},
                       "labels": [], "sourceBrand": "Generic Webhook"}
                self._incidents[inc_id] = inc
                self._reindex(inc)
                self.stats["created"] += 1
                self.stats["webhook_created"] += 1
                created.append({"id": inc_id, "name": inc["name"], "type": inc["type"], "created": now})
        note = f"webhook: {len(items)} item(s) -> created {[c['id'] for c in created]}, duplicates {skipped}"
        return _Reply(200, created or None, note=note)

    # ------------------------------------------------------------------ control API
    def control(self, method: str, path: str, raw: bytes) -> _Reply:
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            return _Reply(400, {"error": "not JSON"})
        if path == "/_emulator/incidents" and method == "GET":
            return _Reply(200, self.incidents())
        if path == "/_emulator/stats" and method == "GET":
            return _Reply(200, dict(self.stats))
        if path == "/_emulator/reset" and method == "POST":
            self.reset()
            return _Reply(200, {"ok": True})
        if path == "/_emulator/clear" and method == "POST":
            self.clear_faults()
            return _Reply(200, {"ok": True})
        if path == "/_emulator/api_key" and method == "POST":
            self.set_api_key(str(body.get("api_key", "")))
            return _Reply(200, {"ok": True})
        if path == "/_emulator/fault" and method == "POST":
            kind = body.pop("kind", "status")
            try:
                if kind == "status":
                    self.fail(int(body.pop("status")), **body)
                elif kind == "slow":
                    self.slow(float(body.pop("delay")), **body)
                elif kind == "drop":
                    self.drop_after_processing(**body)
                elif kind == "reset":
                    self.reset_before(**body)
                elif kind == "conflict":
                    self.conflict_next(int(body.get("count", 1)))
                else:
                    return _Reply(400, {"error": f"unknown fault kind {kind!r}"})
            except (KeyError, TypeError, ValueError) as e:
                return _Reply(400, {"error": f"bad fault arguments: {e!r}"})
            return _Reply(200, {"ok": True})
        return _Reply(404, {"error": "unknown control path"})


class _Handler(BaseHTTPRequestHandler):
    emulator: XsoarEmulator
    protocol_version = "HTTP/1.1"
    server_version = "XsoarEmulator/1.0"
    timeout = 60
    disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms stall

    def log_message(self, fmt, *args) -> None:  # quiet: the emulator prints its own lines
        pass

    def setup(self) -> None:
        super().setup()
        with self.emulator.lock:
            self.emulator._conns.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.emulator.lock:
                self.emulator._conns.discard(self.connection)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def _read_body(self) -> bytes:
        n = self.headers.get("Content-Length")
        if n is None:
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                out = b""
                while True:
                    size = int(self.rfile.readline().strip().split(b";")[0], 16)
                    if size == 0:
                        self.rfile.readline()
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()
            return b""
        return self.rfile.read(int(n))

    def _serve(self, method: str) -> None:
        emu = self.emulator
        raw = self._read_body()
        family, version, path = emu.route(method, self.path)
        if family == "control":
            return self._send(emu.control(method, path, raw), family, "control", path)
        body = None
        if family == "api":
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            op = emu.api_op(method, path, body)
        else:
            op = "webhook"
        # faults that act before processing
        f = emu._take(op, ("reset",))
        if f is not None:
            emu._say(f"{method} {self.path} -> connection RESET before processing (fault)")
            self._abort(rst=True)
            return
        f = emu._take(op, ("slow",), when="before")
        if f is not None:
            emu._closing.wait(f.delay)
        f = emu._take(op, ("status",))
        if f is not None:
            body_out = f.body if f.body is not None else _err(f.status, f"injected HTTP {f.status}")
            hdrs = {"Retry-After": f.retry_after} if f.retry_after is not None else {}
            if f.body is None and f.status >= 500:      # what a reverse proxy in front of XSOAR sends
                from http import HTTPStatus
                try:
                    phrase = HTTPStatus(f.status).phrase
                except ValueError:
                    phrase = "Server Error"
                reply = _Reply(f.status, text=f"{f.status} {phrase}", headers=hdrs, note=f"injected {f.status}")
            elif isinstance(f.body, str):
                reply = _Reply(f.status, text=f.body, headers=hdrs, note=f"injected {f.status}")
            elif f.status == 401 and op == "webhook":
                reply = _Reply(401, text="Authorization failed.", note="injected 401", headers=hdrs)
            elif f.status == 403 and version == "6":
                reply = _Reply(403, CSRF_BODY, note="injected 403", headers=hdrs)
            else:
                reply = _Reply(f.status, body_out, headers=hdrs, note=f"injected {f.status}")
            return self._send(reply, family, op, path, version)
        # auth + processing
        if family == "api":
            reply = emu.check_api_auth(version, self.headers)
            if reply is None:
                reply = emu.api(method, path, raw)
        else:
            if method != "POST":
                reply = _Reply(405, text="Method Not Allowed")
            else:
                reply = emu.webhook(self.headers, raw)
        # faults that act after processing
        f = emu._take(op, ("drop",))
        if f is not None:
            emu._say(f"{method} {self.path} [{op}] processed ({reply.status} {reply.note}) -> connection "
                     f"DROPPED without an answer (fault)")
            with emu.lock:
                emu.stats["dropped"] += 1
                emu.log.append({"method": method, "path": path, "op": op, "status": None, "note": "dropped"})
            self._abort(rst=False)
            return
        f = emu._take(op, ("slow",), when="after")
        if f is not None:
            emu._closing.wait(f.delay)
        self._send(reply, family, op, path, version)

    def _abort(self, rst: bool) -> None:
        sock = self.connection
        try:
            if rst:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.close_connection = True

    def _send(self, reply: _Reply, family: str, op: str, path: str, version: str = "") -> None:
        emu = self.emulator
        if reply.text is not None:
            data = reply.text.encode()
            ctype = "text/plain; charset=utf-8"
        else:
            data = json.dumps(reply.body).encode()
            ctype = "application/json"
        with emu.lock:
            emu.stats[f"http_{reply.status}"] += 1
            emu.log.append({"method": self.command, "path": path, "op": op, "status": reply.status,
                            "note": reply.note, "version": version})
        if family != "control":
            v = f" v{version}" if version else ""
            emu._say(f"{self.command} {self.path}{v} [{op}] -> {reply.status} {reply.note}".rstrip())
        try:
            self.send_response(reply.status)
            for k, v in reply.headers.items():
                self.send_header(k, v)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self.close_connection = True


# =========================================================================== helpers
def _err(status: int, msg: str, ident: str = "bad_request") -> dict:
    return {"id": ident, "status": status, "title": msg.split(":")[0], "detail": msg, "error": msg,
            "encrypted": False, "multires": None}


def _walk(obj: Any, path: str):
    cur = obj
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _value(inc: dict, field: str):
    if field in inc:
        return inc[field]
    return (inc.get("CustomFields") or {}).get(field)


def _index_add(by: dict, fld: str, inc: dict) -> None:
    v = _value(inc, fld)
    if v is not None:
        by.setdefault(str(v).lower(), set()).add(inc["id"])


def _unquote(val: str) -> str:
    """A quoted query value without its quotes and backslash escapes."""
    return re.sub(r"\\(.)", r"\1", val[1:-1])


def _sort_key(v):
    if v is None:
        return (0, "")
    if isinstance(v, (int, float)):
        return (1, float(v), "")
    s = str(v)
    return (1, float(s), "") if s.isdigit() else (2, 0.0, s)


def _compile_query(q: str) -> list[Callable[[dict], bool]]:
    preds = []
    pos = 0
    q = q.strip()
    while pos < len(q):
        m = re.compile(r"\s*(and|AND)\s+").match(q, pos)
        if m and preds:
            pos = m.end()
            continue
        m = _CLAUSE.match(q, pos)
        if not m:
            raise _QueryError(f"cannot parse at {q[pos:pos + 30]!r} (supported: [-]field:\"value\" joined by and)")
        neg, fld, cmp, val = m.groups()
        quoted = val.startswith('"')
        if quoted:
            val = _unquote(val)
        if cmp:
            preds.append(_range(fld, cmp, val, bool(neg)))
        else:
            preds.append(_clause(fld, val, quoted, bool(neg)))
        pos = m.end()
    return preds


def _date(v) -> float | None:
    try:
        return datetime.fromisoformat(str(v).strip().replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _range(fld: str, cmp: str, val: str, neg: bool) -> Callable[[dict], bool]:
    """``field:>="2025-05-01T00:00:00Z"`` (dates, e.g. ``modified``/``created``/``closed``) or
    ``field:>=3`` (numbers)."""
    want = _date(val)
    if want is None:
        try:
            want = float(val)
        except ValueError:
            raise _QueryError(f"{fld}:{cmp}{val!r}: not a date or a number") from None
        conv = lambda v: float(v) if isinstance(v, (int, float)) or str(v).replace(".", "", 1).isdigit() else None
    else:
        conv = _date
    op = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b,
          "<": lambda a, b: a < b}[cmp]

    def match(inc: dict) -> bool:
        have = _value(inc, fld)
        h = conv(have) if have not in (None, "") else None
        return (h is not None and op(h, want)) != neg
    return match


def _clause(fld: str, val: str, quoted: bool, neg: bool) -> Callable[[dict], bool]:
    def match(inc: dict) -> bool:
        have = _value(inc, fld)
        if fld == "status":
            want = STATUS_NAMES.get(val.lower(), val)
            ok = str(have) == str(want)
        elif not quoted and val == "*":
            ok = have not in (None, "", [], {})
        elif not quoted and "*" in val:
            ok = have is not None and fnmatch.fnmatchcase(str(have).lower(), val.lower())
        else:
            ok = have is not None and str(have).lower() == val.lower()
        return ok != neg
    return match


# =========================================================================== standalone
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.emulators.xsoar",
                                 description="Cortex XSOAR emulator (REST API v6/v8 + Generic Webhook) for trying the relay.")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=8443)
    ap.add_argument("--api-key", help="the API key to accept (or --api-key-env)")
    ap.add_argument("--api-key-env", help="environment variable holding the API key")
    ap.add_argument("--auth-id", default="7", help="XSOAR 8 API key ID accepted on /xsoar/... paths (default 7)")
    ap.add_argument("--key-type", choices=("any", "standard", "advanced"), default="any")
    ap.add_argument("--webhook-header", help="webhook header auth, e.g. 'Authorization: Bearer s3cret'")
    ap.add_argument("--webhook-basic", help="webhook Basic auth as user:password")
    ap.add_argument("--duplication-key", help="webhook duplication_key (e.g. relay.dedup_key)")
    ap.add_argument("--empty-search", choices=("null", "list"), default="null")
    ap.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    ap.add_argument("--tls-key", help="private key for --tls-cert")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    key = a.api_key or (os.environ.get(a.api_key_env) if a.api_key_env else None)
    if not key:
        ap.error("give --api-key KEY or --api-key-env VAR")
    wh = None
    if a.webhook_header:
        name, sep, value = a.webhook_header.partition(":")
        if not sep:
            ap.error("--webhook-header must be 'Name: value'")
        wh = (f"_header:{name.strip()}", value.strip())
    elif a.webhook_basic:
        u, sep, p = a.webhook_basic.partition(":")
        if not sep:
            ap.error("--webhook-basic must be user:password")
        wh = (u, p)
    ctx = None
    if a.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
    emu = XsoarEmulator(a.host, a.port, api_key=key, auth_id=a.auth_id, key_type=a.key_type, webhook_auth=wh,
                        duplication_key=a.duplication_key, empty_search=a.empty_search, ssl_context=ctx,
                        out=None if a.quiet else (lambda s: print(s, flush=True)))
    emu.start()

    def _term(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, _term)
    print(f"XSOAR emulator on {emu.url}\n"
          f"  XSOAR 6:  url = \"{emu.url}\"  (Authorization: <key>)\n"
          f"  XSOAR 8:  url = \"{emu.url}\", auth_id = \"{a.auth_id}\"  (paths /xsoar/public/v1/... or /xsoar/...)\n"
          f"  webhook:  url = \"{emu.url}/instance/execute/relay\"  auth: "
          f"{'header ' + wh[0][8:] if wh and wh[0].startswith('_header:') else 'basic' if wh else 'none'}\n"
          f"  control:  GET {emu.url}/_emulator/incidents | /_emulator/stats ; POST /_emulator/fault "
          f"{{\"kind\":\"status\",\"status\":502,\"seconds\":30}}\n"
          f"Ctrl-C to stop.", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        emu.close()
        print(f"stopped; {len(emu.incidents())} incident(s); stats {dict(emu.stats)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

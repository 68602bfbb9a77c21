"""A CrowdStrike Falcon API emulator: a real HTTP server on loopback (stdlib only) with the
shapes of the reference notes (apis.md section 2).

Endpoints

* ``POST /oauth2/token`` (form ``client_id``, ``client_secret`` [, ``member_cid``]) -> **201**
  ``{"access_token", "token_type": "bearer", "expires_in"}`` + ``X-CS-Region``; a wrong
  client id/secret -> **403** ``access denied, invalid client``.  ``POST /oauth2/revoke``.
* ``GET /alerts/queries/alerts/v2`` (``filter`` FQL, ``sort`` ``field|asc|desc``, ``offset``,
  ``limit`` <= 10000 else 400, ``offset`` >= 10000 -> 400) -> composite ids,
  ``meta.pagination {offset, limit, total}``.
* ``POST /alerts/entities/alerts/v2`` ``{"composite_ids": [...]}`` (<= 1000) -> alerts;
  hidden/unknown ids are left out (fewer resources) with a 404 item in ``errors``.
* ``PATCH /alerts/entities/alerts/v3`` ``{"composite_ids", "action_parameters": [{"name",
  "value"}]}`` (``update_status`` new/in_progress/closed/reopened, ``append_comment`` into the
  alert's ``comments``, tags, assignment) -> the ids updated; unknown ids in ``errors``, all
  unknown -> 404; op ``update`` for faults; :attr:`updates` lists what was applied.
* ``/detects/queries/detects/v1`` + ``POST /detects/entities/summaries/GET/v1`` ``{"ids"}``:
  **405** unless ``legacy_detects=True``.

* ``POST /user-management/entities/users/GET/v1`` ``{"ids": [...]}`` -> the users of
  :meth:`add_user` (``uuid``, ``uid``, ``first_name``, ``last_name``); unknown ids are left out
  with a 404 item in ``errors``.
* Event Streams (apis.md 2.7): ``GET /sensors/entities/datafeed/v2?appId=&format=json`` ->
  one resource per partition (``dataFeedURL``, ``sessionToken {token, expiration}``,
  ``refreshActiveSessionURL``, ``refreshActiveSessionInterval``); ``GET
  /sensors/entities/datafeed/v1/<partition>?appId=&offset=`` with ``Authorization: Token
  <session token>`` -> a chunked stream of JSON lines, the partition's events from ``offset`` on,
  then new ones as :meth:`add_stream_event` adds them, until the session expires (the stream
  ends; a connect with an expired or unknown session token -> 401); ``POST
  /sensors/entities/datafeed-actions/v1/<partition>?action_name=refresh_active_stream_session&appId=``
  (Bearer) extends the partition's session by ``session_ttl``.  Faults: :meth:`drop_stream`
  (the next stream connections break after N events, without the last chunk),
  :meth:`expire_sessions` (every session ends now), ``fail(401, op="discover")``.

Every API call needs ``Authorization: Bearer <token>``; a missing, unknown, revoked or
expired token -> **401** ``access denied, invalid bearer token``.  Every answer carries the
``{"meta", "resources", "errors"}`` envelope, ``X-CS-TRACEID`` and ``X-RateLimit-Limit`` /
``X-RateLimit-Remaining`` (counting down per minute).

FQL subset: ``prop:[op]'value'`` terms joined by ``+`` (AND), ops ``>=``, ``>``, ``<=``,
``<``, ``!`` (not), ``*`` (wildcard) or none (equal); values quoted (``'..'``, ``".."``), bare,
or ``['a','b']``.  Timestamps compare as times (never as strings).  An unknown property or
a malformed term -> 400.  Remember: a raw ``+`` in a query string decodes to a space.

Fault injection (methods): ``fail(status, count=, op=, retry_after=, body=True)`` -- 429
with ``X-Ratelimit-Retryafter`` = ``"future:<s>"`` (epoch now + s), ``"past"``,
``"garbage"``, ``"ms:<s>"`` (epoch milliseconds) or None (absent); 5xx optionally with a
RetryAfter header far in the future (which a client must NOT honour) and without a JSON
body (``body=False``); 401/403 on API ops.  ``op``: token, query, entities, detects, any.
``revoke_tokens()`` (out-of-band revocation), ``token_ttl`` (short tokens expire mid-run),
``hide(ids)`` / ``unhide(ids)`` (entities answer fewer than asked), ``on_query`` hook
(called before each query page: add alerts while the client pages, so ``total`` changes).

Standalone::

    python -m tests.emulators.falcon --port 8081 --client-id ID --client-secret SECRET --alerts 25

prints the URL and one line per request; binds 127.0.0.1.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import secrets
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from ._server import LoopbackServer

__all__ = ["FalconEmulator", "iso", "parse_time"]

MAX_LIMIT = 10000
MAX_OFFSET = 10000
MAX_IDS = 1000
TIME_FIELDS = {"created_timestamp", "updated_timestamp", "timestamp", "crawled_timestamp", "first_behavior",
               "last_behavior", "date_updated"}
FILTER_FIELDS = TIME_FIELDS | {"product", "status", "severity", "type", "cid", "id", "aggregate_id", "platform",
                               "pattern_id", "composite_id", "detection_id", "max_severity", "show_in_ui"}


def iso(epoch: float) -> str:
    """Falcon style: microseconds sometimes, Z always."""
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(v: str) -> float:
    return datetime.fromisoformat(v.strip().replace("Z", "+00:00")).timestamp()


class _Fault:
    def __init__(self, status: int, count: int | None, op: str, retry_after: str | None, body: bool,
                 message: str | None) -> None:
        self.status, self.count, self.op, self.retry_after, self.body = status, count, op, retry_after, body
        self.message = message


class _FqlError(ValueError):
    pass


def _split_plus(s: str) -> list[str]:
    out, cur, q, depth = [], [], None, 0
    for ch in s:
        if q:
            cur.append(ch)
            if ch == q:
                q = None
            continue
        if ch in "'\"":
            q = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "+" and depth == 0:
            out.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    if q:
        raise _FqlError("unterminated quote")
    out.append("".join(cur))
    return out


_TERM = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*:\s*(>=|<=|>|<|!|~|\*)?\s*(.+?)\s*$", re.S)


def _values(raw: str) -> list[str]:
    raw = raw.strip()
    if raw.startswith("["):
        if not raw.endswith("]"):
            raise _FqlError(f"bad list {raw!r}")
        return [_unquote(x) for x in _split_commas(raw[1:-1])]
    return [_unquote(raw)]


def _split_commas(s: str) -> list[str]:
    out, cur, q = [], [], None
    for ch in s:
        if q:
            cur.append(ch)
            if ch == q:
                q = None
            continue
        if ch in "'\"":
            q = ch
        if ch == ",":
            out.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur))
    return [x for x in (p.strip() for p in out) if x]


def _unquote(v: str) -> str:
    v = v.strip()
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
        if v[0] in v[1:-1]:
            raise _FqlError(f"bad value {v!r}")
        return v[1:-1]
    if not v or " " in v:
        raise _FqlError(f"bad value {v!r}")
    return v


def compile_fql(text: str) -> list[Callable[[dict], bool]]:
    preds = []
    if not text or not text.strip():
        return preds
    for term in _split_plus(text):
        m = _TERM.match(term)
        if not m:
            raise _FqlError(f"cannot parse {term!r}")
        prop, op, raw = m.group(1), m.group(2) or "", m.group(3)
        if prop not in FILTER_FIELDS:
            raise _FqlError(f"unknown property {prop!r}")
        vals = _values(raw)
        preds.append(_pred(prop, op, vals))
    return preds


def _pred(prop: str, op: str, vals: list[str]) -> Callable[[dict], bool]:
    is_time = prop in TIME_FIELDS
    if is_time:
        try:
            tvals = [parse_time(v) for v in vals]
        except ValueError:
            raise _FqlError(f"{prop}: {vals!r} is not a time") from None

    def conv(obj):
        v = obj.get(prop)
        if v is None:
            return None
        if is_time:
            return parse_time(v) if isinstance(v, str) else float(v)
        return v

    def match(obj: dict) -> bool:
        v = conv(obj)
        if v is None:
            return False
        cmp_vals = tvals if is_time else vals
        if op in (">=", ">", "<=", "<"):
            c = cmp_vals[0]
            if not is_time:
                try:
                    c, v2 = float(c), float(v)
                except (TypeError, ValueError):
                    c, v2 = str(c), str(v)
            else:
                v2 = v
            return {">=": v2 >= c, ">": v2 > c, "<=": v2 <= c, "<": v2 < c}[op]
        sv = str(v).lower() if isinstance(v, bool) else str(v)
        if op == "!":
            return all(sv != str(c) for c in cmp_vals)
        if op == "*":
            return any(re.fullmatch(re.escape(str(c)).replace(r"\*", ".*"), sv) for c in cmp_vals)
        if op == "~":
            return any(str(c).lower() == sv.lower() for c in cmp_vals)
        if is_time:
            return any(v == c for c in cmp_vals)
        return any(sv == str(c) for c in cmp_vals)
    return match


class FalconEmulator(LoopbackServer):
    """See the module docstring.  ``start()``/``close()`` or ``with``; :attr:`url`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, client_id: str = "test-client",
                 client_secret: str = "test-secret", token_ttl: float = 1799, region: str = "us-1",
                 legacy_detects: bool = False, cid: str = "a1b2c3d4e5f60718293a4b5c6d7e8f90",
                 out: Callable[[str], None] | None = None, partitions: int = 1, session_ttl: float = 1800.0,
                 refresh_interval: float = 1800.0) -> None:
        self.host, self.port = host, port
        self.client_id, self.client_secret = client_id, client_secret
        self.token_ttl = token_ttl
        self.region = region
        self.legacy_detects = legacy_detects
        self.cid = cid
        self.out = out
        self.lock = threading.RLock()
        self.alerts: dict[str, dict] = {}
        self.detections: dict[str, dict] = {}
        self.hidden: set[str] = set()
        self.tokens: dict[str, float] = {}
        self.faults: list[_Fault] = []
        self.on_query: Callable[["FalconEmulator", dict], None] | None = None
        self.stats: Counter = Counter()
        self.log: list[tuple] = []          # (method, path, status)
        self.requests: list[dict] = []      # query params seen (tests)
        self.rate_limit = 6000
        self._window = (0, 0)               # (minute, used)
        self._seq = 0
        self.users: dict[str, dict] = {}
        self.updates: list[dict] = []       # PATCH /alerts/entities/alerts/v3 applied: {"id", "actions"}
        # Event Streams
        self.partitions = partitions
        self.session_ttl = session_ttl
        self.refresh_interval = refresh_interval
        self.stream: dict[int, list[dict]] = {p: [] for p in range(partitions)}
        self.sessions: dict[str, tuple[int, float]] = {}     # session token -> (partition, expiry)
        self.cond = threading.Condition(self.lock)
        self.drops: list[list] = []                          # [partition or None, after n events, count]
        self.stream_connects: list[tuple[int, int]] = []      # (partition, offset asked)
        self.refreshes: Counter = Counter()
        self._closing = False

    # ------------------------------------------------------------------ lifecycle
    thread_name = "falcon-emulator"

    def _before_close(self) -> None:
        with self.lock:
            self._closing = True
            self.cond.notify_all()

    def _handler_class(self) -> type:
        return type("Handler", (_Handler,), {"emulator": self})

    # ------------------------------------------------------------------ data
    def add_alert(self, created: float | None = None, **over) -> dict:
        """One EPP alert (Alerts API v2 shape); ``created`` epoch seconds (default now)."""
        with self.lock:
            self._seq += 1
            n = self._seq
            created = time.time() if created is None else created
            agent = uuid.UUID(int=0xC36C0000000000000000000000000000 + n).hex
            cid = over.pop("cid", self.cid)
            composite = over.pop("composite_id", f"{cid}:ind:{agent}:{6259000 + n}-20151-{7049 + n}")
            sev = over.pop("severity", 10 + (n * 17) % 90)
            a = {
                "composite_id": composite, "id": f"ind:{agent}:{6259000 + n}-20151-{7049 + n}",
                "aggregate_id": f"aggind:{agent}:{n // 3}", "cid": cid, "agent_id": agent,
                "created_timestamp": iso(created), "updated_timestamp": iso(created),
                "timestamp": iso(created - 1), "severity": sev,
                "severity_name": "Critical" if sev >= 80 else "High" if sev >= 60 else "Medium" if sev >= 40
                else "Low" if sev >= 20 else "Informational",
                "confidence": 80, "status": "new", "product": "epp", "type": "ldt", "platform": "Windows",
                "name": "CredentialDumping", "display_name": f"Credential dumping #{n}",
                "description": "A process attempted to dump credentials from LSASS memory.",
                "tactic": "Credential Access", "tactic_id": "TA0006", "technique": "OS Credential Dumping",
                "technique_id": "T1003", "objective": "Gain Access", "scenario": "credential_theft",
                "device": {"device_id": agent, "hostname": f"WS-{n:04d}", "local_ip": f"10.1.{n // 250}.{n % 250 + 1}",
                           "external_ip": "203.0.113.7", "platform_name": "Windows",
                           "os_version": "Windows 11", "mac_address": "00-15-5d-00-00-01"},
                "filename": "procdump64.exe", "filepath": "\\Device\\HarddiskVolume3\\Tools\\procdump64.exe",
                "cmdline": "procdump64.exe -ma lsass.exe", "sha256": "9f" * 32, "md5": "ab" * 16,
                "user_name": f"user{n}", "show_in_ui": True, "tags": [],
                "falcon_host_link": f"https://falcon.crowdstrike.com/activity-v2/detections/{composite}",
                "pattern_disposition": 2048,
            }
            a.update(over)
            self.alerts[a["composite_id"]] = a
            return a

    def add_alerts(self, n: int, start: float | None = None, step: float = 0.001, **over) -> list[dict]:
        start = time.time() - n * step if start is None else start
        return [self.add_alert(start + i * step, **over) for i in range(n)]

    def add_detection(self, first_behavior: float | None = None, **over) -> dict:
        with self.lock:
            self._seq += 1
            n = self._seq
            t = time.time() if first_behavior is None else first_behavior
            agent = uuid.UUID(int=0xD00D0000000000000000000000000000 + n).hex
            d = {
                "detection_id": f"ldt:{agent}:{1000 + n}", "cid": self.cid, "created_timestamp": iso(t + 1),
                "first_behavior": iso(t), "last_behavior": iso(t + 2), "max_severity": 70,
                "max_severity_displayname": "High", "max_confidence": 80, "status": "new",
                "device": {"device_id": agent, "hostname": f"SRV-{n:03d}", "local_ip": "10.2.0.5",
                           "platform_name": "Linux"},
                "behaviors": [{"behavior_id": str(5000 + n), "display_name": "Reverse shell", "tactic": "Execution",
                               "tactic_id": "TA0002", "technique": "Command and Scripting Interpreter",
                               "technique_id": "T1059", "severity": 70, "confidence": 80,
                               "timestamp": iso(t), "cmdline": "bash -i", "user_name": "root",
                               "description": "A reverse shell was started."}],
            }
            d.update(over)
            self.detections[d["detection_id"]] = d
            return d

    def add_user(self, uuid_: str, first: str, last: str, uid: str | None = None) -> dict:
        u = {"uuid": uuid_, "uid": uid or f"{first.lower()}.{last.lower()}@example.com", "first_name": first,
             "last_name": last, "cid": self.cid}
        with self.lock:
            self.users[uuid_] = u
        return u

    def add_stream_event(self, partition: int = 0, event_type: str = "EppDetectionSummaryEvent",
                         created: float | None = None, **event) -> dict:
        """One stream event on ``partition`` (its offset is the next of that partition); the
        detection summaries get ids, host and severity unless given."""
        with self.lock:
            seq = self.stream[partition]
            off = (seq[-1]["metadata"]["offset"] + 1) if seq else 1
            created = time.time() if created is None else created
            if event_type.endswith("DetectionSummaryEvent"):
                agent = uuid.UUID(int=0xA0000000000000000000000000000000 + partition * 100000 + off).hex
                ev = {"ComputerName": f"WS-{partition}-{off:04d}", "UserName": "jdoe", "Severity": 4,
                      "SeverityName": "High", "LocalIP": "10.0.0.5", "SensorId": agent,
                      "DetectName": "Suspicious Activity", "DetectDescription": "emulated detection",
                      "Tactic": "Execution", "Technique": "PowerShell",
                      "FalconHostLink": f"https://falcon.crowdstrike.com/activity/detections/detail/{agent}/{off}"}
                if event_type == "DetectionSummaryEvent":
                    ev["DetectId"] = f"ldt:{agent}:{off}"
                else:
                    ev["CompositeId"] = f"{self.cid}:ind:{agent}:{partition}{off:06d}-10197-{off}"
                ev.update(event)
            else:
                ev = dict(event)
            obj = {"metadata": {"customerIDString": self.cid, "offset": off, "eventType": event_type,
                                "eventCreationTime": int(created * 1000), "version": "1.0"}, "event": ev}
            seq.append(obj)
            self.cond.notify_all()
        return obj

    def drop_stream(self, after: int, *, partition: int | None = None, count: int = 1) -> None:
        """The next ``count`` stream connections (of ``partition``, or any) break after ``after``
        events: the connection closes without the terminating chunk."""
        with self.lock:
            self.drops.append([partition, after, count])

    def expire_sessions(self) -> None:
        """Every stream session ends now: open streams end, a connect with its token gets 401."""
        with self.lock:
            for tok, (p, _) in list(self.sessions.items()):
                self.sessions[tok] = (p, 0.0)
            self.cond.notify_all()

    def hide(self, ids) -> None:
        with self.lock:
            self.hidden.update(ids)

    def unhide(self, ids=None) -> None:
        with self.lock:
            if ids is None:
                self.hidden.clear()
            else:
                self.hidden.difference_update(ids)

    # ------------------------------------------------------------------ faults
    def fail(self, status: int, *, count: int | None = 1, op: str = "any", retry_after: str | None = None,
             body: bool = True, message: str | None = None) -> None:
        with self.lock:
            self.faults.append(_Fault(status, count, op, retry_after, body, message))

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def revoke_tokens(self) -> None:
        with self.lock:
            self.tokens.clear()

    def _take_fault(self, op: str) -> _Fault | None:
        with self.lock:
            for f in self.faults:
                if f.op in ("any", op) and (f.count is None or f.count > 0):
                    if f.count is not None:
                        f.count -= 1
                    return f
        return None

    def _say(self, msg: str) -> None:
        if self.out is not None:
            self.out(msg)

    # ------------------------------------------------------------------ request handling
    def _ratelimit_headers(self) -> dict:
        with self.lock:
            minute = int(time.time() // 60)
            m, used = self._window
            used = used + 1 if m == minute else 1
            self._window = (minute, used)
            return {"X-RateLimit-Limit": str(self.rate_limit),
                    "X-RateLimit-Remaining": str(max(0, self.rate_limit - used))}

    def handle(self, method: str, path: str, query: dict, headers, raw: bytes) -> tuple[int, Any, dict]:
        op = {"/oauth2/token": "token", "/oauth2/revoke": "revoke", "/alerts/queries/alerts/v2": "query",
              "/alerts/entities/alerts/v2": "entities", "/detects/queries/detects/v1": "query",
              "/detects/entities/summaries/GET/v1": "entities", "/sensors/entities/datafeed/v2": "discover",
              "/user-management/entities/users/GET/v1": "users", "/alerts/entities/alerts/v3": "update"}.get(path)
        if op is None and path.startswith("/sensors/entities/datafeed-actions/v1/"):
            op = "refresh"
        if op is None:
            return 404, _env(errors=[{"code": 404, "message": "Not Found"}]), {}
        self.stats[op] += 1
        hdrs = self._ratelimit_headers()
        if path.startswith("/detects/") and not self.legacy_detects:
            self.stats["detects_405"] += 1
            return 405, _env(errors=[{"code": 405, "message": "Method Not Allowed: the Detects API was "
                                                              "decommissioned; use the Alerts API"}]), hdrs
        f = self._take_fault(op)
        if f is not None:
            self.stats[f"fault_{f.status}"] += 1
            if f.status == 429:
                hdrs["X-RateLimit-Remaining"] = "0"
            ra = f.retry_after
            if ra is not None:
                now = time.time()
                if ra.startswith("future:"):
                    hdrs["X-Ratelimit-Retryafter"] = str(math.ceil(now + float(ra[7:])))
                elif ra.startswith("ms:"):
                    hdrs["X-Ratelimit-Retryafter"] = str(int((now + float(ra[3:])) * 1000))
                elif ra == "past":
                    hdrs["X-Ratelimit-Retryafter"] = str(int(now) - 120)
                elif ra == "garbage":
                    hdrs["X-Ratelimit-Retryafter"] = "soon-ish"
                else:
                    hdrs["X-Ratelimit-Retryafter"] = ra
            msg = f.message or {429: "API rate limit exceeded.", 401: "access denied, invalid bearer token",
                                403: "access denied, authorization failed"}.get(f.status, "Internal Server Error")
            body = _env(errors=[{"code": f.status, "message": msg}]) if f.body else b"<html>upstream error</html>"
            return f.status, body, hdrs
        if op == "token":
            return self._token(raw, hdrs)
        if op == "revoke":
            return 200, _env(), hdrs
        auth = headers.get("Authorization") or ""
        tok = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        with self.lock:
            exp = self.tokens.get(tok) if tok else None
            if exp is not None and exp < time.monotonic():
                self.tokens.pop(tok, None)
                exp = None
        if exp is None:
            self.stats["401"] += 1
            return 401, _env(errors=[{"code": 401, "message": "access denied, invalid bearer token"}]), hdrs
        if op == "query":
            return self._query(path, query, hdrs)
        if op == "discover":
            return self._discover(query, hdrs)
        if op == "refresh":
            return self._refresh(path, query, hdrs)
        if op == "users":
            return self._users(raw, hdrs)
        if op == "update":
            if method != "PATCH":
                return 405, _env(errors=[{"code": 405, "message": "Method Not Allowed"}]), hdrs
            return self._update(raw, hdrs)
        return self._entities(path, raw, hdrs)

    def _update(self, raw: bytes, hdrs: dict):
        """``PATCH /alerts/entities/alerts/v3`` ``{"composite_ids", "action_parameters": [{"name",
        "value"}]}``: update_status (new, in_progress, closed, reopened), append_comment, add_tag,
        remove_tag, assign_to_name, unassign.  Unknown ids come back in ``errors`` (404), all
        unknown -> HTTP 404.  Every applied update is in :attr:`updates`."""
        try:
            body = json.loads(raw or b"{}")
            ids = body["composite_ids"]
            acts = body["action_parameters"]
            if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids) or \
                    not isinstance(acts, list) or not acts or \
                    not all(isinstance(a, dict) and isinstance(a.get("name"), str) for a in acts):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return 400, _env(errors=[{"code": 400, "message": "body must be {\"composite_ids\": [...], "
                                                              "\"action_parameters\": [{\"name\", \"value\"}]}"}]), hdrs
        for a in acts:
            if a["name"] not in ("update_status", "append_comment", "add_tag", "remove_tag", "assign_to_name",
                                 "unassign", "show_in_ui"):
                return 400, _env(errors=[{"code": 400, "message": f"unknown action {a['name']!r}"}]), hdrs
            if a["name"] == "update_status" and a.get("value") not in ("new", "in_progress", "closed", "reopened"):
                return 400, _env(errors=[{"code": 400, "message": f"invalid status {a.get('value')!r}"}]), hdrs
        done, errors = [], []
        with self.lock:
            for i in ids:
                al = self.alerts.get(i)
                if al is None:
                    errors.append({"code": 404, "message": "alert not found", "id": i})
                    continue
                for a in acts:
                    n, v = a["name"], a.get("value")
                    if n == "update_status":
                        al["status"] = v
                    elif n == "append_comment":
                        al.setdefault("comments", []).append(str(v))
                    elif n == "add_tag":
                        al.setdefault("tags", []).append(str(v))
                    elif n == "remove_tag":
                        al["tags"] = [t for t in al.get("tags", []) if t != v]
                    elif n == "assign_to_name":
                        al["assigned_to_name"] = v
                    elif n == "unassign":
                        al["assigned_to_name"] = None
                al["updated_timestamp"] = iso(time.time())
                self.updates.append({"id": i, "actions": [dict(a) for a in acts]})
                done.append(i)
        self.stats["updated"] += len(done)
        return (200 if done else 404), _env(resources=done, errors=errors), hdrs

    # ------------------------------------------------------------------ users, streams
    def _users(self, raw: bytes, hdrs: dict):
        try:
            ids = json.loads(raw or b"{}")["ids"]
            if not isinstance(ids, list):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return 400, _env(errors=[{"code": 400, "message": 'body must be {"ids": [...]}'}]), hdrs
        with self.lock:
            out = [dict(self.users[i]) for i in ids if i in self.users]
        errors = [{"code": 404, "message": "user not found", "id": i} for i in ids if i not in self.users]
        return 200, _env(resources=out, errors=errors), hdrs

    def _discover(self, query: dict, hdrs: dict):
        app = (query.get("appId") or [""])[-1]
        if not app or len(app) > 32 or not app.isalnum():
            return 400, _env(errors=[{"code": 400, "message": "appId must be 1-32 letters and digits"}]), hdrs
        res = []
        now = time.time()
        with self.lock:
            for p in range(self.partitions):
                tok = secrets.token_urlsafe(18)
                self.sessions[tok] = (p, time.monotonic() + self.session_ttl)
                res.append({"dataFeedURL": f"{self.url}/sensors/entities/datafeed/v1/{p}?appId={app}",
                            "sessionToken": {"token": tok, "expiration": iso(now + self.session_ttl)},
                            "refreshActiveSessionURL": f"{self.url}/sensors/entities/datafeed-actions/v1/{p}"
                                                       f"?action_name=refresh_active_stream_session&appId={app}",
                            "refreshActiveSessionInterval": self.refresh_interval})
        return 200, _env(resources=res), hdrs

    def _refresh(self, path: str, query: dict, hdrs: dict):
        try:
            p = int(path.rsplit("/", 1)[1])
        except ValueError:
            p = -1
        if (query.get("action_name") or [""])[-1] != "refresh_active_stream_session" or not 0 <= p < self.partitions:
            return 400, _env(errors=[{"code": 400, "message": "unknown action or partition"}]), hdrs
        with self.lock:
            now = time.monotonic()
            live = 0
            for tok, (tp, exp) in list(self.sessions.items()):
                if tp == p and exp > now:
                    self.sessions[tok] = (tp, now + self.session_ttl)
                    live += 1
            self.refreshes[p] += 1
        if not live:
            return 404, _env(errors=[{"code": 404, "message": "no active stream session"}]), hdrs
        return 200, _env(), hdrs

    def serve_stream(self, h, path: str, query: dict) -> None:
        """``GET /sensors/entities/datafeed/v1/<partition>``: the chunked JSON-lines stream."""
        auth = h.headers.get("Authorization") or ""
        tok = auth[6:].strip() if auth.startswith("Token ") else None
        try:
            p = int(path.rsplit("/", 1)[1])
            offset = int((query.get("offset") or ["0"])[-1] or 0)
        except ValueError:
            p, offset = -1, 0
        with self.lock:
            sess = self.sessions.get(tok) if tok else None
            ok = sess is not None and sess[0] == p and sess[1] > time.monotonic()
            drop = None
            if ok:
                self.stream_connects.append((p, offset))
                for d in self.drops:
                    if d[2] > 0 and d[0] in (None, p):
                        d[2] -= 1
                        drop = d[1]
                        break
        if not ok:
            self.stats["stream_401"] += 1
            body = json.dumps(_env(errors=[{"code": 401, "message": "access denied, invalid session token"}])).encode()
            h.send_response(401)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
            self.log.append(("GET", path, 401))
            return
        self.stats["stream_open"] += 1
        self.log.append(("GET", path, 200))
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        sent = 0
        i = None
        try:
            while True:
                with self.lock:
                    seq = self.stream[p]
                    if i is None:
                        i = next((k for k, o in enumerate(seq) if o["metadata"]["offset"] >= offset), len(seq))
                    while i >= len(seq) and not self._closing and self.sessions.get(tok, (p, 0))[1] > time.monotonic():
                        self.cond.wait(0.2)
                    if self._closing or self.sessions.get(tok, (p, 0))[1] <= time.monotonic():
                        break
                    batch = seq[i:]
                    i = len(seq)
                for o in batch:
                    if drop is not None and sent >= drop:
                        self.stats["stream_dropped"] += 1
                        h.wfile.flush()
                        h.close_connection = True
                        import socket as _s
                        try:
                            h.connection.shutdown(_s.SHUT_RDWR)
                        except OSError:
                            pass
                        return
                    line = json.dumps(o).encode() + b"\r\n"
                    h.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    sent += 1
                h.wfile.flush()
            h.wfile.write(b"0\r\n\r\n")
            h.wfile.flush()
            self.stats["stream_ended"] += 1
        except OSError:
            self.stats["stream_client_gone"] += 1
        h.close_connection = True

    def _token(self, raw: bytes, hdrs: dict):
        form = {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            self.stats["token_403"] += 1
            return 403, _env(errors=[{"code": 403, "message": "access denied, invalid client"}]), hdrs
        tok = secrets.token_urlsafe(24)
        with self.lock:
            self.tokens[tok] = time.monotonic() + self.token_ttl
        self.stats["token_ok"] += 1
        hdrs["X-CS-Region"] = self.region
        ttl = int(self.token_ttl) if float(self.token_ttl).is_integer() else self.token_ttl
        return 201, {"access_token": tok, "token_type": "bearer", "expires_in": ttl}, hdrs

    def _query(self, path: str, query: dict, hdrs: dict):
        legacy = path.startswith("/detects/")
        q = {k: v[-1] for k, v in query.items()}
        self.requests.append(q)
        if self.on_query is not None:
            self.on_query(self, q)
        try:
            offset = int(q.get("offset", "0"))
            limit = int(q.get("limit", "9999" if legacy else "100"))
        except ValueError:
            return 400, _env(errors=[{"code": 400, "message": "offset/limit must be integers"}]), hdrs
        if limit < 1 or limit > (9999 if legacy else MAX_LIMIT):
            return 400, _env(errors=[{"code": 400, "message": f"limit must be 1..{MAX_LIMIT}"}]), hdrs
        if offset < 0 or offset >= MAX_OFFSET:
            return 400, _env(errors=[{"code": 400, "message": "offset must be less than 10000; use the "
                                                              "combined endpoint for more"}]), hdrs
        try:
            preds = compile_fql(q.get("filter", ""))
        except _FqlError as e:
            return 400, _env(errors=[{"code": 400, "message": f"Invalid filter: {e}"}]), hdrs
        sort = q.get("sort", "first_behavior|desc" if legacy else "created_timestamp|desc")
        m = re.fullmatch(r"([a-z_.]+)(?:[|.](asc|desc))?", sort)
        if not m:
            return 400, _env(errors=[{"code": 400, "message": f"invalid sort {sort!r}"}]), hdrs
        field, desc = m.group(1), m.group(2) == "desc"
        with self.lock:
            items = list((self.detections if legacy else self.alerts).values())
        items = [a for a in items if all(p(a) for p in preds)]
        if not legacy and q.get("include_hidden") == "false":
            items = [a for a in items if a.get("show_in_ui", True)]
        idf = "detection_id" if legacy else "composite_id"

        def key(a):
            v = a.get(field)
            if field in TIME_FIELDS and isinstance(v, str):
                v = parse_time(v)
            return (v is None, v if v is not None else 0, a[idf])
        items.sort(key=key, reverse=desc)
        page = [a[idf] for a in items[offset:offset + limit]]
        env = _env(resources=page)
        env["meta"]["pagination"] = {"offset": offset, "limit": limit, "total": len(items)}
        return 200, env, hdrs

    def _entities(self, path: str, raw: bytes, hdrs: dict):
        legacy = path.startswith("/detects/")
        key = "ids" if legacy else "composite_ids"
        try:
            body = json.loads(raw or b"{}")
            ids = body[key]
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return 400, _env(errors=[{"code": 400, "message": f"body must be {{\"{key}\": [...]}}"}]), hdrs
        if len(ids) > MAX_IDS:
            return 400, _env(errors=[{"code": 400, "message": f"at most {MAX_IDS} ids per request"}]), hdrs
        out, errors = [], []
        with self.lock:
            store = self.detections if legacy else self.alerts
            for i in ids:
                a = store.get(i)
                if a is None or i in self.hidden:
                    errors.append({"code": 404, "message": f"{'detection' if legacy else 'alert'} not found",
                                   "id": i})
                    continue
                out.append(json.loads(json.dumps(a)))
        self.stats["entities_returned"] += len(out)
        self.stats["entities_missing"] += len(errors)
        return 200, _env(resources=out, errors=errors), hdrs


def _env(resources=None, errors=None) -> dict:
    return {"meta": {"query_time": 0.004, "trace_id": str(uuid.uuid4()), "powered_by": "emulator"},
            "resources": resources if resources is not None else [], "errors": errors or []}


class _Handler(BaseHTTPRequestHandler):
    emulator: FalconEmulator
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args) -> None:
        pass

    def _serve(self, method: str) -> None:
        emu = self.emulator
        parts = urlsplit(self.path)
        if method == "GET" and parts.path.startswith("/sensors/entities/datafeed/v1/"):
            emu.serve_stream(self, parts.path, parse_qs(parts.query, keep_blank_values=True))
            return
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            status, body, hdrs = emu.handle(method, parts.path, parse_qs(parts.query, keep_blank_values=True),
                                            self.headers, raw)
        except Exception as e:  # an emulator bug must show as a 500, not a hung client
            status, body, hdrs = 500, _env(errors=[{"code": 500, "message": f"emulator error: {e!r}"}]), {}
        emu.log.append((method, parts.path, status))
        emu._say(f"{method} {parts.path} -> {status}")
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if not isinstance(body, bytes) else "text/html")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-CS-TRACEID", str(uuid.uuid4()))
        for k, v in hdrs.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PATCH(self) -> None:
        self._serve("PATCH")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.emulators.falcon", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--client-id", default="test-client")
    ap.add_argument("--client-secret", default="test-secret")
    ap.add_argument("--token-ttl", type=float, default=1799)
    ap.add_argument("--alerts", type=int, default=10, help="alerts created at start")
    ap.add_argument("--every", type=float, default=0, help="add one alert every N seconds (0: never)")
    ap.add_argument("--legacy-detects", action="store_true")
    a = ap.parse_args(argv)
    emu = FalconEmulator(a.host, a.port, client_id=a.client_id, client_secret=a.client_secret,
                         token_ttl=a.token_ttl, legacy_detects=a.legacy_detects,
                         out=lambda m: print(m, flush=True))
    emu.add_alerts(a.alerts)
    if a.legacy_detects:
        for _ in range(a.alerts):
            emu.add_detection()
    emu.start()
    print(f"Falcon emulator on {emu.url} (client_id {a.client_id})", flush=True)
    try:
        while True:
            time.sleep(a.every or 3600)
            if a.every:
                emu.add_alert()
    except KeyboardInterrupt:
        pass
    finally:
        emu.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""An IBM QRadar REST API emulator for offenses: a real HTTP server on loopback (stdlib
only) with the shapes of the reference notes (apis.md section 3).

* ``GET /api/siem/offenses`` -- ``filter`` (``=  != <> < > <= >=``, ``in (..)``, ``not in``,
  ``between a and b``, ``is [not] null``, ``and``/``or``/parentheses; unknown field or bad
  syntax -> **422** code 1010), ``sort`` (``+field,-field``; unknown field -> **422** 1030),
  ``fields`` (top-level names), ``Range: items=x-y`` header (zero-based, inclusive;
  malformed or reversed -> **422** code 1005 mentioning ``items=x-y``).  Answers carry
  ``Content-Range: items x-y/<total>``; a range past the end answers ``[]`` with
  ``Content-Range: items */<total>``.
* ``GET /api/siem/offenses/{id}``; ``POST /api/siem/offenses/{id}?status=CLOSED&closing_reason_id=N``
  (422 without a reason or with a reserved/deleted/unknown one, 409 code 1008 when already
  closed; ``closing_user`` becomes ``API_token:relay``), ``?status=OPEN|HIDDEN``,
  ``?assigned_to=<user>``; ``POST /api/siem/offenses/{id}/notes?note_text=..`` -> 201, ``GET``
  the notes (404 code 1002 for an unknown offense); ``GET /api/siem/offense_closing_reasons``
  (:attr:`closing_reasons`, id 4 reserved).  :attr:`writes` lists every update and note that
  took effect.  Fault ops: ``list``, ``offense`` (GET one), ``update`` (POST one), ``notes``.

* Offense context: ``GET /api/siem/source_addresses`` and ``/api/siem/local_destination_addresses``
  (``filter=id in (..)``, ``fields``, ``Range``), ``GET /api/analytics/rules/{id}`` (404 code 1002
  for an unknown rule); data from :attr:`source_addresses`, :attr:`destinations`, :attr:`rules`
  (the stock offense's ids 44, 7 and 100042 are there).
* Ariel: ``POST /api/ariel/searches?query_expression=<AQL>`` -> 201 ``{"search_id", "status":
  "WAIT"}``; ``GET /api/ariel/searches/{id}`` -> ``EXECUTE`` until it was polled
  :attr:`ariel_polls` times, then ``COMPLETED`` (never, with :attr:`ariel_hang`); ``GET
  /api/ariel/searches/{id}/results`` (``Range``) -> ``{"events": [...]}``, the events of
  :attr:`ariel_events` for the offense named by ``INOFFENSE(<id>)``; ``DELETE`` -> 202.

Auth: ``SEC: <token>``; missing -> **401** code 18 ``No SEC header present in request...``;
wrong -> 401 code 18 too.  ``versions`` (optional) lists the accepted ``Version`` headers;
another version -> 406 with the error envelope.  Every error has the QRadar envelope
``{"http_response": {"code", "message"}, "code", "description", "details", "message"}``.

Data and changes while polling: ``add_offense(**fields)``, ``update_offense(id, **changes)``
(bumps ``last_updated_time``), ``close_offense(id)``; ``last_updated_time`` comes from a
clock that never repeats a millisecond.  ``on_request`` (hook called before each list
request with the parsed parameters) changes data between pages.  Faults:
``fail(status, count=, op=)`` (500 code 1020 by default envelope).

Standalone::

    python -m tests.emulators.qradar --port 8082 --token SECTOKEN --offenses 30

prints the URL and one line per request; binds 127.0.0.1.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from ._server import LoopbackServer

__all__ = ["QradarEmulator", "compile_filter", "FilterError"]

FIELDS = ("id", "description", "assigned_to", "categories", "category_count", "close_time", "closing_user",
          "closing_reason_id", "credibility", "relevance", "severity", "magnitude", "destination_networks",
          "source_network", "device_count", "domain_id", "event_count", "flow_count", "inactive",
          "last_updated_time", "last_persisted_time", "first_persisted_time", "local_destination_count",
          "offense_source", "offense_type", "protected", "follow_up", "remote_destination_count", "rules",
          "source_address_ids", "source_count", "start_time", "status", "username_count",
          "local_destination_address_ids", "policy_category_count", "security_category_count")


def envelope(status: int, code: int, message: str, description: str = "") -> dict:
    reason = {401: "You are unauthorized to access the requested resource.",
              403: "Your account is not authorized to access the requested resource.",
              404: "We could not find the requested resource.", 406: "The requested content type is not acceptable.",
              409: "The request could not be completed due to a conflict.",
              422: "The request was well-formed but was unable to be followed due to semantic errors.",
              500: "Unexpected internal server error."}.get(status, "Error")
    return {"http_response": {"code": status, "message": reason}, "code": code, "description": description,
            "details": {}, "message": message}


NO_SEC = ("No SEC header present in request. Please provide it via \"SEC: token\". You may also use BASIC "
          "authentication parameters if this host supports it. e.g. \"Authorization: Basic base64Encoding\"")


# ----------------------------------------------------------------------------- filter
class FilterError(ValueError):
    pass


_TOK = re.compile(r"\s*(?:(?P<num>-?\d+(?:\.\d+)?)|(?P<str>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")|"
                  r"(?P<op><>|!=|\^=|<=|>=|=|<|>)|(?P<p>[(),])|(?P<word>[A-Za-z_][A-Za-z0-9_.]*))")


def _tokens(s: str) -> list[tuple[str, Any]]:
    out, i = [], 0
    s = s.rstrip()
    while i < len(s):
        m = _TOK.match(s, i)
        if not m or m.end() == i:
            raise FilterError(f"unexpected character at {i}: {s[i:i + 10]!r}")
        i = m.end()
        kind = m.lastgroup
        v = m.group(kind)
        if kind == "num":
            out.append(("val", float(v) if "." in v else int(v)))
        elif kind == "str":
            out.append(("val", v[1:-1]))
        elif kind == "word":
            out.append(("kw", v.lower()) if v.lower() in ("and", "or", "not", "in", "between", "is", "null")
                       else ("word", v))
        else:
            out.append((kind, v))
    return out


def compile_filter(text: str, fields=FIELDS) -> Callable[[dict], bool]:
    toks = _tokens(text)
    pos = [0]

    def peek(k=0):
        return toks[pos[0] + k] if pos[0] + k < len(toks) else (None, None)

    def take(kind=None, value=None):
        t = peek()
        if t[0] is None or (kind and t[0] != kind) or (value is not None and t[1] != value):
            raise FilterError(f"expected {value or kind} at token {pos[0]}, got {t[1]!r}")
        pos[0] += 1
        return t

    def value():
        t = peek()
        if t[0] == "val":
            pos[0] += 1
            return t[1]
        if t[0] == "word":     # bare word: OPEN, CLOSED
            pos[0] += 1
            return t[1]
        raise FilterError(f"expected a value, got {t[1]!r}")

    def expr():
        left = term()
        while peek() == ("kw", "or"):
            pos[0] += 1
            right = term()
            left = (lambda a, b: lambda o: a(o) or b(o))(left, right)
        return left

    def term():
        left = factor()
        while peek() == ("kw", "and"):
            pos[0] += 1
            right = factor()
            left = (lambda a, b: lambda o: a(o) and b(o))(left, right)
        return left

    def factor():
        t = peek()
        if t == ("kw", "not"):
            pos[0] += 1
            inner = factor()
            return lambda o: not inner(o)
        if t == ("p", "("):
            pos[0] += 1
            e = expr()
            take("p", ")")
            return e
        name = take("word")[1]
        if name.split(".")[0] not in fields:
            raise FilterError(f"unknown field {name!r}")

        def get(o, name=name):
            return o.get(name)
        t = peek()
        if t[0] == "op":
            pos[0] += 1
            v = value()
            op = t[1]
            return lambda o: _cmp(get(o), op, v)
        neg = False
        if t == ("kw", "not"):
            pos[0] += 1
            neg = True
            t = peek()
        if t == ("kw", "in"):
            pos[0] += 1
            take("p", "(")
            vals = [value()]
            while peek() == ("p", ","):
                pos[0] += 1
                vals.append(value())
            take("p", ")")
            return lambda o: (any(_cmp(get(o), "=", v) for v in vals)) != neg
        if t == ("kw", "between"):
            pos[0] += 1
            lo = value()
            take("kw", "and")
            hi = value()
            return lambda o: (_cmp(get(o), ">=", lo) and _cmp(get(o), "<=", hi)) != neg
        if t == ("kw", "is") and not neg:
            pos[0] += 1
            isnot = False
            if peek() == ("kw", "not"):
                pos[0] += 1
                isnot = True
            take("kw", "null")
            return lambda o: (get(o) is None) != isnot
        raise FilterError(f"expected an operator after {name!r}, got {t[1]!r}")

    if not toks:
        return lambda o: True
    f = expr()
    if pos[0] != len(toks):
        raise FilterError(f"unexpected {toks[pos[0]][1]!r} at token {pos[0]}")
    return f


def _cmp(a, op: str, b) -> bool:
    if a is None:
        return op in ("!=", "<>", "^=") and b is not None
    if isinstance(a, bool):
        a = str(a).lower()
    if isinstance(a, (int, float)) and isinstance(b, str):
        try:
            b = float(b)
        except ValueError:
            return False
    if isinstance(a, str) and not isinstance(b, str):
        b = str(b)
    try:
        return {"=": a == b, "!=": a != b, "<>": a != b, "^=": a != b, "<": a < b, ">": a > b,
                "<=": a <= b, ">=": a >= b}[op]
    except TypeError:
        return False


# ----------------------------------------------------------------------------- emulator
class _Fault:
    def __init__(self, status: int, count: int | None, op: str, code: int, message: str) -> None:
        self.status, self.count, self.op, self.code, self.message = status, count, op, code, message


class QradarEmulator(LoopbackServer):
    """See the module docstring.  ``start()``/``close()`` or ``with``; :attr:`url`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, token: str = "test-sec-token",
                 versions: tuple | None = None, out: Callable[[str], None] | None = None) -> None:
        self.host, self.port = host, port
        self.token = token
        self.versions = versions
        self.out = out
        self.lock = threading.RLock()
        self.offenses: dict[int, dict] = {}
        self.notes: dict[int, list] = {}
        self.faults: list[_Fault] = []
        self.on_request: Callable[["QradarEmulator", dict], None] | None = None
        self.stats: Counter = Counter()
        self.log: list[tuple] = []
        self.requests: list[dict] = []
        self._next_id = 1200
        self._last_ms = 0
        self.source_addresses: dict[int, dict] = {44: {"id": 44, "source_ip": "203.0.113.7", "magnitude": 5}}
        self.destinations: dict[int, dict] = {7: {"id": 7, "local_destination_ip": "10.0.0.5", "magnitude": 6}}
        self.rules: dict[int, dict] = {100042: {"id": 100042, "name": "Multiple Login Failures", "type": "EVENT",
                                                "enabled": True, "origin": "SYSTEM"}}
        self.ariel_events: dict[int, list] = {}
        self.ariel_polls = 2
        self.ariel_hang = False
        self.searches: dict[str, dict] = {}
        self.context_requests: list[dict] = []    # (the offense list requests are in requests)
        self.writes: list[dict] = []              # every offense POST (update/close) and note POST that took effect
        self.closing_reasons: dict[int, dict] = {
            1: {"id": 1, "text": "Non-Issue", "is_reserved": False, "is_deleted": False},
            2: {"id": 2, "text": "False-Positive, Tuned", "is_reserved": False, "is_deleted": False},
            3: {"id": 3, "text": "Policy Violation", "is_reserved": False, "is_deleted": False},
            4: {"id": 4, "text": "System Change (Reserved)", "is_reserved": True, "is_deleted": False}}

    thread_name = "qradar-emulator"

    def _handler_class(self) -> type:
        return type("Handler", (_Handler,), {"emulator": self})

    # ------------------------------------------------------------------ data
    def now_ms(self) -> int:
        with self.lock:
            self._last_ms = max(int(time.time() * 1000), self._last_ms + 1)
            return self._last_ms

    def add_offense(self, **over) -> dict:
        with self.lock:
            self._next_id += 1 + (self._next_id % 3 == 0)     # ids with gaps, like a real console
            oid = over.pop("id", self._next_id)
            now = self.now_ms()
            o = {
                "id": oid, "description": f"Multiple Login Failures for svc_{oid}\n",
                "magnitude": 1 + oid % 10, "severity": 1 + (oid * 7) % 10, "credibility": 3, "relevance": 4,
                "start_time": now - 300_000, "last_updated_time": now, "last_persisted_time": now,
                "first_persisted_time": now - 299_000, "close_time": None, "closing_user": None,
                "closing_reason_id": None, "offense_source": f"203.0.113.{oid % 250 + 1}", "offense_type": 0,
                "status": "OPEN", "source_address_ids": [44], "local_destination_address_ids": [7],
                "categories": ["User Login Failure"], "category_count": 1, "event_count": 12, "flow_count": 0,
                "device_count": 1, "domain_id": 0, "inactive": False, "protected": False, "follow_up": False,
                "assigned_to": None, "source_network": "other", "destination_networks": ["Net-10-172-192"],
                "rules": [{"id": 100042, "type": "CRE_RULE"}], "username_count": 1, "source_count": 1,
                "local_destination_count": 1, "remote_destination_count": 0, "policy_category_count": 0,
                "security_category_count": 1,
            }
            o.update(over)
            self.offenses[o["id"]] = o
            return dict(o)

    def add_offenses(self, n: int, **over) -> list[dict]:
        return [self.add_offense(**over) for _ in range(n)]

    def update_offense(self, oid: int, **changes) -> dict:
        with self.lock:
            o = self.offenses[oid]
            o.update(changes)
            if "last_updated_time" not in changes:
                o["last_updated_time"] = self.now_ms()
            if "event_count" not in changes:
                o["event_count"] = o.get("event_count", 0) + 1
            return dict(o)

    def close_offense(self, oid: int, closing_reason_id: int = 1) -> dict:
        now = self.now_ms()
        return self.update_offense(oid, status="CLOSED", close_time=now, closing_reason_id=closing_reason_id,
                                   closing_user="admin", last_updated_time=now)

    def fail(self, status: int = 500, *, count: int | None = 1, op: str = "any", code: int = 1020,
             message: str = "An error occurred while attempting to retrieve offenses.") -> None:
        with self.lock:
            self.faults.append(_Fault(status, count, op, code, message))

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

    # ------------------------------------------------------------------ handling
    def handle(self, method: str, path: str, query: dict, headers) -> tuple[int, Any, dict]:
        sec = headers.get("SEC")
        if not sec:
            self.stats["401"] += 1
            return 401, envelope(401, 18, NO_SEC), {}
        if sec != self.token:
            self.stats["401"] += 1
            return 401, envelope(401, 18, "Invalid authentication token."), {}
        ver = headers.get("Version")
        if self.versions is not None and ver not in self.versions:
            return 406, envelope(406, 1002, f"Version {ver!r} is not supported; supported: "
                                            f"{', '.join(self.versions)}"), {}
        q = {k: v[-1] for k, v in query.items()}
        ctx = self._context(method, path, q, headers)
        if ctx is not None:
            return ctx
        if path == "/api/siem/offense_closing_reasons" and method == "GET":
            with self.lock:
                return 200, [dict(r) for r in self.closing_reasons.values()], {}
        m = re.fullmatch(r"/api/siem/offenses(?:/(\d+)(/notes)?)?", path)
        if not m:
            return 404, envelope(404, 1001, f"No such endpoint {path}"), {}
        op = "list" if m.group(1) is None else ("notes" if m.group(2) else "offense")
        if op == "offense" and method == "POST":
            op = "update"                     # fault op of the status/assigned_to changes
        self.stats[op] += 1
        f = self._take_fault(op)
        if f is not None:
            self.stats[f"fault_{f.status}"] += 1
            return f.status, envelope(f.status, f.code, f.message), {}
        if op == "list" and method == "GET":
            return self._list(q, headers)
        oid = int(m.group(1)) if m.group(1) else None
        with self.lock:
            o = self.offenses.get(oid)
            if o is None:
                return 404, envelope(404, 1002, f"Offense {oid} does not exist"), {}
            if op == "notes":
                if method != "POST":
                    return 200, list(self.notes.get(oid, ())), {}
                text = q.get("note_text")
                if not text:
                    return 422, envelope(422, 1005, "note_text is required"), {}
                note = {"id": len(self.notes.get(oid, ())) + 1, "create_time": self.now_ms(), "username": "API",
                        "note_text": text}
                self.notes.setdefault(oid, []).append(note)
                self.writes.append({"op": "note", "id": oid, "note_text": text})
                return 201, note, {}
            if method == "POST":
                changes: dict = {}
                status = q.get("status")
                if status is not None and status not in ("OPEN", "HIDDEN", "CLOSED"):
                    return 422, envelope(422, 1005, f"status {status!r} is not OPEN, HIDDEN or CLOSED"), {}
                if status == "CLOSED":
                    if o["status"] == "CLOSED" or o.get("protected"):
                        return 409, envelope(409, 1008, "The request cannot be completed due to the state of "
                                                        "the offense"), {}
                    if not q.get("closing_reason_id"):
                        return 422, envelope(422, 1005, "closing_reason_id is required to close an offense"), {}
                    try:
                        reason = self.closing_reasons.get(int(q["closing_reason_id"]))
                    except ValueError:
                        reason = None
                    if reason is None or reason["is_reserved"] or reason["is_deleted"]:
                        return 422, envelope(422, 1005, f"closing_reason_id {q['closing_reason_id']} is not a "
                                                        f"usable closing reason"), {}
                    now = self.now_ms()
                    changes.update(status="CLOSED", close_time=now, closing_reason_id=reason["id"],
                                   closing_user="API_token:relay", last_updated_time=now)
                elif status is not None:
                    changes["status"] = status
                if "assigned_to" in q:
                    changes["assigned_to"] = q["assigned_to"] or None
                if not changes:
                    return 200, dict(o), {}
                self.writes.append({"op": "update", "id": oid, **{k: q[k] for k in q if k != "fields"}})
                return 200, self.update_offense(oid, **changes), {}
            return 200, dict(o), {}

    def _context(self, method: str, path: str, q: dict, headers):
        """The offense-context endpoints (addresses, rules, Ariel); None for another path."""
        table = {"/api/siem/source_addresses": ("addresses", self.source_addresses),
                 "/api/siem/local_destination_addresses": ("addresses", self.destinations)}.get(path)
        m_rule = re.fullmatch(r"/api/analytics/rules/(\d+)", path)
        m_ariel = re.fullmatch(r"/api/ariel/searches(?:/([\w-]+)(/results)?)?", path)
        if table is None and m_rule is None and m_ariel is None:
            return None
        op = table[0] if table else "rules" if m_rule else "ariel"
        self.stats[op] += 1
        self.context_requests.append(dict(q, path=path, method=method))
        f = self._take_fault(op)
        if f is not None:
            self.stats[f"fault_{f.status}"] += 1
            return f.status, envelope(f.status, f.code, f.message), {}
        if table is not None:
            rows = list(table[1].values())
            try:
                flt = compile_filter(q.get("filter", ""), fields=tuple(rows[0]) if rows else ("id",))
            except FilterError as e:
                return 422, envelope(422, 1010, f"Filter parameter is invalid: {e}"), {}
            with self.lock:
                page = [dict(r) for r in rows if flt(r)]
            if q.get("fields"):
                want = [x.strip() for x in q["fields"].split(",") if x.strip()]
                page = [{k: r.get(k) for k in want if k in r} for r in page]
            return 200, page, {"Content-Range": f"items 0-{max(len(page) - 1, 0)}/{len(page)}"}
        if m_rule is not None:
            r = self.rules.get(int(m_rule.group(1)))
            if r is None:
                return 404, envelope(404, 1002, f"Rule {m_rule.group(1)} does not exist"), {}
            return 200, dict(r), {}
        sid, results = m_ariel.group(1), m_ariel.group(2)
        with self.lock:
            if sid is None:
                if method != "POST":
                    return 200, list(self.searches), {}
                aql = q.get("query_expression") or ""
                m = re.search(r"INOFFENSE\((\d+)\)", aql)
                lim = re.search(r"LIMIT (\d+)", aql)
                if not m:
                    return 422, envelope(422, 2000, "query_expression is not a valid AQL query"), {}
                new = str(__import__("uuid").uuid4())
                self.searches[new] = {"search_id": new, "status": "WAIT", "polls": 0, "offense": int(m.group(1)),
                                      "limit": int(lim.group(1)) if lim else None, "aql": aql}
                return 201, {"search_id": new, "status": "WAIT"}, {}
            srch = self.searches.get(sid)
            if srch is None:
                return 404, envelope(404, 1002, f"Search {sid} does not exist"), {}
            if method == "DELETE":
                srch["status"] = "CANCELED"
                return 202, {"search_id": sid, "status": "CANCELED"}, {}
            if not results:
                srch["polls"] += 1
                if srch["status"] == "WAIT" or srch["status"] == "EXECUTE":
                    srch["status"] = "COMPLETED" if srch["polls"] >= self.ariel_polls and not self.ariel_hang \
                        else "EXECUTE"
                return 200, {"search_id": sid, "status": srch["status"], "progress": 100 if srch["status"] ==
                             "COMPLETED" else 50}, {}
            if srch["status"] != "COMPLETED":
                return 404, envelope(404, 1002, "The search is not complete"), {}
            events = list(self.ariel_events.get(srch["offense"], ()))[:srch["limit"] or None]
            m = re.fullmatch(r"\s*items=(\d+)-(\d+)\s*", headers.get("Range") or "")
            if m:
                events = events[int(m.group(1)):int(m.group(2)) + 1]
            return 200, {"events": events}, {}

    def _list(self, q: dict, headers):
        self.requests.append(dict(q, Range=headers.get("Range")))
        if self.on_request is not None:
            self.on_request(self, q)
        rng = headers.get("Range")
        start = end = None
        if rng is not None:
            m = re.fullmatch(r"\s*items=(\d+)-(\d+)\s*", rng)
            if not m or int(m.group(1)) > int(m.group(2)):
                return 422, envelope(422, 1005, f"Failed to parse Range argument {rng!r}: the Range header must "
                                                f"be of the form items=x-y"), {}
            start, end = int(m.group(1)), int(m.group(2))
        try:
            flt = compile_filter(q.get("filter", ""))
        except FilterError as e:
            return 422, envelope(422, 1010, f"Filter parameter is invalid: {e}"), {}
        keys = []
        for part in (q.get("sort") or "").split(","):
            part = part.strip()
            if not part:
                continue
            desc = part.startswith("-")
            name = part.lstrip("+-").strip()
            if name not in FIELDS:
                return 422, envelope(422, 1030, f"Sort parameter is invalid: unknown field {name!r}"), {}
            keys.append((name, desc))
        with self.lock:
            items = [dict(o) for o in self.offenses.values() if flt(o)]
        for name, desc in reversed(keys):
            items.sort(key=lambda o: (o.get(name) is None, o.get(name) if o.get(name) is not None else 0),
                       reverse=desc)
        total = len(items)
        hdrs = {}
        if start is None:
            page = items
            hdrs["Content-Range"] = f"items 0-{max(total - 1, 0)}/{total}" if total else "items */0"
        elif start >= total:
            page = []
            hdrs["Content-Range"] = f"items */{total}"
        else:
            page = items[start:end + 1]
            hdrs["Content-Range"] = f"items {start}-{start + len(page) - 1}/{total}"
        if q.get("fields"):
            want = [f.strip().split("(")[0] for f in q["fields"].split(",") if f.strip()]
            page = [{k: o.get(k) for k in want if k in o} for o in page]
        return 200, page, hdrs


class _Handler(BaseHTTPRequestHandler):
    emulator: QradarEmulator
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args) -> None:
        pass

    def _serve(self, method: str) -> None:
        emu = self.emulator
        parts = urlsplit(self.path)
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        try:
            status, body, hdrs = emu.handle(method, parts.path, parse_qs(parts.query, keep_blank_values=True),
                                            self.headers)
        except Exception as e:
            status, body, hdrs = 500, envelope(500, 1020, f"emulator error: {e!r}"), {}
        emu.log.append((method, parts.path, status))
        emu._say(f"{method} {self.path} Range={self.headers.get('Range')} -> {status} "
                 f"{hdrs.get('Content-Range', '')}")
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in hdrs.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.emulators.qradar", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--token", default="test-sec-token")
    ap.add_argument("--offenses", type=int, default=10)
    ap.add_argument("--every", type=float, default=0, help="update a random offense every N seconds (0: never)")
    a = ap.parse_args(argv)
    emu = QradarEmulator(a.host, a.port, token=a.token, out=lambda m: print(m, flush=True))
    emu.add_offenses(a.offenses)
    emu.start()
    print(f"QRadar emulator on {emu.url}", flush=True)
    try:
        i = 0
        while True:
            time.sleep(a.every or 3600)
            if a.every and emu.offenses:
                ids = sorted(emu.offenses)
                emu.update_offense(ids[i % len(ids)])
                i += 1
    except KeyboardInterrupt:
        pass
    finally:
        emu.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

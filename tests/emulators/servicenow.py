"""A ServiceNow Table API emulator (apis-wave2.md section 1): a real HTTP server on 127.0.0.1.

* ``POST /api/now[/v1|/v2]/table/<table>`` -> **201**, ``Location``, ``{"result": record}``; the
  record gets ``sys_id`` (32 hex), ``number`` (``INC0010001``...), ``sys_created_on``,
  ``sys_mod_count``, ``state`` ``"1"`` and ``priority`` from ``urgency``/``impact`` (base
  matrix; a written ``priority`` is overridden).  Values are stored as strings.
  ``sysparm_fields`` limits what comes back (unknown names dropped); ``X-no-response-body:
  true`` answers an empty body.
* ``GET .../table/<table>``: ``sysparm_query`` (``field=value`` / ``!=`` / ``LIKE`` /
  ``STARTSWITH`` joined by ``^``, ``ORDERBY``/``ORDERBYDESC``); **an invalid part (an unknown
  field) is ignored and the rest applied** (``invalid_query_returns_no_rows=True`` switches
  that); ``sysparm_limit``, ``sysparm_offset`` (negative -> 400), ``X-Total-Count``.  An empty
  result is 200 ``{"result": []}``, or **404 "No Record found" on the v1 API**.
* ``GET/PATCH/PUT/DELETE .../table/<table>/<sys_id>``; missing -> 404 ``No Record found``.
* Errors in the envelope ``{"error": {"message", "detail"}, "status": "failure"}``.
* Basic auth (``user``/``password``); wrong -> 401 ``User Not Authenticated``.
* ``mandatory``: fields a data policy requires on create -> 403 ``Data Policy Exception``.
* ``hibernating``: every request answers 200 with the "Instance Hibernating page" HTML.
* ``rate_limit=(n, retry_after)``: after ``n`` requests, 429 + ``Retry-After`` + ``X-RateLimit-*``.

Faults (tests/emulators/_faults.py); ops: ``create``, ``search``, ``get``, ``update``, ``delete``.
"""
from __future__ import annotations

import base64
import itertools
import re
import time
import uuid

from ._faults import FaultyEmulator, Reply, Request

__all__ = ["ServiceNowEmulator"]

_TABLE = re.compile(r"/api/now(?:/(v1|v2))?/table/([A-Za-z0-9_]+)(?:/([0-9a-f]{32}))?\Z")
KNOWN_FIELDS = {"sys_id", "number", "short_description", "description", "urgency", "impact", "priority", "state",
                "category", "subcategory", "assignment_group", "caller_id", "correlation_id", "correlation_display",
                "sys_created_on", "sys_updated_on", "sys_mod_count", "close_code", "close_notes", "work_notes",
                "cmdb_ci", "active"}
PRIORITY = {("1", "1"): "1", ("1", "2"): "2", ("2", "1"): "2", ("1", "3"): "3", ("2", "2"): "3", ("3", "1"): "3",
            ("2", "3"): "4", ("3", "2"): "4", ("3", "3"): "5"}
HIBERNATING = "<html><head><title>Instance Hibernating page</title></head><body>Your instance is hibernating</body></html>"


def _err(status: int, message: str, detail: str = "") -> Reply:
    return Reply(status, {"error": {"message": message, "detail": detail}, "status": "failure"}, note=message)


class ServiceNowEmulator(FaultyEmulator):
    thread_name = "servicenow-emulator"

    def __init__(self, *, user: str = "relay", password: str = "snow-pass", mandatory: tuple = (),
                 invalid_query_returns_no_rows: bool = False, **kw) -> None:
        super().__init__(**kw)
        self.user, self.password = user, password
        self.mandatory = tuple(mandatory)
        self.invalid_query_returns_no_rows = invalid_query_returns_no_rows
        self.hibernating = False
        self.rate_limit: tuple[int, int] | None = None
        self._served = 0
        self.records: dict[str, dict] = {}       # sys_id -> record (incident table)
        self._number = itertools.count(10001)

    # ------------------------------------------------------------------ observation
    def by_correlation(self) -> dict[str, list[dict]]:
        with self.lock:
            out: dict[str, list[dict]] = {}
            for r in self.records.values():
                if r.get("correlation_id"):
                    out.setdefault(r["correlation_id"], []).append(dict(r))
            return out

    # ------------------------------------------------------------------ requests
    def op_of(self, req: Request) -> str:
        m = _TABLE.match(req.path)
        if not m:
            return "other"
        if m.group(3):
            return {"GET": "get", "DELETE": "delete"}.get(req.method, "update")
        return "create" if req.method == "POST" else "search"

    def handle(self, req: Request) -> Reply:
        if self.hibernating:
            return Reply(200, text=HIBERNATING, headers={"Content-Type": "text/html"}, note="hibernating")
        m = _TABLE.match(req.path)
        if not m:
            return _err(400, "Requested URI does not represent any resource", req.path)
        auth = req.headers.get("Authorization") or ""
        want = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if auth != want:
            return _err(401, "User Not Authenticated", "Required to provide Auth information")
        with self.lock:
            self._served += 1
            if self.rate_limit and self._served > self.rate_limit[0]:
                r = _err(429, "Rate limit exceeded", f"Rate limit of {self.rate_limit[0]} requests per hour for "
                                                     f"Table API exceeded")
                r.headers = {"Retry-After": str(self.rate_limit[1]), "X-RateLimit-Limit": str(self.rate_limit[0]),
                             "X-RateLimit-Reset": str(int(time.time()) + self.rate_limit[1]),
                             "X-RateLimit-Rule": uuid.uuid4().hex}
                return r
            version, table, sys_id = m.groups()
            if table != "incident":
                return _err(400, "Invalid table " + table)
            if sys_id:
                return self._one(req, sys_id)
            if req.method == "POST":
                return self._create(req, table)
            if req.method == "GET":
                return self._list(req, version)
            return _err(405, "Method not Supported")

    def _fields(self, req: Request, rec: dict) -> dict:
        f = req.query.get("sysparm_fields")
        if not f:
            return dict(rec)
        return {k: rec[k] for k in f.split(",") if k in rec}

    def _create(self, req: Request, table: str) -> Reply:
        try:
            body = req.json()
        except ValueError:
            return _err(400, "Exception while reading request", "Cannot decode: java.io.StringReader")
        if not isinstance(body, dict):
            return _err(400, "Exception while reading request", "The payload is not valid JSON.")
        missing = [f for f in self.mandatory if not body.get(f)]
        if missing:
            return _err(403, "Operation Failed", "Data Policy Exception: \n\tThe following fields are mandatory: "
                        + ", ".join(missing))
        now = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        rec = {k: ("" if v is None else (v if isinstance(v, str) else str(v))) for k, v in body.items()
               if k in KNOWN_FIELDS}
        sid = uuid.uuid4().hex
        rec.update(sys_id=sid, number=f"INC{next(self._number):07d}", state=rec.get("state") or "1",
                   sys_created_on=now, sys_updated_on=now, sys_mod_count="0", active="true")
        rec["priority"] = PRIORITY.get((rec.get("urgency", "3"), rec.get("impact", "3")), "5")
        self.records[sid] = rec
        hdrs = {"Location": f"{self.url}/api/now/table/{table}/{sid}"}
        if (req.headers.get("X-no-response-body") or "").lower() == "true":
            return Reply(201, None, headers=hdrs, note=f"created {rec['number']}")
        return Reply(201, {"result": self._fields(req, rec)}, headers=hdrs, note=f"created {rec['number']}")

    def _list(self, req: Request, version: str | None) -> Reply:
        try:
            offset = int(req.query.get("sysparm_offset", "0"))
            limit = int(req.query.get("sysparm_limit", "10000"))
        except ValueError:
            return _err(400, "Invalid sysparm_limit or sysparm_offset")
        if offset < 0:
            return _err(400, "Invalid offset", "sysparm_offset must be >= 0")
        preds, order, invalid = _query(req.query.get("sysparm_query", ""))
        if invalid and self.invalid_query_returns_no_rows:
            rows = []
        else:
            rows = [r for r in self.records.values() if all(p(r) for p in preds)]
        for fld, desc in reversed(order):
            rows.sort(key=lambda r: r.get(fld, ""), reverse=desc)
        total = len(rows)
        rows = rows[offset:offset + limit]
        if not rows and version == "v1":
            return _err(404, "No Record found", "Records matching query not found. Check query parameter or "
                                                "offset parameter")
        return Reply(200, {"result": [self._fields(req, r) for r in rows]},
                     headers={"X-Total-Count": str(total)}, note=f"{len(rows)} of {total}")

    def _one(self, req: Request, sys_id: str) -> Reply:
        rec = self.records.get(sys_id)
        if rec is None:
            return _err(404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval")
        if req.method == "GET":
            return Reply(200, {"result": self._fields(req, rec)})
        if req.method == "DELETE":
            del self.records[sys_id]
            return Reply(204, None, note="deleted")
        try:
            body = req.json()
        except ValueError:
            return _err(400, "Exception while reading request")
        if not isinstance(body, dict):
            return _err(400, "Exception while reading request")
        for k, v in body.items():
            if k in KNOWN_FIELDS and k not in ("sys_id", "number", "sys_created_on"):
                rec[k] = "" if v is None else str(v)
        rec["priority"] = PRIORITY.get((rec.get("urgency", "3"), rec.get("impact", "3")), "5")
        rec["sys_mod_count"] = str(int(rec["sys_mod_count"]) + 1)
        rec["sys_updated_on"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        return Reply(200, {"result": self._fields(req, rec)}, note=f"updated {rec['number']}")


_PART = re.compile(r"([a-z_]+)(!=|=|LIKE|STARTSWITH|ENDSWITH)(.*)\Z", re.S)


def _query(q: str):
    """-> (predicates, [(field, desc)], invalid part seen)."""
    preds, order, invalid = [], [], False
    for part in q.split("^") if q else ():
        if part.startswith("ORDERBYDESC"):
            order.append((part[11:], True))
            continue
        if part.startswith("ORDERBY"):
            order.append((part[7:], False))
            continue
        m = _PART.match(part)
        if not m or m.group(1) not in KNOWN_FIELDS:
            invalid = True          # ServiceNow drops it and applies the rest
            continue
        f, op, v = m.groups()
        preds.append({"=": lambda r, f=f, v=v: r.get(f, "") == v, "!=": lambda r, f=f, v=v: r.get(f, "") != v,
                      "LIKE": lambda r, f=f, v=v: v in r.get(f, ""),
                      "STARTSWITH": lambda r, f=f, v=v: r.get(f, "").startswith(v),
                      "ENDSWITH": lambda r, f=f, v=v: r.get(f, "").endswith(v)}[op])
    return preds, order, invalid

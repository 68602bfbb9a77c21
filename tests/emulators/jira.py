"""A Jira REST emulator, Cloud or Server/Data Center (apis-wave2.md section 2), on 127.0.0.1.

* ``POST /rest/api/2|3/issue`` ``{"fields": {...}}`` -> **201** ``{"id", "key", "self"}``.  Needs
  ``project.key`` (a known project), ``issuetype.name``, ``summary`` (at most 255); labels
  without spaces; API v3 refuses a string ``description`` (400 ``Operation value must be an
  Atlassian Document``); a field not in ``screen`` -> 400 ``Field 'x' cannot be set...``.
* ``PUT /rest/api/2|3/issue/<key>`` -> 204; ``GET .../issue/<key>``; missing -> 404.
* Search: ``POST|GET /rest/api/3/search/jql`` (Cloud: ``{"issues", "nextPageToken", "isLast"}``,
  no ``total``) and ``/rest/api/2/search`` (Server/DC: ``{"startAt", "maxResults", "total",
  "issues"}``; **Cloud answers 410** there; DC has no ``search/jql``: 404).  JQL subset:
  ``project = "X"``, ``labels = "Y"``, ``cf[N] ~ "text"`` joined by AND, ``ORDER BY created
  ASC|DESC``.  ``search_lag``: a created issue shows in searches only that many seconds later
  (Cloud's eventual consistency).
* Auth: Basic ``email:token`` or ``Authorization: Bearer <PAT>``; wrong -> 401.
* Errors: ``{"errorMessages": [...], "errors": {...}}``.

Faults (tests/emulators/_faults.py); ops: ``create``, ``update``, ``get``, ``search``.
"""
from __future__ import annotations

import base64
import itertools
import re
import time

from ._faults import FaultyEmulator, Reply, Request

__all__ = ["JiraEmulator"]

_ISSUE = re.compile(r"/rest/api/(2|3)/issue(?:/([A-Z][A-Z0-9_]*-\d+|\d+))?\Z")
_CLAUSE = re.compile(r'\s*(project|labels|cf\[(\d+)\])\s*(=|~)\s*"((?:[^"\\]|\\.)*)"\s*', re.I)


def _err(status: int, *messages: str, errors: dict | None = None) -> Reply:
    return Reply(status, {"errorMessages": list(messages), "errors": errors or {}},
                 note=(messages[0] if messages else str(errors))[:60])


class JiraEmulator(FaultyEmulator):
    thread_name = "jira-emulator"

    def __init__(self, *, cloud: bool = True, projects: tuple = ("SEC",), email: str = "soc@example.test",
                 token: str = "jira-token", pat: str | None = None, search_lag: float = 0.0,
                 screen: tuple | None = None, **kw) -> None:
        super().__init__(**kw)
        self.cloud = cloud
        self.projects = set(projects)
        self.email, self.token, self.pat = email, token, pat
        self.search_lag = search_lag
        self.screen = set(screen) if screen is not None else None
        self.issues: dict[str, dict] = {}       # key -> {"id", "key", "fields", "created_at"}
        self._ids = itertools.count(10000)
        self._nums: dict[str, itertools.count] = {}

    def by_label(self, prefix: str = "relay-") -> dict[str, list[dict]]:
        with self.lock:
            out: dict[str, list[dict]] = {}
            for i in self.issues.values():
                for lab in i["fields"].get("labels") or ():
                    if lab.startswith(prefix):
                        out.setdefault(lab, []).append(i)
            return out

    def op_of(self, req: Request) -> str:
        m = _ISSUE.match(req.path)
        if m:
            if m.group(2):
                return "get" if req.method == "GET" else "update"
            return "create"
        if "/search" in req.path:
            return "search"
        return "other"

    def _authed(self, req: Request) -> bool:
        a = req.headers.get("Authorization") or ""
        if self.pat is not None and a == f"Bearer {self.pat}":
            return True
        return a == "Basic " + base64.b64encode(f"{self.email}:{self.token}".encode()).decode()

    def handle(self, req: Request) -> Reply:
        if not self._authed(req):
            return Reply(401, text="Client must be authenticated to access this resource.", note="unauthenticated")
        with self.lock:
            m = _ISSUE.match(req.path)
            if m:
                ver, key = m.groups()
                if key is None:
                    return self._create(req, ver) if req.method == "POST" else _err(405, "Method Not Allowed")
                return self._one(req, ver, key)
            if req.path == "/rest/api/3/search/jql":
                if not self.cloud:
                    return _err(404, "null for uri: " + req.path)
                return self._search(req, cloud=True)
            if req.path in ("/rest/api/2/search", "/rest/api/3/search"):
                if self.cloud:
                    return _err(410, "The requested API has been removed. Please migrate to the /rest/api/3/search/jql "
                                     "API. A full migration guideline is available at https://developer.atlassian.com"
                                     "/changelog/#CHANGE-2046")
                return self._search(req, cloud=False)
            return _err(404, "null for uri: " + req.path)

    def _check_fields(self, fields: dict, ver: str, create: bool) -> Reply | None:
        errors = {}
        if self.screen is not None:
            for k in fields:
                if k not in self.screen and k not in ("project", "issuetype", "summary"):
                    errors[k] = f"Field '{k}' cannot be set. It is not on the appropriate screen, or unknown."
        if ver == "3" and "description" in fields and not isinstance(fields["description"], dict):
            return _err(400, errors={"description": "Operation value must be an Atlassian Document (see the Atlassian "
                                                    "Document Format)"})
        if create:
            if (fields.get("project") or {}).get("key") not in self.projects:
                errors["project"] = "Specify a valid project ID or key"
            if not (fields.get("issuetype") or {}).get("name"):
                errors["issuetype"] = "Specify an issue type"
            if not fields.get("summary"):
                errors["summary"] = "You must specify a summary of the issue."
        if "summary" in fields and len(str(fields["summary"])) > 255:
            errors["summary"] = "Summary must be less than 255 characters."
        for lab in fields.get("labels") or ():
            if not isinstance(lab, str) or " " in lab:
                errors["labels"] = "The label can't contain spaces."
        return _err(400, errors=errors) if errors else None

    def _create(self, req: Request, ver: str) -> Reply:
        try:
            body = req.json()
        except ValueError:
            return _err(400, "Unexpected character in the JSON body")
        fields = (body or {}).get("fields") if isinstance(body, dict) else None
        if not isinstance(fields, dict):
            return _err(400, "Issue must contain fields")
        bad = self._check_fields(fields, ver, True)
        if bad is not None:
            return bad
        proj = fields["project"]["key"]
        n = next(self._nums.setdefault(proj, itertools.count(1)))
        key, iid = f"{proj}-{n}", str(next(self._ids))
        now = time.time()
        self.issues[key] = {"id": iid, "key": key, "fields": dict(fields, created=_iso(now)), "created_at": now}
        return Reply(201, {"id": iid, "key": key, "self": f"{self.url}/rest/api/{ver}/issue/{iid}"}, note=f"created {key}")

    def _one(self, req: Request, ver: str, key: str) -> Reply:
        issue = self.issues.get(key) or next((i for i in self.issues.values() if i["id"] == key), None)
        if issue is None:
            return _err(404, "Issue does not exist or you do not have permission to see it.")
        if req.method == "GET":
            return Reply(200, {"id": issue["id"], "key": issue["key"], "fields": issue["fields"]})
        if req.method != "PUT":
            return _err(405, "Method Not Allowed")
        try:
            body = req.json()
        except ValueError:
            return _err(400, "Unexpected character in the JSON body")
        fields = (body or {}).get("fields") or {}
        bad = self._check_fields(fields, ver, False)
        if bad is not None:
            return bad
        issue["fields"].update(fields)
        issue["updates"] = issue.get("updates", 0) + 1
        return Reply(204, None, note=f"updated {issue['key']}")

    def _search(self, req: Request, cloud: bool) -> Reply:
        try:
            q = req.json() if req.method == "POST" else dict(req.query)
        except ValueError:
            return _err(400, "Unexpected character in the JSON body")
        jql = (q or {}).get("jql") or ""
        try:
            preds, desc = _jql(jql)
        except ValueError as e:
            return _err(400, f"Error in the JQL Query: {e}")
        now = time.time()
        hits = [i for i in self.issues.values() if now - i["created_at"] >= self.search_lag and all(p(i) for p in preds)]
        hits.sort(key=lambda i: (i["created_at"], int(i["id"])), reverse=desc)
        mx = int((q or {}).get("maxResults") or 50)
        want = (q or {}).get("fields") or []
        if isinstance(want, str):
            want = want.split(",")
        out = [{"id": i["id"], "key": i["key"], "self": f"{self.url}/rest/api/2/issue/{i['id']}",
                "fields": {k: i["fields"].get(k) for k in want if k in i["fields"]}} for i in hits[:mx]]
        if cloud:
            return Reply(200, {"issues": out, "isLast": len(hits) <= mx, "nextPageToken": None}, note=f"{len(out)} hits")
        return Reply(200, {"startAt": 0, "maxResults": mx, "total": len(hits), "issues": out}, note=f"{len(out)} hits")


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000+0000", time.gmtime(t)) if t else ""


def _jql(jql: str):
    q, desc = jql, False
    m = re.search(r"\s+ORDER\s+BY\s+created(\s+(ASC|DESC))?\s*\Z", q, re.I)
    if m:
        desc = (m.group(2) or "").upper() == "DESC"
        q = q[:m.start()]
    preds = []
    for part in re.split(r"\s+AND\s+", q.strip(), flags=re.I) if q.strip() else ():
        m = _CLAUSE.fullmatch(part)
        if not m:
            raise ValueError(f"cannot parse {part!r}")
        fld, cf, op, val = m.groups()
        val = re.sub(r"\\(.)", r"\1", val)
        fld = fld.lower()
        if fld == "project":
            preds.append(lambda i, v=val: i["fields"].get("project", {}).get("key") == v)
        elif fld == "labels":
            preds.append(lambda i, v=val: v in (i["fields"].get("labels") or ()))
        else:   # cf[N] ~ "text": a text search (contains, case-insensitive: fuzzy like Jira's)
            preds.append(lambda i, n=cf, v=val: v.lower() in str(i["fields"].get(f"customfield_{n}") or "").lower())
    return preds, desc

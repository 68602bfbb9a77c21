"""A RhythmX REST API emulator (apis-wave2.md section 7; seed 004 "SOAR Integration Guide"): a
real HTTP server on 127.0.0.1.

Auth (7.1, 7.4):

* ``POST /api/login`` ``{"username", "password"}`` -> 200 ``{"token", "expires_in"}`` (a JWT:
  ``header.payload.signature``, ``exp`` in the payload, ``token_ttl`` seconds; short in tests);
  bad credentials -> 401.  ``Authorization: Bearer <jwt>`` on every ``/api/...`` path; an
  unknown or expired token -> 401 ``{"error": "token expired"}``.
* ``X-API-Key: smk_...``: valid only on ``/api/v1/feed/*`` (read-only); missing or wrong -> 401;
  an API key on any other path (e.g. the PATCH) -> 403.

Endpoints (7.2):

* ``GET /api/incidents`` -> ``{"incidents": [...], "total"}`` and ``GET /api/v1/feed/incidents``
  -> ``{"data": [...]}`` (``total`` only with ``feed_total=True``): ``since`` (on ``created_at``),
  ``updated_since`` (on ``updated_at``), ``status``, ``entity``, ``limit`` (default 100, max
  1000), ``offset``; sorted by ``sort_by`` (``created_at`` default, or ``updated_at``), then id.
  ``inclusive=False`` makes ``since``/``updated_since`` exclusive (7.4: unknown; both emulated).
  A bad timestamp or limit -> 400.
* ``GET /api/incidents/{id}``, ``GET /api/cases/{id}`` (with ``alerts``), ``GET /api/cases/search``
  (``entity_name``, ``status``), ``GET /api/v1/feed/cases`` (``since``, ``severity``,
  ``case_type``, ``limit``, ``offset``); unknown id -> 404.
* ``PATCH /api/incidents/{id}/status`` ``{"status", "notes"}`` (Bearer only): status one of
  ``OPEN|IN_PROGRESS|CLOSED|FALSE_POSITIVE`` (else 422); unknown id 404; the same status again ->
  200 (a no-op, still recorded); bumps ``updated_at``.  :attr:`patches` lists every PATCH that
  was applied (id, status, notes).

Faults (tests/emulators/_faults.py; ops ``login``, ``feed``, ``list``, ``get``, ``cases``,
``patch``): ``fail(401|429|5xx, ...)``, ``slow(...)``, ``drop_after_processing()``,
``reset_before()``; :meth:`expire_tokens` invalidates every JWT issued so far.
"""
from __future__ import annotations

import base64
import hmac
import itertools
import json
import re
import secrets
import time
from datetime import datetime, timezone

from ._faults import FaultyEmulator, Reply, Request

__all__ = ["RhythmxEmulator", "iso", "parse_ts"]

STATUSES = ("OPEN", "IN_PROGRESS", "CLOSED", "FALSE_POSITIVE")
_INC = re.compile(r"/api/incidents/([A-Za-z0-9_.-]+)\Z")
_STATUS = re.compile(r"/api/incidents/([A-Za-z0-9_.-]+)/status\Z")
_CASE = re.compile(r"/api/cases/([A-Za-z0-9_.-]+)\Z")


def iso(epoch: float, frac: bool = False) -> str:
    dt = datetime.fromtimestamp(epoch, timezone.utc)
    if frac:
        return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_ts(v: str) -> float:
    """``2026-03-13T04:30:00Z`` (with or without fractions, ``Z`` or an offset) -> epoch."""
    dt = datetime.fromisoformat(v.strip().replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).rstrip(b"=").decode()


class RhythmxEmulator(FaultyEmulator):
    thread_name = "rhythmx-emulator"

    def __init__(self, *, username: str = "soar-service-account", password: str = "rx-pass",
                 api_key: str = "smk_testkey", token_ttl: float = 3600.0, inclusive: bool = True,
                 feed_total: bool = False, **kw) -> None:
        super().__init__(**kw)
        self.username, self.password, self.api_key = username, password, api_key
        self.token_ttl = token_ttl
        self.inclusive = inclusive
        self.feed_total = feed_total
        self.incidents: dict[str, dict] = {}
        self.cases: dict[str, dict] = {}
        self.patches: list[dict] = []
        self._tokens: dict[str, float] = {}      # jwt -> expiry (epoch)
        self._seq = itertools.count(1)
        self._clock = 0.0

    # ------------------------------------------------------------------ data
    def _now(self) -> float:
        """Strictly increasing whole seconds are too coarse for tests: fractions, monotone."""
        with self.lock:
            t = max(time.time(), self._clock + 0.001)
            self._clock = t
            return t

    def add_incident(self, inc_id: str | None = None, *, created: float | None = None, risk_score: int = 82,
                     status: str = "OPEN", entity: str = "Primary Site", actor: str = "jdoe",
                     related_case_ids: list | None = None, frac: bool = False, **over) -> dict:
        n = next(self._seq)
        inc_id = inc_id or f"INC-{n:08x}"
        t = created if created is not None else self._now()
        level = "critical" if risk_score >= 85 else "high" if risk_score >= 70 else \
            "medium" if risk_score >= 40 else "low"
        inc = {"incident_id": inc_id, "group_key": actor, "actor_type": "user", "risk_score": risk_score,
               "risk_level": level, "alarm_count": 12, "sigma_alert_count": 3,
               "threat_case_count": len(related_case_ids or ()), "entity_name": entity, "status": status,
               "assigned_analyst": "", "first_alarm_time": iso(t - 600, frac), "last_alarm_time": iso(t, frac),
               "created_at": iso(t, frac), "updated_at": iso(t, frac),
               "related_case_ids": list(related_case_ids or ())}
        inc.update(over)
        with self.lock:
            self.incidents[inc_id] = inc
        return dict(inc)

    def add_case(self, case_id: str, *, entity: str = "Primary Site", severity: str = "HIGH",
                 case_type: str = "threat", status: str = "OPEN", alerts: list | None = None) -> dict:
        t = self._now()
        case = {"case_id": case_id, "entity_name": entity, "severity": severity, "case_type": case_type,
                "status": status, "created_at": iso(t), "title": f"Threat case {case_id}",
                "alerts": alerts if alerts is not None else [{"alert_id": f"{case_id}-A1", "rule": "Sigma rule 1"}]}
        with self.lock:
            self.cases[case_id] = case
        return dict(case)

    def update_incident(self, inc_id: str, **changes) -> dict:
        with self.lock:
            inc = self.incidents[inc_id]
            inc.update(changes)
            if "updated_at" not in changes:
                inc["updated_at"] = iso(self._now())
            return dict(inc)

    def incident(self, inc_id: str) -> dict:
        with self.lock:
            return dict(self.incidents[inc_id])

    def expire_tokens(self) -> None:
        with self.lock:
            self._tokens.clear()

    def patches_for(self, inc_id: str) -> list[dict]:
        with self.lock:
            return [p for p in self.patches if p["id"] == inc_id]

    # ------------------------------------------------------------------ requests
    def op_of(self, req: Request) -> str:
        p = req.path
        if p == "/api/login":
            return "login"
        if p.startswith("/api/v1/feed/"):
            return "feed"
        if _STATUS.match(p):
            return "patch"
        if p.startswith("/api/cases"):
            return "cases"
        if p == "/api/incidents":
            return "list"
        return "get"

    def fault_reply(self, f) -> Reply:
        r = super().fault_reply(f)
        if f.body is None:
            r.body = {"error": {401: "unauthorized", 429: "rate limit exceeded"}.get(f.status, "internal error"),
                      "status": f.status}
        return r

    def _auth(self, req: Request) -> Reply | None:
        key = req.headers.get("X-API-Key")
        feed = req.path.startswith("/api/v1/feed/")
        if key is not None:
            if not feed:
                return Reply(403, {"error": "API keys are read-only: use a JWT (POST /api/login)"}, note="api key 403")
            if not hmac.compare_digest(key.encode(), self.api_key.encode()):
                return Reply(401, {"error": "invalid API key"}, note="bad api key")
            return None
        auth = req.headers.get("Authorization") or ""
        if not auth.startswith("Bearer "):
            return Reply(401, {"error": "missing credentials"}, note="no credentials")
        tok = auth[7:].strip()
        with self.lock:
            exp = self._tokens.get(tok)
        if exp is None or exp <= time.time():
            self.stats["token_rejected"] += 1
            return Reply(401, {"error": "token expired" if exp is not None else "invalid token"}, note="bad jwt")
        return None

    def handle(self, req: Request) -> Reply:
        if req.path == "/api/login":
            return self._login(req)
        denied = self._auth(req)
        if denied is not None:
            return denied
        m = _STATUS.match(req.path)
        if m:
            if req.method != "PATCH":
                return Reply(405, {"error": "method not allowed"})
            return self._patch(m.group(1), req)
        if req.method != "GET":
            return Reply(405, {"error": "method not allowed"})
        if req.path in ("/api/incidents", "/api/v1/feed/incidents"):
            return self._list(req)
        if req.path == "/api/v1/feed/cases":
            return self._cases_feed(req)
        if req.path == "/api/cases/search":
            with self.lock:
                hits = [dict(c) for c in self.cases.values()
                        if (not req.query.get("entity_name") or c["entity_name"] == req.query["entity_name"])
                        and (not req.query.get("status") or c["status"] == req.query["status"])]
            return Reply(200, {"cases": hits})
        m = _CASE.match(req.path)
        if m:
            with self.lock:
                c = self.cases.get(m.group(1))
            return Reply(200, dict(c), note=f"case {m.group(1)}") if c else \
                Reply(404, {"error": f"case {m.group(1)} not found"}, note="unknown case")
        m = _INC.match(req.path)
        if m:
            with self.lock:
                i = self.incidents.get(m.group(1))
            return Reply(200, dict(i)) if i else Reply(404, {"error": f"incident {m.group(1)} not found"})
        return Reply(404, {"error": f"no route {req.path}"})

    def _login(self, req: Request) -> Reply:
        if req.method != "POST":
            return Reply(405, {"error": "method not allowed"})
        try:
            body = req.json()
        except ValueError:
            return Reply(400, {"error": "body is not JSON"})
        if not isinstance(body, dict) or body.get("username") != self.username or \
                not hmac.compare_digest(str(body.get("password", "")).encode(), self.password.encode()):
            self.stats["login_failed"] += 1
            return Reply(401, {"error": "invalid username or password"}, note="bad login")
        exp = time.time() + self.token_ttl
        tok = ".".join((_b64({"alg": "HS256", "typ": "JWT"}),
                        _b64({"sub": self.username, "exp": int(exp), "jti": secrets.token_hex(8)}),
                        secrets.token_urlsafe(16)))
        with self.lock:
            self._tokens[tok] = exp
        self.stats["login_ok"] += 1
        return Reply(200, {"token": tok, "expires_in": self.token_ttl}, note="login")

    def _window(self, req: Request) -> tuple[int, int, float | None, float | None] | Reply:
        q = req.query
        try:
            limit = int(q.get("limit", "100"))
            offset = int(q.get("offset", "0"))
        except ValueError:
            return Reply(400, {"error": "limit and offset must be integers"})
        if not 1 <= limit <= 1000 or offset < 0:
            return Reply(400, {"error": "limit must be 1..1000 and offset >= 0"})
        try:
            since = parse_ts(q["since"]) if q.get("since") else None
            upd = parse_ts(q["updated_since"]) if q.get("updated_since") else None
        except ValueError:
            return Reply(400, {"error": "since/updated_since must be ISO 8601 timestamps"})
        return limit, offset, since, upd

    def _after(self, value: str, bound: float | None) -> bool:
        if bound is None:
            return True
        t = parse_ts(value)
        return t >= bound if self.inclusive else t > bound

    def _list(self, req: Request) -> Reply:
        w = self._window(req)
        if isinstance(w, Reply):
            return w
        limit, offset, since, upd = w
        q = req.query
        sort_by = q.get("sort_by", "created_at")
        if sort_by not in ("created_at", "updated_at"):
            return Reply(400, {"error": f"cannot sort by {sort_by!r}"})
        with self.lock:
            hits = [dict(i) for i in self.incidents.values()
                    if self._after(i["created_at"], since) and self._after(i["updated_at"], upd)
                    and (not q.get("status") or i["status"] == q["status"])
                    and (not q.get("entity") or i["entity_name"] == q["entity"])]
        hits.sort(key=lambda i: (parse_ts(i[sort_by]), i["incident_id"]))
        page = hits[offset:offset + limit]
        note = f"{len(page)}/{len(hits)} since={q.get('since')} updated_since={q.get('updated_since')} off={offset}"
        if req.path == "/api/incidents":
            return Reply(200, {"incidents": page, "total": len(hits)}, note=note)
        body = {"data": page}
        if self.feed_total:
            body["total"] = len(hits)
        return Reply(200, body, note=note)

    def _cases_feed(self, req: Request) -> Reply:
        w = self._window(req)
        if isinstance(w, Reply):
            return w
        limit, offset, since, _ = w
        q = req.query
        with self.lock:
            hits = [dict(c) for c in self.cases.values() if self._after(c["created_at"], since)
                    and (not q.get("severity") or c["severity"] == q["severity"])
                    and (not q.get("case_type") or c["case_type"] == q["case_type"])]
        hits.sort(key=lambda c: (c["created_at"], c["case_id"]))
        return Reply(200, {"data": hits[offset:offset + limit]})

    def _patch(self, inc_id: str, req: Request) -> Reply:
        try:
            body = req.json()
        except ValueError:
            return Reply(400, {"error": "body is not JSON"})
        if not isinstance(body, dict) or body.get("status") not in STATUSES:
            return Reply(422, {"error": f"status must be one of {', '.join(STATUSES)}"}, note="bad status")
        notes = body.get("notes")
        if notes is not None and not isinstance(notes, str):
            return Reply(422, {"error": "notes must be a string"})
        with self.lock:
            inc = self.incidents.get(inc_id)
            if inc is None:
                return Reply(404, {"error": f"incident {inc_id} not found"}, note="unknown incident")
            before = inc["status"]
            inc["status"] = body["status"]
            if notes:
                inc.setdefault("notes", []).append(notes)
            inc["updated_at"] = iso(self._now())
            self.patches.append({"id": inc_id, "status": body["status"], "notes": notes, "before": before})
            self.stats["patched"] += 1
            return Reply(200, dict(inc), note=f"{inc_id}: {before} -> {body['status']}")


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.emulators.rhythmx --port 8090 --incidents 10``: prints its URL and one
    line per request; secrets from ``--api-key-env`` / ``--password-env`` (else test values)."""
    import argparse
    import os
    import sys
    ap = argparse.ArgumentParser(prog="python -m tests.emulators.rhythmx", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--username", default="soar-service-account")
    ap.add_argument("--password-env", help="environment variable holding the password (default: rx-pass)")
    ap.add_argument("--api-key-env", help="environment variable holding the API key (default: smk_testkey)")
    ap.add_argument("--incidents", type=int, default=10)
    ap.add_argument("--token-ttl", type=float, default=3600.0)
    a = ap.parse_args(argv)
    emu = RhythmxEmulator(host=a.host, port=a.port, username=a.username,
                          password=os.environ.get(a.password_env, "") if a.password_env else "rx-pass",
                          api_key=os.environ.get(a.api_key_env, "") if a.api_key_env else "smk_testkey",
                          token_ttl=a.token_ttl, out=lambda m: print(m, flush=True))
    for _ in range(a.incidents):
        emu.add_incident()
    emu.start()
    print(f"RhythmX emulator on {emu.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        emu.close()
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

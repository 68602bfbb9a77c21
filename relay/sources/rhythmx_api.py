"""RhythmX REST API pull source (``type = "rhythmx_api"``), seed 004 option 2 (apis-wave2.md
section 7).

Auth (``auth``):

* ``api_key`` (default; the read-only key the seed recommends for polling): ``X-API-Key`` on
  ``GET <url>/api/v1/feed/incidents`` (answer ``{"data": [...]}``).
* ``jwt``: ``POST <url>/api/login`` ``{"username", "password"}`` -> ``{"token", "expires_in"}``
  (``access_token`` also accepted; without ``expires_in`` the JWT's ``exp`` claim, else an
  hour), then ``Authorization: Bearer <token>`` on ``GET <url>/api/incidents`` (answer
  ``{"incidents": [...]}``).  The token is renewed ``renew_before`` seconds before it expires
  (at half its life for short-lived tokens); an API call answered 401 logs in again ONCE and
  is retried; a second 401, or a login answered 400/401/403, blocks the source with an ALERT
  (wrong credentials do not heal by retrying).  Related cases (``fetch_cases = true``, JWT
  only: the feed API has no per-id case endpoint) are fetched per changed incident with
  ``GET /api/cases/{id}`` for each of its ``related_case_ids`` and attached as
  ``related_cases`` (``extra.related_cases`` downstream); a case that cannot be fetched
  leaves a note, never holds the incident back.

Polling (every ``poll_interval`` s), two passes, each paged by ``limit`` (``page_size``) /
``offset`` until a short page (``total`` is not trusted: the feed may omit it):

1. new incidents: ``since = <created watermark - overlap>``, ``sort_by=created_at``;
2. changed incidents: ``updated_since = <updated watermark - overlap>``, ``sort_by=updated_at``.

Consecutive pages overlap by ``page_overlap`` rows: an incident updated while we page moves
to the end of the ``updated_at`` order and shifts every later offset down by one; the overlap
(and the next poll's time overlap) keeps that from skipping one.  Both passes also read
``status``/``entity`` filters when configured.  Whether ``since`` is inclusive is not
documented: the overlap re-reads, and the state remembers per incident the ``updated_at`` and
``status`` last delivered and a digest of the object (``known``, FIFO-capped at ``known_max``), so a re-read is dropped.
An incident never seen is ``created`` (``closed`` when it is already CLOSED or
FALSE_POSITIVE); a known one with a newer ``updated_at`` or another status is ``updated``, or
``closed`` when it just closed.

Each page's events are normalised by :func:`parsers.rhythmx.normalise_incident`, the same code
and the same ``dedup_key`` (``rhythmx:<incident_id>``) as a SigmaIncident arriving over syslog,
so a site that sends syslog AND polls gets one XSOAR incident, not two.  They are durably
queued (:meth:`relay.pipeline.Pipeline.submit`) and only THEN is the state (``known``; the
watermarks at the end of each pass) written to ``<state_dir>/rhythmx-<source>.json``
atomically: a crash in between re-reads (at least once; the sinks dedup), never skips.

Failures: 429 (``Retry-After`` seconds honoured), 5xx, timeouts and network errors are
retried with backoff and jitter, ``max_retries`` times, then the poll is abandoned without
moving the cursor; 401/403 as above block; other 4xx (a bad filter) block (fix the config).
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable

from parsers.rhythmx import normalise_incident

from .. import kinds
from ..checks import http_url, non_negative as _nonneg, positive as _pos
from ..secrets import Secret, read_secret, redact
from .pull import (COMMON_KEYS, AuthFailure, Backoff, ConfigFailure, PullSettings, PullSource, TransientFailure,
                   jitter, make_event, read_common)

log = logging.getLogger("relay.sources.rhythmx")

__all__ = ["RhythmxSource", "RhythmxSettings", "RhythmxAuth", "read_config", "read_rhythmx_auth", "JwtToken",
           "iso", "parse_ts", "AUTH_KEYS", "CLOSED_STATUSES"]

LOGIN = "/api/login"
FEED = "/api/v1/feed/incidents"
INCIDENTS = "/api/incidents"
CLOSED_STATUSES = ("CLOSED", "FALSE_POSITIVE")
#: the auth keys (shared with the ``rhythmx_api`` write-back sink)
AUTH_KEYS = ("auth", "api_key_env", "api_key_file", "username", "username_env", "password_env", "password_file",
             "renew_before")


# =========================================================================== auth
@dataclass(frozen=True)
class RhythmxAuth:
    mode: str = "api_key"                # api_key | jwt
    api_key: Secret | None = None
    username: str | None = None
    password: Secret | None = None
    renew_before: float = 60.0

    def secrets(self) -> list[str]:
        return [s.reveal() for s in (self.api_key, self.password) if s is not None]


def read_rhythmx_auth(table, base_dir: Path, *, modes=("api_key", "jwt"), default: str = "api_key") -> RhythmxAuth:
    """``auth = "api_key"`` (``api_key_env``/``api_key_file``) or ``"jwt"`` (``username`` or
    ``username_env``, ``password_env``/``password_file``); a key of the other mode is refused."""
    mode = table.get("auth", str, default, choices=modes)
    own = {"api_key": ("api_key_env", "api_key_file"),
           "jwt": ("username", "username_env", "password_env", "password_file", "renew_before")}
    for m, keys in own.items():
        if m != mode:
            for k in keys:
                if k in table.data:
                    raise table.err(k, f"is not a key of auth = {mode!r} (its keys: {', '.join(own[mode])})")
    if mode == "api_key":
        key = read_secret(table, "api_key_env", "api_key_file", "RhythmX API key (X-API-Key)", base_dir,
                          literal="api_key")
        return RhythmxAuth("api_key", api_key=key)
    user = table.get("username", str, None)
    user_env = table.get("username_env", str, None)
    if (user is None) == (user_env is None):
        raise table.err("username", "set either username or username_env (the RhythmX service account)")
    if user_env is not None:
        user = read_secret(table, "username_env", "username_file_unused", "RhythmX user name", base_dir).reveal()
    if not user.strip():
        raise table.err("username", "must not be empty")
    pw = read_secret(table, "password_env", "password_file", "RhythmX password", base_dir, literal="password")
    return RhythmxAuth("jwt", username=user.strip(), password=pw,
                       renew_before=table.get("renew_before", float, 60.0, check=_nonneg))


def jwt_exp(token: str) -> float | None:
    """The ``exp`` claim of a JWT (not verified: only to know when to renew), or None."""
    try:
        payload = token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = float(data["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None
    return exp if exp == exp else None


class JwtToken:
    """The cached JWT of a RhythmX client: ``await get(login)`` logs in (``login()`` ->
    ``(token, expires_in or None)``) when there is none or it is due for renewal."""

    def __init__(self, renew_before: float = 60.0) -> None:
        self.renew_before = renew_before
        self.value: str | None = None
        self.renew_at = 0.0
        self.logins = 0
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        self.value = None
        self.renew_at = 0.0

    async def get(self, login: Callable[[], Awaitable[tuple[str, float | None]]]) -> str:
        async with self._lock:
            if self.value is not None and time.monotonic() < self.renew_at:
                return self.value
            tok, life = await login()
            if life is None:
                exp = jwt_exp(tok)
                life = exp - time.time() if exp is not None else 3600.0
            life = max(1.0, float(life))
            self.value = tok
            self.renew_at = time.monotonic() + max(life / 2, life - self.renew_before)
            self.logins += 1
            return tok


def login_answer(body) -> tuple[str, float | None] | None:
    """``{"token"|"access_token", "expires_in"?}`` -> (token, life) or None."""
    if not isinstance(body, dict):
        return None
    tok = body.get("token") or body.get("access_token")
    if not isinstance(tok, str) or not tok:
        return None
    life = body.get("expires_in")
    try:
        life = float(life) if life is not None else None
    except (TypeError, ValueError):
        life = None
    return tok, life


# =========================================================================== time
def iso(epoch: float) -> str:
    """RhythmX timestamps: ``2026-03-13T04:30:00Z`` (whole seconds, floor)."""
    return datetime.fromtimestamp(int(epoch), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_ts(v) -> float | None:
    """``2026-03-13T04:30:00Z`` / with fractions / with an offset -> epoch; None if unusable."""
    if not isinstance(v, str) or not v.strip():
        return None
    try:
        dt = datetime.fromisoformat(v.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


# =========================================================================== config
@dataclass(frozen=True)
class RhythmxSettings(PullSettings):
    auth: RhythmxAuth = RhythmxAuth()
    status: str | None = None
    entity: str | None = None
    fetch_cases: bool = False
    max_cases: int = 20
    page_overlap: int = 5
    known_max: int = 50000
    max_per_poll: int = 5000


def read_config(table, sc, base_dir: Path) -> None:
    """``[sources.<name>]`` keys of a ``rhythmx_api`` source -> ``sc.options["pull"]``."""
    url = table.get("url", str, required=True, check=http_url).rstrip("/")
    auth = read_rhythmx_auth(table, base_dir)
    common = read_common(table, base_dir, poll_interval=60.0, page_size=100, max_page=1000,
                         first_fetch=86400.0, overlap=300.0)
    fetch_cases = table.get("fetch_cases", bool, False)
    if fetch_cases and auth.mode != "jwt":
        raise table.err("fetch_cases", "needs auth = \"jwt\": cases are read with GET /api/cases/{id}, which the "
                                       "read-only API key cannot call")
    status = table.get("status", str, None, choices=("OPEN", "IN_PROGRESS", "CLOSED", "FALSE_POSITIVE"))
    if status is not None:
        log.warning("source %s: status = %r: incidents that leave that status are never seen again (their "
                    "closes included)", sc.name, status)
    page = common["page_size"]
    sc.options["pull"] = RhythmxSettings(
        base_url=url, **common, auth=auth, status=status,
        entity=table.get("entity", str, None),
        fetch_cases=fetch_cases,
        max_cases=table.get("max_cases", int, 20, check=_pos),
        page_overlap=table.get("page_overlap", int, min(5, max(0, page // 4)),
                               check=lambda v: None if 0 <= v < page else
                               (_ for _ in ()).throw(ValueError(f"must be 0..page_size-1 ({page - 1}), not {v}"))),
        known_max=table.get("known_max", int, 50000, check=_pos),
        max_per_poll=table.get("max_per_poll", int, 5000, check=_pos),
    )


def digest(inc: dict) -> str:
    """A short digest of an incident object as the API gave it (a change within the same
    second as the last delivery has the same ``updated_at``: whole seconds)."""
    return hashlib.blake2b(json.dumps(inc, sort_keys=True, separators=(",", ":"), default=str).encode(),
                           digest_size=8).hexdigest()


def classify(inc: dict, known: dict) -> str | None:
    """``created`` / ``updated`` / ``closed``, or None when nothing changed since delivered.
    ``known``: id -> [updated_at epoch, status, digest]."""
    iid = str(inc.get("incident_id"))
    upd = parse_ts(inc.get("updated_at")) or parse_ts(inc.get("created_at")) or 0.0
    status = str(inc.get("status") or "").upper()
    prev = known.get(iid)
    if prev is None:
        return "closed" if status in CLOSED_STATUSES else "created"
    if status == prev[1] and (upd < prev[0] or (upd == prev[0] and (len(prev) < 3 or digest(inc) == prev[2]))):
        return None
    if status in CLOSED_STATUSES and prev[1] not in CLOSED_STATUSES:
        return "closed"
    return "updated"


# =========================================================================== the source
class RhythmxSource(PullSource):
    kind = "RhythmX API"
    state_name = "rhythmx"

    def __init__(self, cfg, pipeline, registry=None, *, transport=None) -> None:
        super().__init__(cfg, pipeline, registry, transport=transport)
        self.settings: RhythmxSettings
        s = self.settings
        self._backoff = Backoff(s.retry_base, s.retry_cap)
        self.jwt = JwtToken(s.auth.renew_before)
        self._events_c: dict = {}
        self.cursor: dict = {}

    # ------------------------------------------------------------ state
    def _load(self) -> dict:
        st = self.state.load()
        known: dict = {}
        raw = st.get("known")
        if isinstance(raw, dict):
            for iid, v in raw.items():
                if isinstance(v, list) and len(v) in (2, 3) and isinstance(v[0], (int, float)):
                    known[str(iid)] = [float(v[0]), *map(str, v[1:])]

        def num(k):
            v = st.get(k)
            return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
        return {"since": num("since"), "updated_since": num("updated_since"), "known": known}

    def _state(self) -> dict:
        c = self.cursor
        return {"since": c["since"], "updated_since": c["updated_since"], "known": c["known"],
                "updated": time.time()}

    async def start(self) -> None:
        self.cursor = await asyncio.to_thread(self._load)
        await super().start()

    # ------------------------------------------------------------ requests
    async def _login(self) -> tuple[str, float | None]:
        s = self.settings
        a = s.auth
        attempt = 0
        while True:
            if self._stop.is_set():
                raise TransientFailure("stopping")
            try:
                resp = await self.client.post(s.base_url + LOGIN, json={"username": a.username,
                                                                        "password": a.password.reveal()},
                                              headers={"Accept": "application/json"})
            except Exception as e:
                self.count_request("login", "error")
                if attempt >= s.max_retries:
                    raise TransientFailure(f"login: {type(e).__name__}: {e}") from None
                await self.sleep(self._backoff.delay(attempt))
                attempt += 1
                continue
            st = resp.status_code
            self.count_request("login", st)
            if st in (400, 401, 403):
                raise AuthFailure(f"POST {LOGIN} answered {st}: {_error(resp)} (check username and password of "
                                  f"{a.username!r})")
            if st in (408, 429) or st >= 500:
                if attempt >= s.max_retries:
                    raise TransientFailure(f"POST {LOGIN} answered {st} {attempt + 1} times in a row")
                if await self.sleep(self._wait(resp, attempt)):
                    raise TransientFailure("stopping")
                attempt += 1
                continue
            got = login_answer(_json(resp)) if 200 <= st < 300 else None
            if got is None:
                raise ConfigFailure(f"POST {LOGIN} answered {st} without a token: {_error(resp)}")
            log.debug("source %s: RhythmX login ok (token valid %s s)", self.cfg.name, got[1])
            return got

    def _wait(self, resp, attempt: int) -> float:
        ra = resp.headers.get("Retry-After")
        if resp.status_code in (429, 503) and ra and ra.strip().isdigit():
            return jitter(min(float(ra.strip()), 300.0))
        return self._backoff.delay(attempt)

    async def call(self, op: str, path: str, params: dict | None = None) -> Any:
        """One GET with the auth/429/5xx rules of the module docstring -> JSON (or None for a 404
        of a single object, ``op`` ``case``)."""
        s = self.settings
        attempt = 0
        relogged = False
        while True:
            if self._stop.is_set():
                raise TransientFailure("stopping")
            headers = {"Accept": "application/json"}
            if s.auth.mode == "jwt":
                headers["Authorization"] = "Bearer " + await self.jwt.get(self._login)
            else:
                headers["X-API-Key"] = s.auth.api_key.reveal()
            try:
                resp = await self.client.get(s.base_url + path, params=params, headers=headers)
            except Exception as e:
                self.count_request(op, "error")
                if attempt >= s.max_retries:
                    raise TransientFailure(f"{op}: {type(e).__name__}: {e}") from None
                if await self.sleep(self._backoff.delay(attempt)):
                    raise TransientFailure("stopping")
                attempt += 1
                continue
            st = resp.status_code
            self.count_request(op, st)
            if st == 401 and s.auth.mode == "jwt" and not relogged:
                log.info("source %s: %s answered 401 (%s); logging in again and retrying once", self.cfg.name, op,
                         _error(resp))
                self.jwt.invalidate()
                relogged = True
                continue
            if st in (401, 403):
                hint = ("a fresh token was refused too" if s.auth.mode == "jwt"
                        else "check the API key (X-API-Key, read-only: feed endpoints only)")
                raise AuthFailure(f"GET {path} answered {st}: {_error(resp)} ({hint})")
            if st in (408, 429) or st >= 500:
                if attempt >= s.max_retries:
                    raise TransientFailure(f"GET {path} answered {st} {attempt + 1} times in a row: {_error(resp)}")
                wait = self._wait(resp, attempt)
                log.info("source %s: %s answered %d; retrying in %.2f s", self.cfg.name, op, st, wait)
                if await self.sleep(wait):
                    raise TransientFailure("stopping")
                attempt += 1
                continue
            if st == 404 and op == "case":
                return None
            if not 200 <= st < 300:
                raise ConfigFailure(f"GET {path} answered {st}: {_error(resp)} (params {params})")
            body = _json(resp)
            if body is None:
                raise TransientFailure(f"GET {path} answered {st} with a body that is not JSON")
            return body

    async def page(self, params: dict) -> list[dict]:
        s = self.settings
        jwt = s.auth.mode == "jwt"
        body = await self.call("incidents", INCIDENTS if jwt else FEED, params)
        rows = body.get("incidents" if jwt else "data") if isinstance(body, dict) else body
        if rows is None:
            rows = []
        if not isinstance(rows, list):
            raise TransientFailure(f"the incident list is not a list: {str(body)[:160]}")
        return [r for r in rows if isinstance(r, dict) and r.get("incident_id") not in (None, "")]

    async def add_cases(self, incidents: list[dict]) -> None:
        """``related_cases`` on each incident (``fetch_cases``); failures become notes."""
        for inc in incidents:
            ids = inc.get("related_case_ids") or []
            if isinstance(ids, str):
                ids = [x.strip() for x in ids.split(",") if x.strip()]
            ids = [str(x) for x in ids if x not in (None, "")][:self.settings.max_cases]
            cases, missing = [], []
            for cid in ids:
                try:
                    c = await self.call("case", f"/api/cases/{cid}")
                except (TransientFailure, ConfigFailure) as e:
                    missing.append(f"{cid} ({str(e)[:120]})")
                    continue
                if isinstance(c, dict):
                    cases.append(c)
                else:
                    missing.append(f"{cid} (not found)")
            if ids:
                inc["related_cases"] = cases
            if missing:
                inc["_relay_notes"] = [f"rhythmx: related case(s) not fetched: {', '.join(missing)}"]

    # ------------------------------------------------------------ polling
    def _count_event(self, ev: str) -> None:
        c = self._events_c.get(ev)
        if c is None:
            c = self._events_c[ev] = self.registry.counter("relay_pull_incident_events_total",
                                                           source=self.cfg.name, event=ev)
        c.value += 1

    def _event(self, inc: dict, ev: str, received: float):
        notes = inc.pop("_relay_notes", None)
        fields, more = normalise_incident(inc, ev)
        notes = (notes or []) + more
        if notes:
            fields["extra"]["notes"] = (fields["extra"].get("notes") or []) + notes
        return make_event(fields, inc, self.cfg.name, received)

    async def _pass(self, which: str, budget: int) -> tuple[int, bool]:
        """One pass (``since`` or ``updated_since``) -> (incidents read, stopped early: more waiting)."""
        s = self.settings
        cur = self.cursor
        now = time.time()
        mark = cur[which]
        if mark is None:
            mark = now - s.first_fetch
        lower = max(0.0, mark - s.overlap)
        sort = "created_at" if which == "since" else "updated_at"
        params: dict = {which: iso(lower), "sort_by": sort, "limit": s.page_size}
        if s.status:
            params["status"] = s.status
        if s.entity:
            params["entity"] = s.entity
        offset = 0
        read = 0
        high = mark
        while True:
            rows = await self.page({**params, "offset": offset})
            read += len(rows)
            known = dict(cur["known"])
            changed = [(r, classify(r, known)) for r in rows]
            changed = [(r, ev, digest(r)) for r, ev in changed if ev is not None]   # before add_cases
            if changed and s.fetch_cases:
                await self.add_cases([r for r, _, _ in changed])
            received = time.time()
            events = []
            for r, ev, dg in changed:
                iid = str(r.get("incident_id"))
                upd = parse_ts(r.get("updated_at")) or parse_ts(r.get("created_at")) or 0.0
                known_row = [upd, str(r.get("status") or "").upper(), dg]
                events.append(self._event(r, ev, received))
                known.pop(iid, None)
                known[iid] = known_row
                self._count_event(ev)
            while len(known) > s.known_max:
                known.pop(next(iter(known)))
            for r in rows:
                t = parse_ts(r.get(sort))
                if t is not None and t > high:
                    high = t
            full = len(rows) >= s.page_size
            done = not full or read >= budget or self._stop.is_set()
            new_cur = {**cur, "known": known}
            if done and not self._stop.is_set():
                # the pass is complete (or capped: the next poll starts at once from here)
                new_cur[which] = min(high, now) if high is not None else cur[which]
            self.cursor, prev = new_cur, self.cursor
            try:
                await self.commit(events, self._state())
            except BaseException:
                self.cursor = prev
                raise
            cur = self.cursor
            if events:
                log.info("source %s: %d incident event(s) queued (%s)", self.cfg.name, len(events),
                         ", ".join(sorted({e.fields['event'] for e in events})))
            if done:
                return read, full and read >= budget
            offset += len(rows) - s.page_overlap

    async def poll_once(self) -> bool:
        s = self.settings
        n1, more1 = await self._pass("since", s.max_per_poll)
        if self._stop.is_set():
            return False
        n2, more2 = await self._pass("updated_since", s.max_per_poll)
        return more1 or more2


def _json(resp):
    try:
        return resp.json()
    except ValueError:
        return None


def _error(resp) -> str:
    body = _json(resp)
    if isinstance(body, dict):
        for k in ("error", "message", "detail"):
            v = body.get(k)
            if v:
                return redact(str(v))[:240]
        return redact(str(body))[:160]
    return redact(resp.text or "")[:160].strip() or "(no body)"


KIND = kinds.register_source(kinds.SourceKind(
    type="rhythmx_api", read_config=read_config, factory=RhythmxSource,
    keys=("url",) + AUTH_KEYS + ("status", "entity", "fetch_cases", "max_cases", "page_overlap", "known_max",
                                 "max_per_poll") + COMMON_KEYS,
    doc="polls RhythmX incidents (/api/v1/feed/incidents with an API key, /api/incidents with a JWT): "
        "created, updated and closed, with the syslog path's dedup key"))

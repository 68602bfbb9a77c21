"""CrowdStrike Falcon pull source (``type = "falcon"``): Alerts API v2, or the legacy
Detects API with ``api = "detects"`` (apis.md section 2).

Authentication: OAuth2 client credentials (``POST /oauth2/token``, form ``client_id`` /
``client_secret`` [/ ``member_cid``], answer 201 with ``access_token`` and ``expires_in``).
The secret comes from an environment variable or a file, is held in a redacted
:class:`~relay.sources.pull.Secret` and never logged.  The token is cached and renewed
``renew_window`` seconds before it expires (at half its life for short-lived tokens).
An API call answered 401 (or 403) gets ONE retry with a freshly minted token; a second
refusal, or a token endpoint answering 400/401/403, blocks the source with an ``ALERT``
log line (two refusals in a row mean wrong credentials or scope, not an expired token).
The token endpoint's own 429 is retried like any other.  ``cloud`` picks the base URL;
with ``cloud`` (not ``base_url``) the token answer's ``X-CS-Region`` moves the source to
the region the credentials belong to (autodiscovery).

Rate limits and failures: 429 waits until ``X-RateLimit-RetryAfter`` (Unix epoch
seconds; headers read case-insensitively; a time in the past retries at once, a
millisecond value is scaled, garbage or absent -> exponential backoff), plus jitter,
capped at 300 s.  5xx and network errors: exponential backoff with jitter (a RetryAfter
header on a 5xx is NOT honoured).  After ``max_retries`` the poll is abandoned without
moving the cursor and tried again later.  Other 4xx (e.g. 400 for a bad ``filter``,
405/404 for the decommissioned Detects API) block the source with an ALERT.

Polling (one poll every ``poll_interval`` s):

1. ``GET /alerts/queries/alerts/v2`` with ``filter = created_timestamp:>='<cursor - overlap>'``
   (plus the configured ``filter``, ANDed with ``+``), ``sort = created_timestamp|asc`` and
   ``offset``/``limit`` paging until ``offset >= meta.pagination.total`` (the total may grow
   while paging: new alerts sort last), at most ``max_per_poll`` ids and never past the
   API's 10 000 offset window (the rest comes in the next poll, started at once).
2. ids already delivered (the ``seen`` set) are dropped; the others are fetched with
   ``POST /alerts/entities/alerts/v2`` ``{"composite_ids": [...]}`` in chunks of
   ``entities_chunk``.  Entities that do not come back (hidden, deleted, not indexed yet)
   are retried by later polls (``missing_retries`` times) and hold the cursor below them.
3. the alerts, sorted by ``created_timestamp``, are normalised
   (:func:`parsers.falcon.normalise_dict`), durably queued, and only THEN the cursor
   (highest ``created_timestamp`` delivered) and the ``seen`` ids are written to
   ``<state_dir>/falcon-<source>.json`` atomically.

Why ``>=`` with an overlap plus dedup: an alert can become visible in the API after
alerts created later than it (ingestion latency), and several alerts can share a
timestamp.  A strict ``>`` on the last delivered time would skip both forever.  Every
poll therefore re-reads the last ``overlap`` seconds (``>=``, inclusive), and the ids
delivered in that window are kept in the state (keyed by ``composite_id`` /
``detection_id``, never ``aggregate_id``, which groups many detections), so re-reads are
dropped.  Ids older than the window are pruned: the query cannot return them any more.
A crash between "queued" and "state written" re-delivers that batch (at least once).

Legacy Detects (``api = "detects"``; decommissioned by CrowdStrike on 2025-09-30):
``GET /detects/queries/detects/v1`` (``first_behavior`` time filter and sort) and
``POST /detects/entities/summaries/GET/v1`` ``{"ids": [...]}``, dedup by ``detection_id``.
The Event Streams API is the ``falcon_stream`` source kind (relay/sources/falcon_stream.py).

User names: an alert's ``assigned_to_uid`` is a user UUID; :meth:`FalconSource.resolve_users`
puts the user's name in ``extra.assigned_to`` (cached with a TTL; a failure keeps the uid).
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

from parsers import falcon as falcon_parser
from parsers.schema import time_pair

from ..secrets import redact
from .. import kinds
from ..checks import http_url
from .pull import (
    COMMON_KEYS,     AuthFailure, Backoff, ConfigFailure, PullSettings, PullSource, Secret, TransientFailure, jitter,
    make_event, read_common, read_secret, retry_after_epoch,
)

log = logging.getLogger("relay.sources.falcon")

__all__ = ["FalconSource", "FalconSettings", "read_config", "CLOUDS", "iso_ms"]

#: the user-management endpoint that resolves user UUIDs (``assigned_to_uid``) to names
USERS = "/user-management/entities/users/GET/v1"

CLOUDS = {
    "us-1": "https://api.crowdstrike.com",
    "us-2": "https://api.us-2.crowdstrike.com",
    "eu-1": "https://api.eu-1.crowdstrike.com",
    "us-gov-1": "https://api.laggar.gcw.crowdstrike.com",
    "us-gov-2": "https://api.us-gov-2.crowdstrike.mil",
    "us-3": "https://api.us-3.crowdstrike.com",
}


@dataclass(frozen=True)
class _Api:
    query: str
    entities: str
    body_key: str
    id_field: str
    time_field: str
    shape: str
    max_offset: int


APIS = {
    "alerts": _Api("/alerts/queries/alerts/v2", "/alerts/entities/alerts/v2", "composite_ids", "composite_id",
                   "created_timestamp", "alert", 10000),
    "detects": _Api("/detects/queries/detects/v1", "/detects/entities/summaries/GET/v1", "ids", "detection_id",
                    "first_behavior", "detects", 9999),
}


@dataclass(frozen=True)
class FalconSettings(PullSettings):
    client_id: str = ""
    client_secret: Secret | None = None
    member_cid: str | None = None
    cloud: str | None = None             # set when base_url came from the cloud name
    api: str = "alerts"
    filter: str | None = None
    entities_chunk: int = 500
    max_per_poll: int = 10000
    include_hidden: bool = True
    renew_window: float = 120.0
    missing_retries: int = 5
    resolve_users: bool = True
    users_ttl: float = 3600.0
    users_timeout: float = 5.0


def _pos(v):
    if v <= 0:
        raise ValueError(f"must be greater than 0, not {v}")


def read_config(table, sc, base_dir: Path) -> None:
    """``[sources.<name>]`` keys of a ``falcon`` source -> ``sc.options["pull"]``."""
    base_url = table.get("base_url", str, None, check=http_url)
    cloud = table.get("cloud", str, None, choices=tuple(CLOUDS))
    if base_url is not None and cloud is not None:
        raise table.err("cloud", "set either cloud or base_url, not both")
    if base_url is None:
        cloud = cloud or "us-1"
        base_url = CLOUDS[cloud]
    client_id = table.get("client_id", str, required=True)
    if not client_id.strip():
        raise table.err("client_id", "must not be empty")
    secret = read_secret(table, "client_secret_env", "client_secret_file", "Falcon API client secret",
                         base_dir, "client_secret")
    api = table.get("api", str, "alerts", choices=tuple(APIS))

    def chunk(v):
        if not 1 <= v <= 1000:
            raise ValueError(f"must be 1..1000, not {v}")

    common = read_common(table, base_dir, poll_interval=30.0, page_size=500, max_page=APIS[api].max_offset,
                         first_fetch=3600.0, overlap=300.0)
    fql = table.get("filter", str, None)
    if fql is not None:
        fql = fql.strip().strip("+") or None
    st = FalconSettings(
        base_url=base_url, **common, client_id=client_id.strip(), client_secret=secret,
        member_cid=table.get("member_cid", str, None), cloud=cloud, api=api, filter=fql,
        entities_chunk=table.get("entities_chunk", int, 500, check=chunk),
        max_per_poll=table.get("max_per_poll", int, 10000, check=_pos),
        include_hidden=table.get("include_hidden", bool, True),
        renew_window=table.get("renew_window", float, 120.0, check=lambda v: None if v >= 0 else _pos(v)),
        missing_retries=table.get("missing_retries", int, 5, check=lambda v: None if v >= 0 else _pos(v)),
        resolve_users=table.get("resolve_users", bool, True),
        users_ttl=table.get("users_ttl", float, 3600.0, check=_pos),
        users_timeout=table.get("users_timeout", float, 5.0, check=_pos),
    )
    if st.max_per_poll < st.page_size:
        raise table.err("max_per_poll", f"must be at least page_size ({st.page_size})")
    sc.options["pull"] = st


def iso_ms(epoch: float) -> str:
    """Epoch seconds -> ``YYYY-MM-DDTHH:MM:SS.mmmZ``, floored to the millisecond (a
    lower bound never moves up)."""
    ms = int(epoch * 1000 // 1)
    secs, frac = divmod(ms, 1000)
    t = time.gmtime(secs)
    return (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:"
            f"{t.tm_sec:02d}.{frac:03d}Z")


class FalconSource(PullSource):
    kind = "Falcon API"
    state_name = "falcon"

    def __init__(self, cfg, pipeline, registry=None, *, transport=None) -> None:
        super().__init__(cfg, pipeline, registry, transport=transport)
        self.settings: FalconSettings
        self.api = APIS[self.settings.api]
        self.base = self.settings.base_url
        self._token: str | None = None
        self._token_renew_at = 0.0
        self._token_expires_at = 0.0
        self._token_lock = asyncio.Lock()
        self.tokens_minted = 0
        self._backoff = Backoff(self.settings.retry_base, self.settings.retry_cap)
        self._missing_c = self.registry.counter("relay_pull_missing_total", source=cfg.name)
        self._dup_c = self.registry.counter("relay_pull_duplicates_total", source=cfg.name)
        self._users: dict[str, tuple[str | None, float]] = {}   # uuid -> (name or None, monotonic expiry)
        self._users_c = {r: self.registry.counter("relay_falcon_user_lookups_total", source=cfg.name, result=r)
                         for r in ("cached", "resolved", "unknown", "failed")}

    # ------------------------------------------------------------ OAuth2
    def invalidate_token(self) -> None:
        self._token = None
        self._token_renew_at = 0.0

    async def token(self) -> str:
        async with self._token_lock:
            if self._token is not None and time.monotonic() < self._token_renew_at:
                return self._token
            return await self._mint()

    async def _mint(self) -> str:
        s = self.settings
        form = {"client_id": s.client_id, "client_secret": s.client_secret.reveal()}
        if s.member_cid:
            form["member_cid"] = s.member_cid
        attempt = 0
        while True:
            if self._stop.is_set():
                raise TransientFailure("stopping")
            try:
                resp = await self.client.post(self.base + "/oauth2/token", data=form,
                                              headers={"Accept": "application/json"})
            except Exception as e:  # httpx.TransportError and friends; the form is never in the message
                self.count_request("token", "error")
                if attempt >= s.max_retries:
                    raise TransientFailure(f"token endpoint unreachable: {type(e).__name__}: {e}") from None
                await self.sleep(self._backoff.delay(attempt))
                attempt += 1
                continue
            self.count_request("token", resp.status_code)
            st = resp.status_code
            if st in (200, 201):
                try:
                    body = resp.json()
                    tok = body["access_token"]
                    ttl = float(body.get("expires_in") or 1799)
                except (ValueError, KeyError, TypeError) as e:
                    raise TransientFailure(f"token endpoint answered {st} without a usable token ({e})") from None
                now = time.monotonic()
                self._token = str(tok)
                self._token_expires_at = now + ttl
                self._token_renew_at = now + max(ttl - s.renew_window, ttl / 2)
                self.tokens_minted += 1
                self._autodiscover(resp.headers.get("X-CS-Region"))
                log.debug("source %s: new Falcon token, valid %g s", self.cfg.name, ttl)
                return self._token
            if st in (400, 401, 403):
                raise AuthFailure(f"token endpoint answered {st}: {_errors(resp)} (client_id {s.client_id}; "
                                  f"check the secret, its API scopes and the IP allowlist)")
            if st == 429 or st >= 500:
                if attempt >= s.max_retries:
                    raise TransientFailure(f"token endpoint answered {st} {attempt + 1} times")
                await self.sleep(self._wait(resp, attempt))
                attempt += 1
                continue
            raise ConfigFailure(f"token endpoint answered {st}: {_errors(resp)}")

    def _autodiscover(self, region: str | None) -> None:
        s = self.settings
        if not region or s.cloud is None:
            return
        region = region.strip().lower()
        url = CLOUDS.get(region)
        if url and url != self.base:
            log.warning("source %s: the Falcon credentials belong to cloud %s; using %s (set cloud = %r)",
                        self.cfg.name, region, url, region)
            self.base = url

    # ------------------------------------------------------------ requests
    def _wait(self, resp, attempt: int) -> float:
        """Seconds before retrying this answer: RetryAfter epoch on 429, else backoff."""
        if resp.status_code == 429:
            w = retry_after_epoch(resp.headers.get("X-RateLimit-RetryAfter"))
            if w is not None:
                return jitter(w)
        return self._backoff.delay(attempt)

    async def call(self, op: str, method: str, path: str, *, params=None, json=None) -> dict:
        """One API call with the auth/429/5xx rules of the module docstring -> JSON body."""
        s = self.settings
        attempt = 0
        refreshed = False
        while True:
            if self._stop.is_set():
                raise TransientFailure("stopping")
            tok = await self.token()
            try:
                resp = await self.client.request(method, self.base + path, params=params, json=json,
                                                 headers={"Authorization": f"Bearer {tok}",
                                                          "Accept": "application/json"})
            except Exception as e:
                self.count_request(op, "error")
                if attempt >= s.max_retries:
                    raise TransientFailure(f"{op}: {type(e).__name__}: {e}") from None
                await self.sleep(self._backoff.delay(attempt))
                attempt += 1
                continue
            st = resp.status_code
            self.count_request(op, st)
            if st in (401, 403):
                if refreshed:
                    raise AuthFailure(f"{op} answered {st} again with a fresh token: {_errors(resp)}")
                log.info("source %s: %s answered %d (%s); minting a new token and retrying once",
                         self.cfg.name, op, st, _errors(resp))
                self.invalidate_token()
                refreshed = True
                continue
            if st == 429 or st >= 500:
                if attempt >= s.max_retries:
                    raise TransientFailure(f"{op} answered {st} {attempt + 1} times in a row")
                wait = self._wait(resp, attempt)
                log.info("source %s: %s answered %d; retrying in %.2f s", self.cfg.name, op, st, wait)
                if await self.sleep(wait):
                    raise TransientFailure("stopping")
                attempt += 1
                continue
            if st >= 400 or st < 200:
                raise ConfigFailure(f"{op} {method} {path} answered {st}: {_errors(resp)}")
            try:
                body = resp.json()
            except ValueError:
                raise TransientFailure(f"{op} answered {st} with a body that is not JSON") from None
            if not isinstance(body, dict):
                raise TransientFailure(f"{op} answered {st} with JSON that is not an object")
            return body

    # ------------------------------------------------------------ users
    async def resolve_users(self, events) -> None:
        """``extra.assigned_to_uid`` (a user UUID) -> ``extra.assigned_to`` (the user's name), from
        ``POST /user-management/entities/users/GET/v1`` ``{"ids": [...]}``, cached ``users_ttl``
        seconds (an unknown uid too).  One request per poll for the uids not cached, bounded by
        ``users_timeout`` and never retried: a failure (network, 4xx/5xx, scope missing, timeout)
        leaves the uid as it is, is counted and logged, and is not tried again for a minute.  It
        never holds the events back for longer than ``users_timeout``."""
        s = self.settings
        if not s.resolve_users:
            return
        now = time.monotonic()
        want: dict[str, list] = {}
        for ev in events:
            extra = (ev.fields or {}).get("extra")
            uid = extra.get("assigned_to_uid") if isinstance(extra, dict) else None
            if not uid or not isinstance(uid, str):
                continue
            hit = self._users.get(uid)
            if hit is not None and hit[1] > now:
                self._users_c["cached"].value += 1
                if hit[0]:
                    extra["assigned_to"] = hit[0]
                continue
            want.setdefault(uid, []).append(extra)
        if not want:
            return
        ids = list(want)[:500]
        try:
            names = await asyncio.wait_for(self._fetch_users(ids), timeout=s.users_timeout)
        except Exception as e:   # a failure leaves the uid: the events go on at once
            self._users_c["failed"].value += len(ids)
            log.warning("source %s: Falcon user names not resolved (%s: %s); assigned_to_uid kept, "
                        "next try in 60 s", self.cfg.name, type(e).__name__, str(e)[:200] or "timeout")
            for uid in ids:
                self._users[uid] = (None, now + min(60.0, s.users_ttl))
            return
        for uid in ids:
            name = names.get(uid)
            self._users[uid] = (name, now + s.users_ttl)
            self._users_c["resolved" if name else "unknown"].value += 1
            if name:
                for extra in want[uid]:
                    extra["assigned_to"] = name
        if len(self._users) > 50_000:
            self._users = {k: v for k, v in self._users.items() if v[1] > now}

    async def _fetch_users(self, ids: list[str]) -> dict[str, str]:
        tok = await self.token()
        resp = await self.client.post(self.base + USERS, json={"ids": ids},
                                      headers={"Authorization": f"Bearer {tok}", "Accept": "application/json"})
        self.count_request("users", resp.status_code)
        if resp.status_code == 401:
            self.invalidate_token()
        if resp.status_code != 200:
            raise TransientFailure(f"users answered {resp.status_code}: {_errors(resp)}")
        out = {}
        for r in (resp.json() or {}).get("resources") or ():
            if not isinstance(r, dict):
                continue
            uid = r.get("uuid") or r.get("id")
            first, last = (r.get("first_name") or "").strip(), (r.get("last_name") or "").strip()
            name = f"{first} {last}".strip() or r.get("uid") or r.get("email")
            if uid and name:
                out[str(uid)] = str(name)
        return out

    # ------------------------------------------------------------ polling
    def _load(self) -> dict:
        st = self.state.load()
        seen = st.get("seen")
        missing = st.get("missing")
        return {
            "since": st.get("since") if isinstance(st.get("since"), (int, float)) else None,
            "catchup": bool(st.get("catchup")),
            "seen": {str(k): float(v) for k, v in seen.items()} if isinstance(seen, dict) else {},
            "missing": {str(k): int(v) for k, v in missing.items()} if isinstance(missing, dict) else {},
            "api": st.get("api"),
        }

    async def start(self) -> None:
        self.cursor = await asyncio.to_thread(self._load)
        if self.cursor.get("api") not in (None, self.settings.api):
            log.warning("source %s: api changed from %s to %s; starting from the first-fetch window",
                        self.cfg.name, self.cursor.get("api"), self.settings.api)
            self.cursor = {"since": None, "catchup": False, "seen": {}, "missing": {}, "api": None}
        await super().start()

    def _filter(self, lower: float) -> str:
        f = f"{self.api.time_field}:>='{iso_ms(lower)}'"
        if self.settings.filter:
            f = f"{self.settings.filter}+{f}"
        return f

    async def query_ids(self, lower: float) -> tuple[list[str], bool]:
        """All ids matching the window (in the API's order, duplicates removed) and
        whether more were left for the next poll."""
        s, api = self.settings, self.api
        ids: list[str] = []
        seen_here: set = set()
        offset = 0
        total = None
        params = {"filter": self._filter(lower), "sort": f"{api.time_field}|asc"}
        if s.api == "alerts" and not s.include_hidden:
            params["include_hidden"] = "false"
        while len(ids) < s.max_per_poll:
            limit = min(s.page_size, s.max_per_poll - len(ids), api.max_offset - offset)
            if limit <= 0:
                break
            body = await self.call("query", "GET", api.query, params={**params, "offset": offset, "limit": limit})
            res = [r for r in (body.get("resources") or ()) if isinstance(r, str) and r]
            pag = (body.get("meta") or {}).get("pagination") or {}
            total = pag.get("total") if isinstance(pag.get("total"), int) else None
            for r in res:
                if r in seen_here:
                    self._dup_c.value += 1
                else:
                    seen_here.add(r)
                    ids.append(r)
            offset += len(body.get("resources") or ())
            if not res or (total is not None and offset >= total) or (total is None and len(res) < limit):
                return ids, False
        more = total is None or offset < total
        return ids, more

    async def fetch(self, ids: list[str]) -> list[dict]:
        s, api = self.settings, self.api
        out: list[dict] = []
        params = {"include_hidden": "false"} if s.api == "alerts" and not s.include_hidden else None
        for i in range(0, len(ids), s.entities_chunk):
            chunk = ids[i:i + s.entities_chunk]
            body = await self.call("entities", "POST", api.entities, params=params, json={api.body_key: chunk})
            got = [r for r in (body.get("resources") or ()) if isinstance(r, dict)]
            out.extend(got)
            if len(got) < len(chunk):
                self._missing_c.value += len(chunk) - len(got)
                log.info("source %s: asked for %d %s, got %d (%s); the rest is retried next poll",
                         self.cfg.name, len(chunk), api.body_key, len(got), _errors_body(body) or "no error given")
        return out

    def _time(self, obj: dict) -> float | None:
        _, unix = time_pair(obj.get(self.api.time_field))
        if unix is None and self.api.shape == "alert":
            _, unix = time_pair(obj.get("timestamp"))
        return unix

    def _event(self, obj: dict, received: float):
        notes: list = []
        try:
            fields = falcon_parser.normalise_dict(obj, shape=self.api.shape, notes=notes)
        except Exception as e:  # a normaliser bug must not lose the alert
            oid = obj.get(self.api.id_field)
            fields = {"kind": "alert", "vendor": falcon_parser.VENDOR, "product": falcon_parser.PRODUCT,
                      "id": oid, "dedup_key": f"falcon:{oid}" if oid else None, "event": None,
                      "name": f"Falcon {self.api.shape} {oid}", "severity": "informational", "status": None,
                      "occurred": None, "occurred_unix": None, "extra": {}}
            notes.append(f"normaliser failed ({type(e).__name__}: {e})")
        ev = make_event(fields, obj, self.cfg.name, received)
        for n in notes:
            ev.note(n)
        return ev

    async def poll_once(self) -> bool:
        s, api = self.settings, self.api
        cur = self.cursor
        now = time.time()
        since = cur["since"] if cur["since"] is not None else now - s.first_fetch
        lower = since if cur["catchup"] else since - s.overlap
        ids, more = await self.query_ids(lower)
        seen, missing = cur["seen"], cur["missing"]
        wanted = [i for i in ids if i not in seen]
        self._dup_c.value += len(ids) - len(wanted)
        objs = await self.fetch(wanted) if wanted else []
        by_id = {}
        for o in objs:
            oid = o.get(api.id_field)
            if isinstance(oid, str) and oid and oid not in seen and oid not in by_id:
                by_id[oid] = o
        # the cursor may not pass an id that did not resolve (yet): hold it at the last
        # delivered time before the first such id (ids come in time order)
        hold = None
        new_missing: dict[str, int] = {}
        last_t = None
        for i in wanted:
            o = by_id.get(i)
            if o is None:
                n = missing.get(i, 0) + 1
                if n <= s.missing_retries:
                    new_missing[i] = n
                    if hold is None:
                        hold = last_t if last_t is not None else since
                else:
                    log.warning("source %s: %s %s still cannot be fetched after %d polls; giving up on it",
                                self.cfg.name, api.id_field, i, n - 1)
                continue
            t = self._time(o)
            if t is not None:
                last_t = t if last_t is None else max(last_t, t)
        ordered = sorted(by_id.values(), key=lambda o: (self._time(o) or 0.0))
        received = time.time()
        events = [self._event(o, received) for o in ordered]
        await self.resolve_users(events)
        new_seen = dict(seen)
        top = since
        for o in ordered:
            t = self._time(o)
            oid = o[api.id_field]
            new_seen[oid] = t if t is not None else received
            if t is not None and t > top:
                top = t
        if hold is not None:
            top = min(top, max(hold, since))
        new_since = top if ordered or cur["since"] is not None else since
        floor = new_since - s.overlap
        new_seen = {k: v for k, v in new_seen.items() if v >= floor}
        if len(new_seen) > 500_000:       # defensive cap: keep the newest
            new_seen = dict(sorted(new_seen.items(), key=lambda kv: kv[1])[-500_000:])
        state = {"api": s.api, "since": new_since, "since_iso": iso_ms(new_since), "catchup": bool(more),
                 "seen": new_seen, "missing": new_missing, "updated": received}
        await self.commit(events, state)
        self.cursor = {"since": new_since, "catchup": bool(more), "seen": new_seen, "missing": new_missing,
                       "api": s.api}
        if events:
            log.info("source %s: %d new Falcon %s(s) queued; cursor %s", self.cfg.name, len(events),
                     api.shape, iso_ms(new_since))
        return bool(more)


def _errors_body(body) -> str:
    errs = body.get("errors") if isinstance(body, dict) else None
    if not errs:
        return ""
    out = []
    for e in errs[:3]:
        if isinstance(e, dict):
            out.append(f"{e.get('code')} {str(e.get('message'))[:120]}")
    return "; ".join(out)


def _errors(resp) -> str:
    try:
        body = resp.json()
    except ValueError:
        return redact(resp.text or "")[:160].strip() or "(no body)"
    return _errors_body(body) or str(body)[:160]


def make(cfg, pipeline, registry=None) -> FalconSource:
    return FalconSource(cfg, pipeline, registry)


def _settings_replace(st: FalconSettings, **kw) -> FalconSettings:   # tests
    return replace(st, **kw)


KIND = kinds.register_source(kinds.SourceKind(
    type="falcon", read_config=read_config, factory=FalconSource,
    keys=("base_url", "cloud", "client_id", "client_secret_env", "client_secret_file", "api", "filter", "member_cid",
          "entities_chunk", "max_per_poll", "include_hidden", "renew_window", "missing_retries", "resolve_users",
          "users_ttl", "users_timeout") + COMMON_KEYS,
    doc="polls the CrowdStrike Falcon Alerts API (or the legacy Detects API)"))

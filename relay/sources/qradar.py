"""IBM QRadar offenses pull source (``type = "qradar_offenses"``), apis.md section 3.

Every call sends ``SEC: <authorized service token>`` (from an environment variable or a
file; never logged), ``Version: <api_version>`` and ``Accept: application/json`` to
``GET <url>/api/siem/offenses``.

Polling (every ``poll_interval`` s) walks the offenses in ``last_updated_time`` order
with *keyset* pages: each page is ``Range: items=0-<page_size-1>`` with

* ``filter = last_updated_time >= <watermark - overlap>`` (first page of a poll), then
  ``(last_updated_time > L or (last_updated_time = L and id > I))`` where ``(L, I)`` is the
  last offense of the previous page (the configured ``filter`` is ANDed in parentheses);
* ``sort = +last_updated_time,+id``;

and ``Content-Range: items x-y/<total>`` says whether another page follows
(``y + 1 < total``; an absent/odd header falls back to "a full page means more").  Why
not ``items=50-99`` offsets: offenses change while we page (an update moves an offense to
the end of the ``last_updated_time`` order), which shifts every later offset by one and
silently skips an offense.  A keyset position cannot shift.

Created / updated / closed: the state remembers, per offense id (a STRING: QRadar ids
are integers, downstream custom fields are strings, and an int/str mix sorts wrongly),
the ``last_updated_time`` and ``status`` last delivered (``known``, FIFO-capped at
``known_max``).  An offense never seen is ``created``; a known one with a newer
``last_updated_time`` (or another status) is ``updated``; status ``CLOSED`` (not delivered
as closed before) is ``closed``; a known one with nothing new (the overlap re-read) is
skipped.  The canonical event (:func:`parsers.qradar.normalise_offense`) carries
``event`` = created/updated/closed, ``status`` (``open``/``hidden``/``closed``) and
``dedup_key = qradar:<id>``, which the XSOAR sink uses for create-once, ``mode = "sync"``
updates and ``close_on_source_close``.  Do not filter on ``status`` if closes matter: a
filtered-out offense's close is never seen.

Each page is durably queued, THEN the watermark ``(last_updated_time, id)`` and ``known``
are written to ``<state_dir>/qradar-<source>.json`` atomically; a crash in between
re-reads that page (at least once; the XSOAR sink dedups).  The first poll starts
``first_fetch`` seconds back.

Failures: 401 (missing/expired SEC token) and 403 (capability) block the source with an
ALERT (a static token does not heal by retrying); 422 (bad filter/sort/range) and other
4xx block it too (fix the config); 429, 5xx (code 1020) and network errors are retried
with backoff and jitter (``Retry-After`` seconds honoured on 429/503).

Offense context (``resolve_context``, on by default): before an offense is normalised, its
``source_address_ids`` and ``local_destination_address_ids`` are resolved to addresses with
``GET /api/siem/source_addresses`` / ``/api/siem/local_destination_addresses``, batched per page
with ``filter=id in (...)``, and its ``rules[].id`` to rule names with ``GET
/api/analytics/rules/{id}``; all cached ``context_ttl`` seconds.  With ``top_events = N`` (0:
off), a *created* offense also gets its N highest-magnitude events from an Ariel search
(``POST /api/ariel/searches`` with AQL ``... WHERE INOFFENSE(<id>) ORDER BY magnitude DESC LIMIT
N LAST <minutes> MINUTES``, polled until COMPLETED, then the results with ``Range``), bounded by
``ariel_timeout`` seconds (a search still running then is cancelled with DELETE).  None of this
ever blocks an offense: a lookup that fails leaves the ids (``extra.notes`` says what is
missing) and is counted in ``relay_pull_requests_total{op}``.

Not implemented yet: a note back on the offense with the XSOAR incident id (only the
XSOAR sink learns the incident id).
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from parsers.qradar import normalise_offense

from ..secrets import redact
from .. import kinds
from ..checks import http_url, within
from .pull import (
    COMMON_KEYS,     AuthFailure, Backoff, ConfigFailure, PullSettings, PullSource, Secret, TransientFailure, jitter,
    make_event, read_common, read_secret,
)

log = logging.getLogger("relay.sources.qradar")

__all__ = ["QradarOffenseSource", "QradarSettings", "read_config", "parse_content_range", "classify"]

OFFENSES = "/api/siem/offenses"
_CR = re.compile(r"^\s*items\s+(\d+)\s*-\s*(\d+)\s*/\s*(\d+|\*)\s*$", re.I)


@dataclass(frozen=True)
class QradarSettings(PullSettings):
    token: Secret | None = None
    api_version: str = "20.0"
    filter: str | None = None
    console_url: str | None = None
    known_max: int = 20000
    max_per_poll: int = 5000
    resolve_context: bool = True
    context_ttl: float = 3600.0
    top_events: int = 0
    ariel_timeout: float = 30.0


def _pos(v):
    if v <= 0:
        raise ValueError(f"must be greater than 0, not {v}")


def _version(v: str):
    if not re.fullmatch(r"\d+(\.\d+)?", v.strip()):
        raise ValueError(f"{v!r} is not an API version like 20.0")
    return v.strip()


def read_config(table, sc, base_dir: Path) -> None:
    """``[sources.<name>]`` keys of a ``qradar_offenses`` source -> ``sc.options["pull"]``."""
    url = table.get("url", str, required=True, check=http_url)
    if url.endswith("/api"):
        url = url[:-4]
    token = read_secret(table, "token_env", "token_file", "QRadar authorized service token (SEC)",
                        base_dir, "token")
    common = read_common(table, base_dir, poll_interval=60.0, page_size=50, max_page=1000,
                         first_fetch=86400.0, overlap=60.0)
    flt = table.get("filter", str, None)
    st = QradarSettings(
        base_url=url, **common, token=token,
        api_version=table.get("api_version", (str, float, int), "20.0", check=lambda v: _version(str(v))),
        filter=(flt.strip() or None) if flt is not None else None,
        console_url=table.get("console_url", str, None, check=http_url) or url,
        known_max=table.get("known_max", int, 20000, check=_pos),
        max_per_poll=table.get("max_per_poll", int, 5000, check=_pos),
        resolve_context=table.get("resolve_context", bool, True),
        context_ttl=table.get("context_ttl", float, 3600.0, check=_pos),
        top_events=table.get("top_events", int, 0, check=within(0, 100)),
        ariel_timeout=table.get("ariel_timeout", float, 30.0, check=_pos),
    )
    sc.options["pull"] = st


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``items x-y/total`` -> (x, y, total); total None for ``*``; None if unusable."""
    if not value:
        return None
    m = _CR.match(value)
    if not m:
        return None
    x, y = int(m.group(1)), int(m.group(2))
    total = None if m.group(3) == "*" else int(m.group(3))
    return x, y, total


def _int(v) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v == v:
        return int(v)
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v.strip())
    return None


def classify(offense: dict, known: dict, max_pruned_id: int) -> str | None:
    """``created`` / ``updated`` / ``closed``, or None when nothing changed since it was
    delivered.  ``known``: id (str) -> [last_updated_time, status]."""
    oid = str(offense.get("id"))
    lut = _int(offense.get("last_updated_time")) or 0
    status = str(offense.get("status") or "").upper()
    prev = known.get(oid)
    if prev is None:
        if status == "CLOSED":
            return "closed"
        n = _int(offense.get("id"))
        return "updated" if n is not None and n <= max_pruned_id else "created"
    prev_lut, prev_status = prev[0], prev[1]
    if lut <= prev_lut and status == prev_status:
        return None
    if status == "CLOSED" and prev_status != "CLOSED":
        return "closed"
    return "updated"


class QradarOffenseSource(PullSource):
    kind = "QRadar API"
    state_name = "qradar"

    def __init__(self, cfg, pipeline, registry=None, *, transport=None) -> None:
        super().__init__(cfg, pipeline, registry, transport=transport)
        self.settings: QradarSettings
        self._backoff = Backoff(self.settings.retry_base, self.settings.retry_cap)
        self._events_c = {}
        # (kind, id) -> (value or None when unknown, monotonic expiry); kind: src, dst, rule
        self._ctx: dict[tuple[str, int], tuple[object, float]] = {}

    # ------------------------------------------------------------ state
    def _load(self) -> dict:
        st = self.state.load()
        known = st.get("known")
        k: dict = {}
        if isinstance(known, dict):
            for oid, v in known.items():
                if isinstance(v, list) and len(v) == 2:
                    k[str(oid)] = [_int(v[0]) or 0, str(v[1])]
        return {"lut": _int(st.get("lut")), "id": _int(st.get("id")) or 0, "known": k,
                "max_pruned_id": _int(st.get("max_pruned_id")) or 0}

    async def start(self) -> None:
        self.cursor = await asyncio.to_thread(self._load)
        await super().start()

    # ------------------------------------------------------------ requests
    async def get_offenses(self, flt: str, sort: str, start: int, end: int) -> tuple[list, str | None]:
        """One page -> (offenses, Content-Range header)."""
        s = self.settings
        headers = {"SEC": s.token.reveal(), "Version": s.api_version, "Accept": "application/json",
                   "Range": f"items={start}-{end}"}
        params = {"filter": flt, "sort": sort}
        attempt = 0
        while True:
            if self._stop.is_set():
                raise TransientFailure("stopping")
            try:
                resp = await self.client.get(s.base_url + OFFENSES, params=params, headers=headers)
            except Exception as e:
                self.count_request("offenses", "error")
                if attempt >= s.max_retries:
                    raise TransientFailure(f"offenses: {type(e).__name__}: {e}") from None
                await self.sleep(self._backoff.delay(attempt))
                attempt += 1
                continue
            st = resp.status_code
            self.count_request("offenses", st)
            if st in (401, 403):
                raise AuthFailure(f"GET {OFFENSES} answered {st}: {_qerror(resp)} (check the SEC token "
                                  f"and its capabilities)")
            if st in (408, 429) or st >= 500:
                if attempt >= s.max_retries:
                    raise TransientFailure(f"GET {OFFENSES} answered {st} {attempt + 1} times in a row: "
                                           f"{_qerror(resp)}")
                wait = self._backoff.delay(attempt)
                ra = resp.headers.get("Retry-After")
                if st in (429, 503) and ra and ra.strip().isdigit():
                    wait = jitter(min(float(ra.strip()), 300.0))
                log.info("source %s: offenses answered %d (%s); retrying in %.2f s", self.cfg.name, st,
                         _qerror(resp), wait)
                if await self.sleep(wait):
                    raise TransientFailure("stopping")
                attempt += 1
                continue
            if st >= 300 or st < 200:
                raise ConfigFailure(f"GET {OFFENSES} answered {st}: {_qerror(resp)} (filter {flt!r}, sort "
                                    f"{sort!r}, Range items={start}-{end}, Version {s.api_version})")
            try:
                body = resp.json()
            except ValueError:
                raise TransientFailure(f"GET {OFFENSES} answered {st} with a body that is not JSON") from None
            if not isinstance(body, list):
                raise TransientFailure(f"GET {OFFENSES} answered {st} with JSON that is not a list")
            return [o for o in body if isinstance(o, dict) and _int(o.get("id")) is not None], \
                resp.headers.get("Content-Range")

    # ------------------------------------------------------------ offense context
    def _headers(self, **extra) -> dict:
        s = self.settings
        return {"SEC": s.token.reveal(), "Version": s.api_version, "Accept": "application/json", **extra}

    async def _get(self, op: str, path: str, params=None, headers=None, method: str = "GET"):
        """One context request, no retries (the offense must not wait on it) -> JSON."""
        resp = await self.client.request(method, self.settings.base_url + path, params=params,
                                         headers=self._headers(**(headers or {})))
        self.count_request(op, resp.status_code)
        if resp.status_code >= 300:
            raise TransientFailure(f"{method} {path} answered {resp.status_code}: {_qerror(resp)}")
        return resp.json() if resp.content else None

    def _cached(self, kind: str, ids, now: float) -> tuple[dict, list[int]]:
        have, want = {}, []
        for i in ids:
            hit = self._ctx.get((kind, i))
            if hit is not None and hit[1] > now:
                have[i] = hit[0]
            elif i not in want:
                want.append(i)
        return have, want

    async def _addresses(self, kind: str, path: str, field: str, ids: list[int], now: float) -> dict:
        have, want = self._cached(kind, ids, now)
        for k in range(0, len(want), 50):
            chunk = want[k:k + 50]
            rows = await self._get(f"context_{kind}", path,
                                   params={"filter": f"id in ({','.join(str(i) for i in chunk)})",
                                           "fields": f"id,{field}"},
                                   headers={"Range": f"items=0-{len(chunk) - 1}"})
            got = {_int(r.get("id")): r.get(field) for r in rows or () if isinstance(r, dict)}
            for i in chunk:
                v = got.get(i)
                v = str(v) if v else None
                self._ctx[(kind, i)] = (v, now + self.settings.context_ttl)
                have[i] = v
        return have

    async def _rule_names(self, ids: list[int], now: float) -> dict:
        have, want = self._cached("rule", ids, now)
        for i in want:
            try:
                r = await self._get("context_rule", f"/api/analytics/rules/{i}", params={"fields": "id,name"})
                v = str(r.get("name")) if isinstance(r, dict) and r.get("name") else None
            except TransientFailure as e:
                if " 404:" not in str(e):
                    raise
                v = None        # a deleted rule: remembered as unknown
            self._ctx[("rule", i)] = (v, now + self.settings.context_ttl)
            have[i] = v
        return have

    async def add_context(self, offenses: list[dict]) -> None:
        """Resolve the page's address and rule ids in place (``source_addresses``,
        ``local_destination_addresses``, ``rule_names``); a failure leaves the ids and a note."""
        now = time.monotonic()
        ids = {"src": [], "dst": [], "rule": []}
        for o in offenses:
            ids["src"] += [i for i in map(_int, o.get("source_address_ids") or ()) if i is not None]
            ids["dst"] += [i for i in map(_int, o.get("local_destination_address_ids") or ()) if i is not None]
            ids["rule"] += [i for i in (_int(r.get("id")) for r in o.get("rules") or () if isinstance(r, dict))
                            if i is not None]
        found, failed = {}, {}
        for kind, coro in (("src", lambda: self._addresses("src", "/api/siem/source_addresses", "source_ip",
                                                            ids["src"], now)),
                           ("dst", lambda: self._addresses("dst", "/api/siem/local_destination_addresses",
                                                            "local_destination_ip", ids["dst"], now)),
                           ("rule", lambda: self._rule_names(ids["rule"], now))):
            if not ids[kind]:
                found[kind] = {}
                continue
            try:
                found[kind] = await asyncio.wait_for(coro(), timeout=self.settings.timeout)
            except Exception as e:
                found[kind] = {}
                failed[kind] = f"{type(e).__name__}: {str(e)[:160] or 'timeout'}"
                log.warning("source %s: offense context (%s) not resolved: %s; the offenses go on with the ids",
                            self.cfg.name, kind, failed[kind])
                for i in ids[kind]:   # not tried again for a minute
                    self._ctx.setdefault((kind, i), (None, now + 60.0))
        for o in offenses:
            notes = []
            for kind, key, idkey, what in (("src", "source_addresses", "source_address_ids", "source address"),
                                           ("dst", "local_destination_addresses", "local_destination_address_ids",
                                            "destination address")):
                want = [i for i in map(_int, o.get(idkey) or ()) if i is not None]
                if not want:
                    continue
                vals = [found[kind].get(i) for i in want]
                o[key] = [v for v in vals if v]
                missing = [str(i) for i, v in zip(want, vals) if not v]
                if missing:
                    notes.append(f"qradar: {what} id(s) {', '.join(missing)} not resolved"
                                 + (f" ({failed[kind]})" if kind in failed else ""))
            rids = [i for i in (_int(r.get("id")) for r in o.get("rules") or () if isinstance(r, dict))
                    if i is not None]
            if rids:
                names = [found["rule"].get(i) for i in rids]
                o["rule_names"] = [n for n in names if n]
                missing = [str(i) for i, n in zip(rids, names) if not n]
                if missing:
                    notes.append(f"qradar: rule id(s) {', '.join(missing)} not resolved"
                                 + (f" ({failed['rule']})" if "rule" in failed else ""))
            if notes:
                o["_relay_notes"] = notes
        if len(self._ctx) > 100_000:
            self._ctx = {k: v for k, v in self._ctx.items() if v[1] > now}

    async def top_events(self, offense: dict) -> tuple[list | None, str | None]:
        """The offense's ``top_events`` highest-magnitude events (Ariel), bounded by
        ``ariel_timeout``; -> (events or None, a note when it failed)."""
        s = self.settings
        oid = _int(offense.get("id"))
        start = _int(offense.get("start_time")) or 0
        minutes = max(15, min(7 * 24 * 60, int((time.time() * 1000 - start) / 60000) + 15))
        aql = (f"SELECT QIDNAME(qid) AS event_name, LOGSOURCENAME(logsourceid) AS log_source, "
               f"CATEGORYNAME(category) AS category, sourceip, destinationip, username, starttime, magnitude "
               f"FROM events WHERE INOFFENSE({oid}) ORDER BY magnitude DESC LIMIT {s.top_events} "
               f"LAST {minutes} MINUTES")
        sid = None
        deadline = time.monotonic() + s.ariel_timeout
        try:
            r = await self._get("ariel", "/api/ariel/searches", params={"query_expression": aql}, method="POST")
            sid = r.get("search_id")
            status = r.get("status")
            wait = 0.05
            while status not in ("COMPLETED", "ERROR", "CANCELED"):
                if time.monotonic() + wait > deadline:
                    raise TimeoutError(f"the Ariel search was not complete after {s.ariel_timeout:g} s")
                if await self.sleep(wait):
                    raise TransientFailure("stopping")
                wait = min(wait * 2, 2.0)
                status = (await self._get("ariel", f"/api/ariel/searches/{sid}")).get("status")
            if status != "COMPLETED":
                raise TransientFailure(f"the Ariel search ended {status}")
            res = await self._get("ariel", f"/api/ariel/searches/{sid}/results",
                                  headers={"Range": f"items=0-{s.top_events - 1}"})
            events = [e for e in (res or {}).get("events") or () if isinstance(e, dict)][:s.top_events]
            return [{k: (v[:256] if isinstance(v, str) else v) for k, v in e.items()} for e in events], None
        except Exception as e:
            if sid is not None:
                try:
                    await self._get("ariel", f"/api/ariel/searches/{sid}", method="DELETE")
                except Exception:
                    pass
            return None, f"qradar: top events not fetched ({type(e).__name__}: {str(e)[:160]})"

    # ------------------------------------------------------------ polling
    def _filter(self, key: tuple[int, int] | None, lower: int) -> str:
        if key is None:
            f = f"last_updated_time >= {lower}"
        else:
            lut, oid = key
            f = f"(last_updated_time > {lut} or (last_updated_time = {lut} and id > {oid}))"
        if self.settings.filter:
            f = f"({self.settings.filter}) and {f}"
        return f

    def _count_event(self, ev: str) -> None:
        c = self._events_c.get(ev)
        if c is None:
            c = self._events_c[ev] = self.registry.counter("relay_pull_offense_events_total",
                                                           source=self.cfg.name, event=ev)
        c.value += 1

    async def poll_once(self) -> bool:
        s = self.settings
        cur = self.cursor
        now_ms = int(time.time() * 1000)
        if cur["lut"] is None:
            cur["lut"] = now_ms - int(s.first_fetch * 1000)
            cur["id"] = 0
        lower = cur["lut"] - int(s.overlap * 1000)
        key = None
        fetched = 0
        n = s.page_size
        while True:
            offenses, cr = await self.get_offenses(self._filter(key, lower), "+last_updated_time,+id", 0, n - 1)
            fetched += len(offenses)
            if not offenses:
                break
            known = dict(cur["known"])
            max_pruned = cur["max_pruned_id"]
            changed = [(o, classify(o, known, max_pruned)) for o in offenses]
            if s.resolve_context:
                await self.add_context([o for o, ev in changed if ev is not None])
            received = time.time()
            events = []
            for o, ev in changed:
                oid = str(_int(o.get("id")))
                lut = _int(o.get("last_updated_time")) or 0
                status = str(o.get("status") or "").upper()
                if ev is None:
                    continue
                notes = o.pop("_relay_notes", None)
                top = None
                if s.top_events and ev == "created":
                    top, note = await self.top_events(o)
                    if note:
                        notes = (notes or []) + [note]
                fields = normalise_offense(o, console_url=s.console_url)
                fields["event"] = ev
                if top is not None:
                    fields["extra"]["top_events"] = top
                if notes:
                    fields["extra"]["notes"] = (fields["extra"].get("notes") or []) + notes
                events.append(make_event(fields, o, self.cfg.name, received))
                known.pop(oid, None)
                known[oid] = [lut, status]
                self._count_event(ev)
            while len(known) > s.known_max:        # FIFO: the least recently changed go first
                old = next(iter(known))
                known.pop(old)
                max_pruned = max(max_pruned, _int(old) or 0)
            last = offenses[-1]
            key = (_int(last.get("last_updated_time")) or 0, _int(last.get("id")) or 0)
            new_lut, new_id = max((cur["lut"], cur["id"]), key)
            state = {"lut": new_lut, "id": new_id, "known": known, "max_pruned_id": max_pruned,
                     "updated": received}
            await self.commit(events, state)
            self.cursor = cur = {"lut": new_lut, "id": new_id, "known": known, "max_pruned_id": max_pruned}
            if events:
                log.info("source %s: %d offense event(s) queued (%s); watermark last_updated_time=%d id=%d",
                         self.cfg.name, len(events), ", ".join(sorted({e.fields['event'] for e in events})),
                         new_lut, new_id)
            rng = parse_content_range(cr)
            if rng is not None and rng[2] is not None:
                more = rng[1] + 1 < rng[2]
            else:
                more = len(offenses) >= n
            if not more:
                break
            if fetched >= s.max_per_poll:
                return True
            if self._stop.is_set():
                break
        return False


def _qerror(resp) -> str:
    try:
        body = resp.json()
    except ValueError:
        return redact(resp.text or "")[:160].strip() or "(no body)"
    if isinstance(body, dict):
        parts = [str(body.get(k)) for k in ("code", "message", "description") if body.get(k) not in (None, "")]
        return " ".join(parts)[:240] or str(body)[:160]
    return str(body)[:160]


KIND = kinds.register_source(kinds.SourceKind(
    type="qradar_offenses", read_config=read_config, factory=QradarOffenseSource,
    keys=("url", "token_env", "token_file", "filter", "api_version", "console_url", "known_max", "max_per_poll",
          "resolve_context", "context_ttl", "top_events", "ariel_timeout") + COMMON_KEYS,
    doc="polls QRadar offenses (/api/siem/offenses): created, updated and closed"))

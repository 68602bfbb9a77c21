"""The XSOAR mirror (``type = "xsoar_mirror"``): closes and reassignments of the incidents this
relay created, as ``closure`` / ``assignment`` events for the write-back sinks.

Every poll (``poll_interval`` s) searches XSOAR (``POST /incidents/search``, the XSOAR sinks'
auth: XSOAR 6 key, XSOAR 8 standard or advanced key) for incidents that carry the dedup field
and were modified since the watermark::

    {"filter": {"query": "relaydedupkey:* and modified:>=\\"<watermark - overlap>\\"",
                "page": 0, "size": <page_size>, "sort": [{"field": "modified", "asc": true}]}}

and pages by *keyset*: the next page starts at the last row's ``modified`` (inclusive; the rows
already handled are recognised), or takes the next page number when a whole page shares one
``modified``.  Per incident the state remembers the status, owner and close time last seen
(``known``), so only a change makes an event:

* ``closure`` - the incident is closed (status 2) and was not, or was closed at another time
  (closed, reopened, closed again: two closures);
* ``assignment`` - the owner changed (to a non-empty owner).

The incident's dedup key names its **origin**: ``rhythmx:INC-7601d999`` came from RhythmX,
``qradar:1201`` from a QRadar offense, ``falcon:<composite id>`` from a Falcon alert.  The event
carries ``kind`` (``closure``/``assignment``), ``origin`` (the key's prefix), ``vendor`` and
``product`` of the origin, ``id`` (the origin's own id), ``dedup_key`` (the origin's key),
``status``, ``user`` (the owner) and in ``extra`` the XSOAR id, close reason, close notes,
owner, close and modify times.  Routes send it to the write-back sink of its origin, e.g.
``kind == "closure" and vendor == "RhythmX"``.  Keys with another prefix (``origins``) or
without an origin id (a digest key) are not mirrored.

Loop guard: a close the relay itself made in XSOAR (an XSOAR sink with
``close_on_source_close``: the origin closed first) carries that sink's ``close_notes``; the
mirror does not echo it back to the origin (``relay_mirror_skipped_total{reason="own_close"}``).
``relay_close_notes`` must match the XSOAR sink's ``close_notes`` (both default to
``Closed at the source (relay)``).  The write-back sinks also read the origin's state first: a
write that is already true there is a no-op.

Events are durably queued, then the state (``<state_dir>/xsoar-mirror-<source>.json``: the
watermark and ``known``) is written; a crash between re-reads (at least once: the write-back
sinks are idempotent).  Failures as for every pull source (relay/sources/pull.py): 401/403 and
other 4xx block with an ALERT, 429/5xx/network errors are retried with backoff.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from formats.writeback import ORIGINS

from .. import kinds
from ..checks import http_url
from ..secrets import read_secret, redact
from ..sinks.xsoar import XsoarSettings, auth_headers
from .pull import (COMMON_KEYS, AuthFailure, Backoff, ConfigFailure, PullSettings, PullSource, TransientFailure,
                   jitter, make_event, read_common)

log = logging.getLogger("relay.sources.xsoar_mirror")

__all__ = ["MirrorSettings", "MirrorSource", "read_config", "ORIGINS", "parse_time", "iso_ms", "origin_of"]

STATUS_CLOSED = 2
RELAY_CLOSE_NOTES = "Closed at the source (relay)"
_FRAC = re.compile(r"(\.\d{1,6})\d*")


def parse_time(v) -> float | None:
    """An XSOAR time (``2026-03-13T04:30:00.123Z``, nanoseconds, an offset) -> epoch; None for
    none or XSOAR's zero time (``0001-01-01T00:00:00Z``)."""
    if not isinstance(v, str) or not v.strip() or v.startswith("0001-"):
        return None
    try:
        dt = datetime.fromisoformat(_FRAC.sub(r"\1", v.strip()).replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def iso_ms(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def origin_of(key: str, origins) -> tuple[str, str] | None:
    """``rhythmx:INC-1`` -> (``rhythmx``, ``INC-1``); None for another prefix or a digest key."""
    prefix, sep, rest = str(key).partition(":")
    if not sep or not rest or prefix not in origins or rest.startswith("raw:"):
        return None
    return prefix, rest


@dataclass(frozen=True)
class MirrorSettings(PullSettings):
    xsoar: XsoarSettings | None = None
    dedup_field: str = "relaydedupkey"
    origins: tuple = tuple(ORIGINS)
    events: tuple = ("closure", "assignment")
    relay_close_notes: str = RELAY_CLOSE_NOTES
    known_max: int = 50000
    max_per_poll: int = 5000


def read_config(table, sc, base_dir: Path) -> None:
    url = table.get("url", str, required=True, check=http_url).rstrip("/")
    key = read_secret(table, "api_key_env", "api_key_file", "XSOAR API key", base_dir, literal="api_key")
    auth_id = table.get("auth_id", (str, int), None)
    if auth_id is not None:
        auth_id = str(auth_id).strip()
        if not auth_id:
            raise table.err("auth_id", "must not be empty (the XSOAR 8 API key ID)")
    key_type = table.get("key_type", str, "standard", choices=("standard", "advanced"))
    if key_type == "advanced" and auth_id is None:
        raise table.err("key_type", "advanced keys are XSOAR 8 keys: set auth_id (the key's ID) too")
    prefix = table.get("api_prefix", str, None)
    if prefix is None:
        prefix = "/xsoar/public/v1" if auth_id else ""
    prefix = prefix.strip().rstrip("/")
    if prefix and not prefix.startswith("/"):
        raise table.err("api_prefix", f"{prefix!r} must be a path like /xsoar/public/v1 (or empty)")
    field_ = table.get("dedup_field", str, "relaydedupkey")
    if not re.fullmatch(r"[a-z0-9_]+", field_):
        raise table.err("dedup_field", f"{field_!r} is not an XSOAR field machine key (e.g. relaydedupkey)")
    origins = table.get("origins", list, list(ORIGINS))
    bad = [o for o in origins if o not in ORIGINS]
    if bad or not origins:
        raise table.err("origins", f"{bad or origins!r}: each one of {', '.join(ORIGINS)}")
    events = table.get("events", list, ["closure", "assignment"])
    if not events or any(e not in ("closure", "assignment") for e in events):
        raise table.err("events", f"{events!r}: closure and/or assignment")
    common = read_common(table, base_dir, poll_interval=30.0, page_size=100, max_page=1000,
                         first_fetch=3600.0, overlap=60.0)
    sc.options["pull"] = MirrorSettings(
        base_url=url, **common,
        xsoar=XsoarSettings(url=url, api_key=key, auth_id=auth_id, key_type=key_type, api_prefix=prefix),
        dedup_field=field_, origins=tuple(dict.fromkeys(origins)), events=tuple(dict.fromkeys(events)),
        relay_close_notes=table.get("relay_close_notes", str, RELAY_CLOSE_NOTES),
        known_max=table.get("known_max", int, 50000, check=lambda v: None if v > 0 else
                            (_ for _ in ()).throw(ValueError(f"must be greater than 0, not {v}"))),
        max_per_poll=table.get("max_per_poll", int, 5000, check=lambda v: None if v > 0 else
                               (_ for _ in ()).throw(ValueError(f"must be greater than 0, not {v}"))),
    )


def _custom(inc: dict) -> dict:
    cf = inc.get("CustomFields")
    if not isinstance(cf, dict):
        cf = inc.get("customFields")
    return cf if isinstance(cf, dict) else {}


class MirrorSource(PullSource):
    kind = "XSOAR mirror"
    state_name = "xsoar-mirror"

    def __init__(self, cfg, pipeline, registry=None, *, transport=None) -> None:
        super().__init__(cfg, pipeline, registry, transport=transport)
        self.settings: MirrorSettings
        self._backoff = Backoff(self.settings.retry_base, self.settings.retry_cap)
        self._counters: dict = {}
        self.cursor: dict = {}

    def _count(self, name: str, **labels) -> None:
        k = (name, tuple(sorted(labels.items())))
        c = self._counters.get(k)
        if c is None:
            c = self._counters[k] = self.registry.counter(name, source=self.cfg.name, **labels)
        c.value += 1

    # ------------------------------------------------------------ state
    def _load(self) -> dict:
        st = self.state.load()
        known = {}
        if isinstance(st.get("known"), dict):
            for k, v in st["known"].items():
                if isinstance(v, list) and len(v) == 3:
                    known[str(k)] = v
        mark = st.get("mark")
        return {"mark": float(mark) if isinstance(mark, (int, float)) and not isinstance(mark, bool) else None,
                "known": known}

    async def start(self) -> None:
        self.cursor = await asyncio.to_thread(self._load)
        await super().start()

    # ------------------------------------------------------------ requests
    async def search(self, lower: str, page: int) -> list[dict]:
        s = self.settings
        x = s.xsoar
        body = {"filter": {"query": f'{s.dedup_field}:* and modified:>="{lower}"', "page": page,
                           "size": s.page_size, "sort": [{"field": "modified", "asc": True}]}}
        path = x.api_prefix + "/incidents/search"
        attempt = 0
        while True:
            if self._stop.is_set():
                raise TransientFailure("stopping")
            try:
                resp = await self.client.post(s.base_url + path, json=body, headers=auth_headers(x))
            except Exception as e:
                self.count_request("search", "error")
                if attempt >= s.max_retries:
                    raise TransientFailure(f"search: {type(e).__name__}: {e}") from None
                if await self.sleep(self._backoff.delay(attempt)):
                    raise TransientFailure("stopping")
                attempt += 1
                continue
            st = resp.status_code
            self.count_request("search", st)
            if st in (401, 403):
                raise AuthFailure(f"POST {path} answered {st}: {_error(resp)} (check the API key, auth_id, "
                                  f"key_type)")
            if st in (408, 429) or st >= 500:
                if attempt >= s.max_retries:
                    raise TransientFailure(f"POST {path} answered {st} {attempt + 1} times in a row")
                ra = resp.headers.get("Retry-After")
                wait = jitter(min(float(ra), 300.0)) if ra and ra.strip().isdigit() else self._backoff.delay(attempt)
                if await self.sleep(wait):
                    raise TransientFailure("stopping")
                attempt += 1
                continue
            if not 200 <= st < 300:
                raise ConfigFailure(f"POST {path} answered {st}: {_error(resp)} (query {body['filter']['query']!r})")
            try:
                res = resp.json()
            except ValueError:
                raise TransientFailure(f"POST {path} answered {st} with a body that is not JSON") from None
            data = res.get("data") if isinstance(res, dict) else None
            if data is None:
                return []
            if not isinstance(data, list):
                raise TransientFailure(f"POST {path}: data is not a list: {str(res)[:160]}")
            return [i for i in data if isinstance(i, dict) and i.get("id") not in (None, "")]

    # ------------------------------------------------------------ events
    def _events_of(self, inc: dict, known: dict, received: float) -> list:
        s = self.settings
        key = _custom(inc).get(s.dedup_field)
        iid = str(inc.get("id"))
        status = inc.get("status")
        owner = str(inc.get("owner") or "")
        closed_at = inc.get("closed") if status == STATUS_CLOSED else None
        prev = known.get(iid)
        known.pop(iid, None)
        known[iid] = [status, owner, closed_at]
        if not key:
            return []
        org = origin_of(key, s.origins)
        if org is None:
            self._count("relay_mirror_skipped_total", reason="not_an_origin")
            return []
        out = []
        if "closure" in s.events and status == STATUS_CLOSED and (prev is None or prev[0] != STATUS_CLOSED
                                                                  or prev[2] != closed_at):
            if s.relay_close_notes and str(inc.get("closeNotes") or "").strip() == s.relay_close_notes.strip():
                self._count("relay_mirror_skipped_total", reason="own_close")
                log.info("source %s: XSOAR incident %s (%s) was closed by the relay itself (the origin closed "
                         "first): not written back", self.cfg.name, iid, key)
            else:
                out.append(self._event("closure", inc, key, org, received))
        if "assignment" in s.events and owner and owner != (prev[1] if prev else ""):
            out.append(self._event("assignment", inc, key, org, received))
        return out

    def _event(self, kind: str, inc: dict, key: str, org: tuple[str, str], received: float):
        prefix, origin_id = org
        vendor, product = ORIGINS[prefix]
        owner = str(inc.get("owner") or "")
        mod = inc.get("modified")
        when = parse_time(mod) or received
        extra = {"origin_key": key, "xsoar_id": str(inc.get("id")), "xsoar_name": inc.get("name"),
                 "owner": owner, "modified": mod}
        if kind == "closure":
            extra.update(close_reason=inc.get("closeReason") or "", close_notes=inc.get("closeNotes") or "",
                         closed=inc.get("closed"))
            name = f"Closed in XSOAR: {inc.get('name') or key}"
            desc = (f"XSOAR incident {inc.get('id')} ({key}) closed by {owner or 'an unassigned analyst'}: "
                    f"{inc.get('closeReason') or 'no reason given'}")
        else:
            name = f"Assigned in XSOAR: {inc.get('name') or key}"
            desc = f"XSOAR incident {inc.get('id')} ({key}) assigned to {owner}"
        fields = {"kind": kind, "vendor": vendor, "product": product, "origin": prefix, "id": origin_id,
                  "dedup_key": key, "event": kind, "name": name, "description": desc,
                  "severity": "informational", "status": "closed" if inc.get("status") == STATUS_CLOSED else "open",
                  "occurred": iso_ms(when), "occurred_unix": when, "user": owner or None, "extra": extra}
        body = {k: v for k, v in inc.items() if k not in ("rawJSON", "details", "labels")}
        self._count("relay_mirror_events_total", event=kind, origin=prefix)
        return make_event(fields, body, self.cfg.name, received)

    # ------------------------------------------------------------ polling
    async def poll_once(self) -> bool:
        s = self.settings
        cur = self.cursor
        now = time.time()
        mark = cur["mark"] if cur["mark"] is not None else now - s.first_fetch
        lower = iso_ms(max(0.0, mark - s.overlap))
        high = mark
        page = 0
        read = 0
        while True:
            rows = await self.search(lower, page)
            read += len(rows)
            known = dict(cur["known"])
            received = time.time()
            events = []
            for inc in rows:
                events += self._events_of(inc, known, received)
                t = parse_time(inc.get("modified"))
                if t is not None and t > high:
                    high = t
            while len(known) > s.known_max:
                known.pop(next(iter(known)))
            full = len(rows) >= s.page_size
            done = not full or read >= s.max_per_poll
            new = {"mark": min(high, now + 60.0) if done else cur["mark"], "known": known}
            prev, self.cursor = self.cursor, new
            try:
                await self.commit(events, {**new, "updated": received})
            except BaseException:
                self.cursor = prev
                raise
            cur = new
            if events:
                log.info("source %s: %d write-back event(s) queued (%s)", self.cfg.name, len(events),
                         ", ".join(f"{e.fields['event']} {e.fields['dedup_key']}" for e in events[:5]))
            if done or self._stop.is_set():
                return full and read >= s.max_per_poll
            last = rows[-1].get("modified")
            if isinstance(last, str) and last and last != lower:
                lower, page = last, 0
            else:
                page += 1


def _error(resp) -> str:
    try:
        body = resp.json()
    except ValueError:
        return redact(resp.text or "")[:160].strip() or "(no body)"
    return redact(str(body))[:200]


KIND = kinds.register_source(kinds.SourceKind(
    type="xsoar_mirror", read_config=read_config, factory=MirrorSource,
    keys=("url", "api_key_env", "api_key_file", "auth_id", "key_type", "api_prefix", "dedup_field", "origins",
          "events", "relay_close_notes", "known_max", "max_per_poll") + COMMON_KEYS,
    doc="polls XSOAR for closes and reassignments of the incidents this relay made: closure and assignment "
        "events naming their origin, for the write-back sinks"))

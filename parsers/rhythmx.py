"""RhythmX ``SigmaIncident`` normaliser, plus the canonical-schema helpers every
normaliser shares (severity scale, time parsing, generic syslog mapping).

The canonical event schema is documented in docs/schema.md; this module and
parsers/falcon.py and parsers/qradar.py are the code side of that document.

A SigmaIncident message (RFC 5424, APP-NAME ``SigmaIncident``, facility local1)::

    <137>1 2026-03-13T04:30:00.123Z rx-01 SigmaIncident 4242 created
      [incident@32473 id="INC-7601d999" actor="jdoe" entity="Primary Site" status="OPEN"
       risk_score="82" alarm_count="12" sigma_alert_count="3" threat_case_count="1"
       related_case_ids="C-11,C-12"] {"incident_id":"INC-7601d999","risk_score":82,...}

Precedence: the SD params win for identity, status, score and counts (they are what
SIEM rules see); the JSON body fills what the SD lacks and adds the rest (risk
breakdown, MITRE tactics, timeline...).  Every disagreement between the two is
recorded in ``event.notes``.  A missing or malformed body, a missing SD element or
a malformed param never fails the message: it becomes a note.

Pure decoding: no I/O, no sockets, no config files.
"""
from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import orjson

from parsers.event import Event, text

__all__ = [
    "RhythmxConfig", "DEFAULT_CONFIG", "normalise", "matches",
    # canonical-schema helpers shared by the normalisers
    "SEVERITIES", "SEVERITY_RANK", "SEVERITY_TO_SYSLOG", "SEVERITY_TO_CEF", "SEVERITY_TO_LEEF",
    "severity_from_score", "severity_from_1_5", "score_from_1_5", "score_from_severity",
    "severity_from_syslog", "score_from_syslog", "to_score", "time_pair", "parse_time",
    "iso_utc", "is_ip", "log_fields", "canonical_status",
]

# ---------------------------------------------------------------------------
# The ONE severity scale (docs/schema.md "Severity")
# ---------------------------------------------------------------------------

SEVERITIES = ("informational", "low", "medium", "high", "critical")
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}          # for >= comparisons
#: representative risk_score of a band (its midpoint) when only a band is known
_BAND_SCORE = {"informational": 10, "low": 30, "medium": 50, "high": 70, "critical": 90}
#: encoder tables (formats.md 4.2; CEF/LEEF columns are our proposal)
SEVERITY_TO_SYSLOG = {"informational": 6, "low": 5, "medium": 4, "high": 3, "critical": 2}
SEVERITY_TO_CEF = {"informational": 1, "low": 3, "medium": 5, "high": 7, "critical": 9}
SEVERITY_TO_LEEF = {"informational": 1, "low": 3, "medium": 5, "high": 7, "critical": 9}

_FROM_1_5 = {1: "informational", 2: "low", 3: "medium", 4: "high", 5: "critical"}
# syslog severity 0..7 -> (canonical severity, risk_score) for kind=log events
_FROM_SYSLOG = {
    0: ("critical", 100), 1: ("critical", 95), 2: ("critical", 90), 3: ("high", 70),
    4: ("medium", 50), 5: ("low", 30), 6: ("informational", 10), 7: ("informational", 0),
}


def severity_from_score(score: int) -> str:
    """risk_score 0-100 -> band: 0-19 informational, 20-39 low, 40-59 medium,
    60-79 high, 80-100 critical (formats.md 4.2; Falcon's 1-100 bands).
    Values outside 0-100 are clamped."""
    if score >= 60:
        return "critical" if score >= 80 else "high"
    if score >= 40:
        return "medium"
    return "low" if score >= 20 else "informational"


def severity_from_1_5(value: int) -> str | None:
    """Falcon streaming ``Severity`` 1-5 -> band; ``None`` outside 1-5."""
    return _FROM_1_5.get(value)


def score_from_1_5(value: int) -> int | None:
    """Falcon 1-5 -> representative risk_score (band midpoint: 10, 30, 50, 70, 90)."""
    sev = _FROM_1_5.get(value)
    return None if sev is None else _BAND_SCORE[sev]


def score_from_severity(severity: str) -> int | None:
    return _BAND_SCORE.get(severity)


def severity_from_syslog(sev: int | None) -> str:
    """RFC 5424 severity 0-7 -> band (0-2 critical, 3 high, 4 medium, 5 low,
    6-7 informational); unknown -> informational."""
    return _FROM_SYSLOG.get(sev, ("informational", 10))[0]


def score_from_syslog(sev: int | None) -> int:
    return _FROM_SYSLOG.get(sev, ("informational", 10))[1]


def to_score(value) -> int | None:
    """An int risk score 0-100 from an int, float or numeric string (clamped);
    ``None`` when absent or not a number.  bool is not a number."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        n = value
    else:
        try:
            n = int(value)
        except (TypeError, ValueError):
            try:
                n = round(float(value))
            except (TypeError, ValueError, OverflowError):
                return None
    return 0 if n < 0 else 100 if n > 100 else n


def _to_int(value):
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def canonical_status(value) -> str | None:
    """Vendor status -> canonical: lower case, spaces and dashes to ``_``
    (``OPEN`` -> ``open``, ``In Progress`` -> ``in_progress``)."""
    if value is None:
        return None
    hit = _STATUS_CACHE.get(value) if value.__class__ is str else None
    if hit is not None:
        return hit
    s = str(value).strip()
    if not s:
        return None
    s = s.lower().replace(" ", "_").replace("-", "_")
    if value.__class__ is str and len(_STATUS_CACHE) < 256:
        _STATUS_CACHE[value] = s
    return s


_STATUS_CACHE: dict = {}


# ---------------------------------------------------------------------------
# Time: (ISO 8601 UTC millisecond string, epoch float); never compare strings
# ---------------------------------------------------------------------------

_UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)


def _iso_dt(dt: datetime) -> str:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=_UTC)
    elif dt.utcoffset():
        dt = dt.astimezone(_UTC)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (
        dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second, dt.microsecond // 1000)


def _from_epoch(value: int | float):
    """Epoch number -> (iso, unix seconds).  Unit from magnitude: >= 1e17 ns,
    >= 1e14 us, >= 1e11 ms (1e11 s would be the year 5138), else seconds."""
    a = abs(value)
    if a >= 1e17:
        ms, unix = value // 1_000_000 if isinstance(value, int) else round(value / 1e6), value / 1e9
    elif a >= 1e14:
        ms, unix = value // 1000 if isinstance(value, int) else round(value / 1e3), value / 1e6
    elif a >= 1e11:
        ms, unix = (value if isinstance(value, int) else round(value)), value / 1e3
    else:
        ms, unix = (value * 1000 if isinstance(value, int) else round(value * 1000)), float(value)
    try:
        secs, rem = divmod(int(ms), 1000)
        dt = _EPOCH + timedelta(seconds=secs)
    except (OverflowError, ValueError):
        return None, None
    return ("%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (
        dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second, rem)), float(unix)


def time_pair(value) -> tuple[str | None, float | None]:
    """Any vendor time -> ``(iso, unix)``: ``iso`` is ISO 8601 UTC with exactly three
    fraction digits and ``Z`` (fraction truncated to ms; epoch floats rounded to ms),
    ``unix`` is epoch seconds (float, full precision).  Accepts datetime (naive = UTC),
    int/float epoch in s/ms/us/ns (by magnitude), digit strings (epoch), and ISO 8601
    strings with ``Z`` or an offset and any number of fraction digits (naive = UTC).
    ``(None, None)`` when absent or unparseable."""
    if value is None or isinstance(value, bool):
        return None, None
    if isinstance(value, (int, float)):
        if value != value or value in (float("inf"), float("-inf")):
            return None, None
        return _from_epoch(value)
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=_UTC)
        return _iso_dt(dt), dt.timestamp()
    if not isinstance(value, str):
        return None, None
    s = value.strip()
    if not s:
        return None, None
    if s.isdigit() or (s[0] == "-" and s[1:].isdigit()):
        return _from_epoch(int(s))
    if s[0].isdigit() and s.count(".") == 1 and s.replace(".", "", 1).isdigit():
        return _from_epoch(float(s))
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        # fromisoformat (3.11) takes 'Z' and long fractions, but not e.g. "+0000"
        if len(s) > 5 and s[-5] in "+-" and s[-4:].isdigit():
            try:
                dt = datetime.fromisoformat(s[:-2] + ":" + s[-2:])
            except ValueError:
                return None, None
        else:
            return None, None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=_UTC)
    return _iso_dt(dt), dt.timestamp()


def parse_time(value) -> float | None:
    """Epoch seconds (float) from any vendor time, or None (see :func:`time_pair`)."""
    return time_pair(value)[1]


def iso_utc(unix: float | None) -> str | None:
    """Epoch seconds -> ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (rounded to ms)."""
    if unix is None:
        return None
    return _from_epoch(float(unix))[0]


def _event_time(event: Event) -> tuple[str | None, float | None]:
    """(iso, unix) of an Event's own syslog TIMESTAMP, cheaply; falls back to
    ``received``."""
    ts = event.timestamp
    unix = event.time_unix
    if ts is not None and unix is not None:
        n = len(ts)
        # fast path: already UTC 'Z' -> re-use the string, fraction cut/padded to ms
        if n >= 20 and ts[-1] == "Z" and ts[10] == "T":
            c = ts[19]
            if c == "Z":
                return ts[:19] + ".000Z", unix
            if c == ".":
                frac = ts[20:-1]
                if len(frac) != 3:
                    frac = (frac + "000")[:3]
                return ts[:20] + frac + "Z" if len(ts) != 24 else ts, unix
        return iso_utc(unix), unix
    if unix is not None:
        return iso_utc(unix), unix
    if ts is not None:
        return time_pair(ts)
    if event.received is not None:
        return iso_utc(event.received), event.received
    return None, None


def is_ip(value) -> bool:
    """Is this str an IPv4/IPv6 address?  Cheap reject for ordinary names."""
    if not value or not isinstance(value, str) or len(value) > 45:
        return False
    c = value[0]
    if not (c.isdigit() or ":" in value):
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _digest_key(event: Event) -> str:
    data = event.raw or (event.msg or "").encode("utf-8", "surrogateescape")
    return hashlib.blake2b(data, digest_size=8).hexdigest()


# ---------------------------------------------------------------------------
# Generic syslog mapping (kind = log)
# ---------------------------------------------------------------------------

def log_fields(event: Event, *, vendor: str | None = None, product: str | None = None) -> dict:
    """Canonical fields for a plain syslog message (kind ``log``): severity and
    risk_score from the PRI severity, host from HOSTNAME, name from MSGID or APP-NAME,
    description = MSG; dedup_key ``log:<blake2b-64 of the raw bytes>`` (identical
    retransmissions collapse, different messages never do)."""
    occurred, unix = _event_time(event)
    sev = event.severity
    return {
        "kind": "log",
        "vendor": vendor,
        "product": product if product is not None else event.app_name,
        "id": None,
        "dedup_key": "log:" + _digest_key(event),
        "event": event.msgid,
        "name": event.msgid or event.app_name,
        "description": text(event.msg),
        "risk_score": score_from_syslog(sev),
        "severity": severity_from_syslog(sev),
        "status": None,
        "occurred": occurred,
        "occurred_unix": unix,
        "src_ip": None,
        "dst_ip": None,
        "host": event.hostname,
        "user": None,
        "tactic": None,
        "technique": None,
        "url": None,
        "extra": {
            "facility": event.facility,
            "syslog_severity": sev,
            "app_name": event.app_name,
            "procid": event.procid,
            "msgid": event.msgid,
        },
    }


# ---------------------------------------------------------------------------
# RhythmX SigmaIncident
# ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RhythmxConfig:
    """Names used on the wire.  The defaults are the stock RhythmX export."""
    app_name: str = "SigmaIncident"
    sd_id: str = "incident@32473"
    id_param: str = "id"
    actor_param: str = "actor"
    actor_type_param: str = "actor_type"
    entity_param: str = "entity"
    status_param: str = "status"
    risk_param: str = "risk_score"
    alarm_count_param: str = "alarm_count"
    sigma_alert_count_param: str = "sigma_alert_count"
    threat_case_count_param: str = "threat_case_count"
    related_param: str = "related_case_ids"
    vendor: str = "RhythmX"
    product: str = "SigmaIncident"
    dedup_prefix: str = "rhythmx"


DEFAULT_CONFIG = RhythmxConfig()

# body keys that are folded into canonical fields (everything else goes to extra)
_BODY_CANONICAL = frozenset((
    "incident_id", "risk_score", "status", "title", "name", "description", "summary",
    "src_ip", "source_ip", "dst_ip", "destination_ip", "host", "hostname", "user",
    "url", "link", "investigation_url", "event", "timestamp", "created_at",
))
_EMPTY: dict = {}
_STATUS_FROM_EVENT = {"created": "open", "closed": "closed", "reopened": "open"}


def matches(event: Event, config: RhythmxConfig | None = None) -> bool:
    """Is this a SigmaIncident message (APP-NAME, or the incident SD element)?"""
    cfg = config or DEFAULT_CONFIG
    if event.app_name == cfg.app_name:
        return True
    sd = event.sd
    return bool(sd) and cfg.sd_id in sd


def _sd_element(event: Event, cfg: RhythmxConfig) -> dict:
    sd = event.sd
    if not sd:
        return {}
    params = sd.get(cfg.sd_id)
    if params is not None:
        return params
    # same SD name under another PEN (e.g. incident@99999): accept, with a note
    name = cfg.sd_id.partition("@")[0] + "@"
    for sid, p in sd.items():
        if sid.startswith(name):
            event.note(f"rhythmx: SD-ID {sid!r} used in place of {cfg.sd_id!r}")
            return p
    return {}


def _clean_params(params: dict, event: Event) -> dict:
    """The SD params with every value a plain str: a repeated param keeps its first
    value (with a note), bytes that are not UTF-8 become U+FFFD.  Returns the same
    dict when nothing needs doing (the usual case)."""
    for v in params.values():
        if v.__class__ is not str or not v.isascii():
            break
    else:
        return params
    out = {}
    for k, v in params.items():
        if v.__class__ is list:
            event.note(f"rhythmx: SD param {k!r} repeated; first value used")
            v = v[0] if v else None
        if v is not None and not v.isascii():
            v = text(v)
        out[k] = v
    return out


_USED_CACHE: dict = {}


def _used_params(cfg: RhythmxConfig) -> frozenset:
    """The SD param names with a canonical meaning under this config."""
    hit = _USED_CACHE.get(id(cfg))
    if hit is not None and hit[0] is cfg:
        return hit[1]
    used = frozenset((cfg.id_param, cfg.risk_param, cfg.status_param, cfg.actor_param,
                      cfg.actor_type_param, cfg.entity_param, cfg.alarm_count_param,
                      cfg.sigma_alert_count_param, cfg.threat_case_count_param, cfg.related_param))
    if len(_USED_CACHE) > 64:
        _USED_CACHE.clear()
    _USED_CACHE[id(cfg)] = (cfg, used)
    return used


def _parse_body(event: Event, tag: str):
    """The JSON object in MSG (cached in event.body), or None with a note."""
    body = event.body
    if body is not None:
        return body if body.__class__ is dict else None
    msg = event.msg
    if not msg:
        return None
    s = msg
    if s[0] != "{":
        s = s.lstrip(" \t\r\n\ufeff")
        if not s:
            return None
        if s[0] != "{":
            event.note(f"{tag}: body is not a JSON object; ignored")
            return None
    try:
        body = orjson.loads(s)
    except orjson.JSONDecodeError as exc:
        clean = text(s)         # bytes that are not UTF-8 (surrogateescape) -> U+FFFD
        body = None
        if clean is not s and clean != s:
            try:
                body = orjson.loads(clean)
                event.note(f"{tag}: body has bytes that are not UTF-8; replaced by U+FFFD")
            except orjson.JSONDecodeError:
                body = None
        if body is None:
            event.note(f"{tag}: body is not valid JSON ({exc}); ignored")
            return None
    if body.__class__ is not dict:
        event.note(f"{tag}: body is JSON but not an object; ignored")
        return None
    event.body = body
    return body


def _split_ids(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [str(x).strip() for x in value if x is not None and str(x).strip()]
    return [p.strip() for p in str(value).split(",") if p.strip()]


def _mitre(items):
    """First entry of a MITRE list of str or {id,name} dicts -> (name, id)."""
    if not items or not isinstance(items, list):
        return None, None
    first = items[0]
    if isinstance(first, dict):
        name = first.get("name") or first.get("tactic") or first.get("technique")
        mid = first.get("id") or first.get("tactic_id") or first.get("technique_id")
        return (str(name) if name is not None else None), (str(mid) if mid is not None else None)
    s = str(first)
    if s[:2] in ("TA", "T1") and s[2:3].isdigit():
        return None, s
    return s, None


def _count(raw, bval, canon: str, pname: str, event: Event):
    n = None
    if raw is not None:
        try:
            n = int(raw)
        except ValueError:
            event.note(f"rhythmx: SD {pname}={raw!r} is not an integer; ignored")
    bn = _to_int(bval) if bval is not None else None
    if n is None:
        return bn
    if bn is not None and bn != n:
        event.note(f"rhythmx: {canon} SD={n} body={bn}; SD wins")
    return n


def normalise(event: Event, config: RhythmxConfig | None = None) -> Event:
    """Fill ``event.fields`` (canonical schema) from a SigmaIncident message; set
    ``event.body`` to the parsed JSON body when there is one.  Never raises for
    content problems: they become ``event.notes``."""
    cfg = config or DEFAULT_CONFIG
    sd = event.sd
    if sd is None:
        event.note("rhythmx: no structured data; body only")
        params = {}
    else:
        params = sd.get(cfg.sd_id)
        if params is None:
            params = _sd_element(event, cfg)
            if not params:
                event.note(f"rhythmx: no {cfg.sd_id} SD element; body only")
        if params:
            params = _clean_params(params, event)
    body = _parse_body(event, "rhythmx")
    b = body if body is not None else _EMPTY
    note = event.note
    get = params.get

    # --- identity: SD wins, body fills -----------------------------------
    inc_id = get(cfg.id_param)
    b_id = b.get("incident_id")
    if b_id is not None:
        b_id = str(b_id)
        if inc_id is None:
            inc_id = b_id
        elif b_id != inc_id:
            note(f"rhythmx: incident id SD={inc_id!r} body={b_id!r}; SD wins")

    # --- risk score --------------------------------------------------------
    score = None
    raw = get(cfg.risk_param)
    if raw is not None:
        score = to_score(raw)
        if score is None:
            note(f"rhythmx: SD {cfg.risk_param}={raw!r} is not a number; ignored")
    b_score = b.get("risk_score")
    if b_score is not None:
        b_score = to_score(b_score)
        if score is None:
            score = b_score
        elif b_score is not None and b_score != score:
            note(f"rhythmx: risk_score SD={score} body={b_score}; SD wins")

    # --- status ------------------------------------------------------------
    status = get(cfg.status_param)
    b_status = b.get("status")
    if b_status is not None:
        if status is None:
            status = b_status
        elif canonical_status(b_status) != canonical_status(status):
            note(f"rhythmx: status SD={status!r} body={b_status!r}; SD wins")
    ev_type = event.msgid
    if ev_type is None:
        ev_type = b.get("event")
        if ev_type is not None:
            ev_type = str(ev_type)
    if ev_type is not None:
        ev_type = ev_type.lower()
    status = canonical_status(status)
    if status is None and ev_type is not None:
        status = _STATUS_FROM_EVENT.get(ev_type)

    # --- extras: body first, SD values override -----------------------------
    if body is not None:
        extra = {k: v for k, v in body.items() if k not in _BODY_CANONICAL}
    else:
        extra = {}
    v = get(cfg.actor_param)
    bv = b.get("actor")
    if bv is None:
        bv = b.get("group_key")
    if v is None:
        v = bv
    elif bv is not None and str(bv) != v:
        note(f"rhythmx: actor SD={v!r} body={bv!r}; SD wins")
    actor = v
    if v is not None:
        extra["actor"] = v
    v = get(cfg.actor_type_param)
    bv = b.get("actor_type")
    if v is None:
        v = bv
    elif bv is not None and str(bv) != v:
        note(f"rhythmx: actor_type SD={v!r} body={bv!r}; SD wins")
    actor_type = v
    if v is not None:
        extra["actor_type"] = v
    v = get(cfg.entity_param)
    bv = b.get("entity")
    if bv is None:
        bv = b.get("entity_name")
    if v is None:
        v = bv
    elif bv is not None and str(bv) != v:
        note(f"rhythmx: entity SD={v!r} body={bv!r}; SD wins")
    entity = v
    if v is not None:
        extra["entity"] = v
    alarms = _count(get(cfg.alarm_count_param), b.get("alarm_count"), "alarm_count",
                    cfg.alarm_count_param, event)
    sigma = _count(get(cfg.sigma_alert_count_param), b.get("sigma_alert_count"),
                   "sigma_alert_count", cfg.sigma_alert_count_param, event)
    cases = _count(get(cfg.threat_case_count_param), b.get("threat_case_count"),
                   "threat_case_count", cfg.threat_case_count_param, event)
    for canon, n in (("alarm_count", alarms), ("sigma_alert_count", sigma), ("threat_case_count", cases)):
        if n is not None:
            extra[canon] = n
        elif canon in extra:
            del extra[canon]
    raw = get(cfg.related_param)
    b_rel = b.get("related_case_ids")
    if raw is not None:
        rel = [x.strip() for x in raw.split(",") if x.strip()] if raw else []
        if b_rel is not None and _split_ids(b_rel) != rel:
            note(f"rhythmx: related_case_ids SD={rel} body={_split_ids(b_rel)}; SD wins")
        extra["related_case_ids"] = rel
    elif b_rel is not None:
        extra["related_case_ids"] = _split_ids(b_rel)
    if params and not _used_params(cfg).issuperset(params):
        used = _used_params(cfg)
        for k, v in params.items():
            if k not in used:
                bv = extra.get(k)
                if bv is not None and str(bv) != v:
                    note(f"rhythmx: {k} SD={v!r} body={bv!r}; SD wins")
                extra[k] = v

    # --- who / where ---------------------------------------------------------
    user = b.get("user")
    host = b.get("host") or b.get("hostname")
    src_ip = b.get("src_ip") or b.get("source_ip")
    dst_ip = b.get("dst_ip") or b.get("destination_ip")
    if actor is not None:
        at = str(actor_type).lower() if actor_type is not None else None
        if at is None:
            if is_ip(actor):
                src_ip = src_ip or actor
            else:
                user = user or actor
        elif at in ("user", "account", "username"):
            user = user or actor
        elif at in ("host", "hostname", "device", "computer"):
            host = host or actor
        elif at in ("ip", "ip_address", "address"):
            src_ip = src_ip or actor

    tactic, tactic_id = _mitre(b.get("mitre_tactics"))
    technique, technique_id = _mitre(b.get("mitre_techniques"))

    # --- severity ------------------------------------------------------------
    if score is not None:
        severity = severity_from_score(score)
    else:
        level = b.get("risk_level")
        level = level.lower() if isinstance(level, str) else None
        if level in _BAND_SCORE:
            severity = level
            note("rhythmx: no risk_score; severity from body risk_level")
        else:
            severity = severity_from_syslog(event.severity)
            note("rhythmx: no risk_score; severity from syslog PRI")

    # --- time ----------------------------------------------------------------
    occurred, unix = _event_time(event)
    if unix is None:
        occurred, unix = time_pair(b.get("timestamp") or b.get("created_at"))

    # --- names -------------------------------------------------------------
    if inc_id is not None:
        dedup = f"{cfg.dedup_prefix}:{inc_id}"
    else:
        note("rhythmx: no incident id; dedup_key from message digest")
        dedup = f"{cfg.dedup_prefix}:raw:{_digest_key(event)}"
    name = b.get("title") or b.get("name")
    if name is None:
        name = f"RhythmX incident {inc_id or '?'}: {actor}" if actor else f"RhythmX incident {inc_id or '?'}"
    description = b.get("description") or b.get("summary")
    if description is None:
        # plain words, no "k=v": the text goes into CEF/LEEF values and XSOAR details
        description = (
            f"SigmaIncident {ev_type or 'event'} for {actor or 'unknown actor'} at {entity or 'unknown entity'}: "
            f"risk score {'unknown' if score is None else score}, {'?' if alarms is None else alarms} alarms, "
            f"{'?' if sigma is None else sigma} sigma alerts, {'?' if cases is None else cases} threat cases")

    event.fields = {
        "kind": "incident",
        "vendor": cfg.vendor,
        "product": cfg.product,
        "id": inc_id,
        "dedup_key": dedup,
        "event": ev_type,
        "name": name,
        "description": description,
        "risk_score": score,
        "severity": severity,
        "status": status,
        "occurred": occurred,
        "occurred_unix": unix,
        "src_ip": src_ip,
        "dst_ip": dst_ip,
        "host": host,
        "user": user,
        "tactic": tactic,
        "tactic_id": tactic_id,
        "technique": technique,
        "technique_id": technique_id,
        "url": b.get("url") or b.get("link") or b.get("investigation_url"),
        "extra": extra,
    }
    return event

"""The canonical event schema's shared helpers (docs/schema.md): the one severity
scale and its mappings, time parsing, status names, and the generic syslog mapping
(kind ``log``).  Every normaliser and encoder uses these; pure, no I/O."""
from __future__ import annotations

import hashlib
import ipaddress
from datetime import datetime, timedelta, timezone

import orjson

from parsers.event import Event, text

__all__ = [
    "SEVERITIES", "SEVERITY_RANK", "SEVERITY_TO_SYSLOG", "SEVERITY_TO_CEF", "SEVERITY_TO_LEEF",
    "severity_from_score", "severity_from_1_5", "score_from_1_5", "score_from_severity",
    "severity_from_syslog", "score_from_syslog", "to_score", "time_pair", "parse_time",
    "iso_utc", "is_ip", "log_fields", "canonical_status", "parse_body",
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
    # header fields go into JSON (queue metadata, XSOAR bodies): bytes that are not UTF-8
    # (kept by surrogateescape in RFC 3164 HOSTNAME/TAG) become U+FFFD here
    host, app, procid, msgid = event.hostname, event.app_name, event.procid, event.msgid
    if host is not None and not host.isascii():
        host = text(host)
    if app is not None and not app.isascii():
        app = text(app)
    if procid.__class__ is str and not procid.isascii():
        procid = text(procid)
    if msgid is not None and not msgid.isascii():
        msgid = text(msgid)
    return {
        "kind": "log",
        "vendor": vendor,
        "product": product if product is not None else app,
        "id": None,
        "dedup_key": "log:" + _digest_key(event),
        "event": msgid,
        "name": msgid or app,
        "description": text(event.msg),
        "risk_score": score_from_syslog(sev),
        "severity": severity_from_syslog(sev),
        "status": None,
        "occurred": occurred,
        "occurred_unix": unix,
        "src_ip": None,
        "dst_ip": None,
        "host": host,
        "user": None,
        "tactic": None,
        "technique": None,
        "url": None,
        "extra": {
            "facility": event.facility,
            "syslog_severity": sev,
            "app_name": app,
            "procid": procid,
            "msgid": msgid,
        },
    }


def parse_body(event: Event, tag: str):
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

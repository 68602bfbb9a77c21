"""CEF (ArcSight Common Event Format) record decoder.  Pure decoding, no I/O.

``parse(text)`` turns ``[prefix ]CEF:Version|Vendor|Product|DevVersion|ClassID|Name|Severity|Ext``
into a :class:`CefRecord`.  Rules (shared/reference/formats.md section 2):

Header
  * The record starts at the first ``CEF:``; anything before it is the syslog ``prefix``
    (trailing blanks removed; ``None`` when empty).  No ``CEF:`` is an error.
  * Exactly seven header fields, each ended by an unescaped ``|`` (the 7th ``|`` is required
    even when there is no extension).  Six fields is an error.  Fields may be empty.
  * A ``|`` is escaped when an odd number of backslashes precede it.  ``\\|`` -> ``|`` and
    ``\\\\`` -> ``\\``; a backslash before any other character stays literal.
  * Version must be decimal digits (``0`` or ``1`` in practice).  Severity is kept as the
    text given (``"10"``, ``"Very-High"``, ``""``); :func:`severity_number` maps it to 0-10.

Extension
  * Pairs are ``key=value`` separated by runs of SP/TAB.  A value runs until the blank run
    before the next `` key=``, where ``key`` is one or more of ``[A-Za-z0-9_.[],]`` (ASCII),
    is preceded by SP/TAB and its ``=`` is unescaped.  So values keep inner spaces and raw
    pipes, the blanks before the next key are not part of the value, and trailing blanks of
    the last value are trimmed.  Leading blanks of a value are kept.
  * Escapes: ``\\\\`` -> ``\\``, ``\\=`` -> ``=``, ``\\n`` -> LF, ``\\r`` -> **CR** (the Logstash
    and Graylog reading; VRL maps ``\\r`` to LF, see tests/deviations/cef.toml).  A backslash
    before any other character (including ``|``) stays literal.
  * An unescaped ``=`` that does not start a pair (``msg=status=ok``, ``url?a=b``) is
    non-compliant: kept in the value by default, :class:`ParseError` with ``strict=True``.
  * A keyless pair (``=`` right after a blank or at the start, e.g. ``act=x =0.0.0.0``),
    an extension that does not start with ``key=``, and a raw LF inside the record (several
    records concatenated) are errors.  One trailing CR/LF run (the record terminator) is
    removed first.  A raw CR is kept literally.
  * A key given twice keeps its **last** value.
  * Quotes are data: ``src="1.2.3.4"`` keeps the quotes (VRL strips them; we don't).

Errors raise ``ParseError(offset, reason, kind)``; the offset is in UTF-8 bytes of ``text``.
"""
from __future__ import annotations

import time

from .event import ParseError

__all__ = ["CefRecord", "parse", "severity_number", "parse_time", "LONG_NAMES", "CUSTOM_PREFIXES"]

_KEYCH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.[],")
_BLANK = " \t"
_KEYSTR = "".join(sorted(_KEYCH))


class CefRecord:
    """One decoded CEF record.  ``extension`` keeps the wire keys in wire order."""

    __slots__ = ("version", "vendor", "product", "device_version", "event_class_id",
                 "name", "severity", "extension", "prefix")

    def __init__(self, version: int, vendor: str, product: str, device_version: str,
                 event_class_id: str, name: str, severity: str,
                 extension: dict[str, str], prefix: str | None = None) -> None:
        self.version = version
        self.vendor = vendor
        self.product = product
        self.device_version = device_version
        self.event_class_id = event_class_id
        self.name = name
        self.severity = severity
        self.extension = extension
        self.prefix = prefix

    def header(self) -> dict:
        """The header in the vector schema (``cefVersion``, ``deviceVendor``...)."""
        return {"cefVersion": str(self.version), "deviceVendor": self.vendor,
                "deviceProduct": self.product, "deviceVersion": self.device_version,
                "deviceEventClassId": self.event_class_id, "name": self.name,
                "severity": self.severity}

    def severity_number(self) -> int | None:
        return severity_number(self.severity)

    def time(self, key: str = "rt", now: float | None = None) -> float | None:
        """``parse_time`` of extension ``key``, zoneless values read in ``dtz``."""
        value = self.extension.get(key)
        return None if value is None else parse_time(value, self.extension.get("dtz"), now)

    def labelled(self) -> dict[str, str]:
        """Custom fields resolved through their labels: ``{cs1Label value: cs1 value}`` for
        every ``cs/cn/cfp/c6a/deviceCustomDate/flexString/flexDate/flexNumber<N>`` that has
        both a value and a ``...Label`` (either order).  Unlabelled ones are left out."""
        ext = self.extension
        out = {}
        for key, value in ext.items():
            label = ext.get(key + "Label")
            if label is not None and _is_custom(key):
                out[label] = value
        return out

    def __eq__(self, other) -> bool:
        if not isinstance(other, CefRecord):
            return NotImplemented
        return all(getattr(self, s) == getattr(other, s) for s in self.__slots__)

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"CefRecord({', '.join(f'{s}={getattr(self, s)!r}' for s in self.__slots__)})"


CUSTOM_PREFIXES = ("cs", "cn", "cfp", "c6a", "deviceCustomDate", "flexString", "flexDate", "flexNumber")


def _is_custom(key: str) -> bool:
    for p in CUSTOM_PREFIXES:
        if key.startswith(p) and key[len(p):].isdigit() and key[len(p):].isascii():
            return True
    return False


_SEVERITY_WORDS = {"low": 0, "medium": 4, "high": 7, "very-high": 9}


def severity_number(severity: str) -> int | None:
    """CEF header severity as 0-10: an integer 0-10 (``"1.0"`` allowed) as is, the words
    Low/Medium/High/Very-High (any case) as 0/4/7/9 (Graylog's mapping); ``None`` for
    ``Unknown``, empty or anything else."""
    s = severity.strip()
    if s.isascii() and s.isdigit():
        n = int(s)
        return n if n <= 10 else None
    word = _SEVERITY_WORDS.get(s.lower())
    if word is not None:
        return word
    try:
        f = float(s)
    except ValueError:
        return None
    return int(f) if f.is_integer() and 0 <= f <= 10 else None


_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}


def _zone(name: str | None):
    import datetime as _dt
    if not name or name in ("UTC", "GMT", "Z", "UT"):
        return _dt.timezone.utc
    if name[0] in "+-" and name[1:].replace(":", "").isdigit():
        d = name[1:].replace(":", "")
        off = _dt.timedelta(hours=int(d[:2]), minutes=int(d[2:4] or 0))
        return _dt.timezone(-off if name[0] == "-" else off)
    try:
        import zoneinfo
        return zoneinfo.ZoneInfo(name)
    except (ValueError, KeyError, OSError, ImportError):
        return None


def parse_time(value: str, tz: str | None = None, now: float | None = None) -> float | None:
    """A CEF time field (``rt``, ``start``, ``end``, ``art``, ``deviceCustomDate1``...) as UTC
    epoch seconds, or ``None`` when unreadable.  Forms: epoch milliseconds; ISO 8601;
    ``MMM dd[ yyyy] HH:mm:ss[.SSS...][ zone]``.  A value without zone is read in ``tz``
    (usually the record's ``dtz``; UTC when absent or unknown); without a year, the year
    of ``now`` (default: current time), minus one if that would put it over a day ahead."""
    import datetime as _dt
    v = value.strip()
    if v.isascii() and v.isdigit():
        return int(v) / 1000.0
    if v[:4].isdigit():
        try:
            d = _dt.datetime.fromisoformat(v)
        except ValueError:
            return None
        if d.tzinfo is None:
            d = d.replace(tzinfo=_zone(tz) or _dt.timezone.utc)
        return d.timestamp()
    parts = v.split()
    if len(parts) < 3 or parts[0][:3].lower() not in _MONTHS or not parts[1].isdigit():
        return None
    month, day = _MONTHS[parts[0][:3].lower()], int(parts[1])
    rest = parts[2:]
    year = None
    if rest[0].isdigit() and len(rest[0]) == 4:
        year = int(rest[0])
        rest = rest[1:]
    if not rest:
        return None
    clock, frac = rest[0].partition(".")[::2]
    hms = clock.split(":")
    if len(hms) != 3 or not all(x.isdigit() for x in hms) or (frac and not frac.isdigit()):
        return None
    zone = _zone(" ".join(rest[1:])) if len(rest) > 1 else (_zone(tz) or _dt.timezone.utc)
    if zone is None:
        return None
    micro = int((frac + "000000")[:6]) if frac else 0
    ref = _dt.datetime.fromtimestamp(time.time() if now is None else now, _dt.timezone.utc)
    try:
        d = _dt.datetime(year or ref.year, month, day, int(hms[0]), int(hms[1]), int(hms[2]), micro,
                         tzinfo=zone)
        if year is None and d.timestamp() > ref.timestamp() + 86400:
            d = d.replace(year=ref.year - 1)
    except ValueError:
        return None
    return d.timestamp()


def _boff(text: str, i: int) -> int:
    """Character index -> UTF-8 byte offset (error path only)."""
    return i if text.isascii() else len(text[:i].encode("utf-8", "surrogateescape"))


def _unescape_header(s: str) -> str:
    if "\\" not in s:
        return s
    out = []
    i = 0
    n = len(s)
    while True:
        j = s.find("\\", i)
        if j < 0 or j == n - 1:
            out.append(s[i:])
            break
        c = s[j + 1]
        if c == "|" or c == "\\":
            out.append(s[i:j])
            out.append(c)
            i = j + 2
        else:  # literal backslash; the next char is read normally
            out.append(s[i:j + 1])
            i = j + 1
    return "".join(out)


_EXT_ESC = {"\\": "\\", "=": "=", "n": "\n", "r": "\r"}


def _unescape_ext(s: str) -> str:
    if "\\" not in s:
        return s
    out = []
    i = 0
    n = len(s)
    while True:
        j = s.find("\\", i)
        if j < 0 or j == n - 1:
            out.append(s[i:])
            break
        r = _EXT_ESC.get(s[j + 1])
        if r is not None:
            out.append(s[i:j])
            out.append(r)
            i = j + 2
        else:
            out.append(s[i:j + 1])
            i = j + 1
    return "".join(out)


def _escaped(s: str, j: int, lo: int) -> bool:
    """True when s[j] is preceded (down to index lo) by an odd run of backslashes."""
    b = j - 1
    while b >= lo and s[b] == "\\":
        b -= 1
    return (j - 1 - b) & 1 == 1


def parse(text: str, *, strict: bool = False) -> CefRecord:
    """Decode one CEF record (see module doc).  ``strict=True`` also rejects unescaped
    ``=`` inside extension values."""
    start = text.find("CEF:")
    if start < 0:
        raise ParseError(0, "no 'CEF:' marker", "cef_marker")
    prefix = text[:start].rstrip() or None
    end = len(text)
    while end > start and text[end - 1] in "\r\n":
        end -= 1
    lf = text.find("\n", start, end)
    if lf >= 0:
        raise ParseError(_boff(text, lf), "unescaped LF inside a CEF record (several records concatenated?)",
                         "cef_newline")

    # header: version + 6 fields, each ended by an unescaped '|'
    fields = []
    pos = start + 4
    for _ in range(7):
        j = text.find("|", pos, end)
        while j >= 0 and _escaped(text, j, pos):
            j = text.find("|", j + 1, end)
        if j < 0:
            raise ParseError(_boff(text, end),
                             f"CEF header has {len(fields)} of 7 '|'-terminated fields", "cef_header")
        fields.append(text[pos:j])
        pos = j + 1
    ver = fields[0]
    if not (ver.isascii() and ver.isdigit()):
        raise ParseError(_boff(text, start + 4), f"CEF version {ver!r} is not a number", "cef_version")
    ext = _parse_extension(text, pos, end, strict)
    return CefRecord(int(ver), _unescape_header(fields[1]), _unescape_header(fields[2]),
                     _unescape_header(fields[3]), _unescape_header(fields[4]),
                     _unescape_header(fields[5]), _unescape_header(fields[6]), ext, prefix)


def _parse_extension(s: str, i: int, n: int, strict: bool) -> dict[str, str]:
    while i < n and s[i] in _BLANK:
        i += 1
    out: dict[str, str] = {}
    if i >= n:
        return out
    ks = _KEYSTR
    key = None
    vstart = i
    pos = i
    while True:
        e = s.find("=", pos, n)
        if e < 0:
            break
        pos = e + 1
        if s[e - 1] == "\\" and _escaped(s, e, vstart):
            continue
        if key is None:  # the extension must start with key=
            if e == i or s[e - 1] in _BLANK:
                raise ParseError(_boff(s, e), "keyless extension pair ('=' without a key)", "cef_keyless")
            if s[i:e].strip(ks):
                raise ParseError(_boff(s, i), "extension does not start with key=value", "cef_extension")
            key = s[i:e]
            vstart = e + 1
            continue
        if e > vstart and s[e - 1] in _BLANK:
            raise ParseError(_boff(s, e), "keyless extension pair ('=' without a key)", "cef_keyless")
        sp = s.rfind(" ", vstart, e)
        tab = s.rfind("\t", vstart, e)
        if tab > sp:
            sp = tab
        if sp < 0 or s[sp + 1:e].strip(ks):  # '=' inside a value, not ' key='
            if strict:
                raise ParseError(_boff(s, e), "unescaped '=' in extension value", "cef_value")
            continue
        out[key] = _unescape_ext(s[vstart:sp].rstrip(_BLANK))
        key = s[sp + 1:e]
        vstart = e + 1
    if key is None:
        raise ParseError(_boff(s, i), "extension is not key=value pairs (keyless value)", "cef_extension")
    out[key] = _unescape_ext(s[vstart:n].rstrip(_BLANK))
    return out


# Short key -> long (dictionary) name, from formats.md section 2 (Logstash's list).
LONG_NAMES = {
    "act": "deviceAction", "app": "applicationProtocol", "cat": "deviceEventCategory",
    "cnt": "baseEventCount",
    "dhost": "destinationHostName", "dmac": "destinationMacAddress", "dntdom": "destinationNtDomain",
    "dpid": "destinationProcessId", "dpriv": "destinationUserPrivileges",
    "dproc": "destinationProcessName", "dpt": "destinationPort", "dst": "destinationAddress",
    "duid": "destinationUserId", "duser": "destinationUserName",
    "dvc": "deviceAddress", "dvchost": "deviceHostName", "dvcpid": "deviceProcessId",
    "end": "endTime", "fname": "fileName", "fsize": "fileSize", "in": "bytesIn", "msg": "message",
    "out": "bytesOut", "outcome": "eventOutcome", "proto": "transportProtocol",
    "request": "requestUrl", "rt": "deviceReceiptTime",
    "shost": "sourceHostName", "smac": "sourceMacAddress", "sntdom": "sourceNtDomain",
    "spid": "sourceProcessId", "spriv": "sourceUserPrivileges", "sproc": "sourceProcessName",
    "spt": "sourcePort", "src": "sourceAddress", "start": "startTime", "suid": "sourceUserId",
    "suser": "sourceUserName",
    "ahost": "agentHostName", "art": "agentReceiptTime", "at": "agentType", "aid": "agentId",
    "agt": "agentAddress", "av": "agentVersion", "atz": "agentTimeZone",
    "dtz": "destinationTimeZone", "amac": "agentMacAddress", "mrt": "managerReceiptTime",
    "catdt": "categoryDeviceType",
    "slong": "sourceLongitude", "slat": "sourceLatitude",
    "dlong": "destinationLongitude", "dlat": "destinationLatitude",
}
for _i in range(1, 7):
    LONG_NAMES[f"cs{_i}"] = f"deviceCustomString{_i}"
    LONG_NAMES[f"cs{_i}Label"] = f"deviceCustomString{_i}Label"
for _i in range(1, 4):
    LONG_NAMES[f"cn{_i}"] = f"deviceCustomNumber{_i}"
    LONG_NAMES[f"cn{_i}Label"] = f"deviceCustomNumber{_i}Label"
for _i in range(1, 5):
    LONG_NAMES[f"cfp{_i}"] = f"deviceCustomFloatingPoint{_i}"
    LONG_NAMES[f"cfp{_i}Label"] = f"deviceCustomFloatingPoint{_i}Label"
    LONG_NAMES[f"c6a{_i}"] = f"deviceCustomIPv6Address{_i}"
    LONG_NAMES[f"c6a{_i}Label"] = f"deviceCustomIPv6Address{_i}Label"
del _i

"""RFC 5424 syslog messages: bytes -> :class:`~parsers.event.Event`.

A hand-written index/partition parser (no pyparsing, one small regex for the
timestamp): it runs once per message on the hot path.

Strict mode (the default) enforces RFC 5424 section 6:

* PRI ``<0>``..``<191>``, no leading zero; VERSION 1-3 digits, not starting with 0
  (any legal VERSION is accepted and recorded, not only 1).
* TIMESTAMP: NILVALUE or RFC 3339 with upper-case ``T`` and ``Z``, 1-6 fraction
  digits, a mandatory offset (``Z`` or ``+hh:mm`` with hh <= 23, mm <= 59), seconds
  00-59 (no leap second), a date that exists.
* HOSTNAME / APP-NAME / PROCID / MSGID: NILVALUE or 1-255 / 48 / 128 / 32
  printable US-ASCII characters (33-126).
* STRUCTURED-DATA: ``-`` or adjacent SD-ELEMENTs; SD-ID and PARAM-NAME 1-32
  printable US-ASCII except ``= SP ] "``; values double-quoted; ``\\"``, ``\\\\``
  and ``\\]`` unescaped; a backslash before any other character is kept literally
  with that character (RFC 5424 6.3.3); an unescaped ``]`` in a value is an error;
  a repeated SD-ID is an error; a repeated PARAM-NAME keeps every value as a list.
* MSG: optional, after exactly one SP; further leading spaces are kept.  A UTF-8
  BOM is removed and the rest must then be valid UTF-8.  Without a BOM any octets
  are allowed (kept losslessly, see parsers/event.py).  An empty MSG is ``None``.

Lenient mode (chosen per source) accepts the real-world deviations documented in
docs/parsing.md, each recorded in ``Event.notes``:
surrounding whitespace (trimmed), PRI > 191 (pri/facility/severity None),
missing TIME-OFFSET (UTC assumed), more than 6 fraction digits (truncated),
APP-NAME / PROCID / MSGID over length (truncated), SD-ID / PARAM-NAME up to 255,
SP around ``=`` in SD params, unquoted SD values (VMware ESXi), unescaped ``]`` in
a value, a malformed SD-ELEMENT (dropped, the rest kept), a duplicate SD-ID (the
first kept), invalid UTF-8 after a BOM (kept as bytes).

Errors raise :class:`~parsers.event.ParseError` naming the byte offset and rule.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from .event import FORMAT_RFC5424, Event, ParseError

__all__ = ["parse", "parse_timestamp"]

_UTC = timezone.utc
_BOM = "\ufeff"

# yyyy-mm-ddThh:mm:ss[.frac](Z|+hh:mm); ranges checked in code
_TS = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}):(\d{2})(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})\Z", re.ASCII)
_TS_LENIENT = re.compile(
    r"(\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:?\d{2})?\Z", re.ASCII)

# Fast path for the common SD-ELEMENT: valid names (printable US-ASCII except
# SP = ] "), quoted values without backslash or ']'.  Anything else takes the
# general loop below, which also produces the precise error.
_NAME = r'[!#-<>-\\^-~]{1,32}'
_SD_FAST = re.compile(r'\[(' + _NAME + r')((?: ' + _NAME + r'="[^"\\\]]*")*)\]')
_PARAM_FAST = re.compile(r' (' + _NAME + r')="([^"\\\]]*)"')

_NAME_RE = re.compile(_NAME + r"\Z")

# The usual header in one match: PRI (no leading zero; <= 191 checked in code),
# VERSION, TIMESTAMP (as _TS; ranges checked in code) or '-', then HOSTNAME, APP-NAME,
# PROCID, MSGID (printable US-ASCII within their limits, or '-'), each followed by SP.
# What it does not match takes the field-by-field path, which gives the precise error.
_HEAD = re.compile(
    r"<(0|[1-9]\d{0,2})>([1-9]\d{0,2}) "
    r"(-|(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}):(\d{2})(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})) "
    r"([!-~]{1,255}) ([!-~]{1,48}) ([!-~]{1,128}) ([!-~]{1,32}) ", re.ASCII)
# split fast path cache (valid by the strict rules), by the first token 'SD-ID NAME=':
# (['SD-ID NAME=', ' NAME=', ..., ''], (SD-ID, (NAME, ...), names unique))
_shapes: dict[str, tuple] = {}
# APP-NAME -> (match of the regex of its usual first SD-ELEMENT, SD-ID, PARAM-NAMEs);
# (SD-ID, PARAM-NAME, ...) -> that match, or False when a name is not valid
_app_shapes: dict = {}
_shape_res: dict[tuple, object] = {}
_SHAPES_MAX = 256

_minute_cache: dict[str, float] = {}
_CACHE_MAX = 4096

_valid_names: set[str] = set()  # SD-IDs / PARAM-NAMEs already validated (strict rules)
_NAMES_MAX = 4096

_MAXLEN = {"HOSTNAME": 255, "APP-NAME": 48, "PROCID": 128, "MSGID": 32}


def _byte_offset(s: str, i: int) -> int:
    """Character index in the decoded text -> byte offset in the input."""
    head = s[:i]
    if head.isascii():
        return i
    return len(head.encode("utf-8", "surrogateescape"))


class _Err(Exception):
    """Internal: an error at a character index (converted to a byte offset once)."""

    __slots__ = ("i", "reason", "kind")

    def __init__(self, i: int, reason: str, kind: str) -> None:
        self.i = i
        self.reason = reason
        self.kind = kind


def _minute_epoch(key: str, offset: str) -> float:
    """Epoch of 'yyyy-mm-ddThh:mm' at the given offset; validates the date, hour,
    minute and offset ranges (raises ValueError)."""
    ck = key + offset
    v = _minute_cache.get(ck)
    if v is not None:
        return v
    y, mo, d = int(key[0:4]), int(key[5:7]), int(key[8:10])
    h, mi = int(key[11:13]), int(key[14:16])
    if offset in ("Z", "z", ""):
        tz = _UTC
    else:
        oh, om = int(offset[1:3]), int(offset[-2:])
        if oh > 23 or om > 59:
            raise ValueError("TIME-OFFSET out of range (hours 00-23, minutes 00-59)")
        delta = timedelta(hours=oh, minutes=om)
        tz = timezone(-delta if offset[0] == "-" else delta)
    try:
        v = datetime(y, mo, d, h, mi, tzinfo=tz).timestamp()
    except ValueError as e:
        raise ValueError(f"TIMESTAMP names a date or time that does not exist ({e})") from None
    if len(_minute_cache) >= _CACHE_MAX:
        _minute_cache.clear()
    _minute_cache[ck] = v
    return v


def parse_timestamp(ts: str, lenient: bool = False, notes: list | None = None) -> float:
    """RFC 5424 TIMESTAMP text -> UTC epoch seconds.  Raises ValueError with the rule."""
    m = _TS.match(ts)
    if m is None:
        if not lenient:
            raise ValueError(_ts_reason(ts))
        m = _TS_LENIENT.match(ts)
        if m is None:
            raise ValueError(_ts_reason(ts))
        key = m.group(1)
        key = key[:10] + "T" + key[11:]
        off = m.group(4) or ""
        if off in ("z",):
            off = "Z"
        elif off[:1] in ("+", "-") and ":" not in off:
            off = off[:3] + ":" + off[3:]
        frac = m.group(3)
        if notes is not None:
            if not m.group(4):
                notes.append("timestamp has no TIME-OFFSET; UTC assumed")
            if frac and len(frac) > 7:
                notes.append("timestamp fraction longer than 6 digits; truncated")
            if ts[10] != "T" or (m.group(4) or "").startswith("z"):
                notes.append("timestamp not in RFC 5424 case/layout; accepted")
        if frac and len(frac) > 7:
            frac = frac[:7]
    else:
        key, off, frac = m.group(1), m.group(4), m.group(3)
    sec = int(m.group(2))
    if sec > 59:
        raise ValueError("TIME-SECOND must be 00-59 (leap seconds are not allowed)")
    base = _minute_epoch(key, off)
    return base + sec + (float(frac) if frac else 0.0)


def _ts_reason(ts: str) -> str:
    if "t" in ts[8:13] or ts.endswith("z"):
        return "TIMESTAMP 'T' and 'Z' must be upper case"
    if len(ts) >= 11 and ts[10] != "T":
        return "TIMESTAMP needs 'T' between date and time"
    dot = ts.find(".")
    if dot != -1:
        digits = 0
        for c in ts[dot + 1:]:
            if not c.isdigit():
                break
            digits += 1
        if digits > 6:
            return "TIME-SECFRAC has at most 6 digits"
        if digits == 0:
            return "TIME-SECFRAC needs at least one digit after '.'"
    if len(ts) >= 19 and ts[:19].count(":") == 2 and not any(c in ts[19:] for c in "Z+-"):
        return "TIMESTAMP needs a TIME-OFFSET ('Z' or '+hh:mm')"
    return "TIMESTAMP is not an RFC 3339 date-time (yyyy-mm-ddThh:mm:ss[.frac](Z|+hh:mm))"


def _check_name(name: str, what: str, lenient: bool, i: int) -> None:
    if name in _valid_names:
        return
    n = len(name)
    if n == 0:
        raise _Err(i, f"{what} must not be empty", "sd_id" if what == "SD-ID" else "sd_param")
    for k, c in enumerate(name):
        if c in ' ="]' or not ("!" <= c <= "~"):
            raise _Err(i + k, f"{what} may contain only printable US-ASCII except '=', SP, ']' and '\"' (found {c!r})",
                       "sd_id" if what == "SD-ID" else "sd_param")
    if n > 32:
        if not lenient or n > 255:
            raise _Err(i + 32, f"{what} longer than 32 characters", "sd_id" if what == "SD-ID" else "sd_param")
        return  # accepted leniently; not cached as valid
    if len(_valid_names) >= _NAMES_MAX:
        _valid_names.clear()
    _valid_names.add(name)


def _unescape(v: str, start: int, lenient: bool, notes: list | None = None) -> str:
    """Undo ``\\" \\\\ \\]``; keep other backslashes literally; reject an unescaped ']'."""
    out = []
    k = 0
    while True:
        b = v.find("\\", k)
        chunk = v[k:] if b == -1 else v[k:b]
        if "]" in chunk:
            if not lenient:
                raise _Err(start + k + chunk.index("]"), "']' inside PARAM-VALUE must be escaped as '\\]'", "sd_value")
            if notes is not None:
                notes.append("unescaped ']' in PARAM-VALUE accepted")
                notes = None
        out.append(chunk)
        if b == -1:
            return "".join(out)
        c = v[b + 1] if b + 1 < len(v) else ""
        if c == '"' or c == "\\" or c == "]":
            out.append(c)
            k = b + 2
        else:
            out.append("\\")
            k = b + 1


def _sd_split(s: str, i: int, sd: dict) -> int:
    """The common SD-ELEMENT by str.split: exactly what _SD_FAST accepts (valid names,
    quoted values without backslash, '"' or ']'), names checked once per shape (the
    list of SD-ID and PARAM-NAME tokens) through a small cache.
    Adds the element to sd and returns the index after ']', or -1 (not handled)."""
    j = s.find("]", i)
    if j == -1:
        return -1
    inner = s[i + 1:j]
    if "\\" in inner:
        return -1
    toks = inner.split('"')
    n = len(toks)
    if n == 1 or not n & 1 or toks[-1]:
        return -1
    heads = toks[::2]
    shape = _shapes.get(heads[0])
    if shape is None or shape[0] != heads:
        shape = _shape(heads)
        if shape is None:
            return -1
        if len(_shapes) >= _NAMES_MAX:
            _shapes.clear()
        _shapes[heads[0]] = shape
    sdid, names, unique = shape[1]
    if sdid in sd:
        return -1
    if unique:
        sd[sdid] = dict(zip(names, toks[1::2]))
        return j + 1
    sd[sdid] = _params(zip(names, toks[1::2]))  # a repeated PARAM-NAME: keep every value
    return j + 1


def _params(pairs) -> dict:
    """(name, value) pairs -> SD params; a repeated PARAM-NAME keeps every value, in a list."""
    params: dict = {}
    for k, v in pairs:
        old = params.get(k)
        if old is None:
            params[k] = v
        elif type(old) is list:
            old.append(v)
        else:
            params[k] = [old, v]
    return params


def _shape(heads: list):
    """['SD-ID NAME=', ' NAME=', ..., ''] -> (heads, (SD-ID, (NAME, ...), names unique))
    when every name is valid by the strict rules, else None."""
    sdid, sp, rest = heads[0].partition(" ")
    if not sp or rest[-1:] != "=" or _NAME_RE.match(sdid) is None or _NAME_RE.match(rest, 0, len(rest) - 1) is None:
        return None
    names = [rest[:-1]]
    for t in heads[1:-1]:
        if t[:1] != " " or t[-1:] != "=" or _NAME_RE.match(t, 1, len(t) - 1) is None:
            return None
        names.append(t[1:-1])
    return heads, (sdid, tuple(names), len(set(names)) == len(names))


def _learn_shape(app, sd: dict) -> None:
    """Remember the first SD-ELEMENT's shape (SD-ID and PARAM-NAMEs in order) for this
    APP-NAME as one regex: the next message of the same kind matches it in one go.
    The regex accepts exactly what _sd_split accepts for that shape (names valid by
    the strict rules, each once, values without '"', '\\' or ']'), and gives the same
    dict; anything else falls through to the usual path."""
    sdid, params = next(iter(sd.items()))
    key = (sdid, *params)
    rx = _shape_res.get(key)
    if rx is None:
        rx = False
        if _NAME_RE.match(sdid) is not None and all(_NAME_RE.match(k) is not None for k in params):
            rx = re.compile(r"\[" + re.escape(sdid) + "".join(
                " " + re.escape(k) + r'="([^"\\\]]*)"' for k in params) + r"\]").match
        _shape_res[key] = rx  # bounded: learning stops when full (no compile floods)
    if rx:
        if len(_app_shapes) >= _NAMES_MAX:
            _app_shapes.clear()
        _app_shapes[app] = (rx, sdid, tuple(params))


def _sd_element(s: str, i: int, sd: dict, lenient: bool, notes: list) -> int:
    """Parse one SD-ELEMENT starting at s[i] == '['; add it to sd; return the index after ']'."""
    e = _sd_split(s, i, sd)
    if e != -1:
        return e
    return _sd_general(s, i, sd, lenient, notes)


def _sd_general(s: str, i: int, sd: dict, lenient: bool, notes: list) -> int:
    """_sd_element without the split fast path."""
    m = _SD_FAST.match(s, i)
    if m is not None:
        sdid = m.group(1)
        if sdid not in sd:
            pairs = _PARAM_FAST.findall(s, m.start(2), m.end(2))
            params = dict(pairs)
            if len(params) != len(pairs):  # a repeated PARAM-NAME: keep every value
                params = _params(pairs)
            sd[sdid] = params
            return m.end()
    n = len(s)
    j = i + 1
    sp = s.find(" ", j)
    rb = s.find("]", j)
    if rb == -1:
        raise _Err(n, "SD-ELEMENT not closed by ']'", "sd")
    end = sp if (sp != -1 and sp < rb) else rb
    sdid = s[j:end]
    _check_name(sdid, "SD-ID", lenient, j)
    params: dict = {}
    i = end
    while True:
        c = s[i] if i < n else ""
        if c == "]":
            break
        if c != " ":
            if c == "":
                raise _Err(i, "SD-ELEMENT not closed by ']'", "sd")
            raise _Err(i, "expected SP or ']' after an SD-PARAM", "sd_param")
        i += 1
        if lenient:
            while i < n and s[i] == " ":
                i += 1
            if i < n and s[i] == "]":
                break
        eq = s.find("=", i)
        if eq == -1:
            raise _Err(i, "SD-PARAM needs '=' after PARAM-NAME", "sd_param")
        name = s[i:eq]
        if lenient and name.endswith(" ") and name.strip() and " " not in name.strip():
            name = name.rstrip()
            notes.append("SP before '=' in SD-PARAM accepted")
        _check_name(name, "PARAM-NAME", lenient, i)
        q0 = eq + 1
        if lenient and q0 < n and s[q0] == " ":
            while q0 < n and s[q0] == " ":
                q0 += 1
            notes.append("SP after '=' in SD-PARAM accepted")
        if q0 >= n or s[q0] != '"':
            if not lenient:
                raise _Err(q0, 'PARAM-VALUE must be enclosed in double quotes', "sd_value")
            # unquoted value (VMware ESXi): runs to the next SP or ']'
            e1 = s.find(" ", q0)
            e2 = s.find("]", q0)
            if e2 == -1:
                raise _Err(n, "SD-ELEMENT not closed by ']'", "sd")
            e = e1 if (e1 != -1 and e1 < e2) else e2
            if e == q0:
                raise _Err(q0, "PARAM-VALUE missing", "sd_value")
            value = s[q0:e]
            i = e
            notes.append(f"unquoted PARAM-VALUE for {name!r} accepted")
        else:
            vs = q0 + 1
            q = s.find('"', vs)
            while True:
                if q == -1:
                    raise _Err(n, "PARAM-VALUE not closed by '\"'", "sd_value")
                bs = 0
                while q - 1 - bs >= vs and s[q - 1 - bs] == "\\":
                    bs += 1
                if not bs & 1:
                    break
                q = s.find('"', q + 1)
            value = s[vs:q]
            if "\\" in value or "]" in value:
                value = _unescape(value, vs, lenient, notes)
            i = q + 1
        old = params.get(name)
        if old is None:
            params[name] = value
        elif type(old) is list:
            old.append(value)
        else:
            params[name] = [old, value]
    if sdid in sd:
        if not lenient:
            raise _Err(j, f"duplicate SD-ID {sdid!r} (RFC 5424 6.3.2)", "duplicate_sd_id")
        notes.append(f"duplicate SD-ID {sdid!r} ignored (first kept)")
    else:
        sd[sdid] = params
    return i + 1


def _header_field(v: str, name: str, lenient: bool, i: int, notes: list):
    if v == "-":
        return None
    if not v:
        raise _Err(i, f"{name} missing (two spaces in a row)", name.lower().replace("-", ""))
    if not (v.isascii() and v.isprintable()):
        for k, c in enumerate(v):
            if not ("!" <= c <= "~"):
                raise _Err(i + k, f"{name} may contain only printable US-ASCII (found {c!r})",
                           name.lower().replace("-", ""))
    limit = _MAXLEN[name]
    if len(v) > limit:
        if lenient and name != "HOSTNAME":
            notes.append(f"{name} longer than {limit} characters; truncated")
            return v[:limit]
        raise _Err(i + limit, f"{name} longer than {limit} characters", name.lower().replace("-", "") + "_too_long")
    return v


def parse(data: bytes, *, lenient: bool = False) -> Event:
    """Parse one RFC 5424 message.  Raises :class:`ParseError` (byte offset + rule)."""
    s = data.decode("utf-8", "surrogateescape")
    notes: list = []
    base = 0
    if lenient:
        t = s.strip()
        if len(t) != len(s) and t:
            base = s.index(t[0])
            notes.append("surrounding whitespace trimmed")
    else:
        t = s
    try:
        return _parse(t, data, lenient, notes)
    except _Err as e:
        raise ParseError(_byte_offset(s, base + e.i), e.reason, e.kind) from None


def _header(s: str, lenient: bool, notes: list) -> tuple:
    """PRI VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID, every rule checked with its
    precise error; returns them with the index of STRUCTURED-DATA."""
    n = len(s)
    # ---- PRI
    if n == 0 or s[0] != "<":
        raise _Err(0, "PRI must start with '<'" if n else "empty message", "pri")
    gt = s.find(">", 1, 6)
    if gt == -1:
        raise _Err(min(n, 4), "PRI must be '<' 1-3 digits '>'", "pri")
    p = s[1:gt]
    if not (p.isdigit() and p.isascii()):
        raise _Err(1, "PRIVAL must be 1-3 digits", "pri")
    if len(p) > 1 and p[0] == "0":
        raise _Err(1, "PRIVAL must not have a leading zero", "pri")
    pri = int(p)
    if pri > 191:
        if not lenient:
            raise _Err(1, "PRIVAL must be 0-191", "pri")
        notes.append(f"PRIVAL {pri} out of range 0-191; facility and severity unknown")
        pri = None
    # ---- VERSION
    sp = s.find(" ", gt + 1)
    if sp == -1:
        raise _Err(n, "VERSION must be followed by SP", "version")
    v = s[gt + 1:sp]
    if not v or not (v.isdigit() and v.isascii()) or len(v) > 3 or v[0] == "0":
        raise _Err(gt + 1, "VERSION must be 1-3 digits, not starting with 0", "version")
    # ---- TIMESTAMP HOSTNAME APP-NAME PROCID MSGID
    pos = sp + 1
    parts = s[pos:].split(" ", 5)
    if len(parts) < 6:
        names = ("TIMESTAMP", "HOSTNAME", "APP-NAME", "PROCID", "MSGID", "STRUCTURED-DATA")
        raise _Err(n, f"{names[len(parts)]} missing: message ends early", "header")
    ts, host, app, procid, msgid, rest = parts
    if ts == "-":
        ts = None
        time_unix = None
    elif (m := _TS.match(ts)) is not None and (b := _minute_cache.get(m.group(1) + m.group(4))) is not None \
            and (sec := int(m.group(2))) < 60:
        frac = m.group(3)
        time_unix = b + sec + (float(frac) if frac else 0.0)
    else:
        try:
            time_unix = parse_timestamp(ts, lenient, notes)
        except ValueError as e:
            raise _Err(pos, str(e), "timestamp") from None
    p1 = pos + len(parts[0]) + 1
    p2 = p1 + len(host) + 1
    p3 = p2 + len(app) + 1
    p4 = p3 + len(procid) + 1
    i = p4 + len(msgid) + 1  # start of STRUCTURED-DATA
    # the usual fields (printable US-ASCII within the limits, or "-") need no call
    if host == "-":
        host = None
    elif not (0 < len(host) <= 255 and host.isascii() and host.isprintable()):
        host = _header_field(host, "HOSTNAME", lenient, p1, notes)
    if app == "-":
        app = None
    elif not (0 < len(app) <= 48 and app.isascii() and app.isprintable()):
        app = _header_field(app, "APP-NAME", lenient, p2, notes)
    if procid == "-":
        procid = None
    elif not (0 < len(procid) <= 128 and procid.isascii() and procid.isprintable()):
        procid = _header_field(procid, "PROCID", lenient, p3, notes)
    if msgid == "-":
        msgid = None
    elif not (0 < len(msgid) <= 32 and msgid.isascii() and msgid.isprintable()):
        msgid = _header_field(msgid, "MSGID", lenient, p4, notes)
    return pri, v, ts, time_unix, host, app, procid, msgid, i


def _parse(s: str, data: bytes, lenient: bool, notes: list) -> Event:
    n = len(s)
    # ---- HEADER: one regex for the usual case, else the field-by-field checks
    m = _HEAD.match(s)
    if m is not None:
        pri, v, ts, key, sec, frac, off, host, app, procid, msgid = m.groups()
        pri = int(pri)
        if pri > 191:
            m = None
        elif key is not None:
            b = _minute_cache.get(key + off)
            if b is None:
                try:
                    b = _minute_epoch(key, off)
                except ValueError:
                    b = None
            sec = int(sec)
            if b is None or sec > 59:
                m = None
            else:
                time_unix = b + sec + (float(frac) if frac else 0.0)
        else:
            ts = time_unix = None
    if m is not None:
        i = m.end()
        if host == "-":
            host = None
        if app == "-":
            app = None
        if procid == "-":
            procid = None
        if msgid == "-":
            msgid = None
    else:
        pri, v, ts, time_unix, host, app, procid, msgid, i = _header(s, lenient, notes)
    # ---- STRUCTURED-DATA
    c = s[i] if i < n else ""
    if c == "-":
        sd = None
        i += 1
    elif c == "[":
        sd = {}
        shape = _app_shapes.get(app)
        if shape is not None and (m := shape[0](s, i)) is not None:
            # the first SD-ELEMENT has the shape last learnt for this APP-NAME
            sd[shape[1]] = dict(zip(shape[2], m.groups()))
            i = m.end()
        else:
            m = None
        while i < n and s[i] == "[":
            if lenient:
                try:
                    i = _sd_element(s, i, sd, True, notes)
                except _Err as e:
                    # drop the malformed element, keep the rest (RFC 5424 8.2)
                    close = s.find("]", i)
                    if close == -1:
                        raise
                    notes.append(f"malformed SD-ELEMENT dropped: {e.reason}")
                    i = close + 1
                continue
            e = _sd_split(s, i, sd)
            i = e if e != -1 else _sd_general(s, i, sd, False, notes)
        if not sd:
            sd = None
        elif m is None and len(_shape_res) < _SHAPES_MAX:
            _learn_shape(app, sd)
    else:
        raise _Err(i, "STRUCTURED-DATA must be '-' or start with '['", "sd")
    # ---- MSG
    if i >= n:
        msg = None
    elif s[i] != " ":
        raise _Err(i, "expected SP before MSG (SD-ELEMENTs must be adjacent)", "sd")
    else:
        msg = s[i + 1:] or None
        if msg is not None and msg[0] == _BOM:
            msg = msg[1:]
            if not msg.isascii():
                try:
                    msg.encode("utf-8")
                except UnicodeEncodeError as e:
                    if not lenient:
                        raise _Err(i + 2 + e.start, "MSG after a BOM must be valid UTF-8", "msg_utf8") from None
                    notes.append("MSG after a BOM is not valid UTF-8; kept as bytes")
            msg = msg or None
    # Event.__init__ inline (every slot set once; checked against __slots__ at import)
    ev = _new_event(Event)
    ev.format = FORMAT_RFC5424
    if pri is not None:
        ev.pri = pri
        ev.facility = pri >> 3
        ev.severity = pri & 7
    else:
        ev.pri = ev.facility = ev.severity = None
    ev.version = int(v)
    ev.timestamp = ts
    ev.time_unix = time_unix
    ev.hostname = host
    ev.app_name = app
    ev.procid = procid
    ev.msgid = msgid
    ev.sd = sd
    ev.msg = msg
    ev.raw = data
    ev.received = ev.peer = ev.source = ev.error = None
    ev.notes = notes if notes else None
    ev.fields = ev.body = ev.enrich = ev.meta = None
    return ev


_new_event = Event.__new__


def _self_check() -> None:
    ev = parse(b"<13>1 - - - - - -")
    unset = [name for name in Event.__slots__ if not hasattr(ev, name)]
    if unset:  # a slot added to Event must be set in _parse too
        raise ImportError(f"parsers.rfc5424: Event slots not set by _parse: {unset}")


_self_check()

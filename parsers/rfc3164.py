"""RFC 3164 (BSD syslog) as real devices send it: bytes -> :class:`~parsers.event.Event`.

RFC 3164 is the lenient fallback, so this parser accepts nearly anything.  It
raises :class:`~parsers.event.ParseError` only for

* empty input (``kind="empty"``), and
* input that starts with ``<`` but has no valid PRI (``<`` + 1-3 ASCII digits +
  ``>``, value 0..191) (``kind="pri"``).  The leading bytes claim a header that is
  broken, so the message is left for the caller to pass on as ``raw`` rather
  than being given an invented PRI (syslog-ng tags the same case
  ``syslog.invalid_pri`` and keeps the whole line as MSG).

Layout read (every part optional)::

    [<PRI>][SP*][SEQ: ][*|.]TIMESTAMP[:] [HOSTNAME] [TAG[\\[pid\\]][:]] [SP]CONTENT

Conventions (one set, applied everywhere):

PRI
    Missing PRI: ``<13>`` (user.notice) is assumed, as RFC 3164 4.3.3 tells a
    relay to do; a note records it.  Spaces after the PRI are skipped.

Cisco extras
    A sequence number ``91: `` before the timestamp becomes
    ``sd = {"meta": {"sequenceId": "91"}}`` and a clock mark before the timestamp
    (``*`` = not synchronised, ``.`` = synchronised) becomes
    ``sd["timeQuality"] = {"isSynced": "0" | "1"}``: the registered RFC 5424
    SD-IDs (RFC 5424 7.1, 7.3.1), as syslog-ng does.  IOS ``91: host: *Mar 1 ...``
    (origin-id) gives HOSTNAME ``host``.

TIMESTAMP
    ``Mmm dd hh:mm:ss`` with any case of month, one or two spaces before the day,
    one- or two-digit day, optional fraction (``.156``, bare ``.``), the year
    either between date and time (Cisco ``Apr 15 2007 21:28:13``) or after the
    time (Linksys ``Apr 15 21:28:13 2007``, 19xx/20xx only), an optional colon
    after it; or ISO 8601 ``yyyy-mm-dd[T| ]hh:mm:ss[.frac][Z|+hh:mm]`` (the rsyslog
    forward format).  ``Event.timestamp`` is the timestamp text exactly as
    received, without the clock mark and the trailing colon.  Text that is not
    one of these shapes (or has an hour > 23, minute > 59, second > 60, day not
    1-31) is not a timestamp: the message then has no TIMESTAMP and no
    HOSTNAME, and its text becomes TAG/CONTENT as below (RFC 3164 4.3.2).

time_unix (UTC epoch seconds)
    Timestamps without a zone are read in ``tz`` (default UTC).  A timestamp
    without a year gets ``year_hint`` if given, else the year that places it in
    the window ``(received + 1 day - 1 year, received + 1 day]``: the year of the
    received time, the previous year when that would put the message more than
    one day in the future, the next year when the next year is still at most one
    day ahead (a sender a little ahead at New Year).  ``received`` defaults to
    the current time.  A date that does not exist (``Feb 30``, ``Feb 29`` of a
    non-leap year) leaves ``time_unix`` None with a note.

HOSTNAME
    Only read after a TIMESTAMP (syslog-ng's rule: without a header no
    hostname is expected).  The first word is the HOSTNAME when it consists of
    ``A-Z a-z 0-9 . _ - :`` only and does not end with ``:``, except an IPv6
    address (hex digits, ``.`` and at least two ``:``, so ``0002::`` is a
    HOSTNAME).  Otherwise (``haproxy[73411]:``, ``%ASA-6-302014:``, ``#001``)
    there is no HOSTNAME and the word is the TAG.  AIX ``Message forwarded from
    HOST:`` gives HOSTNAME ``HOST``.  A single word after the timestamp is the
    HOSTNAME (rsyslog's reading).  ``None`` when absent.

TAG (``Event.app_name``) and pid (``Event.procid``)
    TAG runs from the next word up to the first ``[``, ``:`` or space; any other
    characters (``/ ( ) . % -``...) belong to it and it has no length limit.
    ``tag[pid]`` gives procid ``pid``.  A word ending without ``:`` or ``[pid]``
    is the TAG only after a TIMESTAMP (the header says a TAG comes next: ``host
    tag message``), and never when it is all digits (``CST 1987 ...`` of RFC 3164
    5.4 example 3); without a TIMESTAMP such text is all CONTENT (``Use the
    BFG!``).

MSG
    The rest after the TAG and its ``:``, with ONE separating space removed
    (go-syslog, syslog-ng, VRL; rsyslog keeps it).  Further spaces are kept.
    Without TAG, MSG starts at the first non-space character after the header.
    Always a ``str`` (``""`` when empty).  RFC 5424 SD inside the content (rsyslog
    omfwd) is left in MSG.  Bytes that are not UTF-8 are kept with
    ``surrogateescape``.
"""
from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from .event import FORMAT_RFC3164, Event, ParseError

__all__ = ["parse"]

_DAY = 86400.0

_MONTHS: dict[str, int] = {}
for _n, _m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun",
                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1):
    _MONTHS[_m] = _n
    _MONTHS[_m.upper()] = _n
    _MONTHS[_m.lower()] = _n
del _n, _m

# One precompiled regex for the timestamp only (ranges checked in code).
#   BSD: 1 month, 2 day, 3 year-between, 4 hh, 5 mm, 6 ss, 7 fraction, 8 year-after
#   ISO: 9 yyyy, 10 mo, 11 dd, 12 hh, 13 mm, 14 ss, 15 fraction, 16 offset
_TS = re.compile(
    r"(?:([A-Za-z]{3}) {1,2}(\d{1,2}) (?:(\d{4}) )?(\d{1,2}):(\d\d):(\d\d)(?:\.(\d*))?"
    r"(?: ((?:19|20)\d\d)(?=[ :]|\Z))?"
    r"|(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d*))?([Zz]|[+-]\d\d:?\d\d)?)"
    r"(?=[ :]|\Z)",
    re.ASCII,
)

_HOSTCHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-:"
_IPV6CHARS = "0123456789ABCDEFabcdef:."
_AIX = "Message forwarded from "


def _days(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (no range check)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _mdays(y: int, m: int) -> int:
    if m == 2:
        return 29 if (y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)) else 28
    return 30 if m in (4, 6, 9, 11) else 31


_day_cache: dict[tuple, int] = {}


def _day_epoch(y: int, mo: int, d: int) -> int:
    key = (y, mo, d)
    v = _day_cache.get(key)
    if v is None:
        if len(_day_cache) > 4096:
            _day_cache.clear()
        v = _day_cache[key] = _days(y, mo, d) * 86400
    return v


def _local(y: int, mo: int, d: int, h: int, mi: int, s: int, tz) -> float:
    """Epoch seconds of a wall-clock time in ``tz`` (fold 0 in a DST overlap)."""
    if tz is UTC or d > _mdays(y, mo):  # (a non-existent date only guides the year guess)
        return _day_epoch(y, mo, d) + h * 3600 + mi * 60 + s
    return datetime(y, mo, d, h, mi, s, tzinfo=tz).timestamp()


_year_cache = [None, None, 0]  # [15-minute slot, tz, year]


def _year_of(t: float, tz) -> int:
    """The calendar year in ``tz`` at epoch ``t`` (cached per 15 minutes: every
    zone offset is a multiple of 15 minutes, so a year never changes inside one)."""
    slot = int(t // 900)
    c = _year_cache
    if c[0] == slot and c[1] is tz:
        return c[2]
    y = time.gmtime(t).tm_year if tz is UTC else datetime.fromtimestamp(t, tz).year
    c[0], c[1], c[2] = slot, tz, y
    return y


def _match_ts(s: str, i: int):
    """The timestamp at ``i`` (after an optional Cisco clock mark ``*``/``.``):
    ``(match, mark, fields)`` or ``None``.  ``fields`` is ``(year|None, month, day,
    hour, minute, second, fraction|None, offset|None, bsd)`` with ints checked
    for range (hour <= 23, minute <= 59, second <= 60, day 1-31, month name)."""
    mark = s[i:i + 1]
    if mark == "*" or mark == ".":
        m = _TS.match(s, i + 1)
    else:
        m = _TS.match(s, i)
        mark = None
    if m is None:
        return None
    mon, d, yb, h, mi, sec, frac, ya, iy, imo, idd, ih, imi, isec, ifrac, off = m.groups()
    if mon is not None:
        mo = _MONTHS.get(mon) or _MONTHS.get(mon.capitalize())
        if mo is None:
            return None
        y = yb or ya
        f = (int(y) if y else None, mo, int(d), int(h), int(mi), int(sec), frac, None, True)
    else:
        f = (int(iy), int(imo), int(idd), int(ih), int(imi), int(isec), ifrac, off, False)
    if f[2] == 0 or f[2] > 31 or f[3] > 23 or f[4] > 59 or f[5] > 60:
        return None
    return m, mark, f


def _time_unix(f: tuple, received, year_hint, tz, ev: Event):
    """UTC epoch seconds for the timestamp fields ``f``, or None (with a note)."""
    y, mo, d, h, mi, sec, frac, off, bsd = f
    leap = sec == 60  # a leap second as sent: :59 + 1 s
    if leap:
        sec = 59
    if y is None:
        if year_hint is not None:
            y = year_hint
        else:  # the year that puts it in (now + 1 day - 1 year, now + 1 day]
            now = time.time() if received is None else received
            limit = now + _DAY
            y = _year_of(now, tz)
            if _local(y, mo, d, h, mi, sec, tz) > limit:
                y -= 1
            elif mo == 1 and d <= 2 and _local(y + 1, mo, d, h, mi, sec, tz) <= limit:
                y += 1
    if not 1 <= mo <= 12 or d > _mdays(y, mo):
        ev.note(f"timestamp date {y:04d}-{mo:02d}-{d:02d} does not exist; time_unix unknown")
        return None
    if off is None:
        t = _local(y, mo, d, h, mi, sec, tz)
    else:
        t = _day_epoch(y, mo, d) + h * 3600 + mi * 60 + sec
        if off != "Z" and off != "z":
            oh, om = int(off[1:3]), int(off[-2:])
            if oh > 23 or om > 59:
                ev.note(f"timestamp offset {off} out of range; time_unix unknown")
                return None
            o = oh * 3600 + om * 60
            t = t - o if off[0] == "+" else t + o
    if frac:
        t += float("0." + frac[:9])
    return t + 1.0 if leap else t


def _is_hostname(w: str) -> bool:
    if not w or w.strip(_HOSTCHARS):
        return False
    if w[-1] == ":":  # "tag:" unless an IPv6 address such as "0002::"
        return w.count(":") >= 2 and not w.strip(_IPV6CHARS)
    return True


def parse(data: bytes, *, received: float | None = None, year_hint: int | None = None,
          tz=UTC) -> Event:
    """Parse one RFC 3164 message.  See the module doc for the conventions.

    ``received``: epoch seconds the message arrived (year guessing; stored in
    ``Event.received``; default now).  ``year_hint``: the year for timestamps
    without one (overrides the guess).  ``tz``: a ``tzinfo`` for timestamps
    without a zone (default UTC).  Raises :class:`ParseError` only for empty input
    or a broken PRI."""
    if not data:
        raise ParseError(0, "empty message", "empty")
    s = data.decode("utf-8", "surrogateescape")
    n = len(s)
    ev = Event(data, FORMAT_RFC3164)
    ev.received = received

    # PRI
    if s[0] == "<":
        j = s.find(">", 1, 5)
        p = s[1:j]
        if j < 2 or not (p.isdigit() and p.isascii()):
            raise ParseError(0 if j < 2 else 1,
                             "'<' does not start a PRI ('<' 1-3 digits '>')", "pri")
        pri = int(p)
        if pri > 191:
            raise ParseError(1, f"PRI {pri} out of range 0-191", "pri")
        i = j + 1
    else:
        pri = 13
        i = 0
        ev.note("no PRI; <13> (user.notice) assumed (RFC 3164 4.3.3)")
        sp = s.find(" ")
        if sp > 0 and s[:sp].isdigit():
            ev.note("starts like an RFC 6587 octet count: unexpected framing?")
    ev.pri = pri
    ev.facility = pri >> 3
    ev.severity = pri & 7
    while i < n and s[i] == " ":
        i += 1

    # Cisco sequence number "91: " (and IOS origin-id "91: host: ")
    hostname = None
    sd = None
    if i < n and "0" <= s[i] <= "9":
        k = i + 1
        while k < n and "0" <= s[k] <= "9":
            k += 1
        if k < n and s[k] == ":" and (k + 1 == n or s[k + 1] == " "):
            sd = {"meta": {"sequenceId": s[i:k]}}
            i = k + 1
            while i < n and s[i] == " ":
                i += 1
            sp = s.find(" ", i)
            if sp > i + 1 and s[sp - 1] == ":":
                k = sp + 1
                while k < n and s[k] == " ":
                    k += 1
                if _match_ts(s, k) is not None and _is_hostname(s[i:sp - 1]):
                    hostname = s[i:sp - 1]
                    i = k

    # TIMESTAMP
    r = _match_ts(s, i) if i < n else None
    has_ts = r is not None
    if has_ts:
        m, mark, f = r
        ev.timestamp = m.group()
        ev.time_unix = _time_unix(f, received, year_hint, tz, ev)
        i = m.end()
        if i < n and s[i] == ":":
            i += 1
        if mark is not None:
            if sd is None:
                sd = {}
            sd["timeQuality"] = {"isSynced": "0" if mark == "*" else "1"}
        while i < n and s[i] == " ":
            i += 1
        # HOSTNAME
        if hostname is None and i < n:
            if s.startswith(_AIX, i):
                c = s.find(":", i + 23)
                if c > i + 23 and s.find(" ", i + 23, c) < 0:
                    hostname = s[i + 23:c]
                    i = c + 1
                    while i < n and s[i] == " ":
                        i += 1
            else:
                sp = s.find(" ", i)
                if sp < 0:
                    sp = n
                w = s[i:sp]
                if _is_hostname(w):
                    hostname = w
                    i = sp
                    while i < n and s[i] == " ":
                        i += 1
    ev.hostname = hostname
    ev.sd = sd

    # TAG[pid]:
    if i >= n:
        ev.msg = ""
        return ev
    sp = s.find(" ", i)
    if sp < 0:
        sp = n
    b = s.find("[", i, sp)
    c = s.find(":", i, sp)
    tag = None
    j = i
    if b > i and (c < 0 or b < c):
        tag = s[i:b]
        rb = s.find("]", b, sp)
        if rb > 0:
            if rb > b + 1:
                ev.procid = s[b + 1:rb]
            j = rb + 1
            if j < n and s[j] == ":":
                j += 1
        else:  # "tag[" without "]": CONTENT starts at "[" (RFC 3164 4.1.3)
            j = b
    elif c > i:
        tag = s[i:c]
        j = c + 1
    elif c < 0 and b < 0 and has_ts and not s[i:sp].isdigit():
        tag = s[i:sp]
        j = sp
    if tag is not None:
        ev.app_name = tag
        if j < n and s[j] == " ":
            j += 1
    ev.msg = s[j:]
    return ev

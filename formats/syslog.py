"""Syslog headers and framing for output (RFC 5424, RFC 3164, RFC 6587).  Pure encoding.

Headers are returned **without** the space that separates them from the message:
``line = f"{rfc5424_header(...)} {msg}"``.

RFC 5424 (``rfc5424_header``): ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD``.
  * TIMESTAMP: UTC with milliseconds and ``Z`` (``2025-05-14T09:12:44.123Z``); ``None`` -> ``-``.
  * ``None`` or empty fields -> NILVALUE ``-``.  STRUCTURED-DATA is included (``sd``, a
    ready-made SD string, default ``-``) because a 5424 line without it is malformed.  Note:
    formats.md section 4.4's template ``... falcon-relay - - LEEF:...`` lacks one field; ours
    gives ``... falcon-relay - - - LEEF:...`` (PROCID, MSGID, SD).
  * Fields are sanitised to PRINTUSASCII (33-126): HOSTNAME keeps only ``[A-Za-z0-9._:-]``
    (a non-ASCII name is IDNA-encoded first), APP-NAME/PROCID/MSGID keep PRINTUSASCII; every
    other character becomes ``_``; then truncated to 255/48/128/32 characters.
  * If a header token contains ``CEF:`` or ``LEEF:`` (e.g. an upper-case IPv6 address
    ``2001:DB8::CEF:1``) it is lower-cased, so a CEF/LEEF reader that looks for the first
    marker cannot start the record inside the syslog header.  Host names are case-insensitive.
RFC 3164 (``rfc3164_header``): ``<PRI>Mmm dd hh:mm:ss HOSTNAME TAG[PID]:``.
  * English month, space-padded day, UTC by default (``utc=False`` for local time);
    ``None`` timestamp -> now.  HOSTNAME sanitised as above (``None``/empty -> ``-``).
    TAG keeps PRINTUSASCII except ``[``, ``]``, ``:``, at most 32 characters; no TAG ->
    header ends after HOSTNAME.
Framing (``frame``):
  * ``"octet"`` (RFC 6587 octet counting, also RFC 5425): ``b"<len> " + line``; carries any byte.
  * ``"lf"`` (non-transparent): ``line + b"\\n"``.  An LF inside the line would split the
    record, so each embedded LF becomes a space (``on_lf="replace"``, the default) or is a
    ``ValueError`` (``on_lf="error"``).  CEF/LEEF from formats/ never contain LF.
"""
from __future__ import annotations

import time

__all__ = ["rfc5424_header", "rfc3164_header", "frame", "pri", "rfc5424_timestamp", "NILVALUE"]

NILVALUE = "-"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_PRINT = frozenset(chr(c) for c in range(33, 127))
_HOSTCH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-")
_TAGCH = _PRINT - frozenset("[]:")
_cache: dict[tuple, str] = {}


def pri(facility: int, severity: int) -> int:
    if not (0 <= facility <= 23 and 0 <= severity <= 7):
        raise ValueError(f"facility {facility} / severity {severity} out of range")
    return facility * 8 + severity


def _check_pri(p) -> int:
    if type(p) is not int or not 0 <= p <= 191:
        raise ValueError(f"PRI {p!r} is not an integer 0-191")
    return p


def _token(value, allowed: frozenset, limit: int, idna: bool = False) -> str:
    if value is None:
        return NILVALUE
    key = (value, limit, idna, allowed is _TAGCH)
    r = _cache.get(key)
    if r is not None:
        return r
    s = str(value)
    if idna and not s.isascii():
        try:
            s = s.encode("idna").decode("ascii")
        except UnicodeError:
            pass
    s = "".join(c if c in allowed else "_" for c in s)[:limit]
    if "CEF:" in s or "LEEF:" in s:
        s = s.lower()
    r = s or NILVALUE
    if len(_cache) < 8192:
        _cache[key] = r
    return r


_seconds: dict[int, str] = {}


def utc_second(secs: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` for an integer epoch second (cached: events of one
    second share it; the encoders call this per message)."""
    r = _seconds.get(secs)
    if r is None:
        t = time.gmtime(secs)
        r = (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:"
             f"{t.tm_sec:02d}")
        if len(_seconds) >= 4096:
            _seconds.clear()
        _seconds[secs] = r
    return r


def rfc5424_timestamp(epoch: float | None) -> str:
    if epoch is None:
        return NILVALUE
    secs, ms = divmod(round(epoch * 1000), 1000)
    return f"{utc_second(secs)}.{ms:03d}Z"


def rfc5424_header(pri: int, timestamp_epoch: float | None, hostname: str | None,
                   app_name: str | None, procid=None, msgid: str | None = None,
                   sd: str | None = None) -> str:
    """``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD`` (no trailing space)."""
    return (f"<{_check_pri(pri)}>1 {rfc5424_timestamp(timestamp_epoch)} "
            f"{_token(hostname, _HOSTCH, 255, True)} {_token(app_name, _PRINT, 48)} "
            f"{_token(procid, _PRINT, 128)} {_token(msgid, _PRINT, 32)} {sd or NILVALUE}")


def rfc3164_header(pri: int, timestamp_epoch: float | None, hostname: str | None,
                   tag: str | None, pid=None, *, utc: bool = True) -> str:
    """``<PRI>Mmm dd hh:mm:ss HOSTNAME TAG[PID]:`` (no trailing space)."""
    if timestamp_epoch is None:
        timestamp_epoch = time.time()
    t = time.gmtime(timestamp_epoch) if utc else time.localtime(timestamp_epoch)
    head = (f"<{_check_pri(pri)}>{_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {_token(hostname, _HOSTCH, 255, True)}")
    if tag is None or tag == "":
        return head
    tg = _token(tag, _TAGCH, 32)
    if pid is not None:
        return f"{head} {tg}[{_token(pid, _TAGCH, 128)}]:"
    return f"{head} {tg}:"


def frame(line: bytes, framing: str = "lf", *, on_lf: str = "replace") -> bytes:
    """Frame one message for a stream transport: ``"octet"`` or ``"lf"`` (see module doc)."""
    if framing == "octet":
        return b"%d %s" % (len(line), line)
    if framing == "lf":
        if b"\n" in line:
            if on_lf == "error":
                raise ValueError("LF inside a message cannot be sent with LF framing")
            line = line.replace(b"\n", b" ")
        return line + b"\n"
    raise ValueError(f"unknown framing {framing!r} (use 'octet' or 'lf')")

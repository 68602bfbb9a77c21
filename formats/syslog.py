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
Framing for stream transports: the one output framer, used by the syslog sink (TCP/TLS),
the file sink (one line per payload) and the tests.  It is on the hot path: ``frame_batch``
frames a whole batch into one buffer.
  * NUL never reaches the wire, whatever the framing: every NUL byte of a payload becomes a
    space (one for one, so an octet count stays right).  Receivers that frame on NUL (RFC 6587
    names it as a trailer; rsyslog, syslog-ng and the relay's own deframer accept it) or that
    store C strings would end the record there, and a sender could forge whole events
    behind it.  CEF/LEEF from formats/ already replace NUL; this catches the passthrough
    (``rfc5424``) payloads.  :func:`scrub_nul` is the rule for one payload (the UDP sink).
  * ``"octet"`` (RFC 6587 octet counting, also RFC 5425): ``LEN SP payload``; carries any
    other byte unchanged.
  * ``"lf"`` (non-transparent framing): ``payload LF``.  A trailing LF or CRLF of the payload
    is dropped; every other CR or LF inside it becomes a space (an LF would split the record
    and a CR confuses receivers that accept CRLF).
  * A payload changed by either rule counts as *changed* (the sinks add the count to
    ``relay_sanitised_total{sink}``).  CEF/LEEF from formats/ never contain CR, LF or NUL.
  * ``frame_batch(payloads, framing) -> (bytes, changed)``: all payloads framed into one
    buffer and the number of payloads changed; ``frame_spans(spans, framing)`` is the same
    for payloads given as spans of buffers (``[(buf, offsets)]``: a queue's packed rows), natively
    copied in one pass when no payload needs a change (``parsers/native.py``); ``frame_lf(payload) -> (bytes, changed)``
    frames one payload; ``frame(line, framing)`` is the one-message form of the same rules
    (bytes only); ``frame_octet(payload)`` is the bare octet-counting encoding (no NUL
    rule: tests build deframer input with it).  An unknown framing is a
    ``ValueError``.
"""
from __future__ import annotations

import time
from typing import Sequence

from parsers.native import frame_spans as _frame_spans

__all__ = ["rfc5424_header", "rfc3164_header", "frame", "frame_batch", "frame_spans", "frame_lf", "frame_octet", "scrub_nul", "pri",
           "rfc5424_timestamp", "NILVALUE"]

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


# --------------------------------------------------------------------------- framing
def scrub_nul(payload: bytes) -> tuple[bytes, bool]:
    """``payload`` with every NUL byte replaced by a space; returns (payload, changed)."""
    if b"\0" not in payload:
        return payload, False
    return payload.replace(b"\0", b" "), True


def frame_octet(payload: bytes) -> bytes:
    """``LEN SP payload``: the bare RFC 6587 encoding, every byte as given (tests build
    deframer input with it).  The output rule, NUL replaced, is :func:`frame` /
    :func:`frame_batch`."""
    return b"%d %s" % (len(payload), payload)


def frame_lf(payload: bytes) -> tuple[bytes, bool]:
    """``payload + LF`` after the LF-framing rule; returns (frame, changed)."""
    if b"\n" not in payload and b"\r" not in payload and b"\0" not in payload:
        return payload + b"\n", False
    p = payload
    if p.endswith(b"\r\n"):
        p = p[:-2]
    elif p.endswith(b"\n"):
        p = p[:-1]
    p = p.replace(b"\r", b" ").replace(b"\n", b" ").replace(b"\0", b" ")
    return p + b"\n", p != payload


class _Prefixes(dict):
    """``b"LEN "`` per payload length (octet counting), made once per length."""

    def __missing__(self, n: int) -> bytes:
        v = b"%d " % n
        if n < 65536:
            self[n] = v
        return v


_PREFIX = _Prefixes()


def frame_batch(payloads: Sequence[bytes], framing: str) -> tuple[bytes, int]:
    """All payloads framed into one buffer; returns (bytes, number of payloads changed)."""
    if framing == "octet":
        # one join of (prefix, payload) pairs: no per-payload formatting or copy
        payloads = payloads if isinstance(payloads, list) else list(payloads)
        parts: list = [b""] * (2 * len(payloads))
        parts[0::2] = map(_PREFIX.__getitem__, map(len, payloads))
        parts[1::2] = payloads
        data = b"".join(parts)
        if b"\0" not in data:       # one scan of the buffer: the usual case
            return data, 0
        changed = sum(1 for p in payloads if b"\0" in p)
        return data.replace(b"\0", b" "), changed
    if framing == "lf":
        parts = list(payloads)
        n = len(parts)
        parts.append(b"")
        data = b"\n".join(parts)
        # fast path: no payload holds a CR or an LF (the joined LFs are exactly n)
        if b"\r" not in data and b"\0" not in data and data.count(b"\n") == n:
            return data, 0
        changed = 0
        out = []
        for p in payloads:
            if b"\n" in p or b"\r" in p or b"\0" in p:
                f, c = frame_lf(p)
                changed += c
                out.append(f)
            else:
                out.append(p)
                out.append(b"\n")
        return b"".join(out), changed
    raise ValueError(f"unknown framing {framing!r} (use 'octet' or 'lf')")


def frame_spans(spans: list, framing: str) -> tuple[bytes, int]:
    """:func:`frame_batch` for payloads given as spans of buffers: ``spans`` is a list of
    ``(buf, offsets)``, ``offsets`` a list of ints, and the payloads are
    ``buf[offsets[k]:offsets[k + 1]]`` in order.  The same bytes and count as
    ``frame_batch`` of those payloads; the native accelerator copies them in one pass when
    none needs a change."""
    if _frame_spans is not None and (framing == "lf" or framing == "octet"):
        data = _frame_spans(spans, framing == "octet")
        if data is not None:
            return data, 0
    return frame_batch([buf[a:z] for buf, offs in spans for a, z in zip(offs, offs[1:])], framing)


def frame(line: bytes, framing: str = "lf") -> bytes:
    """One message framed for a stream transport, ``"octet"`` or ``"lf"``: the rules of
    :func:`frame_batch` (see module doc)."""
    if framing == "octet":
        return frame_octet(scrub_nul(line)[0])
    if framing == "lf":
        return frame_lf(line)[0]
    raise ValueError(f"unknown framing {framing!r} (use 'octet' or 'lf')")

"""Per-message format detection: bytes -> :class:`~parsers.event.Event`, never raises.

* RFC 5424 when the message starts with ``<PRI>VERSION SP`` (``<`` 1-3 digits ``>``,
  then 1-3 digits not starting with ``0``, then a space).  If the RFC 5424 parser
  rejects it, the result is a ``raw`` event carrying that error: a strict RFC 5424
  sender with a broken message must stay visible, so there is no silent second
  try as RFC 3164.
* RFC 3164 otherwise (the lenient fallback, see :mod:`parsers.rfc3164`).
* ``cef`` / ``leef`` when the message has no syslog header at all and starts with ``CEF:`` or
  ``LEEF:`` (a bare record, as some devices send it): ``msg`` = the whole message, PRI 13
  assumed (RFC 3164 4.3.3), no other header field.  A CEF/LEEF record *inside* a syslog MSG keeps its syslog format; an RFC 3164 parse
  that took ``CEF``/``LEEF`` for the TAG (``host CEF:0|...``) is undone so that MSG starts with
  the record.  Either way parsers/normalise.py decodes the record (parsers/cefleef.py).
* ``raw`` when the chosen parser raises :class:`ParseError`: ``format="raw"``,
  ``msg`` = the bytes decoded UTF-8 with ``surrogateescape``, ``error`` = the error.
  Any other exception from a parser (a bug) is caught the same way with
  ``error.kind == "internal"`` so one bad message cannot stop the relay.

``received``, ``peer`` and ``source`` are set on every returned event.
"""
from __future__ import annotations

import re

from . import rfc3164, rfc5424
from .event import FORMAT_RAW, Event, ParseError

__all__ = ["parse", "looks_like_rfc5424", "FORMAT_CEF", "FORMAT_LEEF"]

FORMAT_CEF = "cef"
FORMAT_LEEF = "leef"

# bytes pattern: \d is ASCII digits only
_RFC5424_START = re.compile(rb"<\d{1,3}>[1-9]\d{0,2} ").match


def looks_like_rfc5424(data: bytes) -> bool:
    """``<\\d{1,3}>[1-9]\\d{0,2} `` at the start of ``data``."""
    return _RFC5424_START(data) is not None


def _raw(data: bytes, err: ParseError) -> Event:
    ev = Event(data, FORMAT_RAW)
    ev.msg = data.decode("utf-8", "surrogateescape")
    ev.error = err
    return ev


def _bare(data: bytes) -> Event:
    """A CEF/LEEF record with no syslog header: PRI 13 (user.notice) is assumed, as RFC 3164
    4.3.3 says for a message without one."""
    ev = Event(data, FORMAT_CEF if data[:1] == b"C" else FORMAT_LEEF)
    ev.pri, ev.facility, ev.severity = 13, 1, 5
    end = len(data)
    while end and data[end - 1] in b"\r\n":
        end -= 1
    ev.msg = data[:end].decode("utf-8", "surrogateescape")
    return ev


def _untag(ev: Event, tag: str) -> None:
    """``CEF:0|...`` read by RFC 3164 as TAG ``CEF`` + ``0|...``: give MSG its record back."""
    msg = ev.msg
    if msg and msg[0].isdigit() and "|" in msg[:8]:
        ev.msg = f"{tag}:{msg}"
        ev.app_name = None


def parse(data: bytes, *, lenient: bool = False, received: float | None = None,
          peer: str | None = None, source: str | None = None,
          year_hint: int | None = None) -> Event:
    """Detect the format of one message and parse it; never raises.

    ``lenient`` is passed to the RFC 5424 parser; ``received`` and ``year_hint``
    to the RFC 3164 parser (year guessing)."""
    try:
        if _RFC5424_START(data) is not None:
            ev = rfc5424.parse(data, lenient=lenient)
        elif data[:4] == b"CEF:" or data[:5] == b"LEEF:":
            ev = _bare(data)
        else:
            ev = rfc3164.parse(data, received=received, year_hint=year_hint)
            tag = ev.app_name
            if (tag == "CEF" or tag == "LEEF") and ev.procid is None:
                _untag(ev, tag)
    except ParseError as e:
        ev = _raw(data, e)
    except Exception as e:  # a parser bug must not stop the relay
        ev = _raw(data, ParseError(0, f"internal parser error: {type(e).__name__}: {e}", "internal"))
    ev.raw = data
    ev.received = received
    ev.peer = peer
    ev.source = source
    return ev

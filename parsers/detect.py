"""Per-message format detection: bytes -> :class:`~parsers.event.Event`, never raises.

* RFC 5424 when the message starts with ``<PRI>VERSION SP`` (``<`` 1-3 digits ``>``,
  then 1-3 digits not starting with ``0``, then a space).  If the RFC 5424 parser
  rejects it, the result is a ``raw`` event carrying that error: a strict RFC 5424
  sender with a broken message must stay visible, so there is no silent second
  try as RFC 3164.
* RFC 3164 otherwise (the lenient fallback, see :mod:`parsers.rfc3164`).
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

__all__ = ["parse", "looks_like_rfc5424"]

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


def parse(data: bytes, *, lenient: bool = False, received: float | None = None,
          peer: str | None = None, source: str | None = None,
          year_hint: int | None = None) -> Event:
    """Detect the format of one message and parse it; never raises.

    ``lenient`` is passed to the RFC 5424 parser; ``received`` and ``year_hint``
    to the RFC 3164 parser (year guessing)."""
    try:
        if _RFC5424_START(data) is not None:
            ev = rfc5424.parse(data, lenient=lenient)
        else:
            ev = rfc3164.parse(data, received=received, year_hint=year_hint)
    except ParseError as e:
        ev = _raw(data, e)
    except Exception as e:  # a parser bug must not stop the relay
        ev = _raw(data, ParseError(0, f"internal parser error: {type(e).__name__}: {e}", "internal"))
    ev.raw = data
    ev.received = received
    ev.peer = peer
    ev.source = source
    return ev

"""The event every stage passes along, and the parse error every parser raises.

One class with ``__slots__``: the syslog header fields, the structured data, the
message, the raw bytes, when and from whom it was received, and ``fields``: the
canonical (normalised) fields that vendor normalisers fill (see docs/schema.md).

Conventions
-----------
* NILVALUE ("-") becomes ``None``.
* ``sd`` is ``None`` or a dict ``{SD-ID: {PARAM-NAME: value}}`` in the order
  received; a PARAM-NAME repeated inside one element keeps every value, as a
  list ``[v1, v2, ...]`` (RFC 5424 6.3.3).  Values have escapes undone.
* ``msg`` is ``str``.  Bytes that are not UTF-8 (MSG-ANY may be any octets) are
  kept losslessly with the ``surrogateescape`` error handler, so
  ``msg.encode("utf-8", "surrogateescape")`` gives back the exact bytes.  The RFC 3164
  parser keeps HOSTNAME and TAG the same way.  Use :func:`text` when a value must go into
  JSON or an encoder (:meth:`Event.syslog_dict` does, for every field).
* ``time_unix`` is UTC epoch seconds (float) or ``None``.
"""
from __future__ import annotations

__all__ = ["Event", "ParseError", "text", "FORMAT_RFC5424", "FORMAT_RFC3164", "FORMAT_RAW", "FORMAT_JSON"]

FORMAT_RFC5424 = "rfc5424"
FORMAT_RFC3164 = "rfc3164"
FORMAT_RAW = "raw"
FORMAT_JSON = "json"     # a JSON object received over HTTP (parsers/httpbody.py)


class ParseError(ValueError):
    """A message broke a rule.  ``offset`` is the 0-based byte offset into the
    input where the rule was broken; ``reason`` says which rule, in words;
    ``kind`` is a short stable code (``pri``, ``version``, ``timestamp``,
    ``hostname``, ``sd_id``, ``sd_param``, ``sd_value``, ``duplicate_sd_id``,
    ``msg_utf8``, ``framing``, ...) for counting by reason."""

    __slots__ = ("offset", "reason", "kind")

    def __init__(self, offset: int, reason: str, kind: str = "parse") -> None:
        super().__init__(f"at byte {offset}: {reason}")
        self.offset = offset
        self.reason = reason
        self.kind = kind

    def to_dict(self) -> dict:
        return {"offset": self.offset, "reason": self.reason, "kind": self.kind}


class Event:
    """One message on its way through the relay."""

    __slots__ = (
        # syslog header
        "format",      # "rfc5424" | "rfc3164" | "raw" | "json" (HTTP intake) | "api" (pull sources)
        "pri",         # int 0..191 or None
        "facility",    # int 0..23 or None
        "severity",    # int 0..7 or None
        "version",     # int (RFC 5424) or None
        "timestamp",   # str as received, or None
        "time_unix",   # float UTC epoch seconds, or None
        "hostname",
        "app_name",    # RFC 5424 APP-NAME, or the RFC 3164 TAG
        "procid",      # RFC 5424 PROCID, or the RFC 3164 [pid]
        "msgid",
        "sd",          # structured data (see module doc) or None
        "msg",         # str or None
        # provenance
        "raw",         # bytes exactly as framed/received
        "received",    # float epoch seconds when received
        "peer",        # "ip:port" of the sender, or None
        "source",      # name of the configured source, or None
        # failures and notes
        "error",       # ParseError when the message could not be parsed (format "raw")
        "notes",       # list[str] of leniencies applied / sanitising done, or None
        # later stages
        "fields",      # canonical event fields (dict) filled by normalisers, or None
        "body",        # parsed JSON body of msg (cache), or None
        "enrich",      # enrichment results (dict), or None
        "meta",        # free dict for stages (route names, triage...), or None
    )

    def __init__(self, raw: bytes = b"", format: str = FORMAT_RAW) -> None:
        self.format = format
        self.pri = None
        self.facility = None
        self.severity = None
        self.version = None
        self.timestamp = None
        self.time_unix = None
        self.hostname = None
        self.app_name = None
        self.procid = None
        self.msgid = None
        self.sd = None
        self.msg = None
        self.raw = raw
        self.received = None
        self.peer = None
        self.source = None
        self.error = None
        self.notes = None
        self.fields = None
        self.body = None
        self.enrich = None
        self.meta = None

    def note(self, text_: str) -> None:
        if self.notes is None:
            self.notes = [text_]
        else:
            self.notes.append(text_)

    def syslog_dict(self) -> dict:
        """The syslog part in the stable ``test-parse --json`` schema."""
        return {
            "format": self.format,
            "pri": self.pri,
            "facility": self.facility,
            "severity": self.severity,
            "version": self.version,
            "timestamp": _text(self.timestamp),
            "time_unix": self.time_unix,
            "hostname": _text(self.hostname),
            "app_name": _text(self.app_name),
            "procid": _text(self.procid),
            "msgid": _text(self.msgid),
            "structured_data": sd_text(self.sd),
            "msg": text(self.msg),
        }

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return (f"Event(format={self.format!r}, pri={self.pri!r}, hostname={self.hostname!r}, "
                f"app_name={self.app_name!r}, msgid={self.msgid!r}, sd={self.sd!r}, msg={self.msg!r})")


def text(value):
    """A str safe for JSON and encoders: bytes kept by ``surrogateescape`` that
    are not UTF-8 become U+FFFD.  ``None`` stays ``None``."""
    if value is None or value.isascii():
        return value
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _text(value):
    """:func:`text` for a header field that may also be an int or None."""
    return text(value) if value.__class__ is str else value


def sd_text(sd):
    if not sd:
        return sd
    out = {}
    for sid, params in sd.items():
        p = {}
        for k, v in params.items():
            p[_text(k)] = [text(x) for x in v] if isinstance(v, list) else text(v)
        out[_text(sid)] = p
    return out

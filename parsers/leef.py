"""LEEF (IBM Log Event Extended Format) 1.0 / 2.0 record decoder.  Pure decoding, no I/O.

``parse(text)`` turns ``[syslog ]LEEF:1.0|Vendor|Product|Version|EventID|attrs`` or
``[syslog ]LEEF:2.0|Vendor|Product|Version|EventID|Delimiter|attrs`` into a
:class:`LeefRecord`.  Rules (shared/reference/formats.md section 3):

* The record starts at the first ``LEEF:``; text before it is ``syslog`` (trailing blanks
  removed, ``None`` when empty).  No ``LEEF:`` (or empty input) is an error.  A trailing
  CR/LF run (record terminator) is removed; LEEF has no escapes, so nothing else is.
* Version is ``1.0`` or ``2.0`` exactly; anything else is an error.
* Header fields are split on ``|`` (LEEF defines no header escape).  Vendor, product, version
  and event ID are required; the ``|`` after the event ID may be missing when no attributes
  follow (``LEEF:1.0|V|P|1.0|EventID``).
* LEEF 1.0: attributes are TAB separated.
* LEEF 2.0: field 6 is the delimiter: one character, or ``x``/``0x`` (any case) followed by
  1-4 hex digits giving the code point (``x09``, ``0x5E``, ``0x9``; IBM's rule, wider than
  OTTL which rejects ``0x9``/``0x0909``).  An empty field means TAB.  When field 6 contains
  ``=`` the sender left the delimiter field out (Trend Micro, Check Point): TAB is used and
  field 6 is the first attribute.  A multi-character literal (``||`` in OTTL's table) is
  accepted as a multi-character delimiter; a malformed hex form is an error.
* Attributes: split on the delimiter; skip empty pieces and pieces without ``=``; split each
  pair on its **first** ``=``; empty values are kept as ``""``; no whitespace trimming (OTTL
  trims; QRadar documents none) and no unescaping (``\\n`` stays two characters).  A key
  given twice keeps its **last** value.
* ``delimiter=`` overrides the attribute delimiter (rsyslog's per-source setting), for
  senders that break the spec such as PAN-OS, which sends LEEF 1.0 with ``|`` between
  attributes.  There is no auto-detection: content-based guessing would let a value that
  contains ``|k=v`` forge attributes.
"""
from __future__ import annotations

from .event import ParseError

__all__ = ["LeefRecord", "parse", "decode_delimiter", "dev_time"]

_HEX = frozenset("0123456789abcdefABCDEF")


class LeefRecord:
    """One decoded LEEF record."""

    __slots__ = ("version", "vendor", "product", "product_version", "event_id",
                 "delimiter", "attributes", "syslog")

    def __init__(self, version: str, vendor: str, product: str, product_version: str,
                 event_id: str, delimiter: str, attributes: dict[str, str],
                 syslog: str | None = None) -> None:
        self.version = version
        self.vendor = vendor
        self.product = product
        self.product_version = product_version
        self.event_id = event_id
        self.delimiter = delimiter
        self.attributes = attributes
        self.syslog = syslog

    def header(self) -> dict:
        """The header in the vector schema."""
        return {"version": self.version, "vendor": self.vendor, "product": self.product,
                "product_version": self.product_version, "event_id": self.event_id,
                "delimiter": self.delimiter}

    def __eq__(self, other) -> bool:
        if not isinstance(other, LeefRecord):
            return NotImplemented
        return all(getattr(self, s) == getattr(other, s) for s in self.__slots__)

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"LeefRecord({', '.join(f'{s}={getattr(self, s)!r}' for s in self.__slots__)})"


def _boff(text: str, i: int) -> int:
    return i if text.isascii() else len(text[:i].encode("utf-8", "surrogateescape"))


def decode_delimiter(field: str) -> str:
    """The LEEF 2.0 delimiter field -> the delimiter string.  Raises ``ValueError``."""
    if not field:
        return "\t"
    if len(field) > 1 and field[0] in "xX0":
        if field[0] == "0":
            if field[1] not in "xX":
                return field  # multi-character literal such as "00"? kept literally
            digits = field[2:]
        else:
            digits = field[1:]
        if not digits:
            raise ValueError(f"empty hex value in delimiter field {field!r}")
        if len(digits) > 4 or not all(c in _HEX for c in digits):
            raise ValueError(f"invalid hex delimiter {field!r}")
        code = int(digits, 16)
        if code == 0:
            raise ValueError("NUL delimiter")
        return chr(code)
    return field


def parse(text: str, *, delimiter: str | None = None) -> LeefRecord:
    """Decode one LEEF record (see module doc)."""
    if not text:
        raise ParseError(0, "empty input", "leef_empty")
    start = text.find("LEEF:")
    if start < 0:
        raise ParseError(0, "no 'LEEF:' marker", "leef_marker")
    syslog = text[:start].rstrip() or None
    end = len(text)
    while end > start and text[end - 1] in "\r\n":
        end -= 1
    p = start + 5
    j = text.find("|", p, end)
    if j < 0:
        raise ParseError(_boff(text, end), "no '|' after the LEEF version", "leef_header")
    version = text[p:j]
    if version != "1.0" and version != "2.0":
        raise ParseError(_boff(text, p), f"unsupported LEEF version {version!r}", "leef_version")
    fields = []
    pos = j + 1
    for _ in range(3):
        j = text.find("|", pos, end)
        if j < 0:
            raise ParseError(_boff(text, end), f"LEEF {version} header needs vendor, product, version "
                             "and event ID", "leef_header")
        fields.append(text[pos:j])
        pos = j + 1
    j = text.find("|", pos, end)
    if j < 0:  # event ID without trailing '|' and no attributes
        fields.append(text[pos:end])
        pos = end
    else:
        fields.append(text[pos:j])
        pos = j + 1
    delim = "\t"
    if version == "2.0" and pos < end:
        j = text.find("|", pos, end)
        field = text[pos:j if j >= 0 else end]
        if "=" not in field:  # a delimiter field (else: omitted, field 6 is an attribute)
            try:
                delim = decode_delimiter(field)
            except ValueError as e:
                raise ParseError(_boff(text, pos), str(e), "leef_delimiter") from None
            pos = j + 1 if j >= 0 else end
    attrs = _attributes(text, pos, end, delimiter or delim)
    return LeefRecord(version, fields[0], fields[1], fields[2], fields[3],
                      delim if delimiter is None else delimiter, attrs, syslog)


def _attributes(s: str, pos: int, end: int, delim: str) -> dict[str, str]:
    out: dict[str, str] = {}
    if pos >= end:
        return out
    for pair in s[pos:end].split(delim):
        eq = pair.find("=")
        if eq > 0:
            out[pair[:eq]] = pair[eq + 1:]
        # empty pieces, pieces without '=' and '=value' without a key are skipped
    return out


def dev_time(attrs: dict) -> float | None:
    """``devTime`` (read with ``devTimeFormat``, a Java SimpleDateFormat; without one, epoch
    milliseconds as the LEEF spec says) as UTC epoch seconds, or None when unreadable."""
    v = attrs.get("devTime")
    if not v:
        return None
    v = v.strip()
    fmt = attrs.get("devTimeFormat")
    if not fmt or (v.isascii() and v.isdigit()):
        return int(v) / 1000.0 if v.isascii() and v.isdigit() else None
    from datetime import datetime, timezone
    py = _java_format(fmt)
    try:
        if py is None:
            raise ValueError(fmt)
        d = datetime.strptime(v, py)
    except ValueError:
        from .cef import parse_time
        return parse_time(v)
    if d.tzinfo is None:
        d = d.replace(tzinfo=timezone.utc)
    return d.timestamp()


_JAVA = (("yyyy", "%Y"), ("MMM", "%b"), ("MM", "%m"), ("dd", "%d"), ("HH", "%H"), ("mm", "%M"),
         ("ss", "%S"), ("SSS", "%f"), ("XXX", "%z"), ("Z", "%z"), ("'T'", "T"))


def _java_format(fmt: str) -> str | None:
    """The SimpleDateFormat patterns LEEF senders use -> a strptime format; None if another."""
    out = fmt
    for j, p in _JAVA:
        out = out.replace(j, p)
    for i, c in enumerate(out):
        if c.isalpha() and c != "T" and out[i - 1:i] != "%":
            return None
    return out

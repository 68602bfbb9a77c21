"""LEEF 1.0 / 2.0 record encoder.  Pure encoding, no I/O.

``encode(vendor, product, product_version, event_id, attributes, version="2.0",
delimiter="^")`` returns ``(line, changes)``: the LEEF text and how many characters had to be
sanitised.  parsers/leef.py reads back exactly the sanitised values.

Why sanitising and not escaping: IBM's LEEF guide defines **no escape mechanism** and QRadar
unescapes nothing (``c:\\windows``, a literal ``\\n`` arrive as written).  An escape of our own
would reach the analyst as garbage and still not protect QRadar's splitter.  So characters
that would break the record are replaced, one for one, and counted:

* attribute values: the delimiter, CR, LF and NUL each become one **space** (the line stays
  readable, word boundaries survive, and a space can never split a pair, end the record or
  start a key; a NUL would end the record for a receiver that frames on NUL, so a sender
  could forge whole events behind it);
* header fields (vendor, product, version, event ID): ``|``, CR, LF and NUL each become one space.
  We do not write ``\\|``: QRadar's handling of it is unspecified and a naive ``|`` splitter
  would still cut the field there;
* keys: ``=``, the delimiter, ``|``, NUL and whitespace each become ``_`` (keys are ours, but a key
  must never split a pair); a key with nothing left is a ``ValueError``.

``changes`` counts every replaced character (CR LF counts 2).  The caller can note it on the
event (``Event.note``) or count it per sink.

Versions and delimiter: LEEF 1.0 always uses TAB (``delimiter`` is ignored).  LEEF 2.0 writes
the delimiter field: a printable character as itself (``^``), a control character or space as
hex in the ``0x`` form (``0x09``): IBM accepts ``x09`` and ``0x09`` alike, and ``0x`` is also the
only form OTTL (OpenTelemetry) decodes.  The delimiter must be one character and not a letter,
digit, ``=``, ``|``, space, CR, LF or NUL.

QRadar checks: ``sev`` must be an integer 1-10 (``int`` or digit string; written as digits)
and ``devTime`` must come with ``devTimeFormat``, else ``ValueError``.  :func:`dev_time` gives
a matching (value, pattern) pair: ``2025-05-14T09:12:44.000+0000`` with
``yyyy-MM-dd'T'HH:mm:ss.SSSZ`` (numeric, so no locale-dependent month names; UTC, explicit
offset so QRadar does not apply its own zone).

``None`` values are left out; other non-``str`` values go through ``str()``.
"""
from __future__ import annotations

from .syslog import utc_second

__all__ = ["encode", "dev_time", "dev_time_attrs", "check_sev", "delimiter_field",
           "DEV_TIME_FORMAT"]

DEV_TIME_FORMAT = "yyyy-MM-dd'T'HH:mm:ss.SSSZ"

_HDR_TABLE = str.maketrans({"|": " ", "\r": " ", "\n": " ", "\0": " "})


class _Delim:
    """Per-delimiter tables, built once."""

    __slots__ = ("d", "field", "keys", "key_cache", "plain")

    def __init__(self, d: str) -> None:
        self.d = d
        self.field = delimiter_field(d)
        bad = {c: "_" for c in "= \t\r\n|\x0b\x0c\x00"}
        bad[d] = "_"
        self.keys = str.maketrans(bad)
        self.key_cache: dict[str, tuple[str, int]] = {}
        # fast path: key -> "key=" for str keys that need no sanitising and no value check
        self.plain: dict[str, str] = {}

    def key(self, k: str) -> tuple[str, int]:
        r = self.key_cache.get(k)
        if r is not None:
            return r
        sk = str(k)
        if not sk:
            raise ValueError("empty LEEF attribute key")
        t = sk.translate(self.keys)
        n = sum(1 for a, b in zip(sk, t) if a != b)
        if n == len(sk):
            raise ValueError(f"LEEF attribute key {k!r} has no usable characters")
        r = (t, n)
        if len(self.key_cache) < 4096:
            self.key_cache[k] = r
            if not n and k.__class__ is str and k not in _SPECIAL_KEYS:
                self.plain[k] = t + "="
        return r


def delimiter_field(d: str) -> str:
    """The LEEF 2.0 delimiter header field for delimiter ``d``; ``ValueError`` if unusable."""
    if type(d) is not str or len(d) != 1:
        raise ValueError(f"LEEF delimiter must be one character, not {d!r}")
    if d.isalnum() or d in "=| \r\n\x00":
        raise ValueError(f"LEEF delimiter {d!r} is not allowed")
    o = ord(d)
    if 0x21 <= o <= 0x7E or (o >= 0xA0 and d.isprintable()):
        return d
    if o > 0xFFFF:
        raise ValueError(f"LEEF delimiter {d!r} cannot be written in the header")
    return f"0x{o:02X}"


_delims: dict[str, _Delim] = {}
_SPECIAL_KEYS = frozenset(("sev", "devTime", "devTimeFormat"))  # values checked, never on the fast path
_heads: dict[tuple, tuple[str, int]] = {}


def _delim(d: str) -> _Delim:
    r = _delims.get(d)
    if r is None:
        r = _Delim(d)
        _delims[d] = r
    return r


def check_sev(value) -> str:
    """LEEF ``sev`` as its wire text: an integer 1-10, else ``ValueError``."""
    t = type(value)
    if t is int:
        n = value
    elif t is str and value.isascii() and value.isdigit():
        n = int(value)
    else:
        raise ValueError(f"LEEF sev {value!r} is not an integer 1-10")
    if not 1 <= n <= 10:
        raise ValueError(f"LEEF sev {value!r} is outside 1-10")
    return str(n)


def _header(s) -> tuple[str, int]:
    if type(s) is not str:
        s = "" if s is None else str(s)
    if "|" in s or "\r" in s or "\n" in s or "\0" in s:
        return s.translate(_HDR_TABLE), s.count("|") + s.count("\r") + s.count("\n") + s.count("\0")
    return s, 0


def encode(vendor: str, product: str, product_version: str, event_id: str, attributes=(), *,
           version: str = "2.0", delimiter: str = "^") -> tuple[str, int]:
    """One LEEF line (no syslog header, no trailing LF) and the number of sanitised
    characters.  ``attributes`` is a list of ``(key, value)`` pairs or a dict."""
    if version == "2.0":
        dd = _delims.get(delimiter) or _delim(delimiter)
    elif version == "1.0":
        dd = _delims.get("\t") or _delim("\t")
    else:
        raise ValueError(f"LEEF version {version!r} is not '1.0' or '2.0'")
    if (vendor.__class__ is str and product.__class__ is str and product_version.__class__ is str
            and event_id.__class__ is str):  # plain str header fields: cached
        hk = (vendor, product, product_version, event_id, version, dd.d)
        hit = _heads.get(hk)
    else:
        hit = hk = None
    if hit is None:
        v1, c1 = _header(vendor)
        v2, c2 = _header(product)
        v3, c3 = _header(product_version)
        v4, c4 = _header(event_id)
        if version == "2.0":
            hit = (f"LEEF:2.0|{v1}|{v2}|{v3}|{v4}|{dd.field}|", c1 + c2 + c3 + c4)
        else:
            hit = (f"LEEF:1.0|{v1}|{v2}|{v3}|{v4}|", c1 + c2 + c3 + c4)
        if hk is not None:
            if len(_heads) >= 4096:
                _heads.clear()
            _heads[hk] = hit
    head, changes = hit
    if not attributes:
        return head, changes
    d = dd.d
    kc = dd.key_cache
    plain = dd.plain
    has_time = has_format = False
    parts = []
    append = parts.append
    items = attributes.items() if isinstance(attributes, dict) else attributes
    for k, v in items:
        # fast path: a str value without the delimiter, CR, LF or NUL (isprintable() is
        # False for them) under a clean, ordinary key: written as is
        if v.__class__ is str and v.isprintable() and d not in v:
            p = plain.get(k)
            if p is not None:
                append(p + v)
                continue
        if v is None:
            continue
        if k == "sev":
            v = str(v) if v.__class__ is int and 1 <= v <= 10 else check_sev(v)
        else:
            if k == "devTime":
                has_time = True
            elif k == "devTimeFormat":
                has_format = True
            if type(v) is not str:
                v = str(v)
            if d in v:
                changes += v.count(d)
                v = v.replace(d, " ")
            if "\n" in v:
                changes += v.count("\n")
                v = v.replace("\n", " ")
            if "\r" in v:
                changes += v.count("\r")
                v = v.replace("\r", " ")
            if "\0" in v:
                changes += v.count("\0")
                v = v.replace("\0", " ")
        r = kc.get(k)
        if r is None:
            r = dd.key(k)
        if r[1]:
            changes += r[1]
        append(f"{r[0]}={v}")
    if has_time and not has_format:
        raise ValueError("LEEF devTime given without devTimeFormat")
    return head + d.join(parts), changes


def dev_time(epoch: float) -> tuple[str, str]:
    """``(devTime, devTimeFormat)`` for a UTC epoch in seconds, to the millisecond:
    ``("2025-05-14T09:12:44.000+0000", "yyyy-MM-dd'T'HH:mm:ss.SSSZ")``."""
    secs, ms = divmod(round(epoch * 1000), 1000)
    return f"{utc_second(secs)}.{ms:03d}+0000", DEV_TIME_FORMAT


def dev_time_attrs(epoch: float) -> list[tuple[str, str]]:
    """``[("devTime", value), ("devTimeFormat", pattern)]`` ready to extend an attribute list."""
    v, f = dev_time(epoch)
    return [("devTime", v), ("devTimeFormat", f)]

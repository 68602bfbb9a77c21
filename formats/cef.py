"""CEF record encoder.  Pure encoding: values in, one CEF line (``str``) out, no I/O.

``encode(vendor, product, device_version, event_class_id, name, severity, extension)``
gives ``CEF:0|vendor|product|device_version|event_class_id|name|severity|k=v k=v``.

Rules (shared/reference/formats.md section 2; parsers/cef.py reads back exactly this):

* Header fields: ``\\`` -> ``\\\\``, ``|`` -> ``\\|``; CR LF, CR and LF each become one space
  (the header cannot carry a newline; Logstash does the same).  ``=`` is not escaped.
* NUL and TAB, in header fields and extension values, each become one space.  CEF has no
  escape for them; a NUL ends the record for any receiver that frames or stores C strings
  (a sender could forge whole events behind it), and a TAB is a pair separator to many CEF
  readers.  :func:`encode_counted` returns how many characters were replaced (NUL, TAB, and
  the header's CR/LF), for ``relay_sanitised_total`` and the event's notes.
* Extension values: ``\\`` -> ``\\\\``, ``=`` -> ``\\=``, CR -> ``\\r``, LF -> ``\\n`` (so CR LF
  -> ``\\r\\n``; decoding gives back the exact CR/LF characters).  ``|`` is not escaped.
  Trailing spaces/TABs of a value cannot be carried by CEF (a reader cannot tell them from
  the pair separator), so they are removed.  Leading blanks are kept.
* ``None`` values are left out; other non-``str`` values go through ``str()``.
* Keys: only ``[A-Za-z0-9_.[],]`` (the key characters the decoder recognises, which also
  covers ArcSight ``ad.`` keys); any other character is dropped, and a key that ends up empty
  is a ``ValueError``.  (Logstash keeps only ``[A-Za-z0-9]``.)  Keys are used in the order given.
* Severity: an integer 0-10 (``int``, integral ``float`` or a numeric ``str`` such as
  ``"7"``/``"1.0"``, blanks ignored); anything else is a ``ValueError`` (Logstash silently
  falls back to 6; we refuse so the caller's mapping bug shows).
* Version: 0 or 1.

Only when a value holds a character that needs it is it rewritten (an ``in`` check per
character, then ``str.replace``, which is much faster than ``str.translate`` with a
multi-character table), so clean values cost four ``in`` scans and no allocation.
"""
from __future__ import annotations

__all__ = ["encode", "encode_counted", "header_counted", "extension_counted", "escape_header", "escape_value",
           "sanitise_key", "check_severity", "custom_fields", "custom_strings", "custom_numbers", "CUSTOM_SLOTS"]

_KEYCH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.[],")
_HDR_TABLE = str.maketrans({"\\": "\\\\", "|": "\\|", "\r": " ", "\n": " ", "\t": " ", "\0": " "})
_key_cache: dict[str, str] = {}


def escape_header(s: str) -> str:
    return _header(s)[0]


def _header(s) -> tuple[str, int]:
    """(escaped header field, characters replaced by a space)."""
    if type(s) is not str:
        s = "" if s is None else str(s)
    if "\\" in s or "|" in s or "\r" in s or "\n" in s or "\t" in s or "\0" in s:
        n = 0
        if "\r\n" in s:
            n += 2 * s.count("\r\n")
            s = s.replace("\r\n", " ")
        n += s.count("\r") + s.count("\n") + s.count("\t") + s.count("\0")
        return s.translate(_HDR_TABLE), n
    return s, 0


def escape_value(v: str) -> str:
    if "\t" in v:
        v = v.replace("\t", " ")
    if "\0" in v:
        v = v.replace("\0", " ")
    if "\\" in v:
        v = v.replace("\\", "\\\\")
    if "=" in v:
        v = v.replace("=", "\\=")
    if "\n" in v:
        v = v.replace("\n", "\\n")
    if "\r" in v:
        v = v.replace("\r", "\\r")
    if v and v[-1] == " ":
        v = v.rstrip(" ")
    return v


def sanitise_key(key: str) -> str:
    k = _key_cache.get(key)
    if k is not None:
        return k
    k = "".join(c for c in str(key) if c in _KEYCH)
    if not k:
        raise ValueError(f"CEF extension key {key!r} has no usable characters")
    if len(_key_cache) < 4096:
        _key_cache[key] = k
    return k


def check_severity(severity) -> int:
    """Severity as an int 0-10, or ``ValueError``."""
    t = type(severity)
    if t is int:
        n = severity
    elif t is float:
        if not severity.is_integer():
            raise ValueError(f"CEF severity {severity!r} is not an integer")
        n = int(severity)
    elif t is str:
        s = severity.strip()
        if s.isascii() and s.isdigit():
            n = int(s)
        else:
            try:
                f = float(s)
            except ValueError:
                raise ValueError(f"CEF severity {severity!r} is not an integer 0-10") from None
            if not f.is_integer():
                raise ValueError(f"CEF severity {severity!r} is not an integer 0-10")
            n = int(f)
    else:
        raise ValueError(f"CEF severity {severity!r} is not an integer 0-10")
    if not 0 <= n <= 10:
        raise ValueError(f"CEF severity {severity!r} is outside 0-10")
    return n


def encode(vendor: str, product: str, device_version: str, event_class_id: str, name: str,
           severity, extension=(), *, version: int = 0) -> str:
    """One CEF line (no syslog header, no trailing LF).  ``extension`` is a list of
    ``(key, value)`` pairs or a dict."""
    return encode_counted(vendor, product, device_version, event_class_id, name, severity, extension,
                          version=version)[0]


def encode_counted(vendor: str, product: str, device_version: str, event_class_id: str, name: str,
                   severity, extension=(), *, version: int = 0) -> tuple[str, int]:
    """:func:`encode` and the number of characters sanitised (NUL and TAB anywhere, CR/LF in
    header fields; each replaced by a space): :func:`header_counted` then
    :func:`extension_counted`."""
    head, changes = header_counted(vendor, product, device_version, event_class_id, name, severity,
                                   version=version)
    if not extension:
        return head, changes
    body, more = extension_counted(extension)
    return head + body, changes + more


def header_counted(vendor: str, product: str, device_version: str, event_class_id: str, name: str,
                   severity, *, version: int = 0) -> tuple[str, int]:
    """``CEF:version|vendor|product|device_version|event_class_id|name|severity|`` and the
    number of characters sanitised in it."""
    if version != 0 and version != 1:
        raise ValueError(f"CEF version {version!r} is not 0 or 1")
    sev = check_severity(severity)
    h1, c1 = _header(vendor)
    h2, c2 = _header(product)
    h3, c3 = _header(device_version)
    h4, c4 = _header(event_class_id)
    h5, c5 = _header(name)
    return f"CEF:{version}|{h1}|{h2}|{h3}|{h4}|{h5}|{sev}|", c1 + c2 + c3 + c4 + c5


def extension_counted(extension) -> tuple[str, int]:
    """The extension (``(key, value)`` pairs or a dict) as ``k=v k=v`` and the number of
    characters sanitised (NUL and TAB)."""
    changes = 0
    items = extension.items() if isinstance(extension, dict) else extension
    parts = []
    cache = _key_cache
    for k, v in items:
        if v is None:
            continue
        if type(v) is not str:
            v = str(v)
        if "\t" in v:
            changes += v.count("\t")
            v = v.replace("\t", " ")
        if "\0" in v:
            changes += v.count("\0")
            v = v.replace("\0", " ")
        if "\\" in v:
            v = v.replace("\\", "\\\\")
        if "=" in v:
            v = v.replace("=", "\\=")
        if "\n" in v:
            v = v.replace("\n", "\\n")
        if "\r" in v:
            v = v.replace("\r", "\\r")
        if v and v[-1] == " ":
            v = v.rstrip(" ")
        ck = cache.get(k)
        if ck is None:
            ck = sanitise_key(k)
        parts.append(f"{ck}={v}")
    return " ".join(parts), changes


# Custom (labelled) fields: prefix -> highest standard index.
CUSTOM_SLOTS = {"cs": 6, "cn": 3, "cfp": 4, "c6a": 4, "deviceCustomDate": 2, "flexString": 2,
                "flexDate": 1, "flexNumber": 2}


def custom_fields(prefix: str, pairs, start: int = 1) -> list[tuple[str, str]]:
    """``[(label, value), ...]`` -> ``[(f"{prefix}{n}", value), (f"{prefix}{n}Label", label), ...]``
    with ``n`` counting from ``start``.  ``None`` values are skipped without using a slot.
    More pairs than the standard slots (``CUSTOM_SLOTS``) is a ``ValueError``.  ``cn`` values
    must be integers, ``cfp`` values numbers."""
    limit = CUSTOM_SLOTS.get(prefix)
    if limit is None:
        raise ValueError(f"unknown CEF custom field prefix {prefix!r}")
    out = []
    n = start
    for label, value in pairs:
        if value is None:
            continue
        if n > limit or n < 1:
            raise ValueError(f"CEF custom field {prefix}{n} is outside {prefix}1..{prefix}{limit}")
        if prefix == "cn":
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise ValueError(f"{prefix}{n} value {value!r} is not an integer")
            value = str(int(value))
        elif prefix == "cfp":
            f = float(value)  # ValueError when not a number
            value = value.strip() if isinstance(value, str) else repr(f)
        out.append((f"{prefix}{n}", value if type(value) is str else str(value)))
        out.append((f"{prefix}{n}Label", str(label)))
        n += 1
    return out


def custom_strings(pairs, start: int = 1) -> list[tuple[str, str]]:
    """``cs1..cs6`` with ``cs<n>Label``, e.g. ``custom_strings([("CommandLine", cmd)], start=5)``."""
    return custom_fields("cs", pairs, start)


def custom_numbers(pairs, start: int = 1) -> list[tuple[str, str]]:
    """``cn1..cn3`` with ``cn<n>Label``; values must be integers."""
    return custom_fields("cn", pairs, start)

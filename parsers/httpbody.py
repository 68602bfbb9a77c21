"""HTTP request bodies -> events: the body formats of the ``http`` source.  Pure decoding:
bytes in, events out, no sockets (relay/sources/http.py does the HTTP).

=========  =====================================================================================
format     body
=========  =====================================================================================
json       one JSON object, or an array of objects
ndjson     one JSON object per line (LF or CRLF; blank lines skipped)
hec        Splunk HEC ``/event``: envelopes ``{"event": ..., "time", "host", "source",
           "sourcetype", "index", "fields"}`` concatenated (whitespace between them allowed);
           ``/raw``: text, one event per line
syslog     one syslog message per line (the listeners' parsers take them: :func:`lines`)
=========  =====================================================================================

A request is all or nothing: :func:`decode` raises :class:`BodyError` naming the line,
column and byte offset (or the HEC event number) of the first thing wrong, and returns no
event at all then.  Every event gets ``format = "json"``, ``body`` = the object received (the
HEC envelope for HEC), ``raw`` = its bytes, ``fields`` = the map's canonical fields
(parsers/jsonmap.py) with ``extra.http_path`` = the request path, and the map's notes.
"""
from __future__ import annotations

import json
from typing import Callable

import orjson

from parsers.event import FORMAT_JSON, Event
from parsers.schema import time_pair

__all__ = ["BodyError", "decode", "lines", "FORMATS"]

FORMATS = ("json", "ndjson", "hec", "syslog")

_loads = orjson.loads
_JSONError = orjson.JSONDecodeError


class BodyError(ValueError):
    """The body (or one of its items) is not what the format says.  ``reason`` is a short
    stable code for the metrics (``json``, ``not_object``, ``hec_event_missing``...),
    ``line``/``column`` are 1-based (None when not known), ``offset`` the 0-based byte offset
    in the body, ``item`` the 1-based item number (array element, NDJSON line, HEC event)."""

    def __init__(self, message: str, *, reason: str = "json", line: int | None = None, column: int | None = None,
                 offset: int | None = None, item: int | None = None) -> None:
        where = []
        if item is not None:
            where.append(f"item {item}")
        if line is not None:
            where.append(f"line {line}" + (f", column {column}" if column is not None else ""))
        if offset is not None:
            where.append(f"byte {offset}")
        super().__init__((", ".join(where) + ": " if where else "") + message)
        self.message, self.reason = message, reason
        self.line, self.column, self.offset, self.item = line, column, offset, item

    def to_dict(self) -> dict:
        d = {"error": str(self), "reason": self.reason}
        for k in ("line", "column", "offset", "item"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        return d


def _json_error(e: Exception, data: bytes, base_offset: int = 0, line_no: int | None = None,
                item: int | None = None) -> BodyError:
    """An orjson/json error -> BodyError with line, column and byte offset in the body."""
    pos = getattr(e, "pos", None)
    msg = getattr(e, "msg", None) or str(e)
    if pos is None:
        return BodyError(f"not valid JSON: {msg}", line=line_no, item=item)
    # pos is a character index into the decoded text: back to bytes
    try:
        prefix = data.decode("utf-8")[:pos].encode("utf-8")
        boff = len(prefix)
    except UnicodeDecodeError:
        boff = pos
        prefix = data[:pos]
    if line_no is None:
        line = prefix.count(b"\n") + 1
        col = boff - (prefix.rfind(b"\n") + 1) + 1
    else:
        line, col = line_no, boff + 1
    return BodyError(f"not valid JSON: {msg}", line=line, column=col, offset=base_offset + boff, item=item)


def _require_utf8(data: bytes) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        prefix = data[:e.start]
        raise BodyError("not UTF-8", reason="utf8", line=prefix.count(b"\n") + 1,
                        column=e.start - (prefix.rfind(b"\n") + 1) + 1, offset=e.start) from None


# ------------------------------------------------------------------------------ splitting

def _split_json(data: bytes) -> list[tuple[dict, bytes, int]]:
    """-> [(object, its bytes, 1-based item)]"""
    if not data.strip():
        raise BodyError("empty body", reason="empty")
    try:
        obj = _loads(data)
    except _JSONError as e:
        _require_utf8(data)
        raise _json_error(e, data) from None
    if obj.__class__ is dict:
        return [(obj, data, 1)]
    if obj.__class__ is list:
        out = []
        for i, o in enumerate(obj, 1):
            if o.__class__ is not dict:
                raise BodyError(f"array element {i} is {_kind(o)}, not a JSON object", reason="not_object", item=i)
            out.append((o, orjson.dumps(o), i))
        return out
    raise BodyError(f"the body is {_kind(obj)}, not a JSON object or an array of objects", reason="not_object",
                    line=1, column=1, offset=0)


def _kind(o) -> str:
    return {str: "a string", int: "a number", float: "a number", bool: "a boolean", list: "an array",
            dict: "an object"}.get(type(o), "null")


def lines(data: bytes) -> list[tuple[bytes, int, int]]:
    """Non-blank lines (LF separated, a trailing CR removed) -> [(line, 1-based line number,
    byte offset)]."""
    out = []
    pos = 0
    n = len(data)
    no = 0
    while pos < n:
        no += 1
        end = data.find(b"\n", pos)
        if end < 0:
            end = n
        line = data[pos:end]
        if line.endswith(b"\r"):
            line = line[:-1]
        if line.strip():
            out.append((line, no, pos))
        pos = end + 1
    return out


def _split_ndjson(data: bytes) -> list[tuple[dict, bytes, int]]:
    ls = lines(data)
    if not ls:
        raise BodyError("empty body", reason="empty")
    out = []
    for i, (line, no, off) in enumerate(ls, 1):
        try:
            obj = _loads(line)
        except _JSONError as e:
            _require_utf8(data)
            raise _json_error(e, line, off, no, item=i) from None
        if obj.__class__ is not dict:
            raise BodyError(f"{_kind(obj)}, not a JSON object", reason="not_object", line=no, column=1, offset=off,
                            item=i)
        out.append((obj, line, i))
    return out


_decoder = json.JSONDecoder()
_WS = b" \t\r\n"


def _split_hec(data: bytes) -> list[tuple[dict, bytes, int]]:
    """HEC batches: envelopes back to back (usually one per line)."""
    if not data.strip():
        raise BodyError("No data", reason="hec_no_data")
    try:                       # the common case: one envelope per line, orjson
        return [(o, b, i) for o, b, i in _split_ndjson(data)]
    except BodyError:
        pass
    _require_utf8(data)
    text = data.decode("utf-8")
    out = []
    pos, n, i = 0, len(text), 0
    while True:
        while pos < n and text[pos] in " \t\r\n":
            pos += 1
        if pos >= n:
            break
        i += 1
        try:
            obj, end = _decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            err = _json_error(e, data, 0, None, item=i)
            err.reason = "hec_invalid"
            raise err from None
        if obj.__class__ is not dict:
            raise BodyError(f"Invalid data format ({_kind(obj)}, not an event object)", reason="hec_invalid",
                            item=i)
        out.append((obj, text[pos:end].encode("utf-8"), i))
        pos = end
    return out


# ------------------------------------------------------------------------------ events

def _event(obj: dict, raw: bytes, fields: dict, notes: list, source: str | None, received: float,
           peer: str | None) -> Event:
    ev = Event(raw, FORMAT_JSON)
    ev.body = obj
    ev.fields = fields
    ev.received = received
    ev.peer = peer
    ev.source = source
    ev.time_unix = fields.get("occurred_unix")
    if notes:
        ev.notes = notes
    return ev


def decode(data: bytes, fmt: str, mapper: Callable, *, source: str | None = None, received: float = 0.0,
           peer: str | None = None, path: str | None = None, hec_raw: bool = False,
           query: dict | None = None) -> list[Event]:
    """A request body -> events (all or nothing; raises :class:`BodyError`).  ``fmt`` is
    ``json``, ``ndjson`` or ``hec`` (``hec_raw``: the ``/raw`` endpoint, with its ``host``,
    ``source``, ``sourcetype`` and ``index`` query parameters in ``query``).  ``mapper`` is a
    :class:`parsers.jsonmap.Mapper`.  Syslog bodies are not decoded here: see :func:`lines`."""
    if fmt == "json":
        items = _split_json(data)
    elif fmt == "ndjson":
        items = _split_ndjson(data)
    elif fmt == "hec":
        return _decode_hec(data, mapper, source, received, peer, path, hec_raw, query or {})
    else:
        raise ValueError(f"decode: format {fmt!r} is not json, ndjson or hec")
    out = []
    for obj, raw, _ in items:
        fields, notes = mapper(obj, received)
        if path is not None:
            fields["extra"]["http_path"] = path
        out.append(_event(obj, raw, fields, notes, source, received, peer))
    return out


_HEC_META = ("time", "host", "source", "sourcetype", "index")


def _decode_hec(data, mapper, source, received, peer, path, raw_endpoint, query) -> list[Event]:
    if raw_endpoint:
        _require_utf8(data)
        ls = lines(data)
        if not ls:
            raise BodyError("No data", reason="hec_no_data")
        meta = {k: query[k] for k in ("host", "source", "sourcetype", "index") if query.get(k)}
        envelopes = [(dict(meta, event=line.decode("utf-8")), line, i) for i, (line, _, _) in enumerate(ls, 1)]
    else:
        envelopes = _split_hec(data)
    out = []
    for env, raw, i in envelopes:
        if "event" not in env:
            raise BodyError("Event field is required", reason="hec_event_missing", item=i)
        payload = env["event"]
        if payload is None or payload == "" or payload == {} or payload == []:
            raise BodyError("Event field cannot be blank", reason="hec_event_blank", item=i)
        fields_meta = env.get("fields")
        if fields_meta is not None and (fields_meta.__class__ is not dict
                                        or any(v.__class__ in (dict,) for v in fields_meta.values())):
            raise BodyError("Error in handling indexed fields", reason="hec_fields", item=i)
        obj = payload if payload.__class__ is dict else {"message": payload if payload.__class__ is str
                                                         else orjson.dumps(payload).decode()}
        fields, notes = mapper(obj, None)
        hec = {k: env[k] for k in _HEC_META if env.get(k) not in (None, "")}
        if fields_meta:
            hec["fields"] = fields_meta
        if fields["occurred"] is None:
            iso, unix = time_pair(env.get("time")) if env.get("time") is not None else (None, None)
            if iso is None:
                iso, unix = time_pair(received)
                notes.append("map: no event time in the event or the HEC envelope; the time received is used")
            fields["occurred"], fields["occurred_unix"] = iso, unix
        if fields["host"] is None and isinstance(env.get("host"), str):
            fields["host"] = env["host"]
        if fields["product"] is None and isinstance(env.get("sourcetype"), str):
            fields["product"] = env["sourcetype"]
        fields["extra"]["hec"] = hec
        if path is not None:
            fields["extra"]["http_path"] = path
        out.append(_event(env, raw, fields, notes, source, received, peer))
    return out

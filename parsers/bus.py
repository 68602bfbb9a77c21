"""Decoding of the relay bus envelope (formats/bus.py documents it) back into an Event.

:func:`decode` raises :class:`BusError` (``reason`` for the metric) on anything that is not a
version-1 envelope: invalid JSON, another version, a missing or mistyped member, bad base64.
"""
from __future__ import annotations

import base64
import binascii

import orjson

from .event import Event

__all__ = ["BusError", "decode"]

_SYSLOG = ("pri", "facility", "severity", "version", "timestamp", "time_unix", "hostname", "app_name",
           "procid", "msgid")


class BusError(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def decode(data: bytes) -> tuple[Event, dict]:
    """-> (the event, the envelope's other members: ``id``, ``p``, ``dedup_key``, ``routes``)."""
    try:
        d = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise BusError("bus_json", f"not JSON: {e}") from None
    if not isinstance(d, dict):
        raise BusError("bus_shape", f"a JSON {type(d).__name__}, not an object")
    if d.get("v") != 1:
        raise BusError("bus_version", f"envelope version {d.get('v')!r} (this relay reads 1)")
    sy = d.get("syslog")
    fields = d.get("fields")
    if not isinstance(sy, dict) or not isinstance(fields, dict) or not isinstance(d.get("id"), str):
        raise BusError("bus_shape", "missing id, syslog or fields")
    try:
        raw = base64.b64decode(d.get("raw") or "", validate=True)
    except (binascii.Error, TypeError, ValueError) as e:
        raise BusError("bus_shape", f"raw is not base64: {e}") from None
    ev = Event(raw, sy.get("format") or "raw")
    for k in _SYSLOG:
        setattr(ev, k, sy.get(k))
    ev.sd = sy.get("structured_data") or None
    ev.msg = sy.get("msg")
    received = d.get("received")
    ev.received = float(received) if isinstance(received, (int, float)) else None
    ev.peer = d.get("peer") if isinstance(d.get("peer"), str) else None
    ev.source = d.get("source") if isinstance(d.get("source"), str) else None
    ev.fields = fields
    enrich = d.get("enrich")
    ev.enrich = enrich if isinstance(enrich, dict) else None
    notes = d.get("notes")
    ev.notes = list(notes) if isinstance(notes, list) else None
    routes = d.get("routes")
    return ev, {"id": d["id"], "p": d.get("p"), "dedup_key": d.get("dedup_key"),
                "routes": routes if isinstance(routes, list) else []}

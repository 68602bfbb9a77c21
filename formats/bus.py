"""The relay bus envelope (the ``nats`` sink's payload): one JSON document per event.

An ingest relay publishes it to JetStream; a delivery relay's ``nats`` source decodes it
(:func:`parsers.bus.decode`) back into an :class:`~parsers.event.Event` and hands it to its own
pipeline, which enriches, routes and renders it for the delivery tier's sinks.  Version 1::

    {"v": 1,
     "id": "<event id: blake2b-128 of the raw bytes, hex>",   the JetStream Nats-Msg-Id
     "p": <partition>,                                          hash(dedup_key) mod partitions
     "dedup_key": "...",                                        the canonical dedup key (or null)
     "routes": ["..."],                                         the ingest tier's matched routes
     "source": "...", "received": 1733380000.123, "peer": "203.0.113.7:51514",
     "raw": "<base64 of the raw bytes>",
     "syslog": {format, pri, facility, severity, version, timestamp, time_unix, hostname,
                app_name, procid, msgid, structured_data, msg},
     "fields": {...canonical fields...}, "enrich": {...} | null, "notes": [...] | null}

The event id depends on the raw bytes only, so the same message received by two ingest relays
(a forwarder that retransmits after a failover, or sends to two collectors) gets the same id and
JetStream stores it once within the stream's duplicate window.  Events without raw bytes (none
today: pull sources keep the API record as ``raw``) fall back to the canonical fields.
"""
from __future__ import annotations

import base64
import hashlib

import orjson

from parsers.event import Event, sd_text, text

__all__ = ["VERSION", "event_id", "partition", "encode"]

VERSION = 1


def event_id(ev: Event) -> str:
    data = ev.raw
    if not data:
        data = orjson.dumps(ev.fields, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str)
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def partition(key: str, partitions: int) -> int:
    """A stable partition of ``key`` (blake2b, not Python's salted hash): every relay agrees."""
    if partitions <= 1:
        return 0
    h = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(h, "big") % partitions


def envelope(ev: Event, routes, partitions: int) -> dict:
    f = ev.fields
    eid = event_id(ev)
    dk = f.get("dedup_key") if f else None
    return {
        "v": VERSION,
        "id": eid,
        "p": partition(dk or eid, partitions),
        "dedup_key": dk,
        "routes": list(routes or ()),
        "source": ev.source,
        "received": ev.received,
        "peer": ev.peer,
        "raw": base64.b64encode(ev.raw or b"").decode("ascii"),
        "syslog": {
            "format": ev.format, "pri": ev.pri, "facility": ev.facility, "severity": ev.severity,
            "version": ev.version, "timestamp": _t(ev.timestamp), "time_unix": ev.time_unix,
            "hostname": _t(ev.hostname), "app_name": _t(ev.app_name), "procid": _t(ev.procid),
            "msgid": _t(ev.msgid), "structured_data": sd_text(ev.sd), "msg": text(ev.msg),
        },
        "fields": f,
        "enrich": ev.enrich,
        "notes": ev.notes,
    }


def encode(ev: Event, routes, partitions: int) -> bytes:
    return orjson.dumps(envelope(ev, routes, partitions), option=orjson.OPT_NON_STR_KEYS, default=_default)


def _t(v):
    return text(v) if v.__class__ is str else v


def _default(v):
    if isinstance(v, (set, frozenset, tuple)):
        return list(v)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)

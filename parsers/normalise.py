"""Pick the vendor normaliser for an event and fill ``event.fields`` (docs/schema.md).

Order: RhythmX SigmaIncident (APP-NAME or its SD element), CrowdStrike Falcon (JSON in
MSG), then the generic ``log`` mapping, which every other parsed message gets:

====================  ==========================================================
``kind``              ``"log"``
``vendor``            ``None``;  ``product``: the APP-NAME / TAG
``name``              MSGID, else APP-NAME, else ``"syslog"``
``description``       MSG
``severity``          from the syslog severity: 0-2 critical, 3 high, 4 medium,
                      5 low, 6-7 informational;  ``risk_score`` ``None``
``occurred``          the message TIMESTAMP, else the receive time (ISO 8601 UTC)
``host``              HOSTNAME;  ``src_ip`` the sender's IP
====================  ==========================================================

A raw (unparseable) event gets the same mapping with ``name = "unparsed"`` so it can
still be routed and delivered (nothing accepted is lost).
"""
from __future__ import annotations

import time

from . import falcon, rhythmx
from .event import FORMAT_RAW, Event

__all__ = ["normalise", "generic_fields", "iso_utc"]

_BAND = ("critical", "critical", "critical", "high", "medium", "low", "informational", "informational")


def iso_utc(epoch: float) -> str:
    secs, ms = divmod(round(epoch * 1000), 1000)
    t = time.gmtime(secs)
    return f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{ms:03d}Z"


def generic_fields(ev: Event) -> dict:
    epoch = ev.time_unix if ev.time_unix is not None else (ev.received if ev.received is not None else time.time())
    peer = ev.peer.rsplit(":", 1)[0].strip("[]") if ev.peer else None
    return {
        "kind": "log",
        "vendor": None,
        "product": ev.app_name,
        "id": None,
        "dedup_key": None,
        "event": ev.msgid,
        "name": "unparsed" if ev.format == FORMAT_RAW else (ev.msgid or ev.app_name or "syslog"),
        "description": ev.msg,
        "risk_score": None,
        "severity": _BAND[ev.severity] if ev.severity is not None else "informational",
        "status": None,
        "occurred": iso_utc(epoch),
        "occurred_unix": epoch,
        "src_ip": peer,
        "dst_ip": None,
        "host": ev.hostname,
        "user": None,
        "tactic": None,
        "tactic_id": None,
        "technique": None,
        "technique_id": None,
        "url": None,
        "extra": {},
    }


def normalise(ev: Event, rhythmx_config: rhythmx.RhythmxConfig | None = None) -> Event:
    """Fill ``ev.fields``; never raises for a bad vendor payload (it becomes a note and
    the generic mapping is used)."""
    if ev.format != FORMAT_RAW:
        try:
            if rhythmx.matches(ev, rhythmx_config):
                return rhythmx.normalise(ev, rhythmx_config)
            if falcon.matches(ev):
                return falcon.normalise(ev)
        except Exception as e:  # a normaliser bug must not lose the event
            ev.note(f"normaliser failed ({type(e).__name__}: {e}); generic mapping used")
    ev.fields = generic_fields(ev)
    return ev

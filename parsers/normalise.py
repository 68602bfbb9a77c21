"""Pick the vendor normaliser for an event and fill ``event.fields`` (docs/schema.md).

Order: RhythmX SigmaIncident (APP-NAME or its SD element), a CEF or LEEF record in MSG
(parsers/cefleef.py: Falcon SIEM Connector records become the same Falcon event as its JSON,
other devices go through the CEF/LEEF dictionaries), CrowdStrike Falcon (JSON in MSG), then
the generic ``log`` mapping of docs/schema.md section 2.4
(:func:`parsers.schema.log_fields`), which every other message gets.

A raw (unparseable) event gets the same mapping with ``name = "unparsed"`` so it can
still be routed and delivered (nothing accepted is lost).
"""
from __future__ import annotations

from . import cefleef, falcon, rhythmx
from .event import FORMAT_RAW, Event
from .native import rx_normalise as _rx_fast
from .schema import log_fields

__all__ = ["normalise", "generic_fields"]

_RX_APP = rhythmx.DEFAULT_CONFIG.app_name  # rhythmx.matches' first test, inline

def generic_fields(ev: Event) -> dict:
    """The generic mapping (docs/schema.md 2.4); a raw event is named ``unparsed``."""
    f = log_fields(ev)
    if ev.format == FORMAT_RAW:
        f["name"] = "unparsed"
    elif not f["name"]:
        f["name"] = "syslog"
    return f


def normalise(ev: Event, rhythmx_config: rhythmx.RhythmxConfig | None = None) -> Event:
    """Fill ``ev.fields``; never raises for a bad vendor payload (it becomes a note and
    the generic mapping is used)."""
    if ev.format != FORMAT_RAW:
        try:
            if rhythmx_config is None and ev.app_name == _RX_APP:
                # the native accelerator's common shape first (parsers/native.py), same result
                if _rx_fast is None or not _rx_fast(ev):
                    rhythmx.normalise(ev)
                return ev
            if rhythmx.matches(ev, rhythmx_config):
                return rhythmx.normalise(ev, rhythmx_config)
            wire = cefleef.wire_format(ev.msg)
            if wire is not None:
                return cefleef.normalise(ev, wire)
            if falcon.matches(ev):
                return falcon.normalise(ev)
        except Exception as e:  # a normaliser bug must not lose the event
            ev.note(f"normaliser failed ({type(e).__name__}: {e}); generic mapping used")
    ev.fields = generic_fields(ev)
    return ev

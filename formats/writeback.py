"""Write-back requests: what a ``closure`` / ``assignment`` event (the ``xsoar_mirror`` source)
becomes for the system the incident came from.  Pure, no I/O.

A closure event's canonical fields (relay/sources/xsoar_mirror.py)::

    kind = "closure" | "assignment", vendor/product = the origin's, origin = "rhythmx" | "qradar" |
    "falcon" | ..., id = the origin's own id (a RhythmX incident id, an offense id, a Falcon
    composite id), dedup_key = the origin's dedup key (rhythmx:INC-1), status = "closed",
    extra = {xsoar_id, close_reason, close_notes, owner, closed, modified, origin_key}

Each encoder returns one JSON object, the queued row of the write-back sink: the request it
will make, plus ``key``, the idempotency key of this one write (the origin key, the XSOAR
incident and the time it was closed: a close, a reopen and a second close are two writes; the
same close seen twice is one; for an assignment, the time XSOAR modified the incident).

Assignments (an XSOAR owner change) go back to QRadar (``assigned_to``) and Falcon
(``assign_to_name``); the XSOAR user name is mapped through the sink's ``owners`` table (XSOAR
user -> the origin's user), and a name not in it is written as it is.  RhythmX's API has no
assignment call, so its write-back takes closures only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ORIGINS", "FalconOptions", "falcon_assign", "falcon_close", "QradarOptions", "qradar_assign", "qradar_close",
           "qradar_triage", "RhythmxOptions", "rhythmx_status", "close_note", "map_owner", "write_key", "WritebackError"]

#: dedup-key prefix of an incident's origin -> (vendor, product) of the events the relay makes
#: from it (parsers/rhythmx.py, parsers/qradar.py, parsers/falcon.py); the mirror's origins
ORIGINS = {"rhythmx": ("RhythmX", "SigmaIncident"), "qradar": ("IBM", "QRadar"), "falcon": ("CrowdStrike", "Falcon")}

#: longest note written back (RhythmX notes, QRadar note_text, Falcon comments)
MAX_NOTE = 2000


class WritebackError(ValueError):
    """The event is not one this write-back can make (it goes to the sink's dead letters)."""


def _extra(fields: dict) -> dict:
    x = fields.get("extra")
    return x if isinstance(x, dict) else {}


def write_key(fields: dict, what: str) -> str:
    """``<origin key>|xsoar:<id>|<what>:<closed or modified time>``."""
    x = _extra(fields)
    when = x.get("closed") if what == "closed" else x.get("modified")
    return f"{fields.get('dedup_key') or x.get('origin_key')}|xsoar:{x.get('xsoar_id')}|{what}:{when}"


def close_note(fields: dict, prefix: str = "Closed in XSOAR") -> str:
    """``Closed in XSOAR (incident 12) by alice: False Positive. <close notes>`` (one line per part,
    at most :data:`MAX_NOTE` characters)."""
    x = _extra(fields)
    who = x.get("owner") or "an unassigned analyst"
    reason = x.get("close_reason") or "no reason given"
    text = f"{prefix} (incident {x.get('xsoar_id')}) by {who}: {reason}."
    notes = str(x.get("close_notes") or "").strip()
    if notes:
        text += f" {notes}"
    return text if len(text) <= MAX_NOTE else text[:MAX_NOTE - 3] + "..."


def map_owner(fields: dict, owners: tuple) -> str:
    """The XSOAR owner of an assignment event, as the origin's user name (``owners``: pairs of
    XSOAR user -> origin user, matched case-insensitively; a name not in it is kept)."""
    owner = str(_extra(fields).get("owner") or fields.get("user") or "").strip()
    if not owner:
        raise WritebackError(f"the assignment event names no owner ({fields.get('dedup_key')})")
    for xsoar_user, theirs in owners:
        if xsoar_user.lower() == owner.lower():
            return theirs
    return owner


def _assignment(fields: dict, origins: tuple, name: str, owners: tuple) -> dict:
    """What every assignment write carries: ``assigned_to`` (the mapped owner), ``reason`` and
    ``key``; refuses an event that is not an assignment of ``name``'s incidents."""
    if fields.get("kind") != "assignment":
        raise WritebackError(f"not an assignment event: {fields.get('kind')!r}")
    if fields.get("origin") not in origins:
        raise WritebackError(f"this assignment came from {fields.get('origin')!r}, not from {name} "
                             f"({fields.get('dedup_key')})")
    x = _extra(fields)
    return {"assigned_to": map_owner(fields, owners),
            "reason": f"assigned to {x.get('owner') or fields.get('user')} in XSOAR (incident {x.get('xsoar_id')})",
            "key": write_key(fields, "assigned")}


@dataclass(frozen=True)
class RhythmxOptions:
    #: XSOAR close reasons (case-insensitive) written back as FALSE_POSITIVE; the rest as CLOSED
    false_positive_reasons: tuple = ("false positive",)
    note_prefix: str = "Closed in XSOAR"
    origins: tuple = field(default=("rhythmx",))


def rhythmx_status(fields: dict, opts: RhythmxOptions = RhythmxOptions()) -> dict:
    """A closure event -> ``{"op": "status", "id", "status", "notes", "key"}``: the body of
    ``PATCH /api/incidents/{id}/status`` plus what the sink needs."""
    if fields.get("kind") == "assignment":
        raise WritebackError("RhythmX's API has no assignment call: route only kind == \"closure\" to the "
                             "RhythmX write-back")
    if fields.get("kind") != "closure":
        raise WritebackError(f"the RhythmX write-back takes closure events, not {fields.get('kind')!r} "
                             f"(route only kind == \"closure\" to it)")
    if fields.get("origin") not in opts.origins:
        raise WritebackError(f"this closure came from {fields.get('origin')!r}, not from RhythmX ({fields.get('dedup_key')})")
    inc_id = fields.get("id")
    if not inc_id:
        raise WritebackError("the closure event has no RhythmX incident id")
    reason = str(_extra(fields).get("close_reason") or "").strip().lower()
    status = "FALSE_POSITIVE" if reason in {r.lower() for r in opts.false_positive_reasons} else "CLOSED"
    return {"op": "status", "id": str(inc_id), "status": status, "notes": close_note(fields, opts.note_prefix),
            "key": write_key(fields, "closed")}


@dataclass(frozen=True)
class QradarOptions:
    #: XSOAR close reason (lower case) -> QRadar closing_reason_id
    closing_reasons: tuple = (("false positive", 2), ("resolved", 1), ("duplicate", 1), ("other", 1))
    #: the id for a reason not in the table
    default_closing_reason_id: int = 1
    note_prefix: str = "Closed in XSOAR"
    origins: tuple = ("qradar",)
    #: triage write-back (seed 003): off unless set; the note's first words (how a note of ours is
    #: recognised on the offense); whether mode auto sets assigned_to from the owner table
    triage_notes: bool = False
    triage_prefix: str = "Relay triage"
    triage_assign: bool = True
    #: XSOAR user -> QRadar user, for assignment events
    owners: tuple = ()


def qradar_triage(fields: dict, opts: QradarOptions = QradarOptions()) -> dict:
    """A triaged QRadar offense event (``qradar_offenses`` source, ``[triage] mode`` assist or
    auto) -> ``{"op": "triage", "id", "note", "assigned_to", "mode", "reason", "key"}``: the
    explanation as a note (``<triage_prefix>: ...``), and in mode auto ``assigned_to`` = the
    owner the owner table chose.  One triage note per offense: ``key`` is the offense's."""
    if not opts.triage_notes:
        raise WritebackError("the triage write-back is off (triage_notes = false): route only closure events "
                             "to this sink, or set triage_notes = true")
    tr = fields.get("triage")
    if not isinstance(tr, dict) or tr.get("mode") not in ("assist", "auto"):
        mode = tr.get("mode") if isinstance(tr, dict) else None
        raise WritebackError(f"triage write-back needs an event triaged in mode assist or auto (this one: {mode})")
    key = str(fields.get("dedup_key") or "")
    oid = str(fields.get("id") or "")
    if not key.startswith("qradar:") or not oid.isdigit():
        raise WritebackError(f"not a QRadar offense ({key or 'no dedup key'})")
    text = f"{opts.triage_prefix}: {tr.get('explanation') or ''}".strip()
    if len(text) > MAX_NOTE:
        text = text[:MAX_NOTE - 3] + "..."
    owner = tr.get("owner") if tr.get("mode") == "auto" and opts.triage_assign else None
    sug = tr.get("suggested") or {}
    reason = (f"triage mode {tr.get('mode')}: score {tr.get('score')}, severity {sug.get('severity')}, "
              f"owner {sug.get('owner')} ({sug.get('owner_rule')})")
    return {"op": "triage", "id": int(oid), "note": text, "assigned_to": owner or None, "mode": tr.get("mode"),
            "reason": reason, "key": f"{key}|triage"}


def qradar_close(fields: dict, opts: QradarOptions = QradarOptions()) -> dict:
    """A closure event of a QRadar offense -> ``{"op": "close", "id", "closing_reason_id", "note",
    "key"}``: ``POST /api/siem/offenses/{id}/notes?note_text=<note>`` then ``POST
    /api/siem/offenses/{id}?status=CLOSED&closing_reason_id=<id>``."""
    if fields.get("kind") != "closure":
        raise WritebackError(f"the QRadar write-back takes closure events, not {fields.get('kind')!r} "
                             f"(route only kind == \"closure\" to it)")
    if fields.get("origin") not in opts.origins:
        raise WritebackError(f"this closure came from {fields.get('origin')!r}, not from QRadar ({fields.get('dedup_key')})")
    oid = str(fields.get("id") or "")
    if not oid.isdigit():
        raise WritebackError(f"{oid!r} is not a QRadar offense id")
    reason = str(_extra(fields).get("close_reason") or "").strip().lower()
    rid = dict(opts.closing_reasons).get(reason, opts.default_closing_reason_id)
    return {"op": "close", "id": int(oid), "closing_reason_id": int(rid), "note": close_note(fields, opts.note_prefix),
            "key": write_key(fields, "closed")}


def qradar_assign(fields: dict, opts: QradarOptions = QradarOptions()) -> dict:
    """An assignment event of a QRadar offense -> ``{"op": "assign", "id", "assigned_to", "reason",
    "key"}``: ``POST /api/siem/offenses/{id}?assigned_to=<user>``."""
    common = _assignment(fields, opts.origins, "QRadar", opts.owners)
    oid = str(fields.get("id") or "")
    if not oid.isdigit():
        raise WritebackError(f"{oid!r} is not a QRadar offense id")
    return {"op": "assign", "id": int(oid), **common}


@dataclass(frozen=True)
class FalconOptions:
    note_prefix: str = "Closed in XSOAR"
    origins: tuple = ("falcon",)
    #: XSOAR user -> Falcon user name (``assign_to_name``), for assignment events
    owners: tuple = ()


def falcon_close(fields: dict, opts: FalconOptions = FalconOptions()) -> dict:
    """A closure event of a Falcon alert -> ``{"op": "close", "id", "body", "key"}``; ``body`` is
    the ``PATCH /alerts/entities/alerts/v3`` request: status ``closed`` and the note as a comment."""
    if fields.get("kind") != "closure":
        raise WritebackError(f"the Falcon write-back takes closure events, not {fields.get('kind')!r} "
                             f"(route only kind == \"closure\" to it)")
    if fields.get("origin") not in opts.origins:
        raise WritebackError(f"this closure came from {fields.get('origin')!r}, not from Falcon ({fields.get('dedup_key')})")
    cid = str(fields.get("id") or "")
    if not cid:
        raise WritebackError("the closure event has no Falcon composite id")
    body = {"composite_ids": [cid],
            "action_parameters": [{"name": "update_status", "value": "closed"},
                                  {"name": "append_comment", "value": close_note(fields, opts.note_prefix)}]}
    return {"op": "close", "id": cid, "body": body, "key": write_key(fields, "closed")}


def falcon_assign(fields: dict, opts: FalconOptions = FalconOptions()) -> dict:
    """An assignment event of a Falcon alert -> ``{"op": "assign", "id", "assigned_to", "body",
    "reason", "key"}``; ``body`` is the ``PATCH /alerts/entities/alerts/v3`` request with the
    ``assign_to_name`` action."""
    common = _assignment(fields, opts.origins, "Falcon", opts.owners)
    cid = str(fields.get("id") or "")
    if not cid:
        raise WritebackError("the assignment event has no Falcon composite id")
    body = {"composite_ids": [cid], "action_parameters": [{"name": "assign_to_name", "value": common["assigned_to"]}]}
    return {"op": "assign", "id": cid, **common, "body": body}

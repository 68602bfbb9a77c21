"""Cortex XSOAR incident bodies (apis.md section 1).  Pure, no I/O.

* :func:`incident` -> the JSON object for ``POST /incident`` (XSOAR 6 and 8):
  ``name``, ``type``, ``severity`` on XSOAR's scale, ``occurred`` (ISO 8601 with offset),
  ``details``, ``labels`` (source/destination IPs, host, user, the source's rule names as
  ``Rule``, the relay's matched routes as ``Relay Route``, ``Instance``),
  ``CustomFields`` (every value a string: ids are cast at this boundary; an offense's resolved
  context as ``sourceips``, ``destinationips``, ``rulenames`` (comma-joined) and ``topevents``
  (JSON), a Falcon alert's resolved owner as ``assignedto``), ``rawJSON`` (the
  original vendor JSON, or the canonical event, *as a JSON string*), ``createInvestigation``,
  and the dedup key in the configured custom field.
* :func:`webhook_item` -> one item for the Generic Webhook: ``name``, ``type``, ``occurred``,
  ``rawJson`` (an object, which the webhook stores as rawJSON and details).

Severity: from ``risk_score`` by thresholds (default >= 85 critical 4, >= 70 high 3,
>= 40 medium 2, else low 1; configurable); without a risk score from the canonical band
(critical 4, high 3, medium 2, low 1, informational 0.5).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import orjson

from parsers.event import Event, text

__all__ = ["XsoarOptions", "incident", "webhook_item", "severity_for", "occurred_iso", "BAND_SEVERITY"]

BAND_SEVERITY = {"critical": 4, "high": 3, "medium": 2, "low": 1, "informational": 0.5}


@dataclass(frozen=True)
class XsoarOptions:
    incident_type: str = "Unclassified"
    dedup_field: str = "relaydedupkey"
    thresholds: tuple = ((85, 4), (70, 3), (40, 2))   # (minimum risk score, XSOAR severity), descending
    low_severity: float = 1
    instance: str = "relay"
    create_investigation: bool = True
    custom_fields: dict = field(default_factory=dict)  # XSOAR field key -> canonical path ("extra.actor")


def severity_for(fields: dict | None, opts: XsoarOptions) -> float:
    if fields:
        rs = fields.get("risk_score")
        if isinstance(rs, (int, float)) and not isinstance(rs, bool):
            for minimum, sev in opts.thresholds:
                if rs >= minimum:
                    return sev
            return opts.low_severity
        band = fields.get("severity")
        if band in BAND_SEVERITY:
            return BAND_SEVERITY[band]
    return 0


def occurred_iso(ev: Event, fields: dict | None) -> str:
    epoch = None
    if fields:
        epoch = fields.get("occurred_unix")
    if epoch is None:
        epoch = ev.time_unix if ev.time_unix is not None else (ev.received or time.time())
    secs, ms = divmod(round(epoch * 1000), 1000)
    t = time.gmtime(secs)
    return (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:"
            f"{t.tm_sec:02d}.{ms:03d}+00:00")


def _s(v) -> str:
    if v is None:
        return ""
    if isinstance(v, str):
        return text(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return ",".join(_s(x) for x in v)
    if isinstance(v, dict):
        return orjson.dumps(v).decode()
    return str(v)


def _path(fields: dict, path: str):
    cur = fields
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def _raw_json(ev: Event, fields: dict | None) -> dict:
    """The original vendor JSON when there is one (RhythmX body, Falcon event), else the
    canonical event plus the syslog header."""
    if isinstance(ev.body, dict):
        return ev.body
    return {"event": fields, "syslog": ev.syslog_dict()}


#: ``extra`` lists that become one label per value (an offense's resolved context)
_LIST_LABELS = (("source_addresses", "Source IP"), ("destination_addresses", "Destination IP"),
                ("rule_names", "Rule"))


def _labels(ev: Event, f: dict, routes, opts: XsoarOptions) -> list:
    """Instance; Source IP / Destination IP (every resolved address of an offense, else the
    canonical ``src_ip`` / ``dst_ip``), Host, User, Device; Rule (the source's rule names: a
    QRadar offense's rules); Relay Route (the relay's own routes that matched)."""
    labels = [{"type": "Instance", "value": opts.instance}]
    extra = f.get("extra")
    extra = extra if isinstance(extra, dict) else {}
    seen = set()
    for key, typ in (("src_ip", "Source IP"), ("dst_ip", "Destination IP"), ("host", "Host"), ("user", "User")):
        v = f.get(key)
        if v:
            labels.append({"type": typ, "value": _s(v)})
            seen.add((typ, _s(v)))
    for key, typ in _LIST_LABELS:
        vals = extra.get(key)
        if isinstance(vals, list):
            for v in vals[:100]:
                if v not in (None, "") and (typ, _s(v)) not in seen:
                    seen.add((typ, _s(v)))
                    labels.append({"type": typ, "value": _s(v)})
    if ev.hostname:
        labels.append({"type": "Device", "value": ev.hostname})
    for r in routes or ():
        labels.append({"type": "Relay Route", "value": r})
    return labels


def incident(ev: Event, opts: XsoarOptions, routes=()) -> dict:
    """The ``POST /incident`` body for one event."""
    f = ev.fields or {}
    custom = {opts.dedup_field: _s(f.get("dedup_key") or "")}
    for key, src in (("vendorid", "id"), ("riskscore", "risk_score"), ("sourcestatus", "status"),
                     ("sourceevent", "event"), ("mitretactic", "tactic"), ("mitretechnique", "technique_id")):
        v = f.get(src)
        if v not in (None, ""):
            custom[key] = _s(v)
    extra = f.get("extra") if isinstance(f.get("extra"), dict) else {}
    for key, src in (("sourceips", "source_addresses"), ("destinationips", "destination_addresses"),
                     ("rulenames", "rule_names"), ("assignedto", "assigned_to")):
        v = extra.get(src)
        if v not in (None, "", []):
            custom[key] = _s(v)
    top = extra.get("top_events")
    if isinstance(top, list) and top:
        custom["topevents"] = orjson.dumps(top, default=_s).decode()
    for key, path in opts.custom_fields.items():
        v = _path(f, path)
        if v not in (None, ""):
            custom[key] = _s(v)
    triage = f.get("triage")
    if isinstance(triage, dict):
        for k in ("score", "severity", "owner", "explanation", "summary"):
            if triage.get(k) not in (None, ""):
                custom["relaytriage" + k] = _s(triage[k])
    severity = severity_for(f, opts)
    if isinstance(triage, dict) and triage.get("mode") == "auto" and triage.get("severity") in BAND_SEVERITY:
        severity = max(severity, BAND_SEVERITY[triage["severity"]])  # auto triage may raise, never lower
    body = {
        "name": _s(f.get("name") or ev.msgid or ev.app_name or "relay event"),
        "type": opts.incident_type,
        "severity": severity,
        "occurred": occurred_iso(ev, f),
        "details": _s(f.get("description") or ev.msg or ""),
        "labels": _labels(ev, f, routes, opts),
        "CustomFields": custom,
        "rawJSON": orjson.dumps(_raw_json(ev, f), default=_s).decode(),
        "sourceBrand": "relay",
        "sourceInstance": opts.instance,
        "createInvestigation": opts.create_investigation,
    }
    return body


def webhook_item(ev: Event, opts: XsoarOptions, routes=()) -> dict:
    """One Generic Webhook item (the webhook creates the incident from it)."""
    f = ev.fields or {}
    raw = dict(_raw_json(ev, f))
    raw.setdefault("relay", {})
    if isinstance(raw["relay"], dict):
        raw["relay"] = {**raw["relay"], "dedup_key": f.get("dedup_key"), "severity": severity_for(f, opts),
                        "routes": list(routes or ()), "canonical": f}
    return {
        "name": _s(f.get("name") or ev.msgid or "relay event"),
        "type": opts.incident_type,
        "occurred": occurred_iso(ev, f),
        "rawJson": orjson.loads(orjson.dumps(raw, default=_s)),
    }

"""CrowdStrike Falcon normaliser: JSON -> canonical fields (docs/schema.md).

Three shapes (samples in shared/vectors/falcon_samples.json):

``stream``
    SIEM connector JSON mode / Event Streams: ``{"metadata": {...}, "event": {...}}``.
    ``event.Severity`` is the 1-5 scale (``SeverityName``); ``eventCreationTime`` is
    epoch ms.  Arrives as the MSG of a syslog message or as a dict.
``detects``
    Detects API v1 summary: ``detection_id``, ``device{}``, ``behaviors[]``,
    ``max_severity`` 0-100.
``alert``
    Alerts API v2: ``composite_id``, ``severity`` 1-100 (``severity_name``), identity
    alerts without ``device`` (``source_endpoint_*``, ``source_account_*``).

Dedup key (``falcon:<id>``): ``detection_id`` (detects), ``composite_id`` (alerts),
``DetectId`` (streaming DetectionSummaryEvent), ``CompositeId`` (streaming
Epp/Idp detection summaries), ``IncidentId`` (IncidentSummaryEvent).  NEVER the
``aggregate_id``: one aggregate groups many distinct detections, so keying on it
would swallow new detections as duplicates.

Pure decoding: no I/O.
"""
from __future__ import annotations

from parsers.event import Event
from parsers.schema import (
    _event_time, canonical_status, log_fields, score_from_1_5,
    score_from_severity, severity_from_1_5, severity_from_score, time_pair, to_score,
)
from parsers.schema import parse_body as _parse_body

__all__ = ["normalise", "normalise_dict", "normalise_resources", "matches", "detect_shape",
           "stream_from_cef", "stream_from_leef", "siem_event", "VENDOR", "PRODUCT", "SHAPES", "SIEM_EVENTS"]

VENDOR = "CrowdStrike"
PRODUCT = "Falcon"
SHAPES = ("stream", "detects", "alert")

_SEV_NAMES = {"informational": "informational", "info": "informational", "low": "low",
              "medium": "medium", "high": "high", "critical": "critical"}


def detect_shape(obj) -> str | None:
    """``"stream"``, ``"detects"``, ``"alert"`` or ``None`` for a Falcon JSON object."""
    if not isinstance(obj, dict):
        return None
    if "metadata" in obj and "event" in obj:
        return "stream"
    if "composite_id" in obj:
        return "alert"
    if "detection_id" in obj or "behaviors" in obj:
        return "detects"
    if "aggregate_id" in obj or ("severity" in obj and ("product" in obj or "falcon_host_link" in obj)):
        return "alert"
    return None


def matches(event: Event) -> bool:
    """Does this syslog message carry Falcon JSON in its MSG?  (Cheap: substring
    checks on the MSG, or the shape of an already parsed body.)"""
    body = event.body
    if body is not None:
        return detect_shape(body) is not None
    msg = event.msg
    if not msg:
        return False
    if msg[0] != "{" and msg.lstrip(" \t\r\n\ufeff")[:1] != "{":
        return False
    return (('"metadata"' in msg and '"eventType"' in msg) or '"composite_id"' in msg
            or '"detection_id"' in msg)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def _s(value):
    """Non-empty str or None."""
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else str(value)


def _name_band(name):
    if not isinstance(name, str):
        return None
    return _SEV_NAMES.get(name.strip().lower())


def _sev_100(value, name, notes, what: str):
    """1-100 (or 0-100) severity + optional display name -> (severity, risk_score)."""
    score = to_score(value)
    band = _name_band(name)
    if score is None:
        if band is None:
            notes.append(f"falcon: no usable {what}; severity informational")
            return "informational", None
        notes.append(f"falcon: {what} missing; severity from name {name!r}")
        return band, score_from_severity(band)
    sev = severity_from_score(score)
    if band is not None and band != sev:
        notes.append(f"falcon: {what}={value} is {sev} on the 1-100 bands but named {name!r}; "
                     f"number wins")
    return sev, score


def _sev_stream(value, name, notes):
    """Streaming ``Severity``: 1-5 scale; a value above 5 is the 1-100 scale
    (Epp/Idp summaries).  For 1-5 values, a SeverityName that only fits the 1-100
    reading selects it."""
    n = to_score(value)
    band = _name_band(name)
    if n is None:
        return _sev_100(None, name, notes, "Severity")
    if 1 <= n <= 5:
        sev5 = severity_from_1_5(n)
        if band is None or band == sev5:
            return sev5, score_from_1_5(n)
        if band == severity_from_score(n):
            return band, n
        notes.append(f"falcon: Severity={value} is {sev5} on the 1-5 scale but named {name!r}; "
                     f"number wins")
        return sev5, score_from_1_5(n)
    return _sev_100(n, name, notes, "Severity")


def _mac(value):
    return _s(value)


def _first_time(notes, *candidates):
    for label, value in candidates:
        if value is None or value == "" or value == 0:
            continue
        iso, unix = time_pair(value)
        if unix is not None:
            return iso, unix
        notes.append(f"falcon: {label}={value!r} is not a time; ignored")
    return None, None


def _clean(extra: dict) -> dict:
    return {k: v for k, v in extra.items() if v is not None and v != ""}


def _fields(kind, fid, dedup, name, description, score, severity, status, occurred, unix,
            src_ip, dst_ip, host, user, tactic, tactic_id, technique, technique_id, url,
            event_type, extra):
    return {
        "kind": kind,
        "vendor": VENDOR,
        "product": PRODUCT,
        "id": fid,
        "dedup_key": dedup,
        "event": event_type,
        "name": name,
        "description": description,
        "risk_score": score,
        "severity": severity,
        "status": status,
        "occurred": occurred,
        "occurred_unix": unix,
        "src_ip": src_ip,
        "dst_ip": dst_ip,
        "host": host,
        "user": user,
        "tactic": tactic,
        "tactic_id": tactic_id,
        "technique": technique,
        "technique_id": technique_id,
        "url": url,
        "extra": extra,
    }


def _dedup(fid, notes, fallback=None):
    if fid is not None:
        return f"falcon:{fid}"
    if fallback is not None:
        return f"falcon:{fallback}"
    notes.append("falcon: no detection/composite id; dedup_key is None")
    return None


# ---------------------------------------------------------------------------
# shapes
# ---------------------------------------------------------------------------

_DETECTION_SUMMARIES = frozenset(("DetectionSummaryEvent", "EppDetectionSummaryEvent",
                                  "IdpDetectionSummaryEvent", "MobileDetectionSummaryEvent"))


def _stream(obj: dict, notes: list) -> dict:
    meta = obj.get("metadata") or {}
    ev = obj.get("event")
    if not isinstance(ev, dict):
        notes.append("falcon: stream event has no 'event' object")
        ev = {}
    etype = _s(meta.get("eventType"))
    occurred, unix = _first_time(notes, ("metadata.eventCreationTime", meta.get("eventCreationTime")),
                                 ("event.Timestamp", ev.get("Timestamp")))
    extra = {
        "event_type": etype,
        "customer_id": _s(meta.get("customerIDString")),
        "offset": meta.get("offset"),
        "stream_version": _s(meta.get("version")),
    }
    host = _s(ev.get("ComputerName") or ev.get("Hostname"))
    user = _s(ev.get("UserName"))
    src_ip = _s(ev.get("LocalIP"))

    if etype in _DETECTION_SUMMARIES or "DetectId" in ev or "CompositeId" in ev:
        detect_id = _s(ev.get("DetectId"))
        composite = _s(ev.get("CompositeId"))
        # legacy DetectionSummaryEvent -> DetectId; Epp/Idp summaries -> CompositeId
        if etype == "DetectionSummaryEvent":
            fid = detect_id or composite
        else:
            fid = composite or detect_id
        severity, score = _sev_stream(ev.get("Severity"), ev.get("SeverityName"), notes)
        pst_iso, _ = time_pair(ev.get("ProcessStartTime")) if ev.get("ProcessStartTime") else (None, None)
        extra.update({
            "detect_id": detect_id,
            "composite_id": composite,
            "aggregate_id": _s(ev.get("AggregateId")),
            "sensor_id": _s(ev.get("SensorId") or ev.get("AgentId")),
            "falcon_severity": ev.get("Severity"),
            "falcon_severity_scale": "1-5" if isinstance(ev.get("Severity"), int) and 1 <= ev.get("Severity") <= 5 else "1-100",
            "severity_name": _s(ev.get("SeverityName")),
            "objective": _s(ev.get("Objective")),
            "mac": _mac(ev.get("MACAddress")),
            "domain": _s(ev.get("MachineDomain") or ev.get("LogonDomain")),
            "process_id": ev.get("ProcessId"),
            "parent_process_id": ev.get("ParentProcessId"),
            "process_start_time": pst_iso,
            "filename": _s(ev.get("FileName")),
            "filepath": _s(ev.get("FilePath")),
            "cmdline": _s(ev.get("CommandLine")),
            "parent_cmdline": _s(ev.get("ParentCommandLine")),
            "sha256": _s(ev.get("SHA256String")),
            "md5": _s(ev.get("MD5String")),
            "sha1": _s(ev.get("SHA1String")),
            "ioc_type": _s(ev.get("IOCType")),
            "ioc_value": _s(ev.get("IOCValue")),
            "pattern_id": ev.get("PatternId"),
            "pattern_disposition": ev.get("PatternDispositionValue"),
            "pattern_disposition_description": _s(ev.get("PatternDispositionDescription")),
            "pattern_disposition_flags": ev.get("PatternDispositionFlags") or None,
            "mitre_attack": ev.get("MitreAttack") or None,
            "host_groups": ev.get("HostGroups") or None,
        })
        tactic_id = technique_id = None
        ma = ev.get("MitreAttack")
        if isinstance(ma, list) and ma and isinstance(ma[0], dict):
            tactic_id = _s(ma[0].get("TacticID"))
            technique_id = _s(ma[0].get("TechniqueID"))
        return _fields(
            "detection", fid, _dedup(fid, notes), _s(ev.get("DetectName") or ev.get("Name")),
            _s(ev.get("DetectDescription") or ev.get("Description")), score, severity,
            canonical_status(ev.get("Status")) or "new", occurred, unix, src_ip, None, host, user,
            _s(ev.get("Tactic")), tactic_id, _s(ev.get("Technique")), technique_id,
            _s(ev.get("FalconHostLink")), etype, _clean(extra))

    if etype == "IncidentSummaryEvent":
        fid = _s(ev.get("IncidentId"))
        fine = ev.get("FineScore")          # 1-10 (float)
        score = to_score(fine * 10) if isinstance(fine, (int, float)) else None
        if score is None:
            notes.append("falcon: IncidentSummaryEvent without FineScore; severity informational")
        start_iso, start_unix = _first_time(notes, ("event.IncidentStartTime", ev.get("IncidentStartTime")))
        extra.update({
            "fine_score": fine,
            "incident_start": start_iso,
            "incident_end": time_pair(ev.get("IncidentEndTime"))[0] if ev.get("IncidentEndTime") else None,
            "state": _s(ev.get("State")),
        })
        return _fields(
            "incident", fid, _dedup(fid, notes), f"Falcon incident {fid or '?'}", None, score,
            severity_from_score(score) if score is not None else "informational",
            canonical_status(ev.get("State")) or "open",
            occurred or start_iso, unix if unix is not None else start_unix,
            src_ip, None, host, user, None, None, None, None,
            _s(ev.get("FalconHostLink")), etype, _clean(extra))

    # any other stream event (audit, firewall, RTR ...): a log
    offset = meta.get("offset")
    key = f"stream:{extra['customer_id'] or '-'}:{etype or '-'}:{offset}" if offset is not None else None
    if key is None:
        notes.append("falcon: stream event without offset; dedup_key is None")
    extra["operation"] = _s(ev.get("OperationName"))
    extra["service"] = _s(ev.get("ServiceName"))
    return _fields(
        "log", None, f"falcon:{key}" if key else None, etype, None, 10, "informational", None,
        occurred, unix, src_ip or _s(ev.get("UserIp")), None, host,
        user or _s(ev.get("UserId")), None, None, None, None, None, etype, _clean(extra))


def _detects(obj: dict, notes: list) -> dict:
    fid = _s(obj.get("detection_id"))
    device = obj.get("device") if isinstance(obj.get("device"), dict) else {}
    behaviors = [b for b in (obj.get("behaviors") or []) if isinstance(b, dict)]
    # the behaviour that carries the detection's max severity speaks for it
    top = max(behaviors, key=lambda b: to_score(b.get("severity")) or 0) if behaviors else {}
    sev_value = obj.get("max_severity")
    if sev_value is None:
        sev_value = top.get("severity")
    severity, score = _sev_100(sev_value, obj.get("max_severity_displayname"), notes, "max_severity")
    occurred, unix = _first_time(notes, ("created_timestamp", obj.get("created_timestamp")),
                                 ("first_behavior", obj.get("first_behavior")),
                                 ("behaviors[].timestamp", top.get("timestamp")))
    first_iso, _ = time_pair(obj.get("first_behavior"))
    last_iso, _ = time_pair(obj.get("last_behavior"))
    hostinfo = obj.get("hostinfo") if isinstance(obj.get("hostinfo"), dict) else {}
    extra = {
        "detection_id": fid,
        "cid": _s(obj.get("cid")),
        "device_id": _s(device.get("device_id")),
        "external_ip": _s(device.get("external_ip")),
        "mac": _mac(device.get("mac_address")),
        "platform": _s(device.get("platform_name")),
        "os_version": _s(device.get("os_version")),
        "domain": _s(device.get("machine_domain") or hostinfo.get("domain")),
        "falcon_severity": sev_value,
        "falcon_severity_scale": "0-100",
        "severity_name": _s(obj.get("max_severity_displayname")),
        "confidence": obj.get("max_confidence"),
        "first_behavior": first_iso,
        "last_behavior": last_iso,
        "behavior_count": len(behaviors),
        "behavior_id": _s(top.get("behavior_id")),
        "objective": _s(top.get("objective")),
        "scenario": _s(top.get("scenario")),
        "filename": _s(top.get("filename")),
        "filepath": _s(top.get("filepath")),
        "cmdline": _s(top.get("cmdline")),
        "sha256": _s(top.get("sha256")),
        "md5": _s(top.get("md5")),
        "user_id": _s(top.get("user_id")),
        "ioc_type": _s(top.get("ioc_type")),
        "ioc_value": _s(top.get("ioc_value")),
        "pattern_disposition": top.get("pattern_disposition"),
        "parent_cmdline": _s((top.get("parent_details") or {}).get("parent_cmdline")),
    }
    name = _s(top.get("display_name")) or _s(top.get("scenario")) or f"Falcon detection {fid or '?'}"
    return _fields(
        "detection", fid, _dedup(fid, notes), name, _s(top.get("description")), score, severity,
        canonical_status(obj.get("status")), occurred, unix, _s(device.get("local_ip")), None,
        _s(device.get("hostname")), _s(top.get("user_name")), _s(top.get("tactic")),
        _s(top.get("tactic_id")), _s(top.get("technique")), _s(top.get("technique_id")),
        None, "detection_summary", _clean(extra))


def _alert(obj: dict, notes: list) -> dict:
    composite = _s(obj.get("composite_id"))
    fid = composite
    if fid is None:
        # never aggregate_id (it groups many alerts); the per-alert id is the fallback
        fid = _s(obj.get("id"))
        notes.append("falcon: alert without composite_id; id used" if fid else
                     "falcon: alert without composite_id or id")
    device = obj.get("device") if isinstance(obj.get("device"), dict) else None
    severity, score = _sev_100(obj.get("severity"), obj.get("severity_name"), notes, "severity")
    occurred, unix = _first_time(notes, ("created_timestamp", obj.get("created_timestamp")),
                                 ("timestamp", obj.get("timestamp")))
    if device is not None:
        host = _s(device.get("hostname"))
        src_ip = _s(device.get("local_ip"))
        hostinfo = device.get("hostinfo") if isinstance(device.get("hostinfo"), dict) else {}
        domain = _s(device.get("machine_domain") or hostinfo.get("domain"))
    else:   # identity (idp) alerts
        host = _s(obj.get("source_endpoint_host_name"))
        src_ip = _s(obj.get("source_endpoint_ip_address"))
        domain = _s(obj.get("source_account_domain"))
    dst_ip = _s(obj.get("target_endpoint_ip_address"))
    user = _s(obj.get("user_name") or obj.get("source_account_name"))
    parent = obj.get("parent_details") if isinstance(obj.get("parent_details"), dict) else {}
    updated_iso, updated_unix = time_pair(obj.get("updated_timestamp"))
    alert_iso, _ = time_pair(obj.get("timestamp"))
    d = device or {}
    extra = {
        "composite_id": composite,
        "alert_id": _s(obj.get("id")),
        "aggregate_id": _s(obj.get("aggregate_id")),
        "cid": _s(obj.get("cid")),
        "agent_id": _s(obj.get("agent_id")),
        "alert_type": _s(obj.get("type")),
        "falcon_product": _s(obj.get("product")),
        "falcon_severity": obj.get("severity"),
        "falcon_severity_scale": "1-100",
        "severity_name": _s(obj.get("severity_name")),
        "confidence": obj.get("confidence"),
        "updated": updated_iso,
        "updated_unix": updated_unix,
        "alert_time": alert_iso,
        "scenario": _s(obj.get("scenario")),
        "objective": _s(obj.get("objective")),
        "device_id": _s(d.get("device_id")),
        "external_ip": _s(d.get("external_ip")),
        "mac": _mac(d.get("mac_address")),
        "platform": _s(d.get("platform_name") or obj.get("platform")),
        "os_version": _s(d.get("os_version")),
        "domain": domain,
        "user_id": _s(obj.get("user_id")),
        "logon_domain": _s(obj.get("logon_domain")),
        "source_account_upn": _s(obj.get("source_account_upn")),
        "target_host": _s(obj.get("target_endpoint_host_name")),
        "filename": _s(obj.get("filename")),
        "filepath": _s(obj.get("filepath")),
        "cmdline": _s(obj.get("cmdline")),
        "parent_cmdline": _s(parent.get("cmdline")),
        "sha256": _s(obj.get("sha256")),
        "md5": _s(obj.get("md5")),
        "pattern_id": obj.get("pattern_id"),
        "pattern_disposition": obj.get("pattern_disposition"),
        "pattern_disposition_description": _s(obj.get("pattern_disposition_description")),
        "pattern_disposition_details": obj.get("pattern_disposition_details") or None,
        "tags": obj.get("tags") or None,
        "assigned_to_uid": _s(obj.get("assigned_to_uid")),
        "assigned_to_name": _s(obj.get("assigned_to_name")),
    }
    name = _s(obj.get("display_name")) or _s(obj.get("name")) or f"Falcon alert {fid or '?'}"
    return _fields(
        "alert", fid, _dedup(fid, notes), name, _s(obj.get("description")), score, severity,
        canonical_status(obj.get("status")), occurred, unix, src_ip, dst_ip, host, user,
        _s(obj.get("tactic")), _s(obj.get("tactic_id")), _s(obj.get("technique")),
        _s(obj.get("technique_id")), _s(obj.get("falcon_host_link")), _s(obj.get("type")),
        _clean(extra))


_BY_SHAPE = {"stream": _stream, "detects": _detects, "alert": _alert}


def normalise_dict(obj: dict, *, shape: str | None = None, notes: list | None = None) -> dict:
    """Canonical fields for one Falcon object.  ``shape`` is ``"stream"``,
    ``"detects"`` or ``"alert"`` (auto-detected when None).  Problems that do not
    prevent normalising are appended to ``notes`` when given.  Raises ValueError
    for an object of no known shape (an API envelope: use
    :func:`normalise_resources`)."""
    if not isinstance(obj, dict):
        raise ValueError("Falcon object must be a dict")
    if shape is None:
        shape = detect_shape(obj)
        if shape is None:
            if "resources" in obj:
                raise ValueError("Falcon API envelope: normalise each of 'resources'")
            raise ValueError("not a Falcon stream event, detection summary or alert")
    fn = _BY_SHAPE.get(shape)
    if fn is None:
        raise ValueError(f"unknown Falcon shape {shape!r}; one of {SHAPES}")
    fields = fn(obj, notes if notes is not None else [])
    se = siem_event(fields)
    if se is not None:
        fields["extra"]["siem_event"] = se
    return fields


def normalise_resources(envelope: dict, *, shape: str | None = None) -> list[dict]:
    """``{"meta", "resources": [...], "errors"}`` -> canonical fields per resource
    (non-dict resources are skipped)."""
    out = []
    for r in envelope.get("resources") or ():
        if isinstance(r, dict):
            out.append(normalise_dict(r, shape=shape))
    return out


def normalise(event: Event) -> Event:
    """Falcon JSON carried as the MSG of a syslog message -> ``event.body`` and
    ``event.fields``.  Never raises for content: a body that is not Falcon JSON
    gives kind ``log`` fields (generic syslog mapping) and a note."""
    body = _parse_body(event, "falcon")
    if body is None:
        event.note("falcon: no Falcon JSON body; generic log fields")
        event.fields = log_fields(event, vendor=VENDOR, product=PRODUCT)
        return event
    notes: list = []
    try:
        fields = normalise_dict(body, notes=notes)
    except ValueError as exc:
        event.note(f"falcon: {exc}; generic log fields")
        event.fields = log_fields(event, vendor=VENDOR, product=PRODUCT)
        return event
    if fields["occurred_unix"] is None:
        fields["occurred"], fields["occurred_unix"] = _event_time(event)
        notes.append("falcon: no time in the JSON; syslog TIMESTAMP used")
    for n in notes:
        event.note(n)
    event.fields = fields
    return event


# ---------------------------------------------------------------------------
# The SIEM Connector's event names (QRadar's CrowdStrike DSM maps these)
# ---------------------------------------------------------------------------

#: Alerts API ``product`` -> the streaming / SIEM Connector event that carries such a detection.
SIEM_EVENTS = {"epp": "EppDetectionSummaryEvent", "idp": "IdpDetectionSummaryEvent",
               "mobile": "MobileDetectionSummaryEvent", "xdr": "XdrDetectionSummaryEvent",
               "ngsiem": "XdrDetectionSummaryEvent", "overwatch": "EppDetectionSummaryEvent"}


def siem_event(fields: dict) -> str | None:
    """The event name the Falcon SIEM Connector would give this event (``extra.siem_event``):
    the stream's own ``eventType``; ``DetectionSummaryEvent`` for a Detects API detection; for
    an Alerts API alert, by its ``product`` (:data:`SIEM_EVENTS`; an ``ldt`` alert of no known
    product is an endpoint detection); None when there is none."""
    extra = fields.get("extra") or {}
    et = extra.get("event_type")
    if et:
        return et
    if fields.get("event") == "detection_summary":
        return "DetectionSummaryEvent"
    if fields.get("kind") == "alert":
        p = extra.get("falcon_product")
        if p in SIEM_EVENTS:
            return SIEM_EVENTS[p]
        if extra.get("alert_type") == "ldt" or p is None:
            return "EppDetectionSummaryEvent"
    return None


# ---------------------------------------------------------------------------
# SIEM Connector CEF / LEEF -> the connector's JSON shape (formats.md 4.3)
# ---------------------------------------------------------------------------

# CEF extension key -> stream event key (the current connector mapping and the older one)
_CEF_KEYS = {"cat": "Tactic", "externalId": "SensorId", "externalID": "SensorId", "dhost": "ComputerName",
             "duser": "UserName", "suser": "UserName", "msg": "DetectDescription", "fname": "FileName",
             "filePath": "FilePath", "fileHash": "MD5String", "dntdom": "MachineDomain", "sntdom": "MachineDomain",
             "src": "LocalIP", "smac": "MACAddress", "act": "Technique", "reason": "Objective",
             "CSMTRPatternDisposition": "PatternDispositionDescription"}
# custom-field label -> stream event key ("@" + key: a metadata key); int-valued keys below
_LABELS = {"CommandLine": "CommandLine", "FalconHostLink": "FalconHostLink", "ProcessId": "ProcessId",
           "ParentProcessId": "ParentProcessId", "Offset": "@offset", "ProcessStartTime": "ProcessStartTime",
           "DetectId": "DetectId", "CompositeId": "CompositeId", "AggregateId": "AggregateId",
           "DetectName": "DetectName", "SHA256": "SHA256String", "SHA256String": "SHA256String",
           "SHA1String": "SHA1String", "IncidentId": "IncidentId", "FineScore": "FineScore",
           "CustomerId": "@customerIDString", "CustomerIdString": "@customerIDString",
           "customerIDString": "@customerIDString", "ParentCommandLine": "ParentCommandLine",
           "PatternId": "PatternId", "SeverityName": "SeverityName", "Objective": "Objective",
           "IOCType": "IOCType", "IOCValue": "IOCValue"}
_INTS = frozenset(("ProcessId", "ParentProcessId", "@offset", "PatternId", "Severity", "PatternDispositionValue"))
# LEEF attribute -> stream event key (connector LEEF / QRadar names, and the relay's own output)
_LEEF_KEYS = {"cat": "Tactic", "sev": "Severity", "severityName": "SeverityName", "usrName": "UserName",
              "userName": "UserName", "identHostName": "ComputerName", "resource": "ComputerName",
              "description": "DetectDescription", "msg": "DetectDescription", "fileName": "FileName",
              "filePath": "FilePath", "commandLine": "CommandLine", "sha256": "SHA256String",
              "md5": "MD5String", "domain": "MachineDomain", "falconHostLink": "FalconHostLink",
              "url": "FalconHostLink", "src": "LocalIP", "srcMAC": "MACAddress", "detectId": "DetectId",
              "compositeId": "CompositeId", "aggregateId": "AggregateId", "sensorId": "SensorId",
              "name": "DetectName", "detectName": "DetectName", "objective": "Objective",
              "patternDisposition": "PatternDispositionDescription", "processId": "ProcessId",
              "parentProcessId": "ParentProcessId", "customerIdString": "@customerIDString",
              "cid": "@customerIDString", "offset": "@offset", "incidentId": "IncidentId",
              "technique": "@technique_id", "tacticId": "@tactic_id", "tactic": "Tactic"}


def _put(meta: dict, ev: dict, key: str, value) -> None:
    if value is None or value == "":
        return
    if key in _INTS:
        v = value.strip() if isinstance(value, str) else value
        if isinstance(v, str) and v.lstrip("-").isdigit():
            value = int(v)
    if key[0] == "@":
        meta[key[1:]] = value
    else:
        ev.setdefault(key, value)


def _ids_from_link(ev: dict) -> None:
    """The detection's id from its console link when the record has none: ``.../detections/
    detail/<aid>/<n>`` -> DetectId ``ldt:<aid>:<n>``; ``.../activity-v2/detections/<id>`` ->
    CompositeId."""
    link = ev.get("FalconHostLink")
    if not isinstance(link, str) or "DetectId" in ev or "CompositeId" in ev:
        return
    base = link.split("?", 1)[0].rstrip("/")
    i = base.find("/detections/detail/")
    if i >= 0:
        parts = base[i + 19:].split("/")
        if len(parts) == 2 and all(parts):
            ev["DetectId"] = f"ldt:{parts[0]}:{parts[1]}"
        return
    i = base.find("/activity-v2/detections/")
    if i >= 0 and base[i + 24:]:
        ev["CompositeId"] = base[i + 24:]


def _stream_obj(event_type: str, meta: dict, ev: dict) -> dict:
    tech = meta.pop("technique_id", None)
    tactic = meta.pop("tactic_id", None)
    if tech or tactic:
        ev.setdefault("MitreAttack", [{"TacticID": tactic, "TechniqueID": tech}])
    _ids_from_link(ev)
    m = {"eventType": event_type or None}
    m.update(meta)
    return {"metadata": m, "event": ev}


def stream_from_cef(rec) -> dict:
    """A SIEM Connector CEF record (parsers.cef.CefRecord) -> the connector's JSON shape
    ``{"metadata", "event"}`` with the keys the CEF carries (formats.md 4.3)."""
    x = rec.extension
    meta: dict = {}
    ev: dict = {}
    t = rec.time("rt") if x.get("rt") else None
    if t is not None:
        meta["eventCreationTime"] = int(round(t * 1000))
    for k, v in x.items():
        key = _CEF_KEYS.get(k)
        if key is not None:
            _put(meta, ev, key, v)
        elif k.endswith("Label"):
            continue
        else:
            label = x.get(k + "Label")
            if label is not None:
                key = _LABELS.get(label)
                if key is not None:
                    _put(meta, ev, key, v)
    if "outcome" in x:
        _put(meta, ev, "PatternDispositionValue", x["outcome"])
    sev = rec.severity.strip()
    if sev.isdigit():
        ev["Severity"] = int(sev)
    if rec.name:
        ev.setdefault("Name", rec.name)
    return _stream_obj(rec.event_class_id, meta, ev)


def stream_from_leef(rec) -> dict:
    """A SIEM Connector LEEF record (parsers.leef.LeefRecord) -> the connector's JSON shape."""
    a = rec.attributes
    meta: dict = {}
    ev: dict = {}
    for k, v in a.items():
        key = _LEEF_KEYS.get(k)
        if key is not None:
            _put(meta, ev, key, v)
    rs = a.get("riskScore")   # the relay's own LEEF: sev is its 1-10 band, riskScore the 1-100 score
    if rs is not None and rs.isdigit() and int(rs) > 5:
        ev["Severity"] = int(rs)
    if a.get("devTime"):
        from .leef import dev_time
        t = dev_time(a)
        if t is not None:
            meta["eventCreationTime"] = int(round(t * 1000))
    et = a.get("eventType") or rec.event_id
    return _stream_obj(et, meta, ev)

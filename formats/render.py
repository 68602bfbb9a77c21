"""Canonical event -> the exact bytes a destination receives.  Pure, no I/O.

One :class:`Renderer` per sink, built once from :class:`RenderOptions`; ``render(event)``
returns the syslog line (no framing) for ``leef``, ``leef1``, ``cef``, ``rfc5424`` and
``json``.  The mapping from canonical fields (docs/schema.md) to LEEF and CEF keys is
documented in docs/formats.md and summarised here:

* **Syslog header** (LEEF/CEF): RFC 5424, ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID``.
  HOSTNAME is the *original device* (QRadar routes by it): the event's own HOSTNAME, else
  the canonical ``host``, else the sender's IP; a sink may fix it (``hostname = "name"``).
  PRI keeps the event's facility (local1 when unknown) with the syslog severity of the
  event's band (critical 2, high 3, medium 4, low 5, informational 6).
* **Header identity**: CrowdStrike events use ``CrowdStrike|FalconHost|1.0`` so QRadar's
  Falcon DSM claims them; every other event uses the sink's vendor/product/version for the
  Universal LEEF/CEF DSM.  EventID / Device Event Class ID is the vendor event (``event``:
  ``created``, ``DetectionSummaryEvent``...), falling back to ``kind``.
* **Severity**: LEEF ``sev`` and CEF severity from the band: informational 1, low 3,
  medium 5, high 7, critical 9 (formats.md 4.2).
* **rfc5424** is passthrough: the raw bytes exactly as received (RFC 5424 section 8: a relay
  must not alter what it forwards).
* **json**: one compact object ``{"event": canonical fields, "syslog": header fields}``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import orjson

from parsers.event import Event, text
from parsers.schema import SEVERITY_TO_CEF, SEVERITY_TO_LEEF, SEVERITY_TO_SYSLOG, severity_from_syslog

from . import cef as _cef
from . import leef as _leef
from .syslog import rfc5424_header, rfc5424_timestamp, utc_second

__all__ = ["RenderOptions", "Renderer", "FORMATS", "SEV_BAND", "sev_of"]

FORMATS = ("leef", "leef1", "cef", "rfc5424", "json")

# band -> (LEEF sev / CEF severity, syslog severity): docs/schema.md 2.5
SEV_BAND = {band: (SEVERITY_TO_LEEF[band], SEVERITY_TO_SYSLOG[band]) for band in SEVERITY_TO_LEEF}
assert SEVERITY_TO_LEEF == SEVERITY_TO_CEF  # one column in the renderer


@dataclass(frozen=True)
class RenderOptions:
    format: str = "leef"
    leef_vendor: str = "Relay"
    leef_product: str = "SOC Relay"
    leef_version: str = "1.0"
    leef_delimiter: str = "^"
    cef_vendor: str = "Relay"
    cef_product: str = "SOC Relay"
    cef_version: str = "1.0"
    hostname: str = "original"       # "original" or a fixed HOSTNAME for the syslog header
    app_name: str = "relay"          # APP-NAME when the event has none


def sev_of(fields: dict | None, event: Event) -> str:
    """The event's severity band (canonical ``severity``, else from the syslog severity)."""
    if fields:
        s = fields.get("severity")
        if s in SEV_BAND:
            return s
    if event.severity is not None:
        return severity_from_syslog(event.severity)
    return "informational"


def _str(v) -> str | None:
    if v is None:
        return None
    if type(v) is str:
        return v if v.isascii() else text(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v if x is not None and not isinstance(x, (dict, list)))
    if isinstance(v, dict):
        return orjson.dumps(v).decode()
    return str(v)


def _is_falcon(f: dict | None) -> bool:
    return bool(f) and f.get("vendor") == "CrowdStrike"


# canonical field -> LEEF key (common); vendor extras below
_LEEF_COMMON = (("src_ip", "src"), ("dst_ip", "dst"), ("user", "usrName"), ("host", "identHostName"),
                ("url", "url"), ("technique_id", "technique"), ("tactic_id", "tacticId"), ("status", "status"),
                ("risk_score", "riskScore"), ("id", "externalId"), ("dedup_key", "dedupKey"), ("name", "name"),
                ("description", "description"))
_LEEF_RHYTHMX = (("actor", "actor"), ("entity", "entity"), ("alarm_count", "alarmCount"),
                 ("sigma_alert_count", "sigmaAlertCount"), ("threat_case_count", "threatCaseCount"),
                 ("related_case_ids", "relatedCaseIds"), ("mitre_tactics", "mitreTactics"),
                 ("mitre_techniques", "mitreTechniques"), ("assigned_analyst", "assignedAnalyst"))
_LEEF_FALCON = (("composite_id", "compositeId"), ("detect_id", "detectId"), ("aggregate_id", "aggregateId"),
                ("mac", "srcMAC"), ("sha256", "sha256"), ("md5", "md5"), ("filename", "fileName"),
                ("filepath", "filePath"), ("cmdline", "commandLine"), ("domain", "domain"),
                ("severity_name", "severityName"), ("objective", "objective"), ("scenario", "scenario"),
                ("pattern_disposition_description", "patternDisposition"), ("sensor_id", "sensorId"),
                ("device_id", "deviceId"), ("confidence", "confidence"))

_CEF_COMMON = (("src_ip", "src"), ("dst_ip", "dst"), ("user", "suser"), ("host", "dhost"), ("url", "request"),
               ("description", "msg"), ("id", "externalId"), ("status", "outcome"))
_CEF_FALCON = (("mac", "smac"), ("filename", "fname"), ("filepath", "filePath"), ("md5", "fileHash"),
               ("domain", "dntdom"), ("technique", "act"), ("objective", "reason"))


class Renderer:
    """Renders events for one sink.  ``render(event) -> bytes`` (one line, no framing);
    ``sanitised`` counts characters the LEEF sanitising rule changed."""

    def __init__(self, options: RenderOptions) -> None:
        if options.format not in FORMATS:
            raise ValueError(f"unknown format {options.format!r} (one of {', '.join(FORMATS)})")
        self.o = options
        self.sanitised = 0
        self._hcache: dict = {}
        self.render = {
            "leef": self._leef, "leef1": self._leef, "cef": self._cef,
            "rfc5424": self._passthrough, "json": self._json,
        }[options.format]
        self._leef_version = "1.0" if options.format == "leef1" else "2.0"
        self._leef_ident = (options.leef_vendor, options.leef_product, options.leef_version)
        self._leef_delim = options.leef_delimiter

    # ---------------------------------------------------------------- header
    def _header(self, ev: Event, f: dict | None, band: str, epoch: float | None) -> str:
        pre, post = self._header_parts(ev, f, band)
        return pre + rfc5424_timestamp(epoch) + post

    def _header_parts(self, ev: Event, f: dict | None, band: str) -> tuple[str, str]:
        """``("<PRI>1 ", " HOST APP - MSGID -")``: the header around its TIMESTAMP."""
        o = self.o
        host = o.hostname
        if host == "original":
            host = ev.hostname or (f.get("host") if f else None) or _peer_ip(ev.peer)
        facility = ev.facility if ev.facility is not None else 17
        app = ev.app_name or (f.get("product") if f else None) or o.app_name
        msgid = (f.get("event") if f else None) or ev.msgid
        if type(msgid) is not str:
            msgid = None
        key = (facility, band, host, app, msgid)
        parts = self._hcache.get(key)
        if parts is None:  # "<PRI>1 " and " HOST APP - MSGID -", built once per device/app/event
            head = rfc5424_header(facility * 8 + SEV_BAND[band][1], None, host, app, None, msgid)
            pre, _, post = head.partition(" - ")  # split around the NILVALUE timestamp
            parts = (pre + " ", " " + post)
            if len(self._hcache) >= 4096:
                self._hcache.clear()
            self._hcache[key] = parts
        return parts

    # ---------------------------------------------------------------- LEEF
    def _leef(self, ev: Event) -> bytes:
        f = ev.fields
        band = sev_of(f, ev)
        epoch = _epoch(ev, f)
        if epoch is not None:  # one second/millisecond split for devTime and the header
            secs, ms = divmod(round(epoch * 1000), 1000)
            stamp = f"{utc_second(secs)}.{ms:03d}"
            attrs = self._leef_attrs(ev, f, band, stamp + "+0000")
            stamp += "Z"
        else:
            attrs = self._leef_attrs(ev, f, band, None)
            stamp = "-"
        if f and f.get("vendor") == "CrowdStrike":
            vendor, product, version = "CrowdStrike", "FalconHost", "1.0"
        else:
            vendor, product, version = self._leef_ident
        event_id = _event_id(ev, f)
        line, changes = _leef.encode(vendor, product, version, event_id, attrs,
                                     version=self._leef_version, delimiter=self._leef_delim)
        if changes:
            self.sanitised += changes
            ev.note(f"LEEF: {changes} character(s) sanitised (delimiter/CR/LF replaced by space)")
        pre, post = self._header_parts(ev, f, band)
        return f"{pre}{stamp}{post} {line}".encode("utf-8", "replace")

    def leef_attributes(self, ev: Event, f: dict | None, band: str, epoch: float | None = None) -> list:
        if epoch is None:
            epoch = _epoch(ev, f)
        return self._leef_attrs(ev, f, band, None if epoch is None else _leef.dev_time(epoch)[0])

    def _leef_attrs(self, ev: Event, f: dict | None, band: str, dev_time: str | None) -> list:
        """The LEEF attribute pairs; ``dev_time`` is the devTime value (None: none)."""
        if f:
            falcon = f.get("vendor") == "CrowdStrike"
            cat = f.get("tactic") if falcon else f.get("kind")
            if cat.__class__ is not str or not cat.isascii():
                cat = _str(cat)
            attrs = [("cat", cat or f.get("kind")), ("sev", SEV_BAND[band][0])]
        else:
            falcon = False
            attrs = [("cat", "log"), ("sev", SEV_BAND[band][0])]
        if dev_time is not None:
            attrs.append(("devTime", dev_time))
            attrs.append(("devTimeFormat", _leef.DEV_TIME_FORMAT))
        if f:
            append = attrs.append
            get = f.get
            for src, key in _LEEF_COMMON:
                v = get(src)
                if v is not None:
                    if v.__class__ is str:
                        if v:
                            append((key, v if v.isascii() else text(v)))
                    elif v.__class__ is int:
                        append((key, str(v)))
                    elif v != "":
                        append((key, _str(v)))
            extra = get("extra")
            if extra:
                get = extra.get
                for src, key in (_LEEF_FALCON if falcon else _LEEF_RHYTHMX):
                    v = get(src)
                    if v is not None:
                        if v.__class__ is str:
                            if v:
                                append((key, v if v.isascii() else text(v)))
                        elif v.__class__ is int:
                            append((key, str(v)))
                        elif v != "" and v != []:
                            append((key, _str(v)))
            triage = f.get("triage")
            if isinstance(triage, dict):
                for k in ("score", "severity", "owner", "mode"):
                    if triage.get(k) is not None:
                        attrs.append(("triage" + k.capitalize(), _str(triage[k])))
        else:
            attrs.append(("msg", _str(ev.msg) or ""))
        return attrs

    # ---------------------------------------------------------------- CEF
    def _cef(self, ev: Event) -> bytes:
        f = ev.fields
        band = sev_of(f, ev)
        epoch = _epoch(ev, f)
        ext = []
        if epoch is not None:
            ext.append(("rt", str(int(epoch * 1000))))
        customs_s = []
        customs_n = []
        if f:
            ext.append(("cat", _str((f.get("tactic") if _is_falcon(f) else None) or f.get("kind"))))
            for src, key in _CEF_COMMON:
                v = f.get(src)
                if v is not None and v != "":
                    ext.append((key, _str(v)))
            extra = f.get("extra") or {}
            if _is_falcon(f):
                for src, key in _CEF_FALCON:
                    v = extra.get(src)
                    if v is not None and v != "":
                        ext.append((key, _str(v)))
                customs_s = [("CommandLine", extra.get("cmdline")), ("FalconHostLink", f.get("url")),
                             ("CompositeId", extra.get("composite_id")), ("DedupKey", f.get("dedup_key")),
                             ("Technique", f.get("technique_id")), ("SHA256", extra.get("sha256"))]
                customs_n = [("ProcessId", extra.get("process_id")), ("ParentProcessId", extra.get("parent_process_id")),
                             ("RiskScore", f.get("risk_score"))]
            else:
                customs_s = [("Actor", extra.get("actor")), ("Entity", extra.get("entity")),
                             ("DedupKey", f.get("dedup_key")), ("MitreTactics", _str(extra.get("mitre_tactics"))),
                             ("RelatedCaseIds", _str(extra.get("related_case_ids"))), ("Technique", f.get("technique_id"))]
                customs_n = [("RiskScore", f.get("risk_score")), ("AlarmCount", extra.get("alarm_count")),
                             ("ThreatCaseCount", extra.get("threat_case_count"))]
            ext.extend(_cef.custom_strings([(k, _str(v)) for k, v in customs_s if v not in (None, "")]))
            ext.extend(_cef.custom_numbers([(k, v) for k, v in customs_n if isinstance(v, (int, float))
                                            and not isinstance(v, bool)]))
            triage = f.get("triage")
            if isinstance(triage, dict):  # cs1-6 / cn1-3 are taken: the flex fields carry triage
                if isinstance(triage.get("score"), int):
                    ext += [("flexNumber1", str(triage["score"])), ("flexNumber1Label", "TriageScore")]
                if triage.get("severity"):
                    ext += [("flexString1", _str(triage["severity"])), ("flexString1Label", "TriageSeverity")]
                if triage.get("owner"):
                    ext += [("flexString2", _str(triage["owner"])), ("flexString2Label", "TriageOwner")]
        else:
            ext.append(("msg", _str(ev.msg) or ""))
        if _is_falcon(f):
            vendor, product, version = "CrowdStrike", "FalconHost", "1.0"
        else:
            vendor, product, version = self.o.cef_vendor, self.o.cef_product, self.o.cef_version
        name = (f.get("name") if f else None) or ev.app_name or "syslog"
        line = _cef.encode(vendor, product, version, _event_id(ev, f), _str(name), SEV_BAND[band][0], ext)
        return f"{self._header(ev, f, band, epoch)} {line}".encode("utf-8", "replace")

    # ---------------------------------------------------------------- others
    def _passthrough(self, ev: Event) -> bytes:
        return ev.raw

    def _json(self, ev: Event) -> bytes:
        return orjson.dumps({"event": ev.fields, "syslog": ev.syslog_dict()},
                            option=orjson.OPT_NON_STR_KEYS, default=_str)


def _event_id(ev: Event, f: dict | None) -> str:
    if f:
        e = f.get("event") or f.get("kind")
        if e:
            return _str(e)
    return ev.msgid or ev.app_name or "syslog"


def _epoch(ev: Event, f: dict | None) -> float | None:
    if f:
        v = f.get("occurred_unix")
        if v is not None:
            return v
    if ev.time_unix is not None:
        return ev.time_unix
    return ev.received if ev.received is not None else time.time()


def _peer_ip(peer: str | None) -> str | None:
    if not peer:
        return None
    host = peer.rsplit(":", 1)[0]
    return host.strip("[]") or None

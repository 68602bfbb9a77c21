"""What the LEEF and CEF encoders know about vendors, as data.  Pure data, no I/O.

formats/render.py writes every event with the *common* key tables below, plus the tables of
the event's **vendor profile**: one lookup per event by the canonical ``vendor`` field
(docs/schema.md), ``PROFILES.get(fields["vendor"], DEFAULT)``.  Adding a vendor is adding a
:class:`VendorProfile` to :data:`PROFILES`; the renderer has no per-vendor branches.  The
tables are documented for operators in docs/schema.md section 3.4.

A profile holds:

* ``header``: the ``(vendor, product, version)`` written in the LEEF and CEF headers, or
  ``None`` for the sink's own (``leef_vendor``/``cef_vendor``... options, for the Universal
  LEEF/CEF DSMs).  CrowdStrike events use ``CrowdStrike|FalconHost|1.0`` so that QRadar's
  Falcon DSM claims them.
* ``category``: the canonical field that LEEF and CEF ``cat`` come from; ``kind`` when that
  field is empty.
* ``leef_extra``: ``(extra field, LEEF key)`` pairs written after the common ones, in order.
* ``cef_extra``: ``(extra field, CEF key)`` pairs written after the common ones, in order.
* ``cef_strings`` / ``cef_numbers``: the labelled custom fields ``cs1..cs6`` / ``cn1..cn3``,
  as :class:`Slot` (label, field): filled in order by the slots that hold a value (an empty
  one uses no slot).  A ``cn`` value must be a number (a bool is not).
* ``event_id``: the ``extra`` field that holds the event name the vendor's QRadar DSM maps
  (written as LEEF EventID / CEF Device Event Class ID); when the event has none, the
  canonical ``event``, then ``kind``.  None: always ``event``.
* ``cef_escape_fields``: ``extra`` fields whose values usually hold backslashes (Windows
  paths and command lines): when one of them does, the CEF line goes straight to the
  escaping encoder instead of first trying the plain join.  Only a speed hint: the bytes
  are the same either way.  Empty: no hint.

:data:`DEFAULT` (the RhythmX/generic tables) applies to every event whose vendor has no
profile: RhythmX, IBM (QRadar offenses), ``log`` events and events without fields.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from .cef import CUSTOM_SLOTS

__all__ = ["Slot", "VendorProfile", "PROFILES", "DEFAULT", "FALCON", "LEEF_COMMON", "CEF_COMMON",
           "profile_for"]


# canonical field -> key, for every event (before the profile's extras)
LEEF_COMMON = (("src_ip", "src"), ("dst_ip", "dst"), ("user", "usrName"), ("host", "identHostName"),
               ("url", "url"), ("technique_id", "technique"), ("tactic_id", "tacticId"), ("status", "status"),
               ("risk_score", "riskScore"), ("id", "externalId"), ("dedup_key", "dedupKey"), ("name", "name"),
               ("description", "description"))
CEF_COMMON = (("src_ip", "src"), ("dst_ip", "dst"), ("user", "suser"), ("host", "dhost"), ("url", "request"),
              ("description", "msg"), ("id", "externalId"), ("status", "outcome"))


class Slot(NamedTuple):
    """One labelled CEF custom field (``csN``/``cnN`` with ``csNLabel``/``cnNLabel``)."""
    label: str            # the csNLabel / cnNLabel text
    field: str            # the field name, in the canonical fields or in ``extra``
    extra: bool = False   # True: ``fields["extra"][field]``; False: ``fields[field]``
    joined: bool = False  # a list field: joined to text first, so an empty list is no value


def _slot(label: str, path: str, joined: bool = False) -> Slot:
    """``Slot`` from a path: ``"url"`` (canonical field) or ``"extra.cmdline"``."""
    if path.startswith("extra."):
        return Slot(label, path[6:], True, joined)
    return Slot(label, path, False, joined)


@dataclass(frozen=True, eq=False)   # eq=False: hashed by identity (a fast cache key)
class VendorProfile:
    name: str
    header: tuple[str, str, str] | None
    category: str
    leef_extra: tuple[tuple[str, str], ...]
    cef_extra: tuple[tuple[str, str], ...]
    cef_strings: tuple[Slot, ...]
    cef_numbers: tuple[Slot, ...]
    cef_escape_fields: tuple[str, ...] = ()
    event_id: str | None = None     # the ``extra`` field the LEEF EventID / CEF class id comes from first

    def __post_init__(self) -> None:
        if len(self.cef_strings) > CUSTOM_SLOTS["cs"] or len(self.cef_numbers) > CUSTOM_SLOTS["cn"]:
            raise ValueError(f"vendor profile {self.name}: more CEF custom slots than cs1-"
                             f"{CUSTOM_SLOTS['cs']} / cn1-{CUSTOM_SLOTS['cn']}")
        if self.header is not None and len(self.header) != 3:
            raise ValueError(f"vendor profile {self.name}: header is (vendor, product, version)")
        for slot in self.cef_strings + self.cef_numbers:
            if type(slot) is not Slot or type(slot.label) is not str or type(slot.field) is not str:
                raise ValueError(f"vendor profile {self.name}: CEF custom slots are Slot(label: str, field: str)")
        if any(slot.joined for slot in self.cef_numbers):
            raise ValueError(f"vendor profile {self.name}: a cn slot holds a number, it cannot be joined")


#: RhythmX SigmaIncident and everything without a profile of its own.
DEFAULT = VendorProfile(
    name="default",
    header=None,
    category="kind",
    leef_extra=(("actor", "actor"), ("entity", "entity"), ("alarm_count", "alarmCount"),
                ("sigma_alert_count", "sigmaAlertCount"), ("threat_case_count", "threatCaseCount"),
                ("related_case_ids", "relatedCaseIds"), ("mitre_tactics", "mitreTactics"),
                ("mitre_techniques", "mitreTechniques"), ("assigned_analyst", "assignedAnalyst")),
    cef_extra=(),
    cef_strings=(_slot("Actor", "extra.actor"), _slot("Entity", "extra.entity"), _slot("DedupKey", "dedup_key"),
                 _slot("MitreTactics", "extra.mitre_tactics", joined=True),
                 _slot("RelatedCaseIds", "extra.related_case_ids", joined=True),
                 _slot("Technique", "technique_id")),
    cef_numbers=(_slot("RiskScore", "risk_score"), _slot("AlarmCount", "extra.alarm_count"),
                 _slot("ThreatCaseCount", "extra.threat_case_count")),
)

#: CrowdStrike Falcon (stream, Detects and Alerts API events alike).
FALCON = VendorProfile(
    name="CrowdStrike",
    header=("CrowdStrike", "FalconHost", "1.0"),
    category="tactic",
    leef_extra=(("composite_id", "compositeId"), ("detect_id", "detectId"), ("aggregate_id", "aggregateId"),
                ("mac", "srcMAC"), ("sha256", "sha256"), ("md5", "md5"), ("filename", "fileName"),
                ("filepath", "filePath"), ("cmdline", "commandLine"), ("domain", "domain"),
                ("severity_name", "severityName"), ("objective", "objective"), ("scenario", "scenario"),
                ("pattern_disposition_description", "patternDisposition"), ("sensor_id", "sensorId"),
                ("device_id", "deviceId"), ("confidence", "confidence"), ("assigned_to", "assignedTo")),
    cef_extra=(("mac", "smac"), ("filename", "fname"), ("filepath", "filePath"), ("md5", "fileHash"),
               ("domain", "dntdom"), ("technique", "act"), ("objective", "reason")),
    cef_strings=(_slot("CommandLine", "extra.cmdline"), _slot("FalconHostLink", "url"),
                 _slot("CompositeId", "extra.composite_id"), _slot("DedupKey", "dedup_key"),
                 _slot("Technique", "technique_id"), _slot("SHA256", "extra.sha256")),
    cef_numbers=(_slot("ProcessId", "extra.process_id"), _slot("ParentProcessId", "extra.parent_process_id"),
                 _slot("RiskScore", "risk_score")),
    cef_escape_fields=("filepath", "cmdline"),
    event_id="siem_event",
)

#: canonical ``vendor`` value -> profile
PROFILES: dict[str, VendorProfile] = {"CrowdStrike": FALCON}


def profile_for(fields: dict | None) -> VendorProfile:
    """The profile for an event's canonical fields: ``DEFAULT`` when there are none, the
    vendor has no profile, or the ``vendor`` value is not a usable key."""
    if fields:
        try:
            return PROFILES.get(fields.get("vendor"), DEFAULT)
        except TypeError:   # an unhashable vendor value
            pass
    return DEFAULT

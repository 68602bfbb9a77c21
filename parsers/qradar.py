"""QRadar offense (``GET /api/siem/offenses`` object) -> canonical fields
(docs/schema.md).  Used by the QRadar pull source.  Pure decoding: no I/O.

* ``magnitude`` (1-10) -> ``risk_score`` = magnitude x 10, ``severity`` from the
  common 0-100 bands (1 informational, 2-3 low, 4-5 medium, 6-7 high, 8-10 critical).
* ``id`` is an int in QRadar; it is ALWAYS a string here (``id`` and
  ``extra.qradar_offense_id``) because downstream custom fields are strings and a
  mixed int/str cursor sorts wrongly.
* ``start_time`` / ``last_updated_time`` / ``close_time`` are ms epoch -> ISO UTC.
* Addresses: ``source_addresses`` / ``destination_addresses`` (lists of str or of the
  ``/siem/source_addresses`` / ``/siem/local_destination_addresses`` objects) when the
  caller resolved them; else ``offense_source`` by ``offense_type``.
* Rule names: ``rule_names`` (resolved by the caller) or ``rules[].name`` if present.
"""
from __future__ import annotations

from parsers.schema import canonical_status, is_ip, severity_from_score, time_pair, to_score

__all__ = ["normalise_offense", "magnitude_to_score", "OFFENSE_TYPES"]

#: offense_type id -> what offense_source holds (QRadar's stock offense types)
OFFENSE_TYPES = {
    0: "source_ip", 1: "destination_ip", 2: "event_name", 3: "username", 4: "source_mac",
    5: "destination_mac", 6: "log_source", 7: "hostname", 8: "source_port",
    9: "destination_port", 10: "source_ipv6", 11: "destination_ipv6", 12: "source_asn",
    13: "destination_asn", 14: "rule", 15: "app_id", 18: "scheduled_search",
}


def magnitude_to_score(magnitude) -> int | None:
    """QRadar magnitude 1-10 -> risk_score 0-100 (x10, clamped); None if absent."""
    m = to_score(magnitude)
    if m is None:
        return None
    return to_score(m * 10)


def _addresses(items, *keys) -> list[str]:
    out = []
    for it in items or ():
        if isinstance(it, dict):
            for k in keys:
                v = it.get(k)
                if v:
                    out.append(str(v))
                    break
        elif it:
            out.append(str(it))
    return out


def normalise_offense(offense: dict, *, console_url: str | None = None) -> dict:
    """Canonical fields for one offense.  ``console_url`` (e.g.
    ``https://qradar.example``) adds a link to the offense summary page."""
    oid = offense.get("id")
    oid = None if oid is None else str(oid)
    notes = []
    score = magnitude_to_score(offense.get("magnitude"))
    if score is None:
        score = magnitude_to_score(offense.get("severity"))
        if score is not None:
            notes.append("qradar: no magnitude; risk_score from offense severity")
    if score is None:
        notes.append("qradar: no magnitude or severity; severity informational")
        severity = "informational"
    else:
        severity = severity_from_score(score)
    occurred, unix = time_pair(offense.get("start_time"))
    updated, updated_unix = time_pair(offense.get("last_updated_time"))
    closed, _ = time_pair(offense.get("close_time"))

    src = _addresses(offense.get("source_addresses"), "source_ip")
    dst = _addresses(offense.get("destination_addresses") or offense.get("local_destination_addresses"),
                     "local_destination_ip", "destination_ip")
    source = offense.get("offense_source")
    source = None if source in (None, "") else str(source)
    otype = offense.get("offense_type")
    role = OFFENSE_TYPES.get(otype)
    host = user = None
    if source is not None:
        if role in ("source_ip", "source_ipv6") or (role is None and is_ip(source)):
            if source not in src:
                src.insert(0, source)
        elif role in ("destination_ip", "destination_ipv6"):
            if source not in dst:
                dst.insert(0, source)
        elif role == "username":
            user = source
        elif role == "hostname":
            host = source

    rule_names = offense.get("rule_names")
    if rule_names is None:
        rule_names = [str(r["name"]) for r in offense.get("rules") or () if isinstance(r, dict) and r.get("name")]
    rule_ids = [r.get("id") for r in offense.get("rules") or () if isinstance(r, dict) and r.get("id") is not None]

    desc = offense.get("description")
    desc = desc.strip() if isinstance(desc, str) else None
    name = desc.split("\n", 1)[0].strip() if desc else None
    if not name:
        name = f"QRadar offense {oid or '?'}"
    url = None
    if console_url and oid is not None:
        url = (f"{console_url.rstrip('/')}/console/qradar/jsp/QRadar.jsp"
               f"?appName=Sem&pageId=OffenseSummary&summaryId={oid}")

    extra = {
        "qradar_offense_id": oid,
        "magnitude": offense.get("magnitude"),
        "qradar_severity": offense.get("severity"),
        "credibility": offense.get("credibility"),
        "relevance": offense.get("relevance"),
        "offense_type": otype,
        "offense_type_name": role,
        "offense_source": source,
        "categories": list(offense.get("categories") or ()),
        "rule_names": list(rule_names),
        "rule_ids": rule_ids,
        "source_addresses": src,
        "destination_addresses": dst,
        "event_count": offense.get("event_count"),
        "flow_count": offense.get("flow_count"),
        "assigned_to": offense.get("assigned_to"),
        "domain_id": offense.get("domain_id"),
        "source_network": offense.get("source_network"),
        "destination_networks": offense.get("destination_networks"),
        "updated": updated,
        "updated_unix": updated_unix,
        "close_time": closed,
        "closing_reason_id": offense.get("closing_reason_id"),
        "follow_up": offense.get("follow_up"),
        "protected": offense.get("protected"),
        "notes": notes or None,
    }
    return {
        "kind": "incident",
        "vendor": "IBM",
        "product": "QRadar",
        "id": oid,
        "dedup_key": f"qradar:{oid}" if oid is not None else None,
        "event": "offense",
        "name": name,
        "description": desc,
        "risk_score": score,
        "severity": severity,
        "status": canonical_status(offense.get("status")),
        "occurred": occurred,
        "occurred_unix": unix,
        "src_ip": src[0] if src else None,
        "dst_ip": dst[0] if dst else None,
        "host": host,
        "user": user,
        "tactic": None,
        "tactic_id": None,
        "technique": None,
        "technique_id": None,
        "url": url,
        "extra": {k: v for k, v in extra.items() if v is not None},
    }

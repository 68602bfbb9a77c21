"""The triage score, preliminary severity, suggested owner and escalation (docs/enrichment.md).

    score = clamp(0, 100, round(
                risk_weight * risk                       # the event's own risk_score (or its band's midpoint)
              + criticality_points[criticality - 1]      # the most critical asset involved (1-5)
              + crown_jewel_points   if crown jewel
              + cvss_points[first threshold <= max_cvss] # open vulnerabilities on the asset
              + ti_points * confidence / 100             # best threat-intel match
            ))
    severity = first of thresholds (critical 80, high 60, medium 40, low 20) <= score, else informational

Every term is a *part* ``{"name", "points", "why"}``; the explanation lists them in order.
"""
from __future__ import annotations

from .config import SEVERITIES, TriageConfig

__all__ = ["Triage", "RANK"]

RANK = {s: i for i, s in enumerate(SEVERITIES)}
_BAND_SCORE = {"informational": 10, "low": 30, "medium": 50, "high": 70, "critical": 90}


def _num(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


class Triage:
    def __init__(self, cfg: TriageConfig, kinds: set) -> None:
        self.cfg = cfg
        self.kinds = kinds       # which lookup kinds are configured (absent context is said, not guessed)

    def severity_for(self, score: float) -> str:
        for sev, minimum in self.cfg.thresholds:
            if score >= minimum:
                return sev
        return "informational"

    def score(self, f: dict, enrich: dict | None, hits: list) -> tuple[int, list, list, float]:
        """-> (score, parts, findings, raw sum)."""
        c = self.cfg
        parts = []
        findings = []
        risk = f.get("risk_score")
        if isinstance(risk, bool) or not isinstance(risk, (int, float)):
            band = f.get("severity")
            risk = _BAND_SCORE.get(band, 10)
            why = f"no risk_score: midpoint {risk} of the event's severity {band or 'unknown'}"
        else:
            why = f"risk_score {_num(risk)}"
        pts = c.risk_weight * risk
        parts.append({"name": "risk", "points": round(pts, 2), "why": f"{why} x {_num(c.risk_weight)}"})
        e = enrich or {}
        asset = e.get("asset")
        if asset is not None:
            where = _where(hits, "asset")
            label = asset.get("name") or where or "asset"
            crit = asset.get("criticality")
            if crit is not None:
                p = c.criticality_points[crit - 1]
                parts.append({"name": "asset_criticality", "points": p,
                              "why": f"{label} criticality {crit}"})
                pts += p
            if asset.get("crown_jewel"):
                parts.append({"name": "crown_jewel", "points": c.crown_jewel_points, "why": f"{label} is a crown jewel"})
                pts += c.crown_jewel_points
            bits = [x for x in (asset.get("owner") and f"owner {asset['owner']}",
                                asset.get("business_unit") and f"business unit {asset['business_unit']}",
                                crit is not None and f"criticality {crit}",
                                asset.get("crown_jewel") and "crown jewel") if x]
            name = asset.get("name")
            findings.append(f"{where}: asset {name + ' ' if name else ''}({', '.join(bits) or 'no details'})")
        elif "asset" in self.kinds:
            findings.append("no asset record for the event's addresses or host")
        vuln = e.get("vuln")
        if vuln is not None:
            m = vuln.get("max_cvss")
            cves = vuln.get("cves") or []
            if m is not None:
                for minimum, p in c.cvss_points:
                    if m >= minimum:
                        parts.append({"name": "vulnerability", "points": p,
                                      "why": f"max CVSS {_num(m)} >= {_num(minimum)} ({', '.join(cves[:3])})"})
                        pts += p
                        break
            findings.append(f"{_where(hits, 'vuln')}: {vuln.get('count', len(cves))} open CVE(s), max CVSS "
                            f"{_num(m) if m is not None else 'unknown'}: {', '.join(cves[:5])}")
        elif "vuln" in self.kinds:
            findings.append("no open vulnerabilities known for the host")
        ti = e.get("ti")
        if ti is not None and ti.get("match"):
            conf = ti.get("confidence")
            conf = 50 if conf is None else conf
            p = round(c.ti_points * conf / 100, 2)
            parts.append({"name": "threat_intel", "points": p,
                          "why": f"{ti.get('indicator')} on {ti.get('source')} (confidence {conf})"})
            pts += p
            tags = ti.get("tags") or []
            findings.append(f"{_where(hits, 'ti')}: threat intel match {ti.get('indicator')} ({ti.get('type')}) "
                            f"from {ti.get('source')}, confidence {conf}" + (f", tags {', '.join(tags)}" if tags else ""))
        elif "ti" in self.kinds:
            findings.append("no threat intel match")
        score = int(max(0, min(100, round(pts))))
        return score, parts, findings, pts

    def owner(self, f: dict, enrich: dict | None, severity: str, ev) -> tuple[str, str]:
        """-> (owner, which rule chose it)."""
        asset = (enrich or {}).get("asset") or {}
        values = {"asset_owner": asset.get("owner"), "business_unit": asset.get("business_unit"),
                  "tactic": f.get("tactic")}
        for r in self.cfg.owners:
            ok = True
            for k, want in r.conditions.items():
                have = values[k]
                if not have or ("*" not in want and str(have).lower() not in want):
                    ok = False
                    break
            if not ok:
                continue
            if r.crown_jewel is not None and bool(asset.get("crown_jewel")) != r.crown_jewel:
                continue
            if r.min_severity is not None and RANK[severity] < RANK[r.min_severity]:
                continue
            if r.match is not None and not _safe(r.match, ev):
                continue
            owner = r.owner
            if "{" in owner:
                if "{asset_owner}" in owner and not values["asset_owner"]:
                    continue
                if "{business_unit}" in owner and not values["business_unit"]:
                    continue
                owner = owner.replace("{asset_owner}", str(values["asset_owner"] or "")).replace(
                    "{business_unit}", str(values["business_unit"] or ""))
            return owner, r.describe()
        if not self.cfg.owners and values["asset_owner"]:
            return str(values["asset_owner"]), "the asset's owner (no [[triage.owners]] configured)"
        return self.cfg.default_owner, "default_owner"

    def escalation(self, score: int, severity: str, ev):
        for e in self.cfg.escalate:
            if e.min_severity is not None and RANK[severity] < RANK[e.min_severity]:
                continue
            if e.min_score is not None and score < e.min_score:
                continue
            if e.match is not None and not _safe(e.match, ev):
                continue
            return e
        return None


def _safe(rule, ev) -> bool:
    try:
        return bool(rule(ev))
    except Exception:
        return False


def _where(hits: list, kind: str) -> str:
    for h in hits:
        if h["kind"] == kind:
            return f"{h['field']} {h['value']}"
    return kind


def explain(score: int, severity: str, mode: str, parts: list, raw: float, owner: str, owner_rule: str,
            findings: list, missing: list | None, escalate: str | None, applied: bool) -> str:
    lines = [f"Triage score {score}/100 -> {severity} (mode {mode})."]
    terms = "; ".join(f"{p['why']}: {p['points']:+g}" for p in parts)
    capped = "" if round(raw) == score else f", sum {raw:g} clamped to {score}"
    lines.append(f"Score: {terms}{capped}.")
    lines.append(f"Owner: {owner} ({owner_rule}).")
    if findings:
        lines.append("Findings: " + "; ".join(findings) + ".")
    if missing:
        lines.append("Missing context: " + "; ".join(missing) + ".")
    if escalate:
        lines.append(f"Escalation {escalate!r} " + ("applied." if applied else f"not applied (mode {mode})."))
    if mode == "suggest":
        lines.append(f"Suggested severity {severity} and owner {owner}; nothing was changed (mode suggest).")
    return "\n".join(lines)

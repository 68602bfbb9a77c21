"""Canonical events -> LEEF / CEF / JSON / XSOAR, checked by decoding with our own decoders.

For every bundled sample and for hypothesis-generated events whose values hold hostile
text, every field comes back and no value can forge another field.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from formats import xsoar
from formats.render import Renderer, RenderOptions
from parsers import cef as cef_dec
from parsers import detect, falcon
from parsers import leef as leef_dec
from parsers import rfc5424
from parsers.event import Event
from parsers.normalise import normalise

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "examples" / "samples"
SIGMA_LINES = [ln for ln in (SAMPLES / "sigma_incidents.log").read_bytes().splitlines() if ln.strip()]
FALCON_LINES = [ln for ln in (SAMPLES / "falcon.log").read_bytes().splitlines() if ln.strip()]
ALERTS = json.loads((SAMPLES / "falcon_alerts.json").read_text())


def event_of(line: bytes) -> Event:
    ev = detect.parse(line, peer="192.0.2.10:5514")
    return normalise(ev)


def split_syslog(line: bytes) -> tuple[Event, str]:
    """Our output is an RFC 5424 header + the LEEF/CEF text as MSG: parse it with our parser."""
    ev = rfc5424.parse(line)
    return ev, ev.msg


def java_pattern_parse(value: str, pattern: str) -> datetime:
    """Parse a devTime with its devTimeFormat (the subset of Java SimpleDateFormat we emit)."""
    conv = pattern.replace("'T'", "T").replace("yyyy", "%Y").replace("MM", "%m").replace("dd", "%d") \
        .replace("HH", "%H").replace("mm", "%M").replace("ss", "%S").replace("SSS", "%f").replace("Z", "%z")
    return datetime.strptime(value, conv)


@pytest.mark.parametrize("line", SIGMA_LINES + FALCON_LINES, ids=lambda b: b[:60].decode("utf-8", "replace"))
@pytest.mark.parametrize("fmt", ["leef", "leef1"])
def test_leef_for_every_sample(line, fmt):
    ev = event_of(line)
    out = Renderer(RenderOptions(format=fmt)).render(ev)
    hdr, body = split_syslog(out)
    f = ev.fields
    # QRadar routes by the syslog HOSTNAME: it must be the original device, never the relay
    assert hdr.hostname == (ev.hostname or f.get("host"))
    rec = leef_dec.parse(body)
    assert rec.version == ("2.0" if fmt == "leef" else "1.0")
    if f["vendor"] == "CrowdStrike":
        assert (rec.vendor, rec.product) == ("CrowdStrike", "FalconHost")
    else:
        assert (rec.vendor, rec.product) == ("Relay", "SOC Relay")
    a = rec.attributes
    assert a["sev"].isdigit() and 1 <= int(a["sev"]) <= 10
    when = java_pattern_parse(a["devTime"], a["devTimeFormat"])
    assert when.timestamp() == pytest.approx(f["occurred_unix"], abs=0.001)
    if f.get("user"):
        assert a["usrName"] == f["user"]
    if f.get("dedup_key"):
        assert a["dedupKey"] == f["dedup_key"]
    if f.get("src_ip"):
        assert a["src"] == f["src_ip"]


@pytest.mark.parametrize("line", SIGMA_LINES + FALCON_LINES, ids=lambda b: b[:60].decode("utf-8", "replace"))
def test_cef_for_every_sample(line):
    ev = event_of(line)
    out = Renderer(RenderOptions(format="cef")).render(ev)
    _, body = split_syslog(out)
    rec = cef_dec.parse(body)
    f = ev.fields
    assert 0 <= int(rec.severity) <= 10
    assert rec.name == f["name"]
    x = rec.extension
    assert int(x["rt"]) == int(f["occurred_unix"] * 1000)
    labels = {x[k + "Label"]: x[k] for k in x if k.startswith("cs") and not k.endswith("Label")}
    if f.get("dedup_key"):
        assert labels["DedupKey"] == f["dedup_key"]
    if f.get("description"):
        assert x["msg"] == f["description"]


def test_falcon_alert_dicts_render():
    for alert in ALERTS:
        ev = Event(b"")
        ev.fields = falcon.normalise_dict(alert)
        ev.body = alert
        _, body = split_syslog(Renderer(RenderOptions(format="leef")).render(ev))
        rec = leef_dec.parse(body)
        assert (rec.vendor, rec.product) == ("CrowdStrike", "FalconHost")
        if ev.fields["extra"].get("composite_id"):
            assert rec.attributes["compositeId"] == ev.fields["extra"]["composite_id"]
        assert "aggregate" not in ev.fields["dedup_key"]


def test_passthrough_is_byte_exact_and_json_is_complete():
    ev = event_of(SIGMA_LINES[0])
    assert Renderer(RenderOptions(format="rfc5424")).render(ev) == SIGMA_LINES[0]
    obj = orjson.loads(Renderer(RenderOptions(format="json")).render(ev))
    assert obj["event"]["dedup_key"] == ev.fields["dedup_key"] and obj["syslog"]["app_name"] == "SigmaIncident"


def test_generic_log_event_renders():
    ev = event_of(b"<34>Oct 11 22:14:15 mymachine su[123]: 'su root' failed")
    _, body = split_syslog(Renderer(RenderOptions(format="leef")).render(ev))
    rec = leef_dec.parse(body)
    assert rec.attributes["sev"] == "9"  # syslog crit -> critical band
    assert rec.attributes["description"] == "'su root' failed"


def test_xsoar_incident_body():
    ev = event_of(SIGMA_LINES[0])
    body = xsoar.incident(ev, xsoar.XsoarOptions(incident_type="SigmaIncident", dedup_field="rhythmxincidentid"),
                          routes=["high_risk"])
    assert body["type"] == "SigmaIncident" and body["severity"] == 3  # risk 82: >= 70 high
    assert body["CustomFields"]["rhythmxincidentid"] == ev.fields["dedup_key"]
    assert all(isinstance(v, str) for v in body["CustomFields"].values())
    assert isinstance(body["rawJSON"], str) and json.loads(body["rawJSON"])["incident_id"] == ev.fields["id"]
    datetime.fromisoformat(body["occurred"])  # ISO 8601 with offset
    assert body["occurred"].endswith("+00:00")
    assert {"type": "Relay Route", "value": "high_risk"} in body["labels"]


@pytest.mark.parametrize("risk,sev", [(100, 4), (85, 4), (84, 3), (70, 3), (69, 2), (40, 2), (39, 1), (0, 1)])
def test_xsoar_severity_thresholds(risk, sev):
    assert xsoar.severity_for({"risk_score": risk}, xsoar.XsoarOptions()) == sev


def test_xsoar_webhook_item():
    ev = event_of(SIGMA_LINES[0])
    item = xsoar.webhook_item(ev, xsoar.XsoarOptions(incident_type="SigmaIncident"))
    assert set(item) == {"name", "type", "occurred", "rawJson"}
    assert isinstance(item["rawJson"], dict) and item["rawJson"]["relay"]["dedup_key"] == ev.fields["dedup_key"]


# ------------------------------------------------------------------ hostile values, event level

HOSTILE = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30),
    st.sampled_from(["a|b", "x=y", "c:\\windows\\n", "t\tab", "cr\rlf\n", "car^et", '"q"', "é€𐍈", "\\", "=",
                     "sev=1^src=6.6.6.6", "x\tsev=1", "a" * 3000,
                     'x\0<14>1 - h a - - - LEEF:2.0|Evil|Forge|1|x|^|sev=10^src=6.6.6.6', "\0", "t\0\tz"]),
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(name=HOSTILE, desc=HOSTILE, user=HOSTILE, host=HOSTILE, actor=HOSTILE, fmt=st.sampled_from(["leef", "leef1"]),
       delim=st.sampled_from(["^", "|", "\t", "#"]))
def test_leef_hostile_values_cannot_forge(name, desc, user, host, actor, fmt, delim):
    ev = Event(b"")
    ev.time_unix = datetime(2026, 3, 13, 4, 30, tzinfo=timezone.utc).timestamp()
    ev.fields = {"kind": "incident", "vendor": "RhythmX", "name": name, "description": desc, "user": user,
                 "host": host, "severity": "high", "risk_score": 75, "dedup_key": "rhythmx:X",
                 "occurred_unix": ev.time_unix, "extra": {"actor": actor}}
    if delim == "|" and fmt == "leef":  # LEEF 1.0 always uses TAB; 2.0 refuses '|'
        with pytest.raises(ValueError):
            Renderer(RenderOptions(format=fmt, leef_delimiter=delim)).render(ev)
        return
    out = Renderer(RenderOptions(format=fmt, leef_delimiter=delim)).render(ev)
    assert b"\n" not in out and b"\r" not in out and b"\0" not in out
    _, body = split_syslog(out)
    rec = leef_dec.parse(body)
    a = rec.attributes
    d = rec.delimiter

    def sanitised(v):
        return v.replace(d, " ").replace("\r", " ").replace("\n", " ").replace("\0", " ")

    assert a["usrName"] == sanitised(user)
    assert a["description"] == sanitised(desc)
    assert a["actor"] == sanitised(actor)
    assert a["sev"] == "7" and a["dedupKey"] == "rhythmx:X"
    assert set(a) <= {"cat", "sev", "devTime", "devTimeFormat", "usrName", "identHostName", "riskScore",
                      "dedupKey", "name", "description", "actor"}


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(name=HOSTILE, desc=HOSTILE, user=HOSTILE, actor=HOSTILE)
def test_cef_hostile_values_round_trip(name, desc, user, actor):
    ev = Event(b"")
    ev.time_unix = 1773376200.0
    ev.fields = {"kind": "incident", "vendor": "RhythmX", "name": name, "description": desc, "user": user,
                 "severity": "low", "dedup_key": "k", "occurred_unix": ev.time_unix, "extra": {"actor": actor}}
    out = Renderer(RenderOptions(format="cef")).render(ev)
    assert b"\n" not in out and b"\r" not in out and b"\0" not in out and b"\t" not in out
    _, body = split_syslog(out)
    rec = cef_dec.parse(body)
    x = rec.extension

    def crlf(v):  # documented: CR is written as \r and decoded back to CR; TAB and NUL become a
        return v.replace("\t", " ").replace("\0", " ").rstrip(" ")   # space; trailing blanks trimmed

    assert rec.name == name.replace("\r\n", " ").replace("\r", " ").replace("\n", " ").replace(
        "\t", " ").replace("\0", " ")  # CR LF is one break
    assert x["suser"] == crlf(user)
    assert x["msg"] == crlf(desc)
    assert x["cs1"] == crlf(actor) and x["cs1Label"] == "Actor"
    assert set(k for k in x if not k.startswith(("cs", "cn"))) <= {"rt", "cat", "suser", "msg"}


# --------------------------------------------------------------------------- vendor profiles
def _vendor_event(vendor, extra=None, **fields) -> Event:
    ev = Event(b"")
    ev.time_unix = 1773376200.0
    ev.fields = {"kind": "alert", "vendor": vendor, "name": "n", "severity": "high", "dedup_key": "d:1",
                 "risk_score": 70, "tactic": "Execution", "occurred_unix": ev.time_unix, "extra": extra or {},
                 **fields}
    return ev


def _both_leef_paths(ev, **opts) -> bytes:
    """The LEEF fast path and the full path give the same bytes."""
    r = Renderer(RenderOptions(format="leef", **opts))
    out = r.render(ev)
    assert out == r._leef(ev)
    return out


def test_vendor_profiles_are_looked_up_by_vendor():
    from formats.vendors import DEFAULT, FALCON, PROFILES, profile_for
    assert PROFILES["CrowdStrike"] is FALCON
    for vendor in ("RhythmX", "IBM", None, "", "crowdstrike", ["CrowdStrike"], {"a": 1}):
        assert profile_for({"vendor": vendor}) is DEFAULT
    assert profile_for(None) is DEFAULT and profile_for({}) is DEFAULT
    # an unhashable vendor value renders with the default tables, as any unknown vendor
    for vendor in (["CrowdStrike"], "Other"):
        ev = _vendor_event(vendor, {"actor": "a1", "cmdline": "c"})
        rec = leef_dec.parse(split_syslog(_both_leef_paths(ev))[1])
        assert (rec.vendor, rec.product) == ("Relay", "SOC Relay")
        assert rec.attributes["cat"] == "alert" and rec.attributes["actor"] == "a1"
        assert "commandLine" not in rec.attributes
        x = cef_dec.parse(split_syslog(Renderer(RenderOptions(format="cef")).render(ev))[1]).extension
        assert x["cat"] == "alert" and (x["cs1Label"], x["cs1"]) == ("Actor", "a1")


def test_falcon_profile_tables():
    ev = _vendor_event("CrowdStrike", {"cmdline": "C:\\Windows\\cmd.exe /c x", "filepath": "C:\\x", "md5": "m5",
                                       "process_id": 4, "actor": "not-a-falcon-key"})
    rec = leef_dec.parse(split_syslog(_both_leef_paths(ev))[1])
    assert (rec.vendor, rec.product, rec.product_version) == ("CrowdStrike", "FalconHost", "1.0")
    a = rec.attributes
    assert a["cat"] == "Execution" and a["commandLine"] == "C:\\Windows\\cmd.exe /c x" and a["md5"] == "m5"
    assert "actor" not in a
    rec = cef_dec.parse(split_syslog(Renderer(RenderOptions(format="cef")).render(ev))[1])
    assert (rec.vendor, rec.product) == ("CrowdStrike", "FalconHost")
    x = rec.extension
    assert x["cat"] == "Execution" and x["fileHash"] == "m5" and x["filePath"] == "C:\\x"
    assert (x["cs1Label"], x["cs1"]) == ("CommandLine", "C:\\Windows\\cmd.exe /c x")
    assert (x["cn1Label"], x["cn1"], x["cn2Label"], x["cn2"]) == ("ProcessId", "4", "RiskScore", "70")


def test_a_new_vendor_is_a_table_entry(monkeypatch):
    from formats import vendors
    acme = vendors.VendorProfile(
        name="Acme", header=("Acme", "Sensor", "2.1"), category="status",
        leef_extra=(("widget", "acmeWidget"), ("tags", "acmeTags")),
        cef_extra=(("widget", "act"),),
        cef_strings=(vendors.Slot("Tags", "tags", extra=True, joined=True), vendors.Slot("Link", "url")),
        cef_numbers=(vendors.Slot("Hits", "hits", extra=True),),
        cef_escape_fields=("widget",))
    monkeypatch.setitem(vendors.PROFILES, "Acme", acme)
    ev = _vendor_event("Acme", {"widget": "w\\1", "tags": ["t1", "t2"], "hits": 3, "actor": "a"},
                       status="open", url="https://acme.example/x")
    rec = leef_dec.parse(split_syslog(_both_leef_paths(ev))[1])
    assert (rec.vendor, rec.product, rec.product_version) == ("Acme", "Sensor", "2.1")
    a = rec.attributes
    assert a["cat"] == "open" and a["acmeWidget"] == "w\\1" and a["acmeTags"] == "t1,t2" and "actor" not in a
    rec = cef_dec.parse(split_syslog(Renderer(RenderOptions(format="cef")).render(ev))[1])
    assert (rec.vendor, rec.product, rec.device_version) == ("Acme", "Sensor", "2.1")
    x = rec.extension
    assert x["cat"] == "open" and x["act"] == "w\\1"
    assert (x["cs1Label"], x["cs1"], x["cs2Label"], x["cs2"]) == ("Tags", "t1,t2", "Link", "https://acme.example/x")
    assert (x["cn1Label"], x["cn1"]) == ("Hits", "3")
    # an empty joined list uses no slot; a profile without a header uses the sink's identity
    ev = _vendor_event("Acme", {"tags": []}, status="open")
    x = cef_dec.parse(split_syslog(Renderer(RenderOptions(format="cef")).render(ev))[1]).extension
    assert "cs1" not in x
    monkeypatch.setitem(vendors.PROFILES, "Acme", vendors.VendorProfile(
        name="Acme", header=None, category="kind", leef_extra=(), cef_extra=(), cef_strings=(), cef_numbers=()))
    rec = leef_dec.parse(split_syslog(_both_leef_paths(ev, leef_vendor="Me"))[1])
    assert (rec.vendor, rec.product) == ("Me", "SOC Relay") and rec.attributes["cat"] == "alert"


def test_vendor_profile_checks_its_tables():
    from formats import vendors
    base = dict(name="x", header=None, category="kind", leef_extra=(), cef_extra=(), cef_strings=(), cef_numbers=())
    with pytest.raises(ValueError):
        vendors.VendorProfile(**{**base, "cef_strings": tuple(vendors.Slot(f"L{i}", "f") for i in range(7))})
    with pytest.raises(ValueError):
        vendors.VendorProfile(**{**base, "cef_numbers": tuple(vendors.Slot(f"L{i}", "f") for i in range(4))})
    with pytest.raises(ValueError):
        vendors.VendorProfile(**{**base, "cef_numbers": (vendors.Slot("N", "n", joined=True),)})
    with pytest.raises(ValueError):
        vendors.VendorProfile(**{**base, "cef_strings": (("L", "f"),)})
    with pytest.raises(ValueError):
        vendors.VendorProfile(**{**base, "header": ("a", "b")})

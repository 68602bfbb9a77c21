"""CrowdStrike Falcon normaliser: three shapes, both severity scales, dedup keys, times."""
from __future__ import annotations

import copy
import json
from datetime import datetime
from pathlib import Path

import orjson
import pytest

from parsers.event import Event, FORMAT_RFC5424
from parsers.falcon import detect_shape, matches, normalise, normalise_dict, normalise_resources
from parsers.schema import SEVERITIES
from tests.vectors import load_json

SAMPLES = Path(__file__).resolve().parents[1] / "examples" / "samples"
FIX = load_json("falcon_samples.json")
STREAM = FIX["siem_connector_or_streaming_DetectionSummaryEvent"]
DETECTS = FIX["detects_api_v1_detection_summary"]
ALERT = FIX["alerts_api_v2_endpoint_alert"]
IDP = FIX["alerts_api_v2_identity_alert"]

CANONICAL = ("kind", "vendor", "product", "id", "dedup_key", "name", "description", "risk_score",
             "severity", "status", "occurred", "occurred_unix", "src_ip", "dst_ip", "host", "user",
             "tactic", "technique", "url", "extra")


def d(obj):
    return copy.deepcopy(obj)


def syslog_event(msg: str, timestamp="2023-06-15T16:06:52.400Z", time_unix=1686845212.4) -> Event:
    e = Event(msg.encode("utf-8", "surrogateescape"), FORMAT_RFC5424)
    e.pri, e.facility, e.severity, e.version = 133, 16, 5, 1
    e.timestamp, e.time_unix = timestamp, time_unix
    e.hostname, e.app_name, e.procid, e.msgid = "falcon-siem-01", "CrowdStrike", None, "DetectionSummaryEvent"
    e.msg = msg
    return e


# ---------------------------------------------------------------------------
# shapes
# ---------------------------------------------------------------------------

def test_detect_shape():
    assert detect_shape(STREAM) == "stream"
    assert detect_shape(DETECTS) == "detects"
    assert detect_shape(ALERT) == "alert"
    assert detect_shape(IDP) == "alert"
    assert detect_shape({"foo": 1}) is None
    assert detect_shape([1]) is None


def test_stream_detection_summary_fixture():
    notes = []
    f = normalise_dict(STREAM, notes=notes)
    assert notes == []
    for k in CANONICAL:
        assert k in f
    assert (f["kind"], f["vendor"], f["product"]) == ("detection", "CrowdStrike", "Falcon")
    assert f["id"] == "detect::id::test" and f["dedup_key"] == "falcon:detect::id::test"
    assert f["event"] == "DetectionSummaryEvent"
    assert f["name"] == "NGAV"
    assert f["description"].startswith("This file is classified as Adware/PUP")
    assert (f["severity"], f["risk_score"]) == ("low", 30)        # Severity 2 / Low
    assert f["occurred"] == "2023-06-15T16:06:52.400Z"            # eventCreationTime ms
    assert f["occurred_unix"] == pytest.approx(1686845212.4)
    assert (f["host"], f["user"], f["src_ip"]) == ("ELASTICHOST", "ELASTICUSER", "89.160.20.112")
    assert (f["tactic"], f["technique"]) == ("Malware", "PUP")
    assert f["url"].startswith("https://falcon.crowdstrike.com/activity/detections/detail/")
    x = f["extra"]
    assert x["sensor_id"] == "sensorid123" and x["mac"] == "1c-2d-b3-4a-56-7e"
    assert x["domain"] == "INTERNAL" and x["process_id"] == 123123 and x["parent_process_id"] == 321321
    assert x["sha256"].startswith("0b2cde5b") and x["md5"] == "49f30e09200e7b59edc5ef32fbd0442c"
    assert x["cmdline"].endswith("-Embedding") and x["filename"] == "TESTFILE.exe"
    assert x["pattern_disposition"] == 2304 and x["pattern_disposition_flags"]["ProcessBlocked"] is True
    assert x["offset"] == 1 and x["customer_id"] == "123123abcd"
    assert x["falcon_severity"] == 2 and x["falcon_severity_scale"] == "1-5"
    assert x["process_start_time"] == "2023-06-15T16:06:52.400Z"    # ms in this fixture


def test_detects_api_fixture():
    notes = []
    f = normalise_dict(DETECTS, notes=notes)
    assert notes == []
    assert f["kind"] == "detection"
    assert f["id"] == "ldt:15dbb9d8f06b89fe9f61eb46e829d986:528715079668"
    assert f["dedup_key"] == "falcon:ldt:15dbb9d8f06b89fe9f61eb46e829d986:528715079668"
    assert (f["severity"], f["risk_score"]) == ("low", 30)        # max_severity 30 = Low
    assert f["occurred"] == "2021-12-19T13:53:34.708Z"            # 9-digit fraction, truncated
    assert f["status"] == "new"
    assert (f["host"], f["src_ip"], f["user"]) == ("FALCON-CROWDSTR", "10.128.0.7", "admin")
    assert (f["tactic"], f["tactic_id"], f["technique"], f["technique_id"]) == (
        "Malware", "CSTA0001", "Malicious File", "CST0001")
    assert f["name"] == "SampleTemplateDetection"
    x = f["extra"]
    assert x["cmdline"] == "choice  /m crowdstrike_sample_detection"
    assert x["sha256"].startswith("90f352c1") and x["external_ip"] == "35.224.136.145"
    assert x["first_behavior"] == "2021-12-19T13:53:27.000Z" and x["behavior_count"] == 1


def test_detects_uses_highest_severity_behavior():
    obj = d(DETECTS)
    b2 = dict(obj["behaviors"][0], behavior_id="2", severity=85, tactic="Impact", technique="Encrypt",
              display_name="Ransom")
    obj["behaviors"].append(b2)
    obj["max_severity"], obj["max_severity_displayname"] = 85, "Critical"
    f = normalise_dict(obj)
    assert f["severity"] == "critical" and f["tactic"] == "Impact" and f["name"] == "Ransom"


def test_alert_endpoint_fixture():
    notes = []
    f = normalise_dict(ALERT, notes=notes)
    assert notes == []
    assert f["kind"] == "alert"
    assert f["id"] == ALERT["composite_id"]
    assert f["dedup_key"] == "falcon:" + ALERT["composite_id"]
    assert (f["severity"], f["risk_score"]) == ("low", 30)
    assert f["occurred"] == "2023-11-03T18:01:23.995Z"
    assert (f["host"], f["src_ip"], f["user"]) == ("ABC709-1175", "81.2.69.142", "mohit.jha")
    assert f["status"] == "new" and f["url"] == ALERT["falcon_host_link"]
    assert (f["tactic_id"], f["technique_id"]) == ("CSTA0004", "CST0000")
    x = f["extra"]
    assert x["composite_id"] == ALERT["composite_id"]
    assert x["aggregate_id"] == ALERT["aggregate_id"]          # kept, but never the key
    assert x["mac"] == "ab-21-48-61-05-b2" and x["domain"] == "ABC.LOCAL"
    assert x["sha256"] == ALERT["sha256"] and x["cmdline"] == ALERT["cmdline"]
    assert x["pattern_disposition"] == 2176 and x["pattern_disposition_details"]["quarantine_file"] is True
    assert x["parent_cmdline"] == "C:\\WINDOWS\\Explorer.EXE"
    assert x["updated"] == "2023-11-03T19:00:23.985Z" and x["updated_unix"] > f["occurred_unix"]
    assert x["falcon_product"] == "epp"


def test_alert_identity_fixture_without_device():
    f = normalise_dict(IDP)
    assert "device" not in IDP
    assert (f["severity"], f["risk_score"]) == ("high", 79)       # 79 High: consistent, no note
    assert (f["host"], f["src_ip"], f["user"]) == ("ABDC454.net.example.com", "81.2.69.144", "admin.abcdef")
    assert f["name"] == "Identity verification denied"
    assert (f["tactic_id"], f["technique_id"]) == ("TA0006", "T1110")
    assert f["extra"]["target_host"] == "GH787.net.example.com"
    assert f["extra"]["domain"] == "NET.example.com"
    assert f["extra"]["falcon_product"] == "idp"


def test_explicit_shape_and_errors():
    assert normalise_dict(ALERT, shape="alert")["kind"] == "alert"
    with pytest.raises(ValueError):
        normalise_dict({"unrelated": True})
    with pytest.raises(ValueError):
        normalise_dict(ALERT, shape="nope")
    with pytest.raises(ValueError, match="envelope"):
        normalise_dict({"meta": {}, "resources": [ALERT], "errors": []})


def test_envelope():
    env = {"meta": {"query_time": 0.01}, "resources": [d(ALERT), d(IDP), "junk"], "errors": []}
    out = normalise_resources(env)
    assert [f["severity"] for f in out] == ["low", "high"]


# ---------------------------------------------------------------------------
# severity: both scales onto the one scale (fixture evidence first)
# ---------------------------------------------------------------------------

def test_fixture_evidence():
    assert normalise_dict(DETECTS)["severity"] == "low"                       # 30 Low
    assert normalise_dict(ALERT)["severity"] == "low"                         # 30
    assert normalise_dict(IDP)["severity"] == "high"                          # 79 High
    assert normalise_dict(dict(d(ALERT), severity=70, severity_name="High"))["severity"] == "high"
    assert normalise_dict(dict(d(ALERT), severity=90, severity_name="Critical"))["severity"] == "critical"
    s4 = d(STREAM)
    s4["event"]["Severity"], s4["event"]["SeverityName"] = 4, "High"
    assert normalise_dict(s4)["severity"] == "high"                           # streaming 4 High


@pytest.mark.parametrize("value,band,score", [
    (1, "informational", 10), (2, "low", 30), (3, "medium", 50), (4, "high", 70), (5, "critical", 90),
])
def test_streaming_1_to_5(value, band, score):
    obj = d(STREAM)
    obj["event"]["Severity"] = value
    del obj["event"]["SeverityName"]
    f = normalise_dict(obj)
    assert (f["severity"], f["risk_score"]) == (band, score)
    assert f["extra"]["falcon_severity_scale"] == "1-5"


@pytest.mark.parametrize("value,band", [
    (1, "informational"), (19, "informational"), (20, "low"), (30, "low"), (39, "low"), (40, "medium"),
    (59, "medium"), (60, "high"), (70, "high"), (79, "high"), (80, "critical"), (90, "critical"),
    (100, "critical"),
])
def test_alerts_1_to_100(value, band):
    obj = d(ALERT)
    obj["severity"] = value
    f = normalise_dict(obj)
    assert f["severity"] == band and f["risk_score"] == value


@pytest.mark.parametrize("value,band", [(0, "informational"), (30, "low"), (50, "medium"), (70, "high"), (95, "critical")])
def test_detects_0_to_100(value, band):
    obj = d(DETECTS)
    obj["max_severity"] = value
    del obj["max_severity_displayname"]
    assert normalise_dict(obj)["severity"] == band


def test_streaming_100_scale_for_epp():
    obj = d(STREAM)
    obj["metadata"]["eventType"] = "EppDetectionSummaryEvent"
    obj["event"]["CompositeId"] = "cid:ind:aid:1-2-3"
    obj["event"]["Severity"], obj["event"]["SeverityName"] = 70, "High"
    f = normalise_dict(obj)
    assert (f["severity"], f["risk_score"]) == ("high", 70)
    assert f["extra"]["falcon_severity_scale"] == "1-100"
    # a 1-100 value <= 5 is told apart by its name
    obj["event"]["Severity"], obj["event"]["SeverityName"] = 5, "Informational"
    assert normalise_dict(obj)["severity"] == "informational"


def test_severity_name_disagreement_number_wins_with_note():
    notes = []
    f = normalise_dict(dict(d(ALERT), severity=85, severity_name="High"), notes=notes)
    assert f["severity"] == "critical"
    assert any("named 'High'" in n for n in notes)
    notes = []
    s = d(STREAM)
    s["event"]["Severity"], s["event"]["SeverityName"] = 2, "Critical"
    assert normalise_dict(s, notes=notes)["severity"] == "low"
    assert notes


def test_severity_missing_falls_back_to_name_then_informational():
    obj = d(ALERT)
    del obj["severity"]
    obj["severity_name"] = "Medium"
    notes = []
    f = normalise_dict(obj, notes=notes)
    assert (f["severity"], f["risk_score"]) == ("medium", 50) and notes
    del obj["severity_name"]
    f = normalise_dict(obj)
    assert f["severity"] == "informational" and f["risk_score"] is None
    assert set(SEVERITIES) >= {f["severity"]}


# ---------------------------------------------------------------------------
# dedup keys: never aggregate_id
# ---------------------------------------------------------------------------

def test_dedup_never_aggregate_id():
    f = normalise_dict(ALERT)
    assert ALERT["aggregate_id"] not in f["dedup_key"]
    # two alerts of one aggregate are two keys
    other = dict(d(ALERT), composite_id=ALERT["composite_id"] + "-2", id=ALERT["id"] + "-2")
    assert normalise_dict(other)["dedup_key"] != f["dedup_key"]
    # no composite_id: the per-alert id, not aggregate_id
    obj = d(ALERT)
    del obj["composite_id"]
    notes = []
    g = normalise_dict(obj, notes=notes)
    assert g["dedup_key"] == "falcon:" + ALERT["id"]
    assert "aggind" not in g["dedup_key"] and notes
    del obj["id"]
    g = normalise_dict(obj)
    assert g["dedup_key"] is None                # rather none than the aggregate
    # streaming Epp summary with AggregateId and CompositeId
    s = d(STREAM)
    s["metadata"]["eventType"] = "EppDetectionSummaryEvent"
    s["event"].update(AggregateId="aggind:x:1", CompositeId="cid:ind:x:9")
    del s["event"]["DetectId"]
    assert normalise_dict(s)["dedup_key"] == "falcon:cid:ind:x:9"
    del s["event"]["CompositeId"]
    assert normalise_dict(s)["dedup_key"] is None


def test_streaming_detection_summary_uses_detect_id():
    s = d(STREAM)
    s["event"]["CompositeId"] = "cid:ind:x:9"
    s["event"]["AggregateId"] = "aggind:x:1"
    assert normalise_dict(s)["dedup_key"] == "falcon:detect::id::test"


def test_other_stream_event_is_log_keyed_by_offset():
    audit = {"metadata": {"customerIDString": "c1", "offset": 77, "eventType": "UserActivityAuditEvent",
                          "eventCreationTime": 1686845400000, "version": "1.0"},
             "event": {"UserId": "admin@example.com", "UserIp": "192.0.2.10", "OperationName": "detection_update"}}
    f = normalise_dict(audit)
    assert f["kind"] == "log" and f["severity"] == "informational"
    assert f["dedup_key"] == "falcon:stream:c1:UserActivityAuditEvent:77"
    assert f["user"] == "admin@example.com" and f["src_ip"] == "192.0.2.10"


def test_incident_summary_event():
    inc = {"metadata": {"customerIDString": "c1", "offset": 5, "eventType": "IncidentSummaryEvent",
                        "eventCreationTime": 1686845400000},
           "event": {"IncidentId": "inc:abc:def", "FineScore": 7.5, "State": "open",
                     "IncidentStartTime": 1686845000, "FalconHostLink": "https://falcon/x"}}
    f = normalise_dict(inc)
    assert f["kind"] == "incident" and f["dedup_key"] == "falcon:inc:abc:def"
    assert (f["risk_score"], f["severity"]) == (75, "high")
    assert f["extra"]["incident_start"] == "2023-06-15T16:03:20.000Z"


# ---------------------------------------------------------------------------
# times: Z, offsets, fractions, epoch ms/s; numeric, never string compare
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("created,iso", [
    ("2023-11-03T18:01:23.995794943Z", "2023-11-03T18:01:23.995Z"),
    ("2023-11-03T18:01:23Z", "2023-11-03T18:01:23.000Z"),
    ("2023-11-03T20:01:23.5+02:00", "2023-11-03T18:01:23.500Z"),
    ("2023-11-03T13:01:23.123-05:00", "2023-11-03T18:01:23.123Z"),
    (1699034483995, "2023-11-03T18:01:23.995Z"),
    (1699034483, "2023-11-03T18:01:23.000Z"),
    ("1699034483", "2023-11-03T18:01:23.000Z"),
])
def test_alert_time_forms(created, iso):
    f = normalise_dict(dict(d(ALERT), created_timestamp=created))
    assert f["occurred"] == iso
    assert f["occurred_unix"] == pytest.approx(datetime.fromisoformat(iso).timestamp(), abs=1e-3)


def test_bad_time_is_note_and_falls_back():
    notes = []
    f = normalise_dict(dict(d(ALERT), created_timestamp="yesterday"), notes=notes)
    assert f["occurred"] == "2023-11-03T18:00:22.328Z"             # alert 'timestamp'
    assert any("created_timestamp" in n for n in notes)


def test_process_start_time_seconds_or_ms():
    s = d(STREAM)
    s["event"]["ProcessStartTime"] = 1686845212
    assert normalise_dict(s)["extra"]["process_start_time"] == "2023-06-15T16:06:52.000Z"


def test_order_by_unix_not_string():
    a = normalise_dict(dict(d(ALERT), created_timestamp="2023-11-03T19:30:00+02:00"))  # 17:30Z
    b = normalise_dict(dict(d(ALERT), created_timestamp="2023-11-03T18:00:00Z"))
    assert "2023-11-03T19:30:00+02:00" > "2023-11-03T18:00:00Z"
    assert a["occurred_unix"] < b["occurred_unix"]
    assert a["occurred"] < b["occurred"]       # canonical strings are all UTC 'Z', same width


# ---------------------------------------------------------------------------
# syslog-carried JSON
# ---------------------------------------------------------------------------

def test_normalise_syslog_event():
    e = syslog_event(orjson.dumps(STREAM).decode())
    assert matches(e)
    normalise(e)
    assert e.body["metadata"]["eventType"] == "DetectionSummaryEvent"
    assert e.fields["dedup_key"] == "falcon:detect::id::test" and e.fields["severity"] == "low"
    assert e.notes is None


def test_normalise_alert_json_in_syslog():
    e = syslog_event(json.dumps(IDP))
    assert matches(e)
    assert normalise(e).fields["severity"] == "high"


def test_matches_rejects_other_messages():
    assert not matches(syslog_event("plain text"))
    assert not matches(syslog_event('{"incident_id":"INC-1","risk_score":82}'))
    assert not matches(syslog_event(""))


def test_normalise_malformed_json_is_log_with_note():
    e = syslog_event('{"metadata":{"eventType":"DetectionSummaryEvent"},"event":{"Severity":')
    normalise(e)
    assert e.body is None
    assert e.fields["kind"] == "log" and e.fields["vendor"] == "CrowdStrike"
    assert any("not valid JSON" in n for n in e.notes)


def test_normalise_unknown_json_is_log_with_note():
    e = syslog_event('{"hello":"world"}')
    normalise(e)
    assert e.fields["kind"] == "log" and any("not a Falcon" in n for n in e.notes)


def test_normalise_uses_syslog_time_when_json_has_none():
    s = d(STREAM)
    del s["metadata"]["eventCreationTime"]
    e = normalise(syslog_event(orjson.dumps(s).decode(), "2023-06-15T16:07:00.000Z", 1686845220.0))
    assert e.fields["occurred"] == "2023-06-15T16:07:00.000Z"
    assert any("syslog TIMESTAMP" in n for n in e.notes)


# ---------------------------------------------------------------------------
# samples
# ---------------------------------------------------------------------------

def test_falcon_alerts_sample():
    alerts = json.loads((SAMPLES / "falcon_alerts.json").read_text())
    out = [normalise_dict(a) for a in alerts]
    assert [f["severity"] for f in out] == ["low", "high", "high", "critical"]
    assert [f["risk_score"] for f in out] == [30, 79, 70, 90]
    assert len({f["dedup_key"] for f in out}) == 4
    for f, a in zip(out, alerts):
        assert f["dedup_key"] == "falcon:" + a["composite_id"]
        assert set(CANONICAL) <= set(f) and f["occurred_unix"] is not None
    # the +02:00 sample is normalised to UTC
    assert out[2]["occurred"] == "2023-11-03T18:11:05.500Z"


def test_falcon_log_sample_end_to_end():
    from parsers.rfc5424 import parse      # lands separately
    lines = (SAMPLES / "falcon.log").read_bytes().splitlines()
    assert len(lines) == 4
    evs = [parse(line) for line in lines]
    for e in evs:
        assert e.format == "rfc5424" and matches(e)
        normalise(e)
        assert e.notes is None
    f = [e.fields for e in evs]
    assert [x["kind"] for x in f] == ["detection", "detection", "detection", "log"]
    assert [x["severity"] for x in f] == ["low", "high", "critical", "informational"]
    assert f[0]["dedup_key"] == "falcon:detect::id::test"
    assert f[1]["dedup_key"] == "falcon:ldt:aaaabbbbccccdddd:4242"
    assert f[1]["technique_id"] == "T1003"
    assert f[2]["dedup_key"].startswith("falcon:123123abcd:ind:") and "aggind" not in f[2]["dedup_key"]
    assert f[2]["host"] == "DESKTOP-HR01"
    assert f[3]["user"] == "admin@example.com"

"""CEF and LEEF arriving at the relay (parsers/cefleef.py, docs/schema.md 3.5).

* The Falcon SIEM Connector's CEF and LEEF lines give the same canonical event, with the same
  dedup key, as the connector's JSON for everything the line carries; what a line cannot carry
  is listed here (CEF_LACKS / LEEF_LACKS) and asserted to be exactly what differs.
* A generic CEF firewall event and a LEEF event are mapped through the dictionaries.
* Bare records and records inside RFC 3164 / RFC 5424 MSGs are detected per message.
* Every valid vector of shared/vectors/cef.jsonl and leef.jsonl decodes through the pipeline's
  parse+normalise (the decoder's agreement with Vector/syslog-ng/OTTL is tests/test_*_vectors.py).
* Forwarding as LEEF/CEF never double-wraps; ``passthrough_cef_leef`` keeps the line byte for byte.
"""
from __future__ import annotations

import copy

import orjson
import pytest

from formats.render import Renderer, RenderOptions
from parsers import detect
from parsers.normalise import normalise
from tests.vectors import deviations, load_jsonl

AID = "4ed9122015d7444c6c3ba3bf23d08d56"
DETECT_NO = "38655034604"
LINK = f"https://falcon.crowdstrike.com/activity/detections/detail/{AID}/{DETECT_NO}?_cid=cid123"

# the connector's JSON (stream shape) for one DetectionSummaryEvent
JSON_EVENT = {
    "metadata": {"customerIDString": "cid123", "offset": 16362, "eventType": "DetectionSummaryEvent",
                 "eventCreationTime": 1715677964123, "version": "1.0"},
    "event": {
        "ProcessStartTime": 1715677900, "ProcessId": 13658726666418, "ParentProcessId": 13580823324206,
        "ComputerName": "WS-0042", "UserName": "jdoe", "DetectName": "Suspicious Activity",
        "DetectDescription": "A process launched with a suspicious command line.",
        "Severity": 4, "SeverityName": "High", "FileName": "powershell.exe",
        "FilePath": "\\Device\\HarddiskVolume3\\Windows\\System32\\WindowsPowerShell\\v1.0",
        "CommandLine": "powershell.exe -enc SQBFAFgA", "SHA256String": "a" * 64, "MD5String": "b" * 32,
        "SHA1String": "c" * 40, "MachineDomain": "CORP", "FalconHostLink": LINK, "SensorId": AID,
        "DetectId": f"ldt:{AID}:{DETECT_NO}", "LocalIP": "10.1.2.3", "MACAddress": "00-15-5d-01-02-03",
        "Tactic": "Execution", "Technique": "PowerShell", "Objective": "Follow Through",
        "PatternDispositionDescription": "Detection, standard detection.", "PatternDispositionValue": 0,
        "PatternId": 10197, "MitreAttack": [{"TacticID": "TA0002", "TechniqueID": "T1059.001"}],
    },
}


def _cef_escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("=", "\\=").replace("\n", "\\n").replace("\r", "\\r")


def connector_cef(obj: dict) -> str:
    """The line the SIEM Connector writes in CEF mode (current mapping, formats.md 4.3)."""
    m, e = obj["metadata"], obj["event"]
    pairs = [("rt", m["eventCreationTime"]), ("cat", e["Tactic"]), ("externalId", e["SensorId"]),
             ("cn2Label", "ProcessId"), ("cn2", e["ProcessId"]), ("cn1Label", "ParentProcessId"),
             ("cn1", e["ParentProcessId"]), ("dhost", e["ComputerName"]), ("duser", e["UserName"]),
             ("msg", e["DetectDescription"]), ("fname", e["FileName"]), ("filePath", e["FilePath"]),
             ("cs5Label", "CommandLine"), ("cs5", e["CommandLine"]), ("fileHash", e["MD5String"]),
             ("dntdom", e["MachineDomain"]), ("cs6Label", "FalconHostLink"), ("cs6", e["FalconHostLink"]),
             ("cn3Label", "Offset"), ("cn3", m["offset"]), ("src", e["LocalIP"]), ("smac", e["MACAddress"]),
             ("act", e["Technique"]), ("reason", e["Objective"]), ("outcome", e["PatternDispositionValue"]),
             ("CSMTRPatternDisposition", e["PatternDispositionDescription"])]
    ext = " ".join(f"{k}={_cef_escape(str(v))}" for k, v in pairs)
    return f"CEF:0|CrowdStrike|FalconHost|1.0|{m['eventType']}|{e['Tactic']}|{e['Severity']}|{ext}"


def connector_leef(obj: dict) -> str:
    """The line the SIEM Connector writes in LEEF mode (formats.md 4.3, LEEF column)."""
    m, e = obj["metadata"], obj["event"]
    t = m["eventCreationTime"]
    import time as _t
    g = _t.gmtime(t // 1000)
    dev = _t.strftime("%Y-%m-%d %H:%M:%S", g) + f".{t % 1000:03d}"
    pairs = [("devTimeFormat", "yyyy-MM-dd HH:mm:ss.SSS"), ("devTime", dev), ("eventType", m["eventType"]),
             ("cat", e["Tactic"]), ("sev", e["Severity"]), ("severityName", e["SeverityName"]),
             ("usrName", e["UserName"]), ("identHostName", e["ComputerName"]),
             ("description", e["DetectDescription"]), ("fileName", e["FileName"]), ("filePath", e["FilePath"]),
             ("commandLine", e["CommandLine"]), ("sha256", e["SHA256String"]), ("domain", e["MachineDomain"]),
             ("falconHostLink", e["FalconHostLink"]), ("src", e["LocalIP"]), ("srcMAC", e["MACAddress"])]
    return f"LEEF:1.0|CrowdStrike|FalconHost|1.0|{m['eventType']}|" + "\t".join(f"{k}={v}" for k, v in pairs)


# what each connector line does not carry (so those canonical keys differ from the JSON's)
CEF_LACKS = {"name", "tactic_id", "technique_id", "extra.customer_id", "extra.severity_name", "extra.sha256",
             "extra.sha1", "extra.pattern_id", "extra.mitre_attack", "extra.stream_version",
             "extra.process_start_time"}
LEEF_LACKS = {"name", "tactic_id", "technique", "technique_id", "extra.customer_id", "extra.offset",
              "extra.stream_version", "extra.sensor_id", "extra.md5", "extra.sha1", "extra.process_id",
              "extra.parent_process_id", "extra.process_start_time", "extra.pattern_id",
              "extra.pattern_disposition", "extra.pattern_disposition_description", "extra.objective",
              "extra.mitre_attack"}


def _flat(f: dict) -> dict:
    out = {k: v for k, v in f.items() if k != "extra"}
    for k, v in (f.get("extra") or {}).items():
        out["extra." + k] = v
    return out


def _syslog(line: str, host: str = "falcon-connector") -> bytes:
    return f"<134>1 2024-05-14T09:12:44.000Z {host} CSConnector - - - {line}".encode()


def _fields(data: bytes):
    return normalise(detect.parse(data, received=1715677999.0, peer="10.9.9.9:514", source="s"))


def test_connector_json_cef_and_leef_give_the_same_canonical_event():
    want = _flat(_fields(_syslog(orjson.dumps(JSON_EVENT).decode())).fields)
    assert want["dedup_key"] == f"falcon:ldt:{AID}:{DETECT_NO}"
    assert want["kind"] == "detection" and want["severity"] == "high"
    for line, lacks, fmt in ((connector_cef(JSON_EVENT), CEF_LACKS, "cef"),
                             (connector_leef(JSON_EVENT), LEEF_LACKS, "leef")):
        for data in (_syslog(line), line.encode(), f"<134>May 14 09:12:44 falcon-connector {line}".encode()):
            ev = _fields(data)
            got = _flat(ev.fields)
            assert got.pop("extra.input_format") == fmt
            diff = {k for k in set(want) | set(got) if want.get(k) != got.get(k)}
            assert diff <= lacks, {k: (want.get(k), got.get(k)) for k in diff - lacks}
            assert got["dedup_key"] == want["dedup_key"] and got["id"] == want["id"]
            assert got["extra.siem_event"] == "DetectionSummaryEvent"
            assert "CrowdStrike" not in (got.get("description") or "")


def test_connector_cef_of_the_vectors_file_is_a_falcon_detection():
    case = next(c for c in load_jsonl("cef.jsonl") if c["id"] == "cef-078")
    ev = _fields(_syslog(case["input"]))
    f = ev.fields
    assert (f["vendor"], f["kind"], f["event"], f["host"], f["user"]) == \
        ("CrowdStrike", "detection", "DetectionSummaryEvent", "SERVERNAME-A", "SPH-123ABC-HPM")
    assert f["extra"]["offset"] == 16362 and f["extra"]["md5"] == "c8ad5284ece0bbd4a3af6ff2e7c7721a"
    assert f["extra"]["process_start_time"] == "2019-05-08T14:20:56.000Z"
    # the older mapping carries no detection id (its link has none): no key, and a note says so
    assert f["dedup_key"] is None and any("no detection/composite id" in n for n in ev.notes)


def test_epp_detection_id_from_the_console_link():
    obj = copy.deepcopy(JSON_EVENT)
    obj["metadata"]["eventType"] = "EppDetectionSummaryEvent"
    comp = f"cid123:ind:{AID}:1234-10197-5"
    obj["event"].pop("DetectId")
    obj["event"]["CompositeId"] = comp
    obj["event"]["FalconHostLink"] = f"https://falcon.crowdstrike.com/activity-v2/detections/{comp}?_cid=cid123"
    want = _fields(_syslog(orjson.dumps(obj).decode())).fields
    got = _fields(connector_cef(obj).encode()).fields
    assert got["dedup_key"] == want["dedup_key"] == f"falcon:{comp}"


def test_generic_cef_firewall_event_is_mapped():
    line = ("<134>May 14 09:12:44 fw01 CEF:0|Fortinet|FortiGate|7.2.5|0000000013|traffic denied|7|"
            "rt=1715677964000 src=203.0.113.7 spt=51544 dst=10.0.0.5 dpt=443 proto=TCP act=deny "
            "suser=jdoe cat=traffic:forward outcome=failure cs1Label=Policy cs1=block-inbound "
            "cn1Label=PolicyId cn1=42 dvchost=FGT-EDGE-1 msg=denied by policy externalId=778899 "
            "request=https://example.org/x")
    ev = _fields(line.encode())
    f = ev.fields
    assert ev.format == "rfc3164" and ev.hostname == "fw01" and ev.notes is None
    assert (f["kind"], f["vendor"], f["product"], f["event"], f["name"]) == \
        ("log", "Fortinet", "FortiGate", "0000000013", "traffic denied")
    assert (f["src_ip"], f["dst_ip"], f["user"], f["host"], f["id"], f["url"]) == \
        ("203.0.113.7", "10.0.0.5", "jdoe", "FGT-EDGE-1", "778899", "https://example.org/x")
    assert (f["severity"], f["risk_score"], f["status"]) == ("high", 70, "failure")
    assert f["occurred"] == "2024-05-14T09:12:44.000Z" and f["description"] == "denied by policy"
    x = f["extra"]
    assert (x["category"], x["action"], x["src_port"], x["dst_port"], x["protocol"]) == \
        ("traffic:forward", "deny", 51544, 443, "TCP")
    assert x["custom"] == {"Policy": "block-inbound", "PolicyId": "42"}
    assert x["cef"]["cs1"] == "block-inbound" and x["input_format"] == "cef"


def test_generic_leef_event_is_mapped():
    line = ("LEEF:2.0|Acme|Gateway|3.1|LoginFail|^|devTime=2024-05-14 09:12:44|devTimeFormat=yyyy-MM-dd HH:mm:ss"
            .replace("|devTimeFormat", "^devTimeFormat")
            + "^src=203.0.113.9^dst=10.0.0.6^usrName=alice^sev=5^cat=Authentication^srcPort=4444^proto=UDP")
    ev = _fields(line.encode())
    f = ev.fields
    assert ev.format == "leef" and ev.hostname is None
    assert (f["vendor"], f["product"], f["event"], f["user"], f["src_ip"], f["dst_ip"]) == \
        ("Acme", "Gateway", "LoginFail", "alice", "203.0.113.9", "10.0.0.6")
    assert (f["severity"], f["occurred"]) == ("medium", "2024-05-14T09:12:44.000Z")
    assert f["extra"]["category"] == "Authentication" and f["extra"]["src_port"] == 4444


def test_broken_record_is_kept_with_a_clear_note():
    ev = _fields(b"<13>May 14 09:12:44 h CEF:0|only|three|")
    assert ev.fields["kind"] == "log" and ev.fields["description"] == "CEF:0|only|three|"
    assert ev.notes and ev.notes[0].startswith("cef: not decoded (cef_header")


def test_plain_messages_are_not_taken_for_cef():
    for data in (b"<13>May 14 09:12:44 h app: CEF: is a word here", b"<13>May 14 09:12:44 h CEF[12]: 0|a|b",
                 b"<13>1 2024-05-14T09:12:44Z h app - - - hello CEF:0|a|b|c|d|e|1|"):
        f = _fields(data).fields
        assert "input_format" not in (f.get("extra") or {}), data


@pytest.mark.parametrize("name", ["cef.jsonl", "leef.jsonl"])
def test_every_valid_vector_decodes_through_the_pipeline(name):
    n = 0
    listed = deviations(name.split(".")[0])
    for case in load_jsonl(name):
        if case["id"] in listed:
            continue     # the decoder disagrees with the peer on purpose (tests/deviations/)
        if case.get("direction", "parse") != "parse" or not case.get("valid", True) or "input" not in case:
            continue
        text = case["input"]
        if not isinstance(text, str) or not (text.startswith("CEF:") or text.startswith("LEEF:")):
            continue
        if "\n" in text.rstrip("\r\n"):
            continue     # several records in one: not one message
        ev = _fields(_syslog(text))
        f = ev.fields
        decoded = (f.get("extra") or {}).get("input_format")
        if decoded is None:   # a listed deviation (the decoder refuses it): a note, never a crash
            assert ev.notes and "not decoded" in ev.notes[0], case["id"]
            continue
        n += 1
        hdr = case.get("expected_header") or {}
        vendor = hdr.get("deviceVendor", hdr.get("vendor"))
        if vendor and vendor != "CrowdStrike":
            assert f["vendor"] == vendor, case["id"]
    assert n >= 25


# --------------------------------------------------------------------------- output
def _render(fmt: str, ev, **kw) -> bytes:
    return Renderer(RenderOptions(format=fmt, **kw)).render(ev)


def test_forwarding_never_double_wraps():
    fw = ("<134>May 14 09:12:44 fw01 CEF:0|Fortinet|FortiGate|7.2.5|13|traffic denied|7|src=203.0.113.7 "
          "dst=10.0.0.5 act=deny")
    falcon_line = _syslog(connector_cef(JSON_EVENT))
    for data in (fw.encode(), falcon_line):
        ev = _fields(data)
        for fmt in ("cef", "leef", "leef1"):
            out = _render(fmt, ev).decode()
            assert out.count("CEF:") + out.count("LEEF:") == 1, out
            assert "Relay|SOC Relay" not in out or ev.fields["vendor"] != "CrowdStrike"
    out = _render("leef", _fields(falcon_line)).decode()
    assert "LEEF:2.0|CrowdStrike|FalconHost|1.0|DetectionSummaryEvent|" in out


def test_passthrough_keeps_the_line_byte_for_byte(tmp_path):
    from relay import kinds
    from relay.config import loads
    cfg = loads(f"""
[relay]
state_dir = "{tmp_path}"
metrics_address = ""
[sources.in]
type = "udp"
address = "127.0.0.1:0"
[sinks.q]
type = "file"
path = "{tmp_path}/out.log"
format = "leef"
passthrough_cef_leef = true
[routes.all]
match = "true"
sinks = ["q"]
""")
    render = kinds.sink("file").renderer(cfg.sinks["q"])
    line = _syslog(connector_cef(JSON_EVENT)) + b"  "
    assert render(_fields(line), ["all"]) == line
    plain = _fields(b"<13>May 14 09:12:44 h app: hello")
    assert render(plain, ["all"]).startswith(b"<") and b"LEEF:2.0|Relay|SOC Relay" in render(plain, ["all"])


def test_passthrough_on_the_qradar_http_preset(tmp_path):
    """The HTTP Receiver preset honours ``passthrough_cef_leef`` too: the CEF line as it came in
    is the row's body line (CR/LF folded as for every line), other events are rendered."""
    from relay import kinds
    from relay.config import loads
    cfg = loads(f"""
[relay]
state_dir = "{tmp_path}"
metrics_address = ""
[sources.in]
type = "udp"
address = "127.0.0.1:0"
[sinks.q]
type = "http"
preset = "qradar_http"
url = "http://127.0.0.1:1/"
format = "leef"
passthrough_cef_leef = true
[routes.all]
match = "true"
sinks = ["q"]
""")
    render = kinds.sink("http").renderer(cfg.sinks["q"])
    line = _syslog(connector_cef(JSON_EVENT))
    row = orjson.loads(render(_fields(line), ["all"]))
    assert row["body"] == line.decode()
    plain = orjson.loads(render(_fields(b"<13>May 14 09:12:44 h app: hello"), ["all"]))
    assert "LEEF:2.0|Relay|SOC Relay" in plain["body"]

"""RhythmX SigmaIncident normaliser and the shared canonical-schema helpers."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest

from parsers.event import Event, FORMAT_RFC5424
from parsers.rhythmx import RhythmxConfig, matches, normalise
from parsers.schema import (
    SEVERITIES, SEVERITY_TO_CEF, SEVERITY_TO_LEEF, SEVERITY_TO_SYSLOG, iso_utc, log_fields, parse_time, severity_from_score, severity_from_syslog, time_pair, to_score,
)

SAMPLES = Path(__file__).resolve().parents[1] / "examples" / "samples" / "sigma_incidents.log"

CANONICAL = ("kind", "vendor", "product", "id", "dedup_key", "name", "description", "risk_score",
             "severity", "status", "occurred", "occurred_unix", "src_ip", "dst_ip", "host", "user",
             "tactic", "technique", "url", "extra")

SD = {"id": "INC-7601d999", "actor": "jdoe", "entity": "Primary Site", "status": "OPEN",
      "risk_score": "82", "alarm_count": "12", "sigma_alert_count": "3", "threat_case_count": "1",
      "related_case_ids": "C-11,C-12"}
BODY = {"incident_id": "INC-7601d999", "risk_score": 82,
        "risk_breakdown": {"alarm_volume": 18, "sigma_severity": 22},
        "mitre_tactics": ["Credential Access", "Lateral Movement"],
        "timeline": {"first_alarm_time": "2026-03-13T03:58:11Z"}}


def make(sd=SD, body=BODY, msgid="created", msg=None, sd_id="incident@32473",
         timestamp="2026-03-13T04:30:00.123Z", time_unix=1773376200.123, severity=1,
         app_name="SigmaIncident") -> Event:
    """An Event as the RFC 5424 parser would build it (built by hand)."""
    e = Event(b"", FORMAT_RFC5424)
    e.pri, e.facility, e.severity, e.version = 17 * 8 + severity, 17, severity, 1
    e.timestamp, e.time_unix = timestamp, time_unix
    e.hostname, e.app_name, e.procid, e.msgid = "rx-01", app_name, "4242", msgid
    e.sd = None if sd is None else {sd_id: dict(sd)}
    if msg is None and body is not None:
        msg = orjson.dumps(body).decode()
    e.msg = msg
    e.raw = b"<137>1 synthetic " + (msg or "").encode("utf-8", "surrogateescape")
    return e


# ---------------------------------------------------------------------------
# the default shape
# ---------------------------------------------------------------------------

def test_default_shape_fields():
    e = normalise(make())
    f = e.fields
    for k in CANONICAL:
        assert k in f, k
    assert f["kind"] == "incident" and f["vendor"] == "RhythmX" and f["product"] == "SigmaIncident"
    assert f["id"] == "INC-7601d999"
    assert f["dedup_key"] == "rhythmx:INC-7601d999"
    assert f["event"] == "created"
    assert f["risk_score"] == 82 and isinstance(f["risk_score"], int)
    assert f["severity"] == "critical"          # 80-100 band
    assert f["status"] == "open"
    assert f["occurred"] == "2026-03-13T04:30:00.123Z"
    assert f["occurred_unix"] == pytest.approx(1773376200.123)
    assert f["user"] == "jdoe" and f["src_ip"] is None
    assert f["tactic"] == "Credential Access"
    x = f["extra"]
    assert x["actor"] == "jdoe" and x["entity"] == "Primary Site"
    assert x["alarm_count"] == 12 and x["sigma_alert_count"] == 3 and x["threat_case_count"] == 1
    assert x["related_case_ids"] == ["C-11", "C-12"]
    assert x["risk_breakdown"] == {"alarm_volume": 18, "sigma_severity": 22}
    assert x["mitre_tactics"] == ["Credential Access", "Lateral Movement"]
    assert x["timeline"]["first_alarm_time"] == "2026-03-13T03:58:11Z"
    assert e.body == BODY
    assert e.notes is None
    assert f["description"] == ("SigmaIncident created for jdoe at Primary Site: risk score 82, "
                                "12 alarms, 3 sigma alerts, 1 threat cases")
    assert "=" not in f["description"]


def test_counts_are_ints_for_numeric_rules():
    f = normalise(make()).fields
    # a rule "extra.alarm_count > 9" must compare numbers, not strings ("12" < "9")
    assert f["extra"]["alarm_count"] > 9


def test_matches():
    assert matches(make())
    assert matches(make(app_name="other"))                  # SD element identifies it too
    assert not matches(make(app_name="sshd", sd=None))
    assert not matches(make(app_name="sshd", sd={"x": "1"}, sd_id="other@1"))


# ---------------------------------------------------------------------------
# missing and disagreeing parts
# ---------------------------------------------------------------------------

def test_body_absent():
    e = normalise(make(body=None))
    f = e.fields
    assert e.body is None
    assert f["id"] == "INC-7601d999" and f["risk_score"] == 82 and f["severity"] == "critical"
    assert "risk_breakdown" not in f["extra"]
    assert e.notes is None                          # a missing body is normal, not a problem


def test_body_malformed_becomes_note():
    e = normalise(make(body=None, msg='{"incident_id":"INC-7601d999","risk_score":'))
    assert e.body is None
    assert e.fields["id"] == "INC-7601d999" and e.fields["risk_score"] == 82
    assert any("not valid JSON" in n for n in e.notes)


def test_body_not_json_object():
    e = normalise(make(body=None, msg="free text incident summary"))
    assert e.fields["risk_score"] == 82
    assert any("not a JSON object" in n for n in e.notes)
    e = normalise(make(body=None, msg="[1, 2]"))
    assert any("not a JSON object" in n for n in e.notes)
    assert e.body is None


def test_body_with_bom_and_non_utf8_does_not_fail():
    e = normalise(make(body=None, msg="\ufeff" + orjson.dumps(BODY).decode()))
    assert e.body == BODY and e.notes is None
    latin1 = '{"incident_id":"INC-7601d999","assigned_analyst":"J\udce9r\udcf4me"}'  # ISO-8859-1 bytes
    e = normalise(make(body=None, msg=latin1))
    assert e.fields["id"] == "INC-7601d999"
    assert e.body["assigned_analyst"] == "J\ufffdr\ufffdme"
    assert any("not UTF-8" in n for n in e.notes)
    e = normalise(make(body=None, msg='{"incident_id":"\udcff'))         # bad bytes AND bad JSON
    assert e.body is None and any("not valid JSON" in n for n in e.notes)


def test_sd_and_body_disagree_sd_wins_and_notes():
    body = dict(BODY, incident_id="INC-other", risk_score=60, status="IN_PROGRESS", alarm_count=8,
                actor="someone", related_case_ids=["C-99"])
    e = normalise(make(body=body))
    f = e.fields
    assert f["id"] == "INC-7601d999" and f["dedup_key"] == "rhythmx:INC-7601d999"
    assert f["risk_score"] == 82 and f["severity"] == "critical"
    assert f["status"] == "open"
    assert f["extra"]["alarm_count"] == 12 and f["extra"]["actor"] == "jdoe"
    assert f["extra"]["related_case_ids"] == ["C-11", "C-12"]
    joined = "\n".join(e.notes)
    for what in ("incident id", "risk_score SD=82 body=60", "status", "alarm_count SD=12 body=8",
                 "actor", "related_case_ids"):
        assert what in joined, what


def test_same_status_different_case_is_not_a_disagreement():
    e = normalise(make(body=dict(BODY, status="open")))
    assert e.notes is None


def test_body_fills_what_sd_lacks():
    sd = {"id": "INC-7601d999", "actor": "jdoe"}
    body = dict(BODY, status="IN_PROGRESS", alarm_count=5, entity_name="HQ",
                related_case_ids="C-1, C-2", actor_type="user")
    f = normalise(make(sd=sd, body=body)).fields
    assert f["risk_score"] == 82 and f["status"] == "in_progress"
    assert f["extra"]["alarm_count"] == 5 and f["extra"]["entity"] == "HQ"
    assert f["extra"]["related_case_ids"] == ["C-1", "C-2"]


def test_no_sd_at_all_uses_body():
    e = normalise(make(sd=None))
    f = e.fields
    assert f["id"] == "INC-7601d999" and f["risk_score"] == 82
    assert any("no structured data" in n for n in e.notes)


def test_no_id_anywhere_dedup_from_digest():
    sd = dict(SD)
    del sd["id"]
    body = dict(BODY)
    del body["incident_id"]
    e1 = normalise(make(sd=sd, body=body))
    e2 = normalise(make(sd=sd, body=body))
    e3 = normalise(make(sd=sd, body=dict(body, risk_score=1)))
    assert e1.fields["id"] is None
    assert e1.fields["dedup_key"].startswith("rhythmx:raw:")
    assert e1.fields["dedup_key"] == e2.fields["dedup_key"] != e3.fields["dedup_key"]
    assert any("no incident id" in n for n in e1.notes)


def test_malformed_params_are_notes_not_failures():
    sd = dict(SD, risk_score="high", alarm_count="twelve")
    e = normalise(make(sd=sd, body=None))
    f = e.fields
    assert f["risk_score"] is None
    assert f["severity"] == "critical"          # from syslog PRI severity 1 (alert)
    assert "alarm_count" not in f["extra"]
    joined = "\n".join(e.notes)
    assert "risk_score='high'" in joined and "alarm_count='twelve'" in joined
    assert "severity from syslog PRI" in joined


def test_risk_level_fallback_and_clamping():
    sd = dict(SD)
    del sd["risk_score"]
    f = normalise(make(sd=sd, body={"incident_id": "INC-7601d999", "risk_level": "Medium"})).fields
    assert f["risk_score"] is None and f["severity"] == "medium"
    f = normalise(make(sd=dict(SD, risk_score="150"), body=None)).fields
    assert f["risk_score"] == 100
    f = normalise(make(sd=dict(SD, risk_score="69.6"), body=None)).fields
    assert f["risk_score"] == 70 and f["severity"] == "high"


def test_repeated_param_first_value_with_note():
    sd = dict(SD, actor=["jdoe", "other"])
    e = normalise(make(sd=sd, body=None))
    assert e.fields["extra"]["actor"] == "jdoe"
    assert any("repeated" in n for n in e.notes)


def test_unknown_sd_params_kept_in_extra():
    e = normalise(make(sd=dict(SD, assigned_analyst="asmith", risk_level="critical"), body=None))
    assert e.fields["extra"]["assigned_analyst"] == "asmith"
    assert e.fields["extra"]["risk_level"] == "critical"


def test_status_from_event_when_absent():
    sd = {k: v for k, v in SD.items() if k != "status"}
    assert normalise(make(sd=sd, body=None, msgid="closed")).fields["status"] == "closed"
    assert normalise(make(sd=sd, body=None, msgid="created")).fields["status"] == "open"
    assert normalise(make(sd=sd, body=None, msgid="updated")).fields["status"] is None


def test_actor_roles():
    f = normalise(make(sd=dict(SD, actor="10.20.30.40"), body=None)).fields
    assert f["src_ip"] == "10.20.30.40" and f["user"] is None
    f = normalise(make(sd=dict(SD, actor="2001:db8::7"), body=None)).fields
    assert f["src_ip"] == "2001:db8::7"
    f = normalise(make(sd=dict(SD, actor="FILESRV-02"), body=dict(BODY, actor_type="host"))).fields
    assert f["host"] == "FILESRV-02" and f["user"] is None
    f = normalise(make(sd=dict(SD, actor="10.0.0.1"), body=dict(BODY, actor_type="user"))).fields
    assert f["user"] == "10.0.0.1" and f["src_ip"] is None


def test_mitre_dicts():
    body = dict(BODY, mitre_tactics=[{"id": "TA0006", "name": "Credential Access"}],
                mitre_techniques=[{"id": "T1110", "name": "Brute Force"}])
    f = normalise(make(body=body)).fields
    assert (f["tactic"], f["tactic_id"]) == ("Credential Access", "TA0006")
    assert (f["technique"], f["technique_id"]) == ("Brute Force", "T1110")
    f = normalise(make(body=dict(BODY, mitre_techniques=["T1021"]))).fields
    assert f["technique_id"] == "T1021" and f["technique"] is None


def test_configurable_names():
    cfg = RhythmxConfig(sd_id="inc@99999", id_param="incident_id", risk_param="score",
                        alarm_count_param="alarms", app_name="RhythmXIncident", dedup_prefix="rx")
    sd = {"incident_id": "INC-42", "score": "45", "alarms": "3", "status": "OPEN"}
    e = make(sd=sd, sd_id="inc@99999", body=None, app_name="RhythmXIncident")
    assert matches(e, cfg) and not matches(e)
    f = normalise(e, cfg).fields
    assert f["id"] == "INC-42" and f["dedup_key"] == "rx:INC-42"
    assert f["risk_score"] == 45 and f["severity"] == "medium"
    assert f["extra"]["alarm_count"] == 3


def test_other_pen_accepted_with_note():
    e = normalise(make(sd_id="incident@12345", body=None))
    assert e.fields["id"] == "INC-7601d999"
    assert any("incident@12345" in n for n in e.notes)


def test_lifecycle_shares_dedup_key():
    keys = {normalise(make(msgid=m, sd=dict(SD, status=s), body=None)).fields["dedup_key"]
            for m, s in (("created", "OPEN"), ("updated", "IN_PROGRESS"), ("closed", "CLOSED"))}
    assert keys == {"rhythmx:INC-7601d999"}


def test_occurred_from_offset_timestamp_and_microseconds():
    f = normalise(make(timestamp="2026-03-13T05:30:00.123456+01:00", time_unix=1773376200.123456,
                       body=None)).fields
    assert f["occurred"] == "2026-03-13T04:30:00.123Z"
    f = normalise(make(timestamp="2026-03-13T04:30:00.5Z", time_unix=1773376200.5, body=None)).fields
    assert f["occurred"] == "2026-03-13T04:30:00.500Z"
    f = normalise(make(timestamp="2026-03-13T04:30:00.123456Z", time_unix=1773376200.123456, body=None)).fields
    assert f["occurred"] == "2026-03-13T04:30:00.123Z"
    f = normalise(make(timestamp="2026-03-13T04:30:00Z", time_unix=1773376200.0, body=None)).fields
    assert f["occurred"] == "2026-03-13T04:30:00.000Z"
    f = normalise(make(timestamp=None, time_unix=None, body=dict(BODY, timestamp="2026-03-13T04:30:00Z"))).fields
    assert f["occurred_unix"] == 1773376200.0


# ---------------------------------------------------------------------------
# severity scale and time helpers (shared by all normalisers)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("score,band", [
    (0, "informational"), (1, "informational"), (19, "informational"), (20, "low"), (30, "low"),
    (39, "low"), (40, "medium"), (59, "medium"), (60, "high"), (70, "high"), (79, "high"),
    (80, "critical"), (82, "critical"), (90, "critical"), (100, "critical"), (35, "low"),
])
def test_severity_bands(score, band):
    assert severity_from_score(score) == band


def test_encoder_tables_cover_every_band():
    for t in (SEVERITY_TO_SYSLOG, SEVERITY_TO_CEF, SEVERITY_TO_LEEF):
        assert set(t) == set(SEVERITIES)
    assert [SEVERITY_TO_LEEF[s] for s in SEVERITIES] == [1, 3, 5, 7, 9]
    assert [SEVERITY_TO_SYSLOG[s] for s in SEVERITIES] == [6, 5, 4, 3, 2]


@pytest.mark.parametrize("sev,band", [(0, "critical"), (1, "critical"), (2, "critical"), (3, "high"),
                                      (4, "medium"), (5, "low"), (6, "informational"), (7, "informational")])
def test_syslog_severity_mapping(sev, band):
    assert severity_from_syslog(sev) == band


def test_to_score():
    assert to_score("82") == 82 and to_score(82.4) == 82 and to_score("-3") == 0
    assert to_score(None) is None and to_score("x") is None and to_score(True) is None


@pytest.mark.parametrize("value,iso", [
    ("2026-03-13T04:30:00.123Z", "2026-03-13T04:30:00.123Z"),
    ("2026-03-13T04:30:00Z", "2026-03-13T04:30:00.000Z"),
    ("2026-03-13T06:30:00.123+02:00", "2026-03-13T04:30:00.123Z"),
    ("2026-03-12T23:30:00.123-05:00", "2026-03-13T04:30:00.123Z"),
    ("2026-03-13T04:30:00.123+0000", "2026-03-13T04:30:00.123Z"),
    ("2023-11-03T18:01:23.995794943Z", "2023-11-03T18:01:23.995Z"),    # ns: truncated
    ("2024-08-19T18:44:01.1Z", "2024-08-19T18:44:01.100Z"),
    ("2026-03-13T04:30:00", "2026-03-13T04:30:00.000Z"),                 # naive = UTC
    (1773376200123, "2026-03-13T04:30:00.123Z"),                         # epoch ms
    (1773376200, "2026-03-13T04:30:00.000Z"),                            # epoch s
    (1773376200.123, "2026-03-13T04:30:00.123Z"),
    ("1699034413", "2023-11-03T18:00:13.000Z"),                          # digits string, s
    ("1686845212400", "2023-06-15T16:06:52.400Z"),                       # digits string, ms
    (1773376200123456, "2026-03-13T04:30:00.123Z"),                      # us
    (1773376200123456789, "2026-03-13T04:30:00.123Z"),                   # ns
    (datetime(2026, 3, 13, 6, 30, 0, 123000, tzinfo=timezone(timedelta(hours=2))), "2026-03-13T04:30:00.123Z"),
])
def test_time_pair(value, iso):
    got_iso, unix = time_pair(value)
    assert got_iso == iso
    assert unix == pytest.approx(datetime.fromisoformat(iso).timestamp(), abs=1e-3)


@pytest.mark.parametrize("value", [None, "", "not a time", "2026-13-40T00:00:00Z", True, float("nan"), [1]])
def test_time_pair_rejects(value):
    assert time_pair(value) == (None, None)


def test_times_compare_as_numbers_not_strings():
    # lexically "…T05:00:00+01:00" > "…T04:30:00Z", but it is 30 minutes EARLIER
    a = parse_time("2026-03-13T05:00:00+01:00")
    b = parse_time("2026-03-13T04:30:00Z")
    assert "2026-03-13T05:00:00+01:00" > "2026-03-13T04:30:00Z"
    assert a < b
    assert iso_utc(a) == "2026-03-13T04:00:00.000Z"


def test_log_fields_generic_mapping():
    e = make(sd=None, body=None, msg="disk full", msgid=None, app_name="kernel", severity=3)
    f = log_fields(e)
    assert f["kind"] == "log" and f["severity"] == "high" and f["risk_score"] == 70
    assert f["host"] == "rx-01" and f["name"] == "kernel" and f["description"] == "disk full"
    assert f["dedup_key"].startswith("log:") and f["extra"]["syslog_severity"] == 3
    assert f["occurred"] == "2026-03-13T04:30:00.123Z"


# ---------------------------------------------------------------------------
# samples, end to end from raw bytes (needs parsers.rfc5424)
# ---------------------------------------------------------------------------

def _sample_events():
    from parsers.rfc5424 import parse      # lands separately
    lines = SAMPLES.read_bytes().splitlines()
    assert len(lines) == 7
    return [parse(line) for line in lines]


def test_samples_end_to_end():
    evs = _sample_events()
    for e in evs:
        assert e.format == "rfc5424" and matches(e)
        normalise(e)
        assert set(CANONICAL) <= set(e.fields)
        assert e.fields["severity"] in SEVERITIES
    high, low, upd, closed, nobody, bad, disagree = (e.fields for e in evs)
    assert (high["risk_score"], high["severity"], high["status"], high["event"]) == (82, "critical", "open", "created")
    assert high["extra"]["risk_breakdown"]["sigma_severity"] == 22
    assert high["url"] == "https://rhythmx.example.com/incidents/INC-7601d999"
    assert (low["risk_score"], low["severity"]) == (35, "low")
    assert low["src_ip"] == "10.20.30.40" and low["tactic"] == "Reconnaissance" and low["tactic_id"] == "TA0043"
    assert low["occurred"] == "2026-03-13T04:02:17.004Z"        # +01:00 normalised to UTC
    assert (upd["event"], upd["status"], upd["risk_score"]) == ("updated", "in_progress", 88)
    assert (closed["event"], closed["status"]) == ("closed", "closed")
    assert high["dedup_key"] == upd["dedup_key"] == closed["dedup_key"] == "rhythmx:INC-7601d999"
    assert upd["occurred_unix"] > high["occurred_unix"]
    assert nobody["risk_score"] == 71 and evs[4].body is None and evs[4].notes is None
    assert bad["risk_score"] == 64 and any("not valid JSON" in n for n in evs[5].notes)
    assert disagree["risk_score"] == 75 and disagree["status"] == "open"
    assert any("risk_score SD=75 body=60" in n for n in evs[6].notes)


def test_raw_default_shape_end_to_end():
    from parsers.rfc5424 import parse
    raw = (b'<137>1 2026-03-13T04:30:00.123Z rx-01 SigmaIncident 4242 created [incident@32473 '
           b'id="INC-7601d999" actor="jdoe" entity="Primary Site" status="OPEN" risk_score="82" '
           b'alarm_count="12" sigma_alert_count="3" threat_case_count="1" related_case_ids="C-11,C-12"] '
           b'{"incident_id":"INC-7601d999","risk_score":82,"risk_breakdown":{"a":1},"mitre_tactics":["Execution"]}')
    e = parse(raw)
    assert e.facility == 17
    f = normalise(e).fields
    assert f["dedup_key"] == "rhythmx:INC-7601d999" and f["risk_score"] == 82
    assert f["extra"]["related_case_ids"] == ["C-11", "C-12"] and f["tactic"] == "Execution"

"""Golden-file rule tests (relay/tools/cases): the shipped example cases, failures that name
the field, --update, JUnit XML, watch mode, config [[tests]] and the case format."""
from __future__ import annotations

import io
import json
import re
import shutil
import threading
import time
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.tools import cases as C
from relay.config import ConfigError, load, loads

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = ROOT / "examples" / "relay.toml"
EXAMPLE_CASES = ROOT / "examples" / "cases"
SIGMA = (ROOT / "examples" / "samples" / "sigma_incidents.log").read_text().splitlines()
SUMMARY = re.compile(r"^\d+ passed, \d+ failed$")


def config_copy(tmp_path: Path, name: str = "relay.toml", **subs) -> Path:
    """examples/relay.toml with ``old -> new`` replacements (each must apply)."""
    text = EXAMPLE_CONFIG.read_text()
    for old, new in subs.values():
        assert old in text, old
        text = text.replace(old, new)
    p = tmp_path / name
    p.write_text(text)
    return p


def cases_copy(tmp_path: Path) -> Path:
    d = tmp_path / "cases"
    shutil.copytree(EXAMPLE_CASES, d)
    return d


def run(config: Path, cases_dir: Path, **kw) -> tuple[int, str]:
    out = io.StringIO()
    rc = C.cli_cases(str(config), str(cases_dir), out=out, **kw)
    return rc, out.getvalue()


def results_for(config: Path, cases_dir: Path) -> dict[str, C.Result]:
    runner = C.Runner(load(config))
    return {r.case.name: r for r in C.run_cases(runner, C.load_cases(cases_dir))}


# ============================================================================ the example set

def test_example_cases_all_pass():
    res = results_for(EXAMPLE_CONFIG, EXAMPLE_CASES)
    assert len(res) >= 8
    bad = {n: r.problems for n, r in res.items() if not r.ok}
    assert not bad
    # the set covers what the issue asks for
    names = set(res)
    assert {"sigma/high_risk_created", "sigma/low_risk_created", "sigma/updated", "sigma/closed",
            "falcon/detections", "errors/parse_error", "capture/tcp_mixed"} <= names
    assert res["capture/tcp_mixed"].labels == ["frame 1", "frame 2", "frame 3"]
    assert [r["ok"] for r in res["errors/parse_error"].records] == [False]
    falcon = res["falcon/detections"].records
    assert [r["event"]["risk_score"] for r in falcon] == [30, 70, 90, 10]   # low, high, critical, audit
    every = [e for r in res.values() for e in r.case.expectations()]
    assert all(e for e in every) and len(every) == sum(len(r.records) for r in res.values())


def test_example_cases_cli_summary_and_exit_0():
    rc, out = run(EXAMPLE_CONFIG, EXAMPLE_CASES)
    assert rc == 0, out
    assert SUMMARY.match(out.splitlines()[-1]) and out.splitlines()[-1].endswith(" 0 failed")


# ============================================================================ breaking the config

def test_threshold_70_to_90_fails_the_high_risk_cases_naming_the_route(tmp_path):
    cfg = config_copy(tmp_path, t=("risk_score >= 70", "risk_score >= 90"))
    res = results_for(cfg, EXAMPLE_CASES)
    failed = {n for n, r in res.items() if not r.ok}
    # 82, 88 and 71 fall under 90; low risk and Falcon are unaffected
    assert failed == {"sigma/high_risk_created", "sigma/threshold_edge", "capture/tcp_mixed", "sigma/updated",
                      "sigma/closed"}
    text = "\n".join(res["sigma/high_risk_created"].problems)
    assert 'routes: expected ["high_risk", "archive"], actual ["archive"]' in text
    assert "risk_score >= 90  ->  false    [risk_score = 82 from fields]" in text
    assert "sinks.qradar: expected delivery" in text
    edge = "\n".join(res["sigma/threshold_edge"].problems)
    assert "message 1 (input 1)" in edge and "message 2" not in edge
    rc, out = run(cfg, EXAMPLE_CASES)
    assert rc == 1 and out.splitlines()[-1] == f"{len(res) - 5} passed, 5 failed"


def test_leef_vendor_change_fails_with_the_header_field_named(tmp_path):
    cfg = config_copy(tmp_path, v=('leef_vendor = "Relay"', 'leef_vendor = "Acme"'))
    res = results_for(cfg, EXAMPLE_CASES)
    # Falcon events keep the Falcon DSM identity, so only RhythmX outputs change
    assert res["falcon/detections"].ok
    r = res["sigma/high_risk_created"]
    assert not r.ok
    text = "\n".join(r.problems)
    assert "sinks.qradar.output: differs" in text
    assert 'header.vendor: expected "Relay", actual "Acme"' in text
    assert "-LEEF:2.0|Relay|SOC Relay|1.0|created|" in text and "+LEEF:2.0|Acme|SOC Relay|1.0|created|" in text
    assert 'sinks.qradar.fields.header.vendor: expected "Relay", actual "Acme"' in text


def test_format_leef_to_cef_fails_naming_the_encoding_and_the_attribute(tmp_path):
    cfg = config_copy(tmp_path, f=('format = "leef" ', 'format = "cef" '))
    r = results_for(cfg, EXAMPLE_CASES)["sigma/high_risk_created"]
    text = "\n".join(r.problems)
    assert "encoding: expected LEEF 2.0, actual CEF 0" in text
    assert 'sinks.qradar.fields.sev: expected "9", actual missing' in text
    assert "+CEF:0|Relay|SOC Relay|1.0|created|" in text


def test_mapping_change_is_caught_field_by_field(tmp_path):
    """A route that sends the low-risk incident to QRadar too (a mapping/route edit)."""
    cfg = config_copy(tmp_path, r=('match = \'vendor == "CrowdStrike"\'',
                                   'match = \'vendor == "CrowdStrike" or risk_score < 40\''))
    r = results_for(cfg, EXAMPLE_CASES)["sigma/low_risk_created"]
    text = "\n".join(r.problems)
    assert 'routes: expected ["archive"], actual ["falcon", "archive"]' in text
    assert "route falcon (matched, not expected)" in text
    assert 'sinks.qradar: expected nothing, but routes ["falcon", "archive"] send the event to this sink' in text


# ============================================================================ --update

def test_update_blesses_a_deliberate_change(tmp_path):
    cases = cases_copy(tmp_path)
    cfg = config_copy(tmp_path, t=("risk_score >= 70", "risk_score >= 90"))
    before = (cases / "sigma" / "high_risk_created.toml").read_text()
    rc, out = run(cfg, cases, update=True)
    assert rc == 0, out
    # the diff is shown first, then what was written
    assert out.index("routes: expected") < out.index("updated: ")
    assert "updated: " + str(cases / "sigma" / "high_risk_created.toml") in out
    assert "still failing" not in out
    after = (cases / "sigma" / "high_risk_created.toml").read_text()
    assert after != before
    assert after.startswith("# RhythmX SigmaIncident, risk 82")          # the header comment is kept
    data = tomllib.loads(after)
    assert data["routes"] == ["archive"]
    assert data["sinks"]["qradar"] == {"receives": False}
    assert data["fields"]["risk_score"] == 82                              # the author's subset is kept
    edge = tomllib.loads((cases / "sigma" / "threshold_edge.toml").read_text())
    assert edge["message"][0]["routes"] == ["archive"] and edge["message"][1]["routes"] == ["archive"]
    assert len(edge["inputs"]) == 2
    # blessed: passes against the changed config, fails against the original
    assert run(cfg, cases) == (0, run(cfg, cases)[1])
    rc, out = run(EXAMPLE_CONFIG, cases)
    assert rc == 1 and "sigma/high_risk_created" in out
    untouched = (cases / "sigma" / "low_risk_created.toml").read_text()
    assert untouched == (EXAMPLE_CASES / "sigma" / "low_risk_created.toml").read_text()


def test_update_keeps_conditions_that_hold_and_replaces_the_broken_ones(tmp_path):
    cases = cases_copy(tmp_path)
    cfg = config_copy(tmp_path, v=('leef_vendor = "Relay"', 'leef_vendor = "Acme"'))
    rc, out = run(cfg, cases, update=True)
    assert rc == 0, out
    q = tomllib.loads((cases / "sigma" / "high_risk_created.toml").read_text())["sinks"]["qradar"]
    assert q["fields"]["riskScore"] == {"exists": True}
    assert q["fields"]["header.vendor"] == "Acme"
    assert "LEEF:2.0|Acme|SOC Relay|1.0|created|" in q["output"]


def test_new_input_without_expected_file(tmp_path):
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "one.log").write_text(SIGMA[1] + "\n")
    rc, out = run(EXAMPLE_CONFIG, cases)
    assert rc == 1 and "NEW   one" in out and "run with --update to create one.toml" in out
    rc, out = run(EXAMPLE_CONFIG, cases, update=True)
    assert rc == 0, out
    data = tomllib.loads((cases / "one.toml").read_text())
    assert data["parse"] == "ok" and data["routes"] == ["archive"]
    assert data["fields"]["risk_score"] == 35 and data["fields"]["id"] == "INC-1c0ffee5"
    assert set(data["sinks"]) == {"archive"} and data["sinks"]["archive"]["output"].startswith('{"event":')
    assert run(EXAMPLE_CONFIG, cases)[0] == 0


def test_update_json_expected_file(tmp_path):
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "c.log").write_text(SIGMA[0] + "\n")
    (cases / "c.json").write_text(json.dumps({"routes": ["archive"], "fields": {"risk_score": 1, "host": None}}))
    rc, out = run(EXAMPLE_CONFIG, cases)
    assert rc == 1 and "fields.risk_score: expected 1, actual 82" in out
    assert run(EXAMPLE_CONFIG, cases, update=True)[0] == 0
    data = json.loads((cases / "c.json").read_text())
    assert data == {"routes": ["high_risk", "archive"], "fields": {"risk_score": 82, "host": None}}


# ============================================================================ JUnit

def _check_junit_shape(path: Path) -> ET.Element:
    """The common JUnit XML shape (the Jenkins/Surefire schema): testsuites > testsuite >
    testcase, with <failure>/<error> children; the counts agree with the elements."""
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert suites
    total = fails = errs = 0
    for s in suites:
        for a in ("name", "tests", "failures", "errors", "skipped", "time", "timestamp"):
            assert a in s.attrib, a
        tcs = s.findall("testcase")
        assert int(s.get("tests")) == len(tcs)
        assert int(s.get("failures")) == sum(1 for t in tcs if t.find("failure") is not None)
        assert int(s.get("errors")) == sum(1 for t in tcs if t.find("error") is not None)
        assert int(s.get("skipped")) == sum(1 for t in tcs if t.find("skipped") is not None)
        float(s.get("time"))
        time.strptime(s.get("timestamp"), "%Y-%m-%dT%H:%M:%S")
        for t in tcs:
            assert t.get("name") and t.get("classname")
            float(t.get("time"))
            assert len([c for c in t if c.tag in ("failure", "error", "skipped")]) <= 1
            for c in t:
                assert c.tag in ("failure", "error", "skipped", "system-out", "system-err")
                if c.tag in ("failure", "error"):
                    assert c.get("message") and c.get("type") and c.text
        total += len(tcs)
        fails += int(s.get("failures"))
        errs += int(s.get("errors"))
    assert int(root.get("tests")) == total and int(root.get("failures")) == fails
    assert int(root.get("errors")) == errs
    return root


def test_junit_xml_validates_and_carries_the_diff(tmp_path):
    cases = cases_copy(tmp_path)
    (cases / "broken.toml").write_text("input = 'x'\nrotues = []\n")          # a typo: an error, not a failure
    (cases / "ctl.toml").write_text("input = \"<13>1 - h a - - - \\u0001 ctl\"\nroutes = [\"nope\"]\n")
    cfg = config_copy(tmp_path, t=("risk_score >= 70", "risk_score >= 90"))
    junit = tmp_path / "out" / "junit.xml"
    junit.parent.mkdir()
    rc, out = run(cfg, cases, junit=str(junit))
    assert rc == 1
    root = _check_junit_shape(junit)
    suite = root.find("testsuite")
    assert suite.get("tests") == str(len(C.load_cases(cases)))
    assert suite.get("failures") == "6" and suite.get("errors") == "1"
    by_name = {(t.get("classname"), t.get("name")): t for t in suite.iter("testcase")}
    hr = by_name[("relay.cases.sigma", "high_risk_created")]
    assert "risk_score >= 90" in hr.find("failure").text
    assert hr.find("failure").get("type") == "mismatch"
    err = by_name[("relay.cases", "broken")].find("error")
    assert "rotues" in err.get("message")
    assert by_name[("relay.cases.sigma", "low_risk_created")].find("failure") is None
    assert out.splitlines()[-1] == f"{int(suite.get('tests')) - 7} passed, 7 failed"


def test_junit_all_passing(tmp_path):
    junit = tmp_path / "j.xml"
    rc, _ = run(EXAMPLE_CONFIG, EXAMPLE_CASES, junit=str(junit))
    assert rc == 0
    root = _check_junit_shape(junit)
    assert root.get("failures") == "0" and root.get("errors") == "0" and int(root.get("tests")) >= 8


# ============================================================================ the case format

def write_case(d: Path, name: str, text: str) -> Path:
    p = d / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def one(tmp_path, text, config=EXAMPLE_CONFIG, name="c.toml") -> C.Result:
    d = tmp_path / "cs"
    d.mkdir(exist_ok=True)
    write_case(d, name, text)
    runner = C.Runner(load(config))
    (res,) = [runner.run(c) for c in C.load_cases(d) if c.name == Path(name).with_suffix("").as_posix()]
    return res


HIGH = SIGMA[0]


def toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string for these inputs


@pytest.mark.parametrize("cond,ok", [
    ('sev = "9"', True), ('sev = 9', False), ('sev = { eq = "9" }', True), ('sev = { ne = "9" }', False),
    ('riskScore = { exists = true }', True), ('nope = { exists = true }', False),
    ('nope = { absent = true }', True), ('sev = { absent = true }', False),
    ('usrName = { matches = "^jd" }', True), ('usrName = { matches = "^x" }', False),
    ('description = { contains = "risk score 82" }', True), ('description = { contains = "99" }', False),
    ('riskScore = { ge = 82, lt = 83 }', True), ('riskScore = { gt = 82 }', False),
    ('sev = { in = ["7", "9"] }', True), ('sev = { in = ["1", "3"] }', False),
    ('"header.event_id" = "created"', True), ('header = { product = "SOC Relay" }', True),
    ('"syslog.hostname" = "rx-01"', True), ('"syslog.pri" = 138', True), ('"syslog.pri" = 137', False),
])
def test_leef_field_conditions(tmp_path, cond, ok):
    r = one(tmp_path, f"input = {toml_str(HIGH)}\n[sinks.qradar.fields]\n{cond}\n")
    assert r.ok is ok, r.problems
    if not ok:
        assert r.problems[1].strip().startswith("sinks.qradar.fields.")


def test_canonical_fields_subset_nested_and_lists(tmp_path):
    ok = one(tmp_path, f"input = {toml_str(HIGH)}\n[fields]\nrisk_score = 82\nextra.actor = \"jdoe\"\n"
                       "extra.related_case_ids = [\"C-11\", \"C-12\"]\n\"extra.risk_breakdown.recency\" = 2\n"
                       "src_ip = { absent = true }\nextra.mitre_tactics = { contains = \"Lateral Movement\" }\n"
                       "[syslog]\nstructured_data.\"incident@32473\".actor = \"jdoe\"\nprocid = \"4242\"\n")
    assert ok.ok, ok.problems
    bad = one(tmp_path, f"input = {toml_str(HIGH)}\n[fields]\nrisk_score = \"82\"\nextra.related_case_ids = [\"C-11\"]\n"
                        "\"extra.risk_breakdown.recency\" = 3\n")
    text = "\n".join(bad.problems)
    assert 'fields.risk_score: expected "82", actual 82' in text                  # types are not coerced
    assert 'fields.extra.related_case_ids: expected ["C-11"], actual ["C-11", "C-12"]' in text
    assert "fields.extra.risk_breakdown.recency: expected 3, actual 2" in text


def test_parse_error_expectations(tmp_path):
    bad = "<13>1 2003-10-11T22:14:15 host app - - - no offset"
    assert one(tmp_path, f"input = {toml_str(bad)}\nparse = \"error\"\nerror = \"TIME-OFFSET\"\nerror_offset = 6\n").ok
    r = one(tmp_path, f"input = {toml_str(bad)}\nparse = \"ok\"\n")
    assert "parse: expected ok, actual error at byte 6: TIMESTAMP needs a TIME-OFFSET" in r.problems[1]
    r = one(tmp_path, f"input = {toml_str(HIGH)}\nerror = \"x\"\n")
    assert "error: expected a parse error containing \"x\", but the message parsed" in "\n".join(r.problems)
    r = one(tmp_path, f"input = {toml_str(bad)}\nerror_offset = 7\n")
    assert "error_offset: expected 7, actual 6" in "\n".join(r.problems)


def test_message_count_must_match(tmp_path):
    r = one(tmp_path, f"inputs = [{toml_str(HIGH)}, {toml_str(SIGMA[1])}]\n[[message]]\nparse = \"ok\"\n")
    assert not r.ok and "the input has 2 message(s), the expected file describes 1" in r.problems[0]


def test_unknown_route_and_sink_names_are_reported(tmp_path):
    r = one(tmp_path, f"input = {toml_str(HIGH)}\nroutes = [\"high_riks\", \"archive\"]\n[sinks.qradr]\nreceives = false\n")
    text = "\n".join(r.problems)
    assert 'routes: no route named "high_riks" in the config' in text
    assert "sinks.qradr: no sink named 'qradr' in the config" in text


@pytest.mark.parametrize("text,where", [
    ("input = 'x'\nrotues = []\n", "rotues: unknown key"),
    ("input = 'x'\nparse = 'fine'\n", "parse: must be \"ok\" or \"error\""),
    ("input = 'x'\n[sinks.qradar]\noutptu = 'x'\n", "sinks.qradar.outptu: unknown key"),
    ("input = 'x'\n[fields]\nx = { matches = '(' }\n", "fields.x.matches: bad regular expression"),
    ("input = 'x'\n[[message]]\nroutes = 'a'\n", "message[0].routes: must be an array"),
    ("input = 'x'\nroutes = []\n[[message]]\n", "routes: with [[message]] tables"),
    ("routes = []\n", "no input"),
    ("input = 'x'\nreceived = 'yesterday'\n", "received: 'yesterday' is not an RFC 3339 time"),
    ("input = 'x\n", "not valid TOML"),
])
def test_malformed_case_files_are_errors_naming_the_key(tmp_path, text, where):
    r = one(tmp_path, text)
    assert r.status == "error" and where in r.problems[0], r.problems


def test_input_file_and_framed_inline(tmp_path):
    d = tmp_path / "cs"
    write_case(d, "data/two.log", HIGH + "\r\n\n" + SIGMA[1] + "\n")
    r = one(tmp_path, "input_file = 'data/two.log'\n[[message]]\nroutes = ['high_risk', 'archive']\n"
                      "[[message]]\nroutes = ['archive']\n")
    assert r.ok and r.labels == ["line 1", "line 3"], r.problems
    framed = f"{len(HIGH.encode())} {HIGH}{SIGMA[1]}\n"
    r = one(tmp_path, f"framed = true\ninput = {toml_str(framed)}\n[[message]]\nfields.risk_score = 82\n"
                      "[[message]]\nfields.risk_score = 35\n")
    assert r.ok and r.labels == ["frame 1", "frame 2"], r.problems


def test_framing_problems_must_be_expected(tmp_path):
    d = tmp_path / "cs"
    d.mkdir()
    (d / "cap.bin").write_bytes(f"{len(HIGH.encode())} {HIGH}".encode() + b"99999999999 x")
    (d / "cap.toml").write_text("[[message]]\nroutes = ['high_risk', 'archive']\n")
    runner = C.Runner(load(EXAMPLE_CONFIG))
    (r,) = C.run_cases(runner, C.load_cases(d))
    assert not r.ok and r.framing and "framing_problems: expected [], actual" in r.problems[0]
    (d / "cap.toml").write_text(f"framing_problems = {json.dumps(r.framing)}\n"
                                "[[message]]\nroutes = ['high_risk', 'archive']\n")
    (r,) = C.run_cases(runner, C.load_cases(d))
    assert r.ok, r.problems


def test_received_controls_rfc3164_year(tmp_path):
    bsd = "<34>Oct 11 22:14:15 mymachine su: 'su root' failed"
    r = one(tmp_path, f"input = {toml_str(bsd)}\nreceived = 2024-10-12T00:00:00Z\n"
                      "[syslog]\ntime_unix = 1728684855.0\n")
    assert r.ok, r.problems
    r = one(tmp_path, f"input = {toml_str(bsd)}\n[syslog]\ntime_unix = 1728684855.0\n")   # default: 2026
    assert not r.ok and "syslog.time_unix: expected 1728684855.0, actual 1760220855" in r.problems[1]


def test_source_lenient_applies(tmp_path):
    lax = "<13>1 2009-10-16T11:51:56 host app - - - no offset"
    cfg = config_copy(tmp_path, l=("lenient = false", "lenient = true"))
    assert one(tmp_path, f"input = {toml_str(lax)}\nsource = 'syslog_tcp'\nparse = 'ok'\n", config=cfg).ok
    assert not one(tmp_path, f"input = {toml_str(lax)}\nsource = 'syslog_udp'\nparse = 'ok'\n", config=cfg).ok
    r = one(tmp_path, f"input = {toml_str(lax)}\nsource = 'nope'\n", config=cfg)
    assert r.status == "error" and "no source named 'nope'" in r.problems[0]


def test_peer_is_passed(tmp_path):
    """A message without a HOSTNAME: the LEEF header names the sender, from the case's peer."""
    cfg = loads('''
[sinks.q]
type = "file"
path = "q.log"
[routes.all]
match = 'true'
sinks = ["q"]
''', base_dir=tmp_path)
    runner = C.Runner(cfg)
    case = C.Case("t", None, "config", data={"input": "<13>Oct 11 22:14:15 su: x", "peer": "192.0.2.7:514",
                                              "routes": ["all"]})
    r = runner.run(case)
    assert r.ok, r.problems
    assert " 192.0.2.7 su - - - LEEF:2.0|" in r.records[0]["sinks"]["q"]


XSOAR_SINK = """
[sinks.soar]
type = "xsoar"
url = "https://xsoar.example.com"
api_key_env = "RELAY_TEST_XSOAR_KEY"

[routes.soar]
match = 'kind == "incident" and risk_score >= 70'
sinks = ["soar"]
"""


def xsoar_config(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("RELAY_TEST_XSOAR_KEY", "k")
    p = tmp_path / "x.toml"
    p.write_text(EXAMPLE_CONFIG.read_text() + XSOAR_SINK)
    load(p)
    return p


def test_xsoar_body_conditions_and_exact_body(tmp_path, monkeypatch):
    cfg = xsoar_config(tmp_path, monkeypatch)
    r = one(tmp_path, f"input = {toml_str(HIGH)}\nroutes = ['high_risk', 'archive', 'soar']\n"
                      "[sinks.soar.fields]\n\"CustomFields.relaydedupkey\" = \"rhythmx:INC-7601d999\"\n"
                      "severity = 3\nlabels = { contains = { type = \"User\", value = \"jdoe\" } }\n"
                      "\"labels[0].type\" = \"Instance\"\n", config=cfg)
    assert r.ok, r.problems
    r = one(tmp_path, f"input = {toml_str(HIGH)}\n[sinks.soar.fields]\n"
                      "\"CustomFields.relaydedupkey\" = \"rhythmx:INC-other\"\n", config=cfg)
    assert 'sinks.soar.fields.CustomFields.relaydedupkey: expected "rhythmx:INC-other", actual "rhythmx:INC-7601d999"' \
        in "\n".join(r.problems)
    # a new case pins the body; a changed body is reported path by path
    d = tmp_path / "cs2"
    d.mkdir()
    (d / "x.log").write_text(HIGH + "\n")
    assert run(cfg, d, update=True)[0] == 0
    body = json.loads(tomllib.loads((d / "x.toml").read_text())["sinks"]["soar"]["body"])
    assert body["CustomFields"]["relaydedupkey"] == "rhythmx:INC-7601d999"
    assert run(cfg, d)[0] == 0
    cfg2 = tmp_path / "x2.toml"
    cfg2.write_text(cfg.read_text().replace('url = "https://xsoar.example.com"',
                                            'url = "https://xsoar.example.com"\nincident_type = "Relay Incident"'))
    load(cfg2)
    rc, out = run(cfg2, d)
    assert rc == 1 and 'type: expected "Unclassified", actual "Relay Incident"' in out
    assert '-  "type": "Unclassified",' in out


def test_render_failure_is_a_readable_problem(tmp_path, monkeypatch):
    from relay.tools.testparse import ConfigView
    monkeypatch.setattr(ConfigView, "__init__", ConfigView.__init__)
    cfg = load(EXAMPLE_CONFIG)
    runner = C.Runner(cfg)

    def boom(ev, routes):
        raise ValueError("no way")
    runner.view.pipeline.renderers["qradar"] = boom
    case = C.Case("t", None, "config", data={"input": HIGH, "routes": ["high_risk", "archive"]})
    assert runner.run(case).ok
    case.data["sinks"] = {"qradar": {"output": "x"}}
    r = runner.run(case)
    assert "sinks.qradar: render failed: ValueError: no way (the relay would dead-letter it)" in r.problems[1]
    case.data["sinks"] = {"qradar": {"error": "no way"}}
    assert runner.run(case).ok


def test_metrics_are_not_touched():
    from relay.metrics import REGISTRY
    before = REGISTRY.value("relay_routed_total", route="high_risk")
    results_for(EXAMPLE_CONFIG, EXAMPLE_CASES)
    assert REGISTRY.value("relay_routed_total", route="high_risk") == before


# ============================================================================ the TOML writer

@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40),
       st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12))
def test_toml_writer_round_trips_any_string(s, key):
    data = {"input": s, "fields": {key: s, "n": [1, 2.5, True]}, "sinks": {"q": {"body": s, "output": s}}}
    assert tomllib.loads(C.dumps_toml(data, header="# h")) == data


def test_toml_writer_conditions_inline_and_messages():
    data = {"message": [{"routes": ["a"], "fields": {"x": {"absent": True}, "y": None, "e": {"a": {"b": 1}}}},
                        {"sinks": {"s": {"receives": False}}}]}
    text = C.dumps_toml(data)
    assert "x = { absent = true }" in text and "y = { absent = true }" in text and text.count("[[message]]") == 2
    back = tomllib.loads(text)
    assert back["message"][0]["fields"]["e"] == {"a": {"b": 1}}
    assert back["message"][1]["sinks"]["s"] == {"receives": False}


# ============================================================================ config [[tests]]

CONFIG_TESTS = [
    {"name": "high risk to qradar", "input": HIGH, "routes": ["high_risk", "archive"],
     "sinks": {"qradar": {"fields": {"sev": "9"}}}},
    {"name": "low risk archived only", "input": SIGMA[1], "routes": ["archive"],
     "sinks": {"qradar": {"receives": False}}},
]


def test_config_tests_pass_and_fail():
    cfg = load(EXAMPLE_CONFIG)
    res = C.run_config_tests(cfg, CONFIG_TESTS)
    assert [r.ok for r in res] == [True, True]
    assert [r.case.name for r in res] == ["[[tests]] 1: high risk to qradar", "[[tests]] 2: low risk archived only"]
    broken = [dict(CONFIG_TESTS[0], routes=["archive"])]
    (r,) = C.run_config_tests(cfg, broken)
    assert not r.ok and 'routes: expected ["archive"], actual ["high_risk", "archive"]' in "\n".join(r.problems)


@pytest.mark.parametrize("tests,where", [
    ([{"input": "x", "rotues": []}], "tests[0].rotues"),
    ([{"routes": []}], "tests[0]: needs input"),
    ([{"input": "x", "sinks": {"nope": {"receives": False}}}], "tests[0].sinks.nope"),
    ([{"input": "x", "source": "nope"}], "tests[0].source"),
    ({"input": "x"}, "tests: must be an array"),
])
def test_validate_config_tests_names_the_key(tests, where):
    cfg = load(EXAMPLE_CONFIG)
    with pytest.raises(ConfigError) as e:
        C.validate_config_tests(tests, "relay.toml", cfg)
    assert where in str(e.value)


def test_startup_tests_refuse_on_failure():
    cfg = load(EXAMPLE_CONFIG)
    cfg.tests = [dict(CONFIG_TESTS[0], routes=["archive"])]
    assert C.startup_tests(cfg) == []                      # not asked for
    cfg.relay.run_tests_at_start = True
    lines = C.startup_tests(cfg)
    assert lines[0].startswith("config tests failed (0 passed, 1 failed)")
    assert any("routes: expected" in ln for ln in lines)
    cfg.tests = CONFIG_TESTS
    assert C.startup_tests(cfg) == []


def test_cli_config_tests_output_and_junit(tmp_path):
    cfg = load(EXAMPLE_CONFIG)
    cfg.tests = CONFIG_TESTS + [dict(CONFIG_TESTS[1], routes=["falcon"])]
    out = io.StringIO()
    assert C.cli_config_tests(cfg, junit=str(tmp_path / "j.xml"), out=out) == 1
    assert out.getvalue().splitlines()[-1] == "2 passed, 1 failed"
    _check_junit_shape(tmp_path / "j.xml")


def test_config_file_with_tests_tables(tmp_path):
    p = tmp_path / "t.toml"
    p.write_text(EXAMPLE_CONFIG.read_text().replace("[relay]\n", "[relay]\nrun_tests_at_start = true\n", 1) + f"""
[[tests]]
name = "high risk"
input = {toml_str(HIGH)}
routes = ["high_risk", "archive"]
sinks.qradar.fields = {{ sev = "9", riskScore = {{ exists = true }} }}
""")
    cfg = load(p)
    assert cfg.relay.run_tests_at_start is True and len(cfg.tests) == 1
    assert C.startup_tests(cfg) == []
    assert all(r.ok for r in C.run_config_tests(cfg))
    bad = tmp_path / "bad.toml"
    bad.write_text(p.read_text().replace("routes = [", "rotues = ["))
    with pytest.raises(ConfigError, match=r"tests\[0\]\.rotues"):
        C.load_config(bad)      # relay validate, test-parse --config, --cases
    # relay run: the daemon's loader leaves [[tests]] to the tools; with run_tests_at_start the
    # startup check refuses the config with the same message
    lines = C.startup_tests(load(bad))
    assert len(lines) == 1 and "tests[0].rotues" in lines[0]


# ============================================================================ watch

class Out(io.StringIO):
    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()

    def write(self, s):
        with self.lock:
            return super().write(s)

    def text(self):
        with self.lock:
            return self.getvalue()


def wait_for(out: Out, needle: str, start: int = 0, timeout: float = 15.0) -> str:
    t = time.monotonic() + timeout
    while time.monotonic() < t:
        s = out.text()[start:]
        if needle in s:
            return s
        time.sleep(0.02)
    raise AssertionError(f"{needle!r} not seen in:\n{out.text()[start:]}")


def bump(p: Path, text: str) -> None:
    st_ = p.stat() if p.exists() else None
    p.write_text(text)
    if st_ is not None:  # a new mtime even on a coarse clock
        ns = max(time.time_ns(), st_.st_mtime_ns + 10_000_000)
        import os
        os.utime(p, ns=(ns, ns))


def test_watch_reruns_what_changed_and_shows_only_changes(tmp_path):
    cases = cases_copy(tmp_path)
    cfg = config_copy(tmp_path)
    out = Out()
    stop = threading.Event()
    rc = []
    t = threading.Thread(target=lambda: rc.append(C.watch(cfg, cases, out=out, interval=0.05, stop=stop.is_set)))
    t.start()
    try:
        wait_for(out, "0 failed; watching")
        # 1. a case edited: only that case is re-run and shown
        mark = len(out.text())
        p = cases / "sigma" / "low_risk_created.toml"
        bump(p, p.read_text().replace("risk_score = 35", "risk_score = 36", 1))
        s = wait_for(out, "1 failed\n", mark)
        assert "FAIL  sigma/low_risk_created" in s and "fields.risk_score: expected 36, actual 35" in s
        assert "(was ok)" in s and "high_risk_created" not in s
        # 2. the config edited: everything re-run, only changed results shown
        mark = len(out.text())
        bump(cfg, cfg.read_text().replace("risk_score >= 70", "risk_score >= 90"))
        s = wait_for(out, "6 failed\n", mark)
        assert "FAIL  sigma/high_risk_created" in s and "FAIL  sigma/threshold_edge" in s
        assert "sigma/low_risk_created" not in s and "falcon/detections" not in s
        # 3. a config that does not load: reported, last results kept
        mark = len(out.text())
        bump(cfg, cfg.read_text().replace("[relay]", "[relay\n", 1))
        wait_for(out, "config error (keeping the last results)", mark)
        # 4. fixed again, and a new input file appears
        mark = len(out.text())
        bump(cfg, EXAMPLE_CONFIG.read_text())
        wait_for(out, "1 failed\n", mark)
        mark = len(out.text())
        bump(cases / "extra.log", SIGMA[1] + "\n")
        s = wait_for(out, "2 failed\n", mark)
        assert "NEW   extra" in s and "(new case)" in s
    finally:
        stop.set()
        t.join(10)
    assert rc == [1]


def test_watch_ends_on_ctrl_c(tmp_path):
    calls = []

    def sleep(_):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
    out = io.StringIO()
    assert C.watch(EXAMPLE_CONFIG, EXAMPLE_CASES, out=out, interval=0, sleep=sleep) == 0
    assert out.getvalue().endswith("watch ended\n") and len(calls) == 3


# ============================================================================ the command line

@click.command()
@click.option("-c", "--config", "config", type=click.Path(dir_okay=False))
@click.option("--cases", "cases_dir", type=click.Path(file_okay=False), default=None)
@click.option("--update", is_flag=True)
@click.option("--junit", "junit", type=click.Path(dir_okay=False), default=None)
@click.option("--watch", "watch_", is_flag=True)
def _test_parse(config, cases_dir, update, junit, watch_):
    """The --cases part of `relay test-parse`, as the proposed relay/cli.py change wires it."""
    import sys
    if cases_dir is None:
        raise click.UsageError("this wrapper only runs --cases")
    if config is None:
        raise click.UsageError("--cases needs --config")
    sys.exit(C.cli_cases(config, cases_dir, update=update, junit=junit, watch_mode=watch_))


def test_cli_wrapper_exit_codes(tmp_path):
    r = CliRunner().invoke(_test_parse, ["--config", str(EXAMPLE_CONFIG), "--cases", str(EXAMPLE_CASES)])
    assert r.exit_code == 0 and r.output.splitlines()[-1].endswith(" passed, 0 failed")
    cfg = config_copy(tmp_path, t=("risk_score >= 70", "risk_score >= 90"))
    r = CliRunner().invoke(_test_parse, ["--config", str(cfg), "--cases", str(EXAMPLE_CASES),
                                         "--junit", str(tmp_path / "j.xml")])
    assert r.exit_code == 1 and SUMMARY.match(r.output.splitlines()[-1])
    _check_junit_shape(tmp_path / "j.xml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[relay\n")
    r = CliRunner().invoke(_test_parse, ["--config", str(bad), "--cases", str(EXAMPLE_CASES)])
    assert r.exit_code == 2 and "not valid TOML" in r.output
    r = CliRunner().invoke(_test_parse, ["--config", str(EXAMPLE_CONFIG), "--cases", str(tmp_path / "none")])
    assert r.exit_code == 2 and "is not a directory" in r.output
    r = CliRunner().invoke(_test_parse, ["--config", str(EXAMPLE_CONFIG), "--cases", str(EXAMPLE_CASES),
                                         "--watch", "--update"])
    assert r.exit_code == 2

"""`relay test-parse` through the real console script: schema, exit codes, inputs."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.harness import relay_cli

ROOT = Path(__file__).resolve().parents[1]

SIGMA = ('<137>1 2026-03-13T04:30:00.123Z rx-01 SigmaIncident 4242 created [incident@32473 '
         'id="INC-7601d999" actor="jdoe" risk_score="82"] {"incident_id":"INC-7601d999"}')
BSD = "<34>Oct 11 22:14:15 mymachine su[123]: 'su root' failed"
BAD = "<13>1 2003-10-11T22:14:15 host app - - - no offset"

SYSLOG_KEYS = {"format", "pri", "facility", "severity", "version", "timestamp", "time_unix", "hostname",
               "app_name", "procid", "msgid", "structured_data", "msg"}


def run(*args, stdin: bytes | None = None, check_rc: int | None = None):
    p = relay_cli("test-parse", *args, input=stdin, timeout=60,
                  env={**os.environ, "PYTHONUTF8": "1"})
    if check_rc is not None:
        assert p.returncode == check_rc, (p.returncode, p.stdout, p.stderr)
    return p


def records(p) -> list[dict]:
    return [json.loads(line) for line in p.stdout.decode().splitlines()]


def test_json_schema_valid_message():
    p = run("--json", SIGMA, check_rc=0)
    (rec,) = records(p)
    assert rec["input"] == SIGMA and rec["ok"] is True and rec["error"] is None
    sl = rec["syslog"]
    assert SYSLOG_KEYS <= set(sl)
    assert sl["format"] == "rfc5424" and sl["pri"] == 137 and sl["facility"] == 17 and sl["severity"] == 1
    assert sl["timestamp"] == "2026-03-13T04:30:00.123Z" and isinstance(sl["time_unix"], float)
    assert sl["procid"] == "4242" and sl["msgid"] == "created"
    assert sl["structured_data"] == {"incident@32473": {"id": "INC-7601d999", "actor": "jdoe", "risk_score": "82"}}


def test_json_nilvalues_are_null():
    (rec,) = records(run("--json", "<13>1 - - - - - -", check_rc=0))
    sl = rec["syslog"]
    for k in ("timestamp", "time_unix", "hostname", "app_name", "procid", "msgid", "structured_data", "msg"):
        assert sl[k] is None, k


def test_json_invalid_message_exit_1():
    p = run("--json", SIGMA, BAD, check_rc=1)
    good, bad = records(p)
    assert good["ok"] is True
    assert bad["ok"] is False and bad["syslog"] is None
    assert bad["error"]["offset"] == 6 and "OFFSET" in bad["error"]["reason"]


def test_repeated_params_are_lists():
    (rec,) = records(run("--json", '<13>1 - - - - - [origin ip="192.0.2.1" ip="192.0.2.129"]', check_rc=0))
    assert rec["syslog"]["structured_data"] == {"origin": {"ip": ["192.0.2.1", "192.0.2.129"]}}


def test_rfc3164_detected():
    (rec,) = records(run("--json", BSD, check_rc=0))
    assert rec["syslog"]["format"] == "rfc3164"
    assert rec["syslog"]["app_name"] == "su" and rec["syslog"]["procid"] == "123"


def test_lenient_flag():
    run("--json", BAD, check_rc=1)
    (rec,) = records(run("--json", "--lenient", BAD, check_rc=0))
    assert rec["notes"]


def test_human_output_has_caret_under_failing_byte():
    p = run(BAD, check_rc=1)
    out = p.stdout.decode()
    assert "PARSE ERROR at byte 6" in out
    lines = out.splitlines()
    i = next(n for n, line in enumerate(lines) if line.strip() == BAD)
    caret = lines[i + 1]
    assert caret.index("^") == lines[i].index(BAD) + 6


def test_human_output_shows_header_table_and_sd_tree():
    out = run(SIGMA, check_rc=0).stdout.decode()
    assert "hostname   rx-01" in out and "incident@32473" in out and "risk_score = '82'" in out


def test_file_one_per_line(tmp_path):
    f = tmp_path / "in.log"
    f.write_bytes((SIGMA + "\r\n" + BSD + "\n\n").encode())
    assert [r["ok"] for r in records(run("--json", "--file", str(f), check_rc=0))] == [True, True]


def test_stdin():
    p = run("--json", stdin=(SIGMA + "\n" + BAD + "\n").encode(), check_rc=1)
    assert [r["ok"] for r in records(p)] == [True, False]


def test_framed_stream_octet_and_lf(tmp_path):
    a = SIGMA.encode()
    multi = b"<13>1 - h app - - - line one\nline two"
    stream = str(len(a)).encode() + b" " + a + BSD.encode() + b"\n" + str(len(multi)).encode() + b" " + multi
    f = tmp_path / "cap.bin"
    f.write_bytes(stream)
    recs = records(run("--json", "--framed", "--file", str(f), check_rc=0))
    assert [r["syslog"]["format"] for r in recs] == ["rfc5424", "rfc3164", "rfc5424"]
    assert recs[2]["syslog"]["msg"] == "line one\nline two"


def test_usage_errors_exit_2(tmp_path):
    assert run("--no-such-flag").returncode == 2
    f = tmp_path / "x"
    f.write_text(SIGMA)
    assert run("--file", str(f), SIGMA).returncode == 2
    assert run("--file", str(tmp_path / "missing")).returncode == 2
    empty = tmp_path / "empty"
    empty.write_text("")
    assert run("--file", str(empty)).returncode == 2


def test_non_utf8_input_is_json_safe():
    p = run("--json", stdin=b"<13>1 - - - - - - caf\xe9\n", check_rc=0)
    (rec,) = records(p)
    assert rec["syslog"]["msg"] == "caf\ufffd"


def test_version():
    p = relay_cli("--version")
    from relay import __version__
    assert p.returncode == 0 and p.stdout.decode().strip() == f"relay {__version__}"


@pytest.mark.parametrize("sample", sorted((ROOT / "examples" / "samples").glob("*.log")), ids=lambda p: p.name)
def test_bundled_samples_parse(sample):
    recs = records(run("--json", "--file", str(sample)))
    assert recs
    bad = [r for r in recs if not r["ok"]]
    assert not bad, bad


def test_framed_partial_frame_at_end_is_reported(tmp_path):
    f = tmp_path / "cut.bin"
    f.write_bytes(b"<13>1 - h a - - - one\n99 <13>1 - h a - - - short")
    p = run("--json", "--framed", "--file", str(f), check_rc=1)
    assert [r["ok"] for r in records(p)] == [True]
    assert b"partial_at_close" in p.stderr


def test_config_shows_routes_and_exact_sink_outputs_without_credentials(tmp_path):
    cfg = tmp_path / "relay.toml"
    cfg.write_text('''
[sources.tcp]
type = "tcp"
address = "127.0.0.1:5514"
[routes.high]
match = 'app_name == "SigmaIncident" and risk_score >= 70'
sinks = ["qradar", "xsoar"]
[routes.all]
match = 'format exists'
sinks = ["archive"]
[sinks.qradar]
type = "syslog"
address = "127.0.0.1:6514"
format = "cef"
[sinks.xsoar]
type = "xsoar"
url = "https://xsoar.example.com"
api_key_env = "RELAY_TEST_UNSET_KEY"
incident_type = "SigmaIncident"
dedup_field = "rhythmxincidentid"
[sinks.archive]
type = "file"
path = "out.jsonl"
format = "json"
''')
    env_free = SIGMA.replace('risk_score="82"', 'risk_score="82"')
    (rec,) = records(run("--json", "--config", str(cfg), env_free, check_rc=0))
    assert rec["routes"] == ["high", "all"]
    assert rec["sinks"]["qradar"].split(" ", 7)[-1].startswith("CEF:0|Relay|SOC Relay|1.0|created|")
    body = rec["sinks"]["xsoar"]
    assert body["type"] == "SigmaIncident" and body["CustomFields"]["rhythmxincidentid"] == "rhythmx:INC-7601d999"
    assert isinstance(body["rawJSON"], str)
    assert set(rec["sinks"]) == {"qradar", "xsoar", "archive"}
    assert rec["route_checks"]["high"][-1] == "rule -> true"
    human = run("--config", str(cfg), SIGMA, check_rc=0).stdout.decode()
    assert "risk_score >= 70  ->  true" in human and "CEF:0|" in human
    # validate still insists on the credential
    p = relay_cli("validate", cfg, timeout=60)
    assert p.returncode == 2 and b"RELAY_TEST_UNSET_KEY is not set" in p.stderr

"""Config loading: every error names the file, the key path and what is wrong."""
from __future__ import annotations

from pathlib import Path

import pytest

from relay.config import ConfigError, load, loads, parse_address
from tests.harness import relay_cli

ROOT = Path(__file__).resolve().parents[1]

GOOD = '''
[sources.tcp]
type = "tcp"
address = "127.0.0.1:5514"
[routes.high]
match = 'risk_score >= 70'
sinks = ["out"]
[sinks.out]
type = "file"
path = "out.leef"
'''


def test_example_config_is_valid():
    cfg = load(ROOT / "examples" / "relay.toml")
    assert set(cfg.sources) == {"syslog_udp", "syslog_tcp"}
    assert cfg.sinks["qradar"].format == "leef" and cfg.sinks["qradar"].retry.base == 60.0
    assert cfg.routes["high_risk"].rule is not None
    assert not cfg.warnings


def test_defaults_and_inheritance():
    cfg = loads(GOOD + '[relay.retry]\nbase = 5\n[sinks.out.retry]\nmax_attempts = 0\n', file="x.toml",
                base_dir=Path("/tmp"))
    r = cfg.sinks["out"].retry
    assert (r.base, r.factor, r.cap, r.max_attempts) == (5.0, 2.0, 3600.0, 0)
    assert cfg.sinks["out"].path == Path("/tmp/out.leef")
    assert cfg.relay.metrics_address == ("127.0.0.1", 9514)


@pytest.mark.parametrize("extra,path,words", [
    ('[sinks.out2]\ntype = "file"\npath = "x"\nformat = "leff"\n', "sinks.out2.format", "'leff' is not one of"),
    ('[sources.u]\ntype = "udp"\naddress = "127.0.0.1"\n', "sources.u.address", "host:port"),
    ('[sources.u]\ntype = "udp"\naddress = "127.0.0.1:99999"\n', "sources.u.address", "0-65535"),
    ('[sources.u]\ntype = "smtp"\naddress = "127.0.0.1:1"\n', "sources.u.type", "not one of"),
    ('[sources.u]\ntype = "udp"\naddress = "127.0.0.1:1"\nallow = ["10.0.0.0/33"]\n', "sources.u.allow", "not an IP network"),
    ('[sources.u]\ntype = "udp"\naddress = "127.0.0.1:1"\nrecieve_buffer = 5\n', "sources.u.recieve_buffer", "unknown key"),
    ('[sources.u]\ntype = "tcp"\naddress = "127.0.0.1:5514"\n', "sources.u.address", "already used"),
    ('[sources.t]\ntype = "tls"\naddress = "127.0.0.1:6514"\n', "sources.t.tls_cert", "is required"),
    ('[routes.r]\nmatch = "risk_score >="\nsinks = ["out"]\n', "routes.r.match", "rule syntax error"),
    ('[routes.r]\nmatch = "true"\nsinks = ["nope"]\n', "routes.r.sinks", "no sink named 'nope'"),
    ('[relay]\nmax_attempts = 3\n', "relay.max_attempts", "unknown key"),
    ('[relay.queue]\nfull_policy = "drop_oldest"\n', "relay.queue.full_policy", "not one of"),
    ('[relay.retry]\nbase = -1\n', "relay.retry.base", "greater than 0"),
    ('[relay.retry]\nbase = "60"\n', "relay.retry.base", "must be a float"),
    ('[sinks.s]\ntype = "syslog"\naddress = "127.0.0.1:514"\nprotocol = "udp"\nframing = "lf"\n', "sinks.s.framing", "UDP"),
    ('[sinks.s]\ntype = "syslog"\nformat = "leef"\n', "sinks.s.address", "is required"),
    ('[sinks.s]\ntype = "file"\npath = "x"\nleef_delimiter = "="\n', "sinks.s.leef_delimiter", "cannot be a LEEF delimiter"),
    ('bogus = 1\n', "sinks.out.bogus", "unknown key"),  # TOML: it lands in the last table
])
def test_errors_name_file_key_and_problem(extra, path, words):
    with pytest.raises(ConfigError) as ei:
        loads(GOOD + extra, file="relay.toml")
    msg = str(ei.value)
    assert msg.startswith(f"relay.toml: {path}: "), msg
    assert words in msg, msg


def test_unknown_top_level_table():
    with pytest.raises(ConfigError) as ei:
        loads("[sinkz.x]\ntype = 1\n" + GOOD, file="t.toml")
    assert str(ei.value).startswith("t.toml: sinkz: unknown key")


def test_toml_syntax_error():
    with pytest.raises(ConfigError) as ei:
        loads("[sources\n", file="bad.toml")
    assert str(ei.value).startswith("bad.toml: not valid TOML")


def test_rule_error_points_at_column():
    with pytest.raises(ConfigError) as ei:
        loads(GOOD.replace("risk_score >= 70", "risk_score >= and x"), file="r.toml")
    assert "^" in str(ei.value)


def test_warnings_for_unused_sink():
    cfg = loads(GOOD + '[sinks.unused]\ntype = "file"\npath = "u"\n', file="w.toml")
    assert any("sinks.unused" in w for w in cfg.warnings)


def test_leef_hex_delimiter():
    cfg = loads(GOOD.replace('path = "out.leef"', 'path = "out.leef"\nleef_delimiter = "x09"'))
    assert cfg.sinks["out"].render.leef_delimiter == "\t"


@pytest.mark.parametrize("text,expected", [("127.0.0.1:514", ("127.0.0.1", 514)), ("[::1]:6514", ("::1", 6514)),
                                           ("host.example:1", ("host.example", 1))])
def test_parse_address(text, expected):
    assert parse_address(text) == expected


def test_allowlist_matching():
    cfg = loads(GOOD.replace('address = "127.0.0.1:5514"', 'address = "127.0.0.1:5514"\nallow = ["10.0.0.0/8", "::1/128"]'))
    src = cfg.sources["tcp"]
    assert src.allowed("10.1.2.3") and src.allowed("::1") and src.allowed("::ffff:10.0.0.1")
    assert not src.allowed("127.0.0.1") and not src.allowed("garbage")


def test_validate_command(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(GOOD)
    p = relay_cli("validate", good, timeout=60)
    assert p.returncode == 0 and b"valid: 1 source(s), 1 route(s), 1 sink(s)" in p.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace('"file"', '"fil"'))
    p = relay_cli("validate", bad, timeout=60)
    assert p.returncode == 2 and f"{bad}: sinks.out.type:".encode() in p.stderr
    p = relay_cli("validate", tmp_path / "missing.toml", timeout=60)
    assert p.returncode == 2 and b"file not found" in p.stderr

"""The http source's pure parts: the map language and presets (parsers/jsonmap.py), body decoding
with error positions (parsers/httpbody.py), and `relay test-parse` / golden cases on JSON bodies."""
from __future__ import annotations

import json
import os

import orjson
import pytest

from parsers.httpbody import BodyError, decode
from parsers.jsonmap import MapError, compile_map, parse_path
from parsers.qradar import normalise_offense
from tests.harness import relay_cli

#: seed 002 / apis-wave2.md 6.2: what a Sekoia.io playbook's "Create incident on XSOAR" block posts
SEKOIA = {"name": "Brute force on VPN", "occurred": "2025-05-14T09:12:44Z", "alertId": "AL13426AYUU",
          "alertUrl": "https://app.sekoia.io/sic/alerts/AL13426AYUU", "urgency": 63,
          "events": [{"timestamp": "2025-05-14T09:12:40Z", "source.ip": "203.0.113.7", "host.name": "vpn-gw-01"}]}
#: seed 003: the QRadar offense webhook payload
OFFENSE = {"offense_id": 12345, "start_time": "2024-05-15T14:30:00Z", "severity": 8,
           "description": "Multiple Failed Logins", "offense_source": "10.0.1.100", "categories": ["Access"],
           "magnitude": 4, "domain_id": 0}


def test_sekoia_preset_maps_the_playbook_body():
    f, notes = compile_map("sekoia")(SEKOIA, 1.0)
    assert (f["vendor"], f["id"], f["dedup_key"]) == ("Sekoia", "AL13426AYUU", "sekoia:AL13426AYUU")
    assert (f["name"], f["risk_score"], f["severity"]) == ("Brute force on VPN", 63, "high")
    assert (f["src_ip"], f["host"], f["url"]) == ("203.0.113.7", "vpn-gw-01", SEKOIA["alertUrl"])
    assert f["occurred"] == "2025-05-14T09:12:44.000Z" and f["occurred_unix"] == 1747213964.0
    assert f["extra"]["alert_id"] == "AL13426AYUU" and f["extra"]["urgency"] == 63
    assert notes == []
    # the variants apis-wave2.md 6.2 leaves open: urgency an object, events an object, epoch time
    other = dict(SEKOIA, urgency={"current_value": 85, "display": "high"}, events={"source.ip": "198.51.100.9"},
                 occurred=1747213964)
    f2, _ = compile_map("sekoia")(other, 1.0)
    assert (f2["risk_score"], f2["severity"], f2["src_ip"]) == (85, "critical", "198.51.100.9")
    assert f2["occurred_unix"] == 1747213964.0 and f2["dedup_key"] == f["dedup_key"]
    # a body with keys missing is still an event (Sekoia edge case 3: empty events)
    f3, _ = compile_map("sekoia")({"alertId": "AL1", "events": []}, 5.0)
    assert f3["dedup_key"] == "sekoia:AL1" and f3["severity"] == "informational" and f3["occurred_unix"] == 5.0


def test_qradar_offense_webhook_is_the_pollers_event():
    f, _ = compile_map("qradar_offense")(OFFENSE, 1.0)
    polled = normalise_offense(dict(OFFENSE, id=12345))
    assert f["dedup_key"] == polled["dedup_key"] == "qradar:12345"
    assert {k: v for k, v in f.items() if k != "event"} == {k: v for k, v in polled.items() if k != "event"}
    assert (f["event"], f["risk_score"], f["src_ip"]) == ("created", 40, "10.0.1.100")
    closed, _ = compile_map({"preset": "qradar_offense", "console_url": "https://qradar.example"})(
        dict(OFFENSE, status="CLOSED"), 1.0)
    assert closed["event"] == "closed" and closed["url"].startswith("https://qradar.example/console/")


def test_generic_preset_and_an_unmapped_body_kept_whole():
    f, _ = compile_map("generic")({"message": "disk full\non /var", "level": "warning", "host": "h1",
                                   "timestamp": 1747213964123}, 1.0)
    assert (f["name"], f["description"], f["severity"], f["host"]) == ("disk full", "disk full\non /var", "medium", "h1")
    assert f["occurred"] == "2025-05-14T09:12:44.123Z"
    body = {"zzz": [1, 2], "weird key": {"x": None}}
    f, notes = compile_map("generic")(body, 7.0)
    assert orjson.loads(f["description"]) == body and f["occurred_unix"] == 7.0
    assert f["dedup_key"].startswith("http:") and any("whole body" in n for n in notes)
    # the same object in another key order keeps its dedup key
    again, _ = compile_map("generic")({"weird key": {"x": None}, "zzz": [1, 2]}, 8.0)
    assert again["dedup_key"] == f["dedup_key"]


def test_map_language():
    m = compile_map({
        "vendor": "Acme", "product": "EDR", "dedup_key": "acme:{alert.id|alert.uuid}",
        "name": {"template": "{alert.title} on {device.name}"},
        "src_ip": ["alert.src", 'events[0]."source.ip"'],
        "risk_score": {"path": "alert.score", "convert": "int", "default": 50},
        "occurred": {"path": "alert.created_ms", "convert": "epoch_ms"},
        "status": {"path": "alert.state", "convert": "upper"},
        "extra": {"tenant": "customer.name", "n": {"path": "alert.count", "convert": "int"}},
    })
    obj = {"alert": {"uuid": "u-1", "title": "Beacon", "created_ms": 1747213964500, "state": "In Progress",
                     "count": "x"},
           "device": {"name": "pc-9"}, "events": [{"source.ip": "192.0.2.4"}], "customer": {"name": "ACME"}}
    f, notes = m(obj, 1.0)
    assert (f["vendor"], f["product"], f["dedup_key"], f["name"]) == ("Acme", "EDR", "acme:u-1", "Beacon on pc-9")
    assert (f["src_ip"], f["risk_score"], f["severity"], f["status"]) == ("192.0.2.4", 50, "medium", "in_progress")
    assert f["occurred"] == "2025-05-14T09:12:44.500Z"
    assert f["extra"] == {"tenant": "ACME"}
    assert any("extra.n" in n and "not int" in n for n in notes)
    assert parse_path('a[0]."b.c".d') == ("a", 0, "b.c", "d")
    for bad, where in (({"colour": "x"}, "map.colour"), ({"name": {"convert": "int"}}, "map.name"),
                       ({"name": {"path": "a", "convert": "nope"}}, "map.name.convert"),
                       ({"src_ip": "a..b"}, "map.src_ip"), ({"dedup_key": "k:{a"}, "map.dedup_key"),
                       ({"occurred": {"path": "t", "convert": "int"}}, "map.occurred.convert"), ("nope", "map")):
        with pytest.raises(MapError) as e:
            compile_map(bad, "map")
        assert e.value.where == where, (bad, str(e.value))


def _events(body: bytes, fmt: str, **kw):
    return decode(body, fmt, compile_map("generic"), source="s", received=1.0, **kw)


def test_bodies_all_or_nothing_with_positions():
    evs = _events(b'{"message":"a"}\n\n{"message":"b"}\r\n', "ndjson", path="/ingest")
    assert [e.fields["description"] for e in evs] == ["a", "b"] and evs[0].fields["extra"]["http_path"] == "/ingest"
    assert evs[1].raw == b'{"message":"b"}' and evs[0].format == "json" and evs[0].body == {"message": "a"}
    with pytest.raises(BodyError) as e:
        _events(b'{"message":"a"}\n{"message":"b"}\n{"message": oops}\n{"message":"d"}\n', "ndjson")
    assert (e.value.line, e.value.item, e.value.column, e.value.offset) == (3, 3, 13, 44)
    assert "line 3" in str(e.value)
    with pytest.raises(BodyError) as e:
        _events(b'[{"a":1}, 2]', "json")
    assert e.value.item == 2 and e.value.reason == "not_object"
    with pytest.raises(BodyError) as e:
        _events(b'{"a":\n  [1,,2]}', "json")
    assert (e.value.line, e.value.column) == (2, 6)
    with pytest.raises(BodyError) as e:
        _events(b'{"a":"\xff"}', "json")
    assert e.value.reason == "utf8" and e.value.offset == 6
    assert len(_events(b'[{"a":1},{"b":2}]', "json")) == 2


def test_hec_envelopes():
    body = (b'{"time":1747213964.123,"host":"vpn-gw-01","sourcetype":"relay:alert","index":"security",'
            b'"event":{"message":"Brute force","src_ip":"203.0.113.7"},"fields":{"k":"v"}}'
            b' {"event":"plain string event"}\n{"event": 42}')
    evs = _events(body, "hec")
    assert [e.fields["description"] for e in evs] == ["Brute force", "plain string event", "42"]
    f = evs[0].fields
    assert (f["host"], f["product"], f["occurred"]) == ("vpn-gw-01", "relay:alert", "2025-05-14T09:12:44.123Z")
    assert f["extra"]["hec"]["index"] == "security" and evs[0].body["fields"] == {"k": "v"}
    for bad, reason, item in ((b'{"event":"a"}{"time":1}', "hec_event_missing", 2),
                              (b'{"event":""}', "hec_event_blank", 1), (b"[]", "hec_invalid", 1),
                              (b'{"event":"a","fields":{"x":{"y":1}}}', "hec_fields", 1), (b"  ", "hec_no_data", None)):
        with pytest.raises(BodyError) as e:
            _events(bad, "hec")
        assert (e.value.reason, e.value.item) == (reason, item), bad
    raw = _events(b"line one\nline two\n", "hec", hec_raw=True, query={"host": "h9", "sourcetype": "st"})
    assert [(e.fields["description"], e.fields["host"]) for e in raw] == [("line one", "h9"), ("line two", "h9")]


CONFIG = """
[relay]
state_dir = "state"
[sources.alerts]
type = "http"
address = "127.0.0.1:1"
auth = "bearer"
token_env = "RELAY_TEST_UNUSED_TOKEN"
map = "sekoia"
[sources.feed]
type = "http"
address = "127.0.0.1:2"
format = "ndjson"
auth = "none"
map = "sekoia"
[sinks.xsoar]
type = "xsoar"
url = "http://127.0.0.1:9"
api_key_env = "RELAY_TEST_UNUSED_KEY"
[sinks.xsoar.custom_fields]
alertid = "extra.alert_id"
[routes.soar]
match = 'vendor == "Sekoia" and risk_score >= 60'
sinks = ["xsoar"]
"""


def test_test_parse_and_cases_take_json_bodies(tmp_path):
    conf = tmp_path / "relay.toml"
    conf.write_text(CONFIG)
    alert = tmp_path / "alert.json"
    alert.write_text(json.dumps(SEKOIA))
    r = relay_cli("test-parse", "--config", conf, "--source", "alerts", "--json", "--file", alert)
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["event"]["dedup_key"] == "sekoia:AL13426AYUU" and rec["routes"] == ["soar"]
    assert rec["sinks"]["xsoar"]["CustomFields"]["alertid"] == "AL13426AYUU"
    bad = relay_cli("test-parse", "--config", conf, "--source", "alerts", '{"alertId": }')
    assert bad.returncode == 1 and b"PARSE ERROR at byte 12" in bad.stdout
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "sekoia.ndjson").write_text(json.dumps(SEKOIA) + "\n" + json.dumps(dict(SEKOIA, urgency=10)) + "\n")
    (cases / "sekoia.toml").write_text('source = "feed"\n'
                                       '[[message]]\nroutes = ["soar"]\nfields = { dedup_key = "sekoia:AL13426AYUU" }\n'
                                       '[message.sinks.xsoar.fields]\n"CustomFields.alertid" = "AL13426AYUU"\n'
                                       '[[message]]\nroutes = []\n')
    env = dict(os.environ, RELAY_TEST_UNUSED_TOKEN="t0k", RELAY_TEST_UNUSED_KEY="k3y")   # the cases resolve them
    r = relay_cli("test-parse", "--config", conf, "--cases", cases, env=env)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    assert b"1 passed, 0 failed" in r.stdout + r.stderr


def test_metrics_off_loopback_without_a_token_warns(monkeypatch, caplog):
    """Issue 14 item 4: /metrics, /health, /ready bind loopback by default; another address
    without a bearer token is logged as a warning (the server itself is not started here)."""
    import asyncio

    from relay import httpserver
    from relay.config import loads
    from relay.metrics import MetricsServer
    from relay.secrets import Secret
    assert loads("").relay.metrics_address == ("127.0.0.1", 9514)
    assert httpserver.is_loopback("127.0.0.1") and httpserver.is_loopback("::1")
    assert not httpserver.is_loopback("0.0.0.0") and not httpserver.is_loopback("192.0.2.1")

    async def no_bind(self):
        self.port = self.port or 1
    monkeypatch.setattr(httpserver.HttpServer, "start", no_bind)
    for host, tokens, warned in (("0.0.0.0", (), True), ("0.0.0.0", (Secret("t", "x"),), False),
                                 ("127.0.0.1", (), False)):
        caplog.clear()
        asyncio.run(MetricsServer(host, 9, tokens=tokens).start())
        assert any("without authentication" in r.message for r in caplog.records) == warned, (host, tokens)

"""The ``http`` sink (relay/sinks/http.py) and its bodies and templates (formats/http.py,
formats/template.py): configuration errors, the sandboxed JSON templates (a broken one is
refused naming its line, a hostile value cannot change the JSON's structure), the queued
request, and delivery through the sink against the emulators of tests/emulators/ on
127.0.0.1 (no relay process: the e2e tests in test_e2e_http_sink.py run one).  Every test ends by
itself (hard asyncio timeouts; emulators closed by their fixtures)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import orjson
import pytest

from formats import http as bodies
from formats.template import TemplateError, compile_template, sample_event
from parsers import detect
from parsers.normalise import normalise
from relay import kinds
from relay.config import ConfigError, loads
from relay.dedup import DedupStore, store_path
from relay.metrics import Registry
from relay.sinks import make_sink
from tests.emulators.chat import ChatEmulator
from tests.emulators.hec import HecEmulator
from tests.emulators.jira import JiraEmulator
from tests.emulators.qradar_http import QradarHttpReceiver
from tests.emulators.servicenow import ServiceNowEmulator
from tests.emulators.xsoar import XsoarEmulator
from tests.harness import make_queue, run_async, run_sinks, sigma_line

HOST = "127.0.0.1"
PW = "Sn0w-PaSS-7f3e"
HARD_TIMEOUT = 40.0
HOSTILE = 'x", "evil": true, "n": {{ 7*7 }} }\n{"a": 1}\\ \u2028 <!channel> <http://evil|click> & ${jndi}'


# --------------------------------------------------------------------------- helpers
def load_sink(tmp_path: Path, body: str, name: str = "h"):
    text = f"""
[relay]
state_dir = "{tmp_path / 'state'}"
[sinks.{name}]
type = "http"
{body}
[routes.all]
match = 'true'
sinks = ["{name}"]
"""
    return loads(text, file="test.toml", base_dir=tmp_path).sinks[name]


def event(line: bytes):
    return normalise(detect.parse(line, received=time.time(), peer=HOST, source="t"))


def enqueue(q, cfg, lines) -> None:
    render = kinds.sink(cfg.type).renderer(cfg)
    rows = []
    for line in lines:
        ev = event(line)
        rows.append((render(ev, ["all"]), {"source": "t", "routes": ["all"], "received": time.time(),
                                           "dedup_key": ev.fields["dedup_key"]}))
    q.put_many(rows)


def sink_for(tmp_path, body: str, name: str = "h", **kw):
    cfg = load_sink(tmp_path, body, name)
    q = make_queue(tmp_path / "state" / f"queue-{name}.db")
    reg = Registry()
    return cfg, q, make_sink(cfg, q, registry=reg, auth_recheck=0.3, **kw), reg


def run_sink(sink, until, timeout: float = 20.0) -> bool:
    return run_async(run_sinks([sink], until, timeout), HARD_TIMEOUT)


@pytest.fixture
def snow_pw(monkeypatch):
    monkeypatch.setenv("T_SNOW_PW", PW)


@pytest.fixture
def snow():
    with ServiceNowEmulator(password=PW) as e:
        yield e


def snow_sink(tmp_path, emu, extra: str = "", **kw):
    return sink_for(tmp_path, f'preset = "servicenow"\nurl = "{emu.url}"\nusername = "relay"\n'
                              f'password_env = "T_SNOW_PW"\ntimeout = 1.0\n{extra}', **kw)


# --------------------------------------------------------------------------- templates
def test_template_error_at_load_names_its_line(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_sink(tmp_path, 'preset = "generic"\nurl = "http://127.0.0.1:9/x"\ntemplate = """\n{"a": 1,\n'
                            ' "b": {{ event.name }\n}"""')
    assert "sinks.h.template: template line 2: template syntax error" in str(e.value), e.value   # TOML drops the first newline
    # quotes written around an expression: the body is not JSON, said with the line and the fix
    with pytest.raises(ConfigError) as e:
        load_sink(tmp_path, 'preset = "generic"\nurl = "http://127.0.0.1:9/x"\ntemplate = """{"a": 1,\n'
                            ' "b": "{{ event.name }}"}"""')
    assert "line 2: the rendered body is not JSON" in str(e.value) and "quotes included" in str(e.value)
    # a forbidden attribute (sandbox) and a failing expression name their line
    for src, line in (('{"a":\n{{ event.__class__ }}}', 2), ('{\n\n"a": {{ 1 // 0 }}}', 3)):
        with pytest.raises(TemplateError) as e:
            compile_template(src)
        assert e.value.line == line, e.value
    with pytest.raises(TemplateError, match="must be a JSON object"):
        compile_template("[{{ event.name }}]")


def test_hostile_values_cannot_change_the_json_structure(tmp_path):
    """Quotes, braces, {{ }}, newlines, backslashes in event values stay inside their values,
    in a template and in every preset's own body."""
    ev = sample_event()
    for k in ("name", "description", "user", "host"):
        ev.fields[k] = HOSTILE
    ev.fields["extra"] = {"note": HOSTILE}
    t = compile_template('{"title": {{ event.name }},\n "t2": {{ "[relay] " ~ event.name ~ "}" }},\n'
                         ' "note": {{ event.extra.note }}, "list": [{{ event.user }}, 1]}')
    out = orjson.loads(t.render(ev, ["r"]))
    assert set(out) == {"title", "t2", "note", "list"} and out["title"] == HOSTILE
    assert out["t2"] == "[relay] " + HOSTILE + "}" and out["list"] == [HOSTILE, 1]
    for fn, o in ((bodies.servicenow, bodies.ServiceNowOptions()), (bodies.jira, bodies.JiraOptions()),
                  (bodies.slack, bodies.ChatOptions()), (bodies.teams, bodies.ChatOptions()),
                  (bodies.hec, bodies.HecOptions()), (bodies.generic, None)):
        b = fn(ev, o, ["r"])
        again = orjson.loads(orjson.dumps(b))
        assert again == b and "evil" not in again, fn.__name__
    msg = bodies.slack(ev, bodies.ChatOptions(), ["r"])
    mrkdwn = [msg["text"]] + [x["text"] for b in msg["blocks"] for x in b.get("fields", []) + b.get("elements", [])
                              + ([b["text"]] if b["type"] == "section" and "text" in b else [])]
    assert len(mrkdwn) > 5 and not any("<!channel>" in t or "<http://evil" in t for t in mrkdwn)
    assert any("&lt;!channel&gt;" in t for t in mrkdwn)
    # the queued request: one JSON document whatever the values
    cfg = load_sink(tmp_path, 'preset = "generic"\nurl = "http://127.0.0.1:9/x"\n'
                              'template = \'{"t": {{ event.name }}}\'')
    row = orjson.loads(kinds.sink("http").renderer(cfg)(ev, ["r"]))
    assert row["body"] == {"t": HOSTILE} and row["method"] == "POST"


def test_config_errors_are_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("T_SLACK_URL", "https://hooks.slack.invalid/services/T/B/secret0123")
    cases = [
        ('preset = "slack"\nurl = "https://hooks.slack.com/services/T/B/x"', "sinks.h.url: a slack webhook URL is a "
                                                                             "credential: use url_env or url_file"),
        ('preset = "servicenow"\nurl = "https://x.service-now.com"\nusername = "u"\npassword = "p"',
         "sinks.h.password: secrets are never written in the config"),
        ('preset = "jira"\nurl = "https://x.atlassian.net"\nproject = "SEC"\nauth = "bearer"\ntoken_env = "T_SLACK_URL"'
         '\nusername = "u"', "sinks.h.username: is not a key of auth = 'bearer'"),
        ('preset = "slack"\nurl_env = "T_SLACK_URL"\nmode = "sync"', "sinks.h.mode: is not a key of preset 'slack'"),
        ('preset = "qradar_http"\nurl = "http://127.0.0.1:1/"\ntemplate = "{}"',
         "sinks.h.template: is not a key of preset 'qradar_http'"),
        ('preset = "jira"\nurl = "https://x.atlassian.net"\nusername = "u"\npassword_env = "T_SLACK_URL"',
         "sinks.h.project: is required"),
        ('preset = "nope"\nurl = "http://x"', "sinks.h.preset: 'nope' is not one of"),
    ]
    for body, want in cases:
        with pytest.raises(ConfigError) as e:
            load_sink(tmp_path, body)
        assert want in str(e.value), (body, str(e.value))


# --------------------------------------------------------------------------- the queued request
def test_queued_row_is_the_request_without_secrets(tmp_path, monkeypatch):
    url = "https://hooks.slack.invalid/services/T1/B2/s3cr3tHookPart"
    monkeypatch.setenv("T_SLACK_URL", url)
    monkeypatch.setenv("T_SNOW_PW", PW)
    ev = event(sigma_line("INC-1", 91))
    cfg = load_sink(tmp_path, 'preset = "slack"\nurl_env = "T_SLACK_URL"')
    row = kinds.sink("http").renderer(cfg)(ev, ["all"])
    d = orjson.loads(row)
    assert d["url"] == "https://hooks.slack.invalid/<redacted>" and "s3cr3t" not in row.decode()
    assert d["body"]["blocks"][0]["type"] == "header"
    cfg = load_sink(tmp_path, 'preset = "servicenow"\nurl = "https://acme.service-now.com"\nusername = "relay"\n'
                              'password_env = "T_SNOW_PW"')
    d = orjson.loads(kinds.sink("http").renderer(cfg)(ev, ["all"]))
    assert d["method"] == "POST" and d["url"] == "https://acme.service-now.com/api/now/table/incident"
    assert d["headers"]["Authorization"] == "Basic <redacted>" and PW not in json.dumps(d)
    assert d["search"].startswith("GET https://acme.service-now.com/api/now/table/incident?sysparm_query="
                                  "correlation_id%3Drhythmx%3AINC-1")
    assert d["body"]["correlation_id"] == "rhythmx:INC-1" and d["body"]["urgency"] == "1"


# --------------------------------------------------------------------------- ServiceNow
def test_servicenow_dropped_create_then_retry_gives_one_record(tmp_path, snow_pw, snow):
    snow.drop_after_processing(op="create", count=2)
    cfg, q, sink, reg = snow_sink(tmp_path, snow)
    enqueue(q, cfg, [sigma_line("INC-1", 90), sigma_line("INC-2", 75), sigma_line("INC-1", 90)])
    assert run_sink(sink, lambda: q.depth() == 0)
    assert {k: len(v) for k, v in snow.by_correlation().items()} == {"rhythmx:INC-1": 1, "rhythmx:INC-2": 1}
    assert snow.stats["dropped"] == 2
    assert reg.value("relay_http_tickets_total", sink="h", action="found") == 2
    assert reg.value("relay_send_errors_total", sink="h", reason="connection") >= 1
    q.close()


def test_servicenow_sync_updates_the_record_and_search_is_exact(tmp_path, snow_pw, snow):
    # a record whose correlation id merely starts like ours, and an invalid query part would
    # make ServiceNow answer every row: only an exact correlation_id counts
    snow.records["f" * 32] = {"sys_id": "f" * 32, "number": "INC0000001", "correlation_id": "rhythmx:INC-10",
                              "sys_created_on": "2020-01-01 00:00:00", "urgency": "3", "impact": "3"}
    cfg, q, sink, reg = snow_sink(tmp_path, snow, 'mode = "sync"')
    enqueue(q, cfg, [sigma_line("INC-1", 45)])
    assert run_sink(sink, lambda: q.depth() == 0)
    enqueue(q, cfg, [sigma_line("INC-1", 95, msgid="updated", status="IN_PROGRESS")])
    enqueue(q, cfg, [sigma_line("INC-1", 95, msgid="updated", status="IN_PROGRESS")])   # same body: unchanged
    assert run_sink(sink, lambda: q.depth() == 0)
    recs = snow.by_correlation()
    assert len(recs["rhythmx:INC-1"]) == 1 and len(recs["rhythmx:INC-10"]) == 1
    r = recs["rhythmx:INC-1"][0]
    assert (r["urgency"], r["impact"], r["priority"], r["sys_mod_count"]) == ("1", "1", "1", "1")
    assert reg.value("relay_http_tickets_total", sink="h", action="updated") == 1
    assert reg.value("relay_http_tickets_total", sink="h", action="unchanged") == 1
    assert [x["method"] for x in snow.ops("update")] == ["PATCH"]
    q.close()


def test_servicenow_failures_classified(tmp_path, snow_pw, snow, caplog):
    snow.mandatory = ("assignment_group",)            # a data policy: that row is dead-lettered, the sink goes on
    cfg, q, sink, reg = snow_sink(tmp_path, snow)
    enqueue(q, cfg, [sigma_line("INC-1")])
    assert run_sink(sink, lambda: q.dlq_depth() == 1)
    assert "Data Policy Exception" in q.list(dlq=True)[0].reason and not sink.blocked
    snow.mandatory = ()
    snow.hibernating = True                           # 200 HTML: retried, nothing created
    enqueue(q, cfg, [sigma_line("INC-2")])
    assert run_sink(sink, lambda: reg.value("relay_send_errors_total", sink="h", reason="bad_answer") >= 1)
    snow.hibernating = False
    snow.password = "changed"                         # 401: blocked, nothing lost, password never logged
    assert run_sink(sink, lambda: sink.blocked)
    assert q.depth() == 1 and PW not in caplog.text
    snow.password = PW
    assert run_sink(sink, lambda: q.depth() == 0)
    assert not sink.blocked and list(snow.by_correlation()) == ["rhythmx:INC-2"]
    q.close()


def test_servicenow_429_pauses_without_counting_attempts(tmp_path, snow_pw, snow):
    snow.fail(429, count=8, retry_after=0.2, op="search")
    cfg, q, sink, reg = snow_sink(tmp_path, snow, '[sinks.h.retry]\nmax_attempts = 2\nbase = 0.05\ncap = 0.1')
    enqueue(q, cfg, [sigma_line(f"INC-{i}") for i in range(3)])
    assert run_sink(sink, lambda: q.depth() == 0, timeout=25)
    assert q.dlq_depth() == 0 and len(snow.by_correlation()) == 3
    assert reg.value("relay_send_errors_total", sink="h", reason="throttled") >= 2
    q.close()


# --------------------------------------------------------------------------- Jira
def test_jira_label_search_create_sync_and_restart(tmp_path, monkeypatch):
    monkeypatch.setenv("T_JIRA_TOKEN", "jira-token")
    with JiraEmulator(cloud=False) as jira:
        body = (f'preset = "jira"\nurl = "{jira.url}"\nproject = "SEC"\nusername = "soc@example.test"\n'
                f'password_env = "T_JIRA_TOKEN"\ntimeout = 1.0\nmode = "sync"')
        cfg, q, sink, reg = sink_for(tmp_path, body)
        enqueue(q, cfg, [sigma_line("INC-1", 60), sigma_line("INC-2", 90)])
        assert run_sink(sink, lambda: q.depth() == 0)
        enqueue(q, cfg, [sigma_line("INC-1", 99, msgid="updated")])
        assert run_sink(sink, lambda: q.depth() == 0)
        q.close()
        # the dedup store is lost (a new machine): the label search finds both issues, creates none
        store_path(q, "h", "http").unlink()
        cfg, q, sink, reg = sink_for(tmp_path, body)
        enqueue(q, cfg, [sigma_line("INC-1", 99, msgid="updated"), sigma_line("INC-2", 90)])
        assert run_sink(sink, lambda: q.depth() == 0)
        labels = {k: len(v) for k, v in jira.by_label().items()}
        assert labels == {bodies.jira_label("rhythmx:INC-1"): 1, bodies.jira_label("rhythmx:INC-2"): 1}
        assert reg.value("relay_http_tickets_total", sink="h", action="found") == 2
        issue = jira.by_label()[bodies.jira_label("rhythmx:INC-1")][0]
        # updated once by the sync, once more after the store was lost (the last body sent is unknown then)
        assert issue["fields"]["priority"] == {"name": "Highest"} and issue.get("updates") == 2
        # Server/DC: the Cloud search/jql endpoint is absent there: the sink switched to /rest/api/2/search
        assert {r["path"] for r in jira.ops("search")} >= {"/rest/api/3/search/jql", "/rest/api/2/search"}
        q.close()


def test_jira_eventual_consistency_no_duplicate(tmp_path, monkeypatch):
    """Cloud's search lags behind a create: a create whose answer was lost is not trusted to be
    missing until search_settle has passed."""
    monkeypatch.setenv("T_JIRA_TOKEN", "jira-token")
    with JiraEmulator(cloud=True, search_lag=1.0) as jira:
        jira.drop_after_processing(op="create", count=1)
        cfg, q, sink, reg = sink_for(tmp_path, f'preset = "jira"\nurl = "{jira.url}"\nproject = "SEC"\n'
                                               f'username = "soc@example.test"\npassword_env = "T_JIRA_TOKEN"\n'
                                               f'api_version = "3"\ndedup_field = "customfield_10050"\n'
                                               f'search_settle = 2.0\ntimeout = 1.0')
        enqueue(q, cfg, [sigma_line("INC-1")])
        assert run_sink(sink, lambda: q.depth() == 0, timeout=25)
        assert len(jira.issues) == 1
        issue = next(iter(jira.issues.values()))
        assert issue["fields"]["customfield_10050"] == "rhythmx:INC-1"
        assert issue["fields"]["description"]["type"] == "doc"          # API v3: an Atlassian Document
        assert reg.value("relay_send_errors_total", sink="h", reason="settling") >= 1
        q.close()


# --------------------------------------------------------------------------- chat
def test_slack_rate_limit_and_revoked_hook(tmp_path, monkeypatch):
    with ChatEmulator("slack", rate=5.0, burst=2, retry_after=1) as chat:
        monkeypatch.setenv("T_HOOK", chat.hook_url)
        cfg, q, sink, reg = sink_for(tmp_path, 'preset = "slack"\nurl_env = "T_HOOK"\nrate = 50.0\nburst = 10\n'
                                               '[sinks.h.retry]\nmax_attempts = 1')
        enqueue(q, cfg, [sigma_line(f"INC-{i}") for i in range(8)])
        assert run_sink(sink, lambda: q.depth() == 0, timeout=25)
        assert len(chat.messages) == 8 and q.dlq_depth() == 0 and chat.stats["http_429"] >= 1
        titles = [m["blocks"][0]["text"]["text"] for m in chat.messages]
        assert titles == [f"RhythmX incident INC-{i}: jdoe" for i in range(8)]      # in order
        chat.revoked = True
        enqueue(q, cfg, [sigma_line("INC-9")])
        assert run_sink(sink, lambda: sink.blocked)
        assert q.depth() == 1 and chat.secret not in (sink.blocked_reason or "")
        q.close()


# --------------------------------------------------------------------------- batches
def test_qradar_http_batches_lines(tmp_path):
    with QradarHttpReceiver() as qr:
        cfg, q, sink, reg = sink_for(tmp_path, f'preset = "qradar_http"\nurl = "{qr.url}/"\nformat = "cef"\n'
                                               f'batch_size = 50')
        lines = [sigma_line(f"INC-{i}", 80, body_extra={"note": "two\nlines"}) for i in range(120)]
        enqueue(q, cfg, lines)
        assert run_sink(sink, lambda: q.depth() == 0)
        assert len(qr.events) == 120 and all("CEF:0|" in e for e in qr.events)
        assert max(qr.bodies) <= 50 and qr.posts >= 3
        q.close()


def test_hec_refused_event_isolated_rest_delivered(tmp_path, monkeypatch):
    with HecEmulator(indexes=("security",)) as hec:
        monkeypatch.setenv("T_HEC", hec.token)
        cfg, q, sink, reg = sink_for(tmp_path, f'preset = "splunk_hec"\nurl = "{hec.url}"\ntoken_env = "T_HEC"\n'
                                               f'index = "security"\nbatch_size = 20')
        enqueue(q, cfg, [sigma_line(f"INC-{i}") for i in range(10)])
        # one row rendered for another index (a config changed under it): HEC names it, it alone is dead-lettered
        rows = []
        render = kinds.sink("http").renderer(load_sink(tmp_path, f'preset = "splunk_hec"\nurl = "{hec.url}"\n'
                                                                 f'token_env = "T_HEC"\nindex = "nope"'))
        ev = event(sigma_line("INC-BAD"))
        rows.append((render(ev, ["all"]), {"dedup_key": "rhythmx:INC-BAD"}))
        q.put_many(rows)
        enqueue(q, cfg, [sigma_line(f"INC-{i}") for i in range(10, 15)])
        assert run_sink(sink, lambda: q.depth() == 0)
        assert len(hec.events) == 15 and q.dlq_depth() == 1
        assert "Incorrect index" in q.list(dlq=True)[0].reason
        assert {e["fields"]["relay_dedup_key"] for e in hec.events} == {f"rhythmx:INC-{i}" for i in range(15)}
        hec.token = "another"                           # 403 code 4: blocked, kept, the token never shown
        enqueue(q, cfg, [sigma_line("INC-99")])
        assert run_sink(sink, lambda: sink.blocked)
        assert q.depth() == 1 and "11111111" not in sink.blocked_reason
        q.close()


# --------------------------------------------------------------------------- XSOAR webhook template (seed 002)
SEKOIA = '''
{"name": {{ event.name }},
 "occurred": {{ occurred }},
 "alertId": {{ event.id }},
 "alertUrl": {{ "https://app.sekoia.io/sic/alerts/" ~ event.id }},
 "urgency": {{ event.risk_score }},
 "events": [{"timestamp": {{ event.occurred }}, "source.ip": {{ event.src_ip }},
             "host.name": {{ event.host }}, "user.name": {{ event.user }}}]}
'''


def test_xsoar_webhook_template_sekoia_mapping(tmp_path, monkeypatch):
    monkeypatch.setenv("T_WH", "Bearer wh-s3cret")
    with XsoarEmulator(webhook_auth=("_header:Authorization", "Bearer wh-s3cret")) as emu:
        cfg = loads(f"""
[relay]
state_dir = "{tmp_path / 'state'}"
[sinks.wh]
type = "xsoar_webhook"
url = "{emu.url}/instance/execute/sekoia"
auth_header = "Authorization"
auth_value_env = "T_WH"
batch_size = 1
template = '''{SEKOIA}'''
[routes.all]
match = 'true'
sinks = ["wh"]
""", base_dir=tmp_path).sinks["wh"]
        q = make_queue(tmp_path / "state" / "queue-wh.db")
        enqueue(q, cfg, [sigma_line("INC-7601d999", 63), sigma_line("INC-7601d999", 63)])
        sink = make_sink(cfg, q, registry=Registry())
        assert run_sink(sink, lambda: q.depth() == 0)
        incs = emu.incidents()
        assert len(incs) == 1
        raw = json.loads(incs[0]["rawJSON"])
        assert raw["alertId"] == "INC-7601d999" and raw["urgency"] == 63
        assert raw["alertUrl"] == "https://app.sekoia.io/sic/alerts/INC-7601d999"
        assert raw["events"][0]["user.name"] == "jdoe" and incs[0]["name"] == "RhythmX incident INC-7601d999: jdoe"
        q.close()
    with pytest.raises(ConfigError, match=r"sinks.wh.template: template line 2"):
        loads('[sinks.wh]\ntype = "xsoar_webhook"\nurl = "https://x.example/instance/execute/a"\n'
              'template = """{"a": 1,\n "b": {{ x }"""\n', base_dir=tmp_path)


def test_dedup_store_is_shared_and_named_per_kind(tmp_path):
    class Q:
        path = tmp_path / "queue-x.db"
    assert store_path(Q, "x", "http").name == "http-dedup-x.db"
    st = DedupStore(store_path(Q, "x", "http"), cap=2)
    from relay.dedup import DedupRecord
    st.put(DedupRecord("k", "sys1"))
    st.delete("k")
    assert st.get("k") is None and len(st) == 0
    st.close()

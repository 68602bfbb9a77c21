"""End-to-end: SigmaIncident syslog over TCP -> `relay run` -> the ``http`` sink's seven presets ->
their emulators (tests/emulators/), everything on 127.0.0.1.

(a) One relay, one sink per preset: every preset delivers what it should; the ServiceNow create
    answered by a dropped connection is retried and gives ONE record; the Teams connector
    throttles (200 "HTTP error 429") and the Slack webhook answers 429: nothing is lost or
    dead-lettered; ``sync`` updates the ServiceNow record; the relay is SIGKILLed while tickets
    are being created, restarted, and the same messages re-sent: still one ticket per key.
    No secret reaches the log.
"""
from __future__ import annotations

import json
import time

import pytest

from formats.http import jira_label
from tests.emulators.chat import ChatEmulator
from tests.emulators.hec import HecEmulator
from tests.emulators.jira import JiraEmulator
from tests.emulators.qradar_http import QradarHttpReceiver
from tests.emulators.servicenow import ServiceNowEmulator
from tests.harness import LOOPBACK, free_port, sigma_line, wait_until

pytestmark = pytest.mark.e2e

SNOW_PW = "e2e-Sn0w-pw-4821"
JIRA_TOKEN = "e2e-jira-T0KEN-77"
SINKS = ("snow", "jira", "slack", "teams", "qradar", "hec", "generic")


def config(workdir, tcp: int, met: int, e: dict) -> str:
    return f"""
[relay]
state_dir = "{workdir / 'state'}"
metrics_address = "{LOOPBACK}:{met}"
drain_timeout = 3.0
[relay.queue]
synchronous = "NORMAL"
[relay.retry]
base = 0.2
factor = 2.0
cap = 1.0
max_attempts = 3
[sources.tcp_in]
type = "tcp"
address = "{LOOPBACK}:{tcp}"
[routes.high]
match = 'app_name == "SigmaIncident" and risk_score >= 70'
sinks = {list(SINKS)!r}
[sinks.snow]
type = "http"
preset = "servicenow"
url = "{e['snow'].url}"
username = "relay"
password_env = "E2E_SNOW_PW"
mode = "sync"
timeout = 2.0
[sinks.jira]
type = "http"
preset = "jira"
url = "{e['jira'].url}"
project = "SEC"
username = "soc@example.test"
password_env = "E2E_JIRA_TOKEN"
timeout = 2.0
[sinks.slack]
type = "http"
preset = "slack"
url_env = "E2E_SLACK_URL"
rate = 20.0
burst = 5
[sinks.teams]
type = "http"
preset = "teams"
url_env = "E2E_TEAMS_URL"
rate = 20.0
burst = 5
[sinks.qradar]
type = "http"
preset = "qradar_http"
url = "{e['qradar'].url}/"
format = "leef"
[sinks.hec]
type = "http"
preset = "splunk_hec"
url = "{e['hec'].url}"
token_env = "E2E_HEC_TOKEN"
index = "security"
[sinks.generic]
type = "http"
preset = "generic"
url = "{e['generic'].url}/ingest"
template = '''{{"title": {{{{ "[relay] " ~ event.name }}}}, "risk": {{{{ event.risk_score }}}},
 "key": {{{{ dedup_key }}}}}}'''
"""


@pytest.fixture
def emulators():
    e = {"snow": ServiceNowEmulator(password=SNOW_PW), "jira": JiraEmulator(token=JIRA_TOKEN, cloud=True),
         "slack": ChatEmulator("slack", rate=4.0, burst=2, retry_after=1),
         "teams": ChatEmulator("teams", rate=3.0, burst=2),
         "qradar": QradarHttpReceiver(), "hec": HecEmulator(),
         "generic": QradarHttpReceiver(message_pattern=None)}     # any HTTP endpoint that keeps bodies
    for x in e.values():
        x.start()
    yield e
    for x in e.values():
        x.close()


def test_a_every_preset_end_to_end(tmp_path, make_relay, emulators, monkeypatch):
    e = emulators
    env = {"E2E_SNOW_PW": SNOW_PW, "E2E_JIRA_TOKEN": JIRA_TOKEN, "E2E_SLACK_URL": e["slack"].hook_url,
           "E2E_TEAMS_URL": e["teams"].hook_url, "E2E_HEC_TOKEN": e["hec"].token}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    tcp, met = free_port(), free_port()
    workdir = tmp_path / "relay"
    r = make_relay(config(workdir, tcp, met, e), met, workdir, tcp_port=tcp)
    e["snow"].drop_after_processing(op="create", count=1)      # the first create's answer is lost
    e["snow"].slow(0.3, op="create", when="after")              # creates exist before they are answered
    r.start()
    ids = [f"INC-{i:02d}" for i in range(12)]
    lines = [sigma_line(i, 70 + 2 * n) for n, i in enumerate(ids)] + [sigma_line("LOW-1", 20)]
    r.send(lines)
    # SIGKILL while tickets are being created, restart, send everything again
    e["snow"].wait(lambda x: len(x.records) >= 3, 20, "3 ServiceNow records before the kill")
    r.kill()
    assert len(e["snow"].records) < len(ids), "every ticket was created before the kill: the test proves nothing"
    e["snow"].clear_faults()
    r.start()
    r.send(lines)
    n = len(ids)
    # the counters are this process's: the re-sent n per sink, plus whatever the kill left unacked
    for s in SINKS:
        r.wait_metric("relay_sent_total", n, 60, sink=s)
    wait_until(lambda: all(r.metric("relay_queue_depth", sink=s) == 0 for s in SINKS), 30, what="empty queues")
    time.sleep(1.0)                                               # late duplicates would show here
    want = {f"rhythmx:{i}" for i in ids}
    assert {k: len(v) for k, v in e["snow"].by_correlation().items()} == dict.fromkeys(want, 1)
    assert {k: len(v) for k, v in e["jira"].by_label().items()} == {jira_label(k): 1 for k in want}
    # chat: at least once each, none lost (the kill may repeat a message whose answer was not seen)
    for chat in ("slack", "teams"):
        got = [m["blocks"][0]["text"]["text"] if chat == "slack" else
               m["attachments"][0]["content"]["body"][0]["text"] for m in e[chat].messages]
        assert {f"RhythmX incident {i}: jdoe" for i in ids} <= set(got), chat
    assert e["slack"].stats["http_429"] >= 1 and e["teams"].stats["http_200"] > len(e["teams"].messages)
    assert {f"rhythmx:{i}" for i in ids} <= {x.split("dedupKey=")[1].split("^")[0] for x in e["qradar"].events}
    assert want <= {x["fields"]["relay_dedup_key"] for x in e["hec"].events}
    assert want <= {json.loads(b)["key"] for b in e["generic"].events}
    m = r.metrics()
    assert all(m.value("relay_dlq_depth", sink=s) == 0 for s in SINKS)
    assert m.value("relay_send_errors_total", sink="teams", reason="throttled") >= 1
    # sync: an update of three incidents reaches their ServiceNow records
    # (records found by search after the restart were updated once already: their last body was unknown)
    before = m.value("relay_http_tickets_total", sink="snow", action="updated")
    r.send([sigma_line(i, 99, msgid="updated", status="IN_PROGRESS") for i in ids[:3]])
    r.wait_metric("relay_http_tickets_total", before + 3, 30, sink="snow", action="updated")
    recs = e["snow"].by_correlation()
    assert all(recs[f"rhythmx:{i}"][0]["priority"] == "1" and len(recs[f"rhythmx:{i}"]) == 1 for i in ids[:3])
    assert r.stop() == 0
    log = r.log()
    for secret in (SNOW_PW, JIRA_TOKEN, e["slack"].secret, e["teams"].secret, e["hec"].token):
        assert secret not in log

"""The Grafana dashboard and the Prometheus alerting rules under packaging/monitoring/.

* ``promtool check rules`` accepts the rules file, and every dashboard query too (each one is
  written into a scratch rules file as a recording rule, Grafana's ``$__rate_interval`` and
  ``$instance`` replaced), so a typo in a panel fails here, not in front of an operator.
* ``promtool test rules``: the alerts fire on the series they are about and stay quiet otherwise.
* Every ``relay_*`` metric a rule or a panel uses exists in a running relay's ``/metrics``, and
  ``promtool check metrics`` accepts the whole exposition
  (a relay with a UDP and a TCP source, a QRadar pull source, an XSOAR sink and an HTTP
  lookup, all against loopback emulators, after one incident went through).

promtool comes from Debian's ``prometheus`` package (scripts/test-deps installs it).
"""
from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.emulators.qradar import QradarEmulator
from tests.harness import LOOPBACK, free_port, sigma_line

ROOT = Path(__file__).resolve().parent.parent
MON = ROOT / "packaging" / "monitoring"
RULES = MON / "relay-alerts.yml"
DASHBOARD = MON / "relay-dashboard.json"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="needs promtool (Debian's prometheus package; "
                                                           "scripts/test-deps installs it)")

METRIC = re.compile(r"\b(relay_[a-z0-9_]+)")
HIST_SUFFIX = re.compile(r"_(bucket|sum|count)$")


def _panel_exprs() -> list[tuple[str, str]]:
    out = []
    for p in json.loads(DASHBOARD.read_text())["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t["expr"]))
    return out


def _rule_exprs() -> list[tuple[str, str]]:
    text = RULES.read_text()
    # the rules are YAML; promtool validates the structure, here only the expressions are needed
    out, cur = [], None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"\s*- alert: (\S+)", line)
        if m:
            cur = m[1]
        m = re.match(r"(\s*)expr: ?(.*)$", line)
        if m:
            indent, rest = len(m[1]), m[2]
            if rest in (">-", ">", "|", "|-"):
                body = []
                i += 1
                while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                    body.append(lines[i].strip())
                    i += 1
                out.append((cur, " ".join(body)))
                continue
            out.append((cur, rest))
        i += 1
    return out


def _metrics_used() -> dict[str, set[str]]:
    """{metric family: {where it is used}} over every rule and panel."""
    used: dict[str, set[str]] = {}
    for where, expr in [(f"rule {a}", e) for a, e in _rule_exprs()] + [(f"panel {t!r}", e) for t, e in _panel_exprs()]:
        for name in METRIC.findall(expr):
            used.setdefault(name, set()).add(where)
    return used


def test_every_rule_and_panel_has_an_expression():
    rules, panels = _rule_exprs(), _panel_exprs()
    alerts = [a for a, _ in rules]
    assert len(rules) == RULES.read_text().count("- alert:") >= 5
    for want in ("RelayQueueOldestEventTooOld", "RelayDeadLettersGrowing", "RelaySinkBlockedOnAuth",
                 "RelayUdpKernelDrops", "RelayPullSourceStalled"):
        assert want in alerts
    assert len(panels) >= 15 and all(e.strip() for _, e in panels)
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    used = _metrics_used()
    for family in ("relay_xsoar_request_seconds_bucket", "relay_lookup_cache_total", "relay_udp_kernel_drops_total",
                   "relay_queue_oldest_age_seconds", "relay_dlq_depth", "relay_queue_depth"):
        assert family in used, f"the dashboard or rules lack {family}"


@needs_promtool
def test_promtool_checks_the_rules_and_every_panel_query(tmp_path):
    r = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    # every panel query as a recording rule: promtool parses each one
    rules = []
    for i, (title, expr) in enumerate(_panel_exprs()):
        e = expr.replace("$__rate_interval", "5m").replace('"$instance"', '".*"')
        assert "$" not in e, f"panel {title!r}: unknown Grafana variable in {expr}"
        rules.append({"record": f"relay_panel_{i}", "expr": e})
    f = tmp_path / "panels.yml"
    f.write_text(json.dumps({"groups": [{"name": "panels", "rules": rules}]}))   # JSON is YAML
    r = subprocess.run([PROMTOOL, "check", "rules", str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


ALERT_TESTS = """
rule_files:
  - {rules}
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'relay_queue_oldest_age_seconds{{instance="r1",sink="xsoar"}}'
        values: '0+60x30'
      - series: 'relay_queue_oldest_age_seconds{{instance="r1",sink="siem"}}'
        values: '5x30'
      - series: 'relay_dead_lettered_total{{instance="r1",sink="xsoar"}}'
        values: '0x10 1 2 3x20'
      - series: 'relay_dead_lettered_total{{instance="r1",sink="siem"}}'
        values: '4x30'
      - series: 'relay_sink_blocked{{instance="r1",sink="xsoar"}}'
        values: '0x5 1x25'
      - series: 'relay_udp_kernel_drops_total{{instance="r1",source="udp_in"}}'
        values: '0+100x30'
      - series: 'relay_pull_last_success_timestamp_seconds{{instance="r1",source="offenses"}}'
        values: '0x30'
      - series: 'relay_pull_interval_seconds{{instance="r1",source="offenses"}}'
        values: '60x30'
      - series: 'relay_pull_last_success_timestamp_seconds{{instance="r1",source="falcon"}}'
        values: '0+60x30'
      - series: 'relay_pull_interval_seconds{{instance="r1",source="falcon"}}'
        values: '60x30'
      - series: 'relay_sink_up{{instance="r1",sink="idle"}}'
        values: '0x30'
      - series: 'relay_sink_up{{instance="r1",sink="broken"}}'
        values: '0x30'
      - series: 'relay_send_errors_total{{instance="r1",sink="broken",reason="connect"}}'
        values: '0+1x30'
    alert_rule_test:
      - eval_time: 8m
        alertname: RelaySinkDown
        exp_alerts: []
      - eval_time: 15m
        alertname: RelaySinkDown
        exp_alerts:
          - exp_labels: {{severity: warning, instance: r1, sink: broken}}
            exp_annotations:
              summary: "relay r1: sink broken has failed its deliveries for 10 minutes"
              description: "See relay_send_errors_total{{sink=\\"broken\\"}} for the reason."
      - eval_time: 5m
        alertname: RelayQueueOldestEventTooOld
        exp_alerts: []
      - eval_time: 15m
        alertname: RelayQueueOldestEventTooOld
        exp_alerts:
          - exp_labels: {{severity: warning, instance: r1, sink: xsoar}}
            exp_annotations:
              summary: "relay r1: sink xsoar has an event queued for more than 10 minutes"
              description: "The oldest event in the queue of sink xsoar is 15m 0s old. The destination is slow, down or refusing events; they stay on disk until delivered. Check relay_send_errors_total{{sink=\\"xsoar\\"}} and `relay queue status`."
      - eval_time: 9m
        alertname: RelayDeadLettersGrowing
        exp_alerts: []
      - eval_time: 14m
        alertname: RelayDeadLettersGrowing
        exp_alerts:
          - exp_labels: {{severity: warning, instance: r1, sink: xsoar}}
            exp_annotations:
              summary: "relay r1: sink xsoar is dead-lettering events"
              description: "3 events of sink xsoar went to the dead-letter table in the last 10 minutes (rejected or unrenderable). Inspect them with `relay queue dlq`."
      - eval_time: 25m
        alertname: RelayDeadLettersGrowing
        exp_alerts: []
      - eval_time: 5m
        alertname: RelaySinkBlockedOnAuth
        exp_alerts: []
      - eval_time: 8m
        alertname: RelaySinkBlockedOnAuth
        exp_alerts:
          - exp_labels: {{severity: critical, instance: r1, sink: xsoar}}
            exp_annotations:
              summary: "relay r1: sink xsoar stopped on an authorisation error"
              description: "The destination refused the relay's credentials (401/403). Delivery is stopped and events stay queued until the credential is fixed and the relay reloaded (SIGHUP)."
      - eval_time: 15m
        alertname: RelayUdpKernelDrops
        exp_alerts:
          - exp_labels: {{severity: warning, instance: r1, source: udp_in}}
            exp_annotations:
              summary: "relay r1: the kernel drops datagrams on UDP source udp_in"
              description: "1.667 datagrams/s lost before the relay read them (receive buffer full). Raise the source's receive_buffer (and net.core.rmem_max) or add workers."
      - eval_time: 8m
        alertname: RelayPullSourceStalled
        exp_alerts: []
      - eval_time: 12m
        alertname: RelayPullSourceStalled
        exp_alerts:
          - exp_labels: {{severity: warning, instance: r1, source: offenses}}
            exp_annotations:
              summary: "relay r1: pull source offenses has not completed a poll for 12m 0s"
              description: "Check relay_pull_errors_total{{source=\\"offenses\\"}} and the relay's log."
"""


@needs_promtool
def test_promtool_alerts_fire_on_their_series_only(tmp_path):
    f = tmp_path / "alerts_test.yml"
    f.write_text(ALERT_TESTS.format(rules=RULES))
    r = subprocess.run([PROMTOOL, "test", "rules", str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


# ============================================================================ against a running relay
QR_TOKEN = "mon-qradar-token"
XSOAR_KEY = "mon-xsoar-key"


def _config(mport: int, udp: int, tcp: int, qradar_url: str, xsoar_url: str, lookup_port: int) -> str:
    return f"""
[relay]
state_dir = "state"
metrics_address = "{LOOPBACK}:{mport}"
drain_timeout = 3

[relay.retry]
base = 0.2
cap = 1.0

[sources.udp_in]
type = "udp"
address = "{LOOPBACK}:{udp}"

[sources.tcp_in]
type = "tcp"
address = "{LOOPBACK}:{tcp}"

[sources.offenses]
type = "qradar_offenses"
url = "{qradar_url}"
token_file = "qradar.token"
poll_interval = 0.5
retry_base = 0.05

[sinks.xsoar]
type = "xsoar"
url = "{xsoar_url}"
api_key_file = "xsoar.key"
timeout = 2.0
batch_size = 10

[routes.incidents]
match = 'app_name == "SigmaIncident"'
sinks = ["xsoar"]

[lookups.cmdb]
kind = "asset"
url = "http://{LOOPBACK}:{lookup_port}/assets/{{value}}"
timeout = 0.5
"""


def test_every_metric_a_rule_or_panel_uses_is_exported(tmp_path, make_relay, make_xsoar):
    (tmp_path / "qradar.token").write_text(QR_TOKEN)
    (tmp_path / "xsoar.key").write_text(XSOAR_KEY)
    xs = make_xsoar(api_key=XSOAR_KEY, auth_id=None)
    # the by-reason counters exist once something went wrong: make one of each go wrong
    xs.fail(503, count=1)
    with QradarEmulator(token=QR_TOKEN) as qr:
        qr.fail(500, count=1)
        mport, udp, tcp = free_port(), free_port(), free_port()
        relay = make_relay(_config(mport, udp, tcp, qr.url, xs.url, free_port()), mport, tmp_path,
                           tcp_port=tcp).start()
        relay.send([sigma_line("INC-MON-1")])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.sendto(b"", (LOOPBACK, udp))                                      # dropped: empty
            u.sendto(b"<13>1 this is not a syslog message", (LOOPBACK, udp))   # parse failure
        # one XSOAR request answered (the latency histogram exists) after a failed one,
        # one completed poll after a failed one
        relay.wait_metric("relay_sent_total", 1, timeout=60, sink="xsoar")
        relay.wait_metric("relay_send_errors_total", 1, timeout=60, sink="xsoar")
        relay.wait_metric("relay_pull_polls_total", 1, timeout=60, source="offenses")
        relay.wait_metric("relay_pull_requests_total", 1, timeout=60, source="offenses", status="500")
        relay.wait_metric("relay_dropped_total", 1, timeout=60, source="udp_in", reason="empty")
        relay.wait_metric("relay_parse_failed_total", 1, timeout=60, source="udp_in")
        status, text = relay.http("/metrics")
        assert status == 200
        exported = {HIST_SUFFIX.sub("", m) if m.endswith(("_bucket", "_sum", "_count")) else m
                    for m in re.findall(r"^(relay_[a-z0-9_]+)", text, re.M)}
        # a histogram family is exported as <name>_bucket/_sum/_count
        names = set(re.findall(r"^(relay_[a-z0-9_]+)", text, re.M))
        missing = {}
        for family, where in sorted(_metrics_used().items()):
            if family in names or family in exported:
                continue
            missing[family] = sorted(where)
        assert not missing, f"used by a rule or panel but not in /metrics: {missing}"
        # the whole exposition (the new histograms included) is valid for Prometheus
        if PROMTOOL is not None:
            r = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stdout + r.stderr
        # the new series carry figures, not just names
        m = relay.metrics()
        assert m.value("relay_xsoar_request_seconds_count", sink="xsoar") >= 1
        assert m.value("relay_pull_interval_seconds", source="offenses") == 0.5
        assert m.value("relay_pull_last_success_timestamp_seconds", source="offenses") > 1.7e9

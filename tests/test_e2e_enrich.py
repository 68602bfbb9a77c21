"""End-to-end: SigmaIncident syslog over TCP -> `relay run` (enrichment + triage) -> the XSOAR
emulator (tests/emulators/xsoar.py), everything on 127.0.0.1.

(a) mode assist: an incident against a crown-jewel asset with a threat-intel hit reaches XSOAR
    with the triage custom fields set and explained; one audit line per triage decision.
(b) mode auto with two worker processes: an escalation route (``triage.escalate == "page"``)
    brings a medium-risk incident against the crown jewel to XSOAR that the risk-score route
    alone would not; the same incident on an unknown asset does not get there; with
    ``workers = 2`` the audit file holds exactly one whole JSON line per decision.
(c) SIGHUP re-reads a changed lookup table.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.emulators.xsoar import XsoarEmulator
from tests.harness import LOOPBACK, free_port, sigma_line, wait_until

pytestmark = pytest.mark.e2e

KEY = "e2e-enrich-K3Y-0a1b2c"
ENV = "RELAY_E2E_ENRICH_XSOAR_KEY"
EX = Path(__file__).resolve().parent.parent / "examples" / "lookups"


def incident(inc: str, risk: int, **body) -> bytes:
    """A SigmaIncident (no alarm_count) with a title and ``body`` in its JSON body."""
    return sigma_line(inc, risk, alarm_count=None, body_extra={"title": f"Suspicious activity {inc}", **body})


def relay_config(workdir: Path, emu: XsoarEmulator, *, tcp_port: int, metrics_port: int, mode: str,
                 workers: int) -> str:
    return f"""
[relay]
state_dir = "{workdir / 'state'}"
metrics_address = "{LOOPBACK}:{metrics_port}"
drain_timeout = 3.0
workers = {workers}

[relay.queue]
synchronous = "NORMAL"

[relay.retry]
base = 0.2
cap = 1.0
max_attempts = 0

[sources.tcp_in]
type = "tcp"
address = "{LOOPBACK}:{tcp_port}"

[routes.high_risk]
match = 'app_name == "SigmaIncident" and risk_score >= 70'
sinks = ["xsoar"]

[routes.escalated]
match = 'triage.escalate == "page"'
sinks = ["xsoar"]

[sinks.xsoar]
type = "xsoar"
url = "{emu.url}"
api_key_env = "{ENV}"
timeout = 2.0
batch_size = 20

[lookups.assets]
kind = "asset"
file = "lookups/assets.csv"

[lookups.vulns]
kind = "vuln"
file = "lookups/vulns.csv"

[lookups.misp]
kind = "ti"
file = "lookups/ti_misp.csv"
format = "misp"
source = "misp"

[triage]
mode = "{mode}"
default_owner = "SOC Tier 1"

[[triage.owners]]
crown_jewel = true
owner = "{{asset_owner}}"

[[triage.escalate]]
name = "page"
min_severity = "critical"

[audit]
path = "audit/triage.jsonl"
"""


@pytest.fixture
def emu(make_xsoar):
    return make_xsoar(api_key=KEY, auth_id="7")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, KEY)
    d = tmp_path / "relay"
    (d / "lookups").mkdir(parents=True)
    for name in ("assets.csv", "vulns.csv", "ti_misp.csv"):
        shutil.copy(EX / name, d / "lookups" / name)
    return d


@pytest.fixture
def start(workdir, emu, make_relay):
    """``start(mode, workers=1)`` -> a started relay (a TCP source, the emulator as XSOAR sink)."""
    def run(mode: str, workers: int = 1):
        tcp, metrics = free_port(), free_port()
        return make_relay(relay_config(workdir, emu, tcp_port=tcp, metrics_port=metrics, mode=mode, workers=workers),
                          metrics, workdir, tcp_port=tcp).start()
    return run


def by_vendor_id(emu: XsoarEmulator) -> dict:
    return {i["CustomFields"].get("vendorid"): i for i in emu.incidents()}


def audit_lines(workdir: Path) -> list[dict]:
    p = workdir / "audit" / "triage.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def test_a_assist_crown_jewel_with_ti_hit_reaches_xsoar_triaged(workdir, emu, start):
    proc = start("assist")
    try:
        proc.send([
            incident("INC-CJ", 75, src_ip="203.0.113.7", dst_ip="10.20.0.5", host="db-core-01"),
            incident("INC-PLAIN", 72, src_ip="192.0.2.1", dst_ip="10.99.0.1"),
            incident("INC-LOW", 20, dst_ip="10.20.0.5"),
        ])
        proc.wait_metric("relay_sent_total", 2, 30, sink="xsoar")
        time.sleep(0.5)
        incs = by_vendor_id(emu)
        assert set(incs) == {"INC-CJ", "INC-PLAIN"}
        cf = incs["INC-CJ"]["CustomFields"]
        assert cf["relaytriagescore"] == "100" and cf["relaytriageseverity"] == "critical"
        assert cf["relaytriageowner"] == "Database Team"
        ex = cf["relaytriageexplanation"]
        assert "db-core-01 is a crown jewel: +15" in ex and "criticality 5: +20" in ex
        assert "threat intel match 203.0.113.7 (ip) from misp event 1042" in ex
        assert "CVE-2024-3400" in ex and "Owner: Database Team (owners[0]: crown jewel)" in ex
        plain = incs["INC-PLAIN"]["CustomFields"]
        # 72 + criticality 3 (10.0.0.0/8: 0 points) = 72 -> high, default owner
        assert plain["relaytriagescore"] == "72" and plain["relaytriageseverity"] == "high"
        assert plain["relaytriageowner"] == "SOC Tier 1" and "no threat intel match" in plain["relaytriageexplanation"]
        assert incs["INC-CJ"]["severity"] == 3          # the incident's own severity is untouched in assist
    finally:
        assert proc.stop() == 0
    lines = audit_lines(workdir)
    assert sorted(a["vendor_id"] for a in lines) == ["INC-CJ", "INC-LOW", "INC-PLAIN"]   # every decision
    cj = next(a for a in lines if a["vendor_id"] == "INC-CJ")
    assert cj["mode"] == "assist" and cj["result"]["owner"] == "Database Team"
    assert {h["table"] for h in cj["lookups"]} == {"assets", "vulns", "misp"}
    assert KEY not in (workdir / "audit" / "triage.jsonl").read_text() and KEY not in proc.stderr()


def test_b_auto_escalation_route_with_workers(workdir, emu, start):
    proc = start("auto", workers=2)
    try:
        lines = [incident("INC-ESC", 40, src_ip="203.0.113.7", dst_ip="10.20.0.5", host="db-core-01"),
                 incident("INC-NOESC", 40, src_ip="192.0.2.9", dst_ip="10.99.0.1")]
        lines += [incident(f"INC-N{i}", 30, dst_ip=f"10.30.0.{i}") for i in range(40)]
        proc.send(lines)
        proc.wait_metric("relay_sent_total", 1, 30, sink="xsoar")
        wait_until(lambda: len(audit_lines(workdir)) >= 42, 10, interval=0.1, what="42 audit lines")
        time.sleep(0.5)
        incs = by_vendor_id(emu)
        assert set(incs) == {"INC-ESC"}
        cf = incs["INC-ESC"]["CustomFields"]
        assert cf["relaytriageseverity"] == "critical" and "Escalation 'page' applied." in cf["relaytriageexplanation"]
        assert {"type": "Relay Route", "value": "escalated"} in incs["INC-ESC"]["labels"]
        m = proc.metrics()
        assert m.value("relay_routed_total", route="escalated") == 1
        assert m.value("relay_triage_total", mode="auto") == 42
    finally:
        assert proc.stop() == 0
    lines = audit_lines(workdir)      # whole lines from both workers, one per decision
    assert len(lines) == 42 and len({a["pid"] for a in lines}) >= 1
    esc = next(a for a in lines if a["vendor_id"] == "INC-ESC")
    assert esc["applied"]["routing"] is True and esc["result"]["escalation"] == "page"
    assert next(a for a in lines if a["vendor_id"] == "INC-NOESC")["result"]["escalation"] is None


def test_c_sighup_reloads_a_changed_table(workdir, emu, start):
    proc = start("assist")
    try:
        p = workdir / "lookups" / "assets.csv"
        p.write_text(p.read_text().replace("Database Team", "DBA On-Call"))
        os.kill(proc.proc.pid, signal.SIGHUP)
        proc.wait_metric("relay_config_reloads_total", 1, 10, result="applied")
        proc.send([incident("INC-R", 80, dst_ip="10.20.0.5")])
        proc.wait_metric("relay_sent_total", 1, 30, sink="xsoar")
        assert by_vendor_id(emu)["INC-R"]["CustomFields"]["relaytriageowner"] == "DBA On-Call"
    finally:
        assert proc.stop() == 0

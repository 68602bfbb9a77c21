"""End to end: ``relay run`` subprocess polling the loopback emulators.

* Falcon emulator -> relay (``type = "falcon"``) -> LEEF over TCP -> QRadar stand-in: every
  alert exactly once with the ``CrowdStrike|FalconHost`` header, across token expiry, a 429
  burst, a 5xx burst and a relay restart (alerts added while it is down, some of them late:
  created before the cursor, inside the overlap window).
* QRadar emulator -> relay (``type = "qradar_offenses"``) -> XSOAR emulator (REST sink): one
  incident per offense; ``mode = "sync"`` + ``close_on_source_close`` applies updates and
  closes (also those made while the relay was down); ``mode = "create"`` leaves incidents as
  created.

Everything stays on 127.0.0.1.
"""
from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from tests.emulators.falcon import FalconEmulator
from tests.emulators.qradar import QradarEmulator
from tests.emulators.xsoar import XsoarEmulator
from tests.harness import QradarStandIn, RelayProcess, free_port

pytestmark = [pytest.mark.e2e]

SECRET = "e2e-falcon-secret-7Qw"
SEC = "e2e-qradar-sec-c0ffee"
XSOAR_KEY = "e2e-xsoar-key"


def _falcon_config(mport: int, falcon_url: str, qradar_addr: str, workers: int = 1) -> str:
    return f"""
[relay]
state_dir = "state"
metrics_address = "127.0.0.1:{mport}"
drain_timeout = 5
log_level = "info"
workers = {workers}

[sources.falcon]
type = "falcon"
base_url = "{falcon_url}"
client_id = "test-client"
client_secret_file = "falcon.secret"
poll_interval = 0.3
page_size = 7
entities_chunk = 5
overlap = 120
retry_base = 0.05
retry_cap = 0.5

[sinks.qradar]
type = "syslog"
address = "{qradar_addr}"
protocol = "tcp"
format = "leef"

[routes.falcon]
match = 'source == "falcon"'
sinks = ["qradar"]
"""


def _dedup_keys(lines: list[str]) -> list[str]:
    out = []
    for ln in lines:
        m = re.search(r"dedupKey=(falcon:[^\^\t]+)", ln)
        out.append(m.group(1) if m else None)
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_falcon_to_qradar_leef_exactly_once_across_restart(tmp_path, make_relay, workers):
    """workers = 2: the pull source queues through its own pipeline in the main process."""
    (tmp_path / "falcon.secret").write_text(SECRET + "\n")
    now = time.time()
    with FalconEmulator(client_secret=SECRET, token_ttl=1.5) as falcon, QradarStandIn() as qradar:
        falcon.add_alerts(30, start=now - 60, step=0.5)
        falcon.fail(429, count=2, op="query", retry_after="future:1")
        falcon.fail(503, count=2, op="entities", body=False)
        mport = free_port()
        relay = make_relay(_falcon_config(mport, falcon.url, qradar.address, workers), mport)
        with relay:
            qradar.wait_for(30, 30)
            for _ in range(3):                      # tokens (1.5 s) expire while the relay runs
                time.sleep(0.8)
                falcon.add_alerts(3)
            qradar.wait_for(39, 30)
            relay.wait_metric("relay_received_total", 39, 10, source="falcon")
        assert relay.returncode == 0, relay.stderr()[-3000:]
        # while the relay is down: new alerts, and late ones created before its cursor
        falcon.add_alerts(6)
        falcon.add_alert(time.time() - 30)
        falcon.add_alert(time.time() - 20)
        relay2 = make_relay(_falcon_config(mport, falcon.url, qradar.address, workers), mport)
        with relay2:
            qradar.wait_for(47, 30)
            falcon.add_alerts(3)
            qradar.wait_for(50, 30)
            time.sleep(1.5)                         # several more polls: nothing may repeat
            qradar.wait_quiet(1.0, 10)
        assert relay2.returncode == 0, relay2.stderr()[-3000:]
        lines = qradar.snapshot()
        keys = _dedup_keys(lines)
        want = sorted(f"falcon:{c}" for c in falcon.alerts)
        assert len(lines) == 50, f"{len(lines)} lines for 50 alerts"
        assert sorted(keys) == want, "an alert was lost or duplicated"
        for ln in lines:
            assert "LEEF:2.0|CrowdStrike|FalconHost|1.0|" in ln, ln[:200]
        assert falcon.stats["token_ok"] >= 3            # refreshed as tokens expired
        assert falcon.stats["fault_429"] == 2 and falcon.stats["fault_503"] == 2
        err = relay.stderr() + relay2.stderr()
        assert SECRET not in err
        assert "ALERT" not in err


def _qradar_config(mport: int, qradar_url: str, xsoar_url: str, mode: str, close: bool) -> str:
    return f"""
[relay]
state_dir = "state"
metrics_address = "127.0.0.1:{mport}"
drain_timeout = 5

[sources.offenses]
type = "qradar_offenses"
url = "{qradar_url}"
token_file = "qradar.token"
poll_interval = 0.3
page_size = 4
overlap = 30
retry_base = 0.05
retry_cap = 0.5

[sinks.xsoar]
type = "xsoar"
url = "{xsoar_url}"
api_key_file = "xsoar.key"
mode = "{mode}"
close_on_source_close = {"true" if close else "false"}
batch_size = 10

[sinks.xsoar.retry]
base = 0.2
cap = 1

[routes.offenses]
match = 'source == "offenses"'
sinks = ["xsoar"]
"""


def _xsoar():
    return XsoarEmulator(api_key=XSOAR_KEY, auth_id=None)


def test_qradar_offenses_to_xsoar_sync_and_close_across_restart(tmp_path, make_relay):
    (tmp_path / "qradar.token").write_text(SEC)
    (tmp_path / "xsoar.key").write_text(XSOAR_KEY)
    with QradarEmulator(token=SEC) as qr, _xsoar() as xs:
        ids = [o["id"] for o in qr.add_offenses(10)]
        qr.fail(500, count=2)
        mport = free_port()
        cfg = _qradar_config(mport, qr.url, xs.url, "sync", True)

        def per_key():
            return xs.by_field("relaydedupkey")

        with make_relay(cfg, mport) as relay:
            xs.wait(lambda e: len(per_key()) >= 10, 30, "10 incidents")
            qr.update_offense(ids[1], magnitude=10)
            qr.close_offense(ids[2])
            xs.wait(lambda e: per_key()[f"qradar:{ids[2]}"][0]["status"] == 2, 30, "offense close -> incident close")
            xs.wait(lambda e: per_key()[f"qradar:{ids[1]}"][0]["CustomFields"].get("sourceevent") == "updated",
                    30, "offense update -> incident update")
        assert relay.returncode == 0, relay.stderr()[-3000:]
        # changes while the relay is down
        qr.close_offense(ids[5])
        qr.update_offense(ids[7])
        new = [o["id"] for o in qr.add_offenses(3)]
        with make_relay(cfg, mport) as relay2:
            xs.wait(lambda e: len(per_key()) >= 13, 30, "13 incidents")
            xs.wait(lambda e: per_key()[f"qradar:{ids[5]}"][0]["status"] == 2, 30, "close made while down")
            xs.wait(lambda e: per_key()[f"qradar:{ids[7]}"][0]["CustomFields"].get("sourceevent") == "updated",
                    30, "update made while down")
            time.sleep(1.5)                              # more polls: nothing new may be created
        assert relay2.returncode == 0, relay2.stderr()[-3000:]
        incidents = per_key()
        assert sorted(incidents) == sorted(f"qradar:{i}" for i in ids + new)
        assert all(len(v) == 1 for v in incidents.values()), "an offense became two incidents"
        assert xs.stats["created"] == 13
        closed = sorted(k for k, v in incidents.items() if v[0]["status"] == 2)
        assert closed == sorted([f"qradar:{ids[2]}", f"qradar:{ids[5]}"])
        inc = incidents[f"qradar:{ids[0]}"][0]
        assert inc["CustomFields"]["vendorid"] == str(ids[0])       # the offense id, as a string
        assert qr.stats["fault_500"] == 2
        err = relay.stderr() + relay2.stderr()
        assert SEC not in err and XSOAR_KEY not in err


def test_qradar_offenses_to_xsoar_create_mode_leaves_incidents(tmp_path, make_relay):
    (tmp_path / "qradar.token").write_text(SEC)
    (tmp_path / "xsoar.key").write_text(XSOAR_KEY)
    with QradarEmulator(token=SEC) as qr, _xsoar() as xs:
        ids = [o["id"] for o in qr.add_offenses(5)]
        mport = free_port()
        with make_relay(_qradar_config(mport, qr.url, xs.url, "create", False), mport) as relay:
            xs.wait(lambda e: len(xs.by_field("relaydedupkey")) >= 5, 30, "5 incidents")
            qr.update_offense(ids[0], magnitude=10)
            qr.close_offense(ids[1])
            # the sink saw both events (skipped them): wait for its counter, then check XSOAR
            relay.wait_metric("relay_xsoar_incidents_total", 2, 30, sink="xsoar", action="skipped")
        assert relay.returncode == 0, relay.stderr()[-3000:]
        incidents = xs.by_field("relaydedupkey")
        assert len(incidents) == 5 and all(len(v) == 1 for v in incidents.values())
        assert all(v[0]["status"] != 2 for v in incidents.values())
        assert all(v[0]["CustomFields"].get("sourceevent") == "created" for v in incidents.values())
        assert xs.stats["created"] == 5


# ============================================================================= enrichment of pulled events
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "lookups"


def _enrich_config(mport: int, qradar_url: str, xsoar_url: str, falcon_url: str, siem_addr: str,
                   workers: int) -> str:
    return f"""
[relay]
state_dir = "state"
metrics_address = "127.0.0.1:{mport}"
drain_timeout = 5
workers = {workers}

[sources.offenses]
type = "qradar_offenses"
url = "{qradar_url}"
token_file = "qradar.token"
poll_interval = 0.3
retry_base = 0.05

[sources.falcon]
type = "falcon"
base_url = "{falcon_url}"
client_id = "test-client"
client_secret_file = "falcon.secret"
poll_interval = 0.3
retry_base = 0.05

[sinks.xsoar]
type = "xsoar"
url = "{xsoar_url}"
api_key_file = "xsoar.key"
batch_size = 10

[sinks.siem]
type = "syslog"
address = "{siem_addr}"
format = "leef"

[routes.offenses]
match = 'source == "offenses"'
sinks = ["xsoar"]

[routes.falcon]
match = 'source == "falcon"'
sinks = ["siem"]

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
mode = "assist"
default_owner = "SOC Tier 1"

[[triage.owners]]
crown_jewel = true
owner = "{{asset_owner}}"
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_pulled_offense_and_alert_are_enriched_and_triaged(tmp_path, workers):
    """Seed 003's main flow: an offense the relay pulls itself, against a crown-jewel asset with a
    threat-intel hit, reaches XSOAR with the triage fields set and explained; a pulled Falcon
    alert's LEEF carries the triage score.  Pulled events go through the one stage, with one
    worker process or more."""
    (tmp_path / "qradar.token").write_text(SEC)
    (tmp_path / "xsoar.key").write_text(XSOAR_KEY)
    (tmp_path / "falcon.secret").write_text(SECRET)
    (tmp_path / "lookups").mkdir()
    for name in ("assets.csv", "vulns.csv", "ti_misp.csv"):
        shutil.copy(EXAMPLES / name, tmp_path / "lookups" / name)
    with QradarEmulator(token=SEC) as qr, _xsoar() as xs, FalconEmulator(client_secret=SECRET) as falcon, \
            QradarStandIn() as siem:
        cj = qr.add_offense(offense_source="203.0.113.7", offense_type=0, destination_addresses=["10.20.0.5"],
                            magnitude=7)["id"]
        plain = qr.add_offense(offense_source="192.0.2.44", offense_type=0, destination_addresses=["10.99.0.1"],
                               magnitude=7)["id"]
        falcon.add_alerts(2)
        mport = free_port()
        cfg = _enrich_config(mport, qr.url, xs.url, falcon.url, siem.address, workers)
        with RelayProcess(tmp_path, cfg, mport) as relay:
            xs.wait(lambda e: len(xs.by_field("relaydedupkey")) >= 2, 30, "2 incidents")
            siem.wait_for(2, 30)
            relay.wait_metric("relay_triage_total", 4, 10, mode="assist")
        assert relay.returncode == 0, relay.stderr()[-3000:]
        incs = xs.by_field("relaydedupkey")
        cf = incs[f"qradar:{cj}"][0]["CustomFields"]
        assert cf["relaytriageseverity"] == "critical" and cf["relaytriageowner"] == "Database Team"
        ex = cf["relaytriageexplanation"]
        assert "db-core-01 is a crown jewel" in ex
        assert "threat intel match 203.0.113.7 (ip) from misp event 1042" in ex
        other = incs[f"qradar:{plain}"][0]["CustomFields"]
        assert other["relaytriageowner"] == "SOC Tier 1" and "no threat intel match" in other["relaytriageexplanation"]
        lines = siem.snapshot()
        assert len(lines) == 2 and all("LEEF:2.0|CrowdStrike|FalconHost|1.0|" in ln for ln in lines)
        assert all(re.search(r"\^triageScore=\d+", ln) for ln in lines), lines[0][:400]

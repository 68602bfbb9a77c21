"""End to end: ``relay run`` subprocess closing the loop with the loopback emulators.

* RhythmX emulator -> relay (``type = "rhythmx_api"``) -> XSOAR emulator (REST sink): a polled
  incident reaches XSOAR, and the same incident also sent as a SigmaIncident over syslog (TCP)
  is still ONE XSOAR incident (same normaliser, same dedup key), across a relay restart.

Everything stays on 127.0.0.1.
"""
from __future__ import annotations

import time

import pytest

from tests.emulators.rhythmx import RhythmxEmulator
from tests.emulators.xsoar import XsoarEmulator
from tests.harness import free_port, sigma_line

pytestmark = [pytest.mark.e2e]

XSOAR_KEY = "e2e-xsoar-key-wb"
RX_KEY = "smk_e2e-rx-key-91"
RX_PASSWORD = "e2e-rx-pass-55"


def _rx_config(mport: int, tport: int, rx_url: str, xsoar_url: str) -> str:
    return f"""
[relay]
state_dir = "state"
metrics_address = "127.0.0.1:{mport}"
drain_timeout = 5

[sources.syslog_in]
type = "tcp"
address = "127.0.0.1:{tport}"

[sources.rhythmx]
type = "rhythmx_api"
url = "{rx_url}"
auth = "api_key"
api_key_file = "rx.key"
poll_interval = 0.3
page_size = 5
retry_base = 0.05
retry_cap = 0.5

[sinks.xsoar]
type = "xsoar"
url = "{xsoar_url}"
api_key_file = "xsoar.key"
batch_size = 10

[sinks.xsoar.retry]
base = 0.2
cap = 1

[routes.incidents]
match = 'vendor == "RhythmX"'
sinks = ["xsoar"]
"""


def test_rhythmx_polled_and_syslog_give_one_xsoar_incident(tmp_path, make_relay):
    (tmp_path / "rx.key").write_text(RX_KEY)
    (tmp_path / "xsoar.key").write_text(XSOAR_KEY)
    with RhythmxEmulator(api_key=RX_KEY, password=RX_PASSWORD) as rx, \
            XsoarEmulator(api_key=XSOAR_KEY, auth_id=None) as xs:
        both = rx.add_incident("INC-7601d999", risk_score=82)["incident_id"]
        polled = [rx.add_incident()["incident_id"] for _ in range(6)]
        rx.fail(503, count=1, op="feed")
        mport, tport = free_port(), free_port()
        cfg = _rx_config(mport, tport, rx.url, xs.url)

        def per_key():
            return xs.by_field("relaydedupkey")

        with make_relay(cfg, mport, tcp_port=tport) as relay:
            xs.wait(lambda e: len(per_key()) >= 7, 30, "7 incidents from the API")
            relay.send([sigma_line(both, 82), sigma_line("INC-syslog-only", 60)])
            xs.wait(lambda e: "rhythmx:INC-syslog-only" in per_key(), 30, "the syslog-only incident")
            relay.wait_metric("relay_parsed_total", 2, 30, source="syslog_in", format="rfc5424")
        assert relay.returncode == 0, relay.stderr()[-3000:]
        rx.update_incident(polled[0], risk_score=99)          # while down: polled again after restart
        later = rx.add_incident()["incident_id"]
        with make_relay(cfg, mport, tcp_port=tport) as relay2:
            relay2.send([sigma_line(later, 70)])               # syslog first, the poll after: still one
            xs.wait(lambda e: f"rhythmx:{later}" in per_key(), 30, "the incident added while down")
            relay2.wait_metric("relay_pull_incident_events_total", 1, 30, source="rhythmx", event="updated")
            relay2.wait_metric("relay_pull_incident_events_total", 1, 30, source="rhythmx", event="created")
            time.sleep(1.0)                                    # more polls: nothing new may be created
        assert relay2.returncode == 0, relay2.stderr()[-3000:]
        incidents = per_key()
        want = {f"rhythmx:{i}" for i in [both, *polled, later, "INC-syslog-only"]}
        assert set(incidents) == want
        assert all(len(v) == 1 for v in incidents.values()), \
            {k: len(v) for k, v in incidents.items() if len(v) > 1}
        assert xs.stats["created"] == len(want)
        inc = incidents[f"rhythmx:{both}"][0]
        assert inc["severity"] == 3 and inc["CustomFields"]["relaydedupkey"] == f"rhythmx:{both}"
        assert rx.stats["http_503"] == 1
        err = relay.stderr() + relay2.stderr()
        assert RX_KEY not in err and XSOAR_KEY not in err
        assert "ALERT" not in err

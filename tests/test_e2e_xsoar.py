"""End-to-end: SigmaIncident syslog over TCP -> `relay run` -> rule ``risk_score >= 70`` -> the
XSOAR emulator (tests/emulators/xsoar.py), everything on 127.0.0.1.

The promise under test: a matched high-risk event becomes exactly ONE XSOAR incident across
re-sent messages (a), an XSOAR outage answering 502 (b), a relay SIGKILLed mid-delivery and
restarted (c: the search before create covers incidents created whose answer never arrived),
sync-mode updates and closes (d), and bad credentials (e: nothing lost, the metric and the log
say why, the key never appears in the log).  Also the Generic Webhook sink (f) and a clear
start-up error when the API key's environment variable is missing (g).

Counts are checked on the emulator's incidents by the custom field ``relaydedupkey`` (or the
webhook's ``rawJSON.relay.dedup_key``) after the relay's queue is empty and a quiet period,
so late duplicates would be seen too.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.emulators.xsoar import XsoarEmulator
from tests.harness import LOOPBACK, counts, free_port, relay_cli, sigma_line, wait_until

pytestmark = pytest.mark.e2e

KEY = "e2e-K3Y-9f8e7d6c5b4a"
ENV = "RELAY_E2E_XSOAR_KEY"
FIELD = "relaydedupkey"


def relay_config(workdir: Path, *, tcp_port: int, metrics_port: int, sink: str) -> str:
    return f"""
[relay]
state_dir = "{workdir / 'state'}"
metrics_address = "{LOOPBACK}:{metrics_port}"
drain_timeout = 3.0
log_level = "info"

[relay.queue]
synchronous = "NORMAL"

[relay.retry]
base = 0.2
factor = 2.0
cap = 1.0
max_attempts = 0

[sources.tcp_in]
type = "tcp"
address = "{LOOPBACK}:{tcp_port}"
idle_timeout = 30.0

[routes.high_risk]
match = 'app_name == "SigmaIncident" and risk_score >= 70'
sinks = ["xsoar"]

[sinks.xsoar]
{sink}
"""


@pytest.fixture
def relay(tmp_path, make_relay):
    """``relay(sink)`` -> a RelayProcess (not started) with a TCP source and the XSOAR sink
    ``sink`` (its TOML body); ports and state dir stay the same across restarts."""
    def make(sink: str):
        tcp, met = free_port(), free_port()
        workdir = tmp_path / "relay"
        return make_relay(relay_config(workdir, tcp_port=tcp, metrics_port=met, sink=sink), met, workdir,
                          tcp_port=tcp)
    return make


def wait_drained(r, sent: float, timeout: float = 30.0) -> None:
    """relay_sent_total{sink=xsoar} >= sent and the queue empty."""
    r.wait_metric("relay_sent_total", sent, timeout, sink="xsoar")
    wait_until(lambda: r.metric("relay_queue_depth", sink="xsoar") == 0, timeout, what="empty queue", interval=0.1)


def rest_sink(emu: XsoarEmulator, extra: str = "", concurrency: int = 4) -> str:
    return (f'type = "xsoar"\nurl = "{emu.url}"\napi_key_env = "{ENV}"\ntimeout = 2.0\nconcurrency = {concurrency}\n'
            f'batch_size = 20\n{extra}')


@pytest.fixture
def emu(make_xsoar):
    return make_xsoar(api_key=KEY, auth_id="7")


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(ENV, KEY)   # RelayProcess passes os.environ on to `relay run`
    return KEY


def expect_once(emu: XsoarEmulator, ids, field: str = FIELD, quiet: float = 1.0) -> dict[str, dict]:
    time.sleep(quiet)                     # late duplicates would show up here
    have = counts(emu, field)
    want = {f"rhythmx:{i}": 1 for i in ids}
    assert have == want, {"missing": sorted(set(want) - set(have)),
                          "extra": sorted(set(have) - set(want)),
                          "duplicated": sorted(k for k, n in have.items() if n > 1)}
    return {k: v[0] for k, v in emu.by_field(field).items()}


# ----------------------------------------------------------------------------- (a)
@pytest.mark.parametrize("version", ["v6", "v8"])
def test_a_resent_messages_one_incident_each(tmp_path, key, emu, relay, version):
    extra = 'auth_id = "7"' if version == "v8" else ""
    r = relay(rest_sink(emu, extra))
    r.start()
    high = [f"INC-{i:03d}" for i in range(12)]
    lines = [sigma_line(i, 70 + n) for n, i in enumerate(high)] + \
            [sigma_line(f"LOW-{i}", 30 + i) for i in range(5)]
    for _ in range(3):
        r.send(lines)
    wait_drained(r, 3 * len(high))
    incs = expect_once(emu, high)
    assert all(i["CustomFields"]["riskscore"] >= "70" for i in incs.values())
    assert r.metric("relay_xsoar_incidents_total", sink="xsoar", action="created") == len(high)
    assert r.metric("relay_dlq_depth", sink="xsoar") == 0
    paths = {e["path"] for e in emu.log if e["op"] == "create"}
    assert paths == {"/incident"} and {e["version"] for e in emu.log if e["op"] == "create"} == {version[1]}
    assert r.stop() == 0
    assert KEY not in r.log()


# ----------------------------------------------------------------------------- (b)
def test_b_outage_502_then_recovery(tmp_path, key, emu, relay):
    r = relay(rest_sink(emu))
    r.start()
    ids = [f"INC-{i:03d}" for i in range(15)]
    # the outage starts once the relay is up (a start slowed by a loaded host used to eat
    # into a window opened before it, and the drain then finished 2 s after the send)
    t0 = time.monotonic()
    emu.fail(502, seconds=3.0)
    r.send([sigma_line(i, 85) for i in ids])
    wait_drained(r, len(ids), timeout=40)
    assert time.monotonic() - t0 >= 3.0        # nothing got through during the outage
    expect_once(emu, ids)
    assert emu.stats["http_502"] >= 2
    m = r.metrics()
    assert m.value("relay_send_errors_total", sink="xsoar", reason="server_error") >= 1
    assert m.value("relay_dlq_depth", sink="xsoar") == 0 and m.value("relay_sink_up", sink="xsoar") == 1
    assert r.stop() == 0


# ----------------------------------------------------------------------------- (c)
def test_c_sigkill_mid_delivery_then_restart(tmp_path, key, emu, relay):
    # every create is processed at once but answered 0.5 s later: a SIGKILL lands while
    # incidents exist in XSOAR whose creation the relay never heard of
    emu.slow(0.5, op="create", when="after")
    r = relay(rest_sink(emu, concurrency=2))
    r.start()
    ids = [f"INC-{i:03d}" for i in range(20)]
    r.send([sigma_line(i, 90) for i in ids])
    r.wait_metric("relay_enqueued_total", len(ids), sink="xsoar")
    emu.wait(lambda e: len(e.incidents()) >= 5, 20, "5 incidents before the kill")
    r.kill()
    before = len(emu.incidents())
    assert before < len(ids), "delivery finished before the kill: the test proves nothing"
    emu.clear_faults()
    r.start()
    emu.wait(lambda e: len(e.incidents()) >= len(ids), 30, "every incident after the restart")
    wait_until(lambda: r.metric("relay_queue_depth", sink="xsoar") == 0, 30, interval=0.1, what="empty queue")
    expect_once(emu, ids)
    m = r.metrics()
    # the unacknowledged creates were recognised (store or search), none created twice
    recognised = m.value("relay_xsoar_incidents_total", sink="xsoar", action="found") + \
        m.value("relay_xsoar_incidents_total", sink="xsoar", action="dedup_hit")
    assert recognised >= before, (recognised, before)
    assert m.value("relay_xsoar_incidents_total", sink="xsoar", action="found") >= 1
    assert emu.stats["search_hits"] >= 1
    assert r.stop() == 0


# ----------------------------------------------------------------------------- (d)
def test_d_sync_updates_and_close(tmp_path, key, emu, relay):
    r = relay(rest_sink(emu, 'mode = "sync"\nclose_on_source_close = true'))
    r.start()
    ids = ["INC-A", "INC-B", "INC-C"]
    r.send([sigma_line(i, 75) for i in ids])
    wait_drained(r, 3)
    emu.conflict_next(1)                  # an analyst edits one incident meanwhile
    r.send([sigma_line(i, 92, msgid="updated", status="IN_PROGRESS") for i in ids])
    wait_drained(r, 6)
    r.send([sigma_line(i, 92, msgid="closed", status="CLOSED") for i in ids[:2]])
    wait_drained(r, 8)
    incs = expect_once(emu, ids)
    for i in ids:
        inc = incs[f"rhythmx:{i}"]
        assert inc["CustomFields"]["riskscore"] == "92" and inc["version"] >= 2
    assert [incs[f"rhythmx:{i}"]["status"] for i in ids] == [2, 2, 1]
    assert emu.stats["conflicts"] == 1 and emu.stats["closed"] == 2
    m = r.metrics()
    assert m.value("relay_xsoar_incidents_total", sink="xsoar", action="version_conflicts") == 1
    assert m.value("relay_xsoar_incidents_total", sink="xsoar", action="closed") == 2
    assert r.stop() == 0


# ----------------------------------------------------------------------------- (e)
def test_e_bad_credentials_nothing_lost(tmp_path, monkeypatch, emu, relay):
    wrong = "wrong-KEY-123456"
    monkeypatch.setenv(ENV, wrong)
    r = relay(rest_sink(emu))
    r.start()
    ids = [f"INC-{i}" for i in range(6)]
    r.send([sigma_line(i, 80) for i in ids])
    r.wait_metric("relay_sink_blocked", 1, sink="xsoar")
    m = r.wait_metric("relay_queue_depth", len(ids), sink="xsoar")   # the gauge is refreshed each second
    time.sleep(0.5)
    assert r.metric("relay_sink_blocked", sink="xsoar") == 1 and r.metric("relay_queue_depth", sink="xsoar") == len(ids)
    assert m.value("relay_send_errors_total", sink="xsoar", reason="auth") >= 1
    assert m.value("relay_dlq_depth", sink="xsoar") == 0 and emu.incidents() == []
    log = r.stderr()
    assert "ALERT" in log and "HTTP 403" in log and "API key" in log, log[-2000:]
    assert wrong not in log and KEY not in log
    assert r.stop() == 0                   # a graceful stop keeps the events queued
    # the operator fixes the key and restarts: everything is delivered, once
    monkeypatch.setenv(ENV, KEY)
    r.start()
    wait_drained(r, len(ids))
    expect_once(emu, ids)
    assert r.metric("relay_sink_blocked", sink="xsoar") == 0
    assert r.stop() == 0
    assert wrong not in r.log() and KEY not in r.log()


# ----------------------------------------------------------------------------- (f)
def test_f_webhook_resent_once_each(key, make_xsoar, relay):
    emu = make_xsoar(webhook_auth=("_header:Authorization", KEY))
    r = relay(f'type = "xsoar_webhook"\nurl = "{emu.url}/instance/execute/relay"\nauth_header = "Authorization"\n'
              f'auth_value_env = "{ENV}"\nbatch_size = 10\nlinger = 0.2\ntimeout = 2.0')
    r.start()
    ids = [f"INC-{i:02d}" for i in range(8)]
    emu.fail(503, count=1)
    for _ in range(3):
        r.send([sigma_line(i, 88) for i in ids])
    wait_drained(r, 3 * len(ids))
    expect_once(emu, ids, field="rawJSON:relay.dedup_key")
    assert emu.stats["http_503"] == 1
    assert r.stop() == 0
    assert KEY not in r.log()


# ----------------------------------------------------------------------------- (g)
def test_g_missing_key_env_is_a_clear_start_error(tmp_path, monkeypatch, emu):
    monkeypatch.delenv(ENV, raising=False)
    workdir = tmp_path / "relay"
    workdir.mkdir()
    cfg = workdir / "relay.toml"
    cfg.write_text(relay_config(workdir, tcp_port=free_port(), metrics_port=free_port(), sink=rest_sink(emu)))
    p = relay_cli("run", "--config", cfg, text=True, env={k: v for k, v in os.environ.items() if k != ENV},
                  cwd=workdir)
    assert p.returncode == 2, p.stderr
    assert f"sinks.xsoar.api_key_env: environment variable {ENV} is not set" in p.stderr

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

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.emulators.xsoar import XsoarEmulator
from tests.peers import LOOPBACK, VENV_RELAY, RelayProcess, free_port, wait_until

pytestmark = pytest.mark.e2e

KEY = "e2e-K3Y-9f8e7d6c5b4a"
ENV = "RELAY_E2E_XSOAR_KEY"
FIELD = "relaydedupkey"
SDID = "incident@32473"


def sigma_line(inc: str, risk: int, *, msgid: str = "created", status: str = "OPEN") -> bytes:
    body = json.dumps({"incident_id": inc, "risk_score": risk}, separators=(",", ":"))
    return (f'<137>1 2026-03-13T04:30:00.123Z rx-01 SigmaIncident 4242 {msgid} '
            f'[{SDID} id="{inc}" actor="jdoe" entity="Primary Site" status="{status}" risk_score="{risk}" '
            f'alarm_count="12"] {body}').encode()


def send_tcp(port: int, lines: list[bytes]) -> None:
    with socket.create_connection((LOOPBACK, port), timeout=10) as s:
        s.sendall(b"".join(line + b"\n" for line in lines))
        s.shutdown(socket.SHUT_WR)
        s.settimeout(5)
        try:
            s.recv(1)   # the relay closes after reading everything (EOF)
        except OSError:
            pass


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


class Relay:
    """One relay configuration (ports and state dir fixed) that can be started several times."""

    def __init__(self, tmp_path: Path, sink: str) -> None:
        self.workdir = tmp_path / "relay"
        self.tcp_port = free_port()
        self.metrics_port = free_port()
        self.config = relay_config(self.workdir, tcp_port=self.tcp_port, metrics_port=self.metrics_port, sink=sink)
        self.proc: RelayProcess | None = None
        self.logs: list[str] = []

    def start(self) -> RelayProcess:
        self.proc = RelayProcess(self.workdir, self.config, self.metrics_port)
        self.proc.start()
        return self.proc

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        rc = self.proc.stop()
        self.logs.append(self.proc.stderr())
        self.proc = None
        return rc

    def kill(self) -> None:
        assert self.proc is not None and self.proc.proc is not None
        self.proc.proc.kill()             # SIGKILL: no drain, no goodbye
        self.proc.proc.wait(10)
        self.stop()

    def log(self) -> str:
        return "\n".join(self.logs) + (self.proc.stderr() if self.proc else "")

    def send(self, lines: list[bytes]) -> None:
        send_tcp(self.tcp_port, lines)

    def metric(self, name: str, **labels) -> float:
        return self.proc.metrics().value(name, **labels)

    def wait_metric(self, name: str, value: float, timeout: float = 30.0, **labels):
        return self.proc.wait_metric(name, value, timeout, **labels)

    def wait_drained(self, sent: float, timeout: float = 30.0) -> None:
        """relay_sent_total{sink=xsoar} >= sent and the queue empty."""
        self.wait_metric("relay_sent_total", sent, timeout, sink="xsoar")
        wait_until(lambda: self.metric("relay_queue_depth", sink="xsoar") == 0, timeout, 0.1, "empty queue")


def rest_sink(emu: XsoarEmulator, extra: str = "", concurrency: int = 4) -> str:
    return (f'type = "xsoar"\nurl = "{emu.url}"\napi_key_env = "{ENV}"\ntimeout = 2.0\nconcurrency = {concurrency}\n'
            f'batch_size = 20\n{extra}')


@pytest.fixture
def emu():
    e = XsoarEmulator(api_key=KEY, auth_id="7")
    e.start()
    try:
        yield e
    finally:
        e.close()


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(ENV, KEY)   # RelayProcess passes os.environ on to `relay run`
    return KEY


@pytest.fixture
def relays():
    made: list[Relay] = []
    yield made
    for r in made:
        r.stop()


def counts(emu: XsoarEmulator, field: str = FIELD) -> dict[str, int]:
    return {k: len(v) for k, v in emu.by_field(field).items()}


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
def test_a_resent_messages_one_incident_each(tmp_path, key, emu, relays, version):
    extra = 'auth_id = "7"' if version == "v8" else ""
    r = Relay(tmp_path, rest_sink(emu, extra))
    relays.append(r)
    r.start()
    high = [f"INC-{i:03d}" for i in range(12)]
    lines = [sigma_line(i, 70 + n) for n, i in enumerate(high)] + \
            [sigma_line(f"LOW-{i}", 30 + i) for i in range(5)]
    for _ in range(3):
        r.send(lines)
    r.wait_drained(3 * len(high))
    incs = expect_once(emu, high)
    assert all(i["CustomFields"]["riskscore"] >= "70" for i in incs.values())
    assert r.metric("relay_xsoar_incidents_total", sink="xsoar", action="created") == len(high)
    assert r.metric("relay_dlq_depth", sink="xsoar") == 0
    paths = {e["path"] for e in emu.log if e["op"] == "create"}
    assert paths == {"/incident"} and {e["version"] for e in emu.log if e["op"] == "create"} == {version[1]}
    assert r.stop() == 0
    assert KEY not in r.log()


# ----------------------------------------------------------------------------- (b)
def test_b_outage_502_then_recovery(tmp_path, key, emu, relays):
    emu.fail(502, seconds=3.0)
    r = Relay(tmp_path, rest_sink(emu))
    relays.append(r)
    r.start()
    ids = [f"INC-{i:03d}" for i in range(15)]
    t0 = time.monotonic()
    r.send([sigma_line(i, 85) for i in ids])
    r.wait_drained(len(ids), timeout=40)
    assert time.monotonic() - t0 >= 2.5        # nothing got through during the outage
    expect_once(emu, ids)
    assert emu.stats["http_502"] >= 2
    m = r.proc.metrics()
    assert m.value("relay_send_errors_total", sink="xsoar", reason="server_error") >= 1
    assert m.value("relay_dlq_depth", sink="xsoar") == 0 and m.value("relay_sink_up", sink="xsoar") == 1
    assert r.stop() == 0


# ----------------------------------------------------------------------------- (c)
def test_c_sigkill_mid_delivery_then_restart(tmp_path, key, emu, relays):
    # every create is processed at once but answered 0.5 s later: a SIGKILL lands while
    # incidents exist in XSOAR whose creation the relay never heard of
    emu.slow(0.5, op="create", when="after")
    r = Relay(tmp_path, rest_sink(emu, concurrency=2))
    relays.append(r)
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
    wait_until(lambda: r.metric("relay_queue_depth", sink="xsoar") == 0, 30, 0.1, "empty queue")
    expect_once(emu, ids)
    m = r.proc.metrics()
    # the unacknowledged creates were recognised (store or search), none created twice
    recognised = m.value("relay_xsoar_incidents_total", sink="xsoar", action="found") + \
        m.value("relay_xsoar_incidents_total", sink="xsoar", action="dedup_hit")
    assert recognised >= before, (recognised, before)
    assert m.value("relay_xsoar_incidents_total", sink="xsoar", action="found") >= 1
    assert emu.stats["search_hits"] >= 1
    assert r.stop() == 0


# ----------------------------------------------------------------------------- (d)
def test_d_sync_updates_and_close(tmp_path, key, emu, relays):
    r = Relay(tmp_path, rest_sink(emu, 'mode = "sync"\nclose_on_source_close = true'))
    relays.append(r)
    r.start()
    ids = ["INC-A", "INC-B", "INC-C"]
    r.send([sigma_line(i, 75) for i in ids])
    r.wait_drained(3)
    emu.conflict_next(1)                  # an analyst edits one incident meanwhile
    r.send([sigma_line(i, 92, msgid="updated", status="IN_PROGRESS") for i in ids])
    r.wait_drained(6)
    r.send([sigma_line(i, 92, msgid="closed", status="CLOSED") for i in ids[:2]])
    r.wait_drained(8)
    incs = expect_once(emu, ids)
    for i in ids:
        inc = incs[f"rhythmx:{i}"]
        assert inc["CustomFields"]["riskscore"] == "92" and inc["version"] >= 2
    assert [incs[f"rhythmx:{i}"]["status"] for i in ids] == [2, 2, 1]
    assert emu.stats["conflicts"] == 1 and emu.stats["closed"] == 2
    m = r.proc.metrics()
    assert m.value("relay_xsoar_incidents_total", sink="xsoar", action="version_conflicts") == 1
    assert m.value("relay_xsoar_incidents_total", sink="xsoar", action="closed") == 2
    assert r.stop() == 0


# ----------------------------------------------------------------------------- (e)
def test_e_bad_credentials_nothing_lost(tmp_path, monkeypatch, emu, relays):
    wrong = "wrong-KEY-123456"
    monkeypatch.setenv(ENV, wrong)
    r = Relay(tmp_path, rest_sink(emu))
    relays.append(r)
    r.start()
    ids = [f"INC-{i}" for i in range(6)]
    r.send([sigma_line(i, 80) for i in ids])
    r.wait_metric("relay_sink_blocked", 1, sink="xsoar")
    m = r.wait_metric("relay_queue_depth", len(ids), sink="xsoar")   # the gauge is refreshed each second
    time.sleep(0.5)
    assert r.metric("relay_sink_blocked", sink="xsoar") == 1 and r.metric("relay_queue_depth", sink="xsoar") == len(ids)
    assert m.value("relay_send_errors_total", sink="xsoar", reason="auth") >= 1
    assert m.value("relay_dlq_depth", sink="xsoar") == 0 and emu.incidents() == []
    log = r.proc.stderr()
    assert "ALERT" in log and "HTTP 403" in log and "API key" in log, log[-2000:]
    assert wrong not in log and KEY not in log
    assert r.stop() == 0                   # a graceful stop keeps the events queued
    # the operator fixes the key and restarts: everything is delivered, once
    monkeypatch.setenv(ENV, KEY)
    r.start()
    r.wait_drained(len(ids))
    expect_once(emu, ids)
    assert r.metric("relay_sink_blocked", sink="xsoar") == 0
    assert r.stop() == 0
    assert wrong not in r.log() and KEY not in r.log()


# ----------------------------------------------------------------------------- (f)
def test_f_webhook_resent_once_each(tmp_path, key):
    with XsoarEmulator(webhook_auth=("_header:Authorization", KEY)) as emu:
        sink = (f'type = "xsoar_webhook"\nurl = "{emu.url}/instance/execute/relay"\nauth_header = "Authorization"\n'
                f'auth_value_env = "{ENV}"\nbatch_size = 10\nlinger = 0.2\ntimeout = 2.0')
        r = Relay(tmp_path, sink)
        try:
            r.start()
            ids = [f"INC-{i:02d}" for i in range(8)]
            emu.fail(503, count=1)
            for _ in range(3):
                r.send([sigma_line(i, 88) for i in ids])
            r.wait_drained(3 * len(ids))
            expect_once(emu, ids, field="rawJSON:relay.dedup_key")
            assert emu.stats["http_503"] == 1
            assert r.stop() == 0
            assert KEY not in r.log()
        finally:
            r.stop()


# ----------------------------------------------------------------------------- (g)
def test_g_missing_key_env_is_a_clear_start_error(tmp_path, monkeypatch, emu):
    if not VENV_RELAY.exists():
        pytest.skip(f"{VENV_RELAY} is missing: run ./scripts/setup --test")
    monkeypatch.delenv(ENV, raising=False)
    r = Relay(tmp_path, rest_sink(emu))
    r.workdir.mkdir(parents=True, exist_ok=True)
    cfg = r.workdir / "relay.toml"
    cfg.write_text(r.config)
    p = subprocess.run([str(VENV_RELAY), "run", "--config", str(cfg)], capture_output=True, text=True, timeout=30,
                       env={k: v for k, v in os.environ.items() if k != ENV}, cwd=r.workdir)
    assert p.returncode == 2, p.stderr
    assert f"sinks.xsoar.api_key_env: environment variable {ENV} is not set" in p.stderr

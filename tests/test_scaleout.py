"""The scale-out cluster test (issue 20, item 4; docs/scale-out.md), every process on loopback:

* a 3-node nats-server JetStream cluster (stream ``relay-events``, 3 replicas, 4 partitions;
  KV bucket ``relay-claims``, 3 replicas);
* HAProxy (Debian's) in front of 2 ingest relays (tcp source with ``proxy_protocol``, PROXY v2
  with health checks; ``nats`` sink);
* 2 delivery relays (``nats`` source, durable ``delivery``; ``[relay.claims]``) delivering to a
  QRadar stand-in (counting TCP syslog receiver, JSON lines) and to the XSOAR emulator;
* EVENTS events, a quarter of them high-risk RhythmX incidents (two messages per incident,
  "created" and "updated": the second is a different event with the same dedup key, which the
  two delivery relays may take at the same time), each event sent twice, once through each
  ingest relay (HAProxy frontend ``a`` prefers ingest 1, frontend ``b`` ingest 2; each falls
  back to the other when its relay is down);
* mid-run: SIGKILL one ingest relay, one NATS node and one delivery relay, each restarted a
  little later (a dead relay's local queue is delivered when it comes back).

Required: every event at QRadar (duplicates only from the windows docs/scale-out.md names:
what a killed delivery relay had fetched and not acked, and what its syslog sink had sent and
not yet acked in its queue), exactly one XSOAR incident per dedup key, and the second copy of
every event stored once by JetStream (``Nats-Msg-Id``).

EVENTS is 20,000 (the issue's figure).  The test prints its figures (duration, duplicates,
JetStream duplicates).
"""
from __future__ import annotations

import collections
import os
import shutil
import socket
import subprocess
import time

import pytest

from tests.harness import LOOPBACK, QradarStandIn, RelayProcess, WaitTimeout, counts, free_port, sigma_line, \
    wait_until
from tests.natsctl import NatsCluster, need_nats

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EVENTS = int(os.environ.get("RELAY_SCALEOUT_EVENTS", "20000"))
PARTITIONS = 4
KEY = "k3y-S3CRET-scaleout"
ENV = "RELAY_TEST_XSOAR_KEY"
HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)


def need_haproxy():
    if HAPROXY is None:
        pytest.skip("needs haproxy (scripts/test-deps installs Debian's haproxy)")


# ----------------------------------------------------------------------------- the events

def events(n: int) -> list[bytes]:
    """Event i: a quarter are high-risk incidents (risk 90, two messages per incident id), the
    rest low-risk (risk 30, one incident id each, not routed to XSOAR)."""
    out = []
    n_hi = n // 4
    for i in range(n):
        if i < n_hi:
            inc, msgid = f"HI-{i // 2:07d}", ("created" if i % 2 == 0 else "updated")
            out.append(sigma_line(inc, 90, msgid=msgid, sd={"seq": i}))
        else:
            out.append(sigma_line(f"INC-{i:08d}", 30, sd={"seq": i}))
    return out


def seq(line: str) -> int:
    import orjson
    return int(orjson.loads(line)["event"]["extra"]["seq"])


# ----------------------------------------------------------------------------- configs

def haproxy_cfg(fa: int, fb: int, flc: int, i1: int, i2: int) -> str:
    servers = "    default-server check inter 500ms fall 2 rise 2 send-proxy-v2\n"
    return f"""global
    maxconn 2000

defaults
    mode tcp
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    timeout check 2s
    retries 3
    option redispatch

frontend a
    bind {LOOPBACK}:{fa}
    default_backend prefer_1
frontend b
    bind {LOOPBACK}:{fb}
    default_backend prefer_2
frontend lc
    bind {LOOPBACK}:{flc}
    default_backend both

backend prefer_1
{servers}    server i1 {LOOPBACK}:{i1}
    server i2 {LOOPBACK}:{i2} backup
backend prefer_2
{servers}    server i2 {LOOPBACK}:{i2}
    server i1 {LOOPBACK}:{i1} backup
backend both
    balance leastconn
{servers}    server i1 {LOOPBACK}:{i1}
    server i2 {LOOPBACK}:{i2}
"""


def ingest_cfg(d, tcp: int, metrics: int, servers: str) -> str:
    return f"""
[relay]
state_dir = "{d}/state"
metrics_address = "127.0.0.1:{metrics}"
drain_timeout = 5

[relay.retry]
base = 0.5
cap = 5

[sources.syslog_tcp]
type = "tcp"
address = "127.0.0.1:{tcp}"
proxy_protocol = true
proxy_from = ["127.0.0.1/32"]

[sinks.bus]
type = "nats"
servers = {servers}
replicas = 3
partitions = {PARTITIONS}
publish_timeout = 2.0

[routes.all]
match = "true"
sinks = ["bus"]
"""


def delivery_cfg(d, metrics: int, servers: str, qradar: str, xsoar: str) -> str:
    return f"""
[relay]
state_dir = "{d}/state"
metrics_address = "127.0.0.1:{metrics}"
drain_timeout = 5

[relay.retry]
base = 0.5
cap = 5
max_attempts = 0

[relay.claims]
nats = {servers}
replicas = 3
wait = 20
claim_timeout = 30

[sources.bus]
type = "nats"
servers = {servers}
durable = "delivery"
partitions = {PARTITIONS}
ack_wait = 5

[sinks.qradar]
type = "syslog"
address = "{qradar}"
protocol = "tcp"
format = "json"

[sinks.xsoar]
type = "xsoar"
url = "{xsoar}"
api_key_env = "{ENV}"
timeout = 5
concurrency = 8

[routes.incidents]
match = 'risk_score >= 70'
sinks = ["xsoar"]

[routes.all]
match = "true"
sinks = ["qradar"]
"""


# ----------------------------------------------------------------------------- sender

class Sender:
    """One TCP connection to an HAProxy frontend; a send that fails reconnects and sends the
    chunk again (a forwarder's retransmission: duplicates, absorbed downstream)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None
        self.reconnects = 0

    def send(self, data: bytes) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.sock is None:
                    self.sock = socket.create_connection((LOOPBACK, self.port), timeout=10)
                self.sock.sendall(data)
                return
            except OSError:
                self.close()
                self.reconnects += 1
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None


# ----------------------------------------------------------------------------- the test

def test_cluster_nats_haproxy_two_tiers_kills(tmp_path, make_xsoar):
    need_nats()
    need_haproxy()
    t0 = time.monotonic()
    emu = make_xsoar(api_key=KEY)
    nats = NatsCluster(tmp_path / "nats", nodes=3)
    servers = nats.toml_servers()
    ports = {k: free_port() for k in ("i1", "i2", "mi1", "mi2", "md1", "md2", "fa", "fb", "flc")}
    qr = QradarStandIn()
    env = {ENV: KEY}
    ingest = [RelayProcess(tmp_path / f"ingest{i}", ingest_cfg(tmp_path / f"ingest{i}", ports[f"i{i}"],
                                                               ports[f"mi{i}"], servers),
                           ports[f"mi{i}"], tcp_port=ports[f"i{i}"], env=env) for i in (1, 2)]
    delivery = [RelayProcess(tmp_path / f"delivery{i}", delivery_cfg(tmp_path / f"delivery{i}", ports[f"md{i}"], servers,
                                                                     qr.address, emu.url), ports[f"md{i}"], env=env)
                for i in (1, 2)]
    hcfg = tmp_path / "haproxy.cfg"
    hcfg.write_text(haproxy_cfg(ports["fa"], ports["fb"], ports["flc"], ports["i1"], ports["i2"]))
    hlog = open(tmp_path / "haproxy.log", "wb")
    haproxy = None
    senders: list[Sender] = []
    try:
        nats.start()
        nats.wait_ready(60)
        for r in ingest + delivery:
            r.start(ready_timeout=60)
        haproxy = subprocess.Popen([HAPROXY, "-f", str(hcfg), "-db"], stdin=subprocess.DEVNULL, stdout=hlog,
                                   stderr=subprocess.STDOUT)
        # HAProxy's health checks (PROXY v2 LOCAL headers) reach both ingest relays
        for r in ingest:
            r.wait_metric("relay_proxy_headers_total", 1, timeout=30, kind="v2_local")
        msgs = events(EVENTS)
        senders = [Sender(ports["fa"]), Sender(ports["fb"])]
        chunk = max(50, EVENTS // 40)
        chunks = [b"".join(m + b"\n" for m in msgs[i:i + chunk]) for i in range(0, len(msgs), chunk)]
        n = len(chunks)
        plan = {n * 3 // 10: "kill ingest 1", n * 45 // 100: "kill nats n2", n * 7 // 10: "restart ingest 1"}
        assert len(plan) == 3
        t_send = time.monotonic()
        for k, data in enumerate(chunks):
            what = plan.get(k)
            if what == "kill ingest 1":
                ingest[0].kill()
            elif what == "kill nats n2":
                nats.kill(2)
            elif what == "restart ingest 1":
                ingest[0].start(ready_timeout=60)
            # the copy through ingest 1 (frontend a) and the copy through ingest 2 (frontend b)
            senders[0].send(data)
            senders[1].send(data)
        # the delivery tier is still working through the stream: kill a delivery relay while it
        # delivers, let the other carry on, bring it back (its local queue is delivered then)
        wait_until(lambda: qr.count() >= EVENTS * 35 // 100, 120, what="delivery under way", interval=0.05)
        redeliv_killed = delivery[0].metric("relay_nats_redelivered_total", source="bus")
        delivery[0].kill()
        at_kill = qr.count()
        wait_until(lambda: qr.count() >= min(EVENTS, at_kill + EVENTS // 10), 120, what="the other delivery "
                   "relay carrying on", interval=0.1)
        t_restart = time.monotonic()
        delivery[0].start(ready_timeout=60)
        nats.start(2)
        for s in senders:
            s.close()
        sent_s = time.monotonic() - t_send
        want = set(range(EVENTS))

        def arrived():
            return {seq(x) for x in qr.snapshot()} >= want
        try:
            wait_until(arrived, 150, what=f"all {EVENTS} events at the QRadar stand-in", interval=0.5)
        except WaitTimeout:
            missing = sorted(want - {seq(x) for x in qr.snapshot()})
            raise AssertionError(f"{len(missing)} events missing at QRadar, e.g. {missing[:10]}; "
                                 + " | ".join(f"delivery{i}: {r.stderr()[-1500:]}" for i, r in enumerate(delivery))
                                 ) from None
        keys = {f"rhythmx:HI-{i:07d}" for i in range(EVENTS // 8)}
        wait_until(lambda: set(counts(emu)) >= keys, 60, what="an XSOAR incident for every key", interval=0.5)
        qr.wait_quiet(2.0, timeout=60)
        c = counts(emu)
        assert set(c) == keys
        twice = {k: v for k, v in c.items() if v != 1}
        assert not twice, f"{len(twice)} dedup keys with more than one XSOAR incident: {list(twice.items())[:5]}"
        seqs = collections.Counter(seq(x) for x in qr.snapshot())
        dups = sum(v - 1 for v in seqs.values())
        jdups = sum(r.metric("relay_nats_duplicates_total", sink="bus") for r in ingest)
        # redeliveries to every delivery relay, the killed one's before its SIGKILL included
        redeliv = redeliv_killed + sum(r.metric("relay_nats_redelivered_total", source="bus") for r in delivery)
        acked = [r.metric("relay_nats_acked_total", source="bus") for r in delivery]
        # the killed relay's connections to QRadar: those its peer had closed before the restart
        # (none when the other relay had delivered everything until the kill)
        lines, line_conn, closed_at = qr.snapshot_by_connection()
        killed_conns = {c for c, t in closed_at.items() if t < t_restart}
        before_kill = collections.Counter(seq(x) for x, c in zip(lines, line_conn) if c in killed_conns)
        # a line the killed relay had delivered and sent again after its restart (its syslog sink
        # had written it and not yet settled it: the settle window, docs/reliability.md)
        replayed = sum(1 for k, v in before_kill.items() if seqs[k] > v)
        unexplained = dups - replayed
        claims = {res: sum(r.metric("relay_claims_total", sink="xsoar", result=res) for r in delivery)
                  for res in ("won", "lost", "waited", "own", "taken_over", "unavailable")}
        total = time.monotonic() - t0
        print(f"\nscale-out: {EVENTS} events x 2 copies sent in {sent_s:.1f} s; total {total:.1f} s; "
              f"QRadar lines {sum(seqs.values())} (duplicates {dups}); JetStream duplicate PubAcks {jdups:.0f}; "
              f"redelivered {redeliv:.0f}; acked per delivery relay (since its start) {acked}; "
              f"killed relay's connections {sorted(killed_conns)} delivered {sum(before_kill.values())} lines, "
              f"{replayed} sent again after its restart; kill at {at_kill}; sender reconnects {[s.reconnects for s in senders]}; claims {claims}")
        # the second copies were stored once: JetStream answered "duplicate" for most of them
        # (the copies of the killed ingest relay's lost suffix and the retransmitted chunks vary)
        assert jdups >= EVENTS * 0.5, jdups
        # duplicates come only from the delivery relay's kill (docs/scale-out.md, "a delivery relay
        # dies"): lines the killed relay had delivered and its syslog sink had not yet settled (the
        # settle window: up to settle_delay x the rate, at most settle_events = 10,000 acknowledged
        # lines plus the bytes in flight), sent again from its disk queue after the restart, and
        # what JetStream delivered again (fetched and not acked).  Anything else (the stream storing
        # a copy twice, a live relay sending a line twice) fails here.
        assert unexplained <= redeliv, (f"{unexplained} duplicate lines at QRadar beyond the killed relay's "
                                        f"settle window ({replayed} lines) and JetStream's {redeliv:.0f} "
                                        f"redeliveries")
    finally:
        for s in senders:
            s.close()
        if haproxy is not None:
            haproxy.kill()
            haproxy.wait(10)
        hlog.close()
        for r in ingest + delivery:
            r.stop(10)
        nats.close()
        qr.close()

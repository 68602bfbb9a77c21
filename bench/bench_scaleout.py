"""Scale-out figures (issue 20; docs/scale-out.md): syslog messages/s through HAProxy into 1, 2
and 3 ingest relays publishing to a 3-node JetStream cluster (stream R3), and the cost of the
JetStream hop per event.  Not CI: run it on a quiet machine.

    .venv/bin/python bench/bench_scaleout.py [--events 60000] [--connections 6]

For each N: N ingest relays (tcp source with proxy_protocol, nats sink, workers = 1) behind
HAProxy (leastconn, send-proxy-v2); ``--connections`` senders (threads) push the events through
HAProxy as fast as the relays take them; the rate is events / (time until every event has a
PubAck, i.e. relay_sent_total{sink="bus"} reaches the count).  CPU per event is read from
/proc for the relays and the three nats-servers.  The hop cost compares one ingest relay with a
``nats`` sink and the same relay with a ``file`` sink (fsync per batch) on the same traffic.
Everything on loopback; every process is stopped at the end.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness import LOOPBACK, RelayProcess, free_port, sigma_line, wait_until  # noqa: E402
from tests.natsctl import NatsCluster  # noqa: E402

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
TICK = os.sysconf("SC_CLK_TCK")


def cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / TICK


def relay_cfg(d: Path, tcp: int, metrics: int, sink: str) -> str:
    return f"""
[relay]
state_dir = "{d}/state"
metrics_address = "127.0.0.1:{metrics}"
[sources.syslog_tcp]
type = "tcp"
address = "127.0.0.1:{tcp}"
proxy_protocol = true
proxy_from = ["127.0.0.1/32"]
[sinks.bus]
{sink}
[routes.all]
match = "true"
sinks = ["bus"]
"""


def haproxy_cfg(front: int, backends: list[int]) -> str:
    servers = "\n".join(f"    server r{i} {LOOPBACK}:{p}" for i, p in enumerate(backends))
    return f"""global
    maxconn 2000
defaults
    mode tcp
    timeout connect 2s
    timeout client 1h
    timeout server 1h
frontend f
    bind {LOOPBACK}:{front}
    default_backend b
backend b
    balance leastconn
    default-server send-proxy-v2
{servers}
"""


def run(n: int, events: int, conns: int, work: Path, nats: NatsCluster | None, sink_kind: str) -> dict:
    work.mkdir(parents=True)
    if sink_kind == "nats":
        sink = f'type = "nats"\nservers = {nats.toml_servers()}\nreplicas = 3\npartitions = 8\nstream = "{work.name}"\n' \
               f'subject = "bench.{work.name}"'
    else:
        sink = f'type = "file"\npath = "{work}/out.log"\nformat = "json"'
    relays = []
    for i in range(n):
        tcp, m = free_port(), free_port()
        relays.append(RelayProcess(work / f"r{i}", relay_cfg(work / f"r{i}", tcp, m, sink), m, tcp_port=tcp))
    for r in relays:
        r.start(ready_timeout=60)
    front = free_port()
    (work / "haproxy.cfg").write_text(haproxy_cfg(front, [r.tcp_port for r in relays]))
    hp = subprocess.Popen([HAPROXY, "-f", str(work / "haproxy.cfg"), "-db"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    per = events // conns
    payloads = []
    for c in range(conns):
        msgs = [sigma_line(f"B{c}-{i:08d}", 50, sd={"seq": i}) + b"\n" for i in range(per)]
        payloads.append([b"".join(msgs[j:j + 500]) for j in range(0, per, 500)])
    import socket

    def send(chunks):
        s = socket.create_connection((LOOPBACK, front))
        for ch in chunks:
            s.sendall(ch)
        s.close()
    nats_pids = [p.pid for p in nats.procs] if nats is not None else []
    c0 = {p: cpu(p) for p in [r.proc.pid for r in relays] + nats_pids}
    t0 = time.monotonic()
    ts = [threading.Thread(target=send, args=(p,)) for p in payloads]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    total = per * conns
    wait_until(lambda: sum(r.metric("relay_sent_total", sink="bus") for r in relays) >= total, 600,
               what="everything delivered", interval=0.2)
    dt = time.monotonic() - t0
    c1 = {p: cpu(p) for p in c0}
    relay_cpu = sum(c1[r.proc.pid] - c0[r.proc.pid] for r in relays)
    nats_cpu = sum(c1[p] - c0[p] for p in nats_pids)
    hp.kill()
    hp.wait()
    for r in relays:
        r.stop(20)
    return {"n": n, "events": total, "seconds": dt, "rate": total / dt, "relay_us": relay_cpu / total * 1e6,
            "nats_us": nats_cpu / total * 1e6}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=60000)
    ap.add_argument("--connections", type=int, default=6)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp:
        tmp = Path(tmp)
        nats = NatsCluster(tmp / "nats", nodes=3)
        nats.start()
        try:
            nats.wait_ready(60)
            print(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; {a.events} events, {a.connections} "
                  f"connections through HAProxy (leastconn, PROXY v2) -> ingest relays -> JetStream R3 (3 nodes)")
            res = [run(n, a.events, a.connections, tmp / f"nats{n}", nats, "nats") for n in (1, 2, 3)]
            file1 = run(1, a.events, a.connections, tmp / "file1", None, "file")
        finally:
            nats.close()
    print("| ingest relays | msgs/s (PubAck'ed) | relay CPU us/event | nats-server CPU us/event (3 nodes) |")
    print("|---|---|---|---|")
    for r in res:
        print(f"| {r['n']} | {r['rate']:,.0f} | {r['relay_us']:.0f} | {r['nats_us']:.0f} |")
    print(f"| 1, file sink instead | {file1['rate']:,.0f} | {file1['relay_us']:.0f} | - |")
    hop = res[0]["relay_us"] - file1["relay_us"] + res[0]["nats_us"]
    print(f"JetStream hop per event: relay side {res[0]['relay_us'] - file1['relay_us']:+.0f} us vs a file sink, "
          f"nats-server side {res[0]['nats_us']:.0f} us; total ~{hop:.0f} us of CPU")


if __name__ == "__main__":
    main()

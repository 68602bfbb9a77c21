#!/usr/bin/env python3
"""Benchmark the http source: `relay run` (subprocess) with a bearer-token http source, the
Sekoia map, a catch-all route and a file sink (JSON lines, fsync per batch) behind its durable
queue (``synchronous = "FULL"``: one fsync per group commit).  Every 200 means the request's
events are committed.

Phases (each on a fresh relay; the client is this process, asyncio, raw HTTP/1.1 keep-alive
connections with TCP_NODELAY, so its own cost stays small):

  batch    NDJSON bodies of ``--batch`` (500) events each, ``--conns`` (4) connections each
           with one request in flight, as fast as answered, for ``--seconds`` -> events/s,
           requests/s, latency p50/p99 of a batch request, relay CPU us per event
  single   one-event JSON POSTs at a fixed rate (``--rate`` 500/s, open loop: latency is counted
           from when the request was due, so a stall is never hidden) over ``--single-conns``
           (16) keep-alive connections, for ``--seconds`` -> achieved rate, p50/p99/max latency,
           relay CPU us per request
  server   the HTTP server alone (relay/httpserver.py with a trivial ASGI app that reads the body
           and answers 200): one-event POSTs as fast as answered over 8 connections -> server CPU
           us per request: the library's cost, without staging or queueing

Targets of issue 15 on this 2-core machine: batch >= 30,000 events/s; single p99 <= 25 ms at
500 requests/s.  The machine load (uptime) is printed with the figures (bench/README.md).

    .venv/bin/python bench/bench_http_intake.py [--seconds 10] [--batch 500] [--conns 4] [--rate 500]
        [--single-conns 16] [--phases batch,single,server] [--sync FULL|NORMAL] [--json PATH] [--keep]

Loopback only; bounded in time; stops every process it starts.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token-5b1f0c"
CLK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its threads, plus its live children's (the ingest
    workers with ``--workers`` > 1)."""
    total = 0.0
    for st in Path("/proc").glob("[0-9]*/stat"):
        try:
            f = st.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if st.parent.name == str(pid) or f[1] == str(pid):
            total += (int(f[11]) + int(f[12])) / CLK
    return total


def relay_exe() -> list[str]:
    exe = Path(sys.executable).parent / "relay"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "relay.cli"]


CONFIG = """
[relay]
state_dir = "{d}/state"
metrics_address = "127.0.0.1:{met}"
log_level = "warning"
workers = {workers}
[relay.queue]
synchronous = "{sync}"
[sources.alerts]
type = "http"
address = "127.0.0.1:{port}"
paths = ["/batch", "/alert"]
format = "{fmt}"
token_env = "BENCH_HTTP_TOKEN"
map = "sekoia"
max_body = 4194304
{sink}
[routes.all]
match = 'true'
sinks = ["archive"]
"""


class Relay:
    def __init__(self, d: Path, fmt: str, sync: str, sink: str = "file", workers: int = 1) -> None:
        self.d = d
        self.port, self.met = free_port(), free_port()
        d.mkdir(parents=True, exist_ok=True)
        if sink == "file":
            s = f'[sinks.archive]\ntype = "file"\npath = "{d}/archive.jsonl"\nformat = "json"'
        else:   # queue only: a syslog sink whose receiver is down (nothing is delivered meanwhile)
            s = (f'[sinks.archive]\ntype = "syslog"\naddress = "127.0.0.1:{free_port()}"\nformat = "json"\n'
                 f'[sinks.archive.retry]\nbase = 600.0')
        (d / "relay.toml").write_text(CONFIG.format(d=d, met=self.met, port=self.port, fmt=fmt, sync=sync, sink=s,
                                                               workers=workers))
        self.log = open(d / "relay.log", "wb")
        env = dict(os.environ, BENCH_HTTP_TOKEN=TOKEN)
        self.proc = subprocess.Popen([*relay_exe(), "run", "-c", str(d / "relay.toml")], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env, cwd=d)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.met}/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise SystemExit(f"relay did not start: {(d / 'relay.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


# ------------------------------------------------------------------------------ the client

class Conn:
    """One keep-alive HTTP/1.1 connection, one request at a time."""

    def __init__(self, reader, writer) -> None:
        self.r, self.w = reader, writer

    @classmethod
    async def open(cls, port: int) -> "Conn":
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(r, w)

    async def post(self, request: bytes) -> tuple[int, bytes]:
        self.w.write(request)
        head = await self.r.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        n = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                n = int(line[15:])
        body = await self.r.readexactly(n) if n else b""
        return status, body

    def close(self) -> None:
        self.w.close()


def request(path: str, body: bytes, ctype: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def alert(i: int) -> dict:
    return {"name": "Brute force on VPN", "occurred": "2025-05-14T09:12:44Z", "alertId": f"AL{i:010d}",
            "alertUrl": f"https://app.sekoia.io/sic/alerts/AL{i:010d}", "urgency": 40 + i % 60,
            "events": [{"timestamp": "2025-05-14T09:12:40Z", "source.ip": f"203.0.113.{i % 250}",
                        "host.name": f"vpn-gw-{i % 7:02d}"}]}


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def run_batch(port: int, pid: int, seconds: float, batch: int, conns: int) -> dict:
    bodies = []
    for k in range(32):        # distinct bodies (dedup keys differ), reused round robin
        lines = b"".join(json.dumps(alert(k * batch + j), separators=(",", ":")).encode() + b"\n"
                         for j in range(batch))
        bodies.append(request("/batch", lines, "application/x-ndjson"))
    cs = [await Conn.open(port) for _ in range(conns)]
    for c in cs:               # warm-up
        st, b = await c.post(bodies[0])
        assert st == 200, (st, b)
    lat: list[float] = []
    events = 0
    errors = 0
    stop = time.monotonic() + seconds
    cpu0, t0 = cpu_seconds(pid), time.monotonic()

    async def worker(c: Conn, k: int) -> None:
        nonlocal events, errors
        while time.monotonic() < stop:
            t = time.perf_counter()
            st, _ = await c.post(bodies[k % len(bodies)])
            lat.append(time.perf_counter() - t)
            k += conns
            if st == 200:
                events += batch
            else:
                errors += 1
    await asyncio.gather(*(worker(c, i) for i, c in enumerate(cs)))
    wall, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
    for c in cs:
        c.close()
    return {"events": events, "requests": len(lat), "errors": errors, "seconds": round(wall, 2),
            "events_per_s": round(events / wall), "requests_per_s": round(len(lat) / wall, 1),
            "p50_ms": round(pct(lat, 50) * 1000, 1), "p99_ms": round(pct(lat, 99) * 1000, 1),
            "relay_cpu_us_per_event": round(cpu / max(events, 1) * 1e6, 1)}


async def run_single(port: int, pid: int, seconds: float, rate: float, conns: int) -> dict:
    reqs = [request("/alert", json.dumps(alert(10_000_000 + i)).encode(), "application/json")
            for i in range(int(rate * seconds) + 10)]
    pool: asyncio.Queue = asyncio.Queue()
    cs = [await Conn.open(port) for _ in range(conns)]
    for c in cs:
        st, b = await c.post(reqs[-1])
        assert st == 200, (st, b)
        pool.put_nowait(c)
    lat: list[float] = []
    errors = 0
    n = int(rate * seconds)
    start = time.perf_counter() + 0.05
    cpu0, t0 = cpu_seconds(pid), time.monotonic()

    async def one(i: int, due: float) -> None:
        nonlocal errors
        c = await pool.get()          # a free connection (waiting for one counts in the latency)
        try:
            st, _ = await c.post(reqs[i])
        finally:
            pool.put_nowait(c)
        lat.append(time.perf_counter() - due)
        if st != 200:
            errors += 1
    tasks = []
    for i in range(n):
        due = start + i / rate
        d = due - time.perf_counter()
        if d > 0:
            await asyncio.sleep(d)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    wall, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
    for c in cs:
        c.close()
    return {"requests": n, "errors": errors, "seconds": round(wall, 2), "rate_asked": rate,
            "rate_achieved": round(n / wall, 1), "p50_ms": round(pct(lat, 50) * 1000, 2),
            "p99_ms": round(pct(lat, 99) * 1000, 2), "max_ms": round(max(lat) * 1000, 1),
            "relay_cpu_us_per_request": round(cpu / n * 1e6, 1)}


SERVER = """
import asyncio, sys
sys.path.insert(0, {root!r})
from relay.httpserver import HttpServer, read_body, respond
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await read_body(receive, 1 << 20, 30)
    await respond(send, 200, b'{{"accepted":1}}')
async def main():
    s = HttpServer(app, "127.0.0.1", {port}, max_connections=100)
    await s.start()
    print("ready", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())   # the daemon's loop (relay/server.py)
"""


async def run_server(seconds: float, conns: int = 8) -> dict:
    port = free_port()
    p = subprocess.Popen([sys.executable, "-c", SERVER.format(root=str(ROOT), port=port)], stdout=subprocess.PIPE)
    try:
        assert p.stdout.readline().strip() == b"ready"
        req = request("/x", json.dumps(alert(1)).encode(), "application/json")
        cs = [await Conn.open(port) for _ in range(conns)]
        for c in cs:
            await c.post(req)
        n = 0
        stop = time.monotonic() + seconds
        cpu0, t0 = cpu_seconds(p.pid), time.monotonic()

        async def worker(c):
            nonlocal n
            while time.monotonic() < stop:
                await c.post(req)
                n += 1
        await asyncio.gather(*(worker(c) for c in cs))
        wall, cpu = time.monotonic() - t0, cpu_seconds(p.pid) - cpu0
        for c in cs:
            c.close()
    finally:
        p.kill()
        p.wait(10)
    from relay.httpserver import PROTOCOL
    return {"protocol": PROTOCOL, "requests": n, "requests_per_s": round(n / wall),
            "server_cpu_us_per_request": round(cpu / n * 1e6, 1),
            "note": "the client (this process, Python) shares the 2 cores: requests/s is client-bound"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--single-conns", type=int, default=16)
    ap.add_argument("--phases", default="batch,single,server")
    ap.add_argument("--sync", default="FULL", choices=("FULL", "NORMAL"))
    ap.add_argument("--sink", default="file", choices=("file", "queue"),
                    help="file: a file sink delivers meanwhile (default); queue: events are only queued")
    ap.add_argument("--json", dest="json_path")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--workers", type=int, default=1, help="[relay] workers of the relay under test")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-http-"))
    out: dict = {"load": os.getloadavg(), "sync": a.sync, "sink": a.sink, "workers": a.workers}
    try:
        for phase in a.phases.split(","):
            if phase == "batch":
                r = Relay(tmp / "batch", "ndjson", a.sync, a.sink, a.workers)
                try:
                    out["batch"] = asyncio.run(run_batch(r.port, r.proc.pid, a.seconds, a.batch, a.conns))
                finally:
                    r.stop()
                print(f"batch  {a.batch}/request x {a.conns} conns: {out['batch']}", flush=True)
            elif phase == "single":
                r = Relay(tmp / "single", "json", a.sync, a.sink, a.workers)
                try:
                    out["single"] = asyncio.run(run_single(r.port, r.proc.pid, a.seconds, a.rate, a.single_conns))
                finally:
                    r.stop()
                print(f"single {a.rate:g}/s over {a.single_conns} conns: {out['single']}", flush=True)
            elif phase == "server":
                out["server"] = asyncio.run(run_server(a.seconds))
                print(f"server alone: {out['server']}", flush=True)
            else:
                raise SystemExit(f"unknown phase {phase!r}")
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")
    out["load_after"] = os.getloadavg()
    ok_b = out.get("batch", {}).get("events_per_s", 0) >= 30000
    ok_s = out.get("single", {}).get("p99_ms", 1e9) <= 25
    print(f"load {out['load'][0]:.1f} -> {out['load_after'][0]:.1f}; targets: batch >= 30000 events/s: "
          f"{'met' if ok_b else 'NOT met'}; single p99 <= 25 ms at {a.rate:g}/s: {'met' if ok_s else 'NOT met'}")
    if a.json_path:
        Path(a.json_path).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Benchmark the syslog TCP sink: payloads/s from a pre-filled DiskQueue to a counting
receiver on 127.0.0.1.

The sink (event loop + its SQLite worker threads) runs in this process pinned to one CPU;
the receiver runs in a child process pinned to another CPU when there is one (so it does
not steal the sink's core).  It counts complete frames (LF or octet-counted).

Reported per framing:
  * delivered/s: payloads until the receiver has them all (wire rate);
  * acked/s:     payloads until the queue is empty (every batch settled and acked; this
                 includes the final ``settle_delay`` of the last batch, so it is shown both
                 raw and with that fixed delay subtracted);
  * CPU us/payload of this process (sink + SQLite), and of its event-loop thread alone
    (framing, sends, TIOCOUTQ polls, wakeups: what competes with the sources and the
    commits of the running relay; lease/ack SQLite work runs in worker threads).

    .venv/bin/python bench/bench_sink.py [--rows N] [--batch B] [--framing lf|octet|both]
                                         [--sync NORMAL|FULL] [--repeat R]

Loopback only; nothing leaves the machine.
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from relay.config import SinkConfig  # noqa: E402
from relay.metrics import Registry  # noqa: E402
from relay.queue import DiskQueue, RetryPolicy  # noqa: E402
from relay.sinks.syslog import SyslogStreamSink  # noqa: E402

PAYLOAD_HEAD = b"<134>1 2026-03-13T04:30:00.123Z fw01.example.com rhythmx - - - "
LEEF = (b"LEEF:2.0|RhythmX|SigmaIncident|1.0|created|^|src=10.1.2.3^dst=10.9.8.7^"
        b"usrName=jdoe^sev=8^cat=incident^risk_score=82^alarm_count=12^incident_id=INC-")


def payload(i: int) -> bytes:
    return PAYLOAD_HEAD + LEEF + b"%08x" % i  # ~210 bytes, unique


def receiver(port_q, framing: str, expected: int, cpu: int | None) -> None:
    if cpu is not None:
        try:
            os.sched_setaffinity(0, {cpu})
        except (AttributeError, OSError):
            pass
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(120)
    port_q.put(srv.getsockname()[1])
    count = 0
    conn, _ = srv.accept()
    conn.settimeout(120)
    buf = b""
    t_first = None
    while count < expected:
        data = conn.recv(1 << 20)
        if not data:
            conn, _ = srv.accept()
            buf = b""
            continue
        if t_first is None:
            t_first = time.perf_counter()
        buf += data
        if framing == "lf":
            end = buf.rfind(b"\n")
            if end >= 0:
                count += buf.count(b"\n", 0, end + 1)
                buf = buf[end + 1:]
        else:
            pos, n = 0, len(buf)
            while True:
                sp = buf.find(b" ", pos, pos + 12)
                if sp < 0:
                    break
                ln = int(buf[pos:sp])
                if n < sp + 1 + ln:
                    break
                pos = sp + 1 + ln
                count += 1
            buf = buf[pos:]
    port_q.put(("done", time.time()))
    # keep reading until the sender closes, so nothing stalls
    try:
        while conn.recv(1 << 20):
            pass
    except OSError:
        pass


async def run_once(directory: str, rows: int, batch: int, framing: str, sync: str,
                   cpus: list[int]) -> dict:
    path = os.path.join(directory, f"bench-{framing}-{time.time_ns()}.db")
    q = DiskQueue(path, synchronous=sync, retry=RetryPolicy(max_attempts=0))
    for start in range(0, rows, 5000):
        q.put_many([(payload(i), None) for i in range(start, min(rows, start + 5000))])
    ctx = mp.get_context("fork")
    port_q = ctx.Queue()
    proc = ctx.Process(target=receiver,
                       args=(port_q, framing, rows, cpus[1] if len(cpus) > 1 else None))
    proc.start()
    port = port_q.get(timeout=30)
    settle_delay = 1.0
    cfg = SinkConfig(name="bench", type="syslog", address=("127.0.0.1", port), protocol="tcp",
                     framing=framing, batch_size=batch,
                     options={"settle_delay": settle_delay})
    sink = SyslogStreamSink(cfg, q, registry=Registry())
    stop = asyncio.Event()
    c0, t0, w0 = time.process_time(), time.perf_counter(), time.time()
    m0 = time.thread_time()
    task = asyncio.create_task(sink.run(stop))
    delivered_at = None
    loop = asyncio.get_running_loop()
    while True:
        if delivered_at is None:
            try:
                msg = await loop.run_in_executor(None, port_q.get, True, 0.05)
                delivered_at = msg[1]
            except Exception:
                pass
        if sink.stats["sent"] >= rows:
            break
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    t_acked = time.perf_counter() - t0
    cpu = time.process_time() - c0
    cpu_main = time.thread_time() - m0
    stop.set()
    await task
    proc.join(10)
    if proc.is_alive():
        proc.kill()
    assert q.depth() == 0, q.depth()
    q.close()
    t_delivered = (delivered_at - w0) if delivered_at else float("nan")
    return {"delivered": rows / t_delivered, "acked": rows / t_acked,
            "acked_net": rows / max(1e-9, t_acked - settle_delay),
            "cpu_us": cpu / rows * 1e6, "main_us": cpu_main / rows * 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--framing", choices=("lf", "octet", "both"), default="both")
    ap.add_argument("--sync", choices=("NORMAL", "FULL"), default="FULL")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpus[0]})
    directory = args.dir or tempfile.mkdtemp(prefix="bench-sink-")
    print(f"rows={args.rows} payload={len(payload(0))} B batch={args.batch} "
          f"queue synchronous={args.sync} sink on CPU {cpus[0]}, receiver on "
          f"{'CPU ' + str(cpus[1]) if len(cpus) > 1 else 'the same CPU'}")
    try:
        for framing in (("lf", "octet") if args.framing == "both" else (args.framing,)):
            runs = [asyncio.run(run_once(directory, args.rows, args.batch, framing, args.sync,
                                         cpus)) for _ in range(args.repeat)]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(f"{framing:6s} delivered {med['delivered']:>9,.0f}/s   acked "
                  f"{med['acked']:>9,.0f}/s ({med['acked_net']:>9,.0f}/s without the final "
                  f"settle delay)   CPU {med['cpu_us']:.2f} us/payload (event-loop thread "
                  f"{med['main_us']:.2f})   (median of "
                  f"{args.repeat})")
    finally:
        if args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()

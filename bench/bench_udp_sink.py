#!/usr/bin/env python3
"""CPU per datagram of the UDP syslog sink's send path (``SyslogUdpSink.send``), to a receiver
on 127.0.0.1 that drains in a child process.  No queue: the batches are built in memory, so
this is the sending side alone (what asyncio-dgram costs, or saves).

    .venv/bin/python bench/bench_udp_sink.py [-n 200000] [--batch 500] [--root DIR] [--rounds 3]

``--root`` imports relay/ from another tree (A/B in one sitting, e.g. an export of an older
commit: ``git archive <rev> relay parsers formats | tar -x -C /tmp/old``).  Loopback only.
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class _Item:
    __slots__ = ("payload", "id")

    def __init__(self, payload: bytes, i: int) -> None:
        self.payload, self.id = payload, i


def _drain(port_q) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    s.bind(("127.0.0.1", 0))
    port_q.put(s.getsockname()[1])
    s.settimeout(2.0)
    try:
        while True:
            s.recv(70000)
    except OSError:
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--root", type=Path, default=ROOT)
    args = ap.parse_args()
    sys.path.insert(0, str(args.root.resolve()))
    from relay.config import SinkConfig
    from relay.metrics import Registry
    from relay.sinks.syslog import SyslogUdpSink

    ctx = mp.get_context("spawn")
    port_q = ctx.Queue()
    rx = ctx.Process(target=_drain, args=(port_q,), daemon=True)
    rx.start()
    port = port_q.get(timeout=10)
    payload = (b"<134>1 2026-03-13T04:30:00.123Z rx-01 SigmaIncident - created - LEEF:2.0|Relay|SOC Relay|1.0|"
               b"created|^|cat=incident^sev=9^src=10.20.0.5^usrName=jdoe^riskScore=82")
    batches = [[_Item(payload, i + j) for j in range(args.batch)] for i in range(0, args.n, args.batch)]

    class _Q:   # the sink only needs a queue object for its base class
        def __getattr__(self, name):
            raise AttributeError(name)

    cfg = SinkConfig(name="bench", type="syslog", address=("127.0.0.1", port), protocol="udp", framing=None)

    async def run_once() -> float:
        sink = SyslogUdpSink(cfg, _Q(), registry=Registry())
        t0 = time.process_time()
        for b in batches:
            failed = await sink.send(b)
            assert not failed, failed[:1]
        t = time.process_time() - t0
        await sink.close()
        return t

    best = min(asyncio.run(run_once()) for _ in range(args.rounds))
    print(f"root {args.root}: UDP sink send path {best / args.n * 1e6:.2f} us CPU per datagram "
          f"(best of {args.rounds}, {args.n} datagrams, batches of {args.batch})")
    rx.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())

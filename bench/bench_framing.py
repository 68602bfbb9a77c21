#!/usr/bin/env python3
"""Micro-benchmark for parsers.framing.Deframer.

Feeds 1,000,000 ~240-byte syslog frames in 64 KiB reads through one Deframer,
for LF framing, CRLF framing, octet counting and a 50/50 mix, and prints
frames/s (best of --repeat runs).  Run from the repository root:

    .venv/bin/python bench/bench_framing.py [--frames N] [--read BYTES] [--repeat R]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from formats.syslog import frame, frame_octet  # noqa: E402
from parsers.framing import Deframer  # noqa: E402

BLOCK = 10_000   # distinct frames; the stream repeats this block


def messages(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        m = (b"<134>1 2024-05-01T12:34:56.%06dZ fw-edge-%02d.example.net firewall %d ID47 "
             b"[meta@32473 seq=\"%d\" zone=\"dmz\"] action=allow src=10.%d.%d.%d dst=192.0.2.%d "
             b"proto=tcp spt=%d dpt=443 bytes=%d rule=allow-web " % (
                 i % 1_000_000, i % 50, 1000 + i % 9000, i, i % 256, (i >> 8) % 256, i % 200,
                 i % 250, 1024 + i % 60000, i * 7 % 100000))
        out.append(m.ljust(240, b"x"))
    return out


def build(kind: str, msgs: list[bytes]) -> bytes:
    if kind == "lf":
        return b"".join(frame(m, "lf") for m in msgs)
    if kind == "crlf":
        return b"".join(m + b"\r\n" for m in msgs)
    if kind == "octet":
        return b"".join(frame_octet(m) for m in msgs)
    if kind == "mixed":
        return b"".join(frame_octet(m) if i % 2 else frame(m, "lf") for i, m in enumerate(msgs))
    raise ValueError(kind)


def run(kind: str, total: int, read: int, repeat: int) -> tuple[float, int]:
    msgs = messages(BLOCK)
    stream = build(kind, msgs)
    reads = [stream[i:i + read] for i in range(0, len(stream), read)]
    loops = max(1, total // BLOCK)
    best = float("inf")
    count = 0
    for _ in range(repeat):
        d = Deframer()
        feed = d.feed
        count = 0
        t0 = time.perf_counter()
        for _ in range(loops):
            for r in reads:
                count += len(feed(r))
        count += len(d.close())
        dt = time.perf_counter() - t0
        best = min(best, dt)
        if count != loops * BLOCK or any(d.stats[k] for k in ("garbage", "bad_length")):
            raise SystemExit(f"{kind}: wrong result: {count} frames, stats {d.stats}")
    return best, count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--read", type=int, default=65536)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, {args.frames:,} frames of ~240 bytes, "
          f"{args.read}-byte reads, best of {args.repeat}")
    for kind in ("lf", "crlf", "octet", "mixed"):
        dt, n = run(kind, args.frames, args.read, args.repeat)
        print(f"  {kind:6s} {n:>10,} frames  {dt:6.3f} s  {n / dt:>12,.0f} frames/s")


if __name__ == "__main__":
    main()

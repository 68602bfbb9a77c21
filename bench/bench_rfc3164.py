"""Micro-benchmark: RFC 3164 parses/s on one core for a typical BSD line
(``parsers.rfc3164.parse`` alone and through ``parsers.detect.parse``).
Usage: python bench/bench_rfc3164.py [-n N]"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from parsers import detect, rfc3164  # noqa: E402

LINE = b"<34>Oct 11 22:14:15 mymachine su[123]: 'su root' failed for lonvick on /dev/pts/8"
RECEIVED = 1718452800.0


def bench(fn, n: int) -> float:
    """Best of 5 runs, parses per CPU second (process_time: one core)."""
    fn()
    best = 0.0
    for _ in range(5):
        t0 = time.process_time()
        for _ in range(n):
            fn()
        best = max(best, n / (time.process_time() - t0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=200_000)
    n = ap.parse_args().n
    p = rfc3164.parse
    d = detect.parse
    for name, fn in (
        ("rfc3164.parse", lambda: p(LINE, received=RECEIVED)),
        ("detect.parse (3164 path)", lambda: d(LINE, received=RECEIVED)),
    ):
        print(f"{name:28s} {bench(fn, n):>10,.0f} parses/s  ({len(LINE)} B line, 1 core)")


if __name__ == "__main__":
    main()

"""Parser benchmark: parses/s on one core for the RFC 5424 parser on a realistic
SigmaIncident message (~240 bytes with SD, 8+ SD params, JSON body) and, when present,
the RFC 3164 parser.  Prints one line per case.  Usage: python bench/bench_parse.py [-n N]"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from parsers import rfc5424  # noqa: E402

SIGMA = (b'<137>1 2026-03-13T04:30:00.123Z rx-01 SigmaIncident 4242 created [incident@32473 '
         b'id="INC-7601d999" actor="jdoe" entity="Primary Site" status="OPEN" risk_score="82" '
         b'alarm_count="12" sigma_alert_count="3" threat_case_count="1"] '
         b'{"incident_id":"INC-7601d999","risk_score":82}')
BSD = b"<34>Oct 11 22:14:15 mymachine su[123]: 'su root' failed for lonvick on /dev/pts/8"


def bench(name: str, fn, data: bytes, n: int) -> float:
    fn(data)
    best = 0.0
    for _ in range(3):
        t0 = time.process_time()
        for _ in range(n):
            fn(data)
        dt = time.process_time() - t0
        best = max(best, n / dt)
    print(f"{name:<40} {len(data):>4} bytes  {best:>10,.0f} parses/s  {1e6 / best:6.2f} us/parse")
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=200_000)
    a = ap.parse_args()
    bench("rfc5424 SigmaIncident (strict)", rfc5424.parse, SIGMA, a.n)
    bench("rfc5424 SigmaIncident (lenient)", lambda d: rfc5424.parse(d, lenient=True), SIGMA, a.n)
    try:
        from parsers import rfc3164
        bench("rfc3164 BSD line", rfc3164.parse, BSD, a.n)
    except ImportError:
        print("rfc3164: parser not present")
    try:
        from parsers import detect
        bench("detect -> rfc5424 SigmaIncident", detect.parse, SIGMA, a.n)
        bench("detect -> rfc3164 BSD line", detect.parse, BSD, a.n)
    except ImportError:
        print("detect: not present")


if __name__ == "__main__":
    main()

"""Micro-benchmark: CEF and LEEF encodes/s (and decodes/s) on one core for a typical
~15-attribute Falcon-detection-like record; also the full syslog-framed LEEF line.
Usage: python bench/bench_codecs.py [-n N]"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from formats import cef as fcef  # noqa: E402
from formats import leef as fleef  # noqa: E402
from formats import syslog as fsys  # noqa: E402
from parsers import cef as pcef  # noqa: E402
from parsers import leef as pleef  # noqa: E402

EPOCH = 1747213964.123
DEV_TIME = fleef.dev_time(EPOCH)
# 15 attributes, one with a Windows path (backslashes), one needing sanitising/escaping ('^', '=')
LEEF_ATTRS = [
    ("cat", "Credential Access"), ("devTime", DEV_TIME[0]), ("devTimeFormat", DEV_TIME[1]), ("sev", 7),
    ("usrName", "CORP\\jdoe"), ("src", "10.20.30.40"), ("srcMAC", "00-50-56-AB-CD-EF"),
    ("identHostName", "WS-FIN-0042"), ("resource", "WS-FIN-0042"), ("technique", "T1003"),
    ("tactic", "TA0006"), ("compositeId", "cid:ind:3f1c2e0d9b8a4f6e:1234567890-10197-8675309"),
    ("filePath", "\\Device\\HarddiskVolume3\\Windows\\System32\\rundll32.exe"),
    ("commandLine", "rundll32.exe C:\\Windows\\System32\\comsvcs.dll, MiniDump 624 C:\\t\\l.dmp full ^x"),
    ("falconHostLink", "https://falcon.crowdstrike.com/activity/detections/detail/3f1c?a=1&b=2"),
]
CEF_EXT = [
    ("rt", "1747213964123"), ("cat", "Credential Access"), ("act", "T1003"), ("suser", "CORP\\jdoe"),
    ("src", "10.20.30.40"), ("smac", "00-50-56-AB-CD-EF"), ("dhost", "WS-FIN-0042"),
    ("externalId", "3f1c2e0d9b8a4f6e"), ("fname", "rundll32.exe"),
    ("filePath", "\\Device\\HarddiskVolume3\\Windows\\System32\\rundll32.exe"),
    ("cs5", "rundll32.exe C:\\Windows\\System32\\comsvcs.dll, MiniDump 624 C:\\t\\l.dmp full"),
    ("cs5Label", "CommandLine"),
    ("cs6", "https://falcon.crowdstrike.com/activity/detections/detail/3f1c?a=1&b=2"),
    ("cs6Label", "FalconHostLink"), ("outcome", "blocked"),
]


def bench(fn, n: int) -> float:
    """Best of 5 runs, calls per CPU second (process_time: one core)."""
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
    ap.add_argument("-n", type=int, default=100_000)
    n = ap.parse_args().n
    le = fleef.encode
    ce = fcef.encode
    hdr = fsys.rfc5424_header
    frame = fsys.frame
    leef_line, changes = le("CrowdStrike", "FalconHost", "1.0", "Detection", LEEF_ATTRS)
    cef_line = ce("CrowdStrike", "FalconHost", "1.0", "DetectionSummaryEvent", "Credential Access", 7, CEF_EXT)
    print(f"LEEF line: {len(leef_line)} chars, {len(LEEF_ATTRS)} attributes, {changes} sanitised")
    print(f"CEF line:  {len(cef_line)} chars, {len(CEF_EXT)} extension pairs")

    def leef_framed():
        line, _ = le("CrowdStrike", "FalconHost", "1.0", "Detection", LEEF_ATTRS)
        frame(f"{hdr(134, EPOCH, 'WS-FIN-0042', 'falcon-relay')} {line}".encode(), "lf")

    for name, fn in (
        ("LEEF 2.0 encode (15 attrs)", lambda: le("CrowdStrike", "FalconHost", "1.0", "Detection", LEEF_ATTRS)),
        ("LEEF 1.0 encode (15 attrs)", lambda: le("CrowdStrike", "FalconHost", "1.0", "Detection", LEEF_ATTRS,
                                                    version="1.0")),
        ("CEF encode (15 pairs)", lambda: ce("CrowdStrike", "FalconHost", "1.0", "DetectionSummaryEvent",
                                             "Credential Access", 7, CEF_EXT)),
        ("dev_time()", lambda: fleef.dev_time(EPOCH)),
        ("rfc5424 header + LEEF + LF frame", leef_framed),
        ("LEEF decode", lambda: pleef.parse(leef_line)),
        ("CEF decode", lambda: pcef.parse(cef_line)),
    ):
        rate = bench(fn, n)
        print(f"{name:34s} {rate:>12,.0f} /s  {1e6 / rate:6.2f} us")


if __name__ == "__main__":
    main()

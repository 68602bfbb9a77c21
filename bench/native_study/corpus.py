"""The study's corpus: the same varied SigmaIncident RFC 5424 messages as bench/bench_e2e.py
sends (``message(i, True)``: every one distinct, all with risk_score >= 70) and that
bench/bench_process.py measures, LF-framed into one stream and cut into 64 KiB reads
(reads end mid-frame, as a TCP connection's do)."""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
READ = 65536


def messages(n: int) -> list[bytes]:
    sys.path.insert(0, str(REPO / "bench"))
    try:
        from bench_e2e import message
    finally:
        sys.path.remove(str(REPO / "bench"))
    return [message(i, True).rstrip("\n").encode() for i in range(n)]


def stream(msgs: list[bytes]) -> bytes:
    return b"".join(m + b"\n" for m in msgs)


def reads(data: bytes, size: int = READ) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]

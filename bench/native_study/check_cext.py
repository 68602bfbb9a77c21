"""Exactness and coverage of the C prototype (build/cext) against parsers/rfc5424.parse (strict).

For every input: Python's result (an Event, or the ParseError) and the prototype's
(``parse_one``: an Event, or None = fall back).  Covered = the prototype returned an Event; it
must then equal Python's Event in every slot (value and type; SD order included; time_unix
bit for bit) and Python must not have raised.  Then the read-level path (``Reader``: C
deframing + parsing with its fall-backs) is compared with Deframer.feed + rfc5424.parse on
LF-framed streams of the same inputs, cut into 64 KiB reads and into small reads.

Inputs: the benchmark corpus (bench_e2e.message, 50,000 distinct), every RFC 5424 vector
under ../shared/vectors (RELAY_SHARED overrides, as tests/vectors.py), the example sample
logs, and --mutants seeded random mutations of corpus and vector messages (byte flips,
insertions and deletions biased towards syntax bytes).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE / "build" / "cext"))
sys.path.insert(0, str(HERE))

import corpus  # noqa: E402
import fastpath_wrap as fw  # noqa: E402
from parsers import rfc5424  # noqa: E402
from parsers.event import Event, ParseError  # noqa: E402
from parsers.framing import Deframer  # noqa: E402

SHARED = Path(os.environ.get("RELAY_SHARED", REPO.parent / "shared"))


def same(a, b) -> bool:
    """Equal values of the same types, dict order included (recursively)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, ParseError):
        return (a.offset, a.reason, a.kind) == (b.offset, b.reason, b.kind)
    if isinstance(a, Event):
        return all(same(getattr(a, s), getattr(b, s)) for s in Event.__slots__)
    return a == b


def diff(a: Event, b: Event) -> list[str]:
    return [f"{s}: py {getattr(a, s)!r} c {getattr(b, s)!r}" for s in Event.__slots__
            if not same(getattr(a, s), getattr(b, s))]


def py_result(data: bytes):
    try:
        return rfc5424.parse(data)
    except ParseError as e:
        return e


def check_one(name: str, inputs: list[bytes], report: dict, show: int = 5) -> None:
    covered = fallback = mismatch = c_accepts_error = 0
    py_ok = 0
    examples = []
    for data in inputs:
        py = py_result(data)
        py_ok += isinstance(py, Event)
        c = fw.parse_one(data)
        if c is None:
            fallback += 1
            continue
        covered += 1
        if isinstance(py, ParseError):
            c_accepts_error += 1
            if len(examples) < show:
                examples.append(f"C accepted what Python rejects ({py}): {data[:120]!r}")
        elif not same(py, c):
            mismatch += 1
            if len(examples) < show:
                examples.append(f"{data[:120]!r}: " + "; ".join(diff(py, c)))
    report[name] = {"inputs": len(inputs), "python_parses": py_ok, "c_covered": covered,
                    "c_fallback": fallback, "mismatch": mismatch, "c_accepts_python_error": c_accepts_error,
                    "examples": examples}
    print(f"{name:28s} inputs {len(inputs):7d}  python ok {py_ok:7d}  C covered {covered:7d}  "
          f"fallback {fallback:7d}  mismatch {mismatch}  C-accepts-error {c_accepts_error}", flush=True)
    for e in examples:
        print("   ", e)


def check_stream(name: str, inputs: list[bytes], read: int, report: dict) -> None:
    data = corpus.stream(inputs)
    reads = corpus.reads(data, read)
    d = Deframer()
    want = [py_result(f) for r in reads for f in d.feed(r)] + [py_result(f) for f in d.close()]
    rd = fw.Reader()
    got = [x for r in reads for x in rd.feed(r)] + rd.close()
    bad = sum(1 for a, b in zip(want, got) if not same(a, b)) + abs(len(want) - len(got))
    report[f"stream {name} /{read}"] = {"frames_python": len(want), "frames_c": len(got), "differing": bad,
                                         "fallback_frames": rd.fallback_frames,
                                         "fallback_reads_sticky": rd.fallback_reads}
    print(f"stream {name:21s} read {read:6d}  frames py {len(want):7d} c {len(got):7d}  differing {bad}  "
          f"(frames handed to Python {rd.fallback_frames}, whole-read fall-backs {rd.fallback_reads})", flush=True)


SYNTAX = b'<>[]"= \\-:.TZ+0123456789\xef\xbb\xbf\xff\x00\t\r]'


def mutate(rng: random.Random, m: bytes) -> bytes:
    b = bytearray(m)
    for _ in range(rng.randint(1, 3)):
        op = rng.random()
        k = rng.randrange(len(b) + 1)
        ch = SYNTAX[rng.randrange(len(SYNTAX))] if rng.random() < 0.7 else rng.randrange(256)
        if op < 0.4 and k < len(b):
            b[k] = ch
        elif op < 0.7:
            b.insert(k, ch)
        elif k < len(b):
            del b[k]
    return bytes(b)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=50_000)
    ap.add_argument("--mutants", type=int, default=200_000)
    ap.add_argument("--json", type=Path, help="write the report here")
    a = ap.parse_args()
    report: dict = {}
    msgs = corpus.messages(a.n)
    vec_path = SHARED / "vectors" / "rfc5424.jsonl"
    vectors = []
    with vec_path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                c = json.loads(line)
                vectors.append(bytes.fromhex(c["input_hex"]) if "input_hex" in c else c["input"].encode("utf-8"))
    samples = [x for p in ("sigma_incidents.log", "falcon.log")
               for x in (REPO / "examples" / "samples" / p).read_bytes().splitlines() if x]
    rng = random.Random(19)
    pool = msgs[:2000] + vectors
    mutants = [mutate(rng, pool[rng.randrange(len(pool))]) for _ in range(a.mutants)]

    check_one("corpus (bench_e2e)", msgs, report)
    check_one("rfc5424 vectors", vectors, report, show=20)
    check_one("example samples", samples, report)
    check_one("mutants", mutants, report, show=10)
    for read in (65536, 97):
        check_stream("corpus", msgs, read, report)
        check_stream("vectors", vectors, read, report)
        check_stream("mutants", mutants[:20000], read, report)
        # LF-framable inputs only (no NUL, CR, LF, starting with '<'): the C deframer stays on,
        # and the frames it does not cover go to Python one by one
        clean = [m for m in vectors + mutants[:20000]
                 if m[:1] == b"<" and b"\0" not in m and b"\n" not in m and b"\r" not in m]
        check_stream("vectors+mutants, LF-safe", clean, read, report)
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

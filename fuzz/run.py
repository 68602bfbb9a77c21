"""Fuzzing campaign: every target of fuzz/targets.py, N inputs each, figures printed.

    .venv/bin/pip install atheris            # coverage-guided (libFuzzer); else --engine random
    RELAY_SHARED=../shared .venv/bin/python fuzz/run.py                      # all targets, 1M each
    .venv/bin/python fuzz/run.py rfc5424 cef --runs 200000 --max-len 2048
    .venv/bin/python fuzz/run.py --engine random                             # no atheris needed

Each target runs in its own process (seeded with fuzz/targets.py's corpus), and every input is
timed.  Under atheris the code runs instrumented (every branch traced, up to 300x slower on
byte loops), so an input slower than 100 ms there is saved and then timed again, best of 3,
by this process on the plain code: only those over 100 ms count as hangs (the rest are
reported as ``slow_instrumented``).  ``--confirm`` re-times the saved inputs alone.  Reported per target: inputs run, exceptions that are not the documented error types
(each input saved to fuzz/findings/<target>/exc-<sha1>, with its traceback), hangs (one input
over 100 ms; saved as slow-<sha1>), the slowest input, and memory (RSS at 10% of the run and at
the end, and the peak).  A finding becomes a regression test by moving its file to
fuzz/crashers/<target>/ (tests/test_fuzz_regressions.py replays them all in CI).

Engines: ``atheris`` (libFuzzer's coverage-guided mutations of the Python code; the parsers
are instrumented) when it imports, else ``random`` (seed corpus mutations: bit flips, byte
inserts/deletes, splices between seeds, runs of hostile bytes; deterministic per --seed).
Exit status 1 when any target has a finding.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HANG = 0.100            # seconds: one input slower than this is a hang
FINDINGS = ROOT / "fuzz" / "findings"


def rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


class Recorder:
    def __init__(self, name: str, runs: int, out: Path) -> None:
        self.name, self.runs, self.out = name, runs, out
        self.n = 0
        self.exc = 0
        self.hangs = 0
        self.kinds: dict[str, int] = {}
        self.slowest = 0.0
        self.rss10 = None
        self.rss_start = rss_mb()
        self.t0 = time.monotonic()

    def save(self, prefix: str, data: bytes, text: str) -> None:
        d = FINDINGS / self.name
        d.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha1(data).hexdigest()[:16]
        (d / f"{prefix}-{h}").write_bytes(data)
        (d / f"{prefix}-{h}.txt").write_text(text)

    def one(self, run, data: bytes) -> None:
        t = time.perf_counter()
        try:
            run(data)
        except Exception as e:            # not a documented error type: a finding
            self.exc += 1
            k = f"{type(e).__name__}: {str(e)[:80]}"
            self.kinds[k] = self.kinds.get(k, 0) + 1
            if self.kinds[k] <= 3:
                self.save("exc", data, traceback.format_exc())
        dt = time.perf_counter() - t
        if dt > self.slowest:
            self.slowest = dt
        if dt > HANG:
            # a second timing tells a real hang from the host being busy (2 cores, shared)
            t2 = time.perf_counter()
            try:
                run(data)
            except Exception:
                pass
            if time.perf_counter() - t2 > HANG:
                self.hangs += 1
                self.save("slow", data, f"{dt * 1000:.1f} ms, again {(time.perf_counter() - t2) * 1000:.1f} ms\n")
        self.n += 1
        if self.n == max(1, self.runs // 10):
            self.rss10 = rss_mb()
        if self.n % 50_000 == 0 or self.n >= self.runs:
            self.write()
        if self.n >= self.runs:
            self.write()
            sys.stdout.flush()
            os._exit(0)

    def figures(self) -> dict:
        return {"target": self.name, "inputs": self.n, "exceptions": self.exc, "hangs": self.hangs,
                "slowest_ms": round(self.slowest * 1000, 2), "kinds": self.kinds,
                "rss_start_mb": round(self.rss_start, 1),
                "rss_10pct_mb": round(self.rss10 or rss_mb(), 1), "rss_end_mb": round(rss_mb(), 1),
                "rss_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "seconds": round(time.monotonic() - self.t0, 1)}

    def write(self) -> None:
        self.out.write_text(json.dumps(self.figures()))


def mutate(rng: random.Random, seeds: list[bytes], max_len: int) -> bytes:
    b = bytearray(rng.choice(seeds))
    for _ in range(rng.choice((1, 1, 2, 3, 5, 8))):
        op = rng.randrange(7)
        pos = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[min(pos, len(b) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[pos:pos] = bytes([rng.randrange(256)])
        elif op == 2 and b:
            del b[pos:pos + rng.randrange(1, 16)]
        elif op == 3:
            b[pos:pos] = rng.choice((b"\0", b"\n", b"\r\n", b"\t", b"\\", b'"', b"]", b"[", b"=", b"|", b"^",
                                     b"<", b">", b"\xff", b"\xc3", b"\xed\xa0\x80", b" ", b"-", b"9" * 12,
                                     b"CEF:0|", b"LEEF:2.0|", b"{", b"}", b"%", b"\\u0000"))
        elif op == 4:
            other = rng.choice(seeds)
            j = rng.randrange(len(other) + 1)
            b[pos:] = other[j:]
        elif op == 5 and b:
            k = rng.randrange(len(b))
            b[pos:pos] = b[k:k + rng.randrange(1, 64)] * rng.randrange(1, 40)
        else:
            b[pos:pos] = os.urandom(rng.randrange(1, 8))
    return bytes(b[:max_len])


def child(name: str, runs: int, max_len: int, engine: str, seed: int, out: Path) -> None:
    if engine == "atheris":
        import atheris
        with atheris.instrument_imports(include=["parsers", "relay", "formats", "fuzz"]):
            from fuzz.targets import TARGETS, seeds_for
    else:
        sys.path.insert(0, str(ROOT))
        from fuzz.targets import TARGETS, seeds_for
    t = TARGETS[name]
    rec = Recorder(name, runs, out)
    seeds = seeds_for(t) or [b""]
    for s in seeds:             # every seed once, counted
        rec.one(t.run, s[:max_len])
    if engine == "atheris":
        corpus = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
        for i, s in enumerate(seeds):
            (corpus / f"seed-{i}").write_bytes(s[:max_len])
        atheris.Setup([sys.argv[0], str(corpus), f"-max_len={max_len}", "-rss_limit_mb=4096", "-timeout=30",
                       f"-seed={seed}", "-print_final_stats=0", "-close_fd_mask=3"],
                      lambda data: rec.one(t.run, data))
        atheris.Fuzz()
    rng = random.Random(seed)
    while True:
        rec.one(t.run, mutate(rng, seeds, max_len))


def confirm(target) -> tuple[int, int]:
    """Time every saved slow input of ``target`` again here (plain code), best of 3: returns
    (hangs over 100 ms, inputs slow only under instrumentation).  Confirmed ones are kept as
    ``hang-<sha1>``; the others are removed."""
    d = FINDINGS / target.name
    hangs = slow = 0
    for f in sorted(d.glob("slow-*")) if d.exists() else []:
        if f.suffix == ".txt":
            continue
        data = f.read_bytes()
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            try:
                target.run(data)
            except Exception:
                pass
            best = min(best, time.perf_counter() - t)
        if best > HANG:
            hangs += 1
            f.rename(f.with_name("hang-" + f.name[5:]))
            Path(str(f) + ".txt").write_text(f"{best * 1000:.1f} ms on the plain code\n")
        else:
            slow += 1
            f.unlink()
            Path(str(f) + ".txt").unlink(missing_ok=True)
    return hangs, slow


def main() -> int:
    sys.path.insert(0, str(ROOT))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="*")
    ap.add_argument("--runs", type=int, default=1_000_000)
    ap.add_argument("--max-len", type=int, default=4096)
    ap.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--confirm", action="store_true", help="only re-time the saved slow inputs (plain code)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    engine = a.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401
            engine = "atheris"
        except ImportError:
            engine = "random"
    if a.child:
        child(a.child, a.runs, a.max_len, engine, a.seed, Path(a.out))
        return 0
    from fuzz.targets import TARGETS
    names = a.targets or list(TARGETS)
    if a.confirm:
        for n in names:
            hangs, slow = confirm(TARGETS[n])
            print(f"{n:<10} {hangs} hangs on the plain code, {slow} inputs slow only when instrumented")
        return 0
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        ap.error(f"unknown target(s) {unknown}; known: {', '.join(TARGETS)}")
    print(f"engine {engine}, {a.runs:,} inputs per target, max {a.max_len} bytes, hang = one input over "
          f"{HANG * 1000:.0f} ms", flush=True)
    rows = []
    bad = False
    for n in names:
        out = Path(tempfile.mkstemp(prefix=f"fuzz-{n}-", suffix=".json")[1])
        p = subprocess.run([sys.executable, __file__, "--child", n, "--runs", str(a.runs), "--max-len",
                            str(a.max_len), "--engine", engine, "--seed", str(a.seed), "--out", str(out)],
                           cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            f = json.loads(out.read_text())
        except ValueError:
            f = {"target": n, "inputs": 0, "exceptions": 0, "hangs": 0}
        f["exit"] = p.returncode
        if f.get("hangs"):
            f["hangs"], f["slow_instrumented"] = confirm(TARGETS[n])
        if p.returncode != 0:
            f["crash"] = p.stderr[-2000:]
        rows.append(f)
        bad |= bool(f["exceptions"] or f["hangs"] or p.returncode or f["inputs"] < a.runs)
        print(f"{n:<10} {f['inputs']:>9,} inputs  {f['exceptions']:>3} exceptions  {f['hangs']:>3} hangs "
              f"({f.get('slow_instrumented', 0)} slow only instrumented)  "
              f"slowest {f.get('slowest_ms', 0):>6.1f} ms  RSS {f.get('rss_10pct_mb', 0):.0f} -> "
              f"{f.get('rss_end_mb', 0):.0f} MB (peak {f.get('rss_peak_mb', 0):.0f})  "
              f"{f.get('seconds', 0):.0f} s  exit {p.returncode}", flush=True)
        for k, c in (f.get("kinds") or {}).items():
            print(f"    {c} x {k}")
        if p.returncode:
            print("    " + p.stderr[-1500:].replace("\n", "\n    "))
    total = sum(r["inputs"] for r in rows)
    print(f"total: {total:,} inputs, {sum(r['exceptions'] for r in rows)} exceptions, "
          f"{sum(r['hangs'] for r in rows)} hangs; findings in {FINDINGS}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

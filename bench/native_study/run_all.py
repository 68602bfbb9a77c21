"""The figures table in one sitting: bench_stages.py for py, mypyc, cython and cext, alternated
--cycles times (the host is shared and drifts), the best per stage kept.  Prints `uptime`
before and after and a Markdown table (µs per message and speed-up over py).

    .venv-study/bin/python bench/native_study/run_all.py [--cycles 3] [-n 50000] [--rounds 5]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
IMPLS = ("py", "mypyc", "cython", "cext")
STAGES = (("deframe", "(a) deframe, 64 KiB reads"), ("parse", "(b) RFC 5424 parse (strict)"),
          ("leef", "(c) LEEF render"), ("d+p", "(a)+(b) per read"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("-n", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    print("uptime before:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(), flush=True)
    best: dict = {i: {} for i in IMPLS}
    for c in range(a.cycles):
        for impl in IMPLS:
            p = subprocess.run([sys.executable, str(HERE / "bench_stages.py"), "--impl", impl, "-n", str(a.n),
                                "--rounds", str(a.rounds)], capture_output=True, text=True, check=True)
            r = json.loads(p.stdout.strip().splitlines()[-1])
            print(f"cycle {c + 1} {impl:7s} " + "  ".join(f"{k} {r[k]:.3f}" for k, _ in STAGES)
                  + (f"  (py d+p same process {r['d+p_python_same_sitting']:.3f})" if impl == "cext" else ""),
                  flush=True)
            for k, _ in STAGES:
                best[impl][k] = min(best[impl].get(k, 1e9), r[k])
    print("uptime after:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    print()
    print("| stage | pure Python | mypyc | Cython (as is) | C prototype |")
    print("|---|---|---|---|---|")
    for k, label in STAGES:
        base = best["py"][k]
        cells = []
        for impl in IMPLS:
            v = best[impl][k]
            if impl == "cext" and k in ("deframe", "leef"):
                cells.append("(not covered)")
            elif impl == "py":
                cells.append(f"{v:.3f}")
            else:
                cells.append(f"{v:.3f} ({base / v:.2f}x)")
        print(f"| {label} | " + " | ".join(cells) + " |")
    (HERE / "results_run_all.json").write_text(json.dumps(best, indent=1))


if __name__ == "__main__":
    main()

"""CPU µs per message of the three stages for one implementation (run once per --impl, each
in its own process, so that ``parsers``/``formats`` resolve to that build):

  deframe   parsers.framing.Deframer.feed over 64 KiB reads of the LF-framed corpus
  parse     parsers.rfc5424.parse (strict) over every frame
  leef      formats.render.Renderer(format="leef").render over the normalised events
  d+p       deframe + parse per read (the batch shape the C prototype works on)

--impl py      the repository's code as it is
--impl mypyc   build/mypyc   (bench/native_study/build.py mypyc)
--impl cython  build/cython  (bench/native_study/build.py cython)
--impl cext    the C prototype (build/cext, build.py cext): d+p = Reader.feed per read, parse =
               fastpath.parse_one per message; deframe and leef are the repository's Python

Figures: time.process_time, best of --rounds, per message.  Prints one JSON line at the end.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BUILD = HERE / "build"


def best_of(run, n: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        gc.collect()
        t0 = time.process_time()
        run()
        best = min(best, (time.process_time() - t0) / n)
    return best * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", choices=("py", "mypyc", "cython", "cext"), default="py")
    ap.add_argument("-n", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if args.impl in ("mypyc", "cython"):
        sys.path.insert(0, str(BUILD / args.impl))
    else:
        sys.path.insert(0, str(REPO))
    if args.impl == "cext":
        sys.path.insert(0, str(BUILD / "cext"))
    sys.path.insert(1, str(HERE))
    import corpus
    from formats import leef as fleef, render as frender, syslog as fsyslog
    from formats.render import Renderer, RenderOptions
    from parsers import framing, rfc5424
    from parsers.normalise import normalise

    compiled = {m.__name__: Path(m.__file__).suffix for m in (framing, rfc5424, frender, fleef, fsyslog)}
    n = args.n
    msgs = corpus.messages(n)
    reads = corpus.reads(corpus.stream(msgs))
    Deframer = framing.Deframer
    parse = rfc5424.parse
    res = {"impl": args.impl, "n": n, "modules": compiled}

    def deframe():
        d = Deframer()
        feed = d.feed
        c = 0
        for r in reads:
            c += len(feed(r))
        assert c == n, c

    def parse_all():
        for m in msgs:
            parse(m)

    def deframe_parse():
        d = Deframer()
        feed = d.feed
        c = 0
        for r in reads:
            for f in feed(r):
                parse(f)
                c += 1
        assert c == n, c

    now = time.time()
    evs = [normalise(_detect_like(parse, m, now)) for m in msgs]
    r = Renderer(RenderOptions(format="leef"))
    render = r.render

    def leef_all():
        for e in evs:
            render(e)

    res["deframe"] = best_of(deframe, n, args.rounds)
    res["parse"] = best_of(parse_all, n, args.rounds)
    res["leef"] = best_of(leef_all, n, args.rounds)
    if args.impl == "cext":
        import fastpath_wrap
        res["d+p"] = best_of(lambda: fastpath_wrap.count_deframe_parse(reads, n), n, args.rounds)
        res["d+p_python_same_sitting"] = best_of(deframe_parse, n, args.rounds)
        one = fastpath_wrap.parse_one

        def c_parse_all():
            for m in msgs:
                one(m)
        res["parse"] = best_of(c_parse_all, n, args.rounds)   # stage (b) alone, one call per message
    else:
        res["d+p"] = best_of(deframe_parse, n, args.rounds)
    for k in ("deframe", "parse", "leef", "d+p"):
        print(f"  {args.impl:7s} {k:8s} {res[k]:7.3f} us/msg", file=sys.stderr)
    print(json.dumps(res))


def _detect_like(parse, m: bytes, now: float):
    """What parsers.detect.parse sets on an RFC 5424 message (received, peer, source)."""
    ev = parse(m)
    ev.raw = m
    ev.received = now
    ev.peer = "127.0.0.1"
    ev.source = "tcp"
    return ev


if __name__ == "__main__":
    main()

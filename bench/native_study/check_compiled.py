"""Do the mypyc and Cython builds give the same outputs as the repository's Python code?

Runs one subprocess per implementation (py, mypyc, cython), each hashing: the Deframer's
frames of the corpus stream (64 KiB reads) and its stats, rfc5424.parse (strict and lenient)
of the corpus, the RFC 5424 vectors and seeded mutants (every Event slot, or the error's
offset/reason/kind), and the LEEF bytes of the normalised corpus and example samples.
Prints the digests; exit status 1 when one differs from py's.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def child(impl: str) -> None:
    sys.path.insert(0, str(REPO if impl == "py" else HERE / "build" / impl))
    sys.path.insert(1, str(HERE))
    import random

    import corpus
    from check_cext import mutate
    from formats.render import Renderer, RenderOptions
    from parsers import framing, rfc5424
    from parsers.event import Event, ParseError
    from parsers.normalise import normalise

    out = {}
    msgs = corpus.messages(20000)
    h = hashlib.sha256()
    d = framing.Deframer()
    for r in corpus.reads(corpus.stream(msgs)):
        for f in d.feed(r):
            h.update(f + b"\n")
    h.update(repr(sorted(d.stats.items())).encode())
    out["deframe"] = h.hexdigest()[:16]
    shared = Path(os.environ.get("RELAY_SHARED", REPO.parent / "shared"))
    vecs = []
    for line in (shared / "vectors" / "rfc5424.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            c = json.loads(line)
            vecs.append(bytes.fromhex(c["input_hex"]) if "input_hex" in c else c["input"].encode())
    rng = random.Random(19)
    pool = msgs[:2000] + vecs
    muts = [mutate(rng, pool[rng.randrange(len(pool))]) for _ in range(50000)]
    for name, inputs in (("parse corpus", msgs), ("parse vectors", vecs), ("parse mutants", muts)):
        h = hashlib.sha256()
        for lenient in (False, True):
            for m in inputs:
                try:
                    ev = rfc5424.parse(m, lenient=lenient)
                    h.update(repr([(type(getattr(ev, s)).__name__, getattr(ev, s)) for s in Event.__slots__]).encode(
                        "utf-8", "surrogateescape"))
                except ParseError as e:
                    h.update(repr((e.offset, e.reason, e.kind)).encode())
        out[name] = h.hexdigest()[:16]
    samples = [x for p in ("sigma_incidents.log", "falcon.log")
               for x in (REPO / "examples" / "samples" / p).read_bytes().splitlines() if x]
    from parsers import detect
    for fmt in ("leef", "leef1", "cef"):
        h = hashlib.sha256()
        r = Renderer(RenderOptions(format=fmt))
        for m in msgs + samples:
            ev = normalise(detect.parse(m, received=1.0e9, peer="127.0.0.1"))
            h.update(r.render(ev) + b"\n" + repr(ev.notes).encode())
        out[f"render {fmt}"] = h.hexdigest()[:16]
    print(json.dumps(out))


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child(sys.argv[2])
    res = {}
    for impl in ("py", "mypyc", "cython"):
        p = subprocess.run([sys.executable, __file__, "--child", impl], capture_output=True, text=True)
        if p.returncode:
            print(impl, "FAILED:", p.stderr[-2000:])
            res[impl] = None
            continue
        res[impl] = json.loads(p.stdout)
    keys = list(res["py"])
    print(f"{'output':16s} " + " ".join(f"{i:18s}" for i in res))
    bad = 0
    for k in keys:
        row = [(res[i] or {}).get(k, "-") for i in res]
        same = all(x == row[0] for x in row)
        bad += not same
        print(f"{k:16s} " + " ".join(f"{x:18s}" for x in row) + ("" if same else "  DIFFERS"))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

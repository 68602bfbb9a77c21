"""Reference leaks in the C prototype: RSS after feeding the corpus through Reader (C path)
and parse_one on the RFC 5424 vectors (fall-back paths) many times; it must stay flat."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE / "build" / "cext"), str(HERE), str(HERE.parents[1])]
import corpus  # noqa: E402
import fastpath_wrap as fw  # noqa: E402

msgs = corpus.messages(20000)
reads = corpus.reads(corpus.stream(msgs))
shared = Path(os.environ.get("RELAY_SHARED", HERE.parents[2] / "shared"))
vecs = [bytes.fromhex(c["input_hex"]) if "input_hex" in c else c["input"].encode()
        for c in map(json.loads, (shared / "vectors" / "rfc5424.jsonl").read_text().splitlines())]


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("VmRSS"))


for it in range(31):
    r = fw.Reader()
    for x in reads:
        r.feed(x)
    for _ in range(50):
        for v in vecs:
            fw.parse_one(v)
            fw.fastpath.parse_read(v + b"\n")
    if it % 10 == 0:
        print(f"iteration {it:3d}: {(it + 1) * 20000:,} corpus frames, {(it + 1) * 50 * len(vecs) * 2:,} vector calls, "
              f"RSS {rss_kb():,} kB", flush=True)

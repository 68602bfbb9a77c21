#!/usr/bin/env python3
"""The main process's delivery work per event, in steady state, without sockets: what one
TCP sink does with a queue that the ingest workers keep filling.

Per round: commit one worker part (packed rows, as ``relay.workers`` returns them, through
``DiskQueue.put_rows``), then lease up to ``--lease`` events, frame them in batches of
``--batch`` (LF) and ack each batch: ``put``, ``lease``, ``frame`` and ``ack`` are the CPU
microseconds per delivered event of each step.  The sink lags the commits by two parts, as
in the daemon.  Two ways of leasing, alternated in one sitting (the host is noisy: compare
ratios):

* ``items``: ``DiskQueue.lease`` (an Item per event), ``formats.syslog.frame_batch`` of the
  payloads, ``ack`` of the ids (the sinks' path before stop 31);
* ``packed``: ``DiskQueue.lease_packed`` (a ``Leased``: runs of packed rows) framed by
  ``relay.sinks._lines.frame_items`` (``frame_spans``) and acked as it is (the TCP/TLS and
  file sinks' path).

Payloads are the benchmark's LEEF lines (~600 bytes, ``bench_e2e.message`` rendered by the
relay's own renderer), metadata one dict shared by a part, as the workers encode it.

    .venv/bin/python bench/bench_delivery.py [-n 120000] [--rounds 3] [--cache-mib 8]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_e2e import message  # noqa: E402
from formats.render import Renderer, RenderOptions  # noqa: E402
from formats.syslog import frame_batch  # noqa: E402
from parsers import detect  # noqa: E402
from parsers.normalise import normalise  # noqa: E402
from relay import gctune  # noqa: E402
from relay.queue import DiskQueue, RetryPolicy  # noqa: E402
from relay.queue.packing import encode_metas, pack_rows  # noqa: E402
from relay.sinks._lines import frame_items  # noqa: E402

PART = 1915     # events per worker part (a 1 MiB read of the benchmark's traffic, split in two)


def payloads(n: int) -> list[bytes]:
    r = Renderer(RenderOptions(format="leef"))
    out = []
    for i in range(n):
        ev = detect.parse(message(i, True).encode(), lenient=False, received=time.time(), peer="10.0.0.1:514",
                          source="tcp")
        out.append(r.render(normalise(ev), ["high_risk"]))
    return out


def run(mode: str, parts: list, d: str, lease_n: int, batch: int, cache_mib: int | None) -> dict:
    path = os.path.join(d, f"q-{mode}.db")
    for suffix in ("", "-wal", "-shm"):
        try:
            os.remove(path + suffix)
        except FileNotFoundError:
            pass
    q = DiskQueue(path, synchronous="FULL", retry=RetryPolicy())
    if cache_mib is not None:
        q._conn.execute(f"PRAGMA cache_size = -{cache_mib * 1024}")
    lease = q.lease_packed if mode == "packed" else q.lease
    pt = time.process_time
    t = dict.fromkeys(("put", "lease", "frame", "ack"), 0.0)
    n = 0
    for k, rows in enumerate(parts):
        t0 = pt()
        q.put_rows(rows)
        t["put"] += pt() - t0
        if k < 2:
            continue
        t0 = pt()
        items = lease(lease_n)
        t["lease"] += pt() - t0
        for j in range(0, len(items), batch):
            part = items[j:j + batch]
            t0 = pt()
            if mode == "packed":
                data, _ = frame_items(part, "lf")
            else:
                data, _ = frame_batch([it.payload for it in part], "lf")
            t["frame"] += pt() - t0
            t0 = pt()
            q.ack(part)
            t["ack"] += pt() - t0
        n += len(items)
    q.close()
    out = {k: v / n * 1e6 for k, v in t.items()}
    out["total"] = sum(out.values())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=120_000, help="events per run (120,000)")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each mode, alternated (3)")
    ap.add_argument("--lease", type=int, default=2000, help="events per lease (2,000: the sinks' lease_max_rows)")
    ap.add_argument("--batch", type=int, default=500, help="events per framed batch (500: the default batch_size)")
    ap.add_argument("--cache-mib", type=int, default=None,
                    help="SQLite page cache per queue connection (default: the queue's own setting)")
    ap.add_argument("--dir", default=None, help="state directory (default: a temporary one under /tmp)")
    args = ap.parse_args()
    gctune.tune_malloc()
    gctune.tune()
    print(f"bench_delivery: {os.cpu_count()} CPUs; uptime: {os.popen('uptime').read().strip()}")
    print(f"rendering {args.n:,} payloads ...", flush=True)
    pays = payloads(args.n)
    meta = {"source": "tcp", "routes": ["high_risk"], "received": time.time()}
    parts = [pack_rows(pays[i:i + PART], encode_metas([meta] * len(pays[i:i + PART])))
             for i in range(0, len(pays), PART)]
    print(f"{len(parts)} parts of {PART} events, {sum(map(len, pays)) / len(pays):.0f} bytes per payload; "
          f"lease {args.lease}, batches of {args.batch}, synchronous FULL")
    d = args.dir or tempfile.mkdtemp(prefix="bench-delivery-")
    res: dict[str, list] = {"items": [], "packed": []}
    try:
        for r in range(args.rounds):
            for mode in ("items", "packed"):
                f = run(mode, parts, d, args.lease, args.batch, args.cache_mib)
                res[mode].append(f)
                print(f"  round {r + 1} {mode:6s} " + " ".join(f"{k} {v:5.2f}" for k, v in f.items()), flush=True)
    finally:
        if args.dir is None:
            shutil.rmtree(d, ignore_errors=True)
    print("medians, CPU us per delivered event:")
    med = {m: {k: statistics.median(f[k] for f in fs) for k in fs[0]} for m, fs in res.items()}
    for m, f in med.items():
        print(f"  {m:6s} " + " ".join(f"{k} {v:5.2f}" for k, v in f.items()))
    print("  packed/items: " + " ".join(f"{k} {med['packed'][k] / med['items'][k]:.2f}x" for k in med["items"]))


if __name__ == "__main__":
    main()

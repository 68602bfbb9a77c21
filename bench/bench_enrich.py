"""Micro-benchmark: the enrichment stage's cost per event with realistic table sizes.

    .venv/bin/python bench/bench_enrich.py [--assets 100000] [--vulns 50000] [--ti 100000] [--events 50000]

Builds (in a temporary directory) an asset CSV of N rows (CIDRs of mixed prefix lengths
/16-/32 plus host names), a vulnerability CSV of M rows (host -> CVE, CVSS), a MISP CSV
export of K indicators (IPs, domains, SHA-256), loads them through the real config reader,
and measures with ``time.process_time`` (CPU, robust on a shared host):

* table load time and resident memory added by the tables;
* the raw index: a longest-prefix miss / hit, and a memoised repeat;
* ``Enricher(event)`` per event for typical mixes (events are made and dropped in the loop;
  the cost of making them is measured separately and subtracted):
    - ``log, host only``: a syslog line whose canonical fields carry only ``host``;
    - ``log, random IPs``: src/dst drawn from the whole IPv4 space (every lookup a memo miss);
    - ``log, working set``: src/dst from 5,000 recurring addresses (the memo's case);
    - ``incident, triaged``: SigmaIncident-like events against assets with TI hits: lookups,
      triage score/owner/explanation and an audit line (written by the writer thread; its
      CPU is included since process_time counts every thread).
Record ``uptime`` with the figures (bench/README.md).
"""
from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from parsers.event import Event  # noqa: E402


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def ip(n: int) -> str:
    return f"{n >> 24 & 255}.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"


def make_tables(d: Path, n_assets: int, n_vulns: int, n_ti: int, rnd: random.Random) -> dict:
    assets, hosts = ["cidr,hostname,name,owner,business_unit,criticality,crown_jewel"], []
    for i in range(n_assets):
        if i % 5 == 0:
            h = f"host-{i:06d}.corp.example"
            hosts.append(h)
            assets.append(f",{h},{h},team-{i % 60},bu-{i % 9},{i % 5 + 1},{'yes' if i % 250 == 0 else 'no'}")
        else:
            plen = rnd.choice((16, 20, 22, 24, 24, 24, 26, 27, 28, 29, 30, 32, 32, 32))
            net = (10 << 24 | rnd.getrandbits(24)) & ~((1 << (32 - plen)) - 1)
            assets.append(f"{ip(net)}/{plen},,net-{i},team-{i % 60},bu-{i % 9},{i % 5 + 1},no")
    (d / "assets.csv").write_text("\n".join(assets) + "\n")
    vulns = ["host,cve,cvss"]
    for i in range(n_vulns):
        vulns.append(f"{hosts[i % len(hosts)]},CVE-20{20 + i % 5}-{i:05d},{(i % 100) / 10:.1f}")
    (d / "vulns.csv").write_text("\n".join(vulns) + "\n")
    ti = ["uuid,event_id,category,type,value,comment,to_ids,date,object_relation,attribute_tag"]
    bad_ips = []
    for i in range(n_ti):
        k = i % 3
        if k == 0:
            v = ip(rnd.getrandbits(32) | 1 << 31)
            bad_ips.append(v)
            ti.append(f"u{i},{i % 500},Network activity,ip-dst,{v},,1,0,,tlp:amber")
        elif k == 1:
            ti.append(f"u{i},{i % 500},Network activity,domain,bad-{i}.example,,1,0,,")
        else:
            ti.append(f"u{i},{i % 500},Payload delivery,sha256,{rnd.getrandbits(256):064x},,1,0,,")
    (d / "misp.csv").write_text("\n".join(ti) + "\n")
    return {"hosts": hosts, "bad_ips": bad_ips}


def config_text(d: Path) -> str:
    return f"""
[lookups.assets]
kind = "asset"
file = "{d / 'assets.csv'}"
[lookups.vulns]
kind = "vuln"
file = "{d / 'vulns.csv'}"
[lookups.misp]
kind = "ti"
file = "{d / 'misp.csv'}"
format = "misp"
[triage]
mode = "assist"
[[triage.owners]]
crown_jewel = true
owner = "{{asset_owner}}"
[audit]
path = "{d / 'audit.jsonl'}"
[sinks.out]
type = "file"
path = "{d / 'out'}"
[routes.all]
match = "format exists"
sinks = ["out"]
"""


def fields(kind: str, **kw) -> dict:
    f = {"kind": kind, "vendor": None, "product": "app", "id": "1", "dedup_key": "log:1", "event": None,
         "name": "x", "description": None, "risk_score": 30, "severity": "low", "status": None, "occurred": None,
         "occurred_unix": None, "src_ip": None, "dst_ip": None, "host": None, "user": None, "tactic": None,
         "tactic_id": None, "technique": None, "technique_id": None, "url": None, "extra": {}}
    f.update(kw)
    return f


def per_event(enrich, make, n: int) -> float:
    """CPU microseconds per event of enrich(make(i)) minus make(i) alone (best of 3)."""
    def run(fn):
        gc.collect()
        t = time.process_time()
        for i in range(n):
            fn(i)
        return (time.process_time() - t) / n * 1e6

    best = []
    for _ in range(3):
        base = run(make)
        full = run(lambda i: enrich(make(i)))
        best.append(full - base)
    return min(best)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--assets", type=int, default=100_000)
    ap.add_argument("--vulns", type=int, default=50_000)
    ap.add_argument("--ti", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=50_000)
    a = ap.parse_args()
    rnd = random.Random(42)
    from relay.config import loads
    from relay.enrich import build_enricher, shutdown
    from relay.enrich.stage import runtime

    print(f"uptime: {os.getloadavg()}  python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        info = make_tables(d, a.assets, a.vulns, a.ti, rnd)
        rss0 = rss_kb()
        t0, c0 = time.perf_counter(), time.process_time()
        cfg = loads(config_text(d), file=str(d / "relay.toml"), base_dir=d)
        t1, c1 = time.perf_counter(), time.process_time()
        rss1 = rss_kb()
        print(f"tables: {a.assets} asset rows, {a.vulns} vuln rows, {a.ti} MISP rows: loaded in {t1 - t0:.2f} s "
              f"({c1 - c0:.2f} CPU-s), +{(rss1 - rss0) / 1024:.0f} MiB RSS")
        for lc in cfg.enrich.lookups.values():
            idx = lc.table.index
            print(f"  {lc.name}: {idx.size} entries, {len(idx.v4)} IPv4 prefix lengths, {len(idx.exact)} exact keys")
        enrich = build_enricher(cfg)
        assets = cfg.enrich.lookups["assets"].table.index
        import timeit
        hit_ip = "10." + ".".join(str(rnd.randrange(256)) for _ in range(2)) + ".1"
        n = 200_000
        miss = min(timeit.repeat(lambda: assets._find("192.168.7.9"), number=n, repeat=3)) / n * 1e6
        hit = min(timeit.repeat(lambda: assets._find(hit_ip), number=n, repeat=3)) / n * 1e6
        memo = min(timeit.repeat(lambda: assets.get(hit_ip), number=n, repeat=3)) / n * 1e6
        print(f"index (100k-row assets): longest-prefix miss {miss:.2f} us, hit {hit:.2f} us, memoised {memo:.2f} us")

        N = a.events
        rand_ips = [ip(rnd.getrandbits(32)) for _ in range(N * 2)]
        working = [ip(10 << 24 | rnd.getrandbits(24)) for _ in range(5000)]
        hosts = info["hosts"]
        bad = info["bad_ips"]

        def mk_host(i):
            e = Event(b"", "rfc5424")
            e.fields = fields("log", host=hosts[i % len(hosts)] if i % 2 else f"pc-{i % 3000}")
            return e

        def mk_rand(i):
            e = Event(b"", "rfc5424")
            e.fields = fields("log", src_ip=rand_ips[2 * i], dst_ip=rand_ips[2 * i + 1], host=f"pc-{i % 3000}")
            return e

        def mk_work(i):
            e = Event(b"", "rfc5424")
            e.fields = fields("log", src_ip=working[i % 5000], dst_ip=working[(i * 7) % 5000], host=f"pc-{i % 3000}")
            return e

        def mk_inc(i):
            e = Event(b"", "rfc5424")
            e.fields = fields("incident", risk_score=60 + i % 40, severity="high", dedup_key=f"rhythmx:INC-{i}",
                              src_ip=bad[i % len(bad)], dst_ip=working[i % 5000], host=hosts[i % len(hosts)],
                              tactic="Lateral Movement")
            return e

        def nothing(ev):
            pass

        print(f"per event (CPU us, {N} events, creation subtracted):")
        for label, mk in (("log, host only", mk_host), ("log, random IPs (memo misses)", mk_rand),
                          ("log, working set of 5k IPs", mk_work), ("incident, triaged + audited", mk_inc)):
            for m in (assets,):
                m.memo.clear()
            us = per_event(enrich, mk, N)
            print(f"  {label:34s} {us:7.2f} us  (~{1e6 / us / 1000:.0f}k events/s of enrichment per core)")
        audit = next(iter(runtime.audit.values()))
        audit.flush(10)
        print(f"audit lines written: {sum(1 for _ in open(d / 'audit.jsonl'))}")
        del nothing
        shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The in-process pipeline: routing, rendering once per sink, group commit into the
per-sink queues, dead letters for unrenderable events, and caps under the block policy."""
from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path

import orjson
import pytest

from relay.config import loads
from relay.metrics import REGISTRY
from relay.pipeline import Pipeline
from relay.queue import GroupCommitter
from relay.queue.commit import _groups
from relay.queue import DiskQueue
from tests.harness import sigma_line, until

CFG = '''
[sources.tcp]
type = "tcp"
address = "127.0.0.1:5514"
[routes.high]
match = 'risk_score >= 70'
sinks = ["leef", "archive"]
final = true
[routes.all]
match = 'format exists'
sinks = ["archive"]
[sinks.leef]
type = "file"
path = "/dev/null"
format = "leef"
[sinks.archive]
type = "file"
path = "/dev/null"
format = "json"
'''


def sigma(n: int, risk: int) -> bytes:
    """A minimal SigmaIncident: id and risk score in the SD, only the id in the body."""
    return sigma_line(f"INC-{n}", risk, actor=None, entity=None, status=None, alarm_count=None,
                      body={"incident_id": f"INC-{n}"})


@contextlib.contextmanager
def draining(q: DiskQueue, batch: int, pause: float):
    """A consumer thread for the block: leases up to ``batch`` rows, acks them, sleeps
    ``pause`` s, again; yields the list of payloads it took."""
    got: list = []
    stop = threading.Event()

    def consume():
        while not stop.is_set():
            items = q.lease(batch)
            got.extend(i.payload for i in items)
            q.ack(items)
            time.sleep(pause)
    t = threading.Thread(target=consume)
    t.start()
    try:
        yield got
    finally:
        stop.set()
        t.join()


def make(tmp_path, loop, **qargs):
    cfg = loads(CFG)
    queues = {name: DiskQueue(tmp_path / f"{name}.db", **qargs) for name in cfg.sinks}
    committers = {name: GroupCommitter(name, q, loop) for name, q in queues.items()}
    return cfg, queues, committers, Pipeline(cfg, committers)


def test_route_render_and_commit(tmp_path):
    async def main():
        cfg, queues, committers, p = make(tmp_path, asyncio.get_running_loop())
        before = REGISTRY.value("relay_routed_total", route="all")
        fut = p.handle([(sigma(n=1, risk=90), "10.0.0.1:514"), (sigma(n=2, risk=10), "10.0.0.1:514"),
                        (b"<13>1 - h a - - - plain", "10.0.0.2:514")], cfg.sources["tcp"])
        await asyncio.wait_for(fut, 10)
        leef = queues["leef"].lease(10)
        archive = queues["archive"].lease(10)
        assert len(leef) == 1 and b"LEEF:2.0|" in leef[0].payload and b"externalId=INC-1" in leef[0].payload
        # syslog rows carry where from and why (the LEEF itself has the ids); XSOAR rows
        # also the dedup key, event and status (tests/test_xsoar.py)
        assert leef[0].meta["routes"] == ["high"] and leef[0].meta["source"] == "tcp"
        assert "dedup_key" not in leef[0].meta
        # the high-risk event matched the final route: archived once, not again by "all"
        assert [orjson.loads(i.payload)["event"]["id"] for i in archive] == ["INC-1", "INC-2", None]
        assert REGISTRY.value("relay_routed_total", route="all") - before == 2
        for c in committers.values():
            c.close()
    asyncio.run(main())


def test_unroutable_events_are_counted(tmp_path):
    async def main():
        cfg = loads(CFG.replace("format exists", "risk_score >= 50"))
        q = DiskQueue(tmp_path / "q.db")
        committers = {n: GroupCommitter(n, q, asyncio.get_running_loop()) for n in cfg.sinks}
        p = Pipeline(cfg, committers)
        before = REGISTRY.value("relay_unrouted_total")
        assert p.handle([(sigma(n=3, risk=1), "h:1")], cfg.sources["tcp"]) is None
        assert REGISTRY.value("relay_unrouted_total") - before == 1
        for c in committers.values():
            c.close()
    asyncio.run(main())


def test_unrenderable_event_goes_to_dead_letters_with_reason(tmp_path):
    async def main():
        cfg, queues, committers, p = make(tmp_path, asyncio.get_running_loop())

        def broken(ev, routes):
            raise ValueError("LEEF devTime without devTimeFormat")
        p.renderers["leef"] = broken
        fut = p.handle([(sigma(n=4, risk=99), "h:1")], cfg.sources["tcp"])
        await asyncio.wait_for(fut, 10)
        for c in committers.values():
            c.close()
        (dead,) = queues["leef"].list(dlq=True)
        assert dead.reason.startswith("render failed: ValueError: LEEF devTime") and b"INC-4" in dead.payload
        assert queues["leef"].depth() == 0 and queues["archive"].depth() == 1
    asyncio.run(main())


def test_groups_fit_the_caps():
    class Q:
        max_rows, max_bytes = 10, 100
    items = [(b"x" * 20, None)] * 23
    groups = _groups(items, Q)
    assert sum(len(g) for g in groups) == 23
    assert all(len(g) <= 5 and sum(len(p) for p, _ in g) <= 50 for g in groups)


def test_block_policy_with_merged_batches_larger_than_the_cap(tmp_path):
    """Several batches merged by the committer exceed max_rows: they are committed in
    groups as a consumer drains the queue, never refused."""
    async def main():
        loop = asyncio.get_running_loop()
        q = DiskQueue(tmp_path / "q.db", max_rows=10, full_policy="block")
        c = GroupCommitter("s", q, loop, retry_interval=0.02)
        futs = [c.submit([(f"{b}-{i}".encode(), None) for i in range(8)]) for b in range(3)]
        with draining(q, 4, 0.01) as got:
            await asyncio.wait_for(asyncio.gather(*futs), 20)
            await until(lambda: len(got) >= 24, 10, what="the consumer to take all 24 rows")
        c.close()
        assert sorted(got) == sorted(f"{b}-{i}".encode() for b in range(3) for i in range(8))
    asyncio.run(main())


@pytest.mark.parametrize("workers", [1])
def test_process_never_raises_on_garbage(tmp_path, workers):
    cfg = loads(CFG)
    p = Pipeline(cfg, {})
    for raw in (b"", b"\xff\xfe", b"<13>1 ", b"<999>garbage", b"{not json", b"<13>1 - - - - - [x@1 a=\"]"):
        ev, routes, out = p.process(raw, cfg.sources["tcp"], None, 0.0)
        assert ev.fields is not None


@pytest.mark.parametrize("max_rows", [None, 100])
def test_committer_takes_rows_packed_by_the_workers(tmp_path, max_rows):
    """submit_rows: packed rows go in as they are; with caps smaller than a few packed rows
    they are unpacked and committed in groups that fit (here while a consumer drains)."""
    from relay.queue import pack_rows

    async def main():
        loop = asyncio.get_running_loop()
        q = DiskQueue(tmp_path / "q.db", max_rows=max_rows, full_policy="block")
        c = GroupCommitter("s", q, loop, retry_interval=0.02)
        enqueued = REGISTRY.value("relay_enqueued_total", sink="s")    # process-global: count the difference
        payloads = [b"ev-%04d" % i for i in range(600)]
        fut = c.submit_rows(pack_rows(payloads, [b'{"i":%d}' % i for i in range(600)]))
        with draining(q, 40, 0.005) as got:
            await asyncio.wait_for(fut, 20)
            await until(lambda: len(got) >= 600, 10, what="the consumer to take all 600 rows")
        c.close()
        assert got == payloads
        assert REGISTRY.value("relay_enqueued_total", sink="s") - enqueued >= 600
        q.close()
    asyncio.run(main())


def test_enrichment_never_loses_an_event(tmp_path):
    """A lookup that raises (here: an IP field holding a NUL, which inet_pton refuses with
    ValueError, and a deliberately broken enricher) leaves the event routed, rendered and
    counted, never an exception out of the stage (which would fail the whole hand-over)."""
    import shutil

    from relay.config import loads
    from relay.metrics import REGISTRY
    from relay.pipeline import Pipeline
    lk = tmp_path / "lookups"
    lk.mkdir()
    ex = Path(__file__).resolve().parent.parent / "examples" / "lookups"
    for name in ("assets.csv", "ti_misp.csv"):
        shutil.copy(ex / name, lk / name)
    cfg = loads('''
[sources.t]
type = "tcp"
address = "127.0.0.1:0"
[sinks.out]
type = "file"
path = "out.log"
[routes.all]
match = 'true'
sinks = ["out"]
[lookups.assets]
kind = "asset"
file = "lookups/assets.csv"
[lookups.misp]
kind = "ti"
file = "lookups/ti_misp.csv"
format = "misp"
[triage]
mode = "assist"
''', base_dir=tmp_path)
    p = Pipeline(cfg)
    src = cfg.sources["t"]
    raw = (b'<137>1 2026-03-13T04:30:00.123Z rx-01 SigmaIncident 42 created [incident@32473 id="INC-1" '
           b'risk_score="90"] {"incident_id":"INC-1","src_ip":"10.20.0.5\\u0000x","dst_ip":"203.0.113.7\\u0000"}')
    ev, routes, out = p.process(raw, src, "127.0.0.1:1", 0.0)
    assert routes == ["all"] and out[0][3] is None
    before = REGISTRY.counter("relay_enrich_errors_total").value

    def broken(ev):
        raise RuntimeError("lookup bug")
    p.enricher = broken
    ev, routes, out = p.process(raw, src, "127.0.0.1:1", 0.0)
    assert routes == ["all"] and out[0][0] == "out" and out[0][3] is None
    assert REGISTRY.counter("relay_enrich_errors_total").value == before + 1
    assert any("enrichment failed (RuntimeError: lookup bug)" in n for n in ev.notes)


@pytest.mark.parametrize("variant", ["plain", "enrich", "single"])
def test_stage_rows_is_stage_per_event(tmp_path, monkeypatch, variant):
    """The batch path (Pipeline.stage_rows -> stage_into: what the listeners' hand-over and the
    ingest workers run) puts into each sink's rows and dead letters exactly what ``stage``
    returns event by event, in order, with the same metadata, and shows the taps the same
    per-event results: every sink kind and format, routes with several sinks, metadata
    fields, render failures, enrichment, strict and lenient sources, and every event to one
    sink (the inline path the benchmark takes): bench/differential.py's configs and varied
    corpus."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import differential
    monkeypatch.setenv("DIFF_XSOAR_KEY", "k" * 32)
    text = differential.SOURCES + differential.SINKS + (differential.ROUTES_SINGLE if variant == "single"
                                                        else differential.ROUTES)
    if variant == "enrich":
        text += differential.ENRICH.format(lk=(Path(differential.ROOT) / "examples" / "lookups").resolve())
    cfg = loads(text, base_dir=tmp_path)
    one, batch = Pipeline(cfg, committers={}), Pipeline(cfg, committers={})
    import zlib

    def refusing(render, salt):   # some events refused by some sinks: dead letters
        def r(ev, routes):
            if zlib.crc32(ev.raw + salt) % 9 == 0:
                raise ValueError("refused by the test")
            return render(ev, routes)
        return r
    for p in (one, batch):
        p.renderers = {s: refusing(r, s.encode()) for s, r in p.renderers.items()}
    msgs = differential.corpus(1200)
    enc = orjson.dumps
    kinds_seen: set = set()
    for sname in ("tcp", "lenient"):
        src = cfg.sources[sname]
        for k in range(0, len(msgs), 97):
            items = [(raw, differential._peer(k + j)) for j, raw in enumerate(msgs[k:k + 97])]
            want_rows: dict = {}
            want_dead: dict = {}
            want_seen = []
            for ev in one.parse_batch(items, src, differential.RECEIVED):
                routes, out = one.stage(ev)
                want_seen.append((routes, [(s, p, enc(m), e) for s, p, m, e in out]))
                for s, p, m, e in out:
                    if e is None:
                        want_rows.setdefault(s, []).append((p, enc(m)))
                    else:
                        want_dead.setdefault(s, []).append((p, enc(m), e))
            rows: dict = {}
            dead: dict = {}
            seen = []

            def observe(ev, routes, out):
                # each event on its own: every sink of its routes, in order, refused exactly
                # when the test's renderer refuses it, its metadata its own
                want = list(dict.fromkeys(s for r in routes if r in cfg.routes for s in cfg.routes[r].sinks))
                assert [o[0] for o in out][:len(want)] == want
                for s, p, m, e in out:
                    assert (e is not None) == (zlib.crc32(ev.raw + s.encode()) % 9 == 0)
                    assert (m["source"], m["routes"], m["received"]) == (ev.source, routes, ev.received)
                seen.append((routes, [(s, p, enc(m), e) for s, p, m, e in out]))
            batch.stage_rows(items, src, differential.RECEIVED, rows, dead, observe)
            assert {s: list(zip(p, map(enc, m))) for s, (p, m) in rows.items()} == want_rows
            assert {s: [(p, enc(m), e) for p, m, e in d] for s, d in dead.items()} == want_dead
            assert seen == want_seen
            kinds_seen |= set(rows) | {"dead:" + s for s in dead}
    # the corpus reaches every routed sink, and every one dead-letters some events
    routed = {s for r in cfg.routes.values() for s in r.sinks}
    assert routed <= kinds_seen and {"dead:" + s for s in routed} <= kinds_seen

"""Pull sources (relay/sources/falcon.py, qradar.py, pull.py) against the loopback
emulators (tests/emulators/falcon.py, qradar.py), with a real Pipeline, GroupCommitter and
DiskQueue in tmp_path.  Every wait has a deadline."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import time
from pathlib import Path

import httpx
import pytest

from relay.config import ConfigError, SourceConfig, _Table, loads
from relay.pipeline import Pipeline
from relay.queue import GroupCommitter
from relay.queue import DiskQueue
from relay.sources import falcon as F
from relay.sources import pull as P
from relay.sources import qradar as Q
from tests.emulators.falcon import FalconEmulator, compile_fql, iso, parse_time
from tests.emulators.qradar import QradarEmulator, compile_filter
from tests import harness

SECRET = "falcon-secret-Zx9q"
SEC = "qradar-sec-2b5547bb"


# ----------------------------------------------------------------------------- harness
class Harness:
    """A real pipeline: catch-all route -> LEEF file sink config -> DiskQueue in tmp."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.state = tmp / "state"
        self.cfg = loads(f"""
[relay]
state_dir = "{self.state}"
[sinks.out]
type = "file"
path = "{tmp}/out.log"
[routes.all]
match = "format exists"
sinks = ["out"]
""", base_dir=tmp)
        self.queue = DiskQueue(tmp / "queue-out.db")
        self.committer = None
        self.pipeline = None

    def open(self) -> "Harness":
        self.committer = GroupCommitter("out", self.queue, asyncio.get_running_loop())
        self.pipeline = Pipeline(self.cfg, {"out": self.committer})
        return self

    def close(self) -> None:
        self.committer.close(5)
        self.final = self.queue.list(100000)
        self.queue.close()

    def rows(self):
        if getattr(self, "final", None) is not None:
            return self.final
        return self.queue.list(100000)

    def keys(self) -> list[str]:
        return [fields(r).get("dedup_key") for r in self.rows()]


def fields(row) -> dict:
    """The canonical dedup_key, event and status of a queued row, read back from its LEEF line
    (a file sink's rows carry only source, routes and received as metadata)."""
    from parsers import leef
    rec = leef.parse(row.payload.decode())
    a = dict(rec.attributes)
    return {"dedup_key": a.get("dedupKey"), "event": rec.event_id, "status": a.get("status")}


def source_config(name: str, typ: str, state: Path) -> SourceConfig:
    sc = SourceConfig(name=name, type=typ, address=None)
    sc.options = {"relay_state_dir": state}
    return sc


def falcon_source(h: Harness, emu: FalconEmulator, name: str = "falcon", **keys) -> F.FalconSource:
    table = {"base_url": emu.url, "client_id": "test-client", "client_secret_env": "T_FALCON_SECRET",
             "poll_interval": 0.05, "page_size": 10, "entities_chunk": 7, "retry_base": 0.02, "retry_cap": 0.2,
             "auth_retry_interval": 60.0, **keys}
    sc = source_config(name, "falcon", h.state)
    t = _Table("relay.toml", f"sources.{name}", table)
    F.read_config(t, sc, h.tmp)
    t.finish()
    return F.FalconSource(sc, h.pipeline)


def qradar_source(h: Harness, emu: QradarEmulator, name: str = "qradar", **keys) -> Q.QradarOffenseSource:
    table = {"url": emu.url, "token_env": "T_QRADAR_SEC", "poll_interval": 0.05, "page_size": 5,
             "retry_base": 0.02, "retry_cap": 0.2, "auth_retry_interval": 60.0, **keys}
    sc = source_config(name, "qradar_offenses", h.state)
    t = _Table("relay.toml", f"sources.{name}", table)
    Q.read_config(t, sc, h.tmp)
    t.finish()
    return Q.QradarOffenseSource(sc, h.pipeline)


@contextlib.asynccontextmanager
async def pulling(tmp_path: Path, make, *args, **keys):
    """A started pull source ``make(h, *args, **keys)`` on a fresh :class:`Harness` ``h``;
    yields ``(h, src)``; at the end the source is stopped and the harness closed."""
    h = Harness(tmp_path).open()
    src = make(h, *args, **keys)
    await src.start()
    try:
        yield h, src
    finally:
        await src.stop()
        h.close()


# waits here: 10 s unless a test says otherwise
until = functools.partial(harness.until, timeout=10.0)


async def polls(src, n: int = 2, timeout: float = 10.0) -> None:
    """Wait until ``n`` more polls completed (so 'nothing more arrives' is meaningful)."""
    start = src.polls
    await until(lambda: src.polls >= start + n, timeout=timeout, what=f"{n} more polls of {src.cfg.name}")


@pytest.fixture
def secrets_env(monkeypatch):
    monkeypatch.setenv("T_FALCON_SECRET", SECRET)
    monkeypatch.setenv("T_QRADAR_SEC", SEC)


@pytest.fixture
def falcon():
    with FalconEmulator(client_secret=SECRET) as emu:
        yield emu


@pytest.fixture
def qradar():
    with QradarEmulator(token=SEC) as emu:
        yield emu


def run(coro):
    return harness.run_async(coro, 60)


def unique(keys):
    return len(keys) == len(set(keys))


# ============================================================================= Falcon
def test_falcon_alerts_paged_each_once_leef(tmp_path, secrets_env, falcon):
    falcon.add_alerts(37)

    async def main():
        async with pulling(tmp_path, falcon_source, falcon) as (h, src):
            await until(lambda: len(h.rows()) >= 37, what="37 alerts queued")
            await polls(src, 3)
        return h
    h = run(main())
    rows = h.rows()
    assert len(rows) == 37
    assert sorted(h.keys()) == sorted(f"falcon:{c}" for c in falcon.alerts)
    for r in rows:
        line = r.payload.decode()
        assert "LEEF:2.0|CrowdStrike|FalconHost|1.0|" in line
        assert r.meta["source"] == "falcon" and r.meta["routes"] == ["all"]
    # paging: offset/limit pages of 10, filter with an encoded '+'-free time term, asc sort
    first = falcon.requests[0]
    assert first["sort"] == "created_timestamp|asc" and first["limit"] == "10" and first["offset"] == "0"
    assert first["filter"].startswith("created_timestamp:>='")
    # the cursor: the newest created_timestamp delivered, persisted with the dedup set
    st = json.loads((h.state / "falcon-falcon.json").read_text())
    newest = max(parse_time(a["created_timestamp"]) for a in falcon.alerts.values())
    assert abs(st["since"] - newest) < 1e-3
    assert set(st["seen"]) == set(falcon.alerts)
    # entities were fetched in chunks of at most 7
    assert falcon.stats["entities"] >= 6


def test_falcon_exact_multiple_of_page_size_stops_at_total(tmp_path, secrets_env, falcon):
    falcon.add_alerts(30)

    async def main():
        async with pulling(tmp_path, falcon_source, falcon, poll_interval=30.0) as (h, src):
            await until(lambda: src.polls >= 1, what="one poll")
        return h
    h = run(main())
    assert len(h.rows()) == 30
    offsets = [r["offset"] for r in falcon.requests]
    assert offsets == ["0", "10", "20"]       # no 4th, empty page: offset reached total


def test_falcon_total_grows_while_paging(tmp_path, secrets_env, falcon):
    base = time.time() - 100
    falcon.add_alerts(25, start=base, step=0.5)
    added = []

    def grow(emu, q):
        if len(added) < 6:
            # new alerts arrive during paging; two of them were created in the past (late ingestion)
            created = base + 3.25 if len(added) % 3 == 0 else time.time()
            added.append(emu.add_alert(created)["composite_id"])
    falcon.on_query = grow

    async def main():
        async with pulling(tmp_path, falcon_source, falcon) as (h, src):
            await until(lambda: len(h.rows()) >= 31, what="31 alerts")
            await polls(src, 3)
        return h
    h = run(main())
    keys = h.keys()
    assert unique(keys), "an alert was queued twice"
    assert sorted(keys) == sorted(f"falcon:{c}" for c in falcon.alerts)
    assert len(keys) == 31


def test_falcon_late_alert_inside_overlap_once(tmp_path, secrets_env, falcon):
    now = time.time()
    falcon.add_alerts(10, start=now - 50, step=1)

    async def main():
        async with pulling(tmp_path, falcon_source, falcon, overlap=300.0) as (h, src):
            await until(lambda: len(h.rows()) >= 10, what="10 alerts")
            late = falcon.add_alert(now - 45.5)     # created before the cursor: visible only now
            await until(lambda: len(h.rows()) >= 11, what="the late alert")
            await polls(src, 4)
            return h, late
    h, late = run(main())
    keys = h.keys()
    assert len(keys) == 11 and unique(keys)
    assert f"falcon:{late['composite_id']}" in keys
    # every poll re-read the overlap window (>=), and the dedup set dropped the re-reads
    assert all(q["filter"].startswith("created_timestamp:>=") for q in falcon.requests)
    assert falcon.stats["entities_returned"] == 11


def test_falcon_user_filter_is_anded_with_encoded_plus(tmp_path, secrets_env, falcon):
    falcon.add_alerts(5, product="epp")
    falcon.add_alerts(4, product="idp")

    async def main():
        async with pulling(tmp_path, falcon_source, falcon, filter="product:'epp'") as (h, src):
            await until(lambda: len(h.rows()) >= 5, what="5 epp alerts")
            await polls(src, 2)
        return h
    h = run(main())
    assert len(h.rows()) == 5
    # the emulator decodes a raw '+' to a space and would answer 400: it arrived as '+'
    assert falcon.requests[0]["filter"].startswith("product:'epp'+created_timestamp:>='")


def test_falcon_token_expiry_and_revocation_mid_run(tmp_path, secrets_env, caplog):
    caplog.set_level(logging.DEBUG)
    with FalconEmulator(client_secret=SECRET, token_ttl=0.6) as falcon:
        falcon.add_alerts(5)

        async def main():
            async with pulling(tmp_path, falcon_source, falcon, poll_interval=0.1, renew_window=0.0) as (h, src):
                await until(lambda: len(h.rows()) >= 5, what="first alerts")
                for i in range(3):                  # tokens expire while polling continues
                    await asyncio.sleep(0.5)
                    falcon.add_alert()
                await until(lambda: len(h.rows()) >= 8, what="alerts across token expiry")
                minted = src.tokens_minted
                falcon.revoke_tokens()              # out-of-band revocation -> 401 -> refresh, retry
                src._token_renew_at = time.monotonic() + 3600   # pretend we still trust the token
                falcon.add_alert()
                await until(lambda: len(h.rows()) >= 9, what="alert after revocation")
                assert src.tokens_minted > minted
                assert src.blocked is None
                return h, src
        h, src = run(main())
        assert unique(h.keys()) and len(h.keys()) == 9
        assert src.tokens_minted >= 3
        assert falcon.stats["401"] >= 1
    assert SECRET not in caplog.text


def test_falcon_401_twice_blocks_with_alert_no_tight_loop(tmp_path, secrets_env, falcon, caplog):
    falcon.add_alerts(3)
    falcon.fail(401, count=None, op="query")

    async def main():
        async with pulling(tmp_path, falcon_source, falcon) as (h, src):
            await until(lambda: src.blocked, what="the source blocks")
            await asyncio.sleep(0.5)
            return h, src
    h, src = run(main())
    assert h.rows() == []
    assert falcon.stats["token_ok"] == 2          # the first token + ONE refresh, then stop
    assert falcon.stats["query"] == 2
    assert "ALERT source falcon" in caplog.text and "401" in src.blocked
    assert not (h.state / "falcon-falcon.json").exists()
    assert SECRET not in caplog.text


def test_falcon_bad_secret_403_blocks(tmp_path, monkeypatch, falcon, caplog):
    monkeypatch.setenv("T_FALCON_SECRET", "wrong-secret-value")
    falcon.add_alerts(3)

    async def main():
        async with pulling(tmp_path, falcon_source, falcon) as (h, src):
            await until(lambda: src.blocked, what="the source blocks")
            await asyncio.sleep(0.3)
            return h, src
    h, src = run(main())
    assert falcon.stats["token_403"] == 1 and falcon.stats["query"] == 0
    assert "403" in src.blocked and "ALERT" in caplog.text
    assert "wrong-secret-value" not in caplog.text
    assert "wrong-secret-value" not in repr(src.settings)


def test_falcon_429_waits_for_epoch_retry_after(tmp_path, secrets_env, falcon):
    falcon.add_alerts(4)
    falcon.fail(429, count=1, op="query", retry_after="future:1.2")

    async def main():
        h = Harness(tmp_path).open()
        src = falcon_source(h, falcon)
        t0 = time.monotonic()
        await src.start()
        try:
            await until(lambda: len(h.rows()) >= 4, what="alerts after 429")
            return h, time.monotonic() - t0
        finally:
            await src.stop()
            h.close()
    h, elapsed = run(main())
    assert 1.0 <= elapsed < 6, elapsed        # waited until the epoch in the header, not backoff (0.02 s)
    assert falcon.stats["fault_429"] == 1


def test_falcon_429_past_garbage_missing_and_ms(tmp_path, secrets_env, falcon):
    falcon.add_alerts(4)
    for ra in ("past", "garbage", None, "ms:0.2"):
        falcon.fail(429, count=1, op="entities", retry_after=ra)

    async def main():
        h = Harness(tmp_path).open()
        src = falcon_source(h, falcon)
        t0 = time.monotonic()
        await src.start()
        try:
            await until(lambda: len(h.rows()) >= 4, what="alerts after 429s")
            return h, time.monotonic() - t0
        finally:
            await src.stop()
            h.close()
    h, elapsed = run(main())
    assert elapsed < 4, elapsed
    assert falcon.stats["fault_429"] == 4 and len(h.rows()) == 4


def test_falcon_5xx_storm_does_not_honour_retry_after(tmp_path, secrets_env, falcon):
    falcon.add_alerts(6)
    falcon.fail(503, count=3, op="query", retry_after="future:60", body=False)
    falcon.fail(500, count=2, op="entities")

    async def main():
        h = Harness(tmp_path).open()
        src = falcon_source(h, falcon)
        t0 = time.monotonic()
        await src.start()
        try:
            await until(lambda: len(h.rows()) >= 6, timeout=10, what="alerts after a 5xx storm")
            return h, time.monotonic() - t0
        finally:
            await src.stop()
            h.close()
    h, elapsed = run(main())
    assert elapsed < 5, elapsed
    assert unique(h.keys()) and len(h.keys()) == 6


def test_falcon_retries_exhausted_cursor_not_advanced_then_recovers(tmp_path, secrets_env, falcon):
    falcon.add_alerts(6)
    falcon.fail(502, count=None, op="entities")

    async def main():
        async with pulling(tmp_path, falcon_source, falcon, max_retries=2) as (h, src):
            await until(lambda: falcon.stats["fault_502"] >= 6, what="two failed polls")
            assert h.rows() == [] and src.last_error and "502" in src.last_error
            assert not (h.state / "falcon-falcon.json").exists()
            falcon.clear_faults()
            src.poll_now()
            await until(lambda: len(h.rows()) >= 6, timeout=15, what="recovery")
            return h
    h = run(main())
    assert len(h.rows()) == 6 and unique(h.keys())


def test_falcon_entities_fewer_than_asked_hold_the_cursor(tmp_path, secrets_env, falcon):
    now = time.time()
    alerts = falcon.add_alerts(20, start=now - 100, step=1)
    hidden = [alerts[5]["composite_id"], alerts[6]["composite_id"], alerts[15]["composite_id"]]
    falcon.hide(hidden)

    async def main():
        h = Harness(tmp_path).open()
        # a tiny overlap: only the held cursor keeps the hidden alerts inside the window
        src = falcon_source(h, falcon, overlap=0.0, missing_retries=1000)
        await src.start()
        try:
            await until(lambda: len(h.rows()) >= 17, what="17 visible alerts")
            await polls(src, 3)
            st = json.loads((h.state / "falcon-falcon.json").read_text())
            assert st["since"] <= parse_time(alerts[5]["created_timestamp"])
            assert set(st["missing"]) == set(hidden)
            falcon.add_alerts(3)                  # newer alerts still flow meanwhile
            await until(lambda: len(h.rows()) >= 20, what="newer alerts")
            falcon.unhide()
            await until(lambda: len(h.rows()) >= 23, what="the hidden alerts")
            await polls(src, 3)
            return h
        finally:
            await src.stop()
            h.close()
    h = run(main())
    keys = h.keys()
    assert len(keys) == 23 and unique(keys)
    assert all(f"falcon:{c}" in keys for c in hidden)
    assert falcon.stats["entities_missing"] >= 3


class _FailingCommitter:
    def __init__(self, loop):
        self.loop = loop
        self.submits = 0

    def submit(self, rows):
        self.submits += 1
        f = self.loop.create_future()
        f.set_exception(RuntimeError("disk on fire"))
        return f

    def submit_dead(self, *a):
        pass


def test_falcon_cursor_advances_only_after_durable_queueing(tmp_path, secrets_env, falcon):
    falcon.add_alerts(8)

    async def main():
        h = Harness(tmp_path).open()
        failing = _FailingCommitter(asyncio.get_running_loop())
        bad = Pipeline(h.cfg, {"out": failing})
        src = falcon_source(h, falcon)
        src.pipeline = bad
        await src.start()
        try:
            await until(lambda: failing.submits >= 2, what="two failed enqueues")
            assert not (h.state / "falcon-falcon.json").exists(), "cursor saved without durable queueing"
        finally:
            await src.stop()
        src2 = falcon_source(h, falcon)
        await src2.start()
        try:
            await until(lambda: len(h.rows()) >= 8, what="delivery after the failure")
        finally:
            await src2.stop()
            h.close()
        return h
    h = run(main())
    assert len(h.rows()) == 8 and unique(h.keys())


def test_falcon_restart_resumes_without_duplicates(tmp_path, secrets_env, falcon):
    falcon.add_alerts(15)

    async def main():
        h = Harness(tmp_path).open()
        src = falcon_source(h, falcon)
        await src.start()
        try:
            await until(lambda: len(h.rows()) >= 15, what="first 15")
        finally:
            await src.stop()
        falcon.add_alerts(5)
        queried = len(falcon.requests)
        src = falcon_source(h, falcon)
        await src.start()
        try:
            await until(lambda: len(h.rows()) >= 20, what="5 more after restart")
            await polls(src, 3)
        finally:
            await src.stop()
            h.close()
        return h, falcon.requests[queried]
    h, first_after_restart = run(main())
    assert len(h.rows()) == 20 and unique(h.keys())
    # the restarted source resumed from the persisted cursor (minus overlap), not first_fetch
    lower = parse_time(first_after_restart["filter"].split("'")[1])
    newest_first15 = sorted(parse_time(a["created_timestamp"]) for a in falcon.alerts.values())[14]
    assert abs(lower - (newest_first15 - 300.0)) < 0.01


def test_falcon_detects_api_gone_blocks_and_legacy_mode_works(tmp_path, secrets_env, caplog):
    with FalconEmulator(client_secret=SECRET) as gone, FalconEmulator(client_secret=SECRET,
                                                                      legacy_detects=True) as legacy:
        gone.add_detection()
        dets = [legacy.add_detection(time.time() - 10 + i) for i in range(4)]

        async def main():
            h = Harness(tmp_path).open()
            s1 = falcon_source(h, gone, name="old", api="detects")
            s2 = falcon_source(h, legacy, name="legacy", api="detects")
            await s1.start()
            await s2.start()
            try:
                await until(lambda: s1.blocked, what="405 blocks")
                await until(lambda: len(h.rows()) >= 4, what="legacy detections")
                await polls(s2, 2)
            finally:
                await s1.stop()
                await s2.stop()
                h.close()
            return h, s1
        h, s1 = run(main())
        assert "405" in s1.blocked
        assert sorted(h.keys()) == sorted(f"falcon:{d['detection_id']}" for d in dets)
        assert legacy.requests[0]["sort"] == "first_behavior|asc"


def test_retry_after_epoch_parsing():
    now = 1_747_213_900.0
    assert P.retry_after_epoch("1747213977", now) == pytest.approx(77)
    assert P.retry_after_epoch("1747213800", now) == 0.0           # in the past: retry now
    assert P.retry_after_epoch("1747213977000", now) == pytest.approx(77)   # milliseconds
    assert P.retry_after_epoch("1847213977", now) == P.MAX_RETRY_AFTER     # capped
    for bad in (None, "", "soon", "nan", "inf", "-5"):
        assert P.retry_after_epoch(bad, now) is None


def test_falcon_read_config(tmp_path, monkeypatch):
    monkeypatch.setenv("FS", "s3cret")

    def read(d):
        sc = source_config("f", "falcon", tmp_path)
        t = _Table("relay.toml", "sources.f", d)
        F.read_config(t, sc, tmp_path)
        t.finish()
        return sc.options["pull"]
    st = read({"client_id": "abc", "client_secret_env": "FS", "cloud": "eu-1"})
    assert st.base_url == "https://api.eu-1.crowdstrike.com" and st.client_secret.reveal() == "s3cret"
    assert "s3cret" not in repr(st)
    assert read({"client_id": "abc", "client_secret_env": "FS"}).base_url == "https://api.crowdstrike.com"
    (tmp_path / "sec").write_text("from-file\n")
    assert read({"client_id": "a", "client_secret_file": "sec"}).client_secret.reveal() == "from-file"
    bad = [
        ({"client_id": "a", "client_secret": "x"}, "secrets are never written"),
        ({"client_id": "a"}, "client_secret_env: is required"),
        ({"client_id": "a", "client_secret_env": "NOPE_UNSET"}, "not set"),
        ({"client_id": "a", "client_secret_env": "FS", "cloud": "us-1", "base_url": "http://x"}, "not both"),
        ({"client_id": "a", "client_secret_env": "FS", "cloud": "mars"}, "not one of"),
        ({"client_id": "a", "client_secret_env": "FS", "entities_chunk": 5000}, "1..1000"),
        ({"client_id": "a", "client_secret_env": "FS", "page_size": 20000}, "1..10000"),
        ({"client_id": "a", "client_secret_env": "FS", "api": "streams"}, "not one of"),
        ({"client_id": "a", "client_secret_env": "FS", "typo_key": 1}, "unknown key"),
    ]
    for d, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            read(d)


# ============================================================================= QRadar
def test_qradar_offenses_paged_by_range_each_created_once(tmp_path, secrets_env, qradar):
    qradar.add_offenses(23)

    async def main():
        async with pulling(tmp_path, qradar_source, qradar) as (h, src):
            await until(lambda: len(h.rows()) >= 23, what="23 offenses")
            await polls(src, 3)
        return h
    h = run(main())
    rows = h.rows()
    assert len(rows) == 23
    assert sorted(h.keys()) == sorted(f"qradar:{i}" for i in qradar.offenses)
    for r in rows:
        assert fields(r)["event"] == "created" and fields(r)["status"] == "open"
    req = qradar.requests[0]
    assert req["Range"] == "items=0-4" and req["sort"] == "+last_updated_time,+id"
    assert req["filter"].startswith("last_updated_time >= ")
    assert all(r["Range"] == "items=0-4" for r in qradar.requests)     # keyset pages, never offsets
    st = json.loads((h.state / "qradar-qradar.json").read_text())
    assert set(st["known"]) == {str(i) for i in qradar.offenses}       # ids are strings
    assert all(isinstance(k, str) for k in st["known"])


def test_qradar_updates_and_closes(tmp_path, secrets_env, qradar):
    ids = [o["id"] for o in qradar.add_offenses(6)]

    async def main():
        async with pulling(tmp_path, qradar_source, qradar) as (h, src):
            await until(lambda: len(h.rows()) >= 6, what="6 created")
            qradar.update_offense(ids[1], magnitude=9)
            qradar.update_offense(ids[4])
            qradar.close_offense(ids[2])
            await until(lambda: len(h.rows()) >= 9, what="2 updates and a close")
            await polls(src, 4)                       # overlap re-reads produce nothing
        return h
    h = run(main())
    rows = h.rows()
    assert len(rows) == 9
    later = [(fields(r)["dedup_key"], fields(r)["event"], fields(r)["status"]) for r in rows[6:]]
    assert sorted(later) == sorted([(f"qradar:{ids[1]}", "updated", "open"), (f"qradar:{ids[4]}", "updated", "open"),
                                    (f"qradar:{ids[2]}", "closed", "closed")])


def test_qradar_offense_updated_while_paging_nothing_skipped(tmp_path, secrets_env, qradar):
    ids = [o["id"] for o in qradar.add_offenses(17)]
    calls = []

    def meddle(emu, q):
        calls.append(q)
        if len(calls) == 2:              # between page 1 and page 2 the first offense changes:
            emu.update_offense(ids[0])   # with offset paging this would skip an offense
    qradar.on_request = meddle

    async def main():
        async with pulling(tmp_path, qradar_source, qradar) as (h, src):
            await until(lambda: len(h.rows()) >= 18, what="17 created + 1 updated")
            await polls(src, 3)
        return h
    h = run(main())
    events = [(fields(r)["dedup_key"], fields(r)["event"]) for r in h.rows()]
    assert len(events) == 18
    assert sorted(k for k, e in events if e == "created") == sorted(f"qradar:{i}" for i in ids)
    assert [k for k, e in events if e == "updated"] == [f"qradar:{ids[0]}"]


def test_qradar_wrong_sec_401_blocks_with_alert(tmp_path, monkeypatch, qradar, caplog):
    monkeypatch.setenv("T_QRADAR_SEC", "not-the-token")
    qradar.add_offenses(2)

    async def main():
        async with pulling(tmp_path, qradar_source, qradar) as (h, src):
            await until(lambda: src.blocked, what="blocked")
            await asyncio.sleep(0.3)
            return h, src
    h, src = run(main())
    assert h.rows() == [] and qradar.stats["401"] == 1 and qradar.stats["list"] == 0
    assert "401" in src.blocked and "ALERT source qradar" in caplog.text
    assert "not-the-token" not in caplog.text


def test_qradar_bad_filter_422_blocks(tmp_path, secrets_env, qradar, caplog):
    qradar.add_offenses(2)

    async def main():
        async with pulling(tmp_path, qradar_source, qradar, filter="no_such_field = 3") as (h, src):
            await until(lambda: src.blocked, what="blocked")
            return src
    src = run(main())
    assert "422" in src.blocked and "1010" in src.blocked


def test_qradar_user_filter_and_500_retried(tmp_path, secrets_env, qradar):
    qradar.add_offenses(4, magnitude=8)
    qradar.add_offenses(3, magnitude=2)
    qradar.fail(500, count=3)

    async def main():
        async with pulling(tmp_path, qradar_source, qradar, filter="magnitude >= 5") as (h, src):
            await until(lambda: len(h.rows()) >= 4, what="4 offenses")
            await polls(src, 2)
        return h
    h = run(main())
    assert len(h.rows()) == 4 and qradar.stats["fault_500"] == 3
    assert qradar.requests[-1]["filter"].startswith("(magnitude >= 5) and ")


def test_qradar_restart_no_duplicates_and_changes_while_down(tmp_path, secrets_env, qradar):
    ids = [o["id"] for o in qradar.add_offenses(8)]

    async def main():
        h = Harness(tmp_path).open()
        src = qradar_source(h, qradar)
        await src.start()
        try:
            await until(lambda: len(h.rows()) >= 8, what="8 created")
        finally:
            await src.stop()
        qradar.close_offense(ids[0])
        qradar.update_offense(ids[3])
        new = qradar.add_offense()["id"]
        src = qradar_source(h, qradar)
        await src.start()
        try:
            await until(lambda: len(h.rows()) >= 11, what="changes made while down")
            await polls(src, 3)
        finally:
            await src.stop()
            h.close()
        return h, new
    h, new = run(main())
    events = sorted((fields(r)["dedup_key"], fields(r)["event"]) for r in h.rows()[8:])
    assert events == sorted([(f"qradar:{ids[0]}", "closed"), (f"qradar:{ids[3]}", "updated"),
                             (f"qradar:{new}", "created")])
    assert len(h.rows()) == 11


def test_qradar_classify():
    known = {"5": [100, "OPEN"], "6": [100, "CLOSED"]}
    assert Q.classify({"id": 7, "last_updated_time": 1, "status": "OPEN"}, known, 0) == "created"
    assert Q.classify({"id": 7, "last_updated_time": 1, "status": "CLOSED"}, known, 0) == "closed"
    assert Q.classify({"id": 3, "last_updated_time": 1, "status": "OPEN"}, known, 4) == "updated"   # pruned
    assert Q.classify({"id": 5, "last_updated_time": 100, "status": "OPEN"}, known, 0) is None
    assert Q.classify({"id": 5, "last_updated_time": 101, "status": "OPEN"}, known, 0) == "updated"
    assert Q.classify({"id": 5, "last_updated_time": 101, "status": "CLOSED"}, known, 0) == "closed"
    assert Q.classify({"id": 6, "last_updated_time": 150, "status": "CLOSED"}, known, 0) == "updated"
    assert Q.parse_content_range("items 0-49/120") == (0, 49, 120)
    assert Q.parse_content_range("items */12") is None
    assert Q.parse_content_range("garbage") is None


def test_qradar_read_config(tmp_path, monkeypatch):
    monkeypatch.setenv("QS", "tok-8f3a9")

    def read(d):
        sc = source_config("q", "qradar_offenses", tmp_path)
        t = _Table("relay.toml", "sources.q", d)
        Q.read_config(t, sc, tmp_path)
        t.finish()
        return sc.options["pull"]
    st = read({"url": "https://qradar.example/api", "token_env": "QS", "api_version": 20.0})
    assert st.base_url == "https://qradar.example" and st.api_version == "20.0" and st.token.reveal() == "tok-8f3a9"
    assert st.console_url == "https://qradar.example" and "tok-8f3a9" not in repr(st)
    for d, msg in [({"url": "https://q", "token": "x"}, "never written"),
                   ({"url": "ftp://q", "token_env": "QS"}, "not an http"),
                   ({"url": "https://q", "token_env": "QS", "api_version": "v20"}, "API version"),
                   ({"url": "https://q", "token_env": "QS", "page_size": 0}, "1..1000")]:
        with pytest.raises(ConfigError, match=msg):
            read(d)


# ============================================================================= emulators
def test_qradar_emulator_range_edges_and_errors(qradar):
    def get(rng=None, sec=SEC, **params):
        h = {"Version": "20.0"}
        if sec:
            h["SEC"] = sec
        if rng:
            h["Range"] = rng
        return httpx.get(qradar.url + "/api/siem/offenses", params=params, headers=h, timeout=5)
    for n, want in ((50, "items 0-49/50"), (1, "items 0-49/51"), (0, None)):
        qradar.add_offenses(n)
    r = get("items=0-49")
    assert r.status_code == 200 and len(r.json()) == 50 and r.headers["Content-Range"] == "items 0-49/51"
    r = get("items=50-99")
    assert len(r.json()) == 1 and r.headers["Content-Range"] == "items 50-50/51"
    r = get("items=60-70")
    assert r.json() == [] and r.headers["Content-Range"] == "items */51"
    r = get("items=0-49", filter="id < 0")
    assert r.json() == [] and r.headers["Content-Range"] == "items */0"
    for bad in ("items=10-5", "items=abc", "bytes=0-5"):
        r = get(bad)
        body = r.json()
        assert r.status_code == 422 and body["code"] == 1005 and "items=x-y" in body["message"]
        assert set(body) == {"http_response", "code", "description", "details", "message"}
    r = get("items=0-4", filter="status = = OPEN")
    assert r.status_code == 422 and r.json()["code"] == 1010
    r = get("items=0-4", sort="+nope")
    assert r.status_code == 422 and r.json()["code"] == 1030
    r = get("items=0-4", sec=None)
    assert r.status_code == 401 and r.json()["code"] == 18 and "No SEC header present" in r.json()["message"]
    r = get("items=0-2", filter="status = OPEN and (magnitude between 2 and 5 or id in (1201, 1202))",
            sort="-id", fields="id,status")
    assert r.status_code == 200 and all(set(o) == {"id", "status"} for o in r.json())
    ids = [o["id"] for o in r.json()]
    assert ids == sorted(ids, reverse=True)
    oid = next(iter(qradar.offenses))
    n = httpx.post(f"{qradar.url}/api/siem/offenses/{oid}/notes", params={"note_text": "XSOAR incident 42"},
                   headers={"SEC": SEC}, timeout=5)
    assert n.status_code == 201 and n.json()["note_text"] == "XSOAR incident 42"
    assert httpx.post(f"{qradar.url}/api/siem/offenses/1/notes", params={"note_text": "x"},
                      headers={"SEC": SEC}, timeout=5).json()["code"] == 1002
    c = httpx.post(f"{qradar.url}/api/siem/offenses/{oid}", params={"status": "CLOSED"}, headers={"SEC": SEC},
                   timeout=5)
    assert c.status_code == 422
    c = httpx.post(f"{qradar.url}/api/siem/offenses/{oid}", params={"status": "CLOSED", "closing_reason_id": 1},
                   headers={"SEC": SEC}, timeout=5)
    assert c.status_code == 200 and c.json()["status"] == "CLOSED"
    c = httpx.post(f"{qradar.url}/api/siem/offenses/{oid}", params={"status": "CLOSED", "closing_reason_id": 1},
                   headers={"SEC": SEC}, timeout=5)
    assert c.status_code == 409 and c.json()["code"] == 1008


def test_falcon_emulator_wire_facts(falcon):
    falcon.add_alerts(3)
    r = httpx.post(falcon.url + "/oauth2/token", data={"client_id": "test-client", "client_secret": "bad"}, timeout=5)
    assert r.status_code == 403
    r = httpx.post(falcon.url + "/oauth2/token", data={"client_id": "test-client", "client_secret": SECRET},
                   timeout=5)
    assert r.status_code == 201 and r.json()["expires_in"] == 1799 and r.headers["X-CS-Region"] == "us-1"
    tok = r.json()["access_token"]
    h = {"Authorization": f"Bearer {tok}"}
    assert httpx.get(falcon.url + "/alerts/queries/alerts/v2", timeout=5).status_code == 401
    q = httpx.get(falcon.url + "/alerts/queries/alerts/v2", params={"limit": 2, "sort": "created_timestamp|asc"},
                  headers=h, timeout=5)
    body = q.json()
    assert body["meta"]["pagination"] == {"offset": 0, "limit": 2, "total": 3}
    assert int(q.headers["X-RateLimit-Remaining"]) < int(q.headers["X-RateLimit-Limit"])
    assert httpx.get(falcon.url + "/alerts/queries/alerts/v2", params={"limit": 10001}, headers=h,
                     timeout=5).status_code == 400
    # a raw '+' decodes to a space: a broken filter
    bad = httpx.get(falcon.url + "/alerts/queries/alerts/v2?filter=product:'epp'+status:'new'", headers=h, timeout=5)
    assert bad.status_code == 400
    e = httpx.post(falcon.url + "/alerts/entities/alerts/v2", json={"composite_ids": body["resources"] + ["nope"]},
                   headers=h, timeout=5).json()
    assert len(e["resources"]) == 2 and e["errors"][0]["code"] == 404
    assert httpx.get(falcon.url + "/detects/queries/detects/v1", headers=h, timeout=5).status_code == 405
    falcon.fail(429, retry_after="future:5")
    r = httpx.get(falcon.url + "/alerts/queries/alerts/v2", headers=h, timeout=5)
    assert r.status_code == 429 and 3 <= int(r.headers["x-ratelimit-retryafter"]) - time.time() <= 7


def test_fql_and_qradar_filter_subsets():
    a = {"created_timestamp": iso(1000.5), "product": "epp", "severity": 70}
    assert all(p(a) for p in compile_fql(f"created_timestamp:>='{iso(1000.5)}'+product:'epp'"))
    assert not all(p(a) for p in compile_fql(f"created_timestamp:>'{iso(1000.5)}'"))
    assert all(p(a) for p in compile_fql("severity:>=50+product:['idp','epp']"))
    with pytest.raises(ValueError):
        compile_fql("nope:'x'")
    f = compile_filter("(last_updated_time > 5 or (last_updated_time = 5 and id > 3)) and status != CLOSED")
    assert f({"last_updated_time": 5, "id": 4, "status": "OPEN"})
    assert not f({"last_updated_time": 5, "id": 3, "status": "OPEN"})
    assert not f({"last_updated_time": 6, "id": 1, "status": "CLOSED"})
    assert compile_filter("close_time is null")({"close_time": None})


def test_emulators_run_standalone():
    import subprocess
    import sys
    for mod in ("tests.emulators.falcon", "tests.emulators.qradar"):
        p = subprocess.Popen([sys.executable, "-m", mod, "--port", "0"], cwd=Path(__file__).resolve().parent.parent,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)))
        try:
            line = p.stdout.readline()
            assert "emulator on http://127.0.0.1:" in line, line
            url = line.split(" on ")[1].split()[0]
            if "falcon" in mod:
                r = httpx.post(url + "/oauth2/token", data={"client_id": "test-client",
                                                            "client_secret": "test-secret"}, timeout=5)
                assert r.status_code == 201
            else:
                r = httpx.get(url + "/api/siem/offenses", headers={"SEC": "test-sec-token", "Range": "items=0-4"},
                              timeout=5)
                assert r.status_code == 200 and r.headers["Content-Range"] == "items 0-4/10"
        finally:
            p.terminate()
            p.wait(5)


# ============================================================================= WorkerPool mode
def test_pull_source_with_workers_submits_through_the_servers_committers(tmp_path, secrets_env, falcon,
                                                                          monkeypatch):
    """workers = 2: pulled events are staged by the main process's pipeline and committed by
    the server's own committer of each sink (one writer per queue file), which wakes the sink."""
    from relay.server import Server
    falcon.add_alerts(9)
    conf = tmp_path / "relay.toml"
    conf.write_text(f"""
[relay]
state_dir = "state"
workers = 2
metrics_address = ""
[sources.falcon]
type = "falcon"
base_url = "{falcon.url}"
client_id = "test-client"
client_secret_env = "T_FALCON_SECRET"
poll_interval = 0.05
retry_base = 0.02
[sinks.archive]
type = "file"
path = "archive.log"
format = "json"
[routes.falcon]
match = 'source == "falcon" and vendor == "CrowdStrike"'
sinks = ["archive"]
""")

    from relay.queue import GroupCommitter
    committed = []
    orig = GroupCommitter.submit
    monkeypatch.setattr(GroupCommitter, "submit", lambda self, items: committed.append((self, len(items)))
                        or orig(self, items))

    async def main():
        srv = Server(conf)
        await srv.start()
        try:
            src = srv.sources["falcon"]
            assert srv.pool is not None and src.pipeline is srv.pool
            await until(lambda: src.polls >= 2, what="two polls")
            out = tmp_path / "archive.log"
            await until(lambda: out.is_file() and len(out.read_text().splitlines()) >= 9, what="9 lines delivered")
            assert {c for c, _ in committed} == {srv.sinks["archive"].committer}
            return out.read_text().splitlines()
        finally:
            await srv.stop()
    lines = run(main())
    assert sum(n for _, n in committed) == 9
    body = json.loads(lines[0])
    assert body["event"]["vendor"] == "CrowdStrike" and body["syslog"]["format"] == "api"


# ============================================================================= Falcon Event Streams
from relay.sources import falcon_stream as FS  # noqa: E402


def stream_source(h: Harness, emu: FalconEmulator, name: str = "stream", **keys) -> FS.FalconStreamSource:
    table = {"base_url": emu.url, "client_id": "test-client", "client_secret_env": "T_FALCON_SECRET",
             "app_id": "relaytest", "batch_size": 7, "batch_linger": 0.05, "retry_base": 0.02, "retry_cap": 0.2,
             "auth_retry_interval": 60.0, **keys}
    sc = source_config(name, "falcon_stream", h.state)
    t = _Table("relay.toml", f"sources.{name}", table)
    FS.read_config(t, sc, h.tmp)
    t.finish()
    return FS.FalconStreamSource(sc, h.pipeline)


def stream_keys(emu: FalconEmulator) -> list[str]:
    out = []
    for seq in emu.stream.values():
        for o in seq:
            e = o["event"]
            out.append(f"falcon:{e.get('CompositeId') or e.get('DetectId')}")
    return out


def test_falcon_stream_refresh_drop_expiry_restart_nothing_lost_or_duplicated(tmp_path, secrets_env):
    """Two partitions; the session lives 1.5 s and is refreshed at 90 % of its 1 s interval (so
    it never lapses: one discovery); partition 0's first connection breaks after 5 events; then
    every session is expired (401 on reconnect -> rediscovery); then the source is restarted on
    the stored offsets.  Every event is queued exactly once, each partition resumes from its
    stored offset + 1, and the offsets are stored only after the events are durable."""
    with FalconEmulator(client_secret=SECRET, partitions=2, session_ttl=1.5, refresh_interval=1.0) as emu:
        for i in range(12):
            emu.add_stream_event(0, "EppDetectionSummaryEvent" if i % 2 else "DetectionSummaryEvent")
            emu.add_stream_event(1)
        emu.drop_stream(after=5, partition=0)

        async def main():
            async with pulling(tmp_path, stream_source, emu) as (h, src):
                await until(lambda: len(h.rows()) >= 24, what="24 stream events queued")
                await until(lambda: src.refreshes >= 4, timeout=15, what="4 session refreshes")
                for _ in range(5):
                    emu.add_stream_event(0)
                    emu.add_stream_event(1, "DetectionSummaryEvent")
                await until(lambda: len(h.rows()) >= 34, what="34 stream events queued")
                assert src.discoveries == 1           # the refreshes kept the session alive
                emu.expire_sessions()
                await until(lambda: src.discoveries >= 2, what="a rediscovery after the sessions expired")
                for _ in range(3):
                    emu.add_stream_event(0)
                    emu.add_stream_event(1)
                await until(lambda: len(h.rows()) >= 40, what="40 stream events queued")
                # rows are durable first, the offsets written after them
                sf = h.state / "falcon-stream-stream.json"
                await until(lambda: sf.exists() and json.loads(sf.read_text())["offsets"] == {"0": 20, "1": 20},
                            what="offsets 20/20 stored")
                assert json.loads(sf.read_text())["app_id"] == "relaytest"
            return h
        h = run(main())
        assert sorted(h.keys()) == sorted(stream_keys(emu)) and unique(h.keys())
        # partition 0: connected at the start, after the drop from the stored offset + 1, after the rediscovery
        p0 = [off for p, off in emu.stream_connects if p == 0]
        assert p0[0] == 0 and len(p0) >= 3 and all(o > 0 for o in p0[1:])
        assert emu.stats["stream_dropped"] == 1 and emu.stats["stream_401"] >= 1

        # restarted on the stored offsets: only the new events, once
        for _ in range(4):
            emu.add_stream_event(0)
            emu.add_stream_event(1)
        n0 = len(emu.stream_connects)
        (tmp_path / "2" / "state").mkdir(parents=True)
        for f in (tmp_path / "state").glob("falcon-stream-*.json"):
            (tmp_path / "2" / "state" / f.name).write_text(f.read_text())

        async def resumed():
            async with pulling(tmp_path / "2", stream_source, emu) as (h2, src):
                await until(lambda: len(h2.rows()) >= 8, what="8 new stream events queued")
                await asyncio.sleep(0.3)
            return h2
        h2 = run(resumed())
        assert sorted(h2.keys()) == sorted(k for k in stream_keys(emu) if k not in set(h.keys()))
        assert len(h2.rows()) == 8 and not set(h2.keys()) & set(h.keys())
        assert sorted(off for _, off in emu.stream_connects[n0:n0 + 2]) == [21, 21]
        lines = [r.payload.decode() for r in h.rows() + h2.rows()]
        assert all(" stream " in ln.split(" LEEF:")[0] for ln in lines)     # one HOSTNAME: the source's
        assert {ln.split("|")[4] for ln in lines} <= {"DetectionSummaryEvent", "EppDetectionSummaryEvent"}


def test_falcon_stream_discovery_401_mints_a_new_token_once(tmp_path, secrets_env):
    with FalconEmulator(client_secret=SECRET) as emu:
        emu.add_stream_event(0)
        emu.fail(401, op="discover", count=1)

        async def main():
            async with pulling(tmp_path, stream_source, emu) as (h, src):
                await until(lambda: len(h.rows()) >= 1, what="the stream event queued")
                assert src.tokens_minted == 2 and src.discoveries == 1 and not src.blocked
            return h
        run(main())


def test_falcon_stream_refused_credentials_block_with_an_alert(tmp_path, secrets_env, caplog):
    with FalconEmulator(client_secret=SECRET) as emu:
        emu.fail(401, op="discover", count=None)

        async def main():
            async with pulling(tmp_path, stream_source, emu) as (h, src):
                await until(lambda: src.blocked is not None, what="the source blocked")
                assert src._tasks == {}
            return h
        with caplog.at_level(logging.ERROR):
            run(main())
        assert any("ALERT source stream" in r.getMessage() for r in caplog.records)
        assert SECRET not in caplog.text


def test_falcon_stream_config_refuses_polling_keys(tmp_path, secrets_env):
    h = Harness(tmp_path)
    with FalconEmulator(client_secret=SECRET) as emu:
        for k, v in (("poll_interval", 5.0), ("filter", "x"), ("app_id", "no-dashes!")):
            with pytest.raises(ConfigError, match=k):
                stream_source(h, emu, **{k: v})


# ============================================================================= Falcon users
def test_falcon_assigned_uid_resolved_cached_and_failure_keeps_the_uid(tmp_path, secrets_env, falcon):
    uid = "4f1c2b7e-1111-2222-3333-444455556666"
    falcon.add_user(uid, "Ada", "Lovelace")
    falcon.add_alerts(3, assigned_to_uid=uid)

    async def main():
        async with pulling(tmp_path, falcon_source, falcon) as (h, src):
            await until(lambda: len(h.rows()) >= 3, what="3 alerts queued")
            falcon.add_alerts(2, assigned_to_uid=uid)
            await until(lambda: len(h.rows()) >= 5, what="5 alerts queued")
            n_users = falcon.stats["users"]
            # the users API failing: the alerts go on with the uid
            falcon.fail(500, op="users", count=None)
            other = "9e9e9e9e-0000-0000-0000-000000000000"
            falcon.add_alerts(2, assigned_to_uid=other)
            await until(lambda: len(h.rows()) >= 7, what="7 alerts queued")
            return h, n_users
    h, n_users = run(main())
    assert n_users == 1                     # one lookup; the second poll's uid came from the cache
    lines = [r.payload.decode() for r in h.rows()]
    assert sum("assignedTo=Ada Lovelace" in ln for ln in lines) == 5
    assert not any("assignedTo=" in ln for ln in lines[5:])


def test_pulled_falcon_leef_has_one_hostname(tmp_path, secrets_env, falcon):
    """Alerts from many endpoints, one QRadar log source: HOSTNAME is the source's identity,
    the endpoint is in identHostName."""
    falcon.add_alerts(6)

    async def main():
        async with pulling(tmp_path, falcon_source, falcon, hostname="falcon-cloud") as (h, src):
            await until(lambda: len(h.rows()) >= 6, what="6 alerts queued")
        return h
    h = run(main())
    hosts, endpoints = set(), set()
    for r in h.rows():
        head, leef = r.payload.decode().split(" LEEF:", 1)
        hosts.add(head.split(" ")[2])
        endpoints.add(dict(kv.split("=", 1) for kv in leef.split("|", 6)[6].split("^"))["identHostName"])
        assert "|EppDetectionSummaryEvent|" in leef
    assert hosts == {"falcon-cloud"} and len(endpoints) == 6

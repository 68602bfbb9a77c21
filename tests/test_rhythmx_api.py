"""The ``rhythmx_api`` pull source (relay/sources/rhythmx_api.py) against the RhythmX emulator
(tests/emulators/rhythmx.py), with a real Pipeline, GroupCommitter and DiskQueue in tmp_path
(the Harness of tests/test_pull_sources.py).  Every wait has a deadline."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

import httpx
import pytest

from parsers import detect
from parsers.normalise import normalise
from parsers.rhythmx import normalise_incident
from relay.config import ConfigError, _Table
from relay.pipeline import Pipeline
from relay.sources import rhythmx_api as R
from tests import harness
from tests.emulators.rhythmx import RhythmxEmulator
from tests.test_pull_sources import Harness, _FailingCommitter, fields, polls, run, source_config, unique, until

API_KEY = "smk_e2e-Qx81kz"
PASSWORD = "rx-pass-7Hh2"


@pytest.fixture
def rx_env(monkeypatch):
    monkeypatch.setenv("T_RX_KEY", API_KEY)
    monkeypatch.setenv("T_RX_PASSWORD", PASSWORD)


@pytest.fixture
def rx():
    with RhythmxEmulator(api_key=API_KEY, password=PASSWORD) as emu:
        yield emu


def rx_source(h: Harness, emu: RhythmxEmulator, name: str = "rhythmx", **keys) -> R.RhythmxSource:
    table = {"url": emu.url, "poll_interval": 0.05, "page_size": 5, "retry_base": 0.02, "retry_cap": 0.2,
             "auth_retry_interval": 60.0, "overlap": 30, **keys}
    if table.get("auth", "api_key") == "api_key":
        table.setdefault("api_key_env", "T_RX_KEY")
    else:
        table.setdefault("username", emu.username)
        table.setdefault("password_env", "T_RX_PASSWORD")
    sc = source_config(name, "rhythmx_api", h.state)
    t = _Table("relay.toml", f"sources.{name}", table)
    R.read_config(t, sc, h.tmp)
    t.finish()
    return R.RhythmxSource(sc, h.pipeline)


@contextlib.asynccontextmanager
async def pulling(tmp_path, emu, **keys):
    h = Harness(tmp_path).open()
    src = rx_source(h, emu, **keys)
    await src.start()
    try:
        yield h, src
    finally:
        await src.stop()
        h.close()


def test_api_incident_has_the_syslog_dedup_key_and_fields():
    """The API object and the SigmaIncident message of the same incident: one dedup key."""
    line = harness.sigma_line("INC-7601d999", 82, actor="jdoe", entity="Primary Site")
    ev = detect.parse(line)
    normalise(ev)
    api, notes = normalise_incident({"incident_id": "INC-7601d999", "group_key": "jdoe", "actor_type": "user",
                                     "risk_score": 82, "entity_name": "Primary Site", "status": "OPEN",
                                     "created_at": "2026-03-13T04:30:00Z"}, "created")
    assert api["dedup_key"] == ev.fields["dedup_key"] == "rhythmx:INC-7601d999"
    for k in ("vendor", "product", "id", "severity", "status", "user", "risk_score", "event"):
        assert api[k] == ev.fields[k], k
    assert api["occurred_unix"] == 1773376200.0 and notes == []


def test_feed_with_api_key_pages_each_incident_once_then_updates_and_closes(tmp_path, rx_env, rx):
    ids = [rx.add_incident()["incident_id"] for _ in range(23)]

    async def main():
        async with pulling(tmp_path, rx) as (h, src):
            await until(lambda: len(h.rows()) >= 23, what="23 incidents")
            await polls(src, 2)
            assert len(h.rows()) == 23
            rx.update_incident(ids[3], risk_score=95)
            rx.update_incident(ids[4], status="CLOSED")
            new = rx.add_incident()["incident_id"]
            await until(lambda: len(h.rows()) >= 26, what="update, close and a new incident")
            await polls(src, 3)
            return h, new
    h, new = run(main())
    rows = h.rows()
    assert len(rows) == 26, [fields(r) for r in rows]
    got = [fields(r) for r in rows]
    assert sorted(g["dedup_key"] for g in got[:23]) == sorted(f"rhythmx:{i}" for i in ids)
    tail = {(g["dedup_key"], g["event"]) for g in got[23:]}
    assert tail == {(f"rhythmx:{ids[3]}", "updated"), (f"rhythmx:{ids[4]}", "closed"), (f"rhythmx:{new}", "created")}
    feed = [r for r in rx.requests if r["path"] == "/api/v1/feed/incidents"]
    assert feed and all(r["status"] == 200 for r in feed)
    assert any("updated_since" in r["query"] for r in feed) and any("since" in r["query"] for r in feed)
    assert {r["query"]["limit"] for r in feed} == {"5"}
    offsets = sorted({int(r["query"]["offset"]) for r in feed})
    assert offsets[:3] == [0, 4, 8]                    # pages overlap by one row (page_overlap)
    st = json.loads((h.state / "rhythmx-rhythmx.json").read_text())
    assert set(st["known"]) == set(ids) | {new}
    assert st["since"] and st["updated_since"]


def test_incident_updated_while_paging_is_not_skipped(tmp_path, rx_env, rx):
    """An update moves an incident to the end of the updated_at order while we page: every
    later offset shifts down by one.  The page overlap keeps the next one from being skipped
    (``overlap = 0`` here, so the next poll's time overlap cannot hide a skip)."""
    t0 = int(time.time())
    ids = [rx.add_incident(created=t0 - 100 + i)["incident_id"] for i in range(12)]

    async def main():
        async with pulling(tmp_path, rx, page_overlap=1, overlap=0) as (h, src):
            await until(lambda: len(h.rows()) >= 12, what="12 incidents")
            await polls(src, 1)
            orig = rx.handle
            moved = []

            def handle(req):
                reply = orig(req)
                if "updated_since" in req.query and req.query.get("offset") == "0" and not moved:
                    moved.append(1)       # between page 1 and page 2: ids[0] moves to the end
                    rx.update_incident(ids[0], risk_score=91, updated_at=R.iso(t0 - 10))
                return reply
            rx.handle = handle
            for i, x in enumerate(ids):
                rx.update_incident(x, risk_score=90, updated_at=R.iso(t0 - 50 + i))
            await until(lambda: len({k for k, r in zip(h.keys(), h.rows()) if fields(r)["event"] == "updated"})
                        >= 12, what="12 updates")
            await polls(src, 2)
            rx.handle = orig
            return h
    h = run(main())
    upd = [fields(r)["dedup_key"] for r in h.rows()[12:] if fields(r)["event"] == "updated"]
    assert set(upd) == {f"rhythmx:{i}" for i in ids}


def test_jwt_login_renewal_expiry_and_cases(tmp_path, rx_env):
    with RhythmxEmulator(api_key=API_KEY, password=PASSWORD, token_ttl=1.2) as rx:
        rx.add_case("C-11")
        rx.add_case("C-12")
        rx.add_incident("INC-1", related_case_ids=["C-11", "C-12"])
        rx.add_incident("INC-2", related_case_ids=["C-404"])
        rx.fail(429, count=2, op="list", retry_after="0")
        rx.fail(503, count=1, op="login")

        async def main():
            async with pulling(tmp_path, rx, auth="jwt", fetch_cases=True, renew_before=0.5) as (h, src):
                await until(lambda: len(h.rows()) >= 2, what="2 incidents")
                await asyncio.sleep(1.5)                      # tokens (1.2 s) renewed before expiry
                rx.expire_tokens()                            # a token revoked: 401 -> log in again once
                rx.add_incident("INC-3")
                await until(lambda: len(h.rows()) >= 3, what="a third incident after a revocation")
                return h, src
        h, src = run(main())
        assert src.blocked is None
        assert rx.stats["login_ok"] >= 3
        assert rx.stats["token_rejected"] >= 1
        assert rx.stats["http_429"] == 2 and rx.stats["http_503"] == 1
        lists = [r for r in rx.requests if r["path"] == "/api/incidents"]
        assert lists and not [r for r in rx.requests if r["path"].startswith("/api/v1/feed")]
        assert sorted(h.keys()) == ["rhythmx:INC-1", "rhythmx:INC-2", "rhythmx:INC-3"]
        assert {r["path"] for r in rx.requests if r["op"] == "cases"} == {"/api/cases/C-11", "/api/cases/C-12",
                                                                         "/api/cases/C-404"}


def test_related_cases_attached_and_missing_case_noted(tmp_path, rx_env, rx):
    rx.add_case("C-11")
    inc = rx.add_incident("INC-9", related_case_ids=["C-11", "C-404"])

    async def main():
        h = Harness(tmp_path).open()
        src = rx_source(h, rx, auth="jwt", fetch_cases=True)
        src.client = src.make_client()
        try:
            rows = await src.page({"since": R.iso(0), "limit": 5, "offset": 0})
            await src.add_cases(rows)
            return src._event(rows[0], "created", time.time())
        finally:
            await src.client.aclose()
            h.close()
    ev = run(main())
    x = ev.fields["extra"]
    assert [c["case_id"] for c in x["related_cases"]] == ["C-11"]
    assert x["related_cases"][0]["alerts"]
    assert any("C-404 (not found)" in n for n in x["notes"])
    assert ev.fields["dedup_key"] == f"rhythmx:{inc['incident_id']}"


def test_bad_api_key_blocks_with_alert_and_never_logs_the_key(tmp_path, monkeypatch, rx, caplog):
    monkeypatch.setenv("T_RX_KEY", "smk_wrong-key-zz")
    rx.add_incident()
    caplog.set_level(logging.INFO)

    async def main():
        async with pulling(tmp_path, rx) as (h, src):
            await until(lambda: src.blocked is not None, what="blocked source")
            n = len(rx.requests)
            await asyncio.sleep(0.3)
            assert len(rx.requests) == n, "a blocked source went on polling"
            return h
    h = run(main())
    assert not h.rows()
    assert "ALERT source rhythmx" in caplog.text and "smk_wrong-key-zz" not in caplog.text


def test_wrong_password_blocks(tmp_path, monkeypatch, rx, caplog):
    monkeypatch.setenv("T_RX_PASSWORD", "not-it")

    async def main():
        async with pulling(tmp_path, rx, auth="jwt") as (h, src):
            await until(lambda: src.blocked is not None, what="blocked source")
            return src
    src = run(main())
    assert "/api/login answered 401" in src.blocked
    assert rx.stats["login_failed"] == 1 and "not-it" not in caplog.text


def test_5xx_exhausts_retries_cursor_not_advanced_then_recovers(tmp_path, rx_env, rx):
    rx.add_incident()
    rx.fail(500, count=3, op="feed")

    async def main():
        async with pulling(tmp_path, rx, max_retries=1) as (h, src):
            await until(lambda: len(h.rows()) >= 1, what="delivery after the 5xx storm")
            return src
    run(main())
    assert rx.stats["http_500"] == 3


def test_cursor_advances_only_after_durable_queueing_and_restart_has_no_duplicates(tmp_path, rx_env, rx):
    for _ in range(8):
        rx.add_incident()

    async def main():
        h = Harness(tmp_path).open()
        failing = _FailingCommitter(asyncio.get_running_loop())
        src = rx_source(h, rx)
        src.pipeline = Pipeline(h.cfg, {"out": failing})
        await src.start()
        try:
            await until(lambda: failing.submits >= 2, what="two failed enqueues")
            assert not (h.state / "rhythmx-rhythmx.json").exists(), "cursor saved without durable queueing"
        finally:
            await src.stop()
        for _ in range(2):                       # twice: the second run must add nothing
            src2 = rx_source(h, rx)
            await src2.start()
            try:
                await until(lambda: len(h.rows()) >= 8, what="delivery after the failure")
                await polls(src2, 2)
            finally:
                await src2.stop()
        rx.add_incident()
        src3 = rx_source(h, rx)
        await src3.start()
        try:
            await until(lambda: len(h.rows()) >= 9, what="the incident added while down")
            await polls(src3, 2)
        finally:
            await src3.stop()
            h.close()
        return h
    h = run(main())
    assert len(h.rows()) == 9 and unique(h.keys())


def test_read_config_errors(tmp_path, rx_env):
    def read(**keys):
        sc = source_config("r", "rhythmx_api", tmp_path)
        t = _Table("relay.toml", "sources.r", {"url": "https://rx.example", **keys})
        R.read_config(t, sc, tmp_path)
        t.finish()
        return sc.options["pull"]
    s = read(api_key_env="T_RX_KEY")
    assert s.auth.mode == "api_key" and s.poll_interval == 60 and s.page_size == 100
    assert "smk_" not in repr(s)
    s = read(auth="jwt", username="svc", password_env="T_RX_PASSWORD", fetch_cases=True)
    assert s.auth.username == "svc" and s.fetch_cases
    for bad, msg in (({"api_key": "x"}, "never written"),
                     ({"api_key_env": "T_RX_KEY", "fetch_cases": True}, "needs auth"),
                     ({"api_key_env": "T_RX_KEY", "username": "svc"}, "not a key of auth"),
                     ({"auth": "jwt", "password_env": "T_RX_PASSWORD"}, "username"),
                     ({"auth": "oauth"}, "not one of"),
                     ({"api_key_env": "T_RX_KEY", "page_size": 5, "page_overlap": 5}, "page_overlap")):
        with pytest.raises(ConfigError) as e:
            read(**bad)
        assert msg in str(e.value), (bad, str(e.value))


def test_emulator_wire_facts(rx):
    inc = rx.add_incident()["incident_id"]
    with httpx.Client(base_url=rx.url, timeout=5) as c:
        assert c.post("/api/login", json={"username": rx.username, "password": "nope"}).status_code == 401
        tok = c.post("/api/login", json={"username": rx.username, "password": PASSWORD}).json()
        assert tok["expires_in"] and R.jwt_exp(tok["token"]) > time.time()
        bearer = {"Authorization": f"Bearer {tok['token']}"}
        key = {"X-API-Key": API_KEY}
        assert c.get("/api/v1/feed/incidents", headers=key).json()["data"][0]["incident_id"] == inc
        assert c.get("/api/v1/feed/incidents", headers={"X-API-Key": "smk_bad"}).status_code == 401
        assert c.get("/api/incidents", headers=key).status_code == 403             # read-only key
        assert c.patch(f"/api/incidents/{inc}/status", headers=key, json={"status": "CLOSED"}).status_code == 403
        assert c.get("/api/incidents", headers=bearer).json()["incidents"][0]["incident_id"] == inc
        assert c.patch(f"/api/incidents/{inc}/status", headers=bearer, json={"status": "DONE"}).status_code == 422
        assert c.patch("/api/incidents/INC-nope/status", headers=bearer, json={"status": "CLOSED"}).status_code == 404
        r = c.patch(f"/api/incidents/{inc}/status", headers=bearer, json={"status": "CLOSED", "notes": "n"})
        assert r.status_code == 200 and r.json()["status"] == "CLOSED"
        assert c.patch(f"/api/incidents/{inc}/status", headers=bearer, json={"status": "CLOSED"}).status_code == 200
        assert c.get("/api/v1/feed/incidents", headers=key, params={"since": "garbage"}).status_code == 400
        later = c.get("/api/v1/feed/incidents", headers=key, params={"since": "2999-01-01T00:00:00Z"}).json()
        assert later["data"] == []
        rx.expire_tokens()
        assert c.get("/api/incidents", headers=bearer).status_code == 401
    assert [p["status"] for p in rx.patches_for(inc)] == ["CLOSED", "CLOSED"]


def test_emulator_runs_standalone():
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    p = subprocess.Popen([sys.executable, "-m", "tests.emulators.rhythmx", "--port", "0", "--incidents", "3"],
                         cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=dict(os.environ, PYTHONPATH=str(root)))
    try:
        line = p.stdout.readline()
        assert "RhythmX emulator on http://127.0.0.1:" in line, line
        url = line.split(" on ")[1].split()[0]
        r = httpx.get(url + "/api/v1/feed/incidents", headers={"X-API-Key": "smk_testkey"}, timeout=5)
        assert r.status_code == 200 and len(r.json()["data"]) == 3
    finally:
        p.terminate()
        p.wait(5)

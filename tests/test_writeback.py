"""The loop back to the origins, in process: the ``xsoar_mirror`` source (closure and
assignment events from the XSOAR emulator) and the ``rhythmx_api`` write-back sink (against the
RhythmX emulator), with real pipelines, queues and dedup stores in tmp_path.  Every wait has a
deadline."""
from __future__ import annotations

import contextlib
import json
import time

import pytest

from formats.writeback import RhythmxOptions, WritebackError, rhythmx_status
from relay import kinds
from relay.config import ConfigError, _Table, loads
from relay.metrics import Registry
from relay.sinks import make_sink
from relay.sources import xsoar_mirror as M
from tests.emulators.rhythmx import RhythmxEmulator
from tests.emulators.xsoar import XsoarEmulator
from tests.harness import make_queue, run_async, run_sinks
from tests.test_pull_sources import polls, run, source_config, until

XSOAR_KEY = "wb-xsoar-key-88"
RX_PASSWORD = "wb-rx-pass-31"


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("T_XSOAR_KEY", XSOAR_KEY)
    monkeypatch.setenv("T_RX_PASSWORD", RX_PASSWORD)


class Catch:
    """A pipeline stand-in that keeps what the source submits (``events``)."""

    def __init__(self) -> None:
        self.events: list = []

    async def submit(self, events, source, **kw) -> int:
        self.events += events
        return len(events)


def mirror(tmp_path, xs: XsoarEmulator, pipeline, name: str = "m", **keys) -> M.MirrorSource:
    table = {"url": xs.url, "api_key_env": "T_XSOAR_KEY", "poll_interval": 0.05, "page_size": 2,
             "retry_base": 0.02, "retry_cap": 0.2, **keys}
    sc = source_config(name, "xsoar_mirror", tmp_path / "state")
    t = _Table("relay.toml", f"sources.{name}", table)
    M.read_config(t, sc, tmp_path)
    t.finish()
    return M.MirrorSource(sc, pipeline)


@contextlib.asynccontextmanager
async def mirroring(tmp_path, xs, pipe, **keys):
    src = mirror(tmp_path, xs, pipe, **keys)
    await src.start()
    try:
        yield src
    finally:
        await src.stop()


def made(xs: XsoarEmulator, keys: list[str]) -> dict[str, str]:
    """Incidents as the xsoar sink makes them (the dedup key in relaydedupkey): key -> id."""
    import httpx
    out = {}
    with httpx.Client(base_url=xs.url, headers={"Authorization": XSOAR_KEY}, timeout=5) as c:
        for k in keys:
            r = c.post("/incident", json={"name": f"incident {k}", "CustomFields": {"relaydedupkey": k},
                                          "createInvestigation": True})
            assert r.status_code == 200, r.text
            out[k] = r.json()["id"]
    return out


def test_mirror_emits_closures_and_assignments_with_their_origin_once(tmp_path, env):
    with XsoarEmulator(api_key=XSOAR_KEY, auth_id=None) as xs:
        ids = made(xs, ["rhythmx:INC-1", "rhythmx:INC-2", "qradar:1201", "falcon:abc:def", "other:9",
                        "rhythmx:raw:0f0f", "rhythmx:INC-3", "rhythmx:INC-4"])
        pipe = Catch()

        async def main():
            async with mirroring(tmp_path, xs, pipe) as src:
                await polls(src, 2)
                assert pipe.events == []                   # nothing closed or assigned yet
                for k in ("rhythmx:INC-1", "qradar:1201", "falcon:abc:def", "other:9", "rhythmx:raw:0f0f",
                          "rhythmx:INC-3", "rhythmx:INC-4"):
                    xs.close_incident(ids[k], reason="False Positive" if k == "qradar:1201" else "Resolved",
                                      notes=f"notes {k}", owner="alice")
                xs.reassign(ids["rhythmx:INC-2"], "bob")
                await until(lambda: len(pipe.events) >= 5 + 5, what="closures and assignments")
                await polls(src, 3)
                n = len(pipe.events)
                xs.reopen(ids["rhythmx:INC-1"])
                xs.close_incident(ids["rhythmx:INC-1"], reason="Resolved", notes="again")
                await until(lambda: len(pipe.events) > n, what="the second close")
                await polls(src, 3)
                return src
        src = run(main())
        closures = [e.fields for e in pipe.events if e.fields["kind"] == "closure"]
        assigns = [e.fields for e in pipe.events if e.fields["kind"] == "assignment"]
        assert sorted(f["dedup_key"] for f in closures) == sorted(
            ["rhythmx:INC-1", "rhythmx:INC-1", "qradar:1201", "falcon:abc:def", "rhythmx:INC-3", "rhythmx:INC-4"])
        by = {f["dedup_key"]: f for f in closures}
        q = by["qradar:1201"]
        assert (q["origin"], q["vendor"], q["product"], q["id"]) == ("qradar", "IBM", "QRadar", "1201")
        assert q["extra"]["close_reason"] == "False Positive" and q["extra"]["owner"] == "alice"
        assert q["extra"]["xsoar_id"] == ids["qradar:1201"] and q["status"] == "closed"
        assert by["falcon:abc:def"]["id"] == "abc:def" and by["falcon:abc:def"]["vendor"] == "CrowdStrike"
        r = by["rhythmx:INC-3"]
        assert (r["vendor"], r["id"], r["event"]) == ("RhythmX", "INC-3", "closure")
        # owners: alice (set with the closes) and bob; each once per incident
        assert sorted((f["dedup_key"], f["user"]) for f in assigns) == sorted(
            [(k, "alice") for k in ("rhythmx:INC-1", "qradar:1201", "falcon:abc:def", "rhythmx:INC-3",
                                    "rhythmx:INC-4")] + [("rhythmx:INC-2", "bob")])
        reg = src.registry
        assert reg.counter("relay_mirror_skipped_total", source="m", reason="not_an_origin").value >= 2
        st = json.loads((tmp_path / "state" / "xsoar-mirror-m.json").read_text())
        assert st["mark"] and set(st["known"]) >= set(ids.values())


def test_mirror_loop_guard_skips_the_relays_own_close_and_restart_repeats_nothing(tmp_path, env):
    with XsoarEmulator(api_key=XSOAR_KEY, auth_id=None) as xs:
        ids = made(xs, [f"rhythmx:INC-{i}" for i in range(7)])
        xs.close_incident(ids["rhythmx:INC-0"], notes="Closed at the source (relay)")   # the xsoar sink's close
        for i in range(1, 7):                                 # page_size 2: several pages, some sharing ms
            xs.close_incident(ids[f"rhythmx:INC-{i}"], notes="by hand")
        pipe = Catch()

        async def main():
            async with mirroring(tmp_path, xs, pipe, events=["closure"]) as src:
                await until(lambda: len(pipe.events) >= 6, what="6 closures")
                await polls(src, 2)
                skipped = src.registry.counter("relay_mirror_skipped_total", source="m", reason="own_close").value
            async with mirroring(tmp_path, xs, pipe, events=["closure"]) as src2:
                await polls(src2, 3)
            return skipped
        skipped = run(main())
        assert sorted(e.fields["dedup_key"] for e in pipe.events) == [f"rhythmx:INC-{i}" for i in range(1, 7)]
        assert skipped == 1


def test_mirror_bad_key_blocks_and_config_errors(tmp_path, env, monkeypatch, caplog):
    with XsoarEmulator(api_key=XSOAR_KEY, auth_id=None) as xs:
        monkeypatch.setenv("T_XSOAR_KEY", "wrong-key-123")

        async def main():
            async with mirroring(tmp_path, xs, Catch()) as src:
                await until(lambda: src.blocked is not None, what="blocked")
                return src
        src = run(main())
        assert "403" in src.blocked and "wrong-key-123" not in caplog.text
    for bad, msg in (({"origins": ["splunk"]}, "origins"), ({"events": ["deleted"]}, "events"),
                     ({"api_key": "x"}, "never written"), ({"dedup_field": "Relay Key"}, "machine key")):
        with pytest.raises(ConfigError) as e:
            mirror(tmp_path, xs, Catch(), **bad)
        assert msg in str(e.value)


# ============================================================================ the RhythmX sink
def closure(inc_id="INC-1", reason="Resolved", kind="closure", origin="rhythmx", closed="2026-03-13T05:00:00.000Z"):
    return {"kind": kind, "origin": origin, "vendor": "RhythmX", "id": inc_id, "dedup_key": f"{origin}:{inc_id}",
            "status": "closed", "extra": {"xsoar_id": "12", "close_reason": reason, "close_notes": "done",
                                          "owner": "alice", "closed": closed}}


def test_rhythmx_status_encoding():
    w = rhythmx_status(closure())
    assert w == {"op": "status", "id": "INC-1", "status": "CLOSED",
                 "notes": "Closed in XSOAR (incident 12) by alice: Resolved. done",
                 "key": "rhythmx:INC-1|xsoar:12|closed:2026-03-13T05:00:00.000Z"}
    assert rhythmx_status(closure(reason="false positive"))["status"] == "FALSE_POSITIVE"
    assert rhythmx_status(closure(reason="Benign"), RhythmxOptions(false_positive_reasons=("benign",)))["status"] \
        == "FALSE_POSITIVE"
    assert rhythmx_status(closure(closed="2026-03-14T00:00:00Z"))["key"] != w["key"]   # a second close
    for bad in (closure(kind="assignment"), closure(origin="qradar"), closure(inc_id="")):
        with pytest.raises(WritebackError):
            rhythmx_status(bad)


def rx_sink(tmp_path, rx: RhythmxEmulator, extra: str = ""):
    cfg = loads(f"""
[relay]
state_dir = "{tmp_path / 'state'}"
[sinks.back]
type = "rhythmx_api"
url = "{rx.url}"
username = "{rx.username}"
password_env = "T_RX_PASSWORD"
{extra}
[routes.all]
match = 'kind == "closure"'
sinks = ["back"]
""", file="test.toml", base_dir=tmp_path).sinks["back"]
    q = make_queue(tmp_path / "state" / "queue-back.db")
    return cfg, q, make_sink(cfg, q, registry=Registry(), auth_recheck=0.3)


def enqueue(cfg, q, fields_list):
    from relay.sources.pull import make_event
    render = kinds.sink(cfg.type).renderer(cfg)
    rows = []
    for f in fields_list:
        ev = make_event(f, {}, "m", time.time())
        rows.append((render(ev, ["all"]), {"source": "m", "routes": ["all"], "dedup_key": f["dedup_key"]}))
    q.put_many(rows)


def test_rhythmx_sink_patches_once_relogs_in_once_and_dead_letters_unknown(tmp_path, env):
    with RhythmxEmulator(password=RX_PASSWORD) as rx:
        for i in ("INC-1", "INC-2", "INC-3"):
            rx.add_incident(i)
        rx.update_incident("INC-3", status="FALSE_POSITIVE")     # closed in RhythmX already
        cfg, q, sink = rx_sink(tmp_path, rx)
        enqueue(cfg, q, [closure("INC-1"), closure("INC-1"), closure("INC-2", reason="False Positive"),
                         closure("INC-3"), closure("INC-404")])
        rx.fail(429, count=1, op="patch", retry_after="0")
        ok = run_async(run_sinks([sink], lambda: q.depth() == 0, 20), 60)
        assert ok, (q.depth(), rx.requests[-5:])
        assert sorted((p["id"], p["status"]) for p in rx.patches) == [("INC-1", "CLOSED"), ("INC-2", "FALSE_POSITIVE")]
        dead = q.list(100, dlq=True)
        assert len(dead) == 1 and "INC-404" in dead[0].last_error
        reg = sink.registry
        assert reg.counter("relay_writeback_total", sink="back", action="duplicate").value == 1
        assert reg.counter("relay_writeback_total", sink="back", action="already_closed").value == 1
        audit = [json.loads(ln) for ln in (tmp_path / "state" / "audit" / "writeback-back.jsonl").read_text()
                 .splitlines()]                               # every write, with its reason
        assert sorted((a["id"], a["action"]) for a in audit) == [("INC-1", "patched"), ("INC-2", "patched"),
                                                                 ("INC-3", "none")]
        assert all(a["target"] == "RhythmX" and a["reason"] for a in audit)
        assert [a["status"] for a in audit if a["id"] == "INC-2"] == ["FALSE_POSITIVE"]
        # a revoked token: one new login, the write goes through
        rx.add_incident("INC-5")
        rx.expire_tokens()
        logins = rx.stats["login_ok"]
        enqueue(cfg, q, [closure("INC-5")])
        sink2 = make_sink(cfg, q, registry=Registry(), auth_recheck=0.3)
        sink2.jwt = sink.jwt                                      # the token the server just revoked
        assert run_async(run_sinks([sink2], lambda: q.depth() == 0, 20), 60)
        assert rx.stats["login_ok"] == logins + 1 and rx.patches_for("INC-5")
        q.close()


def test_rhythmx_sink_refused_login_blocks_and_keeps_the_write(tmp_path, env, monkeypatch, caplog):
    monkeypatch.setenv("T_RX_PASSWORD", "not-the-password")
    with RhythmxEmulator(password=RX_PASSWORD) as rx:
        rx.add_incident("INC-1")
        cfg, q, sink = rx_sink(tmp_path, rx)
        enqueue(cfg, q, [closure("INC-1")])
        run_async(run_sinks([sink], lambda: rx.stats["login_failed"] >= 1 and sink.blocked, 20), 60)
        assert q.depth() == 1 and not q.list(10, dlq=True) and rx.patches == []
        assert "not-the-password" not in caplog.text
        q.close()


def test_rhythmx_sink_config_errors(tmp_path, env):
    with RhythmxEmulator(password=RX_PASSWORD) as rx:
        for extra, msg in (('auth = "api_key"', "read-only"), ('api_key_env = "X"', "not a key of auth"),
                           ('password = "x"', "never written"), ("false_positive_reasons = [1]", "close reasons")):
            with pytest.raises(ConfigError) as e:
                rx_sink(tmp_path, rx, extra)
            assert msg in str(e.value), (extra, str(e.value))


# ============================================================================ the QRadar sink
QR_SEC = "wb-qradar-sec-19"


def test_qradar_close_encoding():
    from formats.writeback import QradarOptions, qradar_close
    f = closure("1201", reason="False Positive", origin="qradar")
    w = qradar_close(f)
    assert (w["op"], w["id"], w["closing_reason_id"]) == ("close", 1201, 2)
    assert w["note"] == "Closed in XSOAR (incident 12) by alice: False Positive. done"
    assert qradar_close(closure("7", reason="Weird", origin="qradar"),
                        QradarOptions(default_closing_reason_id=9))["closing_reason_id"] == 9
    for bad in (closure("x1", origin="qradar"), closure("7"), closure("7", kind="assignment", origin="qradar")):
        with pytest.raises(WritebackError):
            qradar_close(bad)


def qr_sink(tmp_path, qr, extra: str = ""):
    cfg = loads(f"""
[relay]
state_dir = "{tmp_path / 'state'}"
[sinks.qback]
type = "qradar_api"
url = "{qr.url}/api"
token_env = "T_QR_SEC"
{extra}
[routes.all]
match = 'kind == "closure"'
sinks = ["qback"]
""", file="test.toml", base_dir=tmp_path).sinks["qback"]
    q = make_queue(tmp_path / "state" / "queue-qback.db")
    return cfg, q, make_sink(cfg, q, registry=Registry(), auth_recheck=0.3)


def test_qradar_sink_note_once_closed_protected_and_unknown(tmp_path, env, monkeypatch):
    from tests.emulators.qradar import QradarEmulator
    monkeypatch.setenv("T_QR_SEC", QR_SEC)
    with QradarEmulator(token=QR_SEC) as qr:
        a, b, c, d = (o["id"] for o in qr.add_offenses(4))
        qr.update_offense(c, protected=True)
        qr.close_offense(d)
        cfg, q, sink = qr_sink(tmp_path, qr, '[sinks.qback.closing_reasons]\n"False Positive" = 3')
        fa = closure(str(a), reason="False Positive", origin="qradar")
        from formats.writeback import close_note
        qr.notes[a] = [{"id": 1, "note_text": close_note(fa), "username": "API", "create_time": 1}]  # a retry
        enqueue(cfg, q, [fa, closure(str(b), reason="Resolved", origin="qradar"),
                         closure(str(c), origin="qradar"), closure(str(d), origin="qradar"),
                         closure("999999", origin="qradar"), fa])
        qr.fail(503, count=1, op="notes")
        assert run_async(run_sinks([sink], lambda: q.depth() == 0, 20), 60)
        assert qr.offenses[a]["closing_reason_id"] == 3 and len(qr.notes[a]) == 1       # note not added twice
        assert qr.offenses[b]["status"] == "CLOSED" and qr.offenses[b]["closing_reason_id"] == 1
        assert qr.offenses[c]["status"] == "OPEN"                                       # protected: 409
        assert [w for w in qr.writes if w["id"] == d] == []                            # closed already
        dead = sorted(r.last_error for r in q.list(100, dlq=True))
        assert len(dead) == 2 and any("999999" in e for e in dead) and any("protected" in e for e in dead)
        reg = sink.registry
        got = {a: reg.counter("relay_writeback_total", sink="qback", action=a).value
               for a in ("closed", "already_closed", "duplicate", "note_added", "note_present")}
        assert got == {"closed": 2, "already_closed": 1, "duplicate": 1, "note_added": 2, "note_present": 1}, got
        q.close()


def test_qradar_sink_config_errors(tmp_path, env, monkeypatch):
    from tests.emulators.qradar import QradarEmulator
    monkeypatch.setenv("T_QR_SEC", QR_SEC)
    with QradarEmulator(token=QR_SEC) as qr:
        for extra, msg in (('token = "x"', "never written"), ('api_version = "v2"', "API version"),
                           ('[sinks.qback.closing_reasons]\n"Resolved" = "one"', "closing_reasons"),
                           ("default_closing_reason_id = 0", "closing_reason_id")):
            with pytest.raises(ConfigError) as e:
                qr_sink(tmp_path, qr, extra)
            assert msg in str(e.value), (extra, str(e.value))


def test_falcon_close_encoding():
    from formats.writeback import falcon_close
    w = falcon_close(closure("cid:ind:agent:1-2-3", origin="falcon"))
    assert w["id"] == "cid:ind:agent:1-2-3"
    assert w["body"] == {"composite_ids": ["cid:ind:agent:1-2-3"], "action_parameters": [
        {"name": "update_status", "value": "closed"},
        {"name": "append_comment", "value": "Closed in XSOAR (incident 12) by alice: Resolved. done"}]}
    for bad in (closure("x", origin="qradar"), closure("", origin="falcon"), closure("x", kind="assignment",
                                                                                   origin="falcon")):
        with pytest.raises(WritebackError):
            falcon_close(bad)


def test_falcon_sink_unknown_alert_dead_letters_and_bad_secret_blocks(tmp_path, env, monkeypatch, caplog):
    from tests.emulators.falcon import FalconEmulator
    monkeypatch.setenv("T_FALCON_SECRET", "right-secret-1")
    with FalconEmulator(client_secret="right-secret-1") as falcon:
        cid = falcon.add_alert()["composite_id"]

        def sink(tmp, extra=""):
            cfg = loads(f"""
[relay]
state_dir = "{tmp / 'state'}"
[sinks.fb]
type = "falcon_api"
url = "{falcon.url}"
client_id = "test-client"
client_secret_env = "T_FALCON_SECRET"
{extra}
[routes.all]
match = 'kind == "closure"'
sinks = ["fb"]
""", file="test.toml", base_dir=tmp).sinks["fb"]
            q = make_queue(tmp / "state" / "queue-fb.db")
            return cfg, q, make_sink(cfg, q, registry=Registry(), auth_recheck=0.3)
        cfg, q, s = sink(tmp_path)
        enqueue(cfg, q, [closure("nope:ind:x:1", origin="falcon"), closure(cid, origin="falcon"),
                         closure(cid, origin="falcon")])
        assert run_async(run_sinks([s], lambda: q.depth() == 0, 20), 60)
        assert falcon.alerts[cid]["status"] == "closed" and len(falcon.alerts[cid]["comments"]) == 1
        audit = (tmp_path / "state" / "audit" / "writeback-fb.jsonl").read_text().splitlines()
        assert [json.loads(a)["action"] for a in audit] == ["closed"]
        dead = q.list(10, dlq=True)
        assert len(dead) == 1 and "nope:ind:x:1" in dead[0].last_error
        q.close()
        monkeypatch.setenv("T_FALCON_SECRET", "wrong-secret-2")
        cfg, q, s = sink(tmp_path / "b")
        enqueue(cfg, q, [closure(cid, origin="falcon", closed="2026-03-14T00:00:00Z")])
        run_async(run_sinks([s], lambda: s.blocked, 20), 60)
        assert s.blocked and q.depth() == 1 and "wrong-secret-2" not in caplog.text
        q.close()
        with pytest.raises(ConfigError):
            sink(tmp_path / "c", 'client_secret = "x"')


def test_qradar_triage_encoding():
    from formats.writeback import QradarOptions, qradar_triage
    on = QradarOptions(triage_notes=True)
    f = {"kind": "offense", "id": "1201", "dedup_key": "qradar:1201",
         "triage": {"mode": "auto", "score": 88, "owner": "dba_team", "explanation": "score 88 = ...",
                    "suggested": {"severity": "critical", "owner": "dba_team", "owner_rule": "crown jewel"}}}
    w = qradar_triage(f, on)
    assert w == {"op": "triage", "id": 1201, "note": "Relay triage: score 88 = ...", "assigned_to": "dba_team",
                 "mode": "auto", "key": "qradar:1201|triage",
                 "reason": "triage mode auto: score 88, severity critical, owner dba_team (crown jewel)"}
    f["triage"]["mode"] = "assist"
    assert qradar_triage(f, on)["assigned_to"] is None                      # assist: a note only
    f["triage"]["mode"] = "auto"
    assert qradar_triage(f, QradarOptions(triage_notes=True, triage_assign=False))["assigned_to"] is None
    with pytest.raises(WritebackError, match="off"):
        qradar_triage(f, QradarOptions())                                    # off by default
    for bad in ({**f, "triage": {"mode": "suggest"}}, {**f, "triage": None}, {**f, "dedup_key": "falcon:x"}):
        with pytest.raises(WritebackError):
            qradar_triage(bad, on)


def test_mirror_speaks_xsoar8(tmp_path, env):
    """auth_id: the XSOAR 8 key ID and the /xsoar/public/v1 paths (the xsoar sink's auth)."""
    with XsoarEmulator(api_key=XSOAR_KEY, auth_id="7") as xs:
        ids = made(xs, ["rhythmx:INC-8"])
        xs.close_incident(ids["rhythmx:INC-8"], reason="Resolved")
        xs.accept = ("8",)                        # from now on XSOAR 6 paths and auth answer 404
        pipe = Catch()

        async def main():
            async with mirroring(tmp_path, xs, pipe, auth_id="7") as src:
                await until(lambda: len(pipe.events) >= 1, what="the closure over XSOAR 8")
                return src
        run(main())
        assert [e.fields["dedup_key"] for e in pipe.events] == ["rhythmx:INC-8"]
        assert xs.stats["http_404"] == 0


# ----------------------------------------------------------------------------- assignments

def assignment(inc_id, owner="bob", origin="qradar", modified="2026-03-13T06:00:00.000Z"):
    return {"kind": "assignment", "origin": origin, "vendor": "IBM", "id": inc_id, "dedup_key": f"{origin}:{inc_id}",
            "user": owner, "extra": {"xsoar_id": "12", "owner": owner, "modified": modified}}


def test_assignment_encodings_map_owners():
    from formats.writeback import FalconOptions, QradarOptions, falcon_assign, qradar_assign
    opts = QradarOptions(owners=(("Bob@Acme.com", "bob.q"),))
    w = qradar_assign(assignment("1201", owner="bob@acme.com"), opts)
    assert w == {"op": "assign", "id": 1201, "assigned_to": "bob.q",
                 "reason": "assigned to bob@acme.com in XSOAR (incident 12)",
                 "key": "qradar:1201|xsoar:12|assigned:2026-03-13T06:00:00.000Z"}
    assert qradar_assign(assignment("7", owner="dave"), opts)["assigned_to"] == "dave"          # unmapped: as is
    assert qradar_assign(assignment("7", modified="2026-03-14T00:00:00Z"))["key"] != w["key"]  # a later change
    f = falcon_assign(assignment("cid:ind:a:1", owner="carol", origin="falcon"),
                      FalconOptions(owners=(("carol", "carol.smith@acme.com"),)))
    assert f["body"] == {"composite_ids": ["cid:ind:a:1"],
                         "action_parameters": [{"name": "assign_to_name", "value": "carol.smith@acme.com"}]}
    assert (f["op"], f["assigned_to"]) == ("assign", "carol.smith@acme.com")
    for bad, fn in ((assignment("x1"), qradar_assign), (assignment("7", origin="falcon"), qradar_assign),
                    (assignment("7", owner=""), qradar_assign), (closure("7", origin="qradar"), qradar_assign),
                    (assignment("", origin="falcon"), falcon_assign), (assignment("c1"), falcon_assign)):
        with pytest.raises(WritebackError):
            fn(bad)


def test_qradar_sink_assigns_once_and_leaves_closed_and_assigned_offenses(tmp_path, env, monkeypatch):
    from tests.emulators.qradar import QradarEmulator
    monkeypatch.setenv("T_QR_SEC", QR_SEC)
    with QradarEmulator(token=QR_SEC) as qr:
        a, b, c = (o["id"] for o in qr.add_offenses(3))
        qr.update_offense(b, assigned_to="carol")
        qr.close_offense(c)
        cfg, q, sink = qr_sink(tmp_path, qr, '[sinks.qback.owners]\n"bob@acme.com" = "bob.q"')
        enqueue(cfg, q, [assignment(str(a), owner="Bob@acme.com"), assignment(str(b), owner="carol"),
                         assignment(str(c)), assignment(str(a), owner="Bob@acme.com"),
                         closure(str(a), reason="Resolved", origin="qradar")])
        qr.fail(503, count=1, op="update")                     # the first assign is retried
        assert run_async(run_sinks([sink], lambda: q.depth() == 0, 20), 60)
        assert qr.offenses[a]["assigned_to"] == "bob.q" and qr.offenses[a]["status"] == "CLOSED"
        assert qr.offenses[b]["assigned_to"] == "carol" and qr.offenses[c]["assigned_to"] is None
        assert [w["id"] for w in qr.writes if w.get("assigned_to")] == [a]
        reg = sink.registry
        got = {x: reg.counter("relay_writeback_total", sink="qback", action=x).value
               for x in ("assigned", "assign_present", "assign_skipped", "duplicate", "closed")}
        assert got == {"assigned": 1, "assign_present": 1, "assign_skipped": 1, "duplicate": 1, "closed": 1}, got
        audit = [json.loads(x) for x in (tmp_path / "state" / "audit" / "writeback-qback.jsonl").read_text()
                 .splitlines()]
        assigned = [x for x in audit if x["op"] == "assign"]
        assert sorted((x["id"], x["action"]) for x in assigned) == sorted([(a, "assigned"), (b, "none"), (c, "none")])
        assert any("closed" in x["reason"] for x in assigned if x["id"] == c)
        assert q.list(10, dlq=True) == []
        q.close()


def test_falcon_sink_assigns_once_and_leaves_closed_alerts(tmp_path, env, monkeypatch):
    from tests.emulators.falcon import FalconEmulator
    monkeypatch.setenv("T_FALCON_SECRET", "right-secret-1")
    with FalconEmulator(client_secret="right-secret-1") as falcon:
        one, two = (falcon.add_alert()["composite_id"] for _ in range(2))
        falcon.alerts[two]["status"] = "closed"
        cfg = loads(f"""
[relay]
state_dir = "{tmp_path / 'state'}"
[sinks.fb]
type = "falcon_api"
url = "{falcon.url}"
client_id = "test-client"
client_secret_env = "T_FALCON_SECRET"
[sinks.fb.owners]
"carol" = "carol.smith@acme.com"
[routes.all]
match = 'kind == "assignment"'
sinks = ["fb"]
""", file="test.toml", base_dir=tmp_path).sinks["fb"]
        q = make_queue(tmp_path / "state" / "queue-fb.db")
        s = make_sink(cfg, q, registry=Registry(), auth_recheck=0.3)
        enqueue(cfg, q, [assignment(one, owner="carol", origin="falcon"), assignment(two, owner="carol", origin="falcon"),
                         assignment(one, owner="carol", origin="falcon"),
                         assignment(one, owner="carol", origin="falcon", modified="2026-03-14T00:00:00Z")])
        assert run_async(run_sinks([s], lambda: q.depth() == 0, 20), 60)
        assert falcon.alerts[one]["assigned_to_name"] == "carol.smith@acme.com"
        assert falcon.alerts[two].get("assigned_to_name") in (None, "")
        got = {x: s.registry.counter("relay_writeback_total", sink="fb", action=x).value
               for x in ("assigned", "assign_present", "assign_skipped", "duplicate")}
        # the same change twice is one write; a later change to the same owner finds it assigned
        assert got == {"assigned": 1, "assign_present": 1, "assign_skipped": 1, "duplicate": 1}, got
        assert q.list(10, dlq=True) == []
        q.close()

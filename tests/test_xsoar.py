"""XSOAR sinks (relay/sinks/xsoar.py) against the XSOAR emulator (tests/emulators/xsoar.py),
all on 127.0.0.1: configuration and secrets, auth header variants (v6, v8 standard/advanced),
search-before-create, the persistent FIFO dedup store, classification of every answer,
create/sync/close behaviour and the Generic Webhook sink.  Every test ends by itself
(hard asyncio timeouts; the emulator is closed in ``finally``/fixtures)."""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from parsers import detect
from parsers.normalise import normalise
from relay.config import ConfigError, loads
from relay.metrics import Registry
from relay import kinds
from relay.queue import DiskQueue
from relay.sinks import AuthError, PermanentError, RetryableError, make_sink
from relay.sinks.xsoar import (DedupRecord, DedupStore, Secret, XsoarSink, XsoarWebhookSink, auth_headers,
                               classify, search_query, store_path)
from tests.emulators.xsoar import XsoarEmulator
from tests.harness import counts, make_queue, run_async, run_sinks, sigma_line

HOST = "127.0.0.1"
KEY = "k3y-S3CRET-0123456789abcdef"
ENV = "RELAY_TEST_XSOAR_KEY"
FIELD = "relaydedupkey"
HARD_TIMEOUT = 30.0


# --------------------------------------------------------------------------- helpers
def sink_config(tmp_path: Path, body: str, typ: str = "xsoar", name: str = "xs"):
    text = f"""
[relay]
state_dir = "{tmp_path / 'state'}"
[sinks.{name}]
type = "{typ}"
{body}
[routes.all]
match = 'format exists'
sinks = ["{name}"]
"""
    return loads(text, file="test.toml", base_dir=tmp_path).sinks[name]


def queue_for(tmp_path: Path, name: str = "xs") -> DiskQueue:
    """The sink's queue where the relay keeps it: <state_dir>/queue-<name>.db."""
    return make_queue(tmp_path / "state" / f"queue-{name}.db")


def enqueue(q: DiskQueue, cfg, lines: list[bytes]) -> None:
    render = kinds.sink(cfg.type).renderer(cfg)
    rows = []
    for line in lines:
        ev = detect.parse(line, lenient=False, received=time.time(), peer=HOST, source="t")
        normalise(ev)
        f = ev.fields
        meta = {"source": "t", "routes": ["all"], "received": time.time(), "dedup_key": f["dedup_key"],
                "event": f.get("event"), "status": f.get("status")}
        rows.append((render(ev, ["all"]), meta))
    q.put_many(rows)


def run_sink(sink, until, timeout: float = 15.0) -> bool:
    return run_async(run_sinks([sink], until, timeout), HARD_TIMEOUT)


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv(ENV, KEY)
    return ENV


@pytest.fixture
def emu(make_xsoar):
    return make_xsoar(api_key=KEY, auth_id="7")


def rest_sink(tmp_path, emu, extra: str = "", *, name: str = "xs", registry=None, timeout: float = 2.0, **kw):
    cfg = sink_config(tmp_path, f'url = "{emu.url}"\napi_key_env = "{ENV}"\ntimeout = {timeout}\n{extra}', name=name)
    q = queue_for(tmp_path, name)
    reg = registry if registry is not None else Registry()
    return cfg, q, make_sink(cfg, q, registry=reg, auth_recheck=0.3, **kw), reg


# --------------------------------------------------------------------------- configuration
def test_config_v6_defaults(tmp_path, key_env):
    cfg = sink_config(tmp_path, f'url = "https://xsoar.example.com/"\napi_key_env = "{ENV}"')
    s = cfg.options["xsoar"]
    assert s.url == "https://xsoar.example.com" and s.api_prefix == "" and s.version == "6"
    assert s.api_key.reveal() == KEY and s.mode == "create" and not s.close_on_source_close
    assert s.concurrency == 4 and s.dedup_store_size == 100_000 and s.dedup_field == FIELD
    o = cfg.options["xsoar_options"]
    assert o.dedup_field == FIELD and o.incident_type == "Unclassified"
    assert KEY not in repr(cfg) and KEY not in str(cfg.options)


def test_config_v8_prefix_and_override(tmp_path, key_env):
    cfg = sink_config(tmp_path, f'url = "https://api-x.example.com"\napi_key_env = "{ENV}"\nauth_id = 42')
    s = cfg.options["xsoar"]
    assert s.auth_id == "42" and s.api_prefix == "/xsoar/public/v1" and s.version == "8"
    cfg = sink_config(tmp_path, f'url = "https://api-x.example.com"\napi_key_env = "{ENV}"\nauth_id = "42"\n'
                                f'api_prefix = "/xsoar/"\nkey_type = "advanced"\nmode = "sync"\n'
                                f'close_on_source_close = true\nincident_type = "RhythmX"\n'
                                f'[sinks.xs.severity_thresholds]\ncritical = 90\n[sinks.xs.custom_fields]\n'
                                f'rxactor = "extra.actor"')
    s = cfg.options["xsoar"]
    assert s.api_prefix == "/xsoar" and s.key_type == "advanced" and s.mode == "sync" and s.close_on_source_close
    o = cfg.options["xsoar_options"]
    assert o.incident_type == "RhythmX" and o.thresholds[0] == (90, 4) and o.custom_fields == {"rxactor": "extra.actor"}


def test_config_key_file(tmp_path):
    (tmp_path / "key").write_text(KEY + "\n")
    cfg = sink_config(tmp_path, 'url = "https://x.example.com"\napi_key_file = "key"')
    assert cfg.options["xsoar"].api_key.reveal() == KEY
    assert cfg.options["xsoar"].api_key == Secret(KEY, str(tmp_path / "key"))


@pytest.mark.parametrize("body,where,words", [
    ('url = "https://x"', "sinks.xs.api_key_env", ["is required", "environment variable"]),
    ('url = "https://x"\napi_key_env = "RELAY_TEST_UNSET_VAR"', "sinks.xs.api_key_env",
     ["RELAY_TEST_UNSET_VAR is not set"]),
    ('url = "https://x"\napi_key = "literal"', "sinks.xs.api_key", ["never written in the config"]),
    ('url = "https://x"\napi_key_file = "nope"', "sinks.xs.api_key_file", ["cannot read"]),
    (f'url = "https://x"\napi_key_env = "{ENV}"\napi_key_file = "k"', "sinks.xs.api_key_env", ["not both"]),
    (f'url = "https://x"\napi_key_env = "{ENV}"\nkey_type = "advanced"', "sinks.xs.key_type", ["auth_id"]),
    (f'url = "ftp://x"\napi_key_env = "{ENV}"', "sinks.xs.url", ["http(s) URL"]),
    (f'url = "https://u:p@x"\napi_key_env = "{ENV}"', "sinks.xs.url", ["credentials"]),
    (f'url = "https://x"\napi_key_env = "{ENV}"\nmode = "upsert"', "sinks.xs.mode", ["create, sync"]),
    (f'url = "https://x"\napi_key_env = "{ENV}"\ndedup_field = "Relay Key"', "sinks.xs.dedup_field",
     ["machine key"]),
    (f'url = "https://x"\napi_key_env = "{ENV}"\nconcurency = 3', "sinks.xs.concurency", ["unknown key"]),
])
def test_config_errors(tmp_path, key_env, monkeypatch, body, where, words):
    monkeypatch.delenv("RELAY_TEST_UNSET_VAR", raising=False)
    with pytest.raises(ConfigError) as ei:
        sink_config(tmp_path, body)
    msg = str(ei.value)
    assert where in msg, msg
    for w in words:
        assert w in msg, msg
    assert KEY not in msg


def test_config_empty_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, "  ")
    with pytest.raises(ConfigError, match="is empty"):
        sink_config(tmp_path, f'url = "https://x"\napi_key_env = "{ENV}"')


@pytest.mark.parametrize("body,words", [
    ('url = "https://x"\nauth_header = "Authorization"', ["auth_value_env", "is required"]),
    (f'url = "https://x"\nauth_value_env = "{ENV}"', ["auth_header", "is required"]),
    (f'url = "https://x"\nusername = "_header:Authorization"\npassword_env = "{ENV}"', ["auth_header = 'Authorization'"]),
    ('url = "https://x"\nusername = "u"', ["password_env", "is required"]),
    ('url = "https://x"\npassword = "p"', ["never written"]),
])
def test_webhook_config_errors(tmp_path, key_env, body, words):
    with pytest.raises(ConfigError) as ei:
        sink_config(tmp_path, body, typ="xsoar_webhook")
    for w in words:
        assert w in str(ei.value), str(ei.value)


def test_webhook_config(tmp_path, key_env):
    cfg = sink_config(tmp_path, f'url = "https://x/instance/execute/relay"\nauth_header = "Authorization"\n'
                                f'auth_value_env = "{ENV}"\nbatch_size = 20\nlinger = 0.5', typ="xsoar_webhook")
    s = cfg.options["xsoar"]
    assert (s.auth_header, s.auth_value.reveal(), s.batch_size, s.linger) == ("Authorization", KEY, 20, 0.5)
    assert cfg.batch_size == 20 and KEY not in repr(cfg)


# --------------------------------------------------------------------------- auth headers
def test_auth_headers_variants(tmp_path, key_env):
    v6 = sink_config(tmp_path, f'url = "https://x"\napi_key_env = "{ENV}"').options["xsoar"]
    assert auth_headers(v6) == {"Accept": "application/json", "Content-Type": "application/json",
                                "Authorization": KEY}
    v8 = sink_config(tmp_path, f'url = "https://x"\napi_key_env = "{ENV}"\nauth_id = "9"').options["xsoar"]
    h = auth_headers(v8)
    assert h["Authorization"] == KEY and h["x-xdr-auth-id"] == "9" and "x-xdr-nonce" not in h
    adv = sink_config(tmp_path, f'url = "https://x"\napi_key_env = "{ENV}"\nauth_id = "9"\n'
                                f'key_type = "advanced"').options["xsoar"]
    h1, h2 = auth_headers(adv, now=1_700_000_000.7), auth_headers(adv, now=1_700_000_000.7)
    assert h1["x-xdr-timestamp"] == "1700000000000" and len(h1["x-xdr-nonce"]) == 64
    assert h1["x-xdr-nonce"].isalnum() and h1["x-xdr-nonce"] != h2["x-xdr-nonce"]
    assert h1["Authorization"] == hashlib.sha256(
        f"{KEY}{h1['x-xdr-nonce']}{h1['x-xdr-timestamp']}".encode()).hexdigest()
    assert KEY not in json.dumps(h1)


@pytest.mark.parametrize("variant,extra", [
    ("v6", ""),
    ("v8", 'auth_id = "7"'),
    ("v8-xsoar-prefix", 'auth_id = "7"\napi_prefix = "/xsoar"'),
    ("v8-advanced", 'auth_id = "7"\nkey_type = "advanced"'),
])
def test_each_auth_variant_creates(tmp_path, key_env, emu, variant, extra):
    cfg, q, sink, reg = rest_sink(tmp_path, emu, extra)
    enqueue(q, cfg, [sigma_line("INC-1"), sigma_line("INC-2")])
    assert run_sink(sink, lambda: q.depth() == 0)
    assert counts(emu) == {"rhythmx:INC-1": 1, "rhythmx:INC-2": 1}
    want = {"v6": "6"}.get(variant, "8")
    assert {e["version"] for e in emu.log if e["op"] in ("create", "search")} == {want}
    if variant == "v8-xsoar-prefix":
        assert all(not e["path"].startswith("/public") for e in emu.log)
    q.close()


def test_v8_without_auth_id_is_rejected_and_blocks(tmp_path, key_env, emu, caplog):
    # a v8-only server: v6-style requests (no auth id, root paths) are refused
    emu.accept = ("8",)
    cfg, q, sink, reg = rest_sink(tmp_path, emu, 'api_prefix = "/xsoar/public/v1"')
    enqueue(q, cfg, [sigma_line("INC-1")])
    with caplog.at_level(logging.DEBUG):
        run_sink(sink, lambda: reg.value("relay_sink_blocked", sink="xs") == 1, timeout=5)
    assert reg.value("relay_sink_blocked", sink="xs") == 1 and q.depth() == 1 and q.dlq_depth() == 0
    assert "auth_id" in caplog.text and KEY not in caplog.text
    q.close()


# --------------------------------------------------------------------------- search before create
def test_search_before_create_finds_existing(tmp_path, key_env, emu):
    # an incident created earlier (by a previous relay run whose answer was lost)
    r = httpx.post(emu.url + "/incident", headers={"Authorization": KEY},
                   json={"name": "old", "CustomFields": {FIELD: "rhythmx:INC-1"}, "rawJSON": "{}"})
    assert r.status_code == 200
    cfg, q, sink, reg = rest_sink(tmp_path, emu)
    enqueue(q, cfg, [sigma_line("INC-1"), sigma_line("INC-2")])
    assert run_sink(sink, lambda: q.depth() == 0)
    assert counts(emu) == {"rhythmx:INC-1": 1, "rhythmx:INC-2": 1}
    assert reg.value("relay_xsoar_incidents_total", sink="xs", action="found") == 1
    assert reg.value("relay_xsoar_incidents_total", sink="xs", action="created") == 1
    # every search asked for results explicitly (XSOAR's size defaults to 0) and a miss read data: null
    assert emu.stats["searches"] == 2 and emu.stats["search_hits"] == 1
    st = DedupStore(store_path(q, "xs"))
    assert st.get("rhythmx:INC-1").incident_id == r.json()["id"]
    st.close()
    q.close()


def test_search_query_escaping():
    assert search_query(FIELD, 'a"b\\c') == 'relaydedupkey:"a\\"b\\\\c"'


def test_search_matches_exact_key_only(tmp_path, key_env, emu):
    # a fuzzy server match for another key must not be taken for ours
    httpx.post(emu.url + "/incident", headers={"Authorization": KEY},
               json={"name": "other", "CustomFields": {FIELD: "rhythmx:INC-10"}})
    cfg, q, sink, reg = rest_sink(tmp_path, emu)
    sink_obj: XsoarSink = sink

    async def probe():
        try:
            return await sink_obj.search_key("rhythmx:INC-1"), await sink_obj.search_key("rhythmx:INC-10")
        finally:
            await sink_obj.close()
    miss, hit = asyncio.run(asyncio.wait_for(probe(), 10))
    assert miss is None and hit["CustomFields"][FIELD] == "rhythmx:INC-10"
    q.close()


def test_emulator_indexed_search_equals_a_scan():
    """The emulator answers a one-clause exact search from its index; after creates, updates
    that move a field's value, webhook incidents and closes, every such search gives what a full
    scan gives (the same query with a second clause, which always scans)."""
    import random
    rnd = random.Random(7)
    em = XsoarEmulator(api_key=KEY, out=lambda s: None)
    vals = ["rhythmx:INC-%d" % i for i in range(40)] + ['q"uote\\d', "MiXed-Case", "7"]
    fields = [FIELD, "vendorid", "name", "severity", "type"]

    def search(q):
        r = em.h_search({"filter": {"query": q, "size": 1000}})
        assert r.status == 200, r.body
        return r.body["data"] or []
    for step in range(600):
        op = rnd.random()
        v = rnd.choice(vals)
        if op < 0.45 or not em._incidents:
            r = em.h_incident({"name": rnd.choice(vals), "severity": rnd.randint(0, 4),
                               "CustomFields": {FIELD: v, "vendorid": rnd.choice(vals)}})
            assert r.status == 200
        elif op < 0.7:
            inc = em._incidents[rnd.choice(list(em._incidents))]
            body = {"id": inc["id"], "version": -1, "CustomFields": {rnd.choice([FIELD, "vendorid"]): v}}
            if rnd.random() < 0.3:
                body["name"] = rnd.choice(vals)
            assert em.h_incident(body).status == 200
        elif op < 0.75:
            em.close_incident(rnd.choice(list(em._incidents)))
        else:
            fld = rnd.choice(fields)
            quoted = search_query(fld, v if rnd.random() < 0.9 else v.upper())
            got = search(quoted)
            assert got == search(quoted + ' and id:*'), (step, quoted)
            assert all(str((i.get(fld) if fld in i else i["CustomFields"].get(fld))).lower() == v.lower()
                       for i in got)
    assert em._index, "the index was never used"


def test_dropped_connection_after_create_no_duplicate(tmp_path, key_env, emu):
    emu.drop_after_processing(op="create", count=2)
    cfg, q, sink, reg = rest_sink(tmp_path, emu)
    enqueue(q, cfg, [sigma_line("INC-1"), sigma_line("INC-2"), sigma_line("INC-3")])
    assert run_sink(sink, lambda: q.depth() == 0)
    assert emu.stats["dropped"] == 2
    assert counts(emu) == {f"rhythmx:INC-{i}": 1 for i in (1, 2, 3)}
    assert reg.value("relay_xsoar_incidents_total", sink="xs", action="found") == 2
    assert reg.value("relay_send_errors_total", sink="xs", reason="connection") >= 1
    q.close()


def test_timeout_after_processing_no_duplicate(tmp_path, key_env, emu):
    emu.slow(1.5, op="create", count=1, when="after")   # answer comes after the client gave up
    cfg, q, sink, reg = rest_sink(tmp_path, emu, timeout=0.5)
    enqueue(q, cfg, [sigma_line("INC-1")])
    assert run_sink(sink, lambda: q.depth() == 0)
    assert counts(emu) == {"rhythmx:INC-1": 1}
    assert reg.value("relay_send_errors_total", sink="xs", reason="timeout") == 1
    q.close()


# --------------------------------------------------------------------------- dedup store
def test_dedup_store_fifo_cap_and_persistence(tmp_path):
    p = tmp_path / "d.db"
    st = DedupStore(p, cap=3)
    for i in range(5):
        st.put(DedupRecord(f"k{i}", str(i), 1))
    assert st.keys() == ["k2", "k3", "k4"] and len(st) == 3
    st.put(DedupRecord("k2", "2", 7, True, "d"))         # an update keeps its place, no growth
    assert st.keys() == ["k2", "k3", "k4"] and len(st) == 3
    st.close()
    st = DedupStore(p, cap=3)
    assert st.get("k2") == DedupRecord("k2", "2", 7, True, "d") and st.get("k0") is None
    st.close()
    st = DedupStore(p, cap=2)                             # a smaller cap trims at open
    assert st.keys() == ["k3", "k4"]
    st.close()


def test_dedup_store_corrupt_file_moved_aside(tmp_path, caplog):
    p = tmp_path / "d.db"
    p.write_bytes(b"this is not a database" * 100)
    with caplog.at_level(logging.ERROR):
        st = DedupStore(p, cap=10)
    st.put(DedupRecord("k", "1"))
    assert st.get("k").incident_id == "1"
    assert list(tmp_path.glob("d.db.corrupt-*")) and "moved aside" in caplog.text
    st.close()


def test_dedup_store_errors_say_disk_full(tmp_path):
    """A store whose file cannot grow (SQLite's max_page_count: the SQLITE_FULL a full disk
    gives) raises DedupStoreError saying so, reads still work, and writes work again once there
    is room."""
    from relay.dedup import DedupStoreError
    st = DedupStore(tmp_path / "d.db")
    st.put(DedupRecord("small", "1"))
    pages = st._conn.execute("PRAGMA page_count").fetchone()[0]
    st._conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(DedupStoreError) as e:
        st.put(DedupRecord("k" * 20000, "2"))          # needs new pages
    assert e.value.disk_full and "database or disk is full" in str(e.value) and str(tmp_path) in str(e.value)
    assert st.get("small").incident_id == "1" and st.get("k" * 20000) is None and len(st) == 1
    st._conn.execute("PRAGMA max_page_count = 1073741823")
    st.put(DedupRecord("k" * 20000, "2"))
    assert st.get("k" * 20000).incident_id == "2" and len(st) == 2


class _FullOnWrite:
    """A dedup store connection whose writes fail as on a full disk (SQLITE_FULL) while
    ``full`` is set; reads go through."""

    def __init__(self, conn):
        self.conn = conn
        self.full = True

    def execute(self, sql, *args):
        if self.full and sql.lstrip().upper().startswith(("INSERT", "DELETE", "UPDATE")):
            e = sqlite3.OperationalError("database or disk is full")
            e.sqlite_errorcode, e.sqlite_errorname = 13, "SQLITE_FULL"
            raise e
        return self.conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.conn, name)


def test_dedup_store_full_disk_keeps_the_batch_queued_without_attempts(tmp_path, key_env, emu, caplog):
    """The dedup store cannot record (its disk is full) after incidents were created: the batch
    stays queued (released, no attempt counted: a row must not reach the DLQ because this
    host's disk is full), the sink pauses, growing, and says so in one rate-limited line
    without a traceback (it logged a traceback per row before, as an internal error).  Once
    the store can write again every row is delivered, each incident once (the search before
    create finds the ones created meanwhile)."""
    cfg, q, sink, reg = rest_sink(tmp_path, emu)
    enqueue(q, cfg, [sigma_line(f"INC-{i}") for i in range(20)])
    proxy = sink.store._conn = _FullOnWrite(sink.store._conn)
    seen = {}

    def until() -> bool:
        if proxy.full and reg.value("relay_send_errors_total", sink="xs", reason="disk_full") >= 2:
            seen.update(depth=q.depth(), dlq=q.dlq_depth(), created=len(counts(emu)),
                        retried=reg.value("relay_retried_total", sink="xs"))
            proxy.full = False                          # room again
        return not proxy.full and q.depth() == 0

    t0 = time.monotonic()
    with caplog.at_level(logging.INFO):
        assert run_sink(sink, until)
    took = time.monotonic() - t0
    assert seen["depth"] == 20 and seen["dlq"] == 0 and seen["created"] >= 1 and seen["retried"] == 0, seen
    lines = [r.getMessage() for r in caplog.records if "dedup store" in r.getMessage()]
    # one line per 10 s (LogLimiter), whatever the number of rows and batches that failed
    assert 1 <= len(lines) <= 1 + int(took // 10) and "database or disk is full" in lines[0], lines
    assert "stays queued" in lines[0]
    assert "unexpected error" not in caplog.text and "Traceback" not in caplog.text
    assert counts(emu) == {f"rhythmx:INC-{i}": 1 for i in range(20)}
    assert q.dlq_depth() == 0 and reg.value("relay_retried_total", sink="xs") == 0
    assert reg.value("relay_dead_lettered_total", sink="xs") == 0
    q.close()


def test_dedup_store_survives_restart_without_search(tmp_path, key_env, emu):
    cfg, q, sink, reg = rest_sink(tmp_path, emu)
    enqueue(q, cfg, [sigma_line(f"INC-{i}") for i in range(5)])
    assert run_sink(sink, lambda: q.depth() == 0)
    q.close()
    searches = emu.stats["searches"]
    # a new sink over the same state dir; searches would now fail: the store answers alone
    emu.fail(500, op="search")
    cfg, q, sink, reg = rest_sink(tmp_path, emu)
    enqueue(q, cfg, [sigma_line(f"INC-{i}") for i in range(5)])
    assert run_sink(sink, lambda: q.depth() == 0)
    assert counts(emu) == {f"rhythmx:INC-{i}": 1 for i in range(5)}
    assert emu.stats["searches"] == searches and emu.stats["http_500"] == 0
    assert reg.value("relay_xsoar_incidents_total", sink="xs", action="dedup_hit") == 5
    assert reg.value("relay_xsoar_incidents_total", sink="xs", action="skipped") == 5
    q.close()


def test_dedup_store_cap_evicted_key_found_by_search(tmp_path, key_env, emu):
    # concurrency 1: incidents enter the FIFO store in order, so INC-0 is the one evicted
    cfg, q, sink, reg = rest_sink(tmp_path, emu, "dedup_store_size = 2\nconcurrency = 1")
    enqueue(q, cfg, [sigma_line(f"INC-{i}") for i in range(4)])
    assert run_sink(sink, lambda: q.depth() == 0)
    enqueue(q, cfg, [sigma_line("INC-0")])                    # evicted from the store
    assert run_sink(sink, lambda: q.depth() == 0)
    assert counts(emu) == {f"rhythmx:INC-{i}": 1 for i in range(4)}
    assert reg.value("relay_xsoar_incidents_total", sink="xs", action="found") == 1
    q.close()


# --------------------------------------------------------------------------- classification
def _resp(status: int, body: str = "{}", headers: dict | None = None) -> httpx.Response:
    return httpx.Response(status, content=body.encode(), headers=headers or {},
                          request=httpx.Request("POST", "http://127.0.0.1/incident"))


@pytest.mark.parametrize("status,kind,reason", [
    (200, None, None), (201, None, None),
    (401, AuthError, "auth"), (403, AuthError, "auth"),
    (429, RetryableError, "throttled"),
    (408, RetryableError, "server_error"), (500, RetryableError, "server_error"),
    (502, RetryableError, "server_error"), (503, RetryableError, "server_error"),
    (504, RetryableError, "server_error"),
    (400, PermanentError, "rejected"), (404, PermanentError, "rejected"), (422, PermanentError, "rejected"),
    (302, PermanentError, "rejected"),
])
def test_classify_status(status, kind, reason):
    err = classify(_resp(status, '{"error":"bad field x"}'), "create (POST /incident)")
    if kind is None:
        assert err is None
        return
    assert type(err) is kind and err.reason == reason
    if kind is PermanentError and status != 302:
        assert f"HTTP {status}" in str(err) and "bad field x" in str(err)


def test_classify_retry_after_seconds_and_date():
    err = classify(_resp(429, headers={"Retry-After": "7"}), "x")
    assert err.retry_after == 7.0
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    err = classify(_resp(503, headers={"Retry-After": date}), "x")
    assert 25 <= err.retry_after <= 31
    assert classify(_resp(429, headers={"Retry-After": "soon"}), "x").retry_after is None
    assert classify(_resp(429, headers={"Retry-After": "999999"}), "x").retry_after == 3600.0


def test_classify_excerpt_is_bounded():
    err = classify(_resp(400, "x" * 5000), "create")
    assert len(str(err)) < 500


def test_server_error_storm_then_recovery(tmp_path, key_env, emu):
    emu.fail(502, count=6)
    cfg, q, sink, reg = rest_sink(tmp_path, emu)
    enqueue(q, cfg, [sigma_line(f"INC-{i}") for i in range(10)])
    assert run_sink(sink, lambda: q.depth() == 0, timeout=20)
    assert counts(emu) == {f"rhythmx:INC-{i}": 1 for i in range(10)}
    assert reg.value("relay_send_errors_total", sink="xs", reason="server_error") >= 1
    assert reg.value("relay_retried_total", sink="xs") >= 1 and q.dlq_depth() == 0
    assert emu.stats["http_502"] == 6
    q.close()


def test_429_retry_after_honoured(tmp_path, key_env, emu):
    emu.fail(429, count=1, retry_after=1, op="search")
    cfg, q, sink, reg = rest_sink(tmp_path, emu)
    enqueue(q, cfg, [sigma_line("INC-1")])
    t0 = time.monotonic()
    assert run_sink(sink, lambda: q.depth() == 0)
    assert time.monotonic() - t0 >= 0.95
    assert counts(emu) == {"rhythmx:INC-1": 1}
    assert reg.value("relay_send_errors_total", sink="xs", reason="throttled") == 1
    q.close()


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failure_blocks_keeps_everything(tmp_path, key_env, emu, caplog, status):
    emu.fail(status)
    cfg, q, sink, reg = rest_sink(tmp_path, emu)
    enqueue(q, cfg, [sigma_line(f"INC-{i}") for i in range(5)])
    with caplog.at_level(logging.DEBUG):
        run_sink(sink, lambda: False, timeout=1.0)
    assert reg.value("relay_sink_blocked", sink="xs") == 1
    assert q.depth() == 5 and q.dlq_depth() == 0 and emu.incidents() == []
    assert reg.value("relay_send_errors_total", sink="xs", reason="auth") >= 1
    assert reg.value("relay_retried_total", sink="xs") == 0
    alerts = [r.getMessage() for r in caplog.records if "ALERT" in r.getMessage()]
    assert alerts and f"HTTP {status}" in alerts[0]
    assert KEY not in caplog.text
    # the key is fixed on the XSOAR side: the probe goes through and everything is delivered
    emu.clear_faults()
    cfg, q2, sink, reg = rest_sink(tmp_path, emu)
    q.close()
    assert run_sink(sink, lambda: q2.depth() == 0)
    assert counts(emu) == {f"rhythmx:INC-{i}": 1 for i in range(5)}
    q2.close()


def test_auth_failure_with_store_hits_stays_blocked(tmp_path, key_env, emu, caplog):
    """A probe batch mixing a dedup-store hit (no request) and a 403 must not 'unblock'."""
    cfg, q, sink, reg = rest_sink(tmp_path, emu)
    enqueue(q, cfg, [sigma_line("INC-1")])
    assert run_sink(sink, lambda: q.depth() == 0)
    emu.fail(403)
    enqueue(q, cfg, [sigma_line("INC-1"), sigma_line("INC-2")])
    with caplog.at_level(logging.INFO):
        run_sink(sink, lambda: False, timeout=1.0)    # auth_recheck 0.3 s: several probes
    assert reg.value("relay_sink_blocked", sink="xs") == 1 and q.depth() == 2
    assert "accepted again" not in caplog.text
    assert reg.value("relay_sent_total", sink="xs") == 1
    q.close()


def test_wrong_key_v6_403_csrf(tmp_path, monkeypatch, emu, caplog):
    monkeypatch.setenv(ENV, "wrong-key-value-123")
    cfg, q, sink, reg = rest_sink(tmp_path, emu)
    enqueue(q, cfg, [sigma_line("INC-1")])
    with caplog.at_level(logging.DEBUG):
        run_sink(sink, lambda: reg.value("relay_sink_blocked", sink="xs") == 1, timeout=5)
    assert reg.value("relay_sink_blocked", sink="xs") == 1 and q.depth() == 1
    assert "HTTP 403" in caplog.text and "wrong-key-value-123" not in caplog.text
    assert emu.stats["http_403"] >= 1
    q.close()


def test_rejected_incident_dead_lettered_with_status(tmp_path, key_env, emu):
    emu.known_custom_fields = {FIELD}
    emu.custom_fields_policy = "error"                   # riskscore etc. are unknown fields
    cfg, q, sink, reg = rest_sink(tmp_path, emu)
    enqueue(q, cfg, [sigma_line("INC-1")])
    assert run_sink(sink, lambda: q.dlq_depth() == 1)
    dead = q.list(dlq=True)[0]
    assert "HTTP 400" in dead.reason and "unknown incident field" in dead.reason
    assert KEY not in dead.reason
    assert reg.value("relay_dead_lettered_total", sink="xs") == 1 and q.depth() == 0
    q.close()


def test_connection_refused_counts_no_attempt(tmp_path, key_env, caplog):
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    cfg = sink_config(tmp_path, f'url = "http://{HOST}:{port}"\napi_key_env = "{ENV}"\nconnect_timeout = 0.5')
    q = queue_for(tmp_path)
    reg = Registry()
    sink = make_sink(cfg, q, registry=reg)
    enqueue(q, cfg, [sigma_line("INC-1"), sigma_line("INC-2")])
    with caplog.at_level(logging.WARNING):
        run_sink(sink, lambda: False, timeout=1.0)
    assert q.depth() == 2 and q.dlq_depth() == 0
    assert "XSOAR unreachable" in caplog.text and KEY not in caplog.text
    assert reg.value("relay_retried_total", sink="xs") == 0
    assert reg.value("relay_send_errors_total", sink="xs", reason="connect") >= 1
    assert all(it.attempts == 0 for it in q.list())
    q.close()


def test_untried_rows_released_not_retried(tmp_path, key_env, emu):
    """A 503 on the first request gives the rest of the batch back without burning attempts."""
    emu.fail(503, count=1, retry_after=0.2)
    cfg, q, sink, reg = rest_sink(tmp_path, emu, "concurrency = 1")
    enqueue(q, cfg, [sigma_line(f"INC-{i}") for i in range(6)])
    assert run_sink(sink, lambda: q.depth() == 0)
    assert reg.value("relay_retried_total", sink="xs") == 1
    assert counts(emu) == {f"rhythmx:INC-{i}": 1 for i in range(6)}
    q.close()


# --------------------------------------------------------------------------- modes
def test_create_mode_skips_updates(tmp_path, key_env, emu):
    cfg, q, sink, reg = rest_sink(tmp_path, emu)
    enqueue(q, cfg, [sigma_line("INC-1"), sigma_line("INC-1", 90, msgid="updated", status="IN_PROGRESS"),
                     sigma_line("INC-1", 90, msgid="closed", status="CLOSED")])
    assert run_sink(sink, lambda: q.depth() == 0)
    [inc] = emu.incidents()
    assert inc["version"] == 1 and inc["status"] != 2 and inc["CustomFields"]["riskscore"] == "82"
    assert reg.value("relay_xsoar_incidents_total", sink="xs", action="skipped") == 2
    assert emu.stats["updated"] == 0 and emu.stats["closed"] == 0
    q.close()


@pytest.mark.parametrize("endpoint", ["batchClose", "close"])
def test_sync_mode_updates_and_closes(tmp_path, key_env, emu, endpoint):
    emu.conflict_next(1)     # an analyst edits the incident between our read and our update
    cfg, q, sink, reg = rest_sink(tmp_path, emu, f'mode = "sync"\nclose_on_source_close = true\n'
                                                 f'close_endpoint = "{endpoint}"\nclose_reason = "Resolved"')
    enqueue(q, cfg, [sigma_line("INC-1"), sigma_line("INC-1", 90, msgid="updated", status="IN_PROGRESS"),
                     sigma_line("INC-1", 90, msgid="updated", status="IN_PROGRESS"),  # re-sent: unchanged, skipped
                     sigma_line("INC-1", 95, msgid="closed", status="CLOSED"), sigma_line("INC-2")])
    assert run_sink(sink, lambda: q.depth() == 0)
    assert counts(emu) == {"rhythmx:INC-1": 1, "rhythmx:INC-2": 1}
    inc = emu.by_field(FIELD)["rhythmx:INC-1"][0]
    assert inc["status"] == 2 and inc["closeReason"] == "Resolved"
    assert inc["CustomFields"]["riskscore"] == "95" and inc["CustomFields"]["sourcestatus"] == "closed"
    assert emu.stats["conflicts"] == 1
    assert reg.value("relay_xsoar_incidents_total", sink="xs", action="version_conflicts") == 1
    assert reg.value("relay_xsoar_incidents_total", sink="xs", action="unchanged") == 1
    assert reg.value("relay_xsoar_incidents_total", sink="xs", action="updated") == 2
    assert reg.value("relay_xsoar_incidents_total", sink="xs", action="closed") == 1
    assert q.dlq_depth() == 0
    q.close()


def test_close_in_create_mode_and_idempotent_close(tmp_path, key_env, emu):
    cfg, q, sink, reg = rest_sink(tmp_path, emu, "close_on_source_close = true")
    enqueue(q, cfg, [sigma_line("INC-1"), sigma_line("INC-1", 90, msgid="closed", status="CLOSED"), sigma_line("INC-1", 90, msgid="closed", status="CLOSED")])
    assert run_sink(sink, lambda: q.depth() == 0)
    [inc] = emu.incidents()
    assert inc["status"] == 2 and emu.stats["closed"] == 1
    assert sum(1 for e in emu.log if e["op"] == "close") == 1
    q.close()


def test_persistent_conflict_is_retried_not_lost(tmp_path, key_env, emu):
    cfg, q, sink, reg = rest_sink(tmp_path, emu, 'mode = "sync"')
    enqueue(q, cfg, [sigma_line("INC-1")])
    assert run_sink(sink, lambda: q.depth() == 0)
    emu.conflict_next(4)                                  # 4 conflicts in a row: give up this round
    enqueue(q, cfg, [sigma_line("INC-1", 91, msgid="updated", status="IN_PROGRESS")])
    assert run_sink(sink, lambda: q.depth() == 0)
    inc = emu.incidents()[0]
    assert inc["CustomFields"]["riskscore"] == "91" and q.dlq_depth() == 0
    assert reg.value("relay_send_errors_total", sink="xs", reason="conflict") == 1
    q.close()


def test_incident_body_is_what_xsoar_accepts(tmp_path, key_env, emu):
    cfg, q, sink, reg = rest_sink(tmp_path, emu)
    enqueue(q, cfg, [sigma_line("INC-7", 88)])
    assert run_sink(sink, lambda: q.depth() == 0)
    [inc] = emu.incidents()
    assert isinstance(inc["rawJSON"], str) and json.loads(inc["rawJSON"])["incident_id"] == "INC-7"
    assert inc["severity"] == 4 and inc["status"] == 1 and inc["CustomFields"][FIELD] == "rhythmx:INC-7"
    assert {"type": "Instance", "value": "relay"} in inc["labels"]


# --------------------------------------------------------------------------- secrets
def test_secrets_never_logged(tmp_path, key_env, emu, caplog):
    emu.drop_after_processing(op="create", count=1)
    emu.fail(500, count=1, op="search")
    cfg, q, sink, reg = rest_sink(tmp_path, emu, "dedup_store_size = 10")
    enqueue(q, cfg, [sigma_line("INC-1"), sigma_line("INC-2")])
    with caplog.at_level(logging.DEBUG):
        assert run_sink(sink, lambda: q.depth() == 0)
        emu.set_api_key("rotated")
        enqueue(q, cfg, [sigma_line("INC-3")])
        run_sink(sink, lambda: reg.value("relay_sink_blocked", sink="xs") == 1, timeout=5)
    assert reg.value("relay_sink_blocked", sink="xs") == 1
    text = caplog.text + repr(cfg) + repr(sink.settings) + "".join(str(i.last_error) for i in q.list())
    assert KEY not in text and "Secret(<redacted>" in repr(sink.settings)
    with pytest.raises(TypeError):
        import pickle
        pickle.dumps(sink.settings.api_key)
    q.close()


# --------------------------------------------------------------------------- webhook
def webhook_sink(tmp_path, emu, extra: str, name: str = "wh"):
    cfg = sink_config(tmp_path, f'url = "{emu.url}/instance/execute/relay"\ntimeout = 2.0\n{extra}',
                      typ="xsoar_webhook", name=name)
    q = queue_for(tmp_path, name)
    reg = Registry()
    return cfg, q, make_sink(cfg, q, registry=reg, auth_recheck=0.3), reg


def test_webhook_header_auth_batches_and_dedup(tmp_path, key_env):
    with XsoarEmulator(webhook_auth=("_header:Authorization", KEY)) as emu:
        cfg, q, sink, reg = webhook_sink(tmp_path, emu, f'auth_header = "Authorization"\nauth_value_env = "{ENV}"\n'
                                                        f'batch_size = 10\nlinger = 0')
        assert isinstance(sink, XsoarWebhookSink)
        enqueue(q, cfg, [sigma_line(f"INC-{i}") for i in range(10)] + [sigma_line("INC-1")])
        assert run_sink(sink, lambda: q.depth() == 0)
        assert counts(emu, "rawJSON:relay.dedup_key") == {f"rhythmx:INC-{i}": 1 for i in range(10)}
        posts = [e for e in emu.log if e["op"] == "webhook"]
        assert len(posts) == 1        # 10 in one array; the duplicate (next batch) is skipped by the store
        enqueue(q, cfg, [sigma_line(f"INC-{i}") for i in range(10)])   # re-sent: the store skips them all
        assert run_sink(sink, lambda: q.depth() == 0)
        assert counts(emu, "rawJSON:relay.dedup_key") == {f"rhythmx:INC-{i}": 1 for i in range(10)}
        assert reg.value("relay_xsoar_incidents_total", sink="wh", action="skipped") >= 10
        inc = emu.incidents()[0]
        assert "Authorization" not in json.loads(inc["rawJSON"])["headers"]   # the secret header is not kept
        q.close()


def test_webhook_batch_is_one_array(tmp_path):
    with XsoarEmulator() as emu:
        cfg, q, sink, reg = webhook_sink(tmp_path, emu, "batch_size = 10\nlinger = 0")
        enqueue(q, cfg, [sigma_line(f"INC-{i}") for i in range(10)])
        assert run_sink(sink, lambda: q.depth() == 0)
        posts = [e for e in emu.log if e["op"] == "webhook"]
        assert len(posts) == 1 and "10 item(s)" in posts[0]["note"]
        q.close()


def test_webhook_single_object_and_basic_auth(tmp_path, key_env):
    got = []
    with XsoarEmulator(webhook_auth=("relay", KEY)) as emu:
        orig = emu.webhook

        def spy(headers, raw):
            got.append(raw)
            return orig(headers, raw)
        emu.webhook = spy
        cfg, q, sink, reg = webhook_sink(tmp_path, emu, f'username = "relay"\npassword_env = "{ENV}"\nbatch_size = 1')
        enqueue(q, cfg, [sigma_line("INC-1"), sigma_line("INC-2")])
        assert run_sink(sink, lambda: q.depth() == 0)
        assert counts(emu, "rawJSON:relay.dedup_key") == {"rhythmx:INC-1": 1, "rhythmx:INC-2": 1}
        assert all(json.loads(b)["name"] for b in got) and all(isinstance(json.loads(b), dict) for b in got)
        q.close()


def test_webhook_linger_fills_batches(tmp_path):
    with XsoarEmulator() as emu:
        cfg, q, sink, reg = webhook_sink(tmp_path, emu, "batch_size = 50\nlinger = 0.6")

        async def main():
            stop = asyncio.Event()
            task = asyncio.create_task(sink.run(stop))
            for i in range(5):
                enqueue(q, cfg, [sigma_line(f"INC-{i}")])
                sink.notify()
                await asyncio.sleep(0.05)
            while q.depth() and not task.done():
                await asyncio.sleep(0.02)
            stop.set()
            await asyncio.wait_for(task, 10)
        asyncio.run(asyncio.wait_for(main(), HARD_TIMEOUT))
        posts = [e for e in emu.log if e["op"] == "webhook"]
        assert len(posts) == 1 and "5 item(s)" in posts[0]["note"]
        assert reg.value("relay_sent_total", sink="wh") == 5 and q.depth() == 0
        q.close()


def test_webhook_401_blocks_and_400_dead_letters(tmp_path, key_env, caplog):
    with XsoarEmulator(webhook_auth=("_header:X-Token", "right")) as emu:
        cfg, q, sink, reg = webhook_sink(tmp_path, emu, f'auth_header = "X-Token"\nauth_value_env = "{ENV}"\nlinger = 0')
        enqueue(q, cfg, [sigma_line("INC-1")])
        with caplog.at_level(logging.DEBUG):
            run_sink(sink, lambda: reg.value("relay_sink_blocked", sink="wh") == 1, timeout=5)
        assert reg.value("relay_sink_blocked", sink="wh") == 1 and q.depth() == 1
        assert "Authorization failed." in caplog.text and KEY not in caplog.text
        emu.webhook_auth = ("_header:X-Token", KEY)
        emu.fail(400, count=1, op="webhook", body="Request, and rawJson field if exists must be in JSON format")
        cfg, q2, sink, reg = webhook_sink(tmp_path, emu, f'auth_header = "X-Token"\nauth_value_env = "{ENV}"\nlinger = 0')
        q.close()
        assert run_sink(sink, lambda: q2.dlq_depth() == 1)
        assert "HTTP 400" in q2.list(dlq=True)[0].reason
        q2.close()


def test_webhook_503_then_recovers_no_duplicates(tmp_path):
    with XsoarEmulator() as emu:
        # by count, not for a time: a slow host may spend a fixed window before the first send
        emu.fail(503, count=3, op="webhook")
        cfg, q, sink, reg = webhook_sink(tmp_path, emu, "batch_size = 4\nlinger = 0")
        enqueue(q, cfg, [sigma_line(f"INC-{i}") for i in range(10)])
        assert run_sink(sink, lambda: q.depth() == 0)
        assert counts(emu, "rawJSON:relay.dedup_key") == {f"rhythmx:INC-{i}": 1 for i in range(10)}
        assert emu.stats["http_503"] == 3
        q.close()


def test_webhook_dedup_store_full_disk(tmp_path, caplog):
    """The webhook sink with its dedup store on a full disk: a batch whose keys cannot be
    looked up stays queued (released, no attempt); a batch posted whose keys cannot be
    recorded is acked, not posted twice, and the line says those keys may come back as
    duplicates.  Nothing is lost, nothing is dead-lettered."""
    with XsoarEmulator() as emu:
        cfg, q, sink, reg = webhook_sink(tmp_path, emu, "batch_size = 5\nlinger = 0")
        enqueue(q, cfg, [sigma_line(f"INC-{i}") for i in range(10)])
        store = sink.store
        proxy = store._conn = _FullOnWrite(store._conn)
        reads = {"fail": 2}
        real_get = store.get

        def get(key):           # the first two lookups fail as on a full disk, then writes do
            if reads["fail"]:
                reads["fail"] -= 1
                from relay.dedup import DedupStoreError
                raise DedupStoreError(f"dedup store {store.path}: lookup failed: database or disk is full",
                                      disk_full=True)
            return real_get(key)
        store.get = get
        with caplog.at_level(logging.INFO):
            assert run_sink(sink, lambda: q.depth() == 0)
        assert counts(emu, "rawJSON:relay.dedup_key") == {f"rhythmx:INC-{i}": 1 for i in range(10)}
        assert reads["fail"] == 0 and proxy.full and len(store) == 0
        assert reg.value("relay_send_errors_total", sink="wh", reason="disk_full") >= 3    # 2 lookups, the writes
        assert reg.value("relay_retried_total", sink="wh") == 0 and q.dlq_depth() == 0
        text = caplog.text
        assert "the batch stays queued" in text and "records were created but their dedup keys are not recorded" in text
        assert "Traceback" not in text and "unexpected error" not in text
        q.close()


# --------------------------------------------------------------------------- the emulator itself
def test_emulator_api_shapes(key_env):
    with XsoarEmulator(api_key=KEY) as emu, httpx.Client(base_url=emu.url, headers={"Authorization": KEY}) as c:
        ok = c.post("/incident", json={"name": "a", "severity": 0.5, "rawJSON": "{}", "customFields": {FIELD: "x"}})
        assert ok.status_code == 200 and ok.json()["CustomFields"] == {FIELD: "x"}
        assert c.post("/incident", json={"name": "a", "rawJSON": {}}).status_code == 400
        assert c.post("/incident", json={"severity": 5}).status_code == 400
        assert c.post("/incident", json={"CustomFields": {"Scan IP": "1"}}).status_code == 400
        assert c.post("/incident", json={"occurred": "yesterday"}).status_code == 400
        q = {"query": f'{FIELD}:"x"'}
        assert c.post("/incidents/search", json={"filter": q}).json() == {"data": None, "total": 1}  # size 0
        assert len(c.post("/incidents/search", json={"filter": {**q, "size": 5}}).json()["data"]) == 1
        assert c.post("/incidents/search", json={"filter": {"query": f'{FIELD}:"y"', "size": 5}}).json()["data"] is None
        assert c.post("/incidents/search", json={"filter": {"query": "(a OR b", "size": 5}}).status_code == 400
        inc = ok.json()
        stale = c.post("/incident", json={"id": inc["id"], "version": 0, "name": "b"})
        assert stale.status_code == 400 and "DB version error" in stale.text
        forced = c.post("/incident", json={"id": inc["id"], "version": -1, "name": "b"})
        assert forced.status_code == 200 and forced.json()["version"] == 2
        r = c.post("/incident/batchClose", json={"ids": [inc["id"], "999"], "all": False})
        assert r.json()["notUpdated"] == 1 and r.json()["data"][0]["status"] == 2
        assert c.post("/entry", json={"investigationId": inc["id"], "data": "x"}).status_code == 412
        assert c.post("/incident", json={}, headers={"Authorization": "nope"}).json()["title"] == "Forbidden"
        assert c.post("/xsoar/public/v1/incident", json={}).status_code == 401      # no x-xdr-auth-id
        assert c.post("/xsoar/incident", json={}, headers={"x-xdr-auth-id": "7"}).status_code == 200


def test_emulator_webhook_shapes():
    with XsoarEmulator(webhook_auth=("_header:Authorization", "Bearer s"), duplication_key="dedup") as emu, \
            httpx.Client(base_url=emu.url) as c:
        r = c.post("/", json={"name": "n"})
        assert r.status_code == 401 and r.text == "Authorization failed."
        h = {"Authorization": "Bearer s"}
        assert c.post("/", content=b"{nope", headers=h).status_code == 400
        r = c.post("/instance/execute/x", json=[{"name": "a", "rawJson": {"dedup": 1}}, {"rawJson": {"dedup": 2}}],
                   headers=h)
        assert r.status_code == 200 and [i["name"] for i in r.json()] == ["a", "Generic webhook triggered incident"]
        r = c.post("/", json={"rawJson": {"dedup": 1}}, headers=h)
        assert r.status_code == 200 and r.json() is None                              # filtered duplicate


def test_emulator_faults_and_control_api():
    with XsoarEmulator(api_key="k") as emu, httpx.Client(base_url=emu.url, headers={"Authorization": "k"}) as c:
        assert c.post("/_emulator/fault", json={"kind": "status", "status": 503, "count": 2, "retry_after": 3}).json()
        r = c.post("/incident", json={})
        assert r.status_code == 503 and r.headers["Retry-After"] == "3"
        assert c.post("/incident", json={}).status_code == 503
        assert c.post("/incident", json={}).status_code == 200
        emu.drop_after_processing(count=1)
        with pytest.raises(httpx.RemoteProtocolError):
            c.post("/incident", json={"name": "dropped"})
        assert [i.get("name") for i in c.get("/_emulator/incidents").json()][-1] == "dropped"   # it was processed
        emu.slow(0.3, count=1)
        t0 = time.monotonic()
        assert c.post("/incidents/search", json={"filter": {"size": 1}}).status_code == 200
        assert time.monotonic() - t0 >= 0.3
        emu.fail(502, seconds=1.0)
        assert c.post("/incident", json={}).status_code == 502
        time.sleep(1.05)
        assert c.post("/incident", json={}).status_code == 200

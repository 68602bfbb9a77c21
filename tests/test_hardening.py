"""Regression tests for the adversarial probe's findings (issue 14), one or more per finding.

Fast unit-level tests; the network attacks are in tests/test_hostile_network.py, TLS and
reload in tests/test_tls_reload.py, secrets in tests/test_secrets_grep.py.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import stat
import subprocess
import textwrap
import time

import orjson
import pytest

from formats import cef as FC
from formats import leef as FL
from formats.render import Renderer, RenderOptions
from formats.syslog import frame_batch
from parsers import detect, normalise
from relay.config import ConfigError, loads
from relay.metrics import REGISTRY
from tests.harness import free_port, make_queue, relay_cli, relay_command

FORGE = (b'<14>1 2026-01-01T00:00:00.000Z h SigmaIncident - created [incident@32473 id="INC-1" '
         b'actor="x\x00<14>1 2026-01-01T00:00:00Z h a - - - LEEF:2.0|Evil|Forge|1|x|^|sev=10^src=6.6.6.6\tz" '
         b'risk_score="82"] {"incident_id":"INC-1"}')


def _event(raw: bytes):
    ev = detect.parse(raw, received=1767225600.0)
    return normalise.normalise(ev)


# ---------------------------------------------------------------- 1: NUL (and TAB) never reach the wire
@pytest.mark.parametrize("fmt", ["leef", "leef1", "cef", "rfc5424"])
@pytest.mark.parametrize("framing", ["lf", "octet"])
def test_nul_never_reaches_the_wire(fmt, framing):
    r = Renderer(RenderOptions(format=fmt))
    ev = _event(FORGE)
    payload = r.render(ev)
    if fmt != "rfc5424":            # the encoders replace NUL themselves, counted and noted
        assert b"\x00" not in payload
        assert r.sanitised >= 1
        assert any("NUL" in n for n in ev.notes), ev.notes
    if fmt == "cef":
        assert b"\t" not in payload
    wire, changed = frame_batch([payload, b"<13>1 - h a - - - clean"], framing)
    assert b"\x00" not in wire
    assert changed == (1 if fmt == "rfc5424" else 0)     # the passthrough payload is fixed by the framer
    # a receiver splitting on NUL and LF finds exactly the frames sent, no forged one
    frames = [f for f in wire.replace(b"\x00", b"\n").split(b"\n") if f]
    assert len(frames) == (2 if framing == "lf" else 1)
    assert not any(f.startswith((b"<14>1 2026-01-01T00:00:00Z h a", b"LEEF:2.0|Evil")) for f in frames)


def test_leef_and_cef_count_nul_and_tab():
    line, n = FL.encode("V\x00", "P", "1", "E", {"a": "x\x00y", "b\x00": "v"})
    assert "\x00" not in line and n == 3
    line, n = FC.encode_counted("V", "P\t", "1", "E", "n", 5, {"a": "x\x00y\tz"})
    assert "\x00" not in line and "\t" not in line and n == 3


# ---------------------------------------------------------------- 4: non-UTF-8 header fields
def test_test_parse_json_with_non_utf8_host_and_tag():
    r = relay_cli("test-parse", "--file", "-", "--json", "--render", "json,leef,cef,xsoar",
                  input=b"<13>Oct 11 22:14:15 ho\xffst ap\xfep[1\xfd]: m\n<13>1 2026-01-01T00:00:00Z h\xff a\xfe p\xfd m\xfc - x\n")
    assert r.returncode in (0, 1), r.stderr
    assert b"Traceback" not in r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2
    for ln in lines:
        orjson.loads(ln)


def test_every_header_field_is_json_safe():
    ev = _event(b"<13>Oct 11 22:14:15 ho\xffst ap\xfep[1\xfd]: m")
    ev.msgid = "m\udcff"
    ev.timestamp = "t\udcfe"
    ev.sd = {"s\udcff@1": {"k\udcfe": "v\udcfd"}}
    orjson.dumps(ev.syslog_dict())
    orjson.dumps(ev.fields)
    out = Renderer(RenderOptions(format="json")).render(ev)
    orjson.loads(out)


# ---------------------------------------------------------------- 5: disk space given back
def _fill_and_drain(q, n=3000, size=2000):
    for i in range(0, n, 500):
        q.put_many([(os.urandom(size), None) for _ in range(500)])
    while True:
        items = q.lease(1000)
        if not items:
            break
        q.ack(items)


def _free_pages(q) -> int:
    return q._conn.execute("PRAGMA freelist_count").fetchone()[0]


def test_incremental_vacuum_gives_every_free_page_back(tmp_path):
    q = make_queue(tmp_path / "q.db")
    _fill_and_drain(q)
    assert _free_pages(q) > 100
    size = os.path.getsize(tmp_path / "q.db")
    q._reclaim()
    assert _free_pages(q) == 0          # before the fix: one page per call
    assert os.path.getsize(tmp_path / "q.db") < size / 4
    q.close()


def test_a_failed_reclaim_never_fails_the_ack_that_ran_it(tmp_path):
    """The ack commits, then the housekeeping (checkpoint, incremental vacuum) may fail on a
    full disk: it is best effort, so the ack still succeeds (else its rows are sent again)."""
    q = make_queue(tmp_path / "q.db")
    q.put_many([(b"a", None), (b"b", None)])
    items = q.lease(2)
    real = q._conn

    class Conn:       # sqlite3.Connection's methods cannot be patched: a proxy
        def __getattr__(self, name):
            return getattr(real, name)

        def executescript(self, sql):
            raise SystemError("<method 'executescript' of 'sqlite3.Cursor' objects> returned NULL "
                              "without setting an exception")
    q._conn = Conn()
    try:
        q._tight = lambda: True           # the disk is short: every ack reclaims
        assert q.ack([it.id for it in items]) == 2
    finally:
        q._conn = real
    assert q.depth() == 0 and q.inflight() == 0
    q.close()


def test_space_given_back_after_a_disk_full_episode(tmp_path):
    q = make_queue(tmp_path / "q.db")
    q.stats["disk_full"] += 1           # an episode: the acks that drain the queue give space back
    _fill_and_drain(q)
    q._reclaim_at = 0.0                 # the last ack may fall inside the 1 s rate limit
    q.ack([])
    items = q.lease(1)
    assert not items
    q.put_many([(b"x", None)])
    q._reclaim_at = 0.0
    q.ack(q.lease(1))
    assert _free_pages(q) <= 2
    assert q._full_handled == q.stats["disk_full"]
    q.close()


def test_disk_full_lines_are_rate_limited(tmp_path, caplog):
    q = make_queue(tmp_path / "q.db")
    e = sqlite3.OperationalError("database or disk is full")
    e.sqlite_errorcode = 13
    with caplog.at_level(logging.ERROR, logger="relay.queue"):
        for _ in range(100):
            q._translate(e)
    assert sum("disk full" in r.getMessage() for r in caplog.records) == 1
    assert q.stats["disk_full"] == 100
    q.close()


# ---------------------------------------------------------------- 6: stop without sinks
def _run_relay(tmp_path, cfg: str, sig_after: float | None = 1.5):
    (tmp_path / "relay.toml").write_text(cfg)
    p = subprocess.Popen([*relay_command(), "run", "-c", str(tmp_path / "relay.toml")], cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if sig_after is not None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.1)
            if time.monotonic() > deadline - 15 + sig_after:
                break
        if p.poll() is None:
            p.terminate()
    out, _ = p.communicate(timeout=30)
    return p.returncode, out.decode()


def test_stop_with_an_empty_config(tmp_path):
    rc, out = _run_relay(tmp_path, f'[relay]\nmetrics_address = "127.0.0.1:{free_port()}"\n')
    assert rc == 0, out
    assert "Traceback" not in out and "stopped" in out


def test_unusable_state_dir_is_a_clear_start_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    rc, out = _run_relay(tmp_path, textwrap.dedent(f'''
        [relay]
        state_dir = "afile/state"
        metrics_address = "127.0.0.1:{free_port()}"
        [sinks.f]
        type = "file"
        path = "out.log"
        [routes.r]
        match = "true"
        sinks = ["f"]
        '''), sig_after=None)
    assert rc == 1, out
    assert "Traceback" not in out and "cannot start" in out and "afile" in out, out


# ---------------------------------------------------------------- 7: names are safe file names
@pytest.mark.parametrize("name", ["x/../../evil", "../q", ".hidden", "-rf", "a b", "ü", "x" * 65, "a\\\\b"])
@pytest.mark.parametrize("table", ["sinks", "sources"])
def test_unsafe_names_are_config_errors(name, table):
    body = ('type = "file"\npath = "o.log"' if table == "sinks" else 'type = "udp"\naddress = "127.0.0.1:0"')
    with pytest.raises(ConfigError) as ei:
        loads(f'[{table}."{name}"]\n{body}\n')
    assert "name" in str(ei.value) and "not allowed" in str(ei.value)


def test_ordinary_names_still_work():
    cfg = loads('[sinks."qradar-1.eu_west"]\ntype = "file"\npath = "o.log"\n'
                '[routes.r]\nmatch = "true"\nsinks = ["qradar-1.eu_west"]\n')
    assert "qradar-1.eu_west" in cfg.sinks


# ---------------------------------------------------------------- 10: render failures are dead letters, counted
def test_render_failures_count_as_dead_letters(tmp_path):
    from relay.queue import GroupCommitter

    async def main():
        q = make_queue(tmp_path / "q.db")
        c = GroupCommitter("deadcount", q, asyncio.get_running_loop())
        before = REGISTRY.counter("relay_dead_lettered_total", sink="deadcount").value
        for i in range(3):
            c.submit_dead(b"p%d" % i, {"source": "s"}, "render failed: boom")
        deadline = time.monotonic() + 10
        while q.dlq_depth() < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.to_thread(c.close, 5)
        n = REGISTRY.counter("relay_dead_lettered_total", sink="deadcount").value - before
        q.close()
        return n
    assert asyncio.run(main()) == 3


# ---------------------------------------------------------------- 12: state 0700, queue files 0600
def test_state_dir_and_queue_files_are_private(tmp_path):
    from relay.config import SinkConfig
    from relay.queue import open_queue
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    q = open_queue(state, SinkConfig(name="qr", type="syslog"))
    q.put_many([(b"x", None)])
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for f in state.iterdir():
        if f.name.startswith("queue-qr.db"):
            assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, (f.name, oct(f.stat().st_mode))
    q.close()
    # an old queue file left 0644 is narrowed when opened
    os.chmod(state / "queue-qr.db", 0o644)
    q = open_queue(state, SinkConfig(name="qr", type="syslog"))
    assert stat.S_IMODE((state / "queue-qr.db").stat().st_mode) == 0o600
    q.close()


def test_xsoar_dedup_store_is_private(tmp_path):
    from relay.sinks.xsoar import DedupStore
    d = DedupStore(tmp_path / "st" / "xsoar-dedup-x.db")
    assert stat.S_IMODE((tmp_path / "st").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "st" / "xsoar-dedup-x.db").stat().st_mode) == 0o600
    d.close()


# ---------------------------------------------------------------- 15: validate rejects what run would
@pytest.fixture
def tls_files(tmp_path, pki):
    (tmp_path / "notpem.crt").write_text("hello, not a certificate\n")
    (tmp_path / "garbage.crt").write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    return pki


@pytest.mark.parametrize("case, key_path, words", [
    ("drain nan", "relay.drain_timeout", "finite"),
    ("idle inf", "sources.t.idle_timeout", "finite"),
    ("cert not pem", "sources.t.tls_cert", "not a PEM certificate"),
    ("cert garbage", "sources.t.tls_cert", "does not load"),
    ("key mismatch", "sources.t.tls_key", "do not load together"),
    ("ca not pem", "sources.t.tls_ca", "not a PEM certificate"),
    ("key not pem", "sources.t.tls_key", "not a PEM private key"),
    ("sink cert not pem", "sinks.s.tls_cert", "not a PEM certificate"),
])
def test_validate_rejects_what_run_would(tmp_path, tls_files, case, key_path, words):
    pki = tls_files
    cert, key, ca, drain, idle = pki / "server.pem", pki / "server.key", pki / "ca.pem", "1.0", "5.0"
    sink_tls = ""
    if case == "drain nan":
        drain = "nan"
    elif case == "idle inf":
        idle = "inf"
    elif case == "cert not pem":
        cert = tmp_path / "notpem.crt"
    elif case == "cert garbage":
        cert = tmp_path / "garbage.crt"
    elif case == "key mismatch":
        key = pki / "client.key"
    elif case == "ca not pem":
        ca = tmp_path / "notpem.crt"
    elif case == "key not pem":
        key = tmp_path / "notpem.crt"
    elif case == "sink cert not pem":
        sink_tls = f'protocol = "tls"\ntls_cert = "{tmp_path / "notpem.crt"}"\n'
    (tmp_path / "c.toml").write_text(textwrap.dedent(f'''
        [relay]
        drain_timeout = {drain}
        [sources.t]
        type = "tls"
        address = "127.0.0.1:0"
        idle_timeout = {idle}
        tls_cert = "{cert}"
        tls_key = "{key}"
        tls_ca = "{ca}"
        [sinks.s]
        type = "syslog"
        address = "127.0.0.1:1"
        ''') + sink_tls + '[routes.r]\nmatch = "true"\nsinks = ["s"]\n')
    r = relay_cli("validate", tmp_path / "c.toml")
    err = r.stderr.decode()
    assert r.returncode == 2, (r.stdout, err)
    assert key_path in err and words in err, err
    assert "Traceback" not in err


# ---------------------------------------------------------------- 13: the duplicate window is bounded by events
@pytest.mark.parametrize("settle_events, settled_at_most_left", [(100, 300)])
def test_settle_by_event_count(tmp_path, settle_events, settled_at_most_left):
    """With the time rule out of reach (settle_delay 30 s), a batch settles once settle_events
    more events were acknowledged after it: what a SIGKILL would re-send stays bounded."""
    from relay.config import SinkConfig
    from relay.metrics import Registry
    from relay.sinks.syslog import SyslogStreamSink
    from tests.harness import QradarStandIn, run_sinks
    q = make_queue(tmp_path / "q.db")
    for i in range(0, 2000, 500):
        q.put_many([(b"<13>1 - h a - - - m%d" % k, None) for k in range(i, i + 500)])
    with QradarStandIn() as rx:
        cfg = SinkConfig(name="ev", type="syslog", address=("127.0.0.1", rx.port), framing="lf", batch_size=50,
                         options={"settle_delay": 30.0, "settle_events": settle_events})
        sink = SyslogStreamSink(cfg, q, registry=Registry())

        async def main():
            await run_sinks([sink], lambda: rx.count() >= 2000 and (
                settled_at_most_left is None or q.depth() <= settled_at_most_left), timeout=15)
            return q.depth()
        left = asyncio.run(main())
    if settled_at_most_left is None:
        assert left == 2000          # the time rule alone: nothing settles within 30 s
    else:
        assert left <= settled_at_most_left
    q.close()

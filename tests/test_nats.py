"""The relay bus (issue 20, item 2): the envelope (formats/bus.py, parsers/bus.py), the ``nats``
sink and source configs, and ingest relay -> JetStream -> delivery relay as real processes with
a real nats-server on loopback.
"""
from __future__ import annotations

import collections
import subprocess
import sys

import orjson
import pytest

from formats.bus import encode, event_id, partition
from parsers import detect
from parsers.bus import BusError, decode
from parsers.normalise import normalise
from relay.config import ConfigError, loads
from tests.harness import QradarStandIn, RelayProcess, free_port, seq_of, sigma_line, wait_until
from tests.natsctl import NatsCluster, need_nats


def _event(raw: bytes):
    ev = detect.parse(raw, received=1733380000.5, peer="203.0.113.7:51514", source="syslog_tcp")
    normalise(ev)
    return ev


# ----------------------------------------------------------------------------- envelope

def test_envelope_round_trip_keeps_event():
    raw = sigma_line("INC-1", 91, sd={"seq": 7}) + b" \xff\xfe not utf-8"
    ev = _event(raw)
    data = encode(ev, ["hi", "all"], 8)
    back, env = decode(data)
    assert back.raw == raw and back.msg == ev.msg.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    assert back.fields == orjson.loads(orjson.dumps(ev.fields))
    assert (back.source, back.peer, back.received, back.format) == ("syslog_tcp", "203.0.113.7:51514",
                                                                    1733380000.5, ev.format)
    assert (back.hostname, back.app_name, back.msgid, back.pri) == (ev.hostname, ev.app_name, ev.msgid, ev.pri)
    assert back.sd["incident@32473"]["seq"] == "7"
    assert env["routes"] == ["hi", "all"] and env["dedup_key"] == ev.fields["dedup_key"]
    assert env["id"] == event_id(ev) and env["p"] == partition(ev.fields["dedup_key"], 8)


def test_event_id_depends_on_raw_bytes_only():
    a, b = _event(sigma_line("INC-1")), _event(sigma_line("INC-1"))
    b.peer, b.source, b.received = "10.9.9.9:1", "other", 5.0
    assert event_id(a) == event_id(b)
    assert event_id(a) != event_id(_event(sigma_line("INC-2")))


def test_partition_is_stable_across_processes_and_spread():
    keys = [f"rhythmx:INC-{i}" for i in range(4000)]
    here = [partition(k, 8) for k in keys]
    code = ("import sys; from formats.bus import partition; "
            "print(','.join(str(partition(f'rhythmx:INC-{i}', 8)) for i in range(4000)))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"}, cwd=str(_root()))
    assert other.stdout.strip().split(",") == [str(p) for p in here]
    counts = collections.Counter(here)
    assert set(counts) == set(range(8)) and min(counts.values()) > 400 and max(counts.values()) < 600
    assert partition("anything", 1) == 0


def _root():
    from pathlib import Path
    return Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("data,reason", [
    (b"not json", "bus_json"),
    (b"[1,2]", "bus_shape"),
    (b'{"v": 2, "id": "x", "syslog": {}, "fields": {}}', "bus_version"),
    (b'{"v": 1, "syslog": {}, "fields": {}}', "bus_shape"),
    (b'{"v": 1, "id": "x", "syslog": {}, "fields": {}, "raw": "***"}', "bus_shape"),
])
def test_bad_envelopes_have_reasons(data, reason):
    with pytest.raises(BusError) as e:
        decode(data)
    assert e.value.reason == reason


# ----------------------------------------------------------------------------- config

_OUT = '[sinks.f]\ntype = "file"\npath = "out.log"\n[routes.all]\nmatch = "true"\nsinks = ["f"]\n'


def test_config_of_both_kinds():
    c = loads('[sources.s]\ntype = "tcp"\naddress = "127.0.0.1:0"\n'
              '[sinks.bus]\ntype = "nats"\nservers = ["nats://n1:4222", "nats://n2:4222"]\n'
              'stream = "relay-events"\nsubject = "relay.events"\npartitions = 8\n'
              '[routes.all]\nmatch = "true"\nsinks = ["bus"]\n', file="r.toml")
    st = c.sinks["bus"].options["nats"]
    assert st.servers == ["nats://n1:4222", "nats://n2:4222"] and st.partitions == 8
    assert st.extra["replicas"] == 3 and st.extra["duplicate_window"] == 120.0
    c = loads('[sources.bus]\ntype = "nats"\nservers = ["nats://n1:4222"]\nstream = "relay-events"\n'
              'durable = "delivery"\n' + _OUT, file="r.toml")
    st = c.sources["bus"].options["nats"]
    assert st.extra["durable"] == "delivery" and st.extra["ack_wait"] == 60.0
    bad = [
        ('[sources.bus]\ntype = "nats"\nservers = ["nats://n1:4222"]\n' + _OUT, "durable"),
        ('[sources.bus]\ntype = "nats"\nservers = []\ndurable = "d"\n' + _OUT, "servers"),
        ('[sources.bus]\ntype = "nats"\nservers = ["http://n1"]\ndurable = "d"\n' + _OUT, "servers"),
        ('[sources.bus]\ntype = "nats"\nservers = ["nats://n1:4222"]\ndurable = "a.b"\n' + _OUT, "durable"),
        ('[sources.bus]\ntype = "nats"\nservers = ["nats://n1:4222"]\ndurable = "d"\npassword_env = "HOME"\n'
         + _OUT, "user"),
        ('[sources.s]\ntype = "tcp"\naddress = "127.0.0.1:0"\n[sinks.bus]\ntype = "nats"\n'
         'servers = ["nats://n1:4222"]\nduplicate_window = 600\nmax_age = 60\n'
         '[routes.all]\nmatch = "true"\nsinks = ["bus"]\n', "duplicate_window"),
        ('[sources.s]\ntype = "tcp"\naddress = "127.0.0.1:0"\n[sinks.bus]\ntype = "nats"\n'
         'servers = ["nats://n1:4222"]\nsubject = "relay.*"\n[routes.all]\nmatch = "true"\nsinks = ["bus"]\n',
         "subject"),
    ]
    for text, key in bad:
        with pytest.raises(ConfigError, match=key):
            loads(text, file="r.toml")


# ----------------------------------------------------------------------------- processes

def _ingest_cfg(d, tcp: int, metrics: int, servers: str, partitions: int = 4) -> str:
    return f"""
[relay]
state_dir = "{d}/state"
metrics_address = "127.0.0.1:{metrics}"
drain_timeout = 5

[sources.syslog_tcp]
type = "tcp"
address = "127.0.0.1:{tcp}"

[sinks.bus]
type = "nats"
servers = {servers}
replicas = 1
partitions = {partitions}
publish_timeout = 2.0

[routes.all]
match = "true"
sinks = ["bus"]
"""


def _delivery_cfg(d, metrics: int, servers: str, qradar: str, partitions: int = 4) -> str:
    return f"""
[relay]
state_dir = "{d}/state"
metrics_address = "127.0.0.1:{metrics}"
drain_timeout = 5

[sources.bus]
type = "nats"
servers = {servers}
durable = "delivery"
partitions = {partitions}
ack_wait = 5

[sinks.qradar]
type = "syslog"
address = "{qradar}"
protocol = "tcp"
format = "json"

[routes.all]
match = "true"
sinks = ["qradar"]
"""


def _msgs(lo: int, hi: int) -> list[bytes]:
    return [sigma_line(f"INC-{s:08d}", 50, sd={"seq": s}) for s in range(lo, hi)]


@pytest.mark.e2e
def test_ingest_to_delivery_through_jetstream_dedup_and_kill(tmp_path):
    """Ingest relay (tcp -> nats) started before NATS is up; delivery relay (nats -> syslog)
    started before the stream exists; 3,000 events; the same 3,000 again through the ingest
    relay are stored once (Nats-Msg-Id); the delivery relay SIGKILLed mid-delivery and
    restarted: every event arrives."""
    need_nats()
    nats = NatsCluster(tmp_path / "nats", nodes=1)
    servers = nats.toml_servers()
    tcp, mi, md = free_port(), free_port(), free_port()
    ingest = RelayProcess(tmp_path / "ingest", _ingest_cfg(tmp_path / "ingest", tcp, mi, servers), mi, tcp_port=tcp)
    with QradarStandIn() as qr:
        delivery = RelayProcess(tmp_path / "delivery", _delivery_cfg(tmp_path / "delivery", md, servers,
                                                                     qr.address), md)
        try:
            ingest.start()
            ingest.send(_msgs(0, 1000))                      # NATS is down: stays queued
            ingest.wait_metric("relay_received_total", 1000)
            assert ingest.metric("relay_sent_total", sink="bus") == 0
            nats.start()
            nats.wait_ready()
            delivery.start()
            ingest.wait_metric("relay_sent_total", 1000, sink="bus")
            qr.wait_for(1000, timeout=60)
            ingest.send(_msgs(1000, 3000))
            # kill the delivery relay while it is delivering
            wait_until(lambda: qr.count() > 1300, 60, what="delivery under way")
            delivery.kill()
            ingest.wait_metric("relay_sent_total", 3000, sink="bus", timeout=60)
            delivery.start()
            # what the killed relay had fetched but not acked comes back after ack_wait (5 s)
            wait_until(lambda: {seq_of(x) for x in qr.snapshot()} == set(range(3000)), 90,
                       what="every event at the QRadar stand-in")
            # the same events again, through the ingest relay: JetStream stores none of them
            ingest.send(_msgs(0, 3000))
            m = ingest.wait_metric("relay_sent_total", 6000, sink="bus", timeout=60)
            assert m.value("relay_nats_duplicates_total", sink="bus") == 3000
            delivery.wait_metric("relay_nats_acked_total", 1, timeout=5)
            qr.wait_quiet(1.0, timeout=30)
            seqs = collections.Counter(seq_of(line) for line in qr.snapshot())
            assert set(seqs) == set(range(3000))
            # JetStream delivered again only what the killed relay had fetched and not acked: at
            # most a batch or two per partition (4 x 256 each); the QRadar stand-in's other duplicates are
            # the syslog sink's own window (rows sent, not yet acked in the killed relay's queue)
            dm = delivery.metrics()
            assert dm.value("relay_nats_redelivered_total", source="bus") <= 2 * 4 * 256
            assert dm.value("relay_dropped_total", source="bus") == 0
        finally:
            delivery.stop()
            ingest.stop()
            nats.close()

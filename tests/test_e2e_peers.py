"""End-to-end: real syslog clients -> `relay run` -> a QRadar stand-in, all on 127.0.0.1.

Peers: util-linux ``logger --rfc5424`` (UDP, TCP with LF and with octet counting), ``loggen``
from syslog-ng-core (TCP, replaying a SigmaIncident file; and its own RFC 5424 octet-counted
messages), and rsyslog as an upstream forwarder (omfwd TCP, octet-counted framing,
RSYSLOG_SyslogProtocol23Format) fed through imtcp, imudp and imfile.  scripts/test-deps installs
them; a missing peer skips its test with the reason.

Every relay runs with the same shape of config (:func:`relay_config`): a TCP and a UDP source,
``app_name == "SigmaIncident" and risk_score >= 70`` -> syslog sink (TCP, LF, LEEF) at the
stand-in, ``format exists`` -> file sink (JSON archive).  Each test checks that every message
that should arrive arrives exactly once (counted by incident id or loggen sequence number,
after the relay has been stopped so late duplicates would be seen too), that the LEEF fields
are right, and that the relay's counters match what was sent.
"""
from __future__ import annotations

import collections
import json
import socket
import time
from pathlib import Path

import pytest

from parsers import leef, rfc5424
from tests.harness import LOOPBACK, QradarStandIn, WaitTimeout, free_port, sigma_line, wait_until
from tests.peers import Rsyslog, logger_send, needs_logger, needs_loggen, needs_rsyslog, run_loggen

pytestmark = pytest.mark.e2e

SDID = "incident@32473"


# ----------------------------------------------------------------------------- expectations

def leef_sev(risk: int) -> str:
    """docs/schema.md 2.1 + 2.5: 0-100 score -> severity band -> LEEF sev."""
    return "9" if risk >= 80 else "7" if risk >= 60 else "5" if risk >= 40 else "3" if risk >= 20 else "1"


def forwarded(risk: int) -> bool:
    return risk >= 70


def incident(inc: str, risk: int, **kw) -> bytes:
    """One RFC 5424 RhythmX SigmaIncident message as in examples/samples/sigma_incidents.log."""
    return sigma_line(inc, risk, sd={"sigma_alert_count": "3", "threat_case_count": "1"},
                      body_extra={"risk_level": "x"}, **kw)


# ----------------------------------------------------------------------------- relay set-up

def relay_config(workdir: Path, *, tcp_port: int, udp_port: int, metrics_port: int, qradar_port: int) -> str:
    return f"""
[relay]
state_dir = "{workdir / 'state'}"
metrics_address = "{LOOPBACK}:{metrics_port}"
drain_timeout = 10.0
log_level = "info"

[relay.queue]
synchronous = "NORMAL"

[relay.retry]
base = 0.2
factor = 2.0
cap = 1.0
max_attempts = 0

[sources.tcp_in]
type = "tcp"
address = "{LOOPBACK}:{tcp_port}"
idle_timeout = 30.0

[sources.udp_in]
type = "udp"
address = "{LOOPBACK}:{udp_port}"

[routes.high_risk]
match = 'app_name == "SigmaIncident" and risk_score >= 70'
sinks = ["qradar"]

[routes.archive]
match = 'format exists'
sinks = ["archive"]

[sinks.qradar]
type = "syslog"
address = "{LOOPBACK}:{qradar_port}"
protocol = "tcp"
framing = "lf"
format = "leef"
connect_timeout = 2.0

[sinks.archive]
type = "file"
path = "{workdir / 'out' / 'archive.jsonl'}"
format = "json"
"""


class Setup:
    def __init__(self, make_relay, tmp_path: Path, qradar_port: int) -> None:
        self.tmp_path = tmp_path
        self.tcp_port = free_port()
        self.udp_port = free_port()
        self.metrics_port = free_port()
        self.qradar_port = qradar_port
        self.archive = tmp_path / "relay" / "out" / "archive.jsonl"
        self.relay = make_relay(relay_config(tmp_path / "relay", tcp_port=self.tcp_port, udp_port=self.udp_port,
                                             metrics_port=self.metrics_port, qradar_port=qradar_port),
                                self.metrics_port, tmp_path / "relay", tcp_port=self.tcp_port)

    def archived(self) -> list[dict]:
        try:
            data = self.archive.read_bytes()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in data.split(b"\n")[:-1] if line.strip()]

    def wait_archived(self, n: int, timeout: float) -> list[dict]:
        try:
            wait_until(lambda: len(self.archived()) >= n, timeout, interval=0.1, what=f"{n} archived events")
        except WaitTimeout as e:
            raise WaitTimeout(f"{e}: have {len(self.archived())}\n--- relay ---\n{self.relay.stderr()[-3000:]}") \
                from None
        return self.archived()

    def stop_relay(self) -> None:
        rc = self.relay.stop()
        assert rc == 0, f"relay exit code {rc}\n{self.relay.stderr()[-3000:]}"


@pytest.fixture
def setup(tmp_path, qradar, make_relay):
    s = Setup(make_relay, tmp_path, qradar.port)
    s.relay.start()
    return s


# ----------------------------------------------------------------------------- checks

def decode(line: str):
    """A line the stand-in received -> (syslog header event, LEEF record)."""
    ev = rfc5424.parse(line.encode("utf-8"))
    assert ev.app_name == "SigmaIncident", line
    rec = leef.parse(ev.msg)
    assert (rec.version, rec.vendor, rec.product) == ("2.0", "Relay", "SOC Relay"), line
    return ev, rec


def by_incident(lines: list[str]) -> dict[str, list]:
    out: dict[str, list] = collections.defaultdict(list)
    for line in lines:
        ev, rec = decode(line)
        out[rec.attributes.get("externalId")].append((ev, rec))
    return out


def assert_once(counts: collections.Counter | dict, expected: set, what: str) -> None:
    counts = collections.Counter({k: len(v) if isinstance(v, list) else v for k, v in counts.items()})
    missing = sorted(expected - set(counts))
    extra = sorted(set(counts) - expected)
    dups = sorted(k for k, c in counts.items() if c > 1)
    assert not missing and not extra and not dups, (
        f"{what}: {len(missing)} missing {missing[:5]}, {len(extra)} unexpected {extra[:5]}, "
        f"{len(dups)} duplicated {dups[:5]}")


def settle(setup: Setup, qradar: QradarStandIn, total: int, high: int, timeout: float = 30.0):
    """Wait for both sinks; return the metrics seen once everything was delivered."""
    qradar.wait_for(high, timeout)
    setup.wait_archived(total, timeout)
    setup.relay.wait_metric("relay_sent_total", total + high, timeout)
    qradar.wait_quiet(0.3, 5)  # late duplicates would show up here
    return setup.relay.metrics()


def check_metrics(m, *, total: int, high: int, by_source: dict[str, int] | None = None) -> None:
    """The relay's own account must match what the peers sent (read before stopping it)."""
    problems = []

    def eq(name, want, **labels):
        got = m.value(name, **labels)
        if got != want:
            problems.append(f"{name}{labels or ''} = {got:g}, expected {want}")
    eq("relay_received_total", total)
    for src, n in (by_source or {}).items():
        eq("relay_received_total", n, source=src)
    eq("relay_parse_failed_total", 0)
    eq("relay_dropped_total", 0)
    eq("relay_unrouted_total", 0)
    eq("relay_routed_total", high, route="high_risk")
    eq("relay_routed_total", total, route="archive")
    eq("relay_enqueued_total", high, sink="qradar")
    eq("relay_enqueued_total", total, sink="archive")
    eq("relay_sent_total", high, sink="qradar")
    eq("relay_sent_total", total, sink="archive")
    eq("relay_dead_lettered_total", 0)
    eq("relay_render_errors_total", 0)
    assert not problems, "metrics do not match what was sent:\n  " + "\n  ".join(problems)


# ----------------------------------------------------------------------------- (a) logger

@needs_logger
def test_logger_rfc5424_udp_and_tcp(setup, qradar):
    # (transport, logger options, incident id, risk, actor)
    plan = [("udp", {}, "INC-UDP-1", 82, "jdoe"), ("udp", {}, "INC-UDP-2", 35, "asmith"),
            ("udp", {}, "INC-UDP-3", 71, "svc_backup"), ("udp", {}, "INC-UDP-4", 69, "bob"),
            ("tcp", {}, "INC-TCP-1", 95, "alice"), ("tcp", {}, "INC-TCP-2", 12, "carol"),
            ("tcp", {}, "INC-TCP-3", 70, "dave"),
            ("tcp", {"octet_count": True}, "INC-OCT-1", 88, "erin"),
            ("tcp", {"octet_count": True}, "INC-OCT-2", 40, "frank"),
            ("tcp", {"octet_count": True}, "INC-OCT-3", 100, "grace")]
    for proto, opts, inc, risk, actor in plan:
        port = setup.udp_port if proto == "udp" else setup.tcp_port
        logger_send(port, json.dumps({"incident_id": inc, "risk_score": risk}), proto=proto, msgid="created",
                    sd_id=SDID, sd_params={"id": inc, "actor": actor, "entity": "Primary Site", "status": "OPEN",
                                           "risk_score": str(risk), "alarm_count": "3"}, **opts)
    total = len(plan)
    high = sum(forwarded(r) for _, _, _, r, _ in plan)
    m = settle(setup, qradar, total, high)
    setup.stop_relay()

    got = by_incident(qradar.snapshot())
    assert_once(got, {inc for _, _, inc, r, _ in plan if forwarded(r)}, "LEEF at QRadar")
    host = socket.gethostname()
    for proto, _, inc, risk, actor in plan:
        if not forwarded(risk):
            continue
        (ev, rec), = got[inc]
        a = rec.attributes
        assert a["riskScore"] == str(risk), (inc, a)
        assert a["usrName"] == actor, (inc, a)
        assert a["sev"] == leef_sev(risk), (inc, a)
        assert a["actor"] == actor and a["entity"] == "Primary Site", (inc, a)
        assert ev.hostname == host, (inc, ev.hostname)       # logger's hostname, kept
        assert ev.facility == 17, (inc, ev.pri)             # local1 from logger -p local1.alert
    arch = setup.archived()
    assert_once(collections.Counter(e["event"]["id"] for e in arch), {p[2] for p in plan}, "JSON archive")
    for e in arch:
        assert e["syslog"]["app_name"] == "SigmaIncident"
        assert e["event"]["user"] == next(p[4] for p in plan if p[2] == e["event"]["id"])
    check_metrics(m, total=total, high=high,
                  by_source={"udp_in": sum(p[0] == "udp" for p in plan),
                             "tcp_in": sum(p[0] == "tcp" for p in plan)})


# ----------------------------------------------------------------------------- (b) loggen

@needs_loggen
def test_loggen_replays_5000_sigma_incidents_over_tcp(setup, qradar, tmp_path):
    n = 5000
    risks = [35 if i % 5 == 0 else 70 + i % 31 for i in range(n)]   # every 5th low risk
    ids = [f"INC-LG-{i:06d}" for i in range(n)]
    template = tmp_path / "sigma_5000.log"
    template.write_bytes(b"".join(incident(inc, r, host=f"rx-{i % 7:02d}", actor=f"user{i % 13}") + b"\n"
                                  for i, (inc, r) in enumerate(zip(ids, risks))))
    res = run_loggen(setup.tcp_port, number=n, rate=20000, file=template, dont_parse=True, interval=60,
                     timeout=90)
    assert res.returncode == 0 and res.count == n, res.output[-2000:]
    high = sum(forwarded(r) for r in risks)
    m = settle(setup, qradar, n, high, timeout=60)
    setup.stop_relay()

    got = by_incident(qradar.snapshot())
    assert_once(got, {inc for inc, r in zip(ids, risks) if forwarded(r)}, "LEEF at QRadar")
    for i, (inc, r) in enumerate(zip(ids, risks)):
        if forwarded(r):
            (ev, rec), = got[inc]
            assert rec.attributes["riskScore"] == str(r) and rec.attributes["sev"] == leef_sev(r), rec.attributes
            assert rec.attributes["usrName"] == f"user{i % 13}"
            assert ev.hostname == f"rx-{i % 7:02d}"
    assert_once(collections.Counter(e["event"]["id"] for e in setup.archived()), set(ids), "JSON archive")
    check_metrics(m, total=n, high=high, by_source={"tcp_in": n})


@needs_loggen
def test_loggen_syslog_proto_octet_counted(setup, qradar):
    """loggen's own RFC 5424 messages (-P: octet-counted on TCP), with SD; they are not
    SigmaIncidents, so they all go to the archive only; every sequence number once."""
    n = 2000
    res = run_loggen(setup.tcp_port, number=n, rate=20000, syslog_proto=True, size=300,
                     sdata=f'[{SDID} id="INC-LOGGEN" risk_score="90"]', interval=60, timeout=90)
    assert res.returncode == 0 and res.count == n, res.output[-2000:]
    setup.wait_archived(n, 60)
    m = setup.relay.wait_metric("relay_sent_total", n, 30, sink="archive")
    time.sleep(0.3)
    setup.stop_relay()
    arch = setup.archived()
    seqs = collections.Counter()
    for e in arch:
        sl = e["syslog"]
        assert sl["format"] == "rfc5424" and sl["version"] == 1, sl
        assert sl["structured_data"] == {SDID: {"id": "INC-LOGGEN", "risk_score": "90"}}, sl
        msg = sl["msg"].lstrip("\ufeff")
        assert msg.startswith("seq: "), msg[:80]
        seqs[int(msg[5:15])] += 1
    assert_once(seqs, set(range(n)), "loggen sequence numbers in the archive")
    assert qradar.count() == 0, qradar.snapshot()[:3]
    check_metrics(m, total=n, high=0, by_source={"tcp_in": n})


# ----------------------------------------------------------------------------- (c) rsyslog upstream

@needs_rsyslog
def test_rsyslog_forwarder_octet_counted(setup, qradar, tmp_path):
    rs = Rsyslog(tmp_path / "rsyslog", setup.tcp_port, inputs=("tcp", "udp", "file"))
    rs.check_config()
    plan = []  # (input, id, risk, host)
    for i in range(400):
        plan.append(("tcp", f"INC-RS-T{i:04d}", 35 if i % 4 == 0 else 75 + i % 20, f"edge-{i % 5}"))
    for i in range(50):
        plan.append(("udp", f"INC-RS-U{i:04d}", 90 if i % 2 else 20, f"dmz-{i % 3}"))
    for i in range(50):
        plan.append(("file", f"INC-RS-F{i:04d}", 80 if i % 3 else 50, f"file-{i % 2}"))
    msgs = {inp: [incident(inc, r, host=h, actor=f"a{inc[-2:]}") for i2, inc, r, h in plan if i2 == inp]
            for inp in ("tcp", "udp", "file")}
    rs.start()
    try:
        rs.send_tcp(msgs["tcp"], octet=True)
        rs.send_udp(msgs["udp"], pace=0.002)
        rs.input_file.write_bytes(b"".join(m + b"\n" for m in msgs["file"]))
        total = len(plan)
        high = sum(forwarded(r) for _, _, r, _ in plan)
        try:
            m = settle(setup, qradar, total, high, timeout=45)
        except WaitTimeout as e:
            raise AssertionError(f"{e}\n--- rsyslog ---\n{rs.output()[-3000:]}") from None
    finally:
        rs.stop()
    setup.stop_relay()

    got = by_incident(qradar.snapshot())
    assert_once(got, {inc for _, inc, r, _ in plan if forwarded(r)}, "LEEF at QRadar via rsyslog")
    for inp, inc, r, h in plan:
        if forwarded(r):
            (ev, rec), = got[inc]
            assert ev.hostname == h, (inp, inc, ev.hostname)          # original host, not rsyslog's
            assert rec.attributes["riskScore"] == str(r), rec.attributes
            assert rec.attributes["sev"] == leef_sev(r), rec.attributes
            assert rec.attributes["usrName"] == f"a{inc[-2:]}", rec.attributes
            assert "\n" not in rec.attributes["usrName"]
    arch = setup.archived()
    assert_once(collections.Counter(e["event"]["id"] for e in arch), {p[1] for p in plan}, "JSON archive")
    hosts = {p[1]: p[3] for p in plan}
    for e in arch:
        assert e["syslog"]["hostname"] == hosts[e["event"]["id"]]
    check_metrics(m, total=total, high=high, by_source={"tcp_in": total, "udp_in": 0})


# ----------------------------------------------------------------------------- (d) metrics, plain sockets

def test_metrics_match_what_was_sent(setup, qradar):
    """No external peer needed: a raw TCP connection (LF and octet-counted frames) and UDP
    datagrams; relay_received_total / relay_sent_total per source and sink must match."""
    tcp_lf = [incident(f"INC-M-L{i}", 80 + i % 20) for i in range(60)]
    tcp_oct = [incident(f"INC-M-O{i}", 10 + i) for i in range(40)]            # 10..49: none forwarded
    udp = [incident(f"INC-M-U{i}", 70 if i % 2 else 69) for i in range(30)]
    with socket.create_connection((LOOPBACK, setup.tcp_port), timeout=10) as s:
        s.sendall(b"".join(m + b"\n" for m in tcp_lf) + b"".join(b"%d %s" % (len(m), m) for m in tcp_oct))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        for m in udp:
            u.sendto(m, (LOOPBACK, setup.udp_port))
            time.sleep(0.001)
    total = len(tcp_lf) + len(tcp_oct) + len(udp)
    high = len(tcp_lf) + len(udp) // 2
    m = settle(setup, qradar, total, high)
    status, body = setup.relay.http("/health")
    assert status == 200, body
    setup.stop_relay()
    check_metrics(m, total=total, high=high, by_source={"tcp_in": 100, "udp_in": 30})
    assert_once(by_incident(qradar.snapshot()),
                {f"INC-M-L{i}" for i in range(60)} | {f"INC-M-U{i}" for i in range(1, 30, 2)}, "LEEF at QRadar")


# ----------------------------------------------------------------------------- QRadar down at first

def test_qradar_late_start_delivers_everything_once(tmp_path, make_relay):
    """The QRadar sink's address refuses connections at first; events wait in the disk queue and
    are retried (base 0.2 s); once the stand-in listens every event arrives exactly once."""
    qport = free_port()
    s = Setup(make_relay, tmp_path, qport)
    s.relay.start()
    s.relay.send([incident(f"INC-LATE-{i}", 90) for i in range(200)])
    s.wait_archived(200, 30)
    s.relay.wait_metric("relay_send_errors_total", 1, 15, sink="qradar")
    m = s.relay.metrics()
    assert m.value("relay_sent_total", sink="qradar") == 0
    assert m.value("relay_sink_up", sink="qradar") == 0
    with QradarStandIn(port=qport) as q:
        m = settle(s, q, 200, 200, timeout=30)
        assert m.value("relay_sink_up", sink="qradar") == 1
        s.stop_relay()
        assert_once(by_incident(q.snapshot()), {f"INC-LATE-{i}" for i in range(200)}, "LEEF after QRadar came up")
        check_metrics(m, total=200, high=200, by_source={"tcp_in": 200})

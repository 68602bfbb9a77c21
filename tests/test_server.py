"""`relay run` lifecycle: READY=1 to systemd, /health /ready /metrics, SIGHUP reload (good and
bad), SIGTERM drain, start-up failures, and the `relay queue` commands.  Real processes,
real sockets on 127.0.0.1."""
from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.request
from pathlib import Path

from tests.harness import QradarStandIn, free_port, relay_cli, send_tcp, sigma_line, wait_until


def sigma(n: int, risk: int) -> bytes:
    """A short SigmaIncident: id, actor and risk score in the SD, only the id in the body."""
    return sigma_line(f"INC-{n}", risk, entity=None, status=None, alarm_count=None, body={"incident_id": f"INC-{n}"})


def config(tmp: Path, tcp: int, metrics: int, sink: str, extra: str = "", route: str = 'risk_score >= 70',
           drain: float = 5.0) -> str:
    return f'''
[relay]
state_dir = "{tmp}/state"
metrics_address = "127.0.0.1:{metrics}"
drain_timeout = {drain}
[relay.retry]
base = 0.1
cap = 0.5
max_attempts = 3
[sources.tcp]
type = "tcp"
address = "127.0.0.1:{tcp}"
[routes.high]
match = '{route}'
sinks = ["out"]
{sink}
{extra}
'''


def file_sink(path: Path) -> str:
    return f'[sinks.out]\ntype = "file"\npath = "{path}"\nformat = "leef"\n'


def lines_of(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def test_ready_notification_health_and_metrics(tmp_path, make_relay):
    tcp, mport = free_port(), free_port()
    out = tmp_path / "out.leef"
    notify = tmp_path / "notify.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(str(notify))
    srv.settimeout(20)
    relay = make_relay(config(tmp_path, tcp, mport, file_sink(out)), mport, env={"NOTIFY_SOCKET": str(notify)})
    relay.start(wait_ready=False)       # READY=1 first, then /ready answers 200
    try:
        msg = srv.recv(4096).decode()
        assert "READY=1" in msg
        for path, want in (("/health", 200), ("/ready", 200)):
            with urllib.request.urlopen(f"http://127.0.0.1:{mport}{path}", timeout=5) as r:
                assert r.status == want
        send_tcp(tcp, [sigma(n=1, risk=90), sigma(n=2, risk=10)])
        wait_until(lambda: len(lines_of(out)) >= 1, 10, what="LEEF line in the file sink")
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5) as r:
            text = r.read().decode()
        assert 'relay_received_total{source="tcp"} 2' in text
        assert 'relay_routed_total{route="high"} 1' in text
        relay.proc.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in srv.recv(4096).decode()
        assert relay.proc.wait(20) == 0
    finally:
        srv.close()
    (line,) = lines_of(out)
    assert "LEEF:2.0|Relay|SOC Relay|1.0|created|" in line and "externalId=INC-1" in line


def test_sighup_reload_applies_good_and_keeps_old_on_bad(tmp_path, make_relay):
    tcp, mport = free_port(), free_port()
    out = tmp_path / "out.leef"
    relay = make_relay(config(tmp_path, tcp, mport, file_sink(out)), mport)
    with relay:
        send_tcp(tcp, [sigma(n=1, risk=50)])  # below 70: not routed
        relay.wait_metric("relay_unrouted_total", 1, 10)
        # a good new config: threshold 40
        relay.config_path.write_text(config(tmp_path, tcp, mport, file_sink(out), route="risk_score >= 40"))
        relay.proc.send_signal(signal.SIGHUP)
        relay.wait_metric("relay_config_reloads_total", 1, 10, result="applied")
        send_tcp(tcp, [sigma(n=2, risk=50)])
        wait_until(lambda: len(lines_of(out)) == 1, 10, what="the reloaded route to deliver")
        # a bad new config: kept the old one, still running
        relay.config_path.write_text(config(tmp_path, tcp, mport, file_sink(out), route="risk_score >="))
        relay.proc.send_signal(signal.SIGHUP)
        relay.wait_metric("relay_config_reloads_total", 1, 10, result="rejected")
        send_tcp(tcp, [sigma(n=3, risk=45)])
        wait_until(lambda: len(lines_of(out)) == 2, 10, what="the old config to keep working")
        assert "new configuration rejected, keeping the running one" in relay.stderr()
        assert "routes.high.match" in relay.stderr()
    assert relay.returncode == 0


def test_bad_config_exits_2_with_key_path(tmp_path):
    cfg = tmp_path / "relay.toml"
    cfg.write_text(config(tmp_path, free_port(), free_port(), file_sink(tmp_path / "o"),
                          extra='[sinks.x]\ntype = "syslog"\naddress = "nowhere"\n'))
    p = relay_cli("run", "--config", cfg)
    assert p.returncode == 2
    assert f"{cfg}: sinks.x.address:".encode() in p.stderr


def test_port_in_use_exits_1_with_clear_message(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        cfg = tmp_path / "relay.toml"
        cfg.write_text(config(tmp_path, port, free_port(), file_sink(tmp_path / "o")))
        p = relay_cli("run", "--config", cfg)
        assert p.returncode == 1
        assert b"source tcp: cannot listen on tcp 127.0.0.1:" in p.stderr
    finally:
        busy.close()


def test_sigterm_drains_to_the_sink_before_exit(tmp_path, make_relay):
    tcp, mport = free_port(), free_port()
    with QradarStandIn() as qr:
        sink = f'[sinks.out]\ntype = "syslog"\naddress = "{qr.address}"\nprotocol = "tcp"\nformat = "leef"\n'
        # drain_timeout is the cap on a graceful stop, not what is tested: the relay exits as
        # soon as its queue is empty; the cap only has to hold on a heavily loaded host
        relay = make_relay(config(tmp_path, tcp, mport, sink, drain=30.0), mport)
        with relay:
            send_tcp(tcp, [sigma(n=i, risk=80) for i in range(500)])
            relay.wait_metric("relay_enqueued_total", 500, 15, sink="out")
        # -9: it had not exited 20 s after SIGTERM (the harness's stop_timeout) and was killed
        assert relay.returncode == 0, f"exit {relay.returncode}; the relay's log:\n{relay.stderr()[-3000:]}"
        try:
            qr.wait_for(500, 10)       # the stand-in's reader thread may lag the kernel a little
        except AssertionError:
            raise AssertionError(f"{len(qr.snapshot())} of 500 delivered before exit; the relay's log:\n"
                                 f"{relay.stderr()[-3000:]}") from None
        ids = {line.split("externalId=")[1].split("^")[0] for line in qr.snapshot()}
        assert len(ids) == 500


def test_queue_commands_dead_letters_and_replay(tmp_path, make_relay):
    from relay.config import load
    from relay.server import open_queue
    tcp, mport, port = free_port(), free_port(), free_port()
    sink = f'[sinks.out]\ntype = "syslog"\naddress = "127.0.0.1:{port}"\nconnect_timeout = 0.5\n'
    cfgfile = tmp_path / "relay.toml"
    cfgfile.write_text(config(tmp_path, tcp, mport, sink))
    cfg = str(cfgfile)
    # three events the destination rejected for good (e.g. XSOAR 400s) sit in the dead-letter table
    q = open_queue(load(cfg).relay.state_dir, load(cfg).sinks["out"])
    q.put_many([(f"<13>1 - h app - - - replayed {i}".encode(), {"dedup_key": f"k{i}"}) for i in range(3)])
    q.dead_letter(q.lease(10), "HTTP 400: bad request")
    q.close()
    p = relay_cli("queue", "status", "-c", cfg, "--json")
    assert p.returncode == 0, p.stderr
    (row,) = json.loads(p.stdout)
    assert row["sink"] == "out" and row["depth"] == 0 and row["dead_letters"] == 3
    p = relay_cli("queue", "status", "-c", cfg)
    assert b"out" in p.stdout and b"3" in p.stdout
    p = relay_cli("queue", "list", "-c", cfg, "out", "--dead", "--json")
    items = [json.loads(x) for x in p.stdout.decode().splitlines()]
    assert len(items) == 3 and all(it["reason"] == "HTTP 400: bad request" for it in items)
    assert items[0]["payload"].startswith("<13>1 - h app - - - replayed")
    p = relay_cli("queue", "replay", "-c", cfg, "out")
    assert p.returncode == 0 and b"3 event(s) moved back" in p.stdout, p.stderr
    p = relay_cli("queue", "status", "-c", cfg, "--json")
    assert json.loads(p.stdout)[0]["depth"] == 3 and json.loads(p.stdout)[0]["dead_letters"] == 0
    # the replayed events are delivered once the destination is there
    with QradarStandIn(port=port) as qr:
        with make_relay(cfgfile.read_text(), mport):
            got = qr.wait_for(3, 20)
    assert sorted(x.rsplit(" ", 1)[1] for x in got) == ["0", "1", "2"]
    p = relay_cli("queue", "purge", "-c", cfg, "out", "--dead", "--yes")
    assert p.returncode == 0 and b"0 event(s) deleted" in p.stdout
    p = relay_cli("queue", "list", "-c", cfg, "nope")
    assert p.returncode == 1 and b"no sink named 'nope'" in p.stderr


def _worker_pids(relay_pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = open(f"/proc/{d}/stat").read()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            try:
                cmd = open(f"/proc/{d}/cmdline", "rb").read()
            except OSError:
                continue
            if ppid == relay_pid and b"spawn_main" in cmd:  # not the multiprocessing resource tracker
                out.append(int(d))
    return out


def test_recv_object_reads_what_a_pipe_end_sends():
    """relay.workers.recv_object (the main process's reader of the workers' replies) reads the
    multiprocessing wire format: small and large messages in order, EOFError at a clean end,
    OSError for a message cut short (a worker killed mid-write)."""
    import multiprocessing as mp
    import struct
    import threading

    import pytest

    from relay.workers import recv_object
    a, b = mp.Pipe(duplex=True)
    msgs = [("ready", 0, 1), ("done", [(1, {"s": [(3, os.urandom(3 << 20), b"m" * 70000, None, 9)]}, {}, None, 0)],
                              None), ("counters", {"x": 1})]
    t = threading.Thread(target=lambda: [b.send(m) for m in msgs])   # 3 MiB: larger than the socket buffer
    t.start()
    assert [recv_object(a) for _ in msgs] == msgs
    t.join()
    b.close()
    with pytest.raises(EOFError):
        recv_object(a)
    a.close()
    a, b = mp.Pipe(duplex=True)
    os.write(b.fileno(), struct.pack("!i", 100) + b"x" * 10)
    b.close()
    with pytest.raises(OSError, match="end of file during message"):
        recv_object(a)
    a.close()


def test_worker_hand_overs_are_freed_without_the_cyclic_collector(tmp_path):
    """A hand-over to the workers (its group, its parts and the rows they rendered, ~600 bytes
    a message) is freed by reference counting once committed.  A part and its group refer to
    each other: while that cycle stayed, every settled hand-over waited for a full collection,
    rare in the daemon (relay/gctune.py), and the main process grew by ~200 MB per 300,000
    messages, each new page faulted in (issue 19)."""
    import asyncio
    import gc

    from relay import workers
    from relay.server import Server
    from tests.harness import run_async, until
    tcp = free_port()
    out = tmp_path / "out.leef"
    conf = tmp_path / "relay.toml"
    conf.write_text(config(tmp_path, tcp, 0, file_sink(out)).replace(
        'metrics_address = "127.0.0.1:0"', 'metrics_address = ""').replace("[relay]\n", "[relay]\nworkers = 2\n"))

    def alive() -> int:
        return sum(1 for o in gc.get_objects() if type(o) in (workers._Part, workers._Group))

    async def main():
        srv = Server(conf)
        await srv.start()
        gc.disable()        # after start: Server.start tunes the collector, and nothing may collect now
        try:
            loop = asyncio.get_running_loop()
            for r in range(3):   # reads of every size: parts for both workers, single parts
                msgs = [sigma(n=r * 5000 + i, risk=90) for i in range(5000 if r < 2 else 7)]
                await loop.run_in_executor(None, send_tcp, tcp, msgs)
            await until(lambda: len(lines_of(out)) >= 10007, 30, what="10,007 LEEF lines")
            await until(lambda: not srv.pool._order, 10, what="every part handed over")
            await until(lambda: alive() == 0, 10, what="no hand-over left alive", interval=0.2)
            return alive()
        finally:
            gc.enable()
            await srv.stop()
    assert run_async(main(), 90) == 0


def test_worker_processes_deliver_restart_and_reload(tmp_path, make_relay):
    tcp, mport = free_port(), free_port()
    out = tmp_path / "out.leef"
    cfgtext = config(tmp_path, tcp, mport, file_sink(out)).replace("[relay]\n", "[relay]\nworkers = 2\n")
    relay = make_relay(cfgtext, mport)
    with relay:
        send_tcp(tcp, [sigma(n=i, risk=90 if i % 2 else 10) for i in range(4000)])
        wait_until(lambda: len(lines_of(out)) >= 2000, 20, what="2000 LEEF lines")
        relay.wait_metric("relay_parsed_total", 4000, 10, source="tcp", format="rfc5424")
        relay.wait_metric("relay_routed_total", 2000, 10, route="high")
        # a worker dies: it is restarted and the relay keeps accepting
        pids = wait_until(lambda: _worker_pids(relay.proc.pid) if len(_worker_pids(relay.proc.pid)) == 2 else None,
                          10, what="two worker processes")
        os.kill(pids[0], signal.SIGKILL)
        relay.wait_metric("relay_worker_restarts_total", 1, 10)
        wait_until(lambda: len(_worker_pids(relay.proc.pid)) == 2, 15, what="the worker to be restarted")
        send_tcp(tcp, [sigma(n=10000 + i, risk=95) for i in range(100)])
        wait_until(lambda: len(lines_of(out)) >= 2100, 20, what="delivery after the restart")
        # reload reaches the workers: the threshold goes down to 5
        relay.config_path.write_text(cfgtext.replace("risk_score >= 70", "risk_score >= 5"))
        relay.proc.send_signal(signal.SIGHUP)
        relay.wait_metric("relay_config_reloads_total", 1, 10, result="applied")
        time.sleep(0.5)
        send_tcp(tcp, [sigma(n=20000 + i, risk=10) for i in range(50)])
        wait_until(lambda: len(lines_of(out)) >= 2150, 20, what="the reloaded rule in the workers")
    assert relay.returncode == 0
    ids = [line.split("externalId=")[1].split("^")[0] for line in lines_of(out)]
    assert len(ids) == len(set(ids)) == 2150

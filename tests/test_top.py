"""``relay top`` driven in tmux (an 80x24 terminal, as over SSH) against a running relay with
traffic and trouble: a TCP source with traffic, a UDP source with drops and parse errors, a
file sink that delivers, a syslog sink whose peer is down (queue, oldest age, retries), an
XSOAR sink that dead-letters (the emulator answers 400) and one blocked on auth (401).
The pane is captured and its figures compared with ``/metrics``; ``q`` quits.

Also: the parser and the screen builder on a fixed exposition (in process).
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from relay.top import build, snapshot
from tests.harness import LOOPBACK, free_port, relay_command, sigma_line, wait_until

TMUX = shutil.which("tmux")
#: where the captured pane is kept (a test artifact): $RELAY_ARTIFACTS, else .cache/artifacts
ARTIFACTS = Path(os.environ.get("RELAY_ARTIFACTS") or Path(__file__).resolve().parent.parent / ".cache" / "artifacts")
XSOAR_KEY = "top-xsoar-key"


def test_snapshot_and_screen_from_an_exposition():
    from rich.console import Console
    text = """# HELP relay_received_total x
relay_received_total{source="tcp_in"} 100
relay_parse_failed_total{reason="header",source="udp_in"} 3
relay_dropped_total{reason="empty",source="udp_in"} 2
relay_udp_kernel_drops_total{source="udp_in"} 5
relay_routed_total{route="high"} 40
relay_unrouted_total 7
relay_sent_total{sink="out"} 40
relay_queue_depth{sink="out"} 0.0
relay_queue_depth{sink="down"} 12.0
relay_queue_oldest_age_seconds{sink="out"} NaN
relay_queue_oldest_age_seconds{sink="down"} 700.0
relay_sink_up{sink="down"} 0.0
relay_send_errors_total{reason="connect",sink="down"} 3
relay_sink_up{sink="idle"} 0.0
relay_sink_blocked{sink="xs"} 1.0
relay_dlq_depth{sink="xs"} 4.0
relay_xsoar_request_seconds_bucket{le="+Inf",op="search",sink="xs"} 1
"""
    a = snapshot(text, t=0.0)
    assert a.sources["udp_in"]["drops"] == 7 and a.sources["udp_in"]["reasons"] == {"empty": 2.0, "kernel": 5.0}
    assert a.sinks["down"]["oldest"] == 700.0 and a.sinks["out"]["oldest"] != a.sinks["out"]["oldest"]  # NaN
    b = snapshot(text.replace('relay_received_total{source="tcp_in"} 100', 'relay_received_total{source="tcp_in"} 300'),
                 t=2.0)
    con = Console(width=80, height=24, record=True, color_system=None)
    con.print(build(b, a, url="http://127.0.0.1:9514"))
    out = con.export_text()
    assert max(len(x) for x in out.splitlines()) <= 80
    tcp = next(x for x in out.splitlines() if x.startswith("tcp_in"))
    assert tcp.split()[1:3] == ["100", "300"]          # 200 in 2 s; 300 received
    down = next(x for x in out.splitlines() if x.startswith("down"))
    assert "12m" in down and "DOWN" in down
    assert next(x for x in out.splitlines() if x.startswith("idle")).split()[-1] == "idle"   # not DOWN
    assert "AUTH" in next(x for x in out.splitlines() if x.startswith("xs"))


def _config(mport, tcp, udp, out, down_port, xsoar_url) -> str:
    return f"""
[relay]
state_dir = "state"
metrics_address = "{LOOPBACK}:{mport}"
drain_timeout = 2

[relay.retry]
base = 0.2
cap = 0.5

[sources.tcp_in]
type = "tcp"
address = "{LOOPBACK}:{tcp}"

[sources.udp_in]
type = "udp"
address = "{LOOPBACK}:{udp}"

[routes.all]
match = 'true'
sinks = ["out", "down"]

[routes.incidents]
match = 'app_name == "SigmaIncident"'
sinks = ["xsoar", "xsoar_bad_key"]

[sinks.out]
type = "file"
path = "{out}"
format = "leef"

[sinks.down]
type = "syslog"
address = "{LOOPBACK}:{down_port}"
format = "leef"

[sinks.xsoar]
type = "xsoar"
url = "{xsoar_url}"
api_key_file = "xsoar.key"
timeout = 2.0

[sinks.xsoar.retry]
base = 0.1
cap = 0.2
max_attempts = 1

[sinks.xsoar_bad_key]
type = "xsoar"
url = "{xsoar_url}"
api_key_file = "wrong.key"
timeout = 2.0
"""


def _tmux(*args, check=True):
    return subprocess.run([TMUX, "-L", SOCKET, *args], capture_output=True, text=True, timeout=30, check=check)


SOCKET = f"relay-top-test-{os.getpid()}"


@pytest.mark.skipif(TMUX is None, reason="needs tmux (scripts/test-deps installs it)")
def test_relay_top_in_tmux_matches_metrics(tmp_path, make_relay, make_xsoar):
    (tmp_path / "xsoar.key").write_text(XSOAR_KEY)
    (tmp_path / "wrong.key").write_text("not-the-key")
    xs = make_xsoar(api_key=XSOAR_KEY, auth_id=None)
    xs.fail(400, op="create")             # creates refused: the xsoar sink dead-letters
    mport, tcp, udp, down = free_port(), free_port(), free_port(), free_port()
    relay = make_relay(_config(mport, tcp, udp, tmp_path / "out.log", down, xs.url), mport, tmp_path,
                       tcp_port=tcp).start()
    relay.send([sigma_line(f"INC-TOP-{i}") for i in range(30)])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        for _ in range(4):
            u.sendto(b"", (LOOPBACK, udp))                                  # dropped: empty
        for i in range(3):
            u.sendto(b"<13>1 not a syslog message %d" % i, (LOOPBACK, udp))  # parse errors
    relay.wait_metric("relay_sent_total", 33, timeout=60, sink="out")
    relay.wait_metric("relay_dlq_depth", 30, timeout=60, sink="xsoar")
    relay.wait_metric("relay_sink_blocked", 1, timeout=60, sink="xsoar_bad_key")
    relay.wait_metric("relay_send_errors_total", 1, timeout=60, sink="down")
    relay.wait_metric("relay_dropped_total", 4, timeout=60, source="udp_in", reason="empty")

    cmd = " ".join(relay_command() + ["top", "--url", f"http://{LOOPBACK}:{mport}"])
    _tmux("new-session", "-d", "-s", "top", "-x", "80", "-y", "24", f"TERM=xterm-256color {cmd}")
    try:
        def screen():
            return _tmux("capture-pane", "-p", "-t", "top").stdout

        def settled():
            s = screen()
            # every table drawn, and a second scrape made (rates shown, not "-")
            return s if "xsoar_bad_key" in s and re.search(r"^down\s", s, re.M) and \
                re.search(r"^tcp_in\s+\d", s, re.M) else None
        text = wait_until(settled, 60, what="relay top drew its tables")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "relay-top.txt").write_text(text)
        # figures that do not move any more (the traffic stopped): the pane against /metrics
        m = relay.metrics()
        lines = text.splitlines()
        assert len(lines) <= 24 and all(len(x) <= 80 for x in lines)

        def row(name):
            return next(x for x in lines if re.match(rf"^{re.escape(name)}\s", x)).split()
        tcp_row = row("tcp_in")
        assert int(tcp_row[2]) == m.value("relay_received_total", source="tcp_in") == 30
        udp_row = row("udp_in")
        assert int(udp_row[3]) == m.value("relay_parse_failed_total", source="udp_in") == 3
        assert int(udp_row[4]) == m.value("relay_dropped_total", source="udp_in") + \
            m.value("relay_udp_kernel_drops_total", source="udp_in")
        assert "empty:4" in " ".join(udp_row[5:])
        assert int(row("all")[2]) == m.value("relay_routed_total", route="all") == 33
        assert int(row("incidents")[2]) == m.value("relay_routed_total", route="incidents") == 30
        out_row = row("out")
        assert int(out_row[2]) == m.value("relay_sent_total", sink="out") == 33 and out_row[-1] == "ok"
        down_row = row("down")
        assert int(down_row[3]) == m.value("relay_queue_depth", sink="down") == 33 and down_row[-1] == "DOWN"
        assert int(down_row[5]) == m.value("relay_retried_total", sink="down")
        xs_row = row("xsoar")
        assert int(xs_row[6]) == m.value("relay_dlq_depth", sink="xsoar") == 30
        bad_row = row("xsoar_bad_key")
        assert bad_row[-1] == "AUTH" and int(bad_row[3]) == m.value("relay_queue_depth", sink="xsoar_bad_key") == 30
        # colour for trouble: the escape sequences of the pane
        esc = _tmux("capture-pane", "-p", "-e", "-t", "top").stdout
        assert "\x1b[" in esc and "AUTH" in esc
        # a rate: traffic now, the in/s column moves, then q quits
        relay.send([sigma_line(f"INC-TOP-B{i}") for i in range(50)])
        wait_until(lambda: (r := re.search(r"^tcp_in\s+(\S+)\s+(\d+)", screen(), re.M)) and int(r[2]) == 80,
                   30, what="relay top shows the new total")
        _tmux("send-keys", "-t", "top", "q")
        wait_until(lambda: _tmux("has-session", "-t", "top", check=False).returncode != 0, 30,
                   what="relay top quit on q")
    finally:
        _tmux("kill-server", check=False)

#!/usr/bin/env python3
"""End-to-end benchmark: the relay daemon against syslog-ng and rsyslog, same job, same traffic, one sitting.

The job (reference/performance.md): RFC 5424 SigmaIncident messages (~240 bytes, 8 SD params,
small JSON body) -> parse the SD -> keep ``risk_score >= 70`` (numeric) -> LEEF 2.0 line ->
forward over TCP (LF framing) to a sink that counts lines.

* relay:   ``relay run`` (subprocess) with a generated config: TCP + UDP sources, route
           ``app_name == "SigmaIncident" and risk_score >= 70`` -> ``syslog`` sink (tcp, lf,
           leef) with its durable queue (``synchronous`` FULL by default), metrics on.
* rsyslog: our own ``rsyslogd -n -f conf -i pid`` (own work dir, no imuxsock/imklog): imtcp/imudp
           -> mmpstrucdata (sd_name.lowercase off) -> ``cnum(...risk_score) >= 70`` -> LEEF string
           template -> omfwd TCP (LF framing).  In-memory queues (rsyslog's default).
* syslog-ng: Debian's syslog-ng-core (3.38), which conflicts with rsyslog as an installed package
           and so is never installed: ``apt-get download`` (plus any library package it depends on
           that is not installed) into .cache/bench/syslog-ng/debs, ``dpkg-deb -x`` into
           .cache/bench/syslog-ng/root, once (syslog_ng_install(); if that fails the system is
           skipped with the reason printed).  Run as ``syslog-ng --module-path ROOT/usr/lib/syslog-ng/3.38
           --no-caps -F -f conf -R persist -p pid -c ctl`` with LD_LIBRARY_PATH into ROOT (own work
           dir, nothing under /var): network(transport(tcp|udp)) sources with flags(syslog-protocol)
           (RFC 5424, SD into ${.SDATA.incident@32473.*}) -> filter ``"${PROGRAM}" eq "SigmaIncident"
           and "${.SDATA.incident@32473.risk_score}" >= "70"`` (>= is the numeric operator in 3.38)
           -> the same LEEF line as rsyslog's template -> network() TCP destination (LF).  In-memory
           queues (syslog-ng's default; no disk-buffer) with flags(flow-control) on the log path, so a
           full output queue slows the TCP sources instead of dropping, like rsyslog's imtcp; the TCP
           source window ``log-iw-size`` is ``--syslog-ng-window`` (10,000 for all connections; the
           default 100 would give each connection 10 messages in flight), the destination's
           log-fifo-size twice that.

TCP: N messages (-n, default 1,000,000) are generated into a file once; each run starts a
fresh counting sink and a fresh daemon, sends the file with ``socat`` (or a Python sendfile
sender) over 1 connection (``--conns 1,4`` adds 4 connections, the file split in 4), and
measures wall time from just before the first byte is sent to the last line received by the
sink, msgs/s (input messages / wall time), and the daemon's CPU: utime+stime from
/proc/PID/stat of the daemon and all its descendants (threads included; reaped children via
cutime/cstime), from just before sending to ``--settle`` seconds after the last line (the
relay settles and acks its queue up to 1 s after sending; that work belongs to the
messages).  Variants: 30 % of messages forwarded and all forwarded (``--forward 30,100``).
Runs alternate in --systems order (relay, syslog-ng, rsyslog, relay, ...; ``--rounds``, default 2);
medians are shown, with the ratios relay/syslog-ng and relay/rsyslog (throughput, CPU per message).

UDP: a paced sender process offers ``--udp-rate`` (50,000) datagrams/s for ``--udp-seconds``
(10) to the daemon's UDP source (SO_RCVBUF 4 MiB for both), everything forwarded to the same
counting sink; reported: % delivered at the sink, the kernel's drops for the receiving socket
(/proc/net/udp, and relay_udp_kernel_drops_total from the relay's metrics), CPU.

``--profile``: one extra relay TCP run (not in the figures) under py-spy (``pip install py-spy``
into .venv; spawn mode) with per-thread stacks; prints the top functions by self and total
time in microseconds per message.  Without py-spy it falls back to cProfile (main thread only).

Run from the repository root (loopback only, every wait bounded, every process it starts is
stopped):

    .venv/bin/python bench/bench_e2e.py [-n 1000000] [--rounds 2] [--conns 1,4] [--forward 30,100]
        [--systems relay:w2,syslog-ng,rsyslog] [--no-udp] [--no-tcp] [--sync FULL|NORMAL] [--workers N]
        [--profile] [--json out.json]

rsyslog: ``scripts/test-deps`` (or ``apt-get install -y rsyslog``); the system service must not
be running (it is not touched here; a warning is printed if another rsyslogd runs).
syslog-ng: nothing to do beforehand on Debian/Ubuntu with apt sources (the first run downloads it;
delete .cache/bench/syslog-ng to fetch it again).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_PY = REPO / ".venv" / "bin" / "python"
if not VENV_PY.exists():           # a git worktree without its own .venv: the interpreter running this
    VENV_PY = Path(sys.executable)
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CTX = mp.get_context("fork")

# ----------------------------------------------------------------------------- traffic

_ACTORS = ("jdoe", "asmith", "bwong", "svc-backup", "mgarcia", "tkumar")
_ENTITIES = ("Primary Site", "DR Site", "HQ", "Branch 12")
_STATUS = ("OPEN", "OPEN", "IN_PROGRESS", "CLOSED")
_FMT = ('<134>1 2026-03-13T04:%02d:%02d.%03dZ rx-%02d SigmaIncident %d created [incident@32473 '
        'id="INC-%08x" actor="%s" entity="%s" status="%s" risk_score="%d" alarm_count="%d" '
        'sigma_alert_count="%d" threat_case_count="%d"] {"incident_id":"INC-%08x","risk_score":%d}\n')


def message(i: int, high: bool) -> str:
    """The i-th message; risk_score >= 70 when ``high``."""
    risk = 70 + (i * 7) % 30 if high else (i * 13) % 70
    return _FMT % ((i // 60000) % 60, (i // 1000) % 60, i % 1000, i % 20, 1000 + i % 30000, i,
                   _ACTORS[i % 6], _ENTITIES[i % 4], _STATUS[i % 4], risk, 1 + i % 40, i % 7, i % 3,
                   i, risk)


def is_high(i: int, percent: int) -> bool:
    return percent >= 100 or (i * 37) % 100 < percent   # evenly spread, deterministic


def generate(path: Path, start: int, count: int, percent: int) -> int:
    """Write messages start..start+count-1 (the last one always forwarded); -> forwarded count."""
    fwd = 0
    out = []
    with open(path, "w", encoding="ascii") as f:
        for i in range(start, start + count):
            high = is_high(i, percent) or i == start + count - 1
            fwd += high
            out.append(message(i, high))
            if len(out) >= 20000:
                f.write("".join(out))
                out.clear()
        f.write("".join(out))
    return fwd


# ----------------------------------------------------------------------------- /proc CPU

def _stat(pid: int):
    """-> (ppid, utime+stime, cutime+cstime) in ticks, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2:].split()
    return int(rest[1]), int(rest[11]) + int(rest[12]), int(rest[13]) + int(rest[14])


def tree_cpu(root: int) -> float:
    """CPU seconds of ``root`` and every live descendant (threads included) plus reaped children."""
    st = _stat(root)
    if st is None:
        return float("nan")
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            s = _stat(int(d))
            if s is not None:
                kids.setdefault(s[0], []).append(int(d))
    total = st[1] + st[2]
    todo = list(kids.get(root, ()))
    while todo:
        p = todo.pop()
        s = _stat(p)
        if s is not None:
            total += s[1]
            todo.extend(kids.get(p, ()))
    return total / CLK_TCK


def task_cpu(pid: int) -> dict[int, float]:
    """CPU seconds per thread (tid) of one process."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tids:
        try:
            with open(f"/proc/{pid}/task/{t}/stat", "rb") as f:
                rest = f.read().rpartition(b")")[2].split()
            out[int(t)] = (int(rest[11]) + int(rest[12])) / CLK_TCK
        except (OSError, ValueError, IndexError):
            pass
    return out


def proc_udp_drops(port: int) -> int | None:
    """Kernel drop count of the UDP socket bound to 127.0.0.1:port (/proc/net/udp)."""
    want = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/udp") as f:
            next(f)
            for line in f:
                p = line.split()
                if len(p) >= 13 and p[1] == want:
                    return int(p[12])
    except (OSError, ValueError, StopIteration):
        pass
    return None


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def load() -> str:
    return "load %.2f %.2f %.2f" % os.getloadavg()


# ----------------------------------------------------------------------------- counting sink

def _sink_main(ls: socket.socket, count, first, last, conns, sample, stop) -> None:
    sel = selectors.DefaultSelector()
    ls.setblocking(False)
    sel.register(ls, selectors.EVENT_READ, None)
    buf = bytearray(1 << 20)
    deadline = time.monotonic() + 3600
    while not stop.is_set() and time.monotonic() < deadline:
        for key, _ in sel.select(0.2):
            if key.data is None:
                try:
                    c, _ = ls.accept()
                except OSError:
                    continue
                c.setblocking(False)
                conns.value += 1
                sel.register(c, selectors.EVENT_READ, 1)
                continue
            s = key.fileobj
            try:
                n = s.recv_into(buf)
            except BlockingIOError:
                continue
            except OSError:
                n = 0
            if n == 0:
                sel.unregister(s)
                s.close()
                continue
            now = time.monotonic()
            if first.value == 0.0:
                first.value = now
                k = min(n, len(sample))
                sample[:k] = bytes(buf[:k])
            k = buf.count(b"\n", 0, n)
            if k:
                count.value += k
                last.value = now


class CountingSink:
    """A child process accepting TCP connections on 127.0.0.1 and counting LF-terminated lines."""

    def __init__(self) -> None:
        self._ls = socket.socket()
        self._ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._ls.bind((HOST, 0))
        self._ls.listen(64)
        self.port = self._ls.getsockname()[1]
        self._count = CTX.RawValue("q", 0)
        self._first = CTX.RawValue("d", 0.0)
        self._last = CTX.RawValue("d", 0.0)
        self._conns = CTX.RawValue("q", 0)
        self._sample = CTX.RawArray("c", 1024)
        self._stop = CTX.Event()
        self._p = CTX.Process(target=_sink_main, args=(self._ls, self._count, self._first, self._last,
                                                       self._conns, self._sample, self._stop), daemon=True)
        self._p.start()
        self._ls.close()

    count = property(lambda self: self._count.value)
    last = property(lambda self: self._last.value)
    first = property(lambda self: self._first.value)
    connections = property(lambda self: self._conns.value)

    @property
    def first_line(self) -> str:
        return self._sample.raw.split(b"\n", 1)[0].rstrip(b"\0").decode("utf-8", "replace")

    def close(self) -> None:
        self._stop.set()
        self._p.join(5)
        if self._p.is_alive():
            self._p.kill()
            self._p.join(2)


# ----------------------------------------------------------------------------- daemons

def _stop_proc(p: subprocess.Popen, timeout: float) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def _wait_port(port: int, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {HOST}:{port} after {timeout} s")


def relay_supports_workers() -> bool:
    return '"workers"' in (REPO / "relay" / "config.py").read_text(encoding="utf-8")


class RelayDaemon:
    name = "relay"

    def __init__(self, work: Path, sink_port: int, args, profile: str | None = None, workers: int = 0,
                 pure: bool = False) -> None:
        self.work = work
        self.tcp_port = free_port()
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.metrics_port = free_port()
        state = work / "state"
        workers = f"workers = {workers}\n" if workers else ""
        self.conf = work / "relay.toml"
        self.conf.write_text(f"""# written by bench/bench_e2e.py
[relay]
state_dir = "{state}"
metrics_address = "{HOST}:{self.metrics_port}"
drain_timeout = 3.0
log_level = "warning"
{workers}
[relay.queue]
synchronous = "{args.sync}"

[sources.tcp]
type = "tcp"
address = "{HOST}:{self.tcp_port}"

[sources.udp]
type = "udp"
address = "{HOST}:{self.udp_port}"
receive_buffer = {args.udp_rcvbuf}

[routes.high_risk]
match = 'app_name == "SigmaIncident" and risk_score >= 70'
sinks = ["siem"]

[sinks.siem]
type = "syslog"
address = "{HOST}:{sink_port}"
protocol = "tcp"
framing = "lf"
format = "leef"
""", encoding="utf-8")
        self.log = open(work / "relay.log", "wb")
        cmd = [str(VENV_PY), "-m", "relay.cli", "run", "--config", str(self.conf)]
        self.profile_out = None
        if profile == "py-spy":
            self.profile_out = work / "pyspy.raw"
            cmd = [str(REPO / ".venv" / "bin" / "py-spy"), "record", "--format", "raw", "--threads",
                   "--subprocesses", "--rate", str(args.profile_rate), "-o", str(self.profile_out), "--"] + cmd
        elif profile == "cprofile":
            self.profile_out = work / "relay.prof"
            cmd = [str(VENV_PY), "-m", "cProfile", "-o", str(self.profile_out), "-m", "relay.cli", "run",
                   "--config", str(self.conf)]
        env = {k: v for k, v in os.environ.items() if k != "RELAY_PURE"}
        if pure:            # relay+pure: the pure Python hot path (parsers/native.py)
            env["RELAY_PURE"] = "1"
        self.proc = subprocess.Popen(cmd, cwd=str(REPO), stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env)
        self.pid = self.proc.pid
        self._wait_ready(30)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay exited with {self.proc.returncode}: "
                                   f"{(self.work / 'relay.log').read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self.metrics_port}/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("relay not ready after %s s" % timeout)

    def metrics(self) -> dict[str, float]:
        """Prometheus text -> {'name{labels}': value} (empty when unreachable)."""
        out: dict[str, float] = {}
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.metrics_port}/metrics", timeout=5) as r:
                text = r.read().decode("utf-8", "replace")
        except OSError:
            return out
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                try:
                    out[k] = float(v)
                except ValueError:
                    pass
        return out

    def attach_tap(self, rate: float) -> None:
        """``relay tap --route high_risk --rate R`` (the default parsed view) for the whole run,
        its output read and thrown away: the system ``relay+tap`` (issue 21: a tap must cost the
        pipeline under 5 %).  The tap client is not the daemon's child: its CPU is not counted."""
        self.tap_proc = subprocess.Popen(
            [str(VENV_PY), "-m", "relay.cli", "tap", "--url", f"http://{HOST}:{self.metrics_port}", "--route",
             "high_risk", "--rate", repr(rate)], cwd=str(REPO), stdout=subprocess.DEVNULL,
            stderr=open(self.work / "tap.log", "wb"), stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:     # attached: relay_tap_sessions = 1
            if (self.metrics() or {}).get("relay_tap_sessions") == 1:
                return
            time.sleep(0.1)
        raise RuntimeError(f"the tap did not attach: {(self.work / 'tap.log').read_text()[-500:]}")

    def relay_pid(self) -> int:
        """The relay's own pid (the child of py-spy / the same process for cProfile and no profiler)."""
        if self.profile_out is None or not str(self.profile_out).endswith(".raw"):
            return self.pid
        for _ in range(50):
            kids = [int(d) for d in os.listdir("/proc") if d.isdigit() and (_stat(int(d)) or (0,))[0] == self.pid]
            if kids:
                return kids[0]
            time.sleep(0.1)
        return self.pid

    def stop(self) -> None:
        tap = getattr(self, "tap_proc", None)
        if tap is not None:
            _stop_proc(tap, 10)
        if self.profile_out is not None and self.proc.poll() is None:
            # py-spy / cProfile wrap the relay: stop the relay itself, the wrapper then writes its output
            kids = [int(d) for d in os.listdir("/proc") if d.isdigit() and (_stat(int(d)) or (0,))[0] == self.pid]
            for k in kids:
                try:
                    os.kill(k, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            if not kids:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        _stop_proc(self.proc, 15)
        self.log.close()


RSYSLOG_LEEF = (
    "<%pri%>1 %timestamp:::date-rfc3339% %hostname% %app-name% - %msgid% - "
    "LEEF:2.0|Relay|SOC Relay|1.0|%msgid%|^|cat=incident^devTime=%timestamp:::date-rfc3339%"
    "^usrName=%$!rfc5424-sd!incident@32473!actor%^status=%$!rfc5424-sd!incident@32473!status%"
    "^riskScore=%$!rfc5424-sd!incident@32473!risk_score%^externalId=%$!rfc5424-sd!incident@32473!id%"
    "^actor=%$!rfc5424-sd!incident@32473!actor%^entity=%$!rfc5424-sd!incident@32473!entity%"
    "^alarmCount=%$!rfc5424-sd!incident@32473!alarm_count%"
    "^sigmaAlertCount=%$!rfc5424-sd!incident@32473!sigma_alert_count%"
    "^threatCaseCount=%$!rfc5424-sd!incident@32473!threat_case_count%\\n")


def rsyslogd_path() -> str | None:
    return shutil.which("rsyslogd") or next((p for p in ("/usr/sbin/rsyslogd", "/sbin/rsyslogd")
                                             if os.access(p, os.X_OK)), None)


class RsyslogDaemon:
    name = "rsyslog"

    def __init__(self, work: Path, sink_port: int, args) -> None:
        self.work = work
        spool = work / "spool"
        spool.mkdir(parents=True, exist_ok=True)
        self.tcp_port = free_port()
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.conf = work / "rsyslog.conf"
        self.conf.write_text(f"""# written by bench/bench_e2e.py: no imuxsock, no imklog, own work directory
global(workDirectory="{spool}" maxMessageSize="64k" processInternalMessages="on")
module(load="imtcp")
module(load="imudp")
module(load="mmpstrucdata")
template(name="leef" type="string" string="{RSYSLOG_LEEF}")
ruleset(name="bench") {{
  action(type="mmpstrucdata" sd_name.lowercase="off")
  if $app-name == "SigmaIncident" and cnum($!rfc5424-sd!incident@32473!risk_score) >= 70 then {{
    action(type="omfwd" target="{HOST}" port="{sink_port}" protocol="tcp" TCP_Framing="traditional"
           template="leef")
  }}
}}
input(type="imtcp" address="{HOST}" port="{self.tcp_port}" ruleset="bench")
input(type="imudp" address="{HOST}" port="{self.udp_port}" ruleset="bench" rcvbufSize="{args.udp_rcvbuf}")
""", encoding="utf-8")
        self.log = open(work / "rsyslogd.log", "wb")
        exe = rsyslogd_path()
        if exe is None:
            raise RuntimeError("rsyslogd not found (scripts/test-deps or apt-get install -y rsyslog)")
        self.proc = subprocess.Popen([exe, "-n", "-f", str(self.conf), "-i", str(work / "rsyslogd.pid")],
                                     stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        _wait_port(self.tcp_port, 20, self.proc)

    def metrics(self) -> dict[str, float]:
        return {}

    def stop(self) -> None:
        _stop_proc(self.proc, 15)
        self.log.close()


# syslog-ng: Debian's syslog-ng-core conflicts with rsyslog as an installed package, so it is never
# installed: the .deb (and any library package it depends on that is not installed) is fetched with
# ``apt-get download`` into SYSLOG_NG_CACHE and unpacked with ``dpkg-deb -x`` into a private root,
# once; the binary then runs from there with LD_LIBRARY_PATH and --module-path pointing into it.
SYSLOG_NG_CACHE = REPO / ".cache" / "bench" / "syslog-ng"
SYSLOG_NG_PACKAGE = "syslog-ng-core"
#: modules the benchmark's configuration loads (network()/syslog-protocol, the template functions)
SYSLOG_NG_MODULES = ("libafsocket.so", "libsyslogformat.so", "libbasicfuncs.so")

SYSLOG_NG_SD = "${.SDATA.incident@32473.%s}"
SYSLOG_NG_TS = "${S_YEAR}-${S_MONTH}-${S_DAY}T${S_HOUR}:${S_MIN}:${S_SEC}.${S_MSEC}Z"   # rsyslog's form (UTC, "Z")
SYSLOG_NG_LEEF = (
    "<${PRI}>1 " + SYSLOG_NG_TS + " ${HOST} ${PROGRAM} - ${MSGID} - "
    "LEEF:2.0|Relay|SOC Relay|1.0|${MSGID}|^|cat=incident^devTime=" + SYSLOG_NG_TS
    + "^usrName=" + SYSLOG_NG_SD % "actor" + "^status=" + SYSLOG_NG_SD % "status"
    + "^riskScore=" + SYSLOG_NG_SD % "risk_score" + "^externalId=" + SYSLOG_NG_SD % "id"
    + "^actor=" + SYSLOG_NG_SD % "actor" + "^entity=" + SYSLOG_NG_SD % "entity"
    + "^alarmCount=" + SYSLOG_NG_SD % "alarm_count"
    + "^sigmaAlertCount=" + SYSLOG_NG_SD % "sigma_alert_count"
    + "^threatCaseCount=" + SYSLOG_NG_SD % "threat_case_count" + "\\n")


def _syslog_ng_paths(root: Path) -> dict:
    libdirs = [root / "usr" / "lib" / "syslog-ng"]
    for base in (root / "usr" / "lib", root / "lib"):
        libdirs += sorted(p for p in base.glob("*-linux-gnu") if p.is_dir())
    mods = sorted((root / "usr" / "lib" / "syslog-ng").glob("[0-9]*"))
    return {"root": root, "exe": root / "usr" / "sbin" / "syslog-ng",
            "ld_library_path": ":".join(str(p) for p in libdirs),
            "module_path": str(mods[-1]) if mods else str(root / "usr" / "lib" / "syslog-ng")}


def _pkg_installed(name: str) -> bool:
    r = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Status}", name], capture_output=True, text=True)
    return r.returncode == 0 and r.stdout.strip() == "installed"


def _apt_download(pkg: str, debs: Path) -> Path:
    """``apt-get download PKG`` into ``debs`` -> the .deb (RuntimeError with apt's output if it fails)."""
    print(f"syslog-ng: apt-get download {pkg} -> {debs}", flush=True)
    debs.chmod(0o777)          # apt's _apt sandbox user may write there (else apt warns and downloads as root)
    before = set(debs.glob("*.deb"))
    r = subprocess.run(["apt-get", "download", "-q", pkg], cwd=str(debs), capture_output=True, text=True,
                       timeout=300)
    got = sorted(set(debs.glob("*.deb")) - before) or sorted(debs.glob(f"{pkg}_*.deb"))
    if r.returncode != 0 or not got:
        raise RuntimeError(f"apt-get download {pkg} failed (rc {r.returncode}): "
                           f"{(r.stderr or r.stdout).strip()[-800:]}")
    return got[-1]


def _deb_extract(deb: Path, root: Path) -> None:
    print(f"syslog-ng: dpkg-deb -x {deb.name} {root}", flush=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, capture_output=True, timeout=120)


def _missing_libs(paths: dict) -> list[str]:
    """Shared libraries ldd cannot resolve for the binary and the modules the benchmark uses."""
    env = dict(os.environ, LD_LIBRARY_PATH=paths["ld_library_path"])
    missing: set[str] = set()
    for f in [paths["exe"]] + [Path(paths["module_path"]) / m for m in SYSLOG_NG_MODULES]:
        r = subprocess.run(["ldd", str(f)], capture_output=True, text=True, env=env)
        missing.update(line.split()[0] for line in r.stdout.splitlines() if "not found" in line)
    return sorted(missing)


def syslog_ng_version(paths: dict) -> str:
    env = dict(os.environ, LD_LIBRARY_PATH=paths["ld_library_path"])
    r = subprocess.run([str(paths["exe"]), "--version"], capture_output=True, text=True, env=env, timeout=30)
    m = re.search(r"Revision:\s*(\S+)", r.stdout) or re.search(r"syslog-ng \S+ \(([^)]+)\)", r.stdout)
    return m.group(1) if m else r.stdout.strip().splitlines()[0] if r.stdout.strip() else "?"


def syslog_ng_install(cache: Path = SYSLOG_NG_CACHE) -> dict | None:
    """The private syslog-ng (downloaded and unpacked once into ``cache``) -> its paths, or None
    after printing why not.  Nothing is installed: ``apt-get download`` + ``dpkg-deb -x`` only.

    Library packages syslog-ng-core depends on are fetched and unpacked beside it only when they
    are not installed on the host (Debian 12 with rsyslog has them all); ``ldd`` then checks that
    the binary and the modules the benchmark uses resolve every library."""
    root, debs, ready = cache / "root", cache / "debs", cache / "READY"
    paths = _syslog_ng_paths(root)
    if ready.exists() and paths["exe"].exists():
        print(f"syslog-ng: using the cached copy in {cache} ({ready.read_text().strip()})", flush=True)
        return paths
    try:
        if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
            raise RuntimeError("apt-get / dpkg-deb not found (a Debian or Ubuntu host is needed)")
        shutil.rmtree(root, ignore_errors=True)
        ready.unlink(missing_ok=True)
        debs.mkdir(parents=True, exist_ok=True)
        root.mkdir(parents=True, exist_ok=True)
        deb = _apt_download(SYSLOG_NG_PACKAGE, debs)
        _deb_extract(deb, root)
        depends = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"], capture_output=True, text=True,
                                 check=True).stdout
        for clause in depends.split(","):
            alts = [a.strip().split()[0].split(":")[0] for a in clause.split("|") if a.strip()]
            libs = [a for a in alts if a.startswith("lib")]
            if not libs or any(_pkg_installed(a) for a in alts):
                continue
            print(f"syslog-ng: dependency {libs[0]} is not installed: fetched and unpacked beside it", flush=True)
            _deb_extract(_apt_download(libs[0], debs), root)
        paths = _syslog_ng_paths(root)
        if not paths["exe"].exists():
            raise RuntimeError(f"{paths['exe']} not in the package")
        missing = _missing_libs(paths)
        if missing:
            raise RuntimeError(f"unresolved shared libraries (ldd): {', '.join(missing)}")
        version = syslog_ng_version(paths)
        ready.write_text(f"syslog-ng {version} from {deb.name}\n", encoding="utf-8")
        print(f"syslog-ng: ready: {paths['exe']} (syslog-ng {version}), LD_LIBRARY_PATH={paths['ld_library_path']}, "
              f"--module-path={paths['module_path']}", flush=True)
        return paths
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        print(f"syslog-ng: NOT AVAILABLE, the system syslog-ng is skipped: {e}", file=sys.stderr, flush=True)
        return None


class SyslogNgDaemon:
    name = "syslog-ng"

    def __init__(self, work: Path, sink_port: int, args, paths: dict) -> None:
        self.work = work
        self.tcp_port = free_port()
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.conf = work / "syslog-ng.conf"
        win = args.syslog_ng_window
        self.conf.write_text(f"""@version: 3.38
# written by bench/bench_e2e.py: own work directory, no system() / internal() source, no /var
options {{
  stats-freq(0); keep-hostname(yes); chain-hostnames(no); use-dns(no); use-fqdn(no); dns-cache(no);
  keep-timestamp(yes); log-msg-size(65536);
}};
source s_tcp {{
  network(transport(tcp) ip("{HOST}") port({self.tcp_port}) flags(syslog-protocol)
          max-connections(10) log-iw-size({win}));
}};
source s_udp {{
  network(transport(udp) ip("{HOST}") port({self.udp_port}) flags(syslog-protocol) so-rcvbuf({args.udp_rcvbuf}));
}};
template t_leef {{ template("{SYSLOG_NG_LEEF}"); }};
filter f_high {{
  "${{PROGRAM}}" eq "SigmaIncident" and "${{.SDATA.incident@32473.risk_score}}" >= "70"
}};
destination d_siem {{
  network("{HOST}" port({sink_port}) transport(tcp) template(t_leef) time-zone("UTC") log-fifo-size({2 * win}));
}};
log {{ source(s_tcp); source(s_udp); filter(f_high); destination(d_siem); flags(flow-control); }};
""", encoding="utf-8")
        self.log = open(work / "syslog-ng.log", "wb")
        env = dict(os.environ, LD_LIBRARY_PATH=paths["ld_library_path"])
        self.proc = subprocess.Popen(
            [str(paths["exe"]), "--module-path", paths["module_path"], "--no-caps", "-F", "-f", str(self.conf),
             "-R", str(work / "syslog-ng.persist"), "-p", str(work / "syslog-ng.pid"),
             "-c", str(work / "syslog-ng.ctl")],
            cwd=str(work), env=env, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        try:
            _wait_port(self.tcp_port, 20, self.proc)
        except RuntimeError as e:
            _stop_proc(self.proc, 5)
            self.log.close()
            raise RuntimeError(f"syslog-ng: {e}: {(work / 'syslog-ng.log').read_text(errors='replace')[-2000:]}")

    def metrics(self) -> dict[str, float]:
        return {}

    def stop(self) -> None:
        _stop_proc(self.proc, 15)
        self.log.close()


# ----------------------------------------------------------------------------- senders

def _sendfile_main(path: str, port: int) -> None:
    with socket.create_connection((HOST, port)) as s, open(path, "rb") as f:
        s.sendfile(f)
        s.shutdown(socket.SHUT_WR)


def start_tcp_senders(files: list[Path], port: int, kind: str) -> list:
    procs = []
    for f in files:
        if kind == "socat":
            procs.append(subprocess.Popen(["socat", "-u", f"OPEN:{f}", f"TCP:{HOST}:{port}"],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
        else:
            p = CTX.Process(target=_sendfile_main, args=(str(f), port), daemon=True)
            p.start()
            procs.append(p)
    return procs


def stop_senders(procs: list) -> None:
    for p in procs:
        if isinstance(p, subprocess.Popen):
            if p.poll() is None:
                p.kill()
            p.wait(5)
        else:
            p.join(1)
            if p.is_alive():
                p.kill()
                p.join(2)


def _udp_sender_main(port: int, msgs: list[bytes], rate: float, seconds: float, go, result) -> None:
    """Paced: at any moment about rate * elapsed datagrams sent; batches of <= 500 between time checks."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    s.connect((HOST, port))
    send = s.send
    total = int(rate * seconds)
    m = len(msgs)
    sent = errors = 0
    go.wait(30)
    t0 = time.perf_counter()
    clock = time.perf_counter
    while sent < total:
        due = min(total, int((clock() - t0) * rate) + 1, sent + 500)
        if due <= sent:
            time.sleep(0.0005)
            continue
        while sent < due:
            try:
                send(msgs[sent % m])
            except OSError:
                errors += 1
            sent += 1
    result.put((sent, errors, clock() - t0))


# ----------------------------------------------------------------------------- one run

def wait_sink(sink: CountingSink, expected: int, stall: float, cap: float) -> bool:
    """Until ``expected`` lines arrived (True) or no progress for ``stall`` s / ``cap`` s in all."""
    t_end = time.monotonic() + cap
    last_n, last_change = -1, time.monotonic()
    while time.monotonic() < t_end:
        n = sink.count
        if n >= expected:
            return True
        now = time.monotonic()
        if n != last_n:
            last_n, last_change = n, now
        elif now - last_change > stall:
            return False
        time.sleep(0.02)
    return False


def start_daemon(system: str, work: Path, sink: CountingSink, args, profile: str | None = None):
    if system.startswith("relay"):
        d = RelayDaemon(work, sink.port, args, profile, relay_workers(system, args), pure="+pure" in system)
        if "+tap" in system:
            d.attach_tap(args.tap_rate)
        return d
    if system == "syslog-ng":
        return SyslogNgDaemon(work, sink.port, args, args.syslog_ng_paths)
    return RsyslogDaemon(work, sink.port, args)


def relay_workers(system: str, args) -> int:
    """Workers for a system name: relay -> --workers (0: key not written), relay:w2 -> 2."""
    return int(system.partition(":w")[2]) if ":w" in system else args.workers


def run_tcp(system: str, files: list[Path], n: int, expected: int, args, tmp: Path, tag: str,
            profile: str | None = None) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"{system}-", dir=tmp))
    sink = CountingSink()
    d = None
    senders: list = []
    try:
        d = start_daemon(system, work, sink, args, profile)
        time.sleep(0.3)
        la = os.getloadavg()[0]
        main_pid = d.relay_pid() if system.startswith("relay") else d.pid
        th0 = task_cpu(main_pid)
        cpu0 = tree_cpu(main_pid)       # the relay (not py-spy) in a profile run
        t0 = time.monotonic()
        senders = start_tcp_senders(files, d.tcp_port, args.sender)
        ok = wait_sink(sink, expected, args.stall_timeout, args.run_timeout)
        t_last = sink.last
        cpu_done = tree_cpu(main_pid)
        time.sleep(args.settle)
        cpu1 = tree_cpu(main_pid)
        th1 = task_cpu(main_pid)
        got = sink.count
        met = d.metrics()
        wall = (t_last - t0) if t_last else float("nan")
        r = {"system": system, "scenario": tag, "messages": n, "expected_lines": expected, "lines": got,
             "complete": ok and got >= expected, "wall_s": wall, "msgs_per_s": n / wall if wall > 0 else 0.0,
             "lines_per_s": got / wall if wall > 0 else 0.0, "cpu_s": cpu1 - cpu0,
             "cpu_s_until_last_line": cpu_done - cpu0, "cpu_us_per_msg": (cpu1 - cpu0) / n * 1e6,
             "cores": (cpu_done - cpu0) / wall if wall > 0 else 0.0, "load1_before": la,
             "load1_after": os.getloadavg()[0], "sink_connections": sink.connections,
             "first_line": sink.first_line,
             "thread_cpu_s": {t: round(v - th0.get(t, 0.0), 3) for t, v in th1.items() if v - th0.get(t, 0.0) > 0}}
        if met:
            r["metrics"] = {k: v for k, v in met.items()
                            if k.split("{")[0] in ("relay_received_total", "relay_enqueued_total", "relay_sent_total",
                                                   "relay_queue_depth", "relay_dropped_total",
                                                   "relay_send_errors_total", "relay_unrouted_total",
                                                   "relay_tap_sent_total", "relay_tap_skipped_total")}
        return r
    finally:
        stop_senders(senders)
        if d is not None:
            d.stop()
            if profile:
                r_prof = getattr(d, "profile_out", None)
                if r_prof is not None:
                    run_tcp.last_profile = r_prof  # type: ignore[attr-defined]
        sink.close()
        if not args.keep and not profile:
            shutil.rmtree(work, ignore_errors=True)


def run_udp(system: str, msgs: list[bytes], args, tmp: Path) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"{system}-udp-", dir=tmp))
    sink = CountingSink()
    d = None
    p = None
    try:
        d = start_daemon(system, work, sink, args)
        time.sleep(0.3)
        drops0 = proc_udp_drops(d.udp_port) or 0
        go, result = CTX.Event(), CTX.Queue()
        p = CTX.Process(target=_udp_sender_main, args=(d.udp_port, msgs, args.udp_rate, args.udp_seconds, go, result),
                        daemon=True)
        p.start()
        time.sleep(0.2)
        la = os.getloadavg()[0]
        cpu0 = tree_cpu(d.pid)
        t0 = time.monotonic()
        go.set()
        sent, errors, send_s = result.get(timeout=args.udp_seconds * 3 + 30)
        wait_sink(sink, sent, 3.0, 60)
        drops = (proc_udp_drops(d.udp_port) or 0) - drops0
        cpu1 = tree_cpu(d.pid)
        wall = (sink.last or time.monotonic()) - t0
        met = d.metrics()
        got = sink.count
        r = {"system": system, "scenario": f"udp {args.udp_rate}/s {args.udp_seconds:g} s", "offered_rate": args.udp_rate,
             "sent": sent, "send_errors": errors, "send_seconds": send_s, "achieved_rate": sent / send_s,
             "lines": got, "delivered_pct": 100.0 * got / sent if sent else 0.0, "kernel_drops": drops,
             "cpu_s": cpu1 - cpu0, "cpu_us_per_msg": (cpu1 - cpu0) / max(1, got) * 1e6,
             "cores": (cpu1 - cpu0) / wall if wall > 0 else 0.0, "load1_before": la, "load1_after": os.getloadavg()[0]}
        if met:
            r["relay_udp_kernel_drops_total"] = sum(v for k, v in met.items()
                                                    if k.startswith("relay_udp_kernel_drops_total"))
            r["relay_dropped_total"] = {k: v for k, v in met.items() if k.startswith("relay_dropped_total")}
            r["tap"] = {k: v for k, v in met.items() if k.startswith(("relay_tap_sent_total", "relay_tap_skipped_total"))}
        return r
    finally:
        if p is not None:
            p.join(1)
            if p.is_alive():
                p.kill()
        if d is not None:
            d.stop()
        sink.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------- profile

#: Leaf frames of a thread that is waiting (py-spy without --native can still sample some as active).
WAIT_FRAMES = ("_worker (futures/thread.py)", "Condition.wait (threading.py)", "EpollSelector.select (selectors.py)",
               "Event.wait (threading.py)", "Thread._wait_for_tstate_lock (threading.py)", "Queue.get (queue.py)")


BOILERPLATE = (r"\((<frozen runpy>|click/core\.py|relay/cli\.py|asyncio/runners\.py|asyncio/base_events\.py|"
               r"asyncio/events\.py|threading\.py)\)|^run \(relay/server\.py\)")


def summarise_pyspy(path: Path, rate: int, n: int, top: int, cpu_us_per_msg: float | None = None,
                    thread_cpu: dict | None = None) -> dict:
    """py-spy raw (collapsed, --threads) stacks -> per-thread totals and top functions (self / total).

    Columns: ``us`` = sampled time per message (samples of threads py-spy saw as active; on a loaded
    host that includes time spent waiting for a CPU); ``pct`` = share of all samples; ``est`` = CPU
    us per message estimated from /proc: each thread's exact CPU (``thread_cpu``, tid -> s, from
    /proc/PID/task) shared among that thread's non-waiting samples (leaf in WAIT_FRAMES = no CPU).
    Without per-thread CPU: share of all non-waiting samples x ``cpu_us_per_msg``."""
    per: dict[tuple, list] = {}         # (tid, "self"|"total", frame) -> [samples, non-waiting samples]
    tsamples: dict[str, int] = {}       # tid -> non-waiting samples
    tall: dict[str, int] = {}
    tname: dict[str, str] = {}
    samples = wait = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, cnt = line.rpartition(" ")
        if not cnt.isdigit():
            continue
        c = int(cnt)
        samples += c
        tid = "?"
        pid = ""
        frames = []
        for f in stack.split(";"):
            if f.startswith("process "):
                pid = f[8:].partition(":")[0]
                continue
            if f.startswith("thread ("):
                tid, _, name = f[8:].partition(")")
                name = name.lstrip(": ")
                if name or tid not in tname:
                    tname[tid] = name or ("MainThread" if tid == pid else f"thread {tid}")
                continue
            frames.append(_short(f))
        tall[tid] = tall.get(tid, 0) + c
        if frames and frames[-1] in WAIT_FRAMES:
            wait += c
            frames = frames + ["<waiting>"]
        else:
            tsamples[tid] = tsamples.get(tid, 0) + c
        if not frames:
            continue
        waiting = frames[-1] == "<waiting>"
        for kind, fs in (("self", (frames[-1],)), ("total", set(frames))):
            for f in fs:
                key = (tid, kind, f)
                a = per.setdefault(key, [0, 0])
                a[0] += c
                if not waiting:
                    a[1] += c       # samples that carry CPU in the estimate
    us = 1e6 / rate / n
    busy = max(1, samples - wait)
    tcpu = {str(k): v for k, v in (thread_cpu or {}).items()}

    def est(tid: str, v: int, frame: str) -> float | None:
        if frame == "<waiting>":
            return 0.0
        if tcpu:
            if tid not in tcpu or not tsamples.get(tid):
                return None
            return v / tsamples[tid] * tcpu[tid] / n * 1e6
        return v / busy * cpu_us_per_msg if cpu_us_per_msg else None

    def rows(kind: str):
        agg: dict[str, list] = {}
        for (tid, k, frame), (v, vb) in per.items():
            if k != kind:
                continue
            a = agg.setdefault(frame, [0, 0.0, True])
            a[0] += v
            e = est(tid, vb, frame)
            if e is None:
                a[2] = False
            else:
                a[1] += e
        items = sorted(agg.items(), key=lambda kv: -kv[1][0])
        if kind == "total":     # leave out the frames every main-thread stack has (runpy, click, asyncio's loop)
            items = [kv for kv in items if not re.search(BOILERPLATE, kv[0])]
        return [(f, round(v * us, 3), round(100.0 * v / samples, 1), round(e, 3) if ok else None)
                for f, (v, e, ok) in items[:top]]

    def group(name: str) -> str:
        return re.sub(r"_\d+$", "_*", name)
    th: dict[str, list] = {}
    for tid, v in tall.items():
        a = th.setdefault(group(tname.get(tid, tid)), [0, 0.0, 0])
        a[0] += v
        a[1] += tcpu.get(tid, 0.0)
        a[2] += 1
    threads = [(f"{name} ({k} thread{'s' if k > 1 else ''})", round(v * us, 3), round(100.0 * v / samples, 1),
                round(c / n * 1e6, 3) if tcpu else None) for name, (v, c, k) in sorted(th.items(), key=lambda kv: -kv[1][0])]
    return {"samples": samples, "waiting_samples": wait, "rate": rate, "messages": n,
            "us_per_msg_total": round(samples * us, 2), "us_per_msg_busy": round(busy * us, 2),
            "measured_cpu_us_per_msg": cpu_us_per_msg, "threads_cpu_known": bool(tcpu),
            "threads": threads, "self": rows("self"), "total": rows("total")}


def _short(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py:123)"; the line number is dropped for grouping
    m = re.match(r"(.*) \((.*?)(?::(\d+))?\)$", frame)
    if not m:
        return frame
    path = m.group(2)
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{m.group(1)} ({short})"


def summarise_cprofile(path: Path, n: int, top: int) -> dict:
    import pstats
    st = pstats.Stats(str(path))
    rows_self, rows_tot = [], []
    for (file, line, fn), (cc, nc, tt, ct, _) in st.stats.items():
        name = f"{fn} ({'/'.join(file.split('/')[-2:])}:{line})"
        rows_self.append((name, round(tt / n * 1e6, 3)))
        rows_tot.append((name, round(ct / n * 1e6, 3)))
    rows_self.sort(key=lambda r: -r[1])
    rows_tot.sort(key=lambda r: -r[1])
    return {"messages": n, "self": rows_self[:top], "total": rows_tot[:top],
            "note": "cProfile: main thread only, with profiling overhead"}


# ----------------------------------------------------------------------------- report

def med(rs: list[dict], key: str) -> float:
    v = [r[key] for r in rs if key in r and r[key] == r[key]]
    return statistics.median(v) if v else float("nan")


#: the peers the relay is compared with -> suffix of the ratio keys in the JSON
PEERS = {"syslog-ng": "_vs_syslog_ng", "rsyslog": ""}


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def print_tcp_table(results: list[dict], scenarios: list[str], systems: list[str]) -> list[dict]:
    summary = []
    print("\n== TCP (medians; msgs/s = input messages / wall time first byte sent -> last line at the sink)")
    print(f"{'scenario':<24} {'system':<8} {'runs':>4} {'msgs/s':>10} {'lines/s':>10} {'wall s':>8} "
          f"{'CPU s':>7} {'CPU us/msg':>10} {'cores':>6} {'complete':>8}  each run msgs/s")
    for sc in scenarios:
        row = {"scenario": sc}
        for system in systems:
            rs = [r for r in results if r["scenario"] == sc and r["system"] == system]
            if not rs:
                continue
            each = " ".join(f"{r['msgs_per_s'] / 1000:.1f}k" for r in rs)
            print(f"{sc:<24} {system:<9} {len(rs):>3} {med(rs, 'msgs_per_s'):>10.0f} {med(rs, 'lines_per_s'):>10.0f} "
                  f"{med(rs, 'wall_s'):>8.2f} {med(rs, 'cpu_s'):>7.2f} {med(rs, 'cpu_us_per_msg'):>10.2f} "
                  f"{med(rs, 'cores'):>6.2f} {sum(r['complete'] for r in rs):>4}/{len(rs):<3}  {each}")
            row[system] = {"msgs_per_s": med(rs, "msgs_per_s"), "cpu_us_per_msg": med(rs, "cpu_us_per_msg"),
                           "cores": med(rs, "cores"), "runs": len(rs), "complete": all(r["complete"] for r in rs)}
        for system in systems:
            for peer in PEERS:
                if not (system.startswith("relay") and system in row and peer in row):
                    continue
                # JSON keys: ratio_msgs_per_s[_relay_wN] against rsyslog (as before), ..._vs_syslog_ng for syslog-ng
                sfx = ("" if system == "relay" else "_" + system.replace(":", "_")) + PEERS[peer]
                row["ratio_msgs_per_s" + sfx] = ratio(row[system]["msgs_per_s"], row[peer]["msgs_per_s"])
                row["ratio_cpu_per_msg" + sfx] = ratio(row[system]["cpu_us_per_msg"], row[peer]["cpu_us_per_msg"])
                print(f"{'':<24} ratio {system}/{peer}: throughput {row['ratio_msgs_per_s' + sfx]:.3f}, "
                      f"CPU per message {row['ratio_cpu_per_msg' + sfx]:.2f}x")
        summary.append(row)
    return summary


def print_udp_table(results: list[dict], systems: list[str]) -> list[dict]:
    summary = []
    print("\n== UDP (paced sender; delivered = lines at the sink / datagrams sent)")
    print(f"{'system':<8} {'sent':>8} {'sent/s':>8} {'delivered %':>11} {'kernel drops':>12} {'CPU s':>7} "
          f"{'CPU us/msg':>10} {'cores':>6}  each run delivered %")
    for system in systems:
        rs = [r for r in results if r["system"] == system]
        if not rs:
            continue
        each = " ".join(f"{r['delivered_pct']:.3f}" for r in rs)
        print(f"{system:<9}{med(rs, 'sent'):>8.0f} {med(rs, 'achieved_rate'):>8.0f} {med(rs, 'delivered_pct'):>11.3f} "
              f"{med(rs, 'kernel_drops'):>12.0f} {med(rs, 'cpu_s'):>7.2f} {med(rs, 'cpu_us_per_msg'):>10.2f} "
              f"{med(rs, 'cores'):>6.2f}  {each}")
        s = {"system": system, "delivered_pct": med(rs, "delivered_pct"), "min_delivered_pct":
             min(r["delivered_pct"] for r in rs), "kernel_drops": med(rs, "kernel_drops"),
             "cpu_us_per_msg": med(rs, "cpu_us_per_msg"), "achieved_rate": med(rs, "achieved_rate")}
        if system.startswith("relay"):
            s["relay_udp_kernel_drops_total"] = med(rs, "relay_udp_kernel_drops_total")
        summary.append(s)
    for s in summary:
        for p in summary:
            if s["system"].startswith("relay") and p["system"] in PEERS:
                print(f"{'':<9}ratio {s['system']}/{p['system']}: delivered "
                      f"{ratio(s['delivered_pct'], p['delivered_pct']):.3f}, CPU per message "
                      f"{ratio(s['cpu_us_per_msg'], p['cpu_us_per_msg']):.2f}x")
    return summary


def print_profile(p: dict) -> None:
    print(f"\n== Profile of one relay TCP run ({p.get('tool')}, {p['messages']} messages)")
    if "threads" in p:
        print(f"samples {p['samples']} at {p['rate']}/s = {p['us_per_msg_total']} us/msg sampled in all threads, "
              f"{p['us_per_msg_busy']} not waiting; CPU measured in this run {p['measured_cpu_us_per_msg']:.1f} us/msg")
        print("columns: sampled us/msg, % of samples, est. CPU us/msg (" + (
            "each thread's CPU from /proc/PID/task shared among its non-waiting samples)" if p.get("threads_cpu_known")
            else "share of non-waiting samples x measured CPU)"))
    cols = lambda r: (f"{r[1]:>8.3f} " + (f"{r[2]:>5.1f}% " if len(r) > 2 else "")  # noqa: E731
                      + (f"{r[3]:>7.2f}  " if len(r) > 3 and r[3] is not None else ("  " + " " * 7 if len(r) > 3
                                                                                     else " ")))
    if "threads" in p:
        print("-- by thread")
        for r in p["threads"]:
            print("  " + cols(r) + r[0])
    print("-- self time (top)")
    for r in p["self"]:
        print("  " + cols(r) + r[0])
    print("-- total time incl. callees (top; runpy/click/asyncio loop/threading frames left out)")
    for r in p["total"]:
        print("  " + cols(r) + r[0])


# ----------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--messages", type=int, default=1_000_000, help="TCP messages per run (default 1000000)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="alternating rounds relay, syslog-ng, rsyslog (in --systems order; default 2)")
    ap.add_argument("--conns", default="1,4", help="comma list of TCP connection counts (default 1,4)")
    ap.add_argument("--forward", default="30,100", help="comma list of %% forwarded (default 30,100)")
    ap.add_argument("--tap-rate", type=float, default=100.0,
                    help="the system relay+tap: relay with `relay tap --route high_risk --rate R` attached")
    ap.add_argument("--systems", default="relay,relay:w2,rsyslog",
                    help="comma list of relay, relay:wN (relay with [relay] workers = N), relay+tap (relay with a "
                         "live tap attached, --tap-rate), relay+pure[:wN] (relay with RELAY_PURE=1: the pure Python hot path, "
                         "not the native accelerator), syslog-ng (Debian's syslog-ng-core, downloaded and "
                         "unpacked into .cache/bench/syslog-ng, never installed), rsyslog "
                         "(default relay,relay:w2,rsyslog; e.g. relay:w2,syslog-ng,rsyslog)")
    ap.add_argument("--no-tcp", action="store_true")
    ap.add_argument("--no-udp", action="store_true")
    ap.add_argument("--udp-rate", type=int, default=50_000)
    ap.add_argument("--udp-seconds", type=float, default=10.0)
    ap.add_argument("--udp-rcvbuf", type=int, default=4 << 20, help="SO_RCVBUF for both daemons (default 4 MiB)")
    ap.add_argument("--syslog-ng-window", type=int, default=10000,
                    help="syslog-ng: TCP source log-iw-size (all connections; destination log-fifo-size is "
                         "twice that; default 10000)")
    ap.add_argument("--sync", default="FULL", choices=("FULL", "NORMAL"), help="relay queue synchronous (default FULL)")
    ap.add_argument("--workers", type=int, default=0, help="[relay] workers = N (only if relay/config.py has it)")
    ap.add_argument("--sender", default="socat" if shutil.which("socat") else "python", choices=("socat", "python"))
    ap.add_argument("--settle", type=float, default=1.5, help="s of CPU counted after the last line (default 1.5)")
    ap.add_argument("--stall-timeout", type=float, default=30.0, help="give up after s without progress (default 30)")
    ap.add_argument("--run-timeout", type=float, default=600.0, help="cap on one run in s (default 600)")
    ap.add_argument("--profile", action="store_true", help="one extra relay TCP run under py-spy (or cProfile)")
    ap.add_argument("--profile-only", action="store_true", help="only the profile run")
    ap.add_argument("--profile-messages", type=int, default=300_000)
    ap.add_argument("--profile-forward", type=int, default=100, help="%% forwarded in the profile run (default 100)")
    ap.add_argument("--profile-rate", type=int, default=200, help="py-spy samples per second (default 200)")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--json", help="write all results as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, logs)")
    args = ap.parse_args()

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    conns = [int(c) for c in args.conns.split(",") if c.strip()]
    forwards = [int(f) for f in args.forward.split(",") if f.strip()]
    if (args.workers or any(":w" in s for s in systems)) and not relay_supports_workers():
        print("--workers: relay/config.py has no [relay] workers setting yet", file=sys.stderr)
        return 2
    if "rsyslog" in systems and rsyslogd_path() is None:
        print("rsyslogd not found: run scripts/test-deps (or apt-get install -y rsyslog), or --systems relay",
              file=sys.stderr)
        return 2
    args.syslog_ng_paths = None
    if "syslog-ng" in systems:
        args.syslog_ng_paths = syslog_ng_install()
        if args.syslog_ng_paths is None:
            systems.remove("syslog-ng")
            if not systems:
                return 2
        else:
            print(f"syslog-ng: {syslog_ng_version(args.syslog_ng_paths)} "
                  f"(in-memory queues, flow-control, log-iw-size {args.syslog_ng_window})")
    unknown = [s for s in systems if not (s.startswith("relay") or s in PEERS)]
    if unknown:
        print(f"unknown system(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    others = subprocess.run(["pgrep", "-x", "rsyslogd"], capture_output=True, text=True).stdout.split()
    if others:
        print(f"WARNING: rsyslogd already running (pid {' '.join(others)}): stop the system service for "
              f"clean figures", file=sys.stderr)

    uptime_start = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"bench_e2e: {os.cpu_count()} CPUs; uptime at start: {uptime_start}")
    print(f"relay queue synchronous={args.sync}{f', workers={args.workers}' if args.workers else ''}; "
          f"sender {args.sender}; {args.messages} msgs/run; rounds {args.rounds}; systems {', '.join(systems)}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    out: dict = {"uptime_start": uptime_start, "cpus": os.cpu_count(), "args": vars(args), "tcp_runs": [],
                 "udp_runs": []}
    try:
        # ------------------------------------------------------------------ TCP
        tcp_plan = []   # (tag, files, expected)
        if not args.no_tcp and not args.profile_only:
            for pct in forwards:
                for c in conns:
                    per = args.messages // c
                    files, exp = [], 0
                    for k in range(c):
                        f = tmp / f"msgs-{pct}-{c}-{k}.log"
                        cnt = per if k < c - 1 else args.messages - per * (c - 1)
                        exp += generate(f, k * per, cnt, pct)
                        files.append(f)
                    tag = f"tcp {c} conn{'s' if c > 1 else ''} {pct}% fwd"
                    tcp_plan.append((tag, files, exp))
            size = sum(f.stat().st_size for f in tcp_plan[0][1]) if tcp_plan else 0
            print(f"generated {len(tcp_plan)} traffic file set(s) in {tmp} ({size / args.messages:.0f} bytes/msg)")
            for tag, files, exp in tcp_plan:
                for rnd in range(args.rounds):
                    for system in systems:
                        r = run_tcp(system, files, args.messages, exp, args, tmp, tag)
                        r["round"] = rnd + 1
                        out["tcp_runs"].append(r)
                        if len(out["tcp_runs"]) <= len(systems):
                            print(f"  first line {system} sent on: {r['first_line']}")
                        print(f"  {tag:<24} round {rnd + 1} {system:<8} {r['msgs_per_s']:>9.0f} msgs/s "
                              f"{r['cpu_us_per_msg']:>6.2f} us CPU/msg {r['cores']:.2f} cores "
                              f"lines {r['lines']}/{exp}{'' if r['complete'] else ' INCOMPLETE'} "
                              f"(load {r['load1_before']:.2f})", flush=True)
                for f in files:
                    f.unlink(missing_ok=True)
            out["tcp_summary"] = print_tcp_table(out["tcp_runs"], [t for t, _, _ in tcp_plan], systems)

        # ------------------------------------------------------------------ UDP
        if not args.no_udp and not args.profile_only:
            msgs = [message(i, True).rstrip("\n").encode() for i in range(2000)]
            for rnd in range(args.rounds):
                for system in systems:
                    r = run_udp(system, msgs, args, tmp)
                    r["round"] = rnd + 1
                    out["udp_runs"].append(r)
                    extra = (f" relay_udp_kernel_drops_total {r['relay_udp_kernel_drops_total']:.0f}"
                             if "relay_udp_kernel_drops_total" in r else "")
                    print(f"  udp round {rnd + 1} {system:<8} sent {r['sent']} ({r['achieved_rate']:.0f}/s) "
                          f"delivered {r['delivered_pct']:.3f}% kernel drops {r['kernel_drops']}{extra} "
                          f"{r['cpu_us_per_msg']:.2f} us CPU/msg (load {r['load1_before']:.2f})", flush=True)
            out["udp_summary"] = print_udp_table(out["udp_runs"], systems)

        # ------------------------------------------------------------------ profile
        if args.profile or args.profile_only:
            f = tmp / "profile.log"
            exp = generate(f, 0, args.profile_messages, args.profile_forward)
            pyspy = REPO / ".venv" / "bin" / "py-spy"
            tool = "py-spy" if pyspy.exists() else "cprofile"
            r = run_tcp("relay", [f], args.profile_messages, exp, args, tmp, "profile", profile=tool)
            prof_path = getattr(run_tcp, "last_profile", None)
            if prof_path is not None and Path(prof_path).exists():
                if tool == "py-spy":
                    p = summarise_pyspy(Path(prof_path), args.profile_rate, args.profile_messages, args.top,
                                        r["cpu_us_per_msg"], r.get("thread_cpu_s"))
                else:
                    p = summarise_cprofile(Path(prof_path), args.profile_messages, args.top)
                p["tool"] = tool
                p["run"] = r
                out["profile"] = p
                print_profile(p)
                print(f"(profile run itself: {r['msgs_per_s']:.0f} msgs/s under the profiler; raw data {prof_path})")
            else:
                print(f"profile: no output from {tool} (see {tmp})", file=sys.stderr)
                args.keep = True

        # ------------------------------------------------------------------ headline
        uptime_end = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        out["uptime_end"] = uptime_end
        print()
        for row in out.get("tcp_summary", []):
            for system in systems:
                rl = row.get(system)
                if not system.startswith("relay") or not rl:
                    continue
                line = (f"TCP {row['scenario'][4:]}: {system} {rl['msgs_per_s']:.0f} msgs/s "
                        f"({rl['cpu_us_per_msg']:.2f} µs CPU/msg)")
                for peer in PEERS:
                    rs = row.get(peer)
                    if rs:
                        line += (f", {peer} {rs['msgs_per_s']:.0f} msgs/s ({rs['cpu_us_per_msg']:.2f} µs CPU/msg), "
                                 f"ratio {ratio(rl['msgs_per_s'], rs['msgs_per_s']):.3f}")
                print(line)
            if not any(s.startswith("relay") for s in systems):
                for peer in PEERS:
                    rs = row.get(peer)
                    if rs:
                        print(f"TCP {row['scenario'][4:]}: {peer} {rs['msgs_per_s']:.0f} msgs/s "
                              f"({rs['cpu_us_per_msg']:.2f} µs CPU/msg)")
        for s in out.get("udp_summary", []):
            print(f"UDP {args.udp_rate / 1000:g}k/s {args.udp_seconds:g} s: {s['system']} delivered "
                  f"{s['delivered_pct']:.3f}% (worst run {s['min_delivered_pct']:.3f}%), kernel drops "
                  f"{s['kernel_drops']:.0f}, {s['cpu_us_per_msg']:.2f} µs CPU/msg")
        # the targets, per relay variant (medians; see the tables for every run)
        for system in systems:
            if not system.startswith("relay"):
                continue
            tcp = [(row["scenario"][4:], row[system]["msgs_per_s"]) for row in out.get("tcp_summary", [])
                   if row.get(system)]
            if tcp:
                best = max(tcp, key=lambda t: t[1])
                met = [sc for sc, v in tcp if v >= 50_000]
                print(f"target TCP >= 50,000 msgs/s, {system}: "
                      + (f"met in {', '.join(met)}" if met else "not met")
                      + f" (best {best[1]:.0f} msgs/s, {best[0]})")
            for u in out.get("udp_summary", []):
                if u["system"] == system:
                    ok = u["min_delivered_pct"] >= 99.5 and args.udp_rate >= 50_000 and args.udp_seconds >= 10
                    print(f"target UDP >= 50k/s for >= 10 s, >= 99.5% delivered (run at {args.udp_rate / 1000:g}k/s, "
                          f"{args.udp_seconds:g} s), {system}: "
                          f"{'met' if ok else 'not met'} (worst run {u['min_delivered_pct']:.3f}%)")
        print(f"uptime at end: {uptime_end}")
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1, default=str), encoding="utf-8")
            print(f"results written to {args.json}")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Helpers for end-to-end tests with real syslog peers, all on 127.0.0.1.

* :func:`free_port` - a port free for both TCP and UDP on 127.0.0.1.
* :class:`RelayProcess` - ``relay run --config FILE`` as a subprocess: config written into a
  temporary directory, stderr captured to a file, ``/ready`` polled with a deadline,
  :meth:`RelayProcess.metrics` parsed from the Prometheus text, :meth:`RelayProcess.stop` with
  SIGTERM, a deadline, then SIGKILL.
* :class:`QradarStandIn` - a threaded TCP server standing in for QRadar: it deframes LF- and
  octet-framed syslog with :class:`parsers.framing.Deframer` and collects the lines.
* :class:`Rsyslog` - an rsyslogd with its own config, pid file and work directory that listens
  on a port (imudp/imtcp) or reads a file (imfile) and forwards to the relay with omfwd over TCP,
  octet-counted framing, RFC 5424 (``RSYSLOG_SyslogProtocol23Format``).  No /dev/log input.
* :func:`loggen_path` / :func:`run_loggen` - loggen from syslog-ng-core as unpacked by
  ``scripts/test-deps`` under ``.cache/peers/syslog-ng/``.
* :func:`logger_send` - util-linux ``logger --rfc5424`` to a UDP or TCP port.
* ``needs_rsyslog``, ``needs_loggen``, ``needs_logger``: skip markers that say what is missing
  and how to get it.

Every wait has a deadline and every process started here is killed in ``stop()``/``close()``
(use them from fixtures with ``finally``).  Nothing is sent anywhere but 127.0.0.1.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from parsers.framing import Deframer

REPO = Path(__file__).resolve().parent.parent
VENV_RELAY = REPO / ".venv" / "bin" / "relay"
LOOPBACK = "127.0.0.1"

__all__ = ["REPO", "LOOPBACK", "free_port", "wait_until", "RelayProcess", "QradarStandIn", "Rsyslog",
           "rsyslogd_path", "loggen_path", "run_loggen", "LoggenResult", "logger_path", "logger_send",
           "needs_rsyslog", "needs_loggen", "needs_logger", "parse_prometheus"]

_INSTALL_HINT = "run scripts/test-deps as root on Debian 12 (scripts/test does it) to install it"


# ----------------------------------------------------------------------------- basics

_given_ports: set[int] = set()


def free_port() -> int:
    """A port that is free on 127.0.0.1 for TCP and UDP alike (never the same twice per run)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind((LOOPBACK, 0))
            port = t.getsockname()[1]
            if port in _given_ports:
                continue
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.bind((LOOPBACK, port))
            except OSError:
                continue
        _given_ports.add(port)
        return port
    raise RuntimeError("no free port found on 127.0.0.1")


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate()`` until it returns a truthy value or ``timeout`` seconds pass.
    Returns the value; raises ``TimeoutError`` naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


def _kill(proc: subprocess.Popen, term_timeout: float) -> int | None:
    """SIGTERM, wait up to ``term_timeout`` s, then SIGKILL.  Returns the exit code (None if it
    could not be reaped, which should not happen)."""
    if proc.poll() is not None:
        return proc.returncode
    try:
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=term_timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process that survives SIGKILL
            return None


# ----------------------------------------------------------------------------- metrics

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> dict[str, dict[tuple, float]]:
    """Prometheus text exposition -> ``{name: {((label, value), ...) sorted: value}}``."""
    out: dict[str, dict[tuple, float]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            raise ValueError(f"not a Prometheus sample line: {line!r}")
        name, labels, value = m.groups()
        lab = tuple(sorted((k, v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\"))
                           for k, v in _LABEL.findall(labels or "")))
        out.setdefault(name, {})[lab] = float(value)
    return out


class Metrics(dict):
    """Parsed /metrics: ``m.value(name, **labels)`` sums the series whose labels include the given
    ones (0 when there is none)."""

    def value(self, name: str, **labels) -> float:
        want = {(k, str(v)) for k, v in labels.items()}
        return sum(v for lab, v in self.get(name, {}).items() if want <= set(lab))


# ----------------------------------------------------------------------------- relay

class RelayProcess:
    """``relay run --config <dir>/relay.toml`` as a subprocess.

    ``config`` is the TOML text, written to ``workdir/relay.toml``; its ``[relay]
    metrics_address`` must be ``127.0.0.1:<metrics_port>`` (the port polled for /ready and
    /metrics).  Use as a context manager or call :meth:`stop` in a ``finally``.
    """

    def __init__(self, workdir: Path, config: str, metrics_port: int, *, ready_timeout: float = 20.0,
                 stop_timeout: float = 20.0) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "relay.toml"
        self.config_path.write_text(config, encoding="utf-8")
        self.metrics_port = metrics_port
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.stderr_path = self.workdir / "relay.stderr"
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        self._stderr = None

    # lifecycle
    def start(self) -> "RelayProcess":
        if not VENV_RELAY.exists():
            pytest.skip(f"{VENV_RELAY} is missing: run ./scripts/setup --test")
        self._stderr = open(self.stderr_path, "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("NOTIFY_SOCKET", None)
        self.proc = subprocess.Popen([str(VENV_RELAY), "run", "--config", str(self.config_path)],
                                     cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=self._stderr,
                                     stderr=subprocess.STDOUT, env=env)
        try:
            self.wait_ready(self.ready_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay exited with {self.proc.returncode} before /ready:\n{self.stderr()}")
            try:
                status, body = self.http("/ready", timeout=1.0)
                if status == 200:
                    return
                last = f"{status} {body.strip()}"
            except OSError as e:
                last = repr(e)
            time.sleep(0.05)
        raise TimeoutError(f"relay not ready after {timeout} s (last: {last}):\n{self.stderr()}")

    def stop(self) -> int | None:
        """SIGTERM (graceful drain), SIGKILL after ``stop_timeout`` s.  Returns the exit code."""
        if self.proc is not None and self.returncode is None:
            self.returncode = _kill(self.proc, self.stop_timeout)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        return self.returncode

    def __enter__(self) -> "RelayProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # observation
    def http(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        url = f"http://{LOOPBACK}:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback only
                return r.status, r.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8", "replace")

    def metrics(self) -> Metrics:
        status, body = self.http("/metrics")
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}: {body[:200]}")
        return Metrics(parse_prometheus(body))

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def wait_metric(self, name: str, value: float, timeout: float, **labels) -> Metrics:
        """Poll /metrics until ``name{labels}`` >= value; returns the metrics seen then."""
        seen: list = [None]

        def ok():
            m = self.metrics()
            seen[0] = m.value(name, **labels)
            return m if seen[0] >= value else None
        try:
            return wait_until(ok, timeout, 0.1, f"{name}{labels or ''} >= {value}")
        except TimeoutError as e:
            raise TimeoutError(f"{e} (last value {seen[0]})\n--- relay stderr ---\n{self.stderr()[-4000:]}") from None


# ----------------------------------------------------------------------------- QRadar stand-in

class QradarStandIn:
    """A TCP syslog receiver on 127.0.0.1 that collects deframed messages (LF or octet framing).

    ``lines`` holds the decoded messages in arrival order, ``connections`` counts accepted
    connections, ``problems`` keeps deframing problems.  ``wait_for(n, timeout)`` blocks until at
    least ``n`` messages arrived.  ``port=0`` picks a free port; ``close()`` stops everything.
    """

    def __init__(self, port: int = 0, max_frame: int = 1 << 20) -> None:
        self.max_frame = max_frame
        self.lines: list[str] = []
        self.problems: list = []
        self.connections = 0
        self._cond = threading.Condition()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((LOOPBACK, port))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"qradar-{self.port}", daemon=True)
        self._acceptor.start()

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(0.2)
            with self._cond:
                self.connections += 1
                self._conns.append(conn)
            t = threading.Thread(target=self._read_loop, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _read_loop(self, conn: socket.socket) -> None:
        d = Deframer(max_frame=self.max_frame)
        try:
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    break
                if not data:
                    break
                self._add(d.feed(data), d)
            self._add(d.close(partial=True), d)
        finally:
            conn.close()

    def _add(self, frames: list[bytes], d: Deframer) -> None:
        probs = d.drain_problems()
        if not frames and not probs:
            return
        with self._cond:
            self.lines.extend(f.decode("utf-8", "replace") for f in frames)
            self.problems.extend(probs)
            self._cond.notify_all()

    def count(self) -> int:
        with self._cond:
            return len(self.lines)

    def snapshot(self) -> list[str]:
        with self._cond:
            return list(self.lines)

    def wait_for(self, n: int, timeout: float) -> list[str]:
        """Wait until at least ``n`` messages arrived; returns a copy of all of them.
        Raises ``TimeoutError`` with the count reached."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.lines) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"QRadar stand-in got {len(self.lines)} of {n} messages in {timeout} s")
                self._cond.wait(min(left, 0.5))
            return list(self.lines)

    def wait_quiet(self, quiet: float = 0.5, timeout: float = 10.0) -> int:
        """Wait until no message arrived for ``quiet`` seconds; returns the count."""
        deadline = time.monotonic() + timeout
        last = self.count()
        since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            n = self.count()
            if n != last:
                last, since = n, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return last

    def close(self) -> None:
        self._stop.set()
        try:
            self._sock.close()
        except OSError:
            pass
        self._acceptor.join(timeout=5)
        with self._cond:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> "QradarStandIn":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------- peers: paths and skips

def _which(name: str, extra: tuple[str, ...] = ("/usr/sbin", "/sbin")) -> str | None:
    p = shutil.which(name)
    if p:
        return p
    for d in extra:
        c = os.path.join(d, name)
        if os.access(c, os.X_OK):
            return c
    return None


def rsyslogd_path() -> str | None:
    return _which("rsyslogd")


def loggen_path() -> str | None:
    """The loggen wrapper written by scripts/test-deps, else a loggen on PATH; None if neither runs."""
    cands = [REPO / ".cache" / "peers" / "syslog-ng" / "loggen"]
    onpath = shutil.which("loggen")
    if onpath:
        cands.append(Path(onpath))
    for c in cands:
        if c.exists() and os.access(c, os.X_OK):
            try:
                r = subprocess.run([str(c), "--help"], capture_output=True, timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                continue
            if r.returncode == 0:
                return str(c)
    return None


def logger_path() -> str | None:
    p = _which("logger")
    if not p:
        return None
    try:
        r = subprocess.run([p, "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p if "--rfc5424" in r.stdout and "--sd-id" in r.stdout else None


needs_rsyslog = pytest.mark.skipif(rsyslogd_path() is None, reason=f"rsyslogd not found: {_INSTALL_HINT}")
needs_loggen = pytest.mark.skipif(
    loggen_path() is None,
    reason=f"loggen not found (.cache/peers/syslog-ng/loggen from syslog-ng-core, or on PATH): {_INSTALL_HINT}")
needs_logger = pytest.mark.skipif(
    logger_path() is None,
    reason=f"util-linux logger with --rfc5424/--sd-id not found: {_INSTALL_HINT}")


# ----------------------------------------------------------------------------- logger

def logger_send(port: int, message: str, *, proto: str = "udp", tag: str = "SigmaIncident",
                msgid: str | None = None, priority: str = "local1.alert", sd_id: str | None = None,
                sd_params: dict[str, str] | None = None, octet_count: bool = False,
                timeout: float = 10.0) -> None:
    """One ``logger --rfc5424`` message to 127.0.0.1:port over ``udp`` or ``tcp``.

    ``sd_params`` values are quoted for logger (``--sd-param name="value"``); logger escapes
    ``"``, ``\\`` and ``]`` itself.  logger adds its own ``[timeQuality ...]`` element first.
    ``octet_count`` selects RFC 6587 octet counting on TCP (logger's default is LF)."""
    lg = logger_path()
    if lg is None:
        pytest.skip(f"util-linux logger not found: {_INSTALL_HINT}")
    if proto not in ("udp", "tcp"):
        raise ValueError(proto)
    args = [lg, "--rfc5424", "-n", LOOPBACK, "-P", str(port), "-d" if proto == "udp" else "-T",
            "-t", tag, "-p", priority]
    if msgid:
        args += ["--msgid", msgid]
    if octet_count:
        if proto != "tcp":
            raise ValueError("octet counting is for TCP")
        args.append("--octet-count")
    if sd_id:
        args += ["--sd-id", sd_id]
        for k, v in (sd_params or {}).items():
            args += ["--sd-param", f'{k}="{v}"']
    args += ["--", message]
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RuntimeError(f"logger failed ({r.returncode}): {r.stderr.strip()} [{' '.join(args)}]")


# ----------------------------------------------------------------------------- loggen

class LoggenResult:
    def __init__(self, returncode: int, output: str) -> None:
        self.returncode = returncode
        self.output = output
        m = re.findall(r"count=(\d+)", output)
        self.count = int(m[-1]) if m else None

    def __repr__(self) -> str:  # pragma: no cover
        return f"LoggenResult(rc={self.returncode}, count={self.count})"


def run_loggen(port: int, *, number: int, rate: int = 10000, stream: bool = True, file: Path | None = None,
               dont_parse: bool = True, syslog_proto: bool = False, size: int | None = None,
               sdata: str | None = None, interval: int = 60, timeout: float = 90.0,
               extra: list[str] | None = None) -> LoggenResult:
    """Run loggen against 127.0.0.1:port and wait for it (killed after ``timeout`` s).

    With ``file``: ``-R file`` replays its lines; ``dont_parse`` (``-d``) sends each line as it
    is, newline-terminated (loggen's parsing of files rewrites the header and sends zero-padded
    MSG-LENs).  Without ``file``: loggen's own messages (``seq: N`` in the body), RFC 5424 and
    octet-counted with ``syslog_proto`` (``-P``).  ``interval`` (``-I``) must outlast
    ``number / rate``: loggen stops at whichever comes first (its default is 10 s), so check
    ``result.count``."""
    lg = loggen_path()
    if lg is None:
        pytest.skip(f"loggen not found: {_INSTALL_HINT}")
    args = [lg, "--inet", "--stream" if stream else "--dgram", "--rate", str(rate), "--number", str(number),
            "--interval", str(interval)]
    if file is not None:
        args += ["--read-file", str(file)]
        if dont_parse:
            args.append("--dont-parse")
    if syslog_proto:
        args.append("--syslog-proto")
    if size is not None:
        args += ["--size", str(size)]
    if sdata is not None:
        args += ["--sdata", sdata]
    args += list(extra or [])
    args += [LOOPBACK, str(port)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc, 2)
        out, _ = proc.communicate(timeout=10)
        raise TimeoutError(f"loggen did not finish in {timeout} s: {out.decode(errors='replace')[-2000:]}") from None
    finally:
        if proc.poll() is None:
            _kill(proc, 2)
    return LoggenResult(proc.returncode, out.decode("utf-8", "replace"))


# ----------------------------------------------------------------------------- rsyslog

class Rsyslog:
    """An rsyslogd of our own: ``rsyslogd -n -f <conf> -i <pidfile>`` with ``workDirectory`` in
    ``workdir``, forwarding everything it gets to ``127.0.0.1:forward_port`` with omfwd over TCP,
    ``TCP_Framing="octet-counted"`` and ``RSYSLOG_SyslogProtocol23Format``.

    ``inputs``: any of ``"udp"``, ``"tcp"`` (on :attr:`udp_port` / :attr:`tcp_port`, free ports)
    and ``"file"`` (imfile on :attr:`input_file`, read from the beginning).  imuxsock is never
    loaded, so /dev/log and the journal are left alone.  rsyslogd's own messages go to
    ``<workdir>/rsyslogd.log``, not to the relay.  Call :meth:`stop` in a ``finally``.
    """

    def __init__(self, workdir: Path, forward_port: int, inputs: tuple[str, ...] = ("tcp",),
                 stop_timeout: float = 10.0) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.spool = self.workdir / "spool"
        self.spool.mkdir(exist_ok=True)
        self.forward_port = forward_port
        self.inputs = tuple(inputs)
        self.udp_port = free_port() if "udp" in inputs else None
        self.tcp_port = free_port() if "tcp" in inputs else None
        self.input_file = self.workdir / "input.log" if "file" in inputs else None
        self.conf = self.workdir / "rsyslog.conf"
        self.pidfile = self.workdir / "rsyslogd.pid"
        self.own_log = self.workdir / "rsyslogd.log"
        self.stdout_path = self.workdir / "rsyslogd.stdout"
        self.stop_timeout = stop_timeout
        self.proc: subprocess.Popen | None = None
        self._out = None
        self.conf.write_text(self.config_text(), encoding="utf-8")

    def config_text(self) -> str:
        lines = [
            "# written by tests/peers.py: no imuxsock (no /dev/log), no imklog, own work directory",
            f'global(workDirectory="{self.spool}" maxMessageSize="64k")',
        ]
        if self.udp_port:
            lines += ['module(load="imudp")',
                      f'input(type="imudp" address="{LOOPBACK}" port="{self.udp_port}" ruleset="fwd")']
        if self.tcp_port:
            lines += ['module(load="imtcp")',
                      f'input(type="imtcp" address="{LOOPBACK}" port="{self.tcp_port}" ruleset="fwd")']
        if self.input_file:
            self.input_file.touch()
            lines += ['module(load="imfile" mode="polling" PollingInterval="1")',
                      f'input(type="imfile" File="{self.input_file}" Tag="imfile" needParse="on" '
                      'freshStartTail="off" ruleset="fwd")']
        lines += [
            "# the default ruleset only sees rsyslogd's own messages: keep them in a file",
            f'action(type="omfile" file="{self.own_log}")',
            'ruleset(name="fwd") {',
            f'  action(type="omfwd" target="{LOOPBACK}" port="{self.forward_port}" protocol="tcp"',
            '         TCP_Framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format"',
            '         action.resumeRetryCount="-1" action.resumeInterval="1"',
            '         queue.type="LinkedList" queue.size="100000" queue.dequeueBatchSize="256")',
            '}',
        ]
        return "\n".join(lines) + "\n"

    def check_config(self) -> None:
        r = subprocess.run([self._binary(), "-N1", "-f", str(self.conf)], capture_output=True, text=True,
                           timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"rsyslogd -N1 rejected {self.conf}:\n{r.stdout}{r.stderr}\n{self.conf.read_text()}")

    @staticmethod
    def _binary() -> str:
        p = rsyslogd_path()
        if p is None:
            pytest.skip(f"rsyslogd not found: {_INSTALL_HINT}")
        return p

    def start(self, timeout: float = 15.0) -> "Rsyslog":
        binary = self._binary()
        self._out = open(self.stdout_path, "wb")
        self.proc = subprocess.Popen([binary, "-n", "-f", str(self.conf), "-i", str(self.pidfile)],
                                     cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=subprocess.STDOUT)
        try:
            # ready when the pid file is written and the TCP input (if any) accepts
            def ready():
                if self.proc.poll() is not None:
                    raise RuntimeError(f"rsyslogd exited with {self.proc.returncode}:\n{self.output()}")
                if not self.pidfile.exists():
                    return False
                if self.tcp_port:
                    try:
                        socket.create_connection((LOOPBACK, self.tcp_port), timeout=0.5).close()
                    except OSError:
                        return False
                return True
            wait_until(ready, timeout, 0.05, "rsyslogd to start")
            if self.udp_port:
                time.sleep(0.3)  # imudp binds in its own thread; no way to probe it
        except BaseException:
            self.stop()
            raise
        return self

    def output(self) -> str:
        out = []
        for p in (self.stdout_path, self.own_log):
            try:
                out.append(p.read_text(errors="replace"))
            except OSError:
                pass
        return "\n".join(out)

    def send_tcp(self, messages: list[bytes], octet: bool = True, timeout: float = 10.0) -> None:
        """Send messages to the imtcp input in one connection (octet-counted or LF)."""
        data = b"".join((b"%d %s" % (len(m), m)) if octet else m + b"\n" for m in messages)
        with socket.create_connection((LOOPBACK, self.tcp_port), timeout=timeout) as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(timeout)
            try:
                while s.recv(4096):
                    pass
            except OSError:
                pass

    def send_udp(self, messages: list[bytes], pace: float = 0.0) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for m in messages:
                s.sendto(m, (LOOPBACK, self.udp_port))
                if pace:
                    time.sleep(pace)

    def stop(self) -> int | None:
        rc = None
        if self.proc is not None:
            rc = _kill(self.proc, self.stop_timeout)
        if self._out is not None:
            self._out.close()
            self._out = None
        return rc

    def __enter__(self) -> "Rsyslog":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

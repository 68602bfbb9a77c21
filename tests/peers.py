"""The real syslog peers of the end-to-end tests, all on 127.0.0.1 (the relay process, the
QRadar stand-in, ports and waits are in tests/harness.py).

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
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness import LOOPBACK, REPO, free_port, send_tcp, stop_process, wait_until

__all__ = ["Rsyslog", "rsyslogd_path", "loggen_path", "run_loggen", "LoggenResult", "logger_path", "logger_send",
           "needs_rsyslog", "needs_loggen", "needs_logger"]

_INSTALL_HINT = "run scripts/test-deps as root on Debian 12 (scripts/test does it) to install it"


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
        stop_process(proc, 2)
        out, _ = proc.communicate(timeout=10)
        raise TimeoutError(f"loggen did not finish in {timeout} s: {out.decode(errors='replace')[-2000:]}") from None
    finally:
        if proc.poll() is None:
            stop_process(proc, 2)
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
            wait_until(ready, timeout, what="rsyslogd to start")
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
        send_tcp(self.tcp_port, messages, octet=octet, timeout=timeout, wait_eof=timeout)

    def send_udp(self, messages: list[bytes], pace: float = 0.0) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for m in messages:
                s.sendto(m, (LOOPBACK, self.udp_port))
                if pace:
                    time.sleep(pace)

    def stop(self) -> int | None:
        rc = None
        if self.proc is not None:
            rc = stop_process(self.proc, self.stop_timeout)
        if self._out is not None:
            self._out.close()
            self._out = None
        return rc

    def __enter__(self) -> "Rsyslog":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

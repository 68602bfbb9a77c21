"""The test suite's shared helpers: plain functions and classes, importable from any test file.
The pytest fixtures built on them live in ``tests/conftest.py``; the real syslog peers
(rsyslog, loggen, logger) in ``tests/peers.py``.

* :func:`free_port` - a port free on 127.0.0.1 for TCP and UDP alike, never the same twice per run,
  taken below the ephemeral range (a slice per xdist worker) so no outgoing connection steals it.
* :func:`wait_until` (sync) and :func:`until` (async) - poll with a deadline; on timeout they raise
  :class:`WaitTimeout` (an ``AssertionError``) naming what was waited for.
* :func:`run_async` - ``asyncio.run`` under a hard timeout; :func:`run_sinks` runs sinks until a
  condition holds.
* :func:`sigma_line` - one RFC 5424 RhythmX SigmaIncident message, every part a parameter.
* :func:`send_tcp` - LF- or octet-framed messages over one TCP connection, then wait for the
  peer's EOF.
* :func:`make_queue` - a :class:`relay.queue.DiskQueue` with the tests' fast retry policy.
* :func:`seq_of` - the sequence number of a test message (queue row or delivered JSON line).
* :func:`counts` - XSOAR emulator incidents per dedup field value.
* :func:`relay_command` / :func:`relay_cli` - the ``relay`` console script.
* :class:`RelayProcess` - ``relay run --config FILE`` as a subprocess that can be started again,
  every start logging to its own file; ``/ready`` polled with a deadline, ``/metrics`` parsed,
  SIGTERM with a deadline then SIGKILL.
* :class:`QradarStandIn` - a threaded TCP syslog receiver collecting deframed messages.
* :func:`make_pki` - a throw-away CA, a second CA, server and client certificates (openssl CLI).

Every wait has a deadline and every process or thread started here is stopped by its
``stop()``/``close()`` (the fixtures in conftest.py call them).  Nothing is sent anywhere but
127.0.0.1.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson

from parsers.framing import Deframer

REPO = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"


# ============================================================================ ports and waits

_given_ports: set[int] = set()


def _own_port_range() -> range | None:
    """The ports this test process hands out: below the kernel's ephemeral range, so no outgoing
    connection (a sender, a NATS route, HAProxy's health checks) can take one between the moment
    :func:`free_port` checks it and the moment a relay binds it. Under pytest-xdist each worker gets
    its own slice, so two workers never hand out the same port. ``None`` when the ephemeral range
    starts too low to leave room (then ports come from the kernel, as before)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            eph_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    low, high = 10000, eph_low              # [low, high): never ephemeral
    if high - low < 4000:
        return None
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    size = (high - low) // max(count, 1)
    return range(low + index * size, low + (index + 1) * size)


_PORTS = _own_port_range()
_next_port: list[int] = []


def _bindable(port: int) -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            t.bind((LOOPBACK, port))
            u.bind((LOOPBACK, port))
    except OSError:
        return False
    return True


def free_port() -> int:
    """A port that is free on 127.0.0.1 for TCP and UDP alike, never the same twice per run, and
    (where the kernel leaves room) outside the ephemeral range, so nothing else takes it before
    the process it is meant for binds it (see :func:`_own_port_range`)."""
    if _PORTS is not None:
        if not _next_port:                  # a random start, so back-to-back runs use other ports
            _next_port.append(_PORTS.start + (os.getpid() * 7919) % len(_PORTS))
        for _ in range(len(_PORTS)):
            port = _next_port[0]
            _next_port[0] = port + 1 if port + 1 < _PORTS.stop else _PORTS.start
            if port not in _given_ports and _bindable(port):
                _given_ports.add(port)
                return port
        raise RuntimeError(f"no free port left in {_PORTS.start}-{_PORTS.stop - 1} on 127.0.0.1")
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind((LOOPBACK, 0))
            port = t.getsockname()[1]
        if port not in _given_ports and _bindable(port):
            _given_ports.add(port)
            return port
    raise RuntimeError("no free port found on 127.0.0.1")


class WaitTimeout(AssertionError):
    """A wait that ran out of time: the test's expectation was not met in time."""


def wait_until(pred, timeout: float, *, what: str, interval: float = 0.05):
    """Poll ``pred()`` until it returns a truthy value (returned) or ``timeout`` seconds pass
    (:class:`WaitTimeout` naming ``what``)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


async def until(pred, timeout: float, *, what: str, interval: float = 0.02):
    """:func:`wait_until` for coroutines: polls with ``asyncio.sleep`` so the loop keeps running."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)


def run_async(coro, timeout: float):
    """Run a test coroutine in a fresh event loop; it fails after ``timeout`` s rather than hang."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def run_sinks(sinks, until_pred, timeout: float = 20.0) -> bool:
    """Run the sinks until ``until_pred()`` is true (or ``timeout`` s passed), stop them and
    return whether it became true.  A sink loop that crashes fails at once."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(s.run(stop)) for s in sinks]
    deadline = time.monotonic() + timeout
    ok = False
    try:
        while time.monotonic() < deadline:
            if until_pred():
                ok = True
                break
            for t in tasks:
                if t.done():
                    t.result()  # surface a crash of the loop
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
    return ok


# ============================================================================ messages

def sigma_line(inc: str, risk: int = 82, *, msgid: str = "created", status: str | None = "OPEN",
               actor: str | None = "jdoe", entity: str | None = "Primary Site", alarm_count: str | None = "12",
               host: str = "rx-01", pri: int = 137, sd: dict | None = None, body: dict | None = None,
               body_extra: dict | None = None) -> bytes:
    """One RFC 5424 RhythmX SigmaIncident message (like examples/samples/sigma_incidents.log),
    without a trailing LF.

    The SD element ``incident@32473`` holds ``id``, ``actor``, ``entity``, ``status``,
    ``risk_score`` and ``alarm_count`` in that order (a parameter given as None is left out),
    then the ``sd`` parameters.  The JSON body is ``body`` if given, else ``{"incident_id": inc,
    "risk_score": risk}``; ``body_extra`` keys are appended to it.
    """
    params = [("id", inc), ("actor", actor), ("entity", entity), ("status", status), ("risk_score", risk),
              ("alarm_count", alarm_count), *(sd or {}).items()]
    sd_text = " ".join(f'{k}="{v}"' for k, v in params if v is not None)
    obj = dict(body) if body is not None else {"incident_id": inc, "risk_score": risk}
    obj.update(body_extra or {})
    text = json.dumps(obj, separators=(",", ":"))
    return (f'<{pri}>1 2026-03-13T04:30:00.123Z {host} SigmaIncident 4242 {msgid} '
            f'[incident@32473 {sd_text}] {text}').encode()


def frame(messages, *, octet: bool = False) -> bytes:
    """Messages (bytes or str) framed for syslog over TCP: LF-terminated or octet-counted."""
    out = []
    for m in messages:
        m = m.encode() if isinstance(m, str) else m
        out.append(b"%d %s" % (len(m), m) if octet else m + b"\n")
    return b"".join(out)


def send_tcp(port: int, messages, *, octet: bool = False, timeout: float = 10.0, wait_eof: float = 5.0) -> None:
    """Send messages over one TCP connection to 127.0.0.1:``port`` (LF framing, or octet
    counting), close the sending side and wait up to ``wait_eof`` s for the peer to close
    (the relay and rsyslog close after reading everything)."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
        s.sendall(frame(messages, octet=octet))
        s.shutdown(socket.SHUT_WR)
        s.settimeout(wait_eof)
        try:
            while s.recv(4096):
                pass
        except OSError:
            pass


def seq_of(x) -> int:
    """The sequence number of a test message: ``meta["seq"]`` of a queue row (the rows
    tests/test_queue.py writes), or, given a delivered line (bytes or str), the sequence number
    of the complete, intact JSON rendering (sink format json) of a
    ``sigma_line(f"INC-{seq:08d}", ..., sd={"seq": seq})``.  Raises when it is neither."""
    if not isinstance(x, (bytes, bytearray, memoryview, str)):
        return x.meta["seq"]
    ev = orjson.loads(x)["event"]
    seq = int(ev["extra"]["seq"])
    assert ev["id"] == "INC-%08d" % seq, bytes(x[:300])
    assert ev["product"] == "SigmaIncident", bytes(x[:300])
    return seq


def counts(emu, field: str = "relaydedupkey") -> dict[str, int]:
    """XSOAR emulator incidents per value of ``field`` (a custom field, or
    ``"rawJSON:relay.dedup_key"`` for the webhook)."""
    return {k: len(v) for k, v in emu.by_field(field).items()}


def make_queue(path, **kw):
    """A DiskQueue at ``path`` with synchronous NORMAL and the tests' fast retry policy
    (0.05 s doubling to 0.2 s, retried for ever); ``kw`` overrides either."""
    from relay.queue import DiskQueue, RetryPolicy
    kw.setdefault("synchronous", "NORMAL")
    kw.setdefault("retry", RetryPolicy(base=0.05, factor=2.0, cap=0.2, max_attempts=0))
    return DiskQueue(path, **kw)


# ============================================================================ the relay as a process

def relay_command() -> list[str]:
    """The relay's console script beside the running Python (the venv's ``relay``), else
    ``python -m relay.cli``."""
    exe = Path(sys.executable).parent / "relay"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "relay.cli"]


def relay_cli(*args, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    """``relay ARGS...`` run to completion, output captured."""
    return subprocess.run([*relay_command(), *map(str, args)], capture_output=True, timeout=timeout, **kw)


def stop_process(proc: subprocess.Popen, term_timeout: float) -> int | None:
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
    ones (0 when there is none; NaN, a gauge not known yet, stays NaN and compares false)."""

    def value(self, name: str, **labels) -> float:
        want = {(k, str(v)) for k, v in labels.items()}
        return sum(v for lab, v in self.get(name, {}).items() if want <= set(lab))


class RelayProcess:
    """``relay run --config <workdir>/relay.toml`` as a subprocess, to be started as often as a
    test needs (after :meth:`stop` or :meth:`kill`).

    ``config`` is the TOML text; its ``[relay] metrics_address`` must be
    ``127.0.0.1:<metrics_port>`` (polled for /ready and /metrics).  ``tcp_port``: the port of its
    TCP source, for :meth:`send`.  ``env``: extra environment.  Every start writes stdout and
    stderr to its own ``<workdir>/relay-N.log`` (:meth:`stderr`: the latest start, :meth:`log`:
    every start of this object).  Use the ``make_relay`` fixture, a ``with`` block, or call
    :meth:`stop` in a ``finally``.
    """

    def __init__(self, workdir: Path, config: str, metrics_port: int, *, tcp_port: int | None = None,
                 ready_timeout: float = 20.0, stop_timeout: float = 20.0, env: dict | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "relay.toml"
        self.config_path.write_text(config, encoding="utf-8")
        self.metrics_port = metrics_port
        self.tcp_port = tcp_port
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.env = dict(env or {})
        self.logs: list[Path] = []
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        self._log = None

    # lifecycle
    @property
    def starts(self) -> int:
        return len(self.logs)

    def start(self, *, wait_ready: bool = True, ready_timeout: float | None = None) -> "RelayProcess":
        """Start ``relay run``; unless ``wait_ready`` is false, return once /ready answers 200."""
        assert not self.alive(), "the relay is running already"
        n = 1
        while (self.workdir / f"relay-{n}.log").exists():
            n += 1
        path = self.workdir / f"relay-{n}.log"
        self.logs.append(path)
        self._log = open(path, "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("NOTIFY_SOCKET", None)
        env.update(self.env)
        self.returncode = None
        self.proc = subprocess.Popen([*relay_command(), "run", "--config", str(self.config_path)],
                                     cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env)
        if wait_ready:
            try:
                self.wait_ready(self.ready_timeout if ready_timeout is None else ready_timeout)
            except BaseException:
                self.stop()
                raise
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay exited with {self.proc.returncode} before /ready:\n{self.stderr()[-4000:]}")
            try:
                status, body = self.ready()
                if status == 200:
                    return
                last = f"{status} {body.strip()}"
            except OSError as e:
                last = repr(e)
            time.sleep(0.05)
        raise WaitTimeout(f"relay not ready after {timeout:g} s (last: {last}):\n{self.stderr()[-4000:]}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM (graceful drain), SIGKILL after ``timeout`` (default ``stop_timeout``) s.
        Returns the exit code; again the same one when it already stopped."""
        if self.proc is not None and self.returncode is None:
            self.returncode = stop_process(self.proc, self.stop_timeout if timeout is None else timeout)
        self._close_log()
        return self.returncode

    def kill(self) -> int | None:
        """SIGKILL: no drain, no goodbye.  Returns the exit code."""
        if self.proc is not None and self.returncode is None:
            self.proc.kill()
            self.returncode = self.proc.wait(timeout=10)
        self._close_log()
        return self.returncode

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "RelayProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # input
    def send(self, messages, **kw) -> None:
        """:func:`send_tcp` to the relay's TCP source (``tcp_port``)."""
        assert self.tcp_port, "RelayProcess(tcp_port=...) was not given"
        send_tcp(self.tcp_port, messages, **kw)

    # observation
    def http(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        url = f"http://{LOOPBACK}:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback only
                return r.status, r.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8", "replace")

    def ready(self) -> tuple[int, str]:
        return self.http("/ready", timeout=2.0)

    def metrics(self) -> Metrics:
        status, body = self.http("/metrics")
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}: {body[:200]}")
        return Metrics(parse_prometheus(body))

    def metric(self, name: str, **labels) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels``."""
        return self.metrics().value(name, **labels)

    def wait_metric(self, name: str, value: float, timeout: float = 30.0, **labels) -> Metrics:
        """Poll /metrics until ``name{labels}`` >= value; returns the metrics seen then."""
        seen: list = [None]

        def ok():
            m = self.metrics()
            seen[0] = m.value(name, **labels)
            return m if seen[0] >= value else None
        try:
            return wait_until(ok, timeout, what=f"{name}{labels or ''} >= {value}", interval=0.1)
        except WaitTimeout as e:
            raise WaitTimeout(f"{e} (last value {seen[0]})\n--- relay log ---\n{self.stderr()[-4000:]}") from None

    def stderr(self) -> str:
        """What the latest start wrote (stdout and stderr)."""
        return self._read(self.logs[-1]) if self.logs else ""

    def log(self, start: int | None = None) -> str:
        """What every start of this object wrote, or only start number ``start`` (1, 2, ...)."""
        paths = self.logs if start is None else [self.logs[start - 1]]
        return "".join(self._read(p) for p in paths)

    @staticmethod
    def _read(p: Path) -> str:
        try:
            return p.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""


# ============================================================================ QRadar stand-in

class QradarStandIn:
    """A TCP syslog receiver on 127.0.0.1 that collects deframed messages (LF or octet framing).

    ``lines`` holds the decoded messages in arrival order, ``line_conn`` the number (1, 2, ...) of
    the connection each came on, ``connections`` counts accepted connections, ``closed_at`` maps a
    connection's number to the ``time.monotonic()`` its peer closed it, ``problems`` keeps
    deframing problems.  ``wait_for(n, timeout)`` blocks until at
    least ``n`` messages arrived.  ``port=0`` picks a free port; ``close()`` stops everything.
    """

    def __init__(self, port: int = 0, max_frame: int = 1 << 20) -> None:
        self.max_frame = max_frame
        self.lines: list[str] = []
        self.line_conn: list[int] = []
        self.closed_at: dict[int, float] = {}
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
                number = self.connections
            t = threading.Thread(target=self._read_loop, args=(conn, number), daemon=True)
            self._threads.append(t)
            t.start()

    def _read_loop(self, conn: socket.socket, number: int) -> None:
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
                self._add(d.feed(data), d, number)
            if self._stop.is_set():
                self._at_stop(conn, d)
            self._add(d.close(partial=True), d, number)
            if not self._stop.is_set():
                with self._cond:
                    self.closed_at[number] = time.monotonic()
        finally:
            conn.close()

    def _at_stop(self, conn: socket.socket, deframer: Deframer) -> None:
        """A connection about to be closed by :meth:`close`: what it had read is counted, and
        ``deframer`` still holds the partial frame its last read ended in (added as a line
        after this returns, unless taken); nothing by default.  bench/chaos_soak.py takes what
        is still unread here."""

    def _add(self, frames: list[bytes], d: Deframer, number: int) -> None:
        probs = d.drain_problems()
        if not frames and not probs:
            return
        with self._cond:
            self.lines.extend(f.decode("utf-8", "replace") for f in frames)
            self.line_conn.extend([number] * len(frames))
            self.problems.extend(probs)
            self._cond.notify_all()

    def count(self) -> int:
        with self._cond:
            return len(self.lines)

    def take(self) -> list[str]:
        """The messages that arrived since the last take, removed (bounded memory for long runs)."""
        with self._cond:
            lines = self.lines[:]
            self.lines.clear()
            self.line_conn.clear()
        return lines

    def snapshot(self) -> list[str]:
        with self._cond:
            return list(self.lines)

    def snapshot_by_connection(self) -> tuple[list[str], list[int], dict[int, float]]:
        """``(lines, line_conn, closed_at)`` copied at one instant."""
        with self._cond:
            return list(self.lines), list(self.line_conn), dict(self.closed_at)

    def wait_for(self, n: int, timeout: float) -> list[str]:
        """Wait until at least ``n`` messages arrived; returns a copy of all of them.
        Raises :class:`WaitTimeout` with the count reached."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.lines) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(f"QRadar stand-in got {len(self.lines)} of {n} messages in {timeout:g} s")
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


# ============================================================================ PKI

def _openssl(*args, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(d: Path) -> Path:
    """A throw-away PKI in ``d``, made with the openssl CLI (EC P-256, valid 2 days):

    * ``ca.pem``/``ca.key`` - the CA; ``other-ca.pem``/``other-ca.key`` - a CA nobody uses;
    * ``server.pem``/``server.key`` - issued by ca for IP 127.0.0.1 and DNS localhost (serverAuth);
    * ``client.pem``/``client.key`` - issued by ca (clientAuth).
    """
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
                 "-subj", f"/CN=Relay Test {ca}",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    common = ("basicConstraints=CA:FALSE\nauthorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
              "keyUsage=critical,digitalSignature,keyEncipherment\n")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"),
                      ("client", "extendedKeyUsage=clientAuth\n")):
        (d / f"{name}.ext").write_text(common + ext)
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=relay test {name}",
                 cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    return d

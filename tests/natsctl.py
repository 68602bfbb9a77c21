"""nats-server processes for the tests: one node, or a 3-node JetStream cluster, on loopback.

Every node gets free ports (client, cluster route, monitoring), its own store directory under the
test's tmp dir and its own log file; :meth:`NatsCluster.wait_ready` polls each node's
``/healthz`` (JetStream enabled and current).  :meth:`kill` is SIGKILL, :meth:`start` starts a
node again on the same ports and store.  Use it as a context manager (or call :meth:`close`):
every process it started is killed.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.harness import LOOPBACK, WaitTimeout, free_port

NATS_SERVER = shutil.which("nats-server") or ("/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server")
                                               else None)


def need_nats():
    if NATS_SERVER is None:
        pytest.skip("needs nats-server (scripts/test-deps installs Debian's nats-server)")


class NatsCluster:
    def __init__(self, workdir: Path, nodes: int = 3) -> None:
        need_nats()
        self.dir = Path(workdir)
        self.n = nodes
        self.ports = [free_port() for _ in range(nodes)]
        self.routes = [free_port() for _ in range(nodes)]
        self.http = [free_port() for _ in range(nodes)]
        self.procs: list[subprocess.Popen | None] = [None] * nodes
        self.logs: list = [None] * nodes
        for i in range(nodes):
            (self.dir / f"n{i}").mkdir(parents=True, exist_ok=True)
            routes = ", ".join(f"nats-route://{LOOPBACK}:{p}" for j, p in enumerate(self.routes) if j != i)
            cluster = (f"cluster {{ name: C1, listen: {LOOPBACK}:{self.routes[i]}, routes: [{routes}] }}\n"
                       if nodes > 1 else "")
            (self.dir / f"n{i}.conf").write_text(
                f"server_name: n{i}\nlisten: {LOOPBACK}:{self.ports[i]}\nhttp: {LOOPBACK}:{self.http[i]}\n"
                f"jetstream {{ store_dir: \"{self.dir / f'n{i}'}\" }}\n" + cluster, encoding="utf-8")

    @property
    def urls(self) -> list[str]:
        return [f"nats://{LOOPBACK}:{p}" for p in self.ports]

    def toml_servers(self) -> str:
        return "[" + ", ".join(f'"{u}"' for u in self.urls) + "]"

    def start(self, i: int | None = None) -> "NatsCluster":
        for k in (range(self.n) if i is None else [i]):
            assert self.procs[k] is None or self.procs[k].poll() is not None
            log = open(self.dir / f"n{k}.log", "ab")
            self.logs[k] = log
            self.procs[k] = subprocess.Popen([NATS_SERVER, "-c", str(self.dir / f"n{k}.conf")],
                                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        return self

    def healthy(self, k: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{self.http[k]}/healthz", timeout=2) as r:  # noqa: S310
                return r.status == 200
        except (OSError, urllib.error.HTTPError):
            return False

    def wait_ready(self, timeout: float = 30.0, nodes=None) -> None:
        deadline = time.monotonic() + timeout
        want = list(range(self.n)) if nodes is None else list(nodes)
        while time.monotonic() < deadline:
            for k in want:
                p = self.procs[k]
                if p is not None and p.poll() is not None:
                    raise RuntimeError(f"nats-server n{k} exited with {p.returncode}: {self.log(k)[-2000:]}")
            if all(self.healthy(k) for k in want):
                return
            time.sleep(0.1)
        raise WaitTimeout(f"nats-server nodes {want} not healthy after {timeout:g} s: "
                          + " | ".join(self.log(k)[-800:] for k in want))

    def kill(self, k: int) -> None:
        p = self.procs[k]
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=10)

    def log(self, k: int) -> str:
        try:
            return (self.dir / f"n{k}.log").read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        for k in range(self.n):
            self.kill(k)
            if self.logs[k] is not None:
                self.logs[k].close()
                self.logs[k] = None

    def __enter__(self) -> "NatsCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

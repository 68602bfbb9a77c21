"""Per process, per round: where the relay daemon's CPU goes, and whether its memory comes back.

    .venv/bin/python bench/bench_daemon.py [-n 300000] [--rounds 4] [--workers 2] [--fresh]
                                           [--sender sendall|socat] [--root DIR] [--label L]

Starts ``relay run`` with bench/bench_e2e.py's config (TCP source, the SigmaIncident route, LEEF
over TCP to a counting sink, ``synchronous = FULL``), then sends ``-n`` messages (all forwarded)
on one connection, ``--rounds`` times, to the same daemon (``--fresh``: a new daemon each
round).  For each round, from /proc: CPU per message of the main process and of the ingest
workers (user + kernel, the kernel part in brackets), the busiest threads of the main process,
minor page faults per message, msgs/s, and the main process's resident memory before and after.

A daemon that keeps what it no longer needs shows it here: its RSS grows round after round
and new heap pages fault in (tests/test_server.py
``test_worker_hand_overs_are_freed_without_the_cyclic_collector`` has the case that did).
The host is noisy: compare two trees by alternating them (``--root`` runs another checkout's
relay, e.g. a ``git worktree`` of the old commit with the built extension copied in).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TCK = os.sysconf("SC_CLK_TCK")


def _load_e2e(root: Path):
    spec = importlib.util.spec_from_file_location("bench_e2e", root / "bench" / "bench_e2e.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_e2e"] = mod
    spec.loader.exec_module(mod)
    return mod


def _stat(pid: int) -> tuple[int, int, int]:
    """-> (utime, stime, minflt) of a whole process, threads included."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        rest = f.read().rpartition(b")")[2].split()
    return int(rest[11]), int(rest[12]), int(rest[7])


def _rss_mb(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20


def _children(e2e, pid: int) -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit() and (e2e._stat(int(d)) or (0,))[0] == pid]


def _send(kind: str, data: Path, payload: bytes, port: int):
    if kind == "socat":
        return subprocess.Popen(["socat", "-u", f"OPEN:{data}", f"TCP:127.0.0.1:{port}"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    return s


def _done(sender) -> None:
    if isinstance(sender, subprocess.Popen):
        sender.wait(30)
    else:
        sender.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=300_000, help="messages per round (default 300000)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--fresh", action="store_true", help="a new daemon for every round")
    ap.add_argument("--sender", choices=("sendall", "socat"), default="sendall")
    ap.add_argument("--root", type=Path, default=HERE.parent, help="the checkout whose relay runs")
    ap.add_argument("--label", default=None)
    ap.add_argument("--stall", type=float, default=20.0, help="give up after this long without progress (s)")
    args = ap.parse_args()
    root = args.root.resolve()
    label = args.label or root.name
    if args.sender == "socat" and shutil.which("socat") is None:
        ap.error("socat is not installed (scripts/test-deps installs it)")
    e2e = _load_e2e(root)
    tmp = Path(tempfile.mkdtemp(prefix="bench-daemon-"))
    data = tmp / "messages.log"
    e2e.generate(data, 0, args.n, 100)
    payload = data.read_bytes() if args.sender == "sendall" else b""
    conf = argparse.Namespace(sync="FULL", udp_rcvbuf=8 << 20, profile_rate=100)
    print(f"bench_daemon: {label} ({root}), {args.n} messages a round, {args.rounds} round(s), "
          f"workers {args.workers}, sender {args.sender}, {'a new daemon each round' if args.fresh else 'one daemon'}",
          flush=True)
    daemon = sink = None
    sent = 0
    try:
        for r in range(1, args.rounds + 1):
            if daemon is None:
                work = Path(tempfile.mkdtemp(dir=tmp))
                sink = e2e.CountingSink()
                daemon = e2e.RelayDaemon(work, sink.port, conf, None, args.workers)
                sent = 0
                time.sleep(0.5)
            kids = _children(e2e, daemon.pid)
            rss0 = _rss_mb(daemon.pid)
            m0, k0, th0 = _stat(daemon.pid), [_stat(k) for k in kids], e2e.task_cpu(daemon.pid)
            t0 = time.monotonic()
            sender = _send(args.sender, data, payload, daemon.tcp_port)
            ok = e2e.wait_sink(sink, sent + args.n, args.stall, 600)
            wall = (sink.last or time.monotonic()) - t0
            m1, k1, th1 = _stat(daemon.pid), [_stat(k) for k in kids], e2e.task_cpu(daemon.pid)
            _done(sender)
            sent += args.n
            n = args.n
            us = 1e6 / TCK / n
            mu, ms = (m1[0] - m0[0]) * us, (m1[1] - m0[1]) * us
            wu = sum(b[0] - a[0] for a, b in zip(k0, k1)) * us
            ws = sum(b[1] - a[1] for a, b in zip(k0, k1)) * us
            threads = sorted(((v - th0.get(t, 0.0)) * 1e6 / n for t, v in th1.items()), reverse=True)[:4]
            print(f"round {r}: main {mu + ms:.2f} ({ms:.2f}) us/msg, workers {wu + ws:.2f} ({ws:.2f}), "
                  f"total {mu + ms + wu + ws:.2f}; {n / wall / 1000:.1f}k msgs/s; main threads "
                  f"{', '.join(f'{x:.2f}' for x in threads)}; page faults/msg main {(m1[2] - m0[2]) / n:.3f} "
                  f"workers {sum(b[2] - a[2] for a, b in zip(k0, k1)) / n:.3f}; main RSS {rss0} -> "
                  f"{_rss_mb(daemon.pid)} MB{'' if ok else '; INCOMPLETE: the sink stalled'}", flush=True)
            if args.fresh or not ok:
                daemon.stop()
                sink.close()
                daemon = sink = None
    finally:
        if daemon is not None:
            daemon.stop()
        if sink is not None:
            sink.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

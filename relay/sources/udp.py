"""UDP syslog source: one message per datagram (RFC 5426).

Receive path (see docs of the reference performance notes): a non-blocking socket
registered with ``loop.add_reader``; on every readiness event the socket is drained
with ``recvfrom_into`` until EAGAIN (at most :attr:`UdpSource.max_per_wakeup`
datagrams, then the loop gets a turn), and the datagrams go to the pipeline in
batches of up to :data:`relay.sources.BATCH`.  asyncio's stock datagram endpoint reads
one datagram per loop turn and loses a fifth of the traffic at 50k/s.

Per datagram, in this order: allowlist (drop ``allowlist``), one trailing LF or NUL
stripped, empty (drop ``empty``), longer than ``max_message_size`` (``truncate``:
kept cut, counted ``oversize_truncated``; ``drop``: dropped, ``oversize``).  When
``pipeline.backlog() > pipeline.max_backlog`` (messages) or when the datagram bytes this
source handed over and that are not yet committed would exceed
:attr:`UdpSource.max_backlog_bytes` (32 MiB), a whole batch is dropped (``backlog``): memory
is bounded by bytes, not only by a count (60 KB datagrams at 4,000/s once took the relay to
1.2 GB).

On Linux, with the native module ``relay._recvmmsg`` built (setup.py), the drain reads up to
:data:`MMSG_COUNT` datagrams per system call (``recvmmsg(2)``, MSG_TRUNC: the same lengths)
and ``relay._recvmmsg.recv_items`` does the per-datagram steps above in C for the whole call
(the sender's address stays raw bytes, looked up in the same peer cache, until a new one is
seen); the batches and the hand-over are the same code.  ``RELAY_PURE=1`` or a missing
module: ``recvfrom_into``, one datagram per call, the steps in Python
(tests/test_sources.py compares the two).

A drain's last batch, when it is short of :data:`relay.sources.BATCH`, waits up to
``batch_linger`` seconds (:data:`BATCH_LINGER`, 5 ms; 0: never) for the next drains to fill
it: at 100k datagrams/s the drains found ~120 datagrams each, and every batch is a hand-over
to a worker, a reply and a commit, so the source used 13 µs of CPU per datagram against 7 on
one TCP connection (bench/README.md, "Ninth round").  The time counts from the first datagram
held, and never restarts: a trickle waits at most ``batch_linger``.  What is held is handed
over on :meth:`UdpSource.stop`.  UDP has no acknowledgement: datagrams held here are no more
at risk in a crash than the ones waiting in the kernel's receive buffer.

The kernel's own receive-buffer drops for the socket (the ``drops`` column of
``/proc/net/udp`` / ``udp6``) are the gauge ``relay_udp_kernel_drops_total``.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time

from .. import kinds
from .base import BATCH, Source, bind_error, log

__all__ = ["UdpSource", "proc_udp_drops"]

_MSG_TRUNC = getattr(socket, "MSG_TRUNC", 0)
_PEER_CACHE_MAX = 4096
#: Datagrams per recvmmsg(2) call.
MMSG_COUNT = 64
#: Seconds a short batch waits for more datagrams (the ``batch_linger`` key's default).
BATCH_LINGER = 0.005

if os.environ.get("RELAY_PURE", "") not in ("", "0"):
    _recvmmsg = None
else:
    try:
        from .. import _recvmmsg
    except ImportError:          # not built: recvfrom_into
        _recvmmsg = None


def proc_udp_drops(inode: int, v6: bool) -> int | None:
    """The kernel's drop count for the UDP socket with this inode (Linux), or None."""
    want = str(inode).encode()
    try:
        with open("/proc/net/udp6" if v6 else "/proc/net/udp", "rb") as f:
            f.readline()                                    # header
            for line in f:
                parts = line.split()
                # sl local rem st tx:rx tr:tm retrnsmt uid timeout inode ref pointer drops
                if len(parts) >= 13 and parts[9] == want:
                    return int(parts[12])
    except (OSError, ValueError):
        return None
    return None


class UdpSource(Source):
    """Receives syslog datagrams on ``cfg.address`` (IPv4 or IPv6)."""

    #: Datagrams read per readiness event before yielding to the loop.
    max_per_wakeup = 2000
    #: Datagram bytes handed over and not yet durably queued, at most (the rest is dropped
    #: and counted as ``backlog``, like a message-count backlog).
    max_backlog_bytes = 32 << 20

    def __init__(self, cfg, pipeline, registry=None) -> None:
        super().__init__(cfg, pipeline, registry)
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inode = 0
        self._v6 = False
        self._kdrops_last = 0
        # MSG_TRUNC makes recvfrom_into return the datagram's real length, so one
        # byte more than the limit is enough to tell "exactly max + LF" from oversize.
        self._buf = bytearray(cfg.max_message_size + 1)
        self._mv = memoryview(self._buf)
        self._peers: dict = {}          # addr tuple -> "ip:port", or None when not allowed
        self._raw_peers: dict = {}      # raw sockaddr bytes (recvmmsg) -> the same
        self.batch_receive = _recvmmsg is not None and _MSG_TRUNC != 0
        self.receive_buffer_granted: int | None = None
        self.wakeups = 0                # readiness events handled (tests, diagnostics)
        self.inflight_bytes = 0         # handed over, not yet committed
        self.batches = 0                # pipeline.handle() calls
        self.linger = float(cfg.options.get("batch_linger", BATCH_LINGER))
        self._held: list | None = None  # a short batch waiting for more (batch_linger)
        self._held_h: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._sock is not None:
            raise RuntimeError(f"{self!r} already started")
        cfg = self.cfg
        self._loop = loop = asyncio.get_running_loop()
        host, port = cfg.address
        sock = None
        try:
            if host in ("", "*"):
                host = "0.0.0.0"
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
            family, _, _, _, sockaddr = infos[0]
            sock = socket.socket(family, socket.SOCK_DGRAM)
            if family == socket.AF_INET6:
                # like asyncio's TCP servers: "::" means IPv6 only; configure a second source for IPv4
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setblocking(False)
            self._set_receive_buffer(sock)
            sock.bind(sockaddr)
        except OSError as e:
            if sock is not None:
                sock.close()
            raise bind_error(cfg, e) from None
        self._sock = sock
        self._v6 = family == socket.AF_INET6
        self._inode = os.fstat(sock.fileno()).st_ino
        self.bound_address = sock.getsockname()[:2]
        reg = self.registry
        reg.gauge("relay_udp_kernel_drops_total", fn=self.kernel_drops, source=cfg.name)
        granted = self.receive_buffer_granted
        reg.gauge("relay_udp_receive_buffer_bytes", fn=lambda: granted, source=cfg.name)
        loop.add_reader(sock.fileno(), self._on_readable)
        log.info("source %r: listening on udp %s:%s (receive buffer %s bytes)", cfg.name,
                 self.bound_address[0], self.bound_address[1], granted)

    async def stop(self, drain_timeout: float = 10.0) -> None:
        """Stop reading; hand over what the kernel already holds; close the socket."""
        sock = self._sock
        if sock is None:
            return
        self._loop.remove_reader(sock.fileno())
        deadline = time.monotonic() + max(0.0, drain_timeout)
        while self._drain() >= self.max_per_wakeup and time.monotonic() < deadline:
            pass
        self._release()
        self._kdrops_last = self.kernel_drops() or self._kdrops_last
        self._sock = None
        sock.close()
        log.info("source %r: udp listener closed", self.cfg.name)

    def _set_receive_buffer(self, sock: socket.socket) -> None:
        want = self.cfg.receive_buffer
        if want:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, want)
            got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            # Linux doubles the request for bookkeeping and reports the doubled value
            full = min(2 * want, 2**31 - 1) if sys.platform.startswith("linux") else want
            if got < full and hasattr(socket, "SO_RCVBUFFORCE"):
                try:  # beyond net.core.rmem_max: works with CAP_NET_ADMIN (like rsyslog)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUFFORCE, want)
                    got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
                except OSError:
                    pass
            if got < full:
                log.warning("source %r: asked for a %d-byte UDP receive buffer, the kernel granted %d "
                            "(reported, Linux counts double): bursts may be dropped; raise "
                            "net.core.rmem_max to at least %d", self.cfg.name, want, got, want)
        self.receive_buffer_granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    # ------------------------------------------------------------------ metrics

    def kernel_drops(self) -> int | None:
        """Datagrams the kernel dropped on this socket (receive buffer full)."""
        if self._sock is None:
            return self._kdrops_last
        n = proc_udp_drops(self._inode, self._v6)
        if n is not None:
            self._kdrops_last = n
        return n

    # ------------------------------------------------------------------ receive path

    def _on_readable(self) -> None:
        try:
            self._drain()
        except Exception:  # never let one bad batch unregister the reader
            if self.limiter.warning((self.cfg.name, "internal"), "source %r: error in the UDP receive path",
                                    self.cfg.name):
                log.exception("source %r: details", self.cfg.name)

    def _peer(self, addr) -> str | None:
        peers = self._peers
        if len(peers) >= _PEER_CACHE_MAX:
            peers.clear()
        ip = addr[0]
        p = peers[addr] = f"{ip}:{addr[1]}" if self.cfg.allowed(ip) else None
        return p

    def _raw_peer(self, raw: bytes) -> str | None:
        peer = self._peer(_recvmmsg.sockaddr(raw))
        raws = self._raw_peers
        if len(raws) >= _PEER_CACHE_MAX:
            raws.clear()
        raws[raw] = peer
        return peer

    def _datagrams(self):
        """-> iterator of (real length, buffer holding at least min(length, max + 1) bytes,
        peer "ip:port" or None when not allowed), until EAGAIN or the per-wakeup cap: one
        ``recvfrom_into`` per datagram (RELAY_PURE=1, or no relay._recvmmsg; otherwise
        :meth:`_drain_batches`)."""
        sock = self._sock
        cap = self.max_per_wakeup
        recv, buf, mv, peers = sock.recvfrom_into, self._buf, self._mv, self._peers
        for _ in range(cap):
            try:
                n, addr = recv(buf, 0, _MSG_TRUNC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self.limiter.warning((self.cfg.name, "recv"), "source %r: UDP receive error: %s", self.cfg.name, e)
                return
            peer = peers.get(addr, 0)
            if peer == 0:
                peer = self._peer(addr)
            yield n, mv, peer

    def _drain(self) -> int:
        """Read until EAGAIN or the per-wakeup cap; returns datagrams read."""
        if self._sock is None:
            return 0
        self.wakeups += 1
        if self.batch_receive:
            return self._drain_batches()
        mx = self.cfg.max_message_size
        drop_big = self.cfg.oversize == "drop"
        items: list = self._take_held()
        append = items.append
        got = n_allow = n_empty = n_big = n_trunc = 0
        for n, data, peer in self._datagrams():
            got += 1
            if peer is None:
                n_allow += 1
                continue
            if n and n <= mx + 1:
                c = data[n - 1]
                if c == 10 or c == 0:
                    n -= 1
            if n > mx:
                if drop_big:
                    n_big += 1
                    continue
                n_trunc += 1
                n = mx
            elif not n:
                n_empty += 1
                continue
            append((data[:n] if data.__class__ is bytes else bytes(data[:n]), peer))
            if len(items) >= BATCH:
                self._hand_over(items)
                items = []
                append = items.append
        return self._drained(items, got, n_allow, n_empty, n_big, n_trunc)

    def _drain_batches(self) -> int:
        """:meth:`_drain` with recvmmsg(2): ``relay._recvmmsg.recv_items`` does this loop's
        per-datagram work (the peer, the allowlist, LF/NUL, empty, oversize) for a whole call,
        and appends the items; batches are cut at :data:`BATCH` as they are there."""
        recv, fd, size, raws, resolve = _recvmmsg.recv_items, self._sock.fileno(), len(self._buf), \
            self._raw_peers, self._raw_peer
        mx = self.cfg.max_message_size
        drop_big = self.cfg.oversize == "drop"
        items: list = self._take_held()
        cap = self.max_per_wakeup
        got = n_allow = n_empty = n_big = n_trunc = 0
        while cap > 0:
            want = min(MMSG_COUNT, cap, BATCH - len(items))
            try:
                k, a, e, b, t = recv(fd, want, size, mx, drop_big, raws, resolve, items)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.limiter.warning((self.cfg.name, "recv"), "source %r: UDP receive error: %s", self.cfg.name, exc)
                break
            got += k
            n_allow += a
            n_empty += e
            n_big += b
            n_trunc += t
            if len(items) >= BATCH:
                self._hand_over(items)
                items = []
            if k < want:            # drained
                break
            cap -= k
        return self._drained(items, got, n_allow, n_empty, n_big, n_trunc)

    def _drained(self, items: list, got: int, n_allow: int, n_empty: int, n_big: int, n_trunc: int) -> int:
        """The end of a drain (either path): the last batch handed over or held, the counters."""
        if items:
            self._hold(items)
        if got:
            self._received.value += got
            if n_allow or n_empty or n_big or n_trunc:
                self._count_drops(n_allow, n_empty, n_big, n_trunc)
        return got

    # ------------------------------------------------------------------ batch_linger

    def _take_held(self) -> list:
        """A drain starts from the held batch (its datagrams first, the order kept); the
        timer keeps running from the first of them."""
        held, self._held = self._held, None
        return held if held is not None else []

    def _hold(self, items: list) -> None:
        """A drain's last batch: handed over when full or with no linger, else held until
        the timer (started by the first datagram held) or a drain fills it."""
        if len(items) >= BATCH or self.linger <= 0 or self._loop is None or self._sock is None:
            self._release()
            self._hand_over(items)
            return
        self._held = items
        if self._held_h is None:
            self._held_h = self._loop.call_later(self.linger, self._release)

    def _release(self) -> None:
        """Hand over the held batch now (its timer fired, or the source stops)."""
        h, self._held_h = self._held_h, None
        if h is not None:
            h.cancel()
        held, self._held = self._held, None
        if held:
            self._hand_over(held)

    def _count_drops(self, n_allow: int, n_empty: int, n_big: int, n_trunc: int) -> None:
        name = self.cfg.name
        lim = self.limiter
        if n_allow:
            self.dropped("allowlist", n_allow)
            lim.warning((name, "allowlist"), "source %r: dropped datagrams from addresses outside the allowlist",
                        name)
        if n_empty:
            self.dropped("empty", n_empty)
        if n_big:
            self.dropped("oversize", n_big)
            lim.warning((name, "oversize"), "source %r: dropped datagrams longer than max_message_size %d",
                        name, self.cfg.max_message_size)
        if n_trunc:
            self.dropped("oversize_truncated", n_trunc)
            lim.warning((name, "oversize_truncated"),
                        "source %r: truncated datagrams longer than max_message_size %d",
                        name, self.cfg.max_message_size)

    def _hand_over(self, items: list) -> None:
        pl = self.pipeline
        name = self.cfg.name
        nbytes = sum([len(r) for r, _ in items])
        try:
            if pl.backlog() > pl.max_backlog or self.inflight_bytes + nbytes > self.max_backlog_bytes:
                self.dropped("backlog", len(items))
                self.limiter.warning((name, "backlog"),
                                     "source %r: pipeline backlog over %d messages or %d MiB: dropping datagrams",
                                     name, pl.max_backlog, self.max_backlog_bytes >> 20)
                return
            fut = pl.handle(items, self.cfg, time.time())
        except Exception as e:
            self.dropped("pipeline_error", len(items))
            self.limiter.warning((name, "pipeline"), "source %r: pipeline refused %d datagrams: %s: %s",
                                 name, len(items), type(e).__name__, e)
            return
        self.batches += 1
        if fut is not None:
            if fut.done():
                self._handled(fut)
            else:
                self.inflight_bytes += nbytes
                fut.add_done_callback(lambda f, n=nbytes: self._handled(f, n))

    def _handled(self, fut, nbytes: int = 0) -> None:
        self.inflight_bytes -= nbytes
        if fut.cancelled():
            return
        e = fut.exception()   # retrieve it, so asyncio does not complain later
        if e is not None:
            self.limiter.log(logging.ERROR, (self.cfg.name, "pipeline"),
                             "source %r: queueing datagrams failed: %s: %s", self.cfg.name, type(e).__name__, e)


# --------------------------------------------------------------------------- kind

def read_config(t, sc, base_dir) -> None:
    from ..checks import positive, within
    from .base import read_listener
    read_listener(t, sc, base_dir, stream=False)
    sc.receive_buffer = t.get("receive_buffer", int, 4 << 20, check=positive)
    sc.options["batch_linger"] = t.get("batch_linger", float, BATCH_LINGER, check=within(0, 1, "seconds"))


KIND = kinds.register_source(kinds.SourceKind(
    type="udp", read_config=read_config, factory=UdpSource, transport="udp",
    keys=("address", "lenient", "max_message_size", "oversize", "allow", "receive_buffer", "batch_linger"),
    doc="syslog over UDP (RFC 5426): one message per datagram, no acknowledgement"))

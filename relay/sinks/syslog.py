"""Syslog sinks: TCP, TLS and UDP clients (QRadar or any syslog receiver).

The queue holds one complete syslog line per row (``<PRI>1 TIMESTAMP HOST APP - - LEEF:...``)
without framing; this module frames it and sends bytes.  It never renders.

Framing (TCP and TLS)
---------------------
``framing = "octet"`` (RFC 6587 octet counting / RFC 5425) or ``"lf"`` (non-transparent),
by :func:`formats.syslog.frame_batch`: the rule is documented in formats/syslog.py (in short,
octet counting carries any byte; LF framing drops a trailing LF or CRLF and turns every other
CR or LF into a space; either way a NUL becomes a space).  Each payload the framing changed
counts in ``relay_sanitised_total{sink}``.  UDP: one payload per datagram, no framing (a NUL
becomes a space there too, counted the same way).

TCP/TLS delivery: at-least-once without loss on connection breaks
------------------------------------------------------------------
Plain syslog over TCP has no application acknowledgement, and ``write()`` returning only
means that the local kernel has the bytes.  So a batch is *not* acknowledged in the queue
when it has been written.  Instead the sink counts the wire bytes it handed to the kernel on
the connection and reads the kernel's count of bytes not yet acknowledged by the peer
(``ioctl(TIOCOUTQ)`` = SIOCOUTQ on Linux); ``sent - outq`` is what the peer's TCP stack has
acknowledged.  A batch ends at a known wire offset; it is

1. *wire-acknowledged* once ``sent - outq >= end`` (polled every ``ack_poll_interval``,
   5 ms, while bytes are outstanding; once the peer acknowledged everything the poller
   sleeps until the first batch's settle time, and a write wakes it), and
2. *settled* (acked in the queue) once it is wire-acknowledged **and** either
   ``settle_delay`` seconds (1 s) have passed with the connection still up, or the peer has
   acknowledged ``settle_bytes`` (32 MiB) more bytes after it, or the peer has acknowledged
   ``settle_events`` (10,000) more *events* after it.

The event rule bounds the duplicates a crash of the relay (SIGKILL, power loss) can cause:
rows still settling are sent again after a restart, and by time alone that was up to
``settle_delay`` x the rate (~52,000 events per SIGKILL at ~70k msgs/s).  Now it is at most
``settle_events`` wire-acknowledged events plus what is written but not yet acknowledged by
the peer's TCP (bounded by the socket buffers and ``max_unsettled_bytes``).  The event rule
trusts that the receiver has read an event once 10,000 more were acknowledged after it:
with events of 600 bytes or more that is more than Linux's default largest receive buffer
(``tcp_rmem`` max 6 MiB), the same reasoning as ``settle_bytes``.

Why step 2: the peer's TCP acknowledges bytes when they reach its *receive buffer*, before
its application read them.  A receiver that closes or crashes with unread data (Linux then
sends RST) drops whatever sat in that buffer.  Bytes acknowledged ``settle_bytes`` later
have certainly been read if the peer's receive buffer is smaller than that (Linux
``tcp_rmem`` max: 6 MiB by default, 32 MiB on some distributions); otherwise the time rule
assumes the receiver reads within ``settle_delay``.  Remaining window (documented, not
closable without an application-level ack such as RELP): a receiver that keeps data
unread for longer than ``settle_delay`` and then loses it, or that reads it and then loses
it (crash before its own storage); and with TLS 1.3 a server that rejects our client
certificate does so after our handshake completed, so data sent right after it is
TCP-acknowledged and discarded: keep ``settle_delay`` above the round trip (it is) and watch
``relay_send_errors_total{reason="connection_lost"}``.

Batches are pipelined: further batches are written while earlier ones wait to settle,
bounded by ``max_unsettled_bytes`` (64 MiB) and ``max_inflight`` batches (256); the leased
rows of those batches are held in memory (about twice the payload bytes).

TLS: the TLS layer runs on an :class:`ssl.MemoryBIO` pair, so the sink knows exactly which
*wire* (ciphertext) offset ends each batch: the rule above applies to TLS unchanged (no
"buffer empty" approximation needed).  TLS handshake and post-handshake records count as
wire bytes too.

On a connection error, an EOF or RST from the peer, a stall (no byte acknowledged for
``stall_timeout`` = 60 s while bytes are outstanding) or a close, **every batch not yet
settled** is given back to the queue with :class:`~relay.sinks.base.UnavailableError`: the
rows are *released* (no attempt counted; they are the next ones sent) and the sink
reconnects after a backoff.  Duplicates come only from those batches (at most the settle
window plus the unsettled bound); nothing is lost.  A batch in flight during 5 consecutive
breaks with no batch settled in between is *retried* instead (attempt counted), so a
message that makes the receiver drop the connection ends in the DLQ after ``max_attempts``.

Without ``TIOCOUTQ`` (non-Linux) ``outq`` is taken as 0: batches settle ``settle_delay``
after they were written; a break loses at most what the kernel had not delivered then.

Connecting: ``connect_timeout`` covers TCP connect plus the TLS handshake.  Failures
(refused, timeout, DNS, TLS handshake or certificate verification) raise
``UnavailableError`` with the reconnect delay: exponential backoff with full jitter,
``uniform(0, min(reconnect_max, reconnect_min * 2 ** (n - 1)))`` after the n-th consecutive
failure (0.5 s .. 30 s); reset when a batch settles.  ``relay_send_errors_total{reason}``:
``connect``, ``tls``, ``tls_verify``, ``connection_lost``, ``stall``.

TLS context: ``tls_ca`` (PEM CA bundle; system defaults when unset), optional client
certificate ``tls_cert``/``tls_key``, ``tls_verify`` (chain and host name, checked against
``tls_server_name`` or the address host; ``false`` disables both), TLS >= 1.2.

UDP: NO DELIVERY GUARANTEE.  A row is acked as soon as ``send()`` accepted the datagram; the
network or the receiver may drop it without notice.  A payload over 65507 bytes (IPv4;
65527 for IPv6) or refused with EMSGSIZE is dead-lettered (reason ``oversize``).  An ICMP
"port unreachable" reported on a later datagram (``ECONNREFUSED``) releases the rest of the
batch and pauses the sink (the datagrams before it may be lost: UDP).

Options (``SinkConfig.options``): ``settle_delay``, ``settle_bytes``, ``settle_events``, ``ack_poll_interval``,
``stall_timeout``, ``reconnect_min``, ``reconnect_max``, ``max_inflight``,
``max_unsettled_bytes``.
"""
from __future__ import annotations

import asyncio
import collections
import errno
import fcntl
import logging
import random
import socket
import ssl
import struct
import time
from typing import Sequence

import asyncio_dgram

from formats.syslog import scrub_nul

from .base import PermanentError, Sink, UnavailableError

__all__ = ["SyslogStreamSink", "SyslogUdpSink", "UDP_MAX_V4", "UDP_MAX_V6"]

log = logging.getLogger("relay.sinks.syslog")

try:
    import termios
    _TIOCOUTQ = getattr(termios, "TIOCOUTQ", None)
except ImportError:  # pragma: no cover
    _TIOCOUTQ = None

UDP_MAX_V4 = 65507
UDP_MAX_V6 = 65527
_POISON_BREAKS = 5
_INT = struct.Struct("i")


def _opt(cfg, key: str, default):
    opts = getattr(cfg, "options", None) or {}
    v = opts.get(key, default)
    return type(default)(v) if v is not None else default


def make_ssl_context(cfg) -> ssl.SSLContext:
    if cfg.tls_ca:
        ctx = ssl.create_default_context(cafile=str(cfg.tls_ca))
    else:
        ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cfg.tls_cert:
        ctx.load_cert_chain(str(cfg.tls_cert), str(cfg.tls_key) if cfg.tls_key else None)
    if not cfg.tls_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class _ConnError(Exception):
    def __init__(self, msg: str, reason: str) -> None:
        super().__init__(msg)
        self.reason = reason


class _Pending:
    __slots__ = ("end", "size", "fut", "wire_at", "ev_end")

    def __init__(self, end: int, size: int, fut: asyncio.Future, ev_end: int = 0) -> None:
        self.end = end
        self.size = size
        self.fut = fut
        self.wire_at: float | None = None
        self.ev_end = ev_end        # events written on the connection up to the end of this batch


# --------------------------------------------------------------------------- connection
class _Conn:
    """One TCP (optionally TLS) connection with byte-exact acknowledgement tracking."""

    def __init__(self, sink: "SyslogStreamSink", sock: socket.socket, peer: str,
                 sslobj: ssl.SSLObject | None = None, incoming: ssl.MemoryBIO | None = None,
                 outgoing: ssl.MemoryBIO | None = None, sent: int = 0) -> None:
        self.sink = sink
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.sslobj, self.incoming, self.outgoing = sslobj, incoming, outgoing
        self.loop = asyncio.get_running_loop()
        self.sent = sent          # wire bytes accepted by the kernel on this connection
        self.acked = 0            # wire bytes the peer's TCP acknowledged
        self.progress_at = time.monotonic()
        # batches written and not settled, in wire order: first those the peer's TCP has
        # not acknowledged yet, then (``settling``) those waiting out the settle rule
        self.pending: collections.deque[_Pending] = collections.deque()
        self.settling: collections.deque[_Pending] = collections.deque()
        self.unsettled = 0        # plaintext bytes of pending batches
        self.ev_written = 0       # events written on this connection
        self.ev_acked = 0         # events of the batches the peer's TCP acknowledged
        self.room = asyncio.Event()
        self.room.set()
        self.dead: asyncio.Future = self.loop.create_future()
        self.error: _ConnError | None = None
        self.wrote_batches = False
        self._poller: asyncio.Task | None = None
        self._nap: asyncio.Future | None = None   # the poller's sleep until a settle time
        self._reader = asyncio.create_task(self._read_loop())

    # -- acknowledgement tracking
    def outq(self) -> int:
        if _TIOCOUTQ is None:
            return 0
        try:
            return _INT.unpack(fcntl.ioctl(self.fd, _TIOCOUTQ, b"\0\0\0\0"))[0]
        except OSError:
            return self.sent - self.acked  # unknown: assume nothing new was acknowledged

    def check(self) -> None:
        if self.dead.done():
            return
        now = time.monotonic()
        acked = self.sent - self.outq()
        if acked > self.acked:
            self.acked = acked
            self.progress_at = now
        elif self.sent > self.acked and now - self.progress_at > self.sink.stall_timeout:
            self.fail(_ConnError(
                f"peer {self.peer} acknowledged nothing for {self.sink.stall_timeout:g} s "
                f"({self.sent - self.acked} bytes outstanding)", "stall"))
            return
        pending, settling = self.pending, self.settling
        if pending and pending[0].end <= acked:
            while pending and pending[0].end <= acked:
                p = pending.popleft()
                p.wire_at = now
                self.ev_acked = p.ev_end
                settling.append(p)
        if not settling:
            return
        sink = self.sink
        settle_delay, settle_bytes, settle_events = sink.settle_delay, sink.settle_bytes, sink.settle_events
        ev_acked = self.ev_acked
        settled = False
        while settling:
            p = settling[0]
            if (now - p.wire_at < settle_delay and acked - p.end < settle_bytes
                    and ev_acked - p.ev_end < settle_events):
                break
            settling.popleft()
            self.unsettled -= p.size
            settled = True
            if not p.fut.done():
                p.fut.set_result(None)
        if settled:
            self.sink._progress()
            if self.unsettled <= self.sink.max_unsettled_bytes:
                self.room.set()

    async def _poll_loop(self) -> None:
        """Poll ``outq`` every ``ack_poll_interval`` while bytes are outstanding; when the
        peer has acknowledged everything, sleep until the first batch's settle time (a
        write wakes it: :meth:`_wake_poller`)."""
        interval = self.sink.ack_poll_interval
        settle_delay = self.sink.settle_delay
        loop = self.loop
        try:
            while (self.pending or self.settling) and not self.dead.done():
                delay = interval
                if not self.pending and self.sent <= self.acked:
                    delay = max(interval, self.settling[0].wire_at + settle_delay + 0.001
                                - time.monotonic())
                if delay > interval:
                    fut = self._nap = loop.create_future()
                    h = loop.call_later(delay, _resolve, fut)
                    try:
                        await fut
                    finally:
                        self._nap = None
                        h.cancel()
                else:
                    await asyncio.sleep(interval)
                self.check()
        finally:
            self._poller = None

    def _wake_poller(self) -> None:
        nap = self._nap
        if nap is not None and not nap.done():
            nap.set_result(None)

    # -- writing
    async def _writable(self) -> None:
        fut = self.loop.create_future()
        self.loop.add_writer(self.fd, lambda: fut.done() or fut.set_result(None))
        try:
            await asyncio.wait([fut, self.dead], return_when=asyncio.FIRST_COMPLETED)
        finally:
            # after fail() the writer is already removed and the fd may be closed (and its
            # number reused by another socket): never touch it then
            if not self.dead.done():
                self.loop.remove_writer(self.fd)
            fut.cancel()

    async def send_wire(self, data: bytes) -> None:
        view = memoryview(data)
        sock = self.sock
        while view:
            if self.dead.done():
                raise self.error or _ConnError("connection closed", "connection_lost")
            try:
                n = sock.send(view)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                self.fail(_ConnError(f"send to {self.peer} failed: {exc}", "connection_lost"))
                raise self.error from exc
            if n:
                if self.sent == self.acked:
                    self.progress_at = time.monotonic()
                self.sent += n
                view = view[n:]
            if view:
                self._ensure_poller()
                self._wake_poller()
                await self._writable()

    async def write(self, data: bytes, events: int = 1) -> asyncio.Future:
        """Send one framed batch of ``events`` events; returns a future resolved when it
        settles (or failed with :class:`_ConnError` when the connection breaks first)."""
        if self.sslobj is not None:
            self.sslobj.write(data)
            wire = self.outgoing.read()
        else:
            wire = data
        fut = self.loop.create_future()
        self.ev_written += events
        p = _Pending(self.sent + len(wire), len(data), fut, self.ev_written)
        self.pending.append(p)
        self.unsettled += len(data)
        if self.unsettled > self.sink.max_unsettled_bytes:
            self.room.clear()
        self.wrote_batches = True
        await self.send_wire(wire)
        self._ensure_poller()
        self._wake_poller()
        return fut

    def _ensure_poller(self) -> None:
        if self._poller is None and not self.dead.done():
            self._poller = asyncio.create_task(self._poll_loop())

    # -- reading: EOF / RST / TLS alerts
    async def _read_loop(self) -> None:
        loop, sock = self.loop, self.sock
        try:
            while True:
                data = await loop.sock_recv(sock, 65536)
                if not data:
                    self.fail(_ConnError(f"peer {self.peer} closed the connection (EOF)",
                                         "connection_lost"))
                    return
                if self.sslobj is not None:
                    self.incoming.write(data)
                    try:
                        while self.sslobj.read(65536):
                            pass  # a syslog receiver sends no application data; ignore
                    except ssl.SSLWantReadError:
                        pass
                    except ssl.SSLZeroReturnError:
                        self.fail(_ConnError(f"peer {self.peer} closed the TLS session",
                                             "connection_lost"))
                        return
                    if self.outgoing.pending:  # e.g. a TLS 1.3 KeyUpdate response
                        async with self.sink._wlock:
                            await self.send_wire(self.outgoing.read())
                # plain TCP: a syslog receiver sends nothing; discard
        except asyncio.CancelledError:
            raise
        except (OSError, ssl.SSLError, _ConnError) as exc:
            if not self.dead.done():
                self.fail(_ConnError(f"connection to {self.peer} failed: {exc}",
                                     "connection_lost"))

    # -- teardown
    def fail(self, err: _ConnError) -> None:
        if self.dead.done():
            return
        self.error = err
        self.dead.set_result(err)
        self.room.set()
        cur = asyncio.current_task()
        if self._reader is not cur:
            self._reader.cancel()
        if self._poller is not None and self._poller is not cur:
            self._poller.cancel()
        try:
            self.loop.remove_writer(self.fd)
        except (ValueError, OSError):
            pass
        try:
            self.loop.remove_reader(self.fd)
        except (ValueError, OSError):
            pass
        pending = [*self.settling, *self.pending]
        self.pending, self.settling = collections.deque(), collections.deque()
        self.unsettled = 0
        for p in pending:
            if not p.fut.done():
                p.fut.set_exception(err)
                p.fut.exception()  # mark retrieved if nobody awaits it any more
        self.sink._conn_failed(self, err)
        self.loop.call_soon(self._close_sock)

    def _close_sock(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    async def close(self, timeout: float = 1.0) -> None:
        """Graceful close (TLS close_notify, FIN)."""
        if self.dead.done():
            return
        try:
            if self.sslobj is not None:
                try:
                    self.sslobj.unwrap()
                except ssl.SSLError:
                    pass
                out = self.outgoing.read()
                if out:
                    await asyncio.wait_for(self.send_wire(out), timeout)
            self.sock.shutdown(socket.SHUT_WR)
        except (OSError, asyncio.TimeoutError, _ConnError, ssl.SSLError):
            pass
        self.fail(_ConnError("closed by the relay", "closed"))


# --------------------------------------------------------------------------- TCP / TLS sink
class SyslogStreamSink(Sink):
    """Syslog over TCP or TLS with at-least-once delivery (see the module docstring)."""

    type = "syslog"
    packed_lease = True      # send() frames the batch from its packed rows (_lines.frame_items)

    def __init__(self, cfg, queue, **kw) -> None:
        super().__init__(cfg, queue, **kw)
        if cfg.address is None:
            raise ValueError(f"sink {cfg.name}: syslog needs an address")
        self.host, self.port = cfg.address
        self.protocol = cfg.protocol
        if self.protocol not in ("tcp", "tls"):
            raise ValueError(f"sink {cfg.name}: SyslogStreamSink is for tcp/tls, not {cfg.protocol}")
        self.framing = cfg.framing or ("octet" if self.protocol == "tls" else "lf")
        if self.framing not in ("octet", "lf"):
            raise ValueError(f"sink {cfg.name}: unknown framing {self.framing!r}")
        self.connect_timeout = float(cfg.connect_timeout or 10.0)
        self.settle_delay = _opt(cfg, "settle_delay", 1.0)
        self.settle_bytes = _opt(cfg, "settle_bytes", 32 << 20)
        self.settle_events = _opt(cfg, "settle_events", 10_000)
        self.ack_poll_interval = _opt(cfg, "ack_poll_interval", 0.005)
        self.stall_timeout = _opt(cfg, "stall_timeout", 60.0)
        self.reconnect_min = _opt(cfg, "reconnect_min", 0.5)
        self.reconnect_max = _opt(cfg, "reconnect_max", 30.0)
        self.max_inflight = _opt(cfg, "max_inflight", 256)
        self.max_unsettled_bytes = _opt(cfg, "max_unsettled_bytes", 64 << 20)
        self.ssl_context = make_ssl_context(cfg) if self.protocol == "tls" else None
        self.server_hostname = (cfg.tls_server_name or self.host) if self.protocol == "tls" else None
        self._wlock = asyncio.Lock()
        self._conn: _Conn | None = None
        self._fails = 0               # consecutive connect failures/breaks, no settle since
        self._breaks = 0              # breaks with batches written, no settle since
        self._next_connect = 0.0
        self._rng = random.Random()
        self.m_sanitised = self.registry.counter("relay_sanitised_total", sink=self.name)
        self.connects = 0             # successful connections (tests, diagnostics)

    # -- backoff
    def _backoff(self) -> float:
        self._fails += 1
        ceiling = min(self.reconnect_max, self.reconnect_min * 2 ** min(self._fails - 1, 30))
        delay = self._rng.uniform(0.0, ceiling)
        self._next_connect = time.monotonic() + delay
        return delay

    def _progress(self) -> None:
        self._fails = 0
        self._breaks = 0

    def _conn_failed(self, conn: _Conn, err: _ConnError) -> None:
        if err.reason == "closed":
            return
        if conn.wrote_batches:
            self._breaks += 1
        delay = self._backoff()
        log.warning("sink %s: %s; reconnecting in %.2f s", self.name, err, delay)

    def _unavailable(self, err: _ConnError) -> UnavailableError:
        retry_after = max(0.0, self._next_connect - time.monotonic())
        return UnavailableError(str(err), retry_after, reason=err.reason,
                                count_attempt=self._breaks >= _POISON_BREAKS)

    # -- connecting
    async def _connect(self) -> _Conn:
        now = time.monotonic()
        if now < self._next_connect:
            raise UnavailableError(
                f"reconnect to {self.host}:{self.port} in {self._next_connect - now:.2f} s",
                self._next_connect - now, reason="backoff")
        try:
            conn = await asyncio.wait_for(self._open(), self.connect_timeout)
        except asyncio.TimeoutError:
            err = _ConnError(f"connect to {self.host}:{self.port} timed out after "
                             f"{self.connect_timeout:g} s", "connect")
        except ssl.SSLCertVerificationError as exc:
            err = _ConnError(f"TLS certificate verification of {self.host}:{self.port} failed: "
                             f"{exc.verify_message or exc}", "tls_verify")
        except ssl.SSLError as exc:
            err = _ConnError(f"TLS handshake with {self.host}:{self.port} failed: {exc}", "tls")
        except (OSError, _ConnError) as exc:
            err = _ConnError(f"connect to {self.host}:{self.port} failed: {exc}", "connect")
        else:
            self.connects += 1
            log.info("sink %s: connected to %s (%s)", self.name, conn.peer, self.protocol)
            return conn
        delay = self._backoff()
        log.warning("sink %s: %s; next attempt in %.2f s", self.name, err, delay)
        raise UnavailableError(str(err), delay, reason=err.reason)

    async def _open(self) -> _Conn:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        last: Exception | None = None
        for family, type_, proto, _, addr in infos:
            sock = socket.socket(family, type_, proto)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                for opt, val in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 6)):
                    if hasattr(socket, opt):
                        sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), val)
                await loop.sock_connect(sock, addr)
                peer = f"{addr[0]}:{addr[1]}"
                if self.ssl_context is None:
                    return _Conn(self, sock, peer)
                return await self._handshake(sock, peer)
            except BaseException as exc:
                sock.close()
                if not isinstance(exc, OSError) or isinstance(exc, ssl.SSLError):
                    raise
                last = exc
        raise last or OSError(f"no address for {self.host}")

    async def _handshake(self, sock: socket.socket, peer: str) -> _Conn:
        loop = asyncio.get_running_loop()
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        sslobj = self.ssl_context.wrap_bio(incoming, outgoing, server_side=False,
                                           server_hostname=self.server_hostname)
        sent = 0
        while True:
            try:
                sslobj.do_handshake()
                break
            except ssl.SSLWantReadError:
                out = outgoing.read()
                if out:
                    await loop.sock_sendall(sock, out)
                    sent += len(out)
                data = await loop.sock_recv(sock, 65536)
                if not data:
                    raise _ConnError("peer closed the connection during the TLS handshake",
                                     "tls")
                incoming.write(data)
        out = outgoing.read()
        if out:
            await loop.sock_sendall(sock, out)
            sent += len(out)
        return _Conn(self, sock, peer, sslobj, incoming, outgoing, sent=sent)

    # -- sending
    async def send(self, items: Sequence) -> None:
        data, changed = _lines.frame_items(items, self.framing)
        if changed:
            self.m_sanitised.value += changed
        async with self._wlock:
            conn = self._conn
            if conn is None or conn.dead.done():
                self._conn = None
                conn = self._conn = await self._connect()
            while not conn.room.is_set():
                room = asyncio.ensure_future(conn.room.wait())
                try:
                    await asyncio.wait([room, conn.dead], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    room.cancel()
            try:
                fut = await conn.write(data, len(items))
            except _ConnError as err:
                raise self._unavailable(err) from None
            except ssl.SSLError as exc:
                err = _ConnError(f"TLS error: {exc}", "tls")
                conn.fail(err)
                raise self._unavailable(err) from None
        try:
            await fut
        except _ConnError as err:
            raise self._unavailable(err) from None

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()


# --------------------------------------------------------------------------- UDP sink
class SyslogUdpSink(Sink):
    """Syslog over UDP: one payload per datagram; NO delivery guarantee (module doc).

    The sending side is an :mod:`asyncio_dgram` stream connected to the receiver (the design
    card's datagram library): ``await stream.send(payload)`` per datagram, with the transport's
    flow control (it waits when the kernel's send buffer is full), and the errors the kernel
    reports for a connected UDP socket (ICMP port unreachable as ``ECONNREFUSED``) raised by the
    next send, as a plain socket does.  It costs about 2 us more CPU per datagram than
    ``socket.send`` (bench/bench_udp_sink.py: 5.6 against 3.6 us), still ~180k datagrams/s
    per core."""

    type = "syslog"

    def __init__(self, cfg, queue, **kw) -> None:
        super().__init__(cfg, queue, **kw)
        if cfg.address is None:
            raise ValueError(f"sink {cfg.name}: syslog needs an address")
        self.host, self.port = cfg.address
        self.reconnect_min = _opt(cfg, "reconnect_min", 0.5)
        self.reconnect_max = _opt(cfg, "reconnect_max", 30.0)
        self._stream = None
        self.max_datagram = UDP_MAX_V4
        self._fails = 0
        self.m_sanitised = self.registry.counter("relay_sanitised_total", sink=self.name)

    async def _connect(self):
        if self._stream is not None:
            return self._stream
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
            family, _, _, _, addr = infos[0]
            # connected: sets the default peer and makes the kernel report ICMP errors
            stream = await asyncio_dgram.connect(addr[:2])
        except OSError as exc:
            raise UnavailableError(f"UDP socket to {self.host}:{self.port}: {exc}",
                                   self._delay(), reason="connect") from exc
        self.max_datagram = UDP_MAX_V6 if family == socket.AF_INET6 else UDP_MAX_V4
        self._stream = stream
        return stream

    def _delay(self) -> float:
        self._fails += 1
        return random.uniform(0.0, min(self.reconnect_max,
                                       self.reconnect_min * 2 ** min(self._fails - 1, 30)))

    def _drop_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    async def send(self, items: Sequence):
        stream = await self._connect()
        failed = []
        limit = self.max_datagram
        for i, it in enumerate(items):
            p = it.payload
            if len(p) > limit:
                failed.append((it, PermanentError(
                    f"payload of {len(p)} bytes exceeds the UDP maximum of {limit} bytes",
                    reason="oversize")))
                continue
            if b"\0" in p:             # a NUL never reaches the wire (formats/syslog.py)
                p = scrub_nul(p)[0]
                self.m_sanitised.value += 1
            try:
                await stream.send(p)    # raises what the kernel reported since the last send
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:
                    failed.append((it, PermanentError(
                        f"payload of {len(p)} bytes is too large for a datagram: {exc}",
                        reason="oversize")))
                    continue
                err = UnavailableError(f"UDP send to {self.host}:{self.port}: {exc}",
                                       self._delay(), reason="connect")
                failed.extend((rest, err) for rest in items[i:])
                if exc.errno != errno.ECONNREFUSED:
                    self._drop_stream()
                return failed
            except asyncio_dgram.TransportClosed:
                err = UnavailableError(f"UDP send to {self.host}:{self.port}: the socket was closed",
                                       self._delay(), reason="connect")
                failed.extend((rest, err) for rest in items[i:])
                self._stream = None
                return failed
        self._fails = 0     # an error reported after the last datagram is raised by the next send
        return failed

    async def close(self) -> None:
        self._drop_stream()


# --------------------------------------------------------------------------- kind

from .. import kinds  # noqa: E402
from . import _lines  # noqa: E402


def read_config(t, sk, base_dir) -> None:
    from ..checks import cert_and_key, parse_address, pem_certificates, pem_key, positive
    sk.address = t.get("address", str, required=True, check=parse_address)
    sk.protocol = t.get("protocol", str, "tcp", choices=("tcp", "udp", "tls"))
    sk.framing = t.get("framing", str, "octet" if sk.protocol == "tls" else "lf", choices=("octet", "lf"))
    if sk.protocol == "udp" and "framing" in t.data:
        raise t.err("framing", "UDP carries one message per datagram; framing applies to tcp and tls")
    sk.connect_timeout = t.get("connect_timeout", float, 10.0, check=positive)
    if sk.protocol == "tls":
        sk.tls_ca = t.get("tls_ca", str, None, check=pem_certificates(base_dir))
        sk.tls_cert = t.get("tls_cert", str, None, check=pem_certificates(base_dir))
        sk.tls_key = t.get("tls_key", str, None, check=pem_key(base_dir))
        if sk.tls_key is not None and sk.tls_cert is None:
            raise t.err("tls_key", "needs tls_cert (the client certificate)")
        if sk.tls_cert is not None:
            try:
                cert_and_key(sk.tls_cert, sk.tls_key, server=False)
            except ValueError as e:
                raise t.err("tls_key" if sk.tls_key else "tls_cert", str(e)) from None
        sk.tls_verify = t.get("tls_verify", bool, True)
        sk.tls_server_name = t.get("tls_server_name", str, None)
    _lines.read(t, sk)


def make(cfg, queue, **kw) -> Sink:
    if cfg.protocol == "udp":
        return SyslogUdpSink(cfg, queue, **kw)
    return SyslogStreamSink(cfg, queue, **kw)


KIND = kinds.register_sink(kinds.SinkKind(
    type="syslog", read_config=read_config, factory=make, renderer=_lines.renderer,
    keys=("address", "protocol", "framing", "connect_timeout", "tls_ca", "tls_cert", "tls_key", "tls_verify",
          "tls_server_name") + _lines.KEYS,
    doc="syslog lines (LEEF, CEF, JSON or the original RFC 5424) over TCP, TLS or UDP, e.g. to QRadar"))

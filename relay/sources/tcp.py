"""TCP (RFC 6587) and TLS (RFC 5425) syslog sources.

One :class:`asyncio.Protocol` per connection and one :class:`parsers.framing.Deframer`
(octet counting and LF/NUL framing, decided per frame).  All frames of one
``data_received`` go to the pipeline in one ``handle()`` call, which commits them in order.  When ``handle()`` returns a pending
future, the connection stops reading until it completes: an event accepted from
TCP is durably queued before more is read, and full queues push back on the
sender through TCP flow control.  A future that fails closes the connection (the
sender retransmits); nothing more is handed over from it.

Per connection: allowlist, ``max_connections`` and ``max_connections_per_ip`` checked when
it is accepted (before any TLS handshake).  A connection over a cap waits up to 0.2 s,
reading nothing, for a slot (a client that connects and closes in a loop must not lock
itself out while its closed connections are still being reaped), then takes the slot of
the stalest connection when one is stale: a TLS handshake unfinished after 2 s, or no
complete frame for 10 s (dropped as ``evicted``); else it is refused (``max_connections``
/ ``max_connections_per_ip``).  A connection that sent EOF no longer holds a slot.
``idle_timeout`` (0 = none) closes a connection that completed no frame that long (a drip
of bytes that never ends a frame is idleness; waiting for the pipeline is not), the TLS
handshake must finish within ``min(10 s, idle_timeout)``, deframer problems are
counted in ``relay_dropped_total`` (``oversize``, ``oversize_truncated``,
``garbage``, ``partial_at_close``; ``bad_length`` is only logged: those bytes are
kept as a line).  At close, an unterminated line is handed over; an octet-counted
frame cut short is dropped and counted ``partial_at_close``.

TLS: the handshake runs after the connection is accepted (``loop.start_tls``), so
limits apply before any crypto and a failed handshake is counted (``tls_handshake``)
and logged without disturbing the server.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
import time

from parsers.framing import Deframer
from parsers.proxyproto import ProxyError, decode as decode_proxy

from .. import kinds
from ..pipeline import OneSender
from .base import Source, bind_error, log

# Bytes per read from a plain TCP connection (asyncio reads 256 KiB by default).  A
# connection waits for each read's messages to be committed before it reads again (the
# durability contract), so the fixed cost of one round (hand-over to the workers, the
# commit's fsync, waking up) is shared by ~4,000 messages instead of ~1,000: with
# `workers = 2` one busy connection went from ~25k to ~35-45k msgs/s here.
READ_SIZE = 1 << 20

__all__ = ["TcpSource", "TlsSource"]

#: Deframer problem kind -> drop reason (None: logged only).
_REASONS = {
    "oversize_dropped": "oversize",
    "oversize_truncated": "oversize_truncated",
    "garbage": "garbage",
    "partial_at_close": "partial_at_close",
    "bad_length": None,
}


#: a TLS handshake older than this, or a connection without a complete frame for longer, may
#: lose its slot to a new connection when the source is at a cap
EVICT_HANDSHAKE = 2.0
EVICT_IDLE = 10.0
#: how long a connection over a cap waits for a slot (ADMIT_TRIES times), reading nothing
ADMIT_WAIT = 0.05
ADMIT_TRIES = 4
#: a connection from a load balancer must complete its PROXY header within this many seconds
PROXY_TIMEOUT = 3.0
#: bytes looked at (MSG_PEEK) per read of a PROXY header; a longer v2 header takes several reads
PROXY_PEEK = 4096


class _Conn(asyncio.Protocol):
    __slots__ = ("src", "raw", "transport", "peer", "ip", "deframer", "last", "pending", "closed", "failed",
                 "idle_h", "hs_task", "held", "tries", "since", "proxy", "lb")

    def __init__(self, src: "TcpSource", proxy=None) -> None:
        self.src = src
        self.proxy = proxy          # proxy_protocol: the decoded PROXY header
        self.raw = None             # the TCP transport
        self.transport = None       # where data comes from: TCP, or TLS once the handshake is done
        self.peer = "?"
        self.deframer: Deframer | None = None
        self.last = 0.0
        self.pending = 0            # handle() futures not yet done
        self.closed = False
        self.failed = False
        self.idle_h = None
        self.hs_task = None
        self.held = False           # holds a slot (counted in src.conns / src.per_ip)
        self.tries = 0
        self.since = 0.0            # when the connection (or its TLS handshake) started
        self.lb = None              # proxy_protocol: the load balancer's "ip:port"

    # ---------------------------------------------------------------- events

    def connection_made(self, transport) -> None:
        src = self.src
        cfg = src.cfg
        self.raw = transport
        pn = transport.get_extra_info("peername")
        ip = self.ip = pn[0] if pn else "?"
        self.peer = f"{ip}:{pn[1]}" if pn else "?"
        h = self.proxy
        if h is not None:
            self.lb = self.peer
            if h.src is not None:
                ip = self.ip = h.src[0]
                self.peer = f"{ip}:{h.src[1]}"
            # else LOCAL (the load balancer's health check) or v1 UNKNOWN: the load balancer's own
            # connection, trusted by proxy_from, keeps the socket's addresses
        if not (h is not None and h.src is None) and not cfg.allowed(ip):
            self.closed = True
            transport.abort()
            src.dropped("allowlist")
            src.limiter.warning((cfg.name, "allowlist"),
                                "source %r: refused connection from %s%s: not in the allowlist", cfg.name, self.peer,
                                f" (via {self.lb})" if self.lb else "")
            return
        self._admit()

    def _over(self) -> str | None:
        src = self.src
        cfg = src.cfg
        if len(src.conns) >= cfg.max_connections:
            return "max_connections"
        cap = cfg.max_connections_per_ip
        if cap and src.per_ip.get(self.ip, 0) >= cap:
            return "max_connections_per_ip"
        return None

    def _gone(self) -> bool:
        """Has the peer already closed or reset this (paused) connection with nothing to read?"""
        sock = self.raw.get_extra_info("socket")
        sock = getattr(sock, "_sock", sock)     # asyncio's TransportSocket wraps the socket
        if sock is None or not hasattr(sock, "recv"):
            return False
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:         # reset
            return True

    def _admit(self) -> None:
        if self.closed:
            return
        src = self.src
        cfg = src.cfg
        over = self._over()
        if over is not None and self.tries and self._gone():
            # it closed while it waited for a slot: nobody is refused, nothing to hand over
            src.waiting.discard(self)
            self.closed = True
            self.raw.abort()
            return
        if over is not None and self.tries < ADMIT_TRIES:
            # closed connections may still be waiting to be reaped: ask again shortly
            if self.tries == 0:
                self.raw.pause_reading()
            self.tries += 1
            src.waiting.add(self)
            src.loop.call_later(ADMIT_WAIT, self._admit)
            return
        src.waiting.discard(self)
        if over is not None and not src.evict(self.ip if over == "max_connections_per_ip" else None):
            self.closed = True
            self.raw.abort()
            src.dropped(over)
            limit = cfg.max_connections if over == "max_connections" else cfg.max_connections_per_ip
            src.limiter.warning((cfg.name, over), "source %r: refused connection from %s: %s (%d) reached",
                                cfg.name, self.peer, over, limit)
            return
        self.held = True
        src.conns.add(self)
        src.per_ip[self.ip] = src.per_ip.get(self.ip, 0) + 1
        transport = self.raw
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            except OSError:
                pass
        self.deframer = Deframer(cfg.max_message_size, cfg.oversize)
        self.last = self.since = src.loop.time()
        if src.ssl_context is not None:
            transport.pause_reading()
            self.hs_task = src.loop.create_task(self._handshake())
        else:
            self.transport = transport
            if hasattr(transport, "max_size"):   # asyncio's selector transport: 256 KiB reads
                transport.max_size = READ_SIZE
            if self.tries:
                transport.resume_reading()
            self._arm_idle(cfg.idle_timeout)

    def _release(self) -> None:
        """Give the slot back (EOF, close, loss): idempotent."""
        if self.held:
            self.held = False
            src = self.src
            src.conns.discard(self)
            n = src.per_ip.get(self.ip, 0) - 1
            if n > 0:
                src.per_ip[self.ip] = n
            else:
                src.per_ip.pop(self.ip, None)

    def stale(self, now: float) -> float | None:
        """How stale this connection is (seconds past its eviction threshold), or None when it
        may not be evicted: a TLS handshake running longer than EVICT_HANDSHAKE, or no complete
        frame for EVICT_IDLE while nothing is waiting for the pipeline."""
        if self.closed or self.pending:
            return None
        if self.hs_task is not None and not self.hs_task.done():
            age = now - self.since - EVICT_HANDSHAKE
        else:
            age = now - self.last - EVICT_IDLE
        return age if age > 0 else None

    def data_received(self, data: bytes) -> None:
        d = self.deframer
        if d is None or self.failed:
            return
        frames = d.feed(data)
        problems = d.drain_problems()
        if problems:
            self.src.problems(problems, self.peer)
        if frames:
            self.last = self.src.loop.time()    # idleness is time without a complete frame
            self._hand_over(frames)

    def eof_received(self):
        self._release()     # a closing connection holds no slot
        return None         # close our side too; connection_lost hands over the tail

    def connection_lost(self, exc) -> None:
        if self.closed:
            return
        self.closed = True
        src = self.src
        src.waiting.discard(self)
        self._release()
        if self.idle_h is not None:
            self.idle_h.cancel()
            self.idle_h = None
        if self.hs_task is not None and not self.hs_task.done():
            self.hs_task.cancel()
        d = self.deframer
        if d is not None and not self.failed:
            tail = d.close()
            problems = d.drain_problems()
            if problems:
                src.problems(problems, self.peer)
            if tail:
                self._hand_over(tail)

    # ---------------------------------------------------------------- hand over

    def _hand_over(self, frames: list) -> None:
        """Every frame of one read in one hand-over: the ingest commits a hand-over's messages
        in order (split across workers or not), so a crash loses at most a suffix of it."""
        src = self.src
        n = len(frames)
        src._received.value += n
        peer = self.peer
        try:
            fut = src.pipeline.handle(OneSender(peer, frames), src.cfg, time.time())
        except Exception as e:
            self._fail(e, n)
            return
        if fut is None:
            return
        if fut.done():
            self._durable(fut, False)
            return
        self.pending += 1
        src.inflight.add(fut)
        if self.pending == 1 and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        fut.add_done_callback(self._durable)

    def _durable(self, fut, counted: bool = True) -> None:
        if counted:
            self.pending -= 1
            self.src.inflight.discard(fut)
        if fut.cancelled():
            exc: BaseException | None = asyncio.CancelledError("the pipeline cancelled the hand-over")
        else:
            exc = fut.exception()
        if exc is not None:
            self._fail(exc, None)
            return
        if counted and self.pending == 0 and not self.closed and self.transport is not None:
            self.last = self.src.loop.time()
            self.transport.resume_reading()

    def _fail(self, exc: BaseException, n: int | None) -> None:
        src = self.src
        if not self.failed:
            self.failed = True
            src.limiter.log(logging.ERROR, (src.cfg.name, "pipeline"),
                            "source %r: queueing messages from %s failed, closing the connection "
                            "(the sender should retransmit): %s: %s", src.cfg.name, self.peer,
                            type(exc).__name__, exc)
        if n:
            src.dropped("pipeline_error", n)
        if not self.closed:
            (self.transport or self.raw).abort()

    # ---------------------------------------------------------------- idle, TLS

    def _arm_idle(self, delay: float) -> None:
        if self.src.cfg.idle_timeout > 0 and not self.closed:
            self.idle_h = self.src.loop.call_later(delay, self._idle_check)

    def _idle_check(self) -> None:
        self.idle_h = None
        if self.closed:
            return
        src = self.src
        idle = src.cfg.idle_timeout
        if self.pending:                        # waiting for the pipeline is not idleness
            self._arm_idle(idle)
            return
        left = self.last + idle - src.loop.time()
        if left > 0:
            self._arm_idle(left)
            return
        src.idle_closed += 1
        src.limiter.log(logging.INFO, (src.cfg.name, "idle"),
                        "source %r: closing connection from %s: no complete message for %.0f s", src.cfg.name,
                        self.peer, idle)
        (self.transport or self.raw).close()

    async def _handshake(self) -> None:
        src = self.src
        try:
            tr = await src.loop.start_tls(self.raw, self, src.ssl_context, server_side=True,
                                          ssl_handshake_timeout=src.handshake_timeout)
            if tr is None:
                raise ConnectionResetError("the peer closed the connection during the handshake")
        except asyncio.CancelledError:          # stop() or the connection went away
            self.hs_task = None
            self.raw.abort()
            self.connection_lost(None)          # the TLS layer does not report it to us mid-handshake
            return
        except Exception as e:
            self.hs_task = None
            src.dropped("tls_handshake")
            src.limiter.warning((src.cfg.name, "tls_handshake"), "source %r: TLS handshake with %s failed: %s",
                                src.cfg.name, self.peer, _describe(e))
            self.raw.abort()
            self.connection_lost(e)
            return
        self.hs_task = None
        if self.closed:
            tr.abort()
            return
        names = src.cfg.tls_client_names
        if names:
            got = client_names(tr.get_extra_info("peercert"))
            if not name_allowed(got, names):
                src.dropped("tls_client_name")
                src.limiter.warning((src.cfg.name, "tls_client_name"),
                                    "source %r: refused client certificate from %s (%s): not in tls_client_names",
                                    src.cfg.name, self.peer, ", ".join(got) or "no names")
                self.failed = True
                tr.abort()
                return
        self.transport = tr
        self.last = src.loop.time()
        if self.pending:                        # frames arrived with the handshake's last flight
            tr.pause_reading()
        self._arm_idle(src.cfg.idle_timeout)

    def close(self) -> None:
        if self.closed:
            return
        if self.hs_task is not None and not self.hs_task.done():
            self.hs_task.cancel()
        (self.transport or self.raw).close()

    def evict(self) -> None:
        """Close a stale connection to give its slot to a new one (handed over as at a close)."""
        self._release()
        if self.hs_task is not None and not self.hs_task.done():
            self.hs_task.cancel()
            return
        (self.transport or self.raw).close()

    def abort(self) -> None:
        if not self.closed and self.raw is not None:
            (self.transport or self.raw).abort()


class _Header:
    """proxy_protocol: reads the PROXY header of one accepted socket, before any transport owns
    it.  It peeks, and consumes exactly the header's bytes, so whatever follows (the first
    frame, or a TLS ClientHello) stays in the socket for the transport or the TLS handshake.
    Once per connection, never on the per-message path."""

    __slots__ = ("src", "sock", "peer", "buf", "timer", "done")

    def __init__(self, src: "TcpSource", sock: socket.socket, peer: str) -> None:
        self.src = src
        self.sock = sock
        self.peer = peer
        self.buf = b""
        self.done = False
        src.proxying.add(self)
        src.loop.add_reader(sock.fileno(), self._read)
        self.timer = src.loop.call_later(PROXY_TIMEOUT, self.fail, "proxy_timeout",
                                         f"no complete PROXY header within {PROXY_TIMEOUT:g} s")

    def _end(self) -> None:
        if not self.done:
            self.done = True
            self.src.proxying.discard(self)
            self.src.loop.remove_reader(self.sock.fileno())
            self.timer.cancel()

    def abort(self) -> None:
        if not self.done:
            self._end()
            self.sock.close()

    def fail(self, reason: str, detail: str) -> None:
        if self.done:
            return
        self.abort()
        src = self.src
        src.dropped(reason)
        src.limiter.warning((src.cfg.name, reason), "source %r: closing connection from %s: %s",
                            src.cfg.name, self.peer, detail)

    def _read(self) -> None:
        sock = self.sock
        try:
            data = sock.recv(PROXY_PEEK, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.fail("proxy_no_header", f"connection lost before a complete PROXY header: {e}")
            return
        if not data:
            self.fail("proxy_no_header", f"closed after {len(self.buf)} bytes, before a complete PROXY header")
            return
        buf = self.buf + data
        try:
            h = decode_proxy(buf)
        except ProxyError as e:
            self.fail("proxy_" + e.reason, f"bad PROXY header: {e.detail}")
            return
        # every byte before the header's end belongs to it: consume exactly those
        take = len(data) if h is None else h.size - len(self.buf)
        try:
            got = sock.recv(take)
        except OSError as e:
            self.fail("proxy_no_header", f"connection lost in the PROXY header: {e}")
            return
        if len(got) != take:        # peeked bytes wait in the socket's buffer: cannot happen
            self.fail("proxy_error", f"read {len(got)} of {take} peeked header bytes")
            return
        if h is None:
            self.buf = buf
            return
        self._end()
        self.src.proxy_ready(sock, h)


class _Listener:
    """proxy_protocol: the listening socket and its accept loop (asyncio's server would hand
    the connection to a transport that starts reading at once, header included)."""

    def __init__(self, src: "TcpSource", sock: socket.socket) -> None:
        self.src = src
        self.sockets = [sock]
        self.task = src.loop.create_task(self._accept())

    async def _accept(self) -> None:
        src = self.src
        lsock = self.sockets[0]
        cfg = src.cfg
        while True:
            try:
                sock, addr = await src.loop.sock_accept(lsock)
            except asyncio.CancelledError:
                raise
            except OSError as e:        # EMFILE, ENFILE, ENOBUFS: wait, the backlog holds them
                src.limiter.log(logging.ERROR, (cfg.name, "accept"), "source %r: accept failed: %s",
                                cfg.name, e)
                await asyncio.sleep(0.1)
                continue
            peer = f"{addr[0]}:{addr[1]}"
            if not cfg.proxy_trusted(addr[0]):
                sock.close()
                src.dropped("proxy_untrusted")
                src.limiter.warning((cfg.name, "proxy_untrusted"), "source %r: refused connection from %s: "
                                    "not a load balancer in proxy_from", cfg.name, peer)
                continue
            sock.setblocking(False)
            try:
                _Header(src, sock, peer)
            except OSError as e:
                sock.close()
                src.dropped("proxy_error")
                src.limiter.warning((cfg.name, "proxy_error"), "source %r: connection from %s: %s",
                                    cfg.name, peer, e)

    def close(self) -> None:
        self.task.cancel()
        self.sockets[0].close()


def _describe(e: BaseException) -> str:
    if isinstance(e, ssl.SSLError):
        return e.reason or str(e)
    s = str(e)
    return f"{type(e).__name__}: {s}" if s else type(e).__name__


class TcpSource(Source):
    """Syslog over TCP (RFC 6587: octet counting and LF framing, per frame)."""

    ssl_context: ssl.SSLContext | None = None
    listen_backlog = 1024

    def __init__(self, cfg, pipeline, registry=None) -> None:
        super().__init__(cfg, pipeline, registry)
        self.conns: set[_Conn] = set()  # connections holding a slot
        self.per_ip: dict[str, int] = {}
        self.waiting: set[_Conn] = set()  # over a cap, waiting a moment for a slot
        self.proxying: set[_Conn] = set()  # proxy_protocol: reading the PROXY header
        self._proxy_counts: dict = {}
        self.connecting: set = set()      # proxy_protocol: sockets being handed to a transport
        self.inflight: set = set()      # pending handle() futures of all connections
        self.loop: asyncio.AbstractEventLoop | None = None
        self.idle_closed = 0
        self._server = None
        idle = cfg.idle_timeout
        self.handshake_timeout = min(10.0, idle) if idle and idle > 0 else 10.0

    def evict(self, ip: str | None) -> bool:
        """Close the stalest evictable connection (of ``ip`` when given); False if none is."""
        now = self.loop.time()
        best, worst = None, 0.0
        for c in self.conns:
            if ip is not None and c.ip != ip:
                continue
            s = c.stale(now)
            if s is not None and s > worst:
                best, worst = c, s
        if best is None:
            return False
        self.dropped("evicted")
        self.limiter.warning((self.cfg.name, "evicted"), "source %r: at a connection cap: closed the stale "
                             "connection from %s for a new one", self.cfg.name, best.peer)
        best.evict()
        return True

    def proxy_ready(self, sock: socket.socket, h) -> None:
        """A connection's PROXY header is read: hand the socket to a transport (a _Conn)."""
        self._count_proxy(h)
        task = self.loop.create_task(self._connect(sock, h))
        self.connecting.add(task)
        task.add_done_callback(self.connecting.discard)

    async def _connect(self, sock, h) -> None:
        try:
            await self.loop.connect_accepted_socket(lambda: _Conn(self, h), sock)
        except asyncio.CancelledError:
            sock.close()
            raise
        except OSError as e:
            sock.close()
            self.dropped("proxy_error")
            self.limiter.warning((self.cfg.name, "proxy_error"), "source %r: %s", self.cfg.name, e)

    def _listen_proxy(self) -> _Listener:
        host, port = self.cfg.address
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        infos.sort(key=lambda i: i[0] != socket.AF_INET)  # no host: IPv4 any, like a one-socket server
        fam, typ, proto, _, addr = infos[0]
        sock = socket.socket(fam, typ, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if fam == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(self.listen_backlog)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return _Listener(self, sock)

    def _count_proxy(self, h) -> None:
        key = f"v{h.version}" if h.command else f"v{h.version}_local"
        c = self._proxy_counts.get(key)
        if c is None:
            c = self._proxy_counts[key] = self.registry.counter("relay_proxy_headers_total",
                                                                source=self.cfg.name, kind=key)
        c.value += 1

    async def prepare(self) -> None:
        """Everything that can fail before the source listens (the TLS context): a reload
        calls it before it stops the running listener."""
        if self.ssl_context is None:
            self.ssl_context = self._make_ssl_context()

    def _make_ssl_context(self) -> ssl.SSLContext | None:
        return None

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError(f"{self!r} already started")
        cfg = self.cfg
        self.loop = loop = asyncio.get_running_loop()
        await self.prepare()
        host, port = cfg.address
        try:
            if cfg.proxy_protocol:
                self._server = self._listen_proxy()
            else:
                self._server = await loop.create_server(lambda: _Conn(self), host or None, port,
                                                        reuse_address=True, backlog=self.listen_backlog)
        except OSError as e:
            raise bind_error(cfg, e) from None
        self.bound_address = self._server.sockets[0].getsockname()[:2]
        self.registry.gauge("relay_connections", fn=lambda: len(self.conns), source=cfg.name)
        log.info("source %r: listening on %s %s:%s", cfg.name, cfg.type, *self.bound_address)

    async def stop(self, drain_timeout: float = 10.0) -> None:
        """Stop accepting; close every connection (handing over what was read);
        wait up to ``drain_timeout`` s for the pipeline to make it durable."""
        if self._server is None:
            return
        loop = self.loop
        deadline = loop.time() + max(0.0, drain_timeout)
        self._server.close()
        self._server = None
        for c in list(self.waiting):
            c.closed = True
            c.raw.abort()
        self.waiting.clear()
        for h in list(self.proxying):
            h.abort()
        for t in list(self.connecting):
            t.cancel()
        if self.connecting:
            await asyncio.wait(list(self.connecting), timeout=1.0)
        for c in list(self.conns):
            c.close()
        # TLS close waits for the peer's close_notify: give it a moment, then abort
        close_by = min(deadline, loop.time() + 2.0)
        while self.conns and loop.time() < close_by:
            await asyncio.sleep(0.01)
        for c in list(self.conns):
            c.abort()
        for _ in range(3):                      # connection_lost callbacks run soon after abort
            await asyncio.sleep(0)
        if self.inflight:
            left = max(0.0, deadline - loop.time())
            await asyncio.wait(list(self.inflight), timeout=max(left, 0.001))
            if self.inflight:
                log.warning("source %r: stopped with %d hand-overs not yet durable", self.cfg.name,
                            len(self.inflight))
        log.info("source %r: %s listener closed", self.cfg.name, self.cfg.type)

    def problems(self, problems: list, peer: str) -> None:
        """Count and log (rate-limited) the deframer's problem records."""
        name = self.cfg.name
        for p in problems:
            reason = _REASONS.get(p.kind, p.kind)
            if reason is not None:
                self.dropped(reason)
            self.limiter.warning((name, p.kind), "source %r: %s from %s at byte %d: %s",
                                 name, p.kind, peer, p.offset, p.detail)


class TlsSource(TcpSource):
    """Syslog over TLS (RFC 5425); TLS 1.2 or later; client certificates optional, with an
    optional allowlist of names (``tls_client_names``).

    The SSL context is built by :meth:`prepare` (or :meth:`start`) and can be replaced while
    the listener runs (:meth:`reload_tls`, on SIGHUP): new handshakes use the new certificate,
    established connections keep theirs.  A certificate that does not load never replaces the
    running one."""

    def _make_ssl_context(self) -> ssl.SSLContext:
        return server_context(self.cfg)

    def reload_tls(self, ctx: ssl.SSLContext) -> None:
        """Serve ``ctx`` (built by :func:`server_context`) to new connections from now on."""
        self.ssl_context = ctx


def client_names(peercert: dict | None) -> list[str]:
    """The names a client certificate carries: subject CN, then every subjectAltName value
    (DNS, IP Address, email, URI), as ``CN:<x>`` / ``DNS:<x>`` / ``IP:<x>`` / ``email:<x>`` /
    ``URI:<x>``."""
    if not peercert:
        return []
    out = [f"CN:{v}" for rdn in peercert.get("subject", ()) for k, v in rdn if k == "commonName"]
    tags = {"DNS": "DNS", "IP Address": "IP", "email": "email", "URI": "URI"}
    out += [f"{tags.get(k, k)}:{v}" for k, v in peercert.get("subjectAltName", ())]
    return out


def name_allowed(names: list[str], allow: list[str]) -> bool:
    """Does one of the certificate's ``names`` match an entry of ``allow``?  An entry is
    ``TYPE:value`` (``CN:``, ``DNS:``, ``IP:``, ``email:``, ``URI:``) or a bare value that
    matches the CN or any SAN; ``*.example.com`` matches one leftmost DNS/CN label.  CN and
    DNS compare case-insensitively."""
    for entry in allow:
        typ, sep, want = entry.partition(":")
        if not sep or typ not in ("CN", "DNS", "IP", "email", "URI"):
            typ, want = None, entry
        for n in names:
            ntyp, _, val = n.partition(":")
            if typ is not None and ntyp != typ:
                continue
            if ntyp in ("CN", "DNS"):
                a, b = val.lower(), want.lower()
                if a == b or (b.startswith("*.") and "." in a and a.split(".", 1)[1] == b[2:]):
                    return True
            elif val == want:
                return True
    return False


def server_context(cfg) -> ssl.SSLContext:
    """The TLS server context of a ``tls`` source: TLS 1.2+, its certificate and key, and the
    client CA when ``tls_verify_client``.  OSError with the file and the reason when one does
    not load (a start-up error, or a reload that keeps the running certificate)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not cfg.tls_cert or not cfg.tls_key:
        raise OSError(errno.EINVAL, f"source {cfg.name!r} (tls): tls_cert and tls_key are required")

    def no_password():
        raise ValueError("the private key is encrypted; give the relay an unencrypted key "
                         "readable only by its user")

    try:
        ctx.load_cert_chain(str(cfg.tls_cert), str(cfg.tls_key), password=no_password)
    except ValueError as e:
        raise OSError(errno.EINVAL, f"source {cfg.name!r} (tls): cannot load key {cfg.tls_key}: {e}") from None
    except (OSError, ssl.SSLError) as e:
        raise OSError(e.errno or errno.EINVAL,
                      f"source {cfg.name!r} (tls): cannot load certificate {cfg.tls_cert} / key "
                      f"{cfg.tls_key}: {_describe(e)}") from None
    if cfg.tls_verify_client:
        if not cfg.tls_ca:
            raise OSError(errno.EINVAL, f"source {cfg.name!r} (tls): tls_verify_client needs tls_ca")
        try:
            ctx.load_verify_locations(cafile=str(cfg.tls_ca))
        except (OSError, ssl.SSLError) as e:
            raise OSError(e.errno or errno.EINVAL,
                          f"source {cfg.name!r} (tls): cannot load CA {cfg.tls_ca}: {_describe(e)}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


# --------------------------------------------------------------------------- kinds

def read_tcp(t, sc, base_dir) -> None:
    from .base import read_listener
    read_listener(t, sc, base_dir, stream=True)
    _read_proxy(t, sc)


def _read_proxy(t, sc) -> None:
    from ..checks import networks
    sc.proxy_protocol = t.get("proxy_protocol", bool, False)
    sc.proxy_from = t.get("proxy_from", list, [], check=networks)
    if sc.proxy_protocol and not sc.proxy_from:
        raise t.err("proxy_from", "proxy_protocol = true needs proxy_from: the load balancers' addresses "
                                  "(e.g. [\"10.0.0.10/32\"]); a PROXY header is never accepted from anyone")
    if sc.proxy_from and not sc.proxy_protocol:
        raise t.err("proxy_from", "is only read with proxy_protocol = true")


def read_tls(t, sc, base_dir) -> None:
    from ..checks import cert_and_key, pem_certificates, pem_key
    from .base import read_listener
    read_listener(t, sc, base_dir, stream=True)
    _read_proxy(t, sc)
    sc.tls_cert = t.get("tls_cert", str, required=True, check=pem_certificates(base_dir))
    sc.tls_key = t.get("tls_key", str, required=True, check=pem_key(base_dir))
    try:
        cert_and_key(sc.tls_cert, sc.tls_key, server=True)
    except ValueError as e:
        raise t.err("tls_key", str(e)) from None
    sc.tls_ca = t.get("tls_ca", str, None, check=pem_certificates(base_dir))
    sc.tls_verify_client = t.get("tls_verify_client", bool, False)
    if sc.tls_verify_client and sc.tls_ca is None:
        raise t.err("tls_verify_client", "needs tls_ca (the CA that signs client certificates)")
    sc.tls_client_names = t.get("tls_client_names", list, [], check=_names)
    if sc.tls_client_names and not sc.tls_verify_client:
        raise t.err("tls_client_names", "needs tls_verify_client = true (names are read from verified "
                                        "client certificates)")


def _names(v):
    for i, n in enumerate(v):
        if not isinstance(n, str) or not n.strip():
            raise ValueError(f"entry {i} must be a name (CN or subjectAltName, e.g. \"fw01.example.com\", "
                             f"\"CN:collector\", \"IP:10.0.0.5\"), not {n!r}")


_STREAM_KEYS = ("address", "lenient", "max_message_size", "oversize", "allow", "max_connections",
                "max_connections_per_ip", "idle_timeout", "proxy_protocol", "proxy_from")

TCP = kinds.register_source(kinds.SourceKind(
    type="tcp", read_config=read_tcp, factory=TcpSource, transport="tcp", keys=_STREAM_KEYS,
    doc="syslog over TCP (RFC 6587: octet counting or LF framing, per frame)"))
TLS = kinds.register_source(kinds.SourceKind(
    type="tls", read_config=read_tls, factory=TlsSource, transport="tcp",
    keys=_STREAM_KEYS + ("tls_cert", "tls_key", "tls_ca", "tls_verify_client", "tls_client_names"),
    doc="syslog over TLS (RFC 5425), TLS 1.2 or later, client certificates optional"))

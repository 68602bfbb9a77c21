"""TCP (RFC 6587) and TLS (RFC 5425) syslog sources.

One :class:`asyncio.Protocol` per connection and one :class:`parsers.framing.Deframer`
(octet counting and LF/NUL framing, decided per frame).  All frames of one
``data_received`` go to the pipeline in one ``handle()`` call, which commits them in order.  When ``handle()`` returns a pending
future, the connection stops reading until it completes: an event accepted from
TCP is durably queued before more is read, and full queues push back on the
sender through TCP flow control.  A future that fails closes the connection (the
sender retransmits); nothing more is handed over from it.

Per connection: allowlist and ``max_connections`` checked when it is accepted
(before any TLS handshake), ``idle_timeout`` (0 = none) closes a connection that sent
nothing that long (never while it waits for the pipeline), deframer problems are
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

from .. import kinds
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


class _Conn(asyncio.Protocol):
    __slots__ = ("src", "raw", "transport", "peer", "deframer", "last", "pending", "closed", "failed",
                 "idle_h", "hs_task")

    def __init__(self, src: "TcpSource") -> None:
        self.src = src
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

    # ---------------------------------------------------------------- events

    def connection_made(self, transport) -> None:
        src = self.src
        cfg = src.cfg
        self.raw = transport
        pn = transport.get_extra_info("peername")
        ip = pn[0] if pn else "?"
        self.peer = f"{ip}:{pn[1]}" if pn else "?"
        if not cfg.allowed(ip):
            self.closed = True
            transport.abort()
            src.dropped("allowlist")
            src.limiter.warning((cfg.name, "allowlist"),
                                "source %r: refused connection from %s: not in the allowlist", cfg.name, self.peer)
            return
        if len(src.conns) >= cfg.max_connections:
            self.closed = True
            transport.abort()
            src.dropped("max_connections")
            src.limiter.warning((cfg.name, "max_connections"),
                                "source %r: refused connection from %s: max_connections (%d) reached",
                                cfg.name, self.peer, cfg.max_connections)
            return
        src.conns.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            except OSError:
                pass
        self.deframer = Deframer(cfg.max_message_size, cfg.oversize)
        self.last = src.loop.time()
        if src.ssl_context is not None:
            transport.pause_reading()
            self.hs_task = src.loop.create_task(self._handshake())
        else:
            self.transport = transport
            if hasattr(transport, "max_size"):   # asyncio's selector transport: 256 KiB reads
                transport.max_size = READ_SIZE
            self._arm_idle(cfg.idle_timeout)

    def data_received(self, data: bytes) -> None:
        d = self.deframer
        if d is None or self.failed:
            return
        self.last = self.src.loop.time()
        frames = d.feed(data)
        problems = d.drain_problems()
        if problems:
            self.src.problems(problems, self.peer)
        if frames:
            self._hand_over(frames)

    def eof_received(self):
        return None     # close our side too; connection_lost hands over the tail

    def connection_lost(self, exc) -> None:
        if self.closed:
            return
        self.closed = True
        src = self.src
        src.conns.discard(self)
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
            fut = src.pipeline.handle([(f, peer) for f in frames], src.cfg, time.time())
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
                        "source %r: closing connection from %s: idle for %.0f s", src.cfg.name, self.peer, idle)
        self.transport.close()

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
        self.transport = tr
        if self.pending:                        # frames arrived with the handshake's last flight
            tr.pause_reading()
        self._arm_idle(src.cfg.idle_timeout)

    def close(self) -> None:
        if self.closed:
            return
        if self.hs_task is not None and not self.hs_task.done():
            self.hs_task.cancel()
        (self.transport or self.raw).close()

    def abort(self) -> None:
        if not self.closed and self.raw is not None:
            (self.transport or self.raw).abort()


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
        self.conns: set[_Conn] = set()
        self.inflight: set = set()      # pending handle() futures of all connections
        self.loop: asyncio.AbstractEventLoop | None = None
        self.idle_closed = 0
        self._server = None
        idle = cfg.idle_timeout
        self.handshake_timeout = min(30.0, idle) if idle and idle > 0 else 30.0

    def _make_ssl_context(self) -> ssl.SSLContext | None:
        return None

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError(f"{self!r} already started")
        cfg = self.cfg
        self.loop = loop = asyncio.get_running_loop()
        self.ssl_context = self._make_ssl_context()
        host, port = cfg.address
        try:
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
    """Syslog over TLS (RFC 5425); TLS 1.2 or later; client certificates optional."""

    def _make_ssl_context(self) -> ssl.SSLContext:
        cfg = self.cfg
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


def read_tls(t, sc, base_dir) -> None:
    from ..checks import cert_and_key, pem_certificates, pem_key
    from .base import read_listener
    read_listener(t, sc, base_dir, stream=True)
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


_STREAM_KEYS = ("address", "lenient", "max_message_size", "oversize", "allow", "max_connections", "idle_timeout")

TCP = kinds.register_source(kinds.SourceKind(
    type="tcp", read_config=read_tcp, factory=TcpSource, transport="tcp", keys=_STREAM_KEYS,
    doc="syslog over TCP (RFC 6587: octet counting or LF framing, per frame)"))
TLS = kinds.register_source(kinds.SourceKind(
    type="tls", read_config=read_tls, factory=TlsSource, transport="tcp",
    keys=_STREAM_KEYS + ("tls_cert", "tls_key", "tls_ca", "tls_verify_client"),
    doc="syslog over TLS (RFC 5425), TLS 1.2 or later, client certificates optional"))

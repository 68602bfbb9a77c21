"""The relay's one HTTP server: uvicorn's HTTP/1.1 protocol (httptools' parser when it is
installed, else h11) on the relay's own event loop, for the ``http`` source and for
``/metrics``, ``/health`` and ``/ready`` (docs/architecture.md, "HTTP server", says why this
library).

:class:`HttpServer` runs an ASGI application on one listening socket it binds itself, with the
relay's own :class:`ssl.SSLContext` (:func:`server_tls`: TLS 1.2 or newer, optional client
certificates).  It does not use ``uvicorn.Server``, which installs signal handlers, configures
logging and runs its own loop: the relay keeps all three.  What it keeps from uvicorn: keep-alive
(``keep_alive`` seconds idle), pipelining, flow control (a request body is read as the
application asks for it; the socket stops being read while more than 64 KiB wait), and the
connection cap (``max_connections``: further requests get 503 and the connection is closed).
Proxy headers are ignored: the peer is the socket's peer, so allowlists cannot be bypassed with
``X-Forwarded-For``.

Requests are served by coroutines on the loop; a handler must never block it (the http source
parses and stages in slices and waits for the queue commit on a future).
"""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("relay.http")

__all__ = ["HttpServer", "server_tls", "PROTOCOL", "respond", "read_body", "BodyTooLarge", "BodyTimeout",
           "header", "is_loopback"]


def _protocol() -> str:
    try:
        import httptools  # noqa: F401
        return "httptools"
    except ImportError:  # pragma: no cover - the packages ship httptools
        return "h11"


#: The HTTP/1.1 implementation in use: "httptools" (C, llhttp) or "h11" (pure Python).
PROTOCOL = _protocol()


class _RateLimited(logging.Filter):
    """uvicorn logs one warning per malformed request ("Invalid HTTP request received."): a
    hostile client must not flood the log.  At most one line per message every 10 s."""

    def __init__(self) -> None:
        super().__init__()
        self._next: dict[str, float] = {}
        self._dropped: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = str(record.msg)
        now = time.monotonic()
        if now < self._next.get(key, 0.0):
            self._dropped[key] = self._dropped.get(key, 0) + 1
            return False
        self._next[key] = now + 10.0
        n = self._dropped.pop(key, 0)
        if n:
            record.msg = f"{record.msg} ({n} more like this in the last 10 s)"
        return True


_uvicorn_log = logging.getLogger("uvicorn.error")
if not any(isinstance(f, _RateLimited) for f in _uvicorn_log.filters):
    _uvicorn_log.addFilter(_RateLimited())


def server_tls(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """A server context: TLS 1.2 or newer, the certificate chain and key, and, with
    ``client_ca``, client certificates required and checked against that CA (mTLS).
    Raises OSError/ssl.SSLError with the file that failed."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.load_cert_chain(str(cert), str(key))
    if client_ca is not None:
        ctx.load_verify_locations(cafile=str(client_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def is_loopback(host: str) -> bool:
    import ipaddress
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HttpServer:
    """``app`` (ASGI 3) served on ``host:port`` (port 0: any free port; :attr:`port` is the bound
    one after :meth:`start`).  ``name`` is for logs."""

    def __init__(self, app: Callable, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None,
                 max_connections: int | None = 1000, keep_alive: float = 30.0, backlog: int = 1024,
                 name: str = "http") -> None:
        self.app = app
        self.host, self.port = host, port
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self.keep_alive = keep_alive
        self.backlog = backlog
        self.name = name
        self._server: asyncio.base_events.Server | None = None
        self._state: Any = None
        self._date: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        import uvicorn
        from uvicorn.server import ServerState
        cfg = uvicorn.Config(self.app, host=self.host, port=self.port, http=PROTOCOL, ws="none", lifespan="off",
                             interface="asgi3", log_config=None, access_log=False, proxy_headers=False,
                             server_header=False, date_header=True, limit_concurrency=self.max_connections,
                             timeout_keep_alive=max(1, int(round(self.keep_alive))), backlog=self.backlog)
        cfg.load()
        state = self._state = ServerState()
        proto = cfg.http_protocol_class

        def factory():
            return proto(config=cfg, server_state=state, app_state={})
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # inherited by accepted sockets: uvicorn writes the head and the body of a response
            # separately, and with Nagle the body would wait for the client's delayed ACK (40 ms)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((self.host, self.port))
            sock.listen(self.backlog)
            sock.setblocking(False)
            self._server = await loop.create_server(factory, sock=sock, ssl=self.ssl_context, backlog=self.backlog)
        except BaseException:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        self._tick()

    def _tick(self) -> None:
        """The Date header, refreshed every second (what uvicorn.Server's loop does)."""
        if self._state is None:
            return
        self._state.default_headers = [(b"date", formatdate(time.time(), usegmt=True).encode())]
        self._date = asyncio.get_running_loop().call_later(1.0, self._tick)

    @property
    def connections(self) -> int:
        return len(self._state.connections) if self._state is not None else 0

    async def close(self, timeout: float = 5.0) -> None:
        """Stop accepting; let the requests in progress finish for up to ``timeout`` seconds
        (idle keep-alive connections are closed at once), then cancel them."""
        if self._server is None:
            return
        if self._date is not None:
            self._date.cancel()
        self._server.close()
        state = self._state
        for conn in list(state.connections):
            conn.shutdown()
        deadline = time.monotonic() + timeout
        while (state.tasks or state.connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for t in list(state.tasks):
            t.cancel()
        for conn in list(state.connections):
            try:
                conn.transport.abort()
            except Exception:  # pragma: no cover - already gone
                pass
        try:
            await asyncio.wait_for(self._server.wait_closed(), 2.0)
        except (asyncio.TimeoutError, Exception):
            pass
        self._server = None
        self._state = None


# ------------------------------------------------------------------------------ ASGI helpers

class BodyTooLarge(Exception):
    """The body is over the limit (the rest is not read)."""


class BodyTimeout(Exception):
    """The body did not arrive in time."""


def header(scope: dict, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case), or None."""
    for k, v in scope["headers"]:
        if k == name:
            return v
    return None


async def read_body(receive: Callable, limit: int, timeout: float) -> bytes:
    """The request body, at most ``limit`` bytes (:class:`BodyTooLarge` as soon as it is over:
    the rest is never read), in ``timeout`` seconds (:class:`BodyTimeout`)."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    raise ConnectionResetError("client disconnected")
                b = msg.get("body", b"")
                if b:
                    size += len(b)
                    if size > limit:
                        raise BodyTooLarge()
                    chunks.append(b)
                if not msg.get("more_body", False):
                    break
    except TimeoutError:
        raise BodyTimeout() from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def respond(send: Callable, status: int, body: bytes, ctype: bytes = b"application/json",
                  headers: list | None = None, close: bool = False, head: bool = False) -> None:
    h = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
    if headers:
        h.extend(headers)
    if close:
        h.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": h})
    await send({"type": "http.response.body", "body": b"" if head else body})

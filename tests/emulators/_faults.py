"""The fault injection and the request plumbing of the HTTP emulators written for the ``http`` sink
(servicenow.py, jira.py, chat.py, qradar_http.py, hec.py); the XSOAR emulator keeps its own.

A subclass implements ``handle(req) -> Reply`` (and ``op_of(req)``: the operation name faults
can be limited to).  Faults, each for ``count`` requests, ``seconds``, or until
:meth:`FaultyEmulator.clear_faults`, optionally for one ``op``:

* ``fail(status, retry_after=, body=, headers=)`` - answer ``status`` before processing;
* ``slow(delay, when="before"|"after")`` - wait before processing, or after it (the client may
  give up while the request took effect);
* ``drop_after_processing()`` - process, then close the connection without an answer;
* ``reset_before()`` - reset the connection (RST) before processing.

``requests`` logs every request (method, path, op, status, note); ``stats`` counts
``http_<status>``, ``dropped``, ``faults``; ``wait(pred, timeout, what)`` polls.  Everything binds
127.0.0.1.
"""
from __future__ import annotations

import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import orjson

from ._server import LoopbackServer


@dataclass
class Fault:
    kind: str                         # status | slow | drop | reset
    status: int = 0
    count: int | None = None
    until: float | None = None
    op: str | None = None
    retry_after: str | None = None
    body: Any = None
    headers: dict = field(default_factory=dict)
    delay: float = 0.0
    when: str = "before"

    def live(self) -> bool:
        if self.count is not None and self.count <= 0:
            return False
        return self.until is None or time.monotonic() < self.until


@dataclass
class Request:
    method: str
    path: str
    query: dict                       # name -> first value
    headers: Any
    raw: bytes
    op: str = ""

    def json(self):
        return orjson.loads(self.raw) if self.raw else None


@dataclass
class Reply:
    status: int
    body: Any = None                  # JSON-encoded unless ``text`` is given
    text: str | None = None
    headers: dict = field(default_factory=dict)
    note: str = ""


class FaultyEmulator(LoopbackServer):
    """Base of the HTTP emulators (module docstring)."""

    thread_name = "http-emulator"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, out: Callable[[str], None] | None = None) -> None:
        self.host, self.port = host, port
        self.out = out
        self.lock = threading.RLock()
        self._faults: list[Fault] = []
        self.stats: Counter = Counter()
        self.requests: list[dict] = []
        self._closing = threading.Event()
        self._conns: set = set()

    # ------------------------------------------------------------------ subclass API
    def op_of(self, req: Request) -> str:
        return "any"

    def handle(self, req: Request) -> Reply:
        raise NotImplementedError

    # ------------------------------------------------------------------ faults
    def _add(self, f: Fault, seconds: float | None) -> Fault:
        if seconds is not None:
            f.until = time.monotonic() + seconds
        with self.lock:
            self._faults.append(f)
        return f

    def fail(self, status: int, *, count: int | None = None, seconds: float | None = None, op: str | None = None,
             retry_after: float | str | None = None, body: Any = None, headers: dict | None = None) -> Fault:
        return self._add(Fault("status", status=status, count=count, op=op, body=body, headers=dict(headers or {}),
                               retry_after=None if retry_after is None else str(retry_after)), seconds)

    def slow(self, delay: float, *, count: int | None = None, seconds: float | None = None, op: str | None = None,
             when: str = "before") -> Fault:
        return self._add(Fault("slow", delay=delay, count=count, op=op, when=when), seconds)

    def drop_after_processing(self, *, count: int | None = 1, seconds: float | None = None,
                              op: str | None = None) -> Fault:
        return self._add(Fault("drop", count=count, op=op), seconds)

    def reset_before(self, *, count: int | None = 1, seconds: float | None = None, op: str | None = None) -> Fault:
        return self._add(Fault("reset", count=count, op=op), seconds)

    def clear_faults(self) -> None:
        with self.lock:
            self._faults.clear()

    def _take(self, op: str, kind: str, when: str | None = None) -> Fault | None:
        with self.lock:
            for f in self._faults:
                if f.kind == kind and (f.op is None or f.op == op) and f.live() and (when is None or f.when == when):
                    if f.count is not None:
                        f.count -= 1
                    self.stats["faults"] += 1
                    return f
            self._faults = [f for f in self._faults if f.live()]
        return None

    def fault_reply(self, f: Fault) -> Reply:
        """The answer of an injected status (subclasses give it the vendor's shape)."""
        hdrs = dict(f.headers)
        if f.retry_after is not None:
            hdrs["Retry-After"] = f.retry_after
        if isinstance(f.body, str):
            return Reply(f.status, text=f.body, headers=hdrs, note=f"injected {f.status}")
        return Reply(f.status, f.body if f.body is not None else {"error": f"injected HTTP {f.status}"},
                     headers=hdrs, note=f"injected {f.status}")

    # ------------------------------------------------------------------ observation
    def wait(self, pred: Callable[[Any], Any], timeout: float, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while True:
            v = pred(self)
            if v:
                return v
            if time.monotonic() >= deadline:
                raise TimeoutError(f"emulator: timed out after {timeout} s waiting for {what}; "
                                   f"stats {dict(self.stats)}")
            time.sleep(0.05)

    def ops(self, op: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["op"] == op]

    def _say(self, msg: str) -> None:
        if self.out is not None:
            self.out(time.strftime("%H:%M:%S ") + msg)

    # ------------------------------------------------------------------ lifecycle
    def _handler_class(self) -> type:
        return type("Handler", (_Handler,), {"emulator": self})

    def _before_close(self) -> None:
        self._closing.set()

    def _after_shutdown(self) -> None:
        with self.lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    emulator: FaultyEmulator
    protocol_version = "HTTP/1.1"
    server_version = "RelayTestEmulator/1.0"
    timeout = 60
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.emulator.lock:
            self.emulator._conns.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.emulator.lock:
                self.emulator._conns.discard(self.connection)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        emu = self.emulator
        n = self.headers.get("Content-Length")
        raw = self.rfile.read(int(n)) if n else b""
        u = urlsplit(self.path)
        req = Request(method, u.path or "/", {k: v[0] for k, v in parse_qs(u.query, keep_blank_values=True).items()},
                      self.headers, raw)
        req.op = op = emu.op_of(req)
        if emu._take(op, "reset") is not None:
            self._log(req, None, "reset")
            self._abort(rst=True)
            return
        f = emu._take(op, "slow", "before")
        if f is not None:
            emu._closing.wait(f.delay)
        f = emu._take(op, "status")
        if f is not None:
            return self._send(req, emu.fault_reply(f))
        try:
            reply = emu.handle(req)
        except Exception as e:  # a bug in an emulator must show, not hang the client
            reply = Reply(500, {"error": f"emulator bug: {type(e).__name__}: {e}"}, note="emulator bug")
        if emu._take(op, "drop") is not None:
            with emu.lock:
                emu.stats["dropped"] += 1
            self._log(req, None, f"processed ({reply.status} {reply.note}), connection dropped")
            self._abort(rst=False)
            return
        f = emu._take(op, "slow", "after")
        if f is not None:
            emu._closing.wait(f.delay)
        self._send(req, reply)

    def _log(self, req: Request, status, note: str) -> None:
        emu = self.emulator
        with emu.lock:
            emu.requests.append({"method": req.method, "path": req.path, "op": req.op, "status": status,
                                 "note": note, "query": req.query})
        emu._say(f"{req.method} {req.path} [{req.op}] -> {status} {note}")

    def _abort(self, rst: bool) -> None:
        sock = self.connection
        try:
            if rst:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.close_connection = True

    def _send(self, req: Request, reply: Reply) -> None:
        emu = self.emulator
        if reply.text is not None:
            data = reply.text.encode()
            ctype = "text/plain; charset=utf-8"
        elif reply.body is None:
            data, ctype = b"", None
        else:
            data = orjson.dumps(reply.body)
            ctype = "application/json"
        with emu.lock:
            emu.stats[f"http_{reply.status}"] += 1
        self._log(req, reply.status, reply.note)
        try:
            self.send_response(reply.status)
            for k, v in reply.headers.items():
                self.send_header(k, v)
            if ctype and "Content-Type" not in reply.headers:
                self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

"""An emulator of QRadar's HTTP Receiver log source protocol (apis-wave2.md section 4), on
127.0.0.1: an HTTP(S) server whose POST bodies become events.

* ``message_pattern``: ``"lines"`` (a pattern matching each line's start: one event per line, as
  the relay's ``qradar_http`` preset expects) or ``None`` (QRadar's default: the whole body is
  ONE event - the misconfiguration that turns a batch into one giant event).
* ``max_payload``: events longer than this many bytes are truncated (``truncated`` counts them).
* Any ``Authorization`` header is ignored (QRadar authenticates clients by mutual TLS only);
  ``ssl_context`` serves HTTPS (with ``verify_mode = CERT_REQUIRED`` for mutual TLS).
* Success: 200 with an empty body; a method other than POST -> 405.
* ``disabled``: the log source is off -> the connection is refused (``close()`` it) - use
  faults for resets and drops (tests/emulators/_faults.py, op ``post``).

``events`` holds the decoded events in arrival order; ``posts`` the number of POSTs.
"""
from __future__ import annotations

import ssl

from ._faults import FaultyEmulator, Reply, Request

__all__ = ["QradarHttpReceiver"]


class QradarHttpReceiver(FaultyEmulator):
    thread_name = "qradar-http-emulator"

    def __init__(self, *, message_pattern: str | None = "lines", max_payload: int = 32767,
                 ssl_context: ssl.SSLContext | None = None, **kw) -> None:
        super().__init__(**kw)
        self.message_pattern = message_pattern
        self.max_payload = max_payload
        self.ssl_context = ssl_context
        self.events: list[str] = []
        self.posts = 0
        self.truncated = 0
        self.bodies: list[int] = []          # events per POST

    def _wrap(self, srv) -> None:
        if self.ssl_context is not None:
            srv.socket = self.ssl_context.wrap_socket(srv.socket, server_side=True)

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context is not None else 'http'}://{self.host}:{self.port}"

    def op_of(self, req: Request) -> str:
        return "post"

    def handle(self, req: Request) -> Reply:
        if req.method != "POST":
            return Reply(405, text="Method Not Allowed")
        text = req.raw.decode("utf-8", "replace")
        if self.message_pattern is None:
            evs = [text] if text else []
        else:
            evs = [line for line in text.split("\n") if line.strip()]
        out = []
        for e in evs:
            b = e.encode()
            if len(b) > self.max_payload:
                self.truncated += 1
                e = b[:self.max_payload].decode("utf-8", "ignore")
            out.append(e)
        with self.lock:
            self.events.extend(out)
            self.posts += 1
            self.bodies.append(len(out))
        return Reply(200, text="", note=f"{len(out)} events")

"""An OpenAI-compatible chat completions emulator on 127.0.0.1 (stdlib only).

``POST /v1/chat/completions`` (also ``/chat/completions``) with ``{"model", "messages",
"max_tokens"}`` and ``Authorization: Bearer <key>`` (when ``api_key`` is set; a wrong or
missing key -> 401 with OpenAI's error shape).  The answer is deterministic: ``"Summary: "``
followed by the first 12 words of the last user message's first JSON ``"name"`` value (or of
the message), and ``usage`` counts words as tokens.

Fault injection: ``fail(status, count=None)`` answers ``status`` with an error body;
``hang(seconds, count=None)`` waits before answering (a stalled backend);
``clear_faults()``.  ``requests`` records every request body (for assertions on the prompt).

Standalone: ``python -m tests.emulators.llm --port 8089 --api-key KEY``.
"""
from __future__ import annotations

import argparse
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler

from ._server import LoopbackServer

__all__ = ["LlmEmulator"]


class LlmEmulator(LoopbackServer):
    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, api_key: str | None = "llm-test-key",
                 model: str = "relay-test-model") -> None:
        self.host, self.port = host, port
        self.api_key = api_key
        self.model = model
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self._faults: list[list] = []    # [kind, value, remaining count or None]
        self._lock = threading.Lock()
        self._stop = threading.Event()

    # lifecycle
    thread_name = "llm-emulator"

    def _handler_class(self) -> type:
        emu = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):  # quiet
                pass

            def do_POST(self):
                emu._handle(self)
        return Handler

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1/chat/completions"

    def _before_close(self) -> None:
        self._stop.set()

    # faults
    def fail(self, status: int, count: int | None = None) -> None:
        with self._lock:
            self._faults.append(["fail", status, count])

    def hang(self, seconds: float, count: int | None = None) -> None:
        with self._lock:
            self._faults.append(["hang", seconds, count])

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take(self):
        with self._lock:
            for f in self._faults:
                if f[2] is None or f[2] > 0:
                    if f[2] is not None:
                        f[2] -= 1
                    return f[0], f[1]
        return None

    # serving
    def _send(self, h, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        except OSError:
            pass

    def _handle(self, h) -> None:
        if h.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            return self._send(h, 404, {"error": {"message": f"no route {h.path}", "type": "invalid_request_error"}})
        n = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(n)
        try:
            body = json.loads(raw)
        except ValueError:
            return self._send(h, 400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
        with self._lock:
            self.requests.append(body)
            self.headers.append(dict(h.headers))
        if self.api_key is not None and h.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._send(h, 401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                                 "code": "invalid_api_key"}})
        fault = self._take()
        if fault is not None:
            kind, value = fault
            if kind == "hang":
                self._stop.wait(value)
            elif kind == "fail":
                return self._send(h, value, {"error": {"message": "emulated failure", "type": "server_error"}})
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs or not isinstance(body.get("model"), str):
            return self._send(h, 400, {"error": {"message": "model and messages are required",
                                                 "type": "invalid_request_error"}})
        user = next((m.get("content", "") for m in reversed(msgs) if m.get("role") == "user"), "")
        m = re.search(r'"name":\s*"([^"]*)"', user)
        words = (m.group(1) if m else user).split()[:12]
        text = "Summary: " + " ".join(words)
        prompt_tokens = sum(len(str(x.get("content", "")).split()) for x in msgs)
        completion_tokens = len(text.split())
        self._send(h, 200, {
            "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8089)
    ap.add_argument("--api-key", default=None)
    a = ap.parse_args(argv)
    emu = LlmEmulator(a.host, a.port, api_key=a.api_key).start()
    print(f"LLM emulator on {emu.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        emu.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A Splunk HTTP Event Collector emulator (apis-wave2.md section 5), on 127.0.0.1.

* ``POST /services/collector/event`` (also ``/services/collector``, ``.../event/1.0``): a batch is
  JSON objects **back to back** (whitespace allowed, no array, no commas).  Answers, as
  ``{"text", "code"}``: 200 code 0 ``Success``; 401 code 2 ``Token is required`` (no header),
  code 3 ``Invalid authorization`` (not ``Splunk <token>``); 403 code 4 ``Invalid token``, code 1
  ``Token disabled``; 400 code 5 ``No data``, code 6 ``Invalid data format`` (a JSON array or
  bad JSON), code 12 ``Event field is required``, code 13 ``Event field cannot be blank``,
  code 7 ``Incorrect index`` (not in ``indexes``), code 15 (nested indexed ``fields``) - each
  with ``invalid-event-number``; 503 code 9 ``Server is busy`` while ``busy``.  A refused batch
  indexes nothing.
* ``GET /services/collector/health`` -> 200 code 17 or 503 code 18 (``busy``).
* Basic auth with any user and the token as password is accepted too.

``events`` holds the indexed envelopes.  Faults: _faults.py (op ``event``).
"""
from __future__ import annotations

import base64
import json

from ._faults import FaultyEmulator, Reply, Request

__all__ = ["HecEmulator"]

_DEC = json.JSONDecoder()


def _r(status: int, text: str, code: int, **extra) -> Reply:
    return Reply(status, {"text": text, "code": code, **extra}, note=f"code {code}")


class HecEmulator(FaultyEmulator):
    thread_name = "hec-emulator"

    def __init__(self, *, token: str = "11111111-2222-3333-4444-555555555555", indexes: tuple = ("main", "security"),
                 **kw) -> None:
        super().__init__(**kw)
        self.token = token
        self.indexes = set(indexes)
        self.disabled = False
        self.busy = False
        self.events: list[dict] = []
        self.batches: list[int] = []

    def op_of(self, req: Request) -> str:
        return "health" if req.path.endswith("/health") else "event"

    def handle(self, req: Request) -> Reply:
        if req.path.endswith("/health"):
            return _r(503, "HEC is unhealthy, queues are full", 18) if self.busy else _r(200, "HEC is healthy", 17)
        if req.path not in ("/services/collector/event", "/services/collector", "/services/collector/event/1.0"):
            return Reply(404, text="Not Found")
        a = req.headers.get("Authorization")
        if not a:
            return _r(401, "Token is required", 2)
        tok = None
        if a.startswith("Splunk "):
            tok = a[7:]
        elif a.startswith("Basic "):
            try:
                tok = base64.b64decode(a[6:]).decode().split(":", 1)[1]
            except (ValueError, IndexError):
                tok = None
        if tok is None:
            return _r(401, "Invalid authorization", 3)
        if tok != self.token:
            return _r(403, "Invalid token", 4)
        if self.disabled:
            return _r(403, "Token disabled", 1)
        if self.busy:
            return _r(503, "Server is busy", 9)
        text = req.raw.decode("utf-8", "replace")
        if not text.strip():
            return _r(400, "No data", 5)
        evs, pos, n = [], 0, len(text)
        while True:
            while pos < n and text[pos].isspace():
                pos += 1
            if pos >= n:
                break
            try:
                obj, pos = _DEC.raw_decode(text, pos)
            except ValueError:
                return _r(400, "Invalid data format", 6, **{"invalid-event-number": len(evs)})
            if not isinstance(obj, dict):
                return _r(400, "Invalid data format", 6, **{"invalid-event-number": len(evs)})
            evs.append(obj)
        for i, e in enumerate(evs):
            if "event" not in e:
                return _r(400, "Event field is required", 12, **{"invalid-event-number": i})
            if e["event"] in ("", None, {}, []):
                return _r(400, "Event field cannot be blank", 13, **{"invalid-event-number": i})
            if "index" in e and e["index"] not in self.indexes:
                return _r(400, "Incorrect index", 7, **{"invalid-event-number": i})
            f = e.get("fields")
            if f is not None and (not isinstance(f, dict) or any(isinstance(v, dict) for v in f.values())):
                return _r(400, "Error in handling indexed fields", 15, **{"invalid-event-number": i})
        with self.lock:
            self.events.extend(evs)
            self.batches.append(len(evs))
        return _r(200, "Success", 0)

"""The triage audit log: one JSON object per line, appended by a writer thread.

``write(record)`` only appends to a deque (no I/O, no serialisation on the hot path).  The
writer thread serialises with orjson and appends at least every ``flush_interval`` seconds
(sooner when many records wait), and on :meth:`close`.  Size-based rotation: when the file
would pass ``max_bytes`` it becomes ``<path>.1`` (``.1`` -> ``.2`` ... up to ``keep`` files;
the oldest is deleted).  Several processes (``[relay] workers``) may share one file: each
write batch holds an advisory lock (``<path>.lock``), and a writer whose file was rotated by
another process reopens the path.  A record that cannot be queued because ``max_pending``
records are already waiting is dropped and counted (``relay_audit_dropped_total``).
"""
from __future__ import annotations

import collections
import fcntl
import logging
import os
import threading
import time
from pathlib import Path

import orjson

from ..metrics import REGISTRY

log = logging.getLogger("relay.enrich")

__all__ = ["AuditWriter"]


def _default(o):
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if isinstance(o, bytes):
        return o.decode("utf-8", "replace")
    return str(o)


class AuditWriter:
    def __init__(self, path: Path, *, max_bytes: int = 50 << 20, keep: int = 5, flush_interval: float = 1.0,
                 max_pending: int = 100_000) -> None:
        self.path = Path(path)
        self.max_bytes, self.keep = max_bytes, keep
        self.flush_interval = min(flush_interval, 1.0)
        self.max_pending = max_pending
        self._q: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._flushed = threading.Condition()
        self._closed = False
        self._fd: int | None = None
        self._written = REGISTRY.counter("relay_audit_written_total")
        self._dropped = REGISTRY.counter("relay_audit_dropped_total")
        self._errors = REGISTRY.counter("relay_audit_errors_total")
        self._seq_written = 0
        self._seq_queued = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ hot path
    def write(self, record: dict) -> None:
        q = self._q
        if len(q) >= self.max_pending:
            self._dropped.value += 1
            return
        q.append(record)
        self._seq_queued += 1
        if len(q) >= 1000:
            self._wake.set()

    # ------------------------------------------------------------------ writer
    def _run(self) -> None:
        warned = 0.0
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            closing = self._closed
            try:
                self._drain()
            except Exception as e:   # a full disk must not kill the writer: retry next round
                self._errors.value += 1
                now = time.monotonic()
                if now - warned > 10:
                    log.error("audit: cannot write %s: %s (records are kept in memory up to %d)",
                              self.path, e, self.max_pending)
                    warned = now
            if closing and not self._q:
                break
            if closing:
                time.sleep(0.05)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _drain(self) -> None:
        q = self._q
        if not q:
            return
        n = len(q)
        lines = [orjson.dumps(q[i], default=_default, option=orjson.OPT_APPEND_NEWLINE) for i in range(n)]
        lines = [_redact_line(b) for b in lines]   # never a credential (an echoed key in a summary answer)
        self._append(lines)
        for _ in range(n):
            q.popleft()
        self._written.value += n
        with self._flushed:
            self._seq_written += n
            self._flushed.notify_all()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def _append(self, lines: list) -> None:
        lock = os.open(str(self.path) + ".lock", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self._fd is not None:   # rotated by another process? reopen the path
                try:
                    st = os.stat(self.path)
                    if st.st_ino != os.fstat(self._fd).st_ino:
                        os.close(self._fd)
                        self._fd = None
                except FileNotFoundError:
                    os.close(self._fd)
                    self._fd = None
            if self._fd is None:
                self._fd = self._open()
            size = os.fstat(self._fd).st_size
            chunk: list = []
            csize = 0
            for line in lines:   # rotate between lines: no file grows past max_bytes (unless one line does)
                if size + csize + len(line) > self.max_bytes and (size + csize) > 0:
                    self._write(b"".join(chunk))
                    chunk, csize = [], 0
                    self._rotate()
                    size = 0
                chunk.append(line)
                csize += len(line)
            self._write(b"".join(chunk))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            os.close(lock)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            k = os.write(self._fd, view)
            view = view[k:]

    def _rotate(self) -> None:
        os.close(self._fd)
        self._fd = None
        p = str(self.path)
        if self.keep <= 0:
            os.unlink(p)
        else:
            try:
                os.unlink(f"{p}.{self.keep}")
            except FileNotFoundError:
                pass
            for i in range(self.keep - 1, 0, -1):
                try:
                    os.rename(f"{p}.{i}", f"{p}.{i + 1}")
                except FileNotFoundError:
                    pass
            os.rename(p, f"{p}.1")
        self._fd = self._open()

    # ------------------------------------------------------------------ control
    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is written (tests, shutdown)."""
        target = self._seq_queued
        self._wake.set()
        deadline = time.monotonic() + timeout
        with self._flushed:
            while self._seq_written < target:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._flushed.wait(min(left, 0.1))
                self._wake.set()
        return True

    def close(self, timeout: float = 5.0) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout)


def _redact_line(line: bytes) -> bytes:
    from ..secrets import redact
    t = line.decode("utf-8")
    r = redact(t)
    return line if r is t else r.encode("utf-8")

"""File sink: append each payload as one line to ``cfg.path``.

* One line per payload, LF-terminated: the LF framing of :func:`formats.syslog.frame_batch`,
  the same as the syslog sink's (the rule is documented in formats/syslog.py: a trailing LF
  or CRLF of the payload is dropped, every other CR or LF becomes a space); each changed
  payload counts in ``relay_sanitised_total{sink}``.
* Parent directories are created.  The file is opened ``O_APPEND`` (mode 0640).
* Durability: a batch is written with one ``write`` and ``fsync``ed before its rows are acked
  (a crash before the fsync redelivers the batch: duplicates, never a loss).  A newly created
  file also gets its directory fsynced.
* Rotation: before each batch the path is ``stat``ed and compared with the open file
  (device/inode, and ``st_nlink`` of the open file); if the file was renamed, removed or
  replaced, the sink reopens ``cfg.path`` (logrotate ``create`` and ``copytruncate`` both
  work; with ``copytruncate`` lines written between copy and truncate are lost by
  logrotate itself, as for any writer).
* A failed write is undone with ``ftruncate`` to the size before the batch (best effort), so
  a retry does not leave half a line.  Errors (disk full, permission denied, I/O error) raise
  :class:`~relay.sinks.base.UnavailableError`: the rows stay queued, no attempt is counted,
  the sink retries after a backoff (1 s doubling to 30 s).
* File I/O runs in a worker thread, never on the event loop.
"""
from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Sequence

from ..fsutil import fsync_dir
from .base import Sink, UnavailableError

__all__ = ["FileSink"]

log = logging.getLogger("relay.sinks.file")


class FileSink(Sink):
    type = "file"
    max_inflight = 1
    packed_lease = True      # send() frames the batch from its packed rows (_lines.frame_items)

    def __init__(self, cfg, queue, **kw) -> None:
        super().__init__(cfg, queue, **kw)
        if cfg.path is None:
            raise ValueError(f"sink {cfg.name}: file sink needs a path")
        self.path = Path(cfg.path)
        self._fd: int | None = None
        self._ident: tuple[int, int] | None = None
        self._fails = 0
        self.reopens = 0
        self.m_sanitised = self.registry.counter("relay_sanitised_total", sink=self.name)

    # all of these run in a worker thread
    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        st = os.fstat(fd)
        self._fd, self._ident = fd, (st.st_dev, st.st_ino)
        if not existed:
            fsync_dir(self.path.parent)

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def _check_rotated(self) -> None:
        if self._fd is None:
            return
        try:
            st = os.stat(self.path)
            mine = os.fstat(self._fd)
        except FileNotFoundError:
            st = None
            mine = None
        if st is None or (st.st_dev, st.st_ino) != self._ident or mine.st_nlink == 0:
            log.info("sink %s: %s was rotated or removed; reopening", self.name, self.path)
            self._close_fd()
            self.reopens += 1

    def _write(self, data: bytes) -> None:
        self._check_rotated()
        if self._fd is None:
            self._open()
        fd = self._fd
        start = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass
            self._close_fd()
            raise

    async def send(self, items: Sequence) -> None:
        data, changed = _lines.frame_items(items, "lf")
        try:
            await asyncio.to_thread(self._write, data)
        except OSError as exc:
            self._fails += 1
            delay = min(30.0, 2.0 ** (self._fails - 1))
            log.warning("sink %s: cannot write %s: %s; events stay queued, retrying in %g s",
                        self.name, self.path, exc, delay)
            raise UnavailableError(f"cannot write {self.path}: {exc}", delay,
                                   reason="file") from exc
        self._fails = 0
        if changed:
            self.m_sanitised.value += changed

    async def close(self) -> None:
        self._close_fd()


# --------------------------------------------------------------------------- kind

from .. import kinds  # noqa: E402
from . import _lines  # noqa: E402


def read_config(t, sk, base_dir) -> None:
    from ..checks import path_converter
    sk.path = t.get("path", str, required=True, check=path_converter(base_dir))
    _lines.read(t, sk)


KIND = kinds.register_sink(kinds.SinkKind(
    type="file", read_config=read_config, factory=FileSink, renderer=_lines.renderer,
    keys=("path",) + _lines.KEYS,
    doc="appends one line per event to a file (fsync per batch; reopens after rotation)"))

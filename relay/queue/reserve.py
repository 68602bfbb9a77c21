"""Disk-full insurance: a reserve file of ``reserve_bytes`` beside the queue, given up
on a full disk so that acknowledgements can still be recorded (the queue can drain), and
the free-space checks that refuse new groups before the disk is full.  Mixed into
:class:`relay.queue.DiskQueue`."""
from __future__ import annotations

import errno
import logging
import os
import sqlite3
import time

from ..logs import LogLimiter
from .errors import QueueDiskFull

log = logging.getLogger("relay.queue")
_LIMITER = LogLimiter(10.0, log)


class _ReserveMixin:
    """The reserve file and space checks (uses ``path``, ``stats``, ``_lock``, ``_conn``,
    ``_write``, ``_reserve_path``, ``_reserve_bytes``, ``_reserve_checked``)."""

    def _reserve_size(self) -> int:
        if self._reserve_bytes is not None:
            return self._reserve_bytes
        try:
            st = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
            total = st.f_blocks * st.f_frsize
        except OSError:
            total = 1 << 30
        return max(128 << 10, min(4 << 20, total // 16))   # 4 MiB, less on tiny filesystems

    def _ensure_reserve(self) -> bool:
        """Create the reserve file if it is missing; False when the disk has no room."""
        size = self._reserve_size()
        try:
            if os.path.getsize(self._reserve_path) >= size:
                return True
        except OSError:
            pass
        try:
            fd = os.open(self._reserve_path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                try:
                    os.posix_fallocate(fd, 0, size)
                except (AttributeError, OSError) as e:
                    if getattr(e, "errno", None) == errno.ENOSPC:
                        raise
                    os.pwrite(fd, b"\0" * size, 0)
                os.fsync(fd)
            finally:
                os.close(fd)
            return True
        except OSError as e:
            try:
                os.unlink(self._reserve_path)
            except OSError:
                pass
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                log.warning("queue %s: cannot create the disk reserve %s: %s", self.path, self._reserve_path, e)
                return True   # not a space problem: do not block enqueueing over it
            return False

    def _release_reserve(self) -> bool:
        try:
            os.unlink(self._reserve_path)
        except FileNotFoundError:
            return False
        except OSError as e:
            log.error("queue %s: cannot release the disk reserve: %s", self.path, e)
            return False
        _LIMITER.warning((self.path, "reserve"), "queue %s: disk full: released the %s reserve so "
                         "acknowledgements can be recorded", self.path, self._reserve_path)
        return True

    def _tight(self) -> bool:
        """Is the filesystem short of space (less than 8x the reserve free)?"""
        try:
            st = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < 8 * self._reserve_size()

    def _reclaim(self) -> None:
        """Hand free pages back to the filesystem and shrink the WAL (short on disk).

        ``PRAGMA incremental_vacuum`` frees ONE page per step of its statement, and Python's
        ``execute`` steps a statement without result columns once (``fetchall()`` does not
        step it again): ``executescript`` steps it to the end, so every free page goes back
        (before, 3,522 of 3,534 pages stayed free after a disk-full episode)."""
        with self._lock:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                if not self._conn.in_transaction:   # executescript would COMMIT an open one
                    self._conn.executescript("PRAGMA incremental_vacuum;")
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except (sqlite3.Error, AttributeError, SystemError):
                # best effort.  SystemError: CPython 3.11's executescript "returned NULL without
                # setting an exception" once with the disk full (the chaos soak, 2026-12-07),
                # after the ack had committed: raised on, it made the caller send the acked
                # rows again
                pass

    def _after_full(self) -> None:
        """After a disk-full episode (a refused group or write), give the space of delivered
        rows back as the queue drains: at most once a second, until a reclaim finds the
        queue empty.  Without it the file keeps its free pages for ever, the filesystem stays
        full and every group commit runs the space checks' slow path."""
        if self.stats["disk_full"] == self._full_handled:
            return
        now = time.monotonic()
        if now - self._reclaim_at < 1.0:
            return
        self._reclaim_at = now
        self._reclaim()
        try:
            empty = self._conn.execute("SELECT 1 FROM queue LIMIT 1").fetchone() is None
        except (sqlite3.Error, AttributeError):
            return
        if empty:
            self._full_handled = self.stats["disk_full"]

    def _free_pages_bytes(self) -> int:
        try:
            n = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
            size = self._conn.execute("PRAGMA page_size").fetchone()[0]
            return n * size
        except (sqlite3.Error, AttributeError):
            return 0

    def _check_space(self, nbytes: int) -> None:
        """Refuse a group that would leave too little room to checkpoint the WAL and to
        record acknowledgements (both need free space on a WAL database).  New rows go to
        the WAL first, which needs filesystem space; at checkpoint they move into the main
        file, where free pages are reused.  When short, reclaim first (checkpoint, hand
        free pages back to the filesystem, truncate the WAL)."""
        d = os.path.dirname(os.path.abspath(self.path))
        reserve = self._reserve_size()

        def room() -> tuple[int, int]:
            try:
                st = os.statvfs(d)
            except OSError:
                return 1 << 62, 0
            fs = st.f_bavail * st.f_frsize
            return fs, (self._free_pages_bytes() if fs < (64 << 20) else 0)

        fs, pages = room()
        if fs >= 2 * nbytes + reserve and fs + pages >= 4 * nbytes + reserve:
            return
        self._reclaim()
        fs, pages = room()
        if fs >= 2 * nbytes + reserve and fs + pages >= 4 * nbytes + reserve:
            return
        self.stats["disk_full"] += 1
        raise QueueDiskFull(f"{self.path}: disk is full: only {fs} bytes free on {d}, not enough to queue "
                            f"{nbytes} more bytes and still checkpoint and record acknowledgements")

    def _check_reserve(self) -> None:
        if not os.path.exists(self._reserve_path):
            now_m = time.monotonic()   # best effort: recreate the reserve when there is room again
            if now_m - self._reserve_checked >= 0.5:
                self._reserve_checked = now_m
                if not self._ensure_reserve():
                    self._reclaim()
                    self._ensure_reserve()

    def _write_ack(self, fn):
        """Like :meth:`_write`, for writes that make room (ack, retry, dead letter,
        release...): on a full disk, give up the reserve, retry once, and checkpoint so
        the WAL shrinks."""
        try:
            result = self._write(fn)
        except QueueDiskFull:
            pass
        else:
            if self._tight():  # keep the WAL small while the disk is short of space
                self._reclaim()
            else:
                self._after_full()
            return result
        try:  # first make room by checkpointing the WAL into the main file
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return self._write(fn)
        except (QueueDiskFull, sqlite3.Error):
            pass
        if not self._release_reserve():
            raise QueueDiskFull(f"{self.path}: disk full, and the reserve for acknowledgements is used up")
        result = self._write(fn)
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        return result

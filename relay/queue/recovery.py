"""Opening a queue file: connect (WAL, pragmas), verify integrity and schema, upgrade
schema 1 -> 2, repair the totals row; a bad file is quarantined (moved aside) and what is
readable salvaged into a fresh queue.  Mixed into :class:`relay.queue.DiskQueue`."""
from __future__ import annotations

import logging
import os
import sqlite3
import time

from ..fsutil import private_file
from ..fsutil import fsync_dir as _fsync_dir
from .errors import _CORRUPTION_CODES, _SQLITE_FULL, QueueDiskFull, QueueError, _BadFile, _code
from .packing import _row_live
from .schema import (
    _EXPECTED_COLUMNS,
    _SCHEMA,
    _V1_QUEUE_COLUMNS,
    APPLICATION_ID,
    PAGE_SIZE,
    SCHEMA_VERSION,
    _rollback,
    _uri_path,
)

log = logging.getLogger("relay.queue")


class _RecoveryMixin:
    """Open, check, upgrade, quarantine and salvage (uses ``path``, ``synchronous``,
    ``busy_timeout``, ``stats``, ``_lock``, ``_conn`` of the :class:`DiskQueue`)."""

    def _connect(self, path: str) -> sqlite3.Connection:
        new = not os.path.exists(path) or os.path.getsize(path) == 0
        private_file(path)      # 0600, and so its -wal/-shm (queued events are sensitive)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                               timeout=self.busy_timeout)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            # only takes effect on a new file, before WAL mode writes its header: freed pages
            # can then be handed back to the filesystem (incremental_vacuum) when disk is short
            if new:
                conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise QueueError(f"{path}: could not switch to WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            # Debian's SQLite is built with SECURE_DELETE on: every deleted row would be
            # overwritten with zeros, i.e. an ack would write each delivered payload again
            # (and need that much WAL space on a full disk).  FAST zeroes deleted cells only
            # on pages that are written anyway; freed overflow pages are not rewritten.
            conn.execute("PRAGMA secure_delete = FAST")
            # 8 MiB of page cache (SQLite's default is 2 MiB): the rows a commit just wrote are
            # still cached when the sink leases them a moment later, instead of being read back
            # from the WAL (lease 1.4 -> 1.0 us per event, bench/README.md "Fifth round")
            conn.execute("PRAGMA cache_size = -8192")
            # checkpoint often enough, and truncate the WAL after checkpoints, so that the
            # WAL never holds more than ~1/16 of the filesystem (matters on small disks)
            try:
                st = os.statvfs(os.path.dirname(os.path.abspath(path)))
                fs = st.f_blocks * st.f_frsize
            except OSError:
                fs = 1 << 40
            page = conn.execute("PRAGMA page_size").fetchone()[0] or 4096
            pages = max(16, min((4000 << 10) // page, fs // page // 16))
            conn.execute(f"PRAGMA journal_size_limit = {max(64 << 10, min(64 << 20, fs // 16))}")
            conn.execute(f"PRAGMA wal_autocheckpoint = {pages}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _verify(self, conn: sqlite3.Connection, check: bool) -> bool:
        """Check integrity and schema.  Returns True when the file is new (empty)."""
        if check:
            rows = conn.execute("PRAGMA quick_check").fetchall()
            if rows != [("ok",)]:
                raise _BadFile("quick_check: " + "; ".join(str(r[0]) for r in rows[:5]))
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
        if app_id == 0 and version == 0 and not tables:
            return True
        if app_id != APPLICATION_ID:
            raise _BadFile(f"not a relay queue (application_id={app_id:#x}, tables={sorted(tables)})")
        if version not in (1, SCHEMA_VERSION):
            raise _BadFile(f"schema version {version}, expected {SCHEMA_VERSION}")
        for table, cols in _EXPECTED_COLUMNS.items():
            if version == 1 and table == "queue":
                cols = _V1_QUEUE_COLUMNS
            elif version == 1 and table == "partial":
                continue
            have = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            if have != cols:
                raise _BadFile(f"table {table}: columns {have}, expected {cols}")
        if conn.execute("SELECT count(*) FROM totals").fetchone()[0] != 1:
            raise _BadFile("table totals: expected exactly one row")
        return False

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Schema 1 (one event per row) -> 2 (packed rows): add the columns; old rows are
        rows of one event, which is what the defaults say."""
        if conn.execute("PRAGMA user_version").fetchone()[0] != 1:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("ALTER TABLE queue ADD COLUMN n INTEGER NOT NULL DEFAULT 1")
            conn.execute("ALTER TABLE queue ADD COLUMN lens BLOB")
            conn.execute("CREATE TABLE partial (id INTEGER PRIMARY KEY, done BLOB NOT NULL)")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        log.info("queue %s: schema upgraded from 1 to %d", self.path, SCHEMA_VERSION)

    def _open(self, check: bool) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        # Check through a read-only connection first: closing it never checkpoints, so a
        # bad file is moved aside exactly as found, its -wal intact (a read-write
        # connection would fold the WAL into the damaged file when it closes).
        verified = False
        if os.path.isfile(self.path) and os.path.getsize(self.path) > 0:
            ro = None
            try:
                ro = sqlite3.connect(f"file:{_uri_path(self.path)}?mode=ro", uri=True,
                                     isolation_level=None, timeout=self.busy_timeout)
                self._verify(ro, check)
                verified = True
            except _BadFile as exc:
                ro.close()
                ro = None
                self._recover(str(exc))
                return
            except sqlite3.Error as exc:
                if ro is not None:
                    ro.close()
                    ro = None
                if _code(exc) in _CORRUPTION_CODES:
                    self._recover(f"{getattr(exc, 'sqlite_errorname', 'error')}: {exc}")
                    return
                # anything else (cannot open read-only, busy ...): the read-write path decides
            finally:
                if ro is not None:
                    ro.close()
        conn = None
        try:
            conn = self._connect(self.path)
            fresh = self._verify(conn, check and not verified)
            if fresh:
                self._create_schema(conn)
                _fsync_dir(directory)
            else:
                self._migrate(conn)
                if check:
                    self._repair_totals(conn)
        except _BadFile as exc:
            if conn is not None:
                conn.close()
            self._recover(str(exc))
            return
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            code = _code(exc)
            if code in _CORRUPTION_CODES:
                self._recover(f"{getattr(exc, 'sqlite_errorname', 'error')}: {exc}")
                return
            if code == _SQLITE_FULL:
                raise QueueDiskFull(f"{self.path}: {exc}") from exc
            raise QueueError(f"{self.path}: cannot open queue: {exc}") from exc
        except QueueError:
            if conn is not None:
                conn.close()
            raise
        self._conn = conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    def _repair_totals(self, conn: sqlite3.Connection) -> None:
        """Recount rows and bytes (cheap next to quick_check); fix the totals row if off."""
        rows, nbytes = _count_queue(conn)
        drows, dbytes = conn.execute(
            "SELECT count(*), coalesce(sum(length(payload)), 0) FROM dead").fetchone()
        have = conn.execute("SELECT rows, bytes, dead_rows, dead_bytes FROM totals").fetchone()
        if tuple(have) != (rows, nbytes, drows, dbytes):
            log.warning("queue %s: totals %s did not match the rows %s; repaired",
                        self.path, tuple(have), (rows, nbytes, drows, dbytes))
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE totals SET rows=?, bytes=?, dead_rows=?, dead_bytes=?",
                         (rows, nbytes, drows, dbytes))
            conn.execute("COMMIT")
            self.stats["totals_repaired"] += 1

    def _recover(self, reason: str) -> None:
        """Move the bad file aside, create a fresh queue, salvage what is readable."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = f"{self.path}.corrupt-{stamp}"
        n = 1
        while os.path.exists(aside):
            aside = f"{self.path}.corrupt-{stamp}.{n}"
            n += 1
        try:
            for suffix in ("", "-wal", "-shm", "-journal"):
                src = self.path + suffix
                if os.path.exists(src):
                    os.replace(src, aside + suffix)
        except OSError as exc:
            raise QueueError(f"{self.path} is unusable ({reason}) and could not be moved "
                             f"aside: {exc}") from exc
        _fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        self.recovered_from = aside
        self.recovery_reason = reason
        self.stats["corrupt_recovered"] += 1
        log.error("queue %s is unusable (%s); moved aside to %s, starting a fresh queue",
                  self.path, reason, aside)
        try:
            conn = self._connect(self.path)
            self._verify(conn, False)
            self._create_schema(conn)
        except (sqlite3.Error, _BadFile) as exc:
            raise QueueError(f"{self.path}: cannot create a fresh queue: {exc}") from exc
        self._conn = conn
        _fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        try:
            saved = self._salvage(aside)
        except Exception as exc:  # best effort, never blocks start-up
            log.warning("queue %s: salvage from %s failed: %s", self.path, aside, exc)
            saved = 0
        self.stats["salvaged"] += saved
        if saved:
            log.warning("queue %s: salvaged %d rows from %s", self.path, saved, aside)

    def _salvage(self, aside: str, time_budget: float = 30.0) -> int:
        """Copy readable rows of the quarantined file into the fresh queue (best effort).

        Rows are read in id order; when a read fails the scan tries to jump past the bad
        region (ids +1, +10, ... +10^6).  Original ids, attempts and schedule are kept."""
        src = None
        tables: set = set()
        # read-only first (sees the WAL); immutable=1 if that fails (ignores WAL and locks)
        for opts in ("mode=ro", "immutable=1"):
            try:
                src = sqlite3.connect(f"file:{_uri_path(aside)}?{opts}", uri=True,
                                      isolation_level=None, timeout=0.1)
                src.execute("PRAGMA query_only = 1")
                tables = {r[0] for r in src.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'")}
                break
            except sqlite3.Error:
                if src is not None:
                    src.close()
                src = None
        if src is None:
            return 0
        deadline = time.monotonic() + time_budget
        total = 0
        try:
            plan = (("partial", (_EXPECTED_COLUMNS["partial"],)),
                    ("queue", (_EXPECTED_COLUMNS["queue"], _V1_QUEUE_COLUMNS)),
                    ("dead", (_EXPECTED_COLUMNS["dead"],)))
            for table, known in plan:
                if table not in tables:
                    continue
                try:
                    have = [r[1] for r in src.execute(f"PRAGMA table_info({table})")]
                except sqlite3.Error:
                    continue
                if have not in known:
                    continue
                cols = have
                # packed queue rows are up to PACK_BYTES each: read few at a time
                step = 16 if table == "queue" else 2000
                collist = ", ".join(cols)
                marks = ", ".join("?" * len(cols))
                pay = cols.index("payload" if "payload" in cols else "done")
                last = 0
                failures = 0
                while time.monotonic() < deadline:
                    try:
                        batch = src.execute(
                            f"SELECT {collist} FROM {table} WHERE id > ? ORDER BY id LIMIT {step}",
                            (last,)).fetchall()
                    except sqlite3.Error:
                        batch = None
                    if batch is None:
                        failures += 1
                        if failures > 7:
                            break
                        last += 10 ** (failures - 1)
                        continue
                    if not batch:
                        break
                    failures = 0
                    good = [r for r in batch if isinstance(r[pay], bytes)]  # type-checked

                    last = batch[-1][0]
                    with self._lock:
                        conn = self._conn
                        conn.execute("BEGIN IMMEDIATE")
                        try:
                            conn.executemany(
                                f"INSERT OR IGNORE INTO {table} ({collist}) VALUES ({marks})", good)
                            conn.execute("COMMIT")
                        except BaseException:
                            _rollback(conn)
                            raise
        finally:
            src.close()
        with self._lock:   # count what arrived; drop settled-offset lists of rows not salvaged
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                before = conn.execute("SELECT rows + dead_rows FROM totals").fetchone()[0]
                conn.execute("DELETE FROM partial WHERE id NOT IN (SELECT id FROM queue)")
                _recount(conn)
                total = conn.execute("SELECT rows + dead_rows FROM totals").fetchone()[0] - before
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        return total


def _count_queue(conn: sqlite3.Connection) -> tuple[int, int]:
    """Count the unsettled events and their payload bytes (scans the table)."""
    rows, nbytes = conn.execute(
        "SELECT coalesce(sum(n), 0), coalesce(sum(length(payload)), 0) FROM queue q "
        "WHERE NOT EXISTS (SELECT 1 FROM partial p WHERE p.id = q.id)").fetchone()
    for n, plen, lens, done in conn.execute(
            "SELECT q.n, length(q.payload), q.lens, p.done FROM queue q JOIN partial p ON p.id = q.id"):
        e, b = _row_live(n, plen, lens, done)
        rows += e
        nbytes += b
    return rows, nbytes


def _recount(conn: sqlite3.Connection) -> None:
    rows, nbytes = _count_queue(conn)
    conn.execute("UPDATE totals SET rows = ?, bytes = ?, "
                 "dead_rows = (SELECT count(*) FROM dead), "
                 "dead_bytes = (SELECT coalesce(sum(length(payload)), 0) FROM dead)", (rows, nbytes))

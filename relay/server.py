"""`relay run`: the process lifecycle in one place.

Start: load and check the config (exit 2 with the file, key path and problem when it
is wrong), open one disk queue per sink (a corrupted file is moved aside and reported,
the relay starts anyway), start the sinks' delivery loops, the pipeline (and the ingest
workers), the sources and the metrics server, then tell systemd ``READY=1`` when ``NOTIFY_SOCKET`` is set.

Signals: SIGTERM/SIGINT drain gracefully: stop accepting, hand over what was read,
commit it, let the sinks deliver for up to ``relay.drain_timeout`` seconds, keep the
rest queued on disk, exit 0.  SIGHUP reloads the config; an invalid new config is
reported and the old one keeps running.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sqlite3
import time

from typing import Callable

from parsers import native

from . import gctune, kinds
from .checks import cert_summary
from .config import Config, ConfigError, SinkConfig, SourceConfig, load
from .logs import setup_logging
from .__version__ import __version__
from .metrics import REGISTRY, MetricsServer
from .pipeline import Pipeline
from .queue import DiskQueue, GroupCommitter, QueueError, open_queue

log = logging.getLogger("relay")

__all__ = ["Server", "run", "sd_notify"]

#: ``check(config) -> [report lines]``: run before a config is used (start and reload); any
#: line refuses the config.  ``relay run`` passes the golden-test runner (relay/tools) when
#: ``run_tests_at_start`` asks for it: the daemon itself never imports the tools.
StartupCheck = Callable[[Config], list]


def sd_notify(state: str) -> bool:
    """Send a systemd notification (no libsystemd needed).  False when not under systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(state.encode())
        return True
    except OSError as e:
        log.warning("sd_notify(%s) failed: %s", state, e)
        return False


def _deliverable(r, deadline: float) -> bool:
    """Whether a draining sink still has something it can deliver before ``deadline``: rows in
    flight (leased: being sent, or about to be), or rows due before then.  Not a sink blocked on
    its credentials, nor one whose remaining rows all wait for a retry after the deadline."""
    q = r.queue
    if q.depth() == 0 or getattr(r.sink, "blocked", False):
        return False
    if q.inflight() > 0:
        return True
    due = q.next_due()
    return due is not None and time.monotonic() + due < deadline


class _SinkRuntime:
    def __init__(self, cfg: SinkConfig, queue: DiskQueue, sink, committer: GroupCommitter, task: asyncio.Task,
                 stop: asyncio.Event) -> None:
        self.cfg, self.queue, self.sink, self.committer, self.task, self.stop = cfg, queue, sink, committer, task, stop


class Server:
    def __init__(self, config_path: str | os.PathLike, config: Config | None = None,
                 startup_check: StartupCheck | None = None) -> None:
        self.config_path = str(config_path)
        self.config = config
        self.startup_check = startup_check
        self.sinks: dict[str, _SinkRuntime] = {}
        self.sources: dict[str, object] = {}
        self.pipeline: Pipeline | None = None   # the one stage, in this process; holds the committers
        self.pool = None            # WorkerPool (workers > 1): the listeners' raw messages go there
        self.ingest = None          # what the sources hand over to: the pool, else the pipeline
        self.metrics: MetricsServer | None = None
        self._stop = asyncio.Event()
        self._ready = False
        self._reloading = False

    # ------------------------------------------------------------------ start / stop
    async def start(self) -> None:
        if self.config is None:
            self.config = load(self.config_path)
        cfg = self.config
        for w in cfg.warnings:
            log.warning("%s", w)
        loop = asyncio.get_running_loop()
        from . import claims
        claims.configure(cfg.relay.claims)      # [relay.claims]: before the sinks that use them
        for name, sc in cfg.sinks.items():
            self.sinks[name] = self._start_sink(sc, loop)
        workers = cfg.relay.workers > 1
        # with workers the main process enriches only what pull sources submit: tables on first use
        self.pipeline = Pipeline(cfg, self._committers(), lazy_enrich=workers)
        self.ingest = self.pipeline
        if workers:
            from .workers import WorkerPool
            self.pool = WorkerPool(self.config_path, cfg.relay.workers, self.pipeline, log_level=cfg.relay.log_level)
            await self.pool.start()
            self.ingest = self.pool
        if cfg.relay.metrics_address is not None:
            host, port = cfg.relay.metrics_address
            from .tap import TapHub, endpoint
            self.tap_hub = TapHub(self.pipeline)
            # workers: a reload does not change it (restart to apply)
            tap = endpoint(self.tap_hub, lambda: self.config, cfg.relay.workers)
            prefixes = {}
            if cfg.relay.console:      # imported only when on: relay.console reaches relay.tools
                from .console import Console
                console = Console(lambda: self.config, self.tap_hub, cfg.relay.workers)
                prefixes[console.prefix] = console
            self.metrics = MetricsServer(host, port, ready_fn=self._ready_state, tokens=cfg.relay.metrics_tokens,
                                         routes={"/tap": tap}, prefixes=prefixes)
            await self.metrics.start()
            log.info("metrics on http://%s:%d/metrics (/health, /ready, /tap)", host, self.metrics.port)
            if prefixes:
                log.info("console on http://%s:%d/console/ (open /console/?token=<console token>)", host,
                         self.metrics.port)
        for name, sc in cfg.sources.items():
            await self._start_source(sc)
        self._ready = True
        sd_notify("READY=1\nSTATUS=relay running")
        gctune.tune()       # the program out of the collector's sight, rarer collections (relay/gctune.py)
        REGISTRY.gauge("relay_info", version=__version__, hot_path="native" if native.ACTIVE else "python").value = 1
        log.info("relay running: %d source(s), %d route(s), %d sink(s); config %s; hot path %s (%s); stage %s",
                 len(self.sources), len(cfg.routes), len(self.sinks), self.config_path,
                 "native" if native.ACTIVE else "python", native.WHY, self.pipeline.stage_path())

    def _committers(self) -> dict[str, GroupCommitter]:
        return {n: r.committer for n, r in self.sinks.items()}

    def _start_sink(self, sc: SinkConfig, loop) -> _SinkRuntime:
        from .sinks import make_sink
        queue = open_queue(self.config.relay.state_dir, sc)
        sink = make_sink(sc, queue)
        committer = GroupCommitter(sc.name, queue, loop, on_commit=sink.notify)
        stop = asyncio.Event()
        task = asyncio.create_task(sink.run(stop), name=f"sink-{sc.name}")
        task.add_done_callback(lambda t, n=sc.name: self._sink_done(n, t))
        return _SinkRuntime(sc, queue, sink, committer, task, stop)

    def _sink_done(self, name: str, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("sink %s: delivery loop died: %r (events stay queued; restart the relay)", name, exc)

    async def _start_source(self, sc: SourceConfig, src=None) -> None:
        from .sources import make_source
        if src is None:
            src = make_source(sc, self.ingest)
        try:
            await src.start()
        except OSError as e:
            if sc.address is None:
                raise OSError(f"source {sc.name}: cannot start: {e.strerror or e}") from None
            raise OSError(f"source {sc.name}: cannot listen on {sc.type} {sc.address[0]}:{sc.address[1]}: "
                          f"{e.strerror or e}") from None
        self.sources[sc.name] = src
        if kinds.source(sc.type).transport is None:     # a pull source: it logs what it polls
            return
        host, port = getattr(src, "bound_address", sc.address)[:2]
        log.info("source %s: listening on %s %s:%d", sc.name, sc.type, host, port)

    def _ready_state(self) -> tuple[bool, str]:
        if not self._ready:
            return False, "starting"
        blocked = [n for n, r in self.sinks.items() if r.committer.blocked_reason]
        if blocked:
            return False, "queue full: " + ", ".join(blocked)
        missing = [n for n in self.config.sources if n not in self.sources]
        if missing:         # a reload could not start (or restore) a listener
            return False, "not listening: " + ", ".join(missing)
        return True, "ready"

    async def stop(self) -> None:
        timeout = self.config.relay.drain_timeout if self.config else 10.0
        sd_notify("STOPPING=1")
        log.info("stopping: draining for up to %.1f s", timeout)
        self._ready = False
        deadline = time.monotonic() + timeout
        for name, src in list(self.sources.items()):
            try:
                await src.stop(max(0.5, deadline - time.monotonic()))
            except Exception as e:
                log.error("source %s: error while stopping: %r", name, e)
        self.sources.clear()
        if self.pool is not None:  # workers finish and commit what they were handed
            await self.pool.stop(max(1.0, deadline - time.monotonic()))
        # everything handed over is committed before the sinks stop
        await asyncio.gather(*(asyncio.to_thread(r.committer.close, max(1.0, deadline - time.monotonic()))
                               for r in self.sinks.values()))
        for r in self.sinks.values():
            r.sink.notify()
        # let sinks deliver what is due until the deadline, then stop them
        while time.monotonic() < deadline and any(_deliverable(r, deadline) for r in self.sinks.values()):
            await asyncio.sleep(0.1)
        for r in self.sinks.values():
            r.stop.set()
        tasks = [r.task for r in self.sinks.values()]
        if tasks:   # asyncio.wait refuses an empty set (no sink started: empty config, bad state_dir)
            await asyncio.wait(tasks, timeout=max(1.0, deadline - time.monotonic()) + 2)
        for r in self.sinks.values():
            if not r.task.done():
                r.task.cancel()
        for r in self.sinks.values():
            try:
                r.queue.close()
            except Exception as e:
                log.error("sink %s: closing queue: %r", r.cfg.name, e)
        from . import claims
        await claims.close()
        if self.metrics is not None:
            await self.metrics.close()
        log.info("stopped")

    # ------------------------------------------------------------------ reload
    async def reload(self) -> bool:
        if self._reloading:
            return False
        self._reloading = True
        try:
            try:
                new = load(self.config_path)
            except ConfigError as e:
                log.error("reload: new configuration rejected, keeping the running one: %s", e)
                REGISTRY.inc("relay_config_reloads_total", result="rejected")
                return False
            failed = self.startup_check(new) if self.startup_check else []   # on the loop: no event is
            if failed:                                                          # counted meanwhile
                log.error("reload: new configuration rejected, keeping the running one:\n%s", "\n".join(failed))
                REGISTRY.inc("relay_config_reloads_total", result="rejected")
                return False
            old = self.config
            loop = asyncio.get_running_loop()
            # Everything that can fail is tried before anything running is touched: the new
            # and changed sources are built and prepared (TLS certificates loaded), and every
            # running TLS source loads its certificate and key again (SIGHUP rotates them even
            # at the same paths).  A failure rejects the whole reload: the running listeners
            # keep their settings and certificates, and the log says why.
            from .sources import make_source
            prepared: dict = {}
            rotate: dict = {}
            try:
                for name, sc in new.sources.items():
                    if name not in self.sources or sc != old.sources.get(name):
                        src = make_source(sc, self.ingest)
                        if hasattr(src, "prepare"):
                            await src.prepare()
                        prepared[name] = src
                for name, src in self.sources.items():
                    if name in new.sources and name not in prepared and hasattr(src, "reload_tls"):
                        rotate[name] = src._make_ssl_context()
            except (OSError, ValueError) as e:
                log.error("reload: new configuration rejected, keeping the running one (listeners and "
                          "certificates unchanged): %s", getattr(e, "strerror", None) or e)
                REGISTRY.inc("relay_config_reloads_total", result="rejected")
                return False
            # sinks: stop removed/changed ones (their queues stay on disk), start new/changed ones
            for name in list(self.sinks):
                if name not in new.sinks or new.sinks[name] != old.sinks[name]:
                    await self._stop_sink(name)
            for name, sc in new.sinks.items():
                if name not in self.sinks:
                    self.sinks[name] = self._start_sink(sc, loop)
            if new.relay.claims != old.relay.claims:
                from . import claims
                previous = claims.current()
                claims.configure(new.relay.claims)
                if previous is not None:
                    await previous.close()
            self.pipeline.committers = self._committers()
            self.pipeline.configure(new)
            if self.pool is not None:
                if new.relay.workers != old.relay.workers:
                    log.warning("reload: relay.workers changed; restart the relay to apply it")
                await self.pool.reload()
            self.config = new
            for name, ctx in rotate.items():
                self.sources[name].reload_tls(ctx)
                log.info("source %s: TLS certificate and key loaded again (%s)", name,
                         cert_summary(new.sources[name].tls_cert))
            # sources: restart the ones whose settings changed
            stopped: dict = {}
            for name in list(self.sources):
                if name not in new.sources or new.sources[name] != old.sources.get(name):
                    await self.sources.pop(name).stop(1.0)
                    stopped[name] = old.sources[name]
            errors = []
            for name, sc in new.sources.items():
                if name in self.sources:
                    continue
                try:
                    await self._start_source(sc, prepared.get(name))
                except OSError as e:
                    errors.append(str(e))
                    log.error("reload: %s", e)
                    if name in stopped:     # bring the old listener back: a reload never ends one
                        try:
                            await self._start_source(stopped[name])
                            log.warning("reload: source %s keeps its previous settings", name)
                        except OSError as e2:
                            log.error("reload: source %s could not be restored either: %s", name, e2)
            if errors:
                REGISTRY.inc("relay_config_reloads_total", result="failed")
                log.error("reload: configuration applied with errors (%d source(s) listening, %d configured): %s",
                          len(self.sources), len(new.sources), "; ".join(errors))
                return False
            REGISTRY.inc("relay_config_reloads_total", result="applied")
            log.info("reload: configuration applied (%d source(s), %d route(s), %d sink(s); stage %s)",
                     len(self.sources), len(new.routes), len(self.sinks), self.pipeline.stage_path())
            return True
        finally:
            self._reloading = False

    async def _stop_sink(self, name: str) -> None:
        r = self.sinks.pop(name)
        await asyncio.to_thread(r.committer.close, 5.0)
        r.stop.set()
        try:
            await asyncio.wait_for(r.task, 10)
        except (asyncio.TimeoutError, Exception):
            r.task.cancel()
        r.queue.close()

    # ------------------------------------------------------------------ main
    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        try:
            await self.start()
        except (OSError, sqlite3.Error, QueueError) as e:   # a port in use, an unusable state_dir...
            log.error("cannot start: %s", e)
            await self.stop()
            return 1
        await self._stop.wait()
        await self.stop()
        return 0


def run(config_path: str, startup_check: StartupCheck | None = None) -> int:
    """Entry point for `relay run`: exit status 0 on a clean stop, 1 on a start-up
    failure, 2 on a configuration error (or a failed ``startup_check``)."""
    try:
        cfg = load(config_path)
    except ConfigError as e:
        setup_logging()
        log.error("%s", e)
        return 2
    setup_logging(cfg.relay.log_level)
    failed = startup_check(cfg) if startup_check else []
    if failed:
        log.error("%s", "\n".join(failed))
        return 2
    # The stdlib loop, never uvloop even when importable: uvloop starts reading a new connection
    # after connection_made returns, whatever the protocol paused, so a TLS source's ClientHello
    # reached the syslog deframer before start_tls (tests/test_architecture.py keeps it out);
    # every test and benchmark runs this loop.
    return asyncio.run(Server(config_path, cfg, startup_check).serve())

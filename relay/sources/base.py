"""What every source shares: the :class:`Source` base class, the rate-limited log, the bind
error, and the listener keys' reader (relay/sources/__init__.py documents the interface)."""
from __future__ import annotations

import errno as _errno
import logging
from typing import Any

from ..checks import within
from ..logs import LogLimiter
from ..metrics import REGISTRY

log = logging.getLogger("relay.sources")

__all__ = ["Source", "LogLimiter", "bind_error", "read_listener", "BATCH", "LISTENER_KEYS", "STREAM_KEYS"]

#: Messages per pipeline.handle() call, at most.
BATCH = 1000


def bind_error(cfg, e: OSError) -> OSError:
    """A clear OSError for a source that cannot bind (errno kept)."""
    host, port = cfg.address
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    reason = e.strerror or str(e)
    hint = ""
    if e.errno == _errno.EADDRINUSE:
        hint = " (another process or source already listens there)"
    elif e.errno in (_errno.EACCES, _errno.EPERM):
        hint = " (ports below 1024 need root or CAP_NET_BIND_SERVICE)" if 0 < port < 1024 else ""
    elif e.errno == _errno.EADDRNOTAVAIL:
        hint = " (no local interface has that address)"
    err = OSError(e.errno, f"source {cfg.name!r} ({cfg.type}): cannot listen on {where}: {reason}{hint}")
    return err


class Source:
    """Base class: ``cfg``, ``pipeline``, ``bound_address``; ``start()`` and ``stop()``."""

    def __init__(self, cfg, pipeline, registry=None) -> None:
        self.cfg = cfg
        self.pipeline = pipeline
        self.registry = registry if registry is not None else REGISTRY
        self.bound_address: tuple[str, int] | None = None
        self.limiter = LogLimiter()
        self._received = self.registry.counter("relay_received_total", source=cfg.name)
        self._drops: dict[str, Any] = {}

    def dropped(self, reason: str, n: int = 1) -> None:
        c = self._drops.get(reason)
        if c is None:
            c = self._drops[reason] = self.registry.counter("relay_dropped_total", source=self.cfg.name,
                                                            reason=reason)
        c.value += n

    async def start(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    async def stop(self, drain_timeout: float = 10.0) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.cfg.name!r} {self.bound_address or self.cfg.address}>"


def read_listener(t, sc, base_dir, *, stream: bool) -> None:
    """The keys every listening source reads (``address``, ``lenient``, ``max_message_size``,
    ``oversize``, ``allow``) and, for stream listeners, ``max_connections`` and
    ``idle_timeout``: for the kinds' ``read_config``."""
    from ..checks import networks, non_negative, parse_address, positive
    sc.address = t.get("address", str, required=True, check=parse_address)
    sc.lenient = t.get("lenient", bool, False)
    sc.max_message_size = t.get("max_message_size", int, 65536, check=MESSAGE_SIZE)
    sc.oversize = t.get("oversize", str, "truncate", choices=("truncate", "drop"))
    sc.allow = t.get("allow", list, [], check=networks)
    if stream:
        sc.max_connections = t.get("max_connections", int, 1000, check=positive)
        sc.max_connections_per_ip = t.get("max_connections_per_ip", int, 100, check=non_negative)
        sc.idle_timeout = t.get("idle_timeout", float, 600.0, check=non_negative)


LISTENER_KEYS = ("address", "lenient", "max_message_size", "oversize", "allow")
STREAM_KEYS = ("max_connections", "max_connections_per_ip", "idle_timeout")


#: max_message_size's check (listeners and the http source)
MESSAGE_SIZE = within(480, 16 << 20)

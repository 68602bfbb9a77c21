"""Sinks: deliver the rendered payloads of a sink's DiskQueue (see base.py for the loop).

``make_sink(cfg, queue)`` builds the sink for ``cfg.type`` from :data:`SINK_REGISTRY`.
Later sink types register themselves with :func:`register` (e.g. ``"xsoar"``,
``"xsoar_webhook"``): a factory ``(cfg, queue, **kw) -> Sink``.
"""
from __future__ import annotations

import importlib
from typing import Callable

from .base import (AuthError, PermanentError, RetryableError, Sink, SinkError,
                   UnavailableError)
from .file import FileSink
from .syslog import SyslogStreamSink, SyslogUdpSink

__all__ = ["make_sink", "register", "SINK_REGISTRY", "Sink", "SinkError", "RetryableError",
           "UnavailableError", "PermanentError", "AuthError", "FileSink", "SyslogStreamSink",
           "SyslogUdpSink"]


def _syslog(cfg, queue, **kw) -> Sink:
    if cfg.protocol == "udp":
        return SyslogUdpSink(cfg, queue, **kw)
    return SyslogStreamSink(cfg, queue, **kw)


SINK_REGISTRY: dict[str, Callable[..., Sink]] = {
    "syslog": _syslog,
    "file": FileSink,
}


#: sink types whose module registers itself when imported (imported on first use, so a
#: missing optional dependency only matters to configs that use the type)
_LAZY = {"xsoar": ".xsoar", "xsoar_webhook": ".xsoar"}


def register(type_name: str, factory: Callable[..., Sink]) -> None:
    SINK_REGISTRY[type_name] = factory


def make_sink(cfg, queue, **kw) -> Sink:
    """The sink for ``cfg.type``; ``kw`` goes to :class:`Sink` (registry, drain_timeout,
    auth_recheck, ...)."""
    if cfg.type not in SINK_REGISTRY and cfg.type in _LAZY:
        importlib.import_module(_LAZY[cfg.type], __name__)
    try:
        factory = SINK_REGISTRY[cfg.type]
    except KeyError:
        raise ValueError(f"sink {cfg.name}: unknown type {cfg.type!r} "
                         f"(known: {', '.join(sorted(SINK_REGISTRY))})") from None
    return factory(cfg, queue, **kw)


from . import xsoar as _xsoar  # noqa: E402,F401 - registers "xsoar", "xsoar_webhook"

__all__ += ["_xsoar"] if "__all__" in dir() else []

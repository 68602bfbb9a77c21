"""Sinks: deliver the rendered payloads of a sink's DiskQueue (see base.py for the loop).

Each sink type is one module here that declares its kind (relay/kinds.py: type, config keys
and reader, factory, renderer, queue metadata).  ``make_sink(cfg, queue)`` builds the sink of
``cfg.type`` through its kind.
"""
from __future__ import annotations

from .base import (AuthError, PermanentError, RetryableError, Sink, SinkError,
                   UnavailableError)

__all__ = ["make_sink", "Sink", "SinkError", "RetryableError", "UnavailableError", "PermanentError", "AuthError"]


def make_sink(cfg, queue, **kw) -> Sink:
    """The sink for ``cfg.type``; ``kw`` goes to :class:`Sink` (registry, drain_timeout,
    auth_recheck, ...)."""
    from .. import kinds
    try:
        kind = kinds.sink(cfg.type)
    except kinds.UnknownKind as e:
        raise ValueError(f"sink {cfg.name}: {e}") from None
    return kind.factory(cfg, queue, **kw)

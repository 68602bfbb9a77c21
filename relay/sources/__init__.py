"""Network sources: UDP, TCP and TLS (RFC 5425) syslog receivers.

Every source is one module that declares its kind (relay/kinds.py: type, config keys and
reader, factory).  A source hands what it receives to its *ingest* (the pipeline, or the
ingest workers in front of it): raw messages in batches::

    fut = ingest.handle(items, source_cfg, received)   # items: [(message bytes, "ip:port"), ...]

or, for messages that all come from one peer (a TCP read), ``relay.pipeline.OneSender(peer,
frames)``: the peer once instead of a pair per message (it counts, slices and iterates as the
pairs; the native stage and the workers' hand-over take it as it is)

or events it has already normalised (the pull sources)::

    n = await ingest.submit(events, source_cfg)        # returns once they are durably queued

``handle`` returns None, or a future that completes once the messages are durably
queued.  TCP/TLS connections stop reading until that future completes (durability
and backpressure); UDP cannot wait, and drops new datagrams (reason ``backlog``)
while ``pipeline.backlog() > pipeline.max_backlog``.

Use :func:`make_source` to build the source of a :class:`relay.config.SourceConfig`.
Every source has ``await start()`` (binds; raises :class:`OSError` with a clear
message), ``await stop(drain_timeout)`` and ``bound_address`` (host, port) once started.

Peers are written ``"ip:port"`` for IPv4 and IPv6 alike (``"::1:5140"``): split with
``rpartition(":")``.

Metrics (``relay.metrics.REGISTRY``): ``relay_received_total{source}``,
``relay_dropped_total{source,reason}``, ``relay_connections{source}`` (TCP/TLS),
``relay_udp_kernel_drops_total{source}`` and ``relay_udp_receive_buffer_bytes{source}`` (UDP).
"""
from __future__ import annotations

from .base import BATCH, LogLimiter, Source, bind_error, read_listener

__all__ = ["Source", "UdpSource", "TcpSource", "TlsSource", "make_source", "LogLimiter", "bind_error",
           "read_listener", "BATCH"]


def make_source(cfg, pipeline, registry=None) -> Source:
    """The source for ``cfg.type``, built by its kind (relay/kinds.py)."""
    from .. import kinds
    try:
        kind = kinds.source(cfg.type)
    except kinds.UnknownKind as e:
        raise ValueError(f"source {cfg.name!r}: {e}") from None
    return kind.factory(cfg, pipeline, registry)


from .tcp import TcpSource, TlsSource  # noqa: E402
from .udp import UdpSource  # noqa: E402

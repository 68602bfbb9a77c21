"""``nats`` sink: the ingest tier's hand-over to the delivery tier, a JetStream stream.

Each queued row is one bus envelope (formats/bus.py: the canonical event, its syslog header,
raw bytes, enrichment and the ingest routes).  It is published to ``<subject>.<partition>``,
partition = blake2b(dedup_key) mod ``partitions`` (every event of one dedup key lands in one
partition, so one delivery consumer sees them in order), with the header ``Nats-Msg-Id`` = the
event id (blake2b of the raw bytes): JetStream stores a message id once within the stream's
``duplicate_window``, so the same event sent through two ingest relays, or published again
after a timeout whose PubAck was lost, is stored once.

A row is acknowledged in the local queue only after JetStream's PubAck (the stream's leader
and a quorum of its replicas have it); a PubAck that says ``duplicate`` counts as delivered
(``relay_nats_duplicates_total``).  Timeouts, no responders, "JetStream temporarily
unavailable" (a leader election) and a lost connection release the rows unharmed (no attempt
counted) and the sink retries after a short pause; nats-py reconnects to the next server by
itself.  A message over the server's ``max_payload`` is dead-lettered.

The stream is created when missing (``replicas``, ``max_age``, ``duplicate_window``,
``max_bytes``, retention by limits, discard old); an existing stream is used as it is.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Sequence

import orjson

from .. import kinds
from ..natsbus import BUS_KEYS, connect, ensure_stream, read_settings
from .base import PermanentError, Sink, UnavailableError

__all__ = ["NatsSink"]

log = logging.getLogger("relay.sinks.nats")


class NatsSink(Sink):
    type = "nats"
    max_inflight = 4

    def __init__(self, cfg, queue, **kw) -> None:
        super().__init__(cfg, queue, **kw)
        self.st = cfg.options["nats"]
        x = self.st.extra
        self.publish_timeout = x["publish_timeout"]
        self._nc = None
        self._js = None
        self._lock = asyncio.Lock()
        self._stream_ok = False
        self.m_dups = self.registry.counter("relay_nats_duplicates_total", sink=self.name)
        self.registry.gauge("relay_nats_connected", lambda: 1 if self._nc is not None and self._nc.is_connected
                            else 0, sink=self.name)

    async def _client(self):
        if self._js is not None and not self._nc.is_closed:
            return self._js
        async with self._lock:
            if self._js is not None and not self._nc.is_closed:
                return self._js
            try:
                nc = await connect(self.st, f"relay sink {self.name}",
                                   error_cb=self._on_error, disconnected_cb=self._on_disc,
                                   reconnected_cb=self._on_reconn)
            except Exception as e:
                raise UnavailableError(f"cannot connect to NATS {', '.join(self.st.servers)}: "
                                       f"{type(e).__name__}: {e}", 2.0, reason="connect") from None
            self._nc, self._js = nc, nc.jetstream(timeout=self.publish_timeout)
            log.info("sink %s: connected to NATS %s", self.name, nc.connected_url.netloc if nc.connected_url else "?")
            return self._js

    async def _ensure_stream(self, js) -> None:
        x = self.st.extra
        try:
            await ensure_stream(js, self.st, replicas=x["replicas"], max_age=x["max_age"],
                                duplicate_window=x["duplicate_window"], max_bytes=x["max_bytes"])
        except ValueError as e:
            raise PermanentError(str(e), reason="stream") from None
        except Exception as e:
            raise UnavailableError(f"stream {self.st.stream}: {type(e).__name__}: {e}", 1.0,
                                   reason="stream") from None
        self._stream_ok = True

    async def _on_error(self, e) -> None:
        log.debug("sink %s: NATS error: %s", self.name, e)

    async def _on_disc(self) -> None:
        log.warning("sink %s: disconnected from NATS; reconnecting", self.name)

    async def _on_reconn(self) -> None:
        log.info("sink %s: reconnected to NATS %s", self.name,
                 self._nc.connected_url.netloc if self._nc and self._nc.connected_url else "?")

    async def send(self, items: Sequence):
        from nats.errors import MaxPayloadError
        js = await self._client()
        if not self._stream_ok:
            await self._ensure_stream(js)
        subject = self.st.subject
        stream = self.st.stream
        pubs = []
        bad = []
        for it in items:
            try:
                d = orjson.loads(it.payload)
                pubs.append((it, js.publish(f"{subject}.{d['p']}", it.payload, timeout=self.publish_timeout,
                                            stream=stream, headers={"Nats-Msg-Id": d["id"]})))
            except (orjson.JSONDecodeError, KeyError, TypeError) as e:
                bad.append((it, PermanentError(f"not a bus envelope: {e}", reason="payload")))
        res = await asyncio.gather(*(p for _, p in pubs), return_exceptions=True)
        failed = list(bad)
        transient = None
        for (it, _), r in zip(pubs, res):
            if isinstance(r, BaseException):
                if isinstance(r, asyncio.CancelledError):
                    raise r
                if isinstance(r, MaxPayloadError) or getattr(r, "err_code", None) == 10054:
                    failed.append((it, PermanentError(f"too large for NATS: {r}", reason="too_large")))
                    continue
                if getattr(r, "err_code", None) == 10060 or "no response from stream" in str(r):
                    self._stream_ok = False       # deleted meanwhile? check it again
                if transient is None:
                    transient = UnavailableError(f"JetStream publish: {type(r).__name__}: {r}", 0.5,
                                                 reason=_reason(r))
                failed.append((it, transient))
            elif r.duplicate:
                self.m_dups.value += 1
        return failed

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            try:
                await asyncio.wait_for(nc.drain(), 5)
            except Exception:
                try:
                    await nc.close()
                except Exception:
                    pass


def _reason(e) -> str:
    n = type(e).__name__
    if "Timeout" in n:
        return "timeout"
    if "NoStreamResponse" in n or "NoResponders" in n:
        return "no_responders"
    if "ServiceUnavailable" in n:
        return "unavailable"
    if "Connection" in n or "Closed" in n or "Disconnect" in n:
        return "connection"
    return "publish"


# --------------------------------------------------------------------------- kind

def read_config(t, sk, base_dir) -> None:
    from ..checks import non_negative, positive
    st = read_settings(t, base_dir)
    st.extra = {
        "replicas": t.get("replicas", int, 3, check=lambda v: None if 1 <= v <= 5 else
                          (_ for _ in ()).throw(ValueError(f"must be 1..5, not {v}"))),
        "max_age": t.get("max_age", float, 7 * 86400.0, check=positive),
        "duplicate_window": t.get("duplicate_window", float, 120.0, check=positive),
        "max_bytes": t.get("max_bytes", int, 0, check=non_negative) or None,
        "publish_timeout": t.get("publish_timeout", float, 5.0, check=positive),
    }
    if st.extra["duplicate_window"] > st.extra["max_age"]:
        raise t.err("duplicate_window", "must not be longer than max_age")
    sk.options["nats"] = st
    sk.format = "json"


def renderer(sk):
    from formats.bus import encode
    p = sk.options["nats"].partitions

    def render(ev, routes=None) -> bytes:
        return encode(ev, routes, p)
    return render


def _preview():
    from formats.bus import encode
    return lambda ev: encode(ev, (), 8)


KIND = kinds.register_sink(kinds.SinkKind(
    type="nats", read_config=read_config, factory=NatsSink, renderer=renderer,
    keys=BUS_KEYS + ("replicas", "max_age", "duplicate_window", "max_bytes", "publish_timeout"),
    structured=True, batch_size=500, preview=_preview,
    doc="publishes each event (the bus envelope) to a NATS JetStream stream, partitioned by dedup key"))

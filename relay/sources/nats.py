"""``nats`` source: the delivery tier's side of the relay bus (a JetStream stream).

One durable pull consumer per partition (``<durable>-<p>``, filter ``<subject>.<p>``), created
when missing (explicit acks, ``ack_wait``, unlimited redeliveries, ``max_ack_pending``).  Every
delivery relay with the same ``durable`` pulls from the same consumers, so N relays share the
work, and a relay that dies leaves its unacknowledged messages to the others after ``ack_wait``.

Per fetched batch: decode the envelopes (parsers/bus.py) back into events, hand them to the
one pipeline (``Pipeline.submit``: enriched, routed, rendered and *committed* to every matched
local sink's queue), and only then acknowledge them to JetStream.  A relay killed at any point
loses nothing: what it had not acknowledged is delivered again (a duplicate at the
destinations, inside ``ack_wait``; the XSOAR and ticket sinks' claims and dedup keys absorb
it).  When a local sink's queue is full the batch waits (``in_progress`` keeps JetStream from
redelivering it meanwhile).  A message that is not a bus envelope is terminated (never
redelivered) and counted in ``relay_dropped_total{reason=bus_json|bus_version|bus_shape}``.
"""
from __future__ import annotations

import asyncio
import logging
import time

from parsers.bus import BusError, decode

from .. import kinds
from ..natsbus import BUS_KEYS, connect, read_settings
from .base import Source

__all__ = ["NatsSource"]

log = logging.getLogger("relay.sources.nats")


class NatsSource(Source):
    def __init__(self, cfg, pipeline, registry=None) -> None:
        super().__init__(cfg, pipeline, registry)
        self.st = cfg.options["nats"]
        self.x = self.st.extra
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._nc = None
        self.connected = False
        self.m_acked = self.registry.counter("relay_nats_acked_total", source=cfg.name)
        self.m_redelivered = self.registry.counter("relay_nats_redelivered_total", source=cfg.name)
        self.registry.gauge("relay_nats_connected", lambda: 1 if self._nc is not None and self._nc.is_connected
                            else 0, source=cfg.name)

    def __repr__(self) -> str:
        return f"<NatsSource {self.cfg.name!r} {self.st.stream}>"

    async def start(self) -> None:
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name=f"source-{self.cfg.name}")
        log.info("source %r: pulling stream %s (durable %s, %d partitions) from %s", self.cfg.name,
                 self.st.stream, self.x["durable"], self.st.partitions, ", ".join(self.st.servers))

    async def stop(self, drain_timeout: float = 10.0) -> None:
        self._stop.set()
        t, self._task = self._task, None
        if t is not None:
            try:
                await asyncio.wait_for(t, max(0.5, drain_timeout))
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass
            except Exception:
                log.exception("source %r: stopped with an error", self.cfg.name)
        await self._close()

    async def _close(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None:
            try:
                await asyncio.wait_for(nc.drain(), 3)
            except Exception:
                try:
                    await nc.close()
                except Exception:
                    pass

    async def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                await self._session()
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.limiter.warning((self.cfg.name, "session"), "source %r: NATS: %s: %s; again in %.1f s",
                                     self.cfg.name, type(e).__name__, e, delay)
                await self._close()
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                except asyncio.TimeoutError:
                    pass
                delay = min(delay * 2, 10.0)

    async def _session(self) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        from nats.js.errors import NotFoundError
        if self._nc is None or self._nc.is_closed:
            self._nc = await connect(self.st, f"relay source {self.cfg.name}")
        js = self._nc.jetstream(timeout=10)
        st, x = self.st, self.x
        try:
            await js.stream_info(st.stream)
        except NotFoundError:
            raise RuntimeError(f"stream {st.stream} does not exist yet (the ingest tier's nats sink creates "
                               f"it)") from None
        subs = []
        for p in range(st.partitions):
            cc = ConsumerConfig(durable_name=f"{x['durable']}-{p}", ack_policy=AckPolicy.EXPLICIT,
                                deliver_policy=DeliverPolicy.ALL, ack_wait=x["ack_wait"], max_deliver=-1,
                                max_ack_pending=x["max_ack_pending"], filter_subject=f"{st.subject}.{p}")
            subs.append(await js.pull_subscribe(f"{st.subject}.{p}", durable=cc.durable_name,
                                                stream=st.stream, config=cc))
        self.connected = True
        tasks = [asyncio.create_task(self._pull(p, s)) for p, s in enumerate(subs)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.connected = False

    async def _pull(self, p: int, sub) -> None:
        from nats.errors import TimeoutError as NatsTimeout
        batch = self.x["batch"]
        fails = 0
        while not self._stop.is_set():
            try:
                msgs = await sub.fetch(batch, timeout=1.0)
            except (NatsTimeout, asyncio.TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as e:
                fails += 1
                self.limiter.warning((self.cfg.name, "fetch"), "source %r: fetch from partition %d: %s: %s",
                                     self.cfg.name, p, type(e).__name__, e)
                if fails > 20 and self._nc is not None and self._nc.is_closed:
                    raise
                await asyncio.sleep(min(2.0, 0.1 * fails))
                continue
            fails = 0
            if msgs:
                await self._handle(msgs)

    async def _handle(self, msgs) -> None:
        from ..pipeline import Backpressure
        events, good = [], []
        now = time.time()
        for m in msgs:
            try:
                ev, _ = decode(m.data)
            except BusError as e:
                self.dropped(e.reason)
                self.limiter.warning((self.cfg.name, e.reason), "source %r: not a relay bus message on %s "
                                     "(terminated, never redelivered): %s", self.cfg.name, m.subject, e)
                await _quiet(m.term())
                continue
            if ev.received is None:
                ev.received = now
            if m.metadata.num_delivered > 1:
                self.m_redelivered.value += 1
            events.append(ev)
            good.append(m)
        self._received.value += len(msgs)
        if events:
            waited = 0.0
            while True:
                try:
                    await self.pipeline.submit(events, self.cfg, refuse_when_full=True)
                    break
                except Backpressure as e:
                    # a local queue is full: hold the batch (JetStream must not hand it to
                    # another relay meanwhile: ours is not lost, only late)
                    if waited == 0.0 or waited >= self.x["ack_wait"] / 3:
                        self.limiter.warning((self.cfg.name, "backpressure"), "source %r: waiting: %s",
                                             self.cfg.name, e)
                        await asyncio.gather(*(_quiet(m.in_progress()) for m in good))
                        waited = 0.0
                    await asyncio.sleep(0.5)
                    waited += 0.5
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    self.limiter.log(logging.ERROR, (self.cfg.name, "pipeline"), "source %r: queueing %d events "
                                     "failed, JetStream will deliver them again: %s: %s", self.cfg.name,
                                     len(events), type(e).__name__, e)
                    await asyncio.gather(*(_quiet(m.nak(delay=2)) for m in good))
                    return
        # durable in every matched local queue: now JetStream may forget them
        for m in good:
            await m.ack()
        self.m_acked.value += len(good)


async def _quiet(coro) -> None:
    try:
        await coro
    except Exception:
        pass


# --------------------------------------------------------------------------- kind

def read_config(t, sc, base_dir) -> None:
    from ..checks import positive
    from ..natsbus import _token
    st = read_settings(t, base_dir)
    st.extra = {
        "durable": t.get("durable", str, required=True, check=_token),
        "batch": t.get("batch", int, 256, check=lambda v: None if 1 <= v <= 10000 else
                       (_ for _ in ()).throw(ValueError(f"must be 1..10000, not {v}"))),
        "ack_wait": t.get("ack_wait", float, 60.0, check=positive),
        "max_ack_pending": t.get("max_ack_pending", int, 4096, check=positive),
    }
    sc.options["nats"] = st


KIND = kinds.register_source(kinds.SourceKind(
    type="nats", read_config=read_config, factory=NatsSource,
    keys=BUS_KEYS + ("durable", "batch", "ack_wait", "max_ack_pending"),
    doc="pulls relay bus events from a NATS JetStream stream (durable consumers, one per partition); "
        "acks after the events are queued locally"))

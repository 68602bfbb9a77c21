"""Sinks: delivery loop, file sink, syslog TCP/TLS/UDP with real sockets on 127.0.0.1.

Every network test runs under ``asyncio.wait_for`` with a hard timeout and only talks to
loopback.  Receivers parse frames strictly (no leniency) so framing bugs show up.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import struct
import time
from pathlib import Path

import pytest

from formats.syslog import frame, frame_batch, frame_lf, frame_octet
from relay.config import SinkConfig
from relay.metrics import Registry
from relay.queue import DiskQueue, payloads_of
from relay import kinds
from relay.sinks import AuthError, PermanentError, Sink, make_sink
from relay.sinks.file import FileSink
from relay.sinks.syslog import SyslogStreamSink, SyslogUdpSink
from tests.harness import free_port, make_queue, run_async, run_sinks

HOST = "127.0.0.1"
HARD_TIMEOUT = 60.0


# --------------------------------------------------------------------------- helpers
def payloads(n: int, size: int = 180, tag: str = "m") -> list[bytes]:
    out = []
    for i in range(n):
        head = b"<134>1 2026-01-01T00:00:00.000Z host app - - - LEEF:2.0|V|P|1|E|id=%s%07d" % (
            tag.encode(), i)
        out.append(head + b"^x=" + b"a" * max(0, size - len(head) - 3))
    return out


def fill(q: DiskQueue, items: list[bytes]) -> None:
    for i in range(0, len(items), 1000):
        q.put_many([(p, None) for p in items[i:i + 1000]])


def syslog_cfg(name: str, port: int, protocol: str = "tcp", framing: str | None = "lf",
               batch_size: int = 100, **options) -> SinkConfig:
    opts = {"reconnect_min": 0.05, "reconnect_max": 0.5}
    opts.update(options)
    return SinkConfig(name=name, type="syslog", address=(HOST, port), protocol=protocol,
                      framing=framing, batch_size=batch_size, connect_timeout=2.0,
                      options=opts)


def run(coro, timeout: float = HARD_TIMEOUT):
    return run_async(coro, timeout)


def parse_frames(buf: bytes, framing: str) -> tuple[list[bytes], bytes]:
    """Strict parser: complete frames and the unparsed rest."""
    out = []
    if framing == "lf":
        end = buf.rfind(b"\n")
        if end < 0:
            return out, buf
        out = buf[:end].split(b"\n")
        return out, buf[end + 1:]
    pos = 0
    while True:
        sp = buf.find(b" ", pos, pos + 12)
        if sp < 0:
            break
        digits = buf[pos:sp]
        assert digits.isdigit() and not digits.startswith(b"0"), buf[pos:pos + 40]
        n = int(digits)
        if len(buf) < sp + 1 + n:
            break
        out.append(buf[sp + 1:sp + 1 + n])
        pos = sp + 1 + n
    return out, buf[pos:]


class Receiver:
    """A syslog receiver (asyncio server) that records every complete frame.

    ``fail_first``: "close" (the first connection is closed abruptly after reading
    ``fail_after`` bytes and stalling ``stall_before_fail`` seconds; unread data makes the
    kernel send RST) or "rst" (SO_LINGER 0, RST),
    or "eof" (the first connection is closed cleanly after ``fail_after`` bytes were read
    and no more arrived for 0.3 s)."""

    def __init__(self, framing: str = "lf", ssl_ctx: ssl.SSLContext | None = None,
                 port: int = 0, fail_first: str | None = None, fail_after: int = 0,
                 read_size: int = 65536, stall_before_fail: float = 0.0) -> None:
        self.stall_before_fail = stall_before_fail
        self.framing, self.ssl_ctx, self.port = framing, ssl_ctx, port
        self.fail_first, self.fail_after, self.read_size = fail_first, fail_after, read_size
        self.messages: list[bytes] = []
        self.per_conn: list[int] = []
        self.conns = 0
        self.server = None

    async def start(self) -> "Receiver":
        self.server = await asyncio.start_server(self._handle, HOST, self.port, ssl=self.ssl_ctx)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.conns += 1
        first = self.conns == 1
        self.per_conn.append(0)
        idx = len(self.per_conn) - 1
        buf = b""
        total = 0
        try:
            while True:
                if first and self.fail_first == "eof" and total >= self.fail_after:
                    try:
                        data = await asyncio.wait_for(reader.read(self.read_size), 0.3)
                    except asyncio.TimeoutError:
                        return  # clean close: FIN
                else:
                    data = await reader.read(self.read_size)
                if not data:
                    return
                total += len(data)
                msgs, buf = parse_frames(buf + data, self.framing)
                self.messages.extend(msgs)
                self.per_conn[idx] += len(msgs)
                if first and self.fail_first in ("close", "rst") and total >= self.fail_after:
                    # stop reading for a while (data piles up, acked by our TCP), then die
                    await asyncio.sleep(self.stall_before_fail)
                    sock = writer.get_extra_info("socket")
                    if self.fail_first == "rst":
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
        except (ConnectionError, OSError, ssl.SSLError):
            return
        finally:
            writer.close()


def check_all_once(received: list[bytes], sent: list[bytes]) -> None:
    assert len(received) == len(sent), (len(received), len(sent))
    assert received == sent  # once each and in order


# --------------------------------------------------------------------------- framing
def test_frame_rules():
    data, changed = frame_batch([b"<13>1 a", b"<13>1 b\nc", b"<13>1 d\r\n"], "lf")
    assert data == b"<13>1 a\n<13>1 b c\n<13>1 d\n"
    assert changed == 2
    data, changed = frame_batch([b"<13>1 a", b"x\ny \xc3\xa9"], "octet")
    assert data == b"7 <13>1 a6 x\ny \xc3\xa9" and changed == 0
    assert frame_lf(b"a\rb\nc\n") == (b"a b c\n", True)
    with pytest.raises(ValueError):
        frame_batch([b"x"], "nul")
    # the one-message forms are the same rule (formats.syslog is the one output framer)
    msgs = [b"<13>1 a", b"<13>1 b\nc", b"<13>1 d\r\n", b"e\r", b"\n", b"", b"f\r\r\n"]
    for framing in ("lf", "octet"):
        data, changed = frame_batch(msgs, framing)
        assert data == b"".join(frame(m, framing) for m in msgs)
        assert changed == (sum(frame_lf(m)[1] for m in msgs) if framing == "lf" else 0)
    assert b"".join(map(frame_octet, msgs)) == frame_batch(msgs, "octet")[0]
    with pytest.raises(ValueError):
        frame(b"x", "nul")
    import relay.sinks.syslog as sink_mod
    assert not {"frame_batch", "frame_lf", "frame_octet"} & set(sink_mod.__all__)


def test_make_sink_registry(tmp_path):
    q = make_queue(tmp_path / "q.db")
    reg = Registry()
    assert isinstance(make_sink(syslog_cfg("a", 1), q, registry=reg), SyslogStreamSink)
    assert isinstance(make_sink(syslog_cfg("b", 1, protocol="udp", framing=None), q,
                                registry=reg), SyslogUdpSink)
    fs = make_sink(SinkConfig(name="f", type="file", path=tmp_path / "o.log"), q, registry=reg)
    assert isinstance(fs, FileSink)
    with pytest.raises(ValueError, match="unknown sink type 'nope'"):
        make_sink(SinkConfig(name="x", type="nope"), q, registry=reg)
    kind = kinds.register_sink(kinds.SinkKind(type="dummy", read_config=lambda t, sk, base: None,
                                              factory=lambda cfg, queue, **kw: FileSink(cfg, queue, **kw),
                                              renderer=lambda sk: (lambda ev, routes: b"")))
    try:
        assert kinds.sink("dummy") is kind
        assert isinstance(make_sink(SinkConfig(name="d", type="dummy", path=tmp_path / "d"),
                                    q, registry=reg), FileSink)
    finally:
        kinds._SINKS.pop("dummy")
    q.close()


# --------------------------------------------------------------------------- file sink
def test_file_sink_every_payload_once_in_order(tmp_path):
    q = make_queue(tmp_path / "q.db")
    items = payloads(2500)
    items[7] = b"<13>1 embedded\nnewline\r\n"
    fill(q, items)
    out = tmp_path / "deep" / "dir" / "out.log"
    reg = Registry()
    sink = FileSink(SinkConfig(name="file", type="file", path=out, batch_size=300), q,
                    registry=reg)

    async def main():
        return await run_sinks([sink], lambda: q.depth() == 0)

    assert run(main())
    lines = out.read_bytes().split(b"\n")
    assert lines[-1] == b""
    expected = list(items)
    expected[7] = b"<13>1 embedded newline"
    assert lines[:-1] == expected
    assert reg.value("relay_sent_total", sink="file") == 2500
    assert reg.value("relay_sanitised_total", sink="file") == 1
    assert reg.value("relay_queue_depth", sink="file") == 0
    assert reg.value("relay_sink_up", sink="file") == 1
    q.close()


def test_file_sink_reopens_after_rotation(tmp_path):
    q = make_queue(tmp_path / "q.db")
    out = tmp_path / "out.log"
    sink = FileSink(SinkConfig(name="file", type="file", path=out, batch_size=50), q,
                    registry=Registry())
    first, second, third = payloads(200, tag="a"), payloads(200, tag="b"), payloads(10, tag="c")

    async def main():
        stop = asyncio.Event()
        task = asyncio.create_task(sink.run(stop))
        fill(q, first)
        sink.notify()
        while q.depth():
            await asyncio.sleep(0.01)
        os.rename(out, tmp_path / "out.log.1")          # logrotate "create" style
        fill(q, second)
        sink.notify()
        while q.depth():
            await asyncio.sleep(0.01)
        os.unlink(out)                                  # removed
        fill(q, third)
        sink.notify()
        while q.depth():
            await asyncio.sleep(0.01)
        stop.set()
        await task

    run(main(), 30)
    assert (tmp_path / "out.log.1").read_bytes().split(b"\n")[:-1] == first
    assert out.read_bytes().split(b"\n")[:-1] == third
    assert sink.reopens == 2
    # the second group went to the file that was then removed: written once, in order
    assert sink.stats["sent"] == 410
    q.close()


# --------------------------------------------------------------------------- TCP
@pytest.mark.parametrize("framing", ["lf", "octet"])
def test_tcp_delivers_everything_once(tmp_path, framing):
    q = make_queue(tmp_path / "q.db")
    items = payloads(3000)
    items[5] = b"<13>1 2026-01-01T00:00:00Z h a - - - two\nlines"
    fill(q, items)
    reg = Registry()

    async def main():
        rx = await Receiver(framing).start()
        sink = SyslogStreamSink(syslog_cfg("qr", rx.port, framing=framing, batch_size=200,
                                           settle_delay=0.05), q, registry=reg)
        ok = await run_sinks([sink], lambda: q.depth() == 0 and len(rx.messages) >= 3000)
        await asyncio.sleep(0.1)
        await rx.stop()
        return ok, rx, sink

    ok, rx, sink = run(main())
    assert ok
    expected = list(items)
    if framing == "lf":
        expected[5] = b"<13>1 2026-01-01T00:00:00Z h a - - - two lines"
    check_all_once(rx.messages, expected)
    assert reg.value("relay_sent_total", sink="qr") == 3000
    assert reg.value("relay_sanitised_total", sink="qr") == (1 if framing == "lf" else 0)
    assert sink.connects == 1
    assert q.depth() == 0 and q.inflight() == 0
    q.close()


def test_tcp_receiver_down_at_start_then_up(tmp_path):
    q = make_queue(tmp_path / "q.db")
    items = payloads(1000)
    fill(q, items)
    reg = Registry()
    port = free_port()

    async def main():
        sink = SyslogStreamSink(syslog_cfg("qr", port, settle_delay=0.05), q, registry=reg)
        stop = asyncio.Event()
        task = asyncio.create_task(sink.run(stop))
        await asyncio.sleep(1.0)
        errors_while_down = reg.total("relay_send_errors_total", sink="qr")
        depth_while_down = q.depth()
        rx = await Receiver(port=port).start()
        t0 = time.monotonic()
        while (q.depth() or len(rx.messages) < 1000) and time.monotonic() - t0 < 20:
            await asyncio.sleep(0.02)
        took = time.monotonic() - t0
        stop.set()
        await asyncio.wait_for(task, 15)
        await rx.stop()
        return rx, sink, errors_while_down, depth_while_down, took

    rx, sink, errors_down, depth_down, took = run(main())
    assert errors_down >= 2                   # several reconnect attempts, counted
    assert reg.value("relay_send_errors_total", sink="qr", reason="connect") >= 2
    assert depth_down == 1000                 # nothing lost or dead-lettered while down
    assert reg.value("relay_sink_up", sink="qr") == 1
    check_all_once(rx.messages, items)
    assert q.dlq_depth() == 0
    assert took < 5, took                     # reconnect backoff is capped at 0.5 s here
    q.close()


@pytest.mark.parametrize("mode", ["close", "rst"])
def test_tcp_abrupt_close_mid_stream_no_loss(tmp_path, mode, capsys):
    """The receiver reads ~1 MB, stops reading for 0.3 s, then dies (close with unread data / RST via SO_LINGER 0) in
    the middle of a ~6 MB stream; it keeps listening.  Every payload must arrive at least
    once; duplicates only from rows given back after the break."""
    q = make_queue(tmp_path / "q.db")
    n = 30000
    items = payloads(n, size=200)
    fill(q, items)
    reg = Registry()

    async def main():
        rx = await Receiver("octet", fail_first=mode, fail_after=1_000_000,
                            read_size=16384, stall_before_fail=0.3).start()
        sink = SyslogStreamSink(syslog_cfg("qr", rx.port, framing="octet", batch_size=500),
                                q, registry=reg)
        ok = await run_sinks([sink], lambda: q.depth() == 0, timeout=40)
        await rx.stop()
        return ok, rx, sink

    ok, rx, sink = run(main())
    assert ok, q.depth()
    got = set(rx.messages)
    missing = [p for p in items if p not in got]
    assert not missing, f"{len(missing)} payloads lost"
    dups = len(rx.messages) - len(got)
    assert len(got) == n
    assert rx.conns >= 2
    assert reg.value("relay_send_errors_total", sink="qr", reason="connection_lost") >= 1
    assert sink.stats["released"] > 0
    assert dups <= sink.stats["released"]     # duplicates only from rows in flight
    assert q.dlq_depth() == 0
    with capsys.disabled():
        print(f"\n[{mode}] first connection got {rx.per_conn[0]} frames; "
              f"released after the break: {sink.stats['released']}; duplicates: {dups}")
    q.close()


def test_tcp_naive_ack_on_tcp_ack_would_lose(tmp_path, capsys):
    """Demonstrates why batches settle later than the peer's TCP ack: with settle_delay=0
    and settle_bytes=0 (ack as soon as SIOCOUTQ says the peer's kernel has the bytes) a
    receiver that dies with unread data loses events.  (Guards the test above: it can fail.)"""
    q = make_queue(tmp_path / "q.db")
    n = 30000
    items = payloads(n, size=200)
    fill(q, items)

    async def main():
        rx = await Receiver("octet", fail_first="close", fail_after=1_000_000,
                            read_size=16384, stall_before_fail=0.3).start()
        sink = SyslogStreamSink(syslog_cfg("qr", rx.port, framing="octet", batch_size=500,
                                           settle_delay=0.0, settle_bytes=0),
                                q, registry=Registry())
        ok = await run_sinks([sink], lambda: q.depth() == 0, timeout=40)
        await rx.stop()
        return ok, rx

    ok, rx = run(main())
    assert ok
    lost = n - len(set(rx.messages))
    with capsys.disabled():
        print(f"\n[naive] lost {lost} of {n}")
    assert lost > 0
    q.close()


def test_tcp_peer_eof_detected_and_reconnected(tmp_path):
    q = make_queue(tmp_path / "q.db")
    first, second = payloads(300, tag="a"), payloads(300, tag="b")
    fill(q, first)
    reg = Registry()

    async def main():
        rx = await Receiver(fail_first="eof", fail_after=1).start()
        sink = SyslogStreamSink(syslog_cfg("qr", rx.port, settle_delay=0.05), q,
                                registry=reg)
        stop = asyncio.Event()
        task = asyncio.create_task(sink.run(stop))
        t0 = time.monotonic()
        while (q.depth() or len(rx.messages) < 300) and time.monotonic() - t0 < 10:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.6)  # the receiver closes the idle connection (FIN)
        lost_before = reg.value("relay_send_errors_total", sink="qr", reason="connection_lost")
        fill(q, second)
        sink.notify()
        t0 = time.monotonic()
        while (q.depth() or len(rx.messages) < 600) and time.monotonic() - t0 < 10:
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(task, 15)
        await rx.stop()
        return rx, sink, lost_before

    rx, sink, lost_before = run(main())
    assert lost_before == 0  # the EOF was noticed by the reader, not by a failed batch
    check_all_once(rx.messages, first + second)
    assert sink.connects == 2 and rx.conns == 2
    q.close()


def test_graceful_stop_releases_unsettled(tmp_path):
    """A receiver that accepts but never reads: stop returns within the drain timeout and
    every row is still queued (nothing acked that the peer did not take)."""
    q = make_queue(tmp_path / "q.db")
    fill(q, payloads(20000, size=300))
    accepted = []

    async def main():
        done = asyncio.Event()

        async def handle(reader, writer):
            accepted.append(writer)
            await done.wait()  # never reads

        srv = await asyncio.start_server(handle, HOST, 0)
        srv.sockets[0].setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        port = srv.sockets[0].getsockname()[1]
        sink = SyslogStreamSink(syslog_cfg("qr", port, settle_delay=30.0), q,
                                registry=Registry(), drain_timeout=0.5)
        stop = asyncio.Event()
        task = asyncio.create_task(sink.run(stop))
        await asyncio.sleep(1.0)
        t0 = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, 10)
        took = time.monotonic() - t0
        for w in accepted:
            w.transport.abort()
        done.set()
        srv.close()
        await srv.wait_closed()
        return took, sink

    took, sink = run(main())
    assert took < 3
    assert q.inflight() == 0
    assert q.depth() == 20000
    assert sink.stats["sent"] == 0
    q.close()


# --------------------------------------------------------------------------- UDP
def test_udp_delivery_and_oversize_dead_letter(tmp_path):
    q = make_queue(tmp_path / "q.db")
    items = payloads(300)
    big = b"<13>1 - - - - - " + b"x" * 70000
    fill(q, items[:100] + [big] + items[100:])
    reg = Registry()
    got: list[bytes] = []

    async def main():
        loop = asyncio.get_running_loop()
        rs = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        rs.bind((HOST, 0))
        rs.setblocking(False)
        port = rs.getsockname()[1]

        async def recv():
            while True:
                got.append(await loop.sock_recv(rs, 70000))

        rtask = asyncio.create_task(recv())
        sink = SyslogUdpSink(syslog_cfg("udp", port, protocol="udp", framing=None,
                                        batch_size=50), q, registry=reg)
        ok = await run_sinks([sink], lambda: q.depth() == 0 and len(got) >= 300)
        rtask.cancel()
        rs.close()
        return ok

    assert run(main())
    assert got == items  # one payload per datagram, unframed (loopback: no drops here)
    dead = q.list(dlq=True)
    assert len(dead) == 1 and dead[0].payload == big and "65507" in dead[0].reason
    assert reg.value("relay_dead_lettered_total", sink="udp") == 1
    assert reg.value("relay_send_errors_total", sink="udp", reason="oversize") == 1
    assert reg.value("relay_sent_total", sink="udp") == 300
    q.close()


def test_udp_port_unreachable_pauses_and_resumes(tmp_path):
    """No receiver: the kernel reports ICMP port unreachable (ECONNREFUSED) on a later send; the
    rest of that batch is released (no attempt counted, nothing dead-lettered) and the sink
    pauses; once a receiver listens, the rest arrives in order."""
    q = make_queue(tmp_path / "q.db")
    items = payloads(400)
    fill(q, items)
    reg = Registry()
    got: list[bytes] = []
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind((HOST, 0))
    port = probe.getsockname()[1]
    probe.close()                 # nothing listens there now

    async def main():
        loop = asyncio.get_running_loop()
        sink = SyslogUdpSink(syslog_cfg("udp2", port, protocol="udp", framing=None, batch_size=50), q,
                             registry=reg)
        stop = asyncio.Event()
        task = asyncio.create_task(sink.run(stop))
        deadline = time.monotonic() + 10
        while reg.value("relay_send_errors_total", sink="udp2", reason="connect") < 1:
            assert time.monotonic() < deadline, "no ECONNREFUSED reported"
            await asyncio.sleep(0.01)
        rs = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        rs.bind((HOST, port))
        rs.setblocking(False)

        async def recv():
            while True:
                got.append(await loop.sock_recv(rs, 70000))
        rtask = asyncio.create_task(recv())
        deadline = time.monotonic() + 20
        while q.depth() > 0:
            assert time.monotonic() < deadline, f"{q.depth()} rows still queued"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        stop.set()
        await asyncio.wait_for(task, 10)
        rtask.cancel()
        rs.close()

    run(main())
    assert got and got == items[len(items) - len(got):], "the datagrams after the receiver came are the tail, in order"
    assert not q.list(dlq=True)
    assert reg.value("relay_dead_lettered_total", sink="udp2") == 0
    q.close()


# --------------------------------------------------------------------------- TLS
def _server_ctx(pki: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki / "server.pem", pki / "server.key")
    return ctx


def test_tls_delivery(tmp_path, pki):
    q = make_queue(tmp_path / "q.db")
    items = payloads(2000)
    fill(q, items)
    reg = Registry()

    async def main():
        rx = await Receiver("octet", ssl_ctx=_server_ctx(pki)).start()
        cfg = syslog_cfg("tls", rx.port, protocol="tls", framing="octet", batch_size=250,
                         settle_delay=0.05)
        cfg.tls_ca = pki / "ca.pem"
        sink = make_sink(cfg, q, registry=reg)
        ok = await run_sinks([sink], lambda: q.depth() == 0 and len(rx.messages) >= 2000)
        await asyncio.sleep(0.1)
        await rx.stop()
        return ok, rx

    ok, rx = run(main())
    assert ok
    check_all_once(rx.messages, items)
    assert reg.value("relay_sent_total", sink="tls") == 2000
    q.close()


@pytest.mark.parametrize("case", ["wrong_ca", "wrong_name"])
def test_tls_verification_failure_keeps_events(tmp_path, pki, case):
    q = make_queue(tmp_path / "q.db")
    fill(q, payloads(100))
    reg = Registry()

    async def main():
        rx = await Receiver("octet", ssl_ctx=_server_ctx(pki)).start()
        cfg = syslog_cfg("tls", rx.port, protocol="tls", framing="octet")
        if case == "wrong_ca":
            cfg.tls_ca = pki / "other-ca.pem"
        else:
            cfg.tls_ca = pki / "ca.pem"
            cfg.tls_server_name = "qradar.example.com"
        sink = make_sink(cfg, q, registry=reg)
        await run_sinks([sink], lambda: False, timeout=1.5)
        await rx.stop()
        return rx, sink

    rx, sink = run(main())
    assert rx.messages == []
    assert reg.value("relay_send_errors_total", sink="tls", reason="tls_verify") >= 2
    assert reg.value("relay_sink_up", sink="tls") == 0
    assert q.depth() == 100 and q.dlq_depth() == 0 and q.inflight() == 0
    assert reg.value("relay_retried_total", sink="tls") == 0  # no attempt burnt
    q.close()


# --------------------------------------------------------------------------- base loop
class ScriptedSink(Sink):
    """send() follows a script of exceptions (None = success); records delivered payloads."""

    def __init__(self, cfg, queue, script, packed=False, **kw):
        super().__init__(cfg, queue, **kw)
        self.packed_lease = packed      # True: batches are Leased (queue.lease_packed), as the syslog sink's
        self.script = list(script)
        self.delivered: list[bytes] = []
        self.calls = 0
        self.kinds: set[str] = set()    # the types of the batches send() was given

    async def send(self, items):
        self.calls += 1
        self.kinds.add(type(items).__name__)
        exc = self.script.pop(0) if self.script else None
        if exc is not None:
            raise exc
        self.delivered.extend(payloads_of(items) if self.packed_lease else [it.payload for it in items])


def _cfg(name="s", batch_size=10):
    return SinkConfig(name=name, type="test", batch_size=batch_size)


@pytest.mark.parametrize("packed", [False, True], ids=["items", "leased"])
def test_permanent_error_dead_letters_with_reason(tmp_path, packed):
    q = make_queue(tmp_path / "q.db")
    items = payloads(30)
    fill(q, items)
    reg = Registry()
    sink = ScriptedSink(_cfg(), q, [None, PermanentError("HTTP 400: bad field 'x'",
                                                         reason="http_400")], packed=packed, registry=reg)
    assert run(run_sinks([sink], lambda: q.depth() == 0))
    assert sink.delivered == items[:10] + items[20:]
    dead = q.list(dlq=True)
    assert [d.payload for d in dead] == items[10:20]
    assert all(d.reason == "HTTP 400: bad field 'x'" for d in dead)
    assert reg.value("relay_dead_lettered_total", sink="s") == 10
    assert reg.value("relay_send_errors_total", sink="s", reason="http_400") == 1
    assert reg.value("relay_dlq_depth", sink="s") == 10
    assert ("Leased" in sink.kinds) == packed, sink.kinds
    q.close()


@pytest.mark.parametrize("packed", [False, True], ids=["items", "leased"])
def test_retryable_error_retries_then_delivers(tmp_path, packed):
    from relay.sinks import RetryableError
    q = make_queue(tmp_path / "q.db")
    items = payloads(10)
    fill(q, items)
    reg = Registry()
    sink = ScriptedSink(_cfg(), q, [RetryableError("503", retry_after=0.2)], packed=packed, registry=reg)
    t0 = time.monotonic()
    assert run(run_sinks([sink], lambda: q.depth() == 0))
    assert time.monotonic() - t0 >= 0.2
    assert sink.delivered == items
    assert reg.value("relay_retried_total", sink="s") == 10
    assert reg.value("relay_sent_total", sink="s") == 10
    assert ("Leased" in sink.kinds) == packed, sink.kinds
    q.close()


@pytest.mark.parametrize("packed", [False, True], ids=["items", "leased"])
def test_queue_ack_and_lease_failures_are_logged_and_survived(tmp_path, caplog, packed):
    """A queue that cannot lease or record an ack for a while (a full disk): the line is
    logged with its traceback, the rows of the failed ack are sent again, and the sink goes
    on.  Until stop 30 the log call itself raised TypeError (``exc_info`` was not accepted):
    a failed lease ended the sink's loop, a failed ack its delivery task."""
    import sqlite3
    q = make_queue(tmp_path / "q.db")
    items = payloads(30)
    fill(q, items)
    lease = "lease_packed" if packed else "lease"
    real_ack, real_lease = q.ack, getattr(q, lease)
    fails = {"ack": 1, "lease": 1}

    def flaky(name, real):
        def call(*a, **kw):
            if fails[name]:
                fails[name] -= 1
                raise sqlite3.OperationalError("database or disk is full")
            return real(*a, **kw)
        return call
    q.ack = flaky("ack", real_ack)
    setattr(q, lease, flaky("lease", real_lease))
    reg = Registry()
    name = "p" if packed else "s"       # the log lines are rate-limited per sink name, process-wide
    sink = ScriptedSink(_cfg(name), q, [], packed=packed, registry=reg)
    with caplog.at_level(logging.INFO):
        assert run(run_sinks([sink], lambda: q.depth() == 0 and not fails["ack"]))
    assert set(sink.delivered) == set(items) and len(sink.delivered) == 40     # 10 sent twice
    text = caplog.text
    assert f"sink {name}: lease failed; trying again in 1 s" in text
    assert f"sink {name}: ack failed; 10 rows will be sent again" in text
    assert text.count("sqlite3.OperationalError: database or disk is full") == 2     # the tracebacks
    assert "Task exception was never retrieved" not in text and "TypeError" not in text
    assert reg.value("relay_send_errors_total", sink=name, reason="queue") == 2
    assert reg.value("relay_sent_total", sink=name) == 30
    assert ("Leased" in sink.kinds) == packed, sink.kinds
    q.close()


@pytest.mark.parametrize("packed", [False, True], ids=["items", "leased"])
def test_auth_error_blocks_and_keeps_events(tmp_path, caplog, packed):
    q = make_queue(tmp_path / "q.db")
    items = payloads(50)
    fill(q, items)
    reg = Registry()
    sink = ScriptedSink(_cfg(), q, [AuthError("401 Unauthorized"), AuthError("401 again")],
                        packed=packed, registry=reg, auth_recheck=0.4)
    seen = {}

    async def main():
        stop = asyncio.Event()
        task = asyncio.create_task(sink.run(stop))
        await asyncio.sleep(0.2)
        seen["blocked"] = reg.value("relay_sink_blocked", sink="s")
        seen["depth"] = q.depth()
        seen["calls"] = sink.calls
        while q.depth() and not task.done():
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(task, 10)

    with caplog.at_level(logging.ERROR, logger="relay.sinks"):
        t0 = time.monotonic()
        run(main())
        took = time.monotonic() - t0
    assert seen == {"blocked": 1, "depth": 50, "calls": 1}   # stopped after the first batch
    assert any("ALERT" in r.message and "401" in r.message for r in caplog.records)
    assert 0.8 <= took < 5   # two probes 0.4 s apart, then delivery resumed
    assert reg.value("relay_sink_blocked", sink="s") == 0
    assert sink.delivered == items
    assert q.dlq_depth() == 0 and reg.value("relay_retried_total", sink="s") == 0
    assert ("Leased" in sink.kinds) == packed, sink.kinds
    q.close()


def test_notify_wakes_idle_sink_promptly(tmp_path):
    q = make_queue(tmp_path / "q.db")
    sink = ScriptedSink(_cfg(), q, [], registry=Registry(), idle_recheck=30.0)
    lat = {}

    async def main():
        stop = asyncio.Event()
        task = asyncio.create_task(sink.run(stop))
        await asyncio.sleep(0.3)
        calls_idle = sink.calls
        t0 = time.monotonic()
        q.put(b"<13>1 hello")
        sink.notify()
        while not sink.delivered:
            await asyncio.sleep(0.005)
        lat["s"] = time.monotonic() - t0
        stop.set()
        await asyncio.wait_for(task, 10)
        return calls_idle

    assert run(main()) == 0   # idle: no send calls, no busy loop
    assert lat["s"] < 1.0   # woken at once, not after idle_recheck (30 s)
    q.close()


def test_stop_set_while_the_loop_is_awake_is_not_lost(tmp_path):
    """stop is set while the loop waits for ``next_due`` on the worker thread (not asleep, so
    the wakeup finds no sleep to end): the loop must still stop at once, not after its idle
    sleep (idle_recheck).  Until stop 30 the kick was lost and the stop took idle_recheck
    (1 run in ~40 of test_isolation_dead_sink_does_not_stall_other took 5.09 s to stop)."""
    import threading
    q = make_queue(tmp_path / "q.db")
    sink = ScriptedSink(_cfg(), q, [], registry=Registry(), idle_recheck=60.0)
    inside, go_on = threading.Event(), threading.Event()
    real_next_due = q.next_due

    def next_due():
        inside.set()
        go_on.wait(10)
        return real_next_due()
    q.next_due = next_due

    async def main():
        stop = asyncio.Event()
        task = asyncio.create_task(sink.run(stop))
        await asyncio.to_thread(inside.wait, 10)     # the loop is in next_due
        stop.set()
        await asyncio.sleep(0.1)                       # the stop's wakeup runs now, loop awake
        go_on.set()
        await asyncio.wait_for(task, 20)               # 60 s (idle_recheck) when the kick is lost

    run(main())
    assert inside.is_set()
    q.close()


def test_isolation_dead_sink_does_not_stall_other(tmp_path):
    qa, qb = make_queue(tmp_path / "a.db"), make_queue(tmp_path / "b.db")
    items = payloads(2000)
    fill(qa, items)
    fill(qb, items)
    reg = Registry()
    dead_port = free_port()

    async def main():
        rx = await Receiver().start()
        good = SyslogStreamSink(syslog_cfg("good", rx.port, settle_delay=0.05), qa, registry=reg)
        bad = SyslogStreamSink(syslog_cfg("bad", dead_port, settle_delay=0.05, connect_timeout=5),
                               qb, registry=reg)
        t0 = time.monotonic()
        ok = await run_sinks([good, bad], lambda: qa.depth() == 0 and len(rx.messages) >= 2000,
                             timeout=10)
        took = time.monotonic() - t0
        await rx.stop()
        return ok, rx, took

    ok, rx, took = run(main())
    assert ok
    assert took < 3, took
    check_all_once(rx.messages, items)
    assert qb.depth() == 2000 and qb.dlq_depth() == 0
    assert reg.value("relay_send_errors_total", sink="bad", reason="connect") >= 1
    qa.close()
    qb.close()

"""PROXY protocol v1/v2 (issue 20, item 1): the decoder (parsers/proxyproto.py) and the tcp/tls
sources' ``proxy_protocol`` / ``proxy_from`` with real sockets on 127.0.0.1.

Edge cases from the shared reference (apis-wave2.md 9.5): LOCAL with and without TLVs, TCP4,
TCP6, v4-mapped v6; the header split byte by byte and the header plus the first frame (or the
TLS ClientHello) in one segment; v1 LF-only, over 107 bytes, leading zeros, UNKNOWN; bad
signature, version, command, family; no header within the timeout; an untrusted sender.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import threading

import pytest

from parsers import proxyproto as pp
from parsers.proxyproto import ProxyError, decode, encode_v1, encode_v2
from relay.config import ConfigError, loads
from relay.metrics import REGISTRY
from relay.sources import TcpSource, TlsSource, tcp as tcpmod
from tests.test_sources import FakePipeline, cfg, client_ctx, closed_by_server, dropped, metric, run, until

LB = [ipaddress.ip_network("127.0.0.0/8")]
REF_V2 = bytes.fromhex("0D0A0D0A000D0A515549540A 21 11 000C CB007107 0A000005 C93A 1972".replace(" ", ""))


# ----------------------------------------------------------------------------- decoder

def test_reference_v2_example():
    h = decode(REF_V2 + b"<13>tail")
    assert (h.version, h.command, h.src, h.dst, h.size) == (2, 1, ("203.0.113.7", 51514), ("10.0.0.5", 6514), 28)
    assert encode_v2(("203.0.113.7", 51514), ("10.0.0.5", 6514)) == REF_V2


@pytest.mark.parametrize("hdr,src", [
    (encode_v2(("192.0.2.1", 1), ("10.0.0.1", 514)), ("192.0.2.1", 1)),
    (encode_v2(("2001:db8::7", 40000), ("2001:db8::1", 514)), ("2001:db8::7", 40000)),
    (encode_v2(("192.0.2.9", 5), ("2001:db8::1", 514)), ("192.0.2.9", 5)),      # v4-mapped in INET6
    (encode_v2(("192.0.2.1", 1), ("10.0.0.1", 514), tlvs=[(0x05, b"uid-1"), (0xE0, b""), (0x04, b"\0" * 9)]),
     ("192.0.2.1", 1)),
    (encode_v1(("198.51.100.4", 51514), ("10.0.0.5", 514)), ("198.51.100.4", 51514)),
    (encode_v1(("2001:db8::4", 2), ("2001:db8::5", 514)), ("2001:db8::4", 2)),
])
def test_split_anywhere_and_payload_kept(hdr, src):
    """Every prefix is 'need more' (so a reader may consume it); the whole gives the header and
    its size, whatever follows."""
    for i in range(len(hdr)):
        assert decode(hdr[:i]) is None, i
    for tail in (b"", b"<13>first frame\n", b"\x16\x03\x01\x02\x00"):
        h = decode(hdr + tail)
        assert h.src == src and h.size == len(hdr) and h.command == 1


def test_tlvs_returned():
    h = decode(encode_v2(("192.0.2.1", 1), ("10.0.0.1", 514), tlvs=[(0x05, b"abc"), (0x20, b"\x01\0\0\0\0")]))
    assert h.tlvs == ((0x05, b"abc"), (0x20, b"\x01\0\0\0\0"))


def test_local_and_unknown_carry_no_addresses():
    for hdr in (encode_v2(None, None), encode_v2(None, None, tlvs=[(0x04, b"xx")]),
                # LOCAL with addresses (some senders fill them): skipped
                pp.V2_SIGNATURE + b"\x20\x11\x00\x0c" + b"\x7f\0\0\1" * 2 + b"\0\1\0\2",
                # PROXY with UNSPEC family: use the real endpoints
                pp.V2_SIGNATURE + b"\x21\x00\x00\x00",
                b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n"):
        h = decode(hdr + b"rest")
        assert h.command == 0 and h.src is None and h.size == len(hdr), hdr


@pytest.mark.parametrize("data,reason", [
    (b"<13>no header\n", "bad_signature"),
    (b"\x16\x03\x01\x00\xa5\x01", "bad_signature"),                  # a TLS ClientHello
    (b"\r\n\r\n\x00\r\nQUIX\n" + b"\0" * 4, "bad_signature"),
    (b"\r\n\r\nX", "bad_signature"),
    (pp.V2_SIGNATURE + b"\x11\x11\x00\x0c" + b"\0" * 12, "v2_bad_version"),
    (pp.V2_SIGNATURE + b"\x22\x11\x00\x0c" + b"\0" * 12, "v2_bad_command"),
    (pp.V2_SIGNATURE + b"\x21\x41\x00\x0c" + b"\0" * 12, "v2_bad_family"),
    (pp.V2_SIGNATURE + b"\x21\x13\x00\x0c" + b"\0" * 12, "v2_bad_family"),
    (pp.V2_SIGNATURE + b"\x21\x12\x00\x0c" + b"\0" * 12, "v2_bad_family"),      # UDP
    (pp.V2_SIGNATURE + b"\x21\x31\x00\xd8" + b"\0" * 216, "v2_bad_family"),     # UNIX
    (pp.V2_SIGNATURE + b"\x21\x11\x00\x08" + b"\0" * 8, "v2_short"),
    (pp.V2_SIGNATURE + b"\x21\x11\x00\x0e" + b"\0" * 14, "v2_bad_tlv"),
    (pp.V2_SIGNATURE + b"\x21\x11\x00\x10" + b"\0" * 12 + b"\x05\x00\x09x", "v2_bad_tlv"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "v1_bad_line"),             # LF only
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2" + b" " * 80 + b"\r\n", "v1_too_long"),
    (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "v1_bad_line"),          # leading zero
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "v1_bad_line"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", "v1_bad_line"),
    (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "v1_bad_line"),          # double space
    (b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", "v1_bad_line"),
    (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "v1_bad_line"),
    (b"PROXY TCP4 1.2.3.4 host 1 2\r\n", "v1_bad_line"),
    (b"PROXZ", "bad_signature"),
])
def test_bad_headers_have_reasons(data, reason):
    with pytest.raises(ProxyError) as e:
        decode(data)
    assert e.value.reason == reason


def test_v1_without_crlf_within_107_bytes_is_refused_at_107():
    line = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2" + b" " * 80
    assert decode(line[:106]) is None
    with pytest.raises(ProxyError):
        decode(line[:107])


# ----------------------------------------------------------------------------- config

_SINK = '[sinks.f]\ntype = "file"\npath = "out.log"\n[routes.all]\nmatch = "true"\nsinks = ["f"]\n'


def test_config_keys():
    c = loads('[sources.t]\ntype = "tcp"\naddress = "127.0.0.1:0"\nproxy_protocol = true\n'
              'proxy_from = ["10.0.0.10/32", "fd00::/64"]\n' + _SINK, file="r.toml")
    sc = c.sources["t"]
    assert sc.proxy_protocol and sc.proxy_trusted("10.0.0.10") and not sc.proxy_trusted("10.0.0.11")
    assert sc.proxy_trusted("::ffff:10.0.0.10") and sc.proxy_trusted("fd00::5")
    assert not loads('[sources.t]\ntype = "tcp"\naddress = "127.0.0.1:0"\n' + _SINK,
                     file="r.toml").sources["t"].proxy_protocol
    with pytest.raises(ConfigError, match="proxy_from.*needs proxy_from"):
        loads('[sources.t]\ntype = "tcp"\naddress = "127.0.0.1:0"\nproxy_protocol = true\n' + _SINK, file="r.toml")
    with pytest.raises(ConfigError, match="proxy_from.*only read with proxy_protocol"):
        loads('[sources.t]\ntype = "tcp"\naddress = "127.0.0.1:0"\nproxy_from = ["10.0.0.1/32"]\n' + _SINK,
              file="r.toml")
    with pytest.raises(ConfigError, match="proxy_from"):
        loads('[sources.t]\ntype = "tcp"\naddress = "127.0.0.1:0"\nproxy_protocol = true\n'
              'proxy_from = ["lb.example"]\n' + _SINK, file="r.toml")


# ----------------------------------------------------------------------------- sockets

def pcfg(type_="tcp", **kw):
    kw.setdefault("proxy_from", LB)
    return cfg(type_, proxy_protocol=True, **kw)


def proxy_count(src, kind):
    return REGISTRY.value("relay_proxy_headers_total", source=src.cfg.name, kind=kind)


async def connect(src):
    return await asyncio.open_connection(*src.bound_address)


def test_v2_header_and_frames_in_one_write_real_peer_used():
    async def main():
        p = FakePipeline()
        src = TcpSource(pcfg(), p)
        await src.start()
        try:
            r, w = await connect(src)
            w.write(encode_v2(("203.0.113.7", 51514), ("10.0.0.5", 514)) + b"<13>one\n<13>two\n")
            await until(lambda: len(p.items) == 2, what="two frames")
            assert p.items == [(b"<13>one", "203.0.113.7:51514"), (b"<13>two", "203.0.113.7:51514")]
            assert proxy_count(src, "v2") == 1 and metric(src, "relay_connections") == 1
            assert src.per_ip == {"203.0.113.7": 1}
            w.write(b"<13>three\n")
            await until(lambda: len(p.items) == 3, what="a later read")
            w.close()
        finally:
            await src.stop(1)
    run(main())


def test_header_byte_by_byte_then_v1_and_tcp6():
    async def main():
        p = FakePipeline()
        src = TcpSource(pcfg(), p)
        await src.start()
        try:
            r, w = await connect(src)
            for b in encode_v2(("2001:db8::7", 4000), ("2001:db8::1", 514)):
                w.write(bytes([b]))
                await w.drain()
                await asyncio.sleep(0.002)
            w.write(b"<13>v6\n")
            r1, w1 = await connect(src)
            w1.write(encode_v1(("198.51.100.4", 51514), ("10.0.0.5", 514)))
            await w1.drain()
            await asyncio.sleep(0.05)
            w1.write(b"<13>v1\n")
            await until(lambda: len(p.items) == 2, what="two frames")
            assert sorted(p.items) == [(b"<13>v1", "198.51.100.4:51514"), (b"<13>v6", "2001:db8::7:4000")]
            assert proxy_count(src, "v2") == 1 and proxy_count(src, "v1") == 1
            assert all(c.value == 0 for c in src._drops.values())
        finally:
            await src.stop(1)
    run(main())


@pytest.mark.parametrize("first,reason", [
    (b"<13>plain syslog, no header\n", "proxy_bad_signature"),
    (pp.V2_SIGNATURE + b"\x22\x11\x00\x0c" + b"\0" * 12, "proxy_v2_bad_command"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n<13>x\n", "proxy_v1_bad_line"),
    (b"PROXY " + b"x" * 200, "proxy_v1_too_long"),
])
def test_bad_header_closes_and_counts(first, reason):
    async def main():
        p = FakePipeline()
        src = TcpSource(pcfg(), p)
        await src.start()
        try:
            r, w = await connect(src)
            w.write(first)
            assert await closed_by_server(r)
            assert dropped(src, reason) == 1 and p.calls == []
            assert metric(src, "relay_connections") == 0 and not src.proxying
        finally:
            await src.stop(1)
    run(main())


def test_untrusted_sender_refused_before_reading():
    async def main():
        p = FakePipeline()
        src = TcpSource(pcfg(proxy_from=[ipaddress.ip_network("10.0.0.10/32")]), p)
        await src.start()
        try:
            r, w = await connect(src)
            # even a well-formed header: 127.0.0.1 is not a configured load balancer
            w.write(encode_v2(("10.0.0.10", 1), ("10.0.0.5", 514)) + b"<13>spoofed\n")
            assert await closed_by_server(r)
            assert dropped(src, "proxy_untrusted") == 1 and p.calls == []
        finally:
            await src.stop(1)
    run(main())


def test_no_header_within_timeout_and_eof_before_header(monkeypatch):
    monkeypatch.setattr(tcpmod, "PROXY_TIMEOUT", 0.3)

    async def main():
        p = FakePipeline()
        src = TcpSource(pcfg(), p)
        await src.start()
        try:
            r, w = await connect(src)
            w.write(REF_V2[:10])                    # a started header that never completes
            assert await closed_by_server(r, timeout=10)
            assert dropped(src, "proxy_timeout") == 1
            r2, w2 = await connect(src)
            w2.write(REF_V2[:20])
            await w2.drain()
            w2.close()
            await until(lambda: dropped(src, "proxy_no_header") == 1, what="EOF counted")
            assert p.calls == [] and not src.proxying
        finally:
            await src.stop(1)
    run(main())


def test_allowlist_and_per_ip_cap_apply_to_the_real_peer():
    async def main():
        p = FakePipeline()
        src = TcpSource(pcfg(allow=[ipaddress.ip_network("10.0.0.0/8")], max_connections_per_ip=1), p)
        await src.start()
        try:
            # the socket peer (127.0.0.1, the load balancer) is not in `allow`; the real peer is
            r, w = await connect(src)
            w.write(encode_v2(("10.1.2.3", 1000), ("10.0.0.5", 514)) + b"<13>ok\n")
            await until(lambda: p.items == [(b"<13>ok", "10.1.2.3:1000")], what="allowed frame")
            r2, w2 = await connect(src)
            w2.write(encode_v2(("192.0.2.66", 1000), ("10.0.0.5", 514)) + b"<13>refused\n")
            assert await closed_by_server(r2)
            assert dropped(src, "allowlist") == 1
            # a second connection of the same real peer is over max_connections_per_ip = 1 ...
            r3, w3 = await connect(src)
            w3.write(encode_v2(("10.1.2.3", 1001), ("10.0.0.5", 514)) + b"<13>over\n")
            assert await closed_by_server(r3)
            assert dropped(src, "max_connections_per_ip") == 1
            # ... another real peer behind the same load balancer is not
            r4, w4 = await connect(src)
            w4.write(encode_v2(("10.4.4.4", 1), ("10.0.0.5", 514)) + b"<13>other\n")
            await until(lambda: len(p.items) == 2, what="other peer's frame")
            assert p.items[1] == (b"<13>other", "10.4.4.4:1")
            assert src.per_ip == {"10.1.2.3": 1, "10.4.4.4": 1}
        finally:
            await src.stop(1)
    run(main())


def test_local_health_check_is_accepted_and_uses_the_socket_peer():
    async def main():
        p = FakePipeline()
        src = TcpSource(pcfg(allow=[ipaddress.ip_network("10.0.0.0/8")]), p)
        await src.start()
        try:
            for _ in range(3):                   # HAProxy >= 2.2 checks: LOCAL, then close
                r, w = await connect(src)
                w.write(encode_v2(None, None))
                await w.drain()
                w.close()
            await until(lambda: proxy_count(src, "v2_local") == 3, what="three LOCAL headers")
            await until(lambda: metric(src, "relay_connections") == 0, what="closed")
            assert dropped(src, "allowlist") == 0 and dropped(src, "proxy_no_header") == 0
            r, w = await connect(src)
            w.write(b"PROXY UNKNOWN\r\n<13>local\n")
            await until(lambda: len(p.items) == 1, what="a frame after UNKNOWN")
            assert p.items[0][0] == b"<13>local" and p.items[0][1].startswith("127.0.0.1:")
        finally:
            await src.stop(1)
    run(main())


def test_stop_while_reading_a_header():
    async def main():
        p = FakePipeline()
        src = TcpSource(pcfg(), p)
        await src.start()
        r, w = await connect(src)
        w.write(REF_V2[:5])
        await until(lambda: src.proxying, what="header being read")
        await src.stop(1)
        assert await closed_by_server(r) and not src.proxying
    run(main())


def _tls_client(addr, ctx, header: bytes, payload: bytes, out: dict) -> None:
    """Blocking TLS client over a memory BIO: the PROXY header and the ClientHello go out in
    ONE send, so the relay must strip the header without eating the handshake's first bytes."""
    s = socket.create_connection(addr, timeout=10)
    try:
        inc, outg = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(inc, outg, server_hostname="127.0.0.1")
        first = True
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                data = outg.read()
                if first:
                    data, first = header + data, False
                if data:
                    s.sendall(data)
                got = s.recv(65536)
                if not got:
                    raise ConnectionError("closed during the handshake")
                inc.write(got)
        out["version"] = tls.version()
        tls.write(payload)
        s.sendall(outg.read())
        out["ok"] = True
        s.settimeout(10)
        try:
            s.recv(100)                  # wait until the relay closes (test's stop)
        except OSError:
            pass
    finally:
        s.close()


def test_tls_header_and_client_hello_in_one_segment(pki):
    async def main():
        p = FakePipeline()
        src = TlsSource(pcfg("tls", tls_cert=pki / "server.pem", tls_key=pki / "server.key"), p)
        await src.start()
        out: dict = {}
        t = threading.Thread(target=_tls_client, args=(src.bound_address, client_ctx(pki),
                             encode_v2(("203.0.113.9", 6000), ("10.0.0.5", 6514)), b"<13>over tls\n", out))
        t.start()
        try:
            # the client marks "ok" after its send returns, which may come after the relay
            # already has the frame: wait for both
            await until(lambda: len(p.items) == 1 and out.get("ok"), what="a frame over TLS", timeout=10)
            assert p.items == [(b"<13>over tls", "203.0.113.9:6000")]
            assert out.get("ok") and proxy_count(src, "v2") == 1 and dropped(src, "tls_handshake") == 0
        finally:
            await src.stop(1)
            await asyncio.to_thread(t.join, 10)
    run(main())


def test_tls_source_refuses_tls_without_header(pki):
    async def main():
        p = FakePipeline()
        src = TlsSource(pcfg("tls", tls_cert=pki / "server.pem", tls_key=pki / "server.key"), p)
        await src.start()
        try:
            with pytest.raises((ConnectionError, ssl.SSLError, OSError)):
                await asyncio.open_connection(*src.bound_address, ssl=client_ctx(pki),
                                              server_hostname="127.0.0.1")
            await until(lambda: dropped(src, "proxy_bad_signature") == 1, what="counted")
        finally:
            await src.stop(1)
    run(main())


def test_without_proxy_protocol_a_header_is_just_data():
    """A source without proxy_protocol is unchanged: a PROXY line is a syslog frame to it."""
    async def main():
        p = FakePipeline()
        src = TcpSource(cfg("tcp"), p)
        await src.start()
        try:
            r, w = await connect(src)
            w.write(encode_v1(("198.51.100.4", 1), ("10.0.0.5", 514)) + b"<13>x\n")
            await until(lambda: len(p.items) == 2, what="two frames")
            assert p.items[0][0].startswith(b"PROXY TCP4") and p.items[1][1].startswith("127.0.0.1:")
        finally:
            await src.stop(1)
    run(main())

"""PROXY protocol v1 (text) and v2 (binary) header decoding (HAProxy's doc/proxy-protocol.txt).

Pure decoding: :func:`decode` looks at the bytes a connection has sent so far and answers

* ``None``: no complete header yet, and every byte given is part of the header (so a reader
  may consume them all without eating into the payload that follows);
* a :class:`ProxyHeader` whose ``size`` is the number of bytes the header takes (the rest of
  the buffer, if any, is the payload: the first syslog frame or the TLS ClientHello);
* or it raises :class:`ProxyError` with a short ``reason`` (counted by the source) and a detail.

Detection (never guessed): the 12-byte v2 signature, else the ``PROXY `` prefix of v1, else
``bad_signature``.  v1: single spaces, ``TCP4`` / ``TCP6`` / ``UNKNOWN``, no leading zeros,
CRLF within 107 bytes (a bare LF is refused).  v2: version 2, command LOCAL or PROXY, family
UNSPEC / INET / INET6 (UNIX is accepted only with LOCAL: a syslog source has no use for a
UNIX peer), transport UNSPEC or STREAM; TLVs are parsed and returned (unknown types kept),
a TLV that overruns the header is refused.  LOCAL (HAProxy's health checks since 2.2) and v1
``UNKNOWN`` carry no addresses: ``src`` and ``dst`` are None and the socket's addresses hold.
IPv4-mapped IPv6 addresses are given as IPv4.
"""
from __future__ import annotations

import ipaddress
import struct

__all__ = ["ProxyHeader", "ProxyError", "decode", "V2_SIGNATURE", "V1_MAX", "encode_v1", "encode_v2"]

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107
#: largest v2 header: 16 bytes + a 16-bit length
V2_MAX = 16 + 0xFFFF

LOCAL, PROXY = 0, 1


class ProxyError(ValueError):
    """A header that must close the connection; ``reason`` is a short metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ProxyHeader:
    __slots__ = ("version", "command", "src", "dst", "size", "tlvs")

    def __init__(self, version: int, command: int, src, dst, size: int, tlvs=()) -> None:
        self.version = version
        self.command = command          # LOCAL (0) or PROXY (1); v1 UNKNOWN decodes as LOCAL
        self.src = src                  # (ip, port) of the client, or None (LOCAL / UNKNOWN)
        self.dst = dst                  # (ip, port) the client connected to, or None
        self.size = size                # bytes the header takes
        self.tlvs = tuple(tlvs)         # v2: ((type, value bytes), ...)

    def __repr__(self) -> str:
        return (f"ProxyHeader(v{self.version}, {'PROXY' if self.command else 'LOCAL'}, src={self.src}, "
                f"dst={self.dst}, size={self.size})")


def decode(buf: bytes) -> ProxyHeader | None:
    """Decode the header at the start of ``buf``: see the module docstring."""
    n = len(buf)
    if n == 0:
        return None
    head = bytes(buf[:12])
    if head[0] == 0x0D:
        if not V2_SIGNATURE.startswith(head):
            raise ProxyError("bad_signature", f"broken v2 signature {head!r}")
        return None if n < 12 else _v2(buf)
    if V1_PREFIX.startswith(head[:6]):
        return _v1(buf)
    raise ProxyError("bad_signature", f"no PROXY header: connection starts with {bytes(buf[:16])!r}")


def _v1(buf) -> ProxyHeader | None:
    end = bytes(buf[:V1_MAX]).find(b"\n")
    if end < 0:
        if len(buf) >= V1_MAX:
            raise ProxyError("v1_too_long", f"no CRLF within {V1_MAX} bytes")
        return None
    if end == 0 or buf[end - 1] != 0x0D:
        raise ProxyError("v1_bad_line", "the PROXY line ends with LF, not CRLF")
    line = bytes(buf[:end - 1])
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyError("v1_bad_line", f"non-ASCII bytes in {line!r}") from None
    parts = text.split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyHeader(1, LOCAL, None, None, end + 1)
    if len(parts) != 6 or parts[0] != "PROXY":
        raise ProxyError("v1_bad_line", f"want 'PROXY TCP4|TCP6 src dst sport dport', got {text!r}")
    _, proto, s, d, sp, dp = parts
    if proto not in ("TCP4", "TCP6"):
        raise ProxyError("v1_bad_line", f"unknown protocol {proto!r}")
    src = (_v1_addr(s, proto), _v1_port(sp))
    dst = (_v1_addr(d, proto), _v1_port(dp))
    return ProxyHeader(1, PROXY, src, dst, end + 1)


def _v1_addr(s: str, proto: str) -> str:
    try:
        a = ipaddress.ip_address(s)
    except ValueError:
        raise ProxyError("v1_bad_line", f"bad address {s!r}") from None
    if (a.version == 4) != (proto == "TCP4"):
        raise ProxyError("v1_bad_line", f"address {s!r} is not {proto}")
    if a.version == 4 and str(a) != s:      # leading zeros ("010.0.0.1")
        raise ProxyError("v1_bad_line", f"bad address {s!r}")
    return _plain(a)


def _v1_port(s: str) -> int:
    if not s.isdigit() or (len(s) > 1 and s[0] == "0") or int(s) > 65535:
        raise ProxyError("v1_bad_line", f"bad port {s!r}")
    return int(s)


def _plain(a) -> str:
    if a.version == 6 and a.ipv4_mapped is not None:
        return str(a.ipv4_mapped)
    return str(a)


def _v2(buf) -> ProxyHeader | None:
    if len(buf) < 16:
        return None
    vc, ft, length = buf[12], buf[13], struct.unpack_from("!H", buf, 14)[0]
    if vc >> 4 != 2:
        raise ProxyError("v2_bad_version", f"version {vc >> 4}")
    cmd = vc & 0x0F
    if cmd > 1:
        raise ProxyError("v2_bad_command", f"command {cmd}")
    fam, tr = ft >> 4, ft & 0x0F
    if fam > 3 or tr > 2:
        raise ProxyError("v2_bad_family", f"family/transport byte 0x{ft:02x}")
    size = 16 + length
    if len(buf) < size:
        return None
    body = bytes(buf[16:size])
    if cmd == LOCAL:
        # health checks: skip whatever follows (addresses, TLVs) and use the real endpoints
        return ProxyHeader(2, LOCAL, None, None, size)
    if fam == 3:
        raise ProxyError("v2_bad_family", "a UNIX-socket peer on a network source")
    if tr == 2:
        raise ProxyError("v2_bad_family", "a datagram (UDP) peer on a stream source")
    if fam == 0 or tr == 0:
        # PROXY with UNSPEC: "the receiver must accept it and use the real endpoints"
        return ProxyHeader(2, LOCAL, None, None, size, _tlvs(body, 0))
    alen = _ADDR_LEN[fam]
    if length < alen:
        raise ProxyError("v2_short", f"{length} bytes of addresses, family {fam} needs {alen}")
    if fam == 1:
        s, d = ipaddress.IPv4Address(body[0:4]), ipaddress.IPv4Address(body[4:8])
        sp, dp = struct.unpack_from("!HH", body, 8)
    else:
        s, d = ipaddress.IPv6Address(body[0:16]), ipaddress.IPv6Address(body[16:32])
        sp, dp = struct.unpack_from("!HH", body, 32)
    return ProxyHeader(2, PROXY, (_plain(s), sp), (_plain(d), dp), size, _tlvs(body, alen))


_ADDR_LEN = {0: 0, 1: 12, 2: 36, 3: 216}


def _tlvs(body: bytes, start: int) -> list:
    out = []
    i, n = start, len(body)
    if i > n:
        raise ProxyError("v2_short", f"{n} bytes after the fixed header, the addresses need {start}")
    while i < n:
        if n - i < 3:
            raise ProxyError("v2_bad_tlv", f"{n - i} stray bytes at the end of the TLVs")
        t, ln = body[i], struct.unpack_from("!H", body, i + 1)[0]
        if i + 3 + ln > n:
            raise ProxyError("v2_bad_tlv", f"TLV 0x{t:02x} of {ln} bytes overruns the header")
        out.append((t, body[i + 3:i + 3 + ln]))
        i += 3 + ln
    return out


# --------------------------------------------------------------------------- encoding (tests, bench)

def encode_v1(src: tuple[str, int] | None, dst: tuple[str, int] | None) -> bytes:
    if src is None:
        return b"PROXY UNKNOWN\r\n"
    v6 = ipaddress.ip_address(src[0]).version == 6
    return f"PROXY {'TCP6' if v6 else 'TCP4'} {src[0]} {dst[0]} {src[1]} {dst[1]}\r\n".encode()


def encode_v2(src: tuple[str, int] | None, dst: tuple[str, int] | None, tlvs=()) -> bytes:
    """A v2 header as HAProxy sends it (LOCAL when ``src`` is None)."""
    extra = b"".join(bytes([t]) + struct.pack("!H", len(v)) + v for t, v in tlvs)
    if src is None:
        return V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", len(extra)) + extra
    s, d = ipaddress.ip_address(src[0]), ipaddress.ip_address(dst[0])
    if s.version == 4 and d.version == 4:
        addr = s.packed + d.packed + struct.pack("!HH", src[1], dst[1])
        ft = 0x11
    else:
        s6 = s if s.version == 6 else ipaddress.IPv6Address("::ffff:" + str(s))
        d6 = d if d.version == 6 else ipaddress.IPv6Address("::ffff:" + str(d))
        addr = s6.packed + d6.packed + struct.pack("!HH", src[1], dst[1])
        ft = 0x21
    return V2_SIGNATURE + bytes([0x21, ft]) + struct.pack("!H", len(addr) + len(extra)) + addr + extra

"""parsers.detect: per-message format detection, never raising."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from parsers import detect
from parsers.event import ParseError

RFC5424 = b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - 'su root' failed"
BSD = b"<34>Oct 11 22:14:15 mymachine su[123]: 'su root' failed for lonvick on /dev/pts/8"


@pytest.mark.parametrize("data, expected", [
    (b"<34>1 ", True), (b"<0>1 x", True), (b"<191>999 x", True), (b"<1>10 ", True),
    (b"<34>0 x", False),          # version may not start with 0
    (b"<34>1000 x", False),       # version is at most 3 digits
    (b"<34>1-", False), (b"<34>1", False), (b"<34>", False), (b"<34> 1 x", False),
    (b"<1234>1 x", False), (b"<>1 x", False), (b"<a>1 x", False), (b"34>1 x", False),
    (b"", False), (b"<", False),
    (b"<0>91: *Oct 07 03:10:04: x", False),   # Cisco sequence number, not a version
    (b"<0>1990 Oct 22 10:52:01 x", False),    # year first (RFC 3164 5.4 example 4)
    (BSD, False), (RFC5424, True),
])
def test_looks_like_rfc5424(data, expected):
    assert detect.looks_like_rfc5424(data) is expected


def test_rfc5424_message():
    ev = detect.parse(RFC5424, received=1.5, peer="10.0.0.1:514", source="udp")
    assert ev.format == "rfc5424" and ev.error is None
    assert (ev.pri, ev.version, ev.hostname, ev.app_name, ev.msgid) == (34, 1, "mymachine.example.com", "su", "ID47")
    assert (ev.received, ev.peer, ev.source, ev.raw) == (1.5, "10.0.0.1:514", "udp", RFC5424)


def test_rfc3164_message():
    ev = detect.parse(BSD, received=1718452800.0, peer="[::1]:5514", source="tcp-in")
    assert ev.format == "rfc3164" and ev.error is None
    assert (ev.pri, ev.hostname, ev.app_name, ev.procid) == (34, "mymachine", "su", "123")
    assert ev.msg == "'su root' failed for lonvick on /dev/pts/8"
    assert (ev.received, ev.peer, ev.source, ev.raw) == (1718452800.0, "[::1]:5514", "tcp-in", BSD)


def test_year_hint_is_passed_to_rfc3164():
    ev = detect.parse(b"<13>Dec 31 23:59:58 host app: x", received=0.0, year_hint=2011)
    assert ev.time_unix == 1325375998.0  # 2011-12-31T23:59:58Z


def test_broken_rfc5424_is_raw_with_the_5424_error_not_3164():
    data = b"<34>1 2003-10-11T22:14:15.003Z"  # header cut short
    ev = detect.parse(data, peer="p", source="s", received=2.0)
    assert ev.format == "raw"
    assert isinstance(ev.error, ParseError) and ev.error.kind != "pri"
    assert ev.msg == data.decode() and ev.raw == data
    assert (ev.peer, ev.source, ev.received) == ("p", "s", 2.0)
    assert ev.hostname is None and ev.app_name is None


def test_lenient_is_passed_to_rfc5424():
    data = b"<34>1 2003-10-11T22:14:15.003 host app - - - msg"  # no TIME-OFFSET
    assert detect.parse(data).format == "raw"
    ev = detect.parse(data, lenient=True)
    assert ev.format == "rfc5424" and ev.hostname == "host"


@pytest.mark.parametrize("data, kind", [(b"", "empty"), (b"<189 Feb  3 12:34:56 host p: m", "pri"),
                                        (b"<999>Oct 11 22:14:15 h t: m", "pri")])
def test_3164_errors_give_raw(data, kind):
    ev = detect.parse(data, source="x")
    assert ev.format == "raw" and ev.error.kind == kind
    assert ev.msg == data.decode() and ev.pri is None and ev.source == "x"


def test_raw_keeps_bytes_losslessly():
    data = b"<12\xff\xfe>oops \x00\x80"
    ev = detect.parse(data)
    assert ev.format == "raw"
    assert ev.msg.encode("utf-8", "surrogateescape") == data


def test_parser_bug_becomes_raw_internal(monkeypatch):
    from parsers import rfc3164

    def boom(data, **kw):
        raise IndexError("bug")
    monkeypatch.setattr(rfc3164, "parse", boom)
    ev = detect.parse(BSD)
    assert ev.format == "raw" and ev.error.kind == "internal" and "IndexError" in ev.error.reason


_PIECES = st.sampled_from([b"<", b">", b"<13>", b"<34>1 ", b"<191>", b"1", b"0", b" ", b"-", b"[",
                           b"]", b"=", b'"', b"\\", b"2003-10-11T22:14:15.003Z", b"Oct 11 22:14:15",
                           b"host", b"app", b"[a b=\"c\"]", b"\xef\xbb\xbf", b"\xff", b":", b"\n", b"CEF:0|",
                           b"LEEF:2.0|", b"|"])


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=120), st.lists(_PIECES, max_size=16).map(b"".join)),
       st.booleans())
def test_random_bytes_never_raise(data, lenient):
    ev = detect.parse(data, lenient=lenient, received=1e9, peer="p", source="s")
    assert ev.format in ("rfc5424", "rfc3164", "raw", "cef", "leef")
    assert ev.raw == data and ev.peer == "p" and ev.source == "s" and ev.received == 1e9
    if ev.format == "raw":
        assert isinstance(ev.error, ParseError) and ev.error.kind != "internal", ev.error
        assert ev.msg.encode("utf-8", "surrogateescape") == data

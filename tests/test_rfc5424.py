"""RFC 5424 parser: error offsets and reasons, lenient mode, and property tests.

The property tests write random valid messages with a small independent encoder
(hostile SD values, UTF-8 text, repeated params) and check they parse back identical;
random and mutated bytes must only ever give ParseError.
"""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parsers import ParseError, rfc5424

SIGMA = (b'<137>1 2026-03-13T04:30:00.123Z rx-01 SigmaIncident 4242 created [incident@32473 '
         b'id="INC-7601d999" actor="jdoe" entity="Primary Site" status="OPEN" risk_score="82"] '
         b'{"incident_id":"INC-7601d999"}')


def test_sigma_incident_fields():
    ev = rfc5424.parse(SIGMA)
    assert (ev.pri, ev.facility, ev.severity, ev.version) == (137, 17, 1, 1)
    assert ev.timestamp == "2026-03-13T04:30:00.123Z"
    assert ev.time_unix == pytest.approx(datetime(2026, 3, 13, 4, 30, 0, 123000, tzinfo=timezone.utc).timestamp())
    assert (ev.hostname, ev.app_name, ev.procid, ev.msgid) == ("rx-01", "SigmaIncident", "4242", "created")
    assert ev.sd == {"incident@32473": {"id": "INC-7601d999", "actor": "jdoe", "entity": "Primary Site",
                                        "status": "OPEN", "risk_score": "82"}}
    assert ev.msg == '{"incident_id":"INC-7601d999"}'
    assert ev.raw == SIGMA and ev.format == "rfc5424" and ev.notes is None


@pytest.mark.parametrize("ts,expected", [
    ("2003-10-11T22:14:15.003Z", datetime(2003, 10, 11, 22, 14, 15, 3000, tzinfo=timezone.utc)),
    ("2003-10-11T22:14:15.3Z", datetime(2003, 10, 11, 22, 14, 15, 300000, tzinfo=timezone.utc)),
    ("2003-08-24T05:14:15.000003-07:00", datetime(2003, 8, 24, 12, 14, 15, 3, tzinfo=timezone.utc)),
    ("2020-02-29T23:59:59+05:30", datetime(2020, 2, 29, 18, 29, 59, tzinfo=timezone.utc)),
])
def test_timestamp_offsets_and_fractions(ts, expected):
    ev = rfc5424.parse(f"<13>1 {ts} h a p m -".encode())
    assert ev.time_unix == pytest.approx(expected.timestamp(), abs=1e-6)
    assert ev.timestamp == ts


@pytest.mark.parametrize("msg,offset,words", [
    (b"", 0, "empty"),
    (b"13>1 - - - - - -", 0, "PRI"),
    (b"<192>1 - - - - - -", 1, "0-191"),
    (b"<013>1 - - - - - -", 1, "leading zero"),
    (b"<13>0 - - - - - -", 4, "VERSION"),
    (b"<13>1 2003-10-11t22:14:15Z h a p m -", 6, "upper case"),
    (b"<13>1 2003-10-11T22:14:15z h a p m -", 6, "upper case"),
    (b"<13>1 2003-10-11T22:14:60Z h a p m -", 6, "leap"),
    (b"<13>1 2003-13-11T22:14:15Z h a p m -", 6, "TIMESTAMP"),
    (b"<13>1 2003-10-11T22:14:15.1234567Z h a p m -", 6, "6 digits"),
    (b"<13>1 2003-10-11T22:14:15 h a p m -", 6, "OFFSET"),
    (b"<13>1 2003-09-31T22:14:15Z h a p m -", 6, "TIMESTAMP"),
    (b"<13>1 - h\xc3\xa9 a p m -", 9, "printable US-ASCII"),
    (b"<13>1 - h " + b"a" * 49 + b" p m -", 58, "longer than 48"),
    (b"<13>1 - h a p m [x@1 a=\"1\"][x@1 b=\"2\"]", 28, "duplicate SD-ID"),
    (b"<13>1 - h a p m [x@1 a=1]", 23, "double quotes"),
    (b"<13>1 - h a p m [x@1 a=\"]\"]", 24, "escaped"),
    (b"<13>1 - h a p m [x@1 a=\"1\"] [y z=\"2\"]x", None, None),  # valid: the rest is MSG
    (b"<13>1 - h a p m [x@1 a=\"1\"]x", 27, "adjacent"),
    (b"<13>1 - h a p m [x@1 a=\"1\"", 26, "closed"),
    (b"<13>1 - h a p m [ x=\"1\"]", 17, "SD-ID"),
    (b"<13>1 - h a p m", 15, "missing"),
    (b"<13>1 - - - - - - \xef\xbb\xbf\xc3\x28", 21, "UTF-8"),
])
def test_errors_name_offset_and_rule(msg, offset, words):
    if offset is None:
        rfc5424.parse(msg)
        return
    with pytest.raises(ParseError) as ei:
        rfc5424.parse(msg)
    assert ei.value.offset == offset, ei.value
    assert words.lower() in ei.value.reason.lower(), ei.value.reason


def test_offset_counts_bytes_not_characters():
    # the error comes after a multi-byte UTF-8 SD value
    msg = '<13>1 - h a p m [x@1 a="é"]x'.encode()
    with pytest.raises(ParseError) as ei:
        rfc5424.parse(msg)
    assert msg[ei.value.offset:ei.value.offset + 1] == b"x"


def test_repeated_params_and_escapes():
    ev = rfc5424.parse(rb'<13>1 - - - - - [origin ip="1" ip="2" ip="3" x="a\"b\\c\]d\ne"]')
    assert ev.sd == {"origin": {"ip": ["1", "2", "3"], "x": 'a"b\\c]d\\ne'}}


def test_bom_removed_and_leading_space_kept():
    ev = rfc5424.parse(b"<13>1 - - - - - -   two spaces kept")
    assert ev.msg == "  two spaces kept"
    ev = rfc5424.parse("<13>1 - - - - - - \ufeffgrüß".encode())
    assert ev.msg == "grüß"


def test_non_utf8_msg_kept_losslessly():
    ev = rfc5424.parse(b"<13>1 - - - - - - fond\xfc")
    assert ev.msg.encode("utf-8", "surrogateescape") == b"fond\xfc"
    assert ev.syslog_dict()["msg"] == "fond\ufffd"


@pytest.mark.parametrize("msg,check", [
    (b"  <13>1 - h a p m - x  \n", lambda e: e.msg == "x"),
    (b"<409>1 - h a p m - x", lambda e: e.pri is None and e.facility is None),
    (b"<13>1 2009-10-16T11:51:56 h a p m - x", lambda e: e.time_unix == datetime(2009, 10, 16, 11, 51, 56, tzinfo=timezone.utc).timestamp()),
    (b"<13>1 2009-10-16T11:51:56.1234567Z h a p m - x", lambda e: e.time_unix % 1 == pytest.approx(0.123456, abs=1e-6)),
    (b"<13>1 - h " + b"a" * 60 + b" p m - x", lambda e: e.app_name == "a" * 48),
    (b'<13>1 - h a p m [x@1 a= "1"] x', lambda e: e.sd == {"x@1": {"a": "1"}}),
    (b'<13>1 - h a p m [x@1 sub=Vim.svc user=root] x', lambda e: e.sd == {"x@1": {"sub": "Vim.svc", "user": "root"}}),
    (b'<13>1 - h a p m [bad x][ok y="1"] x', lambda e: e.sd == {"ok": {"y": "1"}}),
    (b'<13>1 - h a p m [x@1 a="1"][x@1 a="2"] x', lambda e: e.sd == {"x@1": {"a": "1"}}),
    (b'<13>1 - h a p m [x@1 a="]"] x', lambda e: e.sd == {"x@1": {"a": "]"}}),
])
def test_lenient_accepts_documented_deviations_with_a_note(msg, check):
    with pytest.raises(ParseError):
        rfc5424.parse(msg)
    ev = rfc5424.parse(msg, lenient=True)
    assert check(ev), ev
    assert ev.notes, "a leniency must leave a note"


# ---------------------------------------------------------------- property tests

PRINT = "".join(chr(c) for c in range(33, 127))
NAME_CHARS = "".join(c for c in PRINT if c not in '= ]"')

names = st.text(NAME_CHARS, min_size=1, max_size=32)
header = st.one_of(st.none(), st.text(PRINT, min_size=1, max_size=20).filter(lambda x: x != "-"))  # "-" is NILVALUE
hostile = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40) | st.sampled_from(
    ['"', "\\", "]", '\\"', "\\]", "\\\\", "a]b", "[x]", "=", " ", "\t", "\n", "\r\n", "é€𐍈", "\\n", ""])
param_values = st.one_of(hostile, st.lists(hostile, min_size=2, max_size=3))
sd_strategy = st.one_of(st.none(), st.dictionaries(names, st.dictionaries(names, param_values, max_size=4),
                                                   min_size=1, max_size=3))
msg_strategy = st.one_of(st.none(), st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60))


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def encode(pri, ts, host, app, procid, msgid, sd, msg, bom) -> bytes:
    """A small independent RFC 5424 encoder for the round-trip property."""
    def nil(x):
        return "-" if x is None else x
    if sd:
        parts = []
        for sid, params in sd.items():
            p = "".join(f' {k}="{_esc(x)}"' for k, v in params.items() for x in (v if isinstance(v, list) else [v]))
            parts.append(f"[{sid}{p}]")
        sds = "".join(parts)
    else:
        sds = "-"
    out = f"<{pri}>1 {nil(ts)} {nil(host)} {nil(app)} {nil(procid)} {nil(msgid)} {sds}".encode()
    if msg is not None:
        out += b" " + (b"\xef\xbb\xbf" if bom else b"") + msg.encode()
    return out


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(pri=st.integers(0, 191), ts=st.one_of(st.none(), st.datetimes(
           min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(timezone.utc))),
       host=header, app=header, procid=header, msgid=header, sd=sd_strategy, msg=msg_strategy, bom=st.booleans())
def test_roundtrip(pri, ts, host, app, procid, msgid, sd, msg, bom):
    ts_text = None if ts is None else ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if sd:  # an empty list/duplicate name collapses; normalise the expectation like the wire does
        sd = {sid: {k: (v if not isinstance(v, list) else v) for k, v in p.items()} for sid, p in sd.items()}
    data = encode(pri, ts_text, host, app, procid, msgid, sd, msg, bom)
    ev = rfc5424.parse(data)
    assert (ev.pri, ev.facility, ev.severity) == (pri, pri >> 3, pri & 7)
    assert (ev.hostname, ev.app_name, ev.procid, ev.msgid) == (host, app, procid, msgid)
    assert ev.timestamp == ts_text
    if ts is not None:
        assert ev.time_unix == pytest.approx(ts.timestamp(), abs=1e-6)
    assert ev.sd == (sd or None)
    assert ev.msg == (msg or None)


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_random_bytes_only_parse_errors(data):
    for lenient in (False, True):
        try:
            rfc5424.parse(data, lenient=lenient)
        except ParseError as e:
            assert 0 <= e.offset <= len(data)


@settings(max_examples=500)
@given(st.data())
def test_mutated_messages_only_parse_errors(data):
    base = bytearray(SIGMA)
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        pos = data.draw(st.integers(0, len(base) - 1))
        if op == "flip":
            base[pos] = data.draw(st.integers(0, 255))
        elif op == "insert":
            base[pos:pos] = data.draw(st.sampled_from([b"]", b'"', b"\\", b" ", b"[", b"=", b"\xff", b"\n", b"-"]))
        elif len(base) > 1:
            del base[pos]
    for lenient in (False, True):
        try:
            rfc5424.parse(bytes(base), lenient=lenient)
        except ParseError as e:
            assert 0 <= e.offset <= len(base)

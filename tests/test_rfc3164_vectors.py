"""Every case of shared/vectors/rfc3164.jsonl against parsers.rfc3164 (one test per vector id).

Each expected key is compared.  Source conventions that are representation, not
parsing, are normalised here, and only these:

* absent fields: peers write ``""``, ``null`` or (rsyslog) ``"<receiver hostname>"``
  (the receiver fills in its own name); relay leaves them ``None`` (msg ``""``),
  so ``""``/``None``/``"<receiver hostname>"`` compare equal for hostname, tag,
  procid and msg;
* rsyslog keeps the leading space of MSG; relay removes one separating space, so
  one leading space is removed from rsyslog's expected msg;
* rsyslog's expected timestamp is its own re-rendering (``Mmm dd hh:mm:ss`` or
  ``yyyy-mm-ddThh:mm:ss``): it is compared with relay's parsed ``time_unix``
  rendered the same way, and ``Event.timestamp`` must be text of the input;
* rsyslog's templates print no procid (expected ``null``): the pid is checked
  through ``syslogtag`` (``tag[pid]:``) instead;
* syslog-ng ran with TZ=MET-1METDST and now = 2019-02-08T09:37:49+01:00, so its
  cases are parsed with ``tz=MET`` and that ``received`` time, and ``resolved`` is
  compared with ``time_unix``.

A vector listed in tests/deviations/rfc3164.toml is asserted to still disagree
(strict xfail), so the list stays true.
"""
from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from parsers import detect, rfc3164
from parsers.event import ParseError
from tests.vectors import deviations, input_bytes, load_jsonl

CASES = load_jsonl("rfc3164.jsonl")
DEVIATIONS = deviations("rfc3164")
IDS = [c["id"] for c in CASES]

SYSLOG_NG_TZ = ZoneInfo("MET")
SYSLOG_NG_NOW = datetime.fromisoformat("2019-02-08T09:37:49+01:00").timestamp()
RECEIVED = datetime(2024, 6, 15, 12, 0, 0, tzinfo=UTC).timestamp()  # for the others

_ABSENT = (None, "", "<receiver hostname>")
_TALLY = {"passed": 0, "deviations": 0}


def _same(a, b) -> bool:
    return a == b or (a in _ABSENT and b in _ABSENT)


def _parse(case):
    data = input_bytes(case)
    if case["source"].startswith("syslog-ng"):
        return rfc3164.parse(data, received=SYSLOG_NG_NOW, tz=SYSLOG_NG_TZ)
    return rfc3164.parse(data, received=RECEIVED)


def _render_like(expected_ts: str, time_unix: float) -> str:
    dt = datetime.fromtimestamp(time_unix, UTC)
    if expected_ts[:4].isdigit():
        return dt.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{dt:%b} {dt.day:2d} {dt:%H:%M:%S}"


def mismatches(case, ev) -> list[str]:
    """Differences between ``ev`` and the case's expected values ([] = agree)."""
    exp = case["expected"]
    rsyslog = case["source"].startswith("rsyslog")
    text = input_bytes(case).decode("utf-8", "surrogateescape")
    got = {"pri": ev.pri, "facility": ev.facility, "severity": ev.severity,
           "hostname": ev.hostname, "tag": ev.app_name, "procid": ev.procid, "msg": ev.msg}
    bad = []
    for key in ("pri", "facility", "severity", "hostname", "tag", "procid", "msg"):
        if key not in exp:
            continue
        want = exp[key]
        if key == "procid" and "syslogtag" in exp:
            continue  # checked through syslogtag below
        if key == "msg" and rsyslog and want and want[0] == " ":
            want = want[1:]
        if not _same(got[key], want):
            bad.append(f"{key}: expected {want!r}, got {got[key]!r}")
    # timestamp: text as received
    want_ts = exp["timestamp"]
    if ev.timestamp is not None and ev.timestamp not in text:
        bad.append(f"timestamp {ev.timestamp!r} is not text of the input")
    if rsyslog and want_ts is not None and ev.timestamp is not None and ev.timestamp != want_ts:
        if ev.time_unix is None or _render_like(want_ts, ev.time_unix) != want_ts:
            bad.append(f"timestamp: rsyslog rendered {want_ts!r}, ours {ev.timestamp!r} "
                       f"(time_unix {ev.time_unix!r})")
    elif ev.timestamp != want_ts:
        bad.append(f"timestamp: expected {want_ts!r}, got {ev.timestamp!r}")
    if "syslogtag" in exp:
        st = exp["syslogtag"]
        tag_part = st.rstrip(":")
        want_pid = None
        if tag_part.endswith("]") and "[" in tag_part:
            tag_part, want_pid = tag_part[:-1].split("[", 1)
        if not _same(ev.app_name, tag_part) or not _same(ev.procid, want_pid):
            bad.append(f"syslogtag {st!r}: got tag {ev.app_name!r} procid {ev.procid!r}")
    if "resolved" in exp:
        want_t = datetime.fromisoformat(exp["resolved"]).timestamp()
        if ev.time_unix is None or abs(ev.time_unix - want_t) > 1e-6:
            bad.append(f"resolved: expected {exp['resolved']} = {want_t}, got time_unix {ev.time_unix!r}")
    if "sdata" in exp and ev.sd != exp["sdata"]:
        bad.append(f"sdata: expected {exp['sdata']!r}, got {ev.sd!r}")
    if "structured_data" in exp and ev.sd != exp["structured_data"]:
        bad.append(f"structured_data: expected {exp['structured_data']!r}, got {ev.sd!r}")
    return bad


def _check(case):
    """Assert relay agrees with the vector (raises AssertionError otherwise)."""
    cid = case["id"]
    data = input_bytes(case)
    if "expected" in case:
        bad = mismatches(case, _parse(case))
        assert not bad, f"{cid}: " + "; ".join(bad)
    elif "lenient_expected" in case:
        # RFC-invalid; the peer keeps the whole line as MSG without a PRI.  relay:
        # rfc3164 raises ParseError, detection hands on a raw event with the text.
        with pytest.raises(ParseError):
            rfc3164.parse(data)
        ev = detect.parse(data)
        le = case["lenient_expected"]
        assert ev.format == "raw" and ev.error is not None
        got = {"pri": ev.pri, "timestamp": ev.timestamp, "hostname": ev.hostname,
               "tag": ev.app_name, "procid": ev.procid, "msg": ev.msg}
        assert {k: got[k] for k in le} == le
    elif not case["valid"]:
        # RFC 3164 5.4 example 4: invalid TIMESTAMP -> a relay keeps the original
        # text (after the PRI) as CONTENT, without TIMESTAMP/HOSTNAME (4.3.2).
        ev = _parse(case)
        body = data.decode()[data.index(b">") + 1:]
        assert (ev.timestamp, ev.hostname, ev.app_name, ev.msg) == (None, None, None, body)
    else:
        # valid without expected fields (3164-052 "5 aaaaa": octet-count look-alike):
        # parsed, kept whole as MSG, the suspected framing noted.
        ev = _parse(case)
        assert ev.msg == data.decode() and ev.pri == 13
        assert any("octet count" in n for n in ev.notes)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_vector(case):
    cid = case["id"]
    if cid in DEVIATIONS:
        try:
            _check(case)
        except AssertionError:
            _TALLY["deviations"] += 1
            pytest.xfail(f"listed deviation: {DEVIATIONS[cid]}")
        pytest.fail(f"{cid} is listed in tests/deviations/rfc3164.toml but now agrees; "
                    "remove it from the list")
    _check(case)
    _TALLY["passed"] += 1


def test_deviations_name_real_vectors():
    unknown = set(DEVIATIONS) - set(IDS)
    assert not unknown, f"deviations for unknown vector ids: {sorted(unknown)}"
    assert all(r.strip() for r in DEVIATIONS.values())


# --- conventions beyond the vectors -------------------------------------------------

def _ts(y, mo, d, h=0, mi=0, s=0):
    return datetime(y, mo, d, h, mi, s, tzinfo=UTC).timestamp()


@pytest.mark.parametrize("line, received, year", [
    # ordinary: the year of the received time
    (b"<13>Jun 13 16:33:35 host app: x", _ts(2024, 6, 15), 2024),
    # Dec/Jan rollover: a December message received in early January -> previous year
    (b"<13>Dec 31 23:59:58 host app: x", _ts(2025, 1, 1, 0, 0, 3), 2024),
    # a sender slightly ahead at New Year: January message received on Dec 31 -> next year
    (b"<13>Jan  1 00:00:05 host app: x", _ts(2024, 12, 31, 23, 59, 50), 2025),
    # up to one day in the future stays in the received year ...
    (b"<13>Mar  2 11:00:00 host app: x", _ts(2024, 3, 1, 12), 2024),
    # ... more than one day in the future goes to the previous year
    (b"<13>Mar  2 13:00:00 host app: x", _ts(2024, 3, 1, 12), 2023),
    # nearly a year old stays in the previous year
    (b"<13>Mar  3 00:00:00 host app: x", _ts(2024, 3, 1, 12), 2023),
])
def test_year_guess_window(line, received, year):
    ev = rfc3164.parse(line, received=received)
    assert datetime.fromtimestamp(ev.time_unix, UTC).year == year
    assert ev.received == received


def test_year_hint_and_explicit_year_win_over_the_guess():
    ev = rfc3164.parse(b"<13>Dec 31 23:59:58 host app: x", received=_ts(2025, 1, 1), year_hint=2019)
    assert ev.time_unix == _ts(2019, 12, 31, 23, 59, 58)
    ev = rfc3164.parse(b"<190>Apr 15 2007 21:28:13: %PIX-6-302014: x", received=_ts(2025, 1, 1))
    assert ev.time_unix == _ts(2007, 4, 15, 21, 28, 13)
    ev = rfc3164.parse(b"<190>Apr 15 21:28:13 2007 linksys app: msg", year_hint=2020)
    assert ev.time_unix == _ts(2007, 4, 15, 21, 28, 13) and ev.hostname == "linksys"


def test_zone_for_times_without_offset():
    berlin = ZoneInfo("Europe/Berlin")
    ev = rfc3164.parse(b"<13>Jul  1 12:00:00 host app: x", received=_ts(2024, 7, 2), tz=berlin)
    assert ev.time_unix == _ts(2024, 7, 1, 10)            # CEST = UTC+2
    ev = rfc3164.parse(b"<13>2024-01-10T12:00:00 host app: x", tz=berlin)
    assert ev.time_unix == _ts(2024, 1, 10, 11)           # CET = UTC+1
    ev = rfc3164.parse(b"<13>2024-01-10T12:00:00.5-05:30 host app: x", tz=berlin)
    assert ev.time_unix == _ts(2024, 1, 10, 17, 30) + 0.5  # explicit offset wins


def test_nonexistent_date_keeps_text_without_time():
    ev = rfc3164.parse(b"<13>Feb 29 10:00:00 host app: x", year_hint=2023)
    assert ev.timestamp == "Feb 29 10:00:00" and ev.time_unix is None and ev.notes
    ev = rfc3164.parse(b"<13>Feb 29 10:00:00 host app: x", year_hint=2024)
    assert ev.time_unix == _ts(2024, 2, 29, 10)
    ev = rfc3164.parse(b"<13>Feb 30 10:00:00 host app: x", received=_ts(2024, 3, 1))
    assert ev.time_unix is None and ev.hostname == "host"


def test_out_of_range_time_is_not_a_timestamp():
    ev = rfc3164.parse(b"<13>Jan 10 25:00:00 host app: x")
    assert ev.timestamp is None and ev.hostname is None
    assert ev.msg == "Jan 10 25:00:00 host app: x"


@pytest.mark.parametrize("line, kind", [
    (b"", "empty"),
    (b"<", "pri"), (b"<>", "pri"), (b"<13", "pri"), (b"<1a>x", "pri"),
    (b"<1234>Oct 11 22:14:15 h t: m", "pri"), (b"<192>Oct 11 22:14:15 h t: m", "pri"),
    ("<\u00b9>x".encode(), "pri"),  # a non-ASCII digit is not a PRI digit
])
def test_parse_errors(line, kind):
    with pytest.raises(ParseError) as ei:
        rfc3164.parse(line)
    assert ei.value.kind == kind


def test_cisco_ios_origin_id_hostname_and_marks():
    ev = rfc3164.parse(b"<189>45: R1: *Mar  1 18:46:11.123: %SYS-5-CONFIG_I: Configured by console",
                       year_hint=2024)
    assert (ev.hostname, ev.app_name, ev.timestamp) == ("R1", "%SYS-5-CONFIG_I", "Mar  1 18:46:11.123")
    assert ev.sd == {"meta": {"sequenceId": "45"}, "timeQuality": {"isSynced": "0"}}
    assert ev.msg == "Configured by console"
    assert ev.time_unix == _ts(2024, 3, 1, 18, 46, 11) + 0.123


def test_non_utf8_bytes_are_kept():
    data = b"<13>Oct 11 22:14:15 host app[7]: caf\xe9 \xff"
    ev = rfc3164.parse(data)
    assert ev.msg.encode("utf-8", "surrogateescape") == b"caf\xe9 \xff"
    assert ev.raw is data and ev.format == "rfc3164" and ev.procid == "7"


def test_msg_keeps_spaces_beyond_the_separator_and_no_tag_bracket():
    ev = rfc3164.parse(b"<13>Oct 11 22:14:15 host app:   three")
    assert ev.msg == "  three"
    ev = rfc3164.parse(b"<13>Oct 11 22:14:15 host [audit] x")
    assert (ev.hostname, ev.app_name, ev.msg) == ("host", None, "[audit] x")
    ev = rfc3164.parse(b"<13>Oct 11 22:14:15 host app[12 x")
    assert (ev.app_name, ev.procid, ev.msg) == ("app", None, "[12 x")


try:
    from hypothesis import given, settings, strategies as st
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    given = None

if given is not None:
    _PIECES = st.sampled_from([b"<13>", b"<191>", b"<", b">", b"Oct", b"OCT", b" ", b"  ", b"11",
                               b"2", b"22:14:15", b".", b"*", b":", b"2007", b"2006-11-10T10:43:21",
                               b"+02:00", b"Z", b"host", b"0002::", b"app", b"[", b"]", b"123",
                               b"Message forwarded from ", b"91: ", b"\xff", b"\n"])

    @settings(max_examples=400, deadline=None)
    @given(st.one_of(st.binary(max_size=80), st.lists(_PIECES, max_size=14).map(b"".join)))
    def test_only_parse_error_ever_raised(data):
        try:
            ev = rfc3164.parse(data, received=_ts(2024, 12, 31, 23, 59, 59))
        except ParseError as e:
            assert e.kind in ("empty", "pri")
            return
        assert isinstance(ev.msg, str)
        assert ev.timestamp is None or ev.timestamp in data.decode("utf-8", "surrogateescape")


def test_zz_summary(capsys):
    """Runs last in this module: prints the tally (visible with -s or in -rA)."""
    total = _TALLY["passed"] + _TALLY["deviations"]
    with capsys.disabled():
        print(f"\nrfc3164 vectors: {_TALLY['passed']} passed, {_TALLY['deviations']} listed deviations"
              f" (of {len(CASES)})")
    if total == len(CASES):  # only when the whole module ran (not with -k)
        assert _TALLY["deviations"] == len(DEVIATIONS)

"""Every case of shared/vectors/cef.jsonl against parsers/cef.py and formats/cef.py.

Each vector is its own test (id = vector id).  Vectors listed in tests/deviations/cef.toml
are strict xfails: they must still disagree, so the list stays true.
"""
from __future__ import annotations

import datetime
import re

import pytest

from formats import cef as F
from parsers import cef as P
from parsers.event import ParseError
from tests.vectors import deviations, load_jsonl, raised, vector_params


CASES = load_jsonl("cef.jsonl")
DEV = deviations("cef")
SUBSET = re.compile(r"only some|subset", re.I)

# Logstash encoder's header defaults, as in cef-060's expected output.
LOGSTASH_HEADER = ("Elasticsearch", "Logstash", "1.0", "Logstash", "Logstash", 6)


def check_encode(case: dict) -> None:
    if "key_cases" in case:
        for raw, want in case["key_cases"].items():
            assert F.sanitise_key(raw) == want, raw
    elif "severity_cases" in case:
        for raw, ok in case["severity_cases"].items():
            if ok:
                assert 0 <= F.check_severity(raw) <= 10
            else:
                raised(ValueError, F.check_severity, raw)
    elif "vendor" in case["fields"]:
        f = case["fields"]
        out = F.encode(f["vendor"], f["product"], f["version"], f["signature"], f["name"], f["severity"])
        assert out == case["expected_output"]
    else:
        out = F.encode(*LOGSTASH_HEADER, list(case["fields"].items()))
        assert out == case["expected_output"]


def check_parse(case: dict) -> None:
    text = case["input"]
    if "error" in case:
        err = raised(ParseError, P.parse, text)
        assert 0 <= err.offset <= len(text.encode("utf-8"))
        assert err.reason and err.kind.startswith("cef_")
        return
    try:
        rec = P.parse(text)
    except ParseError as e:  # a disagreement, not a crash
        raise AssertionError(f"rejected: {e}") from e
    assert rec.header() == case["expected_header"]
    if "expected_extension" in case:
        want = case["expected_extension"]
        if SUBSET.search(case.get("notes", "")):
            assert {k: rec.extension.get(k) for k in want} == want
        else:
            assert rec.extension == want
    if "syslog_prefix" in case:
        assert rec.prefix == case["syslog_prefix"]
    elif text.startswith("CEF:"):
        assert rec.prefix is None
    if "severity_numeric" in case:
        assert rec.severity_number() == case["severity_numeric"]
    if "translated" in case:
        assert rec.labelled() == case["translated"]
    if "long_names" in case:
        for short, long in case["long_names"].items():
            assert P.LONG_NAMES[short] == long
    if "expected_time_utc" in case:
        want = datetime.datetime.fromisoformat(case["expected_time_utc"]).timestamp()
        assert rec.time("rt") == pytest.approx(want, abs=1e-6)
    if not case["valid"]:
        # the peer's lenient reading is our default; the spec verdict is strict mode's
        raised(ParseError, P.parse, text, strict=True)


def check(case: dict) -> None:
    if case.get("direction") == "encode":
        check_encode(case)
    else:
        check_parse(case)


@pytest.mark.parametrize("case", vector_params(CASES, DEV))
def test_vector(case):
    check(case)


def test_vector_counts():
    assert len(CASES) == 78
    assert sum(c.get("direction") == "encode" for c in CASES) == 4


def test_deviations_name_real_vectors():
    ids = {c["id"] for c in CASES}
    assert set(DEV) <= ids, set(DEV) - ids


# --- our documented policies on vector inputs -------------------------------------------

def by_id(i: str) -> dict:
    return next(c for c in CASES if c["id"] == i)


def test_duplicate_key_keeps_last():
    rec = P.parse(by_id("cef-024")["input"])
    assert rec.extension == {"flexString1": "1.24", "flexString1Label": "Version"}
    assert rec.labelled() == {"Version": "1.24"}


def test_unlabelled_custom_field_is_not_translated():
    assert P.parse(by_id("cef-023")["input"]).labelled() == {}


def test_backslash_r_is_cr_and_quotes_are_data():
    rec = P.parse(by_id("cef-010")["input"])
    assert rec.extension["msg"] == "Detected a threat.\r No action needed"
    rec = P.parse(by_id("cef-004")["input"])
    assert rec.vendor == '"Security"' and rec.extension["src"] == '"10.0.0.1"'


def test_keyless_pair_inside_value_is_an_error():
    with pytest.raises(ParseError) as ei:
        P.parse(by_id("cef-032")["input"])
    assert ei.value.kind == "cef_keyless"
    assert ei.value.offset == by_id("cef-032")["input"].index(" =has") + 1


@pytest.mark.parametrize("text,kind,offset", [
    ("no marker here", "cef_marker", 0),
    ("CEF:0|a|b|c|d|e|", "cef_header", 16),
    ("CEF:x|a|b|c|d|e|5|", "cef_version", 4),
    ("CEF:0|a|b|c|d|e|5|=x", "cef_keyless", 18),
    ("CEF:0|a|b|c|d|e|5|k=v\nCEF:0|a|b|c|d|e|5|", "cef_newline", 21),
    ("CEF:0|a|b|c|d|e|5|junk k=v", "cef_extension", 18),
    ("héllo CEF:0|a|b|c|d|e|", "cef_header", 23),  # byte offset (é is 2 bytes)
])
def test_error_kinds_and_offsets(text, kind, offset):
    with pytest.raises(ParseError) as ei:
        P.parse(text)
    assert (ei.value.kind, ei.value.offset) == (kind, offset)


def test_header_only_and_trailing_terminator():
    rec = P.parse("CEF:1|V|P|1|id|n|3|\r\n")
    assert rec.version == 1 and rec.extension == {} and rec.severity == "3"


def test_encode_examples():
    assert F.encode("V", "P", "1", "id", "n", 3) == "CEF:0|V|P|1|id|n|3|"
    out = F.encode("V\\", "P|Q", "1", "id", "a=b", 10, {"msg": "C:\\x=y\r\nz |", "empty": "", "gone": None},
                   version=1)
    assert out == "CEF:1|V\\\\|P\\|Q|1|id|a=b|10|msg=C:\\\\x\\=y\\r\\nz | empty="
    assert P.parse(out).extension == {"msg": "C:\\x=y\r\nz |", "empty": ""}
    # Falcon's Windows device path (pitfall 13)
    assert F.encode("V", "P", "1", "i", "n", 1, [("filePath", "\\Device\\HarddiskVolume3\\x")]).endswith(
        "filePath=\\\\Device\\\\HarddiskVolume3\\\\x")


@pytest.mark.parametrize("bad", [-1, 11, 1.5, "", "high", None, True, "1e"])
def test_severity_rejected(bad):
    with pytest.raises(ValueError):
        F.encode("V", "P", "1", "i", "n", bad)


def test_version_and_key_validation():
    with pytest.raises(ValueError):
        F.encode("V", "P", "1", "i", "n", 1, version=2)
    with pytest.raises(ValueError):
        F.encode("V", "P", "1", "i", "n", 1, [("=|- ", "x")])
    assert F.encode("V", "P", "1", "i", "n", 1, [("ad.Error_,Code[0]", "x")]).endswith("ad.Error_,Code[0]=x")


def test_custom_field_helpers():
    assert F.custom_strings([("CommandLine", "cmd /c x"), ("FalconHostLink", "https://f")], start=5) == [
        ("cs5", "cmd /c x"), ("cs5Label", "CommandLine"), ("cs6", "https://f"), ("cs6Label", "FalconHostLink")]
    assert F.custom_numbers([("ParentProcessId", 13580823324206), ("Skip", None), ("ProcessId", "42")]) == [
        ("cn1", "13580823324206"), ("cn1Label", "ParentProcessId"), ("cn2", "42"), ("cn2Label", "ProcessId")]
    with pytest.raises(ValueError):
        F.custom_numbers([("a", 1)] * 4)
    with pytest.raises(ValueError):
        F.custom_numbers([("a", "x1")])
    with pytest.raises(ValueError):
        F.custom_strings([("a", "b")], start=7)
    line = F.encode("CrowdStrike", "FalconHost", "1.0", "DetectionSummaryEvent", "Detection Summary Event", 7,
                    F.custom_strings([("CommandLine", "a=b c")]) + F.custom_fields("cfp", [("Score", 1.5)]))
    assert P.parse(line).labelled() == {"CommandLine": "a=b c", "Score": "1.5"}


def test_parse_time_forms():
    assert P.parse_time("1500464384997") == 1500464384.997
    assert P.parse_time("2025-06-29T23:35:00Z") == datetime.datetime(2025, 6, 29, 23, 35,
                                                                     tzinfo=datetime.timezone.utc).timestamp()
    assert P.parse_time("Sep 07 2018 14:50:39 GMT") == P.parse_time("Sep 07 2018 16:50:39", "+02:00")
    # no year: the year of `now`, or the one before if that would be over a day ahead
    now = datetime.datetime(2025, 1, 1, 0, 0, tzinfo=datetime.timezone.utc).timestamp()
    dec = P.parse_time("Dec 31 23:59:59", now=now)
    assert datetime.datetime.fromtimestamp(dec, datetime.timezone.utc).year == 2024
    assert P.parse_time("not a time") is None
    assert P.parse_time("Jul 19 2017 10:50:21 Nowhere/Zone") is None

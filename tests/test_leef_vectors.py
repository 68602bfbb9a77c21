"""Every case of shared/vectors/leef.jsonl against parsers/leef.py (and the QRadar rules our
encoder enforces: devTime must parse with devTimeFormat, sev is an integer 1-10).

Each vector is its own test (id = vector id).  Vectors listed in tests/deviations/leef.toml
are strict xfails: they must still disagree, so the list stays true.
"""
from __future__ import annotations

import datetime
import re

import pytest

from formats import leef as F
from parsers import leef as P
from parsers.event import ParseError
from tests.vectors import deviations, load_jsonl, raised, vector_params


CASES = load_jsonl("leef.jsonl")
DEV = deviations("leef")
SUBSET = re.compile(r"subset|only the asserted", re.I)
# leef-057 lists 10 of the line's 20 attributes without saying so in its notes.
SUBSET_IDS = {"leef-057"}

# --- Java SimpleDateFormat -> strptime (the subset QRadar samples use) ----------------------
_JAVA = [("yyyy", "%Y"), ("yy", "%y"), ("MMM", "%b"), ("MM", "%m"), ("M", "%m"), ("dd", "%d"),
         ("d", "%d"), ("HH", "%H"), ("H", "%H"), ("mm", "%M"), ("ss", "%S"), ("SSS", "%f"),
         ("zzz", "%Z"), ("z", "%Z"), ("Z", "%z"), ("XXX", "%z"), ("a", "%p"), ("hh", "%I")]


def java_to_strptime(pattern: str) -> str:
    """Translate a Java SimpleDateFormat pattern; unknown letters raise ValueError."""
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "'":
            j = pattern.index("'", i + 1)
            out.append(pattern[i + 1:j].replace("%", "%%") or "'")
            i = j + 1
            continue
        if c.isalpha():
            run = len(pattern) - i - len(pattern[i:].lstrip(c))
            token = pattern[i:i + run]
            for java, py in _JAVA:
                if token == java:
                    out.append(py)
                    break
            else:
                raise ValueError(f"unsupported Java pattern letters {token!r}")
            i += run
            continue
        out.append("%%" if c == "%" else c)
        i += 1
    return "".join(out)


def java_parse(value: str, pattern: str) -> datetime.datetime:
    """Parse like QRadar would with ``devTimeFormat``; ValueError when it does not match.
    ``SSS`` must be exactly three digits (strptime's %f would take 1-6)."""
    fmt = java_to_strptime(pattern)
    d = datetime.datetime.strptime(value, fmt)
    if "SSS" in pattern and not re.search(r"[.,]\d{3}(?!\d)", value):
        raise ValueError("SSS needs exactly three digits")
    return d


def check_qradar_rules(attrs: dict) -> None:
    if "devTime" in attrs and "devTimeFormat" in attrs:
        try:
            java_parse(attrs["devTime"], attrs["devTimeFormat"])
        except ValueError as e:
            raise AssertionError(f"devTime {attrs['devTime']!r} does not match {attrs['devTimeFormat']!r}: {e}")
    if "sev" in attrs:
        assert F.check_sev(attrs["sev"]) == attrs["sev"]


def check(case: dict) -> None:
    if "delimiter_cases" in case:
        for field, want in case["delimiter_cases"].items():
            if want == "ERROR":
                raised(ValueError, P.decode_delimiter, field)
            else:
                assert P.decode_delimiter(field) == want, field
        return
    if "attribute_cases" in case:
        for sub in case["attribute_cases"]:
            assert sub["delimiter"] == "\t"
            rec = P.parse("LEEF:1.0|V|P|1|E|" + sub["input"])
            assert rec.attributes == sub["expected"], sub
        return
    text = case["input"]
    if not case["valid"]:
        err = raised(ParseError, P.parse, text)
        assert 0 <= err.offset <= len(text.encode("utf-8"))
        assert err.reason and err.kind.startswith("leef_")
        return
    try:
        rec = P.parse(text)
    except ParseError as e:
        raise AssertionError(f"rejected: {e}") from e
    header = rec.header()
    want = case["expected_header"]
    assert {k: header[k] for k in want} == want
    attrs = case["expected_attributes"]
    if case["id"] in SUBSET_IDS or SUBSET.search(case.get("notes", "")):
        assert {k: rec.attributes.get(k) for k in attrs} == attrs
    else:
        assert rec.attributes == attrs
    syslog = case.get("syslog")
    if syslog is not None:
        assert rec.syslog is not None
        if syslog["pri"] is None:
            assert not rec.syslog.startswith("<")
        else:
            assert rec.syslog.startswith(f"<{syslog['pri']}>")
        tokens = rec.syslog.split()
        for k in ("hostname", "appname", "procid"):
            if syslog.get(k) is not None:
                assert syslog[k] in tokens
        assert syslog["timestamp"] in rec.syslog
    elif text.startswith("LEEF:"):
        assert rec.syslog is None
    check_qradar_rules(rec.attributes)


@pytest.mark.parametrize("case", vector_params(CASES, DEV))
def test_vector(case):
    check(case)


def test_vector_counts():
    assert len(CASES) == 57


def test_deviations_name_real_vectors():
    ids = {c["id"] for c in CASES}
    assert set(DEV) <= ids, set(DEV) - ids


# --- our documented policies --------------------------------------------------------------

def by_id(i: str) -> dict:
    return next(c for c in CASES if c["id"] == i)


@pytest.mark.parametrize("vid", ["leef-048", "leef-049"])
def test_pan_os_pipes_with_delimiter_override(vid):
    case = by_id(vid)
    rec = P.parse(case["input"], delimiter="|")
    assert rec.header() == case["expected_header"]
    attrs = case["expected_attributes"]
    assert {k: rec.attributes.get(k) for k in attrs} == attrs
    # without the override the spec reading swallows the rest of the line into 'cat'
    assert list(P.parse(case["input"]).attributes) == ["cat"]


def test_carbon_black_devtime_is_rejected_by_our_check():
    attrs = P.parse(by_id("leef-057")["input"]).attributes
    with pytest.raises(AssertionError, match="does not match"):
        check_qradar_rules(attrs)


@pytest.mark.parametrize("field,want", [("x09", "\t"), ("X5e", "^"), ("0x9", "\t"), ("x7C", "|"),
                                        ("0x00A6", "\u00a6"), ("\u00a6", "\u00a6"), ("", "\t")])
def test_hex_delimiters_ibm_rule(field, want):
    assert P.decode_delimiter(field) == want


@pytest.mark.parametrize("field", ["0x", "x", "0x12345", "xZZ", "0x0"])
def test_bad_hex_delimiters(field):
    if field == "x":  # a lone 'x' is a literal one-character delimiter
        assert P.decode_delimiter(field) == "x"
        return
    with pytest.raises(ValueError):
        P.decode_delimiter(field)


def test_duplicate_key_keeps_last_and_no_trimming():
    rec = P.parse("LEEF:2.0|V|P|1|E|^|a=1^ b = 2 ^a=3^noeq^=x^^c=\r\n")
    assert rec.attributes == {"a": "3", " b ": " 2 ", "c": ""}


@pytest.mark.parametrize("text,kind", [
    ("", "leef_empty"), ("CEF:0|a", "leef_marker"), ("LEEF:1.0", "leef_header"),
    ("LEEF:1.1|a|b|c|d|", "leef_version"), ("LEEF:2.0|a|b|c|d|0xZZ|k=v", "leef_delimiter"),
])
def test_error_kinds(text, kind):
    with pytest.raises(ParseError) as ei:
        P.parse(text)
    assert ei.value.kind == kind


def test_java_pattern_converter_itself():
    assert java_to_strptime("yyyy-MM-dd'T'HH:mm:ss.SSSZ") == "%Y-%m-%dT%H:%M:%S.%f%z"
    assert java_to_strptime("MMM dd yyyy HH:mm:ss.SSS zzz") == "%b %d %Y %H:%M:%S.%f %Z"
    java_parse("Sep 18 2018 03:28:08.000 UTC", "MMM dd yyyy HH:mm:ss.SSS zzz")
    with pytest.raises(ValueError):
        java_parse("Sep 18 2018 03:28:08.0 UTC", "MMM dd yyyy HH:mm:ss.SSS zzz")
    with pytest.raises(ValueError):
        java_to_strptime("yyyy-MM-dd QQQ")

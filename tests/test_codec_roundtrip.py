"""Property tests: CEF and LEEF encode -> our decode, with hostile text everywhere; LEEF
devTime/devTimeFormat pairing and sev range; syslog headers and framing for output."""
from __future__ import annotations

import datetime
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from formats import cef as FC
from formats import leef as FL
from formats import syslog as FS
from parsers import cef as PC
from parsers import leef as PL
from parsers.event import ParseError
from tests.test_leef_vectors import java_parse

# --- strategies ------------------------------------------------------------------------------
NASTY = list("|=\\\t\r\n^\"' ¦#~,.[]") + ["\r\n", "\\=", "\\n", "\\r", "\\|", " k=", "CEF:0|", "LEEF:2.0|",
                                        "é", "€", "😀", "\u2028", "\x00", "\x0b", "0x09"]
CHARS = st.characters(blacklist_categories=("Cs",))
PIECE = st.one_of(st.sampled_from(NASTY), CHARS, st.text(CHARS, max_size=4))
HOSTILE_SHORT = st.lists(PIECE, max_size=12).map("".join)
HOSTILE = st.one_of(HOSTILE_SHORT, HOSTILE_SHORT.map(lambda s: s * 400))  # up to very long

CEF_KEYS = st.from_regex(r"\A[A-Za-z0-9_.\[\],]{1,12}\Z")
LEEF_KEYS = st.from_regex(r"\A[A-Za-z][A-Za-z0-9_.:\-]{0,12}\Z").filter(lambda k: k not in ("sev", "devTime"))


def pair_like(keys):
    """Values built to look like further pairs: ' k=v', '^k=v', '\\tk=v' ..."""
    return st.builds(lambda sep, k, v: f"{v}{sep}{k}={v}", st.sampled_from([" ", "  ", "\t", "^", "|", "\r\n", "¦"]),
                     keys, HOSTILE_SHORT)


def attrs(keys):
    return st.dictionaries(keys, st.one_of(HOSTILE, pair_like(keys)), max_size=8)


# --- CEF ---------------------------------------------------------------------------------------
def cef_header_decoded(s: str) -> str:
    return s.replace("\r\n", " ").replace("\r", " ").replace("\n", " ").replace("\t", " ").replace("\0", " ")


@settings(max_examples=300, deadline=None)
@given(hdr=st.lists(HOSTILE, min_size=5, max_size=5), sev=st.integers(0, 10), version=st.sampled_from([0, 1]),
       ext=attrs(CEF_KEYS), as_list=st.booleans(), prefix=st.sampled_from(["", "<13>Jan  1 00:00:00 host "]))
def test_cef_roundtrip_exact(hdr, sev, version, ext, as_list, prefix):
    line = FC.encode(*hdr, sev, list(ext.items()) if as_list else ext, version=version)
    assert "\n" not in line and "\r" not in line and "\0" not in line and "\t" not in line
    rec = PC.parse(prefix + line)
    assert rec.version == version and rec.severity == str(sev)
    assert [rec.vendor, rec.product, rec.device_version, rec.event_class_id, rec.name] == [
        cef_header_decoded(h) for h in hdr]
    # every value back exactly (TAB and NUL become spaces; trailing blanks are not
    # representable and are dropped), and no value created or swallowed a key
    assert rec.extension == {k: v.replace("\t", " ").replace("\0", " ").rstrip(" ") for k, v in ext.items()}
    assert list(rec.extension) == list(ext)
    assert rec.prefix == (prefix.rstrip() or None)
    # strict mode accepts everything we write
    assert PC.parse(line, strict=True) == PC.parse(line)


@settings(max_examples=200, deadline=None)
@given(keys=st.lists(st.text(CHARS, max_size=10), min_size=1, max_size=5), value=HOSTILE)
def test_cef_key_sanitising(keys, value):
    ok = [k for k in keys if any(c in FC._KEYCH for c in k)]
    if not ok:
        with pytest.raises(ValueError):
            FC.encode("V", "P", "1", "i", "n", 5, [(keys[0], value)])
        return
    line = FC.encode("V", "P", "1", "i", "n", 5, [(k, value) for k in ok])
    rec = PC.parse(line)
    assert set(rec.extension) == {FC.sanitise_key(k) for k in ok}
    assert all(re.fullmatch(r"[A-Za-z0-9_.\[\],]+", k) for k in rec.extension)


def test_cef_encoder_drops_trailing_blanks_and_escapes_only_what_is_needed():
    assert FC.encode("V", "P", "1", "i", "n", 5, {"a": "x \t ", "b": "  y", "c": "p|q"}) == \
        "CEF:0|V|P|1|i|n|5|a=x b=  y c=p|q"
    assert FC.escape_value("\\=\r\n") == "\\\\\\=\\r\\n"
    assert FC.escape_header("a\\b|c\r\nd\re\nf") == "a\\\\b\\|c d e f"


def test_cef_parse_encode_parse_is_stable_on_vectors():
    """Every vector record we accept re-encodes to the same record (modulo trailing blanks)."""
    from tests.vectors import load_jsonl
    n = 0
    for case in load_jsonl("cef.jsonl"):
        if case.get("direction") != "parse" or "error" in case:
            continue
        try:
            rec = PC.parse(case["input"])
        except ParseError:
            continue
        if PC.severity_number(rec.severity) is None or rec.severity.strip() != rec.severity \
                or not rec.severity.isdigit():
            continue
        again = PC.parse(FC.encode(rec.vendor, rec.product, rec.device_version, rec.event_class_id,
                                   rec.name, rec.severity, rec.extension, version=rec.version))
        assert again.header() == rec.header() and again.extension == rec.extension, case["id"]
        n += 1
    assert n > 40


# --- LEEF --------------------------------------------------------------------------------------
def leef_value_sanitised(v: str, d: str) -> tuple[str, int]:
    n = v.count(d) + v.count("\r") + v.count("\n") + v.count("\0")
    return v.replace(d, " ").replace("\r", " ").replace("\n", " ").replace("\0", " "), n


def leef_header_sanitised(s: str) -> tuple[str, int]:
    return leef_value_sanitised(s, "|")


DELIMS = st.sampled_from(["^", "\t", "¦", "#", "~", "\x01", "\x1f", ";", "\u2502"])


@settings(max_examples=300, deadline=None)
@given(hdr=st.lists(HOSTILE, min_size=4, max_size=4), version=st.sampled_from(["1.0", "2.0"]), d=DELIMS,
       attributes=attrs(LEEF_KEYS), as_list=st.booleans(), sev=st.one_of(st.none(), st.integers(1, 10)),
       prefix=st.sampled_from(["", "<13>1 2025-01-01T00:00:00.000Z host app - - - "]))
def test_leef_roundtrip_sanitised(hdr, version, d, attributes, as_list, sev, prefix):
    items = list(attributes.items())
    if sev is not None:
        items.append(("sev", sev))
    line, changes = FL.encode(*hdr, items if as_list else dict(items), version=version, delimiter=d)
    assert "\n" not in line and "\r" not in line
    rec = PL.parse(prefix + line)
    delim = "\t" if version == "1.0" else d
    assert rec.version == version and rec.delimiter == delim
    want_changes = 0
    got_hdr = [rec.vendor, rec.product, rec.product_version, rec.event_id]
    for h, g in zip(hdr, got_hdr):
        s, n = leef_header_sanitised(h)
        assert g == s
        want_changes += n
    want = {}
    for k, v in items:
        s, n = leef_value_sanitised(str(v), delim)
        want[k] = s
        want_changes += n
    # values back exactly as sanitised, nothing extra, nothing lost
    assert rec.attributes == want
    assert changes == want_changes
    assert rec.syslog == (prefix.rstrip() or None)


@settings(max_examples=200, deadline=None)
@given(keys=st.lists(st.text(CHARS, min_size=1, max_size=8), min_size=1, max_size=4, unique=True), d=DELIMS)
def test_leef_key_sanitising_counts(keys, d):
    bad = set("= \t\r\n|\x0b\x0c\x00") | {d}
    usable = [k for k in keys if any(c not in bad for c in k) and k not in ("sev", "devTime")]
    for k in usable:
        line, changes = FL.encode("V", "P", "1", "E", [(k, "v")], delimiter=d)
        rec = PL.parse(line)
        want = "".join("_" if c in bad else c for c in k)
        assert rec.attributes == {want: "v"}
        assert changes == sum(c in bad for c in k)


@pytest.mark.parametrize("key", ["=", " ", "\t\t", "|"])
def test_leef_unusable_key(key):
    with pytest.raises(ValueError):
        FL.encode("V", "P", "1", "E", [(key, "v")])


def test_leef_examples():
    line, n = FL.encode("Acme|Corp", "Relay", "1.0", "BruteForce",
                        [("cat", "Auth"), ("msg", "a^b\r\nc"), ("none", None), ("sev", 8), ("empty", "")])
    assert line == "LEEF:2.0|Acme Corp|Relay|1.0|BruteForce|^|cat=Auth^msg=a b  c^sev=8^empty="
    assert n == 4
    line, n = FL.encode("V", "P", "1", "E", {"path": "c:\\windows\\x\ty"}, version="1.0", delimiter="^")
    assert line == "LEEF:1.0|V|P|1|E|path=c:\\windows\\x y" and n == 1
    assert FL.encode("V", "P", "1", "E", {"a": "b"}, delimiter="\t")[0] == "LEEF:2.0|V|P|1|E|0x09|a=b"
    assert FL.encode("V", "P", "1", "E", {"a": "b"}, delimiter="¦")[0] == "LEEF:2.0|V|P|1|E|¦|a=b"


@pytest.mark.parametrize("d", ["", "^^", "a", "7", "=", "|", " ", "\n", "\r", "\x00", 5])
def test_leef_bad_delimiters(d):
    with pytest.raises(ValueError):
        FL.encode("V", "P", "1", "E", {"a": "b"}, delimiter=d)


def test_leef_bad_version():
    with pytest.raises(ValueError):
        FL.encode("V", "P", "1", "E", {}, version="3.0")


# --- devTime / devTimeFormat and sev -------------------------------------------------------------
@settings(max_examples=500, deadline=None)
@given(epoch=st.floats(min_value=0, max_value=4102444799.999, allow_nan=False))
def test_dev_time_parses_under_its_pattern(epoch):
    value, pattern = FL.dev_time(epoch)
    parsed = java_parse(value, pattern)
    assert parsed.tzinfo is not None
    assert parsed.timestamp() == pytest.approx(round(epoch * 1000) / 1000, abs=5e-4)
    assert pattern == "yyyy-MM-dd'T'HH:mm:ss.SSSZ"


def test_dev_time_known_value_and_attrs():
    assert FL.dev_time(1747213964.5) == ("2025-05-14T09:12:44.500+0000", "yyyy-MM-dd'T'HH:mm:ss.SSSZ")
    assert FL.dev_time(1747213964.9996)[0] == "2025-05-14T09:12:45.000+0000"  # rounding carries
    line, _ = FL.encode("V", "P", "1", "E", FL.dev_time_attrs(0.0))
    attrs = PL.parse(line).attributes
    assert java_parse(attrs["devTime"], attrs["devTimeFormat"]) == datetime.datetime(
        1970, 1, 1, tzinfo=datetime.timezone.utc)


def test_dev_time_without_format_is_rejected():
    with pytest.raises(ValueError, match="devTimeFormat"):
        FL.encode("V", "P", "1", "E", [("devTime", "2025-05-14T09:12:44.000+0000")])
    with pytest.raises(ValueError):
        FL.encode("V", "P", "1", "E", {"devTime": "1", "x": "y"}, version="1.0")


@given(sev=st.one_of(st.integers().filter(lambda n: not 1 <= n <= 10),
                     st.sampled_from(["", "0", "11", "5.0", " 5", "high", "1e1", "-3", "٣", True, False, 5.0, None])))
def test_sev_outside_1_10_is_rejected(sev):
    if sev is None:  # None means "leave it out", not an error
        assert FL.encode("V", "P", "1", "E", {"sev": None})[0] == "LEEF:2.0|V|P|1|E|^|"
        return
    with pytest.raises(ValueError):
        FL.encode("V", "P", "1", "E", {"sev": sev})


@given(sev=st.integers(1, 10), as_str=st.booleans())
def test_sev_1_10_accepted(sev, as_str):
    line, _ = FL.encode("V", "P", "1", "E", {"sev": str(sev) if as_str else sev})
    assert PL.parse(line).attributes == {"sev": str(sev)}


# --- syslog headers and framing ------------------------------------------------------------------
PRINTUS = re.compile(r"[\x21-\x7e]+")
TOKENS = st.one_of(st.none(), HOSTILE_SHORT, st.sampled_from(["2001:DB8::CEF:1", "LEEF:2.0|x|y", "bücher.example",
                                                               "a" * 300, "-"]))


@settings(max_examples=300, deadline=None)
@given(p=st.integers(0, 191), ts=st.one_of(st.none(), st.floats(0, 4102444799.999)), host=TOKENS, app=TOKENS,
       procid=st.one_of(TOKENS, st.integers(0, 99999)), msgid=TOKENS)
def test_rfc5424_header_shape(p, ts, host, app, procid, msgid):
    h = FS.rfc5424_header(p, ts, host, app, procid, msgid)
    parts = h.split(" ")
    assert len(parts) == 7
    assert parts[0] == f"<{p}>1"
    assert all(PRINTUS.fullmatch(x) for x in parts[1:])
    assert len(parts[2]) <= 255 and len(parts[3]) <= 48 and len(parts[4]) <= 128 and len(parts[5]) <= 32
    assert parts[6] == "-"
    assert "CEF:" not in h and "LEEF:" not in h
    if ts is None:
        assert parts[1] == "-"
    else:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", parts[1])
        back = datetime.datetime.strptime(parts[1], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
        assert back.timestamp() == pytest.approx(round(ts * 1000) / 1000, abs=5e-4)
    for value, got in ((host, parts[2]), (app, parts[3]), (msgid, parts[5])):
        if value is None or value == "":
            assert got == "-"


@settings(max_examples=200, deadline=None)
@given(host=TOKENS, attributes=attrs(LEEF_KEYS))
def test_syslog_plus_leef_line_reads_back(host, attributes):
    head = FS.rfc5424_header(134, 1747213964.123, host, "falcon-relay", None, None)
    leef, _ = FL.encode("CrowdStrike", "FalconHost", "1.0", "Detection", attributes)
    framed = FS.frame(f"{head} {leef}".encode("utf-8"), "lf")
    assert framed.count(b"\n") == 1 and framed.endswith(b"\n")
    rec = PL.parse(framed.decode("utf-8"))
    assert rec.syslog == head and rec.vendor == "CrowdStrike"
    assert rec.attributes == {k: leef_value_sanitised(v, "^")[0] for k, v in attributes.items()}


def test_rfc5424_examples():
    assert FS.rfc5424_header(134, 1747213964.5, "bücher.example", "falcon relay", 42, "DET",
                             sd='[x@1 a="b"]') == \
        '<134>1 2025-05-14T09:12:44.500Z xn--bcher-kva.example falcon_relay 42 DET [x@1 a="b"]'
    assert FS.rfc5424_header(0, None, None, None) == "<0>1 - - - - - -"
    assert FS.rfc5424_header(13, 0, "2001:DB8::CEF:1", "app").split()[2] == "2001:db8::cef:1"
    for bad in (-1, 192, "13", 1.0):
        with pytest.raises(ValueError):
            FS.rfc5424_header(bad, 0, "h", "a")
    assert FS.pri(16, 6) == 134
    with pytest.raises(ValueError):
        FS.pri(24, 0)


def test_rfc3164_examples():
    assert FS.rfc3164_header(13, 1738746000.0, "fw01", "falcon-relay", 42) == \
        "<13>Feb  5 09:00:00 fw01 falcon-relay[42]:"
    assert FS.rfc3164_header(13, 1738746000.0, "my host", "a:b[c]", None) == "<13>Feb  5 09:00:00 my_host a_b_c_:"
    assert FS.rfc3164_header(13, 1738746000.0, "h", None) == "<13>Feb  5 09:00:00 h"
    assert FS.rfc3164_header(13, 1734998400.0, "h", "t" * 40).endswith(" " + "t" * 32 + ":")  # Dec 24, 32 max


@given(line=st.binary(max_size=200).flatmap(
    lambda b: st.sampled_from([b, b + b"\n", b + b"\r\n", b + b"\r", b"\r" + b, b.replace(b"a", b"\r\n"),
                               b + b"\0" + b])))
def test_framing(line):
    # the production rule (the sinks' framer): octet counting carries any byte but NUL (a
    # space); LF framing drops a trailing LF or CRLF and turns every other CR, LF or NUL into
    # a space
    octet = FS.frame(line, "octet")
    n, _, rest = octet.partition(b" ")
    assert int(n) == len(line) and rest == line.replace(b"\0", b" ")
    assert octet == FS.frame_octet(line.replace(b"\0", b" ")) == FS.frame_batch([line], "octet")[0]
    assert FS.frame_batch([line], "octet")[1] == int(b"\0" in line)
    lf = FS.frame(line, "lf")
    body = line[:-2] if line.endswith(b"\r\n") else line[:-1] if line.endswith(b"\n") else line
    assert lf == body.replace(b"\r", b" ").replace(b"\n", b" ").replace(b"\0", b" ") + b"\n"
    assert lf.count(b"\n") == 1 and b"\r" not in lf and b"\0" not in lf
    assert (lf, lf[:-1] != line) == FS.frame_lf(line)
    assert FS.frame_batch([line], "lf") == (lf, int(lf[:-1] != line))
    with pytest.raises(ValueError):
        FS.frame(line, "nul")

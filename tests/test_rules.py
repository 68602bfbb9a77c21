"""Tests for relay.rules: grammar, coercion, missing fields, SD lists, regexes,
syntax errors with columns, explain, and property tests (random rule text
either compiles or raises RuleSyntaxError; compiled rules never raise)."""
from __future__ import annotations

import enum
import math
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parsers.event import Event
from relay.rules import RuleSyntaxError, compile_rule, eval_errors, explain

ROOT = Path(__file__).resolve().parents[1]


def ev(**kw) -> Event:
    e = Event(b"", "rfc5424")
    for k, v in kw.items():
        setattr(e, k, v)
    return e


def sigma_event() -> Event:
    return ev(
        pri=137, facility=17, severity=1, version=1, timestamp="2026-03-13T04:30:00.123Z",
        time_unix=1773376200.123, hostname="rx-01", app_name="SigmaIncident", procid="4242",
        msgid="created", peer="10.0.0.5:5514", source="rhythmx",
        sd={"incident@32473": {"id": "INC-1", "risk_score": "82", "actor": "jdoe",
                               "host": ["ws-17", "ws-18"]},
            "junos@2636.1.1.1.2.57": {"username": "root", "2nd": "x"},
            "origin": {"ip": "10.0.0.5"}},
        msg='{"mitre_tactics": ["Credential Access", "Lateral Movement"]}',
        body={"mitre_tactics": ["Credential Access", "Lateral Movement"],
              "timeline": {"first": "2026-03-13T03:58:11Z"},
              "items": [{"c": 1}, {"c": 2}], "src ip": "10.1.1.1"},
        fields={"event": "created", "risk_score": 82, "severity": "critical", "host": "ws-17",
                "extra": {"alarm_count": "12"}, "tags": ["a", "b", 3]},
        enrich={"asset": {"criticality": 4}, "ti": {"match": False}, "vuln": {"max_cvss": 9.8}},
    )


def m(text: str, event: Event) -> bool:
    r = compile_rule(text)
    a = r(event)
    assert a is r.match(event), "rule() and rule.match() disagree"
    assert type(a) is bool
    return a


# ---------------------------------------------------------------------------
# the typical rules from the brief


@pytest.mark.parametrize("text,expected", [
    ('app_name == "SigmaIncident" and risk_score >= 70', True),
    ('risk_score >= 70 and event == "created"', True),
    ('sd."incident@32473".risk_score >= 70', True),
    ('sd.incident@32473.risk_score >= 83', False),
    ('msgid in ["created", "updated"]', True),
    ('not (hostname matches /^test-/i)', True),
    ('body.mitre_tactics contains "Lateral Movement"', True),
    ('body.mitre_tactics contains "Lateral"', False),   # membership, not substring
    ('severity <= 3', True),
    ('fields.severity == "critical"', True),
    ('asset.criticality >= 4 or ti.match == true', True),
    ('asset.criticality >= 5 or ti.match == true', False),
    ('vuln.max_cvss > 9.5', True),
    ('sd.origin.ip exists', True),
    ('sd.origin.port exists', False),
])
def test_typical_rules(text, expected):
    assert m(text, sigma_event()) is expected


def test_typical_rules_on_real_samples():
    """The example SigmaIncident log, parsed and normalised by the real parsers."""
    from parsers import rhythmx
    from parsers.rfc5424 import parse
    lines = (ROOT / "examples/samples/sigma_incidents.log").read_bytes().splitlines()
    events = [rhythmx.normalise(parse(line)) for line in lines if line.strip()]
    hi = compile_rule('app_name == "SigmaIncident" and risk_score >= 70')
    created = compile_rule('risk_score >= 70 and event == "created"')
    sd_hi = compile_rule('sd."incident@32473".risk_score >= 70')
    for e in events:
        score = e.fields["risk_score"]
        assert hi(e) is (e.app_name == "SigmaIncident" and score is not None and score >= 70)
        assert created(e) is (score is not None and score >= 70 and e.fields["event"] == "created")
        sd_score = (e.sd or {}).get("incident@32473", {}).get("risk_score")
        assert sd_hi(e) is (sd_score is not None and float(sd_score) >= 70)
    assert any(hi(e) for e in events) and not all(hi(e) for e in events)
    assert hi.errors == 0 and created.errors == 0 and sd_hi.errors == 0


# ---------------------------------------------------------------------------
# operators


@pytest.mark.parametrize("text,expected", [
    ("pri == 137", True), ("pri == 136", False), ("pri != 136", True), ("pri != 137", False),
    ("pri < 138", True), ("pri < 137", False), ("pri <= 137", True), ("pri <= 136", False),
    ("pri > 136", True), ("pri > 137", False), ("pri >= 137", True), ("pri >= 138", False),
    ('hostname == "rx-01"', True), ('hostname != "rx-01"', False),
    ('hostname < "rx-02"', True), ('hostname > "rx-02"', False),
    ('hostname >= "rx-01"', True), ('hostname <= "rx-00"', False),
    ('pri in [1, 137]', True), ('pri in [1, 2]', False), ('pri not in [1, 2]', True),
    ('pri not in [137]', False), ('pri in []', False),
    ('msg contains "Lateral"', True), ('msg contains "lateral"', False),
    ('hostname matches /^rx-\\d+$/', True), ('hostname matches /^RX/', False),
    ('hostname matches /^RX/i', True),
    ('procid exists', True), ('procid not exists', False),
    ('fields.nope exists', False), ('fields.nope not exists', True),
])
def test_each_operator(text, expected):
    assert m(text, sigma_event()) is expected


@pytest.mark.parametrize("text,expected", [
    # not > and > or
    ("pri == 1 or pri == 137 and severity == 1", True),
    ("pri == 137 or pri == 1 and severity == 9", True),     # or(a, and(b, c))
    ("(pri == 137 or pri == 1) and severity == 9", False),
    ("not pri == 1 and severity == 1", True),               # (not a) and b
    ("not (pri == 137 and severity == 9)", True),
    ("not pri == 137 and severity == 9", False),
    ("not pri == 137 or severity == 1", True),               # (not a) or b
    ("not not pri == 137", True),
    ("not not not pri == 137", False),
    ("((((pri == 137))))", True),
    ("pri == 1 or pri == 2 or pri == 3 or pri == 137", True),
    ("pri == 137 and severity == 1 and hostname == 'rx-01' and app_name == 'x'", False),
    ("pri == 137 and severity == 1 and hostname == 'rx-01' and msgid == 'created'", True),
    ("pri == 137 AND NOT severity == 2 Or false_field == true", True),
])
def test_precedence_and_parentheses(text, expected):
    assert m(text, sigma_event()) is expected


def test_multiline_rule():
    assert m('app_name == "SigmaIncident"\n  and (risk_score >= 70\n       or ti.match == true)', sigma_event())


# ---------------------------------------------------------------------------
# literals


@pytest.mark.parametrize("literal,value", [
    (r'"a\"b"', 'a"b'), (r"'a\'b'", "a'b"), (r'"a\\b"', "a\\b"), (r'"a\nb"', "a\nb"),
    (r'"a\tb"', "a\tb"), (r'"a\rb"', "a\rb"), (r'"\u00e9"', "é"), (r'"\x41"', "A"),
    (r'"\U0001F600"', "\U0001F600"), (r'"a\/b"', "a/b"), ('"it\'s"', "it's"), ("'say \"hi\"'", 'say "hi"'),
    ('""', ""), ('"é ü"', "é ü"),
])
def test_string_literals_and_escapes(literal, value):
    assert m(f"fields.x == {literal}", ev(fields={"x": value}))
    assert not m(f"fields.x == {literal}", ev(fields={"x": value + "."}))


@pytest.mark.parametrize("literal,value", [
    ("70", 70), ("-3", -3), ("8.5", 8.5), ("1e3", 1000), ("2.5E-1", 0.25),
    ("123456789012345678901234567890", 123456789012345678901234567890),
])
def test_number_literals(literal, value):
    assert m(f"fields.x == {literal}", ev(fields={"x": value}))
    assert not m(f"fields.x == {literal}", ev(fields={"x": value + 1}))


def test_big_integers_are_exact():
    big = 123456789012345678901234567890
    assert m(f"fields.x == {big}", ev(fields={"x": str(big)}))
    assert not m(f"fields.x == {big}", ev(fields={"x": str(big + 1)}))


def test_true_false_null_literals():
    e = ev(fields={"t": True, "f": False, "n": None, "st": " TRUE ", "sf": "false", "one": 1})
    assert m("t == true", e) and m("f == false", e) and not m("t == false", e)
    assert m("st == true", e) and m("sf == false", e) and not m("st == false", e)
    assert m("n == null", e) and m("missing == null", e) and not m("t == null", e)
    assert m("t != null", e) and not m("n != null", e)
    assert not m("one == true", e), "booleans are not numbers"
    assert not m("t == 1", e)
    assert m('t == "true"', e) and not m('t == "false"', e)
    assert m("T == TRUE", ev(fields={"T": True}))   # keywords are case-insensitive


def test_list_literals():
    e = ev(fields={"s": "b", "n": 2, "b": True, "z": None})
    assert m('s in ["a", "b",]', e)
    assert m('n in [1, 2.0, "x"]', e)
    assert m('b in [false, true]', e)
    assert m('z in [1, null]', e) and not m('z in [1, 2]', e)
    assert m('missing in [null]', e)
    assert m("s in ['a', 'b']", e)


# ---------------------------------------------------------------------------
# numeric coercion and type mismatches


@pytest.mark.parametrize("value", ["82", " 82 ", "82.0", "8.2e1", "+82"])
def test_numeric_strings_compare_numerically(value):
    e = ev(fields={"x": value})
    assert m("x == 82", e)
    assert m("x >= 70 and x < 100", e)
    assert m("x in [1, 82]", e)
    assert not m("x != 82", e)


def test_float_strings():
    e = ev(fields={"x": "8.5"})
    assert m("x > 8", e) and m("x < 9", e) and m("x == 8.5", e)


def test_number_value_vs_numeric_string_literal():
    e = ev(fields={"x": 82})
    assert m('x == "82"', e) and m('x >= "70"', e) and m('x in ["82"]', e)
    assert m('pri == "137"', sigma_event())


@pytest.mark.parametrize("value", ["abc", "", "  ", "82abc", "nan", "inf", "1_000", "0x10", "٨٢", None])
def test_non_numeric_vs_number_is_false_never_raises(value):
    e = ev(fields={"x": value})
    before = eval_errors()
    for op in ("==", "<", "<=", ">", ">="):
        assert not m(f"x {op} 82", e)
    assert not m("x in [82, 1000, 1]", e)
    assert eval_errors() == before


def test_inequality_of_present_non_numeric_string_is_true():
    assert m("x != 82", ev(fields={"x": "abc"}))


def test_strings_compare_as_strings():
    e = ev(fields={"x": "9"})
    assert m('x > "10"', e)          # code point order
    assert not m("x > 10", e)        # numeric order


def test_wrong_types_are_false():
    e = ev(fields={"d": {"a": 1}, "l": [1, 2], "s": "x"})
    for text in ("d == 1", "d > 1", 'd == "a"', "l == 1", "l > 0", "s > 1", 's matches /1/ and false_ == 1'):
        assert not m(text, e), text
    assert m('d contains "a"', e)
    assert not m("d matches /a/", e)


def test_bool_vs_number_order_is_false():
    assert not m("x > 0", ev(fields={"x": True}))


def test_enum_values_compare_as_their_base_type():
    class S(enum.StrEnum):
        CREATED = "created"

    class I(enum.IntEnum):
        HIGH = 82

    e = ev(fields={"s": S.CREATED, "i": I.HIGH})
    assert m('s == "created"', e) and m("s in ['created']", e) and m("s matches /^cre/", e)
    assert m("i >= 70", e) and m("i == 82", e) and m('i == "82"', e)


# ---------------------------------------------------------------------------
# missing fields / null


def test_missing_fields_are_null():
    e = ev()
    assert m("hostname == null", e)
    for text in ('hostname == "x"', 'hostname != "x"', "hostname < 1", 'hostname contains "x"',
                 "hostname matches /.*/", "hostname exists", 'hostname not in ["x"]',
                 'hostname in ["x"]', "hostname != null", "risk_score >= 0", "sd.a.b == 1",
                 "body.a == 1", "asset.criticality == 4", "enrich.x.y == 1", "meta.route == 1"):
        assert not m(text, e), text
    assert m("not (hostname == 'x')", e)
    assert m("hostname not exists and risk_score not exists and body.a not exists", e)


def test_json_null_is_missing():
    e = ev(fields={"x": None}, body={"a": None})
    assert m("x == null", e) and not m("x exists", e) and m("body.a not exists", e)


# ---------------------------------------------------------------------------
# paths and name resolution


def test_header_names_are_reserved_fields_prefix_means_canonical():
    e = sigma_event()
    assert m("severity == 1", e)                 # the syslog severity
    assert not m('severity == "critical"', e)
    assert m('fields.severity == "critical"', e)


def test_bare_name_looks_in_fields_then_enrich():
    e = ev(fields={"asset": {"criticality": 2}, "ti": "x"}, enrich={"asset": {"criticality": 5, "owner": "ops"},
                                                                  "ti": {"match": True}})
    assert m("asset.criticality == 2", e)               # fields wins
    assert m('asset.owner == "ops"', e)                 # not in fields -> enrich
    assert m("ti.match == true", e)                     # fields.ti is a str: no .match -> enrich
    assert m("enrich.asset.criticality == 5", e)
    assert m("fields.asset.criticality == 2", e)
    assert not m('fields.asset.owner == "ops"', e)
    assert m("x == 1", ev(enrich={"x": 1}))
    assert m("x == 1", ev(fields={"x": 1}, enrich={"x": 2}))


def test_sd_paths_bare_and_quoted():
    e = sigma_event()
    assert m('sd.incident@32473.actor == "jdoe"', e)
    assert m("sd.'incident@32473'.actor == 'jdoe'", e)
    assert m('sd.junos@2636.1.1.1.2.57.username == "root"', e)
    assert m('sd."junos@2636.1.1.1.2.57"."2nd" == "x"', e)
    assert m('sd.junos@2636.1.1.1.2.57."2nd" == "x"', e)
    assert m("sd.origin exists and sd.nope not exists", e)
    assert m("sd exists", e) and m("sd not exists", ev())
    assert not m("sd.origin.ip exists", ev(sd={}))


def test_sd_quoted_names_with_odd_characters():
    e = ev(sd={"a.b": {"c d": "1", "e]f": "2"}})
    assert m('sd."a.b"."c d" == 1', e)
    assert m(r'sd."a.b"."e]f" == 2', e)


def test_body_paths_and_indexes():
    e = sigma_event()
    assert m('body.mitre_tactics[0] == "Credential Access"', e)
    assert m('body.mitre_tactics[-1] == "Lateral Movement"', e)
    assert m("body.mitre_tactics[5] not exists", e)
    assert m("body.items[1].c == 2", e)
    assert m('body.timeline.first matches /^2026-/', e)
    assert m('body."src ip" == "10.1.1.1"', e)
    assert m("body.timeline[0] not exists and body.mitre_tactics.x not exists", e)
    assert m("body exists", e)


def test_body_is_parsed_lazily_from_json_msg_and_cached():
    e = ev(msg='  {"a": {"b": [1, {"c": "x"}]}}')
    assert m('body.a.b[1].c == "x"', e)
    assert e.body == {"a": {"b": [1, {"c": "x"}]}}
    assert not m("body.a exists", ev(msg="not json {"))
    assert not m("body.a exists", ev(msg='{"broken": '))
    assert not m("body.a exists", ev(msg="{\udcff}"))


def test_fields_enrich_meta_roots():
    e = ev(fields={"a": {"b": [10, 20]}}, enrich={"t": {"f": "v"}}, meta={"route": "xsoar"})
    assert m("fields.a.b[1] == 20", e)
    assert m('enrich.t.f == "v"', e)
    assert m('meta.route == "xsoar"', e)
    assert m("a.b contains 10", e)
    assert m("fields exists and enrich exists and meta exists", e)


def test_keywords_allowed_after_dot():
    assert m('fields.in == 1 and fields."not" == 2', ev(fields={"in": 1, "not": 2}))


def test_rule_fields_set():
    r = compile_rule('app_name == "S" and (sd."incident@32473".risk_score >= 70 or body.a[0]."b c" exists)'
                     ' and not asset.criticality in [1]')
    assert r.fields == {"app_name", "sd.incident@32473.risk_score", 'body.a[0]."b c"', "asset.criticality"}
    assert r.text.startswith("app_name")


# ---------------------------------------------------------------------------
# repeated SD params (lists)


def test_repeated_sd_param_any_element():
    e = ev(sd={"x@1": {"ip": ["10.0.0.1", "192.168.1.2"], "n": ["5", "90"]}})
    assert m('sd.x@1.ip == "192.168.1.2"', e)
    assert m('sd.x@1.ip == "10.0.0.1"', e)
    assert not m('sd.x@1.ip == "10.0.0.9"', e)
    assert m("sd.x@1.ip matches /^192\\./", e)
    assert m('sd.x@1.ip contains "168"', e)
    assert m('sd.x@1.ip in ["1", "10.0.0.1"]', e)
    assert m("sd.x@1.n >= 70", e) and m("sd.x@1.n < 10", e) and not m("sd.x@1.n > 100", e)
    # negations: true only if no element matches
    assert not m('sd.x@1.ip != "10.0.0.1"', e)
    assert m('sd.x@1.ip != "10.0.0.9"', e)
    assert not m('sd.x@1.ip not in ["10.0.0.1"]', e)
    assert m('sd.x@1.ip not in ["1.1.1.1"]', e)
    assert m("sd.x@1.ip exists", e) and not m("sd.x@1.ip not exists", e)


def test_body_lists_use_membership():
    e = ev(body={"ports": ["443", 80], "tags": ["Lateral Movement"]})
    assert m("body.ports contains 443", e) and m("body.ports contains 80", e)
    assert m('body.ports contains "80"', e)
    assert not m("body.ports contains 8", e)
    assert m('body.tags matches /lateral/i', e)
    assert not m('body.tags == "Lateral Movement"', e)


# ---------------------------------------------------------------------------
# regexes


def test_regex_flags_and_escaping():
    e = ev(msg="Line one\nline TWO path /var/log")
    assert m("msg matches /two/i", e) and not m("msg matches /two/", e)
    assert m("msg matches /^line/m", e) and not m("msg matches /^line/", e)
    assert m("msg matches /one.line/s", e) and not m("msg matches /one.line/", e)
    assert m("msg matches /l i n e \\s T W O/x", e)
    assert m("msg matches /\\/var\\/log$/", e)
    assert m("msg matches /ONE.LINE/is", e)


def test_regex_is_compiled_once(monkeypatch):
    r = compile_rule("hostname matches /^rx-[0-9]+$/")
    import re

    def boom(*a, **k):
        raise AssertionError("re.compile called at evaluation time")
    monkeypatch.setattr(re, "compile", boom)
    monkeypatch.setattr(re, "search", boom)
    assert r(ev(hostname="rx-01"))


def test_matches_numbers_as_text():
    assert m("pri matches /^13/", ev(pri=137))


# ---------------------------------------------------------------------------
# syntax errors: message and column


@pytest.mark.parametrize("text,column,message", [
    ('risk_score >= and event == "created"', 15, "expected a value"),
    ("risk_score >= 70 and", 21, "expected a comparison"),
    ("risk_score >= 70 or   ", 23, "expected a comparison"),
    ("(a == 1", 8, "expected ')'"),
    ("a == 1 b == 2", 8, "expected 'and', 'or' or the end of the rule"),
    ("(a == 1))", 9, "expected 'and', 'or' or the end of the rule"),
    ("a === 1", 5, "expected a value"),
    ("a ~ 1", 3, "expected an operator"),
    ("hostname", 9, "expected an operator"),
    ("== 1", 1, "expected a comparison"),
    ("not", 4, "expected a comparison"),
    ("", 1, "expected a comparison"),
    ("   ", 4, "expected a comparison"),
    ("x in 5", 6, "expected a list"),
    ("x not in 5", 10, "expected a list"),
    ("x == [1 2]", 9, "expected ']' or ','"),
    ("x not foo", 7, "expected 'in' or 'exists'"),
    ("hostname matches /abc", 18, "unterminated regex"),
    ("hostname matches /(/", 19, "bad regex"),
    ("hostname matches /a/q", 21, "unknown regex flag 'q'"),
    ("hostname matches 'a'", 18, "expected a regex"),
    ('x == "abc', 6, "unterminated string"),
    (r'x == "ab\qc"', 9, "unknown escape \\q"),
    (r'x == "\u12"', 7, "\\u needs 4 hex digits"),
    ("x == created", 6, 'expected a value (quote text: "created")'),
    ("msg.foo == 1", 1, "msg is a header field"),
    ("sd.a.b.c == 1", 1, "structured data paths"),
    ("sd.a[0] == 1", 1, "structured data paths"),
    ("x < null", 5, "< needs a number or a string"),
    ("x >= true", 6, ">= needs a number or a string"),
    ("x == [1]", 6, "== compares with one value"),
    ("x contains null", 12, "contains needs"),
    ("x == 1e999", 6, "number out of range"),
    ("x == 70abc", 6, "expected a value"),
    ('sd."abc.x == 1', 3, "bad field path"),
    ("and == 1", 1, "expected a comparison"),
    ("x in [1, and]", 10, "expected ']'"),
    ("a == 1 and and b == 2", 12, "expected a comparison"),
])
def test_syntax_errors(text, column, message):
    with pytest.raises(RuleSyntaxError) as ei:
        compile_rule(text)
    e = ei.value
    assert message in e.message, (e.message, message)
    assert e.column == column, str(e)
    assert e.line_text == text
    # the caret is under the column
    line, caret = str(e).split("\n")[:2]
    assert line == text
    assert caret.index("^") == column - 1
    assert caret.endswith("^ " + e.message)


def test_syntax_error_example_from_the_docs():
    with pytest.raises(RuleSyntaxError) as ei:
        compile_rule('risk_score >= and event == "created"')
    assert str(ei.value) == 'risk_score >= and event == "created"\n              ^ expected a value'
    assert isinstance(ei.value, ValueError)


def test_syntax_error_on_later_line():
    with pytest.raises(RuleSyntaxError) as ei:
        compile_rule('app_name == "x"\n  and risk_score >=\n  and y == 1')
    e = ei.value
    assert (e.lineno, e.column, e.line_text) == (3, 3, "  and y == 1")
    assert "(line 3)" in str(e)


def test_too_deep_nesting_is_a_syntax_error():
    with pytest.raises(RuleSyntaxError):
        compile_rule("(" * 2000 + "a == 1" + ")" * 2000)
    with pytest.raises(RuleSyntaxError):
        compile_rule("not " * 2000 + "a == 1")


def test_compile_rule_rejects_non_str():
    with pytest.raises(TypeError):
        compile_rule(b"a == 1")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# evaluation never raises; errors are counted


class Hostile:
    def __eq__(self, other):
        raise RuntimeError("eq")

    def __lt__(self, other):
        raise RuntimeError("lt")

    __gt__ = __le__ = __ge__ = __lt__
    __hash__ = object.__hash__

    def __bool__(self):
        raise RuntimeError("bool")

    def get(self, *a):
        raise RuntimeError("get")


def test_malformed_events_are_false_and_counted():
    r = compile_rule("risk_score >= 70")
    before = eval_errors()
    assert r(ev(fields=["not", "a", "dict"])) is False     # list has no .get
    assert r(ev(fields=Hostile())) is False
    assert r(None) is False                                # not even an Event
    assert r.errors == 3 and eval_errors() == before + 3
    # not of a broken comparison is true (documented)
    assert compile_rule("not risk_score >= 70")(None) is True
    sdr = compile_rule('sd.a.b == "x"')
    assert sdr(ev(sd=["x"])) is False and sdr.errors == 1


def test_hostile_values_do_not_raise():
    e = ev(fields={"h": Hostile()}, hostname=Hostile())
    for text in ("h == 1", 'h == "x"', "h < 1", 'h in ["a", 1]', 'h contains "x"', "h matches /x/",
                 "h exists", "hostname == 'x'", "hostname != 'x'", "hostname not in [1]"):
        assert m(text, e) in (True, False)


def test_evaluation_does_not_touch_pyparsing():
    r = compile_rule('app_name == "SigmaIncident" and (risk_score >= 70 or sd.x.y matches /a/i) '
                     'and msgid in ["created"] and not body.a contains "b"')
    e = sigma_event()
    seen = set()

    def prof(frame, event, arg):
        seen.add(frame.f_globals.get("__name__", ""))
    sys.setprofile(prof)
    try:
        for _ in range(3):
            r(e)
    finally:
        sys.setprofile(None)
    assert not any(name.startswith("pyparsing") for name in seen), seen
    assert "relay.rules" in seen


# ---------------------------------------------------------------------------
# explain


def test_explain_shows_values_and_sources():
    r = compile_rule('app_name == "SigmaIncident" and risk_score >= 70 and asset.criticality >= 4'
                     ' and sd."incident@32473".risk_score >= 90 and nothing exists')
    lines = explain(r, sigma_event())
    text = "\n".join(lines)
    assert lines[0] == "app_name == \"SigmaIncident\"  ->  true    [app_name = 'SigmaIncident' from header]"
    assert "risk_score >= 70  ->  true    [risk_score = 82 from fields]" in text
    assert "[asset.criticality = 4 from enrich]" in text
    assert "sd.\"incident@32473\".risk_score >= 90  ->  false    [sd.incident@32473.risk_score = '82' from sd]" in text
    assert "[nothing = missing from fields/enrich]" in text
    assert lines[-1] == "rule -> false"


def test_explain_does_not_count_errors():
    r = compile_rule("risk_score >= 70")
    before = eval_errors()
    lines = explain(r, ev(fields=Hostile()))
    assert lines[-1] == "rule -> false"
    assert "error RuntimeError" in lines[0]
    assert r.errors == 0 and eval_errors() == before


# ---------------------------------------------------------------------------
# property tests

VOCAB = ["a", "b.c", "sd.x@1.y", 'sd."q@2".r', "body.l[0]", "fields.f", "pri", "msg", "hostname",
         "==", "!=", "<", "<=", ">", ">=", "in", "not", "and", "or", "contains", "matches", "exists",
         "(", ")", "[", "]", ",", "1", "-2.5", '"s"', "'t'", '"\\n"', '"\\q"', "true", "false", "null",
         "/x/i", "/(/", "/a", '"open', "1e999", ".", "@", "===", "\n", "\t", "sd", "x@1"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=60),
                 st.lists(st.sampled_from(VOCAB), max_size=14).map(" ".join),
                 st.lists(st.sampled_from(VOCAB), max_size=14).map("".join)))
def test_random_text_compiles_or_raises_rule_syntax_error(text):
    try:
        r = compile_rule(text)
    except RuleSyntaxError as e:
        assert e.column >= 1
        assert e.line_text in text
        assert "^" in str(e)
        return
    assert callable(r.match) and isinstance(r.fields, set)
    assert r(Event()) in (True, False)


RULES = [
    'app_name == "SigmaIncident" and risk_score >= 70',
    'risk_score >= 70 and event == "created"',
    'sd."incident@32473".risk_score >= 70 or sd.x.y != "a"',
    'msgid in ["created", "updated", 1, true, null] or msgid not in ["x", 2.5]',
    'not (hostname matches /^test-/i) and msg matches /a/',
    'body.mitre_tactics contains "Lateral Movement" or body.a.b[0].c < "m"',
    'severity <= 3 or pri > "10" or facility == "4"',
    'fields.severity == "critical" and fields.x.y exists',
    'asset.criticality >= 4 or ti.match == true or vuln.max_cvss > 7.5',
    'a contains 1 or b contains true or c contains "x" or d not exists',
    'timestamp >= "2024" and time_unix < 1e12 and version == 1 and procid != null',
    'meta.route == "x" or enrich.t.f in ["a"] or peer matches /:514$/ or source == "s"',
    'format == "rfc5424" and sd exists and body exists and fields exists',
]
COMPILED = [compile_rule(t) for t in RULES]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
    st.sampled_from(["82", " 70 ", "8.5", "true", "nan", "inf", "-1e400", "Lateral Movement", "created"]),
    st.binary(max_size=4), st.builds(Hostile), st.builds(object),
)
values = st.recursive(
    scalars,
    lambda kids: st.one_of(st.lists(kids, max_size=3), st.tuples(kids, kids),
                           st.dictionaries(st.sampled_from(["a", "b", "c", "x", "y", "risk_score", "match",
                                                            "criticality", "incident@32473", "route"]),
                                           kids, max_size=4)),
    max_leaves=12,
)
SLOTS = [s for s in Event.__slots__]


@st.composite
def events(draw):
    e = Event()
    for slot in draw(st.lists(st.sampled_from(SLOTS), unique=True, max_size=len(SLOTS))):
        setattr(e, slot, draw(values))
    if draw(st.booleans()):
        e.sd = draw(st.dictionaries(st.sampled_from(["incident@32473", "x", "origin"]),
                                    st.dictionaries(st.sampled_from(["risk_score", "y", "ip"]),
                                                    st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5))),
                                                    max_size=3), max_size=3))
    if draw(st.booleans()):
        e.fields = draw(st.dictionaries(st.sampled_from(["risk_score", "event", "severity", "a", "x", "asset"]),
                                        values, max_size=5))
    return e


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events())
def test_compiled_rules_never_raise_on_random_events(e):
    for r in COMPILED:
        assert r(e) in (True, False)
        assert type(r.match(e)) is bool
        explain(r, e)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False, width=32)),
       st.integers(-1000, 1000))
def test_coercion_agrees_with_python_numbers(x, lit):
    e_num = ev(fields={"x": x})
    e_str = ev(fields={"x": f" {x!r} "})
    for op, fn in (("==", lambda a, b: a == b), ("<", lambda a, b: a < b), (">=", lambda a, b: a >= b)):
        want = fn(x, lit)
        assert m(f"x {op} {lit}", e_num) is want
        assert m(f"x {op} {lit}", e_str) is want


def test_non_finite_floats_in_events():
    e = ev(fields={"x": math.nan, "y": math.inf})
    assert not m("x == 1", e) and not m("x > 1", e) and not m("x < 1", e)
    assert m("y > 1", e)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.booleans(), st.integers(-100, 100), st.floats(), st.text(max_size=6),
                 st.sampled_from(["5", " 5 ", "5.0", "-1", "abc", "true", "False", "b", "B"])),
       st.sampled_from(["==", "!=", "<", "<=", ">", ">=", "in", "not in", "contains", "matches", "exists"]),
       st.sampled_from(["5", "-1", "0.5", '"5"', '"b"', '"abc"', "true", "null"]))
def test_all_evaluation_paths_agree(value, op, lit):
    """The same comparison through the different compiled shapes (inlined bare
    getter with fast path, fields.<x> getter with fast path, two-level alias,
    body path via _walk, SD path with any-semantics) gives the same answer for
    a scalar value."""
    if op in ("in", "not in"):
        lit = f"[{lit}, 99]"
    elif op == "matches":
        lit = "/^" + lit.strip('"').replace(".", "\\.") + "/i"
    elif op == "exists":
        lit = ""
    if op in ("<", "<=", ">", ">=") and lit in ("true", "null") or op == "contains" and lit == "null":
        return
    e = ev(fields={"x": value, "y": {"x": value}}, body={"a": {"x": value}},
           sd={"s": {"x": value}} if value.__class__ is str or value is None else None)
    shapes = [f"x {op} {lit}", f"fields.x {op} {lit}", f"y.x {op} {lit}", f"body.a.x {op} {lit}",
              f"enrich.x {op} {lit}"]
    results = [m(s, e) for s in shapes[:4]]
    assert len(set(results)) == 1, list(zip(shapes, results))
    assert m(shapes[4], ev(enrich={"x": value})) is results[0]
    if e.sd is not None or value is None:
        assert m(f"sd.s.x {op} {lit}", e) is results[0]


def test_deep_but_legal_nesting_evaluates():
    depth = 60
    r = compile_rule("not " * depth + "pri == 137")
    assert r(sigma_event()) is True            # even number of nots
    r = compile_rule("(" * 40 + "pri == 1 or (pri == 137 and not severity == 9)" + ")" * 40)
    assert r(sigma_event()) is True
    assert r(None) is False and r.errors >= 1


def test_crlf_rule_text():
    assert m('app_name == "SigmaIncident"\r\n and risk_score >= 70', sigma_event())
    with pytest.raises(RuleSyntaxError) as ei:
        compile_rule('app_name ==\r\n and x == 1')
    assert (ei.value.line_text, ei.value.column, ei.value.lineno) == (" and x == 1", 2, 2)
    with pytest.raises(RuleSyntaxError) as ei:
        compile_rule('x == "abc\r\n and y == 1')
    assert (ei.value.line_text, ei.value.column, ei.value.message) == ('x == "abc', 6, "unterminated string")
    assert compile_rule('fields.in == 1').fields == {"fields.in"}


# ------------------------------------------------------------------ literal true / false
@pytest.mark.parametrize("text, want", [("true", True), ("false", False), ("TRUE", True), ("not true", False),
                                        ("true and risk_score >= 70", True), ("false or risk_score >= 70", True),
                                        ("(false) and risk_score >= 70", False), ("not (false)", True)])
def test_literal_true_and_false_are_conditions(text, want):
    """`match = 'true'` is a catch-all route, as in every other rule language."""
    from parsers import detect
    from parsers.normalise import normalise
    from relay.rules import compile_rule
    ev = normalise(detect.parse(b'<137>1 2026-03-13T04:30:00.123Z rx-01 SigmaIncident 4242 created '
                                b'[incident@32473 id="INC-1" risk_score="82"] {"incident_id":"INC-1"}'))
    assert compile_rule(text).match(ev) is want


@pytest.mark.parametrize("text", ["true == 1", "true false", "risk_score == true and"])
def test_literal_true_misused_is_a_syntax_error(text):
    from relay.rules import RuleSyntaxError, compile_rule
    with pytest.raises(RuleSyntaxError):
        compile_rule(text)

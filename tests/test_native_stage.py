"""The native stage (``parsers._speedups.stage_batch``, ``relay.pipeline.Pipeline._stage_native``)
against the Python stage (``parse_batch`` + ``stage_into``), in one process.

Both run the same listener batches, with per-message peers, through ``Pipeline.stage_rows``
for several configs: every sink kind and format with several sinks per event (the Python
callbacks), one sink per event (the inline C path: LEEF rendered natively, other formats by
their renderers), a sink with queue-metadata fields (XSOAR), a renderer that refuses some
events (dead letters), a lenient source (every message parsed by Python) and routes whose
rules raise.  The corpus is bench/differential.py's (the benchmark's varied traffic, samples,
Falcon lines, ../shared/vectors, the hostile corpus) plus generated RFC 5424 messages.
Compared: every sink's payloads and encoded queue metadata in order, every dead letter, every
counter of the registry (parsed, failed, routed, unrouted, render errors, sanitised) and the
rules' evaluation errors.  Under RELAY_PURE=1 the extension is loaded all the same (the
daemon would not use it, the test still compares it).
"""
from __future__ import annotations

import os
import random
import re
import sys
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parsers import native

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import differential  # noqa: E402

try:
    MOD = native.load_module()
except ImportError:
    MOD = None
pytestmark = pytest.mark.skipif(MOD is None, reason="the accelerator is not built")
RECEIVED = 1767225600.25

ROUTES_DEAD = '''
[routes.sigma_high]
match = 'app_name == "SigmaIncident" and risk_score >= 70'
sinks = ["leef"]

[routes.others]
match = 'not (app_name == "SigmaIncident")'
sinks = ["leef1"]
final = true

[routes.late]
match = 'severity exists'
sinks = ["cef"]
'''

#: every kind of comparison, on header fields, SD, the body, canonical and extra fields
ROUTES_ODD = '''
[routes.odd]
match = 'sd.incident@32473.risk_score > 50 and not (fields.extra.actor matches /^a/i)'
sinks = ["leef"]

[routes.lists]
match = 'body.risk_score in [77, 89, "91"] or user contains "doe" or hostname in ["fw-01", "rx-03"]'
sinks = ["cef", "leef"]

[routes.missing]
match = 'tactic not exists and severity != "low" and msgid != "created"'
sinks = ["leef1"]
final = true

[routes.none]
match = 'false'
sinks = ["json"]
'''


@pytest.fixture(scope="module")
def corpus():
    return differential.corpus(400)


def _peer(i: int):
    return (None, "10.1.2.3:514", "[::1]:6514")[i % 3]


def _run(p, cfg, msgs, sources, batch):
    from relay import rules
    from relay.metrics import REGISTRY
    from relay.queue.packing import encode_metas
    before, errs = REGISTRY.counters_snapshot(), rules.eval_errors()
    recs = []
    for sname in sources:
        src = cfg.sources[sname]
        for k in range(0, len(msgs), batch):
            rows, dead = {}, {}
            p.stage_rows([(raw, _peer(k + j)) for j, raw in enumerate(msgs[k:k + batch])], src, RECEIVED, rows, dead)
            recs.append(({s: (pl, encode_metas(m)) for s, (pl, m) in rows.items()},
                         {s: [(x, orjson.dumps(m), r) for x, m, r in d] for s, d in dead.items()}))
    after = REGISTRY.counters_snapshot()
    delta = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    return recs, delta, rules.eval_errors() - errs


def _both(monkeypatch, tmp_path, text: str, msgs: list, sources=("tcp", "lenient"), batch: int = 61, tweak=None):
    """-> (native records, Python records), asserting they are the same."""
    from relay import pipeline
    from relay.config import loads
    monkeypatch.setattr(pipeline, "_stage_batch", MOD.stage_batch)
    monkeypatch.setenv("DIFF_XSOAR_KEY", "k" * 32)
    cfg = loads(text, base_dir=tmp_path)
    out = []
    for on in (True, False):
        p = pipeline.Pipeline(cfg, committers={})
        if tweak is not None:
            tweak(p)
        if on:
            assert p._native_routes is not None
        else:
            p._native_routes = None
        out.append(_run(p, cfg, msgs, sources, batch))
    (nrecs, ndelta, nerr), (precs, pdelta, perr) = out
    assert len(nrecs) == len(precs)
    for i, (a, b) in enumerate(zip(nrecs, precs)):
        assert a == b, f"batch {i} differs"
    assert ndelta == pdelta
    assert nerr == perr
    return out


def test_every_sink_kind_several_sinks_per_event(monkeypatch, tmp_path, corpus):
    (recs, delta, _), _ = _both(monkeypatch, tmp_path, differential.SOURCES + differential.SINKS + differential.ROUTES,
                                corpus)
    assert sum(len(r[0].get("leef", ((), ()))[0]) for r in recs) > 1000
    assert any(k[0] == "relay_routed_total" for k in delta)


def test_one_sink_per_event_inline(monkeypatch, tmp_path, corpus):
    (recs, delta, _), _ = _both(monkeypatch, tmp_path,
                                differential.SOURCES + differential.SINKS + differential.ROUTES_SINGLE, corpus)
    n_leef = sum(len(r[0].get("leef", ((), ()))[0]) for r in recs)
    assert n_leef > 500
    assert any(r[0].get("xsoar") for r in recs)           # metadata fields: the Python callback
    parsed = sum(v for k, v in delta.items() if k[0] == "relay_parsed_total")
    failed = sum(v for k, v in delta.items() if k[0] == "relay_parse_failed_total")
    assert parsed + failed == 2 * len(corpus)


def test_refused_events_become_the_same_dead_letters(monkeypatch, tmp_path, corpus):
    def tweak(p):
        for s in ("leef", "cef"):
            render = p.renderers[s]

            def refusing(ev, routes=None, render=render):
                if ev.hostname and ev.hostname.endswith(("1", "3")):
                    raise ValueError(f"refused {ev.hostname}")
                return render(ev, routes)
            p.renderers[s] = refusing
            p._leef_specs[s] = None    # the wrapper must run: no inline LEEF
    (recs, delta, _), _ = _both(monkeypatch, tmp_path, differential.SOURCES + differential.SINKS + ROUTES_DEAD,
                                corpus, tweak=tweak)
    assert sum(len(r[1].get("leef", ())) for r in recs) > 50
    assert any(k[0] == "relay_render_errors_total" for k in delta)


def test_every_kind_of_rule(monkeypatch, tmp_path, corpus):
    (recs, delta, _), _ = _both(monkeypatch, tmp_path, differential.SOURCES + differential.SINKS + ROUTES_ODD, corpus,
                                sources=("tcp",))
    routed = {dict(k[1])["route"]: v for k, v in delta.items() if k[0] == "relay_routed_total"}
    assert routed.get("odd") and routed.get("lists") and routed.get("missing"), routed


def test_batches_of_one_and_of_thousands(monkeypatch, tmp_path, corpus):
    text = differential.SOURCES + differential.SINKS + differential.ROUTES_SINGLE
    _both(monkeypatch, tmp_path, text, corpus[:300], sources=("tcp",), batch=1)
    _both(monkeypatch, tmp_path, text, corpus, sources=("tcp",), batch=4000)


def test_benchmark_traffic_renders_inline(monkeypatch, tmp_path):
    """The benchmark's job must stay on the C path end to end: no Python renderer call."""
    from bench_e2e import message
    msgs = [message(i, i % 10 < 3).rstrip("\n").encode() for i in range(3000)]
    text = differential.SOURCES + differential.SINKS + differential.ROUTES_SINGLE
    calls = [0, 0]      # the native run's renderer calls, the Python run's
    runs = []

    def tweak(p):
        render = p.renderers["leef"]
        k = len(runs)
        runs.append(p)

        def counted(ev, routes=None):
            calls[k] += 1
            return render(ev, routes)
        p.renderers["leef"] = counted
    (recs, _, _), _ = _both(monkeypatch, tmp_path, text, msgs, sources=("tcp",), batch=500, tweak=tweak)
    n = sum(len(r[0].get("leef", ((), ()))[0]) for r in recs)
    assert n > 500
    # the Python renderer runs for the first event of each LEEF header only (it fills the
    # cache leef_line reads), on both paths: a few dozen of thousands
    assert calls[1] == n
    if native.leef_line is None:    # RELAY_PURE=1: no native LEEF line, the renderer renders each one
        assert calls[0] == n
    else:
        assert calls[0] < 100, calls


@st.composite
def _message(draw) -> bytes:
    """A benchmark message, often with a few bytes overwritten somewhere."""
    from bench_e2e import message
    m = message(draw(st.integers(0, 10 ** 6)), draw(st.booleans())).rstrip("\n").encode()
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(m)))
        junk = draw(st.binary(min_size=1, max_size=6))
        m = m[:cut] + junk + m[cut + len(junk):]
    return m


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(_message(), min_size=1, max_size=12))
def test_generated_batches_identical(monkeypatch, tmp_path, msgs):
    _both(monkeypatch, tmp_path, differential.SOURCES + differential.SINKS + differential.ROUTES_SINGLE, msgs,
          sources=("tcp",), batch=5)


# ----------------------------------------------------------------------------- the lane
#: routes whose programs the lane evaluates (comparisons of fields and header attributes,
#: and/or/not), each to one LEEF sink: the stage_batch lane's shape, with every value type
ROUTES_LANE = """
[routes.high]
match = 'app_name == "SigmaIncident" and risk_score >= 70'
sinks = ["leef"]
final = true

[routes.named]
match = 'hostname == "rx-03" or msgid == "closed" or severity == "low" or (status == "open" and not (user == "jdoe"))'
sinks = ["leefx"]
final = true

[routes.odd]
match = 'risk_score > "5" or facility >= 20 or pri < 10 or occurred_unix < 0 or name == "x" or tactic == "y" or extra == 1'
sinks = ["leef"]
final = true

[routes.low]
match = 'risk_score < 40'
sinks = ["leef"]

[routes.also]
match = 'risk_score < 20'
sinks = ["leef1"]
"""

#: edits of a benchmark message at each condition the lane checks (bytes -> bytes)
_LANE_EDITS = [
    lambda m: m.replace(b" created ", b" Created "), lambda m: m.replace(b" created ", b" - "),
    lambda m: m.replace(b" created ", b" closed "), lambda m: m.replace(b" created ", b" reopened "),
    lambda m: m.replace(b" created ", b" updated "), lambda m: re.sub(rb" rx-\d+ ", b" - ", m),
    lambda m: re.sub(rb"^<\d+>", b"<0>", m), lambda m: re.sub(rb"^<\d+>", b"<191>", m),
    lambda m: re.sub(rb"^<\d+>", b"<013>", m), lambda m: re.sub(rb"^<\d+>", b"<192>", m),
    lambda m: re.sub(rb"^(<\d+>)1 ", rb"\g<1>12 ", m), lambda m: re.sub(rb"^(<\d+>)1 ", rb"\g<1>01 ", m),
    lambda m: re.sub(rb"(\.\d{3})Z", rb"\1+02:00", m), lambda m: re.sub(rb"(\.\d{3})Z", rb"\g<1>456Z", m),
    lambda m: re.sub(rb"\.\d{3}Z", b"Z", m), lambda m: re.sub(rb"\d{4}-\d\d-\d\dT", b"2026-02-30T", m),
    lambda m: re.sub(rb"\d{4}-\d\d-\d\dT", b"2024-02-29T", m), lambda m: re.sub(rb"T\d\d:", b"T24:", m),
    lambda m: re.sub(rb"\d{4}-\d\d-\d\dT", b"0001-01-01T", m), lambda m: re.sub(rb"\d{4}-\d\d-\d\dT", b"9999-12-31T", m),
    lambda m: m.replace(b"] {", b'][meta@1 a="b"] {'), lambda m: m.replace(b"[incident@32473 ", b'[meta@1 a="b"][incident@32473 '),
    lambda m: m.replace(b"[incident@32473 ", b"[incident@1 "), lambda m: m.replace(b"] {", b' id="X"] {'),
    lambda m: m.replace(b'actor="', 'actor="jdo\u00e9'.encode()), lambda m: m.replace(b'actor="', b'actor="a\\"b'),
    lambda m: m.replace(b"] {", b' foo="bar"] {'), lambda m: m.replace(b"] {", b' actor_type="user"] {'),
    lambda m: m.replace(b"] {", b' related_case_ids="C-1"] {'), lambda m: m.replace(b"] {", b' x="1"  y="2"] {'),
    lambda m: re.sub(rb'risk_score="\d+"', b'risk_score="070"', m), lambda m: re.sub(rb'risk_score="\d+"', b'risk_score="0"', m),
    lambda m: re.sub(rb'risk_score="\d+"', b'risk_score="100"', m), lambda m: re.sub(rb'risk_score="\d+"', b'risk_score="150"', m),
    lambda m: re.sub(rb'risk_score="\d+"', b'risk_score="999"', m), lambda m: re.sub(rb'risk_score="\d+"', b'risk_score="1000"', m),
    lambda m: re.sub(rb'risk_score="\d+"', b'risk_score="-1"', m), lambda m: re.sub(rb'risk_score="\d+"', b'risk_score=""', m),
    lambda m: re.sub(rb' risk_score="\d+"', b"", m), lambda m: re.sub(rb'alarm_count="\d+"', b'alarm_count="01"', m),
    lambda m: re.sub(rb' alarm_count="\d+"', b"", m), lambda m: re.sub(rb'sigma_alert_count="\d+"', b'sigma_alert_count="x"', m),
    lambda m: re.sub(rb' threat_case_count="\d+"', b"", m), lambda m: re.sub(rb'actor="[^"]*"', b'actor=""', m),
    lambda m: re.sub(rb'actor="[^"]*"', b'actor="1abc"', m), lambda m: re.sub(rb'actor="[^"]*"', b'actor="a:b"', m),
    lambda m: re.sub(rb' actor="[^"]*"', b"", m), lambda m: re.sub(rb'entity="[^"]*"', b'entity=""', m),
    lambda m: re.sub(rb' entity="[^"]*"', b"", m), lambda m: re.sub(rb'status="[^"]*"', b'status="OPEN"', m),
    lambda m: re.sub(rb'status="[^"]*"', b'status=""', m), lambda m: re.sub(rb'status="[^"]*"', b'status="Closed"', m),
    lambda m: re.sub(rb'status="[^"]*"', b'status="weird"', m), lambda m: re.sub(rb'status="[^"]*"', b'status="in progress"', m),
    lambda m: re.sub(rb' status="[^"]*"', b"", m), lambda m: re.sub(rb' id="[^"]*"', b' id=""', m),
    lambda m: re.sub(rb' id="[^"]*"', b"", m), lambda m: re.sub(rb"\] \{.*", b"] {}", m),
    lambda m: re.sub(rb'"incident_id":"[^"]*"', b'"incident_id":"other"', m),
    lambda m: re.sub(rb'"incident_id":"[^"]*"', b'"incident_id":5', m),
    lambda m: re.sub(rb'"risk_score":(\d+)', rb'"risk_score":"\1"', m),
    lambda m: re.sub(rb'"risk_score":\d+', b'"risk_score":200', m), lambda m: re.sub(rb'"risk_score":\d+', b'"risk_score":-5', m),
    lambda m: re.sub(rb'"risk_score":(\d+)', rb'"risk_score":\1.0', m),
    lambda m: re.sub(rb'"risk_score":(\d+)', rb'"risk_score":\1,"risk_score":\1', m),
    lambda m: m.replace(b"{", b'{ "foo" : "x" ,', 1) if b"] {" in m else m,
    lambda m: m.replace(b"] {", b'] {"event":"x","timestamp":"t","created_at":3,'),
    lambda m: m.replace(b"] {", b'] { \t"event" : "x" ,\r\n'), lambda m: m.replace(b"] {", '] {"event":"\u00e9",'.encode()),
    lambda m: m.replace(b"] {", b'] {"event":{"a":1},'), lambda m: m + b" ", lambda m: m + b"x",
    lambda m: re.sub(rb"\] \{.*", b"] []", m), lambda m: m.replace(b"] {", b"]  {"), lambda m: re.sub(rb"\] \{.*", b"]", m),
    lambda m: m.replace(b"] {", b"] \xef\xbb\xbf{"), lambda m: re.sub(rb'actor="[^"]*"', b'actor="' + b"a" * 3000 + b'"', m),
    lambda m: re.sub(rb'entity="[^"]*"', b'entity="' + b"e" * 1500 + b'"', m),
    lambda m: re.sub(rb'actor="[^"]*"', b'actor="a\tb"', m), lambda m: re.sub(rb'actor="[^"]*"', b'actor="a^b"', m),
    lambda m: re.sub(rb'actor="[^"]*"', b'actor="a|b=c"', m), lambda m: re.sub(rb'entity="[^"]*"', b'entity="x\rb"', m),
    lambda m: m.replace(b"SigmaIncident", b"SigmaIncidents", 1), lambda m: m.replace(b"SigmaIncident", b"sigmaincident", 1),
]


def _lane_corpus(n: int, seed: int = 19) -> list[bytes]:
    """Benchmark messages, most with one or two of the edits above, some as they are."""
    from bench_e2e import message
    rng = random.Random(seed)
    out = []
    for i in range(n):
        m = message(rng.randrange(10 ** 6), rng.random() < 0.6).rstrip("\n").encode()
        for _ in range(rng.choice((0, 1, 1, 2))):
            m = rng.choice(_LANE_EDITS)(m)
        out.append(m)
    return out


def _lane_counts(fn):
    before = MOD.lane_stats()
    out = fn()
    after = MOD.lane_stats()
    return out, after[0] - before[0], after[1] - before[1]


def test_the_lane_takes_the_benchmark_traffic(monkeypatch, tmp_path):
    """The benchmark's job goes through the lane (no Event per message), with the rows, dead
    letters and counters of the Python stage."""
    from bench_e2e import message
    msgs = [message(i, i % 10 < 7).rstrip("\n").encode() for i in range(4000)]
    text = differential.SOURCES + differential.SINKS + """
[routes.high]
match = 'app_name == "SigmaIncident" and risk_score >= 70'
sinks = ["leef"]
final = true

[routes.rest]
match = 'true'
sinks = ["leefx"]
"""
    _, taken, declined = _lane_counts(lambda: _both(monkeypatch, tmp_path, text, msgs, sources=("tcp",), batch=1000))
    # every message but each batch's first (an Event: the run's count reads it) and the first
    # of each LEEF header (the Python renderer fills the cache the lane reads); under
    # RELAY_PURE=1 the renderer has no native LEEF line and keeps no such cache: no lane
    if native.leef_line is None:
        assert taken == 0, (taken, declined)
    else:
        assert taken >= 3800, (taken, declined)


def test_the_lane_on_near_misses_is_the_object_path(monkeypatch, tmp_path):
    """Messages one edit away from the lane's shape: each is staged by the lane or handed to
    the object path, and the result is the Python stage's, byte for byte."""
    msgs = _lane_corpus(3000)
    text = differential.SOURCES + differential.SINKS + ROUTES_LANE
    _, taken, declined = _lane_counts(lambda: _both(monkeypatch, tmp_path, text, msgs, sources=("tcp", "lenient"),
                                                    batch=53))
    assert (taken > 500 or native.leef_line is None) and declined > 500, (taken, declined)


def test_the_lane_keeps_each_sinks_leef_header(monkeypatch, tmp_path):
    """Events routed to three LEEF sinks with different headers (LEEF 2.0, LEEF 1.0 with its
    own vendor, product and version, a tab delimiter): each line has its own sink's header.
    The routes split on the user, which is not part of a header: events with the same header
    parts go to different sinks in one batch.  The lane remembers the headers it looked up per
    batch; their key is the renderer's (the facility, the band, host, app, msgid, profile and
    event id, which the sinks share) and the sink's own header cache, which it once lacked: a
    line got the header another sink had looked up for the same parts."""
    msgs = _lane_corpus(1500, seed=23)
    text = differential.SOURCES + differential.SINKS + """
[routes.a]
match = 'user == "jdoe"'
sinks = ["leef"]
final = true

[routes.b]
match = 'user == "asmith" or risk_score >= 90'
sinks = ["leef1"]
final = true

[routes.c]
match = 'not (user == "jdoe")'
sinks = ["leefx"]
"""
    (recs, _, _), taken, _ = _lane_counts(lambda: _both(monkeypatch, tmp_path, text, msgs, sources=("tcp",),
                                                        batch=150)[0])
    assert taken > 300 or native.leef_line is None, taken
    heads = {s: {line.split(b" - ", 2)[-1].split(b"|cat=")[0][:40] for r in recs for line in r[0].get(s, ((),))[0]}
             for s in ("leef", "leef1", "leefx")}
    assert all(heads.values()) and not (heads["leef"] & heads["leef1"]), heads


def test_the_lane_is_off_for_rules_it_cannot_evaluate(monkeypatch, tmp_path):
    from bench_e2e import message
    msgs = [message(i, True).rstrip("\n").encode() for i in range(300)]
    for rule in ('risk_score >= 70 and user contains "o"', 'user matches /o/', 'sd.incident@32473.risk_score == "70"',
                 'procid == "1001"', 'msgid in ["created", 1]', 'msgid in ["created", "1"]', 'user != true'):
        text = differential.SOURCES + differential.SINKS + f"[routes.r]\nmatch = '{rule}'\nsinks = [\"leef\"]\n"
        _, taken, declined = _lane_counts(lambda: _both(monkeypatch, tmp_path, text, msgs, sources=("tcp",), batch=100))
        assert taken == declined == 0, rule


def test_the_lane_takes_exists(monkeypatch, tmp_path):
    """``exists`` and ``not exists`` on a canonical field or a header field are presence tests
    the lane and the native stage evaluate without calling Python (relay.rules: their fast
    form), absent and None values included; ``extra`` (not a value the lane has) declines."""
    from relay import rules
    for text in ("risk_score exists", "tactic not exists", "hostname exists", "msgid not exists"):
        assert rules.compile_rule(text).program[0] == rules.P_CMP, text
    msgs = _lane_corpus(1500, seed=29)
    for rule in ('format exists', 'risk_score exists and user exists', 'tactic not exists and risk_score >= 70',
                 'not (entity exists) or msgid not exists', 'hostname exists and app_name exists'):
        text = differential.SOURCES + differential.SINKS + f"[routes.r]\nmatch = '{rule}'\nsinks = [\"leef\"]\n"
        _, taken, declined = _lane_counts(lambda: _both(monkeypatch, tmp_path, text, msgs, sources=("tcp",), batch=100))
        assert taken > 300 or native.leef_line is None, (rule, taken, declined)
    text = differential.SOURCES + differential.SINKS + "[routes.r]\nmatch = 'extra exists'\nsinks = [\"leef\"]\n"
    _, taken, declined = _lane_counts(lambda: _both(monkeypatch, tmp_path, text, msgs, sources=("tcp",), batch=100))
    assert taken == 0 and (declined > 300 or native.leef_line is None), (taken, declined)


def test_the_lane_takes_membership(monkeypatch, tmp_path):
    """``in`` / ``not in`` a list of plain strings or of numbers is set membership the lane and
    the native stage test themselves (relay.rules: the fast form), values of another kind, None
    and missing fields included; a mixed list, or a string that looks like a number or a
    boolean, keeps the usual closure."""
    from relay import rules
    for text, code in (('user in ["jdoe", "asmith"]', 8), ('status not in ["closed"]', 9), ("risk_score in [70, 77.5]", 8),
                       ('hostname not in ["rx-01"]', 9)):
        prog = rules.compile_rule(text).program
        assert prog[0] == rules.P_CMP and prog[4] == code, text
    for text in ('user in ["jdoe", 1]', 'user in ["10"]', 'user in ["true"]', "user in [true]"):
        assert rules.compile_rule(text).program[0] == rules.P_CALL, text
    msgs = _lane_corpus(1500, seed=31)
    for rule in ('user in ["jdoe", "asmith"] and risk_score >= 70', 'status not in ["closed", "open"]',
                 'risk_score in [70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 95.0]',
                 'hostname not in ["rx-01", "rx-02"] or risk_score not in [70]', 'msgid in ["created"]'):
        text = differential.SOURCES + differential.SINKS + f"[routes.r]\nmatch = '{rule}'\nsinks = [\"leef\"]\n"
        _, taken, declined = _lane_counts(lambda: _both(monkeypatch, tmp_path, text, msgs, sources=("tcp",), batch=100))
        assert taken > 300 or native.leef_line is None, (rule, taken, declined)


def test_the_lane_takes_not_equal(monkeypatch, tmp_path):
    """!= on a string or a number is a comparison the lane evaluates (relay.rules: its fast
    form, operator.ne), missing fields and other types included."""
    msgs = _lane_corpus(1500, seed=11)
    rules = ('risk_score >= 70 and status != "closed"', 'user != "jdoe" and risk_score != 77',
             'tactic != "x" or risk_score != 70')
    for rule in rules:
        text = differential.SOURCES + differential.SINKS + f"[routes.r]\nmatch = '{rule}'\nsinks = [\"leef\"]\n"
        _, taken, declined = _lane_counts(lambda: _both(monkeypatch, tmp_path, text, msgs, sources=("tcp",), batch=100))
        assert taken > 300 or native.leef_line is None, (rule, taken, declined)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(_message(), min_size=2, max_size=12))
def test_generated_batches_through_the_lane_identical(monkeypatch, tmp_path, msgs):
    _both(monkeypatch, tmp_path, differential.SOURCES + differential.SINKS + ROUTES_LANE, msgs, sources=("tcp",),
          batch=6)


def test_one_sender_batches_stage_as_their_pairs(monkeypatch, tmp_path):
    """A TCP read's batch (relay.pipeline.OneSender: the peer once) gives the rows, dead
    letters and counters of the same messages as (frame, peer) pairs, native and Python."""
    import pickle
    from relay import pipeline
    from relay.config import loads
    from relay.metrics import REGISTRY
    from relay.pipeline import OneSender
    monkeypatch.setattr(pipeline, "_stage_batch", MOD.stage_batch)
    monkeypatch.setenv("DIFF_XSOAR_KEY", "k" * 32)
    cfg = loads(differential.SOURCES + differential.SINKS + ROUTES_LANE, base_dir=tmp_path)
    msgs = _lane_corpus(400, seed=7) + differential.corpus(60)
    peer = "10.9.8.7:601"
    one = OneSender(peer, msgs)
    assert len(one) == len(msgs) and list(one[3:5]) == [(msgs[3], peer), (msgs[4], peer)]
    back = pickle.loads(pickle.dumps(one))
    assert type(back) is OneSender and back.peer == peer and back.frames == msgs
    out = []
    for native_on in (True, False):
        for batch_of in (lambda b: OneSender(peer, b), lambda b: [(m, peer) for m in b]):
            p = pipeline.Pipeline(cfg, committers={})
            if not native_on:
                p._native_routes = None
            before = REGISTRY.counters_snapshot()
            recs = []
            for src in ("tcp", "lenient"):
                for k in range(0, len(msgs), 61):
                    rows, dead = {}, {}
                    p.stage_rows(batch_of(msgs[k:k + 61]), cfg.sources[src], RECEIVED, rows, dead)
                    recs.append((rows, {s: [(x, orjson.dumps(m), r) for x, m, r in d] for s, d in dead.items()}))
            after = REGISTRY.counters_snapshot()
            out.append((recs, {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}))
    assert out[0] == out[1] == out[2] == out[3]
    with pytest.raises(TypeError):
        MOD.stage_batch(("p", "not a list"), 0.0, "s", None, False, (None,) * 10)


def test_many_routes_use_the_python_stage(tmp_path, monkeypatch):
    from relay import pipeline
    from relay.config import loads
    monkeypatch.setattr(pipeline, "_stage_batch", MOD.stage_batch)
    monkeypatch.setenv("DIFF_XSOAR_KEY", "k" * 32)
    routes = "".join(f'\n[routes.r{i}]\nmatch = \'risk_score >= {i}\'\nsinks = ["leef"]\n' for i in range(63))
    cfg = loads(differential.SOURCES + differential.SINKS + routes, base_dir=tmp_path)
    assert pipeline.Pipeline(cfg, committers={})._native_routes is None


def test_the_daemon_path_is_native_unless_pure():
    from relay import pipeline
    assert (pipeline._stage_batch is None) == (os.environ.get("RELAY_PURE", "") not in ("", "0"))


def test_bad_plans_are_refused():
    with pytest.raises(TypeError):
        MOD.stage_batch([], 0.0, "s", None, False, ())
    with pytest.raises(TypeError):
        MOD.stage_batch([], 0.0, "s", None, False, (None,) * 5 + (((None, 1, None),),) + (None,) * 4)
    with pytest.raises(TypeError):
        MOD.stage_batch([b"not a pair"], 0.0, "s", None, False,
                        (None, "x", "raw", None, None, (), None, None, None, lambda c, u: None))


# ----------------------------------------------------------------------------- rule programs
_PATHS = ("app_name", "hostname", "msgid", "severity", "pri", "time_unix", "msg", "format", "risk_score",
          "fields.risk_score", "user", "vendor", "name", "tactic", "extra", "extra.actor", "asset.criticality",
          "sd.incident@32473.risk_score", "sd.incident@32473", "body.risk_score", "body", "enrich.score",
          "meta.triage", "fields.extra.alarm_count")
_LITERALS = ('"SigmaIncident"', '"70"', '""', '"high"', '"rx-01"', "70", "0", "1.5", "-3", "1e3", "true", "false",
             "null")


def _rule_texts() -> list[str]:
    out = []
    k = 0
    for p in _PATHS:
        for op in ("==", "!=", "<", "<=", ">", ">="):
            lits = [x for x in _LITERALS if op in ("==", "!=") or x not in ("true", "false", "null")]
            for _ in range(4):      # four literals per path and operator, in rotation
                out.append(f"{p} {op} {lits[k % len(lits)]}")
                k += 1
        out += [f'{p} in ["SigmaIncident", 70, "77", true, null]', f"{p} not in [1, 2]", f'{p} contains "a"',
                f'{p} in ["SigmaIncident", "jdoe", "high", "rfc5424"]', f'{p} not in ["open", "x"]',
                f"{p} in [70, 82, 77.5, 130]", f"{p} not in [0.5, 7]",
                f"{p} matches /^[a-z]/i", f"{p} exists", f"{p} not exists"]
    out += ['app_name == "SigmaIncident" and risk_score >= 70', 'not (risk_score < 50) or hostname == "fw-01"',
            'true and (false or severity == "high")', 'risk_score > 10 and risk_score < 90 and user != "jdoe"',
            "not not (pri >= 130)"]
    return out


class _Boom(dict):
    """A mapping whose reads raise: the leaves count an error and say false."""

    def get(self, *a):
        raise RuntimeError("boom")

    def __bool__(self):
        return True


def _odd_events(evs: list) -> list:
    import copy
    out = []
    odd_values = ("77", 77.0, True, [70, 71], {"a": 1}, "", 10 ** 30, float("nan"), b"x", None)
    for i, ev in enumerate(evs):
        e = copy.copy(ev)
        k = i % 6
        if k == 1 and e.fields is not None:
            e.fields = dict(e.fields, risk_score=odd_values[i % len(odd_values)], user=odd_values[(i + 3) % len(odd_values)])
        elif k == 2:
            e.fields = None
            e.enrich = {"risk_score": 80, "user": "enriched", "asset": {"criticality": "high"}, "score": 5}
        elif k == 3:
            e.fields = _Boom()
        elif k == 4:
            e.sd = _Boom()
            e.meta = {"triage": "page"}
        elif k == 5:
            e.hostname = odd_values[i % len(odd_values)]
        out.append(e)
    return out


def test_rule_programs_evaluate_as_the_closures(corpus):
    """Every generated rule on every normalised corpus event (and on events with odd values,
    missing fields, raising mappings): the C evaluation of the program gives the closure's truth
    value and counts the same errors."""
    from parsers import detect
    from parsers.normalise import normalise
    from relay import rules
    evs = [normalise(detect.parse(raw, received=RECEIVED, source="s")) for raw in corpus[::30]]
    evs += _odd_events(evs[:180])
    n_prog = 0
    for text in _rule_texts():
        r = rules.compile_rule(text)
        if r.program is None:
            continue
        n_prog += 1
        for ev in evs:
            e0, g0 = r.errors, rules.eval_errors()
            want = bool(r.match(ev))
            e1, g1 = r.errors, rules.eval_errors()
            got = MOD.rule_eval(r.program, ev)
            assert got is want, (text, ev.raw)
            assert (r.errors - e1, rules.eval_errors() - g1) == (e1 - e0, g1 - g0), (text, ev.raw)
    assert n_prog > 200
    # the errors path ran: a raising mapping is counted and false on both
    r = rules.compile_rule("risk_score >= 70")
    ev = _odd_events(evs[:4])[3]
    before = r.errors
    assert MOD.rule_eval(r.program, ev) is False and r.errors == before + 1


def test_deep_rules_have_no_program():
    from relay import rules
    assert rules.compile_rule(" and ".join(["risk_score > 1"] * 3)).program is not None
    deep = rules.compile_rule("not " * 40 + "risk_score > 1")
    assert deep.program is None         # the guarded closure runs (a call from the native stage)


def test_malformed_programs_are_refused():
    from parsers.event import Event
    ev = Event()
    for prog in ((), (9, 1), (0,), (1, 5), (5, (0, "x"))):
        with pytest.raises(TypeError):
            MOD.rule_eval(prog, ev)


def test_the_stage_path_says_which_stage_runs_and_why(tmp_path, monkeypatch):
    from relay import pipeline
    from relay.config import loads
    monkeypatch.setenv("DIFF_XSOAR_KEY", "k" * 32)
    text = differential.SOURCES + differential.SINKS + differential.ROUTES_SINGLE
    monkeypatch.setattr(pipeline, "_stage_batch", MOD.stage_batch)
    assert pipeline.Pipeline(loads(text, base_dir=tmp_path), committers={}).stage_path() == "native"
    lk = (ROOT / "examples" / "lookups").resolve()
    enrich = loads(text + differential.ENRICH.format(lk=lk), base_dir=tmp_path)
    assert pipeline.Pipeline(enrich, committers={}, dry_run=True).stage_path() == "python (enrichment is configured)"
    monkeypatch.setattr(pipeline, "_stage_batch", None)
    assert pipeline.Pipeline(loads(text, base_dir=tmp_path), committers={}).stage_path().startswith("python (")

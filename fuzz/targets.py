"""The fuzz targets: one entry per decoder the relay exposes to a sender or an operator.

A target is ``Target(name, run, allowed, seeds)``:

* ``run(data: bytes)`` feeds one input to the code under test (bytes as a sender would send
  them; targets that take text decode them the way the relay does);
* ``allowed``: the exception types the code documents for bad input (``ParseError`` for the
  parsers, ``RuleSyntaxError`` for the rule compiler, ``ConfigError`` for the config loader,
  ``ValueError`` where a decoder documents it).  Anything else is a finding;
* ``seeds()``: the starting corpus (../shared/vectors, examples/samples, examples/cases, the
  bench messages), a list of bytes.

Adding a target is one entry in :data:`TARGETS` (the HTTP intake's body parsing and the
template rendering will be two entries once they exist: issues 15 and 16).
Used by fuzz/run.py (atheris, coverage-guided) and by tests/test_fuzz_regressions.py, which
replays every saved crasher (fuzz/crashers/<target>/) and the seeds in CI.
"""
from __future__ import annotations

import json
import os
import random
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("RELAY_SHARED") or ROOT.parent / "shared")

from parsers import cef as cef_dec  # noqa: E402
from parsers import detect, falcon, leef as leef_dec, normalise as norm, qradar, rfc3164, rfc5424  # noqa: E402
from parsers.event import ParseError  # noqa: E402
from parsers.framing import Deframer  # noqa: E402

__all__ = ["Target", "TARGETS", "seeds_for"]

RECEIVED = 1767225600.0


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], object]
    allowed: tuple
    seeds: Callable[[], list]
    doc: str = ""


# ----------------------------------------------------------------------------- seeds
def _vector_inputs(name: str) -> list[bytes]:
    out = []
    p = SHARED / "vectors" / name
    if not p.exists():
        return out
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            case = json.loads(line)
        except ValueError:
            continue
        v = case.get("input") if isinstance(case, dict) else None
        if isinstance(v, str):
            out.append(v.encode("utf-8", "surrogateescape"))
        elif isinstance(v, dict) and "b64" in v:
            import base64
            out.append(base64.b64decode(v["b64"]))
    return out


def _sample_lines() -> list[bytes]:
    out = []
    for p in sorted((ROOT / "examples").rglob("*.log")):
        out += [ln for ln in p.read_bytes().splitlines() if ln]
    return out


def _syslog_seeds() -> list[bytes]:
    return (_vector_inputs("rfc5424.jsonl") + _vector_inputs("rfc3164.jsonl") + _sample_lines()
            + [b'<13>Oct 11 22:14:15 ho\xffst app: m',
               b'<14>1 2026-01-01T00:00:00Z h a - - [x@1 actor="x\x00<14>1 - LEEF:2.0|Evil|F|1|x|^|sev=10"] m'])


def _falcon_seeds() -> list[bytes]:
    out = []
    p = SHARED / "vectors" / "falcon_samples.json"
    if p.exists():
        data = json.loads(p.read_text(encoding="utf-8"))
        items = data if isinstance(data, list) else list(data.values()) if isinstance(data, dict) else []
        for it in items:
            out.append(json.dumps(it).encode())
    s = ROOT / "examples" / "samples" / "falcon_alerts.json"
    if s.exists():
        out.append(s.read_bytes())
    return out or [b"{}"]


def _frames_seeds() -> list[bytes]:
    msgs = _syslog_seeds()[:50]
    lf = b"".join(m + b"\n" for m in msgs)
    octet = b"".join(b"%d %s" % (len(m), m) for m in msgs)
    cap = ROOT / "examples" / "cases" / "capture" / "tcp_mixed.bin"
    return [lf, octet, lf[:333] + octet[:777]] + ([cap.read_bytes()] if cap.exists() else [])


def _rule_seeds() -> list[bytes]:
    return [s.encode() for s in (
        'app_name == "SigmaIncident" and risk_score >= 70',
        'source == "falcon" or severity in ["high", "critical"]',
        'not (host matches "^db-[0-9]+$") and exists(user)',
        'extra.actor contains "admin" and asset.criticality >= 4',
        'ti.match == true and vuln.max_cvss >= 9.0', 'true', 'false',
        'msg matches "(a+)+b"', 'risk_score > -1e309',
    )]


def _config_seeds() -> list[bytes]:
    out = [(ROOT / "examples" / "relay.toml").read_bytes()]
    out += [b'[relay]\nstate_dir = "s"\nworkers = 2\n[sources.u]\ntype = "udp"\naddress = "127.0.0.1:5514"\n'
            b'[sinks.q]\ntype = "syslog"\naddress = "127.0.0.1:514"\nformat = "cef"\n'
            b'[routes.r]\nmatch = "true"\nsinks = ["q"]\n']
    return out


def seeds_for(target: Target) -> list[bytes]:
    return [s for s in target.seeds() if s]


# ----------------------------------------------------------------------------- runners
def _deframer(data: bytes) -> None:
    # the sender controls how its bytes are split across reads: cut at a byte the input picks
    d = Deframer(4096, "truncate")
    cut = data[0] % (len(data) + 1) if data else 0
    d.feed(data[:cut])
    d.feed(data[cut:])
    d.close()
    d.drain_problems()
    d2 = Deframer(512, "drop")
    d2.feed(data)
    d2.close(partial=True)


def _rfc5424(data: bytes) -> None:
    for lenient in (False, True):
        try:
            ev = rfc5424.parse(data, lenient=lenient)
        except ParseError:
            continue
        ev.syslog_dict()


def _rfc3164(data: bytes) -> None:
    try:
        ev = rfc3164.parse(data, received=RECEIVED)
    except ParseError:
        return
    _json_safe(ev.syslog_dict())


def _json_safe(obj) -> None:
    """What every JSON output of the relay needs: orjson must take it (no surrogates)."""
    import orjson
    orjson.dumps(obj)


def _normalise(data: bytes) -> None:
    """detect + the vendor normalisers + the generic mapping: what the stage runs per message."""
    ev = detect.parse(data, lenient=bool(data[:1] == b"<" and len(data) % 2), received=RECEIVED)
    norm.normalise(ev)
    _json_safe({"event": ev.fields, "syslog": ev.syslog_dict()})


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _cef(data: bytes) -> None:
    t = _text(data)
    for strict in (False, True):
        try:
            rec = cef_dec.parse(t, strict=strict)
        except ParseError:
            continue
        rec.header()


def _leef(data: bytes) -> None:
    t = _text(data)
    try:
        leef_dec.parse(t)
    except ParseError:
        pass
    try:
        leef_dec.parse(t, delimiter="|")
    except ParseError:
        pass


def _falcon(data: bytes) -> None:
    import orjson
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return
    if isinstance(obj, dict):
        try:                        # ValueError: documented, an object of no known shape
            _json_safe(falcon.normalise_dict(obj, notes=[]))
        except ValueError:
            pass
        if isinstance(obj.get("resources"), list):
            try:
                falcon.normalise_resources(obj)
            except ValueError:
                pass


def _qradar(data: bytes) -> None:
    import orjson
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return
    if isinstance(obj, dict):
        _json_safe(qradar.normalise_offense(obj, console_url="https://qradar.example"))


_RULE_EVENTS: list = []


def _rules(data: bytes) -> None:
    from relay.rules import RuleSyntaxError, compile_rule
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return                      # a TOML string is UTF-8: the loader never hands over anything else
    try:
        rule = compile_rule(text)
    except RuleSyntaxError:
        return
    if not _RULE_EVENTS:
        for m in _syslog_seeds()[:40]:
            ev = detect.parse(m, received=RECEIVED)
            norm.normalise(ev)
            _RULE_EVENTS.append(ev)
    evaluate = None
    if rule.program is not None:
        try:
            from parsers import native
            evaluate = native.load_module().rule_eval
        except ImportError:
            pass
    for ev in _RULE_EVENTS[:8]:
        e0 = rule.errors
        want = bool(rule(ev))
        e1 = rule.errors
        # the native evaluation of the rule's program: the same result, the same error count
        if evaluate is not None:
            got = evaluate(rule.program, ev)
            if got is not want or rule.errors - e1 != e1 - e0:
                raise AssertionError(f"rule program says {got}, the closures {want}: {text!r} on {ev.raw!r}")


def _config(data: bytes) -> None:
    import tempfile
    from relay.config import ConfigError, loads
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return                      # relay/config.load reports that itself (ConfigError)
    with tempfile.TemporaryDirectory() as d:
        try:
            loads(text, file="fuzz.toml", base_dir=Path(d), secrets=False)
        except ConfigError:
            pass


_native = None


def _native_diff(data: bytes) -> None:
    """Every piece of the native accelerator against the Python code on the input: its lines
    as one listener batch (detect.parse, every Event slot), normalised (the RhythmX fast
    path), rendered as LEEF and as CEF by renderers with the native lines/pairs and ones without
    (each kept across inputs, so header caches hit), and the whole input deframed in two reads with
    and without the native LF loop.  Any difference is a finding (AssertionError)."""
    global _native
    from formats import render
    from parsers import framing
    from parsers import normalise as norm
    if _native is None:
        from parsers import native
        mod = native.load_module()
        _native = (native.load_native()[0], native.parse_items_pure, native.differences, mod,
                   [(render.Renderer(render.RenderOptions(format="leef")),
                     render.Renderer(render.RenderOptions(format="cef"))) for _ in range(2)])
    fast, pure, differences, mod, renderers = _native
    items = [(ln, "10.0.0.1:514") for ln in data.split(b"\n")]
    _native_stage(mod, items, data)
    # the sinks' framing of packed rows: the input as one buffer, a payload per line and its LF
    from formats import syslog
    offs = [0]
    for ln, _ in items:
        offs.append(min(len(data), offs[-1] + len(ln) + 1))
    spans = [(data, offs[1:] if len(data) % 3 == 0 else offs)]
    for framing_ in ("lf", "octet"):
        want = syslog.frame_batch([data[a:z] for a, z in zip(spans[0][1], spans[0][1][1:])], framing_)
        got = mod.frame_spans(spans, framing_ == "octet")
        if (got is not None and (got, 0) != want) or (got is None and not want[1]):
            raise AssertionError(f"native frame_spans differs from frame_batch ({framing_}) on {data!r}")
    for a, b in zip(fast(items, False, RECEIVED, "fuzz"), pure(items, False, RECEIVED, "fuzz")):
        d = differences(a, b)
        if d:
            raise AssertionError(f"native and Python parse differ on {a.raw!r}: {d}")
    saved = norm._rx_fast, render._leef_line, render._leef_join, render._cef_line, framing._lf_frames
    try:
        outs = []
        for on, r in zip((True, False), renderers):
            norm._rx_fast = mod.rx_normalise if on else None
            render._leef_line, render._leef_join = (mod.leef_line, mod.leef_join) if on else (None, None)
            render._cef_line = mod.cef_line if on else None
            framing._lf_frames = mod.lf_frames if on else None
            evs = [norm.normalise(e) for e in pure(items, False, RECEIVED, "fuzz")]
            lines = []
            for e in evs:
                for rr in r:
                    try:
                        lines.append(rr.render(e))
                    except Exception as x:
                        lines.append(f"{type(x).__name__}: {x}")
            dfr = framing.Deframer(max_frame=200)
            cut = len(data) // 2
            frames = dfr.feed(data[:cut]) + dfr.feed(data[cut:]) + dfr.close()
            outs.append((evs, lines, [e.notes for e in evs], [rr.sanitised for rr in r], frames, dfr.drain_problems(), dfr.stats))
        (ea, la, na, sa, fa, pa, ta), (eb, lb, nb, sb, fb, pb, tb) = outs
        for a, b in zip(ea, eb):
            d = differences(a, b)
            if d:
                raise AssertionError(f"native and Python normalise/render differ on {a.raw!r}: {d}")
        if (la, sa) != (lb, sb):
            raise AssertionError(f"native and Python LEEF/CEF differ: {la!r} != {lb!r}")
        if (fa, pa, ta) != (fb, pb, tb):
            raise AssertionError(f"native and Python deframing differ on {data!r}")
    finally:
        norm._rx_fast, render._leef_line, render._leef_join, render._cef_line, framing._lf_frames = saved


_STAGE_CFG = '''
[sources.tcp]
type = "tcp"
address = "127.0.0.1:0"

[sinks.leef]
type = "syslog"
address = "127.0.0.1:1"
format = "leef"

[sinks.cef]
type = "syslog"
address = "127.0.0.1:2"
format = "cef"

[sinks.json]
type = "file"
path = "json.log"
format = "json"

[routes.high]
match = 'app_name == "SigmaIncident" and risk_score >= 70'
sinks = ["leef"]
final = true

[routes.falcon]
match = 'vendor == "CrowdStrike"'
sinks = ["cef", "leef"]
final = true

[routes.rest]
match = 'format exists'
sinks = ["json"]
'''
#: the same sinks, with routes the native stage's lane evaluates (comparisons, and/or/not)
_STAGE_CFG_LANE = _STAGE_CFG.split("[routes.high]")[0] + '''
[sinks.leef1]
type = "syslog"
address = "127.0.0.1:3"
format = "leef1"
leef_vendor = "Acme"
leef_version = "9"

[routes.high]
match = 'app_name == "SigmaIncident" and risk_score >= 70 and user exists'
sinks = ["leef"]
final = true

[routes.low]
match = 'risk_score < 70 or hostname in ["rx-01", "rx-07"] or severity == "low" or status not in ["open"] or tactic not exists'
sinks = ["leef1"]
final = true

[routes.rest]
match = 'true'
sinks = ["cef"]
'''
_stage = None

#: the SD params and body values of the benchmark's message that _lane_variants rewrites
_LANE_SLOTS = [re.compile(p) for p in (
    rb'(actor=")[^"]*(")', rb'(entity=")[^"]*(")', rb'(status=")[^"]*(")', rb'(risk_score=")[^"]*(")',
    rb'(alarm_count=")[^"]*(")', rb'( id=")[^"]*(")', rb'(threat_case_count=")[^"]*(")',
    rb'("incident_id":")[^"]*(")', rb'("risk_score":)\d+()', rb'^(<)\d+(>)', rb'( )created( \[)',
    rb'( )rx-\d+( )', rb'(\.)\d{3}(Z)')]


def _lane_variants(data: bytes) -> list[bytes]:
    """The benchmark's message with one to three of its values replaced by pieces of the input:
    the lane's shape, near misses and all, driven by the fuzz input (random mutations of whole
    lines seldom leave a message the lane takes).  A clean message first opens the run."""
    if str(ROOT / "bench") not in sys.path:
        sys.path.insert(0, str(ROOT / "bench"))
    from bench_e2e import message
    rng = random.Random(data)
    pieces = [p.replace(b'"', b"")[:40] for p in re.split(rb"[ \n]+", data)][:64] or [b""]
    out = [message(7, True).rstrip("\n").encode()]
    for _ in range(6):
        m = message(rng.randrange(10 ** 6), rng.random() < 0.6).rstrip("\n").encode()
        for _ in range(rng.randrange(1, 4)):
            piece = rng.choice(pieces)
            m = rng.choice(_LANE_SLOTS).sub(lambda mo: mo.group(1) + piece + mo.group(2), m, count=1)
        out.append(m)
    return out


def _native_stage(mod, items: list, data: bytes = b"") -> None:
    """The native stage (``stage_batch``) against ``parse_batch`` + ``stage_into`` on one batch:
    the same rows (payloads, encoded metadata) and dead letters for every sink.  Twice: with
    routes that call the rules' closures, and with routes the lane evaluates, the batch given
    twice over (the lane takes the messages after a run's first)."""
    global _stage
    from relay import pipeline
    from relay.queue.packing import encode_metas
    if _stage is None:
        from relay.config import loads
        _stage = []
        for text in (_STAGE_CFG, _STAGE_CFG_LANE):
            d = tempfile.mkdtemp(prefix="relay-fuzz-stage-")
            cfg = loads(text, base_dir=Path(d), secrets=False)
            saved = pipeline._stage_batch
            pipeline._stage_batch = mod.stage_batch
            try:
                on, off = pipeline.Pipeline(cfg, committers={}), pipeline.Pipeline(cfg, committers={})
            finally:
                pipeline._stage_batch = saved
            off._native_routes = None
            _stage.append((cfg.sources["tcp"], on, off))
    saved = pipeline._stage_batch
    pipeline._stage_batch = mod.stage_batch
    try:
        for k, (src, on, off) in enumerate(_stage):
            # the lane: the lines twice (no empty line ends the run), then variants of the
            # benchmark's message made from the input
            batch = items if k == 0 else ([it for it in items if it[0]] * 2
                                          + [(m, "10.0.0.2:514") for m in _lane_variants(data)])
            outs = []
            for p in (on, off):
                rows, dead = {}, {}
                p.stage_rows(batch, src, RECEIVED, rows, dead)
                outs.append(({s: (pl, encode_metas(m)) for s, (pl, m) in rows.items()},
                             {s: [(x, encode_metas([m]), r) for x, m, r in dl] for s, dl in dead.items()}))
            if outs[0] != outs[1]:
                raise AssertionError(f"the native stage and the Python stage differ on {[r for r, _ in batch]!r}")
    finally:
        pipeline._stage_batch = saved


def _native_seeds() -> list[bytes]:
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_e2e import message
    return _vector_inputs("rfc5424.jsonl") + _sample_lines() + [message(i, i % 2 == 0).encode() for i in range(20)]


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("deframer", _deframer, (), _frames_seeds, "parsers/framing.Deframer, reads split anywhere"),
    Target("rfc5424", _rfc5424, (), _syslog_seeds, "parsers/rfc5424.parse, strict and lenient"),
    Target("rfc3164", _rfc3164, (), _syslog_seeds, "parsers/rfc3164.parse, its JSON view"),
    Target("normalise", _normalise, (), _syslog_seeds,
           "parsers/detect + the RhythmX/Falcon/generic normalisers, the JSON of the result"),
    Target("cef", _cef, (), lambda: _vector_inputs("cef.jsonl"), "parsers/cef.parse, lenient and strict"),
    Target("leef", _leef, (), lambda: _vector_inputs("leef.jsonl"), "parsers/leef.parse"),
    Target("falcon", _falcon, (), _falcon_seeds, "parsers/falcon.normalise_dict on any JSON"),
    Target("qradar", _qradar, (), lambda: [b'{"id": 1, "magnitude": 5, "status": "OPEN"}'],
           "parsers/qradar.normalise_offense on any JSON"),
    Target("rules", _rules, (), _rule_seeds, "relay/rules.compile_rule and the compiled rule"),
    Target("config", _config, (), _config_seeds, "relay/config.loads (every kind's reader)"),
    Target("native", _native_diff, (), _native_seeds,
           "parsers/_speedups.c (the native accelerator: parse, normalise, LEEF, CEF, deframing, the whole "
           "stage of a batch) against the Python code"),
)}
# Documented error types are caught inside each runner (ParseError, RuleSyntaxError,
# ConfigError): any exception that escapes a runner is a finding.

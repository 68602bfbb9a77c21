"""The native accelerator (parsers/_speedups.c, parsers/native.py) against the pure Python path.

Both paths run in this process (``parsers.native.load_native`` loads the extension whatever
RELAY_PURE says) on every input there is: ../shared/vectors, the hostile corpus of
bench/differential.py, the benchmark's varied traffic, the example samples, generated RFC 5424
messages (hypothesis) and random bytes; each Event is compared slot by slot (value, type, dict
order, float repr, error offset/reason/kind: ``parsers.native.differences``), alone and in
mixed batches with per-message peers.  The whole stage (every sink's payload bytes and queue
metadata) is compared by bench/differential.py, run once with the accelerator and once with
RELAY_PURE=1.  The accelerator must be built (scripts/setup builds it); RELAY_PURE=1 runs
everything here but ``test_the_accelerator_is_built`` against the extension all the same.
"""
from __future__ import annotations

import copy
import json
import os
import platform
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parsers import detect, native
from parsers.event import Event

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import differential  # noqa: E402
from bench_e2e import message  # noqa: E402

PURE = os.environ.get("RELAY_PURE", "") not in ("", "0")
RECEIVED = 1767225600.25
try:
    parse_items_native, parse_one = native.load_native()
except ImportError as e:     # test_the_accelerator_is_built says so; the rest cannot run
    parse_items_native = parse_one = None
    WHY_NOT = str(e)
needs_native = pytest.mark.skipif(parse_items_native is None, reason="the accelerator is not built")


def test_the_accelerator_is_built():
    assert parse_items_native is not None, f"parsers._speedups does not load: {WHY_NOT} (run scripts/setup)"
    if PURE:
        assert not native.ACTIVE and native.WHY == "RELAY_PURE is set"
    else:
        assert native.ACTIVE, native.WHY
        assert native.parse_items is not native.parse_items_pure


def _version(env_pure: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RELAY_PURE"}
    if env_pure:
        env["RELAY_PURE"] = "1"
    out = subprocess.run([sys.executable, "-c", "from relay.cli import main; main()", "version", "--json"],
                         env=env, capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


@needs_native
def test_an_accelerator_built_from_other_sources_is_not_used(monkeypatch):
    """The Python code and the C code hand each other programs and tables whose shapes change
    together (a rule program's op codes, say): a module whose ABI is not parsers.native.ABI
    (a stale build beside newer code) is refused with the reason, and the Python path runs."""
    from parsers import _speedups
    assert _speedups.ABI == native.ABI
    monkeypatch.setattr(_speedups, "ABI", native.ABI - 1)
    mod, why = native._import()
    assert mod is None and "built from other sources" in why and "rebuild" in why
    monkeypatch.delattr(_speedups, "ABI")
    assert native._import()[0] is None


def test_relay_version_names_the_path_and_relay_pure_forces_python():
    on, off = _version(False), _version(True)
    assert on["hot_path"] == "native" and "_speedups" in on["hot_path_detail"], on
    assert off["hot_path"] == "python" and off["hot_path_detail"] == "RELAY_PURE is set", off
    assert (on["udp_receive"], off["udp_receive"]) == ("recvmmsg", "recvfrom")
    text = subprocess.run([sys.executable, "-c", "from relay.cli import main; main()", "version"],
                          capture_output=True, text=True, timeout=60, check=True,
                          env={**os.environ, "RELAY_PURE": "1"}).stdout
    assert "hot path: python: RELAY_PURE is set" in text


# ----------------------------------------------------------------------------- comparison
def _peer(i: int):
    return (None, "10.1.2.3:514", "[::1]:6514")[i % 3]


def _compare(msgs: list[bytes], batch: int = 37) -> tuple[int, int]:
    """Both paths over ``msgs`` in batches (peers varying within a batch) and one by one;
    -> (messages, covered by C).  Fails on the first difference."""
    covered = 0
    for k in range(0, len(msgs), batch):
        items = [(m, _peer(k + j)) for j, m in enumerate(msgs[k:k + batch])]
        got = parse_items_native(items, False, RECEIVED, "src")
        want = native.parse_items_pure(items, False, RECEIVED, "src")
        assert len(got) == len(want)
        for (raw, _), a, b in zip(items, got, want):
            d = native.differences(a, b)
            assert not d, f"native and Python differ on {raw!r}: {d}"
            one = parse_one(raw)
            if one is not None:
                covered += 1
                # parse_one covers exactly what parse_items covers, and what it covers parses
                assert b.error is None, f"C accepted {raw!r}, Python says {b.error.reason}"
                b.received = b.peer = b.source = None
                assert not native.differences(one, b), raw
    return len(msgs), covered


def _vectors(name: str) -> list[bytes]:
    out = []
    for line in (differential.SHARED / "vectors" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            case = json.loads(line)
        except ValueError:
            continue
        if "input_hex" in case:
            out.append(bytes.fromhex(case["input_hex"]))
        elif isinstance(case.get("input"), str):
            out.append(case["input"].encode("utf-8", "surrogateescape"))
    return out


@needs_native
def test_benchmark_traffic_is_all_covered_and_identical():
    msgs = [message(i, i % 10 < 3).rstrip("\n").encode() for i in range(5000)]
    n, covered = _compare(msgs)
    assert covered == n      # the benchmark's shape must stay on the fast path


@needs_native
def test_vectors_identical():
    vec = _vectors("rfc5424")
    n, covered = _compare(vec)
    assert n > 300
    # 63 of the 311 vectors are the covered valid shape (escapes, BOMs, empty SD elements and
    # every invalid message go to Python); a drop means the fast path lost a shape
    assert covered >= 60, covered
    for name in ("rfc3164", "cef", "leef"):    # other formats: all Python, through the batch call
        n, covered = _compare(_vectors(name))
        assert n > 0


@needs_native
def test_samples_and_hostile_corpus_identical():
    samples = []
    for f in sorted((ROOT / "examples" / "samples").glob("*.log")):
        samples += [x for x in f.read_bytes().splitlines() if x]
    n, covered = _compare(samples)
    assert covered > 0
    rng = random.Random(19)
    base = [message(i, True).rstrip("\n").encode() for i in range(500)] + _vectors("rfc5424")
    hostile = differential._hostile(rng, base, 6000)
    n, covered = _compare(hostile)
    assert n == 6000 and covered > 500, covered


@needs_native
def test_mutants_identical():
    """Seeded byte mutations biased to the syntax bytes the C code decides on."""
    rng = random.Random(5424)
    base = [message(i, True).rstrip("\n").encode() for i in range(300)] + _vectors("rfc5424")
    syntax = b'<> []="\\-:.TZ+0123456789\xef\xbb\xbf\x00\xff\xc3\xa9'
    out = []
    for _ in range(20000):
        b = bytearray(rng.choice(base))
        for _ in range(rng.randint(1, 3)):
            op = rng.randrange(3)
            pos = rng.randrange(len(b) + 1)
            if op == 0 and pos < len(b):
                b[pos] = rng.choice(syntax)
            elif op == 1:
                b[pos:pos] = bytes([rng.choice(syntax)])
            elif pos < len(b):
                del b[pos]
        out.append(bytes(b))
    n, covered = _compare(out)
    assert covered > 2000, covered


# ----------------------------------------------------------------------------- generated
_print = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=6)
_field = st.one_of(st.just("-"), _print, st.sampled_from(["h" * 255, "h" * 256, "a" * 48, "a" * 49, "m" * 32,
                                                          "m" * 33, "héllo", "a\tb"]))
_digits = st.integers(0, 9).map(str)


@st.composite
def _valid_timestamp(draw):
    y, mo = draw(st.integers(1, 9999)), draw(st.integers(1, 12))
    d = draw(st.integers(1, 31 if mo != 2 else 29))
    frac = draw(st.sampled_from(["", ".0", ".5", ".123", ".000001", ".999999", ".25", ".1"]))
    off = draw(st.sampled_from(["Z", "+00:00", "-00:00", "+23:59", "-05:30", "+01:00"]))
    return (f"{y:04d}-{mo:02d}-{d:02d}T{draw(st.integers(0, 23)):02d}:{draw(st.integers(0, 59)):02d}:"
            f"{draw(st.integers(0, 59)):02d}{frac}{off}")


@st.composite
def _timestamp(draw):
    k = draw(st.integers(0, 9))
    if k == 0:
        return "-"
    if k < 8:
        return draw(_valid_timestamp())
    y = draw(st.sampled_from(["0000", "0001", "1969", "1970", "2000", "2024", "2026", "2100", "9999", "99"]))
    mo = draw(st.sampled_from(["01", "02", "12", "13", "00", "1"]))
    d = draw(st.sampled_from(["01", "28", "29", "30", "31", "32", "00"]))
    h = draw(st.sampled_from(["00", "23", "24"]))
    mi = draw(st.sampled_from(["00", "59", "60"]))
    s = draw(st.sampled_from(["00", "59", "60", "5"]))
    frac = draw(st.sampled_from(["", ".", ".0", ".123", ".999999", ".1234567", ".000001", ".5"]))
    off = draw(st.sampled_from(["Z", "+00:00", "-00:00", "+23:59", "-24:00", "+05:60", "+0530", "z", ""]))
    sep = draw(st.sampled_from(["T", "T", "T", "t", " "]))
    return f"{y}-{mo}-{d}{sep}{h}:{mi}:{s}{frac}{off}"


_value = st.one_of(st.text(max_size=12), st.sampled_from(["", '\\"', "\\\\", "\\]", "a]b", 'q"', "\\x", "é", "\ufeff",
                                                          "\udcff", "x" * 300]))
_name = st.one_of(_print.filter(lambda s: not any(c in s for c in '="] ')),
                  st.sampled_from(["a", "n" * 32, "n" * 33, "a=b", "a b", "é", "id@32473"]))


_plain_name = st.text(st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters='="] \\'),
                      min_size=1, max_size=8)
_plain_value = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters='"\\]'), max_size=10)


@st.composite
def _sd(draw):
    if draw(st.integers(0, 5)) == 0:
        return "-"
    hostile = draw(st.integers(0, 3)) == 0      # else the covered shape, with its edge values
    name, value = (_name, _value) if hostile else (_plain_name, _plain_value)
    out = []
    for _ in range(draw(st.integers(1, 3))):
        sid = draw(name)
        params = "".join(f' {draw(name)}="{draw(value)}"'
                         for _ in range(draw(st.integers(0 if hostile else 1, 4))))
        out.append(f"[{sid}{params}]")
    return "".join(out)


@st.composite
def _rfc5424_message(draw) -> bytes:
    pri = draw(st.one_of(st.integers(0, 191).map(str), st.sampled_from(["192", "013", "999", "", "1000"])))
    ver = draw(st.sampled_from(["1"] * 12 + ["2", "10", "999", "0", "01", "1000"]))
    field = _print if draw(st.integers(0, 3)) else _field
    parts = [f"<{pri}>{ver}", draw(_timestamp()), draw(field), draw(field), draw(field), draw(field)]
    text = " ".join(parts) + " " + draw(_sd())
    tail = draw(st.sampled_from(["", " ", " hello", " \ufeffbom", " \ufeff", " caf\xe9 \u2028 x", "  two spaces",
                                 "x", " {\"json\": 1}", " a", " \udcff\udc80 raw", " tab\there"]))
    data = (text + tail).encode("utf-8", "surrogateescape")
    if draw(st.integers(0, 9)) == 0:   # raw bytes: invalid UTF-8, NUL, CR
        pos = draw(st.integers(0, len(data)))
        data = data[:pos] + draw(st.sampled_from([b"\xff", b"\x00", b"\r", b"\xc3", b"\xed\xa0\x80"])) + data[pos:]
    return data


@needs_native
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_rfc5424_message(), min_size=1, max_size=8))
def test_generated_messages_identical(msgs):
    _compare(msgs, batch=len(msgs))


@needs_native
@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=120).map(lambda b: b"<13>1 " + b if b[:1] == b"a" else b), max_size=6))
def test_random_bytes_identical_and_no_crash(msgs):
    _compare(msgs, batch=len(msgs) or 1)


# ----------------------------------------------------------------------------- the batch call
@needs_native
def test_batch_contract():
    ok = b'<13>1 2026-12-05T10:00:00Z h a p m [x@1 k="v"] msg'
    assert parse_items_native([], False, RECEIVED, "s") == []
    evs = parse_items_native([(ok, "p1"), (b"garbage", "p2"), (ok, None)], False, RECEIVED, "s")
    assert [e.peer for e in evs] == ["p1", "p2", None]
    assert [e.format for e in evs] == ["rfc5424", "rfc3164", "rfc5424"]
    assert all(e.source == "s" and e.received == RECEIVED for e in evs)
    assert evs[0].raw is ok and evs[0].sd == {"x@1": {"k": "v"}}
    # lenient sources take the Python path whole
    lenient = parse_items_native([(ok + b"  ", "p")], True, RECEIVED, "s")[0]
    assert lenient.msg == "msg" and lenient.notes == ["surrounding whitespace trimmed"]
    with pytest.raises(TypeError, match="pair"):
        parse_items_native([ok], False, RECEIVED, "s")
    with pytest.raises(TypeError):
        parse_items_native(((ok, None),), False, RECEIVED, "s")    # a list, not a tuple
    # a fallback that raises: the exception, nothing half-built
    from parsers import _speedups

    def boom(raw, peer):
        raise RuntimeError("fallback failed")
    with pytest.raises(RuntimeError, match="fallback failed"):
        _speedups.parse_items([(ok, None), (b"x", None)], RECEIVED, "s", boom)


@needs_native
def test_configure_refuses_another_event_class():
    from parsers import _speedups

    class Other:
        __slots__ = ("format", "pri")
    with pytest.raises(TypeError, match="slots"):
        _speedups.configure(Other, "rfc5424")
    # the module still builds real Events
    ev = _speedups.parse_one(b"<13>1 - - - - - -")
    assert type(ev) is Event and ev.format == "rfc5424"


# ----------------------------------------------------------------------------- the whole stage
def test_whole_stage_identical_with_and_without_the_accelerator(tmp_path):
    """bench/differential.py dump (every sink kind and format, enrichment, lenient and strict
    sources, pulled events) in a process with the accelerator and one with RELAY_PURE=1: every
    payload byte and every queue metadata must be the same."""
    if parse_items_native is None:
        pytest.fail(f"the accelerator is not built: {WHY_NOT}")
    outs = []
    for pure in (False, True):
        env = {k: v for k, v in os.environ.items() if k != "RELAY_PURE"}
        if pure:
            env["RELAY_PURE"] = "1"
        out = tmp_path / f"dump-{int(pure)}.jsonl"
        code = ("import sys; sys.argv[1:] = ['dump', '--out', %r, '-n', '1500']; sys.path.insert(0, %r); "
                "from parsers import native; print('hot path', native.ACTIVE); "
                "import differential; sys.exit(differential.main())" % (str(out), str(ROOT / "bench")))
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                           cwd=ROOT)
        assert r.returncode == 0, r.stderr[-2000:]
        assert f"hot path {not pure}" in r.stdout, r.stdout
        outs.append(out)
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "differential.py"), "compare", *map(str, outs)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:]
    assert " 0 differ" in r.stdout.splitlines()[-1]


def test_the_daemon_reports_its_hot_path(tmp_path):
    """relay_info{hot_path} on /metrics and the start log line say which path runs."""
    from tests.harness import free_port
    import time
    import urllib.request
    mport, port = free_port(), free_port()
    conf = tmp_path / "relay.toml"
    conf.write_text(f"""
[relay]
state_dir = "{tmp_path / 'state'}"
metrics_address = "127.0.0.1:{mport}"
[sources.tcp]
type = "tcp"
address = "127.0.0.1:{port}"
[sinks.f]
type = "file"
path = "{tmp_path / 'out.log'}"
[routes.all]
match = "true"
sinks = ["f"]
""")
    for pure in (False, True):
        env = {k: v for k, v in os.environ.items() if k != "RELAY_PURE"}
        if pure:
            env["RELAY_PURE"] = "1"
        log = open(tmp_path / f"log-{pure}", "wb")
        p = subprocess.Popen([sys.executable, "-c", "from relay.cli import main; main()", "run", "--config", str(conf)],
                             env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            deadline = time.monotonic() + 30
            body = ""
            while time.monotonic() < deadline and "relay_info" not in body:
                assert p.poll() is None, (tmp_path / f"log-{pure}").read_text()
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=2) as r:
                        body = r.read().decode()
                except OSError:
                    time.sleep(0.1)
            want = "python" if pure or parse_items_native is None else "native"
            assert f'hot_path="{want}"' in body
        finally:
            p.terminate()
            p.wait(timeout=30)
            log.close()
        text = (tmp_path / f"log-{pure}").read_text()
        assert f"hot path {want} (" in text, text[-2000:]


def test_detect_is_the_reference():
    """The pure path is detect.parse itself, message by message (what RELAY_PURE=1 runs)."""
    items = [(b"<13>1 - h a - - - x", "p"), (b"<13>Dec  5 10:00:00 h t: x", None)]
    got = native.parse_items_pure(items, False, RECEIVED, "s")
    want = [detect.parse(r, received=RECEIVED, peer=p, source="s") for r, p in items]
    assert all(not native.differences(a, b) for a, b in zip(got, want))


# ----------------------------------------------------------------------------- the normaliser
try:
    rx_native = native.load_module().rx_normalise
except ImportError:
    rx_native = None

_RX_NAMES = ("id", "risk_score", "status", "actor", "actor_type", "entity", "alarm_count", "sigma_alert_count",
             "threat_case_count", "related_case_ids", "severity", "other")
_RX_VALUES = ("", "0", "00", "+7", "\u0667", "7", "77", "100", "101", "999", "1000", "0077", "-3", "1.5", "x", "INC-1", "INC-2",
              "asmith", "10.0.0.1", "::1", "3com", "a:b", "OPEN", "Open", "In Progress", " ", "closed",
              "caf\u00e9", "a,b, c", "user", "host")
_RX_BODY_KEYS = ("incident_id", "risk_score", "status", "event", "timestamp", "created_at", "title", "actor",
                 "user", "mitre_tactics", "alarm_count", "extra_key", "risk_level")
_RX_BODY_VALUES = (None, 0, 77, 101, -5, True, 1.5, "INC-1", "INC-2", "77", "open", "OPEN", "",
                   "2026-03-13T04:00:00.001Z", [], ["TA0001"], {"k": 1})


def _rx_message(rng: random.Random) -> bytes:
    """A SigmaIncident message of the common shape with 0-3 things changed at random (a param
    dropped, added or given an odd value, the body changed, another time or MSGID...)."""
    params = {"id": "INC-1", "actor": rng.choice(("asmith", "jdoe", "")), "entity": "DR Site", "status": "OPEN",
              "risk_score": rng.choice(("12", "45", "65", "77", "85", "100")), "alarm_count": "2",
              "sigma_alert_count": "1", "threat_case_count": "0"}
    body = {"incident_id": "INC-1", "risk_score": int(params["risk_score"])}
    st_ = {"ts": "2026-03-13T04:00:00.001Z", "msgid": "created", "app": "SigmaIncident", "sd_id": "incident@32473",
           "msg": None}

    def change():
        r = rng.randrange(9)
        if r == 0:
            params.pop(rng.choice(list(params) or ["id"]), None)
        elif r in (1, 2):
            params[rng.choice(_RX_NAMES)] = rng.choice(_RX_VALUES)
        elif r == 3:
            body.pop(rng.choice(list(body) or ["x"]), None)
        elif r == 4:
            body[rng.choice(_RX_BODY_KEYS)] = rng.choice(_RX_BODY_VALUES)
        elif r == 5:
            st_["ts"] = rng.choice(("2026-03-13T04:00:00Z", "2026-03-13T04:00:00.001234Z",
                                    "2026-03-13T06:00:00.001+02:00", "-"))
        elif r == 6:
            st_["msgid"] = rng.choice(("Closed", "UPDATED", "reopened", "-", "x", "cr\u00e9\u00e9"))
        elif r == 7:
            st_["app"], st_["sd_id"] = rng.choice((("Other", "incident@32473"), ("SigmaIncident", "incident@99999"),
                                                   ("SigmaIncident", "other@1")))
        else:
            st_["msg"] = rng.choice(("", " ", " {", ' {"a":', " [1]", " 7", " plain text",
                                     ' {"incident_id":"INC-1"} x'))
    for _ in range(rng.choice((0, 1, 1, 2, 3))):
        change()
    esc = lambda v: v.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")  # noqa: E731
    sd = "[" + st_["sd_id"] + "".join(f' {k}="{esc(v)}"' for k, v in params.items()) + "]" if params else "-"
    msg = st_["msg"] if st_["msg"] is not None else " " + json.dumps(body, separators=(",", ":"))
    return f"<134>1 {st_['ts']} rx-01 {st_['app']} 1001 {st_['msgid']} {sd}{msg}".encode("utf-8")


def _compare_rx(msgs: list[bytes]) -> int:
    """The C normaliser against parsers.rhythmx.normalise on fresh Events of each message;
    -> how many the C path covered.  Not covered must leave the event untouched."""
    from parsers import rhythmx
    covered = 0
    for raw in msgs:
        a = detect.parse(raw, received=RECEIVED, peer="10.0.0.9:514", source="src")
        b = detect.parse(raw, received=RECEIVED, peer="10.0.0.9:514", source="src")
        if rx_native(a):
            covered += 1
        else:
            same = detect.parse(raw, received=RECEIVED, peer="10.0.0.9:514", source="src")
            assert not native.differences(a, same), f"C changed an event it did not cover: {raw!r}"
            rhythmx.normalise(a)
        rhythmx.normalise(b)
        d = native.differences(a, b)
        assert not d, f"native and Python normalise differ on {raw!r}: {d}"
    return covered


@pytest.mark.skipif(rx_native is None, reason="the accelerator is not built")
def test_normaliser_identical_on_traffic_vectors_and_near_misses():
    traffic = [message(i, i % 10 < 3).rstrip("\n").encode() for i in range(3000)]
    assert _compare_rx(traffic) == len(traffic)       # the benchmark's shape stays on the C path
    vec = [m for name in ("rfc5424", "rfc3164", "cef", "leef") for m in _vectors(name)]
    samples = [x for f in sorted((ROOT / "examples" / "samples").glob("*.log")) for x in f.read_bytes().splitlines()
               if x]
    base = traffic[:500] + _vectors("rfc5424")
    _compare_rx(vec + samples + differential._hostile(random.Random(3), base, 3000))
    rng = random.Random(19)
    near = [_rx_message(rng) for _ in range(20000)]
    covered = _compare_rx(near)
    assert 0.2 * len(near) < covered < 0.8 * len(near), covered   # both paths exercised


@pytest.mark.skipif(rx_native is None, reason="the accelerator is not built")
@settings(max_examples=300, deadline=None)
@given(st.randoms(use_true_random=False))
def test_normaliser_identical_on_generated_messages(rng):
    _compare_rx([_rx_message(rng) for _ in range(20)])


@pytest.mark.skipif(rx_native is None, reason="the accelerator is not built")
def test_normaliser_sees_the_same_status_cache():
    """A status the cache has not seen goes through canonical_status (which caches it)."""
    from parsers import schema
    raw = b'<134>1 2026-03-13T04:00:00.001Z rx SigmaIncident 1 created [incident@32473 id="INC-9" ' \
          b'risk_score="80" status="Never Seen-Before 42"] {"incident_id":"INC-9"}'
    schema._STATUS_CACHE.pop("Never Seen-Before 42", None)
    assert _compare_rx([raw]) == 1
    assert schema._STATUS_CACHE["Never Seen-Before 42"] == "never_seen_before_42"


# ----------------------------------------------------------------------------- LEEF rendering
_ODD_VALUES = (None, "", "x", "caf\u00e9", "a^b", "a\nb", "a\tb", 0, -7, 2**70, True, False, 1.5, [], ["a", "b"],
               [1, None], {"k": "v"}, ("t",), "=", "\\")


def _render_both(evs: list, fmt: str, names: tuple = ("leef_line", "leef_join"), **opts) -> list:
    """Each event rendered by a renderer with the native helpers ``names`` (formats.render's
    ``_leef_line``, ``_leef_join``, ``_cef_line``) and by one with the Python code only, each
    renderer kept over the whole list (its header caches fill as in a sink); -> how many events
    each native helper took.  Bytes, errors, notes and sanitising counts must be the same."""
    import copy

    from formats import render
    mod = native.load_module()
    used = [0] * len(names)

    def counting(i, fn):
        def wrapped(*a):
            r = fn(*a)
            used[i] += r is not None
            return r
        return wrapped
    helpers = (tuple(counting(i, getattr(mod, n)) for i, n in enumerate(names)), (None,) * len(names))
    renderers = [render.Renderer(render.RenderOptions(format=fmt, **opts)) for _ in helpers]
    saved = tuple(getattr(render, "_" + n) for n in names)
    try:
        for ev in evs:
            outs = []
            for fns, r in zip(helpers, renderers):
                for n, fn in zip(names, fns):
                    setattr(render, "_" + n, fn)
                e = Event.__new__(Event)          # a copy: the render may add notes
                for slot in Event.__slots__:
                    setattr(e, slot, getattr(ev, slot))
                e.fields, e.notes = copy.deepcopy(ev.fields), list(ev.notes) if ev.notes else ev.notes
                try:
                    out = r.render(e)
                except Exception as x:          # the same error both ways
                    out = f"{type(x).__name__}: {x}"
                outs.append((out, e.notes, r.sanitised))
            assert outs[0] == outs[1], f"native and Python {fmt} differ on {ev!r} {ev.fields!r}: {outs}"
    finally:
        for n, fn in zip(names, saved):
            setattr(render, "_" + n, fn)
    return used


@pytest.mark.skipif(rx_native is None, reason="the accelerator is not built")
def test_leef_identical_on_normalised_traffic_and_odd_fields():
    from parsers.normalise import normalise
    raws = [message(i, True).rstrip("\n").encode() for i in range(300)]
    raws += [x for f in sorted((ROOT / "examples" / "samples").glob("*.log")) for x in f.read_bytes().splitlines() if x]
    raws += _vectors("rfc5424")[:300] + _vectors("cef")[:100] + _vectors("leef")[:100]
    rng = random.Random(7)
    raws += [_rx_message(rng) for _ in range(300)]
    evs = [normalise(detect.parse(r, received=RECEIVED, peer="10.0.0.9:514", source="s")) for r in raws]
    # odd field values: every type the Python loop knows, in common fields and in extra
    from formats.vendors import DEFAULT, LEEF_COMMON
    for i in range(600):
        ev = normalise(detect.parse(raws[i % 300], received=RECEIVED, peer="10.0.0.9:514", source="s"))
        f = ev.fields
        for _ in range(rng.choice((1, 2, 3))):
            if rng.random() < 0.5:
                f[rng.choice(LEEF_COMMON)[0]] = rng.choice(_ODD_VALUES)
            elif rng.random() < 0.8 and isinstance(f.get("extra"), dict):
                f["extra"][rng.choice(DEFAULT.leef_extra)[0]] = rng.choice(_ODD_VALUES)
            else:
                f["extra"] = rng.choice((None, {}, [], "x", {"actor": "a"}))
        evs.append(ev)
    # odd event-level values: severity, time, cat/kind, event, host, product, triage, header slots
    top = {"severity": (None, "high", "low", "bogus", 3, ["x"]), "occurred_unix": (None, 0.0, 1.5, 1773374400,
           -1.0, 1e13, 253402300799.9995, float("nan"), "x"), "kind": (None, "", "alert", 5),
           "event": (None, "", "created", 7), "host": (None, "", "h1", 3), "product": (None, "", "P", 1),
           "triage": (None, {"score": 5, "owner": "x"}, "x"), "vendor": (None, "CrowdStrike", "RhythmX", [1])}
    slots = {"hostname": (None, "", "dev-1"), "app_name": (None, "", "App"), "msgid": (None, "", "M"),
             "facility": (None, 0, 23), "peer": (None, "10.1.1.1:5", "[::1]:9")}
    for i in range(1500):
        ev = normalise(detect.parse(raws[i % 300], received=RECEIVED, peer="10.0.0.9:514", source="s"))
        for _ in range(rng.choice((1, 1, 2))):
            if rng.random() < 0.6:
                k = rng.choice(list(top))
                ev.fields[k] = rng.choice(top[k])
            else:
                k = rng.choice(list(slots))
                setattr(ev, k, rng.choice(slots[k]))
        evs.append(ev)
    evs += evs[:300]                     # the same headers again: the renderer's cache hits
    for fmt, opts in (("leef", {}), ("leef1", {}), ("leef", {"leef_delimiter": "~"}), ("leef", {"hostname": "fixed"})):
        lines, joined = _render_both(evs, fmt, **opts)
        assert lines > len(evs) // 4 and joined > len(evs) // 10, (fmt, lines, joined)


_CEF_ODD = _ODD_VALUES + ("a\\b", "C:\\Windows\\x.exe", "a=b", "x ", "  ", "a  b", "a\r\nb", "a\0b", " lead", "|", 3.0)


def _falcon_events(n: int, rng: random.Random) -> list:
    from parsers.normalise import normalise
    lines = (ROOT / "examples" / "samples" / "falcon.log").read_bytes().splitlines()
    out = []
    for i in range(n):     # varied ids and times, as bench/bench_process.py --falcon
        line = (lines[i % len(lines)].replace(b"sensorid123", b"sensor%06d" % rng.randrange(10**6))
                .replace(b".400Z", b".%03dZ" % rng.randrange(1000)))
        out.append(normalise(detect.parse(line, received=RECEIVED, peer="10.0.0.9:514", source="s")))
    return out


@pytest.mark.skipif(rx_native is None, reason="the accelerator is not built")
def test_cef_identical_on_normalised_traffic_and_odd_fields():
    """CEF rendering with the native line (cef_line) and without: Falcon events (their URLs and
    command lines need escaping), the benchmark's SigmaIncidents, the samples and vectors, and
    odd values in every field the CEF encoder reads (common and extra keys, cs and cn slots,
    name, cat, severity, time, triage, header slots)."""
    from parsers.normalise import normalise
    from formats.vendors import CEF_COMMON, DEFAULT, FALCON
    rng = random.Random(11)
    raws = [message(i, True).rstrip("\n").encode() for i in range(200)]
    raws += [x for f in sorted((ROOT / "examples" / "samples").glob("*.log")) for x in f.read_bytes().splitlines() if x]
    raws += _vectors("rfc5424")[:200] + _vectors("cef")[:100] + _vectors("leef")[:50]
    raws += [_rx_message(rng) for _ in range(200)]
    base = [normalise(detect.parse(r, received=RECEIVED, peer="10.0.0.9:514", source="s")) for r in raws]
    base += _falcon_events(300, rng)
    evs = list(base)
    fields = [src for src, _ in CEF_COMMON] + ["name", "kind", "tactic", "event"]
    extra_fields = sorted({src for p in (DEFAULT, FALCON) for src, _ in p.cef_extra}
                          | {s.field for p in (DEFAULT, FALCON) for s in p.cef_strings + p.cef_numbers if s.extra}
                          | {"siem_event"})
    slot_fields = sorted({s.field for p in (DEFAULT, FALCON) for s in p.cef_strings + p.cef_numbers if not s.extra})
    top = {"severity": (None, "high", "low", "bogus", 3), "occurred_unix": (None, 0.0, 1.5, 1773374400, -1.0, 1e13,
           253402300799.9995, float("nan")), "triage": (None, {"score": 5, "owner": "x"}, "x"),
           "vendor": (None, "CrowdStrike", "RhythmX", [1]), "host": (None, "", "h1", 3), "product": (None, "", "P", 1)}
    slots = {"hostname": (None, "", "dev-1"), "app_name": (None, "", "App"), "msgid": (None, "", "M"),
             "facility": (None, 0, 23), "peer": (None, "10.1.1.1:5", "[::1]:9")}
    for i in range(2500):
        src = base[rng.randrange(len(base))]
        ev = Event.__new__(Event)
        for slot in Event.__slots__:
            setattr(ev, slot, getattr(src, slot))
        ev.fields = copy.deepcopy(src.fields)
        f = ev.fields
        if not isinstance(f, dict):
            continue
        for _ in range(rng.choice((1, 1, 2, 3))):
            x = rng.random()
            if x < 0.3:
                f[rng.choice(fields + slot_fields)] = rng.choice(_CEF_ODD)
            elif x < 0.6:
                if not isinstance(f.get("extra"), dict):
                    f["extra"] = {}
                f["extra"][rng.choice(extra_fields)] = rng.choice(_CEF_ODD)
            elif x < 0.65:
                f["extra"] = rng.choice((None, {}, [], "x", {"cmdline": "a\\b"}))
            elif x < 0.85:
                k = rng.choice(list(top))
                f[k] = rng.choice(top[k])
            else:
                k = rng.choice(list(slots))
                setattr(ev, k, rng.choice(slots[k]))
        evs.append(ev)
    evs += evs[:400]                     # the same headers again: the renderer's caches hit
    for opts in ({}, {"hostname": "fixed"}, {"cef_vendor": "V|x", "app_name": "r"}):
        (lines,) = _render_both(evs, "cef", ("cef_line",), **opts)
        assert lines > len(evs) // 4, (opts, lines, len(evs))


# ----------------------------------------------------------------------------- deframing
def _stream(rng: random.Random) -> bytes:
    pieces = []
    for _ in range(rng.randrange(1, 40)):
        r = rng.randrange(14)
        body = b"<%d>1 - h a - - - m%d" % (rng.randrange(200), rng.randrange(10**6)) + b"x" * rng.choice((0, 0, 5, 60))
        if r < 5:
            pieces.append(body + b"\n")
        elif r == 5:
            pieces.append(body + b"\r\n")
        elif r == 6:
            pieces.append(body + b"\0")
        elif r == 7:
            pieces.append(b"%d %s" % (len(body), body))
        elif r == 8:
            pieces.append(rng.choice((b" ", b"\t", b"\r\n", b"\n\n", b"\0")))
        elif r == 9:
            pieces.append(rng.choice((b"\x01junk\n", b"\x7f", b"007 <13>x", b"99999999999 a\n", b"12 <1")))
        elif r == 10:
            pieces.append(b"<13>" + b"L" * rng.choice((60, 64, 65, 70, 200)) + rng.choice((b"\n", b"\r\n", b"")))
        elif r == 11:
            pieces.append(b"plain line without pri\n")
        elif r == 12:
            pieces.append(body + b"\r\r\n")
        else:
            pieces.append(body[: rng.randrange(len(body))])
    return b"".join(pieces)


def _deframe(data: bytes, cuts: list, fast, **kw):
    from parsers import framing
    saved = framing._lf_frames
    framing._lf_frames = fast
    try:
        d = framing.Deframer(**kw)
        frames, problems = [], []
        prev = 0
        for c in cuts + [len(data)]:
            frames += d.feed(data[prev:c])
            problems += d.drain_problems()
            prev = c
        frames += ["close"] + d.close(partial=kw.get("max_frame", 0) % 2 == 1)
        problems += d.drain_problems()
        return frames, problems, dict(d.stats)
    finally:
        framing._lf_frames = saved


@needs_native
def test_deframer_identical_with_and_without_the_accelerator():
    fast = native.load_module().lf_frames
    rng = random.Random(11)
    used = 0
    for i in range(3000):
        data = _stream(rng)
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.choice((0, 1, 3, 10))))) \
            if len(data) > 1 else []
        kw = {"max_frame": rng.choice((64, 65, 1000)), "oversize": rng.choice(("truncate", "drop")),
              "trailer": rng.choice((b"\n", b"\n", b"\0")), "nul_trailer": rng.random() < 0.8}
        got = _deframe(data, cuts, fast, **kw)
        want = _deframe(data, cuts, None, **kw)
        assert got == want, (data, cuts, kw)
        used += len(got[0])
    assert used > 20000


def _spans_case(rng: random.Random) -> tuple[list, list]:
    """Random payloads (plain, or holding CR, LF, CRLF at the end, NUL, non-ASCII, empty) laid
    out as spans of shared buffers, as packed queue rows are: -> (spans, payloads)."""
    pieces = (b"LEEF:2.0|V|P|1|E|k=v", b"a", b"", b"x" * 700, b"\r", b"\n", b"\r\n", b"\0", "é".encode(), b" ")
    spans, payloads = [], []
    for _ in range(rng.choice((0, 1, 1, 2, 5))):
        n = rng.choice((1, 2, 10, 256))
        ps = []
        for _ in range(n):
            if rng.random() < 0.9:
                ps.append(b"<134>1 - h a - - - " + rng.choice(pieces[:4]) * rng.randint(0, 3))
            else:
                ps.append(b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 6))))
        pad = rng.choice((0, 7))
        buf = b"!" * pad + b"".join(ps) + b"?" * rng.choice((0, 3))
        offs = [pad]
        for p in ps:
            offs.append(offs[-1] + len(p))
        k0 = rng.randrange(len(ps))         # a run may start inside its row
        spans.append((buf, offs[k0:]))
        payloads += ps[k0:]
    return spans, payloads


@needs_native
def test_frame_spans_identical_to_frame_batch():
    """formats.syslog.frame_spans (the TCP/TLS and file sinks' framing of a Leased) gives the
    bytes and the changed count of frame_batch over the same payloads, in both framings, with
    and without the accelerator; the native copy is taken whenever no payload needs a change,
    and anything it does not take (odd shapes, offsets out of the buffer) gets None."""
    from formats import syslog
    fast = native.load_module().frame_spans
    rng = random.Random(23)
    saved = syslog._frame_spans
    native_used = 0
    try:
        for i in range(3000):
            spans, payloads = _spans_case(rng)
            for framing in ("lf", "octet"):
                want = syslog.frame_batch(payloads, framing)
                syslog._frame_spans = None
                assert syslog.frame_spans(spans, framing) == want
                syslog._frame_spans = fast
                assert syslog.frame_spans(spans, framing) == want, (spans, framing)
                got = fast(spans, framing == "octet")
                if got is not None:
                    native_used += 1
                    assert (got, 0) == want
                else:
                    assert want[1] or not spans, (spans, framing)     # only a change sends it back
    finally:
        syslog._frame_spans = saved
    assert native_used > 2000
    for bad in ([(b"abc", [0, 4])], [(b"abc", [2, 1])], [(b"abc", [-1, 2])], [(b"abc", [])], [(b"abc", (0, 1))],
                [("abc", [0, 1])], [(b"abc", [0, 1], 2)], [[b"abc", [0, 1]]], [(b"abc", [0, 2 ** 70])],
                [(b"abc", [0, 1.0])], [(bytearray(b"abc"), [0, 1])]):
        assert fast(bad, False) is None and fast(bad, True) is None, bad
    assert fast([], False) == b"" and fast([(b"abc", [1])], True) == b""
    with pytest.raises(TypeError):
        fast((), False)


def test_gc_tune_freezes_and_raises_the_young_threshold():
    """relay/gctune.py: what the main process and each worker call once set up."""
    import gc

    from relay import gctune
    before = gc.get_threshold()
    try:
        gctune.tune()
        assert gc.get_threshold() == (gctune.GEN0, 20, 50)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


_CHURN = r"""
import resource, sys
from multiprocessing.reduction import ForkingPickler
from relay import gctune
if sys.argv[1] == "tune":
    print(gctune.tune_malloc())
else:
    print("default")
data = (b"<131>1 2026-03-13T04:00:00.000Z rx-00 SigmaIncident - created - x".ljust(273, b"x") + b"\n") * 3830
def turn():   # what the main process does at each turn of a busy connection: ~1 MiB in, ~1 MiB pickled
    items = [(f, "127.0.0.1:4000") for f in data.split(b"\n")[:-1]]
    return len(ForkingPickler.dumps(("batch", 1, "tcp", 1.0, items)))
for _ in range(5):
    turn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    turn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_malloc_tune_keeps_the_turns_memory_mapped():
    """relay/gctune.tune_malloc: after it, the same ~1 MiB buffers of every turn come from memory
    the process already has (no page faults); without it glibc maps them anew each time (each
    4 KiB page faulting in again).  Each case in a fresh interpreter, the operator's MALLOC_*
    variables removed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = {}
    for mode in ("tune", "default"):
        r = subprocess.run([sys.executable, "-c", _CHURN, mode], cwd=str(ROOT), env=env, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        what, faults = r.stdout.split("\n")[:2]
        out[mode] = (what, int(faults))
    assert out["tune"][0].startswith("mmap threshold 8 MiB"), out
    # 40 turns of ~2 MiB: untuned, hundreds of faults per turn; tuned, the memory stays mapped
    assert out["tune"][1] < 40, out
    assert out["default"][1] > 40 * 100, out


def test_malloc_tune_leaves_an_operators_choice_alone(monkeypatch):
    from relay import gctune
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert gctune.tune_malloc() == "left as the environment sets it"
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1000000")
    assert gctune.tune_malloc() == "left as the environment sets it"


# ----------------------------------------------------------------------------- the body's JSON
_JSON_KEYS = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=12) | st.sampled_from(
    ["incident_id", "risk_score", "a", "é", "k\\u00e9", ""])
_JSON_VALUES = (st.text(max_size=12) | st.integers(-10 ** 20, 10 ** 20) | st.floats(allow_nan=False)
                | st.booleans() | st.none() | st.lists(st.integers(), max_size=2))


@st.composite
def _json_texts(draw) -> str:
    """Flat objects as JSON encoders write them (any spacing, escapes, numbers, nesting), the
    usual SigmaIncident body, and those texts mutated: inserted, deleted, duplicated bytes."""
    obj = draw(st.dictionaries(_JSON_KEYS, _JSON_VALUES, max_size=5))
    sep = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,", " : "), (",\n", ":\t")]))
    text = json.dumps(obj, separators=sep, ensure_ascii=draw(st.booleans()))
    if draw(st.booleans()):
        text = draw(st.sampled_from(["", " ", "\r\n"])) + text + draw(st.sampled_from(["", " ", "\n", "x", "}"]))
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "repeat"]))
        if op == "insert":
            text = text[:i] + draw(st.sampled_from(list('{}[]",:-0123456789.eE \\\x00\x7f') + ["é", "true"])) + text[i:]
        elif op == "delete":
            text = text[:i] + text[i + 1:]
        else:
            text = text[:i] + text[i:i + 8] + text[i:]
    return text


@needs_native
@settings(max_examples=3000, deadline=None)
@given(_json_texts())
def test_flat_json_is_orjson_where_it_answers(text):
    """The C shortcut for the SigmaIncident body (parsers._speedups.flat_json) gives orjson's
    dict, key order and value types included, or None (then orjson decides, and words the
    error)."""
    import orjson
    from parsers import _speedups
    got = _speedups.flat_json(text)
    try:
        want = orjson.loads(text)
    except orjson.JSONDecodeError:
        assert got is None, text
        return
    if got is not None:
        assert list(got.items()) == list(want.items()), text
        assert [type(v) for v in got.values()] == [type(v) for v in want.values()], text


@needs_native
def test_flat_json_answers_the_usual_bodies():
    """The bodies the benchmark and RhythmX send (plain strings and integers, any spacing)
    take the shortcut; escapes, floats, literals, nesting, repeated keys and long numbers
    do not."""
    import orjson
    from parsers import _speedups
    usual = [message(i, True).split("] ", 1)[1] for i in range(0, 3000, 7)] + [
        '{}', ' { "incident_id" : "INC-1" ,\n\t"risk_score" : -0 } ', '{"risk_score":999999999999999999}']
    for text in usual:
        got = _speedups.flat_json(text)
        assert got is not None and list(got.items()) == list(orjson.loads(text).items()), text
    for text in ['{"a":"\\n"}', '{"a":1.5}', '{"a":1e3}', '{"a":true}', '{"a":null}', '{"a":{}}', '{"a":[1]}',
                 '{"a":1,"a":2}', '{"a":1000000000000000000}', '{"a":9999999999999999999}',
                 '{"a":-99999999999999999999999}', '{"a":01}', '{"a":-}', '{"a":1}x', '{"é":1}',
                 '{"a":"\x7f"}', '[1]', '"a"', '{"a":1,}', '{,}', '{"a" 1}']:
        assert _speedups.flat_json(text) is None, text

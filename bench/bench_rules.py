"""Micro-benchmark: evaluations per second of compiled routing rules.

    .venv/bin/python bench/bench_rules.py [--seconds 2]

Evaluates ``app_name == "SigmaIncident" and risk_score >= 70`` (and a few
other typical rules) against a realistic SigmaIncident event that carries
structured data, canonical fields and enrichment, both through ``rule(event)``
and through the bare ``rule.match`` function a router would hold on to.
"""
from __future__ import annotations

import argparse
import sys
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from parsers.event import Event  # noqa: E402
from relay.rules import compile_rule  # noqa: E402

MAIN_RULE = 'app_name == "SigmaIncident" and risk_score >= 70'
OTHER_RULES = [
    'risk_score >= 70 and event == "created"',
    'sd."incident@32473".risk_score >= 70',
    'msgid in ["created", "updated"]',
    'not (hostname matches /^test-/i)',
    'body.mitre_tactics contains "Lateral Movement"',
    'asset.criticality >= 4 or ti.match == true',
    'severity <= 3 and sd.origin.ip exists',
]


def make_event() -> Event:
    ev = Event(b"<134>1 2024-05-01T10:00:00.000Z siem-01 SigmaIncident 4242 created "
               b"[incident@32473 id=\"INC-1042\" risk_score=\"82\" rule=\"Suspicious PsExec\"] {...}",
               "rfc5424")
    ev.pri, ev.facility, ev.severity, ev.version = 134, 16, 6, 1
    ev.timestamp, ev.time_unix = "2024-05-01T10:00:00.000Z", 1714557600.0
    ev.hostname, ev.app_name, ev.procid, ev.msgid = "siem-01", "SigmaIncident", "4242", "created"
    ev.sd = {
        "incident@32473": {"id": "INC-1042", "risk_score": "82", "rule": "Suspicious PsExec",
                           "host": ["ws-17", "ws-18"]},
        "origin": {"ip": "10.0.0.5", "software": "sigma-engine", "swVersion": "2.4"},
        "meta": {"sequenceId": "77"},
    }
    ev.msg = '{"title": "Suspicious PsExec", "mitre_tactics": ["Execution", "Lateral Movement"]}'
    ev.body = {"title": "Suspicious PsExec", "mitre_tactics": ["Execution", "Lateral Movement"]}
    ev.received, ev.peer, ev.source = 1714557600.1, "10.0.0.5:51514", "sigma"
    ev.fields = {"event": "created", "incident_id": "INC-1042", "risk_score": 82, "severity": "high",
                 "rule_name": "Suspicious PsExec", "host": "ws-17", "user": "CORP\\alice",
                 "src_ip": "10.0.0.5", "dst_ip": "10.0.0.9", "vendor": "Sigma", "product": "SigmaIncident"}
    ev.enrich = {"asset": {"criticality": 4, "owner": "ops"}, "ti": {"match": False}}
    return ev


def measure(fns: dict, ev, seconds: float, rounds: int = 9) -> dict:
    """Seconds per call of each function, best of ``rounds`` interleaved rounds
    (on a shared machine the best round is the least disturbed one)."""
    timers = {k: timeit.Timer("f(ev)", globals={"f": f, "ev": ev}) for k, f in fns.items()}
    n = 20_000
    per = max(timers["_calibrate"].timeit(n) / n if "_calibrate" in timers else 0, 1e-8)
    n = max(10_000, int(seconds / rounds / len(fns) / per))
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, t in timers.items():
            best[k] = min(best[k], t.timeit(n) / n)
    return best


def hand_written(e) -> bool:
    """What one would write by hand for MAIN_RULE (with the same guards)."""
    if e.app_name != "SigmaIncident":
        return False
    f = e.fields
    v = f.get("risk_score") if f else None
    return (v.__class__ is int or v.__class__ is float) and v >= 70


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="total measuring time")
    args = ap.parse_args()
    ev = make_event()
    rule = compile_rule(MAIN_RULE)
    assert rule(ev) is True and hand_written(ev) is True
    fns = {"_calibrate": rule.match, "hand-written Python": hand_written,
           "rule(event)": rule, "rule.match(event)": rule.match}
    others = {text: compile_rule(text) for text in OTHER_RULES}
    for text, r in others.items():
        fns[text] = r.match
    best = measure(fns, ev, args.seconds)
    hw = best["hand-written Python"]
    print(f"python {sys.version.split()[0]}; best of 9 interleaved rounds (timeit)")
    print(f"{MAIN_RULE!r}:")
    for label in ("rule.match(event)", "rule(event)", "hand-written Python"):
        t = best[label]
        print(f"  {label:22} {1 / t:12,.0f} evals/s  {t * 1e6:6.3f} us  ({t / hw:.1f}x hand-written)")
    print("other rules, rule.match(event):")
    for text, r in others.items():
        t = best[text]
        print(f"  {text:58} {1 / t:12,.0f} evals/s  {t * 1e6:6.3f} us  -> {r(ev)}")
    t0 = time.perf_counter()
    for _ in range(200):
        compile_rule(MAIN_RULE)
    print(f"compile_rule: {(time.perf_counter() - t0) / 200 * 1e3:.2f} ms per rule")


if __name__ == "__main__":
    main()

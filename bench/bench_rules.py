"""Micro-benchmark: evaluations per second of compiled routing rules.

    .venv/bin/python bench/bench_rules.py [--seconds 1.0]

Evaluates ``app_name == "SigmaIncident" and risk_score >= 70`` (and a few
other typical rules) against a realistic SigmaIncident event that carries
structured data, canonical fields and enrichment, both through ``rule(event)``
and through the bare ``rule.match`` function a router would hold on to.
"""
from __future__ import annotations

import argparse
import sys
import time
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


def rate(fn, ev, seconds: float) -> float:
    n = 20_000
    # calibrate, then time a batch of about `seconds`
    t0 = time.perf_counter()
    for _ in range(n):
        fn(ev)
    dt = time.perf_counter() - t0
    n = max(n, int(n * seconds / max(dt, 1e-9)))
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            fn(ev)
        dt = time.perf_counter() - t0
        best = max(best, n / dt)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.5, help="time per measurement")
    args = ap.parse_args()
    ev = make_event()

    def empty(e):
        return True

    base = rate(empty, ev, args.seconds)
    print(f"python {sys.version.split()[0]}; loop + empty call: {base:,.0f}/s")
    rule = compile_rule(MAIN_RULE)
    assert rule(ev) is True
    for label, fn in (("rule(event)", rule), ("rule.match(event)", rule.match)):
        r = rate(fn, ev, args.seconds)
        print(f"{MAIN_RULE!r:60} {label:18} {r:12,.0f} evals/s  {1e6 / r:6.3f} us")
    for text in OTHER_RULES:
        rl = compile_rule(text)
        r = rate(rl.match, ev, args.seconds)
        print(f"{text!r:60} {'rule.match(event)':18} {r:12,.0f} evals/s  {1e6 / r:6.3f} us  -> {rl(ev)}")
    t0 = time.perf_counter()
    for _ in range(200):
        compile_rule(MAIN_RULE)
    print(f"compile_rule: {(time.perf_counter() - t0) / 200 * 1e3:.2f} ms per rule")


if __name__ == "__main__":
    main()

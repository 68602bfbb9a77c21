"""Micro-benchmark: normalisations per second (one process, one core).

* SigmaIncident: the default-shape message, already parsed into an Event (by
  parsers.rfc5424 when present, else built by hand); each round resets
  ``event.body``/``fields``/``notes`` so the JSON body is decoded every time.
* Falcon alert: ``normalise_dict`` of the Alerts API v2 endpoint alert (a dict).
* Falcon stream: ``normalise`` of the SIEM-connector JSON carried in a syslog MSG.

Rates are per CPU-second of this process (time.process_time), best of 3 slices.

Usage: .venv/bin/python bench/bench_normalise.py [seconds-per-case, default 2]
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from parsers.event import Event, FORMAT_RFC5424  # noqa: E402
from parsers import falcon, rhythmx  # noqa: E402

RAW = (b'<137>1 2026-03-13T04:30:00.123Z rx-01 SigmaIncident 4242 created [incident@32473 '
       b'id="INC-7601d999" actor="jdoe" entity="Primary Site" status="OPEN" risk_score="82" '
       b'alarm_count="12" sigma_alert_count="3" threat_case_count="1" related_case_ids="C-11,C-12"] '
       b'{"incident_id":"INC-7601d999","risk_score":82,"risk_breakdown":{"alarm_volume":18,'
       b'"sigma_severity":22,"threat_cases":15,"asset_criticality":12},"mitre_tactics":'
       b'["Credential Access","Lateral Movement"],"timeline":{"first_alarm_time":"2026-03-13T03:58:11Z"}}')


def sigma_event() -> tuple[Event, str]:
    try:
        from parsers.rfc5424 import parse
        return parse(RAW), "parsers.rfc5424"
    except ImportError:
        e = Event(RAW, FORMAT_RFC5424)
        e.pri, e.facility, e.severity, e.version = 137, 17, 1, 1
        e.timestamp, e.time_unix = "2026-03-13T04:30:00.123Z", 1773376200.123
        e.hostname, e.app_name, e.procid, e.msgid = "rx-01", "SigmaIncident", "4242", "created"
        e.sd = {"incident@32473": {"id": "INC-7601d999", "actor": "jdoe", "entity": "Primary Site",
                                   "status": "OPEN", "risk_score": "82", "alarm_count": "12",
                                   "sigma_alert_count": "3", "threat_case_count": "1",
                                   "related_case_ids": "C-11,C-12"}}
        e.msg = RAW.split(b"] ", 1)[1].decode()
        return e, "built by hand"


def run(label: str, fn, seconds: float) -> float:
    for _ in range(2000):        # warm-up
        fn()
    best = 0.0
    for _ in range(3):           # best of 3 slices
        # CPU time of this process: the host is shared, wall time drifts with load
        n, t0 = 0, time.process_time()
        deadline = t0 + seconds / 3
        while True:
            for _ in range(1000):
                fn()
            n += 1000
            t = time.process_time()
            if t >= deadline:
                break
        best = max(best, n / (t - t0))
    print(f"{label:<44} {best:>10,.0f} /s  {1e6 / best:6.2f} us each")
    return best


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    ev, how = sigma_event()

    def sigma():
        ev.body = ev.fields = ev.notes = None
        rhythmx.normalise(ev)

    def sigma_cached_body():
        ev.fields = ev.notes = None
        rhythmx.normalise(ev)

    fix = json.loads((ROOT.parent / "shared" / "vectors" / "falcon_samples.json").read_text())
    alert = {k: v for k, v in fix["alerts_api_v2_endpoint_alert"].items() if not k.startswith("_")}
    stream = {k: v for k, v in fix["siem_connector_or_streaming_DetectionSummaryEvent"].items()
              if not k.startswith("_")}
    sev = Event(b"", FORMAT_RFC5424)
    sev.timestamp, sev.time_unix = "2023-06-15T16:06:52.400Z", 1686845212.4
    sev.msg = json.dumps(stream, separators=(",", ":"))

    def falcon_alert():
        falcon.normalise_dict(alert)

    def falcon_stream():
        sev.body = sev.fields = sev.notes = None
        falcon.normalise(sev)

    print(f"python {sys.version.split()[0]}; SigmaIncident event {how}; {seconds:g}s per case")
    run("SigmaIncident normalise (incl. JSON body)", sigma, seconds)
    run("SigmaIncident normalise (body cached)", sigma_cached_body, seconds)
    run("Falcon alert normalise_dict", falcon_alert, seconds)
    run("Falcon stream JSON in syslog (incl. JSON)", falcon_stream, seconds)


if __name__ == "__main__":
    main()

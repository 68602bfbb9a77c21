"""The ``http`` sink's per-event costs, A/B alternated in one sitting (the machine is shared:
compare the ratios, not the absolute figures):

* render: the queued row of ``qradar_http`` (the request head + the LEEF line as a JSON string)
  against the bare LEEF line of the ``syslog`` sink; ``splunk_hec``, ``slack``, ``servicenow``
  and a 6-line template;
* delivery: ``body_bytes`` of a queued row (the fast path: the row's head matches the config's).

    python bench/bench_http_sink.py [-n 20000] [--rounds 3]

Figures are CPU microseconds per event (process_time), best of the rounds.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from parsers import detect  # noqa: E402
from parsers.normalise import normalise  # noqa: E402
from relay import kinds  # noqa: E402
from relay.config import loads  # noqa: E402

SIGMA = (b'<134>1 2026-03-13T04:30:00.123Z rx-01 SigmaIncident 4242 created [incident@32473 '
         b'id="INC-7601d999" actor="jdoe" entity="Primary Site" status="OPEN" risk_score="82" '
         b'alarm_count="12" sigma_alert_count="3" threat_case_count="1"] '
         b'{"incident_id":"INC-7601d999","risk_score":82}')

CFG = '''
[sinks.syslog]
type = "syslog"
address = "127.0.0.1:514"
format = "leef"
[sinks.qradar_http]
type = "http"
preset = "qradar_http"
url = "https://qradar.invalid:12469/"
format = "leef"
[sinks.hec]
type = "http"
preset = "splunk_hec"
url = "https://splunk.invalid:8088"
token_env = "BENCH_HEC"
[sinks.slack]
type = "http"
preset = "slack"
url_env = "BENCH_SLACK"
[sinks.snow]
type = "http"
preset = "servicenow"
url = "https://x.service-now.com"
username = "u"
password_env = "BENCH_HEC"
[sinks.template]
type = "http"
preset = "generic"
url = "https://x.invalid/"
template = """{"title": {{ "[relay] " ~ event.name }},
 "risk": {{ event.risk_score }}, "severity": {{ severity }},
 "host": {{ event.host }}, "user": {{ event.user }},
 "key": {{ dedup_key }}, "routes": {{ routes }},
 "occurred": {{ occurred }}}"""
[routes.all]
match = 'true'
sinks = ["syslog", "qradar_http", "hec", "slack", "snow", "template"]
'''


def per_event(fn, n: int) -> float:
    t = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    os.environ.setdefault("BENCH_HEC", "0000-token")
    os.environ.setdefault("BENCH_SLACK", "https://hooks.slack.invalid/services/T/B/x")
    cfg = loads(CFG)
    ev = normalise(detect.parse(SIGMA, received=time.time(), source="bench"))
    renders = {name: kinds.sink(sc.type).renderer(sc) for name, sc in cfg.sinks.items()}
    from relay.sinks.http import _Base

    class _Item:
        def __init__(self, p):
            self.payload, self.meta, self.id = p, {}, 1

    row = renders["qradar_http"](ev, ["all"])
    probe = _Base.__new__(_Base)
    probe.settings = cfg.sinks["qradar_http"].options["http"]
    from relay.sinks.http import _head
    probe.head = _head(probe.settings)
    item = _Item(row)
    best: dict[str, float] = {}
    for _ in range(a.rounds):        # A/B alternated within each round
        for name, r in renders.items():
            n = a.n if name in ("syslog", "qradar_http", "hec") else a.n // 10
            us = per_event(lambda r=r: r(ev, ["all"]), n)
            best[name] = min(best.get(name, 1e9), us)
        us = per_event(lambda: probe.body_bytes(item), a.n)
        best["deliver qradar_http body_bytes"] = min(best.get("deliver qradar_http body_bytes", 1e9), us)
    for name, us in best.items():
        size = len(renders[name](ev, ["all"])) if name in renders else len(probe.body_bytes(item))
        print(f"{name:34s} {us:7.2f} us/event  {size:5d} bytes")
    print(f"qradar_http row / syslog line render: {best['qradar_http'] / best['syslog']:.2f}x")


if __name__ == "__main__":
    main()

"""Per-stage cost of the hot path on one core, for the SigmaIncident message of
performance.md (~240 bytes, 8 SD params, small JSON body) and a Falcon SIEM-connector
event:  parse, normalise, route, render (LEEF 2.0, LEEF 1.0, CEF, JSON, XSOAR incident
body), and the whole Pipeline.process() for one LEEF route.

    python bench/bench_pipeline.py [-n 50000]

Figures are CPU time (process_time), best of 3.  The machine is shared: compare runs
made in one sitting.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from formats import xsoar  # noqa: E402
from formats.render import Renderer, RenderOptions  # noqa: E402
from parsers import detect  # noqa: E402
from parsers.normalise import normalise  # noqa: E402
from relay.config import loads  # noqa: E402
from relay.pipeline import Pipeline  # noqa: E402

SIGMA = (b'<134>1 2026-03-13T04:30:00.123Z rx-01 SigmaIncident 4242 created [incident@32473 '
         b'id="INC-7601d999" actor="jdoe" entity="Primary Site" status="OPEN" risk_score="82" '
         b'alarm_count="12" sigma_alert_count="3" threat_case_count="1"] '
         b'{"incident_id":"INC-7601d999","risk_score":82}')

CFG = '''
[sources.tcp]
type = "tcp"
address = "127.0.0.1:5514"
[routes.high]
match = 'app_name == "SigmaIncident" and risk_score >= 70'
sinks = ["qradar"]
[sinks.qradar]
type = "syslog"
address = "127.0.0.1:6514"
format = "leef"
'''


def bench(name: str, fn, n: int) -> None:
    fn()
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, (time.process_time() - t0) / n)
    print(f"  {name:<34} {1 / best:>11,.0f} /s  {best * 1e6:7.2f} us")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=50_000)
    n = ap.parse_args().n
    falcon_line = (ROOT / "examples" / "samples" / "falcon.log").read_bytes().splitlines()[0]
    for label, msg in (("SigmaIncident (%d bytes)" % len(SIGMA), SIGMA),
                       ("Falcon SIEM connector (%d bytes)" % len(falcon_line), falcon_line)):
        print(label)
        bench("parse (detect + RFC 5424)", lambda: detect.parse(msg), n)
        bench("parse + normalise", lambda: normalise(detect.parse(msg)), n)
        ev = normalise(detect.parse(msg))
        for fmt in ("leef", "leef1", "cef", "json"):
            r = Renderer(RenderOptions(format=fmt))
            bench(f"render {fmt}", lambda r=r: r.render(ev), n)
        opts = xsoar.XsoarOptions()
        bench("render xsoar incident (orjson)", lambda: orjson.dumps(xsoar.incident(ev, opts, ["high"])), n)
    cfg = loads(CFG)
    p = Pipeline(cfg, {})
    src = cfg.sources["tcp"]
    print("Pipeline.process (parse, normalise, route, render LEEF), SigmaIncident")
    bench("process", lambda: p.process(SIGMA, src, "127.0.0.1:5000", 0.0), n)
    ev = normalise(detect.parse(SIGMA))
    bench("route only", lambda: p.route(ev), n)


if __name__ == "__main__":
    main()

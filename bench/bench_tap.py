"""What a live tap costs the pipeline: ``Pipeline.handle`` (parse, normalise, route, render
LEEF, hand-over) on batches of SigmaIncident messages, as a TCP read hands them over, with no
tap, then with taps attached, in one sitting, alternating.

    python bench/bench_tap.py [-n 50000] [--rounds 5] [--batch 64]

Cases (each with a reader draining the sample as ``GET /tap`` does, at the tap's rate):

* ``no tap``: ``Pipeline.tap`` is None (the daemon's state while nobody taps);
* ``tap source, rate 100``: ``relay tap --source tcp --rate 100`` (the default view);
* ``tap source, filter, rate 100``: ``--filter 'risk_score >= 70'`` (a rule per event);
* ``tap route, rate 10000, reader away``: a tap whose client stopped reading: its buffer is
  full and every event is skipped (the worst case of the "skip, never block" rule).

Figures: msgs/s through ``handle`` (CPU time, ``time.process_time``, best of ``--rounds``),
CPU microseconds per message, and each case relative to ``no tap``.  The committers are
stand-ins that take the rows (a queue's cost is not what is measured here: bench_e2e.py and
bench_queue.py do that).  The host is shared: compare within one run.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from relay.config import loads  # noqa: E402
from relay.pipeline import Pipeline  # noqa: E402
from relay.rules import compile_rule  # noqa: E402
from relay.tap import TapHub, TapSession  # noqa: E402

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


def sigma(i: int) -> bytes:
    risk = 82 if i % 2 else 40
    return (f'<134>1 2026-03-13T04:30:00.123Z rx-01 SigmaIncident 4242 created [incident@32473 '
            f'id="INC-{i:08d}" actor="jdoe" entity="Primary Site" status="OPEN" risk_score="{risk}" '
            f'alarm_count="12" sigma_alert_count="3" threat_case_count="1"] '
            f'{{"incident_id":"INC-{i:08d}","risk_score":{risk}}}').encode()


class Committer:
    pending = 0
    blocked_reason = None

    def __init__(self):
        self.rows = 0
        self.fut = None

    def submit(self, rows):
        self.rows += len(rows)
        if self.fut is None:
            self.fut = asyncio.get_running_loop().create_future()
            self.fut.set_result(None)
        return self.fut

    def submit_dead(self, payload, meta, err):
        self.rows += 1


async def run_case(p: Pipeline, src, batches, session: TapSession | None, hub: TapHub, drain: bool) -> float:
    if session is not None:
        hub.attach(session)
    try:
        t0 = time.process_time()
        for b in batches:
            fut = p.handle(b, src)
            if fut is not None:
                await fut
            if drain and session is not None and session.q:
                session.drain()          # the reader's side (formatting): not the pipeline's cost
        return time.process_time() - t0
    finally:
        if session is not None:
            hub.detach(session)


async def main_async(n: int, rounds: int, batch: int) -> None:
    cfg = loads(CFG)
    p = Pipeline(cfg, {"qradar": Committer()})
    src = cfg.sources["tcp"]
    hub = TapHub(p)
    msgs = [(sigma(i), "127.0.0.1:5000") for i in range(n)]
    batches = [msgs[i:i + batch] for i in range(0, n, batch)]
    cases = {
        "no tap": lambda: (None, False),
        "tap source, rate 100": lambda: (TapSession("source", "tcp", "parsed", rate=100), True),
        "tap source, filter, rate 100": lambda: (TapSession("source", "tcp", "parsed", rate=100,
                                                            rule=compile_rule("risk_score >= 70")), True),
        "tap route, rate 10000, reader away": lambda: (TapSession("route", "high", "rendered", rate=10_000,
                                                                  buffer=256), False),
    }
    await run_case(p, src, batches[: max(1, len(batches) // 10)], None, hub, False)   # warm up
    best = {k: float("inf") for k in cases}
    skipped = {}
    for _ in range(rounds):
        for name, make in cases.items():     # alternating A B C D, A B C D, ...
            session, drain = make()
            t = await run_case(p, src, batches, session, hub, drain)
            best[name] = min(best[name], t)
            if session is not None:
                skipped[name] = (session.sent + len(session.q), session.skipped_rate, session.skipped_full)
    base = best["no tap"]
    print(f"Pipeline.handle, {n} SigmaIncident messages in batches of {batch}, best of {rounds} (CPU time)")
    for name, t in best.items():
        extra = ""
        if name in skipped:
            kept, sr, sf = skipped[name]
            extra = f"   sampled {kept}, skipped: rate {sr}, full {sf}"
        print(f"  {name:<36} {n / t:>10,.0f} msgs/s {t / n * 1e6:7.2f} us/msg  {100 * (base / t):6.1f} %{extra}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args()
    asyncio.run(main_async(a.n, a.rounds, a.batch))


if __name__ == "__main__":
    main()

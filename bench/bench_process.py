"""CPU per message of ``Pipeline.process`` and its stages for realistic, varied traffic:
every message differs (ids, users, risk scores, timestamps), as bench/bench_e2e.py sends
them, so per-event caches are not flattered by one event rendered over and over.

    .venv/bin/python bench/bench_process.py [-n 50000] [--root DIR] [--falcon]

Stages, each over the same ``-n`` distinct messages (RFC 5424 SigmaIncident, all with
risk_score >= 70, i.e. all forwarded): parse (detect.parse), normalise (of freshly parsed
events), render LEEF (of normalised events), then ``Pipeline.process`` for the config
bench_e2e.py writes (TCP source, route ``app_name == "SigmaIncident" and risk_score >= 70``
-> syslog sink, format leef) with all messages forwarded and with the 30% mix
(``message(i, i % 10 < 3)``).  ``--falcon`` adds CEF and LEEF renders of Falcon events
(examples/samples/falcon.log with varied ids and times).

Figures are CPU time (``time.process_time``) per message in microseconds, best of 3.
The host is shared and its speed drifts: compare A/B runs alternated in one sitting
(``--root`` imports relay/parsers/formats from another tree, e.g. an export of HEAD:
``git archive HEAD relay parsers formats | tar -x -C /tmp/old``).
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: messages per listener batch in the batch figures (a TCP read of ~300-byte messages at 64 KiB
#: holds ~200; 64 is a conservative middle)
BATCH = 64

CFG = '''
[sources.tcp]
type = "tcp"
address = "127.0.0.1:5514"

[routes.high_risk]
match = 'app_name == "SigmaIncident" and risk_score >= 70'
sinks = ["siem"]

[sinks.siem]
type = "syslog"
address = "127.0.0.1:6514"
protocol = "tcp"
framing = "lf"
format = "leef"
'''


def best_of(fn, items, rounds: int = 3, prep=None) -> float:
    """Minimum over ``rounds`` of CPU seconds per item for ``fn`` over ``items``
    (``prep(items)`` rebuilds the inputs before each round, untimed)."""
    best = float("inf")
    for _ in range(rounds):
        data = prep(items) if prep else items
        gc.collect()
        t0 = time.process_time()
        for x in data:
            fn(x)
        best = min(best, (time.process_time() - t0) / len(data))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=50_000, help="distinct messages per run (50,000)")
    ap.add_argument("--rounds", type=int, default=3, help="best of this many runs per figure (3)")
    ap.add_argument("--root", type=Path, default=ROOT,
                    help="import relay/parsers/formats from this tree (default: this repository)")
    ap.add_argument("--falcon", action="store_true", help="also render varied Falcon events (CEF, LEEF)")
    ap.add_argument("--only", default="", help="comma list of figures to run: parse,normalise,leef,batch,process,mix")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    sys.path.insert(0, str(args.root.resolve()))
    from bench_e2e import message  # noqa: E402
    from formats.render import Renderer, RenderOptions  # noqa: E402
    from parsers import detect  # noqa: E402
    from parsers.normalise import normalise  # noqa: E402
    from relay.config import loads  # noqa: E402
    from relay.pipeline import Pipeline  # noqa: E402

    n = args.n
    only = set(args.only.split(",")) if args.only else None
    want = (lambda k: only is None or k in only)
    high = [message(i, True).rstrip("\n").encode() for i in range(n)]
    mix = [message(i, i % 10 < 3).rstrip("\n").encode() for i in range(n)]
    now = time.time()
    rows = []

    def fig(name, sec):
        rows.append((name, sec))
        print(f"  {name:<42} {sec * 1e6:7.2f} us/msg", flush=True)

    print(f"{n:,} distinct SigmaIncident messages, root {args.root}")
    parse = detect.parse
    if want("parse"):
        fig("parse (detect.parse)", best_of(parse, high, args.rounds))
    if want("normalise"):
        fig("normalise", best_of(normalise, high, args.rounds, prep=lambda xs: [parse(x) for x in xs]))
    if want("leef"):
        r = Renderer(RenderOptions(format="leef"))
        evs = [normalise(parse(x, received=now, peer="127.0.0.1")) for x in high]
        fig("render leef", best_of(r.render, evs, args.rounds))
    cfg = loads(CFG)
    src = cfg.sources["tcp"]
    batches = [[(raw, "127.0.0.1") for raw in high[k:k + BATCH]] for k in range(0, n, BATCH)]
    try:
        from parsers import native  # noqa: E402
    except ImportError:     # an older tree (--root): no batch parse
        native = None
    else:
        print(f"hot path: {'native' if native.ACTIVE else 'python'} ({native.WHY})")
    if native is not None and want("batch"):
        pi = native.parse_items
        fig(f"parse, batches of {BATCH} (native.parse_items)",
            best_of(lambda b: pi(b, False, now, "tcp"), batches, args.rounds) / BATCH)
        p = Pipeline(cfg, committers={})
        pb, stage = p.parse_batch, p.stage
        stage_rows = getattr(p, "stage_rows", None)

        if stage_rows is not None:   # what the listeners and the workers run
            def batch(b):
                stage_rows(b, src, now, {}, {})
        else:                        # an older tree: parse_batch, then stage per event
            def batch(b):
                for ev in pb(b, src, now):
                    stage(ev)
        fig(f"parse_batch + stage, batches of {BATCH}", best_of(batch, batches, args.rounds) / BATCH)
    # Pipeline.process: one message through parse and stage (the tools' and tests' per-event API)
    for key, label, msgs in (("process", "Pipeline.process, all forwarded", high),
                             ("mix", "Pipeline.process, 30% forwarded", mix)):
        if want(key):
            p = Pipeline(cfg, committers={})
            proc = p.process
            fig(label, best_of(lambda raw: proc(raw, src, "127.0.0.1", now), msgs, args.rounds))
    if args.falcon:
        lines = (ROOT / "examples" / "samples" / "falcon.log").read_bytes().splitlines()
        fal = []
        for i in range(n):
            line = lines[i % len(lines)]
            # vary the ids and times: the sensor id, offset and the timestamp's milliseconds
            fal.append(line.replace(b"sensorid123", b"sensor%06d" % i)
                       .replace(b'"offset":1', b'"offset":%d' % i)
                       .replace(b".400Z", b".%03dZ" % (i % 1000)))
        evs = [normalise(parse(x, received=now, peer="127.0.0.1")) for x in fal]
        for fmt in ("cef", "leef"):
            r = Renderer(RenderOptions(format=fmt))
            fig(f"render {fmt} (Falcon)", best_of(r.render, evs, args.rounds))


if __name__ == "__main__":
    main()

"""Differential check of the whole stage: the same corpus through two trees, every output byte compared.

    .venv/bin/python bench/differential.py dump --root DIR --out FILE [-n 20000]
    .venv/bin/python bench/differential.py compare A B

``dump`` imports relay/parsers/formats from ``--root`` (default: this repository), builds a
pipeline for a config that exercises every sink kind and format (LEEF 2.0 and 1.0 with a
custom vendor and delimiter, CEF, JSON, rfc5424 passthrough, a fixed HOSTNAME, file sinks,
XSOAR incidents and webhook items), with routes that match and stop, and with enrichment
and triage (asset, vulnerability and threat-intel tables from examples/lookups), and runs:

* the benchmark's varied SigmaIncident messages (bench_e2e.message, ``-n`` of them, 30% and
  100% forwarded), the bundled samples, varied Falcon connector lines;
* every input of ../shared/vectors (rfc5424, rfc3164, cef, leef);
* a hostile corpus from a fixed seed: random bytes, mutated messages (bytes flipped,
  inserted, cut), hostile SD values (quotes, backslashes, ``]``, NUL, CR/LF, tabs, the LEEF
  delimiter, ``|``, ``=``, non-UTF-8 bytes, long values), non-UTF-8 host and tag names;
* pulled events (QRadar offenses and Falcon alerts) through the pull path, with a config
  without enrichment (the pull path gained enrichment on purpose: issue 13) and with it.

Every record is: the input, the matched routes, and for each sink the payload bytes, the queue
metadata exactly as encoded (orjson) and the dead-letter reason if any.  ``compare`` prints the
first differences and exits 1 if any record differs.  Export the old tree with
``git archive <rev> relay parsers formats | tar -x -C /tmp/old``.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RELAY_SHARED") or ROOT.parent / "shared")
RECEIVED = 1767225600.0

SINKS = '''
[sinks.leef]
type = "syslog"
address = "127.0.0.1:1"
format = "leef"

[sinks.leef1]
type = "syslog"
address = "127.0.0.1:2"
format = "leef1"
leef_vendor = "Acme|Corp"
leef_product = "Relay"
leef_version = "9"

[sinks.leefx]
type = "syslog"
address = "127.0.0.1:3"
format = "leef"
leef_delimiter = "x09"
hostname = "collector-01"

[sinks.cef]
type = "syslog"
address = "127.0.0.1:4"
format = "cef"
cef_vendor = "Acme=Corp"
cef_product = "Relay|X"

[sinks.json]
type = "file"
path = "out/json.log"
format = "json"

[sinks.raw]
type = "file"
path = "out/raw.log"
format = "rfc5424"

[sinks.xsoar]
type = "xsoar"
url = "https://xsoar.invalid"
api_key_env = "DIFF_XSOAR_KEY"

[sinks.hook]
type = "xsoar_webhook"
url = "https://xsoar.invalid/instance/execute/hook"
'''

ROUTES = '''
[routes.sigma_high]
match = 'app_name == "SigmaIncident" and risk_score >= 70'
sinks = ["xsoar", "leef", "hook"]

[routes.falcon]
match = 'vendor == "CrowdStrike"'
sinks = ["cef", "leefx", "xsoar"]
final = true

[routes.everything]
match = 'format exists'
sinks = ["leef", "leef1", "leefx", "cef", "json", "raw", "hook"]
'''

#: Every event to one sink (the benchmark's shape: the stage's inline single-sink path), or
#: to a sink whose kind wants canonical fields in its metadata (xsoar).
ROUTES_SINGLE = '''
[routes.critical]
match = 'risk_score >= 95'
sinks = ["xsoar"]
final = true

[routes.sigma_high]
match = 'app_name == "SigmaIncident" and risk_score >= 70'
sinks = ["leef"]
final = true

[routes.falcon]
match = 'vendor == "CrowdStrike"'
sinks = ["cef"]
final = true

[routes.sigma]
match = 'app_name == "SigmaIncident"'
sinks = ["leef1"]
final = true

[routes.rest]
match = 'format exists'
sinks = ["json"]
'''

ENRICH = '''
[lookups.assets]
kind = "asset"
file = "{lk}/assets.csv"

[lookups.vulns]
kind = "vuln"
file = "{lk}/vulns.csv"

[lookups.misp]
kind = "ti"
file = "{lk}/ti_misp.csv"
format = "misp"
source = "misp"

[lookups.blocklist]
kind = "ti"
file = "{lk}/ti_blocklist.txt"
confidence = 60

[triage]
mode = "auto"
default_owner = "SOC Tier 1"

[[triage.owners]]
crown_jewel = true
owner = "{{asset_owner}}"

[[triage.escalate]]
name = "page"
min_severity = "critical"
sinks = ["json"]
'''

SOURCES = '''
[sources.tcp]
type = "tcp"
address = "127.0.0.1:0"

[sources.lenient]
type = "udp"
address = "127.0.0.1:0"
lenient = true
'''


# ----------------------------------------------------------------------------- corpus

def _vectors() -> list[bytes]:
    out = []
    for name in ("rfc5424", "rfc3164", "cef", "leef"):
        p = SHARED / "vectors" / f"{name}.jsonl"
        if not p.is_file():
            raise SystemExit(f"{p} is missing: set RELAY_SHARED to the shared/ directory")
        for line in p.read_text(encoding="utf-8").splitlines():
            try:
                d = json.loads(line)
            except ValueError:
                continue
            v = d.get("input")
            if isinstance(v, str):
                out.append(v.encode("utf-8", "surrogateescape"))
    return out


HOSTILE_PIECES = ['"', '\\', ']', '[', '\x00', '\r', '\n', '\t', '^', '|', '=', ' ', 'LEEF:2.0|Evil|Forge|1|x|^|sev=10',
                  'CEF:0|Evil|x|1|2|n|10|src=6.6.6.6', '<14>1 - - - - - -', 'é', '\u2028', '\ufeff', '🙂', 'x' * 300,
                  '${jndi:ldap://x}', '{{7*7}}', '%s%n', '\x1b[31m']


def _hostile(rng: random.Random, base: list[bytes], n: int) -> list[bytes]:
    out = []
    sd_tpl = ('<{pri}>1 2026-03-13T04:30:00.{ms:03d}Z {host} SigmaIncident 42 created '
              '[incident@32473 id="INC-{i}" actor="{a}" entity="{e}" status="OPEN" risk_score="{r}" '
              'alarm_count="3" sigma_alert_count="1" threat_case_count="0" related_case_ids="{c}"] {body}')
    for i in range(n):
        k = i % 6
        if k == 0:      # random bytes
            out.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))))
        elif k in (1, 2):  # mutated real messages
            b = bytearray(rng.choice(base))
            for _ in range(rng.randrange(1, 6)):
                op = rng.randrange(3)
                pos = rng.randrange(len(b) + 1)
                if op == 0 and b:
                    b[min(pos, len(b) - 1)] = rng.randrange(256)
                elif op == 1:
                    b[pos:pos] = bytes([rng.randrange(256)])
                else:
                    del b[pos:pos + rng.randrange(1, 20)]
            out.append(bytes(b))
        elif k == 3:    # hostile SD values in an otherwise valid SigmaIncident

            def val():
                s = "".join(rng.choice(HOSTILE_PIECES) for _ in range(rng.randrange(0, 5)))
                return s.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")
            body = json.dumps({"incident_id": f"INC-{i}", "risk_score": rng.randrange(100), "description": val(),
                               "mitre_tactics": [val()], "url": val()})
            out.append(sd_tpl.format(pri=rng.randrange(192), ms=i % 1000, host=rng.choice(["rx-01", "-", "h\u00e9"]),
                                     i=i, a=val(), e=val(), r=rng.choice([str(rng.randrange(100)), val()]),
                                     c=val(), body=body).encode("utf-8", "surrogatepass"))
        elif k == 4:    # non-UTF-8 bytes in header fields (RFC 3164 and 5424)
            junk = bytes(rng.randrange(128, 256) for _ in range(rng.randrange(1, 4)))
            if rng.random() < 0.5:
                out.append(b"<13>Oct 11 22:14:15 ho" + junk + b"st ap" + junk + b"p: m" + junk)
            else:
                out.append(b"<13>1 2026-01-01T00:00:00Z h" + junk + b" a" + junk + b" 1 m - msg " + junk)
        else:           # CEF / LEEF payloads with hostile extensions, bare and in syslog
            v = "".join(rng.choice(HOSTILE_PIECES) for _ in range(rng.randrange(1, 5)))
            line = rng.choice([f"CEF:0|Vend|Prod|1.0|{i}|name {v}|{rng.randrange(11)}|src=10.20.0.5 msg={v}",
                               f"LEEF:2.0|Vend|Prod|1.0|{i}|^|src=10.20.0.5^usrName={v}",
                               f"LEEF:1.0|Vend|Prod|1.0|{i}|src=203.0.113.7\tusrName={v}"])
            if rng.random() < 0.5:
                line = "<134>1 2026-03-13T04:30:00Z fw-01 fw - - - " + line
            out.append(line.encode("utf-8", "surrogatepass"))
    return out


def corpus(n: int) -> list[bytes]:
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_e2e import message
    msgs = [message(i, True).rstrip("\n").encode() for i in range(n)]
    msgs += [message(i, i % 10 < 3).rstrip("\n").encode() for i in range(n, n + n // 2)]
    samples = ROOT / "examples" / "samples"
    for name in ("sigma_incidents.log", "falcon.log"):
        msgs += [ln for ln in (samples / name).read_bytes().splitlines() if ln.strip()]
    fal = (samples / "falcon.log").read_bytes().splitlines()
    for i in range(min(n, 3000)):
        line = fal[i % len(fal)]
        msgs.append(line.replace(b"sensorid123", b"sensor%06d" % i).replace(b'"offset":1', b'"offset":%d' % i)
                    .replace(b".400Z", b".%03dZ" % (i % 1000)))
    msgs += _vectors()
    rng = random.Random(1313)
    msgs += _hostile(rng, msgs[: 2000] + _vectors(), max(3000, n // 2))
    return msgs


def pulled() -> list[tuple[str, dict]]:
    """(kind, vendor object) for the pull path: QRadar offenses and Falcon alerts."""
    out = []
    for i in range(300):
        out.append(("qradar", {
            "id": 1000 + i, "description": f"Multiple Login Failures for svc_{i}\n", "magnitude": 1 + i % 10,
            "severity": 1 + (i * 7) % 10, "credibility": 3, "relevance": 4, "status": ["OPEN", "CLOSED"][i % 2],
            "offense_type": 0, "offense_source": ["10.20.0.5", "203.0.113.7", "198.51.100.23"][i % 3],
            "source_network": "other", "destination_networks": ["finance"], "categories": ["Authentication"],
            "start_time": 1767225600000 + i * 1000, "last_updated_time": 1767225600000 + i * 2000,
            "event_count": i, "flow_count": 0, "assigned_to": None, "follow_up": False,
            "rules": [{"id": 100 + i % 3, "type": "CRE_RULE"}], "log_sources": [{"id": 1, "name": "fw"}],
            "close_time": 1767225700000 if i % 2 else None, "closing_reason_id": 1 if i % 2 else None}))
    alerts = json.loads((ROOT / "examples" / "samples" / "falcon_alerts.json").read_text())
    items = alerts.get("resources", alerts) if isinstance(alerts, dict) else alerts
    for i in range(300):
        o = dict(items[i % len(items)])
        if "composite_id" in o:
            o["composite_id"] = f"{o['composite_id']}-{i}"
        out.append(("falcon", o))
    return out


# ----------------------------------------------------------------------------- running

class _Fut:
    def __await__(self):
        if False:
            yield
        return None


class _Committer:
    """Records what the pull path submits (old and new API alike)."""

    def __init__(self, name, log):
        self.name, self.log = name, log
        self.pending = 0
        self.blocked_reason = None

    def submit(self, items):
        for payload, meta in items:
            self.log.append((self.name, payload, meta, None))
        f = asyncio.get_running_loop().create_future()
        f.set_result(None)
        return f

    def submit_dead(self, payload, meta, reason):
        self.log.append((self.name, payload, meta, reason))


def _digest(routes, out) -> dict:
    import orjson
    rec = {"routes": list(routes), "out": []}
    for sink, payload, meta, err in out:
        m = meta if isinstance(meta, (bytes, bytearray)) else orjson.dumps(meta)
        rec["out"].append([sink, payload.decode("utf-8", "surrogateescape") if isinstance(payload, bytes) else payload,
                           m.decode("utf-8", "surrogateescape"), err])
    return rec


def dump(root: Path, out_path: Path, n: int) -> int:
    sys.path.insert(0, str(root.resolve()))
    os.environ["DIFF_XSOAR_KEY"] = "k" * 32
    import orjson  # noqa: F401
    from relay.config import loads
    from relay.pipeline import Pipeline
    tmp = Path(tempfile.mkdtemp(prefix="relay-diff-"))
    lk = (ROOT / "examples" / "lookups").resolve()
    text = SOURCES + SINKS + ROUTES
    variants = {"plain": loads(text, base_dir=tmp)}
    variants["enrich"] = loads(text + ENRICH.format(lk=lk), base_dir=tmp)
    variants["single"] = loads(SOURCES + SINKS + ROUTES_SINGLE, base_dir=tmp)
    msgs = corpus(n)
    total = 0
    h = hashlib.sha256()
    with open(out_path, "w", encoding="utf-8") as fh:
        for vname, cfg in variants.items():
            p = _pipeline(Pipeline, cfg)
            for sname in ("tcp", "lenient"):
                src = cfg.sources[sname]
                for rec in _listener(p, src, msgs):
                    rec = {"v": vname, "src": sname, **rec}
                    line = json.dumps(rec, ensure_ascii=True, sort_keys=True)
                    h.update(line.encode())
                    fh.write(line + "\n")
                    total += 1
            for rec in _pull(p, cfg, vname):
                line = json.dumps(rec, ensure_ascii=True, sort_keys=True)
                h.update(line.encode())
                fh.write(line + "\n")
                total += 1
    print(f"{total} records, sha256 {h.hexdigest()[:16]} -> {out_path}")
    return 0


def _peer(i: int) -> str:
    return "10.20.0.5:5140" if i % 2 else "[::1]:514"


def _listener(p, src, msgs: list, batch: int = 61):
    """The messages as a listener hands them over: batches through ``Pipeline.parse_batch``
    (the native accelerator when it is active) then ``stage``; a tree without parse_batch, or a
    batch that raises, goes message by message through ``Pipeline.process``, so that an
    exception is recorded against its message in both trees."""
    pb = getattr(p, "parse_batch", None)
    for k in range(0, len(msgs), batch):
        part = msgs[k:k + batch]
        evs = None
        if pb is not None:
            try:
                evs = pb([(raw, _peer(k + j)) for j, raw in enumerate(part)], src, RECEIVED)
            except Exception:
                evs = None
        for j, raw in enumerate(part):
            i = k + j
            try:
                if evs is not None:
                    routes, out = p.stage(evs[j])
                else:
                    _, routes, out = p.process(raw, src, _peer(i), RECEIVED)
                yield {"i": i, **_digest(routes, out)}
            except Exception as e:  # recorded: the same exception in both trees compares equal
                yield {"i": i, "exception": f"{type(e).__name__}: {e}"}


def _pipeline(Pipeline, cfg):
    try:
        return Pipeline(cfg, committers={})
    except TypeError:
        return Pipeline(cfg)


def _pull(p, cfg, vname: str):
    """The pull path: each vendor object as its pull source would build it, through the
    old enqueue_events or the new Pipeline.submit, with recording committers."""
    from parsers import falcon as falcon_parser
    from parsers.qradar import normalise_offense
    from relay.sources.pull import make_event
    log: list = []
    committers = {name: _Committer(name, log) for name in cfg.sinks}
    src = cfg.sources["tcp"]
    recs = []

    async def go():
        for i, (kind, obj) in enumerate(pulled()):
            if kind == "qradar":
                fields = normalise_offense(obj, console_url="https://qradar.invalid")
            else:
                fields = falcon_parser.normalise_dict(obj, shape="alert", notes=[])
            ev = make_event(fields, obj, src.name, RECEIVED)
            del log[:]
            if hasattr(p, "submit"):
                saved = p.committers
                p.committers = committers
                try:
                    await p.submit([ev], src)
                finally:
                    p.committers = saved
            else:
                from relay.sources.pull import enqueue_events
                saved = p.committers
                p.committers = committers
                try:
                    await enqueue_events(p, [ev], src)
                finally:
                    p.committers = saved
            recs.append({"v": vname, "src": "pull-" + kind, "i": i, **_digest([], list(log))})
    asyncio.run(go())
    return recs


def compare(a: Path, b: Path, show: int = 5) -> int:
    la = a.read_text(encoding="utf-8").splitlines()
    lb = b.read_text(encoding="utf-8").splitlines()
    bad = 0
    by: dict = {}
    for x, y in zip(la, lb):
        dx = json.loads(x)
        key = (dx.get("v"), dx.get("src"))
        tot = by.setdefault(key, [0, 0, 0])
        tot[0] += 1
        if x != y:
            bad += 1
            tot[1] += 1
            dy = json.loads(y)
            if [(s, p, e) for s, p, _, e in dx.get("out", ())] == [(s, p, e) for s, p, _, e in dy.get("out", ())] \
                    and "exception" not in dx and "exception" not in dy:
                tot[2] += 1      # payloads and reasons identical: only the queue metadata differs
            if bad <= show:
                print(f"--- differs: variant {dx.get('v')} source {dx.get('src')} input #{dx.get('i')}")
                print(f"    A: {x[:600]}")
                print(f"    B: {y[:600]}")
    if len(la) != len(lb):
        print(f"record counts differ: {len(la)} vs {len(lb)}")
        bad += abs(len(la) - len(lb))
    for (v, src), (n, d, meta_only) in sorted(by.items()):
        print(f"  {v:<7} {src:<12} {n:>7} records, {d:>6} differ ({meta_only} in the queue metadata only)")
    print(f"{min(len(la), len(lb))} records compared, {bad} differ")
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("--root", type=Path, default=ROOT)
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("-n", type=int, default=20000)
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = ap.parse_args()
    if args.cmd == "dump":
        return dump(args.root, args.out, args.n)
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())

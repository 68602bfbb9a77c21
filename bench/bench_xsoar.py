#!/usr/bin/env python3
"""Benchmark XSOAR delivery: incidents/s from a pre-filled DiskQueue to the XSOAR emulator
(tests/emulators/xsoar.py) through the real sinks, with the dedup store on.

The emulator runs as its own process (its ``main()``, ``--port 0 --quiet``, pinned to the
second CPU when there is one) so it never shares the measured event loop's CPU; this process
(the sink's event loop, its SQLite worker threads, httpx) is pinned to the first CPU.  The
emulator is started with TCP_NODELAY on its sockets (see NODELAY_NOTE below: the stock
stdlib handler stalls ~40 ms per request on Nagle + delayed ACK); ``--emulator-nagle`` runs
the stock ``python -m tests.emulators.xsoar`` instead.
Incidents are SigmaIncident syslog lines with unique incident ids, parsed and
normalised like the pipeline does (parsers.detect + parsers.normalise) and rendered by the
sink kind's real renderer (``relay.kinds.sink(type).renderer``); the queue is the daemon's
(``relay.server.open_queue``: synchronous FULL by default) and the sink is built by
``relay.sinks.make_sink`` from a config read by ``relay.config.loads``.

Phases (each round: fresh state directory, emulator reset):

  a  rest-new     N new incidents, REST sink (type "xsoar"): dedup store miss ->
                  POST /incidents/search -> POST /incident, store put, for every row
  b  rest-dedup   the same N rows queued again, a new sink on the same dedup store:
                  every row is a store hit, skipped, NO HTTP request
  c  webhook-new  N new incidents, Generic Webhook sink (type "xsoar_webhook"),
                  batch_size 50 (one POST per 50 items), dedup store on
  d  webhook-dedup the same N again through the webhook sink: store hits, no HTTP

Per phase: incidents/s (from the sink's start, queue pre-filled, until every row is acked:
the queue is empty), CPU us per incident of this process (time.process_time: sink + queue +
dedup store + httpx; the httpx client is built before the clock starts, and a warm-up of
``--warmup`` incidents through each sink loads the lazily imported modules first) and of the
emulator (/proc/PID/stat, all its threads), HTTP requests (the sink's
relay_xsoar_requests_total, cross-checked with the emulator's count).  After each phase the
emulator's incidents are fetched (GET /_emulator/incidents) and checked: exactly N incidents,
one per dedup key, none missing; phase a must search once per incident; the dedup phases
must make no request and create nothing.  Exit status 1 when a check fails.

    .venv/bin/python bench/bench_xsoar.py [-n 2000] [--concurrency 4[,8,...]] [--rounds 1]
        [--batch 50] [--webhook-batch 50] [--no-webhook] [--sync FULL|NORMAL] [--warmup 100]
        [--emulator-nagle] [--no-pin] [--timeout 300] [--json PATH] [--keep]

Loopback only; bounded (``--timeout`` s per phase); stops the emulator it started.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from parsers import detect  # noqa: E402
from parsers.normalise import normalise  # noqa: E402
from relay.config import loads  # noqa: E402
from relay.metrics import Registry  # noqa: E402
from relay import kinds  # noqa: E402
from relay.server import open_queue  # noqa: E402
from relay.sinks import make_sink  # noqa: E402

KEY_ENV = "RELAY_BENCH_XSOAR_KEY"
NODELAY_NOTE = (
    "The emulator's stdlib handler (BaseHTTPRequestHandler, wbufsize 0) writes the status line +\n"
    "headers and the body in two send()s with Nagle's algorithm on: the body waits for the ACK\n"
    "of the headers, which the client delays (~40 ms on Linux), so every request takes >= 40 ms\n"
    "and the figure measures that stall, not the relay (about 25 requests/s per connection).\n"
    "Real XSOAR (Go net/http) sets TCP_NODELAY.  By default the bench starts the emulator's own\n"
    "main() with _Handler.disable_nagle_algorithm = True; --emulator-nagle runs the stock\n"
    "`python -m tests.emulators.xsoar` instead.")
FIELD = "relaydedupkey"
SDID = "incident@32473"
ROUTE = "high_risk"
CLK = os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------- helpers
def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        with open("/proc/loadavg") as f:
            return "loadavg " + f.read().strip()


def proc_cpu(pid: int) -> float:
    """utime+stime (s) of a process, all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK


def sigma_line(inc: str, risk: int, i: int) -> bytes:
    """A SigmaIncident message like examples/samples/sigma_incidents.log, unique id."""
    body = json.dumps({
        "incident_id": inc, "risk_score": risk, "risk_level": "high" if risk < 85 else "critical",
        "actor_type": "user",
        "risk_breakdown": {"alarm_volume": 18, "sigma_severity": 22, "threat_cases": 15, "asset_criticality": 12,
                           "user_risk": 8, "mitre_coverage": 5, "recency": 2},
        "mitre_tactics": ["Credential Access", "Lateral Movement"], "mitre_techniques": ["T1110", "T1021"],
        "timeline": {"first_alarm_time": "2026-03-13T03:58:11Z", "last_alarm_time": "2026-03-13T04:29:47.5Z"},
        "url": f"https://rhythmx.example.com/incidents/{inc}"}, separators=(",", ":"))
    return (f'<137>1 2026-03-13T04:30:00.123Z rx-01 SigmaIncident 4242 created '
            f'[{SDID} id="{inc}" actor="user{i % 97}" entity="Primary Site" status="OPEN" risk_score="{risk}" '
            f'alarm_count="12" sigma_alert_count="3" threat_case_count="1" related_case_ids="C-11,C-12"] '
            f'{body}').encode()


def build_rows(n: int, tag: str, renderer) -> tuple[list[tuple[bytes, dict]], list[str], float]:
    """-> ([(payload, meta)], dedup keys, render CPU us per incident).  Meta as the pipeline
    builds it (relay/pipeline.py Pipeline.process)."""
    lines = [sigma_line(f"INC-{tag}-{i:06d}", 70 + i % 30, i) for i in range(n)]
    rows, keys = [], []
    c0 = time.process_time()
    now = time.time()
    for raw in lines:
        ev = detect.parse(raw, received=now, peer="127.0.0.1", source="bench")
        normalise(ev)
        f = ev.fields
        meta = {"source": "bench", "routes": [ROUTE], "received": now}
        if f.get("dedup_key"):
            meta["dedup_key"] = f["dedup_key"]
        if f.get("event"):
            meta["event"] = f["event"]
        if f.get("status"):
            meta["status"] = f["status"]
        rows.append((renderer(ev, [ROUTE]), meta))
        keys.append(f["dedup_key"])
    cpu = time.process_time() - c0
    if len(set(keys)) != n:
        raise SystemExit(f"bench bug: {n - len(set(keys))} duplicate dedup keys in the generated incidents")
    return rows, keys, cpu / n * 1e6


def config_text(state_dir: Path, url: str, *, sync: str, batch: int, concurrency: int, webhook_batch: int) -> str:
    return f"""
[relay]
state_dir = "{state_dir}"
metrics_address = "off"
drain_timeout = 5.0

[relay.queue]
synchronous = "{sync}"

[relay.retry]
base = 0.2
factor = 2.0
cap = 1.0
max_attempts = 0

[routes.{ROUTE}]
match = 'app_name == "SigmaIncident" and risk_score >= 70'
sinks = ["xsoar", "xsoar_webhook"]

[sinks.xsoar]
type = "xsoar"
url = "{url}"
api_key_env = "{KEY_ENV}"
batch_size = {batch}
concurrency = {concurrency}
timeout = 30.0

[sinks.xsoar_webhook]
type = "xsoar_webhook"
url = "{url}/instance/execute/relay"
batch_size = {webhook_batch}
concurrency = {concurrency}
timeout = 30.0
"""


# ----------------------------------------------------------------------------- emulator
class Emulator:
    """``python -m tests.emulators.xsoar`` in a child process (its own CPU when there is one)."""

    def __init__(self, key_env: str, cpu: int | None, logfile: Path, nagle: bool = False) -> None:
        self.nagle = nagle
        self.pin_cpu = cpu
        self.logfile = logfile
        self.key_env = key_env
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 30.0) -> "Emulator":
        def pin():
            if self.pin_cpu is not None:
                try:
                    os.sched_setaffinity(0, {self.pin_cpu})
                except OSError:
                    pass
        self._err = open(self.logfile, "wb")
        if self.nagle:
            launch = ["-m", "tests.emulators.xsoar"]
        else:   # the same main(), with TCP_NODELAY on the emulator's sockets (see NODELAY_NOTE)
            launch = ["-c", "import sys; from tests.emulators import xsoar as x; "
                            "x._Handler.disable_nagle_algorithm = True; sys.exit(x.main(sys.argv[1:]))"]
        self.proc = subprocess.Popen(
            [sys.executable, *launch, "--host", "127.0.0.1", "--port", "0",
             "--api-key-env", self.key_env, "--quiet"],
            cwd=str(ROOT), stdout=subprocess.PIPE, stderr=self._err, preexec_fn=pin)
        deadline = time.monotonic() + timeout
        buf = b""
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if r:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
                for line in buf.decode(errors="replace").splitlines():
                    if line.startswith("XSOAR emulator on "):
                        self.url = line.split()[-1]
                        return self
            if self.proc.poll() is not None:
                break
        self.stop()
        raise SystemExit(f"the XSOAR emulator did not start; output: {buf.decode(errors='replace')!r}; "
                         f"stderr in {self.logfile}")

    def _req(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    def reset(self) -> None:
        self._req("POST", "/_emulator/reset", {})

    def stats(self) -> dict:
        return self._req("GET", "/_emulator/stats")

    def incidents(self) -> list[dict]:
        return self._req("GET", "/_emulator/incidents")

    def cpu(self) -> float:
        assert self.proc is not None
        return proc_cpu(self.proc.pid)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._err.close()
        self.proc = None


def requests_of(stats: dict) -> int:
    return sum(v for k, v in stats.items() if k.startswith("http_"))


def incident_key(inc: dict, kind: str) -> str | None:
    if kind == "xsoar":
        return (inc.get("CustomFields") or {}).get(FIELD)
    try:
        return ((json.loads(inc.get("rawJSON") or "{}").get("relay")) or {}).get("dedup_key")
    except ValueError:
        return None


def check_incidents(emu: Emulator, kind: str, keys: list[str]) -> dict:
    incs = emu.incidents()
    got = [incident_key(i, kind) for i in incs]
    want = set(keys)
    counts: dict = {}
    for k in got:
        counts[k] = counts.get(k, 0) + 1
    dups = sum(c - 1 for k, c in counts.items() if c > 1)
    missing = len(want - set(counts))
    foreign = sum(c for k, c in counts.items() if k not in want)
    ok = len(incs) == len(keys) and dups == 0 and missing == 0 and foreign == 0
    return {"incidents": len(incs), "expected": len(keys), "distinct_keys": len(counts), "duplicates": dups,
            "missing": missing, "unexpected": foreign, "ok": ok}


# ----------------------------------------------------------------------------- one phase
async def drain(sink, n: int, timeout: float) -> dict:
    """Run the sink until n rows are settled (acked or dead-lettered) or timeout."""
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    t0 = time.perf_counter()
    complete = True
    while sink.stats["sent"] + sink.stats["dead_lettered"] < n:
        if task.done():
            task.result()
            complete = False
            break
        if time.perf_counter() - t0 > timeout:
            complete = False
            break
        # poll often enough for ~0.5% wall resolution, rarely enough not to cost CPU in long runs
        await asyncio.sleep(min(0.02, max(0.002, (time.perf_counter() - t0) / 200)))
    wall = time.perf_counter() - t0
    stop.set()
    await task
    return {"wall": wall, "complete": complete}


def run_phase(phase: str, cfg, sink_name: str, rows: list, keys: list[str], emu: Emulator,
              timeout: float) -> dict:
    sc = cfg.sinks[sink_name]
    q = open_queue(cfg.relay.state_dir, sc)
    for i in range(0, len(rows), 1000):
        q.put_many(rows[i:i + 1000])
    assert q.depth() == len(rows), q.depth()
    sink = make_sink(sc, q, registry=Registry(), drain_timeout=5.0)
    sink.client()   # the httpx client (TLS context, pool) is built once per sink: not per-incident work
    st0 = emu.stats()
    ecpu0 = emu.cpu()
    c0 = time.process_time()
    res = asyncio.run(drain(sink, len(rows), timeout))
    cpu = time.process_time() - c0
    ecpu = emu.cpu() - ecpu0
    st1 = emu.stats()
    depth = q.depth()
    dlq = q.dlq_depth()
    q.close()
    n = len(rows)
    actions = dict(_counters(sink.registry, "relay_xsoar_incidents_total"))
    sent_requests = sum(v for _, v in _counters(sink.registry, "relay_xsoar_requests_total", "op"))
    http = {k: st1.get(k, 0) - st0.get(k, 0) for k in set(st0) | set(st1)
            if k.startswith("http_") and st1.get(k, 0) != st0.get(k, 0)}
    out = {
        "phase": phase, "sink": sink_name, "n": n, "complete": res["complete"] and depth == 0,
        "wall_s": res["wall"], "incidents_per_s": n / res["wall"] if res["wall"] > 0 else float("nan"),
        "cpu_s": cpu, "cpu_us_per_incident": cpu / n * 1e6, "cores": cpu / res["wall"] if res["wall"] else 0.0,
        "emulator_cpu_s": ecpu, "emulator_cpu_us_per_incident": ecpu / n * 1e6,
        "emulator_cores": ecpu / res["wall"] if res["wall"] else 0.0,
        # requests the sink made (its relay_xsoar_requests_total); the emulator's own count
        # minus the one control request (GET /_emulator/stats) answered after the first snapshot
        "http_requests": sent_requests, "emulator_requests": requests_of(st1) - requests_of(st0) - 1,
        "http_by_status": http,
        "emulator_searches": st1.get("searches", 0) - st0.get("searches", 0),
        "emulator_created": st1.get("created", 0) - st0.get("created", 0),
        "sink_stats": dict(sink.stats), "actions": actions, "queue_depth_after": depth, "dlq_after": dlq,
    }
    out["check"] = check_incidents(emu, "xsoar" if sink_name == "xsoar" else "webhook", keys)
    return out


def _counters(reg, name: str, label: str = "action") -> list[tuple[str, int]]:
    """(label value, count) of a counter family in a private Registry."""
    out = []
    for (cname, labels), value in reg.counters_snapshot().items():
        if cname == name:
            out.append((dict(labels).get(label, "?"), int(value)))
    return out


# ----------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=2000, help="incidents per phase (2000)")
    ap.add_argument("--concurrency", default="4",
                    help="sink concurrency (requests in flight); a comma list runs each (4)")
    ap.add_argument("--batch", type=int, default=50, help="REST sink batch_size (rows leased at once; 50)")
    ap.add_argument("--webhook-batch", type=int, default=50, help="webhook sink batch_size (50)")
    ap.add_argument("--no-webhook", action="store_true", help="skip phases c and d")
    ap.add_argument("--sync", choices=("FULL", "NORMAL"), default="FULL", help="queue synchronous (FULL)")
    ap.add_argument("--rounds", type=int, default=1, help="repeat everything; medians are shown (1)")
    ap.add_argument("--warmup", type=int, default=100,
                    help="incidents sent once through each sink before measuring, not counted (100; 0: none)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per phase before INCOMPLETE (300)")
    ap.add_argument("--emulator-nagle", action="store_true",
                    help="run the stock emulator (Nagle on: ~40 ms per request, see the note it prints)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin this process and the emulator to CPUs")
    ap.add_argument("--json", metavar="PATH", help="write every run and the summary as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    if args.n < 1 or args.rounds < 1:
        ap.error("-n and --rounds must be >= 1")
    concs = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if not concs or min(concs) < 1:
        ap.error("--concurrency: positive integers, comma separated")

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    emu_cpu = None
    if not args.no_pin and len(cpus) > 1:
        os.sched_setaffinity(0, {cpus[0]})
        emu_cpu = cpus[1]
    os.environ[KEY_ENV] = "bench-" + secrets.token_hex(12)
    work = Path(tempfile.mkdtemp(prefix="bench-xsoar-"))
    load_before = uptime()
    print(f"load before: {load_before}")
    print(f"n={args.n} concurrency={concs} REST batch={args.batch} webhook batch={args.webhook_batch} "
          f"queue synchronous={args.sync} rounds={args.rounds}; bench on CPU {cpus[0] if emu_cpu is not None else 'any'}, "
          f"emulator on CPU {emu_cpu if emu_cpu is not None else 'any'}")
    emu = Emulator(KEY_ENV, emu_cpu, work / "emulator.stderr", nagle=args.emulator_nagle).start()
    print(f"emulator {emu.url} (pid {emu.proc.pid}), "
          + ("stock (Nagle on)" if args.emulator_nagle else "TCP_NODELAY on its sockets"))
    if args.emulator_nagle:
        print(NODELAY_NOTE)
    runs: list[dict] = []
    failures: list[str] = []
    try:
        tag = secrets.token_hex(3)
        # render once (the same bodies for every round: the dedup store and the emulator are fresh)
        cfg0 = loads(config_text(work / "probe", emu.url, sync=args.sync, batch=args.batch, concurrency=concs[0],
                                 webhook_batch=args.webhook_batch), base_dir=work)
        rest, hook = cfg0.sinks["xsoar"], cfg0.sinks["xsoar_webhook"]
        rest_rows, keys, rest_render_us = build_rows(args.n, tag, kinds.sink(rest.type).renderer(rest))
        wh_rows, wh_keys, wh_render_us = build_rows(args.n, tag, kinds.sink(hook.type).renderer(hook))
        assert wh_keys == keys
        print(f"rendered {args.n} incident bodies: REST {statistics.mean(len(p) for p, _ in rest_rows):.0f} B "
              f"({rest_render_us:.1f} us CPU each: parse+normalise+render), webhook item "
              f"{statistics.mean(len(p) for p, _ in wh_rows):.0f} B ({wh_render_us:.1f} us)")
        if args.warmup:
            # load the lazily imported modules (httpx/anyio backends, ...) and warm the caches once,
            # so the first measured phase does not pay the process's one-time costs
            wcfg = loads(config_text(work / "warmup", emu.url, sync=args.sync, batch=args.batch,
                                     concurrency=concs[0], webhook_batch=args.webhook_batch), base_dir=work)
            wk = min(args.warmup, args.n)
            for sink_name, rows in (("xsoar", rest_rows), ("xsoar_webhook", wh_rows)):
                if sink_name == "xsoar_webhook" and args.no_webhook:
                    continue
                emu.reset()
                w = run_phase("warmup", wcfg, sink_name, rows[:wk], keys[:wk], emu, args.timeout)
                if not w["check"]["ok"] or not w["complete"]:
                    print(f"warm-up through {sink_name} failed: {w['check']} {w['sink_stats']}")
                    return 1
            print(f"warm-up: {wk} incidents through each sink (not counted)")
        print()
        hdr = (f"{'round':>5} {'phase':<15} {'conc':>4} {'incidents/s':>11} {'wall s':>7} {'CPU us/inc':>10} "
               f"{'cores':>5} {'emu us/inc':>10} {'HTTP req':>8}  check")
        print(hdr)
        for rnd in range(1, args.rounds + 1):
            for conc in concs:
                state = work / f"r{rnd}-c{conc}"
                cfg = loads(config_text(state, emu.url, sync=args.sync, batch=args.batch, concurrency=conc,
                                        webhook_batch=args.webhook_batch), base_dir=work)
                phases = [("a rest-new", "xsoar", rest_rows), ("b rest-dedup", "xsoar", rest_rows)]
                if not args.no_webhook:
                    phases += [("c webhook-new", "xsoar_webhook", wh_rows),
                               ("d webhook-dedup", "xsoar_webhook", wh_rows)]
                for phase, sink_name, rows in phases:
                    if phase.endswith("-new"):
                        emu.reset()
                    r = run_phase(phase, cfg, sink_name, rows, keys, emu, args.timeout)
                    r.update(round=rnd, concurrency=conc)
                    runs.append(r)
                    c = r["check"]
                    problems = []
                    if not r["complete"]:
                        problems.append(f"INCOMPLETE (queue depth {r['queue_depth_after']}, "
                                        f"dlq {r['dlq_after']}, sink {r['sink_stats']})")
                    if r["sink_stats"]["dead_lettered"] or r["sink_stats"]["retried"]:
                        problems.append(f"retried {r['sink_stats']['retried']}, "
                                        f"dead-lettered {r['sink_stats']['dead_lettered']}")
                    if not c["ok"]:
                        problems.append(f"emulator holds {c['incidents']} incidents for {c['expected']} "
                                        f"(duplicates {c['duplicates']}, missing {c['missing']}, "
                                        f"unexpected {c['unexpected']})")
                    if phase.endswith("-dedup") and (r["http_requests"] or r["emulator_requests"]
                                                     or r["emulator_created"]):
                        problems.append(f"dedup phase made {r['http_requests']} HTTP requests (emulator saw "
                                        f"{r['emulator_requests']}, created {r['emulator_created']})")
                    if r["http_requests"] != r["emulator_requests"]:
                        problems.append(f"the sink counted {r['http_requests']} requests, the emulator "
                                        f"{r['emulator_requests']}")
                    if phase == "a rest-new" and r["emulator_searches"] != r["n"]:
                        problems.append(f"{r['emulator_searches']} searches for {r['n']} incidents")
                    r["problems"] = problems
                    failures += [f"round {rnd} {phase} c{conc}: {p}" for p in problems]
                    verdict = (f"{c['incidents']}/{c['expected']} incidents, {c['duplicates']} dup, "
                               f"{c['missing']} missing: {'OK' if not problems else 'FAIL'}")
                    print(f"{rnd:>5} {phase:<15} {conc:>4} {r['incidents_per_s']:>11,.0f} {r['wall_s']:>7.2f} "
                          f"{r['cpu_us_per_incident']:>10.1f} {r['cores']:>5.2f} "
                          f"{r['emulator_cpu_us_per_incident']:>10.1f} {r['http_requests']:>8}  {verdict}",
                          flush=True)
    finally:
        emu.stop()
        load_after = uptime()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")

    # summary: medians per (phase, concurrency)
    summary = []
    print()
    print(f"load after: {load_after}")
    print("Summary (median over rounds; CPU = this process: sink + queue + dedup store + httpx):")
    seen = []
    for r in runs:
        k = (r["phase"], r["concurrency"])
        if k not in seen:
            seen.append(k)
    for phase, conc in seen:
        rs = [r for r in runs if r["phase"] == phase and r["concurrency"] == conc]
        s = {"phase": phase, "concurrency": conc, "runs": len(rs),
             "incidents_per_s": statistics.median(r["incidents_per_s"] for r in rs),
             "cpu_us_per_incident": statistics.median(r["cpu_us_per_incident"] for r in rs),
             "emulator_cpu_us_per_incident": statistics.median(r["emulator_cpu_us_per_incident"] for r in rs),
             "http_requests_per_incident": statistics.median(r["http_requests"] / r["n"] for r in rs),
             "all_checks_ok": all(not r["problems"] for r in rs)}
        summary.append(s)
        print(f"  {phase:<15} concurrency {conc:>2}: {s['incidents_per_s']:>8,.0f} incidents/s  "
              f"{s['cpu_us_per_incident']:>7.1f} us CPU/incident  (emulator {s['emulator_cpu_us_per_incident']:.1f} "
              f"us/incident, {s['http_requests_per_incident']:.2f} HTTP requests/incident)")
    last = {r["phase"]: r for r in runs}
    for ph in ("a rest-new", "c webhook-new"):
        if ph in last:
            c = last[ph]["check"]
            print(f"check ({ph}, last run): emulator holds {c['incidents']} incidents for {c['expected']} expected, "
                  f"{c['distinct_keys']} distinct dedup keys, {c['duplicates']} duplicates, {c['missing']} missing"
                  f" -> {'OK: exactly N, no duplicates' if c['ok'] else 'FAIL'}")
    if failures:
        print("FAILURES:")
        for f in failures:
            print("  " + f)
    else:
        print("all checks passed")
    if args.json:
        doc = {"params": {k: v for k, v in vars(args).items() if k != "json"}, "concurrency": concs,
               "cpus": {"bench": cpus[0] if emu_cpu is not None else None, "emulator": emu_cpu},
               "load_before": load_before, "load_after": load_after,
               "render_us_per_incident": {"xsoar": rest_render_us, "xsoar_webhook": wh_render_us},
               "runs": runs, "summary": summary, "failures": failures}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

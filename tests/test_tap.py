"""``relay tap`` and ``GET /tap`` (relay/tap.py).

In process: the pipeline's hook (``Pipeline.tap`` is None without a session), the point, the
filter, the rate limit and the bounded buffer (a reader that never reads makes the tap skip,
never the pipeline), every view.  End to end: a ``relay run`` subprocess with traffic, the
``relay tap`` command filtering the sample, and the endpoint's refusals (unknown point, bad
rule, missing token, not loopback without a token).
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import urllib.error
import urllib.request


from relay.config import loads
from relay.metrics import MetricsServer
from relay.pipeline import Pipeline
from relay.tap import TapError, TapHub, TapSession, endpoint, serve
from tests.harness import LOOPBACK, free_port, relay_command, sigma_line, wait_until

CFG = """
[sources.tcp_in]
type = "tcp"
address = "127.0.0.1:5514"

[routes.high]
match = 'app_name == "SigmaIncident" and risk_score >= 70'
sinks = ["siem", "xsoar"]

[routes.rest]
match = 'true'
sinks = ["siem"]

[sinks.siem]
type = "syslog"
address = "127.0.0.1:6514"
format = "leef"

[sinks.xsoar]
type = "xsoar"
url = "https://xsoar.example"
api_key_env = "TAP_TEST_XSOAR_KEY"
"""


class _Committer:
    """Takes rows and forgets them (what the hook does is measured, not the queue)."""
    pending = 0
    blocked_reason = None

    def __init__(self):
        self.rows = 0

    def submit(self, rows):
        self.rows += len(rows)
        f = asyncio.get_running_loop().create_future()
        f.set_result(None)
        return f

    def submit_dead(self, payload, meta, err):
        self.rows += 1


def _pipeline():
    cfg = loads(CFG, secrets=False)
    p = Pipeline(cfg, {name: _Committer() for name in cfg.sinks})
    return cfg, p


def _handle(p, items, source):
    """``Pipeline.handle`` as a listener calls it (on the loop), awaiting the hand-over."""
    async def go():
        fut = p.handle(items, source)
        if fut is not None:
            await fut
    asyncio.run(go())


def _msgs(n, risk=82):
    return [(sigma_line(f"INC-{i}", risk=risk), "127.0.0.1:9") for i in range(n)]


def test_no_session_no_hook():
    cfg, p = _pipeline()
    assert p.tap is None
    hub = TapHub(p)
    s = TapSession("source", "tcp_in", "raw", rate=100)
    hub.attach(s)
    assert p.tap is hub
    hub.detach(s)
    assert p.tap is None
    _handle(p, _msgs(3), cfg.sources["tcp_in"])
    assert not s.q and s.seen == 0


def test_point_filter_and_views():
    from relay.rules import compile_rule
    cfg, p = _pipeline()
    hub = TapHub(p)
    structured = {"siem": False, "xsoar": True}
    at_route = TapSession("route", "high", "parsed", rate=1000)
    at_sink = TapSession("sink", "xsoar", "rendered", rate=1000, structured=structured)
    filtered = TapSession("source", "tcp_in", "canonical", rate=1000, rule=compile_rule('id == "INC-LOW-1"'))
    raw = TapSession("source", "tcp_in", "raw", rate=1000)
    for s in (at_route, at_sink, filtered, raw):
        hub.attach(s)
    src = cfg.sources["tcp_in"]
    _handle(p, _msgs(2) + [(sigma_line("INC-LOW-1", risk=10), "127.0.0.1:9"), (b"<13>1 not syslog", None)], src)
    assert len(at_route.q) == 2 and len(at_sink.q) == 2 and len(raw.q) == 4 and len(filtered.q) == 1
    recs = at_route.drain()
    assert recs[0]["syslog"]["app_name"] == "SigmaIncident" and recs[0]["routes"] == ["high", "rest"]
    recs = at_sink.drain()
    assert list(recs[0]["sinks"]) == ["xsoar"] and isinstance(recs[0]["sinks"]["xsoar"], dict)
    recs = filtered.drain()
    assert recs[0]["event"]["id"] == "INC-LOW-1"
    recs = raw.drain()
    assert recs[3]["raw"] == "<13>1 not syslog"
    # the parse error in the parsed view, with its byte offset
    bad = TapSession("source", "tcp_in", "parsed", rate=1000)
    hub.attach(bad)
    _handle(p, [(b"<13>1 not syslog", None)], src)
    rec = bad.drain()[0]
    assert rec["ok"] is False and rec["error"]["offset"] >= 0 and rec["error"]["reason"]
    # rendered at a route: every matched sink's payload, the LEEF line as text
    rend = TapSession("route", "high", "rendered", rate=1000, structured=structured)
    hub.attach(rend)
    _handle(p, _msgs(1), src)
    rec = rend.drain()[0]
    assert rec["sinks"]["siem"].startswith("<") and "LEEF:" in rec["sinks"]["siem"]
    assert isinstance(rec["sinks"]["xsoar"], dict)


def test_rate_limit_and_full_buffer_skip_for_the_tap_only():
    cfg, p = _pipeline()
    hub = TapHub(p)
    slow = TapSession("source", "tcp_in", "raw", rate=5)
    small = TapSession("source", "tcp_in", "raw", rate=10_000, buffer=10)
    hub.attach(slow)
    hub.attach(small)
    n = 2000
    _handle(p, _msgs(n), cfg.sources["tcp_in"])
    # the pipeline handed every event over, whatever the taps did
    assert p.committers["siem"].rows == n and p.committers["xsoar"].rows == n
    # burst of one second's worth, then a few more as time passed
    assert 5 <= len(slow.q) <= 5 + 5 * 10
    assert slow.skipped_rate == n - len(slow.q) and slow.skipped_full == 0
    assert len(small.q) == 10 and small.skipped_full == n - 10
    st = small.status()
    assert st["skipped"] == {"rate": 0, "full": n - 10} and st["seen"] == n


def test_a_failing_session_is_detached_not_the_pipeline():
    cfg, p = _pipeline()
    hub = TapHub(p)
    s = TapSession("source", "tcp_in", "raw", rate=100)

    def boom(ev):
        raise RuntimeError("bug in a tap")
    s.rule = boom
    hub.attach(s)
    _handle(p, _msgs(3), cfg.sources["tcp_in"])
    assert p.committers["siem"].rows == 3 and p.tap is None


def test_the_endpoint_refuses_bad_requests():
    cfg, p = _pipeline()
    hub = TapHub(p)

    async def call(query):
        sent = []

        async def receive():
            await asyncio.sleep(3600)

        async def send(m):
            sent.append(m)
        try:
            await serve(hub, query, receive, send, config=cfg, workers=1)
        except TapError as e:
            return e.status, str(e)
        return 200, sent
    assert asyncio.run(call({"source": "nope"}))[0] == 404
    assert asyncio.run(call({}))[0] == 400
    assert asyncio.run(call({"source": "tcp_in", "route": "high"}))[0] == 400
    status, msg = asyncio.run(call({"source": "tcp_in", "filter": "risk_score >>> 3"}))
    assert status == 400 and "filter" in msg
    assert asyncio.run(call({"source": "tcp_in", "view": "everything"}))[0] == 400
    assert asyncio.run(call({"source": "tcp_in", "rate": "0"}))[0] == 400
    # a listener with ingest workers is out of the tap's reach: said, not silently empty
    async def workers():
        try:
            await serve(hub, {"source": "tcp_in"}, None, None, config=cfg, workers=2)
        except TapError as e:
            return e.status, str(e)
    status, msg = asyncio.run(workers())
    assert status == 409 and "workers" in msg
    assert p.tap is None


def test_not_loopback_without_a_token_is_refused():
    """A metrics server bound to a routable address with no token: /tap answers 403 (the app is
    called directly: nothing listens beyond loopback)."""
    cfg, p = _pipeline()
    hub = TapHub(p)
    ms = MetricsServer("192.0.2.10", 9514, routes={"/tap": endpoint(hub, lambda: cfg, 1)})
    sent = []

    async def send(m):
        sent.append(m)

    async def receive():
        return {"type": "http.disconnect"}
    scope = {"type": "http", "method": "GET", "path": "/tap", "query_string": b"source=tcp_in", "headers": []}
    asyncio.run(ms._app(scope, receive, send))
    assert sent[0]["status"] == 403 and b"not loopback" in sent[1]["body"]


# ============================================================================ end to end
def _e2e_config(mport: int, tcp: int, out: str, token_file: str | None = None) -> str:
    tok = f'metrics_token_file = "{token_file}"\n' if token_file else ""
    return f"""
[relay]
state_dir = "state"
metrics_address = "{LOOPBACK}:{mport}"
drain_timeout = 3
{tok}
[sources.tcp_in]
type = "tcp"
address = "{LOOPBACK}:{tcp}"

[routes.high]
match = 'app_name == "SigmaIncident" and risk_score >= 70'
sinks = ["out"]

[routes.rest]
match = 'true'
sinks = ["out"]
final = true

[sinks.out]
type = "file"
path = "{out}"
format = "leef"
"""


class _Sender:
    """Sends SigmaIncidents (risk alternating 82/10) over TCP until stopped."""

    def __init__(self, relay):
        self.relay = relay
        self.stop = threading.Event()
        self.sent = 0
        self.t = threading.Thread(target=self.run, daemon=True)

    def run(self):
        i = 0
        while not self.stop.is_set():
            batch = [sigma_line(f"INC-E2E-{i + k}", risk=82 if (i + k) % 2 else 10) for k in range(20)]
            self.relay.send(batch)
            i += 20
            self.sent = i
            self.stop.wait(0.05)

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *a):
        self.stop.set()
        self.t.join(30)


def test_relay_tap_sees_and_filters_the_live_sample(tmp_path, make_relay):
    mport, tcp = free_port(), free_port()
    relay = make_relay(_e2e_config(mport, tcp, str(tmp_path / "out.log")), mport, tmp_path, tcp_port=tcp).start()
    url = f"http://{LOOPBACK}:{mport}"
    with _Sender(relay):
        r = subprocess.run(relay_command() + ["tap", "--url", url, "--source", "tcp_in", "--view", "canonical",
                                              "--filter", "risk_score >= 70", "--count", "5", "--rate", "1000"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.strip().splitlines()
        assert len(lines) == 5
        for line in lines:
            ev = json.loads(line.split(" ", 3)[3])
            assert ev["risk_score"] >= 70 and ev["id"].startswith("INC-E2E-")
        assert "tap: source tcp_in (canonical" in r.stderr and "5 shown" in r.stderr
        # rendered at the sink, NDJSON: the exact LEEF line the file sink queues
        r = subprocess.run(relay_command() + ["tap", "--url", url, "--sink", "out", "--count", "2", "--json",
                                              "--rate", "1000"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        recs = [json.loads(x) for x in r.stdout.splitlines()]
        assert recs[0]["type"] == "hello" and recs[0]["view"] == "rendered"
        evs = [x for x in recs if x["type"] == "event"]
        assert len(evs) == 2 and all("LEEF:" in x["sinks"]["out"] for x in evs)
        assert recs[-1]["type"] == "status" and recs[-1]["final"] is True
        # a low rate: the sample is thinned and the skipped events are counted and said
        r = subprocess.run(relay_command() + ["tap", "--url", url, "--source", "tcp_in", "--view", "raw",
                                              "--rate", "1", "--duration", "3"], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        shown = len(r.stdout.strip().splitlines())
        assert 1 <= shown <= 5
        skipped = int(r.stderr.rsplit(" shown, ", 1)[1].split(" skipped")[0])
        assert skipped > 0, r.stderr
    m = relay.metrics()
    assert m.value("relay_tap_skipped_total", reason="rate") >= skipped
    assert m.value("relay_tap_sessions") == 0
    # the pipeline delivered everything it received, tap or not
    wait_until(lambda: relay.metric("relay_sent_total", sink="out") == relay.metric("relay_received_total"),
               30, what="every received event delivered")


def test_tap_endpoint_refusals(tmp_path, make_relay):
    mport, tcp = free_port(), free_port()
    (tmp_path / "metrics.token").write_text("tap-secret-token\n")
    relay = make_relay(_e2e_config(mport, tcp, str(tmp_path / "out.log"), str(tmp_path / "metrics.token")),
                       mport, tmp_path, tcp_port=tcp)
    relay.start(wait_ready=False)

    def get(path, token=None):
        req = urllib.request.Request(f"http://{LOOPBACK}:{mport}{path}")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return None, ""
    wait_until(lambda: get("/ready", "tap-secret-token")[0] == 200, 30, what="relay ready")
    assert get("/tap?source=tcp_in&count=1")[0] == 401
    assert get("/tap?source=tcp_in&count=1", "wrong")[0] == 401
    status, body = get("/tap?source=nope", "tap-secret-token")
    assert status == 404 and "tcp_in" in body
    status, body = get("/tap?source=tcp_in&filter=risk_score%20%3E%3E", "tap-secret-token")
    assert status == 400 and "filter" in body
    # with the token: streams (the CLI reads the token from the config)
    relay.send([sigma_line("INC-TOK-1")])
    r = subprocess.run(relay_command() + ["tap", "--config", str(tmp_path / "relay.toml"), "--source", "tcp_in",
                                          "--duration", "1"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(relay_command() + ["tap", "--url", f"http://{LOOPBACK}:{mport}", "--source", "tcp_in",
                                          "--count", "1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "refused (401)" in r.stderr

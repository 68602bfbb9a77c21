"""End-to-end: the ``http`` source of `relay run`, driven by curl and raw sockets on 127.0.0.1.

* (a) bearer, HMAC (with a timestamp), Basic (syslog lines) and HEC sources in one relay with
  ``workers = 2``: curl's requests accepted, every refusal answered and counted by reason, a body
  with one bad NDJSON line refused whole (nothing of it queued), a 100 MB body refused without
  being read, Splunk HEC requests as HEC clients send them, /metrics behind a bearer token;
* (b) HTTPS with client certificates (mTLS), TLS 1.1 refused;
* (c) a Sekoia.io playbook's alert reaches the XSOAR emulator as one incident with alertId,
  alertUrl and urgency mapped, POSTed three times; a QRadar offense webhook twice: one incident;
* (d) a request answered 200, the relay SIGKILLed right after: the events are delivered after a
  restart;
* (e) full queues: 503 with Retry-After, memory flat over thousands of refused requests, and
  accepted again once the queue drains.
"""
from __future__ import annotations

import gzip
import hashlib
import hmac
import http.client
import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness import LOOPBACK, QradarStandIn, counts, free_port, wait_until

pytestmark = pytest.mark.e2e

TOKEN = "t0k-3f9a-intake-8d2c"
OLD_TOKEN = "t0k-old-rotated-1b7e"
HEC_TOKEN = "11111111-2222-3333-4444-555555555555"
METRICS_TOKEN = "m3trics-9c1d"
ENV = {"RELAY_E2E_HTTP_TOKEN": f"{TOKEN}\n{OLD_TOKEN}", "RELAY_E2E_HEC_TOKEN": HEC_TOKEN,
       "RELAY_E2E_METRICS_TOKEN": METRICS_TOKEN, "RELAY_E2E_XSOAR_KEY": "x-k3y-5e5e"}

SEKOIA = {"name": "Brute force on VPN", "occurred": "2025-05-14T09:12:44Z", "alertId": "AL13426AYUU",
          "alertUrl": "https://app.sekoia.io/sic/alerts/AL13426AYUU", "urgency": 63,
          "events": [{"timestamp": "2025-05-14T09:12:40Z", "source.ip": "203.0.113.7", "host.name": "vpn-gw-01"}]}
OFFENSE = {"offense_id": 12345, "start_time": "2024-05-15T14:30:00Z", "severity": 8,
           "description": "Multiple Failed Logins", "offense_source": "10.0.1.100", "categories": ["Access"],
           "magnitude": 4, "domain_id": 0}


def keep_alive(port: int) -> http.client.HTTPConnection:
    """A keep-alive client connection with TCP_NODELAY, as real HTTP clients (curl, urllib3) set
    it: http.client sends headers and body in two writes, and with Nagle the body would wait
    for the delayed ACK of the headers (40 ms per request)."""
    c = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    c.connect()
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c


def curl(*args, data: bytes | None = None, timeout: float = 30) -> tuple[int, bytes, int]:
    """curl ARGS -> (HTTP status, body, curl's exit code); status 0 when there was no answer."""
    p = subprocess.run(["curl", "-sS", "--max-time", str(int(timeout)), "-o", "-", "-w", "\n%{http_code}", *args],
                       input=data, capture_output=True, timeout=timeout + 10)
    body, _, code = p.stdout.rpartition(b"\n")
    return int(code or 0), body, p.returncode


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def base_config(workdir: Path, metrics: int, *, workers: int = 1, extra: str = "", relay: str = "") -> str:
    return f"""
[relay]
state_dir = "{workdir / 'state'}"
metrics_address = "{LOOPBACK}:{metrics}"
drain_timeout = 3.0
workers = {workers}
{relay}
[relay.queue]
synchronous = "NORMAL"
[relay.retry]
base = 0.2
factor = 2.0
cap = 1.0
max_attempts = 0
{extra}
"""


# ----------------------------------------------------------------------------- (a)
@pytest.mark.quiet          # a 100 MB upload refused within 5 s: a latency bound (tests/conftest.py)
def test_a_curl_auth_answers_bad_bodies_hec_and_metrics(tmp_path, make_relay, monkeypatch):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    met, pb, ph, ps, pe = (free_port() for _ in range(5))
    out = tmp_path / "out.jsonl"
    conf = base_config(tmp_path, met, workers=2, relay='metrics_token_env = "RELAY_E2E_METRICS_TOKEN"', extra=f"""
[sources.alerts]
type = "http"
address = "{LOOPBACK}:{pb}"
paths = ["/ingest", "/sekoia"]
token_env = "RELAY_E2E_HTTP_TOKEN"
map = "sekoia"
max_body = 65536

[sources.signed]
type = "http"
address = "{LOOPBACK}:{ph}"
format = "ndjson"
auth = "hmac-sha256"
token_env = "RELAY_E2E_HTTP_TOKEN"
hmac_timestamp_header = "X-Timestamp"

[sources.lines]
type = "http"
address = "{LOOPBACK}:{ps}"
format = "syslog"
auth = "basic"
username = "forwarder"
token_env = "RELAY_E2E_HTTP_TOKEN"

[sources.hec]
type = "http"
address = "{LOOPBACK}:{pe}"
format = "hec"
token_env = "RELAY_E2E_HEC_TOKEN"

[sinks.out]
type = "file"
path = "{out}"
format = "json"

[routes.all]
match = 'true'
sinks = ["out"]
""")
    r = make_relay(conf, met, tmp_path)
    r.start(wait_ready=False)
    try:
        wait_until(lambda: _ready(met), 30, what="/ready with the metrics token")
    except AssertionError:
        raise AssertionError(r.stderr()[-3000:]) from None
    url = f"http://{LOOPBACK}:{pb}"
    auth = ["-H", f"Authorization: Bearer {TOKEN}"]
    js = ["-H", "Content-Type: application/json"]
    # accepted: one object, an array, the rotated (old) token, gzip, the second path
    assert curl(url + "/ingest", *auth, *js, "--data-binary", "@-", data=json.dumps(SEKOIA).encode())[:2] == \
        (200, b'{"accepted":1}')
    arr = [dict(SEKOIA, alertId=f"AL-{i}") for i in range(3)]
    assert curl(url + "/sekoia", "-H", f"Authorization: Bearer {OLD_TOKEN}", *js, "--data-binary", "@-",
                data=json.dumps(arr).encode())[:2] == (200, b'{"accepted":3}')
    gz = tmp_path / "a.json.gz"
    gz.write_bytes(gzip.compress(json.dumps(dict(SEKOIA, alertId="AL-gz")).encode()))
    assert curl(url + "/ingest", *auth, *js, "-H", "Content-Encoding: gzip", "--data-binary", f"@{gz}")[0] == 200
    # refused: no token, a wrong one, wrong content type, encoding, path, method, a bad body
    st, body, _ = curl(url + "/ingest", *js, "-d", "{}")
    assert st == 401 and json.loads(body)["reason"] == "auth_missing"
    st, body, _ = curl(url + "/ingest", "-H", "Authorization: Bearer nope", *js, "-d", "{}", "-i")
    assert st == 401 and b'www-authenticate: bearer realm="relay"' in body.lower()
    assert curl(url + "/ingest", *auth, "-H", "Content-Type: text/html", "-d", "{}")[0] == 415
    assert curl(url + "/ingest", *auth, "-H", "Content-Encoding: br", *js, "-d", "{}")[0] == 415
    assert curl(url + "/other", *auth, *js, "-d", "{}")[0] == 404
    assert curl(url + "/ingest", *auth)[0] == 405
    st, body, _ = curl(url + "/ingest", *auth, *js, "-d", '{"alertId": "x",}')
    assert st == 400 and json.loads(body)["column"] == 16       # the trailing comma
    # 100 MB: Content-Length over max_body is refused before the body is read (curl sends
    # Expect: 100-continue and never gets the go-ahead) ...
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(100 << 20)
    rss0 = rss_kib(r.proc.pid)
    t0 = time.monotonic()
    st, body, _ = curl(url + "/ingest", *auth, *js, "--data-binary", f"@{big}")
    assert st == 413 and json.loads(body)["reason"] == "too_large"
    assert time.monotonic() - t0 < 5
    # ... and a chunked body as soon as it passes max_body: the connection is closed, the sender
    # could not push the 100 MB
    sent = _chunked_upload(pb, "/ingest", TOKEN, 100 << 20)
    assert sent < 20 << 20, sent
    assert rss_kib(r.proc.pid) - rss0 < 30_000
    # HMAC: a signed NDJSON body; a bad signature; a stale timestamp; one bad line refuses all
    surl = f"http://{LOOPBACK}:{ph}/ingest"
    nd = b'{"message":"signed one","id":"s1"}\n{"message":"signed two","id":"s2"}\n'
    assert curl(surl, *_signed(nd, TOKEN), "--data-binary", "@-", data=nd)[:2] == (200, b'{"accepted":2}')
    assert curl(surl, *_signed(nd, "wrong-key"), "--data-binary", "@-", data=nd)[0] == 401
    st, body, _ = curl(surl, *_signed(nd, TOKEN, ts=time.time() - 3600), "--data-binary", "@-", data=nd)
    assert st == 401 and json.loads(body)["reason"] == "auth_stale"
    bad = b'{"message":"bad-batch 1","id":"b1"}\n{"message":"bad-batch 2","id":"b2"}\n{"message": bad-batch}\n'
    st, body, _ = curl(surl, *_signed(bad, TOKEN), "--data-binary", "@-", data=bad)
    err = json.loads(body)
    assert st == 400 and (err["line"], err["item"], err["reason"]) == (3, 3, "json"), err
    # syslog lines with Basic auth (parsed by the workers like a listener's messages)
    lurl = f"http://{LOOPBACK}:{ps}/ingest"
    sl = b"<134>1 2026-03-13T04:30:00.123Z fw-01 fw - - - line one\n<134>1 2026-03-13T04:30:01Z fw-01 fw - - - line two\n"
    assert curl(lurl, "-u", f"forwarder:{TOKEN}", "-H", "Content-Type: text/plain", "--data-binary", "@-",
                data=sl)[:2] == (200, b'{"accepted":2}')
    assert curl(lurl, "-u", f"someone:{TOKEN}", "-H", "Content-Type: text/plain", "--data-binary", "@-",
                data=sl)[0] == 401
    # Splunk HEC: requests exactly as HEC clients send them (Splunk's documented curl examples)
    hurl = f"http://{LOOPBACK}:{pe}/services/collector"
    hec = ["-H", f"Authorization: Splunk {HEC_TOKEN}"]
    assert curl(hurl + "/event", *hec, "-d", '{"event": "hello world"}')[:2] == (200, b'{"text":"Success","code":0}')
    batch = (b'{"time": 1747213964, "host": "vpn-gw-01", "sourcetype": "relay:alert", "index": "main", '
             b'"event": {"message": "hec batch one", "severity": "high"}, "fields": {"site": "par"}}'
             b'{"event": "hec batch two", "sourcetype": "access"}')
    assert curl(hurl, *hec, "--data-binary", "@-", data=batch)[0] == 200
    assert curl(hurl + "/raw?channel=FE0ECFAD-13D5-401B-847D-77833BD77131&sourcetype=fw&host=fw-9", *hec,
                "-H", "X-Splunk-Request-Channel: FE0ECFAD-13D5-401B-847D-77833BD77131",
                "--data-binary", "@-", data=b"raw line one\nraw line two\n")[0] == 200
    assert json.loads(curl(hurl + "/health")[1]) == {"text": "HEC is healthy", "code": 17}
    assert (lambda a: (a[0], json.loads(a[1])["code"]))(curl(hurl + "/event", "-d", '{"event":"x"}')) == (401, 2)
    assert (lambda a: (a[0], json.loads(a[1])["code"]))(
        curl(hurl + "/event", "-H", "Authorization: Splunk nope", "-d", '{"event":"x"}')) == (403, 4)
    st, body, _ = curl(hurl + "/event", *hec, "-d", '{"event":"ok"}{"time":1}')
    assert st == 400 and json.loads(body) == {"text": "Event field is required", "code": 12,
                                              "invalid-event-number": 1}
    # what arrived: every accepted event once, nothing of the refused requests
    want = 1 + 3 + 1 + 2 + 2 + 1 + 2 + 2
    wait_until(lambda: len(lines(out)) >= want, 30, what=f"{want} events in the file sink")
    time.sleep(0.5)
    got = lines(out)
    assert len(got) == want, [g["event"]["name"] for g in got]
    names = [g["event"]["description"] or g["event"]["name"] for g in got]
    assert not any("bad-batch" in (n or "") for n in names)
    by = {g["event"]["dedup_key"]: g["event"] for g in got}
    assert by["sekoia:AL13426AYUU"]["extra"]["http_path"] == "/ingest"
    assert by["sekoia:AL-1"]["extra"]["http_path"] == "/sekoia" and "sekoia:AL-gz" in by
    hec1 = next(g["event"] for g in got if g["event"]["description"] == "hec batch one")
    assert (hec1["host"], hec1["severity"], hec1["extra"]["hec"]["fields"]) == ("vpn-gw-01", "high", {"site": "par"})
    assert {g["event"]["host"] for g in got if g["event"]["description"] in ("raw line one", "raw line two")} == {"fw-9"}
    assert sum(1 for g in got if g["syslog"]["format"] == "rfc5424" and g["syslog"]["hostname"] == "fw-01") == 2
    # every outcome counted by reason; /metrics needs the token
    assert _get(met, "/metrics")[0] == 401
    m = _metrics(met)
    for src, status, reason, n in (("alerts", 200, "accepted", 3), ("alerts", 401, "auth_missing", 1),
                                   ("alerts", 401, "auth_invalid", 1), ("alerts", 415, "content_type", 1),
                                   ("alerts", 415, "content_encoding", 1), ("alerts", 404, "not_found", 1),
                                   ("alerts", 405, "method", 1), ("alerts", 400, "json", 1),
                                   ("alerts", 413, "too_large", 2), ("signed", 401, "auth_stale", 1),
                                   ("signed", 400, "json", 1), ("lines", 200, "accepted", 1),
                                   ("hec", 403, "auth_invalid", 1), ("hec", 400, "hec_event_missing", 1)):
        key = f'relay_http_requests_total{{reason="{reason}",source="{src}",status="{status}"}} {n}'
        assert key in m, key
    assert 'relay_received_total{source="alerts"} 5' in m
    # one latency observation per 200 (alerts: 3 accepted among its refusals), none for a refusal
    assert 'relay_http_request_seconds_count{source="alerts"} 3' in m
    assert 'relay_http_request_seconds_count{source="lines"} 1' in m
    assert r.stop() == 0
    for secret in (TOKEN, OLD_TOKEN, HEC_TOKEN, METRICS_TOKEN):
        assert secret not in r.log()


def _get(port: int, path: str, token: str | None = None) -> tuple[int, str]:
    c = http.client.HTTPConnection(LOOPBACK, port, timeout=5)
    try:
        c.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        resp = c.getresponse()
        return resp.status, resp.read().decode()
    finally:
        c.close()


def _ready(port: int) -> bool:
    try:
        return _get(port, "/ready", METRICS_TOKEN)[0] == 200
    except OSError:
        return False


def _metrics(port: int) -> str:
    st, text = _get(port, "/metrics", METRICS_TOKEN)
    assert st == 200
    return text


def _signed(body: bytes, key: str, ts: float | None = None) -> list[str]:
    t = str(int(time.time() if ts is None else ts))
    sig = hmac.new(key.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return ["-H", f"X-Hub-Signature-256: sha256={sig}", "-H", f"X-Timestamp: {t}",
            "-H", "Content-Type: application/x-ndjson"]


def _chunked_upload(port: int, path: str, token: str, total: int) -> int:
    """Stream ``total`` bytes chunked; return how many bytes the relay let us send before it
    answered and closed."""
    s = socket.create_connection((LOOPBACK, port), timeout=10)
    sent = 0
    try:
        s.sendall((f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                   "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode())
        chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
        s.settimeout(10)
        while sent < total:
            try:
                s.sendall(chunk)
            except OSError:       # reset/broken pipe: the relay closed after its 413
                break
            sent += 65536
    finally:
        s.close()
    return sent


# ----------------------------------------------------------------------------- (b)
def test_b_mtls(tmp_path, make_relay, pki, monkeypatch):
    monkeypatch.setenv("RELAY_E2E_HTTP_TOKEN", TOKEN)
    met, port = free_port(), free_port()
    out = tmp_path / "out.jsonl"
    conf = base_config(tmp_path, met, extra=f"""
[sources.secure]
type = "http"
address = "{LOOPBACK}:{port}"
token_env = "RELAY_E2E_HTTP_TOKEN"
tls_cert = "{pki / 'server.pem'}"
tls_key = "{pki / 'server.key'}"
tls_client_ca = "{pki / 'ca.pem'}"
[sinks.out]
type = "file"
path = "{out}"
format = "json"
[routes.all]
match = 'true'
sinks = ["out"]
""")
    r = make_relay(conf, met, tmp_path)
    r.start()
    url = f"https://{LOOPBACK}:{port}/ingest"
    tls = ["--cacert", str(pki / "ca.pem")]
    me = ["--cert", str(pki / "client.pem"), "--key", str(pki / "client.key")]
    post = ["-H", f"Authorization: Bearer {TOKEN}", "-H", "Content-Type: application/json",
            "-d", '{"message": "over mTLS", "id": "m1"}']
    assert curl(url, *tls, *me, *post)[:2] == (200, b'{"accepted":1}')
    st, _, rc = curl(url, *tls, *post)                       # no client certificate: no handshake
    assert st == 0 and rc != 0
    st, _, rc = curl(url, *tls, *me, "--tlsv1.1", "--tls-max", "1.1", *post)   # TLS 1.1: refused
    assert st == 0 and rc != 0
    st, _, rc = curl(url, "--cacert", str(pki / "other-ca.pem"), *me, *post)    # the client checks us too
    assert st == 0 and rc != 0
    wait_until(lambda: len(lines(out)) >= 1, 20, what="the mTLS event")
    assert [g["event"]["id"] for g in lines(out)] == ["m1"]
    assert r.metric("relay_http_requests_total", source="secure") == 1


# ----------------------------------------------------------------------------- (c)
def test_c_sekoia_alert_and_offense_webhook_reach_xsoar_once(tmp_path, make_relay, make_xsoar, monkeypatch):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    emu = make_xsoar(api_key=ENV["RELAY_E2E_XSOAR_KEY"], auth_id=None)
    met, ps, pq = free_port(), free_port(), free_port()
    conf = base_config(tmp_path, met, extra=f"""
[sources.sekoia]
type = "http"
address = "{LOOPBACK}:{ps}"
token_env = "RELAY_E2E_HTTP_TOKEN"
map = "sekoia"

[sources.offenses]
type = "http"
address = "{LOOPBACK}:{pq}"
paths = ["/webhook/qradar-offense"]
token_env = "RELAY_E2E_HTTP_TOKEN"
map = "qradar_offense"

[routes.soar]
match = 'source in ["sekoia", "offenses"]'
sinks = ["xsoar"]

[sinks.xsoar]
type = "xsoar"
url = "{emu.url}"
api_key_env = "RELAY_E2E_XSOAR_KEY"
incident_type = "Sekoia.io"
batch_size = 10
[sinks.xsoar.custom_fields]
alertid = "extra.alert_id"
alerturl = "url"
urgency = "extra.urgency"
""")
    r = make_relay(conf, met, tmp_path)
    r.start()
    post = ["-H", f"Authorization: Bearer {TOKEN}", "-H", "Content-Type: application/json", "--data-binary", "@-"]
    for _ in range(3):       # a playbook re-run, Sekoia's retries: the same alert three times
        assert curl(f"http://{LOOPBACK}:{ps}/ingest", *post, data=json.dumps(SEKOIA).encode())[0] == 200
    for _ in range(2):
        assert curl(f"http://{LOOPBACK}:{pq}/webhook/qradar-offense", *post, data=json.dumps(OFFENSE).encode())[0] == 200
    r.wait_metric("relay_sent_total", 5, 30, sink="xsoar")
    time.sleep(0.5)
    assert counts(emu) == {"sekoia:AL13426AYUU": 1, "qradar:12345": 1}
    inc = emu.by_field("relaydedupkey")["sekoia:AL13426AYUU"][0]
    cf = inc["CustomFields"]
    assert (cf["alertid"], cf["alerturl"], cf["urgency"]) == ("AL13426AYUU", SEKOIA["alertUrl"], "63")
    assert inc["name"] == "Brute force on VPN" and inc["type"] == "Sekoia.io" and inc["severity"] == 2
    assert json.loads(inc["rawJSON"])["alertId"] == "AL13426AYUU"     # the playbook's body, for XSOAR mappers
    off = emu.by_field("relaydedupkey")["qradar:12345"][0]
    assert off["CustomFields"]["vendorid"] == "12345" and off["name"] == "Multiple Failed Logins"
    assert r.metric("relay_xsoar_incidents_total", sink="xsoar", action="created") == 2


# ----------------------------------------------------------------------------- (d)
def test_d_sigkill_right_after_200_delivers_after_restart(tmp_path, make_relay, monkeypatch):
    monkeypatch.setenv("RELAY_E2E_HTTP_TOKEN", TOKEN)
    met, port, dest = free_port(), free_port(), free_port()
    conf = base_config(tmp_path, met, extra=f"""
[sources.alerts]
type = "http"
address = "{LOOPBACK}:{port}"
format = "ndjson"
token_env = "RELAY_E2E_HTTP_TOKEN"
[sinks.qradar]
type = "syslog"
address = "{LOOPBACK}:{dest}"
format = "json"
connect_timeout = 1.0
[routes.all]
match = 'true'
sinks = ["qradar"]
""")
    conf = conf.replace('synchronous = "NORMAL"', 'synchronous = "FULL"')
    r = make_relay(conf, met, tmp_path)
    r.start()
    c = keep_alive(port)
    ids = []
    for n in range(10):
        body = "".join(json.dumps({"message": f"kill test {n}-{i}", "id": f"k{n}-{i}"}) + "\n" for i in range(5))
        c.request("POST", "/ingest", body=body, headers={"Authorization": f"Bearer {TOKEN}",
                                                         "Content-Type": "application/x-ndjson"})
        resp = c.getresponse()
        assert (resp.status, resp.read()) == (200, b'{"accepted":5}')
        ids += [f"k{n}-{i}" for i in range(5)]
    r.kill()                                    # right after the last 200: no drain, no goodbye
    c.close()
    with QradarStandIn(port=dest) as q:
        r.start()
        q.wait_for(len(ids), 30)
        time.sleep(0.5)
        got = [json.loads(x)["event"]["id"] for x in q.snapshot()]
    assert sorted(set(got)) == sorted(ids)


# ----------------------------------------------------------------------------- (e)
@pytest.mark.parametrize("workers", [1, 2])
def test_e_full_queues_503_flat_memory_then_accepted_again(tmp_path, make_relay, monkeypatch, workers):
    """In this process (workers = 1) and in the ingest workers (the body decoded and staged
    there, relay/workers.py submit_body): the same answers."""
    monkeypatch.setenv("RELAY_E2E_HTTP_TOKEN", TOKEN)
    met, port, dest = free_port(), free_port(), free_port()
    conf = base_config(tmp_path, met, workers=workers, extra=f"""
[sources.alerts]
type = "http"
address = "{LOOPBACK}:{port}"
token_env = "RELAY_E2E_HTTP_TOKEN"
accept_timeout = 2.0
retry_after = 7
[sinks.qradar]
type = "syslog"
address = "{LOOPBACK}:{dest}"
format = "json"
connect_timeout = 1.0
[sinks.qradar.queue]
max_rows = 40
[routes.all]
match = 'true'
sinks = ["qradar"]
""")
    r = make_relay(conf, met, tmp_path)
    r.start()
    c = keep_alive(port)
    hdrs = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

    def post(i: int) -> tuple[int, dict, bytes]:
        c.request("POST", "/ingest", body=json.dumps({"message": f"fill {i}", "id": f"f{i}"}), headers=hdrs)
        resp = c.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    accepted = 0
    statuses = []
    for i in range(60):       # the queue holds 40: the 41st waits (commit_timeout), then 503 at once
        st, h, body = post(i)
        statuses.append(st)
        if st == 200:
            accepted += 1
        else:
            assert st == 503 and h.get("retry-after") == "7", (st, h, body)
    assert accepted == 40, statuses
    assert r.ready()[0] == 503
    for i in range(200):      # warm up, then thousands of refused requests: memory stays flat
        assert post(1000 + i)[0] == 503
    rss0 = rss_kib(r.proc.pid)
    t0 = time.monotonic()
    for i in range(3000):
        st, h, body = post(2000 + i)
        assert st == 503 and json.loads(body)["reason"] == "queue_full"
    assert rss_kib(r.proc.pid) - rss0 < 4096, (rss0, rss_kib(r.proc.pid))
    elapsed = time.monotonic() - t0
    assert r.metric("relay_http_requests_total", source="alerts", status="503", reason="queue_full") >= 3200
    with QradarStandIn(port=dest) as q:       # QRadar is back: the queue drains, requests are accepted again
        q.wait_for(40, 30)
        wait_until(lambda: post(9999)[0] == 200, 30, what="a 200 once the queue drained", interval=0.2)
    c.close()
    print(f"3000 refused requests in {elapsed:.2f} s; RSS {rss0} KiB -> {rss_kib(r.proc.pid)} KiB")

"""Every HTTP client of the relay takes an injected httpx transport, so its logic is tested
here through ``httpx.MockTransport`` with no socket at all: the XSOAR sink, the pull sources
(Falcon, QRadar), the HTTP enrichment lookups and the LLM summary.  The end-to-end tests
(test_e2e_*.py) keep using real sockets and the emulators."""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest

from parsers import detect
from parsers.normalise import normalise
from relay import kinds
from relay.config import SourceConfig, _Table, loads
from relay.metrics import Registry
from relay.sinks import make_sink
from tests.harness import make_queue, run_async, sigma_line, until

KEY = "mock-key-0123456789abcdef"


# ----------------------------------------------------------------------------- XSOAR sink
class FakeXsoar:
    """Just enough of the XSOAR REST API: search by the dedup field, create; scripted faults."""

    def __init__(self, faults=()):
        self.incidents: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.faults = list(faults)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path))
        assert request.headers["Authorization"] == KEY
        if self.faults:
            return self.faults.pop(0)
        body = json.loads(request.content)
        if request.url.path == "/incidents/search":
            key = body["filter"]["query"].split(":", 1)[1].strip().strip('"')
            found = [i for k, i in self.incidents.items() if k == key]
            return httpx.Response(200, json={"total": len(found), "data": found})
        if request.url.path == "/incident":
            key = body["CustomFields"]["relaydedupkey"]
            inc = {"id": str(len(self.incidents) + 1), "version": 1, "CustomFields": {"relaydedupkey": key}}
            self.incidents[key] = inc
            return httpx.Response(201, json=inc)
        return httpx.Response(404, json={"error": "no such endpoint"})


def _xsoar_sink(tmp_path: Path, transport):
    cfg = loads(f"""
[relay]
state_dir = "{tmp_path / 'state'}"
[sinks.xs]
type = "xsoar"
url = "https://xsoar.invalid"
api_key_env = "T_MOCK_XSOAR_KEY"
[routes.all]
match = 'true'
sinks = ["xs"]
""", base_dir=tmp_path).sinks["xs"]
    q = make_queue(tmp_path / "state" / "queue-xs.db")
    render = kinds.sink(cfg.type).renderer(cfg)
    rows = []
    for inc in ("INC-1", "INC-2", "INC-1"):
        ev = normalise(detect.parse(sigma_line(inc, alarm_count=None), received=time.time(), source="t"))
        rows.append((render(ev, ["all"]), {"source": "t", "routes": ["all"], "received": 0.0,
                                           "dedup_key": ev.fields["dedup_key"]}))
    q.put_many(rows)
    return make_sink(cfg, q, registry=Registry(), transport=transport), q


def test_xsoar_sink_through_a_mock_transport_creates_once_per_key(tmp_path, monkeypatch):
    monkeypatch.setenv("T_MOCK_XSOAR_KEY", KEY)
    fake = FakeXsoar()
    sink, q = _xsoar_sink(tmp_path, httpx.MockTransport(fake))

    async def main():
        items = await asyncio.to_thread(q.lease, 10)
        try:
            await sink.send(items)
        finally:
            await sink.close()
    asyncio.run(asyncio.wait_for(main(), 20))
    q.close()
    assert sorted(fake.incidents) == ["rhythmx:INC-1", "rhythmx:INC-2"]
    assert [p for m, p in fake.requests].count("/incident") == 2


@pytest.mark.parametrize("status, headers, error, retry_after", [
    (429, {"Retry-After": "7"}, "RetryableError", 7.0),
    (503, {}, "RetryableError", None),
    (401, {}, "AuthError", None),
    (400, {}, "PermanentError", None),
])
def test_xsoar_sink_classifies_answers_through_a_mock_transport(tmp_path, monkeypatch, status, headers, error,
                                                                retry_after):
    monkeypatch.setenv("T_MOCK_XSOAR_KEY", KEY)
    fake = FakeXsoar(faults=[httpx.Response(status, headers=headers, json={"error": "scripted"})] * 4)
    sink, q = _xsoar_sink(tmp_path, httpx.MockTransport(fake))

    async def main():
        items = await asyncio.to_thread(q.lease, 1)
        try:
            failed = await sink.send(items)     # [(item, error)] for the rows that failed
        except Exception as e:
            return [e]
        finally:
            await sink.close()
        return [e for _, e in failed or ()]
    errs = asyncio.run(asyncio.wait_for(main(), 20))
    q.close()
    assert errs and all(any(c.__name__ == error for c in type(e).__mro__) for e in errs), errs
    if retry_after is not None:
        assert any(getattr(e, "retry_after", None) == retry_after for e in errs)
    assert not fake.incidents


# ----------------------------------------------------------------------------- pull sources
class _Collect:
    """A stand-in ingest: records what a pull source submits."""

    def __init__(self):
        self.events = []
        self.config = None

    async def submit(self, events, source):
        self.events.extend(events)
        return len(events)


def _pull_config(module, name: str, typ: str, tmp_path: Path, table: dict) -> SourceConfig:
    """The SourceConfig of pull source ``name`` from its TOML ``table``, read by ``module``."""
    sc = SourceConfig(name=name, type=typ)
    sc.options = {"relay_state_dir": tmp_path}
    t = _Table("relay.toml", f"sources.{name}", table)
    module.read_config(t, sc, tmp_path)
    t.finish()
    return sc


def _one_poll(src) -> None:
    """Start the pull source, wait (10 s at most) until it completed a poll, stop it."""
    async def main():
        await src.start()
        try:
            await until(lambda: src.polls >= 1, 10, what=f"a poll of {src.cfg.name}", interval=0.01)
        finally:
            await src.stop()
    run_async(main(), 20)


def _falcon_api(alerts: dict):
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path == "/oauth2/token":
            form = dict(x.split("=") for x in request.content.decode().split("&"))
            assert form["client_id"] == "cid" and form["client_secret"] == "sec"
            return httpx.Response(201, json={"access_token": "tok", "expires_in": 1799, "token_type": "bearer"})
        assert request.headers["Authorization"] == "Bearer tok"
        if request.url.path == "/alerts/queries/alerts/v2":
            ids = sorted(alerts)
            return httpx.Response(200, json={"meta": {"pagination": {"offset": 0, "limit": 100, "total": len(ids)}},
                                             "resources": ids, "errors": []})
        if request.url.path == "/alerts/entities/alerts/v2":
            want = json.loads(request.content)["composite_ids"]
            return httpx.Response(200, json={"meta": {}, "resources": [alerts[i] for i in want], "errors": []})
        return httpx.Response(404, json={"errors": [{"code": 404, "message": "not found"}]})
    return handler, calls


def test_falcon_source_through_a_mock_transport(tmp_path, monkeypatch):
    from relay.sources import falcon as F
    monkeypatch.setenv("T_MOCK_FALCON", "sec")
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    alerts = {f"cid:ind:{i}": {"composite_id": f"cid:ind:{i}", "created_timestamp": now, "severity": 70,
                               "status": "new", "name": "x", "device": {"hostname": f"ws-{i}"}} for i in range(3)}
    handler, calls = _falcon_api(alerts)
    sc = _pull_config(F, "falcon", "falcon", tmp_path, {"base_url": "https://falcon.invalid", "client_id": "cid",
                                                        "client_secret_env": "T_MOCK_FALCON", "poll_interval": 60})
    ingest = _Collect()
    _one_poll(F.FalconSource(sc, ingest, Registry(), transport=httpx.MockTransport(handler)))
    assert sorted(e.fields["dedup_key"] for e in ingest.events) == sorted(f"falcon:{i}" for i in alerts)
    assert calls[0] == "/oauth2/token" and "/alerts/entities/alerts/v2" in calls


def test_qradar_source_through_a_mock_transport(tmp_path, monkeypatch):
    from relay.sources import qradar as Q
    monkeypatch.setenv("T_MOCK_SEC", "sec-token")
    now_ms = int(time.time() * 1000)
    offenses = [{"id": i, "description": f"offense {i}", "magnitude": 5, "severity": 5, "status": "OPEN",
                 "start_time": now_ms, "last_updated_time": now_ms + i, "offense_source": "10.0.0.1"}
                for i in range(1, 4)]

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["SEC"] == "sec-token"
        assert request.url.path == "/api/siem/offenses"
        n = len(offenses)
        return httpx.Response(200, json=offenses, headers={"Content-Range": f"items 0-{n - 1}/{n}"})
    sc = _pull_config(Q, "qradar", "qradar_offenses", tmp_path, {"url": "https://qradar.invalid",
                                                                 "token_env": "T_MOCK_SEC", "poll_interval": 60})
    ingest = _Collect()
    _one_poll(Q.QradarOffenseSource(sc, ingest, Registry(), transport=httpx.MockTransport(handler)))
    assert sorted(e.fields["dedup_key"] for e in ingest.events) == ["qradar:1", "qradar:2", "qradar:3"]


# ----------------------------------------------------------------------------- enrichment
def test_http_lookup_through_a_mock_transport():
    from relay.enrich.http import _NOT_FOUND, HttpLookup
    from relay.enrich.tables import Opts

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/assets/10.20.0.5":
            return httpx.Response(200, json={"asset": {"name": "db-core-01", "owner": "DB Team", "criticality": 5}})
        return httpx.Response(404)
    h = HttpLookup("cmdb", "asset", "https://cmdb.invalid/assets/{value}", opts=Opts("cmdb", "asset", "json"),
                   result="asset", transport=httpx.MockTransport(handler))
    try:
        key, attrs = h.fetch("10.20.0.5")
        assert key == "10.20.0.5" and attrs["owner"] == "DB Team" and attrs["criticality"] == 5
        assert h.fetch("10.9.9.9") is _NOT_FOUND
    finally:
        h.close()


def test_summary_through_a_mock_transport():
    from relay.enrich.config import SummaryConfig
    from relay.enrich.summary import Summarizer
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        assert request.headers["Authorization"] == "Bearer llm-key"
        return httpx.Response(200, json={"choices": [{"message": {"content": " A summary. "}}],
                                         "usage": {"total_tokens": 42}})
    cfg = SummaryConfig(enabled=True, url="https://llm.invalid/v1/chat/completions", model="m", api_key="llm-key")
    s = Summarizer(cfg, transport=httpx.MockTransport(handler))
    try:
        assert s.request("k1", "ev-1", {"name": "x"}) == "queued"
        deadline = time.monotonic() + 10
        while s.cached("k1") is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert s.cached("k1") == "A summary."
        assert seen and seen[0]["model"] == "m"
    finally:
        s.close()


# ----------------------------------------------------------------------------- http sink
def _http_sink(tmp_path: Path, body: str, transport):
    cfg = loads(f"""
[relay]
state_dir = "{tmp_path / 'state'}"
[sinks.h]
type = "http"
{body}
[routes.all]
match = 'true'
sinks = ["h"]
""", base_dir=tmp_path).sinks["h"]
    q = make_queue(tmp_path / "state" / "queue-h.db")
    render = kinds.sink(cfg.type).renderer(cfg)
    ev = normalise(detect.parse(sigma_line("INC-1"), received=time.time(), source="t"))
    q.put_many([(render(ev, ["all"]), {"source": "t", "routes": ["all"], "received": 0.0,
                                       "dedup_key": ev.fields["dedup_key"]})])
    return make_sink(cfg, q, registry=Registry(), transport=transport), q


def _send_one(sink, q):
    async def main():
        items = await asyncio.to_thread(q.lease, 10)
        try:
            failed = await sink.send(items)
        except Exception as e:
            return [e]
        finally:
            await sink.close()
        return [e for _, e in failed or ()]
    try:
        return asyncio.run(asyncio.wait_for(main(), 20))
    finally:
        q.close()


@pytest.mark.parametrize("status, headers, text, error, retry_after", [
    (429, {"Retry-After": "7"}, "slow down", "UnavailableError", 7.0),     # throttled: no attempt counted
    (503, {}, "busy", "RetryableError", None),
    (401, {}, "no", "AuthError", None),
    (400, {}, "invalid_payload tok-SECRET-1234", "PermanentError", None),
])
def test_http_sink_classifies_answers_through_a_mock_transport(tmp_path, monkeypatch, status, headers, text, error,
                                                               retry_after):
    monkeypatch.setenv("T_TOK", "tok-SECRET-1234")
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, headers=headers, text=text)
    sink, q = _http_sink(tmp_path, 'preset = "generic"\nurl = "https://x.invalid/in"\nauth = "bearer"\n'
                                   'token_env = "T_TOK"', httpx.MockTransport(handler))
    errs = _send_one(sink, q)
    assert errs and all(any(c.__name__ == error for c in type(e).__mro__) for e in errs), errs
    if retry_after is not None:
        assert errs[0].retry_after == retry_after
    assert seen[0].headers["Authorization"] == "Bearer tok-SECRET-1234"
    assert all("tok-SECRET-1234" not in str(e) for e in errs)      # the answer's excerpt is redacted


def test_http_sink_oauth2_token_fetched_cached_and_renewed_on_401(tmp_path, monkeypatch):
    monkeypatch.setenv("T_CS", "client-s3cret")
    calls = {"token": 0, "api": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth2/token":
            calls["token"] += 1
            form = dict(x.split("=", 1) for x in request.content.decode().split("&"))
            assert form["grant_type"] == "client_credentials" and form["client_secret"] == "client-s3cret"
            return httpx.Response(200, json={"access_token": f"AT{calls['token']}", "expires_in": 3600})
        calls["api"] += 1
        if request.headers["Authorization"] == "Bearer AT1":
            return httpx.Response(401, text="token expired")
        assert request.headers["Authorization"] == "Bearer AT2"
        return httpx.Response(202)
    sink, q = _http_sink(tmp_path, 'preset = "generic"\nurl = "https://x.invalid/in"\nauth = "oauth2"\n'
                                   'token_url = "https://x.invalid/oauth2/token"\nclient_id = "relay"\n'
                                   'client_secret_env = "T_CS"', httpx.MockTransport(handler))
    assert _send_one(sink, q) == []
    assert calls == {"token": 2, "api": 2}

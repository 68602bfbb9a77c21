"""Planted secrets never leak (issue 14, item 4 and finding 11).

The XSOAR API key, a webhook token, the Falcon client secret and the LLM key are planted; every
HTTP peer is a server that echoes the request back, headers and body, in its answers (the
probe's "server that echoes headers").  Then every place the relay writes text is grepped for
each secret: the log, /metrics, ``relay queue list`` (queued and dead, text and JSON), the queue
and dedup files themselves, the audit log, ``relay test-parse --config`` and a crash trace.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.harness import REPO, free_port, relay_cli, send_tcp, sigma_line, wait_until

pytestmark = pytest.mark.e2e

SECRETS = {
    "SECRET_XSOAR": "xsoar-Key-9f2c41d7e8b3a6",
    "SECRET_HOOK": "hook-Token-5b7e9a1c3d2f",
    "SECRET_FALCON": "falcon-Secret-8d6c4b2a0e1f",
    "SECRET_LLM": "llm-Key-3e5a7c9b1d4f",
}


class Echo(BaseHTTPRequestHandler):
    """Answers with the request itself: 200 as an LLM answer on /v1/chat/completions, else 400."""

    def _echo(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n).decode("utf-8", "replace") if n else ""
        text = f"{self.command} {self.path}\n{self.headers}\n{body}"
        if self.path.endswith("/chat/completions"):
            out = json.dumps({"choices": [{"message": {"content": "echo: " + text}}],
                              "usage": {"total_tokens": 10}}).encode()
            status = 200
        else:
            out = json.dumps({"error": "rejected", "request": text}).encode()
            status = 400
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = _echo

    def log_message(self, *a) -> None:
        pass


@pytest.fixture
def echo():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def config(tcp: int, met: int, url: str) -> str:
    return textwrap.dedent(f'''
        [relay]
        state_dir = "state"
        metrics_address = "127.0.0.1:{met}"
        [sources.tcp]
        type = "tcp"
        address = "127.0.0.1:{tcp}"
        [sources.falcon]
        type = "falcon"
        base_url = "{url}"
        client_id = "cid"
        client_secret_env = "SECRET_FALCON"
        poll_interval = 1
        max_retries = 0
        [sinks.xsoar]
        type = "xsoar"
        url = "{url}"
        api_key_env = "SECRET_XSOAR"
        timeout = 2.0
        [sinks.xsoar.retry]
        base = 0.1
        max_attempts = 1
        [sinks.hook]
        type = "xsoar_webhook"
        url = "{url}/instance/execute/relay"
        auth_header = "Authorization"
        auth_value_env = "SECRET_HOOK"
        linger = 0.05
        [sinks.hook.retry]
        base = 0.1
        max_attempts = 1
        [routes.all]
        match = "true"
        sinks = ["xsoar", "hook"]
        [triage]
        mode = "suggest"
        [audit]
        flush_interval = 0.2
        [summary]
        enabled = true
        url = "{url}/v1/chat/completions"
        model = "m"
        api_key_env = "SECRET_LLM"
        min_severity = "informational"
        ''')


def leaks(text: str | bytes, where: str) -> list[str]:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return [f"{name} in {where}" for name, v in SECRETS.items() if v in text]


def test_planted_secrets_never_leak(tmp_path, make_relay, echo, monkeypatch):
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    tcp, met = free_port(), free_port()
    relay = make_relay(config(tcp, met, echo), met, tcp_port=tcp, ready_timeout=30)
    relay.start()
    send_tcp(tcp, [sigma_line(f"INC-{i}", 85) for i in range(3)])
    relay.wait_metric("relay_dead_lettered_total", 1, sink="xsoar")
    relay.wait_metric("relay_dead_lettered_total", 1, sink="hook")
    audit_dir = tmp_path / "state" / "audit"
    wait_until(lambda: any('"summary"' in p.read_text() for p in audit_dir.glob("*.jsonl*")), 30,
               what="a summary line in the audit log")
    wait_until(lambda: "falcon" in relay.log() and "400" in relay.log(), 30, what="the falcon source's error")
    found: list[str] = []
    found += leaks(relay.http("/metrics")[1], "/metrics")
    cfg = tmp_path / "relay.toml"
    for sink in ("xsoar", "hook"):
        for extra in ((), ("--dead",), ("--json",), ("--dead", "--json")):
            r = relay_cli("queue", "list", "-c", cfg, sink, *extra)
            found += leaks(r.stdout + r.stderr, f"queue list {sink} {' '.join(extra)}")
    dead = relay_cli("queue", "list", "-c", cfg, "xsoar", "--dead").stdout.decode()
    assert "<redacted>" in dead or "rejected" in dead, dead     # the excerpt is there, without the key
    r = relay_cli("test-parse", "--config", cfg, "--json", sigma_line("INC-T", 90).decode())
    found += leaks(r.stdout + r.stderr, "test-parse")
    relay.stop()
    found += leaks(relay.log(), "the log")
    for p in sorted((tmp_path / "state").rglob("*")):
        if p.is_file():
            found += leaks(p.read_bytes(), str(p.relative_to(tmp_path)))
    assert not found, found
    assert "<redacted>" in relay.log(), "the echoing server's answers should show up redacted in the log"


def test_crash_trace_is_redacted(tmp_path):
    """A traceback that carries a credential (an exception message holding it) goes out redacted."""
    code = textwrap.dedent('''
        import logging, sys
        from relay.logs import setup_logging
        from relay.secrets import Secret
        setup_logging()
        key = Secret(sys.argv[1], "$K")
        try:
            raise RuntimeError("peer answered: Authorization: " + key.reveal())
        except RuntimeError:
            logging.getLogger("relay").exception("sink x: delivery loop died")
        raise SystemExit(0)
        ''')
    r = subprocess.run([sys.executable, "-c", code, SECRETS["SECRET_XSOAR"]], cwd=REPO, capture_output=True,
                       text=True, timeout=30)
    assert "Traceback" in r.stderr and "<redacted>" in r.stderr, r.stderr
    assert SECRETS["SECRET_XSOAR"] not in r.stderr

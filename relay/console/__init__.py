"""The rule authors' web console: ``/console/`` on the relay's HTTP server, off by default
(``[relay] console = true``), loopback only (the config refuses another address), and a token
(``console_token_env`` / ``console_token_file``) on every request.

* Paste raw bytes or a JSON alert (or pick a sample): every stage, through the code of
  ``relay test-parse --config`` (:mod:`relay.tools.testparse`: the one stage in a dry-run
  ``Pipeline`` over the running config): frame, syslog fields or the parse error with a caret
  at the bad byte, the canonical event, each route with why it matched, each sink's exact
  bytes or request.
* Save the input and its output as a golden case in ``console_cases_dir``, written by the code
  of ``--cases --update`` (:mod:`relay.tools.cases`), then run as ``--cases`` runs it.
* A live tap pane (relay/tap.py, the same sessions as ``relay tap``) and a queue pane (the
  sinks' queue gauges).
* Plain HTML, CSS and JS from ``relay/console/static`` (no build step, no CDN, no network).

The daemon imports this module only when the console is on (relay/server.py), and it imports
the tools only when a request needs them: a relay without the console never loads either
(tests/test_architecture.py).

Authentication: ``GET /console/?token=T`` with a valid token answers 303 to ``/console/`` with
an HttpOnly, SameSite=Strict cookie; every other request needs that cookie or
``Authorization: Bearer T`` (401 otherwise).  The cookie never holds the token: it holds
HMAC-SHA256(a key drawn at the relay's start, T), so a leaked cookie (a browser profile, a
proxy log) does not give the token away, and it stops working when the relay restarts or T is
rotated out of the config.  Requests that change something (POST) also need
the ``X-Relay-Console: 1`` header, which a cross-site form cannot send (403 otherwise).

Test events leave no trace in the relay's metrics: the counters the dry-run stage increments
are set back (:func:`_stage_counters_untouched`); the gauges it would re-bind are restored.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from pathlib import Path
from urllib.parse import parse_qs

import orjson

log = logging.getLogger("relay.console")

__all__ = ["Console"]

STATIC = Path(__file__).resolve().parent / "static"
_FILES = {"index.html": b"text/html; charset=utf-8", "console.css": b"text/css; charset=utf-8",
          "console.js": b"text/javascript; charset=utf-8", "samples.json": b"application/json"}
_SECURITY = [(b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"),
             (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer"),
             (b"content-security-policy", b"default-src 'self'; script-src 'self'; style-src 'self'; "
                                          b"img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'")]
_COOKIE = "relay_console"
_CASE_NAME = re.compile(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*")
MAX_INPUT = 1 << 20


class _stage_counters_untouched:
    """Counters as they were, for what the dry-run stage touches on this thread; the other
    threads' counters (queue commits) are left alone, and gauge functions a dry-run lookup
    re-binds are put back."""

    def __enter__(self):
        from ..metrics import REGISTRY
        self.reg = REGISTRY
        self.before = {k: c.value for k, c in REGISTRY._counters.items()}
        self.gauges = {k: g.fn for k, g in REGISTRY._gauges.items()}
        return self

    def __exit__(self, *exc):
        from ..metrics import OFF_LOOP_COUNTERS
        for k, c in list(self.reg._counters.items()):
            if k[0] in OFF_LOOP_COUNTERS:
                continue
            c.value = self.before.get(k, 0)
        for k, fn in self.gauges.items():
            g = self.reg._gauges.get(k)
            if g is not None:
                g.fn = fn
        return False


class Console:
    """The ``/console/`` handler for :class:`relay.metrics.MetricsServer` (a prefix route: it
    checks its own token).  ``config_fn()``: the running config; ``hub``: the tap hub."""

    prefix = "/console/"

    def __init__(self, config_fn, hub, workers: int) -> None:
        self.config_fn = config_fn
        self.hub = hub
        self.workers = workers
        self._view = None
        self._view_config = None
        self._session_key = secrets.token_bytes(32)

    # ------------------------------------------------------------------ auth
    def _tokens(self) -> tuple:
        return tuple(t.reveal().encode() for t in self.config_fn().relay.console_tokens)

    @staticmethod
    def _check(given: bytes | None, tokens) -> bool:
        if not given or not tokens:
            return False
        ok = False
        for t in tokens:
            ok |= hmac.compare_digest(given, t)
        return ok

    def _authorized(self, scope) -> bool:
        from ..httpserver import header
        tokens = self._tokens()
        auth = header(scope, b"authorization") or b""
        if auth[:7].lower() == b"bearer " and self._check(auth[7:].strip(), tokens):
            return True
        for part in (header(scope, b"cookie") or b"").split(b";"):
            k, _, v = part.strip().partition(b"=")
            if k == _COOKIE.encode() and self._check(v, [self._session(t) for t in tokens]):
                return True
        return False

    def _session(self, token: bytes) -> bytes:
        """The cookie value for ``token``: an HMAC of it under this process's key (hex)."""
        return hmac.new(self._session_key, token, hashlib.sha256).hexdigest().encode()

    # ------------------------------------------------------------------ dispatch
    async def __call__(self, server, scope, receive, send) -> int:
        from ..httpserver import respond
        path, method = scope["path"], scope["method"]
        if not self.config_fn().relay.console:     # turned off by a reload (on needs a restart)
            await respond(send, 404, b"not found: the console is off ([relay] console)\n", b"text/plain; charset=utf-8")
            return 404
        query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode("utf-8", "replace"),
                                                  keep_blank_values=True).items()}
        if path in ("/console", "/console/") and method == "GET" and "token" in query:
            if self._check(query["token"].encode(), self._tokens()):
                cookie = (_COOKIE.encode() + b"=" + self._session(query["token"].encode())
                          + b"; Path=/console; HttpOnly; SameSite=Strict")
                await send({"type": "http.response.start", "status": 303,
                            "headers": [(b"location", b"/console/"), (b"set-cookie", cookie),
                                        (b"content-length", b"0"), *_SECURITY]})
                await send({"type": "http.response.body", "body": b""})
                return 303
            await respond(send, 401, b"unauthorized: wrong console token\n", b"text/plain; charset=utf-8", _SECURITY)
            return 401
        if not self._authorized(scope):
            await respond(send, 401, b"unauthorized: open /console/?token=<console token> once, or send "
                                     b"Authorization: Bearer <console token>\n", b"text/plain; charset=utf-8",
                          [(b"www-authenticate", b'Bearer realm="relay console"'), *_SECURITY])
            return 401
        if path == "/console":
            await send({"type": "http.response.start", "status": 308,
                        "headers": [(b"location", b"/console/"), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return 308
        sub = path[len(self.prefix):]
        if method == "GET":
            if sub in ("", "index.html"):
                return await self._static(send, "index.html")
            if sub.startswith("static/") and sub[7:] in _FILES:
                return await self._static(send, sub[7:])
            if sub == "api/info":
                return await self._json(send, 200, self.info())
            if sub == "api/queues":
                return await self._json(send, 200, self.queues())
            if sub == "api/tap":
                return await self._tap(query, receive, send)
            return await self._json(send, 404, {"error": f"not found: {path}"})
        if method != "POST":
            return await self._json(send, 405, {"error": "method not allowed"})
        from ..httpserver import BodyTimeout, BodyTooLarge, header, read_body
        if header(scope, b"x-relay-console") != b"1":
            return await self._json(send, 403, {"error": "missing X-Relay-Console: 1 (cross-site requests are refused)"})
        try:
            body = orjson.loads(await read_body(receive, MAX_INPUT + 4096, 10.0))
        except BodyTooLarge:
            return await self._json(send, 413, {"error": f"the input is over {MAX_INPUT} bytes"})
        except (BodyTimeout, ConnectionResetError):
            return await self._json(send, 400, {"error": "the request body did not arrive"})
        except orjson.JSONDecodeError as e:
            return await self._json(send, 400, {"error": f"not JSON: {e}"})
        if not isinstance(body, dict):
            return await self._json(send, 400, {"error": "send a JSON object"})
        try:
            if sub == "api/analyse":
                return await self._json(send, 200, self.analyse(body))
            if sub == "api/case":
                status, out = self.save_case(body)
                return await self._json(send, status, out)
        except _BadRequest as e:
            return await self._json(send, 400, {"error": str(e)})
        return await self._json(send, 404, {"error": f"not found: {path}"})

    async def _static(self, send, name: str) -> int:
        from ..httpserver import respond
        data = (STATIC / name).read_bytes()
        await respond(send, 200, data, _FILES[name], _SECURITY)
        return 200

    async def _json(self, send, status: int, obj) -> int:
        from ..httpserver import respond
        await respond(send, status, orjson.dumps(obj, default=str, option=orjson.OPT_NON_STR_KEYS),
                      b"application/json", _SECURITY)
        return status

    async def _tap(self, query: dict, receive, send) -> int:
        from ..tap import TapError, serve
        try:
            await serve(self.hub, query, receive, send, config=self.config_fn(), workers=self.workers)
        except TapError as e:
            return await self._json(send, e.status, {"error": str(e)})
        return 200

    # ------------------------------------------------------------------ the work
    def info(self) -> dict:
        from .. import kinds
        cfg = self.config_fn()
        sources = []
        for name, sc in cfg.sources.items():
            sources.append({"name": name, "type": sc.type, "lenient": bool(getattr(sc, "lenient", False)),
                            "bodies": self._decoder(cfg, name) is not None})
        return {"sources": sources, "routes": list(cfg.routes), "sinks": [
                    {"name": n, "type": sc.type, "structured": kinds.sink(sc.type).structured}
                    for n, sc in cfg.sinks.items()],
                "cases_dir": str(cfg.relay.console_cases_dir) if cfg.relay.console_cases_dir else None,
                "workers": self.workers}

    def queues(self) -> list:
        from ..metrics import REGISTRY
        out = []
        for name in self.config_fn().sinks:
            age = REGISTRY.value("relay_queue_oldest_age_seconds", sink=name)
            depth = REGISTRY.value("relay_queue_depth", sink=name)
            out.append({"sink": name, "depth": depth, "oldest_age_seconds": None if age != age or not depth else age,
                        "dead_letters": REGISTRY.value("relay_dlq_depth", sink=name),
                        "sent": REGISTRY.value("relay_sent_total", sink=name),
                        "retried": REGISTRY.value("relay_retried_total", sink=name),
                        "up": REGISTRY.value("relay_sink_up", sink=name),
                        "blocked": REGISTRY.value("relay_sink_blocked", sink=name),
                        "errors": REGISTRY.total("relay_send_errors_total", sink=name)})
        return out

    def _config_view(self):
        """The dry-run stage over the running config (rebuilt after a reload)."""
        cfg = self.config_fn()
        if self._view is None or self._view_config is not cfg:
            from ..tools.testparse import ConfigView
            with _stage_counters_untouched():
                self._view = ConfigView(cfg)
            self._view_config = cfg
        return self._view

    def _decoder(self, cfg, source):
        from ..tools.testparse import body_decoder
        return body_decoder(cfg, source)

    def _inputs(self, body: dict) -> tuple[bytes, str | None, bool]:
        text = body.get("input")
        if not isinstance(text, str) or not text:
            raise _BadRequest("input: paste a message or a JSON alert")
        raw = text.encode("utf-8", "surrogateescape")
        if len(raw) > MAX_INPUT:
            raise _BadRequest(f"input is over {MAX_INPUT} bytes")
        cfg = self.config_fn()
        source = body.get("source") or None
        if source is not None and source not in cfg.sources:
            raise _BadRequest(f"no source {source!r} (sources: {', '.join(cfg.sources)})")
        lenient = bool(body.get("lenient")) or bool(source and cfg.sources[source].lenient)
        return raw, source, lenient

    def analyse(self, body: dict) -> dict:
        """What ``relay test-parse --config CFG [--source S] [--lenient] --json`` prints for the
        input: one record per message (per line; for a source that takes request bodies, per
        event of the body), plus the caret line for a parse error."""
        from ..tools.cases.model import DEFAULT_RECEIVED
        from ..tools.testparse import analyse, analyse_body, caret_line
        raw, source, lenient = self._inputs(body)
        cfg = self.config_fn()
        t0 = time.perf_counter()
        with _stage_counters_untouched():
            view = self._config_view()
            decoder = self._decoder(cfg, source)
            if decoder is not None:
                recs = analyse_body(raw, decoder, view=view, received=DEFAULT_RECEIVED)
            else:
                lines = [ln.rstrip(b"\r") for ln in raw.split(b"\n") if ln.strip()] or [raw]
                recs = [analyse(ln, lenient=lenient, view=view, source=source, received=DEFAULT_RECEIVED)
                        for ln in lines]
        for rec in recs:
            if not rec["ok"] and rec.get("error") is not None:
                line, caret = caret_line(rec["input"].encode("utf-8", "surrogateescape"), rec["error"]["offset"])
                rec["caret"] = {"line": line, "caret": caret}
            checks = rec.get("route_checks")
            if checks:
                rec["route_checks"] = {k: _explain_text(v) for k, v in checks.items()}
        return {"records": recs, "bodies": decoder is not None, "source": source, "lenient": lenient,
                "ms": round((time.perf_counter() - t0) * 1000, 2)}

    def save_case(self, body: dict) -> tuple[int, dict]:
        """Write the input and its output as ``<console_cases_dir>/<name>.toml`` (inline input,
        the source and leniency as chosen), blessed by ``--update``'s code, then run it as
        ``--cases`` does: it must pass."""
        from ..tools.cases.model import load_case
        from ..tools.cases.runner import Runner
        from ..tools.cases.update import bless, dumps_toml
        from ..tools.cases.model import Case
        cfg = self.config_fn()
        root = cfg.relay.console_cases_dir
        if root is None:
            return 409, {"error": "saving is off: set [relay] console_cases_dir"}
        name = body.get("name")
        if not isinstance(name, str) or not _CASE_NAME.fullmatch(name) or len(name) > 200:
            raise _BadRequest("name: letters, digits, _ and -, sub/directories with / (no dots)")
        raw, source, lenient = self._inputs(body)
        path = Path(root) / f"{name}.toml"
        if any(path.with_suffix(s).exists() for s in (".toml", ".json", ".log", ".bin", ".ndjson", ".jsonl")) \
                and not body.get("overwrite"):
            return 409, {"error": f"case {name!r} exists in {root} (tick overwrite to replace it)", "exists": True}
        data: dict = {"description": str(body.get("description") or f"saved from the relay console "
                                                                   f"{time.strftime('%Y-%m-%d %H:%M:%S')}")}
        if source:
            data["source"] = source
        if lenient and not (source and cfg.sources[source].lenient):
            data["lenient"] = True
        text = raw.decode("utf-8", "surrogateescape")
        if self._decoder(cfg, source) is None:
            lines = [ln.rstrip("\r") for ln in text.split("\n") if ln.strip()]
            if len(lines) == 1:
                data["input"] = lines[0]
            else:
                data["inputs"] = lines
        else:
            data["input"] = text
        case = Case(name, path, "toml", data=dict(data), base_dir=path.parent)
        with _stage_counters_untouched():
            runner = Runner(cfg)
            res = runner.run(case)
            if res.status == "error":
                return 422, {"error": "; ".join(res.problems)}
            blessed = bless(res, cfg)
            out = dumps_toml(blessed, header=f"# {name}: saved from the relay console; edit freely")
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(out, encoding="utf-8")
            tmp.replace(path)
            check = runner.run(load_case(path, name=name))
        log.info("console: golden case %s written (%s)", path, check.status)
        return 200, {"path": str(path), "name": name, "status": check.status, "problems": check.problems,
                     "text": out}


class _BadRequest(ValueError):
    pass


def _explain_text(v):
    """A route check (``relay.rules.explain``: one line per comparison, then ``rule -> R``) as
    the page shows it: ``{"rule": bool, "lines": [...]}``."""
    lines = [str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)]
    return {"rule": bool(lines) and lines[-1].strip() == "rule -> true", "lines": lines}

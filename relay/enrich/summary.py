"""Optional narrative summary from an OpenAI-compatible chat endpoint, off the hot path.

The enricher calls :meth:`Summarizer.cached` (a dict probe) for a triaged event bound for
XSOAR: when an answer for the event's incident (its ``dedup_key``) is already there it goes
into ``fields["triage"]["summary"]``; otherwise :meth:`request` queues the context for the
background thread and the event goes on unchanged.  Later messages about the same incident
(updated, closed) carry the summary.  The thread keeps a budget (calls and tokens per minute,
split over the worker processes), times out, records the prompt and the answer (or the
failure) in the audit log, and never retries a failure before ``failure_ttl``.  The API key
is sent in the ``Authorization`` header only: never logged, never audited.
"""
from __future__ import annotations

import collections
import logging
import queue
import threading
import time

import orjson

from ..metrics import REGISTRY
from .config import SummaryConfig

log = logging.getLogger("relay.enrich")

__all__ = ["Summarizer", "PROMPT_VERSION"]

PROMPT_VERSION = "1"


class Summarizer:
    def __init__(self, cfg: SummaryConfig, audit=None, *, share: int = 1, config_version: str = "",
                 transport=None) -> None:
        """``transport``: an httpx transport to send through instead of the network (tests:
        ``httpx.MockTransport``)."""
        self.cfg = cfg
        self.transport = transport
        self.audit = audit
        self.config_version = config_version
        self.calls_per_minute = -(-cfg.max_calls_per_minute // max(1, share))
        self.tokens_per_minute = -(-cfg.max_tokens_per_minute // max(1, share))
        self.answers: collections.OrderedDict = collections.OrderedDict()   # key -> text
        self.failed: dict = {}        # key -> monotonic time when it may be tried again
        self.pending: set = set()
        self.q: queue.Queue = queue.Queue(100)
        self.calls: collections.deque = collections.deque()    # (monotonic, tokens)
        self._closed = False
        self._client = None
        self._c = {r: REGISTRY.counter("relay_summary_requests_total", result=r)
                   for r in ("ok", "error", "timeout", "budget", "queue_full")}
        self._thread = threading.Thread(target=self._run, name="summary", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ hot path
    def cached(self, key: str):
        return self.answers.get(key)

    def request(self, key: str, event_id, context: dict) -> str:
        """Queue one summary; -> 'queued' / 'pending' / 'failed recently' / 'queue full'."""
        if key in self.pending:
            return "pending"
        again = self.failed.get(key)
        if again is not None and again > time.monotonic():
            return "failed recently"
        try:
            self.q.put_nowait((key, event_id, context))
        except queue.Full:
            self._c["queue_full"].value += 1
            return "queue full"
        self.pending.add(key)
        return "queued"

    # ------------------------------------------------------------------ background
    def _budget_ok(self, now: float) -> str | None:
        calls = self.calls
        while calls and calls[0][0] < now - 60:
            calls.popleft()
        if self.calls_per_minute <= 0 or len(calls) >= self.calls_per_minute:
            return f"budget: {self.calls_per_minute} call(s) per minute used"
        used = sum(t for _, t in calls)
        if used + self.cfg.max_tokens > self.tokens_per_minute:
            return f"budget: {used} of {self.tokens_per_minute} tokens per minute used"
        return None

    def prompt(self, context: dict) -> list:
        return [{"role": "system", "content": self.cfg.system_prompt},
                {"role": "user", "content": "Summarise this security event for the SOC analyst.\n"
                                            + orjson.dumps(context, option=orjson.OPT_INDENT_2, default=str).decode()}]

    def _run(self) -> None:
        import httpx
        while not self._closed:
            try:
                item = self.q.get(timeout=0.5)
            except queue.Empty:
                continue
            if item is None:
                return
            key, event_id, context = item
            try:
                self._one(httpx, key, event_id, context)
            except Exception as e:  # pragma: no cover - a bug must not kill the thread
                log.exception("summary: %s", e)
            finally:
                self.pending.discard(key)

    def _one(self, httpx, key: str, event_id, context: dict) -> None:
        now = time.monotonic()
        messages = self.prompt(context)
        rec = {"type": "summary", "time": _iso(time.time()), "event_id": event_id, "dedup_key": key,
               "model": self.cfg.model, "url": self.cfg.url, "prompt_version": PROMPT_VERSION,
               "config_version": self.config_version, "prompt": messages}
        over = self._budget_ok(now)
        if over:
            self._c["budget"].value += 1
            self.failed[key] = now + min(60.0, self.cfg.failure_ttl or 60.0)
            rec.update(result="skipped", error=over)
            self._audit(rec)
            return
        if self._client is None:
            self._client = httpx.Client(timeout=httpx.Timeout(self.cfg.timeout), trust_env=False,
                                        transport=self.transport)
        headers = {"Content-Type": "application/json"}
        if self.cfg.api_key:
            headers["Authorization"] = f"Bearer {self.cfg.api_key}"
        body = {"model": self.cfg.model, "messages": messages, "max_tokens": self.cfg.max_tokens,
                "temperature": 0}
        t0 = time.monotonic()
        self.calls.append((t0, self.cfg.max_tokens))   # reserve; corrected from the answer's usage
        try:
            r = self._client.post(self.cfg.url, content=orjson.dumps(body), headers=headers)
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
            obj = orjson.loads(r.content)
            text = obj["choices"][0]["message"]["content"]
            if not isinstance(text, str) or not text.strip():
                raise RuntimeError("empty answer")
            usage = obj.get("usage") or {}
            tokens = usage.get("total_tokens")
            if not isinstance(tokens, int):
                tokens = (len(orjson.dumps(messages)) + len(text)) // 4
        except Exception as e:
            timeout = isinstance(e, httpx.TimeoutException)
            self._c["timeout" if timeout else "error"].value += 1
            self.failed[key] = time.monotonic() + self.cfg.failure_ttl
            msg = f"timeout after {self.cfg.timeout:g} s" if timeout else f"{type(e).__name__}: {e}"
            if self.cfg.api_key:
                msg = msg.replace(self.cfg.api_key, "***")
            log.warning("summary: %s failed for %s: %s (the incident goes on without a summary)",
                        self.cfg.url, key, msg)
            rec.update(result="failed", error=msg, duration=round(time.monotonic() - t0, 3))
            self._audit(rec)
            return
        for i in range(len(self.calls) - 1, -1, -1):
            if self.calls[i][0] == t0:
                self.calls[i] = (t0, tokens)
                break
        text = text.strip()
        self.answers[key] = text
        while len(self.answers) > self.cfg.cache_size:
            self.answers.popitem(last=False)
        self.failed.pop(key, None)
        self._c["ok"].value += 1
        rec.update(result="ok", answer=text, tokens=tokens, duration=round(time.monotonic() - t0, 3))
        self._audit(rec)

    def _audit(self, rec: dict) -> None:
        if self.audit is not None:
            self.audit.write(rec)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while (self.pending or not self.q.empty()) and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self.pending

    def close(self) -> None:
        self._closed = True
        try:
            self.q.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(self.cfg.timeout + 1)
        if self._client is not None:
            try:
                self._client.close()
            except Exception:
                pass


def _iso(t: float) -> str:
    g = time.gmtime(t)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (g.tm_year, g.tm_mon, g.tm_mday, g.tm_hour, g.tm_min,
                                                     g.tm_sec, int(t * 1000) % 1000)

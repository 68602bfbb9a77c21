"""A chat webhook emulator with the behaviours of Slack incoming webhooks and Microsoft Teams
(Office 365 connector and Workflows) (apis-wave2.md section 3), on 127.0.0.1.

``flavor``:

* ``"slack"`` - ``POST /services/T.../B.../<secret>``: 200 ``ok``; errors are a status and a
  plain-text body: 400 ``invalid_payload`` (not JSON), ``no_text`` (neither text nor blocks),
  ``invalid_blocks`` (more than 50 blocks, a header over 150 or a section over 3000
  characters); ``revoked`` -> 404 ``no_service``; a wrong secret -> 403 ``invalid_token``.
  Rate: ``rate`` messages per second with a ``burst``, beyond -> **429 + Retry-After**.
* ``"teams"`` - an Office 365 connector: 200 body ``1``; a MessageCard without summary or text
  -> 400 ``Summary or Text is required.``; over 28 KB -> **200 with "Microsoft Teams endpoint
  returned HTTP error 413"**; throttled (``rate``/``burst``) -> **200 with "... HTTP error 429"**
  (connectors do not send 429) unless ``real_429=True``.
* ``"workflows"`` - a Power Automate "When a Teams webhook request is received" URL (a ``sig``
  query parameter is the secret): 202 empty for any well-formed POST; only Adaptive Card
  attachments are *posted* (a MessageCard is accepted and silently dropped); a bad ``sig`` ->
  401; throttled -> 429 + Retry-After.

``messages`` holds what was posted (the parsed bodies), in order.  Faults: _faults.py (op
``message``).
"""
from __future__ import annotations

import time

import orjson

from ._faults import FaultyEmulator, Reply, Request

__all__ = ["ChatEmulator"]


class ChatEmulator(FaultyEmulator):
    thread_name = "chat-emulator"

    def __init__(self, flavor: str = "slack", *, secret: str = "XyZsecret123", rate: float = 0.0, burst: int = 1,
                 retry_after: int = 1, real_429: bool = False, **kw) -> None:
        super().__init__(**kw)
        assert flavor in ("slack", "teams", "workflows")
        self.flavor = flavor
        self.secret = secret
        self.rate, self.burst, self.retry_after = rate, max(1, burst), retry_after
        self.real_429 = real_429
        self.revoked = False
        self.messages: list[dict] = []
        self._tokens = float(self.burst)
        self._at = time.monotonic()

    @property
    def hook_url(self) -> str:
        if self.flavor == "slack":
            return f"{self.url}/services/T0001/B0002/{self.secret}"
        if self.flavor == "teams":
            return f"{self.url}/webhookb2/abc@def/IncomingWebhook/{self.secret}/ghi"
        return (f"{self.url}/workflows/0a1b/triggers/manual/paths/invoke?api-version=2016-06-01&sp=%2Ftriggers"
                f"%2Fmanual%2Frun&sv=1.0&sig={self.secret}")

    def op_of(self, req: Request) -> str:
        return "message"

    def _throttled(self) -> bool:
        if self.rate <= 0:
            return False
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return False
        return True

    def _secret_ok(self, req: Request) -> bool:
        if self.flavor == "workflows":
            return req.query.get("sig") == self.secret
        return self.secret in req.path

    def handle(self, req: Request) -> Reply:
        if req.method != "POST":
            return Reply(405, text="method_not_allowed")
        with self.lock:
            if self.flavor == "slack":
                return self._slack(req)
            if self.flavor == "teams":
                return self._teams(req)
            return self._workflows(req)

    def _slack(self, req: Request) -> Reply:
        if self.revoked:
            return Reply(404, text="no_service", note="revoked")
        if not self._secret_ok(req):
            return Reply(403, text="invalid_token")
        if self._throttled():
            return Reply(429, text="rate_limited", headers={"Retry-After": str(self.retry_after)}, note="throttled")
        try:
            body = orjson.loads(req.raw)
        except orjson.JSONDecodeError:
            return Reply(400, text="invalid_payload")
        if not isinstance(body, dict) or not (body.get("text") or body.get("blocks")):
            return Reply(400, text="no_text")
        blocks = body.get("blocks") or []
        if len(blocks) > 50:
            return Reply(400, text="invalid_blocks")
        for b in blocks:
            t = (b.get("text") or {}).get("text", "") if isinstance(b, dict) else ""
            if (b.get("type") == "header" and len(t) > 150) or (b.get("type") == "section" and len(t) > 3000):
                return Reply(400, text="invalid_blocks")
        self.messages.append(body)
        return Reply(200, text="ok", note="posted")

    def _teams(self, req: Request) -> Reply:
        if not self._secret_ok(req):
            return Reply(404, text="Not Found")
        if self._throttled():
            if self.real_429:
                return Reply(429, text="Too Many Requests", headers={"Retry-After": str(self.retry_after)})
            return Reply(200, text="Microsoft Teams endpoint returned HTTP error 429 with ContextId tcid=0,server=x,"
                                   "cv=y", note="throttled in a 200")
        if len(req.raw) > 28 * 1024:
            return Reply(200, text="Microsoft Teams endpoint returned HTTP error 413 with ContextId x", note="too large")
        try:
            body = orjson.loads(req.raw)
        except orjson.JSONDecodeError:
            return Reply(400, text="Bad payload received by generic incoming webhook.")
        if not isinstance(body, dict):
            return Reply(400, text="Bad payload received by generic incoming webhook.")
        if body.get("@type") == "MessageCard" and not (body.get("summary") or body.get("text")):
            return Reply(400, text="Summary or Text is required.")
        if body.get("type") == "message" and not body.get("attachments"):
            return Reply(400, text="Summary or Text is required.")
        self.messages.append(body)
        return Reply(200, text="1", note="posted")

    def _workflows(self, req: Request) -> Reply:
        if not self._secret_ok(req):
            return Reply(401, {"error": {"code": "DirectApiAuthorizationRequired",
                                         "message": "The request must be authenticated"}})
        if self._throttled():
            return Reply(429, {"error": {"code": "WorkflowTriggeredTooManyTimes"}},
                         headers={"Retry-After": str(self.retry_after)}, note="throttled")
        try:
            body = orjson.loads(req.raw)
        except orjson.JSONDecodeError:
            return Reply(400, {"error": {"code": "InvalidRequestContent"}})
        atts = body.get("attachments") if isinstance(body, dict) else None
        if isinstance(atts, list) and any(isinstance(a, dict) and a.get("contentType") ==
                                          "application/vnd.microsoft.card.adaptive" for a in atts):
            self.messages.append(body)
            note = "posted"
        else:
            note = "accepted, not posted (no Adaptive Card: the flow run fails)"
        return Reply(202, None, note=note)

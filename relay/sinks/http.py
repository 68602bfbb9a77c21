"""The ``http`` sink: events delivered over HTTP(S) by preset (docs/config.md, "http").

=============  ==============================================================================
preset         what one queued row becomes
=============  ==============================================================================
servicenow     one incident (Table API) per dedup key: dedup store, then
               ``GET /api/now/table/<table>?sysparm_query=correlation_id=<key>``, then
               ``POST /api/now/table/<table>``; ``mode = "sync"`` PATCHes the record
jira           one issue per dedup key: dedup store, then a JQL search by the key's label (or a
               custom field), then ``POST /rest/api/2|3/issue``; ``sync`` PUTs the fields
slack          one incoming-webhook message (blocks), at most ``rate`` per second
teams          one Adaptive Card message (Office 365 connector or Workflows webhook), rate-limited
qradar_http    many LEEF/CEF lines per POST (QRadar's HTTP Receiver log source, one event per
               line): the whole batch is acknowledged or retried
splunk_hec     many event envelopes per POST to ``/services/collector/event`` (batch = envelopes
               back to back), ``Authorization: Splunk <token>``
generic        one request per event (``batch = "none"``) or a JSON array / NDJSON per batch, to
               any URL, the body from a template
=============  ==============================================================================

**The queued row is the request.**  The renderer (run once per event by the pipeline) stores
``{"method", "url", "headers", "body"}`` (ticket presets also ``"search"``: how the sink looks
the key up), with every secret shown as ``<redacted>``: what ``relay test-parse --config``
prints, what a dead letter shows.  The delivery sends each row's ``body`` to the sink's
*current* url with its current credentials (so a fixed ``url`` applies to rows already queued;
the head of a row says where it was headed when it was staged).  Batched presets join the
bodies of a leased batch into one request.

**Failures** (relay/sinks/_http.py): 5xx, 408, timeouts and dropped connections are retried
with backoff (``Retry-After`` honoured); **429 pauses the sink for ``Retry-After`` and counts no
attempt** (throttling is not the event's fault: a throttling storm never dead-letters
anything); 401/403 block the sink, every event stays queued, an ALERT line says why (OAuth2:
one retry with a new token first); other 4xx dead-letter the row with the status and an
excerpt of the answer, secrets redacted.  Batched presets isolate a refused row by splitting
the batch (400/413: halves, recursively; HEC's ``invalid-event-number`` names it).  Preset
details: ServiceNow's 403 "Data Policy Exception" (a field the ticket lacks) dead-letters the
row instead of blocking the sink; a hibernating instance's 200 HTML page is retried; Slack's
404 ``no_service`` / 410 ``channel_is_archived`` (a revoked webhook) block; a Teams connector's
200 whose body says ``HTTP error 429`` is a 429.

**Idempotent tickets.**  ServiceNow and Jira share the dedup store of relay/dedup.py with the
XSOAR sink (``<state_dir>/http-dedup-<sink>.db``): a key seen before is never searched or
created again; a key not in the store is searched (exact match checked on what comes back:
ServiceNow ignores an invalid query part and would return every row); a create whose answer
was lost (dropped connection, timeout, relay killed) is found by that search on the retry.
Jira's search is eventually consistent: after a create with an unknown outcome the retry waits
``search_settle`` seconds before it trusts a miss.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence
from urllib.parse import urlencode, urlsplit

import httpx
import orjson

from formats import http as bodies
from formats.render import Renderer, RenderOptions
from formats.template import TemplateError, compile_template

from .. import kinds
from ..dedup import DedupRecord, DedupStore, store_path
from . import _claims, _lines
from ._http import (AUTH_KEYS, HTTP_KEYS, Auth, AuthConfig, HttpOptions, HttpSink, classify, excerpt,
                    read_auth, read_http, retry_after)
from .base import AuthError, PermanentError, RetryableError, SinkError, UnavailableError

__all__ = ["HttpSettings", "read_config", "PRESETS", "make", "TicketSink", "ChatSink", "BatchSink", "EachSink"]

log = logging.getLogger("relay.sinks.http")

PRESETS = ("servicenow", "jira", "slack", "teams", "qradar_http", "splunk_hec", "generic")
SERVICE = {"servicenow": "ServiceNow", "jira": "Jira", "slack": "Slack", "teams": "Teams",
           "qradar_http": "the QRadar HTTP Receiver", "splunk_hec": "Splunk HEC", "generic": "the HTTP endpoint"}
DEFAULT_AUTH = {"servicenow": "basic", "jira": "basic", "splunk_hec": "bearer"}
DEFAULT_BATCH = {"servicenow": 20, "jira": 20, "slack": 20, "teams": 20, "qradar_http": 500, "splunk_hec": 500,
                 "generic": 50}
DEFAULT_RATE = {"slack": (1.0, 3), "teams": (2.0, 4)}          # messages per second, burst
TICKETS = ("servicenow", "jira")
SEARCH_SIZE = 10
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_JIRA_CF = re.compile(r"customfield_(\d+)\Z")
SNOW_FIELDS = "sys_id,number,state,correlation_id,sys_created_on"


# =========================================================================== settings
@dataclass(frozen=True)
class HttpSettings:
    """What :func:`read_config` stores in ``sink_config.options["http"]``."""

    preset: str
    url: str                                 # the endpoint (tickets: the instance / site URL)
    url_secret: bool = False                 # the URL is a credential (url_env / url_file)
    shown_url: str = ""                      # the URL as shown (a secret one redacted)
    method: str = "POST"
    headers: tuple = ()                      # extra static headers ((name, value), ...)
    auth: AuthConfig = AuthConfig()
    http: HttpOptions = HttpOptions()
    batch_size: int = 50
    mode: str = "create"                     # tickets: create | sync
    dedup_store_size: int = 100_000
    template: Any = None                     # formats.template.JsonTemplate or None
    options: Any = None                      # the preset's formats/http.py options
    render: Any = None                       # qradar_http: formats.render.RenderOptions
    rate: float = 0.0                        # chat: messages per second (0: no limit)
    burst: int = 1
    batch: str = "none"                      # generic: none | array | ndjson
    max_request_bytes: int = 1 << 20         # batched presets: bytes per request
    table: str = "incident"                  # servicenow
    search_api: str = "auto"                 # jira: auto | jql (Cloud) | legacy (/rest/api/2/search)
    search_settle: float = 10.0              # jira: seconds a miss is not trusted after an unknown create
    secrets: tuple = field(default=(), compare=False, repr=False)   # values to redact (not compared)

    @property
    def service(self) -> str:
        return SERVICE[self.preset]

    @property
    def batched(self) -> bool:
        return self.preset in ("qradar_http", "splunk_hec") or (self.preset == "generic" and self.batch != "none")


def _url(v: str) -> str:
    parts = urlsplit(v.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{v!r} is not an http(s) URL" if "\n" not in v else "is not an http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain credentials (user:password@); use the auth keys")
    if parts.fragment:
        raise ValueError("must not have a #fragment")
    return v.strip()


def _base(v: str) -> str:
    """Tickets: the instance URL (no query), trailing '/' removed."""
    parts = urlsplit(v)
    if parts.query:
        raise ValueError("must be the instance URL, without a query")
    return v.rstrip("/")


def _shown(url: str, secret: bool) -> str:
    if not secret:
        return url
    p = urlsplit(url)
    return f"{p.scheme}://{p.hostname}{':%d' % p.port if p.port else ''}/<redacted>"


def _mapping(table, key: str) -> tuple:
    t = table.table(key)
    out = []
    for k in list(t.data):
        if not _FIELD.match(k):
            raise t.err(k, f"{k!r} is not a field name")
        out.append((k, t.get(k, str)))
    t.finish()
    return tuple(out)


def _only(table, preset: str, keys: tuple, allowed_for: tuple) -> None:
    if preset not in allowed_for:
        for k in keys:
            if k in table.data:
                raise table.err(k, f"is not a key of preset {preset!r} (it is for: {', '.join(allowed_for)})")


def read_config(table, sk, base_dir: Path) -> None:
    """Read a ``[sinks.NAME]`` of ``type = "http"`` (docs/config.md)."""
    preset = table.get("preset", str, None, required=True, choices=PRESETS)
    # keys that belong to some presets only: refused elsewhere (they would be ignored silently)
    _only(table, preset, ("mode", "dedup_store_size"), TICKETS)
    _only(table, preset, ("table", "correlation_display", "category", "subcategory", "assignment_group",
                          "caller_id"), ("servicenow",))
    _only(table, preset, ("project", "issue_type", "api_version", "labels", "dedup_field", "priorities",
                          "search_api", "search_settle"), ("jira",))
    _only(table, preset, ("fields",), TICKETS)
    _only(table, preset, ("rate", "burst", "title_prefix"), ("slack", "teams"))
    _only(table, preset, _lines.KEYS, ("qradar_http",))
    _only(table, preset, ("index", "source", "sourcetype", "event_host"), ("splunk_hec",))
    _only(table, preset, ("method", "batch"), ("generic",))
    _only(table, preset, ("max_request_bytes",), ("qradar_http", "splunk_hec", "generic"))
    _only(table, preset, ("template", "template_file"),
          ("servicenow", "jira", "slack", "teams", "splunk_hec", "generic"))

    # the URL: in the config, or (a webhook URL is a credential) from the environment or a file
    secrets: list[str] = []
    n = sum(k in table.data for k in ("url", "url_env", "url_file"))
    if n != 1:
        raise table.err("url", "set exactly one of url, url_env (an environment variable holding the URL) "
                               "or url_file" if n else "is required (or url_env / url_file)")
    if "url" in table.data:
        url = table.get("url", str, check=_url)
        if preset in ("slack", "teams"):
            raise table.err("url", f"a {preset} webhook URL is a credential: use url_env or url_file")
        secret = False
    else:
        from ..secrets import read_secret
        sec = read_secret(table, "url_env", "url_file", "webhook URL", base_dir)
        url = sec.reveal()
        if getattr(table, "secrets", True):
            try:
                url = _url(url)
            except ValueError as e:
                raise table.err("url_env" if "url_env" in table.data else "url_file", str(e)) from None
        else:  # test-parse: nothing resolved
            url = "https://unresolved.invalid"
        secret = True
        if not getattr(table, "secrets", True):
            shown_src = f"<the URL in {sec.source}>"
        secrets += [url, urlsplit(url).path, urlsplit(url).query]
    if preset in TICKETS:
        try:
            url = _base(url)
        except ValueError as e:
            raise table.err("url", str(e)) from None
    elif preset == "splunk_hec" and urlsplit(url).path in ("", "/"):
        url = url.rstrip("/") + "/services/collector/event"

    auth = read_auth(table, base_dir, default=DEFAULT_AUTH.get(preset, "none"),
                     scheme="Splunk" if preset == "splunk_hec" else "Bearer")
    if auth.secret is not None:
        secrets.append(auth.secret.reveal())
    http = read_http(table, base_dir, concurrency=1 if preset in ("slack", "teams") else 4, client_cert=True)
    headers = []
    ht = table.table("headers")
    for k in list(ht.data):
        if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", k):
            raise ht.err(k, f"{k!r} is not an HTTP header name")
        if k.lower() in ("authorization", "content-length", "host") or (auth.header and k.lower() == auth.header.lower()):
            raise ht.err(k, "is set by the sink (auth, framing); use the auth keys for credentials")
        v = ht.get(k, str)
        if "\n" in v or "\r" in v:
            raise ht.err(k, "must be one line")
        headers.append((k, v))
    ht.finish()

    shown = _shown(url, secret)
    if secret and not getattr(table, "secrets", True):
        shown = shown_src
    s: dict[str, Any] = dict(preset=preset, url=url, url_secret=secret, shown_url=shown,
                             headers=tuple(headers), auth=auth, http=http, secrets=tuple(x for x in secrets if x),
                             batch_size=table.get("batch_size", int, DEFAULT_BATCH[preset], check=_positive))
    if preset in TICKETS:
        s["mode"] = table.get("mode", str, "create", choices=("create", "sync"))
        s["dedup_store_size"] = table.get("dedup_store_size", int, 100_000, check=_positive)
    if preset == "servicenow":
        tbl = table.get("table", str, "incident")
        if not _FIELD.match(tbl):
            raise table.err("table", f"{tbl!r} is not a table name")
        s["table"] = tbl
        s["options"] = bodies.ServiceNowOptions(
            correlation_display=table.get("correlation_display", str, "relay"),
            category=table.get("category", str, None), subcategory=table.get("subcategory", str, None),
            assignment_group=table.get("assignment_group", str, None), caller_id=table.get("caller_id", str, None),
            fields=_mapping(table, "fields"))
    elif preset == "jira":
        df = table.get("dedup_field", str, None)
        if df is not None and not _JIRA_CF.match(df):
            raise table.err("dedup_field", f"{df!r} must be a custom field id like customfield_10050 (a text field)")
        labels = table.get("labels", list, ["soc-relay"])
        for lab in labels:
            if not isinstance(lab, str) or not lab or any(c.isspace() for c in lab):
                raise table.err("labels", f"{lab!r}: Jira labels are non-empty strings without spaces")
        pt = table.table("priorities")
        prios = dict(bodies.JIRA_PRIORITY)
        for band in list(pt.data):
            if band not in prios:
                raise pt.err(band, f"is not a severity band ({', '.join(prios)})")
            prios[band] = pt.get(band, str)
        pt.finish()
        s["search_api"] = table.get("search_api", str, "auto", choices=("auto", "jql", "legacy"))
        s["search_settle"] = table.get("search_settle", float, 10.0, check=_non_negative)
        s["options"] = bodies.JiraOptions(
            project=table.get("project", str, None, required=True, check=_project),
            issue_type=table.get("issue_type", str, "Task"),
            api_version=table.get("api_version", str, "2", choices=("2", "3")),
            labels=tuple(labels), dedup_field=df, priorities=prios, fields=_mapping(table, "fields"))
    elif preset in ("slack", "teams"):
        rate, burst = DEFAULT_RATE[preset]
        s["rate"] = table.get("rate", float, rate, check=_non_negative)
        s["burst"] = table.get("burst", int, burst, check=_positive)
        s["options"] = bodies.ChatOptions(title_prefix=table.get("title_prefix", str, ""))
    elif preset == "qradar_http":
        _lines.read(table, sk)
        s["render"] = sk.render
    elif preset == "splunk_hec":
        s["options"] = bodies.HecOptions(
            source=table.get("source", str, "relay"), sourcetype=table.get("sourcetype", str, "relay:event"),
            index=table.get("index", str, None), host=table.get("event_host", str, "original"))
    elif preset == "generic":
        s["method"] = table.get("method", str, "POST", choices=("POST", "PUT", "PATCH"))
        s["batch"] = table.get("batch", str, "none", choices=("none", "array", "ndjson"))
    if preset in ("qradar_http", "splunk_hec", "generic"):
        s["max_request_bytes"] = table.get("max_request_bytes", int, 1 << 20, check=_positive)

    # the template: compiled and rendered on a sample event now (an error names its line)
    src = table.get("template", str, None)
    tfile = table.get("template_file", str, None)
    if src is not None and tfile is not None:
        raise table.err("template", "set either template or template_file, not both")
    key = "template"
    if tfile is not None:
        key = "template_file"
        p = Path(os.path.expandvars(tfile)).expanduser()
        p = p if p.is_absolute() else base_dir / p
        try:
            src = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise table.err(key, f"cannot read {str(p)!r}: {getattr(e, 'strerror', None) or e}") from None
    if src is not None:
        expect = None if preset == "generic" else dict
        try:
            s["template"] = compile_template(src, expect=expect)
        except TemplateError as e:
            raise table.err(key, f"template {e}") from None
    settings = HttpSettings(**s)
    sk.options["http"] = settings
    sk.format = "json"
    sk.batch_size = settings.batch_size
    sk.tls_verify = http.tls_verify
    if http.tls_ca is not None:
        sk.tls_ca = http.tls_ca


def _positive(v):
    if v <= 0:
        raise ValueError(f"must be greater than 0, not {v}")


def _non_negative(v):
    if v < 0:
        raise ValueError(f"must not be negative, not {v}")


def _project(v: str):
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", v):
        raise ValueError(f"{v!r} is not a Jira project key")


# =========================================================================== the request head
def _content_type(s: HttpSettings) -> str:
    if s.preset == "qradar_http":
        return "text/plain; charset=utf-8"
    if s.preset == "generic" and s.batch == "ndjson":
        return "application/x-ndjson"
    return "application/json"


def base_headers(s: HttpSettings) -> dict[str, str]:
    """The headers of every request but auth (which :class:`~relay.sinks._http.Auth` adds)."""
    h = {"Content-Type": _content_type(s)}
    if s.preset not in ("qradar_http",):
        h["Accept"] = "application/json"
    h.update(dict(s.headers))
    return h


def endpoint(s: HttpSettings) -> tuple[str, str]:
    """(method, URL) a row is sent with: the create request for the ticket presets."""
    if s.preset == "servicenow":
        return "POST", f"{s.url}/api/now/table/{s.table}"
    if s.preset == "jira":
        return "POST", f"{s.url}/rest/api/{s.options.api_version}/issue"
    return s.method, s.url


def _shown_url(s: HttpSettings, url: str) -> str:
    return url.replace(s.url, s.shown_url, 1) if s.url_secret else url


def snow_search(s: HttpSettings, key: str) -> tuple[str, dict]:
    """The ServiceNow lookup of a dedup key: (URL, query parameters)."""
    return f"{s.url}/api/now/table/{s.table}", {
        "sysparm_query": f"correlation_id={bodies.correlation_id(key)}^ORDERBYsys_created_on",
        "sysparm_fields": SNOW_FIELDS, "sysparm_limit": str(SEARCH_SIZE), "sysparm_exclude_reference_link": "true"}


def jql_string(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def jira_jql(s: HttpSettings, key: str) -> str:
    o = s.options
    cf = _JIRA_CF.match(o.dedup_field or "")
    if cf:
        return f"project = {jql_string(o.project)} AND cf[{cf.group(1)}] ~ {jql_string(key)} ORDER BY created ASC"
    return f"project = {jql_string(o.project)} AND labels = {jql_string(bodies.jira_label(key))} ORDER BY created ASC"


def jira_search(s: HttpSettings, key: str, api: str) -> tuple[str, dict]:
    """(URL, JSON body) of the Jira search for a key: ``api`` "jql" (Cloud's
    ``/rest/api/3/search/jql``) or "legacy" (``/rest/api/2/search``, Server/Data Center)."""
    fields = ["created", "labels"] + ([s.options.dedup_field] if s.options.dedup_field else [])
    path = "/rest/api/3/search/jql" if api == "jql" else "/rest/api/2/search"
    return f"{s.url}{path}", {"jql": jira_jql(s, key), "maxResults": SEARCH_SIZE, "fields": fields}


def shown_headers(s: HttpSettings) -> dict[str, str]:
    return {**base_headers(s), **Auth(s.auth).shown()}


def _head(s: HttpSettings) -> bytes:
    method, url = endpoint(s)
    return orjson.dumps({"method": method, "url": _shown_url(s, url), "headers": shown_headers(s)})[:-1] + b',"body":'


# =========================================================================== the renderer
def _body_fn(s: HttpSettings, passthrough: bool = False) -> Callable:
    """(event, routes) -> the body (a JSON value; qradar_http: a str line, or with
    ``passthrough_cef_leef`` the CEF/LEEF message as it came in)."""
    p = s.preset
    if p == "qradar_http":
        r = Renderer(s.render or RenderOptions())
        if passthrough:
            r = SimpleNamespace(render=_lines.passthrough(r.render))
        return bodies.line_renderer(r)
    tpl = s.template
    if p in TICKETS:
        fn = getattr(bodies, p)
        o = s.options

        def ticket(ev, routes):
            if tpl is None:
                return fn(ev, o, routes)
            body = tpl.value(ev, routes)
            key = (ev.fields or {}).get("dedup_key")
            if key:
                bodies.force_dedup(p, body, str(key), o)
            return body
        return ticket
    if tpl is not None:
        return tpl.value
    fn = {"slack": bodies.slack, "teams": bodies.teams, "splunk_hec": bodies.hec, "generic": bodies.generic}[p]
    o = s.options
    return lambda ev, routes: fn(ev, o, routes)


def renderer(sk) -> Callable:
    """``render(event, routes) -> bytes``: the queued row, ``{"method", "url", "headers",
    ["search",] "body"}`` (module docstring)."""
    s: HttpSettings = sk.options["http"]
    body = _body_fn(s, bool((getattr(sk, "options", None) or {}).get("passthrough_cef_leef")))
    head = _head(s)
    dumps = orjson.dumps
    if s.preset == "servicenow":
        def render_snow(ev, routes):
            b = body(ev, routes)
            key = (ev.fields or {}).get("dedup_key")
            out = orjson.loads(head + b"null}")
            del out["body"]
            if key:
                url, params = snow_search(s, str(key))
                out["search"] = f"GET {_shown_url(s, url)}?{urlencode(params)}"
            out["body"] = b
            return dumps(out)
        return render_snow
    if s.preset == "jira":
        def render_jira(ev, routes):
            b = body(ev, routes)
            key = (ev.fields or {}).get("dedup_key")
            out = orjson.loads(head + b"null}")
            del out["body"]
            if key:
                api = "legacy" if s.search_api == "legacy" else "jql"
                url, q = jira_search(s, str(key), api)
                out["search"] = {"method": "POST", "url": _shown_url(s, url), "body": q}
            out["body"] = b
            return dumps(out)
        return render_jira

    def render(ev, routes):
        return head + dumps(body(ev, routes)) + b"}"
    return render


# =========================================================================== sinks
class _Base(HttpSink):
    """The ``http`` kind's sinks share the settings, the auth and the request helper."""

    requests_metric = "relay_http_requests_total"

    def __init__(self, cfg, queue, *, transport: httpx.AsyncBaseTransport | None = None, **kw) -> None:
        s: HttpSettings | None = cfg.options.get("http")
        if s is None:
            raise ValueError(f"sink {cfg.name}: no http settings (the config reader did not run)")
        self.settings = s
        self.auth = Auth(s.auth)
        for v in s.secrets:
            self.auth.redact.add(v)
        self.service = s.service
        super().__init__(cfg, queue, transport=transport, http=s.http, redact=self.auth.redact, **kw)
        self.batch_size = max(1, s.batch_size)
        self.method, self.endpoint = endpoint(s)
        self.headers = base_headers(s)
        self.head = _head(s)
        log.info("sink %s: %s at %s (preset %s, auth %s, batch %d)", self.name, s.service, _shown_url(s, self.endpoint),
                 s.preset, s.auth.describe(), self.batch_size)

    async def call(self, method: str, url: str, op: str, *, content: bytes | None = None,
                   params: dict | None = None, headers: dict | None = None) -> httpx.Response:
        """A request with the auth headers; an OAuth2 token refused (401) is fetched again once."""
        for attempt in (0, 1):
            h = {**self.headers, **(await self.auth.headers(self)), **(headers or {})}
            resp = await self.request(method, url, op, content=content, params=params, headers=h)
            if resp.status_code == 401 and self.auth.cfg.mode == "oauth2" and attempt == 0:
                self.auth.invalidate()
                continue
            return resp
        return resp  # pragma: no cover

    def classify(self, resp: httpx.Response, what: str) -> SinkError | None:
        err = classify(resp, what, service=self.service, auth_hint=self._auth_hint(), redact=self.redact)
        if err is not None and resp.status_code == 429:
            # throttling is not the row's fault: pause the sink, count no attempt (never a dead letter)
            err = UnavailableError(str(err), retry_after=err.retry_after if err.retry_after is not None
                                   else self._throttle_pause(), reason="throttled")
        return err

    def _throttle_pause(self) -> float:
        self._backoff = min(self._backoff + 1, 7)
        return min(60.0, 2.0 ** (self._backoff - 1))

    def _auth_hint(self) -> str:
        a = self.settings.auth
        if a.mode == "none":
            return "the endpoint wants credentials (set auth)" if not self.settings.url_secret else \
                "the webhook URL was refused (revoked or mistyped?)"
        return f"check the credentials ({a.describe()})"

    def row(self, item) -> dict:
        try:
            d = orjson.loads(item.payload)
            if not isinstance(d, dict) or "body" not in d:
                raise ValueError("no body")
        except ValueError as e:
            raise PermanentError(f"queued payload is not an http request: {e}", reason="bad_payload") from None
        return d

    def body_bytes(self, item) -> bytes:
        """The row's body as it goes on the wire (JSON; qradar_http: the line's UTF-8)."""
        p = item.payload
        head = self.head
        if isinstance(p, (bytes, bytearray, memoryview)) and p[:len(head)] == head and p[-1:] == b"}":
            b = bytes(p[len(head):-1])   # fast path: the row was rendered with this config's head
        else:
            b = orjson.dumps(self.row(item)["body"])
        if self.settings.preset == "qradar_http":
            try:
                line = orjson.loads(b)
            except orjson.JSONDecodeError:
                raise PermanentError("queued body is not a line", reason="bad_payload") from None
            return line.encode() if isinstance(line, str) else orjson.dumps(line)
        return b

    def count(self, action: str, n: int = 1) -> None:
        self.registry.counter("relay_http_tickets_total", sink=self.name, action=action).value += n


# --------------------------------------------------------------------------- one request per row
class EachSink(_Base):
    """generic with ``batch = "none"``: one request per row, ``concurrency`` in flight."""

    async def send(self, items: Sequence):
        return await self.run_groups([[it] for it in items], self._one)

    async def _one(self, item) -> None:
        resp = await self.call(self.method, self.endpoint, "send", content=self.body_bytes(item))
        err = self.classify(resp, f"send ({self.method})")
        if err is not None:
            raise err


class _Bucket:
    """A token bucket: ``rate`` per second, ``burst`` at once (rate 0: no limit)."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, max(1, burst)
        self.tokens = float(self.burst)
        self.at = time.monotonic()

    async def take(self) -> None:
        if self.rate <= 0:
            return
        while True:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            await asyncio.sleep((1 - self.tokens) / self.rate)

    def drain(self) -> None:
        """After a 429: no burst right after the pause."""
        self.tokens = 0.0
        self.at = time.monotonic()


class ChatSink(_Base):
    """slack / teams: one message per row, in order, at most ``rate`` per second (``burst``)."""

    def __init__(self, cfg, queue, **kw) -> None:
        super().__init__(cfg, queue, **kw)
        self.bucket = _Bucket(self.settings.rate, self.settings.burst)

    async def send(self, items: Sequence):
        return await self.run_groups([list(items)], self._one, 1)

    async def _one(self, item) -> None:
        body = self.body_bytes(item)
        await self.bucket.take()
        resp = await self.call("POST", self.endpoint, "message", content=body)
        err = self._chat_error(resp)
        if err is not None:
            if isinstance(err, UnavailableError):
                self.bucket.drain()
            raise err

    def _chat_error(self, resp: httpx.Response) -> SinkError | None:
        st = resp.status_code
        text = resp.text.strip() if resp.content else ""
        if self.settings.preset == "teams" and 200 <= st < 300 and "HTTP error 429" in text:
            # an Office 365 connector says "throttled" in a 200 answer
            return UnavailableError("Teams throttled the message (HTTP 200 with 'HTTP error 429')",
                                    retry_after=retry_after(resp) or self._throttle_pause(), reason="throttled")
        if self.settings.preset == "teams" and 200 <= st < 300 and "HTTP error 413" in text:
            return PermanentError("Teams refused the message as too large (HTTP 200 with 'HTTP error 413')",
                                  reason="rejected")
        if self.settings.preset == "slack" and st in (404, 410) and text in ("no_service", "no_service_id",
                                                                            "channel_is_archived"):
            return AuthError(f"Slack answered HTTP {st} {text!r}: the webhook was revoked or its channel archived; "
                             f"delivery stopped, messages stay queued (set a new url_env)", reason="auth")
        return self.classify(resp, "message (POST)")


# --------------------------------------------------------------------------- batches
class BatchSink(_Base):
    """qradar_http, splunk_hec, generic with ``batch``: the bodies of a batch in one request
    (at most ``max_request_bytes``); a refused request is split to find the refused rows."""

    async def send(self, items: Sequence):
        failed: list = []
        rows: list = []
        for it in items:
            try:
                rows.append((it, self.body_bytes(it)))
            except PermanentError as e:
                failed.append((it, e))
        # requests of at most max_request_bytes (a larger row goes alone)
        cap = self.settings.max_request_bytes
        chunks: list[list] = [[]]
        size = 0
        for it, b in rows:
            if chunks[-1] and size + len(b) + 1 > cap:
                chunks.append([])
                size = 0
            chunks[-1].append((it, b))
            size += len(b) + 1
        for i, chunk in enumerate(chunks):
            if not chunk:
                continue
            out = await self._post(chunk)
            failed += out
            stop = _stopper(out)
            if stop is not None:   # the endpoint is unwell: the later requests wait for the retry
                failed += [(it, _deferred(stop)) for c in chunks[i + 1:] for it, _ in c]
                break
        auth = next((e for _, e in failed if isinstance(e, AuthError)), None)
        if auth is not None:
            raise auth
        return failed

    def _join(self, bodies_: list[bytes]) -> bytes:
        if self.settings.preset == "qradar_http":
            return b"\n".join(bodies_) + b"\n"
        if self.settings.preset == "generic" and self.settings.batch == "array":
            return b"[" + b",".join(bodies_) + b"]"
        return b"\n".join(bodies_) + (b"\n" if self.settings.batch == "ndjson" else b"")

    async def _post(self, chunk: list) -> list:
        """Send one request; -> [(item, error)] for the rows that failed."""
        try:
            resp = await self.call(self.method, self.endpoint, "batch", content=self._join([b for _, b in chunk]))
        except SinkError as e:
            return [(it, e) for it, _ in chunk]
        err = self._batch_error(resp)
        if err is None:
            return []
        if isinstance(err, PermanentError) and len(chunk) > 1 and resp.status_code in (400, 413):
            bad = self._invalid_event(resp, len(chunk))
            if bad is not None:
                rest = chunk[:bad] + chunk[bad + 1:]
                return [(chunk[bad][0], err)] + (await self._post(rest) if rest else [])
            half = len(chunk) // 2
            log.info("sink %s: %s refused a batch of %d (HTTP %d); splitting it to find the refused rows",
                     self.name, self.service, len(chunk), resp.status_code)
            left = await self._post(chunk[:half])
            stop = _stopper(left)
            if stop is not None:
                return left + [(it, _deferred(stop)) for it, _ in chunk[half:]]
            return left + await self._post(chunk[half:])
        return [(it, err) for it, _ in chunk]

    def _batch_error(self, resp: httpx.Response) -> SinkError | None:
        if self.settings.preset == "splunk_hec" and resp.status_code == 400:
            code = _hec_code(resp)
            if code in (21, 22):   # HEC: invalid / disabled token answered as 400
                return AuthError(f"Splunk HEC refused the token (code {code}): {excerpt(resp, self.redact)}",
                                 reason="auth")
        return self.classify(resp, f"batch ({self.method})")

    def _invalid_event(self, resp: httpx.Response, n: int) -> int | None:
        if self.settings.preset != "splunk_hec":
            return None
        try:
            k = int(orjson.loads(resp.content).get("invalid-event-number"))
        except (ValueError, TypeError, AttributeError):
            return None
        return k if 0 <= k < n else None


def _stopper(failed: list) -> SinkError | None:
    """The first failure that is not the rows' fault (retryable, auth), if any."""
    return next((e for _, e in failed if not isinstance(e, PermanentError)), None)


def _deferred(cause: SinkError) -> SinkError:
    """For rows not tried because an earlier request failed: no attempt counted."""
    if isinstance(cause, (AuthError, UnavailableError)):
        return cause
    return UnavailableError(f"not tried: {cause}", retry_after=getattr(cause, "retry_after", None), reason="deferred")


def _hec_code(resp: httpx.Response) -> int | None:
    try:
        return int(orjson.loads(resp.content).get("code"))
    except (ValueError, TypeError, AttributeError):
        return None


# --------------------------------------------------------------------------- tickets
class TicketSink(_Base):
    """servicenow / jira: one ticket per dedup key (module docstring)."""

    def __init__(self, cfg, queue, **kw) -> None:
        super().__init__(cfg, queue, **kw)
        s = self.settings
        self.store = DedupStore(store_path(queue, self.name, "http"), s.dedup_store_size)
        self.registry.gauge("relay_http_dedup_entries", lambda: len(self.store), sink=self.name)
        self._uncertain: dict[str, float] = {}     # key -> monotonic time of a create with an unknown outcome
        self._jira_api = "legacy" if s.search_api == "legacy" else "jql"

    async def run(self, stop: asyncio.Event) -> None:
        if self.store.closed:
            await asyncio.to_thread(self.store.reopen)
        await super().run(stop)

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            await asyncio.to_thread(self.store.close)

    @staticmethod
    def _key(item) -> str | None:
        k = item.meta.get("dedup_key")
        return str(k) if k else None

    async def send(self, items: Sequence):
        return await self.run_groups(self.groups(items, self._key), self._handle)

    def _json(self, resp: httpx.Response, what: str):
        try:
            return orjson.loads(resp.content) if resp.content else None
        except orjson.JSONDecodeError:
            # e.g. a hibernating ServiceNow developer instance answers 200 with an HTML page
            raise RetryableError(f"{self.service} answered {what} with HTTP {resp.status_code} but not JSON: "
                                 f"{excerpt(resp, self.redact, 120)}", reason="bad_answer") from None

    def _error(self, resp: httpx.Response, what: str) -> SinkError | None:
        if self.settings.preset == "servicenow" and resp.status_code == 403 and "Data Policy Exception" in resp.text:
            # a data policy refused this ticket's fields: the row, not the credentials
            return PermanentError(f"ServiceNow refused {what}: HTTP 403: {excerpt(resp, self.redact)}",
                                  reason="rejected")
        return self.classify(resp, what)

    async def _handle(self, item) -> None:
        s = self.settings
        body = self.row(item)["body"]
        if not isinstance(body, dict):
            raise PermanentError("queued ticket body is not a JSON object", reason="bad_payload")
        content = orjson.dumps(body)
        key = self._key(item)
        digest = hashlib.blake2b(content, digest_size=16).hexdigest()
        rec = await asyncio.to_thread(self.store.get, key) if key else None
        claim = None
        if rec is not None:
            self.count("dedup_hit")
        elif key and (claim := await _claims.guard(self, key)) is not None and not claim.owner:
            rec = DedupRecord(key, claim.incident, None, False, None)      # [relay.claims]: another relay's
            self.count("claimed_elsewhere")
            await asyncio.to_thread(self.store.put, rec)
        elif key:
            found = await self.search(key)
            if found is not None:
                rec = DedupRecord(key, found, None, False, None)
                self.count("found")
                log.info("sink %s: %s already is %s record %s (found by search)", self.name, key, self.service, found)
                await asyncio.to_thread(self.store.put, rec)
                await _claims.won(self, claim, found)
            else:
                t = self._uncertain.get(key)
                wait = (t + s.search_settle - time.monotonic()) if t is not None and s.preset == "jira" else 0
                if wait > 0:
                    raise RetryableError(f"{key}: a create's outcome is unknown and Jira's search does not show "
                                         f"the issue yet (it is eventually consistent); trying again in "
                                         f"{wait:.1f} s", retry_after=wait, reason="settling")
        if rec is None or rec.incident_id is None:
            if not key:
                log.warning("sink %s: row %s has no dedup key: creating without duplicate protection",
                            self.name, item.id)
            try:
                rid = await self.create(content)
            except RetryableError as e:
                if key and not isinstance(e, UnavailableError):
                    self._uncertain[key] = time.monotonic()
                await _claims.failed(self, claim, e)
                raise
            except Exception as e:
                await _claims.failed(self, claim, e)
                raise
            self._uncertain.pop(key, None) if key else None
            self.count("created")
            if key:
                await asyncio.to_thread(self.store.put, DedupRecord(key, rid, None, False, digest))
                await _claims.won(self, claim, rid)
        elif s.mode == "sync":
            if rec.digest == digest:
                self.count("unchanged")
                return
            await self.update(rec, body)
            rec.digest = digest
            await asyncio.to_thread(self.store.put, rec)
            self.count("updated")
        else:
            self.count("skipped")

    # ------------------------------------------------------------------ per API
    async def search(self, key: str) -> str | None:
        if self.settings.preset == "servicenow":
            return await self._snow_search(key)
        return await self._jira_search(key)

    async def create(self, content: bytes) -> str:
        s = self.settings
        if s.preset == "servicenow":
            resp = await self.call("POST", self.endpoint, "create", content=content,
                                   params={"sysparm_fields": SNOW_FIELDS, "sysparm_exclude_reference_link": "true"})
            err = self._error(resp, "create (POST)")
            if err is not None:
                raise err
            res = (self._json(resp, "create") or {}).get("result") or {}
            rid = res.get("sys_id")
            label = res.get("number") or rid
        else:
            resp = await self.call("POST", self.endpoint, "create", content=content)
            err = self._error(resp, "create (POST)")
            if err is not None:
                raise err
            res = self._json(resp, "create") or {}
            rid = res.get("key")
            label = rid
        if not rid:
            raise RetryableError(f"{self.service} accepted the create but named no record: "
                                 f"{excerpt(resp, self.redact, 160)}", reason="bad_answer")
        log.info("sink %s: created %s record %s", self.name, self.service, label)
        return str(rid)

    async def update(self, rec: DedupRecord, body: dict) -> None:
        s = self.settings
        if s.preset == "servicenow":
            upd = {k: v for k, v in body.items() if k not in ("correlation_id", "correlation_display")}
            resp = await self.call("PATCH", f"{self.endpoint}/{rec.incident_id}", "update", content=orjson.dumps(upd),
                                   params={"sysparm_fields": "sys_id", "sysparm_exclude_reference_link": "true"})
        else:
            fields = {k: v for k, v in (body.get("fields") or {}).items() if k not in ("project", "issuetype")}
            resp = await self.call("PUT", f"{self.endpoint}/{rec.incident_id}", "update",
                                   content=orjson.dumps({"fields": fields}))
        if resp.status_code == 404:
            await asyncio.to_thread(self.store.delete, rec.key)
            raise PermanentError(f"{self.service} record {rec.incident_id} ({rec.key}) no longer exists (or is "
                                 f"hidden from this account); the update is dead-lettered", reason="rejected")
        err = self._error(resp, "update")
        if err is not None:
            raise err

    async def _snow_search(self, key: str) -> str | None:
        url, params = snow_search(self.settings, key)
        resp = await self.call("GET", url, "search", params=params)
        if resp.status_code == 404 and "No Record found" in resp.text:
            return None                       # the v1 API answers 404 to an empty result
        err = self._error(resp, "search (GET)")
        if err is not None:
            raise err
        res = self._json(resp, "search")
        rows = res.get("result") if isinstance(res, dict) else None
        if not isinstance(rows, list):
            raise RetryableError(f"ServiceNow search answered an unexpected shape: {excerpt(resp, self.redact, 160)}",
                                 reason="bad_answer")
        want = bodies.correlation_id(key)
        # exact match: an invalid query part is dropped by ServiceNow and would match every row
        hits = [r for r in rows if isinstance(r, dict) and r.get("correlation_id") == want and r.get("sys_id")]
        if len(hits) > 1:
            log.warning("sink %s: %d ServiceNow records carry correlation_id %r; using the oldest", self.name,
                        len(hits), want)
        return str(min(hits, key=lambda r: str(r.get("sys_created_on") or ""))["sys_id"]) if hits else None

    async def _jira_search(self, key: str) -> str | None:
        s = self.settings
        api = self._jira_api
        for _ in range(2):
            url, q = jira_search(s, key, api)
            resp = await self.call("POST", url, "search", content=orjson.dumps(q))
            if s.search_api == "auto" and ((api == "jql" and resp.status_code in (404, 405)) or
                                           (api == "legacy" and resp.status_code == 410)):
                # (decided on the API this request used: concurrent searches may have switched already)
                api = "legacy" if api == "jql" else "jql"
                if self._jira_api != api:
                    self._jira_api = api
                    log.info("sink %s: Jira search API: switching to %s", self.name,
                             "/rest/api/2/search (Server/Data Center)" if api == "legacy"
                             else "/rest/api/3/search/jql (Cloud)")
                continue
            break
        err = self._error(resp, "search (POST)")
        if err is not None:
            raise err
        res = self._json(resp, "search")
        issues = res.get("issues") if isinstance(res, dict) else None
        if not isinstance(issues, list):
            raise RetryableError(f"Jira search answered an unexpected shape: {excerpt(resp, self.redact, 160)}",
                                 reason="bad_answer")
        df = s.options.dedup_field
        label = bodies.jira_label(key)

        def mine(i) -> bool:
            f = i.get("fields") if isinstance(i, dict) else None
            if not isinstance(f, dict) or not i.get("key"):
                return False
            return f.get(df) == key if df else label in (f.get("labels") or ())
        hits = [i for i in issues if mine(i)]
        if len(hits) > 1:
            log.warning("sink %s: %d Jira issues carry %s; using the oldest", self.name, len(hits), key)
        return str(min(hits, key=lambda i: (str(i["fields"].get("created") or ""), str(i.get("id"))))["key"]) \
            if hits else None


# =========================================================================== the kind
def make(cfg, queue, **kw):
    s: HttpSettings = cfg.options["http"]
    if s.preset in TICKETS:
        return TicketSink(cfg, queue, **kw)
    if s.preset in ("slack", "teams"):
        return ChatSink(cfg, queue, **kw)
    if s.batched:
        return BatchSink(cfg, queue, **kw)
    return EachSink(cfg, queue, **kw)


KEYS = ("preset", "url", "url_env", "url_file", "headers", "template", "template_file", "mode", "dedup_store_size",
        "table", "correlation_display", "category", "subcategory", "assignment_group", "caller_id", "fields",
        "project", "issue_type", "api_version", "labels", "dedup_field", "priorities", "search_api", "search_settle",
        "rate", "burst", "title_prefix", "index", "source", "sourcetype", "event_host", "method", "batch",
        "max_request_bytes", "tls_cert", "tls_key") + HTTP_KEYS + AUTH_KEYS + _lines.KEYS

KIND = kinds.register_sink(kinds.SinkKind(
    type="http", read_config=read_config, factory=make, renderer=renderer, keys=KEYS,
    # not a default target of the LLM summary: its batched presets carry every event (name ticket
    # and chat sinks in [summary] sinks)
    meta=("dedup_key",), structured=True, incidents=False, batch_size=50,
    doc="HTTP(S) delivery by preset: ServiceNow and Jira tickets (one per dedup key), Slack and Teams "
        "messages, QRadar's HTTP Receiver, Splunk HEC, or any endpoint with a templated body"))

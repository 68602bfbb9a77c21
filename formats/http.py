"""The bodies of the ``http`` sink's presets, one function per preset.  Pure: event in, a JSON
value (or a line of bytes) out; no I/O.

* :func:`servicenow` - a ServiceNow incident (Table API): ``short_description`` (160 characters),
  ``description``, ``urgency``/``impact`` from the severity band (critical 1/1 -> priority 1,
  high 1/2 -> 2, medium 2/2 -> 3, low 2/3 -> 4, informational 3/3 -> 5), optional ``category``,
  ``subcategory``, ``assignment_group``, ``caller_id``, extra fields from canonical paths, and
  ``correlation_id`` = :func:`correlation_id` of the dedup key (what the sink searches by).
* :func:`jira` - ``{"fields": ...}`` for ``POST /rest/api/2|3/issue``: project, issue type,
  ``summary`` (255), ``description`` (wiki text for API v2, an Atlassian Document for v3),
  ``labels`` (the configured ones + :func:`jira_label` of the dedup key), ``priority`` by band,
  the dedup key in a custom field when configured, extra fields from canonical paths.
* :func:`slack` - an incoming-webhook message: ``text`` (the notification fallback) and
  ``blocks`` (header, fields, description, context), every event value escaped for mrkdwn
  (``&``, ``<``, ``>``: an event cannot post a link or an ``<!channel>`` mention), within
  Slack's limits (header 150, field 2000, section 3000 characters, 10 fields).
* :func:`teams` - a message with one Adaptive Card (1.4): title, facts, description, context;
  kept under Teams' 28 KB message limit (the description is cut first).
* :func:`hec` - a Splunk HEC event envelope (``time``, ``host``, ``source``, ``sourcetype``,
  ``index``, ``event``, flat indexed ``fields``).
* :func:`generic` - ``{"event", "syslog", "routes", "enrich"}`` (the default body of the
  ``generic`` preset without a template).
* :func:`line` - one LEEF/CEF/JSON line for QRadar's HTTP Receiver: the syslog line of
  formats/render.py with any CR/LF turned into a space (one event per line).

A template (formats/template.py) can replace the body of every preset but ``qradar_http``; the
ticket presets still set their dedup field on the rendered body (:func:`force_dedup`), so a
template can never break the one-ticket-per-key promise.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson

from parsers.event import Event

from .render import Renderer, sev_of
from .template import adf, context
from .xsoar import occurred_iso

__all__ = ["ServiceNowOptions", "JiraOptions", "ChatOptions", "HecOptions", "servicenow", "jira", "slack", "teams",
           "hec", "generic", "line_renderer", "correlation_id", "jira_label", "force_dedup", "facts", "TEAMS_MAX",
           "path_value"]

BANDS = ("informational", "low", "medium", "high", "critical")
#: ServiceNow (urgency, impact) per band: the base priority matrix gives 1..5
SNOW_UI = {"critical": ("1", "1"), "high": ("1", "2"), "medium": ("2", "2"), "low": ("2", "3"),
           "informational": ("3", "3")}
JIRA_PRIORITY = {"critical": "Highest", "high": "High", "medium": "Medium", "low": "Low", "informational": "Lowest"}
TEAMS_MAX = 24_000          # bytes: Teams refuses messages over 28 KB (some clients ~21 KB)
_SAFE_KEY = re.compile(r"[A-Za-z0-9:._@/-]{1,100}\Z")


def path_value(fields: dict, path: str):
    """A canonical field by dotted path (``extra.actor``), or None."""
    cur: Any = fields
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def _s(v) -> str:
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return ", ".join(_s(x) for x in v)
    if isinstance(v, dict):
        return orjson.dumps(v, default=str).decode()
    return str(v)


def _cut(s: str, n: int) -> str:
    return s if len(s) <= n else s[: max(0, n - 1)] + "…"


def correlation_id(key: str) -> str:
    """The ServiceNow ``correlation_id`` of a dedup key: the key itself when it is short and
    plain (letters, digits, ``:._@/-``, at most 100), else ``relay-`` and a hash of it (the
    encoded query has no escaping for ``^`` or ``=``)."""
    if _SAFE_KEY.match(key):
        return key
    return "relay-" + hashlib.blake2b(key.encode(), digest_size=10).hexdigest()


def jira_label(key: str) -> str:
    """The Jira label of a dedup key: ``relay-`` and 16 hex digits of its hash (labels hold no
    spaces; JQL ``labels = "..."`` matches exactly)."""
    return "relay-" + hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


def _band(ev: Event, f: dict) -> str:
    return sev_of(f, ev)


def facts(ev: Event, f: dict, routes=()) -> list[tuple[str, str]]:
    """The (label, value) pairs a ticket or a chat message shows, empty ones left out."""
    out = []
    rs = f.get("risk_score")
    band = _band(ev, f)
    out.append(("Severity", band.capitalize() + (f" (risk {rs})" if rs is not None else "")))
    for key, label in (("user", "User"), ("host", "Host"), ("src_ip", "Source IP"), ("dst_ip", "Destination IP"),
                       ("tactic", "Tactic"), ("technique_id", "Technique"), ("status", "Status")):
        v = f.get(key)
        if v not in (None, ""):
            out.append((label, _s(v)))
    vendor = " ".join(x for x in (f.get("vendor"), f.get("product")) if x)
    if vendor:
        out.append(("Source", vendor + (f" {f['id']}" if f.get("id") else "")))
    triage = f.get("triage")
    if isinstance(triage, dict):
        if triage.get("owner"):
            out.append(("Owner", _s(triage["owner"])))
        if triage.get("score") is not None:
            out.append(("Triage score", _s(triage["score"])))
    if routes:
        out.append(("Routes", ", ".join(routes)))
    return out


def _title(ev: Event, f: dict) -> str:
    return _s(f.get("name") or ev.msgid or ev.app_name or "relay event")


def _description(ev: Event, f: dict, routes) -> str:
    lines = [_title(ev, f)]
    d = f.get("description")
    if d:
        lines += ["", _s(d)]
    lines.append("")
    lines += [f"{k}: {v}" for k, v in facts(ev, f, routes)]
    lines.append(f"Occurred: {occurred_iso(ev, f)}")
    triage = f.get("triage")
    if isinstance(triage, dict):
        for k in ("summary", "explanation"):
            if triage.get(k):
                lines += ["", f"Triage {k}: {_s(triage[k])}"]
    if f.get("url"):
        lines.append(f"Link: {f['url']}")
    if f.get("dedup_key"):
        lines.append(f"Relay dedup key: {f['dedup_key']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- ServiceNow
@dataclass(frozen=True)
class ServiceNowOptions:
    correlation_display: str = "relay"
    category: str | None = None
    subcategory: str | None = None
    assignment_group: str | None = None
    caller_id: str | None = None
    fields: tuple = ()                  # ((servicenow field, canonical path), ...)


def servicenow(ev: Event, o: ServiceNowOptions, routes=()) -> dict:
    f = ev.fields or {}
    urgency, impact = SNOW_UI[_band(ev, f)]
    body: dict = {"short_description": _cut(_title(ev, f), 160), "description": _description(ev, f, routes),
                  "urgency": urgency, "impact": impact}
    for k in ("category", "subcategory", "assignment_group", "caller_id"):
        v = getattr(o, k)
        if v:
            body[k] = v
    for name, path in o.fields:
        v = path_value(f, path)
        if v not in (None, ""):
            body[name] = _s(v)
    key = f.get("dedup_key")
    if key:
        body["correlation_id"] = correlation_id(str(key))
        body["correlation_display"] = o.correlation_display
    return body


# ----------------------------------------------------------------------------- Jira
@dataclass(frozen=True)
class JiraOptions:
    project: str = "SEC"
    issue_type: str = "Task"
    api_version: str = "2"
    labels: tuple = ("soc-relay",)
    dedup_field: str | None = None      # customfield_NNNNN holding the dedup key, else a label
    priorities: dict = field(default_factory=lambda: dict(JIRA_PRIORITY))   # band -> priority name ("": none)
    fields: tuple = ()                  # ((jira field, canonical path), ...)


def jira(ev: Event, o: JiraOptions, routes=()) -> dict:
    f = ev.fields or {}
    desc = _description(ev, f, routes)
    fields: dict = {"project": {"key": o.project}, "issuetype": {"name": o.issue_type},
                    "summary": _cut(_title(ev, f).replace("\n", " "), 255),
                    "description": adf(desc) if o.api_version == "3" else desc,
                    "labels": list(o.labels)}
    prio = o.priorities.get(_band(ev, f))
    if prio:
        fields["priority"] = {"name": prio}
    for name, path in o.fields:
        v = path_value(f, path)
        if v not in (None, ""):
            fields[name] = _s(v)
    body = {"fields": fields}
    key = f.get("dedup_key")
    if key:
        force_dedup("jira", body, str(key), o)
    return body


def force_dedup(preset: str, body: dict, key: str, o) -> None:
    """Set the dedup field of a ticket body (a template's too): ServiceNow ``correlation_id``,
    Jira the label (or ``o.dedup_field``)."""
    if preset == "servicenow":
        body["correlation_id"] = correlation_id(key)
        body.setdefault("correlation_display", getattr(o, "correlation_display", "relay"))
        return
    fields = body.get("fields")
    if not isinstance(fields, dict):
        fields = body["fields"] = {}
    if o.dedup_field:
        fields[o.dedup_field] = key
    labels = fields.get("labels")
    if not isinstance(labels, list):
        labels = fields["labels"] = []
    lab = jira_label(key)
    if lab not in labels:
        labels.append(lab)


# ----------------------------------------------------------------------------- chat
@dataclass(frozen=True)
class ChatOptions:
    title_prefix: str = ""               # e.g. "[SOC] "
    link_text: str = "Open in console"


_MRKDWN = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def _md(v) -> str:
    """Slack mrkdwn-safe text: no link, mention or formatting tag can come from an event."""
    return _s(v).translate(_MRKDWN)


def slack(ev: Event, o: ChatOptions, routes=()) -> dict:
    f = ev.fields or {}
    band = _band(ev, f)
    title = o.title_prefix + _title(ev, f)
    fl = [{"type": "mrkdwn", "text": _cut(f"*{_md(k)}:*\n{_md(v)}", 2000)} for k, v in facts(ev, f, routes)][:10]
    blocks: list = [{"type": "header", "text": {"type": "plain_text", "text": _cut(title, 150), "emoji": False}},
                    {"type": "section", "fields": fl}]
    d = f.get("description")
    if d:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _cut(_md(d), 3000)}})
    ctx = [f"occurred {occurred_iso(ev, f)}"]
    if f.get("dedup_key"):
        ctx.append(f"key {_md(f['dedup_key'])}")
    if f.get("url") and str(f["url"]).startswith(("https://", "http://")):
        ctx.append(f"<{_md(f['url']).replace('|', '%7C')}|{_md(o.link_text)}>")
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _cut(" · ".join(ctx), 3000)}]})
    return {"text": _cut(f"{band.upper()}: {_md(title)}", 4000), "blocks": blocks}


_COLOR = {"critical": "attention", "high": "attention", "medium": "warning", "low": "accent",
          "informational": "default"}


def teams(ev: Event, o: ChatOptions, routes=()) -> dict:
    f = ev.fields or {}
    band = _band(ev, f)
    title = o.title_prefix + _title(ev, f)
    body: list = [
        {"type": "TextBlock", "text": _cut(title, 400), "weight": "Bolder", "size": "Medium", "wrap": True,
         "color": _COLOR[band]},
        {"type": "FactSet", "facts": [{"title": k, "value": _cut(v, 1000)} for k, v in facts(ev, f, routes)]},
    ]
    d = _s(f.get("description"))
    desc = {"type": "TextBlock", "text": d, "wrap": True}
    if d:
        body.append(desc)
    ctx = f"occurred {occurred_iso(ev, f)}" + (f" · key {f['dedup_key']}" if f.get("dedup_key") else "")
    body.append({"type": "TextBlock", "text": ctx, "isSubtle": True, "size": "Small", "wrap": True})
    card: dict = {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard",
                  "version": "1.4", "body": body}
    if f.get("url") and str(f["url"]).startswith(("https://", "http://")):
        card["actions"] = [{"type": "Action.OpenUrl", "title": o.link_text, "url": str(f["url"])}]
    msg = {"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive",
                                               "contentUrl": None, "content": card}]}
    size = len(orjson.dumps(msg))
    if size > TEAMS_MAX and d:
        desc["text"] = _cut(d, max(0, len(d) - (size - TEAMS_MAX) - 200))
    return msg


# ----------------------------------------------------------------------------- Splunk HEC
@dataclass(frozen=True)
class HecOptions:
    source: str = "relay"
    sourcetype: str = "relay:event"
    index: str | None = None
    host: str = "original"               # "original" (the event's host / syslog HOSTNAME) or a fixed name


def hec(ev: Event, o: HecOptions, routes=()) -> dict:
    f = ev.fields or {}
    t = f.get("occurred_unix")
    if t is None:
        t = ev.time_unix if ev.time_unix is not None else ev.received
    env: dict = {}
    if t is not None:
        env["time"] = round(float(t), 3)
    host = (f.get("host") or ev.hostname) if o.host == "original" else o.host
    if host:
        env["host"] = _s(host)
    env["source"] = o.source
    env["sourcetype"] = o.sourcetype
    if o.index:
        env["index"] = o.index
    env["event"] = f if f else {"message": ev.raw.decode("utf-8", "replace")}
    flds = {"relay_routes": list(routes or ())}
    for k in ("dedup_key", "severity", "vendor", "product"):
        if f.get(k) not in (None, ""):
            flds["relay_" + k] = _s(f[k])
    env["fields"] = flds
    return env


# ----------------------------------------------------------------------------- generic
def generic(ev: Event, o=None, routes=()) -> dict:
    c = context(ev, routes)
    return {"event": c["event"], "syslog": c["syslog"], "routes": c["routes"], "enrich": c["enrich"]}


# ----------------------------------------------------------------------------- QRadar
def line_renderer(renderer: Renderer) -> Callable[[Event, Any], str]:
    """One event -> one line of text for QRadar's HTTP Receiver (LF-split message pattern):
    the sink's LEEF/CEF/JSON line with any CR/LF turned into a space."""
    render = renderer.render

    def one(ev: Event, routes=()) -> str:
        b = render(ev, routes)
        if b"\n" in b or b"\r" in b:
            b = b.rstrip(b"\r\n").replace(b"\r", b" ").replace(b"\n", b" ")
        return b.decode("utf-8", "replace")
    return one

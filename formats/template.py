"""JSON request bodies from a template (the ``template`` option of the ``http`` and
``xsoar_webhook`` sinks).  Pure: event in, bytes out; no I/O.

Engine: Jinja2's ``ImmutableSandboxedEnvironment`` (no attribute starting with ``_``, no
mutation of the data, no access to Python internals, ``range`` capped), with one rule that
makes a template unable to break its JSON: **every ``{{ expression }}`` is written as one
complete JSON value**, escaped by the engine's ``finalize`` hook (orjson), never by string
concatenation.  A string comes out with its quotes, a number as a number, a dict as an
object, a missing value as ``null``::

    {"summary": {{ event.name }}, "risk": {{ event.risk_score }},
     "title": {{ "[relay] " ~ event.name ~ " on " ~ event.host }},
     "tags": {{ routes }}}

So quotes, braces, ``{{ }}``, newlines or ``", "x": 1`` inside a value stay inside that value.
Write the quotes *around* an expression and the body is invalid JSON: that is refused when the
config loads.  Text is joined inside the expression (``~``), not around it.

Compilation happens once, at config load (:func:`compile_template`), and the template is
rendered there on a sample SigmaIncident: a syntax error, an error raised while rendering
(a forbidden attribute, a failing filter) or a body that is not JSON is a
:class:`TemplateError` naming the line.  At run time each body is checked to parse as JSON
(and to be of the expected type); an event whose body does not is refused (the pipeline
dead-letters it with the reason).

The context (:func:`context`): ``event`` (the canonical fields, docs/schema.md), ``syslog``
(the header and structured data, as ``relay test-parse --json`` shows them), ``enrich``
(enrichment results), ``triage``, ``routes`` (matched route names), ``raw`` (the vendor's
JSON body, or null), ``dedup_key``, ``occurred`` (ISO 8601), ``severity`` (the band).
Missing keys are ``null`` (``event.extra.nothing.here`` too).  Filters besides Jinja's
(``default``, ``truncate``, ``upper``, ``join``, ``replace``, ...): ``tojson`` (the same as
the default), ``iso8601`` (epoch seconds -> ISO 8601 UTC), ``adf`` (text -> an Atlassian
Document for Jira's API v3).
"""
from __future__ import annotations

import time
import traceback
from typing import Any

import orjson
from jinja2 import ChainableUndefined, TemplateError as _JinjaError, TemplateSyntaxError, Undefined
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from parsers import detect
from parsers.event import Event
from parsers.normalise import normalise

from .xsoar import occurred_iso

__all__ = ["JsonTemplate", "TemplateError", "compile_template", "context", "sample_event", "MAX_BODY"]

MAX_BODY = 1 << 20          # a rendered body larger than this is refused
_NAME = "<template>"


class TemplateError(ValueError):
    """A template that cannot be used: ``line`` is the template's line (or the rendered body's
    line, see the message), None when unknown."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line


class _Json(str):
    """Text that already is one JSON value (the ``tojson`` filter): finalize keeps it."""


def _default(v):
    if isinstance(v, Undefined):
        return None
    if isinstance(v, (set, frozenset, tuple)):
        return list(v)
    return str(v)


def _finalize(v) -> str:
    if isinstance(v, _Json):
        return v
    if isinstance(v, Undefined):
        if getattr(v, "_undefined_exception", None) is SecurityError:
            v._fail_with_undefined_error()   # a forbidden attribute is an error, not a null
        return "null"
    return orjson.dumps(v, default=_default, option=orjson.OPT_NON_STR_KEYS).decode()


def _tojson(v) -> _Json:
    return _Json(_finalize(v))


def _iso8601(v) -> str | None:
    if v is None or isinstance(v, Undefined) or isinstance(v, bool):
        return None
    try:
        epoch = float(v)
    except (TypeError, ValueError):
        return str(v)
    secs, ms = divmod(round(epoch * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{ms:03d}Z"


def adf(text) -> dict:
    """Plain text -> an Atlassian Document (Jira API v3): one paragraph per line."""
    if text is None or isinstance(text, Undefined):
        text = ""
    paras = []
    for line in str(text).split("\n"):
        paras.append({"type": "paragraph", "content": [{"type": "text", "text": line}] if line else []})
    return {"type": "doc", "version": 1, "content": paras}


def _env() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(finalize=_finalize, undefined=ChainableUndefined, autoescape=False,
                                        keep_trailing_newline=False)
    env.filters["tojson"] = _tojson
    env.filters["iso8601"] = _iso8601
    env.filters["adf"] = adf
    return env


_ENV = _env()


def context(ev: Event, routes=()) -> dict:
    """What a template sees (module docstring)."""
    f = ev.fields or {}
    return {
        "event": f,
        "syslog": ev.syslog_dict(),
        "enrich": ev.enrich or {},
        "triage": f.get("triage") or {},
        "routes": list(routes or ()),
        "raw": ev.body if isinstance(ev.body, (dict, list)) else None,
        "dedup_key": f.get("dedup_key"),
        "occurred": occurred_iso(ev, f),
        "severity": f.get("severity"),
    }


_SAMPLE = (b'<137>1 2026-03-13T04:30:00.123Z rx-01 SigmaIncident 4242 created [incident@32473 id="INC-7601d999" '
           b'actor="jdoe" entity="Primary Site" status="OPEN" risk_score="82" alarm_count="12"] '
           b'{"incident_id":"INC-7601d999","risk_score":82,"group_key":"jdoe","actor_type":"user"}')


def sample_event() -> Event:
    """The SigmaIncident every template is rendered on at config load."""
    ev = detect.parse(_SAMPLE, received=1773376200.5, peer="192.0.2.10:514", source="sample")
    return normalise(ev)


_TYPES = {dict: "a JSON object", list: "a JSON array"}


class JsonTemplate:
    """A compiled template (:func:`compile_template`).  ``render(event, routes)`` -> the body
    as compact JSON bytes; ``value(event, routes)`` -> the parsed value.  Equality is by the
    source text and the expected type (a config reload with the same template is no change)."""

    __slots__ = ("source", "expect", "_tpl")

    def __init__(self, source: str, expect: type | None, tpl) -> None:
        self.source, self.expect, self._tpl = source, expect, tpl

    def __eq__(self, other) -> bool:
        return isinstance(other, JsonTemplate) and other.source == self.source and other.expect is self.expect

    def __hash__(self) -> int:
        return hash(self.source)

    def __repr__(self) -> str:
        first = self.source.strip().splitlines()[0] if self.source.strip() else ""
        return f"JsonTemplate({first[:40]!r}...)"

    def text(self, ctx: dict) -> str:
        return self._tpl.render(ctx)

    def value(self, ev: Event, routes=()) -> Any:
        """The body as a parsed JSON value; ValueError when the body is not JSON of the
        expected type (the message says where)."""
        try:
            out = self._tpl.render(context(ev, routes))
        except _JinjaError as e:
            raise ValueError(f"template failed: {type(e).__name__}: {e}") from None
        return self._check(out)

    def render(self, ev: Event, routes=()) -> bytes:
        return orjson.dumps(self.value(ev, routes))

    def _check(self, out: str) -> Any:
        if len(out) > MAX_BODY:
            raise ValueError(f"the rendered body is {len(out)} characters (at most {MAX_BODY})")
        try:
            v = orjson.loads(out)
        except orjson.JSONDecodeError as e:
            raise ValueError(_json_problem(out, e)) from None
        if self.expect is not None and not isinstance(v, self.expect):
            raise ValueError(f"the rendered body must be {_TYPES.get(self.expect, self.expect.__name__)}, "
                             f"not {type(v).__name__}")
        return v


def _json_problem(out: str, e) -> str:
    line = getattr(e, "lineno", None) or 1
    col = getattr(e, "colno", None) or 1
    lines = out.splitlines() or [""]
    text = lines[min(line, len(lines)) - 1].strip()
    hint = ""
    if '""' in text or '"{' in text or '}"' in text:
        hint = (" (an expression is written as a complete JSON value, quotes included: write "
                "\"key\": {{ value }}, and join text inside it: {{ \"prefix \" ~ value }})")
    return (f"the rendered body is not JSON: {getattr(e, 'msg', e)} at rendered line {line} column {col}: "
            f"{text[:160]!r}{hint}")


def _template_line(exc: BaseException) -> int | None:
    line = None
    for fr in traceback.extract_tb(exc.__traceback__):
        if fr.filename == _NAME:
            line = fr.lineno
    return line


def compile_template(source: str, *, expect: type | None = dict, sample: Event | None = None) -> JsonTemplate:
    """Compile ``source`` and render it on the sample event (see the module docstring).
    Raises :class:`TemplateError` naming the line."""
    if not isinstance(source, str) or not source.strip():
        raise TemplateError("the template is empty")
    try:
        tpl = _ENV.from_string(source)
    except TemplateSyntaxError as e:
        raise TemplateError(f"template syntax error: {e.message}", e.lineno) from None
    tpl.name = tpl.filename = _NAME
    t = JsonTemplate(source, expect, tpl)
    ev = sample if sample is not None else sample_event()
    try:
        out = t.text(context(ev, ["sample"]))
    except Exception as e:  # jinja's errors, and any a filter raised
        line = getattr(e, "lineno", None) or _template_line(e)
        raise TemplateError(f"rendering the sample event failed: {type(e).__name__}: {e}", line) from None
    try:
        t._check(out)
    except ValueError as e:
        line = None
        msg = str(e)
        if "rendered line" in msg and out.count("\n") == source.strip("\n").count("\n"):
            # one rendered line per template line: the rendered line is the template's line
            try:
                line = int(msg.split("rendered line ", 1)[1].split(" ", 1)[0])
            except (IndexError, ValueError):
                line = None
        raise TemplateError(f"{msg} (rendered from the sample event)", line) from None
    return t

"""`relay test-parse`: show every step for one raw message (a tool: the daemon never imports it).

:func:`analyse` returns the stable JSON record documented in the README::

    {"input": str, "ok": bool, "error": {"offset": int, "reason": str} | null,
     "syslog": {...} | null}

Later stages add keys to the same record (``event``, ``routes``, ``outputs``);
the human renderer prints whatever keys are present.
"""
from __future__ import annotations

import sys
from typing import Iterable, Iterator

from formats.render import FORMATS, Renderer, RenderOptions
from parsers import detect
from parsers.event import Event, text
from parsers.framing import Deframer
from parsers.normalise import normalise

from .. import kinds
from ..config import SourceConfig

__all__ = ["analyse", "analyse_body", "body_decoder", "iter_inputs", "render_human", "caret_line", "render_choices",
           "default_renderers", "ConfigView"]


def render_choices() -> tuple[str, ...]:
    """``--render`` names: the line formats, and every sink kind that previews its payload."""
    return FORMATS + tuple(name for name, k in kinds.sinks().items() if k.preview is not None)


def default_renderers(names) -> dict:
    """name -> callable(event) -> str | dict, with default options (no config)."""
    out = {}
    for n in names:
        if n in FORMATS:
            r = Renderer(RenderOptions(format=n))
            out[n] = lambda ev, r=r: r.render(ev).decode("utf-8", "replace")
        else:
            out[n] = kinds.sink(n).preview()
    return out


class ConfigView:
    """`test-parse --config` and the golden cases: the configured routes and sinks through the
    one stage (:class:`relay.pipeline.Pipeline`, dry run: no network, no queues, no audit)."""

    def __init__(self, config) -> None:
        from ..pipeline import Pipeline
        self.config = config
        self.pipeline = Pipeline(config, dry_run=True)
        self.structured = {name: kinds.sink(sc.type).structured for name, sc in config.sinks.items()}
        self._sources: dict = {}

    def source(self, name: str | None, lenient: bool) -> SourceConfig:
        """The source the message is parsed as (its name, and lenient or strict)."""
        key = (name, lenient)
        sc = self._sources.get(key)
        if sc is None:
            sc = self._sources[key] = SourceConfig(name=name, type="test-parse", lenient=lenient)
        return sc

    def apply(self, ev, rec: dict) -> None:
        """The stage (enrich, route, render) for a normalised event; its results into ``rec``."""
        import orjson

        from ..rules import explain
        routes, out = self.pipeline.stage(ev)
        if self.pipeline.enricher is not None:
            rec["event"] = ev.fields
            if ev.enrich is not None:
                rec["enrich"] = ev.enrich
        rec["routes"] = routes
        rec["route_checks"] = {r.name: explain(r.rule, ev) for r in self.config.routes.values()}
        outputs = {}
        for s, payload, _meta, err in out:
            if err is not None:   # the relay dead-letters it with this reason
                outputs[s] = {"error": err}
            elif self.structured[s]:
                outputs[s] = orjson.loads(payload)
            else:
                outputs[s] = payload.decode("utf-8", "replace")
        rec["sinks"] = outputs


def analyse(raw: bytes, *, lenient: bool = False, renderers: dict | None = None, view: ConfigView | None = None,
            received: float | None = None, peer: str | None = None, source: str | None = None) -> dict:
    if view is not None:   # parsed as the relay parses it, then the one stage
        ev = view.pipeline.parse(raw, view.source(source, lenient), peer, received)
    else:
        ev = detect.parse(raw, lenient=lenient, received=received, peer=peer, source=source)
        normalise(ev)
    rec = record_for(ev)
    rec["event"] = ev.fields
    if view is not None:
        view.apply(ev, rec)
    if renderers:
        outputs = {}
        for name, fn in renderers.items():
            try:
                outputs[name] = fn(ev)
            except (ValueError, TypeError) as e:
                outputs[name] = {"error": f"{type(e).__name__}: {e}"}
        rec["outputs"] = outputs
    if ev.notes:
        rec["notes"] = list(ev.notes)
    return rec


def body_decoder(cfg, source: str | None):
    """The configured source's body decoder (a kind that takes whole request bodies, such as
    ``http`` with a JSON format), or None when its input is syslog messages."""
    if source is None or cfg is None or source not in cfg.sources:
        return None
    sc = cfg.sources[source]
    dec = kinds.source(sc.type).decode
    if dec is None:
        return None
    probe = dec(b"{}", sc, 0.0)     # None: this source takes syslog lines
    if probe is None:
        return None
    return lambda body, received, peer=None: dec(body, sc, received, peer)


def analyse_body(body: bytes, decoder, *, view: ConfigView | None = None, renderers: dict | None = None,
                 received: float | None = None, peer: str | None = None) -> list[dict]:
    """One request body as the source decodes it -> one record per event (the ``syslog`` key is
    null, ``event`` the mapped canonical event, ``body`` the JSON object), or one record with
    ``ok`` false and the decoding error (``offset``, ``reason``, and ``line``/``column``/``item``
    when known)."""
    import time as _time
    from parsers.httpbody import BodyError
    try:
        events = decoder(body, _time.time() if received is None else received, peer)
    except BodyError as e:
        err = {"offset": e.offset if e.offset is not None else 0, "reason": str(e)}
        for k in ("line", "column", "item"):
            if getattr(e, k) is not None:
                err[k] = getattr(e, k)
        return [{"input": text(body.decode("utf-8", "replace")), "ok": False, "error": err, "syslog": None}]
    out = []
    for ev in events:
        rec = {"input": text(ev.raw.decode("utf-8", "replace")), "ok": True, "error": None, "syslog": None,
               "body": ev.body, "event": ev.fields}
        if view is not None:
            view.apply(ev, rec)
        if renderers:
            outputs = {}
            for name, fn in renderers.items():
                try:
                    outputs[name] = fn(ev)
                except (ValueError, TypeError) as e:
                    outputs[name] = {"error": f"{type(e).__name__}: {e}"}
            rec["outputs"] = outputs
        if ev.notes:
            rec["notes"] = list(ev.notes)
        out.append(rec)
    return out


def record_for(ev: Event) -> dict:
    err = ev.error
    rec = {
        "input": text(ev.raw.decode("utf-8", "surrogateescape")),
        "ok": err is None,
        "error": None if err is None else {"offset": err.offset, "reason": err.reason},
        "syslog": None if err is not None else ev.syslog_dict(),
    }
    if ev.notes:
        rec["notes"] = list(ev.notes)
    return rec


# ------------------------------------------------------------------ inputs

def iter_inputs(messages: Iterable[str], file, framed: bool, max_frame: int,
                problems: list) -> Iterator[tuple[str, bytes]]:
    """Yield (label, raw bytes).  Arguments first, else the file (or stdin when
    ``file`` is '-'/None).  Lines are split on LF (a trailing CR is removed);
    ``framed`` reads an RFC 6587 stream (octet counting or LF, per frame); framing
    problems (oversize, garbage, a partial frame at the end) go to ``problems``."""
    if messages:
        for i, m in enumerate(messages, 1):
            yield f"arg {i}", m.encode("utf-8", "surrogateescape")
        return
    fh = file if file is not None else sys.stdin.buffer
    if framed:
        d = Deframer(max_frame=max_frame)
        n = 0
        while True:
            chunk = fh.read(65536)
            if not chunk:
                break
            for fr in d.feed(chunk):
                n += 1
                yield f"frame {n}", fr
        for fr in d.close():
            n += 1
            yield f"frame {n}", fr
        problems.extend(d.drain_problems())
        return
    for n, line in enumerate(fh, 1):
        if line.endswith(b"\n"):
            line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.strip():
            continue
        yield f"line {n}", line


# ------------------------------------------------------------------ human output

def _display(s: str) -> list[str]:
    """Printable pieces per character (control characters escaped)."""
    out = []
    for c in s:
        o = ord(c)
        if c == "\t":
            out.append("\\t")
        elif c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif o < 32 or o == 127:
            out.append(f"\\x{o:02x}")
        elif 0xDC80 <= o <= 0xDCFF:  # a byte that is not UTF-8 (surrogateescape)
            out.append(f"\\x{o - 0xDC00:02x}")
        else:
            out.append(c)
    return out


def caret_line(raw: bytes, offset: int, width: int = 100) -> tuple[str, str]:
    """The input as one printable line and a line with '^' under byte ``offset``."""
    s = raw.decode("utf-8", "surrogateescape")
    # byte offset -> character index
    ci = len(raw[:offset].decode("utf-8", "surrogateescape"))
    pieces = _display(s)
    if ci >= len(pieces):
        pieces.append(" ")  # caret after the end: "message ends early"
    col = sum(len(p) for p in pieces[:ci])
    line = "".join(pieces)
    start = 0
    if len(line) > width:
        start = max(0, min(col - width // 2, len(line) - width))
        prefix = "..." if start else ""
        suffix = "..." if start + width < len(line) else ""
        line = prefix + line[start:start + width] + suffix
        col = col - start + len(prefix)
    return line, " " * col + "^"


def render_human(label: str, raw: bytes, rec: dict, out) -> None:
    w = out.write
    w(f"== {label}: ")
    if not rec["ok"]:
        err = rec["error"]
        w(f"PARSE ERROR at byte {err['offset']}: {err['reason']}\n")
        line, caret = caret_line(raw, err["offset"])
        w(f"   {line}\n   {caret}\n")
    elif rec["syslog"] is None:      # a JSON body's event (an http source)
        w("json\n")
    else:
        sl = rec["syslog"]
        w(f"{sl['format']}\n")
        rows = [("facility", sl["facility"]), ("severity", sl["severity"]), ("pri", sl["pri"]),
                ("version", sl["version"]), ("timestamp", sl["timestamp"]), ("time_unix", sl["time_unix"]),
                ("hostname", sl["hostname"]), ("app_name", sl["app_name"]), ("procid", sl["procid"]),
                ("msgid", sl["msgid"])]
        for k, v in rows:
            if v is not None or sl["format"] == "rfc5424":
                w(f"   {k:<10} {'-' if v is None else v}\n")
        sd = sl["structured_data"]
        if sd:
            w("   structured data\n")
            items = list(sd.items())
            for i, (sid, params) in enumerate(items):
                last = i == len(items) - 1
                w(f"   {'└─' if last else '├─'} {sid}\n")
                pitems = list(params.items())
                for j, (k, v) in enumerate(pitems):
                    lead = "   " if last else "│  "
                    w(f"   {lead}{'└─' if j == len(pitems) - 1 else '├─'} {k} = {v!r}\n")
        msg = sl["msg"]
        w(f"   {'msg':<10} {'-' if msg is None else repr(msg)}\n")
    for note in rec.get("notes", ()):
        w(f"   note: {note}\n")
    for key in rec:
        if key in ("input", "ok", "error", "syslog", "notes", "body"):
            continue
        _render_extra(key, rec[key], w)


def _render_extra(key: str, value, w) -> None:
    """Keys added by later stages (event, routes, outputs, ...)."""
    import orjson
    if value is None:
        return
    w(f"   {key}:\n")
    if isinstance(value, dict):
        for k, v in value.items():
            if key == "route_checks" and isinstance(v, list):
                w(f"      {k}\n")
                for line in v:
                    w(f"          {line}\n")
                continue
            if v is None or v == {} or v == []:
                continue
            if isinstance(v, (dict, list)):
                v = orjson.dumps(v, option=orjson.OPT_INDENT_2 if key == "outputs" else 0).decode()
                if key == "outputs":
                    v = v.replace("\n", "\n" + " " * 23)
            elif key == "outputs" and isinstance(v, str):
                v = v.rstrip("\n")
            w(f"      {k:<16} {v}\n")
    elif isinstance(value, list):
        for v in value:
            w(f"      {v}\n")
    else:
        w(f"      {value}\n")

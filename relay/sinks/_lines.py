"""Syslog-line payloads: what the sinks that carry one LEEF, CEF, JSON or RFC 5424 line per event
(``syslog``, ``file``) share: their encoder keys and their renderer (formats/render.py).

A sink kind whose payload is something else (an XSOAR incident, a ticket) reads none of these
keys: a ``leef_vendor`` on it is an unknown key.
"""
from __future__ import annotations

from typing import Callable

from formats.render import FORMATS, Renderer, RenderOptions
from formats.syslog import frame_batch, frame_spans

from ..metrics import REGISTRY
from ..queue.items import Leased

__all__ = ["KEYS", "read", "renderer", "frame_items"]

#: The encoder keys, read by :func:`read`.
KEYS = ("format", "leef_vendor", "leef_product", "leef_version", "leef_delimiter", "cef_vendor", "cef_product",
        "cef_version", "hostname", "passthrough_cef_leef")


def read(t, sk) -> None:
    """Read the encoder keys into ``sk.format`` and ``sk.render`` (a RenderOptions)."""
    d = RenderOptions()
    sk.format = t.get("format", str, "leef", choices=FORMATS)
    sk.render = RenderOptions(
        format=sk.format,
        leef_vendor=t.get("leef_vendor", str, d.leef_vendor),
        leef_product=t.get("leef_product", str, d.leef_product),
        leef_version=t.get("leef_version", str, d.leef_version),
        leef_delimiter=t.get("leef_delimiter", str, d.leef_delimiter, check=_delimiter),
        cef_vendor=t.get("cef_vendor", str, d.cef_vendor),
        cef_product=t.get("cef_product", str, d.cef_product),
        cef_version=t.get("cef_version", str, d.cef_version),
        hostname=t.get("hostname", str, d.hostname),
    )
    sk.options["passthrough_cef_leef"] = t.get("passthrough_cef_leef", bool, False)


def renderer(sk) -> Callable:
    """``render(event, routes) -> bytes``: the sink's line.  The renderer counts the characters
    it sanitised into ``relay_sanitised_total{sink}`` itself, and its render method takes the
    route names as they are: it is the sink's render function, no wrapper."""
    opts = sk.render if sk.render is not None else RenderOptions(format=sk.format)
    r = Renderer(opts)
    r.sanitised_counter = REGISTRY.counter("relay_sanitised_total", sink=sk.name)
    if (getattr(sk, "options", None) or {}).get("passthrough_cef_leef"):
        return passthrough(r.render)
    return r.render


def passthrough(render: Callable) -> Callable:
    """``passthrough_cef_leef``: an event that arrived as CEF or LEEF (``extra.input_format``,
    parsers/cefleef.py) is forwarded as the message it came in, byte for byte; every other event
    is rendered as usual."""
    def render_or_pass(ev, routes=None) -> bytes:
        f = ev.fields
        if f:
            extra = f.get("extra")
            if extra and extra.get("input_format") in ("cef", "leef"):
                return ev.raw
        return render(ev, routes)
    return render_or_pass


def _delimiter(v: str):
    if len(v) == 1:
        if v in "=|" or v == "\n" or v == "\r":
            raise ValueError(f"{v!r} cannot be a LEEF delimiter")
        return None
    h = v[2:] if v[:2].lower() == "0x" else v[1:] if v[:1].lower() == "x" else None
    if h and 1 <= len(h) <= 4:
        try:
            c = chr(int(h, 16))
        except ValueError:
            pass
        else:
            return _delimiter(c) or c
    raise ValueError(f"{v!r} must be one character or a hex code like x09 / 0x5E")


def frame_items(items, framing: str) -> tuple[bytes, int]:
    """A leased batch framed into one buffer (formats/syslog.py's rules): a
    :class:`relay.queue.Leased` straight from its packed rows (:func:`formats.syslog.frame_spans`),
    a list of Items by their payloads.  Returns (bytes, payloads changed)."""
    if type(items) is Leased:
        return frame_spans(items.spans(), framing)
    return frame_batch([it.payload for it in items], framing)

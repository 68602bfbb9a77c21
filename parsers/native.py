"""The hot path's parse of a listener batch, natively accelerated when it can be (issue 19).

:func:`parse_items` is :func:`parsers.detect.parse` over a batch of ``(raw, peer)`` pairs (one
listener read's frames): one call per batch, not per message.  When the C extension
``parsers._speedups`` is built and loaded it parses the common valid RFC 5424 shape itself and
calls the Python parser for every other message, so the result is the same Event, slot for
slot, either way (``tests/test_native.py`` compares both paths on the vectors, the hostile
corpus, generated messages and the benchmark's traffic).  Lenient sources always take the
Python path.

:func:`rx_normalise` (``None`` on the pure path) is :func:`parsers.rhythmx.normalise` under
the default config for the common SigmaIncident shape (``_speedups.c`` lists it): it fills the
event and returns True, or returns False with the event untouched, and the Python normaliser
does it (:func:`parsers.normalise.normalise` calls it first).

:func:`leef_join` (``None`` on the pure path) is the key=value loop of
:meth:`formats.render.Renderer._leef_fast` for fields whose values are str, int or None (it
returns None for anything else, and the Python loop runs).  :func:`leef_line` (``None`` on the
pure path) is the whole of ``_leef_fast`` for the usual event once its header is in the
renderer's cache, or None (the Python code then runs, unchanged).  :func:`cef_line` (``None`` on
the pure path) is the same for :meth:`formats.render.Renderer._cef`: the whole line when both
its headers are in the renderer's caches, values escaped as :func:`formats.cef.extension_counted`
does, or None.  :func:`frame_spans` (``None`` on the pure path) is
:func:`formats.syslog.frame_spans`'s copy for payloads that need no change (else None, and
the Python framing runs).  :func:`stage_batch` (``None`` on the pure path) is
:meth:`relay.pipeline.Pipeline.stage_rows` for a listener batch with no enrichment and no tap:
the C parse, normaliser and LEEF line of each message, with the compiled rules, the renderers
and every uncommon decision called back in Python (relay/pipeline.py builds its plan).  :func:`lf_frames` (``None`` on the
pure path) is :class:`parsers.framing.Deframer`'s loop over simple LF frames (``<`` first, trailer
in the read, not oversize, outside octet context); the Python loop takes over at anything else.

``RELAY_PURE=1`` in the environment (read once, at import) keeps the extension out: the pure
Python path runs, as on a machine where it was not built.  :data:`ACTIVE` says which path
runs, :data:`WHY` why that one (``relay version`` prints both).
"""
from __future__ import annotations

import os

from . import detect
from .event import FORMAT_RFC5424, Event

__all__ = ["ACTIVE", "WHY", "parse_items", "parse_items_pure", "rx_normalise", "leef_join", "leef_line", "cef_line",
           "lf_frames", "frame_spans", "stage_batch", "load_native", "load_module"]

_detect_parse = detect.parse


def parse_items_pure(items: list, lenient: bool, received: float | None, source: str | None) -> list:
    """The reference: :func:`parsers.detect.parse` per message."""
    return [_detect_parse(raw, lenient=lenient, received=received, peer=peer, source=source)
            for raw, peer in items]


#: What the Python code expects of ``_speedups`` (its ``ABI``): raised with every change of what
#: one hands the other (2: the rule programs' presence codes, relay.rules._RICH; 3: membership).
ABI = 3


def _import():
    """-> (the configured extension module or None, why not)."""
    try:
        from . import _speedups
    except ImportError as e:
        return None, f"the accelerator is not built ({e})"
    if getattr(_speedups, "ABI", None) != ABI:      # built from other sources: never half-use it
        return None, (f"the accelerator was built from other sources (ABI {getattr(_speedups, 'ABI', None)}, "
                      f"this code needs {ABI}: rebuild it, ./scripts/setup)")
    try:
        _speedups.configure(Event, FORMAT_RFC5424)
        _rx_configure(_speedups)
    except (TypeError, AttributeError, KeyError) as e:   # Event changed without the C code: never half-use it
        return None, f"the accelerator does not match parsers.event.Event ({e})"
    return _speedups, f"parsers._speedups ({os.path.basename(_speedups.__file__)})"


def _rx_configure(mod) -> None:
    """Hand parsers.rhythmx's own names, tables and caches to the C normaliser (one copy of
    the data for both paths)."""
    from . import rhythmx, schema
    cfg = rhythmx.DEFAULT_CONFIG
    # body keys the C path takes: canonical ones it can ignore for the shape it covers
    body_ok = frozenset(("incident_id", "risk_score", "event", "timestamp", "created_at"))
    assert body_ok <= rhythmx._BODY_CANONICAL and body_ok.isdisjoint(rhythmx._B_SECTIONS)
    ctx = {name: getattr(cfg, name) for name in (
        "sd_id", "id_param", "risk_param", "status_param", "actor_param", "actor_type_param", "entity_param",
        "alarm_count_param", "sigma_alert_count_param", "threat_case_count_param", "related_param",
        "dedup_prefix")}
    ctx.update(used=rhythmx._DEFAULT_USED, small_int=rhythmx._SMALL_INT, status_cache=schema._STATUS_CACHE,
               status_from_event=rhythmx._STATUS_FROM_EVENT, canonical_status=rhythmx.canonical_status,
               loads=rhythmx._loads, template=rhythmx._DEFAULT_TEMPLATE, body_ok=body_ok)
    mod.rx_configure(ctx)


def _native_path(mod):
    c_parse_items = mod.parse_items

    def parse_items_native(items: list, lenient: bool, received: float | None, source: str | None) -> list:
        """The C parse of the covered messages, :func:`parsers.detect.parse` for the others."""
        if lenient:
            return parse_items_pure(items, lenient, received, source)

        def fallback(raw, peer):
            return _detect_parse(raw, lenient=False, received=received, peer=peer, source=source)

        return c_parse_items(items, received, source, fallback)

    return parse_items_native


def load_native():
    """-> (parse_items_native, parse_one) of the extension whatever RELAY_PURE says, or raise
    ImportError saying why not (the differential tests use both paths in one process)."""
    mod, why = _import()
    if mod is None:
        raise ImportError(why)
    return _native_path(mod), mod.parse_one


def load_module():
    """-> the configured extension module whatever RELAY_PURE says (tests: ``rx_normalise``,
    ``leef_join``), or raise ImportError saying why not."""
    mod, why = _import()
    if mod is None:
        raise ImportError(why)
    return mod


if os.environ.get("RELAY_PURE", "") not in ("", "0"):
    _native, WHY = None, "RELAY_PURE is set"
else:
    _native, WHY = _import()
#: True when the C accelerator parses (the native path), False for pure Python.
ACTIVE = _native is not None
if _native is not None:
    parse_items = _native_path(_native)
    rx_normalise = _native.rx_normalise
    leef_join = _native.leef_join
    leef_line = _native.leef_line
    cef_line = _native.cef_line
    lf_frames = _native.lf_frames
    frame_spans = _native.frame_spans
    stage_batch = _native.stage_batch
else:
    parse_items = parse_items_pure
    rx_normalise = None
    leef_join = None
    leef_line = None
    cef_line = None
    lf_frames = None
    frame_spans = None
    stage_batch = None


def _same(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if type(a) is list:
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if type(a) is float:
        return repr(a) == repr(b)                 # bit for bit, NaN included
    if isinstance(a, Exception):              # ParseError: offset, reason and kind
        return (type(a), getattr(a, "offset", None), getattr(a, "reason", None), getattr(a, "kind", None)) == \
               (type(b), getattr(b, "offset", None), getattr(b, "reason", None), getattr(b, "kind", None))
    return a == b


def differences(a: Event, b: Event) -> list[str]:
    """What "the same result" means for the two paths: every slot of the two Events equal in
    value and type (dict order included, floats with the same repr, errors with the same
    offset, reason and kind); -> the slots that differ, described."""
    out = []
    for s in Event.__slots__:
        x, y = getattr(a, s), getattr(b, s)
        if not _same(x, y):
            out.append(f"{s}: {x!r} != {y!r}")
    return out

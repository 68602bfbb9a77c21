"""The registry of source and sink kinds: what each ``type = "..."`` in the config is.

Every source and every sink is one module that declares its kind when it is imported::

    # relay/sinks/syslog.py
    KIND = kinds.register_sink(kinds.SinkKind(
        type="syslog", keys=(...), read_config=read_config, factory=make,
        renderer=lines.renderer, doc="..."))

and nothing else in the relay names that type.  The config loader asks the registry which
keys a type reads, the server asks it how to build the source or sink, the pipeline asks it
how to render a sink's payload and which canonical fields its queue rows carry, and
``relay test-parse``, the golden cases, enrichment and the CLI ask it the rest.  Adding a kind
is its module (under ``relay/sources/`` or ``relay/sinks/``), its payload encoder in
``formats/``, and tests.

Discovery: the first lookup imports every public module of the ``relay.sources`` and
``relay.sinks`` packages (names starting with ``_`` are helpers and are skipped), then any
module named by an installed distribution's ``relay.kinds`` entry point, so a kind can also
ship as a separate package::

    [project.entry-points."relay.kinds"]
    my_sink = "my_package.my_sink"

A module that fails to import is reported when its type is asked for (``unknown type`` with
the import error), never at every start.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["SourceKind", "SinkKind", "register_source", "register_sink", "source", "sink", "sources", "sinks",
           "UnknownKind"]


class UnknownKind(LookupError):
    """No kind of that name (the message lists the known ones)."""

    def __init__(self, message: str, name: str, known: list[str], failed: str) -> None:
        super().__init__(message)
        self.name, self.known, self.failed = name, known, failed

    def choices(self) -> str:
        """``'x' is not one of: a, b`` (the config loader's wording for a bad choice)."""
        return f"{self.name!r} is not one of: {', '.join(self.known)}" + self.failed


@dataclass(frozen=True, eq=False)
class SourceKind:
    """A source type.

    ``read_config(table, source_config, base_dir)`` reads the kind's keys from its
    ``[sources.NAME]`` table (``table.get(...)``; unknown keys are refused by the loader after
    it) and stores them on the :class:`relay.config.SourceConfig` (its listener fields, or
    ``options``).  ``factory(source_config, ingest, registry)`` builds the
    :class:`relay.sources.Source`; ``ingest`` is where it hands over what it receives: raw
    messages (``ingest.handle(items, source_config, received)``: ``(message, peer)`` pairs, or a
    ``relay.pipeline.OneSender`` for one peer's messages) or events that are already
    normalised (``await ingest.submit(events, source_config)``).
    """

    type: str
    read_config: Callable[..., None]
    factory: Callable[..., Any]
    keys: tuple[str, ...] = ()           # its config keys besides ``type`` (docs/config.md lists each)
    transport: str | None = None         # "udp" / "tcp": it listens on ``address`` (one listener per
                                         # transport and address); None: it polls (a pull source)
    decode: Callable[..., Any] | None = None   # a source that takes whole request bodies (http):
                                         # decode(body, source_config, received) -> [Event] or None
                                         # (None: its input is syslog lines); relay test-parse --source
                                         # and the golden cases use it
    doc: str = ""


@dataclass(frozen=True, eq=False)
class SinkKind:
    """A sink type.

    ``read_config(table, sink_config, base_dir)`` reads the kind's own keys (the loader reads
    the common ones: ``type``, ``batch_size``, ``[queue]``, ``[retry]``) and sets
    ``sink_config.format``: the payload's format, ``leef``, ``leef1``, ``cef``, ``rfc5424`` or
    ``json`` (how ``relay test-parse`` and the golden cases decode it).
    ``factory(sink_config, queue, **kw)`` builds the :class:`relay.sinks.base.Sink`.
    ``renderer(sink_config)`` returns ``render(event, route_names) -> bytes``: the payload the
    pipeline puts in the sink's queue, once per event.
    """

    type: str
    read_config: Callable[..., None]
    factory: Callable[..., Any]
    renderer: Callable[..., Callable]
    keys: tuple[str, ...] = ()
    meta: tuple[str, ...] = ()           # canonical fields its queue rows carry, besides source, routes
                                         # and received (what its delivery needs, e.g. the dedup key)
    structured: bool = False             # the payload is one JSON document (test-parse shows it as one)
    incidents: bool = False              # it creates incidents or tickets (the LLM summary's default targets)
    batch_size: int = 500                # default ``batch_size``
    preview: Callable[[], Callable] | None = None   # ``relay test-parse --render TYPE``: render(event)
                                                    # with default options, no config
    doc: str = ""


_SOURCES: dict[str, SourceKind] = {}
_SINKS: dict[str, SinkKind] = {}
_failed: dict[str, str] = {}     # module -> import error
_loaded = False
PACKAGES = ("relay.sources", "relay.sinks")
ENTRY_POINTS = "relay.kinds"


def register_source(kind: SourceKind) -> SourceKind:
    _register(_SOURCES, kind, "source")
    return kind


def register_sink(kind: SinkKind) -> SinkKind:
    _register(_SINKS, kind, "sink")
    return kind


def _register(table: dict, kind, what: str) -> None:
    old = table.get(kind.type)
    if old is not None and old is not kind and old.factory is not kind.factory:
        raise ValueError(f"{what} type {kind.type!r} is registered twice")
    table[kind.type] = kind


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for pkg in PACKAGES:
        mod = importlib.import_module(pkg)
        for info in pkgutil.iter_modules(mod.__path__):
            if not info.name.startswith("_"):
                _import(f"{pkg}.{info.name}")
    try:
        from importlib.metadata import entry_points
        for ep in entry_points(group=ENTRY_POINTS):
            _import(ep.value.partition(":")[0])
    except Exception as e:  # a broken distribution must not stop the relay's own kinds
        _failed["entry points"] = f"{type(e).__name__}: {e}"


def _import(name: str) -> None:
    try:
        importlib.import_module(name)
    except Exception as e:
        _failed[name] = f"{type(e).__name__}: {e}"


def _unknown(what: str, name: str, known) -> UnknownKind:
    known = sorted(known)
    failed = ""
    if _failed:
        failed = " (modules that failed to load: " + "; ".join(f"{m}: {e}" for m, e in sorted(_failed.items())) + ")"
    return UnknownKind(f"unknown {what} type {name!r} (known: {', '.join(known) or 'none'}){failed}", name, known,
                       failed)


def source(name: str) -> SourceKind:
    k = _SOURCES.get(name)
    if k is None:
        _load()
        k = _SOURCES.get(name)
        if k is None:
            raise _unknown("source", name, _SOURCES)
    return k


def sink(name: str) -> SinkKind:
    k = _SINKS.get(name)
    if k is None:
        _load()
        k = _SINKS.get(name)
        if k is None:
            raise _unknown("sink", name, _SINKS)
    return k


def sources() -> dict[str, SourceKind]:
    _load()
    return dict(sorted(_SOURCES.items()))


def sinks() -> dict[str, SinkKind]:
    _load()
    return dict(sorted(_SINKS.items()))

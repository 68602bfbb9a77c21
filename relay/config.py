"""The relay's one TOML configuration file -> typed config.

Every problem is reported with the file, the key path and what is wrong, e.g.::

    relay.toml: sinks.qradar.format: 'leff' is not one of: leef, leef1, cef, rfc5424, json

Unknown keys are errors too (a typo must not silently fall back to a default).
The reference for every key is docs/config.md; examples/relay.toml is a complete,
commented example.
"""
from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checks import (ConfigError, existing_file, http_url, networks, non_negative, parse_address, path_converter,
                     positive)

__all__ = ["ConfigError", "Config", "RelayConfig", "QueueConfig", "RetryConfig", "SourceConfig",
           "RouteConfig", "SinkConfig", "load", "loads", "parse_address", "SINK_FORMATS", "positive",
           "non_negative", "http_url", "existing_file", "path_converter", "networks"]

# Enrichment and triage (relay/enrich) read their own top-level tables:
# read_config({table name: _Table}, base_dir) -> an object stored as Config.enrich.
ENRICH_TABLES = ("lookups", "triage", "audit", "summary")
#: The payload formats a sink can carry (``SinkConfig.format``; formats/render.py).
SINK_FORMATS = ("leef", "leef1", "cef", "rfc5424", "json")


@dataclass
class RetryConfig:
    base: float = 60.0
    factor: float = 2.0
    cap: float = 3600.0
    max_attempts: int = 5


@dataclass
class QueueConfig:
    synchronous: str = "FULL"
    max_rows: int | None = 1_000_000
    max_bytes: int | None = 1 << 30
    full_policy: str = "block"


@dataclass
class RelayConfig:
    state_dir: Path = Path("state")
    metrics_address: tuple[str, int] | None = ("127.0.0.1", 9514)
    drain_timeout: float = 10.0
    log_level: str = "info"
    workers: int = 1
    run_tests_at_start: bool = False   # run [[tests]] before starting (and on reload); refuse on a failure
    metrics_tokens: tuple = ()         # bearer tokens for /metrics, /health, /ready (relay.secrets.Secret)
    console: bool = False              # the rule authors' web console on the metrics server (relay/console)
    console_tokens: tuple = ()         # its tokens (required when console = true)
    console_cases_dir: Path | None = None   # where the console saves golden cases (None: saving is off)
    queue: QueueConfig = field(default_factory=QueueConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    claims: Any = None                 # relay.claims.ClaimsConfig when [relay.claims] is set


@dataclass
class SourceConfig:
    """One ``[sources.NAME]``.  ``type`` names its kind (relay/kinds.py), which reads the rest
    of the table: the listeners (udp, tcp, tls, ...) fill the listener fields below, pull
    sources their ``options``."""

    name: str
    type: str
    address: tuple[str, int] | None = None             # listeners: where they listen
    lenient: bool = False
    max_message_size: int = 65536
    oversize: str = "truncate"
    allow: list = field(default_factory=list)          # ip_network objects; empty = everyone
    receive_buffer: int | None = 4 * 1024 * 1024       # udp SO_RCVBUF
    max_connections: int = 1000
    max_connections_per_ip: int = 100                  # 0 = no per-address cap
    idle_timeout: float = 600.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    tls_verify_client: bool = False
    tls_client_names: list = field(default_factory=list)  # client certificate CN/SAN allowlist
    proxy_protocol: bool = False                       # tcp/tls: a PROXY v1/v2 header opens each connection
    proxy_from: list = field(default_factory=list)     # ip_network objects: the load balancers trusted to send it
    options: dict = field(default_factory=dict)        # the kind's own settings

    def allowed(self, ip: str) -> bool:
        if not self.allow:
            return True
        return _in(ip, self.allow)

    def proxy_trusted(self, ip: str) -> bool:
        """May the load balancer at ``ip`` send a PROXY header (``proxy_from``)?"""
        return _in(ip, self.proxy_from)


def _in(ip: str, nets: list) -> bool:
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in nets)


@dataclass
class RouteConfig:
    name: str
    match: str
    sinks: list[str]
    final: bool = False
    rule: Any = None  # compiled relay.rules.Rule


@dataclass
class SinkConfig:
    """One ``[sinks.NAME]``.  The loader reads ``type``, ``batch_size``, ``[queue]`` and
    ``[retry]``; the kind (relay/kinds.py) reads the rest and sets ``format``, the payload's
    format.  The syslog-line sinks (syslog, file) keep their encoder settings in ``render``
    (:class:`formats.render.RenderOptions`)."""

    name: str
    type: str
    format: str = "leef"
    # syslog
    address: tuple[str, int] | None = None
    protocol: str = "tcp"
    framing: str | None = None          # octet | lf; default lf for tcp, octet for tls
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_verify: bool = True
    tls_server_name: str | None = None
    connect_timeout: float = 10.0
    # file
    path: Path | None = None
    # delivery
    batch_size: int = 500
    queue: QueueConfig = field(default_factory=QueueConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    render: Any = None                  # formats.render.RenderOptions of the syslog-line sinks
    options: dict = field(default_factory=dict)  # the kind's own settings


@dataclass
class Config:
    file: str
    relay: RelayConfig
    sources: dict[str, SourceConfig]
    routes: dict[str, RouteConfig]
    sinks: dict[str, SinkConfig]
    warnings: list[str] = field(default_factory=list)
    tests: list = field(default_factory=list)  # [[tests]] tables, as written; checked and run by relay/tools/cases
    enrich: object = None  # relay.enrich.EnrichConfig when [lookups.*] / [triage] / [audit] / [summary] are set


# ----------------------------------------------------------------------------- helpers

class _Table:
    """Reads keys from one TOML table, remembering which were used."""

    def __init__(self, file: str, path: str, data: Any, secrets: bool = True) -> None:
        if not isinstance(data, dict):
            raise ConfigError(file, path, f"must be a table, not {type(data).__name__}")
        self.file, self.path, self.data = file, path, data
        self.secrets = secrets  # False: option readers skip resolving credentials (test-parse)
        self.used: set[str] = set()

    def err(self, key: str | None, msg: str) -> ConfigError:
        return ConfigError(self.file, f"{self.path}.{key}" if key and self.path else (key or self.path), msg)

    def get(self, key: str, types, default=None, *, choices=None, check=None, required=False):
        self.used.add(key)
        if key not in self.data:
            if required:
                raise self.err(key, "is required")
            if default is None or check is None:
                return default
            out = check(default)  # defaults go through the same conversion (paths, addresses)
            return default if out is None else out
        v = self.data[key]
        if types is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if isinstance(v, float) and not math.isfinite(v):   # TOML has nan and inf: no key takes them
            raise self.err(key, f"must be a finite number, not {v!r}")
        if (isinstance(v, str) and "\0" in v) or (isinstance(v, list) and any(
                isinstance(x, str) and "\0" in x for x in v)):   # paths, names, URLs: never a NUL
            raise self.err(key, "must not contain a NUL character")
        if not isinstance(v, types) or (isinstance(v, bool) and types in (int, float, (int, float))):
            tn = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
            raise self.err(key, f"must be {_article(tn)}, not {type(v).__name__} {v!r}")
        if choices is not None and v not in choices:
            raise self.err(key, f"{v!r} is not one of: {', '.join(choices)}")
        if check is not None:
            try:
                out = check(v)
            except (ValueError, TypeError, OSError) as e:
                raise self.err(key, str(e)) from None
            if out is not None:
                v = out
        return v

    def table(self, key: str) -> "_Table":
        self.used.add(key)
        return _Table(self.file, f"{self.path}.{key}" if self.path else key, self.data.get(key, {}), self.secrets)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.err(unknown[0], "unknown key" + (f" (known keys: {', '.join(sorted(self.used))})"
                                                       if self.used else ""))


def _article(tn: str) -> str:
    return ("an " if tn[0] in "aeiou" else "a ") + tn


_positive, _non_negative = positive, non_negative


def _retry(t: _Table, base: RetryConfig) -> RetryConfig:
    r = RetryConfig(
        base=t.get("base", float, base.base, check=_positive),
        factor=t.get("factor", float, base.factor, check=lambda v: None if v >= 1 else (_ for _ in ()).throw(
            ValueError(f"must be >= 1, not {v}"))),
        cap=t.get("cap", float, base.cap, check=_positive),
        max_attempts=t.get("max_attempts", int, base.max_attempts, check=_non_negative),
    )
    t.finish()
    return r


def _queue(t: _Table, base: QueueConfig) -> QueueConfig:
    q = QueueConfig(
        synchronous=t.get("synchronous", str, base.synchronous, choices=("FULL", "NORMAL")),
        max_rows=t.get("max_rows", int, base.max_rows, check=_positive),
        max_bytes=t.get("max_bytes", int, base.max_bytes, check=_positive),
        full_policy=t.get("full_policy", str, base.full_policy, choices=("block", "drop_newest")),
    )
    t.finish()
    return q


# ----------------------------------------------------------------------------- loading

def load(path: str | os.PathLike, *, compile_rules: bool = True, secrets: bool = True) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(p), "", "file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(str(p), "", f"cannot read: {e}") from None
    return loads(text, file=str(p), base_dir=p.resolve().parent, compile_rules=compile_rules, secrets=secrets)


def loads(text: str, *, file: str = "<config>", base_dir: Path | None = None, compile_rules: bool = True,
          secrets: bool = True) -> Config:
    """Parse config text.  ``secrets=False`` leaves credentials unresolved (for
    ``relay test-parse --config``, which renders request bodies but sends nothing)."""
    base_dir = base_dir or Path.cwd()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(file, "", f"not valid TOML: {e}") from None
    root = _Table(file, "", data, secrets)
    pathconv = path_converter(base_dir)

    # [relay]
    rt = root.table("relay")
    metrics = rt.get("metrics_address", str, "127.0.0.1:9514")
    relay = RelayConfig(
        state_dir=rt.get("state_dir", str, "state", check=pathconv),
        metrics_address=None if metrics in ("", "off") else rt.get("metrics_address", str, metrics,
                                                                       check=parse_address),
        drain_timeout=rt.get("drain_timeout", float, 10.0, check=_non_negative),
        log_level=rt.get("log_level", str, "info", choices=("debug", "info", "warning", "error")),
        workers=rt.get("workers", (int, str), 1, check=_workers),
        run_tests_at_start=rt.get("run_tests_at_start", bool, False),
    )
    from .secrets import read_tokens
    relay.metrics_tokens = read_tokens(rt, "metrics_token_env", "metrics_token_file", "bearer token for /metrics",
                                       base_dir, required=False)
    relay.console = rt.get("console", bool, False)
    if relay.console:
        if relay.metrics_address is None:
            raise rt.err("console", "needs metrics_address: the console is served by the relay's HTTP server")
        import ipaddress
        host = relay.metrics_address[0]
        try:
            loop_ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loop_ok = False
        if not loop_ok:
            raise rt.err("console", f"needs a loopback metrics_address, not {relay.metrics_address[0]!r}: the "
                                    f"console answers on loopback only (reach it through an SSH tunnel)")
    relay.console_tokens = read_tokens(rt, "console_token_env", "console_token_file", "console token", base_dir,
                                       required=relay.console)
    relay.console_cases_dir = rt.get("console_cases_dir", str, None, check=pathconv)
    relay.queue = _queue(rt.table("queue"), QueueConfig())
    relay.retry = _retry(rt.table("retry"), RetryConfig())
    if "claims" in rt.data:
        from .claims import read_config as _read_claims
        relay.claims = _read_claims(rt.table("claims"), base_dir)
    rt.finish()

    # [sources.*]: each table's type names its kind, which reads the table (relay/kinds.py)
    from . import kinds
    sources: dict[str, SourceConfig] = {}
    st = root.table("sources")
    for name in st.data:
        _check_name(st, name, "source")
        t = st.table(name)
        typ = t.get("type", str, required=True)
        try:
            kind = kinds.source(typ)
        except kinds.UnknownKind as e:
            raise t.err("type", e.choices()) from None
        sc = SourceConfig(name=name, type=typ)
        kind.read_config(t, sc, base_dir)
        t.finish()
        sources[name] = sc
    st.finish()

    # [sinks.*]: the loader reads the keys every sink has, the kind the rest
    sinks: dict[str, SinkConfig] = {}
    kt = root.table("sinks")
    for name in kt.data:
        _check_name(kt, name, "sink")
        t = kt.table(name)
        typ = t.get("type", str, required=True)
        try:
            kind = kinds.sink(typ)
        except kinds.UnknownKind as e:
            raise t.err("type", e.choices()) from None
        sk = SinkConfig(name=name, type=typ)
        kind.read_config(t, sk, base_dir)
        sk.batch_size = t.get("batch_size", int, kind.batch_size, check=_positive)
        sk.queue = _queue(t.table("queue"), relay.queue)
        sk.retry = _retry(t.table("retry"), relay.retry)
        t.finish()
        sinks[name] = sk
    kt.finish()

    # [routes.*]
    routes: dict[str, RouteConfig] = {}
    ro = root.table("routes")
    for name in ro.data:
        t = ro.table(name)
        rc = RouteConfig(
            name=name,
            match=t.get("match", str, required=True),
            sinks=t.get("sinks", list, required=True),
            final=t.get("final", bool, False),
        )
        for i, s in enumerate(rc.sinks):
            if not isinstance(s, str):
                raise t.err("sinks", f"entry {i} must be a sink name (string), not {s!r}")
            if s not in sinks:
                raise t.err("sinks", f"no sink named {s!r} (defined sinks: {', '.join(sinks) or 'none'})")
        if not rc.sinks:
            raise t.err("sinks", "must name at least one sink")
        if compile_rules:
            from .rules import RuleSyntaxError, compile_rule
            try:
                rc.rule = compile_rule(rc.match)
            except RuleSyntaxError as e:
                raise t.err("match", f"rule syntax error:\n{e}") from None
        t.finish()
        routes[name] = rc
    ro.finish()
    tests = root.get("tests", list, [])  # checked by the tools that run them
    enrich = None
    if any(k in data for k in ENRICH_TABLES):
        from .enrich import read_config as read_enrich
        enrich = read_enrich({k: root.table(k) for k in ENRICH_TABLES if k in data}, base_dir)
    root.finish()

    cfg = Config(file=file, relay=relay, sources=sources, routes=routes, sinks=sinks, tests=tests, enrich=enrich)
    if enrich is not None and hasattr(enrich, "validate"):
        enrich.validate(cfg)   # escalation / summary sink names exist
    if relay.run_tests_at_start and not tests:
        cfg.warnings.append(f"{file}: relay.run_tests_at_start: there are no [[tests]] to run")
    used = {s for r in routes.values() for s in r.sinks}
    for s in sinks:
        if s not in used:
            cfg.warnings.append(f"{file}: sinks.{s}: no route sends events to this sink")
    if not sources:
        cfg.warnings.append(f"{file}: sources: no sources: the relay will receive nothing")
    addrs: dict = {}
    for s in sources.values():
        transport = kinds.source(s.type).transport
        if transport is None or s.address is None:
            continue
        key = (transport, s.address)
        if key in addrs:
            raise ConfigError(file, f"sources.{s.name}.address",
                              f"{s.address[0]}:{s.address[1]} is already used by sources.{addrs[key]}")
        addrs[key] = s.name
    return cfg


_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def _check_name(parent: _Table, name: str, what: str) -> None:
    """Source and sink names become file names under state_dir (``queue-NAME.db``,
    ``xsoar-dedup-NAME.db``, ``pull-NAME.json``) and metric labels: letters, digits, ``_``,
    ``-`` and ``.``, not starting with ``.`` or ``-``, at most 64 characters."""
    if not _NAME.fullmatch(name):
        raise ConfigError(parent.file, f"{parent.path}.{name}" if "\n" not in name else parent.path,
                          f"{what} name {name!r} is not allowed: use 1-64 letters, digits, '_', '-' or '.', "
                          f"not starting with '.' or '-' (the name becomes a file name under state_dir)")


def _workers(v):
    if v == "auto":
        return max(1, min(8, os.cpu_count() or 1))
    if isinstance(v, (str, bool)) or v < 1 or v > 64:
        raise ValueError(f"must be 1..64 or \"auto\", not {v!r}")
    return None

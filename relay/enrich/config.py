"""``[lookups.*]``, ``[triage]``, ``[audit]`` and ``[summary]`` -> :class:`EnrichConfig`.

Called by relay/config.py (``read_config(tables, base_dir)``) with one ``_Table`` per
top-level table present.  File tables are loaded here, so ``relay validate`` and a reload
(SIGHUP) check them: a table that cannot be loaded at start is a configuration error; on a
reload, a broken file keeps the last good table (logged and counted) and the rest of the new
configuration still applies.  Loaded tables are kept per process and reused while their
file is unchanged.  Reference: docs/enrichment.md.
"""
from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..secrets import read_secret
from ..checks import non_negative as _non_negative, positive as _positive, within as _within
from .tables import FORMATS, KINDS, FileTable, Opts, TableError

__all__ = ["EnrichConfig", "LookupConfig", "TriageConfig", "OwnerRule", "EscalateRule", "AuditConfig",
           "SummaryConfig", "read_config", "SEVERITIES", "DEFAULT_FIELDS", "DEFAULT_TRIAGE_MATCH"]

SEVERITIES = ("informational", "low", "medium", "high", "critical")
MODES = ("suggest", "assist", "auto")
DEFAULT_FIELDS = {
    "asset": ("src_ip", "dst_ip", "host"),
    "vuln": ("host", "dst_ip"),
    "ti": ("src_ip", "dst_ip", "domain(url)", "extra.sha256"),
}
DEFAULT_TRIAGE_MATCH = 'kind in ["incident", "detection", "alert"]'
_FIELD = re.compile(r"(?:domain\((?P<inner>[A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*)*)\)|"
                    r"(?P<path>[A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*)*))\Z")


@dataclass
class LookupConfig:
    name: str
    kind: str
    fields: tuple
    file: Path | None = None
    format: str | None = None
    opts: Opts | None = None
    table: FileTable | None = None      # loaded file table
    url: str | None = None
    http: dict = field(default_factory=dict)   # HttpLookup keyword arguments (headers hold the token)


@dataclass
class OwnerRule:
    index: int
    owner: str
    conditions: dict          # asset_owner / business_unit / tactic -> tuple of lower-case strings ("*" = any)
    crown_jewel: bool | None = None
    min_severity: str | None = None
    match: Any = None         # compiled rule
    match_text: str | None = None

    def describe(self) -> str:
        parts = [f"{k} {'/'.join(v)}" for k, v in self.conditions.items()]
        if self.crown_jewel is not None:
            parts.append("crown jewel" if self.crown_jewel else "not a crown jewel")
        if self.min_severity:
            parts.append(f"severity >= {self.min_severity}")
        if self.match_text:
            parts.append(f"match '{self.match_text}'")
        return f"owners[{self.index}]" + (f": {', '.join(parts)}" if parts else "")


@dataclass
class EscalateRule:
    index: int
    name: str
    min_severity: str | None = None
    min_score: float | None = None
    match: Any = None
    match_text: str | None = None
    sinks: tuple = ()


@dataclass
class TriageConfig:
    enabled: bool = True
    mode: str = "suggest"
    match: Any = None
    match_text: str = DEFAULT_TRIAGE_MATCH
    risk_weight: float = 1.0
    criticality_points: tuple = (-10.0, -5.0, 0.0, 10.0, 20.0)
    crown_jewel_points: float = 15.0
    cvss_points: tuple = ((9.0, 15.0), (7.0, 10.0), (4.0, 5.0))
    ti_points: float = 25.0
    thresholds: tuple = (("critical", 80.0), ("high", 60.0), ("medium", 40.0), ("low", 20.0))
    default_owner: str = "SOC"
    owners: list = field(default_factory=list)
    escalate: list = field(default_factory=list)


@dataclass
class AuditConfig:
    enabled: bool = True
    path: Path | None = None           # None: <state_dir>/audit/triage.jsonl
    max_bytes: int = 50 << 20
    keep: int = 5
    flush_interval: float = 1.0
    max_pending: int = 100_000


@dataclass
class SummaryConfig:
    enabled: bool = False
    url: str | None = None
    model: str | None = None
    api_key: str | None = field(default=None, repr=False)   # resolved secret; never logged or audited
    api_key_source: str | None = None                       # "env RELAY_LLM_KEY" / "file /etc/..."
    timeout: float = 10.0
    max_calls_per_minute: int = 6
    max_tokens_per_minute: int = 20_000
    max_tokens: int = 300
    min_severity: str = "high"
    wait: float = 0.0                   # seconds the XSOAR sink waits for a one-shot incident's summary (0: no)
    sinks: tuple | None = None          # None: every xsoar / xsoar_webhook sink
    system_prompt: str = ("You are a SOC triage assistant. In 3-4 plain sentences, say what happened, which "
                          "assets and accounts are involved, why it matters (asset criticality, vulnerabilities, "
                          "threat intelligence) and what the analyst should check first. Say which context is "
                          "missing. Do not invent facts.")
    cache_size: int = 10_000
    failure_ttl: float = 300.0


@dataclass
class EnrichConfig:
    file: str
    lookups: dict                      # name -> LookupConfig, in config order
    check_interval: float = 1.0
    memo_size: int = 65536
    triage: TriageConfig | None = None
    audit: AuditConfig = field(default_factory=AuditConfig)
    summary: SummaryConfig = field(default_factory=SummaryConfig)
    version: str = ""                  # sha256 of the enrichment tables' settings, 12 hex digits
    live: bool = True                  # False for `test-parse --config` (no secrets): nothing is sent or written

    def validate(self, config) -> None:
        """Checks that need the whole config (sink names).  Raises ConfigError."""
        from ..checks import ConfigError
        if self.triage is not None:
            for e in self.triage.escalate:
                for s in e.sinks:
                    if s not in config.sinks:
                        raise ConfigError(self.file, f"triage.escalate[{e.index}].sinks",
                                          f"no sink named {s!r} (defined sinks: {', '.join(config.sinks) or 'none'})")
        if self.summary.enabled and self.summary.sinks:
            for s in self.summary.sinks:
                if s not in config.sinks:
                    raise ConfigError(self.file, "summary.sinks",
                                      f"no sink named {s!r} (defined sinks: {', '.join(config.sinks) or 'none'})")


# ----------------------------------------------------------------------------- process-wide table cache

_TABLES: dict = {}
_TABLES_LOCK = threading.Lock()


def _file_table(t, name: str, path: Path, opts: Opts) -> FileTable:
    key = (name, str(path), opts.signature())
    with _TABLES_LOCK:
        tbl = _TABLES.get(key)
        if tbl is None:
            tbl = FileTable(name, path, opts)
            try:
                tbl.load()
            except (OSError, TableError) as e:
                raise t.err("file", f"{path}: {e}") from None
            _TABLES[key] = tbl
            return tbl
    tbl.check()   # a reload: changed files are read again; a broken one keeps the last good table
    return tbl


# ----------------------------------------------------------------------------- reading

def _rule(t, key: str, text: str):
    from ..rules import RuleSyntaxError, compile_rule
    try:
        return compile_rule(text)
    except RuleSyntaxError as e:
        raise t.err(key, f"rule syntax error:\n{e}") from None


def _strs(v):
    if not all(isinstance(x, str) for x in v):
        raise ValueError("must be a list of strings")


def _fields(v):
    _strs(v)
    for s in v:
        if not _FIELD.match(s):
            raise ValueError(f"{s!r} is not a field path (like src_ip, extra.sha256 or domain(url))")


def _str_or_list(t, key):
    v = t.get(key, (str, list), None)
    if v is None:
        return None
    vals = [v] if isinstance(v, str) else v
    if not vals or not all(isinstance(x, str) and x for x in vals):
        raise t.err(key, "must be a non-empty string or a list of non-empty strings")
    return tuple(x.strip().lower() for x in vals)


def _sub(t, path_suffix: str, data):
    """A _Table for one element of an array of tables."""
    return type(t)(t.file, f"{t.path}.{path_suffix}", data, t.secrets)


def _read_secret(t, env_key: str, file_key: str, base_dir: Path) -> tuple[str | None, str | None]:
    """(value, "env NAME" | "file PATH") via relay/secrets.py; (None, None) when neither key
    is set; the value is None when credentials are not resolved (test-parse)."""
    sec = read_secret(t, env_key, file_key, "secret", base_dir, required=False)
    if sec is None:
        return None, None
    src = f"env {sec.source[1:]}" if sec.source.startswith("$") else f"file {sec.source}"
    if not t.secrets:
        return None, src
    return sec.reveal(), src


def _lookup(t, name: str, base_dir: Path, live: bool) -> LookupConfig:
    kind = t.get("kind", str, required=True, choices=KINDS)
    fields = tuple(t.get("fields", list, list(DEFAULT_FIELDS[kind]), check=_fields))
    if not fields:
        raise t.err("fields", "must name at least one event field")
    file = t.get("file", str, None)
    url = t.get("url", str, None)
    if (file is None) == (url is None):
        raise t.err("file" if file is None else "url", "set exactly one of file (a CSV/JSON/list file) "
                                                        "or url (an HTTP lookup)")
    default_conf = 75 if t.data.get("format") == "misp" else 50
    opts = Opts(
        name, kind, "csv",
        key_columns=t.get("key_columns", list, [], check=_strs),
        columns=t.get("columns", dict, {}, check=lambda d: _strs(list(d.values()))),
        confidence=t.get("confidence", int, default_conf, check=lambda v: None if 0 <= v <= 100 else (
            _ for _ in ()).throw(ValueError(f"must be 0-100, not {v}"))),
        source=t.get("source", str, None),
        tags=t.get("tags", list, [], check=_strs),
        include_non_ids=t.get("include_non_ids", bool, False),
        min_rows=t.get("min_rows", int, 1, check=_non_negative),
        max_cves=t.get("max_cves", int, 20, check=_non_negative),
        extra_columns=t.get("extra_columns", list, [], check=_strs),
    )
    bad_cols = sorted(set(opts.columns) - {"key", "owner", "business_unit", "criticality", "crown_jewel", "name",
                                            "cve", "cvss", "type", "source", "confidence", "tags"})
    if bad_cols:
        raise t.err("columns", f"unknown attribute {bad_cols[0]!r} (owner, business_unit, criticality, crown_jewel, "
                               f"name, cve, cvss, type, source, confidence, tags, key)")
    lc = LookupConfig(name=name, kind=kind, fields=fields, opts=opts)
    if file is not None:
        p = Path(os.path.expandvars(file)).expanduser()
        p = p if p.is_absolute() else base_dir / p
        ext = p.suffix.lower()
        fmt = t.get("format", str, {".csv": "csv", ".json": "json", ".txt": "list", ".list": "list"}.get(ext),
                    choices=FORMATS)
        if fmt is None:
            raise t.err("format", f"cannot tell the format from {p.name!r}: set format to one of {', '.join(FORMATS)}")
        if fmt in ("misp", "list") and kind != "ti":
            raise t.err("format", f"{fmt} files hold threat intelligence: use kind = \"ti\"")
        if opts.include_non_ids and fmt != "misp":
            raise t.err("include_non_ids", "applies to format = \"misp\" only")
        opts.format = fmt
        lc.file, lc.format = p, fmt
        if not p.is_file():
            raise t.err("file", f"file {str(p)!r} does not exist")
        lc.table = _file_table(t, name, p, opts)
    else:
        if not re.match(r"https?://", url):
            raise t.err("url", f"{url!r} must start with http:// or https://")
        if "{value}" not in url:
            raise t.err("url", "must contain {value} (where the looked-up value goes)")
        headers = t.get("headers", dict, {}, check=lambda d: _strs(list(d.values())))
        token, _src = _read_secret(t, "token_env", "token_file", base_dir)
        theader = t.get("token_header", str, "Authorization")
        tprefix = t.get("token_prefix", str, "Bearer ")
        if token:
            headers = {**headers, theader: tprefix + token}
        lc.url = url
        lc.http = dict(
            timeout=t.get("timeout", float, 1.0, check=_positive),
            ttl=t.get("ttl", float, 300.0, check=_positive),
            negative_ttl=t.get("negative_ttl", float, 60.0, check=_non_negative),
            failures=t.get("failures", int, 3, check=_positive),
            cooldown=t.get("cooldown", float, 30.0, check=_positive),
            headers=headers,
            result=t.get("result", str, None),
            max_entries=t.get("max_entries", int, 100_000, check=_positive),
            max_pending=t.get("max_pending", int, 1000, check=_positive),
            concurrency=t.get("concurrency", int, 2, check=lambda v: None if 1 <= v <= 16 else (
                _ for _ in ()).throw(ValueError(f"must be 1-16, not {v}"))),
        )
        for k in ("format", "key_columns", "include_non_ids", "min_rows"):
            if k in t.data:
                raise t.err(k, "applies to file lookups only")
    t.finish()
    return lc






def _triage(t) -> TriageConfig:
    c = TriageConfig()
    c.enabled = t.get("enabled", bool, True)
    c.mode = t.get("mode", str, "suggest", choices=MODES)
    c.match_text = t.get("match", str, DEFAULT_TRIAGE_MATCH)
    c.match = _rule(t, "match", c.match_text)
    c.risk_weight = t.get("risk_weight", float, 1.0, check=_non_negative)
    cp = t.get("criticality_points", list, list(c.criticality_points))
    if len(cp) != 5 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in cp):
        raise t.err("criticality_points", "must be 5 numbers: the points for criticality 1, 2, 3, 4 and 5")
    c.criticality_points = tuple(float(x) for x in cp)
    c.crown_jewel_points = t.get("crown_jewel_points", float, 15.0)
    cv = t.get("cvss_points", list, [list(x) for x in c.cvss_points])
    try:
        pairs = tuple((float(a), float(b)) for a, b in cv)
        if any(isinstance(x, bool) for p in cv for x in p) or any(not 0 <= a <= 10 for a, _ in pairs):
            raise ValueError
    except (TypeError, ValueError):
        raise t.err("cvss_points", "must be a list of [minimum CVSS 0-10, points] pairs") from None
    c.cvss_points = tuple(sorted(pairs, key=lambda p: -p[0]))
    c.ti_points = t.get("ti_points", float, 25.0)
    th = t.table("thresholds")
    vals = []
    for sev, default in c.thresholds:
        vals.append((sev, th.get(sev, float, default, check=_non_negative)))
    th.finish()
    if any(vals[i][1] < vals[i + 1][1] for i in range(len(vals) - 1)):
        raise t.err("thresholds", "must not increase from critical to low")
    c.thresholds = tuple(vals)
    c.default_owner = t.get("default_owner", str, "SOC")
    for i, d in enumerate(t.get("owners", list, [])):
        if not isinstance(d, dict):
            raise t.err("owners", f"entry {i} must be a table ([[triage.owners]])")
        s = _sub(t, f"owners[{i}]", d)
        r = OwnerRule(index=i, owner=s.get("owner", str, required=True), conditions={})
        for k in ("asset_owner", "business_unit", "tactic"):
            v = _str_or_list(s, k)
            if v is not None:
                r.conditions[k] = v
        r.crown_jewel = s.get("crown_jewel", bool, None)
        r.min_severity = s.get("min_severity", str, None, choices=SEVERITIES)
        r.match_text = s.get("match", str, None)
        if r.match_text is not None:
            r.match = _rule(s, "match", r.match_text)
        bad = set(re.findall(r"\{([^}]*)\}", r.owner)) - {"asset_owner", "business_unit"}
        if bad:
            raise s.err("owner", f"unknown placeholder {{{sorted(bad)[0]}}} (use {{asset_owner}} or {{business_unit}})")
        s.finish()
        c.owners.append(r)
    for i, d in enumerate(t.get("escalate", list, [])):
        if not isinstance(d, dict):
            raise t.err("escalate", f"entry {i} must be a table ([[triage.escalate]])")
        s = _sub(t, f"escalate[{i}]", d)
        e = EscalateRule(index=i, name=s.get("name", str, required=True))
        e.min_severity = s.get("min_severity", str, None, choices=SEVERITIES)
        e.min_score = s.get("min_score", float, None)
        e.match_text = s.get("match", str, None)
        if e.match_text is not None:
            e.match = _rule(s, "match", e.match_text)
        e.sinks = tuple(s.get("sinks", list, [], check=_strs))
        if e.min_severity is None and e.min_score is None and e.match is None:
            raise s.err("min_severity", "an escalation needs min_severity, min_score or match")
        s.finish()
        c.escalate.append(e)
    t.finish()
    return c


def _audit(t, base_dir: Path) -> AuditConfig:
    a = AuditConfig()
    a.enabled = t.get("enabled", bool, True)
    p = t.get("path", str, None)
    if p is not None:
        if not p:
            raise t.err("path", "must not be empty")
        pp = Path(os.path.expandvars(p)).expanduser()
        a.path = pp if pp.is_absolute() else base_dir / pp
    a.max_bytes = t.get("max_bytes", int, a.max_bytes, check=lambda v: None if v >= 4096 else (
        _ for _ in ()).throw(ValueError(f"must be at least 4096, not {v}")))
    a.keep = t.get("keep", int, a.keep, check=_non_negative)
    a.flush_interval = t.get("flush_interval", float, 1.0, check=lambda v: None if 0 < v <= 1 else (
        _ for _ in ()).throw(ValueError(f"must be > 0 and <= 1 second, not {v}")))
    a.max_pending = t.get("max_pending", int, a.max_pending, check=_positive)
    t.finish()
    return a


def _summary(t, base_dir: Path) -> SummaryConfig:
    s = SummaryConfig()
    s.enabled = t.get("enabled", bool, False)
    s.url = t.get("url", str, None, required=s.enabled)
    if s.url is not None and not re.match(r"https?://", s.url):
        raise t.err("url", f"{s.url!r} must start with http:// or https://")
    s.model = t.get("model", str, None, required=s.enabled)
    if s.enabled:
        s.api_key, s.api_key_source = _read_secret(t, "api_key_env", "api_key_file", base_dir)
    else:
        t.get("api_key_env", str, None)
        t.get("api_key_file", str, None)
    s.timeout = t.get("timeout", float, s.timeout, check=_positive)
    s.max_calls_per_minute = t.get("max_calls_per_minute", int, s.max_calls_per_minute, check=_non_negative)
    s.max_tokens_per_minute = t.get("max_tokens_per_minute", int, s.max_tokens_per_minute, check=_non_negative)
    s.max_tokens = t.get("max_tokens", int, s.max_tokens, check=_positive)
    s.min_severity = t.get("min_severity", str, s.min_severity, choices=SEVERITIES)
    s.wait = t.get("wait", float, s.wait, check=_within(0, 120, "seconds"))
    sinks = t.get("sinks", list, None, check=_strs)
    s.sinks = tuple(sinks) if sinks is not None else None
    s.system_prompt = t.get("system_prompt", str, s.system_prompt)
    s.cache_size = t.get("cache_size", int, s.cache_size, check=_positive)
    s.failure_ttl = t.get("failure_ttl", float, s.failure_ttl, check=_non_negative)
    t.finish()
    return s


def read_config(tables: dict, base_dir) -> EnrichConfig:
    """The hook relay/config.py calls: ``{table name: _Table}`` -> :class:`EnrichConfig`."""
    base_dir = Path(base_dir)
    any_t = next(iter(tables.values()))
    live = getattr(any_t, "secrets", True)
    version = hashlib.sha256(orjson.dumps({k: t.data for k, t in tables.items()}, option=orjson.OPT_SORT_KEYS,
                                          default=str)).hexdigest()[:12]
    cfg = EnrichConfig(file=any_t.file, lookups={}, version=version, live=live)
    lt = tables.get("lookups")
    if lt is not None:
        cfg.check_interval = lt.get("check_interval", float, 1.0, check=_positive)
        cfg.memo_size = lt.get("memo_size", int, 65536, check=_non_negative)
        for name, v in lt.data.items():
            if isinstance(v, dict):
                cfg.lookups[name] = _lookup(lt.table(name), name, base_dir, live)
        lt.finish()
    if "triage" in tables:
        tc = _triage(tables["triage"])
        cfg.triage = tc if tc.enabled else None
    if "audit" in tables:
        cfg.audit = _audit(tables["audit"], base_dir)
    if "summary" in tables:
        cfg.summary = _summary(tables["summary"], base_dir)
        if cfg.summary.enabled and cfg.triage is None:
            raise tables["summary"].err("enabled", "the summary is written for triaged events: configure [triage]")
    return cfg

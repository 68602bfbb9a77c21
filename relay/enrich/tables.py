"""Lookup tables from files: CSV, JSON, MISP CSV exports and plain one-per-line lists.

A table is loaded into an :class:`Index`:

* exact keys (host names, domains, file hashes, URLs), lower-cased, in one dict: O(1);
* IP addresses and CIDR networks as integers in one dict per prefix length, tried from
  the longest prefix to the shortest (longest-prefix match; a /32 is just the longest
  prefix).  A lookup costs one dict probe per distinct prefix length in the table
  (typically a handful), and every answer is memoised per value (bounded), so the
  addresses that repeat in a busy network cost one dict probe.

Each entry maps to ``(key, attrs)``: the key as written in the table (``10.20.0.0/16``)
and a dict of attributes that depends on the table kind (``asset``, ``vuln``, ``ti``);
identical attribute dicts are shared (interned) to keep 100k-row tables small.

:class:`FileTable` keeps the current index and swaps it atomically when the file changes;
a file that cannot be read or parsed keeps the last good index, and the reason is logged
and counted (``relay_lookup_reloads_total{result="failed"}``).
"""
from __future__ import annotations

import csv
import hashlib
import io
import ipaddress
import logging
import os
import re
import socket
import threading
import time
from pathlib import Path

import orjson

from ..metrics import REGISTRY

log = logging.getLogger("relay.enrich")

__all__ = ["Index", "FileTable", "TableError", "parse_ip", "load_rows", "KINDS", "FORMATS", "MISS"]

KINDS = ("asset", "vuln", "ti")
FORMATS = ("csv", "json", "misp", "list")
MISS = None

_pton = socket.inet_pton
_AF4, _AF6 = socket.AF_INET, socket.AF_INET6
_from = int.from_bytes
_V6 = 1 << 128   # v6 integers are tagged with this bit so both families share one key space


class TableError(ValueError):
    """The file as a whole cannot be used (the last good table is kept)."""


class RowError(ValueError):
    """One row is unusable (skipped and counted)."""


def parse_ip(s: str):
    """'10.0.0.1' -> int; '2001:db8::1' -> int | 2**128; IPv4-mapped v6 -> the v4 int;
    anything else -> None.  ~0.3 us (inet_pton), no ipaddress objects."""
    if ":" in s:
        if "%" in s:
            s = s.split("%", 1)[0]
        try:
            n = _from(_pton(_AF6, s), "big")
        except (OSError, ValueError):   # ValueError: an embedded NUL
            return None
        if n >> 32 == 0xFFFF:
            return n & 0xFFFFFFFF
        return n | _V6
    try:
        return _from(_pton(_AF4, s), "big")
    except (OSError, ValueError):
        return None


def _net_str(n: int, plen: int) -> str:
    if n >= _V6:
        return f"{ipaddress.IPv6Address(n ^ _V6)}/{plen}"
    return f"{ipaddress.IPv4Address(n)}/{plen}"


class Index:
    """Exact keys + longest-prefix IP match.  ``get(value)`` -> ``(key, attrs)`` or None."""

    __slots__ = ("exact", "v4", "v6", "size", "memo", "memo_max", "subdomains", "shortname")

    def __init__(self, *, subdomains: bool = False, shortname: bool = False, memo_max: int = 65536) -> None:
        self.exact: dict = {}
        self.v4: list = []      # [(shift, {net >> shift: entry})] longest prefix first
        self.v6: list = []
        self.size = 0
        self.memo: dict = {}
        self.memo_max = memo_max
        self.subdomains = subdomains    # a.b.evil.com also finds evil.com (threat intel domains)
        self.shortname = shortname      # web01.corp.example also finds web01 (asset host names)

    # ------------------------------------------------------------------ build
    def add(self, key: str, attrs, merge=None) -> None:
        """Add one entry; ``merge(old_attrs, new_attrs) -> attrs`` for a key seen before
        (default: the later row wins)."""
        key = key.strip()
        if not key:
            raise RowError("empty key")
        if "/" in key and (key[0].isdigit() or ":" in key):
            addr, _, p = key.partition("/")
            n = parse_ip(addr)
            if n is None or not p.isdigit():
                raise RowError(f"{key!r} is not a CIDR network")
            width = 128 if n >= _V6 else 32
            plen = int(p)
            if ":" in addr and n < _V6:   # ::ffff:a.b.c.d/104 -> a.b.c.d/8
                plen -= 96
            if not 0 <= plen <= width:
                raise RowError(f"{key!r}: prefix length {p} is not 0-{width}")
            shift = width - plen
            n = ((n & ~_V6) >> shift << shift) | (n & _V6)   # strict=False: host bits cleared
            self._add_net(n, plen, width, key, attrs, merge)
            return
        n = parse_ip(key)
        if n is not None:
            self._add_net(n, 128 if n >= _V6 else 32, 128 if n >= _V6 else 32, key, attrs, merge)
            return
        k = key.lower().rstrip(".")
        old = self.exact.get(k)
        if old is not None:
            if merge is not None:
                attrs = merge(old[1], attrs)
        else:
            self.size += 1
        self.exact[k] = (key, attrs)

    def _add_net(self, n: int, plen: int, width: int, key: str, attrs, merge) -> None:
        levels = self.v6 if n >= _V6 else self.v4
        shift = width - plen
        for s, d in levels:
            if s == shift:
                break
        else:
            d = {}
            levels.append((shift, d))
            levels.sort(key=lambda t: t[0])   # smallest shift = longest prefix first
        k = n >> shift
        old = d.get(k)
        if old is not None:
            if merge is not None:
                attrs = merge(old[1], attrs)
        else:
            self.size += 1
        d[k] = (key, attrs)

    # ------------------------------------------------------------------ query
    def get(self, value: str):
        memo = self.memo
        hit = memo.get(value, memo)
        if hit is not memo:
            return hit
        out = self._find(value)
        if len(memo) >= self.memo_max:
            memo.clear()
        memo[value] = out
        return out

    def _find(self, value: str):
        c = value[:1]
        if c.isdigit() or ":" in value:
            n = parse_ip(value)
            if n is not None:
                if n >= _V6:
                    for shift, d in self.v6:
                        e = d.get(n >> shift)
                        if e is not None:
                            return e
                else:
                    for shift, d in self.v4:
                        e = d.get(n >> shift)
                        if e is not None:
                            return e
                return None
        exact = self.exact
        if not exact:
            return None
        k = value.strip().lower().rstrip(".")
        e = exact.get(k)
        if e is not None:
            return e
        if "." in k:
            if self.shortname:
                e = exact.get(k.split(".", 1)[0])
                if e is not None:
                    return e
            if self.subdomains:
                parts = k.split(".")
                for i in range(1, len(parts) - 1):
                    e = exact.get(".".join(parts[i:]))
                    if e is not None:
                        return e
        return None

    def matched_key(self, value: str, entry) -> str:
        return entry[0]


# =============================================================================== row readers

_TRUE = frozenset(("1", "true", "yes", "y", "t", "x", "on"))
_FALSE = frozenset(("", "0", "false", "no", "n", "f", "off", "-"))

ALIASES = {
    "asset": {
        "key": ("key", "cidr", "network", "subnet", "ip", "ip_address", "address", "hostname", "host", "fqdn"),
        "owner": ("owner", "owner_team", "team", "support_group", "assigned_group", "owned_by"),
        "business_unit": ("business_unit", "bu", "department", "business_service"),
        "criticality": ("criticality", "crit", "business_criticality", "asset_criticality"),
        "crown_jewel": ("crown_jewel", "crownjewel", "crown_jewels", "is_crown_jewel"),
        "name": ("name", "asset", "asset_name", "display_name"),
    },
    "vuln": {
        "key": ("host", "hostname", "ip", "ip_address", "asset", "dns_name", "key"),
        "cve": ("cve", "cve_id", "cves", "vulnerability"),
        "cvss": ("cvss", "cvss3", "cvss_score", "cvss3_base_score", "cvss_base_score", "score"),
    },
    "ti": {
        "key": ("indicator", "value", "ioc", "key", "ip", "domain", "sha256", "hash", "url"),
        "type": ("type", "indicator_type", "ioc_type"),
        "source": ("source", "feed", "provider"),
        "confidence": ("confidence", "score"),
        "tags": ("tags", "tag", "labels"),
    },
}


class Opts:
    """Loader options of one table (from ``[lookups.<name>]``)."""

    def __init__(self, name: str, kind: str, fmt: str, *, key_columns=(), columns=None, confidence: int = 50,
                 source: str | None = None, tags=(), include_non_ids: bool = False, min_rows: int = 1,
                 max_cves: int = 20, extra_columns=()) -> None:
        self.name, self.kind, self.format = name, kind, fmt
        self.key_columns = tuple(c.lower() for c in key_columns)
        self.columns = {k: v.lower() for k, v in (columns or {}).items()}
        self.confidence = confidence
        self.source = source or name
        self.tags = tuple(tags)
        self.include_non_ids = include_non_ids
        self.min_rows = min_rows
        self.max_cves = max_cves
        self.extra_columns = tuple(c.lower() for c in extra_columns)
        self.resolved = None   # alias -> column, per CSV header (set while loading)

    def signature(self) -> tuple:
        return (self.kind, self.format, self.key_columns, tuple(sorted(self.columns.items())), self.confidence,
                self.source, self.tags, self.include_non_ids, self.min_rows, self.max_cves, self.extra_columns)


def _col(opts: Opts, row: dict, name: str):
    c = opts.columns.get(name)
    if c is not None:
        return row.get(c)
    cols = opts.resolved
    if cols is not None:   # CSV: the header decided which alias is used
        c = cols.get(name)
        return None if c is None else row.get(c)
    for a in ALIASES[opts.kind].get(name, ()):
        v = row.get(a)
        if v not in (None, ""):
            return v
    return None


def _resolve(opts: Opts, header) -> dict:
    out = {}
    for name, aliases in ALIASES[opts.kind].items():
        for a in aliases:
            if a in header:
                out[name] = a
                break
    return out


def _key_columns(opts: Opts, header) -> tuple:
    if opts.key_columns:
        missing = [c for c in opts.key_columns if c not in header]
        if missing:
            raise TableError(f"key column(s) {', '.join(missing)} not found (columns: {', '.join(header)})")
        return opts.key_columns
    if "key" in opts.columns:
        if opts.columns["key"] not in header:
            raise TableError(f"key column {opts.columns['key']!r} not found (columns: {', '.join(header)})")
        return (opts.columns["key"],)
    if opts.kind == "asset":   # a row may carry several keys (an IP and a host name)
        cols = tuple(c for c in ALIASES["asset"]["key"] if c in header)
    else:
        cols = tuple(c for c in ALIASES[opts.kind]["key"] if c in header)[:1]
    if not cols:
        raise TableError(f"no key column: expected one of {', '.join(ALIASES[opts.kind]['key'])} "
                         f"(columns: {', '.join(header) or 'none'})")
    return cols


def _int(v, lo: int, hi: int, what: str):
    if v is None or v == "":
        return None
    if isinstance(v, bool):
        raise RowError(f"{what} {v!r} is not a number")
    try:
        n = int(float(v)) if not isinstance(v, int) else v
    except (TypeError, ValueError):
        raise RowError(f"{what} {v!r} is not a number") from None
    if not lo <= n <= hi:
        raise RowError(f"{what} {n} is not {lo}-{hi}")
    return n


def _float(v, lo: float, hi: float, what: str):
    if v is None or v == "":
        return None
    if isinstance(v, bool):
        raise RowError(f"{what} {v!r} is not a number")
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise RowError(f"{what} {v!r} is not a number") from None
    if not lo <= x <= hi:
        raise RowError(f"{what} {x} is not {lo:g}-{hi:g}")
    return x


def _bool(v) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower() if v is not None else ""
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise RowError(f"{v!r} is not a yes/no value")


def _tags(v) -> tuple:
    if v is None or v == "":
        return ()
    if isinstance(v, (list, tuple)):
        return tuple(str(x) for x in v if x not in (None, ""))
    return tuple(t.strip() for t in re.split(r"[;,|]", str(v)) if t.strip())


class _Interner:
    def __init__(self) -> None:
        self.seen: dict = {}

    def __call__(self, d: dict) -> dict:
        k = tuple(d.items())
        got = self.seen.get(k)
        if got is None:
            self.seen[k] = got = d
        return got


def _asset_attrs(opts: Opts, row: dict, intern) -> dict:
    d = {"owner": _str(_col(opts, row, "owner")), "business_unit": _str(_col(opts, row, "business_unit")),
         "criticality": _int(_col(opts, row, "criticality"), 1, 5, "criticality"),
         "crown_jewel": _bool(_col(opts, row, "crown_jewel")), "name": _str(_col(opts, row, "name"))}
    for c in opts.extra_columns:
        v = row.get(c)
        if v not in (None, ""):
            d[c] = v
    d["table"] = opts.name
    return intern(d)


def _str(v):
    if v is None:
        return None
    s = str(v).strip()
    return s or None


_HEX = re.compile(r"[0-9a-fA-F]+\Z")
_DOMAIN = re.compile(r"(?=.{1,253}\Z)([a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}\.?\Z", re.I)


def indicator_type(v: str) -> str:
    if "/" in v and (v[:1].isdigit() or ":" in v.split("/", 1)[0]):
        return "cidr"
    if parse_ip(v) is not None:
        return "ip"
    if "://" in v:
        return "url"
    if _HEX.match(v):
        return {32: "md5", 40: "sha1", 64: "sha256"}.get(len(v), "hash")
    if _DOMAIN.match(v):
        return "domain"
    return "other"


def _ti_attrs(opts: Opts, indicator: str, typ, source, confidence, tags) -> dict:
    return {"match": True, "indicator": indicator, "type": typ or indicator_type(indicator),
            "source": source or opts.source,
            "confidence": opts.confidence if confidence is None else confidence,
            "tags": list(tags or opts.tags), "table": opts.name}


def _ti_merge(old: dict, new: dict) -> dict:
    return new if (new.get("confidence") or 0) >= (old.get("confidence") or 0) else old


# MISP attribute types -> (our type, which part of a composite value is the indicator)
_MISP = {"ip-src": "ip", "ip-dst": "ip", "ip-src|port": "ip", "ip-dst|port": "ip", "domain": "domain",
         "hostname": "domain", "domain|ip": "domain", "url": "url", "uri": "url", "md5": "md5", "sha1": "sha1",
         "sha256": "sha256", "filename|md5": "md5", "filename|sha1": "sha1", "filename|sha256": "sha256",
         "email-src": "email", "email-dst": "email"}


def load_rows(data: bytes, opts: Opts) -> tuple[Index, int, list[str]]:
    """Parse a whole file -> (index, bad row count, first few bad-row reasons).
    Raises :class:`TableError` when the file as a whole is unusable."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise TableError(f"not UTF-8 at byte {e.start}") from None
    kind = opts.kind
    index = Index(subdomains=kind == "ti", shortname=kind in ("asset", "vuln"))
    bad: list[str] = []
    nbad = 0
    intern = _Interner()
    vulns: dict = {}   # key -> {cve: cvss}

    def add(key, attrs, line):
        nonlocal nbad
        try:
            index.add(key, attrs, _ti_merge if kind == "ti" else None)
        except RowError as e:
            nbad += 1
            if len(bad) < 5:
                bad.append(f"{line}: {e}")

    def row_error(line, e):
        nonlocal nbad
        nbad += 1
        if len(bad) < 5:
            bad.append(f"{line}: {e}")

    def take(row: dict, line: str, keys: tuple):
        if kind == "asset":
            attrs = _asset_attrs(opts, row, intern)
            for kc in keys:
                v = row.get(kc)
                if v not in (None, ""):
                    add(str(v), attrs, line)
        elif kind == "vuln":
            cve = _str(_col(opts, row, "cve"))
            cvss = _float(_col(opts, row, "cvss"), 0.0, 10.0, "cvss")
            if cve is None:
                raise RowError("no CVE id")
            for kc in keys:
                v = _str(row.get(kc))
                if v:
                    k = v.lower()
                    d = vulns.get(k)
                    if d is None:
                        d = vulns[k] = ({}, v)
                    prev = d[0].get(cve)
                    d[0][cve] = cvss if prev is None or (cvss or 0) > prev else prev
        else:
            ind = _str(row.get(keys[0]))
            if ind is None:
                raise RowError("empty indicator")
            conf = _int(_col(opts, row, "confidence"), 0, 100, "confidence")
            add(ind, _ti_attrs(opts, ind, _str(_col(opts, row, "type")), _str(_col(opts, row, "source")), conf,
                               _tags(_col(opts, row, "tags"))), line)

    fmt = opts.format
    if fmt in ("csv", "misp"):
        reader = csv.reader(io.StringIO(text, newline=""))
        try:
            header = next(reader)
        except StopIteration:
            header = []
        except csv.Error as e:
            raise TableError(f"not CSV: {e}") from None
        header = [h.strip().lower() for h in header]
        if fmt == "misp":
            if "type" not in header or "value" not in header:
                raise TableError(f"not a MISP CSV export: needs 'type' and 'value' columns "
                                 f"(columns: {', '.join(header) or 'none'})")
            keys = ("value",)
        else:
            keys = _key_columns(opts, header)
        opts.resolved = _resolve(opts, header)
        try:
            for row in reader:
                line = f"line {reader.line_num}"
                if not row or (len(row) == 1 and not row[0].strip()) or row[0].startswith("#"):
                    continue
                if len(row) > len(header):
                    row_error(line, f"{len(row)} fields, the header has {len(header)}")
                    continue
                r = dict(zip(header, row))
                try:
                    if fmt == "misp":
                        _misp_row(opts, r, add, line)
                    else:
                        take(r, line, keys)
                except RowError as e:
                    row_error(line, e)
        except csv.Error as e:
            raise TableError(f"CSV error at line {reader.line_num}: {e}") from None
        finally:
            opts.resolved = None
    elif fmt == "json":
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError as e:
            raise TableError(f"not JSON: {e}") from None
        items: list = []
        if isinstance(obj, list):
            items = [(None, x) for x in obj]
        elif isinstance(obj, dict):
            for k, v in obj.items():
                if isinstance(v, list):   # {"host": [{"cve":..,"cvss":..}, ...]} (vulnerabilities)
                    items.extend((k, x) for x in v)
                else:
                    items.append((k, v))
        else:
            raise TableError(f"JSON must be a list of objects or an object of objects, not {type(obj).__name__}")
        keys = None
        for i, (k, x) in enumerate(items):
            line = f"item {i}" if k is None else f"key {k!r}"
            if not isinstance(x, dict):
                row_error(line, f"must be an object, not {type(x).__name__}")
                continue
            r = {str(a).lower(): b for a, b in x.items()}
            if k is not None:
                kc = opts.columns.get("key", "key")
                r.setdefault(kc, k)
                ks = (kc,)
            else:
                try:   # JSON objects differ: each one names its own key (ip, cidr, hostname...)
                    ks = _key_columns(opts, list(r))
                except TableError as e:
                    if keys is None and i == 0:
                        raise TableError(f"{line}: {e}") from None
                    row_error(line, e)
                    continue
                keys = ks
            try:
                take(r, line, ks)
            except RowError as e:
                row_error(line, e)
    elif fmt == "list":
        for n, raw in enumerate(text.splitlines(), 1):
            s = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
            if not s:
                continue
            s = s.split()[0]
            add(s, _ti_attrs(opts, s, None, None, None, ()), f"line {n}")
    else:  # pragma: no cover - config refuses it
        raise TableError(f"unknown format {fmt!r}")

    for k, (cves, orig) in vulns.items():
        ranked = sorted(cves.items(), key=lambda t: -(t[1] or 0))
        attrs = {"max_cvss": ranked[0][1] if ranked and ranked[0][1] is not None else None,
                 "cves": [c for c, _ in ranked[:opts.max_cves]], "count": len(ranked), "table": opts.name}
        if opts.max_cves:
            attrs["cvss"] = [s for _, s in ranked[:opts.max_cves]]
        add(orig, attrs, f"host {orig!r}")
    if index.size < opts.min_rows:
        why = f"; first problems: {'; '.join(bad)}" if bad else ""
        raise TableError(f"{index.size} usable entries, fewer than min_rows = {opts.min_rows}{why}")
    return index, nbad, bad


def _misp_row(opts: Opts, r: dict, add, line: str) -> None:
    typ = (r.get("type") or "").strip().lower()
    our = _MISP.get(typ)
    if our is None:
        return   # attribute types we do not match on (filename, regkey, text...): not an error
    ids = (r.get("to_ids") or "").strip().lower()
    if ids and ids not in _TRUE and not opts.include_non_ids:
        return
    value = (r.get("value") or "").strip()
    if "|" in typ:
        a, _, b = value.partition("|")
        value = b if typ.startswith("filename|") else a
    if not value:
        raise RowError("empty value")
    tags = _tags(r.get("attribute_tag") or r.get("tags"))
    conf = opts.confidence
    for t in tags:   # MISP confidence taxonomy: misp:confidence-level="..."
        m = re.search(r'confidence-level="?([a-z-]+)', t)
        if m:
            conf = {"completely-confident": 100, "usually-confident": 75, "fairly-confident": 50,
                    "rarely-confident": 25, "unconfident": 0}.get(m.group(1), conf)
    ev = (r.get("event_id") or "").strip()
    source = f"{opts.source} event {ev}" if ev else opts.source
    add(value, {"match": True, "indicator": value, "type": our, "source": source, "confidence": conf,
                "tags": list(tags), "category": r.get("category") or None, "table": opts.name}, line)


# =============================================================================== file tables

def _sig(path: Path):
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class FileTable:
    """One ``[lookups.<name>]`` file.  ``index`` is the current good index (swapped whole);
    :meth:`check` reloads when the file changed (stat), keeping the last good index on failure."""

    def __init__(self, name: str, path: Path, opts: Opts) -> None:
        self.name, self.path, self.opts = name, path, opts
        self.index: Index | None = None
        self.version: str | None = None      # sha256 of the loaded file, 12 hex digits
        self.sig = None
        self.failed_sig = None
        self.error: str | None = None
        self.bad_rows = 0
        self.loaded_at = 0.0
        self._lock = threading.Lock()
        self._ok = REGISTRY.counter("relay_lookup_reloads_total", table=name, result="ok")
        self._failed = REGISTRY.counter("relay_lookup_reloads_total", table=name, result="failed")
        REGISTRY.gauge("relay_lookup_entries", fn=lambda: self.index.size if self.index else 0, table=name)

    def load(self) -> None:
        """Load now; raises TableError (first load at start-up: a config error)."""
        with self._lock:
            sig = _sig(self.path)
            data = self.path.read_bytes()
            index, nbad, bad = load_rows(data, self.opts)
            self._swap(index, data, sig, nbad, bad)

    def _swap(self, index, data, sig, nbad, bad) -> None:
        self.index = index
        self.version = hashlib.sha256(data).hexdigest()[:12]
        self.sig, self.failed_sig, self.error = sig, None, None
        self.bad_rows = nbad
        self.loaded_at = time.time()
        self._ok.value += 1
        if nbad:
            log.warning("lookups.%s: %s: %d bad row(s) skipped: %s", self.name, self.path, nbad, "; ".join(bad))

    def check(self, force: bool = False) -> bool:
        """Reload when the file changed.  -> True when a new index was swapped in."""
        try:
            sig = _sig(self.path)
        except OSError as e:
            sig = ("missing", str(e))
        if not force and (sig == self.sig or sig == self.failed_sig):
            return False
        if not self._lock.acquire(blocking=False):
            return False
        try:
            try:
                if sig[0] == "missing":
                    raise TableError(sig[1])
                data = self.path.read_bytes()
                index, nbad, bad = load_rows(data, self.opts)
            except (OSError, TableError) as e:
                self.failed_sig = sig
                self.error = str(e)
                self._failed.value += 1
                log.error("lookups.%s: %s: cannot reload, keeping the last good table (%d entries, version %s): %s",
                          self.name, self.path, self.index.size if self.index else 0, self.version, e)
                return False
            old = self.index.size if self.index else 0
            self._swap(index, data, sig, nbad, bad)
            log.info("lookups.%s: reloaded %s: %d entries (was %d), version %s", self.name, self.path,
                     index.size, old, self.version)
            return True
        finally:
            self._lock.release()

    def get(self, value: str):
        return self.index.get(value)

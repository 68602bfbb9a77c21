"""JSON object -> canonical fields (docs/schema.md), declaratively: the map language of the
``http`` source (docs/config.md, "The map language") and its presets.  Pure: no I/O.

A map is a table of canonical field -> where its value comes from::

    vendor = "Acme"                             # vendor, product, kind: literal text
    product = "EDR"
    dedup_key = "acme:{alert.id|alert.uuid}"    # a template: {path}, alternatives with |
    name = "alert.title"                        # any other field: a JSON path ...
    src_ip = ["alert.src", 'events[0]."source.ip"']      # ... or paths, the first present wins
    risk_score = { path = "alert.score", convert = "score", default = 50 }
    host = { template = "{device.name}.{device.domain}" }
    [extra]                                     # extra.<key>: the same forms
    tenant = "customer.name"

Paths use the rule language's syntax (docs/rules.md): ``a.b``, ``a[0].b``, ``a."b.c"`` (a key
with dots or other characters, as Sekoia's ECS event keys ``"source.ip"``).  A table takes
``path`` (one or a list), ``value`` (literal), ``template``, ``default`` and ``convert``:
``str``, ``int``, ``float``, ``bool``, ``lower``, ``upper``, ``score`` (0-100, clamped),
``severity`` (a name: ``info``, ``Medium``, ``crit``, syslog level names... or a 0-100 score,
to the canonical band), ``time`` (ISO 8601, or epoch seconds/ms/us/ns by magnitude),
``iso`` (ISO 8601 text only), ``epoch_s``, ``epoch_ms``.  A value that does not convert is
left empty with a note, never an error: a map never refuses an event.

After mapping, the event is completed as every normaliser completes it: ``occurred`` and
``occurred_unix`` from the mapped time (else the time received, with a note); ``severity``
from the mapped severity, else from ``risk_score``, else informational (with a note);
``status`` in the canonical form; ``name`` from the first line of ``description`` when not
mapped; and ``dedup_key`` from the template, or, when the template's values are missing,
``<prefix>:<blake2b-64 of the object with sorted keys>`` (so the same alert re-sent in
another key order is still one key) with a note.

Presets (:data:`PRESETS`): ``sekoia`` (the body of a Sekoia.io playbook's "Create incident on
XSOAR" block, and Sekoia alert objects), ``qradar_offense`` (an offense webhook: the same
canonical event and dedup key as the offense poller, :func:`parsers.qradar.normalise_offense`)
and ``generic`` (``{"message": ...}`` and common field names; a body with none of them is kept
whole in ``description``).  A map table may start from a preset (``preset = "sekoia"``) and
override its fields.
"""
from __future__ import annotations

import hashlib
import re
from typing import Any, Callable

import orjson

from parsers.qradar import normalise_offense
from parsers.schema import canonical_status, severity_from_score, time_pair, to_score

__all__ = ["Mapper", "MapError", "compile_map", "parse_path", "PRESETS", "FIELDS", "CONVERSIONS", "LITERAL_FIELDS"]

#: The canonical fields in their fixed order (docs/schema.md section 1).
FIELDS = ("kind", "vendor", "product", "id", "dedup_key", "event", "name", "description", "risk_score",
          "severity", "status", "occurred", "occurred_unix", "src_ip", "dst_ip", "host", "user", "tactic",
          "tactic_id", "technique", "technique_id", "url", "extra")
#: Fields whose plain string is literal text (a template for ``dedup_key``), not a path.
LITERAL_FIELDS = ("kind", "vendor", "product")
#: Keys of a map table that are not canonical fields.
MAP_KEYS = ("preset", "console_url")
_MAPPABLE = tuple(f for f in FIELDS if f not in ("occurred_unix", "extra"))
_SPEC_KEYS = ("path", "value", "template", "default", "convert")


class MapError(ValueError):
    """A map that cannot be compiled; ``where`` is the key path inside the map table."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}" if where else message)
        self.where, self.message = where, message


# ------------------------------------------------------------------------------ paths

_NAME = re.compile(r"[A-Za-z_@$][A-Za-z0-9_@$\-]*")


def parse_path(text: str) -> tuple:
    """``a.b[0]."c.d"`` -> ("a", "b", 0, "c.d").  Raises ValueError naming the position."""
    s = text.strip()
    segs: list = []
    i, n = 0, len(s)
    if not s:
        raise ValueError("empty path")
    expect_name = True
    while i < n:
        c = s[i]
        if expect_name:
            if c in "\"'":
                j = s.find(c, i + 1)
                if j < 0:
                    raise ValueError(f"unterminated quote at {i + 1} in {text!r}")
                segs.append(s[i + 1:j])
                i = j + 1
            else:
                m = _NAME.match(s, i)
                if not m:
                    raise ValueError(f"a name or \"quoted name\" expected at {i + 1} in {text!r}")
                segs.append(m.group())
                i = m.end()
            expect_name = False
            continue
        if c == ".":
            expect_name = True
            i += 1
        elif c == "[":
            j = s.find("]", i)
            inner = s[i + 1:j] if j > 0 else ""
            if j < 0 or not re.fullmatch(r"-?\d+", inner.strip()):
                raise ValueError(f"[index] with an integer expected at {i + 1} in {text!r}")
            segs.append(int(inner))
            i = j + 1
        else:
            raise ValueError(f"'.' or '[' expected at {i + 1} in {text!r}")
    if expect_name:
        raise ValueError(f"path ends with '.' in {text!r}")
    return tuple(segs)


def _walk(obj, segs: tuple):
    for s in segs:
        if s.__class__ is int:
            if obj.__class__ is list and -len(obj) <= s < len(obj):
                obj = obj[s]
            else:
                return None
        elif obj.__class__ is dict:
            obj = obj.get(s)
            if obj is None:
                return None
        else:
            return None
    return obj


def _present(v) -> bool:
    return v is not None and v != "" and v != [] and v != {}


# ------------------------------------------------------------------------------ conversions

_SEVERITY_NAMES = {
    "informational": "informational", "info": "informational", "information": "informational",
    "debug": "informational", "notice": "low", "none": "informational", "unknown": "informational",
    "low": "low", "minor": "low", "medium": "medium", "moderate": "medium", "med": "medium",
    "warning": "medium", "warn": "medium", "high": "high", "major": "high", "important": "high",
    "error": "high", "err": "high", "critical": "critical", "crit": "critical", "urgent": "critical",
    "severe": "critical", "alert": "critical", "emerg": "critical", "emergency": "critical", "fatal": "critical",
}


def _c_str(v):
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return orjson.dumps(v).decode()


def _c_int(v):
    if isinstance(v, bool):
        raise ValueError
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError
        return int(v)
    if isinstance(v, str):
        t = v.strip()
        try:
            return int(t)
        except ValueError:
            return _c_int(float(t))
    raise ValueError


def _c_float(v):
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ValueError
    f = float(v)
    if f != f or f in (float("inf"), float("-inf")):
        raise ValueError
    return f


def _c_bool(v):
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return v != 0
    if isinstance(v, str) and v.strip().lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
        return v.strip().lower() in ("true", "yes", "1", "on")
    raise ValueError


def _c_lower(v):
    return _c_str(v).lower()


def _c_upper(v):
    return _c_str(v).upper()


def _c_score(v):
    s = to_score(v)
    if s is None:
        raise ValueError
    return s


def _c_severity(v):
    if isinstance(v, str):
        band = _SEVERITY_NAMES.get(v.strip().lower())
        if band is not None:
            return band
    s = to_score(v)
    if s is None:
        raise ValueError
    return severity_from_score(s)


def _c_time(v):
    iso, unix = time_pair(v)
    if iso is None:
        raise ValueError
    return iso, unix


def _c_iso(v):
    if not isinstance(v, str) or v.strip().lstrip("-").replace(".", "", 1).isdigit():
        raise ValueError
    return _c_time(v)


def _c_epoch_ms(v):
    if isinstance(v, bool):
        raise ValueError
    if isinstance(v, str):
        v = float(v.strip())
    if not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
        raise ValueError
    from parsers.schema import iso_utc
    unix = v / 1000.0
    iso = iso_utc(unix)
    if iso is None:
        raise ValueError
    return iso, unix


def _c_epoch_s(v):
    if isinstance(v, bool):
        raise ValueError
    if isinstance(v, str):
        v = float(v.strip())
    if not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
        raise ValueError
    from parsers.schema import iso_utc
    iso = iso_utc(float(v))
    if iso is None:
        raise ValueError
    return iso, float(v)


CONVERSIONS: dict[str, Callable[[Any], Any]] = {
    "str": _c_str, "int": _c_int, "float": _c_float, "bool": _c_bool, "lower": _c_lower, "upper": _c_upper,
    "score": _c_score, "severity": _c_severity, "time": _c_time, "iso": _c_iso, "epoch_s": _c_epoch_s,
    "epoch_ms": _c_epoch_ms,
}
_TIME_CONVERSIONS = ("time", "iso", "epoch_s", "epoch_ms")
#: conversions a field gets when its map entry names none
_DEFAULT_CONVERT = {"risk_score": "score", "severity": "severity", "occurred": "time", "id": "str",
                    "name": "str", "description": "str", "status": "str", "src_ip": "str", "dst_ip": "str",
                    "host": "str", "user": "str", "url": "str", "event": "str", "tactic": "str",
                    "tactic_id": "str", "technique": "str", "technique_id": "str", "dedup_key": "str",
                    "kind": "str", "vendor": "str", "product": "str"}


# ------------------------------------------------------------------------------ templates

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def _compile_template(t: str, where: str):
    """"sekoia:{alertId|short_id}" -> (parts, wants): parts are str or tuples of alternative paths."""
    parts: list = []
    pos = 0
    for m in _PLACEHOLDER.finditer(t):
        if m.start() > pos:
            parts.append(t[pos:m.start()])
        alts = []
        for alt in m.group(1).split("|"):
            try:
                alts.append(parse_path(alt))
            except ValueError as e:
                raise MapError(where, f"template {t!r}: {e}") from None
        parts.append(tuple(alts))
        pos = m.end()
    rest = t[pos:]
    if "{" in rest or "}" in rest:
        raise MapError(where, f"template {t!r}: unbalanced braces")
    if rest:
        parts.append(rest)
    return tuple(parts)


def _render_template(parts: tuple, obj) -> str | None:
    out = []
    for p in parts:
        if p.__class__ is str:
            out.append(p)
            continue
        for segs in p:
            v = _walk(obj, segs)
            if _present(v):
                out.append(v if v.__class__ is str else _c_str(v))
                break
        else:
            return None
    return "".join(out)


# ------------------------------------------------------------------------------ compiling

class _Spec:
    __slots__ = ("paths", "value", "template", "default", "convert", "cname", "_fetch")

    def __init__(self) -> None:
        self.paths: tuple = ()
        self.value = None
        self.template = None
        self.default = None
        self.convert = None
        self.cname = None
        self._fetch = None

    @property
    def fetch(self):
        """``fetch(obj)`` -> the raw value (before default and conversion), or None: the paths
        compiled once into specialised getters (the mapping runs per event)."""
        f = self._fetch
        if f is None:
            f = self._fetch = _fetcher(self)
        return f


_EMPTYABLE = (str, list, dict)


def _walker(segs: tuple):
    """``walk(obj)`` for one path: plain dict lookups for the usual one or two names."""
    if all(x.__class__ is str for x in segs):
        if len(segs) == 1:
            (k,) = segs

            def walk1(obj):
                return obj.get(k) if obj.__class__ is dict else None
            return walk1
        if len(segs) == 2:
            a, b = segs

            def walk2(obj):
                if obj.__class__ is dict:
                    o = obj.get(a)
                    if o.__class__ is dict:
                        return o.get(b)
                return None
            return walk2
    return lambda obj: _walk(obj, segs)


def _fetcher(s: "_Spec"):
    if s.value is not None:
        value = s.value
        return lambda obj: value
    if s.template is not None:
        t = s.template
        return lambda obj: _render_template(t, obj)
    walkers = tuple(_walker(p) for p in s.paths)
    if not walkers:
        return lambda obj: None

    def fetch(obj):   # the first present value (not None, "", [] or {})
        for w in walkers:
            v = w(obj)
            if v is not None and (v.__class__ not in _EMPTYABLE or v):
                return v
        return None
    return fetch


def _compile_spec(field: str, spec, where: str) -> _Spec:
    s = _Spec()
    literal = field in LITERAL_FIELDS
    if isinstance(spec, str):
        if field == "dedup_key" or (literal and "{" in spec):
            s.template = _compile_template(spec, where)
        elif literal:
            s.value = spec
        else:
            s.paths = (_path(spec, where),)
    elif isinstance(spec, list):
        if not spec or not all(isinstance(p, str) for p in spec):
            raise MapError(where, "a list of paths must hold at least one path, each a string")
        s.paths = tuple(_path(p, f"{where}[{i}]") for i, p in enumerate(spec))
    elif isinstance(spec, dict):
        unknown = [k for k in spec if k not in _SPEC_KEYS]
        if unknown:
            raise MapError(f"{where}.{unknown[0]}", f"unknown key (known: {', '.join(_SPEC_KEYS)})")
        given = [k for k in ("path", "value", "template") if k in spec]
        if len(given) > 1:
            raise MapError(where, f"give one of path, value or template, not {' and '.join(given)}")
        if not given and "default" not in spec:
            raise MapError(where, "needs path, value, template or default")
        if "path" in spec:
            p = spec["path"]
            if isinstance(p, str):
                s.paths = (_path(p, f"{where}.path"),)
            elif isinstance(p, list) and p and all(isinstance(x, str) for x in p):
                s.paths = tuple(_path(x, f"{where}.path[{i}]") for i, x in enumerate(p))
            else:
                raise MapError(f"{where}.path", "must be a path or a list of paths")
        if "template" in spec:
            if not isinstance(spec["template"], str):
                raise MapError(f"{where}.template", "must be a string")
            s.template = _compile_template(spec["template"], f"{where}.template")
        s.value = spec.get("value")
        s.default = spec.get("default")
        if "convert" in spec:
            c = spec["convert"]
            if c not in CONVERSIONS:
                raise MapError(f"{where}.convert", f"{c!r} is not one of: {', '.join(CONVERSIONS)}")
            if field == "occurred" and c not in _TIME_CONVERSIONS:
                raise MapError(f"{where}.convert", f"occurred takes a time conversion ({', '.join(_TIME_CONVERSIONS)})")
            s.cname = c
    else:
        raise MapError(where, f"must be a path, a list of paths or a table, not {type(spec).__name__}")
    if s.cname is None:
        s.cname = _DEFAULT_CONVERT.get(field)
    s.convert = CONVERSIONS[s.cname] if s.cname else None
    return s


def _path(p: str, where: str) -> tuple:
    try:
        return parse_path(p)
    except ValueError as e:
        raise MapError(where, str(e)) from None


def _get(spec: _Spec, obj, field: str, notes: list):
    """The value of one spec for ``obj`` (converted), or None."""
    v = spec.fetch(obj)
    if v is None or v == "":
        v = spec.default
        if v is None:
            return None
    conv = spec.convert
    if conv is None:
        return v
    try:
        return conv(v)
    except (ValueError, TypeError, OverflowError):
        shown = v if isinstance(v, (str, int, float, bool)) else type(v).__name__
        notes.append(f"map: {field}: {shown!r} is not {spec.cname}; left empty"[:300])
        return None


def _bad(v, spec: _Spec, field: str, notes: list):
    shown = v if isinstance(v, (str, int, float, bool)) else type(v).__name__
    notes.append(f"map: {field}: {shown!r} is not {spec.cname}; left empty"[:300])
    return None


class Mapper:
    """A compiled map: ``mapper(obj, received) -> (fields, notes)``.  ``preset`` names the preset
    it started from (or None); ``spec`` is the map table it was compiled from (for display)."""

    def __init__(self, specs: dict, extra: dict, *, preset: str | None = None, custom: Callable | None = None,
                 spec: dict | None = None, prefix: str = "http") -> None:
        self.specs = specs            # field -> _Spec
        self.extra = extra            # extra key -> _Spec
        self.preset = preset
        self.custom = custom          # a Python normaliser (qradar_offense): obj -> fields
        self.spec = spec or {}
        self.prefix = prefix
        self._plan = None

    def __call__(self, obj, received: float | None = None) -> tuple[dict, list]:
        notes: list = []
        if self.custom is not None and obj.__class__ is dict:
            f = self.custom(obj)
            if self.specs or self.extra:          # overrides on top of the preset's normaliser
                self._apply(obj, f, notes)
            return self._finish(f, obj, received, notes), notes
        f: dict = {}
        self._apply(obj, f, notes)
        return self._finish(f, obj, received, notes), notes

    def _plans(self):
        plan = self._plan
        if plan is None:   # (name, fetch, default, convert, spec) per field, built once
            plan = self._plan = (tuple((k, sp.fetch, sp.default, sp.convert, sp) for k, sp in self.specs.items()),
                                 tuple((k, sp.fetch, sp.default, sp.convert, sp) for k, sp in self.extra.items()))
        return plan

    def _apply(self, obj, f: dict, notes: list) -> None:
        fields, extra = self._plans()
        for field, fetch, default, conv, spec in fields:   # _get, inlined: it runs per field per event
            v = fetch(obj)
            if v is None or v == "":
                v = default
            if v is not None and conv is not None:
                try:
                    v = conv(v)
                except (ValueError, TypeError, OverflowError):
                    v = _bad(v, spec, field, notes)
            if v is not None:
                f[field] = v
            elif field not in f:
                f[field] = None
        if extra:
            ex = f.get("extra")
            ex = dict(ex) if isinstance(ex, dict) else {}
            for k, fetch, default, conv, spec in extra:
                v = fetch(obj)
                if v is None or v == "":
                    v = default
                if v is not None and conv is not None:
                    try:
                        v = conv(v)
                    except (ValueError, TypeError, OverflowError):
                        v = _bad(v, spec, f"extra.{k}", notes)
                if v is not None:
                    ex[k] = v[0] if (spec.cname in _TIME_CONVERSIONS and isinstance(v, tuple)) else v
            f["extra"] = ex

    def _finish(self, f: dict, obj, received: float | None, notes: list) -> dict:
        out = dict.fromkeys(FIELDS)
        for k, v in f.items():
            if k in out:
                out[k] = v
        out["kind"] = out["kind"] or "alert"
        occ = out["occurred"]
        if isinstance(occ, tuple):
            out["occurred"], out["occurred_unix"] = occ
        elif occ is not None and out["occurred_unix"] is None:   # a preset's ISO text
            out["occurred"], out["occurred_unix"] = time_pair(occ)
        if out["occurred"] is None and received is not None:
            out["occurred"], out["occurred_unix"] = time_pair(received)
            notes.append("map: no event time in the body; the time received is used")
        rs = out["risk_score"]
        if rs is not None and not isinstance(rs, int):
            out["risk_score"] = rs = to_score(rs)
        if out["severity"] not in _BANDS:
            sev = None
            if out["severity"] is not None:
                try:
                    sev = _c_severity(out["severity"])
                except ValueError:
                    notes.append(f"map: severity {out['severity']!r} is not a severity name or score")
            if sev is None and rs is not None:
                sev = severity_from_score(rs)
            if sev is None:
                sev = "informational"
                notes.append("map: no severity or risk score; severity informational")
            out["severity"] = sev
        if out["status"] is not None:
            out["status"] = canonical_status(out["status"])
        if out["id"] is not None and not isinstance(out["id"], str):
            out["id"] = _c_str(out["id"])
        if out["description"] is None and self.preset == "generic" and obj.__class__ is dict:
            out["description"] = orjson.dumps(obj).decode()       # unmapped: the whole body kept
            notes.append("map: no message in the body; the whole body is the description")
        if not out["name"]:
            d = out["description"]
            first = d.strip().split("\n", 1)[0].strip() if isinstance(d, str) else ""
            out["name"] = first[:120] or f"{out['product'] or out['vendor'] or 'HTTP'} {out['kind']}"
        if not out["dedup_key"]:
            digest = hashlib.blake2b(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS, default=str),
                                     digest_size=8).hexdigest()
            prefix = (out["vendor"] or self.prefix).lower().replace(" ", "_")
            out["dedup_key"] = f"{prefix}:{digest}"
            if "dedup_key" in self.spec:      # the user's own template (a preset's falls back quietly)
                notes.append("map: dedup_key: a value of its template is missing; a digest of the body is used")
        ex = out["extra"]
        out["extra"] = {k: v for k, v in ex.items() if v is not None} if isinstance(ex, dict) else {}
        return out


_BANDS = frozenset(("informational", "low", "medium", "high", "critical"))


def compile_map(spec, where: str = "map") -> Mapper:
    """A preset name or a map table (see the module docstring) -> :class:`Mapper`.
    Raises :class:`MapError` naming the key."""
    if isinstance(spec, str):
        p = PRESETS.get(spec)
        if p is None:
            raise MapError(where, f"{spec!r} is not one of: {', '.join(PRESETS)} (or a [map] table)")
        if callable(p):
            return Mapper({}, {}, preset=spec, custom=p, spec={})
        m = compile_map(p, where)
        m.preset, m.spec = spec, {}
        return m
    if not isinstance(spec, dict):
        raise MapError(where, f"must be a preset name or a table, not {type(spec).__name__}")
    base: dict = {}
    custom = None
    preset = spec.get("preset")
    if preset is not None:
        if not isinstance(preset, str) or preset not in PRESETS:
            raise MapError(f"{where}.preset", f"{preset!r} is not one of: {', '.join(PRESETS)}")
        p = PRESETS[preset]
        if callable(p):
            custom = p
        else:
            base = p
    if "console_url" in spec:
        if preset != "qradar_offense":
            raise MapError(f"{where}.console_url", "only with preset = \"qradar_offense\"")
        cu = spec["console_url"]
        if not isinstance(cu, str) or not cu.startswith(("http://", "https://")):
            raise MapError(f"{where}.console_url", "must be an http(s) URL")
        custom = _qradar_offense_with(cu)
    merged = dict(base)
    merged_extra = dict(base.get("extra", {}))
    for k, v in spec.items():
        if k in MAP_KEYS:
            continue
        if k == "extra":
            if not isinstance(v, dict):
                raise MapError(f"{where}.extra", "must be a table of extra key -> path")
            merged_extra.update(v)
            continue
        if k not in _MAPPABLE:
            raise MapError(f"{where}.{k}", f"unknown field (fields: {', '.join(_MAPPABLE)}, extra; "
                                           f"and preset)")
        merged[k] = v
    merged.pop("extra", None)
    if custom is not None and not merged and not merged_extra:
        return Mapper({}, {}, preset=preset, custom=custom, spec=spec)
    specs = {k: _compile_spec(k, v, f"{where}.{k}") for k, v in merged.items()}
    extra = {k: _compile_spec(f"extra.{k}", v, f"{where}.extra.{k}") for k, v in merged_extra.items()}
    return Mapper(specs, extra, preset=preset, custom=custom, spec=spec)


# ------------------------------------------------------------------------------ presets

#: Sekoia.io: the body of a playbook's "Create incident on XSOAR" block (seed 002: name, occurred,
#: alertId, alertUrl, urgency, events) and Sekoia alert objects (title, short_id, created_at,
#: urgency.current_value, rule.name, ...).  Event keys are ECS-style flat names ("source.ip").
SEKOIA = {
    "vendor": "Sekoia",
    "product": "Sekoia.io",
    "kind": "alert",
    "dedup_key": "sekoia:{alertId|short_id|alert_short_id|uuid|alert_uuid}",
    "id": ["alertId", "short_id", "alert_short_id", "uuid", "alert_uuid"],
    "event": ["event_type"],
    "name": ["name", "title", "rule.name"],
    "description": ["description", "details", "rule.description"],
    "risk_score": ["urgency.current_value", "urgency.value", "urgency"],
    "status": ["status.name", "status"],
    "occurred": {"path": ["occurred", "created_at", "first_seen_at"], "convert": "time"},
    "src_ip": ['events[0]."source.ip"', 'events."source.ip"', 'source.ip'],
    "dst_ip": ['events[0]."destination.ip"', 'events."destination.ip"'],
    "host": ['events[0]."host.name"', 'events."host.name"', 'events[0]."host.hostname"'],
    "user": ['events[0]."user.name"', 'events."user.name"'],
    "url": ["alertUrl", "url"],
    "extra": {
        "alert_id": ["alertId", "short_id", "alert_short_id"],
        "alert_url": ["alertUrl", "url"],
        "alert_uuid": ["uuid", "alert_uuid"],
        "urgency": {"path": ["urgency.current_value", "urgency.value", "urgency"], "convert": "int"},
        "urgency_display": ["urgency.display"],
        "rule": ["rule.name"],
        "entity": ["entity.name"],
        "alert_type": ["alert_type.value"],
        "alert_category": ["alert_type.category"],
        "community_uuid": ["community_uuid"],
    },
}

#: {"message": ...} and the names generic senders use.  A body with none of them keeps its whole
#: JSON text in description (see _generic).
GENERIC = {
    "vendor": {"path": ["vendor"]},
    "product": {"path": ["product", "app", "application", "service"]},
    "kind": "alert",
    "dedup_key": "http:{id|event_id|uuid|alert_id}",
    "id": ["id", "event_id", "uuid", "alert_id"],
    "event": ["event", "event_type", "action"],
    "name": ["title", "name", "summary", "subject"],
    "description": ["message", "msg", "description", "text", "details"],
    "risk_score": ["risk_score", "score", "risk"],
    "severity": ["severity", "level", "priority"],
    "status": ["status", "state"],
    "occurred": {"path": ["timestamp", "@timestamp", "time", "occurred", "created_at", "date"], "convert": "time"},
    "src_ip": ["src_ip", "source_ip", "src", "source.ip", "client_ip"],
    "dst_ip": ["dst_ip", "destination_ip", "dst", "destination.ip", "dest_ip"],
    "host": ["host", "hostname", "host.name", "device"],
    "user": ["user", "username", "user.name", "account"],
    "url": ["url", "link"],
}


def _qradar_offense(obj: dict, console_url: str | None = None) -> dict:
    """seed 003's offense webhook: ``offense_id`` (or ``id``) and the offense object's keys ->
    the poller's canonical event (parsers.qradar.normalise_offense), so the webhook and the
    poller give one dedup key, ``qradar:<id>``.  ``event`` is ``closed`` for a closed offense,
    else ``created``."""
    o = obj
    if "id" not in obj and "offense_id" in obj:
        o = dict(obj)
        o["id"] = obj["offense_id"]
    f = normalise_offense(o, console_url=console_url)
    f["event"] = "closed" if str(o.get("status") or "").upper() == "CLOSED" else "created"
    return f


def _qradar_offense_with(console_url: str):
    return lambda obj: _qradar_offense(obj, console_url)


PRESETS: dict[str, Any] = {"sekoia": SEKOIA, "qradar_offense": _qradar_offense, "generic": GENERIC}

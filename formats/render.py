"""Canonical event -> the exact bytes a destination receives.  Pure, no I/O.

One :class:`Renderer` per sink, built once from :class:`RenderOptions`; ``render(event)``
returns the syslog line (no framing) for ``leef``, ``leef1``, ``cef``, ``rfc5424`` and
``json``.  The mapping from canonical fields (docs/schema.md) to LEEF and CEF keys is the
data of formats/vendors.py, documented in docs/schema.md section 3.4, and summarised here:

* **Syslog header** (LEEF/CEF): RFC 5424, ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID``.
  HOSTNAME is the *original device* (QRadar routes by it): the event's own HOSTNAME, else
  the canonical ``host``, else the sender's IP; a sink may fix it (``hostname = "name"``).
  PRI keeps the event's facility (local1 when unknown) with the syslog severity of the
  event's band (critical 2, high 3, medium 4, low 5, informational 6).
* **Vendor knowledge is data** (formats/vendors.py): one profile per canonical ``vendor``,
  looked up once per event (``PROFILES.get(vendor, DEFAULT)``), gives the header identity,
  the field behind ``cat``, the vendor's extra LEEF and CEF keys, the CEF ``csN``/``cnN``
  slots and a hint for backslash-heavy values.  No per-vendor branches here.
* **Header identity**: the profile's (CrowdStrike events: ``CrowdStrike|FalconHost|1.0`` so
  QRadar's Falcon DSM claims them), else the sink's vendor/product/version for the
  Universal LEEF/CEF DSM.  EventID / Device Event Class ID is the vendor event (``event``:
  ``created``, ``DetectionSummaryEvent``...), falling back to ``kind``; a profile with an
  ``event_id`` field takes it from ``extra`` first (CrowdStrike: ``extra.siem_event``, the
  SIEM Connector's event names, which QRadar's CrowdStrike DSM maps).
* **Severity**: LEEF ``sev`` and CEF severity from the band: informational 1, low 3,
  medium 5, high 7, critical 9 (formats.md 4.2).
* **rfc5424** is passthrough: the raw bytes exactly as received (RFC 5424 section 8: a relay
  must not alter what it forwards).
* **json**: one compact object ``{"event": canonical fields, "syslog": header fields}``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import orjson

from parsers.event import Event, text
from parsers.native import cef_line as _cef_line, leef_join as _leef_join, leef_line as _leef_line
from parsers.schema import SEVERITY_TO_CEF, SEVERITY_TO_LEEF, SEVERITY_TO_SYSLOG, severity_from_syslog

from . import cef as _cef
from . import leef as _leef
from .syslog import rfc5424_header, rfc5424_timestamp, utc_second
from .vendors import CEF_COMMON, DEFAULT, LEEF_COMMON, PROFILES, VendorProfile, profile_for

__all__ = ["RenderOptions", "Renderer", "FORMATS", "SEV_BAND", "sev_of"]

FORMATS = ("leef", "leef1", "cef", "rfc5424", "json")

# band -> (LEEF sev / CEF severity, syslog severity): docs/schema.md 2.5
SEV_BAND = {band: (SEVERITY_TO_LEEF[band], SEVERITY_TO_SYSLOG[band]) for band in SEVERITY_TO_LEEF}
assert SEVERITY_TO_LEEF == SEVERITY_TO_CEF  # one column in the renderer


@dataclass(frozen=True)
class RenderOptions:
    format: str = "leef"
    leef_vendor: str = "Relay"
    leef_product: str = "SOC Relay"
    leef_version: str = "1.0"
    leef_delimiter: str = "^"
    cef_vendor: str = "Relay"
    cef_product: str = "SOC Relay"
    cef_version: str = "1.0"
    hostname: str = "original"       # "original" or a fixed HOSTNAME for the syslog header
    app_name: str = "relay"          # APP-NAME when the event has none


def sev_of(fields: dict | None, event: Event) -> str:
    """The event's severity band (canonical ``severity``, else from the syslog severity)."""
    if fields:
        s = fields.get("severity")
        if s in SEV_BAND:
            return s
    if event.severity is not None:
        return severity_from_syslog(event.severity)
    return "informational"


def _str(v) -> str | None:
    if v is None:
        return None
    if type(v) is str:
        return v if v.isascii() else text(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v if x is not None and not isinstance(x, (dict, list)))
    if isinstance(v, dict):
        return orjson.dumps(v).decode()
    return str(v)


_CS_KEYS = tuple((f"cs{i}", f"cs{i}Label") for i in range(1, _cef.CUSTOM_SLOTS["cs"] + 1))
_CN_KEYS = tuple((f"cn{i}", f"cn{i}Label") for i in range(1, _cef.CUSTOM_SLOTS["cn"] + 1))
_MS = tuple(f".{i:03d}" for i in range(1000))
_NO_PLAN = object()


def _leef_plan(version: str, delimiter: str, profile: VendorProfile):
    """Per-(sink, vendor profile) constants of :meth:`Renderer._leef_fast`, or ``None`` (no
    fast path) when the delimiter is unusable or could occur in the devTime/devTimeFormat
    text or in a key the profile writes."""
    try:
        dd = _leef._delim("\t" if version == "1.0" else delimiter)
        d = dd.d
        if d in _leef.DEV_TIME_FORMAT or d in "0123456789-T:.+":
            return None
        keys = ["cat", "devTime", "devTimeFormat"]
        keys += [k for table in (LEEF_COMMON, profile.leef_extra) for _, k in table]
        keys += ["triage" + k.capitalize() for k in ("score", "severity", "owner", "mode")]
        if any(dd.key(k)[1] for k in keys):
            return None
        sev_dt, sev_only = {}, {}
        for band, (n, _) in SEV_BAND.items():
            sev = _leef.check_sev(n)
            sev_dt[band] = f"sev={sev}{d}devTime="
            sev_only[band] = f"sev={sev}"
    except ValueError:
        return None

    def table(t):
        return tuple(k + "=" for _, k in t), tuple(src for src, _ in t)
    return (d, sev_dt, sev_only, f"{d}devTimeFormat={_leef.DEV_TIME_FORMAT}",
            table(LEEF_COMMON), table(profile.leef_extra), profile.category)


def _cef_plan(o: RenderOptions, profile: VendorProfile) -> tuple:
    """Per-(sink, vendor profile) constants of :meth:`Renderer._cef`: the ``cat`` field, the
    extra keys, the custom-slot reader, the header identity, the backslash hint, and the
    native accelerator's tables (:func:`_cef_native_plan`)."""
    return (profile.category, profile.cef_extra, _customs_reader(profile),
            profile.header or (o.cef_vendor, o.cef_product, o.cef_version), profile.cef_escape_fields,
            _cef_native_plan(profile))


def _cef_native_plan(profile: VendorProfile) -> tuple | None:
    """The tables ``parsers._speedups.cef_line`` reads for ``profile`` (see its comment), or
    None (no native path) when one of the extension keys is not written as it is."""
    if _cef_line is None:
        return None
    keys = ["rt", "cat"] + [k for _, k in CEF_COMMON + profile.cef_extra] + [k for p in _CS_KEYS + _CN_KEYS for k in p]
    try:
        if any(_cef.sanitise_key(k) != k for k in keys):
            return None
    except ValueError:
        return None

    def slots(t):
        return tuple((s.label, s.field, s.extra) for s in t)
    return (dict(SEV_BAND), profile.category, tuple(CEF_COMMON), tuple(profile.cef_extra),
            slots(profile.cef_strings), slots(profile.cef_numbers), _CS_KEYS, _CN_KEYS)


_readers: dict = {}


def _customs_reader(profile: VendorProfile):
    """``reader(fields, extra) -> ([(label, value)...], [(label, value)...])``: the values of
    the profile's ``cef_strings`` and ``cef_numbers`` slots in slot order, as found (a
    ``joined`` slot's value through ``_str``), before any filtering.  Generated once per
    profile from its tables as two list displays (``[("Actor", extra.get('actor')), ...]``):
    a Python loop over the slot tables costs about 0.5 us more per event (~5% of a CEF render)."""
    r = _readers.get(profile)
    if r is None:
        def value(slot) -> str:
            get = f"{'extra' if slot.extra else 'f'}.get({slot.field!r})"
            return f"_str({get})" if slot.joined else get

        def pairs(slots) -> str:
            return "[" + ", ".join(f"({s.label!r}, {value(s)})" for s in slots) + "]"
        src = (f"def reader(f, extra):\n"
               f"    return {pairs(profile.cef_strings)}, {pairs(profile.cef_numbers)}\n")
        ns = {"_str": _str}
        exec(compile(src, f"<cef slots of vendor profile {profile.name}>", "exec"), ns)
        r = _readers[profile] = ns["reader"]
    return r


def _leef_pairs(append, d: dict, table, text, skip_empty_list: bool) -> None:
    """Append (LEEF key, text) for each (field, key) of ``table`` that ``d`` holds a
    non-empty value for (the slow path's rule; the fast path has its own)."""
    get = d.get
    for src, key in table:
        v = get(src)
        if v is not None:
            if v.__class__ is str:
                if v:
                    append((key, v if v.isascii() else text(v)))
            elif v.__class__ is int:
                append((key, str(v)))
            elif v != "" and not (skip_empty_list and v == []):
                append((key, _str(v)))

class Renderer:
    """Renders events for one sink.  ``render(event) -> bytes`` (one line, no framing);
    ``sanitised`` counts characters the LEEF and CEF sanitising rules changed (and, when set,
    ``sanitised_counter.value`` too, for each render that returns).  ``render`` also takes
    an ignored second argument (the route names), so that it can be a sink's render
    function as it is (relay/pipeline.make_renderer)."""

    def __init__(self, options: RenderOptions) -> None:
        if options.format not in FORMATS:
            raise ValueError(f"unknown format {options.format!r} (one of {', '.join(FORMATS)})")
        self.o = options
        self.sanitised = 0
        self.sanitised_counter = None   # a metrics counter (``.value``) or None
        self._hcache: dict = {}
        self.render = {
            "leef": self._leef_fast, "leef1": self._leef_fast, "cef": self._cef,
            "rfc5424": self._passthrough, "json": self._json,
        }[options.format]
        self._leef_version = "1.0" if options.format == "leef1" else "2.0"
        self._leef_ident = (options.leef_vendor, options.leef_product, options.leef_version)
        self._leef_delim = options.leef_delimiter
        self._plans: dict = {}   # VendorProfile -> _leef_plan(...) or None, built on first use
        if options.format in ("leef", "leef1"):  # the usual one at once (a bad delimiter fails here)
            self._plans[DEFAULT] = _leef_plan(self._leef_version, options.leef_delimiter, DEFAULT)
        self._lheads: dict = {}
        self._cheads: dict = {}
        self._cplans: dict = {}  # VendorProfile -> _cef_plan(...), built on first use

    def native_leef_spec(self) -> tuple | None:
        """What ``parsers._speedups.stage_batch`` needs to render this renderer's LEEF inline:
        ``(profiles, default, lheads, hostname, app_name)``, where ``profiles`` maps each vendor
        of :data:`PROFILES` to ``(plan, profile, event id field)`` (``None`` when the profile
        has no fast plan) and ``default`` is that of :data:`DEFAULT`: the values
        :meth:`_leef_fast` passes to ``leef_line``, its plans all built now (the same ones it
        builds on first use).  ``None`` when the format is not LEEF or the accelerator is off."""
        if _leef_line is None or self.render != self._leef_fast:
            return None
        o = self.o
        if type(o.hostname) is not str or type(o.app_name) is not str:
            return None

        def spec(profile):
            plan = self._plans.get(profile, _NO_PLAN)
            if plan is _NO_PLAN:
                plan = self._plans[profile] = _leef_plan(self._leef_version, self._leef_delim, profile)
            return None if plan is None else (plan, profile, profile.event_id)
        profiles = {vendor: spec(p) for vendor, p in PROFILES.items() if type(vendor) is str}
        return profiles, spec(DEFAULT), self._lheads, o.hostname, o.app_name

    # ---------------------------------------------------------------- header
    def _header(self, ev: Event, f: dict | None, band: str, epoch: float | None) -> str:
        pre, post = self._header_parts(ev, f, band)
        return pre + rfc5424_timestamp(epoch) + post

    def _header_parts(self, ev: Event, f: dict | None, band: str) -> tuple[str, str]:
        """``("<PRI>1 ", " HOST APP - MSGID -")``: the header around its TIMESTAMP."""
        o = self.o
        host = o.hostname
        if host == "original":
            host = ev.hostname or (f.get("host") if f else None) or _peer_ip(ev.peer)
        facility = ev.facility if ev.facility is not None else 17
        app = ev.app_name or (f.get("product") if f else None) or o.app_name
        msgid = (f.get("event") if f else None) or ev.msgid
        if type(msgid) is not str:
            msgid = None
        key = (facility, band, host, app, msgid)
        parts = self._hcache.get(key)
        if parts is None:  # "<PRI>1 " and " HOST APP - MSGID -", built once per device/app/event
            head = rfc5424_header(facility * 8 + SEV_BAND[band][1], None, host, app, None, msgid)
            pre, _, post = head.partition(" - ")  # split around the NILVALUE timestamp
            parts = (pre + " ", " " + post)
            if len(self._hcache) >= 4096:
                self._hcache.clear()
            self._hcache[key] = parts
        return parts

    # ---------------------------------------------------------------- LEEF
    def _leef_fast(self, ev: Event, routes=None) -> bytes:
        """:meth:`_leef` for the usual event (canonical fields, every value ASCII, no value
        holding the delimiter, CR or LF): the pairs are built as ``key=value`` strings with
        the constants of :func:`_leef_plan` and checked once, on the joined text.  Anything
        else (a check failing, an exception) goes through :meth:`_leef`: same bytes, same
        errors, same sanitising counts and notes."""
        f = ev.fields
        if not f:
            return self._leef(ev)
        try:
            profile = PROFILES.get(f.get("vendor"), DEFAULT)
            plan = self._plans[profile]
        except KeyError:
            plan = self._plans[profile] = _leef_plan(self._leef_version, self._leef_delim, profile)
        except TypeError:       # an unhashable vendor value
            return self._leef(ev)
        if plan is None:
            return self._leef(ev, profile)
        if _leef_line is not None:
            # the native accelerator: the whole line when its header is cached (parsers/native.py)
            line = _leef_line(ev, f, plan, self._lheads, profile, profile.event_id, self.o.hostname,
                              self.o.app_name)
            if line is not None:
                return line
        d, sev_dt, sev_only, dt_tail, common, extra_keys, cat_field = plan
        try:
            s = f.get("severity")
            band = s if s in SEV_BAND else sev_of(f, ev)
            epoch = f.get("occurred_unix")
            if epoch is None:
                epoch = _epoch(ev, f)
            if epoch is not None:
                secs, ms = divmod(round(epoch * 1000), 1000)
                sec = utc_second(secs) + _MS[ms]  # "YYYY-MM-DDTHH:MM:SS.mmm"
                first = f"{sev_dt[band]}{sec}+0000{dt_tail}"
                stamp = sec + "Z"
                nd = 2  # delimiters inside ``first``
            else:
                first = sev_only[band]
                stamp = "-"
                nd = 0
            get = f.get
            cat = get(cat_field)
            if cat.__class__ is not str or not cat.isascii():
                cat = _str(cat)
            cat = cat or get("kind")
            if cat is not None:
                if cat.__class__ is not str:
                    cat = str(cat)
                first = f"cat={cat}{d}{first}"
                nd += 1
            extra = get("extra")
            # the native accelerator's loop for str/int/None values (parsers/native.py), same text
            joined = _leef_join(first, d, f, common, extra, extra_keys) if _leef_join is not None else None
            if joined is not None:
                body, n = joined
            else:
                parts = [first]
                append = parts.append
                for p, v in zip(common[0], map(get, common[1])):
                    if v is not None:
                        if v.__class__ is str:
                            if v:
                                append(p + v)
                        elif v.__class__ is int:
                            append(p + str(v))
                        elif v != "":
                            append(p + _str(v))
                if extra:
                    for p, v in zip(extra_keys[0], map(extra.get, extra_keys[1])):
                        if v is not None:
                            if v.__class__ is str:
                                if v:
                                    append(p + v)
                            elif v.__class__ is int:
                                append(p + str(v))
                            elif v != "" and v != []:
                                append(p + _str(v))
                body = d.join(parts)
                n = len(parts) - 1
            triage = get("triage")
            if triage is not None and isinstance(triage, dict):
                for k in ("score", "severity", "owner", "mode"):
                    if triage.get(k) is not None:
                        body = f"{body}{d}triage{k.capitalize()}={_str(triage[k])}"
                        n += 1
            # every value ASCII (text() is then the identity) and none needing sanitising
            if (not body.isascii() or "\n" in body or "\r" in body or "\0" in body
                    or body.count(d) != n + nd):
                event_id = None
            else:
                e = (extra.get(profile.event_id) if extra and profile.event_id else None) or get("event") \
                    or get("kind")
                event_id = _str(e) if e else (ev.msgid or ev.app_name or "syslog")
                # the syslog header and LEEF header around the timestamp, cached together
                host = self.o.hostname
                if host == "original":
                    host = ev.hostname or get("host") or _peer_ip(ev.peer)
                msgid = get("event") or ev.msgid
                if msgid.__class__ is not str:
                    msgid = None
                key = (ev.facility, band, host, ev.app_name or get("product") or self.o.app_name, msgid,
                       profile, event_id)
                hit = self._lheads.get(key)
        except Exception:
            event_id = None
        if event_id is None:
            return self._leef(ev, profile)
        if hit is None:
            vendor, product, version = profile.header or self._leef_ident
            try:
                line, changes = _leef.encode(vendor, product, version, event_id, (),
                                             version=self._leef_version, delimiter=self._leef_delim)
                pre, post = self._header_parts(ev, f, band)
            except Exception:  # raised where the full path raises (after its note)
                return self._leef(ev, profile)
            hit = (pre, f"{post} {line}", changes)
            if len(self._lheads) >= 4096:
                self._lheads.clear()
            self._lheads[key] = hit
        pre, rest, changes = hit
        if changes:
            self.sanitised += changes
            ev.note(f"LEEF: {changes} character(s) sanitised (delimiter/CR/LF/NUL replaced by space)")
            if self.sanitised_counter is not None:
                self.sanitised_counter.value += changes
        return f"{pre}{stamp}{rest}{body}".encode("utf-8", "replace")

    def _leef(self, ev: Event, profile: VendorProfile | None = None) -> bytes:
        f = ev.fields
        if profile is None:
            profile = profile_for(f)
        band = sev_of(f, ev)
        epoch = _epoch(ev, f)
        if epoch is not None:  # one second/millisecond split for devTime and the header
            secs, ms = divmod(round(epoch * 1000), 1000)
            stamp = f"{utc_second(secs)}.{ms:03d}"
            attrs = self._leef_attrs(ev, f, band, stamp + "+0000", profile)
            stamp += "Z"
        else:
            attrs = self._leef_attrs(ev, f, band, None, profile)
            stamp = "-"
        vendor, product, version = profile.header or self._leef_ident
        event_id = _event_id(ev, f, profile)
        line, changes = _leef.encode(vendor, product, version, event_id, attrs,
                                     version=self._leef_version, delimiter=self._leef_delim)
        if changes:
            self.sanitised += changes
            ev.note(f"LEEF: {changes} character(s) sanitised (delimiter/CR/LF/NUL replaced by space)")
        pre, post = self._header_parts(ev, f, band)
        if changes and self.sanitised_counter is not None:
            self.sanitised_counter.value += changes
        return f"{pre}{stamp}{post} {line}".encode("utf-8", "replace")

    def leef_attributes(self, ev: Event, f: dict | None, band: str, epoch: float | None = None) -> list:
        if epoch is None:
            epoch = _epoch(ev, f)
        return self._leef_attrs(ev, f, band, None if epoch is None else _leef.dev_time(epoch)[0],
                                profile_for(f))

    def _leef_attrs(self, ev: Event, f: dict | None, band: str, dev_time: str | None,
                    profile: VendorProfile) -> list:
        """The LEEF attribute pairs; ``dev_time`` is the devTime value (None: none)."""
        if f:
            cat = f.get(profile.category)
            if cat.__class__ is not str or not cat.isascii():
                cat = _str(cat)
            attrs = [("cat", cat or f.get("kind")), ("sev", SEV_BAND[band][0])]
        else:
            attrs = [("cat", "log"), ("sev", SEV_BAND[band][0])]
        if dev_time is not None:
            attrs.append(("devTime", dev_time))
            attrs.append(("devTimeFormat", _leef.DEV_TIME_FORMAT))
        if f:
            _leef_pairs(attrs.append, f, LEEF_COMMON, text, False)
            extra = f.get("extra")
            if extra:
                _leef_pairs(attrs.append, extra, profile.leef_extra, text, True)
            triage = f.get("triage")
            if isinstance(triage, dict):
                for k in ("score", "severity", "owner", "mode"):
                    if triage.get(k) is not None:
                        attrs.append(("triage" + k.capitalize(), _str(triage[k])))
        else:
            attrs.append(("msg", _str(ev.msg) or ""))
        return attrs

    # ---------------------------------------------------------------- CEF
    def _cef(self, ev: Event, routes=None) -> bytes:
        f = ev.fields
        if _cef_line is not None and f.__class__ is dict:
            # the native accelerator: the whole line when both headers are cached (parsers/native.py)
            try:
                profile = PROFILES.get(f.get("vendor"), DEFAULT)
                plan = self._cplans[profile]
            except (KeyError, TypeError):   # not built yet, or an unhashable vendor: below
                pass
            else:
                if plan[5] is not None:
                    line = _cef_line(ev, f, plan[5], self._cheads, self._hcache, profile, profile.event_id,
                                     self.o.hostname, self.o.app_name)
                    if line is not None:
                        return line
        band = sev_of(f, ev)
        epoch = _epoch(ev, f)
        ext = []
        if epoch is not None:
            ext.append(("rt", str(int(epoch * 1000))))
        profile = DEFAULT
        if f:
            try:
                profile = PROFILES.get(f.get("vendor"), DEFAULT)
            except TypeError:   # an unhashable vendor value
                pass
        try:
            plan = self._cplans[profile]
        except KeyError:
            plan = self._cplans[profile] = _cef_plan(self.o, profile)
        cat_field, extra_keys, customs, (vendor, product, version), escape_fields, _ = plan
        extra = None
        if f:
            ext.append(("cat", _str(f.get(cat_field) or f.get("kind"))))
            for src, key in CEF_COMMON:
                v = f.get(src)
                if v is not None and v != "":
                    ext.append((key, _str(v)))
            extra = f.get("extra") or {}
            for src, key in extra_keys:
                v = extra.get(src)
                if v is not None and v != "":
                    ext.append((key, _str(v)))
            customs_s, customs_n = customs(f, extra)
            cs = [(k, _str(v)) for k, v in customs_s if v not in (None, "")]
            for (key, label_key), (label, v) in zip(_CS_KEYS, cs):  # _cef.custom_strings(cs), inlined
                ext.append((key, v))
                ext.append((label_key, label))
            cn = [(k, v) for k, v in customs_n if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if all(v.__class__ is int for _, v in cn):  # _cef.custom_numbers(cn), inlined
                for (key, label_key), (label, v) in zip(_CN_KEYS, cn):
                    ext.append((key, str(v)))
                    ext.append((label_key, label))
            else:
                ext.extend(_cef.custom_numbers(cn))
            triage = f.get("triage")
            if isinstance(triage, dict):  # cs1-6 / cn1-3 are taken: the flex fields carry triage
                if isinstance(triage.get("score"), int):
                    ext += [("flexNumber1", str(triage["score"])), ("flexNumber1Label", "TriageScore")]
                if triage.get("severity"):
                    ext += [("flexString1", _str(triage["severity"])), ("flexString1Label", "TriageSeverity")]
                if triage.get("owner"):
                    ext += [("flexString2", _str(triage["owner"])), ("flexString2Label", "TriageOwner")]
        else:
            ext.append(("msg", _str(ev.msg) or ""))
        name = (f.get("name") if f else None) or ev.app_name or "syslog"
        event_id, name = _event_id(ev, f, profile), _str(name)
        # the pairs as written when no value needs escaping or trimming (no backslash, '=',
        # CR, LF, and no value ending in a blank: "  " / "\t " / a last blank would show it)
        if escape_fields and extra and _has_backslash(extra, escape_fields):
            # values that usually hold backslashes (Windows paths, command lines) do: the
            # escaping encoder at once
            parts = body = None
        else:
            parts = [f"{k}={v}" for k, v in ext if v is not None]
            body = " ".join(parts)
        hk = (profile, event_id, name, band)
        hit = self._cheads.get(hk)
        if hit is None:   # the CEF header, built once per profile/class/name/severity
            hit = _cef.header_counted(vendor, product, version, event_id, name, SEV_BAND[band][0])
            if len(self._cheads) >= 4096:
                self._cheads.clear()
            self._cheads[hk] = hit
        head, changes = hit
        if body is None or body and ("\\" in body or "\n" in body or "\r" in body or "  " in body or "\t" in body
                     or "\0" in body or body[-1] == " " or body.count("=") != len(parts)):
            body, more = _cef.extension_counted(ext)    # the escaping encoder
            changes += more
        line = head + body
        if changes:
            self.sanitised += changes
            ev.note(f"CEF: {changes} character(s) sanitised (TAB/NUL, and CR/LF in the header, replaced by space)")
            if self.sanitised_counter is not None:
                self.sanitised_counter.value += changes
        return f"{self._header(ev, f, band, epoch)} {line}".encode("utf-8", "replace")

    # ---------------------------------------------------------------- others
    def _passthrough(self, ev: Event, routes=None) -> bytes:
        return ev.raw

    def _json(self, ev: Event, routes=None) -> bytes:
        return orjson.dumps({"event": ev.fields, "syslog": ev.syslog_dict()},
                            option=orjson.OPT_NON_STR_KEYS, default=_str)


def _has_backslash(extra: dict, keys: tuple) -> bool:
    """One of ``extra``'s ``keys`` holds a backslash (a profile's ``cef_escape_fields``)."""
    for k in keys:
        v = extra.get(k)
        if v.__class__ is str and "\\" in v:
            return True
    return False


def _event_id(ev: Event, f: dict | None, profile: VendorProfile = DEFAULT) -> str:
    if f:
        e = None
        if profile.event_id:
            extra = f.get("extra")
            if isinstance(extra, dict):
                e = extra.get(profile.event_id)
        e = e or f.get("event") or f.get("kind")
        if e:
            return _str(e)
    return ev.msgid or ev.app_name or "syslog"


def _epoch(ev: Event, f: dict | None) -> float | None:
    if f:
        v = f.get("occurred_unix")
        if v is not None:
            return v
    if ev.time_unix is not None:
        return ev.time_unix
    return ev.received if ev.received is not None else time.time()


def _peer_ip(peer: str | None) -> str | None:
    if not peer:
        return None
    host = peer.rsplit(":", 1)[0]
    return host.strip("[]") or None

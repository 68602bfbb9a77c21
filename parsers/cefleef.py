"""CEF and LEEF arriving at the relay -> canonical fields (docs/schema.md 3.5).  Pure decoding.

A message is CEF or LEEF when its MSG (or the whole datagram, with no syslog header: format
``cef`` / ``leef`` from parsers/detect.py) starts with ``CEF:`` or ``LEEF:`` (a UTF-8 BOM or
blanks before it are skipped).  The record is decoded by parsers/cef.py or parsers/leef.py, then:

* **CrowdStrike Falcon** (header vendor ``CrowdStrike``: what the Falcon SIEM Connector sends
  in CEF or LEEF mode) is rebuilt into the connector's JSON shape (``{"metadata", "event"}``,
  :func:`parsers.falcon.stream_from_cef` / ``stream_from_leef``) and normalised by the same code
  as the connector's JSON, so the canonical event and its dedup key are the same.
* **Any other device** is mapped through the CEF and LEEF dictionaries (:func:`cef_fields`,
  :func:`leef_fields`): kind ``log``, ``vendor``/``product`` from the header, ``event`` = the
  signature / EventID, ``name``, severity (CEF 0-10 / LEEF ``sev`` 1-10, x10 as the risk score),
  ``src``/``dst``, ``suser``/``usrName``, host, ``outcome``, times, and into ``extra``:
  ``category`` (``cat``), ``action`` (``act``), ports, protocol, the labelled custom fields
  (``cs1``-``cs6``, ``cn1``-``cn3``, ... by their label) in ``custom``, and every pair as received
  in ``cef`` / ``leef``.

Every event decoded here has ``extra.input_format`` = ``cef`` or ``leef`` (the sinks'
``passthrough_cef_leef`` option reads it).  A record that does not decode keeps the generic
``log`` mapping, with a note saying why: nothing is lost.
"""
from __future__ import annotations

from . import cef as _cef
from . import falcon
from . import leef as _leef
from .event import Event, ParseError, text
from .schema import _digest_key, _event_time, canonical_status, iso_utc, log_fields, severity_from_score

__all__ = ["wire_format", "normalise", "cef_fields", "leef_fields", "cef_severity"]


def wire_format(msg) -> str | None:
    """``"cef"``, ``"leef"`` or None for a MSG (cheap: a prefix test)."""
    if not msg:
        return None
    c = msg[0]
    if c == "C":
        return "cef" if msg.startswith("CEF:") else None
    if c == "L":
        return "leef" if msg.startswith("LEEF:") else None
    if c in " \t\ufeff":
        s = msg.lstrip(" \t\ufeff")
        if s.startswith("CEF:"):
            return "cef"
        if s.startswith("LEEF:"):
            return "leef"
    return None


def cef_severity(n: int | None) -> tuple[str, int | None]:
    """CEF 0-10 / LEEF 1-10 -> (band, risk score n x 10) on the canonical bands (so the
    relay's own CEF/LEEF output, 1/3/5/7/9, reads back as the band it was written from)."""
    if n is None:
        return "informational", None
    score = max(0, min(100, n * 10))
    return severity_from_score(score), score


def _int(v) -> int | None:
    if v is None:
        return None
    v = v.strip()
    if v.isascii() and v.isdigit():
        return int(v)
    return None


def _custom(ext: dict, out: dict) -> None:
    """``csN``/``cnN``/``cfpN``/``c6aN``/``flexStringN``/``deviceCustomDateN`` with a label ->
    ``out[label] = value`` (no label: the key itself)."""
    for k, v in ext.items():
        if k.endswith("Label"):
            continue
        for p in _cef.CUSTOM_PREFIXES:
            if k.startswith(p) and k[len(p):].isdigit():
                label = ext.get(k + "Label") or k
                out[label] = v
                break


def _finish(ev: Event, f: dict, fmt: str) -> None:
    if f["occurred_unix"] is None:
        f["occurred"], f["occurred_unix"] = _event_time(ev)
    f["extra"]["input_format"] = fmt


def cef_fields(ev: Event, rec: _cef.CefRecord) -> dict:
    """Canonical fields for a CEF record of a device other than Falcon."""
    x = rec.extension
    get = x.get
    band, score = cef_severity(rec.severity_number())
    when = None
    for k in ("rt", "end", "start"):
        if get(k):
            when = rec.time(k, now=ev.received)
            if when is not None:
                break
    custom: dict = {}
    _custom(x, custom)
    extra = {k: v for k, v in (
        ("category", get("cat")), ("action", get("act")), ("outcome", get("outcome")),
        ("src_port", _int(get("spt"))), ("dst_port", _int(get("dpt"))), ("protocol", get("proto")),
        ("app", get("app")), ("src_host", get("shost")), ("dst_host", get("dhost")),
        ("device_host", get("dvchost")), ("device_ip", get("dvc")), ("dst_user", get("duser")),
        ("reason", get("reason")), ("request_method", get("requestMethod")),
        ("file_name", get("fname")), ("file_hash", get("fileHash")),
        ("cef_version", rec.version), ("device_version", rec.device_version or None),
        ("custom", custom or None), ("cef", dict(x) or None),
    ) if v is not None and v != ""}
    return {
        "kind": "log",
        "vendor": rec.vendor or None,
        "product": rec.product or None,
        "id": get("externalId") or None,
        "dedup_key": log_fields_key(ev),
        "event": rec.event_class_id or None,
        "name": rec.name or rec.event_class_id or "cef",
        "description": get("msg") or None,
        "risk_score": score,
        "severity": band,
        "status": canonical_status(get("outcome")),
        "occurred": iso_utc(when),
        "occurred_unix": when,
        "src_ip": get("src") or get("c6a2") or None,
        "dst_ip": get("dst") or get("c6a3") or None,
        "host": get("dvchost") or ev.hostname or get("dhost") or get("shost"),
        "user": get("suser") or get("duser") or None,
        "tactic": None,
        "technique": None,
        "url": get("request") or None,
        "extra": extra,
    }


def leef_fields(ev: Event, rec: _leef.LeefRecord) -> dict:
    """Canonical fields for a LEEF record of a device other than Falcon."""
    a = rec.attributes
    get = a.get
    band, score = cef_severity(_int(get("sev")))
    when = _leef.dev_time(a)
    extra = {k: v for k, v in (
        ("category", get("cat")), ("action", get("action") or get("act")),
        ("src_port", _int(get("srcPort"))), ("dst_port", _int(get("dstPort"))), ("protocol", get("proto")),
        ("src_host", get("srcHostName")), ("dst_host", get("dstHostName")), ("domain", get("domain")),
        ("leef_version", rec.version), ("product_version", rec.product_version or None),
        ("leef", dict(a) or None),
    ) if v is not None and v != ""}
    return {
        "kind": "log",
        "vendor": rec.vendor or None,
        "product": rec.product or None,
        "id": get("externalId") or None,
        "dedup_key": log_fields_key(ev),
        "event": rec.event_id or None,
        "name": get("name") or rec.event_id or "leef",
        "description": get("description") or get("msg") or None,
        "risk_score": score,
        "severity": band,
        "status": canonical_status(get("status")),
        "occurred": iso_utc(when),
        "occurred_unix": when,
        "src_ip": get("src") or None,
        "dst_ip": get("dst") or None,
        "host": get("identHostName") or ev.hostname or get("srcHostName") or None,
        "user": get("usrName") or get("userName") or None,
        "tactic": None,
        "technique": None,
        "url": get("url") or None,
        "extra": extra,
    }


def log_fields_key(ev: Event) -> str:
    """The ``log:`` dedup key of docs/schema.md 4 (a digest of the raw bytes)."""
    return "log:" + _digest_key(ev)


def _payload(msg: str) -> str:
    return msg if msg[0] in "CL" else msg.lstrip(" \t\ufeff")


def normalise(ev: Event, fmt: str) -> Event:
    """Fill ``ev.fields`` for a CEF (``fmt = "cef"``) or LEEF MSG; never raises for content."""
    s = _payload(text(ev.msg))
    try:
        rec = _cef.parse(s) if fmt == "cef" else _leef.parse(s)
    except ParseError as e:
        ev.note(f"{fmt}: not decoded ({e.kind}: {e.reason}); generic log fields")
        f = log_fields(ev)
        f["name"] = f["name"] or fmt
        ev.fields = f
        return ev
    vendor = rec.vendor
    if vendor == falcon.VENDOR:
        notes: list = []
        obj = falcon.stream_from_cef(rec) if fmt == "cef" else falcon.stream_from_leef(rec)
        try:
            f = falcon.normalise_dict(obj, shape="stream", notes=notes)
        except ValueError as e:  # pragma: no cover - stream_from_* always gives the stream shape
            notes.append(f"falcon: {e}")
            f = cef_fields(ev, rec) if fmt == "cef" else leef_fields(ev, rec)
        for n in notes:
            ev.note(n)
    else:
        f = cef_fields(ev, rec) if fmt == "cef" else leef_fields(ev, rec)
    _finish(ev, f, fmt)
    ev.fields = f
    return ev

"""Comparing a message's actual record with its expectations: conditions, trees, sink outputs
decoded for field conditions, and the diffs shown on a failure."""
from __future__ import annotations

import datetime as _dt
import difflib
import json
import re
from typing import Any

from .model import _MISSING, _is_condition, _received


# =============================================================================== comparing

def _show(v, limit: int = 200) -> str:
    if v is _MISSING:
        return "missing"
    try:
        s = json.dumps(v, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        s = repr(v)
    return _clip(s, limit)



def _clip(s: str, limit: int) -> str:
    s = s.replace("\n", "\\n").replace("\r", "\\r")
    return s if len(s) <= limit else s[:limit - 3] + "..."



def _segments(path: str) -> list:
    out: list = []
    for part in path.split("."):
        m = re.fullmatch(r"([^\[\]]*)((?:\[-?\d+\])*)", part)
        if not m:
            out.append(part)
            continue
        if m.group(1):
            out.append(m.group(1))
        out.extend(int(x) for x in re.findall(r"\[(-?\d+)\]", m.group(2)))
    return out



def _get(obj, key: str):
    """``obj[key]``; else ``key`` read as a dotted path (``a.b``, ``a[0].b``, ``a.0.b``)."""
    if isinstance(obj, dict) and key in obj:
        return obj[key]
    if "." not in key and "[" not in key:
        return _MISSING
    for seg in _segments(key):
        if isinstance(obj, dict):
            if seg in obj:
                obj = obj[seg]
            elif str(seg) in obj:
                obj = obj[str(seg)]
            else:
                return _MISSING
        elif isinstance(obj, list):
            try:
                obj = obj[int(seg)]
            except (ValueError, IndexError):
                return _MISSING
        else:
            return _MISSING
    return obj



def _equal(want, got) -> bool:
    if isinstance(want, bool) or isinstance(got, bool):
        return type(want) is type(got) and want == got
    if isinstance(want, (int, float)) and isinstance(got, (int, float)):
        return want == got
    if isinstance(want, list):
        return isinstance(got, list) and len(want) == len(got) and all(_equal(a, b) for a, b in zip(want, got))
    if isinstance(want, dict):
        return (isinstance(got, dict) and set(want) == set(got)
                and all(_equal(want[k], got[k]) for k in want))
    if isinstance(want, _dt.datetime):  # a TOML datetime literal: compare as text
        return isinstance(got, str) and _received(got) == _received(want)
    return type(want) is type(got) and want == got



def _num(v):
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return v
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None



def _cond_failures(cond: dict, got) -> list[str]:
    """What the actual value ``got`` breaks of a condition table (empty: it holds)."""
    bad = []
    present = got is not _MISSING and got is not None
    for op, arg in cond.items():
        if op == "exists":
            if present != arg:
                bad.append("expected it to exist" if arg else "expected it to be absent")
        elif op == "absent":
            if present == arg:
                bad.append("expected it to be absent" if arg else "expected it to exist")
        elif op == "eq":
            if not _equal(arg, got):
                bad.append(f"expected {_show(arg)}")
        elif op == "ne":
            if _equal(arg, got):
                bad.append(f"expected anything but {_show(arg)}")
        elif op == "matches":
            if not isinstance(got, str) or re.search(arg, got) is None:
                bad.append(f"expected a match for /{arg}/")
        elif op == "contains":
            ok = (isinstance(got, str) and isinstance(arg, str) and arg in got) or \
                 (isinstance(got, list) and any(_equal(arg, x) for x in got))
            if not ok:
                bad.append(f"expected it to contain {_show(arg)}")
        elif op == "in":
            if not any(_equal(a, got) for a in arg):
                bad.append(f"expected one of {_show(arg)}")
        else:  # gt ge lt le, numbers and numeric strings
            n = _num(got)
            test = {"gt": lambda a, b: a > b, "ge": lambda a, b: a >= b,
                    "lt": lambda a, b: a < b, "le": lambda a, b: a <= b}[op]
            if n is None or not test(n, arg):
                bad.append(f"expected {({'gt': '>', 'ge': '>=', 'lt': '<', 'le': '<='})[op]} {_show(arg)}")
    return bad



def _match_tree(exp: dict, actual, path: str, out: list[str]) -> None:
    """A nested table of expectations against ``actual`` (a subset: unnamed keys are free)."""
    for key, want in exp.items():
        p = f"{path}.{key}"
        got = _get(actual, key)
        if _is_condition(want):
            bad = _cond_failures(want, got)
            if bad:
                out.append(f"{p}: {'; '.join(bad)}, actual {_show(got)}")
        elif isinstance(want, dict):
            if isinstance(got, dict):
                _match_tree(want, got, p, out)
            else:
                out.append(f"{p}: expected a table {_show(want, 120)}, actual {_show(got)}")
        elif want is None:
            if got is not _MISSING and got is not None:
                out.append(f"{p}: expected it to be absent, actual {_show(got)}")
        elif not _equal(want, got):
            out.append(f"{p}: expected {_show(want)}, actual {_show(got)}")



def _is_render_error(payload) -> bool:
    return isinstance(payload, dict) and list(payload) == ["error"] and isinstance(payload["error"], str)



def check_message(exp: dict, rec: dict, cfg) -> list[str]:
    """Compare one message's expectations with its testparse record; readable lines."""
    out: list[str] = []
    ok = rec["ok"]
    err = rec.get("error") or {}
    actual_parse = "ok" if ok else f"error at byte {err.get('offset')}: {err.get('reason')}"
    if "parse" in exp and (exp["parse"] == "ok") != ok:
        out.append(f"parse: expected {exp['parse']}, actual {actual_parse}")
    if "error" in exp:
        if ok:
            if exp.get("parse") != "error":
                out.append(f"error: expected a parse error containing {_show(exp['error'])}, but the message parsed")
        elif exp["error"] not in (err.get("reason") or ""):
            out.append(f"error: expected a reason containing {_show(exp['error'])}, actual {_show(err.get('reason'))}")
    if "error_offset" in exp and not ok and err.get("offset") != exp["error_offset"]:
        out.append(f"error_offset: expected {exp['error_offset']}, actual {err.get('offset')}")
    if "syslog" in exp:
        _match_tree(exp["syslog"], rec.get("syslog") or {}, "syslog", out)
    if "fields" in exp:
        _match_tree(exp["fields"], rec.get("event") or {}, "fields", out)
    routes = rec.get("routes") or []
    if "routes" in exp:
        want = exp["routes"]
        unknown = [r for r in want if r not in cfg.routes]
        if unknown:
            out.append(f"routes: no route named {_show(unknown[0])} in the config "
                       f"(routes: {', '.join(cfg.routes) or 'none'})")
        if want != routes:
            out.append(f"routes: expected {_show(want)}, actual {_show(routes)}")
            checks = rec.get("route_checks") or {}
            for r in [r for r in cfg.routes if (r in want) != (r in routes)]:
                why = "matched, not expected" if r in routes else "expected, did not match"
                out.append(f"  route {r} ({why}): {cfg.routes[r].match}")
                out.extend("      " + ln for ln in checks.get(r, ()))
            if len(routes) < len(want) and routes and cfg.routes[routes[-1]].final:
                out.append(f"  route {routes[-1]} is final: routes after it are not tried")
    for name, sx in (exp.get("sinks") or {}).items():
        _check_sink(name, sx, rec, cfg, routes, out)
    return out



def _check_sink(name: str, sx: dict, rec: dict, cfg, routes: list, out: list[str]) -> None:
    at = f"sinks.{name}"
    if name not in cfg.sinks:
        out.append(f"{at}: no sink named {name!r} in the config (sinks: {', '.join(cfg.sinks) or 'none'})")
        return
    sinks = rec.get("sinks") or {}
    gets = name in sinks
    if sx.get("receives") is False:
        if gets:
            out.append(f"{at}: expected nothing, but routes {_show(routes)} send the event to this sink")
        return
    if not gets:
        feeding = [r for r, rc in cfg.routes.items() if name in rc.sinks]
        out.append(f"{at}: expected delivery, but no matched route sends the event here "
                   f"(matched: {_show(routes)}; routes to {name}: {_show(feeding)})")
        return
    payload = sinks[name]
    if _is_render_error(payload):
        if "error" in sx:
            if sx["error"] not in payload["error"]:
                out.append(f"{at}.error: expected {_show(sx['error'])} in the reason, actual {_show(payload['error'])}")
        else:
            out.append(f"{at}: {payload['error']} (the relay would dead-letter it)")
        return
    if "error" in sx:
        out.append(f"{at}.error: expected a render failure containing {_show(sx['error'])}, but it rendered")
    sc = cfg.sinks[name]
    if "output" in sx:
        text = payload if isinstance(payload, str) else _compact(payload)
        if sx["output"] != text:
            out.append(f"{at}.output: differs")
            out.extend("  " + ln for ln in output_diff(sx["output"], text))
    if "body" in sx:
        want = json.loads(sx["body"]) if isinstance(sx["body"], str) else sx["body"]
        got = payload if isinstance(payload, dict) else _try_json(payload)
        if not _equal(want, got):
            out.append(f"{at}.body: differs")
            diffs: list[str] = []
            _struct_diff(want, got, "", diffs)
            out.extend(f"    {d}" for d in diffs[:30])
            if len(diffs) > 30:
                out.append(f"    ... {len(diffs) - 30} more")
            out.extend("  " + ln for ln in _udiff(_pretty(want).splitlines(), _pretty(got).splitlines()))
    if "fields" in sx:
        view = sink_view(sc, payload)
        before = len(out)
        _match_tree(sx["fields"], view, f"{at}.fields", out)
        if len(out) > before and "_decode_error" in view:
            out.append(f"  ({at}: the output could not be decoded as {sc.format}: {view['_decode_error']})")



def _compact(obj) -> str:
    import orjson
    return orjson.dumps(obj).decode()



def _pretty(obj) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False, default=str)



def _try_json(s):
    try:
        return json.loads(s)
    except (TypeError, ValueError):
        return _MISSING



def _struct_diff(want, got, path: str, out: list[str]) -> None:
    """Leaf-level differences between two JSON values, as ``path: expected X, actual Y``."""
    if isinstance(want, dict) and isinstance(got, dict):
        for k in want:
            p = f"{path}.{k}" if path else k
            if k not in got:
                out.append(f"{p}: expected {_show(want[k])}, actual missing")
            else:
                _struct_diff(want[k], got[k], p, out)
        for k in got:
            if k not in want:
                out.append(f"{(path + '.') if path else ''}{k}: not expected, actual {_show(got[k])}")
        return
    if isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        for i, (a, b) in enumerate(zip(want, got)):
            _struct_diff(a, b, f"{path}[{i}]", out)
        return
    if not _equal(want, got):
        out.append(f"{path or '(whole)'}: expected {_show(want)}, actual {_show(got)}")



# ------------------------------------------------------------------ decoded outputs

def sink_view(sc, payload) -> dict:
    """The rendered ``payload`` of sink config ``sc`` decoded for field conditions:
    LEEF/CEF attributes by key plus ``header.*`` and ``syslog.*``; JSON as the object;
    ``rfc5424`` as the syslog fields; XSOAR bodies as they are."""
    if isinstance(payload, dict):
        return payload
    fmt = sc.format
    try:
        if fmt in ("leef", "leef1"):
            from parsers import leef
            r = leef.parse(payload)
            view: dict = dict(r.attributes)
            view["header"] = r.header()
            view["syslog"] = _syslog_prefix(r.syslog)
            return view
        if fmt == "cef":
            from parsers import cef
            r = cef.parse(payload)
            view = dict(r.extension)
            h = r.header()
            view["header"] = {"version": h["cefVersion"], "vendor": r.vendor, "product": r.product,
                              "device_version": r.device_version, "event_class_id": r.event_class_id,
                              "name": r.name, "severity": r.severity}
            view["syslog"] = _syslog_prefix(r.prefix)
            return view
        if fmt == "json":
            v = json.loads(payload)
            return v if isinstance(v, dict) else {"value": v}
        from parsers import detect
        ev = detect.parse(payload.encode("utf-8", "surrogateescape"), lenient=True)
        return ev.syslog_dict()
    except Exception as e:
        return {"_decode_error": f"{type(e).__name__}: {e}"}



def _syslog_prefix(prefix: str | None) -> dict:
    if not prefix:
        return {}
    from parsers import detect
    ev = detect.parse(prefix.strip().encode("utf-8", "surrogateescape"), lenient=True)
    if ev.error is not None:
        return {"text": prefix.strip()}
    d = ev.syslog_dict()
    d.pop("structured_data", None)
    d.pop("msg", None)
    return d



def _decode_any(text: str) -> tuple[str | None, Any]:
    """A rendered line decoded by what it contains: ("LEEF 2.0", view), ("CEF 0", view),
    ("JSON", object), or (None, None)."""
    class _F:  # a stand-in sink config for sink_view
        def __init__(self, fmt):
            self.format = fmt
    try:
        if "LEEF:" in text:
            v = sink_view(_F("leef"), text)
            if "_decode_error" not in v:
                return f"LEEF {v['header']['version']}", v
        if "CEF:" in text:
            v = sink_view(_F("cef"), text)
            if "_decode_error" not in v:
                return f"CEF {v['header']['version']}", v
        s = text.lstrip()
        if s[:1] in "{[":
            return "JSON", json.loads(s)
    except Exception:
        pass
    return None, None



def _explode(text: str) -> list[str]:
    """A rendered line as one line per LEEF/CEF attribute (JSON: pretty), for diffs."""
    if "LEEF:" in text:
        try:
            from parsers import leef
            r = leef.parse(text)
            h = r.header()
            head = f"LEEF:{h['version']}|{h['vendor']}|{h['product']}|{h['product_version']}|{h['event_id']}|"
            return ([f"syslog  {r.syslog}"] if r.syslog else []) + [head] + \
                [f"{k}={v}" for k, v in r.attributes.items()]
        except Exception:
            pass
    if "CEF:" in text:
        try:
            from parsers import cef
            r = cef.parse(text)
            head = (f"CEF:{r.version}|{r.vendor}|{r.product}|{r.device_version}|{r.event_class_id}|"
                    f"{r.name}|{r.severity}|")
            return ([f"syslog  {r.prefix}"] if r.prefix else []) + [head] + \
                [f"{k}={v}" for k, v in r.extension.items()]
        except Exception:
            pass
    s = text.lstrip()
    if s.startswith("{"):
        try:
            return _pretty(json.loads(s)).splitlines()
        except ValueError:
            pass
    return text.splitlines() or [""]



def _udiff(a: list[str], b: list[str]) -> list[str]:
    return [ln.rstrip("\n") for ln in difflib.unified_diff(a, b, "expected", "actual", n=2, lineterm="")]



def output_diff(want: str, got: str) -> list[str]:
    """A readable diff of two rendered lines: the fields that differ (LEEF/CEF attributes
    and header, JSON paths), a unified diff one attribute per line, and the first
    differing character."""
    lines: list[str] = []
    kw, vw = _decode_any(want)
    kg, vg = _decode_any(got)
    if kw and kg:
        if kw != kg:
            lines.append(f"encoding: expected {kw}, actual {kg}")
        else:
            diffs: list[str] = []
            _struct_diff(vw, vg, "", diffs)
            lines.extend(diffs[:30])
            if len(diffs) > 30:
                lines.append(f"... {len(diffs) - 30} more")
    ud = _udiff(_explode(want), _explode(got))
    if not ud:
        ud = _udiff(want.splitlines() or [""], got.splitlines() or [""])
    lines.extend(ud)
    i = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
    lines.append(f"first difference at character {i}: expected {_show(want[i:i + 30])}, actual {_show(got[i:i + 30])}"
                 + (f" (lengths {len(want)} and {len(got)})" if len(want) != len(got) else ""))
    return lines

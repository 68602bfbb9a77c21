"""``--update``: bless the actual results into the expected files (a small TOML writer)."""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
from pathlib import Path

from .model import CASE_KEYS, CaseError, DEFAULT_FIELDS, DEFAULT_SYSLOG, Result, _MISSING, _is_condition
from .compare import _compact, _cond_failures, _equal, _get, _is_render_error, _pretty, _try_json, sink_view


# =============================================================================== --update

def _literal(got):
    return {"absent": True} if got is _MISSING or got is None else got



def _refresh_tree(exp: dict, actual) -> dict:
    """The same keys as ``exp`` with the actual values (conditions that hold are kept)."""
    new = {}
    for key, want in exp.items():
        got = _get(actual, key)
        if _is_condition(want):
            new[key] = want if not _cond_failures(want, got) else _literal(got)
        elif isinstance(want, dict) and isinstance(got, dict):
            new[key] = _refresh_tree(want, got)
        elif want is None:
            new[key] = want if got is _MISSING or got is None else got
        else:
            new[key] = want if _equal(want, got) else _literal(got)
    return new



def _sink_full(payload, sc, kind: str) -> dict:
    if _is_render_error(payload):
        return {"error": payload["error"]}
    if isinstance(payload, dict):
        return {"body": payload if kind == "json" else _pretty(payload)}
    return {"output": payload}



def _message_full(rec: dict, cfg, kind: str) -> dict:
    m: dict = {"parse": "ok" if rec["ok"] else "error"}
    if not rec["ok"]:
        m["error"] = rec["error"]["reason"]
        m["error_offset"] = rec["error"]["offset"]
    if rec.get("syslog"):
        m["syslog"] = {k: rec["syslog"][k] for k in DEFAULT_SYSLOG if rec["syslog"].get(k) is not None}
    ev = rec.get("event") or {}
    m["fields"] = {k: ev[k] for k in DEFAULT_FIELDS if ev.get(k) is not None}
    m["routes"] = list(rec.get("routes") or [])
    m["sinks"] = {s: _sink_full(p, cfg.sinks[s], kind) for s, p in (rec.get("sinks") or {}).items()}
    return m



def _message_refresh(exp: dict, rec: dict, cfg, kind: str) -> dict:
    new: dict = {}
    ok = rec["ok"]
    changed = "parse" in exp and (exp["parse"] == "ok") != ok
    for k in exp:
        if k == "parse":
            new["parse"] = "ok" if ok else "error"
        elif k in ("error", "error_offset"):
            if ok:
                continue
            new[k] = exp[k] if (k == "error" and exp[k] in rec["error"]["reason"]) else \
                rec["error"]["reason" if k == "error" else "offset"]
        elif k in ("syslog", "fields"):
            new[k] = _refresh_tree(exp[k], rec.get("syslog" if k == "syslog" else "event") or {})
        elif k == "routes":
            new[k] = list(rec.get("routes") or [])
        elif k == "sinks":
            new[k] = _sinks_refresh(exp[k], rec, cfg, kind)
    if changed and not ok:
        new.setdefault("error", rec["error"]["reason"])
    return new



def _sinks_refresh(exp: dict, rec: dict, cfg, kind: str) -> dict:
    actual = rec.get("sinks") or {}
    new: dict = {}
    for name, sx in exp.items():
        if name not in cfg.sinks:
            continue
        if name not in actual:
            new[name] = {"receives": False}
            continue
        payload = actual[name]
        sc = cfg.sinks[name]
        if sx.get("receives") is False or not any(k in sx for k in ("output", "body", "fields", "error")) \
                or _is_render_error(payload) or "error" in sx:
            ns = _sink_full(payload, sc, kind)
            if "fields" in sx and not _is_render_error(payload):
                ns["fields"] = _refresh_tree(sx["fields"], sink_view(sc, payload))
            new[name] = ns
            continue
        ns = {}
        if "receives" in sx:
            ns["receives"] = True
        if "output" in sx:
            ns["output"] = payload if isinstance(payload, str) else _compact(payload)
        if "body" in sx:
            body = payload if isinstance(payload, dict) else _try_json(payload)
            ns["body"] = body if (kind == "json" or not isinstance(sx["body"], str)) else _pretty(body)
        if "fields" in sx:
            ns["fields"] = _refresh_tree(sx["fields"], sink_view(sc, payload))
        new[name] = ns
    for name, payload in actual.items():
        if name not in new:
            new[name] = _sink_full(payload, cfg.sinks[name], kind)
    return new



def bless(res: Result, cfg) -> dict:
    """The expected data that describes ``res`` exactly, keeping the case's choice of
    what to check (its field subset, its conditions that still hold, its layout)."""
    c = res.case
    kind = "json" if c.kind == "json" else "toml"
    data = {k: v for k, v in c.data.items() if k in CASE_KEYS and k != "message"}
    if c.kind == "new":
        data = {}
        if c.input_path is not None and c.input_path.suffix == ".bin" and res.framing:
            data["framing_problems"] = list(res.framing)
    elif "framing_problems" in data or res.framing:
        data["framing_problems"] = list(res.framing)
    exps = c.expectations()
    msgs = []
    for i, rec in enumerate(res.records):
        msgs.append(_message_refresh(exps[i], rec, cfg, kind) if i < len(exps) else _message_full(rec, cfg, kind))
    if len(msgs) == 1 and (c.shorthand or c.kind == "new"):
        data.update(msgs[0])
    else:
        data["message"] = msgs
    return data



def update_case(res: Result, cfg) -> Path:
    """Write the blessed expected file of ``res`` (a new case gets NAME.toml)."""
    c = res.case
    if c.kind == "config":
        raise CaseError("", "[[tests]] in the config are not rewritten: edit them by hand")
    if c.error or res.status == "error":
        raise CaseError("", f"cannot update a case that does not load or run: {c.error or res.problems[0]}")
    data = bless(res, cfg)
    if c.kind == "new":
        assert c.input_path is not None
        path = c.input_path.with_suffix(".toml")
        text = dumps_toml(data, header=f"# {c.name}: written by relay test-parse --update; edit freely")
    elif c.kind == "json":
        path = c.path
        text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    else:
        path = c.path
        text = dumps_toml(data, header=c.header)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path



# ------------------------------------------------------------------ a small TOML writer

_BARE = re.compile(r"[A-Za-z0-9_-]+")



_CTRL = re.compile("[\x00-\x08\x0a-\x1f\x7f]")



def _tkey(k: str) -> str:
    return k if _BARE.fullmatch(k) else _tstr(k)



def _tstr(s: str, multiline: bool = False) -> str:
    s = s.encode("utf-8", "replace").decode("utf-8")  # lone surrogates -> '?'
    if multiline and "\n" in s and "'''" not in s and not s.endswith("'") and \
            not _CTRL.search(s.replace("\n", "")):
        return "'''\n" + s + "'''"
    if not _CTRL.search(s):
        if '"' not in s and "\\" not in s:
            return '"' + s + '"'
        if "'" not in s:
            return "'" + s + "'"
    out = []
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'



def _tval(v, key: str = "") -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v != v:
            return "nan"
        if v in (float("inf"), float("-inf")):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _tstr(v, multiline=key == "body")
    if isinstance(v, _dt.datetime):
        return v.isoformat()
    if v is None:
        return "{ absent = true }"
    if isinstance(v, list):
        if any(x is None for x in v):
            raise CaseError(key, "an array with null cannot be written in TOML: use a .json expected file")
        return "[" + ", ".join(_tval(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_tkey(k)} = {_tval(x, k)}" for k, x in v.items()) + " }" if v else "{}"
    raise CaseError(key, f"cannot write {type(v).__name__} in TOML")



def _is_subtable(v) -> bool:
    return isinstance(v, dict) and not _is_condition(v) and v is not None



def _emit(lines: list[str], path: list[str], d: dict) -> None:
    for k, v in d.items():
        if not _is_subtable(v) and not (k == "message" and not path and isinstance(v, list)):
            lines.append(f"{_tkey(k)} = {_tval(v, k)}")
    for k, v in d.items():
        if k == "message" and not path and isinstance(v, list):
            for item in v:
                lines.append("")
                lines.append("[[message]]")
                _emit(lines, ["message"], item)
        elif _is_subtable(v):
            sub = path + [k]
            simple = any(not _is_subtable(x) for x in v.values())
            if simple or not v:
                lines.append("")
                lines.append("[" + ".".join(_tkey(p) for p in sub) + "]")
            _emit(lines, sub, v)



def dumps_toml(data: dict, header: str = "") -> str:
    """``data`` (an expected file) as TOML; ``header`` (comment lines) on top."""
    lines: list[str] = header.splitlines() if header else []
    if lines:
        lines.append("")
    _emit(lines, [], data)
    text = "\n".join(lines).strip("\n") + "\n"
    return re.sub(r"\n{3,}", "\n\n", text)

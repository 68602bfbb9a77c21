"""The case files and ``[[tests]]`` tables: loading, checking, and the result record."""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


#: ``received`` when a case does not say: 2026-01-01T00:00:00Z.  Fixed so that results
#: never depend on the clock (RFC 3164 year guessing, events without a timestamp).
DEFAULT_RECEIVED = 1767225600.0



EXPECTED_SUFFIXES = (".toml", ".json")



INPUT_SUFFIXES = (".log", ".bin", ".ndjson", ".jsonl")   # the last two: request bodies of an http source



CASE_KEYS = ("description", "input", "inputs", "input_file", "framed", "max_frame", "source", "lenient",
             "received", "peer", "framing_problems", "message")



TEST_KEYS = ("name",) + CASE_KEYS                     # a [[tests]] table in the config



MESSAGE_KEYS = ("parse", "error", "error_offset", "syslog", "fields", "routes", "sinks")



SINK_KEYS = ("receives", "output", "body", "fields", "error")



OPS = ("eq", "ne", "exists", "absent", "matches", "contains", "gt", "ge", "lt", "le", "in")



#: canonical fields written into a new case by ``--update``
DEFAULT_FIELDS = ("kind", "vendor", "product", "id", "dedup_key", "event", "risk_score", "severity", "status")



DEFAULT_SYSLOG = ("format", "hostname", "app_name", "msgid")



_MISSING = object()



class CaseError(ValueError):
    """A case file that cannot be read or has keys of the wrong kind (``where`` is the key path)."""

    def __init__(self, where: str, message: str) -> None:
        self.where, self.message = where, message
        super().__init__(f"{where}: {message}" if where else message)



# =============================================================================== cases

@dataclass
class Case:
    name: str                      # "sigma/high_risk", or "[[tests]] 2: name" for config tests
    path: Path | None              # the expected file (None for a config test or a new case)
    kind: str                      # "toml" | "json" | "config" | "new"
    data: dict = field(default_factory=dict)
    input_path: Path | None = None
    base_dir: Path = Path(".")     # relative input_file paths start here
    header: str = ""               # leading comment lines of a TOML file (kept by --update)
    error: str | None = None       # why the case could not be loaded

    @property
    def deps(self) -> set[Path]:
        return {p for p in (self.path, self.input_path) if p is not None}

    @property
    def shorthand(self) -> bool:
        """Expectations written at the top level (one message) instead of [[message]]."""
        return "message" not in self.data and any(k in self.data for k in MESSAGE_KEYS)

    def expectations(self) -> list[dict]:
        if "message" in self.data:
            return list(self.data["message"])
        if self.shorthand:
            return [{k: self.data[k] for k in MESSAGE_KEYS if k in self.data}]
        return []



def load_cases(directory: str | os.PathLike) -> list[Case]:
    """Every case under ``directory`` (recursively), sorted by name.  An expected file
    (.toml/.json) is paired with the input of the same name (.log/.bin) beside it; an
    input with no expected file is a *new* case (``--update`` writes its expected file).
    A file that cannot be read gives a case with ``error`` set, not an exception."""
    root = Path(directory)
    if not root.is_dir():
        raise CaseError(str(root), "is not a directory")
    found: dict[Path, dict[str, Path]] = {}   # stem path -> {suffix: path}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            if fn.startswith("."):
                continue
            p = Path(dirpath) / fn
            if p.suffix in EXPECTED_SUFFIXES or p.suffix in INPUT_SUFFIXES:
                found.setdefault(p.with_suffix(""), {})[p.suffix] = p
    cases = []
    for stem in sorted(found, key=lambda s: s.relative_to(root).as_posix()):
        files = found[stem]
        name = stem.relative_to(root).as_posix()
        exp = [files[s] for s in EXPECTED_SUFFIXES if s in files]
        inp = [files[s] for s in INPUT_SUFFIXES if s in files]
        if len(exp) > 1 or len(inp) > 1:
            both = exp if len(exp) > 1 else inp
            cases.append(Case(name, both[0], "toml" if both[0].suffix == ".toml" else "json",
                              base_dir=stem.parent,
                              error=f"ambiguous: {' and '.join(p.name for p in both)} (keep one)"))
            continue
        if not exp:
            cases.append(Case(name, None, "new", input_path=inp[0], base_dir=stem.parent))
            continue
        cases.append(load_case(exp[0], name=name, input_path=inp[0] if inp else None))
    return cases



def load_case(path: str | os.PathLike, *, name: str | None = None, input_path: Path | None = None) -> Case:
    p = Path(path)
    kind = "toml" if p.suffix == ".toml" else "json"
    case = Case(name or p.stem, p, kind, input_path=input_path, base_dir=p.parent)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        case.error = f"cannot read: {e}"
        return case
    try:
        data = tomllib.loads(text) if kind == "toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as e:
        case.error = f"not valid {kind.upper()}: {e}"
        return case
    if kind == "toml":
        head = []
        for line in text.splitlines():
            if line.startswith("#") or (head and not line.strip()):
                head.append(line)
            else:
                break
        while head and not head[-1].strip():
            head.pop()
        case.header = "\n".join(head)
    try:
        _check_case_data(data, "", CASE_KEYS)
        if "input_file" in data:
            if input_path is not None:
                raise CaseError("input_file", f"the input is also given as {input_path.name}: keep one")
            case.input_path = (p.parent / data["input_file"]).resolve()
        elif input_path is None and "input" not in data and "inputs" not in data:
            raise CaseError("", f"no input: add {p.stem}.log / {p.stem}.bin beside it, "
                                "or input = '...', inputs = [...] or input_file = '...'")
        elif input_path is not None and ("input" in data or "inputs" in data):
            raise CaseError("input", f"the input is also given as {input_path.name}: keep one")
    except CaseError as e:
        case.error = str(e)
    case.data = data
    return case



def config_cases(cfg, tests: list | None = None) -> list[Case]:
    """The config's ``[[tests]]`` tables as cases (``tests`` defaults to ``cfg.tests``)."""
    if tests is None:
        tests = getattr(cfg, "tests", None) or []
    base = Path(cfg.file).resolve().parent if getattr(cfg, "file", None) else Path.cwd()
    out = []
    for i, t in enumerate(tests):
        label = t.get("name") if isinstance(t, dict) else None
        name = f"[[tests]] {i + 1}" + (f": {label}" if label else "")
        case = Case(name, None, "config", base_dir=base)
        try:
            _check_case_data(t, f"tests[{i}]", TEST_KEYS)
            if "input" not in t and "inputs" not in t and "input_file" not in t:
                raise CaseError(f"tests[{i}]", "needs input = '...', inputs = [...] or input_file = '...'")
        except CaseError as e:
            case.error = str(e)
        data = {k: v for k, v in t.items() if k != "name"} if isinstance(t, dict) else {}
        if "input_file" in data:
            case.input_path = (base / data["input_file"]).resolve()
        case.data = data
        out.append(case)
    return out



def validate_config_tests(tests: Any, file: str, cfg=None) -> None:
    """Check the ``[[tests]]`` of a config (keys, types, and with ``cfg`` the source and
    sink names they use); raises :class:`relay.config.ConfigError` with the key path."""
    from ...config import ConfigError
    if not isinstance(tests, list):
        raise ConfigError(file, "tests", "must be an array of tables ([[tests]])")
    for i, t in enumerate(tests):
        try:
            _check_case_data(t, f"tests[{i}]", TEST_KEYS)
            if "input" not in t and "inputs" not in t and "input_file" not in t:
                raise CaseError(f"tests[{i}]", "needs input = '...', inputs = [...] or input_file = '...'")
            if cfg is not None:
                if "source" in t and t["source"] not in cfg.sources:
                    raise CaseError(f"tests[{i}].source", f"no source named {t['source']!r} "
                                                          f"(sources: {', '.join(cfg.sources) or 'none'})")
                for j, m in enumerate(t.get("message") or [t]):
                    for s in (m.get("sinks") or {}):
                        if s not in cfg.sinks:
                            at = f"tests[{i}]" + (f".message[{j}]" if "message" in t else "")
                            raise CaseError(f"{at}.sinks.{s}", f"no sink named {s!r} "
                                                               f"(sinks: {', '.join(cfg.sinks) or 'none'})")
        except CaseError as e:
            raise ConfigError(file, e.where, e.message) from None



# ------------------------------------------------------------------ structure checks

def _is_condition(v) -> bool:
    return isinstance(v, dict) and bool(v) and all(k in OPS for k in v)



def _type(v) -> str:
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array",
            dict: "a table"}.get(type(v), type(v).__name__)



def _check_case_data(data, where: str, keys) -> None:
    if not isinstance(data, dict):
        raise CaseError(where, f"must be a table, not {_type(data)}")
    unknown = [k for k in data if k not in keys and k not in MESSAGE_KEYS]
    if unknown:
        raise CaseError(_at(where, unknown[0]), f"unknown key (known: {', '.join(sorted(set(keys) | set(MESSAGE_KEYS) - {'message'}))})")
    types = {"description": str, "input": str, "inputs": list, "input_file": str, "framed": bool,
             "max_frame": int, "source": str, "lenient": bool, "peer": str, "framing_problems": list,
             "message": list, "name": str}
    for k, t in types.items():
        if k in data and (not isinstance(data[k], t) or (t is int and isinstance(data[k], bool))):
            raise CaseError(_at(where, k), f"must be {_type(t())}, not {_type(data[k])}")
    if "received" in data:
        _received(data["received"], _at(where, "received"))
    if "input" in data and "inputs" in data:
        raise CaseError(_at(where, "inputs"), "give input or inputs, not both")
    for i, s in enumerate(data.get("inputs") or ()):
        if not isinstance(s, str):
            raise CaseError(f"{_at(where, 'inputs')}[{i}]", f"must be a string, not {_type(s)}")
    for i, s in enumerate(data.get("framing_problems") or ()):
        if not isinstance(s, str):
            raise CaseError(f"{_at(where, 'framing_problems')}[{i}]", f"must be a string, not {_type(s)}")
    if "message" in data:
        if any(k in data for k in MESSAGE_KEYS):
            k = next(k for k in MESSAGE_KEYS if k in data)
            raise CaseError(_at(where, k), "with [[message]] tables every expectation goes inside them")
        for i, m in enumerate(data["message"]):
            _check_message(m, f"{_at(where, 'message')}[{i}]")
    else:
        _check_message({k: data[k] for k in MESSAGE_KEYS if k in data}, where)



def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key



def _check_message(m, where: str) -> None:
    if not isinstance(m, dict):
        raise CaseError(where, f"must be a table, not {_type(m)}")
    for k in m:
        if k not in MESSAGE_KEYS:
            raise CaseError(_at(where, k), f"unknown key (known: {', '.join(MESSAGE_KEYS)})")
    if "parse" in m and m["parse"] not in ("ok", "error"):
        raise CaseError(_at(where, "parse"), f"must be \"ok\" or \"error\", not {m['parse']!r}")
    if "error" in m and not isinstance(m["error"], str):
        raise CaseError(_at(where, "error"), "must be a string (a part of the parse error's reason)")
    if "error_offset" in m and (not isinstance(m["error_offset"], int) or isinstance(m["error_offset"], bool)):
        raise CaseError(_at(where, "error_offset"), "must be an integer (a byte offset)")
    if "routes" in m:
        if not isinstance(m["routes"], list) or not all(isinstance(r, str) for r in m["routes"]):
            raise CaseError(_at(where, "routes"), "must be an array of route names")
    for k in ("syslog", "fields"):
        if k in m:
            if not isinstance(m[k], dict):
                raise CaseError(_at(where, k), f"must be a table, not {_type(m[k])}")
            _check_tree(m[k], _at(where, k))
    if "sinks" in m:
        if not isinstance(m["sinks"], dict):
            raise CaseError(_at(where, "sinks"), f"must be a table of sink names, not {_type(m['sinks'])}")
        for s, sx in m["sinks"].items():
            at = _at(_at(where, "sinks"), s)
            if not isinstance(sx, dict):
                raise CaseError(at, f"must be a table, not {_type(sx)}")
            for k in sx:
                if k not in SINK_KEYS:
                    raise CaseError(_at(at, k), f"unknown key (known: {', '.join(SINK_KEYS)})")
            if "receives" in sx and not isinstance(sx["receives"], bool):
                raise CaseError(_at(at, "receives"), "must be true or false")
            if sx.get("receives") is False and len(sx) > 1:
                raise CaseError(_at(at, "receives"), "receives = false cannot be combined with other keys")
            for k in ("output", "error"):
                if k in sx and not isinstance(sx[k], str):
                    raise CaseError(_at(at, k), f"must be a string, not {_type(sx[k])}")
            if "body" in sx:
                if isinstance(sx["body"], str):
                    try:
                        json.loads(sx["body"])
                    except ValueError as e:
                        raise CaseError(_at(at, "body"), f"is not JSON: {e}") from None
                elif not isinstance(sx["body"], dict):
                    raise CaseError(_at(at, "body"), "must be a JSON object (or its text)")
            if "fields" in sx:
                if not isinstance(sx["fields"], dict):
                    raise CaseError(_at(at, "fields"), f"must be a table, not {_type(sx['fields'])}")
                _check_tree(sx["fields"], _at(at, "fields"))



def _check_tree(tree: dict, where: str) -> None:
    for k, v in tree.items():
        at = _at(where, k)
        if _is_condition(v):
            for op, arg in v.items():
                if op in ("exists", "absent") and not isinstance(arg, bool):
                    raise CaseError(f"{at}.{op}", "must be true or false")
                if op == "matches":
                    if not isinstance(arg, str):
                        raise CaseError(f"{at}.{op}", "must be a regular expression (string)")
                    try:
                        re.compile(arg)
                    except re.error as e:
                        raise CaseError(f"{at}.{op}", f"bad regular expression: {e}") from None
                if op in ("gt", "ge", "lt", "le") and (not isinstance(arg, (int, float)) or isinstance(arg, bool)):
                    raise CaseError(f"{at}.{op}", "must be a number")
                if op == "in" and not isinstance(arg, list):
                    raise CaseError(f"{at}.{op}", "must be an array")
        elif isinstance(v, dict):
            _check_tree(v, at)



def _received(v, where: str = "received") -> float:
    if isinstance(v, _dt.datetime):
        if v.tzinfo is None:
            raise CaseError(where, "needs a UTC offset (e.g. 2026-03-13T04:30:00Z)")
        return v.timestamp()
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, str):
        try:
            d = _dt.datetime.fromisoformat(v.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise CaseError(where, f"{v!r} is not an RFC 3339 time") from None
        if d.tzinfo is None:
            raise CaseError(where, "needs a UTC offset (e.g. 2026-03-13T04:30:00Z)")
        return d.timestamp()
    raise CaseError(where, f"must be an RFC 3339 time or epoch seconds, not {_type(v)}")



# =============================================================================== running

@dataclass
class Result:
    case: Case
    status: str                                     # "pass" | "fail" | "error" | "new"
    problems: list[str] = field(default_factory=list)   # the readable report (indented lines)
    records: list[dict] = field(default_factory=list)   # testparse records, one per message
    labels: list[str] = field(default_factory=list)
    raws: list[bytes] = field(default_factory=list)
    framing: list[str] = field(default_factory=list)    # framing problem kinds
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "pass"

    def signature(self) -> tuple:
        return (self.status, tuple(self.problems))



def _load_config(config_path):
    return load_config(config_path)



def load_config(config_path, *, secrets: bool = True):
    """The config, with its ``[[tests]]`` checked (keys, types, the source and sink names they
    use): what the tools use.  Raises :class:`relay.config.ConfigError`."""
    from ...config import load
    cfg = load(config_path, secrets=secrets)
    if cfg.tests:
        validate_config_tests(cfg.tests, cfg.file, cfg)
    return cfg

"""Golden-file rule tests: raw device bytes in, the exact bytes each sink receives out.

A *case* is a raw input (one message, several, or a framed TCP capture) and an
*expected* file saying what must come out of the real pipeline: parse ok/error,
canonical fields (a subset), matched routes, and per sink the exact rendered output
and/or field-level conditions.  Every message goes through the same code the relay
runs -- :mod:`parsers.framing` for captures, :func:`relay.testparse.analyse` (parser,
normalisers, enrichment when configured), and :class:`relay.testparse.ConfigView` (the
configured routes and the sinks' encoders) -- with no network and no queues.

The format is documented in docs/cases.md.  In short::

    cases/
      sigma/high_risk.log       one message per line (or high_risk.bin: a framed capture)
      sigma/high_risk.toml      what must come out (or high_risk.json)
      parse_error.toml          input given inline: input = '...' / inputs = [...]

    # high_risk.toml
    [[message]]                          # one per input message, in order
    parse = "ok"
    routes = ["high_risk", "archive"]    # exactly these, in this order
    [message.fields]                     # canonical fields: a subset
    risk_score = 82
    [message.sinks.qradar]
    output = '<138>1 2026-03-13T04:30:00.123Z rx-01 SigmaIncident - created - LEEF:2.0|...'
    [message.sinks.qradar.fields]        # conditions on the decoded output
    sev = "9"
    riskScore = { exists = true }

The same expectations can live in the config (``[[tests]]`` tables, one message each);
see :func:`run_config_tests` and :func:`startup_tests`.

Entry points for the command line: :func:`cli_cases` (``relay test-parse --cases``,
with ``--update``, ``--junit`` and ``--watch``) and :func:`cli_config_tests`
(``relay validate --run-tests``).
"""
from __future__ import annotations

import datetime as _dt
import difflib
import inspect
import io
import json
import os
import re
import socket
import sys
import time
import tomllib
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from dataclasses import dataclass, field, fields as dc_fields, is_dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = [
    "Case", "Result", "Runner", "CaseError", "load_cases", "load_case", "config_cases", "run_cases",
    "format_result", "summary_line", "bless", "update_case", "write_junit", "watch", "cli_cases",
    "cli_config_tests", "run_config_tests", "startup_tests", "validate_config_tests", "load_config", "DEFAULT_RECEIVED",
    "EXPECTED_SUFFIXES", "INPUT_SUFFIXES",
]

#: ``received`` when a case does not say: 2026-01-01T00:00:00Z.  Fixed so that results
#: never depend on the clock (RFC 3164 year guessing, events without a timestamp).
DEFAULT_RECEIVED = 1767225600.0
EXPECTED_SUFFIXES = (".toml", ".json")
INPUT_SUFFIXES = (".log", ".bin")

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
    from ..config import ConfigError
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


def _analyse_params() -> set:
    from .testparse import analyse
    return set(inspect.signature(analyse).parameters)


@contextmanager
def _metrics_untouched():
    """Counters as they were before: test events must not show in the relay's metrics."""
    from ..metrics import REGISTRY
    counters = getattr(REGISTRY, "_counters", None)
    if counters is None:  # pragma: no cover - a registry without the attribute
        yield
        return
    before = {k: c.value for k, c in counters.items()}
    try:
        yield
    finally:
        for k, c in counters.items():
            c.value = before.get(k, 0)


class Runner:
    """Runs cases against one loaded config (one ConfigView, built once)."""

    def __init__(self, cfg) -> None:
        from .testparse import ConfigView
        self.cfg = cfg
        with _metrics_untouched():
            self.view = ConfigView(cfg)
        self._params = _analyse_params()

    # -------------------------------------------------------------- inputs
    def inputs(self, case: Case) -> tuple[list[tuple[str, bytes]], list[str]]:
        from .testparse import iter_inputs
        d = case.data
        framed = d.get("framed", case.input_path is not None and case.input_path.suffix == ".bin")
        max_frame = d.get("max_frame", 65536)
        problems: list = []
        if case.input_path is not None:
            try:
                with open(case.input_path, "rb") as fh:
                    msgs = list(iter_inputs((), fh, framed, max_frame, problems))
            except OSError as e:
                raise CaseError("input_file", f"cannot read {case.input_path}: {e}") from None
        else:
            items = [d["input"]] if "input" in d else list(d.get("inputs", ()))
            if framed:
                stream = io.BytesIO(b"".join(s.encode("utf-8", "surrogateescape") for s in items))
                msgs = list(iter_inputs((), stream, True, max_frame, problems))
            else:
                msgs = [(f"input {i}", s.encode("utf-8", "surrogateescape")) for i, s in enumerate(items, 1)]
        return msgs, [p.kind for p in problems]

    # -------------------------------------------------------------- one case
    def run(self, case: Case) -> Result:
        t0 = time.perf_counter()
        res = Result(case, "pass")
        try:
            with _metrics_untouched():
                self._run(case, res)
        except CaseError as e:
            res.status, res.problems = "error", [f"case error: {e}"]
        except Exception as e:  # a bug in a stage: report it as this case's error, go on
            res.status, res.problems = "error", [f"internal error: {type(e).__name__}: {e}"]
        res.seconds = time.perf_counter() - t0
        return res

    def _run(self, case: Case, res: Result) -> None:
        from .testparse import analyse
        if case.error:
            res.status, res.problems = "error", [f"case error: {case.error}"]
            return
        d = case.data
        lenient = d.get("lenient", False)
        src = d.get("source")
        if src is not None:
            if src not in self.cfg.sources:
                raise CaseError("source", f"no source named {src!r} in {self.cfg.file} "
                                          f"(sources: {', '.join(self.cfg.sources) or 'none'})")
            lenient = lenient or self.cfg.sources[src].lenient
        received = _received(d["received"]) if "received" in d else DEFAULT_RECEIVED
        kw: dict = {"lenient": lenient, "view": self.view, "received": received}
        if "peer" in d or src is not None:
            missing = [k for k in ("peer", "source") if k not in self._params]
            if "peer" in d and "peer" in missing:
                raise CaseError("peer", "this build's relay/testparse.analyse() takes no peer (see docs/cases.md)")
            if "peer" in d:
                kw["peer"] = d["peer"]
            if src is not None and "source" not in missing:
                kw["source"] = src
        msgs, framing = self.inputs(case)
        res.framing = framing
        for label, raw in msgs:
            res.labels.append(label)
            res.raws.append(raw)
            res.records.append(analyse(raw, **kw))
        if case.kind == "new":
            res.status = "new"
            res.problems = [f"no expected file: run with --update to create {case.name}.toml"]
            return
        problems: list[str] = []
        if not msgs:
            problems.append("the input has no messages")
        exps = case.expectations()
        want_framing = d.get("framing_problems", [])
        if (framing or want_framing) and framing != want_framing:
            problems.append(f"framing_problems: expected {_show(want_framing)}, actual {_show(framing)}")
        if len(exps) != len(msgs):
            problems.append(f"the input has {len(msgs)} message(s), the expected file describes {len(exps)}"
                            + (" (a [[message]] table per message, in order)" if exps else ""))
        for i, (exp, rec) in enumerate(zip(exps, res.records)):
            lines = check_message(exp, rec, self.cfg)
            if lines:
                head = res.labels[i] if len(msgs) == 1 else f"message {i + 1} ({res.labels[i]})"
                problems.append(f"{head}: {_clip(rec['input'], 110)}")
                problems.extend("  " + ln for ln in lines)
        if problems:
            res.status, res.problems = "fail", problems


def run_cases(runner: Runner, cases: list[Case]) -> list[Result]:
    return [runner.run(c) for c in cases]


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


# =============================================================================== reports

def format_result(res: Result, *, verbose_pass: bool = True) -> str:
    c = res.case
    where = f"  [{c.path or c.input_path}]" if (c.path or c.input_path) else ""
    if res.status == "pass":
        return f"ok    {c.name}\n" if verbose_pass else ""
    tag = {"fail": "FAIL", "error": "ERROR", "new": "NEW"}[res.status]
    lines = [f"{tag:<5} {c.name}{where}"] + ["    " + p for p in res.problems]
    return "\n".join(lines) + "\n"


def counts(results: list[Result]) -> tuple[int, int]:
    passed = sum(1 for r in results if r.ok)
    return passed, len(results) - passed


def summary_line(results: list[Result]) -> str:
    """The plain ``N passed, N failed`` line CI systems read."""
    p, f = counts(results)
    return f"{p} passed, {f} failed"


_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml_text(s: str) -> str:
    return _XML_BAD.sub(lambda m: f"\\x{ord(m.group()):02x}", s)


def write_junit(results: list[Result], path: str | os.PathLike, suite: str = "relay.cases") -> None:
    """JUnit XML: <testsuites><testsuite tests= failures= errors= skipped= time=>
    <testcase classname= name= time=> with <failure> or <error> and the diff as text."""
    total_time = sum(r.seconds for r in results)
    failures = sum(1 for r in results if r.status in ("fail", "new"))
    errors = sum(1 for r in results if r.status == "error")
    root = ET.Element("testsuites", name=suite, tests=str(len(results)), failures=str(failures),
                      errors=str(errors), time=f"{total_time:.3f}")
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(results)), failures=str(failures),
                       errors=str(errors), skipped="0", time=f"{total_time:.3f}",
                       timestamp=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
                       hostname=socket.gethostname())
    for r in results:
        c = r.case
        group, _, leaf = c.name.rpartition("/")
        attrs = {"classname": _xml_text(f"{suite}.{group.replace('/', '.')}" if group else suite),
                 "name": _xml_text(leaf or c.name), "time": f"{r.seconds:.3f}"}
        src = c.path or c.input_path
        if src is not None:
            attrs["file"] = str(src)
        tc = ET.SubElement(ts, "testcase", **attrs)
        if r.status != "pass":
            first = next((p for p in r.problems if p.strip()), r.status)
            el = ET.SubElement(tc, "error" if r.status == "error" else "failure",
                               message=_xml_text(_clip(first.strip(), 300)),
                               type={"fail": "mismatch", "new": "no-expected-file", "error": "case-error"}[r.status])
            el.text = _xml_text("\n".join(r.problems))
    ET.indent(root)
    data = ET.tostring(root, encoding="unicode", xml_declaration=False)
    Path(path).write_text('<?xml version="1.0" encoding="UTF-8"?>\n' + data + "\n", encoding="utf-8")


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


# =============================================================================== config tests

def run_config_tests(cfg, tests: list | None = None) -> list[Result]:
    """Run the config's ``[[tests]]`` (or ``tests``) against the config itself."""
    cases = config_cases(cfg, tests)
    if not cases:
        return []
    return run_cases(Runner(cfg), cases)


def startup_tests(cfg) -> list[str]:
    """For ``relay run`` and reload with ``[relay] run_tests_at_start = true``: the report
    lines of the failing ``[[tests]]`` (empty: start)."""
    if not getattr(cfg.relay, "run_tests_at_start", False):
        return []
    from ..config import ConfigError
    try:
        validate_config_tests(cfg.tests, cfg.file, cfg)
    except ConfigError as e:
        return [str(e)]
    results = run_config_tests(cfg)
    bad = [r for r in results if not r.ok]
    if not bad:
        return []
    lines = [f"config tests failed ({summary_line(results)}); not starting with this configuration:"]
    for r in bad:
        lines.extend(format_result(r).rstrip("\n").splitlines())
    return lines


# =============================================================================== watch

def _config_paths(cfg) -> set[Path]:
    """Files the config reads (TLS files, lookup tables, secrets files...): every Path in
    the config tree except what the relay writes (``state_dir``, file sinks' ``path``)."""
    out: set[Path] = set()
    skip = {id(getattr(cfg.relay, "state_dir", None))}
    for s in getattr(cfg, "sinks", {}).values():
        skip.add(id(getattr(s, "path", None)))
    seen: set[int] = set()

    def walk(o, depth=0):
        if depth > 6 or id(o) in seen:
            return
        seen.add(id(o))
        if isinstance(o, Path):
            if id(o) not in skip and o.is_file():
                out.add(o.resolve())
        elif is_dataclass(o) and not isinstance(o, type):
            for f in dc_fields(o):
                walk(getattr(o, f.name), depth + 1)
        elif isinstance(o, dict):
            for v in o.values():
                walk(v, depth + 1)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v, depth + 1)
    walk(cfg)
    return out


def _stat(paths) -> dict[Path, tuple]:
    out = {}
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            continue
        out[p] = (st.st_mtime_ns, st.st_size)
    return out


def _case_files(cases_dir: Path) -> set[Path]:
    files = set()
    for dirpath, dirnames, filenames in os.walk(cases_dir):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fn in filenames:
            if not fn.startswith(".") and os.path.splitext(fn)[1] in EXPECTED_SUFFIXES + INPUT_SUFFIXES:
                files.add((Path(dirpath) / fn).resolve())
    return files


def _load_config(config_path):
    return load_config(config_path)


def load_config(config_path, *, secrets: bool = True):
    """The config, with its ``[[tests]]`` checked (keys, types, the source and sink names they
    use): what the tools use.  Raises :class:`relay.config.ConfigError`."""
    from ..config import load
    cfg = load(config_path, secrets=secrets)
    if cfg.tests:
        validate_config_tests(cfg.tests, cfg.file, cfg)
    return cfg


def watch(config_path: str | os.PathLike, cases_dir: str | os.PathLike, *, out=None, interval: float = 0.5,
          sleep: Callable[[float], None] = time.sleep, stop: Callable[[], bool] | None = None,
          config_tests: bool = True) -> int:
    """Run every case, then poll mtimes: when the config or a file it reads (a lookup
    table) changes, re-run everything; when a case changes, re-run that case; print only
    the cases whose result changed, and the summary line.  Ctrl-C ends it; the exit
    status is that of the last run."""
    from ..config import ConfigError
    out = out or sys.stdout
    cfg_path = Path(config_path).resolve()
    cases_dir = Path(cases_dir).resolve()
    w = out.write

    def now():
        return time.strftime("%H:%M:%S")

    def full_run():
        cfg = _load_config(cfg_path)
        runner = Runner(cfg)
        cases = load_cases(cases_dir) + (config_cases(cfg) if config_tests else [])
        return cfg, runner, {c.name: runner.run(c) for c in cases}

    cfg = runner = None
    results: dict[str, Result] = {}
    try:
        cfg, runner, results = full_run()
    except ConfigError as e:
        w(f"[{now()}] config error: {e}\n")
    except CaseError as e:
        w(f"[{now()}] {e}\n")
    for r in results.values():
        w(format_result(r, verbose_pass=False))
    w(f"[{now()}] {summary_line(list(results.values()))}; watching {cfg_path.name} and {cases_dir} (Ctrl-C ends)\n")
    out.flush() if hasattr(out, "flush") else None
    cfg_files = {cfg_path} | (_config_paths(cfg) if cfg else set())
    seen = _stat(cfg_files | _case_files(cases_dir))
    try:
        while not (stop and stop()):
            sleep(interval)
            current_files = cfg_files | _case_files(cases_dir)
            cur = _stat(current_files)
            changed = {p for p in set(cur) | set(seen) if cur.get(p) != seen.get(p)}
            if not changed:
                continue
            seen = cur
            names = ", ".join(sorted(os.path.relpath(p) for p in changed))
            w(f"[{now()}] changed: {names}\n")
            old = results
            if changed & cfg_files or runner is None:
                try:
                    cfg, runner, results = full_run()
                except ConfigError as e:
                    w(f"[{now()}] config error (keeping the last results): {e}\n")
                    continue
                cfg_files = {cfg_path} | _config_paths(cfg)
                seen = _stat(cfg_files | _case_files(cases_dir))
            else:
                cases = {c.name: c for c in load_cases(cases_dir)}
                results = {n: r for n, r in results.items() if n in cases or r.case.kind == "config"}
                for n, c in cases.items():
                    if n not in old or c.deps & changed or c.kind != old[n].case.kind:
                        results[n] = runner.run(c)
            shown = 0
            for n in sorted(set(old) | set(results)):
                a, b = old.get(n), results.get(n)
                if b is None:
                    w(f"gone  {n}\n")
                    shown += 1
                elif a is None or a.signature() != b.signature():
                    was = "new case" if a is None else ("was ok" if a.ok else f"was {a.status.upper()}")
                    if b.ok:
                        w(f"ok    {n}  ({was})\n")
                    else:
                        w(format_result(b).rstrip("\n") + f"\n      ({was})\n")
                    shown += 1
            if not shown:
                w("no result changed\n")
            w(f"[{now()}] {summary_line(list(results.values()))}\n")
            out.flush() if hasattr(out, "flush") else None
    except KeyboardInterrupt:
        w("\nwatch ended\n")
    return 0 if results and all(r.ok for r in results.values()) else 1


# =============================================================================== CLI glue

def cli_cases(config_path: str, cases_dir: str, *, update: bool = False, junit: str | None = None,
              watch_mode: bool = False, out=None) -> int:
    """``relay test-parse --config FILE --cases DIR [--update] [--junit FILE] [--watch]``.
    Exit status 0 when every case passes (or was blessed), 1 otherwise, 2 for a config
    that does not load or a cases directory that does not exist."""
    from ..config import ConfigError
    out = out or sys.stdout
    w = out.write
    try:
        cfg = _load_config(config_path)
    except ConfigError as e:
        w(f"relay test-parse: {e}\n")
        return 2
    if watch_mode:
        if update or junit:
            w("relay test-parse: --watch cannot be combined with --update or --junit\n")
            return 2
        if not Path(cases_dir).is_dir():
            w(f"relay test-parse: {cases_dir}: is not a directory\n")
            return 2
        return watch(config_path, cases_dir, out=out)
    try:
        cases = load_cases(cases_dir)
    except CaseError as e:
        w(f"relay test-parse: {e}\n")
        return 2
    runner = Runner(cfg)
    cases += config_cases(cfg)
    results = run_cases(runner, cases)
    for r in results:
        w(format_result(r))
    if update:
        for i, r in enumerate(results):
            if r.ok:
                continue
            try:
                path = update_case(r, cfg)
            except CaseError as e:
                w(f"not updated: {r.case.name}: {e.message if e.where == '' else e}\n")
                continue
            again = runner.run(_reload(r.case, path))
            results[i] = again
            w(f"updated: {path}" + ("" if again.ok else " (still failing after the update:)") + "\n")
            if not again.ok:
                w(format_result(again))
    if junit:
        write_junit(results, junit)
    w(summary_line(results) + "\n")
    return 0 if all(r.ok for r in results) else 1


def _reload(case: Case, path: Path) -> Case:
    if case.kind == "new":
        return load_case(path, name=case.name, input_path=case.input_path)
    return load_case(path, name=case.name, input_path=case.input_path if "input_file" not in case.data else None)


def cli_config_tests(cfg, *, junit: str | None = None, out=None) -> int:
    """``relay validate --run-tests CONFIG``: run its ``[[tests]]``; 0 all pass, 1 any fails."""
    out = out or sys.stdout
    results = run_config_tests(cfg)
    for r in results:
        out.write(format_result(r))
    if junit:
        write_junit(results, junit, suite="relay.config_tests")
    out.write(summary_line(results) + "\n")
    return 0 if all(r.ok for r in results) else 1

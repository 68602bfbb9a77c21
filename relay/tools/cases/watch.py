"""``--watch``: re-run the affected cases when the config, a case or a file the config reads changes."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import fields as dc_fields, is_dataclass
from pathlib import Path
from typing import Callable

from .model import CaseError, EXPECTED_SUFFIXES, INPUT_SUFFIXES, Result, _load_config, config_cases, load_cases
from .runner import Runner
from .report import format_result, summary_line


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



def _baseline(before: dict, paths: set) -> dict:
    """The stats a run started from: those taken before it, and for files first known after
    it (a lookup table a new config names) their stats now."""
    new = {p for p in paths if p not in before}
    out = {p: st for p, st in before.items() if p in paths}
    out.update(_stat(new))
    return out


def watch(config_path: str | os.PathLike, cases_dir: str | os.PathLike, *, out=None, interval: float = 0.5,
          sleep: Callable[[float], None] = time.sleep, stop: Callable[[], bool] | None = None,
          config_tests: bool = True) -> int:
    """Run every case, then poll mtimes: when the config or a file it reads (a lookup
    table) changes, re-run everything; when a case changes, re-run that case; print only
    the cases whose result changed, and the summary line.  Ctrl-C ends it; the exit
    status is that of the last run."""
    from ...config import ConfigError
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
    # files are stat'ed BEFORE each run: an edit made while a run goes on (or before the
    # "watching" line is read) is seen by the next poll, never folded into the baseline
    before = _stat({cfg_path} | _case_files(cases_dir))
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
    seen = _baseline(before, cfg_files | _case_files(cases_dir))
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
                seen = _baseline(cur, cfg_files | _case_files(cases_dir))
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

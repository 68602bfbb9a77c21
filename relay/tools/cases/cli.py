"""The command-line entry points: ``relay test-parse --cases`` and ``relay validate --run-tests``."""
from __future__ import annotations

import sys
from pathlib import Path

from .model import Case, CaseError, _load_config, config_cases, load_case, load_cases
from .runner import Runner, run_cases, run_config_tests
from .report import format_result, summary_line, write_junit
from .update import update_case
from .watch import watch


# =============================================================================== CLI glue

def cli_cases(config_path: str, cases_dir: str, *, update: bool = False, junit: str | None = None,
              watch_mode: bool = False, out=None) -> int:
    """``relay test-parse --config FILE --cases DIR [--update] [--junit FILE] [--watch]``.
    Exit status 0 when every case passes (or was blessed), 1 otherwise, 2 for a config
    that does not load or a cases directory that does not exist."""
    from ...config import ConfigError
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

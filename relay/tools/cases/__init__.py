"""Golden-file rule tests: raw device bytes in, the exact bytes each sink receives out.

A *case* is a raw input (one message, several, or a framed TCP capture) and an
*expected* file saying what must come out of the real pipeline: parse ok/error,
canonical fields (a subset), matched routes, and per sink the exact rendered output
and/or field-level conditions.  Every message goes through the same code the relay
runs -- :mod:`parsers.framing` for captures, :func:`relay.tools.testparse.analyse` (parser,
normalisers, enrichment when configured), and :class:`relay.tools.testparse.ConfigView` (the
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

The package: model.py (case files, [[tests]], results), compare.py (expectations, decoded
outputs, diffs), runner.py (the stage), report.py (text, JUnit), update.py (--update), watch.py
(--watch), cli.py (the commands).
"""
from __future__ import annotations

from .model import Case, Result, CaseError, load_cases, load_case, config_cases, validate_config_tests, load_config, DEFAULT_RECEIVED, EXPECTED_SUFFIXES, INPUT_SUFFIXES
from .compare import check_message, sink_view, output_diff
from .runner import Runner, run_cases, run_config_tests, startup_tests
from .report import format_result, summary_line, write_junit, counts
from .update import bless, update_case, dumps_toml
from .watch import watch
from .cli import cli_cases, cli_config_tests

__all__ = [
    "Case",
    "Result",
    "Runner",
    "CaseError",
    "load_cases",
    "load_case",
    "config_cases",
    "run_cases",
    "format_result",
    "summary_line",
    "bless",
    "update_case",
    "write_junit",
    "watch",
    "cli_cases",
    "cli_config_tests",
    "run_config_tests",
    "startup_tests",
    "validate_config_tests",
    "load_config",
    "DEFAULT_RECEIVED",
    "EXPECTED_SUFFIXES",
    "INPUT_SUFFIXES",
    "dumps_toml",
    "check_message",
    "sink_view",
    "output_diff",
    "counts",
]

"""Running cases through the daemon's own stage (relay/tools/testparse.py, relay/pipeline.py)."""
from __future__ import annotations

import io
import time
from contextlib import contextmanager

from .model import Case, CaseError, DEFAULT_RECEIVED, Result, _received, config_cases, validate_config_tests
from .compare import _clip, _show, check_message
from .report import format_result, summary_line



@contextmanager
def _metrics_untouched():
    """Counters as they were before: test events must not show in the relay's metrics."""
    from ...metrics import OFF_LOOP_COUNTERS, REGISTRY
    counters = getattr(REGISTRY, "_counters", None)
    if counters is None:  # pragma: no cover - a registry without the attribute
        yield
        return
    before = {k: c.value for k, c in counters.items()}
    try:
        yield
    finally:   # (in the daemon, with the web console: other threads' counters are left alone)
        for k, c in list(counters.items()):
            if k[0] not in OFF_LOOP_COUNTERS:
                c.value = before.get(k, 0)



class Runner:
    """Runs cases against one loaded config (one ConfigView, built once)."""

    def __init__(self, cfg) -> None:
        from ..testparse import ConfigView
        self.cfg = cfg
        with _metrics_untouched():
            self.view = ConfigView(cfg)

    # -------------------------------------------------------------- inputs
    def inputs(self, case: Case) -> tuple[list[tuple[str, bytes]], list[str]]:
        from ..testparse import iter_inputs
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

    def bodies(self, case: Case) -> list[tuple[str, bytes]]:
        """Request bodies for a source that decodes them: an input file whole (``.ndjson``,
        ``.jsonl``, or any ``input_file``; a ``.log`` file: one body per line), or each of
        ``input`` / ``inputs``."""
        d = case.data
        if case.input_path is not None:
            try:
                data = case.input_path.read_bytes()
            except OSError as e:
                raise CaseError("input_file", f"cannot read {case.input_path}: {e}") from None
            if case.input_path.suffix == ".log":
                return [(f"line {i}", ln) for i, ln in enumerate(data.splitlines(), 1) if ln.strip()]
            return [("body", data)]
        items = [d["input"]] if "input" in d else list(d.get("inputs", ()))
        return [(f"input {i}", s.encode("utf-8", "surrogateescape")) for i, s in enumerate(items, 1)]

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
        from ..testparse import analyse
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
        kw: dict = {"lenient": lenient, "view": self.view, "received": received, "source": src}
        if "peer" in d:
            kw["peer"] = d["peer"]
        from ..testparse import analyse_body, body_decoder
        decoder = body_decoder(self.cfg, src)
        if decoder is not None:     # a source that takes request bodies (http): one body per input
            msgs, framing = self.bodies(case), []
            res.framing = framing
            for label, raw in msgs:
                recs = analyse_body(raw, decoder, view=self.view, received=received, peer=kw.get("peer"))
                for i, rec in enumerate(recs, 1):
                    res.labels.append(label if len(recs) == 1 else f"{label}, event {i}")
                    res.raws.append(rec["input"].encode("utf-8", "surrogateescape"))
                    res.records.append(rec)
            msgs = list(zip(res.labels, res.raws))
        else:
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
    from ...config import ConfigError
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

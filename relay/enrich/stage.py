"""The enrichment stage: ``build_enricher(config) -> Enricher`` and the per-process runtime.

``Enricher(event)`` runs on every event after normalisation and before routing:

1. looks up the configured event fields in the configured tables (file tables: dict and
   longest-prefix probes, memoised; HTTP lookups: cache only, misses fetched in the
   background) and fills ``event.enrich`` (``asset``, ``vuln``, ``ti``, ``hits``, ``missing``);
2. for events the ``[triage] match`` rule selects, computes the triage (triage.py), writes
   ``event.fields["triage"]``, queues one audit line, and in mode ``auto`` asks the pipeline
   for the escalation's extra sinks (``event.meta["triage_sinks"]``);
3. for triaged events bound for XSOAR at or above ``[summary] min_severity``, adds the
   narrative summary when it is already cached, else queues its request.

Background pieces (file watcher, HTTP fetchers, audit writer, summary client) belong to the
process, not to one Enricher: each ``configure`` (start, SIGHUP) builds a new Enricher that
takes over the running pieces whose settings did not change and closes the others.  Worker
processes (``[relay] workers``) each run their own.  Builds inside :func:`dry_run` (test-parse,
golden cases) and configs loaded without secrets start nothing, write nothing, send nothing.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from pathlib import Path

from ..metrics import HELP, REGISTRY
from .audit import AuditWriter
from .config import EnrichConfig
from .http import HttpLookup, _Flag, PENDING
from .summary import Summarizer, _iso
from .triage import RANK, Triage, explain

log = logging.getLogger("relay.enrich")

__all__ = ["Enricher", "build_enricher", "dry_run", "shutdown", "runtime"]

for _k, _v in {
    "relay_lookup_reloads_total": "Lookup table file loads, by table and result (failed: the last good table is kept).",
    "relay_lookup_entries": "Entries in a lookup table (this process).",
    "relay_lookup_requests_total": "HTTP lookup requests, by table and result (ok, not_found, error, timeout).",
    "relay_lookup_circuit_opened_total": "Times an HTTP lookup's circuit breaker opened, by table.",
    "relay_lookup_circuit_open": "1 while an HTTP lookup's circuit breaker is open (this process).",
    "relay_lookup_queue_full_total": "HTTP lookup misses not fetched because the fetch queue was full, by table.",
    "relay_lookup_missing_total": "Lookups an event went on without (not cached yet, circuit open), by table.",
    "relay_triage_total": "Triage decisions, by mode and severity.",
    "relay_audit_written_total": "Audit log lines written.",
    "relay_audit_dropped_total": "Audit records dropped because too many were waiting to be written.",
    "relay_audit_errors_total": "Audit log write failures (retried).",
    "relay_summary_requests_total": "Narrative summary requests, by result (ok, error, timeout, budget, queue_full).",
}.items():
    HELP.setdefault(_k, _v)


# ============================================================================ runtime (per process)

class _Runtime:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.http: dict = {}       # key -> HttpLookup
        self.audit: dict = {}      # key -> AuditWriter
        self.summary: dict = {}    # key -> Summarizer
        self.tables: list = []     # FileTables the watcher checks
        self.interval = 1.0
        self.watcher: threading.Thread | None = None
        self.stopping = threading.Event()
        self.kick = threading.Event()    # adopt(): a new table list or interval applies at once
        self.registered = False

    def _watch(self) -> None:
        while True:
            self.kick.wait(self.interval)
            if self.stopping.is_set():
                return
            self.kick.clear()
            for t in list(self.tables):
                try:
                    t.check()
                except Exception as e:   # pragma: no cover - check() logs its own failures
                    log.error("lookups.%s: check failed: %s", t.name, e)

    def adopt(self, http: dict, audit: dict, summary: dict, tables: list, interval: float) -> None:
        with self.lock:
            old = [(self.http, http), (self.audit, audit), (self.summary, summary)]
            for cur, new in old:
                for k in list(cur):
                    if k not in new:
                        obj = cur.pop(k)
                        threading.Thread(target=obj.close, name="enrich-close", daemon=True).start()
                cur.update(new)
            self.tables = list(tables)
            changed = interval != self.interval
            self.interval = interval
            if changed:      # a watcher asleep for the old interval (e.g. an hour) wakes up now
                self.kick.set()
            if tables and (self.watcher is None or not self.watcher.is_alive()):
                self.stopping.clear()
                self.watcher = threading.Thread(target=self._watch, name="lookup-watcher", daemon=True)
                self.watcher.start()
            if not self.registered:
                atexit.register(shutdown)
                try:
                    from multiprocessing import util
                    util.Finalize(None, shutdown, exitpriority=50)
                except Exception:  # pragma: no cover
                    pass
                self.registered = True

    def close(self) -> None:
        self.stopping.set()
        self.kick.set()
        with self.lock:
            objs = list(self.summary.values()) + list(self.http.values()) + list(self.audit.values())
            self.summary.clear()
            self.http.clear()
            self.audit.clear()
            self.tables = []
        for o in objs:   # summaries first: their last audit lines go into the writers closed last
            try:
                o.close()
            except Exception:  # pragma: no cover
                pass


runtime = _Runtime()
_dry = 0


def shutdown() -> None:
    """Flush the audit log and stop background threads (atexit; tests)."""
    runtime.close()


@contextlib.contextmanager
def dry_run():
    """Enrichers built inside this block are for inspection (test-parse, golden cases): no
    audit lines, no HTTP lookups or summaries, no background threads."""
    global _dry
    _dry += 1
    try:
        yield
    finally:
        _dry -= 1


# ============================================================================ field getters

def _domain(v):
    if v.__class__ is not str or not v:
        return None
    i = v.find("://")
    s = v[i + 3:] if i >= 0 else v
    for sep in "/?#":
        j = s.find(sep)
        if j >= 0:
            s = s[:j]
    if "@" in s:
        s = s.rsplit("@", 1)[1]
    if s.startswith("["):
        return s[1:s.find("]")] or None
    if s.count(":") == 1:
        s = s.split(":", 1)[0]
    return s.lower() or None


def _getter(spec: str):
    """-> (key for a plain top-level field, or None; getter(fields) for anything else)."""
    if spec.startswith("domain(") and spec.endswith(")"):
        _, inner = _getter(spec[7:-1])
        return None, lambda f: _domain(inner(f))
    parts = spec.split(".")
    if len(parts) == 1:
        k = parts[0]
        return k, lambda f: f.get(k)

    def walk(f, parts=tuple(parts)):
        cur = f
        for p in parts:
            if cur.__class__ is not dict:
                return None
            cur = cur.get(p)
        if cur.__class__ is list:    # e.g. several hashes: the first string
            for x in cur:
                if x.__class__ is str and x:
                    return x
            return None
        return cur
    return None, walk


# ============================================================================ the stage

_TI_NONE = {"match": False}


class Enricher:
    def __init__(self, config, ec: EnrichConfig, sources: dict, audit, summarizer, live: bool) -> None:
        self.config = config
        self.ec = ec
        self.live = live
        self.audit = audit
        self.summarizer = summarizer
        # kind -> ([(field spec, plain key | None, getter)], [source objects with .get and .name])
        # kind -> ([(field spec, plain key | None, getter, (sources that look this field up))], [sources])
        self.kinds = {}
        for lc in ec.lookups.values():
            src = sources[lc.name]
            fl, srcs = self.kinds.setdefault(lc.kind, ([], []))
            srcs.append(src)
            for spec in lc.fields:
                for i, x in enumerate(fl):
                    if x[0] == spec:
                        fl[i] = (x[0], x[1], x[2], x[3] + (src,))
                        break
                else:
                    key, get = _getter(spec)
                    fl.append((spec, key, get, (src,)))
        self.asset = self.kinds.get("asset")
        self.vuln = self.kinds.get("vuln")
        self.ti = self.kinds.get("ti")
        self.tables_version = {lc.name: (lc.table.version if lc.table is not None else "http")
                               for lc in ec.lookups.values()}
        self._tables = [lc.table for lc in ec.lookups.values() if lc.table is not None]
        tc = ec.triage
        self.triage = Triage(tc, set(self.kinds)) if tc is not None else None
        self.triage_match = tc.match if tc is not None else None
        self._missing_c: dict = {}
        self._triage_c: dict = {}
        self.summary_sinks = None
        if summarizer is not None:
            s = ec.summary.sinks
            from .. import kinds
            self.summary_sinks = frozenset(s) if s else frozenset(
                n for n, sc in config.sinks.items() if kinds.sink(sc.type).incidents)

    # ---------------------------------------------------------------- per event
    def __call__(self, ev) -> None:
        f = ev.fields
        if f is None:
            return
        enrich = {}
        hits = []
        missing = None
        g = self.asset
        if g is not None:
            best = None
            best_c = -1
            for spec, key, get, srcs in g[0]:
                v = f.get(key) if key is not None else get(f)
                if v.__class__ is not str or not v:
                    continue
                for src in srcs:
                    e = src.get(v)
                    if e is None:
                        continue
                    if e.__class__ is _Flag:
                        missing = self._missing(ev, missing, src, spec, v, e)
                        continue
                    hits.append({"kind": "asset", "field": spec, "value": v, "table": src.name, "key": e[0]})
                    c = e[1].get("criticality") or 0
                    if c > best_c:
                        best, best_c = e[1], c
                    break
            if best is not None:
                enrich["asset"] = best
        g = self.vuln
        if g is not None:
            found = None
            for spec, key, get, srcs in g[0]:
                v = f.get(key) if key is not None else get(f)
                if v.__class__ is not str or not v:
                    continue
                for src in srcs:
                    e = src.get(v)
                    if e is None:
                        continue
                    if e.__class__ is _Flag:
                        missing = self._missing(ev, missing, src, spec, v, e)
                        continue
                    hits.append({"kind": "vuln", "field": spec, "value": v, "table": src.name, "key": e[0]})
                    if found is None:
                        found = e[1]
                    elif found is not e[1]:
                        found = _merge_vulns(found, e[1])
            if found is not None:
                enrich["vuln"] = found
        g = self.ti
        if g is not None:
            found = None
            n = 0
            for spec, key, get, srcs in g[0]:
                v = f.get(key) if key is not None else get(f)
                if v.__class__ is not str or not v:
                    continue
                for src in srcs:
                    e = src.get(v)
                    if e is None:
                        continue
                    if e.__class__ is _Flag:
                        missing = self._missing(ev, missing, src, spec, v, e)
                        continue
                    hits.append({"kind": "ti", "field": spec, "value": v, "table": src.name, "key": e[0]})
                    n += 1
                    a = e[1]
                    if found is None or (a.get("confidence") or 0) > (found.get("confidence") or 0):
                        found = a
            if found is None:
                enrich["ti"] = _TI_NONE
            elif n == 1:
                enrich["ti"] = found
            else:
                sources = []
                for h in hits:
                    if h["kind"] == "ti" and h["table"] not in sources:
                        sources.append(h["table"])
                enrich["ti"] = {**found, "count": n, "tables": sources}
        if hits:
            enrich["hits"] = hits
        if missing:
            enrich["missing"] = missing
        if ev.enrich:
            ev.enrich.update(enrich)
        else:
            ev.enrich = enrich
        if self.triage is not None and _rule_ok(self.triage_match, ev):
            self._triage(ev, f, ev.enrich, hits, missing)

    def _missing(self, ev, missing, src, spec, v, flag):
        if flag is PENDING:
            text = f"{src.name}: {spec} {v} not cached yet (looked up in the background)"
        elif not self.live:
            text = f"{src.name}: {spec} {v} not looked up (HTTP lookups are not queried here)"
        else:
            text = f"{src.name}: {spec} {v} not looked up: {src.status()}"
        c = self._missing_c.get(src.name)
        if c is None:
            c = self._missing_c[src.name] = REGISTRY.counter("relay_lookup_missing_total", table=src.name)
        c.value += 1
        ev.note(text)
        if missing is None:
            return [text]
        missing.append(text)
        return missing

    def _triage(self, ev, f: dict, enrich: dict, hits: list, missing) -> None:
        T = self.triage
        mode = T.cfg.mode
        score, parts, findings, raw = T.score(f, enrich, hits)
        severity = T.severity_for(score)
        owner, owner_rule = T.owner(f, enrich, severity, ev)
        esc = T.escalation(score, severity, ev)
        applied = mode == "auto" and esc is not None
        tr = {"score": score, "mode": mode}
        if mode != "suggest":
            tr["severity"] = severity
            tr["owner"] = owner
        tr["suggested"] = {"severity": severity, "owner": owner, "owner_rule": owner_rule}
        tr["parts"] = parts
        tr["findings"] = findings
        if missing:
            tr["missing"] = missing
        if esc is not None:
            tr["escalation"] = esc.name
            if applied:
                tr["escalate"] = esc.name
                if esc.sinks:
                    meta = ev.meta
                    if meta is None:
                        meta = ev.meta = {}
                    meta["triage_sinks"] = esc.sinks
                    meta["triage_route"] = f"triage:{esc.name}"
        tr["explanation"] = explain(score, severity, mode, parts, raw, owner, owner_rule, findings, missing,
                                    esc.name if esc is not None else None, applied)
        f["triage"] = tr
        summary_state = None
        if self.summarizer is not None and RANK[severity] >= RANK[self.ec.summary.min_severity]:
            summary_state = self._summary(ev, f, tr, esc if applied else None)
        c = self._triage_c.get((mode, severity))
        if c is None:
            c = self._triage_c[(mode, severity)] = REGISTRY.counter("relay_triage_total", mode=mode, severity=severity)
        c.value += 1
        if self.audit is not None:
            self.audit.write({
                "type": "triage", "time": _iso(time.time()),
                "event_id": f.get("dedup_key") or f.get("id"), "vendor_id": f.get("id"),
                "event": f.get("event"), "kind": f.get("kind"), "name": f.get("name"), "source": ev.source,
                "inputs": {k: f.get(k) for k in ("risk_score", "severity", "src_ip", "dst_ip", "host", "user",
                                                  "tactic", "technique_id")},
                "lookups": hits, "missing": missing or [], "parts": parts, "raw_score": round(raw, 2),
                "result": {"score": score, "severity": severity, "owner": owner, "owner_rule": owner_rule,
                           "escalation": esc.name if esc is not None else None,
                           "escalation_sinks": list(esc.sinks) if esc is not None else []},
                "mode": mode,
                "applied": {"annotation": True, "xsoar_fields": mode != "suggest", "routing": applied},
                "summary": summary_state,
                "config_version": self.ec.version, "tables": self.tables_version, "pid": os.getpid(),
            })

    def _summary(self, ev, f: dict, tr: dict, esc) -> str | None:
        key = f.get("dedup_key")
        if not key:
            return None
        routed = self._sinks(ev, esc)
        if not (routed & self.summary_sinks):
            return None
        text = self.summarizer.cached(key)
        if text is not None:
            tr["summary"] = text
            return "added (cached)"
        ctx = {
            "event": {k: f.get(k) for k in ("name", "kind", "vendor", "product", "event", "risk_score", "severity",
                                            "occurred", "src_ip", "dst_ip", "host", "user", "tactic", "technique")},
            "description": (f.get("description") or "")[:1000],
            "triage": {"score": tr["score"], "severity": tr["suggested"]["severity"],
                       "owner": tr["suggested"]["owner"], "parts": [p["why"] for p in tr["parts"]]},
            "findings": tr["findings"], "missing_context": tr.get("missing") or [],
        }
        state = self.summarizer.request(key, f.get("dedup_key") or f.get("id"), ctx)
        wait = self.ec.summary.wait
        if wait > 0 and state in ("queued", "pending"):
            # a one-shot incident: the XSOAR sink waits (bounded) for this answer before it
            # creates the incident (relay/sinks/xsoar.py; the queue row's meta carries the key)
            meta = ev.meta
            if meta is None:
                meta = ev.meta = {}
            meta["summary"] = {"key": key, "wait": wait}
        return state

    def _sinks(self, ev, esc) -> set:
        out = set(esc.sinks) if esc is not None else set()
        for r in self.config.routes.values():
            if r.rule is not None and _rule_ok(r.rule, ev):
                out.update(r.sinks)
                if r.final:
                    break
        return out


def _rule_ok(rule, ev) -> bool:
    try:
        return bool(rule(ev))
    except Exception:
        return False


def _merge_vulns(a: dict, b: dict) -> dict:
    cv = dict(zip(a.get("cves") or [], a.get("cvss") or [None] * len(a.get("cves") or [])))
    for c, s in zip(b.get("cves") or [], b.get("cvss") or [None] * len(b.get("cves") or [])):
        if c not in cv or (s or 0) > (cv[c] or 0):
            cv[c] = s
    ranked = sorted(cv.items(), key=lambda t: -(t[1] or 0))
    ms = [x for x in (a.get("max_cvss"), b.get("max_cvss")) if x is not None]
    return {"max_cvss": max(ms) if ms else None, "cves": [c for c, _ in ranked], "cvss": [s for _, s in ranked],
            "count": max(a.get("count") or 0, b.get("count") or 0, len(ranked)),
            "table": a.get("table")}


# ============================================================================ build

async def summary_for(key: str, wait: float) -> str | None:
    """The narrative summary of incident ``key``, waiting up to ``wait`` seconds for the answer
    this process's summarizer is working on (the XSOAR sink, before it creates a one-shot
    incident).  None at once when there is no summarizer here or it has no request for the key
    (with ``workers > 1`` the summaries of syslog events are asked for in the ingest workers);
    None when the answer failed or did not come in time.  Never raises."""
    import asyncio
    try:
        summ = next(iter(runtime.summary.values()), None)
        if summ is None:
            return None
        text = summ.cached(key)
        deadline = time.monotonic() + wait
        while text is None and key in summ.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            text = summ.cached(key)
        return text
    except Exception:   # pragma: no cover - a summary must never stop a delivery
        return None


def build_enricher(config) -> Enricher:
    """The hook relay/pipeline.py calls from ``Pipeline.configure``."""
    ec: EnrichConfig = config.enrich
    ec.validate(config)
    live = ec.live and _dry == 0
    sources = {}
    http_new = {}
    for lc in ec.lookups.values():
        if lc.table is not None:
            lc.table.index.memo_max = ec.memo_size
            sources[lc.name] = lc.table
            continue
        kw = dict(lc.http)
        key = (lc.name, lc.kind, lc.url, repr(sorted((k, repr(v)) for k, v in kw.items())), lc.opts.signature())
        if live:
            h = runtime.http.get(key) or http_new.get(key)
            if h is None:
                h = HttpLookup(lc.name, lc.kind, lc.url, opts=lc.opts, live=True, **kw)
            http_new[key] = h
        else:
            h = HttpLookup(lc.name, lc.kind, lc.url, opts=lc.opts, live=False, **kw)
        sources[lc.name] = h
    audit = None
    audit_new = {}
    if live and ec.triage is not None and ec.audit.enabled:
        a = ec.audit
        path = a.path or Path(config.relay.state_dir) / "audit" / "triage.jsonl"
        key = (str(path), a.max_bytes, a.keep, a.flush_interval, a.max_pending)
        audit = runtime.audit.get(key)
        if audit is None:
            audit = AuditWriter(path, max_bytes=a.max_bytes, keep=a.keep, flush_interval=a.flush_interval,
                                max_pending=a.max_pending)
        audit_new[key] = audit
    summarizer = None
    summary_new = {}
    if live and ec.summary.enabled and ec.triage is not None:
        s = ec.summary
        workers = getattr(getattr(config, "relay", None), "workers", 1) or 1
        key = (s.url, s.model, hash(s.api_key), s.timeout, s.max_calls_per_minute, s.max_tokens_per_minute,
               s.max_tokens, s.system_prompt, s.cache_size, s.failure_ttl, workers, id(audit))
        summarizer = runtime.summary.get(key)
        if summarizer is None:
            summarizer = Summarizer(s, audit, share=workers, config_version=ec.version)
        summary_new[key] = summarizer
    if live:
        runtime.adopt(http_new, audit_new, summary_new, [lc.table for lc in ec.lookups.values() if lc.table],
                      ec.check_interval)
    return Enricher(config, ec, sources, audit, summarizer, live)

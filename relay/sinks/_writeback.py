"""What the write-back sinks (``rhythmx_api``, ``qradar_api``, ``falcon_api``) share besides
relay/sinks/_http.py: the audit log of their writes.

Every write decision (written, already true at the origin, done before) is one JSON line in
``<state_dir>/audit/writeback-<sink>.jsonl`` (or the sink's ``audit_file``) with its reason:
the enrichment audit writer (relay/enrich/audit.py: a writer thread, rotation, secrets
redacted), opened when the sink's delivery loop starts and closed (flushed) when it ends.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

__all__ = ["AuditedWrites", "audit_path", "read_owners"]


def audit_path(queue, sink_name: str, configured: Path | None = None) -> Path:
    if configured is not None:
        return configured
    qp = getattr(queue, "path", None)
    base = Path(qp).parent if qp else Path("state")
    return base / "audit" / f"writeback-{re.sub(r'[^A-Za-z0-9_.-]', '_', sink_name)}.jsonl"


def read_owners(table) -> tuple:
    """``[sinks.NAME.owners]``: XSOAR user = the origin's user name, for assignment events
    (formats/writeback.map_owner); pairs in file order."""
    t = table.table("owners")
    out = []
    for k in list(t.data):
        v = t.get(k, str, check=lambda v: None if v.strip() else (_ for _ in ()).throw(
            ValueError("must name a user, not an empty string")))
        if not k.strip():
            raise t.err(k, "an XSOAR user name must not be empty")
        out.append((k.strip(), v.strip()))
    t.finish()
    return tuple(out)


def configured_path(v: str | None, base_dir: Path) -> Path | None:
    if v is None:
        return None
    p = Path(os.path.expandvars(v)).expanduser()
    return p if p.is_absolute() else base_dir / p


class AuditedWrites:
    """Mixin for a write-back sink: set ``audit_path`` and ``audit_target``, call
    :meth:`audit_open` in ``run`` and :meth:`audit_close` in ``close``."""

    audit_path: Path
    audit_target = "?"
    audit = None

    def audit_open(self) -> None:
        if self.audit is None:
            from ..enrich.audit import AuditWriter
            self.audit = AuditWriter(self.audit_path, flush_interval=0.5)

    def audit_close(self) -> None:
        audit, self.audit = self.audit, None
        if audit is not None:
            audit.close()

    def log_write(self, w: dict, action: str, reason: str) -> None:
        """One audit line: the write (``op``, ``id``, ``key``, what it sets) and the decision."""
        self.audit_open()
        rec = {"type": "writeback", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "sink": self.name, "target": self.audit_target, "id": w.get("id"), "op": w.get("op"),
               "action": action, "reason": reason, "key": w.get("key")}
        for k in ("status", "closing_reason_id", "assigned_to", "note", "notes"):
            if w.get(k) is not None:
                rec[k] = w[k]
        self.audit.write(rec)

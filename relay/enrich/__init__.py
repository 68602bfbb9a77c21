"""Enrichment and triage: lookup tables (assets, vulnerabilities, threat intel; files and
HTTP), an explainable triage score with a suggested owner, phased modes (suggest, assist,
auto), an audit log, and an optional narrative summary.  See docs/enrichment.md.

Hooks: relay/config.py calls :func:`read_config`; relay/pipeline.py calls
:func:`build_enricher` and runs the returned callable on every event before routing.
"""
from .config import EnrichConfig, read_config
from .stage import Enricher, build_enricher, dry_run, shutdown

__all__ = ["read_config", "build_enricher", "dry_run", "shutdown", "EnrichConfig", "Enricher"]

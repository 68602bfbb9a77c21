"""The cyclic garbage collector's settings for the daemon's processes (issue 19).

The hot path makes a few container objects per message (an Event, its fields, extra, SD and
body dicts) and frees nearly all of them by reference counting; almost none are in cycles.
With CPython's default thresholds (700, 10, 10) the collector still runs every few hundred
messages and, with a few thousand events alive in a worker's part or the main process's
queues, each run scans them all, and every full collection scans the whole program too
(modules, config, compiled rules).  Measured on the benchmark's job (bench/README.md): about
15% of the CPU per message.

:func:`tune`, called once a process is set up (the main process when it is ready, each ingest
worker after loading its config): ``gc.freeze()`` moves everything alive then (the program)
out of the collector's sight, and the thresholds make collections rarer.  Cycles are still
collected: a process that made a lot of cyclic garbage would just hold it a little longer.
"""
from __future__ import annotations

import gc

__all__ = ["GEN0", "tune"]

#: Allocations (net) between young-generation collections (CPython's default is 700).
GEN0 = 10_000


def tune() -> None:
    gc.freeze()
    gc.set_threshold(GEN0, 20, 50)

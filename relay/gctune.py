"""The cyclic garbage collector's and the C allocator's settings for the daemon's processes
(issue 19).

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

:func:`tune_malloc` (called by :func:`tune`): glibc's malloc serves a block over its mmap
threshold (128 KiB at start, raised as such blocks are freed) with its own ``mmap()`` and gives
free memory at the top of a heap back to the kernel past its trim threshold.  The main
process handles ~1 MiB buffers at every turn of a busy connection (a read, the pickled
hand-over to a worker, the worker's rows, the sink's framed batch), so the same memory was
unmapped and mapped again, and every 4 KiB page of it faulted in anew: 0.3 page faults per
message in the main process here, at 5-6 µs of kernel time each on this machine
(bench/README.md).  A fixed mmap threshold (:data:`MMAP_THRESHOLD`) and trim threshold
(:data:`TRIM_THRESHOLD`) keep that memory in the process for the next turn: each process may
hold up to ``TRIM_THRESHOLD`` of free heap after a burst.  Any of glibc's own ``MALLOC_*``
variables (or a ``glibc.malloc`` tunable) in the environment means the operator chose: the
allocator is left alone.  Not glibc (musl): nothing to do.
"""
from __future__ import annotations

import ctypes
import gc
import logging
import os
import platform

__all__ = ["GEN0", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "tune", "tune_malloc"]

log = logging.getLogger("relay.gctune")

#: Allocations (net) between young-generation collections (CPython's default is 700).
GEN0 = 10_000
#: glibc: blocks up to this size come from the heap, not from an mmap() of their own.
MMAP_THRESHOLD = 8 << 20
#: glibc: free memory at the top of a heap is kept for reuse up to this size.
TRIM_THRESHOLD = 32 << 20

_M_TRIM_THRESHOLD = -1      # <malloc.h>
_M_MMAP_THRESHOLD = -3
_OPERATOR_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_",
                 "MALLOC_ARENA_MAX", "MALLOC_ARENA_TEST")


def tune() -> None:
    gc.freeze()
    gc.set_threshold(GEN0, 20, 50)
    why = tune_malloc()
    log.debug("malloc: %s", why)


def tune_malloc() -> str:
    """Fix glibc's mmap and trim thresholds (module doc) -> what was done, for the log."""
    if any(k in os.environ for k in _OPERATOR_ENV) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return "left as the environment sets it"
    if platform.libc_ver()[0] != "glibc":
        return "not glibc: left alone"
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError) as e:
        return f"mallopt unavailable ({e}): left alone"
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if not (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return "mallopt refused the thresholds"
    return f"mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim threshold {TRIM_THRESHOLD >> 20} MiB"

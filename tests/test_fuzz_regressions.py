"""The fuzz targets in CI (issue 14): every saved crasher (fuzz/crashers/<target>/), every seed,
and a short deterministic mutation run per target, with the campaign's rules: no exception other
than the documented error types, no input slower than 100 ms (best of 3, plain code).  The
1M-inputs-per-target campaign is fuzz/run.py (docs/reliability.md)."""
from __future__ import annotations

import random
import time

import pytest

from fuzz.run import HANG, mutate
from fuzz.targets import ROOT, TARGETS, seeds_for

CRASHERS = ROOT / "fuzz" / "crashers"


def timed(run, data: bytes) -> float:
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        run(data)
        best = min(best, time.perf_counter() - t)
        if best < HANG:
            break
    return best


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_crashers_and_seeds(name):
    t = TARGETS[name]
    inputs = [p.read_bytes() for p in sorted((CRASHERS / name).glob("*"))] if (CRASHERS / name).exists() else []
    inputs += seeds_for(t)
    assert inputs
    slow = [(d[:60], s) for d in inputs if (s := timed(t.run, d)) > HANG]
    assert not slow, slow


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_short_mutation_run(name):
    t = TARGETS[name]
    seeds = seeds_for(t) or [b""]
    rng = random.Random(14)
    n = 1500 if name != "config" else 300
    slow = []
    for _ in range(n):
        d = mutate(rng, seeds, 4096)
        s = timed(t.run, d)
        if s > HANG:
            slow.append((d[:60], s))
    assert not slow, slow


def test_the_probe_crashers_are_there():
    assert {p.parent.name for p in CRASHERS.glob("*/*")} >= {"rfc3164", "normalise"}

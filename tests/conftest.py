"""Shared fixtures (the plain helpers they use are in tests/harness.py).

* ``make_relay`` - a factory of :class:`tests.harness.RelayProcess`; every relay made is
  stopped at teardown (SIGTERM, then SIGKILL after its stop timeout).
* ``qradar`` - a :class:`tests.harness.QradarStandIn` on a free port, closed at teardown.
* ``pki`` - a throw-away CA with server and client certificates (once per session).
* ``make_xsoar`` - a factory of started XSOAR emulators, closed at teardown.
"""
from __future__ import annotations

import shutil

import pytest

from tests.harness import QradarStandIn, RelayProcess, make_pki

#: Modules whose tests wait for conditions with deadlines and have no tight timing bound: they
#: get the ``heavy`` mark, and scripts/test runs them three at a time (pytest-xdist, one module per
#: process), then every other test alone on a quiet machine (latency and "woken at once" bounds).
#: A new long end-to-end module belongs here once it passes in a loop beside the others.
#: The value is the module's seconds in a phase 1 run (2026-12-06, clean clone): the heavy modules
#: are collected longest first, and scripts/test runs pytest-xdist with ``--dist loadfile
#: --no-loadscope-reorder`` (modules handed out in collection order), so the soak and the packaging
#: builds start at once and the short modules fill in; xdist's default order (most tests first)
#: started the 3-minute soak late and phase 1 took 533 s for 804 s of tests.  Two workers then
#: kept the 2 cores ~68 % busy (489-527 s); three: 410 s.
HEAVY = {
    "test_chaos_soak.py": 207, "test_packaging.py": 180, "test_durability.py": 179, "test_native.py": 68,
    "test_e2e_pull.py": 52, "test_scaleout.py": 47, "test_e2e_writeback.py": 30, "test_e2e_xsoar.py": 28,
    "test_e2e_http_sink.py": 16, "test_e2e_peers.py": 15, "test_nats.py": 13, "test_codec_roundtrip.py": 12,
    "test_bad_configs.py": 10, "test_secrets_grep.py": 9, "test_e2e_enrich.py": 6, "test_fuzz_regressions.py": 2,
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in HEAVY:
            item.add_marker(pytest.mark.heavy)
    # longest heavy module first (a stable sort: the order inside a module, and of the rest, stays)
    items.sort(key=lambda item: -HEAVY.get(item.path.name, 0))


@pytest.fixture
def make_relay(tmp_path):
    """``make_relay(config, metrics_port, workdir=tmp_path, **kw)`` -> a RelayProcess, not started
    yet (``.start()`` or ``with``); stopped at teardown whatever happened."""
    made: list[RelayProcess] = []

    def make(config: str, metrics_port: int, workdir=None, **kw) -> RelayProcess:
        r = RelayProcess(tmp_path if workdir is None else workdir, config, metrics_port, **kw)
        made.append(r)
        return r
    yield make
    for r in reversed(made):
        r.stop()


@pytest.fixture
def qradar():
    """A QRadar stand-in (counting TCP syslog receiver) on a free port of 127.0.0.1."""
    with QradarStandIn() as q:
        yield q


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """Throw-away PKI (see :func:`tests.harness.make_pki`): ca, other-ca, server and client."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command (scripts/test-deps installs it)")
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def make_xsoar():
    """``make_xsoar(**kw)`` -> a started :class:`tests.emulators.xsoar.XsoarEmulator`; closed at
    teardown."""
    from tests.emulators.xsoar import XsoarEmulator
    made = []

    def make(**kw) -> XsoarEmulator:
        e = XsoarEmulator(**kw)
        made.append(e)
        e.start()
        return e
    yield make
    for e in reversed(made):
        e.close()

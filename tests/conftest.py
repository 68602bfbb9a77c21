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
#: get the ``heavy`` mark, and scripts/test runs them two at a time (pytest-xdist, one module per
#: process), then every other test alone on a quiet machine (latency and "woken at once" bounds).
#: A new long end-to-end module belongs here once it passes in a loop beside the others.
HEAVY = frozenset({
    "test_chaos_soak.py", "test_packaging.py", "test_durability.py", "test_e2e_pull.py", "test_e2e_http_sink.py",
    "test_e2e_xsoar.py", "test_e2e_peers.py", "test_secrets_grep.py", "test_bad_configs.py", "test_e2e_enrich.py",
    "test_fuzz_regressions.py", "test_codec_roundtrip.py", "test_e2e_writeback.py", "test_scaleout.py",
    "test_nats.py",
})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in HEAVY:
            item.add_marker(pytest.mark.heavy)


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

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
from hypothesis import settings

from tests.harness import QradarStandIn, RelayProcess, make_pki

#: Modules whose tests have no tight timing bound (they wait for conditions with deadlines of
#: seconds, or only use the CPU): they get the ``parallel`` mark, and scripts/test runs them three
#: at a time (pytest-xdist, one module per process), then every other test alone on a quiet
#: machine (latency and "woken at once" bounds).  A test in one of these modules that has such a
#: bound carries ``@pytest.mark.quiet`` and waits for the second phase.  A new module belongs here
#: once it passes in a loop beside the others.
#: The value is the module's seconds when it runs alone (2026-12-06/07): the modules are collected
#: longest first, and scripts/test runs pytest-xdist with ``--dist loadfile --no-loadscope-reorder``
#: (modules handed out in collection order), so the soak and the packaging builds start at once
#: and the short modules fill in; xdist's default order (most tests first) started the 3-minute
#: soak late and phase 1 took 533 s for 804 s of tests.  Two workers then kept the 2 cores ~68 %
#: busy (489-527 s); three: 410 s.  The CPU-bound unit modules (parsers, rules, the stage
#: differential, the CLI) ran in the serial phase until stop 30: ~140 s there, ~1 core used.
PARALLEL = {
    # the long end-to-end modules
    "test_chaos_soak.py": 207, "test_packaging.py": 180, "test_durability.py": 179, "test_native.py": 68,
    "test_e2e_pull.py": 52, "test_scaleout.py": 47, "test_e2e_http_intake.py": 35, "test_e2e_writeback.py": 30,
    "test_e2e_xsoar.py": 28, "test_e2e_http_sink.py": 16, "test_e2e_peers.py": 15, "test_pipeline.py": 15,
    "test_nats.py": 13, "test_server.py": 13, "test_cli_testparse.py": 13, "test_codec_roundtrip.py": 12,
    "test_console.py": 12, "test_bad_configs.py": 10, "test_tls_reload.py": 10, "test_secrets_grep.py": 9,
    "test_architecture.py": 8, "test_tap.py": 8, "test_top.py": 7, "test_e2e_enrich.py": 6,
    # CPU only: parsers, renderers, rules, config, golden cases
    "test_native_stage.py": 22, "test_rules.py": 5, "test_framing.py": 4, "test_rfc5424.py": 3, "test_http_parsers.py": 3,
    "test_config.py": 2, "test_cases.py": 2, "test_fuzz_regressions.py": 2, "test_proxy_protocol.py": 1,
    "test_detect.py": 1, "test_render.py": 1, "test_rfc3164_vectors.py": 1, "test_cef_vectors.py": 1,
    "test_leef_vectors.py": 1, "test_falcon.py": 1, "test_cefleef_input.py": 1, "test_qradar_normalise.py": 1,
    "test_rfc5424_vectors.py": 1, "test_rhythmx.py": 1,
}

#: Hypothesis's default 200 ms deadline per example is a timing bound on the host, not on the
#: code: three test processes on two cores exceed it now and then.  No property test here has a
#: deadline; a slow example is still reported by the too_slow health check where it is enabled.
settings.register_profile("relay", deadline=None)
settings.load_profile("relay")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in PARALLEL and item.get_closest_marker("quiet") is None:
            item.add_marker(pytest.mark.parallel)
    # longest parallel module first (a stable sort: the order inside a module, and of the rest, stays)
    items.sort(key=lambda item: -PARALLEL.get(item.path.name, 0))


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

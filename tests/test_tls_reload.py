"""TLS source end to end: certificate rotation on SIGHUP (even at the same paths), a bad new
certificate that keeps the old one and says why, a failed reload that never stops a working
listener nor reports success, and the client-certificate CN/SAN allowlist (issue 14,
findings 2 and 3)."""
from __future__ import annotations

import shutil
import signal
import socket
import ssl
import textwrap

import pytest

from tests.harness import LOOPBACK, free_port, make_pki, wait_until

pytestmark = pytest.mark.e2e


def tls_config(port: int, met: int, sink: str, d, *, idle: float = 600.0, extra: str = "") -> str:
    return textwrap.dedent(f'''
        [relay]
        state_dir = "state"
        metrics_address = "127.0.0.1:{met}"
        drain_timeout = 2
        [sources.t]
        type = "tls"
        address = "127.0.0.1:{port}"
        idle_timeout = {idle}
        tls_cert = "{d / 'server.pem'}"
        tls_key = "{d / 'server.key'}"
        ''') + extra + textwrap.dedent(f'''
        [sinks.q]
        type = "syslog"
        address = "{sink}"
        format = "rfc5424"
        [routes.r]
        match = "true"
        sinks = ["q"]
        ''')


def served_cert(port: int, client=None) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if client:
        ctx.load_cert_chain(*client)
    with socket.create_connection((LOOPBACK, port), timeout=5) as s, ctx.wrap_socket(s) as t:
        return t.getpeercert(binary_form=True)


def send_tls(port: int, lines: list[bytes], client=None) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if client:
        ctx.load_cert_chain(*client)
    with socket.create_connection((LOOPBACK, port), timeout=5) as s, ctx.wrap_socket(s) as t:
        t.sendall(b"".join(b"%d %s" % (len(m), m) for m in lines))
        t.unwrap()


def der(path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def test_sighup_rotates_the_certificate_and_a_bad_one_keeps_the_old(tmp_path, pki, make_relay, qradar):
    live = tmp_path / "tls"
    live.mkdir()
    for f in ("server.pem", "server.key"):
        shutil.copy(pki / f, live / f)
    new = make_pki(tmp_path / "pki2")
    port, met = free_port(), free_port()
    relay = make_relay(tls_config(port, met, qradar.address, live), met).start()
    assert served_cert(port) == der(pki / "server.pem")

    # rotation at the same paths
    for f in ("server.pem", "server.key"):
        shutil.copy(new / f, live / f)
    relay.proc.send_signal(signal.SIGHUP)
    relay.wait_metric("relay_config_reloads_total", 1, result="applied")
    wait_until(lambda: served_cert(port) == der(new / "server.pem"), 10, what="the new certificate served")
    assert "TLS certificate and key loaded again" in relay.log()

    # a broken certificate at the same path, and a changed setting: rejected as a whole
    (live / "server.pem").write_text("-----BEGIN CERTIFICATE-----\nbm9wZQ==\n-----END CERTIFICATE-----\n")
    relay.config_path.write_text(tls_config(port, met, qradar.address, live, idle=300.0))
    relay.proc.send_signal(signal.SIGHUP)
    relay.wait_metric("relay_config_reloads_total", 1, result="rejected")
    after = relay.log().split("reload: configuration applied")[-1]   # what the bad reload logged
    assert "new configuration rejected, keeping the running one" in after and "server.pem" in after, after
    assert relay.metric("relay_config_reloads_total", result="applied") == 1
    # the listener kept running with the last good certificate
    assert relay.ready()[0] == 200
    assert served_cert(port) == der(new / "server.pem")
    send_tls(port, [b"<13>1 2026-01-01T00:00:00Z h app - - - after the bad reload"])
    qradar.wait_for(1, 10)
    assert any("after the bad reload" in ln for ln in qradar.snapshot())


def test_failed_listener_restart_keeps_the_old_one_and_is_not_success(tmp_path, pki, make_relay, qradar):
    port, met = free_port(), free_port()
    busy = socket.socket()
    busy.bind((LOOPBACK, 0))
    busy.listen(1)
    try:
        relay = make_relay(tls_config(port, met, qradar.address, pki), met).start()
        # the source moves to a port another process holds: it cannot listen there
        relay.config_path.write_text(tls_config(busy.getsockname()[1], met, qradar.address, pki))
        relay.proc.send_signal(signal.SIGHUP)
        relay.wait_metric("relay_config_reloads_total", 1, result="failed")
        log = relay.log()
        assert "applied with errors" in log and "keeps its previous settings" in log
        assert relay.metric("relay_config_reloads_total", result="applied") == 0
        send_tls(port, [b"<13>1 2026-01-01T00:00:00Z h app - - - old listener"])
        qradar.wait_for(1, 10)
    finally:
        busy.close()


def test_client_certificate_name_allowlist(tmp_path, pki, make_relay, qradar):
    port, met = free_port(), free_port()
    client = (pki / "client.pem", pki / "client.key")

    def extra(names):
        return (f'tls_ca = "{pki / "ca.pem"}"\ntls_verify_client = true\n'
                f'tls_client_names = {names}\n')
    relay = make_relay(tls_config(port, met, qradar.address, pki, extra=extra('["CN:relay test client"]')),
                       met).start()
    send_tls(port, [b"<13>1 2026-01-01T00:00:00Z h app - - - allowed"], client)
    qradar.wait_for(1, 10)
    relay.config_path.write_text(tls_config(port, met, qradar.address, pki,
                                            extra=extra('["DNS:*.example.com", "CN:collector"]')))
    relay.proc.send_signal(signal.SIGHUP)
    relay.wait_metric("relay_config_reloads_total", 1, result="applied")
    with pytest.raises((OSError, ssl.SSLError)):
        for _ in range(20):         # TLS 1.3: the refusal shows on a read after the handshake
            send_tls(port, [b"<13>1 2026-01-01T00:00:00Z h app - - - refused"], client)
    relay.wait_metric("relay_dropped_total", 1, reason="tls_client_name")
    assert "not in tls_client_names" in relay.log() and "CN:relay test client" in relay.log()
    assert not any("refused" in ln for ln in qradar.snapshot())


def test_name_matching_rules():
    from relay.sources.tcp import name_allowed
    names = ["CN:fw01.corp.example", "DNS:fw01.corp.example", "IP:10.0.0.5"]
    assert name_allowed(names, ["fw01.corp.example"])
    assert name_allowed(names, ["DNS:*.corp.example"])
    assert name_allowed(names, ["IP:10.0.0.5"])
    assert name_allowed(names, ["CN:FW01.corp.example"])
    assert not name_allowed(names, ["DNS:*.example"])           # one label only
    assert not name_allowed(names, ["IP:10.0.0.6", "CN:other"])
    assert not name_allowed([], ["anything"])

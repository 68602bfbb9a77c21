"""End to end: ``relay run`` subprocess closing the loop with the loopback emulators.

* RhythmX emulator -> relay (``type = "rhythmx_api"``) -> XSOAR emulator (REST sink): a polled
  incident reaches XSOAR, and the same incident also sent as a SigmaIncident over syslog (TCP)
  is still ONE XSOAR incident (same normaliser, same dedup key), across a relay restart.

Everything stays on 127.0.0.1.
"""
from __future__ import annotations

import time

import pytest

from tests.emulators.rhythmx import RhythmxEmulator
from tests.emulators.xsoar import XsoarEmulator
from tests.harness import free_port, sigma_line

pytestmark = [pytest.mark.e2e]

XSOAR_KEY = "e2e-xsoar-key-wb"
RX_KEY = "smk_e2e-rx-key-91"
RX_PASSWORD = "e2e-rx-pass-55"


def _rx_config(mport: int, tport: int, rx_url: str, xsoar_url: str, workers: int = 1) -> str:
    return f"""
[relay]
state_dir = "state"
metrics_address = "127.0.0.1:{mport}"
drain_timeout = 5
workers = {workers}

[sources.syslog_in]
type = "tcp"
address = "127.0.0.1:{tport}"

[sources.rhythmx]
type = "rhythmx_api"
url = "{rx_url}"
auth = "api_key"
api_key_file = "rx.key"
poll_interval = 0.3
page_size = 5
retry_base = 0.05
retry_cap = 0.5

[sinks.xsoar]
type = "xsoar"
url = "{xsoar_url}"
api_key_file = "xsoar.key"
batch_size = 10

[sinks.xsoar.retry]
base = 0.2
cap = 1

[routes.incidents]
match = 'vendor == "RhythmX"'
sinks = ["xsoar"]
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_rhythmx_polled_and_syslog_give_one_xsoar_incident(tmp_path, make_relay, workers):
    """With ``workers = 2`` the syslog source parses in worker processes and the RhythmX poller
    commits through the server's committers: still one incident per key."""
    (tmp_path / "rx.key").write_text(RX_KEY)
    (tmp_path / "xsoar.key").write_text(XSOAR_KEY)
    with RhythmxEmulator(api_key=RX_KEY, password=RX_PASSWORD) as rx, \
            XsoarEmulator(api_key=XSOAR_KEY, auth_id=None) as xs:
        both = rx.add_incident("INC-7601d999", risk_score=82)["incident_id"]
        polled = [rx.add_incident()["incident_id"] for _ in range(6)]
        rx.fail(503, count=1, op="feed")
        mport, tport = free_port(), free_port()
        cfg = _rx_config(mport, tport, rx.url, xs.url, workers)

        def per_key():
            return xs.by_field("relaydedupkey")

        with make_relay(cfg, mport, tcp_port=tport) as relay:
            xs.wait(lambda e: len(per_key()) >= 7, 30, "7 incidents from the API")
            relay.send([sigma_line(both, 82), sigma_line("INC-syslog-only", 60)])
            xs.wait(lambda e: "rhythmx:INC-syslog-only" in per_key(), 30, "the syslog-only incident")
            relay.wait_metric("relay_parsed_total", 2, 30, source="syslog_in", format="rfc5424")
        assert relay.returncode == 0, relay.stderr()[-3000:]
        rx.update_incident(polled[0], risk_score=99)          # while down: polled again after restart
        later = rx.add_incident()["incident_id"]
        with make_relay(cfg, mport, tcp_port=tport) as relay2:
            relay2.send([sigma_line(later, 70)])               # syslog first, the poll after: still one
            xs.wait(lambda e: f"rhythmx:{later}" in per_key(), 30, "the incident added while down")
            relay2.wait_metric("relay_pull_incident_events_total", 1, 30, source="rhythmx", event="updated")
            relay2.wait_metric("relay_pull_incident_events_total", 1, 30, source="rhythmx", event="created")
            time.sleep(1.0)                                    # more polls: nothing new may be created
        assert relay2.returncode == 0, relay2.stderr()[-3000:]
        incidents = per_key()
        want = {f"rhythmx:{i}" for i in [both, *polled, later, "INC-syslog-only"]}
        assert set(incidents) == want
        assert all(len(v) == 1 for v in incidents.values()), \
            {k: len(v) for k, v in incidents.items() if len(v) > 1}
        assert xs.stats["created"] == len(want)
        inc = incidents[f"rhythmx:{both}"][0]
        assert inc["severity"] == 3 and inc["CustomFields"]["relaydedupkey"] == f"rhythmx:{both}"
        assert rx.stats["http_503"] == 1
        err = relay.stderr() + relay2.stderr()
        assert RX_KEY not in err and XSOAR_KEY not in err
        assert "ALERT" not in err


def _loop_config(mport: int, rx_url: str, xsoar_url: str) -> str:
    return f"""
[relay]
state_dir = "state"
metrics_address = "127.0.0.1:{mport}"
drain_timeout = 3

[sources.rhythmx]
type = "rhythmx_api"
url = "{rx_url}"
auth = "api_key"
api_key_file = "rx.key"
poll_interval = 0.3
retry_base = 0.05
retry_cap = 0.5

[sources.xsoar_closed]
type = "xsoar_mirror"
url = "{xsoar_url}"
api_key_file = "xsoar.key"
poll_interval = 0.3
page_size = 3
retry_base = 0.05
retry_cap = 0.5

[sinks.xsoar]
type = "xsoar"
url = "{xsoar_url}"
api_key_file = "xsoar.key"
mode = "sync"
close_on_source_close = true

[sinks.xsoar.retry]
base = 0.2
cap = 1

[sinks.rhythmx_back]
type = "rhythmx_api"
url = "{rx_url}"
auth = "jwt"
username = "soar-service-account"
password_file = "rx.password"

[sinks.rhythmx_back.retry]
base = 0.2
cap = 1
max_attempts = 0

[routes.incidents]
match = 'source == "rhythmx"'
sinks = ["xsoar"]

[routes.close_rhythmx]
match = 'kind == "closure" and vendor == "RhythmX"'
sinks = ["rhythmx_back"]
"""


def test_xsoar_close_patches_rhythmx_once_across_a_restart_and_no_echo(tmp_path, make_relay):
    """Closed in XSOAR -> one PATCH in RhythmX, though the relay restarts between the close and
    the PATCH and the first PATCH's answer is lost; a close that started in RhythmX is not
    written back to it."""
    from tests.harness import relay_cli
    import json
    (tmp_path / "rx.key").write_text(RX_KEY)
    (tmp_path / "rx.password").write_text(RX_PASSWORD)
    (tmp_path / "xsoar.key").write_text(XSOAR_KEY)
    with RhythmxEmulator(api_key=RX_KEY, password=RX_PASSWORD, token_ttl=30) as rx, \
            XsoarEmulator(api_key=XSOAR_KEY, auth_id=None) as xs:
        a = rx.add_incident("INC-close-me")["incident_id"]
        b = rx.add_incident("INC-closed-at-source")["incident_id"]
        others = [rx.add_incident()["incident_id"] for _ in range(4)]
        mport = free_port()
        cfg = _loop_config(mport, rx.url, xs.url)

        def inc(key):
            hits = xs.by_field("relaydedupkey").get(key) or []
            return hits[0] if len(hits) == 1 else None

        with make_relay(cfg, mport) as relay:
            xs.wait(lambda e: all(inc(f"rhythmx:{i}") for i in [a, b, *others]), 30, "6 incidents")
            rx.fail(503, op="patch")                           # RhythmX refuses the PATCH for now
            xs.close_incident(inc(f"rhythmx:{a}")["id"], reason="Resolved", notes="contained on host", owner="alice")
            xs.reassign(inc(f"rhythmx:{others[0]}")["id"], "bob")     # an assignment: no route, not written
            relay.wait_metric("relay_mirror_events_total", 1, 30, source="xsoar_closed", event="closure",
                              origin="rhythmx")
            relay.wait_metric("relay_writeback_requests_total", 1, 30, sink="rhythmx_back", op="patch",
                              status="503")
            # closed at the source: RhythmX -> XSOAR closes it (relay's close notes) -> not echoed back
            rx.update_incident(b, status="CLOSED")
            xs.wait(lambda e: inc(f"rhythmx:{b}")["status"] == 2, 30, "the source's close in XSOAR")
            relay.wait_metric("relay_mirror_skipped_total", 1, 30, source="xsoar_closed", reason="own_close")
        assert relay.returncode == 0, relay.stderr()[-3000:]
        assert rx.patches == []
        status = json.loads(relay_cli("queue", "status", "--json", "--config", str(tmp_path / "relay.toml"),
                                      cwd=tmp_path).stdout)
        back = [r for r in status if r["sink"] == "rhythmx_back"]
        assert back and back[0]["depth"] == 1, status            # the write waits in its queue
        rx.clear_faults()
        rx.drop_after_processing(count=1, op="patch")         # the first PATCH works, its answer is lost
        with make_relay(cfg, mport) as relay2:
            rx.wait(lambda e: e.patches_for(a), 30, "the PATCH")
            relay2.wait_metric("relay_writeback_total", 1, 30, sink="rhythmx_back", action="already_closed")
            relay2.wait_metric("relay_pull_polls_total", relay2.metric("relay_pull_polls_total",
                                                                     source="xsoar_closed") + 3, 30,
                               source="xsoar_closed")
        assert relay2.returncode == 0, relay2.stderr()[-3000:]
        assert len(rx.patches_for(a)) == 1, rx.patches
        p = rx.patches_for(a)[0]
        assert p["status"] == "CLOSED" and p["before"] == "OPEN"
        assert "alice" in p["notes"] and "Resolved" in p["notes"] and "contained on host" in p["notes"]
        assert rx.patches_for(b) == [] and len(rx.patches) == 1
        assert rx.incident(a)["status"] == "CLOSED"
        err = relay.stderr() + relay2.stderr()
        assert RX_KEY not in err and RX_PASSWORD not in err and XSOAR_KEY not in err
        assert "ALERT" not in err


SEC = "e2e-qradar-sec-wb-77"


def _qradar_loop_config(mport: int, qr_url: str, xsoar_url: str) -> str:
    return f"""
[relay]
state_dir = "state"
metrics_address = "127.0.0.1:{mport}"
drain_timeout = 3

[sources.offenses]
type = "qradar_offenses"
url = "{qr_url}"
token_file = "qradar.token"
poll_interval = 0.3
page_size = 4
retry_base = 0.05
retry_cap = 0.5
resolve_context = false

[sources.xsoar_closed]
type = "xsoar_mirror"
url = "{xsoar_url}"
api_key_file = "xsoar.key"
poll_interval = 0.3
retry_base = 0.05
retry_cap = 0.5

[sinks.xsoar]
type = "xsoar"
url = "{xsoar_url}"
api_key_file = "xsoar.key"
mode = "sync"
close_on_source_close = true

[sinks.qradar_back]
type = "qradar_api"
url = "{qr_url}"
token_file = "qradar.token"
default_closing_reason_id = 1

[sinks.qradar_back.closing_reasons]
"False Positive" = 2
"Resolved" = 3

[sinks.qradar_back.retry]
base = 0.2
cap = 1
max_attempts = 0

[routes.offenses]
match = 'source == "offenses"'
sinks = ["xsoar"]

[routes.close_qradar]
match = 'kind == "closure" and origin == "qradar"'
sinks = ["qradar_back"]

[routes.assign_qradar]
match = 'kind == "assignment" and origin == "qradar"'
sinks = ["qradar_back"]

[sinks.qradar_back.owners]
"bob@acme.com" = "bob"
"""


def test_xsoar_close_closes_the_qradar_offense_with_reason_and_note_and_no_bounce(tmp_path, make_relay):
    from tests.emulators.qradar import QradarEmulator
    (tmp_path / "qradar.token").write_text(SEC)
    (tmp_path / "xsoar.key").write_text(XSOAR_KEY)
    with QradarEmulator(token=SEC) as qr, XsoarEmulator(api_key=XSOAR_KEY, auth_id=None) as xs:
        a, b, c, d = (o["id"] for o in qr.add_offenses(4))
        mport = free_port()

        def inc(oid):
            hits = xs.by_field("relaydedupkey").get(f"qradar:{oid}") or []
            return hits[0] if len(hits) == 1 else None

        with make_relay(_qradar_loop_config(mport, qr.url, xs.url), mport) as relay:
            xs.wait(lambda e: all(inc(o) for o in (a, b, c, d)), 30, "4 incidents")
            qr.fail(500, count=2, op="offense")               # the first reads fail: retried
            qr.fail(503, count=1, op="update")                # and the first close
            xs.close_incident(inc(a)["id"], reason="False Positive", notes="benign scanner", owner="alice")
            qr_closed = lambda: qr.offenses[a]["status"] == "CLOSED"     # noqa: E731
            xs.wait(lambda e: qr_closed(), 30, "offense closed in QRadar")
            # closed in QRadar: the incident closes, and nothing goes back to QRadar
            qr.close_offense(b, closing_reason_id=1)
            xs.wait(lambda e: inc(b)["status"] == 2, 30, "the QRadar close reaching XSOAR")
            relay.wait_metric("relay_mirror_skipped_total", 1, 30, source="xsoar_closed", reason="own_close")
            xs.close_incident(inc(c)["id"], reason="Duplicate")  # not in the table: the default id
            xs.wait(lambda e: qr.offenses[c]["status"] == "CLOSED", 30, "offense c closed")
            # an analyst takes d in XSOAR: its owner, mapped, becomes the offense's assigned_to
            xs.reassign(inc(d)["id"], "bob@acme.com")
            xs.wait(lambda e: qr.offenses[d]["assigned_to"] == "bob", 30, "offense d assigned")
            n = relay.metric("relay_pull_polls_total", source="xsoar_closed")
            relay.wait_metric("relay_pull_polls_total", n + 3, 30, source="xsoar_closed")
        assert relay.returncode == 0, relay.stderr()[-3000:]
        o = qr.offenses[a]
        assert o["closing_reason_id"] == 2 and o["closing_user"] == "API_token:relay"
        assert [n["note_text"] for n in qr.notes[a]] == [
            f"Closed in XSOAR (incident {inc(a)['id']}) by alice: False Positive. benign scanner"]
        assert qr.offenses[c]["closing_reason_id"] == 1 and len(qr.notes[c]) == 1
        assert [w for w in qr.writes if w["id"] == b] == [], "a QRadar close bounced back to QRadar"
        assert qr.offenses[b]["closing_user"] == "admin" and not qr.notes.get(b)
        # a's close also named its owner (alice), so the mirror emitted an assignment after the
        # closure: written only if it overtook the closure (whose first update failed with 503 and
        # waits for its retry); after the close it finds the offense closed and writes nothing
        a_assign = [w for w in qr.writes if w["id"] == a and "assigned_to" in w]
        assert [w["assigned_to"] for w in a_assign] in ([], ["alice"]), a_assign
        assert sorted((w["op"], w["id"]) for w in qr.writes if w not in a_assign) == sorted(
            [("note", a), ("update", a), ("note", c), ("update", c), ("update", d)])
        assert qr.offenses[d]["status"] == "OPEN" and [w for w in qr.writes if w["id"] == d] == [
            {"op": "update", "id": d, "assigned_to": "bob"}]
        err = relay.stderr()
        assert SEC not in err and XSOAR_KEY not in err and "ALERT" not in err


FALCON_SECRET = "e2e-falcon-secret-wb-4"


def _falcon_loop_config(mport: int, falcon_url: str, xsoar_url: str) -> str:
    return f"""
[relay]
state_dir = "state"
metrics_address = "127.0.0.1:{mport}"
drain_timeout = 3

[sources.falcon]
type = "falcon"
base_url = "{falcon_url}"
client_id = "test-client"
client_secret_file = "falcon.secret"
poll_interval = 0.3
retry_base = 0.05
retry_cap = 0.5

[sources.xsoar_closed]
type = "xsoar_mirror"
url = "{xsoar_url}"
api_key_file = "xsoar.key"
poll_interval = 0.3
retry_base = 0.05
retry_cap = 0.5

[sinks.xsoar]
type = "xsoar"
url = "{xsoar_url}"
api_key_file = "xsoar.key"

[sinks.falcon_back]
type = "falcon_api"
url = "{falcon_url}"
client_id = "test-client"
client_secret_file = "falcon.secret"

[sinks.falcon_back.retry]
base = 0.2
cap = 1
max_attempts = 0

[routes.alerts]
match = 'source == "falcon"'
sinks = ["xsoar"]

[routes.close_falcon]
match = 'kind == "closure" and origin == "falcon"'
sinks = ["falcon_back"]
"""


def test_xsoar_close_closes_the_falcon_alert_with_a_comment(tmp_path, make_relay):
    from tests.emulators.falcon import FalconEmulator
    (tmp_path / "falcon.secret").write_text(FALCON_SECRET)
    (tmp_path / "xsoar.key").write_text(XSOAR_KEY)
    with FalconEmulator(client_secret=FALCON_SECRET, token_ttl=2) as falcon, \
            XsoarEmulator(api_key=XSOAR_KEY, auth_id=None) as xs:
        alerts = [a["composite_id"] for a in falcon.add_alerts(3, start=time.time() - 30)]
        mport = free_port()

        def inc(cid):
            hits = xs.by_field("relaydedupkey").get(f"falcon:{cid}") or []
            return hits[0] if len(hits) == 1 else None

        with make_relay(_falcon_loop_config(mport, falcon.url, xs.url), mport) as relay:
            xs.wait(lambda e: all(inc(c) for c in alerts), 30, "3 incidents")
            falcon.fail(503, count=1, op="update", body=True)
            xs.close_incident(inc(alerts[0])["id"], reason="Resolved", notes="reimaged", owner="carol")
            xs.wait(lambda e: falcon.alerts[alerts[0]]["status"] == "closed", 30, "alert closed in Falcon")
            with falcon.lock:                                  # closed in Falcon first: not written again
                falcon.alerts[alerts[1]]["status"] = "closed"
            xs.close_incident(inc(alerts[1])["id"], reason="Resolved")
            relay.wait_metric("relay_writeback_total", 1, 30, sink="falcon_back", action="already_closed")
            n = relay.metric("relay_pull_polls_total", source="xsoar_closed")
            relay.wait_metric("relay_pull_polls_total", n + 3, 30, source="xsoar_closed")
        assert relay.returncode == 0, relay.stderr()[-3000:]
        a = falcon.alerts[alerts[0]]
        assert a["comments"] == [f"Closed in XSOAR (incident {inc(alerts[0])['id']}) by carol: Resolved. reimaged"]
        assert [u["id"] for u in falcon.updates] == [alerts[0]]
        assert falcon.alerts[alerts[2]]["status"] == "new"
        assert falcon.stats["fault_503"] == 1
        err = relay.stderr()
        assert FALCON_SECRET not in err and XSOAR_KEY not in err and "ALERT" not in err


def _triage_config(mport: int, qr_url: str, xsoar_url: str, mode: str) -> str:
    return f"""
[relay]
state_dir = "state"
metrics_address = "127.0.0.1:{mport}"
drain_timeout = 3

[sources.offenses]
type = "qradar_offenses"
url = "{qr_url}"
token_file = "qradar.token"
poll_interval = 0.3
retry_base = 0.05
retry_cap = 0.5
resolve_context = false

[sinks.xsoar]
type = "xsoar"
url = "{xsoar_url}"
api_key_file = "xsoar.key"

[sinks.qradar_back]
type = "qradar_api"
url = "{qr_url}"
token_file = "qradar.token"
triage_notes = true

[sinks.qradar_back.retry]
base = 0.2
cap = 1
max_attempts = 0

[routes.offenses]
match = 'source == "offenses"'
sinks = ["xsoar"]

[routes.triage_notes]
match = 'source == "offenses" and event == "created" and triage.mode in ["assist", "auto"]'
sinks = ["qradar_back"]

[triage]
mode = "{mode}"
default_owner = "soc_tier1"
"""


def test_triaged_offense_gets_exactly_one_note_across_retries_and_restarts(tmp_path, make_relay):
    """mode auto: the explanation as one note and assigned_to from the owner table, though the
    assign fails once (the row is retried after its note was added) and the relay restarts
    twice, the second time with the source's cursor and the sink's dedup store gone (every
    offense comes again as created); every write is in the audit file with its reason."""
    import json
    from tests.emulators.qradar import QradarEmulator
    (tmp_path / "qradar.token").write_text(SEC)
    (tmp_path / "xsoar.key").write_text(XSOAR_KEY)
    with QradarEmulator(token=SEC) as qr, XsoarEmulator(api_key=XSOAR_KEY, auth_id=None) as xs:
        ids = [o["id"] for o in qr.add_offenses(3)]
        qr.fail(500, count=1, op="update")                     # the first assign fails after its note
        mport = free_port()
        cfg = _triage_config(mport, qr.url, xs.url, "auto")
        with make_relay(cfg, mport) as relay:
            qr_wait = lambda: all(qr.offenses[i]["assigned_to"] == "soc_tier1" for i in ids)   # noqa: E731
            xs.wait(lambda e: qr_wait(), 30, "3 offenses assigned")
            relay.wait_metric("relay_writeback_total", 1, 30, sink="qradar_back", action="note_present")
        assert relay.returncode == 0, relay.stderr()[-3000:]
        with make_relay(cfg, mport) as relay2:                  # a plain restart: nothing new
            n = relay2.metric("relay_pull_polls_total", source="offenses")
            relay2.wait_metric("relay_pull_polls_total", n + 3, 30, source="offenses")
        state = tmp_path / "state"
        (state / "qradar-offenses.json").unlink()
        for p in state.glob("qradar-dedup-qradar_back.db*"):
            p.unlink()
        with make_relay(cfg, mport) as relay3:                  # every offense comes again as created
            relay3.wait_metric("relay_writeback_total", 3, 30, sink="qradar_back", action="note_present")
            relay3.wait_metric("relay_writeback_total", 3, 30, sink="qradar_back", action="assign_present")
        assert relay3.returncode == 0, relay3.stderr()[-3000:]
        for i in ids:
            notes = [n["note_text"] for n in qr.notes.get(i, [])]
            assert len(notes) == 1, (i, notes)
            assert notes[0].startswith("Relay triage: ") and "soc_tier1" in notes[0]
        assigns = [w for w in qr.writes if w["op"] == "update"]
        assert sorted(w["id"] for w in assigns) == sorted(ids) and all(w["assigned_to"] == "soc_tier1"
                                                                       for w in assigns)
        assert all(qr.offenses[i]["status"] == "OPEN" for i in ids)      # triage never closes
        audit = [json.loads(ln) for ln in (state / "audit" / "writeback-qradar_back.jsonl").read_text().splitlines()]
        added = [a for a in audit if a["action"] == "note_added"]
        assert sorted(a["id"] for a in added) == sorted(ids)
        assert all(a["reason"].startswith("triage mode auto: score ") for a in added)
        assert sorted(a["id"] for a in audit if a["action"] == "assigned") == sorted(ids)
        assert len([a for a in audit if a["action"] == "note_present"]) >= 4


def test_triage_write_back_is_off_by_default_and_suggest_writes_nothing(tmp_path, make_relay):
    """Without triage_notes the sink refuses triage rows (dead letters saying why); in mode
    suggest the route does not match: QRadar is never written."""
    from tests.emulators.qradar import QradarEmulator
    from tests.harness import relay_cli
    import json
    (tmp_path / "qradar.token").write_text(SEC)
    (tmp_path / "xsoar.key").write_text(XSOAR_KEY)
    with QradarEmulator(token=SEC) as qr, XsoarEmulator(api_key=XSOAR_KEY, auth_id=None) as xs:
        qr.add_offenses(2)
        mport = free_port()
        cfg = _triage_config(mport, qr.url, xs.url, "assist").replace("triage_notes = true\n", "")
        with make_relay(cfg, mport) as relay:
            relay.wait_metric("relay_render_errors_total", 2, 30, sink="qradar_back")
        out = relay_cli("queue", "list", "qradar_back", "--dead", "--json", "--config", str(tmp_path / "relay.toml"),
                        cwd=tmp_path).stdout.decode()
        dead = [json.loads(ln) for ln in out.splitlines() if ln.strip()]
        assert len(dead) == 2 and all("triage write-back is off" in (d.get("reason") or d.get("last_error"))
                                      for d in dead), out
        cfg = _triage_config(mport, qr.url, xs.url, "suggest")
        (tmp_path / "state" / "qradar-offenses.json").unlink()
        with make_relay(cfg, mport) as relay2:
            n = relay2.metric("relay_pull_polls_total", source="offenses")
            relay2.wait_metric("relay_pull_polls_total", n + 3, 30, source="offenses")
        assert qr.writes == [] and not qr.notes

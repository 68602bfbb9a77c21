"""relay/enrich: lookup tables, HTTP lookups, triage, modes, audit log, summary (docs/enrichment.md).

Everything runs in-process on 127.0.0.1: a tiny CMDB HTTP server defined here and the
OpenAI-compatible emulator (tests/emulators/llm.py)."""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from formats import xsoar as xsoar_fmt
from formats.render import Renderer, RenderOptions
from parsers.event import Event
from relay.config import ConfigError, loads
from relay.enrich import build_enricher, dry_run, shutdown
from relay.enrich.audit import AuditWriter
from relay.enrich.stage import runtime
from relay.enrich.tables import Opts, TableError, load_rows
from relay.metrics import REGISTRY
from relay.pipeline import Pipeline
from tests.emulators.llm import LlmEmulator
from tests.harness import wait_until

EX = Path(__file__).resolve().parent.parent / "examples" / "lookups"


@pytest.fixture(autouse=True)
def _stop_runtime():
    yield
    shutdown()


def ev(**fields) -> Event:
    e = Event(b"x", "rfc5424")
    f = {"kind": "incident", "vendor": "RhythmX", "product": "SigmaIncident", "id": "INC-1",
         "dedup_key": "rhythmx:INC-1", "event": "created", "name": "Brute force", "description": None,
         "risk_score": 50, "severity": "medium", "status": "open", "src_ip": None, "dst_ip": None, "host": None,
         "user": None, "tactic": None, "tactic_id": None, "technique": None, "technique_id": None, "url": None,
         "extra": {}}
    f.update(fields)
    e.fields = f
    e.source = "test"
    return e


def write(p: Path, text: str) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return p


def config(tmp_path: Path, body: str, sinks: str = "", **kw):
    text = body + "\n" + (sinks or '[sinks.out]\ntype = "file"\npath = "out.jsonl"\nformat = "json"\n'
                                     '[routes.all]\nmatch = "format exists"\nsinks = ["out"]\n')
    return loads(text, file=str(tmp_path / "relay.toml"), base_dir=tmp_path, **kw)


def copy_examples(tmp_path: Path) -> Path:
    d = tmp_path / "lookups"
    d.mkdir(exist_ok=True)
    for p in EX.iterdir():
        (d / p.name).write_bytes(p.read_bytes())
    return d


LOOKUPS = """
[lookups.assets]
kind = "asset"
file = "lookups/assets.csv"
[lookups.vulns]
kind = "vuln"
file = "lookups/vulns.csv"
[lookups.misp]
kind = "ti"
file = "lookups/ti_misp.csv"
format = "misp"
source = "misp"
[lookups.blocklist]
kind = "ti"
file = "lookups/ti_blocklist.txt"
confidence = 60
"""


# ============================================================================ tables

def test_csv_assets_exact_and_longest_prefix():
    idx, nbad, _ = load_rows((EX / "assets.csv").read_bytes(), Opts("assets", "asset", "csv"))
    assert nbad == 0
    assert idx.get("10.20.0.5")[0] == "10.20.0.5/32"               # /32 beats /16 and /8
    assert idx.get("10.20.0.5")[1]["crown_jewel"] is True
    assert idx.get("10.20.9.9")[0] == "10.20.0.0/16"
    assert idx.get("10.20.9.9")[1]["criticality"] == 4
    assert idx.get("10.99.1.1")[0] == "10.0.0.0/8"
    assert idx.get("192.168.100.77")[1]["owner"] == "Lab Admins"
    assert idx.get("8.8.8.8") is None
    assert idx.get("DB-CORE-01")[1]["name"] == "db-core-01"          # host names: case-insensitive
    assert idx.get("exec-laptop-07.corp.example")[1]["owner"] == "Executive IT"   # FQDN -> short name
    assert idx.get("not-an-ip") is None and idx.get("10.20.0.5.evil") is None


def test_ipv6_and_mapped_and_host_bits():
    data = b"cidr,owner,criticality\n2001:db8::/32,v6team,3\n2001:db8:1::/48,v6core,5\n10.1.2.99/24,net,2\n"
    idx, nbad, _ = load_rows(data, Opts("a", "asset", "csv"))
    assert nbad == 0
    assert idx.get("2001:db8:1::42")[1]["owner"] == "v6core"
    assert idx.get("2001:db8:2::1")[1]["owner"] == "v6team"
    assert idx.get("10.1.2.3")[0] == "10.1.2.99/24"                  # host bits cleared (strict=False)
    assert idx.get("::ffff:10.1.2.3")[1]["owner"] == "net"           # IPv4-mapped v6 address
    assert idx.get("fe80::1%eth0") is None


def test_json_assets_list_and_object_forms():
    idx, _, _ = load_rows((EX / "assets.json").read_bytes(), Opts("j", "asset", "json"))
    assert idx.get("172.16.5.10")[1]["name"] == "pay-api-01"
    assert idx.get("172.20.1.1")[1]["name"] == "dmz"
    obj = b'{"web01": {"owner": "Web", "criticality": "4", "crown_jewel": "yes"}, "10.9.0.0/16": {"owner": "N"}}'
    idx, _, _ = load_rows(obj, Opts("j", "asset", "json"))
    assert idx.get("WEB01")[1]["criticality"] == 4 and idx.get("web01")[1]["crown_jewel"] is True
    assert idx.get("10.9.3.3")[1]["owner"] == "N"


def test_vulns_aggregate_per_host_csv_and_json():
    idx, _, _ = load_rows((EX / "vulns.csv").read_bytes(), Opts("v", "vuln", "csv"))
    v = idx.get("db-core-01")[1]
    assert v["max_cvss"] == 10.0 and v["count"] == 3 and v["cves"][-1] == "CVE-2023-4966"
    obj = b'{"h1": [{"cve": "CVE-1", "cvss": 5.0}, {"cve": "CVE-2", "cvss": 9.1}]}'
    idx, _, _ = load_rows(obj, Opts("v", "vuln", "json"))
    assert idx.get("h1")[1]["max_cvss"] == 9.1 and idx.get("h1")[1]["cves"] == ["CVE-2", "CVE-1"]


def test_misp_csv_export():
    idx, nbad, _ = load_rows((EX / "ti_misp.csv").read_bytes(), Opts("m", "ti", "misp", confidence=75, source="misp"))
    assert nbad == 0
    hit = idx.get("203.0.113.7")[1]
    assert hit["match"] is True and hit["source"] == "misp event 1042" and hit["confidence"] == 75
    assert "apt29" in hit["tags"]
    assert idx.get("cdn.evil-updates.example")[1]["indicator"] == "evil-updates.example"    # subdomain
    sha = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    assert idx.get(sha.upper())[1]["type"] == "sha256"                                    # filename|sha256
    assert idx.get("198.51.100.23") is None                                               # to_ids = 0
    idx2, _, _ = load_rows((EX / "ti_misp.csv").read_bytes(), Opts("m", "ti", "misp", include_non_ids=True))
    assert idx2.get("198.51.100.23") is not None


def test_plain_list():
    idx, nbad, _ = load_rows((EX / "ti_blocklist.txt").read_bytes(), Opts("b", "ti", "list", confidence=60))
    assert nbad == 0 and idx.size == 3
    assert idx.get("198.51.100.200")[1]["type"] == "cidr"
    assert idx.get("bad-domain.example")[1]["confidence"] == 60
    assert idx.get("44D88612FEA8A8F36DE82E1278ABB02F")[1]["type"] == "md5"
    assert idx.get("good.example") is None


def test_bad_rows_skipped_and_broken_files_refused():
    data = b"cidr,owner,criticality\n10.0.0.0/8,a,3\n10.1.0.0/99,b,3\n10.2.0.0/16,c,9\n10.3.0.0/16,d,x\n"
    idx, nbad, bad = load_rows(data, Opts("a", "asset", "csv"))
    assert idx.size == 1 and nbad == 3
    assert "line 3" in bad[0] and "prefix length" in bad[0] and "criticality 9 is not 1-5" in bad[1]
    with pytest.raises(TableError, match="no key column"):
        load_rows(b"owner,criticality\nx,1\n", Opts("a", "asset", "csv"))
    with pytest.raises(TableError, match="not JSON"):
        load_rows(b"[{", Opts("a", "asset", "json"))
    with pytest.raises(TableError, match="fewer than min_rows"):
        load_rows(b"cidr,owner\n", Opts("a", "asset", "csv"))
    with pytest.raises(TableError, match="not a MISP CSV"):
        load_rows(b"a,b\n1,2\n", Opts("a", "ti", "misp"))
    with pytest.raises(TableError, match="not UTF-8"):
        load_rows(b"cidr\n\xff\xfe\n", Opts("a", "asset", "csv"))


def test_config_errors_name_the_key(tmp_path):
    copy_examples(tmp_path)
    cases = [
        ('[lookups.a]\nkind = "asset"\nfile = "lookups/assets.csv"\ntypo = 1\n', "lookups.a.typo: unknown key"),
        ('[lookups.a]\nkind = "host"\nfile = "lookups/assets.csv"\n', "lookups.a.kind: 'host' is not one of"),
        ('[lookups.a]\nkind = "asset"\nfile = "lookups/nope.csv"\n', "lookups.a.file: file"),
        ('[lookups.a]\nkind = "asset"\nfile = "lookups/assets.csv"\nfields = ["src ip"]\n', "lookups.a.fields:"),
        ('[lookups.a]\nkind = "asset"\n', "lookups.a.file: set exactly one of"),
        ('[lookups.a]\nkind = "asset"\nfile = "lookups/ti_misp.csv"\nformat = "misp"\n', "lookups.a.format:"),
        ('[lookups.a]\nkind = "asset"\nurl = "http://127.0.0.1:1/x"\n', "lookups.a.url: must contain {value}"),
        ('[lookups.a]\nkind = "asset"\nurl = "http://127.0.0.1:1/{value}"\ntoken_env = "RELAY_NO_SUCH_ENV_X"\n',
         "lookups.a.token_env: environment variable RELAY_NO_SUCH_ENV_X is not set"),
        ('[triage]\nmode = "yolo"\n', "triage.mode: 'yolo' is not one of"),
        ('[triage]\nmatch = "risk_score >>= 3"\n', "triage.match: rule syntax error"),
        ('[triage]\ncriticality_points = [1, 2]\n', "triage.criticality_points: must be 5 numbers"),
        ('[[triage.owners]]\nowner = "{team}"\n', "triage.owners[0].owner: unknown placeholder {team}"),
        ('[[triage.owners]]\ntactic = "x"\n', "triage.owners[0].owner: is required"),
        ('[[triage.escalate]]\nname = "x"\n', "triage.escalate[0].min_severity: an escalation needs"),
        ('[audit]\nflush_interval = 5.0\n', "audit.flush_interval: must be > 0 and <= 1 second"),
        ('[triage]\n[summary]\nenabled = true\nmodel = "m"\n', "summary.url: is required"),
        ('[lookups.bad]\nkind = "asset"\nfile = "lookups/broken.json"\n', "lookups.bad.file:"),
    ]
    write(tmp_path / "lookups" / "broken.json", "[{")
    for body, want in cases:
        with pytest.raises(ConfigError) as e:
            config(tmp_path, body)
        assert want in str(e.value), (body, str(e.value))
    with pytest.raises(ConfigError, match=r"triage.escalate\[0\].sinks: no sink named 'nope'"):
        cfg = config(tmp_path, '[triage]\n[[triage.escalate]]\nname = "p"\nmin_severity = "high"\nsinks = ["nope"]\n')
        cfg.enrich.validate(cfg)     # (load() calls it once relay/config.py has the proposed line)


# ============================================================================ the stage

def test_enrichment_results_and_rules(tmp_path):
    copy_examples(tmp_path)
    cfg = config(tmp_path, LOOKUPS, sinks="""
[sinks.out]
type = "file"
path = "out.jsonl"
format = "json"
[routes.crown]
match = 'asset.criticality >= 4 and ti.match == true and vuln.max_cvss >= 9'
sinks = ["out"]
""")
    enrich = build_enricher(cfg)
    e = ev(src_ip="203.0.113.7", dst_ip="10.20.0.5", host="db-core-01", url="https://cdn.evil-updates.example/x")
    enrich(e)
    assert e.enrich["asset"]["name"] == "db-core-01" and e.enrich["asset"]["criticality"] == 5
    assert e.enrich["vuln"]["max_cvss"] == 10.0
    ti = e.enrich["ti"]
    assert ti["match"] is True and ti["count"] == 2 and ti["confidence"] == 75      # best of two TI hits
    assert {(h["kind"], h["field"]) for h in e.enrich["hits"]} >= {("asset", "dst_ip"), ("vuln", "host"),
                                                                  ("ti", "src_ip"), ("ti", "domain(url)")}
    p = Pipeline(cfg, committers={})
    assert p.route(e) == (["crown"], ["out"])
    quiet = ev(src_ip="8.8.8.8", dst_ip="1.1.1.1")
    enrich(quiet)
    assert quiet.enrich == {"ti": {"match": False}}
    assert p.route(quiet) == ([], [])
    raw = Event(b"junk")              # unparsed events (no fields) are left alone
    enrich(raw)
    assert raw.enrich is None


def test_per_table_fields_and_extra_sha256(tmp_path):
    copy_examples(tmp_path)
    cfg = config(tmp_path, """
[lookups.misp]
kind = "ti"
file = "lookups/ti_misp.csv"
format = "misp"
fields = ["extra.sha256", "extra.domain"]
""")
    enrich = build_enricher(cfg)
    e = ev(src_ip="203.0.113.7", extra={"sha256": "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08"})
    enrich(e)
    assert e.enrich["ti"]["type"] == "sha256"
    assert [h["field"] for h in e.enrich["hits"]] == ["extra.sha256"]      # src_ip is not a field of this table


def test_pipeline_enriches_before_routing(tmp_path):
    copy_examples(tmp_path)
    cfg = config(tmp_path, LOOKUPS + "[triage]\nmode = \"assist\"\n[audit]\nenabled = false\n", sinks="""
[sinks.out]
type = "file"
path = "out.jsonl"
format = "json"
[routes.t]
match = 'triage.severity == "critical"'
sinks = ["out"]
""")
    p = Pipeline(cfg, committers={})
    body = json.dumps({"incident_id": "INC-7", "risk_score": 55, "src_ip": "203.0.113.7", "dst_ip": "10.20.0.5"})
    raw = (f'<134>1 2026-03-13T04:30:00.123Z rx-01 SigmaIncident 4242 created [incident@32473 id="INC-7" '
           f'risk_score="55"] {body}').encode()
    event, routes, out = p.process(raw, cfg.sources.get("x") or _src(), "127.0.0.1:5", time.time())
    assert routes == ["t"], event.fields.get("triage")
    line = json.loads(out[0][1])
    assert line["event"]["triage"]["severity"] == "critical" and line["event"]["triage"]["owner"] == "Database Team"


def _src():
    from relay.config import SourceConfig
    return SourceConfig(name="x", type="tcp", address=("127.0.0.1", 0))


# ============================================================================ triage

TRIAGE = """
[triage]
mode = "%s"
default_owner = "SOC Tier 1"
[[triage.owners]]
tactic = ["Credential Access"]
owner = "Identity Team"
[[triage.owners]]
crown_jewel = true
owner = "{asset_owner}"
[[triage.owners]]
business_unit = "hr"
owner = "HR SecOps"
[[triage.escalate]]
name = "page"
min_severity = "critical"
sinks = ["pager"]
[audit]
path = "audit/triage.jsonl"
"""
SINKS = """
[sinks.out]
type = "file"
path = "out.jsonl"
format = "json"
[sinks.pager]
type = "file"
path = "pager.jsonl"
format = "json"
[routes.all]
match = "format exists"
sinks = ["out"]
[routes.page]
match = 'triage.escalate == "page"'
sinks = ["pager"]
"""


def _triaged(tmp_path, mode: str, **fields):
    copy_examples(tmp_path)
    cfg = config(tmp_path, LOOKUPS + TRIAGE % mode, sinks=SINKS)
    enrich = build_enricher(cfg)
    e = ev(**fields)
    enrich(e)
    return cfg, enrich, e


def test_score_formula_parts_and_explanation(tmp_path):
    cfg, _, e = _triaged(tmp_path, "assist", risk_score=30, src_ip="203.0.113.7", dst_ip="10.20.0.5",
                         host="db-core-01")
    t = e.fields["triage"]
    # 30 x 1.0 + criticality 5 (+20) + crown jewel (+15) + CVSS 10 (+15) + TI 75 % of 25 (+18.75) = 98.75
    assert [(p["name"], p["points"]) for p in t["parts"]] == [
        ("risk", 30.0), ("asset_criticality", 20.0), ("crown_jewel", 15.0), ("vulnerability", 15.0),
        ("threat_intel", 18.75)]
    assert t["score"] == 99 and t["severity"] == "critical" and t["owner"] == "Database Team"
    assert "owners[1]: crown jewel" in t["explanation"] and "+18.75" in t["explanation"]
    assert "CVE-2024-3400" in t["explanation"]
    low = ev(risk_score=30, dst_ip="192.168.100.9")          # lab asset: criticality 1 lowers the score
    _ = build_enricher(cfg)(low)
    assert low.fields["triage"]["score"] == 20 and low.fields["triage"]["severity"] == "low"
    assert low.fields["triage"]["owner"] == "SOC Tier 1"
    nors = ev(risk_score=None, severity="high")               # no risk score: the band's midpoint
    build_enricher(cfg)(nors)
    assert nors.fields["triage"]["parts"][0]["points"] == 70.0


def test_owner_table_order(tmp_path):
    cfg, enrich, _ = _triaged(tmp_path, "assist")
    cases = [(dict(tactic="Credential Access", dst_ip="10.20.0.5"), "Identity Team"),   # first rule wins
             (dict(dst_ip="10.20.0.5"), "Database Team"),                              # {asset_owner}
             (dict(dst_ip="10.30.1.1"), "HR SecOps"),                                   # business unit (any case)
             (dict(dst_ip="10.99.1.1"), "SOC Tier 1")]                                  # default_owner
    for fields, owner in cases:
        e = ev(**fields)
        enrich(e)
        assert e.fields["triage"]["owner"] == owner, (fields, e.fields["triage"]["explanation"])


def test_only_matching_events_are_triaged(tmp_path):
    _, enrich, _ = _triaged(tmp_path, "assist")
    e = ev(kind="log", dst_ip="10.20.0.5")
    enrich(e)
    assert "triage" not in e.fields and e.enrich["asset"]["criticality"] == 5


def _xsoar(e):
    return xsoar_fmt.incident(e, xsoar_fmt.XsoarOptions(), ["all"])["CustomFields"]


def _leef(e):
    return Renderer(RenderOptions(format="leef")).render(e).decode()


def test_mode_suggest_annotates_only(tmp_path):
    cfg, _, e = _triaged(tmp_path, "suggest", risk_score=90, src_ip="203.0.113.7", dst_ip="10.20.0.5")
    t = e.fields["triage"]
    assert t["mode"] == "suggest" and "severity" not in t and "owner" not in t
    assert t["suggested"] == {"severity": "critical", "owner": "Database Team", "owner_rule": "owners[1]: crown jewel"}
    assert t["escalation"] == "page" and "escalate" not in t and e.meta is None
    assert "not applied (mode suggest)" in t["explanation"]
    cf = _xsoar(e)
    assert cf["relaytriagescore"] == "100" and "relaytriageseverity" not in cf and "relaytriageowner" not in cf
    assert "Suggested severity critical" in cf["relaytriageexplanation"]
    assert Pipeline(cfg, committers={}).route(e) == (["all"], ["out"])


def test_mode_assist_fills_xsoar_and_leef(tmp_path):
    cfg, _, e = _triaged(tmp_path, "assist", risk_score=90, src_ip="203.0.113.7", dst_ip="10.20.0.5")
    cf = _xsoar(e)
    assert cf["relaytriageseverity"] == "critical" and cf["relaytriageowner"] == "Database Team"
    assert "Findings:" in cf["relaytriageexplanation"]
    leef = _leef(e)
    assert "triageScore=100" in leef and "triageSeverity=critical" in leef and "triageMode=assist" in leef
    assert Pipeline(cfg, committers={}).route(e) == (["all"], ["out"])     # routing unchanged


def test_mode_auto_escalates(tmp_path):
    cfg, enrich, e = _triaged(tmp_path, "auto", risk_score=90, src_ip="203.0.113.7", dst_ip="10.20.0.5")
    t = e.fields["triage"]
    assert t["escalate"] == "page" and "Escalation 'page' applied" in t["explanation"]
    assert e.meta == {"triage_sinks": ("pager",), "triage_route": "triage:page"}
    names, sinks = Pipeline(cfg, committers={}).route(e)
    assert names[:2] == ["all", "page"] and sinks == ["out", "pager"]
    calm = ev(risk_score=40, dst_ip="10.99.0.1")
    enrich(calm)
    assert "escalate" not in calm.fields["triage"] and calm.meta is None


def test_mode_auto_escalation_sinks_without_a_route(tmp_path):
    copy_examples(tmp_path)
    cfg = config(tmp_path, LOOKUPS + TRIAGE % "auto", sinks=SINKS.replace("[routes.page]", "[routes.never]").replace(
        'match = \'triage.escalate == "page"\'', 'match = "format == \\"none\\""'))
    e = ev(risk_score=90, src_ip="203.0.113.7", dst_ip="10.20.0.5")
    build_enricher(cfg)(e)
    assert Pipeline(cfg, committers={}).route(e) == (["all", "triage:page"], ["out", "pager"])
    calm = ev(risk_score=40, dst_ip="10.99.0.1")
    build_enricher(cfg)(calm)
    assert Pipeline(cfg, committers={}).route(calm) == (["all"], ["out"])


# ============================================================================ reloads

def test_reload_on_change_and_broken_file_keeps_last_good(tmp_path, caplog):
    f = write(tmp_path / "lookups" / "assets.csv", "cidr,owner,criticality\n10.0.0.0/8,old,2\n")
    cfg = config(tmp_path, '[lookups]\ncheck_interval = 0.05\n[lookups.a]\nkind = "asset"\nfile = "lookups/assets.csv"\n')
    enrich = build_enricher(cfg)
    failed = REGISTRY.counter("relay_lookup_reloads_total", table="a", result="failed")
    before = failed.value

    def owner():
        e = ev(dst_ip="10.1.1.1")
        enrich(e)
        return e.enrich.get("asset", {}).get("owner")
    assert owner() == "old"
    tmp = f.with_suffix(".tmp")
    tmp.write_text("cidr,owner,criticality\n10.0.0.0/8,new,4\n")
    os.replace(tmp, f)
    wait_until(lambda: owner() == "new", 5.0, what="the watcher to load the new file", interval=0.02)
    f.write_text("owner,criticality\nbroken,1\n")            # no key column
    wait_until(lambda: failed.value > before, 5.0, what="the failed reload to be counted", interval=0.02)
    assert owner() == "new"
    assert any("keeping the last good table" in r.getMessage() and "no key column" in r.getMessage()
               for r in caplog.records)
    f.write_text("cidr,owner,criticality\n10.0.0.0/8,fixed,4\n")
    wait_until(lambda: owner() == "fixed", 5.0, what="recovery after the file is fixed", interval=0.02)
    f.unlink()                                                # a deleted file keeps the table too
    time.sleep(0.2)
    assert owner() == "fixed"


def test_shorter_check_interval_applies_at_once(tmp_path):
    """A config with check_interval = 3600 leaves the watcher asleep for an hour; adopting one
    with 0.05 wakes it, so the new interval applies now (a phase-2 CI run once waited 5 s in
    vain when an earlier test had set a long interval)."""
    a = write(tmp_path / "a" / "lookups" / "assets.csv", "cidr,owner\n10.0.0.0/8,one\n")
    build_enricher(config(tmp_path / "a", '[lookups]\ncheck_interval = 3600\n[lookups.a]\nkind = "asset"\n'
                                          'file = "lookups/assets.csv"\n'))
    time.sleep(0.1)                                        # the watcher is in its hour-long wait
    b = write(tmp_path / "b" / "lookups" / "assets.csv", "cidr,owner\n10.0.0.0/8,old\n")
    enrich = build_enricher(config(tmp_path / "b", '[lookups]\ncheck_interval = 0.05\n[lookups.a]\n'
                                                   'kind = "asset"\nfile = "lookups/assets.csv"\n'))

    def owner():
        e = ev(dst_ip="10.1.1.1")
        enrich(e)
        return e.enrich.get("asset", {}).get("owner")
    assert owner() == "old"
    b.write_text("cidr,owner\n10.0.0.0/8,newer\n")
    wait_until(lambda: owner() == "newer", 5.0, what="the watcher to load the changed file", interval=0.02)
    assert a.exists()


def test_reload_via_config_reload(tmp_path):
    """SIGHUP re-reads the config: a changed table is loaded then; a broken one keeps the last good."""
    f = write(tmp_path / "lookups" / "assets.csv", "cidr,owner\n10.0.0.0/8,one\n")
    body = '[lookups]\ncheck_interval = 3600\n[lookups.a]\nkind = "asset"\nfile = "lookups/assets.csv"\n'
    cfg = config(tmp_path, body)
    build_enricher(cfg)
    f.write_text("cidr,owner\n10.0.0.0/8,two\n")
    cfg2 = config(tmp_path, body)                     # what Server.reload does: load() then configure()
    e = ev(dst_ip="10.0.0.1")
    build_enricher(cfg2)(e)
    assert e.enrich["asset"]["owner"] == "two"
    f.write_text("[not csv with a key")
    cfg3 = config(tmp_path, body)                     # not a config error: the last good table stays
    e = ev(dst_ip="10.0.0.1")
    build_enricher(cfg3)(e)
    assert e.enrich["asset"]["owner"] == "two"


# ============================================================================ HTTP lookups

class Cmdb:
    """GET /assets/<value> -> JSON record (404 when unknown); ``hang`` stalls every answer."""

    def __init__(self, records: dict) -> None:
        self.records = records
        self.hang = 0.0
        self.hits = 0
        self.auth: list = []
        self.stop = threading.Event()
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.hits += 1
                outer.auth.append(self.headers.get("Authorization"))
                if outer.hang:
                    outer.stop.wait(outer.hang)
                key = self.path.rsplit("/", 1)[-1]
                rec = outer.records.get(key)
                data = json.dumps({"result": [rec]} if rec else {"error": "not found"}).encode()
                try:
                    self.send_response(200 if rec else 404)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/assets/{{value}}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def cmdb():
    c = Cmdb({"10.5.5.5": {"owner": "Payments", "business_unit": "Finance", "criticality": 5,
                           "crown_jewel": True, "name": "pay-db"}})
    yield c
    c.close()


def _http_cfg(tmp_path, cmdb, extra=""):
    return config(tmp_path, f"""
[lookups.cmdb]
kind = "asset"
url = "{cmdb.url}"
result = "result"
timeout = 0.3
failures = 2
cooldown = 30
ttl = 60
token_env = "RELAY_TEST_CMDB_TOKEN"
{extra}
[triage]
mode = "assist"
[audit]
path = "audit/triage.jsonl"
""")


def test_http_lookup_cache_miss_goes_on_with_a_note(tmp_path, cmdb, monkeypatch):
    monkeypatch.setenv("RELAY_TEST_CMDB_TOKEN", "cmdb-S3CRET-token")
    enrich = build_enricher(_http_cfg(tmp_path, cmdb))
    e = ev(dst_ip="10.5.5.5")
    enrich(e)
    assert "asset" not in e.enrich
    assert e.enrich["missing"] == ["cmdb: dst_ip 10.5.5.5 not cached yet (looked up in the background)"]
    assert "Missing context: cmdb: dst_ip 10.5.5.5 not cached yet" in e.fields["triage"]["explanation"]

    def found():
        x = ev(dst_ip="10.5.5.5")
        enrich(x)
        return x.enrich.get("asset")
    wait_until(found, 5.0, what="the background fetch", interval=0.02)
    assert found()["owner"] == "Payments" and cmdb.auth[0] == "Bearer cmdb-S3CRET-token"
    x = ev(dst_ip="10.6.6.6")
    enrich(x)
    wait_until(lambda: cmdb.hits >= 2, 5.0, what="the second fetch", interval=0.02)
    time.sleep(0.1)
    x = ev(dst_ip="10.6.6.6")                     # 404: known absent, no note, no new request
    enrich(x)
    assert "missing" not in x.enrich and "asset" not in x.enrich
    shutdown()
    text = (tmp_path / "audit" / "triage.jsonl").read_text()
    lines = [json.loads(x) for x in text.splitlines()]
    assert len(lines) >= 4 and "cmdb-S3CRET-token" not in text and "RELAY_TEST_CMDB_TOKEN" not in text
    assert lines[0]["missing"] == ["cmdb: dst_ip 10.5.5.5 not cached yet (looked up in the background)"]
    assert lines[-1]["lookups"] == [] and any(a["lookups"] and a["lookups"][0]["table"] == "cmdb" for a in lines)


def test_http_backend_hangs_circuit_opens_and_events_do_not_stall(tmp_path, monkeypatch):
    """A backend that accepts connections and never answers (a listening socket nobody accepts
    from: no thread of this process serves it, so the timing is the enricher's alone)."""
    import gc
    import socket
    monkeypatch.setenv("RELAY_TEST_CMDB_TOKEN", "t")
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(512)

    class Hung:
        url = f"http://127.0.0.1:{hung.getsockname()[1]}/assets/{{value}}"
    try:
        enrich = build_enricher(_http_cfg(tmp_path, Hung))
        opened = REGISTRY.counter("relay_lookup_circuit_opened_total", table="cmdb")
        requests = REGISTRY.counter("relay_lookup_requests_total", table="cmdb", result="timeout")
        before, before_req = opened.value, requests.value
        times = []
        deadline = time.monotonic() + 5
        n = 0
        # collector pauses and GIL hand-offs to unrelated threads (the default switch interval
        # is 5 ms) are not the backend's doing; a stall on the backend would be >= 300 ms
        gc.disable()
        switch = sys.getswitchinterval()
        sys.setswitchinterval(0.0001)
        try:
            while opened.value == before and time.monotonic() < deadline:   # distinct values: all misses
                e = ev(dst_ip=f"10.7.{n // 250}.{n % 250}")
                t0 = time.perf_counter()
                enrich(e)
                times.append(time.perf_counter() - t0)
                n += 1
                time.sleep(0.001)
        finally:
            gc.enable()
            sys.setswitchinterval(switch)
        assert opened.value == before + 1, "the circuit did not open"
        assert n > 100                               # events kept flowing during the 0.3 s timeouts
        times.sort()
        p99, worst = times[int(len(times) * 0.99)], times[-1]
        msg = f"median {times[len(times) // 2] * 1e6:.0f} us, p99 {p99 * 1e6:.0f} us, worst {worst * 1e3:.2f} ms"
        # ~tens of us per event; the host is shared (2 cores, CI), so the OS may preempt us for
        # a few ms now and then: 99 % under 5 ms, and none near the 300 ms a wait would cost
        assert p99 < 0.005 and worst < 0.1, msg
        e = ev(dst_ip="10.5.5.5")
        t0 = time.perf_counter()
        enrich(e)
        assert time.perf_counter() - t0 < 0.05      # far below the 0.3 s timeout it must not wait for
        assert "circuit open (timeout after 0.3 s)" in e.enrich["missing"][0]
        assert "Missing context: cmdb: dst_ip 10.5.5.5 not looked up: circuit open" in e.fields["triage"]["explanation"]
        time.sleep(0.5)
        # two timeouts opened it (a third may have been in flight: concurrency 2); nothing sent since
        assert requests.value - before_req <= 3 and opened.value == before + 1
    finally:
        shutdown()
        hung.close()


def test_http_circuit_half_open_recovers(tmp_path, cmdb, monkeypatch):
    monkeypatch.setenv("RELAY_TEST_CMDB_TOKEN", "t")
    cmdb.hang = 30.0
    enrich = build_enricher(_http_cfg(tmp_path, cmdb))
    h = next(iter(runtime.http.values()))
    h.cooldown = 0.3
    for i in range(2):
        enrich(ev(dst_ip=f"10.8.0.{i}"))
    wait_until(h.circuit_open, 5.0, what="the circuit to open", interval=0.02)
    cmdb.hang = 0.0
    time.sleep(0.35)

    def ok():
        x = ev(dst_ip="10.5.5.5")
        enrich(x)
        return x.enrich.get("asset")
    wait_until(ok, 5.0, what="the half-open trial to close the circuit", interval=0.02)
    assert not h.circuit_open() and h.consecutive == 0


# ============================================================================ audit

def test_audit_lines(tmp_path):
    _, enrich, e = _triaged(tmp_path, "auto", risk_score=90, src_ip="203.0.113.7", dst_ip="10.20.0.5")
    shutdown()
    lines = [json.loads(x) for x in (tmp_path / "audit" / "triage.jsonl").read_text().splitlines()]
    assert len(lines) == 1
    a = lines[0]
    assert a["type"] == "triage" and a["event_id"] == "rhythmx:INC-1" and a["mode"] == "auto"
    assert a["inputs"]["risk_score"] == 90 and a["inputs"]["dst_ip"] == "10.20.0.5"
    assert {(h["kind"], h["table"]) for h in a["lookups"]} >= {("asset", "assets"), ("ti", "misp")}
    assert a["result"] == {"score": 100, "severity": "critical", "owner": "Database Team",
                           "owner_rule": "owners[1]: crown jewel", "escalation": "page", "escalation_sinks": ["pager"]}
    assert a["applied"] == {"annotation": True, "xsoar_fields": True, "routing": True}
    assert a["parts"][0]["name"] == "risk" and a["raw_score"] > 100
    assert len(a["config_version"]) == 12 and set(a["tables"]) == {"assets", "vulns", "misp", "blocklist"}
    assert all(len(v) == 12 for v in a["tables"].values())


def test_audit_rotation_and_flush_interval(tmp_path):
    p = tmp_path / "a" / "audit.jsonl"
    w = AuditWriter(p, max_bytes=4096, keep=2, flush_interval=0.2)
    for i in range(200):
        w.write({"i": i, "pad": "x" * 60})
    assert w.flush(5)
    for i in range(200, 210):
        w.write({"i": i})
    t0 = time.monotonic()
    wait_until(lambda: p.exists() and '"i":209' in p.read_text(), 2, what="the periodic flush", interval=0.02)
    assert time.monotonic() - t0 < 1.0
    w.close()
    files = sorted(x.name for x in p.parent.iterdir() if not x.name.endswith(".lock"))
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    assert all(x.stat().st_size <= 4096 for x in p.parent.iterdir())
    seen = [json.loads(line)["i"] for name in ("audit.jsonl.2", "audit.jsonl.1", "audit.jsonl")
            for line in (p.parent / name).read_text().splitlines()]
    assert seen == sorted(seen) and seen[-1] == 209          # oldest rotated away, order kept


def test_audit_write_does_not_block(tmp_path):
    w = AuditWriter(tmp_path / "x.jsonl", max_pending=10)
    w._append = lambda data: time.sleep(5)   # a stuck disk
    for i in range(5):
        w.write({"i": i})
    w._wake.set()
    time.sleep(0.05)
    t0 = time.perf_counter()
    dropped = REGISTRY.counter("relay_audit_dropped_total")
    before = dropped.value
    for i in range(100):
        w.write({"i": i})
    assert time.perf_counter() - t0 < 0.5 and dropped.value - before >= 85   # the disk is stuck for 5 s
    w._closed = True


def test_dry_run_writes_and_sends_nothing(tmp_path, cmdb, monkeypatch):
    monkeypatch.setenv("RELAY_TEST_CMDB_TOKEN", "t")
    cfg = _http_cfg(tmp_path, cmdb)
    with dry_run():
        enrich = build_enricher(cfg)
    e = ev(dst_ip="10.5.5.5")
    enrich(e)
    assert "not looked up (HTTP lookups are not queried here)" in e.enrich["missing"][0]
    assert e.fields["triage"]["score"] == 50
    time.sleep(0.2)
    assert cmdb.hits == 0 and not (tmp_path / "audit").exists() and not runtime.http
    nosecrets = config(tmp_path, f'[lookups.c]\nkind = "asset"\nurl = "{cmdb.url}"\ntoken_env = "UNSET_X_Y"\n'
                                 '[triage]\n', secrets=False)
    assert nosecrets.enrich.live is False


# ============================================================================ summary

SUMMARY = """
[lookups.assets]
kind = "asset"
file = "lookups/assets.csv"
[triage]
mode = "assist"
[audit]
path = "audit/triage.jsonl"
[summary]
enabled = true
url = "{url}"
model = "relay-test-model"
api_key_env = "RELAY_TEST_LLM_KEY"
timeout = {timeout}
max_calls_per_minute = {calls}
min_severity = "high"
"""
XSOAR_SINK = """
[sinks.xsoar]
type = "xsoar_webhook"
url = "http://127.0.0.1:9/"
[sinks.out]
type = "file"
path = "out.jsonl"
format = "json"
[routes.x]
match = 'risk_score >= 70'
sinks = ["xsoar"]
[routes.rest]
match = 'format exists'
sinks = ["out"]
"""


@pytest.fixture
def llm():
    e = LlmEmulator(api_key="llm-S3CRET-key")
    e.start()
    yield e
    e.close()


def _summary_cfg(tmp_path, llm, monkeypatch, timeout=2.0, calls=10):
    monkeypatch.setenv("RELAY_TEST_LLM_KEY", "llm-S3CRET-key")
    copy_examples(tmp_path)
    return config(tmp_path, SUMMARY.format(url=llm.url, timeout=timeout, calls=calls), sinks=XSOAR_SINK)


def test_summary_cached_for_later_messages_and_audited(tmp_path, llm, monkeypatch):
    enrich = build_enricher(_summary_cfg(tmp_path, llm, monkeypatch))
    first = ev(risk_score=90, dst_ip="10.20.0.5", name="Ransomware on db-core-01")
    enrich(first)
    assert "summary" not in first.fields["triage"]            # never waits for the answer
    s = next(iter(runtime.summary.values()))
    assert s.wait_idle(5)
    later = ev(risk_score=90, dst_ip="10.20.0.5", event="updated", name="Ransomware on db-core-01")
    enrich(later)
    assert later.fields["triage"]["summary"] == "Summary: Ransomware on db-core-01"
    assert len(llm.requests) == 1 and llm.headers[0]["Authorization"] == "Bearer llm-S3CRET-key"
    prompt = llm.requests[0]["messages"][1]["content"]
    assert "db-core-01" in prompt and "crown jewel" in prompt
    low = ev(risk_score=10, dedup_key="rhythmx:LOW")          # below min_severity / not bound for XSOAR
    enrich(low)
    assert s.wait_idle(5) and len(llm.requests) == 1
    shutdown()
    lines = [json.loads(x) for x in (tmp_path / "audit" / "triage.jsonl").read_text().splitlines()]
    sums = [a for a in lines if a["type"] == "summary"]
    assert len(sums) == 1 and sums[0]["result"] == "ok" and sums[0]["answer"].startswith("Summary:")
    assert sums[0]["prompt"][1]["content"] == prompt and sums[0]["model"] == "relay-test-model"
    assert [a["summary"] for a in lines if a["type"] == "triage"] == ["queued", "added (cached)", None]
    assert "llm-S3CRET-key" not in (tmp_path / "audit" / "triage.jsonl").read_text()


def test_summary_failure_timeout_and_budget(tmp_path, llm, monkeypatch):
    llm.fail(500, count=1)
    enrich = build_enricher(_summary_cfg(tmp_path, llm, monkeypatch, timeout=0.3, calls=2))
    s = next(iter(runtime.summary.values()))
    a = ev(risk_score=90, dedup_key="k:A")
    enrich(a)
    assert s.wait_idle(5)
    enrich(ev(risk_score=90, dedup_key="k:A"))               # failed recently: not asked again
    llm.hang(5, count=1)
    t0 = time.perf_counter()
    enrich(ev(risk_score=90, dedup_key="k:B"))
    assert time.perf_counter() - t0 < 0.1          # the LLM hangs for 5 s: never waited for
    assert s.wait_idle(5)
    enrich(ev(risk_score=90, dedup_key="k:C"))               # 2 calls per minute used
    assert s.wait_idle(5)
    again = ev(risk_score=90, dedup_key="k:A")
    enrich(again)
    assert "summary" not in again.fields["triage"]
    shutdown()
    sums = [json.loads(x) for x in (tmp_path / "audit" / "triage.jsonl").read_text().splitlines()
            if '"type":"summary"' in x]
    assert [(x["dedup_key"], x["result"]) for x in sums] == [("k:A", "failed"), ("k:B", "failed"), ("k:C", "skipped")]
    assert "HTTP 500" in sums[0]["error"] and "timeout after 0.3 s" in sums[1]["error"]
    assert "budget" in sums[2]["error"] and len(llm.requests) == 2


# ============================================================================ one-shot incidents
ONE_SHOT_SINK = """
[sinks.xsoar]
type = "xsoar"
url = "{xurl}"
api_key_env = "RELAY_TEST_XSOAR_KEY"
[routes.x]
match = 'risk_score >= 70'
sinks = ["xsoar"]
"""


def _one_shot(tmp_path, llm, xs, monkeypatch, *, wait: float, timeout: float, key: str):
    """Stage one incident (seen once) in a live pipeline, queue its XSOAR row, run the REST sink
    until the incident exists; -> (the incident, seconds the delivery took, the sink)."""
    from relay.sinks import make_sink
    from tests.harness import make_queue, run_async, run_sinks
    monkeypatch.setenv("RELAY_TEST_XSOAR_KEY", "xk")
    monkeypatch.setenv("RELAY_TEST_LLM_KEY", "llm-S3CRET-key")
    copy_examples(tmp_path)
    body = SUMMARY.format(url=llm.url, timeout=timeout, calls=10) + f"wait = {wait}\n"
    cfg = config(tmp_path, f'[relay]\nstate_dir = "{tmp_path}/state"\n' + body,
                 sinks=ONE_SHOT_SINK.format(xurl=xs.url))
    pipe = Pipeline(cfg)
    routes, out = pipe.stage(ev(risk_score=90, dst_ip="10.20.0.5", dedup_key=key, name=f"One-shot {key}"))
    assert [s for s, *_ in out] == ["xsoar"] and out[0][2]["summary"] == {"key": key, "wait": wait}
    q = make_queue(tmp_path / "state" / "queue-xsoar.db")
    q.put_many([(out[0][1], out[0][2])])
    sink = make_sink(cfg.sinks["xsoar"], q)
    sink.unanswered_at_start = next(iter(runtime.summary.values())).cached(key) is None
    t0 = time.monotonic()
    assert run_async(run_sinks([sink], lambda: q.depth() == 0, 20), 30)
    took = time.monotonic() - t0
    q.close()
    incs = xs.by_field("relaydedupkey")[key]
    assert len(incs) == 1
    return incs[0], took, sink


def test_one_shot_incident_gets_its_summary(tmp_path, llm, make_xsoar, monkeypatch):
    """An incident seen once: the sink waits (bounded by [summary] wait) for the answer the
    stage asked for and creates the incident with it."""
    xs = make_xsoar(api_key="xk", auth_id=None)
    llm.hang(0.4, count=1)              # the answer takes a while: the create waits for it
    inc, took, sink = _one_shot(tmp_path, llm, xs, monkeypatch, wait=5.0, timeout=3.0, key="rhythmx:ONE")
    assert inc["CustomFields"]["relaytriagesummary"] == "Summary: One-shot rhythmx:ONE"
    assert sink.unanswered_at_start and len(llm.requests) == 1    # the create had to wait for it
    shutdown()


@pytest.mark.parametrize("fault", ["timeout", "failure"])
def test_one_shot_summary_late_or_failed_never_holds_the_incident(tmp_path, llm, make_xsoar, monkeypatch, fault):
    xs = make_xsoar(api_key="xk", auth_id=None)
    if fault == "timeout":
        llm.hang(3, count=1)            # the LLM is later than the wait: created without it, after ~wait
        inc, took, _ = _one_shot(tmp_path, llm, xs, monkeypatch, wait=0.3, timeout=2.0, key="rhythmx:LATE")
        assert 0.25 <= took < 1.9       # the wait, not the LLM's 2 s timeout
    else:
        llm.fail(500, count=1)          # the LLM refuses: created at once, without it
        inc, took, _ = _one_shot(tmp_path, llm, xs, monkeypatch, wait=5.0, timeout=3.0, key="rhythmx:FAIL")
        assert took < 3.0
    assert "relaytriagesummary" not in inc["CustomFields"]
    assert inc["CustomFields"]["relaytriagescore"]       # triaged all the same
    shutdown()

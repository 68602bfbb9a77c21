"""The web console (relay/console): a ``relay run`` subprocess with ``[relay] console = true``,
driven in Debian's chromium, headless, through Selenium and the system chromedriver (no
browser download, no network: everything is served by the relay on 127.0.0.1).

* Paste a SigmaIncident: the LEEF line and the XSOAR incident request appear, with the routes
  and why they matched.
* An unparseable message: the caret is under the byte the parser names.
* Save as golden case: the file is written and ``relay test-parse --config --cases`` passes it.
* The live tap pane shows events flowing; the queue pane shows the sinks' queues.
* A screenshot is kept as a test artifact ($RELAY_ARTIFACTS, else .cache/artifacts).
* Without the token every path answers 401 (browser and plain HTTP); POSTs need the
  X-Relay-Console header; a non-loopback address is refused by the config; off by default.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from parsers import detect
from relay.checks import ConfigError
from relay.config import loads
from tests.harness import LOOPBACK, free_port, relay_command, sigma_line, wait_until

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)
try:
    import selenium  # noqa: F401
    HAVE_SELENIUM = True
except ImportError:
    HAVE_SELENIUM = False
ARTIFACTS = Path(os.environ.get("RELAY_ARTIFACTS") or Path(__file__).resolve().parent.parent / ".cache" / "artifacts")
TOKEN = "console-test-token-5f2a"
XSOAR_KEY = "console-xsoar-key"
SIGMA = (Path(__file__).resolve().parent.parent / "examples" / "samples" / "sigma_incidents.log").read_text().splitlines()[0]


def _config(mport: int, tcp: int, qradar_port: int, xsoar_url: str, cases: Path, http_port: int) -> str:
    return f"""
[relay]
state_dir = "state"
metrics_address = "{LOOPBACK}:{mport}"
drain_timeout = 2
console = true
console_token_file = "console.token"
console_cases_dir = "{cases}"

[sources.tcp_in]
type = "tcp"
address = "{LOOPBACK}:{tcp}"

[sources.alerts]
type = "http"
address = "{LOOPBACK}:{http_port}"
format = "json"
auth = "none"
map = "generic"

[routes.high_risk]
match = 'app_name == "SigmaIncident" and risk_score >= 70'
sinks = ["qradar", "xsoar"]

[routes.everything]
match = 'true'
sinks = ["qradar"]

[sinks.qradar]
type = "syslog"
address = "{LOOPBACK}:{qradar_port}"
format = "leef"

[sinks.xsoar]
type = "xsoar"
url = "{xsoar_url}"
api_key_file = "xsoar.key"
"""


@pytest.fixture
def console_relay(tmp_path, make_relay, make_xsoar):
    (tmp_path / "console.token").write_text(TOKEN + "\n")
    (tmp_path / "xsoar.key").write_text(XSOAR_KEY)
    xs = make_xsoar(api_key=XSOAR_KEY, auth_id=None)
    mport, tcp = free_port(), free_port()
    cases = tmp_path / "cases"
    relay = make_relay(_config(mport, tcp, free_port(), xs.url, cases, free_port()), mport, tmp_path,
                       tcp_port=tcp).start()
    relay.cases = cases
    relay.base = f"http://{LOOPBACK}:{mport}"
    return relay


def _http(url, *, token=None, cookie=None, data=None, headers=None):
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if cookie:
        req.add_header("Cookie", cookie)
    for k, v in (headers or {}).items():
        req.add_header(k, v)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **kw):
            return None
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=20) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def test_console_refuses_requests_without_the_token(console_relay):
    base = console_relay.base
    for path in ("/console/", "/console/static/console.js", "/console/api/info", "/console/api/queues",
                 "/console/api/tap?source=tcp_in", "/console"):
        status, _, body = _http(base + path)
        assert status == 401, (path, status)
        assert b"LEEF" not in body and b"tcp_in" not in body
    assert _http(base + "/console/", token="wrong")[0] == 401
    assert _http(base + "/console/?token=wrong")[0] == 401
    assert _http(base + "/console/api/analyse", data=b'{"input": "x"}', headers={"X-Relay-Console": "1"})[0] == 401
    # the token: as a bearer, or once in the URL, which sets an HttpOnly SameSite=Strict cookie
    status, _, body = _http(base + "/console/", token=TOKEN)
    assert status == 200 and b"relay console" in body
    status, headers, _ = _http(base + f"/console/?token={TOKEN}")
    assert status == 303 and headers["Location"] == "/console/"
    cookie = headers["Set-Cookie"].split(";")[0]
    assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
    assert _http(base + "/console/api/info", cookie=cookie)[0] == 200
    # the cookie is not the token, and the token itself is no cookie
    assert TOKEN not in headers["Set-Cookie"]
    assert _http(base + "/console/api/info", cookie=f"relay_console={TOKEN}")[0] == 401
    assert _http(base + "/console/api/info", cookie=cookie[:-1] + ("0" if cookie[-1] != "0" else "1"))[0] == 401
    # a POST without the console header (what a cross-site form sends) is refused
    assert _http(base + "/console/api/analyse", cookie=cookie, data=b'{"input": "x"}')[0] == 403
    status, _, body = _http(base + "/console/api/analyse", cookie=cookie, data=json.dumps({"input": SIGMA}).encode(),
                            headers={"X-Relay-Console": "1", "Content-Type": "application/json"})
    assert status == 200 and "LEEF:2.0|" in json.loads(body)["records"][0]["sinks"]["qradar"]
    # the test event left no trace in the relay's metrics
    m = console_relay.metrics()
    assert m.value("relay_routed_total") == 0 and m.value("relay_parsed_total") == 0


def test_console_json_alert_and_its_golden_case(console_relay, tmp_path):
    """A JSON alert for the http source: decoded and mapped as that source does, staged, and
    saved as a case that --cases passes (through the API, with the bearer token)."""
    alert = {"id": "ALERT-42", "title": "Suspicious login", "severity": "high", "risk_score": 77,
             "src_ip": "203.0.113.7", "user": "jdoe"}
    hdr = {"X-Relay-Console": "1", "Content-Type": "application/json"}
    status, _, body = _http(console_relay.base + "/console/api/analyse", token=TOKEN, headers=hdr,
                            data=json.dumps({"input": json.dumps(alert), "source": "alerts"}).encode())
    assert status == 200, body
    out = json.loads(body)
    rec = out["records"][0]
    assert out["bodies"] is True and rec["ok"] and rec["syslog"] is None and rec["body"] == alert
    assert rec["event"]["dedup_key"] == "http:ALERT-42" and rec["routes"] == ["everything"]
    assert list(rec["sinks"]) == ["qradar"] and "externalId=ALERT-42" in rec["sinks"]["qradar"]
    assert rec["route_checks"]["high_risk"]["rule"] is False
    # a body that does not decode: the error and its offset, with the caret
    status, _, body = _http(console_relay.base + "/console/api/analyse", token=TOKEN, headers=hdr,
                            data=json.dumps({"input": '{"id": "x", "title": oops}', "source": "alerts"}).encode())
    rec = json.loads(body)["records"][0]
    assert status == 200 and not rec["ok"] and rec["caret"]["caret"].endswith("^")
    assert '{"id": "x", "title": oops}'[len(rec["caret"]["caret"]) - 1] == "o"
    # saved as a golden case: --cases passes it
    status, _, body = _http(console_relay.base + "/console/api/case", token=TOKEN, headers=hdr,
                            data=json.dumps({"input": json.dumps(alert), "source": "alerts", "name": "http/alert42"}).encode())
    saved = json.loads(body)
    assert status == 200 and saved["status"] == "pass", saved
    assert 'source = "alerts"' in (console_relay.cases / "http" / "alert42.toml").read_text()
    r = subprocess.run(relay_command() + ["test-parse", "--config", str(tmp_path / "relay.toml"), "--cases",
                                          str(console_relay.cases)], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert r.returncode == 0 and "1 passed" in (r.stdout + r.stderr), r.stdout + r.stderr
    # bad names and existing cases are refused
    for name, want in (("../escape", 400), ("http/alert42", 409), ("a/./b", 400)):
        status, _, _ = _http(console_relay.base + "/console/api/case", token=TOKEN, headers=hdr,
                             data=json.dumps({"input": "x", "name": name}).encode())
        assert status == want, name


def test_console_is_off_by_default_and_loopback_only(tmp_path):
    base = '[sources.t]\ntype = "tcp"\naddress = "127.0.0.1:5514"\n'
    cfg = loads(base, secrets=False)
    assert cfg.relay.console is False
    with pytest.raises(ConfigError, match="loopback"):
        loads('[relay]\nmetrics_address = "192.0.2.1:9514"\nconsole = true\nconsole_token_env = "T"\n' + base,
              secrets=False)
    with pytest.raises(ConfigError, match="console_token_env"):
        loads('[relay]\nconsole = true\n' + base, secrets=False)


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER and HAVE_SELENIUM),
                    reason="needs chromium, chromium-driver (scripts/test-deps) and selenium (the test extra)")
def test_console_in_a_real_browser(console_relay, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1300",
              "--no-first-run", "--disable-extensions", "--disable-background-networking", "--disable-sync",
              "--metrics-recording-only", "--disable-default-apps", "--no-proxy-server",
              f"--user-data-dir={tmp_path / 'chromium'}"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    stop = threading.Event()
    try:
        driver.set_page_load_timeout(60)
        base = console_relay.base
        # without the token: refused
        driver.get(base + "/console/")
        assert "unauthorized" in driver.find_element(By.TAG_NAME, "body").text
        driver.get(base + f"/console/?token={TOKEN}")          # sets the cookie, lands on /console/
        wait_until(lambda: driver.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1", 30,
                   what="the console page loaded its info")
        assert driver.current_url == base + "/console/"

        def run(text, source=""):
            box = driver.find_element(By.ID, "input")
            box.clear()
            driver.execute_script("arguments[0].value = arguments[1];", box, text)
            Select(driver.find_element(By.ID, "source")).select_by_value(source)
            before = driver.find_element(By.ID, "output").get_attribute("data-done")
            driver.find_element(By.ID, "run").click()
            wait_until(lambda: driver.find_element(By.ID, "output").get_attribute("data-done") != before, 30,
                       what="the stages were shown")

        # 1. a SigmaIncident: the LEEF line and the XSOAR incident, the routes and why
        run(SIGMA, "tcp_in")
        out = driver.find_element(By.CSS_SELECTOR, 'pre.sink-output[data-sink="qradar"]').text
        assert "LEEF:2.0|Relay|SOC Relay|" in out and "INC-7601d999" in out
        xsoar = json.loads(driver.find_element(By.CSS_SELECTOR, 'pre.sink-output[data-sink="xsoar"]').text)
        assert "INC-7601d999" in json.dumps(xsoar)
        route = driver.find_element(By.CSS_SELECTOR, 'div.route[data-route="high_risk"]')
        assert "route-yes" in route.get_attribute("class") and "risk_score >= 70  ->  true" in route.text
        assert "SigmaIncident" in driver.find_element(By.ID, "output").text       # syslog fields
        driver.set_window_size(1400, 2300)          # the whole page: every stage, both sinks
        driver.save_screenshot(str(_artifact("relay-console.png")))
        driver.set_window_size(1400, 1300)

        # 2. an unparseable message: the caret under the byte the parser names
        bad = "<13>1 2026-03-13T04:30:00Z host app - - [sd@1 a=unquoted] msg"
        offset = detect.parse(bad.encode()).error.offset
        assert bad[offset:].startswith("unquoted")        # the parser names the value's first byte
        run(bad)
        err = driver.find_element(By.CSS_SELECTOR, ".parse-error")
        assert err.get_attribute("data-offset") == str(offset) and f"at byte {offset}" in err.text
        line = driver.find_element(By.CSS_SELECTOR, ".caret-input").get_attribute("textContent")
        caret = driver.find_element(By.CSS_SELECTOR, ".caret").get_attribute("textContent")
        assert caret.strip() == "^" and line == bad and len(caret) - 1 == offset and line[offset] == "u"
        driver.save_screenshot(str(_artifact("relay-console-parse-error.png")))

        # 3. save a golden case; --cases passes it
        run(SIGMA, "tcp_in")
        driver.find_element(By.ID, "case-name").send_keys("sigma/console_saved")
        driver.find_element(By.ID, "save").click()
        wait_until(lambda: driver.find_element(By.ID, "save-status").get_attribute("data-status"), 30,
                   what="the case was saved")
        assert "(--cases: pass)" in driver.find_element(By.ID, "save-status").text
        saved = console_relay.cases / "sigma" / "console_saved.toml"
        assert saved.is_file() and "LEEF:2.0" in saved.read_text()
        r = subprocess.run(relay_command() + ["test-parse", "--config", str(tmp_path / "relay.toml"), "--cases",
                                              str(console_relay.cases)], capture_output=True, text=True, timeout=120,
                           cwd=tmp_path)
        assert r.returncode == 0 and "1 passed" in (r.stdout + r.stderr), r.stdout + r.stderr
        # saving again under the same name needs "overwrite"
        driver.find_element(By.ID, "save").click()
        wait_until(lambda: "exists" in driver.find_element(By.ID, "save-status").text, 30, what="refused to overwrite")

        # 4. the live tap pane and the queue pane, with traffic
        def traffic():
            i = 0
            while not stop.is_set():
                console_relay.send([sigma_line(f"INC-LIVE-{i}")])
                i += 1
                stop.wait(0.2)
        threading.Thread(target=traffic, daemon=True).start()
        Select(driver.find_element(By.ID, "tap-point")).select_by_value("route")
        Select(driver.find_element(By.ID, "tap-name")).select_by_value("high_risk")
        Select(driver.find_element(By.ID, "tap-view")).select_by_value("canonical")
        driver.find_element(By.ID, "tap-start").click()
        wait_until(lambda: "INC-LIVE-" in driver.find_element(By.ID, "tap-out").text, 30, what="the tap pane shows events")
        # (read in one script: the pane replaces its rows every 2 s, an element found before may be gone)
        depth_js = "const e = document.querySelector('tr[data-sink=\"qradar\"] td.depth'); return e ? e.textContent : '0';"
        wait_until(lambda: int(driver.execute_script(depth_js) or 0) > 0,
                   30, what="the queue pane shows the qradar queue (its peer is down)")
        stop.set()                                   # traffic stops: the pane settles on /metrics' figure
        wait_until(lambda: int(driver.execute_script(depth_js) or 0) == console_relay.metric("relay_queue_depth",
                                                                                             sink="qradar") > 0,
                   30, what="the queue pane shows /metrics' qradar queue depth")
        driver.save_screenshot(str(_artifact("relay-console-live.png")))
        driver.find_element(By.ID, "tap-stop").click()
        wait_until(lambda: console_relay.metric("relay_tap_sessions") == 0, 30, what="the tap session detached")
    finally:
        stop.set()
        driver.quit()


def _artifact(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name

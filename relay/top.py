"""``relay top``: a live terminal view of a running relay, read from its ``/metrics``.

Every second: scrape, compute rates from the previous scrape, draw with rich's ``Live``
(alternate screen), read the keyboard (``q`` quits).  Fits 80x24: three tables (sources,
routes, sinks) with the figures an operator asks first, coloured when in trouble:

* sources: in/s, received, parse errors, drops (total, and the top reasons), blocked (pull);
* routes: matches/s and total, and the unrouted events;
* sinks: out/s, sent, queue depth, oldest queued event, retries, dead letters, state
  (``ok``, ``idle`` before the first delivery, ``DOWN`` after a failed delivery, ``AUTH`` when
  stopped on a 401/403, ``FULL`` when a full queue dropped events).

The CLI imports this module only for ``relay top``; the daemon never does.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

__all__ = ["parse_metrics", "Snapshot", "build", "run"]

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[str, dict[tuple, float]]:
    """Prometheus text -> ``{name: {((label, value), ...): value}}`` (lines it cannot read are
    skipped: a newer relay may export more)."""
    out: dict[str, dict[tuple, float]] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = _SAMPLE.match(line.strip())
        if not m:
            continue
        name, labels, value = m.groups()
        try:
            v = float(value)
        except ValueError:
            continue
        lab = tuple(sorted((k, x.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\"))
                           for k, x in _LABEL.findall(labels or "")))
        out.setdefault(name, {})[lab] = v
    return out


def _by(m: dict, name: str, key: str) -> dict[str, float]:
    """``{label value: sum}`` of metric ``name`` grouped by label ``key``."""
    out: dict[str, float] = {}
    for lab, v in m.get(name, {}).items():
        d = dict(lab)
        if key in d and v == v:   # NaN: not set
            out[d[key]] = out.get(d[key], 0.0) + v
    return out


def _by2(m: dict, name: str, key: str, key2: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for lab, v in m.get(name, {}).items():
        d = dict(lab)
        if key in d:
            r = out.setdefault(d[key], {})
            r[d.get(key2, "")] = r.get(d.get(key2, ""), 0.0) + v
    return out


@dataclass
class Snapshot:
    t: float
    m: dict
    sources: dict = field(default_factory=dict)
    routes: dict = field(default_factory=dict)
    sinks: dict = field(default_factory=dict)
    unrouted: float = 0.0


def snapshot(text: str, t: float | None = None) -> Snapshot:
    m = parse_metrics(text)
    s = Snapshot(time.monotonic() if t is None else t, m)
    received = _by(m, "relay_received_total", "source")
    failed = _by(m, "relay_parse_failed_total", "source")
    drops = _by2(m, "relay_dropped_total", "source", "reason")
    kernel = _by(m, "relay_udp_kernel_drops_total", "source")
    blocked = _by(m, "relay_source_blocked", "source")
    names = set(received) | set(failed) | set(drops) | set(kernel) | set(blocked) | \
        set(_by(m, "relay_connections", "source"))
    for n in names:
        reasons = dict(drops.get(n, {}))
        if kernel.get(n):
            reasons["kernel"] = kernel[n]
        s.sources[n] = {"received": received.get(n, 0.0), "parse_failed": failed.get(n, 0.0),
                        "drops": sum(reasons.values()), "reasons": reasons, "blocked": blocked.get(n, 0.0)}
    routed = _by(m, "relay_routed_total", "route")
    for n, v in routed.items():
        s.routes[n] = {"matched": v}
    s.unrouted = sum(m.get("relay_unrouted_total", {}).values())
    sent = _by(m, "relay_sent_total", "sink")
    depth = _by(m, "relay_queue_depth", "sink")
    oldest = {}
    for lab, v in m.get("relay_queue_oldest_age_seconds", {}).items():
        oldest[dict(lab).get("sink")] = v
    retried = _by(m, "relay_retried_total", "sink")
    dlq = _by(m, "relay_dlq_depth", "sink")
    up = _by(m, "relay_sink_up", "sink")
    sblocked = _by(m, "relay_sink_blocked", "sink")
    qdropped = _by(m, "relay_queue_dropped_total", "sink")
    errors = _by(m, "relay_send_errors_total", "sink")
    for n in set(sent) | set(depth) | set(up) | set(dlq):
        s.sinks[n] = {"sent": sent.get(n, 0.0), "depth": depth.get(n, 0.0), "oldest": oldest.get(n),
                      "retried": retried.get(n, 0.0), "dlq": dlq.get(n, 0.0), "up": up.get(n, 1.0),
                      "blocked": sblocked.get(n, 0.0), "queue_dropped": qdropped.get(n, 0.0),
                      "errors": errors.get(n, 0.0)}
    return s


def _rate(cur: float, prev: float | None, dt: float) -> float | None:
    if prev is None or dt <= 0:
        return None
    return max(0.0, (cur - prev) / dt)


def _num(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 10_000_000:
        return f"{v / 1e6:.0f}M"
    if v >= 100_000:
        return f"{v / 1e3:.0f}k"
    return f"{v:.0f}"


def _rate_s(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 100_000:
        return f"{v / 1e3:.0f}k"
    if v >= 10:
        return f"{v:.0f}"
    return f"{v:.1f}"


def _age(v: float | None) -> str:
    if v is None or v != v:
        return "-"
    if v < 120:
        return f"{v:.0f}s"
    if v < 7200:
        return f"{v / 60:.0f}m"
    return f"{v / 3600:.0f}h"


def build(cur: Snapshot, prev: Snapshot | None, *, url: str, error: str | None = None, width: int = 80):
    """The screen for one refresh: a rich renderable."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text
    dt = cur.t - prev.t if prev is not None else 0.0

    def prevv(section: str, name: str, key: str):
        if prev is None:
            return None
        r = getattr(prev, section).get(name)
        return None if r is None else r.get(key)

    head = Text()
    head.append("relay top", style="bold")
    head.append(f"  {url}  {time.strftime('%H:%M:%S')}  ")
    head.append("q", style="bold")
    head.append(" quits")
    if error:
        head.append(f"\n{error}", style="bold red")

    src = Table(box=None, expand=True, pad_edge=False, header_style="bold cyan", title_justify="left")
    for col, just in (("source", "left"), ("in/s", "right"), ("received", "right"), ("parse err", "right"),
                      ("drops", "right"), ("drop reasons", "left")):
        src.add_column(col, justify=just, no_wrap=True, overflow="ellipsis")
    for name in sorted(cur.sources):
        r = cur.sources[name]
        reasons = " ".join(f"{k}:{_num(v)}" for k, v in sorted(r["reasons"].items(), key=lambda kv: -kv[1]) if v)
        name_t = Text(name + (" AUTH" if r["blocked"] else ""), style="bold red" if r["blocked"] else "")
        pe_rate = _rate(r["parse_failed"], prevv("sources", name, "parse_failed"), dt)
        dr_rate = _rate(r["drops"], prevv("sources", name, "drops"), dt)
        src.add_row(name_t, _rate_s(_rate(r["received"], prevv("sources", name, "received"), dt)),
                    _num(r["received"]),
                    Text(_num(r["parse_failed"]), style="yellow" if pe_rate else ""),
                    Text(_num(r["drops"]), style="bold red" if dr_rate else ("yellow" if r["drops"] else "")),
                    Text(reasons or "-", style="red" if dr_rate else ""))

    rt = Table(box=None, expand=True, pad_edge=False, header_style="bold cyan")
    for col, just in (("route", "left"), ("match/s", "right"), ("matched", "right")):
        rt.add_column(col, justify=just, no_wrap=True, overflow="ellipsis")
    for name in sorted(cur.routes):
        r = cur.routes[name]
        rt.add_row(name, _rate_s(_rate(r["matched"], prevv("routes", name, "matched"), dt)), _num(r["matched"]))
    prev_unrouted = prev.unrouted if prev is not None else None
    rt.add_row(Text("(unrouted)", style="dim"), _rate_s(_rate(cur.unrouted, prev_unrouted, dt)), _num(cur.unrouted))

    sk = Table(box=None, expand=True, pad_edge=False, header_style="bold cyan")
    for col, just in (("sink", "left"), ("out/s", "right"), ("sent", "right"), ("queue", "right"),
                      ("oldest", "right"), ("retries", "right"), ("dead", "right"), ("state", "left")):
        sk.add_column(col, justify=just, no_wrap=True, overflow="ellipsis")
    for name in sorted(cur.sinks):
        r = cur.sinks[name]
        oldest = r["oldest"] if r["depth"] else None
        age_style = "bold red" if oldest and oldest >= 600 else ("yellow" if oldest and oldest >= 60 else "")
        retry_rate = _rate(r["retried"], prevv("sinks", name, "retried"), dt)
        dlq_prev = prevv("sinks", name, "dlq")
        dlq_style = "bold red" if dlq_prev is not None and r["dlq"] > dlq_prev else ("yellow" if r["dlq"] else "")
        if r["blocked"]:
            state = Text("AUTH", style="bold white on red")
        elif not r["up"] and r["errors"]:
            state = Text("DOWN", style="bold red")
        elif not r["up"]:
            state = Text("idle", style="dim")     # no delivery yet, no failure either
        elif r["queue_dropped"]:
            state = Text("FULL", style="bold red")
        else:
            state = Text("ok", style="green")
        sk.add_row(name, _rate_s(_rate(r["sent"], prevv("sinks", name, "sent"), dt)), _num(r["sent"]),
                   Text(_num(r["depth"]), style="yellow" if r["depth"] >= 1000 else ""),
                   Text(_age(oldest), style=age_style),
                   Text(_num(r["retried"]), style="yellow" if retry_rate else ""),
                   Text(_num(r["dlq"]), style=dlq_style), state)
    return Group(head, Text(""), src, Text(""), rt, Text(""), sk)


def fetch(client, url: str) -> str:
    r = client.get(f"{url}/metrics")
    if r.status_code != 200:
        raise RuntimeError(f"/metrics answered {r.status_code}: {r.text.strip()[:100]}")
    return r.text


def run(url: str, headers: dict, *, interval: float = 1.0, once: bool = False) -> int:
    """The live view until ``q`` (or Ctrl-C).  ``once``: print one screen (two scrapes, for
    the rates) and return."""
    import os
    import select
    import sys

    import httpx
    from rich.console import Console
    from rich.live import Live

    console = Console()
    client = httpx.Client(timeout=httpx.Timeout(5.0), trust_env=False, headers=headers)
    prev = cur = None
    err = None

    def scrape():
        nonlocal prev, cur, err
        try:
            text = fetch(client, url)
        except (httpx.HTTPError, RuntimeError) as e:
            err = f"cannot read {url}/metrics: {e}"
            return
        err = None
        prev, cur = cur, snapshot(text)

    try:
        if once:
            scrape()
            time.sleep(interval)
            scrape()
            if cur is None:
                console.print(err)
                return 1
            console.print(build(cur, prev, url=url, error=err))
            return 0
        fd = sys.stdin.fileno() if sys.stdin.isatty() else None
        old = None
        if fd is not None:
            import termios
            import tty
            old = termios.tcgetattr(fd)
            tty.setcbreak(fd)
        try:
            scrape()
            with Live(console=console, screen=True, auto_refresh=False, transient=True) as live:
                while True:
                    from rich.text import Text
                    live.update(build(cur, prev, url=url, error=err) if cur is not None
                                else Text(err or "waiting for /metrics ..."), refresh=True)
                    deadline = time.monotonic() + interval
                    while True:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        if fd is None:
                            time.sleep(left)
                            break
                        ready, _, _ = select.select([fd], [], [], left)
                        if ready:
                            ch = os.read(fd, 1)
                            if ch in (b"q", b"Q", b"\x03", b""):
                                return 0
                    scrape()
        finally:
            if old is not None:
                import termios
                termios.tcsetattr(fd, termios.TCSADRAIN, old)
    except KeyboardInterrupt:
        return 0
    finally:
        client.close()

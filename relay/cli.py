"""The `relay` command line."""
from __future__ import annotations

import sys

import click
import orjson

from .__version__ import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="relay", message="%(prog)s %(version)s")
def main() -> None:
    """relay: a SOC syslog relay and normaliser.

    Listens for syslog (RFC 5424/3164 over UDP, TCP, TLS), normalises vendor events,
    routes them by rules and delivers LEEF/CEF to QRadar and incidents to Cortex XSOAR.
    """


@main.command("version")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def version_cmd(as_json):
    """The relay's version, its Python, and which hot path parses: the native accelerator or
    pure Python (and why; RELAY_PURE=1 forces pure Python)."""
    import platform

    from parsers import native

    from .sources import udp
    info = {"version": __version__, "python": platform.python_version(), "executable": sys.executable,
            "hot_path": "native" if native.ACTIVE else "python", "hot_path_detail": native.WHY,
            "udp_receive": "recvmmsg" if udp._recvmmsg is not None else "recvfrom"}
    if as_json:
        click.echo(orjson.dumps(info).decode())
        return
    click.echo(f"relay {info['version']}")
    click.echo(f"python {info['python']} ({info['executable']})")
    click.echo(f"hot path: {info['hot_path']}: {info['hot_path_detail']}")
    click.echo(f"udp receive: {info['udp_receive']}")


@main.command("test-parse")
@click.argument("messages", nargs=-1)
@click.option("-f", "--file", "file", type=click.File("rb"), default=None,
              help="Read messages from FILE ('-' for stdin): one per line, or a raw TCP stream with --framed.")
@click.option("--framed", is_flag=True, help="Input is an RFC 6587 TCP stream (octet counting or LF, per frame).")
@click.option("--lenient", is_flag=True, help="Accept the documented real-world RFC 5424 deviations (see docs/parsing.md).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per message (schema in the README).")
@click.option("--max-frame", type=click.IntRange(64, 16 * 1024 * 1024), default=65536, show_default=True,
              help="Largest frame accepted with --framed (longer frames are truncated and reported).")
@click.option("--render", "render", default="", metavar="FORMATS",
              help="Comma-separated outputs to show: leef, leef1, cef, json, rfc5424, or a sink type that renders its own "
                   "payload (xsoar, xsoar_webhook, ...).")
@click.option("-c", "--config", "config", type=click.Path(dir_okay=False), default=None,
              help="Apply this relay config: show which routes match (and why) and the exact bytes each matched "
                   "sink would receive.  No network, no queues.")
@click.option("--source", "source", default=None, metavar="NAME",
              help="With --config: parse as this configured source does (its lenient setting).")
@click.option("--cases", "cases_dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="With --config: run the golden-file cases in DIR (docs/cases.md) and the config's [[tests]]; "
                   "print a diff for each failure and 'N passed, N failed'.")
@click.option("--update", is_flag=True, help="With --cases: write the actual results into the failing cases' "
                                             "expected files (after showing the diff).")
@click.option("--junit", "junit", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="With --cases: also write the results as JUnit XML to FILE.")
@click.option("--watch", "watch", is_flag=True, help="With --cases: re-run the affected cases whenever the config, "
                                                     "a case or a file the config reads changes; Ctrl-C ends.")
def test_parse(messages, file, framed, lenient, as_json, max_frame, render, config, source, cases_dir, update,
               junit, watch):
    """Parse raw syslog MESSAGES (or a file, or stdin) and show every step.

    With --config FILE --cases DIR: run golden-file rule tests instead (docs/cases.md).

    Exit status: 0 when every message parsed (every case passed), 1 when any did not,
    2 on usage errors.
    """
    if cases_dir is not None:
        if config is None:
            raise click.UsageError("--cases needs --config")
        if messages or file is not None or framed or render or as_json or source is not None:
            raise click.UsageError("--cases takes its inputs from the case files: no messages, --file, --framed, "
                                   "--render, --json or --source")
        from .tools.cases import cli_cases
        sys.exit(cli_cases(config, cases_dir, update=update, junit=junit, watch_mode=watch))
    if update or junit or watch:
        raise click.UsageError("--update, --junit and --watch need --cases DIR")
    from .tools.testparse import analyse, default_renderers, iter_inputs, render_choices, render_human

    wanted = [r.strip() for r in render.split(",") if r.strip()]
    choices = render_choices()
    bad = [r for r in wanted if r not in choices]
    if bad:
        raise click.BadParameter(f"unknown output {bad[0]!r} (choose from {', '.join(choices)})",
                                 param_hint="--render")
    renderers = default_renderers(wanted)
    view = None
    if config is not None:
        from .config import ConfigError
        from .tools.cases import load_config
        from .tools.testparse import ConfigView
        try:
            cfg = load_config(config, secrets=False)
        except ConfigError as e:
            raise click.UsageError(str(e))
        if source is not None:
            if source not in cfg.sources:
                raise click.BadParameter(f"no source {source!r} in {config} (sources: {', '.join(cfg.sources)})",
                                         param_hint="--source")
            lenient = lenient or cfg.sources[source].lenient
        view = ConfigView(cfg)
    elif source is not None:
        raise click.UsageError("--source needs --config")

    if messages and file is not None:
        raise click.UsageError("give messages as arguments or --file, not both")
    if file is None and not messages and sys.stdin.isatty():
        raise click.UsageError("no input: give messages as arguments, --file FILE, or pipe them on stdin")
    out = sys.stdout
    total = failed = 0
    problems: list = []
    from .tools.testparse import analyse_body, body_decoder
    decoder = body_decoder(view.config if view is not None else None, source)
    if decoder is not None:   # a source that takes request bodies (http): each argument, or the file, is one body
        if framed:
            raise click.UsageError(f"--framed: source {source!r} takes request bodies, not a TCP stream")
        bodies = [(f"arg {i}", m.encode("utf-8", "surrogateescape")) for i, m in enumerate(messages, 1)] \
            if messages else [("body", (file if file is not None else sys.stdin.buffer).read())]
        for label, body in bodies:
            recs = analyse_body(body, decoder, view=view, renderers=renderers)
            for i, rec in enumerate(recs, 1):
                total += 1
                if not rec["ok"]:
                    failed += 1
                if as_json:
                    out.write(orjson.dumps(rec, default=str).decode() + "\n")
                else:
                    render_human(label if len(recs) == 1 else f"{label}, event {i}",
                                 rec["input"].encode("utf-8", "surrogateescape"), rec, out)
        if not as_json:
            click.echo(f"{total} event(s): {total - failed} mapped, {failed} failed", err=True)
        sys.exit(1 if failed else 0)
    for label, raw in iter_inputs(messages, file, framed, max_frame, problems):
        total += 1
        rec = analyse(raw, lenient=lenient, renderers=renderers, view=view, source=source)
        if not rec["ok"]:
            failed += 1
        if as_json:
            out.write(orjson.dumps(rec, default=str).decode() + "\n")
        else:
            render_human(label, raw, rec, out)
    for prob in problems:
        failed += 1
        click.echo(f"relay test-parse: framing problem at stream byte {prob.offset}: {prob.kind}: {prob.detail}",
                   err=True)
    if total == 0 and not problems:
        raise click.UsageError("no messages in the input")
    if not as_json:
        click.echo(f"{total} message(s): {total - failed if failed <= total else 0} parsed, {failed} failed", err=True)
    sys.exit(1 if failed else 0)


# --------------------------------------------------------------------------- run / validate

@main.command("run")
@click.option("-c", "--config", "config", type=click.Path(dir_okay=False), default="/etc/relay/relay.toml",
              show_default=True, help="The configuration file.")
def run_cmd(config):
    """Run the relay daemon (SIGTERM drains and stops, SIGHUP reloads the config)."""
    from .server import run
    sys.exit(run(config, startup_check=_startup_tests))


def _startup_tests(cfg) -> list:
    """``[relay] run_tests_at_start``: the config's [[tests]] must pass before it is used (at
    start and on reload).  The golden-test tools load only when a config asks for them."""
    if not cfg.relay.run_tests_at_start:
        return []
    from .tools.cases import startup_tests
    return startup_tests(cfg)


@main.command("validate")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--run-tests", "run_tests", is_flag=True,
              help="Also run the config's [[tests]] (docs/cases.md); exit 1 when any fails.")
@click.option("--junit", "junit", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="With --run-tests: also write the results as JUnit XML to FILE.")
def validate_cmd(config, run_tests, junit):
    """Check CONFIG: syntax, types, references, rules.  Exit 0 when valid, 2 when not
    (with --run-tests: 1 when a test fails)."""
    from .config import ConfigError
    from .tools.cases import load_config
    try:
        cfg = load_config(config)
    except ConfigError as e:
        click.echo(f"invalid: {e}", err=True)
        sys.exit(2)
    for w in cfg.warnings:
        click.echo(f"warning: {w}", err=True)
    click.echo(f"{config}: valid: {len(cfg.sources)} source(s), {len(cfg.routes)} route(s), {len(cfg.sinks)} sink(s)")
    if run_tests:
        from .tools.cases import cli_config_tests
        sys.exit(cli_config_tests(cfg, junit=junit))
    elif junit:
        raise click.UsageError("--junit needs --run-tests")


# --------------------------------------------------------------------------- queue

def _queues(config: str, sink: str | None):
    from .config import ConfigError, load
    from .queue import open_queue
    try:
        cfg = load(config)
    except ConfigError as e:
        raise click.ClickException(str(e))
    names = [sink] if sink else list(cfg.sinks)
    if sink and sink not in cfg.sinks:
        raise click.ClickException(f"no sink named {sink!r} in {config} (sinks: {', '.join(cfg.sinks) or 'none'})")
    for n in names:
        yield n, open_queue(cfg.relay.state_dir, cfg.sinks[n])


_config_opt = click.option("-c", "--config", "config", type=click.Path(dir_okay=False, exists=True),
                           default="/etc/relay/relay.toml", show_default=True, help="The configuration file.")


@main.group("queue")
def queue_cmd():
    """Inspect and manage the per-sink disk queues and dead-letter tables."""


@queue_cmd.command("status")
@_config_opt
@click.option("--json", "as_json", is_flag=True)
def queue_status(config, as_json):
    """Depth, oldest age and dead letters of every sink's queue."""
    import time
    rows = []
    for name, q in _queues(config, None):
        with q:
            age = q.oldest_age(time.time())
            rows.append({"sink": name, "depth": q.depth(), "oldest_age_seconds": age, "dead_letters": q.dlq_depth(),
                         "bytes": q.size_bytes(), "path": str(q.path) if hasattr(q, "path") else None})
    if as_json:
        click.echo(orjson.dumps(rows).decode())
        return
    click.echo(f"{'sink':<20} {'queued':>10} {'oldest':>10} {'dead':>8}")
    for r in rows:
        age = "-" if r["oldest_age_seconds"] is None else f"{r['oldest_age_seconds']:.0f}s"
        click.echo(f"{r['sink']:<20} {r['depth']:>10} {age:>10} {r['dead_letters']:>8}")


@queue_cmd.command("list")
@_config_opt
@click.argument("sink")
@click.option("--dead", is_flag=True, help="List the dead-letter table instead of the queue.")
@click.option("--limit", type=click.IntRange(1, 100000), default=20, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
@click.option("--json", "as_json", is_flag=True)
def queue_list(config, sink, dead, limit, offset, as_json):
    """Show queued (or dead-lettered) events of SINK."""
    for name, q in _queues(config, sink):
        with q:
            items = q.list(limit=limit, offset=offset, dlq=dead)
        for it in items:
            d = {k: getattr(it, k) for k in ("id", "attempts", "enqueued_at", "last_error", "reason", "failed_at",
                                             "next_attempt_at") if hasattr(it, k)}
            d["meta"] = it.meta if not callable(getattr(it, "meta", None)) else it.meta()
            d["payload"] = it.payload.decode("utf-8", "replace")
            if as_json:
                click.echo(orjson.dumps(d, default=str).decode())
            else:
                why = d.get("reason") or d.get("last_error")
                click.echo(f"#{d['id']} attempts={d.get('attempts')} {('reason=' + repr(why)) if why else ''}")
                click.echo(f"    {d['payload'][:300]}")


@queue_cmd.command("replay")
@_config_opt
@click.argument("sink")
@click.option("--id", "ids", type=int, multiple=True, help="Replay only these dead-letter ids.")
def queue_replay(config, sink, ids):
    """Move dead-lettered events of SINK back into its queue (attempts reset)."""
    for name, q in _queues(config, sink):
        with q:
            total = q.dlq_depth() if not ids else len(ids)
            with click.progressbar(length=max(total, 1), label=f"replaying {name}", file=sys.stderr) as bar:
                last = [0]

                def progress(done, tot):
                    bar.update(done - last[0])
                    last[0] = done
                n = q.replay_dlq(ids=list(ids) or None, progress=progress)
        click.echo(f"{name}: {n} event(s) moved back to the queue")


@queue_cmd.command("purge")
@_config_opt
@click.argument("sink")
@click.option("--dead", is_flag=True, help="Purge the dead-letter table instead of the queue.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def queue_purge(config, sink, dead, yes):
    """Delete every queued (or dead-lettered) event of SINK."""
    what = "dead-letter table" if dead else "queue"
    if not yes:
        click.confirm(f"Delete every event in the {what} of sink {sink!r}?", abort=True)
    for name, q in _queues(config, sink):
        with q:
            n = q.purge(dlq=dead)
        click.echo(f"{name}: {n} event(s) deleted from the {what}")




# --------------------------------------------------------------------------- live: tap, top

def _endpoint(config: str | None, url: str | None, token_env: str | None, token_file: str | None):
    """-> (base URL of the relay's HTTP server, request headers).  ``--url`` wins; else the
    config's ``[relay] metrics_address``; else http://127.0.0.1:9514.  The token: ``--token-env``
    or ``--token-file``, else the config's first metrics token."""
    import os
    token = None
    if token_env:
        token = os.environ.get(token_env)
        if not token:
            raise click.UsageError(f"--token-env {token_env}: the variable is not set")
    elif token_file:
        try:
            token = open(token_file, encoding="utf-8").read().strip()
        except OSError as e:
            raise click.UsageError(f"--token-file {token_file}: {e.strerror}")
    base = url.rstrip("/") if url else None
    if base is None and config is not None:
        from .config import ConfigError, load
        try:
            cfg = load(config)
        except ConfigError as e:
            raise click.ClickException(f"{e} (or give --url and --token-file)")
        if cfg.relay.metrics_address is None:
            raise click.ClickException(f"{config}: metrics_address is off: the relay serves no HTTP endpoint")
        host, port = cfg.relay.metrics_address
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        base = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        if token is None and cfg.relay.metrics_tokens:
            token = cfg.relay.metrics_tokens[0].reveal()
    if base is None:
        base = "http://127.0.0.1:9514"
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return base, headers


_endpoint_opts = [
    click.option("-c", "--config", "config", type=click.Path(dir_okay=False, exists=True), default=None,
                 help="Find the relay's HTTP address (and token) in this config  [default: /etc/relay/relay.toml "
                      "when readable, else http://127.0.0.1:9514]."),
    click.option("--url", default=None, metavar="URL", help="The relay's HTTP server (metrics_address), e.g. "
                                                            "http://127.0.0.1:9514."),
    click.option("--token-env", default=None, metavar="VAR", help="Bearer token from this environment variable."),
    click.option("--token-file", default=None, metavar="FILE", help="Bearer token from this file."),
]


def _with_endpoint(f):
    for opt in reversed(_endpoint_opts):
        f = opt(f)
    return f


def _default_config(config, url):
    import os
    if config is None and url is None and os.access("/etc/relay/relay.toml", os.R_OK):
        return "/etc/relay/relay.toml"
    return config


def _tap_line(rec: dict, view: str) -> str:
    import datetime
    t = datetime.datetime.fromtimestamp(rec["time"], datetime.timezone.utc).strftime("%H:%M:%S.%f")[:-3]
    head = f"{t} {rec.get('source') or '-'}"
    if rec.get("routes"):
        head += f" [{','.join(rec['routes'])}]"
    if view == "raw":
        return f"{head} {rec['raw']}"
    if view == "parsed":
        if not rec.get("ok", True):
            err = rec["error"]
            return f"{head} PARSE ERROR at byte {err['offset']}: {err['reason']}"
        return f"{head} {orjson.dumps(rec.get('syslog')).decode()}"
    if view == "canonical":
        extra = {k: rec[k] for k in ("enrich", "triage") if k in rec}
        return f"{head} {orjson.dumps(rec.get('event')).decode()}" + (f" {orjson.dumps(extra).decode()}" if extra else "")
    lines = [head]
    for sink, payload in (rec.get("sinks") or {}).items():
        body = payload if isinstance(payload, str) else orjson.dumps(payload).decode()
        lines.append(f"  -> {sink}: {body}")
    return "\n".join(lines)


@main.command("tap")
@_with_endpoint
@click.option("--source", default=None, metavar="NAME", help="Tap events from this source.")
@click.option("--route", default=None, metavar="NAME", help="Tap events this route matched.")
@click.option("--sink", default=None, metavar="NAME", help="Tap what this sink queues.")
@click.option("--view", type=click.Choice(["raw", "parsed", "canonical", "rendered"]), default=None,
              help="What to show  [default: parsed; rendered at a sink].")
@click.option("-f", "--filter", "filter_", default=None, metavar="RULE",
              help="Only events this rule matches (the routes' language, docs/rules.md).")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True, max=10000), default=10.0, show_default=True,
              help="At most this many events per second (the rest is skipped, and counted).")
@click.option("-n", "--count", type=click.IntRange(min=1), default=None, help="Stop after this many events.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None, help="Stop after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="The endpoint's NDJSON lines as they come (hello, event, status).")
def tap_cmd(config, url, token_env, token_file, source, route, sink, view, filter_, rate, count, duration, as_json):
    """Stream a live sample of what flows through the relay now, at a source, a route or a sink.

    Tapping never slows or blocks the pipeline: events are skipped for the tap (never for the
    pipeline) when over --rate or when this terminal reads too slowly, and tap says how many.
    The endpoint (GET /tap on metrics_address) answers on loopback, or with the metrics token.
    Exit status: 0 when the tap ended (--count, --duration, Ctrl-C), 1 when refused.
    """
    import httpx
    points = [(p, v) for p, v in (("source", source), ("route", route), ("sink", sink)) if v]
    if len(points) != 1:
        raise click.UsageError("name exactly one of --source, --route, --sink")
    base, headers = _endpoint(_default_config(config, url), url, token_env, token_file)
    params = {points[0][0]: points[0][1], "rate": repr(rate)}
    if view:
        params["view"] = view
    if filter_:
        params["filter"] = filter_
    if count:
        params["count"] = str(count)
    if duration:
        params["duration"] = repr(duration)
    last = None
    shown_view = view
    try:
        with httpx.Client(timeout=httpx.Timeout(10.0, read=None), trust_env=False) as client:
            with client.stream("GET", f"{base}/tap", params=params, headers=headers) as resp:
                if resp.status_code != 200:
                    resp.read()
                    click.echo(f"tap refused ({resp.status_code}): {resp.text.strip()}", err=True)
                    sys.exit(1)
                for line in resp.iter_lines():
                    if not line:
                        continue
                    rec = orjson.loads(line)
                    kind = rec.get("type")
                    if as_json:
                        click.echo(line)
                    if kind == "hello":
                        shown_view = rec["view"]
                        if not as_json:
                            what = f"{rec['point']} {rec['name']} ({rec['view']}, at most {rec['rate']:g}/s"
                            what += f", filter {rec['filter']})" if rec.get("filter") else ")"
                            click.echo(f"tap: {what}", err=True)
                            if rec.get("note"):
                                click.echo(f"tap: note: {rec['note']}", err=True)
                    elif kind == "status":
                        last = rec
                    elif kind == "event" and not as_json:
                        click.echo(_tap_line(rec, shown_view))
    except KeyboardInterrupt:
        pass
    except httpx.HTTPError as e:
        click.echo(f"tap: cannot reach the relay at {base}: {e}", err=True)
        sys.exit(1)
    if last is not None and not as_json:
        sk = last["skipped"]
        click.echo(f"tap: {last['sent']} shown, {last['skipped_total']} skipped (rate limit {sk['rate']}, "
                   f"slow reader {sk['full']})", err=True)


@main.command("top")
@_with_endpoint
@click.option("--interval", type=click.FloatRange(min=0.2), default=1.0, show_default=True,
              help="Seconds between refreshes.")
@click.option("--once", is_flag=True, help="Print one screen (two scrapes, for the rates) and exit.")
def top_cmd(config, url, token_env, token_file, interval, once):
    """A live view of a running relay, from its /metrics: per source rate in, parse errors and
    drops by reason; per route matches; per sink rate out, queue depth, oldest queued event,
    retries, dead letters, and DOWN or AUTH (blocked on a 401/403).  q quits."""
    try:
        from .top import run
    except ImportError as e:   # rich is a dependency; a broken install says so
        raise click.ClickException(f"relay top needs rich: {e}")
    base, headers = _endpoint(_default_config(config, url), url, token_env, token_file)
    sys.exit(run(base, headers, interval=interval, once=once))


if __name__ == "__main__":  # pragma: no cover
    main()

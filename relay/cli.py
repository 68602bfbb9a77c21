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


if __name__ == "__main__":  # pragma: no cover
    main()

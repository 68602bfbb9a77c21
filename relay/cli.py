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
def test_parse(messages, file, framed, lenient, as_json, max_frame):
    """Parse raw syslog MESSAGES (or a file, or stdin) and show every step.

    Exit status: 0 when every message parsed, 1 when any did not, 2 on usage errors.
    """
    from .testparse import analyse, iter_inputs, render_human

    if messages and file is not None:
        raise click.UsageError("give messages as arguments or --file, not both")
    if file is None and not messages and sys.stdin.isatty():
        raise click.UsageError("no input: give messages as arguments, --file FILE, or pipe them on stdin")
    out = sys.stdout
    total = failed = 0
    problems: list = []
    for label, raw in iter_inputs(messages, file, framed, max_frame, problems):
        total += 1
        rec = analyse(raw, lenient=lenient)
        if not rec["ok"]:
            failed += 1
        if as_json:
            out.write(orjson.dumps(rec).decode() + "\n")
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


if __name__ == "__main__":  # pragma: no cover
    main()

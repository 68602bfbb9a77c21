"""Smoke client (stdlib only; runs with the target's python3.11 inside the test root).

    python3.11 send.py TAG [ARCHIVE]

Waits for relay's /ready on 127.0.0.1:9514, sends one RFC 5424 message over UDP and one over
TCP to 127.0.0.1:514 (tags TAG-udp, TAG-tcp), then waits until both are in the JSON archive
file sink.  Prints what it saw; exit 0 only when both arrived."""
import socket
import sys
import time
import urllib.request

tag = sys.argv[1]
archive = sys.argv[2] if len(sys.argv) > 2 else "/var/lib/relay/out/archive.jsonl"


def wait_ready(deadline):
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen("http://127.0.0.1:9514/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit("send.py: relay /ready did not answer 200")


def msg(proto):
    return (f"<134>1 2026-01-01T00:00:00Z smokehost smoke 1 ID1 - {tag}-{proto} hello over {proto}").encode()


deadline = time.monotonic() + 30
wait_ready(deadline)
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.sendto(msg("udp"), ("127.0.0.1", 514))
with socket.create_connection(("127.0.0.1", 514), timeout=5) as s:
    s.sendall(msg("tcp") + b"\n")
want = {f"{tag}-udp", f"{tag}-tcp"}
while time.monotonic() < deadline:
    try:
        text = open(archive, encoding="utf-8").read()
    except FileNotFoundError:
        text = ""
    seen = {w for w in want if w in text}
    if seen == want:
        print(f"send.py: both messages archived in {archive}")
        sys.exit(0)
    time.sleep(0.2)
sys.exit(f"send.py: not archived in time: {sorted(want - seen)}")

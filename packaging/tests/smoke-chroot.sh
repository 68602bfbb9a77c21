#!/bin/sh
# Runs INSIDE the test root (packaging/tests/testroot run), as root, no network but lo.
# Starts the installed relay as user relay with only CAP_NET_BIND_SERVICE (setpriv: the same
# credentials the unit gives it), sends one UDP and one TCP message to :514 and checks that the
# file sink archived both, then SIGTERM and a clean exit.
set -eu
TAG=${1:-smoke}
setpriv --reuid=relay --regid=relay --init-groups \
  --inh-caps=-all,+net_bind_service --ambient-caps=-all,+net_bind_service \
  --bounding-set=-all,+net_bind_service --no-new-privs \
  /usr/bin/relay run -c /etc/relay/relay.toml >/tmp/relay-smoke.log 2>&1 &
pid=$!
if python3.11 -I /tmp/send.py "$TAG"; then ok=1; else ok=0; fi
grep -E '^(Uid|CapEff|CapAmb|CapBnd|NoNewPrivs):' /proc/$pid/status || true
kill -TERM $pid
rc=0; wait $pid || rc=$?
echo "relay exit status: $rc"
ls -l /var/lib/relay /var/lib/relay/out
if [ "$ok" != 1 ] || [ "$rc" != 0 ]; then
  echo "--- relay log"; cat /tmp/relay-smoke.log
  exit 1
fi
echo "SMOKE OK"

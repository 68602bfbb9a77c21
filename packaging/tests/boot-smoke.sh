#!/bin/sh
# Runs inside the test root booted with systemd-nspawn --boot --private-network, as the
# relay-smoke.service oneshot: the packaged relay.service must be up (Type=notify: "active"
# only after READY=1), run as relay with only CAP_NET_BIND_SERVICE under the whole sandbox
# (MemoryDenyWriteExecute, seccomp, ProtectSystem=strict...), receive UDP and TCP on :514,
# write the file sink, and reload (ExecReload: validate, then SIGHUP) without a restart.
set -u
fail=0
state=$(systemctl show -p ActiveState --value relay.service)
echo "ActiveState=$state"
[ "$state" = active ] || fail=1
pid=$(systemctl show -p MainPID --value relay.service)
echo "MainPID=$pid"
grep -E '^(Uid|CapEff|CapAmb|CapBnd|NoNewPrivs|Seccomp):' /proc/$pid/status
python3.11 -I /root/send.py boot || fail=1
ls -l /var/lib/relay /var/lib/relay/out
systemctl reload relay.service && echo "reload: ok" || { echo "reload: FAILED"; fail=1; }
sleep 1
pid2=$(systemctl show -p MainPID --value relay.service)
[ "$pid2" = "$pid" ] && echo "same MainPID after reload" || { echo "MainPID changed: $pid -> $pid2"; fail=1; }
systemctl show relay.service -p ActiveState -p SubState -p StatusText -p NRestarts -p Result
echo "--- journal"
journalctl -u relay.service --no-pager -o cat | tail -n 25
if [ "$fail" = 0 ]; then echo "BOOT SMOKE OK"; else echo "BOOT SMOKE FAILED"; fi

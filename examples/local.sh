#!/usr/bin/env bash
# One machine's worth of the cluster core: a fastkv member on the default ports and one fleetd
# on top of it, with the built-in unit runtime. Both run until Ctrl-C (or SIGTERM), which stops
# them and the units fleetd started.
#
#   examples/local.sh &                    # state in ./fleet-local (FLEET_LOCAL_STATE to change)
#   fleetctl start examples/hello.service
#   fleetctl list-units; fleetctl journal hello.service
set -euo pipefail

state=${FLEET_LOCAL_STATE:-./fleet-local}
mkdir -p "$state"

fastkv --data-dir "$state/fastkv" >"$state/fastkv.log" 2>&1 &
fastkv_pid=$!
stop() {
    kill -TERM "${fleetd_pid:-}" 2>/dev/null && wait "${fleetd_pid:-}" 2>/dev/null || true
    kill -TERM "$fastkv_pid" 2>/dev/null && wait "$fastkv_pid" 2>/dev/null || true
}
trap stop EXIT INT TERM

for _ in $(seq 100); do
    curl -fs http://127.0.0.1:2379/health >/dev/null 2>&1 && break
    kill -0 "$fastkv_pid" 2>/dev/null || { cat "$state/fastkv.log" >&2; exit 1; }
    sleep 0.1
done
echo "fastkv serving on http://127.0.0.1:2379 (log: $state/fastkv.log)"

fleetd -etcd_servers http://127.0.0.1:2379 -runtime supervisor \
       -units_directory "$state/units" -agent_ttl 10s >"$state/fleetd.log" 2>&1 &
fleetd_pid=$!
for _ in $(seq 100); do
    fleetctl list-machines --no-legend 2>/dev/null | grep -q . && break
    kill -0 "$fleetd_pid" 2>/dev/null || { cat "$state/fleetd.log" >&2; exit 1; }
    sleep 0.1
done
echo "fleetd ready (log: $state/fleetd.log); try: fleetctl start examples/hello.service"
wait "$fleetd_pid"

#!/bin/sh
# A small TCP load balancer: keeps the backends listed under $KEY in etcd (values "host:port") in
# /tmp/backends, following changes with a recursive watch (waitIndex), and relays each connection
# on $PORT to the next backend in turn (relay.sh). Settings: ETCD (http://host:port), KEY, PORT.
set -u
: "${ETCD:=http://172.17.0.1:2379}" "${KEY:=/services/web}" "${PORT:=8080}"
export BACKENDS=/tmp/backends COUNTER=/tmp/counter
: >"$BACKENDS"

# The backends now; prints the X-Etcd-Index the listing was taken at.
refresh() {
    wget -S -q -O /tmp/listing "$ETCD/v2/keys$KEY?recursive=true" 2>/tmp/headers || : >/tmp/listing
    grep -o '"value":"[^"]*"' /tmp/listing | cut -d'"' -f4 >"$BACKENDS.new"
    mv "$BACKENDS.new" "$BACKENDS"
    sed -n 's/^ *X-Etcd-Index: *\([0-9]*\).*/\1/p' /tmp/headers | tail -n 1
}

watch_backends() {
    while true; do
        index=$(refresh)
        echo "backends at index ${index:-?}: $(tr '\n' ' ' <"$BACKENDS")"
        if [ -z "$index" ]; then sleep 1; continue; fi
        # wakes on the next change below $KEY (set, delete, TTL expiry); then read the whole list again
        wget -q -O /dev/null "$ETCD/v2/keys$KEY?wait=true&recursive=true&waitIndex=$((index + 1))" || sleep 1
    done
}

watch_backends &
trap 'kill $! 2>/dev/null; exit 0' TERM INT
echo "balancing port $PORT over $ETCD/v2/keys$KEY"
nc -ll -p "$PORT" -e /bin/relay.sh &
wait

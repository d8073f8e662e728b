#!/bin/sh
# A small TCP load balancer: keeps the backends listed under $KEY in etcd (values "host:port") in
# /tmp/backends, following changes with a recursive watch (waitIndex), and relays each connection
# on $PORT to the next backend in turn (relay.sh). Settings: ETCD (the cluster's client URLs, comma
# separated: http://host:port,http://host2:port), KEY, PORT.
set -u
: "${ETCD:=http://172.17.0.1:2379}" "${KEY:=/services/web}" "${PORT:=8080}"
export BACKENDS=/tmp/backends COUNTER=/tmp/counter
: >"$BACKENDS"

# The backends now, from the first member of $ETCD that answers (a 404 answers too: no backend
# yet); prints that member and the X-Etcd-Index the listing was taken at, nothing when none answers.
refresh() {
    for endpoint in $(echo "$ETCD" | tr ',' ' '); do
        wget -S -q -O /tmp/listing "$endpoint/v2/keys$KEY?recursive=true" 2>/tmp/headers || : >/tmp/listing
        index=$(sed -n 's/^ *X-Etcd-Index: *\([0-9]*\).*/\1/p' /tmp/headers | tail -n 1)
        [ -n "$index" ] || continue
        grep -o '"value":"[^"]*"' /tmp/listing | cut -d'"' -f4 >"$BACKENDS.new"
        mv "$BACKENDS.new" "$BACKENDS"
        echo "$endpoint $index"
        return
    done
}

watch_backends() {
    while true; do
        # shellcheck disable=SC2046
        set -- $(refresh)
        if [ $# -ne 2 ]; then echo "no member of $ETCD answers"; sleep 1; continue; fi
        echo "backends at index $2 of $1: $(tr '\n' ' ' <"$BACKENDS")"
        # wakes on the next change below $KEY (set, delete, TTL expiry) -- or when that member goes away;
        # then read the whole list again, from whichever member answers
        wget -q -O /dev/null "$1/v2/keys$KEY?wait=true&recursive=true&waitIndex=$(($2 + 1))" || sleep 1
    done
}

watch_backends &
trap 'kill $! 2>/dev/null; exit 0' TERM INT
echo "balancing port $PORT over $ETCD/v2/keys$KEY"
nc -ll -p "$PORT" -e /bin/relay.sh &
wait

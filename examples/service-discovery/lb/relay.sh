#!/bin/sh
# One client connection (stdin/stdout): relayed to the next live backend, round robin. A backend that
# does not accept within a second is skipped; with none left the client gets a 503.
count=$(wc -l <"$BACKENDS")
if [ "$count" -gt 0 ]; then
    turn=$(($(cat "$COUNTER" 2>/dev/null || echo 0) + 1))
    echo "$turn" >"$COUNTER"
    tries=0
    while [ "$tries" -lt "$count" ]; do
        backend=$(sed -n "$(((turn + tries) % count + 1))p" "$BACKENDS")
        if nc -w 1 "${backend%:*}" "${backend##*:}" </dev/null >/dev/null 2>&1; then
            exec nc -w 5 "${backend%:*}" "${backend##*:}"
        fi
        tries=$((tries + 1))
    done
fi
printf 'HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nno backends\n'

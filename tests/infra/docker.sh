#!/bin/sh
# A Docker engine and the local images the tests and examples use. Idempotent; fast when done.
#
#   tests/infra/docker.sh          install docker.io and busybox-static if missing, start dockerd if
#                                  it is not answering, build busybox:local if it is missing and the
#                                  example images (fleet-lb:local), which docker's cache makes cheap
#
# There is no registry: images are built from a root filesystem with `docker import`.
# dockerd runs without systemd; its log is /var/log/dockerd.log.
set -eu

DATA_ROOT=${DOCKER_DATA_ROOT:-/var/lib/docker}
SOCKET=/var/run/docker.sock
LOG=/var/log/dockerd.log
WAIT_SECONDS=${DOCKER_WAIT_SECONDS:-60}

apt_install() {
    missing=""
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing="$missing $pkg"
    done
    [ -z "$missing" ] && return 0
    echo "docker.sh: installing$missing"
    apt-get update -q >/dev/null
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing >/dev/null
}

engine_up() {
    docker info >/dev/null 2>&1
}

start_engine() {
    engine_up && return 0
    if ! pgrep -x dockerd >/dev/null 2>&1; then
        echo "docker.sh: starting dockerd (log $LOG)"
        rm -f /var/run/docker.pid
        nohup dockerd --data-root "$DATA_ROOT" -H "unix://$SOCKET" >>"$LOG" 2>&1 &
    fi
    waited=0
    until engine_up; do
        if [ "$waited" -ge "$((WAIT_SECONDS * 5))" ]; then
            echo "docker.sh: dockerd did not answer within ${WAIT_SECONDS}s; last log lines:" >&2
            tail -n 20 "$LOG" >&2 || true
            exit 1
        fi
        sleep 0.2
        waited=$((waited + 1))
    done
}

build_busybox() {
    docker image inspect busybox:local >/dev/null 2>&1 && return 0
    echo "docker.sh: building busybox:local from busybox-static"
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    mkdir -p "$root/bin" "$root/tmp" "$root/www" "$root/etc"
    cp /bin/busybox "$root/bin/busybox"
    for applet in $("$root/bin/busybox" --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
    done
    echo "root:x:0:0:root:/:/bin/sh" >"$root/etc/passwd"
    echo "root:x:0:" >"$root/etc/group"
    tar -C "$root" -c . | docker import -c 'ENV PATH=/bin' - busybox:local >/dev/null
    rm -rf "$root"
    trap - EXIT
}

build_examples() {
    here=$(cd "$(dirname "$0")/../.." && pwd)
    if ! out=$(docker build -q -t fleet-lb:local "$here/examples/service-discovery/lb" 2>&1); then
        echo "$out" >&2
        exit 1
    fi
}

apt_install docker.io busybox-static
start_engine
build_busybox
build_examples
docker run --rm busybox:local true
echo "docker.sh: engine up, images: busybox:local fleet-lb:local"

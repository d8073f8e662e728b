#!/bin/sh
# The image of a machine booted with systemd, for the tests of fleetd's systemd runtime.
#
#   tests/infra/systemd_image.sh            build systemd-host:local unless it exists in this version
#                                           (about 3 minutes)
#   tests/infra/systemd_image.sh --rebuild  build it again
#
# A Debian bookworm root filesystem made by debootstrap (minbase + systemd, dbus, python3 and the
# Docker SDK python3-docker) from the mirror apt already uses, plus fleetd's Python dependencies
# (jeepney, httptools) as wheels unpacked into /opt/fleet-deps. The Docker client and engine are not in
# the image: containers that run Docker units bind-mount this machine's `docker` binary and socket.
# The project itself is not in the image either: containers bind-mount it at /opt/fleet and run
# `PYTHONPATH=/opt/fleet:/opt/fleet-deps python3 -m fleetd.daemon`.
# /etc/machine-id is left empty, so every container boots with a machine ID of its own.
# Needs a running Docker engine (tests/infra/docker.sh).
set -eu

IMAGE=${SYSTEMD_IMAGE:-systemd-host:local}
SUITE=bookworm
SOURCES=/etc/apt/sources.list.d/debian.sources
PY_DEPS="jeepney>=0.8 httptools>=0.6"
# Bumped whenever the image's content changes: an image of another version is built again.
VERSION=2
LABEL=fleet.systemd-image.version

if [ "${1:-}" != "--rebuild" ] && \
   [ "$(docker image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$IMAGE" 2>/dev/null)" = "$VERSION" ]; then
    exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    echo "systemd_image.sh: installing debootstrap"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
fi

# The first URIs of the sources file (the main archive), else the classic sources.list.
MIRROR=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' "$SOURCES" 2>/dev/null | head -n 1)
if [ -z "$MIRROR" ]; then
    MIRROR=$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
fi
[ -n "$MIRROR" ] || { echo "systemd_image.sh: no Debian mirror found in $SOURCES" >&2; exit 1; }

WORK=$(mktemp -d /var/tmp/systemd-image.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/root

echo "systemd_image.sh: debootstrap $SUITE from $MIRROR"
debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,python3,python3-docker \
    "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
    tail -n 30 "$WORK/debootstrap.log" >&2
    exit 1
}

echo "systemd_image.sh: fleetd's Python dependencies into /opt/fleet-deps"
# shellcheck disable=SC2086
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-compile --target "$ROOT/opt/fleet-deps" \
    --only-binary=:all: --implementation cp --python-version 3.11 --platform manylinux2014_x86_64 \
    $PY_DEPS

: >"$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id"
mkdir -p "$ROOT/opt/fleet" "$ROOT/etc/fleet"
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*

echo "systemd_image.sh: importing $IMAGE"
tar -C "$ROOT" -c . | docker import --change "LABEL $LABEL=$VERSION" - "$IMAGE" >/dev/null
docker run --rm "$IMAGE" /usr/bin/python3 -c "import sys; sys.path.insert(0, '/opt/fleet-deps'); \
import jeepney, httptools, docker; print('systemd_image.sh: python', sys.version.split()[0], \
'jeepney', jeepney.__version__, 'docker', docker.__version__)"

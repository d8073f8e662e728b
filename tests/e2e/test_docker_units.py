"""Units that run Docker containers, under the built-in supervisor: fleetd labels, reports, stops and
garbage-collects their containers, shows their output, and keeps going when a container, its image
or the engine itself is broken. Real fleetd processes, the real Docker engine, fastkv."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetd.runtime.supervisor import session_members
from tests import harness
from tests.e2e.support import (
    Machine,
    bridge_url,
    containers,
    docker,
    etcd_urls,
    fastkv_on_bridge,
    has_state,
    journal_with,
    running_container,
    start_unit,
    stop_all,
    unit_containers,
    unit_state,
    wait,
)

#: A container that prints a line, then lives until it is asked to stop (PID 1 needs its own trap).
LONG_RUNNING = ("[Unit]\nDescription=A {what}\n\n[Service]\n"
                "ExecStart=/usr/bin/docker run --rm --pull=never --name {name} $FLEET_DOCKER_LABELS "
                "busybox:local sh -c 'trap \"exit 0\" TERM; echo hello from {name}; "
                "while true; do sleep 1; done'\n")


def listed_container(machine: Machine, name: str) -> str:
    """The CONTAINER column of ``name`` in ``fleetctl list-units`` (empty when not listed)."""
    listing = machine.fleetctl("list-units", "--no-legend", "--fields=unit,container").stdout
    for line in listing.splitlines():
        fields = line.split(None, 1)
        if len(fields) == 2 and fields[0] == name:
            return fields[1].strip()
    return ""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[harness.Server]]:
    members = fastkv_on_bridge(tmp_path_factory.mktemp("fastkv"))
    yield members
    for member in members:
        member.stop()


@pytest.fixture
def machine(cluster: list[harness.Server], tmp_path: Path) -> Iterator[Machine]:
    node = Machine(uuid.uuid4().hex, tmp_path / "m", etcd_urls(cluster)).start()
    wait("fleetd to serve its API", node.ready, logs=node.log)
    yield node
    stop_all([node])


def test_container_is_labelled_reported_and_removed_with_its_unit(machine: Machine) -> None:
    name = f"box-{machine.machine_id[:6]}"
    start_unit(machine, "box.service", LONG_RUNNING.format(what="box", name=name))
    first = wait("the container", lambda: running_container(machine, "box.service"), logs=machine.log)
    wait("list-units to show it running", lambda: unit_state(machine, "box.service") == "active running")
    status = machine.fleetctl("status", "box.service")
    assert status.returncode == 0, status.stderr
    assert f"Container: {first[:12]} {name} running (busybox:local)" in status.stdout
    wait("list-units to show the container", lambda: listed_container(machine, "box.service")
         == f"{first[:12]} running", logs=machine.log)
    journal = wait("the container's output in the journal",
                   functools.partial(journal_with, machine, "box.service", "hello from"))
    assert f"hello from {name}" in journal

    assert machine.fleetctl("stop", "box.service").returncode == 0
    wait("the container to go with the stop", lambda: not unit_containers(machine, "box.service"), timeout=20)
    wait("list-units to show no container", lambda: listed_container(machine, "box.service") == "-")
    assert machine.fleetctl("start", "box.service").returncode == 0
    second = wait("a new container", lambda: running_container(machine, "box.service"))
    assert second != first
    assert machine.fleetctl("destroy", "box.service").returncode == 0
    wait("the container to go with the unit", lambda: not unit_containers(machine, "box.service"), timeout=20)


def test_fleetd_crash_leaves_no_orphan_and_no_duplicate(machine: Machine) -> None:
    name = f"crash-{machine.machine_id[:6]}"
    start_unit(machine, "crash.service", LONG_RUNNING.format(what="survivor", name=name))
    first = wait("the container", lambda: running_container(machine, "crash.service"), logs=machine.log)

    machine.kill()  # a crash: the unit and its container keep running, the restarted fleetd adopts them
    machine.start()
    wait("fleetd back", machine.ready, logs=machine.log)
    wait("the unit adopted", lambda: unit_state(machine, "crash.service") == "active running")
    assert running_container(machine, "crash.service") == first

    machine.kill()  # a crash that also takes the unit's docker client: the container is an orphan now
    for pid in session_members(machine.unit_sessions()):
        os.kill(pid, signal.SIGKILL)
    assert running_container(machine, "crash.service") == first
    machine.start()
    second = wait("the orphan replaced by one new container", lambda: (
        (cid := running_container(machine, "crash.service")) != first and cid), timeout=30, logs=machine.log)
    assert [c["Id"] for c in unit_containers(machine, "crash.service")] == [second]


def test_draining_the_machine_removes_its_containers(machine: Machine) -> None:
    unit = LONG_RUNNING.format(what="drained box", name=f"drain-{machine.machine_id[:6]}")
    start_unit(machine, "drained.service", unit)
    wait("the container", lambda: running_container(machine, "drained.service"), logs=machine.log)
    assert machine.terminate() == 0  # SIGTERM: fleet's purge
    assert unit_containers(machine, "drained.service") == []


def set_greeting(member: harness.Server, value: str) -> None:
    put = subprocess.run(["curl", "-fsS", "-X", "PUT", f"{member.url}/v2/keys/e2e-bridge/greeting",
                          "-d", f"value={value}"], capture_output=True, text=True, timeout=10, check=False)
    assert put.returncode == 0, put.stderr


def test_containers_read_and_watch_keys_of_the_cluster(cluster: list[harness.Server]) -> None:
    """A container reads a key from one member on the bridge and watches it on another while a third
    member takes the write: every member serves containers, and a watch sees writes made anywhere."""
    reader, watched = (bridge_url(m) + "/v2/keys/e2e-bridge/greeting" for m in cluster[1:])
    set_greeting(cluster[0], "one")

    def read_one() -> str | None:
        done = docker("run", "--rm", "--pull=never", "busybox:local", "wget", "-q", "-O", "-", reader)
        return done.stdout if done.returncode == 0 and '"value":"one"' in done.stdout else None
    read = wait("a container to read the write from member 1", read_one)
    index = int(read.split('"modifiedIndex":')[1].split(",")[0])
    wget = ["busybox:local", "wget", "-q", "-O", "-", f"{watched}?wait=true&waitIndex={index + 1}"]
    watcher = subprocess.Popen(["docker", "run", "--rm", "--pull=never", "--label", "e2e=watcher", *wget],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait("the watcher's container to run", lambda: containers("e2e=watcher"))
        set_greeting(cluster[0], "two")
        out, err = watcher.communicate(timeout=30)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait(10)
    assert watcher.returncode == 0, err
    assert '"action":"set"' in out and '"value":"two"' in out


def test_broken_containers_fail_their_units_and_nothing_else(machine: Machine) -> None:
    tag = machine.machine_id[:6]
    start_unit(machine, "healthy.service", LONG_RUNNING.format(what="healthy box", name=f"healthy-{tag}"))
    start_unit(machine, "noimage.service", "[Service]\nExecStart=/usr/bin/docker run --rm --pull=never "
                                      "$FLEET_DOCKER_LABELS busybox:no-such-tag true\n")
    start_unit(machine, "crashing.service", "[Service]\nExecStart=/usr/bin/docker run --pull=never "
                                       f"--name crashing-{tag} $FLEET_DOCKER_LABELS busybox:local "
                                       "sh -c 'echo about to crash; exit 3'\n")
    start_unit(machine, "noengine.service", "[Service]\nEnvironment=DOCKER_HOST=unix:///nonexistent/docker.sock\n"
                                       "ExecStart=/usr/bin/docker run --rm $FLEET_DOCKER_LABELS "
                                       "busybox:local true\n")
    for name in ("noimage.service", "crashing.service", "noengine.service"):
        wait(f"{name} failed", functools.partial(has_state, machine, name, "failed failed"),
             logs=machine.log)
    wait("the healthy unit running", lambda: unit_state(machine, "healthy.service") == "active running")
    assert running_container(machine, "healthy.service")

    def status(name: str) -> str:
        """``fleetctl status`` (which ends with the last journal lines)."""
        done = machine.fleetctl("status", name)
        assert done.returncode == 0, done.stderr
        return done.stdout

    noimage = status("noimage.service")
    assert "Active: failed (Result: exit-code)" in noimage and "status=125" in noimage
    assert "No such image: busybox:no-such-tag" in noimage
    crashing = status("crashing.service")
    assert "Active: failed (Result: exit-code)" in crashing and "status=3" in crashing
    assert f"crashing-{tag} exited (3) (busybox:local)" in crashing  # kept for inspection while failed
    assert "about to crash" in machine.fleetctl("journal", "crashing.service").stdout
    noengine = status("noengine.service")
    assert "Cannot connect to the Docker daemon" in noengine
    # the agent keeps working: a stop of the failed unit removes its container, a new unit starts
    assert machine.fleetctl("stop", "crashing.service").returncode == 0
    wait("the crashed container removed", lambda: not unit_containers(machine, "crashing.service"))
    start_unit(machine, "after.service", LONG_RUNNING.format(what="later box", name=f"after-{tag}"))
    wait("a later unit running", lambda: running_container(machine, "after.service"), logs=machine.log)


def test_engine_down_is_reported_and_units_still_run(cluster: list[harness.Server], tmp_path: Path) -> None:
    node = Machine(uuid.uuid4().hex, tmp_path / "m", etcd_urls(cluster),
                   env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}).start()
    try:
        wait("fleetd to serve its API", node.ready, logs=node.log)
        start_unit(node, "plain.service", "[Service]\nExecStart=/bin/sleep 1000\n")
        wait("a plain unit running", lambda: unit_state(node, "plain.service") == "active running",
             logs=node.log)
        status = node.fleetctl("status", "plain.service")
        assert "Container: Docker engine unavailable" in status.stdout, status.stdout
    finally:
        stop_all([node])

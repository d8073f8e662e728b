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
    bridge_gateway,
    containers,
    docker,
    ensure_docker,
    fastkv_on,
    stop_all,
    wait,
)

#: A container that prints a line, then lives until it is asked to stop (PID 1 needs its own trap).
LONG_RUNNING = ("[Unit]\nDescription=A {what}\n\n[Service]\n"
                "ExecStart=/usr/bin/docker run --rm --pull=never --name {name} $FLEET_DOCKER_LABELS "
                "busybox:local sh -c 'trap \"exit 0\" TERM; echo hello from {name}; "
                "while true; do sleep 1; done'\n")


@pytest.fixture(scope="module")
def fastkv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.Server]:
    ensure_docker()
    server = fastkv_on(tmp_path_factory.mktemp("fastkv"), bridge_gateway()).start()
    yield server
    server.stop()


@pytest.fixture
def machine(fastkv: harness.Server, tmp_path: Path) -> Iterator[Machine]:
    node = Machine(uuid.uuid4().hex, tmp_path / "m", fastkv.url).start()
    wait("fleetd to serve its API", node.ready, logs=node.log)
    yield node
    stop_all([node])


def unit_containers(machine: Machine, unit: str) -> list[dict[str, object]]:
    return containers(f"fleet.machine={machine.machine_id}", f"fleet.unit={unit}")


def running_container(machine: Machine, unit: str) -> str | None:
    """The ID of the unit's one running container (None while there is none)."""
    found = [c for c in unit_containers(machine, unit) if c["State"]["Running"]]  # type: ignore[index]
    assert len(found) <= 1, f"duplicate containers for {unit}: {found}"
    return str(found[0]["Id"]) if found else None


def start(machine: Machine, name: str, text: str) -> None:
    (machine.home / name).write_text(text)
    done = machine.fleetctl("start", "--no-block", str(machine.home / name))
    assert done.returncode == 0, done.stderr


def unit_state(machine: Machine, name: str) -> str:
    """``active running`` as fleetctl list-units shows it (empty when not listed)."""
    listing = machine.fleetctl("list-units", "--no-legend", "--fields=unit,active,sub").stdout
    for line in listing.splitlines():
        fields = line.split()
        if fields and fields[0] == name:
            return " ".join(fields[1:])
    return ""


def _grep(machine: Machine, name: str, text: str) -> str | None:
    """The unit's journal once it contains ``text``."""
    journal = machine.fleetctl("journal", name).stdout
    return journal if text in journal else None


def _has_state(machine: Machine, name: str, state: str) -> bool:
    return unit_state(machine, name) == state


def test_container_is_labelled_reported_and_removed_with_its_unit(machine: Machine) -> None:
    name = f"box-{machine.machine_id[:6]}"
    start(machine, "box.service", LONG_RUNNING.format(what="box", name=name))
    first = wait("the container", lambda: running_container(machine, "box.service"), logs=machine.log)
    wait("list-units to show it running", lambda: unit_state(machine, "box.service") == "active running")
    status = machine.fleetctl("status", "box.service")
    assert status.returncode == 0, status.stderr
    assert f"Container: {first[:12]} {name} running (busybox:local)" in status.stdout
    journal = wait("the container's output in the journal",
                   functools.partial(_grep, machine, "box.service", "hello from"))
    assert f"hello from {name}" in journal

    assert machine.fleetctl("stop", "box.service").returncode == 0
    wait("the container to go with the stop", lambda: not unit_containers(machine, "box.service"), timeout=20)
    assert machine.fleetctl("start", "box.service").returncode == 0
    second = wait("a new container", lambda: running_container(machine, "box.service"))
    assert second != first
    assert machine.fleetctl("destroy", "box.service").returncode == 0
    wait("the container to go with the unit", lambda: not unit_containers(machine, "box.service"), timeout=20)


def test_fleetd_crash_leaves_no_orphan_and_no_duplicate(machine: Machine) -> None:
    name = f"crash-{machine.machine_id[:6]}"
    start(machine, "crash.service", LONG_RUNNING.format(what="survivor", name=name))
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
    start(machine, "drained.service", unit)
    wait("the container", lambda: running_container(machine, "drained.service"), logs=machine.log)
    assert machine.terminate() == 0  # SIGTERM: fleet's purge
    assert unit_containers(machine, "drained.service") == []


def set_greeting(fastkv: harness.Server, value: str) -> None:
    put = subprocess.run(["curl", "-fsS", "-X", "PUT", f"{fastkv.url}/v2/keys/e2e-bridge/greeting",
                          "-d", f"value={value}"], capture_output=True, text=True, timeout=10, check=False)
    assert put.returncode == 0, put.stderr


def test_containers_reach_fastkv_on_the_bridge(fastkv: harness.Server) -> None:
    gateway = bridge_gateway()
    base = f"http://{gateway}:{fastkv.client_port}/v2/keys/e2e-bridge/greeting"
    set_greeting(fastkv, "one")
    read = docker("run", "--rm", "--pull=never", "busybox:local", "wget", "-q", "-O", "-", base)
    assert read.returncode == 0, read.stderr
    assert '"value":"one"' in read.stdout
    index = int(read.stdout.split('"modifiedIndex":')[1].split(",")[0])
    wget = ["busybox:local", "wget", "-q", "-O", "-", f"{base}?wait=true&waitIndex={index + 1}"]
    watcher = subprocess.Popen(["docker", "run", "--rm", "--pull=never", "--label", "e2e=watcher", *wget],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait("the watcher's container to run", lambda: containers("e2e=watcher"))
        set_greeting(fastkv, "two")
        out, err = watcher.communicate(timeout=30)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait(10)
    assert watcher.returncode == 0, err
    assert '"action":"set"' in out and '"value":"two"' in out


def test_broken_containers_fail_their_units_and_nothing_else(machine: Machine) -> None:
    tag = machine.machine_id[:6]
    start(machine, "healthy.service", LONG_RUNNING.format(what="healthy box", name=f"healthy-{tag}"))
    start(machine, "noimage.service", "[Service]\nExecStart=/usr/bin/docker run --rm --pull=never "
                                      "$FLEET_DOCKER_LABELS busybox:no-such-tag true\n")
    start(machine, "crashing.service", "[Service]\nExecStart=/usr/bin/docker run --pull=never "
                                       f"--name crashing-{tag} $FLEET_DOCKER_LABELS busybox:local "
                                       "sh -c 'echo about to crash; exit 3'\n")
    start(machine, "noengine.service", "[Service]\nEnvironment=DOCKER_HOST=unix:///nonexistent/docker.sock\n"
                                       "ExecStart=/usr/bin/docker run --rm $FLEET_DOCKER_LABELS "
                                       "busybox:local true\n")
    for name in ("noimage.service", "crashing.service", "noengine.service"):
        wait(f"{name} failed", functools.partial(_has_state, machine, name, "failed failed"),
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
    start(machine, "after.service", LONG_RUNNING.format(what="later box", name=f"after-{tag}"))
    wait("a later unit running", lambda: running_container(machine, "after.service"), logs=machine.log)


def test_engine_down_is_reported_and_units_still_run(fastkv: harness.Server, tmp_path: Path) -> None:
    node = Machine(uuid.uuid4().hex, tmp_path / "m", fastkv.url,
                   env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}).start()
    try:
        wait("fleetd to serve its API", node.ready, logs=node.log)
        start(node, "plain.service", "[Service]\nExecStart=/bin/sleep 1000\n")
        wait("a plain unit running", lambda: unit_state(node, "plain.service") == "active running",
             logs=node.log)
        status = node.fleetctl("status", "plain.service")
        assert "Container: Docker engine unavailable" in status.stdout, status.stdout
    finally:
        stop_all([node])

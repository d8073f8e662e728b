"""fleetd with ``runtime = docker``: every unit is one container that fleetd itself creates, watches,
stops and removes through the Docker SDK. Real fleetd processes, the real Docker engine, fastkv,
fleetctl from the host."""

from __future__ import annotations

import functools
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import harness
from tests.e2e.support import (
    Machine,
    bridge_url,
    containers,
    docker,
    example_unit,
    fastkv_on_bridge,
    has_state,
    journal_with,
    remove_containers,
    running_container,
    start_unit,
    stop_all,
    unit_containers,
    unit_state,
    wait,
)

#: A ``docker run`` unit whose container counts, one line a second, until it is asked to stop.
COUNTER = ("[Unit]\nDescription=Counter {name}\n\n[Service]\n"
           "ExecStart=/usr/bin/docker run --rm --pull=never --name {name} busybox:local "
           "sh -c 'trap \"exit 0\" TERM; i=0; while true; do i=$$((i + 1)); echo count $$i; sleep 1; done'\n")


@pytest.fixture(scope="module")
def fastkv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.Server]:
    [server] = fastkv_on_bridge(tmp_path_factory.mktemp("fastkv"), 1)
    yield server
    server.stop()


@pytest.fixture
def machine(fastkv: harness.Server, tmp_path: Path) -> Iterator[Machine]:
    node = Machine(uuid.uuid4().hex, tmp_path / "m", fastkv.url, runtime="docker").start()
    wait("fleetd to serve its API", node.ready, logs=node.log)
    yield node
    stop_all([node])


def status(machine: Machine, name: str) -> str:
    """``fleetctl status`` (which ends with the last journal lines)."""
    done = machine.fleetctl("status", name)
    assert done.returncode == 0, done.stderr
    return done.stdout


def no_containers(machine: Machine, unit: str) -> bool:
    """Whether the unit has no container (running or not) on the machine."""
    return not unit_containers(machine, unit)


def status_with(machine: Machine, name: str, text: str) -> str | None:
    """The unit's status once it contains ``text``."""
    shown = status(machine, name)
    return shown if text in shown else None


def fetch(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=3) as answer:
            return str(answer.read().decode().strip())
    except OSError:
        return None


def shows(machine: Machine, name: str, state: str = "active running") -> functools.partial[bool]:
    """A check that list-units shows ``state`` for the unit."""
    return functools.partial(has_state, machine, name, state)


def docker_clients(name: str) -> list[str]:
    """Command lines of ``docker run`` client processes mentioning ``name`` (none under this runtime)."""
    found = subprocess.run(["pgrep", "-af", f"docker run .*{name}"], capture_output=True, text=True,
                           timeout=10, check=False).stdout
    return [line for line in found.splitlines() if "pgrep" not in line]


def test_a_unit_is_its_container(machine: Machine) -> None:
    name, port = f"web-{machine.machine_id[:6]}", harness.free_port()
    start_unit(machine, "web.service", (
        "[Unit]\nDescription=Web in a container\n\n[Service]\n"
        f"ExecStart=/usr/bin/docker run --rm --pull=never --name {name} -p 127.0.0.1:{port}:80 "
        f"-e GREETING=hello busybox:local sh -c 'echo \"$$GREETING from {name}\" >/tmp/index.html; "
        "echo serving; exec httpd -f -p 80 -h /tmp'\n"))
    first = wait("the container", lambda: running_container(machine, "web.service"), logs=machine.log)
    wait("list-units to show it running", shows(machine, "web.service"))
    page = wait("the published port to answer", lambda: fetch(f"http://127.0.0.1:{port}/"))
    assert page == f"hello from {name}"
    assert docker_clients(name) == [], "the runtime is the only client: no docker run process"
    shown = status(machine, "web.service")
    assert "Active: active (running)" in shown and " Main PID: " in shown
    assert f"Container: {first[:12]} {name} running (busybox:local)" in shown
    journal = wait("the container's output in the journal",
                   functools.partial(journal_with, machine, "web.service", "serving"))
    assert f"{name}[{first[:12]}]: serving" in journal and "Started Web in a container." in journal

    assert machine.fleetctl("stop", "web.service").returncode == 0
    wait("the container to go with the stop", lambda: not unit_containers(machine, "web.service"), timeout=20)
    assert fetch(f"http://127.0.0.1:{port}/") is None
    assert "Stopped Web in a container." in machine.fleetctl("journal", "web.service").stdout
    assert machine.fleetctl("start", "web.service").returncode == 0
    second = wait("a new container", lambda: running_container(machine, "web.service"), logs=machine.log)
    assert second != first
    assert machine.fleetctl("destroy", "web.service").returncode == 0
    wait("the container to go with the unit", lambda: not unit_containers(machine, "web.service"), timeout=20)


def test_other_commands_run_in_the_docker_image(machine: Machine) -> None:
    start_unit(machine, "plain.service", (
        "[Service]\nEnvironment=WHO=world\nExecStart=/bin/sh -c 'echo hello $$WHO from $$FLEET_UNIT; "
        "trap \"exit 0\" TERM; while true; do sleep 1; done'\n"))
    cid = wait("the container", lambda: running_container(machine, "plain.service"), logs=machine.log)
    [container] = containers("fleet.unit=plain.service", f"fleet.machine={machine.machine_id}")
    assert container["Config"]["Image"] == "busybox:local"
    journal = wait("the output", functools.partial(journal_with, machine, "plain.service", "hello world"))
    assert f"[{cid[:12]}]: hello world from plain.service" in journal
    assert machine.fleetctl("destroy", "plain.service").returncode == 0
    wait("the container gone", lambda: not unit_containers(machine, "plain.service"), timeout=20)


def counts(machine: Machine, name: str) -> list[int]:
    """The numbers the counter unit printed, in journal order."""
    journal = machine.fleetctl("journal", "--lines=1000", name).stdout
    return [int(line.rsplit(" ", 1)[1]) for line in journal.splitlines() if ": count " in line]


def test_fleetd_crash_readopts_the_container(machine: Machine) -> None:
    name = f"count-{machine.machine_id[:6]}"
    start_unit(machine, "count.service", COUNTER.format(name=name))
    first = wait("the container", lambda: running_container(machine, "count.service"), logs=machine.log)
    wait("some output", lambda: len(counts(machine, "count.service")) >= 2)

    machine.kill()  # a crash: the container keeps running; meanwhile a container of a unit not here appears
    orphan = docker("run", "-d", "--pull=never", "--label", f"fleet.machine={machine.machine_id}",
                    "--label", "fleet.unit=gone.service", "busybox:local", "sleep", "1000")
    assert orphan.returncode == 0, orphan.stderr
    machine.start()
    wait("fleetd back", machine.ready, logs=machine.log)
    wait("the unit adopted", shows(machine, "count.service"))
    assert running_container(machine, "count.service") == first
    assert [c["Id"] for c in unit_containers(machine, "count.service")] == [first]
    wait("the orphan removed", lambda: not unit_containers(machine, "gone.service"), logs=machine.log)

    def later_counts() -> list[int] | None:
        found = counts(machine, "count.service")
        return found if found and found[-1] >= found[0] + 4 else None
    seen = wait("output copied on after the restart", later_counts)
    assert seen == list(range(seen[0], seen[-1] + 1)), f"lines lost or copied twice: {seen}"

    machine.kill()  # a crash during which the container goes too: the agent starts one new container
    remove_containers("fleet.unit=count.service", f"fleet.machine={machine.machine_id}")
    machine.start()
    wait("fleetd back", machine.ready, logs=machine.log)
    second = wait("one new container", lambda: running_container(machine, "count.service"), logs=machine.log)
    assert second != first
    wait("the unit running", shows(machine, "count.service"))
    assert [c["Id"] for c in unit_containers(machine, "count.service")] == [second]


def test_draining_the_machine_removes_its_containers(machine: Machine) -> None:
    start_unit(machine, "drained.service", COUNTER.format(name=f"drained-{machine.machine_id[:6]}"))
    wait("the container", lambda: running_container(machine, "drained.service"), logs=machine.log)
    assert machine.terminate() == 0  # SIGTERM: fleet's purge
    assert unit_containers(machine, "drained.service") == []


def test_bad_units_fail_with_the_reason_and_nothing_else(machine: Machine) -> None:
    tag = machine.machine_id[:6]
    start_unit(machine, "healthy.service", COUNTER.format(name=f"healthy-{tag}"))
    start_unit(machine, "noimage.service",
               "[Service]\nExecStart=/usr/bin/docker run --rm --pull=never busybox:no-such-tag true\n")
    start_unit(machine, "crashing.service", "[Service]\nExecStart=/usr/bin/docker run --pull=never "
               f"--name crashing-{tag} busybox:local sh -c 'echo about to crash; exit 3'\n")
    start_unit(machine, "privileged.service",
               "[Service]\nExecStart=/usr/bin/docker run --privileged busybox:local true\n")
    for name in ("noimage.service", "crashing.service"):
        wait(f"{name} failed", shows(machine, name, "failed failed"), logs=machine.log)
    wait("the healthy unit running", shows(machine, "healthy.service"))

    noimage = status(machine, "noimage.service")
    assert "Active: failed (Result: resources)" in noimage
    assert "Failed to run container: No such image: busybox:no-such-tag" in noimage
    crashing = status(machine, "crashing.service")
    assert "Active: failed (Result: exit-code)" in crashing and "status=3" in crashing
    assert f"crashing-{tag} exited (3) (busybox:local)" in crashing  # kept for inspection while failed
    assert "about to crash" in crashing
    privileged = wait("the unsupported option reported",
                      functools.partial(status_with, machine, "privileged.service", "bad-setting"))
    assert "option --privileged is not supported by the docker runtime" in privileged
    assert unit_containers(machine, "privileged.service") == []
    # the agent keeps working: a stop of the failed unit removes its container, a new unit starts
    assert machine.fleetctl("stop", "crashing.service").returncode == 0
    wait("the crashed container removed", lambda: not unit_containers(machine, "crashing.service"))
    start_unit(machine, "after.service", COUNTER.format(name=f"after-{tag}"))
    wait("a later unit running", lambda: running_container(machine, "after.service"), logs=machine.log)
    assert unit_state(machine, "healthy.service") == "active running"


def test_engine_down_fails_units_with_the_reason(fastkv: harness.Server, tmp_path: Path) -> None:
    node = Machine(uuid.uuid4().hex, tmp_path / "m", fastkv.url, runtime="docker",
                   env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}).start()
    try:
        wait("fleetd to serve its API without an engine", node.ready, logs=node.log)
        start_unit(node, "box.service", COUNTER.format(name=f"box-{node.machine_id[:6]}"))
        wait("the unit failed", shows(node, "box.service", "failed failed"), logs=node.log)
        shown = status(node, "box.service")
        assert "Active: failed (Result: resources)" in shown
        assert "Failed to run container: Docker engine unavailable" in shown
        assert "Container: Docker engine unavailable" in shown
    finally:
        stop_all([node])


def test_the_example_web_and_balancer_run_unchanged(fastkv: harness.Server, machine: Machine) -> None:
    """examples/service-discovery's web@ and lb units, as they are, under the docker runtime: their
    ``docker rm``/``docker stop`` hooks, ``$FLEET_DOCKER_LABELS`` and ``-e ETCD=${ETCD}`` included."""
    for name, source in (("web@1.service", "web@.service"), ("lb.service", "lb.service")):
        start_unit(machine, name, example_unit(source, bridge_url(fastkv)))
    web = wait("the web container", lambda: running_container(machine, "web@1.service"), logs=machine.log)
    balancer = wait("the balancer", lambda: running_container(machine, "lb.service"), logs=machine.log)
    [web_info], [lb_info] = (unit_containers(machine, unit) for unit in ("web@1.service", "lb.service"))
    assert (web_info["Name"], lb_info["Name"]) == ("/web-1", "/lb")
    web_address = web_info["NetworkSettings"]["IPAddress"]
    put = subprocess.run(["curl", "-fsS", "-X", "PUT", f"{fastkv.url}/v2/keys/services/web/1", "-d",
                          f"value={web_address}:80"], capture_output=True, text=True, timeout=10, check=False)
    assert put.returncode == 0, put.stderr
    url = f"http://{lb_info['NetworkSettings']['IPAddress']}:8080/"
    assert wait("the balancer to route to web 1", lambda: fetch(url) == "web 1" or None, logs=machine.log)
    assert docker_clients("web-1") == [] and docker_clients("fleet-lb") == []
    assert "backends at index" in machine.fleetctl("journal", "--lines=50", "lb.service").stdout
    for unit, container in (("web@1.service", web), ("lb.service", balancer)):
        assert machine.fleetctl("destroy", unit).returncode == 0
        wait(f"{unit}'s container gone", functools.partial(no_containers, machine, unit), timeout=20)
        assert docker("inspect", container).returncode != 0

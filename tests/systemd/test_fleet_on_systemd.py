"""fleet's functional scenarios on machines booted with systemd: three containers with systemd as PID 1,
each running fleetd as a systemd unit (``runtime = auto`` picks systemd there) against a 3-member
fastkv cluster on the Docker bridge (every fleetd knows all three members); units are driven with
``fleetctl`` from this machine through a container's API, and what systemd runs is checked with
``systemctl`` inside the containers. The containers have this machine's Docker engine, so a unit's
``docker run`` starts a real container that fleetd tracks."""

from __future__ import annotations

import functools
import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fleetd.unit import UnitFile
from tests import harness
from tests.fleetd.test_fleetctl import Fleetctl
from tests.infra import bridge, systemd_hosts
from tests.infra.systemd_hosts import API_PORT, SystemdHost

PREFIX = "/fleet-systemd/"
UNITS_DIR = "/run/fleet/units"
#: Each host's role (its metadata besides ``hostname``).
ROLES = ("web", "web", "db")


def looping(word: str, extra: str = "", unit: str = "") -> str:
    """A unit that prints ``word`` every second (fleet's fixtures), with extra ``[X-Fleet]`` lines."""
    text = (f"[Unit]\n{unit}\n" if unit else "") + \
        f'[Service]\nExecStart=/bin/bash -c "while true; do echo {word}; sleep 1; done"\n'
    return text + (f"\n[X-Fleet]\n{extra}" if extra else "")


HELLO = looping("Hello, World!")
DISCOVERY = looping("discovered", "MachineOf=hello.service\n", "BindsTo=hello.service\nAfter=hello.service\n")
DISCOVERY += "\n[Install]\nWantedBy=hello.service\n"


@dataclass(frozen=True)
class Listed:
    """One row of ``fleetctl list-units``."""

    machine: str
    load: str
    active: str
    sub: str

    @property
    def state(self) -> str:
        return f"{self.load}/{self.active}/{self.sub}"


class Fleet:
    """The registry, three systemd machines with a fleetd each, and fleetctl."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.hosts: list[SystemdHost] = []
        self.ids: dict[str, SystemdHost] = {}
        self.registry = systemd_hosts.bridge_registry(tmp, 3)
        try:
            names = systemd_hosts.unique_names("fleet-sd", 3)
            self.hosts = systemd_hosts.start_hosts(names, with_docker=True)
            urls = systemd_hosts.bridge_urls(self.registry)
            for i, (host, role) in enumerate(zip(self.hosts, ROLES, strict=True)):
                servers = ",".join(urls[i:] + urls[:i])  # each machine prefers another member
                host.start_fleetd(f"etcd_servers = {servers}\netcd_key_prefix = {PREFIX}\n"
                                  f"metadata = hostname={host.name},role={role}\nagent_ttl = 5s\n"
                                  f"engine_reconcile_interval = 0.5\napi_listen = 0.0.0.0:{API_PORT}\n")
            self.ids = {host.machine_id(): host for host in self.hosts}
        except BaseException:
            self.close()
            raise
        self.roles = {mid: role for (mid, _), role in zip(self.ids.items(), ROLES, strict=True)}
        self.dead: set[str] = set()

    def fleetctl(self, *args: str) -> Any:
        """fleetctl on this machine, through the API of a live container."""
        host = next(h for h in self.hosts if h.name not in self.dead)
        return Fleetctl([f"--endpoint=http://{host.ip}:{API_PORT}"], self.tmp)(*args)

    def ok(self, *args: str) -> str:
        done = self.fleetctl(*args)
        assert done.returncode == 0, f"fleetctl {' '.join(args)}: {done.stdout}{done.stderr}"
        return str(done.stdout)

    def machine_count(self) -> int:
        """How many machines ``list-machines`` shows (0 while the API does not answer)."""
        done = self.fleetctl("list-machines", "--no-legend")
        return len(done.stdout.splitlines()) if done.returncode == 0 else 0

    def write(self, name: str, text: str) -> None:
        (self.tmp / name).write_text(text)

    def rows(self) -> list[tuple[str, Listed]]:
        """``fleetctl list-units``: (name, where and in which state it runs), one row per machine of a
        unit ("" machine = nowhere)."""
        fields = "unit,machine,load,active,sub"
        done = self.fleetctl("list-units", "--full", "--no-legend", "--fields", fields)
        if done.returncode != 0:
            return []
        rows = []
        for line in done.stdout.splitlines():
            name, machine, load, active, sub = (line.split() + ["-"] * 5)[:5]
            rows.append((name, Listed(machine.split("/")[0].strip("-"), load, active, sub)))
        return rows

    def units(self) -> dict[str, Listed]:
        """``rows`` by unit name (the last row of a global unit)."""
        return dict(self.rows())

    def running(self, name: str, exclude: str = "") -> str:
        """The machine where ``name`` is listed as running (not ``exclude``) and systemd there says it is
        active; ``""`` when there is none yet."""
        row = self.units().get(name)
        if row is None or row.state != "loaded/active/running" or row.machine in ("", exclude):
            return ""
        active = self.host_of(row.machine).systemctl("is-active", name).strip()
        return row.machine if active == "active" else ""

    def host_of(self, machine_id: str) -> SystemdHost:
        return self.ids[machine_id]

    def unit_files(self, host: SystemdHost) -> list[str]:
        """The unit files fleetd left in the host's units directory."""
        listing = host.exec("ls", "-A", UNITS_DIR, check=False).stdout.split()
        return sorted(n for n in listing if n.endswith(".service"))

    def wait(self, what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Poll ``check`` until it returns something truthy; fail with ``what`` and fleetd's logs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = check()
            if result:
                return result
            time.sleep(0.3)
        live = [h for h in self.hosts if h.name not in self.dead]
        logs = "\n".join(f"--- {h.name}\n{h.systemctl('list-jobs')}{h.journal('fleetd', 40)}" for h in live)
        state = f"units: {self.units()}\njobs: {self.jobs()}"
        raise AssertionError(f"timed out waiting for {what}\n{state}\n{logs}")

    def jobs(self) -> str:
        """The registry's ``job/`` directory as the first member that answers returns it (for failure
        messages)."""
        for server in self.registry:
            try:
                url = f"{server.url}/v2/keys{PREFIX}job?recursive=true&sorted=true"
                with urllib.request.urlopen(url, timeout=5) as answer:
                    return str(answer.read().decode())
            except OSError as err:
                error = err
        return f"no member answers: {error}"

    def wait_states(self, wanted: dict[str, str], timeout: float = 30.0) -> dict[str, Listed]:
        """Wait until every named unit shows the ``load/active/sub`` state given for it."""
        def check() -> dict[str, Listed] | None:
            rows = self.units()
            return rows if all(n in rows and rows[n].state == s for n, s in wanted.items()) else None
        return dict(self.wait(f"states {wanted}", check, timeout))

    def destroy(self, *names: str) -> None:
        self.ok("destroy", *names)
        self.wait(f"{names} gone from every machine", lambda: not any(
            set(names) & set(self.unit_files(h)) for h in self.hosts if h.name not in self.dead))

    def containers(self, *labels: str) -> list[dict[str, Any]]:
        """``docker inspect`` of every container of this fleet's machines carrying ``labels`` (``k=v``)."""
        found: list[dict[str, Any]] = []
        for machine_id in self.ids:
            wanted = (f"fleet.machine={machine_id}", *labels)
            filters = [arg for label in wanted for arg in ("--filter", f"label={label}")]
            ids = systemd_hosts.docker("ps", "-aq", *filters).stdout.split()
            found += json.loads(systemd_hosts.docker("inspect", *ids).stdout) if ids else []
        return found

    def running_containers(self, *labels: str) -> list[dict[str, Any]]:
        """``containers(*labels)`` that are running."""
        return [c for c in self.containers(*labels) if c["State"]["Running"]]

    def close(self) -> None:
        """Remove the machines, the containers their units left, and stop the registry."""
        ids = [c["Id"] for c in self.containers()] if self.ids else []
        systemd_hosts.remove_hosts(self.hosts)
        if ids:
            systemd_hosts.docker("rm", "-f", *ids, check=False)
        systemd_hosts.stop_servers(self.registry)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    bridge.ensure_docker()  # the engine and busybox:local, for the Docker units
    fleet = Fleet(tmp_path_factory.mktemp("fleet-systemd"))
    try:
        fleet.wait("three machines", lambda: fleet.machine_count() == 3, timeout=60)
        yield fleet
    finally:
        fleet.close()


@pytest.fixture(autouse=True)
def no_units_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test on the shared machines, destroy the units a failed test left, so that one failure
    does not spill into the tests after it."""
    yield
    if "fleet" in request.fixturenames:
        fleet: Fleet = request.getfixturevalue("fleet")
        left = fleet.ok("list-unit-files", "--full", "--no-legend", "--fields", "unit").split()
        if left:
            fleet.destroy(*left)


def test_machines_are_the_containers(fleet: Fleet) -> None:
    listed = fleet.ok("list-machines", "--full", "--no-legend", "--fields", "machine,ip,metadata")
    rows = sorted(line.split() for line in listed.splitlines())
    assert rows == sorted([mid, host.ip, f"hostname={host.name},role={fleet.roles[mid]}"]
                          for mid, host in fleet.ids.items())
    assert len(set(fleet.ids)) == 3  # each container booted with a machine ID of its own
    for host in fleet.hosts:  # every fleetd holds all three members of the registry
        servers = host.exec("sed", "-n", "s/^etcd_servers = //p", "/etc/fleet/fleet.conf").stdout.strip()
        assert sorted(servers.split(",")) == sorted(systemd_hosts.bridge_urls(fleet.registry))


def test_units_are_spread_over_idle_machines(fleet: Fleet) -> None:
    """Three units on three idle machines: one each, running in that machine's systemd."""
    names = ["a.service", "b.service", "c.service"]
    for name in names:
        fleet.write(name, looping(name))
    fleet.ok("start", "--no-block", *names)
    placed = [fleet.wait(f"{name} running", functools.partial(fleet.running, name)) for name in names]
    assert sorted(placed) == sorted(fleet.ids)
    for name, machine in zip(names, placed, strict=True):
        assert fleet.unit_files(fleet.host_of(machine)) == [name]
    fleet.destroy(*names)


def test_systemd_unit_flow(fleet: Fleet) -> None:
    """TestSystemdUnitFlow: load -> loaded/inactive/dead with its hash, start -> active/running,
    unload -> the units directory is empty."""
    fleet.write("hello.service", HELLO)
    fleet.ok("load", "--no-block", "hello.service")
    row = fleet.wait_states({"hello.service": "loaded/inactive/dead"})["hello.service"]
    host = fleet.host_of(row.machine)
    assert fleet.unit_files(host) == ["hello.service"]
    assert host.exec("cat", f"{UNITS_DIR}/hello.service").stdout == UnitFile.from_text(HELLO).text
    assert host.systemctl("is-enabled", "hello.service").strip() == "linked-runtime"
    hashes = fleet.ok("list-unit-files", "--full", "--no-legend", "--fields", "unit,hash")
    assert hashes.split() == ["hello.service", UnitFile.from_text(HELLO).hash.hex]

    fleet.ok("start", "--no-block", "hello.service")
    fleet.wait_states({"hello.service": "loaded/active/running"})
    assert host.systemctl("is-active", "hello.service").strip() == "active"
    status = fleet.ok("status", "hello.service")
    assert "Active: active (running)" in status and "Hello, World!" in status
    journal = ("journal", "--lines", "2", "hello.service")
    fleet.wait("journal lines", lambda: "Hello, World!" in fleet.ok(*journal))

    fleet.ok("unload", "hello.service")
    fleet.wait("hello.service unloaded", lambda: not fleet.unit_files(host))
    assert host.systemctl("is-active", "hello.service").strip() == "inactive"
    fleet.destroy("hello.service")


def test_install_unit(fleet: Fleet) -> None:
    """TestInstallUnit: a sidekick with ``[Install] WantedBy=hello.service`` follows hello's start and
    stop, though fleet only loads it."""
    fleet.write("hello.service", HELLO)
    fleet.write("discovery.service", DISCOVERY)
    fleet.ok("load", "--no-block", "hello.service")
    fleet.wait_states({"hello.service": "loaded/inactive/dead"})
    fleet.ok("load", "--no-block", "discovery.service")
    rows = fleet.wait_states({"discovery.service": "loaded/inactive/dead"})
    assert rows["discovery.service"].machine == rows["hello.service"].machine
    host = fleet.host_of(rows["hello.service"].machine)
    assert host.systemctl("is-enabled", "discovery.service").strip() == "enabled-runtime"

    fleet.ok("start", "--no-block", "hello.service")
    running = "loaded/active/running"
    fleet.wait_states({"hello.service": running, "discovery.service": running})
    fleet.ok("stop", "--no-block", "hello.service")
    dead = "loaded/inactive/dead"
    fleet.wait_states({"hello.service": dead, "discovery.service": dead})
    fleet.destroy("discovery.service")  # the sidekick first: hello's peer is never missing meanwhile
    fleet.destroy("hello.service")
    enabled = host.systemctl("is-enabled", "discovery.service").strip()
    assert enabled not in ("enabled-runtime", "linked-runtime")


def test_units_systemd_refuses_fail_alone(fleet: Fleet) -> None:
    """A unit with a bad setting and one whose enablement systemd refuses end up failed with the reason
    in ``status``; a good unit on the same machine runs all the same."""
    machine_id, host = next(iter(fleet.ids.items()))
    pin = f"[X-Fleet]\nMachineID={machine_id}\n"
    fleet.write("noexec.service", f"[Service]\nType=simple\n\n{pin}")
    fleet.write("alias.service", f"[Service]\nExecStart=/bin/sleep 9\n\n[Install]\nAlias=x.socket\n\n{pin}")
    fleet.write("good.service", looping("good", f"MachineID={machine_id}\n"))
    fleet.ok("start", "--no-block", "noexec.service", "alias.service", "good.service")
    fleet.wait_states({"noexec.service": "bad-setting/inactive/dead", "alias.service": "error/inactive/dead",
                       "good.service": "loaded/active/running"})
    assert host.systemctl("is-active", "good.service").strip() == "active"
    assert "Loaded: bad-setting (Reason: " in fleet.ok("status", "noexec.service")
    assert "Loaded: error (Reason: systemd refused the unit" in fleet.ok("status", "alias.service")
    fleet.destroy("noexec.service", "alias.service", "good.service")


def test_schedule_conflicts(fleet: Fleet) -> None:
    """TestScheduleConflicts: five units conflicting with each other on three machines -> three run, one
    per machine, two stay unscheduled."""
    names = [f"conflict.{i}.service" for i in range(5)]
    for name in names:
        fleet.write(name, looping(name, "Conflicts=conflict.*.service\n"))
    fleet.ok("start", "--no-block", *names)

    def spread() -> list[str] | None:
        rows = [r for n, r in fleet.units().items() if n in names and r.state == "loaded/active/running"]
        return [r.machine for r in rows] if len(rows) == 3 else None

    assert sorted(fleet.wait("three conflict units running", spread)) == sorted(fleet.ids)
    files = fleet.ok("list-unit-files", "--full", "--no-legend", "--fields", "unit,tmachine")
    targets = dict(line.split() for line in files.splitlines())
    assert sorted(targets) == names
    assert list(targets.values()).count("-") == 2  # the two that cannot run anywhere stay unscheduled
    for host in fleet.hosts:
        active = host.systemctl("list-units", "--state=active", "--no-legend", "--plain", "conflict.*")
        assert len(active.splitlines()) == 1, (host.name, active)
    fleet.destroy(*names)


def test_global_unit_runs_on_every_machine_its_metadata_matches(fleet: Fleet) -> None:
    """``Global=true`` with ``MachineMetadata=role=web``: one copy on each web machine, none elsewhere."""
    fleet.write("mon.service", looping("mon", "Global=true\nMachineMetadata=role=web\n"))
    fleet.ok("start", "--no-block", "mon.service")
    web = sorted(mid for mid, role in fleet.roles.items() if role == "web")

    def everywhere() -> list[str] | None:
        running = sorted(row.machine for name, row in fleet.rows()
                         if name == "mon.service" and row.state == "loaded/active/running")
        return running if running == web else None

    fleet.wait("mon.service on both web machines", everywhere)
    for machine_id, host in fleet.ids.items():
        wanted = "active" if machine_id in web else "inactive"
        assert host.systemctl("is-active", "mon.service").strip() == wanted, host.name
        assert fleet.unit_files(host) == (["mon.service"] if machine_id in web else [])
    fleet.destroy("mon.service")


def test_template_instances_land_where_their_specifiers_say(fleet: Fleet) -> None:
    """Instances of templates, placed by ``%i`` in ``[X-Fleet]``: ``meta@db`` on the db machine,
    ``pin@<machine ID>`` on that machine; each runs there as an instance unit of systemd."""
    db = next(mid for mid, role in fleet.roles.items() if role == "db")
    pinned = next(mid for mid in fleet.ids if mid != db)
    fleet.write("meta@.service", looping("meta %i", "MachineMetadata=role=%i\n"))
    fleet.write("pin@.service", looping("pin %i", "MachineID=%i\n"))
    fleet.ok("start", "--no-block", "meta@db.service", f"pin@{pinned}.service")
    assert fleet.wait("meta@db running", lambda: fleet.running("meta@db.service")) == db
    assert fleet.wait("pin running", lambda: fleet.running(f"pin@{pinned}.service")) == pinned
    host = fleet.host_of(db)
    assert host.unit_property("meta@db.service", "Id") == "meta@db.service"
    fleet.wait("meta@db output", lambda: "meta db" in fleet.ok("journal", "--lines", "3", "meta@db.service"))
    fleet.destroy("meta@db.service", f"pin@{pinned}.service")


def test_replaces_takes_the_machine_and_moves_the_replaced_unit(fleet: Fleet) -> None:
    """``Replaces=replace.0.service`` bound to replace.0's machine: the replacing unit runs there and
    replace.0 moves to another machine (stopped and unloaded in the first machine's systemd)."""
    fleet.write("replace.0.service", looping("replaced"))
    fleet.ok("start", "--no-block", "replace.0.service")
    first = fleet.wait("replace.0 running", lambda: fleet.running("replace.0.service"))
    pin = f"MachineMetadata=hostname={fleet.host_of(first).name}\n"  # fleetctl refuses MachineID here
    fleet.write("replace-kick0.service", looping("kick", f"Replaces=replace.0.service\n{pin}"))
    fleet.ok("start", "--no-block", "replace-kick0.service")
    assert fleet.wait("kick running", lambda: fleet.running("replace-kick0.service")) == first
    fleet.wait("replace.0 moved", lambda: fleet.running("replace.0.service", exclude=first))
    host = fleet.host_of(first)
    fleet.wait("replace.0 unloaded on the first machine",
               lambda: fleet.unit_files(host) == ["replace-kick0.service"])
    assert host.systemctl("is-active", "replace.0.service").strip() == "inactive"
    fleet.destroy("replace.0.service", "replace-kick0.service")


def docker_unit(container: str, machine_id: str) -> str:
    """A unit whose ``docker run`` (foreground, no ``--rm``: removing it is fleetd's job) hands its
    container to fleetd with ``$FLEET_DOCKER_LABELS``, pinned to ``machine_id``."""
    return ("[Unit]\nDescription=busybox in Docker\n\n[Service]\n"
            f"ExecStart=/usr/bin/docker run --pull=never --name {container} $FLEET_DOCKER_LABELS "
            "busybox:local sh -c 'trap \"exit 0\" TERM; while true; do echo hello from docker; sleep 1; done'"
            "\n\n"
            f"[X-Fleet]\nMachineID={machine_id}\n")


def test_docker_unit_container_is_tracked(fleet: Fleet) -> None:
    """A ``docker run`` unit under systemd: its processes get ``$FLEET_DOCKER_LABELS`` from fleetd's
    drop-in, so the container carries the unit's and machine's labels; ``status`` shows the running
    container, ``journal`` its output; stop removes it (a start after that does not conflict on the
    name), destroy removes the new one."""
    machine_id, host = next(iter(fleet.ids.items()))
    container = f"sd-docker-{host.name}"
    labels = ("fleet.unit=docker.service",)
    fleet.write("docker.service", docker_unit(container, machine_id))
    fleet.ok("start", "--no-block", "docker.service")
    assert fleet.wait("docker.service running", lambda: fleet.running("docker.service")) == machine_id
    running = fleet.wait("its container", lambda: fleet.running_containers(*labels))
    assert [c["Name"] for c in running] == [f"/{container}"]
    assert running[0]["Config"]["Labels"] == {"fleet.unit": "docker.service", "fleet.machine": machine_id}
    environment = host.systemctl("show", "-p", "Environment", "--value", "docker.service")
    assert "FLEET_UNIT=docker.service" in environment and f"FLEET_MACHINE_ID={machine_id}" in environment
    status = fleet.ok("status", "docker.service")
    assert "Active: active (running)" in status
    assert f"Container: {running[0]['Id'][:12]} {container} running (busybox:local)" in status
    fleet.wait("the container's output in the journal",
               lambda: "hello from docker" in fleet.ok("journal", "docker.service"))

    fleet.ok("stop", "--no-block", "docker.service")
    fleet.wait_states({"docker.service": "loaded/inactive/dead"})
    fleet.wait("container removed on stop", lambda: not fleet.containers(*labels))
    fleet.ok("start", "--no-block", "docker.service")
    fleet.wait("docker.service running again", lambda: fleet.running("docker.service"))
    again = fleet.wait("a new container", lambda: fleet.running_containers(*labels))
    assert len(again) == 1 and again[0]["Id"] != running[0]["Id"]
    fleet.destroy("docker.service")
    fleet.wait("container removed on destroy", lambda: not fleet.containers(*labels))
    assert host.exec("test", "-e", "/run/systemd/system/docker.service.d", check=False).returncode != 0


def test_docker_unit_survives_a_fleetd_crash_and_goes_with_a_drain(fleet: Fleet) -> None:
    """A fleetd killed with SIGKILL and started again finds its Docker unit still running under systemd
    and keeps its one container (no orphan, no duplicate); a fleetd stopped with SIGTERM (a drain)
    takes the unit and its container down with it, and runs it again when it is back."""
    machine_id, host = list(fleet.ids.items())[1]
    labels = ("fleet.unit=crash.service",)
    fleet.write("crash.service", docker_unit(f"sd-crash-{host.name}", machine_id))
    fleet.ok("start", "--no-block", "crash.service")
    fleet.wait("crash.service running", lambda: fleet.running("crash.service"))
    (first,) = fleet.wait("its container", lambda: fleet.running_containers(*labels))

    host.crash_fleetd()
    assert host.systemctl("is-active", "crash.service").strip() == "active"  # systemd's unit, not fleetd's
    host.restart_fleetd()
    fleet.wait("the machine back", lambda: fleet.machine_count() == 3)
    assert fleet.wait("crash.service running", lambda: fleet.running("crash.service")) == machine_id
    assert [c["Id"] for c in fleet.containers(*labels)] == [first["Id"]]  # adopted, not started again

    fleet.dead.add(host.name)
    host.stop_fleetd()
    assert not fleet.containers(*labels)  # the purge stopped the unit and removed its container
    assert host.systemctl("is-active", "crash.service").strip() == "inactive"
    assert not fleet.unit_files(host)
    host.restart_fleetd()
    fleet.dead.discard(host.name)
    fleet.wait("the machine back", lambda: fleet.machine_count() == 3)
    fleet.wait("crash.service running again", lambda: fleet.running("crash.service"))
    (second,) = fleet.wait("a new container", lambda: fleet.running_containers(*labels))
    assert second["Id"] != first["Id"]
    fleet.destroy("crash.service")
    fleet.wait("container removed on destroy", lambda: not fleet.containers(*labels))


def test_schedule_machine_of(fleet: Fleet) -> None:
    """TestScheduleMachineOf: pong.N runs where ping.N runs; when the machine of ping.1 dies, ping.1 and
    pong.1 move together to another machine."""
    pairs = [(f"ping.{i}.service", f"pong.{i}.service") for i in range(3)]
    for ping, pong in pairs:
        fleet.write(ping, looping("ping"))
        fleet.write(pong, looping("pong", f"MachineOf={ping}\n"))
    fleet.ok("start", "--no-block", *[n for pair in pairs for n in pair])

    def together(exclude: str = "") -> dict[str, Listed] | None:
        rows = fleet.units()
        for ping, pong in pairs:
            a, b = rows.get(ping), rows.get(pong)
            if a is None or b is None or not a.machine or a.machine != b.machine or a.machine == exclude:
                return None
            if {a.state, b.state} != {"loaded/active/running"}:
                return None
        return rows

    rows = fleet.wait("pairs running together", together)
    for ping, pong in pairs:
        host = fleet.host_of(rows[ping].machine)
        assert host.systemctl("is-active", ping, pong).split() == ["active", "active"]
    victim = rows["ping.1.service"].machine
    fleet.host_of(victim).kill()
    fleet.dead.add(fleet.host_of(victim).name)
    rows = fleet.wait("ping.1 and pong.1 moved", lambda: together(exclude=victim))
    host = fleet.host_of(rows["ping.1.service"].machine)
    assert host.systemctl("is-active", "ping.1.service", "pong.1.service").split() == ["active", "active"]


def test_image_holds_what_fleetd_needs() -> None:
    """The image's Python runs fleetd's imports and has the Docker SDK (checked without starting a
    container's systemd)."""
    done = systemd_hosts.docker(
        "run", "--rm", "-e", f"PYTHONPATH={systemd_hosts.MOUNT}:{systemd_hosts.DEPS}", "-v",
        f"{systemd_hosts.REPO}:{systemd_hosts.MOUNT}:ro", systemd_hosts.IMAGE, "/usr/bin/python3", "-c",
        "import fleetd.daemon, fleetd.api.server, fleetd.runtime.systemd, docker; print('ok')")
    assert done.stdout.strip() == "ok"
    assert harness.free_port() > 0

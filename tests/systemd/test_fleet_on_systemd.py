"""fleet's functional scenarios on machines booted with systemd: three containers with systemd as PID 1,
each running fleetd as a systemd unit (``runtime = auto`` picks systemd there) against the reference
etcd on the Docker bridge; units are driven with ``fleetctl`` from this machine through a container's
API, and what systemd runs is checked with ``systemctl`` inside the containers."""

from __future__ import annotations

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
from tests.infra import systemd_hosts
from tests.infra.systemd_hosts import API_PORT, SystemdHost

PREFIX = "/fleet-systemd/"
UNITS_DIR = "/run/fleet/units"


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
        self.etcd = systemd_hosts.bridge_etcd(tmp, systemd_hosts.bridge_gateway()).start()
        self.hosts = systemd_hosts.start_hosts(systemd_hosts.unique_names("fleet-sd", 3))
        etcd_url = f"http://{systemd_hosts.bridge_gateway()}:{self.etcd.client_port}"
        for host in self.hosts:
            host.start_fleetd(f"etcd_servers = {etcd_url}\netcd_key_prefix = {PREFIX}\n"
                              f"metadata = hostname={host.name}\nagent_ttl = 3s\n"
                              f"engine_reconcile_interval = 0.5\napi_listen = 0.0.0.0:{API_PORT}\n")
        self.ids = {host.machine_id(): host for host in self.hosts}
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

    def units(self) -> dict[str, Listed]:
        """``fleetctl list-units``: name -> where and in which state it runs ("" machine = nowhere)."""
        fields = "unit,machine,load,active,sub"
        done = self.fleetctl("list-units", "--full", "--no-legend", "--fields", fields)
        if done.returncode != 0:
            return {}
        rows = {}
        for line in done.stdout.splitlines():
            name, machine, load, active, sub = (line.split() + ["-"] * 5)[:5]
            rows[name] = Listed(machine.split("/")[0].strip("-"), load, active, sub)
        return rows

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
        """The registry's ``job/`` directory as etcd returns it (for failure messages)."""
        url = f"{self.etcd.url}/v2/keys{PREFIX}job?recursive=true&sorted=true"
        with urllib.request.urlopen(url, timeout=5) as answer:
            return str(answer.read().decode())

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

    def close(self) -> None:
        systemd_hosts.remove_hosts(self.hosts)
        self.etcd.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path_factory.mktemp("fleet-systemd"))
    try:
        fleet.wait("three machines", lambda: fleet.machine_count() == 3, timeout=60)
        yield fleet
    finally:
        fleet.close()


def test_machines_are_the_containers(fleet: Fleet) -> None:
    listed = fleet.ok("list-machines", "--full", "--no-legend", "--fields", "machine,ip,metadata")
    rows = sorted(line.split() for line in listed.splitlines())
    assert rows == sorted([mid, host.ip, f"hostname={host.name}"] for mid, host in fleet.ids.items())
    assert len(set(fleet.ids)) == 3  # each container booted with a machine ID of its own


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
    """The image's Python runs fleetd's imports (checked without starting a container's systemd)."""
    done = systemd_hosts.docker(
        "run", "--rm", "-e", f"PYTHONPATH={systemd_hosts.MOUNT}:{systemd_hosts.DEPS}", "-v",
        f"{systemd_hosts.REPO}:{systemd_hosts.MOUNT}:ro", systemd_hosts.IMAGE, "/usr/bin/python3", "-c",
        "import fleetd.daemon, fleetd.api.server, fleetd.runtime.systemd; print('ok')")
    assert done.stdout.strip() == "ok"
    assert harness.free_port() > 0

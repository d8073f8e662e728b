"""The systemd runtime against a real systemd: a container booted with systemd whose system bus socket
(``/run/dbus``), systemd's runtime unit directory (``/run/systemd/system``, where the links and the
environment drop-ins go) and the units directory are directories of this machine, so the runtime runs
here, in the test process, and talks D-Bus to the container's systemd exactly as fleetd does on a
systemd host. What systemd ends up with is checked with ``systemctl`` inside the container."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from fleetd.runtime.base import NOT_FOUND, UnitRuntimeError
from fleetd.runtime.containers import unit_environment
from fleetd.runtime.dbus import SystemdManager
from fleetd.runtime.systemd import ENVIRONMENT_DROPIN, SYSTEM_RUNTIME_UNITS, SystemdRuntime
from fleetd.unit import UnitFile
from tests.infra import systemd_hosts
from tests.infra.systemd_hosts import SystemdHost

T = TypeVar("T")

HELLO = UnitFile.from_text('[Service]\nExecStart=/bin/bash -c "while true; do echo Hello; sleep 1; done"\n')
DISCOVERY = UnitFile.from_text(
    "[Unit]\nBindsTo=hello.service\n\n"
    '[Service]\nExecStart=/bin/bash -c "while true; do echo discovered; sleep 1; done"\n\n'
    "[Install]\nWantedBy=hello.service\n")
NO_EXEC = UnitFile.from_text("[Service]\nType=simple\n")
BAD_ALIAS = UnitFile.from_text("[Service]\nExecStart=/bin/sleep 1000\n\n[Install]\nAlias=other.socket\n")
#: Prints how many words ``$FLEET_DOCKER_LABELS`` splits into (systemd's rule for an unbraced ``$VAR``),
#: then the other variables.
ENVIRONMENT = UnitFile.from_text(
    '[Service]\nExecStart=/bin/sh -c \'echo "words=$$#"; echo "unit=$FLEET_UNIT machine=$FLEET_MACHINE_ID"; '
    'echo "odd=$ODD"; exec sleep 1000\' labels $FLEET_DOCKER_LABELS\n')
MACHINE_ID = "0123456789abcdef0123456789abcdef"
#: A value that only arrives verbatim when the drop-in escapes it (systemd's specifiers, quotes, escapes).
ODD = '100% "quoted" back\\slash %i'


class Machine:
    """The container and where its bus and units directory are on this machine."""

    def __init__(self, host: SystemdHost, bus_dir: Path, units_dir: Path, runtime_dir: Path) -> None:
        self.host = host
        self.bus_address = f"unix:path={bus_dir}/system_bus_socket"
        self.units_dir = units_dir
        self.runtime_dir = runtime_dir

    def runtime(self, by_names: bool = True) -> SystemdRuntime:
        """A runtime as fleetd makes it (every service gets ``unit_environment``), on this machine."""
        return SystemdRuntime(self.units_dir, SystemdManager(self.bus_address),
                              environment=lambda name: {**unit_environment(name, MACHINE_ID), "ODD": ODD},
                              dropin_directory=self.runtime_dir, by_names=by_names)

    def run(self, action: Callable[[SystemdRuntime], Awaitable[T]], by_names: bool = True) -> T:
        """Run ``action`` with a fresh runtime on a fresh event loop, closing the runtime afterwards."""
        async def main() -> T:
            runtime = self.runtime(by_names)
            try:
                return await action(runtime)
            finally:
                await runtime.close()
        return asyncio.run(main())


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    tmp = tmp_path_factory.mktemp("systemd-runtime")
    bus_dir, units_dir, runtime_dir = tmp / "dbus", tmp / "units", tmp / "systemd-system"
    for directory in (bus_dir, units_dir, runtime_dir):
        directory.mkdir()
    mounts = [(str(bus_dir), "/run/dbus"), (str(units_dir), str(units_dir)),
              (str(runtime_dir), SYSTEM_RUNTIME_UNITS)]
    (host,) = systemd_hosts.start_hosts(systemd_hosts.unique_names("fleet-rt", 1), mounts=mounts)
    try:
        deadline = time.monotonic() + 30
        while not (bus_dir / "system_bus_socket").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        yield Machine(host, bus_dir, units_dir, runtime_dir)
    finally:
        host.remove()


async def expect_state(runtime: SystemdRuntime, name: str, wanted: str, timeout: float = 15) -> None:
    """Poll ``states`` until ``name`` is ``wanted`` (``load/active/sub``); fail with the last state."""
    deadline = asyncio.get_running_loop().time() + timeout
    state = ""
    while asyncio.get_running_loop().time() < deadline:
        state = str((await runtime.states([name]))[name])
        if state == wanted:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name} is {state}, not {wanted}")


def test_unit_flow_load_start_stop_unload(machine: Machine) -> None:
    host = machine.host

    async def flow(runtime: SystemdRuntime) -> None:
        await runtime.load("hello.service", HELLO)
        await runtime.reload_daemon()
        path = machine.units_dir / "hello.service"
        assert path.read_text() == HELLO.text
        assert path.stat().st_mode & 0o777 == 0o644
        assert await runtime.units() == {"hello.service": HELLO.hash.hex}
        assert str((await runtime.states(["hello.service"]))["hello.service"]) == "loaded/inactive/dead"
        assert host.systemctl("is-enabled", "hello.service").strip() == "linked-runtime"

        await runtime.start("hello.service")
        await expect_state(runtime, "hello.service", "loaded/active/running")
        status = await runtime.status("hello.service")
        assert status is not None and status.main_pid
        assert host.unit_property("hello.service", "MainPID") == str(status.main_pid)
        await runtime.start("hello.service")  # already running: nothing happens
        assert (await runtime.status("hello.service")).main_pid == status.main_pid  # type: ignore[union-attr]

        await runtime.stop("hello.service")  # returns once it is down
        assert str((await runtime.states(["hello.service"]))["hello.service"]) == "loaded/inactive/dead"
        assert host.systemctl("is-active", "hello.service").strip() == "inactive"

        await runtime.start("hello.service")
        await expect_state(runtime, "hello.service", "loaded/active/running")
        await runtime.unload("hello.service")
        await runtime.reload_daemon()
        assert not path.exists()
        assert await runtime.units() == {}
        assert (await runtime.states(["hello.service"]))["hello.service"] == NOT_FOUND
        assert await runtime.status("hello.service") is None
        await runtime.unload("hello.service")  # unknown now: nothing to do
        with pytest.raises(UnitRuntimeError):
            await runtime.stop("hello.service")

    machine.run(flow)
    assert host.systemctl("is-active", "hello.service").strip() == "inactive"
    assert host.systemctl("is-enabled", "hello.service").strip() != "linked-runtime"


def test_install_section_enables_the_unit(machine: Machine) -> None:
    host = machine.host

    async def install(runtime: SystemdRuntime) -> None:
        await runtime.load("hello.service", HELLO)
        await runtime.load("discovery.service", DISCOVERY)
        await runtime.reload_daemon()
        assert host.systemctl("is-enabled", "discovery.service").strip() == "enabled-runtime"
        await runtime.start("hello.service")  # WantedBy= pulls discovery in, though no one started it
        await expect_state(runtime, "discovery.service", "loaded/active/running")
        await runtime.stop("hello.service")  # BindsTo= takes it down with hello
        await expect_state(runtime, "discovery.service", "loaded/inactive/dead")
        await runtime.unload("discovery.service")
        await runtime.unload("hello.service")
        await runtime.reload_daemon()

    machine.run(install)
    enabled = host.systemctl("is-enabled", "discovery.service").strip()
    assert enabled not in ("enabled-runtime", "linked-runtime")
    assert not list(machine.units_dir.iterdir())


def test_services_get_the_unit_environment_from_a_drop_in(machine: Machine) -> None:
    """Every process of a service sees ``FLEET_UNIT``, ``FLEET_MACHINE_ID`` and ``FLEET_DOCKER_LABELS``
    (four words in an ExecStart line, as ``docker run`` needs them) through a drop-in in systemd's
    runtime unit directory; the unit file stays fleet's text; unload removes the drop-in."""
    host = machine.host
    dropin = machine.runtime_dir / "env.service.d" / ENVIRONMENT_DROPIN

    async def environment(runtime: SystemdRuntime) -> None:
        await runtime.load("env.service", ENVIRONMENT)
        await runtime.reload_daemon()
        assert (machine.units_dir / "env.service").read_text() == ENVIRONMENT.text
        assert await runtime.units() == {"env.service": ENVIRONMENT.hash.hex}
        assert host.unit_property("env.service", "DropInPaths") == f"{SYSTEM_RUNTIME_UNITS}/env.service.d/" \
            f"{ENVIRONMENT_DROPIN}"
        await runtime.start("env.service")
        await expect_state(runtime, "env.service", "loaded/active/running")
        wanted = ["words=4", f"unit=env.service machine={MACHINE_ID}", f"odd={ODD}"]
        deadline = time.monotonic() + 15
        while not all(line in host.journal("env.service") for line in wanted) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert all(line in host.journal("env.service") for line in wanted), host.journal("env.service")
        labels = unit_environment("env.service", MACHINE_ID)["FLEET_DOCKER_LABELS"]
        assert f"FLEET_DOCKER_LABELS={labels}" in host.unit_property("env.service", "Environment")
        await runtime.unload("env.service")
        await runtime.reload_daemon()
        assert not dropin.exists() and not dropin.parent.exists()

    machine.run(environment)
    assert host.systemctl("is-active", "env.service").strip() == "inactive"


def test_loading_over_a_unit_without_install_drops_its_enablement(machine: Machine) -> None:
    """A unit loaded again with a file that has no ``[Install]`` section is only linked: the links the
    earlier file's ``WantedBy=`` made are gone."""
    host = machine.host
    plain = UnitFile.from_text(DISCOVERY.text.split("[Install]")[0])

    async def replace(runtime: SystemdRuntime) -> None:
        await runtime.load("discovery.service", DISCOVERY)
        await runtime.reload_daemon()
        assert host.systemctl("is-enabled", "discovery.service").strip() == "enabled-runtime"
        await runtime.load("discovery.service", plain)
        await runtime.reload_daemon()
        assert host.systemctl("is-enabled", "discovery.service").strip() == "linked-runtime"
        assert await runtime.units() == {"discovery.service": plain.hash.hex}
        await runtime.unload("discovery.service")
        await runtime.reload_daemon()

    machine.run(replace)
    assert not list(machine.units_dir.iterdir())


def test_units_systemd_refuses_fail_alone(machine: Machine) -> None:
    async def refused(runtime: SystemdRuntime) -> None:
        await runtime.load("noexec.service", NO_EXEC)  # systemd: no ExecStart=, bad-setting
        await runtime.load("alias.service", BAD_ALIAS)  # EnableUnitFiles answers an error
        await runtime.load("hello.service", HELLO)
        await runtime.reload_daemon()
        states = await runtime.states()
        assert {n: str(s) for n, s in states.items()} == {
            "alias.service": "error/inactive/dead", "hello.service": "loaded/inactive/dead",
            "noexec.service": "bad-setting/inactive/dead"}
        for name in ("noexec.service", "alias.service"):
            with pytest.raises(UnitRuntimeError) as failure:
                await runtime.start(name)
            status = await runtime.status(name)
            assert status is not None and status.load_error, name
            assert str(failure.value)
        assert "systemd refused the unit" in (await runtime.status("alias.service")).load_error  # type: ignore
        await runtime.start("hello.service")
        await expect_state(runtime, "hello.service", "loaded/active/running")

    machine.run(refused)

    async def after_restart(runtime: SystemdRuntime) -> None:
        """A new runtime (fleetd restarted) still knows why alias.service cannot run; unload clears it."""
        assert str((await runtime.states(["alias.service"]))["alias.service"]) == "error/inactive/dead"
        for name in ("noexec.service", "alias.service", "hello.service"):
            await runtime.unload(name)
        await runtime.reload_daemon()
        assert await runtime.units() == {}
        assert not list(machine.units_dir.iterdir())

    machine.run(after_restart)


def test_states_without_list_units_by_names(machine: Machine) -> None:
    async def compare(runtime: SystemdRuntime) -> None:
        await runtime.load("hello.service", HELLO)
        await runtime.load("discovery.service", DISCOVERY)
        await runtime.reload_daemon()
        await runtime.start("hello.service")
        await expect_state(runtime, "hello.service", "loaded/active/running")
        await runtime.stop("discovery.service")
        names = ["hello.service", "discovery.service", "absent.service"]
        fallback = SystemdRuntime(machine.units_dir, runtime.manager, by_names=False)
        assert await fallback.states(names) == await runtime.states(names)
        assert str((await fallback.states(["hello.service"]))["hello.service"]) == "loaded/active/running"
        await fallback.stop("hello.service")  # waiting for the job works the same way
        assert str((await runtime.states(["hello.service"]))["hello.service"]) == "loaded/inactive/dead"
        for name in ("discovery.service", "hello.service"):
            await runtime.unload(name)
        await runtime.reload_daemon()

    machine.run(compare)


def test_without_a_bus_operations_fail_and_states_stay(machine: Machine, tmp_path: Path) -> None:
    async def no_bus() -> None:
        runtime = SystemdRuntime(tmp_path / "units", SystemdManager(f"unix:path={tmp_path}/no-bus"))
        with pytest.raises(UnitRuntimeError, match=r"cannot load hello\.service"):
            await runtime.load("hello.service", HELLO)
        assert await runtime.units() == {}  # nothing left behind: the next round loads again
        with pytest.raises(UnitRuntimeError):
            await runtime.reload_daemon()
        assert await runtime.states(["hello.service"]) == {"hello.service": NOT_FOUND}
        await runtime.close()

    asyncio.run(no_bus())
    assert os.path.isdir(tmp_path / "units")

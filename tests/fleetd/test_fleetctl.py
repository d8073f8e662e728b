"""fleetctl as a subprocess, through fleetd's API (unix socket) and straight to etcd (``--driver=etcd``).

The registry is a real reference etcd; the API runs in process. Since no daemon runs here, a small
stand-in agent schedules units on the first machine and publishes the states a real agent would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetd.etcd import EtcdException
from fleetd.job import JobState, UnitState
from fleetd.registry.registry import Registry
from tests import harness
from tests.fleetd.test_api import M1, M2, Cluster

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "/ctl-test/"
HELLO = '[Unit]\nDescription=Hello\n\n# comment\n[Service]\nExecStart=/bin/sh -c "echo hi; sleep 1000"\n'
PINNED = "[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineID=ffffffff\n"
GLOBAL = "[Service]\nExecStart=/bin/true\n[X-Fleet]\nGlobal=true\n"


async def stand_in_agent(cluster: Cluster) -> None:
    """Place wanted units on M1 (or publish why not) and publish the states an agent would; like a real
    agent, it retries after an etcd failure. Rounds never overlap ``Cluster.reset``."""
    while True:
        with contextlib.suppress(EtcdException):
            async with cluster.quiet:
                await stand_in_round(cluster.registry)
        await asyncio.sleep(0.1)


async def stand_in_round(registry: Registry) -> None:
    """One round of ``stand_in_agent``."""
    read = await registry.read()
    published = {(s.unit_name, s.machine_id): s for s in read.snapshot.unit_states}
    machines = read.snapshot.machines
    for job in read.jobs:
        unit = read.snapshot.units.get(job.name)
        if unit is None or unit.is_global:
            continue
        if job.target_state is JobState.INACTIVE:
            if job.target_machine_id:
                await registry.unschedule_unit(job.name, job.target_machine_id)
                await registry.remove_unit_state(job.name)
                await registry.clear_job_heartbeat(job.name)
            continue
        wanted = unit.requirements.machine_id
        if not job.target_machine_id:
            if wanted and not any(m.match_id(wanted) for m in machines):
                await registry.set_unplaced_reason(job.name, f"no machine has ID {wanted}")
            else:
                await registry.schedule_unit(job.name, M1.id)
            continue
        running = job.target_state is JobState.LAUNCHED
        state = UnitState(
            job.name,
            M1.id,
            unit.hash,
            "loaded",
            "active" if running else "inactive",
            "running" if running else "dead",
        )
        if not state.same_systemd_state(published.get((job.name, M1.id))):
            await registry.save_unit_state(state, 30)
        if running and job.heartbeat != M1.id:
            await registry.job_heartbeat(job.name, M1.id, 30)
        elif not running and job.heartbeat:
            await registry.clear_job_heartbeat(job.name)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, harness.Server]]:
    etcd = harness.reference_etcd(tmp_path_factory.mktemp("etcd")).start()
    cluster = Cluster(etcd.url, tmp_path_factory.mktemp("api") / "fleet.sock", PREFIX)
    cluster.open[0] = True
    cluster.keep_present(M1, M2)
    cluster.in_background(stand_in_agent(cluster))
    yield cluster, etcd
    cluster.close()
    etcd.stop()


@pytest.fixture(params=["API", "etcd"])
def fleetctl(
    request: pytest.FixtureRequest, cluster: tuple[Cluster, harness.Server], tmp_path: Path
) -> Iterator[Fleetctl]:
    api, etcd = cluster
    api.reset()
    if request.param == "API":
        yield Fleetctl([f"--endpoint=unix://{api.sock}"], tmp_path)
    else:
        yield Fleetctl(["--driver=etcd", f"--endpoint={etcd.url}", f"--etcd-key-prefix={PREFIX}"], tmp_path)


class Fleetctl:
    """Runs fleetctl in ``cwd`` with the connection flags of one driver."""

    def __init__(self, flags: list[str], cwd: Path) -> None:
        self.flags = flags
        self.cwd = cwd

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, flags: bool = True
    ) -> subprocess.CompletedProcess[str]:
        environ = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "fleetd.ctl", *(self.flags if flags else []), *args],
            cwd=self.cwd,
            env=environ,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def write(self, name: str, text: str) -> None:
        (self.cwd / name).write_text(text)


def expect(result: subprocess.CompletedProcess[str], code: int, stdout: str = "", stderr: str = "") -> None:
    assert (result.returncode, result.stdout, result.stderr) == (code, stdout, stderr)


# ---------------------------------------------------------------------------------------------------


def test_unit_lifecycle(fleetctl: Fleetctl) -> None:
    fleetctl.write("hello.service", HELLO)
    expect(fleetctl("submit", "hello.service"), 0, "Unit hello.service inactive\n")
    expect(fleetctl("submit", "hello"), 0)
    expect(
        fleetctl("cat", "hello.service"),
        0,
        '[Unit]\nDescription=Hello\n\n[Service]\nExecStart=/bin/sh -c "echo hi; sleep 1000"\n',
    )
    short = fleetctl_hash(HELLO)[:7]
    expect(
        fleetctl("list-unit-files"),
        0,
        f"UNIT\t\tHASH\tDSTATE\t\tSTATE\t\tTARGET\nhello.service\t{short}\tinactive\tinactive\t-\n",
    )
    expect(
        fleetctl("start", "--block-attempts=10", "hello.service"),
        0,
        "Unit hello.service launched on 10000000.../127.0.0.1\n",
    )
    expect(
        fleetctl("list-units"),
        0,
        "UNIT\t\tMACHINE\t\t\tACTIVE\tSUB\nhello.service\t10000000.../127.0.0.1\tactive\trunning\n",
    )
    expect(
        fleetctl("list-units", "--no-legend", "--fields=unit,load,hash", "-l"),
        0,
        f"hello.service\tloaded\t{fleetctl_hash(HELLO)}\n",
    )
    expect(fleetctl("list-units", "--fields=unit,container"), 0, "UNIT\t\tCONTAINER\nhello.service\t-\n")
    expect(
        fleetctl("list-unit-files", "--fields=unit,desc,global,tmachine", "--full"),
        0,
        "UNIT\t\tDESC\tGLOBAL\tTMACHINE\n"
        "hello.service\tHello\tfalse\t10000000000000000000000000000001/127.0.0.1\n",
        'WARNING: The "tmachine" field is deprecated, use "target" instead.\n',
    )
    expect(
        fleetctl("stop", "--block-attempts=10", "hello"),
        0,
        "Unit hello.service loaded on 10000000.../127.0.0.1\n",
        "Successfully stopped units [hello.service].\n",
    )
    expect(fleetctl("stop", "hello"), 0)
    expect(
        fleetctl("unload", "--block-attempts=10", "hello"),
        0,
        "Unit hello.service inactive\n",
        "Successfully unloaded units [hello.service].\n",
    )
    expect(fleetctl("stop", "hello"), 1, "", "Unable to stop unit hello.service in state inactive\n")
    expect(fleetctl("destroy", "hello"), 0, "Destroyed hello.service\n")
    expect(fleetctl("destroy", "hello"), 0, "", "Units not found in registry\n")
    expect(fleetctl("cat", "hello"), 1, "", "Unit hello.service not found\n")


def fleetctl_hash(text: str) -> str:
    from fleetd.unit import UnitFile

    return UnitFile.from_text(text).hash.hex


def test_templates_replacement_and_global_units(fleetctl: Fleetctl) -> None:
    fleetctl.write("web@.service", HELLO)
    expect(fleetctl("submit", "web@.service"), 0, "Unit web@.service inactive\n")
    expect(
        fleetctl("load", "--no-block", "web@1"),
        0,
        "Unit web@1.service inactive\nTriggered unit web@1.service load\n",
    )
    expect(
        fleetctl("load", "web@.service"),
        1,
        "",
        'Error loading units: googleapi: Error 400: cannot activate template "web@.service"\n',
    )
    fleetctl.write("web@.service", HELLO + "[X-Fleet]\nConflicts=web@*\n")
    expect(
        fleetctl("submit", "web@.service"),
        0,
        "",
        "WARNING: Unit web@.service in registry differs from "
        "local unit file web@.service. Add --replace to override.\n",
    )
    expect(fleetctl("submit", "--replace", "web@.service"), 0)
    assert "Conflicts=web@*" in fleetctl("cat", "web@.service").stdout
    fleetctl.write("mon.service", GLOBAL)
    expect(
        fleetctl("start", "mon.service"),
        0,
        "Unit mon.service inactive\nTriggered global unit mon.service start\n",
    )
    expect(
        fleetctl("list-unit-files", "--no-legend", "--fields=unit,dstate,state,target"),
        0,
        "mon.service\tlaunched\t-\t\tglobal\nweb@.service\tinactive\tinactive\t-\n"
        "web@1.service\tloaded\t\tloaded\t\t10000000.../127.0.0.1\n",
    )
    expect(
        fleetctl("submit", "missing@1.service"),
        1,
        "",
        "Error creating units: unable to find Unit(missing@1.service) in Registry or on filesystem\n",
    )
    expect(
        fleetctl("submit", "--sign", "mon.service"),
        2,
        "",
        "WARNING: The signed/verified units feature is DEPRECATED and cannot be used.\n",
    )


def test_start_of_an_unplaceable_unit_says_why(fleetctl: Fleetctl) -> None:
    fleetctl.write("pinned.service", PINNED)
    result = fleetctl("start", "--block-attempts=1", "pinned.service")
    assert result.returncode == 1
    assert result.stdout == "Unit pinned.service inactive\n"
    assert "Unit pinned.service cannot be placed yet: no machine has ID ffffffff\n" in result.stderr
    assert result.stderr.endswith(
        "Error waiting for units: timed out waiting for unit pinned.service to report state launched\n"
    )


def test_list_machines(fleetctl: Fleetctl) -> None:
    expect(
        fleetctl("list-machines"),
        0,
        "MACHINE\t\tIP\t\tMETADATA\n10000000...\t127.0.0.1\tdisk=ssd,region=east\n"
        "20000000...\t127.0.0.2\t-\n",
    )
    expect(
        fleetctl("list-m", "--full", "--no-legend", "--fields=ip,machine"),
        0,
        f"127.0.0.1\t{M1.id}\n127.0.0.2\t{M2.id}\n",
    )
    expect(fleetctl("list-machines", "--fields=ip,zone"), 1, "", 'Invalid key in output format: "zone"\n')


def test_status_is_read_from_the_units_machine(fleetctl: Fleetctl) -> None:
    fleetctl.write("hello.service", HELLO)
    expect(fleetctl("status", "hello.service"), 1, "", "Unit hello.service does not exist.\n")
    expect(
        fleetctl("load", "hello.service"),
        0,
        "Unit hello.service inactive\nUnit hello.service loaded on 10000000.../127.0.0.1\n",
    )
    result = fleetctl("status", "hello.service")
    assert result.returncode == 0, result.stderr
    assert "   Active: active (running) since" in result.stdout
    assert result.stdout.endswith("line 18\nline 19\n")
    expect(fleetctl("journal", "--lines=2", "hello"), 0, "line 18\nline 19\n")
    expect(
        fleetctl("unload", "hello"),
        0,
        "Unit hello.service inactive\n",
        "Successfully unloaded units [hello.service].\n",
    )
    expect(fleetctl("journal", "hello"), 1, "", "Unit hello.service does not appear to be loaded.\n")


def test_environment_and_errors(fleetctl: Fleetctl, cluster: tuple[Cluster, harness.Server]) -> None:
    api, _ = cluster
    result = fleetctl(
        "list-machines",
        "--no-legend",
        "--fields=ip",
        flags=False,
        env={"FLEETCTL_ENDPOINT": f"unix://{api.sock}"},
    )
    expect(result, 0, "127.0.0.1\n127.0.0.2\n")
    result = fleetctl("list-machines", flags=False, env={"FLEETCTL_ENDPOINT": "unix:///nonexistent.sock"})
    assert result.returncode == 1
    assert result.stderr.startswith("Error retrieving list of active machines: unable to connect to")
    assert result.stderr.endswith(
        "Possible issues:\n  etcd is unhealthy and/or lost quorum\n"
        "  connection cannot be established to any etcd servers\n"
    )


def test_commands_without_a_cluster(tmp_path: Path) -> None:
    run = Fleetctl(["--endpoint=unix:///nonexistent.sock"], tmp_path)
    expect(run("version"), 0, "fleetctl version v1.0.0\n")
    expect(run("--version", flags=False), 0, "fleetctl version v1.0.0\n")
    expect(
        run("verify", "x.service"),
        2,
        "",
        "WARNING: The signed/verified units feature is DEPRECATED and cannot be used.\n",
    )
    for args in ((), ("help",), ("--help",), ("-h",)):
        result = run(*args, flags=False)
        assert result.returncode == 0
        assert "VERSION:\n\tv1.0.0" in result.stdout and "GLOBAL OPTIONS:" in result.stdout
    result = run("help", "list-units")
    assert result.returncode == 0 and "--full, --l" in result.stdout and "OPTIONS:" in result.stdout
    expect(
        run("bogus"),
        1,
        "",
        'Error: unknown command "bogus" for "fleetctl"\nRun \'fleetctl help\' for usage.\n',
    )
    expect(
        run("list-units", "--nope"), 1, "", "Error: unknown flag: --nope\nRun 'fleetctl help' for usage.\n"
    )

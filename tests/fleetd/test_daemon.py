"""fleetd as a user runs it: three real fleetd processes (built-in supervisor, real ``/bin/sleep`` units)
each serving its API on TCP, over a real registry: the reference etcd, and a 3-member fastkv cluster whose
three client URLs every fleetd is given (each in another order, so each prefers another member). Units
are submitted by writing the registry, as ``fleetctl --driver=etcd`` does, or with ``fleetctl`` against
one machine's API; what runs is checked in the registry and in ``/proc``."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from fleetd.daemon import Options, build_config, parse_args
from fleetd.etcd import EtcdClient, EtcdException
from fleetd.job import JobState, Unit
from fleetd.registry.layout import Layout, RegistrySnapshot
from fleetd.registry.registry import Registry
from fleetd.runtime.supervisor import same_process
from fleetd.unit import UnitFile
from tests import harness
from tests.fleetd.test_fleetctl import Fleetctl

T = TypeVar("T")
PREFIX = "/fleet-test/"
REGISTRIES = ("etcd", "fastkv3")
IDS = ("1" * 32, "2" * 32, "3" * 32)
METADATA = ("role=web,disk=ssd", "role=web", "role=db")
#: agent_ttl per registry: a 3-member registry must outlive a leader election (1-3 s on a loaded
#: machine) plus a heartbeat that timed out and its retry, or machines expire during a failover
#: (a real deployment keeps fleet's 30 s).
TTL = {"etcd": 2, "fastkv3": 8}


def sleeper(extra: str = "") -> UnitFile:
    return UnitFile.from_text(f"[Service]\nExecStart=/bin/sleep 1000\n{extra}")


# ---------------------------------------------------------------------------------------------------
# Command line (no processes)


def test_version_and_bad_flags() -> None:
    for argv in (["-version"], ["--version"], ["version"]):
        done = subprocess.run([sys.executable, "-m", "fleetd.daemon", *argv], capture_output=True, text=True,
                              timeout=30, check=False)
        assert (done.returncode, done.stdout) == (0, "fleetd version 1.0.0\n")
    done = subprocess.run([sys.executable, "-m", "fleetd.daemon", "-no_such_flag"], capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert "flag provided but not defined: -no_such_flag" in done.stderr


def test_every_config_key_is_a_flag_and_flags_win(tmp_path: Path) -> None:
    conf = tmp_path / "fleet.conf"
    conf.write_text("metadata = region=file\nagent_ttl = 30s\nengine_reconcile_interval = 3\n")
    options = parse_args(["-config", str(conf), "--metadata=region=flag", "-agent-ttl", "5s",
                          "-disable_engine", "-keep_units_on_exit"])
    assert options == Options(str(conf), {"metadata": "region=flag", "agent_ttl": "5s",
                                          "disable_engine": "true", "keep_units_on_exit": "true"})
    config = build_config(options, {"FLEET_METADATA": "region=env", "FLEET_ENGINE_RECONCILE_INTERVAL": "7"})
    assert dict(config.metadata) == {"region": "flag"}
    assert (config.agent_ttl, config.engine_reconcile_interval, config.disable_engine) == (5.0, 7.0, True)
    assert config.keep_units_on_exit
    conf.write_text("keep_units_on_exit = true\n")
    flag_wins = build_config(parse_args(["-config", str(conf), "-keep_units_on_exit=false"]), {})
    assert not flag_wins.keep_units_on_exit


# ---------------------------------------------------------------------------------------------------
# A cluster of real processes


def _alive(pid: int | None) -> bool:
    """True for a live, non-zombie process."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


@dataclass
class Fleetd:
    """One fleetd process with its own machine ID, metadata, state directory and log."""

    machine_id: str
    home: Path
    etcd_urls: list[str]
    metadata: str
    ttl: float
    api_port: int = 0
    extra_config: str = ""
    process: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    @property
    def units_dir(self) -> Path:
        return self.home / "units"

    @property
    def config_file(self) -> Path:
        return self.home / "fleet.conf"

    def write_config(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(f"etcd_servers = {','.join(self.etcd_urls)}\netcd_key_prefix = {PREFIX}\n"
                        f"machine_id = {self.machine_id}\nmetadata = {self.metadata}\npublic_ip = 127.0.0.1\n"
                        f"agent_ttl = {self.ttl}s\nengine_reconcile_interval = 0.5\n"
                        f"units_directory = {self.units_dir}\nruntime = supervisor\n"
                                    f"api_listen = {f'127.0.0.1:{self.api_port}' if self.api_port else ''}\n"
                                    + self.extra_config)

    def start(self, *flags: str) -> Fleetd:
        self.write_config()
        log_path = self.home / f"fleetd.{len(self.logs)}.log"
        self.logs.append(log_path)
        argv = [sys.executable, "-m", "fleetd.daemon", "-config", str(self.config_file), *flags]
        with open(log_path, "wb") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        return self

    def log(self) -> str:
        return self.logs[-1].read_text(errors="replace") if self.logs else ""

    def send(self, sig: int) -> int:
        """Send ``sig`` and wait for the exit status."""
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(20)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def unit_pid(self, name: str) -> int | None:
        """The main PID of ``name`` as run by this machine's supervisor, if that process lives."""
        try:
            pid = json.loads((self.units_dir / "run" / f"{name}.json").read_text()).get("main_pid")
        except (OSError, ValueError):
            return None
        return pid if isinstance(pid, int) and _alive(pid) else None

    def kill_orphans(self) -> None:
        """SIGKILL the unit processes this machine left behind (after a crash), by their PIDs."""
        for record in (self.units_dir / "run").glob("*.json"):
            run = json.loads(record.read_text())
            pid = run.get("main_pid")
            if isinstance(pid, int) and same_process(pid, run.get("main_start", -1)):  # never a reused PID
                os.kill(pid, signal.SIGKILL)


class RegistryServers:
    """The registry under test: the reference etcd (``etcd``) or a 3-member fastkv cluster (``fastkv3``)."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind = kind
        self.servers = [harness.reference_etcd(tmp)] if kind == "etcd" else harness.fastkv_cluster(tmp, 3)

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    def start(self) -> None:
        """Start every member that is not running (on its data directory: a restart keeps the data)."""
        harness.start_all([s for s in self.servers if s.process is None or s.process.poll() is not None])

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def leader(self) -> harness.Server | None:
        """The member that says it leads (None while there is no leader)."""
        for server in self.servers:
            try:
                with urllib.request.urlopen(server.url + "/v2/stats/self", timeout=1) as response:
                    if json.load(response).get("state") == "StateLeader":
                        return server
            except (OSError, ValueError):
                continue
        return None


class Cluster:
    """A registry and three fleetds; registry helpers run on a fresh event loop per call."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.registry_servers = RegistryServers(kind, tmp)
        self.ttl = TTL[kind]
        self.registry_servers.start()
        urls = self.registry_servers.urls
        self.machines = [Fleetd(mid, tmp / f"m{i + 1}", urls[i % len(urls):] + urls[:i % len(urls)], meta,
                                 self.ttl)
                         for i, (mid, meta) in enumerate(zip(IDS, METADATA, strict=True))]
        for machine in self.machines:
            machine.api_port = harness.free_port()
            machine.start()

    def registry(self, action: Callable[[Registry], Awaitable[T]]) -> T:
        async def main() -> T:
            async with EtcdClient(self.registry_servers.urls) as client:
                return await action(Registry(client, Layout(PREFIX)))
        return asyncio.run(main())

    def snapshot(self) -> RegistrySnapshot:
        async def read(reg: Registry) -> RegistrySnapshot:
            return (await reg.read()).snapshot
        return self.registry(read)

    def submit(self, *units: tuple[str, UnitFile]) -> None:
        async def create(reg: Registry) -> None:
            for name, unit_file in units:
                await reg.create_unit(Unit(name, unit_file, JobState.LAUNCHED))
        self.registry(create)

    def submitted(self, *units: tuple[str, UnitFile]) -> bool:
        """``submit``, True once done (for ``wait``: a registry electing a leader refuses writes)."""
        self.submit(*units)
        return True

    def destroy(self, *names: str) -> None:
        async def destroy(reg: Registry) -> None:
            for name in names:
                await reg.destroy_unit(name)
        self.registry(destroy)

    def machine(self, machine_id: str) -> Fleetd:
        return next(m for m in self.machines if m.machine_id == machine_id)

    def wait(self, what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Poll ``check`` until it returns something truthy; fail with ``what`` and the logs otherwise.
        A registry that cannot answer right now (an election, a restart) counts as "not yet"."""
        deadline = time.monotonic() + timeout
        error: EtcdException | None = None
        while time.monotonic() < deadline:
            try:
                result = check()
            except EtcdException as err:
                result, error = None, err
            if result:
                return result
            time.sleep(0.1)
        logs = "\n".join(f"--- {m.machine_id[:8]}\n{m.log()[-3000:]}" for m in self.machines)
        raise AssertionError(f"timed out waiting for {what} (last registry error: {error})\n{logs}")

    def running(self, name: str) -> str | None:
        """The machine ``name`` is scheduled to, once that machine runs it and says so in the registry."""
        snap = self.snapshot()
        target = snap.schedule.get(name)
        if not target or snap.current_states.get(name) is not JobState.LAUNCHED:
            return None
        states = {s.machine_id: s for s in snap.unit_states if s.unit_name == name}
        state = states.get(target)
        if state is None or (state.active_state, state.sub_state) != ("active", "running"):
            return None
        return target if self.machine(target).unit_pid(name) else None

    def running_elsewhere(self, name: str, machine_id: str) -> str | None:
        """``running(name)``, but only once that is not ``machine_id``."""
        where = self.running(name)
        return where if where != machine_id else None

    def run_pinned(self, name: str, machine: Fleetd) -> int:
        """Submit a sleeper pinned to ``machine``, wait until it runs there; its main PID."""
        self.submit((name, sleeper(f"[X-Fleet]\nMachineID={machine.machine_id}\n")))
        self.wait(f"{name} running", lambda: self.running(name))
        return self.wait(f"{name}'s PID", lambda: machine.unit_pid(name))

    def destroyed(self, *names: str) -> bool:
        """``destroy``, True once done (for ``wait``: a write that timed out is simply tried again)."""
        self.destroy(*names)
        return True

    def destroy_and_wait(self, *names: str) -> None:
        self.wait(f"{names} destroyed", lambda: self.destroyed(*names))
        self.wait(f"{names} stopped everywhere", lambda: not any(
            m.unit_pid(n) for m in self.machines for n in names))

    def close(self) -> None:
        for machine in self.machines:
            machine.kill()
            machine.kill_orphans()
        self.registry_servers.stop()


@pytest.fixture(scope="module", params=REGISTRIES)
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(request.param, tmp_path_factory.mktemp(f"fleet-{request.param}"))
    try:
        cluster.wait("three machines", lambda: len(cluster.snapshot().machines) == 3)
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(autouse=True)
def no_units_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test on the shared cluster, destroy whatever units a failed test left, so that one
    failure does not spill into the tests after it."""
    yield
    if "cluster" in request.fixturenames:
        cluster: Cluster = request.getfixturevalue("cluster")
        (left,) = cluster.wait("the unit list", lambda: (list(cluster.snapshot().units),))
        if left:
            cluster.destroy_and_wait(*left)


def test_api_is_served_once_registered(cluster: Cluster) -> None:
    url = f"http://127.0.0.1:{cluster.machines[0].api_port}/fleet/v1/machines"
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    assert sorted(m["id"] for m in body["machines"]) == sorted(IDS)


def api_fleetctl(cluster: Cluster, cwd: Path) -> Fleetctl:
    """fleetctl talking to machine 1's API over TCP."""
    return Fleetctl([f"--endpoint=http://127.0.0.1:{cluster.machines[0].api_port}"], cwd)


def output_with(fleetctl: Fleetctl, text: str, *args: str) -> str:
    """fleetctl's output of ``args`` if it contains ``text``, else ``""`` (for ``Cluster.wait``)."""
    out = fleetctl(*args).stdout
    return out if text in out else ""


def test_fleetctl_through_one_machines_api(cluster: Cluster, tmp_path: Path) -> None:
    """A unit's whole life with fleetctl talking to machine 1's API, while machine 2 runs the unit:
    state from the real supervisor, status and journal fetched from machine 2's API (no SSH)."""
    fleetctl = api_fleetctl(cluster, tmp_path)
    fleetctl.write("e2e.service", "[Unit]\nDescription=End to end\n[Service]\n"
                   'ExecStart=/bin/sh -c "echo hello from e2e; exec sleep 1000"\n'
                   f"[X-Fleet]\nMachineID={IDS[1]}\n")
    there = f"{IDS[1][:8]}.../127.0.0.1"
    assert fleetctl("submit", "e2e.service").stdout == "Unit e2e.service inactive\n"
    started = fleetctl("start", "--block-attempts=20", "e2e.service")
    assert (started.returncode, started.stdout) == (0, f"Unit e2e.service launched on {there}\n"), started
    pid = cluster.wait("e2e running", lambda: cluster.machine(IDS[1]).unit_pid("e2e.service"))
    listed = cluster.wait("listed", lambda: output_with(fleetctl, "running", "list-units", "--no-legend"))
    assert listed == f"e2e.service\t{there}\tactive\trunning\n"
    status = fleetctl("status", "e2e.service")
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("● e2e.service - End to end\n")
    assert "   Active: active (running) since" in status.stdout
    assert f" Main PID: {pid}\n" in status.stdout and f"  Machine: {IDS[1]}\n" in status.stdout
    journal = cluster.wait("output journaled", lambda: output_with(fleetctl, "hello", "journal", "e2e"))
    assert f"e2e.service[{pid}]: hello from e2e\n" in journal
    stopped = fleetctl("stop", "--block-attempts=20", "e2e.service")
    assert (stopped.returncode, stopped.stdout) == (0, f"Unit e2e.service loaded on {there}\n"), stopped
    cluster.wait("e2e's process gone", lambda: not _alive(pid))
    assert fleetctl("destroy", "e2e.service").stdout == "Destroyed e2e.service\n"
    assert fleetctl("list-unit-files", "--no-legend").stdout == ""


def test_fleetctl_start_of_an_unplaceable_unit_says_why(cluster: Cluster, tmp_path: Path) -> None:
    fleetctl = api_fleetctl(cluster, tmp_path)
    fleetctl.write("nowhere.service", sleeper("[X-Fleet]\nMachineMetadata=role=none\n").text)
    started = fleetctl("start", "--block-attempts=3", "nowhere.service")
    reason = cluster.registry(lambda reg: reg.unplaced_reason("nowhere.service"))
    assert reason is not None and "metadata" in reason
    assert (started.returncode, started.stdout) == (1, "Unit nowhere.service inactive\n")
    assert started.stderr == (f"Unit nowhere.service cannot be placed yet: {reason}\n"
                              "Error waiting for units: timed out waiting for unit nowhere.service to report "
                              "state launched\n")
    assert fleetctl("destroy", "nowhere.service").stdout == "Destroyed nowhere.service\n"
    cluster.wait("reason withdrawn", lambda: not cluster.registry(lambda reg: reg.unplaced_reasons()))


def test_units_are_spread_over_idle_machines_and_run(cluster: Cluster) -> None:
    names = ("a.service", "b.service", "c.service")
    cluster.submit(*((name, sleeper()) for name in names))
    placed = [cluster.wait(f"{name} running", functools.partial(cluster.running, name)) for name in names]
    assert sorted(placed) == sorted(IDS)
    machines = {m.id: m for m in cluster.snapshot().machines}
    assert machines[IDS[0]].metadata == {"role": "web", "disk": "ssd"}
    assert machines[IDS[0]].public_ip == "127.0.0.1"
    assert "Scheduled Unit(a.service) to Machine(" in "".join(m.log() for m in cluster.machines)
    cluster.destroy_and_wait(*names)
    cluster.wait("unit states withdrawn", lambda: not cluster.snapshot().unit_states)


def test_machine_of_conflicts_global_and_unplaced_reasons(cluster: Cluster) -> None:
    conflicts = [f"conflict.{i}.service" for i in range(4)]
    cluster.submit(("ping.service", sleeper()),
                   ("pong.service", sleeper("[X-Fleet]\nMachineOf=ping.service\n")),
                   *((name, sleeper("[X-Fleet]\nConflicts=conflict.*.service\n")) for name in conflicts),
                   ("mon.service", sleeper("[X-Fleet]\nGlobal=true\nMachineMetadata=role=web\n")),
                   ("nowhere.service", sleeper("[X-Fleet]\nMachineMetadata=role=none\n")))
    ping = cluster.wait("ping running", lambda: cluster.running("ping.service"))
    assert cluster.wait("pong running", lambda: cluster.running("pong.service")) == ping

    def conflicts_settled() -> list[str] | None:
        placed = [m for m in map(cluster.running, conflicts) if m]
        return placed if len(placed) == 3 else None
    assert len(set(cluster.wait("3 conflicting units running", conflicts_settled))) == 3

    web = [m for m in cluster.machines if "role=web" in m.metadata]
    cluster.wait("global unit on web machines", lambda: all(m.unit_pid("mon.service") for m in web))
    assert not cluster.machine(IDS[2]).unit_pid("mon.service")
    reasons = cluster.wait("unplaced reasons", lambda: (lambda r: r if len(r) == 2 else None)(
        cluster.registry(lambda reg: reg.unplaced_reasons())))
    unplaced = next(name for name in conflicts if name in reasons)
    assert "conflict" in reasons[unplaced]
    assert "metadata" in reasons["nowhere.service"]

    cluster.destroy_and_wait("ping.service", "pong.service", "mon.service", "nowhere.service", *conflicts)
    cluster.wait("reasons withdrawn", lambda: not cluster.registry(lambda reg: reg.unplaced_reasons()))


def test_templates_with_specifiers_in_metadata_and_machine_id(cluster: Cluster) -> None:
    """Instances of one template land where their instance name says (``%i`` in ``[X-Fleet]``); an
    instance no machine matches stays unplaced with the reason."""
    by_role = sleeper("[X-Fleet]\nMachineMetadata=role=%i\n")
    pinned = sleeper("[X-Fleet]\nMachineID=%i\n")
    cluster.submit(("meta@db.service", by_role), ("meta@none.service", by_role),
                   (f"pin@{IDS[1]}.service", pinned))
    assert cluster.wait("meta@db running", lambda: cluster.running("meta@db.service")) == IDS[2]
    assert cluster.wait("pin running", lambda: cluster.running(f"pin@{IDS[1]}.service")) == IDS[1]
    reasons = cluster.wait("meta@none unplaced", lambda: cluster.registry(lambda reg: reg.unplaced_reasons()))
    assert "metadata" in reasons["meta@none.service"]
    assert not cluster.snapshot().schedule.get("meta@none.service")
    cluster.destroy_and_wait("meta@db.service", "meta@none.service", f"pin@{IDS[1]}.service")


def test_replaces_takes_the_machine_and_moves_the_replaced_unit(cluster: Cluster) -> None:
    cluster.submit(("replace.0.service", sleeper()))
    first = cluster.wait("replace.0 running", lambda: cluster.running("replace.0.service"))
    old_pid = cluster.machine(first).unit_pid("replace.0.service")
    cluster.submit(("replace-kick0.service",
                    sleeper(f"[X-Fleet]\nReplaces=replace.0.service\nMachineID={first}\n")))
    assert cluster.wait("kick running", lambda: cluster.running("replace-kick0.service")) == first
    cluster.wait("replace.0 moved", lambda: cluster.running_elsewhere("replace.0.service", first))
    cluster.wait("replace.0 stopped on the first machine", lambda: not _alive(old_pid))
    assert not cluster.machine(first).unit_pid("replace.0.service")
    cluster.destroy_and_wait("replace.0.service", "replace-kick0.service")


def test_units_of_a_killed_machine_move_after_agent_ttl(cluster: Cluster) -> None:
    cluster.submit(("ping.service", sleeper()),
                   ("pong.service", sleeper("[X-Fleet]\nMachineOf=ping.service\n")))
    first = cluster.wait("ping running", lambda: cluster.running("ping.service"))
    assert cluster.wait("pong running", lambda: cluster.running("pong.service")) == first
    victim = cluster.machine(first)
    orphan = victim.unit_pid("ping.service")
    victim.kill()
    cluster.wait("machine gone", lambda: first not in {m.id for m in cluster.snapshot().machines},
                 cluster.ttl + 5)
    moved = cluster.wait("ping moved", lambda: cluster.running_elsewhere("ping.service", first))
    assert cluster.wait("pong moved", lambda: cluster.running("pong.service")) == moved
    assert _alive(orphan)  # a crashed fleetd's units run on: nothing could stop them

    victim.start()  # the restarted agent finds units that are scheduled elsewhere now and stops them
    cluster.wait("orphans stopped", lambda: not _alive(orphan) and not victim.unit_pid("pong.service"))
    assert 'type=UnloadUnit job=ping.service reason="unit loaded but not scheduled here"' in victim.log()
    cluster.destroy_and_wait("ping.service", "pong.service")


def test_sigquit_restart_keeps_units_running(cluster: Cluster) -> None:
    m1 = cluster.machine(IDS[0])
    pid = cluster.run_pinned("keep.service", m1)
    assert m1.send(signal.SIGQUIT) == 0
    assert _alive(pid)
    m1.start()
    # It takes over the live registration, or registers anew if the key's short TTL ran out while
    # the new process started (a slow machine): either way the machine never left for long enough
    # for the engine to move its unit (the asserts below).
    cluster.wait("registered again", lambda: "Took over the registration" in m1.log()
                 or f"Registered Machine({IDS[0]})" in m1.log())
    ready = "Agent ready: 1 unit(s) wanted here, 1 loaded"
    cluster.wait("the new agent reconciled", lambda: ready in m1.log())
    time.sleep(1.0)  # a window in which a wrong restart or unload would show
    assert m1.unit_pid("keep.service") == pid
    assert cluster.running("keep.service") == IDS[0]
    assert "job=keep.service" not in m1.log()
    cluster.destroy_and_wait("keep.service")


def test_sighup_reloads_metadata(cluster: Cluster) -> None:
    m3 = cluster.machine(IDS[2])
    cluster.submit(("mon.service", sleeper("[X-Fleet]\nGlobal=true\nMachineMetadata=role=web\n")))
    cluster.wait("global unit on web machines", lambda: cluster.machine(IDS[1]).unit_pid("mon.service"))
    assert not m3.unit_pid("mon.service")
    m3.metadata = "role=web"
    m3.write_config()
    assert m3.process is not None
    m3.process.send_signal(signal.SIGHUP)
    cluster.wait("global unit on the reconfigured machine", lambda: m3.unit_pid("mon.service"))
    machines = {m.id: m for m in cluster.snapshot().machines}
    assert machines[IDS[2]].metadata == {"role": "web"}
    assert "Reloading configuration from" in m3.log()
    cluster.destroy_and_wait("mon.service")


def test_sigterm_with_keep_units_on_exit_leaves_units_running(cluster: Cluster) -> None:
    m2 = cluster.machine(IDS[1])
    pid = cluster.run_pinned("kept.service", m2)
    m2.extra_config = "keep_units_on_exit = true\n"
    m2.write_config()
    assert m2.process is not None
    m2.process.send_signal(signal.SIGHUP)
    cluster.wait("configuration reloaded", lambda: "Reloading configuration from" in m2.log())
    assert m2.send(signal.SIGTERM) == 0
    assert _alive(pid)
    assert "Received SIGTERM: shutting down, leaving units running" in m2.log()
    m2.extra_config = ""
    m2.start()
    cluster.wait("reconciled", lambda: "Agent ready: 1 unit(s) wanted here, 1 loaded" in m2.log())
    assert m2.unit_pid("kept.service") == pid
    cluster.destroy_and_wait("kept.service")


def test_registry_outage_leaves_units_running_and_recovers(cluster: Cluster) -> None:
    """The whole registry goes away for longer than agent_ttl (every member stopped), and a fleetd
    crashes meanwhile. Units keep running where they are (same processes, not moved), every fleetd says
    it lost the registry and that it is back, and once the registry returns the crashed machine's unit
    is rescheduled on a live machine and new units are scheduled again."""
    m1 = cluster.machine(IDS[0])
    steady = cluster.run_pinned("steady.service", m1)
    cluster.submit(("lost.service", sleeper("[X-Fleet]\nConflicts=steady.service\n")))
    lost_on = cluster.wait("lost running", lambda: cluster.running("lost.service"))
    victim = cluster.machine(lost_on)
    survivors = [m for m in cluster.machines if m is not victim]
    orphan = victim.unit_pid("lost.service")
    logs_before = {m.machine_id: len(m.log()) for m in cluster.machines}

    def logged_since_outage(machine: Fleetd, text: str) -> bool:
        return text in machine.log()[logs_before[machine.machine_id]:]

    cluster.registry_servers.stop()
    outage_started = time.monotonic()
    victim.kill()
    for machine in survivors:
        loss = f"Heartbeat of Machine({machine.machine_id}) failed"
        cluster.wait("the loss logged", functools.partial(logged_since_outage, machine, loss),
                     cluster.ttl + 10)
    # the outage outlives every TTL in the registry
    time.sleep(max(0.0, outage_started + cluster.ttl + 2 - time.monotonic()))
    assert _alive(steady) and _alive(orphan)
    cluster.registry_servers.start()

    for machine in survivors:
        cluster.wait("the recovery logged", functools.partial(
            logged_since_outage, machine, f"Heartbeat of Machine({machine.machine_id}) succeeded again"),
                     cluster.ttl + 15)
    moved = cluster.wait("lost rescheduled on a live machine",
                         lambda: cluster.running_elsewhere("lost.service", lost_on))
    assert moved != IDS[0]  # Conflicts=steady.service still holds
    assert cluster.wait("steady running", lambda: cluster.running("steady.service")) == IDS[0]
    assert m1.unit_pid("steady.service") == steady  # never stopped nor restarted
    assert not logged_since_outage(m1, "job=steady.service")
    assert cluster.wait("machines back", lambda: {m.id for m in cluster.snapshot().machines} ==
                        {m.machine_id for m in survivors})
    cluster.run_pinned("after-outage.service", survivors[-1])

    victim.start()  # back again: the machine rejoins and drops the unit that moved away meanwhile
    cluster.wait("orphan stopped", lambda: not _alive(orphan))
    cluster.wait("three machines again", lambda: len(cluster.snapshot().machines) == 3)
    cluster.destroy_and_wait("steady.service", "lost.service", "after-outage.service")


def test_sigterm_stops_units_and_leaves(cluster: Cluster) -> None:
    m3 = cluster.machine(IDS[2])
    pid = cluster.run_pinned("pinned.service", m3)
    assert m3.send(signal.SIGTERM) == 0
    assert not _alive(pid)
    snap = cluster.snapshot()
    assert IDS[2] not in {m.id for m in snap.machines}
    assert not [s for s in snap.unit_states if s.machine_id == IDS[2]]
    assert "purging agent" in m3.log()
    reasons = cluster.wait("pinned unplaced", lambda: cluster.registry(lambda reg: reg.unplaced_reasons()))
    assert "does not match" in reasons["pinned.service"]
    cluster.destroy("pinned.service")


@pytest.mark.parametrize("cluster", ["fastkv3"], indirect=True)
def test_killed_registry_leader_fails_over(cluster: Cluster) -> None:
    """SIGKILL of the fastkv leader: the fleetd that talked to it moves to another member, units keep
    running, machines stay registered, and units are scheduled and started as before."""
    servers = cluster.registry_servers
    leader = cluster.wait("a registry leader", servers.leader)
    stopped = [m for m in cluster.machines if not _alive(m.process.pid if m.process else None)]
    for machine in stopped:  # by an earlier test (one leaves with SIGTERM)
        machine.start()
    if stopped:
        cluster.wait("three machines", lambda: len(cluster.snapshot().machines) == 3)
    user = next(m for m in cluster.machines if m.etcd_urls[0] == leader.url)
    pid = cluster.run_pinned("before.service", user)
    leader.kill()
    cluster.wait("a new leader", lambda: servers.leader() not in (None, leader), 20)
    after = ("after.service", sleeper(f"[X-Fleet]\nMachineID={user.machine_id}\n"))
    cluster.wait("submitted", lambda: cluster.submitted(after))
    assert cluster.wait("after running", lambda: cluster.running("after.service")) == user.machine_id
    assert user.unit_pid("before.service") == pid
    assert cluster.running("before.service") == user.machine_id
    assert {m.id for m in cluster.snapshot().machines} == set(IDS)
    servers.start()  # the killed member rejoins
    cluster.destroy_and_wait("before.service", "after.service")

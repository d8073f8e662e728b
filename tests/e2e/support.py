"""What the end-to-end tests share: the Docker engine (``tests.infra.bridge``), fastkv clusters on the
Docker bridge, fleetd machines (real processes, the built-in supervisor or the docker runtime) and
fleetctl against their API."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fleetd.runtime.supervisor import record_sessions, session_members
from tests import harness
from tests.infra import bridge
from tests.infra.bridge import bridge_gateway, ensure_docker

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
PREFIX = "/e2e/"
EXAMPLE = ROOT / "examples" / "service-discovery"
#: The endpoint the example's units name; tests point them at their own cluster instead.
EXAMPLE_ETCD = "http://172.17.0.1:2379"


def docker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The docker CLI (never raises on a non-zero exit)."""
    return bridge.docker(*args, check=False, timeout=timeout)


def containers(*labels: str) -> list[dict[str, Any]]:
    """``docker inspect`` of every container (running or not) carrying all ``labels`` (``k=v``)."""
    filters = [arg for label in labels for arg in ("--filter", f"label={label}")]
    ids = docker("ps", "-aq", *filters).stdout.split()
    if not ids:
        return []
    found: list[dict[str, Any]] = json.loads(docker("inspect", *ids).stdout or "[]")
    return found


def remove_containers(*labels: str) -> None:
    """Remove every container carrying ``labels``."""
    ids = [c["Id"] for c in containers(*labels)]
    if ids:
        docker("rm", "-f", *ids)


def wait(what: str, check: Callable[[], T | None], timeout: float = 30.0, logs: Callable[[], str] = str) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` (and ``logs()``) otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result  # type: ignore[return-value]  # truthy, so not None
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs()}")
        time.sleep(0.2)


def fastkv_on_bridge(tmp: Path, size: int = 3) -> list[harness.Server]:
    """A started fastkv cluster of ``size`` members, each listening on 127.0.0.1 and on the Docker
    bridge (advertising the bridge address), so that containers reach every member."""
    ensure_docker()
    members = harness.fastkv_cluster(tmp, size, client_host=bridge_gateway())
    try:
        return harness.start_all(members)
    except BaseException:
        for member in members:
            member.stop()
        raise


def example_unit(name: str, endpoints: str) -> str:
    """The text of the example's unit file ``name`` with ``ETCD`` set to ``endpoints``."""
    text = (EXAMPLE / name).read_text()
    assert EXAMPLE_ETCD in text or "ETCD" not in text, f"{name} no longer names {EXAMPLE_ETCD}"
    return text.replace(EXAMPLE_ETCD, endpoints)


def etcd_urls(members: Iterable[harness.Server]) -> str:
    """The members' loopback client URLs, comma separated (fleet.conf's ``etcd_servers``)."""
    return ",".join(member.url for member in members)


def bridge_url(member: harness.Server) -> str:
    """The member's client URL on the Docker bridge (what containers use)."""
    return f"http://{bridge_gateway()}:{member.client_port}"


@dataclass
class Machine:
    """One fleetd process (``runtime``: supervisor unless told) with its own machine ID, state directory
    and API port."""

    machine_id: str
    home: Path
    etcd_urls: str
    agent_ttl: str = "3s"
    metadata: str = ""
    runtime: str = "supervisor"
    env: dict[str, str] = field(default_factory=dict)
    api_port: int = field(default_factory=harness.free_port)
    process: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    @property
    def units_dir(self) -> Path:
        return self.home / "units"

    def start(self) -> Machine:
        self.home.mkdir(parents=True, exist_ok=True)
        config = self.home / "fleet.conf"
        config.write_text(f"etcd_servers = {self.etcd_urls}\netcd_key_prefix = {PREFIX}\n"
                          f"machine_id = {self.machine_id}\npublic_ip = 127.0.0.1\n"
                          f"metadata = {self.metadata}\n"
                          f"agent_ttl = {self.agent_ttl}\nengine_reconcile_interval = 0.5\n"
                          f"units_directory = {self.units_dir}\nruntime = {self.runtime}\n"
                          f"api_listen = 127.0.0.1:{self.api_port}\n")
        log_path = self.home / f"fleetd.{len(self.logs)}.log"
        self.logs.append(log_path)
        with open(log_path, "wb") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "fleetd.daemon", "-config", str(config)],
                                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **self.env})
        return self

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs)[-4000:]

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL fleetd, as a crash would (its units keep running)."""
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait(10)

    def terminate(self) -> int:
        """SIGTERM: fleet's graceful purge; the exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)

    def unit_sessions(self) -> dict[int, int]:
        """The sessions of the units this machine's supervisor recorded as running, with their leaders'
        start times (``session_members`` then never reaches a session that reused a recorded ID)."""
        sessions: dict[int, int] = {}
        for record in (self.units_dir / "run").glob("*.json"):
            try:
                sessions.update(record_sessions(json.loads(record.read_text()).get("sessions")))
            except (OSError, ValueError, AttributeError):
                continue
        return sessions

    def kill_units(self) -> None:
        """SIGKILL every process of this machine's units and remove its containers (the host died)."""
        for pid in session_members(self.unit_sessions()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        remove_containers(f"fleet.machine={self.machine_id}")

    def fleetctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """fleetctl against this machine's API."""
        argv = [sys.executable, "-m", "fleetd.ctl", f"--endpoint=http://127.0.0.1:{self.api_port}", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                              cwd=self.home, env={**os.environ, "PYTHONPATH": str(ROOT)})

    def ready(self) -> bool:
        """True once fleetctl can list machines through this fleetd."""
        done = self.fleetctl("list-machines", "--no-legend")
        return done.returncode == 0 and self.machine_id[:8] in done.stdout


def unit_containers(machine: Machine, unit: str) -> list[dict[str, Any]]:
    """``docker inspect`` of every container of ``unit`` on ``machine``."""
    return containers(f"fleet.machine={machine.machine_id}", f"fleet.unit={unit}")


def running_container(machine: Machine, unit: str) -> str | None:
    """The ID of the unit's one running container (None while there is none)."""
    found = [c for c in unit_containers(machine, unit) if c["State"]["Running"]]  # type: ignore[index]
    assert len(found) <= 1, f"duplicate containers for {unit}: {found}"
    return str(found[0]["Id"]) if found else None


def start_unit(machine: Machine, name: str, text: str) -> None:
    """Write unit ``name`` next to the machine's config and ``fleetctl start --no-block`` it."""
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


def journal_with(machine: Machine, name: str, text: str) -> str | None:
    """The unit's journal once it contains ``text``."""
    journal = machine.fleetctl("journal", name).stdout
    return journal if text in journal else None


def has_state(machine: Machine, name: str, state: str) -> bool:
    """Whether list-units shows ``state`` (``failed failed``) for the unit."""
    return unit_state(machine, name) == state


def stop_all(machines: Iterable[Machine]) -> None:
    """Crash every machine and kill what its units left (processes and containers)."""
    for machine in machines:
        machine.kill()
        machine.kill_units()

"""What the end-to-end tests share: the Docker engine, fastkv on the docker bridge, fleetd machines
(real processes, built-in supervisor) and fleetctl against their API."""

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

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
DOCKER_SH = ROOT / "tests" / "infra" / "docker.sh"
PREFIX = "/e2e/"


def ensure_docker() -> None:
    """The Docker engine and the local images, as CI sets them up (fails loudly when it cannot)."""
    done = subprocess.run([str(DOCKER_SH)], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"tests/infra/docker.sh failed:\n{done.stdout}\n{done.stderr}"


def docker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The docker CLI (never raises on a non-zero exit)."""
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)


def bridge_gateway() -> str:
    """The address our dockerd gave the host on its default bridge (the bridge interface's IPv4)."""
    done = docker("network", "inspect", "bridge", "-f", '{{index .Options "com.docker.network.bridge.name"}}')
    assert done.returncode == 0, done.stderr
    shown = subprocess.run(["ip", "-4", "-o", "addr", "show", done.stdout.strip() or "docker0"],
                           capture_output=True, text=True, timeout=10, check=True).stdout.split()
    return shown[shown.index("inet") + 1].split("/")[0]


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


def fastkv_on(tmp: Path, *hosts: str, name: str = "fk") -> harness.Server:
    """A fastkv member listening on 127.0.0.1 and on each of ``hosts`` (same port), not started."""
    client_port, peer_port = harness.free_port(), harness.free_port()
    listen = ",".join(f"http://{h}:{client_port}" for h in ("127.0.0.1", *hosts))
    peer = f"http://127.0.0.1:{peer_port}"
    data_dir = tmp / f"{name}.fastkv"
    args = [sys.executable, "-m", "fastkv", "--name", name, "--data-dir", str(data_dir),
            "--listen-client-urls", listen, "--advertise-client-urls", f"http://127.0.0.1:{client_port}",
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{name}={peer}"]
    return harness.Server("fastkv", name, client_port, peer_port, data_dir, args, tmp / f"{name}.fastkv.log")


@dataclass
class Machine:
    """One fleetd process (supervisor runtime) with its own machine ID, state directory and API port."""

    machine_id: str
    home: Path
    etcd_urls: str
    agent_ttl: str = "3s"
    metadata: str = ""
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
                          f"units_directory = {self.units_dir}\nruntime = supervisor\n"
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


def stop_all(machines: Iterable[Machine]) -> None:
    """Crash every machine and kill what its units left (processes and containers)."""
    for machine in machines:
        machine.kill()
        machine.kill_units()

"""Machines booted with systemd, for tests: containers of ``systemd-host:local``
(``tests/infra/systemd_image.sh``) running ``/lib/systemd/systemd`` as PID 1.

Each ``SystemdHost`` is one container with the project bind-mounted read-only at ``/opt/fleet``; it can
run a fleetd as a transient systemd unit (``fleetd.service``) against a registry on the Docker bridge.
``bridge_etcd`` starts the reference etcd listening on 127.0.0.1 and on the bridge's gateway address,
so fleetds in containers and tools on this machine reach the same registry. Everything is removed by
the IDs this module created; traffic goes only to those containers and the bridge gateway.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests import harness

IMAGE = "systemd-host:local"
REPO = Path(__file__).resolve().parents[2]
#: Where the project and fleetd's Python dependencies are inside a container.
MOUNT = "/opt/fleet"
DEPS = "/opt/fleet-deps"
#: The API port each containerised fleetd serves on every interface.
API_PORT = 54728
RUN_FLAGS = ("--cap-add", "SYS_ADMIN", "--security-opt", "seccomp=unconfined",
             "--security-opt", "apparmor=unconfined", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
             "--tmpfs", "/run", "--tmpfs", "/run/lock", "-e", "container=docker")


def docker(*args: str, check: bool = True, stdin: str | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the docker client; ``RuntimeError`` with its output when ``check`` and it fails."""
    done = subprocess.run(["docker", *args], input=stdin, capture_output=True, text=True, timeout=timeout,
                          check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} exited with {done.returncode}: {done.stderr.strip()}")
    return done


def image_exists() -> bool:
    """True when ``systemd-host:local`` has been built."""
    return docker("image", "inspect", IMAGE, check=False).returncode == 0


def bridge_gateway() -> str:
    """The address of this machine on Docker's default bridge (what containers reach it at): the
    network's gateway, else the IPv4 address of its bridge interface (docker0)."""
    gateway = docker("network", "inspect", "bridge", "-f", "{{range .IPAM.Config}}{{.Gateway}}{{end}}").stdout
    if gateway.strip():
        return gateway.strip()
    bridge = docker("network", "inspect", "bridge", "-f",
                    '{{index .Options "com.docker.network.bridge.name"}}').stdout.strip() or "docker0"
    shown = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", bridge], capture_output=True, text=True,
                           check=True, timeout=10).stdout.split()
    return shown[shown.index("inet") + 1].split("/")[0]


def bridge_etcd(tmp: Path, gateway: str) -> harness.Server:
    """The reference etcd (v2 on), clients on 127.0.0.1 and ``gateway`` on one port (not started)."""
    client_port, peer_port = harness.free_port(), harness.free_port()
    peer = f"http://127.0.0.1:{peer_port}"
    args = [harness.REFERENCE_ETCD, "--name", "bridge", "--data-dir", str(tmp / "bridge.etcd"), "--enable-v2",
            "--listen-client-urls", f"http://127.0.0.1:{client_port},http://{gateway}:{client_port}",
            "--advertise-client-urls", f"http://{gateway}:{client_port}",
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"bridge={peer}"]
    return harness.Server("etcd", "bridge", client_port, peer_port, tmp / "bridge.etcd", args,
                          tmp / "bridge.etcd.log")


@dataclass
class SystemdHost:
    """One running container with systemd as PID 1."""

    name: str
    container_id: str
    ip: str = ""
    removed: bool = False
    fleetd_config: str = field(default="", repr=False)

    def exec(self, *argv: str, check: bool = True, stdin: str | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the container."""
        flags = ["-i"] if stdin is not None else []
        return docker("exec", *flags, self.container_id, *argv, check=check, stdin=stdin, timeout=timeout)

    def systemctl(self, *args: str) -> str:
        """``systemctl`` inside the container; its stdout (whatever its exit status)."""
        return self.exec("systemctl", *args, check=False).stdout

    def unit_property(self, unit: str, prop: str) -> str:
        """One property of a unit as systemd has it (``ActiveState``...)."""
        return self.systemctl("show", "-p", prop, "--value", unit).strip()

    def wait_booted(self, timeout: float = 60) -> None:
        """Wait until systemd has finished booting (``running`` or ``degraded``)."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.systemctl("is-system-running").strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name}: systemd is {state or 'not answering'} after {timeout}s")

    def machine_id(self) -> str:
        """The container's machine ID (systemd made one at boot)."""
        return self.exec("cat", "/etc/machine-id").stdout.strip()

    def start_fleetd(self, config: str) -> None:
        """Write ``config`` as /etc/fleet/fleet.conf and run fleetd as the transient unit fleetd.service."""
        self.fleetd_config = config
        self.exec("sh", "-c", "mkdir -p /etc/fleet && cat > /etc/fleet/fleet.conf", stdin=config)
        self.exec("systemd-run", "--unit", "fleetd", "--description", "fleet daemon",
                  f"--setenv=PYTHONPATH={MOUNT}:{DEPS}", "--setenv=PYTHONDONTWRITEBYTECODE=1",
                  "--property=KillMode=process", "/usr/bin/python3", "-m", "fleetd.daemon")

    def stop_fleetd(self) -> None:
        """``systemctl stop fleetd`` (SIGTERM: fleet's graceful purge)."""
        self.exec("systemctl", "stop", "fleetd", check=False, timeout=60)

    def journal(self, unit: str, lines: int = 200) -> str:
        """The last ``lines`` journal lines of ``unit``."""
        return self.exec("journalctl", "--no-pager", "-q", "-u", unit, "-n", str(lines), check=False).stdout

    def kill(self) -> None:
        """Stop the container at once (a machine that dies), keeping it for inspection."""
        docker("kill", self.container_id, check=False)

    def remove(self) -> None:
        """Remove the container and everything that ran in it."""
        if not self.removed:
            docker("rm", "-f", self.container_id, check=False)
            self.removed = True


def start_hosts(names: Sequence[str], mounts: Iterable[tuple[str, str]] = (),
                timeout: float = 60) -> list[SystemdHost]:
    """Start one container per name (the project mounted at ``/opt/fleet``, plus ``mounts`` as
    (source, target) pairs) and wait until each has booted."""
    if not image_exists():
        raise RuntimeError(f"{IMAGE} does not exist: run tests/infra/systemd_image.sh")
    volumes = [arg for source, target in mounts for arg in ("-v", f"{source}:{target}")]
    hosts: list[SystemdHost] = []
    try:
        for name in names:
            container_id = docker("run", "-d", "--name", name, "--hostname", name, *RUN_FLAGS,
                                  "-v", f"{REPO}:{MOUNT}:ro", *volumes, IMAGE, "/lib/systemd/systemd").stdout
            hosts.append(SystemdHost(name, container_id.strip()))
        for host in hosts:
            address = docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", host.container_id)
            host.ip = address.stdout.strip()
            host.wait_booted(timeout)
    except BaseException:
        remove_hosts(hosts)
        raise
    return hosts


def remove_hosts(hosts: Iterable[SystemdHost]) -> None:
    """Remove every container in ``hosts``."""
    for host in hosts:
        host.remove()


def unique_names(prefix: str, count: int) -> list[str]:
    """Container names no other test run uses at the same time."""
    return [f"{prefix}-{os.getpid()}-{i + 1}" for i in range(count)]

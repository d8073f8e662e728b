"""Machines booted with systemd, for tests: containers of ``systemd-host:local``
(``tests/infra/systemd_image.sh``) running ``/lib/systemd/systemd`` as PID 1.

Each ``SystemdHost`` is one container with the project bind-mounted read-only at ``/opt/fleet``; it can
run a fleetd as a transient systemd unit (``fleetd.service``) against a registry on the Docker bridge.
``bridge_registry`` starts a fastkv cluster whose members listen on 127.0.0.1 and on the bridge's
gateway address, so fleetds in containers and tools on this machine reach the same registry. A host
started ``with_docker`` has this machine's Docker engine: its socket and the ``docker`` client are
mounted in, so units in the container run ``docker run`` and fleetd tracks their containers (the
image has the Docker SDK). Everything is removed by the IDs this module created; traffic goes only to
those containers and the bridge gateway.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests import harness
from tests.infra.bridge import bridge_gateway, docker

IMAGE = "systemd-host:local"
#: The image's version label as tests/infra/systemd_image.sh builds it now.
IMAGE_LABEL, IMAGE_VERSION = "fleet.systemd-image.version", "2"
REPO = Path(__file__).resolve().parents[2]
#: Where the project and fleetd's Python dependencies are inside a container.
MOUNT = "/opt/fleet"
DEPS = "/opt/fleet-deps"
#: The API port each containerised fleetd serves on every interface.
API_PORT = 54728
RUN_FLAGS = ("--cap-add", "SYS_ADMIN", "--security-opt", "seccomp=unconfined",
             "--security-opt", "apparmor=unconfined", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
             "--tmpfs", "/run", "--tmpfs", "/run/lock", "-e", "container=docker")
#: This machine's Docker engine socket (also the default socket inside the containers).
DOCKER_SOCKET = "/var/run/docker.sock"


def image_exists() -> bool:
    """True when ``systemd-host:local`` has been built, in the version the tests expect."""
    shown = f'{{{{index .Config.Labels "{IMAGE_LABEL}"}}}}'
    label = docker("image", "inspect", "-f", shown, IMAGE, check=False)
    return label.returncode == 0 and label.stdout.strip() == IMAGE_VERSION


def bridge_registry(tmp: Path, size: int = 3) -> list[harness.Server]:
    """A started fastkv cluster of ``size`` members, each serving clients on 127.0.0.1 and on the bridge
    gateway (the URL it advertises): what fleetds in containers and tools here both reach."""
    servers = harness.fastkv_cluster(tmp, size, client_host=bridge_gateway())
    try:
        return harness.start_all(servers)
    except BaseException:
        stop_servers(servers)
        raise


def stop_servers(servers: Iterable[harness.Server]) -> None:
    """Stop every server of ``servers`` that was started."""
    for server in servers:
        server.stop()


def bridge_urls(servers: Iterable[harness.Server]) -> list[str]:
    """The client URLs of ``servers`` on the bridge gateway (the ones containers use)."""
    gateway = bridge_gateway()
    return [f"http://{gateway}:{server.client_port}" for server in servers]


def docker_mounts() -> list[tuple[str, str]]:
    """(source, target) pairs that give a container this machine's Docker engine and client."""
    client = shutil.which("docker")
    if client is None or not os.path.exists(DOCKER_SOCKET):
        raise RuntimeError("no Docker engine here: run tests/infra/docker.sh")
    return [(DOCKER_SOCKET, DOCKER_SOCKET), (client, "/usr/bin/docker")]


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

    def crash_fleetd(self, timeout: float = 30) -> None:
        """SIGKILL fleetd (a crash) and wait until systemd has seen it die; its units run on."""
        self.exec("systemctl", "kill", "--signal=KILL", "fleetd", check=False)
        deadline = time.monotonic() + timeout
        while self.systemctl("is-active", "fleetd").strip() in ("active", "deactivating"):
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{self.name}: fleetd still runs {timeout}s after SIGKILL")
            time.sleep(0.1)

    def restart_fleetd(self) -> None:
        """Start fleetd again with the configuration it had (after a crash or a stop)."""
        self.exec("systemctl", "reset-failed", "fleetd", check=False)  # a crashed run's unit stays failed
        self.start_fleetd(self.fleetd_config)

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


def start_hosts(names: Sequence[str], mounts: Iterable[tuple[str, str]] = (), *, with_docker: bool = False,
                timeout: float = 60) -> list[SystemdHost]:
    """Start one container per name (the project mounted at ``/opt/fleet``, plus ``mounts`` as
    (source, target) pairs, plus this machine's Docker engine and client ``with_docker``) and wait
    until each has booted."""
    if not image_exists():
        raise RuntimeError(f"{IMAGE} (version {IMAGE_VERSION}) does not exist: "
                           "run tests/infra/systemd_image.sh")
    mounts = [*mounts, *(docker_mounts() if with_docker else [])]
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

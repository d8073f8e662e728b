"""Docker on this machine, for tests: the docker client, the engine with the local images
(``tests/infra/docker.sh``), and this machine's address on Docker's default bridge, where containers
reach servers that the tests run here."""

from __future__ import annotations

import subprocess
from pathlib import Path

DOCKER_SH = Path(__file__).resolve().parent / "docker.sh"


def docker(*args: str, check: bool = True, stdin: str | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the docker client; ``RuntimeError`` with its output when ``check`` and it fails."""
    done = subprocess.run(["docker", *args], input=stdin, capture_output=True, text=True, timeout=timeout,
                          check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} exited with {done.returncode}: {done.stderr.strip()}")
    return done


def ensure_docker() -> None:
    """A running engine and the local images (``busybox:local``...), as CI sets them up; ``RuntimeError``
    with the script's output when that fails."""
    done = subprocess.run(["sh", str(DOCKER_SH)], capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"tests/infra/docker.sh failed:\n{done.stdout}\n{done.stderr}")


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

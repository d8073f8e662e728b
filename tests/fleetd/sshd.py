"""A real OpenSSH server and ssh-agent for tests, each in its own directory.

``Sshd`` runs ``/usr/sbin/sshd -D -e`` on a free port of 127.0.0.1 (and of the other loopback addresses
it is given) with its own host key, configuration and ``authorized_keys``; nothing of the machine's
sshd or ``~/.ssh`` is read or changed. Logins are by public key only, as the user running the tests.
``SshAgent`` runs ``ssh-agent -D`` holding the client key: fleet authenticates through the agent, so
fleetctl finds the key through ``SSH_AUTH_SOCK``, as a fleet user's does.

The sessions sshd opens get a ``PATH`` whose first directory holds ``fleetctl`` (this checkout's), as
on a machine where fleet is installed: ``fleetctl --tunnel`` runs ``fleetctl fd-forward`` there.

Without OpenSSH both fail loudly: the packages ``openssh-server`` and ``openssh-client`` are needed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests import harness

SSHD = "/usr/sbin/sshd"
ROOT = Path(__file__).resolve().parents[2]
INSTALL_HINT = "apt-get install -y openssh-server openssh-client"


def require(program: str) -> str:
    """The path of an OpenSSH program; fails the test (never skips it) when it is not installed."""
    path = program if os.path.isabs(program) and os.access(program, os.X_OK) else shutil.which(program)
    if not path:
        raise AssertionError(f"{program} is not installed; these tests need a real OpenSSH: {INSTALL_HINT}")
    return path


def keygen(path: Path, comment: str) -> Path:
    """A new ed25519 key pair without passphrase at ``path`` (+ ``.pub``); returns ``path``."""
    subprocess.run([require("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True, timeout=30)
    return path


def public_key(private: Path) -> str:
    """``type base64`` of a key pair's public half (no comment)."""
    return " ".join(Path(f"{private}.pub").read_text().split()[:2])


def _wait_for_banner(host: str, port: int, process: subprocess.Popen[bytes], log: Path,
                     timeout: float) -> None:
    """Return once ``host:port`` sends an SSH banner; fail with the server's log if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with socket.create_connection((host, port), timeout=1) as conn:
                if conn.recv(64).startswith(b"SSH-2.0-"):
                    return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"sshd did not come up on {host}:{port}:\n{log.read_text(errors='replace')}")


@dataclass
class Sshd:
    """One sshd process on ``port`` of every address in ``addresses`` (see the module docstring)."""

    home: Path
    addresses: tuple[str, ...] = ("127.0.0.1",)
    port: int = field(default_factory=harness.free_port)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.host_key = self.home / "ssh_host_ed25519_key"
        self.client_key = keygen(self.home / "id_ed25519", "fleet-test-client")
        (self.home / "authorized_keys").write_text(public_key(self.client_key) + "\n")
        self.bin = self.home / "bin"
        self.bin.mkdir(exist_ok=True)
        fleetctl = self.bin / "fleetctl"
        fleetctl.write_text(f'#!/bin/sh\nPYTHONPATH="{ROOT}" exec "{sys.executable}" -m fleetd.ctl "$@"\n')
        fleetctl.chmod(0o755)

    @property
    def config(self) -> Path:
        return self.home / "sshd_config"

    @property
    def log(self) -> Path:
        return self.home / "sshd.log"

    def new_host_key(self) -> None:
        """Replace the host key (as a re-created machine has); takes effect at the next ``start``."""
        self.host_key.unlink(missing_ok=True)
        Path(f"{self.host_key}.pub").unlink(missing_ok=True)
        keygen(self.host_key, "fleet-test-host")

    def known_hosts_line(self, address: str = "127.0.0.1") -> str:
        """The ``known_hosts`` line that trusts this server's current host key at ``address``."""
        return f"[{address}]:{self.port} {public_key(self.host_key)}\n"

    def write_config(self) -> None:
        listen = "".join(f"ListenAddress {address}:{self.port}\n" for address in self.addresses)
        path = f"{self.bin}:{os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin"
        self.config.write_text(
            f"{listen}HostKey {self.host_key}\nAuthorizedKeysFile {self.home / 'authorized_keys'}\n"
            "PidFile none\nUsePAM no\nStrictModes no\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n"
            "AllowAgentForwarding yes\nAllowTcpForwarding yes\nMaxSessions 64\nMaxStartups 64\n"
            f"SetEnv PATH={path} PYTHONPATH={ROOT}\nLogLevel DEBUG1\n")

    def start(self) -> Sshd:
        """Start sshd (a new host key the first time) and wait until it answers."""
        sshd = require(SSHD)
        require("ssh")
        if not self.host_key.exists():
            keygen(self.host_key, "fleet-test-host")
        if os.geteuid() == 0:  # sshd started by root checks its privilege separation directory
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.write_config()
        with open(self.log, "ab") as out:  # -E: the log (a session's stderr stays the command's own)
            self.process = subprocess.Popen([sshd, "-f", str(self.config), "-D", "-E", str(self.log)],
                                            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        for address in self.addresses:
            _wait_for_banner(address, self.port, self.process, self.log, 20)
        return self

    def stop(self) -> None:
        """Stop the sshd this object started (its sessions end with it)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def log_text(self) -> str:
        """What sshd logged so far (``LogLevel DEBUG1``: logins, sessions, ``direct-tcpip`` targets)."""
        return self.log.read_text(errors="replace")

    def forwarded_to(self, port: int) -> int:
        """How many TCP streams sshd opened to ``port`` for clients (``ssh -W``) so far."""
        return self.log_text().count(f"target 127.0.0.1 port {port}\n")

    def command_sessions(self) -> int:
        """How many sessions running a command sshd started so far."""
        return self.log_text().count("Starting session: command for ")


@dataclass
class SshAgent:
    """An ``ssh-agent -D`` holding the given keys; ``env`` points a client at it."""

    home: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def sock(self) -> Path:
        return self.home / "agent.sock"

    @property
    def env(self) -> dict[str, str]:
        return {"SSH_AUTH_SOCK": str(self.sock)}

    def start(self, *keys: Path) -> SshAgent:
        self.home.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen([require("ssh-agent"), "-D", "-a", str(self.sock)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self.sock.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("ssh-agent did not start")
            time.sleep(0.02)
        for key in keys:
            subprocess.run([require("ssh-add"), "-q", str(key)], env={**os.environ, **self.env}, check=True,
                           capture_output=True, timeout=30)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

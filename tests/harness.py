"""Start and stop real servers for tests: the reference etcd and fastkv.

Every server gets its own free ports and data directory; ``stop`` ends exactly the
process it started. A server that does not come up fails the test loudly with its output.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REFERENCE_ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """One running server process and where to reach it."""

    kind: str
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    args: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def start(self, timeout: float = 20.0) -> Server:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child writes to it for its lifetime
        self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                        env={**os.environ, **self.env}, start_new_session=True)
        log.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.process.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url + "/v2/keys/", timeout=1) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.kind} did not answer within {timeout}s:\n{self.output()}")

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def _member_args(name: str, client_port: int, peer_port: int, data_dir: Path) -> list[str]:
    client = f"http://127.0.0.1:{client_port}"
    peer = f"http://127.0.0.1:{peer_port}"
    return ["--name", name, "--data-dir", str(data_dir),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{name}={peer}"]


def reference_etcd(tmp: Path, name: str = "ref", extra: list[str] | None = None) -> Server:
    """The reference etcd 3.4 with the v2 API on; fails loudly when it is not installed."""
    if not os.path.exists(REFERENCE_ETCD):
        raise RuntimeError("the reference etcd is not installed: apt-get install etcd-server")
    client_port, peer_port = free_port(), free_port()
    data_dir = tmp / f"{name}.etcd"
    args = [REFERENCE_ETCD, *_member_args(name, client_port, peer_port, data_dir), "--enable-v2",
            *(extra or [])]
    return Server("etcd", name, client_port, peer_port, data_dir, args, tmp / f"{name}.etcd.log")


def fastkv(tmp: Path, name: str = "fk", extra: list[str] | None = None,
           data_dir: Path | None = None) -> Server:
    """A fastkv member run as its console script would run it (``python -m fastkv``)."""
    client_port, peer_port = free_port(), free_port()
    data_dir = data_dir or tmp / f"{name}.fastkv"
    args = [sys.executable, "-m", "fastkv", *_member_args(name, client_port, peer_port, data_dir),
            *(extra or [])]
    return Server("fastkv", name, client_port, peer_port, data_dir, args, tmp / f"{name}.fastkv.log")


def fastkv_cluster(tmp: Path, size: int, extra: list[str] | None = None,
                   advertise_peer_ports: list[int] | None = None, token: str = "fk-cluster",
                   client_host: str = "127.0.0.1") -> list[Server]:
    """``size`` fastkv members of one new cluster (not started: ``start_all``). Member ``i`` listens
    for peers on its own port and advertises ``advertise_peer_ports[i]`` when given (a proxy in
    front of it), else its listen port. Clients reach every member on 127.0.0.1 and, when
    ``client_host`` is another address (the Docker bridge, for containers), on that address too,
    which is then the one advertised."""
    names = [f"m{i}" for i in range(size)]
    clients = [free_port() for _ in names]
    peers = [free_port() for _ in names]
    advertised = advertise_peer_ports or peers
    initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(names, advertised, strict=True))
    return [cluster_member(tmp, name, clients[i], peers[i], advertised[i], initial, "new", token, extra,
                           client_host)
            for i, name in enumerate(names)]


def cluster_member(tmp: Path, name: str, client_port: int, peer_port: int, advertised_peer_port: int,
                   initial_cluster: str, state: str, token: str, extra: list[str] | None = None,
                   client_host: str = "127.0.0.1") -> Server:
    """One member of a fastkv cluster, as ``etcd`` would be started for it (``client_host``: as in
    ``fastkv_cluster``)."""
    advertised = f"http://{client_host}:{client_port}"
    listen = ",".join(dict.fromkeys([f"http://127.0.0.1:{client_port}", advertised]))
    data_dir = tmp / f"{name}.fastkv"
    args = [sys.executable, "-m", "fastkv", "--name", name, "--data-dir", str(data_dir),
            "--listen-client-urls", listen, "--advertise-client-urls", advertised,
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{advertised_peer_port}",
            "--initial-cluster", initial_cluster, "--initial-cluster-state", state,
            "--initial-cluster-token", token, *(extra or [])]
    return Server("fastkv", name, client_port, peer_port, data_dir, args, tmp / f"{name}.fastkv.log")


def start_all(servers: list[Server], timeout: float = 20.0) -> list[Server]:
    """Launch every server first (members of one cluster need each other), then wait for each."""
    for server in servers:
        log = open(server.log_path, "ab")  # noqa: SIM115 - the child writes to it for its lifetime
        server.process = subprocess.Popen(server.args, stdout=log, stderr=subprocess.STDOUT,
                                          env={**os.environ, **server.env}, start_new_session=True)
        log.close()
    for server in servers:
        server.wait_ready(timeout)
    return servers

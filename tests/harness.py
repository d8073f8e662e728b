"""Start and stop real servers for tests: the reference etcd and fastkv.

Every server gets its own free ports and data directory; ``stop`` ends exactly the
process it started. A server that does not come up fails the test loudly with its output.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.servers import REFERENCE_ETCD, free_port, start_all
from bench.servers import Server as _Server

__all__ = ["REFERENCE_ETCD", "Server", "fastkv", "fastkv_cluster", "free_port", "reference_etcd", "start_all"]


@dataclass
class Server(_Server):
    """One server process (the benchmarks' ``Server``) with what tests need besides."""

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def start(self, timeout: float = 20.0, path: str = "/v2/keys/") -> Server:
        super().start(timeout, path)
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process and self.process.poll() is None:
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

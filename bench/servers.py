"""Start and stop the servers the benchmarks compare: fastkv and the reference etcd, alone or as
clusters, always with the same flags.

Every server gets its own free ports and a data directory under the directory it is given;
``stop`` ends exactly the process it started (SIGTERM, then SIGKILL after 10 s). A server that
exits or does not answer in time raises ``RuntimeError`` with the end of its output.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_ETCD = shutil.which("etcd") or "/usr/bin/etcd"
KINDS = ("fastkv", "etcd")
READY_POLL_S = 0.005


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(port: int, path: str, timeout: float = 1.0) -> tuple[int, bytes]:
    """``GET path`` on 127.0.0.1:``port``: (status, body). Raises OSError when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@dataclass
class Server:
    """One server process (``kind`` fastkv or etcd) and where to reach it."""

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
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.kind} {self.name} is not running")
        return self.process.pid

    def spawn(self) -> None:
        """Start the process (its output appended to ``log_path``) without waiting for it."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, **self.env}, start_new_session=True)

    def answers(self, path: str) -> bool:
        """``GET path`` answers 200 right now."""
        try:
            return http_get(self.client_port, path)[0] == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float, path: str = "/v2/keys/") -> None:
        """Poll ``GET path`` every 5 ms until it answers 200; RuntimeError on exit or timeout."""
        deadline = time.perf_counter() + timeout
        while not self.answers(path):
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise RuntimeError(f"{self.kind} {self.name} exited with {code}:\n{self.output()}")
            if time.perf_counter() > deadline:
                self.stop()
                raise RuntimeError(f"{self.kind} {self.name} did not answer within {timeout}s:\n"
                                   f"{self.output()}")
            time.sleep(READY_POLL_S)

    def start(self, timeout: float = 60.0, path: str = "/v2/keys/") -> Server:
        """Spawn and wait until ``GET path`` answers 200."""
        self.spawn()
        self.wait_ready(timeout, path)
        return self

    def timed_start(self, path: str, timeout: float = 300.0) -> float:
        """Spawn and return the seconds from the spawn until ``GET path`` answers 200."""
        started = time.perf_counter()
        self.start(timeout, path)
        return time.perf_counter() - started

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM, and SIGKILL if the process is still there after 10 s."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def state(self) -> str:
        """The member's Raft state from ``/v2/stats/self`` (``StateLeader``, ``StateFollower``, ...)."""
        status, body = http_get(self.client_port, "/v2/stats/self", timeout=5)
        if status != 200:
            raise RuntimeError(f"{self.kind} {self.name}: /v2/stats/self answered {status}")
        return str(json.loads(body)["state"])


def member_flags(name: str, client_port: int, peer_port: int, data_dir: Path, initial_cluster: str,
                 token: str) -> list[str]:
    """The flags both servers take for one member of a new cluster."""
    client = f"http://127.0.0.1:{client_port}"
    peer = f"http://127.0.0.1:{peer_port}"
    return ["--name", name, "--data-dir", str(data_dir),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", initial_cluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", token]


def program(kind: str) -> tuple[list[str], dict[str, str]]:
    """The command that starts a ``kind`` server and the environment it needs."""
    if kind == "fastkv":
        path = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
        return [sys.executable, "-m", "fastkv"], {"PYTHONPATH": path}
    if kind == "etcd":
        if not os.path.exists(REFERENCE_ETCD):
            raise RuntimeError("the reference etcd is not installed: apt-get install etcd-server")
        return [REFERENCE_ETCD, "--enable-v2"], {}
    raise ValueError(f"unknown server kind {kind!r}")


def cluster(kind: str, tmp: Path, size: int, prefix: str = "m",
            extra: list[str] | None = None) -> list[Server]:
    """``size`` members of one new ``kind`` cluster named ``<prefix>0`` ... (not started:
    ``start_all``). A size of 1 is a single server."""
    names = [f"{prefix}{i}" for i in range(size)]
    clients = [free_port() for _ in names]
    peers = [free_port() for _ in names]
    initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(names, peers, strict=True))
    command, env = program(kind)
    token = f"bench-{prefix}"
    servers = []
    for name, client_port, peer_port in zip(names, clients, peers, strict=True):
        data_dir = tmp / f"{name}.{kind}"
        flags = member_flags(name, client_port, peer_port, data_dir, initial, token)
        args = [*command, *flags, *(extra or [])]
        servers.append(Server(kind, name, client_port, peer_port, data_dir, args, tmp / f"{name}.{kind}.log",
                              dict(env)))
    return servers


def single(kind: str, tmp: Path, name: str, extra: list[str] | None = None) -> Server:
    """One ``kind`` server named ``name`` (not started)."""
    [server] = cluster(kind, tmp, 1, prefix=name, extra=extra)
    return server


def start_all(servers: list[Server], timeout: float = 60.0) -> list[Server]:
    """Spawn every server first (members of one cluster need each other), then wait for each; on a
    failure stop them all."""
    try:
        for server in servers:
            server.spawn()
        for server in servers:
            server.wait_ready(timeout)
    except BaseException:
        stop_all(servers)
        raise
    return servers


def stop_all(servers: list[Server]) -> None:
    for server in servers:
        server.stop()


def leader(members: list[Server], timeout: float = 30.0) -> Server:
    """The leader of a settled cluster: polled until one member reports itself leader and every
    other one a follower (right after an election, or one a loaded machine caused, a member may
    still be a candidate)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            states = [member.state() for member in members]
        except (OSError, RuntimeError, ValueError, KeyError):
            states = []
        if states.count("StateLeader") == 1 and states.count("StateFollower") == len(members) - 1:
            return members[states.index("StateLeader")]
        if time.monotonic() > deadline:
            raise RuntimeError(f"{[m.name for m in members]} did not settle on a leader: {states}")
        time.sleep(0.1)


def raise_open_file_limit(wanted: int) -> int:
    """Raise this process's soft open-file limit towards ``wanted`` (at most the hard limit); the
    servers started afterwards inherit it. Returns the soft limit now in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft

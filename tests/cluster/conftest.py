"""Real fastkv clusters on loopback: every member a process, every peer link through a proxy."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import harness
from tests.cluster.proxy import PeerProxies

HEARTBEAT_MS = 50
ELECTION_MS = 500
TIMING = ["--heartbeat-interval", str(HEARTBEAT_MS), "--election-timeout", str(ELECTION_MS)]
REQUEST_TIMEOUT_S = 5 + 2 * ELECTION_MS / 1000  # etcd's: a write without quorum fails after it


def request(url: str, method: str = "GET", timeout: float = 15,
            **form: str) -> tuple[int, dict[str, str], Any]:
    """One HTTP request; ``(status, headers, decoded JSON body or text)``."""
    data = urllib.parse.urlencode(form).encode() if form else None
    req = urllib.request.Request(url, data=data, method=method)
    if data:
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, headers, raw = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        status, headers, raw = err.code, dict(err.headers), err.read()
    try:
        return status, headers, json.loads(raw) if raw else {}
    except ValueError:
        return status, headers, raw.decode()


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = condition()
        except OSError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Cluster:
    """Members (``harness.Server``) and the proxies in front of their peer ports."""

    members: list[harness.Server]
    proxies: PeerProxies

    def alive(self) -> list[harness.Server]:
        return [m for m in self.members if m.process is not None and m.process.poll() is None]

    def member_id(self, member: harness.Server) -> int:
        return int(request(member.url + "/v2/stats/self")[2]["id"], 16)

    def leader(self, among: list[harness.Server] | None = None, timeout: float = 10) -> harness.Server:
        """The member that says it leads, once the others agree."""
        candidates = among or self.alive()

        def find() -> harness.Server | None:
            states = {m.name: request(m.url + "/v2/stats/self", timeout=2)[2] for m in candidates}
            leaders = [m for m in candidates if states[m.name]["state"] == "StateLeader"]
            if len(leaders) != 1:
                return None
            lead_id = states[leaders[0].name]["id"]
            agreed = all(s["leaderInfo"]["leader"] == lead_id for s in states.values())
            return leaders[0] if agreed else None
        found: harness.Server = wait_for(find, timeout, "one agreed leader")
        return found

    def healthy(self, timeout: float = 15) -> None:
        wait_for(lambda: all(request(m.url + "/health", timeout=2)[0] == 200 for m in self.alive()), timeout,
                 "every member healthy")
        wait_for(lambda: all(_machines(m) == len(self.members) for m in self.alive()), timeout,
                 "every member published")


def _machines(member: harness.Server) -> int:
    body = request(member.url + "/v2/machines")[2]
    return len(body.split(", ")) if isinstance(body, str) and body else 0


def start_cluster(tmp: Path, size: int, extra: list[str] | None = None) -> Cluster:
    """A new healthy cluster of ``size`` members started with the flags ``extra`` as well."""
    proxy_ports = [harness.free_port() for _ in range(size)]
    members = harness.fastkv_cluster(tmp, size, [*TIMING, *(extra or [])], advertise_peer_ports=proxy_ports)
    proxies = PeerProxies(proxy_ports, [m.peer_port for m in members]).start()
    cluster = Cluster(members, proxies)
    harness.start_all(members)
    cluster.healthy()
    return cluster


def stop_cluster(cluster: Cluster) -> None:
    for m in cluster.members:
        m.kill()
    cluster.proxies.stop()


@contextmanager
def running_cluster(tmp: Path, size: int, extra: list[str] | None = None) -> Iterator[Cluster]:
    """``start_cluster`` for the block; every member is killed when it ends."""
    cluster = start_cluster(tmp, size, extra)
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


@pytest.fixture
def cluster3(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path, 3) as cluster:
        yield cluster


class Writer(threading.Thread):
    """PUTs ``/load/<n>/<i>`` to one member until stopped; remembers every acknowledged write."""

    def __init__(self, member: harness.Server, n: int) -> None:
        super().__init__(daemon=True)
        self.member, self.n = member, n
        self.acked: dict[str, str] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stopped.is_set():
            key, value = f"/load/{self.n}/{i}", f"v{self.n}-{i}"
            i += 1
            try:
                status, _, _ = request(self.member.url + "/v2/keys" + key, "PUT",
                                       timeout=REQUEST_TIMEOUT_S + 3, value=value)
            except OSError:
                time.sleep(0.05)
                continue
            if status in (200, 201):
                self.acked[key] = value

    def finish(self) -> dict[str, str]:
        self.stopped.set()
        self.join(REQUEST_TIMEOUT_S + 5)
        return self.acked


def missing_writes(member: harness.Server, expected: dict[str, str]) -> dict[str, str]:
    """The keys of ``expected`` that ``member`` does not hold with their value (a local read)."""
    status, _, body = request(member.url + "/v2/keys/load?recursive=true", timeout=5)
    found = {} if status != 200 else {
        n["key"]: n.get("value") for d in body["node"].get("nodes", []) for n in d.get("nodes", [])}
    return {k: v for k, v in expected.items() if found.get(k) != v}


def wait_until_has(member: harness.Server, expected: dict[str, str], timeout: float = 20) -> None:
    """Fail unless ``member`` holds every write of ``expected`` within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        missing = missing_writes(member, expected)
        if not missing:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{member.name} lacks {len(missing)} acknowledged writes, "
                                 f"e.g. {sorted(missing)[:3]}")
        time.sleep(0.1)

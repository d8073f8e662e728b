"""``fastkv cluster``: a local cluster that starts, serves, reports dead members and stops cleanly."""

from __future__ import annotations

import json
import os
import queue
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fastkv import localcluster

ROOT = Path(__file__).resolve().parents[2]


def free_run(length: int) -> int:
    """A port P such that P .. P+length-1 are all free on 127.0.0.1 right now (chosen below the
    kernel's ephemeral range, where neighbouring ports are rarely taken)."""
    for _ in range(200):
        base = random.randrange(20000, 32000 - length)
        sockets = []
        try:
            for port in range(base, base + length):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError(f"no run of {length} free ports")


@dataclass
class LocalCluster:
    """A running ``fastkv cluster`` and what it printed."""

    process: subprocess.Popen[str]
    lines: queue.Queue[str] = field(default_factory=queue.Queue)
    seen: list[str] = field(default_factory=list)

    def collect(self) -> None:
        """Queue every line the command prints (runs in a thread until its stdout closes)."""
        for line in self.process.stdout or ():
            self.lines.put(line)

    def read_until(self, pattern: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.seen.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matching {pattern!r} in:\n" + "".join(self.seen))

    @property
    def client_urls(self) -> list[str]:
        return re.findall(r"client (\S+)", "".join(self.seen))

    @property
    def pids(self) -> list[int]:
        return [int(p) for p in re.findall(r"pid (\d+)", "".join(self.seen))]


@pytest.fixture
def start_cluster(tmp_path: Path) -> Iterator[Callable[[int], LocalCluster]]:
    started: list[LocalCluster] = []

    def start(size: int) -> LocalCluster:
        base = free_run(2 * size)
        process = subprocess.Popen(
            [sys.executable, "-m", "fastkv", "cluster", "--size", str(size), "--base-port", str(base),
             "--data-dir", str(tmp_path / "cluster"), "--heartbeat-interval", "50",
             "--election-timeout", "500"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        cluster = LocalCluster(process)
        threading.Thread(target=cluster.collect, daemon=True).start()
        started.append(cluster)
        cluster.read_until(r"member\(s\) ready|not all healthy")
        return cluster

    yield start
    for cluster in started:
        if cluster.process.poll() is None:
            cluster.process.send_signal(signal.SIGTERM)
            cluster.process.wait(30)


def call(method: str, url: str, **form: str) -> Any:
    data = urllib.parse.urlencode(form).encode() if form else None
    with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method), timeout=5) as r:
        return json.loads(r.read())


def eventually(check: Callable[[], object], message: str, timeout: float = 10) -> None:
    """Members apply committed entries at their own pace: retry ``check`` for a while."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (OSError, KeyError):
            pass
        assert time.monotonic() < deadline, message
        time.sleep(0.1)


def member_names(url: str) -> list[str]:
    return sorted(m["name"] for m in call("GET", url + "/v2/members")["members"])


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_the_port_scheme_puts_each_peer_port_after_its_client_port() -> None:
    plans = localcluster.plan_cluster(3, 2379, Path("d"))
    assert [(p.name, p.client_url, p.peer_url) for p in plans] == [
        ("node1", "http://127.0.0.1:2379", "http://127.0.0.1:2380"),
        ("node2", "http://127.0.0.1:2381", "http://127.0.0.1:2382"),
        ("node3", "http://127.0.0.1:2383", "http://127.0.0.1:2384"),
    ]
    args = localcluster.member_args(plans[1], plans, 100, 1000)
    assert args[args.index("--initial-cluster") + 1] == (
        "node1=http://127.0.0.1:2380,node2=http://127.0.0.1:2382,node3=http://127.0.0.1:2384")


def test_sizes_other_than_1_3_5_7_are_refused() -> None:
    done = subprocess.run([sys.executable, "-m", "fastkv", "cluster", "--size", "2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "invalid choice: 2" in done.stderr


def test_one_member_serves_and_stops_with_the_command(start_cluster: Callable[[int], LocalCluster]) -> None:
    cluster = start_cluster(1)
    assert "ETCDCTL_ENDPOINTS=" + cluster.client_urls[0] in "".join(cluster.seen)
    (url,), (pid,) = cluster.client_urls, cluster.pids
    call("PUT", url + "/v2/keys/hello", value="world")
    assert call("GET", url + "/v2/keys/hello")["node"]["value"] == "world"
    cluster.process.send_signal(signal.SIGINT)
    assert cluster.process.wait(30) == 0
    cluster.read_until("stopped all members")
    assert gone(pid)


def test_a_member_that_dies_is_reported(start_cluster: Callable[[int], LocalCluster]) -> None:
    cluster = start_cluster(1)
    (pid,) = cluster.pids
    os.kill(pid, signal.SIGKILL)
    assert "exited with code -9" in cluster.read_until(r"node1 \(pid \d+\) exited")
    assert cluster.process.wait(30) == 1  # no member left


def test_three_members_form_one_cluster(start_cluster: Callable[[int], LocalCluster]) -> None:
    cluster = start_cluster(3)
    urls, pids = cluster.client_urls, cluster.pids
    assert len(urls) == 3 and len(pids) == 3
    eventually(lambda: all(member_names(url) == ["node1", "node2", "node3"] for url in urls),
               "not every member listed the three members")
    call("PUT", urls[0] + "/v2/keys/shared", value="from-node1")
    eventually(lambda: call("GET", urls[2] + "/v2/keys/shared")["node"]["value"] == "from-node1",
               "the write on node1 never became readable on node3")
    cluster.process.send_signal(signal.SIGTERM)
    assert cluster.process.wait(30) == 0
    assert all(gone(pid) for pid in pids)

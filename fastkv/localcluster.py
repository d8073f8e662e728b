"""``fastkv cluster``: run an N-member cluster on this machine, for development and trials.

Members are ``node1`` .. ``nodeN`` on 127.0.0.1. Member *i* (from 1) serves clients on
``base + 2*(i-1)`` and peers on the port after it, so the default base 2379 gives
``node1`` 2379/2380, ``node2`` 2381/2382, ``node3`` 2383/2384 and so on. Each member keeps
its data in ``<data-dir>/nodeI`` and writes its log to ``<data-dir>/nodeI.log``; a data
directory that already holds a member is restarted as it is.

The command prints every member (name, pid, client and peer URL, log file) and an
``ETCDCTL_ENDPOINTS=...`` line, then waits. SIGINT (Ctrl-C) or SIGTERM stops every member
it started, and only those; a member that exits on its own is reported, and the command
ends (exit 1) once no member is left.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

SIZES = (1, 3, 5, 7)
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class MemberPlan:
    """Where one member of the local cluster lives."""

    name: str
    client_url: str
    peer_url: str
    data_dir: Path
    log_path: Path


@dataclass
class Member:
    """A started member process."""

    plan: MemberPlan
    process: subprocess.Popen[bytes]
    reported: bool = field(default=False)


def plan_cluster(size: int, base_port: int, data_dir: Path) -> list[MemberPlan]:
    """The members of a ``size``-member cluster whose first client port is ``base_port``."""
    plans = []
    for i in range(1, size + 1):
        client_port = base_port + 2 * (i - 1)
        plans.append(MemberPlan(f"node{i}", f"http://127.0.0.1:{client_port}",
                                f"http://127.0.0.1:{client_port + 1}", data_dir / f"node{i}",
                                data_dir / f"node{i}.log"))
    return plans


def member_args(plan: MemberPlan, cluster: Sequence[MemberPlan], heartbeat_ms: int,
                election_ms: int) -> list[str]:
    """The ``fastkv`` command line of one member."""
    initial = ",".join(f"{p.name}={p.peer_url}" for p in cluster)
    return [sys.executable, "-m", "fastkv", "--name", plan.name, "--data-dir", str(plan.data_dir),
            "--listen-client-urls", plan.client_url, "--advertise-client-urls", plan.client_url,
            "--listen-peer-urls", plan.peer_url, "--initial-advertise-peer-urls", plan.peer_url,
            "--initial-cluster", initial, "--initial-cluster-state", "new",
            "--heartbeat-interval", str(heartbeat_ms), "--election-timeout", str(election_ms)]


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the ``fastkv cluster`` process dies (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def start_member(plan: MemberPlan, args: list[str]) -> Member:
    """Start one member with its output going to its log file."""
    plan.data_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(plan.log_path, "ab") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True,
                                   preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    return Member(plan, process)


def _get(url: str) -> bytes | None:
    """The body of a 200 answer to ``GET url``, or ``None``."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bytes(response.read()) if response.status == 200 else None
    except (OSError, urllib.error.URLError):
        return None


def ready(plan: MemberPlan) -> bool:
    """Whether a member has published itself (its name is in its ``/v2/members``) and is
    healthy (``/health``: it has a leader and a quorum), as etcd's "ready to serve"."""
    members = _get(plan.client_url + "/v2/members")
    try:
        names = {m.get("name") for m in json.loads(members or b"{}").get("members", [])}
    except (ValueError, AttributeError):
        return False
    return plan.name in names and _get(plan.client_url + "/health") is not None


def stop_members(members: Sequence[Member]) -> None:
    """SIGTERM every running member, wait for all, SIGKILL any that outlives the grace period."""
    for member in members:
        if member.process.poll() is None:
            member.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for member in members:
        try:
            member.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            member.process.kill()
            member.process.wait()


def describe(members: Sequence[Member], data_dir: Path, out: TextIO) -> None:
    """Print where each member is and how to point etcdctl/fastkvctl at the cluster."""
    out.write(f"fastkv cluster: {len(members)} member(s), data in {data_dir}\n")
    for member in members:
        plan = member.plan
        out.write(f"  {plan.name}  pid {member.process.pid}  client {plan.client_url}  "
                  f"peer {plan.peer_url}  log {plan.log_path}\n")
    out.write("ETCDCTL_ENDPOINTS=" + ",".join(m.plan.client_url for m in members) + "\n")
    out.flush()


class Supervisor:
    """Watches the members until a stop is requested or none is left."""

    def __init__(self, members: list[Member], out: TextIO, poll_s: float = 0.2) -> None:
        self.members = members
        self.out = out
        self.poll_s = poll_s
        self.stop = threading.Event()

    def report_exits(self) -> None:
        """Report members that exited since the last look."""
        for member in self.members:
            code = member.process.poll()
            if code is not None and not member.reported:
                member.reported = True
                self.out.write(f"{member.plan.name} (pid {member.process.pid}) exited with code {code}; "
                               f"see {member.plan.log_path}\n")
                self.out.flush()

    def alive(self) -> bool:
        return any(m.process.poll() is None for m in self.members)

    def wait_ready(self, timeout: float) -> bool:
        """Wait until every member is :func:`ready`; ``False`` if asked to stop or out of time first."""
        deadline = time.monotonic() + timeout
        pending = list(self.members)
        while pending and not self.stop.is_set() and time.monotonic() < deadline:
            self.report_exits()
            pending = [m for m in pending if m.process.poll() is None and not ready(m.plan)]
            if pending:
                self.stop.wait(self.poll_s)
        return not pending

    def run(self) -> int:
        """Wait for readiness, then until stopped; the exit code of ``fastkv cluster``."""
        if self.wait_ready(READY_TIMEOUT_S):
            live = sum(m.process.poll() is None for m in self.members)
            self.out.write(f"{live} of {len(self.members)} member(s) ready; Ctrl-C stops them\n")
        elif not self.stop.is_set():
            self.out.write(f"members were not all healthy within {READY_TIMEOUT_S:g}s; still waiting\n")
        self.out.flush()
        while not self.stop.is_set() and self.alive():
            self.report_exits()
            self.stop.wait(self.poll_s)
        self.report_exits()
        return 0 if self.stop.is_set() else 1


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fastkv cluster",
                                     description="Run a local fastkv cluster (members node1..nodeN).")
    parser.add_argument("--size", type=int, default=3, choices=SIZES, help="number of members (default 3)")
    parser.add_argument("--base-port", type=int, default=2379,
                        help="client port of node1; member i uses base+2(i-1) and the port after it "
                             "for peers (default 2379)")
    parser.add_argument("--data-dir", default="fastkv-cluster",
                        help="directory holding nodeI/ and nodeI.log (default ./fastkv-cluster)")
    parser.add_argument("--heartbeat-interval", type=int, default=100, help="milliseconds (default 100)")
    parser.add_argument("--election-timeout", type=int, default=1000, help="milliseconds (default 1000)")
    args = parser.parse_args(list(argv))
    if not 0 < args.base_port <= 65535 - 2 * args.size:
        parser.error(f"--base-port {args.base_port} leaves no room for {args.size} members")
    return args


def main(argv: Sequence[str], out: TextIO | None = None) -> int:
    """``fastkv cluster [--size N] [--base-port P] [--data-dir D] [--heartbeat-interval ms]
    [--election-timeout ms]``; returns the exit code (0 after Ctrl-C/SIGTERM)."""
    out = out or sys.stdout
    args = parse_args(argv)
    data_dir = Path(args.data_dir)
    plans = plan_cluster(args.size, args.base_port, data_dir)
    members: list[Member] = []
    supervisor = Supervisor(members, out)
    previous = {sig: signal.signal(sig, lambda *_: supervisor.stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for plan in plans:
            members.append(start_member(plan, member_args(plan, plans, args.heartbeat_interval,
                                                          args.election_timeout)))
        describe(members, data_dir, out)
        return supervisor.run()
    finally:
        stop_members(members)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        out.write("stopped all members\n")
        out.flush()

"""examples/service-discovery end to end: four fleetd machines (supervisor runtime) over a three-member
fastkv cluster (the containers get every member's address on the Docker bridge), three
``web@`` containers with their discovery sidekicks and a load balancer container, all started with
fleetctl. A machine running a web instance dies (fleetd, its unit processes and its containers are
killed) together with the fastkv member every client tries first, as when a host running both goes
down; fleet moves the instance, its discovery key follows, the containers move on to the surviving
members, and the balancer keeps answering. The failover window (first to last failed request) is
measured and printed."""

from __future__ import annotations

import functools
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import harness
from tests.e2e.support import (
    EXAMPLE,
    Machine,
    bridge_url,
    containers,
    docker,
    etcd_urls,
    example_unit,
    fastkv_on_bridge,
    stop_all,
    wait,
)

INSTANCES = ("1", "2", "3")
#: Time for the whole failover: machine key expiry (agent_ttl 3 s), rescheduling, the new container,
#: its announcement; generous for a loaded two-core machine.
FAILOVER_LIMIT = 45.0
#: The fastkv members, the four machines and the directory with the example's unit files.
Cluster = tuple[list[harness.Server], list[Machine], Path]


@dataclass
class Prober:
    """Sends a request through the balancer every 0.1 s from a thread; records (time, body or None)."""

    url: str
    results: list[tuple[float, str | None]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Prober:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=3) as answer:
                    body: str | None = answer.read().decode().strip() if answer.status == 200 else None
            except (OSError, urllib.error.URLError):
                body = None
            self.results.append((time.monotonic(), body))
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


def get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=3) as answer:
            return answer.read().decode().strip()
    except (OSError, urllib.error.URLError):
        return None


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    members = fastkv_on_bridge(tmp_path, 3)
    machines = [Machine(uuid.uuid4().hex, tmp_path / f"m{i}", etcd_urls(members), agent_ttl="3s")
                for i in range(4)]
    units = tmp_path / "units"
    units.mkdir()
    endpoints = ",".join(bridge_url(member) for member in members)
    for path in EXAMPLE.glob("*.service"):  # the example, pointed at this test's cluster
        (units / path.name).write_text(example_unit(path.name, endpoints))
    try:
        for machine in machines:
            machine.start()
        for machine in machines:
            wait("fleetd up", machine.ready, logs=machine.log)
        yield members, machines, units
    finally:
        stop_all(machines)
        for member in members:
            member.stop()


def announced(members: list[harness.Server]) -> dict[str, str]:
    """Instance -> host:port under /services/web, as the first member that answers has it."""
    body = next(filter(None, (get(f"{m.url}/v2/keys/services/web?recursive=true") for m in members)), None)
    nodes = json.loads(body).get("node", {}).get("nodes", []) if body else []
    return {n["key"].rsplit("/", 1)[1]: n["value"] for n in nodes if "value" in n}


def container_of(unit: str) -> dict[str, object] | None:
    running = [c for c in containers(f"fleet.unit={unit}") if c["State"]["Running"]]  # type: ignore[index]
    return running[0] if len(running) == 1 else None


def address(container: dict[str, object]) -> str:
    return str(container["NetworkSettings"]["IPAddress"])  # type: ignore[index]


def machine_of(container: dict[str, object]) -> str:
    return str(container["Config"]["Labels"]["fleet.machine"])  # type: ignore[index]



def test_balancer_survives_the_loss_of_a_web_machine(cluster: Cluster) -> None:
    members, machines, units = cluster
    first = machines[0]
    logs = lambda: "\n".join(f"--- {m.machine_id[:8]}\n{m.log()[-1500:]}" for m in machines)  # noqa: E731
    names = [f"web@{i}.service" for i in INSTANCES] + [f"web-discovery@{i}.service" for i in INSTANCES]
    done = first.fleetctl("start", "--no-block", *(str(units / n) for n in names), str(units / "lb.service"))
    assert done.returncode == 0, done.stdout + done.stderr

    wait("three web instances announced", lambda: len(announced(members)) == 3, timeout=60, logs=logs)
    lb = wait("the balancer's container", lambda: container_of("lb.service"), timeout=30, logs=logs)
    url = f"http://{address(lb)}:8080/"
    seen: set[str] = set()

    def every_instance_seen() -> bool:
        seen.add(get(url) or "")
        return seen >= {f"web {i}" for i in INSTANCES}
    wait("the balancer to reach every instance", every_instance_seen, timeout=30, logs=logs)

    # the victim: a machine with a web instance but not the balancer
    webs = {i: wait(f"web {i}", functools.partial(container_of, f"web@{i}.service")) for i in INSTANCES}
    victim_instance = next(i for i in INSTANCES if machine_of(webs[i]) != machine_of(lb))
    victim = next(m for m in machines if m.machine_id == machine_of(webs[victim_instance]))
    old_address = announced(members)[victim_instance]

    prober = Prober(url).start()
    time.sleep(1.0)
    killed_at = time.monotonic()
    victim.kill()
    victim.kill_units()
    members[0].kill()  # the member first in every list: fleetd's etcd_servers and the units' ETCD

    def moved() -> str | None:
        container = container_of(f"web@{victim_instance}.service")
        if container is None or machine_of(container) == victim.machine_id:
            return None
        new = f"{address(container)}:80"
        return new if announced(members).get(victim_instance) == new else None

    new_address = wait(f"web {victim_instance} moved and announced", moved, timeout=FAILOVER_LIMIT, logs=logs)
    wait(f"the balancer to reach web {victim_instance} again",
         lambda: any(body == f"web {victim_instance}" and t > killed_at for t, body in list(prober.results)),
         timeout=15, logs=logs)
    recovered_at = time.monotonic()
    time.sleep(2.0)
    prober.stop()

    before = [r for r in prober.results if r[0] < killed_at]
    during = [r for r in prober.results if killed_at <= r[0] <= recovered_at]
    after = [r for r in prober.results if r[0] > recovered_at]
    errors = [t for t, body in prober.results if body is None]
    window = (errors[-1] - errors[0]) if errors else 0.0
    print(f"\nweb {victim_instance}: {old_address} -> {new_address} (its machine and fastkv member "
          f"{members[0].name} killed); moved and answering "
          f"{recovered_at - killed_at:.1f}s after the kill; {len(prober.results)} requests, "
          f"{len(errors)} failed; failover window {window:.2f}s")
    assert before and all(body for _, body in before), "errors before the failure"
    assert after and all(body for _, body in after), "errors after the failover"
    assert all(killed_at <= t <= recovered_at for t in errors)
    assert sum(1 for _, body in during if body) > len(during) // 2, "the balancer stopped answering"
    assert {body for _, body in after} <= {f"web {i}" for i in INSTANCES}
    assert len(containers(f"fleet.machine={victim.machine_id}")) == 0
    balancer_log = docker("logs", str(lb["Id"])).stdout
    survivors = tuple(f" of {bridge_url(m)}:" for m in members[1:])
    assert any(s in balancer_log for s in survivors), f"the balancer never moved on:\n{balancer_log}"

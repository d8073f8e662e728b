"""The rules that decide which labelled containers fleetd removes (pure logic, no engine), and the
variables a unit gets to label its containers."""

from __future__ import annotations

from fleetd.runtime.base import NOT_FOUND, UnitRuntimeState
from fleetd.runtime.containers import Container, container_verdict, unit_environment
from fleetd.runtime.service import expand_env_words

RUNNING = UnitRuntimeState("loaded", "active", "running")
FAILED = UnitRuntimeState("loaded", "failed", "failed")
DEAD = UnitRuntimeState("loaded", "inactive", "dead")
RESTARTING = UnitRuntimeState("loaded", "activating", "auto-restart")


def box(cid: str, unit: str, state: str = "running", created: str = "2024-01-01T00:00:00Z") -> Container:
    return Container(id=cid, name=f"c-{cid}", unit=unit, state=state, image="busybox:local", created=created)


def removed(containers: list[Container], states: dict[str, UnitRuntimeState]) -> list[str]:
    return sorted(c.id for c in container_verdict(containers, states))


def test_containers_of_live_units_stay() -> None:
    assert removed([box("a", "web.service")], {"web.service": RUNNING}) == []


def test_containers_of_gone_dead_or_restarting_units_go() -> None:
    containers = [box("a", "gone.service"), box("b", "unknown.service"), box("c", "dead.service", "exited"),
                  box("d", "restarting.service", "exited")]
    states = {"gone.service": NOT_FOUND, "dead.service": DEAD, "restarting.service": RESTARTING}
    assert removed(containers, states) == ["a", "b", "c", "d"]


def test_a_failed_unit_keeps_its_exited_container_for_inspection_only() -> None:
    containers = [box("a", "crash.service", "exited"), box("b", "crash.service", "running")]
    assert removed(containers, {"crash.service": FAILED}) == ["b"]


def test_only_the_newest_running_container_of_a_unit_stays() -> None:
    containers = [box("old", "web.service", created="2024-01-01T00:00:00Z"),
                  box("new", "web.service", created="2024-01-01T00:00:05Z"),
                  box("older", "web.service", created="2023-12-31T00:00:00Z"),
                  box("exited", "web.service", "exited")]
    assert removed(containers, {"web.service": RUNNING}) == ["old", "older"]


def test_the_labels_variable_splits_into_docker_arguments() -> None:
    env = unit_environment("web@1.service", "m1")
    assert (env["FLEET_UNIT"], env["FLEET_MACHINE_ID"]) == ("web@1.service", "m1")
    argv = expand_env_words(["docker", "run", "$FLEET_DOCKER_LABELS", "busybox:local"], env)
    assert argv == ["docker", "run", "--label", "fleet.unit=web@1.service", "--label", "fleet.machine=m1",
                    "busybox:local"]


def test_a_container_describes_itself_for_status() -> None:
    described = box("3f2a1b9c0d1e99", "web.service").describe()
    assert described == "3f2a1b9c0d1e c-3f2a1b9c0d1e99 running (busybox:local)"
    crashed = Container(id="ab" * 32, name="crash", unit="x", state="exited", image="busybox:local",
                        created="", exit_code=3)
    assert crashed.describe() == f"{'ab' * 6} crash exited (3) (busybox:local)"

"""The rules that decide which labelled containers fleetd removes (pure logic, no engine), the
variables a unit gets to label its containers, and how the docker runtime reads a unit's commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetd.runtime.base import NOT_FOUND, UnitRuntimeState
from fleetd.runtime.containers import Container, container_verdict, unit_environment
from fleetd.runtime.docker import DockerRunError, Hook, parse_docker_run, parse_hook
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


def test_docker_run_options_become_the_container() -> None:
    env = {"GREETING": "hi", **unit_environment("web@1.service", "m1")}
    argv = expand_env_words(["/usr/bin/docker", "run", "--rm", "--pull=never", "--name", "web-1",
                             "$FLEET_DOCKER_LABELS", "-p", "127.0.0.1:8080:80", "-p8443:443/udp",
                             "-p", "9000", "-e", "A=1", "-e", "GREETING", "-e", "UNSET",
                             "-v", "/srv:/www:ro", "-v", "/cache", "-w", "/www", "busybox:local",
                             "httpd", "-f"], env)
    run = parse_docker_run(argv, env)
    assert (run.remove, run.pull, run.stop_timeout) == (True, "never", None)
    spec = run.spec
    assert (spec.image, spec.command) == ("busybox:local", ("httpd", "-f"))
    assert (spec.name, spec.working_dir) == ("web-1", "/www")
    assert spec.ports == {"80": ("127.0.0.1", 8080), "443/udp": 8443, "9000": None}
    assert spec.environment == ("A=1", "GREETING=hi")
    assert (spec.binds, spec.volumes) == (("/srv:/www:ro",), ("/cache",))
    assert spec.labels == {"fleet.unit": "web@1.service", "fleet.machine": "m1"}


def test_unsupported_docker_run_options_are_named() -> None:
    for option in ("-it", "--privileged", "--restart=always"):
        with pytest.raises(DockerRunError, match=f"option {option.split('=')[0]} is not supported"):
            parse_docker_run(["docker", "run", option, "busybox:local"], {})
    with pytest.raises(DockerRunError, match="no image"):
        parse_docker_run(["docker", "run", "--rm"], {})
    with pytest.raises(DockerRunError, match="--pull must be one of"):
        parse_docker_run(["docker", "run", "--pull=sometimes", "busybox:local"], {})


def test_env_files_are_read_at_start(tmp_path: Path) -> None:
    env_file = tmp_path / "web.env"
    env_file.write_text("# settings\nA=1\n\nHOME_DIR\nMISSING\n")
    argv = ["docker", "run", "--env-file", str(env_file), "busybox:local"]
    run = parse_docker_run(argv, {"HOME_DIR": "/x"})
    assert run.spec.environment == ("A=1", "HOME_DIR=/x")
    assert parse_docker_run(argv, {}, read_files=False).spec.environment == ()
    with pytest.raises(DockerRunError, match="cannot read --env-file"):
        parse_docker_run(["docker", "run", "--env-file", str(tmp_path / "none"), "busybox:local"], {})


def test_housekeeping_commands_around_the_container() -> None:
    assert parse_hook(["/usr/bin/docker", "rm", "-f", "web-1"], True) == Hook(
        "rm", ("web-1",), {"force": "true"}, True, "/usr/bin/docker rm -f web-1")
    assert parse_hook(["docker", "stop", "-t", "2", "web-1"]).options == {"time": "2"}
    assert parse_hook(["docker", "pull", "busybox:latest"]).targets == ("busybox:latest",)
    refused = (["/usr/bin/etcdctl", "set", "/a", "1"], ["docker", "exec", "web-1", "true"], ["docker", "rm"])
    for argv in refused:
        with pytest.raises(DockerRunError):
            parse_hook(argv)

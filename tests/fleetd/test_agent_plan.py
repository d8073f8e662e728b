"""The agent's reconcile: desired vs loaded units -> ordered load/unload/start/stop tasks with reasons."""

from collections.abc import Mapping

from fleetd.agent.plan import (
    REASON_NOT_LOADED,
    REASON_NOT_SCHEDULED,
    REASON_PURGE,
    REASON_RELOAD,
    REASON_START,
    REASON_STOP,
    AgentTask,
    AgentTaskKind,
    LoadedUnit,
    apply_task,
    desired_units,
    plan,
    purge_plan,
)
from fleetd.job import JobState, Unit
from fleetd.machine import MachineState
from fleetd.unit import UnitFile

ME = MachineState("10000000000000000000000000000001", "127.0.0.1", {"role": "web", "region": "us-east"})
OTHER = "20000000000000000000000000000002"
LAUNCHED, LOADED, INACTIVE = JobState.LAUNCHED, JobState.LOADED, JobState.INACTIVE


def unit(name: str, xfleet: str = "", state: JobState = LAUNCHED, command: str = "/bin/run") -> Unit:
    text = f"[Service]\nExecStart={command} {name}\n" + (f"[X-Fleet]\n{xfleet}" if xfleet else "")
    return Unit(name, UnitFile.from_text(text), state)


def units_of(*units: Unit) -> dict[str, Unit]:
    return {u.name: u for u in units}


def loaded(u: Unit, state: JobState) -> LoadedUnit:
    return LoadedUnit(u.hash, state)


def steps(units: Mapping[str, Unit], schedule: Mapping[str, str],
          current: Mapping[str, LoadedUnit]) -> list[tuple[str, str]]:
    return [(t.kind.type_name, t.unit_name) for t in plan(ME, units, schedule, current).tasks]


def test_fresh_agent_loads_then_reloads_then_starts() -> None:
    units = units_of(unit("b.service"), unit("a.service", state=LOADED), unit("c.service"))
    schedule = dict.fromkeys(units, ME.id)
    result = plan(ME, units, schedule, {})
    assert [(t.kind.type_name, t.unit_name, t.reason) for t in result.tasks] == [
        ("LoadUnit", "a.service", REASON_NOT_LOADED), ("LoadUnit", "b.service", REASON_NOT_LOADED),
        ("LoadUnit", "c.service", REASON_NOT_LOADED), ("ReloadUnitFiles", "", REASON_RELOAD),
        ("StartUnit", "b.service", REASON_START), ("StartUnit", "c.service", REASON_START)]
    assert result.tasks[0].unit == units["a.service"]


def test_units_scheduled_elsewhere_are_not_desired() -> None:
    units = units_of(unit("a.service"))
    assert steps(units, {"a.service": OTHER}, {}) == []


def test_loaded_but_not_scheduled_here_is_unloaded() -> None:
    stale = unit("stale.service")
    result = plan(ME, units_of(stale), {"stale.service": OTHER}, {"stale.service": loaded(stale, LAUNCHED)})
    assert [(t.kind, t.unit_name, t.reason) for t in result.tasks] == [
        (AgentTaskKind.UNLOAD, "stale.service", REASON_NOT_SCHEDULED),
        (AgentTaskKind.RELOAD, "", REASON_RELOAD)]


def test_destroyed_unit_still_loaded_is_unloaded() -> None:
    gone = unit("gone.service")
    assert steps({}, {}, {"gone.service": loaded(gone, LAUNCHED)}) == [
        ("UnloadUnit", "gone.service"), ("ReloadUnitFiles", "")]


def test_desired_inactive_is_unloaded() -> None:
    u = unit("a.service", state=INACTIVE)
    assert steps(units_of(u), {"a.service": ME.id}, {"a.service": loaded(u, LOADED)}) == [
        ("UnloadUnit", "a.service"), ("ReloadUnitFiles", "")]
    assert steps(units_of(u), {"a.service": ME.id}, {}) == []


def test_loaded_to_launched_starts_without_reload() -> None:
    u = unit("a.service")
    result = plan(ME, units_of(u), {"a.service": ME.id}, {"a.service": loaded(u, LOADED)})
    assert [(t.kind, t.reason) for t in result.tasks] == [(AgentTaskKind.START, REASON_START)]


def test_launched_to_loaded_stops() -> None:
    u = unit("a.service", state=LOADED)
    result = plan(ME, units_of(u), {"a.service": ME.id}, {"a.service": loaded(u, LAUNCHED)})
    assert [(t.kind, t.reason) for t in result.tasks] == [(AgentTaskKind.STOP, REASON_STOP)]


def test_matching_state_needs_nothing() -> None:
    u, v = unit("a.service"), unit("b.service", state=LOADED)
    current = {"a.service": loaded(u, LAUNCHED), "b.service": loaded(v, LOADED)}
    assert steps(units_of(u, v), dict.fromkeys(["a.service", "b.service"], ME.id), current) == []


def test_stale_file_with_unknown_state_is_loaded_again() -> None:
    u = unit("a.service")
    assert steps(units_of(u), {"a.service": ME.id}, {"a.service": loaded(u, INACTIVE)}) == [
        ("LoadUnit", "a.service"), ("ReloadUnitFiles", ""), ("StartUnit", "a.service")]


def test_changed_unit_file_is_unloaded_and_loaded_again() -> None:
    old, new = unit("a.service", command="/bin/old"), unit("a.service", command="/bin/new")
    result = plan(ME, units_of(new), {"a.service": ME.id}, {"a.service": loaded(old, LAUNCHED)})
    assert [(t.kind.type_name, t.unit_name) for t in result.tasks] == [
        ("UnloadUnit", "a.service"), ("LoadUnit", "a.service"), ("ReloadUnitFiles", ""),
        ("StartUnit", "a.service")]
    assert result.tasks[0].reason == (f"unit loaded with hash {old.hash[:7]} "
                                      f"but desired hash is {new.hash[:7]}")


def test_task_order_across_units() -> None:
    a, b, c, d = unit("a.service", state=LOADED), unit("b.service"), unit("c.service"), unit("d.service")
    units = units_of(a, b, c)
    schedule = {"a.service": ME.id, "b.service": ME.id, "c.service": ME.id}
    current = {"a.service": loaded(a, LAUNCHED), "b.service": loaded(b, LOADED),
               "d.service": loaded(d, LAUNCHED)}
    assert steps(units, schedule, current) == [
        ("UnloadUnit", "d.service"), ("LoadUnit", "c.service"), ("ReloadUnitFiles", ""),
        ("StopUnit", "a.service"), ("StartUnit", "b.service"), ("StartUnit", "c.service")]


def test_global_units_follow_metadata() -> None:
    units = units_of(unit("web-mon.service", "Global=true\nMachineMetadata=role=web\n"),
                     unit("db-mon.service", "Global=true\nMachineMetadata=role=db\n"),
                     unit("all.service", "Global=true\n"))
    desired, refused = desired_units(ME, units, {})
    assert sorted(desired) == ["all.service", "web-mon.service"]
    assert refused == [("db-mon.service",
                        "local Machine metadata insufficient: metadata role=web (wants db)")]


def test_global_units_conflicting_with_earlier_units_are_refused() -> None:
    units = units_of(unit("conflict-global.0.service", "Global=true\nConflicts=conflict-global.*.service\n"),
                     unit("conflict-global.1.service", "Global=true\nConflicts=conflict-global.*.service\n"),
                     unit("a.service"))
    desired, refused = desired_units(ME, units, {"a.service": ME.id})
    assert sorted(desired) == ["a.service", "conflict-global.0.service"]
    assert [name for name, _ in refused] == ["conflict-global.1.service"]


def test_inactive_global_units_are_not_desired_and_block_nothing() -> None:
    units = units_of(unit("g0.service", "Global=true\nConflicts=g1.service\n", state=INACTIVE),
                     unit("g1.service", "Global=true\n"))
    desired, refused = desired_units(ME, units, {})
    assert sorted(desired) == ["g1.service"] and refused == []


def test_global_unit_machine_of_dynamic_metadata_change_unloads() -> None:
    g = unit("web-mon.service", "Global=true\nMachineMetadata=role=web\n")
    moved = ME.with_metadata({"role": "db"})
    result = plan(moved, units_of(g), {}, {"web-mon.service": loaded(g, LAUNCHED)})
    assert [(t.kind.type_name, t.unit_name) for t in result.tasks] == [
        ("UnloadUnit", "web-mon.service"), ("ReloadUnitFiles", "")]
    assert result.not_here == (("web-mon.service", "local Machine metadata insufficient: metadata role=db "
                                                    "(wants web)"),)


def test_unrecognized_unit_types_are_left_alone() -> None:
    target = unit("x.target")
    assert steps(units_of(target), {"x.target": ME.id}, {"y.slice": LoadedUnit("0" * 40, LAUNCHED)}) == []


def test_purge_unloads_everything() -> None:
    a, b = unit("a.service"), unit("b.service")
    tasks = purge_plan({"b.service": loaded(b, LAUNCHED), "a.service": loaded(a, LOADED)})
    assert [(t.kind.type_name, t.unit_name, t.reason) for t in tasks] == [
        ("UnloadUnit", "a.service", REASON_PURGE), ("UnloadUnit", "b.service", REASON_PURGE),
        ("ReloadUnitFiles", "", REASON_RELOAD)]
    assert purge_plan({}) == ()


def test_applying_the_tasks_converges() -> None:
    old = unit("a.service", command="/bin/old")
    units = units_of(unit("a.service"), unit("b.service", state=LOADED), unit("g.service", "Global=true\n"))
    schedule = {"a.service": ME.id, "b.service": ME.id}
    current: dict[str, LoadedUnit] = {"a.service": loaded(old, LAUNCHED), "z.service": loaded(old, LOADED)}
    for task in plan(ME, units, schedule, current).tasks:
        current = apply_task(current, task)
    assert current == {"a.service": loaded(units["a.service"], LAUNCHED),
                       "b.service": loaded(units["b.service"], LOADED),
                       "g.service": loaded(units["g.service"], LAUNCHED)}
    assert plan(ME, units, schedule, current).tasks == ()


def test_task_string_is_fleets() -> None:
    task = AgentTask(AgentTaskKind.UNLOAD, "hello.service", REASON_NOT_SCHEDULED)
    assert str(task) == ('{Type: UnloadUnit, Unit: hello.service, '
                         'Reason: "unit loaded but not scheduled here"}')

"""The engine's reconcile round: cluster snapshot in, schedule/unschedule tasks with reasons out."""

from collections.abc import Iterable

from fleetd.engine.plan import EngineConfig, EnginePlan, EngineTask, EngineTaskKind, plan, update_last_seen
from fleetd.job import JobState, Unit
from fleetd.machine import MachineState
from fleetd.unit import UnitFile

M1 = MachineState("3d1219c7c4c5404aaa1f6d2a48adfda4", metadata={"region": "us-east"})
M2 = MachineState("aaaaaaaa1111222233334444", metadata={"region": "us-west"})
M3 = MachineState("bbbbbbbb5555666677778888", metadata={"region": "us-east"})
M4 = MachineState("cccccccc9999000011112222")
ALL = (M1, M2, M3)
SCHEDULE = EngineTaskKind.SCHEDULE
UNSCHEDULE = EngineTaskKind.UNSCHEDULE


def unit(name: str, xfleet: str = "", state: JobState = JobState.LAUNCHED) -> Unit:
    text = f"[Service]\nExecStart=/bin/run {name}\n" + (f"[X-Fleet]\n{xfleet}" if xfleet else "")
    return Unit(name, UnitFile.from_text(text), state)


def units_of(*units: Unit) -> dict[str, Unit]:
    return {u.name: u for u in units}


def summary(result: EnginePlan) -> list[tuple[str, str, str]]:
    return [(t.kind.name, t.unit_name, t.machine_id[:8]) for t in result.tasks]


def converge(units: dict[str, Unit], schedule: dict[str, str], machines: Iterable[MachineState],
             rounds: int = 5) -> dict[str, str]:
    """Run rounds until nothing changes; return the final schedule."""
    machines = tuple(machines)
    for _ in range(rounds):
        result = plan(units, schedule, machines)
        if not result.tasks:
            return schedule
        schedule = result.schedule(schedule)
    raise AssertionError("did not converge")


def test_idle_cluster_placement_as_observed() -> None:
    units = units_of(unit("hello.service"), unit("ping.0.service"),
                     unit("pong.0.service", "MachineOf=ping.0.service\n"))
    result = plan(units, {}, ALL)
    assert summary(result) == [("SCHEDULE", "hello.service", "3d1219c7"),
                               ("SCHEDULE", "ping.0.service", "aaaaaaaa"),
                               ("SCHEDULE", "pong.0.service", "aaaaaaaa")]
    assert result.tasks[0].reason == "target state launched and unit not scheduled"
    assert result.tasks[0].describe() == f"Scheduled Unit(hello.service) to Machine({M1.id})"


def test_task_string_is_fleets() -> None:
    task = EngineTask(UNSCHEDULE, "a.service", "m1", "target Machine(m1) went away")
    assert str(task) == ('{Type: UnscheduleUnit, JobName: a.service, MachineID: m1, '
                         'Reason: "target Machine(m1) went away"}')
    assert task.describe() == "Unscheduled Unit(a.service) from Machine(m1)"


def test_inactive_units_are_not_placed_and_get_unscheduled() -> None:
    units = units_of(unit("a.service", state=JobState.INACTIVE), unit("b.service", state=JobState.INACTIVE))
    result = plan(units, {"b.service": M1.id}, ALL)
    assert [(t.kind, t.unit_name, t.reason) for t in result.tasks] == [
        (UNSCHEDULE, "b.service", "target state inactive")]


def test_loaded_units_are_placed_too() -> None:
    result = plan(units_of(unit("a.service", state=JobState.LOADED)), {}, ALL)
    assert result.tasks[0].reason == "target state loaded and unit not scheduled"


def test_stable_cluster_needs_nothing() -> None:
    units = units_of(unit("a.service"), unit("b.service"))
    assert plan(units, {"a.service": M1.id, "b.service": M2.id}, ALL).tasks == ()


def test_machine_went_away_unschedules_and_replaces_in_the_same_round() -> None:
    units = units_of(unit("web@1.service"), unit("web@2.service"))
    result = plan(units, {"web@1.service": M1.id, "web@2.service": M4.id}, ALL)
    assert [(t.kind, t.unit_name, t.machine_id, t.reason) for t in result.tasks] == [
        (UNSCHEDULE, "web@2.service", M4.id, f"target Machine({M4.id}) went away"),
        (SCHEDULE, "web@2.service", M2.id, "target state launched and unit not scheduled")]


def test_machine_no_longer_matching_metadata() -> None:
    units = units_of(unit("a.service", "MachineMetadata=region=us-east\n"))
    moved = MachineState(M1.id, metadata={"region": "eu"})
    result = plan(units, {"a.service": M1.id}, (moved, M2, M3))
    assert summary(result) == [("UNSCHEDULE", "a.service", "3d1219c7"), ("SCHEDULE", "a.service", "bbbbbbbb")]
    assert result.tasks[0].reason == (f"target Machine({M1.id}) unable to run unit: local Machine metadata "
                                      "insufficient: metadata region=eu (wants us-east)")


def test_unplaceable_units_report_why() -> None:
    units = units_of(unit("a.service", "MachineMetadata=region=mars\n"),
                     unit("b.service", "MachineID=ffffffff\n"))
    result = plan(units, {}, ALL)
    assert result.tasks == ()
    assert [u.unit_name for u in result.unplaced] == ["a.service", "b.service"]
    assert result.reason_for("b.service") == (
        "no machine can run Unit(b.service): "
        f'agent ID "{M1.id}" does not match required "ffffffff" (Machine 3d1219c7); '
        f'agent ID "{M2.id}" does not match required "ffffffff" (Machine aaaaaaaa); '
        f'agent ID "{M3.id}" does not match required "ffffffff" (Machine bbbbbbbb)')
    assert result.reason_for("nothing.service") is None


def test_no_machines_at_all() -> None:
    result = plan(units_of(unit("a.service")), {}, ())
    assert result.reason_for("a.service") == "no machines in the cluster to run Unit(a.service)"


def test_conflicting_units_spread_and_excess_stays_unscheduled() -> None:
    units = units_of(*(unit(f"conflict.{i}.service", "Conflicts=conflict.*.service\n") for i in range(5)))
    result = plan(units, {}, ALL)
    assert len(result.tasks) == 3
    assert len({t.machine_id for t in result.tasks}) == 3
    assert {u.unit_name for u in result.unplaced} == {"conflict.3.service", "conflict.4.service"}


def test_one_way_conflict_then_destroying_the_conflicter_lets_hello_start() -> None:
    hater = unit("conflicts-with-hello.service", "Conflicts=hello.service\n")
    hello = unit("hello.service")
    schedule = converge(units_of(hater, hello), {}, (M1,))
    assert schedule == {"conflicts-with-hello.service": M1.id}
    destroyed: dict[str, str] = {}  # destroying a unit deletes its whole job directory, target included
    assert converge(units_of(hello), destroyed, (M1,)) == {"hello.service": M1.id}


def test_global_units_get_no_tasks_but_count_as_load() -> None:
    units = units_of(unit("global.service", "Global=true\nMachineMetadata=region=us-east\n"),
                     unit("a.service"))
    result = plan(units, {}, ALL)
    assert summary(result) == [("SCHEDULE", "a.service", "aaaaaaaa")]


def test_global_unit_with_a_stale_target_is_ignored() -> None:
    units = units_of(unit("global.service", "Global=true\n"))
    assert plan(units, {"global.service": M1.id}, ALL).tasks == ()


def test_schedule_of_unknown_unit_is_ignored() -> None:
    assert plan({}, {"ghost.service": M1.id}, ALL).tasks == ()


def test_machine_of_followers_move_with_their_target() -> None:
    units = units_of(unit("ping.1.service"), unit("pong.1.service", "MachineOf=ping.1.service\n"),
                     unit("a-follower.service", "MachineOf=z-leader.service\n"), unit("z-leader.service"))
    schedule = {"ping.1.service": M2.id, "pong.1.service": M2.id, "a-follower.service": M2.id,
                "z-leader.service": M2.id}
    result = plan(units, schedule, (M1, M3))
    after = result.schedule(schedule)
    assert after["ping.1.service"] == after["pong.1.service"]
    assert after["a-follower.service"] == after["z-leader.service"]
    assert set(after.values()) <= {M1.id, M3.id}
    assert result.unplaced == ()


def test_losing_a_member_moves_only_its_unit() -> None:
    units = units_of(*(unit(f"conflict.{i}.service", "Conflicts=conflict.*.service\n") for i in range(3)))
    schedule = converge(units, {}, (M1, M2, M3, M4))
    victim = schedule["conflict.1.service"]
    survivors = tuple(m for m in (M1, M2, M3, M4) if m.id != victim)
    after = converge(units, schedule, survivors)
    changed = {n for n in units if after[n] != schedule[n]}
    assert changed == {"conflict.1.service"}
    free = {m.id for m in survivors} - {schedule["conflict.0.service"], schedule["conflict.2.service"]}
    assert after["conflict.1.service"] in free


def test_replaces_moves_the_replaced_unit_next_round() -> None:
    units = units_of(unit("replace.0.service"), unit("replace.1.service"), unit("replace.2.service"),
                     unit("replace-kick0.service", "Replaces=replace.0.service\n"),
                     unit("x.service"), unit("y.service"))
    schedule = {"replace.0.service": M1.id, "replace.1.service": M2.id, "x.service": M2.id,
                "replace.2.service": M3.id, "y.service": M3.id}
    first = plan(units, schedule, ALL)
    assert summary(first) == [("SCHEDULE", "replace-kick0.service", "3d1219c7")]
    schedule = first.schedule(schedule)
    second = plan(units, schedule, ALL)
    assert [(t.kind, t.unit_name, t.machine_id[:8], t.reason) for t in second.tasks] == [
        (UNSCHEDULE, "replace.0.service", "3d1219c7",
         f"unit replaced by Unit(replace-kick0.service) on Machine({M1.id})"),
        (SCHEDULE, "replace.0.service", "aaaaaaaa",
         f"unit replaced by Unit(replace-kick0.service) on Machine({M1.id})")]
    assert plan(units, second.schedule(schedule), ALL).tasks == ()


def test_circular_replaces_on_one_machine_launch_only_one() -> None:
    units = units_of(unit("a.service", "Replaces=b.service\n"), unit("b.service", "Replaces=a.service\n"))
    schedule = converge(units, {}, (M1,))
    assert schedule == {"a.service": M1.id}


def test_grace_period_holds_units_of_a_vanished_machine() -> None:
    units = units_of(unit("a.service"))
    config = EngineConfig(grace=30.0)
    seen = {M4.id: 100.0}
    held = plan(units, {"a.service": M4.id}, ALL, now=110.0, machines_last_seen=seen, config=config)
    assert held.tasks == ()
    assert held.reason_for("a.service") == (f"target Machine({M4.id}) went away 10s ago; "
                                            "keeping the unit there for up to 30s")
    expired = plan(units, {"a.service": M4.id}, ALL, now=131.0, machines_last_seen=seen, config=config)
    assert summary(expired) == [("UNSCHEDULE", "a.service", "cccccccc"),
                                ("SCHEDULE", "a.service", "3d1219c7")]


def test_grace_period_zero_is_fleets_behaviour() -> None:
    result = plan(units_of(unit("a.service")), {"a.service": M4.id}, ALL, now=101.0,
                  machines_last_seen={M4.id: 100.0})
    assert result.tasks[0].kind is UNSCHEDULE


def test_update_last_seen() -> None:
    seen = update_last_seen({}, [M1.id, M2.id], 10.0, forget_after=60.0)
    assert seen == {M1.id: 10.0, M2.id: 10.0}
    seen = update_last_seen(seen, [M1.id], 20.0, forget_after=60.0)
    assert seen == {M1.id: 20.0, M2.id: 10.0}
    assert update_last_seen(seen, [M1.id], 80.0, forget_after=60.0) == {M1.id: 80.0}


def test_plan_schedule_only_removes_matching_targets() -> None:
    result = EnginePlan((EngineTask(UNSCHEDULE, "a.service", "m2", "r"),
                         EngineTask(SCHEDULE, "b.service", "m1", "r")))
    assert result.schedule({"a.service": "m1"}) == {"a.service": "m1", "b.service": "m1"}

"""fleet's least-loaded scheduler and AbleToRun rules (spec 5.3, 5.4)."""

from fleetd.engine.scheduler import (
    Action,
    AgentState,
    ClusterState,
    decide,
    decide_reschedule,
    runs_globally_on,
)
from fleetd.job import JobState, Unit
from fleetd.machine import MachineState
from fleetd.unit import UnitFile

M1 = MachineState("3d1219c7c4c5404aaa1f6d2a48adfda4", "127.0.0.1", {"region": "us-east", "role": "web"})
M2 = MachineState("aaaaaaaa1111222233334444", "127.0.0.2", {"region": "us-west"})
M3 = MachineState("bbbbbbbb5555666677778888", "127.0.0.3", {"region": "us-east", "disk": "ssd"})


def unit(name: str, xfleet: str = "", state: JobState = JobState.LAUNCHED) -> Unit:
    text = f"[Service]\nExecStart=/bin/run {name}\n" + (f"[X-Fleet]\n{xfleet}" if xfleet else "")
    return Unit(name, UnitFile.from_text(text), state)


def cluster(units: list[Unit], schedule: dict[str, str] | None = None,
            machines: tuple[MachineState, ...] = (M1, M2, M3)) -> ClusterState:
    return ClusterState({u.name: u for u in units}, schedule or {}, machines)


def agent(machine: MachineState, *units: Unit) -> AgentState:
    return AgentState(machine, {u.name: u for u in units})


# --- least loaded -------------------------------------------------------------------------------------

def test_idle_cluster_picks_smallest_machine_id() -> None:
    assert decide(cluster([unit("hello.service")]), unit("hello.service")).machine_id == M1.id


def test_least_loaded_then_machine_id() -> None:
    c = cluster([unit(n) for n in ("hello.service", "ping.0.service", "x.service")], {"hello.service": M1.id})
    assert decide(c, unit("ping.0.service")).machine_id == M2.id
    c.schedule_unit("ping.0.service", M2.id)
    assert decide(c, unit("x.service")).machine_id == M3.id
    c.schedule_unit("x.service", M3.id)
    assert decide(c, unit("y.service")).machine_id == M1.id


def test_inactive_units_do_not_count_towards_load() -> None:
    c = cluster([unit("a.service", state=JobState.INACTIVE)], {"a.service": M1.id})
    assert c.agents[M1.id].load == 0
    assert decide(c, unit("b.service")).machine_id == M1.id


def test_global_units_count_on_the_machines_they_match() -> None:
    c = cluster([unit("mon.service", "Global=true\nMachineMetadata=region=us-east\n")])
    assert [c.agents[m.id].load for m in (M1, M2, M3)] == [1, 0, 1]
    assert decide(c, unit("b.service")).machine_id == M2.id


def test_inactive_global_runs_nowhere() -> None:
    g = unit("mon.service", "Global=true\n", JobState.INACTIVE)
    assert not runs_globally_on(g, M1)
    assert runs_globally_on(g.with_target_state(JobState.LOADED), M1)


def test_schedule_and_unschedule_update_loads() -> None:
    c = cluster([unit("a.service")])
    c.schedule_unit("a.service", M2.id)
    assert c.agents[M2.id].load == 1
    c.schedule_unit("a.service", M3.id)
    assert (c.agents[M2.id].load, c.agents[M3.id].load) == (0, 1)
    c.unschedule_unit("a.service")
    assert c.agents[M3.id].load == 0 and "a.service" not in c.schedule


def test_schedule_entries_for_vanished_machines_are_kept_but_load_nothing() -> None:
    c = cluster([unit("a.service")], {"a.service": "gone0000"})
    assert c.schedule == {"a.service": "gone0000"}
    assert all(a.load == 0 for a in c.agents.values())


# --- AbleToRun ------------------------------------------------------------------------------------------

def test_machine_id_full_or_short() -> None:
    assert agent(M1).able_to_run(unit("p.service", f"MachineID={M1.id}\n")).action is Action.SCHEDULE
    assert agent(M1).able_to_run(unit("p.service", "MachineID=3d1219c7\n")).action is Action.SCHEDULE
    verdict = agent(M2).able_to_run(unit("p.service", "MachineID=3d1219c7\n"))
    assert verdict.action is Action.UNSCHEDULE
    assert verdict.reason == f'agent ID "{M2.id}" does not match required "3d1219c7"'
    assert agent(M1).able_to_run(unit("p.service", "MachineID=3d1219c\n")).action is Action.UNSCHEDULE


def test_machine_id_from_instance_specifier() -> None:
    pinned = unit("pin@aaaaaaaa.service", "MachineID=%i\n")
    assert decide(cluster([pinned]), pinned).machine_id == M2.id


def test_metadata_and_across_keys_or_within_key() -> None:
    east_web = unit("a.service", "MachineMetadata=region=us-east\nMachineMetadata=role=web\n")
    assert agent(M1).able_to_run(east_web).able
    assert not agent(M3).able_to_run(east_web).able
    either = unit("b.service", 'MachineMetadata="region=us-east" "region=us-west"\n')
    assert all(agent(m).able_to_run(either).able for m in (M1, M2, M3))
    verdict = agent(M2).able_to_run(east_web)
    assert verdict.reason.startswith("local Machine metadata insufficient")
    assert "metadata region=us-west (wants us-east)" in verdict.reason
    assert "no metadata role (wants web)" in verdict.reason


def test_metadata_from_instance_name() -> None:
    md = unit("metadata@ssd.service", "MachineMetadata=disk=%i\n")
    assert decide(cluster([md]), md).machine_id == M3.id
    invalid = unit("metadata@invalid.service", "MachineMetadata=disk=%i\n")
    decision = decide(cluster([invalid]), invalid)
    assert decision.machine_id is None
    assert decision.reason.startswith("no machine can run Unit(metadata@invalid.service): ")
    assert len(decision.rejections) == 3


def test_machine_of_requires_peer_scheduled_on_the_machine() -> None:
    ping, pong = unit("ping.service"), unit("pong.service", "MachineOf=ping.service\n")
    assert agent(M2, ping).able_to_run(pong).able
    verdict = agent(M1).able_to_run(pong)
    assert verdict.reason == "required peer Unit(ping.service) is not scheduled locally"
    c = cluster([ping, pong], {"ping.service": M3.id})
    assert decide(c, pong).machine_id == M3.id


def test_machine_of_unscheduled_target_is_unschedulable() -> None:
    pong = unit("pong.service", "MachineOf=ping.service\n")
    assert decide(cluster([pong]), pong).machine_id is None


def test_conflicts_checked_both_ways() -> None:
    hater = unit("conflicts-with-hello.service", "Conflicts=hello.service\n")
    hello = unit("hello.service")
    assert not agent(M1, hater).able_to_run(hello).able
    assert not agent(M1, hello).able_to_run(hater).able
    verdict = agent(M1, hater).able_to_run(hello)
    assert verdict.reason == ("found conflict with locally-scheduled Unit(conflicts-with-hello.service) "
                              "(glob 'hello.service')")


def test_a_unit_does_not_conflict_with_itself() -> None:
    c0 = unit("conflict.0.service", "Conflicts=conflict.*.service\n")
    assert agent(M1, c0).able_to_run(c0).able


def test_five_conflicting_units_on_three_machines() -> None:
    units = [unit(f"conflict.{i}.service", "Conflicts=conflict.*.service\n") for i in range(5)]
    c = cluster(units)
    placed = []
    for u in units:
        decision = decide(c, u)
        if decision.machine_id:
            c.schedule_unit(u.name, decision.machine_id)
            placed.append(decision.machine_id)
    assert sorted(placed) == sorted(m.id for m in (M1, M2, M3))


def test_multiple_conflicts_space_separated_and_repeated() -> None:
    a = unit("conflict.multiple.0.service",
             "Conflicts=conflict.multiple.1.service conflict.multiple.2.service\n")
    b = unit("conflict.multiple.1.service", "Conflicts=conflict.multiple.0.service\n"
                                            "Conflicts=conflict.multiple.2.service\n")
    c2 = unit("conflict.multiple.2.service")
    assert not agent(M1, a).able_to_run(c2).able
    assert not agent(M1, b).able_to_run(c2).able


def test_replaces_displaces_the_replaced_unit() -> None:
    old, kick = unit("replace.0.service"), unit("replace-kick0.service", "Replaces=replace.0.service\n")
    verdict = agent(M1, old).able_to_run(kick)
    assert verdict.action is Action.RESCHEDULE
    assert verdict.displaced == ("replace.0.service",)
    assert verdict.reason == f"found replaced Unit(replace.0.service) on Machine({M1.id})"
    assert agent(M1, kick).replaced_by(old) == "replace-kick0.service"
    refusal = agent(M1, kick).able_to_run(old).reason
    assert refusal == "replaced by locally-scheduled Unit(replace-kick0.service)"


def test_circular_replaces_never_share_a_machine() -> None:
    a = unit("a.service", "Replaces=b.service\n")
    b = unit("b.service", "Replaces=a.service\n")
    verdict = agent(M1, a).able_to_run(b)
    assert verdict.action is Action.UNSCHEDULE
    assert agent(M1, a).replaced_by(b) is None


def test_check_order_machine_id_before_metadata() -> None:
    u = unit("x.service", "MachineID=ffffffff\nMachineMetadata=region=mars\n")
    assert agent(M1).able_to_run(u).reason.startswith("agent ID")


def test_global_unit_placement() -> None:
    g = unit("mon.service", "Global=true\nMachineMetadata=region=us-east\nConflicts=web.*\n")
    assert agent(M1).able_to_run_global(g).able
    assert not agent(M2).able_to_run_global(g).able
    assert not agent(M1, unit("web.1.service")).able_to_run_global(g).able


# --- no placement ---------------------------------------------------------------------------------------

def test_no_machines() -> None:
    decision = decide(cluster([], machines=()), unit("a.service"))
    assert decision.machine_id is None
    assert decision.reason == "no machines in the cluster to run Unit(a.service)"


def test_reason_groups_machines_by_refusal() -> None:
    u = unit("x.service", "MachineMetadata=region=us-east\nConflicts=hello.service\n")
    c = cluster([unit("hello.service"), u], {"hello.service": M1.id}, machines=(M1, M2))
    decision = decide(c, u)
    assert decision.machine_id is None
    assert decision.reason == (
        "no machine can run Unit(x.service): local Machine metadata insufficient: metadata region=us-west "
        "(wants us-east) (Machine aaaaaaaa); found conflict with locally-scheduled Unit(hello.service) "
        "(glob 'hello.service') (Machine 3d1219c7)")


# --- reschedule -------------------------------------------------------------------------------------------

def test_decide_reschedule_ignores_constraints_and_current_machine() -> None:
    pinned = unit("r.service", f"MachineID={M1.id}\n")
    c = cluster([pinned, unit("busy.service")], {"r.service": M1.id, "busy.service": M2.id})
    assert decide_reschedule(c, pinned, M1.id).machine_id == M3.id
    lonely = cluster([pinned], {"r.service": M1.id}, machines=(M1,))
    assert decide_reschedule(lonely, pinned, M1.id).machine_id is None

"""The engine's reconcile: a snapshot of the cluster in, schedule/unschedule tasks out (spec 5.3-5.6).

One round, as fleet's engine reconciler:

1. Every scheduled non-global unit is unscheduled when its desired state is ``inactive``, its machine
   went away, or the machine can no longer run it (metadata or conflicts changed). A unit displaced by
   a unit that ``Replaces`` it is unscheduled and moved to the least-loaded other machine.
2. Every unscheduled non-global unit with desired state other than ``inactive`` is placed on the
   least-loaded machine able to run it. Units that cannot be placed are reported with the reason.

Global units get no tasks: each agent decides for itself (``fleetd.agent.plan``); the engine counts
them in the load of the machines they match.

Differences from fleet, all opt-in or additive: a grace period (``grace`` seconds, default 0 = fleet)
keeps units on a machine whose key vanished less than ``grace`` seconds ago, so a short etcd hiccup
does not move every unit; units are visited in name order (fleet: random), MachineOf followers after
the units they follow, so a unit and its peers move in one round; unplaceable units carry a reason.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fleetd.engine.scheduler import ClusterState, decide, decide_reschedule
from fleetd.job import JobState, Unit
from fleetd.machine import MachineState
from fleetd.unit import go_quote


class EngineTaskKind(enum.Enum):
    """The two things an engine does; values are fleet's task type names."""

    UNSCHEDULE = "UnscheduleUnit"
    SCHEDULE = "AttemptScheduleUnit"


@dataclass(frozen=True, slots=True)
class EngineTask:
    """Write (SCHEDULE) or delete (UNSCHEDULE) ``job/<unit>/target`` = ``machine_id``, because ``reason``.

    The executor schedules with a create-only write and unschedules with a delete conditioned on the
    previous value ``machine_id``, so a stale plan never clobbers a newer decision.
    """

    kind: EngineTaskKind
    unit_name: str
    machine_id: str
    reason: str

    def describe(self) -> str:
        """The log line fleet prints once the task is done."""
        if self.kind is EngineTaskKind.SCHEDULE:
            return f"Scheduled Unit({self.unit_name}) to Machine({self.machine_id})"
        return f"Unscheduled Unit({self.unit_name}) from Machine({self.machine_id})"

    def __str__(self) -> str:
        return (f"{{Type: {self.kind.value}, JobName: {self.unit_name}, MachineID: {self.machine_id}, "
                f"Reason: {go_quote(self.reason)}}}")


@dataclass(frozen=True, slots=True)
class Unplaced:
    """A unit that wants to run but was left unscheduled this round, and why."""

    unit_name: str
    reason: str


@dataclass(frozen=True, slots=True)
class EnginePlan:
    """The result of one round: tasks in execution order, units left unplaced, units held in grace."""

    tasks: tuple[EngineTask, ...] = ()
    unplaced: tuple[Unplaced, ...] = ()
    held: tuple[Unplaced, ...] = ()

    def schedule(self, before: Mapping[str, str]) -> dict[str, str]:
        """The non-global schedule after applying the tasks to ``before`` (unit name -> machine ID)."""
        after = dict(before)
        for task in self.tasks:
            if task.kind is EngineTaskKind.UNSCHEDULE:
                if after.get(task.unit_name) == task.machine_id:
                    del after[task.unit_name]
            else:
                after[task.unit_name] = task.machine_id
        return after

    def reason_for(self, unit_name: str) -> str | None:
        """Why ``unit_name`` is unplaced or held this round, or None."""
        return next((u.reason for u in (*self.unplaced, *self.held) if u.unit_name == unit_name), None)


def update_last_seen(previous: Mapping[str, float], machines: Iterable[str], now: float,
                     forget_after: float) -> dict[str, float]:
    """Track when each machine was last seen: present machines get ``now``; absent ones keep their time
    until they have been gone ``forget_after`` seconds."""
    seen = {mid: t for mid, t in previous.items() if now - t < forget_after}
    seen.update(dict.fromkeys(machines, now))
    return seen


@dataclass(frozen=True)
class EngineConfig:
    """Knobs of the engine's reconcile. ``grace`` = seconds a vanished machine keeps its units (0 = fleet)."""

    grace: float = 0.0


class _Round:
    """One reconcile round over a ``ClusterState``; collects tasks in order."""

    def __init__(self, cluster: ClusterState, machines_last_seen: Mapping[str, float], now: float,
                 config: EngineConfig) -> None:
        self.cluster = cluster
        self.last_seen = machines_last_seen
        self.now = now
        self.config = config
        self.tasks: list[EngineTask] = []
        self.unplaced: list[Unplaced] = []
        self.held: list[Unplaced] = []
        self.touched: set[str] = set()

    def emit(self, kind: EngineTaskKind, name: str, machine_id: str, reason: str) -> None:
        self.tasks.append(EngineTask(kind, name, machine_id, reason))
        self.touched.add(name)
        if kind is EngineTaskKind.SCHEDULE:
            self.cluster.schedule_unit(name, machine_id)
        else:
            self.cluster.unschedule_unit(name)

    def check_scheduled(self, unit: Unit, machine_id: str) -> None:
        """Step 1 for one scheduled unit: keep it, hold it, unschedule it, or move it if replaced."""
        if unit.target_state is JobState.INACTIVE:
            self.emit(EngineTaskKind.UNSCHEDULE, unit.name, machine_id, "target state inactive")
            return
        agent_state = self.cluster.agents.get(machine_id)
        if agent_state is None:
            self.machine_gone(unit, machine_id)
            return
        replacer = agent_state.replaced_by(unit)
        if replacer is not None:
            self.emit(EngineTaskKind.UNSCHEDULE, unit.name, machine_id,
                      f"unit replaced by Unit({replacer}) on Machine({machine_id})")
            moved = decide_reschedule(self.cluster, unit, machine_id)
            if moved.machine_id is None:
                self.unplaced.append(Unplaced(unit.name, moved.reason))
            else:
                self.emit(EngineTaskKind.SCHEDULE, unit.name, moved.machine_id,
                          f"unit replaced by Unit({replacer}) on Machine({machine_id})")
            return
        verdict = agent_state.able_to_run(unit)
        if not verdict.able:
            self.emit(EngineTaskKind.UNSCHEDULE, unit.name, machine_id,
                      f"target Machine({machine_id}) unable to run unit: {verdict.reason}")

    def machine_gone(self, unit: Unit, machine_id: str) -> None:
        """Unschedule ``unit`` from a vanished machine, unless that machine is still in its grace period."""
        went_away = f"target Machine({machine_id}) went away"
        last_seen = self.last_seen.get(machine_id)
        if self.config.grace > 0 and last_seen is not None and self.now - last_seen < self.config.grace:
            waited = self.now - last_seen
            self.held.append(Unplaced(unit.name, f"{went_away} {waited:.0f}s ago; keeping the unit there "
                                                 f"for up to {self.config.grace:.0f}s"))
            return
        self.emit(EngineTaskKind.UNSCHEDULE, unit.name, machine_id, went_away)

    def place(self, unit: Unit) -> None:
        """Step 2 for one unscheduled unit."""
        decision = decide(self.cluster, unit)
        if decision.machine_id is None:
            self.unplaced.append(Unplaced(unit.name, decision.reason))
            return
        self.emit(EngineTaskKind.SCHEDULE, unit.name, decision.machine_id,
                  f"target state {unit.target_state.value} and unit not scheduled")


def _placement_order(units: list[Unit]) -> list[Unit]:
    """Name order, but units with MachineOf peers after the others so their peers are placed first."""
    return sorted(units, key=lambda u: (bool(u.requirements.peers), u.name))


def plan(units: Mapping[str, Unit], schedule: Mapping[str, str], machines: Iterable[MachineState], *,
         now: float = 0.0, machines_last_seen: Mapping[str, float] | None = None,
         config: EngineConfig | None = None) -> EnginePlan:
    """Compute one engine round.

    ``units``: every unit in the registry by name; ``schedule``: non-global unit name -> target machine
    ID as stored (``job/<name>/target``); ``machines``: machines currently registered (metadata merged);
    ``machines_last_seen``: when each machine was last seen (see ``update_last_seen``), only needed
    with a grace period; ``now``: the caller's clock, in the same unit as ``machines_last_seen``.
    """
    config = config or EngineConfig()
    cluster = ClusterState(units, schedule, machines)
    round_ = _Round(cluster, machines_last_seen or {}, now, config)
    for name in sorted(cluster.schedule):
        if name in cluster.schedule and name not in round_.touched:  # not moved earlier this round
            round_.check_scheduled(cluster.units[name], cluster.schedule[name])
    waiting = [u for u in cluster.units.values()
               if not u.is_global and u.target_state is not JobState.INACTIVE
               and u.name not in cluster.schedule]
    for unit in _placement_order(waiting):
        round_.place(unit)
    return EnginePlan(tuple(round_.tasks), tuple(round_.unplaced), tuple(round_.held))

"""fleet's least-loaded scheduler and the rules deciding whether a machine can run a unit (spec 5.3, 5.4).

``AgentState`` is one machine plus the units on it; ``AgentState.able_to_run`` applies the
``[X-Fleet]`` rules in fleet's order -- MachineID, MachineMetadata, MachineOf, Conflicts (both ways),
Replaces -- and answers with a ``Verdict`` that always carries a reason.

``ClusterState`` is the engine's working copy of the cluster for one reconcile round: schedule and
unschedule update it so later decisions in the same round see earlier ones. ``decide`` picks the
first machine, by (number of units, machine ID), able to run the unit; when none is, the returned
``Decision`` says why for every machine, which fleet never told anyone (``fleetctl start`` hung).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from fleetd.job import JobState, Unit
from fleetd.machine import MachineState
from fleetd.unit import go_quote


class Action(enum.Enum):
    """What placing a unit on a machine would mean (fleet's ``job.JobAction``)."""

    SCHEDULE = "schedule"
    UNSCHEDULE = "unschedule"  # cannot run there
    RESCHEDULE = "reschedule"  # can run there, moving the units it replaces elsewhere


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer of ``AgentState.able_to_run``: the action, why, and the units a RESCHEDULE displaces."""

    action: Action
    reason: str = ""
    displaced: tuple[str, ...] = ()

    @property
    def able(self) -> bool:
        """True unless the unit cannot run on the machine."""
        return self.action is not Action.UNSCHEDULE


def _replaces_one_way(a: Unit, b: Unit) -> bool:
    """True when ``a`` replaces ``b`` and ``b`` does not replace ``a`` (circular Replaces are not moves)."""
    return (a.requirements.replaces_unit(b.name) is not None
            and b.requirements.replaces_unit(a.name) is None)


def _replaces_circular(a: Unit, b: Unit) -> bool:
    return (a.requirements.replaces_unit(b.name) is not None
            and b.requirements.replaces_unit(a.name) is not None)


@dataclass
class AgentState:
    """One machine and the units on it: scheduled non-global units plus the global units it runs."""

    machine: MachineState
    units: dict[str, Unit] = field(default_factory=dict)

    @property
    def load(self) -> int:
        """The number of units on the machine, globals included: what "least loaded" compares."""
        return len(self.units)

    def others(self, name: str) -> Iterable[Unit]:
        """Units on the machine other than ``name``, in name order."""
        return (self.units[n] for n in sorted(self.units) if n != name)

    def find_conflict(self, unit: Unit) -> tuple[str, str] | None:
        """(other unit, glob) of the first conflict with ``unit``, checked both ways; None if none."""
        for other in self.others(unit.name):
            pattern = (unit.requirements.conflicts_with(other.name)
                       or other.requirements.conflicts_with(unit.name))
            if pattern is not None:
                return other.name, pattern
        return None

    def able_to_run(self, unit: Unit) -> Verdict:
        """Whether ``unit`` can run here, in fleet's order of checks; the unit itself may already be here."""
        req = unit.requirements
        if req.machine_id is not None and not self.machine.match_id(req.machine_id):
            have, wanted = go_quote(self.machine.id), go_quote(req.machine_id)
            return Verdict(Action.UNSCHEDULE, f"agent ID {have} does not match required {wanted}")
        if req.metadata and not self.machine.has_metadata(req.metadata):
            missing = "; ".join(self.machine.missing_metadata(req.metadata))
            return Verdict(Action.UNSCHEDULE, f"local Machine metadata insufficient: {missing}")
        for peer in req.peers:
            if peer not in self.units:
                return Verdict(Action.UNSCHEDULE, f"required peer Unit({peer}) is not scheduled locally")
        return self._conflict_verdict(unit) or self._replaces_verdict(unit)

    def _replaces_verdict(self, unit: Unit) -> Verdict:
        displaced = []
        for other in self.others(unit.name):
            if other.is_global or unit.is_global:
                continue
            if _replaces_circular(unit, other):
                reason = f"circular Replaces with locally-scheduled Unit({other.name})"
                return Verdict(Action.UNSCHEDULE, reason)
            if _replaces_one_way(other, unit):
                return Verdict(Action.UNSCHEDULE, f"replaced by locally-scheduled Unit({other.name})")
            if _replaces_one_way(unit, other):
                displaced.append(other.name)
        if displaced:
            return Verdict(Action.RESCHEDULE,
                           f"found replaced Unit({', '.join(displaced)}) on Machine({self.machine.id})",
                           tuple(displaced))
        return Verdict(Action.SCHEDULE)

    def replaced_by(self, unit: Unit) -> str | None:
        """The name of a unit here that replaces ``unit`` (one way only), or None."""
        if unit.is_global:
            return None
        replacing = (o.name for o in self.others(unit.name) if not o.is_global and _replaces_one_way(o, unit))
        return next(replacing, None)

    def able_to_run_global(self, unit: Unit) -> Verdict:
        """Whether a global unit runs here: its MachineMetadata matches and it conflicts with nothing here."""
        req = unit.requirements
        if req.metadata and not self.machine.has_metadata(req.metadata):
            missing = "; ".join(self.machine.missing_metadata(req.metadata))
            return Verdict(Action.UNSCHEDULE, f"local Machine metadata insufficient: {missing}")
        return self._conflict_verdict(unit) or Verdict(Action.SCHEDULE)

    def _conflict_verdict(self, unit: Unit) -> Verdict | None:
        conflict = self.find_conflict(unit)
        if conflict is None:
            return None
        other, pattern = conflict
        reason = f"found conflict with locally-scheduled Unit({other}) (glob {pattern!r})"
        return Verdict(Action.UNSCHEDULE, reason)


def runs_globally_on(unit: Unit, machine: MachineState) -> bool:
    """True when the engine counts global ``unit`` as present on ``machine`` (its metadata matches).

    Desired state ``inactive`` globals run nowhere and are not counted.
    """
    if unit.target_state is JobState.INACTIVE:
        return False
    return not unit.requirements.metadata or machine.has_metadata(unit.requirements.metadata)


@dataclass(frozen=True, slots=True)
class Decision:
    """Where to place a unit. ``machine_id`` is None when no machine can run it; ``reason`` then says why.

    ``rejections`` lists (machine ID, reason) for every machine tried and refused, in the order tried.
    """

    machine_id: str | None
    reason: str = ""
    displaced: tuple[str, ...] = ()
    rejections: tuple[tuple[str, str], ...] = ()


class ClusterState:
    """The engine's view of the cluster during one reconcile round (mutable working copy).

    Built from all units, the non-global schedule (unit name -> machine ID) and the machines present.
    Scheduled units whose machine is absent are remembered in ``schedule`` but sit on no agent.
    """

    def __init__(self, units: Mapping[str, Unit], schedule: Mapping[str, str],
                 machines: Iterable[MachineState]) -> None:
        self.units: dict[str, Unit] = dict(units)
        self.schedule: dict[str, str] = {n: m for n, m in schedule.items()
                                         if m and n in self.units and not self.units[n].is_global}
        self.agents: dict[str, AgentState] = {m.id: AgentState(m) for m in machines}
        for name in sorted(self.units):
            unit = self.units[name]
            if unit.is_global:
                for agent in self.agents.values():
                    if runs_globally_on(unit, agent.machine):
                        agent.units[name] = unit
            elif name in self.schedule and unit.target_state is not JobState.INACTIVE:
                agent_state = self.agents.get(self.schedule[name])
                if agent_state is not None:
                    agent_state.units[name] = unit

    def schedule_unit(self, name: str, machine_id: str) -> None:
        """Record ``name`` as scheduled to ``machine_id`` (moving it if it was elsewhere)."""
        self.unschedule_unit(name)
        self.schedule[name] = machine_id
        if machine_id in self.agents:
            self.agents[machine_id].units[name] = self.units[name]

    def unschedule_unit(self, name: str) -> None:
        """Forget where ``name`` was scheduled."""
        old = self.schedule.pop(name, None)
        if old is not None and old in self.agents:
            self.agents[old].units.pop(name, None)

    def by_load(self, exclude: str | None = None) -> list[AgentState]:
        """Agents sorted by (load, machine ID), optionally leaving one machine out."""
        return sorted((a for a in self.agents.values() if a.machine.id != exclude),
                      key=lambda a: (a.load, a.machine.id))


def _summarize(name: str, rejections: list[tuple[str, str]]) -> str:
    """One line saying why no machine can run ``name``, grouping machines refused for the same reason."""
    by_reason: dict[str, list[str]] = {}
    for machine_id, reason in rejections:
        by_reason.setdefault(reason, []).append(machine_id[:8])
    parts = [f"{reason} (Machine {', '.join(sorted(ids))})" for reason, ids in by_reason.items()]
    return f"no machine can run Unit({name}): " + "; ".join(parts)


def decide(cluster: ClusterState, unit: Unit) -> Decision:
    """Choose the least-loaded machine able to run ``unit`` (fleet's ``leastLoadedScheduler.Decide``).

    Machines are tried by (number of units, machine ID); the first whose verdict is not UNSCHEDULE wins.
    """
    if not cluster.agents:
        return Decision(None, f"no machines in the cluster to run Unit({unit.name})")
    rejections: list[tuple[str, str]] = []
    for agent_state in cluster.by_load():
        verdict = agent_state.able_to_run(unit)
        if verdict.able:
            return Decision(agent_state.machine.id, verdict.reason, verdict.displaced, tuple(rejections))
        rejections.append((agent_state.machine.id, verdict.reason))
    return Decision(None, _summarize(unit.name, rejections), (), tuple(rejections))


def decide_reschedule(cluster: ClusterState, unit: Unit, current_machine_id: str) -> Decision:
    """Choose the least-loaded machine other than ``current_machine_id`` for a replaced unit.

    Like fleet's ``DecideReschedule`` no constraints are checked.
    """
    candidates = cluster.by_load(exclude=current_machine_id)
    if not candidates:
        return Decision(None, f"no other machine to move replaced Unit({unit.name}) to")
    return Decision(candidates[0].machine.id)

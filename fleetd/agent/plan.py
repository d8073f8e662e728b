"""The agent's reconcile: desired state vs what the runtime has loaded -> ordered tasks (spec 5.5).

Desired here: units whose ``target`` is this machine, plus global units whose MachineMetadata this
machine matches and that conflict with no unit accepted before them (name order). Current: the units
loaded here (their unit file hash) with the state the agent last drove each to (``loaded`` or
``launched``; ``inactive`` when unknown, e.g. a file left from a previous run).

Per unit, in name order:

* not desired, or desired ``inactive`` -> UnloadUnit;
* not loaded -> LoadUnit (+ StartUnit when desired ``launched``);
* loaded with another hash -> UnloadUnit, LoadUnit (+ StartUnit);
* current ``inactive`` -> LoadUnit (+ StartUnit when desired ``launched``);
* ``loaded`` and desired ``launched`` -> StartUnit; ``launched`` and desired ``loaded`` -> StopUnit.

Tasks are then ordered UnloadUnit < LoadUnit < ReloadUnitFiles < StopUnit < StartUnit (stable), with a
single ReloadUnitFiles when anything was loaded or unloaded. The executor stops at the first failure.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fleetd.engine.scheduler import AgentState
from fleetd.job import JobState, Unit
from fleetd.machine import MachineState
from fleetd.unit import go_quote, recognized_unit_type

REASON_NOT_SCHEDULED = "unit loaded but not scheduled here"
REASON_NOT_LOADED = "unit scheduled here but not loaded"
REASON_START = "unit currently loaded but desired state is launched"
REASON_STOP = "unit currently launched but desired state is loaded"
REASON_RELOAD = "always reload unit files"
REASON_PURGE = "purging agent"


class AgentTaskKind(enum.IntEnum):
    """Agent task types; the integer order is the execution order."""

    UNLOAD = 0
    LOAD = 1
    RELOAD = 2
    STOP = 3
    START = 4

    @property
    def type_name(self) -> str:
        """fleet's name for the task type, as logged."""
        return _TYPE_NAMES[self]


_TYPE_NAMES = {AgentTaskKind.UNLOAD: "UnloadUnit", AgentTaskKind.LOAD: "LoadUnit",
               AgentTaskKind.RELOAD: "ReloadUnitFiles", AgentTaskKind.STOP: "StopUnit",
               AgentTaskKind.START: "StartUnit"}


@dataclass(frozen=True, slots=True)
class AgentTask:
    """One runtime operation and why.

    ``unit`` carries the unit file for LOAD; ``unit_name`` is ``""`` for RELOAD.
    """

    kind: AgentTaskKind
    unit_name: str
    reason: str
    unit: Unit | None = None

    def __str__(self) -> str:
        return f"{{Type: {self.kind.type_name}, Unit: {self.unit_name}, Reason: {go_quote(self.reason)}}}"


@dataclass(frozen=True, slots=True)
class LoadedUnit:
    """A unit loaded on this machine: the hash of its unit file and the state the agent drove it to."""

    unit_hash: str
    state: JobState = JobState.INACTIVE


@dataclass(frozen=True, slots=True)
class AgentPlan:
    """Tasks in execution order, the desired units, and global units not run here with the reason."""

    tasks: tuple[AgentTask, ...]
    desired: Mapping[str, Unit]
    not_here: tuple[tuple[str, str], ...] = ()


def desired_units(machine: MachineState, units: Mapping[str, Unit],
                  schedule: Mapping[str, str]) -> tuple[dict[str, Unit], list[tuple[str, str]]]:
    """The units that should be on ``machine`` (name -> unit), and the global units refused with reasons.

    Only unit types the agent manages (``recognized_unit_type``) are considered. Global units with desired
    state ``inactive`` are not accepted and so block nothing.
    """
    accepted = AgentState(machine)
    refused: list[tuple[str, str]] = []
    for name in sorted(units):
        unit = units[name]
        if not recognized_unit_type(name):
            continue
        if not unit.is_global:
            if schedule.get(name) == machine.id:
                accepted.units[name] = unit
            continue
        if unit.target_state is JobState.INACTIVE:
            continue
        verdict = accepted.able_to_run_global(unit)
        if verdict.able:
            accepted.units[name] = unit
        else:
            refused.append((name, verdict.reason))
    return accepted.units, refused


def _tasks_for_unit(name: str, desired: Unit | None, current: LoadedUnit | None) -> list[AgentTask]:
    if desired is None or desired.target_state is JobState.INACTIVE:
        return [AgentTask(AgentTaskKind.UNLOAD, name, REASON_NOT_SCHEDULED)] if current is not None else []
    load = AgentTask(AgentTaskKind.LOAD, name, REASON_NOT_LOADED, desired)
    launched = desired.target_state is JobState.LAUNCHED
    start = [AgentTask(AgentTaskKind.START, name, REASON_START)] if launched else []
    if current is None:
        return [load, *start]
    if current.unit_hash != desired.hash:
        reason = f"unit loaded with hash {current.unit_hash[:7]} but desired hash is {desired.hash[:7]}"
        return [AgentTask(AgentTaskKind.UNLOAD, name, reason), load, *start]
    if current.state is JobState.INACTIVE:
        return [load, *start]
    if current.state is JobState.LOADED and desired.target_state is JobState.LAUNCHED:
        return start
    if current.state is JobState.LAUNCHED and desired.target_state is JobState.LOADED:
        return [AgentTask(AgentTaskKind.STOP, name, REASON_STOP)]
    return []


def order_tasks(tasks: Iterable[AgentTask]) -> tuple[AgentTask, ...]:
    """Sort by kind (stable) and add one ReloadUnitFiles when any unit file was loaded or unloaded."""
    tasks = list(tasks)
    if any(t.kind in (AgentTaskKind.LOAD, AgentTaskKind.UNLOAD) for t in tasks):
        tasks.append(AgentTask(AgentTaskKind.RELOAD, "", REASON_RELOAD))
    return tuple(sorted(tasks, key=lambda t: t.kind))


def plan(machine: MachineState, units: Mapping[str, Unit], schedule: Mapping[str, str],
         current: Mapping[str, LoadedUnit]) -> AgentPlan:
    """Compute one agent round for ``machine``.

    ``units``: every unit in the registry; ``schedule``: non-global unit name -> target machine ID;
    ``current``: units loaded here (only recognized types are looked at).
    """
    desired, refused = desired_units(machine, units, schedule)
    loaded = {n: c for n, c in current.items() if recognized_unit_type(n)}
    tasks = [t for name in sorted(desired.keys() | loaded.keys())
             for t in _tasks_for_unit(name, desired.get(name), loaded.get(name))]
    return AgentPlan(order_tasks(tasks), desired, tuple(refused))


def purge_plan(current: Mapping[str, LoadedUnit]) -> tuple[AgentTask, ...]:
    """The tasks of a graceful shutdown: unload every loaded unit (then one ReloadUnitFiles)."""
    return order_tasks(AgentTask(AgentTaskKind.UNLOAD, name, REASON_PURGE) for name in sorted(current))


def apply_task(current: Mapping[str, LoadedUnit], task: AgentTask) -> dict[str, LoadedUnit]:
    """The agent's view of what is loaded after ``task`` succeeded (the executor keeps this cache).

    LOAD -> ``loaded`` with the unit's hash; START -> ``launched``; STOP -> ``loaded``; UNLOAD -> gone.
    """
    after = dict(current)
    if task.kind is AgentTaskKind.UNLOAD:
        after.pop(task.unit_name, None)
    elif task.kind is AgentTaskKind.LOAD and task.unit is not None:
        after[task.unit_name] = LoadedUnit(task.unit.hash, JobState.LOADED)
    elif task.kind in (AgentTaskKind.START, AgentTaskKind.STOP) and task.unit_name in after:
        state = JobState.LAUNCHED if task.kind is AgentTaskKind.START else JobState.LOADED
        after[task.unit_name] = LoadedUnit(after[task.unit_name].unit_hash, state)
    return after

"""Value types for units, their states and their schedule (spec 3), and the API's JSON shapes (spec 4).

This is a leaf module: it knows unit files (``fleetd.unit``) and nothing about etcd, HTTP or time.

States (``JobState``):

* desired state, ``target-state`` in etcd, ``desiredState`` in the API: ``inactive`` (known, not
  scheduled), ``loaded`` (scheduled and loaded into systemd), ``launched`` (started);
* current state, computed by ``determine_job_state`` from the schedule, the published unit states and
  the agent's heartbeat: ``inactive`` -> ``loaded`` -> ``launched``.

The agent moves one step at a time (inactive -> loaded -> launched and back).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from fleetd.unit import Requirements, UnitFile, UnitNameInfo, go_quote


class JobState(enum.StrEnum):
    """A unit's desired or current state. The string value is the wire form."""

    INACTIVE = "inactive"
    LOADED = "loaded"
    LAUNCHED = "launched"


class JobStateError(ValueError):
    """Not a valid state; ``str()`` is fleet's message."""


def parse_job_state(text: str) -> JobState:
    """Parse a state's wire form; raise ``JobStateError`` (``invalid value "x" for JobState``) otherwise."""
    try:
        return JobState(text)
    except ValueError:
        raise JobStateError(f"invalid value {go_quote(text)} for JobState") from None


#: Requirements by (unit file hash, unit name); emptied when it reaches ``_REQUIREMENTS_LIMIT`` entries.
_REQUIREMENTS: dict[tuple[str, str], Requirements] = {}
_REQUIREMENTS_LIMIT = 65536


def requirements_of(unit_file: UnitFile, name: str) -> Requirements:
    """``Requirements.of(unit_file, name)``, parsed once per unit file and name: they depend on nothing
    else, and the engine and every agent ask for them for every unit on every round (``Unit`` objects
    are rebuilt from each registry read, so their own cache does not last)."""
    key = (unit_file.hash.hex, name)
    found = _REQUIREMENTS.get(key)
    if found is None:
        if len(_REQUIREMENTS) >= _REQUIREMENTS_LIMIT:
            _REQUIREMENTS.clear()
        found = _REQUIREMENTS[key] = Requirements.of(unit_file, name)
    return found


@dataclass(frozen=True)
class Unit:
    """A unit submitted to fleet: its name, its unit file and its desired state (``list-unit-files``)."""

    name: str
    unit_file: UnitFile
    target_state: JobState = JobState.INACTIVE

    @cached_property
    def requirements(self) -> Requirements:
        """The ``[X-Fleet]`` requirements with this unit's name substituted for specifiers."""
        return requirements_of(self.unit_file, self.name)

    @property
    def is_global(self) -> bool:
        """True for ``Global=`` truthy (last value wins): runs on every qualifying machine."""
        return self.requirements.is_global

    @property
    def hash(self) -> str:
        """The unit file's SHA-1 as 40 hex digits."""
        return self.unit_file.hash.hex

    @property
    def name_info(self) -> UnitNameInfo | None:
        """Template/instance facts of the name (None if it has no ``.``)."""
        return UnitNameInfo.parse(self.name)

    def with_target_state(self, state: JobState) -> Unit:
        """A copy with another desired state."""
        return Unit(self.name, self.unit_file, state)


@dataclass(frozen=True, slots=True)
class ScheduledUnit:
    """Where a non-global unit is scheduled and how far it got there.

    ``target_machine_id`` is ``""`` while unscheduled; ``state`` is the current state, None if unknown.
    """

    name: str
    target_machine_id: str = ""
    state: JobState | None = None

    @property
    def is_scheduled(self) -> bool:
        """True once the engine has written a target machine."""
        return bool(self.target_machine_id)


@dataclass(frozen=True, slots=True)
class UnitState:
    """systemd's view of one unit on one machine, as published by that machine's agent.

    The three systemd states are copied verbatim (``loaded/active/running``, ``not-found/...``).
    ``containers`` lists the unit's Docker containers, ``<short ID> <state>`` each
    (``3f2a1c0d9e8b running``): an addition to fleet's record (see ``encode_unit_state``).
    """

    unit_name: str
    machine_id: str
    unit_hash: str = ""
    load_state: str = ""
    active_state: str = ""
    sub_state: str = ""
    containers: tuple[str, ...] = ()

    def to_api(self) -> dict[str, Any]:
        """The API's ``UnitState`` (alphabetical keys, empty fields omitted)."""
        return omit_empty({
            "containers": list(self.containers),
            "hash": self.unit_hash,
            "machineID": self.machine_id,
            "name": self.unit_name,
            "systemdActiveState": self.active_state,
            "systemdLoadState": self.load_state,
            "systemdSubState": self.sub_state,
        })

    def same_systemd_state(self, other: UnitState | None) -> bool:
        """True when ``other`` reports the same hash and systemd states (nothing to republish)."""
        return other is not None and (self.unit_hash, self.load_state, self.active_state, self.sub_state) == (
            other.unit_hash, other.load_state, other.active_state, other.sub_state)


def determine_job_state(target_machine_id: str, has_unit_state: bool, heartbeat: str) -> JobState:
    """A unit's current state, as fleet's ``registry.determineJobState``.

    ``inactive`` unless the unit has a target machine and that machine published a unit state;
    then ``loaded``; ``launched`` if the ``job-state`` heartbeat also names the target machine.
    """
    if not target_machine_id or not has_unit_state:
        return JobState.INACTIVE
    if heartbeat != target_machine_id:
        return JobState.LOADED
    return JobState.LAUNCHED


def omit_empty(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Drop empty values, like Go's ``omitempty`` (``""``, None, empty lists and maps; keeps False/0)."""
    return {k: v for k, v in obj.items()
            if v is not None and not (isinstance(v, str | list | dict) and not v)}


def unit_to_api(unit: Unit, scheduled: ScheduledUnit | None = None, *,
                listing: bool = False) -> dict[str, Any]:
    """The API's ``Unit`` JSON: ``{"currentState","desiredState","machineID","name","options"}``.

    Non-global units report the current state and machine of ``scheduled`` (``inactive`` when unscheduled).
    Global units have neither; only the list endpoint (``listing=True``) reports ``currentState: inactive``.
    """
    current: JobState | None = JobState.INACTIVE
    machine_id = ""
    if unit.is_global:
        current = JobState.INACTIVE if listing else None
    elif scheduled is not None:
        current = scheduled.state or JobState.INACTIVE
        machine_id = scheduled.target_machine_id
    return omit_empty({
        "currentState": current.value if current else "",
        "desiredState": unit.target_state.value,
        "machineID": machine_id,
        "name": unit.name,
        "options": unit.unit_file.to_api(),
    })

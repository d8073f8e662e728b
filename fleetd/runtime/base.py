"""The interface every unit runtime implements (systemd over D-Bus, the built-in supervisor, ...).

A runtime runs the units the agent loads on this machine. It is asyncio-based and never blocks the
event loop. Contract of each operation, whatever the runtime:

* ``load(name, unit)`` makes the unit file known under ``name`` (replacing an earlier one; running
  processes are not touched, the new file applies from the next start). Afterwards ``states`` reports
  ``loaded`` as load state, or an error load state (``bad-setting``, ``error``) for a unit the runtime
  cannot run; ``start`` of such a unit raises ``UnitRuntimeError``.
* ``unload(name)`` stops the unit (waiting for it), forgets a failure and removes the unit file; the
  unit then reports ``not-found/inactive/dead``. Unloading an unknown unit does nothing.
* ``start(name)`` queues a start job and returns; progress shows in ``states``. Starting an active or
  activating unit does nothing. ``UnitRuntimeError`` if the unit is not loaded or cannot be run.
* ``stop(name)`` stops the unit and returns once it is inactive (or failed). Stopping a unit that is
  not running does nothing; stopping an unknown unit raises ``UnitRuntimeError``.
* ``reload_daemon()`` makes the runtime pick up loaded/unloaded unit files (systemd's daemon-reload).
* ``states(names)`` maps each name (all loaded units for None) to its ``UnitRuntimeState``; unknown
  names get ``NOT_FOUND``.
* ``units()`` maps each loaded unit to the SHA-1 of its unit file (what the agent compares hashes with).
* ``status(name)`` is the detail ``fleetctl status`` shows (None for an unknown unit).
* ``journal(name, lines, follow)`` yields the last ``lines`` journal lines, then with ``follow`` new
  ones until the iterator is closed.
* ``close()`` releases the runtime's resources. It never stops units: they keep running.

This is all the agent and the API use. fleet has no reload of a unit (no ``fleetctl reload``), so
``reload(name)`` (systemd's ExecReload=) is not part of the interface; the built-in supervisor offers
it as an extra.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from fleetd.files import write_atomically
from fleetd.unit import UnitFile


class UnitRuntimeError(Exception):
    """An operation on a unit failed; ``str()`` says why (shown to the user, logged by the agent)."""


@dataclass(frozen=True, slots=True)
class UnitRuntimeState:
    """systemd's three states of one unit, as published to the registry (``loaded/active/running``)."""

    load_state: str
    active_state: str
    sub_state: str

    def __str__(self) -> str:
        return f"{self.load_state}/{self.active_state}/{self.sub_state}"


#: What a runtime reports for a unit it does not know.
NOT_FOUND = UnitRuntimeState("not-found", "inactive", "dead")


@dataclass(frozen=True, slots=True)
class UnitStatus:
    """One unit in detail, for ``fleetctl status``.

    ``since`` is the wall-clock time of the last active-state change; ``main_pid`` None when there is
    none; ``result`` is systemd's result (``success``, ``exit-code``, ``signal``, ``timeout``...);
    ``exit`` describes how the main process ended (``code=exited, status=1/FAILURE``) or is ``""``;
    ``status_text`` is the last ``STATUS=`` a notify service sent; ``load_error`` why it cannot run;
    ``containers`` describes the unit's Docker containers, one line each (``fleetd.runtime.containers``).
    """

    name: str
    state: UnitRuntimeState
    description: str = ""
    since: float = 0.0
    main_pid: int | None = None
    result: str = "success"
    exit: str = ""
    status_text: str = ""
    load_error: str = ""
    containers: tuple[str, ...] = ()


@runtime_checkable
class UnitRuntime(Protocol):
    """What the agent drives. See the module docstring for each operation's contract."""

    async def load(self, name: str, unit: UnitFile) -> None:
        """Make ``unit`` known as ``name``."""

    async def unload(self, name: str) -> None:
        """Stop and forget ``name``."""

    async def start(self, name: str) -> None:
        """Queue a start of ``name``."""

    async def stop(self, name: str) -> None:
        """Stop ``name`` and wait until it is down."""

    async def reload_daemon(self) -> None:
        """Pick up changed unit files."""

    async def states(self, names: Iterable[str] | None = None) -> dict[str, UnitRuntimeState]:
        """The states of ``names`` (of every loaded unit for None)."""

    async def units(self) -> Mapping[str, str]:
        """Loaded unit name -> unit file hash (40 hex digits)."""

    async def status(self, name: str) -> UnitStatus | None:
        """The detail of ``name``, None when unknown."""

    def journal(self, name: str, lines: int = 10, follow: bool = False) -> AsyncIterator[str]:
        """The last ``lines`` journal lines of ``name``, then (``follow``) new ones."""

    async def close(self) -> None:
        """Release resources; units keep running."""


class HeldUnit(Protocol):
    """A unit a runtime runs from this process: its unit file and its current state."""

    unit_file: UnitFile

    def runtime_state(self) -> UnitRuntimeState:
        """systemd's three states for this unit now."""


class UnitTable:
    """What the runtimes that run units from this process (the built-in supervisor and the docker
    runtime) share: loaded units in ``_units``, each unit file also kept under
    ``state_dir/units/<name>`` so that a later process finds it (``_restore``), and ``load``,
    ``unload``, ``states`` and ``units`` over them. A runtime provides ``_register`` (make a
    unit file known), ``_restore`` (register one left in the state dir, None when there is none),
    ``stop``, ``_ensure_running`` (its background task) and ``_forget`` (what else goes with an
    unloaded unit)."""

    _units: MutableMapping[str, HeldUnit]
    state_dir: Path

    async def load(self, name: str, unit: UnitFile) -> None:
        """Make ``unit`` known as ``name`` and record it in the state dir (see ``UnitRuntime``)."""
        self._ensure_running()
        write_atomically(self.state_dir / "units" / name, unit.text)
        self._register(name, unit)

    async def unload(self, name: str) -> None:
        """Stop ``name`` (waiting), then forget it and remove its unit file; unknown names are ignored."""
        unit = self._loaded(name)
        if unit is None:
            return
        await self.stop(name)
        self._units.pop(name, None)
        (self.state_dir / "units" / name).unlink(missing_ok=True)
        self._forget(unit)

    async def states(self, names: Iterable[str] | None = None) -> dict[str, UnitRuntimeState]:
        """The state of each name in ``names`` (every loaded unit for None); ``NOT_FOUND`` if unknown."""
        wanted = list(self._units) if names is None else list(names)
        return {n: self._units[n].runtime_state() if n in self._units else NOT_FOUND for n in wanted}

    async def units(self) -> dict[str, str]:
        """Loaded unit name -> SHA-1 of its unit file."""
        return {name: unit.unit_file.hash.hex for name, unit in self._units.items()}

    async def stop(self, name: str) -> None:
        raise NotImplementedError

    def _loaded(self, name: str) -> Any:
        """The loaded unit ``name``, else the one left in the state dir (registered now), else None."""
        return self._units.get(name) or self._restore(name)

    def _require(self, name: str) -> Any:
        """The loaded (or restorable) unit ``name``; ``UnitRuntimeError`` when there is none."""
        unit = self._loaded(name)
        if unit is None:
            raise UnitRuntimeError(f"Unit {name} not found.")
        return unit

    def _register(self, name: str, unit_file: UnitFile) -> Any:
        raise NotImplementedError

    def _restore(self, name: str) -> Any:
        raise NotImplementedError

    def _ensure_running(self) -> None:
        raise NotImplementedError

    def _forget(self, unit: Any) -> None:
        raise NotImplementedError

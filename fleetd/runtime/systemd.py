"""The systemd runtime: units run as systemd units, driven over D-Bus (spec 5.5).

What each operation of the ``UnitRuntime`` interface does:

* ``load``: write the unit file to ``units_directory/<name>`` (mode 0644), for a service the unit's
  environment drop-in (below), ``LinkUnitFiles([path], runtime=true, force=true)``, and for a unit
  with an ``[Install]`` section ``EnableUnitFiles([name], runtime=true, force=true)``. A load over a
  loaded unit replaces it; when the new file has no ``[Install]`` section, ``DisableUnitFiles`` first
  removes the links the old one's enablement made.
* ``unload``: ``StopUnit(name, "replace")`` and wait for it; only when that worked
  ``DisableUnitFiles([name], runtime=true)`` (which removes the link too), ``ResetFailedUnit``, and the
  file and its drop-in are removed.
* ``start``/``stop``: ``StartUnit``/``StopUnit`` with mode ``replace``; ``stop`` waits until the stop job
  is done.
* ``reload_daemon``: ``Reload()``.
* ``states``: ``ListUnitsByNames``; where systemd lacks it (< 230), ``ListUnits`` and, for names it does
  not list, ``LoadUnit`` + the unit's properties. The states are systemd's, verbatim.
* ``units``: the unit files in ``units_directory`` of the types the agent manages, with their hashes.
* ``status``: the unit's and service's D-Bus properties; ``journal``: ``journalctl -u <name> -n N [-f]``
  (not on the agent's hot path).

The unit's environment. Every process of a service gets the variables ``environment(name)`` gives
(fleetd: ``FLEET_UNIT``, ``FLEET_MACHINE_ID``, ``FLEET_DOCKER_LABELS``, see
``fleetd.runtime.containers``) from a drop-in ``<dropin_directory>/<name>.d/fleet-docker.conf`` of
``Environment=`` lines. systemd reads drop-ins only from its unit search path, not beside a linked
file, so ``dropin_directory`` is systemd's runtime unit directory (``/run/systemd/system``, the one
``LinkUnitFiles(runtime=true)`` links into); the ``Reload`` that follows a load makes it effective. The
unit file itself stays fleet's text, so its hash is the registry's.

A unit systemd refuses. A unit file with a bad setting is linked and systemd reports it with its own
load state (``bad-setting``, ``error``); its start fails with systemd's message. When systemd refuses
the link or the enablement itself (an error reply), the file is kept, the link undone, and the unit is
reported ``error/inactive/dead`` with the reason as ``status().load_error``; its start raises
``UnitRuntimeError`` with that reason. The reason is kept next to the file (``.<name>.error``), so it
survives a restart of fleetd; loading the unit again or unloading it clears it. The agent thus sees a
failed unit instead of retrying the load every round, and goes on with the other units.

Errors of the bus itself (systemd unreachable, a broken connection) raise ``UnitRuntimeError`` and leave
nothing recorded (a load removes its file again): the agent retries the task in its next round. ``states``
then reports the states last seen instead of failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetd.files import write_atomically
from fleetd.runtime.base import NOT_FOUND, UnitRuntimeError, UnitRuntimeState, UnitStatus
from fleetd.runtime.containers import unit_environment
from fleetd.runtime.dbus import (
    NO_SUCH_UNIT,
    SERVICE_INTERFACE,
    UNIT_INTERFACE,
    UNKNOWN_METHOD,
    DBusError,
    DBusUnavailable,
    SystemdManager,
    UnitListing,
)
from fleetd.runtime.service import ExitStatus
from fleetd.unit import UnitFile, UnitParseError, recognized_unit_type

if TYPE_CHECKING:
    from fleetd.config import FleetConfig

log = logging.getLogger("fleetd.runtime.systemd")

#: Seconds ``stop`` waits for systemd's stop job (systemd's own stop timeouts are shorter).
STOP_WAIT = 300.0
#: Bounds of the interval at which a pending stop job is polled, in seconds.
POLL_INTERVAL = (0.02, 0.25)
#: Load state reported for a unit systemd refused to link or enable.
REFUSED = "error"
#: systemd's runtime unit directory of the system manager (LinkUnitFiles(runtime=true) links there).
SYSTEM_RUNTIME_UNITS = "/run/systemd/system"
#: The drop-in file that carries a unit's environment.
ENVIRONMENT_DROPIN = "fleet-docker.conf"
#: ``ExecMainCode`` values (``CLD_*`` of waitid) and how ``ExitStatus`` names them.
_EXIT_CODES = {1: "exited", 2: "killed", 3: "killed"}


def _error_text(err: Exception) -> str:
    return str(err) or type(err).__name__


def environment_dropin(variables: Mapping[str, str]) -> str:
    """A ``[Service]`` drop-in setting ``variables``: one quoted ``Environment=`` line each, with
    backslashes, quotes and ``%`` escaped, so that systemd passes every value on verbatim."""
    def quoted(key: str, value: str) -> str:
        text = f"{key}={value}".replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
        return f'Environment="{text}"'
    return "[Service]\n" + "".join(quoted(k, v) + "\n" for k, v in sorted(variables.items()))


def runtime_units_directory(user: bool = False) -> Path:
    """systemd's runtime unit directory: the system manager's, or ``$XDG_RUNTIME_DIR/systemd/user``
    for ``systemd --user``."""
    if not user:
        return Path(SYSTEM_RUNTIME_UNITS)
    return Path(os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}") / "systemd" / "user"


class SystemdRuntime:
    """Units run by systemd through its D-Bus API; see the module docstring for the contract."""

    def __init__(self, units_directory: str | Path, manager: SystemdManager | None = None, *,
                 journalctl: str = "journalctl", by_names: bool = True,
                 environment: Callable[[str], Mapping[str, str]] | None = None,
                 dropin_directory: str | Path = SYSTEM_RUNTIME_UNITS) -> None:
        """``manager`` defaults to systemd on the system bus; ``by_names=False`` reads states as on a
        systemd without ``ListUnitsByNames``; ``environment(name)``: the variables of a service's
        processes, written as a drop-in under ``dropin_directory`` (none without ``environment``)."""
        self.directory = Path(units_directory)
        self.manager = manager or SystemdManager()
        self.journalctl = journalctl
        self.environment = environment
        self.dropin_directory = Path(dropin_directory)
        self._by_names = by_names
        self._last: dict[str, UnitRuntimeState] = {}

    # -- files and refusals --------------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        return self.directory / name

    def _refusal_path(self, name: str) -> Path:
        return self.directory / f".{name}.error"

    def refusal(self, name: str) -> str:
        """Why systemd refused ``name`` when it was loaded, ``""`` if it did not."""
        try:
            return self._refusal_path(name).read_text()
        except OSError:
            return ""

    def _has(self, name: str) -> bool:
        return self._path(name).is_file()

    def _dropin_path(self, name: str) -> Path:
        return self.dropin_directory / f"{name}.d" / ENVIRONMENT_DROPIN

    def _write_environment(self, name: str) -> None:
        """Write the service's environment drop-in (services only: only they run processes here)."""
        if self.environment is None or not name.endswith(".service"):
            return
        path = self._dropin_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, environment_dropin(self.environment(name)))
        os.chmod(path, 0o644)

    def _remove_environment(self, name: str) -> None:
        """Remove the drop-in and its directory (if nothing else is left in it)."""
        path = self._dropin_path(name)
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            path.parent.rmdir()

    # -- the runtime interface -------------------------------------------------------------------------

    async def load(self, name: str, unit: UnitFile) -> None:
        """Write, link and (with ``[Install]``) enable ``unit`` as ``name``; see the module docstring."""
        path = self._path(name)
        replaced = self._has(name)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_atomically(path, unit.text)
            os.chmod(path, 0o644)
            self._write_environment(name)
        except OSError as err:
            raise UnitRuntimeError(f"cannot load {name}: {err}") from None
        self._refusal_path(name).unlink(missing_ok=True)
        try:
            if replaced and not unit.has_install_section:  # the old file's enablement must not outlive it
                await self._disable(name)
            await self.manager.link_unit_files([str(path)], runtime=True, force=True)
            if unit.has_install_section:
                await self.manager.enable_unit_files([name], runtime=True, force=True)
        except DBusError as err:
            await self._undo_links(name)
            write_atomically(self._refusal_path(name), f"systemd refused the unit: {err}")
        except DBusUnavailable as err:  # systemd may not have seen the file: leave nothing behind
            path.unlink(missing_ok=True)
            self._remove_environment(name)
            raise UnitRuntimeError(f"cannot load {name}: {err}") from None

    async def _undo_links(self, name: str) -> None:
        with contextlib.suppress(DBusError):
            await self._disable(name)

    async def _disable(self, name: str) -> None:
        """``DisableUnitFiles``; a unit file systemd does not know has nothing to disable."""
        try:
            await self.manager.disable_unit_files([name], runtime=True)
        except DBusError as err:
            if err.name != NO_SUCH_UNIT:
                raise

    async def unload(self, name: str) -> None:
        """Stop ``name`` (waiting), then disable it, forget its failure and remove its file."""
        if not self._has(name) and not self._refusal_path(name).exists():
            return
        await self._stop_and_wait(name)
        try:
            await self._disable(name)
            with contextlib.suppress(DBusError):  # not loaded or not failed: nothing to forget
                await self.manager.reset_failed_unit(name)
        except (DBusError, DBusUnavailable) as err:
            raise UnitRuntimeError(f"cannot unload {name}: {_error_text(err)}") from None
        self._path(name).unlink(missing_ok=True)
        self._refusal_path(name).unlink(missing_ok=True)
        self._remove_environment(name)
        self._last.pop(name, None)

    async def start(self, name: str) -> None:
        """``StartUnit(name, "replace")``; ``UnitRuntimeError`` with systemd's reason when it refuses."""
        self._require(name)
        try:
            await self.manager.start_unit(name, "replace")
        except (DBusError, DBusUnavailable) as err:
            raise UnitRuntimeError(f"cannot start {name}: {_error_text(err)}") from None

    async def stop(self, name: str) -> None:
        """``StopUnit(name, "replace")`` and wait until the stop job is done."""
        if not self._has(name):
            raise UnitRuntimeError(f"Unit {name} not loaded.")
        await self._stop_and_wait(name)

    def _require(self, name: str) -> None:
        if not self._has(name):
            raise UnitRuntimeError(f"Unit {name} not loaded.")
        refused = self.refusal(name)
        if refused:
            raise UnitRuntimeError(f"cannot start {name}: {refused}")

    async def _stop_and_wait(self, name: str) -> None:
        try:
            job = await self.manager.stop_unit(name, "replace")
        except DBusError as err:
            if err.name == NO_SUCH_UNIT:  # not loaded in systemd: nothing runs
                return
            raise UnitRuntimeError(f"cannot stop {name}: {err}") from None
        except DBusUnavailable as err:
            raise UnitRuntimeError(f"cannot stop {name}: {err}") from None
        await self._wait_job(name, job, STOP_WAIT)

    async def _wait_job(self, name: str, job: str, timeout: float) -> None:
        """Wait until systemd no longer has ``job`` pending for ``name``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        interval = POLL_INTERVAL[0]
        while True:
            listing = (await self._listings([name])).get(name)
            if listing is None or listing.job_id == 0 or listing.job_path != job:
                return
            if loop.time() >= deadline:
                raise UnitRuntimeError(f"{name} is still {listing.active_state}/{listing.sub_state} "
                                       f"after {timeout:g}s")
            await asyncio.sleep(interval)
            interval = min(interval * 2, POLL_INTERVAL[1])

    async def reload_daemon(self) -> None:
        """systemd's daemon-reload."""
        try:
            await self.manager.reload()
        except (DBusError, DBusUnavailable) as err:
            raise UnitRuntimeError(f"daemon-reload failed: {_error_text(err)}") from None

    async def states(self, names: Iterable[str] | None = None) -> dict[str, UnitRuntimeState]:
        """systemd's states of ``names`` (of every unit in the units directory for None)."""
        wanted = sorted(await self.units()) if names is None else list(names)
        if not wanted:
            return {}
        try:
            listings = await self._listings(wanted)
        except UnitRuntimeError as err:  # the bus is away: keep reporting what was last seen
            log.warning("%s; reporting the last known states", err)
            return {name: self._last.get(name, NOT_FOUND) for name in wanted}
        result = {}
        for name in wanted:
            listing = listings.get(name)
            state = NOT_FOUND if listing is None else UnitRuntimeState(
                listing.load_state, listing.active_state, listing.sub_state)
            if state.load_state in ("not-found", "loaded") and self.refusal(name):
                state = UnitRuntimeState(REFUSED, state.active_state, state.sub_state)
            result[name] = state
        self._last.update(result)
        return result

    async def _listings(self, names: list[str]) -> dict[str, UnitListing]:
        """name -> systemd's listing, by ``ListUnitsByNames`` or the fallback."""
        try:
            if self._by_names:
                try:
                    return {u.name: u for u in await self.manager.list_units_by_names(names)}
                except DBusError as err:
                    if err.name != UNKNOWN_METHOD:
                        raise
                    self._by_names = False
            return await self._listings_fallback(names)
        except (DBusError, DBusUnavailable) as err:
            raise UnitRuntimeError(f"cannot read unit states: {_error_text(err)}") from None

    async def _listings_fallback(self, names: list[str]) -> dict[str, UnitListing]:
        """``ListUnits``, then ``LoadUnit`` + properties for the names it does not list."""
        wanted = set(names)
        found = {u.name: u for u in await self.manager.list_units() if u.name in wanted}
        for name in wanted - set(found):
            path = await self.manager.load_unit(name)
            props = await self.manager.properties(path, UNIT_INTERFACE)
            job_id, job_path = props.get("Job", (0, "/"))
            found[name] = UnitListing(name, str(props.get("Description", "")), str(props["LoadState"]),
                                      str(props["ActiveState"]), str(props["SubState"]),
                                      str(props.get("Following", "")), path, int(job_id), "", str(job_path))
        return found

    async def units(self) -> dict[str, str]:
        """Unit name -> SHA-1 of its file, for every managed unit file in the units directory."""
        if not self.directory.is_dir():
            return {}
        hashes = {}
        for path in sorted(self.directory.iterdir()):
            if path.name.startswith(".") or not recognized_unit_type(path.name) or not path.is_file():
                continue
            try:
                hashes[path.name] = UnitFile.from_text(path.read_text()).hash.hex
            except (OSError, UnicodeDecodeError, UnitParseError):
                continue
        return hashes

    async def status(self, name: str) -> UnitStatus | None:
        """The unit's detail from systemd's properties; None when neither we nor systemd know it."""
        try:
            path = await self.manager.load_unit(name)
            unit = await self.manager.properties(path, UNIT_INTERFACE)
            service = await self.manager.properties(path, SERVICE_INTERFACE) if name.endswith(".service") \
                else {}
        except (DBusError, DBusUnavailable) as err:
            raise UnitRuntimeError(f"cannot read the status of {name}: {_error_text(err)}") from None
        refused = self.refusal(name)
        state = UnitRuntimeState(str(unit["LoadState"]), str(unit["ActiveState"]), str(unit["SubState"]))
        if state.load_state == "not-found" and not refused and not self._has(name):
            return None
        if refused and state.load_state in ("not-found", "loaded"):
            state = UnitRuntimeState(REFUSED, state.active_state, state.sub_state)
        return UnitStatus(name=name, state=state, description=str(unit.get("Description", "")),
                          since=int(unit.get("StateChangeTimestamp", 0)) / 1e6,
                          main_pid=int(service.get("MainPID", 0)) or None,
                          result=str(service.get("Result", "success")), exit=_describe_exit(service),
                          status_text=str(service.get("StatusText", "")),
                          load_error=refused or _load_error(unit))

    async def journal(self, name: str, lines: int = 10, follow: bool = False) -> AsyncIterator[str]:
        """``journalctl -u name -n lines [-f]``: the unit's last lines, then (``follow``) new ones."""
        program = shutil.which(self.journalctl)
        if program is None:
            raise UnitRuntimeError(f"{self.journalctl} is not installed")
        argv = [program, "--no-pager", "--quiet", "--output=short", "-u", name, "-n", str(lines)]
        process = await asyncio.create_subprocess_exec(
            *argv, *(["--follow"] if follow else []), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        assert process.stdout is not None
        try:
            while raw := await process.stdout.readline():
                yield raw.decode("utf-8", "replace").rstrip("\n")
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
            await process.wait()

    async def close(self) -> None:
        """Close the bus connection; units keep running."""
        await self.manager.close()


def _load_error(unit: dict[str, Any]) -> str:
    """systemd's ``LoadError`` (name, message) as text, ``""`` when the unit loaded fine."""
    error = unit.get("LoadError") or ("", "")
    return str(error[1] or error[0]) if error[0] else ""


def _describe_exit(service: dict[str, Any]) -> str:
    """How the main process last ended, as ``systemctl status`` says it; ``""`` if it never ended."""
    code = _EXIT_CODES.get(int(service.get("ExecMainCode", 0)))
    if code is None or not service.get("ExecMainExitTimestamp"):
        return ""
    return ExitStatus(code, int(service.get("ExecMainStatus", 0))).describe()


def create(config: FleetConfig, machine_id: str) -> SystemdRuntime:
    """The runtime ``fleetd`` uses for ``runtime = systemd``: systemd on the system bus (the session bus
    with ``systemd_user``), unit files in ``units_directory``, every service given the variables of
    ``fleetd.runtime.containers.unit_environment`` (``$FLEET_DOCKER_LABELS``...). ``fleetd`` wraps it in
    the container tracking, as every runtime that does not track containers itself."""
    bus = "SESSION" if config.systemd_user else "SYSTEM"
    return SystemdRuntime(config.units_directory, SystemdManager(bus),
                          environment=lambda name: unit_environment(name, machine_id),
                          dropin_directory=runtime_units_directory(config.systemd_user))

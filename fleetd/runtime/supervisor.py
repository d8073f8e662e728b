"""The built-in unit runtime: runs services as a process supervisor where there is no systemd.

Each unit goes through systemd's service state machine and reports the same states (``states``):

    inactive/dead -> activating/start-pre -> activating/start [-> activating/start-post] -> active/running
    (oneshot + RemainAfterExit: active/exited)
    -> deactivating/stop (ExecStop) -> deactivating/stop-sigterm [-> stop-sigkill]
    -> deactivating/stop-post (ExecStopPost) [-> final-sigterm -> final-sigkill]
    -> inactive/dead, or failed/failed, or activating/auto-restart -> (RestartSec) -> a new start.
    active/* -> reloading/reload (ExecReload, by ``reload``) -> active/* again, whatever its result.

Processes. Every process of a unit (ExecStartPre, the main process, ExecStop, ...) starts in a session
of its own; the unit's processes are all live processes in the sessions the unit started (found in
``/proc``), so children and grandchildren are covered unless they call ``setsid`` themselves. KillMode:
``control-group`` signals all of them, ``process`` only the main process, ``mixed`` the main process
with KillSignal and then all the rest with SIGKILL, ``none`` nobody. Each kill phase waits
TimeoutStopSec, then escalates to SIGKILL (unless ``SendSIGKILL=no``). Processes never read a pipe of
ours: stdout and stderr go to the unit's raw output file (see ``fleetd.runtime.journal``), stdin is
``/dev/null``.

Results. A main process that exits 0 (or with ``SuccessExitStatus=``), or a daemon killed by
SIGHUP/SIGINT/SIGTERM/SIGPIPE, ends the run with ``success``; otherwise ``exit-code``/``signal``;
timeouts give ``timeout``, a notify service exiting cleanly before ``READY=1`` gives ``protocol``,
unreadable environment files ``resources``, too many starts (StartLimitBurst in StartLimitIntervalSec)
``start-limit-hit``. A run that did not end in ``success`` leaves the unit ``failed/failed`` (reason in
``status``) unless Restart= restarts it; a stop asked for by ``stop``/``unload`` never restarts.
A main process that is not our child (a forking daemon's PIDFile process, an adopted process) is watched
through a pidfd; its exit status cannot be known and counts as ``exit-code`` unless we stopped it.

Adoption (surviving a restart of fleetd). The state directory holds, per unit, the loaded unit file
(``units/N``) and, while the unit has processes, a run record (``run/N.json``: main PID and its start
time, the unit's sessions, its state, the boot ID). ``adopt()`` — call it once after constructing the
supervisor — reloads every recorded unit file and takes over each unit whose main process is still the
same live process: it reports ``active`` again, is watched, stopped and restarted as before, and its
output keeps flowing into its journal. ``start`` also adopts instead of spawning when a live record
exists, so a restarted fleetd never runs a unit twice. Nothing here depends on the registry: units keep
running whatever happens to it, and ``close()`` leaves them running.

Time: every timeout and delay is an event-loop timer; the loop is never blocked (processes are asyncio
subprocesses reaped by asyncio's child watcher; foreign processes are watched through pidfds).
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import hashlib
import json
import math
import os
import pwd
import shutil
import signal
import socket
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fleetd.files import write_atomically
from fleetd.runtime.base import UnitRuntimeError, UnitRuntimeState, UnitStatus, UnitTable
from fleetd.runtime.journal import Journal
from fleetd.runtime.service import (
    EXIT_CHDIR,
    EXIT_EXEC,
    EXIT_GROUP,
    EXIT_USER,
    ExecCommand,
    ExitStatus,
    KillMode,
    LoadedService,
    NotifyAccess,
    ServiceResult,
    ServiceSpec,
    ServiceSpecError,
    ServiceType,
    SpecifierContext,
    parse_environment_file,
)
from fleetd.unit import UnitFile

#: How often process sets are re-scanned while waiting for them to go away, and output is pumped.
SCAN_INTERVAL = 0.05
PUMP_INTERVAL = 0.2
HISTORY = 64
#: The longest wait for the exit status of a main process known to be dead.
REAP_TIMEOUT = 2.0

_R = TypeVar("_R")


class _Stopped(Exception):
    """A stop was requested while the unit was starting."""


class _TimedOut(Exception):
    """An operation ran out of time; ``control`` is the control process still running, if any."""

    control: asyncio.subprocess.Process | None = None


@dataclass(frozen=True, slots=True)
class ProcInfo:
    """What ``/proc/<pid>/stat`` says about a process."""

    pid: int
    state: str
    session: int
    start_time: int


def proc_info(pid: int) -> ProcInfo | None:
    """Read ``/proc/<pid>/stat``; None when the process does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = data[data.rindex(")") + 2:].split()
    return ProcInfo(pid, fields[0], int(fields[3]), int(fields[19]))


def session_members(sessions: Mapping[int, int] | Iterable[int]) -> list[int]:
    """PIDs of the live (non-zombie) processes in any of ``sessions``, never a process of another session
    that happens to have the same ID.

    A session given as a mapping (session ID -> start time of its leader, in ``/proc/<pid>/stat``
    clock ticks; 0 = unknown) counts only while it can still be the one started: IDs 0 and 1 never
    (the kernel's and init's); not when a live process with the session's ID was started at another
    time (the ID was reused: the old session had emptied and a new process called ``setsid``); and
    never a member started before the leader. Plain session IDs get only the first check (for callers
    that pass sessions of processes they see alive).
    """
    starts = dict(sessions) if isinstance(sessions, Mapping) else dict.fromkeys(sessions, 0)
    wanted = {sid: start for sid, start in starts.items() if sid > 1 and _leader_matches(sid, start)}
    if not wanted:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = proc_info(int(entry))
            if (info is not None and info.session in wanted and info.state not in "ZX"
                    and info.start_time >= wanted[info.session]):
                found.append(info.pid)
    return found


def _leader_matches(sid: int, start: int) -> bool:
    """False when the process whose PID is ``sid`` lives but is not the leader started at ``start``."""
    if not start:
        return True
    leader = proc_info(sid)
    return leader is None or leader.start_time == start


def same_process(pid: int | None, start: int) -> bool:
    """True when ``pid`` (> 1) is a live process started at ``start`` (0 = unknown: any live process)."""
    info = proc_info(pid) if pid and pid > 1 else None
    return info is not None and info.state not in "ZX" and (not start or info.start_time == start)


def record_sessions(raw: object) -> dict[int, int]:
    """The sessions of a run record (``[[session ID, leader start time], ...]``) for ``session_members``;
    other shapes (an older record's bare IDs, which cannot be verified) give none."""
    if not isinstance(raw, list):
        return {}
    return {pair[0]: pair[1] for pair in raw if isinstance(pair, list) and len(pair) == 2
            and all(isinstance(x, int) for x in pair)}


def _alive(pid: int | None) -> bool:
    info = proc_info(pid) if pid else None
    return info is not None and info.state not in "ZX"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in (p for p in pids if p > 1):  # never the kernel's or init's (nor, with -1, everyone)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
            if sig not in (signal.SIGKILL, signal.SIGCONT):
                os.kill(pid, signal.SIGCONT)


class _SpawnError(Exception):
    """A command could not be executed; carries the exit status systemd would report (203/EXEC...)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = ExitStatus("exited", status)


@dataclass
class _Unit(LoadedService):
    """Everything the supervisor knows about one loaded unit."""

    main_pid: int | None = None
    main_start: int = 0
    main_exit: ExitStatus | None = None
    main_done: asyncio.Future[ExitStatus | None] | None = None
    control_pid: int | None = None
    sessions: dict[int, int] = field(default_factory=dict)  # session ID -> its leader's start time
    env: dict[str, str] = field(default_factory=dict)
    status_text: str = ""
    driver: asyncio.Task[None] | None = None
    stop_requested: bool = False
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    ready: bool = False
    notify: socket.socket | None = None
    start_times: deque[float] = field(default_factory=deque)
    restarts: int = 0
    history: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=HISTORY))
    watch_fds: list[int] = field(default_factory=list)
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)



class Supervisor(UnitTable):
    """The built-in runtime over ``state_dir`` (see the module docstring for the behaviour).

    ``hostname``/``machine_id`` feed specifiers and journal lines; ``clock`` gives wall-clock times
    (journal stamps, ``since``); all waiting uses the running event loop. ``unit_environment(name)``
    gives variables exported to every process of unit ``name`` (its Environment= settings win).
    """

    def __init__(self, state_dir: Path | str, *, hostname: str | None = None, machine_id: str = "",
                 clock: Callable[[], float] = time.time, journal_max_bytes: int = 1 << 20,
                 unit_environment: Callable[[str], Mapping[str, str]] | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.unit_environment = unit_environment
        self.hostname = hostname or socket.gethostname()
        self.machine_id = machine_id
        self.clock = clock
        for sub in ("units", "run"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        self.journal_store = Journal(self.state_dir / "journal", self.hostname, max_bytes=journal_max_bytes,
                                     clock=clock)
        self._units: dict[str, _Unit] = {}
        self._changed: list[asyncio.Future[None]] = []
        self._pump_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        self._closed = False

    # ---------------------------------------------------------------------------------------------
    # The runtime interface

    async def start(self, name: str) -> None:
        """Queue a start job (see ``UnitRuntime``); adopts the unit's live processes instead, if any."""
        self._ensure_running()
        unit = self._require(name)
        if unit.spec is None:
            raise UnitRuntimeError(f"Unit {name} has a bad unit file setting: {unit.load_error}")
        if unit.driver is not None and not unit.driver.done():
            if unit.sub_state == "auto-restart":
                unit.wakeup.set()  # restart now instead of after RestartSec
                return
            if not unit.stop_requested:
                return
            await self._wait_driver(unit)  # a stop is in progress: start after it
        if unit.active_state == "reloading":  # active/exited being reloaded: it is up
            return
        if self._adopt_unit(unit):
            return
        if unit.active_state == "active":  # oneshot + RemainAfterExit, already exited
            return
        self._begin(unit, self._drive(unit))
        # inactive/failed -> activating: the job is queued (states show it from now on)
        self._set_state(unit, "activating", "start-pre" if unit.spec.exec_start_pre else "start")

    async def stop(self, name: str) -> None:
        """Stop ``name`` and return once it is inactive or failed (see ``UnitRuntime``)."""
        unit = self._require(name)
        if unit.driver is None or unit.driver.done():
            if unit.active_state in ("active", "reloading"):  # active/exited: nothing runs, run the stop path
                unit.stop_requested = True
                self._begin(unit, self._drive_stop(unit))
            else:
                return
        unit.stop_requested = True
        unit.wakeup.set()
        await self._wait_driver(unit)

    async def reload(self, name: str) -> None:
        """systemd's ``reload``: run ExecReload= of an active unit and return when it is done.

        While the commands run the unit reports ``reloading/reload`` (``$MAINPID`` is set for them), then
        the state it had again: a reload never stops the unit, even when it fails. Raises
        ``UnitRuntimeError`` when the unit has no ExecReload= ("not applicable"), is not active, is
        stopped meanwhile, or a command fails or runs longer than TimeoutStartSec= (the command is then
        killed). Reloads of one unit run one after another.
        """
        unit = self._require(name)
        if unit.spec is None:
            raise UnitRuntimeError(f"Unit {name} has a bad unit file setting: {unit.load_error}")
        if not unit.spec.exec_reload:
            raise UnitRuntimeError(f"Job type reload is not applicable for unit {name}.")
        async with unit.reload_lock:
            if unit.active_state != "active" or unit.stop_requested:
                raise UnitRuntimeError(f"Unit {name} is not active, cannot reload.")
            result = await self._run_reload(unit, unit.sub_state)
        if result is not ServiceResult.SUCCESS:
            raise UnitRuntimeError(f"Reload of {name} failed with result '{result}'.")

    async def _run_reload(self, unit: _Unit, sub_state: str) -> ServiceResult:
        """active/<sub_state> -> reloading/reload -> active/<sub_state> (unless a stop took over)."""
        spec = unit.spec
        assert spec is not None
        self._log(unit, f"Reloading {unit.label}...")
        # active -> reloading/reload
        self._set_state(unit, "reloading", "reload")
        deadline = asyncio.get_running_loop().time() + spec.timeout_start
        try:
            result = await self._run_commands(unit, spec.exec_reload, deadline)
        except _Stopped:
            result = ServiceResult.SUCCESS
        except _TimedOut as timed_out:
            self._log(unit, f"{unit.name}: Reload operation timed out. Killing reload process.")
            if timed_out.control is not None:
                with contextlib.suppress(ProcessLookupError):
                    timed_out.control.kill()
            result = ServiceResult.TIMEOUT
        except _SpawnError as err:
            self._log(unit, f"{unit.name}: {err}")
            result = ServiceResult.EXIT_CODE
        if unit.stop_requested or (unit.active_state, unit.sub_state) != ("reloading", "reload"):
            raise UnitRuntimeError(f"Unit {unit.name} was stopped while reloading.")
        # reloading/reload -> active/<sub_state>
        self._set_state(unit, "active", sub_state)
        self._log(unit, f"Reloaded {unit.label}." if result is ServiceResult.SUCCESS
                  else f"{unit.name}: Reload failed with result '{result}'.")
        return result

    async def reload_daemon(self) -> None:
        """Nothing to do: ``load`` applies unit files at once (a running unit uses a new file from its next
        start, as after systemd's daemon-reload)."""

    async def status(self, name: str) -> UnitStatus | None:
        """The detail of ``name`` for ``fleetctl status`` (None when unknown)."""
        unit = self._units.get(name)
        if unit is None:
            return None
        return UnitStatus(name=name, state=unit.runtime_state(),
                          description=unit.spec.description if unit.spec else "", since=unit.since,
                          main_pid=unit.main_pid if _alive(unit.main_pid) else None, result=unit.result.value,
                          exit=unit.main_exit.describe() if unit.main_exit else "",
                          status_text=unit.status_text, load_error=unit.load_error)

    def journal(self, name: str, lines: int = 10, follow: bool = False) -> AsyncIterator[str]:
        """The unit's journal: the last ``lines`` lines, then (``follow``) new ones as they come."""
        if name in self._units:
            self.journal_store.pump(name)
        return self.journal_store.read(name, lines, follow)

    async def close(self) -> None:
        """Detach from every unit, leaving its processes running and its run record in place.

        Jobs in progress are abandoned where they are (a later ``adopt()`` picks the units up again);
        pending automatic restarts do not happen.
        """
        self._closed = True
        drivers = [u.driver for u in self._units.values() if u.driver is not None and not u.driver.done()]
        for task in drivers:
            task.cancel()
        if self._pump_task is not None:
            self._pump_task.cancel()
            drivers.append(self._pump_task)
        await asyncio.gather(*drivers, return_exceptions=True)
        for unit in self._units.values():
            self.journal_store.pump(unit.name)
            self._cancel_watch(unit)
            self._close_notify(unit)

    # ---------------------------------------------------------------------------------------------
    # Extras: adoption, waiting, history

    async def adopt(self) -> list[str]:
        """Reload the unit files recorded in the state dir and take over every unit whose processes
        survived (see the module docstring). Returns the names of the units taken over, sorted."""
        self._ensure_running()
        adopted = []
        for path in sorted((self.state_dir / "units").iterdir()):
            if path.suffix == ".tmp":
                continue
            unit = self._units.get(path.name) or self._restore(path.name)
            if unit is not None and (unit.driver is None or unit.driver.done()) and self._adopt_unit(unit):
                adopted.append(unit.name)
        return adopted

    async def wait_for(self, name: str, predicate: Callable[[UnitRuntimeState], bool] | str,
                       timeout: float) -> UnitRuntimeState:
        """Wait until ``name``'s state satisfies ``predicate`` (or equals ``"active/sub"`` / ``"active"``).

        Returns the state; raises ``TimeoutError`` after ``timeout`` seconds with the last state.
        """
        check = predicate if callable(predicate) else _state_matcher(predicate)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            state = (await self.states([name]))[name]
            if check(state):
                return state
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"{name} is {state}")
            waiter = loop.create_future()
            self._changed.append(waiter)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, remaining)

    def history(self, name: str) -> list[str]:
        """The unit's recent ``active/sub`` states, oldest first (for tests and debugging)."""
        unit = self._units.get(name)
        return [f"{a}/{s}" for a, s in unit.history] if unit else []

    def main_pid(self, name: str) -> int | None:
        """The unit's main PID, if it has a live one."""
        unit = self._units.get(name)
        return unit.main_pid if unit is not None and _alive(unit.main_pid) else None

    # ---------------------------------------------------------------------------------------------
    # Units, states and records

    def _register(self, name: str, unit_file: UnitFile) -> _Unit:
        spec, error = self._parse(name, unit_file)
        existing = self._units.get(name)
        if existing is not None:
            existing.unit_file, existing.spec, existing.load_error = unit_file, spec, error
            self._notify_changed()
            return existing
        unit = _Unit(name, unit_file, spec, error, since=self.clock())
        unit.history.append((unit.active_state, unit.sub_state))
        self._units[name] = unit
        self._notify_changed()
        return unit

    def _restore(self, name: str) -> _Unit | None:
        """Register a unit from the unit file a previous supervisor left in the state dir."""
        try:
            text = (self.state_dir / "units" / name).read_text()
        except (FileNotFoundError, IsADirectoryError):
            return None
        return self._register(name, UnitFile.from_text(text))

    def _parse(self, name: str, unit_file: UnitFile) -> tuple[ServiceSpec | None, str]:
        if not name.endswith(".service"):
            return None, "only .service units can be run by the built-in runtime"
        try:
            user = pwd.getpwuid(os.getuid())
            context = SpecifierContext(name, self.hostname, self.machine_id,
                                       os.environ.get("XDG_RUNTIME_DIR", "/run") if os.getuid() else "/run",
                                       user.pw_name, user.pw_uid, user.pw_dir, user.pw_shell)
            return ServiceSpec.from_unit(unit_file, context), ""
        except ServiceSpecError as err:
            return None, str(err)

    def _set_state(self, unit: _Unit, active: str, sub: str) -> None:
        if (active, sub) == (unit.active_state, unit.sub_state):
            return
        if active != unit.active_state:
            unit.since = self.clock()
        unit.active_state, unit.sub_state = active, sub
        unit.history.append((active, sub))
        self._save_record(unit)
        self._notify_changed()

    def _forget(self, unit: _Unit) -> None:
        self._cancel_watch(unit)
        self._notify_changed()

    def _notify_changed(self) -> None:
        waiters, self._changed = self._changed, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _record_path(self, unit: _Unit) -> Path:
        return self.state_dir / "run" / f"{unit.name}.json"

    def _save_record(self, unit: _Unit) -> None:
        """Persist what adoption needs while the unit has (or may have) processes or is active."""
        if unit.active_state in ("inactive", "failed") and unit.sub_state in ("dead", "failed"):
            self._record_path(unit).unlink(missing_ok=True)
            return
        record = {"main_pid": unit.main_pid, "main_start": unit.main_start,
                  "sessions": sorted(map(list, unit.sessions.items())),
                  "active_state": unit.active_state, "sub_state": unit.sub_state, "boot_id": _boot_id(),
                  "since": unit.since, "hash": unit.unit_file.hash.hex}
        write_atomically(self._record_path(unit), json.dumps(record))

    def _load_record(self, unit: _Unit) -> dict[str, object] | None:
        try:
            record: dict[str, object] = json.loads(self._record_path(unit).read_text())
        except (FileNotFoundError, ValueError):
            return None
        return record

    # ---------------------------------------------------------------------------------------------
    # Adoption

    def _adopt_unit(self, unit: _Unit) -> bool:
        """Take over the unit's recorded processes, if it still has some (or was active without any:
        oneshot + RemainAfterExit). Returns True when taken over; a stale record is removed.

        A live main process with the recorded start time is watched as the main process. If the main
        process died meanwhile but other processes of the unit live on, the unit is taken over as if its
        main process had just exited (status unknown): those processes are stopped and Restart= applies.
        """
        record = self._load_record(unit)
        if record is None or unit.spec is None:
            return False
        main = record.get("main_pid")
        main_pid = main if isinstance(main, int) else None
        sessions = record_sessions(record.get("sessions"))
        info = proc_info(main_pid) if main_pid else None
        main_alive = (info is not None and info.state not in "ZX"
                      and info.start_time == record.get("main_start"))
        exited = (record.get("active_state"), record.get("sub_state")) == ("active", "exited")
        if record.get("boot_id") != _boot_id() or not (main_alive or exited or session_members(sessions)):
            self._record_path(unit).unlink(missing_ok=True)
            return False
        unit.sessions, unit.result, unit.stop_requested = sessions, ServiceResult.SUCCESS, False
        unit.main_exit, unit.main_done, unit.main_pid, unit.ready = None, None, None, True
        since = record.get("since")
        unit.since = float(since) if isinstance(since, int | float) else self.clock()
        if unit.spec.type is ServiceType.NOTIFY or unit.spec.notify_access is not NotifyAccess.NONE:
            self._open_notify(unit)
        if main_pid is not None:
            self._set_main(unit, main_pid, None, recorded_start=record.get("main_start"))
        # (recorded state) -> active/running | active/exited
        self._set_state(unit, "active", "exited" if exited and not main_alive else "running")
        self._log(unit, f"Adopted {unit.label}" + (f" (main PID {main_pid})." if main_alive else "."))
        self._begin(unit, self._drive(unit, adopted=True))
        return True

    # ---------------------------------------------------------------------------------------------
    # Tasks

    def _begin(self, unit: _Unit, job: Coroutine[object, object, None]) -> None:
        """Make ``job`` the unit's driver (the previous one is done)."""
        unit.stop_requested = False
        unit.wakeup = asyncio.Event()
        unit.driver = asyncio.ensure_future(job)

    def _spawn_task(self, job: Coroutine[object, object, None]) -> None:
        """Run a helper task, keeping a reference until it is done."""
        task = asyncio.ensure_future(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _wait_driver(self, unit: _Unit) -> None:
        if unit.driver is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(unit.driver)

    def _ensure_running(self) -> None:
        if self._pump_task is None or self._pump_task.done():
            self._pump_task = asyncio.ensure_future(self._pump_forever())

    async def _pump_forever(self) -> None:
        while True:
            for unit in list(self._units.values()):
                if unit.sessions:
                    self.journal_store.pump(unit.name)
            await asyncio.sleep(PUMP_INTERVAL)

    def _log(self, unit: _Unit, message: str) -> None:
        self.journal_store.write(unit.name, message, pid=os.getpid())

    # ---------------------------------------------------------------------------------------------
    # The state machine

    async def _drive(self, unit: _Unit, *, adopted: bool = False) -> None:
        """Run the unit from a start (or an adoption) until it is dead, failed, or restarted and dead."""
        loop = asyncio.get_running_loop()
        while True:
            started = adopted
            if not adopted:
                if self._start_limit_hit(unit, loop.time()):
                    unit.result = ServiceResult.START_LIMIT_HIT
                    self._log(unit, "Start request repeated too quickly.")
                    self._enter_dead(unit)
                    return
                started = await self._activate(unit)
            adopted = False
            if started:
                await self._serve(unit)
                await self._stop_commands(unit)
            await self._finish(unit)
            assert unit.spec is not None
            if unit.stop_requested or not unit.spec.restart.should_restart(unit.result):
                self._enter_dead(unit)
                return
            if not await self._auto_restart(unit):
                return

    async def _drive_stop(self, unit: _Unit) -> None:
        """The stop path of a unit that is active without processes (oneshot + RemainAfterExit)."""
        await self._stop_commands(unit)
        await self._finish(unit)
        self._enter_dead(unit)

    def _start_limit_hit(self, unit: _Unit, now: float) -> bool:
        assert unit.spec is not None
        times = unit.start_times
        while times and now - times[0] > unit.spec.start_limit_interval:
            times.popleft()
        if unit.spec.start_limit_burst > 0 and len(times) >= unit.spec.start_limit_burst:
            return True
        times.append(now)
        return False

    async def _auto_restart(self, unit: _Unit) -> bool:
        """Wait RestartSec in ``activating/auto-restart``; False (and dead) if a stop came meanwhile."""
        assert unit.spec is not None
        self._log(unit, f"{unit.name}: Failed with result '{unit.result}'."
                  if unit.result is not ServiceResult.SUCCESS else f"{unit.name}: Succeeded.")
        # deactivating -> activating/auto-restart
        self._set_state(unit, "activating", "auto-restart")
        unit.wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(unit.wakeup.wait(), _timeout(unit.spec.restart_sec))
        if unit.stop_requested:
            # activating/auto-restart -> inactive/dead (a stop cancels the pending restart)
            unit.result = ServiceResult.SUCCESS
            self._enter_dead(unit)
            return False
        unit.restarts += 1
        self._log(unit, f"{unit.name}: Scheduled restart job, restart counter is at {unit.restarts}.")
        return True

    async def _activate(self, unit: _Unit) -> bool:
        """start-pre, start, start-post. True once the unit is up; False when starting failed or was stopped
        (``unit.result`` says which)."""
        spec = unit.spec
        assert spec is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + spec.timeout_start
        unit.result, unit.main_exit, unit.ready, unit.status_text = ServiceResult.SUCCESS, None, False, ""
        unit.sessions, unit.main_pid, unit.main_done = {}, None, None
        self.journal_store.main_pids.pop(unit.name, None)
        self.journal_store.forget_output(unit.name)
        try:
            self._log(unit, f"Starting {unit.label}...")
            self._prepare_env(unit)
            if spec.exec_start_pre:
                # inactive -> activating/start-pre
                self._set_state(unit, "activating", "start-pre")
                self._fail(unit, await self._run_commands(unit, spec.exec_start_pre, deadline))
                if unit.result is not ServiceResult.SUCCESS:
                    return False
            # -> activating/start
            self._set_state(unit, "activating", "start")
            await self._start_main(unit, deadline)
            if spec.exec_start_post and unit.result is ServiceResult.SUCCESS:
                # activating/start -> activating/start-post
                self._set_state(unit, "activating", "start-post")
                self._fail(unit, await self._run_commands(unit, spec.exec_start_post, deadline))
        except _Stopped:
            return False
        except _TimedOut:
            self._log(unit, f"{unit.name}: Start operation timed out. Terminating.")
            self._fail(unit, ServiceResult.TIMEOUT)
            return False
        except _SpawnError as err:
            self._log(unit, f"{unit.name}: {err}")
            unit.main_exit = err.status
            self._fail(unit, ServiceResult.EXIT_CODE)
            return False
        if unit.result is not ServiceResult.SUCCESS:
            return False
        main_running = unit.main_done is not None and not unit.main_done.done()
        if main_running or (spec.type is ServiceType.FORKING and unit.main_pid is None
                            and session_members(unit.sessions)):
            # activating -> active/running
            self._set_state(unit, "active", "running")
        elif spec.remain_after_exit:
            # activating -> active/exited
            self._set_state(unit, "active", "exited")
        self._log(unit, f"{'Finished' if spec.type is ServiceType.ONESHOT else 'Started'} {unit.label}.")
        return True

    async def _start_main(self, unit: _Unit, deadline: float) -> None:
        """Spawn ExecStart according to Type= and wait as long as the type requires."""
        spec = unit.spec
        assert spec is not None
        if spec.type is ServiceType.ONESHOT:
            for command in spec.exec_start:
                process = await self._spawn(unit, command)
                self._set_main(unit, process.pid, process)
                status = await self._until(unit, self._main_future(unit), deadline)
                self._main_exited(unit, status, command.ignore_failure)
                if unit.result is not ServiceResult.SUCCESS:
                    return
            return
        command = spec.exec_start[0]
        process = await self._spawn(unit, command)
        if spec.type is ServiceType.FORKING:
            unit.control_pid = process.pid
            status = ExitStatus.from_returncode(await self._until(unit, process.wait(), deadline))
            unit.control_pid = None
            if status.result(spec.success_exit_status, daemon=False) is not ServiceResult.SUCCESS:
                self._log(unit, f"{unit.name}: Control process exited, {status.describe()}")
                self._fail(unit, status.result(spec.success_exit_status, daemon=False))
                return
            await self._find_forked_main(unit, deadline)
            return
        self._set_main(unit, process.pid, process)
        if spec.type is ServiceType.NOTIFY:
            await self._until(unit, self._ready_or_exit(unit), deadline)
            if not unit.ready and unit.main_done is not None and unit.main_done.done():
                status = unit.main_done.result()
                self._main_exited(unit, status, False)
                if unit.result is ServiceResult.SUCCESS:
                    self._fail(unit, ServiceResult.PROTOCOL)

    async def _ready_or_exit(self, unit: _Unit) -> None:
        while not unit.ready and unit.main_done is not None and not unit.main_done.done():
            unit.wakeup.clear()
            waiter = asyncio.ensure_future(unit.wakeup.wait())
            pending: list[asyncio.Future[Any]] = [waiter, unit.main_done]
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()

    async def _find_forked_main(self, unit: _Unit, deadline: float) -> None:
        """After a forking service's start process exited: the main PID from PIDFile= (waiting for it to
        appear until the start deadline), else the one process left in the unit, if exactly one."""
        spec = unit.spec
        assert spec is not None
        loop = asyncio.get_running_loop()
        if spec.pid_file:
            while True:
                pid = _read_pid_file(spec.pid_file)
                if pid is not None and _alive(pid):
                    self._set_main(unit, pid, None)
                    return
                if loop.time() >= deadline:
                    raise _TimedOut
                if unit.stop_requested:
                    raise _Stopped
                await asyncio.sleep(SCAN_INTERVAL)
        members = session_members(unit.sessions)
        if len(members) == 1:
            self._set_main(unit, members[0], None)

    async def _serve(self, unit: _Unit) -> None:
        """Wait while the unit is up: until its main process is gone or a stop is requested."""
        spec = unit.spec
        assert spec is not None
        while not unit.stop_requested:
            if unit.main_done is not None:
                if unit.main_done.done():
                    if unit.main_exit is None:
                        self._main_exited(unit, unit.main_done.result(), False)
                    if unit.result is ServiceResult.SUCCESS and spec.remain_after_exit:
                        # active/running -> active/exited
                        self._set_state(unit, "active", "exited")
                        unit.main_done = None
                        continue
                    return
                waits: list[asyncio.Future[Any]] = [unit.main_done]
            elif unit.active_state == "active" and unit.sub_state == "exited":
                waits = []
            elif session_members(unit.sessions):  # forking service whose main PID is unknown
                waits = [asyncio.ensure_future(asyncio.sleep(1.0))]
            else:
                return
            unit.wakeup.clear()
            waiter = asyncio.ensure_future(unit.wakeup.wait())
            try:
                await asyncio.wait([waiter, *waits], return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()

    async def _stop_commands(self, unit: _Unit) -> None:
        """ExecStop= in ``deactivating/stop`` (only for a unit that started successfully)."""
        spec = unit.spec
        assert spec is not None
        if unit.stop_requested:
            self._log(unit, f"Stopping {unit.label}...")
        if not spec.exec_stop:
            return
        # active -> deactivating/stop
        self._set_state(unit, "deactivating", "stop")
        deadline = asyncio.get_running_loop().time() + spec.timeout_stop
        try:
            self._fail(unit, await self._run_commands(unit, spec.exec_stop, deadline, stopping=True))
        except _TimedOut:
            self._log(unit, f"{unit.name}: Stopping timed out. Terminating.")
            self._fail(unit, ServiceResult.TIMEOUT)
        except _SpawnError as err:
            self._log(unit, f"{unit.name}: {err}")
            self._fail(unit, ServiceResult.EXIT_CODE)

    async def _finish(self, unit: _Unit) -> None:
        """Kill what is left (stop-sigterm/-sigkill), run ExecStopPost (stop-post), kill again (final-*)."""
        spec = unit.spec
        assert spec is not None
        await self._kill(unit, "stop")
        await self._collect_main_exit(unit)
        if unit.main_done is not None and unit.main_done.done() and unit.main_exit is None:
            self._main_exited(unit, unit.main_done.result(), False)
        if spec.exec_stop_post:
            # -> deactivating/stop-post
            self._set_state(unit, "deactivating", "stop-post")
            deadline = asyncio.get_running_loop().time() + spec.timeout_stop
            with contextlib.suppress(_Stopped):
                try:
                    result = await self._run_commands(unit, spec.exec_stop_post, deadline, stopping=True)
                    self._fail(unit, result)
                except _TimedOut:
                    self._fail(unit, ServiceResult.TIMEOUT)
                except _SpawnError as err:
                    self._log(unit, f"{unit.name}: {err}")
                    self._fail(unit, ServiceResult.EXIT_CODE)
            await self._kill(unit, "final")

    async def _collect_main_exit(self, unit: _Unit) -> None:
        """When the main process is dead but its exit not yet collected (the child watcher reports it a
        moment later), wait for it, so that ExecStopPost= sees ``$EXIT_CODE``/``$EXIT_STATUS``."""
        done = unit.main_done
        if done is not None and not done.done() and not _alive(unit.main_pid):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(done), REAP_TIMEOUT)

    def _enter_dead(self, unit: _Unit, *, logged: bool = False) -> None:
        """-> inactive/dead, or failed/failed when the run did not succeed."""
        self.journal_store.pump(unit.name)
        failed = unit.result is not ServiceResult.SUCCESS
        if not logged:
            if failed:
                self._log(unit, f"{unit.name}: Failed with result '{unit.result}'.")
            elif unit.stop_requested:
                self._log(unit, f"Stopped {unit.label}.")
            else:
                self._log(unit, f"{unit.name}: Deactivated successfully.")
        self._close_notify(unit)
        self._cancel_watch(unit)
        if not session_members(unit.sessions):
            self.journal_store.forget_output(unit.name)
            unit.sessions = {}
        unit.control_pid = None
        # deactivating -> inactive/dead | failed/failed
        self._set_state(unit, "failed" if failed else "inactive", "failed" if failed else "dead")

    def _fail(self, unit: _Unit, result: ServiceResult) -> None:
        """Record the first non-success result of this run."""
        if unit.result is ServiceResult.SUCCESS:
            unit.result = result

    # ---------------------------------------------------------------------------------------------
    # Processes

    def _prepare_env(self, unit: _Unit) -> None:
        """The run's environment: PATH, Environment=, then EnvironmentFile= (read now), NOTIFY_SOCKET, and
        the user's USER/LOGNAME/HOME/SHELL when User= is set."""
        spec = unit.spec
        assert spec is not None
        env = spec.base_environment()
        if self.unit_environment is not None:
            env = {**self.unit_environment(unit.name), **env}
        for path, optional in spec.environment_files:
            try:
                env.update(parse_environment_file(Path(path).read_text()))
            except OSError as err:
                if not optional:
                    self._fail(unit, ServiceResult.RESOURCES)
                    message = f"Failed to load environment files: {err.strerror}: {path}"
                    raise _SpawnError(EXIT_EXEC, message) from None
        if spec.user:
            with contextlib.suppress(KeyError):
                entry = pwd.getpwnam(spec.user)
                env.update(USER=entry.pw_name, LOGNAME=entry.pw_name, HOME=entry.pw_dir, SHELL=entry.pw_shell)
        if spec.type is ServiceType.NOTIFY or spec.notify_access is not NotifyAccess.NONE:
            env["NOTIFY_SOCKET"] = "@" + self._open_notify(unit)
        unit.env = env

    def _command_env(self, unit: _Unit, stopping: bool) -> dict[str, str]:
        env = dict(unit.env)
        if _alive(unit.main_pid):
            env["MAINPID"] = str(unit.main_pid)
        if stopping:
            env["SERVICE_RESULT"] = unit.result.value
            if unit.main_exit is not None:
                env["EXIT_CODE"] = unit.main_exit.code
                env["EXIT_STATUS"] = _exit_status_text(unit.main_exit)
        return env

    async def _spawn(self, unit: _Unit, command: ExecCommand, *, stopping: bool = False
                     ) -> asyncio.subprocess.Process:
        """Start one command in a new session, output to the unit's journal; raises ``_SpawnError``."""
        spec = unit.spec
        assert spec is not None
        env = self._command_env(unit, stopping)
        argv = command.argv(env)
        executable = command.path if os.path.isabs(command.path) else shutil.which(command.path,
                                                                                    path=env.get("PATH"))
        if not executable:
            raise _SpawnError(EXIT_EXEC, f"Failed to locate executable {command.path}: "
                                         "No such file or directory")
        credentials = _Credentials() if command.full_privileges else _credentials(spec.user, spec.group)
        cwd = _working_directory(spec, env)
        self.journal_store.pump(unit.name)  # output so far belongs to earlier processes
        output = self.journal_store.open_output(unit.name)
        try:
            process = await asyncio.create_subprocess_exec(
                argv[0] if argv else executable, *argv[1:], executable=executable,
                stdin=asyncio.subprocess.DEVNULL, stdout=output, stderr=output, cwd=cwd, env=env,
                start_new_session=True, user=credentials.user, group=credentials.group,
                extra_groups=credentials.extra_groups)
        except PermissionError as err:
            raise _SpawnError(EXIT_USER if credentials.user is not None else EXIT_EXEC,
                              f"Failed to execute {executable}: {err.strerror}") from None
        except OSError as err:
            if err.filename == cwd and cwd != "/":
                raise _SpawnError(EXIT_CHDIR, f"Changing to the requested working directory failed: "
                                              f"{err.strerror}") from None
            raise _SpawnError(EXIT_EXEC, f"Failed to execute {executable}: {err.strerror}") from None
        finally:
            os.close(output)
        leader = proc_info(process.pid)
        unit.sessions[process.pid] = leader.start_time if leader else 0
        self._save_record(unit)
        return process

    async def _run_commands(self, unit: _Unit, commands: Iterable[ExecCommand], deadline: float, *,
                            stopping: bool = False) -> ServiceResult:
        """Run control commands one after another; a failing one (without ``-``) ends the sequence and
        its result is returned (``SUCCESS`` when all succeeded; the caller decides whether it fails the
        unit). Raises ``_TimedOut`` at ``deadline`` (carrying the running command), ``_Stopped`` on a
        stop request (not while stopping)."""
        spec = unit.spec
        assert spec is not None
        for command in commands:
            process = await self._spawn(unit, command, stopping=stopping)
            unit.control_pid = process.pid
            try:
                returncode = await self._until(unit, process.wait(), deadline, interruptible=not stopping)
            except _TimedOut as timed_out:
                timed_out.control = process
                raise
            finally:
                unit.control_pid = None
            self.journal_store.pump(unit.name)
            status = ExitStatus.from_returncode(returncode)
            result = status.result(spec.success_exit_status, daemon=False)
            if result is ServiceResult.SUCCESS:
                continue
            self._log(unit, f"{unit.name}: Control process exited, {status.describe()}"
                      + (" (ignored)" if command.ignore_failure else ""))
            if not command.ignore_failure:
                return result
        return ServiceResult.SUCCESS

    async def _until(self, unit: _Unit, awaitable: Awaitable[_R], deadline: float, *,
                     interruptible: bool = True) -> _R:
        """Await ``awaitable`` until ``deadline`` (loop time); ``_TimedOut`` after it, ``_Stopped`` as soon
        as a stop is requested (when ``interruptible``). The awaited operation keeps running either way."""
        task = asyncio.ensure_future(awaitable)
        loop = asyncio.get_running_loop()
        while not task.done():
            if interruptible and unit.stop_requested:
                raise _Stopped
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise _TimedOut
            unit.wakeup.clear()
            waiter = asyncio.ensure_future(unit.wakeup.wait())
            try:
                await asyncio.wait([task, waiter], timeout=_timeout(remaining),
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
        return task.result()

    def _set_main(self, unit: _Unit, pid: int, process: asyncio.subprocess.Process | None, *,
                  recorded_start: object = None) -> None:
        """Make ``pid`` the main process and watch it: through ``process`` when it is our child, else
        through a pidfd (exit status unknown). With ``recorded_start`` (an adopted record's start time),
        a process that is not the one recorded (gone, or its PID reused) counts as exited at once and is
        never signalled."""
        loop = asyncio.get_running_loop()
        info = proc_info(pid)
        unit.main_pid, unit.main_start = pid, info.start_time if info else 0
        self.journal_store.main_pids[unit.name] = pid
        done: asyncio.Future[ExitStatus | None] = loop.create_future()
        unit.main_done = done
        if recorded_start is not None and not (isinstance(recorded_start, int)
                                               and same_process(pid, recorded_start)):
            unit.main_start = recorded_start if isinstance(recorded_start, int) and recorded_start else -1
            done.set_result(None)
        elif process is not None:
            async def watch_child() -> None:
                status = ExitStatus.from_returncode(await process.wait())
                if not done.done():
                    done.set_result(status)
            self._spawn_task(watch_child())
        else:
            self._watch_foreign(unit, pid, done)
        self._save_record(unit)

    def _watch_foreign(self, unit: _Unit, pid: int, done: asyncio.Future[ExitStatus | None]) -> None:
        loop = asyncio.get_running_loop()
        try:
            fd = os.pidfd_open(pid)
        except (OSError, AttributeError):
            async def poll() -> None:
                while _alive(pid):
                    await asyncio.sleep(SCAN_INTERVAL * 4)
                if not done.done():
                    done.set_result(None)
            self._spawn_task(poll())
            return
        unit.watch_fds.append(fd)

        def exited() -> None:
            loop.remove_reader(fd)
            if fd in unit.watch_fds:
                unit.watch_fds.remove(fd)
                os.close(fd)
            if not done.done():
                done.set_result(None)
        loop.add_reader(fd, exited)

    def _cancel_watch(self, unit: _Unit) -> None:
        loop = asyncio.get_running_loop()
        for fd in unit.watch_fds:
            loop.remove_reader(fd)
            os.close(fd)
        unit.watch_fds.clear()

    def _main_future(self, unit: _Unit) -> asyncio.Future[ExitStatus | None]:
        assert unit.main_done is not None
        return unit.main_done

    def _main_exited(self, unit: _Unit, status: ExitStatus | None, ignore_failure: bool) -> None:
        """Account for the main process's end: log it and set the result."""
        spec = unit.spec
        assert spec is not None
        unit.main_exit = status
        if status is None:
            if not unit.stop_requested:
                self._log(unit, f"{unit.name}: Main process exited (not a child: status unknown).")
                self._fail(unit, ServiceResult.EXIT_CODE)
            return
        result = status.result(spec.success_exit_status, daemon=spec.type is not ServiceType.ONESHOT)
        if result is not ServiceResult.SUCCESS:
            self._log(unit, f"{unit.name}: Main process exited, {status.describe()}"
                      + (" (ignored)" if ignore_failure else ""))
            if not ignore_failure:
                self._fail(unit, result)

    async def _kill(self, unit: _Unit, phase: str) -> None:
        """Signal the unit's remaining processes per KillMode with KillSignal, wait TimeoutStopSec, then
        SIGKILL (``{phase}-sigterm`` -> ``{phase}-sigkill``)."""
        spec = unit.spec
        assert spec is not None
        if spec.kill_mode is KillMode.NONE:
            return
        only_main = spec.kill_mode in (KillMode.PROCESS, KillMode.MIXED)

        def targets() -> list[int]:
            if only_main:
                main = unit.main_pid
                return [main] if main and same_process(main, unit.main_start) else []
            return session_members(unit.sessions)

        if not targets():
            if spec.kill_mode is KillMode.MIXED:
                _signal_all(session_members(unit.sessions), signal.SIGKILL)
            return
        # -> deactivating/{phase}-sigterm
        self._set_state(unit, "deactivating", f"{phase}-sigterm")
        _signal_all(targets(), spec.kill_signal)
        if not await self._gone(targets, spec.timeout_stop) and spec.send_sigkill:
            self._log(unit, f"{unit.name}: State '{phase}-sigterm' timed out. Killing.")
            self._fail(unit, ServiceResult.TIMEOUT)
            # {phase}-sigterm -> {phase}-sigkill
            self._set_state(unit, "deactivating", f"{phase}-sigkill")
            _signal_all(targets(), signal.SIGKILL)
            if not await self._gone(targets, spec.timeout_stop):
                self._log(unit, f"{unit.name}: Processes still around after SIGKILL. Ignoring.")
        if spec.kill_mode is KillMode.MIXED:
            _signal_all(session_members(unit.sessions), signal.SIGKILL)
            await self._gone(lambda: session_members(unit.sessions), spec.timeout_stop)
        if unit.main_done is not None and not unit.main_done.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(unit.main_done), 1.0)

    @staticmethod
    async def _gone(targets: Callable[[], list[int]], timeout: float) -> bool:
        """Poll until ``targets()`` is empty; False if still not after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while targets():
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(SCAN_INTERVAL)
        return True

    # ---------------------------------------------------------------------------------------------
    # sd_notify

    def _notify_address(self, unit: _Unit) -> str:
        digest = hashlib.sha1(f"{self.state_dir.resolve()}\0{unit.name}".encode()).hexdigest()[:24]
        return f"fleetd/notify/{digest}"

    def _open_notify(self, unit: _Unit) -> str:
        """Bind the unit's notify socket (abstract namespace) if not yet bound; return its name."""
        address = self._notify_address(unit)
        if unit.notify is not None:
            return address
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.bind("\0" + address)
        unit.notify = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_notify, unit)
        return address

    def _close_notify(self, unit: _Unit) -> None:
        if unit.notify is not None:
            asyncio.get_running_loop().remove_reader(unit.notify.fileno())
            unit.notify.close()
            unit.notify = None

    def _on_notify(self, unit: _Unit) -> None:
        """Read pending datagrams; apply READY=1 and STATUS= from senders NotifyAccess= admits."""
        sock = unit.notify
        assert sock is not None and unit.spec is not None
        while True:
            try:
                data, ancillary, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except (BlockingIOError, InterruptedError):
                return
            pid, uid = _sender(ancillary)
            if not self._notify_allowed(unit, pid, uid):
                continue
            for line in data.decode(errors="replace").splitlines():
                key, _, value = line.partition("=")
                if key == "READY" and value == "1":
                    unit.ready = True
                    unit.wakeup.set()
                elif key == "STATUS":
                    unit.status_text = value
                    self._notify_changed()

    def _notify_allowed(self, unit: _Unit, pid: int, uid: int) -> bool:
        access = unit.spec.notify_access if unit.spec else NotifyAccess.NONE
        if access is NotifyAccess.ALL:
            user = unit.spec.user if unit.spec else None
            uids = {os.getuid(), 0}
            with contextlib.suppress(KeyError):
                uids.add(pwd.getpwnam(user).pw_uid if user else os.getuid())
            return uid in uids
        allowed = {unit.main_pid}
        if access is NotifyAccess.EXEC:
            allowed.add(unit.control_pid)
        return access is not NotifyAccess.NONE and pid in allowed


# -------------------------------------------------------------------------------------------------
# Helpers


def _timeout(seconds: float) -> float | None:
    return None if math.isinf(seconds) else max(seconds, 0.0)


def _state_matcher(text: str) -> Callable[[UnitRuntimeState], bool]:
    active, _, sub = text.partition("/")
    return lambda s: s.active_state == active and (not sub or s.sub_state == sub)


def _exit_status_text(status: ExitStatus) -> str:
    if status.code == "killed":
        try:
            return signal.Signals(status.status).name.removeprefix("SIG")
        except ValueError:
            return str(status.status)
    return str(status.status)


def _read_pid_file(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 1 else None


@dataclass(frozen=True, slots=True)
class _Credentials:
    """Popen's ``user``/``group``/``extra_groups`` (None: unchanged)."""

    user: int | None = None
    group: int | None = None
    extra_groups: list[int] | None = None


def _credentials(user: str | None, group: str | None) -> _Credentials:
    """The credentials for User=/Group=; raises ``_SpawnError`` (217/USER, 216/GROUP) if unknown."""
    uid = gid = None
    extra: list[int] | None = None
    if user:
        try:
            entry = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
        except KeyError:
            message = f"Failed to determine user credentials: No such process: {user}"
            raise _SpawnError(EXIT_USER, message) from None
        uid, gid, extra = entry.pw_uid, entry.pw_gid, os.getgrouplist(entry.pw_name, entry.pw_gid)
    if group:
        try:
            gid = (grp.getgrnam(group) if not group.isdigit() else grp.getgrgid(int(group))).gr_gid
        except KeyError:
            message = f"Failed to determine group credentials: No such process: {group}"
            raise _SpawnError(EXIT_GROUP, message) from None
    return _Credentials(uid, gid, extra)


def _working_directory(spec: ServiceSpec, env: Mapping[str, str]) -> str:
    directory = spec.working_directory
    if not directory:
        return "/"
    if directory == "~":
        directory = env.get("HOME", "/root")
    if spec.working_directory_optional and not os.path.isdir(directory):
        return "/"
    return directory


def _sender(ancillary: list[tuple[int, int, bytes]]) -> tuple[int, int]:
    """(pid, uid) from SCM_CREDENTIALS, (0, -1) if absent."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(data) >= 12:
            pid, uid, _gid = struct.unpack("iII", data[:12])
            return pid, uid
    return 0, -1

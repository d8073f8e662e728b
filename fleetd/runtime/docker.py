"""The ``docker`` unit runtime: every unit runs as one Docker container, driven through the Docker SDK.

For hosts where the applications are containers and there is neither systemd nor a wish to keep a
``docker run`` client process per unit (``runtime = docker`` in fleet.conf). fleetd itself is the
only client: it creates, starts, watches, stops and removes the containers on the local engine
(``DOCKER_HOST`` or the default socket).

Which container a unit is. The unit's single ``ExecStart=`` command decides:

* ``ExecStart=/usr/bin/docker run [options] IMAGE [COMMAND...]`` (any path whose name is ``docker``)
  is that container. Supported options: ``--name``, ``-p/--publish``, ``-e/--env``, ``--env-file``,
  ``-v/--volume``, ``--rm``, ``-d/--detach`` (no effect: the runtime always runs the container in the
  background), ``-l/--label``, ``-w/--workdir``, ``-u/--user``, ``--entrypoint``, ``-h/--hostname``,
  ``--network/--net``, ``--init``, ``--pull`` (``missing``, docker's default, ``always``, ``never``)
  and ``--stop-timeout``; ``--opt=value``, ``--opt value`` and ``-pVALUE`` forms. Any other option
  makes the unit ``bad-setting``, with the option named in ``status`` (``Loaded: bad-setting
  (Reason: ...)``). ``$VAR`` and ``${VAR}`` expand from ``Environment=``/``EnvironmentFile=`` and the
  ``FLEET_*`` variables, as under systemd; those settings are the *client's* environment (what
  ``-e NAME`` and ``--env-file`` read from), not the container's.
* Any other command runs inside a container of the image ``docker_image`` (default
  ``busybox:local``; it must be present on the host, it is never pulled), on the default bridge, with
  ``Environment=``/``EnvironmentFile=`` and the ``FLEET_*`` variables as its environment and
  ``WorkingDirectory=``/``User=`` applied.

``ExecStartPre=``, ``ExecStartPost=``, ``ExecStop=`` and ``ExecStopPost=`` may hold the housekeeping
commands fleet units are written with -- ``docker rm [-f] NAME...``, ``docker kill [-s SIG] NAME...``,
``docker stop [-t N] NAME...``, ``docker pull IMAGE`` -- which the runtime performs through the engine
(a ``-`` prefix ignores their failure, as systemd does); any other command there makes the unit
``bad-setting``. ``Type=`` may be ``simple``, ``exec``, ``idle`` or ``oneshot`` (``RemainAfterExit=``
honoured).

Containers carry the labels of ``fleetd.runtime.containers`` (``fleet.unit``, ``fleet.machine``) besides
their own ``-l`` labels; that is how the runtime finds them again.

States, as systemd reports them: ``inactive/dead`` -> ``activating/start-pre`` (hooks) ->
``activating/start`` (pull, create, start) -> ``active/running`` (a oneshot stays ``activating/start``
until its container exits) -> on exit: ``inactive/dead`` (exit 0 or ``SuccessExitStatus=``), else
``failed/failed`` with ``Result: exit-code`` and ``code=exited, status=N`` in ``status``. A container
that cannot be created or started (no such image, a name in use, a port taken, the engine down) fails
the unit with ``Result: resources`` and the engine's explanation in the journal. ``Restart=`` and
``RestartSec=`` restart the unit (``activating/auto-restart`` in between), within
``StartLimitBurst=``/``StartLimitIntervalSec=`` (then ``Result: start-limit-hit``).

Stop (``stop``, ``unload``, destroy, draining fleetd with SIGTERM): ``ExecStop=`` hooks, then the
container gets SIGTERM and, after ``--stop-timeout``, else ``TimeoutStopSec=`` when the unit sets it,
else docker's 10 s, SIGKILL; then ``ExecStopPost=`` hooks, and the container is removed. A container
that exits by itself is removed once its exit is recorded when the unit succeeded or ran it with
``--rm``; the exited container of a failed unit stays (``status`` shows it) until the unit is started
or stopped again.

Journal: the runtime's messages (``Starting``, ``Started``, why a start failed...) and the container's
output, copied from ``docker logs`` as it comes (ident ``<container name>[<short ID>]``), kept per unit
in files (``fleetd.runtime.journal``): the output survives the container's removal.

State on disk, under ``units_directory``: ``units/<name>`` (the loaded unit file) and ``run/<name>.json``
(the container and how far its logs were copied). After a restart of fleetd (also after SIGKILL),
``adopt()`` reloads the unit files, takes each unit's newest running container over (it is not
restarted; its logs are copied on from where they stopped), records an exit that happened meanwhile,
and removes every other container labelled for this machine that no unit accounts for
(``container_verdict``): no orphans, no duplicates. The same collection runs every
``RECONCILE_INTERVAL`` seconds. ``close()`` leaves containers running.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import pwd
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fleetd.files import write_atomically
from fleetd.runtime.base import UnitRuntimeError, UnitStatus, UnitTable
from fleetd.runtime.containers import (
    RECONCILE_INTERVAL,
    STOP_TIMEOUT,
    Container,
    ContainerSpec,
    DockerEngine,
    DockerError,
    DockerRequestError,
    container_labels,
    container_verdict,
    stamp_key,
    stamp_seconds,
    unit_environment,
)
from fleetd.runtime.journal import Journal
from fleetd.runtime.service import (
    ExecCommand,
    ExitStatus,
    LoadedService,
    ServiceResult,
    ServiceSpec,
    ServiceSpecError,
    ServiceType,
    SpecifierContext,
    parse_environment_file,
)
from fleetd.unit import UnitFile

if TYPE_CHECKING:
    from fleetd.config import FleetConfig

log = logging.getLogger("fleetd.docker")

#: The image other commands than ``docker run`` run in, unless ``docker_image`` names another.
DEFAULT_IMAGE = "busybox:local"
#: Seconds between attempts to reach the engine again while following a container.
RETRY_INTERVAL = 1.0
#: How often (seconds, at most) the copied-logs position is written to disk.
SAVE_INTERVAL = 1.0
SUPPORTED_TYPES = frozenset({ServiceType.SIMPLE, ServiceType.EXEC, ServiceType.IDLE, ServiceType.ONESHOT})
PULL_POLICIES = ("missing", "always", "never")

# ---------------------------------------------------------------------------------------------------
# What a unit's commands mean


class DockerRunError(ValueError):
    """A command the docker runtime cannot perform; ``str()`` says which part and why."""


#: ``docker run`` options taking a value -> the field they fill.
_VALUE_OPTIONS = {
    "--name": "name", "-p": "publish", "--publish": "publish", "-e": "env", "--env": "env",
    "--env-file": "env_file", "-v": "volume", "--volume": "volume", "-l": "label", "--label": "label",
    "-w": "workdir", "--workdir": "workdir", "-u": "user", "--user": "user", "--entrypoint": "entrypoint",
    "-h": "hostname", "--hostname": "hostname", "--network": "network", "--net": "network",
    "--pull": "pull", "--stop-timeout": "stop_timeout",
}
#: ``docker run`` switches -> the field they set.
_FLAG_OPTIONS = {"--rm": "rm", "-d": "detach", "--detach": "detach", "--init": "init"}


@dataclass(frozen=True)
class DockerRun:
    """A parsed ``docker run`` command: the container (``spec``, without fleet's labels) and what the
    runtime does around it."""

    spec: ContainerSpec
    remove: bool = False
    pull: str = "missing"
    stop_timeout: int | None = None


def is_docker(argv: Sequence[str]) -> bool:
    """Whether the command runs the docker CLI (``docker`` or a path ending in ``/docker``)."""
    return bool(argv) and os.path.basename(argv[0]) == "docker"


def _options(args: Sequence[str], values: Mapping[str, str], flags: Mapping[str, str],
             command: str) -> tuple[dict[str, list[str]], list[str]]:
    """Split ``args`` into options (field -> values, ``"true"``/``"false"`` for flags) and the
    positional rest (everything from the first positional argument on)."""
    found: dict[str, list[str]] = {}
    rest = list(args)
    while rest and rest[0].startswith("-") and rest[0] != "-":
        arg = rest.pop(0)
        if arg == "--":
            break
        name, has_value, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if not arg.startswith("--") and len(arg) > 2 and arg[:2] in values:
            name, has_value, value = arg[:2], "=", arg[2:].removeprefix("=")
        if name in flags:
            found.setdefault(flags[name], []).append(value if has_value else "true")
        elif name in values:
            if not has_value:
                if not rest:
                    raise DockerRunError(f"{command}: option {name} needs a value")
                value = rest.pop(0)
            found.setdefault(values[name], []).append(value)
        else:
            raise DockerRunError(f"{command}: option {name} is not supported by the docker runtime")
    return found, rest


def _flag(found: Mapping[str, list[str]], key: str) -> bool:
    return any(v.lower() not in ("false", "0") for v in found.get(key, []))


def _last(found: Mapping[str, list[str]], key: str) -> str | None:
    return found[key][-1] if found.get(key) else None


def parse_ports(values: Iterable[str]) -> dict[str, object]:
    """``-p`` values -> the engine's port bindings: container port (``80``, ``53/udp``) -> ``None``
    (a free host port), host port, or (host IP, host port or None)."""
    ports: dict[str, object] = {}
    for value in values:
        parts = value.rsplit(":", 2)
        container = parts[-1]
        number, _, proto = container.partition("/")
        if not number.isdigit() or proto not in ("", "tcp", "udp", "sctp"):
            raise DockerRunError(f"docker run: invalid port {value!r}")
        host_port: int | None = None
        if len(parts) >= 2 and parts[-2]:
            if not parts[-2].isdigit():
                raise DockerRunError(f"docker run: invalid host port in {value!r}")
            host_port = int(parts[-2])
        key = f"{number}/{proto}" if proto and proto != "tcp" else number
        ports[key] = (parts[0], host_port) if len(parts) == 3 and parts[0] else host_port
    return ports


def read_env_file(path: str, env: Mapping[str, str]) -> list[str]:
    """docker's ``--env-file``: ``NAME=value`` lines as they are, a bare ``NAME`` takes ``env``'s value
    (left out when unset), ``#`` comments and blank lines skipped. Raises ``DockerRunError``."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise DockerRunError(f"docker run: cannot read --env-file {path}: {err.strerror or err}") from None
    out = []
    for line in text.splitlines():
        line = line.lstrip()
        if not line or line.startswith("#"):
            continue
        if "=" in line:
            out.append(line)
        elif line.strip() in env:
            out.append(f"{line.strip()}={env[line.strip()]}")
    return out


def _env_value(value: str, env: Mapping[str, str]) -> list[str]:
    """One ``-e`` value: ``NAME=value`` as is, a bare ``NAME`` from ``env`` (dropped when unset)."""
    if "=" in value:
        return [value]
    return [f"{value}={env[value]}"] if value in env else []


def parse_docker_run(argv: Sequence[str], env: Mapping[str, str], *, read_files: bool = True) -> DockerRun:
    """``docker run [options] IMAGE [COMMAND...]`` (``argv[0]`` is the docker CLI) -> ``DockerRun``.

    ``env`` is the client's environment (``-e NAME``, ``--env-file`` lines without a value). With
    ``read_files`` false ``--env-file`` files are not read (checking a unit file at load time).
    Raises ``DockerRunError`` for an unsupported option or a bad value.
    """
    if len(argv) < 2 or argv[1] != "run":
        raise DockerRunError(f"{' '.join(argv[:2])}: ExecStart= must be 'docker run ...' "
                             "or a command to run in the docker_image container")
    found, rest = _options(argv[2:], _VALUE_OPTIONS, _FLAG_OPTIONS, "docker run")
    if not rest:
        raise DockerRunError("docker run: no image given")
    pull = _last(found, "pull") or "missing"
    if pull not in PULL_POLICIES:
        raise DockerRunError(f"docker run: --pull must be one of {', '.join(PULL_POLICIES)}, not {pull!r}")
    stop_timeout = _last(found, "stop_timeout")
    if stop_timeout is not None and not stop_timeout.lstrip("-").isdigit():
        raise DockerRunError(f"docker run: invalid --stop-timeout {stop_timeout!r}")
    environment: list[str] = []
    for path in found.get("env_file", []):
        environment += read_env_file(path, env) if read_files else []
    for value in found.get("env", []):
        environment += _env_value(value, env)
    volumes = found.get("volume", [])
    labels = dict(item.partition("=")[::2] for item in found.get("label", []))
    entrypoint = _last(found, "entrypoint")
    spec = ContainerSpec(
        image=rest[0], command=tuple(rest[1:]), name=_last(found, "name"), environment=tuple(environment),
        ports=parse_ports(found.get("publish", [])), binds=tuple(v for v in volumes if ":" in v),
        volumes=tuple(v for v in volumes if ":" not in v), labels=labels, working_dir=_last(found, "workdir"),
        user=_last(found, "user"), entrypoint=None if entrypoint is None else tuple(entrypoint.split()),
        hostname=_last(found, "hostname"), network=_last(found, "network") or "", init=_flag(found, "init"))
    return DockerRun(spec, remove=_flag(found, "rm"), pull=pull,
                     stop_timeout=None if stop_timeout is None else int(stop_timeout))


#: Housekeeping subcommands allowed around the container -> (options with a value, switches).
_HOOKS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "rm": ({}, {"-f": "force", "--force": "force", "-v": "volumes", "--volumes": "volumes"}),
    "kill": ({"-s": "signal", "--signal": "signal"}, {}),
    "stop": ({"-t": "time", "--time": "time", "--timeout": "time", "-s": "signal", "--signal": "signal"}, {}),
    "pull": ({}, {"-q": "quiet", "--quiet": "quiet"}),
}


@dataclass(frozen=True)
class Hook:
    """One housekeeping command (``docker rm|kill|stop|pull``) of ExecStartPre=/ExecStop=/..."""

    action: str
    targets: tuple[str, ...]
    options: Mapping[str, str] = field(default_factory=dict)
    ignore_failure: bool = False
    text: str = ""


def parse_hook(argv: Sequence[str], ignore_failure: bool = False) -> Hook:
    """``docker rm|kill|stop|pull ...`` -> ``Hook``; anything else raises ``DockerRunError``."""
    if not is_docker(argv) or len(argv) < 2 or argv[1] not in _HOOKS:
        shown = " ".join(argv)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise DockerRunError(f"{shown}: the docker runtime runs only 'docker rm|kill|stop|pull' "
                             "commands around the unit's container")
    values, flags = _HOOKS[argv[1]]
    found, targets = _options(argv[2:], values, flags, f"docker {argv[1]}")
    if not targets:
        raise DockerRunError(f"{' '.join(argv)}: no container or image named")
    if "time" in found and not found["time"][-1].isdigit():
        raise DockerRunError(f"{' '.join(argv)}: invalid time {found['time'][-1]!r}")
    options = {key: vals[-1] for key, vals in found.items()}
    return Hook(argv[1], tuple(targets), options, ignore_failure, " ".join(argv))


# ---------------------------------------------------------------------------------------------------
# Units


@dataclass
class _Unit(LoadedService):
    """Everything the runtime knows about one loaded unit."""

    exit: ExitStatus | None = None
    container: Container | None = None
    driver: asyncio.Task[None] | None = None
    stop_requested: bool = False
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    start_times: deque[float] = field(default_factory=deque)
    log_stamp: str = ""  # the time stamp of the last output line copied into the journal
    logged_container: str = ""  # the container ``log_stamp`` belongs to
    saved_at: float = 0.0


    @property
    def busy(self) -> bool:
        return self.driver is not None and not self.driver.done()


class DockerRuntime(UnitTable):
    """The docker runtime (see the module docstring) keeping its state in ``state_dir``.

    ``image`` runs the units whose ExecStart= is not ``docker run``; ``engine`` defaults to the local
    engine; ``interval`` is the period of the container collection."""

    #: The daemon does not wrap this runtime in ``ContainerTracking``: it tracks its containers itself.
    tracks_containers = True

    def __init__(self, state_dir: Path | str, *, machine_id: str, image: str = DEFAULT_IMAGE,
                 engine: DockerEngine | None = None, hostname: str | None = None,
                 interval: float = RECONCILE_INTERVAL) -> None:
        self.state_dir = Path(state_dir)
        self.machine_id = machine_id
        self.image = image
        self.engine = engine or DockerEngine()
        self.hostname = hostname or socket.gethostname()
        self.interval = interval
        for sub in ("units", "run"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        self.journal_store = Journal(self.state_dir / "journal", self.hostname)
        self._units: dict[str, _Unit] = {}
        self._collector: asyncio.Task[None] | None = None

    # ---------------------------------------------------------------------------------------------
    # The runtime interface

    async def start(self, name: str) -> None:
        """Queue a start (see ``UnitRuntime``); during ``auto-restart`` restart at once."""
        self._ensure_running()
        unit = self._require(name)
        if unit.spec is None:
            raise UnitRuntimeError(f"Unit {name} has a bad unit file setting: {unit.load_error}")
        if unit.busy:
            if unit.sub_state == "auto-restart":
                unit.wakeup.set()
                return
            if not unit.stop_requested:
                return
            await self._wait_driver(unit)
        if unit.active_state == "active":  # oneshot + RemainAfterExit, already exited
            return
        unit.stop_requested = False
        unit.wakeup.clear()
        self._set_state(unit, "activating", "start-pre" if unit.spec.exec_start_pre else "start")
        unit.driver = asyncio.ensure_future(self._drive(unit))

    async def stop(self, name: str) -> None:
        """Stop ``name`` and return once it is inactive (or failed) and its containers are removed."""
        unit = self._require(name)
        if unit.busy:
            unit.stop_requested = True
            unit.wakeup.set()
            await self._wait_driver(unit)
        elif unit.active_state == "active":  # oneshot + RemainAfterExit: nothing runs
            self._set_state(unit, "inactive", "dead")
        await self._remove_containers(unit)

    async def reload_daemon(self) -> None:
        """Nothing to do: ``load`` applies unit files at once (from the unit's next start)."""

    async def status(self, name: str) -> UnitStatus | None:
        """The unit's detail, with one ``containers`` line per container (or why there is none)."""
        unit = self._units.get(name)
        if unit is None:
            return None
        try:
            found = await self.engine.containers(self.machine_id, name)
            lines = tuple(c.describe() for c in found)
        except DockerError as err:
            found, lines = [], (str(err),)
        running = [c for c in found if c.running and c.pid]
        return UnitStatus(name=name, state=unit.runtime_state(),
                          description=unit.spec.description if unit.spec else "", since=unit.since,
                          main_pid=running[-1].pid if running else None, result=unit.result.value,
                          exit=unit.exit.describe() if unit.exit else "", load_error=unit.load_error,
                          containers=lines)

    def journal(self, name: str, lines: int = 10, follow: bool = False) -> AsyncIterator[str]:
        """The runtime's messages about the unit and its containers' output, oldest first."""
        return self.journal_store.read(name, lines, follow)

    async def close(self) -> None:
        """Stop watching; containers keep running (a later ``adopt()`` takes them over)."""
        tasks = [u.driver for u in self._units.values() if u.busy]
        if self._collector is not None:
            tasks.append(self._collector)
        for task in tasks:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in tasks if t is not None), return_exceptions=True)
        for unit in self._units.values():
            self._save_record(unit)

    # ---------------------------------------------------------------------------------------------
    # Extras: adoption and collection

    async def adopt(self) -> list[str]:
        """Reload the recorded unit files, take over each unit's newest running container, record the
        exits that happened meanwhile, remove what no unit accounts for. Returns the adopted names."""
        for path in sorted((self.state_dir / "units").iterdir()):
            if path.suffix != ".tmp" and path.name not in self._units:
                self._restore(path.name)
        try:
            found = await self.engine.containers(self.machine_id)
        except DockerError as err:
            self._log_all(f"Cannot adopt containers: {err}")
            found = []
        adopted = []
        for unit in self._units.values():
            mine = [c for c in found if c.unit == unit.name]
            running = [c for c in mine if c.running]
            if unit.spec is None or unit.busy:
                continue
            if running:
                self._take_over(unit, running[-1])
                adopted.append(unit.name)
            elif mine and mine[-1].exit_code != 0:
                unit.exit = ExitStatus("exited", mine[-1].exit_code)
                unit.result = ServiceResult.EXIT_CODE
                self._set_state(unit, "failed", "failed")
        await self.collect()
        self._ensure_running()
        return sorted(adopted)

    async def collect(self) -> list[Container]:
        """Remove this machine's containers no unit accounts for (``container_verdict``)."""
        try:
            found = await self.engine.containers(self.machine_id)
        except DockerError:
            return []
        states = await self.states(sorted({c.unit for c in found}))
        # a unit between two containers (creating, restarting) holds on to what it is working on
        doomed = [c for c in container_verdict(found, states)
                  if not (c.unit in self._units and self._units[c.unit].busy
                          and states[c.unit].active_state == "activating")]
        for container in doomed:
            self._log_all(f"Removing container {container.name} ({container.id[:12]}) of "
                          f"Unit({container.unit}): unit is {states.get(container.unit, 'not loaded')}",
                          unit=container.unit)
        with contextlib.suppress(DockerError):
            await self.engine.remove(doomed)
        return doomed

    # ---------------------------------------------------------------------------------------------
    # Units and records

    def _register(self, name: str, unit_file: UnitFile) -> _Unit:
        spec, error = self._parse(name, unit_file)
        existing = self._units.get(name)
        if existing is not None:
            existing.unit_file, existing.spec, existing.load_error = unit_file, spec, error
            return existing
        unit = _Unit(name, unit_file, spec, error, since=time.time())
        self._units[name] = unit
        return unit

    def _restore(self, name: str) -> _Unit | None:
        try:
            text = (self.state_dir / "units" / name).read_text()
        except (FileNotFoundError, IsADirectoryError):
            return None
        unit = self._register(name, UnitFile.from_text(text))
        record = self._load_record(name) or {}
        unit.log_stamp, unit.logged_container = str(record.get("logs", "")), str(record.get("container", ""))
        return unit

    def _parse(self, name: str, unit_file: UnitFile) -> tuple[ServiceSpec | None, str]:
        """The unit's spec, or why the docker runtime cannot run it."""
        if not name.endswith(".service"):
            return None, "only .service units can be run by the docker runtime"
        try:
            spec = ServiceSpec.from_unit(unit_file, self._context(name))
            check_unit(spec, self._environment(name, spec, read_files=False))
        except (ServiceSpecError, DockerRunError) as err:
            return None, str(err)
        return spec, ""

    def _context(self, name: str) -> SpecifierContext:
        user = pwd.getpwuid(os.getuid())
        return SpecifierContext(name, self.hostname, self.machine_id, "/run", user.pw_name, user.pw_uid,
                                user.pw_dir, user.pw_shell)

    def _environment(self, name: str, spec: ServiceSpec, *, read_files: bool = True) -> dict[str, str]:
        """The unit's environment: ``FLEET_*`` variables, ``Environment=``, then environment files
        (read at each start; an unreadable non-optional one raises ``DockerRunError``)."""
        env = {**unit_environment(name, self.machine_id), **spec.base_environment()}
        for path, optional in spec.environment_files if read_files else ():
            try:
                env.update(parse_environment_file(Path(path).read_text()))
            except OSError as err:
                if not optional:
                    raise DockerRunError(f"Failed to load environment file {path}: "
                                         f"{err.strerror or err}") from None
        return env

    def _set_state(self, unit: _Unit, active: str, sub: str) -> None:
        if active != unit.active_state:
            unit.since = time.time()
        unit.active_state, unit.sub_state = active, sub

    def _record_path(self, name: str) -> Path:
        return self.state_dir / "run" / f"{name}.json"

    def _save_record(self, unit: _Unit) -> None:
        if unit.name in self._units:
            record = {"container": unit.container.id if unit.container else "", "logs": unit.log_stamp}
            write_atomically(self._record_path(unit.name), json.dumps(record))
            unit.saved_at = time.monotonic()

    def _load_record(self, name: str) -> dict[str, object] | None:
        try:
            record: dict[str, object] = json.loads(self._record_path(name).read_text())
        except (FileNotFoundError, ValueError):
            return None
        return record

    def _log(self, unit: _Unit, message: str) -> None:
        self.journal_store.write(unit.name, message, ident="fleetd", pid=os.getpid())

    def _log_all(self, message: str, unit: str = "") -> None:
        """A message about the runtime: in fleetd's log, and in the unit's journal when it is loaded here."""
        log.info("%s", message)
        if unit in self._units:
            self._log(self._units[unit], message)

    # ---------------------------------------------------------------------------------------------
    # Driving a unit: start, watch, restart, stop

    async def _wait_driver(self, unit: _Unit) -> None:
        if unit.driver is not None:
            await asyncio.gather(asyncio.shield(unit.driver), return_exceptions=True)

    def _take_over(self, unit: _Unit, container: Container) -> None:
        """Adopt ``container`` as the unit's running container."""
        assert unit.spec is not None
        unit.container, unit.stop_requested = container, False
        if unit.logged_container != container.id:  # not the container whose output was being copied
            unit.log_stamp, unit.logged_container = "", container.id
        unit.wakeup.clear()
        oneshot = unit.spec.type is ServiceType.ONESHOT
        self._set_state(unit, "activating" if oneshot else "active", "start" if oneshot else "running")
        unit.driver = asyncio.ensure_future(self._drive(unit, adopted=container))

    async def _drive(self, unit: _Unit, adopted: Container | None = None) -> None:
        """Run the unit until it stops for good (stop, success, failure without restart)."""
        spec = unit.spec
        assert spec is not None
        while True:
            result = await self._run_once(unit, adopted)
            adopted = None
            if result is None:  # stopped on request
                self._set_state(unit, "inactive", "dead")
                self._log(unit, f"Stopped {unit.label}.")
                return
            unit.result = result
            if spec.restart.should_restart(result) and not unit.stop_requested:
                self._set_state(unit, "activating", "auto-restart")
                await self._remove_containers(unit)
                unit.wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(unit.wakeup.wait(), spec.restart_sec)
                if unit.stop_requested:
                    self._set_state(unit, "inactive", "dead")
                    self._log(unit, f"Stopped {unit.label}.")
                    return
                unit.wakeup.clear()
                self._log(unit, f"{unit.name}: Scheduled restart job.")
                continue
            self._finish(unit, result)
            return

    def _finish(self, unit: _Unit, result: ServiceResult) -> None:
        """The unit's run ended by itself with ``result`` and is not restarted."""
        assert unit.spec is not None
        if result is ServiceResult.SUCCESS:
            if unit.spec.type is ServiceType.ONESHOT and unit.spec.remain_after_exit:
                self._set_state(unit, "active", "exited")
            else:
                self._set_state(unit, "inactive", "dead")
                self._log(unit, f"{unit.name}: Succeeded.")
            return
        self._set_state(unit, "failed", "failed")
        self._log(unit, f"{unit.name}: Failed with result '{result}'.")
        if result is not ServiceResult.START_LIMIT_HIT:
            self._log(unit, f"Failed to start {unit.label}." if unit.exit is None else
                      f"{unit.name}: Unit entered failed state.")

    def _start_limit_hit(self, unit: _Unit) -> bool:
        assert unit.spec is not None
        now = time.monotonic()
        window, burst = unit.spec.start_limit_interval, unit.spec.start_limit_burst
        while unit.start_times and now - unit.start_times[0] > window:
            unit.start_times.popleft()
        if window > 0 and burst > 0 and len(unit.start_times) >= burst:
            return True
        unit.start_times.append(now)
        return False

    async def _run_once(self, unit: _Unit, adopted: Container | None) -> ServiceResult | None:
        """One run: hooks, the container, its end. None when stopped on request, else the result."""
        spec = unit.spec
        assert spec is not None
        if adopted is None:
            if self._start_limit_hit(unit):
                self._log(unit, f"{unit.name}: Start request repeated too quickly.")
                return ServiceResult.START_LIMIT_HIT
            unit.exit = None
            self._set_state(unit, "activating", "start-pre" if spec.exec_start_pre else "start")
            self._log(unit, f"Starting {unit.label}...")
            container, result = await self._launch(unit)
            if container is None:
                await self._run_hooks(unit, spec.exec_stop_post)
                return None if result is None else result
        else:
            container = adopted
        result = await self._watch(unit, container)
        if result is None:
            return None
        await self._run_hooks(unit, spec.exec_stop_post)
        return result

    async def _launch(self, unit: _Unit) -> tuple[Container | None, ServiceResult | None]:
        """Start-pre hooks, then create and start the unit's container (``activating/start``).

        Returns the running container, or (None, the failure) -- (None, None) when stopped meanwhile."""
        spec = unit.spec
        assert spec is not None
        if not await self._run_hooks(unit, spec.exec_start_pre):
            return None, ServiceResult.EXIT_CODE
        if unit.stop_requested:
            return None, None
        self._set_state(unit, "activating", "start")
        try:
            run = self._container_for(unit)
            await self._remove_containers(unit)
            await self._ensure_image(unit, run)
            container = await self.engine.create(run.spec)
            unit.container, unit.log_stamp, unit.logged_container = container, "", container.id
            self._save_record(unit)
            await self.engine.start(container.id)
        except (DockerError, DockerRunError) as err:
            self._log(unit, f"{unit.name}: Failed to run container: {err}")
            return None, ServiceResult.RESOURCES
        if spec.type is not ServiceType.ONESHOT:
            self._set_state(unit, "active", "running")
            self._log(unit, f"Started {unit.label}.")
        if not await self._run_hooks(unit, spec.exec_start_post):
            await self._stop_container(unit, container)
            await self._wait_exit(unit, container)
            return None, ServiceResult.EXIT_CODE
        return container, None

    def _container_for(self, unit: _Unit) -> DockerRun:
        """What to create for this run (environment files read now), labelled for fleet."""
        spec = unit.spec
        assert spec is not None
        env = self._environment(unit.name, spec)
        labels = container_labels(unit.name, self.machine_id)
        argv = spec.exec_start[0].argv(env)
        if is_docker(argv):
            run = parse_docker_run(argv, env)
            labelled = dataclasses.replace(run.spec, labels={**run.spec.labels, **labels})
            return dataclasses.replace(run, spec=labelled)
        environment = tuple(f"{k}={v}" for k, v in env.items() if k != "PATH")
        container = ContainerSpec(image=self.image, command=tuple(argv), environment=environment,
                                  labels=labels, working_dir=_absolute(spec.working_directory),
                                  user=spec.user)
        return DockerRun(container, pull="never")

    async def _ensure_image(self, unit: _Unit, run: DockerRun) -> None:
        """Pull the image as ``--pull`` says (``never``: a missing image fails the create)."""
        image = run.spec.image
        if run.pull == "always" or (run.pull == "missing" and not await self.engine.has_image(image)):
            self._log(unit, f"Pulling image {image}...")
            await self.engine.pull(image)

    async def _watch(self, unit: _Unit, container: Container) -> ServiceResult | None:
        """Wait for the container to exit, or for a stop request (then stop it: None)."""
        follow = asyncio.ensure_future(self._follow(unit, container))
        waker = asyncio.ensure_future(unit.wakeup.wait())
        try:
            await asyncio.wait({follow, waker}, return_when=asyncio.FIRST_COMPLETED)
            if unit.stop_requested:
                await self._stop_path(unit, container, follow)
                return None
            ended = follow.result()
        finally:
            for task in (follow, waker):
                task.cancel()
        result = self._exited(unit, ended)
        if ended is not None and (result is ServiceResult.SUCCESS or self._removes_on_exit(unit)):
            await self._remove_quietly(unit, [ended])
        return result

    def _exited(self, unit: _Unit, ended: Container | None) -> ServiceResult:
        """Record how the container ended (None: it was removed behind our back) and its result."""
        assert unit.spec is not None
        if ended is None:
            self._log(unit, f"{unit.name}: Container removed while running.")
            unit.exit = ExitStatus("killed", 9)
            return ServiceResult.SIGNAL
        unit.exit = ExitStatus("exited", ended.exit_code)
        why = " (out of memory)" if ended.oom_killed else (f" ({ended.error})" if ended.error else "")
        self._log(unit, f"{unit.name}: Main process exited, {unit.exit.describe()}{why}")
        return unit.exit.result(unit.spec.success_exit_status)

    def _removes_on_exit(self, unit: _Unit) -> bool:
        """Whether the unit's ``docker run`` has ``--rm``."""
        assert unit.spec is not None
        argv = unit.spec.exec_start[0].argv(self._environment(unit.name, unit.spec, read_files=False))
        return is_docker(argv) and "--rm" in argv[2:]

    async def _stop_path(self, unit: _Unit, container: Container,
                         follow: asyncio.Future[Container | None]) -> None:
        """A stop request while the container runs: ExecStop= hooks, stop, ExecStopPost= hooks, remove."""
        assert unit.spec is not None
        self._set_state(unit, "deactivating", "stop")
        self._log(unit, f"Stopping {unit.label}...")
        await self._run_hooks(unit, unit.spec.exec_stop)
        self._set_state(unit, "deactivating", "stop-sigterm")
        await self._stop_container(unit, container)
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(follow), RETRY_INTERVAL * 5)
        self._set_state(unit, "deactivating", "stop-post")
        await self._run_hooks(unit, unit.spec.exec_stop_post)
        await self._remove_containers(unit)

    async def _stop_container(self, unit: _Unit, container: Container) -> None:
        try:
            await self.engine.stop_one(container.id, self._stop_timeout(unit))
        except DockerError as err:
            self._log(unit, f"{unit.name}: Failed to stop container {container.name}: {err}")

    async def _wait_exit(self, unit: _Unit, container: Container) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._follow(unit, container), RETRY_INTERVAL * 5)

    def _stop_timeout(self, unit: _Unit) -> int:
        """``--stop-timeout``, else ``TimeoutStopSec=``/``TimeoutSec=`` when the unit sets it, else 10 s."""
        assert unit.spec is not None
        argv = unit.spec.exec_start[0].argv(self._environment(unit.name, unit.spec, read_files=False))
        if is_docker(argv):
            with contextlib.suppress(DockerRunError):
                run = parse_docker_run(argv, {}, read_files=False)
                if run.stop_timeout is not None:
                    return run.stop_timeout
        names = {o.name for o in unit.unit_file.options if o.section == "Service"}
        if names & {"TimeoutStopSec", "TimeoutSec"}:
            timeout = unit.spec.timeout_stop
            return 2**31 - 1 if math.isinf(timeout) else max(0, math.ceil(timeout))
        return STOP_TIMEOUT

    async def _follow(self, unit: _Unit, container: Container) -> Container | None:
        """Copy the container's output into the unit's journal until it exits; return it as it ended
        (None when it was removed). Rides out engine outages by retrying."""
        ident = f"{container.name}[{container.id[:12]}]"
        while True:
            last = stamp_key(unit.log_stamp) if unit.log_stamp else None
            since = stamp_seconds(unit.log_stamp) if unit.log_stamp else None
            try:
                async for stamp, line in self.engine.log_lines(container.id, follow=True, since=since):
                    key = stamp_key(stamp)
                    if last is not None and key is not None and key <= last:
                        continue  # already copied before a restart or a broken stream
                    self.journal_store.write(unit.name, line, ident=ident)
                    if key is not None:
                        unit.log_stamp, last = stamp, key
                    if time.monotonic() - unit.saved_at > SAVE_INTERVAL:
                        self._save_record(unit)
            except DockerError:
                await asyncio.sleep(RETRY_INTERVAL)
            self._save_record(unit)
            try:
                current = await self.engine.inspect(container.id)
            except DockerError:
                await asyncio.sleep(RETRY_INTERVAL)
                continue
            if current is None or not current.running:
                return current
            await asyncio.sleep(RETRY_INTERVAL / 2)

    async def _run_hooks(self, unit: _Unit, commands: Sequence[ExecCommand]) -> bool:
        """Perform housekeeping commands in order; False when one that counts fails."""
        if not commands:
            return True
        assert unit.spec is not None
        env = self._environment(unit.name, unit.spec, read_files=False)
        for command in commands:
            try:
                hook = parse_hook(command.argv(env), command.ignore_failure)
                await self._perform(hook)
            except (DockerError, DockerRunError) as err:
                hook = Hook("", (), ignore_failure=command.ignore_failure, text=str(command))
                self._log(unit, f"{unit.name}: {hook.text}: {err}"
                          + (" (ignored)" if hook.ignore_failure else ""))
                if not hook.ignore_failure:
                    return False
        return True

    async def _perform(self, hook: Hook) -> None:
        """One housekeeping command through the engine (errors as ``DockerError``)."""
        for target in hook.targets:
            if hook.action == "pull":
                await self.engine.pull(target)
            elif hook.action == "rm":
                await self._must_exist(target, hook.ignore_failure)
                await self.engine.remove_one(target, force="force" in hook.options)
            elif hook.action == "kill":
                await self._must_exist(target, hook.ignore_failure)
                await self.engine.kill(target, hook.options.get("signal"))
            else:
                await self.engine.stop_one(target, int(hook.options.get("time", STOP_TIMEOUT)))

    async def _must_exist(self, target: str, ignored: bool) -> None:
        """``docker rm``/``kill`` of a missing container fail (``No such container``), as the CLI does."""
        if not ignored and await self.engine.inspect(target) is None:
            raise DockerRequestError(f"No such container: {target}")

    async def _remove_containers(self, unit: _Unit) -> None:
        try:
            found = await self.engine.containers(self.machine_id, unit.name)
        except DockerError as err:
            self._log(unit, f"{unit.name}: Cannot list containers: {err}")
            return
        await self._remove_quietly(unit, found)

    async def _remove_quietly(self, unit: _Unit, containers: list[Container]) -> None:
        try:
            await self.engine.remove(containers)
        except DockerError as err:
            self._log(unit, f"{unit.name}: Cannot remove containers: {err}")

    def _forget(self, unit: _Unit) -> None:
        self._record_path(unit.name).unlink(missing_ok=True)

    def _ensure_running(self) -> None:
        if self._collector is None or self._collector.done():
            self._collector = asyncio.ensure_future(self._collect_forever())

    async def _collect_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            with contextlib.suppress(DockerError):
                await self.collect()


def _absolute(path: str | None) -> str | None:
    """``WorkingDirectory=`` inside the container: an absolute path, else the image's default."""
    return path if path and path.startswith("/") else None


def check_unit(spec: ServiceSpec, env: Mapping[str, str]) -> None:
    """Raise ``DockerRunError`` when the docker runtime cannot run ``spec`` (see the module docstring)."""
    if spec.type not in SUPPORTED_TYPES:
        raise DockerRunError(f"Type={spec.type} is not supported by the docker runtime "
                             "(simple, exec, idle, oneshot)")
    if len(spec.exec_start) != 1:
        raise DockerRunError("the docker runtime runs one container per unit: give one ExecStart= command")
    argv = spec.exec_start[0].argv(env)
    if is_docker(argv):
        parse_docker_run(argv, env, read_files=False)
    hooks = {"ExecStartPre": spec.exec_start_pre, "ExecStartPost": spec.exec_start_post,
             "ExecStop": spec.exec_stop, "ExecStopPost": spec.exec_stop_post}
    for setting, commands in hooks.items():
        for command in commands:
            try:
                parse_hook(command.argv(env))
            except DockerRunError as err:
                raise DockerRunError(f"{setting}={err}") from None


def create(config: FleetConfig, machine_id: str) -> DockerRuntime:
    """The runtime ``fleetd`` uses for ``runtime = docker``: state in ``units_directory``, other
    commands than ``docker run`` in ``docker_image`` (default ``busybox:local``)."""
    return DockerRuntime(config.units_directory, machine_id=machine_id,
                         image=config.docker_image or DEFAULT_IMAGE)

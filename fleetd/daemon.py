"""The ``fleetd`` process: configuration, machine presence, agent, engine and API (spec 5.2).

Usage::

    fleetd [-config FILE] [-version] [-<key> VALUE]...

Every fleet.conf key (``fleetd.config``) is also a flag: ``-etcd_servers http://10.0.0.1:2379``,
``-metadata=role=web``, ``--agent_ttl 10s``; ``-`` or ``--``, ``=`` or a separate value, ``-`` for
``_`` in names, and a bare boolean flag means ``true``. Precedence: flag, then ``FLEET_<KEY>``, then the
file, then the default. ``-version``/``--version``/``version`` print ``fleetd version <x>``.

Startup: read the configuration and the machine ID; open the unit runtime and re-adopt the units it
still runs (nothing is restarted); serve the API (when ``api_listen`` is not empty), answering 503
until the machine is registered; register the machine (retried with backoff while the ID is held by
another live fleetd); then run the presence heartbeat, the agent and the engine (unless
``disable_engine``). The API answers 503 again while heartbeats fail and during shutdown.

Signals -- how a fleetd ends decides what happens to its units:

* ``SIGTERM`` and ``SIGINT``: fleet's graceful **purge**. The engine gives up its lease, the agent
  stops and unloads every unit and withdraws their states, the machine leaves the cluster (its key is
  deleted), exit 0. This is fleet's behaviour (TestShutdown, TestNodeShutdown): a stopped fleetd runs
  nothing, and the engine moves its units elsewhere at once.
* ``SIGQUIT``: **detach**, for restarts and upgrades. The engine gives up its lease, the loops stop,
  units keep running, the machine key is refreshed one last time and left in place; a fleetd started
  within ``agent_ttl`` on the same state directory takes the key over and re-adopts the units, so
  they are neither restarted nor moved (fleet restarted every unit on a fleetd restart, #1086).
  ``keep_units_on_exit`` (fleet.conf key, ``FLEET_KEEP_UNITS_ON_EXIT`` or ``-keep_units_on_exit``)
  makes ``SIGTERM``/``SIGINT`` detach too (for service managers that restart with SIGTERM); the value
  in force when the signal arrives counts (a ``SIGHUP`` reload changes it). Draining such a machine
  means setting it false and reloading before ``kill -TERM``.
* ``SIGKILL`` (a crash): like detach without the last refresh; units keep running; a fleetd restarted
  before the key expires takes it over, otherwise the engine has moved the units and the new agent
  unloads them here.
* ``SIGHUP``: ``Reloading configuration from FILE``; metadata, public IP, intervals, TTL, verbosity and
  ``disable_engine`` apply at once; etcd, runtime, machine ID, units directory and API listeners need
  a restart (said in the log).
* A second terminating signal during shutdown exits at once, leaving units as they are.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetd import __version__
from fleetd.agent.loop import Agent, MachinePresence
from fleetd.config import KEYS, ConfigError, FleetConfig, load_config, read_machine_id
from fleetd.engine.loop import Engine
from fleetd.etcd import EtcdClient, EtcdException
from fleetd.machine import MachineState
from fleetd.registry.registry import Registry
from fleetd.runtime.base import UnitRuntime

log = logging.getLogger("fleetd")

LOG_FORMAT = "%(levelname)s %(where)s:%(lineno)d: %(message)s"
_PACKAGE_DIR = str(Path(__file__).resolve().parent.parent) + os.sep
#: Keys whose value a bare flag sets to ``true``.
BOOL_KEYS = frozenset(f.name for f in dataclasses.fields(FleetConfig) if isinstance(f.default, bool))
#: Settings applied only at startup.
RESTART_KEYS = ("etcd_servers", "etcd_username", "etcd_password", "etcd_keyfile", "etcd_certfile",
                "etcd_cafile", "etcd_key_prefix", "etcd_request_timeout", "units_directory", "runtime",
                "docker_image", "machine_id", "machine_id_file", "api_listen", "disable_watches")
USAGE = """Usage: fleetd [-config FILE] [-version] [-<key> VALUE]...

Keys (also FLEET_<KEY> variables and fleet.conf lines):
  """ + "\n  ".join(KEYS) + "\n"


class UsageError(ValueError):
    """Bad command line; ``str()`` is the message printed before the usage."""


@dataclass(frozen=True)
class Options:
    """The command line: config file, flags (key -> text) and the daemon-only switches."""

    config_path: str | None = None
    overrides: Mapping[str, str] = field(default_factory=dict)
    version: bool = False
    help: bool = False


def parse_args(argv: Sequence[str]) -> Options:
    """Parse fleetd's Go-style flags; raises ``UsageError``."""
    args = list(argv)
    config_path: str | None = None
    overrides: dict[str, str] = {}
    switches = {"version": False, "help": False}
    if args[:1] == ["version"]:
        return Options(version=True)
    while args:
        arg = args.pop(0)
        if arg == "--":
            break
        if not arg.startswith("-") or arg in ("-", "---"):
            raise UsageError(f"unexpected argument: {arg}")
        name, has_value, value = arg.lstrip("-").partition("=")
        name = name.replace("-", "_")
        if name in ("h", "help") or name in switches:
            switches["help" if name == "h" else name] = not has_value or value.lower() in ("1", "t", "true")
            continue
        if name != "config" and name not in KEYS:
            raise UsageError(f"flag provided but not defined: -{name}")
        if not has_value:
            if name in BOOL_KEYS:
                value = "true"
            elif args:
                value = args.pop(0)
            else:
                raise UsageError(f"flag needs an argument: -{name}")
        if name == "config":
            config_path = value
        else:
            overrides[name] = value
    if args:
        raise UsageError(f"unexpected argument: {args[0]}")
    return Options(config_path, overrides, version=switches["version"], help=switches["help"])


def build_config(options: Options, environ: Mapping[str, str] | None = None) -> FleetConfig:
    """The configuration: flags over ``FLEET_*`` variables over the file over defaults."""
    env = dict(os.environ if environ is None else environ)
    env.update({"FLEET_" + key.upper(): value for key, value in options.overrides.items()})
    return load_config(options.config_path, env)


def detect_public_ip() -> str:
    """The IPv4 address of the interface holding the default route, ``""`` when there is none.
    (No packet is sent: connecting a UDP socket only selects the route.)"""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))
            return str(probe.getsockname()[0])
    except OSError:
        return ""


def machine_state(config: FleetConfig, machine_id: str) -> MachineState:
    """What this machine publishes: ID, public IP, static metadata, capabilities, version."""
    return MachineState(machine_id, config.public_ip or detect_public_ip(), dict(config.metadata),
                        {"DISABLE_ENGINE": config.disable_engine, "GRPC": config.enable_grpc}, __version__)


def make_runtime(config: FleetConfig, machine_id: str) -> UnitRuntime:
    """The unit runtime named by ``runtime``: the built-in supervisor keeps its state in
    ``units_directory``; another runtime ``X`` comes from ``fleetd.runtime.X.create(config, machine_id)``.
    Either way the Docker containers of units are tracked (``fleetd.runtime.containers``), unless the
    runtime does that itself (``tracks_containers`` true)."""
    from fleetd.runtime.containers import track_containers, unit_environment
    if config.runtime == "supervisor":
        from fleetd.runtime.supervisor import Supervisor
        runtime: UnitRuntime = Supervisor(config.units_directory, machine_id=machine_id,
                                          unit_environment=lambda name: unit_environment(name, machine_id))
    else:
        try:
            module = importlib.import_module(f"fleetd.runtime.{config.runtime}")
            runtime = module.create(config, machine_id)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"runtime {config.runtime} is not available: {err}") from None
    if getattr(runtime, "tracks_containers", False):
        return runtime
    return track_containers(runtime, machine_id)


class _SourceFormatter(logging.Formatter):
    """Adds ``where``: the source file relative to the package root (``fleetd/engine/loop.py``)."""

    def format(self, record: logging.LogRecord) -> str:
        record.where = record.pathname.removeprefix(_PACKAGE_DIR)
        return super().format(record)


def configure_logging(verbosity: int) -> None:
    """fleet's log lines (``INFO fleetd/engine/loop.py:123: message``) on stderr; debug when
    ``verbosity > 0``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_SourceFormatter(LOG_FORMAT))
    logging.basicConfig(handlers=[handler], force=True)
    logging.getLogger("fleetd").setLevel(logging.DEBUG if verbosity > 0 else logging.INFO)


class Daemon:
    """One fleetd: owns the etcd client, runtime, presence, agent, engine and API servers."""

    def __init__(self, options: Options, config: FleetConfig) -> None:
        self.options = options
        self.config = config
        self.machine_id = read_machine_id(config)
        self.machine = machine_state(config, self.machine_id)
        self.runtime = make_runtime(config, self.machine_id)
        self.client = EtcdClient.from_config(config)
        self.registry = Registry(self.client, config.layout())
        state_file = Path(config.units_directory) / "machine.json"
        self.presence = MachinePresence(self.registry, self.machine, config.agent_ttl, state_file)
        self.agent = Agent(self.registry, self.runtime, self.machine, ttl=config.agent_ttl,
                           watches=not config.disable_watches)
        self.engine = Engine(self.registry, self.machine_id, interval=config.engine_reconcile_interval,
                             config=config.engine_config(), watches=not config.disable_watches,
                             machine_ttl=config.agent_ttl)
        self._engine_task: asyncio.Task[None] | None = None
        self._presence_task: asyncio.Task[None] | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._stop = asyncio.Event()
        self._purge = True
        self._background: set[asyncio.Task[None]] = set()

    def _spawn(self, job: Coroutine[Any, Any, None]) -> None:
        """Run ``job`` in the background, keeping a reference until it is done."""
        task = asyncio.create_task(job)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- running ---------------------------------------------------------------------------------------

    async def run(self) -> int:
        """Run until a terminating signal; 0 after a clean shutdown."""
        self._install_signals()
        log.info("Starting fleetd version %s on Machine(%s)", __version__, self.machine_id)
        adopt = getattr(self.runtime, "adopt", None)
        if adopt is not None:
            adopted = await adopt()
            if adopted:
                log.info("Re-adopted running units: %s", ", ".join(adopted))
        await self.agent.adopt_current()
        self._servers = await self._start_api()
        registering = asyncio.create_task(self.presence.register())
        stopping = asyncio.create_task(self._stop.wait())
        await asyncio.wait({registering, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if registering.done():
            await self._start_components()
        else:
            registering.cancel()
        await stopping
        await self._shutdown()
        return 0

    def available(self) -> bool:
        """Whether the API may answer: registered, heartbeats succeeding, not shutting down (fleet
        answers 503 otherwise)."""
        return self._presence_task is not None and self.presence.healthy and not self._stop.is_set()

    async def _start_components(self) -> None:
        self._presence_task = asyncio.create_task(self.presence.run())
        await self.agent.start()
        self._set_engine(not self.config.disable_engine)

    def _set_engine(self, enabled: bool) -> None:
        running = self._engine_task is not None and not self._engine_task.done()
        if enabled and not running:
            self._engine_task = asyncio.create_task(self.engine.run())
        elif not enabled and running:
            log.info("Engine disabled")
            self._spawn(self._stop_engine())

    async def _stop_engine(self) -> None:
        task, self._engine_task = self._engine_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await self.engine.stop()

    async def _start_api(self) -> list[asyncio.AbstractServer]:
        if not self.config.api_listen:
            log.info("API not served: api_listen is empty")
            return []
        try:
            server_module = importlib.import_module("fleetd.api.server")
        except ModuleNotFoundError as err:
            if err.name not in ("fleetd.api", "fleetd.api.server"):
                raise
            log.info("API not served: this build has no fleetd.api")
            return []
        try:
            servers: list[asyncio.AbstractServer] = await server_module.start_api(
                self.registry, self.config, self.machine, runtime=self.runtime, available=self.available)
        except OSError as err:
            log.error("Cannot serve the API: %s", err)
            return []
        log.info("Serving the API on %s", ", ".join(map(str, self.config.api_listen)))
        return servers

    # -- signals ---------------------------------------------------------------------------------------

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for signum, purging in ((signal.SIGTERM, True), (signal.SIGINT, True), (signal.SIGQUIT, False)):
            loop.add_signal_handler(signum, self._terminate, signum, purging)
        loop.add_signal_handler(signal.SIGHUP, self._reload)

    def _terminate(self, signum: int, purge: bool) -> None:
        """Shut down on ``signum``: purge units when ``purge`` and not ``keep_units_on_exit``, else detach."""
        purge = purge and not self.config.keep_units_on_exit
        name = signal.Signals(signum).name
        if self._stop.is_set():
            log.warning("%s during shutdown: exiting now, units are left as they are", name)
            os._exit(1)
        self._purge = purge
        how = "stopping units and leaving the cluster" if purge else "leaving units running"
        log.info("Received %s: shutting down, %s", name, how)
        self._stop.set()

    def _reload(self) -> None:
        log.info("Reloading configuration from %s", self.options.config_path or "the environment")
        try:
            config = build_config(self.options)
        except ConfigError as err:
            log.error("Keeping the current configuration: %s", err)
            return
        self.apply_config(config)

    def apply_config(self, config: FleetConfig) -> None:
        """Apply a reloaded configuration: what can change live does, the rest is logged."""
        for key in RESTART_KEYS:
            if getattr(config, key) != getattr(self.config, key):
                log.warning("%s changed: it takes effect after a restart", key)
        configure_logging(config.verbosity)
        self.config = config
        self.machine = machine_state(config, self.machine_id)
        self.presence.machine = self.agent.machine = self.machine
        self.presence.ttl = self.agent.ttl = config.agent_ttl
        self.engine.set_interval(config.engine_reconcile_interval)
        self.engine.config = config.engine_config()
        self.engine.machine_ttl = config.agent_ttl
        if self._presence_task is not None:
            self._set_engine(not config.disable_engine)
            self._spawn(self._beat_now())
        self.agent.wake()

    async def _beat_now(self) -> None:
        try:
            await self.presence.beat()
        except EtcdException as err:
            log.warning("Could not publish the new machine state: %s", err)

    # -- shutdown --------------------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        await self._stop_engine()
        if self._presence_task is not None:
            self._presence_task.cancel()
            await asyncio.gather(self._presence_task, return_exceptions=True)
        if self._purge:
            await self.agent.purge()
            if self._presence_task is not None:  # never delete the key of a fleetd holding our ID
                await self._leave()
        else:
            await self.agent.stop()
            if self._presence_task is not None:
                await self._beat_now()
        await self.runtime.close()
        await self.client.close()
        log.info("fleetd stopped")

    async def _leave(self) -> None:
        try:
            await self.presence.leave()
            log.info("Machine(%s) left the cluster", self.machine_id)
        except EtcdException as err:
            log.warning("Could not remove Machine(%s) from the registry: %s", self.machine_id, err)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``fleetd`` console script. Exit status: 0 after a clean shutdown, 1 on a configuration or
    startup error, 2 on a bad command line."""
    try:
        options = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as err:
        print(f"{err}\n{USAGE}", file=sys.stderr, end="")
        return 2
    if options.version:
        print(f"fleetd version {__version__}")
        return 0
    if options.help:
        print(USAGE, end="")
        return 0
    try:
        config = build_config(options)
        configure_logging(config.verbosity)
        for warning in config.warnings:
            log.warning("Configuration: %s", warning)
        return asyncio.run(_run(options, config))
    except ConfigError as err:
        configure_logging(0)
        log.error("%s", err)
        return 1


async def _run(options: Options, config: FleetConfig) -> int:
    return await Daemon(options, config).run()


if __name__ == "__main__":
    sys.exit(main())

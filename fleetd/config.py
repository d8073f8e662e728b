"""fleetd's configuration: fleet's ``fleet.conf`` keys and ``FLEET_*`` variables, plus what several
machines on one host need.

Sources, highest precedence first (as fleet's globalconf): a non-empty environment variable
``FLEET_<KEY>`` (key upper-cased), the key in the config file, the default. The file is fleet's INI
without sections: ``key = value`` lines, ``#`` or ``;`` comments; a value may be wrapped in double
quotes. ``-config PATH`` names the file; without it ``/etc/fleet/fleet.conf`` is read if it exists.

fleet's keys (spec 5.7), same names, defaults and value syntax: ``verbosity``, ``etcd_servers``
(``a,b`` or ``["a","b"]``), ``etcd_username``, ``etcd_password``, ``etcd_keyfile``, ``etcd_certfile``,
``etcd_cafile``, ``etcd_key_prefix``, ``etcd_request_timeout`` (seconds), ``engine_reconcile_interval``
(seconds; the leader lease lives 5 times as long), ``public_ip``, ``metadata`` (``k=v,k2=v2``),
``agent_ttl`` (a Go duration such as ``30s`` or ``1m30s``), ``units_directory``, ``systemd_user``,
``token_limit``, ``enable_grpc``, ``disable_engine``, ``disable_watches``; ``verify_units`` and
``authorized_keys_file`` are deprecated and ignored with a warning.

Additions (not in fleet):

* ``machine_id``: this machine's ID; when empty it is read from ``machine_id_file``
  (default ``/etc/machine-id``). Several fleetds on one host each need their own.
* ``api_listen``: comma list of API listeners: ``unix:/path`` (or just ``/path``) and ``host:port``
  (or ``tcp://host:port``, ``:port`` = every interface). Default ``unix:/var/run/fleet.sock``.
* ``runtime``: what runs the units: ``systemd``, ``supervisor`` (built in) or ``docker``; the default
  ``auto`` is ``systemd`` when the system bus offers ``org.freedesktop.systemd1`` (or, if the bus
  cannot be asked, on a host booted with systemd: ``/run/systemd/system`` exists), else ``supervisor``.
* ``docker_image``: the image the ``docker`` runtime runs a unit's command in when its ``ExecStart=``
  is not ``docker run`` (default ``busybox:local``; it must be present on the host, it is never pulled).
* ``reschedule_grace_period``: seconds a machine may be gone before its units are moved elsewhere
  (0 = fleet: at once). A Go duration or a number of seconds.
* ``keep_units_on_exit``: a boolean; when true, ``SIGTERM``/``SIGINT`` leave the units running (like
  ``SIGQUIT``) instead of fleet's purge (see ``fleetd.daemon``). Default false.

Parsing (``parse_config``) is pure; ``load_config`` and ``read_machine_id`` read files and the
environment.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetd.engine.plan import EngineConfig
from fleetd.machine import parse_metadata
from fleetd.registry.layout import DEFAULT_PREFIX, Layout

DEFAULT_CONFIG_FILE = "/etc/fleet/fleet.conf"
ENV_PREFIX = "FLEET_"
RUNTIMES = ("systemd", "supervisor", "docker")
DEPRECATED_KEYS = frozenset({"verify_units", "authorized_keys_file"})
#: How much longer than the reconcile interval the engine leader lease lives (fleet: 5x).
LEASE_TTL_FACTOR = 5


class ConfigError(ValueError):
    """A setting has an invalid value or the config file cannot be read; ``str()`` says which."""


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """One API listener: a unix socket ``path`` or a TCP ``host``:``port`` (host ``""`` = any)."""

    path: str = ""
    host: str = ""
    port: int = 0

    @property
    def is_unix(self) -> bool:
        return bool(self.path)

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.path else f"{self.host}:{self.port}"

    @staticmethod
    def parse(text: str) -> ListenAddress:
        """``unix:/path``, ``/path``, ``tcp://host:port``, ``host:port``, ``[v6]:port`` or ``:port``."""
        text = text.strip()
        if text.startswith("unix:") or text.startswith("/"):
            path = text.removeprefix("unix:").removeprefix("//")
            if not path:
                raise ValueError("empty unix socket path")
            return ListenAddress(path=path)
        host, sep, port = text.removeprefix("tcp://").rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"not a listen address: {text!r}")
        return ListenAddress(host=host.strip("[]"), port=int(port))


# ---------------------------------------------------------------------------------------------------
# Value syntax (Go's flag package)

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3,
                   "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration (``30s``, ``1m30s``, ``1.5h``, ``500ms``, ``0``); ValueError otherwise."""
    body = text.strip()
    sign = -1.0 if body.startswith("-") else 1.0
    body = body.lstrip("+-")
    if body == "0":
        return 0.0
    if not body or _DURATION_PART.sub("", body):
        raise ValueError(f"time: invalid duration {text!r}")
    return sign * sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(body))


def _seconds(text: str) -> float:
    """A plain number of seconds or a Go duration."""
    try:
        return float(text)
    except ValueError:
        return parse_go_duration(text)


_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def parse_go_bool(text: str) -> bool:
    """Go's ``strconv.ParseBool``."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"invalid syntax {text!r}")


def _go_int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        return int(text)


def parse_string_list(text: str) -> tuple[str, ...]:
    """fleet's list syntax: ``a,b`` or ``["a","b"]``; brackets, quotes and spaces trimmed, empties dropped."""
    items = (item.strip().strip('"').strip() for item in text.strip().strip("[]").split(","))
    return tuple(item for item in items if item)


def _listen_list(text: str) -> tuple[ListenAddress, ...]:
    return tuple(ListenAddress.parse(item) for item in parse_string_list(text))


def _runtime(text: str) -> str:
    if text not in (*RUNTIMES, "auto"):
        raise ValueError(f"must be one of auto, {', '.join(RUNTIMES)}")
    return text


# ---------------------------------------------------------------------------------------------------
# The configuration


@dataclass(frozen=True)
class FleetConfig:
    """Every fleetd setting, parsed (durations in seconds). Build with ``parse_config``/``load_config``;
    ``runtime`` is never ``auto`` there. ``warnings`` lists ignored keys (deprecated or unknown)."""

    verbosity: int = 0
    etcd_servers: tuple[str, ...] = ("http://127.0.0.1:2379", "http://127.0.0.1:4001")
    etcd_username: str = ""
    etcd_password: str = ""
    etcd_keyfile: str = ""
    etcd_certfile: str = ""
    etcd_cafile: str = ""
    etcd_key_prefix: str = DEFAULT_PREFIX
    etcd_request_timeout: float = 1.0
    engine_reconcile_interval: float = 2.0
    public_ip: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    agent_ttl: float = 30.0
    units_directory: str = "/run/fleet/units/"
    systemd_user: bool = False
    token_limit: int = 100
    enable_grpc: bool = False
    disable_engine: bool = False
    disable_watches: bool = False
    machine_id: str = ""
    machine_id_file: str = "/etc/machine-id"
    api_listen: tuple[ListenAddress, ...] = (ListenAddress(path="/var/run/fleet.sock"),)
    runtime: str = "supervisor"
    docker_image: str = "busybox:local"
    reschedule_grace_period: float = 0.0
    keep_units_on_exit: bool = False
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def lease_ttl(self) -> float:
        """TTL of the engine leader lease: 5 x ``engine_reconcile_interval``."""
        return LEASE_TTL_FACTOR * self.engine_reconcile_interval

    def layout(self) -> Layout:
        """The registry's keys under ``etcd_key_prefix``."""
        return Layout(self.etcd_key_prefix)

    def engine_config(self) -> EngineConfig:
        """The engine's knobs (the reschedule grace period)."""
        return EngineConfig(grace=self.reschedule_grace_period)


#: How each key's text becomes its value; keys not listed take strings.
_PARSERS: dict[str, Callable[[str], Any]] = {
    "verbosity": _go_int, "token_limit": _go_int,
    "etcd_request_timeout": float, "engine_reconcile_interval": float,
    "systemd_user": parse_go_bool, "enable_grpc": parse_go_bool, "disable_engine": parse_go_bool,
    "disable_watches": parse_go_bool, "keep_units_on_exit": parse_go_bool,
    "etcd_servers": parse_string_list, "metadata": parse_metadata, "agent_ttl": parse_go_duration,
    "api_listen": _listen_list, "runtime": _runtime, "reschedule_grace_period": _seconds,
}
KEYS = tuple(f.name for f in dataclasses.fields(FleetConfig) if f.name != "warnings")


def parse_config_file(text: str) -> tuple[dict[str, str], list[str]]:
    """The ``key = value`` pairs of a fleet.conf text (last one wins) and warnings about lines skipped.

    One pair of double quotes around a whole value is removed.
    """
    values: dict[str, str] = {}
    warnings: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            warnings.append(f"line {number}: not a key = value line: {line!r}")
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        values[key.strip()] = value
    return values, warnings


def parse_config(file_text: str = "", environ: Mapping[str, str] | None = None, *,
                 systemd_booted: bool = False) -> FleetConfig:
    """Merge defaults, the file's keys and ``FLEET_*`` variables (non-empty ones win).

    Raises ``ConfigError`` naming the key for an invalid value. ``runtime = auto`` becomes ``systemd``
    when ``systemd_booted``, else ``supervisor``.
    """
    file_values, warnings = parse_config_file(file_text)
    warnings += [f"{key} is deprecated and ignored" if key in DEPRECATED_KEYS else f"unknown option {key}"
                 for key in file_values if key not in KEYS]
    env = environ or {}
    warnings += [f"{key} is deprecated and ignored" for key in sorted(DEPRECATED_KEYS)
                 if env.get(ENV_PREFIX + key.upper()) and key not in file_values]
    chosen: dict[str, Any] = {}
    for key in KEYS:
        text = env.get(ENV_PREFIX + key.upper()) or file_values.get(key)
        if text is None:
            continue
        try:
            chosen[key] = _PARSERS.get(key, str)(text)
        except ValueError as err:
            raise ConfigError(f"invalid value {text!r} for {key}: {err}") from None
    if chosen.get("runtime", "auto") == "auto":
        chosen["runtime"] = "systemd" if systemd_booted else "supervisor"
    config = FleetConfig(**chosen, warnings=tuple(warnings))
    _validate(config)
    return config


def _validate(config: FleetConfig) -> None:
    positive = ("etcd_request_timeout", "engine_reconcile_interval", "agent_ttl")
    for key in positive:
        if getattr(config, key) <= 0:
            raise ConfigError(f"{key} must be greater than zero")
    if not 0 < config.token_limit < 65536:
        raise ConfigError("token_limit must be between 1 and 65535")
    if config.reschedule_grace_period < 0:
        raise ConfigError("reschedule_grace_period must not be negative")
    if not config.etcd_servers:
        raise ConfigError("etcd_servers is empty")


#: The bus name systemd's manager owns on the system bus.
SYSTEMD_BUS_NAME = "org.freedesktop.systemd1"
#: Seconds to wait for the system bus's answer when picking the runtime.
BUS_TIMEOUT = 2.0


def systemd_on_bus(bus: str = "SYSTEM", timeout: float = BUS_TIMEOUT) -> bool | None:
    """Whether ``org.freedesktop.systemd1`` has an owner on ``bus`` (a bus address or ``SYSTEM``);
    None when the bus cannot be asked (no bus socket, no D-Bus library, no answer in ``timeout``)."""
    try:
        from jeepney.bus_messages import message_bus  # type: ignore[import-untyped]
        from jeepney.io.blocking import open_dbus_connection  # type: ignore[import-untyped]
    except ImportError:
        return None
    try:
        with open_dbus_connection(bus=bus) as conn:
            reply = conn.send_and_get_reply(message_bus.NameHasOwner(SYSTEMD_BUS_NAME), timeout=timeout)
    except Exception:  # whatever stops the question (OSError, timeout, protocol): no answer
        return None
    return bool(reply.body[0]) if reply.body else None


def systemd_booted(ask_bus: Callable[[], bool | None] = systemd_on_bus,
                   run_dir: str = "/run/systemd/system") -> bool:
    """True when systemd manages this host: its manager is on the system bus (``ask_bus``), or, when
    the bus cannot be asked, ``run_dir`` exists (``sd_booted``)."""
    answer = ask_bus()
    return os.path.isdir(run_dir) if answer is None else answer


def load_config(path: str | None = None, environ: Mapping[str, str] | None = None) -> FleetConfig:
    """Read ``path`` (must exist) or else ``/etc/fleet/fleet.conf`` (if it exists), then ``environ``
    (default ``os.environ``). Raises ``ConfigError``."""
    file_path = path or (DEFAULT_CONFIG_FILE if os.path.exists(DEFAULT_CONFIG_FILE) else None)
    text = ""
    if file_path:
        try:
            text = Path(file_path).read_text()
        except OSError as err:
            raise ConfigError(f"cannot read config file {file_path}: {err.strerror or err}") from None
    return parse_config(text, os.environ if environ is None else environ, systemd_booted=systemd_booted())


def read_machine_id(config: FleetConfig) -> str:
    """``machine_id`` if set, else the first line of ``machine_id_file``; ConfigError if that is empty."""
    if config.machine_id:
        return config.machine_id.strip()
    try:
        machine_id = Path(config.machine_id_file).read_text().strip()
    except OSError as err:
        raise ConfigError(f"cannot read machine ID from {config.machine_id_file}: {err.strerror or err}") \
            from None
    if not machine_id:
        raise ConfigError(f"machine ID file {config.machine_id_file} is empty")
    return machine_id.splitlines()[0].strip()

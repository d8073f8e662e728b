"""A unit's ``[Service]`` section as a typed ``ServiceSpec``: the pure part of running a service.

Parsing follows systemd's rules (``systemd.service(5)``, ``systemd.exec(5)``, ``systemd.kill(5)``,
``systemd.unit(5)``), so a unit behaves the same under the built-in runtime as under systemd:

* Specifiers (``%n %N %p %P %i %I %f %H %l %m %t %u %U %h %s %%``) are expanded in every value first; an
  unknown specifier refuses the unit.
* Command lines are split into words with quoting (``"..."``, ``'...'``, adjacent parts joined) and C
  escapes (``\\n \\t \\s \\xNN \\NNN \\uXXXX``...); a lone ``;`` word separates commands, ``\\;`` is a literal
  semicolon. Each command may start with the prefixes ``-`` (failure ignored), ``@`` (second word is
  ``argv[0]``), ``:`` (no environment expansion), ``+``/``!``/``!!`` (run without ``User=``/``Group=``);
  ``|`` is refused. An empty assignment resets the list.
* Environment expansion happens when a command runs (``ExecCommand.argv``): a word that is exactly
  ``$NAME`` becomes the variable's value split at whitespace (zero or more words); ``${NAME}`` anywhere
  in a word is replaced by the exact value; ``$$`` is a literal ``$``; ``$NAME`` inside a word is kept.
* Time spans accept ``infinity`` and unit suffixes (``us ms s min h d w M y``, long forms too),
  combined (``1min 30s``); a bare number is seconds. ``TimeoutStartSec=0``/``TimeoutStopSec=0`` mean
  no timeout, like systemd.

Settings systemd would refuse the unit for raise ``ServiceSpecError`` with systemd's message; values it
would ignore with a log line are ignored and reported in ``ServiceSpec.warnings``.
"""

from __future__ import annotations

import enum
import math
import os
import re
import signal
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from fleetd.runtime.base import UnitRuntimeState
from fleetd.unit import UnitFile, UnitNameInfo

_T = TypeVar("_T")

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_TIMEOUT = 90.0
DEFAULT_RESTART_SEC = 0.1
DEFAULT_START_LIMIT_INTERVAL = 10.0
DEFAULT_START_LIMIT_BURST = 5


class ServiceSpecError(ValueError):
    """The service cannot be run as written; ``str()`` says why (systemd's wording where it has one)."""


class ServiceType(enum.StrEnum):
    """``Type=``. ``exec`` and ``idle`` behave like ``simple`` here: a spawn returns once exec succeeded."""

    SIMPLE = "simple"
    EXEC = "exec"
    FORKING = "forking"
    ONESHOT = "oneshot"
    NOTIFY = "notify"
    IDLE = "idle"


class ServiceResult(enum.StrEnum):
    """Why a service run ended (systemd's ``Result``, exported to ExecStop as ``$SERVICE_RESULT``)."""

    SUCCESS = "success"
    EXIT_CODE = "exit-code"
    SIGNAL = "signal"
    CORE_DUMP = "core-dump"
    TIMEOUT = "timeout"
    WATCHDOG = "watchdog"
    PROTOCOL = "protocol"
    RESOURCES = "resources"
    START_LIMIT_HIT = "start-limit-hit"


class RestartPolicy(enum.StrEnum):
    """``Restart=``; ``should_restart`` is systemd's table of which results restart."""

    NO = "no"
    ALWAYS = "always"
    ON_SUCCESS = "on-success"
    ON_FAILURE = "on-failure"
    ON_ABNORMAL = "on-abnormal"
    ON_ABORT = "on-abort"
    ON_WATCHDOG = "on-watchdog"

    def should_restart(self, result: ServiceResult) -> bool:
        """True when a run that ended with ``result`` (not by an explicit stop) is restarted.

        A clean exit (exit 0, or SIGHUP/SIGINT/SIGTERM/SIGPIPE for a daemon) is ``success``; hitting the
        start limit never restarts.
        """
        if result is ServiceResult.START_LIMIT_HIT:
            return False
        abnormal = {ServiceResult.SIGNAL, ServiceResult.CORE_DUMP, ServiceResult.TIMEOUT,
                    ServiceResult.WATCHDOG}
        return {
            RestartPolicy.NO: False,
            RestartPolicy.ALWAYS: True,
            RestartPolicy.ON_SUCCESS: result is ServiceResult.SUCCESS,
            RestartPolicy.ON_FAILURE: result is not ServiceResult.SUCCESS,
            RestartPolicy.ON_ABNORMAL: result in abnormal,
            RestartPolicy.ON_ABORT: result in (ServiceResult.SIGNAL, ServiceResult.CORE_DUMP),
            RestartPolicy.ON_WATCHDOG: result is ServiceResult.WATCHDOG,
        }[self]


class KillMode(enum.StrEnum):
    """``KillMode=``: which processes a stop signals (see ``fleetd.runtime.supervisor``)."""

    CONTROL_GROUP = "control-group"
    PROCESS = "process"
    MIXED = "mixed"
    NONE = "none"


class NotifyAccess(enum.StrEnum):
    """``NotifyAccess=``: who may send ``sd_notify`` messages (``notify`` services default to ``main``)."""

    NONE = "none"
    MAIN = "main"
    EXEC = "exec"
    ALL = "all"


# ---------------------------------------------------------------------------------------------------
# Exit statuses (systemd's names, shown as ``status=203/EXEC``)

EXIT_STATUS_NAMES = {0: "SUCCESS", 1: "FAILURE", 2: "INVALIDARGUMENT", 3: "NOTIMPLEMENTED", 4: "NOPERMISSION",
                     5: "NOTINSTALLED", 6: "NOTCONFIGURED", 7: "NOTRUNNING", 200: "CHDIR", 203: "EXEC",
                     216: "GROUP", 217: "USER"}
EXIT_CHDIR, EXIT_EXEC, EXIT_GROUP, EXIT_USER = 200, 203, 216, 217
#: Signals after which a daemon's exit still counts as clean.
CLEAN_SIGNALS = frozenset({signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE})


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """How a process ended: ``code`` is ``exited`` (``status`` = exit status) or ``killed`` (= signal)."""

    code: str
    status: int

    @classmethod
    def from_returncode(cls, returncode: int) -> ExitStatus:
        """From ``Popen.returncode``: negative means killed by that signal."""
        return cls("killed", -returncode) if returncode < 0 else cls("exited", returncode)

    def describe(self) -> str:
        """systemd's ``code=exited, status=1/FAILURE`` or ``code=killed, status=9/KILL``."""
        if self.code == "killed":
            try:
                name = signal.Signals(self.status).name.removeprefix("SIG")
            except ValueError:
                name = str(self.status)
            return f"code=killed, status={self.status}/{name}"
        known = EXIT_STATUS_NAMES.get(self.status)
        return f"code=exited, status={self.status}" + (f"/{known}" if known else "")

    def result(self, success_statuses: frozenset[int] = frozenset(), *, daemon: bool = True) -> ServiceResult:
        """``success`` for a clean end, else ``exit-code`` or ``signal``.

        Exit 0 and ``success_statuses`` are clean; for a daemon's main process so are ``CLEAN_SIGNALS``.
        """
        if self.code == "exited":
            return ServiceResult.SUCCESS if self.status == 0 or self.status in success_statuses \
                else ServiceResult.EXIT_CODE
        if daemon and self.status in CLEAN_SIGNALS:
            return ServiceResult.SUCCESS
        return ServiceResult.SIGNAL


# ---------------------------------------------------------------------------------------------------
# Values: booleans, time spans, signals

_TRUE = frozenset({"1", "yes", "y", "true", "t", "on"})
_FALSE = frozenset({"0", "no", "n", "false", "f", "off"})


def parse_bool(value: str) -> bool:
    """systemd's boolean: ``1 yes y true t on`` / ``0 no n false f off`` (case-insensitive)."""
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"Failed to parse boolean value: {value}")


_TIME_UNITS = {
    "us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3,
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
    "w": 604800.0, "week": 604800.0, "weeks": 604800.0,
    "M": 2629800.0, "month": 2629800.0, "months": 2629800.0,
    "y": 31557600.0, "year": 31557600.0, "years": 31557600.0,
}
_TIME_PART = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)")


def parse_timespan(value: str) -> float:
    """Seconds in a systemd time span (``90``, ``5min 20s``, ``100ms``, ``infinity`` -> ``math.inf``).

    Raises ``ValueError`` for anything else.
    """
    text = value.strip()
    if text == "infinity":
        return math.inf
    total, pos = 0.0, 0
    if not text:
        raise ValueError(f"Failed to parse time span: {value!r}")
    while pos < len(text):
        match = _TIME_PART.match(text, pos)
        if match is None or match.end() == pos or (match.group(2) and match.group(2) not in _TIME_UNITS):
            raise ValueError(f"Failed to parse time span: {value!r}")
        total += float(match.group(1)) * _TIME_UNITS.get(match.group(2) or "s", 1.0)
        pos = match.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return total


def parse_signal(value: str) -> signal.Signals:
    """``SIGTERM``, ``TERM`` or ``15`` -> the signal; ``ValueError`` otherwise."""
    text = value.strip()
    try:
        if text.isdigit():
            return signal.Signals(int(text))
        return signal.Signals["SIG" + text.removeprefix("SIG")]
    except (KeyError, ValueError):
        raise ValueError(f"Failed to parse signal: {value}") from None


# ---------------------------------------------------------------------------------------------------
# Specifiers


def unescape_unit_name(text: str) -> str:
    """systemd's ``unit_name_unescape``: ``\\xNN`` -> that byte, ``-`` -> ``/``."""
    out = re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: "\0" + m.group(1), text).replace("-", "/")
    return re.sub(r"\0([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), out)


@dataclass(frozen=True)
class SpecifierContext:
    """What specifiers expand to for one unit on one host (the runtime builds it from the real host)."""

    name: str
    hostname: str = ""
    machine_id: str = ""
    runtime_dir: str = "/run"
    user: str = "root"
    uid: int = 0
    home: str = "/root"
    shell: str = "/bin/sh"

    def table(self) -> dict[str, str]:
        """Specifier letter -> value."""
        info = UnitNameInfo.parse(self.name) or UnitNameInfo(self.name, self.name, self.name)
        prefix_path = unescape_unit_name(info.instance if info.instance else info.prefix)
        return {
            "n": info.full_name, "N": info.name, "p": info.prefix, "P": unescape_unit_name(info.prefix),
            "i": info.instance, "I": unescape_unit_name(info.instance),
            "f": prefix_path if prefix_path.startswith("/") else "/" + prefix_path,
            "H": self.hostname, "l": self.hostname.split(".")[0], "m": self.machine_id, "t": self.runtime_dir,
            "u": self.user, "U": str(self.uid), "h": self.home, "s": self.shell, "%": "%",
        }


def expand_specifiers(text: str, context: SpecifierContext) -> str:
    """Replace every ``%x`` in one pass; an unknown letter or a trailing ``%`` raises ``ServiceSpecError``."""
    table = context.table()

    def replace(match: re.Match[str]) -> str:
        letter = match.group(1)
        if letter not in table:
            raise ServiceSpecError(f"Failed to resolve unit specifiers in {text!r}: "
                                   f"unknown specifier %{letter}")
        return table[letter]

    return re.sub(r"%(.?)", replace, text, flags=re.DOTALL)


# ---------------------------------------------------------------------------------------------------
# Word splitting and environment expansion

_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "s": " ",
            "\\": "\\", '"': '"', "'": "'", ";": ";", "$": "$"}
_ESCAPE_FORMS = re.compile(r"x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[0-7]{3}")


def _unescape_at(text: str, pos: int) -> tuple[str, int]:
    """Decode the C escape starting after the backslash at ``text[pos - 1]``; return it and the new pos."""
    if pos >= len(text):
        raise ServiceSpecError(f"Invalid escape at end of {text!r}")
    char = text[pos]
    if char in _ESCAPES:
        return _ESCAPES[char], pos + 1
    match = _ESCAPE_FORMS.match(text, pos)
    if match is None:
        raise ServiceSpecError(f"Invalid escape sequence \\{char} in {text!r}")
    form = match.group(0)
    code = int(form, 8) if form[0].isdigit() else int(form[1:], 16)
    return chr(code), match.end()


@dataclass(frozen=True, slots=True)
class Word:
    """One word of a command line; ``quoted`` when any part was quoted or escaped as ``\\;``, so such a word
    is never a ``;`` separator nor read for command prefixes."""

    text: str
    quoted: bool = False


def split_words(text: str) -> list[Word]:
    """Split a systemd value into words (quotes removed, C escapes decoded, ``\\``+newline is a space).

    Raises ``ServiceSpecError`` on an unterminated quote or a bad escape.
    """
    text = text.replace("\\\n", " ")
    words: list[Word] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return words
        current: list[str] = []
        quoted = False
        while pos < len(text) and not text[pos].isspace():
            char = text[pos]
            if char in "\"'":
                end_quote = char
                pos += 1
                quoted = True
                while True:
                    if pos >= len(text):
                        raise ServiceSpecError(f"Unbalanced quoting in {text!r}")
                    char = text[pos]
                    if char == end_quote:
                        pos += 1
                        break
                    if char == "\\":
                        decoded, pos = _unescape_at(text, pos + 1)
                        current.append(decoded)
                    else:
                        current.append(char)
                        pos += 1
            elif char == "\\":
                decoded, pos = _unescape_at(text, pos + 1)
                current.append(decoded)
                quoted = quoted or decoded == ";"
            else:
                current.append(char)
                pos += 1
        words.append(Word("".join(current), quoted))


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def expand_env_word(word: str, env: Mapping[str, str]) -> str:
    """Replace ``${NAME}`` by its value (empty when unset) and ``$$`` by ``$``; other ``$`` stay."""
    def replace(match: re.Match[str]) -> str:
        return "$" if match.group(0) == "$$" else env.get(match.group(1), "")

    return re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}", replace, word)


def expand_env_words(words: Iterable[str], env: Mapping[str, str]) -> list[str]:
    """systemd's argument expansion: a word that is exactly ``$NAME`` becomes the value split at whitespace
    (no words when unset or empty); every other word goes through ``expand_env_word``."""
    out: list[str] = []
    for word in words:
        if word.startswith("$") and _ENV_NAME.fullmatch(word[1:]):
            out.extend(env.get(word[1:], "").split())
        else:
            out.append(expand_env_word(word, env))
    return out


# ---------------------------------------------------------------------------------------------------
# Commands


@dataclass(frozen=True)
class ExecCommand:
    """One command of an ``Exec*=`` setting.

    ``words[0]`` is the executable (absolute, or a bare name looked up in ``$PATH`` at spawn time);
    with ``@`` the next word is ``argv[0]``, otherwise ``argv[0]`` is the executable itself.
    ``ignore_failure`` (``-``): a failing exit is logged and ignored. ``full_privileges`` (``+ ! !!``):
    run without ``User=``/``Group=``. ``expand_env`` is False for ``:``.
    """

    words: tuple[str, ...]
    ignore_failure: bool = False
    custom_argv0: bool = False
    full_privileges: bool = False
    expand_env: bool = True

    @property
    def path(self) -> str:
        """The executable as written."""
        return self.words[0]

    def argv(self, env: Mapping[str, str]) -> list[str]:
        """The argument vector for a run with environment ``env`` (``argv[0]`` first)."""
        args = list(self.words[1:]) if self.custom_argv0 else list(self.words)
        return expand_env_words(args, env) if self.expand_env else args

    def __str__(self) -> str:
        return " ".join(self.words)


_PREFIXES = ("!!", "-", "@", ":", "+", "!")


def _command_prefixes(first: str) -> tuple[dict[str, bool], str]:
    flags = {"-": False, "@": False, ":": False, "+": False, "!": False}
    while first:
        if first.startswith("|"):
            raise ServiceSpecError("The '|' command prefix (run via the shell) is not supported; "
                                   "write /bin/sh -c '...' instead")
        prefix = next((p for p in _PREFIXES if first.startswith(p)), None)
        if prefix is None:
            break
        flags["!" if prefix == "!!" else prefix] = True
        first = first[len(prefix):]
    if flags["+"] and flags["!"]:
        raise ServiceSpecError("The '+' and '!' command prefixes cannot be combined")
    return flags, first


def parse_exec(value: str) -> list[ExecCommand]:
    """Parse one ``Exec*=`` value (specifiers already expanded) into its commands (``;`` separated).

    Raises ``ServiceSpecError`` for an empty command, a missing executable after ``@`` or a bad prefix.
    """
    commands: list[ExecCommand] = []
    current: list[Word] = []
    for word in [*split_words(value), Word(";")]:
        if word.text != ";" or word.quoted:
            current.append(word)
            continue
        if not current:
            if commands:
                raise ServiceSpecError(f"Empty command in {value!r}")
            continue
        flags, first = _command_prefixes(current[0].text if not current[0].quoted else "")
        words = [first if not current[0].quoted else current[0].text, *(w.text for w in current[1:])]
        if not words[0]:
            words = words[1:]
        if not words or (flags["@"] and len(words) < 2):
            raise ServiceSpecError(f"Empty executable name or zeroeth argument in {value!r}")
        commands.append(ExecCommand(tuple(words), ignore_failure=flags["-"], custom_argv0=flags["@"],
                                    full_privileges=flags["+"] or flags["!"], expand_env=not flags[":"]))
        current = []
    return commands


# ---------------------------------------------------------------------------------------------------
# Environment


def parse_environment(value: str, warnings: list[str] | None = None) -> list[tuple[str, str]]:
    """``Environment=`` value -> assignments in order. Words without a valid ``NAME=`` are ignored
    (with a warning appended to ``warnings``)."""
    out: list[tuple[str, str]] = []
    for word in split_words(value):
        name, sep, val = word.text.partition("=")
        if sep and _ENV_NAME.fullmatch(name):
            out.append((name, val))
        elif warnings is not None:
            warnings.append(f"Invalid environment assignment, ignoring: {word.text}")
    return out


def parse_environment_file(text: str) -> list[tuple[str, str]]:
    """An ``EnvironmentFile=``'s assignments in order.

    ``NAME=VALUE`` lines; blank lines and lines starting with ``#`` or ``;`` are skipped; a backslash at
    the end of an unquoted line continues it; values may mix unquoted text, ``'literal'`` and ``"double"``
    parts (``\\`` escapes the next character outside single quotes); unquoted surrounding whitespace is
    trimmed. Lines without a valid name are ignored.
    """
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        end = text.find("\n", pos)
        end = len(text) if end == -1 else end
        line = text[pos:end].strip()
        if not line or line[0] in "#;" or "=" not in line:
            pos = end + 1
            continue
        name = line.partition("=")[0]
        value, pos = _env_file_value(text, text.index("=", pos) + 1)
        if _ENV_NAME.fullmatch(name.strip()):
            out.append((name.strip(), value))
    return out


def _env_file_value(text: str, pos: int) -> tuple[str, int]:
    """Read one value starting at ``pos``; return it and the position after its line."""
    parts: list[str] = []
    trailing = 0  # unquoted whitespace at the end, trimmed
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    while pos < len(text) and text[pos] != "\n":
        char = text[pos]
        if char in "\"'":
            close = char
            pos += 1
            while pos < len(text) and text[pos] != close:
                if close == '"' and text[pos] == "\\" and pos + 1 < len(text):
                    pos += 1
                    if text[pos] != "\n":
                        parts.append(text[pos])
                else:
                    parts.append(text[pos])
                pos += 1
            pos += 1
            trailing = 0
        elif char == "\\" and pos + 1 < len(text):
            if text[pos + 1] != "\n":
                parts.append(text[pos + 1])
            pos += 2
            trailing = 0
        else:
            parts.append(char)
            trailing = trailing + 1 if char in " \t" else 0
            pos += 1
    value = "".join(parts)
    return (value[:len(value) - trailing] if trailing else value), pos + 1


# ---------------------------------------------------------------------------------------------------
# The spec

#: ``[Service]`` keys this module reads; any other key is ignored with a warning.
_EXEC_KEYS = ("ExecStartPre", "ExecStart", "ExecStartPost", "ExecReload", "ExecStop", "ExecStopPost")
_KNOWN_KEYS = frozenset({
    *_EXEC_KEYS, "Type", "Restart", "RestartSec", "Environment", "EnvironmentFile", "WorkingDirectory",
    "User", "Group", "KillMode", "KillSignal", "SendSIGKILL", "TimeoutSec", "TimeoutStartSec",
    "TimeoutStopSec", "RemainAfterExit", "PIDFile", "NotifyAccess", "SuccessExitStatus", "StartLimitInterval",
    "StartLimitIntervalSec", "StartLimitBurst", "GuessMainPID",
})


@dataclass(frozen=True)
class ServiceSpec:
    """Everything the runtime needs to run one service, with systemd's defaults.

    ``environment`` holds ``Environment=`` assignments in order (later wins); ``environment_files`` are
    ``(path, optional)`` pairs read at each start and overriding ``environment``. ``working_directory``
    is ``None`` for the default (``/``); ``working_directory_optional`` is its ``-`` prefix; ``~`` means
    the user's home. Timeouts are seconds, ``math.inf`` for none.
    """

    name: str
    description: str = ""
    type: ServiceType = ServiceType.SIMPLE
    exec_start_pre: tuple[ExecCommand, ...] = ()
    exec_start: tuple[ExecCommand, ...] = ()
    exec_start_post: tuple[ExecCommand, ...] = ()
    exec_reload: tuple[ExecCommand, ...] = ()
    exec_stop: tuple[ExecCommand, ...] = ()
    exec_stop_post: tuple[ExecCommand, ...] = ()
    restart: RestartPolicy = RestartPolicy.NO
    restart_sec: float = DEFAULT_RESTART_SEC
    environment: tuple[tuple[str, str], ...] = ()
    environment_files: tuple[tuple[str, bool], ...] = ()
    working_directory: str | None = None
    working_directory_optional: bool = False
    user: str | None = None
    group: str | None = None
    kill_mode: KillMode = KillMode.CONTROL_GROUP
    kill_signal: signal.Signals = signal.SIGTERM
    send_sigkill: bool = True
    timeout_start: float = DEFAULT_TIMEOUT
    timeout_stop: float = DEFAULT_TIMEOUT
    remain_after_exit: bool = False
    pid_file: str | None = None
    notify_access: NotifyAccess = NotifyAccess.NONE
    success_exit_status: frozenset[int] = frozenset()
    start_limit_interval: float = DEFAULT_START_LIMIT_INTERVAL
    start_limit_burst: int = DEFAULT_START_LIMIT_BURST
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def from_unit(cls, unit_file: UnitFile, context: SpecifierContext) -> ServiceSpec:
        """Build the spec of the service ``context.name`` from its unit file.

        Raises ``ServiceSpecError`` when systemd would refuse the unit (no ``ExecStart=``, several for a
        non-oneshot service, ``Restart=always``/``on-success`` with ``oneshot``, an unsupported ``Type=``,
        a malformed command line or specifier).
        """
        return _Builder(unit_file, context).build()

    def base_environment(self) -> dict[str, str]:
        """``PATH`` plus ``Environment=`` (later assignments win), before environment files."""
        env = {"PATH": DEFAULT_PATH}
        env.update(self.environment)
        return env


class _Builder:
    """Reads the options of one unit file into ``ServiceSpec`` fields, collecting warnings."""

    def __init__(self, unit_file: UnitFile, context: SpecifierContext) -> None:
        self.unit_file = unit_file
        self.context = context
        self.warnings: list[str] = []

    def values(self, section: str, key: str) -> list[str]:
        return [expand_specifiers(o.value, self.context) for o in self.unit_file.options
                if o.section == section and o.name == key]

    def last(self, key: str, section: str = "Service") -> str | None:
        values = self.values(section, key)
        return values[-1].strip() if values else None

    def parsed(self, key: str, parse: Callable[[str], _T], default: _T, section: str = "Service") -> _T:
        """The last value of ``key`` through ``parse``; an unparsable value is ignored with a warning."""
        raw = self.last(key, section)
        if raw is None or raw == "":
            return default
        try:
            return parse(raw)
        except ValueError:
            self.warnings.append(f"Failed to parse {key}= value, ignoring: {raw}")
            return default

    def commands(self, key: str) -> tuple[ExecCommand, ...]:
        commands: list[ExecCommand] = []
        for value in self.values("Service", key):
            if not value.strip():
                commands = []
                continue
            commands.extend(parse_exec(value))
        return tuple(commands)

    def environment(self) -> tuple[tuple[str, str], ...]:
        assignments: list[tuple[str, str]] = []
        for value in self.values("Service", "Environment"):
            if not value.strip():
                assignments = []
            assignments.extend(parse_environment(value, self.warnings))
        return tuple(assignments)

    def environment_files(self) -> tuple[tuple[str, bool], ...]:
        files: list[tuple[str, bool]] = []
        for value in self.values("Service", "EnvironmentFile"):
            value = value.strip()
            if not value:
                files = []
                continue
            path = value.removeprefix("-")
            if not os.path.isabs(path):
                self.warnings.append(f"Path '{path}' is not absolute, ignoring.")
                continue
            files.append((path, value.startswith("-")))
        return tuple(files)

    def timeouts(self) -> tuple[float, float]:
        both = self.parsed("TimeoutSec", parse_timespan, DEFAULT_TIMEOUT)
        start = self.parsed("TimeoutStartSec", parse_timespan, both)
        stop = self.parsed("TimeoutStopSec", parse_timespan, both)
        return (start or math.inf), (stop or math.inf)

    def success_statuses(self) -> frozenset[int]:
        statuses: set[int] = set()
        for value in self.values("Service", "SuccessExitStatus"):
            for word in value.split():
                if word.isdigit():
                    statuses.add(int(word))
                else:
                    self.warnings.append(f"Only numeric SuccessExitStatus= values are supported, "
                                         f"ignoring: {word}")
        return frozenset(statuses)

    def build(self) -> ServiceSpec:
        unknown = sorted({o.name for o in self.unit_file.options if o.section == "Service"} - _KNOWN_KEYS)
        self.warnings.extend(f"Option {k}= is not supported by the built-in runtime, ignoring."
                             for k in unknown)
        raw_type = self.last("Type") or "simple"
        if raw_type in ("dbus",):
            raise ServiceSpecError(f"Type={raw_type} is not supported by the built-in runtime. Refusing.")
        service_type = self.parsed("Type", ServiceType, ServiceType.SIMPLE)
        exec_start = self.commands("ExecStart")
        exec_stop = self.commands("ExecStop")
        restart = self.parsed("Restart", RestartPolicy, RestartPolicy.NO)
        self.validate(service_type, exec_start, exec_stop, restart)
        workdir = self.last("WorkingDirectory") or None
        timeout_start, timeout_stop = self.timeouts()
        default_access = NotifyAccess.MAIN if service_type is ServiceType.NOTIFY else NotifyAccess.NONE
        interval = self.parsed("StartLimitIntervalSec", parse_timespan, DEFAULT_START_LIMIT_INTERVAL, "Unit")
        interval = self.parsed("StartLimitInterval", parse_timespan, interval)
        burst = self.parsed("StartLimitBurst", int, DEFAULT_START_LIMIT_BURST, "Unit")
        return ServiceSpec(
            name=self.context.name,
            description=self.last("Description", "Unit") or "",
            type=service_type,
            exec_start_pre=self.commands("ExecStartPre"),
            exec_start=exec_start,
            exec_start_post=self.commands("ExecStartPost"),
            exec_reload=self.commands("ExecReload"),
            exec_stop=exec_stop,
            exec_stop_post=self.commands("ExecStopPost"),
            restart=restart,
            restart_sec=self.parsed("RestartSec", parse_timespan, DEFAULT_RESTART_SEC),
            environment=self.environment(),
            environment_files=self.environment_files(),
            working_directory=workdir.removeprefix("-") if workdir else None,
            working_directory_optional=bool(workdir and workdir.startswith("-")),
            user=self.last("User") or None,
            group=self.last("Group") or None,
            kill_mode=self.parsed("KillMode", KillMode, KillMode.CONTROL_GROUP),
            kill_signal=self.parsed("KillSignal", parse_signal, signal.SIGTERM),
            send_sigkill=self.parsed("SendSIGKILL", parse_bool, True),
            timeout_start=timeout_start,
            timeout_stop=timeout_stop,
            remain_after_exit=self.parsed("RemainAfterExit", parse_bool, False),
            pid_file=self.last("PIDFile") or None,
            notify_access=self.parsed("NotifyAccess", NotifyAccess, default_access),
            success_exit_status=self.success_statuses(),
            start_limit_interval=interval,
            start_limit_burst=self.parsed("StartLimitBurst", int, burst),
            warnings=tuple(self.warnings),
        )

    @staticmethod
    def validate(service_type: ServiceType, exec_start: tuple[ExecCommand, ...],
                 exec_stop: tuple[ExecCommand, ...], restart: RestartPolicy) -> None:
        """systemd's refusals (``service_verify``)."""
        if not exec_start and (service_type is not ServiceType.ONESHOT or not exec_stop):
            raise ServiceSpecError("Service has no ExecStart=, ExecStop=, or SuccessAction=. Refusing.")
        if len(exec_start) > 1 and service_type is not ServiceType.ONESHOT:
            raise ServiceSpecError("Service has more than one ExecStart= setting, which is only allowed for "
                                   "Type=oneshot services. Refusing.")
        oneshot = service_type is ServiceType.ONESHOT
        if oneshot and restart in (RestartPolicy.ALWAYS, RestartPolicy.ON_SUCCESS):
            raise ServiceSpecError("Service has Restart= set to either always or on-success, which isn't "
                                   "allowed for Type=oneshot services. Refusing.")


@dataclass
class LoadedService:
    """What an in-process runtime (the built-in supervisor, the docker runtime) keeps of every loaded
    unit: its file, its parsed ``[Service]`` section (None with ``load_error``: ``bad-setting``), its
    systemd states, since when it is in them and the result of its last run. Each runtime extends it."""

    name: str
    unit_file: UnitFile
    spec: ServiceSpec | None
    load_error: str = ""
    active_state: str = "inactive"
    sub_state: str = "dead"
    since: float = 0.0
    result: ServiceResult = ServiceResult.SUCCESS

    @property
    def load_state(self) -> str:
        return "bad-setting" if self.load_error else "loaded"

    def runtime_state(self) -> UnitRuntimeState:
        return UnitRuntimeState(self.load_state, self.active_state, self.sub_state)

    @property
    def label(self) -> str:
        """How messages name the unit: its Description, else its name."""
        return (self.spec.description if self.spec else "") or self.name

"""Command-line flags parsed the way Go's ``flag`` package parses them.

etcd and etcdctl are Go programs, and harnesses written for them rely on the exact
behaviour of Go's parser: ``-x v``, ``-x=v``, ``--x v`` and ``--x=v`` are all the same;
a boolean flag takes a value only through ``=``; parsing stops at the first argument
that is not a flag (or after ``--``); a repeated flag keeps its last value. The error
texts here are the ones Go prints, so callers can show them unchanged.

This module is pure: it never reads ``sys.argv``, ``os.environ`` or writes output.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from fastkv.gostrings import go_quote

#: Spellings Go's ``strconv.ParseBool`` accepts.
TRUE_WORDS = frozenset({"1", "t", "T", "TRUE", "true", "True"})
FALSE_WORDS = frozenset({"0", "f", "F", "FALSE", "false", "False"})

_DURATION = re.compile(r"[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+")
_INTEGER = re.compile(r"[-+]?\d+")

#: A validator returns ``None`` when the text is acceptable, else the error text Go shows.
Validator = Callable[[str], str | None]


class FlagError(Exception):
    """A command line Go's ``flag`` package rejects; ``str(err)`` is Go's message."""


class HelpRequested(FlagError):
    """``-h``/``-help``/``--help`` given and not defined as a flag (Go's ``flag.ErrHelp``)."""

    def __init__(self) -> None:
        super().__init__("flag: help requested")


@dataclass(frozen=True)
class Flag:
    """One flag. ``names[0]`` is the canonical name; the others are aliases.

    ``kind`` is one of ``string``, ``bool``, ``int``, ``uint``, ``duration`` or ``ignored``
    (a flag that exists only to be accepted with a warning; it behaves as a boolean).
    ``choices`` restricts a string flag's values (Go's error text: ``invalid value``).
    """

    names: tuple[str, ...]
    kind: str = "string"
    default: str = ""
    usage: str = ""
    choices: tuple[str, ...] = ()
    validate: Validator | None = None

    @property
    def name(self) -> str:
        return self.names[0]

    @property
    def is_bool(self) -> bool:
        return self.kind in ("bool", "ignored")

    def check(self, text: str) -> str | None:
        """Why ``text`` is not a valid value for this flag (Go's wording), or ``None``."""
        if self.kind == "bool":
            return None if text in TRUE_WORDS or text in FALSE_WORDS else "parse error"
        if self.kind == "int" and not _INTEGER.fullmatch(text):
            return "parse error"
        if self.kind == "uint" and not text.lstrip("+").isdigit():
            return "parse error"
        if self.kind == "duration" and text != "0" and not _DURATION.fullmatch(text):
            return "parse error"
        if self.choices and text not in self.choices:
            return "invalid value"
        if self.validate is not None:
            return self.validate(text)
        return None


def parse_bool(text: str) -> bool:
    """Go's ``strconv.ParseBool`` for a value already known to be valid."""
    return text in TRUE_WORDS


@dataclass
class Parsed:
    """The outcome of :meth:`FlagSet.parse`.

    ``values`` holds the value of every flag given (canonical name -> last value),
    ``given`` the canonical names in the order first given, ``args`` what follows the
    flags, ``ignored`` the spellings of ``ignored`` flags met (for warnings).
    """

    values: dict[str, str] = field(default_factory=dict)
    given: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def record(self, name: str, value: str) -> None:
        if name not in self.values:
            self.given.append(name)
        self.values[name] = value


class FlagSet:
    """A set of :class:`Flag` with Go's parsing rules."""

    def __init__(self, flags: Iterable[Flag]) -> None:
        self.flags: tuple[Flag, ...] = tuple(flags)
        self._by_name: dict[str, Flag] = {n: f for f in self.flags for n in f.names}

    def lookup(self, name: str) -> Flag | None:
        return self._by_name.get(name)

    def default(self, name: str) -> str:
        flag = self._by_name[name]
        return flag.default

    def parse(self, argv: Sequence[str]) -> Parsed:
        """Parse ``argv`` (without the program name); raises :class:`FlagError`."""
        parsed = Parsed()
        i = 0
        while i < len(argv):
            arg = argv[i]
            if len(arg) < 2 or arg[0] != "-":
                break
            if arg == "--":
                i += 1
                break
            i += 1
            body = arg[2:] if arg[1] == "-" else arg[1:]
            if not body or body[0] in "-=":
                raise FlagError(f"bad flag syntax: {arg}")
            name, has_value, value = body.partition("=")
            flag = self._by_name.get(name)
            if flag is None:
                if name in ("help", "h"):
                    raise HelpRequested()
                raise FlagError(f"flag provided but not defined: -{name}")
            if flag.is_bool:
                if not has_value:
                    value = "true"
            elif not has_value:
                if i >= len(argv):
                    raise FlagError(f"flag needs an argument: -{name}")
                value = argv[i]
                i += 1
            if flag.kind == "ignored":
                parsed.ignored.append(name)
                continue
            problem = flag.check(value)
            if problem is not None:
                if flag.kind == "bool":
                    raise FlagError(f"invalid boolean value {go_quote(value)} for -{name}: {problem}")
                raise FlagError(f"invalid value {go_quote(value)} for flag -{name}: {problem}")
            parsed.record(flag.name, value)
        parsed.args = list(argv[i:])
        return parsed

    def is_flag_word(self, arg: str) -> bool:
        """Whether ``arg`` names one of these flags (``-x``, ``--x``, ``--x=v``)."""
        if arg in ("-", "--") or not arg.startswith("-"):
            return False
        body = arg[2:] if arg.startswith("--") else arg[1:]
        return body.split("=", 1)[0] in self._by_name

    def reorder(self, args: Sequence[str]) -> list[str]:
        """Move known flags (and the word after each) ahead of the other arguments.

        This is what etcdctl's command-line library does before parsing a command's
        flags, so ``set foo bar --ttl 5`` works while an unknown ``-x`` after the key
        stays an argument; everything after ``--`` is left alone.
        """
        moved: list[str] = []
        rest: list[str] = []
        may_be_value = False
        for i, arg in enumerate(args):
            if may_be_value and not self.is_flag_word(arg):
                may_be_value = False
                moved.append(arg)
            elif arg == "--":
                rest = ["--", *rest, *args[i + 1 :]]
                break
            elif self.is_flag_word(arg):
                moved.append(arg)
                may_be_value = "=" not in arg
            else:
                rest.append(arg)
        return moved + rest


def env_key(prefix: str, name: str) -> str:
    """The environment variable for a flag: ``ETCD`` + ``initial-cluster`` -> ``ETCD_INITIAL_CLUSTER``."""
    return f"{prefix}_{name.upper().replace('-', '_')}"


@dataclass
class EnvOutcome:
    """Values taken from the environment and what to say about the rest."""

    values: dict[str, str] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


def from_env(
    flagset: FlagSet, parsed: Parsed, environ: Mapping[str, str], prefix: str, skip: Iterable[str] = ()
) -> EnvOutcome:
    """Apply ``PREFIX_*`` variables to the flags not given on the command line, as etcd does.

    A variable whose flag was also given on the command line is a conflict; a
    ``PREFIX_*`` variable that matches no flag is unknown. Raises :class:`FlagError`
    (``invalid value "abc" for ETCD_SNAPSHOT_COUNT: parse error``) for a bad value.
    Names in ``skip`` are neither used nor reported.
    """
    outcome = EnvOutcome()
    used: set[str] = set(skip)
    shadowed: set[str] = set()
    for flag in flagset.flags:
        if flag.kind == "ignored":
            continue
        key = env_key(prefix, flag.name)
        if flag.name in parsed.values:
            shadowed.add(key)
            continue
        value = environ.get(key, "")
        if not value:
            continue
        problem = flag.check(value)
        if problem is not None:
            raise FlagError(f"invalid value {go_quote(value)} for {key}: {problem}")
        used.add(key)
        outcome.values[flag.name] = value
    for key, value in environ.items():
        if key in used:
            continue
        if key in shadowed:
            outcome.conflicts.append(key)
        elif key.startswith(prefix + "_"):
            outcome.unknown.append(f"{key}={value}")
    return outcome

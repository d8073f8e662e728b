"""Unit files: parsing, re-serialization, hashing, names and the ``[X-Fleet]`` requirements.

Everything here reproduces fleet (and the go-systemd unit parser it vendors) byte for byte, because
the serialized text is what gets hashed, stored in etcd under ``unit/<sha1>`` and shown by
``fleetctl cat``:

* ``deserialize`` follows go-systemd's lexer: ``[Section]`` headers, ``#``/``;`` comment lines,
  ``Name=Value`` with both sides trimmed, a value line ending in ``\\`` continued on the next line
  keeping the backslash and a newline, options in file order, duplicates kept.
* ``serialize`` groups options by section in order of first appearance: ``[S]\\nName=Value\\n...``
  with one blank line between sections. Comments and blank lines are gone.
* The unit hash is SHA-1 of the serialized text (spec 2.3), never of the raw file.

Error messages are fleet's own, so API responses and fleetctl output read the same.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

# ---------------------------------------------------------------------------------------------------
# Go formatting (fleet's messages use %q)


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
               "\\": "\\\\"}


def _go_escape(text: str, quote: str) -> str:
    out = []
    for char in text:
        if char == quote:
            out.append("\\" + char)
        elif char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif char.isprintable():
            out.append(char)
        elif ord(char) < 0x80:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return quote + "".join(out) + quote


def go_quote(text: str) -> str:
    """Return ``text`` formatted as Go's ``%q`` does for a string: ``"a\\"b"``."""
    return _go_escape(text, '"')


def go_quote_rune(char: str) -> str:
    """Return one character formatted as Go's ``%q`` does for a rune: ``'x'``."""
    return _go_escape(char, "'")


def glob_match(pattern: str, name: str) -> bool:
    """Match ``name`` against a Go ``path.Match`` glob: ``*`` and ``?`` never match ``/``,
    ``[...]``/``[^...]`` classes, ``\\`` escapes the next character.

    A malformed pattern matches nothing, as fleet ignores ``path.Match`` errors.
    """
    try:
        return re.fullmatch(_glob_regex(pattern), name, re.DOTALL) is not None
    except re.error:
        return False


def _glob_regex(pattern: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            if i + 1 == len(pattern):
                raise re.error("trailing backslash")
            out.append(re.escape(pattern[i + 1]))
            i += 2
        elif char == "[":
            end = pattern.find("]", i + 2)
            if end == -1:
                raise re.error("unterminated class")
            body = pattern[i + 1:end]
            negate = body.startswith("^")
            body = body.removeprefix("^")
            if not body:
                raise re.error("empty class")
            out.append("[" + ("^/" if negate else "") + body.replace("[", "\\[") + "]")
            i = end + 1
        else:
            out.append({"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char)))
            i += 1
    return "".join(out)


# ---------------------------------------------------------------------------------------------------
# Options, parsing and serialization

#: go-systemd's SYSTEMD_LINE_MAX: longer lines are rejected when a unit is validated.
LINE_MAX = 2048


class UnitParseError(ValueError):
    """The unit text cannot be parsed; ``str()`` is go-systemd's message."""


@dataclass(frozen=True, slots=True)
class UnitOption:
    """One ``Name=Value`` line of a unit file, as in go-systemd and the API's ``UnitOption``."""

    section: str
    name: str
    value: str

    def to_api(self) -> dict[str, str]:
        """The API's JSON shape: ``{"name","section","value"}`` (alphabetical keys)."""
        return {"name": self.name, "section": self.section, "value": self.value}

    @classmethod
    def from_api(cls, obj: Mapping[str, object]) -> UnitOption:
        """Build from the API's JSON shape; missing fields are empty strings, as Go decodes them."""
        return cls(section=str(obj.get("section") or ""), name=str(obj.get("name") or ""),
                   value=str(obj.get("value") or ""))


class _Lexer:
    """go-systemd's unit lexer over a string; consumes the text from left to right."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.options: list[UnitOption] = []

    def read_char(self) -> str | None:
        if self.pos >= len(self.text):
            return None
        char = self.text[self.pos]
        self.pos += 1
        return char

    def to_eol(self) -> tuple[str, bool]:
        """Read up to and including the next newline; return the line without ``\\r\\n`` and an EOF flag."""
        end = self.text.find("\n", self.pos)
        if end == -1:
            line, self.pos, eof = self.text[self.pos:], len(self.text), True
        else:
            line, self.pos, eof = self.text[self.pos:end + 1], end + 1, False
        line = line.removesuffix("\n").removesuffix("\r")
        return line, eof

    def skip_comment(self) -> None:
        while True:
            line, eof = self.to_eol()
            if not line.rstrip(" ").endswith("\\") or eof:
                return

    def run(self) -> list[UnitOption]:
        section = self.preamble()
        while section is not None:
            section = self.section_body(section)
        return self.options

    def preamble(self) -> str | None:
        """Skip everything before the first ``[``; return the first section name or None at EOF."""
        while True:
            char = self.read_char()
            if char is None:
                return None
            if char == "[":
                return self.section_name()
            if char in "#;":
                self.skip_comment()

    def section_name(self) -> str:
        end = self.text.find("]", self.pos)
        if end == -1:
            raise UnitParseError("unable to find end of section")
        name, self.pos = self.text[self.pos:end], end + 1
        garbage, _ = self.to_eol()
        garbage = garbage.strip()
        if garbage:
            raw = " ".join(str(b) for b in garbage.encode())
            raise UnitParseError(f"found garbage after section name : [{raw}]")
        return name

    def section_body(self, section: str) -> str | None:
        """Lex options of ``section``; return the next section's name, or None at EOF."""
        while True:
            char = self.read_char()
            if char is None:
                return None
            if char.isspace():
                continue
            if char == "[":
                return self.section_name()
            if char in "#;":
                self.skip_comment()
                continue
            self.pos -= 1
            name = self.option_name()
            self.options.append(UnitOption(section, name, self.option_value()))

    def option_name(self) -> str:
        start = self.pos
        while True:
            char = self.read_char()
            if char is None:
                raise UnitParseError("EOF")
            if char in "\r\n":
                raise UnitParseError("unexpected newline encountered while parsing option name")
            if char == "=":
                return self.text[start:self.pos - 1].strip()

    def option_value(self) -> str:
        partial: list[str] = []
        while True:
            line, eof = self.to_eol()
            if not line.strip():
                break
            partial.append(line)
            if not line.endswith("\\"):
                break
            if not eof:
                partial.append("\n")
        value = "".join(partial)
        if value.endswith("\n"):
            return value.strip() + "\n"
        return value.strip()


def deserialize(text: str) -> tuple[UnitOption, ...]:
    """Parse unit file text into options, exactly as go-systemd's ``unit.Deserialize``.

    Raises ``UnitParseError`` with go-systemd's message for an unterminated section header,
    garbage after a header, an option name cut by a newline or EOF, or a line longer than
    ``LINE_MAX`` bytes (``line too long (max 2048 bytes)``).
    """
    for line in text.split("\n"):
        if len(line.removesuffix("\r").encode()) > LINE_MAX:
            raise UnitParseError(f"line too long (max {LINE_MAX} bytes)")
    return tuple(_Lexer(text).run())


def serialize(options: Iterable[UnitOption]) -> str:
    """Serialize options as go-systemd's ``unit.Serialize``: grouped by section, in first-seen order.

    Each section is ``[Name]\\n`` followed by ``Name=Value\\n`` per option; sections are separated by
    one blank line. No options gives the empty string.
    """
    groups: dict[str, list[UnitOption]] = {}
    for option in options:
        groups.setdefault(option.section, []).append(option)
    blocks = ["[" + section + "]\n" + "".join(f"{o.name}={o.value}\n" for o in opts)
              for section, opts in groups.items()]
    return "\n".join(blocks)


# ---------------------------------------------------------------------------------------------------
# Hash


@dataclass(frozen=True, slots=True)
class UnitHash:
    """SHA-1 of a unit's serialized text (fleet's ``unit.Hash``, a Go ``[20]byte``)."""

    digest: bytes

    def __post_init__(self) -> None:
        if len(self.digest) != 20:
            raise ValueError(f"size of key {self.digest!r} ({len(self.digest)}) differs from SHA1 size (20)")

    @classmethod
    def of_text(cls, text: str) -> UnitHash:
        """Hash already-serialized unit text."""
        return cls(hashlib.sha1(text.encode()).digest())

    @classmethod
    def from_hex(cls, text: str) -> UnitHash:
        """Parse 40 hex digits; raises ``ValueError`` otherwise."""
        return cls(bytes.fromhex(text))

    @classmethod
    def from_ints(cls, values: Sequence[int]) -> UnitHash:
        """Parse the JSON form Go gives a ``[20]byte``: a list of 20 ints in 0..255."""
        return cls(bytes(values))

    def to_ints(self) -> list[int]:
        """The JSON form Go gives a ``[20]byte`` (``job/<name>/object``'s ``UnitHash``)."""
        return list(self.digest)

    @property
    def hex(self) -> str:
        """40 lowercase hex digits."""
        return self.digest.hex()

    @property
    def short(self) -> str:
        """The 7-character form fleetctl lists."""
        return self.hex[:7]

    def is_empty(self) -> bool:
        """True for the all-zero hash Go uses as "no hash"."""
        return not any(self.digest)

    def __str__(self) -> str:
        return self.hex


EMPTY_HASH = UnitHash(bytes(20))


# ---------------------------------------------------------------------------------------------------
# Unit files


def parse_multivalue(line: str) -> list[str]:
    """Split an ``[X-Fleet]`` value of the form ``"a=b" "c=d"`` into its quoted parts.

    Only a value that both starts and ends with ``"`` is split: on spaces outside quotes, with the
    quotes dropped. Anything else is the sole value.
    """
    if not (line.startswith('"') and line.endswith('"')):
        return [line]
    values: list[str] = []
    current: list[str] = []
    quoted = False
    for char in line:
        if char == '"':
            quoted = not quoted
        elif char == " " and not quoted:
            values.append("".join(current))
            current = []
        else:
            current.append(char)
    values.append("".join(current))
    return values


@dataclass(frozen=True)
class UnitFile:
    """A parsed unit file: its options in file order. It has no name; units refer to it by hash."""

    options: tuple[UnitOption, ...] = ()

    @classmethod
    def from_text(cls, text: str) -> UnitFile:
        """Parse raw unit text (``UnitParseError`` on failure)."""
        return cls(deserialize(text))

    @classmethod
    def from_api(cls, options: Iterable[Mapping[str, object]]) -> UnitFile:
        """Build from the API's list of ``UnitOption`` objects."""
        return cls(tuple(UnitOption.from_api(o) for o in options))

    @cached_property
    def text(self) -> str:
        """The serialized form: what is hashed, stored and printed by ``fleetctl cat``."""
        return serialize(self.options)

    @cached_property
    def hash(self) -> UnitHash:
        """SHA-1 of ``text``."""
        return UnitHash.of_text(self.text)

    @cached_property
    def contents(self) -> dict[str, dict[str, list[str]]]:
        """section -> option name -> values in order.

        ``[X-Fleet]`` values are split by ``parse_multivalue``; other sections keep one value per line.
        """
        contents: dict[str, dict[str, list[str]]] = {}
        for option in self.options:
            values = parse_multivalue(option.value) if option.section == "X-Fleet" else [option.value]
            contents.setdefault(option.section, {}).setdefault(option.name, []).extend(values)
        return contents

    @property
    def description(self) -> str:
        """The first ``[Unit] Description``, or ``""``."""
        values = self.contents.get("Unit", {}).get("Description", [])
        return values[0] if values else ""

    @property
    def has_install_section(self) -> bool:
        """True when an ``[Install]`` section exists: the agent then enables the unit after linking."""
        return "Install" in self.contents

    def to_api(self) -> list[dict[str, str]]:
        """The API's ``options`` list."""
        return [o.to_api() for o in self.options]


# ---------------------------------------------------------------------------------------------------
# Names

#: Unit types the API accepts.
VALID_UNIT_TYPES = frozenset({"automount", "busname", "device", "mount", "path", "scope", "service", "slice",
                              "snapshot", "socket", "swap", "target", "timer"})
#: Unit types that may be templates or instances (contain ``@``).
TEMPLATE_UNIT_TYPES = frozenset({"path", "service", "socket", "target", "timer"})
#: Unit types the agent manages; other valid types pass the API but are ignored by the agent.
RECOGNIZED_UNIT_TYPES = ("service", "socket", "timer", "path", "device", "mount", "automount")
UNIT_NAME_MAX = 256
_VALID_NAME_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ:-_.\\@")


class UnitNameError(ValueError):
    """A unit name fails validation; ``str()`` is fleet's message (API 400 body)."""


def validate_name(name: str) -> None:
    """Raise ``UnitNameError`` with fleet's message for the first problem with ``name`` (spec 2.1)."""
    if not name:
        raise UnitNameError("unit name cannot be empty")
    if len(name.encode()) > UNIT_NAME_MAX:
        raise UnitNameError(f"unit name exceeds maximum length ({UNIT_NAME_MAX})")
    dot = name.rfind(".")
    if dot == -1:
        raise UnitNameError('unit name must contain "."')
    if dot == len(name) - 1:
        raise UnitNameError('unit name cannot end in "."')
    suffix = name[dot + 1:]
    if suffix not in VALID_UNIT_TYPES:
        raise UnitNameError(f"invalid unit type: {go_quote(suffix)}")
    for char in name[:dot]:
        if char not in _VALID_NAME_CHARS:
            raise UnitNameError(f"invalid character {go_quote_rune(char)} in unit name")
    if name.startswith("@"):
        raise UnitNameError('unit name cannot start in "@"')
    if "@" in name and suffix not in TEMPLATE_UNIT_TYPES:
        raise UnitNameError(f"invalid unit type for template or instance unit: {go_quote(suffix)}")


def recognized_unit_type(name: str) -> bool:
    """True when the agent manages units of this name's type (``unit.RecognizedUnitType``)."""
    return any(name.endswith("." + t) for t in RECOGNIZED_UNIT_TYPES)


def unit_name_from_path(arg: str) -> str:
    """The unit name fleetctl derives from a command-line argument.

    ``basename(arg)``, with ``.service`` appended unless it already ends in a recognized type
    (so ``foo`` -> ``foo.service`` but also ``foo.target`` -> ``foo.target.service``).
    """
    name = os.path.basename(arg)
    return name if recognized_unit_type(name) else name + ".service"


@dataclass(frozen=True, slots=True)
class UnitNameInfo:
    """What a unit's name says about it (fleet's ``unit.UnitNameInfo``).

    ``foo@bar.service``: full_name ``foo@bar.service``, name ``foo@bar``, prefix ``foo``,
    template ``foo@.service``, instance ``bar``. Suffix after the last ``.``; prefix up to the first ``@``.
    """

    full_name: str
    name: str
    prefix: str
    template: str = ""
    instance: str = ""

    @classmethod
    def parse(cls, full_name: str) -> UnitNameInfo | None:
        """Parse a unit name; None when it has no ``.``."""
        dot = full_name.rfind(".")
        if dot == -1:
            return None
        name, suffix = full_name[:dot], full_name[dot:]
        at = name.find("@")
        if at == -1:
            return cls(full_name, name, name)
        return cls(full_name, name, name[:at], f"{name[:at]}@{suffix}", name[at + 1:])

    @property
    def is_instance(self) -> bool:
        """``foo@bar.service``."""
        return bool(self.instance)

    @property
    def is_template(self) -> bool:
        """``foo@.service``."""
        return bool(self.template) and not self.is_instance


def unit_printf(text: str, info: UnitNameInfo) -> str:
    """Expand ``%n`` (full name), ``%N`` (name without suffix), ``%p`` (prefix), ``%i`` (instance).

    Replacements are applied one after another in that order, like fleet's ``unitPrintf``; no unescaping.
    """
    specifiers = (("%n", info.full_name), ("%N", info.name), ("%p", info.prefix), ("%i", info.instance))
    for spec, value in specifiers:
        text = text.replace(spec, value)
    return text


# ---------------------------------------------------------------------------------------------------
# [X-Fleet] requirements

MACHINE_ID = "MachineID"
MACHINE_OF = "MachineOf"
MACHINE_METADATA = "MachineMetadata"
CONFLICTS = "Conflicts"
GLOBAL = "Global"
REPLACES = "Replaces"
#: Every key fleet understands in ``[X-Fleet]``, including the deprecated spellings.
VALID_REQUIREMENTS = frozenset({
    MACHINE_ID, "X-ConditionMachineID", "X-ConditionMachineBootID",
    MACHINE_OF, "X-ConditionMachineOf",
    CONFLICTS, "X-Conflicts",
    MACHINE_METADATA, "X-ConditionMachineMetadata",
    GLOBAL, REPLACES,
})
_TRUTHY = frozenset({"true", "yes", "1", "on", "t"})


def is_truthy(value: str) -> bool:
    """fleet's truthiness: ``true yes 1 on t``, case-insensitive."""
    return value.lower() in _TRUTHY


@dataclass(frozen=True)
class Requirements:
    """The scheduling requirements of one named unit, specifiers expanded (spec 2.2).

    ``machine_id`` is the required machine (full or 8-character ID) or None; ``peers`` (MachineOf),
    ``conflicts`` and ``replaces`` are globs/names in file order (deprecated spellings first);
    Conflicts values are split on whitespace (``Conflicts=a.service b.service`` is two globs).
    ``metadata`` maps each key to the set of accepted values (OR within a key, AND across keys);
    ``unknown_keys`` lists unrecognized ``[X-Fleet]`` keys in file order (warned about, else ignored).
    """

    machine_id: str | None = None
    peers: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    replaces: tuple[str, ...] = ()
    metadata: Mapping[str, frozenset[str]] = field(default_factory=dict)
    is_global: bool = False
    unknown_keys: tuple[str, ...] = ()

    @classmethod
    def of(cls, unit_file: UnitFile, name: str | None = None) -> Requirements:
        """Read requirements from ``unit_file``.

        Specifiers are expanded when ``name`` parses as a unit name (has a ``.``); fleet validates
        options without a name, so nothing is expanded then.
        """
        info = UnitNameInfo.parse(name) if name else None
        raw = unit_file.contents.get("X-Fleet", {})
        values: dict[str, list[str]] = {
            key: [unit_printf(v, info) for v in vals] if info else list(vals) for key, vals in raw.items()}

        def get(*keys: str) -> list[str]:
            return [v for key in keys for v in values.get(key, [])]

        machine_ids = (get(MACHINE_ID) or get("X-ConditionMachineID") or get("X-ConditionMachineBootID"))
        metadata: dict[str, set[str]] = {}
        for pair in get("X-ConditionMachineMetadata", MACHINE_METADATA):
            parts = pair.split("=")
            if len(parts) == 2 and parts[0] and parts[1]:
                metadata.setdefault(parts[0], set()).add(parts[1])
        globals_ = values.get(GLOBAL, [])
        return cls(
            machine_id=machine_ids[0] if machine_ids else None,
            peers=tuple(get("X-ConditionMachineOf", MACHINE_OF)),
            conflicts=tuple(c for value in get("X-Conflicts", CONFLICTS) for c in value.split()),
            replaces=tuple(get(REPLACES)),
            metadata={k: frozenset(v) for k, v in metadata.items()},
            is_global=bool(globals_) and is_truthy(globals_[-1]),
            unknown_keys=tuple(k for k in raw if k not in VALID_REQUIREMENTS),
        )

    def conflicts_with(self, other_name: str) -> str | None:
        """The first of this unit's Conflicts globs matching ``other_name``, or None."""
        return next((c for c in self.conflicts if glob_match(c, other_name)), None)

    def replaces_unit(self, other_name: str) -> str | None:
        """The first of this unit's Replaces globs matching ``other_name``, or None."""
        return next((r for r in self.replaces if glob_match(r, other_name)), None)


class UnitOptionsError(ValueError):
    """A unit's options are invalid; ``str()`` is fleet's message (API 400 body)."""


def unrecognized_requirements_warnings(name: str, unit_file: UnitFile) -> list[str]:
    """fleetctl's warnings for unknown ``[X-Fleet]`` keys (the server ignores them)."""
    return [f"Unit {name}: unrecognized requirement in [X-Fleet] section: {go_quote(key)}"
            for key in Requirements.of(unit_file, name).unknown_keys]


def validate_options(unit_file: UnitFile) -> None:
    """Raise ``UnitOptionsError`` with fleet's message when the options cannot be accepted (spec 2.2).

    Checked in fleet's order: the serialized text must parse again (e.g. no line over 2048 bytes);
    no MachineOf peer may match a Conflicts or Replaces glob; then the option combinations
    MachineID + Peers/Conflicts/Global/Replaces, Global + Peers/Replaces, Conflicts + Replaces.
    Specifiers are not expanded here (fleet validates without a unit name).
    """
    try:
        deserialize(unit_file.text)
    except UnitParseError as err:
        raise UnitOptionsError(str(err)) from None
    req = Requirements.of(unit_file)
    for peer in dict.fromkeys(req.peers):
        for kind, globs in (("conflict", req.conflicts), ("replace", req.replaces)):
            for pattern in dict.fromkeys(globs):
                if glob_match(pattern, peer):
                    raise UnitOptionsError(f"unresolvable requirements: peer {go_quote(peer)} "
                                           f"matches {kind} {go_quote(pattern)}")
    has = {"Peers": bool(req.peers), "Conflicts": bool(req.conflicts), "Global": req.is_global,
           "Replaces": bool(req.replaces)}
    combos = [(req.machine_id is not None, "MachineID", ("Peers", "Conflicts", "Global", "Replaces")),
              (req.is_global, "Global", ("Peers", "Replaces")),
              (bool(req.conflicts), "Conflicts", ("Replaces",))]
    for present, option, others in combos:
        for other in others:
            if present and has[other]:
                raise UnitOptionsError(f"{option} cannot be used with {other}")

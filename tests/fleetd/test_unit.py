"""Unit files: go-systemd parsing and serialization, the hash, names, specifiers and [X-Fleet] options."""

import hashlib

import pytest

from fleetd.unit import (
    LINE_MAX,
    Requirements,
    UnitFile,
    UnitHash,
    UnitNameError,
    UnitNameInfo,
    UnitOption,
    UnitOptionsError,
    UnitParseError,
    deserialize,
    glob_match,
    go_quote,
    go_quote_rune,
    parse_multivalue,
    recognized_unit_type,
    serialize,
    unit_name_from_path,
    unit_printf,
    unrecognized_requirements_warnings,
    validate_name,
    validate_options,
)

HELLO = '[Service]\nExecStart=/bin/bash -c "while true; do echo Hello, World!; sleep 1; done"\n'


def opts(*triples: tuple[str, str, str]) -> tuple[UnitOption, ...]:
    return tuple(UnitOption(*t) for t in triples)


# --- hash ------------------------------------------------------------------------------------------

def test_hello_service_hash_is_the_one_fleet_reports() -> None:
    unit = UnitFile.from_text(HELLO)
    assert unit.hash.hex == "3750b3e9f3962a56c7582929426e9abb012754cf"
    assert unit.hash.short == "3750b3e"


def test_hash_is_sha1_of_serialized_text_not_of_raw_file() -> None:
    raw = "# a comment\n\n[Service]\n  ExecStart = /bin/true  \n\n\n[Unit]\nDescription=x\n"
    unit = UnitFile.from_text(raw)
    assert unit.text == "[Service]\nExecStart=/bin/true\n\n[Unit]\nDescription=x\n"
    assert unit.hash.hex == hashlib.sha1(unit.text.encode()).hexdigest()
    assert unit.hash != UnitHash.of_text(raw)


def test_hash_json_int_form_round_trips() -> None:
    unit_hash = UnitFile.from_text(HELLO).hash
    ints = unit_hash.to_ints()
    assert len(ints) == 20 and ints[:2] == [0x37, 0x50]
    assert UnitHash.from_ints(ints) == unit_hash
    assert UnitHash.from_hex(unit_hash.hex) == unit_hash
    assert str(unit_hash) == unit_hash.hex


def test_hash_of_wrong_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="differs from SHA1 size"):
        UnitHash.from_hex("abcd")


def test_instance_carries_template_text_and_hash() -> None:
    template = UnitFile.from_text("[Service]\nExecStart=/bin/echo %i\n")
    assert UnitFile(template.options).hash == template.hash
    assert "%i" in template.text


# --- deserialize -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("", ()),
    ("[Unit]\nDescription=Foo\n", opts(("Unit", "Description", "Foo"))),
    ("[Unit]\nDescription = Foo  \n", opts(("Unit", "Description", "Foo"))),
    ("[Unit]\nDescription=Foo", opts(("Unit", "Description", "Foo"))),
    ("[Unit]\r\nDescription=Foo\r\n", opts(("Unit", "Description", "Foo"))),
    ("[Unit]\nName=\n", opts(("Unit", "Name", ""))),
    ("[Unit]\nA=1\nA=2\n", opts(("Unit", "A", "1"), ("Unit", "A", "2"))),
    ("[Unit]\nA=x=y\n", opts(("Unit", "A", "x=y"))),
    # comments and blank lines vanish
    ("# header\n; other\n[Unit]\n\n# c\nA=1\n; c\n\nB=2\n", opts(("Unit", "A", "1"), ("Unit", "B", "2"))),
    # a comment ending in a backslash swallows the next line
    ("[Unit]\n# comment \\\nA=1\nB=2\n", opts(("Unit", "B", "2"))),
    # continuation keeps the backslash and a newline
    ("[Service]\nExecStart=/bin/echo \\\n  foo\n", opts(("Service", "ExecStart", "/bin/echo \\\n  foo"))),
    ("[Service]\nExecStart=a \\\nb \\\nc\n", opts(("Service", "ExecStart", "a \\\nb \\\nc"))),
    # a blank line ends a continued value, which then keeps its trailing newline
    ("[Service]\nExecStart=a \\\n\nB=1\n", opts(("Service", "ExecStart", "a \\\n"), ("Service", "B", "1"))),
    # continuation at end of file: no newline appended
    ("[Service]\nExecStart=a \\", opts(("Service", "ExecStart", "a \\"))),
    # junk before the first section is ignored
    ("junk\n[Unit]\nA=1\n", opts(("Unit", "A", "1"))),
    ("[X-Fleet]\n[Unit]\nA=1\n", opts(("Unit", "A", "1"))),
    ("[Unit]\nA=1\n[Service]\nB=2\n[Unit]\nC=3\n",
     opts(("Unit", "A", "1"), ("Service", "B", "2"), ("Unit", "C", "3"))),
])
def test_deserialize(text: str, expected: tuple[UnitOption, ...]) -> None:
    assert deserialize(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("[Unit\nA=1\n", "unable to find end of section"),
    ("[Unit] x\nA=1\n", "found garbage after section name : [120]"),
    ("[Unit]\nFoo\nBar=1\n", "unexpected newline encountered while parsing option name"),
    ("[Unit]\nFoo", "EOF"),
    ("[Unit]\nA=" + "x" * LINE_MAX + "\n", "line too long (max 2048 bytes)"),
])
def test_deserialize_errors(text: str, message: str) -> None:
    with pytest.raises(UnitParseError) as err:
        deserialize(text)
    assert str(err.value) == message


def test_line_of_exactly_line_max_is_accepted() -> None:
    line = "A=" + "x" * (LINE_MAX - 2)
    assert deserialize("[Unit]\n" + line + "\n")[0].value == "x" * (LINE_MAX - 2)


# --- serialize ----------------------------------------------------------------------------------------

def test_serialize_groups_sections_in_first_seen_order() -> None:
    options = opts(("Unit", "A", "1"), ("Service", "B", "2"), ("Unit", "C", "3"),
                   ("X-Fleet", "Global", "true"))
    assert serialize(options) == "[Unit]\nA=1\nC=3\n\n[Service]\nB=2\n\n[X-Fleet]\nGlobal=true\n"


def test_serialize_of_nothing_is_empty() -> None:
    assert serialize(()) == ""
    assert UnitFile().hash.hex == hashlib.sha1(b"").hexdigest()


def test_serialized_text_parses_back_to_the_same_options() -> None:
    unit = UnitFile.from_text("[Unit]\nDescription=d\n[Service]\nExecStart=a \\\n b\n[Install]\nWantedBy=x\n")
    assert deserialize(unit.text) == unit.options
    assert UnitFile.from_text(unit.text).hash == unit.hash


def test_api_options_round_trip() -> None:
    unit = UnitFile.from_text("[Unit]\nDescription=d\n[X-Fleet]\nGlobal=true\n")
    api = unit.to_api()
    assert api[0] == {"name": "Description", "section": "Unit", "value": "d"}
    assert UnitFile.from_api(api) == unit


def test_description_and_install_section() -> None:
    unit = UnitFile.from_text("[Unit]\nDescription=first\nDescription=second\n"
                              "[Install]\nWantedBy=hello.service\n")
    assert unit.description == "first"
    assert unit.has_install_section
    assert UnitFile.from_text(HELLO).description == ""
    assert not UnitFile.from_text(HELLO).has_install_section


# --- names -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "message"), [
    ("", "unit name cannot be empty"),
    ("a" * 250 + ".service", "unit name exceeds maximum length (256)"),
    ("foo", 'unit name must contain "."'),
    ("foo.", 'unit name cannot end in "."'),
    ("bad.foo", 'invalid unit type: "foo"'),
    ("foo.Service", 'invalid unit type: "Service"'),
    ("foo bar.service", "invalid character ' ' in unit name"),
    ("foo/bar.service", "invalid character '/' in unit name"),
    ("foo\tbar.service", "invalid character '\\t' in unit name"),
    ("@foo.service", 'unit name cannot start in "@"'),
    ("foo@bar.mount", 'invalid unit type for template or instance unit: "mount"'),
    ("foo@.device", 'invalid unit type for template or instance unit: "device"'),
])
def test_invalid_names(name: str, message: str) -> None:
    with pytest.raises(UnitNameError) as err:
        validate_name(name)
    assert str(err.value) == message


@pytest.mark.parametrize("name", [
    "hello.service", "foo@.service", "foo@bar.service", "a:b_c-d.e\\x2d.socket", "foo.target.service",
    "x.automount", "x.busname", "x.scope", "x.slice", "x.snapshot", "x.swap", "x.mount", "x.device",
    "x@y.path", "x@y.timer", "x@y.target", "x@y.socket", "a" * 248 + ".service",
])
def test_valid_names(name: str) -> None:
    validate_name(name)


@pytest.mark.parametrize(("name", "full", "base", "prefix", "template", "instance", "is_template",
                          "is_instance"), [
    ("foo.service", "foo.service", "foo", "foo", "", "", False, False),
    ("foo@.service", "foo@.service", "foo@", "foo", "foo@.service", "", True, False),
    ("foo@bar.service", "foo@bar.service", "foo@bar", "foo", "foo@.service", "bar", False, True),
    ("foo@bar@baz.socket", "foo@bar@baz.socket", "foo@bar@baz", "foo", "foo@.socket", "bar@baz", False, True),
    ("foo.bar@baz.service", "foo.bar@baz.service", "foo.bar@baz", "foo.bar", "foo.bar@.service", "baz",
     False, True),
])
def test_name_info(name: str, full: str, base: str, prefix: str, template: str, instance: str,
                   is_template: bool, is_instance: bool) -> None:
    info = UnitNameInfo.parse(name)
    assert info is not None
    assert (info.full_name, info.name, info.prefix, info.template, info.instance) == (
        full, base, prefix, template, instance)
    assert (info.is_template, info.is_instance) == (is_template, is_instance)


def test_name_without_dot_has_no_info() -> None:
    assert UnitNameInfo.parse("foo") is None


def test_specifiers() -> None:
    info = UnitNameInfo.parse("foo@bar.waldo")
    assert info is not None
    assert unit_printf("%n %N %p %i", info) == "foo@bar.waldo foo@bar foo bar"
    assert unit_printf("no specifiers %x", info) == "no specifiers %x"
    plain = UnitNameInfo.parse("ping.service")
    assert plain is not None
    assert unit_printf("%p-%i.", plain) == "ping-."


@pytest.mark.parametrize(("arg", "name"), [
    ("foo", "foo.service"), ("/srv/units/hello.service", "hello.service"),
    ("foo.target", "foo.target.service"),
    ("a.socket", "a.socket"), ("dir/web@1.service", "web@1.service"), ("x.automount", "x.automount"),
])
def test_unit_name_from_path(arg: str, name: str) -> None:
    assert unit_name_from_path(arg) == name


def test_recognized_types() -> None:
    assert recognized_unit_type("a.service") and recognized_unit_type("a.automount")
    assert not recognized_unit_type("a.target") and not recognized_unit_type("a.slice")


# --- globs, quoting, multi-values ----------------------------------------------------------------------

@pytest.mark.parametrize(("line", "values"), [
    ('"foo=bar" "baz=qux"', ["foo=bar", "baz=qux"]),
    ("foo=bar", ["foo=bar"]),
    ('"foo=bar baz=qux"', ["foo=bar baz=qux"]),
    ('"region=us-east-1" "diskType=SSD"', ["region=us-east-1", "diskType=SSD"]),
    ('"a=b" c=d', ['"a=b" c=d']),
])
def test_parse_multivalue(line: str, values: list[str]) -> None:
    assert parse_multivalue(line) == values


@pytest.mark.parametrize(("pattern", "name", "matches"), [
    ("conflict.*.service", "conflict.1.service", True),
    ("conflict.*.service", "conflict.service", False),
    ("hello.service", "hello.service", True),
    ("*", "a/b", False),
    ("a?c.service", "abc.service", True),
    ("[ab].service", "b.service", True),
    ("[^ab].service", "b.service", False),
    ("[a-c]x", "bx", True),
    ("\\*.service", "*.service", True),
    ("\\*.service", "a.service", False),
    ("[", "[", False),
    ("foo*", "foo@1.service", True),
])
def test_glob_match_is_go_path_match(pattern: str, name: str, matches: bool) -> None:
    assert glob_match(pattern, name) is matches


def test_go_quote() -> None:
    assert go_quote('a"b\\c\n') == '"a\\"b\\\\c\\n"'
    assert go_quote("é") == '"é"'
    assert go_quote("\x01") == '"\\x01"'
    assert go_quote_rune("'") == "'\\''"


# --- [X-Fleet] ----------------------------------------------------------------------------------------

def req(xfleet: str, name: str | None = None) -> Requirements:
    return Requirements.of(UnitFile.from_text("[X-Fleet]\n" + xfleet), name)


def test_machine_id_precedence() -> None:
    everything = "X-ConditionMachineBootID=c\nX-ConditionMachineID=b\nMachineID=a\nMachineID=z\n"
    assert req(everything).machine_id == "a"
    assert req("X-ConditionMachineBootID=c\nX-ConditionMachineID=b\n").machine_id == "b"
    assert req("X-ConditionMachineBootID=c\n").machine_id == "c"
    assert req("Global=true\n").machine_id is None


def test_peers_conflicts_replaces_keep_order_with_deprecated_first() -> None:
    r = req("MachineOf=b.service\nX-ConditionMachineOf=a.service\nConflicts=c.* d.*\nX-Conflicts=x.*\n"
            "Conflicts=e.service\nReplaces=old.service\n")
    assert r.peers == ("a.service", "b.service")
    assert r.conflicts == ("x.*", "c.*", "d.*", "e.service")
    assert r.replaces == ("old.service",)


def test_metadata_or_within_key_and_invalid_pairs_ignored() -> None:
    r = req('MachineMetadata=region=us-east\nMachineMetadata="region=us-west" "disk=ssd"\n'
            "X-ConditionMachineMetadata=role=web\nMachineMetadata=bad=a=b\nMachineMetadata==x\n"
            "MachineMetadata=k=\nMachineMetadata=novalue\n")
    assert r.metadata == {"region": {"us-east", "us-west"}, "disk": {"ssd"}, "role": {"web"}}


@pytest.mark.parametrize(("xfleet", "is_global"), [
    ("Global=true\n", True), ("Global=YES\n", True), ("Global=1\n", True), ("Global=On\n", True),
    ("Global=t\n", True), ("Global=false\n", False), ("Global=true\nGlobal=no\n", False),
    ("Global=no\nGlobal=true\n", True), ("", False), ("Global=enabled\n", False),
])
def test_global_truthiness_last_value_wins(xfleet: str, is_global: bool) -> None:
    assert req(xfleet).is_global is is_global


def test_specifiers_expanded_in_xfleet_values_only() -> None:
    unit = UnitFile.from_text("[Service]\nExecStart=/bin/echo %i\n[X-Fleet]\nMachineMetadata=hostname=%i\n"
                              "MachineOf=%p-peer@%i.service\nMachineID=%i\nConflicts=%N.other\n")
    r = Requirements.of(unit, "metadata@node1.service")
    assert r.metadata == {"hostname": {"node1"}}
    assert r.peers == ("metadata-peer@node1.service",)
    assert r.machine_id == "node1"
    assert r.conflicts == ("metadata@node1.other",)
    assert unit.contents["Service"]["ExecStart"] == ["/bin/echo %i"]
    assert Requirements.of(unit).machine_id == "%i"


def test_unknown_keys_warn() -> None:
    unit = UnitFile.from_text("[X-Fleet]\nFoo=1\nMachineID=a\nX-ConditionMachineOf=b\nBar=2\n")
    assert Requirements.of(unit).unknown_keys == ("Foo", "Bar")
    assert unrecognized_requirements_warnings("x.service", unit) == [
        'Unit x.service: unrecognized requirement in [X-Fleet] section: "Foo"',
        'Unit x.service: unrecognized requirement in [X-Fleet] section: "Bar"']


@pytest.mark.parametrize(("xfleet", "message"), [
    ("MachineOf=a.service\nConflicts=a.*\n",
     'unresolvable requirements: peer "a.service" matches conflict "a.*"'),
    ("MachineOf=a.service\nReplaces=a.service\n",
     'unresolvable requirements: peer "a.service" matches replace "a.service"'),
    ("MachineID=abc\nMachineOf=a.service\n", "MachineID cannot be used with Peers"),
    ("MachineID=abc\nConflicts=a.*\n", "MachineID cannot be used with Conflicts"),
    ("MachineID=abc\nGlobal=true\n", "MachineID cannot be used with Global"),
    ("X-ConditionMachineID=abc\nGlobal=true\n", "MachineID cannot be used with Global"),
    ("MachineID=abc\nReplaces=a.service\n", "MachineID cannot be used with Replaces"),
    ("Global=true\nMachineOf=a.service\n", "Global cannot be used with Peers"),
    ("Global=true\nReplaces=a.service\n", "Global cannot be used with Replaces"),
    ("Conflicts=a.*\nReplaces=b.service\n", "Conflicts cannot be used with Replaces"),
    ("MachineID=abc\nMachineOf=a.service\nConflicts=b.*\n", "MachineID cannot be used with Peers"),
])
def test_invalid_option_combinations(xfleet: str, message: str) -> None:
    with pytest.raises(UnitOptionsError) as err:
        validate_options(UnitFile.from_text("[Service]\nExecStart=x\n[X-Fleet]\n" + xfleet))
    assert str(err.value) == message


@pytest.mark.parametrize("xfleet", [
    "Global=true\nMachineMetadata=a=b\nConflicts=x.*\n",
    "MachineID=abc\nMachineMetadata=a=b\n",
    "MachineOf=a.service\nConflicts=b.*\n",
    "Global=false\nMachineOf=a.service\n",
    "Replaces=a.service\nMachineOf=b.service\n",
    "Foo=bar\n",
])
def test_valid_option_combinations(xfleet: str) -> None:
    validate_options(UnitFile.from_text("[Service]\nExecStart=x\n[X-Fleet]\n" + xfleet))


def test_validation_rejects_lines_too_long_for_systemd() -> None:
    unit = UnitFile(opts(("Service", "ExecStart", "x" * LINE_MAX)))
    with pytest.raises(UnitOptionsError, match=r"line too long \(max 2048 bytes\)"):
        validate_options(unit)

"""[Service] sections -> ServiceSpec: systemd's command-line, environment, time span and restart rules."""

import math
import signal

import pytest

from fleetd.runtime.service import (
    ExitStatus,
    KillMode,
    NotifyAccess,
    RestartPolicy,
    ServiceResult,
    ServiceSpec,
    ServiceSpecError,
    ServiceType,
    SpecifierContext,
    expand_env_words,
    expand_specifiers,
    parse_environment_file,
    parse_exec,
    parse_signal,
    parse_timespan,
    split_words,
)
from fleetd.unit import UnitFile


def spec(body: str, name: str = "x.service", unit: str = "") -> ServiceSpec:
    text = (f"[Unit]\n{unit}" if unit else "") + "[Service]\n" + body
    return ServiceSpec.from_unit(UnitFile.from_text(text), SpecifierContext(name, hostname="host.example"))


# --- command lines -------------------------------------------------------------------------------

def test_words_are_split_with_quotes_and_c_escapes() -> None:
    assert [w.text for w in split_words("/bin/echo 'a b' \"c \\\"d\\\"\" e\\tf x\"y z\"w \\x41\\101\\s")] == \
        ["/bin/echo", "a b", 'c "d"', "e\tf", "xy zw", "AA "]
    with pytest.raises(ServiceSpecError, match="Unbalanced quoting"):
        split_words("/bin/echo 'open")


def test_semicolon_separates_commands_unless_escaped() -> None:
    commands = parse_exec("/bin/a 1 ; /bin/b \\; ';'")
    assert [c.words for c in commands] == [("/bin/a", "1"), ("/bin/b", ";", ";")]


def test_prefixes() -> None:
    (cmd,) = parse_exec("-@/bin/sh shname -c true")
    assert cmd.ignore_failure and cmd.custom_argv0 and cmd.path == "/bin/sh"
    assert cmd.argv({}) == ["shname", "-c", "true"]
    (plus,) = parse_exec("+/bin/id")
    (bang,) = parse_exec("!!/bin/id")
    assert plus.full_privileges and bang.full_privileges and not plus.ignore_failure
    (raw,) = parse_exec(":/bin/echo $HOME")
    assert raw.argv({"HOME": "/root"}) == ["/bin/echo", "$HOME"]
    with pytest.raises(ServiceSpecError, match="'\\|' command prefix"):
        parse_exec("|echo hi")
    with pytest.raises(ServiceSpecError, match="cannot be combined"):
        parse_exec("+!/bin/id")
    with pytest.raises(ServiceSpecError, match="Empty executable"):
        parse_exec("@/bin/sh")


def test_environment_expansion_rules() -> None:
    env = {"ONE": "1", "TWO": "a  b", "EMPTY": ""}
    assert expand_env_words(["$TWO", "${TWO}", "x${ONE}y", "x$ONE", "$$ONE", "$UNSET", "${UNSET}", "$EMPTY"],
                            env) == ["a", "b", "a  b", "x1y", "x$ONE", "$ONE", ""]


def test_continuation_lines_join_with_a_space() -> None:
    s = spec("ExecStart=/bin/echo one \\\n  two\n")
    assert s.exec_start[0].words == ("/bin/echo", "one", "two")


# --- specifiers ----------------------------------------------------------------------------------

def test_specifiers() -> None:
    context = SpecifierContext("web@a\\x2db-c.service", hostname="node1.example", machine_id="m1")
    assert expand_specifiers("%n %N %p %i %I %f %H %l %m %%i", context) == \
        "web@a\\x2db-c.service web@a\\x2db-c web a\\x2db-c a-b/c /a-b/c node1.example node1 m1 %i"
    with pytest.raises(ServiceSpecError, match="unknown specifier %z"):
        expand_specifiers("date +%z", context)


def test_specifiers_apply_to_exec_lines_before_splitting() -> None:
    s = spec("ExecStart=/bin/echo %i %H\n", name="hello@there.service")
    assert s.exec_start[0].words == ("/bin/echo", "there", "host.example")


# --- environment ---------------------------------------------------------------------------------

def test_environment_assignments_quoted_multiple_and_reset() -> None:
    s = spec('ExecStart=/bin/true\nEnvironment=A=1 "B=two words"\nEnvironment=C=3 bogus A=4\n')
    assert s.environment == (("A", "1"), ("B", "two words"), ("C", "3"), ("A", "4"))
    assert s.base_environment()["A"] == "4"
    assert "Invalid environment assignment, ignoring: bogus" in s.warnings
    assert spec("ExecStart=/bin/true\nEnvironment=A=1\nEnvironment=\nEnvironment=B=2\n").environment == \
        (("B", "2"),)


def test_environment_files() -> None:
    s = spec("ExecStart=/bin/true\nEnvironmentFile=/etc/a\nEnvironmentFile=-/etc/b\n"
             "EnvironmentFile=relative\n")
    assert s.environment_files == (("/etc/a", False), ("/etc/b", True))
    text = ("# comment\n; other comment\n\nA=1\n  B = spaced  \nC='single $x \\n'\nD=\"dq \\\"q\\\" \\$x\"\n"
            "E=cont\\\ninued\nbad-name=x\nF=\"multi\nline\"\nG=mix'ed'\"up\"\n")
    assert parse_environment_file(text) == [
        ("A", "1"), ("B", "spaced"), ("C", "single $x \\n"), ("D", 'dq "q" $x'), ("E", "continued"),
        ("F", "multi\nline"), ("G", "mixedup")]


# --- values --------------------------------------------------------------------------------------

def test_time_spans() -> None:
    assert parse_timespan("90") == 90
    assert parse_timespan("5min 20s") == 320
    assert parse_timespan("1min30s") == 90
    assert parse_timespan("100ms") == pytest.approx(0.1)
    assert parse_timespan("2h") == 7200
    assert parse_timespan("infinity") == math.inf
    for bad in ("", "5 parsecs", "-1", "s"):
        with pytest.raises(ValueError):
            parse_timespan(bad)


def test_signals() -> None:
    assert parse_signal("SIGINT") is signal.SIGINT
    assert parse_signal("HUP") is signal.SIGHUP
    assert parse_signal("9") is signal.SIGKILL
    with pytest.raises(ValueError):
        parse_signal("SIGNOPE")


def test_defaults() -> None:
    s = spec("ExecStart=/bin/true\n")
    assert (s.type, s.restart, s.restart_sec, s.kill_mode, s.kill_signal, s.send_sigkill) == \
        (ServiceType.SIMPLE, RestartPolicy.NO, 0.1, KillMode.CONTROL_GROUP, signal.SIGTERM, True)
    assert (s.timeout_start, s.timeout_stop, s.remain_after_exit, s.notify_access) == \
        (90.0, 90.0, False, NotifyAccess.NONE)
    assert (s.working_directory, s.user, s.group, s.pid_file) == (None, None, None, None)
    assert (s.start_limit_interval, s.start_limit_burst) == (10.0, 5)
    assert s.base_environment() == {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


def test_all_settings() -> None:
    s = spec("Type=notify\nExecStartPre=-/bin/pre\nExecStart=/bin/main --flag\nExecStartPost=/bin/post\n"
             "ExecReload=/bin/kill -HUP $MAINPID\nExecStop=/bin/stop\nExecStopPost=/bin/stoppost\n"
             "Restart=on-abnormal\nRestartSec=2s\nWorkingDirectory=-/srv\nUser=www\nGroup=web\n"
             "KillMode=mixed\nKillSignal=SIGQUIT\nSendSIGKILL=no\nTimeoutSec=10\nTimeoutStopSec=0\n"
             "RemainAfterExit=yes\nPIDFile=/run/x.pid\nSuccessExitStatus=3 SIGUSR1\nStartLimitBurst=2\n",
             unit="Description=Everything\nStartLimitIntervalSec=1min\n")
    assert s.type is ServiceType.NOTIFY and s.notify_access is NotifyAccess.MAIN
    assert [c.words for c in (*s.exec_start_pre, *s.exec_start, *s.exec_start_post)] == \
        [("/bin/pre",), ("/bin/main", "--flag"), ("/bin/post",)]
    assert s.exec_start_pre[0].ignore_failure
    assert s.exec_reload[0].argv({"MAINPID": "42"}) == ["/bin/kill", "-HUP", "42"]
    assert [c.path for c in (*s.exec_stop, *s.exec_stop_post)] == ["/bin/stop", "/bin/stoppost"]
    assert (s.restart, s.restart_sec) == (RestartPolicy.ON_ABNORMAL, 2.0)
    assert (s.working_directory, s.working_directory_optional) == ("/srv", True)
    assert (s.user, s.group) == ("www", "web")
    assert (s.kill_mode, s.kill_signal, s.send_sigkill) == (KillMode.MIXED, signal.SIGQUIT, False)
    assert (s.timeout_start, s.timeout_stop) == (10.0, math.inf)
    assert s.remain_after_exit and s.pid_file == "/run/x.pid" and s.success_exit_status == {3}
    assert (s.description, s.start_limit_interval, s.start_limit_burst) == ("Everything", 60.0, 2)
    assert any("SIGUSR1" in w for w in s.warnings)


def test_unparsable_values_are_ignored_with_warnings() -> None:
    s = spec("ExecStart=/bin/true\nRestart=sometimes\nKillMode=gentle\nTimeoutStopSec=soon\nLimitNOFILE=10\n")
    assert (s.restart, s.kill_mode, s.timeout_stop) == (RestartPolicy.NO, KillMode.CONTROL_GROUP, 90.0)
    assert "Failed to parse Restart= value, ignoring: sometimes" in s.warnings
    assert "Option LimitNOFILE= is not supported by the built-in runtime, ignoring." in s.warnings


def test_exec_start_reset_and_oneshot_lists() -> None:
    assert spec("ExecStart=/bin/a\nExecStart=\nExecStart=/bin/b\n").exec_start[0].path == "/bin/b"
    s = spec("Type=oneshot\nExecStart=/bin/a\nExecStart=/bin/b\n")
    assert [c.path for c in s.exec_start] == ["/bin/a", "/bin/b"]


def test_refusals() -> None:
    with pytest.raises(ServiceSpecError, match="Service has no ExecStart=, ExecStop=, or SuccessAction="):
        spec("Type=simple\n")
    with pytest.raises(ServiceSpecError, match="more than one ExecStart= setting"):
        spec("ExecStart=/bin/a\nExecStart=/bin/b\n")
    with pytest.raises(ServiceSpecError, match="isn't allowed for Type=oneshot"):
        spec("Type=oneshot\nExecStart=/bin/a\nRestart=always\n")
    with pytest.raises(ServiceSpecError, match="Type=dbus is not supported"):
        spec("Type=dbus\nExecStart=/bin/a\n")
    assert spec("Type=oneshot\nExecStop=/bin/a\n").exec_stop[0].path == "/bin/a"


# --- results and restarts ------------------------------------------------------------------------

def test_exit_statuses() -> None:
    assert ExitStatus.from_returncode(1).describe() == "code=exited, status=1/FAILURE"
    assert ExitStatus.from_returncode(-9).describe() == "code=killed, status=9/KILL"
    assert ExitStatus.from_returncode(42).describe() == "code=exited, status=42"
    assert ExitStatus.from_returncode(0).result() is ServiceResult.SUCCESS
    assert ExitStatus.from_returncode(3).result(frozenset({3})) is ServiceResult.SUCCESS
    assert ExitStatus.from_returncode(2).result() is ServiceResult.EXIT_CODE
    assert ExitStatus.from_returncode(-15).result() is ServiceResult.SUCCESS
    assert ExitStatus.from_returncode(-15).result(daemon=False) is ServiceResult.SIGNAL
    assert ExitStatus.from_returncode(-9).result() is ServiceResult.SIGNAL


@pytest.mark.parametrize(("policy", "restarts"), [
    ("no", ""),
    ("always", "success exit-code signal timeout watchdog"),
    ("on-success", "success"),
    ("on-failure", "exit-code signal timeout watchdog"),
    ("on-abnormal", "signal timeout watchdog"),
    ("on-abort", "signal"),
    ("on-watchdog", "watchdog"),
])
def test_restart_table(policy: str, restarts: str) -> None:
    results = ("success", "exit-code", "signal", "timeout", "watchdog")
    assert [r for r in results if RestartPolicy(policy).should_restart(ServiceResult(r))] == restarts.split()
    assert not RestartPolicy(policy).should_restart(ServiceResult.START_LIMIT_HIT)

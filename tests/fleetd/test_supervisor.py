"""The built-in unit runtime against real processes: states, kills, restarts, notify, journal, adoption."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from fleetd.runtime import NOT_FOUND, UnitRuntime, UnitRuntimeError, UnitRuntimeState
from fleetd.runtime.supervisor import Supervisor, session_members
from fleetd.unit import UnitFile

PY = sys.executable
WAIT = 10.0


def run(test: Callable[[Supervisor], Awaitable[None]], state_dir: Path) -> None:
    """Run ``test`` with a supervisor over ``state_dir``; afterwards no process of any unit survives."""
    async def main() -> None:
        async with supervisor(state_dir) as sup:
            await test(sup)
    asyncio.run(asyncio.wait_for(main(), 40))


@contextlib.asynccontextmanager
async def supervisor(state_dir: Path) -> AsyncIterator[Supervisor]:
    sup = Supervisor(state_dir, hostname="testhost")
    try:
        yield sup
    finally:
        for name in (await sup.states()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sup.stop(name), 10)
        await sup.close()


async def load(sup: Supervisor, name: str, text: str) -> None:
    await sup.load(name, UnitFile.from_text(text))


async def journal(sup: Supervisor, name: str, lines: int = 100) -> list[str]:
    return [line async for line in sup.journal(name, lines)]


async def wait_until(check: Callable[[], bool], timeout: float = WAIT) -> None:
    """Poll a condition about the outside world (files, processes) for at most ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except FileNotFoundError:
        return False


def state(text: str) -> UnitRuntimeState:
    return UnitRuntimeState(*text.split("/"))


# --- basics --------------------------------------------------------------------------------------

def test_simple_service_runs_in_its_own_session_and_stops(tmp_path: Path) -> None:
    async def test(sup: Supervisor) -> None:
        assert isinstance(sup, UnitRuntime)
        await load(sup, "sleep.service", "[Service]\nExecStart=/bin/sleep 100\n")
        assert await sup.states(["sleep.service"]) == {"sleep.service": state("loaded/inactive/dead")}
        await sup.start("sleep.service")
        assert await sup.wait_for("sleep.service", "active/running", WAIT) == state("loaded/active/running")
        pid = sup.main_pid("sleep.service")
        assert pid is not None and alive(pid)
        assert os.getsid(pid) == pid and os.getpgid(pid) == pid
        await sup.start("sleep.service")  # already running: nothing happens
        assert sup.main_pid("sleep.service") == pid
        await sup.stop("sleep.service")
        assert (await sup.states())["sleep.service"] == state("loaded/inactive/dead")
        assert not alive(pid)
        assert sup.history("sleep.service") == ["inactive/dead", "activating/start", "active/running",
                                                "deactivating/stop-sigterm", "inactive/dead"]
        status = await sup.status("sleep.service")
        assert status is not None and status.result == "success" and status.main_pid is None
    run(test, tmp_path)


def test_unknown_units_are_not_found(tmp_path: Path) -> None:
    async def test(sup: Supervisor) -> None:
        assert await sup.states(["nope.service"]) == {"nope.service": NOT_FOUND}
        assert str(NOT_FOUND) == "not-found/inactive/dead"
        with pytest.raises(UnitRuntimeError, match=r"Unit nope\.service not found"):
            await sup.start("nope.service")
        await sup.unload("nope.service")
        assert await sup.status("nope.service") is None
    run(test, tmp_path)


def test_unload_stops_and_forgets(tmp_path: Path) -> None:
    async def test(sup: Supervisor) -> None:
        await load(sup, "u.service", "[Service]\nExecStart=/bin/sleep 100\n")
        await sup.start("u.service")
        await sup.wait_for("u.service", "active", WAIT)
        pid = sup.main_pid("u.service")
        assert await sup.units() == {"u.service": UnitFile.from_text(
            "[Service]\nExecStart=/bin/sleep 100\n").hash.hex}
        await sup.unload("u.service")
        assert pid is not None and not alive(pid)
        assert await sup.states(["u.service"]) == {"u.service": NOT_FOUND}
        assert await sup.units() == {}
    run(test, tmp_path)


def test_bad_unit_files_report_bad_setting_and_refuse_to_start(tmp_path: Path) -> None:
    async def test(sup: Supervisor) -> None:
        await load(sup, "bad.service", "[Service]\nType=simple\n")
        assert (await sup.states())["bad.service"] == state("bad-setting/inactive/dead")
        with pytest.raises(UnitRuntimeError, match="no ExecStart="):
            await sup.start("bad.service")
        await load(sup, "t.socket", "[Socket]\nListenStream=1234\n")
        assert (await sup.states())["t.socket"].load_state == "bad-setting"
    run(test, tmp_path)


# --- failures ------------------------------------------------------------------------------------

def test_failures_show_failed_with_the_reason(tmp_path: Path) -> None:
    async def test(sup: Supervisor) -> None:
        cases = {
            "exit.service": ("/bin/sh -c 'exit 3'", "exit-code", "code=exited, status=3/NOTIMPLEMENTED"),
            "kill.service": ("/bin/sh -c 'kill -9 $$$$'", "signal", "code=killed, status=9/KILL"),
            "noexec.service": ("/nonexistent/binary", "exit-code", "code=exited, status=203/EXEC"),
        }
        for name, (command, _, _) in cases.items():
            await load(sup, name, f"[Service]\nExecStart={command}\n")
            await sup.start(name)
        for name, (_, result, exit_text) in cases.items():
            assert await sup.wait_for(name, "failed", WAIT) == state("loaded/failed/failed")
            status = await sup.status(name)
            assert status is not None and (status.result, status.exit) == (result, exit_text)
            assert f"{name}: Failed with result '{result}'." in "\n".join(await journal(sup, name))
    run(test, tmp_path)


def test_exec_start_pre_failure_and_ignored_failure(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    async def test(sup: Supervisor) -> None:
        await load(sup, "pre.service", f"[Service]\nExecStartPre=/bin/false\nExecStart=/bin/touch {marker}\n")
        await sup.start("pre.service")
        await sup.wait_for("pre.service", "failed", WAIT)
        assert not marker.exists()
        assert "activating/start-pre" in sup.history("pre.service")
        await load(sup, "pre.service", f"[Service]\nType=oneshot\nExecStartPre=-/bin/false\n"
                                       f"ExecStart=/bin/touch {marker}\n")
        await sup.start("pre.service")
        await sup.wait_for("pre.service", "inactive", WAIT)
        assert marker.exists()
        assert "(ignored)" in "\n".join(await journal(sup, "pre.service"))
    run(test, tmp_path)


# --- types ---------------------------------------------------------------------------------------

def test_oneshot_with_remain_after_exit_and_exec_stop(tmp_path: Path) -> None:
    stopped = tmp_path / "stopped"

    async def test(sup: Supervisor) -> None:
        await load(sup, "once.service", f"[Service]\nType=oneshot\nRemainAfterExit=yes\n"
                                        f"ExecStart=/bin/echo first\nExecStart=/bin/echo second\n"
                                        f"ExecStop=/bin/sh -c 'echo $SERVICE_RESULT > {stopped}'\n")
        await sup.start("once.service")
        assert await sup.wait_for("once.service", "active/exited", WAIT) == state("loaded/active/exited")
        assert not stopped.exists()
        await sup.stop("once.service")
        assert (await sup.states())["once.service"] == state("loaded/inactive/dead")
        assert stopped.read_text() == "success\n"
        text = "\n".join(await journal(sup, "once.service"))
        assert "first" in text and "second" in text
    run(test, tmp_path)


def test_forking_service_with_pid_file(tmp_path: Path) -> None:
    pid_file = tmp_path / "daemon.pid"

    async def test(sup: Supervisor) -> None:
        await load(sup, "fork.service", f"[Service]\nType=forking\nPIDFile={pid_file}\n"
                                        f"ExecStart=/bin/sh -c 'sleep 100 & echo $! > {pid_file}'\n")
        await sup.start("fork.service")
        await sup.wait_for("fork.service", "active/running", WAIT)
        daemon = int(pid_file.read_text())
        assert sup.main_pid("fork.service") == daemon and alive(daemon)
        await sup.stop("fork.service")
        assert not alive(daemon)
        assert (await sup.states())["fork.service"] == state("loaded/inactive/dead")
    run(test, tmp_path)


NOTIFY = """import os, socket, time
time.sleep(0.3)
address = os.environ["NOTIFY_SOCKET"]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.connect("\\0" + address[1:] if address.startswith("@") else address)
sock.send(b"STATUS=warming up\\nREADY=1")
time.sleep(100)
"""


def test_notify_service_is_activating_until_ready(tmp_path: Path) -> None:
    script = tmp_path / "notify.py"
    script.write_text(NOTIFY)

    async def test(sup: Supervisor) -> None:
        await load(sup, "notify.service", f"[Service]\nType=notify\nExecStart={PY} {script}\n")
        await sup.start("notify.service")
        assert (await sup.states())["notify.service"] == state("loaded/activating/start")
        await sup.wait_for("notify.service", "active/running", WAIT)
        status = await sup.status("notify.service")
        assert status is not None and status.status_text == "warming up"
        assert sup.history("notify.service")[:3] == ["inactive/dead", "activating/start", "active/running"]
    run(test, tmp_path)


def test_notify_service_via_systemd_notify_with_notify_access_all(tmp_path: Path) -> None:
    async def test(sup: Supervisor) -> None:
        await load(sup, "sn.service", "[Service]\nType=notify\nNotifyAccess=all\n"
                                      "ExecStart=/bin/sh -c 'systemd-notify --ready; exec sleep 100'\n")
        await sup.start("sn.service")
        await sup.wait_for("sn.service", "active/running", WAIT)
    run(test, tmp_path)


def test_notify_service_exiting_before_ready_fails_with_protocol(tmp_path: Path) -> None:
    async def test(sup: Supervisor) -> None:
        await load(sup, "quit.service", "[Service]\nType=notify\nExecStart=/bin/true\n")
        await sup.start("quit.service")
        await sup.wait_for("quit.service", "failed", WAIT)
        status = await sup.status("quit.service")
        assert status is not None and status.result == "protocol"
    run(test, tmp_path)


# --- restarts ------------------------------------------------------------------------------------

def test_restart_on_failure_after_restart_sec_until_stopped(tmp_path: Path) -> None:
    runs = tmp_path / "runs"

    async def test(sup: Supervisor) -> None:
        await load(sup, "crash.service", f"[Service]\nExecStart=/bin/sh -c 'echo x >> {runs}; exit 1'\n"
                                         "Restart=on-failure\nRestartSec=0.3\n")
        await sup.start("crash.service")
        await sup.wait_for("crash.service", "activating/auto-restart", WAIT)
        await wait_until(lambda: runs.exists() and len(runs.read_text().split()) >= 2)
        assert sup.history("crash.service")[1:4] == \
            ["activating/start", "active/running", "activating/auto-restart"]
        await sup.wait_for("crash.service", "activating/auto-restart", WAIT)
        await sup.stop("crash.service")
        assert (await sup.states())["crash.service"] == state("loaded/inactive/dead")
        count = len(runs.read_text().split())
        await asyncio.sleep(0.5)
        assert len(runs.read_text().split()) == count  # the pending restart was cancelled
        text = "\n".join(await journal(sup, "crash.service"))
        assert "Scheduled restart job, restart counter is at 1." in text
    run(test, tmp_path)


def test_restart_no_and_clean_exit_under_on_failure_stay_down(tmp_path: Path) -> None:
    async def test(sup: Supervisor) -> None:
        await load(sup, "ok.service", "[Service]\nExecStart=/bin/true\nRestart=on-failure\nRestartSec=0\n")
        await sup.start("ok.service")
        await sup.wait_for("ok.service", "inactive/dead", WAIT)
        assert "activating/auto-restart" not in sup.history("ok.service")
    run(test, tmp_path)


def test_start_limit_stops_a_crash_loop(tmp_path: Path) -> None:
    runs = tmp_path / "runs"

    async def test(sup: Supervisor) -> None:
        await load(sup, "loop.service", f"[Unit]\nStartLimitBurst=3\nStartLimitIntervalSec=30\n"
                                        f"[Service]\nExecStart=/bin/sh -c 'echo x >> {runs}; exit 2'\n"
                                        "Restart=always\nRestartSec=0\n")
        await sup.start("loop.service")
        await sup.wait_for("loop.service", "failed", WAIT)
        status = await sup.status("loop.service")
        assert status is not None and status.result == "start-limit-hit"
        assert len(runs.read_text().split()) == 3
    run(test, tmp_path)


# --- reloading -----------------------------------------------------------------------------------

def test_reload_runs_exec_reload_while_the_unit_stays_active(tmp_path: Path) -> None:
    hups, gate, trapped = tmp_path / "hups", tmp_path / "gate", tmp_path / "trapped"

    async def test(sup: Supervisor) -> None:
        await load(sup, "hup.service", f"[Service]\n"
                                       f"ExecStart=/bin/sh -c 'trap \"echo hup >> {hups}\" HUP; "
                                       f"touch {trapped}; while :; do sleep 0.05; done'\n"
                                       f"ExecReload=/bin/sh -c 'kill -HUP $MAINPID; "
                                       f"while [ ! -e {gate} ]; do sleep 0.02; done'\n")
        with pytest.raises(UnitRuntimeError, match="not active, cannot reload"):
            await sup.reload("hup.service")
        await sup.start("hup.service")
        await sup.wait_for("hup.service", "active/running", WAIT)
        await wait_until(trapped.exists)  # a simple service runs at once; its shell may not trap yet
        main = sup.main_pid("hup.service")
        reload = asyncio.ensure_future(sup.reload("hup.service"))
        assert await sup.wait_for("hup.service", "reloading", WAIT) == state("loaded/reloading/reload")
        await wait_until(hups.exists)
        assert not reload.done()
        gate.touch()
        await reload
        assert (await sup.states())["hup.service"] == state("loaded/active/running")
        assert sup.main_pid("hup.service") == main and hups.read_text() == "hup\n"
        assert sup.history("hup.service")[-3:] == ["active/running", "reloading/reload", "active/running"]
        lines = "\n".join(await journal(sup, "hup.service"))
        assert "Reloading hup.service..." in lines and "Reloaded hup.service." in lines
        await load(sup, "plain.service", "[Service]\nExecStart=/bin/sleep 100\n")
        with pytest.raises(UnitRuntimeError, match="reload is not applicable"):
            await sup.reload("plain.service")
    run(test, tmp_path)


def test_a_failed_reload_keeps_the_unit_running_and_a_stop_ends_a_reload(tmp_path: Path) -> None:
    async def test(sup: Supervisor) -> None:
        await load(sup, "bad.service", "[Service]\nExecStart=/bin/sleep 100\nExecReload=/bin/false\n")
        await load(sup, "slow.service", "[Service]\nExecStart=/bin/sleep 100\nTimeoutStartSec=1\n"
                                        "ExecReload=/bin/sleep 100\n")
        for name in ("bad.service", "slow.service"):
            await sup.start(name)
            await sup.wait_for(name, "active", WAIT)
        main = sup.main_pid("bad.service")
        with pytest.raises(UnitRuntimeError, match="failed with result 'exit-code'"):
            await sup.reload("bad.service")
        assert (await sup.states())["bad.service"] == state("loaded/active/running")
        assert sup.main_pid("bad.service") == main
        sessions = set(session_members([sup.main_pid("slow.service") or 0]))
        with pytest.raises(UnitRuntimeError, match="failed with result 'timeout'"):
            await sup.reload("slow.service")  # the reload command is killed, the unit runs on
        assert (await sup.states())["slow.service"] == state("loaded/active/running")
        assert "Reload operation timed out" in "\n".join(await journal(sup, "slow.service"))
        reload = asyncio.ensure_future(sup.reload("slow.service"))
        await sup.wait_for("slow.service", "reloading", WAIT)
        await sup.stop("slow.service")
        with pytest.raises(UnitRuntimeError, match="stopped while reloading"):
            await reload
        assert (await sup.states())["slow.service"] == state("loaded/inactive/dead")
        assert not any(alive(pid) for pid in sessions)
    run(test, tmp_path)


# --- stopping ------------------------------------------------------------------------------------

def test_kill_signal_is_sent_to_the_whole_process_group(tmp_path: Path) -> None:
    got = tmp_path / "got"

    async def test(sup: Supervisor) -> None:
        # (background jobs of a non-interactive shell ignore SIGINT, so use a signal they die of)
        await load(sup, "trap.service", f"[Service]\nKillSignal=USR1\n"
                                        f"ExecStart=/bin/sh -c 'trap \"echo usr1 > {got}; exit 0\" USR1; "
                                        f"sleep 100 & sleep 100 & while :; do sleep 0.05; done'\n")
        await sup.start("trap.service")
        await sup.wait_for("trap.service", "active", WAIT)
        main = sup.main_pid("trap.service")
        assert main is not None
        await wait_until(lambda: len(session_members([main])) >= 3)
        members = session_members([main])
        await sup.stop("trap.service")
        assert got.read_text() == "usr1\n"
        assert not any(alive(pid) for pid in members)
        assert (await sup.states())["trap.service"] == state("loaded/inactive/dead")
    run(test, tmp_path)


def test_stop_escalates_to_sigkill_after_timeout_stop_sec(tmp_path: Path) -> None:
    async def test(sup: Supervisor) -> None:
        await load(sup, "stubborn.service", "[Service]\nTimeoutStopSec=0.5\nExecStart="
                                            "/bin/sh -c 'trap \"\" TERM; while :; do sleep 0.05; done'\n")
        await sup.start("stubborn.service")
        await sup.wait_for("stubborn.service", "active", WAIT)
        main = sup.main_pid("stubborn.service")
        assert main is not None
        await sup.stop("stubborn.service")
        assert not alive(main)
        history = sup.history("stubborn.service")
        assert history[-3:] == ["deactivating/stop-sigterm", "deactivating/stop-sigkill", "failed/failed"]
        status = await sup.status("stubborn.service")
        assert status is not None and status.result == "timeout"
    run(test, tmp_path)


def test_exec_stop_gets_mainpid_and_stops_the_service(tmp_path: Path) -> None:
    seen = tmp_path / "seen"

    async def test(sup: Supervisor) -> None:
        await load(sup, "es.service", f"[Service]\nExecStart=/bin/sleep 100\n"
                                      f"ExecStop=/bin/sh -c 'echo $MAINPID > {seen}; kill $MAINPID'\n"
                                      "ExecStopPost=/bin/sh -c "
                                      f"'echo post $EXIT_CODE $EXIT_STATUS >> {seen}'\n")
        await sup.start("es.service")
        await sup.wait_for("es.service", "active", WAIT)
        main = sup.main_pid("es.service")
        await sup.stop("es.service")
        assert seen.read_text().splitlines() == [str(main), "post killed TERM"]
        history = sup.history("es.service")
        assert "deactivating/stop" in history and "deactivating/stop-post" in history
        assert "deactivating/stop-sigterm" not in history
        assert history[-1] == "inactive/dead"
    run(test, tmp_path)


# --- environment ---------------------------------------------------------------------------------

def test_environment_files_working_directory_user_and_specifiers(tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("B='from file'\nA=overridden\n")
    user = "nobody" if os.getuid() == 0 else pwd.getpwuid(os.getuid()).pw_name
    uid = pwd.getpwnam(user).pw_uid

    async def test(sup: Supervisor) -> None:
        await load(sup, "env@one.service",
                   f"[Service]\nType=oneshot\nEnvironment=A=a \"C=c c\"\nEnvironmentFile={env_file}\n"
                   f"EnvironmentFile=-{tmp_path}/missing\nWorkingDirectory={tmp_path}\n"
                   "ExecStart=/bin/sh -c 'echo \"$A|$B|${C}|$(pwd)|%n|%i\"'\n"
                   "ExecStart=/bin/echo $C ${C}\n")
        await load(sup, "user.service", f"[Service]\nType=oneshot\nUser={user}\nWorkingDirectory=-~\n"
                                        "ExecStart=/bin/sh -c 'echo \"uid=$(id -u) user=$USER\"'\n"
                                        "ExecStart=+/bin/sh -c 'echo \"privileged=$(id -u)\"'\n")
        for name in ("env@one.service", "user.service"):
            await sup.start(name)
            await sup.wait_for(name, "inactive", WAIT)
        text = "\n".join(await journal(sup, "env@one.service"))
        assert f"overridden|from file|c c|{tmp_path}|env@one.service|one" in text
        assert "c c c c" in text
        text = "\n".join(await journal(sup, "user.service"))
        assert f"uid={uid} user={user}" in text and f"privileged={os.getuid()}" in text
        await load(sup, "strict.service",
                   "[Service]\nEnvironmentFile=/nonexistent/env\nExecStart=/bin/true\n")
        await sup.start("strict.service")
        await sup.wait_for("strict.service", "failed", WAIT)
        status = await sup.status("strict.service")
        assert status is not None and status.result == "resources"
    run(test, tmp_path)


# --- journal -------------------------------------------------------------------------------------

def test_journal_has_timestamped_output_and_follows(tmp_path: Path) -> None:
    async def test(sup: Supervisor) -> None:
        await load(sup, "talk.service", "[Unit]\nDescription=Talker\n[Service]\n"
                                        "ExecStart=/bin/sh -c 'echo hello; echo oops >&2; "
                                        "sleep 0.5; echo later; sleep 100'\n")
        await sup.start("talk.service")
        await sup.wait_for("talk.service", "active", WAIT)
        main = sup.main_pid("talk.service")
        follower = sup.journal("talk.service", lines=10, follow=True)
        seen: list[str] = []
        async for line in follower:
            seen.append(line)
            if line.endswith(": later"):
                break
        await follower.aclose()  # type: ignore[attr-defined]
        assert any(line.endswith(f"testhost talk.service[{main}]: hello") for line in seen)
        assert any(line.endswith(f"talk.service[{main}]: oops") for line in seen)
        assert any(f"fleetd[{os.getpid()}]: Started Talker." in line for line in seen)
        month, day, clock = seen[0].split()[:3]
        assert len(month) == 3 and day.isdigit() and clock.count(":") == 2
        assert (await journal(sup, "talk.service", lines=1))[0].endswith(": later")
        await sup.stop("talk.service")
        assert (await journal(sup, "talk.service", lines=1))[0].endswith("Stopped Talker.")
    run(test, tmp_path)


def test_journal_is_bounded(tmp_path: Path) -> None:
    async def test() -> None:
        sup = Supervisor(tmp_path, hostname="h", journal_max_bytes=4096)
        await load(sup, "chatty.service", "[Service]\nType=oneshot\nExecStart="
                                          "/bin/sh -c 'for i in $(seq 1 2000); do echo line $i; done'\n")
        await sup.start("chatty.service")
        await sup.wait_for("chatty.service", "inactive", WAIT)
        files = list((tmp_path / "journal").glob("chatty.service.log*"))
        assert sum(f.stat().st_size for f in files) <= 2 * 4096
        tail = await journal(sup, "chatty.service", lines=3)
        assert tail[0].endswith(": line 2000") and tail[1].endswith("Finished chatty.service.")
        assert tail[2].endswith("chatty.service: Deactivated successfully.")
        await sup.close()
    asyncio.run(asyncio.wait_for(test(), 30))


# --- adoption ------------------------------------------------------------------------------------

def test_a_new_supervisor_adopts_running_units_instead_of_duplicating(tmp_path: Path) -> None:
    async def test() -> None:
        first = Supervisor(tmp_path, hostname="h")
        text = "[Service]\nExecStart=/bin/sh -c 'while :; do echo tick; sleep 0.1; done'\nRestart=always\n"
        await load(first, "keep.service", text)
        await load(first, "idle.service", "[Service]\nExecStart=/bin/sleep 100\n")
        await first.start("keep.service")
        await first.wait_for("keep.service", "active", WAIT)
        main = first.main_pid("keep.service")
        assert main is not None
        await first.close()
        assert alive(main)  # closing never stops units

        async with supervisor(tmp_path) as second:
            assert await second.adopt() == ["keep.service"]
            assert await second.states() == {"keep.service": state("loaded/active/running"),
                                              "idle.service": state("loaded/inactive/dead")}
            assert second.main_pid("keep.service") == main
            await load(second, "keep.service", text)
            await second.start("keep.service")
            assert second.main_pid("keep.service") == main
            assert len(session_members([main])) <= 2  # the loop and at most one sleep: no duplicate
            await second.stop("keep.service")
            assert not alive(main)
            assert (await second.states())["keep.service"] == state("loaded/inactive/dead")
            assert any(line.endswith(f"Adopted keep.service (main PID {main}).")
                       for line in await journal(second, "keep.service"))
    asyncio.run(asyncio.wait_for(test(), 30))


def test_start_adopts_without_an_explicit_adopt_and_dead_main_process_restarts(tmp_path: Path) -> None:
    async def test() -> None:
        first = Supervisor(tmp_path, hostname="h")
        await load(first, "a.service", "[Service]\nExecStart=/bin/sleep 100\n")
        await load(first, "b.service", "[Service]\nExecStart=/bin/sh -c 'sleep 100 & exec sleep 100'\n"
                                       "Restart=on-failure\nRestartSec=0\n")
        for name in ("a.service", "b.service"):
            await first.start(name)
            await first.wait_for(name, "active", WAIT)
        main_a, main_b = first.main_pid("a.service"), first.main_pid("b.service")
        assert main_a is not None and main_b is not None
        await first.close()
        os.kill(main_b, signal.SIGKILL)
        await wait_until(lambda: not alive(main_b))

        async with supervisor(tmp_path) as second:
            await load(second, "a.service", "[Service]\nExecStart=/bin/sleep 100\n")
            await second.start("a.service")
            assert second.main_pid("a.service") == main_a
            # b's main process died while nobody watched; its leftover child is stopped and b restarted
            await second.adopt()
            await second.wait_for("b.service", lambda s: s.active_state == "active"
                                  and second.main_pid("b.service") not in (None, main_b), WAIT)
            assert "activating/auto-restart" in second.history("b.service")
    asyncio.run(asyncio.wait_for(test(), 30))

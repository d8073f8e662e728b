"""The supervisor and the tests' clean-up never signal a process that is not the unit's: not PID 0 or 1,
not a process that reused a recorded PID, not a session that reused a recorded session ID."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetd.runtime.supervisor import Supervisor, proc_info, record_sessions, same_process, session_members
from fleetd.unit import UnitFile

WAIT = 10.0


@pytest.fixture
def bystander() -> Iterator[int]:
    """A process of its own session that no unit started (as dockerd is to fleetd)."""
    process = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        # Start times have clock-tick resolution: let two ticks pass (the uptime and the start time
        # are truncated separately), so that a process started after this one (a unit's) never
        # shares its start time.
        deadline = time.monotonic() + 5
        while _ticks_since_boot() < start_time(process.pid) + 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        yield process.pid
    finally:
        process.kill()
        process.wait(10)


def _ticks_since_boot() -> float:
    with open("/proc/uptime") as uptime:
        return float(uptime.read().split()[0]) * os.sysconf("SC_CLK_TCK")


def start_time(pid: int) -> int:
    info = proc_info(pid)
    assert info is not None
    return info.start_time


async def run_and_leave(state_dir: Path, name: str, service: str) -> int | None:
    """Start ``name`` (``[Service]`` lines ``service``) with a supervisor that then closes, leaving it
    running as a crashed fleetd would; the unit's main PID."""
    first = Supervisor(state_dir, hostname="h")
    await first.load(name, UnitFile.from_text(f"[Service]\n{service}"))
    await first.start(name)
    await first.wait_for(name, "active", WAIT)
    main = first.main_pid(name)
    await first.close()
    return main


def test_session_ids_of_the_kernel_and_init_are_never_members() -> None:
    assert session_members([0, 1]) == []
    assert session_members({0: 0, 1: 0}) == []
    assert not same_process(1, 0) and not same_process(0, 0) and not same_process(None, 0)


def test_a_session_id_reused_by_another_leader_has_no_members(bystander: int) -> None:
    started = start_time(bystander)
    assert session_members({bystander: started}) == [bystander]
    assert session_members({bystander: started - 1}) == []  # recorded for a leader started earlier
    assert same_process(bystander, started) and not same_process(bystander, started - 1)


def test_run_records_give_sessions_with_their_leaders_start_times() -> None:
    assert record_sessions([[10, 5], [11, 6]]) == {10: 5, 11: 6}
    assert record_sessions([10, 11]) == {}  # bare IDs cannot be verified: none
    assert record_sessions(None) == {}


def test_a_stale_record_whose_pid_and_session_were_reused_is_not_adopted(tmp_path: Path,
                                                                        bystander: int) -> None:
    """fleetd died, its unit's processes died later, and their PID (= session ID) went to another
    process: a new supervisor drops the record and neither adopts nor signals that process."""
    leave = run_and_leave(tmp_path, "gone.service", "ExecStart=/bin/sleep 300\n")
    main = asyncio.run(asyncio.wait_for(leave, 30))
    record_path = tmp_path / "run" / "gone.service.json"
    record = json.loads(record_path.read_text())
    assert record["sessions"] == [[main, record["main_start"]]]
    subprocess.run(["kill", "-KILL", str(main)], check=True)
    # The same record, as if the bystander had been given the unit's PID after it died.
    record.update(main_pid=bystander, sessions=[[bystander, record["main_start"]]])
    record_path.write_text(json.dumps(record))

    async def test() -> None:
        second = Supervisor(tmp_path, hostname="h")
        try:
            assert await second.adopt() == []
            assert not record_path.exists()
            await second.stop("gone.service")
            assert same_process(bystander, 0)
        finally:
            await second.close()
    asyncio.run(asyncio.wait_for(test(), 30))


def test_an_adopted_unit_whose_main_pid_was_reused_stops_without_signalling_it(tmp_path: Path,
                                                                               bystander: int) -> None:
    """An active/exited oneshot is adopted without processes; its recorded main PID now belongs to
    someone else, whom stopping the unit must leave alone."""
    text = "Type=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\nKillMode=process\n"
    asyncio.run(asyncio.wait_for(run_and_leave(tmp_path, "once.service", text), 30))
    record_path = tmp_path / "run" / "once.service.json"
    record = json.loads(record_path.read_text())
    record.update(main_pid=bystander, main_start=start_time(bystander) - 1,
                  sessions=[[bystander, start_time(bystander) - 1]])
    record_path.write_text(json.dumps(record))

    async def test() -> None:
        second = Supervisor(tmp_path, hostname="h")
        try:
            assert await second.adopt() == ["once.service"]
            await second.stop("once.service")
            assert same_process(bystander, 0)
        finally:
            await second.close()
    asyncio.run(asyncio.wait_for(test(), 30))

"""fastkvctl prints what etcdctl prints and exits as it does, for the same command lines."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import harness
from tests.cli import (
    ETCDCTL,
    FASTKVCTL,
    differences,
    env_with_repo,
    fastkvctl,
    run_scenario,
    run_unreachable,
)

pytestmark = pytest.mark.reference


def _compare_on(make: object, tmp_path: Path) -> list[str]:
    """Run the scenario with etcdctl on one fresh server and fastkvctl on another of the same kind."""
    results = []
    for name, tool in (("a", [ETCDCTL]), ("b", FASTKVCTL)):
        (tmp_path / name).mkdir()
        server = make(tmp_path / name)  # type: ignore[operator]
        server.start()
        try:
            results.append(run_scenario(tool, server.url, server.peer_url))
        finally:
            server.stop()
    return differences(results[0], results[1])


def test_same_as_etcdctl_on_reference_etcd(tmp_path: Path) -> None:
    assert _compare_on(harness.reference_etcd, tmp_path) == []


def test_same_as_etcdctl_on_fastkv(tmp_path: Path) -> None:
    assert _compare_on(harness.fastkv, tmp_path) == []


def test_same_as_etcdctl_when_unreachable() -> None:
    url = f"http://127.0.0.1:{harness.free_port()}"
    assert differences(run_unreachable([ETCDCTL], url), run_unreachable(FASTKVCTL, url)) == []


def test_command_help_matches() -> None:
    from tests.cli import etcdctl

    for command in (
        ["get", "--help"],
        ["rm", "--help"],
        ["watch", "--help"],
        ["rmdir", "--help"],
        ["cluster-health", "--help"],
        ["member"],
    ):
        assert fastkvctl(command) == etcdctl(command), command


#: Runs its arguments with SIGINT ignored, as a shell starts a background job or ``nohup`` does.
SIGINT_IGNORED = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "os.execvp(sys.argv[1], sys.argv[1:])",
]


@pytest.fixture(scope="module")
def watched_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.Server]:
    server = harness.fastkv(tmp_path_factory.mktemp("sigint")).start()
    try:
        yield server
    finally:
        server.stop()


def _wait_for_watchers(url: str, count: int, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Until the server counts ``count`` waiting watchers; fails loudly if ``proc`` ends first."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the watch ended before SIGINT (exit {proc.returncode})")
        with urllib.request.urlopen(url + "/v2/stats/store", timeout=5) as resp:
            if json.load(resp)["watchers"] == count:
                return
        time.sleep(0.05)
    raise AssertionError(f"{url} never counted {count} watcher(s)")


def _exit_on_sigint(tool: list[str], url: str, command: list[str]) -> int:
    """Start ``tool command`` with SIGINT ignored, wait until it watches, send SIGINT: its exit code."""
    _wait_for_watchers(url, 0)
    proc = subprocess.Popen([*SIGINT_IGNORED, *tool, "--endpoints", url, *command], env=env_with_repo(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_watchers(url, 1, proc)
        proc.send_signal(signal.SIGINT)
        return proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    "command", [["watch", "/k"], ["watch", "--forever", "/k"], ["exec-watch", "/k", "--", "true"]]
)
def test_sigint_ends_a_watch_started_with_sigint_ignored(
    watched_server: harness.Server, command: list[str]
) -> None:
    """A watch run as a background job still stops on SIGINT, with etcdctl's exit code."""
    expected = _exit_on_sigint([ETCDCTL], watched_server.url, command)
    assert _exit_on_sigint(FASTKVCTL, watched_server.url, command) == expected == 0

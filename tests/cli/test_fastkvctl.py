"""fastkvctl prints what etcdctl prints and exits as it does, for the same command lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import harness
from tests.cli import ETCDCTL, FASTKVCTL, differences, fastkvctl, run_scenario, run_unreachable

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

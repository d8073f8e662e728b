"""Debian's etcdctl (v2 API) sees the same answers from fastkv as from the reference etcd."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import harness
from tests.cli import ETCDCTL, Outcome, differences, run_scenario, run_unreachable

pytestmark = pytest.mark.reference


def _scenario_on(server: harness.Server) -> list[tuple[tuple[str, ...], Outcome]]:
    server.start()
    try:
        return run_scenario([ETCDCTL], server.url, server.peer_url)
    finally:
        server.stop()


def test_every_command_answers_as_on_etcd(tmp_path: Path) -> None:
    (tmp_path / "ref").mkdir()
    (tmp_path / "fk").mkdir()
    expected = _scenario_on(harness.reference_etcd(tmp_path / "ref"))
    got = _scenario_on(harness.fastkv(tmp_path / "fk", name="ref"))
    assert differences(expected, got) == []


def test_unreachable_cluster_exit_codes(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{harness.free_port()}"
    results = dict(run_unreachable([ETCDCTL], url))
    assert results[("get", "foo")].code == 2
    assert results[("--no-sync", "set", "foo", "bar")].code == 4
    assert results[("cluster-health",)].code == 4
    assert "connection refused" in results[("get", "foo")].err

"""Fixtures shared by the suites: real servers, each with its own ports and data directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import harness


@pytest.fixture
def fastkv_server(tmp_path: Path) -> Iterator[harness.Server]:
    server = harness.fastkv(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def etcd_server(tmp_path: Path) -> Iterator[harness.Server]:
    server = harness.reference_etcd(tmp_path).start()
    yield server
    server.stop()

"""What several fleetd test modules share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import harness


@pytest.fixture(scope="module")
def etcd_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a reference etcd of the test module's own, stopped after the module."""
    server = harness.reference_etcd(tmp_path_factory.mktemp("etcd")).start()
    try:
        yield server.url
    finally:
        server.stop()

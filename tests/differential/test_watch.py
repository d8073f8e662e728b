"""Watches compared with the reference etcd: live, history, dir deletes, expiry, streams, the window."""

from __future__ import annotations

import pytest

from tests.differential import scenarios
from tests.differential.conftest import Pair, assert_group

pytestmark = pytest.mark.reference


@pytest.mark.parametrize("group", scenarios.WATCH_GROUPS, ids=lambda g: g.name)
def test_watch(pair: Pair, group: scenarios.Group) -> None:
    assert_group(pair, group)

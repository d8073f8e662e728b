"""The other endpoints and generic HTTP behaviour compared with the reference etcd."""

from __future__ import annotations

import pytest

from tests.differential import scenarios
from tests.differential.conftest import Pair, assert_group

pytestmark = pytest.mark.reference


@pytest.mark.parametrize("group", scenarios.ENDPOINT_GROUPS, ids=lambda g: g.name)
def test_endpoints(pair: Pair, group: scenarios.Group) -> None:
    assert_group(pair, group)

"""Micro benchmark fixtures: the compiled modules on in-memory fakes, never a network or a clock."""

from __future__ import annotations

import pytest

from fastkv._native.store import Store

NOW_NS = 1_700_000_000_000_000_000


class NullTransport:
    """A watcher's connection that accepts every write and keeps only the byte count."""

    __slots__ = ("written",)

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return False


@pytest.fixture
def store() -> Store:
    """A store holding ``/1/bench/k`` = 32 bytes."""
    s = Store()
    s.set("/1/bench/k", False, "v" * 32, 0, False, NOW_NS)
    return s

"""The node's hot loop in compiled code: applying a run of committed store requests (see the
module's documentation for the contract)."""

from typing import Any

from fastkv._native.raft import Entry
from fastkv._native.store import Event, Store
from fastkv._native.watch import WatchHub

def apply_requests(
    store: Store,
    hub: WatchHub,
    waiters: dict[Any, tuple[Any, float]],
    entries: list[Entry],
    start: int,
    applied_index: int,
) -> tuple[int, int, int, str | None]: ...

def notify_watchers(hub: WatchHub, event: Event) -> bool:
    """Tell ``event``'s watchers (a failure is logged, not raised); whether it changed a key
    below ``/0/``."""

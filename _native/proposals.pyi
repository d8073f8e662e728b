"""The proposals of one member on their way through the log (see the module's documentation
for the contract with its owner)."""

from collections.abc import Callable
from typing import Any

STOPPED: str
TAG_REQUEST: bytes
HEAD_SIZE: int

class Proposals:
    """The waiters and the batch of one member's proposals."""

    waiters: dict[Any, tuple[Any, float]]
    batch: list[tuple[Any, bytes]]
    timeout_s: float
    closed: bool
    def __init__(self, first_id: int, clock: Callable[[], int], timeout_s: float,
                 kick: Callable[[], object]) -> None: ...
    def next_id(self) -> int: ...
    def register(self, key: Any, waiter: Any) -> Any: ...
    def add(self, key: Any, payload: bytes, waiter: Any) -> Any: ...
    def submit_request(self, request: bytes, waiter: Any) -> Any: ...
    def take(self) -> list[tuple[Any, bytes]]: ...

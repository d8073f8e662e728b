"""Recognising the plain write (``PUT /v2/keys/<key>`` with a ``value=`` form and only the usual
headers) in compiled code, and its lane from the bytes read to the answer; see the module's
documentation for the exact rules."""

from collections.abc import Callable
from typing import Any

from fastkv._native.store import Event

MAX_BYTES: int

def match_plain_put(data: bytes) -> tuple[str, str] | None: ...

class PlainWrites:
    """The plain write's lane of one server."""

    def __init__(self, node: Any, json_head: Callable[[int], bytes], submit: Callable[[bytes, Any], Any],
                 received: Any, http_date: Callable[[float], bytes]) -> None: ...
    def take(self, data: bytes, conn: Any) -> bool: ...

class PlainWrite:
    """The node's waiter for one plain write."""

    def __init__(self, lane: PlainWrites, conn: Any, key: str) -> None: ...
    def done(self) -> bool: ...
    def set_result(self, event: Event) -> None: ...
    def set_exception(self, error: BaseException) -> None: ...

"""The watch hub: long-poll and stream watchers fed as etcd 3.4's watcherHub feeds them.

Each event is framed once as an HTTP chunk ``b"%x\\r\\n" % len(body) + body + b"\\r\\n"``; every
matching watcher's transport gets that same bytes object (non-stream watchers: chunk plus
``0\\r\\n\\r\\n`` in one write, then they are unregistered and ``on_done()`` is called). The
non-stream watchers one event completes get their write together, through ``deliver`` when set.
"""

from collections.abc import Callable
from typing import Protocol

from fastkv._native.store import Event, EventHistory

class Transport(Protocol):
    def write(self, data: bytes) -> None: ...
    def is_closing(self) -> bool: ...

class Watcher:
    """A waiting ``?wait=true`` request; ``since_index`` 0 = the next event."""

    key: str
    recursive: bool
    stream: bool
    since_index: int
    transport: Transport
    on_done: Callable[[], object]
    registered: bool
    def __init__(
        self,
        key: str,
        recursive: bool,
        stream: bool,
        since_index: int,
        transport: Transport,
        on_done: Callable[[], object],
    ) -> None: ...

class WatchHub:
    """Registered watchers by key; ``count`` is how many (for ``/v2/stats/store``)."""

    history: EventHistory
    count: int
    deliver: Callable[[list[Transport], bytes], None] | None
    def __init__(
        self, history: EventHistory, deliver: Callable[[list[Transport], bytes], None] | None = None
    ) -> None:
        """``deliver(transports, data)`` writes ``data`` to each of ``transports`` (the ones an
        event completes, in order); None: each gets ``transport.write(data)``."""
    def watch(self, watcher: Watcher, current_index: int) -> Event | None:
        """A matching history event (the watcher is then not registered, even a stream one),
        or None after registering. V2Error 401 (index = ``current_index``) when cleared."""
    def notify(self, event: Event) -> None:
        """Deliver a store event: removed paths first (any watcher there matches), then every
        ancestor of the key down to the key (recursive or exact-key watchers; hidden ``/_``
        segments below the watched path skipped). Refresh events are never delivered.
        Watchers whose transport is closing are dropped without ``on_done``."""
    def remove(self, watcher: Watcher) -> None:
        """Forget a watcher whose connection closed. Idempotent."""

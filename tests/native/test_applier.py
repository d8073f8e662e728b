"""The compiled apply loop: what it applies, whom it answers, where it stops."""

from __future__ import annotations

import struct
from typing import Any

from fastkv._native.applier import apply_requests
from fastkv._native.raft import Entry, EntryConfChange, EntryNormal
from fastkv._native.store import OP_DELETE, OP_QGET, OP_SET, Store, V2Error, encode_request
from fastkv._native.watch import Watcher, WatchHub

NOW_NS = 1_700_000_000_000_000_000


def request(index: int, pid: int, op: int, path: str, value: str = "", term: int = 2) -> Entry:
    data = b"N" + struct.pack(">QQ", pid, NOW_NS) + encode_request(op, path, value)
    return Entry(term, index, EntryNormal, data)


class Waiter:
    """A proposer's waiter, as the node keeps them."""

    def __init__(self) -> None:
        self.outcomes: list[tuple[str, Any]] = []

    def done(self) -> bool:
        return bool(self.outcomes)

    def set_result(self, result: Any) -> None:
        self.outcomes.append(("result", result))

    def set_exception(self, error: BaseException) -> None:
        self.outcomes.append(("error", error))


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False


def setup() -> tuple[Store, WatchHub, dict[Any, tuple[Waiter, float]]]:
    store = Store()
    return store, WatchHub(store.history), {}


def test_a_run_of_requests_is_applied_and_each_proposer_answered() -> None:
    store, hub, waiters = setup()
    mine = {pid: Waiter() for pid in (7, 8, 9)}
    waiters.update({pid: (w, 0.0) for pid, w in mine.items()})
    entries = [request(5, 7, OP_SET, "/1/a", "x"), request(6, 8, OP_SET, "/1/a", "y"),
               request(7, 9, OP_DELETE, "/1/missing")]
    assert apply_requests(store, hub, waiters, entries, 0, 4) == (3, 7, 2, None)
    assert waiters == {}
    assert [kind for kind, _ in mine[7].outcomes] == ["result"]
    assert mine[7].outcomes[0][1].created and mine[8].outcomes[0][1].action == "set"
    kind, error = mine[9].outcomes[0]
    assert kind == "error" and isinstance(error, V2Error) and error.code == 100
    assert store.node("/1/a").value == "y"
    assert store.index == 2  # the failed delete changed nothing


def test_it_skips_what_was_applied_and_answers_nobody_it_does_not_know() -> None:
    store, hub, waiters = setup()
    entries = [request(3, 1, OP_SET, "/1/old", "x"), request(4, 2, OP_SET, "/1/new", "y")]
    assert apply_requests(store, hub, waiters, entries, 0, 3) == (2, 4, 2, None)
    assert store.node("/1/old") is None and store.node("/1/new").value == "y"
    assert apply_requests(store, hub, waiters, entries, 0, 4) == (2, 4, 0, None)  # nothing new


def test_it_stops_at_anything_else_for_the_node() -> None:
    store, hub, waiters = setup()
    sync = Entry(2, 5, EntryNormal, b"S" + struct.pack(">QQ", 3, NOW_NS))  # TTL expiry
    entries = [request(1, 1, OP_SET, "/1/a", "x"), Entry(2, 2, EntryNormal, b""),
               request(3, 2, OP_SET, "/1/b", "y"), Entry(2, 4, EntryConfChange, b"cc"), sync,
               request(6, 4, OP_SET, "/1/c", "z")]
    assert apply_requests(store, hub, waiters, entries, 0, 0) == (1, 1, 2, None)
    assert apply_requests(store, hub, waiters, entries, 2, 2) == (3, 3, 2, None)
    assert apply_requests(store, hub, waiters, entries, 4, 3) == (4, 3, 0, None)
    assert apply_requests(store, hub, waiters, entries, 5, 5) == (6, 6, 2, None)
    assert store.index == 3


def test_a_change_below_0_is_handed_back_right_after_it() -> None:
    store, hub, waiters = setup()
    entries = [request(1, 1, OP_SET, "/0/version", "3.4.0"), request(2, 2, OP_SET, "/1/a", "x")]
    assert apply_requests(store, hub, waiters, entries, 0, 0) == (1, 1, 2, "/0/version")
    assert apply_requests(store, hub, waiters, entries, 1, 1) == (2, 2, 2, None)


def test_watchers_are_told_and_reads_tell_nobody() -> None:
    store, hub, waiters = setup()
    transport = Transport()
    done: list[int] = []
    hub.watch(Watcher("/1/a", False, False, 0, transport, lambda: done.append(1)), store.index)
    waiter = Waiter()
    waiters[2] = (waiter, 0.0)
    entries = [request(1, 1, OP_QGET, "/1"), request(2, 2, OP_SET, "/1/a", "x")]
    apply_requests(store, hub, waiters, entries, 0, 0)
    assert done == [1] and len(transport.written) == 1 and b'"action":"set"' in transport.written[0]
    assert waiter.outcomes[0][1].key == "/1/a"


def test_a_settled_waiter_is_left_alone_and_a_broken_watcher_stalls_nothing() -> None:
    store, hub, waiters = setup()
    settled = Waiter()
    settled.set_result("timed out earlier")
    waiters[1] = (settled, 0.0)

    class Broken(Transport):
        def write(self, data: bytes) -> None:
            raise RuntimeError("broken")

    hub.watch(Watcher("/1/a", False, False, 0, Broken(), lambda: None), store.index)
    assert apply_requests(store, hub, waiters, [request(1, 1, OP_SET, "/1/a", "x")], 0, 0) == (1, 1, 2, None)
    assert settled.outcomes == [("result", "timed out earlier")]
    assert store.node("/1/a").value == "x"

"""The watch hub fed by the real store; transports are in-memory fakes that collect writes."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from fastkv._native.store import Store, V2Error
from fastkv._native.watch import Watcher, WatchHub

NOW = 1_794_995_200 * 10**9
LAST = b"0\r\n\r\n"


@dataclass
class FakeTransport:
    """Collects what the hub writes; ``closing`` mimics a connection going away."""

    writes: list[bytes] = field(default_factory=list)
    closing: bool = False
    done: int = 0

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def on_done(self) -> None:
        self.done += 1


class Bench:
    """A store and a hub wired as the server wires them: every event goes to ``notify``."""

    def __init__(self) -> None:
        self.store = Store()
        self.hub = WatchHub(self.store.history)

    def watch(self, key: str, recursive: bool = False, stream: bool = False,
              since: int = 0) -> tuple[Watcher, FakeTransport]:
        transport = FakeTransport()
        watcher = Watcher("/1" + key, recursive, stream, since, transport, transport.on_done)
        assert self.hub.watch(watcher, self.store.index) is None
        return watcher, transport

    def set(self, key: str, value: str = "v", expire_ns: int = 0, refresh: bool = False) -> bytes:
        event = self.store.set("/1" + key, False, value, expire_ns, refresh, NOW)
        self.hub.notify(event)
        return event.body

    def delete(self, key: str, recursive: bool = False) -> bytes:
        event = self.store.delete("/1" + key, recursive, recursive, NOW)
        self.hub.notify(event)
        return event.body


def chunk(body: bytes) -> bytes:
    return b"%x\r\n" % len(body) + body + b"\r\n"


def test_long_poll_gets_one_chunk_then_the_end_and_is_done() -> None:
    bench = Bench()
    _, transport = bench.watch("/foo")
    assert bench.hub.count == 1
    body = bench.set("/foo", "bar")
    assert transport.writes == [chunk(body) + LAST]
    assert transport.writes[0] == b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    assert transport.done == 1 and bench.hub.count == 0
    bench.set("/foo", "again")
    assert len(transport.writes) == 1


def test_fan_out_writes_the_same_bytes_object_to_everyone() -> None:
    bench = Bench()
    polls = [bench.watch("/k")[1] for _ in range(3)] + [bench.watch("/", recursive=True)[1]]
    streams = [bench.watch("/k", stream=True)[1] for _ in range(2)]
    body = bench.set("/k")
    first = polls[0].writes[0]
    assert first == chunk(body) + LAST
    assert all(t.writes[0] is first for t in polls)
    assert all(t.writes == [chunk(body)] and t.writes[0] is streams[0].writes[0] for t in streams)
    assert [t.done for t in polls + streams] == [1, 1, 1, 1, 0, 0]
    assert bench.hub.count == 2  # stream watchers stay


def test_deliver_gets_the_long_polls_one_event_completes_together_before_their_on_done() -> None:
    bench = Bench()
    calls: list[tuple[list[FakeTransport], bytes, list[int]]] = []
    polls = [bench.watch("/k")[1], bench.watch("/", recursive=True)[1], bench.watch("/k")[1]]
    _, stream = bench.watch("/k", stream=True)
    _, elsewhere = bench.watch("/other")
    bench.hub.deliver = lambda transports, data: calls.append((transports, data, [t.done for t in polls]))
    body = bench.set("/k")
    # matched in the hub's order: "/" (recursive) before the key itself, each list in order
    assert [(transports, data) for transports, data, _ in calls] == [([polls[1], polls[0], polls[2]],
                                                                      chunk(body) + LAST)]
    assert calls[0][2] == [0, 0, 0]  # none was done yet when deliver ran
    assert [t.done for t in polls] == [1, 1, 1] and all(t.writes == [] for t in polls)
    assert stream.writes == [chunk(body)]  # a stream watcher is written to as before
    assert elsewhere.writes == [] and bench.hub.count == 2
    again = bench.set("/k")
    assert len(calls) == 1  # an event that completes no long poll does not call deliver
    assert stream.writes == [chunk(body), chunk(again)]


def test_stream_watchers_get_one_chunk_per_event() -> None:
    bench = Bench()
    _, transport = bench.watch("/s", stream=True)
    bodies = [bench.set("/s", str(i)) for i in range(3)]
    assert transport.writes == [chunk(b) for b in bodies]
    assert transport.done == 0


def test_recursive_and_exact_matching() -> None:
    bench = Bench()
    _, exact = bench.watch("/d")
    _, recursive = bench.watch("/d", recursive=True)
    _, user_root = bench.watch("", recursive=True)
    _, other = bench.watch("/dx", recursive=True)
    body = bench.set("/d/x/y")
    assert exact.writes == [] and other.writes == []
    assert recursive.writes == [chunk(body) + LAST] and user_root.writes == recursive.writes


def test_hidden_keys_below_the_watched_path_are_not_delivered() -> None:
    bench = Bench()
    _, recursive = bench.watch("/d", recursive=True)
    _, exact_hidden = bench.watch("/d/_x")
    _, inside_hidden = bench.watch("/d/_hd", recursive=True)
    bench.set("/d/sub/_h/y")
    assert recursive.writes == [] and exact_hidden.writes == [] and inside_hidden.writes == []
    hidden = bench.set("/d/_x")
    assert recursive.writes == [] and exact_hidden.writes == [chunk(hidden) + LAST]
    below = bench.set("/d/_hd/y")  # hidden relative to /d, visible to a watcher on /d/_hd itself
    assert recursive.writes == [] and inside_hidden.writes == [chunk(below) + LAST]
    visible = bench.set("/d/sub/y_")
    assert recursive.writes == [chunk(visible) + LAST]


def test_dir_delete_reaches_watchers_of_every_removed_key() -> None:
    bench = Bench()
    bench.set("/wd/a/b")
    _, deep = bench.watch("/wd/a/b")
    _, middle = bench.watch("/wd/a")
    _, parent = bench.watch("")
    body = bench.delete("/wd", recursive=True)
    assert b'"node":{"key":"/wd","dir":true' in body
    assert deep.writes == [chunk(body) + LAST] and middle.writes == deep.writes
    assert parent.writes == []  # non-recursive above the deleted dir: nothing


def test_stream_watcher_on_a_file_sees_its_delete_twice() -> None:
    bench = Bench()
    bench.set("/f")
    _, stream = bench.watch("/f", stream=True)
    body = bench.delete("/f")
    assert stream.writes == [chunk(body), chunk(body)]
    assert stream.writes[0] is stream.writes[1]


def test_expire_and_compare_and_delete_notify_with_deleted_semantics() -> None:
    bench = Bench()
    bench.store.set("/1/e/x", False, "v", 0, False, NOW)
    bench.store.update("/1/e", "", NOW + 10**9, False, NOW)
    _, child = bench.watch("/e/x")
    (expired,) = bench.store.delete_expired(NOW + 10**9)
    bench.hub.notify(expired)
    assert child.writes == [chunk(expired.body) + LAST]
    bench.set("/c")
    _, stream = bench.watch("/c", stream=True)
    cad = bench.store.compare_and_delete("/1/c", "v", 0, NOW)
    bench.hub.notify(cad)
    assert stream.writes == [chunk(cad.body)] * 2


def test_refresh_is_never_delivered() -> None:
    bench = Bench()
    bench.set("/t", "a", NOW + 5 * 10**9)
    _, poll = bench.watch("/t")
    bench.set("/t", "", NOW + 50 * 10**9, refresh=True)
    assert poll.writes == [] and bench.hub.count == 1
    body = bench.set("/t", "b")
    assert poll.writes == [chunk(body) + LAST]


def test_since_index_in_the_future_skips_earlier_events() -> None:
    bench = Bench()
    _, poll = bench.watch("/k", since=bench.store.index + 3)
    bench.set("/k", "1")
    bench.set("/k", "2")
    assert poll.writes == []
    body = bench.set("/k", "3")
    assert poll.writes == [chunk(body) + LAST]


def test_history_hit_answers_at_once_without_registering() -> None:
    bench = Bench()
    first = bench.set("/h", "1")
    bench.set("/h", "2")
    for stream in (False, True):
        transport = FakeTransport()
        watcher = Watcher("/1/h", False, stream, 1, transport, transport.on_done)
        event = bench.hub.watch(watcher, bench.store.index)
        assert event is not None and event.body == first
        assert not watcher.registered
    assert bench.hub.count == 0


def test_cleared_history_raises_401_with_the_current_index() -> None:
    store = Store(history_capacity=2)
    hub = WatchHub(store.history)
    for i in range(5):
        store.set("/1/k", False, str(i), 0, False, NOW)
    transport = FakeTransport()
    with pytest.raises(V2Error) as info:
        hub.watch(Watcher("/1/k", False, False, 2, transport, transport.on_done), 7)
    assert (info.value.code, info.value.index, info.value.cause) == (
        401, 7, "the requested history has been cleared [4/2]")


def test_remove_is_idempotent_and_closing_transports_are_dropped() -> None:
    bench = Bench()
    watcher, gone = bench.watch("/k")
    _, closing = bench.watch("/k")
    _, alive = bench.watch("/k", stream=True)
    closing.closing = True
    bench.hub.remove(watcher)
    bench.hub.remove(watcher)
    assert bench.hub.count == 2
    body = bench.set("/k")
    assert gone.writes == [] and closing.writes == [] and closing.done == 0
    assert alive.writes == [chunk(body)]
    assert bench.hub.count == 1


def test_on_done_may_remove_again() -> None:
    bench = Bench()
    transport = FakeTransport()
    watcher = Watcher("/1/k", False, False, 0, transport, lambda: bench.hub.remove(watcher))
    assert bench.hub.watch(watcher, bench.store.index) is None
    bench.set("/k")
    assert bench.hub.count == 0 and len(transport.writes) == 1

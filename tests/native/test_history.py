"""The event history window that ``waitIndex`` watches scan (etcd's EventHistory)."""

from __future__ import annotations

import pytest

from fastkv._native.store import Event, EventHistory, Store, V2Error

NOW = 1_794_995_200 * 10**9


def test_window_of_1000_and_cleared_message() -> None:
    store = Store()
    for i in range(1100):
        store.set("/1/k", False, str(i), 0, False, NOW)
    current = store.index
    history = store.history
    assert (history.start_index, history.last_index, len(history)) == (current - 999, current, 1000)
    with pytest.raises(V2Error) as info:
        history.scan("/1/k", False, current - 1000)
    err = info.value
    assert (err.code, err.index, err.status) == (401, current, 400)
    assert err.body == (
        b'{"errorCode":401,"message":"The event in requested index is outdated and cleared",'
        b'"cause":"the requested history has been cleared [%d/%d]","index":%d}\n'
        % (current - 999, current - 1000, current)
    )
    oldest = history.scan("/1/k", False, current - 999)
    assert oldest is not None and oldest.index == current - 999


def test_scan_returns_first_match_at_or_after_index() -> None:
    store = Store()
    store.set("/1/a", False, "1", 0, False, NOW)  # 1
    store.set("/1/b", False, "1", 0, False, NOW)  # 2
    store.set("/1/a", False, "2", 0, False, NOW)  # 3
    history = store.history
    assert history.scan("/1/a", False, 1).index == 1
    assert history.scan("/1/a", False, 2).index == 3
    assert history.scan("/1/b", False, 3) is None
    assert history.scan("/1/a", False, 4) is None  # the future: the watcher waits


def test_recursive_and_hidden_and_prefix_rules() -> None:
    store = Store()
    store.set("/1/dir/_hidden", False, "h", 0, False, NOW)  # 1
    store.set("/1/dirx", False, "x", 0, False, NOW)  # 2
    store.set("/1/dir/sub/k", False, "k", 0, False, NOW)  # 3
    history = store.history
    assert history.scan("/1/dir", True, 1).index == 1  # history scans do not hide "_" keys
    assert history.scan("/1/dir", True, 2).index == 3  # "/1/dirx" is not below "/1/dir"
    assert history.scan("/1/dir", False, 1) is None
    assert history.scan("/1", True, 1).index == 1
    assert history.scan("/1/", True, 2).index == 2


def test_directory_delete_matches_watchers_below_and_string_prefixes() -> None:
    store = Store()
    store.set("/1/foo/a/b", False, "v", 0, False, NOW)  # 1
    store.delete("/1/foo", True, True, NOW)  # 2
    store.set("/1/file", False, "v", 0, False, NOW)  # 3
    store.delete("/1/file", False, False, NOW)  # 4
    history = store.history
    assert history.scan("/1/foo/a/b", False, 2).index == 2
    assert history.scan("/1/foobar", False, 2).index == 2  # plain string prefix, as etcd
    assert history.scan("/1/filex", False, 3) is None  # only directory deletes match by prefix


def test_expire_of_a_dir_matches_like_a_delete() -> None:
    store = Store()
    store.set("/1/t", True, "", NOW + 10**9, False, NOW)  # 1
    store.set("/1/t/x", False, "v", 0, False, NOW)  # 2
    (expired,) = store.delete_expired(NOW + 10**9)
    assert store.history.scan("/1/t/x", False, 3) is expired


def test_refresh_events_take_an_index_but_never_match() -> None:
    store = Store()
    store.set("/1/t", False, "a", NOW + 5 * 10**9, False, NOW)  # 1
    store.update("/1/t", "", NOW + 50 * 10**9, True, NOW)  # 2, refresh
    store.set("/1/t", False, "b", 0, False, NOW)  # 3
    assert store.history.last_index == 3
    assert store.history.scan("/1/t", False, 2).index == 3


def test_standalone_history_ring() -> None:
    history = EventHistory(3)
    assert history.scan("/1/a", False, 1) is None
    for index in range(1, 6):
        history.add(Event("set", "/1/a", index, index))
    assert [e.index for e in history.events()] == [3, 4, 5]
    assert (history.start_index, history.last_index) == (3, 5)
    assert history.scan("/1/a", False, 4).index == 4
    with pytest.raises(V2Error) as info:
        history.scan("/1/a", False, 2)
    assert info.value.cause == "the requested history has been cleared [3/2]"

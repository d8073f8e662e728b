"""The compiled v2 store: operations, errors and exact JSON bodies, as etcd 3.4 answers them.

Indices follow the spec's observed examples: a fresh etcd spends indices 1-3 on cluster data,
so the first user write is 4. Time is passed in; nothing sleeps.
"""

from __future__ import annotations

import gc

import pytest

from fastkv._native.store import (
    OP_CAD,
    OP_CAS,
    OP_CREATE,
    OP_DELETE,
    OP_QGET,
    OP_SET,
    OP_UNIQUE,
    OP_UPDATE,
    Store,
    V2Error,
    encode_request,
    encode_set,
)

NOW = 1_794_995_200 * 10**9  # 2026-11-18T09:46:40Z
S = 10**9


def fresh() -> Store:
    """A store whose next write gets index 4, as on a fresh etcd member."""
    store = Store()
    for i in range(3):
        store.set(f"/0/members/{i}", False, "m", 0, False, NOW)
    return store


def put(store: Store, key: str, value: str = "") -> bytes:
    """A plain PUT of a user key (no TTL)."""
    return store.set("/1" + key, False, value, 0, False, NOW).body


def error(call: object, *args: object) -> V2Error:
    with pytest.raises(V2Error) as info:
        call(*args)  # type: ignore[operator]
    return info.value


def test_set_new_then_existing_resets_created_index() -> None:
    store = fresh()
    first = store.set("/1/foo", False, "bar", 0, False, NOW)
    assert first.body == (
        b'{"action":"set","node":{"key":"/foo","value":"bar","modifiedIndex":4,"createdIndex":4}}\n')
    assert (first.created, first.index, first.etcd_index, first.action) == (True, 4, 4, "set")
    second = store.set("/1/foo", False, "baz", 0, False, NOW)
    assert second.body == (
        b'{"action":"set","node":{"key":"/foo","value":"baz","modifiedIndex":5,"createdIndex":5},'
        b'"prevNode":{"key":"/foo","value":"bar","modifiedIndex":4,"createdIndex":4}}\n'
    )
    assert not second.created
    assert store.index == 5


def test_get_missing_is_404_with_first_missing_component() -> None:
    store = fresh()
    put(store, "/foo", "bar")
    err = error(store.get, "/1/missing", False, False, NOW)
    assert (err.code, err.status, err.index) == (100, 404, 4)
    assert err.body == b'{"errorCode":100,"message":"Key not found","cause":"/missing","index":4}\n'
    assert error(store.get, "/1/ctl/none/deeper", False, False, NOW).cause == "/ctl"


def test_create_update_cas_sequence_and_errors() -> None:
    store = fresh()
    put(store, "/foo", "bar")
    put(store, "/foo", "baz")
    created = store.create("/1/c1", False, "v1", False, 0, NOW)
    assert created.created and created.body.startswith(b'{"action":"create","node":{"key":"/c1","value":"v1"')
    exists = error(store.create, "/1/c1", False, "v1", False, 0, NOW)
    assert exists.body == b'{"errorCode":105,"message":"Key already exists","cause":"/c1","index":6}\n'
    assert exists.status == 412
    assert error(store.update, "/1/u1", "v1", 0, False, NOW).cause == "/u1"
    updated = store.update("/1/c1", "v2", 0, False, NOW)
    assert updated.body == (
        b'{"action":"update","node":{"key":"/c1","value":"v2","modifiedIndex":7,"createdIndex":6},'
        b'"prevNode":{"key":"/c1","value":"v1","modifiedIndex":6,"createdIndex":6}}\n'
    )
    swapped = store.compare_and_swap("/1/c1", "v2", 0, "v3", 0, False, NOW)
    assert swapped.body.startswith(
        b'{"action":"compareAndSwap","node":{"key":"/c1","value":"v3","modifiedIndex":8,"createdIndex":6}'
    )
    cases = [("zzz", 0, "[zzz != v3]"), (None, 1, "[1 != 8]"), ("q", 1, "[q != v3] [1 != 8]")]
    for prev_value, prev_index, cause in cases:
        err = error(store.compare_and_swap, "/1/c1", prev_value, prev_index, "x", 0, False, NOW)
        assert (err.code, err.status, err.cause, err.index) == (101, 412, cause, 8)
    assert store.index == 8


def test_directories_and_not_a_file_or_directory() -> None:
    store = fresh()
    for _ in range(5):
        store.set("/0/pad", False, "x", 0, False, NOW)  # first user write at 9 here
    store.set("/1/x", False, "x", 0, False, NOW)
    made = store.set("/1/d1", True, "", 0, False, NOW)
    assert made.body == (
        b'{"action":"set","node":{"key":"/d1","dir":true,"modifiedIndex":10,"createdIndex":10}}\n')
    assert error(store.set, "/1/d1", True, "", 0, False, NOW).body == (
        b'{"errorCode":102,"message":"Not a file","cause":"/d1","index":10}\n')
    assert error(store.set, "/1/d1", False, "x", 0, False, NOW).code == 102
    assert error(store.create, "/1/d1", True, "", False, 0, NOW).code == 105
    store.set("/1/d1/k1", False, "a", 0, False, NOW)
    for call, args in ((store.set, ("/1/d1/k1/sub", False, "v", 0, False, NOW)),
                       (store.get, ("/1/d1/k1/sub", False, False, NOW)),
                       (store.create, ("/1/d1/k1/sub", False, "v", False, 0, NOW))):
        err = error(call, *args)
        assert err.body == b'{"errorCode":104,"message":"Not a directory","cause":"/d1/k1","index":11}\n'
        assert err.status == 400
    assert store.get("/1/d1", False, False, NOW).body == (
        b'{"action":"get","node":{"key":"/d1","dir":true,"nodes":[{"key":"/d1/k1","value":"a",'
        b'"modifiedIndex":11,"createdIndex":11}],"modifiedIndex":10,"createdIndex":10}}\n'
    )


def test_delete_rules() -> None:
    store = fresh()
    store.set("/1/d1/k1", False, "a", 0, False, NOW)  # 4: creates /d1 at 4 too
    store.set("/1/d1/_hidden", False, "h", 0, False, NOW)
    assert error(store.delete, "/1/d1", False, False, NOW).body == (
        b'{"errorCode":102,"message":"Not a file","cause":"/d1","index":5}\n')
    not_empty = error(store.delete, "/1/d1", True, False, NOW)
    assert (not_empty.code, not_empty.status, not_empty.cause) == (108, 403, "/d1")
    deleted = store.delete("/1/d1/k1", True, False, NOW)  # dir=true on a file: a normal delete
    assert deleted.body == (
        b'{"action":"delete","node":{"key":"/d1/k1","modifiedIndex":6,"createdIndex":4},'
        b'"prevNode":{"key":"/d1/k1","value":"a","modifiedIndex":4,"createdIndex":4}}\n'
    )
    assert deleted.removed == ("/1/d1/k1",)
    gone = store.delete("/1/d1", False, True, NOW)
    assert gone.body == (
        b'{"action":"delete","node":{"key":"/d1","dir":true,"modifiedIndex":7,"createdIndex":4},'
        b'"prevNode":{"key":"/d1","dir":true,"modifiedIndex":4,"createdIndex":4}}\n'
    )
    assert gone.removed == ("/1/d1/_hidden", "/1/d1")
    assert error(store.get, "/1/d1/_hidden", False, False, NOW).cause == "/d1"


def test_compare_and_delete() -> None:
    store = fresh()
    store.set("/1/cad2", False, "x", 0, False, NOW)
    store.set("/1/dir", True, "", 0, False, NOW)
    assert error(store.compare_and_delete, "/1/cad2", "y", 0, NOW).cause == "[y != x]"
    assert error(store.compare_and_delete, "/1/dir", None, 5, NOW).code == 102
    root = error(store.compare_and_delete, "/1", "x", 0, NOW)
    assert root.body == b'{"errorCode":102,"message":"Not a file","index":5}\n'
    done = store.compare_and_delete("/1/cad2", "x", 4, NOW)
    assert done.body == (
        b'{"action":"compareAndDelete","node":{"key":"/cad2","modifiedIndex":6,"createdIndex":4},'
        b'"prevNode":{"key":"/cad2","value":"x","modifiedIndex":4,"createdIndex":4}}\n'
    )
    assert done.removed == ("/1/cad2",)


def test_root_is_read_only_but_readable_and_postable() -> None:
    store = fresh()
    assert store.get("/1", False, False, NOW).body == b'{"action":"get","node":{"dir":true}}\n'
    for call, args in ((store.set, ("/1", False, "x", 0, False, NOW)),
                       (store.update, ("/1", "x", 0, False, NOW)),
                       (store.create, ("/1", False, "x", False, 0, NOW)),
                       (store.compare_and_swap, ("/1", "a", 0, "x", 0, False, NOW)),
                       (store.delete, ("/1", True, True, NOW))):
        err = error(call, *args)
        assert err.body == b'{"errorCode":107,"message":"Root is read only","cause":"/","index":3}\n'
    posted = store.create("/1", False, "inroot", True, 0, NOW)
    assert posted.body == (
        b'{"action":"create","node":{"key":"/00000000000000000004","value":"inroot",'
        b'"modifiedIndex":4,"createdIndex":4}}\n'
    )
    assert store.get("/1/", False, False, NOW).body == (
        b'{"action":"get","node":{"dir":true,"nodes":[{"key":"/00000000000000000004","value":"inroot",'
        b'"modifiedIndex":4,"createdIndex":4}]}}\n'
    )


def test_in_order_keys_use_the_global_index() -> None:
    store = fresh()
    first = store.create("/1/queue", False, "job1", True, 0, NOW)
    store.set("/1/other", False, "x", 0, False, NOW)
    second = store.create("/1/queue", False, "job2", True, 0, NOW)
    assert (first.key, second.key) == ("/1/queue/00000000000000000004", "/1/queue/00000000000000000006")
    assert first.created and second.created
    d = store.create("/1/queue", True, "", True, NOW + 100 * S, NOW)
    assert d.body == (
        b'{"action":"create","node":{"key":"/queue/00000000000000000007","dir":true,'
        b'"expiration":"2026-11-18T09:48:20Z","ttl":100,"modifiedIndex":7,"createdIndex":7}}\n'
    )
    store.set("/1/prec", False, "f", 0, False, NOW)
    assert error(store.create, "/1/prec", False, "x", True, 0, NOW).cause == "/prec"


def test_dir_replaces_file_and_update_of_file_with_empty_value() -> None:
    store = fresh()
    store.set("/1/prec", False, "f", 0, False, NOW)
    replaced = store.set("/1/prec", True, "", 0, False, NOW)
    assert replaced.body == (
        b'{"action":"set","node":{"key":"/prec","dir":true,"modifiedIndex":5,"createdIndex":5},'
        b'"prevNode":{"key":"/prec","value":"f","modifiedIndex":4,"createdIndex":4}}\n'
    )
    assert not replaced.created
    store.set("/1/fileq", False, "v", 0, False, NOW)
    assert store.update("/1/fileq", "", 0, False, NOW).value == ""  # GH518: dir=true update


def test_dir_ttl_update_keeps_stored_modified_index() -> None:
    store = fresh()
    store.set("/1/dd", True, "", NOW + 100 * S, False, NOW)
    event = store.update("/1/dd", "", NOW + 200 * S, False, NOW)
    assert event.body == (
        b'{"action":"update","node":{"key":"/dd","dir":true,"expiration":"2026-11-18T09:50:00Z",'
        b'"ttl":200,"modifiedIndex":5,"createdIndex":4},"prevNode":{"key":"/dd","dir":true,'
        b'"expiration":"2026-11-18T09:48:20Z","ttl":100,"modifiedIndex":4,"createdIndex":4}}\n'
    )
    assert store.get("/1/dd", False, False, NOW).body == (
        b'{"action":"get","node":{"key":"/dd","dir":true,"expiration":"2026-11-18T09:50:00Z",'
        b'"ttl":200,"modifiedIndex":4,"createdIndex":4}}\n'
    )
    assert error(store.update, "/1/dd", "x", 0, False, NOW).body == (
        b'{"errorCode":102,"message":"Not a file","cause":"/dd","index":5}\n')
    store.update("/1/dd", "", 0, False, NOW)
    assert store.next_expiry_ns() == 0
    assert store.delete_expired(NOW + 1000 * S) == []


def test_ttl_is_ceiled_and_expiration_trimmed() -> None:
    store = fresh()
    exp = NOW + 5 * S + 806_676_802
    event = store.set("/1/t1", False, "a", exp, False, NOW + 806_676_802)  # exactly 5 s left
    assert event.body == (
        b'{"action":"set","node":{"key":"/t1","value":"a","expiration":"2026-11-18T09:46:45.806676802Z",'
        b'"ttl":5,"modifiedIndex":4,"createdIndex":4}}\n'
    )
    assert b'"ttl":6,' in store.get("/1/t1", False, False, NOW + 806_676_801).body  # a nanosecond more
    store.set("/1/t2", False, "a", NOW + 5 * S + 500_000_000, False, NOW)
    assert b'"expiration":"2026-11-18T09:46:45.5Z","ttl":6,' in store.get("/1/t2", False, False, NOW).body
    store.set("/1/t3", False, "a", NOW, False, NOW)  # ttl=0: expires now, no ttl field
    now_body = store.get("/1/t3", False, False, NOW).body
    assert b'"expiration":"2026-11-18T09:46:40Z","modifiedIndex"' in now_body
    late = store.get("/1/t2", False, False, NOW + 7 * S)
    assert b'"ttl":-1,' in late.body


def test_ttl_clearing_and_refresh() -> None:
    store = fresh()
    store.set("/1/t", False, "a", NOW + 50 * S, False, NOW)
    cleared = store.update("/1/t", "b", 0, False, NOW)
    assert b"expiration" not in cleared.body.split(b"prevNode")[0]
    assert store.next_expiry_ns() == 0
    store.set("/1/t3", False, "a", NOW + 5 * S, False, NOW)
    refreshed = store.update("/1/t3", "", NOW + 50 * S, True, NOW)
    assert refreshed.refresh and refreshed.value == "a" and refreshed.action == "update"
    assert (b'"value":"a","expiration":"2026-11-18T09:47:30Z","ttl":50,"modifiedIndex":7,"createdIndex":6}'
            in refreshed.body)
    recreated = store.set("/1/t3", False, "", NOW + 60 * S, True, NOW)
    assert recreated.refresh and not recreated.created
    assert b'{"key":"/t3","value":"a","expiration":"2026-11-18T09:47:40Z","ttl":60,"modifiedIndex":8,' \
           b'"createdIndex":8}' in recreated.body
    cas = store.compare_and_swap("/1/t3", "a", 0, "", NOW + 70 * S, True, NOW)
    assert cas.refresh and cas.value == "a"
    for call, args in ((store.set, ("/1/missing", False, "", NOW, True, NOW)),
                       (store.update, ("/1/missing", "", NOW, True, NOW))):
        assert error(call, *args).code == 100
    assert store.history.last_index == store.index == 9


def test_expire_removes_subtree_and_records_events() -> None:
    store = fresh()
    store.set("/1/exp1", False, "1", NOW + 2 * S, False, NOW)
    store.set("/1/dir", True, "", NOW + 3 * S, False, NOW)
    store.set("/1/dir/a/b", False, "x", NOW + 10 * S, False, NOW)
    assert store.next_expiry_ns() == NOW + 2 * S
    assert store.delete_expired(NOW + 2 * S - 1) == []
    first = store.delete_expired(NOW + 2 * S + 300_000_000)
    assert [e.body for e in first] == [
        b'{"action":"expire","node":{"key":"/exp1","modifiedIndex":7,"createdIndex":4},"prevNode":'
        b'{"key":"/exp1","value":"1","expiration":"2026-11-18T09:46:42Z","modifiedIndex":4,"createdIndex":4}}\n'
    ]
    second = store.delete_expired(NOW + 4 * S)
    assert [(e.action, e.key, e.index, e.is_dir) for e in second] == [("expire", "/1/dir", 8, True)]
    assert second[0].removed == ("/1/dir/a/b", "/1/dir/a", "/1/dir")
    assert store.next_expiry_ns() == 0
    assert error(store.get, "/1/dir/a/b", False, False, NOW).cause == "/dir"
    assert store.stats()["expireCount"] == 2


def test_listing_hides_underscore_children_and_sorts() -> None:
    store = fresh()
    for key in ("/d/b", "/d/_h", "/d/a/z", "/d/a/_y", "/d/c"):
        store.set("/1" + key, False, "v", 0, False, NOW)
    unsorted = store.get("/1/d", True, False, NOW).body
    assert b"_h" not in unsorted and b"_y" not in unsorted
    assert unsorted.index(b'"/d/b"') < unsorted.index(b'"/d/a"') < unsorted.index(b'"/d/c"')
    flat = store.get("/1/d", False, True, NOW).body
    assert flat == (
        b'{"action":"get","node":{"key":"/d","dir":true,"nodes":['
        b'{"key":"/d/a","dir":true,"modifiedIndex":6,"createdIndex":6},'
        b'{"key":"/d/b","value":"v","modifiedIndex":4,"createdIndex":4},'
        b'{"key":"/d/c","value":"v","modifiedIndex":8,"createdIndex":8}],"modifiedIndex":4,"createdIndex":4}}\n'
    )
    deep = store.get("/1/d", True, True, NOW).body
    assert b'{"key":"/d/a","dir":true,"nodes":[{"key":"/d/a/z","value":"v","modifiedIndex":6,' in deep
    assert store.get("/1/d/_h", False, False, NOW).value == "v"
    store.set("/1/e/_only", False, "v", 0, False, NOW)
    assert b"nodes" not in store.get("/1/e", True, False, NOW).body


@pytest.mark.parametrize(("value", "encoded"), [
    ("<a>&\u20ac\u2028\udcff", '"\\u003ca\\u003e\\u0026\u20ac\\u2028\\ufffd"'.encode()),
    ("\x00\x01\x08\x0c\x1f\x7f", b'"\\u0000\\u0001\\u0008\\u000c\\u001f\x7f"'),
    ("\n\r\t\"\\/", b'"\\n\\r\\t\\"\\\\/"'),
    ("", b'""'),
    ("\u2029\U0001f600\ufffd", '"\\u2029\U0001f600\ufffd"'.encode()),
])
def test_values_are_escaped_as_go_does(value: str, encoded: bytes) -> None:
    store = fresh()
    body = store.set("/1/k", False, value, 0, False, NOW).body
    node = b'{"key":"/k","value":' + encoded + b',"modifiedIndex":4,"createdIndex":4}'
    assert body == b'{"action":"set","node":' + node + b"}\n"
    assert store.get("/1/k", False, False, NOW).body == b'{"action":"get","node":' + node + b"}\n"


def test_keys_are_escaped_and_error_causes_too() -> None:
    store = fresh()
    body = store.set("/1/a<b", False, "v", 0, False, NOW).body
    assert body.startswith(b'{"action":"set","node":{"key":"/a\\u003cb"')
    err = error(store.get, "/1/x&y", False, False, NOW)
    assert err.body == b'{"errorCode":100,"message":"Key not found","cause":"/x\\u0026y","index":4}\n'


def test_error_status_table() -> None:
    statuses = {100: 404, 101: 412, 105: 412, 102: 403, 108: 403, 110: 401, 300: 500, 301: 500,
                104: 400, 107: 400, 401: 400, 209: 400}
    assert {code: V2Error(code).status for code in statuses} == statuses
    err = V2Error(212, "No TTL value set", 0)
    assert err.message == "A TTL must be provided on refresh"
    assert err.body == (b'{"errorCode":212,"message":"A TTL must be provided on refresh",'
                        b'"cause":"No TTL value set","index":0}\n')
    auth = V2Error(110, "Insufficient credentials")
    assert auth.body.endswith(b'"cause":"Insufficient credentials","index":0}\n')


def test_failures_change_nothing() -> None:
    store = fresh()
    store.set("/1/f", False, "v", 0, False, NOW)
    before = (store.index, store.snapshot())
    for call, args in ((store.create, ("/1/f/x/y", False, "v", False, 0, NOW)),
                       (store.create, ("/1/f", False, "v", False, 0, NOW)),
                       (store.delete, ("/1/nope/deeper", False, False, NOW)),
                       (store.compare_and_swap, ("/1/f", "w", 0, "x", 0, False, NOW))):
        error(call, *args)
    stats = store.stats()
    stats_before = Store.restore(before[1]).stats()
    assert store.index == before[0]
    assert store.get("/1", True, True, NOW).body == Store.restore(before[1]).get("/1", True, True, NOW).body
    assert stats["createFail"] == stats_before["createFail"] + 2
    # etcd counts a create's failed walk as a failed set too
    assert stats["setsFail"] == stats_before["setsFail"] + 1
    assert stats["deleteFail"] == 1 and stats["compareAndSwapFail"] == 1


def test_stats_body_field_order() -> None:
    store = fresh()
    store.get("/1", False, False, NOW)
    error(store.get, "/1/x", False, False, NOW)
    assert store.stats_body(2) == (
        b'{"getsSuccess":1,"getsFail":1,"setsSuccess":3,"setsFail":0,"deleteSuccess":0,"deleteFail":0,'
        b'"updateSuccess":0,"updateFail":0,"createSuccess":0,"createFail":0,"compareAndSwapSuccess":0,'
        b'"compareAndSwapFail":0,"compareAndDeleteSuccess":0,"compareAndDeleteFail":0,"expireCount":0,'
        b'"watchers":2}'
    )


def test_apply_dispatches_encoded_requests() -> None:
    store = fresh()
    steps = [
        (encode_request(OP_SET, "/1/a", "1"), "set"),
        (encode_request(OP_CREATE, "/1/b", "2"), "create"),
        (encode_request(OP_UNIQUE, "/1/q", "3"), "create"),
        (encode_request(OP_UPDATE, "/1/a", "4", expire_ns=NOW + 9 * S), "update"),
        (encode_request(OP_CAS, "/1/a", "5", prev_value="4", prev_index=7), "compareAndSwap"),
        (encode_request(OP_CAD, "/1/a", prev_value="5"), "compareAndDelete"),
        (encode_request(OP_DELETE, "/1/q", dir=True, recursive=True), "delete"),
        (encode_request(OP_QGET, "/1", recursive=True, sorted=True), "get"),
    ]
    assert [store.apply(request, NOW).action for request, _ in steps] == [action for _, action in steps]
    assert store.get("/1", True, True, NOW).body == (
        b'{"action":"get","node":{"dir":true,"nodes":[{"key":"/b","value":"2","modifiedIndex":5,'
        b'"createdIndex":5}]}}\n'
    )
    with pytest.raises(V2Error):
        store.apply(encode_request(OP_SET, "/1/b/c", "x"), NOW)
    surrogate = encode_request(OP_SET, "/1/raw", "\udcff")
    assert b'"value":"\\ufffd"' in store.apply(surrogate, NOW).body


_TEXTS = ["", "a", "x" * 31, "x" * 32, "x" * 255, "x" * 256, "x" * 65535, "x" * 65536, "\u00e9" * 20,
          "\u65e5\u672c" * 30, "\udcffx", "a\x00b", "\U0001f600"]


@pytest.mark.parametrize("value", _TEXTS)
@pytest.mark.parametrize("key", _TEXTS)
def test_a_plain_set_is_encoded_without_the_packer_to_the_same_bytes(key: str, value: str) -> None:
    assert encode_set("/1/" + key, value) == encode_request(OP_SET, "/1/" + key, value)


@pytest.mark.parametrize("value", _TEXTS)
def test_a_plain_set_applies_as_the_set_it_encodes(value: str) -> None:
    applied, direct = fresh(), fresh()
    for key in ("/1/k", "/1/d/" + "y" * 300):
        event = applied.apply(encode_set(key, value), NOW)
        expected = direct.set(key, False, value, 0, False, NOW)
        assert (event.action, event.key, event.index, event.body) == (
            expected.action, expected.key, expected.index, expected.body)
    assert applied.snapshot() == direct.snapshot()


def test_sets_with_more_than_a_value_and_damaged_requests_take_the_unpacker() -> None:
    store = fresh()
    ttl = store.apply(encode_request(OP_SET, "/1/t", "v", expire_ns=NOW + 5 * S), NOW)
    assert b'"ttl":5' in ttl.body
    directory = store.apply(encode_request(OP_SET, "/1/d", dir=True), NOW)
    assert directory.is_dir
    plain = encode_set("/1/k", "value")
    for damaged in (plain[:-1], plain[:5], plain + b"\x00", plain[:2] + b"\xdb\xff\xff\xff\xff" + plain[7:]):
        with pytest.raises(ValueError):  # the unpacker: incomplete input, extra data
            store.apply(damaged, NOW)
    assert store.node("/1/k") is None


def test_snapshot_restore_round_trip() -> None:
    store = fresh()
    store.set("/1/d/x", False, "1", NOW + 30 * S, False, NOW)
    store.set("/1/d/y", True, "", 0, False, NOW)
    store.set("/1/z", False, "\u20ac", NOW + 10 * S, False, NOW)
    store.update("/1/z", "", NOW + 20 * S, True, NOW)
    store.delete("/1/d/y", True, False, NOW)
    store.get("/1", False, False, NOW)
    restored = Store.restore(store.snapshot())
    assert restored.index == store.index
    assert restored.stats_body(0) == store.stats_body(0)
    assert [e.body for e in restored.history.events()] == [e.body for e in store.history.events()]
    assert [(e.action, e.key, e.index, e.refresh, e.removed) for e in restored.history.events()] == [
        (e.action, e.key, e.index, e.refresh, e.removed) for e in store.history.events()]
    for recursive, by_key in ((True, False), (True, True), (False, False)):
        assert restored.get("/1", recursive, by_key, NOW).body == store.get("/1", recursive, by_key, NOW).body
    assert restored.next_expiry_ns() == store.next_expiry_ns() == NOW + 20 * S
    assert [e.body for e in restored.delete_expired(NOW + 60 * S)] == [
        e.body for e in store.delete_expired(NOW + 60 * S)]
    after = restored.set("/1/n", False, "v", 0, False, NOW)
    assert after.body == store.set("/1/n", False, "v", 0, False, NOW).body


def test_snapshot_and_restore_leave_the_garbage_collector_as_they_found_it() -> None:
    """Both pause the cyclic collector while they work; it must come back on, also after a
    snapshot that does not decode, and stay off for a caller that turned it off."""
    store = fresh()
    assert gc.isenabled()
    snapshot = store.snapshot()
    assert gc.isenabled()
    Store.restore(snapshot)
    assert gc.isenabled()
    with pytest.raises(ValueError):
        Store.restore(snapshot + b"trailing bytes")
    assert gc.isenabled()
    gc.disable()
    try:
        Store.restore(store.snapshot())
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_every_mutation_appends_one_event_with_the_new_index() -> None:
    store = Store()
    store.set("/1/a", False, "x", NOW + S, False, NOW)
    store.create("/1/b", True, "", False, 0, NOW)
    store.update("/1/a", "y", NOW + S, False, NOW)
    store.compare_and_swap("/1/a", "y", 0, "z", NOW + S, False, NOW)
    store.delete("/1/b", True, False, NOW)
    store.delete_expired(NOW + S)
    assert [e.index for e in store.history.events()] == [1, 2, 3, 4, 5, 6]
    assert [e.etcd_index for e in store.history.events()] == [1, 2, 3, 4, 5, 6]
    assert store.get("/1", False, False, NOW).etcd_index == 6


@pytest.mark.parametrize("unix_ns", [
    946_684_800 * S, 951_782_400 * S + 1, 4_102_444_799 * S + 999_999_999, 1_709_164_800 * S + 120_000_000,
    NOW + 86_399 * S + 10,
])
def test_expiration_matches_rfc3339nano(unix_ns: int) -> None:
    import datetime

    store = Store()
    body = store.set("/1/k", False, "", unix_ns, False, unix_ns).body
    moment = datetime.datetime.fromtimestamp(unix_ns // S, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{unix_ns % S:09d}".rstrip("0")
    expected = moment + ("." + fraction if fraction else "") + "Z"
    assert f'"expiration":"{expected}"'.encode() in body


def test_auth_flag_read_counts_as_a_get() -> None:
    store = fresh()
    assert store.auth_enabled() is False
    assert (store.stats()["getsSuccess"], store.stats()["getsFail"]) == (0, 1)
    store.set("/2/enabled", False, "true", 0, False, NOW)
    assert store.auth_enabled() is True
    store.set("/2/enabled", False, "false", 0, False, NOW)
    assert store.auth_enabled() is False
    assert (store.stats()["getsSuccess"], store.stats()["getsFail"]) == (2, 1)

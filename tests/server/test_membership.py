"""Membership as the store keeps it: the reads etcd makes count in the store statistics."""

from __future__ import annotations

from fastkv._native.store import Store
from fastkv.server import membership


def _gets(store: Store) -> tuple[int, int]:
    stats = store.stats()
    return stats["getsSuccess"], stats["getsFail"]


def test_no_members_yet_reads_only_the_members_directory() -> None:
    store = Store()
    assert membership.read_members(store, 0) == ([], set())
    assert _gets(store) == (0, 1)


def test_members_then_removed_members_are_read() -> None:
    store = Store()
    membership.apply_change(store, membership.encode_change(membership.CHANGE_ADD, 0xA, ["http://a:1"]), 0)
    before = _gets(store)
    members, removed = membership.read_members(store, 0)
    assert [m.id for m in members] == [0xA] and removed == set()
    assert _gets(store) == (before[0] + 1, before[1] + 1)  # no removed_members directory yet


def test_cluster_version_read() -> None:
    store = Store()
    assert membership.read_cluster_version(store) is None
    store.set(membership.VERSION_KEY, False, membership.CLUSTER_VERSION, 0, False, 0)
    assert membership.read_cluster_version(store) == membership.CLUSTER_VERSION
    assert _gets(store) == (1, 1)

"""Cluster membership as etcd 3.4 keeps it in the v2 store, and the checks it makes on changes.

Members live under ``/0/members/<id hex>`` (``raftAttributes`` = ``{"peerURLs":[..]}`` and,
once the member has started, ``attributes`` = ``{"name":..,"clientURLs":[..]}``); removed
members under ``/0/removed_members/<id hex>``. A change is a CONF log entry whose data is
``encode_change``; applying it (``apply_change``) writes those keys, so membership replicates
and survives restarts with the store.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import msgpack  # type: ignore[import-untyped]

from fastkv._native.store import Event, Store, V2Error

MEMBERS_DIR = "/0/members"
REMOVED_DIR = "/0/removed_members"
VERSION_KEY = "/0/version"
CLUSTER_VERSION = "3.4.0"

CHANGE_ADD = "add"
CHANGE_REMOVE = "remove"
CHANGE_UPDATE = "update"


class MembershipError(Exception):
    """A refused membership change, carrying etcd's HTTP answer ``{"message": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Member:
    """One cluster member; ``name`` is empty and ``client_urls`` empty until it has started."""

    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]

    @property
    def started(self) -> bool:
        return bool(self.name)


def member_key(member_id: int) -> str:
    return f"{MEMBERS_DIR}/{member_id:x}"


def go_json(value: Any) -> str:
    """Compact JSON as Go's ``encoding/json`` writes these small objects."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def raft_attributes(peer_urls: list[str] | tuple[str, ...]) -> str:
    return go_json({"peerURLs": list(peer_urls)})


def attributes(name: str, client_urls: list[str] | tuple[str, ...]) -> str:
    return go_json({"name": name, "clientURLs": list(client_urls)})


def read_members(store: Store, now_ns: int) -> tuple[list[Member], set[int]]:
    """The members and the removed member ids recorded in ``store``.

    The reads are etcd's and count in the store statistics: ``/0/members``, then, only when
    that exists, ``/0/removed_members``.
    """
    members: list[Member] = []
    listed = _children(store, MEMBERS_DIR, now_ns)
    if listed is None:
        return members, set()
    for node in listed:
        values = {child["key"].rsplit("/", 1)[-1]: child.get("value", "") for child in node.get("nodes", [])}
        raft = json.loads(values.get("raftAttributes") or "{}")
        attrs = json.loads(values.get("attributes") or "{}")
        members.append(Member(int(node["key"].rsplit("/", 1)[-1], 16), attrs.get("name", ""),
                              tuple(raft.get("peerURLs") or ()), tuple(attrs.get("clientURLs") or ())))
    removed = {int(n["key"].rsplit("/", 1)[-1], 16) for n in _children(store, REMOVED_DIR, now_ns) or ()}
    members.sort(key=lambda m: m.id)
    return members, removed


def read_member(store: Store, member_id: int) -> Member | None:
    """One member as the store holds it now (introspection only: no read statistics change)."""
    raft = store.node(member_key(member_id) + "/raftAttributes")
    if raft is None:
        return None
    attrs_node = store.node(member_key(member_id) + "/attributes")
    attrs = json.loads(attrs_node.value or "{}") if attrs_node is not None else {}
    peer_urls = json.loads(raft.value or "{}").get("peerURLs") or ()
    return Member(member_id, attrs.get("name", ""), tuple(peer_urls), tuple(attrs.get("clientURLs") or ()))


def changed_member(key: str) -> tuple[int, bool] | None:
    """``(member id, removed)`` when an event on internal ``key`` changes the membership."""
    for prefix, removed in ((MEMBERS_DIR + "/", False), (REMOVED_DIR + "/", True)):
        if key.startswith(prefix):
            return int(key[len(prefix):].split("/", 1)[0], 16), removed
    return None


def read_cluster_version(store: Store) -> str | None:
    """The cluster version recorded in ``store`` (a counted read, as etcd makes it on restart)."""
    try:
        event = store.get(VERSION_KEY, False, False, 0)
    except V2Error:
        return None
    value: str | None = event.value
    return value


def _children(store: Store, path: str, now_ns: int) -> list[dict[str, Any]] | None:
    """The children of directory ``path`` (recursive, sorted), None when it does not exist."""
    try:
        event = store.get(path, True, True, now_ns)
    except V2Error:
        return None
    nodes: list[dict[str, Any]] = json.loads(event.body)["node"].get("nodes", [])
    return nodes


def encode_change(kind: str, member_id: int, peer_urls: list[str] | tuple[str, ...] = ()) -> bytes:
    """The data of a CONF log entry."""
    return msgpack.packb((kind, member_id, list(peer_urls)))


def decode_change(data: bytes) -> tuple[str, int, list[str]]:
    kind, member_id, peer_urls = msgpack.unpackb(data)
    return kind, member_id, list(peer_urls)


def check_change(members: list[Member], removed: set[int], kind: str, member_id: int,
                 peer_urls: list[str] | tuple[str, ...]) -> None:
    """Raise ``MembershipError`` as etcd answers a change that cannot apply to this membership."""
    if member_id in removed:
        raise MembershipError(410, f"Member permanently removed: {member_id:x}")
    known = {m.id for m in members}
    if kind == CHANGE_ADD and member_id in known:
        raise MembershipError(409, "membership: ID exists")
    if kind != CHANGE_ADD and member_id not in known:
        raise MembershipError(404, f"No such member: {member_id:x}")
    if kind != CHANGE_REMOVE:
        taken = {url for m in members if m.id != member_id for url in m.peer_urls}
        if taken.intersection(peer_urls):
            raise MembershipError(409, "membership: peerURL exists")


def check_strict_reconfig(members: list[Member], kind: str, member_id: int) -> None:
    """etcd's ``--strict-reconfig-check``: refuse a change that leaves fewer started voters than a
    quorum (adding the second member to a one-member cluster is allowed, as etcd allows it)."""
    if kind == CHANGE_ADD:
        total = len(members) + 1
        started = sum(m.started for m in members)
        if started == 1 and total == 2:
            return
    elif kind == CHANGE_REMOVE:
        remaining = [m for m in members if m.id != member_id]
        total, started = len(remaining), sum(m.started for m in remaining)
    else:
        return
    if started < total // 2 + 1:
        raise MembershipError(500, "Internal Server Error")


def check_active_quorum(voters: list[int], self_id: int, kind: str, member_id: int,
                        active_since: dict[int, float], since: float) -> None:
    """etcd's other strict reconfiguration rule, on the member that takes the request: an addition
    needs the links to every other voter up since ``since`` (``active_since``: when each link came
    up, 0 = down); removing a member whose link is down is always allowed; removing another needs
    the voters active since ``since``, less one, to be a quorum of the voters that remain."""
    def active(v: int) -> bool:
        return v == self_id or 0 < active_since.get(v, 0.0) <= since

    if kind == CHANGE_ADD:
        if not all(active(v) for v in voters):
            raise MembershipError(500, "Internal Server Error")
    elif kind == CHANGE_REMOVE:
        if member_id != self_id and not active_since.get(member_id, 0.0):
            return
        if sum(active(v) for v in voters) - 1 < 1 + (len(voters) - 1) // 2:
            raise MembershipError(500, "Internal Server Error")


def validate_change(store: Store, data: bytes, now_ns: int) -> tuple[str, int, list[str], list[Member]]:
    """etcd's ValidateConfigurationChange: read the members from the store (counted reads) and
    raise ``MembershipError`` when the change of CONF entry ``data`` cannot apply to them. Returns
    the decoded change and the members."""
    kind, member_id, peer_urls = decode_change(data)
    members, removed = read_members(store, now_ns)
    check_change(members, removed, kind, member_id, peer_urls)
    return kind, member_id, peer_urls, members


def apply_change(store: Store, data: bytes, now_ns: int) -> tuple[Member | None, list[Event]]:
    """Apply a CONF entry to the store: the member it concerns (None for a removal) and the
    store events it made. ``MembershipError`` when it no longer applies (nothing changed)."""
    kind, member_id, peer_urls, members = validate_change(store, data, now_ns)
    key = member_key(member_id)
    if kind == CHANGE_ADD:
        event = store.create(key + "/raftAttributes", False, raft_attributes(peer_urls), False, 0, now_ns)
        return Member(member_id, "", tuple(peer_urls), ()), [event]
    if kind == CHANGE_UPDATE:
        event = store.update(key + "/raftAttributes", raft_attributes(peer_urls), 0, False, now_ns)
        old = next(m for m in members if m.id == member_id)
        return Member(member_id, old.name, tuple(peer_urls), old.client_urls), [event]
    events = [store.delete(key, True, True, now_ns),
              store.create(f"{REMOVED_DIR}/{member_id:x}", False, "", False, 0, now_ns)]
    return None, events

"""Joining a running cluster (``--initial-cluster-state existing`` on an empty data directory).

A member added at run time (``POST /v2/members``) cannot derive its own id (etcd mixes in the
time of the addition) nor the cluster id from its flags. As etcd does, it asks the other members
named in ``--initial-cluster`` for the cluster (here with the peer transport's cluster-info
handshake instead of etcd's peer ``GET /members``), checks that ``--initial-cluster`` describes
exactly the members the cluster has, and takes the ids the cluster gave: its own is the id of
the member whose peer URLs are those of its own name's entry. Its log starts empty; the leader
fills it (with a snapshot when the log is compacted).

Refusals carry etcd's messages (``JoinError``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from fastkv import identity
from fastkv.server.membership import Member
from fastkv.settings import Settings
from fastkv.transport.framing import FrameError
from fastkv.transport.tcp import fetch_cluster_info

log = logging.getLogger("fastkv.etcdserver")
ASK_TIMEOUT_S = 2.0  # per peer URL


class JoinError(Exception):
    """This member cannot join; the message is etcd's."""


@dataclass(frozen=True)
class ExistingCluster:
    """The cluster as a member of it described it."""

    cluster_id: int
    members: tuple[Member, ...]
    removed: tuple[int, ...]

    def describe(self) -> str:
        """Go's ``%+v`` of etcd's cluster, as its error messages print it."""
        members = " ".join(
            f"&{{ID:{m.id:x} RaftAttributes:{{PeerURLs:[{' '.join(m.peer_urls)}] IsLearner:false}} "
            f"Attributes:{{Name:{m.name} ClientURLs:[{' '.join(m.client_urls)}]}}}}" for m in self.members)
        removed = " ".join(f"{r:x}" for r in self.removed)
        return f"{{ClusterID:{self.cluster_id:x} Members:[{members}] RemovedMemberIDs:[{removed}]}}"


@dataclass(frozen=True)
class Joined:
    """Who this member is in the cluster it joins."""

    member_id: int
    cluster_id: int
    members: tuple[tuple[int, tuple[str, ...]], ...]


def remote_peer_urls(settings: Settings) -> list[str]:
    """The peer URLs of the other members of ``--initial-cluster``, sorted (the ones etcd asks)."""
    return sorted(u for name, urls in settings.initial_cluster if name != settings.name for u in urls)


def decode_info(info: Any) -> ExistingCluster:
    """The cluster info a member sent (``Node.cluster_info``); ``ValueError`` when malformed."""
    try:
        members = tuple(sorted((Member(int(mid), str(name), tuple(peers), tuple(clients))
                                for mid, name, peers, clients in info["members"]), key=lambda m: m.id))
        return ExistingCluster(int(info["cluster_id"]), members, tuple(int(r) for r in info["removed"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed cluster info ({exc!r})") from None


async def fetch_existing(urls: list[str], timeout: float = ASK_TIMEOUT_S) -> ExistingCluster:
    """Ask each URL in turn; the first good answer wins (etcd's GetClusterFromRemotePeers)."""
    for url in urls:
        try:
            _, info = await fetch_cluster_info(url, timeout)
            return decode_info(info)
        except (OSError, TimeoutError, FrameError, ValueError) as exc:
            reason = str(exc) or type(exc).__name__
            log.warning("could not get cluster response from %s: %s", url, reason)
    raise JoinError("cannot fetch cluster info from peer urls: "
                    "could not retrieve cluster information from the given URLs")


def _urls_problem(existing: tuple[str, ...], local: tuple[str, ...]) -> str | None:
    """Why two peer URL lists differ (etcd's URLStringsEqual), None when they are the same."""
    if len(existing) != len(local):
        return f"len({_go_strings(existing)}) != len({_go_strings(local)})"
    a, b = ",".join(sorted(existing)), ",".join(sorted(local))
    return None if a == b else f'resolved urls: "{a}" != "{b}"'


def _go_strings(urls: tuple[str, ...]) -> str:
    return "[" + " ".join(f'"{u}"' for u in urls) + "]"


def assign_ids(settings: Settings, existing: ExistingCluster) -> Joined:
    """etcd's ValidateClusterAndAssignIDs: every member of the cluster must have an entry of
    ``--initial-cluster`` with its peer URLs (and there must be as many); this member's id is the
    one of the member its own entry matched."""
    token = settings.initial_cluster_token
    local = sorted(((identity.member_id(list(urls), token), name, tuple(urls))
                    for name, urls in settings.initial_cluster))
    if len(local) != len(existing.members):
        raise JoinError(f"error validating peerURLs {existing.describe()}: member count is unequal")
    assigned: dict[str, int] = {}
    for member in existing.members:
        problem: str | None = "no local members"
        for _, name, urls in local:
            problem = _urls_problem(member.peer_urls, urls)
            if problem is None:
                assigned[name] = member.id
                break
        if problem is not None:
            raise JoinError(
                f"error validating peerURLs {existing.describe()}: PeerURLs: no match found for existing "
                f"member ({member.id:x}, [{' '.join(member.peer_urls)}]), last resolver error ({problem})")
    own = assigned.get(settings.name)
    if own is None:  # two entries with the same URLs: this member's was not the one matched
        raise JoinError(f"error validating peerURLs {existing.describe()}: member count is unequal")
    return Joined(own, existing.cluster_id, tuple((m.id, m.peer_urls) for m in existing.members))


def join(settings: Settings) -> Joined:
    """Fetch the running cluster from the other members and find this member in it."""
    existing = asyncio.run(fetch_existing(remote_peer_urls(settings)))
    return assign_ids(settings, existing)

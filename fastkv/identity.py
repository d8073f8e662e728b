"""Member and cluster ids, computed exactly as etcd computes them.

A member id is the first 8 bytes (big-endian) of the SHA-1 of the member's peer URLs,
sorted and concatenated, followed by the cluster token and, for a member added at run
time (``member add``), the Unix time in seconds of the addition. A cluster id is the
first 8 bytes of the SHA-1 of the sorted member ids, each packed as 8 big-endian bytes.
Ids are shown as lower-case hex without leading zeros (``format(id, "x")``).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable


def _first_u64(digest: bytes) -> int:
    return int(struct.unpack(">Q", digest[:8])[0])


def member_id(peer_urls: Iterable[str], token: str, now_s: int | None = None) -> int:
    """The id of a member with these peer URLs in the cluster named by ``token``.

    ``now_s`` is given only for members added at run time (etcd mixes in the time of
    the addition so that re-adding the same URLs yields a new id).
    """
    material = "".join(sorted(peer_urls)) + token
    if now_s is not None:
        material += str(now_s)
    return _first_u64(hashlib.sha1(material.encode()).digest())


def cluster_id(member_ids: Iterable[int]) -> int:
    """The id of the cluster whose initial members have these ids."""
    packed = b"".join(struct.pack(">Q", m) for m in sorted(member_ids))
    return _first_u64(hashlib.sha1(packed).digest())


def hex_id(value: int) -> str:
    """An id as etcd prints it (``9e737febb6b99eee``, ``628170c800dbcee``)."""
    return format(value, "x")


def initial_ids(initial_cluster: Iterable[tuple[str, Iterable[str]]], token: str) -> dict[str, int]:
    """Member name -> member id for a ``--initial-cluster`` (name, peer URLs) list."""
    return {name: member_id(list(urls), token) for name, urls in initial_cluster}

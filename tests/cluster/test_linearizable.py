"""Client histories of a real three-member cluster, under crashes and a partition, are linearizable.

Five clients (``tests.cluster.history``) write, compare-and-swap and read (``quorum=true``) a few
keys on random members while the leader is SIGKILLed and restarted (twice) and the leader of the
moment is cut off from the others for a while; ``fastkv.raft.linearizability`` checks each key's
history.
"""

from __future__ import annotations

import time

import pytest

from fastkv.raft.linearizability import READ, Op, check_linearizable
from tests.cluster.conftest import Cluster, wait_for
from tests.cluster.history import KEYS, History, check_history, perform, recorded_load, with_stale_read


def faults(cluster: Cluster) -> None:
    """Kill and restart the leader, cut the (new) leader off for a while, kill the leader again;
    return once the cluster is whole and healthy."""
    for round_ in range(2):
        time.sleep(1.5)
        leader = cluster.leader()
        leader.kill()
        time.sleep(1.0)
        leader.start()
        cluster.healthy()
        if round_ == 0:
            time.sleep(1.5)
            lonely = cluster.leader()
            others = [cluster.member_id(m) for m in cluster.members if m is not lonely]
            cluster.proxies.partition([cluster.member_id(lonely)], others)
            time.sleep(3.0)
            cluster.proxies.heal()
            cluster.healthy()


def final_reads(cluster: Cluster, history: History) -> dict[str, Op]:
    """One more quorum read of every key once the cluster is whole (part of the history)."""
    reads: dict[str, Op] = {}
    for key in KEYS:
        def read(key: str = key) -> Op | None:
            op = perform(history, cluster.members[0], 0, READ, key, None)
            return op if op.complete is not None else None
        reads[key] = wait_for(read, 15, f"a quorum read of {key}")
    return reads


def test_histories_under_crashes_and_a_partition_are_linearizable(cluster3: Cluster) -> None:
    with recorded_load(cluster3, clients=5, pause=0, tail=20, each=10) as history:
        faults(cluster3)
        finals = final_reads(cluster3, history)
    assert all(finals[key].result is not None for key in KEYS)

    # The check every scenario makes fails on this real history with one read result altered.
    altered = History()
    altered.ops = with_stale_read(history.ops) or []
    with pytest.raises(AssertionError, match="not linearizable"):
        check_history(altered)

    # The checker is not blind to a read of a value never written either.
    key = KEYS[0]
    own = [op for op in history.ops if op.key == key]
    first = min(op.complete for op in own if op.complete is not None)
    bogus = Op(-1, READ, key, None, first + 1e-6, 0, first + 2e-6, "never-written")
    assert not check_linearizable([*own, bogus])

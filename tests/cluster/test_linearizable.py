"""Client histories of a real three-member cluster, under crashes and a partition, are linearizable.

Client threads write, compare-and-swap and read (``quorum=true``) a few keys on random members while
the leader is SIGKILLed and restarted (twice) and the leader of the moment is cut off from the others
for a while. Every operation is recorded with its invocation and completion times and its result;
one that timed out or failed with error 300 has an unknown outcome (it may or may not have taken
effect). ``fastkv.raft.linearizability`` then checks each key's history.
"""

from __future__ import annotations

import http.client
import itertools
import random
import threading
import time
import urllib.error

from fastkv.raft.linearizability import CAS, PUT, READ, Op, check_keys, check_linearizable
from tests.cluster.conftest import REQUEST_TIMEOUT_S, Cluster, request, wait_for

KEYS = ("/lin/a", "/lin/b", "/lin/c")
CLIENTS = 5
CLIENT_TIMEOUT_S = REQUEST_TIMEOUT_S + 2  # past the server's own deadline: a silent request is lost


class History:
    """The operations of every client, appended under a lock; ids are unique."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def new(self, kind: str, key: str, arg: object, node: int) -> Op:
        """A new operation, invoked now."""
        with self._lock:
            op = Op(next(self._ids), kind, key, arg, time.monotonic(), node)
            self.ops.append(op)
            return op

    def completed_since(self, t: float) -> int:
        """How many operations invoked after ``t`` completed."""
        with self._lock:
            return sum(op.invoke > t and op.complete is not None for op in self.ops)

    def drop(self, op: Op) -> None:
        """Forget an operation that surely never reached a server."""
        with self._lock:
            self.ops.remove(op)


def outcome(kind: str, status: int, body: object) -> tuple[bool, object]:
    """``(known, result)`` of a finished request: known when the answer says whether (and how) the
    operation took effect; a CAS result is whether it swapped, a read's the value or None."""
    code = body.get("errorCode") if isinstance(body, dict) else None
    node = body.get("node", {}) if isinstance(body, dict) else {}
    if kind == PUT and status in (200, 201):
        return True, None
    if kind == CAS and status == 200:
        return True, True
    if kind == CAS and (status, code) in ((412, 101), (404, 100)):
        return True, False
    if kind == READ and status == 200:
        return True, node.get("value")
    if kind == READ and (status, code) == (404, 100):
        return True, None
    return False, None  # 500 with error 300 (no commit in time) and anything unexpected


def perform(history: History, cluster: Cluster, member: int, kind: str, key: str, arg: object) -> Op:
    """Run one operation against ``cluster.members[member]`` and record it."""
    url = cluster.members[member].url + "/v2/keys" + key
    op = history.new(kind, key, arg, member)
    try:
        if kind == READ:
            status, _, body = request(url + "?quorum=true", timeout=CLIENT_TIMEOUT_S)
        elif kind == PUT:
            status, _, body = request(url, "PUT", timeout=CLIENT_TIMEOUT_S, value=str(arg))
        else:
            assert isinstance(arg, tuple)
            status, _, body = request(url, "PUT", timeout=CLIENT_TIMEOUT_S, value=str(arg[1]),
                                      prevValue=str(arg[0]))
    except urllib.error.URLError as err:
        if isinstance(err.reason, ConnectionRefusedError):
            history.drop(op)  # the member is down: nothing was sent
        return op  # otherwise unknown: sent, but the answer was lost
    except (OSError, http.client.HTTPException):
        return op  # timed out, reset or cut short: unknown
    known, result = outcome(kind, status, body)
    if known:
        op.result = result
        op.complete = time.monotonic()
    return op


class Client(threading.Thread):
    """Random operations on random keys and members until stopped. Written values are unique; a
    CAS expects the value this client last saw for the key, so that some succeed."""

    def __init__(self, n: int, cluster: Cluster, history: History) -> None:
        super().__init__(daemon=True)
        self.n, self.cluster, self.history = n, cluster, history
        self.rng = random.Random(n)
        self.stopped = threading.Event()
        self.seen: dict[str, str] = {}

    def run(self) -> None:
        for i in itertools.count():
            if self.stopped.is_set():
                return
            key = self.rng.choice(KEYS)
            kind = self.rng.choice((PUT, CAS, READ, READ) if key in self.seen else (PUT, READ))
            value = f"c{self.n}-{i}"
            arg: object = value if kind == PUT else (self.seen.get(key), value) if kind == CAS else None
            member = self.rng.randrange(len(self.cluster.members))
            op = perform(self.history, self.cluster, member, kind, key, arg)
            if op.complete is None:
                time.sleep(0.02)  # the member is down or cut off: do not spin
            elif kind == READ and isinstance(op.result, str):
                self.seen[key] = op.result
            elif kind == PUT or op.result:
                self.seen[key] = value


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


def run_clients(cluster: Cluster, after_faults: int) -> History:
    """The history of ``CLIENTS`` clients during ``faults`` and until ``after_faults`` operations
    invoked after them completed (clients that sent to a crashed member wait out their timeout)."""
    history = History()
    clients = [Client(n, cluster, history) for n in range(CLIENTS)]
    for c in clients:
        c.start()
    try:
        faults(cluster)
        healed = time.monotonic()
        wait_for(lambda: history.completed_since(healed) >= after_faults, 3 * CLIENT_TIMEOUT_S,
                 "operations to complete after the faults")
    finally:
        for c in clients:
            c.stopped.set()
        for c in clients:
            c.join(CLIENT_TIMEOUT_S + 5)
    return history


def final_reads(cluster: Cluster, history: History) -> dict[str, Op]:
    """One more quorum read of every key once the cluster is whole (part of the history)."""
    reads: dict[str, Op] = {}
    for key in KEYS:
        def read(key: str = key) -> Op | None:
            op = perform(history, cluster, 0, READ, key, None)
            return op if op.complete is not None else None
        reads[key] = wait_for(read, 15, f"a quorum read of {key}")
    return reads


def stale_read(history: list[Op], key: str) -> Op | None:
    """A read of an overwritten value, placed just after the first pair of completed writes to
    ``key`` that follow each other in real time: p1 completes before p2 is invoked, the read starts
    after p2 completed and returns p1's (unique) value."""
    puts = sorted((op for op in history if op.key == key and op.kind == PUT and op.complete is not None),
                  key=lambda op: op.invoke)
    for p1, p2 in itertools.combinations(puts, 2):
        assert p1.complete is not None and p2.complete is not None
        if p1.complete < p2.invoke:
            return Op(-1, READ, key, None, p2.complete + 1e-6, 0, p2.complete + 2e-6, p1.arg)
    return None


def test_histories_under_crashes_and_a_partition_are_linearizable(cluster3: Cluster) -> None:
    history = run_clients(cluster3, after_faults=20)
    finals = final_reads(cluster3, history)
    ops = history.ops
    done = [op for op in ops if op.complete is not None]
    summary = {kind: sum(op.kind == kind for op in done) for kind in (PUT, CAS, READ)}
    unknown = sum(op.complete is None for op in ops)
    print(f"{len(ops)} operations, completed {summary}, {unknown} with unknown outcome, "
          f"{sum(op.kind == CAS and op.result is True for op in done)} successful CAS")
    assert all(summary[kind] >= 10 for kind in summary), summary

    bad = check_keys(ops)
    assert bad == [], [(o.kind, o.key, o.arg, o.invoke, o.complete, o.result) for o in ops if o.key in bad]

    # The checker is not blind: corrupt the real history and it is rejected.
    key = KEYS[0]
    own = [op for op in ops if op.key == key]
    first = min(op.complete for op in own if op.complete is not None)
    bogus = Op(-1, READ, key, None, first + 1e-6, 0, first + 2e-6, "never-written")
    assert not check_linearizable([*own, bogus])
    stale = [op for op in (stale_read(ops, k) for k in KEYS) if op is not None]
    assert stale, "no two completed writes of one key in a row"
    assert not check_linearizable([*(op for op in ops if op.key == stale[0].key), stale[0]])
    assert finals[key].result is not None

"""Recorded client histories of a real cluster, checked for linearizability.

Client threads write, compare-and-swap and read (``quorum=true``) a few keys on random live members
while a test does what it does to the cluster. Every operation is recorded with its invocation and
completion times and its result; one that timed out, failed with error 300 or lost its connection
has an unknown outcome (it may or may not have taken effect). ``fastkv.raft.linearizability`` then
checks each key's history::

    with recorded_load(cluster) as history:
        ...  # kill, restart, partition, add or remove members
    # here every key's history has been found linearizable
"""

from __future__ import annotations

import dataclasses
import http.client
import itertools
import random
import threading
import time
import urllib.error
from collections.abc import Iterator
from contextlib import contextmanager

from fastkv.raft.linearizability import CAS, PUT, READ, Op, check_keys, check_linearizable
from tests import harness
from tests.cluster.conftest import REQUEST_TIMEOUT_S, Cluster, request, wait_for

KEYS = ("/lin/a", "/lin/b", "/lin/c")
CLIENT_TIMEOUT_S = REQUEST_TIMEOUT_S + 2  # past the server's own deadline: a silent request is lost


class History:
    """The operations of every client, recorded under a lock; ids are unique. Once ``freeze`` is
    called the list ``ops`` no longer changes: later operations and outcomes are not recorded, so
    an operation still pending then keeps an unknown outcome."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._frozen = False

    def new(self, kind: str, key: str, arg: object, node: int) -> Op:
        """A new operation, invoked now."""
        with self._lock:
            op = Op(next(self._ids), kind, key, arg, time.monotonic(), node)
            if not self._frozen:
                self.ops.append(op)
            return op

    def complete(self, op: Op, result: object) -> None:
        """``op`` completed now with ``result``."""
        with self._lock:
            if not self._frozen:
                op.result, op.complete = result, time.monotonic()

    def drop(self, op: Op) -> None:
        """Forget an operation that surely never reached a server."""
        with self._lock:
            if not self._frozen:
                self.ops.remove(op)

    def freeze(self) -> None:
        with self._lock:
            self._frozen = True

    def snapshot(self) -> list[Op]:
        """The operations recorded so far."""
        with self._lock:
            return list(self.ops)

    def completed_since(self, t: float) -> int:
        """How many operations invoked after ``t`` completed."""
        return sum(op.invoke > t and op.complete is not None for op in self.snapshot())

    def rich_enough(self, each: int) -> bool:
        """Whether every kind of operation completed ``each`` times and ``with_stale_read`` finds a
        read to alter."""
        ops = self.snapshot()
        done = [op.kind for op in ops if op.complete is not None]
        return all(done.count(kind) >= each for kind in (PUT, CAS, READ)) and with_stale_read(ops) is not None

    def describe(self) -> str:
        """Operations recorded, completed (by kind) and with unknown outcome."""
        with self._lock:
            done = [op for op in self.ops if op.complete is not None]
            kinds = {kind: sum(op.kind == kind for op in done) for kind in (PUT, CAS, READ)}
            swapped = sum(op.kind == CAS and op.result is True for op in done)
            return (f"{len(self.ops)} operations, {len(done)} completed {kinds} ({swapped} successful CAS), "
                    f"{len(self.ops) - len(done)} with unknown outcome")


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


def perform(history: History, member: harness.Server, node: int, kind: str, key: str, arg: object) -> Op:
    """Run one operation against ``member`` (number ``node``) and record it."""
    url = member.url + "/v2/keys" + key
    op = history.new(kind, key, arg, node)
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
        history.complete(op, result)
    return op


class Client(threading.Thread):
    """Random operations on random ``keys`` of random live members until stopped, ``pause`` seconds
    apart. Written values are unique; a CAS expects the value this client last saw for the key, so
    that some succeed."""

    def __init__(self, n: int, cluster: Cluster, history: History, keys: tuple[str, ...],
                 pause: float) -> None:
        super().__init__(daemon=True)
        self.n, self.cluster, self.history, self.keys, self.pause = n, cluster, history, keys, pause
        self.rng = random.Random(n)
        self.stopped = threading.Event()
        self.seen: dict[str, str] = {}

    def run(self) -> None:
        for i in itertools.count():
            if self.stopped.wait(self.pause):
                return
            alive = self.cluster.alive()
            if not alive:
                continue
            member = self.rng.choice(alive)
            key = self.rng.choice(self.keys)
            kind = self.rng.choice((PUT, CAS, READ, READ) if key in self.seen else (PUT, READ))
            value = f"c{self.n}-{i}"
            arg: object = value if kind == PUT else (self.seen.get(key), value) if kind == CAS else None
            op = perform(self.history, member, self.cluster.members.index(member), kind, key, arg)
            if op.complete is None:
                time.sleep(0.02)  # the member is down or cut off: do not spin
            elif kind == READ and isinstance(op.result, str):
                self.seen[key] = op.result
            elif kind == PUT or op.result:
                self.seen[key] = value


def with_stale_read(ops: list[Op]) -> list[Op] | None:
    """One key's history with one real read altered to return an overwritten value, so that it is
    not linearizable: the earliest completed read ``r`` that was invoked after ``p2`` completed,
    where ``p2`` is a completed write invoked after another completed write ``p1`` of the key
    completed; ``r`` then returns ``p1``'s (unique) value. None when the history has no such read."""
    done = sorted(((op.complete, op) for op in ops if op.complete is not None), key=lambda c: c[1].invoke)
    for _, r in (c for c in done if c[1].kind == READ):
        puts = [c for c in done if c[1].key == r.key and c[1].kind == PUT and c[0] < r.invoke]
        for (p1_complete, p1), (_, p2) in itertools.combinations(puts, 2):
            if p1_complete < p2.invoke:
                stale = dataclasses.replace(r, result=p1.arg)
                return [stale if op is r else op for op in ops if op.key == r.key]
    return None


def check_history(history: History) -> None:
    """Fail unless every key's history is linearizable, and unless the checker rejects the same
    history with one read altered to return an overwritten value."""
    ops = history.ops
    bad = check_keys(ops)
    assert bad == [], f"not linearizable: {bad} " + repr(
        [(o.kind, o.key, o.arg, o.invoke, o.complete, o.result) for o in ops if o.key in bad])
    altered = with_stale_read(ops)
    assert altered is not None, f"no read after two writes of one key in a row: {history.describe()}"
    assert not check_linearizable(altered), "a stale read went unnoticed"


@contextmanager
def recorded_load(cluster: Cluster, clients: int = 3, keys: tuple[str, ...] = KEYS, pause: float = 0.01,
                  tail: int = 10, each: int = 3) -> Iterator[History]:
    """Run ``clients`` clients on ``keys`` of ``cluster``'s live members during the block. When the
    block ends normally, wait until ``tail`` operations invoked after it completed (the cluster
    serves again) and until the history is ``rich_enough(each)``, stop the clients, and check the
    history (``check_history``); operations still pending then have an unknown outcome. The
    summary of the history is printed."""
    history = History()
    threads = [Client(n, cluster, history, keys, pause) for n in range(clients)]
    for t in threads:
        t.start()
    try:
        yield history
        end = time.monotonic()
        wait_for(lambda: history.completed_since(end) >= tail and history.rich_enough(each),
                 3 * CLIENT_TIMEOUT_S, f"{tail} operations to complete after the scenario")
    finally:
        for t in threads:
            t.stopped.set()
        for t in threads:
            t.join(0.5)  # one waiting for a lost answer is left behind; its operation stays unknown
        history.freeze()
    print(f"history: {history.describe()}")
    check_history(history)

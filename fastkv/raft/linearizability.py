"""A linearizability checker for histories of one register (one key) of a key-value store.

A history is a list of ``Op``: each has an invocation time and, when its outcome is known, a
completion time and a result. Times are any comparable numbers (a logical clock in the
simulator, ``time.monotonic()`` for real processes). Three kinds of operation are modelled:

* ``PUT`` sets the register to ``arg``;
* ``CAS`` with ``arg == (expected, new)`` sets it to ``new`` when it holds ``expected`` and returns
  True, else returns False and changes nothing (a missing key holds ``None``);
* ``READ`` returns the register's value (``None`` when the key does not exist).

An operation whose outcome is unknown (``complete is None``: it timed out, or failed in a way
that does not say whether it took effect) may take effect at any time after its invocation, or
never. A read with unknown outcome constrains nothing and is ignored.

The history is linearizable when every completed operation can be given a single instant between
its invocation and completion such that the results agree with a register executed in that order
(Herlihy & Wing). ``check_linearizable`` searches for such an order as Wing & Gong do, pruning
states already seen (Lowe's memoization on the set of linearized operations and the value).
Keys are independent (linearizability is compositional), so a store is checked key by key
(``check_keys``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

PUT, CAS, READ = "put", "cas", "read"

_INF = float("inf")


@dataclass
class Op:
    """One client operation on ``key``; ``complete`` is None while pending or when its outcome is
    unknown, and ``result`` is meaningful only when ``complete`` is set."""

    id: int
    kind: str
    key: str
    arg: Any
    invoke: float
    node: int = 0
    complete: float | None = None
    result: object = None


def step_model(op: Op, value: object) -> list[object]:
    """The register values ``op`` may leave when it takes effect on ``value``; empty when its
    recorded result is impossible from ``value``."""
    if op.kind == PUT:
        return [op.arg]
    if op.kind == READ:
        return [value] if op.result == value else []
    expected, new = op.arg
    if op.complete is None:
        return [new if value == expected else value]
    if op.result:
        return [new] if value == expected else []
    return [value] if value != expected else []


def check_linearizable(ops: Iterable[Op], initial: object = None) -> bool:
    """True when the history of one register that starts at ``initial`` is linearizable.

    Depth-first search over partial linearizations ``(done, value)`` (``done`` a bit set of the
    operations placed so far), without recursion so that long histories fit. From a state, the
    next operation may be any one not yet placed that was invoked before every unplaced completed
    operation completed (the real-time order). Success once every completed operation is placed;
    operations with unknown outcome need not be."""
    history = sorted((op for op in ops if op.complete is not None or op.kind != READ),
                     key=lambda o: o.invoke)
    required = 0
    for i, op in enumerate(history):
        if op.complete is not None:
            required |= 1 << i
    if not required:
        return True
    invokes = [op.invoke for op in history]
    completes = [op.complete if op.complete is not None else _INF for op in history]

    def successors(done: int, value: object) -> Iterator[tuple[int, object]]:
        first = (~done & (done + 1)).bit_length() - 1  # the lowest unplaced operation
        horizon = _INF
        candidates = []
        for i in range(first, len(history)):
            if invokes[i] > horizon:
                break  # invoked after an unplaced operation completed; so is everything later
            if not done >> i & 1:
                candidates.append(i)
                horizon = min(horizon, completes[i])
        for i in candidates:
            if invokes[i] > horizon:
                continue
            for new in step_model(history[i], value):
                yield done | 1 << i, new

    seen: set[tuple[int, object]] = set()
    stack = [successors(0, initial)]
    while stack:
        state = next(stack[-1], None)
        if state is None:
            stack.pop()
            continue
        if state[0] & required == required:
            return True
        if state in seen:
            continue
        seen.add(state)
        stack.append(successors(*state))
    return False


def check_keys(ops: Iterable[Op], initial: object = None) -> list[str]:
    """Check every key's history separately; the keys whose history is not linearizable."""
    by_key: dict[str, list[Op]] = {}
    for op in ops:
        by_key.setdefault(op.key, []).append(op)
    return sorted(key for key, history in by_key.items() if not check_linearizable(history, initial))

"""A deterministic simulation of a Raft cluster that checks safety after every step.

Members run in one process on an in-memory network that loses, duplicates, delays and
reorders messages, is partitioned and healed, and whose members crash (keeping only what a
``Ready`` had them save) and restart. Everything is drawn from one ``random.Random(seed)``, so a
seed names a schedule: ``python -m fastkv.raft.simulator --seed N [--trace]`` replays it.

Checked after every step (``SafetyViolation`` otherwise):

* election safety: at most one leader per term (§5.2);
* log matching: two saved entries with the same index and term hold the same data and follow
  the same previous term, hence the logs agree up to there (§5.3);
* leader completeness: a new leader holds every entry committed in an earlier term (§5.4);
* state machine safety: no two members apply different entries at the same index (§5.4.3).

Clients write, compare-and-swap and read (through ReadIndex) a few keys; the history of
invocations and completions is checked for linearizability per key (``check_linearizable``).
At the end the network heals, every member restarts, and the cluster must converge.
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import dataclass, field
from typing import Any

import msgpack  # type: ignore[import-untyped]

from fastkv.raft import (
    Config,
    Entry,
    EntryNormal,
    MemoryStorage,
    Message,
    ProposalDropped,
    RawNode,
    Ready,
    StateLeader,
)

KEYS = ("x", "y")
PUT, CAS, READ = "put", "cas", "read"


class SafetyViolation(AssertionError):
    """A safety property of Raft or linearizability was broken."""


@dataclass
class Op:
    """One client operation; ``complete`` is None while pending or when its outcome is unknown."""

    id: int
    kind: str
    key: str
    arg: Any
    invoke: int
    node: int
    complete: int | None = None
    result: object = None


@dataclass
class SimMember:
    """A member: its durable storage survives crashes; the node and applied state do not."""

    id: int
    storage: MemoryStorage
    node: RawNode | None = None
    kv: dict[str, object] = field(default_factory=dict)
    results: dict[int, object] = field(default_factory=dict)  # op id -> result (dedupes retries)
    applied: int = 0
    waiting_reads: list[tuple[int, Op]] = field(default_factory=list)

    @property
    def raw(self) -> RawNode:
        """The running node (the member must be up)."""
        assert self.node is not None, f"member {self.id} is down"
        return self.node


# --- the replicated key-value model ---------------------------------------------------------------


def apply_command(member: SimMember, data: bytes) -> tuple[int, object]:
    """Apply one command; a command seen before (a duplicated proposal) has no second effect."""
    op_id, kind, key, arg = msgpack.unpackb(data)
    if op_id in member.results:
        return op_id, member.results[op_id]
    result: object = None
    if kind == PUT:
        member.kv[key] = arg
    else:
        expected, new = arg
        result = member.kv.get(key) == expected
        if result:
            member.kv[key] = new
    member.results[op_id] = result
    return op_id, result


def snapshot_data(member: SimMember) -> bytes:
    return msgpack.packb((member.kv, list(member.results.items())))


def restore_data(member: SimMember, data: bytes) -> None:
    kv, results = msgpack.unpackb(data, strict_map_key=False) if data else ({}, [])
    member.kv = dict(kv)
    member.results = {k: v for k, v in results}


# --- linearizability ----------------------------------------------------------------------------


def _step_model(op: Op, value: object, pending: bool) -> list[object]:
    """The register values ``op`` may leave when applied to ``value``; empty when impossible."""
    if op.kind == PUT:
        return [op.arg]
    if op.kind == READ:
        return [value] if op.result == value else []
    expected, new = op.arg
    if pending:
        return [new if value == expected else value]
    if op.result:
        return [new] if value == expected else []
    return [value] if value != expected else []


def check_linearizable(ops: list[Op]) -> bool:
    """Wing & Gong's search with memoization over (linearized set, value), for one register.

    Completed operations must all be linearized between their invocation and completion;
    operations whose outcome is unknown (``complete is None``) may take effect any time after
    their invocation, or never. Reads that never completed are ignored."""
    ops = sorted((op for op in ops if op.complete is not None or op.kind != READ), key=lambda o: o.invoke)
    n = len(ops)
    inf = float("inf")
    completes = [op.complete if op.complete is not None else inf for op in ops]
    required = 0
    for i, op in enumerate(ops):
        if op.complete is not None:
            required |= 1 << i
    seen: set[tuple[int, object]] = set()

    def search(done: int, value: object) -> bool:
        if done & required == required:
            return True
        if (done, value) in seen:
            return False
        seen.add((done, value))
        horizon = min(completes[i] for i in range(n) if not done >> i & 1)
        for i in range(n):
            if done >> i & 1:
                continue
            op = ops[i]
            if op.invoke > horizon:
                break
            for new in _step_model(op, value, op.complete is None):
                if search(done | 1 << i, new):
                    return True
        return False

    return search(0, None)


# --- the simulation -----------------------------------------------------------------------------


class Simulation:
    """One seeded schedule of ``steps`` random actions on a cluster of 3 to 5 members."""

    def __init__(self, seed: int, steps: int = 400, trace: bool = False) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.steps = steps
        self.trace: list[str] | None = [] if trace else None
        self.voters = tuple(range(1, self.rng.choice((3, 3, 4, 5)) + 1))
        self.members = {i: SimMember(i, MemoryStorage()) for i in self.voters}
        for member in self.members.values():
            self.start(member)
        self.network: list[Message] = []
        self.group: dict[int, int] = {}       # member -> partition group (absent: group 0)
        self.loss = self.rng.choice((0.0, 0.02, 0.1))
        self.duplication = self.rng.choice((0.0, 0.05))
        self.faults = self.rng.choice((0.2, 1.0))  # how often crashes and partitions strike
        self.clock = 0                        # orders invocations and completions
        self.next_op = 1
        self.ops: list[Op] = []
        self.clients: dict[int, Op | None] = {c: None for c in range(3)}
        self.op_timeout = 250
        # Safety bookkeeping.
        self.leaders: dict[int, int] = {}                         # term -> leader id
        self.saved: dict[tuple[int, int], tuple[bytes, int]] = {}  # (index, term) -> (data, prev term)
        self.applied: dict[int, tuple[int, bytes]] = {}          # index -> (term, data)
        self.commits: dict[int, tuple[int, int]] = {}            # leader term -> (index, entry term)
        self.step_no = 0

    # --- plumbing ------------------------------------------------------------------------------

    def log(self, text: str) -> None:
        if self.trace is not None:
            self.trace.append(f"[{self.step_no}] {text}")

    def fail(self, text: str) -> None:
        raise SafetyViolation(f"seed {self.seed} step {self.step_no}: {text}")

    def start(self, member: SimMember) -> None:
        snap = member.storage.snapshot()
        config = Config(member.id, self.voters, election_tick=4, heartbeat_tick=1,
                        max_size_per_msg=256, max_inflight=self.rng.choice((1, 4, 64)),
                        rng=random.Random(self.rng.random()), applied=snap.index)
        member.node = RawNode(config, member.storage)
        restore_data(member, snap.data)
        member.applied = snap.index
        member.waiting_reads = []

    def live(self) -> list[SimMember]:
        return [m for m in self.members.values() if m.node is not None]

    # --- the Ready loop ------------------------------------------------------------------------

    def handle_ready(self, member: SimMember, send: bool = True) -> None:
        node = member.node
        assert node is not None
        rd = node.ready()
        self.save(member, rd)
        if not send:
            return
        self.network.extend(rd.messages)
        if rd.snapshot is not None:
            restore_data(member, rd.snapshot.data)
            member.applied = rd.snapshot.index
        for e in rd.committed_entries:
            self.apply(member, e)
        for rs in rd.read_states:
            op = self.op_by_ctx(rs.context)
            if op is not None:
                member.waiting_reads.append((rs.index, op))
        node.advance(rd)
        self.serve_reads(member)

    def save(self, member: SimMember, rd: Ready) -> None:
        storage = member.storage
        storage.save(rd)
        for e in rd.entries:
            prev = storage.term(e.index - 1) if e.index - 1 >= storage.first_index() - 1 else -1
            known = self.saved.get((e.index, e.term))
            if known is None:
                self.saved[(e.index, e.term)] = (e.data, prev)
            elif known[0] != e.data or (prev != -1 and known[1] != -1 and known[1] != prev):
                self.fail(f"log matching: {member.id} saved {e.describe()} after term {prev}, "
                          f"another log has {known!r}")

    def apply(self, member: SimMember, e: Entry) -> None:
        if e.index <= member.applied:
            return
        if e.index != member.applied + 1:
            self.fail(f"{member.id} applies {e.index} after {member.applied}")
        member.applied = e.index
        known = self.applied.setdefault(e.index, (e.term, e.data))
        if known != (e.term, e.data):
            self.fail(f"state machine safety: {member.id} applies {e.describe()}, another applied {known!r}")
        if e.type != EntryNormal or not e.data:
            return
        op_id, result = apply_command(member, e.data)
        op = self.pending_op(op_id)
        if op is not None and op.node == member.id:
            self.complete(op, result)

    def serve_reads(self, member: SimMember) -> None:
        keep = []
        for index, op in member.waiting_reads:
            if index <= member.applied:
                if op.complete is None and self.clients.get(op.id % 1000) is op:
                    self.complete(op, member.kv.get(op.key))
            else:
                keep.append((index, op))
        member.waiting_reads = keep

    # --- clients -----------------------------------------------------------------------------

    def pending_op(self, op_id: int) -> Op | None:
        op = self.clients.get(op_id % 1000)
        return op if op is not None and op.id == op_id else None

    def op_by_ctx(self, ctx: bytes) -> Op | None:
        return self.pending_op(int(ctx))

    def complete(self, op: Op, result: object) -> None:
        self.clock += 1
        op.complete = self.clock
        op.result = result
        self.clients[op.id % 1000] = None
        self.log(f"complete op {op.id} {op.kind} {op.key} {op.arg!r} -> {result!r}")

    def invoke(self, client: int) -> None:
        member = self.rng.choice(self.live())
        node = member.node
        assert node is not None
        kind = self.rng.choice((PUT, PUT, CAS, READ, READ))
        key = self.rng.choice(KEYS)
        op_id = self.next_op * 1000 + client
        self.next_op += 1
        arg: object = None
        if kind == PUT:
            arg = self.rng.randrange(5)
        elif kind == CAS:
            arg = (self.rng.choice((None, 0, 1, 2, 3, 4)), self.rng.randrange(5))
        self.clock += 1
        op = Op(op_id, kind, key, arg, self.clock, member.id)
        try:
            if kind == READ:
                node.read_index(str(op_id).encode())
            else:
                node.propose(msgpack.packb((op_id, kind, key, arg)))
        except ProposalDropped:
            return  # surely without effect: not part of the history
        self.log(f"invoke op {op_id} {kind} {key} {arg!r} at {member.id}")
        self.ops.append(op)
        self.clients[client] = op

    def expire_ops(self) -> None:
        for client, op in self.clients.items():
            if op is not None and self.clock - op.invoke > self.op_timeout:
                self.log(f"op {op.id} times out: outcome unknown")
                self.clients[client] = None

    # --- faults ------------------------------------------------------------------------------

    def deliver(self) -> None:
        # Mostly one of the oldest few (short reordering), sometimes any (a long delay).
        window = len(self.network) if self.rng.random() < 0.05 else min(len(self.network), 4)
        k = self.rng.randrange(window)
        m = self.network[k]
        if self.rng.random() < self.duplication:
            self.log(f"duplicate {m.describe()}")
        else:
            del self.network[k]
        target = self.members.get(m.to)
        if target is None or target.node is None or self.group.get(m.frm, 0) != self.group.get(m.to, 0):
            return
        if self.rng.random() < self.loss:
            self.log(f"lose {m.describe()}")
            return
        self.log(f"deliver {m.describe()}")
        target.raw.step(m)

    def crash(self, member: SimMember) -> None:
        node = member.node
        assert node is not None
        if node.has_ready() and self.rng.random() < 0.5:
            self.handle_ready(member, send=False)  # saved, then crashed before sending
            self.log(f"crash {member.id} after saving a Ready")
        else:
            self.log(f"crash {member.id}")
        member.node = None
        member.waiting_reads = []

    def partition(self) -> None:
        ids = list(self.members)
        self.rng.shuffle(ids)
        cut = self.rng.randrange(1, len(ids))
        self.group = {i: (0 if j < cut else 1) for j, i in enumerate(ids)}
        self.log(f"partition {sorted(ids[:cut])} | {sorted(ids[cut:])}")

    def compact(self, member: SimMember) -> None:
        node = member.node
        assert node is not None
        if member.applied > member.storage.first_index() + 2:
            self.log(f"compact {member.id} at {member.applied}")
            node.compact(member.applied, snapshot_data(member))

    # --- checks ------------------------------------------------------------------------------

    def check(self) -> None:
        for member in self.live():
            node = member.node
            assert node is not None
            if node.state != StateLeader:
                continue
            term = node.term
            leader = self.leaders.setdefault(term, member.id)
            if leader != member.id:
                self.fail(f"election safety: {leader} and {member.id} both lead term {term}")
            if term not in self.commits:
                self.check_leader_completeness(member, term)
                self.commits[term] = (0, 0)
            committed = node.committed
            if self.commits[term][0] < committed:
                self.commits[term] = (committed, node.log_term(committed))

    def check_leader_completeness(self, member: SimMember, term: int) -> None:
        node = member.node
        assert node is not None
        index, entry_term = max((v for t, v in self.commits.items() if t < term), default=(0, 0))
        if index >= node.first_index - 1 and node.log_term(index) != entry_term:
            self.fail(f"leader completeness: {member.id} leads term {term} without committed entry "
                      f"{entry_term}/{index}")

    def check_logs_match(self) -> None:
        """The full §5.3 Log Matching check across every pair of live members."""
        logs = {m.id: {e.index: e for e in m.raw.log_entries()} for m in self.live() if m.node}
        for a, la in logs.items():
            for b, lb in logs.items():
                if a >= b:
                    continue
                common = sorted(set(la) & set(lb), reverse=True)
                matched = False
                for i in common:
                    if la[i].term == lb[i].term:
                        matched = True
                    if matched and la[i] != lb[i]:
                        self.fail(f"log matching: {a} and {b} differ at {i} below a matching entry")

    # --- the schedule ------------------------------------------------------------------------

    def step(self) -> None:
        rng = self.rng
        self.clock += 1
        live = self.live()
        roll = rng.random()
        if roll < 0.22:
            member = rng.choice(live)
            member.raw.tick()
        elif roll < 0.60:
            if self.network:
                self.deliver()
        elif roll < 0.85:
            ready = [m for m in live if m.raw.has_ready()]
            if ready:
                self.handle_ready(rng.choice(ready))
        elif roll < 0.955:
            client = rng.randrange(len(self.clients))
            if self.clients[client] is None:
                self.invoke(client)
        elif roll < 0.96:
            if len(live) > 1 and rng.random() < self.faults:
                self.crash(rng.choice(live))
        elif roll < 0.975:
            down = [m for m in self.members.values() if m.node is None]
            if down:
                member = rng.choice(down)
                self.log(f"restart {member.id}")
                self.start(member)
        elif roll < 0.99:
            if self.group:
                self.group = {}
                self.log("heal")
            elif rng.random() < self.faults:
                self.partition()
        else:
            self.compact(rng.choice(live))
        self.expire_ops()
        self.check()

    def settle(self, limit: int = 3000) -> None:
        """Heal, restart everyone and run fault-free until all members applied the same index."""
        self.group = {}
        self.loss = self.duplication = 0.0
        for member in self.members.values():
            if member.node is None:
                self.start(member)
        for _ in range(limit):
            self.step_no += 1
            for member in self.members.values():
                while member.raw.has_ready():
                    self.handle_ready(member)
            while self.network:
                self.deliver()
                for member in self.members.values():
                    while member.raw.has_ready():
                        self.handle_ready(member)
            self.check()
            nodes = [m.raw for m in self.members.values()]
            leader = [n for n in nodes if n.state == StateLeader]
            if leader and all(n.applied == leader[0].committed and n.lead == leader[0].id for n in nodes) \
                    and leader[0].log_term(leader[0].committed) == leader[0].term:
                return
            for n in nodes:
                n.tick()
        self.fail("the cluster did not converge after healing")

    def run(self) -> Simulation:
        for step_no in range(1, self.steps + 1):
            self.step_no = step_no
            self.step()
        self.settle()
        self.check_logs_match()
        for key in KEYS:
            history = [op for op in self.ops if op.key == key]
            if not check_linearizable(history):
                self.fail(f"history of {key!r} is not linearizable: {history!r}")
        return self


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Replay one seeded Raft simulation.")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--trace", action="store_true", help="print every action")
    opts = parser.parse_args(argv)
    sim = Simulation(opts.seed, opts.steps, trace=opts.trace)
    try:
        sim.run()
    except SafetyViolation as e:
        print("\n".join(sim.trace or []))
        print(f"FAIL: {e}")
        return 1
    print("\n".join(sim.trace or []))
    done = sum(op.complete is not None for op in sim.ops)
    print(f"seed {opts.seed}: ok, {len(sim.voters)} members, {len(sim.ops)} ops ({done} completed), "
          f"terms {sorted(sim.leaders)}, applied {max(sim.applied, default=0)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

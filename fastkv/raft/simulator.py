"""A deterministic simulation of a Raft cluster that checks safety after every step.

Members run in one process on an in-memory network that loses, duplicates, delays and
reorders messages, is partitioned and healed, and whose members crash (keeping only what a
``Ready`` had them save) and restart. Voters are added and removed (the leader too), one pending
change at a time, and leadership is handed to random members. Everything is drawn from one
``random.Random(seed)``, so a seed names a schedule: ``python -m fastkv.raft.simulator --seed N
[--trace]`` replays it.

Checked after every step (``SafetyViolation`` otherwise):

* election safety: at most one leader per term (§5.2), whatever the configurations;
* configuration: every member's voters are those of the configuration in force at the index it
  applied (the bootstrap voters changed by the configuration changes applied up to there);
* commit quorum: when a leader's commit index advances, the entry there is held (in memory by
  the leader, saved by the others) by a majority of the voters of its configuration in force;
* log matching: two saved entries with the same index and term hold the same data and follow
  the same previous term, hence the logs agree up to there (§5.3);
* leader completeness: a new leader holds every entry committed in an earlier term (§5.4);
* state machine safety: no two members apply different entries at the same index (§5.4.3).

A joining member starts with the bootstrap voters, as a restarted member without a snapshot
does, so it replays every configuration change; a removed member keeps running (it may not
know it was removed) but is no longer expected to keep up.

Clients write, compare-and-swap and read (through ReadIndex) a few keys; the history of
invocations and completions is checked for linearizability per key
(``fastkv.raft.linearizability``). At the end the network heals, every member restarts, and the
voters of the final configuration must converge.
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import dataclass, field

import msgpack  # type: ignore[import-untyped]

from fastkv.raft import (
    ConfChange,
    ConfChangeAddNode,
    ConfChangeRemoveNode,
    Config,
    Entry,
    EntryConfChange,
    EntryNormal,
    MemoryStorage,
    Message,
    MsgApp,
    MsgHeartbeat,
    ProposalDropped,
    RawNode,
    Ready,
    StateLeader,
)
from fastkv.raft.linearizability import CAS, PUT, READ, Op, check_linearizable

KEYS = ("x", "y")
MAX_VOTERS = 5
MAX_MEMBER_ID = 9  # members ever created, bootstrap ones included (ids are never reused)


class SafetyViolation(AssertionError):
    """A safety property of Raft or linearizability was broken."""


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
    # Pipelined Readies taken from the node, oldest first, not saved yet; with each, the
    # messages it already sent (a leader's appends leave before its sync when nothing older is
    # in flight).
    in_flight: list[tuple[Ready, list[Message]]] = field(default_factory=list)

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


# --- the simulation -----------------------------------------------------------------------------


class Simulation:
    """One seeded schedule of ``steps`` random actions on a cluster of 3 to 5 members at first, 1 to
    ``MAX_VOTERS`` voters later."""

    def __init__(self, seed: int, steps: int = 400, trace: bool = False, pipeline: bool = False) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.steps = steps
        self.pipeline = pipeline  # members take new Readies while older ones are not saved yet
        self.trace: list[str] | None = [] if trace else None
        self.bootstrap = tuple(range(1, self.rng.choice((3, 3, 4, 5)) + 1))
        self.members = {i: SimMember(i, MemoryStorage()) for i in self.bootstrap}
        self.next_id = len(self.bootstrap) + 1
        # (first applied at, voters) for every configuration, the bootstrap one at 0
        self.configs: list[tuple[int, frozenset[int]]] = [(0, frozenset(self.bootstrap))]
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
        self.leader_commits: dict[int, int] = {}                 # leader term -> commit index checked
        self.step_no = 0

    # --- plumbing ------------------------------------------------------------------------------

    def log(self, text: str) -> None:
        if self.trace is not None:
            self.trace.append(f"[{self.step_no}] {text}")

    def fail(self, text: str) -> None:
        raise SafetyViolation(f"seed {self.seed} step {self.step_no}: {text}")

    def start(self, member: SimMember) -> None:
        snap = member.storage.snapshot()
        config = Config(member.id, self.bootstrap, election_tick=4, heartbeat_tick=1,
                        max_size_per_msg=256, max_inflight=self.rng.choice((1, 4, 64)),
                        rng=random.Random(self.rng.random()), applied=snap.index)
        member.node = RawNode(config, member.storage)
        restore_data(member, snap.data)
        member.applied = snap.index
        member.waiting_reads = []
        member.in_flight = []
        self.check_config(member)

    def live(self) -> list[SimMember]:
        return [m for m in self.members.values() if m.node is not None]

    @property
    def voters(self) -> frozenset[int]:
        """The voters of the latest configuration any member applied."""
        return self.configs[-1][1]

    def config_at(self, index: int) -> frozenset[int]:
        """The voters in force at ``index``: the bootstrap ones changed by every configuration
        change applied at or before ``index``."""
        voters = self.configs[0][1]
        for at, config in self.configs:
            if at > index:
                break
            voters = config
        return voters

    def leader(self) -> SimMember | None:
        """The live member leading the highest term, if any."""
        leaders = [m for m in self.live() if m.raw.state == StateLeader]
        return max(leaders, key=lambda m: m.raw.term, default=None)

    # --- the Ready loop ------------------------------------------------------------------------

    def busy(self, member: SimMember) -> bool:
        """The member has a Ready to take or one in flight."""
        return bool(member.in_flight) or member.raw.has_ready()

    def take_ready(self, member: SimMember) -> None:
        """Pipelining: take a Ready without saving it yet. A leader's appends and heartbeats
        leave at once when no older Ready is in flight (as the server sends them before its
        sync); the rest waits for the save."""
        rd = member.raw.ready()
        early: list[Message] = []
        if not member.in_flight and rd.entries:
            early = [m for m in rd.messages if m.type in (MsgApp, MsgHeartbeat)]
            self.network.extend(early)
        member.in_flight.append((rd, early))
        self.log(f"{member.id} takes a Ready ({len(member.in_flight)} in flight)")

    def handle_ready(self, member: SimMember, send: bool = True) -> None:
        """Save the oldest Ready in flight (else a new one), then send, apply and advance it
        (unless ``send`` is false: the member crashes right after the save)."""
        node = member.node
        assert node is not None
        if member.in_flight:
            rd, early = member.in_flight.pop(0)
        else:
            rd, early = node.ready(), []
        self.save(member, rd)
        if not send:
            return
        if member.in_flight and not early and member.in_flight[0][0].entries:
            # The next Ready's appends may leave now: everything older is saved.
            nxt, _ = member.in_flight[0]
            sent = [m for m in nxt.messages if m.type in (MsgApp, MsgHeartbeat)]
            self.network.extend(sent)
            member.in_flight[0] = (nxt, sent)
        self.network.extend(m for m in rd.messages if not any(m is e for e in early))
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
        self.check_config(member)
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
        known = self.applied.get(e.index)
        if known is None:
            self.applied[e.index] = (e.term, e.data)
            if e.type == EntryConfChange:
                self.record_conf_change(e)
        elif known != (e.term, e.data):
            self.fail(f"state machine safety: {member.id} applies {e.describe()}, another applied {known!r}")
        if e.type != EntryNormal or not e.data:
            return
        op_id, result = apply_command(member, e.data)
        op = self.pending_op(op_id)
        if op is not None and op.node == member.id:
            self.complete(op, result)

    def record_conf_change(self, e: Entry) -> None:
        """The first application of a configuration change anywhere; indices only grow here,
        because a member applies an entry only after it (or a snapshot's author) applied the
        previous one."""
        cc = ConfChange.decode(e.data)
        at, voters = self.configs[-1]
        if e.index <= at:
            self.fail(f"configuration change at {e.index} first applied after one at {at}")
        voters = voters | {cc.node_id} if cc.type == ConfChangeAddNode else voters - {cc.node_id}
        self.configs.append((e.index, voters))
        self.log(f"configuration at {e.index}: {sorted(voters)}")

    def check_config(self, member: SimMember) -> None:
        """After ``advance``: the member's voters are those in force at its applied index."""
        node = member.raw
        expected = self.config_at(node.applied)
        if set(node.raft.prs) != expected:
            self.fail(f"configuration: {member.id} applied {node.applied} with voters "
                      f"{sorted(node.raft.prs)}, in force there: {sorted(expected)}")

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

    # --- membership and leadership ----------------------------------------------------------

    def change_membership(self) -> None:
        """Propose adding a new voter or removing one (the leader a third of the time) through a
        random live member; a proposal that is refused at once changes nothing."""
        voters = self.voters
        member = self.rng.choice(self.live())
        add = len(voters) < MAX_VOTERS and self.next_id <= MAX_MEMBER_ID and (
            len(voters) == 1 or self.rng.random() < 0.5)
        note = ""
        if add:
            cc = ConfChange(ConfChangeAddNode, self.next_id)
        elif len(voters) > 1:
            leader = self.leader()
            if leader is not None and leader.id in voters and self.rng.random() < 0.3:
                target, note = leader.id, " (the leader)"
            else:
                target = self.rng.choice(sorted(voters))
            cc = ConfChange(ConfChangeRemoveNode, target)
        else:
            return
        try:
            member.raw.propose_conf_change(cc)
        except ProposalDropped as e:
            self.log(f"propose {cc.describe()} at {member.id}: dropped ({e})")
            return
        self.log(f"propose {cc.describe()}{note} at {member.id}")
        if add:
            # Started now, as an operator starts a member after adding it; it waits for the leader.
            joiner = SimMember(self.next_id, MemoryStorage())
            self.members[joiner.id] = joiner
            self.next_id += 1
            self.start(joiner)

    def transfer_leadership(self) -> None:
        """Ask (through a random live member) for leadership to go to a random member, which may
        be down, removed, or not a voter at all."""
        member = self.rng.choice(self.live())
        to = self.rng.choice(sorted(self.members))
        try:
            member.raw.transfer_leader(to)
        except ProposalDropped:
            return
        self.log(f"transfer leadership to {to} via {member.id}")

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

    @staticmethod
    def handing_over(member: SimMember) -> bool:
        """A removed leader that has not handed leadership over yet. It is never crashed: if it
        dies then, the voter left with it in a configuration of two may never learn that the
        removal committed and needs its vote, which a longer log refuses (a hazard etcd shares)."""
        node = member.raw
        return node.state == StateLeader and node.id not in node.raft.prs

    def crash(self, member: SimMember) -> None:
        node = member.node
        assert node is not None
        if self.busy(member) and self.rng.random() < 0.5:
            self.handle_ready(member, send=False)  # saved, then crashed before sending
            self.log(f"crash {member.id} after saving a Ready")
        else:
            self.log(f"crash {member.id}")
        member.node = None  # the Readies still in flight were never saved: lost
        member.waiting_reads = []
        member.in_flight = []

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
        for member in self.members.values():
            node = member.node
            if node is None or node.state != StateLeader:
                continue
            term = node.term
            leader = self.leaders.setdefault(term, member.id)
            if leader != member.id:
                self.fail(f"election safety: {leader} and {member.id} both lead term {term}")
            if term not in self.commits:
                self.check_leader_completeness(member, term)
                self.commits[term] = (0, 0)
                self.leader_commits[term] = node.committed  # inherited: committed by earlier leaders
            if node.committed > self.leader_commits.get(term, 0):
                self.check_commit_quorum(member)
                self.leader_commits[term] = node.committed
            if node.committed > self.commits[term][0]:
                durable = self.durable_commit(member)
                if self.commits[term][0] < durable:
                    self.commits[term] = (durable, node.log_term(durable))

    def durable_commit(self, member: SimMember) -> int:
        """The leader's commit index, capped at its saved log: a leader counts its own copy before
        saving it, and a lone voter that crashes first never committed what it did not save."""
        node = member.raw
        storage = member.storage
        index = min(node.committed, storage.last_index())
        floor = self.commits[node.term][0]
        while index > floor and not self.holds(storage, index, node.log_term(index)):
            index -= 1
        return max(index, floor)

    def check_commit_quorum(self, member: SimMember) -> None:
        """The leader's new commit index names an entry held by a majority of the voters in force
        at the leader (its applied configuration): itself, and others that saved it."""
        node = member.raw
        index, term = node.committed, node.log_term(node.committed)
        voters = self.config_at(node.applied)
        holders = [v for v in voters if v == member.id or self.holds(self.members[v].storage, index, term)]
        if len(holders) <= len(voters) // 2:
            self.fail(f"commit quorum: {member.id} commits {term}/{index} held only by {sorted(holders)} "
                      f"of voters {sorted(voters)}")

    @staticmethod
    def holds(storage: MemoryStorage, index: int, term: int) -> bool:
        """Whether ``storage`` saved entry ``term/index`` (or a snapshot covering it)."""
        if storage.snapshot().index >= index:
            return True
        return storage.first_index() <= index <= storage.last_index() and storage.term(index) == term

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
            ready = [m for m in live if self.busy(m)]
            if ready:
                member = rng.choice(ready)
                if self.pipeline and member.raw.has_ready() and rng.random() < 0.4:
                    self.take_ready(member)
                else:
                    self.handle_ready(member)
        elif roll < 0.935:
            client = rng.randrange(len(self.clients))
            if self.clients[client] is None:
                self.invoke(client)
        elif roll < 0.955:
            if rng.random() < 0.5:
                self.change_membership()
            else:
                self.transfer_leadership()
        elif roll < 0.96:
            if len(live) > 1 and rng.random() < self.faults:
                self.crash(rng.choice([m for m in live if not self.handing_over(m)] or live))
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
        """Heal, restart everyone and run fault-free until one leader leads every voter of its
        configuration and they all applied its commit index, an entry of its term."""
        self.group = {}
        self.loss = self.duplication = 0.0
        for member in self.members.values():
            if member.node is None:
                self.start(member)
        for _ in range(limit):
            self.step_no += 1
            self.drain_readies()
            while self.network:
                self.deliver()
                self.check()  # after every action: a commit is checked against the configuration it used
                self.drain_readies()
            if self.converged():
                return
            for member in self.members.values():
                member.raw.tick()
        self.fail("the cluster did not converge after healing")

    def drain_readies(self) -> None:
        for member in self.members.values():
            while self.busy(member):
                self.handle_ready(member)
                self.check()

    def converged(self) -> bool:
        leader = self.leader()
        if leader is None:
            return False
        node = leader.raw
        if node.id not in node.raft.prs or node.log_term(node.committed) != node.term:
            return False  # a removed leader still hands over, or the term's first entry is not committed
        return all(self.members[v].raw.applied == node.committed and self.members[v].raw.lead == node.id
                   for v in node.raft.prs)

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
    parser.add_argument("--pipeline", action="store_true",
                        help="members take new Readies before the older ones are saved")
    opts = parser.parse_args(argv)
    sim = Simulation(opts.seed, opts.steps, trace=opts.trace, pipeline=opts.pipeline)
    try:
        sim.run()
    except SafetyViolation as e:
        print("\n".join(sim.trace or []))
        print(f"FAIL: {e}")
        return 1
    print("\n".join(sim.trace or []))
    done = sum(op.complete is not None for op in sim.ops)
    print(f"seed {opts.seed}: ok, voters {list(sim.bootstrap)} -> {sorted(sim.voters)}, "
          f"{len(sim.ops)} ops ({done} completed), "
          f"terms {sorted(sim.leaders)}, applied {max(sim.applied, default=0)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

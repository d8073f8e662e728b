"""One test per rule of the Raft paper (§ numbers of "In Search of an Understandable Consensus
Algorithm"; "thesis" is Ongaro's dissertation), on members driven by hand."""

import random

import msgpack
import pytest

from fastkv.raft import (
    ConfChange,
    ConfChangeAddNode,
    ConfChangeRemoveNode,
    Config,
    Entry,
    EntryConfChange,
    MemoryStorage,
    Message,
    MsgApp,
    MsgAppResp,
    MsgHeartbeatResp,
    MsgPreVote,
    MsgTimeoutNow,
    MsgVote,
    MsgVoteResp,
    ProposalDropped,
    RawNode,
    Snapshot,
    StateCandidate,
    StateFollower,
    StateLeader,
)
from fastkv.raft.interaction import Interaction


def cluster(n: int = 3, **options: str) -> Interaction:
    env = Interaction()
    extra = " ".join(f"{k}={v}" for k, v in options.items())
    env.run(f"add-nodes {n} voters=({','.join(str(i) for i in range(1, n + 1))}) {extra}")
    return env


def elected(n: int = 3, **options: str) -> Interaction:
    env = cluster(n, **options)
    env.run("campaign 1")
    env.run("stabilize")
    return env


def node(env: Interaction, mid: int) -> RawNode:
    return env.members[mid].node


def drain(n: RawNode) -> list[Message]:
    """Save nothing, just take the Ready's messages (for single-member inspection)."""
    rd = n.ready()
    n.storage.save(rd)
    n.advance(rd)
    return list(rd.messages)


def lone(mid: int = 1, peers: tuple[int, ...] = (1, 2, 3), pre_vote: bool = False) -> RawNode:
    return RawNode(Config(mid, peers, pre_vote=pre_vote, check_quorum=False, rng=random.Random(mid)),
                   MemoryStorage())


def test_5_2_follower_without_leader_campaigns_within_randomized_timeout() -> None:
    """§5.2: if a follower receives no communication over the election timeout, it begins an
    election; timeouts are chosen randomly from a fixed interval."""
    for seed in range(20):
        n = RawNode(Config(1, (1, 2, 3), election_tick=10, pre_vote=False, rng=random.Random(seed)),
                    MemoryStorage())
        ticks = 0
        while n.state == StateFollower:
            n.tick()
            ticks += 1
        assert 10 <= ticks < 20
        assert n.state == StateCandidate and n.term == 1


def test_5_2_candidate_with_majority_of_votes_becomes_leader() -> None:
    """§5.2: a candidate wins an election if it receives votes from a majority."""
    n = lone()
    n.campaign()
    votes = [m for m in drain(n) if m.type == MsgVote]
    assert sorted(m.to for m in votes) == [2, 3]
    n.step(Message(MsgVoteResp, to=1, frm=2, term=1))
    assert n.state == StateLeader


def test_5_2_each_server_votes_for_at_most_one_candidate_per_term() -> None:
    """§5.2: each server will vote for at most one candidate in a given term."""
    n = lone(1)
    n.step(Message(MsgVote, to=1, frm=2, term=1))
    n.step(Message(MsgVote, to=1, frm=3, term=1))
    replies = [m for m in drain(n) if m.type == MsgVoteResp]
    assert [(m.to, m.reject) for m in replies] == [(2, False), (3, True)]


def test_5_1_higher_term_makes_leader_a_follower() -> None:
    """§5.1: if a server's term is stale it reverts to follower state."""
    env = elected()
    node(env, 1).step(Message(MsgApp, to=1, frm=2, term=5))
    assert node(env, 1).state == StateFollower and node(env, 1).term == 5 and node(env, 1).lead == 2


def test_5_1_stale_term_request_is_rejected() -> None:
    """§5.1: a server rejects a request with a stale term number (and, with pre-vote, tells the
    stale leader the current term)."""
    n = lone(pre_vote=True)
    n.step(Message(MsgApp, to=1, frm=2, term=3, entries=[Entry(3, 1)]))
    drain(n)
    n.step(Message(MsgApp, to=1, frm=3, term=2, entries=[Entry(2, 1)]))
    (reply,) = drain(n)
    assert reply.type == MsgAppResp and reply.term == 3 and reply.to == 3
    assert n.log_term(1) == 3


def test_5_3_follower_rejects_entries_whose_predecessor_does_not_match() -> None:
    """§5.3: if the follower does not find an entry with the same index and term, it refuses."""
    n = lone()
    n.step(Message(MsgApp, to=1, frm=2, term=1, index=5, log_term=1, entries=[Entry(1, 6)]))
    (reply,) = drain(n)
    assert reply.reject and reply.index == 5 and reply.reject_hint == 0


def test_5_3_conflicting_entries_are_replaced_by_the_leaders() -> None:
    """§5.3: if an existing entry conflicts with a new one, delete it and all that follow it."""
    n = lone()
    n.step(Message(MsgApp, to=1, frm=2, term=1, entries=[Entry(1, 1, data=b"a"), Entry(1, 2, data=b"b"),
                                                          Entry(1, 3, data=b"c")]))
    drain(n)
    n.step(Message(MsgApp, to=1, frm=3, term=2, index=1, log_term=1, entries=[Entry(2, 2, data=b"x")]))
    drain(n)
    assert [(e.term, e.data) for e in n.log_entries()] == [(1, b"a"), (2, b"x")]


def test_5_3_leader_replicates_and_every_member_applies_in_order() -> None:
    """§5.3: once an entry is committed, each server applies it in log order."""
    env = elected()
    for data in "abc":
        env.run(f"propose 1 {data}")
    env.run("stabilize")
    assert all(m.applied == [b"a", b"b", b"c"] for m in env.members.values())


def test_5_4_1_vote_denied_to_candidate_with_less_up_to_date_log() -> None:
    """§5.4.1: the voter denies its vote if its own log is more up-to-date than the candidate's."""
    n = lone()
    n.step(Message(MsgApp, to=1, frm=2, term=2, entries=[Entry(2, 1)]))
    drain(n)
    n.step(Message(MsgVote, to=1, frm=3, term=3, index=5, log_term=1))
    (reply,) = drain(n)
    assert reply.reject
    n.step(Message(MsgVote, to=1, frm=2, term=3, index=1, log_term=2))
    (reply,) = drain(n)
    assert not reply.reject


def test_5_4_2_entries_from_previous_terms_are_not_committed_by_counting_replicas() -> None:
    """§5.4.2: only log entries from the leader's current term are committed by counting
    replicas (Figure 8)."""
    storage = MemoryStorage()
    storage.append([Entry(1, 1), Entry(2, 2, data=b"old")])
    n = RawNode(Config(1, (1, 2, 3), pre_vote=False, check_quorum=False), storage)
    n.campaign()
    drain(n)
    n.step(Message(MsgVoteResp, to=1, frm=2, term=n.term))
    assert n.state == StateLeader and n.term == 1  # terms are stored in entries only
    drain(n)
    # Follower 2 acknowledges the old entry only: a majority has index 2, but it is not ours.
    n.step(Message(MsgAppResp, to=1, frm=2, term=n.term, index=2))
    assert n.committed == 0
    # It acknowledges our term's empty entry: now index 3 commits, and index 2 with it.
    n.step(Message(MsgAppResp, to=1, frm=2, term=n.term, index=3))
    assert n.committed == 3


def test_6_one_configuration_change_at_a_time() -> None:
    """Thesis §4.1: a leader does not start a change until the previous one is applied."""
    env = elected()
    leader = node(env, 1)
    leader.propose_conf_change(ConfChange(ConfChangeRemoveNode, 3))
    with pytest.raises(ProposalDropped):
        leader.propose_conf_change(ConfChange(ConfChangeAddNode, 4))
    env.run("stabilize")
    assert leader.status().voters == (1, 2)
    leader.propose_conf_change(ConfChange(ConfChangeAddNode, 4))


def test_6_the_last_voter_is_never_removed() -> None:
    """With no voter left nobody could campaign again: the leader refuses such a change (the
    random schedules of seeds 6950 and 9682 removed the second-to-last and then the last voter)."""
    env = elected(2)
    leader = node(env, 1)
    leader.propose_conf_change(ConfChange(ConfChangeRemoveNode, 2))
    env.run("stabilize")
    assert leader.status().voters == (1,)
    with pytest.raises(ProposalDropped, match="last voter"):
        leader.propose_conf_change(ConfChange(ConfChangeRemoveNode, 1))
    leader.propose_conf_change(ConfChange(ConfChangeAddNode, 3))


def test_6_a_removed_leader_hands_over_to_a_voter_holding_its_log() -> None:
    """§6: the leader may be removed. It accepts nothing more and leads until a successor that
    holds its whole log takes over; stepping down at once left the last voter of two unaware
    that the removal committed, needing the old leader's vote, which its longer log refused."""
    env = elected(2)
    leader = node(env, 1)
    leader.propose_conf_change(ConfChange(ConfChangeRemoveNode, 1))
    env.run("stabilize")
    assert node(env, 2).state == StateLeader and node(env, 2).status().voters == (2,)
    env.run("tick-heartbeat 1")  # its next heartbeat tells the old leader of the new term
    env.run("stabilize")
    assert leader.state == StateFollower and leader.term == node(env, 2).term
    env.run("propose 2 after")
    env.run("stabilize")
    assert env.members[2].applied[-1:] == [b"after"]


def test_6_a_removed_member_does_not_take_over_when_asked() -> None:
    """Thesis §3.10 with §6: a transfer's campaign waits, like any campaign, until the committed
    configuration changes are applied; they may have removed the transferee."""
    n = lone(2, (1, 2, 3))
    n.step(Message(MsgApp, to=2, frm=1, term=1, entries=[
        Entry(1, 1), Entry(1, 2, EntryConfChange, ConfChange(ConfChangeRemoveNode, 2).encode())], commit=2))
    assert n.committed == 2 and n.applied == 0  # committed, not applied yet: still a voter
    n.step(Message(MsgTimeoutNow, to=2, frm=1, term=1))
    assert n.state == StateFollower and n.term == 1
    drain(n)
    assert n.status().voters == (1, 3)


def test_6_removed_member_stops_counting_toward_the_quorum() -> None:
    """§6: after the change commits, the new configuration's majority decides."""
    env = elected()
    env.run("propose-conf-change 1 remove=3")
    env.run("stabilize")
    env.run("partition 3")
    env.run("propose 1 x")
    env.run("stabilize 1 2")
    assert env.members[1].applied == [b"x"]


def test_6_4_read_index_waits_for_a_heartbeat_quorum() -> None:
    """Thesis §6.4: the leader confirms it is still leader before answering a read."""
    env = elected()
    env.run("read-index 1 ctx")
    first = env.run("process-ready 1")
    assert not any("ReadState" in line for line in first)
    assert sum('MsgHeartbeat Term:1 Log:0/0 Commit:1 Context:"ctx"' in line for line in first) == 2
    rest = env.run("stabilize")
    assert '  ReadState Index:1 Context:"ctx"' in rest
    env.run("partition 1")
    env.run("read-index 1 cut-off")
    assert not any("ReadState" in line for line in env.run("stabilize"))


def test_6_4_read_index_counts_only_acknowledgements_of_current_voters() -> None:
    """Thesis §6.4 with §6: a voter removed while a read waits no longer vouches for the leader; a
    member that missed the removal may still elect a new leader with the removed voter's help."""
    n = lone(1, (1, 2, 3, 4, 5))
    n.campaign()
    drain(n)
    for voter in (2, 3):
        n.step(Message(MsgVoteResp, to=1, frm=voter, term=n.term))
    assert n.state == StateLeader
    drain(n)

    def replicate(index: int) -> None:
        for voter in (2, 3):
            n.step(Message(MsgAppResp, to=1, frm=voter, term=n.term, index=index))
        drain(n)

    def ack(voter: int) -> list[bytes]:
        n.step(Message(MsgHeartbeatResp, to=1, frm=voter, term=n.term, context=b"r"))
        rd = n.ready()
        n.advance(rd)
        return [rs.context for rs in rd.read_states]

    replicate(1)
    n.read_index(b"r")
    drain(n)
    assert ack(5) == []
    n.propose_conf_change(ConfChange(ConfChangeRemoveNode, 5))
    drain(n)
    replicate(2)
    assert n.status().voters == (1, 2, 3, 4)
    assert ack(2) == []  # 1 and 2 are not a majority of (1, 2, 3, 4)
    assert ack(3) == [b"r"]


def test_9_6_pre_vote_does_not_raise_terms() -> None:
    """Thesis §9.6: a pre-candidate does not increment its term until it could win."""
    n = lone(pre_vote=True)
    n.campaign()
    msgs = drain(n)
    assert n.term == 0 and {m.type for m in msgs} == {MsgPreVote} and all(m.term == 1 for m in msgs)


def test_7_follower_behind_the_compacted_log_restores_the_snapshot() -> None:
    """§7: the leader sends InstallSnapshot to followers that lag too far behind."""
    env = elected()
    env.run("partition 3")
    for data in "ab":
        env.run(f"propose 1 {data}")
    env.run("stabilize 1 2")
    env.run("compact 1 3")
    env.run("heal")
    env.run("propose 1 c")
    env.run("stabilize")
    assert env.members[3].applied == [b"a", b"b", b"c"]
    assert env.members[3].storage.snapshot().index == 3


def test_ready_orders_persistence_before_the_messages_that_depend_on_it() -> None:
    """The vote is in the same Ready as the vote response: saving it first is the contract."""
    n = lone()
    n.step(Message(MsgVote, to=1, frm=2, term=1))
    rd = n.ready()
    assert rd.hard_state.vote == 2 and rd.must_sync
    assert [m.type for m in rd.messages] == [MsgVoteResp]


def test_messages_survive_a_msgpack_round_trip() -> None:
    m = Message(MsgApp, to=2, frm=1, term=3, log_term=2, index=5, commit=4,
                entries=[Entry(3, 6, data=b"x")], snapshot=Snapshot(4, 2, (1, 2, 3), b"s"), context=b"c")
    wire = msgpack.unpackb(msgpack.packb(m.to_wire()))
    assert Message.from_wire(wire).describe() == m.describe()
    assert m.describe() == ('1->2 MsgApp Term:3 Log:2/5 Commit:4 Context:"c" Entries:[3/6 EntryNormal "x"] '
                            'Snapshot: Index:4 Term:2 Voters:(1,2,3)')


def test_pipelined_readies_hand_out_each_entry_once_and_advance_in_order() -> None:
    """Readies may be taken before the previous one is advanced (the server saves one while
    the next fills): each entry is handed out to save once, each committed entry once to apply,
    and advancing them in order leaves nothing behind."""
    n = RawNode(Config(1, (1,), rng=random.Random(1)), MemoryStorage())
    n.campaign()
    first = n.ready()
    n.propose(b"a")
    second = n.ready()
    n.propose_many([b"b", b"c"])
    third = n.ready()
    assert not n.has_ready()
    saved = [e.data for rd in (first, second, third) for e in rd.entries]
    assert saved == [b"", b"a", b"b", b"c"]  # the leader's empty entry, then the proposals
    applied = [e.data for rd in (first, second, third) for e in rd.committed_entries]
    assert applied == saved  # a lone voter commits what it appends, each entry once
    for rd in (first, second, third):
        n.storage.save(rd)
        n.advance(rd)
    assert not n.has_ready()
    assert n.status().applied == n.status().commit == 4


def test_a_replaced_entry_in_flight_is_handed_out_again() -> None:
    """A follower whose entries in flight are replaced by a new leader's hands out the
    replacements in its next Ready, and advancing the stale Ready does not mark them stable."""
    f = lone(2)
    f.step(Message(MsgApp, frm=1, to=2, term=1, index=0, log_term=0, commit=0,
                   entries=[Entry(1, 1, data=b"old1"), Entry(1, 2, data=b"old2")]))
    stale = f.ready()
    assert [e.data for e in stale.entries] == [b"old1", b"old2"]
    f.step(Message(MsgApp, frm=3, to=2, term=2, index=1, log_term=1, commit=0,
                   entries=[Entry(2, 2, data=b"new2")]))
    fresh = f.ready()
    assert [(e.index, e.data) for e in fresh.entries] == [(2, b"new2")]
    for rd in (stale, fresh):
        f.storage.save(rd)
        f.advance(rd)
    assert [e.data for e in f.storage.entries(1, 3, 1 << 20)] == [b"old1", b"new2"]
    assert not f.has_ready() or not f.ready().entries

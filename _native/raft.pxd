# The shape of the Raft core: value types, the log, per-follower progress and the state machine.
# Read this file to know the module; the bodies live in raft.pyx.

ctypedef unsigned long long u64

cpdef enum MessageType:
    MsgHup = 0              # local: start an election (pre-vote first when enabled)
    MsgBeat = 1             # local: leader sends heartbeats
    MsgProp = 2             # proposal (local, or forwarded by a follower to the leader)
    MsgApp = 3              # AppendEntries
    MsgAppResp = 4
    MsgVote = 5             # RequestVote
    MsgVoteResp = 6
    MsgPreVote = 7          # RequestVote for term+1 that changes nobody's term (thesis §9.6)
    MsgPreVoteResp = 8
    MsgSnap = 9             # InstallSnapshot
    MsgHeartbeat = 10
    MsgHeartbeatResp = 11
    MsgTransferLeader = 12  # ask the leader to hand leadership to m.frm (thesis §3.10)
    MsgTimeoutNow = 13      # leader -> transferee: campaign now
    MsgReadIndex = 14       # linearizable read request (thesis §6.4)
    MsgReadIndexResp = 15

cpdef enum EntryType:
    EntryNormal = 0
    EntryConfChange = 1

cpdef enum StateType:
    StateFollower = 0
    StateCandidate = 1
    StateLeader = 2
    StatePreCandidate = 3

cpdef enum ProgressState:
    StateProbe = 0
    StateReplicate = 1
    StateSnapshot = 2

cpdef enum ConfChangeType:
    ConfChangeAddNode = 0
    ConfChangeRemoveNode = 1


cdef class Entry:
    cdef readonly u64 term
    cdef readonly u64 index
    cdef readonly int type
    cdef readonly bytes data


cdef class HardState:
    cdef readonly u64 term
    cdef readonly u64 vote
    cdef readonly u64 commit


cdef class Snapshot:
    cdef readonly u64 index
    cdef readonly u64 term
    cdef readonly tuple voters
    cdef readonly bytes data


cdef class ConfChange:
    cdef readonly int type
    cdef readonly u64 node_id
    cdef readonly bytes context


cdef class Message:
    cdef public int type
    cdef public u64 to
    cdef public u64 frm
    cdef public u64 term
    cdef public u64 log_term
    cdef public u64 index
    cdef public u64 commit
    cdef public bint reject
    cdef public u64 reject_hint
    cdef public bytes context
    cdef public list entries
    cdef public Snapshot snapshot


cdef class ReadState:
    cdef readonly u64 index
    cdef readonly bytes context


cdef class SoftState:
    cdef readonly u64 lead
    cdef readonly int state


cdef class MemoryStorage:
    cdef HardState _hard_state
    cdef Snapshot _snapshot
    cdef list _ents      # _ents[0] is a dummy entry at (snapshot index, snapshot term)
    cpdef HardState hard_state(self)
    cpdef Snapshot snapshot(self)
    cpdef u64 first_index(self)
    cpdef u64 last_index(self)
    cpdef u64 term(self, u64 i) except? 0
    cpdef list entries(self, u64 lo, u64 hi, u64 max_size)


cdef class RaftLog:
    cdef object storage
    # Entries not yet persisted: _unstable[k] has index _offset + k. A pending snapshot (received,
    # not yet persisted) precedes them.
    cdef list _unstable
    cdef u64 _offset
    cdef Snapshot _pending_snapshot
    # Handed out in a Ready, not yet advanced: unstable entries up to _saving_to (being saved),
    # the pending snapshot when _snapshot_saving, committed entries up to applying.
    cdef u64 _saving_to
    cdef bint _snapshot_saving
    # Invariant: applied <= applying <= committed <= last_index().
    cdef readonly u64 committed
    cdef readonly u64 applying
    cdef readonly u64 applied

    cdef u64 first_index(self)
    cdef u64 last_index(self)
    cdef u64 last_term(self)
    cdef u64 term(self, u64 i)
    cdef bint match_term(self, u64 i, u64 t)
    cdef bint is_up_to_date(self, u64 last_index, u64 term)
    cdef u64 find_conflict(self, list ents)
    cdef u64 append(self, list ents)
    cdef bint maybe_append(self, u64 index, u64 log_term, u64 committed, list ents, u64* last_new) except -1
    cdef bint maybe_commit(self, u64 max_index, u64 term) except -1
    cdef int commit_to(self, u64 to) except -1
    cdef int applied_to(self, u64 i) except -1
    cdef list slice(self, u64 lo, u64 hi, u64 max_size)
    cdef list next_committed_entries(self)
    cdef bint has_next_committed_entries(self)
    cdef bint has_unsaved(self)
    cdef list take_unsaved(self)
    cdef int restore(self, Snapshot snap) except -1
    cdef int stable_to(self, u64 index, u64 term) except -1
    cdef int stable_snap_to(self, u64 index) except -1


cdef class Inflights:
    cdef list _last_indices
    cdef int capacity
    cdef bint full(self)
    cdef void add(self, u64 last)
    cdef void free_le(self, u64 index)
    cdef void free_first_one(self)
    cdef void reset(self)


cdef class Progress:
    cdef readonly u64 match
    cdef readonly u64 next
    cdef readonly int state
    cdef readonly bint probe_sent
    cdef readonly u64 pending_snapshot
    cdef readonly bint recent_active
    cdef Inflights inflights
    cdef void become_probe(self)
    cdef void become_replicate(self)
    cdef void become_snapshot(self, u64 index)
    cdef bint maybe_update(self, u64 n)
    cdef bint maybe_decr_to(self, u64 rejected, u64 match_hint)
    cdef bint is_paused(self)


cdef class Raft
ctypedef int (*StepFn)(Raft r, Message m) except -1
ctypedef int (*TickFn)(Raft r) except -1


cdef class Raft:
    cdef readonly u64 id
    cdef readonly u64 term
    cdef readonly u64 vote
    cdef readonly u64 lead
    cdef readonly int state
    cdef readonly RaftLog log
    cdef readonly dict prs          # voter id -> Progress (maintained on the leader, ids kept everywhere)
    cdef dict votes                 # voter id -> granted, during a campaign
    cdef public list msgs           # outgoing messages, drained by Ready
    cdef public list read_states
    cdef u64 max_size_per_msg
    cdef int max_inflight
    cdef bint pre_vote
    cdef bint check_quorum
    cdef int election_timeout
    cdef int heartbeat_timeout
    cdef readonly int randomized_election_timeout
    cdef readonly int election_elapsed
    cdef int heartbeat_elapsed
    cdef object rng
    cdef readonly u64 lead_transferee
    cdef readonly u64 pending_conf_index
    cdef list conf_history          # (applied index, voters tuple) for each applied configuration
    # ReadIndex (thesis §6.4): requests waiting for a heartbeat quorum, in arrival order.
    cdef list read_queue            # of [ctx, index, from, acks set]
    cdef dict read_by_ctx
    cdef list pending_read_msgs     # ReadIndex requests held until the leader commits in its term
    cdef StepFn _step
    cdef TickFn _tick

    cdef tuple voters(self)
    cdef int quorum(self)
    cdef bint promotable(self)
    cdef int send(self, Message m) except -1
    cdef bint maybe_send_append(self, u64 to, bint send_if_empty) except -1
    cdef int send_heartbeat(self, u64 to, bytes ctx) except -1
    cdef int send_timeout_now(self, u64 to) except -1
    cdef int bcast_append(self) except -1
    cdef int bcast_heartbeat(self, bytes ctx) except -1
    cdef bint maybe_commit(self) except -1
    cdef bint append_entries(self, list ents) except -1
    cdef int reset(self, u64 term) except -1
    cdef int reset_randomized_election_timeout(self) except -1
    cdef int become_follower(self, u64 term, u64 lead) except -1
    cdef int become_pre_candidate(self) except -1
    cdef int become_candidate(self) except -1
    cdef int become_leader(self) except -1
    cdef int campaign(self, int vote_type, bytes ctx) except -1
    cdef int hup(self, int vote_type, bytes ctx) except -1
    cdef int hand_over(self) except -1
    cdef int poll(self, u64 id, bint granted) except? -2
    cdef int handle_append_entries(self, Message m) except -1
    cdef int handle_heartbeat(self, Message m) except -1
    cdef int handle_snapshot(self, Message m) except -1
    cdef int handle_read_index(self, Message m) except -1
    cdef int handle_read_ack(self, u64 frm, bytes ctx) except -1
    cdef int handle_transfer_leader(self, Message m) except -1
    cdef int release_read(self, u64 to, u64 index, bytes ctx) except -1
    cdef bint restore(self, Snapshot snap) except -1
    cdef int apply_conf(self, tuple voters, u64 index) except -1
    cdef bint past_election_timeout(self)
    cpdef int step(self, Message m) except -1


cdef class Config:
    cdef readonly u64 id
    cdef readonly tuple peers
    cdef readonly int election_tick
    cdef readonly int heartbeat_tick
    cdef readonly bint pre_vote
    cdef readonly bint check_quorum
    cdef readonly u64 max_size_per_msg
    cdef readonly int max_inflight
    cdef readonly object rng
    cdef readonly u64 applied


cdef class Ready:
    cdef readonly SoftState soft_state
    cdef readonly HardState hard_state
    cdef readonly list read_states
    cdef readonly list entries
    cdef readonly Snapshot snapshot
    cdef readonly list committed_entries
    cdef readonly list messages
    cdef readonly bint must_sync


cdef class Status:
    cdef readonly u64 id
    cdef readonly u64 term
    cdef readonly u64 vote
    cdef readonly u64 lead
    cdef readonly int state
    cdef readonly u64 commit
    cdef readonly u64 applied
    cdef readonly tuple voters
    cdef readonly u64 lead_transferee
    cdef readonly dict progress


cdef class RawNode:
    cdef readonly Raft raft
    cdef readonly object storage
    cdef SoftState prev_soft
    cdef HardState prev_hard

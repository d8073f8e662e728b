"""The Raft consensus core (``fastkv._native.raft``) and its Python face.

The core is a deterministic state machine: ``RawNode.tick()``/``step(msg)``/``propose(data)``
change memory only; ``RawNode.ready()`` returns a ``Ready`` whose work the caller performs in
the documented order (persist, send, apply) before ``RawNode.advance(ready)``. See docs/raft.md.
"""

from fastkv._native.raft import (
    CAMPAIGN_TRANSFER,
    ENTRY_NAMES,
    MESSAGE_NAMES,
    PROGRESS_NAMES,
    STATE_NAMES,
    CompactedError,
    ConfChange,
    ConfChangeAddNode,
    ConfChangeRemoveNode,
    ConfChangeType,
    Config,
    Entry,
    EntryConfChange,
    EntryNormal,
    EntryType,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    MsgApp,
    MsgAppResp,
    MsgBeat,
    MsgHeartbeat,
    MsgHeartbeatResp,
    MsgHup,
    MsgPreVote,
    MsgPreVoteResp,
    MsgProp,
    MsgReadIndex,
    MsgReadIndexResp,
    MsgSnap,
    MsgTimeoutNow,
    MsgTransferLeader,
    MsgVote,
    MsgVoteResp,
    ProgressState,
    ProposalDropped,
    RawNode,
    ReadState,
    Ready,
    Snapshot,
    SoftState,
    StateCandidate,
    StateFollower,
    StateLeader,
    StatePreCandidate,
    StateProbe,
    StateReplicate,
    StateSnapshot,
    StateType,
    Status,
    UnavailableError,
)

__all__ = [
    "CAMPAIGN_TRANSFER", "ENTRY_NAMES", "MESSAGE_NAMES", "PROGRESS_NAMES", "STATE_NAMES",
    "CompactedError", "ConfChange", "ConfChangeAddNode", "ConfChangeRemoveNode", "ConfChangeType",
    "Config", "Entry", "EntryConfChange", "EntryNormal", "EntryType", "HardState", "MemoryStorage",
    "Message", "MessageType", "MsgApp", "MsgAppResp", "MsgBeat", "MsgHeartbeat", "MsgHeartbeatResp",
    "MsgHup", "MsgPreVote", "MsgPreVoteResp", "MsgProp", "MsgReadIndex", "MsgReadIndexResp", "MsgSnap",
    "MsgTimeoutNow", "MsgTransferLeader", "MsgVote", "MsgVoteResp", "ProgressState", "ProposalDropped",
    "RawNode", "ReadState", "Ready", "Snapshot", "SoftState", "StateCandidate", "StateFollower",
    "StateLeader", "StatePreCandidate", "StateProbe", "StateReplicate", "StateSnapshot", "StateType",
    "Status", "UnavailableError", "describe_messages",
]


def describe_messages(msgs: list[Message]) -> str:
    """One line per message, as in DEBUG logs and the golden interaction scripts."""
    return "\n".join(m.describe() for m in msgs)

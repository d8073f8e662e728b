"""The member: where the Raft core, the log, the store and the watch hub meet asyncio.

The implementation is ``fastkv.server.raftnode``: every member, alone or one of 3, 5 or 7, is a
Raft member driven by the compiled core (a single member is a Raft cluster of one). This module
keeps the names the rest of the server imports.
"""

from __future__ import annotations

from fastkv.server.raftnode import Node, NodeConfig, ProposalTimeout

__all__ = ["Node", "NodeConfig", "ProposalTimeout"]

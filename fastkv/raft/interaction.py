"""Golden interaction scripts for the Raft core.

A script is a text file of blocks::

    # comments and blank lines are kept as they are
    campaign 1
    ----
    1 became pre-candidate at term 0

Each block is one command, a ``----`` line and the exact lines the command must print (``ok``
when it prints nothing). ``run_script`` executes the commands against a fresh ``Interaction``
and returns the file as it should be; comparing it with the file is the test, writing it back
is ``--rewrite``::

    python -m fastkv.raft.interaction [--rewrite] tests/raft/testdata/election.txt ...

Commands (ids are member ids; ``[ids]`` means "these members", default all):
  add-nodes N voters=(1,2,3) [election=10] [heartbeat=1] [pre-vote=true] [check-quorum=true]
            [max-inflight=256] [max-size=N]
  campaign ID | tick-election ID | tick-heartbeat ID [count]
  process-ready [ids] | deliver-msgs [ids] [drop=true] | stabilize [ids]
  propose ID DATA | propose-conf-change ID add=N|remove=N | read-index ID CTX
  transfer-leadership from=ID to=ID | compact ID INDEX
  partition IDS... | heal | crash ID | restart ID
  status ID | raft-log ID | raft-state | app-state ID
"""

from __future__ import annotations

import argparse
import difflib
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastkv.raft import (
    STATE_NAMES,
    ConfChange,
    ConfChangeAddNode,
    ConfChangeRemoveNode,
    Config,
    EntryNormal,
    MemoryStorage,
    Message,
    ProposalDropped,
    RawNode,
    Ready,
)

SEPARATOR = "----"


@dataclass
class Member:
    """One member: its node, its durable storage and its applied state (entry data in order)."""

    node: RawNode
    storage: MemoryStorage
    config: dict[str, Any]
    applied: list[bytes] = field(default_factory=list)
    crashed: bool = False


def role_name(state: int) -> str:
    """``StatePreCandidate`` -> ``pre-candidate``."""
    name = STATE_NAMES[state].removeprefix("State")
    return "pre-candidate" if name == "PreCandidate" else name.lower()


def encode_app_state(applied: list[bytes]) -> bytes:
    return b",".join(applied)


def decode_app_state(data: bytes) -> list[bytes]:
    return data.split(b",") if data else []


class Interaction:
    """Members on an in-memory network that delivers only when told to."""

    def __init__(self) -> None:
        self.members: dict[int, Member] = {}
        self.inbox: dict[int, list[Message]] = {}
        self.isolated: set[int] = set()

    # --- helpers ------------------------------------------------------------------------------

    def ids(self, args: list[str]) -> list[int]:
        chosen = [int(a) for a in args if a.isdigit()]
        return chosen or sorted(self.members)

    def _make_node(self, mid: int, storage: MemoryStorage, options: dict[str, Any],
                   applied: int = 0) -> RawNode:
        config = Config(mid, options["voters"], election_tick=options["election"],
                        heartbeat_tick=options["heartbeat"], pre_vote=options["pre-vote"],
                        check_quorum=options["check-quorum"], max_inflight=options["max-inflight"],
                        max_size_per_msg=options["max-size"], rng=random.Random(mid), applied=applied)
        return RawNode(config, storage)

    def snapshot_state(self) -> dict[int, tuple[int, int, int]]:
        return {mid: (m.node.state, m.node.term, m.node.lead) for mid, m in self.members.items()
                if not m.crashed}

    def transitions(self, before: dict[int, tuple[int, int, int]]) -> list[str]:
        """A line per member whose role or term changed since ``before``."""
        lines = []
        for mid, (state, term, _lead) in self.snapshot_state().items():
            if mid in before and before[mid][:2] != (state, term):
                lines.append(f"{mid} became {role_name(state)} at term {term}")
        return lines

    def can_talk(self, a: int, b: int) -> bool:
        return (a in self.isolated) == (b in self.isolated) or not self.isolated

    # --- the Ready loop --------------------------------------------------------------------------

    def process_ready(self, mid: int) -> list[str]:
        member = self.members[mid]
        if member.crashed or not member.node.has_ready():
            return []
        rd = member.node.ready()
        lines = [f"> {mid} handling Ready", *("  " + line for line in rd.describe().splitlines())]
        member.storage.save(rd)             # 1. persist
        for m in rd.messages:               # 2. send
            if m.to in self.members and self.can_talk(mid, m.to):
                self.inbox.setdefault(m.to, []).append(m)
        self.apply(member, rd)              # 3. apply
        member.node.advance(rd)             # 4. advance
        return lines

    @staticmethod
    def apply(member: Member, rd: Ready) -> None:
        if rd.snapshot is not None:
            member.applied = decode_app_state(rd.snapshot.data)
        member.applied.extend(e.data for e in rd.committed_entries if e.type == EntryNormal and e.data)

    def deliver(self, mid: int, drop: bool = False) -> list[str]:
        msgs = self.inbox.pop(mid, [])
        member = self.members.get(mid)
        if not msgs or member is None or member.crashed:
            return []
        lines = [f"> {mid} {'dropping' if drop else 'receiving'} messages"]
        for m in msgs:
            lines.append("  " + m.describe())
            if not drop:
                before = self.snapshot_state()
                member.node.step(m)
                lines.extend("  " + line for line in self.transitions(before))
        return lines

    # --- commands ------------------------------------------------------------------------------

    def run(self, line: str) -> list[str]:
        words = line.split()
        handler = getattr(self, "cmd_" + words[0].replace("-", "_"), None)
        if handler is None:
            raise ValueError(f"unknown command {words[0]!r}")
        return handler(words[1:])

    def cmd_add_nodes(self, args: list[str]) -> list[str]:
        count = int(args[0])
        kv = dict(a.split("=", 1) for a in args[1:])
        options: dict[str, Any] = {
            "voters": tuple(int(v) for v in kv.get("voters", "(1)").strip("()").split(",")),
            "election": int(kv.get("election", "10")),
            "heartbeat": int(kv.get("heartbeat", "1")),
            "pre-vote": kv.get("pre-vote", "true") == "true",
            "check-quorum": kv.get("check-quorum", "true") == "true",
            "max-inflight": int(kv.get("max-inflight", "256")),
            "max-size": int(kv.get("max-size", str(1024 * 1024))),
        }
        start = max(self.members, default=0) + 1
        for mid in range(start, start + count):
            storage = MemoryStorage()
            self.members[mid] = Member(self._make_node(mid, storage, options), storage, options)
        return ["ok"]

    def _each(self, args: list[str], fn) -> list[str]:
        before = self.snapshot_state()
        fn()
        return self.transitions(before) or ["ok"]

    def cmd_campaign(self, args: list[str]) -> list[str]:
        return self._each(args, self.members[int(args[0])].node.campaign)

    def cmd_tick_election(self, args: list[str]) -> list[str]:
        node = self.members[int(args[0])].node

        def ticks() -> None:
            for _ in range(node.ticks_to_election()):
                node.tick()
        return self._each(args, ticks)

    def cmd_tick_heartbeat(self, args: list[str]) -> list[str]:
        node = self.members[int(args[0])].node
        count = int(args[1]) if len(args) > 1 else 1

        def ticks() -> None:
            for _ in range(count):
                node.tick()
        return self._each(args, ticks)

    def cmd_process_ready(self, args: list[str]) -> list[str]:
        return [line for mid in self.ids(args) for line in self.process_ready(mid)] or ["ok"]

    def cmd_deliver_msgs(self, args: list[str]) -> list[str]:
        drop = "drop=true" in args
        return [line for mid in self.ids(args) for line in self.deliver(mid, drop)] or ["ok"]

    def cmd_stabilize(self, args: list[str]) -> list[str]:
        ids = self.ids(args)
        lines: list[str] = []
        while True:
            step = [line for mid in ids for line in self.process_ready(mid)]
            step += [line for mid in ids for line in self.deliver(mid)]
            if not step:
                return lines or ["ok"]
            lines.extend(step)

    def _propose(self, fn, *fn_args) -> list[str]:
        try:
            fn(*fn_args)
        except ProposalDropped as e:
            return [f"dropped: {e}"]
        return ["ok"]

    def cmd_propose(self, args: list[str]) -> list[str]:
        return self._propose(self.members[int(args[0])].node.propose, args[1].encode())

    def cmd_propose_conf_change(self, args: list[str]) -> list[str]:
        kind, _, node_id = args[1].partition("=")
        cc = ConfChange(ConfChangeAddNode if kind == "add" else ConfChangeRemoveNode, int(node_id))
        return self._propose(self.members[int(args[0])].node.propose_conf_change, cc)

    def cmd_read_index(self, args: list[str]) -> list[str]:
        return self._propose(self.members[int(args[0])].node.read_index, args[1].encode())

    def cmd_transfer_leadership(self, args: list[str]) -> list[str]:
        kv = dict(a.split("=", 1) for a in args)
        node = self.members[int(kv["from"])].node
        return self._each(args, lambda: self._propose(node.transfer_leader, int(kv["to"])))

    def cmd_compact(self, args: list[str]) -> list[str]:
        member = self.members[int(args[0])]
        index = int(args[1])
        upto = [e.data for e in member.storage.entries(member.storage.first_index(), index + 1, 1 << 62)
                if e.type == EntryNormal and e.data] if index >= member.storage.first_index() else []
        prefix = decode_app_state(member.storage.snapshot().data) + upto
        member.node.compact(index, encode_app_state(prefix))
        return self.raft_log(member)

    def cmd_partition(self, args: list[str]) -> list[str]:
        self.isolated = {int(a) for a in args}
        for mid in list(self.inbox):
            self.inbox[mid] = [m for m in self.inbox[mid] if self.can_talk(m.frm, m.to)]
        return ["ok"]

    def cmd_heal(self, args: list[str]) -> list[str]:
        self.isolated = set()
        return ["ok"]

    def cmd_crash(self, args: list[str]) -> list[str]:
        """Lose everything not saved: the node, its unsent messages and its applied state."""
        member = self.members[int(args[0])]
        member.crashed = True
        self.inbox.pop(int(args[0]), None)
        return ["ok"]

    def cmd_restart(self, args: list[str]) -> list[str]:
        mid = int(args[0])
        member = self.members[mid]
        snap = member.storage.snapshot()
        member.node = self._make_node(mid, member.storage, member.config, applied=snap.index)
        member.applied = decode_app_state(snap.data)
        member.crashed = False
        return ["ok"]

    def cmd_status(self, args: list[str]) -> list[str]:
        return self.members[int(args[0])].node.status().describe().splitlines()

    def raft_log(self, member: Member) -> list[str]:
        node = member.node
        lines = [f"first={node.first_index} last={node.last_index} commit={node.committed} "
                 f"applied={node.applied}"]
        lines += [e.describe() for e in node.log_entries()]
        return lines

    def cmd_raft_log(self, args: list[str]) -> list[str]:
        return self.raft_log(self.members[int(args[0])])

    def cmd_raft_state(self, args: list[str]) -> list[str]:
        lines = []
        for mid, m in sorted(self.members.items()):
            if m.crashed:
                lines.append(f"{mid}: crashed")
            else:
                st = m.node.status()
                voter = "Voter" if mid in st.voters else "NonVoter"
                lines.append(f"{mid}: {STATE_NAMES[st.state]} ({voter}) Term:{st.term} Lead:{st.lead}")
        return lines

    def cmd_app_state(self, args: list[str]) -> list[str]:
        member = self.members[int(args[0])]
        return ["applied: " + ",".join(d.decode() for d in member.applied)]


# --- the script format ---------------------------------------------------------------------------


def run_script(text: str) -> str:
    """Run every command of ``text`` and return the script with the actual output."""
    env = Interaction()
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.startswith("#"):
            out.append(line)
            i += 1
            continue
        out.append(line)
        i += 1
        if i < len(lines) and lines[i] == SEPARATOR:
            i += 1
            while i < len(lines) and lines[i].strip():
                i += 1
        out.append(SEPARATOR)
        try:
            out.extend(env.run(line))
        except Exception as e:  # shown in the output so that a diff points at it
            out.append(f"error: {type(e).__name__}: {e}")
    return "\n".join(out) + "\n"


def check_file(path: Path, rewrite: bool) -> str:
    """Run the script at ``path``; rewrite it, or return a unified diff ('' when it matches)."""
    expected = path.read_text()
    actual = run_script(expected)
    if rewrite:
        path.write_text(actual)
        return ""
    return "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True),
                                        str(path), str(path) + " (actual)"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rewrite", action="store_true", help="write the actual output into the files")
    parser.add_argument("files", nargs="+", type=Path)
    opts = parser.parse_args(argv)
    failed = False
    for path in opts.files:
        diff = check_file(path, opts.rewrite)
        if diff:
            failed = True
            sys.stdout.write(diff)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

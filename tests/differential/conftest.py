"""Fixtures and the runner of the differential suite.

Each test module starts one reference etcd and one server under test, both fresh, and runs
its scenario groups in order on both: every step goes to the reference first, then to the
other server, and the two normalised answers are compared. ``FASTKV_DIFF_AGAINST=etcd``
makes the server under test a second reference etcd, which validates the suite itself:
every step must then pass.

``FASTKV_DIFF_MEMBERS=3`` makes each side a cluster of three members (``node1``..``node3``):
step ``i`` of a group goes to member ``i mod 3`` on both sides (a watch is opened on one
member and triggered through the next), except ``/v2/stats/leader``, which goes to each side's
leader. After every step each side is let settle (every member has applied the same
entries, read from ``/metrics``, which touches no store counter) so that the local reads of
the next step see the writes of this one, as a client that waits for replication would.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests import harness
from tests.differential import client, scenarios
from tests.differential.normalize import (
    Normalized,
    RequestContext,
    ServerFacts,
    differences,
    normalize,
    normalize_event,
)

MEMBER_NAME = "node1"
AGAINST = os.environ.get("FASTKV_DIFF_AGAINST", "fastkv")
MEMBERS = int(os.environ.get("FASTKV_DIFF_MEMBERS", "1"))
CLUSTER_TOKEN = "diff-cluster"
RECONFIG_AFTER_S = 6.0  # etcd's strict check refuses membership changes while links are < 5 s old
SETTLE_TIMEOUT_S = 5.0
APPLIED = re.compile(rb"^etcd_server_proposals_applied_total (\d+(?:\.\d+)?(?:e\+\d+)?)$", re.M)
TRANSCRIPT = os.environ.get("FASTKV_DIFF_TRANSCRIPT", "")
"""A file to append every step's two raw answers to, for reading what the servers said."""
TEMPLATE = re.compile(r"<(\w+)([+-]\d+)?>")


class StepFailed(Exception):
    """A step could not be carried out on one server (no answer, bad framing, timeout)."""


def json_path(body: bytes, path: str) -> str:
    """The value at a dotted path of a JSON body, as text."""
    value: Any = json.loads(body)
    for part in path.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return str(value)


def _json_or(body: bytes, path: str, default: Any) -> Any:
    """The value at ``path`` ("" = the whole document), or ``default`` if the body has none."""
    try:
        value: Any = json.loads(body)
        return json_path(body, path) if path else value
    except (ValueError, KeyError, IndexError, TypeError):
        return default


@dataclass
class Outcome:
    """What one server did for one step: its normalised answer and how to show the raw one."""

    norm: Normalized | None
    raw: str
    error: str = ""


@dataclass
class Member:
    """One member of a side: its server, what is particular to it, its own template variables."""

    server: harness.Server
    facts: ServerFacts
    variables: dict[str, str]


def _settled_index(servers: list[harness.Server]) -> str:
    """Wait until every member shows the same X-Etcd-Index twice and the cluster version is decided."""
    last = None
    for _ in range(150):
        indices = {client.request(s.client_port, "GET", "/v2/keys/").header("X-Etcd-Index") for s in servers}
        decided = all(b"not_decided" not in client.request(s.client_port, "GET", "/version").body
                      for s in servers)
        index = indices.pop() if len(indices) == 1 else None
        if index is not None and index == last and decided and _all_published(servers):
            break
        last = index
        time.sleep(0.1)
    assert last is not None and last.isdigit(), "no common X-Etcd-Index at start"
    return last


def _all_published(servers: list[harness.Server]) -> bool:
    """Every member has published its name and client URLs (the cluster has formed)."""
    listed = _json_or(client.request(servers[0].client_port, "GET", "/v2/members").body, "", {})
    members = listed.get("members") if isinstance(listed, dict) else None
    return isinstance(members, list) and len(members) == len(servers) and all(
        isinstance(m, dict) and m.get("name") for m in members)


def _member_facts(server: harness.Server, base: int, cluster_id: str | None,
                  members: list[dict[str, Any]]) -> Member:
    """Facts of one member: itself as ``#member-id``/``#client-url``/``#peer-url``, the others
    by name."""
    facts = ServerFacts(base=base, client_url=server.url, peer_url=server.peer_url)
    member_id = "0"
    for m in members:
        if server.peer_url in m.get("peerURLs", []):
            member_id = m["id"]
            facts.ids[m["id"]] = "#member-id"
            continue
        name = m.get("name") or m["id"]
        facts.ids[m["id"]] = f"#member-{name}"
        facts.members.update({u: f"#client-url-{name}" for u in m.get("clientURLs", [])})
        facts.members.update({u: f"#peer-url-{name}" for u in m.get("peerURLs", [])})
    if cluster_id:
        facts.ids[cluster_id] = "#cluster-id"
    stats = _json_or(client.request(server.client_port, "GET", "/v2/stats/store").body, "", {})
    if isinstance(stats, dict):
        facts.store_stats = {k: v for k, v in stats.items() if isinstance(v, int)}
    variables = {"member_id": member_id, "peer_url": server.peer_url, "client_url": server.url,
                 "host": f"127.0.0.1:{server.client_port}"}
    return Member(server, facts, variables)


@dataclass
class Side:
    """One server (or cluster) of the pair with everything the runner tracks about it."""

    role: str
    members: list[Member]
    variables: dict[str, str] = field(default_factory=dict)
    watches: dict[str, tuple[client.Stream, int]] = field(default_factory=dict)
    raft_index: int | None = None
    raft_term: int | None = None
    started: float = field(default_factory=time.monotonic)
    turn: int = 0
    """The member the current step goes to."""

    @classmethod
    def start(cls, role: str, servers: list[harness.Server]) -> Side:
        """Wait until the index has settled on every member, then learn their particulars."""
        last = _settled_index(servers)
        resp = client.request(servers[0].client_port, "GET", "/v2/keys/")
        listed = _json_or(client.request(servers[0].client_port, "GET", "/v2/members").body, "", {})
        listed = listed.get("members") if isinstance(listed, dict) else None
        # A server that cannot say these is still compared: its steps will show what is wrong.
        members = [m for m in listed if isinstance(m, dict) and "id" in m] if isinstance(listed, list) else []
        cluster_id = resp.header("X-Etcd-Cluster-Id")
        side = cls(role, [_member_facts(s, int(last), cluster_id, members) for s in servers])
        side.variables.update({"base": last, "index": last})
        return side

    @property
    def member(self) -> Member:
        return self.members[self.turn]

    @property
    def server(self) -> harness.Server:
        return self.member.server

    @property
    def facts(self) -> ServerFacts:
        return self.member.facts

    def leader(self) -> int:
        """The index of the member that leads (0 when none says so)."""
        for i, m in enumerate(self.members):
            if _json_or(client.request(m.server.client_port, "GET", "/v2/stats/self").body,
                        "state", "") == "StateLeader":
                return i
        return 0

    def settle(self) -> None:
        """Wait (bounded) until every member has applied the same entries."""
        if len(self.members) == 1:
            return
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while time.monotonic() < deadline:
            applied = set()
            for m in self.members:
                found = APPLIED.search(client.request(m.server.client_port, "GET", "/metrics").body)
                applied.add(float(found[1]) if found else None)
            if len(applied) == 1 and None not in applied:
                return
            time.sleep(0.02)

    def await_reconfigurable(self) -> None:
        """A cluster refuses membership changes until its links have been up for a while."""
        if len(self.members) > 1:
            time.sleep(max(0.0, self.started + RECONFIG_AFTER_S - time.monotonic()))

    # -- templates and captures --------------------------------------------------------------

    def render(self, text: str) -> str:
        def one(m: re.Match[str]) -> str:
            # A value this server never produced (its earlier step failed) stays visible.
            value = self.member.variables.get(m[1]) or self.variables.get(m[1], f"missing-{m[1]}")
            if not m[2]:
                return value
            return str(int(value) + int(m[2])) if value.isdigit() else f"{value}{m[2]}"

        return TEMPLATE.sub(one, text)

    def remember(self, step: scenarios.Req, resp: client.Response) -> None:
        index = resp.header("X-Etcd-Index")
        if 200 <= resp.status < 300 and index is not None:
            self.variables["index"] = index
        for var, where in step.capture:
            if where.startswith("header:"):
                self.variables[var] = resp.header(where[len("header:"):]) or ""
            elif 200 <= resp.status < 300:
                self.variables[var] = str(_json_or(resp.body, where, f"missing-{var}"))

    # -- steps ---------------------------------------------------------------------------------

    def request(self, step: scenarios.Req) -> Outcome:
        target = self.render(step.target)
        body = None if step.body is None else self.render(step.body).encode("utf-8")
        headers = tuple((k, self.render(v)) for k, v in step.headers)
        raw = None if step.raw is None else self.render(step.raw).encode("latin-1")
        try:
            resp = client.request(self.server.client_port, step.method, target, headers, body, raw)
        except (OSError, client.ProtocolError, ValueError) as e:
            return Outcome(None, "", f"{type(e).__name__}: {e}")
        if step.new_member and resp.status == 201:
            for member in self.members:
                member.facts.placeholder_for_new_id(str(_json_or(resp.body, "id", "-")))
        self.remember(step, resp)
        ctx = RequestContext(step.method, target, body, unordered=step.unordered)
        return Outcome(normalize(resp, self.facts, ctx), resp.describe())

    def open_watch(self, step: scenarios.Watch) -> Outcome:
        target = self.render(step.target)
        try:
            stream = client.Stream(self.server.client_port, target)
        except (OSError, client.ProtocolError, ValueError) as e:
            return Outcome(None, "", f"{type(e).__name__}: {e}")
        self.watches[step.name] = (stream, self.turn)
        head = stream.head
        # A watch's events are read by later steps, whatever the framing; an error is whole.
        shown = client.Response(head.status, head.reason, head.headers,
                                b"" if head.status == 200 else head.body, head.chunked)
        return Outcome(normalize(shown, self.facts, RequestContext("GET", target)), shown.describe())

    def read_event(self, step: scenarios.Event) -> Outcome:
        if step.name not in self.watches:
            return Outcome(None, "", f"watch {step.name!r} is not open")
        stream, self.turn = self.watches[step.name]
        try:
            line = stream.read_line(step.timeout)
            if line is None:
                return Outcome(None, "", "the response ended without an event")
            ctx = RequestContext("GET", "", event=True)
            norm = normalize_event(line, self.facts, ctx)
            if step.last:
                rest = stream.wait_end(2.0)
                if rest:
                    norm.problems.append(f"more after the event: {rest!r}")
        except (OSError, client.ProtocolError) as e:
            return Outcome(None, "", f"{type(e).__name__}: {e}")
        finally:
            if step.last:
                self.close_watch(step.name)
        return Outcome(norm, line.decode("utf-8", "replace"))

    def quiet(self, step: scenarios.Quiet) -> Outcome:
        if step.name not in self.watches:
            return Outcome(None, "", f"watch {step.name!r} is not open")
        stream, _ = self.watches[step.name]
        try:
            line = stream.read_line(step.wait)
        except TimeoutError:
            return Outcome(Normalized(0, [], "(nothing)"), "(nothing)")
        except (OSError, client.ProtocolError) as e:
            return Outcome(None, "", f"{type(e).__name__}: {e}")
        text = "(the response ended)" if line is None else line.decode("utf-8", "replace")
        return Outcome(Normalized(0, [], text), text)

    def close_watch(self, name: str) -> None:
        watch = self.watches.pop(name, None)
        if watch is not None:
            watch[0].close()

    def bulk(self, step: scenarios.Bulk) -> Outcome:
        conn = client.Connection("127.0.0.1", self.server.client_port)
        statuses: Counter[int] = Counter()
        try:
            for i in range(step.count):
                body = None if step.body is None else step.body.replace("<i>", str(i)).encode()
                resp = conn.exchange(step.method, self.render(step.target.replace("<i>", str(i))),
                                     scenarios.FORM if body is not None else (), body)
                statuses[resp.status] += 1
                self.remember(scenarios.Req(step.label, step.method, step.target), resp)
        except (OSError, client.ProtocolError) as e:
            return Outcome(None, "", f"{type(e).__name__}: {e}")
        finally:
            conn.close()
        advance = int(self.variables["index"]) - self.facts.base
        summary = f"statuses {sorted(statuses.items())}, index at base+{advance}"
        return Outcome(Normalized(0, [], summary), summary)

    def run(self, step: scenarios.Step, turn: int) -> Outcome | None:
        """Carry out ``step`` on member ``turn`` (``/v2/stats/leader`` on the leader of a cluster)."""
        self.turn = turn % len(self.members)
        if isinstance(step, scenarios.Req):
            if len(self.members) > 1 and step.target.startswith("/v2/stats/leader"):
                self.turn = self.leader()
            if step.target.startswith("/v2/members") and step.method in ("POST", "PUT", "DELETE"):
                self.await_reconfigurable()
            return self.request(step)
        if isinstance(step, scenarios.Watch):
            return self.open_watch(step)
        if isinstance(step, scenarios.Event):
            return self.read_event(step)
        if isinstance(step, scenarios.Quiet):
            return self.quiet(step)
        if isinstance(step, scenarios.Bulk):
            return self.bulk(step)
        self.close_watch(step.name)
        return None

    def raft_problems(self, norm: Normalized) -> tuple[list[str], int | None]:
        """Check X-Raft-Index/Term only grow; returns problems and how far the index moved."""
        problems: list[str] = []
        delta = None
        if norm.raft_index is not None:
            if self.raft_index is not None:
                delta = norm.raft_index - self.raft_index
                if delta < 0:
                    problems.append(f"{self.role}: X-Raft-Index went back by {-delta}")
            self.raft_index = norm.raft_index
        if norm.raft_term is not None:
            if self.raft_term is not None and norm.raft_term < self.raft_term:
                problems.append(f"{self.role}: X-Raft-Term went back")
            self.raft_term = norm.raft_term
        return problems, delta

    def close(self) -> None:
        for name in list(self.watches):
            self.close_watch(name)


def _label(step: scenarios.Step) -> str:
    target = getattr(step, "target", "") or getattr(step, "raw", "") or ""
    method = getattr(step, "method", "GET" if isinstance(step, scenarios.Watch) else "")
    return f"{step.label} [{method} {target!s}]".replace("\r\n", "\\r\\n")  # type: ignore[union-attr]


@dataclass
class Pair:
    """The reference etcd and the server under test, driven in lockstep."""

    reference: Side
    other: Side

    def compare(self, group: scenarios.Group, step: scenarios.Step, a: Outcome, b: Outcome) -> list[str]:
        if a.norm is None or b.norm is None:
            diffs = [f"reference failed: {a.error}" if a.norm is None else "",
                     f"other failed: {b.error}" if b.norm is None else ""]
            diffs = [d for d in diffs if d]
        else:
            diffs = differences(a.norm, b.norm)
            problems_a, delta_a = self.reference.raft_problems(a.norm)
            problems_b, delta_b = self.other.raft_problems(b.norm)
            diffs += problems_a + problems_b
            if not group.ttl and None not in (delta_a, delta_b) and delta_a != delta_b:
                diffs.append(f"X-Raft-Index advanced by {delta_a} on the reference, {delta_b} on the other")
        if not diffs:
            return []
        lines = [f"[{group.name}] {_label(step)}"] + [f"  - {d}" for d in diffs]
        lines += ["  reference answered:", _indent(a.raw or a.error),
                  "  other answered:", _indent(b.raw or b.error)]
        return ["\n".join(lines)]

    def run(self, group: scenarios.Group) -> list[str]:
        """Run every step of ``group`` on both servers; returns one report per mismatching step."""
        for side in (self.reference, self.other):
            side.raft_index = None
        mismatches: list[str] = []
        for turn, step in enumerate(group.steps):
            a = self.reference.run(step, turn)
            b = self.other.run(step, turn)
            self.reference.settle()
            self.other.settle()
            if a is not None and b is not None:
                mismatches += self.compare(group, step, a, b)
                _transcribe(group, step, a, b)
            if isinstance(step, scenarios.Bulk):
                self.reference.raft_index = self.other.raft_index = None
        return mismatches

    def close(self) -> None:
        self.reference.close()
        self.other.close()


def _transcribe(group: scenarios.Group, step: scenarios.Step, a: Outcome, b: Outcome) -> None:
    if TRANSCRIPT:
        with open(TRANSCRIPT, "a", encoding="utf-8") as f:
            f.write(f"[{group.name}] {_label(step)}\n  reference:\n{_indent(a.raw or a.error)}\n"
                    f"  other:\n{_indent(b.raw or b.error)}\n\n")


def _indent(text: str) -> str:
    return "\n".join("      " + line for line in text.splitlines())


def assert_group(pair: Pair, group: scenarios.Group) -> None:
    """Run a group and fail with every mismatching step, both raw answers shown."""
    mismatches = pair.run(group)
    summary = f"{len(mismatches)} of {len(group.steps)} steps differ:\n\n"
    assert not mismatches, summary + "\n\n".join(mismatches)


def _servers(kind: str, tmp: Path) -> list[harness.Server]:
    """One server, or ``MEMBERS`` members of one new cluster, of ``kind`` (not started)."""
    if kind not in ("etcd", "fastkv"):
        raise pytest.UsageError(f"FASTKV_DIFF_AGAINST must be 'fastkv' or 'etcd', not {kind!r}")
    if MEMBERS == 1:
        make = harness.reference_etcd if kind == "etcd" else harness.fastkv
        return [make(tmp, name=MEMBER_NAME)]
    if MEMBERS != 3:
        raise pytest.UsageError(f"FASTKV_DIFF_MEMBERS must be 1 or 3, not {MEMBERS}")
    names = [f"node{i + 1}" for i in range(MEMBERS)]
    ports = [(harness.free_port(), harness.free_port()) for _ in names]
    initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, (_, p) in zip(names, ports, strict=True))
    if kind == "fastkv":
        return [harness.cluster_member(tmp, n, c, p, p, initial, "new", CLUSTER_TOKEN)
                for n, (c, p) in zip(names, ports, strict=True)]
    return [_etcd_member(tmp, n, c, p, initial) for n, (c, p) in zip(names, ports, strict=True)]


def _etcd_member(tmp: Path, name: str, client_port: int, peer_port: int, initial: str) -> harness.Server:
    """One member of a reference etcd cluster."""
    client_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    data_dir = tmp / f"{name}.etcd"
    args = [harness.REFERENCE_ETCD, "--name", name, "--data-dir", str(data_dir),
            "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", initial, "--initial-cluster-state", "new",
            "--initial-cluster-token", CLUSTER_TOKEN, "--enable-v2"]
    return harness.Server("etcd", name, client_port, peer_port, data_dir, args, tmp / f"{name}.etcd.log")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """A fresh reference etcd and a fresh server under test (or clusters of them), once per module."""
    reference = _servers("etcd", tmp_path_factory.mktemp("reference"))
    other = _servers(AGAINST, tmp_path_factory.mktemp(AGAINST))
    started: list[harness.Server] = []
    try:
        for servers in (reference, other):
            started += servers
            harness.start_all(servers)
        the_pair = Pair(Side.start("reference", reference), Side.start("other", other))
        yield the_pair
        the_pair.close()
    finally:
        for server in started:
            server.stop()

"""Fixtures and the runner of the differential suite.

Each test module starts one reference etcd and one server under test, both fresh, and runs
its scenario groups in order on both: every step goes to the reference first, then to the
other server, and the two normalised answers are compared. ``FASTKV_DIFF_AGAINST=etcd``
makes the server under test a second reference etcd, which validates the suite itself:
every step must then pass.
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
class Side:
    """One server of the pair with everything the runner tracks about it."""

    role: str
    server: harness.Server
    facts: ServerFacts
    variables: dict[str, str] = field(default_factory=dict)
    watches: dict[str, client.Stream] = field(default_factory=dict)
    raft_index: int | None = None
    raft_term: int | None = None

    @classmethod
    def start(cls, role: str, server: harness.Server) -> Side:
        """Wait until the server's index has settled, then learn its particulars."""
        port = server.client_port
        last = None
        for _ in range(100):
            resp = client.request(port, "GET", "/v2/keys/")
            index = resp.header("X-Etcd-Index")
            version = client.request(port, "GET", "/version").body
            if index == last and b"not_decided" not in version:
                break
            last = index
            time.sleep(0.1)
        assert last is not None and last.isdigit(), f"{role}: no X-Etcd-Index at start"
        facts = ServerFacts(base=int(last), client_url=server.url, peer_url=server.peer_url)
        # A server that cannot say these is still compared: its steps will show what is wrong.
        member_id = _json_or(client.request(port, "GET", "/v2/members").body, "members.0.id", "0")
        facts.ids[member_id] = "#member-id"
        if cluster_id := resp.header("X-Etcd-Cluster-Id"):
            facts.ids[cluster_id] = "#cluster-id"
        stats = _json_or(client.request(port, "GET", "/v2/stats/store").body, "", {})
        if isinstance(stats, dict):
            facts.store_stats = {k: v for k, v in stats.items() if isinstance(v, int)}
        variables = {"base": last, "index": last, "member_id": member_id,
                     "peer_url": server.peer_url, "client_url": server.url,
                     "host": f"127.0.0.1:{port}"}
        return cls(role, server, facts, variables)

    # -- templates and captures --------------------------------------------------------------

    def render(self, text: str) -> str:
        def one(m: re.Match[str]) -> str:
            # A value this server never produced (its earlier step failed) stays visible.
            value = self.variables.get(m[1], f"missing-{m[1]}")
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
            self.facts.placeholder_for_new_id(str(_json_or(resp.body, "id", "-")))
        self.remember(step, resp)
        ctx = RequestContext(step.method, target, body, unordered=step.unordered)
        return Outcome(normalize(resp, self.facts, ctx), resp.describe())

    def open_watch(self, step: scenarios.Watch) -> Outcome:
        target = self.render(step.target)
        try:
            stream = client.Stream(self.server.client_port, target)
        except (OSError, client.ProtocolError, ValueError) as e:
            return Outcome(None, "", f"{type(e).__name__}: {e}")
        self.watches[step.name] = stream
        head = stream.head
        # A watch's events are read by later steps, whatever the framing; an error is whole.
        shown = client.Response(head.status, head.reason, head.headers,
                                b"" if head.status == 200 else head.body, head.chunked)
        return Outcome(normalize(shown, self.facts, RequestContext("GET", target)), shown.describe())

    def read_event(self, step: scenarios.Event) -> Outcome:
        stream = self.watches.get(step.name)
        if stream is None:
            return Outcome(None, "", f"watch {step.name!r} is not open")
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
        stream = self.watches.get(step.name)
        if stream is None:
            return Outcome(None, "", f"watch {step.name!r} is not open")
        try:
            line = stream.read_line(step.wait)
        except TimeoutError:
            return Outcome(Normalized(0, [], "(nothing)"), "(nothing)")
        except (OSError, client.ProtocolError) as e:
            return Outcome(None, "", f"{type(e).__name__}: {e}")
        text = "(the response ended)" if line is None else line.decode("utf-8", "replace")
        return Outcome(Normalized(0, [], text), text)

    def close_watch(self, name: str) -> None:
        stream = self.watches.pop(name, None)
        if stream is not None:
            stream.close()

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

    def run(self, step: scenarios.Step) -> Outcome | None:
        if isinstance(step, scenarios.Req):
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
        for step in group.steps:
            a = self.reference.run(step)
            b = self.other.run(step)
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


def _server_under_test(tmp: Path) -> harness.Server:
    if AGAINST == "etcd":
        return harness.reference_etcd(tmp, name=MEMBER_NAME)
    if AGAINST == "fastkv":
        return harness.fastkv(tmp, name=MEMBER_NAME)
    raise pytest.UsageError(f"FASTKV_DIFF_AGAINST must be 'fastkv' or 'etcd', not {AGAINST!r}")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """A fresh reference etcd and a fresh server under test, started once per module."""
    reference = harness.reference_etcd(tmp_path_factory.mktemp("reference"), name=MEMBER_NAME)
    other = _server_under_test(tmp_path_factory.mktemp(AGAINST))
    started: list[harness.Server] = []
    try:
        for server in (reference, other):
            server.start()
            started.append(server)
        the_pair = Pair(Side.start("reference", reference), Side.start("other", other))
        yield the_pair
        the_pair.close()
    finally:
        for server in started:
            server.stop()

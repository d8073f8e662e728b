"""Shared pieces of the command-line tests: running etcdctl / fastkvctl and comparing their output."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ETCDCTL = "/usr/bin/etcdctl" if os.path.exists("/usr/bin/etcdctl") else "etcdctl"
FASTKVCTL = [sys.executable, "-m", "fastkv.ctl.main"]


@dataclass(frozen=True)
class Outcome:
    """What a user sees from one command: exit code, stdout, stderr."""

    code: int
    out: str
    err: str


def env_with_repo(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child process that must import this checkout's ``fastkv``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "ETCDCTL_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["ETCDCTL_API"] = "2"
    env.update(extra or {})
    return env


def run_tool(tool: list[str], args: list[str], timeout: float = 20.0, stdin: str | None = None) -> Outcome:
    proc = subprocess.run(
        [*tool, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin if stdin is not None else "",
        env=env_with_repo(),
        cwd=REPO,
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def etcdctl(args: list[str], **kw: object) -> Outcome:
    return run_tool([ETCDCTL], args, **kw)  # type: ignore[arg-type]


def fastkvctl(args: list[str], **kw: object) -> Outcome:
    return run_tool(FASTKVCTL, args, **kw)  # type: ignore[arg-type]


_NORMALISE = (
    (re.compile(r"127\.0\.0\.1:\d+"), "127.0.0.1:PORT"),
    (re.compile(r"\[\d+\]$", re.M), "[INDEX]"),
    (re.compile(r"((?:Created|Modified)-Index|Index): \d+"), r"\1: N"),
    (re.compile(r'"(createdIndex|modifiedIndex)":\d+'), r'"\1":N'),
    (re.compile(r'"expiration":"[^"]*","ttl":\d+'), '"expiration":"T","ttl":N'),
    (re.compile(r"TTL: [1-9]\d*"), "TTL: N"),
    (re.compile(r"\b[0-9a-f]{12,16}\b"), "MEMBERID"),
    (re.compile(r"/\d{20}"), "/INORDER"),
    (re.compile(r"ETCD_WATCH_MODIFIED_INDEX=\d+"), "ETCD_WATCH_MODIFIED_INDEX=N"),
)


def normalise(text: str) -> str:
    """Hide what legitimately differs between two servers: ports, indices, ids, times."""
    for pattern, repl in _NORMALISE:
        text = pattern.sub(repl, text)
    return text


def normalised(outcome: Outcome) -> Outcome:
    return Outcome(outcome.code, normalise(outcome.out), normalise(outcome.err))


#: One command line per step, run in order on a fresh single-member server. ``{E}`` is the
#: server's client URL, ``{ID}`` its member id, ``{PEER}`` its peer URL.
SCENARIO: tuple[tuple[str, ...], ...] = (
    ("--debug", "set", "foo", "bar"),
    ("-o", "extended", "get", "foo"),
    ("-o", "json", "get", "foo"),
    ("--debug", "get", "--sort", "--quorum", "foo"),
    ("get", "nope"),
    ("get",),
    ("set", "foo"),
    ("mk", "foo", "x"),
    ("--debug", "mkdir", "d"),
    ("get", "d"),
    ("mk", "d/x", "a b&c=d/é <tag>"),
    ("-o", "json", "get", "d/x"),
    ("setdir", "d2"),
    ("--debug", "updatedir", "--ttl", "100", "d2"),
    ("ls", "d"),  # one child: etcd lists unsorted directories in random order
    ("ls", "-p", "-r", "--sort"),
    ("ls", "d", "--sort"),
    ("-o", "json", "ls", "/d"),
    ("-o", "extended", "ls", "foo"),
    ("update", "foo", "baz"),
    ("update", "nope", "v"),
    ("set", "--swap-with-value", "wrong", "foo", "v"),
    ("set", "--swap-with-index", "1", "foo", "v"),
    ("-o", "extended", "set", "foo", "v2", "--ttl", "100"),
    ("set", "foo", "--", "-dash"),
    ("set", "--ttl", "abc", "foo", "x"),
    ("set", "--bogus", "foo", "x"),
    ("rm", "d"),
    ("-o", "extended", "rm", "d/x"),
    ("rmdir", "d"),
    ("--debug", "rm", "--dir", "-r", "--with-value", "x", "--with-index", "3", "nope"),
    ("mk", "--in-order", "q", "v"),
    ("ls", "q"),
    ("rm", "-r", "q"),
    ("-o", "yaml", "get", "foo"),
    ("set", "w", "1"),
    ("watch", "--after-index", "1", "w"),
    ("--debug", "-o", "extended", "watch", "-r", "--after-index", "1", "/"),
    ("exec-watch", "--after-index", "1", "sh", "-c", "env | grep ETCD_WATCH_ | sort; kill -INT $PPID", "w"),
    ("exec-watch", "w"),
    ("--debug", "member", "list"),
    ("member", "list", "extra"),
    ("member", "update", "{ID}", "{PEER}"),
    ("member", "add", "x", "notaurl"),
    ("member", "add", "x"),
    ("member", "remove", "nope"),
    ("member", "bogus"),
    ("cluster-health",),
    ("--no-sync", "--debug", "get", "foo"),
    ("bogus",),
    ("set", "--help"),
)

#: Steps run against an address where nothing listens.
UNREACHABLE: tuple[tuple[str, ...], ...] = (
    ("get", "foo"),
    ("--no-sync", "set", "foo", "bar"),
    ("member", "list"),
    ("cluster-health",),
)


def member_id_of(url: str) -> str:
    import json
    import urllib.request

    with urllib.request.urlopen(url + "/v2/members", timeout=5) as resp:
        return str(json.load(resp)["members"][0]["id"])


def run_scenario(tool: list[str], url: str, peer_url: str) -> list[tuple[tuple[str, ...], Outcome]]:
    """Every step of :data:`SCENARIO` with ``tool`` against the server at ``url``."""
    ident = member_id_of(url)
    results = []
    for step in SCENARIO:
        args = [a.format(ID=ident, PEER=peer_url, E=url) for a in step]
        results.append((step, normalised(run_tool(tool, ["--endpoints", url, *args]))))
    return results


def run_unreachable(tool: list[str], url: str) -> list[tuple[tuple[str, ...], Outcome]]:
    return [(step, normalised(run_tool(tool, ["--endpoints", url, *step]))) for step in UNREACHABLE]


def differences(
    left: list[tuple[tuple[str, ...], Outcome]], right: list[tuple[tuple[str, ...], Outcome]]
) -> list[str]:
    """Human-readable list of the steps whose outcomes differ."""
    diffs = []
    for (step, a), (_, b) in zip(left, right, strict=True):
        if a != b:
            diffs.append(f"{' '.join(step)}:\n  expected {a!r}\n  got      {b!r}")
    return diffs

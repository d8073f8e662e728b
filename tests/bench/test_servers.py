"""The benchmark's own launcher and watch client against real servers: the reference etcd and fastkv
started with the same flags, alone and as 3-member clusters."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import macro
from bench import servers as srv
from bench.loadgen import watch_fanout


def test_both_kinds_get_the_same_flags(tmp_path: Path) -> None:
    """Apart from the program (and etcd's --enable-v2), a fastkv and an etcd cluster are started alike."""
    fk, ref = srv.cluster("fastkv", tmp_path, 3), srv.cluster("etcd", tmp_path, 3)
    for f, e in zip(fk, ref, strict=True):
        f_flags = f.args[f.args.index("--name"):]
        e_flags = e.args[e.args.index("--name"):]
        assert len(f_flags) == len(e_flags)
        names = f_flags[::2]
        assert names == e_flags[::2]
        assert {"--initial-cluster", "--initial-cluster-state", "--initial-cluster-token"} <= set(names)
    assert "--enable-v2" in ref[0].args and "--enable-v2" not in fk[0].args
    assert len({m.client_port for m in fk + ref}) == 6


def test_memory_servers_get_the_same_snapshot_count(tmp_path: Path) -> None:
    extra = ["--snapshot-count", "900000"]
    for who in macro.CONTENDERS:
        server = macro.make_server(who, "fastkv", tmp_path, who, extra)
        assert server.kind == who and server.args[-2:] == extra


@pytest.fixture(params=srv.KINDS)
def three(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[srv.Server]]:
    members = srv.start_all(srv.cluster(request.param, tmp_path, 3))
    try:
        yield members
    finally:
        srv.stop_all(members)


def test_a_write_to_a_follower_is_read_on_the_leader_and_by_quorum(three: list[srv.Server]) -> None:
    leader = srv.leader(three)
    followers = [m for m in three if m is not leader]
    assert len(followers) == 2 and all(m.state() == "StateFollower" for m in followers)
    macro.put_key(followers[0], "/v2/keys/bench/k0", "from-a-follower")
    status, body = srv.http_get(leader.client_port, "/v2/keys/bench/k0?quorum=true", timeout=10)
    assert status == 200 and json.loads(body)["node"]["value"] == "from-a-follower"


@pytest.fixture(params=srv.KINDS)
def one(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[srv.Server]:
    server = srv.single(request.param, tmp_path, request.param).start()
    try:
        yield server
    finally:
        server.stop()


def test_watch_fanout_times_every_sample_on_reused_connections(one: srv.Server) -> None:
    times = watch_fanout("127.0.0.1", one.client_port, 200, 3)
    assert len(times) == 3 and all(t > 0 for t in times)
    status, body = srv.http_get(one.client_port, "/v2/keys/bench/watched")
    assert status == 200 and json.loads(body)["node"]["value"] == "w" * 32


def test_timed_start_ends_when_the_key_reads_back(one: srv.Server) -> None:
    macro.put_key(one, macro.RESTART_KEY, "after the fill")
    one.stop()
    assert one.timed_start(macro.RESTART_KEY) > 0
    assert one.answers(macro.RESTART_KEY)


def test_a_server_that_cannot_start_fails_with_its_output(tmp_path: Path) -> None:
    server = srv.single("fastkv", tmp_path, "bad", ["--no-such-flag"])
    with pytest.raises(RuntimeError, match="exited with"):
        server.start(timeout=30)


def test_open_file_limit_is_raised_up_to_the_hard_limit() -> None:
    import resource

    soft = srv.raise_open_file_limit(4096)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert soft == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert soft >= 4096 or soft == hard

"""Member and cluster ids equal those the reference etcd reports for the same flags."""

from __future__ import annotations

import json
import socket
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from fastkv.identity import cluster_id, hex_id, member_id
from tests import harness
from tests.cli import env_with_repo


def test_known_ids() -> None:
    ident = member_id(["http://127.0.0.1:22380"], "etcd-cluster")
    assert hex_id(ident) == "9e737febb6b99eee"
    assert hex_id(cluster_id([ident])) == "c8730d66636ff140"


def test_peer_url_order_does_not_matter_and_time_does() -> None:
    urls = ["http://127.0.0.1:2", "http://127.0.0.1:1"]
    assert member_id(urls, "t") == member_id(list(reversed(urls)), "t")
    assert member_id(urls, "t", now_s=1) != member_id(urls, "t", now_s=2)
    assert cluster_id([1, 2]) == cluster_id([2, 1])


def _reported(server: harness.Server) -> tuple[dict[str, str], str]:
    with urllib.request.urlopen(server.url + "/v2/members", timeout=5) as resp:
        members = json.load(resp)["members"]
        cluster = resp.headers["X-Etcd-Cluster-Id"]
    return {m["id"]: ",".join(sorted(m["peerURLs"])) for m in members}, cluster


@pytest.mark.reference
@pytest.mark.parametrize("token,second_url", [("etcd-cluster", False), ("my-token", False), ("tok2", True)])
def test_ids_match_reference_etcd(tmp_path: Path, token: str, second_url: bool) -> None:
    server = harness.reference_etcd(tmp_path)
    peers = [server.peer_url] + ([f"http://127.0.0.1:{harness.free_port()}"] if second_url else [])
    flags = [
        "--initial-cluster-token",
        token,
        "--initial-advertise-peer-urls",
        ",".join(peers),
        "--listen-peer-urls",
        ",".join(peers),
        "--initial-cluster",
        ",".join(f"{server.name}={u}" for u in peers),
    ]
    server.args.extend(flags)
    server.start()
    try:
        members, cluster = _reported(server)
    finally:
        server.stop()
    mine = member_id(peers, token)
    assert members == {hex_id(mine): ",".join(sorted(peers))}
    assert cluster == hex_id(cluster_id([mine]))


def test_two_member_cluster_id_is_over_sorted_ids() -> None:
    a, b = member_id(["http://127.0.0.1:1"], "t"), member_id(["http://127.0.0.1:2"], "t")
    assert cluster_id([a, b]) != cluster_id([a])
    assert cluster_id([a, b]) == cluster_id([b, a])


#: The ports a server started without flags takes: etcd's client and peer ports, and 4001,
#: the legacy client port fastkv also serves.
DEFAULT_PORTS = (2379, 2380, 4001)


@dataclass(frozen=True)
class Identity:
    """What a client learns of a single member's identity from its answers."""

    member_id: str
    cluster_id: str
    members_body: bytes
    machines_body: bytes


def _get(url: str) -> tuple[bytes, str]:
    """The body of ``GET url`` and its ``X-Etcd-Cluster-Id`` header (empty when absent)."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read(), resp.headers.get("X-Etcd-Cluster-Id", "")


def _identity(url: str) -> Identity:
    members, cluster = _get(url + "/v2/members")
    machines, _ = _get(url + "/v2/machines")
    (member,) = json.loads(members)["members"]
    return Identity(member["id"], cluster, members, machines)


def _assert_default_ports_free() -> None:
    """Fail loudly when something already listens on a default port: the test would talk to it."""
    for port in DEFAULT_PORTS:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError as exc:
                raise AssertionError(f"port {port} is taken ({exc}); this test needs it free") from None


def _without_flags(kind: str, command: list[str], cwd: Path) -> harness.Server:
    """A server running ``command`` (no flags) in ``cwd``, as a user starts it in a directory."""
    cwd.mkdir()
    in_cwd = ["sh", "-c", 'cd "$0" && exec "$@"', str(cwd), *command]
    server = harness.Server(kind, "default", 2379, 2380, cwd, in_cwd, cwd / "server.log", env=env_with_repo())
    _assert_default_ports_free()
    return server.start()


def _answers_on(port: int) -> bool:
    """Whether a client gets the key space from 127.0.0.1:``port``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/keys/", timeout=5) as resp:
        return resp.status == 200


@pytest.mark.reference
def test_no_flags_give_etcds_identity(tmp_path: Path) -> None:
    """etcd and fastkv started without flags, one after the other: the same member, the same
    cluster, the same /v2/members and /v2/machines; fastkv also serves 4001 and keeps its data
    in ./default.fastkv."""
    etcd = _without_flags("etcd", [harness.REFERENCE_ETCD, "--enable-v2"], tmp_path / "etcd")
    try:
        expected = _identity(etcd.url)
    finally:
        etcd.stop()
    fastkv = _without_flags("fastkv", [sys.executable, "-m", "fastkv"], tmp_path / "fastkv")
    try:
        got = _identity(fastkv.url)
        assert _answers_on(4001)
        socket.create_connection(("127.0.0.1", 2380), timeout=5).close()
    finally:
        fastkv.stop()
    assert expected.member_id == "8e9e05c52164694d"
    assert got == expected
    assert (tmp_path / "fastkv" / "default.fastkv").is_dir()

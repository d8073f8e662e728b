"""Member and cluster ids equal those the reference etcd reports for the same flags."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from fastkv.identity import cluster_id, hex_id, member_id
from tests import harness


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

"""Changing the membership of a running cluster of real processes: members added with
``POST /v2/members`` or ``fastkvctl member add`` join (``--initial-cluster-state existing``),
catch up and serve while clients write (and the history of a recorded client load stays
linearizable); members are removed; etcd's refusals of joins and its strict reconfiguration checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests import harness
from tests.cluster.conftest import (
    TIMING,
    Cluster,
    Writer,
    request,
    running_cluster,
    wait_for,
    wait_until_has,
)
from tests.cluster.history import recorded_load

TOKEN = "fk-cluster"  # harness.fastkv_cluster's
INTERNAL_ERROR = (500, {"message": "Internal Server Error"})
RECONFIG_WAIT_S = 12  # etcd's strict check wants links to the voters up for 5 s
APPLY_WAIT_S = 10  # for every member to apply a change the one that answered has applied


def post_member(member: harness.Server, peer_url: str) -> tuple[int, object]:
    status, _, body = _json_request(member.url + "/v2/members", "POST", {"peerURLs": [peer_url]})
    return status, body


def delete_member(member: harness.Server, member_id: str) -> tuple[int, object]:
    status, _, body = request(member.url + f"/v2/members/{member_id}", "DELETE")
    return status, body


def _json_request(url: str, method: str, payload: object) -> tuple[int, dict[str, str], object]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read() or b"{}")


def member_ids(member: harness.Server) -> set[str]:
    """The ids ``member`` lists in ``GET /v2/members`` (what it has applied so far)."""
    return {m["id"] for m in request(member.url + "/v2/members")[2]["members"]}


def wait_until_listed(members: list[harness.Server], member_id: str) -> None:
    """A change is acknowledged once the member that took it has applied it; the others apply it when
    their log gets there. A joining member asks one of them for the cluster and must find itself in
    the answer, so wait until every one of ``members`` lists ``member_id``."""
    wait_for(lambda: all(member_id in member_ids(m) for m in members), APPLY_WAIT_S,
             f"every member to list {member_id}")


def log_since(member: harness.Server, offset: int) -> str:
    """What ``member`` has logged after the first ``offset`` bytes of its log."""
    with open(member.log_path, "rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


def initial_cluster_of(member: harness.Server, name: str, new_id: str) -> str:
    """``--initial-cluster`` for the member ``new_id`` about to join, as ``member add`` prints it."""
    members = request(member.url + "/v2/members")[2]["members"]
    return ",".join(f"{name if m['id'] == new_id else m['name']}={u}" for m in members for u in m["peerURLs"])


def joiner(tmp: Path, name: str, initial_cluster: str, client_port: int, peer_port: int) -> harness.Server:
    return harness.cluster_member(tmp, name, client_port, peer_port, peer_port, initial_cluster, "existing",
                                  TOKEN, TIMING)


def from_environment(tmp: Path, name: str, client_port: int, peer_port: int,
                     env: dict[str, str]) -> harness.Server:
    """A member whose name and initial cluster come from ``ETCD_*`` variables (as printed by
    ``member add``) and everything else from flags."""
    client, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    data_dir = tmp / f"{name}.fastkv"
    args = [sys.executable, "-m", "fastkv", "--data-dir", str(data_dir),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster-token", TOKEN, *TIMING]
    return harness.Server("fastkv", name, client_port, peer_port, data_dir, args, tmp / f"{name}.fastkv.log",
                          env)


def refused_start(server: harness.Server) -> str:
    """Run a member that must refuse to start; its output."""
    done = subprocess.run(server.args, capture_output=True, text=True, timeout=30,
                          env={**os.environ, **server.env})
    assert done.returncode == 1, done.stderr
    return done.stderr


def fastkvctl(endpoint: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastkv.ctl.main", "--endpoints", endpoint, *args],
                          capture_output=True, text=True, timeout=30)


def test_members_join_by_http_and_fastkvctl_and_one_leaves_under_write_load(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 3, ["--snapshot-count", "20"]) as cluster, recorded_load(cluster):
        m0, m1, m2 = cluster.members
        writers = [Writer(m, i) for i, m in enumerate((m0, m1))]
        for w in writers:
            w.start()
        wait_for(lambda: all(len(w.acked) >= 30 for w in writers), 20, "writes past a compaction")
        cluster_id = request(m0.url + "/v2/members")[1]["X-Etcd-Cluster-Id"]

        # A member that was not added first is refused, with etcd's message.
        c3, p3 = harness.free_port(), harness.free_port()
        not_added = initial_cluster_of(m0, "m3", "-") + f",m3=http://127.0.0.1:{p3}"
        early = joiner(tmp_path, "m3", not_added, c3, p3)
        out = refused_start(early)
        assert f"C | etcdmain: error validating peerURLs {{ClusterID:{cluster_id} Members:[&{{ID:" in out
        assert out.rstrip().endswith("member count is unequal")
        assert not early.data_dir.exists()

        # Added with POST /v2/members (once the strict check allows it).
        added = wait_for(lambda: (r := post_member(m1, f"http://127.0.0.1:{p3}"))[0] == 201 and r[1],
                         RECONFIG_WAIT_S, "the addition to be accepted")
        assert added["name"] == "" and added["clientURLs"] == []
        wait_until_listed(cluster.alive(), added["id"])
        initial = initial_cluster_of(m0, "m3", added["id"])
        wrong = joiner(tmp_path, "m3", initial.replace(f"m3=http://127.0.0.1:{p3}", f"m3=http://127.0.0.1:{c3}"),
                       c3, p3)
        out = refused_start(wrong)
        assert (f"PeerURLs: no match found for existing member ({added['id']}, [http://127.0.0.1:{p3}]), "
                "last resolver error (resolved urls:") in out
        new = joiner(tmp_path, "m3", initial, c3, p3).start()
        cluster.members.append(new)
        assert request(new.url + "/v2/stats/self")[2]["id"] == added["id"]
        assert request(new.url + "/v2/members")[1]["X-Etcd-Cluster-Id"] == cluster_id
        wait_until_has(new, {k: v for w in writers for k, v in list(w.acked.items())})
        assert "applied the leader's snapshot" in new.output()  # the log it needed was compacted
        status, _, body = request(new.url + "/v2/keys/joined", "PUT", value="m3")
        assert status == 201, body
        assert request(m2.url + "/v2/keys/joined?quorum=true")[2]["node"]["value"] == "m3"

        # Added with fastkvctl, started with the settings it prints.
        c4, p4 = harness.free_port(), harness.free_port()
        ctl = wait_for(lambda: (r := fastkvctl(new.url, "member", "add", "m4", f"http://127.0.0.1:{p4}"))
                       .returncode == 0 and r, RECONFIG_WAIT_S, "fastkvctl member add to succeed")
        wait_until_listed(cluster.alive(), ctl.stdout.split(" with ID ", 1)[1].split()[0])
        settings = dict(line.split("=", 1) for line in ctl.stdout.splitlines() if line.startswith("ETCD_"))
        assert settings["ETCD_INITIAL_CLUSTER_STATE"] == '"existing"' and settings["ETCD_NAME"] == '"m4"'
        env = {k: json.loads(v) for k, v in settings.items()}
        fifth = from_environment(tmp_path, "m4", c4, p4, env).start()
        cluster.members.append(fifth)
        cluster.healthy()
        assert len(request(fifth.url + "/v2/members")[2]["members"]) == 5

        # Another member is removed while the writes go on; it stops by itself.
        gone_id = request(m2.url + "/v2/stats/self")[2]["id"]
        status, body = delete_member(new, gone_id)
        assert status == 204, body
        assert m2.process is not None and m2.process.wait(10) == 0
        before = sum(len(w.acked) for w in writers)
        wait_for(lambda: sum(len(w.acked) for w in writers) > before + 10, 15, "writes after the removal")
        acked = {k: v for w in writers for k, v in w.finish().items()}
        for m in (m0, m1, new, fifth):
            wait_until_has(m, acked)
            assert gone_id not in {x["id"] for x in request(m.url + "/v2/members")[2]["members"]}

        # Restarted on its data directory, a joined member ignores "existing" and comes back.
        new.stop()
        new.start()
        status, _, body = request(new.url + "/v2/keys/joined?quorum=true")
        assert (status, body["node"]["value"]) == (200, "m3")


def test_a_join_without_a_reachable_member_is_refused(tmp_path: Path) -> None:
    dead = [harness.free_port() for _ in range(2)]
    c, p = harness.free_port(), harness.free_port()
    initial = f"a=http://127.0.0.1:{dead[0]},b=http://127.0.0.1:{dead[1]},m=http://127.0.0.1:{p}"
    out = refused_start(joiner(tmp_path, "m", initial, c, p))
    assert f"W | etcdserver: could not get cluster response from http://127.0.0.1:{dead[0]}:" in out
    assert out.rstrip().endswith("C | etcdmain: cannot fetch cluster info from peer urls: "
                                 "could not retrieve cluster information from the given URLs")


def test_strict_reconfiguration_checks(cluster3: Cluster) -> None:
    m0, m1, m2 = cluster3.members
    ids = [request(m.url + "/v2/stats/self")[2]["id"] for m in cluster3.members]
    logged = m0.log_path.stat().st_size
    m2.kill()
    # Wait until m0 has seen its link to m2 go down and m0 and m1 agree on a leader among themselves:
    # a change m0 forwarded to m2 as the leader would be lost (etcd loses it too) and time out.
    wait_for(lambda: f"lost connection to member {ids[2]} " in log_since(m0, logged), APPLY_WAIT_S,
             "m0 to lose its link to m2")
    cluster3.leader(among=[m0, m1])
    # m0 has no link to m2: an addition or the removal of a live member would risk the quorum.
    assert post_member(m0, "http://127.0.0.1:1") == INTERNAL_ERROR
    assert delete_member(m0, ids[1]) == INTERNAL_ERROR
    assert delete_member(m0, ids[2]) == (204, {})  # a member that is down may go
    # A member whose links have just come up refuses changes for a while.
    m1.kill()
    m1.start()
    assert post_member(m1, "http://127.0.0.1:1") == INTERNAL_ERROR
    x = wait_for(lambda: (r := post_member(m0, "http://127.0.0.1:1"))[0] == 201 and r[1], RECONFIG_WAIT_S,
                 "the addition to be accepted")
    # Two started members of three: a fourth member would need three started ones.
    assert post_member(m0, "http://127.0.0.1:2") == INTERNAL_ERROR
    assert delete_member(m0, x["id"]) == (204, {})  # an unstarted member may go
    wait_for(lambda: member_ids(m1) == set(ids[:2]), APPLY_WAIT_S, "m1 to list m0 and itself only")

"""etcd's discovery protocol, against the reference etcd (and fastkv) as the discovery service."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fastkv import discovery
from fastkv.discovery import Discovery, registration_value
from fastkv.identity import hex_id, member_id
from tests import harness

pytestmark = pytest.mark.reference

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.Server]:
    server = harness.reference_etcd(tmp_path_factory.mktemp("discovery-service")).start()
    yield server
    server.stop()


def request(method: str, url: str, **form: str) -> dict[str, object]:
    data = urllib.parse.urlencode(form).encode() if form else None
    with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method), timeout=5) as r:
        return dict(json.loads(r.read()))


def new_token(service: harness.Server, size: str | None) -> str:
    """A fresh discovery URL on ``service``, with its size key set unless ``size`` is None."""
    url = f"{service.url}/v2/keys/_etcd/registry/{uuid.uuid4().hex}"
    if size is not None:
        request("PUT", url + "/_config/size", value=size)
    return url


def registrations(url: str) -> list[tuple[str, str]]:
    """(key, value) of the token directory's entries in registration order."""
    nodes = request("GET", url)["node"]
    assert isinstance(nodes, dict)
    listed = sorted(nodes.get("nodes", []), key=lambda n: n["createdIndex"])
    return [(n["key"], n["value"]) for n in listed]


def join(url: str, name: str, peer: str, **kwargs: object) -> str:
    """Run the protocol for a member ``name`` at ``peer``, its id computed as etcd computes it."""
    run = Discovery(url, member_id([peer], url), **kwargs)  # type: ignore[arg-type]
    return run.join(registration_value(name, [peer]))


def join_concurrently(url: str, names: list[str]) -> list[str | BaseException]:
    results: list[str | BaseException] = [""] * len(names)

    def member(i: int) -> None:
        try:
            results[i] = join(url, names[i], f"http://127.0.0.1:{30001 + i}")
        except BaseException as exc:  # reported through the results
            results[i] = exc

    threads = [threading.Thread(target=member, args=(i,)) for i in range(len(names))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


# ---------------------------------------------------------------------------------------
# The protocol, run in this process


def test_a_single_member_registers_name_and_peer_url_under_its_id(etcd: harness.Server) -> None:
    url = new_token(etcd, "1")
    peer = "http://127.0.0.1:30000"
    assert join(url, "m1", peer) == f"m1={peer}"
    token_path = urllib.parse.urlsplit(url).path.removeprefix("/v2/keys")
    assert registrations(url) == [(f"{token_path}/{hex_id(member_id([peer], url))}", f"m1={peer}")]


def test_a_member_with_several_peer_urls_registers_them_all() -> None:
    assert registration_value("m", ["http://b:2", "http://a:1"]) == "m=http://a:1,m=http://b:2"


@pytest.mark.parametrize("service_kind", ["etcd", "fastkv"])
def test_three_members_registering_at_once_get_the_same_cluster(
    service_kind: str, etcd: harness.Server, tmp_path: Path
) -> None:
    service = etcd if service_kind == "etcd" else harness.fastkv(tmp_path).start()
    try:
        url = new_token(service, "3")
        results = join_concurrently(url, ["a", "b", "c"])
        assert all(isinstance(r, str) for r in results), results
        assert len(set(results)) == 1
        assert results[0] == ",".join(value for _, value in registrations(url))
        assert sorted(results[0].split(",")) == [f"{n}=http://127.0.0.1:{30001 + i}"
                                                 for i, n in enumerate("abc")]
    finally:
        if service is not etcd:
            service.stop()


def test_a_member_after_the_first_n_finds_the_cluster_full_and_does_not_register(
    etcd: harness.Server,
) -> None:
    url = new_token(etcd, "1")
    join(url, "first", "http://127.0.0.1:30000")
    with pytest.raises(discovery.ClusterFull, match=r"^discovery: cluster is full$"):
        join(url, "late", "http://127.0.0.1:30009")
    assert len(registrations(url)) == 1


def test_a_missing_size_key_fails_with_the_services_error(etcd: harness.Server) -> None:
    url = new_token(etcd, None)
    request("PUT", url + "/someone", value="x=http://127.0.0.1:1")
    token_path = urllib.parse.urlsplit(url).path.removeprefix("/v2/keys")
    missing = rf"^100: Key not found \({token_path}/_config\) \[\d+\]$"
    with pytest.raises(discovery.ServiceError, match=missing):
        join(url, "m", "http://127.0.0.1:30000")


def test_a_size_that_is_not_a_number_is_a_bad_size_key(etcd: harness.Server) -> None:
    with pytest.raises(discovery.BadSizeKey, match=r"^discovery: size key is bad$"):
        join(new_token(etcd, "three"), "m", "http://127.0.0.1:30000")


def test_registering_the_same_id_twice_is_a_duplicate_id(etcd: harness.Server) -> None:
    url = new_token(etcd, "2")
    peer = "http://127.0.0.1:30000"
    request("PUT", f"{url}/{hex_id(member_id([peer], url))}", value=f"m={peer}")
    with pytest.raises(discovery.DuplicateID, match=r"^discovery: found duplicate id$"):
        join(url, "m", peer)


def test_two_members_with_one_name_are_a_duplicate_name(etcd: harness.Server) -> None:
    url = new_token(etcd, "2")
    request("PUT", url + "/1234", value="m=http://127.0.0.1:30001")
    with pytest.raises(discovery.DuplicateName, match=r"^discovery: found duplicate name$"):
        join(url, "m", "http://127.0.0.1:30002")


def test_a_url_that_is_not_a_keys_directory_is_a_bad_endpoint(etcd: harness.Server) -> None:
    with pytest.raises(discovery.BadEndpoint, match=r"^discovery: bad discovery endpoint$"):
        join(etcd.url + "/not-keys/token", "m", "http://127.0.0.1:30000")


def test_the_backoff_doubles_from_2_to_256_units() -> None:
    assert [discovery.backoff_seconds(n) for n in range(1, 11)] == [2, 4, 8, 16, 32, 64, 128, 256, 256, 256]
    assert discovery.backoff_seconds(3, unit=0.5) == 4
    assert [discovery.go_duration(s) for s in (2, 256, 0.25, 3600)] == ["2s", "4m16s", "250ms", "1h0m0s"]


def test_an_unreachable_service_is_retried_until_it_answers(tmp_path: Path) -> None:
    service = harness.reference_etcd(tmp_path)  # ports chosen, not started yet
    url = f"{service.url}/v2/keys/_etcd/registry/late"
    waits: list[float] = []
    logged: list[str] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            service.start()
            request("PUT", url + "/_config/size", value="1")

    try:
        result = join(url, "m", "http://127.0.0.1:30000", sleep=sleep,
                      log=lambda level, pkg, msg: logged.append(f"{level} | {pkg}: {msg}"))
    finally:
        service.stop()
    assert result == "m=http://127.0.0.1:30000"
    assert waits == [2, 4, 8]
    assert f"I | discovery: cluster status check: error connecting to {service.url}, retrying in 4s" in logged
    assert any(re.fullmatch(r"E \| discovery: error #0: dial tcp .*refused", line) for line in logged)


def test_a_pure_full_check_counts_members_registered_before_this_one() -> None:
    nodes = [discovery.Node(f"/t/{k}", "", i, i) for i, k in enumerate(["a", "b", "c"])]
    assert discovery.is_full(nodes, "/t/z", 3) and discovery.is_full(nodes, "/t/c", 2)
    assert not discovery.is_full(nodes, "/t/b", 2) and not discovery.is_full(nodes[:2], "/t/z", 3)


# ---------------------------------------------------------------------------------------
# The member processes: fastkv and the reference etcd side by side


def member_command(binary: list[str], url: str, name: str = "m", extra: tuple[str, ...] = ()) -> list[str]:
    client, peer = f"http://127.0.0.1:{harness.free_port()}", f"http://127.0.0.1:{harness.free_port()}"
    return [*binary, "--name", name, "--data-dir", f"{name}.data", "--listen-client-urls", client,
            "--advertise-client-urls", client, "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer, "--discovery", url, "--enable-v2", *extra]


def failure_lines(binary: list[str], url: str, cwd: Path, extra: tuple[str, ...] = (),
                  peer_port: int | None = None) -> tuple[int, list[str]]:
    """Exit code and the ``etcdmain`` lines from the first error on, without timestamps."""
    cwd.mkdir()
    command = member_command(binary, url, extra=extra)
    if peer_port is not None:
        at = command.index("--initial-advertise-peer-urls") + 1
        command[at] = command[at - 2] = f"http://127.0.0.1:{peer_port}"
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=30,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    lines = [re.sub(r"^\S+ \S+ ", "", line) for line in done.stderr.splitlines()]
    first = next((i for i, line in enumerate(lines) if line[:2] in ("E ", "C ")), len(lines))
    return done.returncode, [line for line in lines[first:] if " etcdmain: " in line]


FASTKV = [sys.executable, "-m", "fastkv"]
ETCD = [harness.REFERENCE_ETCD]

SetUp = Callable[[str], object]


def _register_other(url: str) -> None:
    request("PUT", url + "/_config/size", value="1")
    request("PUT", url + "/other", value="other=http://127.0.0.1:1")


def _register_self(port: int) -> SetUp:
    def set_up(url: str) -> None:
        request("PUT", url + "/_config/size", value="1")
        own = hex_id(member_id([f"http://127.0.0.1:{port}"], url))
        request("PUT", f"{url}/{own}", value=f"m=http://127.0.0.1:{port}")

    return set_up


DUPLICATE_PORT = harness.free_port()
FAILURES: list[tuple[str, SetUp, tuple[str, ...], int | None]] = [
    ("size-key-missing", lambda url: request("PUT", url + "/other", value="o=http://127.0.0.1:1"), (), None),
    ("bad-size", lambda url: request("PUT", url + "/_config/size", value="x"), (), None),
    ("full-exit", _register_other, ("--discovery-fallback", "exit"), None),
    ("duplicate-id", _register_self(DUPLICATE_PORT), (), DUPLICATE_PORT),
]


@pytest.mark.parametrize("case,set_up,extra,peer_port", FAILURES, ids=[f[0] for f in FAILURES])
def test_failures_read_as_etcd_writes_them(etcd: harness.Server, tmp_path: Path, case: str, set_up: SetUp,
                                           extra: tuple[str, ...], peer_port: int | None) -> None:
    url = new_token(etcd, None)
    set_up(url)
    expected = failure_lines(ETCD, url, tmp_path / "etcd", extra, peer_port)
    got = failure_lines(FASTKV, url, tmp_path / "fastkv", extra, peer_port)
    assert expected[0] == 1 and expected[1]
    assert got == expected


def test_a_full_cluster_with_the_proxy_fallback_exits_and_says_why(etcd: harness.Server,
                                                                    tmp_path: Path) -> None:
    url = new_token(etcd, None)
    _register_other(url)
    code, lines = failure_lines(FASTKV, url, tmp_path / "fastkv")
    assert code == 1
    assert lines[0] == "E | etcdmain: failed to join discovery cluster (discovery: cluster is full)"
    assert "cannot fall back to proxy" in lines[1]


def test_discovery_srv_is_refused_clearly(tmp_path: Path) -> None:
    done = subprocess.run([*FASTKV, "--name", "m", "--data-dir", str(tmp_path / "m"), "--discovery-srv",
                           "example.com"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "--discovery-srv (DNS SRV discovery) is not supported by fastkv" in done.stderr


def discovery_member(tmp_path: Path, url: str, name: str) -> harness.Server:
    """A fastkv member (not started) that bootstraps through ``url``."""
    command = [*member_command(FASTKV, url, name=name), "--heartbeat-interval", "50",
               "--election-timeout", "500"]
    command[command.index("--data-dir") + 1] = str(tmp_path / f"{name}.data")
    client = command[command.index("--listen-client-urls") + 1]
    peer = command[command.index("--listen-peer-urls") + 1]
    return harness.Server("fastkv", name, int(client.rsplit(":", 1)[1]), int(peer.rsplit(":", 1)[1]),
                          tmp_path / f"{name}.data", command, tmp_path / f"{name}.log")


def test_fastkv_bootstraps_through_discovery_then_serves_and_restarts(etcd: harness.Server,
                                                                      tmp_path: Path) -> None:
    url = new_token(etcd, "1")
    member = discovery_member(tmp_path, url, "solo").start()
    try:
        members = request("GET", member.url + "/v2/members")["members"]
        assert members == [{"id": hex_id(member_id([member.peer_url], url)), "name": "solo",
                            "peerURLs": [member.peer_url], "clientURLs": [member.url]}]
        request("PUT", member.url + "/v2/keys/greeting", value="hello")
        member.stop()
        member.start()  # the data directory is initialised: no second registration
        assert request("GET", member.url + "/v2/keys/greeting")["node"]["value"] == "hello"  # type: ignore[index]
    finally:
        member.stop()
    assert [value for _, value in registrations(url)] == [f"solo={member.peer_url}"]
    assert "found self" in member.output()


def test_three_fastkv_members_form_one_cluster_through_discovery(etcd: harness.Server,
                                                                 tmp_path: Path) -> None:
    url = new_token(etcd, "3")
    members = [discovery_member(tmp_path, url, f"d{i}") for i in range(1, 4)]
    starts = [threading.Thread(target=m.start) for m in members]
    try:
        for t in starts:
            t.start()
        for t in starts:
            t.join(60)
        expected = sorted(member_id([m.peer_url], url) for m in members)
        for m in members:
            listed = request("GET", m.url + "/v2/members")["members"]
            assert sorted(int(x["id"], 16) for x in listed) == expected  # type: ignore[attr-defined]
    finally:
        for m in members:
            m.stop()

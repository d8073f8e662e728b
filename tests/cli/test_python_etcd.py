"""The python-etcd client (``import etcd``) works against fastkv: keys, CAS, in-order, TTL, dirs, watch."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import etcd  # type: ignore[import-untyped]
import pytest

from tests import harness

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[etcd.Client]:
    server = harness.fastkv(Path(tmp_path_factory.mktemp("pyetcd"))).start()
    try:
        yield etcd.Client(host="127.0.0.1", port=server.client_port, protocol="http")
    finally:
        server.stop()


def test_set_get_delete(client: etcd.Client) -> None:
    client.write("/py/a", "1")
    assert client.read("/py/a").value == "1"
    client.delete("/py/a")
    with pytest.raises(etcd.EtcdKeyNotFound):
        client.read("/py/a")


def test_compare_and_swap(client: etcd.Client) -> None:
    client.write("/py/cas", "old")
    assert client.test_and_set("/py/cas", "new", "old").value == "new"
    with pytest.raises(ValueError):
        client.test_and_set("/py/cas", "x", "old")
    with pytest.raises(etcd.EtcdAlreadyExist):
        client.write("/py/cas", "y", prevExist=False)


def test_in_order_keys_are_sorted_by_creation(client: etcd.Client) -> None:
    first = client.write("/py/queue", "j1", append=True)
    second = client.write("/py/queue", "j2", append=True)
    assert first.key < second.key
    listed = client.read("/py/queue", sorted=True)
    assert [c.value for c in listed.children] == ["j1", "j2"]


def test_ttl_is_reported(client: etcd.Client) -> None:
    result = client.write("/py/ttl", "v", ttl=100)
    assert 0 < client.read("/py/ttl").ttl <= 100
    assert result.expiration is not None


def test_directory_listing(client: etcd.Client) -> None:
    client.write("/py/dir/x", "1")
    client.write("/py/dir/sub/y", "2")
    listing = client.read("/py/dir", recursive=True)
    assert listing.dir
    assert sorted(c.key for c in listing.leaves) == ["/py/dir/sub/y", "/py/dir/x"]


def test_watch_sees_a_write_from_another_thread(client: etcd.Client) -> None:
    start = client.write("/py/w", "before").modifiedIndex
    seen: list[etcd.EtcdResult] = []
    watcher = threading.Thread(target=lambda: seen.append(client.watch("/py/w", index=start + 1, timeout=10)))
    watcher.start()
    client.write("/py/w", "after")
    watcher.join(15)
    assert [r.value for r in seen] == ["after"]

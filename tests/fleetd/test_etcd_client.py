"""The asyncio etcd v2 client against a real reference etcd: every operation, error, watch and failover."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest

from fleetd.etcd import (
    EtcdClient,
    EtcdCompareFailed,
    EtcdDirNotEmpty,
    EtcdError,
    EtcdEventIndexCleared,
    EtcdInvalidRequest,
    EtcdKeyNotFound,
    EtcdNodeExists,
    EtcdNotDir,
    EtcdNotFile,
    EtcdProtocolError,
    EtcdResult,
    EtcdRootReadOnly,
    EtcdTimeout,
    EtcdUnavailable,
)
from fleetd.job import Unit
from fleetd.registry.registry import BIG_READ_TIMEOUT, Registry
from fleetd.unit import UnitFile
from tests import harness

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 6.0) -> None:
    """Poll ``check`` until it is true; fail after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.1)


def test_set_and_get_return_nodes_and_indexes(etcd_server: harness.Server) -> None:
    async def scenario() -> None:
        async with EtcdClient([etcd_server.url]) as etcd:
            first = await etcd.set("/d/b", "2")
            await etcd.set("/d/a", "1")
            await etcd.set("/d/sub/c", "3")
            assert (first.action, first.key, first.value) == ("set", "/d/b", "2")
            assert first.modified_index == first.created_index == first.etcd_index > 0
            assert first.raft_term >= 1 and first.ttl is None

            listing = await etcd.get("/d", recursive=True, sort=True, quorum=True)
            assert listing.dir and listing.value is None
            assert [c["key"] for c in listing.children] == ["/d/a", "/d/b", "/d/sub"]
            assert [(n["key"], n["value"]) for n in listing.leaves()] == [
                ("/d/a", "1"), ("/d/b", "2"), ("/d/sub/c", "3")]

            again = await etcd.set("/d/b", "two")
            assert again.prev_node is not None and again.prev_node["value"] == "2"
            assert (await etcd.get("d/b")).value == "two"
    run(scenario())


def test_keys_with_unit_names_and_spaces_round_trip(etcd_server: harness.Server) -> None:
    async def scenario() -> None:
        async with EtcdClient(etcd_server.url) as etcd:
            await etcd.set("/job/hello@1.service/object", 'a b&c=d+e%"')
            result = await etcd.get("/job/hello@1.service/object")
            assert (result.key, result.value) == ("/job/hello@1.service/object", 'a b&c=d+e%"')
    run(scenario())


def test_conditional_writes_and_their_errors(etcd_server: harness.Server) -> None:
    async def scenario() -> None:
        async with EtcdClient([etcd_server.url]) as etcd:
            created = await etcd.create("/c", "v1")
            assert created.action == "create"
            with pytest.raises(EtcdNodeExists) as exists:
                await etcd.create("/c", "other")
            assert (exists.value.code, exists.value.cause, exists.value.status) == (105, "/c", 412)

            with pytest.raises(EtcdKeyNotFound) as missing:
                await etcd.update("/absent", "x")
            assert (missing.value.code, missing.value.cause) == (100, "/absent")
            updated = await etcd.update("/c", "v2")
            assert updated.action == "update" and updated.created_index == created.created_index

            with pytest.raises(EtcdCompareFailed) as failed:
                await etcd.compare_and_swap("/c", "v3", prev_value="zzz")
            assert failed.value.code == 101 and failed.value.cause == "[zzz != v2]"
            with pytest.raises(EtcdCompareFailed):
                await etcd.compare_and_swap("/c", "v3", prev_index=updated.modified_index - 1)
            swapped = await etcd.compare_and_swap("/c", "v3", prev_value="v2",
                                                  prev_index=updated.modified_index)
            assert (swapped.action, swapped.value) == ("compareAndSwap", "v3")

            with pytest.raises(EtcdNotDir):
                await etcd.set("/c/below", "x")
            with pytest.raises(EtcdRootReadOnly):
                await etcd.set("/", "x")
            with pytest.raises(EtcdInvalidRequest) as invalid:
                await etcd.compare_and_swap("/c", "x", prev_value="")
            assert invalid.value.code == 201
            assert isinstance(invalid.value, EtcdError)
    run(scenario())


def test_deletes_directories_and_compare_and_delete(etcd_server: harness.Server) -> None:
    async def scenario() -> None:
        async with EtcdClient([etcd_server.url]) as etcd:
            await etcd.set("/dir/a", "1")
            await etcd.set("/empty", directory=True)
            with pytest.raises(EtcdNotFile):
                await etcd.delete("/dir")
            with pytest.raises(EtcdDirNotEmpty):
                await etcd.delete("/dir", directory=True)
            assert (await etcd.delete("/empty", directory=True)).action == "delete"
            with pytest.raises(EtcdCompareFailed):
                await etcd.compare_and_delete("/dir/a", prev_value="2")
            deleted = await etcd.compare_and_delete("/dir/a", prev_value="1")
            assert deleted.action == "compareAndDelete" and deleted.prev_node is not None
            await etcd.set("/dir/b", "1")
            assert (await etcd.delete("/dir", recursive=True)).dir
            with pytest.raises(EtcdKeyNotFound):
                await etcd.get("/dir/b")
            with pytest.raises(EtcdKeyNotFound):
                await etcd.delete("/dir")
    run(scenario())


def test_ttl_refresh_and_expiry(etcd_server: harness.Server) -> None:
    async def scenario() -> None:
        async with EtcdClient([etcd_server.url]) as etcd:
            short = await etcd.set("/short", "v", ttl=0.2)
            assert short.ttl == 1
            kept = await etcd.set("/kept", "v", ttl=1)
            refreshed = await etcd.refresh("/kept", 30)
            assert refreshed.value == "v" and refreshed.ttl is not None and refreshed.ttl > 20
            assert refreshed.created_index == kept.created_index
            assert (await etcd.set("/kept", "w")).ttl is None  # a set without TTL makes it permanent
            with pytest.raises(EtcdKeyNotFound):
                await etcd.refresh("/never", 5)

            async def gone() -> bool:
                try:
                    await etcd.get("/short")
                except EtcdKeyNotFound:
                    return True
                return False
            await until(gone)
            assert (await etcd.get("/kept")).value == "w"
    run(scenario())


def test_watch_returns_history_and_live_events(etcd_server: harness.Server) -> None:
    async def scenario() -> None:
        async with EtcdClient([etcd_server.url]) as etcd:
            first = await etcd.set("/w/a", "1")
            await etcd.set("/other", "x")
            await etcd.set("/w/b", "2")
            old = await etcd.watch("/w", recursive=True, wait_index=first.modified_index + 1)
            assert (old.action, old.key, old.value) == ("set", "/w/b", "2")
            exact = await etcd.watch("/w/a", wait_index=first.modified_index)
            assert exact.modified_index == first.modified_index

            waiting = asyncio.create_task(etcd.watch("/w", recursive=True))
            await asyncio.sleep(0.2)
            assert not waiting.done()
            await etcd.delete("/w/a")
            live = await asyncio.wait_for(waiting, 5)
            assert (live.action, live.key) == ("delete", "/w/a")
            with pytest.raises(TimeoutError):
                await etcd.watch("/quiet", timeout=0.3)
            assert (await etcd.get("/w/b")).value == "2"  # the client is still usable
    run(scenario())


def test_watch_forever_resumes_after_each_event(etcd_server: harness.Server) -> None:
    async def scenario() -> None:
        async with EtcdClient([etcd_server.url]) as etcd:
            start = await etcd.set("/f/x", "0")
            for value in "123":
                await etcd.set("/f/x", value)
            seen: list[EtcdResult] = []
            stream = etcd.watch_forever("/f", recursive=True, wait_index=start.etcd_index + 1)
            async for event in stream:
                seen.append(event)
                if len(seen) == 3:
                    await etcd.set("/f/y", "live")
                if len(seen) == 4:
                    break
            await stream.aclose()
            assert [e.value for e in seen] == ["1", "2", "3", "live"]
            indexes = [e.modified_index for e in seen]
            assert indexes == sorted(indexes)
    run(scenario())


def test_watch_forever_recovers_when_history_is_cleared(etcd_server: harness.Server) -> None:
    async def scenario() -> None:
        async with EtcdClient([etcd_server.url]) as etcd:
            watched = await etcd.set("/rare/key", "before")
            for batch in range(22):  # 1100 writes push the watched index out of the 1000-event window
                await asyncio.gather(*(etcd.set(f"/busy/{batch}-{i}", "x") for i in range(50)))
            with pytest.raises(EtcdEventIndexCleared) as cleared:
                await etcd.watch("/rare", recursive=True, wait_index=watched.modified_index)
            assert cleared.value.code == 401 and cleared.value.index > watched.modified_index + 1000

            stream = etcd.watch_forever("/rare", recursive=True, wait_index=watched.modified_index)
            resync = await anext(stream)
            assert resync.action == "get"
            assert [n["value"] for n in resync.leaves()] == ["before"]
            assert resync.etcd_index >= cleared.value.index
            await etcd.set("/rare/key", "after")
            event = await asyncio.wait_for(anext(stream), 5)
            assert (event.action, event.value) == ("set", "after")
            await stream.aclose()
    run(scenario())


async def _proxy(target_port: int, delay: float = 0.0) -> tuple[asyncio.Server, set[asyncio.StreamWriter]]:
    """A TCP relay to ``target_port`` that holds each chunk of an answer ``delay`` seconds before
    passing it on; closing it and its writers cuts every link through it."""
    writers: set[asyncio.StreamWriter] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hold: float = 0.0) -> None:
        try:
            while data := await reader.read(65536):
                await asyncio.sleep(hold)
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", target_port)
        writers.update((client_w, server_w))
        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w, delay))

    return await asyncio.start_server(relay, "127.0.0.1", 0), writers


def test_failover_to_the_next_endpoint(etcd_server: harness.Server) -> None:
    async def scenario() -> None:
        server, links = await _proxy(etcd_server.client_port)
        proxy_url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        dead_url = f"http://127.0.0.1:{harness.free_port()}"
        async with EtcdClient([dead_url, proxy_url, etcd_server.url]) as etcd:
            assert (await etcd.set("/fo", "1")).value == "1"
            assert etcd.current_endpoint == proxy_url  # the dead endpoint was skipped
            server.close()
            for writer in links:
                writer.close()  # the first live endpoint goes down, with pooled connections to it
            await server.wait_closed()
            assert (await etcd.get("/fo")).value == "1"
            assert etcd.current_endpoint == etcd_server.url
            assert (await etcd.set("/fo", "2")).value == "2"
    run(scenario())


def test_a_read_can_take_longer_than_the_request_timeout(etcd_server: harness.Server) -> None:
    async def scenario() -> None:
        relay, _ = await _proxy(etcd_server.client_port, delay=0.6)
        slow_url = f"http://127.0.0.1:{relay.sockets[0].getsockname()[1]}"
        async with EtcdClient(etcd_server.url) as direct:
            await direct.set("/slow", "x")
            await Registry(direct).create_unit(Unit("slow.service", UnitFile.from_text("[Service]\n")))
        async with EtcdClient(slow_url, request_timeout=0.2) as etcd:
            assert (await etcd.get("/slow", timeout=5.0)).value == "x"
            with pytest.raises(EtcdTimeout):
                await etcd.get("/slow")  # the client's 0.2 s again
            with pytest.raises(EtcdTimeout):
                await etcd.get("/slow", timeout=0.1)
            registry = Registry(etcd)  # its big reads wait at least BIG_READ_TIMEOUT
            assert registry.big_read_timeout == BIG_READ_TIMEOUT
            assert [job.name for job in (await registry.jobs())[0]] == ["slow.service"]
        relay.close()
    run(scenario())


def test_unavailable_timeout_and_protocol_errors() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        await asyncio.sleep(10)

    async def not_etcd(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b"404 page not found\n"
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()

    async def scenario() -> None:
        async with EtcdClient([f"http://127.0.0.1:{harness.free_port()}"]) as etcd:
            with pytest.raises(EtcdUnavailable):
                await etcd.get("/x")
        hang = await asyncio.start_server(silent, "127.0.0.1", 0)
        async with EtcdClient([f"http://127.0.0.1:{hang.sockets[0].getsockname()[1]}"],
                              request_timeout=0.3) as etcd:
            with pytest.raises(EtcdTimeout):
                await etcd.set("/x", "1")
        hang.close()
        other = await asyncio.start_server(not_etcd, "127.0.0.1", 0)
        async with EtcdClient([f"http://127.0.0.1:{other.sockets[0].getsockname()[1]}"]) as etcd:
            with pytest.raises(EtcdProtocolError):
                await etcd.get("/x")
        other.close()
    run(scenario())


def test_endpoint_lists_are_validated() -> None:
    client = EtcdClient("http://a:1, http://b:2")
    assert client.current_endpoint == "http://a:1"
    with pytest.raises(ValueError):
        EtcdClient([])
    with pytest.raises(ValueError):
        EtcdClient(["ftp://a:1"])

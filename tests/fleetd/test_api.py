"""fleet's API v1 served in process on a unix socket and TCP, over a real reference etcd registry."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import http.client
import json
import socket
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from fleetd.api.pagination import PageToken
from fleetd.api.server import start_api
from fleetd.config import FleetConfig, ListenAddress
from fleetd.etcd import EtcdClient, EtcdException
from fleetd.job import JobState, Unit, UnitState
from fleetd.machine import MachineState
from fleetd.registry.layout import Layout
from fleetd.registry.registry import Registry
from fleetd.runtime.base import UnitRuntimeState, UnitStatus
from fleetd.unit import UnitFile
from tests import harness

T = TypeVar("T")
M1 = MachineState("10000000000000000000000000000001", "127.0.0.1", {"region": "east", "disk": "ssd"})
M2 = MachineState("20000000000000000000000000000002", "127.0.0.2")
HELLO_TEXT = '[Service]\nExecStart=/bin/bash -c "while true; do echo Hello, World!; sleep 1; done"\n'
HELLO_OPTIONS = [
    {
        "section": "Service",
        "name": "ExecStart",
        "value": '/bin/bash -c "while true; do echo Hello, World!; sleep 1; done"',
    }
]
UNAVAILABLE = b'{"error":{"code":503,"message":"fleet server unable to communicate with etcd"}}'


class MemoryRuntime:
    """Just what the status/journal additions read of a runtime: one running unit with a journal."""

    async def status(self, name: str) -> UnitStatus | None:
        if name != "hello.service":
            return None
        return UnitStatus(name, UnitRuntimeState("loaded", "active", "running"), "Hello", 1.0e9, 42)

    async def journal(self, name: str, lines: int = 10, follow: bool = False) -> AsyncIterator[str]:
        for i in range(20)[-lines:]:
            yield f"line {i}"


class UnixConnection(http.client.HTTPConnection):
    """``http.client`` over a unix socket."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class Cluster:
    """A registry on the reference etcd and fleetd's API served from a background event loop."""

    def __init__(
        self, etcd_url: str, sock: Path, prefix: str, token_limit: int = 100, gate: bool = True
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.etcd = EtcdClient([etcd_url])
        self.registry = Registry(self.etcd, Layout(prefix))
        self.sock = str(sock)
        self.open = [not gate]
        config = FleetConfig(
            token_limit=token_limit,
            api_listen=(ListenAddress(path=self.sock), ListenAddress(host="127.0.0.1", port=0)),
        )
        self.servers = self.run(
            start_api(
                self.registry,
                config,
                M1,
                runtime=MemoryRuntime(),  # type: ignore
                available=(lambda: self.open[0]) if gate else None,
            )
        )
        self.port = self.servers[1].sockets[0].getsockname()[1]
        self.background: list[concurrent.futures.Future[Any]] = []
        #: Held by ``reset``: background work on the registry holds it too, so it never sees half a reset.
        self.quiet = asyncio.Lock()

    def keep_present(self, *machines: MachineState, ttl: float = 10.0) -> None:
        """Register ``machines`` and refresh their presence keys as their agents would, until ``close``
        (a module's tests may well outlast any fixed TTL)."""

        async def heartbeat() -> None:
            while True:
                await asyncio.sleep(ttl / 4)
                for machine in machines:
                    with contextlib.suppress(EtcdException):
                        await self.registry.beat_machine(machine, ttl)

        for machine in machines:
            self.run(self.registry.register_machine(machine, ttl))
        self.in_background(heartbeat())

    def in_background(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` on the cluster's loop until ``close``."""
        self.background.append(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        for task in self.background:
            task.cancel()
        self.run(self._close_servers())  # on the loop's thread: asyncio servers are not thread-safe
        self.run(self.etcd.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    async def _close_servers(self) -> None:
        for server in self.servers:
            if server.is_serving():  # closing twice fails on Python 3.11
                server.close()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        tcp: bool = False,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes, http.client.HTTPResponse]:
        conn: http.client.HTTPConnection = (
            http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            if tcp
            else UnixConnection(self.sock)
        )
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        all_headers = {"Content-Type": "application/json"} if data is not None else {}
        all_headers.update(headers or {})
        conn.request(method, path, data, all_headers)
        response = conn.getresponse()
        content = response.read()
        conn.close()
        return response.status, content, response

    def json(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        status, content, _ = self.request(method, path, body)
        return status, json.loads(content) if content else None

    def reset(self) -> None:
        """Remove every unit, unit state and unplaced reason (while holding ``quiet``)."""

        async def wipe() -> None:
            async with self.quiet:
                for unit in await self.registry.units():
                    await self.registry.destroy_unit(unit)
                for state in await self.registry.unit_states():
                    await self.registry.remove_unit_state(state.unit_name)
                for name in await self.registry.unplaced_reasons():
                    await self.registry.clear_unplaced_reason(name)

        self.run(wipe())


def error(code: int, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":")).encode()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.Server]:
    server = harness.reference_etcd(tmp_path_factory.mktemp("etcd")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(etcd: harness.Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(etcd.url, tmp_path_factory.mktemp("api") / "fleet.sock", "/api-test/", token_limit=2)
    cluster.open[0] = True
    cluster.keep_present(M1, M2)
    yield cluster
    cluster.close()


@pytest.fixture
def api(cluster: Cluster) -> Cluster:
    cluster.reset()
    return cluster


def put_unit(api: Cluster, name: str, options: list[dict[str, str]] | None = None, **extra: Any) -> int:
    body: dict[str, Any] = {"name": name, **extra}
    if options is not None:
        body["options"] = options
    return api.request("PUT", f"/fleet/v1/units/{name}", body)[0]


# ---------------------------------------------------------------------------------------------------


def test_every_request_is_refused_until_the_machine_is_registered(
    etcd: harness.Server, tmp_path: Path
) -> None:
    gated = Cluster(etcd.url, tmp_path / "gated.sock", "/gated/", gate=False)
    try:
        for tcp in (False, True):
            for path in ("/fleet/v1/units", "/fleet/v1/machines", "/fleet/v1/discovery", "/"):
                status, body, response = gated.request("GET", path, tcp=tcp)
                assert (status, body) == (503, UNAVAILABLE)
                assert response.getheader("Content-Type") == "application/json"
                assert response.getheader("Server") == "fleetd/v1.0.0"
        gated.run(gated.registry.register_machine(M1, 30))
        status, body, _ = gated.request("GET", "/fleet/v1/machines", tcp=True)
        assert status == 200
        assert body == (
            b'{"machines":[{"id":"10000000000000000000000000000001",'
            b'"metadata":{"disk":"ssd","region":"east"},"primaryIP":"127.0.0.1"}]}'
        )
        urls = gated.run(gated.registry.api_address(M1.id))
        assert urls == [f"unix://{gated.sock}", f"http://127.0.0.1:{gated.port}"]
    finally:
        gated.close()


def test_machines_are_listed_with_fleets_json(api: Cluster) -> None:
    status, body, response = api.request("GET", "/fleet/v1/machines?alt=json", tcp=True)
    assert status == 200
    assert response.getheader("Server") == "fleetd/v1.0.0"
    assert body == (
        b'{"machines":[{"id":"10000000000000000000000000000001","metadata":{"disk":"ssd",'
        b'"region":"east"},"primaryIP":"127.0.0.1"},{"id":"20000000000000000000000000000002",'
        b'"primaryIP":"127.0.0.2"}]}'
    )
    assert api.request("POST", "/fleet/v1/machines")[:2] == (
        405,
        error(405, "only GET and PATCH supported against this resource"),
    )
    assert api.request("GET", f"/fleet/v1/machines/{M1.id}")[0] == 404


def test_units_are_created_read_updated_and_deleted(api: Cluster) -> None:
    assert api.request("GET", "/fleet/v1/units")[:2] == (200, b"{}")
    assert put_unit(api, "hello.service", HELLO_OPTIONS) == 201
    status, body, _ = api.request("GET", "/fleet/v1/units/hello.service")
    assert status == 200
    assert body == (
        b'{"currentState":"inactive","desiredState":"inactive","name":"hello.service","options":'
        b'[{"name":"ExecStart","section":"Service","value":"/bin/bash -c \\"while true; do echo '
        b'Hello, World!; sleep 1; done\\""}]}'
    )
    assert api.run(api.registry.get_unit("hello.service")).unit_file.text == HELLO_TEXT  # type: ignore
    assert api.request("PUT", "/fleet/v1/units/hello.service", {"desiredState": "launched"})[0] == 204
    assert api.json("GET", "/fleet/v1/units/hello.service")[1]["desiredState"] == "launched"
    # same options: an update; new options: a replacement resetting the desired state
    assert put_unit(api, "hello.service", HELLO_OPTIONS, desiredState="loaded") == 204
    changed = [{"section": "Service", "name": "ExecStart", "value": "/bin/true"}]
    assert put_unit(api, "hello.service", changed) == 201
    assert api.json("GET", "/fleet/v1/units/hello.service")[1]["desiredState"] == "inactive"
    assert api.request("DELETE", "/fleet/v1/units/hello.service")[0] == 204
    assert api.request("DELETE", "/fleet/v1/units/hello.service")[:2] == (
        404,
        error(404, "unit does not exist"),
    )
    assert api.request("GET", "/fleet/v1/units/hello.service")[:2] == (
        404,
        error(404, "unit does not exist"),
    )


@pytest.mark.parametrize(
    ("name", "body", "headers", "expected"),
    [
        (
            "a.service",
            {"options": HELLO_OPTIONS},
            {"Content-Type": "text/plain"},
            (415, "only acceptable Content-Type is application/json"),
        ),
        (
            "a.service",
            b"{nope",
            {},
            (400, "unable to decode body: invalid character 'n' looking for beginning of value"),
        ),
        (
            "a.service",
            {"name": "b.service", "options": HELLO_OPTIONS},
            {},
            (400, 'name in URL "a.service" differs from unit name in request body "b.service"'),
        ),
        ("bad.foo", {"options": HELLO_OPTIONS}, {}, (400, 'invalid unit type: "foo"')),
        ("nodot", {"options": HELLO_OPTIONS}, {}, (400, 'unit name must contain "."')),
        ("a.service", {"desiredState": "loaded"}, {}, (409, "unit does not exist and options field empty")),
        (
            "a.service",
            {
                "options": [
                    *HELLO_OPTIONS,
                    {"section": "X-Fleet", "name": "MachineID", "value": "x"},
                    {"section": "X-Fleet", "name": "Global", "value": "true"},
                ]
            },
            {},
            (400, "MachineID cannot be used with Global"),
        ),
        (
            "a.service",
            {"options": HELLO_OPTIONS, "desiredState": "running"},
            {},
            (400, 'invalid value "running" for JobState'),
        ),
        (
            "a@.service",
            {"options": HELLO_OPTIONS, "desiredState": "launched"},
            {},
            (400, 'cannot activate template "a@.service"'),
        ),
    ],
)
def test_bad_unit_writes_get_fleets_errors(
    api: Cluster, name: str, body: Any, headers: dict[str, str], expected: tuple[int, str]
) -> None:
    status, content, _ = api.request("PUT", f"/fleet/v1/units/{name}", body, headers=headers)
    assert (status, content) == (expected[0], error(*expected))
    assert api.request("GET", f"/fleet/v1/units/{name}")[0] == 404


def test_updates_of_existing_units_are_checked(api: Cluster) -> None:
    assert put_unit(api, "web@.service", HELLO_OPTIONS) == 201
    assert api.request("PUT", "/fleet/v1/units/web@.service", {})[:2] == (
        409,
        error(409, "must provide DesiredState to update existing unit"),
    )
    assert api.request("PUT", "/fleet/v1/units/web%40.service", {"desiredState": "launched"})[:2] == (
        400,
        error(400, 'cannot activate template "web@.service"'),
    )
    assert api.request("PUT", "/fleet/v1/units/web@.service", {"desiredState": "bogus"})[:2] == (
        400,
        error(400, 'invalid value "bogus" for JobState'),
    )
    assert api.request("POST", "/fleet/v1/units/web@.service")[:2] == (
        405,
        error(405, "only GET, PUT and DELETE supported against this resource"),
    )
    assert api.request("POST", "/fleet/v1/units")[:2] == (
        405,
        error(405, "only GET supported against this resource"),
    )
    assert api.request("GET", "/fleet/v1/units/a/b")[:2] == (404, error(404, ""))
    assert api.request("GET", "/")[:2] == (405, error(405, ""))
    assert api.request("GET", "/nothing")[:2] == (404, error(404, ""))


def test_unit_current_state_follows_schedule_states_and_heartbeat(api: Cluster) -> None:
    api.run(
        api.registry.create_unit(Unit("hello.service", UnitFile.from_text(HELLO_TEXT), JobState.LAUNCHED))
    )
    api.run(
        api.registry.create_unit(
            Unit(
                "mon.service",
                UnitFile.from_text(HELLO_TEXT + "[X-Fleet]\nGlobal=true\n"),
                JobState.LAUNCHED,
            )
        )
    )
    api.run(api.registry.schedule_unit("hello.service", M1.id))
    assert api.json("GET", "/fleet/v1/units/hello.service")[1]["currentState"] == "inactive"
    state = UnitState(
        "hello.service", M1.id, UnitFile.from_text(HELLO_TEXT).hash.hex, "loaded", "active", "running"
    )
    api.run(api.registry.save_unit_state(state, 30))
    unit = api.json("GET", "/fleet/v1/units/hello.service")[1]
    assert (unit["currentState"], unit["machineID"]) == ("loaded", M1.id)
    api.run(api.registry.job_heartbeat("hello.service", M1.id, 30))
    assert api.json("GET", "/fleet/v1/units/hello.service")[1]["currentState"] == "launched"
    assert "currentState" not in api.json("GET", "/fleet/v1/units/mon.service")[1]
    listed = {u["name"]: u for u in api.json("GET", "/v1-alpha/units")[1]["units"]}
    assert listed["mon.service"]["currentState"] == "inactive"
    status, body, _ = api.request("GET", "/fleet/v1/state/hello.service")
    assert status == 200
    assert body == (
        b'{"hash":"' + state.unit_hash.encode() + b'","machineID":"10000000000000000000000000000001",'
        b'"name":"hello.service","systemdActiveState":"active","systemdLoadState":"loaded",'
        b'"systemdSubState":"running"}'
    )
    assert api.request("GET", "/fleet/v1/state/mon.service")[:2] == (
        404,
        error(404, "unit state does not exist"),
    )
    api.run(
        api.registry.save_unit_state(UnitState("mon.service", M2.id, "", "loaded", "active", "running"), 30)
    )
    assert [s["name"] for s in api.json("GET", "/fleet/v1/state")[1]["states"]] == [
        "hello.service",
        "mon.service",
    ]
    assert api.json("GET", f"/fleet/v1/state?machineID={M2.id}")[1]["states"][0]["name"] == "mon.service"
    assert api.json("GET", "/fleet/v1/state?unitName=hello.service")[1]["states"][0]["machineID"] == M1.id
    assert api.json("GET", "/fleet/v1/state?unitName=none.service")[1] == {}
    with_container = dataclasses.replace(state, containers=("3f2a1c0d9e8b running",))
    api.run(api.registry.save_unit_state(with_container, 30))
    assert api.json("GET", "/fleet/v1/state/hello.service")[1] == {
        **json.loads(body), "containers": ["3f2a1c0d9e8b running"]}


def test_collections_are_paged_with_fleets_tokens(api: Cluster) -> None:
    assert PageToken(100, 2).encode() == "ZAACAA=="
    for i in range(5):
        assert put_unit(api, f"u{i}.service", HELLO_OPTIONS) == 201
    names, token, pages = [], "", 0
    while True:
        page = api.json("GET", "/fleet/v1/units" + (f"?nextPageToken={token}" if token else ""))[1]
        names += [u["name"] for u in page["units"]]
        pages += 1
        token = page.get("nextPageToken", "")
        if not token:
            break
    assert names == [f"u{i}.service" for i in range(5)] and pages == 3
    assert api.json("GET", "/fleet/v1/units")[1]["nextPageToken"] == "AgACAA=="
    for token, message in (
        ("EwBMLg==", "token limit must be 2"),
        ("AgAAAA==", "token page must be greater than zero"),
        ("AgACAAAA", "too many values for page token"),
        ("@@@@", "illegal base64 data at input byte 0"),
    ):
        assert api.request("GET", f"/fleet/v1/machines?nextPageToken={token}")[:2] == (
            400,
            error(400, message),
        )


def test_machine_metadata_is_patched(api: Cluster) -> None:
    ops = [
        {"op": "add", "path": f"/{M2.id}/metadata/role", "value": {"value": "web"}},
        {"op": "replace", "path": f"/{M1.id}/metadata/disk", "value": {"value": "hdd"}},
        {"op": "remove", "path": f"/{M1.id}/metadata/region"},
    ]
    assert api.request("PATCH", "/fleet/v1/machines", ops)[:2] == (204, b"")
    machines = api.json("GET", "/fleet/v1/machines")[1]["machines"]
    assert [m.get("metadata") for m in machines] == [{"disk": "hdd"}, {"role": "web"}]
    bad = [
        (
            [{"op": "add", "path": f"/{M1.id}/metadata/k", "value": "ssd"}],
            "json: cannot unmarshal string into Go struct field machineMetadataOp.Value of type "
            "struct { Value string }",
        ),
        (
            [{"op": "move", "path": f"/{M1.id}/metadata/k", "value": {"value": "v"}}],
            "invalid op: expect add, remove, or replace",
        ),
        (
            [{"op": "add", "path": f"/{M1.id}/meta/k", "value": {"value": "v"}}],
            "machine metadata path invalid",
        ),
        (
            [{"op": "add", "path": f"/{M1.id}/metadata/k", "value": {"value": ""}}],
            "invalid value: add and replace require a value",
        ),
    ]
    for body, message in bad:
        assert api.request("PATCH", "/fleet/v1/machines", body)[:2] == (400, error(400, message))
    api.request(
        "PATCH",
        "/fleet/v1/machines",
        [
            {"op": "add", "path": f"/{M1.id}/metadata/region", "value": {"value": "east"}},
            {"op": "add", "path": f"/{M1.id}/metadata/disk", "value": {"value": "ssd"}},
            {"op": "remove", "path": f"/{M2.id}/metadata/role"},
        ],
    )


def test_discovery_document(api: Cluster) -> None:
    status, doc = api.json("GET", "/fleet/v1/discovery")
    assert status == 200 and doc["rootUrl"] == "$ENDPOINT/" and doc["servicePath"] == "fleet/v1/"
    assert sorted(doc["resources"]["Units"]["methods"]) == ["Delete", "Get", "List", "Set"]
    assert api.request("POST", "/fleet/v1/discovery")[:2] == (
        400,
        error(400, "only HTTP GET supported against this resource"),
    )


def test_additions_serve_placement_reasons_status_and_journal(api: Cluster) -> None:
    assert api.request("GET", "/fleet/v1/ext/units/hello.service/placement")[0] == 404
    api.run(api.registry.set_unplaced_reason("hello.service", "no machine has metadata role=db"))
    assert api.json("GET", "/fleet/v1/ext/units/hello.service/placement") == (
        200,
        {"name": "hello.service", "reason": "no machine has metadata role=db"},
    )
    status, detail = api.json("GET", "/fleet/v1/ext/units/hello.service/status")
    assert status == 200
    assert (detail["activeState"], detail["mainPID"], detail["machineID"]) == ("active", 42, M1.id)
    assert api.request("GET", "/fleet/v1/ext/units/other.service/status")[0] == 404
    status, body, response = api.request(
        "GET", "/fleet/v1/ext/units/hello.service/journal?lines=3", tcp=True
    )
    assert (status, body) == (200, b"line 17\nline 18\nline 19\n")
    assert response.getheader("Transfer-Encoding") == "chunked"
    urls = api.json("GET", f"/fleet/v1/ext/machines/{M1.id}/api")[1]["urls"]
    assert f"http://127.0.0.1:{api.port}" in urls


def test_keep_alive_connection_answers_requests_in_order(api: Cluster) -> None:
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as conn:
        conn.sendall(
            b"GET /fleet/v1/units HTTP/1.1\r\nHost: x\r\n\r\nGET /nothing HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        data = b""
        while data.count(b"HTTP/1.1 ") < 2 or not data.endswith(error(404, "")):
            data += conn.recv(65536)
    assert data.index(b"200 OK") < data.index(b"404 Not Found")


"""The API's resources: routing, validation and fleet's answers, independent of the HTTP transport.

``FleetApi.handle`` maps an ``ApiRequest`` to an ``ApiResponse`` (status, JSON body, headers added by
the transport). Every route is served under ``/fleet/v1`` and the legacy ``/v1-alpha`` (spec 4).

Until ``available()`` is true (the machine is registered) every request gets
``503 fleet server unable to communicate with etcd``; so does a request during which etcd cannot
be reached (fleet answered 500 with an empty message).

Additions to fleet, under ``<prefix>/ext/`` (documented in docs/fleet-differences.md):

* ``GET ext/machines/<id>/api``: ``{"machineID","urls"}``, where that machine's API answers;
* ``GET ext/units/<name>/placement``: ``{"name","reason"}``, why the engine leaves the unit unscheduled
  (``engine/unplaced/<name>``, ``Registry.unplaced_reason``);
* ``GET ext/units/<name>/status``: the unit as this machine's runtime sees it (``fleetctl status``);
* ``GET ext/units/<name>/journal?lines=N&follow=true``: its journal as ``text/plain`` lines, streamed.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from fleetd.api.discovery import discovery_document
from fleetd.api.pagination import PageToken, PageTokenError, decode_page_token, paginate
from fleetd.etcd import EtcdException
from fleetd.job import JobState, JobStateError, ScheduledUnit, Unit, parse_job_state, unit_to_api
from fleetd.registry.layout import RegistrySnapshot, go_json
from fleetd.registry.registry import Registry
from fleetd.runtime.base import UnitRuntime, UnitStatus
from fleetd.unit import (
    UnitFile,
    UnitNameError,
    UnitNameInfo,
    UnitOptionsError,
    go_quote,
    validate_name,
    validate_options,
)

PREFIXES = ("/fleet/v1", "/v1-alpha")
UNAVAILABLE = "fleet server unable to communicate with etcd"
JSON = "application/json"
_METADATA_PATH = re.compile(r"^/([^/]+)/metadata/([A-Za-z0-9_.-]+)$")
_METADATA_OPS = ("add", "remove", "replace")
_DEFAULT_JOURNAL_LINES = 10


@dataclass(frozen=True)
class ApiRequest:
    """One request: method, decoded path, raw query string, headers (lower-case names) and body."""

    method: str
    path: str
    query: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def param(self, name: str) -> str:
        """The first value of query parameter ``name`` (``""`` if absent), as Go's ``Query().Get``."""
        values = parse_qs(self.query, keep_blank_values=True).get(name)
        return values[0] if values else ""

    def header_values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


@dataclass
class ApiResponse:
    """An answer: status, body and its media type; ``stream`` (if set) is sent chunked after the body."""

    status: int
    body: bytes = b""
    content_type: str = JSON
    stream: AsyncIterator[bytes] | None = field(default=None, repr=False)


class ApiError(Exception):
    """Answer with fleet's error body ``{"error":{"code","message"}}``."""

    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _sorted(value: Any) -> Any:
    """Sort every object's keys (fleet's structs have alphabetical JSON keys)."""
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def json_response(status: int, obj: Any) -> ApiResponse:
    """A JSON answer encoded as Go's ``json.Marshal`` would, keys sorted."""
    return ApiResponse(status, go_json(_sorted(obj)).encode())


def error_response(status: int, message: str = "") -> ApiResponse:
    """fleet's error body."""
    return json_response(status, {"error": {"code": status, "message": message}})


def go_json_error(text: bytes, err: ValueError) -> str:
    """Approximately the message Go's JSON decoder gives for a body it cannot parse."""
    if not text.strip():
        return "EOF"
    if isinstance(err, json.JSONDecodeError):
        if err.pos >= len(err.doc.rstrip()):
            return "unexpected EOF"
        char = err.doc[err.pos]
        return f"invalid character {json.dumps(char)[1:-1]!r} looking for beginning of value"
    return str(err)


def _decode_json(body: bytes, prefix: str = "") -> Any:
    try:
        return json.loads(body)
    except ValueError as err:
        raise ApiError(400, prefix + go_json_error(body, err)) from None


def _field(obj: Mapping[str, Any], name: str) -> Any:
    """A JSON field matched case-insensitively, as Go's decoder does (exact match first)."""
    if name in obj:
        return obj[name]
    return next((v for k, v in obj.items() if k.lower() == name.lower()), None)


class FleetApi:
    """Answers API requests from the registry (and the local runtime for the ``ext`` unit endpoints).

    ``available`` says whether the machine is registered; ``token_limit`` is the page size.
    """

    def __init__(self, registry: Registry, machine_id: str, available: Callable[[], Awaitable[bool]],
                 token_limit: int = 100, runtime: UnitRuntime | None = None) -> None:
        self.registry = registry
        self.machine_id = machine_id
        self.available = available
        self.token_limit = token_limit
        self.runtime = runtime
        self.requests: dict[tuple[str, int], int] = {}

    async def handle(self, request: ApiRequest) -> ApiResponse:
        """Answer one request; never raises."""
        try:
            response = await self._route(request)
        except ApiError as err:
            response = error_response(err.status, err.message)
        except EtcdException:
            response = error_response(503, UNAVAILABLE)
        key = (request.method, response.status)
        self.requests[key] = self.requests.get(key, 0) + 1
        return response

    async def _route(self, request: ApiRequest) -> ApiResponse:
        if request.path == "/metrics":
            return self._metrics()
        if not await self._is_available():
            raise ApiError(503, UNAVAILABLE)
        if request.path == "/":
            raise ApiError(405)
        for prefix in PREFIXES:
            if request.path == prefix or request.path.startswith(prefix + "/"):
                return await self._resource(request, request.path[len(prefix):])
        raise ApiError(404)

    async def _is_available(self) -> bool:
        try:
            return await self.available()
        except EtcdException:
            return False

    async def _resource(self, request: ApiRequest, rest: str) -> ApiResponse:
        parts = rest.strip("/").split("/") if rest.strip("/") else []
        if parts == ["discovery"]:
            return self._discovery(request)
        if parts[:1] == ["machines"]:
            if len(parts) > 1:
                raise ApiError(404)
            return await self._machines(request)
        if parts == ["units"]:
            return await self._units(request)
        if parts[:1] == ["units"] and len(parts) == 2:
            return await self._unit(request, parts[1])
        if parts[:1] == ["state"] and len(parts) <= 2:
            return await self._states(request, parts[1] if len(parts) == 2 else "")
        if parts[:1] == ["ext"]:
            return await self._extension(request, parts[1:])
        raise ApiError(404)

    # -- discovery and metrics ----------------------------------------------------------------------------

    @staticmethod
    def _discovery(request: ApiRequest) -> ApiResponse:
        if request.method != "GET":
            raise ApiError(400, "only HTTP GET supported against this resource")
        return ApiResponse(200, json.dumps(discovery_document(), indent=2).encode())

    def _metrics(self) -> ApiResponse:
        lines = ["# HELP fleet_api_requests_total API requests answered, by method and status code.",
                 "# TYPE fleet_api_requests_total counter"]
        lines += [f'fleet_api_requests_total{{code="{code}",method="{method}"}} {count}'
                  for (method, code), count in sorted(self.requests.items())]
        return ApiResponse(200, ("\n".join(lines) + "\n").encode(), "text/plain; version=0.0.4")

    # -- pagination ---------------------------------------------------------------------------------------

    def _page(self, request: ApiRequest, key: str, items: list[Any]) -> ApiResponse:
        text = request.param("nextPageToken")
        try:
            token = decode_page_token(text, self.token_limit) if text else PageToken(self.token_limit)
        except PageTokenError as err:
            raise ApiError(400, str(err)) from None
        page, following = paginate(items, token)
        body: dict[str, Any] = {}
        if page:
            body[key] = list(page)
        if following is not None:
            body["nextPageToken"] = following.encode()
        return json_response(200, body)

    async def _snapshot(self) -> RegistrySnapshot:
        return (await self.registry.read()).snapshot

    # -- machines -----------------------------------------------------------------------------------------

    async def _machines(self, request: ApiRequest) -> ApiResponse:
        if request.method == "GET":
            machines = sorted((await self._snapshot()).machines, key=lambda m: m.id)
            return self._page(request, "machines", [m.to_api() for m in machines])
        if request.method == "PATCH":
            return await self._patch_machines(request)
        raise ApiError(405, "only GET and PATCH supported against this resource")

    async def _patch_machines(self, request: ApiRequest) -> ApiResponse:
        ops = _decode_json(request.body)
        if not isinstance(ops, list):
            raise ApiError(400, f"json: cannot unmarshal {_json_kind(ops)} into Go value of type "
                                "[]api.machineMetadataOp")
        writes = [self._metadata_write(op) for op in ops]
        for machine_id, key, value in writes:
            await self.registry.set_machine_metadata(machine_id, key, value)
        return ApiResponse(204)

    @staticmethod
    def _metadata_write(op: Any) -> tuple[str, str, str]:
        """Validate one PATCH operation; return (machine ID, key, value to store)."""
        if not isinstance(op, dict):
            raise ApiError(400, f"json: cannot unmarshal {_json_kind(op)} into Go value of type "
                                "api.machineMetadataOp")
        wrapper = _field(op, "value")
        if wrapper is not None and not isinstance(wrapper, dict):
            raise ApiError(400, f"json: cannot unmarshal {_json_kind(wrapper)} into Go struct field "
                                "machineMetadataOp.Value of type struct { Value string }")
        value = _field(wrapper or {}, "value") or ""
        kind, path = _field(op, "op") or "", _field(op, "path") or ""
        if not all(isinstance(v, str) for v in (value, kind, path)):
            raise ApiError(400, "json: cannot unmarshal non-string into Go value of type string")
        if kind not in _METADATA_OPS:
            raise ApiError(400, "invalid op: expect add, remove, or replace")
        match = _METADATA_PATH.match(path)
        if match is None:
            raise ApiError(400, "machine metadata path invalid")
        if kind != "remove" and not value:
            raise ApiError(400, "invalid value: add and replace require a value")
        return match.group(1), match.group(2), "" if kind == "remove" else value

    # -- units --------------------------------------------------------------------------------------------

    async def _units(self, request: ApiRequest) -> ApiResponse:
        if request.method != "GET":
            raise ApiError(405, "only GET supported against this resource")
        snapshot = await self._snapshot()
        units = [unit_to_api(unit, _scheduled(snapshot, name), listing=True)
                 for name, unit in sorted(snapshot.units.items())]
        return self._page(request, "units", units)

    async def _unit(self, request: ApiRequest, name: str) -> ApiResponse:
        if request.method == "GET":
            snapshot = await self._snapshot()
            unit = snapshot.units.get(name)
            if unit is None:
                raise ApiError(404, "unit does not exist")
            return json_response(200, unit_to_api(unit, _scheduled(snapshot, name)))
        if request.method == "DELETE":
            if not await self.registry.destroy_unit(name):
                raise ApiError(404, "unit does not exist")
            return ApiResponse(204)
        if request.method == "PUT":
            return await self._put_unit(request, name)
        raise ApiError(405, "only GET, PUT and DELETE supported against this resource")

    async def _put_unit(self, request: ApiRequest, url_name: str) -> ApiResponse:
        """fleet's create/replace/update algorithm (spec 4), in its order."""
        content_types = request.header_values("content-type")
        if len(content_types) != 1 or content_types[0].split(";")[0].strip().lower() != JSON:
            raise ApiError(415, "only acceptable Content-Type is application/json")
        name, unit_file, desired = _decode_unit(request.body)
        if not name:
            name = url_name
        elif name != url_name:
            raise ApiError(400, f"name in URL {go_quote(url_name)} differs from unit name in request body "
                                f"{go_quote(name)}")
        try:
            validate_name(name)
        except UnitNameError as err:
            raise ApiError(400, str(err)) from None
        existing = (await self._snapshot()).units.get(name)
        if unit_file is not None and (existing is None or existing.hash != unit_file.hash.hex):
            return await self._create(name, unit_file, desired)
        if existing is None:
            raise ApiError(409, "unit does not exist and options field empty")
        if not desired:
            raise ApiError(409, "must provide DesiredState to update existing unit")
        state = _job_state(desired)
        _refuse_template(name, state)
        await self.registry.set_target_state(name, state)
        return ApiResponse(204)

    async def _create(self, name: str, unit_file: UnitFile, desired: str) -> ApiResponse:
        try:
            validate_options(unit_file)
        except UnitOptionsError as err:
            raise ApiError(400, str(err)) from None
        state = _job_state(desired) if desired else JobState.INACTIVE
        _refuse_template(name, state)
        await self.registry.create_unit(Unit(name, unit_file, state))
        return ApiResponse(201)

    # -- unit states --------------------------------------------------------------------------------------

    async def _states(self, request: ApiRequest, name: str) -> ApiResponse:
        if request.method != "GET":
            raise ApiError(405, "only GET supported against this resource")
        states = sorted((await self._snapshot()).unit_states, key=lambda s: (s.unit_name, s.machine_id))
        if name:
            found = next((s for s in states if s.unit_name == name), None)
            if found is None:
                raise ApiError(404, "unit state does not exist")
            return json_response(200, found.to_api())
        machine_id, unit_name = request.param("machineID"), request.param("unitName")
        chosen = [s.to_api() for s in states if (not machine_id or s.machine_id == machine_id)
                  and (not unit_name or s.unit_name == unit_name)]
        return self._page(request, "states", chosen)

    # -- additions ----------------------------------------------------------------------------------------

    async def _extension(self, request: ApiRequest, parts: list[str]) -> ApiResponse:
        if request.method != "GET":
            raise ApiError(405, "only GET supported against this resource")
        if len(parts) == 3 and parts[0] == "machines" and parts[2] == "api":
            urls = await self.registry.api_address(parts[1])
            if not urls:
                raise ApiError(404, "machine API address unknown")
            return json_response(200, {"machineID": parts[1], "urls": urls})
        if len(parts) == 3 and parts[0] == "units":
            name, what = parts[1], parts[2]
            if what == "placement":
                reason = await self.registry.unplaced_reason(name)
                if reason is None:
                    raise ApiError(404, "no placement reason published")
                return json_response(200, {"name": name, "reason": reason})
            if what == "status":
                return json_response(200, self._status_json(await self._runtime().status(name), name))
            if what == "journal":
                return self._journal(request, name)
        raise ApiError(404)

    def _runtime(self) -> UnitRuntime:
        if self.runtime is None:
            raise ApiError(501, "this fleetd serves no unit runtime")
        return self.runtime

    def _status_json(self, status: UnitStatus | None, name: str) -> dict[str, Any]:
        if status is None:
            raise ApiError(404, f"unit {name} is not loaded on machine {self.machine_id}")
        return {"activeState": status.state.active_state, "description": status.description,
                "exit": status.exit, "loadError": status.load_error, "loadState": status.state.load_state,
                "machineID": self.machine_id, "mainPID": status.main_pid or 0, "name": status.name,
                "result": status.result, "since": status.since, "statusText": status.status_text,
                "subState": status.state.sub_state, "containers": list(status.containers)}

    def _journal(self, request: ApiRequest, name: str) -> ApiResponse:
        runtime = self._runtime()
        text = request.param("lines") or str(_DEFAULT_JOURNAL_LINES)
        if not text.isdigit():
            raise ApiError(400, "lines must be a non-negative integer")
        follow = request.param("follow").lower() in ("1", "true", "yes")

        async def lines() -> AsyncIterator[bytes]:
            async for line in runtime.journal(name, int(text), follow):
                yield (line.rstrip("\n") + "\n").encode()

        return ApiResponse(200, b"", "text/plain; charset=utf-8", lines())


def _json_kind(value: Any) -> str:
    kinds = {dict: "object", list: "array", str: "string", bool: "bool", type(None): "null"}
    return kinds.get(type(value), "number")


def _scheduled(snapshot: RegistrySnapshot, name: str) -> ScheduledUnit:
    return ScheduledUnit(name, snapshot.schedule.get(name, ""), snapshot.current_states.get(name))


def _job_state(text: str) -> JobState:
    try:
        return parse_job_state(text)
    except JobStateError as err:
        raise ApiError(400, str(err)) from None


def _refuse_template(name: str, state: JobState) -> None:
    info = UnitNameInfo.parse(name)
    if info is not None and info.is_template and state is not JobState.INACTIVE:
        raise ApiError(400, f"cannot activate template {go_quote(name)}")


def _decode_unit(body: bytes) -> tuple[str, UnitFile | None, str]:
    """(name, unit file or None when no options were given, desired state text) of a PUT body."""
    obj = _decode_json(body, "unable to decode body: ")
    if not isinstance(obj, dict):
        raise ApiError(400, f"unable to decode body: json: cannot unmarshal {_json_kind(obj)} into Go value "
                            "of type schema.Unit")
    name, desired = _field(obj, "name") or "", _field(obj, "desiredState") or ""
    options = _field(obj, "options")
    for key, value in (("name", name), ("desiredState", desired)):
        if not isinstance(value, str):
            raise ApiError(400, f"unable to decode body: json: cannot unmarshal {_json_kind(value)} into Go "
                                f"struct field Unit.{key} of type string")
    if options is not None and not (isinstance(options, list) and all(isinstance(o, dict) for o in options)):
        raise ApiError(400, "unable to decode body: json: cannot unmarshal into Go struct field Unit.options "
                            "of type []*schema.UnitOption")
    return name, UnitFile.from_api(options) if options else None, desired

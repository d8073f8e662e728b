"""The Google API discovery document of fleet's API v1 (``GET /fleet/v1/discovery``).

Built from a compact description of the schemas and methods; ``rootUrl`` is left as ``$ENDPOINT/``
for clients to substitute, as fleet does.
"""

from __future__ import annotations

from functools import cache
from typing import Any

_STATES = {"type": "string", "enum": ["inactive", "loaded", "launched"]}
_STRING = {"type": "string"}


def _page(name: str, key: str, item: str) -> dict[str, Any]:
    return {"id": name, "type": "object", "properties": {
        key: {"type": "array", "items": {"$ref": item}}, "nextPageToken": _STRING}}


def _object(name: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {"id": name, "type": "object", "properties": properties}


def _method(ident: str, description: str, http_method: str, path: str, *, query: tuple[str, ...] = (),
            path_param: str = "", request: str = "", response: str = "") -> dict[str, Any]:
    parameters: dict[str, Any] = {q: {"type": "string", "location": "query"} for q in query}
    method: dict[str, Any] = {"id": ident, "description": description, "httpMethod": http_method,
                              "path": path}
    if path_param:
        parameters[path_param] = {"type": "string", "location": "path", "required": True}
        method["parameterOrder"] = [path_param]
    method["parameters"] = parameters
    if request:
        method["request"] = {"$ref": request}
    if response:
        method["response"] = {"$ref": response}
    return method


@cache
def discovery_document() -> dict[str, Any]:
    """The discovery document as a JSON object."""
    schemas = {
        "Machine": _object("Machine", {"id": _STRING, "primaryIP": _STRING, "metadata": {
            "type": "object", "properties": {}, "additionalProperties": _STRING}}),
        "MachinePage": _page("MachinePage", "machines", "Machine"),
        "UnitOption": _object("UnitOption", {"section": _STRING, "name": _STRING, "value": _STRING}),
        "Unit": _object("Unit", {"name": _STRING,
                                 "options": {"type": "array", "items": {"$ref": "UnitOption"}},
                                 "desiredState": _STATES, "currentState": _STATES,
                                 "machineID": {"type": "string", "required": True}}),
        "UnitPage": _page("UnitPage", "units", "Unit"),
        "UnitState": _object("UnitState", {k: _STRING for k in (
            "name", "hash", "machineID", "systemdLoadState", "systemdActiveState", "systemdSubState")}),
        "UnitStatePage": _page("UnitStatePage", "states", "UnitState"),
    }
    unit = "units/{unitName}"
    resources = {
        "Machines": {"methods": {
            "List": _method("fleet.Machine.List", "Retrieve a page of Machine objects.", "GET", "machines",
                            query=("nextPageToken",), response="MachinePage")}},
        "Units": {"methods": {
            "List": _method("fleet.Unit.List", "Retrieve a page of Unit objects.", "GET", "units",
                            query=("nextPageToken",), response="UnitPage"),
            "Get": _method("fleet.Unit.Get", "Retrieve a single Unit object.", "GET", unit,
                           path_param="unitName", response="Unit"),
            "Delete": _method("fleet.Unit.Delete", "Delete the referenced Unit object.", "DELETE", unit,
                              path_param="unitName"),
            "Set": _method("fleet.Unit.Set", "Create or update a Unit.", "PUT", unit,
                           path_param="unitName", request="Unit")}},
        "UnitState": {"methods": {
            "List": _method("fleet.UnitState.List", "Retrieve a page of UnitState objects.", "GET", "state",
                            query=("nextPageToken", "unitName", "machineID"), response="UnitStatePage")}},
    }
    return {
        "kind": "discovery#restDescription", "discoveryVersion": "v1", "id": "fleet:v1", "name": "schema",
        "version": "v1", "title": "fleet API", "description": "", "documentationLink":
        "http://github.com/coreos/fleet", "protocol": "rest", "icons": {"x16": "", "x32": ""}, "labels": [],
        "baseUrl": "$ENDPOINT/fleet/v1/", "basePath": "/fleet/v1/", "rootUrl": "$ENDPOINT/",
        "servicePath": "fleet/v1/", "batchPath": "batch", "parameters": {}, "auth": {},
        "schemas": schemas, "resources": resources,
    }

"""How ``fastkvctl`` prints a keys response (``-o simple|extended|json``) and errors."""

from __future__ import annotations

import json
from typing import Any, TextIO

from fastkv.ctl.client import ClusterError, CtlError, Response

EXIT_SUCCESS = 0
EXIT_BAD_ARGS = 1
EXIT_BAD_CONNECTION = 2
EXIT_BAD_AUTH = 3
EXIT_SERVER_ERROR = 4
EXIT_CLUSTER_NOT_HEALTHY = 5


class Stop(Exception):
    """End the command with ``code`` (its messages are already written)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def go_json(value: Any) -> str:
    """JSON as Go's ``encoding/json`` writes it (HTML-safe escapes, no spaces)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for ch, esc in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(ch, esc)
    return text


def client_node(node: dict[str, Any] | None) -> dict[str, Any] | None:
    """A node in the shape etcd's Go client re-encodes it (every field, ``nodes`` null)."""
    if node is None:
        return None
    out: dict[str, Any] = {"key": node.get("key", "")}
    if node.get("dir"):
        out["dir"] = True
    out["value"] = node.get("value", "")
    children = node.get("nodes")
    out["nodes"] = [client_node(n) for n in children] if children else None
    out["createdIndex"] = node.get("createdIndex", 0)
    out["modifiedIndex"] = node.get("modifiedIndex", 0)
    if node.get("expiration"):
        out["expiration"] = node["expiration"]
    if node.get("ttl"):
        out["ttl"] = node["ttl"]
    return out


def print_response(resp: Response, fmt: str, out: TextIO, err: TextIO) -> None:
    """etcdctl's ``printResponseKey``."""
    data = resp.json()
    node = data.get("node") or {}
    prev = data.get("prevNode")
    action = data.get("action", "")
    if fmt == "simple":
        if action != "delete":
            out.write(f"{node.get('value', '')}\n")
        else:
            out.write(f"PrevNode.Value: {(prev or {}).get('value', '')}\n")
    elif fmt == "extended":
        out.write(f"Key: {node.get('key', '')}\n")
        out.write(f"Created-Index: {node.get('createdIndex', 0)}\n")
        out.write(f"Modified-Index: {node.get('modifiedIndex', 0)}\n")
        if prev is not None:
            out.write(f"PrevNode.Value: {prev.get('value', '')}\n")
        out.write(f"TTL: {node.get('ttl', 0)}\n")
        out.write(f"Index: {resp.etcd_index}\n")
        if action != "delete":
            out.write(f"\n{node.get('value', '')}\n")
    elif fmt == "json":
        shaped = {"action": action, "node": client_node(node), "prevNode": client_node(prev)}
        out.write(go_json(shaped) + "\n")
    else:
        err.write(f"Unsupported output format: {fmt}\n")


def fail(err: TextIO, code: int, exc: Exception | str) -> Stop:
    """etcdctl's ``handleError``: ``Error:  <text>`` (plus the per-endpoint detail)."""
    err.write(f"Error:  {exc}\n")
    if isinstance(exc, ClusterError):
        err.write(exc.detail() + "\n")
    return Stop(code)


def server_error(err: TextIO, exc: CtlError) -> Stop:
    """A failed request after the sync (even an unreachable cluster): exit 4."""
    return fail(err, EXIT_SERVER_ERROR, exc)

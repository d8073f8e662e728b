"""The key commands: set, get, mk, mkdir, setdir, update, updatedir, rm, rmdir, ls.

Each maps to exactly the ``/v2/keys`` request etcdctl sends (same method, query and
form body) and prints what etcdctl prints.
"""

from __future__ import annotations

import sys
from typing import Any

from fastkv.ctl.client import CtlError, Response, ServerError, canonical_key_path, encode_form
from fastkv.ctl.command import TTL, TTL_LINE, Command, Context, bool_flag, int_flag, str_flag
from fastkv.ctl.output import EXIT_BAD_ARGS, EXIT_SUCCESS, fail, print_response, server_error


def key_arg(ctx: Context) -> str:
    if not ctx.args:
        raise fail(ctx.err, EXIT_BAD_ARGS, "key required")
    return ctx.args[0]


def value_arg(ctx: Context) -> str:
    """The value argument, or all of stdin when it is missing (etcdctl's ``argOrStdin``)."""
    if len(ctx.args) > 1:
        return ctx.args[1]
    data = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
    if not data:
        raise fail(ctx.err, EXIT_BAD_ARGS, "value required")
    return data


def keys_request(
    ctx: Context,
    method: str,
    key: str,
    query: dict[str, str] | None = None,
    form: dict[str, str] | None = None,
) -> Response:
    """Send one keys request after the sync; a v2 error or no answer ends with exit 4."""
    client = ctx.new_client()
    body = None if form is None else encode_form(form)
    try:
        resp = client.request(method, canonical_key_path(key), query=query, body=body)
        data: Any = resp.json()
    except (CtlError, ValueError) as exc:
        raise server_error(ctx.err, exc if isinstance(exc, CtlError) else CtlError(str(exc))) from None
    if isinstance(data, dict) and "errorCode" in data:
        raise server_error(ctx.err, ServerError(data))
    if resp.status >= 300 or not isinstance(data, dict):
        raise server_error(ctx.err, CtlError(f"unexpected status code {resp.status}"))
    return resp


def ttl_form(ctx: Context, **extra: str) -> dict[str, str]:
    form = dict(extra)
    if ctx.number("ttl"):
        form["ttl"] = str(ctx.number("ttl"))
    return form


def printed(ctx: Context, resp: Response) -> int:
    print_response(resp, ctx.output, ctx.out, ctx.err)
    return EXIT_SUCCESS


def run_set(ctx: Context) -> int:
    key = key_arg(ctx)
    value = value_arg(ctx)
    query = {}
    if ctx.flag("swap-with-value"):
        query["prevValue"] = ctx.flag("swap-with-value")
    if ctx.number("swap-with-index"):
        query["prevIndex"] = str(ctx.number("swap-with-index"))
    return printed(ctx, keys_request(ctx, "PUT", key, query, ttl_form(ctx, value=value)))


def run_mk(ctx: Context) -> int:
    key = key_arg(ctx)
    value = value_arg(ctx)
    if ctx.switch("in-order"):
        return printed(ctx, keys_request(ctx, "POST", key, None, ttl_form(ctx, value=value)))
    return printed(ctx, keys_request(ctx, "PUT", key, {"prevExist": "false"}, ttl_form(ctx, value=value)))


def run_update(ctx: Context) -> int:
    key = key_arg(ctx)
    value = value_arg(ctx)
    return printed(ctx, keys_request(ctx, "PUT", key, {"prevExist": "true"}, ttl_form(ctx, value=value)))


def dir_command(query: dict[str, str]) -> Any:
    """mkdir / setdir / updatedir: a directory PUT that prints nothing."""

    def run(ctx: Context) -> int:
        key = key_arg(ctx)
        keys_request(ctx, "PUT", key, dict(query), ttl_form(ctx))
        return EXIT_SUCCESS

    return run


def run_get(ctx: Context) -> int:
    key = key_arg(ctx)
    query = {"quorum": _b(ctx.switch("quorum")), "recursive": "false", "sorted": _b(ctx.switch("sort"))}
    resp = keys_request(ctx, "GET", key, query)
    node = resp.json().get("node") or {}
    if node.get("dir"):
        ctx.err.write(f"{node.get('key', '')}: is a directory\n")
        return EXIT_BAD_ARGS
    return printed(ctx, resp)


def run_rm(ctx: Context) -> int:
    key = key_arg(ctx)
    query = {}
    if ctx.switch("dir"):
        query["dir"] = "true"
    if ctx.number("with-index"):
        query["prevIndex"] = str(ctx.number("with-index"))
    if ctx.flag("with-value"):
        query["prevValue"] = ctx.flag("with-value")
    if ctx.switch("recursive"):
        query["recursive"] = "true"
    resp = keys_request(ctx, "DELETE", key, query)
    if not (resp.json().get("node") or {}).get("dir"):
        print_response(resp, ctx.output, ctx.out, ctx.err)
    return EXIT_SUCCESS


def run_rmdir(ctx: Context) -> int:
    key = key_arg(ctx)
    keys_request(ctx, "DELETE", key, {"dir": "true"})
    return EXIT_SUCCESS


def run_ls(ctx: Context) -> int:
    key = ctx.args[0] if ctx.args else "/"
    query = {
        "quorum": _b(ctx.switch("quorum")),
        "recursive": _b(ctx.switch("recursive")),
        "sorted": _b(ctx.switch("sort")),
    }
    resp = keys_request(ctx, "GET", key, query)
    if ctx.output != "simple":
        return printed(ctx, resp)
    node = resp.json().get("node") or {}
    if not node.get("dir"):
        ctx.out.write(f"{node.get('key', '')}\n")
    slash = ctx.switch("p")

    def show(n: dict[str, Any]) -> None:
        ctx.out.write(f"{n.get('key', '')}{'/' if n.get('dir') and slash else ''}\n")
        for child in n.get("nodes") or []:
            show(child)

    for child in node.get("nodes") or []:
        show(child)
    return EXIT_SUCCESS


def _b(flag: bool) -> str:
    return "true" if flag else "false"


SET_DESCRIPTION = """Set sets the value of a key.

   When <value> begins with '-', <value> is interpreted as a flag.
   Insert '--' for workaround:

   $ set -- <key> <value>"""

COMMANDS = (
    Command(
        "mk",
        "make a new key with a given value",
        "<key> <value>",
        (bool_flag("in-order"), TTL),
        run_mk,
        (
            "--in-order   create in-order key under directory <key>",
            "--ttl value  key time-to-live in seconds (default: 0)",
        ),
    ),
    Command(
        "mkdir",
        "make a new directory",
        "<key>",
        (TTL,),
        dir_command({"dir": "true", "prevExist": "false"}),
        (TTL_LINE,),
    ),
    Command(
        "rm",
        "remove a key or a directory",
        "<key>",
        (bool_flag("dir"), bool_flag("recursive, r"), str_flag("with-value"), int_flag("with-index")),
        run_rm,
        (
            "--dir               removes the key if it is an empty directory or a key-value pair",
            "--recursive, -r     removes the key and all child keys(if it is a directory)",
            "--with-value value  previous value",
            "--with-index value  previous index (default: 0)",
        ),
    ),
    Command(
        "rmdir", "removes the key if it is an empty directory or a key-value pair", "<key>", (), run_rmdir
    ),
    Command(
        "get",
        "retrieve the value of a key",
        "<key>",
        (bool_flag("sort"), bool_flag("quorum, q")),
        run_get,
        ("--sort        returns result in sorted order", "--quorum, -q  require quorum for get request"),
    ),
    Command(
        "ls",
        "retrieve a directory",
        "[key]",
        (bool_flag("sort"), bool_flag("recursive, r"), bool_flag("p"), bool_flag("quorum, q")),
        run_ls,
        (
            "--sort           returns result in sorted order",
            "--recursive, -r  returns all key names recursively for the given path",
            "-p               append slash (/) to directories",
            "--quorum, -q     require quorum for get request",
        ),
    ),
    Command(
        "set",
        "set the value of a key",
        "<key> <value>",
        (TTL, str_flag("swap-with-value"), int_flag("swap-with-index")),
        run_set,
        (
            "--ttl value              key time-to-live in seconds (default: 0)",
            "--swap-with-value value  previous value",
            "--swap-with-index value  previous index (default: 0)",
        ),
        SET_DESCRIPTION,
    ),
    Command(
        "setdir",
        "create a new directory or update an existing directory TTL",
        "<key>",
        (TTL,),
        dir_command({"dir": "true"}),
        (TTL_LINE,),
    ),
    Command(
        "update",
        "update an existing key with a given value",
        "<key> <value>",
        (TTL,),
        run_update,
        (TTL_LINE,),
    ),
    Command(
        "updatedir",
        "update an existing directory",
        "<key> <value>",
        (TTL,),
        dir_command({"dir": "true", "prevExist": "true"}),
        (TTL_LINE,),
    ),
)

"""``watch`` and ``exec-watch``: long-poll ``?wait=true&waitIndex=N`` and resume at modifiedIndex+1."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fastkv.ctl.client import Client, CtlError, Response, ServerError, canonical_key_path
from fastkv.ctl.command import Command, Context, bool_flag, int_flag
from fastkv.ctl.output import EXIT_BAD_ARGS, EXIT_SUCCESS, fail, print_response, server_error


def events(ctx: Context, client: Client, key: str, recursive: bool, after: int) -> Iterator[Response]:
    """Every change of ``key`` from index ``after + 1`` on, one response each (never ends)."""
    wait_index = after + 1
    path = canonical_key_path(key)
    while True:
        query = {"recursive": "true" if recursive else "false", "wait": "true", "waitIndex": str(wait_index)}
        try:
            resp = client.request("GET", path, query=query, wait=True)
            data: Any = resp.json()
        except (CtlError, ValueError) as exc:
            raise server_error(ctx.err, exc if isinstance(exc, CtlError) else CtlError(str(exc))) from None
        if isinstance(data, dict) and "errorCode" in data:
            raise server_error(ctx.err, ServerError(data))
        if not isinstance(data, dict):
            raise server_error(ctx.err, CtlError(f"unexpected status code {resp.status}"))
        wait_index = int((data.get("node") or {}).get("modifiedIndex", 0)) + 1
        yield resp


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT raises ``KeyboardInterrupt`` inside the block, even when the process started with
    SIGINT ignored (a background job of a script, ``nohup``), as it stops etcdctl's watches.

    Only the main thread can set a signal handler; elsewhere the handler is left as it is.
    The previous handler is restored on leaving.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def until_interrupted(run: Callable[[Context], int]) -> Callable[[Context], int]:
    """SIGINT (Ctrl+C) ends a watch quietly with exit 0, as etcdctl does, however SIGINT was
    disposed of when the process started."""

    def wrapped(ctx: Context) -> int:
        try:
            with interruptible():
                return run(ctx)
        except KeyboardInterrupt:
            return EXIT_SUCCESS

    return wrapped


@until_interrupted
def run_watch(ctx: Context) -> int:
    if not ctx.args:
        raise fail(ctx.err, EXIT_BAD_ARGS, "key required")
    recursive = ctx.switch("recursive")
    client = ctx.new_client()
    for resp in events(ctx, client, ctx.args[0], recursive, ctx.number("after-index")):
        node = resp.json().get("node") or {}
        if node.get("dir"):
            continue
        if recursive:
            ctx.out.write(f"[{resp.json().get('action', '')}] {node.get('key', '')}\n")
        print_response(resp, ctx.output, ctx.out, ctx.err)
        ctx.out.flush()
        if not ctx.switch("forever"):
            break
    return EXIT_SUCCESS


def split_exec_args(args: list[str]) -> tuple[str, list[str]]:
    """``key -- cmd args...`` or, without ``--``, the last word is the key (etcdctl's rule).

    A leading ``--`` is consumed by flag parsing, so ``exec-watch k -- cmd`` takes the
    last word as the key, exactly as etcdctl 3.4 does; ``exec-watch cmd args k`` works.
    """
    if "--" in args[1:]:
        return args[0], args[2:]
    return args[-1], args[:-1]


def watch_environment(data: dict[str, Any]) -> dict[str, str]:
    node = data.get("node") or {}
    return {
        "ETCD_WATCH_ACTION": str(data.get("action", "")),
        "ETCD_WATCH_MODIFIED_INDEX": str(node.get("modifiedIndex", 0)),
        "ETCD_WATCH_KEY": str(node.get("key", "")),
        "ETCD_WATCH_VALUE": str(node.get("value", "")),
    }


@until_interrupted
def run_exec_watch(ctx: Context) -> int:
    if len(ctx.args) < 2:
        raise fail(ctx.err, EXIT_BAD_ARGS, "key and command to exec required")
    key, command = split_exec_args(ctx.args)
    start = ctx.number("after-index")
    client = ctx.new_client()
    children: list[subprocess.Popen[bytes]] = []
    for resp in events(ctx, client, key, ctx.switch("recursive"), start):
        data = resp.json()
        node = data.get("node") or {}
        if node.get("dir"):
            ctx.err.write(f"Ignored dir {node.get('key', '')} change\n")
            continue
        children = [c for c in children if c.poll() is None]
        try:
            children.append(subprocess.Popen(command, env={**os.environ, **watch_environment(data)}))
        except OSError as exc:
            ctx.err.write(f"exec: {command[0]}: {exc.strerror}")
            return EXIT_BAD_ARGS
    return EXIT_SUCCESS


COMMANDS = (
    Command(
        "watch",
        "watch a key for changes",
        "<key>",
        (bool_flag("forever, f"), int_flag("after-index"), bool_flag("recursive, r")),
        run_watch,
        (
            "--forever, -f        forever watch a key until CTRL+C",
            "--after-index value  watch after the given index (default: 0)",
            "--recursive, -r      returns all values for key and child keys",
        ),
    ),
    Command(
        "exec-watch",
        "watch a key for changes and exec an executable",
        "<key> <command> [args...]",
        (int_flag("after-index"), bool_flag("recursive, r")),
        run_exec_watch,
        (
            "--after-index value  watch after the given index (default: 0)",
            "--recursive, -r      watch all values for key and child keys",
        ),
    ),
)

"""``member list|add|remove|update`` and ``cluster-health`` over ``/v2/members`` and ``/health``."""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from typing import Any

from fastkv.cli import url_problem
from fastkv.ctl.client import ClusterError, CtlError
from fastkv.ctl.command import Command, Context, bool_flag
from fastkv.ctl.output import (
    EXIT_BAD_ARGS,
    EXIT_CLUSTER_NOT_HEALTHY,
    EXIT_SERVER_ERROR,
    EXIT_SUCCESS,
    Stop,
    fail,
)


def die(ctx: Context, text: str) -> Stop:
    ctx.err.write(text + "\n")
    return Stop(EXIT_BAD_ARGS)


def run_list(ctx: Context) -> int:
    if ctx.args:
        raise die(ctx, "No arguments accepted")
    client = ctx.new_client()
    try:
        members = client.members()
    except CtlError as exc:
        raise die(ctx, str(exc)) from None
    try:
        leader = client.leader()
    except CtlError as exc:
        raise die(ctx, f"Failed to get leader:  {exc}") from None
    for m in members:
        peers = ",".join(m.get("peerURLs") or [])
        if not m.get("name"):
            ctx.out.write(f"{m.get('id')}[unstarted]: peerURLs={peers}\n")
            continue
        is_leader = "true" if m.get("id") == leader.get("id") else "false"
        ctx.out.write(
            f"{m.get('id')}: name={m.get('name')} peerURLs={peers} "
            f"clientURLs={','.join(m.get('clientURLs') or [])} isLeader={is_leader}\n"
        )
    return EXIT_SUCCESS


def checked_urls(ctx: Context, urls: list[str]) -> list[str]:
    for url in urls:
        problem = url_problem(url)
        if problem is not None:
            raise die(ctx, problem)
    return urls


def run_add(ctx: Context) -> int:
    if len(ctx.args) != 2:
        raise die(ctx, "Provide a name and a single member peerURL")
    name, url = ctx.args
    client = ctx.new_client()
    try:
        added = client.member_call("POST", "/v2/members", checked_urls(ctx, [url]), (201,)).json()
    except CtlError as exc:
        raise die(ctx, str(exc)) from None
    new_id = added.get("id")
    ctx.out.write(f"Added member named {name} with ID {new_id} to cluster\n")
    try:
        members = client.members()
    except CtlError as exc:
        raise die(ctx, str(exc)) from None
    conf = [
        f"{name if m.get('id') == new_id else m.get('name', '')}={u}"
        for m in members
        for u in m.get("peerURLs") or []
    ]
    ctx.out.write(
        f"\nETCD_NAME={json.dumps(name)}\nETCD_INITIAL_CLUSTER={json.dumps(','.join(conf))}\n"
        'ETCD_INITIAL_CLUSTER_STATE="existing"\n'
    )
    return EXIT_SUCCESS


def run_remove(ctx: Context) -> int:
    if len(ctx.args) != 1:
        raise die(ctx, "Provide a single member ID")
    target = ctx.args[0]
    client = ctx.new_client()
    try:
        members = client.members()
    except CtlError as exc:
        raise die(ctx, f"Error while verifying ID against known members: {exc}") from None
    found = False
    for m in members:
        found = found or m.get("id") == target
        if m.get("name") == target:
            ctx.err.write(
                f"Found a member named {m['name']}; if this is correct, please use its ID, eg:\n"
                f"\tetcdctl member remove {m.get('id')}\n"
            )
            ctx.err.write(
                "For more details, read the documentation at https://github.com/coreos/etcd/blob/master/"
                "Documentation/runtime-configuration.md#remove-a-member\n\n"
            )
    if not found:
        raise die(ctx, f"Couldn't find a member in the cluster with an ID of {target}.")
    try:
        client.member_call("DELETE", f"/v2/members/{target}", None, (204,))
    except CtlError as exc:
        ctx.err.write(f"Received an error trying to remove member {target}: {exc}")
        raise Stop(EXIT_BAD_ARGS) from None
    ctx.out.write(f"Removed member {target} from cluster\n")
    return EXIT_SUCCESS


def run_update(ctx: Context) -> int:
    if len(ctx.args) != 2:
        raise die(
            ctx,
            "Provide an ID and a list of comma separated peerURL (0xabcd http://example.com,"
            "http://example1.com)",
        )
    member_id, urls = ctx.args
    client = ctx.new_client()
    try:
        client.member_call("PUT", f"/v2/members/{member_id}", checked_urls(ctx, urls.split(",")), (204,))
    except CtlError as exc:
        raise die(ctx, str(exc)) from None
    ctx.out.write(f"Updated member with ID {member_id} in cluster\n")
    return EXIT_SUCCESS


def health_of(url: str, timeout: float) -> tuple[bool | None, str]:
    """(healthy?, error text) for one client URL's ``/health``; ``None`` when it gave no answer."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", parts.path.rstrip("/") + "/health")
        body = conn.getresponse().read()
    except OSError as exc:
        return None, f"Get {url}/health: {exc}"
    finally:
        conn.close()
    try:
        data: Any = json.loads(body)
    except ValueError as exc:
        return None, str(exc)
    value = data.get("health") if isinstance(data, dict) else None
    return value in ("true", True), ""


def run_cluster_health(ctx: Context) -> int:
    client = ctx.new_client(sync=False)
    try:
        members = client.members()
    except CtlError as exc:
        ctx.out.write("cluster may be unhealthy: failed to list members\n")
        raise fail(ctx.err, EXIT_SERVER_ERROR, exc) from None
    while True:
        healthy = False
        for m in members:
            urls = m.get("clientURLs") or []
            if not urls:
                ctx.out.write(f"member {m.get('id')} is unreachable: no available published client urls\n")
                continue
            checked = False
            for url in urls:
                result, problem = health_of(url, client.total_timeout)
                if result is None:
                    ctx.out.write(f"failed to check the health of member {m.get('id')} on {url}: {problem}\n")
                    continue
                checked = True
                state = "healthy" if result else "unhealthy"
                healthy = healthy or result
                ctx.out.write(f"member {m.get('id')} is {state}: got {state} result from {url}\n")
                break
            if not checked:
                ctx.out.write(
                    f"member {m.get('id')} is unreachable: [{' '.join(urls)}] are all unreachable\n"
                )
        ctx.out.write("cluster is healthy\n" if healthy else "cluster is unhealthy\n")
        if not ctx.switch("forever"):
            return EXIT_SUCCESS if healthy else EXIT_CLUSTER_NOT_HEALTHY
        ctx.out.write("\nnext check after 10 second...\n\n")
        ctx.out.flush()

        time.sleep(10)


MEMBER_COMMANDS = (
    Command("list", "enumerate existing cluster members", " ", (), run_list),
    Command("add", "add a new member to the etcd cluster", "<name> <peerURL>", (), run_add),
    Command("remove", "remove an existing member from the etcd cluster", "<memberID>", (), run_remove),
    Command(
        "update", "update an existing member in the etcd cluster", "<memberID> <peerURLs>", (), run_update
    ),
)

COMMANDS = (
    Command(
        "cluster-health",
        "check the health of the etcd cluster",
        " ",
        (bool_flag("forever, f"),),
        run_cluster_health,
        ("--forever, -f  forever check the health every 10 second until CTRL+C",),
    ),
    Command(
        "member",
        "member add, remove and list subcommands",
        "",
        (),
        lambda ctx: 0,
        subcommands=MEMBER_COMMANDS,
    ),
)

__all__ = ["COMMANDS", "ClusterError"]

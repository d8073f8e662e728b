"""The server process: settings -> data directory -> node -> client listeners -> run until a signal.

``run(settings)`` returns the process exit code: 0 after a graceful stop (SIGTERM/SIGINT:
listeners closed, the batch in flight synced and applied, the log closed), 1 when the data
directory cannot be used or a listen address is taken. Messages go to stderr in etcd's
``<date> <time> <level> | <package>: <text>`` shape.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections.abc import Coroutine
from typing import Any

from fastkv import identity
from fastkv._native.logstore import CorruptLogError
from fastkv.server.join import Joined, JoinError, join
from fastkv.server.node import Node, NodeConfig
from fastkv.settings import Settings
from fastkv.storage.datadir import DataDir, DataDirError, Identity, is_initialised, open_data_dir
from fastkv.storage.snapshot import SnapshotError

VERSION = "3.4.23"
log = logging.getLogger("fastkv.server")

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "warning": logging.WARNING,
           "error": logging.ERROR, "panic": logging.CRITICAL, "fatal": logging.CRITICAL}


class _EtcdFormatter(logging.Formatter):
    """``2026-11-28 00:58:00.156422 I | etcdserver: text``."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        micros = int((record.created % 1) * 1_000_000)
        package = record.name.rsplit(".", 1)[-1]
        return f"{stamp}.{micros:06d} {record.levelname[0]} | {package}: {record.getMessage()}"


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_EtcdFormatter())
    root = logging.getLogger("fastkv")
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level.lower(), logging.INFO))
    root.propagate = False


def node_config(settings: Settings, joined: Joined | None = None) -> NodeConfig:
    """Member and cluster ids from the flags, computed as etcd computes them, or, for a member
    joining a running cluster, the ids the cluster gave (``joined``)."""
    token = settings.initial_cluster_token
    peers = dict(settings.initial_cluster)
    initial = tuple((identity.member_id(list(urls), token), tuple(urls)) for urls in peers.values())
    own_urls = tuple(peers.get(settings.name) or settings.initial_advertise_peer_urls)
    member_id = identity.member_id(list(own_urls), token)
    cluster_id = identity.cluster_id([mid for mid, _ in initial])
    if joined is not None:
        member_id, cluster_id, initial = joined.member_id, joined.cluster_id, joined.members
    return NodeConfig(
        name=settings.name,
        member_id=member_id,
        cluster_id=cluster_id,
        peer_urls=own_urls,
        client_urls=tuple(settings.advertise_client_urls),
        initial_members=initial,
        token=token,
        snapshot_count=settings.snapshot_count,
        strict_reconfig=settings.strict_reconfig_check,
        listen_peer_urls=tuple(settings.listen_peer_urls),
        heartbeat_ms=settings.heartbeat_interval_ms,
        election_ms=settings.election_timeout_ms,
        proposal_timeout_s=5.0 + 2 * settings.election_timeout_ms / 1000,  # etcd's request timeout
        join=settings.initial_cluster_state == "existing",
    )


def open_member(settings: Settings, joined: Joined | None = None) -> tuple[DataDir, Node]:
    """Open and check the data directory and recover the node from it (``DataDirError`` if unusable)."""
    config = node_config(settings, joined)
    data_dir = open_data_dir(settings.data_dir,
                             Identity(config.name, config.member_id, config.cluster_id, config.token),
                             check_member_id=settings.initial_cluster_state == "new")
    ident = data_dir.identity
    config = NodeConfig(**{**config.__dict__, "member_id": ident.member_id, "cluster_id": ident.cluster_id})
    try:
        node = Node(data_dir.log, data_dir.snapshots, config)
    except (CorruptLogError, SnapshotError) as exc:
        data_dir.close()
        raise DataDirError(f"data directory {settings.data_dir} is damaged: {exc}") from None
    return data_dir, node


GIL_SWITCH_INTERVAL_S = 0.0002


def run(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT; the process exit code."""
    configure_logging(settings.log_level)
    log.info("fastkv Version: %s (etcd v2 API)", VERSION)
    log.info("name = %s", settings.name)
    log.info("data dir = %s", settings.data_dir)
    joined = None
    if settings.initial_cluster_state == "existing" and not is_initialised(settings.data_dir):
        try:  # a data directory that exists is used as it is: "existing" is then ignored
            joined = join(settings)
        except JoinError as exc:
            logging.getLogger("fastkv.etcdmain").critical("%s", exc)
            return 1
        log.info("joining cluster %x as member %x", joined.cluster_id, joined.member_id)
    try:
        data_dir, node = open_member(settings, joined)
    except DataDirError as exc:
        log.critical("%s", exc)
        return 1
    log.info("%s member %x in cluster %x", "starting" if data_dir.fresh else "restarting",
             node.member_id, node.cluster_id)
    # The log thread needs the GIL for a moment after each sync to hand the batch back, while
    # the event loop holds it for as long as it has work: with the default 5 ms switch interval
    # a busy loop would make every sync wait up to 5 ms more (one batch per 5 ms at most).
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(_serve(node, settings))
    finally:
        data_dir.close()


async def _serve(node: Node, settings: Settings) -> int:
    from fastkv import http

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    node.on_removed = stop.set  # a member removed from the cluster stops, as etcd's does
    await node.start()
    if node.state == "StateLeader":
        log.info("%x became leader at term %d", node.member_id, node.raft_term)
        log.info("published {Name:%s ClientURLs:[%s]} to cluster %x", node.name,
                 " ".join(settings.advertise_client_urls), node.cluster_id)
    try:
        servers = await http.start_client_listeners(node, settings, start_serving=False)
    except OSError as exc:
        log.critical("cannot listen on the client URLs %s: %s", ", ".join(settings.listen_client_urls), exc)
        await node.stop()
        return 1
    # As etcd: clients may connect at once, but are served only once this member has joined the
    # cluster (its attributes committed, so a leader is known); a stop signal ends the wait.
    if await _first_of(node.wait_published(), stop.wait()) == 0:
        for server in servers:
            await server.start_serving()
        for url in settings.listen_client_urls:
            log.info("serving client requests on %s", url)
        log.info("ready to serve client requests")
        await stop.wait()
    log.info("received a stop signal, shutting down")
    for server in servers:
        server.close()
    await node.stop()
    await asyncio.sleep(0.05)  # let the handlers of the last committed proposals write their answers
    log.info("stopped")
    return 0


async def _first_of(*waits: Coroutine[Any, Any, Any]) -> int:
    """Run ``waits`` until one returns; cancel the others; the position of the one that returned."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
    return min(tasks.index(task) for task in done)

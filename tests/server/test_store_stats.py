"""The store reads a member makes by itself show in ``/v2/stats/store`` as they do on etcd 3.4:
at bootstrap (the first member change finds no members), and on restart (members and cluster
version read back, then the log replayed: its member change and quorum reads read again)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from tests import harness


def _gets(server: harness.Server) -> tuple[int, int]:
    with urllib.request.urlopen(server.url + "/v2/stats/store", timeout=5) as reply:
        stats = json.loads(reply.read())
    return stats["getsSuccess"], stats["getsFail"]


def _get(server: harness.Server, path: str) -> int:
    with urllib.request.urlopen(server.url + path, timeout=5) as reply:
        return int(reply.status)


def test_reads_at_start_and_restart(tmp_path: Path) -> None:
    server = harness.fastkv(tmp_path).start()  # start() waits with one GET /v2/keys/: (1, 1)
    try:
        assert _gets(server) == (1, 2)
        assert _get(server, "/health") == 200  # a quorum read through the log
        assert _gets(server) == (2, 2)
        server.stop()
        server.start()
        # recovery (2 failed), the replayed bootstrap change (1 failed), the replayed health
        # read (1), the one readiness GET (1, and 1 failed for the auth flag)
        assert _gets(server) == (2, 4)
    finally:
        server.stop()

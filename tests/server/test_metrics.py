"""``/metrics`` of a real fastkv process counts what it did: requests by method, committed and
applied proposals, store writes, and the WAL syncs with their durations (group commit: at least
one sync, never more syncs than writes)."""

from __future__ import annotations

import re
import threading
import urllib.request
from pathlib import Path

from tests import harness
from tests.server.test_durability import request

WRITERS, WRITES_EACH = 8, 5


def metric(text: str, name: str) -> float:
    """The value of the sample ``name`` (with its labels, if any) in a Prometheus text page."""
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found is not None, f"{name} not in /metrics"
    return float(found[1])


def test_metrics_count_requests_proposals_and_wal_syncs(tmp_path: Path) -> None:
    server = harness.fastkv(tmp_path).start()
    base = f"http://127.0.0.1:{server.client_port}"
    try:
        def write(n: int) -> None:
            for i in range(WRITES_EACH):
                assert request(f"{base}/v2/keys/m/{n}/{i}", "PUT", value="x")[0] == 201

        writers = [threading.Thread(target=write, args=(n,)) for n in range(WRITERS)]
        for t in writers:
            t.start()
        for t in writers:
            t.join()
        assert request(f"{base}/v2/keys/m/0/0")[0] == 200
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = resp.read().decode()
    finally:
        server.stop()
    writes = WRITERS * WRITES_EACH
    assert metric(text, 'etcd_http_received_total{method="PUT"}') == writes
    assert metric(text, 'etcd_http_received_total{method="GET"}') >= 1
    assert metric(text, 'etcd_debugging_store_writes_total{action="set"}') >= writes
    assert metric(text, "etcd_server_proposals_committed_total") >= writes
    assert metric(text, "etcd_server_proposals_applied_total") >= writes
    syncs = metric(text, "etcd_disk_wal_fsync_duration_seconds_count")
    assert 1 <= syncs <= metric(text, "etcd_server_proposals_committed_total")
    assert metric(text, "etcd_disk_wal_fsync_duration_seconds_sum") > 0
    assert metric(text, 'etcd_disk_wal_fsync_duration_seconds_bucket{le="+Inf"}') == syncs

"""A real fastkv process killed with SIGKILL keeps every acknowledged write; data directories it
must not use are refused with a clear message and a non-zero exit code."""

from __future__ import annotations

import json
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import lmdb

from tests import harness


def request(url: str, method: str = "GET", **form: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    data = urllib.parse.urlencode(form).encode() if form else None
    req = urllib.request.Request(url, data=data, method=method)
    if data:
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read() or b"{}")


class Writer(threading.Thread):
    """PUTs ``/load/<n>/<i>`` until the server goes away; remembers every acknowledged write."""

    def __init__(self, base: str, n: int) -> None:
        super().__init__(daemon=True)
        self.base, self.n = base, n
        self.acked: dict[str, tuple[str, int]] = {}

    def run(self) -> None:
        for i in range(100_000):
            key, value = f"/load/{self.n}/{i}", f"v{self.n}-{i}"
            try:
                status, _, body = request(self.base + "/v2/keys" + key, "PUT", value=value)
            except OSError:
                return
            if status in (200, 201):
                self.acked[key] = (value, body["node"]["modifiedIndex"])


def run_to_exit(server: harness.Server) -> subprocess.CompletedProcess[str]:
    """Run the server's command expecting it to refuse to start."""
    return subprocess.run(server.args, capture_output=True, text=True, timeout=30)


def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    server = harness.fastkv(tmp_path).start()
    try:
        status, _, ttl_body = request(server.url + "/v2/keys/ttl", "PUT", value="t", ttl="1000")
        assert status == 201
        writers = [Writer(server.url, n) for n in range(4)]
        for w in writers:
            w.start()
        while sum(len(w.acked) for w in writers) < 200:
            time.sleep(0.01)
        server.kill()
        for w in writers:
            w.join(10)
        acked = {k: v for w in writers for k, v in w.acked.items()}
        last_key, (last_value, last_index) = max(acked.items(), key=lambda kv: kv[1][1])

        server.start()
        _, headers, listing = request(server.url + "/v2/keys/load?recursive=true")
        stored = {leaf["key"]: (leaf["value"], leaf["modifiedIndex"])
                  for d in listing["node"]["nodes"] for leaf in d.get("nodes", [])}
        assert {k: stored.get(k) for k in acked} == acked
        assert int(headers["X-Etcd-Index"]) >= last_index + 1

        _, _, ttl_now = request(server.url + "/v2/keys/ttl")
        assert ttl_now["node"]["expiration"] == ttl_body["node"]["expiration"]
        assert ttl_now["node"]["modifiedIndex"] == ttl_body["node"]["modifiedIndex"]
        assert 990 < ttl_now["node"]["ttl"] <= 1000

        _, _, old = request(server.url + f"/v2/keys{last_key}?wait=true&waitIndex={last_index}")
        assert old["node"] == {"key": last_key, "value": last_value,
                               "modifiedIndex": last_index, "createdIndex": last_index}
    finally:
        server.stop()


def test_a_graceful_restart_bumps_index_and_term(tmp_path: Path) -> None:
    server = harness.fastkv(tmp_path).start()
    try:
        _, before, _ = request(server.url + "/v2/keys/k", "PUT", value="1")
        server.stop()
        server.start()
        status, after, body = request(server.url + "/v2/keys/k")
        assert (status, body["node"]["value"]) == (200, "1")
        assert int(after["X-Etcd-Index"]) == int(before["X-Etcd-Index"]) + 1
        assert int(after["X-Raft-Index"]) == int(before["X-Raft-Index"]) + 2
        assert int(after["X-Raft-Term"]) == int(before["X-Raft-Term"]) + 1
    finally:
        server.stop()


def test_a_corrupt_log_entry_is_refused(tmp_path: Path) -> None:
    server = harness.fastkv(tmp_path).start()
    request(server.url + "/v2/keys/k", "PUT", value="precious")
    server.stop()
    env = lmdb.open(str(server.data_dir / "member" / "log"), max_dbs=4)
    db = env.open_db(b"entries")
    with env.begin(write=True) as txn:
        key = struct.pack(">Q", 5)
        value = bytearray(txn.get(key, db=db))
        value[-3] ^= 0xFF
        txn.put(key, bytes(value), db=db)
    env.close()
    result = run_to_exit(server)
    assert result.returncode != 0
    assert "damaged" in result.stderr and "CRC" in result.stderr


def test_a_garbage_data_dir_is_refused(tmp_path: Path) -> None:
    server = harness.fastkv(tmp_path).start()
    server.stop()
    (server.data_dir / "member" / "log" / "data.mdb").write_bytes(b"\x00garbage" * 4096)
    result = run_to_exit(server)
    assert result.returncode != 0
    assert "damaged" in result.stderr


def test_another_members_data_dir_is_refused(tmp_path: Path) -> None:
    server = harness.fastkv(tmp_path, name="first").start()
    server.stop()
    other = harness.fastkv(tmp_path, name="second", data_dir=server.data_dir)
    result = run_to_exit(other)
    assert result.returncode != 0
    assert "belongs to member 'first'" in result.stderr


def test_an_etcd_data_dir_is_refused(tmp_path: Path) -> None:
    etcd = harness.reference_etcd(tmp_path).start()
    etcd.stop()
    result = run_to_exit(harness.fastkv(tmp_path, name=etcd.name, data_dir=etcd.data_dir))
    assert result.returncode != 0
    assert "written by etcd" in result.stderr

"""A harness that runs ``etcd`` by name gets fastkv through the ``examples/etcd`` wrapper."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from fastkv.identity import hex_id, member_id
from tests.cli import REPO, env_with_repo
from tests.harness import free_port


def wrapper_path(tmp_path: Path) -> str:
    """A PATH whose first directory holds ``etcd`` (the wrapper) and, if needed, ``fastkv``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(REPO / "examples" / "etcd", bin_dir / "etcd")
    if shutil.which("fastkv") is None:
        launcher = bin_dir / "fastkv"
        launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m fastkv "$@"\n')
        launcher.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


def wait_for(url: str, process: subprocess.Popen[bytes], timeout: float = 20) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, "the server exited"
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                return bytes(resp.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_etcd_by_name_serves_v2(tmp_path: Path) -> None:
    env = env_with_repo({"PATH": wrapper_path(tmp_path)})
    client, peer = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    args = [
        "etcd",
        "-name",
        "test",
        "-data-dir",
        str(tmp_path / "data"),
        "-initial-cluster",
        f"test={peer}",
        "-initial-cluster-state",
        "new",
        "-initial-cluster",
        f"test={peer}",
        "-initial-cluster-token",
        "wrapper-token",
        "-initial-advertise-peer-urls",
        peer,
        "-listen-peer-urls",
        peer,
        "-listen-client-urls",
        client,
        "-advertise-client-urls",
        client,
    ]
    log = open(tmp_path / "log", "wb")  # noqa: SIM115 - the child writes to it
    process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    log.close()
    try:
        wait_for(client + "/v2/keys/", process)
        put = urllib.request.Request(
            client + "/v2/keys/hello",
            data=b"value=world",
            method="PUT",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        with urllib.request.urlopen(put, timeout=5) as resp:
            assert json.load(resp)["node"]["value"] == "world"
        members = json.loads(wait_for(client + "/v2/members", process))["members"]
        assert [m["id"] for m in members] == [hex_id(member_id([peer], "wrapper-token"))]
    finally:
        process.terminate()
        process.wait(10)

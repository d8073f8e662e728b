"""``ssh`` (runs ``ssh`` to a machine's public IP, as fleet) and ``fd-forward`` (stdin/stdout <-> socket)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from typing import Any

from fleetd.ctl.client import ClientError
from fleetd.ctl.command import Context
from fleetd.unit import unit_name_from_path


async def _target_ip(ctx: Context, lookup: str) -> str | None:
    """The public IP of the machine named by ID prefix, or of the unit's machine; None after an error."""
    machines = await ctx.client.machines()
    by_machine = [m for m in machines if m["id"].startswith(lookup)] if not ctx.options.get("unit") else []
    unit = None
    if not ctx.options.get("machine"):
        unit = await ctx.client.unit(unit_name_from_path(lookup))
    if by_machine and unit is not None:
        ctx.stderr(f"Error: ambiguous argument, both a unit and a machine match {lookup}")
        return None
    if len(by_machine) > 1:
        ctx.stderr(f"Error: ambiguous machine ID prefix {lookup}")
        return None
    machine: dict[str, Any] | None = by_machine[0] if by_machine else None
    if unit is not None:
        machine = next((m for m in machines if m["id"] == unit.get("machineID")), None)
        if machine is None:
            ctx.stderr(f"Unit {unit['name']} does not appear to be running on any machine")
            return None
    if machine is None:
        ctx.stderr(f"Error: could not find a machine or unit matching {lookup}")
        return None
    return str(machine.get("primaryIP") or "")


async def ssh(ctx: Context, args: list[str]) -> int:
    """Open a shell (or run a command) on a machine over ``ssh``; its exit code is returned."""
    if not args:
        ctx.stderr("Provide one machine or unit.")
        return 1
    try:
        ip = await _target_ip(ctx, args[0])
    except ClientError as err:
        ctx.stderr(f"Error: {err}")
        return 1
    if ip is None:
        return 1
    if not ip:
        ctx.stderr("Error: the machine has no public IP")
        return 1
    command = args[1:]
    if command[:1] == ["--"]:
        command = command[1:]
    strict = "yes" if ctx.options.get("strict-host-key-checking", True) else "no"
    argv = [shutil.which("ssh") or "ssh", "-p", str(ctx.options.get("ssh-port", 22)),
            "-l", str(ctx.options.get("ssh-username", "core")),
            "-o", f"StrictHostKeyChecking={strict}",
            "-o", f"ConnectTimeout={int(float(ctx.options.get('ssh-timeout', 10)))}"]
    known_hosts = os.path.expanduser(str(ctx.options.get("known-hosts-file", "")))
    if known_hosts:
        argv += ["-o", f"UserKnownHostsFile={known_hosts}"]
    if ctx.options.get("forward-agent"):
        argv.append("-A")
    argv += [ip, *command]
    try:
        return subprocess.call(argv)
    except OSError as err:
        ctx.stderr(f"Error running ssh: {err}")
        return 1


async def fd_forward(ctx: Context, args: list[str]) -> int:
    """Copy stdin to the unix socket and the socket to stdout until either side ends."""
    if len(args) != 1:
        ctx.stderr("Provide a single argument")
        return 1
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(args[0])
    except OSError as err:
        ctx.stderr(f"Unable to connect to {args[0]}: {err}")
        return 1

    def upstream() -> None:
        while data := os.read(sys.stdin.fileno(), 65536):
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)

    threading.Thread(target=upstream, daemon=True).start()
    while data := conn.recv(65536):
        os.write(sys.stdout.fileno(), data)
    conn.close()
    return 0

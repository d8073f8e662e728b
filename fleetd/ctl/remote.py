"""``ssh`` (a command or shell on a machine, over the OpenSSH client) and ``fd-forward`` (stdin/stdout
<-> a unix socket, what ``--tunnel`` runs on the tunnel host to reach a unix endpoint).

``ssh`` finds the machine as fleet does: ``--machine`` (an ID prefix), ``--unit`` (the machine the unit
is scheduled to), or a bare argument that must match one or the other but not both; it connects to the
machine's public IP on ``--ssh-port`` (through the ``--tunnel`` host when given) and runs the rest of
the arguments (after ``--`` if present) as the command, returning its exit code.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading

from fleetd.ctl.client import ClientError
from fleetd.ctl.command import Context
from fleetd.ctl.tunnel import SshConnection, SshError, SshSettings, split_host_port
from fleetd.ctl.units import is_global
from fleetd.unit import unit_name_from_path


class NoMachine(Exception):
    """The machine to connect to cannot be determined; ``str()`` follows ``Unable to proceed: ``."""


async def _machine_address(ctx: Context, lookup: str) -> str:
    """The public IP of the one machine whose ID starts with ``lookup``."""
    found = [m for m in await ctx.client.machines() if m["id"].startswith(lookup)]
    if len(found) > 1:
        raise NoMachine("found more than one machine")
    if not found:
        raise NoMachine("machine does not exist")
    return str(found[0].get("primaryIP") or "")


async def _unit_address(ctx: Context, lookup: str) -> str:
    """The public IP of the machine the unit is scheduled to (``""`` if it has none)."""
    unit = await ctx.client.unit(unit_name_from_path(lookup))
    if unit is None:
        raise NoMachine("unit does not exist")
    if is_global(unit):
        raise NoMachine("global units unsupported")
    machine = next((m for m in await ctx.client.machines() if m["id"] == unit.get("machineID")), None)
    return str(machine.get("primaryIP") or "") if machine else ""


async def _either_address(ctx: Context, lookup: str) -> str:
    """fleet's lookup of a bare argument: a machine ID prefix or a unit, not both."""
    machine: str | None = None
    unit: str | None = None
    ambiguous_prefix = False
    try:
        machine = await _machine_address(ctx, lookup)
    except NoMachine as err:
        ambiguous_prefix = str(err) == "found more than one machine"
    with contextlib.suppress(NoMachine):
        unit = await _unit_address(ctx, lookup) or None
    if machine is not None and unit is not None:
        raise NoMachine(f"ambiguous argument, both machine and unit found for `{lookup}`.\n"
                           "Please use flag `-m` or `-u` to refine the search")
    if machine is not None:
        return machine
    if unit is not None:
        return unit
    if ambiguous_prefix:
        raise NoMachine(f"more than one machine ID starts with `{lookup}`")
    raise NoMachine("could not find matching unit or machine")


async def _address(ctx: Context, args: list[str]) -> tuple[str, list[str]] | None:
    """The address to connect to and the command to run there; None after printing why not."""
    machine, unit = str(ctx.options.get("machine") or ""), str(ctx.options.get("unit") or "")
    if machine and unit:
        ctx.stderr("Both machine and unit flags provided, please specify only one.")
        return None
    try:
        if machine:
            address = await _machine_address(ctx, machine)
        elif unit:
            address = await _unit_address(ctx, unit)
        elif not args:
            raise NoMachine("one machine or unit must be provided")
        else:
            address, args = await _either_address(ctx, args[0]), args[1:]
    except NoMachine as err:
        ctx.stderr(f"Unable to proceed: {err}")
        return None
    if not address:
        ctx.stderr("Could not determine address of machine.")
        return None
    return address, args[args.index("--") + 1:] if "--" in args else args


async def ssh(ctx: Context, args: list[str]) -> int:
    """Run a command (a shell without one) on a machine over SSH, through ``--tunnel`` if given; the
    command's exit code, or 1 when the machine cannot be found or reached."""
    try:
        found = await _address(ctx, args)
    except ClientError as err:
        ctx.stderr(f"Unable to proceed: {err}")
        return 1
    if found is None:
        return 1
    address, command = found
    host, port = split_host_port(address, int(ctx.options.get("ssh-port") or 22))
    connection = SshConnection(SshSettings.of(ctx.options), host, port,
                               proxy=ctx.tunnel.connection if ctx.tunnel else None,
                               forward_agent=bool(ctx.options.get("forward-agent")))
    try:
        await connection.open()
        return await connection.run(command, terminal=not command and sys.stdin.isatty())
    except SshError as err:
        ctx.stderr(f"Failed building SSH client: {err}")
        return 1
    finally:
        await connection.close()


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

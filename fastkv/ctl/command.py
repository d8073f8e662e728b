"""The shape of a ``fastkvctl`` command and the context it runs in.

A :class:`Command` has etcdctl's name, flags and help text; its ``run`` gets a
:class:`Context` holding the global options, the command's own flag values and
arguments, and the output streams, and returns the exit code (or raises ``Stop``).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from fastkv.ctl.client import Client, ClusterError, NoEndpoints
from fastkv.ctl.output import EXIT_BAD_CONNECTION, EXIT_SERVER_ERROR, fail
from fastkv.flags import Flag, FlagSet, parse_bool

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def seconds(text: str) -> float:
    """A Go duration (``2s``, ``1m30s``, ``500ms``) in seconds."""
    if text in ("0", ""):
        return 0.0
    return sum(float(n) * _UNITS[u] for n, u in _DURATION_PART.findall(text))


@dataclass
class Context:
    """Everything a command needs: options, its arguments and where to write."""

    options: dict[str, str]
    values: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def flag(self, name: str) -> str:
        return self.values.get(name, "")

    def switch(self, name: str) -> bool:
        return parse_bool(self.values.get(name, "false"))

    def number(self, name: str) -> int:
        return int(self.values.get(name, "0") or 0)

    def option(self, name: str) -> str:
        return self.options.get(name, "")

    @property
    def output(self) -> str:
        return self.options.get("output", "simple")

    def endpoints(self) -> list[str]:
        """``--endpoints``, ``ETCDCTL_ENDPOINTS``, ``--endpoint``, ... in etcdctl's order."""
        text = (
            self.option("endpoints")
            or self.environ.get("ETCDCTL_ENDPOINTS", "")
            or self.option("endpoint")
            or self.environ.get("ETCDCTL_ENDPOINT", "")
            or self.option("peers")
            or self.environ.get("ETCDCTL_PEERS", "")
            or "http://127.0.0.1:2379,http://127.0.0.1:4001"
        )
        return [e if "://" in e else "http://" + e for e in text.split(",")]

    def new_client(self, sync: bool = True) -> Client:
        """A client on the configured endpoints, synced with the cluster unless ``--no-sync``."""
        user = self.option("username") or self.environ.get("ETCDCTL_USERNAME", "")
        name, _, password = user.partition(":")
        client = Client(
            self.endpoints(),
            timeout=seconds(self.options.get("timeout", "2s")),
            total_timeout=seconds(self.options.get("total-timeout", "5s")),
            debug=parse_bool(self.options.get("debug", "false")),
            username=name,
            password=password,
            err=self.err,
        )
        if sync and not parse_bool(self.options.get("no-sync", "false")):
            try:
                client.sync()
            except NoEndpoints as exc:
                self.err.write("etcd cluster has no published client endpoints.\n")
                self.err.write(
                    f"Try '--no-sync' if you want to access non-published client endpoints"
                    f"({','.join(exc.endpoints)}).\n"
                )
                raise fail(self.err, EXIT_SERVER_ERROR, exc) from None
            except ClusterError as exc:
                raise fail(self.err, EXIT_BAD_CONNECTION, exc) from None
        if client.debug:
            self.err.write(f"Cluster-Endpoints: {', '.join(client.endpoints)}\n")
        return client


@dataclass(frozen=True)
class Command:
    """One etcdctl command: name, one-line usage, argument synopsis, flags, help lines, action."""

    name: str
    usage: str
    args_usage: str
    flags: tuple[Flag, ...]
    run: Callable[[Context], int]
    option_lines: tuple[str, ...] = ()
    description: str = ""
    subcommands: tuple[Command, ...] = ()

    @property
    def flagset(self) -> FlagSet:
        return FlagSet(self.flags)

    def help_text(self, parent: str = "etcdctl") -> str:
        """The command's help, laid out as etcdctl's command-line library lays it out."""
        full = f"{parent} {self.name}"
        text = f"NAME:\n   {full} - {self.usage}\n\nUSAGE:\n   {full}"
        if self.subcommands:
            width = max(len(c.name) for c in self.subcommands)
            text += " command [command options] [arguments...]\n\nCOMMANDS:\n"
            text += "".join(f"   {c.name.ljust(width)}  {c.usage}\n" for c in self.subcommands)
            return text + "\nOPTIONS:\n   --help, -h  show help\n   \n"
        text += (" [command options]" if self.flags else "") + f" {self.args_usage}\n"
        if self.description:
            text += f"\nDESCRIPTION:\n   {self.description}\n"
        if self.option_lines:
            text += "\nOPTIONS:\n" + "".join(f"   {line}\n" for line in self.option_lines) + "   \n"
        return text


def bool_flag(names: str) -> Flag:
    return Flag(tuple(n.strip() for n in names.split(",")), "bool", "false")


def int_flag(name: str) -> Flag:
    return Flag((name,), "int", "0")


def str_flag(name: str) -> Flag:
    return Flag((name,), "string", "")


TTL = int_flag("ttl")
TTL_LINE = "--ttl value  key time-to-live in seconds (default: 0)"

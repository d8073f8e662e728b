"""The pieces every fleetctl command uses: flag definitions, the command table entry, the run context."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from fleetd.ctl.client import FleetClient
from fleetd.ctl.tunnel import Tunnel


@dataclass(frozen=True)
class Flag:
    """A flag: ``--name`` (also ``-name``), its aliases (``l`` for ``full``), kind and default."""

    name: str
    kind: type = bool
    default: Any = False
    help: str = ""
    aliases: tuple[str, ...] = ()

    def parse(self, text: str) -> Any:
        """Convert a value; ValueError when it does not fit the kind."""
        if self.kind is bool:
            lowered = text.lower()
            if lowered in ("1", "t", "true"):
                return True
            if lowered in ("0", "f", "false"):
                return False
            raise ValueError(f'invalid boolean value "{text}"')
        return self.kind(text)

    def usage(self) -> str:
        names = ", ".join("--" + n for n in (self.name, *self.aliases))
        default = f"={self.default}" if self.kind is not bool and self.default not in ("", None) else ""
        return f"{names}{default}\t{self.help}"


@dataclass
class Context:
    """What a command runs with: parsed flags, output streams, a lazily built client and, with
    ``--tunnel``, the open tunnel that every connection to the cluster goes through."""

    options: dict[str, Any]
    make_client: Callable[[], FleetClient]
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    _client: FleetClient | None = None
    tunnel: Tunnel | None = None

    @property
    def client(self) -> FleetClient:
        if self._client is None:
            self._client = self.make_client()
        return self._client

    def stdout(self, text: str) -> None:
        """Print a line on stdout."""
        print(text, file=self.out, flush=True)

    def stderr(self, text: str) -> None:
        """Print a line on stderr."""
        print(text, file=self.err, flush=True)

    async def reach(self, url: str) -> str:
        """The URL to connect to for the cluster's ``url``: itself, or its relay through the tunnel."""
        return url if self.tunnel is None else await self.tunnel.url(url)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        if self.tunnel is not None:
            await self.tunnel.close()


Runner = Callable[[Context, list[str]], Awaitable[int]]


@dataclass(frozen=True)
class Command:
    """One fleetctl command: how it is called and what it does."""

    name: str
    summary: str
    usage: str
    run: Runner
    flags: tuple[Flag, ...] = ()
    description: str = ""
    interspersed: bool = True
    needs_client: bool = True


BLOCK_FLAGS = (
    Flag("no-block", help="Do not wait until the units have reached their desired state before returning."),
    Flag("block-attempts", int, 0, "Wait until the units are in their desired state, polling up to this "
         "many times (each about 2s); 0 polls forever."),
)
REPLACE = Flag("replace", help="Replace the old scheduled units in the cluster with new versions.")
SIGN = Flag("sign", help="DEPRECATED - this option cannot be used")


def flag_table(flags: tuple[Flag, ...]) -> Mapping[str, Flag]:
    """Every name and alias -> flag."""
    return {name: f for f in flags for name in (f.name, *f.aliases)}

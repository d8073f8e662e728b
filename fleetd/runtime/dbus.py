"""systemd's manager over D-Bus, on asyncio (the pure-Python ``jeepney`` message library).

``SystemdManager`` is one connection to a bus (the system bus by default, the session bus for
``systemd --user``, or any D-Bus address such as ``unix:path=/run/dbus/system_bus_socket``) and the
``org.freedesktop.systemd1.Manager`` methods the agent uses (spec 5.5). The connection is opened on the
first call and opened again after it broke; every call has a timeout.

Errors: a reply of type error becomes ``DBusError`` (``name`` is the D-Bus error name such as
``org.freedesktop.systemd1.NoSuchUnit``, ``str()`` the message systemd sent); a bus that cannot be
reached, a broken connection or a call that times out becomes ``DBusUnavailable`` (an ``OSError``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jeepney import DBusAddress, HeaderFields, Message, MessageType, new_method_call  # type: ignore[import-untyped]
from jeepney.io.asyncio import (  # type: ignore[import-untyped]
    DBusConnection,
    DBusRouter,
    open_dbus_connection,
)

SYSTEMD_BUS_NAME = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER_INTERFACE = "org.freedesktop.systemd1.Manager"
UNIT_INTERFACE = "org.freedesktop.systemd1.Unit"
SERVICE_INTERFACE = "org.freedesktop.systemd1.Service"
PROPERTIES_INTERFACE = "org.freedesktop.DBus.Properties"

NO_SUCH_UNIT = "org.freedesktop.systemd1.NoSuchUnit"
UNKNOWN_METHOD = "org.freedesktop.DBus.Error.UnknownMethod"

#: Seconds a call may take (systemd answers Reload only once it is done).
CALL_TIMEOUT = 60.0


class DBusError(Exception):
    """The peer answered a call with an error: ``name`` is the D-Bus error name, ``str()`` its message."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message or name)
        self.name = name


class DBusUnavailable(OSError):
    """The bus cannot be reached, the connection broke or a call timed out."""


@dataclass(frozen=True, slots=True)
class UnitListing:
    """One entry of ``ListUnits``/``ListUnitsByNames``: a unit's states and its pending job (0 = none)."""

    name: str
    description: str
    load_state: str
    active_state: str
    sub_state: str
    following: str
    path: str
    job_id: int
    job_type: str
    job_path: str


class SystemdManager:
    """systemd's manager on one bus connection; see the module docstring."""

    def __init__(self, bus: str = "SYSTEM", timeout: float = CALL_TIMEOUT) -> None:
        self.bus = bus
        self.timeout = timeout
        self._conn: DBusConnection | None = None
        self._router: DBusRouter | None = None
        self._lock = asyncio.Lock()

    # -- the connection ------------------------------------------------------------------------------

    async def _connected(self) -> DBusRouter:
        async with self._lock:
            if self._router is not None:
                return self._router
            try:
                conn = await asyncio.wait_for(open_dbus_connection(self.bus), self.timeout)
            except (OSError, EOFError, ValueError, KeyError, TimeoutError) as err:
                reason = str(err) or type(err).__name__
                raise DBusUnavailable(f"cannot connect to the D-Bus {self.bus}: {reason}") from None
            router = DBusRouter(conn)
            await router.__aenter__()
            self._conn, self._router = conn, router
            return router

    async def close(self) -> None:
        """Close the connection (a later call opens a new one)."""
        async with self._lock:
            router, conn = self._router, self._conn
            self._router = self._conn = None
        if router is not None:
            with contextlib.suppress(Exception):
                await router.__aexit__(None, None, None)
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def call(self, method: str, signature: str | None = None, body: tuple[Any, ...] = (), *,
                   path: str = MANAGER_PATH, interface: str = MANAGER_INTERFACE,
                   destination: str = SYSTEMD_BUS_NAME) -> tuple[Any, ...]:
        """Call ``interface.method`` on ``path``; the reply's body.

        Raises ``DBusError`` (an error reply) or ``DBusUnavailable``."""
        router = await self._connected()
        message = new_method_call(DBusAddress(path, destination, interface), method, signature, body)
        try:
            reply: Message = await asyncio.wait_for(router.send_and_get_reply(message), self.timeout)
        except TimeoutError:
            raise DBusUnavailable(f"{method} got no answer within {self.timeout:g}s") from None
        except Exception as err:  # the router closed, the socket broke: start afresh next time
            await self.close()
            raise DBusUnavailable(f"D-Bus connection lost during {method}: {err or type(err).__name__}") \
                from None
        if reply.header.message_type is MessageType.error:
            name = str(reply.header.fields.get(HeaderFields.error_name, "org.freedesktop.DBus.Error.Failed"))
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            raise DBusError(name, text)
        return tuple(reply.body)

    async def properties(self, path: str, interface: str) -> dict[str, Any]:
        """Every property of ``interface`` on object ``path`` (variants unwrapped)."""
        (values,) = await self.call("GetAll", "s", (interface,), path=path, interface=PROPERTIES_INTERFACE)
        return {key: variant[1] for key, variant in values.items()}

    # -- the manager's methods -------------------------------------------------------------------------

    async def link_unit_files(self, paths: Sequence[str], runtime: bool, force: bool) -> None:
        """``LinkUnitFiles``: make unit files outside the search path known (runtime: under /run)."""
        await self.call("LinkUnitFiles", "asbb", (list(paths), runtime, force))

    async def enable_unit_files(self, names: Sequence[str], runtime: bool, force: bool) -> None:
        """``EnableUnitFiles``: create the links an ``[Install]`` section asks for."""
        await self.call("EnableUnitFiles", "asbb", (list(names), runtime, force))

    async def disable_unit_files(self, names: Sequence[str], runtime: bool) -> None:
        """``DisableUnitFiles``: remove every link to the units (the ``LinkUnitFiles`` one too)."""
        await self.call("DisableUnitFiles", "asb", (list(names), runtime))

    async def reload(self) -> None:
        """``Reload`` (daemon-reload); returns once systemd has reloaded."""
        await self.call("Reload")

    async def start_unit(self, name: str, mode: str = "replace") -> str:
        """``StartUnit``: queue a start job; its object path."""
        (job,) = await self.call("StartUnit", "ss", (name, mode))
        return str(job)

    async def stop_unit(self, name: str, mode: str = "replace") -> str:
        """``StopUnit``: queue a stop job; its object path."""
        (job,) = await self.call("StopUnit", "ss", (name, mode))
        return str(job)

    async def reset_failed_unit(self, name: str) -> None:
        """``ResetFailedUnit``: forget that ``name`` failed."""
        await self.call("ResetFailedUnit", "s", (name,))

    async def load_unit(self, name: str) -> str:
        """``LoadUnit``: the unit's object path, loading it from disk if needed."""
        (path,) = await self.call("LoadUnit", "s", (name,))
        return str(path)

    async def list_units_by_names(self, names: Sequence[str]) -> list[UnitListing]:
        """``ListUnitsByNames`` (systemd >= 230): every name, loaded from disk if needed."""
        (rows,) = await self.call("ListUnitsByNames", "as", (list(names),))
        return [UnitListing(*row) for row in rows]

    async def list_units(self) -> list[UnitListing]:
        """``ListUnits``: the units systemd has in memory."""
        (rows,) = await self.call("ListUnits")
        return [UnitListing(*row) for row in rows]

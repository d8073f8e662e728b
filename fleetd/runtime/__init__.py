"""Unit runtimes: what actually runs the units the agent loads on a machine.

``fleetd.runtime.base`` defines the interface (``UnitRuntime``) and the state types; ``supervisor``
is the built-in runtime for hosts without systemd, built on ``service`` (a ``[Service]`` section as a
typed ``ServiceSpec``) and ``journal`` (each unit's output kept as its journal).
"""

from fleetd.runtime.base import NOT_FOUND, UnitRuntime, UnitRuntimeError, UnitRuntimeState, UnitStatus

__all__ = ["NOT_FOUND", "UnitRuntime", "UnitRuntimeError", "UnitRuntimeState", "UnitStatus"]

"""fleetd: a fleet-compatible cluster init system on top of any etcd v2 endpoint.

Systemd unit files carrying an ``[X-Fleet]`` section are scheduled across machines by one elected
engine and run on each host by its agent. Decisions are made in pure code (``fleetd.unit``,
``fleetd.job``, ``fleetd.machine``, ``fleetd.engine``, ``fleetd.agent``, ``fleetd.registry.layout``):
the engine and the agent each compute a plan from state, every task carrying a human-readable reason,
and thin adapters execute it.
"""

__version__ = "1.0.0"

#: The fleet release whose behaviour (wire formats, messages, scheduling) is reproduced.
FLEET_VERSION = "v1.0.0"

"""The agent: every fleetd runs the units the engine scheduled to its machine, plus matching global units.

``fleetd.agent.plan`` compares desired and loaded units and orders the load/unload/start/stop tasks;
executing them against a unit runtime is the daemon's job.
"""

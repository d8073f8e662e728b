"""The engine: one elected fleetd decides where every non-global unit runs.

``fleetd.engine.scheduler`` holds the placement rules, ``fleetd.engine.plan`` turns a snapshot of the
cluster into schedule/unschedule tasks, each with its reason. Both are pure; the daemon executes.
"""

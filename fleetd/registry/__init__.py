"""fleet's registry in etcd v2: ``fleetd.registry.layout`` names every key and encodes every value.

Both fleetd and ``fleetctl --driver=etcd`` read and write through it, so any fleet tool looking at the
same etcd sees the same cluster.
"""

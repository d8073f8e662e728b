"""fleetctl: fleet's command-line client (spec 1), over fleetd's API or straight to etcd.

``fleetd.ctl.main.main`` parses flags and dispatches; ``fleetd.ctl.client`` speaks to the cluster
(``--driver=API`` over HTTP, ``--driver=etcd`` through the registry with the API's own logic);
one module per command group prints fleet's output.
"""

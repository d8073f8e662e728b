"""fleet's HTTP API v1 (spec 4), served by every fleetd on a unix socket and/or TCP.

``fleetd.api.server.start_api`` starts the listeners; ``fleetd.api.resources`` answers requests;
``fleetd.api.pagination`` holds fleet's page tokens; ``fleetd.api.discovery`` the discovery document.
"""

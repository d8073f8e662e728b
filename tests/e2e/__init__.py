"""End-to-end tests: fleetd machines, Docker containers and fastkv together."""

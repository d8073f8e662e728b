"""Unit tests of the pure fleetd core."""

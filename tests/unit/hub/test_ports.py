"""Ports for test and local brokers: free, and out of the way of outgoing connections."""

from __future__ import annotations

import socket

from vigil.hub.broker import _ephemeral_range, free_port_block


def test_a_port_block_is_free_and_below_the_outgoing_connections_range() -> None:
    # A block inside the range outgoing connections take source ports from was free when
    # checked, and a starting three-node cluster's own connections then took one of its ports.
    low, _ = _ephemeral_range()
    for _ in range(20):
        base = free_port_block(6)
        if low - 6 > 10_000:
            assert base + 6 <= low
        for port in range(base, base + 6):
            with socket.socket() as probe:
                # As a server binds (the broker, uvicorn): a port a stopped server's
                # connections still hold in TIME_WAIT is free to it.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(("127.0.0.1", port))  # raises if taken

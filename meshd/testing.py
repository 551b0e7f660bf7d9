"""Support for the tests and benchmarks that start real meshd processes (stdlib only).

Shipped in the package, as `aiohttp.test_utils` is, so that tests/ and benchmarks/ share one
implementation without path tricks.
"""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


class NoFreePortError(RuntimeError):
    """The host has no free TCP+UDP port pair left in its ephemeral range."""


def free_ports(n: int, host: str = LOOPBACK) -> list[int]:
    """`n` distinct ports, each free on `host` for both TCP and UDP (a DNS port needs both).

    Picking ports one at a time can return the same port twice: the kernel may hand a port
    released by the first pick to the second. Here every picked port stays bound until all are
    picked, and all are released together. They remain free only until someone else binds
    them, so pick all ports of one process in one call, right before starting it.
    """
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            if len(held) > 4 * n + 200:
                raise NoFreePortError(f"found {len(ports)} of {n} free ports on {host}")
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(tcp)
            tcp.bind((host, 0))
            port = int(tcp.getsockname()[1])
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            held.append(udp)
            try:
                udp.bind((host, port))
            except OSError:
                continue  # UDP side in use: the TCP socket stays held so it is not picked again
            ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports

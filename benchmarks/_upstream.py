#!/usr/bin/env python3
"""A tiny HTTP/1.1 responder for mesh_overhead.py (the "api" service; not a benchmark itself).

Every request, whatever its method and path, gets `200` with a short body, on keep-alive
connections (pipelining works). Raw asyncio protocol, no framework, so the upstream costs as
little as possible. Listens on 127.0.0.1 only, stops on SIGTERM / SIGINT.

    python benchmarks/_upstream.py --port 18080
"""

from __future__ import annotations

import argparse
import asyncio
import signal


class Responder(asyncio.Protocol):
    def __init__(self, response: bytes) -> None:
        self.response = response
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        out = []
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = self.buf[:end].lower()
            length = 0
            i = head.find(b"\r\ncontent-length:")
            if i >= 0:
                line_end = head.find(b"\r\n", i + 2)
                value = head[i + 17 : line_end if line_end >= 0 else len(head)]
                length = int(value.strip() or b"0")
            if len(self.buf) < end + 4 + length:
                break
            self.buf = self.buf[end + 4 + length :]
            out.append(self.response)
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(port: int, body: bytes) -> None:
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Responder(response), "127.0.0.1", port, backlog=1024)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    async with server:
        await stop


def main() -> None:
    p = argparse.ArgumentParser(
        description="Answer every HTTP/1.1 request with 200 and a short body, on 127.0.0.1."
    )
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--body", default="ok\n", help="response body")
    args = p.parse_args()
    asyncio.run(serve(args.port, args.body.encode()))


if __name__ == "__main__":
    main()

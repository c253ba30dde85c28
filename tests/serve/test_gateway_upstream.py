"""The gateway's upstream connection handling, against a raw socket server that misbehaves on cue."""

from __future__ import annotations

import asyncio

from bawt_vllm.supervisor.serve.gateway import Gateway
from helpers import run

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


def test_a_connection_closed_before_any_response_is_retried_once():
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(len(connections) + 1)
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)
        if len(connections) > 1:  # the first connection dies like a keep-alive closed under us
            writer.write(OK)
            await writer.drain()
        writer.close()

    async def scenario() -> tuple[int, bytes]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        gateway = Gateway.__new__(Gateway)
        gateway._session = None
        try:
            response = await gateway._send("POST", f"http://127.0.0.1:{port}/v1/completions", b"{}", {})
            async with response:
                return response.status, await response.read()
        finally:
            if gateway._session is not None:
                await gateway._session.close()
            server.close()
            await server.wait_closed()

    status, body = run(scenario())
    assert (status, body) == (200, b"{}")
    assert connections == [1, 2]

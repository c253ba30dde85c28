"""The gateway's pooled upstream connections, against a raw socket server that misbehaves on cue."""

from __future__ import annotations

import asyncio
import os

import pytest
from bawt_vllm.supervisor.serve import eventloop
from bawt_vllm.supervisor.serve.upstream import Address, Mode, UpstreamClosed, UpstreamPool
from helpers import run

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
REQUEST = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"


class Collect:
    """A sink that keeps the bytes passed on as they came."""

    def __init__(self) -> None:
        self.received = b""

    def attach(self, transport: object) -> None:
        pass

    def head(self, status: int, headers: list[tuple[bytes, bytes]]) -> Mode:
        return Mode.RAW

    def raw(self, data: bytes) -> None:
        self.received += data

    def first_body(self) -> None:
        pass

    def body(self, data: bytes) -> None:
        raise AssertionError("RAW was asked for")


async def serve(answers: list[bytes | None], *, cut: frozenset[int] = frozenset()) -> tuple[asyncio.Server, list[int]]:
    """A server answering its n-th request with answers[n]; None: close the connection unanswered;
    cut: the requests after whose answer it closes the connection (an answer not whole is cut off)."""
    requests: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(2)
                requests.append(len(requests))
                answer = answers[len(requests) - 1]
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if len(requests) - 1 in cut:
                    break
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), requests


def test_a_pooled_connection_closed_before_any_response_is_retried_once_on_a_new_one():
    async def scenario() -> tuple[list[bytes], list[int]]:
        server, requests = await serve([OK, None, OK])  # the 2nd request finds its pooled connection closing
        pool = UpstreamPool()
        address = Address("127.0.0.1", server.sockets[0].getsockname()[1])
        try:
            replies = []
            for _ in range(2):
                sink = Collect()
                await pool.exchange(address, REQUEST, sink)
                replies.append(sink.received)
            return replies, requests
        finally:
            pool.close()
            server.close()
            await server.wait_closed()

    replies, requests = run(scenario())
    assert replies == [OK, OK]
    assert requests == [0, 1, 2], "the request the closing connection dropped was sent once more"


def test_a_response_cut_off_after_it_began_is_not_sent_again():
    """Even on a pooled connection (which is tried again when it closes before any answer), a
    response that had begun is not asked for a second time: its generation had started."""
    partial = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    partial += b"10\r\ndata: {\"a\": 1}\n\n\r\n"

    async def scenario() -> tuple[UpstreamClosed, bytes, list[int]]:
        server, requests = await serve([OK, partial, OK], cut=frozenset({1}))
        pool = UpstreamPool()
        address = Address("127.0.0.1", server.sockets[0].getsockname()[1])
        try:
            await pool.exchange(address, REQUEST, Collect())  # its connection goes back to the pool
            sink = Collect()
            with pytest.raises(UpstreamClosed) as failure:
                await asyncio.wait_for(pool.exchange(address, REQUEST, sink), 10)
            return failure.value, sink.received, requests
        finally:
            pool.close()
            server.close()
            await server.wait_closed()

    error, passed_on, requests = run(scenario())
    assert error.started and error.at_chunk_boundary
    assert passed_on == partial, "what came was passed on, and nothing else"
    assert requests == [0, 1], "a generation that had begun is never asked for twice"


def test_asyncio_can_be_chosen_over_uvloop(monkeypatch):
    async def name() -> str:
        return eventloop.loop_name()

    monkeypatch.setenv(eventloop.CHOICE_ENV, "asyncio")
    assert eventloop.run(name()) == "asyncio"
    monkeypatch.delenv(eventloop.CHOICE_ENV)
    expected = "uvloop" if eventloop.loop_factory() is not None else "asyncio"
    assert eventloop.run(name()) == expected
    assert os.environ.get(eventloop.CHOICE_ENV) is None

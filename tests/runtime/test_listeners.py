"""Waiting for a port's listening socket to go, before a restart binds it again."""

from __future__ import annotations

import asyncio
import socket

from bawt_vllm.supervisor.runtime.listeners import wait_port_released
from helpers import run


def listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_the_wait_ends_when_the_listening_socket_closes():
    sock = listening_socket()
    port = sock.getsockname()[1]

    async def scenario() -> tuple[bool, bool]:
        waiting = asyncio.ensure_future(wait_port_released(port, timeout_s=20))
        await asyncio.sleep(0.3)  # the old tree still holds the port meanwhile
        held = waiting.done()
        sock.close()
        return held, await asyncio.wait_for(waiting, 10)

    try:
        held, released = run(scenario())
    finally:
        sock.close()
    assert not held and released


def test_a_port_still_held_at_the_deadline_is_reported():
    sock = listening_socket()
    try:
        assert run(wait_port_released(sock.getsockname()[1], timeout_s=0.3)) is False
    finally:
        sock.close()


def test_a_free_port_needs_no_wait():
    sock = listening_socket()
    port = sock.getsockname()[1]
    sock.close()
    assert run(wait_port_released(port, timeout_s=0)) is True

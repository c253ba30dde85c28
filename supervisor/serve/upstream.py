"""Pooled keep-alive connections upstream, one request/response exchange at a time on each.

An exchange writes a request's bytes and hands the response to a Sink as it arrives, in the
mode the sink picks once it has seen the status and headers: RAW passes the bytes on exactly
as the upstream framed them (the fast path: nothing is re-encoded), BODY passes the de-framed
body (for a stream the gateway has already opened itself), COLLECT keeps the body for the
sink to read at the end (errors, which the gateway may reshape). llhttp (through httptools)
parses only the response's framing, to know where it ends.
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass
from typing import Protocol, cast

import httptools

from .wire import Headers

# Idle connections are not reused after this long: vLLM's uvicorn closes them at 5 s, and a
# request must never be sent down a connection the server is closing.
KEEPALIVE_S = 3.0
CONNECT_TIMEOUT_S = 10.0


class Mode(enum.Enum):
    RAW = "raw"
    BODY = "body"
    COLLECT = "collect"


class Sink(Protocol):
    def attach(self, transport: asyncio.Transport) -> None:
        """The upstream transport, whose reading the sink pauses while its client is slow."""

    def head(self, status: int, headers: Headers) -> Mode:
        """The response's status and headers (names lower-cased); returns how to pass it on."""

    def raw(self, data: bytes) -> None:
        """RAW: bytes as the upstream sent them, head included."""

    def first_body(self) -> None:
        """The first body bytes arrived (time to first token)."""

    def body(self, data: bytes) -> None:
        """BODY: de-framed body bytes."""


class UpstreamError(Exception):
    """The exchange failed; started: some of the response had arrived (and was passed on)."""

    def __init__(self, message: str, *, started: bool = False, at_chunk_boundary: bool = False) -> None:
        super().__init__(message)
        self.started = started
        self.at_chunk_boundary = at_chunk_boundary  # what was passed on ends between two chunks


class UpstreamUnreachable(UpstreamError):
    pass


class UpstreamClosed(UpstreamError):
    pass


@dataclass(frozen=True, slots=True)
class Address:
    host: str  # a host name or address, or a unix socket's path when port is None
    port: int | None = None

    def __str__(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"


@dataclass(slots=True)
class Response:
    status: int
    headers: Headers
    body: bytes  # COLLECT only; empty otherwise


class _Connection(asyncio.Protocol):
    """One pooled connection, and the exchange on it: httptools calls its on_* methods while it
    feeds the parser (one parser for the connection's life: llhttp starts over after each message)."""

    __slots__ = (
        "address",
        "body_seen",
        "chunked",
        "close_delimited",
        "complete",
        "done",
        "framed",
        "head_only",
        "headers",
        "idle_since",
        "keep_alive",
        "lost",
        "mode",
        "parser",
        "parts",
        "pending",
        "pool",
        "sink",
        "started",
        "status",
        "tail",
        "transport",
    )

    def __init__(self, pool: UpstreamPool, address: Address) -> None:
        self.pool = pool
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.idle_since = 0.0
        self.lost = False
        self.done: asyncio.Future[Response] | None = None  # set while an exchange is on

    # -- the exchange: one request written, its response read ---------------------------------
    def send(self, data: bytes, sink: Sink, head_only: bool) -> asyncio.Future[Response]:
        """Write data; the future holds the response (a plain method, not a coroutine: one frame
        less on every request)."""
        assert self.transport is not None
        self.sink = sink
        self.head_only = head_only
        self.headers: Headers = []
        self.mode: Mode | None = None
        self.pending = b""  # response bytes before the mode is known
        self.started = self.complete = self.body_seen = False
        self.parts: list[bytes] = []
        self.status = 0
        self.close_delimited = self.chunked = self.framed = self.keep_alive = False
        self.tail = b""  # the end of what was passed on RAW
        done = self.done = asyncio.get_running_loop().create_future()
        sink.attach(self.transport)
        self.transport.write(data)
        return done

    def abandon(self) -> None:
        """The client went away: closing the connection is how vLLM learns to stop generating."""
        self.done = None
        self._close()

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self.headers.append((name, value))
        if name == b"transfer-encoding":
            self.chunked = b"chunked" in value.lower()
            self.framed = True
        elif name == b"content-length":
            self.framed = True

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # an interim response (never asked for): its headers are not the response's
            self.headers = []
            self.chunked = self.framed = False
            return
        self.status = status
        self.close_delimited = not self.framed and status not in (204, 304)
        self.mode = self.sink.head(status, self.headers)
        if self.head_only:
            self.complete = True

    def on_body(self, data: bytes) -> None:
        if not self.body_seen:
            self.body_seen = True
            self.sink.first_body()
        if self.mode is Mode.BODY:
            self.sink.body(data)
        elif self.mode is Mode.COLLECT:
            self.parts.append(data)

    def on_message_complete(self) -> None:
        if self.status:  # not an interim response
            self.complete = True
            self.keep_alive = self.parser.should_keep_alive()  # llhttp forgets it once the message is done

    # -- the connection ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        if self.done is None:  # nothing was asked: a server that talks out of turn is not reused
            self._close()
            return
        self.started = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(UpstreamClosed(f"the upstream sent a malformed response: {error}",
                                      started=self.mode is not None))
            return
        mode = self.mode
        if mode is Mode.RAW:
            if self.pending:
                data, self.pending = self.pending + data, b""
            self.sink.raw(data)
            self.tail = data
        elif mode is None:
            self.pending += data
        if self.complete:
            self._finish(keep=self.keep_alive and not self.head_only)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.pool.forget(self)
        if self.done is None:
            return
        if self.mode is not None and self.close_delimited:
            self._finish(keep=False)  # the body ran until the connection closed: that is its end
            return
        why = "before it sent a response" if self.mode is None else "in the middle of its response"
        # An event stream's chunks end with the event's blank line and the chunk's CRLF: what was
        # passed on ends there, or the break came inside a chunk (and only closing can tell).
        boundary = self.mode is Mode.RAW and self.chunked and self.tail.endswith(b"\n\r\n")
        self._fail(UpstreamClosed(f"the upstream closed the connection {why}", started=self.started,
                                  at_chunk_boundary=boundary))

    def _finish(self, *, keep: bool) -> None:
        done, self.done = self.done, None
        if keep and not self.lost:
            self.pool.release(self)
        else:
            self._close()
        if done is not None and not done.done():
            done.set_result(Response(self.status, self.headers, b"".join(self.parts)))

    def _fail(self, error: UpstreamError) -> None:
        done, self.done = self.done, None
        self._close()
        if done is not None and not done.done():
            done.set_exception(error)

    def _close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()


class UpstreamPool:
    def __init__(self, keepalive_s: float = KEEPALIVE_S) -> None:
        self.keepalive_s = keepalive_s
        self._idle: dict[Address, list[_Connection]] = {}
        self._closed = False

    async def exchange(self, address: Address, data: bytes, sink: Sink, *, head_only: bool = False) -> Response:
        """data sent to address, the response handed to sink; raises UpstreamError.

        A pooled connection that closes before any response byte is tried once more on a new
        one: the server never took the request, so sending it again cannot run it twice.
        """
        connection = self._take_idle(address)
        fresh = connection is None
        if connection is None:
            connection = await self._connect(address)
        while True:
            try:
                return await connection.send(data, sink, head_only)
            except UpstreamClosed as error:
                if error.started or fresh:
                    raise
            except asyncio.CancelledError:
                connection.abandon()
                raise
            connection, fresh = await self._connect(address), True

    def _take_idle(self, address: Address) -> _Connection | None:
        idle = self._idle.get(address)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if not connection.lost and now - connection.idle_since < self.keepalive_s:
                return connection
            connection._close()
        return None

    async def _connect(self, address: Address) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                if address.port is None:
                    _, protocol = await loop.create_unix_connection(lambda: _Connection(self, address), address.host)
                else:
                    _, protocol = await loop.create_connection(lambda: _Connection(self, address),
                                                               address.host, address.port)
        except (OSError, TimeoutError) as error:
            reason = "timed out" if isinstance(error, TimeoutError) else (error.strerror or str(error))
            raise UpstreamUnreachable(f"cannot connect to {address}: {reason}") from None
        return protocol

    def release(self, connection: _Connection) -> None:
        if self._closed:
            connection._close()
            return
        connection.idle_since = time.monotonic()
        self._idle.setdefault(connection.address, []).append(connection)

    def forget(self, connection: _Connection) -> None:
        idle = self._idle.get(connection.address)
        if idle and connection in idle:
            idle.remove(connection)

    def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection._close()
        self._idle.clear()

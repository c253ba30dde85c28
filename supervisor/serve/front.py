"""The gateway's listening side: HTTP/1.1 connections parsed by llhttp (httptools), nothing more.

Each connection reads requests (pipelined ones are answered in order), holds them to their
deadlines and size limit, and hands each whole request to the gateway's dispatch with itself
as the Responder. A Responder writes either bytes already framed (a relayed response, as the
upstream sent it) or answers it frames itself. When the client is slower than the upstream,
the linked upstream transport stops being read until the client catches up; when the client
goes away, the request's task is cancelled (which closes its upstream connection).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote

import httptools

from . import wire
from .wire import Headers

log = logging.getLogger("bawt_vllm.gateway")

MAX_BODY_BYTES = 32 * 1024 * 1024  # the largest request body accepted (chat histories, images as base64)
# A client has this long to send a request head (from connecting, or from the end of its last
# response), and as long again for the body; then it is answered 408 or simply disconnected.
READ_DEADLINE_S = 30.0
MAX_QUEUED = 16  # pipelined requests read ahead before the connection stops reading
# After refusing a request whose body is still coming, what the client sends is read and dropped
# this long before closing: closing on unread data would reset the connection, and the client
# could lose the answer.
LINGER_S = 2.0


@dataclass(slots=True)
class Request:
    method: bytes
    target: bytes  # the request target as sent
    path: str  # its path, percent-decoded
    query: bytes  # its query as sent, without "?"
    version: bytes  # b"1.1" or b"1.0"
    headers: Headers  # names lower-cased, in the order sent
    body: bytes
    keep_alive: bool

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


Dispatch = Callable[[Request, "Connection"], Awaitable[None]]


class Connection(asyncio.Protocol):
    """One client connection: the request parser's callbacks, and the Responder of the request
    being answered."""

    def __init__(self, dispatch: Dispatch, registry: set[Connection] | None = None) -> None:
        self._dispatch = dispatch
        self._registry = registry if registry is not None else set()
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_at = 0.0
        self._overdue: Callable[[], None] | None = None
        self._queue: collections.deque[Request] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._reading_paused = False
        self._discarding = False
        # the request being read
        self._fresh_request()
        # the response being written
        self._linked: asyncio.Transport | None = None
        self._client_paused = False
        self.started = False  # has any byte of the current response gone out?
        self._close_after = False

    # -- the connection ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes
        self._registry.add(self)
        self._arm(self._head_overdue)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(501, "protocol upgrades (websockets) are not served here", "not_implemented")
        except httptools.HttpParserError as error:
            if not self._closing:
                self._refuse(400, f"malformed HTTP request: {error}", "invalid_request")

    def eof_received(self) -> bool:
        return False  # a client that stops sending is gone: close, which cancels its request

    def connection_lost(self, exc: Exception | None) -> None:
        self._registry.discard(self)
        self._closing = True
        self._disarm()
        if self._deadline is not None:
            self._deadline.cancel()
        if self._task is not None:
            self._task.cancel()

    def pause_writing(self) -> None:
        self._client_paused = True
        if self._linked is not None:
            self._linked.pause_reading()

    def resume_writing(self) -> None:
        self._client_paused = False
        if self._linked is not None and not self._linked.is_closing():
            self._linked.resume_reading()

    # -- deadlines ----------------------------------------------------------------------------
    # One timer per connection, re-aimed rather than replaced: arming for each request costs an
    # assignment, and the timer, when it fires early, sets itself for the deadline now in force.
    def _arm(self, overdue: Callable[[], None]) -> None:
        self._overdue = overdue
        self._deadline_at = self._loop.time() + READ_DEADLINE_S
        if self._deadline is None:
            self._deadline = self._loop.call_at(self._deadline_at, self._check_deadline)

    def _disarm(self) -> None:
        self._overdue = None

    def _check_deadline(self) -> None:
        self._deadline = None
        if self._overdue is None or self._closing:
            return
        if self._loop.time() < self._deadline_at:
            self._deadline = self._loop.call_at(self._deadline_at, self._check_deadline)
            return
        overdue, self._overdue = self._overdue, None
        overdue()

    def _head_overdue(self) -> None:
        if self._task is None and self.transport is not None:
            self.transport.close()  # nothing to answer: a head that never came

    def _body_overdue(self) -> None:
        self._refuse(408, f"the request body did not arrive within {READ_DEADLINE_S:g} s", "request_timeout")

    def _fresh_request(self) -> None:
        self._url = b""
        self._headers: Headers = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._too_large = self._expects = False
        self._declared: bytes | None = None

    # -- the parser's callbacks -------------------------------------------------------------
    # (no on_message_begin: httptools calls only what is defined; each request's state is fresh
    # from the constructor or the end of the request before)
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self._headers.append((name, value))
        if name == b"content-length":
            self._declared = value
        elif name == b"expect":
            self._expects = value.lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        declared = self._declared
        if declared is not None and declared.strip().isdigit() and int(declared) > MAX_BODY_BYTES:
            self._too_large = True
            self._refuse_too_large()
            return
        if self._expects and self._task is None and not self._queue and self.transport is not None:
            self.transport.write(wire.CONTINUE)
        self._arm(self._body_overdue)

    def on_body(self, data: bytes) -> None:
        self._body_size += len(data)
        if self._too_large:
            return
        if self._body_size > MAX_BODY_BYTES:
            self._too_large = True
            self._refuse_too_large()
        else:
            self._body.append(data)

    def on_message_complete(self) -> None:
        self._disarm()
        if self._too_large or self._closing:
            return
        target = self._url
        url = httptools.parse_url(target)
        request = Request(self._parser.get_method(), target, _decoded(url.path), url.query or b"",
                          self._parser.get_http_version().encode(), self._headers, b"".join(self._body),
                          self._parser.should_keep_alive())
        self._fresh_request()
        self._queue.append(request)
        if self._task is None:
            self._next()
        elif len(self._queue) >= MAX_QUEUED and self.transport is not None:
            self.transport.pause_reading()
            self._reading_paused = True

    def _refuse_too_large(self) -> None:
        self._refuse(413, f"request body too large: the gateway accepts at most {MAX_BODY_BYTES} bytes",
                     "request_too_large")

    # -- answering, one request at a time ----------------------------------------------------
    def _next(self) -> None:
        if self._closing:
            return
        if not self._queue:
            self._arm(self._head_overdue)
            return
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        request = self._queue.popleft()
        self.started = False
        self._close_after = not request.keep_alive
        self._task = self._loop.create_task(self._answer(request))

    async def _answer(self, request: Request) -> None:
        try:
            await self._dispatch(request, self)
        except asyncio.CancelledError:
            return  # the client went away
        except Exception:
            log.exception("gateway error on %s %s", request.method.decode(), request.path)
            if self.started:
                self._close_after = True
            else:
                self.send_json(500, wire.error_payload("internal error in the bawt-vllm gateway (details in the "
                                                       "daemon log)", type_="server_error", code="internal_error"))
        self._task = None
        self._linked = None
        if self._close_after:
            self.close()
        else:
            self._next()

    def _refuse(self, status: int, message: str, code: str) -> None:
        """An answer to a request that is not read to its end: sent after the ones before it, then close."""
        self._disarm()
        if self._closing or self.transport is None:
            return
        self._closing = True
        self._discarding = True
        kind = "server_error" if status >= 500 else "invalid_request_error"
        body = wire.json_bytes(wire.error_payload(message, type_=kind, code=code))
        head = wire.response_head(status, [(b"Content-Type", wire.JSON_TYPE)], length=len(body), close=True)
        if self._task is None:
            self._write_and_close(head + body)
        else:  # wait for the answer in progress, then say it
            self._queue.clear()
            self._task.add_done_callback(lambda _task: self._write_and_close(head + body))

    def _write_and_close(self, data: bytes) -> None:
        """data, then our side closed; the rest of what the client sends is dropped until it
        closes too, or LINGER_S has passed."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if transport.can_write_eof():
            transport.write_eof()
            self._loop.call_later(LINGER_S, transport.close)
        else:
            transport.close()

    # -- the Responder: what dispatch uses -----------------------------------------------------
    def link(self, upstream: asyncio.Transport) -> None:
        """upstream's reading follows this client's pace while its response is relayed."""
        self._linked = upstream
        if self._client_paused:
            upstream.pause_reading()

    def write(self, data: bytes) -> None:
        """Bytes already framed (a relayed response)."""
        self.started = True
        if self.transport is not None:
            self.transport.write(data)

    def send(self, status: int, headers: Headers, body: bytes) -> None:
        self.write(wire.response_head(status, headers, length=len(body), close=self._close_after) + body)

    def send_json(self, status: int, payload: Any, headers: Headers | None = None) -> None:
        self.send(status, [(b"Content-Type", wire.JSON_TYPE), *(headers or [])], wire.json_bytes(payload))

    def start_stream(self, status: int, headers: Headers) -> None:
        self.write(wire.response_head(status, headers, length=None, close=self._close_after))

    def stream(self, data: bytes) -> None:
        if data:
            self.write(wire.chunk(data))

    def end_stream(self) -> None:
        self.write(wire.LAST_CHUNK)

    def close_after(self) -> None:
        """Close the connection once this response is written (its framing cannot be finished)."""
        self._close_after = True

    def close(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection now (shutdown): what is in flight is cancelled."""
        self._closing = True
        if self.transport is not None:
            self.transport.abort()


def _decoded(path: bytes) -> str:
    text = path.decode("latin-1")
    return unquote(text) if "%" in text else text


class Listener:
    """The front's listening socket and the connections it accepted."""

    def __init__(self, dispatch: Dispatch) -> None:
        self._dispatch = dispatch
        self.connections: set[Connection] = set()
        self.server: asyncio.Server | None = None

    async def listen(self, host: str, port: int) -> None:
        """Bind (SO_REUSEADDR, as the daemon has always bound it); OSError if it cannot."""
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._accepted, host, port, reuse_address=True)

    def _accepted(self) -> Connection:
        return Connection(self._dispatch, self.connections)

    @property
    def port(self) -> int:
        assert self.server is not None, "listen() first"
        return int(self.server.sockets[0].getsockname()[1])

    def close(self) -> None:
        """Stop listening, and end every connection (their requests in flight are cancelled)."""
        if self.server is not None:
            self.server.close()
        for connection in list(self.connections):
            connection.abort()

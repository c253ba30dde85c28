"""HTTP/1.1 on the wire: the few byte shapes the gateway's front writes itself.

The front (front.py) relays most responses as the upstream framed them; it builds only its
own answers (errors, the SSE stream it opens while a model loads) and request heads for
upstream, so this is all the framing it needs.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

Headers = list[tuple[bytes, bytes]]

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"
SSE_HEADERS: Headers = [(b"Content-Type", b"text/event-stream"), (b"Cache-Control", b"no-cache")]
JSON_TYPE = b"application/json; charset=utf-8"

# Request headers that describe one hop, never forwarded: the front frames each request anew.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"expect",
                        b"upgrade", b"te", b"trailer", b"proxy-connection"})


def reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


def response_head(status: int, headers: Headers, *, length: int | None, close: bool) -> bytes:
    """A status line and headers: Content-Length when length is known, else chunked framing."""
    lines = [b"HTTP/1.1 %d %s" % (status, reason(status))]
    lines.extend(name + b": " + value for name, value in headers)
    lines.append(b"Content-Length: %d" % length if length is not None else b"Transfer-Encoding: chunked")
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def chunk(data: bytes) -> bytes:
    """data as one chunk of a chunked body (never empty: that would end the body)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def json_bytes(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def error_payload(message: str, *, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def sse_event(payload: Any) -> bytes:
    return b"data: " + json_bytes(payload) + b"\n\n"


def request_head(method: bytes, target: bytes, version: bytes, host: bytes, headers: Headers, length: int) -> bytes:
    """A request head for upstream; headers must hold no hop-by-hop header (the length is ours)."""
    lines = [method + b" " + target + b" HTTP/" + version, b"Host: " + host]
    lines.extend(name + b": " + value for name, value in headers)
    if length or method not in (b"GET", b"HEAD", b"DELETE", b"OPTIONS"):
        lines.append(b"Content-Length: %d" % length)
    return b"\r\n".join(lines) + b"\r\n\r\n"

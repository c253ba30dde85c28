"""What the gateway and its admin API share: OpenAI-shaped errors, and the rules for reaching a
model's own server (which request headers go upstream, which response headers come back, and
how a path's dot segments are resolved before it is sent)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web
from yarl import URL

from ..config.schema import Config

FORWARDED_REQUEST_HEADERS = ("Content-Type", "Accept", "X-Request-Id")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "server", "date"}
PATH_SAFE = "/!$&'()*+,;=:@-._~"  # RFC 3986 pchar and "/": everything else in a path is percent-encoded


def openai_error(status: int, message: str, *, type_: str, code: str | None = None,
                 headers: dict[str, str] | None = None, param: str | None = None,
                 extra: dict[str, Any] | None = None) -> web.Response:
    """`{"error": {"message", "type", "param", "code"}}`; extra: bawt-specific top-level fields
    beside "error" (a stop's proof), which OpenAI clients ignore."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}, **(extra or {})}
    return web.json_response(body, status=status, headers=headers)


def unknown_model(config: Config, model: str) -> web.Response:
    known = ", ".join(config.models) or "none configured"
    return openai_error(404, f"model '{model}' does not exist; known models: {known}",
                        type_="invalid_request_error", code="model_not_found")


def resolve_dots(path: str) -> list[str] | None:
    """path's segments with `.` and `..` resolved and empty ones dropped; None if `..` climbs
    above its start.

    aiohttp routes on the path as sent (`/v1/../metrics` matches `/v1/{tail}`), while any URL
    parser between here and vLLM would resolve the dots, so what is checked, and sent, is the
    resolved path.
    """
    segments: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if not segments:
                return None
            segments.pop()
        elif segment not in ("", "."):
            segments.append(segment)
    return segments


def upstream_url(endpoint: str, path: str, raw_query: str) -> URL:
    """endpoint's origin + path (re-encoded, no dot segments) + the query exactly as sent."""
    target = endpoint.removesuffix("/v1") + quote(path, safe=PATH_SAFE)
    return URL(f"{target}?{raw_query}" if raw_query else target, encoded=True)


def forwarded_headers(request: web.Request, api_key: str | None) -> dict[str, str]:
    """The client's headers that go upstream, and the instance's own key (never the client's)."""
    headers = {name: request.headers[name] for name in FORWARDED_REQUEST_HEADERS if name in request.headers}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def response_headers(upstream: aiohttp.ClientResponse) -> dict[str, str]:
    return {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}

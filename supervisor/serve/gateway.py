"""One OpenAI-compatible endpoint for every model: route by `model`, load on demand.

Requests are passed through as they are: the body goes upstream byte for byte (only a
`model` that names an alias whose served name differs is rewritten), and responses,
streams included, come back chunk by chunk as vLLM writes them, never re-encoded. A client
that disconnects cancels its handler, which closes the upstream request, which makes vLLM
abort the generation.

What the gateway itself refuses or fails at is answered in OpenAI's error shape
(`{"error": {"message", "type", "param", "code"}}`): an unknown URL or a path that would
leave /v1/ after resolving `..` (a model's own server is reachable only through the admin
API's /upstream/{model}/..., see admin.py), a bad `keep_alive` (keepalive.py), a body over
MAX_BODY_BYTES, a body or request head not received within
READ_DEADLINE_S, bad JSON, shutdown, and upstream failures.
"""


from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from ..config.schema import Config
from ..runtime.failures import StartFailed
from ..runtime.instance import Instance
from ..runtime.placement import CapacityError
from ..runtime.pool import PlacementFailed, Pool
from .admin import AdminApi
from .dashboard import Dashboard, is_public
from .keepalive import KEEP_ALIVE, KeepAliveError, KeepAlives, parse_keep_alive
from .metrics import Metrics
from .replies import (
    FORWARDED_REQUEST_HEADERS,
    openai_error,
    resolve_dots,
    response_headers,
    unknown_model,
    upstream_url,
)

log = logging.getLogger("bawt_vllm.gateway")

Early = web.StreamResponse | None  # a response already started (SSE headers sent while loading)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]

KEEPALIVE_INTERVAL_S = 2.0
UPSTREAM_KEEPALIVE_S = 3.0
RETRY_AFTER_S = 10
MAX_BODY_BYTES = 32 * 1024 * 1024  # the largest request body accepted (chat histories, images as base64)
# A client has this long to send a request head (from connecting, or from the end of its last
# response), and as long again for the body; then it is answered 408 or simply disconnected.
READ_DEADLINE_S = 30.0
ACCEPT_ERROR_LOG_INTERVAL_S = 60.0  # at most one warning this often while accept() runs out of descriptors
UPSTREAM_ERROR_EXCERPT = 2000  # characters of a non-JSON upstream error kept in the message

_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_HTTP_ERROR_CODES = {400: "invalid_request", 404: "unknown_url", 405: "method_not_allowed",
                     408: "request_timeout", 413: "request_too_large"}


class Gateway:
    def __init__(self, pool: Pool, metrics: Metrics, *, shutting_down: Callable[[], bool]) -> None:
        self.pool = pool
        self.metrics = metrics
        self._shutting_down = shutting_down
        self._session: aiohttp.ClientSession | None = None
        self._accept_errors: AcceptErrorLog | None = None
        self._keep_alive = KeepAlives(pool)

    @property
    def config(self) -> Config:
        return self.pool.config

    def app(self) -> web.Application:
        # keepalive_timeout is aiohttp's only clock on a connection that has not sent a whole
        # request head: armed when the connection is made and after each response, it closes
        # the connection if the next head is still incomplete (or absent) when it fires.
        app = web.Application(middlewares=[self._error_middleware, self._auth_middleware],
                              client_max_size=MAX_BODY_BYTES,
                              handler_args={"keepalive_timeout": READ_DEADLINE_S})
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics_endpoint)
        AdminApi(self.pool, send=self._send, read_body=_read_body, gateway_key=self._gateway_key,
                 shutting_down=self._shutting_down).register(app)
        Dashboard(self.pool, gateway_key=self._gateway_key).register(app)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/v1/models/{model:.+}", self.get_model)
        app.router.add_route("*", "/v1/{tail:.*}", self.proxy)
        app.on_startup.append(self._quiet_accept_errors)
        app.on_cleanup.append(self._close_session)
        app.on_cleanup.append(self._restore_exception_handler)
        return app

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # Idle upstream connections are dropped before vLLM's uvicorn drops them (5 s), so a
            # request is never sent down a connection the server is closing.
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None, keepalive_timeout=UPSTREAM_KEEPALIVE_S)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                                  timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        return self._session

    async def _close_session(self, _app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    # -- the event loop's accept errors --------------------------------------------------
    async def _quiet_accept_errors(self, _app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        self._accept_errors = AcceptErrorLog(loop.get_exception_handler())
        loop.set_exception_handler(self._accept_errors)

    async def _restore_exception_handler(self, _app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        if self._accept_errors is not None and loop.get_exception_handler() is self._accept_errors:
            loop.set_exception_handler(self._accept_errors.previous)
        self._accept_errors = None

    # -- errors and auth ----------------------------------------------------------------
    @web.middleware
    async def _error_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """aiohttp's own error responses (404, 405, 408, 413, ...) in OpenAI's error shape."""
        try:
            return await handler(request)
        except web.HTTPException as error:
            if error.status < 400:
                raise
            return _shaped_http_error(request, error)
        except ConnectionError:
            raise  # the client went away: nobody to answer
        except Exception:
            if request.writer.output_size > 0:
                raise  # a response has begun: aiohttp can only close the connection
            log.exception("gateway error on %s %s", request.method, request.path)
            return openai_error(500, "internal error in the bawt-vllm gateway (details in the daemon log)",
                                type_="server_error", code="internal_error")

    def _gateway_key(self) -> str | None:
        variable = self.config.settings.api_key_env
        return os.environ.get(variable) or None if variable else None

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        key = self._gateway_key()
        if key and request.path != "/health" and not is_public(request.path):
            given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), key.encode()):
                return openai_error(401, "missing or wrong API key: send 'Authorization: Bearer <key>' "
                                    f"(the gateway's key is in ${self.config.settings.api_key_env})",
                                    type_="invalid_request_error", code="invalid_api_key")
        return await handler(request)

    # -- simple routes ------------------------------------------------------------------
    async def health(self, _request: web.Request) -> web.Response:
        if self._shutting_down():
            return web.json_response({"status": "shutting down"}, status=503)
        return web.json_response({"status": "ok"})

    async def metrics_endpoint(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")

    def _model_card(self, alias: str) -> dict[str, Any]:
        entry = self.config.models[alias]
        return {
            "id": alias, "object": "model", "created": 0, "owned_by": "bawt-vllm",
            "state": self.pool.state_of(alias).value,
            "context_window": entry.context_window or entry.max_model_len, "max_tokens": entry.max_tokens,
            "tool_support": entry.effective_tool_format, "description": entry.description,
        }

    async def list_models(self, _request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [self._model_card(a) for a in self.config.models]})

    async def get_model(self, request: web.Request) -> web.Response:
        alias = self.config.resolve(request.match_info["model"])
        if alias is None:
            return self._unknown_model(request.match_info["model"])
        return web.json_response(self._model_card(alias))

    # -- routing ------------------------------------------------------------------------
    def _unknown_model(self, model: str) -> web.Response:
        return unknown_model(self.config, model)

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        if self._shutting_down():
            return openai_error(503, "bawt-vllm is shutting down", type_="server_error", code="shutting_down")
        path = _upstream_path(request.path)
        if path is None:
            raise web.HTTPNotFound()  # shaped by _error_middleware, like any unknown URL
        body = await _read_body(request)
        model, payload, problem = _requested_model(request, body)
        if problem is not None:
            return openai_error(400, problem, type_="invalid_request_error", code="invalid_request")
        try:
            keep_alive = parse_keep_alive(payload[KEEP_ALIVE]) if payload and KEEP_ALIVE in payload else None
        except KeepAliveError as error:
            return openai_error(400, str(error), type_="invalid_request_error", code="invalid_request",
                                param=KEEP_ALIVE)
        alias = self.config.resolve(model)
        if alias is None:
            self.metrics.errors.labels("(unknown)", "404").inc()  # never a label per made-up name
            return self._unknown_model(model)
        self.metrics.request(alias, path)
        body = self._with_served_name(alias, model, payload, body)
        try:
            return await self._route(request, alias, path, body, streaming=bool(payload and payload.get("stream")))
        finally:  # the request is no longer in flight: keep_alive 0 may unload the model now
            if keep_alive is not None or self._keep_alive.pending:
                self._keep_alive.after(alias, keep_alive)

    def _with_served_name(self, alias: str, model: str, payload: dict[str, Any] | None, body: bytes) -> bytes:
        """The body as sent, unless its model is not the served name or it holds keep_alive (never sent)."""
        served = self.config.models[alias].served_name
        if payload is None or (model == served and KEEP_ALIVE not in payload):
            return body
        rewritten = {**payload, "model": served}
        rewritten.pop(KEEP_ALIVE, None)
        return json.dumps(rewritten).encode()

    async def _route(self, request: web.Request, alias: str, path: str, body: bytes, *,
                     streaming: bool) -> web.StreamResponse:
        """Forward to alias's ready instance, loaded on demand; a load that fails is an OpenAI error."""
        started = time.perf_counter()
        # A streaming client gets its SSE headers now and comments while the model loads.
        early: Early = await _start_sse(request) if streaming and not self.pool.is_ready(alias) else None

        async def loading(progress: str) -> None:
            if early is not None:
                await early.write(f": loading {alias} ({progress})\n\n".encode())

        try:
            async with self.pool.serving(alias, on_wait=loading, wait_tick_s=KEEPALIVE_INTERVAL_S) as instance:
                return await self._forward_or_502(request, instance, path, body, early, started)
        except CapacityError as busy:
            return await self._fail(alias, early, 503, str(busy), "no_capacity", {"Retry-After": str(RETRY_AFTER_S)})
        except StartFailed as failure:
            tail = "\nlast log lines:\n" + "\n".join(failure.log_tail) if failure.log_tail else ""
            return await self._fail(alias, early, 502, failure.reason + tail, "model_load_failed")
        except PlacementFailed as error:  # no port free, a GGUF download that failed, ...
            return await self._fail(alias, early, 502, str(error), "model_load_failed")

    async def _forward_or_502(self, request: web.Request, instance: Instance, path: str, body: bytes,
                              early: Early, started: float) -> web.StreamResponse:
        try:
            return await self._forward(request, instance, path, body, early, started)
        except (aiohttp.ClientError, TimeoutError) as error:
            message = f"{instance.alias}: upstream vllm serve failed: {error.__class__.__name__}: {error}"
            return await self._fail(instance.alias, early, 502, message, "upstream_error")

    async def _fail(self, alias: str, early: Early, status: int, message: str, code: str,
                    headers: dict[str, str] | None = None) -> web.StreamResponse:
        """An OpenAI-shaped error: a JSON response, or an SSE error event if SSE has begun."""
        self.metrics.errors.labels(alias, str(status)).inc()
        if early is not None:
            await _sse_error(early, message, code=code)
            return early
        return openai_error(status, message, type_="server_error", code=code, headers=headers)

    async def _forward(self, request: web.Request, instance: Instance, path: str, body: bytes,
                       early: Early, started: float) -> web.StreamResponse:
        url = upstream_url(instance.endpoint, path, request.rel_url.raw_query_string)
        headers = {name: request.headers[name] for name in FORWARDED_REQUEST_HEADERS if name in request.headers}
        if instance.api_key:
            headers["Authorization"] = f"Bearer {instance.api_key}"
        async with await self._send(request.method, url, body, headers) as upstream:
            self.metrics.latency.labels(instance.alias).observe(time.perf_counter() - started)
            if upstream.status >= 400:
                self.metrics.errors.labels(instance.alias, str(upstream.status)).inc()
                return await _upstream_error(instance.alias, upstream, early)
            if early is not None:
                return await self._relay(instance.alias, upstream, early, started)
            if not _is_stream(upstream):
                payload = await upstream.read()
                self.metrics.relayed(instance.alias, payload)
                return web.Response(status=upstream.status, body=payload, headers=response_headers(upstream))
            response = web.StreamResponse(status=upstream.status, headers=response_headers(upstream))
            await response.prepare(request)
            return await self._relay(instance.alias, upstream, response, started)

    async def _relay(self, alias: str, upstream: aiohttp.ClientResponse,
                     response: web.StreamResponse, started: float) -> web.StreamResponse:
        """Copy a (streamed) upstream body into a started response; a broken upstream ends it
        with an SSE error event, as nothing else can be said once the status line is out.
        The first chunk's arrival is the time to first token (from the request, loading included)."""
        first = True
        try:
            async for chunk in upstream.content.iter_any():
                if first:
                    self.metrics.first_token.labels(alias).observe(time.perf_counter() - started)
                    first = False
                self.metrics.relayed(alias, chunk)
                await response.write(chunk)
        except aiohttp.ClientError as error:
            self.metrics.errors.labels(alias, "502").inc()
            await _sse_error(response, f"{alias}: upstream vllm serve broke off: {error.__class__.__name__}: {error}")
            return response
        await response.write_eof()
        return response

    async def _send(self, method: str, url: str | URL, body: bytes, headers: dict[str, str]) -> aiohttp.ClientResponse:
        """Send upstream; once more on a fresh connection if a pooled one was closed under us.

        A disconnect before any response byte means vLLM never took the request, so sending
        it again cannot run a generation twice.
        """
        try:
            return await self._client().request(method, url, data=body or None, headers=headers)
        except aiohttp.ServerDisconnectedError:
            return await self._client().request(method, url, data=body or None, headers=headers)


class AcceptErrorLog:
    """An event-loop exception handler that keeps accept() failures from flooding the log.

    Out of file descriptors (or socket memory), asyncio's server logs `socket.accept() out
    of system resource` with a traceback and retries a second later, for as long as the
    condition lasts, for every listening socket. This says it once, then at most once per
    ACCEPT_ERROR_LOG_INTERVAL_S with a count; every other loop error goes to the handler
    that was installed before (or asyncio's default).
    """

    def __init__(self, previous: ExceptionHandler | None) -> None:
        self.previous = previous
        self._unreported = 0
        self._last_report = float("-inf")

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if isinstance(error, OSError) and error.errno in _OUT_OF_RESOURCES and "accept" in context.get("message", ""):
            self._note(error)
        elif self.previous is not None:
            self.previous(loop, context)
        else:
            loop.default_exception_handler(context)

    def _note(self, error: OSError) -> None:
        self._unreported += 1
        now = time.monotonic()
        if now - self._last_report < ACCEPT_ERROR_LOG_INTERVAL_S:
            return
        log.warning("cannot accept connections: %s (%d failed accept(s) since the last warning; retried every "
                    "second). Raise the open-file limit (LimitNOFILE=) or find what holds the descriptors.",
                    error.strerror or error, self._unreported)
        self._unreported = 0
        self._last_report = now


def _upstream_path(path: str) -> str | None:
    """The decoded request path with `.` and `..` resolved (see resolve_dots), if it stays under
    /v1/; else None. Empty segments are dropped too."""
    segments = resolve_dots(path)
    if segments is None or len(segments) < 2 or segments[0] != "v1":
        return None
    return "/" + "/".join(segments)


async def _read_body(request: web.Request) -> bytes:
    """The whole request body: 413 over MAX_BODY_BYTES (declared or counted), 408 if it is
    not all there within READ_DEADLINE_S."""
    declared = request.content_length
    if declared is not None and declared > MAX_BODY_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY_BYTES, actual_size=declared)
    try:
        async with asyncio.timeout(READ_DEADLINE_S):
            return await request.read()
    except TimeoutError:
        raise web.HTTPRequestTimeout(text=f"the request body did not arrive within {READ_DEADLINE_S:g} s") from None


def _shaped_http_error(request: web.Request, error: web.HTTPException) -> web.Response:
    kind = "server_error" if error.status >= 500 else "invalid_request_error"
    keep = {name: value for name, value in error.headers.items() if name.lower() in ("allow", "retry-after")}
    response = openai_error(error.status, _http_error_message(request, error), type_=kind,
                            code=_HTTP_ERROR_CODES.get(error.status), headers=keep)
    if error.status in (408, 413):
        response.force_close()  # the rest of the body is not worth waiting for
    return response


def _http_error_message(request: web.Request, error: web.HTTPException) -> str:
    where = f"{request.method} {request.path}"
    if error.status == 404:
        return f"unknown URL: {where}; the gateway serves the OpenAI API under /v1/ (GET /v1/models lists the models)"
    if error.status == 405:
        return f"method not allowed: {where} (allowed: {error.headers.get('Allow', 'none')})"
    if error.status == 413:
        return f"request body too large: the gateway accepts at most {MAX_BODY_BYTES} bytes"
    return error.text or error.reason


def _requested_model(request: web.Request, body: bytes) -> tuple[str, dict[str, Any] | None, str | None]:
    """(model, parsed body, problem). GETs may name the model in ?model=."""
    if not body:
        model = request.query.get("model")
        return (model, None, None) if model else ("", None, "name the model: a JSON body with \"model\", or ?model=")
    try:
        payload = json.loads(body)
    except ValueError as error:
        return "", None, f"request body is not valid JSON: {error}"
    if not isinstance(payload, dict):
        return "", None, "request body must be a JSON object"
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        return "", None, "request body has no \"model\" (a string naming one of GET /v1/models)"
    return model, payload, None


def _is_stream(upstream: aiohttp.ClientResponse) -> bool:
    return upstream.headers.get("Content-Type", "").startswith("text/event-stream")


def _openai_error_json(raw: bytes) -> dict[str, Any] | None:
    """raw parsed, if it is an OpenAI-shaped error object ({"error": {"message": ...}})."""
    try:
        parsed = json.loads(raw)
    except ValueError:
        return None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict) and "message" in parsed["error"]:
        return parsed
    return None


def _upstream_error_text(raw: bytes) -> str:
    """What a non-OpenAI-shaped upstream error says: a JSON `message` or `detail`, else the text."""
    text = raw.decode("utf-8", "replace").strip()
    with contextlib.suppress(ValueError):
        parsed = json.loads(text)
        if isinstance(parsed, dict):
            said = parsed.get("message", parsed.get("detail"))
            if said is not None:
                text = said if isinstance(said, str) else json.dumps(said)
    return text[:UPSTREAM_ERROR_EXCERPT] or "(empty body)"


async def _upstream_error(alias: str, upstream: aiohttp.ClientResponse, early: Early) -> web.StreamResponse:
    """vLLM answered an error: its OpenAI-shaped errors pass as they are; anything else (a plain
    text 500, a framework's {"detail": ...}) is wrapped, as 502 if vLLM failed (5xx)."""
    raw = await upstream.read()
    shaped = _openai_error_json(raw)
    if shaped is not None:
        if early is None:
            return web.Response(status=upstream.status, body=raw, headers=response_headers(upstream))
        with contextlib.suppress(ConnectionError):
            await early.write(f"data: {json.dumps(shaped)}\n\n".encode())
            await early.write_eof()
        return early
    message = f"{alias}: vllm serve answered {upstream.status} {upstream.reason or ''}: {_upstream_error_text(raw)}"
    if early is not None:
        await _sse_error(early, message)
        return early
    client_error = upstream.status < 500
    return openai_error(upstream.status if client_error else 502, message,
                        type_="invalid_request_error" if client_error else "server_error", code="upstream_error")


async def _start_sse(request: web.Request) -> web.StreamResponse:
    headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    response = web.StreamResponse(status=200, headers=headers)
    await response.prepare(request)
    return response


async def _sse_error(response: web.StreamResponse, message: str, *, code: str = "upstream_error") -> None:
    error = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    with contextlib.suppress(ConnectionError):
        await response.write(f"data: {json.dumps(error)}\n\n".encode())
        await response.write_eof()

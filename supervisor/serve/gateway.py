"""One OpenAI-compatible endpoint for every model, and the daemon's HTTP face beside it.

Two parts share the gateway's port. The front (front.py) owns every client connection and
answers the OpenAI API under /v1/ itself (proxy.py: route by `model`, load on demand, relay
vLLM's bytes as they come), which is the path every token takes. Everything else (health,
metrics, the model list, the admin API, the dashboard) is an aiohttp application on a
private unix socket, to which the front relays those requests as they came: they are not
on the hot path, and aiohttp's router, middlewares and responses keep them simple.

What either part refuses or fails at is answered in OpenAI's error shape
(`{"error": {"message", "type", "param", "code"}}`).
"""


from __future__ import annotations

import asyncio
import errno
import hmac
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from ..config.schema import Config
from ..runtime.pool import Pool
from . import front, wire
from .admin import AdminApi
from .dashboard import Dashboard, is_public
from .front import Connection, Request
from .metrics import Metrics
from .proxy import Proxy, openai_error
from .replies import openai_error as openai_error_response
from .replies import resolve_dots, unknown_model
from .upstream import KEEPALIVE_S, Address, Mode, UpstreamError, UpstreamPool
from .wire import Headers

log = logging.getLogger("bawt_vllm.gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]

ACCEPT_ERROR_LOG_INTERVAL_S = 60.0  # at most one warning this often while accept() runs out of descriptors
MAX_BODY_BYTES = front.MAX_BODY_BYTES

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
        self.upstream = UpstreamPool()
        self.proxy = Proxy(pool, metrics, self.upstream, gateway_key=self._gateway_key, shutting_down=shutting_down)
        self._runner: web.AppRunner | None = None
        self._listener = front.Listener(self.dispatch)
        self._socket_dir: str | None = None
        self._app_address: Address | None = None
        self._key_variable: str | None = None
        self._key: str | None = None

    @property
    def config(self) -> Config:
        return self.pool.config

    # -- serving ---------------------------------------------------------------------------
    async def start(self, host: str, port: int) -> None:
        """Listen on host:port (OSError if it cannot); the app behind it on its own socket first."""
        self._runner = web.AppRunner(self.app(), handler_cancellation=True, access_log=None)
        await self._runner.setup()
        self._socket_dir = tempfile.mkdtemp(prefix="bawt-vllm-gateway-")  # mode 0700: ours only
        path = os.path.join(self._socket_dir, "app.sock")
        await web.UnixSite(self._runner, path).start()
        self._app_address = Address(path)
        await self._listener.listen(host, port)

    @property
    def port(self) -> int:
        return self._listener.port

    async def close(self) -> None:
        self._listener.close()
        self.upstream.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    async def dispatch(self, request: Request, out: Connection) -> None:
        """The OpenAI API (not its model list) to the proxy; every other request to the app.
        (A path that resolves to /v1/models goes to the app as it was sent, which routes it.)"""
        if request.path.startswith("/v1/"):
            path = _resolved(request.path)
            if path is None or not (path == "/v1/models" or path.startswith("/v1/models/")):
                await self.proxy.handle(request, out, path)
                return
        await self._relay_to_app(request, out)

    async def _relay_to_app(self, request: Request, out: Connection) -> None:
        assert self._app_address is not None
        headers = [(name, value) for name, value in request.headers
                   if name not in wire.HOP_BY_HOP and name != b"host"]
        head = wire.request_head(request.method, request.target, request.version,
                                 request.header(b"host") or b"bawt-vllm", headers, len(request.body))
        try:
            await self.upstream.exchange(self._app_address, head + request.body, _AsIs(out),
                                         head_only=request.method == b"HEAD")
        except UpstreamError as error:
            if out.started:
                out.close_after()
            else:
                openai_error(out, 502, f"the gateway's own app failed: {error}", type_="server_error",
                             code="internal_error")

    # -- the app behind the front ------------------------------------------------------------
    def app(self) -> web.Application:
        # keepalive_timeout is aiohttp's only clock on a connection that has not sent a whole
        # request head: armed when the connection is made and after each response, it closes
        # the connection if the next head is still incomplete (or absent) when it fires.
        app = web.Application(middlewares=[self._error_middleware, self._auth_middleware],
                              client_max_size=MAX_BODY_BYTES,
                              handler_args={"keepalive_timeout": front.READ_DEADLINE_S})
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics_endpoint)
        AdminApi(self.pool, send=self._send, read_body=_read_body, gateway_key=self._gateway_key,
                 shutting_down=self._shutting_down).register(app)
        Dashboard(self.pool, gateway_key=self._gateway_key).register(app)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/v1/models/{model:.+}", self.get_model)
        app.on_startup.append(self._quiet_accept_errors)
        app.on_cleanup.append(self._close_session)
        app.on_cleanup.append(self._restore_exception_handler)
        return app

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # Idle upstream connections are dropped before vLLM's uvicorn drops them (5 s), so a
            # request is never sent down a connection the server is closing.
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None, keepalive_timeout=KEEPALIVE_S)
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
            return openai_error_response(500, "internal error in the bawt-vllm gateway (details in the daemon "
                                         "log)", type_="server_error", code="internal_error")

    def _gateway_key(self) -> str | None:
        """The key clients must send, if one is set. Read once per variable name (a reload may
        name another): the daemon's environment does not change while it runs."""
        variable = self.config.settings.api_key_env
        if variable != self._key_variable:
            self._key_variable = variable
            self._key = os.environ.get(variable) or None if variable else None
        return self._key

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        key = self._gateway_key()
        if key and request.path != "/health" and not is_public(request.path):
            given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), key.encode()):
                return openai_error_response(401, "missing or wrong API key: send 'Authorization: Bearer <key>' "
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
            return unknown_model(self.config, request.match_info["model"])
        return web.json_response(self._model_card(alias))

    async def _send(self, method: str, url: str | URL, body: bytes, headers: dict[str, str]) -> aiohttp.ClientResponse:
        """The admin API's way to a model's own server; once more on a fresh connection if a
        pooled one was closed under us (vLLM never took the request: it cannot run twice)."""
        try:
            return await self._client().request(method, url, data=body or None, headers=headers)
        except aiohttp.ServerDisconnectedError:
            return await self._client().request(method, url, data=body or None, headers=headers)


def _resolved(path: str) -> str | None:
    """path with dot and empty segments resolved; None if `..` climbs above the root."""
    if "/." not in path and "//" not in path and path[-1] != "/":
        return path  # the common case: nothing to resolve
    segments = resolve_dots(path)
    return None if segments is None else "/" + "/".join(segments)


class _AsIs:
    """A response relayed exactly as it came (the app behind the front)."""

    __slots__ = ("out",)

    def __init__(self, out: Connection) -> None:
        self.out = out

    def attach(self, transport: Any) -> None:
        self.out.link(transport)

    def head(self, status: int, headers: Headers) -> Mode:
        if (b"connection", b"close") in headers:
            self.out.close_after()
        return Mode.RAW

    def raw(self, data: bytes) -> None:
        self.out.write(data)

    def first_body(self) -> None:
        pass

    def body(self, data: bytes) -> None:
        self.out.write(data)


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


async def _read_body(request: web.Request) -> bytes:
    """The whole request body: 413 over MAX_BODY_BYTES (declared or counted), 408 if it is
    not all there within READ_DEADLINE_S."""
    declared = request.content_length
    if declared is not None and declared > MAX_BODY_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY_BYTES, actual_size=declared)
    try:
        async with asyncio.timeout(front.READ_DEADLINE_S):
            return await request.read()
    except TimeoutError:
        deadline = front.READ_DEADLINE_S
        raise web.HTTPRequestTimeout(text=f"the request body did not arrive within {deadline:g} s") from None

def _shaped_http_error(request: web.Request, error: web.HTTPException) -> web.Response:
    kind = "server_error" if error.status >= 500 else "invalid_request_error"
    keep = {name: value for name, value in error.headers.items() if name.lower() in ("allow", "retry-after")}
    response = openai_error_response(error.status, _http_error_message(request, error), type_=kind,
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

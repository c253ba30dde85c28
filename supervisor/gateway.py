"""One OpenAI-compatible endpoint for every model: route by `model`, load on demand.

Requests are passed through as they are: the body goes upstream byte for byte (only a
`model` that names an alias whose served name differs is rewritten), and responses,
streams included, come back chunk by chunk as vLLM writes them, never re-encoded. A client
that disconnects cancels its handler, which closes the upstream request, which makes vLLM
abort the generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from .config import Config
from .instance import Instance, StartFailed, State
from .metrics import Metrics
from .pool import CapacityError, Pool

Early = web.StreamResponse | None  # a response already started (SSE headers sent while loading)
KEEPALIVE_INTERVAL_S = 2.0
UPSTREAM_KEEPALIVE_S = 3.0
RETRY_AFTER_S = 10
_FORWARDED_REQUEST_HEADERS = ("Content-Type", "Accept", "X-Request-Id")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "server", "date"}


def openai_error(status: int, message: str, *, type_: str, code: str | None = None,
                 headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return web.json_response(body, status=status, headers=headers)


class Gateway:
    def __init__(self, pool: Pool, metrics: Metrics, *, shutting_down: Callable[[], bool]) -> None:
        self.pool = pool
        self.metrics = metrics
        self._shutting_down = shutting_down
        self._session: aiohttp.ClientSession | None = None

    @property
    def config(self) -> Config:
        return self.pool.config

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth_middleware], client_max_size=256 * 1024 * 1024)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics_endpoint)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/v1/models/{model:.+}", self.get_model)
        app.router.add_route("*", "/v1/{tail:.*}", self.proxy)
        app.on_cleanup.append(self._close_session)
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

    # -- auth ---------------------------------------------------------------------------
    def _gateway_key(self) -> str | None:
        variable = self.config.settings.api_key_env
        return os.environ.get(variable) or None if variable else None

    @web.middleware
    async def _auth_middleware(self, request: web.Request,
                               handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        key = self._gateway_key()
        if key and request.path != "/health":
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
        instance = self.pool.instances.get(alias)
        return {
            "id": alias, "object": "model", "created": 0, "owned_by": "bawt-vllm",
            "state": instance.state.value if instance else State.STOPPED.value,
            "context_window": entry.context_window or entry.max_model_len, "max_tokens": entry.max_tokens,
            "tool_support": entry.effective_tool_format, "description": entry.description,
        }

    async def list_models(self, _request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [self._model_card(a) for a in self.config.models]})

    async def get_model(self, request: web.Request) -> web.Response:
        alias = self._resolve(request.match_info["model"])
        if alias is None:
            return self._unknown_model(request.match_info["model"])
        return web.json_response(self._model_card(alias))

    # -- routing ------------------------------------------------------------------------
    def _resolve(self, model: str) -> str | None:
        if model in self.config.models:
            return model
        for alias, entry in self.config.models.items():
            if entry.served_name == model:
                return alias
        return None

    def _unknown_model(self, model: str) -> web.Response:
        known = ", ".join(self.config.models) or "none configured"
        return openai_error(404, f"model '{model}' does not exist; known models: {known}",
                            type_="invalid_request_error", code="model_not_found")

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        if self._shutting_down():
            return openai_error(503, "bawt-vllm is shutting down", type_="server_error", code="shutting_down")
        body = await request.read()
        model, payload, problem = _requested_model(request, body)
        if problem is not None:
            return openai_error(400, problem, type_="invalid_request_error", code="invalid_request")
        alias = self._resolve(model)
        if alias is None:
            self.metrics.errors.labels("(unknown)", "404").inc()  # never a label per made-up name
            return self._unknown_model(model)
        self.metrics.requests.labels(alias, request.match_info["tail"]).inc()
        body = self._with_served_name(alias, model, payload, body)
        async with self.pool.in_use(alias):
            return await self._route(request, alias, body, streaming=bool(payload and payload.get("stream")))

    def _with_served_name(self, alias: str, model: str, payload: dict[str, Any] | None, body: bytes) -> bytes:
        served = self.config.models[alias].served_name
        if payload is None or model == served:
            return body
        return json.dumps({**payload, "model": served}).encode()

    async def _route(self, request: web.Request, alias: str, body: bytes, *, streaming: bool) -> web.StreamResponse:
        started = time.perf_counter()
        instance = self.pool.instances.get(alias)
        early: Early = None
        if instance is None or instance.state is not State.READY:
            # A streaming client gets its SSE headers now and comments while the model loads.
            early = await _start_sse(request) if streaming else None
            failure = await self._load(alias, early)
            if failure is not None:
                return failure
            instance = self.pool.instances[alias]
        try:
            return await self._forward(request, instance, body, early, started)
        except (aiohttp.ClientConnectionError, TimeoutError) as error:
            message = f"{alias}: upstream vllm serve failed: {error.__class__.__name__}: {error}"
            return await self._fail(alias, early, 502, message, "upstream_error")

    async def _load(self, alias: str, early: Early) -> web.StreamResponse | None:
        """Start (or join the start of) alias; the error response if it cannot be loaded."""
        loading = asyncio.ensure_future(self.pool.up(alias))
        try:
            while early is not None and not loading.done():
                await asyncio.wait({loading}, timeout=KEEPALIVE_INTERVAL_S)
                if not loading.done():
                    await early.write(f": loading {alias} ({self._stage(alias)})\n\n".encode())
            await loading
        except CapacityError as busy:
            return await self._fail(alias, early, 503, str(busy), "no_capacity", {"Retry-After": str(RETRY_AFTER_S)})
        except StartFailed as failure:
            tail = "\nlast log lines:\n" + "\n".join(failure.log_tail) if failure.log_tail else ""
            return await self._fail(alias, early, 502, failure.reason + tail, "model_load_failed")
        except Exception as error:  # no port free, a GGUF download that failed, ...: still an OpenAI error
            return await self._fail(alias, early, 502, f"{alias}: {error}", "model_load_failed")
        finally:
            if not loading.done():
                loading.cancel()
        return None

    def _stage(self, alias: str) -> str:
        instance = self.pool.instances.get(alias)
        return (instance.stage or instance.state.value) if instance else "placing"

    async def _fail(self, alias: str, early: Early, status: int, message: str, code: str,
                    headers: dict[str, str] | None = None) -> web.StreamResponse:
        """An OpenAI-shaped error: a JSON response, or an SSE error event if SSE has begun."""
        self.metrics.errors.labels(alias, str(status)).inc()
        if early is not None:
            await _sse_error(early, message, code=code)
            return early
        return openai_error(status, message, type_="server_error", code=code, headers=headers)

    async def _forward(self, request: web.Request, instance: Instance, body: bytes,
                       early: web.StreamResponse | None, started: float) -> web.StreamResponse:
        url = f"{instance.endpoint.removesuffix('/v1')}{request.rel_url}"
        headers = {name: request.headers[name] for name in _FORWARDED_REQUEST_HEADERS if name in request.headers}
        if instance.api_key:
            headers["Authorization"] = f"Bearer {instance.api_key}"
        async with await self._send(request.method, url, body, headers) as upstream:
            self.metrics.latency.labels(instance.alias).observe(time.perf_counter() - started)
            if upstream.status >= 400:
                self.metrics.errors.labels(instance.alias, str(upstream.status)).inc()
            if early is not None:
                return await _copy_into_sse(upstream, early)
            if not _is_stream(upstream):
                payload = await upstream.read()
                return web.Response(status=upstream.status, body=payload, headers=_response_headers(upstream))
            response = web.StreamResponse(status=upstream.status, headers=_response_headers(upstream))
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response


    async def _send(self, method: str, url: str, body: bytes, headers: dict[str, str]) -> aiohttp.ClientResponse:
        """Send upstream; once more on a fresh connection if a pooled one was closed under us.

        A disconnect before any response byte means vLLM never took the request, so sending
        it again cannot run a generation twice.
        """
        try:
            return await self._client().request(method, url, data=body or None, headers=headers)
        except aiohttp.ServerDisconnectedError:
            return await self._client().request(method, url, data=body or None, headers=headers)


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


def _response_headers(upstream: aiohttp.ClientResponse) -> dict[str, str]:
    return {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}


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


async def _copy_into_sse(upstream: aiohttp.ClientResponse, response: web.StreamResponse) -> web.StreamResponse:
    """The client already has SSE headers (sent while loading): relay the upstream body."""
    if upstream.status >= 400:
        text = (await upstream.read()).decode("utf-8", "replace")
        try:
            await response.write(f"data: {json.dumps(json.loads(text))}\n\n".encode())
        except ValueError:
            await _sse_error(response, text)
            return response
    else:
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
    await response.write_eof()
    return response


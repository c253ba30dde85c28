"""The OpenAI API under /v1/: route by `model`, load on demand, relay what vLLM answers.

The request's bytes go upstream as they came (only a `model` naming an alias whose served
name differs, or a body holding keep_alive, is re-encoded), on a pooled keep-alive connection,
and the response's bytes come back exactly as vLLM framed them, streams included: llhttp finds
where a response ends and nothing else is parsed (upstream.py). A client that disconnects
cancels its request, which closes the upstream connection, which makes vLLM abort the
generation.

What the gateway itself refuses or fails at is answered in OpenAI's error shape: the key, a
path that would leave /v1/ after resolving `..`, a body that is not JSON or names no model,
a bad keep_alive, shutdown, a load that fails, and upstream failures. vLLM's own
OpenAI-shaped errors pass as they are; anything else it answers with an error status (a
plain-text 500, a framework's {"detail": ...}) is wrapped.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, quote

from ..config.schema import Config
from ..runtime.failures import StartFailed
from ..runtime.instance import Instance
from ..runtime.placement import CapacityError
from ..runtime.pool import PlacementFailed, Pool
from . import replies, wire
from .front import Connection, Request
from .keepalive import KEEP_ALIVE, KeepAliveError, KeepAlives, parse_keep_alive
from .metrics import Metrics, ModelSeries
from .upstream import Address, Mode, UpstreamClosed, UpstreamError, UpstreamPool
from .wire import Headers

KEEPALIVE_INTERVAL_S = 2.0  # an SSE comment this often while a streaming request waits for its model
RETRY_AFTER_S = 10
UPSTREAM_ERROR_EXCERPT = 2000  # characters of a non-JSON upstream error kept in the message
FORWARDED_REQUEST_HEADERS = tuple(name.lower().encode() for name in replies.FORWARDED_REQUEST_HEADERS)
# Response headers not passed on when the gateway re-frames an answer itself.
_RESPONSE_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"content-length",
                                  b"content-encoding", b"server", b"date"})


def openai_error(out: Connection, status: int, message: str, *, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None, headers: Headers | None = None) -> None:
    out.send_json(status, wire.error_payload(message, type_=type_, code=code, param=param), headers)


class Proxy:
    def __init__(self, pool: Pool, metrics: Metrics, upstream: UpstreamPool, *,
                 gateway_key: Callable[[], str | None], shutting_down: Callable[[], bool]) -> None:
        self.pool = pool
        self.metrics = metrics
        self.upstream = upstream
        self._gateway_key = gateway_key
        self._shutting_down = shutting_down
        self._keep_alive = KeepAlives(pool)

    @property
    def config(self) -> Config:
        return self.pool.config

    async def handle(self, request: Request, out: Connection, path: str | None) -> None:
        """path: request.path with dot and empty segments resolved (None if they climb out of the root)."""
        if not self._authorized(request, out):
            return
        if self._shutting_down():
            return openai_error(out, 503, "bawt-vllm is shutting down", type_="server_error", code="shutting_down")
        if path is None or not path.startswith("/v1/"):
            return openai_error(out, 404, f"unknown URL: {request.method.decode()} {request.path}; the gateway "
                                "serves the OpenAI API under /v1/ (GET /v1/models lists the models)",
                                code="unknown_url")
        model, payload, problem = _requested_model(request)
        if problem is not None:
            return openai_error(out, 400, problem, code="invalid_request")
        try:
            keep_alive = parse_keep_alive(payload[KEEP_ALIVE]) if payload and KEEP_ALIVE in payload else None
        except KeepAliveError as error:
            return openai_error(out, 400, str(error), code="invalid_request", param=KEEP_ALIVE)
        alias = self.config.resolve(model)
        if alias is None:
            self.metrics.errors.labels("(unknown)", "404").inc()  # never a label per made-up name
            known = ", ".join(self.config.models) or "none configured"
            return openai_error(out, 404, f"model '{model}' does not exist; known models: {known}",
                                code="model_not_found")
        self.metrics.request(alias, path)
        body = self._with_served_name(alias, model, payload, request.body)
        try:
            await self._route(request, out, alias, path, body, streaming=bool(payload and payload.get("stream")))
        finally:  # the request is no longer in flight: keep_alive 0 may unload the model now
            if keep_alive is not None or self._keep_alive.pending:
                self._keep_alive.after(alias, keep_alive)

    def _authorized(self, request: Request, out: Connection) -> bool:
        key = self._gateway_key()
        if not key:
            return True
        given = (request.header(b"authorization") or b"").removeprefix(b"Bearer ").strip()
        if hmac.compare_digest(given, key.encode()):
            return True
        openai_error(out, 401, "missing or wrong API key: send 'Authorization: Bearer <key>' (the gateway's key "
                     f"is in ${self.config.settings.api_key_env})", code="invalid_api_key")
        return False

    def _with_served_name(self, alias: str, model: str, payload: dict[str, Any] | None, body: bytes) -> bytes:
        """The body as sent, unless its model is not the served name or it holds keep_alive (never sent)."""
        served = self.config.models[alias].served_name
        if payload is None or (model == served and KEEP_ALIVE not in payload):
            return body
        rewritten = {**payload, "model": served}
        rewritten.pop(KEEP_ALIVE, None)
        return json.dumps(rewritten).encode()

    async def _route(self, request: Request, out: Connection, alias: str, path: str, body: bytes, *,
                     streaming: bool) -> None:
        """Forward to alias's ready instance, loaded on demand; a load that fails is an OpenAI error."""
        started = time.perf_counter()
        early = streaming and not self.pool.is_ready(alias)
        if early:  # a streaming client gets its SSE headers now, and comments while the model loads
            out.start_stream(200, wire.SSE_HEADERS)
        try:
            async with self.pool.serving(alias, on_wait=_loading(out, alias) if early else None,
                                         wait_tick_s=KEEPALIVE_INTERVAL_S) as instance:
                sink = _Relay(self.metrics.model(alias), out, early, started)
                head = _upstream_head(request, instance, path, len(body))
                try:
                    response = await self.upstream.exchange(_origin(instance.endpoint)[0], head + body, sink,
                                                            head_only=request.method == b"HEAD")
                except UpstreamError as error:
                    return self._broken(out, alias, sink, error)
                if sink.collecting:
                    self.metrics.errors.labels(alias, str(response.status)).inc()
                    _upstream_error(out, alias, response.status, response.headers, response.body, early)
                elif early:
                    out.end_stream()
        except CapacityError as busy:
            self._fail(out, alias, early, 503, str(busy), "no_capacity", [(b"Retry-After", b"%d" % RETRY_AFTER_S)])
        except StartFailed as failure:
            tail = "\nlast log lines:\n" + "\n".join(failure.log_tail) if failure.log_tail else ""
            self._fail(out, alias, early, 502, failure.reason + tail, "model_load_failed")
        except PlacementFailed as error:  # no port free, a GGUF download that failed, ...
            self._fail(out, alias, early, 502, str(error), "model_load_failed")

    def _fail(self, out: Connection, alias: str, early: bool, status: int, message: str, code: str,
              headers: Headers | None = None) -> None:
        """An OpenAI-shaped error: a JSON response, or an SSE error event if SSE has begun."""
        self.metrics.errors.labels(alias, str(status)).inc()
        if early:
            _sse_error(out, message, code=code)
        else:
            openai_error(out, status, message, type_="server_error", code=code, headers=headers)

    def _broken(self, out: Connection, alias: str, sink: _Relay, error: UpstreamError) -> None:
        """The upstream failed: a 502 if nothing was said yet, else the stream ends with an error
        event where its framing allows one, and the connection closes where it does not."""
        if not out.started or (sink.early and not sink.relayed):
            message = f"{alias}: upstream vllm serve failed: {error}"
            return self._fail(out, alias, sink.early, 502, message, "upstream_error")
        self.metrics.errors.labels(alias, "502").inc()
        message = f"{alias}: upstream vllm serve broke off: {error}"
        if sink.early:
            _sse_error(out, message)
        elif isinstance(error, UpstreamClosed) and error.at_chunk_boundary:
            out.write(wire.chunk(wire.sse_event(_error(message, "upstream_error"))) + wire.LAST_CHUNK)
            out.close_after()
        else:
            out.close_after()  # mid-chunk or a sized body: only closing can tell the client


class _Relay:
    """The upstream response's way to the client: as framed (RAW), re-chunked into the SSE
    stream already open (BODY), or kept whole when it is an error (COLLECT)."""

    __slots__ = ("collecting", "early", "out", "relayed", "series", "started", "streamed")

    def __init__(self, series: ModelSeries, out: Connection, early: bool, started: float) -> None:
        self.series = series
        self.out = out
        self.early = early
        self.started = started
        self.collecting = False
        self.relayed = False
        self.streamed = False  # an event stream: its first body bytes are the time to first token

    def attach(self, transport: Any) -> None:
        self.out.link(transport)

    def head(self, status: int, headers: Headers) -> Mode:
        self.series.latency.observe(time.perf_counter() - self.started)
        if status >= 400:
            self.collecting = True
            return Mode.COLLECT
        for name, value in headers:
            if name == b"content-type":
                self.streamed = value.startswith(b"text/event-stream")
            elif name == b"connection" and value.lower() == b"close" and not self.early:
                self.out.close_after()  # the client reads that header too
        return Mode.BODY if self.early else Mode.RAW

    def raw(self, data: bytes) -> None:
        self.relayed = True
        self.series.relayed(data, stream=self.streamed)
        self.out.write(data)

    def first_body(self) -> None:
        if self.streamed:
            self.series.first_token.observe(time.perf_counter() - self.started)

    def body(self, data: bytes) -> None:
        self.relayed = True
        self.series.relayed(data)
        self.out.stream(data)


def _loading(out: Connection, alias: str) -> Callable[[str], Awaitable[None]]:
    """What a load's progress writes into the SSE stream opened for it: a comment."""
    async def say(progress: str) -> None:
        out.stream(f": loading {alias} ({progress})\n\n".encode())
    return say


@functools.lru_cache(maxsize=64)
def _origin(endpoint: str) -> tuple[Address, bytes]:
    """An instance endpoint's address, and its Host header."""
    authority = endpoint.removeprefix("http://").removesuffix("/v1")
    host, _, port = authority.rpartition(":")
    return Address(host.strip("[]"), int(port)), authority.encode()


@functools.lru_cache(maxsize=256)
def _encoded(path: str) -> bytes:
    return quote(path, safe=replies.PATH_SAFE).encode()


def _upstream_head(request: Request, instance: Instance, path: str, length: int) -> bytes:
    """The request line (path re-encoded without dot segments, the query as sent) and the
    headers vLLM needs; the instance's own key, never the client's."""
    target = _encoded(path)
    if request.query:
        target += b"?" + request.query
    headers = [(name, value) for name, value in request.headers if name in FORWARDED_REQUEST_HEADERS]
    if instance.api_key:
        headers.append((b"authorization", b"Bearer " + instance.api_key.encode()))
    return wire.request_head(request.method, target, request.version, _origin(instance.endpoint)[1], headers, length)


def _requested_model(request: Request) -> tuple[str, dict[str, Any] | None, str | None]:
    """(model, parsed body, problem). Requests without a body may name the model in ?model=."""
    if not request.body:
        model = _query_model(request.query)
        return (model, None, None) if model else ("", None, "name the model: a JSON body with \"model\", or ?model=")
    try:
        payload = _parse_json(request.body)
    except ValueError as error:
        return "", None, f"request body is not valid JSON: {error}"
    if not isinstance(payload, dict):
        return "", None, "request body must be a JSON object"
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        return "", None, "request body has no \"model\" (a string naming one of GET /v1/models)"
    return model, payload, None


_DECODE = json.JSONDecoder().decode


def _parse_json(body: bytes) -> Any:
    """json.loads(body), taking the short way for UTF-8 (what clients send); anything else
    (a BOM, UTF-16, bad JSON) goes the long way, for json.loads's own answer."""
    try:
        return _DECODE(body.decode())
    except ValueError:
        return json.loads(body)


def _query_model(query: bytes) -> str | None:
    values = parse_qs(query.decode("latin-1")).get("model")
    return values[0] if values else None


def _error(message: str, code: str) -> dict[str, Any]:
    return wire.error_payload(message, type_="server_error", code=code)


def _sse_error(out: Connection, message: str, *, code: str = "upstream_error") -> None:
    with contextlib.suppress(ConnectionError):
        out.stream(wire.sse_event(_error(message, code)))
        out.end_stream()


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


def _upstream_error(out: Connection, alias: str, status: int, headers: Headers, raw: bytes, early: bool) -> None:
    """vLLM answered an error: its OpenAI-shaped errors pass as they are; anything else is
    wrapped, as 502 if vLLM failed (5xx)."""
    shaped = _openai_error_json(raw)
    if shaped is not None:
        if early:
            out.stream(wire.sse_event(shaped))
            out.end_stream()
        else:
            out.send(status, [(name, value) for name, value in headers if name not in _RESPONSE_HOP_BY_HOP], raw)
        return
    message = f"{alias}: vllm serve answered {status} {wire.reason(status).decode()}: {_upstream_error_text(raw)}"
    if early:
        return _sse_error(out, message)
    client_error = status < 500
    openai_error(out, status if client_error else 502, message,
                 type_="invalid_request_error" if client_error else "server_error", code="upstream_error")

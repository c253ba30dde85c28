"""The gateway's admin API: what runs, load and unload, a model's log, a model's own server.

llama-swap compatible: `GET /running` (`{"running": [{"model", "state", ...}]}`, with a
bawt-specific `bawt` field holding the model's status row) and `GET|POST /unload` (unloads every
model; plain `OK` as llama-swap answers, or, asked for JSON, `{"msg": "ok", "stopped": [proof...]}`).
`GET|POST /upstream/{model}/{path}` reaches a loaded model's own server with its instance key
(never loading one). Per model, `/models/{model}`: `POST .../load` (waits until ready), `POST
.../unload` (the stop's proof), `POST .../sleep` and `POST .../wake` (a sleep-mode entry: the sleep's
proof; the status row once awake), `GET` (status row and recent events), `GET .../logs`; `GET /models`
lists every status row. `GET /gpus`: NVML's view of each GPU, our models on it, and what is not ours.

Behind the gateway's key when one is set (the gateway's auth middleware), and refused outright
on a gateway bound beyond loopback without a key: these routes stop models and read their logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from ..control.protocol import BadRequest, LogsRequest
from ..runtime.failures import StartFailed
from ..runtime.instance import Instance
from ..runtime.logfiles import log_text
from ..runtime.placement import CapacityError
from ..runtime.pool import Pool
from ..runtime.sleepmode import SleepFailed
from ..runtime.states import State
from ..runtime.stops import StopResult
from .replies import forwarded_headers, openai_error, resolve_dots, response_headers, unknown_model, upstream_url
from .ui.views import gpu_rows, read_gpus, sleep_refusal

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Send = Callable[[str, URL, bytes, dict[str, str]], Awaitable[aiohttp.ClientResponse]]
ReadBody = Callable[[web.Request], Awaitable[bytes]]

RETRY_AFTER_S = 10
FOLLOW_POLL_S = 0.1
EVENTS_SHOWN = 50  # the most recent events GET /models/{model} returns, unless ?events=N
_NOT_RUNNING = frozenset({State.STOPPED.value, State.FAILED.value})  # every other state holds a process tree


def is_loopback(host: str) -> bool:
    """A bind address reachable from this machine only: 127.0.0.0/8, ::1, localhost."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def refusal(pool: Pool, gateway_key: Callable[[], str | None]) -> web.Response | None:
    """The 403 for a gateway that listens beyond loopback without a key; None when data may be served."""
    host = pool.config.settings.gateway_host
    if gateway_key() is not None or is_loopback(host):
        return None
    variable = pool.config.settings.api_key_env or "BAWT_VLLM_API_KEY"
    return openai_error(403, f"the admin API is off: the gateway listens on {host} without an API key; "
                        f"set ${variable} or bind the gateway to 127.0.0.1 (bawt_vllm.gateway_host)",
                        type_="invalid_request_error", code="admin_refused")


def guarded(pool: Pool, gateway_key: Callable[[], str | None], handler: Handler) -> Handler:
    """handler, refused (403) while the gateway listens beyond loopback without a key."""
    async def guarded_handler(request: web.Request) -> web.StreamResponse:
        refused = refusal(pool, gateway_key)
        return refused if refused is not None else await handler(request)
    return guarded_handler


class AdminApi:
    def __init__(self, pool: Pool, *, send: Send, read_body: ReadBody, gateway_key: Callable[[], str | None],
                 shutting_down: Callable[[], bool]) -> None:
        """send, read_body, gateway_key: the gateway's own (its upstream connections, body limits, key)."""
        self.pool = pool
        self._send = send
        self._read_body = read_body
        self._gateway_key = gateway_key
        self._shutting_down = shutting_down
        self._loads: set[asyncio.Future[Instance]] = set()

    def register(self, app: web.Application) -> None:
        add = app.router.add_route
        add("GET", "/running", self._guarded(self.running))
        for method in ("GET", "POST"):  # llama-swap's /unload is a GET
            add(method, "/unload", self._guarded(self.unload_all))
            add(method, "/upstream/{tail:.*}", self._guarded(self.upstream))
        add("GET", "/models", self._guarded(self.models))
        add("POST", "/models/{model:.+}/load", self._guarded(self.load))
        add("POST", "/models/{model:.+}/unload", self._guarded(self.unload))
        add("POST", "/models/{model:.+}/sleep", self._guarded(self.sleep))
        add("POST", "/models/{model:.+}/wake", self._guarded(self.wake))
        add("GET", "/models/{model:.+}/logs", self._guarded(self.logs))
        add("GET", "/gpus", self._guarded(self.gpus))
        add("GET", "/models/{model:.+}", self._guarded(self.model))

    def _guarded(self, handler: Handler) -> Handler:
        return guarded(self.pool, self._gateway_key, handler)

    # -- llama-swap's routes -----------------------------------------------------------------
    async def running(self, _request: web.Request) -> web.Response:
        """Every model holding a process tree, in llama-swap's shape plus its status row."""
        rows = [row for row in self.pool.status() if row["state"] not in _NOT_RUNNING]
        running = [{"model": row["alias"], "state": row["state"], "name": row.get("served_name", row["alias"]),
                    "description": self.pool.config.models[row["alias"]].description or "",
                    "proxy": (row.get("endpoint") or "").removesuffix("/v1"), "ttl": int(row["idle_ttl_s"] or 0),
                    "bawt": row} for row in rows]
        return web.json_response({"running": running})

    async def unload_all(self, request: web.Request) -> web.Response:
        """Every model stopped. llama-swap answers plain "OK"; asked for JSON, the proofs come along."""
        results = await self.pool.down_all()
        proofs = [result.as_dict() for result in results]
        dirty = [result.summary() for result in results if not result.clean]
        if dirty:
            return _not_clean("; ".join(dirty), {"stopped": proofs})
        if "application/json" in request.headers.get("Accept", ""):
            return web.json_response({"msg": "ok", "stopped": proofs})
        return web.Response(text="OK")

    async def upstream(self, request: web.Request) -> web.StreamResponse:
        """A loaded model's own server (/metrics, /tokenize, /version, ...), with its instance key.

        The model is the shortest leading part of the path that names one (a served name may
        hold a slash); the rest, dot segments resolved, may not climb out of it. Never loads a
        model: 409 unless it is ready. The reply is relayed as the model's server sent it.
        """
        tail = request.path.removeprefix("/upstream/")  # decoded, like the gateway's /v1/ paths
        found = self._model_in(tail)
        if found is None:
            return unknown_model(self.pool.config, tail.split("/", 1)[0])
        alias, rest = found
        segments = resolve_dots(rest)
        if segments is None:
            raise web.HTTPNotFound()  # shaped by the gateway's error middleware, like any unknown URL
        body = await self._read_body(request)
        if not self.pool.is_ready(alias):
            return openai_error(409, f"{alias} is {self.pool.state_of(alias).value}, not ready: its vllm serve has "
                                "nothing to show (this route never loads a model)", type_="invalid_request_error",
                                code="model_not_loaded")
        # Counted in flight (never evicted or idle-unloaded under the request). Nothing is awaited
        # between the check and here, so serving() joins the ready instance: only a stop that
        # begins in that very instant (a `down`) could make it load the model again.
        async with self.pool.serving(alias) as instance:
            url = upstream_url(instance.endpoint, "/" + "/".join(segments), request.rel_url.raw_query_string)
            try:
                upstream = await self._send(request.method, url, body, forwarded_headers(request, instance.api_key))
            except (aiohttp.ClientError, TimeoutError) as error:
                return openai_error(502, f"{alias}: upstream vllm serve failed: {error.__class__.__name__}: {error}",
                                    type_="server_error", code="upstream_error")
            async with upstream:
                return await _relay(request, upstream)

    def _model_in(self, tail: str) -> tuple[str, str] | None:
        """(alias, the rest of the path) for the shortest leading part of tail that names a model."""
        parts = tail.split("/")
        for end in range(1, len(parts) + 1):
            alias = self.pool.config.resolve("/".join(parts[:end]))
            if alias is not None:
                return alias, "/".join(parts[end:])
        return None

    # -- per model ----------------------------------------------------------------------------
    async def models(self, _request: web.Request) -> web.Response:
        return web.json_response({"models": self.pool.status()})

    async def model(self, request: web.Request) -> web.Response:
        """alias's status row and its most recent events (?events=N, default EVENTS_SHOWN)."""
        alias = self.pool.config.resolve(request.match_info["model"])
        if alias is None:
            return unknown_model(self.pool.config, request.match_info["model"])
        shown = request.query.get("events", str(EVENTS_SHOWN))
        if not shown.isdigit():
            return _bad_request(f"events must be a whole number of events to show, not {shown!r}", "events")
        instance = self.pool.get(alias)
        events = [] if instance is None or int(shown) == 0 else instance.events[-int(shown):]
        return web.json_response({**self._row(alias), "events": [event.as_dict() for event in events]})

    async def load(self, request: web.Request) -> web.Response:
        """Load alias and wait until it is ready (nothing streamed); its status row. The load goes
        on if the client goes away."""
        alias = self.pool.config.resolve(request.match_info["model"])
        if alias is None:
            return unknown_model(self.pool.config, request.match_info["model"])
        loading = asyncio.ensure_future(self.pool.up(alias))
        self._loads.add(loading)
        loading.add_done_callback(self._loaded)
        try:
            await asyncio.shield(loading)
        except StartFailed as failure:
            tail = "\nlast log lines:\n" + "\n".join(failure.log_tail) if failure.log_tail else ""
            return _load_failed(failure.reason + tail)
        except CapacityError as busy:
            return openai_error(503, str(busy), type_="server_error", code="no_capacity",
                                headers={"Retry-After": str(RETRY_AFTER_S)})
        except Exception as error:  # no port free, a GGUF download that failed, ...
            return _load_failed(f"{alias}: {error.__class__.__name__}: {error}")
        return web.json_response(self._row(alias))

    def _loaded(self, loading: asyncio.Future[Instance]) -> None:
        self._loads.discard(loading)
        if not loading.cancelled():
            loading.exception()  # read: a load whose client went away fails quietly (the daemon's log has it)

    async def unload(self, request: web.Request) -> web.Response:
        """Stop alias; the proof (StopResult.as_dict()), 500 when the tree could not be proven gone."""
        alias = self.pool.config.resolve(request.match_info["model"])
        if alias is None:
            return unknown_model(self.pool.config, request.match_info["model"])
        result: StopResult = await self.pool.down(alias)
        if not result.clean:
            return _not_clean(result.summary(), {"stop": result.as_dict()})
        return web.json_response(result.as_dict())

    async def sleep(self, request: web.Request) -> web.Response:
        """Put a ready sleep-mode model to sleep; {"alias", "proof"}. A sleep that fails or is not
        proven stops the model instead, as an eviction would (502, with the stop's proof)."""
        alias = self.pool.config.resolve(request.match_info["model"])
        if alias is None:
            return unknown_model(self.pool.config, request.match_info["model"])
        instance = self.pool.get(alias)
        refused = sleep_refusal(self.pool, alias)
        if refused is not None or instance is None:
            return _conflict(refused or f"{alias} is not loaded", "not_sleepable")
        try:
            proof = await instance.sleep("sleep requested")
        except SleepFailed as failure:
            result = await self.pool.down(alias, reason=f"sleep requested; put to sleep failed ({failure}), "
                                          "stopped instead")
            return openai_error(502, f"{alias}: sleep failed ({failure}); stopped instead: {result.summary()}",
                                type_="server_error", code="sleep_failed", extra={"stop": result.as_dict()})
        return web.json_response({"alias": alias, "proof": proof})

    async def wake(self, request: web.Request) -> web.Response:
        """Wake a sleeping model and wait until it answers; its status row."""
        alias = self.pool.config.resolve(request.match_info["model"])
        if alias is None:
            return unknown_model(self.pool.config, request.match_info["model"])
        if self.pool.state_of(alias) is not State.SLEEPING:
            return _conflict(f"{alias} is {self.pool.state_of(alias).value}, not sleeping", "not_sleeping")
        return await self.load(request)

    async def gpus(self, _request: web.Request) -> web.Response:
        """Each GPU as NVML sees it: memory, our models on it with their budgets, and what is not ours."""
        return web.json_response({"gpus": gpu_rows(self.pool, await read_gpus(self.pool))})

    async def logs(self, request: web.Request) -> web.StreamResponse:
        """alias's vllm serve log (?lines=N of its end, ?start=N for an earlier start), and with
        ?follow=1 what is written to it from then on, as text, until the client goes away."""
        alias = self.pool.config.resolve(request.match_info["model"])
        if alias is None:
            return unknown_model(self.pool.config, request.match_info["model"])
        try:
            asked = LogsRequest.from_query(request.query)
        except BadRequest as error:
            return _bad_request(str(error), None)
        path = self.pool.log_path(alias, asked.start)
        if path is None:
            return openai_error(404, f"{alias} has no log yet", type_="invalid_request_error", code="no_log")
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await response.prepare(request)
        text = log_text(path, asked.lines, follow=asked.follow, poll_s=FOLLOW_POLL_S, until=self._shutting_down)
        async with contextlib.aclosing(text):  # the follower's file is closed when the client goes away
            async for chunk in text:
                await response.write(chunk)
        await response.write_eof()
        return response

    def _row(self, alias: str) -> dict[str, Any]:
        return next(row for row in self.pool.status() if row["alias"] == alias)


async def _relay(request: web.Request, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
    """The upstream's answer, status and body as sent; a body that breaks off drops the connection."""
    response = web.StreamResponse(status=upstream.status, headers=response_headers(upstream))
    await response.prepare(request)
    try:
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
    except aiohttp.ClientError as error:
        raise ConnectionResetError(f"upstream broke off: {error}") from error  # a short body must not look whole
    await response.write_eof()
    return response


def _load_failed(message: str) -> web.Response:
    return openai_error(502, message, type_="server_error", code="model_load_failed")


def _not_clean(summary: str, proof: dict[str, Any]) -> web.Response:
    return openai_error(500, f"stop not proven: {summary}", type_="server_error", code="stop_not_clean", extra=proof)


def _conflict(message: str, code: str) -> web.Response:
    return openai_error(409, message, type_="invalid_request_error", code=code)


def _bad_request(message: str, param: str | None) -> web.Response:
    return openai_error(400, message, type_="invalid_request_error", code="invalid_request", param=param)

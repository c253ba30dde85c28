"""The daemon's end of the control socket: the routes of `protocol`, thin over the pool.

Long waits (/up, /down) run as tasks detached from the request, so a client that goes away
never leaves a load or a stop half done; the request only streams what happens meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar, cast

from aiohttp import web

from ..catalog.entries import openai_entry_text
from ..config.problems import UnknownModelError
from ..runtime.failures import StartFailed
from ..runtime.gpus import describe
from ..runtime.instance import Instance
from ..runtime.logfiles import log_text
from ..runtime.placement import CapacityError
from ..runtime.pool import Pool
from ..runtime.states import Event, State
from ..runtime.stops import StopResult
from .protocol import (
    BODY_READ_TIMEOUT_S,
    DOWN,
    EVENTS,
    GPUS,
    HEARTBEAT_S,
    LOGS,
    RELOAD,
    SHUTDOWN,
    STATUS,
    UP,
    BadRequest,
    ErrorCode,
    LogsRequest,
    StopProof,
    done_error,
    down_done,
    error_body,
    event_line,
    model_of,
    parse_object,
    shutdown_done,
    up_done,
    waiting_line,
    wants_all,
)

log = logging.getLogger("bawt_vllm.control")
T = TypeVar("T")

FOLLOW_POLL_S = 0.1

_BUSY = (State.STARTING.value, State.STOPPING.value, State.UNHEALTHY.value)
def _error(status: type[web.HTTPError], message: str, code: ErrorCode = ErrorCode.BAD_REQUEST) -> web.HTTPError:
    return status(text=json.dumps(error_body(message, code)), content_type="application/json")


_ROUTING_ERRORS = {404: ErrorCode.NO_ROUTE, 405: ErrorCode.METHOD_NOT_ALLOWED, 408: ErrorCode.TIMEOUT}


@web.middleware
async def _json_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> web.StreamResponse:
    """aiohttp's own errors (no such route, wrong method) as JSON too, like every other answer."""
    try:
        return await handler(request)
    except web.HTTPError as error:
        if error.content_type == "application/json":
            raise
        headers = {"Allow": error.headers["Allow"]} if "Allow" in error.headers else None
        code = _ROUTING_ERRORS.get(error.status, ErrorCode.BAD_REQUEST if error.status < 500 else ErrorCode.INTERNAL)
        return web.json_response(error_body(f"{error.reason}: {request.method} {request.path}", code),
                                 status=error.status, headers=headers)


async def _read_object(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body ({} when empty); 408 if it does not arrive, 400 if not an object."""
    try:
        async with asyncio.timeout(BODY_READ_TIMEOUT_S):
            raw = await request.read()
    except TimeoutError:
        raise _error(web.HTTPRequestTimeout,
                     f"the request body did not arrive within {BODY_READ_TIMEOUT_S:g}s", ErrorCode.TIMEOUT) from None
    try:
        return parse_object(raw)
    except BadRequest as error:
        raise _error(web.HTTPBadRequest, str(error)) from None


def _checked(parse: Callable[[Any], T], raw: Any) -> T:
    """parse(raw), its BadRequest answered 400 with the message."""
    try:
        return parse(raw)
    except BadRequest as error:
        raise _error(web.HTTPBadRequest, str(error)) from None


async def _ndjson(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    return response


class ControlApi:
    def __init__(self, pool: Pool, *, gateway_url: str, reload: Callable[[], Awaitable[list[str]]],
                 shutdown: Callable[[], None] | None = None, started_at: float | None = None) -> None:
        self.pool = pool
        self.gateway_url = gateway_url
        self._reload = reload
        self._shutdown = shutdown  # asks the daemon to exit the way SIGTERM does; None: /shutdown refused
        self.started_at = started_at or time.time()
        self._tasks: set[asyncio.Task[Any]] = set()

    def _detached(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """A task that runs to its end even if the client goes away (its outcome then unread)."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda done: done.cancelled() or done.exception())
        return task

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_json_errors])
        app.router.add_get(STATUS, self.status)
        app.router.add_post(UP, self.up)
        app.router.add_post(DOWN, self.down)
        app.router.add_get(LOGS, self.logs)
        app.router.add_get(GPUS, self.gpus)
        app.router.add_get(EVENTS, self.events)
        app.router.add_post(RELOAD, self.reload)
        app.router.add_post(SHUTDOWN, self.shutdown)
        return app

    async def status(self, _request: web.Request) -> web.Response:
        daemon = {"pid": os.getpid(), "gateway": self.gateway_url, "config": str(self.pool.config.path),
                  "uptime_s": round(time.time() - self.started_at, 1), "gpus": len(self.pool.inventory.snapshot())}
        return web.json_response({"daemon": daemon, "models": self.pool.status()})

    def _alias(self, name: str | None) -> str:
        """The alias a model name means (an alias or a served name); 400 without one, 404 if unknown."""
        if not name:
            raise _error(web.HTTPBadRequest, "name a model")
        config = self.pool.config
        try:
            return config.entry(config.resolve(name) or name).alias
        except UnknownModelError as error:
            raise _error(web.HTTPNotFound, error.message, ErrorCode.UNKNOWN_MODEL) from None

    # -- long waits: load and stop ----------------------------------------------------------
    async def up(self, request: web.Request) -> web.StreamResponse:
        alias = self._alias(_checked(model_of, await _read_object(request)))
        response = await _ndjson(request)
        loading = self._detached(self.pool.up(alias))
        await self._stream_until(response, loading, [alias])
        await _send_line(response, self._up_result(alias, loading))
        await response.write_eof()
        return response

    def _up_result(self, alias: str, loading: asyncio.Future[Instance]) -> dict[str, Any]:
        error = loading.exception()
        if isinstance(error, StartFailed):
            return done_error(error.details(), ErrorCode.START_FAILED)
        if isinstance(error, CapacityError):
            return done_error(str(error), ErrorCode.NO_CAPACITY)
        if error is not None:
            return done_error(f"{error.__class__.__name__}: {error}", ErrorCode.INTERNAL)
        instance = loading.result()
        gateway_entry = openai_entry_text(alias, instance.entry, f"{self.gateway_url}/v1")
        return dict(up_done(instance.info(), f"{self.gateway_url}/v1", gateway_entry))

    async def down(self, request: web.Request) -> web.StreamResponse:
        body = await _read_object(request)
        aliases: list[str] | None = None  # every instance
        if _checked(wants_all, body):
            stopping = self._detached(self.pool.down_all())
        else:
            aliases = [self._alias(_checked(model_of, body))]
            stopping = self._detached(self._down_one(aliases[0]))
        response = await _ndjson(request)
        await self._stream_until(response, stopping, aliases)
        await _send_line(response, _down_result(stopping))
        await response.write_eof()
        return response

    async def _down_one(self, alias: str) -> list[StopResult]:
        return [await self.pool.down(alias)]

    async def shutdown(self, request: web.Request) -> web.StreamResponse:
        """`bawt-vllm daemon stop`: every model stopped with proof (streamed like /down), then the
        daemon's own shutdown (what SIGTERM does).

        The pool is closed, not only emptied, so nothing starts between the last proof and the
        exit; a closed pool serves nothing more, so the daemon exits once the stops are done
        even if the client went away or a stop failed.
        """
        if self._shutdown is None:
            raise _error(web.HTTPNotImplemented, "this daemon cannot be stopped over its socket", ErrorCode.NO_ROUTE)
        await _read_object(request)
        log.info("daemon stop requested over the control socket: stopping every model, then the daemon")
        stopping = self._detached(self.pool.close())
        try:
            response = await _ndjson(request)
            await self._stream_until(response, stopping, None)
            last = _down_result(stopping)
            if last["ok"]:
                last = dict(shutdown_done(last["results"], os.getpid()))
            await _send_line(response, last)
            await response.write_eof()
        finally:
            shutdown = self._shutdown
            stopping.add_done_callback(lambda _done: shutdown())
        return response

    async def _stream_until(self, response: web.StreamResponse, work: asyncio.Future[Any],
                            aliases: list[str] | None) -> None:
        """Until work is done: each event of aliases' instances (None: of all) as a line, and
        while none comes, a heartbeat every HEARTBEAT_S (the client's proof that the daemon lives)."""
        events: asyncio.Queue[tuple[str, Event]] = asyncio.Queue()

        def forward(instance: Instance, event: Event) -> None:
            if aliases is None or instance.alias in aliases:
                events.put_nowait((instance.alias, event))

        started = time.monotonic()
        unsubscribe = self.pool.subscribe(forward)
        getter: asyncio.Future[tuple[str, Event]] | None = None
        try:
            while not work.done():
                getter = getter or asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait({work, getter}, timeout=HEARTBEAT_S,
                                             return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    await _send_event(response, *getter.result())
                    getter = None
                elif not done:
                    await self._heartbeat(response, aliases, time.monotonic() - started)
            while not events.empty():
                await _send_event(response, *events.get_nowait())
        finally:
            unsubscribe()
            if getter is not None:
                getter.cancel()

    async def _heartbeat(self, response: web.StreamResponse, aliases: list[str] | None, elapsed_s: float) -> None:
        """One `waiting` line per model waited on: the named one, or (for all) each one busy."""
        if aliases is not None:
            rows = [self._where(alias) for alias in aliases]
        else:
            rows = [row for alias in self.pool.config.models if (row := self._where(alias))["state"] in _BUSY]
        for row in rows or [{"model": None, "state": None, "stage": None}]:
            await _send_line(response, waiting_line(row["model"], row["state"], row["stage"], elapsed_s))

    def _where(self, alias: str) -> dict[str, Any]:
        """alias's state, and its load stage while it starts (a later stage would be stale)."""
        instance = self.pool.get(alias)
        if instance is None:
            return {"model": alias, "state": State.STOPPED.value, "stage": None}
        stage = instance.stage if instance.state is State.STARTING else None
        return {"model": alias, "state": instance.state.value, "stage": stage}

    # -- logs and the rest ---------------------------------------------------------------------
    async def logs(self, request: web.Request) -> web.StreamResponse:
        asked = _checked(LogsRequest.from_query, request.query)
        alias = self._alias(asked.model)
        path = self.pool.log_path(alias, asked.start)
        if path is None:
            raise _error(web.HTTPNotFound, f"{alias} has no log yet", ErrorCode.NO_LOG)
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8",
                                               "X-Log-Path": str(path)})
        await response.prepare(request)
        text = log_text(path, asked.lines, follow=asked.follow, poll_s=FOLLOW_POLL_S)
        async with contextlib.aclosing(text):  # the follower's file is closed when the client goes away
            async for chunk in text:
                await response.write(chunk)
        await response.write_eof()
        return response

    async def gpus(self, _request: web.Request) -> web.Response:
        """NVML's view of each GPU, with the models of ours on it and the share of it each may take
        (`budgets`: alias -> fraction, null for a whole GPU; `budget_used`: their sum, null if whole)."""
        budgets = self.pool.gpu_budgets()
        rows = describe(self.pool.inventory.snapshot())
        for row in rows:
            on_it = budgets.get(row["index"], {})
            row["budgets"] = on_it
            shares = list(on_it.values())
            row["budget_used"] = None if None in shares else round(sum(s or 0.0 for s in shares), 3)
        return web.json_response({"gpus": rows})

    async def events(self, request: web.Request) -> web.Response:
        alias = self._alias(request.query.get("model"))
        instance = self.pool.get(alias)
        events = [] if instance is None else [e.as_dict() for e in instance.events]
        return web.json_response({"model": alias, "state": instance.state.value if instance else State.STOPPED.value,
                                  "events": events})

    async def reload(self, _request: web.Request) -> web.Response:
        try:
            changes = await self._reload()
        except Exception as error:  # the daemon keeps running; the caller gets the reason
            log.exception("reload failed")
            message = f"reload failed: {error.__class__.__name__}: {error}"
            return web.json_response(error_body(message, ErrorCode.RELOAD_FAILED), status=500)
        return web.json_response({"changes": changes})


def _down_result(stopping: asyncio.Future[list[StopResult]]) -> dict[str, Any]:
    error = stopping.exception()
    if error is not None:
        return done_error(f"{error.__class__.__name__}: {error}", ErrorCode.STOP_FAILED)
    proofs = [cast(StopProof, result.as_dict()) for result in stopping.result()]
    return dict(down_done(proofs))


async def _send_line(response: web.StreamResponse, payload: dict[str, Any]) -> None:
    await response.write((json.dumps(payload) + "\n").encode())


async def _send_event(response: web.StreamResponse, alias: str, event: Event) -> None:
    await _send_line(response, event_line(alias, event.as_dict()))

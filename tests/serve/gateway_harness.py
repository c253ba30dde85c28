"""A gateway in this process in front of an upstream that records what reaches it: the
harness of the gateway's fault and framing tests, and raw HTTP for what a client library
would normalise or refuse to send."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from bawt_vllm.supervisor.config.loading import load_config
from bawt_vllm.supervisor.config.schema import Config
from bawt_vllm.supervisor.runtime.pool import Pool
from bawt_vllm.supervisor.runtime.states import State
from bawt_vllm.supervisor.serve.gateway import Gateway
from bawt_vllm.supervisor.serve.metrics import Metrics
from helpers import gateway_serving, standin_entry, standin_settings, write_models_yaml

MiB = 1024 * 1024
Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- an upstream that records what reaches it --------------------------------------------
@dataclass
class Upstream:
    """vllm serve's HTTP side, in process: records each request's raw path, answers on cue."""

    seen: list[str] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    answer: Answer | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(await request.read())
        self.seen.append(request.raw_path)
        if self.answer is not None:
            return await self.answer(request)
        return web.json_response({"object": "completion", "path": request.path, "query": request.query_string})


@dataclass
class Remote:
    """What Pool.up returns, as far as the gateway looks: an instance served by Upstream."""

    alias: str
    endpoint: str
    api_key: str | None = None
    state: State = State.READY
    stage: str | None = None


class UpstreamPool(Pool):
    """A real Pool (config, serving, is_ready, state_of) whose up() hands out Upstream-served instances.

    register=False keeps them out of the pool's own table, so only up()'s return value leads there.
    """

    def __init__(self, config: Config, endpoint: str, *, register: bool = True) -> None:
        super().__init__(config)
        self.endpoint = endpoint
        self.register = register

    async def up(self, alias: str, *, wait: bool = True, timeout: float | None = None) -> Any:
        self.config.entry(alias)
        remote = Remote(alias, self.endpoint)
        if self.register:
            self._instances[alias] = remote  # type: ignore[assignment]
        return remote


def standin_config(tmp_path: Path) -> Config:
    models = {"m": standin_entry(), "aliased": standin_entry(served_model_name="served-name")}
    return load_config(write_models_yaml(tmp_path / "models.yaml", models, **standin_settings(tmp_path)))


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[tuple[str, int]]:
    """app on 127.0.0.1 with the daemon's runner settings: (base URL, port)."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}", port
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def gateway_over(tmp_path: Path, upstream: Upstream | None = None, *, register: bool = True,
                       shutting_down: Callable[[], bool] = lambda: False) -> AsyncIterator[tuple[str, int]]:
    """A gateway in front of an UpstreamPool served by upstream: (gateway base URL, port)."""
    upstream_app = web.Application(client_max_size=64 * MiB)
    upstream_app.router.add_route("*", "/{tail:.*}", (upstream or Upstream()).handle)
    async with serving(upstream_app) as (upstream_url, _):
        pool = UpstreamPool(standin_config(tmp_path), f"{upstream_url}/v1", register=register)
        gateway = Gateway(pool, Metrics(pool.status), shutting_down=shutting_down)
        async with gateway_serving(gateway) as served:
            yield served


# -- raw HTTP, for what a client library would normalise or refuse to send -------------------
@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def head(method: str, target: str, *, length: int | None = None, extra: str = "") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: gateway", "Connection: close", "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


async def exchange(port: int, data: bytes, timeout: float = 10) -> Reply:
    """Send data as is on a fresh connection; the response (to its Content-Length, else its end)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(read_reply(reader), timeout)
    finally:
        writer.close()


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    top = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *header_lines = top.strip().split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    length = headers.get("Content-Length")
    body = await (reader.readexactly(int(length)) if length is not None else reader.read())
    return Reply(int(status_line.split()[1]), headers, body)


def assert_openai_error(reply: Reply, status: int, code: str | None = None) -> dict[str, Any]:
    assert reply.status == status, (reply.status, reply.body[:300])
    assert reply.headers.get("Content-Type", "").startswith("application/json"), reply.headers
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    if code is not None:
        assert error["code"] == code, error
    return error


def completion(model: str = "m", **extra: Any) -> bytes:
    return json.dumps({"model": model, "prompt": "x", **extra}).encode()



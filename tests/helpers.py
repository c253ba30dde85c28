"""Small helpers shared by tests: models.yaml writers, process checks, async runners."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, TypeVar

import psutil
import yaml

STANDIN_VLLM = Path(__file__).parent / "standin" / "vllm"
T = TypeVar("T")


def write_models_yaml(path: Path, models: dict[str, dict[str, Any]], **settings: Any) -> Path:
    document = {"bawt_vllm": settings, "models": models}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def standin_entry(mode: str = "ok", **extra: Any) -> dict[str, Any]:
    env = {"FAKE_VLLM_MODE": mode, **extra.pop("env", {})}
    return {"type": "vllm", "model_id": "standin/model", "tool_support": "none", "env": env, **extra}


def standin_settings(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "vllm_executable": str(STANDIN_VLLM),
        "state_dir": str(tmp_path / "state"),
        "port_range": [18500, 18999],
        "stop_grace_s": 2.0,
        "health_interval_s": 0.2,
        "restart_backoff_s": 0.05,
        "restart_backoff_max_s": 0.2,
        "max_restarts": 2,
        "ready_stall_timeout_s": 10,
        "max_cpu_instances": 4,
        "eviction_wait_s": 0.5,
    }
    settings.update(overrides)
    return settings


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def alive(pids: Iterable[int]) -> list[int]:
    """The pids that are still running (zombies count as gone)."""
    living = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                living.append(pid)
        except psutil.NoSuchProcess:
            continue
    return living


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll predicate until true or the deadline passes; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)

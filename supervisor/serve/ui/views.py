"""What the dashboard (and the admin API's /gpus) shows, built from the pool's public read side:
each model's status row with its load's progress, and each GPU with who holds what on it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ...runtime.gpus import GpuInfo, describe
from ...runtime.pool import Pool
from ...runtime.states import EventKind, Stage, State

_LOAD_STARTS = frozenset({EventKind.START_REQUESTED, EventKind.ADOPTING, EventKind.RESTARTING, EventKind.WAKING})
_STAGES = list(Stage)
# Fields that change with the clock alone: the page counts them on from the last snapshot.
CLOCK_FIELDS = ("uptime_s", "idle_s", "unload_in_s")


def sleep_refusal(pool: Pool, alias: str) -> str | None:
    """Why alias cannot be put to sleep now; None when it can."""
    if pool.config.models[alias].sleep_level is None:
        return f"{alias} has no sleep_level in models.yaml: it cannot sleep, only stop"
    state = pool.state_of(alias)
    if state is not State.READY:
        return f"{alias} is {state.value}, not ready: only a ready model can be put to sleep"
    in_flight = pool.usage.of(alias).in_flight
    if in_flight:
        return f"{alias} has {in_flight} request(s) in flight: it sleeps once they are done"
    return None


def model_rows(pool: Pool) -> list[dict[str, Any]]:
    """pool.status() with what the page adds: the load's progress and clock, the entry's description."""
    rows = []
    for row in pool.status():
        alias = row["alias"]
        entry = pool.config.models[alias]
        row = {**row, "description": entry.description or "", "sleep_capable": entry.sleep_level is not None,
               "progress": None, "loading_since": None}
        instance = pool.get(alias)
        if instance is not None and row["state"] == State.STARTING.value:
            row["progress"] = _load_fraction(row.get("stage"))
            row["stage"] = pool.progress(alias)
            starts = [event.at for event in instance.events if event.kind in _LOAD_STARTS]
            row["loading_since"] = starts[-1] if starts else None
        rows.append(row)
    return rows


def _load_fraction(stage: str | None) -> float:
    """How far through the load stages: a feel, not a promise (stages vary in length)."""
    if stage is None:
        return 0.0
    try:
        rank = Stage(stage).rank
    except ValueError:
        return 0.0
    return round((rank + 1) / len(_STAGES), 3)


async def read_gpus(pool: Pool) -> list[GpuInfo]:
    """NVML's reading of every GPU, taken off the event loop (NVML calls block)."""
    return await asyncio.to_thread(pool.inventory.snapshot)


def gpu_rows(pool: Pool, gpus: list[GpuInfo]) -> list[dict[str, Any]]:
    """NVML's view of each GPU (`gpus`, as read_gpus reads it); `budgets` (alias -> fraction, null for
    a whole GPU), `budget_used`, and each process named by its model (`alias`), or null when bawt-vllm
    did not start it; `foreign_bytes` sums what is not ours."""
    budgets = pool.gpu_budgets()
    ours = _our_pids(pool)
    rows = describe(gpus)
    for row in rows:
        on_it = budgets.get(row["index"], {})
        shares = list(on_it.values())
        row["budgets"] = on_it
        row["budget_used"] = None if None in shares else round(sum(share or 0.0 for share in shares), 3)
        for process in row["processes"]:
            process["alias"] = ours.get(process["pid"])
        row["foreign_bytes"] = sum(p["used_bytes"] or 0 for p in row["processes"] if p["alias"] is None)
    return rows


def _our_pids(pool: Pool) -> dict[int, str]:
    """pid -> alias for every process of every tree the pool holds."""
    found: dict[int, str] = {}
    for alias, instance in pool.instances.items():
        process = instance.process
        if process is not None:
            found.update((member.pid, alias) for member in process.known_members())
    return found


async def snapshot(pool: Pool) -> dict[str, Any]:
    """Everything the page shows at once; `time` lets it count clocks on from here."""
    gpus = await read_gpus(pool)
    return {"time": time.time(), "models": model_rows(pool), "gpus": gpu_rows(pool, gpus)}


def signature(view: dict[str, Any]) -> Any:
    """view without its clock fields: what a pushed update must differ in."""
    models = [{k: v for k, v in row.items() if k not in CLOCK_FIELDS} for row in view["models"]]
    return models, view["gpus"]

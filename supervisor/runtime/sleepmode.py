"""vLLM sleep mode, the checks around it: room in host RAM for the weights before a level-1 sleep,
and the proof afterwards that the GPU memory came back (NVML, like a stop's proof).

A sleeping vLLM keeps its process, its CUDA context and its allocator's pools: the proof allows
`sleep_residual_mib` beyond the stop tolerance. The instance (instance.py) drives the sleep itself.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from ..config.schema import Settings
from .gpus import GpuInventory
from .vram import wait_vram_released

HOST_ROOM_FACTOR = 1.2
"""Level-1 sleep needs host RAM for the weights, with this margin."""


class SleepFailed(RuntimeError):
    """A sleep that could not be done or proven; the caller stops the instance instead."""


def check_host_room(level: int, used_before_start: int | None, used_while_running: int | None) -> None:
    """Level 1 moves the weights to host RAM: SleepFailed when the host has not that much available
    (the weights are taken as what the GPU used more once the instance was loaded)."""
    if level != 1 or used_before_start is None or used_while_running is None:
        return
    weights_bytes = max(0, used_while_running - used_before_start)
    import psutil

    available = psutil.virtual_memory().available
    if available < weights_bytes * HOST_ROOM_FACTOR:
        raise SleepFailed(f"host RAM too short for level-1 sleep: {available / 2**30:.1f} GiB available, "
                          f"the weights take about {weights_bytes / 2**30:.1f} GiB")


async def prove_sleep(inventory: GpuInventory, gpus: Sequence[int], settings: Settings, *,
                      used_before_start: int | None, used_while_running: int | None, started: float) -> str:
    """NVML shows the GPU memory back to its level before the start, within tolerance + residual;
    the proof in one line, or SleepFailed."""
    if not gpus or not inventory.snapshot():
        return f"asleep in {time.monotonic() - started:.2f}s (no GPU here: nothing for NVML to show)"
    allowance = (settings.vram_tolerance_mib + settings.sleep_residual_mib) * 1024 * 1024
    release = await wait_vram_released(
        inventory, indices=gpus, pids=set(), used_before_start=used_before_start,
        used_while_running=used_while_running, tolerance_bytes=allowance, timeout_s=settings.vram_release_timeout_s)
    if not release.proven:
        raise SleepFailed(f"the GPU memory did not come back: {release.detail}")
    return f"asleep in {time.monotonic() - started:.2f}s: {release.detail}"

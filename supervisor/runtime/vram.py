"""Proof that a stop gave the VRAM back: NVML read until the tree's processes are off the GPUs and
the memory is down to what was used before the start (within a tolerance), or a timeout says why not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from .gpus import GpuInfo, GpuInventory, gib_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VramRelease:
    """Whether stopping an instance gave its VRAM back, and the evidence."""

    proven: bool
    seconds: float
    freed_bytes: int | None
    lingering_pids: tuple[int, ...]
    detail: str


def used_bytes(gpus: list[GpuInfo], indices: Sequence[int]) -> int:
    """Used memory summed over the GPUs `indices`; an index missing from `gpus` counts as 0."""
    wanted = set(indices)
    return sum(g.used_bytes for g in gpus if g.index in wanted)


@dataclass(frozen=True)
class _Reading:
    missing: tuple[int, ...]
    lingering: tuple[int, ...]
    used_now: int
    memory_ok: bool

    @property
    def proven(self) -> bool:
        return not self.missing and not self.lingering and self.memory_ok


def _read_release(
    gpus: list[GpuInfo], indices: Sequence[int], pids: Collection[int], limit: int | None
) -> _Reading:
    by_index = {g.index: g for g in gpus}
    missing = tuple(sorted(i for i in set(indices) if i not in by_index))
    present = [by_index[i] for i in sorted(set(indices)) if i in by_index]
    wanted = set(pids)
    lingering = tuple(sorted({p.pid for g in present for p in g.processes if p.pid in wanted}))
    used_now = sum(g.used_bytes for g in present)
    return _Reading(missing, lingering, used_now, memory_ok=limit is None or used_now <= limit)


def _gpu_list(indices: Sequence[int]) -> str:
    idx = sorted(set(indices))
    return ("GPU " if len(idx) == 1 else "GPUs ") + ", ".join(str(i) for i in idx)


def _release_detail(
    reading: _Reading | None,
    *,
    indices: Sequence[int],
    seconds: float,
    freed: int | None,
    used_before_start: int | None,
    tolerance_bytes: int,
    error: str | None,
) -> str:
    where = _gpu_list(indices)
    if reading is None:
        return f"VRAM release on {where} not proven after {seconds:.1f}s: no GPU reading ({error})"
    baseline = (
        "no baseline"
        if used_before_start is None
        else f"baseline {gib_text(used_before_start)} + {gib_text(tolerance_bytes)} tolerance"
    )
    memory = f"{gib_text(reading.used_now)} used ({baseline})"
    if reading.proven:
        freed_text = "" if freed is None else f"{gib_text(freed)} freed, "
        return f"VRAM released on {where} in {seconds:.1f}s: {freed_text}{memory}"
    reasons: list[str] = []
    if reading.missing:
        reasons.append(f"{_gpu_list(reading.missing)} not readable")
    if reading.lingering:
        reasons.append("pids " + ", ".join(str(p) for p in reading.lingering) + " still listed")
    if not reading.memory_ok:
        reasons.append(f"{memory} still held")
    else:
        reasons.append(memory)
    return f"VRAM release on {where} not proven after {seconds:.1f}s: " + "; ".join(reasons)


async def wait_vram_released(
    inventory: GpuInventory,
    *,
    indices: Sequence[int],
    pids: Collection[int],
    used_before_start: int | None,
    used_while_running: int | None,
    tolerance_bytes: int,
    timeout_s: float,
    poll_s: float = 0.05,
) -> VramRelease:
    """Poll `inventory` until the stopped instance's VRAM is back, or `timeout_s` passes.

    Proven when none of `pids` is listed on the GPUs `indices`, every one of those GPUs could be read, and
    (when `used_before_start` is known) their used memory is back to <= used_before_start + tolerance_bytes.
    The pid check alone is not enough: the driver can keep memory for a moment after a process is gone, and
    the memory check alone is not enough either, because another program may have taken the memory since.
    With no `indices` (an instance that ran without GPUs) there is nothing to hold back, so it is proven.
    A reading that raises is treated as not proven yet and retried until the deadline.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + max(0.0, timeout_s)
    limit = None if used_before_start is None else used_before_start + tolerance_bytes
    if not indices:
        return VramRelease(True, 0.0, None, (), "no GPUs assigned; no VRAM to release")

    while True:
        reading: _Reading | None = None
        error: str | None = None
        try:
            reading = _read_release(inventory.snapshot(), indices, pids, limit)
        except Exception as exc:  # a failed reading is "not proven yet", never a crash of the stop path
            error = f"{type(exc).__name__}: {exc}"
        now = loop.time()
        proven = reading is not None and reading.proven
        if proven or now >= deadline:
            return _release_result(
                reading,
                indices=indices,
                seconds=now - start,
                used_before_start=used_before_start,
                used_while_running=used_while_running,
                tolerance_bytes=tolerance_bytes,
                error=error,
            )
        await asyncio.sleep(max(0.0, min(poll_s, deadline - now)))


def _release_result(
    reading: _Reading | None,
    *,
    indices: Sequence[int],
    seconds: float,
    used_before_start: int | None,
    used_while_running: int | None,
    tolerance_bytes: int,
    error: str | None,
) -> VramRelease:
    freed = None
    if reading is not None and not reading.missing and used_while_running is not None:
        freed = used_while_running - reading.used_now
    detail = _release_detail(
        reading,
        indices=indices,
        seconds=seconds,
        freed=freed,
        used_before_start=used_before_start,
        tolerance_bytes=tolerance_bytes,
        error=error,
    )
    return VramRelease(
        proven=reading is not None and reading.proven,
        seconds=seconds,
        freed_bytes=freed,
        lingering_pids=() if reading is None else reading.lingering,
        detail=detail,
    )

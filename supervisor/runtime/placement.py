"""Where a model may run and what must make room: the pool's policy, as pure functions.

The pool describes what it holds as `Occupant`s; these functions decide (which GPUs or CPU
slot, which idle instance to evict, which ones are past their idle TTL) without touching a
process, so the policy can be read and tested apart from the effects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..config.schema import ModelEntry
from .gpus import GpuInfo, choose_gpus
from .states import State

EVICTABLE_STATES = frozenset({State.READY, State.UNHEALTHY})


class CapacityError(RuntimeError):
    """Nothing free to place an instance on, and nothing idle to evict."""


@dataclass(frozen=True)
class Occupant:
    """One placed instance, as placement sees it."""

    alias: str
    state: State
    holds_resources: bool  # live, or a process still held (a stop that left survivors)
    gpus: tuple[int, ...]
    in_flight: int
    last_used: float  # monotonic


def choose_slot(entry: ModelEntry, gpus: Sequence[GpuInfo], occupants: Sequence[Occupant],
                max_cpu_instances: int) -> list[int]:
    """The GPUs for entry (empty: a CPU slot); raises CapacityError or GpuUnavailableError when
    nothing is free as things stand (before any eviction)."""
    holders = [o for o in occupants if o.holds_resources]
    if not gpus:
        if len(holders) >= max_cpu_instances:
            names = ", ".join(o.alias for o in holders)
            raise CapacityError(f"{entry.alias}: no GPU here and the CPU cap of {max_cpu_instances} instance(s) "
                                f"is reached ({names}); raise bawt_vllm.max_cpu_instances or stop one")
        return []
    held = {gpu: o.alias for o in holders for gpu in o.gpus}
    return choose_gpus(list(gpus), count=entry.tensor_parallel_size, held=held, pin=entry.gpu,
                       memory_fraction=entry.gpu_memory_utilization, alias=entry.alias)


def eviction_candidate(occupants: Sequence[Occupant], exclude: str) -> str | None:
    """The least recently used instance that is loaded and serves no request now, if any."""
    idle = [o for o in occupants if o.alias != exclude and o.state in EVICTABLE_STATES and o.in_flight == 0]
    return min(idle, key=lambda o: o.last_used).alias if idle else None


def evictable_later(occupants: Sequence[Occupant], exclude: str) -> bool:
    """Whether waiting can help: some loaded instance will become idle when its requests end."""
    return any(o.alias != exclude and o.state in EVICTABLE_STATES for o in occupants)


def idle_expired(occupants: Sequence[Occupant], ttl_of: Callable[[str], float | None], now: float) -> list[str]:
    """The ready instances without a request in flight whose idle TTL has passed."""
    expired = []
    for occupant in occupants:
        ttl = ttl_of(occupant.alias)
        if ttl and occupant.state is State.READY and occupant.in_flight == 0 and now - occupant.last_used > ttl:
            expired.append(occupant.alias)
    return expired

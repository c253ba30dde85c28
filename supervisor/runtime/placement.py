"""Where a model may run and what must make room: the pool's policy, as pure functions.

The pool describes what it holds as `Occupant`s; these functions decide (which GPUs or CPU
slot, which idle instance to evict, which ones are past their idle TTL) without touching a
process, so the policy can be read and tested apart from the effects.

GPU sharing: an entry with a `gpu_memory_utilization` on one GPU has that fraction of the GPU
as its budget (vLLM's own meaning), and shares a GPU with other budgeted instances while the
budgets add up to at most 1; NVML's free memory must cover it too (another program may use the
GPU). An entry without one, or a tensor-parallel one, takes its GPUs whole. A sleeping instance
counts for nothing in the budgets (its weights and KV cache are off the GPU); pinned ones are
never evicted or idle-unloaded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ..config.schema import ModelEntry
from .gpus import GpuInfo, choose_gpus
from .states import State

EVICTABLE_STATES = frozenset({State.READY, State.UNHEALTHY})
FULL_GPU = 1.0 + 1e-9  # budgets add up to at most one whole GPU (with room for float rounding)


class CapacityError(RuntimeError):
    """Nothing free to place an instance on, and nothing idle to evict."""


@dataclass(frozen=True)
class Placement:
    """Where an instance runs: its port and GPU indices (empty: on the CPU)."""

    port: int
    gpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class Occupant:
    """One placed instance, as placement sees it."""

    alias: str
    state: State
    holds_resources: bool  # live, or a process still held (a stop that left survivors)
    gpus: tuple[int, ...]
    in_flight: int
    last_used: float  # monotonic
    budget: float | None = None  # its share of one GPU; None: it holds its GPUs whole
    pinned: bool = False

    @property
    def gpu_share(self) -> float | None:
        """What it takes of its GPU now: nothing while asleep, else its budget (None: the whole GPU)."""
        return 0.0 if self.state is State.SLEEPING else self.budget


def choose_slot(entry: ModelEntry, gpus: Sequence[GpuInfo], occupants: Sequence[Occupant],
                max_cpu_instances: int) -> list[int]:
    """The GPUs for entry (empty: a CPU slot); raises CapacityError or GpuUnavailableError when
    nothing is free as things stand (before any eviction)."""
    holders = [o for o in occupants if o.holds_resources]
    if not gpus:
        awake = [o for o in holders if o.state is not State.SLEEPING]  # the cap is on engines at work
        if len(awake) >= max_cpu_instances:
            names = ", ".join(o.alias for o in awake)
            raise CapacityError(f"{entry.alias}: no GPU here and the CPU cap of {max_cpu_instances} instance(s) "
                                f"is reached ({names}); raise bawt_vllm.max_cpu_instances or stop one")
        return []
    blocked, shared = _gpu_use(entry, holders)
    return choose_gpus(list(gpus), count=entry.tensor_parallel_size, held=blocked, pin=entry.gpu,
                       memory_fraction=entry.gpu_memory_utilization, alias=entry.alias, packed=shared)


def _gpu_use(entry: ModelEntry, holders: Sequence[Occupant]) -> tuple[dict[int, str], dict[int, float]]:
    """(GPU -> why entry cannot go there, GPU -> budget already used there by sharing instances)."""
    by_gpu: dict[int, list[Occupant]] = {}
    for occupant in holders:
        for gpu in occupant.gpus:
            by_gpu.setdefault(gpu, []).append(occupant)
    blocked: dict[int, str] = {}
    shared: dict[int, float] = {}
    budget = entry.gpu_budget
    for gpu, on in by_gpu.items():
        names = ", ".join(o.alias for o in on)
        shares = [o.gpu_share for o in on]
        if budget is None and any(share != 0.0 for share in shares):
            blocked[gpu] = names
            continue
        if any(share is None for share in shares):
            blocked[gpu] = names
            continue
        used = sum(share or 0.0 for share in shares)
        if budget is not None and used + budget > FULL_GPU:
            blocked[gpu] = f"{names} (budgets {used:g} of 1 in use; {entry.alias} asks {budget:g})"
        else:
            shared[gpu] = used
    return blocked, shared


def helps_placing(entry: ModelEntry, gpus: Sequence[GpuInfo], occupants: Sequence[Occupant],
                  candidate: Occupant, max_cpu_instances: int) -> bool:
    """Whether stopping (or putting to sleep) candidate could let entry be placed: tried with the
    candidate gone and its GPUs' memory counted as free (NVML cannot show that before it goes)."""
    rest = [o for o in occupants if o.alias != candidate.alias]
    freed = [replace(g, free_bytes=g.total_bytes, used_bytes=0) if g.index in candidate.gpus else g for g in gpus]
    try:
        choose_slot(entry, freed, rest, max_cpu_instances)
    except Exception:  # CapacityError or GpuUnavailableError: no room even then
        return False
    return True


def eviction_candidate(occupants: Sequence[Occupant], exclude: str,
                       helps: Callable[[Occupant], bool] | None = None) -> str | None:
    """The least recently used instance that is loaded, not pinned, serves no request now and (when
    helps is given) whose going would make room, if any."""
    idle = [o for o in occupants if o.alias != exclude and o.state in EVICTABLE_STATES and o.in_flight == 0
            and not o.pinned and (helps is None or helps(o))]
    return min(idle, key=lambda o: o.last_used).alias if idle else None


def evictable_later(occupants: Sequence[Occupant], exclude: str) -> bool:
    """Whether waiting can help: some loaded instance will become idle when its requests end."""
    return any(o.alias != exclude and o.state in EVICTABLE_STATES and not o.pinned for o in occupants)


def idle_expired(occupants: Sequence[Occupant], ttl_of: Callable[[str], float | None], now: float) -> list[str]:
    """The ready instances without a request in flight whose idle TTL has passed."""
    expired = []
    for occupant in occupants:
        ttl = ttl_of(occupant.alias)
        idle = occupant.state is State.READY and occupant.in_flight == 0 and not occupant.pinned
        if ttl and idle and now - occupant.last_used > ttl:
            expired.append(occupant.alias)
    return expired


def budgets_by_gpu(occupants: Sequence[Occupant]) -> dict[int, dict[str, float | None]]:
    """GPU index -> {alias: its share now (None: the whole GPU)} for every occupant holding it."""
    use: dict[int, dict[str, float | None]] = {}
    for occupant in occupants:
        if occupant.holds_resources:
            for gpu in occupant.gpus:
                use.setdefault(gpu, {})[occupant.alias] = occupant.gpu_share
    return use

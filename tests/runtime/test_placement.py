"""The pool's policy as pure functions (supervisor/runtime/placement.py): where a model may run, what
is evicted for it, what is idle past its TTL. No process is started here: the effects are the pool's."""

from __future__ import annotations

from typing import Any

import pytest
from bawt_vllm.supervisor.config.schema import ModelEntry
from bawt_vllm.supervisor.runtime.gpus import GIB, GpuInfo, GpuUnavailableError
from bawt_vllm.supervisor.runtime.placement import (
    CapacityError,
    Occupant,
    choose_slot,
    evictable_later,
    eviction_candidate,
    helps_placing,
    idle_expired,
)
from bawt_vllm.supervisor.runtime.states import State


def entry(alias: str = "new", **fields: Any) -> ModelEntry:
    return ModelEntry(alias=alias, model_id="org/model", tool_support="none", **fields)


def occupant(alias: str, *, state: State = State.READY, in_flight: int = 0, last_used: float = 0.0,
             gpus: tuple[int, ...] = (), holds: bool = True, budget: float | None = None,
             pinned: bool = False) -> Occupant:
    return Occupant(alias, state, holds, gpus, in_flight, last_used, budget=budget, pinned=pinned)


def gpu(index: int, free_gib: float = 80.0) -> GpuInfo:
    total = 80 * GIB
    free = int(free_gib * GIB)
    return GpuInfo(index, f"GPU-{index}", "H100", total, total - free, free, ())


# -- choose_slot --------------------------------------------------------------------------------
def test_on_the_cpu_the_cap_counts_every_instance_holding_a_process() -> None:
    held = [occupant("a"), occupant("b", state=State.FAILED, holds=True)]
    with pytest.raises(CapacityError, match=r"CPU cap of 2 instance\(s\) is reached \(a, b\)"):
        choose_slot(entry(), [], held, max_cpu_instances=2)
    gone = [occupant("a"), occupant("b", state=State.STOPPED, holds=False)]
    assert choose_slot(entry(), [], gone, max_cpu_instances=2) == []


def test_a_gpu_one_of_ours_holds_is_never_chosen() -> None:
    assert choose_slot(entry(), [gpu(0), gpu(1)], [occupant("a", gpus=(0,))], max_cpu_instances=1) == [1]
    with pytest.raises(GpuUnavailableError):
        choose_slot(entry(), [gpu(0)], [occupant("a", gpus=(0,))], max_cpu_instances=1)


def test_a_stopped_occupant_no_longer_holds_its_gpu() -> None:
    stopped = occupant("a", state=State.STOPPED, gpus=(0,), holds=False)
    assert choose_slot(entry(), [gpu(0)], [stopped], max_cpu_instances=1) == [0]


# -- eviction -----------------------------------------------------------------------------------
def test_the_least_recently_used_idle_instance_is_evicted() -> None:
    occupants = [occupant("old", last_used=1.0), occupant("newer", last_used=5.0),
                 occupant("busy", last_used=0.5, in_flight=1), occupant("loading", state=State.STARTING)]
    assert eviction_candidate(occupants, exclude="new") == "old"


def test_nothing_busy_loading_or_asked_for_is_evicted() -> None:
    occupants = [occupant("busy", in_flight=2), occupant("loading", state=State.STARTING),
                 occupant("new", last_used=0.0)]
    assert eviction_candidate(occupants, exclude="new") is None


def test_waiting_helps_only_while_a_loaded_instance_may_become_idle() -> None:
    assert evictable_later([occupant("busy", in_flight=1)], exclude="new")
    assert evictable_later([occupant("sick", state=State.UNHEALTHY, in_flight=1)], exclude="new")
    assert not evictable_later([occupant("loading", state=State.STARTING), occupant("new")], exclude="new")


# -- idle TTL -----------------------------------------------------------------------------------
def test_only_ready_idle_instances_past_their_ttl_expire() -> None:
    occupants = [occupant("expired", last_used=0.0), occupant("recent", last_used=95.0),
                 occupant("busy", last_used=0.0, in_flight=1), occupant("sick", state=State.UNHEALTHY),
                 occupant("forever", last_used=0.0)]
    ttls = {"expired": 10.0, "recent": 10.0, "busy": 10.0, "sick": 10.0, "forever": None}
    assert idle_expired(occupants, ttls.get, now=100.0) == ["expired"]


# -- sharing a GPU by budget, sleeping and pinned -----------------------------------------------
def test_budgets_pack_the_fullest_gpu_that_still_fits() -> None:
    occupants = [occupant("a", gpus=(1,), budget=0.5), occupant("b", gpus=(0,), budget=0.3)]
    assert choose_slot(entry(gpu_memory_utilization=0.4), [gpu(0), gpu(1)], occupants, 1) == [1]
    assert choose_slot(entry(gpu_memory_utilization=0.6), [gpu(0), gpu(1)], occupants, 1) == [0]


def test_a_whole_gpu_holder_and_a_budgeted_one_never_share() -> None:
    with pytest.raises(GpuUnavailableError, match="held by a"):
        choose_slot(entry(gpu_memory_utilization=0.2), [gpu(0)], [occupant("a", gpus=(0,))], 1)
    with pytest.raises(GpuUnavailableError, match="held by b"):
        choose_slot(entry(), [gpu(0)], [occupant("b", gpus=(0,), budget=0.2)], 1)


def test_nvml_free_memory_still_decides_when_the_budgets_fit() -> None:
    with pytest.raises(GpuUnavailableError, match=r"needs 1 GPU with >= 32\.0 GiB free"):
        choose_slot(entry(gpu_memory_utilization=0.4), [gpu(0, free_gib=20)], [], 1)


def test_a_sleeping_instance_counts_for_nothing_in_budgets_nor_the_cpu_cap() -> None:
    asleep = occupant("a", state=State.SLEEPING, gpus=(0,), budget=0.8)
    assert choose_slot(entry(gpu_memory_utilization=0.8), [gpu(0)], [asleep], 1) == [0]
    assert choose_slot(entry(), [], [occupant("a", state=State.SLEEPING)], max_cpu_instances=1) == []


def test_pinned_instances_are_neither_evicted_nor_expired() -> None:
    pinned = occupant("chat", last_used=0.0, pinned=True)
    assert eviction_candidate([pinned, occupant("job", last_used=9.0)], exclude="new") == "job"
    assert not evictable_later([pinned], exclude="new")
    assert idle_expired([pinned], lambda _alias: 1.0, now=100.0) == []


def test_eviction_picks_only_an_instance_whose_going_makes_room() -> None:
    occupants = [occupant("old-cpu-free", last_used=0.0, gpus=(1,), budget=0.2),
                 occupant("in-the-way", last_used=5.0, gpus=(0,))]
    wanted = entry(gpu=0)
    assert eviction_candidate(occupants, exclude="new",
                              helps=lambda o: helps_placing(wanted, [gpu(0), gpu(1)], occupants, o, 1)) == "in-the-way"

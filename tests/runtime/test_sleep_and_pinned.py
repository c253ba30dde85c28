"""vLLM sleep mode instead of a kill, and pinned models (supervisor/runtime/pool.py, instance.py), on the stand-in.

The stand-in serves vLLM's sleep endpoints when started with --enable-sleep-mode and
VLLM_SERVER_DEV_MODE=1, and answers 503 on /v1/* while asleep, so a request routed to a
sleeping instance would show. No GPU here: the CPU cap (max_cpu_instances=1) makes the room.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from bawt_vllm.supervisor.config.loading import load_config
from bawt_vllm.supervisor.runtime.placement import CapacityError
from bawt_vllm.supervisor.runtime.pool import Pool
from bawt_vllm.supervisor.runtime.states import EventKind, State
from helpers import alive, run, standin_entry, standin_settings, tracked, write_models_yaml


def make_pool(tmp_path: Path, models: dict, **settings) -> Pool:
    merged = {"max_cpu_instances": 1, "eviction_wait_s": 0.2, **settings}
    path = write_models_yaml(tmp_path / "models.yaml", models, **standin_settings(tmp_path, **merged))
    return tracked(Pool(load_config(path)))


async def answers(pool: Pool, alias: str) -> int:
    """The status of one completion sent to alias's instance the way the gateway sends it."""
    async with pool.serving(alias) as instance, aiohttp.ClientSession() as http:
        body = {"model": instance.entry.served_name, "prompt": "hi", "max_tokens": 1}
        headers = {"Authorization": f"Bearer {instance.api_key}"}
        async with http.post(instance.endpoint + "/completions", json=body, headers=headers) as response:
            return response.status


def kinds(pool: Pool, alias: str) -> list[EventKind]:
    instance = pool.get(alias)
    return [] if instance is None else [event.kind for event in instance.events]


def test_an_evicted_sleep_mode_model_sleeps_and_wakes_for_its_next_request(tmp_path):
    pool = make_pool(tmp_path, {"chat": standin_entry(sleep_level=1), "job": standin_entry()})

    async def scenario():
        chat = await pool.up("chat", timeout=20)
        chat_pid = chat.pid
        await pool.up("job", timeout=20)  # the CPU cap: chat must make room
        asleep = (chat.state, chat.pid, alive([chat_pid]))
        status = await answers(pool, "chat")  # wakes chat; job (no sleep level) is stopped for it
        woken = (chat.state, chat.pid, pool.state_of("job"))
        await pool.close()
        return chat_pid, asleep, status, woken

    chat_pid, asleep, status, woken = run(scenario())
    assert asleep == (State.SLEEPING, chat_pid, [chat_pid]), "evicted by a kill instead of a sleep"
    assert status == 200, "a request reached the instance while it was still asleep"
    assert woken == (State.READY, chat_pid, State.STOPPED), "woken by a cold start instead of /wake_up"
    events = kinds(pool, "chat")
    assert events.index(EventKind.SLEEPING) < events.index(EventKind.SLEPT) < events.index(EventKind.WAKING)
    assert events.count(EventKind.LAUNCHED) == 1


def test_the_idle_ttl_puts_a_sleep_mode_model_to_sleep_not_down(tmp_path):
    pool = make_pool(tmp_path, {"chat": standin_entry(sleep_level=2, idle_ttl_s=0.3)})

    async def scenario():
        chat = await pool.up("chat", timeout=20)
        pool.start_ttl_reaper(interval_s=0.1)
        while chat.state is not State.SLEEPING:
            await asyncio.wait_for(chat.wait_change(), 10)
        asleep_pid = chat.pid
        status = await answers(pool, "chat")
        await pool.close()
        return asleep_pid, status

    asleep_pid, status = run(scenario())
    assert asleep_pid is not None, "the TTL killed the process instead of putting it to sleep"
    assert status == 200
    assert EventKind.IDLE_UNLOADED not in kinds(pool, "chat")


def test_down_kills_a_sleeping_model_whole(tmp_path):
    pool = make_pool(tmp_path, {"chat": standin_entry(sleep_level=1), "job": standin_entry()})

    async def scenario():
        chat = await pool.up("chat", timeout=20)
        pid = chat.pid
        await pool.up("job", timeout=20)
        assert chat.state is State.SLEEPING
        result = await pool.down("chat")
        await pool.close()
        return pid, result

    pid, result = run(scenario())
    assert result.was_running and result.clean and alive([pid]) == []


def test_a_pinned_model_is_never_evicted_nor_idle_unloaded_but_down_stops_it(tmp_path):
    pool = make_pool(tmp_path, {"chat": standin_entry(pinned=True, idle_ttl_s=0.2), "job": standin_entry()})

    async def scenario():
        chat = await pool.up("chat", timeout=20)
        pool.start_ttl_reaper(interval_s=0.05)
        with pytest.raises(CapacityError):
            await pool.up("job", timeout=20)
        expired = pool.expired_aliases()
        state = chat.state
        result = await pool.down("chat")
        await pool.close()
        return state, expired, result

    state, expired, result = run(scenario())
    assert state is State.READY and expired == []
    assert result.was_running and result.clean


def test_a_sleep_nvml_does_not_prove_is_a_stop_instead(tmp_path):
    """On a GPU the sleep must show in NVML like a stop; memory that stays is a kill, with the reason."""
    from bawt_vllm.supervisor.runtime.gpus import GIB, GpuInfo, StaticInventory

    def reading(used_gib: float) -> list[GpuInfo]:
        total = 80 * GIB
        return [GpuInfo(0, "GPU-0", "NVIDIA H100", total, int(used_gib * GIB), total - int(used_gib * GIB), ())]

    inventory = StaticInventory(reading(1))
    models = {"chat": standin_entry(sleep_level=2, gpu_memory_utilization=0.5),
              "job": standin_entry(gpu_memory_utilization=0.6)}
    path = write_models_yaml(tmp_path / "models.yaml", models,
                             **standin_settings(tmp_path, eviction_wait_s=0.2, vram_release_timeout_s=0.3))
    pool = tracked(Pool(load_config(path), inventory=inventory))

    async def scenario():
        chat = await pool.up("chat", timeout=20)
        pid = chat.pid
        inventory.set(reading(30))  # the model's memory: it never comes back (job still fits in NVML)
        await pool.up("job", timeout=20)
        events = [event for event in chat.events if event.kind in (EventKind.SLEEPING, EventKind.EVICTED)]
        await pool.close()
        return pid, chat.state, events

    pid, state, events = run(scenario())
    assert [event.kind for event in events] == [EventKind.SLEEPING, EventKind.EVICTED]
    assert "stopped instead" in events[1].message and "did not come back" in events[1].message
    assert state is State.STOPPED and alive([pid]) == []


def test_a_requests_keep_alive_overrides_the_idle_ttl(tmp_path):
    pool = make_pool(tmp_path, {"m": standin_entry(idle_ttl_s=3600), "n": standin_entry(idle_ttl_s=0.05)},
                     max_cpu_instances=2)

    async def scenario():
        await pool.up("m", timeout=20)
        await pool.up("n", timeout=20)
        pool.keep_alive("m", 0.05)  # keep_alive: "50ms" on a model the config keeps for an hour
        pool.keep_alive("n", None)  # keep_alive: -1 on a model the config unloads at once
        await asyncio.sleep(0.1)  # idle time is what is tested: it has to pass
        expired = pool.expired_aliases()
        rows = {row["alias"]: row["idle_ttl_s"] for row in pool.status()}
        await pool.close()
        return expired, rows

    expired, rows = run(scenario())
    assert expired == ["m"]
    assert rows == {"m": 0.05, "n": None}

"""Supervision against the stand-in server: the faults a real `vllm serve` won't show on demand."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bawt_vllm.supervisor.config.loading import load_config
from bawt_vllm.supervisor.runtime.failures import StartFailed
from bawt_vllm.supervisor.runtime.placement import CapacityError
from bawt_vllm.supervisor.runtime.pool import Pool
from bawt_vllm.supervisor.runtime.process import ProcessIdentity, ServeProcess
from bawt_vllm.supervisor.runtime.states import TRANSITIONS, EventKind, IllegalTransition, State
from helpers import (
    ForegroundSupervisor,
    alive,
    run,
    standin_entry,
    standin_settings,
    tracked,
    wait_until,
    write_models_yaml,
)


def make_pool(tmp_path: Path, models: dict, **settings) -> Pool:
    path = write_models_yaml(tmp_path / "models.yaml", models, **standin_settings(tmp_path, **settings))
    return tracked(Pool(load_config(path)))


async def until_failed(pool: Pool, alias: str):
    """Start alias and follow it until it ends failed (after its restarts)."""
    instance = await pool.up(alias, timeout=20)
    while instance.state is not State.FAILED:
        await asyncio.wait_for(instance.wait_change(), 20)
    return instance


async def _up_and_down(pool: Pool, alias: str):
    instance = await pool.up(alias, timeout=20)
    members = [m.pid for m in instance.process.refresh()]
    result = await pool.down(alias)
    return instance, members, result


def test_start_ready_stop_leaves_nothing(tmp_path):
    pool = make_pool(tmp_path, {"m": standin_entry("engine_child")})
    instance, members, result = run(_up_and_down(pool, "m"))
    assert len(members) == 2, "API server and its engine child"
    assert result.was_running and result.clean and not result.sigkilled
    assert alive(members) == []
    assert instance.state is State.STOPPED
    states = [e.state for e in instance.events]
    assert states[0] is State.STARTING and State.READY in states and states[-1] is State.STOPPED
    assert not (tmp_path / "state" / "instances" / "m.json").exists()


def test_exit_during_load_fails_fast_with_log_tail(tmp_path):
    pool = make_pool(tmp_path, {"m": standin_entry("exit_during_load")})

    async def scenario():
        started = time.monotonic()
        with pytest.raises(StartFailed) as failure:
            await pool.up("m", timeout=20)
        return time.monotonic() - started, failure.value, pool.instances["m"]

    took, failure, instance = run(scenario())
    assert took < 5
    assert failure.exit_code == 3
    assert "exited during load with code 3" in failure.reason
    assert any("CUDA out of memory" in line for line in failure.log_tail)
    assert instance.state is State.FAILED and instance.pid is None
    run(pool.close())


def test_never_ready_times_out_on_stall_and_is_stopped(tmp_path):
    pool = make_pool(tmp_path, {"m": standin_entry("never_ready")}, ready_stall_timeout_s=1.0)

    async def scenario():
        instance = await pool.up("m", wait=False)
        while instance.pid is None:
            await asyncio.wait_for(instance.wait_change(), 10)
        pid = instance.pid
        with pytest.raises(StartFailed, match="stalled"):
            await instance.wait_ready(timeout=20)
        return pid, instance

    pid, instance = run(scenario())
    assert instance.state is State.FAILED
    assert alive([pid]) == []


def test_ignores_sigterm_is_killed_after_grace(tmp_path):
    pool = make_pool(tmp_path, {"m": standin_entry("ignore_sigterm")}, stop_grace_s=0.5)
    _instance, members, result = run(_up_and_down(pool, "m"))
    assert result.sigkilled == members
    assert 0.5 <= result.took_s < 2.5
    assert alive(members) == [] and result.clean


def test_child_that_escapes_the_group_is_swept(tmp_path):
    pool = make_pool(tmp_path, {"m": standin_entry("escape_child")}, stop_grace_s=0.5)

    async def scenario():
        instance = await pool.up("m", timeout=20)
        members = instance.process.refresh()
        escaped = [m.pid for m in members if os.getpgid(m.pid) != instance.process.pgid]
        result = await pool.down("m")
        return escaped, result

    escaped, result = run(scenario())
    assert len(escaped) == 1
    assert result.processes_checked == 2, "the escapee is counted in the proof"
    assert alive(escaped) == [] and result.clean


def test_death_after_ready_restarts_with_backoff_then_fails(tmp_path):
    pool = make_pool(tmp_path, {"m": standin_entry("die_after_ready", env={"FAKE_VLLM_DIE_AFTER_S": "0.3"})},
                     max_restarts=2)

    instance = run(until_failed(pool, "m"))
    assert instance.restarts == 2
    assert "gave up after 2 restart(s)" in instance.events[-1].message
    restarts = [e.message for e in instance.events if "restart " in e.message]
    assert [m.split("restart ")[1][:3] for m in restarts] == ["1/2", "2/2"]
    logs = sorted(p.name for p in (tmp_path / "state" / "logs").iterdir())
    assert logs == ["m.1.log", "m.2.log", "m.3.log"], "each start keeps its own log"
    assert instance.pid is None
    run(pool.close())


def test_a_dead_server_is_never_shown_ready_while_its_tree_is_cleaned_up(tmp_path):
    """The exit is a state change at once (unhealthy), before the kill of what is left and the restart."""
    pool = make_pool(tmp_path, {"m": standin_entry("die_after_ready", env={"FAKE_VLLM_DIE_AFTER_S": "0.3"})},
                     max_restarts=0)

    instance = run(until_failed(pool, "m"))
    after_ready = [e for e in instance.events if e.at >= next(x.at for x in instance.events
                                                              if x.kind is EventKind.READY)]
    kinds = [e.kind for e in after_ready]
    assert kinds[:2] == [EventKind.READY, EventKind.UNHEALTHY], kinds
    assert after_ready[1].message == "vllm serve exited with code 1 after being ready"
    assert kinds.index(EventKind.EXITED) > 1, "the tree was cleaned up while the state still said ready"
    run(pool.close())


def test_unhealthy_after_ready_is_noticed_and_restarted(tmp_path):
    pool = make_pool(tmp_path, {"m": standin_entry("unhealthy_after_ready", env={"FAKE_VLLM_DIE_AFTER_S": "0.2"})},
                     max_restarts=1)

    instance = run(until_failed(pool, "m"))
    first_pid = instance.launched_pids[0]
    states = [e.state for e in instance.events]
    assert State.UNHEALTHY in states
    assert "/health answered 503" in instance.last_error.reason
    assert alive([first_pid]) == []
    run(pool.close())


def test_hung_engine_is_caught_by_the_token_probe(tmp_path):
    pool = make_pool(tmp_path, {"m": standin_entry("hang_after_ready")}, liveness_probe=True,
                     probe_timeout_s=0.3, max_restarts=0)

    instance = run(until_failed(pool, "m"))
    assert "engine hung: a 1-token request got no answer" in instance.last_error.reason
    run(pool.close())


def test_twenty_concurrent_starts_share_one_process(tmp_path):
    pool = make_pool(tmp_path, {"m": standin_entry("ok")})

    async def scenario():
        instances = await asyncio.gather(*(pool.up("m", timeout=20) for _ in range(20)))
        launches = [e for e in instances[0].events if e.stage == "launched"]
        result = await pool.down("m")
        return instances, launches, result

    instances, launches, result = run(scenario())
    assert len({id(i) for i in instances}) == 1
    assert len(launches) == 1
    assert result.clean


def test_cpu_cap_refuses_a_second_busy_instance(tmp_path):
    pool = make_pool(tmp_path, {"a": standin_entry(), "b": standin_entry()}, max_cpu_instances=1)

    async def scenario():
        await pool.up("a", timeout=20)
        async with pool.serving("a"):
            with pytest.raises(CapacityError, match="CPU cap of 1"):
                await pool.up("b", timeout=20)
        await pool.up("b", timeout=20)  # now "a" is idle: evicted as least recently used
        states = {row["alias"]: row["state"] for row in pool.status()}
        await pool.close()
        return states

    assert run(scenario()) == {"a": "stopped", "b": "ready"}


def test_state_machine_refuses_illegal_moves(tmp_path):
    pool = make_pool(tmp_path, {"m": standin_entry()})

    async def scenario():
        instance = await pool.up("m", timeout=20)
        with pytest.raises(IllegalTransition):
            instance._enter(EventKind.STOPPED, "skipping stopping")
        await pool.down("m")

    run(scenario())
    assert State.STOPPED not in TRANSITIONS[State.READY]


def test_adopts_a_healthy_survivor_and_stops_a_changed_one(tmp_path):
    models = {"keep": standin_entry(), "changed": standin_entry()}
    pool = make_pool(tmp_path, models)

    async def first_life():
        await pool.up("keep", timeout=20)
        await pool.up("changed", timeout=20)
        pids = {alias: pool.instances[alias].pid for alias in models}
        for instance in pool.instances.values():  # the supervisor "dies": nothing is stopped
            await instance._cancel_supervisor()
        return pids

    pids = run(first_life())
    models["changed"]["max_model_len"] = 1024
    second = make_pool(tmp_path, models)

    async def second_life():
        report = await second.recover()
        state = second.instances["keep"].state
        await second.close()
        return report, state

    report, state = run(second_life())
    assert report.adopted == ["keep"] and state is State.READY
    assert [r.alias for r in report.stopped] == ["changed"] and report.stopped[0].clean
    assert alive(pids.values()) == []
    assert not list((tmp_path / "state" / "instances").glob("*.json"))


def test_recovery_ignores_a_reused_pid(tmp_path):
    pool = make_pool(tmp_path, {"m": standin_entry()})
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record_dir = tmp_path / "state" / "instances"
        record_dir.mkdir(parents=True)
        created = ProcessIdentity.of(stranger.pid).create_time
        (record_dir / "m.json").write_text(json.dumps({
            "alias": "m", "pid": stranger.pid, "create_time": created - 1000.0, "pgid": stranger.pid,
            "sid": 999_999, "port": 18500, "gpus": [], "log": None, "served_name": "m", "started_at": 0.0,
        }))
        report = run(pool.recover())
        assert report.gone == ["m"] and report.clean
        assert stranger.poll() is None, "a process that merely reuses the pid is not ours"
    finally:
        stranger.kill()
        stranger.wait()


def test_killing_the_supervisor_takes_its_tree_down(tmp_path):
    config = write_models_yaml(tmp_path / "models.yaml", {"m": standin_entry("engine_child")},
                               **standin_settings(tmp_path))
    with ForegroundSupervisor(config, "m") as supervisor:
        supervisor.wait_ready(20)
        members = supervisor.members()
        assert len(alive(members)) == 2
        supervisor.process.send_signal(signal.SIGKILL)
        supervisor.process.wait(10)
        assert wait_until(lambda: not alive(members), 5), f"left behind: {alive(members)}"
        report = run(make_pool(tmp_path, {"m": standin_entry("engine_child")}).recover())
        assert report.clean and report.gone == ["m"]


def test_serve_process_reaps_zombies(tmp_path):
    async def scenario():
        process = ServeProcess.spawn([sys.executable, "-c", "import time; time.sleep(60)"], env=dict(os.environ),
                                     log_path=tmp_path / "z.log")
        report = await process.kill_tree(1.0)
        return process, report

    process, report = run(scenario())
    assert report.clean and process.exit_code() == -signal.SIGTERM
    with pytest.raises(ChildProcessError):
        os.waitpid(process.pid, os.WNOHANG)


def _gpu(index: int, free_gib: float, total_gib: float = 80.0):
    from bawt_vllm.supervisor.runtime.gpus import GIB, GpuInfo

    used = int((total_gib - free_gib) * GIB)
    return GpuInfo(index=index, uuid=f"GPU-{index}", name="H100", total_bytes=int(total_gib * GIB), used_bytes=used,
                   free_bytes=int(free_gib * GIB), processes=())


def test_two_budgeted_models_share_a_gpu_and_a_third_is_refused(tmp_path):
    """gpu_memory_utilization is a budget: 0.4 + 0.4 fit on one GPU, a third 0.4 does not (nothing idle)."""
    from bawt_vllm.supervisor.runtime.gpus import StaticInventory

    models = {name: standin_entry(env={"FAKE_VLLM_ARGV_FILE": str(tmp_path / f"{name}.json")},
                                  gpu_memory_utilization=0.4) for name in ("a", "b", "c")}
    path = write_models_yaml(tmp_path / "models.yaml", models, **standin_settings(tmp_path, eviction_wait_s=0.2))
    pool = tracked(Pool(load_config(path), inventory=StaticInventory([_gpu(0, 79)])))

    async def scenario():
        await pool.up("a", timeout=20)
        await pool.up("b", timeout=20)
        async with pool.serving("a"), pool.serving("b"):
            with pytest.raises(CapacityError) as full:
                await pool.up("c", timeout=20)
        placements = {alias: pool.instances[alias].placement.gpus for alias in ("a", "b")}
        await pool.close()
        return placements, str(full.value)

    placements, message = run(scenario())
    assert placements == {"a": (0,), "b": (0,)}
    seen = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in ("a", "b")}
    assert seen["a"]["cuda_visible_devices"] == seen["b"]["cuda_visible_devices"] == "0"
    assert "budgets 0.8 of 1 in use; c asks 0.4" in message, message


def test_one_gpu_each_with_pci_order_and_a_clear_error_when_full(tmp_path):
    """Without a gpu_memory_utilization an entry takes its GPU whole (vLLM's default 0.9 of it)."""
    from bawt_vllm.supervisor.runtime.gpus import StaticInventory

    models = {name: standin_entry(env={"FAKE_VLLM_ARGV_FILE": str(tmp_path / f"{name}.json")})
              for name in ("a", "b", "c")}
    path = write_models_yaml(tmp_path / "models.yaml", models, **standin_settings(tmp_path, eviction_wait_s=0.2))
    pool = tracked(Pool(load_config(path), inventory=StaticInventory([_gpu(0, 79), _gpu(1, 75)])))

    async def scenario():
        await pool.up("a", timeout=20)
        await pool.up("b", timeout=20)
        async with pool.serving("a"), pool.serving("b"):
            with pytest.raises(CapacityError) as full:
                await pool.up("c", timeout=20)
        placements = {alias: pool.instances[alias].placement.gpus for alias in ("a", "b")}
        await pool.close()
        return placements, str(full.value)

    placements, message = run(scenario())
    assert placements == {"a": (0,), "b": (1,)}, "the freest GPU first, never one another instance holds"
    seen = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in ("a", "b")}
    assert seen["a"]["cuda_visible_devices"] == "0" and seen["b"]["cuda_visible_devices"] == "1"
    assert seen["a"]["cuda_device_order"] == "PCI_BUS_ID"
    assert "GPU 0 (H100) is held by a" in message and "GPU 1 (H100) is held by b" in message


def test_a_stop_under_way_prevents_restarts(tmp_path):
    pool = make_pool(tmp_path, {"m": standin_entry("engine_child")}, restart_backoff_s=0.0)

    async def scenario():
        instance = await pool.up("m", timeout=20)
        pid = instance.pid
        instance.expect_shutdown()  # as when systemd signals the whole cgroup at once
        os.kill(pid, signal.SIGTERM)
        while instance.process is not None:
            await asyncio.wait_for(instance.wait_change(), 10)
        await pool.close()
        return instance

    instance = run(scenario())
    assert [e.stage for e in instance.events].count("launched") == 1, "no new vllm serve was started"
    assert instance.state is State.STOPPED


def test_a_cancelled_caller_does_not_leave_a_half_stopped_tree(tmp_path):
    pool = make_pool(tmp_path, {"m": standin_entry("ignore_sigterm")}, stop_grace_s=0.5)

    async def scenario():
        instance = await pool.up("m", timeout=20)
        pid = instance.pid
        stopping = asyncio.ensure_future(pool.down("m"))
        await asyncio.sleep(0)  # let the stop begin, then give up on it like a disconnecting client
        stopping.cancel()
        while instance.state is not State.STOPPED:
            await asyncio.wait_for(instance.wait_change(), 10)
        again = await pool.up("m", timeout=20)
        await pool.close()
        return pid, again is not instance

    pid, replaced = run(scenario())
    assert alive([pid]) == [] and replaced


def test_idle_time_counts_from_ready_not_from_the_load(tmp_path):
    pool = make_pool(tmp_path, {"m": standin_entry(env={"FAKE_VLLM_LOAD_S": "1.0"})})

    async def scenario():
        await pool.up("m", timeout=20)
        row = pool.status()[0]
        await pool.close()
        return row

    row = run(scenario())
    assert row["idle_s"] < 0.5, "a slow load must not count as idle time (nor eat the idle TTL)"


def test_a_missing_vllm_executable_fails_fast_with_the_setting_named(tmp_path):
    pool = make_pool(tmp_path, {"m": standin_entry()}, vllm_executable=str(tmp_path / "no-such-vllm"))

    async def scenario():
        with pytest.raises(StartFailed) as failure:
            await pool.up("m", timeout=10)
        return failure.value, pool.instances["m"].state

    failure, state = run(scenario())
    assert "cannot run" in failure.reason and "No such file or directory" in failure.reason
    assert "bawt_vllm.vllm_executable" in failure.reason
    assert state is State.FAILED

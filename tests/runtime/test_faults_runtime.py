"""Faults that break the runtime's promises (issue 14): each test tries to break one.

Promises: nothing we did not start is ever signalled; ready means our own server answers;
stopped means gone (escapees included); a reload never leaves an untracked server; nothing
starts once shutdown begins; a hung engine is caught and a busy one is not.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from bawt_vllm.supervisor.config.loading import load_config
from bawt_vllm.supervisor.runtime.failures import StartFailed
from bawt_vllm.supervisor.runtime.pool import ConfigRejected, Pool, PoolClosed
from bawt_vllm.supervisor.runtime.process import ProcessIdentity, ServeProcess
from bawt_vllm.supervisor.runtime.statefile import InstanceRecord, StateStore
from bawt_vllm.supervisor.runtime.states import State
from helpers import (
    STANDIN_VLLM,
    alive,
    free_port,
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


@pytest.fixture
def stranger():
    """A process of someone else's: its own session, started 'long after' any record of ours."""
    process = subprocess.Popen(["sleep", "600"], start_new_session=True)
    yield process
    process.kill()
    process.wait()


def _record_naming(pid: int, alias: str = "m", **extra) -> InstanceRecord:
    real_start = psutil.Process(pid).create_time()
    fields = {"alias": alias, "pid": pid, "create_time": real_start - 1000.0, "pgid": pid, "sid": pid, "port": 1,
              "gpus": [], "log": None, "served_name": alias, "started_at": 0.0,
              "members": [[pid, real_start - 1000.0]], **extra}
    return InstanceRecord(**fields)


# -- 1. never signal a stranger -------------------------------------------------------------
def test_a_stale_record_whose_pid_was_reused_signals_nothing(tmp_path, stranger):
    pool = make_pool(tmp_path, {"m": standin_entry()})
    StateStore(pool.state_dir).save(_record_naming(stranger.pid))

    report = run(pool.recover(adopt=True))

    assert report.gone == ["m"] and not report.stopped and not report.adopted
    assert stranger.poll() is None, "the stranger's session was signalled"
    assert not (pool.state_dir / "instances" / "m.json").exists()


def test_a_stale_tree_is_not_killed_through_the_strangers_group_or_session(tmp_path, stranger):
    tree = ServeProcess.adopt(ProcessIdentity(stranger.pid, psutil.Process(stranger.pid).create_time() - 5),
                              pgid=stranger.pid, sid=stranger.pid)

    report = run(tree.kill_tree(grace_s=0.2))

    assert report.clean and report.sigkilled == [] and report.checked == 1
    assert stranger.poll() is None


def test_a_daemon_start_with_a_stale_record_leaves_the_stranger_alone(tmp_path, stranger):
    from helpers import RunningDaemon

    path = write_models_yaml(tmp_path / "models.yaml", {"m": standin_entry()},
                             **standin_settings(tmp_path, gateway_port=free_port()))
    StateStore(tmp_path / "state").save(_record_naming(stranger.pid))
    with RunningDaemon(path) as daemon:
        assert daemon.client.status()["models"][0]["state"] == "stopped"
    assert stranger.poll() is None


@pytest.mark.parametrize("content", [
    '{"alias": "m", "pid": "1234", "create_time": 1, "pgid": 1234, "sid": 1234, "port": 1, "gpus": [],'
    ' "log": null, "served_name": "m", "started_at": 0}',
    '{"alias": "m", "pid": 1234, "create_time": 1, "pgid": 1234, "sid": 1234, "port": 1, "gpus": "0",'
    ' "log": null, "served_name": "m", "started_at": 0}',
    '[1, 2, 3]',
    '{"alias": "m", "pid": 1, "create_time": 1, "pgid": 1, "sid": 1, "port": 1, "gpus": [],'
    ' "log": null, "served_name": "m", "started_at": 0}',
    '\xff\xfe not json',
])
def test_a_malformed_state_record_is_set_aside_not_trusted(tmp_path, content):
    store = StateStore(tmp_path)
    store.directory.mkdir(parents=True)
    (store.directory / "m.json").write_bytes(content.encode("utf-8", "surrogateescape"))

    assert store.load_all() == []
    assert (store.directory / "m.corrupt").exists()


def test_a_record_cannot_be_written_outside_the_instances_directory(tmp_path):
    store = StateStore(tmp_path)
    with pytest.raises(ValueError, match="cannot name a state record"):
        store.save(_record_naming(os.getpid(), alias="../x"))
    assert not (tmp_path / "x.json").exists()


# -- 3. ready means our own server answers --------------------------------------------------
def test_a_foreign_server_on_our_port_during_the_load_is_never_called_ready(tmp_path):
    port = free_port()
    pool = make_pool(tmp_path, {"m": standin_entry(port=port, env={"FAKE_VLLM_LOAD_S": "8"})})
    foreign = subprocess.Popen(
        [sys.executable, str(STANDIN_VLLM), "serve", "other", "--port", str(port), "--served-model-name", "m"],
        env={**os.environ, "FAKE_VLLM_MODE": "ok", "FAKE_VLLM_LOAD_S": "0.5"},
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with pytest.raises(StartFailed, match="not ours"):
            run(pool.up("m", timeout=20))
        instance = pool.get("m")
        assert instance is not None and instance.state is State.FAILED
        assert not any(e.state is State.READY for e in instance.events)
        assert alive(instance.launched_pids) == []
        assert foreign.poll() is None, "the foreign server was signalled"
    finally:
        foreign.kill()
        foreign.wait()


def test_the_backend_refuses_requests_without_the_instances_own_key(tmp_path):
    from helpers import http

    pool = make_pool(tmp_path, {"m": standin_entry()})

    async def scenario():
        instance = await pool.up("m", timeout=20)
        try:
            without = await asyncio.to_thread(http, "GET", f"{instance.endpoint}/models")
            with_key = await asyncio.to_thread(http, "GET", f"{instance.endpoint}/models",
                                               headers={"Authorization": f"Bearer {instance.api_key}"})
            argv = " ".join(psutil.Process(instance.pid).cmdline())
            return instance.api_key, without[0], with_key[0], argv
        finally:
            await pool.close()

    key, status_without, status_with, argv = run(scenario())
    assert len(key) >= 24 and key not in argv
    assert status_without == 401 and status_with == 200


# -- 4. a reload never leaves an untracked server -------------------------------------------
def test_a_reload_with_requests_arriving_leaves_exactly_one_tracked_tree(tmp_path):
    models = {"m": standin_entry("ignore_sigterm")}
    pool = make_pool(tmp_path, models, stop_grace_s=1.0)
    changed = write_models_yaml(tmp_path / "changed.yaml", {"m": standin_entry("ignore_sigterm", env={"X": "1"})},
                                **standin_settings(tmp_path, stop_grace_s=1.0))

    async def scenario():
        old = await pool.up("m", timeout=20)
        old_pids = [m.pid for m in old.process.refresh()]
        reload = asyncio.ensure_future(pool.apply_config(load_config(changed)))
        await asyncio.sleep(0)  # the reload holds the placement lock from here on
        arrivals = [asyncio.ensure_future(pool.up("m", timeout=20)) for _ in range(5)]
        changes = await reload
        results = await asyncio.gather(*arrivals, return_exceptions=True)
        new = pool.get("m")
        assert new is not None, (changes, results)
        try:
            return old_pids, changes, results, new, [m.pid for m in new.process.refresh()]
        finally:
            await pool.close()

    old_pids, changes, results, new, new_pids = run(scenario())
    assert "entry changed" in changes[0]
    assert alive(old_pids) == [], "the old tree outlived the reload"
    assert all(r is new for r in results), results
    assert new.entry.env.get("X") == "1" and len(new.launched_pids) == 1
    assert set(new_pids).isdisjoint(old_pids)


def test_a_reload_that_moves_the_state_dir_is_refused_and_changes_nothing(tmp_path):
    pool = make_pool(tmp_path, {"m": standin_entry()})
    moved = write_models_yaml(tmp_path / "moved.yaml", {"m": standin_entry(), "n": standin_entry()},
                              **standin_settings(tmp_path, state_dir=str(tmp_path / "elsewhere")))

    with pytest.raises(ConfigRejected, match="state_dir"):
        run(pool.apply_config(load_config(moved)))
    assert list(pool.config.models) == ["m"]


# -- 6. a hung engine is caught with default settings, a busy one is not ----------------------
def _engine_child(instance) -> int:
    members = [m.pid for m in instance.process.refresh() if m.pid != instance.pid]
    assert len(members) == 1, members
    return members[0]


def test_a_stopped_engine_is_caught_with_default_liveness_settings(tmp_path):
    pool = make_pool(tmp_path, {"m": standin_entry("engine_child")}, probe_timeout_s=1.0, max_restarts=1)
    stopped: list[int] = []

    async def scenario():
        instance = await pool.up("m", timeout=20)
        engine = _engine_child(instance)
        os.kill(engine, signal.SIGSTOP)
        stopped.append(engine)
        detected = time.monotonic()
        while not any("engine hung" in e.message for e in instance.events):
            await asyncio.wait_for(instance.wait_change(), 15)
        took = time.monotonic() - detected
        await instance.wait_ready(timeout=20)
        await pool.close()
        return took, instance

    try:
        took, instance = run(scenario())
    finally:
        for pid in alive(stopped):
            os.kill(pid, signal.SIGCONT)
    assert took < 10
    assert instance.restarts == 1 and alive(stopped) == []


def test_a_busy_engine_streaming_for_longer_than_the_window_is_not_called_hung(tmp_path):
    pool = make_pool(tmp_path, {"m": standin_entry("engine_child", env={"FAKE_VLLM_TOKENS": "20",
                                                                         "FAKE_VLLM_TOKEN_S": "0.15"})},
                     probe_timeout_s=1.0, max_restarts=1)

    async def stream(url: str, key: str) -> int:
        import aiohttp

        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session, session.post(
                f"{url}/chat/completions", json={"model": "m", "stream": True, "messages": []}) as response:
            return (await response.read()).count(b"data:")

    async def scenario():
        instance = await pool.up("m", timeout=20)
        chunks = await asyncio.gather(*(stream(instance.endpoint, instance.api_key) for _ in range(4)))
        try:
            return chunks, instance
        finally:
            await pool.close()

    chunks, instance = run(scenario())
    assert chunks == [21] * 4, "every stream ran to its end (3 s of streaming, a 1 s window)"
    assert instance.restarts == 0
    assert not any("hung" in e.message for e in instance.events)


# -- 7. nothing starts once shutdown begins -----------------------------------------------------
def test_shutdown_while_a_load_waits_for_capacity_starts_nothing(tmp_path):
    pool = make_pool(tmp_path, {"a": standin_entry(), "b": standin_entry()}, max_cpu_instances=1,
                     eviction_wait_s=30)

    async def scenario():
        await pool.up("a", timeout=20)
        async with pool.serving("a"):
            waiting = asyncio.ensure_future(pool.up("b", timeout=40))
            await asyncio.sleep(0.3)
            assert not waiting.done()
            results = await pool.close()
        with pytest.raises(PoolClosed):
            await waiting
        with pytest.raises(PoolClosed):
            await pool.up("a")
        return results

    results = run(scenario())
    assert [r.alias for r in results if r.was_running] == ["a"]
    assert pool.get("b") is None, "b was placed after shutdown began"


# -- 8. an escapee made after ready is part of the tree -----------------------------------------
def test_an_escapee_made_after_ready_is_found_and_stopped_and_counted(tmp_path):
    pool = make_pool(tmp_path, {"m": standin_entry("escape_after_ready")}, stop_grace_s=0.5)

    async def scenario():
        instance = await pool.up("m", timeout=20)
        log = instance.log_path
        assert wait_until(lambda: "escapee pid" in log.read_text(), 10)
        escapee = int(log.read_text().split("escapee pid ")[1].split()[0])
        assert os.getsid(escapee) != instance.process.sid
        result = await pool.down("m")
        return escapee, result

    escapee, result = run(scenario())
    assert alive([escapee]) == []
    assert result.clean and result.processes_checked == 2


# -- 12. a model with its own key is adopted, not stopped, by the next supervisor ---------------
def test_a_survivor_with_its_own_api_key_is_adopted(tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL_KEY", "s3cret-key")
    models = {"m": standin_entry(api_key_env="MODEL_KEY")}
    first = make_pool(tmp_path, models)
    second = make_pool(tmp_path, models)

    async def scenario():
        instance = await first.up("m", timeout=20)
        pid = instance.pid
        report = await second.recover(adopt=True)
        adopted = second.get("m")
        state = adopted.state if adopted else None
        await second.close()
        first._instances.clear()  # the first supervisor 'died'; the second owns the tree now
        return pid, report, state

    pid, report, state = run(scenario())
    assert report.adopted == ["m"] and not report.stopped
    assert state is State.READY
    assert alive([pid]) == []


def test_a_record_of_a_tree_that_survived_its_kill_stays_on_disk(tmp_path, monkeypatch):
    from bawt_vllm.supervisor.runtime.process import KillReport

    pool = make_pool(tmp_path, {"m": standin_entry()})

    async def scenario():
        instance = await pool.up("m", timeout=20)
        real_kill = ServeProcess.kill_tree

        async def survivor_left(self, grace_s):
            await real_kill(self, grace_s)
            return KillReport(took_s=0.1, survivors=[self.pid])

        monkeypatch.setattr(ServeProcess, "kill_tree", survivor_left)
        result = await pool.down("m")
        return instance, result

    instance, result = run(scenario())
    assert not result.clean and instance.state is State.FAILED
    assert instance.process is not None
    record = json.loads((pool.state_dir / "instances" / "m.json").read_text())
    assert record["pid"] == instance.pid
    assert instance.placement.port in pool.ports.reserved()


def test_a_port_bound_but_not_yet_listening_elsewhere_is_not_handed_out():
    import socket

    from bawt_vllm.supervisor.runtime.ports import PortAllocator

    loading_elsewhere = socket.socket()  # how vLLM holds its port during a load: bound, not listening
    loading_elsewhere.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    loading_elsewhere.bind(("127.0.0.1", 0))
    try:
        taken = loading_elsewhere.getsockname()[1]
        assert PortAllocator("127.0.0.1", taken, taken + 20).reserve() != taken
    finally:
        loading_elsewhere.close()


def test_a_request_during_recovery_joins_the_adopted_server_instead_of_starting_a_second(tmp_path):
    models = {"m": standin_entry()}
    first = make_pool(tmp_path, models)
    second = make_pool(tmp_path, models)

    async def scenario():
        survivor = await first.up("m", timeout=20)
        first._instances.clear()  # the first supervisor 'died', leaving its tree and record
        os.kill(survivor.pid, signal.SIGSTOP)  # a slow adoption check: the window for the race
        asyncio.get_running_loop().call_later(1.0, os.kill, survivor.pid, signal.SIGCONT)
        recovering = asyncio.ensure_future(second.recover(adopt=True))
        await asyncio.sleep(0.2)
        joined = await second.up("m", timeout=20)  # a client's request while the daemon recovers
        report = await recovering
        try:
            return survivor.pid, joined.pid, joined.launched_pids, report
        finally:
            await second.close()

    survivor_pid, joined_pid, launched, report = run(scenario())
    assert report.adopted == ["m"]
    assert joined_pid == survivor_pid and launched == [], "a second server was started"
    assert alive([survivor_pid]) == []


def test_engine_load_is_read_from_vllms_metrics_text_and_other_lines_are_ignored():
    from bawt_vllm.supervisor.runtime.readiness import EngineLoad, parse_engine_metrics

    text = "\n".join([
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        'vllm:num_requests_running{engine="0",model_name="tiny"} 2.0',
        'vllm:num_requests_running{engine="1",model_name="tiny"} 1.0',
        'vllm:num_requests_running_total_seen{model_name="tiny"} 99.0',  # a longer name: not ours
        'vllm:num_requests_waiting{engine="0",model_name="tiny"} 4.0',
        'vllm:generation_tokens_total{engine="0",model_name="tiny"} 1234.0',
        'vllm:iteration_tokens_total_bucket{le="1.0",model_name="tiny"} 7.0',
        'vllm:iteration_tokens_total_count{engine="0",model_name="tiny"} 321.0',
        'vllm:prompt_tokens_total{model_name="tiny"} not-a-number',
    ])

    assert parse_engine_metrics(text) == EngineLoad(busy=7.0, progress=(1234.0, 0.0, 321.0, 0.0))
    assert parse_engine_metrics("process_cpu_seconds_total 3.0\n") is None

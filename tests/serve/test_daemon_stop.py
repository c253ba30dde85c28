"""`bawt-vllm daemon stop`: every model stopped with proof, then the daemon, waited for until gone
(supervisor/cli/system.py, control route /shutdown, the daemon's own SIGTERM path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bawt_vllm.supervisor.control.client import DaemonClient, pid_alive
from daemon_harness import FileLoggedDaemon, config_for
from helpers import alive, standin_entry, wait_until

CLI = [sys.executable, "-m", "bawt_vllm.supervisor.cli"]


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def tree(state_dir: Path) -> list[int]:
    pids = []
    for record in (state_dir / "instances").glob("*.json"):
        pids += [int(pid) for pid, _ in json.loads(record.read_text())["members"]]
    return pids


def test_daemon_stop_prints_each_proof_then_waits_until_the_daemon_is_gone(tmp_path: Path) -> None:
    config = config_for(tmp_path, {"a": standin_entry("engine_child"), "b": standin_entry(), "idle": standin_entry()})
    with FileLoggedDaemon(config) as daemon:
        daemon.client.up("a")
        daemon.client.up("b")
        members = tree(daemon.state_dir)
        assert len(alive(members)) == 3
        stop = cli("daemon", "stop", "--config", str(config))
        # Gone when the command returns: no socket, no process (a zombie until this test reaps it).
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert not daemon.socket.exists()
        assert not pid_alive(daemon.process.pid)
        assert daemon.process.wait(10) == 0
    lines = stop.stdout.splitlines()
    assert sorted(line.split(":")[0] for line in lines[:2]) == ["a", "b"]
    assert all(" gone in " in line and "none alive" in line for line in lines[:2]), stop.stdout
    assert lines[2] == f"daemon (pid {daemon.process.pid}) stopped"
    assert alive(members) == []
    log = daemon.output()
    assert "daemon stop requested over the control socket" in log
    assert "shutting down (`bawt-vllm daemon stop`)" in log
    assert "a: gone in" in log and "b: gone in" in log


def test_the_group_keeps_its_options_before_the_subcommand_and_json_says_the_same(tmp_path: Path) -> None:
    config = config_for(tmp_path, {"m": standin_entry()})
    with FileLoggedDaemon(config) as daemon:
        daemon.client.up("m")
        stop = cli("daemon", "--config", str(config), "stop", "--json")
        assert stop.returncode == 0, stop.stderr
        assert daemon.process.wait(10) == 0
    answer = json.loads(stop.stdout)
    assert answer["pid"] == daemon.process.pid
    assert [(r["alias"], r["was_running"], r["clean"]) for r in answer["results"]] == [("m", True, True)]


def test_daemon_stop_with_nothing_running(tmp_path: Path) -> None:
    config = config_for(tmp_path, {"m": standin_entry()})
    idle = FileLoggedDaemon(config)
    with idle:
        stop = cli("daemon", "stop", "--config", str(config))
        assert idle.process.wait(30) == 0
    assert stop.returncode == 0, stop.stderr
    assert stop.stdout.splitlines() == ["nothing was running", f"daemon (pid {idle.process.pid}) stopped"]
    again = cli("daemon", "stop", "--config", str(config))
    assert again.returncode == 0 and again.stdout.strip() == "no bawt-vllm daemon is running"


def test_a_load_after_the_stop_began_is_refused_and_nothing_outlives_the_daemon(tmp_path: Path) -> None:
    slow_stop = standin_entry("ignore_sigterm")  # SIGKILLed after stop_grace_s: the stop takes a while
    config = config_for(tmp_path, {"slow": slow_stop, "m": standin_entry()}, stop_grace_s=1.5)
    with FileLoggedDaemon(config) as daemon:
        daemon.client.up("slow")
        stopping = subprocess.Popen([*CLI, "daemon", "stop", "--config", str(config)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        try:
            assert wait_until(lambda: "daemon stop requested" in daemon.output(), 20)
            late = DaemonClient(daemon.socket)
            refused = None
            try:
                late.up("m")
            except Exception as error:  # the pool is closed: a load is refused, or the socket is already gone
                refused = error
            assert refused is not None
            out, err = stopping.communicate(timeout=60)
        finally:
            if stopping.poll() is None:
                stopping.kill()
                stopping.wait()
        assert stopping.returncode == 0, out + err
        assert "slow: gone in" in out and "SIGKILLed after the grace period" in out
        assert daemon.process.wait(10) == 0
    assert not list((tmp_path / "state" / "logs").glob("m.*.log")), "m was launched after the stop began"
    assert not list((tmp_path / "state" / "instances").glob("*.json"))

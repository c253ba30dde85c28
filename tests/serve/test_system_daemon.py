"""A daemon run by the system unit is visible to the CLI: its socket in $RUNTIME_DIRECTORY
(/run/bawt-vllm), which the CLI tries when no daemon of its own config answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bawt_vllm.supervisor.config import paths
from bawt_vllm.supervisor.config.paths import daemon_control_socket, system_control_socket
from bawt_vllm.supervisor.serve.systemd import DEFAULT_EXECUTABLE, SYSTEM_CONFIG, render_unit
from daemon_harness import FileLoggedDaemon
from helpers import alive, free_port, standin_entry, standin_settings, write_models_yaml

CLI = [sys.executable, "-m", "bawt_vllm.supervisor.cli"]


def _directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def test_the_cli_looks_where_the_system_unit_puts_the_socket_and_the_config() -> None:
    unit = _directives(render_unit(user=False, executable=DEFAULT_EXECUTABLE, config=None))
    assert Path("/run") / unit["RuntimeDirectory"][0] / "control.sock" == paths.SYSTEM_SOCKET_PATH
    assert f"BAWT_VLLM_CONFIG={paths.SYSTEM_CONFIG_PATH}" in unit["Environment"]
    assert SYSTEM_CONFIG == paths.SYSTEM_CONFIG_PATH
    user_unit = _directives(render_unit(user=True, executable=DEFAULT_EXECUTABLE, config=None))
    assert "RuntimeDirectory" not in user_unit, "a user daemon's socket must stay in its state dir, where the CLI looks"


def test_the_socket_is_in_the_runtime_directory_when_systemd_gives_one(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert daemon_control_socket(state, {}) == state / "control.sock"
    assert daemon_control_socket(state, {"RUNTIME_DIRECTORY": "/run/bawt-vllm"}) == paths.SYSTEM_SOCKET_PATH
    assert daemon_control_socket(state, {"RUNTIME_DIRECTORY": "/run/a:/run/b"}) == Path("/run/a/control.sock")
    assert system_control_socket({}) == paths.SYSTEM_SOCKET_PATH
    assert system_control_socket({"BAWT_VLLM_SYSTEM_SOCKET": str(tmp_path / "s.sock")}) == tmp_path / "s.sock"


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=90, env=env)


def test_a_daemon_run_by_the_system_unit_is_found_by_the_cli(tmp_path: Path) -> None:
    # The unit's world, under tmp_path: /etc/bawt-vllm, /var/lib (XDG_STATE_HOME), /run/bawt-vllm.
    settings = standin_settings(tmp_path, gateway_port=free_port())
    del settings["state_dir"]  # like /etc/bawt-vllm/models.yaml: the state dir is the unit's StateDirectory=
    (tmp_path / "etc").mkdir()
    config = write_models_yaml(tmp_path / "etc" / "models.yaml", {"m": standin_entry()}, **settings)
    runtime = tmp_path / "run" / "bawt-vllm"
    runtime.mkdir(parents=True)
    state = tmp_path / "var-lib" / "bawt-vllm"
    unit_env = {"BAWT_VLLM_CONFIG": str(config), "XDG_STATE_HOME": str(tmp_path / "var-lib"),
                "XDG_CACHE_HOME": str(tmp_path / "var-cache"), "HOME": str(state),
                "RUNTIME_DIRECTORY": str(runtime)}
    # The CLI: another user's state dir, no $RUNTIME_DIRECTORY; only told where /run/bawt-vllm is.
    cli_env = {key: value for key, value in os.environ.items() if key != "RUNTIME_DIRECTORY"}
    cli_env |= {"XDG_STATE_HOME": str(tmp_path / "user-state"), "HOME": str(tmp_path / "home"),
                "BAWT_VLLM_SYSTEM_SOCKET": str(runtime / "control.sock")}
    elsewhere = cli_env | {"BAWT_VLLM_SYSTEM_SOCKET": str(tmp_path / "nowhere.sock")}
    with FileLoggedDaemon(None, env=unit_env, state_dir=state, socket=runtime / "control.sock",
                          output=tmp_path / "journal.txt") as daemon:
        assert not (state / "control.sock").exists()
        assert (runtime / "control.sock").exists()

        status = _cli("status", "--json", "--config", str(config), env=cli_env)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["daemon"]["pid"] == daemon.process.pid

        missed = _cli("status", "--config", str(config), env=elsewhere)
        assert missed.returncode == 1 and "no daemon is running" in missed.stderr, "found without the fallback?"

        up = _cli("up", "m", "--config", str(config), env=cli_env)  # the system daemon answers: none is started
        assert up.returncode == 0, up.stderr
        assert "starting one" not in up.stderr
        assert not (tmp_path / "user-state" / "bawt-vllm" / "daemon.log").exists()
        ps = _cli("ps", "--json", "--config", str(config), env=cli_env)
        assert [(row["alias"], row["state"]) for row in json.loads(ps.stdout)] == [("m", "ready")]
        pid = json.loads(ps.stdout)[0]["pid"]

        stop = _cli("daemon", "stop", "--config", str(config), env=cli_env)
        assert stop.returncode == 0, stop.stderr
        assert "m: gone in" in stop.stdout and f"daemon (pid {daemon.process.pid}) stopped" in stop.stdout
        assert daemon.process.wait(10) == 0
        assert not (runtime / "control.sock").exists()
    assert alive([pid]) == []


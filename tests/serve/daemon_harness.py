"""A daemon for the tests of its log, its stop and its systemd face: `RunningDaemon` (stopped, and its
tree checked, on exit) with its output in a file rather than a pipe, so a chatty log can never fill a
pipe nobody reads, and with the environment and socket of a systemd unit when a test asks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from helpers import RunningDaemon, free_port, standin_settings, wait_until, write_models_yaml


def config_for(tmp_path: Path, models: dict[str, dict[str, Any]], **settings: Any) -> Path:
    merged = standin_settings(tmp_path, **{"gateway_port": free_port(), **settings})
    return write_models_yaml(tmp_path / "models.yaml", models, **merged)


class FileLoggedDaemon(RunningDaemon):
    """`bawt-vllm daemon [args]`; stdout and stderr in <tmp>/daemon-output.txt.

    config None: found the way the unit finds it ($BAWT_VLLM_CONFIG in env). state_dir and socket
    default to what the config's state_dir says."""

    def __init__(self, config: Path | None, *, env: dict[str, str] | None = None, args: tuple[str, ...] = (),
                 state_dir: Path | None = None, socket: Path | None = None, output: Path | None = None) -> None:
        environ = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        config_path = config or Path(environ["BAWT_VLLM_CONFIG"])
        self.config = config_path
        if state_dir is None:
            state_dir = Path(yaml.safe_load(config_path.read_text())["bawt_vllm"]["state_dir"])
        self.state_dir = state_dir
        self.socket = socket or state_dir / "control.sock"
        self.output_path = output or config_path.parent / "daemon-output.txt"
        argv = [sys.executable, "-m", "bawt_vllm.supervisor.cli", "daemon", *args]
        if config is not None:
            argv += ["--config", str(config)]
        with open(self.output_path, "wb") as sink:
            self.process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                                            env=environ)

    def __enter__(self) -> FileLoggedDaemon:
        from bawt_vllm.supervisor.control.client import DaemonClient

        self.client = DaemonClient(self.socket)
        if not wait_until(lambda: self.client.ping() or self.process.poll() is not None, 30):
            self.stop()
            raise AssertionError(f"daemon did not answer within 30 s:\n{self.output()}")
        if self.process.poll() is not None:
            raise AssertionError(f"daemon exited with code {self.process.returncode}:\n{self.output()}")
        return self

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

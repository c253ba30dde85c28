"""Shared set-up for the benchmarks: the CPU test bed, a config, a daemon subprocess."""

from __future__ import annotations

import importlib.util
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
STANDIN = ROOT / "tests" / "standin" / "vllm"


def testbed() -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location("testbed", ROOT / "scripts" / "testbed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ensure_testbed(log=lambda _line: None)


def tiny_entry(bed: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "vllm", "model_id": bed["model_dir"], "dtype": "bfloat16", "max_model_len": 512,
            "enforce_eager": True, "tool_support": "none", "env": dict(bed["env"]), **extra}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(models: dict[str, Any], **settings: Any) -> Path:
    work = Path(tempfile.mkdtemp(prefix="bawt-bench-"))
    document = {"bawt_vllm": {"state_dir": str(work / "state"), "gateway_port": free_port(),
                              "port_range": [20500, 20599], **settings}, "models": models}
    path = work / "models.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


class Daemon:
    def __init__(self, config: Path) -> None:
        self.config = config
        self.state_dir = Path(yaml.safe_load(config.read_text())["bawt_vllm"]["state_dir"])
        self.process = subprocess.Popen([sys.executable, "-m", "bawt_vllm.supervisor.cli", "daemon", "--config",
                                         str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        from bawt_vllm.supervisor.control.client import DaemonClient

        self.client = DaemonClient(self.state_dir / "control.sock")
        deadline = time.monotonic() + 30
        while not self.client.ping():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("daemon did not start")
            time.sleep(0.05)

    @property
    def gateway(self) -> str:
        return self.client.status()["daemon"]["gateway"]

    def close(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median(values: list[float]) -> float:
    return statistics.median(values)

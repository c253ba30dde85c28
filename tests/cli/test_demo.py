"""scripts/demo.py: the README's first command. Its parts here; the whole run against the real CPU
vLLM (`real_vllm`)."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def load_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bawt_vllm_demo", REPO / "scripts" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_demo_picks_free_ports_and_a_gateway_port_outside_them():
    demo = load_demo()
    low, high, gateway = demo.free_ports(width=10)
    assert high - low == 9 and not low <= gateway <= high and high <= 65535
    assert (low, high) != (8500, 8599) and gateway != 8400
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", low))  # still free: nothing of the demo holds it


def test_the_demo_skips_a_range_with_a_taken_port(monkeypatch):
    demo = load_demo()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        busy = taken.getsockname()[1]
        picks = iter([busy - 3, busy - 2, busy + 5, busy + 20])
        monkeypatch.setattr(demo, "_kernel_port", lambda: next(picks))
        assert demo.free_ports(width=10) == (busy + 5, busy + 14, busy + 20)


def test_the_test_bed_is_described_one_setting_a_line():
    bed = {"dir": "/cache/testbed", "vllm": "/cache/testbed/venv/bin/vllm", "model_dir": "/cache/testbed/models/tiny",
           "env": {"VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1"}, "serve_args": ["--dtype", "bfloat16"]}
    lines = load_demo().describe_testbed(bed)
    assert lines[0] == "CPU test bed (cached in /cache/testbed):"
    assert "  vllm         /cache/testbed/venv/bin/vllm" in lines
    assert "  environment  HF_HUB_OFFLINE=1" in lines and "               VLLM_TARGET_DEVICE=cpu" in lines
    assert not any("{" in line for line in lines), "no raw dict"


def test_the_next_steps_name_the_config_the_demo_used(tmp_path):
    steps = load_demo().next_steps(tmp_path / "models.yaml")
    assert any(f"bawt-vllm up tiny --config {tmp_path / 'models.yaml'}" in line for line in steps)
    assert any(line.strip().startswith("bawt-vllm down tiny") for line in steps)


@pytest.mark.real_vllm
def test_the_demo_runs_end_to_end(tmp_path, testbed):
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py")], capture_output=True, text=True,
                          timeout=1200, cwd=REPO, env={**os.environ, "BAWT_VLLM_DEMO_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    for said in ("$ bawt-vllm up tiny", "tiny is ready in", "$ bawt-vllm ps", "tiny: Hello from a supervised",
                 "none alive", "processes of the tree still alive, by psutil: none", "Try it yourself"):
        assert said in done.stdout, said
    assert f"--config {tmp_path / 'models.yaml'}" in done.stdout

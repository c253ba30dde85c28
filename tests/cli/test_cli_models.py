"""`add`, `pull`, `entries` through the CLI: the Hub stand-in, then the pulled model served for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import STANDIN_VLLM, alive, daemon_pid, free_port, stop_daemon
from hub_standin import HubStandin, default_repos, hub_environment

COMMENTED = """\
# my models
bawt_vllm:
  state_dir: {state}   # where logs go
  vllm_executable: {vllm}   # config check looks for it
models:
  gpt:                 # a hosted one, not ours
    type: openai
    model_id: gpt-4o
"""


def cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bawt_vllm.supervisor.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **env}, stdin=subprocess.DEVNULL)


@pytest.fixture
def hub(tmp_path):
    model_dir = os.environ.get("BAWT_TESTBED_MODEL_DIR")
    with HubStandin(default_repos(Path(model_dir) if model_dir else None)) as server:
        yield server, hub_environment(server.url, tmp_path / "hf-home")


def test_add_search_keeps_comments_and_entries_write_is_idempotent(tmp_path, hub):
    _server, env = hub
    config = tmp_path / "models.yaml"
    config.write_text(COMMENTED.format(state=tmp_path / "state", vllm=STANDIN_VLLM))
    added = cli("add", "--search", "qwen2.5 awq", "--yes", "--config", str(config), env=env)
    assert added.returncode == 0, added.stderr
    assert "added '" in added.stdout
    text = config.read_text()
    original = COMMENTED.format(state=tmp_path / "state", vllm=STANDIN_VLLM)
    assert text.startswith(original), "the user's lines are untouched"
    alias = next(iter(set(yaml.safe_load(text)["models"]) - {"gpt"}))
    assert "awq" in alias
    check = cli("config", "check", "--config", str(config), env=env)
    assert check.returncode == 0, check.stderr
    again = cli("add", "--search", "qwen2.5 awq", "--yes", "--alias", alias, "--config", str(config), env=env)
    assert again.returncode != 0 and "already defined" in again.stderr and config.read_text() == text

    llm_bawt = tmp_path / "llm-bawt.yaml"
    llm_bawt.write_text("# llm-bawt's own file\nmodels:\n  mine:   # keep me\n    type: openai\n    model_id: x\n")
    original = llm_bawt.read_text()
    first = cli("entries", "--write", "--target", str(llm_bawt), "--config", str(config), env=env)
    assert first.returncode == 0, first.stderr
    written = llm_bawt.read_text()
    assert written.startswith(original) and "base_url: http://127.0.0.1:8400/v1" in written
    second = cli("entries", "--write", "--target", str(llm_bawt), "--config", str(config), env=env)
    assert second.returncode == 0 and llm_bawt.read_text() == written and "added 0" in second.stdout


def test_add_unknown_repo_is_a_clear_error_and_writes_nothing(tmp_path, hub):
    _server, env = hub
    config = tmp_path / "models.yaml"
    config.write_text(COMMENTED.format(state=tmp_path / "state", vllm=STANDIN_VLLM))
    before = config.read_text()
    result = cli("add", "nobody/nothing", "--yes", "--config", str(config), env=env)
    assert result.returncode == 1 and "nobody/nothing" in result.stderr
    assert config.read_text() == before


@pytest.mark.real_vllm
def test_added_and_pulled_model_serves_for_real(tmp_path, testbed, monkeypatch):
    monkeypatch.setenv("BAWT_TESTBED_MODEL_DIR", testbed.model_dir)
    with HubStandin(default_repos(Path(testbed.model_dir))) as server:
        env = hub_environment(server.url, tmp_path / "hf-home")
        config = tmp_path / "models.yaml"
        config.write_text(f"bawt_vllm:\n  vllm_executable: {testbed.vllm}\n  state_dir: {tmp_path / 'state'}\n"
                          f"  gateway_port: {free_port()}\nmodels: {{}}\n")
        added = cli("add", "bawt/tiny-llama", "--yes", "--alias", "pulled", "--max-model-len", "512",
                    "--config", str(config), env=env)
        assert added.returncode == 0, added.stderr
        pulled = cli("pull", "pulled", "--config", str(config), env=env)
        assert pulled.returncode == 0, pulled.stderr
        assert "ready on disk" in pulled.stdout
        assert server.downloads_of("bawt/tiny-llama"), "the weights came from the stand-in Hub"
    # A user's edit for the CPU test bed (eager mode, its environment), then serve it offline.
    document = yaml.safe_load(config.read_text())
    document["models"]["pulled"].update({"enforce_eager": True, "dtype": "bfloat16", "env": dict(testbed.env)})
    config.write_text(yaml.safe_dump(document))
    offline = {**env, "HF_HUB_OFFLINE": "1"}
    up = cli("up", "pulled", "--config", str(config), env=offline, timeout=300)
    started = daemon_pid(tmp_path / "state")
    try:
        assert up.returncode == 0, up.stderr
        assert "weights are not on disk" not in up.stderr
        record = json.loads((tmp_path / "state" / "instances" / "pulled.json").read_text())
        members = [int(pid) for pid, _ in record["members"]]
        chat = cli("chat", "pulled", "hi", "--max-tokens", "5", "--config", str(config), env=offline)
        assert chat.returncode == 0 and chat.stdout.strip(), chat.stderr
        down = cli("down", "pulled", "--config", str(config), env=offline)
        assert down.returncode == 0 and "none alive" in down.stdout
        assert alive(members) == []
    finally:
        stop_daemon(started)

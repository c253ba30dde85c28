"""The CPU test bed itself: a real `vllm serve` on the tiny model answers the OpenAI API.

One server for the whole module (startup is ~20 s and ~3 GB). The model's weights are random,
so exact text comes from structured outputs (a regex), including a hermes tool call.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from helpers import free_port, wait_until
from openai import OpenAI

pytestmark = pytest.mark.real_vllm

HEALTH_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 30.0

EXACT_TEXT = "Hello from the tiny test bed!"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TOOL_CALL_REGEX = r'<tool_call>\n\{"name": "get_weather", "arguments": \{"city": "Paris"\}\}\n</tool_call>'


@dataclass
class Server:
    proc: subprocess.Popen
    base_url: str  # http://127.0.0.1:PORT
    log_path: Path
    client: OpenAI


def _log_tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


def _wait_healthy(proc: subprocess.Popen, url: str, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"vllm serve exited early (rc={proc.returncode}):\n{_log_tail(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"vllm serve not healthy after {timeout:.0f}s:\n{_log_tail(log_path)}")
        time.sleep(0.5)


def _live_group_members(pgid: int) -> list[psutil.Process]:
    """Processes of the group that are not zombies.

    Zombies must be ignored: orphaned vLLM processes (EngineCore, Worker, the resource tracker)
    are re-parented to pid 1, which here may reap them only much later.
    """
    members = []
    for p in psutil.process_iter(["status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                members.append(p)
        except (ProcessLookupError, psutil.Error):
            pass
    return members


def _wait_group_gone(proc: subprocess.Popen, pgid: int, timeout: float) -> bool:
    return wait_until(lambda: proc.poll() is not None and not _live_group_members(pgid), timeout, interval=0.2)


def _stop_group(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the process group, wait with a deadline, SIGKILL the group if needed, reap."""
    pgid = proc.pid  # start_new_session=True: the leader's pid is the group id
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    if not _wait_group_gone(proc, pgid, timeout):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        _wait_group_gone(proc, pgid, timeout)
    proc.wait(timeout=timeout)
    assert not _live_group_members(pgid), "vllm serve's process group survived SIGKILL"


@pytest.fixture(scope="module")
def server(testbed, tmp_path_factory) -> Server:
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm") / "vllm-serve.log"
    cmd = [
        testbed.vllm, "serve", testbed.model_dir,
        *testbed.serve_args,
        "--served-model-name", "tiny",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--enable-auto-tool-choice",
        "--tool-call-parser", "hermes",
    ]  # fmt: skip
    env = {**os.environ, **testbed.env}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        base_url = f"http://127.0.0.1:{port}"
        _wait_healthy(proc, base_url + "/health", log_path, HEALTH_TIMEOUT_S)
        client = OpenAI(base_url=base_url + "/v1", api_key="EMPTY", timeout=120, max_retries=0)
        yield Server(proc=proc, base_url=base_url, log_path=log_path, client=client)
    finally:
        _stop_group(proc)


def test_models_lists_tiny(server: Server) -> None:
    assert [m.id for m in server.client.models.list().data] == ["tiny"]


def test_chat_completion(server: Server) -> None:
    resp = server.client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
    )
    assert resp.model == "tiny"
    choice = resp.choices[0]
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert resp.usage is not None
    assert resp.usage.prompt_tokens > 0
    assert 1 <= resp.usage.completion_tokens <= 8


def test_regex_gives_exact_text(server: Server) -> None:
    resp = server.client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=64,
        temperature=0,
        extra_body={"structured_outputs": {"regex": re.escape(EXACT_TEXT)}},
    )
    assert resp.choices[0].message.content == EXACT_TEXT
    assert resp.choices[0].finish_reason == "stop"


def test_regex_forces_hermes_tool_call(server: Server) -> None:
    resp = server.client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice="auto",
        max_tokens=64,
        temperature=0,
        extra_body={"structured_outputs": {"regex": TOOL_CALL_REGEX}},
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls, choice.message
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert not choice.message.content


def test_tool_result_round_trip(server: Server) -> None:
    """The chat template renders an assistant tool call and its tool result (hermes style)."""
    resp = server.client.chat.completions.create(
        model="tiny",
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "sunny"}'},
        ],
        tools=[WEATHER_TOOL],
        max_tokens=32,
        temperature=0,
        extra_body={"structured_outputs": {"regex": re.escape("It is sunny in Paris.")}},
    )
    choice = resp.choices[0]
    assert choice.message.content == "It is sunny in Paris."
    assert not choice.message.tool_calls
    assert resp.usage is not None and resp.usage.prompt_tokens > 100  # the tools block was rendered


def test_streaming_delivers_several_chunks(server: Server) -> None:
    text = "one two three four five six seven eight"
    stream = server.client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Count."}],
        max_tokens=64,
        temperature=0,
        stream=True,
        extra_body={"structured_outputs": {"regex": re.escape(text)}},
    )
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 4, pieces
    assert "".join(pieces) == text


def test_model_files_match_build_manifest(testbed) -> None:
    model_dir = Path(testbed.model_dir)
    manifest = json.loads((model_dir / "bawt_testbed_manifest.json").read_text())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(manifest["files"])
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((model_dir / name).read_bytes()).hexdigest() == digest, name


def test_model_build_is_deterministic(testbed, tmp_path: Path) -> None:
    """Building again gives the same bytes as the cached build (same manifest)."""
    out = tmp_path / "tiny-llama"
    env = {**os.environ, **testbed.env, "PYTHONHASHSEED": "0", "TOKENIZERS_PARALLELISM": "false"}
    script = Path(__file__).resolve().parents[2] / "scripts" / "build_tiny_model.py"
    subprocess.run([testbed.python, str(script), str(out)], check=True, env=env, capture_output=True, timeout=300)
    rebuilt = json.loads((out / "bawt_testbed_manifest.json").read_text())
    cached = json.loads((Path(testbed.model_dir) / "bawt_testbed_manifest.json").read_text())
    assert rebuilt == cached

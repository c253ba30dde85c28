"""VLLMClient: llm-bawt's client interface, against a real `vllm serve` through the daemon's gateway."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import pytest
from bawt_vllm.clients import VLLMClient, VLLMClientError, get_tool_format, is_vllm_available, runnable_aliases
from bawt_vllm.clients.vllm_client import normalize_message
from helpers import RunningDaemon, alive, free_port, run_port_range, write_models_yaml

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TOOL_CALL_REGEX = r'<tool_call>\n\{"name": "get_weather", "arguments": \{"city": "Paris"\}\}\n</tool_call>'


@dataclass
class Message:
    role: str
    content: str


@pytest.fixture(scope="module")
def served(tmp_path_factory, testbed):
    tmp_path = tmp_path_factory.mktemp("clients")
    base = {"type": "vllm", "model_id": testbed.model_dir, "dtype": "bfloat16", "max_model_len": 512,
            "enforce_eager": True, "env": dict(testbed.env)}
    models = {
        "tiny": {**base, "tool_support": "native", "tool_call_parser": "hermes", "max_tokens": 64},
        "tiny-notools": {**base, "tool_support": "none"},
    }
    config = write_models_yaml(tmp_path / "models.yaml", models, vllm_executable=testbed.vllm,
                               state_dir=str(tmp_path / "state"), gateway_port=free_port(),
                               port_range=run_port_range(), max_cpu_instances=1, eviction_wait_s=60)
    with RunningDaemon(config) as daemon:
        yield config, daemon


pytestmark_real = pytest.mark.real_vllm


@pytestmark_real
def test_query_resolves_the_model_id_and_answers(served, testbed):
    config, _daemon = served
    client = VLLMClient(testbed.model_dir, model_definition={"type": "vllm", "max_tokens": 64},
                        supervisor_config=config)
    assert client.model == "tiny", "llm-bawt passes model_id; the gateway knows the alias"
    text = client.query([Message("user", "hi")], structured_outputs={"regex": "Hi from VLLMClient"})
    assert text == "Hi from VLLMClient"
    assert client.get_styling() == ("bright_cyan", "vLLM: tiny")


@pytestmark_real
def test_stream_raw_yields_tokens_as_they_come(served):
    config, _daemon = served
    client = VLLMClient("tiny", supervisor_config=config)
    arrivals = [(time.monotonic(), piece) for piece in client.stream_raw(
        [{"role": "user", "content": "count"}], max_tokens=200, ignore_eos=True)]
    assert len(arrivals) >= 20
    assert arrivals[-1][0] > arrivals[0][0], "several chunks arrived before the last"


@pytestmark_real
def test_native_tool_call_comes_back_as_tool_calls(served):
    config, _daemon = served
    client = VLLMClient("tiny", model_definition={"tool_support": "native"}, supervisor_config=config)
    assert client.supports_native_tools()
    message, calls = client.query_with_tools([Message("user", "Weather in Paris?")], tools_schema=[WEATHER_TOOL],
                                             max_tokens=60, structured_outputs={"regex": TOOL_CALL_REGEX})
    assert calls and calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    follow_up = [Message("user", "Weather in Paris?"), message,
                 {"role": "tool", "tool_call_id": calls[0]["id"], "content": "sunny"}]
    assert client.query(follow_up, max_tokens=8, structured_outputs={"regex": "Sunny"}) == "Sunny"


@pytestmark_real
def test_tool_support_none_drops_tools_with_one_warning(served, caplog):
    config, _daemon = served
    client = VLLMClient("tiny-notools", model_definition={"tool_support": "none"}, supervisor_config=config)
    assert not client.supports_native_tools()
    with caplog.at_level(logging.WARNING, logger="bawt_vllm.clients"):
        for _ in range(2):
            message, calls = client.query_with_tools([Message("user", "x")], tools_schema=[WEATHER_TOOL],
                                                     max_tokens=4, structured_outputs={"regex": "ok"})
            assert calls is None and message["content"] == "ok"
    assert sum("tools are dropped" in r.message for r in caplog.records) == 1


@pytestmark_real
def test_errors_carry_the_servers_message(served):
    config, _daemon = served
    client = VLLMClient("no-such-model", supervisor_config=config)
    with pytest.raises(VLLMClientError, match="known models: tiny, tiny-notools") as error:
        client.query([Message("user", "x")])
    assert error.value.status == 404


@pytestmark_real
def test_unload_returns_the_proof(served):
    config, daemon = served
    client = VLLMClient("tiny", supervisor_config=config)
    client.query([Message("user", "x")], max_tokens=2)
    record = json.loads((daemon.state_dir / "instances" / "tiny.json").read_text())
    members = [int(pid) for pid, _ in record["members"]]
    result = client.unload()
    assert result["was_running"] and result["clean"] and "none alive" in result["proof"]
    assert alive(members) == []
    assert {r["alias"]: r["state"] for r in daemon.client.status()["models"]}["tiny"] == "stopped"


def test_react_format_sends_no_native_tools(tmp_path):
    client = VLLMClient("m", model_definition={"tool_support": "react"}, base_url="http://127.0.0.1:9/v1")
    request = client._request([{"role": "user", "content": "x"}], {}, tools=[WEATHER_TOOL])
    assert "tools" not in request and client.tool_format == "react"


def test_messages_may_be_objects_with_tool_calls():
    @dataclass
    class Function:
        name: str
        arguments: str

    @dataclass
    class Call:
        id: str
        function: Function

    @dataclass
    class Assistant:
        role: str
        content: str | None
        tool_calls: list

    normalized = normalize_message(Assistant("assistant", None, [Call("c1", Function("f", "{}"))]))
    assert normalized == {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}


def test_availability_and_aliases_follow_the_config(tmp_path, monkeypatch):
    config = write_models_yaml(tmp_path / "models.yaml", {
        "a": {"type": "vllm", "model_id": "x/y", "tool_support": "none"},
        "chat": {"type": "openai", "model_id": "gpt"}}, vllm_executable=str(tmp_path / "missing-vllm"),
        state_dir=str(tmp_path / "state"))
    assert runnable_aliases(config) == ["a"]
    assert is_vllm_available(config) is False
    fake = tmp_path / "vllm"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    write_models_yaml(config, {"a": {"type": "vllm", "model_id": "x/y", "tool_support": "none"}},
                      vllm_executable=str(fake), state_dir=str(tmp_path / "state"))
    assert is_vllm_available(config) is True
    assert get_tool_format({"type": "vllm"}) == "native"
    assert get_tool_format({"type": "vllm", "tool_support": "none"}) == "none"

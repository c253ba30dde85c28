"""build_serve_command: one entry key at a time -> the flags and environment it produces."""

from __future__ import annotations

from typing import Any

import pytest
from bawt_vllm.supervisor.config.schema import ModelEntry, Settings
from bawt_vllm.supervisor.runtime.command import ServeCommand, build_serve_command

BASE_ARGV = [
    "vllm",
    "serve",
    "org/model",
    "--host",
    "127.0.0.1",
    "--port",
    "8501",
    "--served-model-name",
    "tiny",
]


def make_entry(**fields: Any) -> ModelEntry:
    values: dict[str, Any] = {"alias": "tiny", "model_id": "org/model", "tool_support": "none"}
    return ModelEntry(**{**values, **fields})


def build(entry: ModelEntry, **options: Any) -> ServeCommand:
    kwargs: dict[str, Any] = {"port": 8501, "gpus": None, **options}
    return build_serve_command(entry, Settings(), **kwargs)


def test_minimal_entry_gives_only_the_managed_flags() -> None:
    command = build(make_entry())
    assert command.argv == BASE_ARGV
    assert command.env == {}


@pytest.mark.parametrize(
    ("fields", "expected_flags"),
    [
        ({"quantization": "awq"}, ["--quantization", "awq"]),
        ({"quantization": "gptq_marlin"}, ["--quantization", "gptq_marlin"]),
        ({"dtype": "bfloat16"}, ["--dtype", "bfloat16"]),
        ({"max_model_len": 32768}, ["--max-model-len", "32768"]),
        ({"gpu_memory_utilization": 0.85}, ["--gpu-memory-utilization", "0.85"]),
        ({"enforce_eager": True}, ["--enforce-eager"]),
        ({"enforce_eager": False}, []),
        ({"enable_prefix_caching": True}, ["--enable-prefix-caching"]),
        ({"enable_prefix_caching": False}, ["--no-enable-prefix-caching"]),
        ({"enable_prefix_caching": None}, []),
        ({"tensor_parallel_size": 2}, ["--tensor-parallel-size", "2"]),
        ({"tensor_parallel_size": 1}, []),
        ({"trust_remote_code": True}, ["--trust-remote-code"]),
        ({"trust_remote_code": False}, []),
        ({"tokenizer": "org/base"}, ["--tokenizer", "org/base"]),
        ({"chat_template": "/t/chat.jinja"}, ["--chat-template", "/t/chat.jinja"]),
        (
            {"tool_support": "native", "tool_call_parser": "hermes"},
            ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"],
        ),
        (
            {"tool_support": None, "tool_call_parser": "llama3_json"},
            ["--enable-auto-tool-choice", "--tool-call-parser", "llama3_json"],
        ),
        ({"tool_support": "react", "tool_call_parser": "hermes"}, []),
        ({"tool_support": "none", "tool_call_parser": "hermes"}, []),
        ({"tool_support": None, "tool_format": "react", "tool_call_parser": "hermes"}, []),
        ({"extra_args": ["--max-num-seqs", "8"]}, ["--max-num-seqs", "8"]),
        # Keys that only llm-bawt or the supervisor read add nothing to the command line.
        ({"description": "d", "context_window": 8192, "max_tokens": 512}, []),
        ({"preload": True, "idle_ttl_s": 60.0, "gpu": 0, "port": 8510, "api_key_env": "K"}, []),
    ],
)
def test_each_key_maps_to_its_flags(fields: dict[str, Any], expected_flags: list[str]) -> None:
    command = build(make_entry(**fields))
    assert command.argv == BASE_ARGV + expected_flags


def test_served_model_name_replaces_the_alias() -> None:
    argv = build(make_entry(served_model_name="public-name")).argv
    assert argv[argv.index("--served-model-name") + 1] == "public-name"


def test_host_and_executable_come_from_settings() -> None:
    settings = Settings(vllm_executable="/opt/vllm/bin/vllm", host="0.0.0.0")
    argv = build_serve_command(make_entry(), settings, port=9000, gpus=None).argv
    assert argv[:3] == ["/opt/vllm/bin/vllm", "serve", "org/model"]
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    assert argv[argv.index("--port") + 1] == "9000"


def test_extra_args_come_last_and_verbatim() -> None:
    entry = make_entry(
        max_model_len=4096,
        tool_support="native",
        tool_call_parser="hermes",
        extra_args=["--max-num-seqs", "4", "--max-model-len", "2048"],
    )
    argv = build(entry).argv
    assert argv[-4:] == ["--max-num-seqs", "4", "--max-model-len", "2048"]
    assert argv.index("--tool-call-parser") < argv.index("--max-num-seqs")


@pytest.mark.parametrize(
    ("gpus", "expected_env"),
    [
        (None, {}),
        ([], {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ""}),
        ([1], {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "1"}),
        ([0, 3], {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "0,3"}),
    ],
)
def test_gpus_become_cuda_visible_devices(gpus: list[int] | None, expected_env: dict[str, str]) -> None:
    assert build(make_entry(), gpus=gpus).env == expected_env


def test_entry_env_is_kept_and_gpu_assignment_wins() -> None:
    entry = make_entry(env={"HF_HOME": "/data/hf", "VLLM_LOGGING_LEVEL": "DEBUG"})
    env = build(entry, gpus=[2]).env
    assert env == {
        "HF_HOME": "/data/hf",
        "VLLM_LOGGING_LEVEL": "DEBUG",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": "2",
    }


def test_api_key_travels_in_env_never_in_argv() -> None:
    command = build(make_entry(), api_key="s3cret-key")
    assert command.env["VLLM_API_KEY"] == "s3cret-key"
    assert not any("s3cret-key" in arg for arg in command.argv)
    assert "--api-key" not in command.argv
    assert "s3cret-key" not in command.display()


@pytest.mark.parametrize("extra_args", [["--api-key", "abc"], ["--api-key=abc"]])
def test_api_key_in_extra_args_is_refused(extra_args: list[str]) -> None:
    with pytest.raises(ValueError, match="--api-key"):
        build(make_entry(extra_args=extra_args))


@pytest.mark.parametrize("flag", ["--port", "--host", "--served-model-name"])
def test_managed_flags_in_extra_args_are_refused(flag: str) -> None:
    with pytest.raises(ValueError, match=flag):
        build(make_entry(extra_args=[flag, "x"]))


def test_tensor_parallel_needs_as_many_gpus() -> None:
    with pytest.raises(ValueError, match="tensor_parallel_size 2"):
        build(make_entry(tensor_parallel_size=2), gpus=[0])
    assert build(make_entry(tensor_parallel_size=2), gpus=[0, 1]).env["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_gguf_from_a_repo_must_be_resolved_first() -> None:
    entry = make_entry(type="gguf", backend="vllm", model_id=None, repo_id="org/m-GGUF", filename="m.Q4.gguf")
    with pytest.raises(ValueError, match="resolved"):
        build(entry)
    command = build(entry, model_source="/cache/m.Q4.gguf")
    assert command.argv[2] == "/cache/m.Q4.gguf"


def test_gguf_with_a_local_path_needs_no_resolution() -> None:
    entry = make_entry(type="gguf", backend="vllm", model_id=None, path="/m/m.gguf", tokenizer="org/base")
    argv = build(entry).argv
    assert argv[2] == "/m/m.gguf"
    assert argv[argv.index("--tokenizer") + 1] == "org/base"


def test_model_source_overrides_model_id() -> None:
    assert build(make_entry(), model_source="/local/snapshot").argv[2] == "/local/snapshot"


def test_display_quotes_arguments_for_a_shell() -> None:
    command = build(make_entry(chat_template="{% for m in messages %}{{ m.content }}{% endfor %}"))
    assert "'{% for m in messages %}{{ m.content }}{% endfor %}'" in command.display()
    assert command.display().startswith("vllm serve org/model --host 127.0.0.1")


def test_the_supervisors_probes_are_left_out_of_the_access_log_when_asked() -> None:
    quiet = ("/health", "/metrics")
    argv = build(make_entry(), quiet_endpoints=quiet).argv
    assert argv[argv.index("--disable-access-log-for-endpoints") + 1] == "/health,/metrics"
    assert "--disable-access-log-for-endpoints" not in build(make_entry()).argv


@pytest.mark.parametrize("own", [["--disable-uvicorn-access-log"], ["--disable-access-log-for-endpoints=/ping"]])
def test_an_entrys_own_access_log_flags_win(own: list[str]) -> None:
    argv = build(make_entry(extra_args=own), quiet_endpoints=("/health",)).argv
    assert argv.count("--disable-access-log-for-endpoints") == 0
    assert own[0] in argv


def test_a_sleep_mode_entry_gets_vllms_sleep_flag_and_endpoints() -> None:
    command = build(make_entry(sleep_level=1))
    assert "--enable-sleep-mode" in command.argv and command.env["VLLM_SERVER_DEV_MODE"] == "1"
    plain = build(make_entry())
    assert "--enable-sleep-mode" not in plain.argv and "VLLM_SERVER_DEV_MODE" not in plain.env

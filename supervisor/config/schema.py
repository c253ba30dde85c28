"""The schema of models.yaml: the `bawt_vllm:` Settings and each runnable ModelEntry (pydantic),
the values their keys allow, and Config, the validated whole.

The file is shared with the chat app llm-bawt, so an entry accepts the keys llm-bawt reads too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    field_validator,
)

from .paths import default_state_dir
from .problems import UnknownModelError
from .toolformat import get_tool_format
from .urls import http_url_problem

DEFAULT_API_KEY_ENV = "BAWT_VLLM_API_KEY"

Quantization = Literal[
    "awq",
    "awq_marlin",
    "gptq",
    "gptq_marlin",
    "fp8",
    "bitsandbytes",
    "compressed-tensors",
    "gguf",
    "mxfp4",
    "modelopt",
    "modelopt_fp4",
    "experts_int8",
    "moe_wna16",
]
"""Common `--quantization` methods. vLLM's list changes between releases; a method missing here can
still be passed through extra_args."""
Dtype = Literal["auto", "half", "float16", "bfloat16", "float", "float32"]
ToolSupport = Literal["native", "react", "xml", "none"]

QUANTIZATIONS: tuple[str, ...] = get_args(Quantization)
DTYPES: tuple[str, ...] = get_args(Dtype)
TOOL_SUPPORT_VALUES: tuple[str, ...] = get_args(ToolSupport)

COMMON_TOOL_CALL_PARSERS = (
    "hermes",
    "llama3_json",
    "llama4_pythonic",
    "mistral",
    "qwen3_coder",
    "pythonic",
    "granite",
    "internlm",
    "jamba",
    "deepseek_v3",
    "kimi_k2",
    "openai",
    "xlam",
)
"""Parsers shipped with recent vLLM releases; any name is accepted, these are only suggestions."""

LLM_BAWT_ONLY_KEYS = frozenset(
    {
        "system_prompt",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "repeat_penalty",
        "presence_penalty",
        "frequency_penalty",
        "stop",
        "n_gpu_layers",
        "n_ctx",
        "n_batch",
        "flash_attn",
        "chat_format",
    }
)
"""Keys llm-bawt reads on entries that mean nothing to bawt-vllm: accepted and ignored."""


Port = Annotated[int, Field(ge=1024, le=65535)]
EnvVarName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]

MAX_SECONDS = 86_400.0
"""Upper bound of every duration setting (1 day): a larger one is a typo, and timers must stay finite."""
MAX_STOP_GRACE_S = 3_600.0
"""Upper bound of stop_grace_s (1 hour): an unload must end in SIGKILL within a sane time."""


def _not_a_bool(value: Any) -> Any:
    """YAML reads `yes` and `on` as true, which pydantic would take as 1 second."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    return value


Seconds = Annotated[float, BeforeValidator(_not_a_bool), Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False)]
SecondsOrZero = Annotated[float, BeforeValidator(_not_a_bool), Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False)]
GraceSeconds = Annotated[float, BeforeValidator(_not_a_bool), Field(gt=0, le=MAX_STOP_GRACE_S, allow_inf_nan=False)]


def _numbers_to_str(value: Any) -> Any:
    """YAML reads `8` and `0.5` as numbers; env values and CLI args are strings."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


def _stringify_list(value: Any) -> Any:
    return [_numbers_to_str(item) for item in value] if isinstance(value, list) else value


def _stringify_values(value: Any) -> Any:
    return {key: _numbers_to_str(item) for key, item in value.items()} if isinstance(value, dict) else value


ArgList = Annotated[list[str], BeforeValidator(_stringify_list)]
EnvMap = Annotated[dict[EnvVarName, str], BeforeValidator(_stringify_values)]


class Settings(BaseModel):
    """The `bawt_vllm:` section: how the supervisor itself behaves."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vllm_executable: str = "vllm"
    host: str = "127.0.0.1"
    port_range: tuple[Port, Port] = (8500, 8599)
    gateway_host: str = "127.0.0.1"
    gateway_port: Port = 8400
    state_dir: Path = Field(default_factory=default_state_dir)
    ready_stall_timeout_s: Seconds = 300.0
    ready_total_timeout_s: Seconds | None = None
    stop_grace_s: GraceSeconds = 15.0
    health_interval_s: Seconds = 2.0
    liveness_probe: bool = True
    probe_timeout_s: Seconds = 30.0
    max_restarts: NonNegativeInt = 3
    restart_backoff_s: SecondsOrZero = 2.0
    restart_backoff_max_s: SecondsOrZero = 60.0
    max_cpu_instances: NonNegativeInt = 1
    idle_ttl_s: Seconds | None = None
    eviction_wait_s: SecondsOrZero = 30.0
    vram_release_timeout_s: Seconds = 30.0
    vram_tolerance_mib: NonNegativeInt = 256
    # What a sleeping vLLM may keep on its GPU (CUDA context, allocator pools) beyond the tolerance.
    sleep_residual_mib: NonNegativeInt = 1536
    api_key_env: EnvVarName | None = DEFAULT_API_KEY_ENV
    gateway_public_url: str | None = None
    """The gateway as llm-bawt reaches it (e.g. from a Docker container), written into its catalog and
    models.yaml entries instead of the loopback URL; `/v1` is added when the path lacks it."""

    @field_validator("port_range")
    @classmethod
    def _ordered_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        if value[0] > value[1]:
            raise ValueError("low end is above high end")
        return value

    @field_validator("vllm_executable")
    @classmethod
    def _expand_executable(cls, value: str) -> str:
        return os.path.expanduser(value)

    @field_validator("gateway_public_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        problem = http_url_problem(value) if value is not None else None
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("state_dir")
    @classmethod
    def _expand_state_dir(cls, value: Path) -> Path:
        try:
            return value.expanduser()
        except RuntimeError:  # '~someone' with no such user; pydantic reports only ValueError
            raise ValueError(f"cannot expand '{value}': no such user") from None


class ModelEntry(BaseModel):
    """One entry bawt-vllm runs: `type: vllm`, or `type: gguf` with `backend: vllm`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    alias: str
    type: Literal["vllm", "gguf"] = "vllm"
    backend: Literal["vllm"] | None = None
    model_id: str | None = None
    repo_id: str | None = None
    filename: str | None = None
    path: str | None = None
    # Keys llm-bawt reads; validated here because both programs rely on them.
    description: str | None = None
    context_window: PositiveInt | None = None
    max_tokens: PositiveInt | None = None
    tool_support: ToolSupport | None = None
    tool_format: str | None = None
    # vLLM engine and server options.
    quantization: Quantization | None = None
    dtype: Dtype | None = None
    max_model_len: PositiveInt | None = None
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] | None = None
    enforce_eager: bool = False
    enable_prefix_caching: bool | None = None
    tool_call_parser: str | None = None
    trust_remote_code: bool = False
    served_model_name: str | None = None
    tensor_parallel_size: PositiveInt = 1
    tokenizer: str | None = None
    chat_template: str | None = None
    extra_args: ArgList = Field(default_factory=list)
    env: EnvMap = Field(default_factory=dict)
    # Supervisor behaviour for this entry.
    gpu: NonNegativeInt | None = None
    port: Port | None = None
    preload: bool = False
    pinned: bool = False  # preloaded, never evicted, never idle-unloaded (`down` still stops it)
    sleep_level: Literal[1, 2] | None = None  # vLLM sleep mode instead of a kill on eviction and idle TTL
    idle_ttl_s: Seconds | None = None
    api_key_env: EnvVarName | None = None

    @field_validator("path")
    @classmethod
    def _expand_home(cls, value: str | None) -> str | None:
        return os.path.expanduser(value) if value else value

    @property
    def kind(self) -> Literal["vllm", "gguf"]:
        return self.type

    @property
    def starts_with_daemon(self) -> bool:
        """Loaded when the daemon starts: asked for (`preload`), or implied by `pinned`."""
        return self.preload or self.pinned

    @property
    def gpu_budget(self) -> float | None:
        """The share of one GPU this entry may take, when it can share a GPU with others: a
        `gpu_memory_utilization` on a single-GPU entry. None: it takes its GPU(s) whole."""
        return self.gpu_memory_utilization if self.tensor_parallel_size == 1 else None

    @property
    def served_name(self) -> str:
        """The model name clients send in requests."""
        return self.served_model_name or self.alias

    @property
    def effective_tool_format(self) -> str:
        return get_tool_format(self.model_dump(include={"type", "backend", "tool_support", "tool_format"}))


ENTRY_KEYS = frozenset(ModelEntry.model_fields) - {"alias"}
SETTINGS_KEYS = frozenset(Settings.model_fields)


@dataclass
class Config:
    """A validated config: the runnable entries and why the others were skipped."""

    path: Path
    settings: Settings
    models: dict[str, ModelEntry] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def resolve(self, name: str) -> str | None:
        """The alias a client's model name means: an alias, an entry's served name, or an entry's
        model_id or path, which llm-bawt sends (several entries of one model: the first in the file).

        The one resolver: the gateway, the control socket and VLLMClient all name models through it.
        """
        if name in self.models:
            return name
        served = next((alias for alias, entry in self.models.items() if entry.served_name == name), None)
        if served is not None:
            return served
        return next((alias for alias, entry in self.models.items() if name in (entry.model_id, entry.path)), None)

    def entry(self, alias: str) -> ModelEntry:
        try:
            return self.models[alias]
        except KeyError:
            raise UnknownModelError(alias, self.models, self.skipped.get(alias)) from None

"""models.yaml: find it, validate it, and report every problem at once.

The file is shared with the chat app llm-bawt: its top-level `models:` map holds
entries of every provider type, keyed by alias. bawt-vllm runs only `type: vllm`
entries and `type: gguf` entries with `backend: vllm`; every other entry is left
alone and listed in `Config.skipped`. Our global settings live under the
top-level `bawt_vllm:` key; other top-level keys belong to someone else.

Validation never stops at the first mistake: `check_config` returns all of them,
each naming the file, the entry and the key.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    field_validator,
)

from .paths import (
    ALIAS_PATTERN,
    ALIAS_RULE,
    CONFIG_ENV_VAR,
    GLOBAL_SECTION,
    LLM_BAWT_CONFIG_ENV_VAR,
    MODELS_SECTION,
    ConfigError,
    ConfigProblem,
    ConfigTextError,
    check_yaml_expansion,
    default_state_dir,
    did_you_mean,
    find_config_path,
    is_safe_alias,
    read_config_text,
)

__all__ = [
    "ALIAS_PATTERN", "ALIAS_RULE", "CONFIG_ENV_VAR", "GLOBAL_SECTION", "LLM_BAWT_CONFIG_ENV_VAR", "MAX_SECONDS",
    "MAX_STOP_GRACE_S", "MODELS_SECTION", "Config", "ConfigError", "ConfigProblem", "ModelEntry", "Settings",
    "UnknownModelError", "check_config", "default_state_dir", "find_config_path", "is_safe_alias", "load_config",
]

from ..runtime.command import reserved_flag_problems
from .toolformat import PROVIDER_GGUF, PROVIDER_VLLM, TOOL_FORMAT_NATIVE, get_tool_format, runs_on_vllm

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

RESERVED_ENV_VARS = {
    "CUDA_VISIBLE_DEVICES": "bawt-vllm sets it from its GPU assignment; pin a GPU with the 'gpu' key",
    "VLLM_API_KEY": "a secret does not belong in models.yaml; name the variable holding it in api_key_env",
}

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


# --------------------------------------------------------------------------- problems


class UnknownModelError(KeyError):
    """No runnable entry has this alias. The message names the known aliases and a close match."""

    def __init__(self, alias: str, known: Iterable[str], skipped_reason: str | None = None) -> None:
        self.alias = alias
        known = sorted(known)
        if skipped_reason is not None:
            message = f"model '{alias}' is not run by bawt-vllm: {skipped_reason}"
        else:
            message = f"unknown model '{alias}'{did_you_mean(alias, known)}; "
            message += f"known models: {', '.join(known)}" if known else "no models are configured"
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return self.message


# --------------------------------------------------------------------------- schema


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
    api_key_env: EnvVarName | None = DEFAULT_API_KEY_ENV

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
    def served_name(self) -> str:
        """The model name clients send in requests."""
        return self.served_model_name or self.alias

    @property
    def effective_tool_format(self) -> str:
        return get_tool_format(self.model_dump(include={"type", "backend", "tool_support", "tool_format"}))


ENTRY_KEYS = frozenset(ModelEntry.model_fields) - {"alias"}
SETTINGS_KEYS = frozenset(Settings.model_fields)

_ENV_NAME_TEXT = "must be an environment variable name (letters, digits and underscores)"


def _seconds_range(above_zero: bool, most: float) -> str:
    span = "1 hour" if most == MAX_STOP_GRACE_S else "1 day"
    return f"{'greater than 0' if above_zero else '0 or more'} and at most {most:g} seconds ({span})"


_POSITIVE_DURATIONS = (
    "ready_stall_timeout_s", "ready_total_timeout_s", "health_interval_s", "probe_timeout_s", "idle_ttl_s",
    "vram_release_timeout_s",
)
_ZERO_OK_DURATIONS = ("restart_backoff_s", "restart_backoff_max_s", "eviction_wait_s")
_DURATION_RANGES = {
    **dict.fromkeys(_POSITIVE_DURATIONS, _seconds_range(True, MAX_SECONDS)),
    **dict.fromkeys(_ZERO_OK_DURATIONS, _seconds_range(False, MAX_SECONDS)),
    "stop_grace_s": _seconds_range(True, MAX_STOP_GRACE_S),
}
"""The allowed range of every duration key, for error messages (the same in bawt_vllm: and in entries)."""
_NOT_A_NUMBER_ERRORS = frozenset({"float_parsing", "float_type", "value_error"})
_EXPECTATIONS = {
    "context_window": "must be an integer > 0",
    "max_tokens": "must be an integer > 0",
    "max_model_len": "must be an integer > 0",
    "tensor_parallel_size": "must be an integer >= 1",
    "gpu": "must be a GPU index (an integer >= 0)",
    "port": "must be a port number from 1024 to 65535",
    "gateway_port": "must be a port number from 1024 to 65535",
    "port_range": "must be [low, high] with 1024 <= low <= high <= 65535",
    "gpu_memory_utilization": "must be a number > 0 and <= 1",
    "quantization": (
        f"must be one of {', '.join(QUANTIZATIONS)}, or null to auto-detect "
        "(other methods can go in extra_args)"
    ),
    "dtype": f"must be one of {', '.join(DTYPES)}",
    "tool_support": f"must be one of {', '.join(TOOL_SUPPORT_VALUES)}",
    "backend": "must be 'vllm'",
    "api_key_env": _ENV_NAME_TEXT,
    "extra_args": "must be a list of strings, e.g. ['--max-num-seqs', '8']",
}
"""What a key accepts, for keys where pydantic's own wording would be vague."""

_ERROR_TYPE_TEXT = {
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "int_parsing": "must be an integer",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "string_pattern_mismatch": _ENV_NAME_TEXT,
    "list_type": "must be a list",
    "dict_type": "must be a map",
    "path_type": "must be a path",
}


# --------------------------------------------------------------------------- config file lookup


# --------------------------------------------------------------------------- loading


@dataclass
class Config:
    """A validated config: the runnable entries and why the others were skipped."""

    path: Path
    settings: Settings
    models: dict[str, ModelEntry] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def resolve(self, name: str) -> str | None:
        """The alias a client's model name means: an alias, or an entry's served name."""
        if name in self.models:
            return name
        return next((alias for alias, entry in self.models.items() if entry.served_name == name), None)

    def entry(self, alias: str) -> ModelEntry:
        try:
            return self.models[alias]
        except KeyError:
            raise UnknownModelError(alias, self.models, self.skipped.get(alias)) from None


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Find, read and validate the config; raise ConfigError listing every problem."""
    env = os.environ if environ is None else environ
    config_path = find_config_path(path, env)
    config, problems = _load(config_path, env)
    if problems:
        raise ConfigError(problems)
    return config


def check_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> list[ConfigProblem]:
    """Every problem with the config, including not finding it; an empty list means it is usable."""
    env = os.environ if environ is None else environ
    try:
        config_path = find_config_path(path, env)
    except ConfigError as error:
        return error.problems
    return _load(config_path, env)[1]


def _load(path: Path, environ: Mapping[str, str]) -> tuple[Config, list[ConfigProblem]]:
    document, problems = _read_yaml(path)
    if document is _UNREADABLE:
        return Config(path=path, settings=Settings(state_dir=default_state_dir(environ))), problems
    config, content_problems = _parse_document(path, document, environ)
    return config, problems + content_problems


_UNREADABLE: Any = object()
"""_read_yaml's document when the file could not be read or parsed (None means an empty file)."""


class _DuplicateKeyLoader(yaml.SafeLoader):
    """A SafeLoader that records repeated mapping keys, which plain YAML loading silently collapses."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicate_keys: list[tuple[str, int]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            if key_node.value in seen:
                self.duplicate_keys.append((key_node.value, key_node.start_mark.line + 1))
            seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """Turn the ValueErrors of PyYAML's constructors (a date like 2024-13-45, an integer of
        5000 digits) into a YAML error that points at the value."""
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as error:
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value: {error}", node.start_mark
            ) from error


def _read_yaml(path: Path) -> tuple[Any, list[ConfigProblem]]:
    try:
        text = read_config_text(path)
        check_yaml_expansion(text)
    except OSError as error:
        return _UNREADABLE, [ConfigProblem(path, None, None, f"cannot read the file: {error}")]
    except ConfigTextError as error:
        return _UNREADABLE, [ConfigProblem(path, None, None, str(error))]
    try:
        loader = _DuplicateKeyLoader(text)  # its reader already refuses control characters
        try:
            document = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as error:
        return _UNREADABLE, [ConfigProblem(path, None, None, _describe_yaml_error(error, text))]
    problems = [
        ConfigProblem(path, None, None, f"line {line}: duplicate key '{key}' (only the last one would count)")
        for key, line in loader.duplicate_keys
    ]
    return document, problems


def _describe_yaml_error(error: yaml.YAMLError, text: str) -> str:
    if isinstance(error, yaml.reader.ReaderError):  # its own text spans lines and names no line
        line = text.count("\n", 0, error.position) + 1
        column = error.position - (text.rfind("\n", 0, error.position) + 1) + 1
        return (
            f"invalid YAML at line {line}, column {column}: control character U+{error.character:04X} "
            "is not allowed (inside double quotes, write it as an escape such as \\x07)"
        )
    mark = getattr(error, "problem_mark", None)
    detail = getattr(error, "problem", None) or str(error)
    if mark is None:
        return f"invalid YAML: {detail}"
    return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {detail}"


def _parse_document(
    path: Path, document: Any, environ: Mapping[str, str]
) -> tuple[Config, list[ConfigProblem]]:
    fallback = Config(path=path, settings=Settings(state_dir=default_state_dir(environ)))
    if document is None:
        return fallback, [_no_models_problem(path, fallback)]
    if not isinstance(document, dict):
        message = f"the top level must be a map with a '{MODELS_SECTION}' key (got {_type_name(document)})"
        return fallback, [ConfigProblem(path, None, None, message)]

    settings, problems = _parse_settings(path, document.get(GLOBAL_SECTION), environ)
    raw_models = document.get(MODELS_SECTION)
    if raw_models is None:
        raw_models = {}
    models_misshapen = not isinstance(raw_models, dict)
    if models_misshapen:
        message = f"must be a map of alias -> model definition (got {_type_name(raw_models)})"
        problems.append(ConfigProblem(path, None, MODELS_SECTION, message))
        raw_models = {}

    config = Config(path=path, settings=settings or fallback.settings)
    broken_entries = 0
    for raw_alias, definition in raw_models.items():
        alias = str(raw_alias)
        entry, entry_problems, skip_reason = _parse_model(path, raw_alias, definition)
        problems += entry_problems
        broken_entries += bool(entry_problems)
        if skip_reason is not None:
            config.skipped[alias] = skip_reason
        elif entry is not None:
            config.models[alias] = entry

    if not (config.models or broken_entries or models_misshapen):  # else the problems above say why
        problems.append(_no_models_problem(path, config))
    problems += _cross_entry_problems(path, config.models)
    if settings is not None:
        problems += _settings_consistency_problems(path, settings, config.models)
    return config, problems


def _no_models_problem(path: Path, config: Config) -> ConfigProblem:
    """An empty file, an empty `models:`, or only entries left to llm-bawt: nothing to supervise."""
    message = (
        f"no models configured: add at least one entry under {MODELS_SECTION}: "
        "(type: vllm, or type: gguf with backend: vllm)"
    )
    if config.skipped:
        left = ", ".join(f"{alias} ({why})" for alias, why in config.skipped.items())
        message += f"; the entries here are all left to llm-bawt: {left}"
    return ConfigProblem(path, None, None, message)


def _type_name(value: Any) -> str:
    names: dict[type, str] = {list: "a list", str: "a string", dict: "a map"}
    return names.get(type(value), type(value).__name__)


def _parse_settings(
    path: Path, section: Any, environ: Mapping[str, str]
) -> tuple[Settings | None, list[ConfigProblem]]:
    if section is None:
        section = {}
    if not isinstance(section, dict):
        message = f"must be a map of settings (got {_type_name(section)})"
        return None, [ConfigProblem(path, None, GLOBAL_SECTION, message)]
    values = {str(key): value for key, value in section.items()}
    values.setdefault("state_dir", default_state_dir(environ))
    findings = _unknown_key_findings(values, SETTINGS_KEYS)
    known = {key: value for key, value in values.items() if key in SETTINGS_KEYS}
    settings, validation_findings = _validate(Settings, known)
    findings += _with_nul_findings(validation_findings, known)
    problems = [
        ConfigProblem(path, None, f"{GLOBAL_SECTION}.{key}" if key else GLOBAL_SECTION, message)
        for key, message in findings
    ]
    return (settings if not problems else None), problems


def _skip_reason(definition: Mapping[str, Any]) -> str | None:
    """Why an entry is not ours, or None when bawt-vllm runs it."""
    if runs_on_vllm(definition):
        return None
    model_type = definition.get("type")
    if model_type == PROVIDER_GGUF:
        return "gguf without 'backend: vllm' (llm-bawt runs it with llama-cpp)"
    if model_type is None:
        return "it has no 'type' key"
    return f"type is '{model_type}'"


def _parse_model(
    path: Path, raw_alias: Any, definition: Any
) -> tuple[ModelEntry | None, list[ConfigProblem], str | None]:
    """Validate one entry: (entry or None, problems, skip reason or None)."""
    alias = str(raw_alias)
    if not isinstance(definition, dict):
        message = f"must be a map of model settings (got {_type_name(definition)})"
        return None, [ConfigProblem(path, alias, None, message)], None
    values = {str(key): value for key, value in definition.items()}
    skip_reason = _skip_reason(values)
    if skip_reason is not None:
        return None, [], skip_reason

    findings = _alias_findings(raw_alias) + _unknown_key_findings(values, ENTRY_KEYS | LLM_BAWT_ONLY_KEYS)
    known = {key: value for key, value in values.items() if key in ENTRY_KEYS}
    entry, validation_findings = _validate(ModelEntry, {**known, "alias": alias})
    findings += _with_nul_findings(validation_findings, known) + _entry_rule_findings(known)
    problems = [ConfigProblem(path, alias, key, message) for key, message in findings]
    return (entry if not problems else None), problems, None


Finding = tuple[str | None, str]
"""(key, message) before the file and alias are attached."""


def _alias_findings(raw_alias: Any) -> list[Finding]:
    """Only entries bawt-vllm runs are held to this: their alias becomes a file name. Entries
    left to llm-bawt may use any name."""
    if not isinstance(raw_alias, str):
        # YAML reads `1.10:` as the number 1.1 and `010:` as 8: the name would silently change.
        what = f"YAML reads it as {_type_name(raw_alias)}"
        return [(None, f"the alias must be text; {what}: quote it, e.g. '{raw_alias}':")]
    if not is_safe_alias(raw_alias):
        return [(None, f"{raw_alias!r} cannot be an alias: use {ALIAS_RULE}")]
    return []


def _with_nul_findings(findings: list[Finding], values: Mapping[str, Any]) -> list[Finding]:
    """`findings`, plus one for each other key holding a NUL character. YAML lets "\\0" through, but
    no path, argument or environment value can hold one: the start would fail later instead."""
    reported = {key for key, _ in findings}
    return findings + [
        (key, "must not contain a NUL character (\\0)")
        for key, value in values.items()
        if key not in reported and _has_nul(value)
    ]


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\0" in value
    if isinstance(value, list):
        return any(_has_nul(item) for item in value if isinstance(item, str))
    if isinstance(value, dict):
        return any(_has_nul(part) for item in value.items() for part in item if isinstance(part, str))
    return False


def _unknown_key_findings(values: Mapping[str, Any], allowed: frozenset[str]) -> list[Finding]:
    return [
        (key, f"unknown key '{key}'{did_you_mean(key, allowed)}") for key in values if key not in allowed
    ]


SchemaT = TypeVar("SchemaT", bound=BaseModel)


def _validate(schema: type[SchemaT], values: dict[str, Any]) -> tuple[SchemaT | None, list[Finding]]:
    try:
        return schema.model_validate(values), []
    except ValidationError as error:
        return None, _validation_findings(error, values)


def _validation_findings(error: ValidationError, values: Mapping[str, Any]) -> list[Finding]:
    """Rewrite pydantic's errors as '<what the key accepts> (got <value>)', one per key."""
    findings: dict[str | None, str] = {}
    for detail in error.errors():
        location = [str(part) for part in detail["loc"] if part != "[key]"]  # pydantic marks bad dict keys
        top_key = location[0] if location else None
        key: str | None
        if top_key in _DURATION_RANGES:
            key = top_key
            message = _duration_message(detail["type"], _DURATION_RANGES[top_key], values.get(top_key))
        elif top_key in _EXPECTATIONS:
            key = top_key
            message = f"{_EXPECTATIONS[top_key]} (got {_shown(values.get(top_key))})"
        else:
            key = ".".join(location) or None
            expected = _ERROR_TYPE_TEXT.get(detail["type"]) or _error_text(detail)
            message = f"{expected} (got {_shown(detail.get('input'))})"
        findings.setdefault(key, message)
    return list(findings.items())


def _duration_message(error_type: str, allowed: str, got: Any) -> str:
    if error_type in _NOT_A_NUMBER_ERRORS:
        return f"must be a number (got {_shown(got)}); allowed: {allowed}"
    return f"must be a finite number {allowed} (got {_shown(got)})"


def _shown(value: Any, limit: int = 80) -> str:
    """repr(value), cut short: a bad value may be a large structure."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error_text(detail: Any) -> str:
    """pydantic's message, without the 'Value error, ' it puts before a validator's own text."""
    if detail["type"] == "value_error" and "error" in detail.get("ctx", {}):
        return str(detail["ctx"]["error"])
    return _lower_first(detail["msg"])


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


# --------------------------------------------------------------------------- rules across keys


def _entry_rule_findings(values: Mapping[str, Any]) -> list[Finding]:
    """Rules that involve more than one key. They read the raw values defensively, so
    they still run (and report) when some key failed type validation."""
    return [
        *_model_source_findings(values),
        *_tool_parser_findings(values),
        *_gpu_pin_findings(values),
        *_extra_args_findings(values),
        *_env_findings(values),
        *_context_findings(values),
    ]


def _model_source_findings(values: Mapping[str, Any]) -> list[Finding]:
    if values.get("type") == PROVIDER_VLLM:
        if values.get("model_id"):
            return []
        return [("model_id", "is required for type: vllm (a Hugging Face id or a local model directory)")]
    has_repo, has_file, has_path = (bool(values.get(key)) for key in ("repo_id", "filename", "path"))
    if has_path and (has_repo or has_file):
        return [("path", "set either repo_id + filename or path, not both")]
    if has_path or (has_repo and has_file):
        return []
    if has_repo != has_file:
        missing = "filename" if has_repo else "repo_id"
        return [(missing, "is required: repo_id and filename go together")]
    return [(None, "a gguf entry with backend: vllm needs repo_id + filename, or a local path")]


def _tool_parser_findings(values: Mapping[str, Any]) -> list[Finding]:
    tool_support = values.get("tool_support")
    if tool_support not in (None, *TOOL_SUPPORT_VALUES):
        return []  # already reported as an invalid tool_support
    if values.get("tool_call_parser") or get_tool_format(values) != TOOL_FORMAT_NATIVE:
        return []
    if tool_support:
        why = "tool_support is native"
    elif values.get("tool_format"):
        why = "tool_format is native"
    else:
        why = "tools default to native for vLLM"
    message = (
        f"is required because {why}: vLLM only returns tool calls with a parser for the model's format "
        f"(common: {', '.join(COMMON_TOOL_CALL_PARSERS)}); or set tool_support: react or none"
    )
    return [("tool_call_parser", message)]


def _gpu_pin_findings(values: Mapping[str, Any]) -> list[Finding]:
    size = values.get("tensor_parallel_size")
    if values.get("gpu") is None or not isinstance(size, int) or size <= 1:
        return []
    return [("gpu", f"pins one GPU, but tensor_parallel_size {size} needs {size}; drop one of them")]


def _extra_args_findings(values: Mapping[str, Any]) -> list[Finding]:
    args = values.get("extra_args")
    if not isinstance(args, list):
        return []
    return [("extra_args", message) for message in reserved_flag_problems([str(arg) for arg in args])]


def _env_findings(values: Mapping[str, Any]) -> list[Finding]:
    env = values.get("env")
    if not isinstance(env, dict):
        return []
    return [(f"env.{name}", RESERVED_ENV_VARS[name]) for name in env if name in RESERVED_ENV_VARS]


def _context_findings(values: Mapping[str, Any]) -> list[Finding]:
    window, limit = values.get("context_window"), values.get("max_model_len")
    if not (isinstance(window, int) and isinstance(limit, int)) or window <= limit:
        return []
    message = f"{window} is above max_model_len {limit}: vLLM would reject the longer prompts llm-bawt sends"
    return [("context_window", message)]


def _cross_entry_problems(path: Path, models: Mapping[str, ModelEntry]) -> list[ConfigProblem]:
    ports = {alias: entry.port for alias, entry in models.items() if entry.port is not None}
    served_names = {alias: entry.served_name for alias, entry in models.items()}
    return [
        *_duplicate_value_problems(path, "port", ports),
        *_duplicate_value_problems(path, "served_model_name", served_names),
    ]


def _duplicate_value_problems(path: Path, key: str, value_by_alias: Mapping[str, Any]) -> list[ConfigProblem]:
    """One problem for every entry reusing a value an earlier entry already has."""
    first_alias_with: dict[Any, str] = {}
    problems = []
    for alias, value in value_by_alias.items():
        if value in first_alias_with:
            message = f"'{value}' is already used by '{first_alias_with[value]}'"
            problems.append(ConfigProblem(path, alias, key, message))
        first_alias_with.setdefault(value, alias)
    return problems


def _settings_consistency_problems(
    path: Path, settings: Settings, models: Mapping[str, ModelEntry]
) -> list[ConfigProblem]:
    problems = []
    low, high = settings.port_range
    if low <= settings.gateway_port <= high:
        message = f"{settings.gateway_port} is inside port_range {low}-{high}, where model servers listen"
        problems.append(ConfigProblem(path, None, f"{GLOBAL_SECTION}.gateway_port", message))
    if settings.restart_backoff_max_s < settings.restart_backoff_s:
        message = f"must be >= restart_backoff_s ({settings.restart_backoff_s})"
        problems.append(ConfigProblem(path, None, f"{GLOBAL_SECTION}.restart_backoff_max_s", message))
    problems += [
        ConfigProblem(path, alias, "port", f"{entry.port} is the gateway's port (bawt_vllm.gateway_port)")
        for alias, entry in models.items()
        if entry.port == settings.gateway_port
    ]
    return problems

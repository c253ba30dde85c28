"""Rules a single key's type cannot express: the alias, unknown keys, NUL characters, the rules
between keys of one entry, values two entries must not share, and settings that must agree.

The per-entry rules read the raw values defensively, so they still report when a key failed validation.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .names import ALIAS_RULE, GLOBAL_SECTION, is_safe_alias
from .problems import ConfigProblem, Finding, did_you_mean
from .reserved import RESERVED_ENV_VARS, reserved_flag_problems
from .schema import COMMON_TOOL_CALL_PARSERS, TOOL_SUPPORT_VALUES, ModelEntry, Settings
from .toolformat import PROVIDER_VLLM, TOOL_FORMAT_NATIVE, get_tool_format
from .wording import type_name


def alias_findings(raw_alias: Any) -> list[Finding]:
    """Only entries bawt-vllm runs are held to this: their alias becomes a file name. Entries
    left to llm-bawt may use any name."""
    if not isinstance(raw_alias, str):
        # YAML reads `1.10:` as the number 1.1 and `010:` as 8: the name would silently change.
        what = f"YAML reads it as {type_name(raw_alias)}"
        return [(None, f"the alias must be text; {what}: quote it, e.g. '{raw_alias}':")]
    if not is_safe_alias(raw_alias):
        return [(None, f"{raw_alias!r} cannot be an alias: use {ALIAS_RULE}")]
    return []


def with_nul_findings(findings: list[Finding], values: Mapping[str, Any]) -> list[Finding]:
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


def unknown_key_findings(values: Mapping[str, Any], allowed: frozenset[str]) -> list[Finding]:
    return [
        (key, f"unknown key '{key}'{did_you_mean(key, allowed)}") for key in values if key not in allowed
    ]


def entry_rule_findings(values: Mapping[str, Any]) -> list[Finding]:
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


def cross_entry_problems(path: Path, models: Mapping[str, ModelEntry]) -> list[ConfigProblem]:
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


def settings_consistency_problems(
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

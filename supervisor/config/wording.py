"""pydantic's validation errors as messages that say what a key accepts and what it got: the
wording tables, and `validate`, which runs a schema and returns (key, message) findings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .problems import Finding
from .schema import DTYPES, MAX_SECONDS, MAX_STOP_GRACE_S, QUANTIZATIONS, TOOL_SUPPORT_VALUES
from .urls import HTTP_URL_EXPECTATION

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
    "gateway_public_url": f"{HTTP_URL_EXPECTATION} (the gateway as llm-bawt reaches it)",
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


SchemaT = TypeVar("SchemaT", bound=BaseModel)


def validate(schema: type[SchemaT], values: dict[str, Any]) -> tuple[SchemaT | None, list[Finding]]:
    """`values` as a `schema`, or None and one finding per key pydantic refused."""
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


def type_name(value: Any) -> str:
    """How a message names the type of a value YAML produced: 'a list', 'a map', else the type's name."""
    names: dict[type, str] = {list: "a list", str: "a string", dict: "a map"}
    return names.get(type(value), type(value).__name__)

"""What a repository's files and config.json say about its weights: format labels and serving suggestions.

The quantization label shown and used for aliases (AWQ, GPTQ, FP8, GGUF, BF16 ...),
the formats vLLM cannot load, the `--tool-call-parser` and `max_model_len` to suggest,
and which file of a GGUF repository to use. Pure functions: no Hub, no files.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

MAX_SUGGESTED_MODEL_LEN = 32768

UNSUPPORTED_QUANTIZATIONS = frozenset({"MLX", "EXL2", "EXL3"})
"""Formats that come as safetensors but that vLLM cannot load."""

UNQUANTIZED = frozenset({"BF16", "FP16", "FP32"})
"""Labels of unquantized weights (an alias does not name them)."""

_QUANT_METHOD_LABELS = {
    "awq": "AWQ",
    "awq_marlin": "AWQ",
    "gptq": "GPTQ",
    "gptq_marlin": "GPTQ",
    "fp8": "FP8",
    "bitsandbytes": "BNB",
    "mxfp4": "MXFP4",
    "exl2": "EXL2",
    "hqq": "HQQ",
}
_NAME_QUANT_PATTERNS = (  # first match wins; matched as whole tokens of the repo name
    ("mlx", "MLX"),
    ("exl2", "EXL2"),
    ("exl3", "EXL3"),
    ("gguf", "GGUF"),
    ("awq", "AWQ"),
    ("gptq", "GPTQ"),
    ("nvfp4", "NVFP4"),
    ("mxfp4", "MXFP4"),
    ("fp8", "FP8"),
    ("w4a16", "W4A16"),
    ("w8a8", "W8A8"),
    ("int4", "INT4"),
    ("int8", "INT8"),
    ("bnb", "BNB"),
)
_DTYPE_LABELS = {"bfloat16": "BF16", "float16": "FP16", "half": "FP16", "float32": "FP32", "float": "FP32"}

_PARSER_BY_MODEL_TYPE = {
    "qwen2": "hermes",
    "qwen2_moe": "hermes",
    "qwen2_vl": "hermes",
    "qwen2_5_vl": "hermes",
    "qwen3": "hermes",
    "qwen3_moe": "hermes",
    "llama4": "llama4_pythonic",
    "mistral": "mistral",
    "mistral3": "mistral",
    "mixtral": "mistral",
    "pixtral": "mistral",
    "granite": "granite",
    "granitemoe": "granite",
    "internlm2": "internlm",
    "jamba": "jamba",
    "deepseek_v3": "deepseek_v3",
    "kimi_k2": "kimi_k2",
    "gpt_oss": "openai",
    "glm4_moe": "glm45",
}
_PARSER_BY_NAME_FIRST = (  # special cases that override the architecture
    (r"hermes", "hermes"),
    (r"qwen3[^/]*coder", "qwen3_coder"),
    (r"kimi-k2", "kimi_k2"),
)
_PARSER_BY_NAME = (
    (r"qwen|qwq", "hermes"),
    (r"llama-?4", "llama4_pythonic"),
    (r"llama-?3", "llama3_json"),
    (r"mistral|mixtral|ministral|devstral|magistral|codestral", "mistral"),
    (r"granite", "granite"),
    (r"gpt-oss", "openai"),
    (r"deepseek-(?:v3|r1)", "deepseek_v3"),
    (r"internlm", "internlm"),
)
_CONTEXT_KEYS = ("max_position_embeddings", "max_sequence_length", "seq_length", "n_positions")

_GGUF_PREFERENCE = ("Q4_K_M", "Q5_K_M", "Q4_K_S", "Q5_K_S", "Q6_K", "Q8_0", "Q4_0", "IQ4_XS")
SPLIT_GGUF = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.IGNORECASE)
"""One part of a split GGUF (`-00001-of-00003.gguf`), which vLLM cannot load."""
_GGUF_LEVEL = re.compile(r"(?:^|[-_.])((?:i?q\d+(?:_[a-z0-9]+)*)|bf16|f16|f32)(?=\.gguf$|[-_.])", re.IGNORECASE)


def detect_quantization(repo_id: str, config_json: Mapping[str, Any] | None, filenames: list[str]) -> str | None:
    """A display label for the weights' format: AWQ, GPTQ, FP8, GGUF, BF16 ...

    config.json's `quantization_config` is authoritative; then GGUF-only file lists; then
    the repo name; then config.json's dtype.
    """
    config = config_json or {}
    quant_config = config.get("quantization_config")
    if isinstance(quant_config, Mapping) and quant_config.get("quant_method"):
        return _quant_method_label(str(quant_config["quant_method"]).lower(), quant_config, repo_id)
    lowered = [name.lower() for name in filenames]
    if any(name.endswith(".gguf") for name in lowered) and not any(name.endswith(".safetensors") for name in lowered):
        return "GGUF"
    from_name = _name_quantization(repo_id)
    if from_name:
        return from_name
    dtype = config.get("torch_dtype") or config.get("dtype")
    return _DTYPE_LABELS.get(str(dtype).lower()) if dtype else None


def _quant_method_label(method: str, quant_config: Mapping[str, Any], repo_id: str) -> str:
    if method in _QUANT_METHOD_LABELS:
        return _QUANT_METHOD_LABELS[method]
    if method in {"compressed-tensors", "modelopt"}:
        algorithm = str(quant_config.get("quant_algo") or "").upper()
        if "FP4" in algorithm:
            return "NVFP4"
        if "FP8" in algorithm:
            return "FP8"
        return _name_quantization(repo_id) or method.upper()
    return method.upper()


def _name_quantization(repo_id: str) -> str | None:
    tokens = set(re.split(r"[-_./ ]+", repo_id.lower()))
    if repo_id.lower().startswith("mlx-community/"):
        return "MLX"
    return next((label for token, label in _NAME_QUANT_PATTERNS if token in tokens), None)


def dtype_label(parameters: Mapping[str, int]) -> str | None:
    """From the safetensors tensor counts by dtype (search results have no config.json)."""
    if not parameters:
        return None
    dominant = max(parameters, key=lambda dtype: parameters[dtype]).upper()
    return {"BF16": "BF16", "F16": "FP16", "F32": "FP32", "F8_E4M3": "FP8", "F8_E5M2": "FP8"}.get(dominant)


def suggest_tool_call_parser(config_json: Mapping[str, Any] | None, repo_id: str) -> str | None:
    """vLLM's `--tool-call-parser` for the model's tool-call format, or None when unknown."""
    name = repo_id.lower()
    for pattern, parser in _PARSER_BY_NAME_FIRST:
        if re.search(pattern, name):
            return parser
    config = config_json or {}
    model_type = str(config.get("model_type") or "").lower()
    if model_type in _PARSER_BY_MODEL_TYPE:
        return _PARSER_BY_MODEL_TYPE[model_type]
    if model_type == "llama":
        return "llama3_json" if _is_llama3(config, name) else None
    if model_type:
        return None  # a known architecture without a parser: the name would only guess
    return next((parser for pattern, parser in _PARSER_BY_NAME if re.search(pattern, name)), None)


def _is_llama3(config: Mapping[str, Any], name: str) -> bool:
    """Llama 3.x: its rope type, its 128k vocabulary, or its name (Llama 2 has no tool format)."""
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    if isinstance(rope, Mapping) and rope.get("rope_type") == "llama3":
        return True
    return config.get("vocab_size") in (128256, 128257) or bool(re.search(r"llama-?3", name))


def suggest_max_model_len(config_json: Mapping[str, Any] | None) -> int | None:
    """min(the model's trained context, 32768): longer contexts cost KV-cache memory few need."""
    if not config_json:
        return None
    for section in (config_json, config_json.get("text_config") or {}):
        if not isinstance(section, Mapping):
            continue
        for key in _CONTEXT_KEYS:
            value = section.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return min(value, MAX_SUGGESTED_MODEL_LEN)
    return None


def gguf_quant_level(filename: str) -> str | None:
    """'Qwen2.5-7B-Instruct-Q4_K_M.gguf' -> 'Q4_K_M'."""
    match = _GGUF_LEVEL.search(Path(filename).name)
    return match.group(1).upper() if match else None


def choose_gguf_file(gguf_files: Collection[str]) -> str | None:
    """The file to use when none was named: a single-file GGUF, Q4_K_M first.

    Split GGUFs (`-00001-of-00003.gguf`) and `mmproj` vision projectors are never
    chosen: vLLM loads only single-file GGUF models.
    """
    single = sorted(f for f in gguf_files if not SPLIT_GGUF.search(f) and "mmproj" not in f.lower())
    for level in _GGUF_PREFERENCE:
        for name in single:
            if gguf_quant_level(name) == level:
                return name
    return single[0] if single else None

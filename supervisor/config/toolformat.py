"""Which tool-calling format a model definition implies.

This mirrors llm-bawt's `get_tool_format()` precedence so both programs agree on
what a shared models.yaml entry means. It works on raw mappings (the YAML as
parsed), not on validated models, because llm-bawt entries of every type pass
through it.

One deliberate difference from the in-process plan: a `vllm` entry (and a gguf
entry with `backend: vllm`) defaults to `native`, because bawt-vllm runs them
as `vllm serve`, whose OpenAI server returns structured `tool_calls` when a
tool-call parser is enabled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PROVIDER_VLLM = "vllm"
PROVIDER_OPENAI = "openai"
PROVIDER_GGUF = "gguf"
PROVIDER_OLLAMA = "ollama"
PROVIDER_HF = "huggingface"
PROVIDER_GROK = "grok"

TOOL_FORMAT_NATIVE = "native"
TOOL_FORMAT_REACT = "react"
TOOL_FORMAT_XML = "xml"
TOOL_FORMAT_NONE = "none"

EXPLICIT_TOOL_SUPPORT = (TOOL_FORMAT_NATIVE, TOOL_FORMAT_REACT, TOOL_FORMAT_XML, TOOL_FORMAT_NONE)

_NATIVE_PROVIDERS = frozenset({PROVIDER_OPENAI, PROVIDER_GROK, PROVIDER_VLLM})
# llm-bawt spells Hugging Face "huggingface"; the plan calls it "hf". Accept both.
_REACT_PROVIDERS = frozenset({PROVIDER_GGUF, PROVIDER_OLLAMA, PROVIDER_HF, "hf"})


def runs_on_vllm(model_def: Mapping[str, Any]) -> bool:
    """True for definitions served by `vllm serve`: `type: vllm`, or gguf with `backend: vllm`."""
    model_type = model_def.get("type")
    if model_type == PROVIDER_VLLM:
        return True
    return model_type == PROVIDER_GGUF and model_def.get("backend") == PROVIDER_VLLM


def get_tool_format(model_def: Mapping[str, Any]) -> str:
    """Return 'native', 'react', 'xml' or 'none' (or a legacy `tool_format` value) for a definition.

    Precedence: explicit `tool_support`, then legacy `tool_format`, then the provider type.
    """
    tool_support = model_def.get("tool_support")
    if tool_support in EXPLICIT_TOOL_SUPPORT:
        return str(tool_support)

    legacy_format = model_def.get("tool_format")
    if legacy_format:
        return str(legacy_format)

    if runs_on_vllm(model_def):
        return TOOL_FORMAT_NATIVE
    model_type = model_def.get("type")
    if not isinstance(model_type, str):
        return TOOL_FORMAT_XML
    if model_type in _NATIVE_PROVIDERS:
        return TOOL_FORMAT_NATIVE
    if model_type in _REACT_PROVIDERS:
        return TOOL_FORMAT_REACT
    return TOOL_FORMAT_XML

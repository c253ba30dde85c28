"""The models.yaml entry for a Hub repository: `type: vllm` for safetensors, `type: gguf` for a GGUF file.

`build_entry` turns a `Candidate` (and its config.json) into the entry, with the
suggested `max_model_len` and tool keys; `entry_for_repo` fetches what it needs first.
Its refusals (no single-file GGUF, a split GGUF, a missing file) list the repo's files.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from ..config.toolformat import PROVIDER_GGUF, PROVIDER_VLLM, TOOL_FORMAT_NATIVE, TOOL_FORMAT_REACT
from ..runtime.hubclient import HubError, NoWeightsError
from .formats import SPLIT_GGUF, choose_gguf_file, gguf_quant_level, suggest_max_model_len, suggest_tool_call_parser
from .hubapi import Candidate, fetch_config_json, inspect_repo


def entry_for_repo(
    repo_id: str, *, gguf_file: str | None = None, overrides: Mapping[str, Any] | None = None
) -> tuple[Candidate, dict[str, Any]]:
    """inspect_repo + the config.json that matters + build_entry: what `bawt-vllm add REPO` needs.

    For a GGUF entry the config comes from the card's base model (the GGUF repo has none).
    """
    candidate = inspect_repo(repo_id)
    uses_gguf = gguf_file is not None or not candidate.has_safetensors
    config_source = candidate.base_model if uses_gguf else repo_id
    config_json = None
    if config_source:
        with contextlib.suppress(HubError):
            config_json = fetch_config_json(config_source)
    entry = build_entry(candidate, config_json=config_json, gguf_file=gguf_file, overrides=overrides or {})
    return candidate, entry


def build_entry(
    candidate: Candidate,
    *,
    config_json: Mapping[str, Any] | None,
    gguf_file: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The models.yaml entry for a repository.

    Safetensors repos become `type: vllm`; GGUF repos (or a named `gguf_file`) become
    `type: gguf` + `backend: vllm` with the base model's tokenizer. `quantization` is
    not written: vLLM reads it from config.json and then picks the fastest kernel
    (awq_marlin, gptq_marlin), which naming the method would prevent. A key in
    `overrides` set to None removes it.
    """
    if gguf_file is None and not candidate.has_safetensors:
        gguf_file = choose_gguf_file(candidate.gguf_files)
        if gguf_file is None:
            raise NoWeightsError(_no_single_gguf_message(candidate))
    if gguf_file is not None:
        entry = _gguf_entry(candidate, gguf_file, config_json)
    elif candidate.has_safetensors:
        entry = _vllm_entry(candidate, config_json)
    else:
        raise NoWeightsError(f"'{candidate.repo_id}' has no weights vLLM can load")
    for key, value in (overrides or {}).items():
        if value is None:
            entry.pop(key, None)
        else:
            entry[key] = value
    return entry


def _vllm_entry(candidate: Candidate, config_json: Mapping[str, Any] | None) -> dict[str, Any]:
    label = f" ({candidate.quantization})" if candidate.quantization else ""
    entry: dict[str, Any] = {
        "type": PROVIDER_VLLM,
        "model_id": candidate.repo_id,
        "description": f"{candidate.repo_id}{label}",
    }
    max_model_len = suggest_max_model_len(config_json)
    if max_model_len:
        entry["max_model_len"] = max_model_len
    entry.update(_tool_keys(config_json, candidate.repo_id))
    return entry


def _gguf_entry(candidate: Candidate, gguf_file: str, config_json: Mapping[str, Any] | None) -> dict[str, Any]:
    if gguf_file not in candidate.gguf_files:
        raise NoWeightsError(f"'{candidate.repo_id}' has no file '{gguf_file}' (GGUF files: {_listing(candidate)})")
    if SPLIT_GGUF.search(gguf_file):
        raise NoWeightsError(
            f"'{gguf_file}' is one part of a split GGUF; vLLM loads only single-file GGUF models "
            "(merge the parts with llama.cpp's gguf-split, or pick another file)"
        )
    level = gguf_quant_level(gguf_file)
    entry: dict[str, Any] = {
        "type": PROVIDER_GGUF,
        "backend": PROVIDER_VLLM,
        "repo_id": candidate.repo_id,
        "filename": gguf_file,
    }
    if candidate.base_model:
        entry["tokenizer"] = candidate.base_model  # vLLM's tokenizer from GGUF metadata is slow and lossy
    entry["description"] = f"{candidate.base_model or candidate.repo_id} {level or 'GGUF'} (GGUF through vLLM)"
    max_model_len = suggest_max_model_len(config_json)
    if max_model_len:
        entry["max_model_len"] = max_model_len
    entry.update(_tool_keys(config_json, candidate.base_model or candidate.repo_id))
    return entry


def _tool_keys(config_json: Mapping[str, Any] | None, name: str) -> dict[str, Any]:
    """Native tools with the matching parser; ReAct (text) tools when no parser is known."""
    parser = suggest_tool_call_parser(config_json, name)
    if parser:
        return {"tool_support": TOOL_FORMAT_NATIVE, "tool_call_parser": parser}
    return {"tool_support": TOOL_FORMAT_REACT}


def _no_single_gguf_message(candidate: Candidate) -> str:
    return (
        f"'{candidate.repo_id}' has no single-file GGUF that vLLM can load "
        f"(GGUF files: {_listing(candidate)}); name one with --gguf-file"
    )


def _listing(candidate: Candidate) -> str:
    return ", ".join(candidate.gguf_files[:12]) or "none"

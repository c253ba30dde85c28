"""Finding and reading model repositories on the Hugging Face Hub: search, inspect, config.json.

`search_models` ranks the loadable repositories matching a query by downloads;
`inspect_repo` reads one repository (its files, sizes, base model and format) into a
`Candidate`; `fetch_config_json` fetches its config.json. The connection itself and
the errors are runtime/hubclient's; format labels come from `formats`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..runtime.hubclient import LIBRARY_NAME, MissingFileError, NoWeightsError, hub_api, hub_errors
from ..runtime.weights import serving_files
from .formats import UNSUPPORTED_QUANTIZATIONS, choose_gguf_file, detect_quantization, dtype_label

_DTYPE_BYTES = {
    "F64": 8.0, "I64": 8.0, "U64": 8.0,
    "F32": 4.0, "I32": 4.0, "U32": 4.0,
    "BF16": 2.0, "F16": 2.0, "I16": 2.0, "U16": 2.0,
    "F8_E4M3": 1.0, "F8_E5M2": 1.0, "F8_E8M0": 1.0, "I8": 1.0, "U8": 1.0, "BOOL": 1.0,
    "F4": 0.5, "FP4": 0.5, "F6_E2M3": 0.75, "F6_E3M2": 0.75,
}  # fmt: skip


@dataclass
class Candidate:
    """A model repository as `bawt-vllm add` shows and uses it."""

    repo_id: str
    quantization: str | None  # display label: AWQ GPTQ FP8 GGUF BF16 ...
    size_bytes: int | None
    downloads: int | None
    gguf_files: list[str]
    has_safetensors: bool
    base_model: str | None = None  # from the model card's `base_model` metadata
    file_sizes: dict[str, int] = field(default_factory=dict)  # known only after inspect_repo


def search_models(query: str, *, limit: int = 10) -> list[Candidate]:
    """The most downloaded repositories matching `query` that vLLM can load (safetensors or GGUF).

    When a several-word query finds nothing (the Hub may match it as one substring of
    the repo id), it is retried with its longest word, keeping ids that contain every word.
    """
    candidates = _search(query, limit)
    words = query.lower().split()
    if not candidates and len(words) > 1:
        longest = max(words, key=len)
        candidates = [c for c in _search(longest, limit * 5) if all(w in c.repo_id.lower() for w in words)]
    return candidates[:limit]


def _search(query: str, limit: int) -> list[Candidate]:
    api = hub_api()
    fetch = min(100, max(limit * 4, 20))  # over-fetch: many hits are adapters, datasets of weights, MLX ...
    expand = ["downloads", "siblings", "safetensors", "config"]
    with hub_errors():
        infos = list(api.list_models(search=query, sort="downloads", limit=fetch, expand=expand))
    usable = [candidate for candidate in map(_candidate, infos) if _is_usable(candidate)]
    usable.sort(key=lambda c: c.downloads or 0, reverse=True)
    return usable


def inspect_repo(repo_id: str) -> Candidate:
    """One repository in detail (with file sizes); HubError subclasses explain why it cannot be used."""
    api = hub_api()
    with hub_errors(repo_id):
        info = api.model_info(repo_id, files_metadata=True)
    candidate = _candidate(info)
    if not (candidate.has_safetensors or candidate.gguf_files):
        files = ", ".join(sorted(candidate.file_sizes)[:8]) or "none"
        raise NoWeightsError(f"'{repo_id}' has no safetensors or GGUF weights for vLLM (files: {files})")
    if candidate.quantization in UNSUPPORTED_QUANTIZATIONS:
        raise NoWeightsError(f"'{repo_id}' holds {candidate.quantization} weights, which vLLM cannot load")
    return candidate


def fetch_config_json(repo_id: str) -> dict[str, Any] | None:
    """The repository's config.json (downloaded into the HF cache), or None when it has none."""
    from huggingface_hub import hf_hub_download

    try:
        with hub_errors(repo_id):
            path = hf_hub_download(repo_id, "config.json", library_name=LIBRARY_NAME)
    except MissingFileError:
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _candidate(info: Any) -> Candidate:
    siblings = list(getattr(info, "siblings", None) or [])
    filenames = [sibling.rfilename for sibling in siblings]
    sizes = {sibling.rfilename: sibling.size for sibling in siblings if getattr(sibling, "size", None)}
    gguf_files = sorted(name for name in filenames if name.lower().endswith(".gguf"))
    config = info.config if isinstance(getattr(info, "config", None), dict) else None
    parameters = _safetensors_parameters(info)
    quantization = detect_quantization(info.id, config, filenames) or dtype_label(parameters)
    has_safetensors = any(name.lower().endswith(".safetensors") for name in filenames)
    candidate = Candidate(
        repo_id=info.id,
        quantization=quantization,
        size_bytes=None,
        downloads=getattr(info, "downloads", None),
        gguf_files=gguf_files,
        has_safetensors=has_safetensors,
        base_model=_base_model(getattr(info, "card_data", None)),
        file_sizes=sizes,
    )
    candidate.size_bytes = _size(candidate, filenames, parameters)
    return candidate


def _is_usable(candidate: Candidate) -> bool:
    has_weights = candidate.has_safetensors or bool(candidate.gguf_files)
    return has_weights and candidate.quantization not in UNSUPPORTED_QUANTIZATIONS


def _safetensors_parameters(info: Any) -> dict[str, int]:
    safetensors = getattr(info, "safetensors", None)
    parameters = getattr(safetensors, "parameters", None)
    if parameters is None and isinstance(safetensors, Mapping):
        parameters = safetensors.get("parameters")
    return dict(parameters) if isinstance(parameters, Mapping) else {}


def _size(candidate: Candidate, filenames: list[str], parameters: Mapping[str, int]) -> int | None:
    """Bytes of the weights `pull` would fetch: file sizes when known, else from the tensor counts by dtype."""
    if candidate.has_safetensors:
        weights = [name for name in serving_files(filenames) if name.endswith(".safetensors")]
        if weights and all(name in candidate.file_sizes for name in weights):
            return sum(candidate.file_sizes[name] for name in weights)
        estimate = sum(count * _DTYPE_BYTES.get(dtype.upper(), 2.0) for dtype, count in parameters.items())
        return int(estimate) or None
    chosen = choose_gguf_file(candidate.gguf_files)
    return candidate.file_sizes.get(chosen) if chosen else None


def _base_model(card_data: Any) -> str | None:
    if card_data is None:
        return None
    value = card_data.get("base_model") if hasattr(card_data, "get") else getattr(card_data, "base_model", None)
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, str) and value else None

"""`bawt-vllm add` and `bawt-vllm pull`: find models on the Hugging Face Hub, write their
models.yaml entries, and download their weights ahead of the first `vllm serve`.

Everything talks to the Hub through huggingface_hub, imported inside the functions
(the CLI must start fast, and `bawt-vllm up` never needs it). Each call builds a fresh
`HfApi()`, so `HF_ENDPOINT` / `huggingface_hub.constants.ENDPOINT` are read at call
time, not frozen at import.

Downloads go to the ordinary Hugging Face cache (`HF_HOME` / `HF_HUB_CACHE`), which is
where `vllm serve` looks, so a pulled model starts without touching the network.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.loading import ConfigError, ConfigProblem, check_config
from ..config.toolformat import PROVIDER_GGUF, PROVIDER_VLLM, TOOL_FORMAT_NATIVE, TOOL_FORMAT_REACT
from .yamlfile import MODELS_KEY, load_document, parse_document, render, set_model_entry, write_text

MAX_SUGGESTED_MODEL_LEN = 32768
MAX_ALIAS_LENGTH = 48
LIBRARY_NAME = "bawt-vllm"

UNSUPPORTED_QUANTIZATIONS = frozenset({"MLX", "EXL2", "EXL3"})
"""Formats that come as safetensors but that vLLM cannot load."""

_UNQUANTIZED = frozenset({"BF16", "FP16", "FP32"})
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
_DTYPE_BYTES = {
    "F64": 8.0, "I64": 8.0, "U64": 8.0,
    "F32": 4.0, "I32": 4.0, "U32": 4.0,
    "BF16": 2.0, "F16": 2.0, "I16": 2.0, "U16": 2.0,
    "F8_E4M3": 1.0, "F8_E5M2": 1.0, "F8_E8M0": 1.0, "I8": 1.0, "U8": 1.0, "BOOL": 1.0,
    "F4": 0.5, "FP4": 0.5, "F6_E2M3": 0.75, "F6_E3M2": 0.75,
}  # fmt: skip

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
_SPLIT_GGUF = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.IGNORECASE)
_GGUF_LEVEL = re.compile(r"(?:^|[-_.])((?:i?q\d+(?:_[a-z0-9]+)*)|bf16|f16|f32)(?=\.gguf$|[-_.])", re.IGNORECASE)
_SUPPORT_FILE = re.compile(r"\.(?:json|jinja|model|tiktoken|txt)$|^tokenizer", re.IGNORECASE)


class HubError(Exception):
    """Something the Hub said or did not say, worded for the person at the terminal."""


class RepoNotFoundError(HubError):
    """No such model repository (or it is private or gated and no token gives access)."""


class NoWeightsError(HubError):
    """The repository exists but has no weights vLLM can load."""


class MissingFileError(HubError):
    """The repository has no such file."""


class AliasExistsError(HubError):
    """The alias is already in models.yaml and replacing it was not asked for."""


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


# --------------------------------------------------------------------------- talking to the Hub


def _api() -> Any:
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise HubError("huggingface_hub is not installed (pip install huggingface_hub)") from None
    return HfApi(library_name=LIBRARY_NAME)


def _endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


@contextlib.contextmanager
def _hub_errors(repo_id: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub's and the HTTP client's exceptions into HubError with a clear message."""
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    try:
        yield
    except GatedRepoError:
        raise HubError(
            f"'{repo_id}' is gated: accept its terms on the model page and log in (`hf auth login` or HF_TOKEN)"
        ) from None
    except RepositoryNotFoundError:
        raise RepoNotFoundError(
            f"no model repository '{repo_id}' on {_endpoint()} (check the spelling; "
            "private repositories need `hf auth login` or HF_TOKEN)"
        ) from None
    except HFValidationError as error:
        raise HubError(f"'{repo_id}' is not a valid repository id: {error}") from None
    except OfflineModeIsEnabled:
        raise HubError("huggingface_hub is in offline mode (HF_HUB_OFFLINE is set)") from None
    except LocalEntryNotFoundError as error:
        raise HubError(f"cannot reach {_endpoint()} and the files are not cached: {_first_line(error)}") from None
    except EntryNotFoundError as error:
        raise MissingFileError(f"'{repo_id}' has no such file: {_first_line(error)}") from None
    except HfHubHTTPError as error:
        raise HubError(f"the Hub refused the request: {_first_line(error)}") from None
    except Exception as error:
        if _is_network_error(error):
            raise HubError(f"cannot reach {_endpoint()}: {_first_line(error)}") from None
        raise


def _is_network_error(error: BaseException) -> bool:
    module = type(error).__module__.split(".")[0]
    return isinstance(error, ConnectionError | TimeoutError) or module in {"httpx", "httpx2", "requests", "urllib3"}


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# --------------------------------------------------------------------------- search and inspect


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
    api = _api()
    fetch = min(100, max(limit * 4, 20))  # over-fetch: many hits are adapters, datasets of weights, MLX ...
    expand = ["downloads", "siblings", "safetensors", "config"]
    with _hub_errors():
        infos = list(api.list_models(search=query, sort="downloads", limit=fetch, expand=expand))
    usable = [candidate for candidate in map(_candidate, infos) if _is_usable(candidate)]
    usable.sort(key=lambda c: c.downloads or 0, reverse=True)
    return usable


def inspect_repo(repo_id: str) -> Candidate:
    """One repository in detail (with file sizes); HubError subclasses explain why it cannot be used."""
    api = _api()
    with _hub_errors(repo_id):
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
        with _hub_errors(repo_id):
            path = hf_hub_download(repo_id, "config.json", library_name=LIBRARY_NAME)
    except MissingFileError:
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


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


def _candidate(info: Any) -> Candidate:
    siblings = list(getattr(info, "siblings", None) or [])
    filenames = [sibling.rfilename for sibling in siblings]
    sizes = {sibling.rfilename: sibling.size for sibling in siblings if getattr(sibling, "size", None)}
    gguf_files = sorted(name for name in filenames if name.lower().endswith(".gguf"))
    config = info.config if isinstance(getattr(info, "config", None), dict) else None
    parameters = _safetensors_parameters(info)
    quantization = detect_quantization(info.id, config, filenames) or _dtype_label(parameters)
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
        weights = [name for name in _serving_files(filenames) if name.endswith(".safetensors")]
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


# --------------------------------------------------------------------------- what the repo is


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


def _dtype_label(parameters: Mapping[str, int]) -> str | None:
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
    single = sorted(f for f in gguf_files if not _SPLIT_GGUF.search(f) and "mmproj" not in f.lower())
    for level in _GGUF_PREFERENCE:
        for name in single:
            if gguf_quant_level(name) == level:
                return name
    return single[0] if single else None


def propose_alias(repo_id: str, quantization: str | None, taken: Collection[str]) -> str:
    """A short, unique alias: 'Qwen/Qwen2.5-32B-Instruct-AWQ' -> 'qwen2.5-32b-instruct-awq'.

    The quantization is appended when the name does not say it already; a GGUF quant
    level (Q4_K_M) replaces the repo's '-gguf'. Taken aliases get -2, -3 ...
    """
    name = _slug(repo_id.rsplit("/", 1)[-1])
    suffix = ""
    if quantization and quantization.upper() not in _UNQUANTIZED:
        quant = _slug(quantization)
        if quant != "gguf" and name.endswith("-gguf"):
            name = name.removesuffix("-gguf")
        if quant not in name.split("-"):
            suffix = f"-{quant}"
    budget = MAX_ALIAS_LENGTH - len(suffix)
    if len(name) > budget:
        name = name[:budget].rsplit("-", 1)[0] if "-" in name[:budget] else name[:budget]
    base = (name + suffix).strip("-") or "model"
    alias, number = base, 2
    while alias in taken:
        alias, number = f"{base}-{number}", number + 1
    return alias


def _slug(text: str) -> str:
    return re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9._]+", "-", text.lower())).strip("-.")


# --------------------------------------------------------------------------- the entry


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
    if _SPLIT_GGUF.search(gguf_file):
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


# --------------------------------------------------------------------------- models.yaml


def add_model(
    config_path: Path, alias: str, entry: Mapping[str, Any], *, replace: bool = False, comment: str | None = None
) -> Path | None:
    """Add (or with `replace`, overwrite) one entry in models.yaml; returns the backup path.

    The edit keeps every other byte of the file. The result is validated with
    check_config first: when the new entry brings a problem, ConfigError is raised
    and nothing is written (problems the file already had do not block).
    """
    config_path = Path(config_path)
    exists = config_path.exists()
    document = load_document(config_path) if exists else parse_document(f"{MODELS_KEY}:\n", config_path)
    if alias in (document.get(MODELS_KEY) or {}) and not replace:
        raise AliasExistsError(
            f"{config_path}: '{alias}' is already defined; choose another alias or replace it (--replace)"
        )
    before = {_problem_key(p) for p in check_config(config_path)} if exists else set()
    set_model_entry(document, alias, entry, comment=comment)
    text = render(document)
    new_problems = [p for p in _problems_in(text, config_path) if _problem_key(p) not in before]
    if new_problems:
        raise ConfigError(new_problems, summary=f"not adding '{alias}': models.yaml would have problems:")
    return write_text(config_path, text, backup=True)


def _problems_in(text: str, shown_as: Path) -> list[ConfigProblem]:
    with tempfile.TemporaryDirectory(prefix="bawt-vllm-check-") as directory:
        candidate = Path(directory) / shown_as.name
        candidate.write_text(text, encoding="utf-8")
        problems = check_config(candidate)
    return [dataclasses.replace(problem, file=shown_as) for problem in problems]


def _problem_key(problem: ConfigProblem) -> tuple[str | None, str | None, str]:
    return problem.alias, problem.key, problem.message


# --------------------------------------------------------------------------- weights


def _as_mapping(entry: Any) -> Mapping[str, Any]:
    if hasattr(entry, "model_dump"):
        return entry.model_dump()
    if isinstance(entry, Mapping):
        return entry
    raise TypeError(f"expected a model entry or mapping, got {type(entry).__name__}")


def weights_present(entry: Any) -> bool:
    """Whether the entry's weights are on disk already (local path or the HF cache); never uses the network."""
    values = _as_mapping(entry)
    if values.get("type") == PROVIDER_GGUF:
        if values.get("path"):
            return Path(str(values["path"])).expanduser().is_file()
        return _cached_file(str(values.get("repo_id") or ""), str(values.get("filename") or "")) is not None
    model_id = str(values.get("model_id") or "")
    local = Path(model_id).expanduser()
    if model_id and local.is_dir():
        return _snapshot_complete(local)
    config_file = _cached_file(model_id, "config.json")
    return config_file is not None and _snapshot_complete(config_file.parent)


def _cached_file(repo_id: str, filename: str) -> Path | None:
    if not repo_id or not filename:
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename)
    except Exception:  # an invalid repo id, an unreadable cache: not present
        return None
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def _snapshot_complete(folder: Path) -> bool:
    """config.json and every weight shard the index names (or at least one .safetensors)."""
    if not (folder / "config.json").is_file():
        return False
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        except (OSError, ValueError, AttributeError):
            return False
        return bool(weight_map) and all((folder / name).is_file() for name in set(weight_map.values()))
    return any(path.is_file() for path in folder.glob("*.safetensors"))


def pull(entry: Any, *, progress: bool = True) -> Path:
    """Download what `vllm serve` needs for the entry into the HF cache; returns the local path.

    `type: vllm`: the weights (safetensors), config and tokenizer files, not the other
    formats a repo may carry (.bin, .pth, GGUF, ONNX ...). GGUF: the one file, plus the
    tokenizer files of its `tokenizer` repo. Progress bars are huggingface_hub's own.
    """
    values = _as_mapping(entry)
    with _progress_bars(progress):
        if values.get("type") == PROVIDER_GGUF:
            return _pull_gguf(values)
        return _pull_vllm(values)


def _pull_vllm(values: Mapping[str, Any]) -> Path:
    model_id = str(values.get("model_id") or "")
    local = Path(model_id).expanduser()
    if model_id.startswith(("/", "~", ".")) or local.is_dir():
        if not local.is_dir():
            raise HubError(f"model directory {local} does not exist")
        return local
    folder = _download_snapshot(model_id, _serving_files)
    if not _snapshot_complete(folder):
        raise NoWeightsError(f"'{model_id}' downloaded, but it has no complete safetensors weights for vLLM")
    _pull_tokenizer(values.get("tokenizer"))
    return folder


def _pull_gguf(values: Mapping[str, Any]) -> Path:
    if values.get("path"):
        path = Path(str(values["path"])).expanduser()
        if not path.is_file():
            raise HubError(f"GGUF file {path} does not exist")
        return path
    repo_id, filename = str(values.get("repo_id") or ""), str(values.get("filename") or "")
    if not repo_id or not filename:
        raise HubError("a gguf entry needs repo_id and filename (or a local path)")
    from huggingface_hub import hf_hub_download

    try:
        with _hub_errors(repo_id):
            downloaded = hf_hub_download(repo_id, filename, library_name=LIBRARY_NAME)
    except MissingFileError:
        raise MissingFileError(f"'{repo_id}' has no file '{filename}'") from None
    _pull_tokenizer(values.get("tokenizer"))
    return Path(downloaded)


def _pull_tokenizer(tokenizer: Any) -> None:
    """A separate tokenizer repo (GGUF entries name the base model): its small tokenizer files."""
    if not isinstance(tokenizer, str) or not tokenizer or Path(tokenizer).expanduser().exists():
        return
    _download_snapshot(tokenizer, _tokenizer_files)


def _download_snapshot(repo_id: str, select: Callable[[list[str]], list[str]]) -> Path:
    from huggingface_hub import snapshot_download

    api = _api()
    with _hub_errors(repo_id):
        info = api.model_info(repo_id)
        files = select([sibling.rfilename for sibling in info.siblings or []])
        if not files:
            raise NoWeightsError(f"'{repo_id}' has none of the files vLLM needs")
        folder = snapshot_download(repo_id, allow_patterns=files, library_name=LIBRARY_NAME)
    return Path(folder)


def _serving_files(filenames: list[str]) -> list[str]:
    """The exact files to fetch: root-level safetensors (HF layout) and support files.

    When a repo has both HF shards and a `consolidated*.safetensors` (Mistral's own
    layout, a second copy of the weights), only the HF shards are taken.
    """
    root = [name for name in filenames if "/" not in name]
    weights = [name for name in root if name.endswith(".safetensors")]
    hf_layout = [name for name in weights if not name.startswith("consolidated")]
    weights = hf_layout or weights
    support = [name for name in root if _SUPPORT_FILE.search(name) and not name.endswith(".safetensors")]
    return sorted(set(weights) | set(support)) if weights else []


def _tokenizer_files(filenames: list[str]) -> list[str]:
    root = [name for name in filenames if "/" not in name]
    return sorted(name for name in root if _SUPPORT_FILE.search(name))


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """Turn huggingface_hub's tqdm bars on or off for one call, then put the setting back."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if enabled != was_disabled:
        yield
        return
    (enable_progress_bars if enabled else disable_progress_bars)()
    try:
        yield
    finally:
        (disable_progress_bars if was_disabled else enable_progress_bars)()

"""A model entry's weights on disk: whether they are there, and downloading what `vllm serve` needs.

Downloads go to the ordinary Hugging Face cache (`HF_HOME` / `HF_HUB_CACHE`), which is
where `vllm serve` looks, so a pulled model starts without touching the network. It is
in the runtime wing because the pool downloads a GGUF file before a start; `bawt-vllm
pull` uses it too. huggingface_hub is imported inside the functions, as in hubclient.

A GGUF file llm-bawt already downloaded is used where it lies: llm-bawt keeps its GGUF
files at `<MODEL_CACHE_DIR>/<repo_id>/<filename>` (`hf_hub_download(local_dir=...)`, its
gguf_handler.py), MODEL_CACHE_DIR being `~/.cache/llm-bawt/models` unless
`$LLM_BAWT_MODEL_CACHE_DIR` says otherwise. It is looked for before the HF cache, so a model
moved from llm-bawt's llama.cpp to bawt-vllm is not downloaded a second time.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..config.toolformat import PROVIDER_GGUF
from .hubclient import LIBRARY_NAME, HubError, MissingFileError, NoWeightsError, hub_api, hub_errors

LLM_BAWT_CACHE_ENV = "LLM_BAWT_MODEL_CACHE_DIR"
LLM_BAWT_DEFAULT_CACHE = "~/.cache/llm-bawt/models"
_SUPPORT_FILE = re.compile(r"\.(?:json|jinja|model|tiktoken|txt)$|^tokenizer", re.IGNORECASE)


def _as_mapping(entry: Any) -> Mapping[str, Any]:
    if hasattr(entry, "model_dump"):
        dumped: Mapping[str, Any] = entry.model_dump()
        return dumped
    if isinstance(entry, Mapping):
        return entry
    raise TypeError(f"expected a model entry or mapping, got {type(entry).__name__}")


def weights_present(entry: Any) -> bool:
    """Whether the entry's weights are on disk already (local path, llm-bawt's GGUF cache or the HF cache);
    never uses the network."""
    values = _as_mapping(entry)
    if values.get("type") == PROVIDER_GGUF:
        if values.get("path"):
            return Path(str(values["path"])).expanduser().is_file()
        repo_id, filename = str(values.get("repo_id") or ""), str(values.get("filename") or "")
        return llm_bawt_gguf_file(repo_id, filename) is not None or _cached_file(repo_id, filename) is not None
    model_id = str(values.get("model_id") or "")
    local = Path(model_id).expanduser()
    if model_id and local.is_dir():
        return _snapshot_complete(local)
    config_file = _cached_file(model_id, "config.json")
    return config_file is not None and _snapshot_complete(config_file.parent)


def llm_bawt_gguf_file(repo_id: str, filename: str, environ: Mapping[str, str] | None = None) -> Path | None:
    """The GGUF file llm-bawt downloaded for (repo_id, filename), when it is there."""
    parts = [*repo_id.split("/"), *filename.split("/")]
    if not repo_id or not filename or any(part in ("", ".", "..") for part in parts):
        return None  # not a Hub name: never a path out of the cache
    env = os.environ if environ is None else environ
    root = Path(env.get(LLM_BAWT_CACHE_ENV) or LLM_BAWT_DEFAULT_CACHE)
    try:
        candidate = root.expanduser().joinpath(*parts)
    except RuntimeError:  # '~someone' with no such user
        return None
    return candidate if candidate.is_file() else None


def local_config_json(entry: Any) -> dict[str, Any] | None:
    """The model's config.json when it is on disk, never from the network: a local model
    directory or the HF cache (`type: vllm`), or the `tokenizer` source (GGUF entries, whose
    tokenizer is the base model). None when absent or unreadable."""
    values = _as_mapping(entry)
    source = str(values.get("tokenizer") or "") if values.get("type") == PROVIDER_GGUF else str(
        values.get("model_id") or "")
    if not source:
        return None
    try:
        local = Path(source).expanduser()
    except RuntimeError:  # '~someone' with no such user
        return None
    found = local / "config.json" if local.is_dir() else _cached_file(source, "config.json")
    if found is None or not found.is_file():
        return None
    try:
        loaded = json.loads(found.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


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
    folder = _download_snapshot(model_id, serving_files)
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
    from_llm_bawt = llm_bawt_gguf_file(repo_id, filename)
    if from_llm_bawt is not None:
        _pull_tokenizer(values.get("tokenizer"))
        return from_llm_bawt
    from huggingface_hub import hf_hub_download

    try:
        with hub_errors(repo_id):
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

    api = hub_api()
    with hub_errors(repo_id):
        info = api.model_info(repo_id)
        files = select([sibling.rfilename for sibling in info.siblings or []])
        if not files:
            raise NoWeightsError(f"'{repo_id}' has none of the files vLLM needs")
        folder = snapshot_download(repo_id, allow_patterns=files, library_name=LIBRARY_NAME)
    return Path(folder)


def serving_files(filenames: list[str]) -> list[str]:
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
    from huggingface_hub.utils import (  # type: ignore[attr-defined, unused-ignore]  # re-exported implicitly
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    was_disabled = are_progress_bars_disabled()
    if enabled != was_disabled:
        yield
        return
    (enable_progress_bars if enabled else disable_progress_bars)()
    try:
        yield
    finally:
        (disable_progress_bars if was_disabled else enable_progress_bars)()

"""A small local stand-in for the Hugging Face Hub, for tests of `bawt-vllm add` / `pull`.

It answers the routes huggingface_hub uses for what supervisor/catalog/hubapi.py and
supervisor/runtime/weights.py call (read from huggingface_hub's own source, 2.x and earlier):

- `GET /api/models?search=&sort=&limit=&expand=...`           HfApi.list_models
- `GET /api/models/{repo}` and `.../revision/{rev}`            HfApi.model_info / repo_info
  (`blobs=true` adds sibling sizes and LFS data; `expand=` limits the fields)
- `GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=`      HfApi.list_repo_tree (snapshot_download, 2.x)
- `HEAD|GET /{repo}/resolve/{rev}/{file}`                       hf_hub_download: ETag, X-Repo-Commit,
  Content-Length (and X-Linked-Etag / X-Linked-Size for LFS files), Range requests

Errors carry the `X-Error-Code` header huggingface_hub maps to its exceptions
(RepoNotFound, RevisionNotFound, EntryNotFound). Any other route answers 404 and is
recorded in `HubStandin.unhandled`, so a test can assert nothing unexpected was asked.

`point_huggingface_hub` aims an already-imported huggingface_hub at the stand-in: its
settings are module constants read from the environment at import time, so setting
HF_ENDPOINT / HF_HOME is not enough once it has been imported.

Run it by hand: `python tests/hub_standin.py` (then `HF_ENDPOINT=<printed url> bawt-vllm add ...`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import struct
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

TESTBED_MODEL_ENV = "BAWT_TESTBED_MODEL_DIR"
TINY_REPO = "bawt/tiny-llama"
TIMESTAMP = "2025-01-01T00:00:00.000Z"
LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pth", ".onnx")


# --------------------------------------------------------------------------- fake repositories


@dataclass
class FakeRepo:
    """One model repository: its files and the metadata the Hub reports about it."""

    repo_id: str
    files: dict[str, bytes]
    downloads: int = 0
    card_data: dict[str, Any] | None = None
    safetensors: dict[str, int] | None = None  # tensor counts by dtype, as the Hub's `safetensors.parameters`
    gguf: dict[str, Any] | None = None
    library_name: str | None = "transformers"
    tags: list[str] = field(default_factory=list)
    gated: bool = False  # everything but the listing answers 401 GatedRepo (no token has access)

    @property
    def sha(self) -> str:
        digest = hashlib.sha1()
        for name in sorted(self.files):
            digest.update(name.encode() + b"\0" + self.files[name])
        return digest.hexdigest()

    def config_summary(self) -> dict[str, Any] | None:
        """The subset of config.json the Hub puts in model info."""
        raw = self.files.get("config.json")
        if raw is None:
            return None
        config = json.loads(raw)
        keys = ("architectures", "model_type", "quantization_config")
        return {key: config[key] for key in keys if key in config}


def is_lfs(name: str, data: bytes) -> bool:
    return name.endswith(LFS_SUFFIXES) or len(data) > 1_000_000


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def safetensors_bytes(tensors: Mapping[str, tuple[str, list[int]]]) -> bytes:
    """A valid safetensors file of zeros: name -> (dtype, shape)."""
    sizes = {"BF16": 2, "F16": 2, "F32": 4, "I32": 4}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        count = 1
        for dim in shape:
            count *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + count * sizes[dtype]]}
        offset += count * sizes[dtype]
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + bytes(offset)


def safetensors_parameters(data: bytes) -> dict[str, int]:
    """Tensor element counts by dtype, read from a safetensors header."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    counts: dict[str, int] = {}
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        count = 1
        for dim in tensor["shape"]:
            count *= dim
        counts[tensor["dtype"]] = counts.get(tensor["dtype"], 0) + count
    return counts


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=2).encode()


def _qwen_config(**extra: Any) -> dict[str, Any]:
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": 896,
        "max_position_embeddings": 32768,
        "torch_dtype": "bfloat16",
        "vocab_size": 151936,
        **extra,
    }


def _tokenizer_files() -> dict[str, bytes]:
    return {
        "tokenizer.json": _json({"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}}),
        "tokenizer_config.json": _json({"model_max_length": 32768, "chat_template": "{{ messages }}"}),
        "vocab.json": _json({}),
        "merges.txt": b"#version: 0.2\n",
        "generation_config.json": _json({"do_sample": True}),
    }


def _generated_tiny_llama() -> dict[str, bytes]:
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 8,
        "max_position_embeddings": 2048,
        "dtype": "bfloat16",
        "vocab_size": 16,
    }
    weights = safetensors_bytes({"embed": ("BF16", [16, 8]), "norm": ("BF16", [8])})
    return {
        "config.json": _json(config),
        "model.safetensors": weights,
        **_tokenizer_files(),
        "README.md": b"---\nlicense: mit\n---\n# tiny llama\n",
        ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
        "pytorch_model.bin": b"not needed by vLLM: pull must skip it",
        "original/params.json": b"{}",
        "onnx/model.onnx": b"not needed either",
    }


def _directory_files(directory: Path) -> dict[str, bytes]:
    return {
        path.relative_to(directory).as_posix(): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(directory).parts)
    }


def tiny_llama_repo(model_dir: Path | None = None) -> FakeRepo:
    """`bawt/tiny-llama`: the test bed's real model when $BAWT_TESTBED_MODEL_DIR names it, else generated files."""
    if model_dir is None and os.environ.get(TESTBED_MODEL_ENV):
        model_dir = Path(os.environ[TESTBED_MODEL_ENV])
    files = _directory_files(model_dir) if model_dir is not None else _generated_tiny_llama()
    parameters = safetensors_parameters(files["model.safetensors"]) if "model.safetensors" in files else None
    return FakeRepo(TINY_REPO, files, downloads=500, safetensors=parameters, tags=["llama", "text-generation"])


def default_repos(model_dir: Path | None = None) -> list[FakeRepo]:
    """The repositories the tests use (search "qwen2.5" finds six, four of which vLLM can load)."""
    weights = safetensors_bytes({"w": ("F16", [4, 4])})
    awq_config = _qwen_config(
        max_position_embeddings=131072,
        torch_dtype="float16",
        quantization_config={"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm"},
    )
    gptq_config = _qwen_config(torch_dtype="float16", quantization_config={"quant_method": "gptq", "bits": 4})
    shard_index = {"metadata": {"total_size": 64}, "weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    gguf_card = "---\nbase_model: bawt/Qwen2.5-0.5B-Instruct\nlicense: apache-2.0\n---\n# GGUF quants\n"
    return [
        tiny_llama_repo(model_dir),
        FakeRepo(
            "bawt/Qwen2.5-0.5B-Instruct",
            {"config.json": _json(_qwen_config()), "model.safetensors": weights, **_tokenizer_files()},
            downloads=89_300,
            safetensors={"BF16": 494_032_768},
        ),
        FakeRepo(
            "bawt/Qwen2.5-0.5B-Instruct-AWQ",
            {"config.json": _json(awq_config), "model.safetensors": weights, **_tokenizer_files()},
            downloads=45_200,
            safetensors={"I32": 50_000_000, "F16": 160_000_000},
            tags=["awq", "4-bit"],
        ),
        FakeRepo(
            "bawt/Qwen2.5-0.5B-Instruct-GPTQ-Int4",
            {
                "config.json": _json(gptq_config),
                "model-00001-of-00002.safetensors": safetensors_bytes({"a": ("I32", [2, 2])}),
                "model-00002-of-00002.safetensors": safetensors_bytes({"b": ("F16", [2, 4])}),
                "model.safetensors.index.json": _json(shard_index),
                **_tokenizer_files(),
            },
            downloads=12_100,
            safetensors={"I32": 50_000_000, "F16": 160_000_000},
        ),
        FakeRepo(
            "bawt/Qwen2.5-0.5B-Instruct-GGUF",
            {
                "qwen2.5-0.5b-instruct-q4_k_m.gguf": b"GGUF" + bytes(396),
                "qwen2.5-0.5b-instruct-q8_0.gguf": b"GGUF" + bytes(796),
                "README.md": gguf_card.encode(),
            },
            downloads=30_000,
            card_data={"base_model": "bawt/Qwen2.5-0.5B-Instruct", "license": "apache-2.0"},
            gguf={"total": 494_032_768, "architecture": "qwen2", "context_length": 32768},
            library_name="gguf",
        ),
        FakeRepo(
            "bawt/Qwen2.5-notes",
            {"README.md": b"# notes, no weights\n", "config.json": _json(_qwen_config())},
            downloads=99_999,
        ),
        FakeRepo("bawt/gated-model", {"config.json": _json(_qwen_config()), "model.safetensors": weights}, gated=True),
        FakeRepo(
            "mlx-community/Qwen2.5-0.5B-Instruct-4bit",
            {"config.json": _json(_qwen_config()), "model.safetensors": weights},
            downloads=70_000,
            safetensors={"BF16": 10_000_000, "U32": 60_000_000},
            library_name="mlx",
        ),
    ]


# --------------------------------------------------------------------------- the server


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]


class HubStandin:
    """The server: `start()` it, point huggingface_hub at `url`, `stop()` it."""

    def __init__(self, repos: list[FakeRepo] | None = None, *, literal_search: bool = False) -> None:
        self.repos = {repo.repo_id: repo for repo in (repos if repos is not None else default_repos())}
        self.literal_search = literal_search  # `search=a b` as one substring, not as words
        self.requests: list[Request] = []
        self.unhandled: list[Request] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the stand-in first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubStandin:
        handler = type("Handler", (_Handler,), {"standin": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="hub-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> HubStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def downloads_of(self, repo_id: str) -> list[str]:
        """Files fetched with GET from a repo (not HEAD), in order."""
        prefix = f"/{repo_id}/resolve/"
        return [r.path[len(prefix) :].split("/", 1)[1] for r in self.requests
                if r.method == "GET" and r.path.startswith(prefix)]

    def find_repo(self, rest: str) -> tuple[FakeRepo | None, str, str]:
        """(repo, repo id, what follows it) for a path that starts with a repo id."""
        for repo_id in sorted(self.repos, key=len, reverse=True):
            if rest == repo_id or rest.startswith(repo_id + "/"):
                return self.repos[repo_id], repo_id, rest[len(repo_id) + 1 :]
        parts = rest.split("/")
        return None, "/".join(parts[:2]), "/".join(parts[2:])


class _Handler(BaseHTTPRequestHandler):
    standin: HubStandin
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # ---------------------------------------------------------------- dispatch

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        path, query = unquote(split.path), parse_qs(split.query)
        request = Request(method, path, query)
        self.standin.requests.append(request)
        if path == "/api/models" and method == "GET":
            return self._list_models(query)
        if path.startswith("/api/models/") and method == "GET":
            return self._model_route(path.removeprefix("/api/models/"), query)
        if "/resolve/" in path:
            return self._resolve(method, path.lstrip("/"))
        self.standin.unhandled.append(request)
        self._error(404, None, f"no route {method} {path}")

    # ---------------------------------------------------------------- /api/models

    def _list_models(self, query: dict[str, list[str]]) -> None:
        search = " ".join(query.get("search", [""])).lower()
        words = [search] if self.standin.literal_search else search.split()
        repos = [r for r in self.standin.repos.values() if all(word in r.repo_id.lower() for word in words)]
        sort = query.get("sort", [""])[0]
        if sort == "downloads":
            repos.sort(key=lambda repo: repo.downloads, reverse=True)
        limit = int(query.get("limit", ["1000"])[0])
        expand = _expand(query)
        items = [_model_json(repo, expand=expand or _LIST_FIELDS, blobs=False) for repo in repos[:limit]]
        self._send_json(items)

    def _model_route(self, rest: str, query: dict[str, list[str]]) -> None:
        repo, repo_id, tail = self.standin.find_repo(rest)
        if repo is None:
            return self._error(404, "RepoNotFound", f"Repository Not Found for url: /api/models/{repo_id}.")
        if repo.gated:
            return self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted.")
        if tail == "" or tail.startswith("revision/"):
            revision = tail.removeprefix("revision/") or "main"
            if not self._known_revision(repo, revision):
                return None
            blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
            return self._send_json(_model_json(repo, expand=_expand(query), blobs=blobs))
        if tail.startswith("tree/"):
            revision, _, folder = tail.removeprefix("tree/").partition("/")
            if not self._known_revision(repo, revision):
                return None
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            return self._send_json(_tree(repo, folder, recursive))
        self.standin.unhandled.append(Request("GET", f"/api/models/{rest}", query))
        return self._error(404, None, f"no route /api/models/{rest}")

    def _known_revision(self, repo: FakeRepo, revision: str) -> bool:
        if revision in ("main", repo.sha):
            return True
        self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", commit=None)
        return False

    # ---------------------------------------------------------------- /{repo}/resolve/{rev}/{file}

    def _resolve(self, method: str, rest: str) -> None:
        repo_part, _, tail = rest.partition("/resolve/")
        repo = self.standin.repos.get(repo_part)
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found", body=method == "GET")
        if repo.gated:
            return self._error(401, "GatedRepo", "Access to this model is restricted", body=method == "GET")
        revision, _, filename = tail.partition("/")
        if revision not in ("main", repo.sha):
            return self._error(404, "RevisionNotFound", "Invalid rev id", body=method == "GET")
        data = repo.files.get(filename)
        if data is None:
            return self._error(404, "EntryNotFound", "Entry not found", commit=repo.sha, body=method == "GET")
        etag = sha256(data) if is_lfs(filename, data) else git_blob_id(data)
        start = self._range_start(len(data))
        body = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", f'"{etag}"')
        self.send_header("X-Repo-Commit", repo.sha)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Disposition", f'inline; filename="{filename.rsplit("/", 1)[-1]}"')
        if is_lfs(filename, data):
            self.send_header("X-Linked-Etag", f'"{etag}"')
            self.send_header("X-Linked-Size", str(len(data)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if method == "GET":
            self.wfile.write(body)
        return None

    def _range_start(self, size: int) -> int:
        header = self.headers.get("Range", "")
        if not header.startswith("bytes=") or not header.endswith("-"):
            return 0
        try:
            start = int(header.removeprefix("bytes=").removesuffix("-"))
        except ValueError:
            return 0
        return start if 0 < start < size else 0

    # ---------------------------------------------------------------- responses

    def _send_json(self, value: Any) -> None:
        body = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(
        self, status: int, code: str | None, message: str, *, commit: str | None = None, body: bool = True
    ) -> None:
        payload = json.dumps({"error": message}).encode() if body else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.end_headers()
        if payload:
            self.wfile.write(payload)


_LIST_FIELDS = ("downloads", "likes", "tags", "library_name", "createdAt", "private", "pipeline_tag")


def _expand(query: dict[str, list[str]]) -> list[str]:
    """httpx sends a list as repeated `expand=`; the Hub's docs spell it `expand[]=`: accept both."""
    return [*query.get("expand", []), *query.get("expand[]", [])]


def _model_json(repo: FakeRepo, *, expand: list[str] | tuple[str, ...], blobs: bool) -> dict[str, Any]:
    author = repo.repo_id.split("/")[0] if "/" in repo.repo_id else None
    full: dict[str, Any] = {
        "author": author,
        "sha": repo.sha,
        "lastModified": TIMESTAMP,
        "createdAt": TIMESTAMP,
        "private": False,
        "disabled": False,
        "gated": False,
        "downloads": repo.downloads,
        "likes": repo.downloads // 100,
        "library_name": repo.library_name,
        "tags": repo.tags,
        "pipeline_tag": "text-generation",
        "siblings": [_sibling(name, data, blobs) for name, data in sorted(repo.files.items())],
        "usedStorage": sum(len(data) for data in repo.files.values()),
    }
    optional = {
        "cardData": repo.card_data,
        "config": repo.config_summary(),
        "safetensors": {"parameters": repo.safetensors, "total": sum(repo.safetensors.values())}
        if repo.safetensors
        else None,
        "gguf": repo.gguf,
    }
    full.update({key: value for key, value in optional.items() if value is not None})
    chosen = {key: value for key, value in full.items() if key in expand} if expand else full
    return {"_id": repo.sha[:24], "id": repo.repo_id, **({} if expand else {"modelId": repo.repo_id}), **chosen}


def _sibling(name: str, data: bytes, blobs: bool) -> dict[str, Any]:
    if not blobs:
        return {"rfilename": name}
    sibling: dict[str, Any] = {"rfilename": name, "size": len(data), "blobId": git_blob_id(data)}
    if is_lfs(name, data):
        sibling["lfs"] = {"size": len(data), "sha256": sha256(data), "pointerSize": 134}
    return sibling


def _tree(repo: FakeRepo, folder: str, recursive: bool) -> list[dict[str, Any]]:
    prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
    entries: dict[str, dict[str, Any]] = {}
    for name, data in sorted(repo.files.items()):
        if not name.startswith(prefix):
            continue
        parts = name[len(prefix) :].split("/")
        for depth in range(1, len(parts)):  # the folders on the way
            if depth > 1 and not recursive:
                break
            directory = prefix + "/".join(parts[:depth])
            entries.setdefault(directory, {"type": "directory", "oid": git_blob_id(directory.encode()),
                                           "size": 0, "path": directory})
        if len(parts) > 1 and not recursive:
            continue
        entry: dict[str, Any] = {"type": "file", "oid": git_blob_id(data), "size": len(data), "path": name}
        if is_lfs(name, data):
            entry["lfs"] = {"oid": sha256(data), "size": len(data), "pointerSize": 134}
        entries[name] = entry
    return list(entries.values())


# --------------------------------------------------------------------------- pointing huggingface_hub at it


def hub_settings(endpoint: str, hf_home: Path) -> dict[str, Any]:
    """huggingface_hub.constants names -> the values that aim it at `endpoint` with a private HF_HOME."""
    home = str(hf_home)
    return {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": home,
        "HF_HUB_CACHE": os.path.join(home, "hub"),
        "HUGGINGFACE_HUB_CACHE": os.path.join(home, "hub"),
        "HF_ASSETS_CACHE": os.path.join(home, "assets"),
        "HUGGINGFACE_ASSETS_CACHE": os.path.join(home, "assets"),
        "HF_XET_CACHE": os.path.join(home, "xet"),
        "HF_TOKEN_PATH": os.path.join(home, "token"),
        "HF_STORED_TOKENS_PATH": os.path.join(home, "stored_tokens"),
        "CHECK_FOR_UPDATE_DONE_PATH": os.path.join(home, ".check_for_update_done"),
        "AGENT_HARNESSES_PATH": os.path.join(home, ".agent_harnesses.json"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": True,
    }


def hub_environment(endpoint: str, hf_home: Path) -> dict[str, str]:
    """The same as environment variables (for subprocesses, e.g. the `bawt-vllm` CLI)."""
    return {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
        "HF_HUB_OFFLINE": "0",
    }


_UNSET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HUGGINGFACE_CO_STAGING")


def point_huggingface_hub(monkeypatch: Any, endpoint: str, hf_home: Path) -> None:
    """Aim huggingface_hub (imported or not) at `endpoint`, with `hf_home` as HF_HOME.

    Environment first, so a first import picks it up; then the already-imported
    constants, and the copies other huggingface_hub modules took with
    `from ..constants import X` (they still hold the original value).
    """
    for name in _UNSET_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in hub_environment(endpoint, hf_home).items():
        monkeypatch.setenv(name, value)
    import huggingface_hub.constants as constants

    _import_hub_modules()
    settings = hub_settings(endpoint, hf_home)
    originals = {name: getattr(constants, name) for name in settings if hasattr(constants, name)}
    for name, original in originals.items():
        for module in _hub_modules():
            if module is constants or getattr(module, name, _MISSING) == original:
                monkeypatch.setattr(module, name, settings[name])


_MISSING = object()
_COPYING_MODULES = (
    "huggingface_hub.hf_api",
    "huggingface_hub.file_download",
    "huggingface_hub._snapshot_download",
    "huggingface_hub.utils._cache_manager",
    "huggingface_hub.utils._headers",
    "huggingface_hub.utils._http",
)


def _import_hub_modules() -> None:
    """Import the modules that copy constants now: imported later (huggingface_hub loads lazily),
    they would copy the patched value and keep it after the test (0.24 did that to HF_HUB_CACHE)."""
    for name in _COPYING_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def _hub_modules() -> Iterator[Any]:
    for module_name, module in list(sys.modules.items()):
        if module is not None and (module_name == "huggingface_hub" or module_name.startswith("huggingface_hub.")):
            yield module


if __name__ == "__main__":
    with HubStandin() as standin:
        print(f"Hub stand-in at {standin.url} serving: {', '.join(standin.repos)}")
        print(f"  export HF_ENDPOINT={standin.url} HF_HUB_DISABLE_TELEMETRY=1")
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()

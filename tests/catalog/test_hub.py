"""`bawt-vllm add` / `pull` (supervisor/catalog/, runtime/weights.py) against a Hub stand-in (tests/hub_standin.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from bawt_vllm.supervisor.catalog import adding, building, formats, hubapi, naming
from bawt_vllm.supervisor.config.loading import load_config
from bawt_vllm.supervisor.config.problems import ConfigError
from bawt_vllm.supervisor.runtime import hubclient, weights
from hub_standin import TESTBED_MODEL_ENV, TINY_REPO, HubStandin, default_repos, hub_environment, point_huggingface_hub

INSTRUCT = "bawt/Qwen2.5-0.5B-Instruct"
AWQ = "bawt/Qwen2.5-0.5B-Instruct-AWQ"
GPTQ = "bawt/Qwen2.5-0.5B-Instruct-GPTQ-Int4"
GGUF = "bawt/Qwen2.5-0.5B-Instruct-GGUF"
Q4, Q8 = "qwen2.5-0.5b-instruct-q4_k_m.gguf", "qwen2.5-0.5b-instruct-q8_0.gguf"

MODELS_YAML = """\
# my models -- comments must survive `bawt-vllm add`
bawt_vllm:
  state_dir: {state}
  idle_ttl_s: null            # keep loaded

models:
  gpt-4o:                     # llm-bawt talks to OpenAI directly
    type: openai
    model_id: gpt-4o

  tiny:
    type: vllm
    model_id: bawt/tiny-llama
    tool_support: none
# the end
"""


@pytest.fixture(scope="module")
def standin() -> Iterator[HubStandin]:
    with HubStandin() as server:
        yield server


@pytest.fixture
def hf_home(standin: HubStandin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """huggingface_hub aimed at the stand-in, with an empty HF_HOME of its own."""
    home = tmp_path / "hf-home"
    point_huggingface_hub(monkeypatch, standin.url, home)
    standin.requests.clear()
    standin.unhandled.clear()
    yield home
    assert standin.unhandled == [], "huggingface_hub asked the stand-in for routes it does not serve"


@pytest.fixture
def models_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(MODELS_YAML.format(state=tmp_path / "state"))
    return path


# --------------------------------------------------------------------------- search and inspect


def test_search_keeps_loadable_repos_sorted_by_downloads(standin: HubStandin, hf_home: Path) -> None:
    found = hubapi.search_models("qwen2.5")

    assert [(c.repo_id, c.quantization, c.downloads) for c in found] == [
        (INSTRUCT, "BF16", 89_300),
        (AWQ, "AWQ", 45_200),
        (GGUF, "GGUF", 30_000),
        (GPTQ, "GPTQ", 12_100),
    ]  # no weights (Qwen2.5-notes, 99 999 downloads) and MLX (70 000) are left out
    sizes = {c.repo_id: c.size_bytes for c in found}
    assert sizes[INSTRUCT] == 494_032_768 * 2  # BF16 parameters
    assert sizes[AWQ] == 50_000_000 * 4 + 160_000_000 * 2  # packed I32 + F16
    assert sizes[GGUF] is None  # unknown until one file is chosen
    assert found[2].gguf_files == [Q4, Q8] and not found[2].has_safetensors
    [listing] = [r for r in standin.requests if r.path == "/api/models"]
    assert listing.query["search"] == ["qwen2.5"] and listing.query["sort"] == ["downloads"]
    assert {"siblings", "safetensors", "downloads"} <= set(listing.query["expand"])


def test_search_limit_and_no_match(hf_home: Path) -> None:
    assert [c.repo_id for c in hubapi.search_models("qwen2.5", limit=2)] == [INSTRUCT, AWQ]
    assert hubapi.search_models("no such model") == []


def test_several_words_fall_back_to_the_longest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with HubStandin(literal_search=True) as literal:
        point_huggingface_hub(monkeypatch, literal.url, tmp_path / "hf-home")
        found = hubapi.search_models("AWQ qwen2.5")
        searched = [r.query["search"] for r in literal.requests if r.path == "/api/models"]

    assert [c.repo_id for c in found] == [AWQ]
    assert searched == [["AWQ qwen2.5"], ["qwen2.5"]]


def test_inspect_gguf_repo_reads_sizes_and_base_model(hf_home: Path) -> None:
    candidate = hubapi.inspect_repo(GGUF)

    assert candidate.base_model == INSTRUCT
    assert candidate.gguf_files == [Q4, Q8]
    assert candidate.size_bytes == 400  # the file `add` would pick: Q4_K_M
    assert candidate.file_sizes[Q8] == 800


def test_inspect_unknown_repo_is_a_clear_error(hf_home: Path) -> None:
    with pytest.raises(hubclient.RepoNotFoundError, match="no model repository 'bawt/nope'"):
        hubapi.inspect_repo("bawt/nope")


def test_inspect_repo_without_weights_is_a_clear_error(hf_home: Path) -> None:
    with pytest.raises(hubclient.NoWeightsError, match=r"no safetensors or GGUF weights .*README\.md"):
        hubapi.inspect_repo("bawt/Qwen2.5-notes")
    with pytest.raises(hubclient.NoWeightsError, match="MLX weights, which vLLM cannot load"):
        hubapi.inspect_repo("mlx-community/Qwen2.5-0.5B-Instruct-4bit")


def test_gated_repo_is_a_clear_error(hf_home: Path) -> None:
    with pytest.raises(hubclient.HubError, match="'bawt/gated-model' is gated"):
        hubapi.inspect_repo("bawt/gated-model")
    with pytest.raises(hubclient.HubError, match="is gated"):
        weights.pull({"type": "vllm", "model_id": "bawt/gated-model"}, progress=False)


def test_unreachable_hub_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with HubStandin([]) as closed:
        url = closed.url
    point_huggingface_hub(monkeypatch, url, tmp_path / "hf-home")
    import huggingface_hub.utils._http as hf_http

    monkeypatch.setattr(hf_http.time, "sleep", lambda seconds: None)  # list_models retries 5 times, ~23 s
    with pytest.raises(hubclient.HubError, match=f"cannot reach {re.escape(url)}"):
        hubapi.search_models("qwen")
    with pytest.raises(hubclient.HubError, match=f"cannot reach {re.escape(url)}"):
        hubapi.inspect_repo(AWQ)


def test_environment_alone_is_enough_for_a_fresh_process(standin: HubStandin, tmp_path: Path) -> None:
    """What a `bawt-vllm add` subprocess sees: HF_ENDPOINT/HF_HOME set before huggingface_hub is imported."""
    env = {**os.environ, **hub_environment(standin.url, tmp_path / "hf-home")}
    code = "from bawt_vllm.supervisor.catalog import hubapi; print([c.repo_id for c in hubapi.search_models('awq')])"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == repr([AWQ])


# --------------------------------------------------------------------------- what a repo is


@pytest.mark.parametrize(
    ("repo_id", "config", "files", "expected"),
    [
        ("org/model", {"quantization_config": {"quant_method": "awq"}}, [], "AWQ"),
        ("org/model-AWQ", {"quantization_config": {"quant_method": "gptq"}}, [], "GPTQ"),  # config wins
        ("org/model", {"quantization_config": {"quant_method": "fp8"}}, [], "FP8"),
        ("org/model", {"quantization_config": {"quant_method": "compressed-tensors"}}, [], "COMPRESSED-TENSORS"),
        ("org/Model-W4A16", {"quantization_config": {"quant_method": "compressed-tensors"}}, [], "W4A16"),
        ("org/model-GGUF", None, ["a.gguf"], "GGUF"),
        ("org/Llama-3.1-8B-Instruct-FP8", None, [], "FP8"),
        ("org/Qwen2.5-7B-Instruct-GPTQ-Int4", None, [], "GPTQ"),
        ("mlx-community/Qwen2.5-7B-4bit", None, [], "MLX"),
        ("org/model", {"torch_dtype": "bfloat16"}, [], "BF16"),
        ("org/model", {"dtype": "float16"}, [], "FP16"),
        ("org/awqward-model", None, [], None),  # whole tokens only
    ],
)
def test_detect_quantization(repo_id: str, config: dict | None, files: list[str], expected: str | None) -> None:
    assert formats.detect_quantization(repo_id, config, files) == expected


@pytest.mark.parametrize(
    ("config", "repo_id", "expected"),
    [
        ({"model_type": "qwen2"}, "Qwen/Qwen2.5-7B-Instruct", "hermes"),
        ({"model_type": "qwen3_moe"}, "Qwen/Qwen3-30B-A3B", "hermes"),
        ({"model_type": "qwen3_moe"}, "Qwen/Qwen3-Coder-30B-A3B-Instruct", "qwen3_coder"),
        ({"model_type": "llama", "rope_scaling": {"rope_type": "llama3"}}, "org/custom", "llama3_json"),
        ({"model_type": "llama", "vocab_size": 32000}, "meta-llama/Llama-2-7b-chat-hf", None),
        ({"model_type": "llama"}, "NousResearch/Hermes-3-Llama-3.1-8B", "hermes"),
        ({"model_type": "mistral"}, "mistralai/Mistral-7B-Instruct-v0.3", "mistral"),
        ({"model_type": "llama4"}, "meta-llama/Llama-4-Scout-17B-16E-Instruct", "llama4_pythonic"),
        ({"model_type": "gpt_oss"}, "openai/gpt-oss-20b", "openai"),
        ({"model_type": "gemma3"}, "google/gemma-3-12b-it", None),
        (None, "bartowski/Meta-Llama-3.1-8B-Instruct-GGUF", "llama3_json"),
        (None, "TheBloke/Mistral-7B-Instruct-v0.2-GGUF", "mistral"),
        (None, "someone/unknown-model", None),
    ],
)
def test_suggest_tool_call_parser(config: dict | None, repo_id: str, expected: str | None) -> None:
    assert formats.suggest_tool_call_parser(config, repo_id) == expected


def test_suggest_max_model_len() -> None:
    assert formats.suggest_max_model_len({"max_position_embeddings": 131072}) == 32768
    assert formats.suggest_max_model_len({"max_position_embeddings": 2048}) == 2048
    assert formats.suggest_max_model_len({"text_config": {"max_position_embeddings": 8192}}) == 8192
    assert formats.suggest_max_model_len({"model_type": "x"}) is None
    assert formats.suggest_max_model_len(None) is None


def test_propose_alias() -> None:
    assert naming.propose_alias("Qwen/Qwen2.5-32B-Instruct-AWQ", "AWQ", []) == "qwen2.5-32b-instruct-awq"
    assert naming.propose_alias("Qwen/Qwen2.5-32B-Instruct", "AWQ", []) == "qwen2.5-32b-instruct-awq"
    assert naming.propose_alias("Qwen/Qwen2.5-32B-Instruct", "BF16", []) == "qwen2.5-32b-instruct"
    assert naming.propose_alias(GGUF, "Q4_K_M", []) == "qwen2.5-0.5b-instruct-q4_k_m"
    assert naming.propose_alias(GGUF, "GGUF", []) == "qwen2.5-0.5b-instruct-gguf"
    taken = {"qwen2.5-32b-instruct-awq", "qwen2.5-32b-instruct-awq-2"}
    assert naming.propose_alias("Qwen/Qwen2.5-32B-Instruct-AWQ", "AWQ", taken) == "qwen2.5-32b-instruct-awq-3"
    long = naming.propose_alias("org/" + "-".join(["very-long-model-name"] * 5), "GPTQ", [])
    assert len(long) <= naming.MAX_ALIAS_LENGTH and long.endswith("-gptq") and "--" not in long


def test_choose_gguf_file_skips_split_files_and_projectors() -> None:
    files = ["m-Q8_0.gguf", "m-Q4_K_M-00001-of-00002.gguf", "mmproj-m-f16.gguf", "m-Q5_K_M.gguf"]
    assert formats.choose_gguf_file(files) == "m-Q5_K_M.gguf"
    assert formats.choose_gguf_file(["m-Q4_K_M-00001-of-00002.gguf"]) is None
    assert formats.gguf_quant_level("Qwen2.5-7B-Instruct-IQ4_XS.gguf") == "IQ4_XS"


# --------------------------------------------------------------------------- entries


def test_build_entry_for_safetensors(hf_home: Path) -> None:
    candidate, entry = building.entry_for_repo(AWQ)

    assert candidate.quantization == "AWQ"
    assert entry == {
        "type": "vllm",
        "model_id": AWQ,
        "description": f"{AWQ} (AWQ)",
        "max_model_len": 32768,  # 131072 in config.json, capped
        "tool_support": "native",
        "tool_call_parser": "hermes",
    }


def test_build_entry_for_gguf_uses_the_base_model(hf_home: Path) -> None:
    candidate, entry = building.entry_for_repo(GGUF)

    assert entry == {
        "type": "gguf",
        "backend": "vllm",
        "repo_id": GGUF,
        "filename": Q4,
        "tokenizer": INSTRUCT,  # from the card's base_model
        "description": f"{INSTRUCT} Q4_K_M (GGUF through vLLM)",
        "max_model_len": 32768,  # from the base model's config.json
        "tool_support": "native",
        "tool_call_parser": "hermes",
    }
    q8 = building.build_entry(candidate, config_json=None, gguf_file=Q8, overrides={"max_model_len": 4096})
    assert q8["filename"] == Q8 and q8["max_model_len"] == 4096


def test_build_entry_overrides_and_refusals() -> None:
    candidate = hubapi.Candidate("org/Llama-2-7b", "BF16", None, None, [], True)
    overrides = {"description": None, "gpu": 1}
    entry = building.build_entry(candidate, config_json={"model_type": "llama"}, overrides=overrides)
    assert entry == {"type": "vllm", "model_id": "org/Llama-2-7b", "tool_support": "react", "gpu": 1}

    parts = ["m-00001-of-00002.gguf", "m-00002-of-00002.gguf"]
    split = hubapi.Candidate("org/m-GGUF", "GGUF", None, None, parts, False)
    with pytest.raises(hubclient.NoWeightsError, match="--gguf-file"):
        building.build_entry(split, config_json=None)
    with pytest.raises(hubclient.NoWeightsError, match="split GGUF"):
        building.build_entry(split, config_json=None, gguf_file="m-00001-of-00002.gguf")
    with pytest.raises(hubclient.NoWeightsError, match=r"no file 'other\.gguf'"):
        building.build_entry(split, config_json=None, gguf_file="other.gguf")


# --------------------------------------------------------------------------- models.yaml


def only_insertions(old: str, new: str) -> list[str]:
    import difflib

    added: list[str] = []
    old_lines, new_lines = old.splitlines(keepends=True), new.splitlines(keepends=True)
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old_lines, new_lines, autojunk=False).get_opcodes():
        assert tag in ("equal", "insert"), (tag, old_lines[i1:i2], new_lines[j1:j2])
        added += new_lines[j1:j2] if tag == "insert" else []
    return added


def test_add_model_writes_a_valid_entry_and_keeps_comments(hf_home: Path, models_yaml: Path) -> None:
    original = models_yaml.read_text()
    _, entry = building.entry_for_repo(GGUF)
    alias = naming.propose_alias(GGUF, "Q4_K_M", load_config(models_yaml).models)

    backup = adding.add_model(models_yaml, alias, entry, comment=f"added by bawt-vllm add {GGUF}")

    assert backup is not None and backup.read_text() == original
    added = only_insertions(original, models_yaml.read_text())
    assert added[:2] == ["\n", f"  # added by bawt-vllm add {GGUF}\n"]  # blank line: the file's style
    assert yaml.safe_load("".join(added)) == {alias: entry}
    config = load_config(models_yaml)
    assert list(config.models) == ["tiny", alias]
    assert config.models[alias].tokenizer == INSTRUCT


def test_add_model_refuses_an_existing_alias_unless_replace(models_yaml: Path) -> None:
    original = models_yaml.read_text()
    entry = {"type": "vllm", "model_id": AWQ, "tool_call_parser": "hermes"}

    with pytest.raises(adding.AliasExistsError, match="'tiny' is already defined"):
        adding.add_model(models_yaml, "tiny", entry)
    assert models_yaml.read_text() == original

    adding.add_model(models_yaml, "tiny", entry, replace=True)
    assert load_config(models_yaml).models["tiny"].model_id == AWQ
    assert "# the end\n" in models_yaml.read_text()


def test_add_model_validates_before_writing(models_yaml: Path) -> None:
    original = models_yaml.read_text()
    bad = {"type": "vllm", "model_id": AWQ, "gpu_memory_utilization": 2}  # and no tool_call_parser

    with pytest.raises(ConfigError) as raised:
        adding.add_model(models_yaml, "bad", bad)

    keys = sorted(problem.key for problem in raised.value.problems)
    assert keys == ["gpu_memory_utilization", "tool_call_parser"]
    assert all(problem.file == models_yaml for problem in raised.value.problems)
    assert models_yaml.read_text() == original and not models_yaml.with_name("models.yaml.bak").exists()


def test_add_model_creates_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "new" / "models.yaml"
    entry = {"type": "vllm", "model_id": AWQ, "tool_call_parser": "hermes"}
    assert adding.add_model(path, "awq", entry) is None
    assert yaml.safe_load(path.read_text()) == {"models": {"awq": entry}}


# --------------------------------------------------------------------------- pull


def test_pull_downloads_the_serving_files_and_weights_present_flips(standin: HubStandin, hf_home: Path) -> None:
    entry = {"type": "vllm", "model_id": TINY_REPO}
    assert weights.weights_present(entry) is False

    folder = weights.pull(entry, progress=False)

    assert folder.is_relative_to(hf_home / "hub")
    served = set(standin.repos[TINY_REPO].files)
    wanted = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"}
    got = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert wanted & served <= got
    assert not got & {"pytorch_model.bin", "README.md", "original/params.json", "onnx/model.onnx"}
    assert (folder / "model.safetensors").read_bytes() == standin.repos[TINY_REPO].files["model.safetensors"]
    assert weights.weights_present(entry) is True

    fetched = len(standin.downloads_of(TINY_REPO))
    assert weights.pull(entry, progress=False) == folder
    assert len(standin.downloads_of(TINY_REPO)) == fetched  # cached: nothing downloaded again


def test_pull_gguf_fetches_one_file_and_the_tokenizer(standin: HubStandin, hf_home: Path) -> None:
    _, entry = building.entry_for_repo(GGUF)
    assert weights.weights_present(entry) is False

    path = weights.pull(entry, progress=False)

    assert path.name == Q4 and path.read_bytes() == standin.repos[GGUF].files[Q4]
    assert standin.downloads_of(GGUF) == [Q4]
    assert "tokenizer.json" in standin.downloads_of(INSTRUCT)
    assert "model.safetensors" not in standin.downloads_of(INSTRUCT)
    assert weights.weights_present(entry) is True
    assert weights.weights_present({**entry, "filename": Q8}) is False


def test_weights_present_checks_every_shard(hf_home: Path) -> None:
    entry = {"type": "vllm", "model_id": GPTQ}
    folder = weights.pull(entry, progress=False)
    assert weights.weights_present(entry) is True

    (folder / "model-00002-of-00002.safetensors").unlink()
    assert weights.weights_present(entry) is False


def test_pull_shows_huggingface_hub_progress(hf_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights.pull({"type": "vllm", "model_id": AWQ}, progress=True)
    assert "Fetching" in capsys.readouterr().err
    weights.pull({"type": "vllm", "model_id": INSTRUCT}, progress=False)
    assert "Fetching" not in capsys.readouterr().err


def test_pull_errors(hf_home: Path, tmp_path: Path) -> None:
    with pytest.raises(hubclient.RepoNotFoundError):
        weights.pull({"type": "vllm", "model_id": "bawt/nope"}, progress=False)
    with pytest.raises(hubclient.MissingFileError, match=r"no file 'missing\.gguf'"):
        weights.pull({"type": "gguf", "repo_id": GGUF, "filename": "missing.gguf"}, progress=False)
    with pytest.raises(hubclient.HubError, match="does not exist"):
        weights.pull({"type": "vllm", "model_id": str(tmp_path / "no-such-dir")}, progress=False)
    local = tmp_path / "local-model"
    local.mkdir()
    (local / "config.json").write_text("{}")
    assert weights.weights_present({"type": "vllm", "model_id": str(local)}) is False
    (local / "model.safetensors").write_bytes(b"x")
    assert weights.weights_present({"type": "vllm", "model_id": str(local)}) is True
    assert weights.pull({"type": "vllm", "model_id": str(local)}, progress=False) == local


def test_testbed_model_dir_is_served_as_tiny_llama(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    files = {"config.json": json.dumps({"model_type": "llama", "max_position_embeddings": 64}).encode(),
             "model.safetensors": default_repos()[0].files["model.safetensors"], "tokenizer.json": b"{}"}
    for name, data in files.items():
        (model_dir / name).write_bytes(data)
    monkeypatch.setenv(TESTBED_MODEL_ENV, str(model_dir))

    with HubStandin() as server:
        point_huggingface_hub(monkeypatch, server.url, tmp_path / "hf-home")
        folder = weights.pull({"type": "vllm", "model_id": TINY_REPO}, progress=False)

    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files

"""`bawt-vllm entries`: the llm-bawt openai-type entries, and merging them into llm-bawt's
models.yaml without disturbing a byte of what the user wrote (supervisor/catalog/entries.py,
supervisor/catalog/yamlfile.py)."""

from __future__ import annotations

import difflib
import stat
import textwrap
from pathlib import Path

import pytest
import yaml
from bawt_vllm.supervisor.catalog import yamlfile as yamlfile
from bawt_vllm.supervisor.catalog.entries import (
    MANAGED_KEY,
    MANAGED_VALUE,
    apply_merge,
    openai_entries,
    plan_merge,
)
from bawt_vllm.supervisor.catalog.yamlfile import ConfigWriteError
from bawt_vllm.supervisor.config.loading import load_config
from bawt_vllm.supervisor.config.paths import llm_bawt_models_path
from bawt_vllm.supervisor.config.schema import Config, Settings

SUPERVISED = """\
bawt_vllm:
  gateway_host: 0.0.0.0
  gateway_port: 8411
  state_dir: {state}
models:
  qwen-awq:
    type: vllm
    model_id: Qwen/Qwen2.5-7B-Instruct-AWQ
    description: Qwen 2.5 7B AWQ
    context_window: 8192
    max_tokens: 2048
    max_model_len: 16384
    tool_call_parser: hermes
  small-gguf:
    type: gguf
    backend: vllm
    repo_id: bartowski/Qwen2.5-0.5B-Instruct-GGUF
    filename: Qwen2.5-0.5B-Instruct-Q4_K_M.gguf
    max_model_len: 4096
    tool_support: none
    served_model_name: small
  gpt-4o:
    type: openai
    model_id: gpt-4o
"""

LLM_BAWT_FILE = """\
# llm-bawt models -- hand written, keep my comments!
models:
  gpt-4o:                     # talks to OpenAI directly
    type: openai
    model_id: gpt-4o
    tool_support: native

  # a local llama-cpp model
  mistral-q4:
    type: gguf
    repo_id: TheBloke/Mistral-7B-Instruct-v0.2-GGUF
    filename: mistral-7b-instruct-v0.2.Q4_K_M.gguf
    n_ctx: null              # spelled null on purpose
    stop: ["</s>", '[INST]']
    chat_format: ~
  # trailing comment about the section below

default_model: gpt-4o   # someone else's top-level key
"""


@pytest.fixture
def config(tmp_path: Path) -> Config:
    path = tmp_path / "bawt" / "models.yaml"
    path.parent.mkdir()
    path.write_text(SUPERVISED.format(state=tmp_path / "state"))
    return load_config(path)


@pytest.fixture
def target(tmp_path: Path) -> Path:
    path = tmp_path / "llm-bawt" / "models.yaml"
    path.parent.mkdir()
    path.write_text(LLM_BAWT_FILE)
    return path


def only_insertions(old: str, new: str) -> str:
    """The text `new` adds to `old`; fails when anything of `old` was changed or removed."""
    old_lines, new_lines = old.splitlines(keepends=True), new.splitlines(keepends=True)
    added = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old_lines, new_lines, autojunk=False).get_opcodes():
        assert tag in ("equal", "insert"), f"{tag}: {old_lines[i1:i2]!r} -> {new_lines[j1:j2]!r}"
        if tag == "insert":
            added += new_lines[j1:j2]
    return "".join(added)


# --------------------------------------------------------------------------- the entries


def test_openai_entries_use_the_gateway_and_only_set_keys(config: Config) -> None:
    entries = openai_entries(config)

    assert list(entries) == ["qwen-awq", "small-gguf"]  # gpt-4o is not supervised
    assert entries["qwen-awq"] == {
        "type": "openai",
        "model_id": "qwen-awq",
        "base_url": "http://127.0.0.1:8411/v1",  # 0.0.0.0 is where it listens, not where to connect
        "tool_support": "native",
        "context_window": 8192,
        "max_tokens": 2048,
        "description": "Qwen 2.5 7B AWQ",
        MANAGED_KEY: MANAGED_VALUE,
    }
    assert entries["small-gguf"] == {
        "type": "openai",
        "model_id": "small",  # the name the gateway routes by
        "base_url": "http://127.0.0.1:8411/v1",
        "tool_support": "none",
        "context_window": 4096,  # from max_model_len: llm-bawt would assume 128000 for type openai
        "max_tokens": 1024,  # none set: min(4096, context_window // 4)
        MANAGED_KEY: MANAGED_VALUE,
    }


def test_suffix_renames_the_entries_not_the_model(config: Config) -> None:
    entries = openai_entries(config, suffix="-gw")
    assert list(entries) == ["qwen-awq-gw", "small-gguf-gw"]
    assert entries["qwen-awq-gw"]["model_id"] == "qwen-awq"


def test_llm_bawt_models_path_follows_llm_bawt(tmp_path: Path) -> None:
    home = str(tmp_path)
    explicit = {"LLM_BAWT_MODELS_CONFIG_PATH": "~/x/m.yaml", "HOME": home, "XDG_CONFIG_HOME": "/xdg"}
    assert llm_bawt_models_path(explicit) == tmp_path / "x" / "m.yaml"
    assert llm_bawt_models_path({"XDG_CONFIG_HOME": "/xdg", "HOME": home}) == Path("/xdg/llm-bawt/models.yaml")
    assert llm_bawt_models_path({"HOME": home}) == tmp_path / ".config" / "llm-bawt" / "models.yaml"


# --------------------------------------------------------------------------- merging


def test_merge_adds_entries_and_keeps_every_other_byte(config: Config, target: Path) -> None:
    plan = plan_merge(config, target)
    assert (plan.added, plan.updated, plan.conflicts) == (["qwen-awq", "small-gguf"], [], [])
    assert target.read_text() == LLM_BAWT_FILE  # planning writes nothing

    backup = apply_merge(plan)

    new_text = target.read_bytes().decode()
    added = only_insertions(LLM_BAWT_FILE, new_text)
    assert yaml.safe_load(textwrap.dedent(added)) == openai_entries(config)
    assert backup == target.with_name("models.yaml.bak")
    assert backup.read_text() == LLM_BAWT_FILE
    document = yaml.safe_load(new_text)
    assert list(document["models"]) == ["gpt-4o", "mistral-q4", "qwen-awq", "small-gguf"]
    assert document["default_model"] == "gpt-4o"


def test_second_run_changes_nothing(config: Config, target: Path) -> None:
    apply_merge(plan_merge(config, target))
    first = target.read_bytes()
    backup = target.with_name("models.yaml.bak")
    backup.unlink()

    again = plan_merge(config, target)

    assert (again.added, again.updated, again.unchanged) == ([], [], ["qwen-awq", "small-gguf"])
    assert not again.changed and again.diff() == ""
    assert apply_merge(again) is None
    assert target.read_bytes() == first
    assert not backup.exists()


def test_managed_entries_are_updated_in_place(config: Config, target: Path, tmp_path: Path) -> None:
    apply_merge(plan_merge(config, target))
    before = target.read_text()
    changed = load_config(config.path)
    changed.settings = changed.settings.model_copy(update={"gateway_port": 8412})

    plan = plan_merge(changed, target)
    apply_merge(plan)

    assert plan.updated == ["qwen-awq", "small-gguf"]
    diff = [line for line in plan.diff().splitlines() if line.startswith(("+", "-")) and line[1:2] not in "+-"]
    assert diff == [
        "-    base_url: http://127.0.0.1:8411/v1",
        "+    base_url: http://127.0.0.1:8412/v1",
        "-    base_url: http://127.0.0.1:8411/v1",
        "+    base_url: http://127.0.0.1:8412/v1",
    ]
    assert list(yaml.safe_load(target.read_text())["models"]) == list(yaml.safe_load(before)["models"])


def test_foreign_alias_is_a_conflict_then_replace_or_suffix(config: Config, target: Path) -> None:
    foreign = LLM_BAWT_FILE.replace("  mistral-q4:", "  qwen-awq:")
    target.write_text(foreign)

    plan = plan_merge(config, target)
    apply_merge(plan)

    assert plan.conflicts == ["qwen-awq"] and plan.added == ["small-gguf"]
    [message] = plan.conflict_messages()
    assert "'qwen-awq'" in message and "--replace" in message and "--suffix" in message
    document = yaml.safe_load(target.read_text())
    assert document["models"]["qwen-awq"]["type"] == "gguf"  # untouched

    replaced = plan_merge(config, target, replace=True)
    apply_merge(replaced)
    assert replaced.updated == ["qwen-awq"] and replaced.unchanged == ["small-gguf"]
    assert yaml.safe_load(target.read_text())["models"]["qwen-awq"] == openai_entries(config)["qwen-awq"]

    target.write_text(foreign)
    suffixed = plan_merge(config, target, suffix="-gw")
    apply_merge(suffixed)
    assert suffixed.added == ["qwen-awq-gw", "small-gguf-gw"] and suffixed.conflicts == []
    only_insertions(foreign, target.read_text())


def test_entries_bawt_vllm_runs_are_never_replaced(config: Config) -> None:
    """Merging into the supervisor's own file: the vllm entries hold the aliases."""
    original = config.path.read_text()

    plan = plan_merge(config, config.path, replace=True)

    assert plan.conflicts == ["qwen-awq", "small-gguf"] and plan.protected == plan.conflicts
    assert all("--suffix" in message and "--replace" not in message for message in plan.conflict_messages())
    assert not plan.changed
    apply_merge(plan_merge(config, config.path, suffix="-gw"))
    only_insertions(original, config.path.read_text())
    reloaded = load_config(config.path)
    assert list(reloaded.models) == ["qwen-awq", "small-gguf"]
    assert reloaded.skipped["qwen-awq-gw"] == "type is 'openai'"


def test_missing_target_is_created_with_its_directory(config: Config, tmp_path: Path) -> None:
    target = tmp_path / "fresh" / "llm-bawt" / "models.yaml"

    plan = plan_merge(config, target)
    assert plan.old_text == "" and plan.added == ["qwen-awq", "small-gguf"]
    assert plan.diff().startswith("--- /dev/null\n")
    assert apply_merge(plan) is None  # nothing to back up

    text = target.read_text()
    assert text.startswith("models:\n")
    assert yaml.safe_load(text) == {"models": openai_entries(config)}


def test_missing_target_with_no_models_gets_an_empty_models_map(tmp_path: Path) -> None:
    empty = Config(path=tmp_path / "empty.yaml", settings=Settings(state_dir=tmp_path / "state"))
    target = tmp_path / "new" / "models.yaml"
    apply_merge(plan_merge(empty, target))
    assert target.read_text() == "models:\n"


def test_dry_run_diff_shows_the_additions(config: Config, target: Path) -> None:
    plan = plan_merge(config, target)
    diff = plan.diff()

    assert diff.startswith(f"--- {target}\n+++ {target}\n")
    assert "+  qwen-awq:\n" in diff and "+    base_url: http://127.0.0.1:8411/v1\n" in diff
    assert not any(line.startswith("-") and not line.startswith("---") for line in diff.splitlines())
    assert target.read_text() == LLM_BAWT_FILE and not target.with_name("models.yaml.bak").exists()


def test_apply_refuses_a_file_changed_since_the_plan(config: Config, target: Path) -> None:
    plan = plan_merge(config, target)
    target.write_text(LLM_BAWT_FILE + "# edited meanwhile\n")
    with pytest.raises(ConfigWriteError, match="changed since"):
        apply_merge(plan)
    assert target.read_text().endswith("# edited meanwhile\n")


# --------------------------------------------------------------------------- unwritable files


def test_read_only_file_is_a_clear_error_and_untouched(config: Config, target: Path) -> None:
    target.chmod(0o444)
    plan = plan_merge(config, target)

    with pytest.raises(ConfigWriteError) as raised:
        apply_merge(plan)

    assert str(target) in str(raised.value) and "read-only" in str(raised.value)
    assert target.read_text() == LLM_BAWT_FILE
    assert sorted(p.name for p in target.parent.iterdir()) == ["models.yaml"]


def test_unwritable_directory_is_a_clear_error(
    config: Config, target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A directory without write permission (simulated: the tests run as root, who may write anyway).
    def no_temp_file(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(target.parent))

    monkeypatch.setattr("bawt_vllm.supervisor.config.atomic.tempfile.mkstemp", no_temp_file)
    with pytest.raises(ConfigWriteError, match="cannot write") as raised:
        apply_merge(plan_merge(config, target))
    assert "Permission denied" in str(raised.value)
    assert target.read_text() == LLM_BAWT_FILE


def test_failed_replace_leaves_the_original_and_no_temp_file(
    config: Config, target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(source: str, destination: str) -> None:
        raise PermissionError(13, "Permission denied", destination)

    plan = plan_merge(config, target)
    monkeypatch.setattr(yamlfile.os, "replace", refuse)
    with pytest.raises(ConfigWriteError) as raised:
        apply_merge(plan)

    assert str(target) in str(raised.value) and "Permission denied" in str(raised.value)
    assert target.read_text() == LLM_BAWT_FILE
    assert sorted(p.name for p in target.parent.iterdir()) == ["models.yaml"]


def test_directory_that_is_a_file_is_a_clear_error(config: Config, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(ConfigWriteError, match="not-a-dir"):
        apply_merge(plan_merge(config, blocker / "models.yaml"))


# --------------------------------------------------------------------------- yamlfile details


def test_write_keeps_mode_and_symlink(config: Config, target: Path, tmp_path: Path) -> None:
    target.chmod(0o640)
    link = tmp_path / "link.yaml"
    link.symlink_to(target)

    apply_merge(plan_merge(config, link))

    assert link.is_symlink() and "qwen-awq" in target.read_text()
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert target.with_name("models.yaml.bak").read_text() == LLM_BAWT_FILE


def test_entry_comment_is_written_once(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(LLM_BAWT_FILE)
    for model_id in ("first", "second"):
        document = yamlfile.load_document(path)
        yamlfile.set_model_entry(document, "new", {"type": "openai", "model_id": model_id}, comment="added by a test")
        yamlfile.write_document(path, document)

    text = path.read_text()
    assert text.count("# added by a test") == 1
    assert "  # added by a test\n  new:\n    type: openai\n    model_id: second\n" in text
    only_insertions(LLM_BAWT_FILE, text)


def test_crlf_file_and_four_space_indent_are_kept(tmp_path: Path) -> None:
    original = "models:\r\n    a:\r\n        type: openai\r\n        stop: ['x']\r\nother: null\r\n"
    document = yamlfile.parse_document(original)
    yamlfile.set_model_entry(document, "b", {"type": "openai", "model_id": "m"})

    text = yamlfile.render(document)

    assert text == original.replace("other:", "    b:\r\n        type: openai\r\n        model_id: m\r\nother:")


def test_invalid_yaml_is_a_read_error(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text("models:\n  a: [unclosed\n")
    with pytest.raises(yamlfile.ConfigReadError, match="invalid YAML"):
        yamlfile.load_document(path)


def test_file_written_by_llm_bawt_add_model_keeps_its_style(config: Config, tmp_path: Path) -> None:
    """llm-bawt's `--add-model` writes with `yaml.dump(sort_keys=False)`: block lists at offset 0."""
    target = tmp_path / "models.yaml"
    target.write_text(yaml.dump({"models": {"mine": {"type": "gguf", "stop": ["a", "b"], "n_ctx": None}}},
                                sort_keys=False, default_flow_style=False))
    original = target.read_text()

    apply_merge(plan_merge(config, target))

    added = only_insertions(original, target.read_text()).splitlines()
    assert added[:2] == ["  qwen-awq:", "    type: openai"]

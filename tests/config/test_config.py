"""models.yaml lookup, validation and the tool-format precedence."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from bawt_vllm.supervisor.config.loading import check_config, load_config
from bawt_vllm.supervisor.config.paths import find_config_path
from bawt_vllm.supervisor.config.problems import ConfigError, ConfigProblem, UnknownModelError
from bawt_vllm.supervisor.config.schema import Settings
from bawt_vllm.supervisor.config.toolformat import get_tool_format

EXAMPLE = Path(__file__).resolve().parents[2] / "models.yaml.example"
GOOD_ENTRY = "type: vllm\nmodel_id: org/model\ntool_support: none"
ONE_MODEL = "models:\n  tiny:\n" + textwrap.indent(GOOD_ENTRY, "    ") + "\n"
"""A models section with one good entry, for tests about other parts (a file needs one model)."""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def models_file(tmp_path: Path, text: str) -> Path:
    return write(tmp_path / "models.yaml", text)


def problems_of(path: Path) -> list[ConfigProblem]:
    return check_config(path, environ={})


def only_problem(path: Path) -> ConfigProblem:
    problems = problems_of(path)
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


def entry_file(tmp_path: Path, entry: str, alias: str = "tiny") -> Path:
    body = textwrap.indent(textwrap.dedent(entry).strip(), "    ")
    return models_file(tmp_path, f"models:\n  {alias}:\n{body}\n")


# --------------------------------------------------------------------------- lookup order


def lookup_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "xdg"), **extra}


def test_explicit_path_comes_first(tmp_path: Path) -> None:
    explicit = write(tmp_path / "mine.yaml", "models: {}\n")
    write(tmp_path / "env.yaml", "models: {}\n")
    environ = lookup_env(tmp_path, BAWT_VLLM_CONFIG=str(tmp_path / "env.yaml"))
    assert find_config_path(explicit, environ) == explicit


def test_missing_explicit_path_is_an_error_naming_it(tmp_path: Path) -> None:
    write(tmp_path / "xdg" / "bawt-vllm" / "models.yaml", "models: {}\n")
    with pytest.raises(ConfigError) as caught:
        find_config_path(tmp_path / "nope.yaml", lookup_env(tmp_path))
    assert str(tmp_path / "nope.yaml") in str(caught.value)
    assert "given explicitly" in str(caught.value)


def test_bawt_vllm_config_variable_beats_the_defaults(tmp_path: Path) -> None:
    from_env = write(tmp_path / "env.yaml", "models: {}\n")
    write(tmp_path / "xdg" / "bawt-vllm" / "models.yaml", "models: {}\n")
    assert find_config_path(None, lookup_env(tmp_path, BAWT_VLLM_CONFIG=str(from_env))) == from_env


def test_missing_bawt_vllm_config_target_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "xdg" / "bawt-vllm" / "models.yaml", "models: {}\n")
    environ = lookup_env(tmp_path, BAWT_VLLM_CONFIG=str(tmp_path / "gone.yaml"))
    with pytest.raises(ConfigError, match=r"\$BAWT_VLLM_CONFIG") as caught:
        find_config_path(None, environ)
    assert caught.value.problems[0].file == tmp_path / "gone.yaml"


def test_own_default_beats_llm_bawt_files(tmp_path: Path) -> None:
    own = write(tmp_path / "xdg" / "bawt-vllm" / "models.yaml", "models: {}\n")
    write(tmp_path / "xdg" / "llm-bawt" / "models.yaml", "models: {}\n")
    llm_bawt = write(tmp_path / "llm.yaml", "models: {}\n")
    environ = lookup_env(tmp_path, LLM_BAWT_MODELS_CONFIG_PATH=str(llm_bawt))
    assert find_config_path(None, environ) == own


def test_llm_bawt_variable_beats_llm_bawt_default(tmp_path: Path) -> None:
    write(tmp_path / "xdg" / "llm-bawt" / "models.yaml", "models: {}\n")
    llm_bawt = write(tmp_path / "llm.yaml", "models: {}\n")
    environ = lookup_env(tmp_path, LLM_BAWT_MODELS_CONFIG_PATH=str(llm_bawt))
    assert find_config_path(None, environ) == llm_bawt


def test_llm_bawt_default_is_the_last_resort(tmp_path: Path) -> None:
    shared = write(tmp_path / "xdg" / "llm-bawt" / "models.yaml", "models: {}\n")
    assert find_config_path(None, lookup_env(tmp_path)) == shared


def test_config_home_falls_back_to_dot_config(tmp_path: Path) -> None:
    own = write(tmp_path / "home" / ".config" / "bawt-vllm" / "models.yaml", "models: {}\n")
    assert find_config_path(None, {"HOME": str(tmp_path / "home")}) == own


def test_nothing_found_lists_every_place_looked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        find_config_path(None, lookup_env(tmp_path))
    message = str(caught.value)
    assert "no models.yaml found" in message
    assert str(tmp_path / "xdg" / "bawt-vllm" / "models.yaml") in message
    assert str(tmp_path / "xdg" / "llm-bawt" / "models.yaml") in message


def test_the_system_services_file_is_the_last_candidate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bawt_vllm.supervisor.config import paths

    system = tmp_path / "etc" / "bawt-vllm" / "models.yaml"
    monkeypatch.setattr(paths, "SYSTEM_CONFIG_PATH", system)
    with pytest.raises(ConfigError) as caught:
        find_config_path(None, lookup_env(tmp_path))
    message = str(caught.value)
    assert message.index("llm-bawt") < message.index(str(system)), message
    assert f"{system}: does not exist (system service)" in message
    write(system, "models: {}\n")
    assert find_config_path(None, lookup_env(tmp_path)) == system
    shared = write(tmp_path / "xdg" / "llm-bawt" / "models.yaml", "models: {}\n")
    assert find_config_path(None, lookup_env(tmp_path)) == shared
    assert find_config_path(None, lookup_env(tmp_path, BAWT_VLLM_CONFIG=str(system))) == system


def test_check_config_reports_a_missing_file_instead_of_raising(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from bawt_vllm.supervisor.config import paths

    monkeypatch.setattr(paths, "SYSTEM_CONFIG_PATH", tmp_path / "etc" / "models.yaml")
    problems = check_config(None, lookup_env(tmp_path))
    assert len(problems) == 3  # bawt-vllm's default, llm-bawt's, the system service's
    assert all("does not exist" in problem.message for problem in problems)


# --------------------------------------------------------------------------- loading


def test_example_file_has_no_problems() -> None:
    assert [str(problem) for problem in check_config(EXAMPLE, environ={})] == []
    config = load_config(EXAMPLE, environ={})
    assert set(config.models) == {"qwen-32b-awq", "qwen-7b-gguf"}
    assert set(config.skipped) == {"gpt-4o"}
    assert config.entry("qwen-7b-gguf").kind == "gguf"


def test_defaults_apply_when_the_global_section_is_absent(tmp_path: Path) -> None:
    path = entry_file(tmp_path, GOOD_ENTRY)
    config = load_config(path, environ={"XDG_STATE_HOME": str(tmp_path / "state")})
    assert config.path == path
    assert config.settings.port_range == (8500, 8599)
    assert config.settings.gateway_port == 8400
    assert config.settings.state_dir == tmp_path / "state" / "bawt-vllm"
    assert config.settings.api_key_env == "BAWT_VLLM_API_KEY"
    entry = config.entry("tiny")
    assert (entry.alias, entry.kind, entry.served_name) == ("tiny", "vllm", "tiny")
    assert (entry.tensor_parallel_size, entry.trust_remote_code, entry.preload) == (1, False, False)


def test_state_dir_defaults_under_home_without_xdg(tmp_path: Path) -> None:
    config = load_config(entry_file(tmp_path, GOOD_ENTRY), environ={"HOME": str(tmp_path)})
    assert config.settings.state_dir == tmp_path / ".local" / "state" / "bawt-vllm"


def test_home_is_expanded_in_paths(tmp_path: Path) -> None:
    path = models_file(tmp_path, "bawt_vllm:\n  state_dir: ~/state\n  vllm_executable: ~/bin/vllm\n" + ONE_MODEL)
    settings = load_config(path, environ={}).settings
    assert settings.state_dir == Path.home() / "state"
    assert settings.vllm_executable == str(Path.home() / "bin" / "vllm")


def test_empty_file_is_refused_as_having_no_models(tmp_path: Path) -> None:
    path = models_file(tmp_path, "")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert [(p.file, p.alias, p.key) for p in caught.value.problems] == [(path, None, None)]
    assert "no models configured: add at least one entry under models:" in str(caught.value)


def test_served_model_name_overrides_the_alias(tmp_path: Path) -> None:
    config = load_config(entry_file(tmp_path, GOOD_ENTRY + "\nserved_model_name: public"), environ={})
    assert config.entry("tiny").served_name == "public"


def test_env_numbers_become_strings(tmp_path: Path) -> None:
    path = entry_file(tmp_path, GOOD_ENTRY + "\nenv:\n  OMP_NUM_THREADS: 8\n  RATIO: 0.5\n  NAME: x")
    entry = load_config(path, environ={}).entry("tiny")
    assert entry.env == {"OMP_NUM_THREADS": "8", "RATIO": "0.5", "NAME": "x"}


def test_extra_args_numbers_become_strings(tmp_path: Path) -> None:
    path = entry_file(tmp_path, GOOD_ENTRY + "\nextra_args: ['--max-num-seqs', 8]")
    assert load_config(path, environ={}).entry("tiny").extra_args == ["--max-num-seqs", "8"]


def test_env_booleans_are_rejected(tmp_path: Path) -> None:
    problem = only_problem(entry_file(tmp_path, GOOD_ENTRY + "\nenv:\n  FLAG: true"))
    assert (problem.alias, problem.key) == ("tiny", "env.FLAG")
    assert "must be a string" in problem.message


def test_llm_bawt_keys_are_not_errors(tmp_path: Path) -> None:
    entry = GOOD_ENTRY + textwrap.dedent(
        """
        description: d
        context_window: 4096
        max_tokens: 512
        tool_format: react
        system_prompt: be brief
        temperature: 0.7
        top_p: 0.9
        n_gpu_layers: -1
        """
    )
    assert problems_of(entry_file(tmp_path, entry)) == []


def test_skipped_entries_are_listed_with_a_reason(tmp_path: Path) -> None:
    path = models_file(
        tmp_path,
        """
        models:
          gpt:
            type: openai
            model_id: gpt-4o
            base_url: https://api.openai.com/v1
          local-gguf:
            type: gguf
            repo_id: org/m-GGUF
            filename: m.gguf
            n_ctx: 8192
          untyped:
            model_id: x
          served:
            type: vllm
            model_id: org/model
            tool_support: none
        """,
    )
    config = load_config(path, environ={})
    assert list(config.models) == ["served"]
    assert "openai" in config.skipped["gpt"]
    assert "backend: vllm" in config.skipped["local-gguf"]
    assert "type" in config.skipped["untyped"]


def test_unknown_alias_lists_known_ones_and_a_close_match(tmp_path: Path) -> None:
    config = load_config(entry_file(tmp_path, GOOD_ENTRY, alias="qwen-32b-awq"), environ={})
    with pytest.raises(UnknownModelError) as caught:
        config.entry("qwen-32b")
    assert isinstance(caught.value, KeyError)
    expected = "unknown model 'qwen-32b' (did you mean 'qwen-32b-awq'?); known models: qwen-32b-awq"
    assert str(caught.value) == expected


def test_asking_for_a_skipped_entry_says_why(tmp_path: Path) -> None:
    config = load_config(models_file(tmp_path, ONE_MODEL + "  gpt:\n    type: openai\n"), environ={})
    with pytest.raises(UnknownModelError, match="not run by bawt-vllm: type is 'openai'"):
        config.entry("gpt")


# --------------------------------------------------------------------------- problems


def test_problem_text_names_file_entry_and_key(tmp_path: Path) -> None:
    problem = only_problem(entry_file(tmp_path, GOOD_ENTRY + "\nmax_model_len: abc"))
    expected = "models.tiny.max_model_len: must be an integer > 0 (got 'abc')"
    assert str(problem) == f"{tmp_path / 'models.yaml'}: {expected}"


def test_yaml_syntax_error_has_a_line_number(tmp_path: Path) -> None:
    path = models_file(tmp_path, "models:\n  tiny:\n    type: vllm\n    model_id: [unclosed\n")
    problem = only_problem(path)
    assert problem.file == path
    assert "invalid YAML at line" in problem.message


def test_duplicate_yaml_keys_are_reported(tmp_path: Path) -> None:
    first = "  tiny:\n    type: vllm\n    model_id: a\n"
    path = models_file(tmp_path, f"models:\n{first}  tiny:\n{textwrap.indent(GOOD_ENTRY, '    ')}\n")
    problem = only_problem(path)
    assert "line 5: duplicate key 'tiny'" in problem.message


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("- just\n- a list\n", None, "top level must be a map"),
        ("models: [a, b]\n", "models", "must be a map of alias"),
        ("bawt_vllm: 5\n" + ONE_MODEL, "bawt_vllm", "must be a map of settings"),
    ],
)
def test_document_shape_problems(tmp_path: Path, text: str, key: str | None, expected: str) -> None:
    problem = only_problem(models_file(tmp_path, text))
    assert (problem.alias, problem.key) == (None, key)
    assert expected in problem.message


def test_entry_that_is_not_a_map(tmp_path: Path) -> None:
    problem = only_problem(models_file(tmp_path, "models:\n  tiny: just-a-string\n"))
    assert (problem.alias, problem.key) == ("tiny", None)
    assert str(problem).endswith("models.tiny: must be a map of model settings (got a string)")


ENTRY_RULES: list[tuple[str, str | None, str]] = [
    # (entry yaml of alias "tiny", key, text expected in the message)
    ("type: vllm\ntool_support: none", "model_id", "is required for type: vllm"),
    ("type: gguf\nbackend: vllm\ntool_support: none", None, "repo_id + filename, or a local path"),
    ("type: gguf\nbackend: vllm\nrepo_id: o/m\ntool_support: none", "filename", "go together"),
    ("type: gguf\nbackend: vllm\nfilename: m.gguf\ntool_support: none", "repo_id", "go together"),
    (
        "type: gguf\nbackend: vllm\npath: /m.gguf\nrepo_id: o/m\nfilename: m.gguf\ntool_support: none",
        "path",
        "not both",
    ),
    ("type: vllm\nmodel_id: o/m\ntool_support: native", "tool_call_parser", "hermes"),
    ("type: vllm\nmodel_id: o/m", "tool_call_parser", "default to native"),
    ("type: gguf\nbackend: vllm\npath: /m.gguf", "tool_call_parser", "llama3_json"),
    (GOOD_ENTRY + "\ngpu: 0\ntensor_parallel_size: 2", "gpu", "tensor_parallel_size 2"),
    (GOOD_ENTRY + "\nextra_args: ['--api-key', 'x']", "extra_args", "'--api-key' must not be"),
    (GOOD_ENTRY + "\nextra_args: ['--port=9000']", "extra_args", "'--port' must not be"),
    (GOOD_ENTRY + "\nenv:\n  CUDA_VISIBLE_DEVICES: '1'", "env.CUDA_VISIBLE_DEVICES", "'gpu' key"),
    (GOOD_ENTRY + "\nenv:\n  VLLM_API_KEY: abc", "env.VLLM_API_KEY", "api_key_env"),
    (GOOD_ENTRY + "\ncontext_window: 8192\nmax_model_len: 4096", "context_window", "max_model_len 4096"),
    (GOOD_ENTRY + "\nmax_model_length: 4096", "max_model_length", "did you mean 'max_model_len'?"),
    (GOOD_ENTRY + "\ngpu-memory-utilization: 0.5", "gpu-memory-utilization", "'gpu_memory_utilization'"),
    (GOOD_ENTRY + "\nalias: other", "alias", "unknown key 'alias'"),
    (GOOD_ENTRY + "\nmax_model_len: 0", "max_model_len", "must be an integer > 0 (got 0)"),
    (GOOD_ENTRY + "\ngpu_memory_utilization: 1.5", "gpu_memory_utilization", "> 0 and <= 1 (got 1.5)"),
    (GOOD_ENTRY + "\nquantization: int4", "quantization", "awq, awq_marlin, gptq"),
    (GOOD_ENTRY + "\ndtype: fp16", "dtype", "bfloat16"),
    (GOOD_ENTRY + "\ntensor_parallel_size: 0", "tensor_parallel_size", ">= 1"),
    (GOOD_ENTRY + "\ngpu: -1", "gpu", "integer >= 0"),
    (GOOD_ENTRY + "\nport: 80", "port", "1024 to 65535"),
    (GOOD_ENTRY + "\nenforce_eager: maybe", "enforce_eager", "true or false"),
    (GOOD_ENTRY + "\nidle_ttl_s: 0", "idle_ttl_s", "greater than 0"),
    (GOOD_ENTRY + "\napi_key_env: 'MY KEY'", "api_key_env", "environment variable name"),
    (GOOD_ENTRY + "\nextra_args: '--foo bar'", "extra_args", "list of strings"),
    ("type: vllm\nmodel_id: o/m\ntool_support: sometimes", "tool_support", "native, react, xml, none"),
    ("type: vllm\nbackend: llama-cpp\nmodel_id: o/m\ntool_support: none", "backend", "must be 'vllm'"),
]


@pytest.mark.parametrize(("entry", "key", "expected"), ENTRY_RULES)
def test_entry_rules(tmp_path: Path, entry: str, key: str | None, expected: str) -> None:
    path = entry_file(tmp_path, entry)
    problem = only_problem(path)
    assert (problem.file, problem.alias, problem.key) == (path, "tiny", key)
    assert expected in problem.message
    assert str(problem).startswith(f"{path}: models.tiny")


def test_tools_without_a_parser_are_fine_when_not_native(tmp_path: Path) -> None:
    for tool_support in ("react", "none", "xml"):
        path = entry_file(tmp_path, f"type: vllm\nmodel_id: o/m\ntool_support: {tool_support}")
        assert problems_of(path) == [], tool_support
    assert problems_of(entry_file(tmp_path, "type: vllm\nmodel_id: o/m\ntool_format: react")) == []


GLOBAL_RULES: list[tuple[str, str, str]] = [
    ("port_range: [8600, 8500]", "bawt_vllm.port_range", "low <= high"),
    ("port_range: [80, 90]", "bawt_vllm.port_range", "1024 <= low"),
    ("gateway_port: 8550", "bawt_vllm.gateway_port", "inside port_range"),
    ("restart_backoff_s: 9\n  restart_backoff_max_s: 5", "bawt_vllm.restart_backoff_max_s", ">= restart"),
    ("health_intervall_s: 1", "bawt_vllm.health_intervall_s", "did you mean 'health_interval_s'?"),
    ("stop_grace_s: abc", "bawt_vllm.stop_grace_s", "must be a number (got 'abc')"),
    ("max_restarts: -1", "bawt_vllm.max_restarts", "greater than or equal to 0"),
    ("liveness_probe: sometimes", "bawt_vllm.liveness_probe", "true or false"),
]


@pytest.mark.parametrize(("setting", "key", "expected"), GLOBAL_RULES)
def test_global_rules(tmp_path: Path, setting: str, key: str, expected: str) -> None:
    path = models_file(tmp_path, f"bawt_vllm:\n  {setting}\n{ONE_MODEL}")
    problem = only_problem(path)
    assert (problem.alias, problem.key) == (None, key)
    assert expected in problem.message
    assert str(problem).startswith(f"{path}: {key}: ")


def two_entries(tmp_path: Path, first: str, second: str) -> Path:
    return models_file(
        tmp_path,
        f"models:\n  a:\n{textwrap.indent(first, '    ')}\n  b:\n{textwrap.indent(second, '    ')}\n",
    )


def test_duplicate_ports_name_both_entries(tmp_path: Path) -> None:
    problem = only_problem(two_entries(tmp_path, GOOD_ENTRY + "\nport: 8510", GOOD_ENTRY + "\nport: 8510"))
    assert (problem.alias, problem.key) == ("b", "port")
    assert "already used by 'a'" in problem.message


def test_duplicate_served_names_are_reported(tmp_path: Path) -> None:
    problem = only_problem(two_entries(tmp_path, GOOD_ENTRY, GOOD_ENTRY + "\nserved_model_name: a"))
    assert (problem.alias, problem.key) == ("b", "served_model_name")
    assert "'a' is already used by 'a'" in problem.message


def test_entry_port_cannot_be_the_gateway_port(tmp_path: Path) -> None:
    problem = only_problem(entry_file(tmp_path, GOOD_ENTRY + "\nport: 8400"))
    assert (problem.alias, problem.key) == ("tiny", "port")
    assert "gateway" in problem.message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = models_file(
        tmp_path,
        """
        bawt_vllm:
          gateway_prot: 8400
        models:
          one:
            type: vllm
            max_model_len: abc
            tool_support: none
          two:
            type: gguf
            backend: vllm
            tool_support: none
          three:
            type: vllm
            model_id: o/m
            tool_support: none
            max_model_length: 4096
            gpu_memory_utilization: 2
          fine:
            type: vllm
            model_id: o/m
            tool_support: none
        """,
    )
    problems = problems_of(path)
    located = {(problem.alias, problem.key) for problem in problems}
    assert located == {
        (None, "bawt_vllm.gateway_prot"),
        ("one", "max_model_len"),
        ("one", "model_id"),
        ("two", None),
        ("three", "max_model_length"),
        ("three", "gpu_memory_utilization"),
    }
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert caught.value.problems == problems
    assert str(caught.value).splitlines() == [str(problem) for problem in problems]


def test_settings_are_usable_without_a_file() -> None:
    settings = Settings()
    assert settings.host == "127.0.0.1"
    assert settings.ready_total_timeout_s is None
    assert settings.max_cpu_instances == 1


# --------------------------------------------------------------------------- tool format


@pytest.mark.parametrize(
    ("definition", "expected"),
    [
        ({"type": "openai", "tool_support": "none"}, "none"),
        ({"type": "gguf", "tool_support": "native"}, "native"),
        ({"type": "openai", "tool_support": "react"}, "react"),
        ({"type": "vllm", "tool_support": "xml"}, "xml"),
        ({"type": "vllm", "tool_support": "none", "tool_format": "react"}, "none"),
        ({"type": "vllm", "tool_support": "bogus", "tool_format": "react"}, "react"),
        ({"type": "openai", "tool_format": "react"}, "react"),
        ({"type": "gguf", "tool_format": "native_json"}, "native_json"),
        ({"type": "openai"}, "native"),
        ({"type": "grok"}, "native"),
        ({"type": "vllm"}, "native"),
        ({"type": "gguf", "backend": "vllm"}, "native"),
        ({"type": "gguf"}, "react"),
        ({"type": "gguf", "backend": "llama-cpp"}, "react"),
        ({"type": "ollama"}, "react"),
        ({"type": "huggingface"}, "react"),
        ({"type": "hf"}, "react"),
        ({"type": "something-else"}, "xml"),
        ({}, "xml"),
    ],
)
def test_tool_format_precedence(definition: dict[str, Any], expected: str) -> None:
    assert get_tool_format(definition) == expected


def test_one_resolver_names_a_model_by_alias_served_name_or_source(tmp_path: Path) -> None:
    """The gateway, the control socket and VLLMClient resolve names here: llm-bawt sends model_id."""
    config = load_config(models_file(tmp_path, """
        models:
          chat:
            type: vllm
            model_id: org/chat
            tool_support: none
            served_model_name: chat-served
          chat-long:
            type: vllm
            model_id: org/shared
            tool_support: none
          chat-short:
            type: vllm
            model_id: org/shared
            tool_support: none
        """))
    assert config.resolve("chat") == "chat"
    assert config.resolve("chat-served") == "chat"
    assert config.resolve("org/chat") == "chat"
    assert config.resolve("org/shared") == "chat-long", "a model_id two entries share names the first in the file"
    assert config.resolve("org/unknown") is None


def test_pinned_implies_a_start_with_the_daemon_and_a_budget_needs_one_gpu() -> None:
    from bawt_vllm.supervisor.config.schema import ModelEntry

    def entry(**fields: Any) -> ModelEntry:
        return ModelEntry(alias="m", model_id="org/m", tool_support="none", **fields)

    assert entry(pinned=True).starts_with_daemon and entry(preload=True).starts_with_daemon
    assert not entry().starts_with_daemon
    assert entry(gpu_memory_utilization=0.4).gpu_budget == 0.4
    assert entry(gpu_memory_utilization=0.4, tensor_parallel_size=2).gpu_budget is None
    assert entry().gpu_budget is None

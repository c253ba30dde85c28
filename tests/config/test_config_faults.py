"""Hostile and broken models.yaml files: each is refused with a problem naming the file, the
entry and the key, and what is allowed; none crashes the loader or makes it hang."""

from __future__ import annotations

import json
import textwrap
import time
import tracemalloc
from pathlib import Path

import pytest
from bawt_vllm.supervisor.config.loading import check_config, load_config
from bawt_vllm.supervisor.config.names import ALIAS_PATTERN, is_safe_alias
from bawt_vllm.supervisor.config.paths import quick_state_dir
from bawt_vllm.supervisor.config.problems import ConfigError, ConfigProblem
from bawt_vllm.supervisor.config.schema import ENTRY_KEYS, MAX_SECONDS, MAX_STOP_GRACE_S, SETTINGS_KEYS
from bawt_vllm.supervisor.config.text import MAX_CONFIG_BYTES

GOOD_ENTRY = "type: vllm\nmodel_id: org/model\ntool_support: none"
ONE_MODEL = "models:\n  tiny:\n" + textwrap.indent(GOOD_ENTRY, "    ") + "\n"


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "models.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def refusal(path: Path) -> list[ConfigProblem]:
    """The problems load_config raises for `path` (it must raise), checked equal to check_config's."""
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert caught.value.problems == check_config(path, environ={})
    return caught.value.problems


def only_refusal(path: Path) -> ConfigProblem:
    problems = refusal(path)
    assert len(problems) == 1, [str(problem) for problem in problems]
    assert problems[0].file == path
    return problems[0]


# --------------------------------------------------------------------------- aliases

UNSAFE_ALIASES = [
    "../x",
    "a/b",
    "",
    ".hidden",
    "-flag",
    "has space",
    "tab\there",
    "new\nline",
    "bell\x07",
    "esc\x1b[2J",
    "a..b",
    "..",
    "x" * 129,
    "caf\u00e9",
    "a\\b",
]


@pytest.mark.parametrize("alias", UNSAFE_ALIASES)
def test_unsafe_alias_is_refused_on_that_alias(tmp_path: Path, alias: str) -> None:
    body = textwrap.indent(GOOD_ENTRY, "    ")
    path = write(tmp_path, f"models:\n  {json.dumps(alias)}:\n{body}\n")
    problem = only_refusal(path)
    assert (problem.alias, problem.key) == (alias, None)
    assert f"{alias!r} cannot be an alias" in problem.message
    assert "letters, digits and . _ : + -, starting with a letter or digit, without '..'" in problem.message
    assert str(problem).startswith(f"{path}: models.{alias!r}: "), "shown quoted, never raw"


@pytest.mark.parametrize("alias", ["qwen2.5-32b", "Qwen2.5-7B-Instruct:Q4_K_M", "m+lora_1", "7b", "x" * 128])
def test_dotted_and_other_safe_aliases_stay_valid(tmp_path: Path, alias: str) -> None:
    body = textwrap.indent(GOOD_ENTRY, "    ")
    config = load_config(write(tmp_path, f"models:\n  {json.dumps(alias)}:\n{body}\n"), environ={})
    assert list(config.models) == [alias]


def test_is_safe_alias_is_exported_for_other_modules() -> None:
    assert is_safe_alias("qwen2.5-32b") and ALIAS_PATTERN.fullmatch("qwen2.5-32b")
    assert not any(is_safe_alias(alias) for alias in UNSAFE_ALIASES)
    assert not is_safe_alias("ok\n"), "a trailing newline must not slip past the pattern"
    assert not is_safe_alias(5) and not is_safe_alias(None)


def test_entries_left_to_llm_bawt_keep_any_alias(tmp_path: Path) -> None:
    path = write(tmp_path, ONE_MODEL + "  openai/gpt-4o:\n    type: openai\n    model_id: gpt-4o\n")
    config = load_config(path, environ={})
    assert list(config.models) == ["tiny"] and list(config.skipped) == ["openai/gpt-4o"]


@pytest.mark.parametrize(("key", "alias"), [("1.10", "1.1"), ("010", "8"), ("true", "True")])
def test_an_alias_yaml_reads_as_a_number_must_be_quoted(tmp_path: Path, key: str, alias: str) -> None:
    problem = only_refusal(write(tmp_path, f"models:\n  {key}:\n{textwrap.indent(GOOD_ENTRY, '    ')}\n"))
    assert (problem.alias, problem.key) == (alias, None)
    assert "the alias must be text" in problem.message and "quote it" in problem.message


# --------------------------------------------------------------------------- durations

POSITIVE_DAY = "greater than 0 and at most 86400 seconds (1 day)"
ZERO_OK_DAY = "0 or more and at most 86400 seconds (1 day)"
DURATIONS = {
    "ready_stall_timeout_s": POSITIVE_DAY,
    "ready_total_timeout_s": POSITIVE_DAY,
    "stop_grace_s": "greater than 0 and at most 3600 seconds (1 hour)",
    "health_interval_s": POSITIVE_DAY,
    "probe_timeout_s": POSITIVE_DAY,
    "restart_backoff_s": ZERO_OK_DAY,
    "restart_backoff_max_s": ZERO_OK_DAY,
    "eviction_wait_s": ZERO_OK_DAY,
    "vram_release_timeout_s": POSITIVE_DAY,
    "idle_ttl_s": POSITIVE_DAY,
}
OUT_OF_RANGE = [(".inf", "inf"), (".nan", "nan"), ("-.inf", "-inf"), ("1e999", "'1e999'"), ("86401", "86401")]


@pytest.mark.parametrize("key", DURATIONS)
@pytest.mark.parametrize(("value", "shown"), OUT_OF_RANGE)
def test_global_duration_must_be_finite_and_bounded(tmp_path: Path, key: str, value: str, shown: str) -> None:
    problem = only_refusal(write(tmp_path, f"bawt_vllm:\n  {key}: {value}\n{ONE_MODEL}"))
    assert (problem.alias, problem.key) == (None, f"bawt_vllm.{key}")
    assert DURATIONS[key] in problem.message
    assert f"(got {shown})" in problem.message


@pytest.mark.parametrize(("value", "shown"), OUT_OF_RANGE)
def test_entry_idle_ttl_must_be_finite_and_bounded(tmp_path: Path, value: str, shown: str) -> None:
    problem = only_refusal(write(tmp_path, f"{ONE_MODEL}    idle_ttl_s: {value}\n"))
    assert (problem.alias, problem.key) == ("tiny", "idle_ttl_s")
    assert f"must be a finite number {POSITIVE_DAY} (got {shown})" == problem.message


def test_stop_grace_is_capped_at_an_hour(tmp_path: Path) -> None:
    problem = only_refusal(write(tmp_path, f"bawt_vllm:\n  stop_grace_s: 3601\n{ONE_MODEL}"))
    assert problem.key == "bawt_vllm.stop_grace_s" and "at most 3600 seconds" in problem.message


@pytest.mark.parametrize("key", DURATIONS)
def test_a_yes_is_not_a_duration(tmp_path: Path, key: str) -> None:
    problem = only_refusal(write(tmp_path, f"bawt_vllm:\n  {key}: yes\n{ONE_MODEL}"))
    assert problem.key == f"bawt_vllm.{key}"
    assert problem.message == f"must be a number (got True); allowed: {DURATIONS[key]}"


def test_the_largest_durations_are_accepted(tmp_path: Path) -> None:
    values = "".join(f"  {key}: {MAX_STOP_GRACE_S if key == 'stop_grace_s' else MAX_SECONDS}\n" for key in DURATIONS)
    settings = load_config(write(tmp_path, f"bawt_vllm:\n{values}{ONE_MODEL}"), environ={}).settings
    assert settings.stop_grace_s == 3600 and settings.idle_ttl_s == 86400


# --------------------------------------------------------------------------- YAML that expands or nests too far


def billion_laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{n}: &a{n} [{','.join([f'*a{n - 1}'] * 9)}]" for n in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_quickly_with_little_memory(tmp_path: Path) -> None:
    text = billion_laughs() + ONE_MODEL
    assert len(text.encode()) <= 600  # stands for 9**10 (3.4 billion) strings
    path = write(tmp_path, text)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ConfigError) as caught:
            load_config(path, environ={})
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 0.5 and peak < 20 * 1024 * 1024
    [problem] = caught.value.problems
    assert (problem.file, problem.alias, problem.key) == (path, None, None)
    assert "aliases (*name) expand too far: more than 100,000 values" in problem.message
    assert str(problem).startswith(f"{path}: ")


def test_moderate_expansion_over_the_limit_is_refused(tmp_path: Path) -> None:
    """10**6 values: PyYAML would build it (aliases share objects), but any walk over it is slow."""
    lines = ["b0: &b0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"b{n}: &b{n} [{', '.join([f'*b{n - 1}'] * 10)}]" for n in range(1, 6)]
    problem = only_refusal(write(tmp_path, "\n".join(lines) + "\n" + ONE_MODEL))
    assert "expand too far" in problem.message


def test_anchors_and_merge_keys_keep_working(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """
        x-defaults: &defaults
          type: vllm
          tool_support: none
          env: &env {OMP_NUM_THREADS: 4}
        models:
          small:
            <<: *defaults
            model_id: org/small
          large:
            <<: *defaults
            model_id: org/large
            env: *env
        """
    )
    config = load_config(write(tmp_path, text), environ={})
    assert [(e.alias, e.model_id, e.tool_support) for e in config.models.values()] == [
        ("small", "org/small", "none"),
        ("large", "org/large", "none"),
    ]
    assert config.entry("large").env == {"OMP_NUM_THREADS": "4"}


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path: Path) -> None:
    problem = only_refusal(write(tmp_path, "loop: &l [1, *l]\n" + ONE_MODEL))
    assert problem.key is None and "the alias *l is used inside its own anchor &l" in problem.message


def test_deep_nesting_is_refused_not_a_recursion_error(tmp_path: Path) -> None:
    problem = only_refusal(write(tmp_path, "deep: " + "[" * 5000 + "]" * 5000 + "\n" + ONE_MODEL))
    assert "nests deeper than 100 levels" in problem.message


def test_a_file_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    padding = "#" * 99 + "\n"
    text = ONE_MODEL + padding * (MAX_CONFIG_BYTES // len(padding) + 1)
    problem = only_refusal(write(tmp_path, text))
    assert problem.key is None and "the file is larger than 1024 KiB" in problem.message


# --------------------------------------------------------------------------- bytes that are not UTF-8


def test_non_utf8_bytes_name_the_offset_and_line(tmp_path: Path) -> None:
    data = (ONE_MODEL + "    description: caf").encode() + b"\xe9 au lait\n"
    problem = only_refusal(write(tmp_path, data))
    offset = data.index(b"\xe9")
    assert problem.key is None
    assert problem.message == (
        f"not valid UTF-8: byte 0xe9 at offset {offset} (line 6, column 21); save the file as UTF-8"
    )


# --------------------------------------------------------------------------- nothing to run

NO_MODELS = {
    "empty file": "",
    "only a comment": "# nothing yet\n",
    "empty map": "models: {}\n",
    "null models": "models:\n",
    "settings only": "bawt_vllm:\n  stop_grace_s: 5\n",
}


@pytest.mark.parametrize("text", NO_MODELS.values(), ids=NO_MODELS.keys())
def test_a_file_without_models_is_refused(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    problem = only_refusal(path)
    assert (problem.alias, problem.key) == (None, None)
    assert str(problem).startswith(f"{path}: no models configured: add at least one entry under models:")


def test_only_skipped_entries_is_refused_and_says_why(tmp_path: Path) -> None:
    path = write(tmp_path, "models:\n  gpt:\n    type: openai\n  local:\n    type: gguf\n    path: /m.gguf\n")
    problem = only_refusal(path)
    assert problem.message.startswith("no models configured: add at least one entry under models:")
    assert "gpt (type is 'openai')" in problem.message and "local (gguf without 'backend: vllm'" in problem.message


def test_broken_entries_are_not_also_reported_as_no_models(tmp_path: Path) -> None:
    problem = only_refusal(write(tmp_path, "models:\n  tiny:\n    type: vllm\n    tool_support: none\n"))
    assert (problem.alias, problem.key) == ("tiny", "model_id")


# --------------------------------------------------------------------------- quick_state_dir


@pytest.fixture
def default_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    return tmp_path / "xdg-state" / "bawt-vllm"


STATE_LINE = "bawt_vllm:\n  gateway_port: 8400\n  state_dir: /srv/bawt  # the daemon's\n"
BROKEN_FILES: dict[str, str | bytes] = {
    "syntax error": STATE_LINE + "models:\n  tiny: [unclosed\n",
    "tab indentation": STATE_LINE + "models:\n\ttiny: {}\n",
    "not utf-8": (STATE_LINE + "models:\n  tiny:\n    description: caf").encode() + b"\xe9\n  x: [\n",
    "deep": "deep: " + "[" * 5000 + "\n" + STATE_LINE,
    "bad date": "when: 2024-13-45\n" + STATE_LINE,
    "control character": STATE_LINE + "models: \x07\n",
}


@pytest.mark.parametrize("content", BROKEN_FILES.values(), ids=BROKEN_FILES.keys())
def test_quick_state_dir_reads_state_dir_from_a_broken_file(tmp_path: Path, content: str | bytes) -> None:
    assert quick_state_dir(write(tmp_path, content)) == Path("/srv/bawt")


GUARDED_FILES = {
    "alias bomb": billion_laughs() + STATE_LINE,
    "loop": "loop: &l [*l]\n" + STATE_LINE,
    "too large": STATE_LINE + "#" * (MAX_CONFIG_BYTES + 10) + "\n",
}


@pytest.mark.parametrize("content", GUARDED_FILES.values(), ids=GUARDED_FILES.keys())
def test_quick_state_dir_applies_the_loaders_guards(tmp_path: Path, content: str) -> None:
    """A guard, not a fix: quick_state_dir never walked these, but it must not build them either."""
    assert quick_state_dir(write(tmp_path, content)) == Path("/srv/bawt")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("  state_dir: '/srv/a b'  # quoted\n", "/srv/a b"),
        ('  state_dir: "/srv/c"\n', "/srv/c"),
        ("  state_dir: /srv/d#not-a-comment\n", "/srv/d#not-a-comment"),
    ],
)
def test_quick_state_dir_line_scan_reads_yaml_scalars(tmp_path: Path, line: str, expected: str) -> None:
    path = write(tmp_path, "bawt_vllm:\n  host: 127.0.0.1\n" + line + "models: [broken\n")
    assert quick_state_dir(path) == Path(expected)


def test_quick_state_dir_line_scan_takes_only_the_global_sections_own_key(
    tmp_path: Path, default_state: Path
) -> None:
    text = "models:\n  tiny:\n    state_dir: /wrong\nbawt_vllm:\n  nested:\n    state_dir: /wrong\n  x: [\n"
    assert quick_state_dir(write(tmp_path, text)) == default_state


@pytest.mark.parametrize(
    "content",
    ["models: [broken\n", b"bawt_vllm: {\xe9", "bawt_vllm:\n  state_dir: ~no-such-user-bawt/x\n  y: [\n"],
    ids=["broken without state_dir", "not utf-8 without state_dir", "unknown user"],
)
def test_quick_state_dir_falls_back_to_the_default(
    tmp_path: Path, default_state: Path, content: str | bytes
) -> None:
    expected = Path("~no-such-user-bawt/x") if isinstance(content, str) and "~" in content else default_state
    assert quick_state_dir(write(tmp_path, content)) == expected


def test_quick_state_dir_of_an_unreadable_path_is_the_default(tmp_path: Path, default_state: Path) -> None:
    assert quick_state_dir(tmp_path / "missing.yaml") == default_state
    assert quick_state_dir(tmp_path) == default_state


def test_quick_state_dir_still_reads_a_good_file(tmp_path: Path) -> None:
    assert quick_state_dir(write(tmp_path, STATE_LINE + ONE_MODEL)) == Path("/srv/bawt")


# --------------------------------------------------------------------------- values YAML cannot build

NO_MODEL_ID = "models:\n  tiny:\n    type: vllm\n    tool_support: none\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("when: 2024-13-45\n", "invalid YAML at line 1, column 7: cannot read this value: month must be in 1..12"),
        ("big: " + "9" * 5000 + "\n", "invalid YAML at line 1, column 6: cannot read this value: Exceeds the limit"),
        ("a: 1\nb: \x07x\n", "invalid YAML at line 2, column 4: control character U+0007 is not allowed"),
    ],
    ids=["impossible date", "5000-digit integer", "control character"],
)
def test_values_yaml_cannot_build_are_problems_with_a_line(tmp_path: Path, text: str, expected: str) -> None:
    problem = only_refusal(write(tmp_path, text + ONE_MODEL))
    assert (problem.alias, problem.key) == (None, None)
    assert problem.message.startswith(expected)


def test_state_dir_of_an_unknown_user_is_a_problem_on_that_key(tmp_path: Path) -> None:
    problem = only_refusal(write(tmp_path, "bawt_vllm:\n  state_dir: ~no-such-user-bawt/state\n" + ONE_MODEL))
    assert problem.key == "bawt_vllm.state_dir"
    assert problem.message.startswith("cannot expand '~no-such-user-bawt/state': no such user")


def test_nul_characters_are_refused_on_their_keys(tmp_path: Path) -> None:
    text = NO_MODEL_ID + '    model_id: "org/\\0model"\n    env: {X: "a\\0b"}\n    extra_args: ["--x\\0"]\n'
    problems = refusal(write(tmp_path, text))
    assert [(p.alias, p.key, p.message) for p in problems] == [
        ("tiny", key, "must not contain a NUL character (\\0)") for key in ("model_id", "env", "extra_args")
    ]


# --------------------------------------------------------------------------- hostile documents

HOSTILE_DOCUMENTS = [
    "models:\n  tiny: [1, 2]\n",
    "models:\n  123:\n" + textwrap.indent(GOOD_ENTRY, "    ") + "\n",
    "models:\n  - tiny\n  - other\n",
    "bawt_vllm: [1, 2]\n" + ONE_MODEL,
    "bawt_vllm:\n  port_range: {low: 1, high: 2}\n  state_dir: [a]\n" + ONE_MODEL,
    "bawt_vllm:\n  state_dir: ~no-such-user-bawt/state\n" + ONE_MODEL,
    "when: 2024-13-45\n" + ONE_MODEL,
    "big: " + "9" * 5000 + "\n" + ONE_MODEL,
    NO_MODEL_ID + "    model_id: {a: {b: [c, {d: e}]}}\n    env: [1, 2]\n    extra_args: {x: 1}\n",
    ONE_MODEL + "    env: {'': x, 'A B': [1], 3: {}}\n    gpu: 99999999999999999999999\n",
    "models:\n  tiny:\n    type: [vllm]\n    model_id: o/m\n",
    ONE_MODEL + "    description: !!binary aGVsbG8=\n    port: .nan\n    max_model_len: -.inf\n",
    NO_MODEL_ID + '    model_id: "org/\\0model"\n',
    "models: !!binary aGVsbG8=\n",
    "models:\n  ? [a, b]\n  : {type: vllm}\n",
    "--- {models: {}}\n--- {models: {}}\n",
    "!!python/object/apply:os.system [echo hi]\n",
    "models: &m\n  tiny: *m\n",
    "\x00\x01",
    "models:\n  tiny:\n    <<: [1, 2]\n",
]


def test_hostile_documents_give_config_errors_only(tmp_path: Path) -> None:
    for number, text in enumerate(HOSTILE_DOCUMENTS):
        path = write(tmp_path, text)
        with pytest.raises(ConfigError) as caught:
            load_config(path, environ={})
        assert caught.value.problems, text
        assert all(problem.file == path for problem in caught.value.problems), (number, text)


HOSTILE_VALUES = [
    [],
    {},
    [[{"a": None}]],
    None,
    True,
    -1,
    2**70,
    float("inf"),
    float("nan"),
    "~no-such-user-bawt/x",
    "x\0y",
    "",
]


def test_every_key_with_every_hostile_value_gives_a_config_or_config_errors(tmp_path: Path) -> None:
    """Property-style: each settings and entry key gets each hostile value; load_config may accept
    it or refuse it with ConfigProblems, never raise anything else."""
    documents = [
        {"bawt_vllm": {key: value}, "models": {"tiny": {"type": "vllm", "model_id": "o/m", "tool_support": "none"}}}
        for key in sorted(SETTINGS_KEYS)
        for value in HOSTILE_VALUES
    ] + [
        {"models": {"tiny": {"type": "vllm", "model_id": "o/m", "tool_support": "none", key: value}}}
        for key in sorted(ENTRY_KEYS)
        for value in HOSTILE_VALUES
    ]
    for document in documents:
        path = write(tmp_path, json.dumps(document, allow_nan=True).replace("NaN", ".nan").replace("Infinity", ".inf"))
        try:
            load_config(path, environ={})
        except ConfigError as error:
            assert error.problems and all(problem.file == path for problem in error.problems), document
